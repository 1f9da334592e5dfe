//! Node facts, pure: the compact projection of a Node that the daemon keeps ([`NodeFacts`]: name,
//! addresses, zone, drain annotations), the index that maps an endpoint address to its Node
//! ([`NodeIndex`]), and what a drain means at a given instant ([`Drain`]).
//!
//! No API, no clock, no logging: `watch.rs` feeds the index from a Node watch, the caller passes
//! the wall-clock instant in. What the facts do to target slices (fill `nodeName`/zone, derive
//! the other family, mark drained endpoints not ready) is `desired::nodes`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};

use crate::names::{ANNOTATION_DRAIN, ANNOTATION_DRAIN_EXPIRES, DRAIN_VALUE, ZONE_LABEL};

/// `status.addresses[].type` of an address on the Node's internal network.
pub const INTERNAL_IP: &str = "InternalIP";
/// `status.addresses[].type` of an address reachable from outside the cluster network.
pub const EXTERNAL_IP: &str = "ExternalIP";

/// One IP address of a Node, with its `type` (only `InternalIP` and `ExternalIP` are kept:
/// host names are not addresses an endpoint can carry).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NodeAddress {
    /// `InternalIP` or `ExternalIP`.
    pub kind: String,
    /// The address.
    pub ip: IpAddr,
}

/// What the daemon keeps of a Node: a few hundred bytes, whatever the Node object weighs
/// (images, conditions and managedFields are dropped on arrival).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    /// `metadata.name`.
    pub name: String,
    /// `status.addresses` of type InternalIP or ExternalIP that parse as IP addresses, in the
    /// Node's order.
    pub addresses: Vec<NodeAddress>,
    /// The `topology.kubernetes.io/zone` label, if set.
    pub zone: Option<String>,
    /// The `endpoint-copier/drain` annotation, as written.
    pub drain: Option<String>,
    /// The `endpoint-copier/drain-expires` annotation, as written.
    pub drain_expires: Option<String>,
}

/// What a Node's drain annotations mean at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drain {
    /// No `endpoint-copier/drain` annotation.
    None,
    /// Drained: its endpoints are not ready in every target; `until` is the expiry, if any.
    Active {
        /// When the drain stops counting (`endpoint-copier/drain-expires`); `None`: until the
        /// annotation goes.
        until: Option<Timestamp>,
    },
    /// The drain expired at this instant: ignored.
    Expired(Timestamp),
    /// The annotations cannot be read (a value other than `"true"`, an expiry that is not RFC
    /// 3339): ignored and reported, so a typo never takes an apiserver out of the VIP.
    Invalid(String),
}

