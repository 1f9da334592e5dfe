//! Cluster IPs and NodePorts: what kube-apiserver's Service allocators hand out, check and free
//! (pkg/registry/core/service/ipallocator, portallocator, and the Service REST storage that drives
//! them, pkg/registry/core/service/storage).
//!
//! Owns: the Service IP ranges and the NodePort range, which addresses and ports are held, the
//! defaulting of `clusterIP(s)`, `ipFamilies`, `ipFamilyPolicy` and `nodePort`s, the checks of
//! requested ones (family, range, already allocated), and keeping allocated values on an update
//! that leaves them out. Leaves to the registry's write path when to allocate (create, update),
//! commit (after validation, unless dry run) and release (update, delete); leaves the rest of a
//! Service's validation and defaults to `validate.rs`.
//!
//! Simplifications: one IPv4 and one IPv6 range, fixed to RKE2's defaults; no ServiceCIDR or
//! IPAddress objects and no repair loop (allocation happens under the store's one lock, so
//! nothing leaks that a repair would find).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde_json::{Value, json};

use super::str_at;
use crate::validate::FieldError;

// Service cluster IP ranges (RKE2 defaults: 10.43.0.0/16, and fd00:43::/112 for IPv6).
/// First address of the IPv4 Service range (10.43.0.0, the network address: never handed out).
const SERVICE_V4_BASE: u32 = u32::from_be_bytes([10, 43, 0, 0]);
/// Addresses in the IPv4 Service range (/16).
const SERVICE_V4_SIZE: u32 = 1 << 16;
/// First address of the IPv6 Service range (fd00:43::).
const SERVICE_V6_BASE: u128 = 0xfd00_0043_0000_0000_0000_0000_0000_0000;
/// Addresses in the IPv6 Service range (/112).
const SERVICE_V6_SIZE: u128 = 1 << 16;
/// Dynamic allocation starts above the static band (KEP-3070: the lower 256 addresses of the range
/// are kept for addresses chosen by users, such as 10.43.0.1 and 10.43.0.10).
const SERVICE_DYNAMIC_OFFSET: u32 = 256;
/// Lowest NodePort (kube-apiserver's default --service-node-port-range, 30000-32767).
const NODE_PORT_MIN: u16 = 30000;
/// Highest NodePort.
const NODE_PORT_MAX: u16 = 32767;
/// NodePort dynamic allocation starts above the static band (KEP-3668: 86 ports for this range).
const NODE_PORT_DYNAMIC_START: u16 = 30086;

/// The allocators' state: what is held and where the next dynamic search starts.
#[derive(Debug)]
pub(super) struct Allocator {
    /// Cluster IPs held by stored Services (both families).
    ips: HashSet<IpAddr>,
    /// NodePorts held by stored Services.
    node_ports: HashSet<u16>,
    /// Offset in the IPv4 range where the next search for a free address starts.
    next_v4: u32,
    /// Offset in the IPv6 range where the next search for a free address starts.
    next_v6: u128,
    /// NodePort where the next search for a free port starts.
    next_port: u16,
}

impl Default for Allocator {
    /// Nothing held; dynamic searches start above the static bands.
    fn default() -> Allocator {
        Allocator {
            ips: HashSet::new(),
            node_ports: HashSet::new(),
            next_v4: SERVICE_DYNAMIC_OFFSET,
            next_v6: u128::from(SERVICE_DYNAMIC_OFFSET),
            next_port: NODE_PORT_DYNAMIC_START,
        }
    }
}

