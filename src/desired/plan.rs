//! The plan: the creates, updates and deletes that turn the target slices that exist (`actual`)
//! into the ones a pair wants (`desired`), touching only slices this copier group may change.
//!
//! Pure like the rest of `desired`: no API, no clock, no logging. `apply` runs the [`Plan`] in the
//! order given (creates, then updates, then deletes) so the VIP never has fewer ready endpoints in
//! between than before or after.

use std::collections::BTreeSet;

use k8s_openapi::api::discovery::v1::{EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::owner::{Owner, manager_of};
use super::{MAX_NAME, hashed_name, label, ready_endpoints, sort_endpoints, sort_ports};
use crate::names::{SERVICE_NAME_LABEL, SOURCE_LABEL, ServiceRef, is_dns1123_subdomain};

/// One EndpointSlice to delete, with the preconditions the DELETE must carry so that it never
/// removes a slice that changed (or was replaced) since it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceDelete {
    /// Name of the EndpointSlice, in the target Service's namespace.
    pub name: String,
    /// `metadata.uid` as read (precondition), if the slice had one.
    pub uid: Option<String>,
    /// `metadata.resourceVersion` as read (precondition), if the slice had one.
    pub resource_version: Option<String>,
}

/// The writes that turn the actual target slices into the desired ones.
///
/// `apply.rs` executes them in this order: every create, then every update (in the order of
/// `updates`), then every delete — so the target never has fewer ready endpoints in between than
/// before or after the plan (the property test `ready_count_never_dips_below_both_ends` pins this).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// New slices to create, sorted by name; `metadata` holds name, namespace, labels and
    /// ownerReferences only.
    pub creates: Vec<EndpointSlice>,
    /// Full objects to PUT, carrying the actual slice's name, uid and resourceVersion (for optimistic
    /// concurrency) and its foreign labels and annotations. Ordered by how many ready endpoints the
    /// update adds (most first), then by name, so that ready endpoints move in before they move out.
    pub updates: Vec<EndpointSlice>,
    /// Slices to delete, sorted by name.
    pub deletes: Vec<SliceDelete>,
}

impl Plan {
    /// True when the target already equals the desired state: nothing to write.
    pub fn is_empty(&self) -> bool {
        self.creates.is_empty() && self.updates.is_empty() && self.deletes.is_empty()
    }

    /// Number of writes in the plan (creates + updates + deletes).
    pub fn len(&self) -> usize {
        self.creates.len() + self.updates.len() + self.deletes.len()
    }
}

