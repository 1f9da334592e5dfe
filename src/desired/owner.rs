//! Who owns a target's EndpointSlices: this copier group, endpoint-copier-operator (adopted),
//! another copier group, or another manager altogether (the endpointslice or mirroring controller,
//! a person). Only the first two may ever be changed or deleted; the others are reported.
//!
//! A **copier group** is the set of copies elected by one Lease. Every slice we write carries
//! `endpoint-copier/group: <group>`, so two groups (two Leases, two configs) never see each other's
//! slices as theirs. Slices written before groups existed carry our managed-by label and no group
//! label: the default group (the default Lease) adopts them in place, any other group leaves them.
//!
//! A slice of our group that carries a label under `endpoint-copier/` or a source id this version
//! does not know was written by a newer version ([`Manager::NotUnderstood`]): a leader never
//! deletes or rewrites what it does not understand, so it is kept untouched and reported, like a
//! foreign slice, until a version that knows it leads (docs/usage/upgrade.md).

use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::{is_ready, label};
use crate::names::{
    ECO_MANAGED_BY, GROUP_LABEL, MANAGED_BY, MANAGED_BY_LABEL, SOURCE_ID_LABEL, SOURCE_LABEL,
};

/// The copier group a daemon writes for, as the pure core needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// Value of our `endpoint-copier/group` label on every slice we write.
    pub group: String,
    /// Whether our slices without a group label (written by versions before groups) are ours:
    /// true for the default group only, so that an upgrade adopts them in place.
    pub adopts_unlabelled: bool,
}

/// Who manages a slice of a target, as the plan sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manager {
    /// This copier group: ours to update and delete.
    Us,
    /// endpoint-copier-operator's (label `endpoint-copier/source`, not our managed-by): adopted.
    Operator,
    /// Another copier group's (its group label, or unlabelled while we are not the default
    /// group): never touched, reported.
    OtherGroup(String),
    /// Anyone else, by its managed-by label (empty when it has none): never touched, reported.
    Other(String),
    /// This copier group's, but written by a version that knows more than this one: what this
    /// version does not know (`label endpoint-copier/x`, `source id 'x'`). Never touched,
    /// reported.
    NotUnderstood(String),
}

impl Manager {
    /// Whether the plan may change or delete a slice with this manager.
    pub fn is_ours_to_change(&self) -> bool {
        matches!(self, Manager::Us | Manager::Operator)
    }
}

/// Who manages `slice`, for a daemon of group `owner`.
pub fn manager_of(slice: &EndpointSlice, owner: &Owner) -> Manager {
    let managed_by = label(&slice.metadata, MANAGED_BY_LABEL);
    let ours = || match not_understood(slice) {
        None => Manager::Us,
        Some(what) => Manager::NotUnderstood(what),
    };
    match (managed_by, label(&slice.metadata, GROUP_LABEL)) {
        (Some(MANAGED_BY), Some(group)) if group == owner.group => ours(),
        (Some(MANAGED_BY), Some(group)) => Manager::OtherGroup(group.to_owned()),
        (Some(MANAGED_BY), None) if owner.adopts_unlabelled => ours(),
        (Some(MANAGED_BY), None) => Manager::OtherGroup(String::new()),
        // endpoint-copier-operator wrote no managed-by label (or its own name). A slice another
        // controller manages is never adopted, even if it copied our source label from an
        // Endpoints object (the mirroring controller copies labels).
        (None | Some(ECO_MANAGED_BY), _) if label(&slice.metadata, SOURCE_LABEL).is_some() => {
            Manager::Operator
        }
        (other, _) => Manager::Other(other.unwrap_or_default().to_owned()),
    }
}

/// The labels under `endpoint-copier/` this version writes on EndpointSlices.
const KNOWN_LABELS: [&str; 3] = [GROUP_LABEL, SOURCE_LABEL, SOURCE_ID_LABEL];

/// What of `slice` (one with our managed-by label) this version does not know, if anything: the
/// first label under `endpoint-copier/` it does not write, else a source id of a kind it does
/// not name ([`super::union::is_known_source_id`]).
fn not_understood(slice: &EndpointSlice) -> Option<String> {
    not_understood_labels(slice.metadata.labels.as_ref()?)
}

/// [`not_understood`] for a slice's `labels`.
fn not_understood_labels(labels: &std::collections::BTreeMap<String, String>) -> Option<String> {
    if let Some(key) = labels
        .keys()
        .find(|k| k.starts_with("endpoint-copier/") && !KNOWN_LABELS.contains(&k.as_str()))
    {
        return Some(format!("label {key}"));
    }
    labels
        .get(SOURCE_ID_LABEL)
        .filter(|id| !super::union::is_known_source_id(id))
        .map(|id| format!("source id '{id}'"))
}