impl Allocator {
    /// Fills clusterIP(s), ipFamilies, ipFamilyPolicy and nodePorts; checks requested ones.
    /// Nothing is recorded as allocated until [`Allocator::commit`].
    pub(super) fn allocate(&mut self, svc: &mut Value, old: Option<&Value>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let ty = str_at(svc, "/spec/type").to_string();
        if ty == "ExternalName" {
            return errs;
        }
        let spec = &mut svc["spec"];
        let owned_ips: HashSet<IpAddr> = old
            .map(|o| service_ips(o).into_iter().collect())
            .unwrap_or_default();
        let owned_ports: HashSet<u16> = old
            .map(service_node_ports)
            .unwrap_or_default()
            .into_iter()
            .collect();
        // clusterIP / clusterIPs consistency (SetDefaults + ValidateService).
        let cluster_ip = spec
            .get("clusterIP")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let mut ips: Vec<String> = spec
            .get("clusterIPs")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if ips.is_empty() && !cluster_ip.is_empty() {
            ips.push(cluster_ip.clone());
        }
        if !cluster_ip.is_empty() && ips.first() != Some(&cluster_ip) {
            errs.push(FieldError::invalid(
                "spec.clusterIPs",
                &json!(ips),
                "first value must match `clusterIP`",
            ));
            return errs;
        }
        let policy = spec
            .get("ipFamilyPolicy")
            .and_then(Value::as_str)
            .unwrap_or("SingleStack")
            .to_string();
        spec["ipFamilyPolicy"] = json!(policy);
        let headless = ips.first().map(String::as_str) == Some("None");
        let mut families: Vec<String> = spec
            .get("ipFamilies")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if families.is_empty() {
            if !headless {
                for ip in &ips {
                    match ip.parse::<IpAddr>() {
                        Ok(IpAddr::V4(_)) => families.push("IPv4".into()),
                        Ok(IpAddr::V6(_)) => families.push("IPv6".into()),
                        Err(_) => {}
                    }
                }
            }
            if families.is_empty() {
                families.push("IPv4".into());
            }
            if policy != "SingleStack" && families.len() == 1 {
                let other = if families[0] == "IPv4" {
                    "IPv6"
                } else {
                    "IPv4"
                };
                families.push(other.into());
            }
        }
        if policy == "SingleStack" && families.len() > 1 {
            errs.push(FieldError::invalid(
                "spec.ipFamilies",
                &json!(families),
                "when multiple IP families are specified, IP family policy must be RequireDualStack or PreferDualStack",
            ));
            return errs;
        }
        spec["ipFamilies"] = json!(families);
        if headless {
            spec["clusterIP"] = json!("None");
            spec["clusterIPs"] = json!(["None"]);
        } else {
            for (i, fam) in families.iter().enumerate() {
                match ips.get(i) {
                    Some(ip) => {
                        match ip.parse::<IpAddr>() {
                            Ok(addr) => {
                                let fam_ok = matches!(
                                    (fam.as_str(), addr),
                                    ("IPv4", IpAddr::V4(_)) | ("IPv6", IpAddr::V6(_))
                                );
                                if !fam_ok {
                                    errs.push(FieldError::invalid(
                                    format!("spec.clusterIPs[{i}]"),
                                    &json!(ip),
                                    &format!("expected an {fam} value as indicated by `ipFamilies[{i}]`"),
                                ));
                                } else if !in_service_range(addr) {
                                    errs.push(FieldError::invalid(
                                    "spec.clusterIPs",
                                    &json!(ips),
                                    &format!(
                                        "failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of valid IPs is {}",
                                        if fam == "IPv4" { "10.43.0.0/16" } else { "fd00:43::/112" }
                                    ),
                                ));
                                } else if self.ips.contains(&addr) && !owned_ips.contains(&addr) {
                                    errs.push(FieldError::invalid(
                                    "spec.clusterIPs",
                                    &json!(ips),
                                    &format!("failed to allocate IP {ip}: provided IP is already allocated"),
                                ));
                                }
                            }
                            Err(_) => errs.push(FieldError::invalid(
                                format!("spec.clusterIPs[{i}]"),
                                &json!(ip),
                                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                            )),
                        }
                    }
                    None => {
                        let ip = if fam == "IPv4" {
                            IpAddr::V4(self.next_free_v4())
                        } else {
                            IpAddr::V6(self.next_free_v6())
                        };
                        ips.push(ip.to_string());
                    }
                }
            }
            spec["clusterIP"] = json!(ips.first().cloned().unwrap_or_default());
            spec["clusterIPs"] = json!(ips);
        }
        let wants_node_ports = ty == "NodePort"
            || (ty == "LoadBalancer"
                && spec
                    .get("allocateLoadBalancerNodePorts")
                    .and_then(Value::as_bool)
                    != Some(false));
        if wants_node_ports {
            let mut taken: HashSet<u16> = HashSet::new();
            if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                // Ports that are not objects were already reported by validation.
                for (i, p) in ports.iter_mut().enumerate().filter(|(_, p)| p.is_object()) {
                    match p
                        .get("nodePort")
                        .and_then(Value::as_i64)
                        .filter(|n| *n != 0)
                    {
                        Some(n) => {
                            let ok = u16::try_from(n)
                                .ok()
                                .filter(|n| (NODE_PORT_MIN..=NODE_PORT_MAX).contains(n));
                            match ok {
                                None => errs.push(FieldError::invalid(
                                    format!("spec.ports[{i}].nodePort"),
                                    &json!(n),
                                    "provided port is not in the valid range. The range of valid ports is 30000-32767",
                                )),
                                Some(n) if (self.node_ports.contains(&n) && !owned_ports.contains(&n)) || !taken.insert(n) => {
                                    errs.push(FieldError::invalid(
                                        format!("spec.ports[{i}].nodePort"),
                                        &json!(n),
                                        "provided port is already allocated",
                                    ));
                                }
                                Some(_) => {}
                            }
                        }
                        None => {
                            let n = self.next_free_port(&taken);
                            taken.insert(n);
                            p["nodePort"] = json!(n);
                        }
                    }
                }
            }
        }
        errs
    }

    /// The next free IPv4 address from where the last search stopped, wrapping round to the
    /// dynamic band's start (that band's first address if the whole range is held).
    fn next_free_v4(&mut self) -> Ipv4Addr {
        for _ in 0..SERVICE_V4_SIZE {
            let off = self.next_v4;
            self.next_v4 = if off + 1 >= SERVICE_V4_SIZE - 1 {
                SERVICE_DYNAMIC_OFFSET
            } else {
                off + 1
            };
            let ip = Ipv4Addr::from(SERVICE_V4_BASE + off);
            if !self.ips.contains(&IpAddr::V4(ip)) {
                return ip;
            }
        }
        Ipv4Addr::from(SERVICE_V4_BASE + SERVICE_DYNAMIC_OFFSET)
    }

    /// As [`Allocator::next_free_v4`], for the IPv6 range.
    fn next_free_v6(&mut self) -> Ipv6Addr {
        for _ in 0..SERVICE_V6_SIZE {
            let off = self.next_v6;
            self.next_v6 = if off + 1 >= SERVICE_V6_SIZE {
                u128::from(SERVICE_DYNAMIC_OFFSET)
            } else {
                off + 1
            };
            let ip = Ipv6Addr::from(SERVICE_V6_BASE + off);
            if !self.ips.contains(&IpAddr::V6(ip)) {
                return ip;
            }
        }
        Ipv6Addr::from(SERVICE_V6_BASE + u128::from(SERVICE_DYNAMIC_OFFSET))
    }

    /// The next NodePort neither held nor in `taken` (the ports this Service already got), from
    /// where the last search stopped, wrapping round to the dynamic band's start.
    fn next_free_port(&mut self, taken: &HashSet<u16>) -> u16 {
        for _ in NODE_PORT_MIN..=NODE_PORT_MAX {
            let n = self.next_port;
            self.next_port = if n >= NODE_PORT_MAX {
                NODE_PORT_DYNAMIC_START
            } else {
                n + 1
            };
            if !self.node_ports.contains(&n) && !taken.contains(&n) {
                return n;
            }
        }
        NODE_PORT_DYNAMIC_START
    }

    /// Records the cluster IPs and NodePorts `svc` holds (once it is stored).
    pub(super) fn commit(&mut self, svc: &Value) {
        self.ips.extend(service_ips(svc));
        self.node_ports.extend(service_node_ports(svc));
    }

    /// Frees what `old` held and `new` (if any) no longer holds.
    pub(super) fn release(&mut self, old: &Value, new: Option<&Value>) {
        let keep_ips: HashSet<IpAddr> = new
            .map(service_ips)
            .unwrap_or_default()
            .into_iter()
            .collect();
        let keep_ports: HashSet<u16> = new
            .map(service_node_ports)
            .unwrap_or_default()
            .into_iter()
            .collect();
        for ip in service_ips(old) {
            if !keep_ips.contains(&ip) {
                self.ips.remove(&ip);
            }
        }
        for p in service_node_ports(old) {
            if !keep_ports.contains(&p) {
                self.node_ports.remove(&p);
            }
        }
    }
}