/// The writes that turn `actual` (every slice labelled `kubernetes.io/service-name=<target>` in the
/// target namespace, ours or not) into `desired` (the output of [`desired`](super::desired)).
///
/// - Never plans any change to a slice that `owner` may not change (see [`manager_of`]: only this
///   copier group's and endpoint-copier-operator's), or that belongs to another Service or namespace.
/// - Matches each desired slice to an adoptable actual one first by name (same `addressType`), then
///   by (`endpoint-copier/source` label, `addressType`). A match that already equals the desired
///   slice costs nothing; one that differs is updated in place (its name, uid, resourceVersion and
///   foreign labels, annotations and ownerReferences kept).
/// - An unmatched desired slice is created; when its name is taken (by a slice we may not adopt, or
///   by one of ours of another `addressType`, which is immutable), it is created as
///   `<name>-<ipv4|ipv6>` instead, so the create happens before the delete and the VIP never empties.
/// - Adoptable actual slices matched by nothing (stale ones, duplicates, a changed `addressType`)
///   are deleted with uid and resourceVersion preconditions.
///
/// An empty `desired` deletes every adoptable slice of the target: that is how removing a pair
/// removes its slices. Never call `plan` after [`desired`](super::desired) returned a [`Hold`](super::Hold): a hold means
/// "write nothing", not "want nothing".
pub fn plan(
    target_ref: &ServiceRef,
    desired: &[EndpointSlice],
    actual: &[EndpointSlice],
    owner: &Owner,
) -> Plan {
    let mut taken: BTreeSet<String> = actual
        .iter()
        .filter_map(|s| s.metadata.name.clone())
        .collect();
    taken.extend(desired.iter().filter_map(|s| s.metadata.name.clone()));

    // Candidates for adoption, sorted by name so that matching (and which duplicate survives) does
    // not depend on list order.
    let mut candidates: Vec<&EndpointSlice> = actual
        .iter()
        .filter(|s| manager_of(s, owner).is_ours_to_change() && is_of_target(s, target_ref))
        .collect();
    candidates.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut used = vec![false; candidates.len()];
    let mut matches: Vec<Option<usize>> = vec![None; desired.len()];

    // Pass 1: by name and addressType.
    for (d, want) in desired.iter().enumerate() {
        matches[d] = candidates.iter().enumerate().position(|(i, have)| {
            !used[i]
                && have.metadata.name == want.metadata.name
                && have.address_type == want.address_type
        });
        if let Some(i) = matches[d] {
            used[i] = true;
        }
    }
    // Pass 2: by source label and addressType (ECO's slices under other names, our own slices
    // created under an alternative name).
    for (d, want) in desired.iter().enumerate() {
        if matches[d].is_some() {
            continue;
        }
        let source = label(&want.metadata, SOURCE_LABEL);
        matches[d] = candidates.iter().enumerate().position(|(i, have)| {
            !used[i]
                && source.is_some()
                && label(&have.metadata, SOURCE_LABEL) == source
                && have.address_type == want.address_type
        });
        if let Some(i) = matches[d] {
            used[i] = true;
        }
    }

    let mut out = Plan::default();
    let mut updates = Vec::new();
    for (d, want) in desired.iter().enumerate() {
        match matches[d] {
            Some(i) => {
                let have = candidates[i];
                if !same_content(want, have, target_ref) {
                    let delta = ready_endpoints(std::slice::from_ref(want)) as i64
                        - ready_endpoints(std::slice::from_ref(have)) as i64;
                    updates.push((delta, updated(want, have, target_ref)));
                }
            }
            None => {
                let mut create = want.clone();
                let name = want.metadata.name.clone().unwrap_or_default();
                if actual
                    .iter()
                    .any(|s| s.metadata.name.as_deref() == Some(&name))
                {
                    let alt = alternative_name(&target_ref.name, &name, &want.address_type, &taken);
                    taken.insert(alt.clone());
                    create.metadata.name = Some(alt);
                }
                out.creates.push(create);
            }
        }
    }
    // Most ready endpoints gained first: the running ready count then rises before it falls, so it
    // never dips below both the count before and the count after the plan.
    updates.sort_by(|(da, a), (db, b)| {
        db.cmp(da)
            .then_with(|| a.metadata.name.cmp(&b.metadata.name))
    });
    out.updates = updates.into_iter().map(|(_, s)| s).collect();
    out.creates
        .sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    out.deletes = candidates
        .iter()
        .zip(&used)
        .filter(|(_, used)| !**used)
        .map(|(s, _)| SliceDelete {
            name: s.metadata.name.clone().unwrap_or_default(),
            uid: s.metadata.uid.clone(),
            resource_version: s.metadata.resource_version.clone(),
        })
        .collect();
    out
}

/// A free name for a create whose preferred `name` is taken: `<name>-<ipv4|ipv6>`, or, when that is
/// not valid or taken too, a salted hash under the target's name. Deterministic, so that every
/// daemon picks the same name (and re-planning finds the slice by its source label anyway).
pub(super) fn alternative_name(
    target_service: &str,
    name: &str,
    address_type: &str,
    taken: &BTreeSet<String>,
) -> String {
    let alt = format!("{name}-{}", address_type.to_ascii_lowercase());
    if alt.len() <= MAX_NAME && is_dns1123_subdomain(&alt) && !taken.contains(&alt) {
        return alt;
    }
    let mut salt = 0u32;
    loop {
        let candidate = hashed_name(target_service, &format!("{name}#{address_type}#{salt}"));
        if !taken.contains(&candidate) {
            return candidate;
        }
        salt += 1;
    }
}

