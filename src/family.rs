//! Address families as the API names them: a leaf every other module may use (the pure cores
//! `desired` and `nodes` both need them, and neither should depend on the other for that).

use std::net::IpAddr;

/// `addressType` of IPv4 EndpointSlices (and the IPv4 entry of a Service's `spec.ipFamilies`).
pub const IPV4: &str = "IPv4";
/// `addressType` of IPv6 EndpointSlices (and the IPv6 entry of a Service's `spec.ipFamilies`).
pub const IPV6: &str = "IPv6";

/// `IPv4` or `IPv6`, as an EndpointSlice's `addressType` names the family of `ip`.
pub fn of(ip: IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => IPV4,
        IpAddr::V6(_) => IPV6,
    }
}
