//! Node facts, pure: the compact projection of a Node that the daemon keeps ([`NodeFacts`]: name,
//! addresses, zone, whether the control plane vouches for it, drain annotations), the index that
//! maps an endpoint address to its Node ([`NodeIndex`]), and what a drain means at a given
//! instant ([`Drain`], judged [`At`] this copy's clocks, from when it first saw each timed drain:
//! [`DrainClock`]).
//!
//! No API, no clock, no logging: `watch.rs` feeds the index from a Node watch, the caller passes
//! the instants in. What the facts do to target slices (fill `nodeName`/zone, derive the other
//! family, mark drained endpoints not ready) is `desired::nodes`.
//!
//! **Who may say which Node an address is on.** A kubelet writes its own Node's
//! `status.addresses` (and may annotate its own Node): any Node can claim any address. A claim
//! counts only from a Node the control plane vouches for — labelled
//! `node-role.kubernetes.io/control-plane` (or `/master`), labels that NodeRestriction forbids a
//! kubelet to set on itself — whenever some watched Node carries that label. With the default
//! `[nodes] selector` every watched Node does; with `selector = ""` a worker's kubelet therefore
//! can neither take an apiserver's address (and drain it) nor make it ambiguous. A Node without
//! the label is found through the `nodeName` a source sets (the endpointslice controller does,
//! from the Pod's binding). Where no watched Node is labelled (a cluster without role labels),
//! every claim counts, as the operator's selector chose those Nodes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::discovery::v1::Endpoint;
use tokio::time::Instant;

use crate::names::{
    ANNOTATION_DRAIN, ANNOTATION_DRAIN_DURATION, ANNOTATION_DRAIN_EXPIRES, CONTROL_PLANE_LABEL,
    DRAIN_VALUE, MASTER_LABEL, ZONE_LABEL,
};

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
    /// Whether the control plane vouches for the Node: it carries the
    /// `node-role.kubernetes.io/control-plane` or `/master` label, which no kubelet may set on
    /// itself (see the module documentation).
    pub control_plane: bool,
    /// The `endpoint-copier/drain` annotation, as written.
    pub drain: Option<String>,
    /// The `endpoint-copier/drain-expires` annotation, as written.
    pub drain_expires: Option<String>,
    /// The `endpoint-copier/drain-duration-secs` annotation, as written.
    pub drain_duration: Option<String>,
}

/// What a Node's drain annotations mean at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drain {
    /// No `endpoint-copier/drain` annotation.
    None,
    /// Drained: its endpoints are not ready in every target; `until` is the expiry, if any.
    Active {
        /// When the drain stops counting, on this copy's monotonic clock; `None`: until the
        /// annotation goes.
        until: Option<Instant>,
    },
    /// The drain expired: ignored.
    Expired,
    /// The annotations cannot be read (a value other than `"true"`, an expiry that is not RFC
    /// 3339, a duration that is not a whole number of seconds): ignored and reported, so a typo
    /// never takes an apiserver out of the VIP.
    Invalid(String),
}

/// The instant drains are judged at, by this copy's clocks.
#[derive(Debug, Clone, Copy)]
pub struct At<'a> {
    /// Now by the wall clock: used only for a drain whose end is written as an instant alone
    /// (`drain-expires` without `drain-duration-secs`: set by hand, or by an older version).
    pub wall: Timestamp,
    /// Now by this copy's monotonic clock.
    pub mono: Instant,
    /// When this copy first saw each timed drain; `None` (a one-shot reading: `check`,
    /// `status`): every timed drain counts as first seen now.
    pub seen: Option<&'a DrainClock>,
}

impl At<'_> {
    /// Now, for a one-shot reading (no drain seen before).
    pub fn once() -> At<'static> {
        At {
            wall: Timestamp::now(),
            mono: Instant::now(),
            seen: None,
        }
    }
}

/// When this copy first saw each Node's timed drain: a drain of `drain-duration-secs = N` lasts
/// N seconds from then, by this copy's monotonic clock — never judged by the wall clock of the
/// host that wrote it. A drain whose annotations change (a new `drain` writes a new expiry) is a
/// new drain, seen anew.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrainClock {
    /// Per Node: its drain annotations as seen (duration, expiry) and when first seen.
    seen: BTreeMap<String, (DrainKey, Instant)>,
}

/// The annotations that make one drain: `drain-duration-secs` and `drain-expires`, as written.
type DrainKey = (Option<String>, Option<String>);

impl DrainClock {
    /// Notes, at `now`, every timed drain in `index` not seen before (or whose annotations
    /// changed), and forgets the Nodes that have none any more.
    pub fn observe(&mut self, index: &NodeIndex, now: Instant) {
        self.seen
            .retain(|name, (key, _)| index.get(name).is_some_and(|n| n.drain_key() == *key));
        for node in index.nodes().filter(|n| n.drain_duration.is_some()) {
            self.seen
                .entry(node.name.clone())
                .or_insert_with(|| (node.drain_key(), now));
        }
    }