/// Ports as the API server would store them: empty name is no name, no protocol is TCP, sorted.
pub(super) fn normalized_ports(slice: &EndpointSlice) -> Vec<EndpointPort> {
    let mut ports: Vec<EndpointPort> = slice
        .ports
        .as_deref()
        .unwrap_or_default()
        .iter()
        .cloned()
        .map(super::normalized_port)
        .collect();
    sort_ports(&mut ports);
    ports
}

/// True when `have` already says what `want` says, in everything we set: addressType, endpoints (in
/// any order), ports, our four labels, and exactly our ownerReference to the target Service.
/// Foreign labels, annotations, managedFields, resourceVersion and the name are ignored.
pub(super) fn same_content(
    want: &EndpointSlice,
    have: &EndpointSlice,
    target_ref: &ServiceRef,
) -> bool {
    if want.address_type != have.address_type {
        return false;
    }
    let mut endpoints = have.endpoints.clone();
    sort_endpoints(&mut endpoints);
    let mut wanted = want.endpoints.clone();
    sort_endpoints(&mut wanted);
    if endpoints != wanted || normalized_ports(want) != normalized_ports(have) {
        return false;
    }
    let labels_match = want
        .metadata
        .labels
        .iter()
        .flatten()
        .all(|(k, v)| label(&have.metadata, k) == Some(v.as_str()));
    let refs_to_target = |m: &ObjectMeta| -> Vec<OwnerReference> {
        m.owner_references
            .iter()
            .flatten()
            .filter(|r| is_ref_to(r, target_ref))
            .cloned()
            .collect()
    };
    labels_match && refs_to_target(&want.metadata) == refs_to_target(&have.metadata)
}

/// The full object to PUT over `have` so that it says what `want` says, keeping what is not ours.
pub(super) fn updated(
    want: &EndpointSlice,
    have: &EndpointSlice,
    target_ref: &ServiceRef,
) -> EndpointSlice {
    let mut metadata = have.metadata.clone();
    // managedFields left out of a PUT are kept by the API server; sending stale ones would not be.
    metadata.managed_fields = None;
    let mut labels = metadata.labels.take().unwrap_or_default();
    labels.extend(want.metadata.labels.clone().unwrap_or_default());
    metadata.labels = Some(labels);
    // Drop any reference to the target Service (ECO's, or one to a Service of the same name that was
    // deleted and recreated with a new uid), then add ours; references to anything else stay.
    let mut refs: Vec<OwnerReference> = metadata
        .owner_references
        .take()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| !is_ref_to(r, target_ref))
        .collect();
    refs.extend(want.metadata.owner_references.clone().unwrap_or_default());
    metadata.owner_references = Some(refs);
    metadata.namespace = Some(target_ref.namespace.clone());
    EndpointSlice {
        metadata,
        address_type: want.address_type.clone(),
        endpoints: want.endpoints.clone(),
        ports: want.ports.clone(),
    }
}

/// True when `r` points to a core/v1 Service named like the target (whatever its uid).
pub(super) fn is_ref_to(r: &OwnerReference, target_ref: &ServiceRef) -> bool {
    r.kind == "Service" && r.api_version == "v1" && r.name == target_ref.name
}

/// True when `slice` is in the target's namespace and labelled with the target's name, so that a
/// slice of another Service slipped into `actual` is never touched.
pub(super) fn is_of_target(slice: &EndpointSlice, target_ref: &ServiceRef) -> bool {
    slice
        .metadata
        .namespace
        .as_deref()
        .is_none_or(|ns| ns == target_ref.namespace)
        && label(&slice.metadata, SERVICE_NAME_LABEL) == Some(target_ref.name.as_str())
}
