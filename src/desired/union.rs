//! The union of a pair's sources: the target slices a pair with several sources (or with a
//! source other than one Service of this cluster) wants.
//!
//! Each source is copied by the rules of [`super::desired`] — one target slice per source slice
//! whose family the target serves, ports from the target Service — and then:
//! - **naming**: a Service of this cluster keeps [`super::target_slice_name`]'s names; a remote
//!   Service's and the static addresses' slices are named `<target>-<hash of source id and slice>`,
//!   so a source's names depend on that source alone: adding or removing another source renames
//!   nothing (two sources' names meet only through a hash collision, settled in source order);
//! - **labels**: every slice carries [`SOURCE_ID_LABEL`] = [`source_id`];
//! - **fail-static per source**: a source with nothing to give now (missing, unreachable, never
//!   read, empty) keeps its slices in the target exactly as they are (found by that label);
//!   only when every source is so is the whole pair held;
//! - **dedupe**: an address given by two sources is written once: the ready copy, then a fresh
//!   copy before a kept one, then the first source in [`Source`] order (Services of this cluster,
//!   remote Services, static addresses).
//!
//! Pure, like the rest of `desired`: no I/O, no clock. The output does not depend on the order of
//! the inputs, of their slices or of their endpoints.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{
    DEFAULT_PROTOCOL, Hold, IPV4, IPV6, Owner, belongs_to, copy_slices, desired, fnv1a,
    hashed_name, is_ready, label, writable_target,
};
use crate::names::{SOURCE_ID_LABEL, ServiceRef};
use crate::source::{Source, StaticSource};

/// One source's part of a union.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// The source.
    pub source: &'a Source,
    /// Its slices now: a Service's as read (here or in its cluster), a static source's from
    /// [`static_slices`]; `Err` when it has none to give (its slices in the target are kept).
    pub slices: Result<&'a [EndpointSlice], Hold>,
}

/// What [`union`] wants written, and which sources it kept as they were.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Union {
    /// The target slices, sorted by name.
    pub slices: Vec<EndpointSlice>,
    /// The sources that had nothing to give, with why; their slices in the target are kept.
    pub held: Vec<(Source, Hold)>,
}

/// The value of [`SOURCE_ID_LABEL`] for `source`: `service-<8 hex>` and `remote-<8 hex>` (FNV-1a
/// of the Service, and of the kubeconfig path for a remote one), `static`. Stable across hosts,
/// runs and versions: it names the source's slices. The path is hashed normalized (`/etc//r.yaml`
/// is `/etc/r.yaml`), so that a spelling never renames slices; config normalizes it already,
/// this keeps every other caller honest.
pub fn source_id(source: &Source) -> String {
    match source {
        Source::Service(s) => format!("service-{:08x}", fnv1a(s.to_string().as_bytes())),
        Source::Remote(r) => {
            let path: std::path::PathBuf = r.kubeconfig.components().collect();
            format!(
                "{REMOTE_ID_PREFIX}{:08x}",
                fnv1a(format!("{}|{}", path.display(), r.service).as_bytes())
            )
        }
        Source::Static(_) => "static".to_owned(),
    }
}

