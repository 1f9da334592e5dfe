//! The pure core of the mirror: which target EndpointSlices a pair wants ([`desired`]), and the
//! creates, updates and deletes that turn the slices that exist into them ([`plan`]).
//!
//! This module knows only `k8s-openapi`, std and [`crate::names`]. It never talks to the API, never
//! reads a clock and never logs: `watch.rs` hands it snapshots, `apply.rs` runs the [`Plan`] it
//! returns (creates, then updates, then deletes, in the order given), and `daemon.rs` reports a
//! [`Hold`] (log, Event, STATUS, metric). Which pairs exist and which are refused is `pairs.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::names::{
    MANAGED_BY, MANAGED_BY_LABEL, SERVICE_NAME_LABEL, SOURCE_LABEL, ServiceRef,
    is_dns1123_subdomain,
};

/// `addressType` of IPv4 EndpointSlices (and the IPv4 entry of a Service's `spec.ipFamilies`).
pub const IPV4: &str = "IPv4";
/// `addressType` of IPv6 EndpointSlices (and the IPv6 entry of a Service's `spec.ipFamilies`).
pub const IPV6: &str = "IPv6";
/// Protocol the API server fills in when an EndpointPort or ServicePort names none.
const DEFAULT_PROTOCOL: &str = "TCP";
/// Longest label value the API accepts.
const MAX_LABEL_VALUE: usize = 63;
/// Longest EndpointSlice name the API accepts (a DNS-1123 subdomain).
const MAX_NAME: usize = 253;

/// Why nothing may be written for a pair right now (fail-static: the target keeps what it has).
///
/// Every variant means "leave the target slices exactly as they are and retry later"; only removing
/// the pair removes its slices (DESIGN.md, "Fail-static").
///
/// An existing-but-empty source ([`Hold::NoEndpoints`]) is deliberately treated like a missing one
/// and never blanks the target. For the default pair the `kubernetes` slice is empty only when no
/// apiserver runs at all — and then nobody could read it, so a read that shows it empty is a
/// transient artefact (a relist racing the apiservers' reconcile, a half-restarted control plane).
/// Keeping the last known apiservers in the VIP costs nothing in that case, while blanking the VIP
/// would withdraw the very address every node uses to reach the apiservers once they come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hold {
    /// The source Service has no EndpointSlice at all (missing Service, or a failed or partial read).
    NoSourceSlices,
    /// Source slices exist but hold zero endpoints in the families the target serves (see the enum
    /// documentation for why this never blanks the target).
    NoEndpoints,
    /// The target Service does not exist (yet) or is being deleted; the caller reports this when it
    /// has no Service to pass, and [`desired`] when the Service carries a deletionTimestamp (the
    /// garbage collector removes our slices through their ownerReference).
    TargetMissing,
    /// The target Service has no `metadata.uid` (not yet created), so no ownerReference can point to it.
    TargetHasNoUid,
    /// The target Service has a selector: the built-in EndpointSlice controller owns its slices.
    /// `pairs.rs` refuses such pairs; [`desired`] refuses too, so that a caller that skipped the
    /// refusal still never writes slices the built-in controller would fight over.
    TargetHasSelector,
}

impl fmt::Display for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NoSourceSlices => "the source Service has no EndpointSlices",
            Self::NoEndpoints => {
                "the source EndpointSlices hold no endpoints in the families the target serves"
            }
            Self::TargetMissing => "the target Service does not exist",
            Self::TargetHasNoUid => "the target Service has no uid yet",
            Self::TargetHasSelector => {
                "the target Service has a selector, so the built-in EndpointSlice controller owns its EndpointSlices"
            }
        })
    }
}

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

/// True when `slice` carries our managed-by label (`endpointslice.kubernetes.io/managed-by=endpoint-copier`).
pub fn is_ours(slice: &EndpointSlice) -> bool {
    label(&slice.metadata, MANAGED_BY_LABEL) == Some(MANAGED_BY)
}

/// True when we may change or delete `slice`: it is ours, or it is endpoint-copier-operator's (it has
/// the label `endpoint-copier/source`, any value, whatever its managed-by says), which we adopt.
pub fn is_adoptable(slice: &EndpointSlice) -> bool {
    is_ours(slice) || label(&slice.metadata, SOURCE_LABEL).is_some()
}

