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
/// - anything else, or a result longer than 253 characters or otherwise not a DNS-1123 subdomain
///   (with labels of at most 63 characters) → `<target_service>-<8 hex digits of the FNV-1a hash of
///   source_slice>`, the target name cut to 54 characters when needed.
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

        let mut endpoints: Vec<Endpoint> = slice.endpoints.iter().map(as_stored).collect();
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

/// An endpoint as kube-apiserver stores it in a discovery/v1 EndpointSlice: the strategy drops
/// `deprecatedTopology` on every v1 write (`dropTopologyOnV1`), and `hints.forNodes` while the
/// alpha PreferSameTrafficDistribution gate is off (1.33's default). Copying them would make the
/// desired slice differ forever from what the server keeps, and every re-plan would rewrite it.
fn as_stored(endpoint: &Endpoint) -> Endpoint {
    let mut e = endpoint.clone();
    e.deprecated_topology = None;
    if let Some(hints) = e.hints.as_mut() {
        hints.for_nodes = None;
        if hints.for_zones.is_none() {
            e.hints = None;
        }
    }
    e
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
///
/// An empty `desired` deletes every adoptable slice of the target: that is how removing a pair
/// removes its slices. Never call `plan` after [`desired`] returned a [`Hold`]: a hold means
/// "write nothing", not "want nothing".
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

/// `<target_service>-<8 hex digits of FNV-1a(key)>`, the target name cut to 54 characters so that
/// the result is a single DNS label of at most 63 characters (valid for the API, whose subdomain
/// check ignores label length, and for [`is_dns1123_subdomain`], which enforces it), provided
/// `target_service` is a valid Service name.
fn hashed_name(target_service: &str, key: &str) -> String {
    let head: String = target_service.chars().take(MAX_LABEL_VALUE - 9).collect();
    format!(
        "{}-{:08x}",
        head.trim_end_matches(['-', '.']),
        fnv1a(key.as_bytes())
    )
}

/// A free name for a create whose preferred `name` is taken: `<name>-<ipv4|ipv6>`, or, when that is
/// not valid or taken too, a salted hash under the target's name. Deterministic, so that every
/// daemon picks the same name (and re-planning finds the slice by its source label anyway).
fn alternative_name(
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

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ObjectReference, ServicePort, ServiceSpec};
    use k8s_openapi::api::discovery::v1::{EndpointConditions, EndpointHints, ForZone};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use proptest::prelude::*;

    const UID: &str = "0d7c3b9e-5c1f-4a8e-9f1e-3c2b1a000001";

    fn r(s: &str) -> ServiceRef {
        s.parse().unwrap()
    }

    fn source() -> ServiceRef {
        r("default/kubernetes")
    }

    fn target_ref() -> ServiceRef {
        r("default/kubernetes-vip")
    }

    fn port(name: Option<&str>, port: i32, target: Option<IntOrString>) -> ServicePort {
        ServicePort {
            name: name.map(str::to_owned),
            port,
            target_port: target,
            ..ServicePort::default()
        }
    }

    /// The `kubernetes-vip` Service EIB creates (RKE2 flavour), as read back from the API.
    fn vip(families: Option<&[&str]>) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some("kubernetes-vip".into()),
                namespace: Some("default".into()),
                uid: Some(UID.into()),
                labels: Some(BTreeMap::from([(
                    "serviceType".into(),
                    "kubernetes-vip".into(),
                )])),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                type_: Some("LoadBalancer".into()),
                ip_families: families.map(|f| f.iter().map(|s| (*s).to_owned()).collect()),
                ports: Some(vec![
                    ServicePort {
                        protocol: Some("TCP".into()),
                        ..port(Some("rke2-api"), 9345, Some(IntOrString::Int(9345)))
                    },
                    ServicePort {
                        protocol: Some("TCP".into()),
                        ..port(Some("k8s-api"), 6443, Some(IntOrString::Int(6443)))
                    },
                ]),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        }
    }

    fn vip4() -> Service {
        vip(Some(&[IPV4]))
    }

    fn ep(addr: &str, ready: Option<bool>) -> Endpoint {
        Endpoint {
            addresses: vec![addr.to_owned()],
            conditions: Some(EndpointConditions {
                ready,
                ..EndpointConditions::default()
            }),
            ..Endpoint::default()
        }
    }

    /// A source slice of `default/kubernetes` as the apiservers write it.
    fn src(name: &str, address_type: &str, endpoints: Vec<Endpoint>) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                labels: Some(BTreeMap::from([(
                    SERVICE_NAME_LABEL.into(),
                    "kubernetes".into(),
                )])),
                resource_version: Some("10".into()),
                ..ObjectMeta::default()
            },
            address_type: address_type.into(),
            endpoints,
            ports: Some(vec![EndpointPort {
                name: Some("https".into()),
                port: Some(6443),
                protocol: Some("TCP".into()),
                app_protocol: None,
            }]),
        }
    }

    fn three_apiservers() -> EndpointSlice {
        src(
            "kubernetes",
            IPV4,
            vec![
                ep("198.51.100.12", Some(true)),
                ep("198.51.100.10", Some(true)),
                ep("198.51.100.11", Some(true)),
            ],
        )
    }

    fn want(target: &Service, slices: &[EndpointSlice]) -> Vec<EndpointSlice> {
        desired(&source(), &target_ref(), target, slices).unwrap()
    }

    fn addresses(slice: &EndpointSlice) -> Vec<&str> {
        slice
            .endpoints
            .iter()
            .map(|e| e.addresses[0].as_str())
            .collect()
    }

    fn port_list(slice: &EndpointSlice) -> Vec<(Option<&str>, i32)> {
        slice
            .ports
            .iter()
            .flatten()
            .map(|p| (p.name.as_deref(), p.port.unwrap()))
            .collect()
    }

    /// What the API server hands back after creating `slices`: uid and resourceVersion added.
    fn written(slices: &[EndpointSlice]) -> Vec<EndpointSlice> {
        slices
            .iter()
            .map(|s| {
                let mut s = s.clone();
                s.metadata.uid = Some(format!("uid-{}", s.metadata.name.as_deref().unwrap()));
                s.metadata.resource_version = Some("1".into());
                s
            })
            .collect()
    }

    fn labelled(mut slice: EndpointSlice, labels: &[(&str, &str)]) -> EndpointSlice {
        slice.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        slice
    }

    /// A slice labelled for `kubernetes-vip` that is not ours and not ECO's.
    fn foreign(name: &str, address_type: &str) -> EndpointSlice {
        let mut s = labelled(
            src(name, address_type, vec![ep("203.0.113.50", Some(true))]),
            &[
                (SERVICE_NAME_LABEL, "kubernetes-vip"),
                (MANAGED_BY_LABEL, "someone-else"),
            ],
        );
        s.metadata.uid = Some(format!("uid-foreign-{name}"));
        s
    }

    /// endpoint-copier-operator's slice as it writes it: no managed-by label, its source label, no
    /// ownerReference, ports with an empty name when the Service port has none.
    fn eco(name: &str, endpoints: Vec<Endpoint>) -> EndpointSlice {
        let mut s = labelled(
            src(name, IPV4, endpoints),
            &[
                (SERVICE_NAME_LABEL, "kubernetes-vip"),
                (SOURCE_LABEL, "kubernetes"),
                ("app.kubernetes.io/part-of", "eco"),
            ],
        );
        s.metadata.uid = Some(format!("uid-eco-{name}"));
        s.metadata.resource_version = Some("77".into());
        s
    }

    /// Runs `plan` against `actual` step by step as apply.rs does (creates, updates, deletes),
    /// checking each write's preconditions, and returns every intermediate state.
    fn execute(actual: &[EndpointSlice], plan: &Plan) -> Vec<Vec<EndpointSlice>> {
        let mut state = actual.to_vec();
        let mut states = vec![state.clone()];
        let mut counter = 0;
        for create in &plan.creates {
            let name = create.metadata.name.clone().unwrap();
            assert!(
                state
                    .iter()
                    .all(|s| s.metadata.name.as_ref() != Some(&name)),
                "create of {name} would conflict (409 AlreadyExists)"
            );
            counter += 1;
            let mut c = create.clone();
            c.metadata.uid = Some(format!("uid-new-{counter}"));
            c.metadata.resource_version = Some("1".into());
            state.push(c);
            states.push(state.clone());
        }
        for update in &plan.updates {
            let i = state
                .iter()
                .position(|s| s.metadata.name == update.metadata.name)
                .expect("update of a missing slice");
            assert_eq!(
                state[i].metadata.uid, update.metadata.uid,
                "uid precondition"
            );
            assert_eq!(
                state[i].metadata.resource_version, update.metadata.resource_version,
                "resourceVersion precondition"
            );
            assert_eq!(
                state[i].address_type, update.address_type,
                "addressType is immutable"
            );
            let mut u = update.clone();
            u.metadata.resource_version = Some("2".into());
            state[i] = u;
            states.push(state.clone());
        }
        for delete in &plan.deletes {
            let i = state
                .iter()
                .position(|s| s.metadata.name.as_ref() == Some(&delete.name))
                .expect("delete of a missing slice");
            assert_eq!(state[i].metadata.uid, delete.uid, "uid precondition");
            assert_eq!(
                state[i].metadata.resource_version, delete.resource_version,
                "resourceVersion precondition"
            );
            state.remove(i);
            states.push(state.clone());
        }
        states
    }

    // ---- desired: the default pair ----

    #[test]
    fn default_pair_maps_kubernetes_slice_to_kubernetes_vip_with_the_vip_ports() {
        let d = want(&vip4(), &[three_apiservers()]);
        assert_eq!(d.len(), 1);
        let s = &d[0];
        assert_eq!(s.metadata.name.as_deref(), Some("kubernetes-vip"));
        assert_eq!(s.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(s.address_type, IPV4);
        assert_eq!(
            addresses(s),
            ["198.51.100.10", "198.51.100.11", "198.51.100.12"]
        );
        assert_eq!(
            port_list(s),
            [(Some("k8s-api"), 6443), (Some("rke2-api"), 9345)]
        );
        assert!(
            s.ports
                .iter()
                .flatten()
                .all(|p| p.protocol.as_deref() == Some("TCP"))
        );
    }

    #[test]
    fn target_slices_carry_our_three_labels_and_nothing_else() {
        let d = want(&vip4(), &[three_apiservers()]);
        assert_eq!(
            d[0].metadata.labels,
            Some(BTreeMap::from([
                (SERVICE_NAME_LABEL.to_owned(), "kubernetes-vip".to_owned()),
                (MANAGED_BY_LABEL.to_owned(), "endpoint-copier".to_owned()),
                (SOURCE_LABEL.to_owned(), "kubernetes".to_owned()),
            ]))
        );
        assert_eq!(d[0].metadata.annotations, None);
    }

    #[test]
    fn target_slices_are_owned_by_the_target_service_without_controller_or_blocking() {
        let d = want(&vip4(), &[three_apiservers()]);
        assert_eq!(
            d[0].metadata.owner_references,
            Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Service".into(),
                name: "kubernetes-vip".into(),
                uid: UID.into(),
                controller: Some(false),
                block_owner_deletion: Some(false),
            }])
        );
    }

    // ---- desired: families ----

    #[test]
    fn dual_stack_source_gives_one_target_slice_per_family() {
        let v6 = src(
            "kubernetes-ab12c",
            IPV6,
            vec![ep("2001:db8::10", Some(true))],
        );
        let d = want(&vip(Some(&[IPV4, IPV6])), &[three_apiservers(), v6]);
        let got: Vec<(&str, &str)> = d
            .iter()
            .map(|s| (s.metadata.name.as_deref().unwrap(), s.address_type.as_str()))
            .collect();
        assert_eq!(
            got,
            [("kubernetes-vip", IPV4), ("kubernetes-vip-ab12c", IPV6)]
        );
        assert_eq!(addresses(&d[1]), ["2001:db8::10"]);
    }

    #[test]
    fn single_stack_target_skips_the_other_family() {
        let v6 = src(
            "kubernetes-ab12c",
            IPV6,
            vec![ep("2001:db8::10", Some(true))],
        );
        let d = want(&vip4(), &[three_apiservers(), v6]);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].address_type, IPV4);
    }

    #[test]
    fn target_without_ip_families_serves_both_families() {
        let v6 = src(
            "kubernetes-ab12c",
            IPV6,
            vec![ep("2001:db8::10", Some(true))],
        );
        let d = want(&vip(None), &[three_apiservers(), v6]);
        assert_eq!(d.len(), 2);
    }

    #[test]
    fn fqdn_source_slices_are_skipped() {
        let fqdn = src(
            "kubernetes-fq",
            "FQDN",
            vec![ep("api.example.com", Some(true))],
        );
        let d = want(&vip(None), &[three_apiservers(), fqdn]);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].address_type, IPV4);
    }

    #[test]
    fn endpoints_only_in_a_family_the_target_does_not_serve_hold() {
        let v6 = src("kubernetes", IPV6, vec![ep("2001:db8::10", Some(true))]);
        assert_eq!(
            desired(&source(), &target_ref(), &vip4(), &[v6]),
            Err(Hold::NoEndpoints)
        );
    }

    // ---- desired: ports ----

    fn vip_with_ports(ports: Vec<ServicePort>) -> Service {
        let mut t = vip4();
        t.spec.as_mut().unwrap().ports = Some(ports);
        t
    }

    #[test]
    fn named_target_port_is_resolved_against_the_source_slice_ports() {
        let t = vip_with_ports(vec![port(
            Some("api"),
            443,
            Some(IntOrString::String("https".into())),
        )]);
        let d = want(&t, &[three_apiservers()]);
        assert_eq!(port_list(&d[0]), [(Some("api"), 6443)]);
    }

    #[test]
    fn named_target_port_missing_from_the_source_slice_drops_only_that_port() {
        let t = vip_with_ports(vec![
            port(Some("api"), 443, Some(IntOrString::String("https".into()))),
            port(
                Some("metrics"),
                9000,
                Some(IntOrString::String("metrics".into())),
            ),
        ]);
        let d = want(&t, &[three_apiservers()]);
        assert_eq!(port_list(&d[0]), [(Some("api"), 6443)]);
    }

    #[test]
    fn absent_target_port_uses_the_service_port() {
        let t = vip_with_ports(vec![port(None, 6443, None)]);
        let d = want(&t, &[three_apiservers()]);
        assert_eq!(port_list(&d[0]), [(None, 6443)]);
    }

    #[test]
    fn numeric_target_port_wins_over_the_service_port() {
        let t = vip_with_ports(vec![port(Some("api"), 443, Some(IntOrString::Int(6443)))]);
        let d = want(&t, &[three_apiservers()]);
        assert_eq!(port_list(&d[0]), [(Some("api"), 6443)]);
    }

    #[test]
    fn protocol_and_app_protocol_are_copied_and_protocol_defaults_to_tcp() {
        let t = vip_with_ports(vec![
            ServicePort {
                protocol: Some("UDP".into()),
                app_protocol: Some("kubernetes.io/h2c".into()),
                ..port(Some("a"), 53, None)
            },
            port(Some("b"), 6443, None),
        ]);
        let d = want(&t, &[three_apiservers()]);
        let ports = d[0].ports.as_ref().unwrap();
        assert_eq!(ports[0].protocol.as_deref(), Some("UDP"));
        assert_eq!(ports[0].app_protocol.as_deref(), Some("kubernetes.io/h2c"));
        assert_eq!(ports[1].protocol.as_deref(), Some("TCP"));
        assert_eq!(ports[1].app_protocol, None);
    }

    #[test]
    fn ports_are_sorted_by_name_whatever_the_service_order() {
        let t = vip_with_ports(vec![
            port(Some("zeta"), 3, None),
            port(Some("alpha"), 1, None),
            port(Some("mid"), 2, None),
        ]);
        let d = want(&t, &[three_apiservers()]);
        assert_eq!(
            port_list(&d[0]),
            [(Some("alpha"), 1), (Some("mid"), 2), (Some("zeta"), 3)]
        );
    }

    // ---- desired: endpoints ----

    #[test]
    fn not_ready_endpoints_are_copied_as_not_ready() {
        let s = src(
            "kubernetes",
            IPV4,
            vec![
                ep("198.51.100.10", Some(true)),
                ep("198.51.100.11", Some(false)),
            ],
        );
        let d = want(&vip4(), &[s]);
        assert_eq!(
            d[0].endpoints[1].conditions.as_ref().unwrap().ready,
            Some(false)
        );
        assert_eq!(ready_endpoints(&d), 1);
    }

    #[test]
    fn every_endpoint_field_the_api_stores_is_copied_verbatim() {
        let full = Endpoint {
            addresses: vec!["198.51.100.10".into()],
            conditions: Some(EndpointConditions {
                ready: Some(true),
                serving: Some(true),
                terminating: Some(false),
            }),
            deprecated_topology: Some(BTreeMap::from([("k".into(), "v".into())])),
            hints: Some(EndpointHints {
                for_zones: Some(vec![ForZone {
                    name: "zone-a".into(),
                }]),
                ..EndpointHints::default()
            }),
            hostname: Some("cp-1".into()),
            node_name: Some("cp-1".into()),
            target_ref: Some(ObjectReference {
                kind: Some("Node".into()),
                name: Some("cp-1".into()),
                ..ObjectReference::default()
            }),
            zone: Some("zone-a".into()),
        };
        let d = want(&vip4(), &[src("kubernetes", IPV4, vec![full.clone()])]);
        // All but deprecatedTopology, which the API server drops from v1 slices.
        let stored = Endpoint {
            deprecated_topology: None,
            ..full
        };
        assert_eq!(d[0].endpoints, vec![stored]);
    }

    #[test]
    fn endpoints_are_sorted_by_address() {
        let d = want(&vip4(), &[three_apiservers()]);
        assert_eq!(
            addresses(&d[0]),
            ["198.51.100.10", "198.51.100.11", "198.51.100.12"]
        );
    }

    #[test]
    fn an_empty_slice_beside_a_non_empty_one_is_mirrored_as_empty() {
        let empty = src("kubernetes-ab12c", IPV4, vec![]);
        let d = want(&vip4(), &[three_apiservers(), empty]);
        assert_eq!(d.len(), 2);
        assert_eq!(d[1].metadata.name.as_deref(), Some("kubernetes-vip-ab12c"));
        assert!(d[1].endpoints.is_empty());
    }

    #[test]
    fn endpoints_null_in_json_reads_as_no_endpoints_and_holds() {
        let json = r#"{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice",
            "metadata":{"name":"kubernetes","namespace":"default"},
            "addressType":"IPv4","endpoints":null}"#;
        let s: EndpointSlice = serde_json::from_str(json).unwrap();
        assert_eq!(
            desired(&source(), &target_ref(), &vip4(), &[s]),
            Err(Hold::NoEndpoints)
        );
    }

    // ---- desired: holds ----

    #[test]
    fn no_source_slices_hold() {
        assert_eq!(
            desired(&source(), &target_ref(), &vip4(), &[]),
            Err(Hold::NoSourceSlices)
        );
    }

    #[test]
    fn source_slices_that_all_hold_zero_endpoints_hold_rather_than_blank_the_target() {
        let a = src("kubernetes", IPV4, vec![]);
        let b = src("kubernetes-ab12c", IPV4, vec![]);
        assert_eq!(
            desired(&source(), &target_ref(), &vip4(), &[a, b]),
            Err(Hold::NoEndpoints)
        );
    }

    #[test]
    fn target_without_uid_holds() {
        let mut t = vip4();
        t.metadata.uid = None;
        assert_eq!(
            desired(&source(), &target_ref(), &t, &[three_apiservers()]),
            Err(Hold::TargetHasNoUid)
        );
    }

    #[test]
    fn target_with_a_selector_holds() {
        let mut t = vip4();
        t.spec.as_mut().unwrap().selector = Some(BTreeMap::from([("app".into(), "x".into())]));
        assert_eq!(
            desired(&source(), &target_ref(), &t, &[three_apiservers()]),
            Err(Hold::TargetHasSelector)
        );
    }

    #[test]
    fn target_with_an_empty_selector_is_still_a_target() {
        let mut t = vip4();
        t.spec.as_mut().unwrap().selector = Some(BTreeMap::new());
        assert!(desired(&source(), &target_ref(), &t, &[three_apiservers()]).is_ok());
    }

    #[test]
    fn target_being_deleted_holds_as_missing() {
        let mut t = vip4();
        t.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
        assert_eq!(
            desired(&source(), &target_ref(), &t, &[three_apiservers()]),
            Err(Hold::TargetMissing)
        );
    }

    #[test]
    fn slices_of_another_service_or_namespace_are_never_copied() {
        let mut other = src("kubernetes-zz", IPV4, vec![ep("203.0.113.9", Some(true))]);
        other
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(SERVICE_NAME_LABEL.into(), "other".into());
        let mut elsewhere = src("kubernetes-yy", IPV4, vec![ep("203.0.113.8", Some(true))]);
        elsewhere.metadata.namespace = Some("kube-system".into());
        let d = want(&vip4(), &[three_apiservers(), other, elsewhere]);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].metadata.name.as_deref(), Some("kubernetes-vip"));
    }

    #[test]
    fn hold_messages_name_the_service_at_fault() {
        assert!(Hold::NoSourceSlices.to_string().contains("source Service"));
        assert!(
            Hold::TargetHasSelector
                .to_string()
                .contains("target Service")
        );
    }

    // ---- names ----

    #[test]
    fn slice_named_like_its_service_maps_to_the_target_service_name() {
        assert_eq!(
            target_slice_name("kubernetes", "kubernetes", "kubernetes-vip"),
            "kubernetes-vip"
        );
    }

    #[test]
    fn generated_name_suffix_is_kept() {
        assert_eq!(
            target_slice_name("kubernetes", "kubernetes-x7k2p", "kubernetes-vip"),
            "kubernetes-vip-x7k2p"
        );
        assert_eq!(
            target_slice_name("kubernetes", "kubernetes-static", "kubernetes-vip"),
            "kubernetes-vip-static"
        );
    }

    #[test]
    fn other_names_are_hashed_with_pinned_literal_values() {
        // Pinned: changing these recreates every target slice on upgrade.
        assert_eq!(
            target_slice_name("kubernetes", "apiservers", "kubernetes-vip"),
            "kubernetes-vip-ecd81f5d"
        );
        assert_eq!(
            target_slice_name("kubernetes", "x.y", "vip"),
            "vip-c6d04176"
        );
        // A prefix without the '-' is not the generateName form.
        assert_eq!(
            target_slice_name("kube", "kubernetes-static", "vip"),
            "vip-ba84a556"
        );
    }

    #[test]
    fn fnv1a_matches_the_published_test_vectors() {
        assert_eq!(fnv1a(b""), 0x811c_9dc5);
        assert_eq!(fnv1a(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a(b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn names_that_would_exceed_253_characters_are_hashed() {
        let suffix = "a".repeat(240);
        let name = target_slice_name("svc", &format!("svc-{suffix}"), &"t".repeat(20));
        assert_eq!(name.len(), 29);
        assert!(is_dns1123_subdomain(&name));
    }

    #[test]
    fn long_source_slice_names_get_a_label_value_of_at_most_63_characters() {
        let long = format!("kubernetes-{}", "b".repeat(100));
        let v = source_label_value(&long);
        assert!(v.len() <= 63, "{v}");
        assert!(v.ends_with(&format!("-{:08x}", fnv1a(long.as_bytes()))));
        assert_eq!(source_label_value("kubernetes"), "kubernetes");
        let d = want(&vip4(), &[src(&long, IPV4, vec![ep("198.51.100.1", None)])]);
        assert_eq!(label(&d[0].metadata, SOURCE_LABEL), Some(v.as_str()));
    }

    #[test]
    fn two_source_slices_never_map_to_one_target_name() {
        // `kubernetes-ecd81f5d` keeps its suffix; `apiservers` hashes to the same name.
        let a = src("kubernetes-ecd81f5d", IPV4, vec![ep("198.51.100.1", None)]);
        let b = src("apiservers", IPV4, vec![ep("198.51.100.2", None)]);
        let d = want(&vip4(), &[a, b]);
        let names: BTreeSet<_> = d.iter().map(|s| s.metadata.name.clone()).collect();
        assert_eq!(names.len(), 2);
        assert!(names.contains(&Some("kubernetes-vip-ecd81f5d".to_owned())));
    }

    // ---- helpers ----

    #[test]
    fn ready_endpoints_counts_absent_conditions_as_ready() {
        let mut no_conditions = ep("198.51.100.3", None);
        no_conditions.conditions = None;
        let s = src(
            "kubernetes",
            IPV4,
            vec![
                ep("198.51.100.1", Some(true)),
                ep("198.51.100.2", None),
                no_conditions,
                ep("198.51.100.4", Some(false)),
            ],
        );
        assert_eq!(ready_endpoints(&[s]), 3);
    }

    #[test]
    fn ours_and_eco_slices_are_adoptable_and_foreign_ones_are_not() {
        let ours = want(&vip4(), &[three_apiservers()]).remove(0);
        assert!(is_ours(&ours) && is_adoptable(&ours));
        let e = eco("kubernetes-vip", vec![]);
        assert!(!is_ours(&e) && is_adoptable(&e));
        let f = foreign("kubernetes-vip", IPV4);
        assert!(!is_ours(&f) && !is_adoptable(&f));
    }

    #[test]
    fn plan_len_and_is_empty_count_every_write() {
        let p = Plan {
            creates: vec![EndpointSlice::default()],
            updates: vec![EndpointSlice::default()],
            deletes: vec![SliceDelete {
                name: "x".into(),
                uid: None,
                resource_version: None,
            }],
        };
        assert_eq!(p.len(), 3);
        assert!(!p.is_empty());
        assert!(Plan::default().is_empty());
    }

    // ---- plan ----

    #[test]
    fn empty_target_gets_every_desired_slice_created() {
        let d = want(&vip4(), &[three_apiservers()]);
        let p = plan(&target_ref(), &d, &[]);
        assert_eq!(p.creates, d);
        assert!(p.updates.is_empty() && p.deletes.is_empty());
    }

    #[test]
    fn target_already_in_sync_needs_no_write() {
        let d = want(&vip4(), &[three_apiservers()]);
        assert!(plan(&target_ref(), &d, &written(&d)).is_empty());
    }

    #[test]
    fn reordered_endpoints_and_ports_in_the_actual_slice_are_not_rewritten() {
        let d = want(&vip4(), &[three_apiservers()]);
        let mut a = written(&d);
        a[0].endpoints.reverse();
        a[0].ports.as_mut().unwrap().reverse();
        assert!(plan(&target_ref(), &d, &a).is_empty());
    }

    #[test]
    fn foreign_labels_annotations_and_server_fields_do_not_cause_a_write() {
        let d = want(&vip4(), &[three_apiservers()]);
        let mut a = written(&d);
        a[0].metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("team".into(), "edge".into());
        a[0].metadata.annotations = Some(BTreeMap::from([("note".into(), "x".into())]));
        a[0].metadata.generation = Some(4);
        // Port protocol defaulted by the API server and an empty name read back as "".
        a[0].ports.as_mut().unwrap()[0].protocol = None;
        assert!(plan(&target_ref(), &d, &a).is_empty());
    }

    #[test]
    fn changed_endpoints_update_in_place_keeping_identity_and_foreign_metadata() {
        let d = want(&vip4(), &[three_apiservers()]);
        let mut a = written(&d);
        a[0].endpoints.pop();
        a[0].metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("team".into(), "edge".into());
        a[0].metadata.annotations = Some(BTreeMap::from([("note".into(), "x".into())]));
        let p = plan(&target_ref(), &d, &a);
        assert!(p.creates.is_empty() && p.deletes.is_empty());
        let u = &p.updates[0];
        assert_eq!(u.metadata.name.as_deref(), Some("kubernetes-vip"));
        assert_eq!(u.metadata.uid.as_deref(), Some("uid-kubernetes-vip"));
        assert_eq!(u.metadata.resource_version.as_deref(), Some("1"));
        assert_eq!(label(&u.metadata, "team"), Some("edge"));
        assert_eq!(u.metadata.annotations, a[0].metadata.annotations);
        assert_eq!(u.endpoints, d[0].endpoints);
    }

    #[test]
    fn changed_target_ports_update_the_slice() {
        let d = want(&vip4(), &[three_apiservers()]);
        let a = written(&d);
        let t = vip_with_ports(vec![port(
            Some("k8s-api"),
            6443,
            Some(IntOrString::Int(6443)),
        )]);
        let d2 = want(&t, &[three_apiservers()]);
        let p = plan(&target_ref(), &d2, &a);
        assert_eq!(p.updates.len(), 1);
        assert_eq!(port_list(&p.updates[0]), [(Some("k8s-api"), 6443)]);
    }

    #[test]
    fn eco_slice_is_adopted_in_place_without_create_or_delete() {
        let d = want(&vip4(), &[three_apiservers()]);
        let old = eco("kubernetes-vip", vec![ep("198.51.100.10", Some(true))]);
        let p = plan(&target_ref(), &d, std::slice::from_ref(&old));
        assert!(p.creates.is_empty() && p.deletes.is_empty(), "{p:?}");
        let u = &p.updates[0];
        assert_eq!(u.metadata.name.as_deref(), Some("kubernetes-vip"));
        assert_eq!(u.metadata.uid.as_deref(), Some("uid-eco-kubernetes-vip"));
        assert_eq!(u.metadata.resource_version.as_deref(), Some("77"));
        assert_eq!(
            label(&u.metadata, MANAGED_BY_LABEL),
            Some("endpoint-copier")
        );
        assert_eq!(label(&u.metadata, "app.kubernetes.io/part-of"), Some("eco"));
        assert_eq!(u.endpoints.len(), 3);
    }

    #[test]
    fn eco_slice_under_another_name_is_adopted_by_its_source_label() {
        let d = want(&vip4(), &[three_apiservers()]);
        let old = eco("kubernetes-vip-eco", vec![ep("198.51.100.10", Some(true))]);
        let p = plan(&target_ref(), &d, std::slice::from_ref(&old));
        assert!(p.creates.is_empty() && p.deletes.is_empty(), "{p:?}");
        assert_eq!(
            p.updates[0].metadata.name.as_deref(),
            Some("kubernetes-vip-eco")
        );
        // And once adopted, nothing more to do.
        let after = execute(&[old], &p).pop().unwrap();
        assert!(plan(&target_ref(), &d, &after).is_empty());
    }

    #[test]
    fn stale_owner_reference_to_a_recreated_target_is_replaced() {
        let d = want(&vip4(), &[three_apiservers()]);
        let mut a = written(&d);
        a[0].metadata.owner_references.as_mut().unwrap()[0].uid = "old-uid".into();
        let p = plan(&target_ref(), &d, &a);
        let refs = p.updates[0].metadata.owner_references.as_ref().unwrap();
        assert_eq!(refs.len(), 1);
        assert_eq!(refs[0].uid, UID);
    }

    #[test]
    fn address_type_change_creates_under_the_alternative_name_before_deleting() {
        // Our old IPv6 slice holds the name; the new desired slice is IPv4.
        let mut old = written(&want(&vip4(), &[three_apiservers()]));
        old[0].address_type = IPV6.into();
        old[0].endpoints = vec![ep("2001:db8::1", Some(true))];
        let d = want(&vip4(), &[three_apiservers()]);
        let p = plan(&target_ref(), &d, &old);
        assert_eq!(p.creates.len(), 1);
        assert_eq!(
            p.creates[0].metadata.name.as_deref(),
            Some("kubernetes-vip-ipv4")
        );
        assert_eq!(p.deletes.len(), 1);
        assert_eq!(p.deletes[0].name, "kubernetes-vip");
        assert!(p.updates.is_empty());
        let states = execute(&old, &p);
        assert!(states.iter().all(|s| ready_endpoints(s) >= 1));
        // The alternative name is stable: re-planning finds it by its source label.
        assert!(plan(&target_ref(), &d, states.last().unwrap()).is_empty());
    }

    #[test]
    fn foreign_slice_with_our_name_is_left_untouched() {
        let d = want(&vip4(), &[three_apiservers()]);
        let f = foreign("kubernetes-vip", IPV4);
        let p = plan(&target_ref(), &d, std::slice::from_ref(&f));
        assert!(p.updates.is_empty() && p.deletes.is_empty());
        assert_eq!(
            p.creates[0].metadata.name.as_deref(),
            Some("kubernetes-vip-ipv4")
        );
    }

    #[test]
    fn alternative_name_taken_too_falls_back_to_a_hash() {
        let d = want(&vip4(), &[three_apiservers()]);
        let a = [
            foreign("kubernetes-vip", IPV4),
            foreign("kubernetes-vip-ipv4", IPV4),
        ];
        let p = plan(&target_ref(), &d, &a);
        let name = p.creates[0].metadata.name.clone().unwrap();
        assert!(name.starts_with("kubernetes-vip-") && name.len() == "kubernetes-vip-".len() + 8);
        assert!(is_dns1123_subdomain(&name));
    }

    #[test]
    fn slices_we_no_longer_want_are_deleted_with_preconditions() {
        let d = want(&vip4(), &[three_apiservers()]);
        let mut stale = written(&want(
            &vip4(),
            &[src(
                "kubernetes-gone1",
                IPV4,
                vec![ep("198.51.100.9", None)],
            )],
        ));
        stale[0].metadata.resource_version = Some("42".into());
        let mut a = written(&d);
        a.extend(stale);
        let p = plan(&target_ref(), &d, &a);
        assert_eq!(
            p.deletes,
            [SliceDelete {
                name: "kubernetes-vip-gone1".into(),
                uid: Some("uid-kubernetes-vip-gone1".into()),
                resource_version: Some("42".into()),
            }]
        );
        assert!(p.creates.is_empty() && p.updates.is_empty());
    }

    #[test]
    fn duplicate_leftovers_for_one_source_slice_keep_one_and_delete_the_rest() {
        let d = want(&vip4(), &[three_apiservers()]);
        let mut a = written(&d);
        a[0].metadata.name = Some("kubernetes-vip-dup-b".into());
        let mut b = a[0].clone();
        b.metadata.name = Some("kubernetes-vip-dup-a".into());
        b.metadata.uid = Some("uid-b".into());
        a.push(b);
        let p = plan(&target_ref(), &d, &a);
        assert!(p.creates.is_empty() && p.updates.is_empty());
        assert_eq!(p.deletes.len(), 1);
        assert_eq!(p.deletes[0].name, "kubernetes-vip-dup-b");
    }

    #[test]
    fn our_slices_of_another_target_are_never_deleted() {
        let d = want(&vip4(), &[three_apiservers()]);
        let mut other = written(&d);
        other[0].metadata.name = Some("other-vip".into());
        other[0]
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(SERVICE_NAME_LABEL.into(), "other-vip".into());
        let mut a = written(&d);
        a.extend(other);
        assert!(plan(&target_ref(), &d, &a).is_empty());
    }

    #[test]
    fn ready_endpoints_move_into_one_slice_before_leaving_another() {
        // Source moves the only ready endpoint from slice a to slice b.
        let before = [
            src("kubernetes-a", IPV4, vec![ep("198.51.100.1", Some(true))]),
            src("kubernetes-b", IPV4, vec![ep("198.51.100.2", Some(false))]),
        ];
        let after = [
            src("kubernetes-a", IPV4, vec![ep("198.51.100.1", Some(false))]),
            src("kubernetes-b", IPV4, vec![ep("198.51.100.2", Some(true))]),
        ];
        let actual = written(&want(&vip4(), &before));
        let p = plan(&target_ref(), &want(&vip4(), &after), &actual);
        assert_eq!(
            p.updates[0].metadata.name.as_deref(),
            Some("kubernetes-vip-b")
        );
        assert!(execute(&actual, &p).iter().all(|s| ready_endpoints(s) >= 1));
    }

    #[test]
    fn removing_a_pair_deletes_our_and_eco_slices_but_not_foreign_ones() {
        let mut a = written(&want(&vip4(), &[three_apiservers()]));
        a.push(eco("kubernetes-vip-eco", vec![]));
        a.push(foreign("kubernetes-vip-lb", IPV4));
        let p = plan(&target_ref(), &[], &a);
        let deleted: Vec<&str> = p.deletes.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(deleted, ["kubernetes-vip", "kubernetes-vip-eco"]);
        assert!(p.creates.is_empty() && p.updates.is_empty());
    }

    // ---- properties ----

    fn arb_endpoints(v6: bool) -> impl Strategy<Value = Vec<Endpoint>> {
        prop::collection::btree_map(1u8..40, prop::option::of(any::<bool>()), 0..5).prop_map(
            move |m| {
                m.into_iter()
                    .map(|(i, ready)| {
                        let addr = if v6 {
                            format!("2001:db8::{i:x}")
                        } else {
                            format!("198.51.100.{i}")
                        };
                        ep(&addr, ready)
                    })
                    .collect()
            },
        )
    }

    fn arb_slice_name() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("kubernetes".to_owned()),
            "[a-z0-9]{5}".prop_map(|s| format!("kubernetes-{s}")),
            "[a-z][a-z0-9.-]{0,20}[a-z0-9]",
            "[a-z]{60,80}".prop_map(|s| format!("kubernetes-{s}.{s}.{s}")),
        ]
    }

    fn arb_family() -> impl Strategy<Value = &'static str> {
        prop_oneof![Just(IPV4), Just(IPV6), Just("FQDN")]
    }

    fn arb_source() -> impl Strategy<Value = Vec<EndpointSlice>> {
        prop::collection::btree_map(arb_slice_name(), (arb_family(), any::<bool>()), 1..5)
            .prop_flat_map(|m| {
                m.into_iter()
                    .map(|(name, (family, _))| {
                        arb_endpoints(family == IPV6).prop_map(move |eps| src(&name, family, eps))
                    })
                    .collect::<Vec<_>>()
            })
    }

    fn arb_target() -> impl Strategy<Value = Service> {
        prop_oneof![
            Just(vip4()),
            Just(vip(Some(&[IPV6]))),
            Just(vip(Some(&[IPV6, IPV4]))),
            Just(vip(None)),
        ]
    }

    /// An arbitrary actual state: some of the desired slices as written (some changed), plus
    /// leftovers of ours, ECO's slices, foreign slices (some with our names) and other targets'.
    fn arb_actual(d: Vec<EndpointSlice>) -> impl Strategy<Value = Vec<EndpointSlice>> {
        let n = d.len();
        (
            prop::collection::vec(0u8..5, n),
            prop::collection::vec(
                (0u8..4, 0usize..(n + 3), arb_family(), arb_endpoints(false)),
                0..5,
            ),
        )
            .prop_map(move |(fates, extras)| {
                let mut out = Vec::new();
                for (s, fate) in written(&d).into_iter().zip(fates) {
                    let mut s = s;
                    match fate {
                        0 => continue,
                        1 => {
                            s.endpoints.pop();
                        }
                        2 => {
                            s.address_type =
                                if s.address_type == IPV4 { IPV6 } else { IPV4 }.into();
                        }
                        3 => {
                            s.metadata.name = Some(format!("{}-old", s.metadata.name.unwrap()));
                        }
                        _ => {}
                    }
                    out.push(s);
                }
                for (k, (kind, name_idx, family, eps)) in extras.into_iter().enumerate() {
                    let name = d
                        .get(name_idx)
                        .and_then(|s| s.metadata.name.clone())
                        .unwrap_or_else(|| format!("kubernetes-vip-extra{k}"));
                    let mut s = match kind {
                        0 => foreign(&name, family),
                        1 => eco(&name, eps.clone()),
                        2 => labelled(
                            src(&name, family, eps.clone()),
                            &[
                                (SERVICE_NAME_LABEL, "kubernetes-vip"),
                                (MANAGED_BY_LABEL, MANAGED_BY),
                                (SOURCE_LABEL, "gone"),
                            ],
                        ),
                        _ => labelled(
                            src(&name, family, eps.clone()),
                            &[
                                (SERVICE_NAME_LABEL, "other-vip"),
                                (MANAGED_BY_LABEL, MANAGED_BY),
                                (SOURCE_LABEL, "kubernetes"),
                            ],
                        ),
                    };
                    s.address_type = family.into();
                    s.endpoints = eps;
                    s.metadata.uid = Some(format!("uid-extra-{k}"));
                    out.push(s);
                }
                // One object per name in a namespace, as the API guarantees.
                let mut seen = BTreeSet::new();
                out.retain(|s| seen.insert(s.metadata.name.clone()));
                out
            })
    }

    fn arb_case() -> impl Strategy<Value = (Service, Vec<EndpointSlice>, Vec<EndpointSlice>)> {
        (arb_target(), arb_source()).prop_flat_map(|(t, source_slices)| {
            let d = desired(&source(), &target_ref(), &t, &source_slices).unwrap_or_default();
            (Just(t), Just(d.clone()), arb_actual(d))
        })
    }

    proptest! {
        #[test]
        fn input_order_of_source_slices_and_endpoints_does_not_change_desired(
            t in arb_target(),
            source_slices in arb_source(),
            seed in any::<u64>(),
        ) {
            let mut shuffled = source_slices.clone();
            let mut rng = fastrand::Rng::with_seed(seed);
            rng.shuffle(&mut shuffled);
            for s in &mut shuffled {
                rng.shuffle(&mut s.endpoints);
            }
            prop_assert_eq!(
                desired(&source(), &target_ref(), &t, &source_slices),
                desired(&source(), &target_ref(), &t, &shuffled)
            );
        }

        #[test]
        fn plan_of_desired_against_itself_as_written_is_empty(
            t in arb_target(),
            source_slices in arb_source(),
        ) {
            if let Ok(d) = desired(&source(), &target_ref(), &t, &source_slices) {
                let names: BTreeSet<&str> =
                    d.iter().map(|s| s.metadata.name.as_deref().unwrap()).collect();
                prop_assert_eq!(names.len(), d.len());
                prop_assert!(names.iter().all(|n| is_dns1123_subdomain(n)), "{:?}", names);
                let p = plan(&target_ref(), &d, &written(&d));
                prop_assert!(p.is_empty(), "{:?}", p);
            }
        }

        #[test]
        fn applying_a_plan_then_replanning_gives_an_empty_plan((_t, d, actual) in arb_case()) {
            let p = plan(&target_ref(), &d, &actual);
            let after = execute(&actual, &p).pop().unwrap();
            let again = plan(&target_ref(), &d, &after);
            prop_assert!(again.is_empty(), "{:?}", again);
        }

        #[test]
        fn plan_never_touches_a_slice_that_is_not_adoptable_or_not_the_targets(
            (_t, d, actual) in arb_case(),
        ) {
            let p = plan(&target_ref(), &d, &actual);
            let untouchable: BTreeSet<String> = actual
                .iter()
                .filter(|s| !is_adoptable(s) || label(&s.metadata, SERVICE_NAME_LABEL) != Some("kubernetes-vip"))
                .filter_map(|s| s.metadata.name.clone())
                .collect();
            for u in &p.updates {
                prop_assert!(!untouchable.contains(u.metadata.name.as_ref().unwrap()));
            }
            for del in &p.deletes {
                prop_assert!(!untouchable.contains(&del.name));
            }
            for c in &p.creates {
                prop_assert!(!actual.iter().any(|s| s.metadata.name == c.metadata.name));
            }
        }

        #[test]
        fn ready_count_never_dips_below_both_ends((_t, d, actual) in arb_case()) {
            let p = plan(&target_ref(), &d, &actual);
            let states = execute(&actual, &p);
            let first = ready_endpoints(&states[0]);
            let last = ready_endpoints(states.last().unwrap());
            for s in &states {
                prop_assert!(ready_endpoints(s) >= first.min(last));
            }
            // While the source has a ready endpoint, a VIP that had one never loses it.
            if ready_endpoints(&d) >= 1 && first >= 1 {
                prop_assert!(states.iter().all(|s| ready_endpoints(s) >= 1));
            }
        }

        #[test]
        fn every_generated_name_is_a_valid_subdomain_and_stable(
            source_service in "[a-z][a-z0-9-]{0,61}[a-z0-9]",
            target_service in "[a-z][a-z0-9-]{0,61}[a-z0-9]",
            slice in prop_oneof![
                "[a-z0-9]([a-z0-9.-]{0,250}[a-z0-9])?",
                "[a-z0-9]{1,250}",
            ],
            prefixed in any::<bool>(),
        ) {
            let slice = if prefixed { format!("{source_service}-{slice}") } else { slice };
            let name = target_slice_name(&source_service, &slice, &target_service);
            prop_assert!(is_dns1123_subdomain(&name), "{}", name);
            prop_assert_eq!(&name, &target_slice_name(&source_service, &slice, &target_service));
            let v = source_label_value(&slice);
            prop_assert!(v.len() <= 63);
            prop_assert!(v.starts_with(|c: char| c.is_ascii_alphanumeric()));
            prop_assert!(v.ends_with(|c: char| c.is_ascii_alphanumeric()));
        }

        #[test]
        fn created_slices_always_have_valid_unique_names((_t, d, actual) in arb_case()) {
            let p = plan(&target_ref(), &d, &actual);
            let mut seen = BTreeSet::new();
            for c in &p.creates {
                let name = c.metadata.name.clone().unwrap();
                prop_assert!(is_dns1123_subdomain(&name), "{}", name);
                prop_assert!(seen.insert(name));
            }
        }
    }
}
