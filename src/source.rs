//! Where a pair's endpoints come from: a Service in this cluster, a Service in another cluster
//! (reached through a kubeconfig of its own), or a fixed list of addresses. A pair has one or
//! more sources; the target gets their union (`desired::union`).
//!
//! Pure data: parsing the config is `config`'s, reading a remote cluster is `remote`'s, naming
//! the target slices is `desired`'s. Every type here orders, hashes and prints the same way on
//! every host, because the names of target slices and the member records derive from them.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use crate::names::ServiceRef;

/// One source of a pair.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// A Service in this cluster (`{ service = "ns/name" }`, or the short form `source =`).
    Service(ServiceRef),
    /// A Service in the cluster that a kubeconfig of its own reaches (`{ service = "ns/name",
    /// kubeconfig = "/path" }`).
    Remote(RemoteSource),
    /// Fixed addresses (`{ addresses = ["198.51.100.10", "2001:db8::10"] }`): ready per probe
    /// verdict, always ready without a probe.
    Static(StaticSource),
}

/// A Service in another cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RemoteSource {
    /// The kubeconfig that reaches the other cluster (absolute path). Each distinct path gets one
    /// client, shared by every source that names it.
    pub kubeconfig: PathBuf,
    /// The Service in that cluster whose EndpointSlices are copied.
    pub service: ServiceRef,
}

/// Fixed addresses, sorted and without duplicates (the config's order does not matter).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StaticSource {
    /// The addresses, IPv4 and IPv6 mixed; the target gets one slice per family it serves.
    pub addresses: Vec<IpAddr>,
}

impl StaticSource {
    /// The source of `addresses`, sorted and deduplicated.
    pub fn new(addresses: impl IntoIterator<Item = IpAddr>) -> StaticSource {
        let mut addresses: Vec<IpAddr> = addresses.into_iter().collect();
        addresses.sort();
        addresses.dedup();
        StaticSource { addresses }
    }
}

impl Source {
    /// The Service in this cluster that this source reads, if it is one.
    pub fn local_service(&self) -> Option<&ServiceRef> {
        match self {
            Source::Service(s) => Some(s),
            Source::Remote(_) | Source::Static(_) => None,
        }
    }

    /// The kind, in the words of the config and the logs: `service`, `remote`, `static`.
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Service(_) => "service",
            Source::Remote(_) => "remote",
            Source::Static(_) => "static",
        }
    }
}

impl fmt::Display for Source {
    /// `ns/name`, `ns/name in the cluster of /path/kubeconfig.yaml`, `static 198.51.100.10,
    /// 2001:db8::10`: what logs, Events and `status` say.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Service(s) => write!(f, "{s}"),
            Source::Remote(r) => write!(f, "{r}"),
            Source::Static(s) => {
                f.write_str("static ")?;
                for (i, a) in s.addresses.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{a}")?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for RemoteSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} in the cluster of {}",
            self.service,
            self.kubeconfig.display()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_addresses_are_sorted_and_deduplicated() {
        let s = StaticSource::new(
            [
                "2001:db8::10",
                "198.51.100.20",
                "198.51.100.10",
                "198.51.100.20",
            ]
            .map(|a| a.parse::<IpAddr>().unwrap()),
        );
        assert_eq!(
            Source::Static(s).to_string(),
            "static 198.51.100.10,198.51.100.20,2001:db8::10"
        );
    }

    #[test]
    fn a_remote_source_names_its_kubeconfig() {
        let r = Source::Remote(RemoteSource {
            kubeconfig: "/etc/endpoint-copier/remote.yaml".into(),
            service: "app/db".parse().unwrap(),
        });
        assert_eq!(
            r.to_string(),
            "app/db in the cluster of /etc/endpoint-copier/remote.yaml"
        );
        assert_eq!(r.local_service(), None);
    }
}