/// Number of endpoints across `slices` whose `conditions.ready` is not `false` (an absent condition
/// counts as ready, as the EndpointSlice API documents).
pub fn ready_endpoints(slices: &[EndpointSlice]) -> usize {
    slices
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| is_ready(e))
        .count()
}

/// The families a target Service serves: `spec.ipFamilies` (the API server always fills it in), or
/// both IPv4 and IPv6 when it is absent (a Service object not read back from the API).
pub fn served_families(target: &Service) -> Vec<String> {
    match target.spec.as_ref().and_then(|s| s.ip_families.as_ref()) {
        Some(families) if !families.is_empty() => families.clone(),
        _ => vec![IPV4.to_owned(), IPV6.to_owned()],
    }
}

/// The name of the target slice copied from source slice `source_slice` of Service
/// `source_service`, for target Service `target_service` (a DNS-1035 label, as every Service name).
///
/// - `source_slice == source_service` → `target_service` (so endpoint-copier-operator's
///   `kubernetes-vip` slice is taken over, not duplicated);
/// - `<source_service>-<suffix>` (the EndpointSlice controller's generateName) → `<target_service>-<suffix>`;
/// - anything else, or a result longer than 253 characters or otherwise not a DNS-1123 subdomain →
///   `<target_service>-<8 hex digits of the FNV-1a hash of source_slice>`.
///
/// The result is stable across runs and versions: changing it would make every daemon upgrade
/// recreate every target slice.
pub fn target_slice_name(source_service: &str, source_slice: &str, target_service: &str) -> String {
    if source_slice == source_service {
        return target_service.to_owned();
    }
    if let Some(suffix) = source_slice
        .strip_prefix(source_service)
        .and_then(|rest| rest.strip_prefix('-'))
        .filter(|suffix| !suffix.is_empty())
    {
        let name = format!("{target_service}-{suffix}");
        if name.len() <= MAX_NAME && is_dns1123_subdomain(&name) {
            return name;
        }
    }
    hashed_name(target_service, source_slice)
}

/// The value of our `endpoint-copier/source` label for a source slice: its name when it fits a label
/// value (63 characters), else its first characters followed by `-` and the 8-hex-digit FNV-1a hash
/// of the whole name (still unique, still readable).
pub fn source_label_value(source_slice: &str) -> String {
    if source_slice.len() <= MAX_LABEL_VALUE {
        return source_slice.to_owned();
    }
    // Slice names are DNS-1123 subdomains (ASCII), so byte slicing cannot split a character; a label
    // value must end with an alphanumeric character, hence the trim before the `-`.
    let head: String = source_slice
        .chars()
        .take(MAX_LABEL_VALUE - 9)
        .collect::<String>()
        .trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned();
    format!("{head}-{:08x}", fnv1a(source_slice.as_bytes()))
}

