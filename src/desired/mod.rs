//! The pure core of the mirror: which target EndpointSlices a pair wants ([`desired`]), and the
//! creates, updates and deletes that turn the slices that exist into them ([`plan`]).
//!
//! This module knows only `k8s-openapi`, std, [`crate::names`] and the pure [`crate::nodes`]. It never talks to the API, never
//! reads a clock and never logs: `watch.rs` hands it snapshots, `apply.rs` runs the [`Plan`] it
//! returns (creates, then updates, then deletes, in the order given), and `daemon` reports a
//! [`Hold`] (log, Event, STATUS, metric). Which pairs exist and which are refused is `pairs.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::names::{
    GROUP_LABEL, MANAGED_BY, MANAGED_BY_LABEL, SERVICE_NAME_LABEL, SOURCE_LABEL, ServiceRef,
    is_dns1123_subdomain,
};

pub use crate::family::{IPV4, IPV6, unusable_endpoint_address};
/// Protocol the API server fills in when an EndpointPort or ServicePort names none.
pub(super) const DEFAULT_PROTOCOL: &str = "TCP";
/// Longest label value the API accepts.
pub(super) const MAX_LABEL_VALUE: usize = 63;
/// Longest EndpointSlice name the API accepts (a DNS-1123 subdomain).
pub(super) const MAX_NAME: usize = 253;

/// Why nothing may be written for a pair right now (fail-static: the target keeps what it has).
///
/// Every variant means "leave the target slices exactly as they are and retry later"; only removing
/// the pair removes its slices (docs/development/architecture.md, "Fail-static").
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
    /// The pair is refused (bad annotation, cycle, selector...; the refusal says which): its
    /// slices stay as they are until the refusal is fixed or the pair is removed.
    Refused,
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
            Self::Refused => "the pair is refused; its EndpointSlices are kept as they are",
            Self::TargetHasSelector => {
                "the target Service has a selector, so the built-in EndpointSlice controller owns its EndpointSlices"
            }
        })
    }
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
    owner: &Owner,
) -> Result<Vec<EndpointSlice>, Hold> {
    let uid = writable_target(target)?;
    let slices: Vec<&EndpointSlice> = source_slices
        .iter()
        .filter(|s| belongs_to(s, source))
        .collect();
    copy_slices(&source.name, slices, target_ref, target, uid, owner)
}

/// The uid of `target` when slices may be written for it.
///
/// # Errors
/// [`Hold::TargetHasSelector`], [`Hold::TargetMissing`] (being deleted), [`Hold::TargetHasNoUid`].
pub(super) fn writable_target(target: &Service) -> Result<&str, Hold> {
    if target
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .is_some_and(|sel| !sel.is_empty())
    {
        return Err(Hold::TargetHasSelector);
    }
    if target.metadata.deletion_timestamp.is_some() {
        return Err(Hold::TargetMissing);
    }
    match target.metadata.uid.as_deref() {
        Some(uid) if !uid.is_empty() => Ok(uid),
        _ => Err(Hold::TargetHasNoUid),
    }
}

