//! Copier groups: the copies elected by one Lease, what they write, and who among them is live.
//!
//! A **group** is named by its election Lease (`namespace/name`, default
//! `kube-system/endpoint-copier`). Every EndpointSlice a group writes carries the label
//! [`names::GROUP_LABEL`] with [`Group::label_value`], so a leader lists and deletes only its own
//! group's slices; slices written before groups existed (no group label) belong to the default
//! group. Every running copy, leader or follower, publishes a **member** Lease in the member
//! namespace ([`publish::publish`]) that says it is alive, which pairs its own config names and
//! what its probes see; the leader watches them ([`live::watch`]) into [`Members`], a pure state
//! that answers the questions asked before a delete (does any other copy still want this target:
//! [`Members::who_wants`]) and before an eviction (whose ballots count: [`Members::ballots`]).
//!
//! Files: this one holds [`Group`] and [`Settings`]; `member.rs` the member record and its Lease;
//! `wire.rs` the record's annotations within a size budget; `publish.rs` the publisher task;
//! `health.rs` what this process knows of its own record (written or failing, a twin seen);
//! `live.rs` the pure liveness state and the member watch; `merge.rs` that watch over the member
//! namespace and the place older versions used; `twins.rs` the pure detection of two live
//! processes under one identity; `digest.rs` the digest of a configured pair each record
//! carries; `skew.rs` where live copies differ (a pair configured differently, the versions
//! they run). What this module leaves to others: `daemon` starts the
//! publisher, polls the member watch into [`Members`], acts on the answers (hold, report, delete,
//! count) and reports [`SelfHealth`]; `desired` puts the group label on the slices it builds;
//! `config` supplies the settings. The protocol and its reasons are in `docs/development/group.md`.

pub mod digest;
pub mod health;
pub mod live;
pub mod member;
mod merge;
pub mod publish;
pub mod skew;
pub mod twins;
pub mod wire;

use std::time::Duration;

use crate::names;

pub use health::SelfHealth;
pub use live::{Members, Mismatch, Wanted};
pub use member::MemberRecord;
pub use publish::publish;
pub use skew::Skew;

/// The longest label value the API accepts.
const MAX_LABEL_VALUE: usize = 63;

/// How often, how long and how patiently members are judged; the `[members]` config section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// How often each copy renews its member Lease (default: 10 s, so 6 writes per minute and
    /// host).
    pub heartbeat: Duration,
    /// How long a member counts as live after its Lease was last seen to change; written to the
    /// member Lease's `leaseDurationSeconds` (default: 30 s, three heartbeats).
    pub expiry: Duration,
    /// How long a member not seen to change still holds the slices its pairs name, and after
    /// which the leader may delete its member Lease (default: 900 s).
    pub forget_after: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            heartbeat: Duration::from_secs(10),
            expiry: Duration::from_secs(30),
            forget_after: Duration::from_secs(900),
        }
    }
}

/// A copier group: the copies elected by the Lease `lease_namespace/lease_name`, whose member
/// Leases live in `members_namespace`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Group {
    /// Namespace of the election Lease.
    lease_namespace: String,
    /// Name of the election Lease.
    lease_name: String,
    /// Namespace of the member Leases (`[members] namespace`).
    members_namespace: String,
    /// The value of [`names::GROUP_LABEL`], computed once.
    label_value: String,
}

impl Group {
    /// The group elected by the Lease `lease_namespace/lease_name`, with its member Leases in
    /// the same namespace (the layout of versions before `[members] namespace`; the daemon and
    /// `check` move them with [`Group::members_in`]).
    pub fn new(lease_namespace: &str, lease_name: &str) -> Group {
        Group {
            lease_namespace: lease_namespace.to_owned(),
            lease_name: lease_name.to_owned(),
            members_namespace: lease_namespace.to_owned(),
            label_value: label_value(lease_namespace, lease_name),
        }
    }

    /// The group `config` forms: elected by `[lease]`'s Lease, members in `[members] namespace`
    /// (what the daemon runs with and `check` inspects).
    pub fn configured(config: &crate::config::Config) -> Group {
        Group::new(&config.lease.namespace, &config.lease.name)
            .members_in(&config.members.namespace)
    }

    /// The same group with its member Leases in `namespace`.
    #[must_use]
    pub fn members_in(mut self, namespace: &str) -> Group {
        namespace.clone_into(&mut self.members_namespace);
        self
    }

    /// The default group, elected by `kube-system/endpoint-copier`, members in the default
    /// `[members] namespace`.
    pub fn default_group() -> Group {
        Group::new(names::LEASE_NAMESPACE, names::LEASE_NAME).members_in(names::MEMBERS_NAMESPACE)
    }

