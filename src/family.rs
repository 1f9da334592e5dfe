//! Addresses as the API sees them: their families as it names them, and the addresses it
//! refuses in an endpoint. A leaf every other module may use (the pure cores `desired` and
//! `nodes`, and `config` validating static addresses, all need them; none should depend on
//! another for that).

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

/// Why the EndpointSlice API refuses `address` as an endpoint address (kube-apiserver's
/// `ValidateEndpointIP`, pkg/apis/core/validation: unspecified, loopback, link-local,
/// link-local multicast), or `None` when it accepts it. An IPv4-mapped IPv6 address is refused
/// too: it belongs in an IPv4 slice, written as IPv4.
pub fn unusable_endpoint_address(address: std::net::IpAddr) -> Option<&'static str> {
    use std::net::IpAddr;
    match address {
        IpAddr::V4(a) if a.is_unspecified() => Some("the unspecified address"),
        IpAddr::V4(a) if a.is_loopback() => Some("a loopback address (127.0.0.0/8)"),
        IpAddr::V4(a) if a.is_link_local() => Some("a link-local address (169.254.0.0/16)"),
        IpAddr::V4(a) if a.octets()[..3] == [224, 0, 0] => {
            Some("a link-local multicast address (224.0.0.0/24)")
        }
        IpAddr::V6(a) if a.to_ipv4_mapped().is_some() => {
            Some("an IPv4-mapped IPv6 address (write it as IPv4)")
        }
        IpAddr::V6(a) if a.is_unspecified() => Some("the unspecified address"),
        IpAddr::V6(a) if a.is_loopback() => Some("the loopback address (::1)"),
        IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80 => {
            Some("a link-local address (fe80::/10)")
        }
        IpAddr::V6(a) if a.segments()[0] & 0xff0f == 0xff02 => {
            Some("a link-local multicast address (ff02::/16)")
        }
        _ => None,
    }
}