/// The target slices pair `source` → `target_ref` wants, given the target Service and every
/// EndpointSlice of the source Service (listed by label `kubernetes.io/service-name=<source>`).
///
/// One target slice per source slice whose `addressType` the target serves (see
/// [`served_families`]). FQDN slices are skipped: a VIP routes to addresses, never to names. Slices
/// whose namespace or service-name label explicitly names another Service are ignored, so a caller's
/// mix-up never copies a stranger's endpoints. The result is sorted by name and does not depend on
/// the order of `source_slices` or of their endpoints.
///
/// # Errors
/// A [`Hold`] when nothing may be written now: the target has a selector, is being deleted or has
/// no uid; the source has no slices, or none of its slices holds an endpoint the target can serve.
pub fn desired(
    source: &ServiceRef,
    target_ref: &ServiceRef,
    target: &Service,
    source_slices: &[EndpointSlice],
) -> Result<Vec<EndpointSlice>, Hold> {
    let spec = target.spec.as_ref();
    if spec
        .and_then(|s| s.selector.as_ref())
        .is_some_and(|sel| !sel.is_empty())
    {
        return Err(Hold::TargetHasSelector);
    }
    if target.metadata.deletion_timestamp.is_some() {
        return Err(Hold::TargetMissing);
    }
    let uid = match target.metadata.uid.as_deref() {
        Some(uid) if !uid.is_empty() => uid,
        _ => return Err(Hold::TargetHasNoUid),
    };

    let mut slices: Vec<&EndpointSlice> = source_slices
        .iter()
        .filter(|s| belongs_to(s, source))
        .collect();
    if slices.is_empty() {
        return Err(Hold::NoSourceSlices);
    }
    let families = served_families(target);
    slices.retain(|s| families.contains(&s.address_type));
    // Sorted by name (then resourceVersion, for a caller that passes two reads of one slice) so that
    // name-collision resolution below, and thus the whole output, ignores input order.
    slices.sort_by(|a, b| {
        (
            a.metadata.name.as_deref(),
            a.metadata.resource_version.as_deref(),
        )
            .cmp(&(
                b.metadata.name.as_deref(),
                b.metadata.resource_version.as_deref(),
            ))
    });
    slices.dedup_by(|a, b| a.metadata.name == b.metadata.name);
    if slices.iter().all(|s| s.endpoints.is_empty()) {
        return Err(Hold::NoEndpoints);
    }

    let service_ports = spec.and_then(|s| s.ports.as_deref()).unwrap_or_default();
    let owner = owner_reference(target_ref, uid);
    let mut used = BTreeSet::new();
    let mut out = Vec::with_capacity(slices.len());
    for slice in slices {
        let source_slice = slice.metadata.name.as_deref().unwrap_or_default();
        let mut name = target_slice_name(&source.name, source_slice, &target_ref.name);
        // Two source slices could map to one name only through a hash collision or a source slice
        // literally named `<source>-<8 hex digits>`; salt the hash until the name is free.
        let mut salt = 0u32;
        while used.contains(&name) {
            salt += 1;
            name = hashed_name(&target_ref.name, &format!("{source_slice}#{salt}"));
        }
        used.insert(name.clone());

        let mut endpoints = slice.endpoints.clone();
        sort_endpoints(&mut endpoints);
        out.push(EndpointSlice {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(target_ref.namespace.clone()),
                labels: Some(our_labels(target_ref, source_slice)),
                owner_references: Some(vec![owner.clone()]),
                ..ObjectMeta::default()
            },
            address_type: slice.address_type.clone(),
            endpoints,
            ports: Some(target_ports(service_ports, slice)),
        });
    }
    out.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    Ok(out)
}

/// The writes that turn `actual` (every slice labelled `kubernetes.io/service-name=<target>` in the
/// target namespace, ours or not) into `desired` (the output of [`desired`]).
///
/// - Never plans any change to a slice that is not [`is_adoptable`], or that belongs to another
///   Service or namespace.
/// - Matches each desired slice to an adoptable actual one first by name (same `addressType`), then
///   by (`endpoint-copier/source` label, `addressType`). A match that already equals the desired
///   slice costs nothing; one that differs is updated in place (its name, uid, resourceVersion and
///   foreign labels, annotations and ownerReferences kept).
/// - An unmatched desired slice is created; when its name is taken (by a slice we may not adopt, or
///   by one of ours of another `addressType`, which is immutable), it is created as
///   `<name>-<ipv4|ipv6>` instead, so the create happens before the delete and the VIP never empties.
/// - Adoptable actual slices matched by nothing (stale ones, duplicates, a changed `addressType`)
///   are deleted with uid and resourceVersion preconditions.
pub fn plan(target_ref: &ServiceRef, desired: &[EndpointSlice], actual: &[EndpointSlice]) -> Plan {
    let mut taken: BTreeSet<String> = actual
        .iter()
        .filter_map(|s| s.metadata.name.clone())
        .collect();
    taken.extend(desired.iter().filter_map(|s| s.metadata.name.clone()));

    // Candidates for adoption, sorted by name so that matching (and which duplicate survives) does
    // not depend on list order.
    let mut candidates: Vec<&EndpointSlice> = actual
        .iter()
        .filter(|s| is_adoptable(s) && is_of_target(s, target_ref))
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
                    let alt = alternative_name(&name, &want.address_type, &taken);
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

/// The ownerReference every target slice carries, so the garbage collector removes our slices with
/// their Service even while no daemon runs.
///
/// `controller: false`: the Service is not a controller and we are not the Service's controller;
/// `controller: true` would make `metav1.GetControllerOf` (kubectl, controllers that adopt by
/// controllerRef) treat the Service's own machinery as managing the slice. `blockOwnerDeletion:
/// false`: `true` would need permission to update the Service's finalizers (the
/// OwnerReferencesPermissionEnforcement admission plugin) and would delay deleting the Service for
/// nothing. Both are written explicitly so that what we send and what we read back compare equal.
pub fn owner_reference(target_ref: &ServiceRef, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: "v1".to_owned(),
        kind: "Service".to_owned(),
        name: target_ref.name.clone(),
        uid: uid.to_owned(),
        controller: Some(false),
        block_owner_deletion: Some(false),
    }
}