    /// Namespace of the election Lease.
    pub fn lease_namespace(&self) -> &str {
        &self.lease_namespace
    }

    /// Namespace of the member Leases.
    pub fn members_namespace(&self) -> &str {
        &self.members_namespace
    }

    /// Where versions before `[members] namespace` kept the member Leases (the election
    /// Lease's namespace), when that is not [`Group::members_namespace`]: read during an
    /// upgrade, so that a new leader still sees the members of older copies.
    pub fn legacy_members_namespace(&self) -> Option<&str> {
        (self.lease_namespace != self.members_namespace).then_some(self.lease_namespace.as_str())
    }

    /// Name of the election Lease.
    pub fn lease_name(&self) -> &str {
        &self.lease_name
    }

    /// The value of [`names::GROUP_LABEL`]: `<lease-namespace>.<lease-name>` when that is a valid
    /// label value (at most 63 characters), else a readable prefix of it, `-`, and 8 hex digits of
    /// its FNV-1a hash, so that two groups never share a value by truncation.
    pub fn label_value(&self) -> &str {
        &self.label_value
    }

    /// Whether this is the group of the default Lease `kube-system/endpoint-copier`, which adopts
    /// the slices written before groups existed.
    pub fn is_default(&self) -> bool {
        self.lease_namespace == names::LEASE_NAMESPACE && self.lease_name == names::LEASE_NAME
    }

    /// The label selectors whose union lists exactly the EndpointSlices this group owns (those
    /// `desired::manager_of` calls `Us` for [`Group::owner`]): one for our group label, plus, for the default group, one for our
    /// slices without any group label. A LIST or watch per selector; the results never overlap.
    pub fn label_selectors(&self) -> Vec<String> {
        let managed = format!("{}={}", names::MANAGED_BY_LABEL, names::MANAGED_BY);
        let mut selectors = vec![format!(
            "{managed},{}={}",
            names::GROUP_LABEL,
            self.label_value
        )];
        if self.is_default() {
            selectors.push(format!("{managed},!{}", names::GROUP_LABEL));
        }
        selectors
    }

    /// The labels this group puts on what it writes: `endpoint-copier/group: <value>`.
    pub fn label(&self) -> (String, String) {
        (names::GROUP_LABEL.to_owned(), self.label_value.clone())
    }

    /// What the pure core (`desired`) needs to know of this group to tell its slices apart.
    pub fn owner(&self) -> crate::desired::Owner {
        crate::desired::Owner {
            group: self.label_value.clone(),
            adopts_unlabelled: self.is_default(),
        }
    }

    /// The label selector of this group's member Leases.
    pub fn member_selector(&self) -> String {
        format!(
            "{}={},{}={}",
            names::GROUP_LABEL,
            self.label_value,
            names::MEMBER_LABEL,
            names::MEMBER_LABEL_VALUE
        )
    }
}

impl std::fmt::Display for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.lease_namespace, self.lease_name)
    }
}

/// See [`Group::label_value`]. Any character a label value may not hold becomes `-`, so even a
/// Lease name the API would refuse yields a valid value.
fn label_value(namespace: &str, name: &str) -> String {
    let full = format!("{namespace}.{name}");
    let clean: String = full
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let trimmed = clean.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if trimmed == full && full.len() <= MAX_LABEL_VALUE {
        return full;
    }
    let hash = format!("{:08x}", fnv1a(format!("{namespace}/{name}").as_bytes()));
    let head: String = trimmed.chars().take(MAX_LABEL_VALUE - 9).collect();
    let head = head.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    if head.is_empty() {
        hash
    } else {
        format!("{head}-{hash}")
    }
}

/// Whether `s` is a valid label value: at most 63 characters of `[A-Za-z0-9_.-]`, alphanumeric at
/// both ends (or empty).
pub fn is_label_value(s: &str) -> bool {
    let b = s.as_bytes();
    b.is_empty()
        || (b.len() <= MAX_LABEL_VALUE
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric())
}