/// Whether this version understands a slice of ours with `labels` (absent: no labels), i.e.
/// [`manager_of`] does not call it [`Manager::NotUnderstood`]: for callers that list metadata
/// only (the leader's scan for slices of removed pairs, which must not count a newer version's
/// slices as a removed pair of its own).
pub fn understands(labels: Option<&std::collections::BTreeMap<String, String>>) -> bool {
    labels.is_none_or(|l| not_understood_labels(l).is_none())
}

/// A slice on a target that this group does not manage but the VIP serves all the same.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ForeignSlice {
    /// Name of the EndpointSlice.
    pub name: String,
    /// Who writes it: its managed-by label, `endpoint-copier (group <g>)` for another copier
    /// group, [`NEWER_VERSION`] for our group's slice this version does not understand, or
    /// `unknown` when it has no managed-by label.
    pub manager: String,
    /// Addresses of its ready endpoints (what reaches the VIP through it).
    pub ready_addresses: Vec<String>,
}

/// How [`ForeignSlice::manager`] begins for a [`Manager::NotUnderstood`] slice.
pub const NEWER_VERSION: &str = "endpoint-copier, a newer version";

/// The slices of `actual` that this group does not manage (and does not adopt), sorted by name.
pub fn foreign_slices(actual: &[EndpointSlice], owner: &Owner) -> Vec<ForeignSlice> {
    let mut out: Vec<ForeignSlice> = actual
        .iter()
        .filter_map(|s| {
            let manager = match manager_of(s, owner) {
                Manager::Us | Manager::Operator => return None,
                Manager::OtherGroup(g) if g.is_empty() => {
                    "endpoint-copier (no group: written before groups, adopted only by the default group)".to_owned()
                }
                Manager::OtherGroup(g) => format!("endpoint-copier (group {g})"),
                Manager::Other(m) if m.is_empty() => "unknown (no managed-by label)".to_owned(),
                Manager::Other(m) => m,
                Manager::NotUnderstood(what) => format!(
                    "{NEWER_VERSION} ({what} is unknown to version {}): kept untouched",
                    env!("CARGO_PKG_VERSION")
                ),
            };
            let mut ready_addresses: Vec<String> = s
                .endpoints
                .iter()
                .filter(|e| is_ready(e))
                .flat_map(|e| e.addresses.iter().cloned())
                .collect();
            ready_addresses.sort();
            Some(ForeignSlice {
                name: s.metadata.name.clone().unwrap_or_default(),
                manager,
                ready_addresses,
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::discovery::v1::Endpoint;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn owner(group: &str, adopts_unlabelled: bool) -> Owner {
        Owner {
            group: group.into(),
            adopts_unlabelled,
        }
    }

    fn slice(name: &str, labels: &[(&str, &str)], addresses: &[&str]) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect::<BTreeMap<_, _>>(),
                ),
                ..ObjectMeta::default()
            },
            address_type: "IPv4".into(),
            endpoints: addresses
                .iter()
                .map(|a| Endpoint {
                    addresses: vec![(*a).to_owned()],
                    ..Endpoint::default()
                })
                .collect(),
            ports: None,
        }
    }

    #[test]
    fn slices_are_told_apart_by_managed_by_and_group() {
        let default = owner("kube-system.endpoint-copier", true);
        let b = owner("kube-system.copier-b", false);
        let ours_default = slice(
            "x",
            &[
                (MANAGED_BY_LABEL, MANAGED_BY),
                (GROUP_LABEL, "kube-system.endpoint-copier"),
            ],
            &[],
        );
        let legacy = slice(
            "x",
            &[(MANAGED_BY_LABEL, MANAGED_BY), (SOURCE_LABEL, "kubernetes")],
            &[],
        );
        let eco = slice(
            "x",
            &[
                (MANAGED_BY_LABEL, "endpoint-copier-operator"),
                (SOURCE_LABEL, "kubernetes"),
            ],
            &[],
        );
        let mirrored = slice(
            "x",
            &[(MANAGED_BY_LABEL, "endpointslicemirroring-controller.k8s.io")],
            &[],
        );
        let bare = slice("x", &[], &[]);
        let mirrored_with_our_source_label = slice(
            "x",
            &[
                (MANAGED_BY_LABEL, "endpointslicemirroring-controller.k8s.io"),
                (SOURCE_LABEL, "kubernetes"),
            ],
            &[],
        );
        assert_eq!(
            manager_of(&mirrored_with_our_source_label, &default),
            Manager::Other("endpointslicemirroring-controller.k8s.io".into())
        );

        assert_eq!(manager_of(&ours_default, &default), Manager::Us);
        assert_eq!(
            manager_of(&ours_default, &b),
            Manager::OtherGroup("kube-system.endpoint-copier".into())
        );
        assert_eq!(manager_of(&legacy, &default), Manager::Us);
        assert_eq!(manager_of(&legacy, &b), Manager::OtherGroup(String::new()));
        assert_eq!(manager_of(&eco, &b), Manager::Operator);
        assert_eq!(
            manager_of(&mirrored, &default),
            Manager::Other("endpointslicemirroring-controller.k8s.io".into())
        );
        assert_eq!(manager_of(&bare, &default), Manager::Other(String::new()));
        assert!(Manager::Us.is_ours_to_change() && Manager::Operator.is_ours_to_change());
        assert!(!Manager::OtherGroup("g".into()).is_ours_to_change());
        assert!(!Manager::Other("m".into()).is_ours_to_change());
    }

    #[test]
    fn our_slice_with_a_label_or_source_id_this_version_does_not_know_is_not_ours_to_change() {
        let owner = owner("kube-system.endpoint-copier", true);
        let ours = |extra: &[(&str, &str)]| {
            let mut labels = vec![
                (MANAGED_BY_LABEL, MANAGED_BY),
                (GROUP_LABEL, "kube-system.endpoint-copier"),
            ];
            labels.extend_from_slice(extra);
            slice("vip-x", &labels, &["198.51.100.1"])
        };
        // What this version writes is ours.
        for known in [
            vec![],
            vec![(SOURCE_LABEL, "apiserver")],
            vec![(SOURCE_ID_LABEL, "static")],
            vec![(SOURCE_ID_LABEL, "service-0123abcd")],
            vec![(SOURCE_ID_LABEL, "remote-89abcdef")],
            vec![("team.example.com/owner", "ops")],
        ] {
            assert_eq!(manager_of(&ours(&known), &owner), Manager::Us, "{known:?}");
        }
        let newer_label = ours(&[("endpoint-copier/zone-hint", "a")]);
        assert_eq!(
            manager_of(&newer_label, &owner),
            Manager::NotUnderstood("label endpoint-copier/zone-hint".into())
        );
        for id in ["dns-0123abcd", "service-xyz", "remote-0123ABCD", "static-2"] {
            assert_eq!(
                manager_of(&ours(&[(SOURCE_ID_LABEL, id)]), &owner),
                Manager::NotUnderstood(format!("source id '{id}'"))
            );
        }
        // Unlabelled (before groups), adopted by the default group: the same rule.
        let legacy = slice(
            "vip-y",
            &[
                (MANAGED_BY_LABEL, MANAGED_BY),
                (SOURCE_ID_LABEL, "dns-0123abcd"),
            ],
            &[],
        );
        assert!(!manager_of(&legacy, &owner).is_ours_to_change());
        assert!(!Manager::NotUnderstood("x".into()).is_ours_to_change());
        assert!(!understands(newer_label.metadata.labels.as_ref()));
        assert!(understands(ours(&[]).metadata.labels.as_ref()) && understands(None));
        // Reported like a foreign slice, saying why.
        let found = foreign_slices(&[newer_label], &owner);
        assert_eq!(found.len(), 1);
        assert!(
            found[0].manager.starts_with(&format!(
                "{NEWER_VERSION} (label endpoint-copier/zone-hint is unknown to version "
            )),
            "{}",
            found[0].manager
        );
        assert_eq!(found[0].ready_addresses, vec!["198.51.100.1".to_owned()]);
    }

    #[test]
    fn foreign_slices_name_their_manager_and_ready_addresses() {
        let owner = owner("kube-system.endpoint-copier", true);
        let mut mirrored = slice(
            "kubernetes-vip-abcde",
            &[(MANAGED_BY_LABEL, "endpointslicemirroring-controller.k8s.io")],
            &["203.0.113.9", "198.51.100.7"],
        );
        mirrored.endpoints[0].conditions =
            Some(k8s_openapi::api::discovery::v1::EndpointConditions {
                ready: Some(false),
                ..Default::default()
            });
        let ours = slice(
            "kubernetes-vip",
            &[
                (MANAGED_BY_LABEL, MANAGED_BY),
                (GROUP_LABEL, "kube-system.endpoint-copier"),
            ],
            &["198.51.100.1"],
        );
        let other = slice(
            "kubernetes-vip-b",
            &[
                (MANAGED_BY_LABEL, MANAGED_BY),
                (GROUP_LABEL, "kube-system.copier-b"),
            ],
            &["198.51.100.2"],
        );
        let found = foreign_slices(&[ours, other, mirrored], &owner);
        assert_eq!(
            found,
            vec![
                ForeignSlice {
                    name: "kubernetes-vip-abcde".into(),
                    manager: "endpointslicemirroring-controller.k8s.io".into(),
                    ready_addresses: vec!["198.51.100.7".into()],
                },
                ForeignSlice {
                    name: "kubernetes-vip-b".into(),
                    manager: "endpoint-copier (group kube-system.copier-b)".into(),
                    ready_addresses: vec!["198.51.100.2".into()],
                },
            ]
        );
    }
}