/// Whether `ip` may be held by a Service: inside its family's range, and neither the network
/// address nor (IPv4) the broadcast address.
fn in_service_range(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let n = u32::from(a);
            n > SERVICE_V4_BASE && n < SERVICE_V4_BASE + SERVICE_V4_SIZE - 1
        }
        IpAddr::V6(a) => {
            let n = u128::from(a);
            n > SERVICE_V6_BASE && n < SERVICE_V6_BASE + SERVICE_V6_SIZE
        }
    }
}

/// The cluster IPs `svc` holds (`spec.clusterIPs`; "None" and other non-addresses are skipped).
fn service_ips(svc: &Value) -> Vec<IpAddr> {
    svc.pointer("/spec/clusterIPs")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|v| v.as_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

/// The NodePorts `svc` holds (non-zero `spec.ports[].nodePort`).
fn service_node_ports(svc: &Value) -> Vec<u16> {
    svc.pointer("/spec/ports")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|p| u16::try_from(p.get("nodePort")?.as_i64()?).ok())
                .filter(|n| *n != 0)
                .collect()
        })
        .unwrap_or_default()
}

/// On update, values the server allocated are kept when the new body leaves them out
/// (pkg/registry/core/service/storage patchAllocatedValues).
pub(super) fn carry_allocations(new: &mut Value, old: &Value) {
    if !new.get("spec").is_some_and(Value::is_object) {
        new["spec"] = json!({});
    }
    let same_type = new
        .pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        == str_at(old, "/spec/type");
    let spec = &mut new["spec"];
    let unset = |v: Option<&Value>| match v {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        _ => false,
    };
    if str_at(old, "/spec/type") != "ExternalName" {
        for k in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
            if unset(spec.get(k))
                && let Some(v) = old.pointer(&format!("/spec/{k}"))
            {
                spec[k] = v.clone();
            }
        }
    }
    if same_type
        && let Some(old_ports) = old.pointer("/spec/ports").and_then(Value::as_array)
        && let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut)
    {
        for p in ports {
            if !p.is_object() || p.get("nodePort").and_then(Value::as_i64).unwrap_or(0) != 0 {
                continue;
            }
            let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            if let Some(np) = old_ports
                .iter()
                .find(|o| {
                    o.get("port") == p.get("port")
                        && o.get("protocol").and_then(Value::as_str).unwrap_or("TCP") == proto
                })
                .and_then(|o| o.get("nodePort"))
            {
                p["nodePort"] = np.clone();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::store::fixtures::*;
    use crate::store::{DeleteParams, WriteParams, str_at};

    // matches: https://kubernetes.io/docs/concepts/services-networking/dual-stack/#services
    #[test]
    fn services_get_cluster_ips_families_and_policy_by_default() {
        let s = store();
        let body = json!({"metadata": {"name": "kubernetes-vip"}, "spec": {"type": "LoadBalancer", "ports": [{"name": "k8s-api", "port": 6443}]}});
        let o = s
            .create(services(), Some("default"), body, &WriteParams::default())
            .unwrap();
        let ip = str_at(&o, "/spec/clusterIP");
        assert!(ip.starts_with("10.43."), "{ip}");
        assert_eq!(o["spec"]["clusterIPs"], json!([ip]));
        assert_eq!(o["spec"]["ipFamilies"], json!(["IPv4"]));
        assert_eq!(o["spec"]["ipFamilyPolicy"], "SingleStack");
        let np = o["spec"]["ports"][0]["nodePort"].as_i64().unwrap();
        assert!((30000..=32767).contains(&np));
        let dual = json!({"metadata": {"name": "d"}, "spec": {"ipFamilyPolicy": "RequireDualStack", "ports": [{"port": 80}]}});
        let d = s
            .create(services(), Some("default"), dual, &WriteParams::default())
            .unwrap();
        assert_eq!(d["spec"]["ipFamilies"], json!(["IPv4", "IPv6"]));
        assert!(
            d["spec"]["clusterIPs"][1]
                .as_str()
                .unwrap()
                .starts_with("fd00:43::")
        );
        assert!(d["spec"]["ports"][0].get("nodePort").is_none());
    }

    // matches: https://kubernetes.io/docs/concepts/services-networking/cluster-ip-allocation/
    #[test]
    fn a_cluster_ip_in_use_or_out_of_range_is_rejected_and_freed_on_delete() {
        let s = store();
        let mk = |n: &str, ip: &str| json!({"metadata": {"name": n}, "spec": {"clusterIP": ip, "ports": [{"port": 443}]}});
        s.create(
            services(),
            Some("default"),
            mk("kubernetes", "10.43.0.1"),
            &WriteParams::default(),
        )
        .unwrap();
        let e = s
            .create(
                services(),
                Some("default"),
                mk("other", "10.43.0.1"),
                &WriteParams::default(),
            )
            .unwrap_err();
        assert_eq!(e.code, 422);
        assert_eq!(
            e.message,
            "Service \"other\" is invalid: spec.clusterIPs: Invalid value: [\"10.43.0.1\"]: failed to allocate IP 10.43.0.1: provided IP is already allocated"
        );
        let e = s
            .create(
                services(),
                Some("default"),
                mk("far", "10.44.0.1"),
                &WriteParams::default(),
            )
            .unwrap_err();
        assert!(
            e.message.contains("is not in the valid range"),
            "{}",
            e.message
        );
        s.delete(
            services(),
            Some("default"),
            "kubernetes",
            &DeleteParams::default(),
        )
        .unwrap();
        s.create(
            services(),
            Some("default"),
            mk("other", "10.43.0.1"),
            &WriteParams::default(),
        )
        .unwrap();
    }

    // matches: https://github.com/kubernetes/kubernetes/blob/v1.33.0/pkg/registry/core/service/storage/storage.go (patchAllocatedValues)
    #[test]
    fn replacing_a_service_without_cluster_ip_keeps_the_allocated_one() {
        let s = store();
        let body = json!({"metadata": {"name": "v"}, "spec": {"type": "LoadBalancer", "ports": [{"name": "a", "port": 6443}]}});
        let o = s
            .create(
                services(),
                Some("default"),
                body.clone(),
                &WriteParams::default(),
            )
            .unwrap();
        let mut again = body;
        again["metadata"]["labels"] = json!({"serviceType": "kubernetes-vip"});
        let u = s
            .replace(
                services(),
                Some("default"),
                "v",
                again,
                &WriteParams::default(),
            )
            .unwrap();
        assert_eq!(u["spec"]["clusterIP"], o["spec"]["clusterIP"]);
        assert_eq!(
            u["spec"]["ports"][0]["nodePort"],
            o["spec"]["ports"][0]["nodePort"]
        );
    }

    // Robustness: malformed bodies are refused, never a panic under the store's lock.
    #[test]
    fn malformed_service_ports_are_rejected_without_panicking() {
        let s = store();
        let e = s
            .create(
                services(),
                Some("default"),
                json!({"metadata": {"name": "v"}, "spec": {"type": "NodePort", "ports": [5, {"port": 80}]}}),
                &WriteParams::default(),
            )
            .unwrap_err();
        assert_eq!(e.code, 422);
        s.create(
            services(),
            Some("default"),
            json!({"metadata": {"name": "w"}, "spec": {"type": "NodePort", "ports": [{"name": "a", "port": 80}]}}),
            &WriteParams::default(),
        )
        .unwrap();
        let e = s
            .replace(
                services(),
                Some("default"),
                "w",
                json!({"metadata": {"name": "w"}, "spec": {"type": "NodePort", "ports": [7]}}),
                &WriteParams::default(),
            )
            .unwrap_err();
        assert_eq!(e.code, 422);
    }
}