/// Whether `id` is a [`source_id`] this version writes: `service-` or `remote-` and 8 lowercase
/// hex digits, or `static`. A slice of ours with any other source id was written by a newer
/// version (another kind of source): `desired::manager_of` keeps it untouched.
pub fn is_known_source_id(id: &str) -> bool {
    let hashed = |prefix: &str| {
        id.strip_prefix(prefix).is_some_and(|h| {
            h.len() == 8
                && h.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
    };
    id == "static" || hashed("service-") || hashed(REMOTE_ID_PREFIX)
}

/// Whether `slice` (a target slice) holds a remote source's endpoints: another cluster's, which
/// this cluster's Nodes say nothing about (no drain, no nodeName) — by its [`SOURCE_ID_LABEL`].
pub fn is_remote(slice: &EndpointSlice) -> bool {
    label(&slice.metadata, SOURCE_ID_LABEL).is_some_and(|id| id.starts_with(REMOTE_ID_PREFIX))
}

/// How a remote source's [`source_id`] begins.
const REMOTE_ID_PREFIX: &str = "remote-";

/// Whether a pair reading `sources` is written by [`union`] (several sources, or one that is not
/// a Service of this cluster) rather than by [`desired`] alone, whose slices carry no
/// [`SOURCE_ID_LABEL`]: the single-Service pairs of earlier versions keep their slices as they are.
pub fn is_union(sources: &[Source]) -> bool {
    !matches!(sources, [Source::Service(_)])
}

/// The slices a static source gives a target: one per family of its addresses (`static-ipv4`,
/// `static-ipv6`), every endpoint ready and serving (probes decide otherwise), the ports those of
/// the target Service (a numeric targetPort, else the port; a named targetPort has nothing to
/// name here: `pairs` refuses such a pair).
pub fn static_slices(source: &StaticSource, target: &Service) -> Vec<EndpointSlice> {
    let ports: Vec<EndpointPort> = target
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or_default()
        .iter()
        .filter_map(|sp| {
            let number = match &sp.target_port {
                Some(IntOrString::Int(n)) if *n != 0 => *n,
                Some(IntOrString::String(_)) => return None,
                _ => sp.port,
            };
            Some(EndpointPort {
                name: sp.name.clone().filter(|n| !n.is_empty()),
                port: Some(number),
                protocol: Some(
                    sp.protocol
                        .clone()
                        .unwrap_or_else(|| DEFAULT_PROTOCOL.to_owned()),
                ),
                app_protocol: sp.app_protocol.clone(),
            })
        })
        .collect();
    [(IPV4, "static-ipv4"), (IPV6, "static-ipv6")]
        .into_iter()
        .filter_map(|(family, name)| {
            let endpoints: Vec<Endpoint> = source
                .addresses
                .iter()
                .filter(|a| a.is_ipv4() == (family == IPV4))
                .map(|a| Endpoint {
                    addresses: vec![a.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: Some(true),
                        serving: Some(true),
                        terminating: None,
                    }),
                    ..Endpoint::default()
                })
                .collect();
            (!endpoints.is_empty()).then(|| EndpointSlice {
                metadata: ObjectMeta {
                    name: Some(name.to_owned()),
                    ..ObjectMeta::default()
                },
                address_type: family.to_owned(),
                endpoints,
                ports: Some(ports.clone()),
            })
        })
        .collect()
}

/// The target slices of a pair reading `inputs` (the rules are in the module documentation).
/// `actual` is every slice of the target (every manager's): a held source's are taken from it.
///
/// # Errors
/// A [`Hold`] for the whole pair: the target cannot be written (selector, being deleted, no
/// uid), or no source has anything to give (the first source's reason).
pub fn union(
    target_ref: &ServiceRef,
    target: &Service,
    inputs: &[Input<'_>],
    actual: &[EndpointSlice],
    owner: &Owner,
) -> Result<Union, Hold> {
    if let [Input { source, slices }] = inputs
        && let Source::Service(service) = source
    {
        // One Service of this cluster: exactly the slices of earlier versions.
        return desired(service, target_ref, target, (*slices)?, owner).map(|slices| Union {
            slices,
            held: Vec::new(),
        });
    }
    let uid = writable_target(target)?;
    let mut ordered: Vec<&Input<'_>> = inputs.iter().collect();
    ordered.sort_by(|a, b| a.source.cmp(b.source));
    ordered.dedup_by(|a, b| a.source == b.source);
    // The first Service of this cluster also owns our slices that carry no source id: those a
    // single-Service pair of this target wrote before it got more sources.
    let legacy_owner = ordered
        .iter()
        .position(|i| matches!(i.source, Source::Service(_)));

    let mut parts: Vec<Part> = Vec::new();
    let mut held = Vec::new();
    for (rank, input) in ordered.iter().enumerate() {
        let id = source_id(input.source);
        let fresh = input
            .slices
            .and_then(|slices| copy_source(input.source, slices, target_ref, target, uid, owner));
        match fresh {
            Ok(slices) => parts.extend(slices.into_iter().map(|mut slice| {
                set_label(&mut slice, &id);
                Part {
                    rank,
                    kept: false,
                    slice,
                }
            })),
            Err(hold @ (Hold::NoSourceSlices | Hold::NoEndpoints)) => {
                held.push((input.source.clone(), hold));
                parts.extend(
                    kept_slices(target_ref, actual, owner, &id, legacy_owner == Some(rank)).map(
                        |s| {
                            let mut slice = s.clone();
                            slice.metadata = ObjectMeta {
                                name: s.metadata.name.clone(),
                                namespace: s.metadata.namespace.clone(),
                                labels: s.metadata.labels.clone(),
                                owner_references: s.metadata.owner_references.clone(),
                                ..ObjectMeta::default()
                            };
                            set_label(&mut slice, &id);
                            Part {
                                rank,
                                kept: true,
                                slice,
                            }
                        },
                    ),
                );
            }
            Err(other) => return Err(other),
        }
    }
    if held.len() == ordered.len() {
        return Err(held.first().map_or(Hold::NoSourceSlices, |(_, h)| *h));
    }
    dedupe(&mut parts);

    let mut used: BTreeSet<String> = BTreeSet::new();
    let mut slices = Vec::with_capacity(parts.len());
    for part in parts {
        let mut slice = part.slice;
        let name = slice.metadata.name.clone().unwrap_or_default();
        let mut unique = name.clone();
        let mut salt = 0u32;
        while used.contains(&unique) {
            salt += 1;
            let id = label(&slice.metadata, SOURCE_ID_LABEL).unwrap_or_default();
            unique = hashed_name(&target_ref.name, &format!("{id}#{name}#{salt}"));
        }
        used.insert(unique.clone());
        slice.metadata.name = Some(unique);
        slices.push(slice);
    }
    slices.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    held.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Union { slices, held })
}

/// The slices of `actual` (every slice of target `target_ref`) that [`union`] keeps for a source
/// with nothing to give whose [`source_id`] is `id`: ours to change, on this target, labelled
/// `id` — or, for `legacy` (the first Service of this cluster), without a source id: a
/// single-Service pair's, from before it had more sources.
pub fn kept_slices<'a>(
    target_ref: &'a ServiceRef,
    actual: &'a [EndpointSlice],
    owner: &'a Owner,
    id: &'a str,
    legacy: bool,
) -> impl Iterator<Item = &'a EndpointSlice> + 'a {
    actual
        .iter()
        .filter(|s| super::manager_of(s, owner).is_ours_to_change())
        .filter(|s| {
            label(&s.metadata, crate::names::SERVICE_NAME_LABEL) == Some(target_ref.name.as_str())
        })
        .filter(move |s| match label(&s.metadata, SOURCE_ID_LABEL) {
            Some(v) => v == id,
            None => legacy,
        })
}