impl NodeFacts {
    /// The projection of `node`; `None` for a Node without a name.
    pub fn from_node(node: &Node) -> Option<NodeFacts> {
        let name = node.metadata.name.clone()?;
        let addresses = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .map(|list| {
                list.iter()
                    .filter(|a| a.type_ == INTERNAL_IP || a.type_ == EXTERNAL_IP)
                    .filter_map(|a| {
                        Some(NodeAddress {
                            kind: a.type_.clone(),
                            ip: a.address.parse().ok()?,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let label = |key: &str| node.metadata.labels.as_ref()?.get(key).cloned();
        let annotation = |key: &str| node.metadata.annotations.as_ref()?.get(key).cloned();
        Some(NodeFacts {
            name,
            addresses,
            zone: label(ZONE_LABEL).filter(|z| !z.is_empty()),
            drain: annotation(ANNOTATION_DRAIN),
            drain_expires: annotation(ANNOTATION_DRAIN_EXPIRES),
        })
    }

    /// Whether the Node holds `ip` in its addresses.
    pub fn has(&self, ip: IpAddr) -> bool {
        self.addresses.iter().any(|a| a.ip == ip)
    }

    /// The Node's address of `family` (`IPv4`/`IPv6`) an endpoint of that family stands on:
    /// the first InternalIP of that family, else the first ExternalIP.
    pub fn address_of_family(&self, family: &str) -> Option<IpAddr> {
        let of = |kind: &str| {
            self.addresses
                .iter()
                .find(|a| a.kind == kind && family_of(a.ip) == family)
                .map(|a| a.ip)
        };
        of(INTERNAL_IP).or_else(|| of(EXTERNAL_IP))
    }

    /// What the drain annotations mean at `now` (the leader's wall clock).
    pub fn drain(&self, now: Timestamp) -> Drain {
        let Some(value) = self.drain.as_deref() else {
            return Drain::None;
        };
        if value != DRAIN_VALUE {
            return Drain::Invalid(format!(
                "{ANNOTATION_DRAIN} is '{value}', not \"{DRAIN_VALUE}\"; the drain is ignored"
            ));
        }
        match self.drain_expires.as_deref().map(str::parse::<Timestamp>) {
            None => Drain::Active { until: None },
            Some(Ok(until)) if until > now => Drain::Active { until: Some(until) },
            Some(Ok(until)) => Drain::Expired(until),
            Some(Err(_)) => Drain::Invalid(format!(
                "{ANNOTATION_DRAIN_EXPIRES} is not an RFC 3339 instant; the drain is ignored"
            )),
        }
    }
}

/// `IPv4` or `IPv6`, as an EndpointSlice's `addressType` names the family of `ip`.
pub fn family_of(ip: IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => crate::desired::IPV4,
        IpAddr::V6(_) => crate::desired::IPV6,
    }
}

/// Which Node holds an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// No known Node holds it.
    None,
    /// Exactly one Node holds it.
    One(&'a NodeFacts),
    /// Several Nodes claim it (a stale Node object, a copied address): never guessed.
    Ambiguous(Vec<&'a str>),
}

/// The known Nodes by name, and the reverse map from address to the Nodes that hold it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeIndex {
    by_name: BTreeMap<String, NodeFacts>,
    by_address: BTreeMap<IpAddr, BTreeSet<String>>,
}

impl NodeIndex {
    /// An index of `nodes` (a later Node of the same name replaces an earlier one).
    pub fn new(nodes: impl IntoIterator<Item = NodeFacts>) -> NodeIndex {
        let mut index = NodeIndex::default();
        for n in nodes {
            index.insert(n);
        }
        index
    }

    /// Adds or replaces a Node; returns whether anything changed.
    pub fn insert(&mut self, facts: NodeFacts) -> bool {
        if self.by_name.get(&facts.name) == Some(&facts) {
            return false;
        }
        self.remove(&facts.name.clone());
        for a in &facts.addresses {
            self.by_address
                .entry(a.ip)
                .or_default()
                .insert(facts.name.clone());
        }
        self.by_name.insert(facts.name.clone(), facts);
        true
    }

    /// Removes a Node by name; returns whether it was known.
    pub fn remove(&mut self, name: &str) -> bool {
        let Some(old) = self.by_name.remove(name) else {
            return false;
        };
        for a in &old.addresses {
            if let Some(names) = self.by_address.get_mut(&a.ip) {
                names.remove(name);
                if names.is_empty() {
                    self.by_address.remove(&a.ip);
                }
            }
        }
        true
    }

    /// The Node named `name`, if known.
    pub fn get(&self, name: &str) -> Option<&NodeFacts> {
        self.by_name.get(name)
    }

    /// The known Nodes, by name.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeFacts> {
        self.by_name.values()
    }

    /// Number of known Nodes.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether no Node is known.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The Node whose `status.addresses` holds `ip`.
    pub fn lookup(&self, ip: IpAddr) -> Lookup<'_> {
        let Some(names) = self.by_address.get(&ip) else {
            return Lookup::None;
        };
        let mut found: Vec<&NodeFacts> = names.iter().filter_map(|n| self.by_name.get(n)).collect();
        match found.len() {
            0 => Lookup::None,
            1 => Lookup::One(found.remove(0)),
            _ => Lookup::Ambiguous(found.iter().map(|n| n.name.as_str()).collect()),
        }
    }

    /// The Node that alone holds `ip`, if exactly one does.
    pub fn node_of(&self, ip: IpAddr) -> Option<&NodeFacts> {
        match self.lookup(ip) {
            Lookup::One(n) => Some(n),
            Lookup::None | Lookup::Ambiguous(_) => None,
        }
    }

    /// The Nodes drained at `now`, by name.
    pub fn drained(&self, now: Timestamp) -> BTreeSet<String> {
        self.by_name
            .values()
            .filter(|n| matches!(n.drain(now), Drain::Active { .. }))
            .map(|n| n.name.clone())
            .collect()
    }

    /// Every address of the Nodes drained at `now` (both families): the endpoints a drain
    /// takes out of every target.
    pub fn drained_addresses(&self, now: Timestamp) -> BTreeSet<IpAddr> {
        self.by_name
            .values()
            .filter(|n| matches!(n.drain(now), Drain::Active { .. }))
            .flat_map(|n| n.addresses.iter().map(|a| a.ip))
            .collect()
    }

    /// The earliest expiry of a drain still active at `now`: when the engine must look again.
    pub fn next_expiry(&self, now: Timestamp) -> Option<Timestamp> {
        self.by_name
            .values()
            .filter_map(|n| match n.drain(now) {
                Drain::Active { until } => until,
                _ => None,
            })
            .min()
    }
}

/// Whether `endpoint` stands on `node`: its `nodeName` names it, or (no `nodeName`) its first
/// address is one of the Node's.
pub fn is_on(endpoint: &Endpoint, node: &NodeFacts) -> bool {
    match endpoint.node_name.as_deref() {
        Some(name) => name == node.name,
        None => endpoint
            .addresses
            .first()
            .and_then(|a| a.parse::<IpAddr>().ok())
            .is_some_and(|ip| node.has(ip)),
    }
}

/// The addresses of the endpoints of `slices` (one target's, as read) that stand on `node` and
/// are still ready (`conditions.ready` not `false`). Empty once a drain of `node` took effect in
/// that target. For `endpoint-copier drain`: wait until this is empty for every target.
pub fn ready_on(node: &NodeFacts, slices: &[EndpointSlice]) -> Vec<String> {
    slices
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| is_on(e, node) && crate::desired::is_ready(e))
        .filter_map(|e| e.addresses.first().cloned())
        .collect()
}

/// Number of ready endpoints of `slices` (one target's) that do not stand on `node`. Zero means
/// draining `node` would empty that target: the engine keeps one of its endpoints ready instead
/// (never fewer than one ready endpoint because of drains), and `endpoint-copier drain` refuses.
pub fn ready_elsewhere(node: &NodeFacts, slices: &[EndpointSlice]) -> usize {
    slices
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| !is_on(e, node) && crate::desired::is_ready(e))
        .count()
}

#[cfg(test)]
mod tests;