    /// When `node`'s drain, as annotated now, was first seen.
    fn first_seen(&self, node: &NodeFacts) -> Option<Instant> {
        self.seen
            .get(&node.name)
            .filter(|(key, _)| *key == node.drain_key())
            .map(|(_, at)| *at)
    }
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
            control_plane: label(CONTROL_PLANE_LABEL).is_some() || label(MASTER_LABEL).is_some(),
            drain: annotation(ANNOTATION_DRAIN),
            drain_expires: annotation(ANNOTATION_DRAIN_EXPIRES),
            drain_duration: annotation(ANNOTATION_DRAIN_DURATION),
        })
    }

    /// Whether the Node carries a drain set to last until removed: `drain: "true"` with neither
    /// an expiry nor a duration (set by hand; `drain` keeps it so, `resume --timed-only` leaves
    /// it).
    pub fn has_lasting_drain(&self) -> bool {
        self.drain.as_deref() == Some(DRAIN_VALUE)
            && self.drain_expires.is_none()
            && self.drain_duration.is_none()
    }

    /// Whether the Node carries any of the three drain annotations (what `resume` removes).
    pub fn has_drain_annotations(&self) -> bool {
        self.drain.is_some() || self.drain_expires.is_some() || self.drain_duration.is_some()
    }

    /// The annotations that make this Node's drain what it is.
    fn drain_key(&self) -> DrainKey {
        (self.drain_duration.clone(), self.drain_expires.clone())
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

    /// What the drain annotations mean `at` this copy's clocks: `drain-duration-secs` counts
    /// from when this copy first saw the drain (monotonic); `drain-expires` alone is an instant,
    /// judged by this copy's wall clock; `drain` alone lasts until removed.
    pub fn drain(&self, at: At<'_>) -> Drain {
        let Some(value) = self.drain.as_deref() else {
            return Drain::None;
        };
        if value != DRAIN_VALUE {
            return Drain::Invalid(format!(
                "{ANNOTATION_DRAIN} is '{value}', not \"{DRAIN_VALUE}\"; the drain is ignored"
            ));
        }
        if let Some(text) = self.drain_duration.as_deref() {
            let Ok(secs) = text.trim().parse::<u64>() else {
                return Drain::Invalid(format!(
                    "{ANNOTATION_DRAIN_DURATION} is '{text}', not a whole number of seconds; the drain is ignored"
                ));
            };
            let since = at.seen.and_then(|c| c.first_seen(self)).unwrap_or(at.mono);
            let until = since
                .checked_add(Duration::from_secs(secs))
                .unwrap_or_else(|| at.mono + Duration::from_secs(100 * 365 * 24 * 3600));
            return if until > at.mono {
                Drain::Active { until: Some(until) }
            } else {
                Drain::Expired
            };
        }
        match self.drain_expires.as_deref().map(str::parse::<Timestamp>) {
            None => Drain::Active { until: None },
            Some(Ok(until)) if until > at.wall => Drain::Active {
                until: Some(at.mono + at.wall.duration_until(until).unsigned_abs()),
            },
            Some(Ok(_)) => Drain::Expired,
            Some(Err(_)) => Drain::Invalid(format!(
                "{ANNOTATION_DRAIN_EXPIRES} is not an RFC 3339 instant; the drain is ignored"
            )),
        }
    }
}

pub use crate::family::of as family_of;

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
    /// How many known Nodes the control plane vouches for: while any, only their claims on an
    /// address count.
    vouched: usize,
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
        if facts.control_plane {
            self.vouched += 1;
        }
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
        if old.control_plane {
            self.vouched -= 1;
        }
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

    /// The Node whose `status.addresses` holds `ip`: among the Nodes that claim it, only those
    /// the control plane vouches for count while any known Node is vouched for (a kubelet
    /// writes its own addresses; see the module documentation).
    pub fn lookup(&self, ip: IpAddr) -> Lookup<'_> {
        let Some(names) = self.by_address.get(&ip) else {
            return Lookup::None;
        };
        let mut found: Vec<&NodeFacts> = names
            .iter()
            .filter_map(|n| self.by_name.get(n))
            .filter(|n| self.vouched == 0 || n.control_plane)
            .collect();
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

    /// The Nodes drained `at` this copy's clocks, by name. Which endpoints that takes out of a
    /// target is `desired::nodes::withhold`'s: those of this cluster whose Node, by the rule of
    /// [`NodeIndex::node_of`], is one of these.
    pub fn drained(&self, at: At<'_>) -> BTreeSet<String> {
        self.by_name
            .values()
            .filter(|n| matches!(n.drain(at), Drain::Active { .. }))
            .map(|n| n.name.clone())
            .collect()
    }

    /// The earliest end of a drain still active `at` this copy's clocks (monotonic): when the
    /// engine must look again.
    pub fn next_expiry(&self, at: At<'_>) -> Option<Instant> {
        self.by_name
            .values()
            .filter_map(|n| match n.drain(at) {
                Drain::Active { until } => until,
                _ => None,
            })
            .min()
    }
}

/// Whether `endpoint` stands on `node`: its `nodeName` names it, or (no `nodeName`) its first
/// address is one of the Node's. (Remote sources' endpoints are another cluster's: callers pass
/// this cluster's slices only.)
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

#[cfg(test)]
pub(crate) mod tests;