/// [`desired`]'s copy, for the slices of one source already known to be its own: one target
/// slice per slice whose family the target serves, named by [`target_slice_name`] from
/// `source_name`.
pub(super) fn copy_slices(
    source_name: &str,
    mut slices: Vec<&EndpointSlice>,
    target_ref: &ServiceRef,
    target: &Service,
    uid: &str,
    owner: &Owner,
) -> Result<Vec<EndpointSlice>, Hold> {
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

    let service_ports = target
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or_default();
    let owner_ref = owner_reference(target_ref, uid);
    let mut used = BTreeSet::new();
    let mut out = Vec::with_capacity(slices.len());
    for slice in slices {
        let source_slice = slice.metadata.name.as_deref().unwrap_or_default();
        let mut name = target_slice_name(source_name, source_slice, &target_ref.name);
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
                labels: Some(our_labels(target_ref, source_slice, owner)),
                owner_references: Some(vec![owner_ref.clone()]),
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

/// The ready endpoints of the source that the target serves, each as its first address and the
/// port of its slice (the first by name, then number; `None` when the slice lists no port): what
/// the probes of a pair look at. Same filters as [`desired`] (families the target serves, slices
/// of the source only); an address that does not parse (an FQDN slice) is skipped. Sorted,
/// without duplicates.
pub fn probed_endpoints(
    source: &ServiceRef,
    target: &Service,
    source_slices: &[EndpointSlice],
) -> Vec<(std::net::IpAddr, Option<u16>)> {
    let families = served_families(target);
    let mut out: Vec<(std::net::IpAddr, Option<u16>)> = source_slices
        .iter()
        .filter(|s| belongs_to(s, source) && families.contains(&s.address_type))
        .flat_map(|slice| {
            let mut ports: Vec<EndpointPort> = slice.ports.clone().unwrap_or_default();
            sort_ports(&mut ports);
            let port = ports
                .first()
                .and_then(|p| p.port)
                .and_then(|p| u16::try_from(p).ok());
            slice
                .endpoints
                .iter()
                .filter(|e| is_ready(e))
                .filter_map(move |e| Some((e.addresses.first()?.parse().ok()?, port)))
        })
        .collect();
    out.sort();
    out.dedup();
    out
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
pub(super) fn fnv1a(bytes: &[u8]) -> u32 {
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
pub(super) fn hashed_name(target_service: &str, key: &str) -> String {
    let head: String = target_service.chars().take(MAX_LABEL_VALUE - 9).collect();
    format!(
        "{}-{:08x}",
        head.trim_end_matches(['-', '.']),
        fnv1a(key.as_bytes())
    )
}

/// Our four labels for a slice of `target_ref` copied from `source_slice`.
fn our_labels(
    target_ref: &ServiceRef,
    source_slice: &str,
    owner: &Owner,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (SERVICE_NAME_LABEL.to_owned(), target_ref.name.clone()),
        (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
        (GROUP_LABEL.to_owned(), owner.group.clone()),
        (SOURCE_LABEL.to_owned(), source_label_value(source_slice)),
    ])
}

/// The ports of a target slice: one per Service port, sorted (the rule is in
/// docs/development/architecture.md, "What a target slice holds").
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
            Some(normalized_port(EndpointPort {
                name: sp.name.clone(),
                protocol: sp.protocol.clone(),
                app_protocol: sp.app_protocol.clone(),
                port: Some(number),
            }))
        })
        .collect();
    sort_ports(&mut ports);
    ports
}

/// A port as the API server stores it: an empty name is no name, no protocol is TCP. The one
/// port rule, for the ports we derive from a Service and for those we compare in a slice.
pub(super) fn normalized_port(port: EndpointPort) -> EndpointPort {
    EndpointPort {
        name: port.name.filter(|n| !n.is_empty()),
        protocol: Some(port.protocol.unwrap_or_else(|| DEFAULT_PROTOCOL.to_owned())),
        ..port
    }
}

/// Canonical port order: by name, then number, then protocol.
pub(super) fn sort_ports(ports: &mut [EndpointPort]) {
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
pub(super) fn sort_endpoints(endpoints: &mut [Endpoint]) {
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

/// True when `slice` may be one of the source Service's slices: no explicit namespace or
/// service-name label that says otherwise.
pub(super) fn belongs_to(slice: &EndpointSlice, source: &ServiceRef) -> bool {
    slice
        .metadata
        .namespace
        .as_deref()
        .is_none_or(|ns| ns == source.namespace)
        && label(&slice.metadata, SERVICE_NAME_LABEL).is_none_or(|n| n == source.name)
}

/// The value of label `key`, if set.
pub(super) fn label<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.labels.as_ref()?.get(key).map(String::as_str)
}

/// `conditions.ready != false`: absent means ready.
pub fn is_ready(endpoint: &Endpoint) -> bool {
    endpoint
        .conditions
        .as_ref()
        .and_then(|c| c.ready)
        .unwrap_or(true)
}

pub mod nodes;
mod owner;
mod plan;
pub mod step;
pub mod union;
pub use owner::{
    ForeignSlice, Manager, NEWER_VERSION, Owner, foreign_slices, manager_of, understands,
};
pub use plan::{Plan, SliceDelete, plan};

#[cfg(test)]
mod tests;