/// 32-bit FNV-1a, written out here (not std's randomly seeded hasher) because the names it feeds
/// must be identical on every host, run and version.
fn fnv1a(bytes: &[u8]) -> u32 {
    const OFFSET_BASIS: u32 = 0x811c_9dc5;
    const PRIME: u32 = 0x0100_0193;
    bytes.iter().fold(OFFSET_BASIS, |hash, b| {
        (hash ^ u32::from(*b)).wrapping_mul(PRIME)
    })
}

/// `<target_service>-<8 hex digits of FNV-1a(key)>`: at most 63 + 9 characters, a valid name
/// whenever `target_service` is a valid Service name.
fn hashed_name(target_service: &str, key: &str) -> String {
    format!("{target_service}-{:08x}", fnv1a(key.as_bytes()))
}

/// A free name for a create whose preferred `name` is taken: `<name>-<ipv4|ipv6|…>`, or a hash when
/// that is too long or taken too. Deterministic, so that re-planning finds the same name.
fn alternative_name(name: &str, address_type: &str, taken: &BTreeSet<String>) -> String {
    let alt = format!("{name}-{}", address_type.to_ascii_lowercase());
    if alt.len() <= MAX_NAME && is_dns1123_subdomain(&alt) && !taken.contains(&alt) {
        return alt;
    }
    let mut salt = 0u32;
    loop {
        // The prefix keeps the name readable; 244 + 9 ≤ 253 characters. Cutting can leave a '.' or
        // '-' at the end of the prefix, which the hash suffix makes harmless only for '-'.
        let prefix: String = name.chars().take(MAX_NAME - 9).collect();
        let prefix = prefix.trim_end_matches(['.', '-']);
        let candidate = format!(
            "{prefix}-{:08x}",
            fnv1a(format!("{name}#{address_type}#{salt}").as_bytes())
        );
        if !taken.contains(&candidate) {
            return candidate;
        }
        salt += 1;
    }
}

/// Our three labels for a slice of `target_ref` copied from `source_slice`.
fn our_labels(target_ref: &ServiceRef, source_slice: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (SERVICE_NAME_LABEL.to_owned(), target_ref.name.clone()),
        (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
        (SOURCE_LABEL.to_owned(), source_label_value(source_slice)),
    ])
}

/// The ports of a target slice: one per Service port (see DESIGN.md "Mirror semantics"), sorted.
fn target_ports(
    service_ports: &[k8s_openapi::api::core::v1::ServicePort],
    source: &EndpointSlice,
) -> Vec<EndpointPort> {
    let mut ports: Vec<EndpointPort> = service_ports
        .iter()
        .filter_map(|sp| {
            let number = match &sp.target_port {
                Some(IntOrString::Int(n)) if *n != 0 => *n,
                // A named targetPort means "whatever port the endpoints call that": resolve it
                // against the source slice; a slice without that name cannot serve this port.
                Some(IntOrString::String(port_name)) => source
                    .ports
                    .as_deref()
                    .unwrap_or_default()
                    .iter()
                    .find(|p| p.name.as_deref() == Some(port_name.as_str()))
                    .and_then(|p| p.port)?,
                // Absent (or 0, which the API server also treats as unset): the Service port.
                _ => sp.port,
            };
            Some(EndpointPort {
                name: sp.name.clone().filter(|n| !n.is_empty()),
                protocol: Some(
                    sp.protocol
                        .clone()
                        .unwrap_or_else(|| DEFAULT_PROTOCOL.to_owned()),
                ),
                app_protocol: sp.app_protocol.clone(),
                port: Some(number),
            })
        })
        .collect();
    sort_ports(&mut ports);
    ports
}