/// One target slice on its way into a union: from which source (its rank in source order), and
/// whether it is kept from the target rather than copied afresh.
struct Part {
    rank: usize,
    kept: bool,
    slice: EndpointSlice,
}

/// One source's slices, named for the union.
fn copy_source(
    source: &Source,
    slices: &[EndpointSlice],
    target_ref: &ServiceRef,
    target: &Service,
    uid: &str,
    owner: &Owner,
) -> Result<Vec<EndpointSlice>, Hold> {
    match source {
        Source::Service(service) => {
            let own = slices.iter().filter(|s| belongs_to(s, service)).collect();
            copy_slices(&service.name, own, target_ref, target, uid, owner)
        }
        Source::Remote(remote) => {
            let own = slices
                .iter()
                .filter(|s| belongs_to(s, &remote.service))
                .collect();
            let mut out = copy_slices(&remote.service.name, own, target_ref, target, uid, owner)?;
            rename(&mut out, source, target_ref);
            Ok(out)
        }
        Source::Static(_) => {
            let mut out = copy_slices("", slices.iter().collect(), target_ref, target, uid, owner)?;
            rename(&mut out, source, target_ref);
            Ok(out)
        }
    }
}

/// Names `slices` of a remote or static `source` `<target>-<hash of its id and source slice>`.
fn rename(slices: &mut [EndpointSlice], source: &Source, target_ref: &ServiceRef) {
    let id = source_id(source);
    for slice in slices.iter_mut() {
        let from = label(&slice.metadata, crate::names::SOURCE_LABEL)
            .unwrap_or_default()
            .to_owned();
        slice.metadata.name = Some(hashed_name(&target_ref.name, &format!("{id}/{from}")));
    }
}

/// Sets [`SOURCE_ID_LABEL`] on `slice`.
fn set_label(slice: &mut EndpointSlice, id: &str) {
    slice
        .metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(SOURCE_ID_LABEL.to_owned(), id.to_owned());
}

/// Keeps one endpoint per address across `parts`: the ready one, then a fresh one before a kept
/// one, then the lowest rank, then the first slice by name. A slice that dedupe leaves empty is
/// dropped (a slice empty at its source stays, as [`desired`] copies it).
fn dedupe(parts: &mut Vec<Part>) {
    type Preference = (bool, bool, usize, String);
    let mut best: BTreeMap<IpAddr, Preference> = BTreeMap::new();
    let address = |e: &Endpoint| e.addresses.first().and_then(|a| a.parse::<IpAddr>().ok());
    for part in parts.iter() {
        let name = part.slice.metadata.name.clone().unwrap_or_default();
        for e in &part.slice.endpoints {
            let Some(a) = address(e) else { continue };
            let preference = (!is_ready(e), part.kept, part.rank, name.clone());
            best.entry(a)
                .and_modify(|b| {
                    if preference < *b {
                        *b = preference.clone();
                    }
                })
                .or_insert(preference);
        }
    }
    parts.retain_mut(|part| {
        let name = part.slice.metadata.name.clone().unwrap_or_default();
        let had = part.slice.endpoints.len();
        let mut seen = BTreeSet::new();
        part.slice.endpoints.retain(|e| match address(e) {
            Some(a) => {
                best.get(&a)
                    .is_some_and(|b| *b == (!is_ready(e), part.kept, part.rank, name.clone()))
                    && seen.insert(a)
            }
            None => true,
        });
        had == 0 || !part.slice.endpoints.is_empty()
    });
}

#[cfg(test)]
mod tests;