/// 32-bit FNV-1a (as `desired` uses for slice names; private there): names and label values built
/// from it must be identical on every host, run and version, which std's seeded hasher is not.
pub(crate) fn fnv1a(bytes: &[u8]) -> u32 {
    const OFFSET_BASIS: u32 = 0x811c_9dc5;
    const PRIME: u32 = 0x0100_0193;
    bytes.iter().fold(OFFSET_BASIS, |hash, b| {
        (hash ^ u32::from(*b)).wrapping_mul(PRIME)
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use proptest::prelude::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// Whether `group` owns a slice with `labels`: the one ownership rule, `desired::manager_of`.
    fn owns(group: &Group, labels: &BTreeMap<String, String>) -> bool {
        let slice = k8s_openapi::api::discovery::v1::EndpointSlice {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                labels: Some(labels.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        crate::desired::manager_of(&slice, &group.owner()) == crate::desired::Manager::Us
    }

    #[test]
    fn the_default_group_is_named_after_the_default_lease() {
        let g = Group::default_group();
        assert!(g.is_default());
        assert_eq!(g.label_value(), "kube-system.endpoint-copier");
        assert_eq!(g.to_string(), "kube-system/endpoint-copier");
        assert!(!Group::new("kube-system", "other").is_default());
        assert!(!Group::new("default", "endpoint-copier").is_default());
    }

    #[test]
    fn a_long_lease_name_gets_a_readable_prefix_and_a_hash() {
        let long = "a".repeat(200);
        let g = Group::new("kube-system", &long);
        let v = g.label_value();
        assert!(is_label_value(v), "{v}");
        assert!(v.starts_with("kube-system.aaaa"));
        assert_eq!(v.len(), 63);
        // Same prefix, different tail: different values.
        let other = Group::new("kube-system", &format!("{long}b"));
        assert_ne!(v, other.label_value());
    }

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        assert_eq!(fnv1a(b""), 0x811c_9dc5);
        assert_eq!(fnv1a(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a(b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn a_group_owns_slices_with_its_label_and_the_default_group_adopts_unlabelled_ones() {
        let default = Group::default_group();
        let other = Group::new("kube-system", "edge");
        let old = labels(&[(names::MANAGED_BY_LABEL, names::MANAGED_BY)]);
        let ours = labels(&[
            (names::MANAGED_BY_LABEL, names::MANAGED_BY),
            (names::GROUP_LABEL, default.label_value()),
        ]);
        let theirs = labels(&[
            (names::MANAGED_BY_LABEL, names::MANAGED_BY),
            (names::GROUP_LABEL, other.label_value()),
        ]);
        assert!(owns(&default, &old));
        assert!(owns(&default, &ours));
        assert!(!owns(&default, &theirs));
        assert!(!owns(&other, &old));
        assert!(!owns(&other, &ours));
        assert!(owns(&other, &theirs));
    }

    #[test]
    fn no_group_owns_a_slice_another_manager_writes() {
        let default = Group::default_group();
        let controller = labels(&[
            (names::MANAGED_BY_LABEL, "endpointslice-controller.k8s.io"),
            (names::GROUP_LABEL, default.label_value()),
        ]);
        assert!(!owns(&default, &controller));
        assert!(!owns(&default, &BTreeMap::new()));
    }

    #[test]
    fn the_default_group_lists_its_labelled_and_its_unlabelled_slices() {
        assert_eq!(
            Group::default_group().label_selectors(),
            vec![
                "endpointslice.kubernetes.io/managed-by=endpoint-copier,endpoint-copier/group=kube-system.endpoint-copier".to_owned(),
                "endpointslice.kubernetes.io/managed-by=endpoint-copier,!endpoint-copier/group".to_owned(),
            ]
        );
        assert_eq!(
            Group::new("edge", "vip").label_selectors(),
            vec![
                "endpointslice.kubernetes.io/managed-by=endpoint-copier,endpoint-copier/group=edge.vip"
                    .to_owned()
            ]
        );
        assert_eq!(
            Group::new("edge", "vip").member_selector(),
            "endpoint-copier/group=edge.vip,endpoint-copier/member=true"
        );
    }

    proptest! {
        #[test]
        fn every_group_label_value_is_valid_and_distinct_groups_get_distinct_values(
            ns in "[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?",
            a in "[a-z0-9]([-a-z0-9.]{0,250}[a-z0-9])?",
            b in "[a-z0-9]([-a-z0-9.]{0,250}[a-z0-9])?",
        ) {
            let ga = Group::new(&ns, &a);
            prop_assert!(is_label_value(ga.label_value()), "{}", ga.label_value());
            if a != b {
                let gb = Group::new(&ns, &b);
                prop_assert_ne!(ga.label_value(), gb.label_value());
            }
        }

        #[test]
        fn any_input_yields_a_valid_label_value(ns in ".{0,80}", name in ".{0,300}") {
            prop_assert!(is_label_value(Group::new(&ns, &name).label_value()));
        }
    }
}