/// Canonical port order: by name, then number, then protocol.
fn sort_ports(ports: &mut [EndpointPort]) {
    ports.sort_by(|a, b| {
        (
            a.name.as_deref().unwrap_or_default(),
            a.port,
            a.protocol.as_deref(),
        )
            .cmp(&(
                b.name.as_deref().unwrap_or_default(),
                b.port,
                b.protocol.as_deref(),
            ))
    });
}

/// Canonical endpoint order: by addresses (unique per slice in practice), then by the fields that
/// tell apart two endpoints with the same addresses, so input order never changes the output.
fn sort_endpoints(endpoints: &mut [Endpoint]) {
    endpoints.sort_by(|a, b| {
        (
            &a.addresses,
            a.node_name.as_deref(),
            a.hostname.as_deref(),
            a.zone.as_deref(),
            a.conditions
                .as_ref()
                .map(|c| (c.ready, c.serving, c.terminating)),
        )
            .cmp(&(
                &b.addresses,
                b.node_name.as_deref(),
                b.hostname.as_deref(),
                b.zone.as_deref(),
                b.conditions
                    .as_ref()
                    .map(|c| (c.ready, c.serving, c.terminating)),
            ))
    });
}

/// Ports as the API server would store them: empty name is no name, no protocol is TCP, sorted.
fn normalized_ports(slice: &EndpointSlice) -> Vec<EndpointPort> {
    let mut ports: Vec<EndpointPort> = slice
        .ports
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|p| EndpointPort {
            name: p.name.clone().filter(|n| !n.is_empty()),
            protocol: Some(
                p.protocol
                    .clone()
                    .unwrap_or_else(|| DEFAULT_PROTOCOL.to_owned()),
            ),
            app_protocol: p.app_protocol.clone(),
            port: p.port,
        })
        .collect();
    sort_ports(&mut ports);
    ports
}

/// True when `have` already says what `want` says, in everything we set: addressType, endpoints (in
/// any order), ports, our three labels, and exactly our ownerReference to the target Service.
/// Foreign labels, annotations, managedFields, resourceVersion and the name are ignored.
fn same_content(want: &EndpointSlice, have: &EndpointSlice, target_ref: &ServiceRef) -> bool {
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
fn updated(want: &EndpointSlice, have: &EndpointSlice, target_ref: &ServiceRef) -> EndpointSlice {
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
fn is_ref_to(r: &OwnerReference, target_ref: &ServiceRef) -> bool {
    r.kind == "Service" && r.api_version == "v1" && r.name == target_ref.name
}

/// True when `slice` may be one of the source Service's slices: no explicit namespace or
/// service-name label that says otherwise.
fn belongs_to(slice: &EndpointSlice, source: &ServiceRef) -> bool {
    slice
        .metadata
        .namespace
        .as_deref()
        .is_none_or(|ns| ns == source.namespace)
        && label(&slice.metadata, SERVICE_NAME_LABEL).is_none_or(|n| n == source.name)
}

/// True when `slice` is in the target's namespace and labelled with the target's name, so that a
/// slice of another Service slipped into `actual` is never touched.
fn is_of_target(slice: &EndpointSlice, target_ref: &ServiceRef) -> bool {
    slice
        .metadata
        .namespace
        .as_deref()
        .is_none_or(|ns| ns == target_ref.namespace)
        && label(&slice.metadata, SERVICE_NAME_LABEL) == Some(target_ref.name.as_str())
}

/// The value of label `key`, if set.
fn label<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.labels.as_ref()?.get(key).map(String::as_str)
}

/// `conditions.ready != false`: absent means ready.
fn is_ready(endpoint: &Endpoint) -> bool {
    endpoint
        .conditions
        .as_ref()
        .and_then(|c| c.ready)
        .unwrap_or(true)
}
