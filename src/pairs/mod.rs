//! Which pairs exist and which are refused, decided purely from the config, the annotations of the
//! Services the daemon knows, and `annotations.allowed_sources`.
//!
//! This module knows only `k8s-openapi`, std and [`crate::names`]. It does not log or send Events:
//! `daemon.rs` turns each [`Refusal`] into a warning log and an Event on the target Service (its
//! `Display` is written for both), and `desired.rs` computes the slices of each [`Pair`]. Config
//! syntax (a `[[pair]]` that does not parse) is `config.rs`'s business; here every reference is
//! already a valid [`ServiceRef`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::names::{
    ANNOTATION_ENABLED, ANNOTATION_PROBE, ANNOTATION_SOURCE_NAME, ANNOTATION_SOURCE_NAMESPACE,
    ServiceRef, is_dns1035_label, is_dns1123_label,
};
use crate::source::Source;

/// Where a pair comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Origin {
    /// A `[[pair]]` in the config (the administrator's decision: may read any namespace).
    Config,
    /// endpoint-copier-operator's annotations on the target Service (limited to its own namespace
    /// and `annotations.allowed_sources`).
    Annotation,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Config => "config",
            Self::Annotation => "annotation",
        })
    }
}

/// One active pair: the target's EndpointSlices are the union of its sources'.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pair {
    /// Where the endpoints come from (never empty; an annotated pair has one Service of this
    /// cluster).
    pub sources: Vec<Source>,
    /// The Service (without selector) whose EndpointSlices we own.
    pub target: ServiceRef,
    /// Whether the pair comes from the config or from annotations.
    pub origin: Origin,
}

/// Why a pair is refused. Each `Display` is a sentence naming the object at fault, fit for a log
/// line and an Event note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The target Service has a selector: the built-in EndpointSlice controller owns its slices.
    TargetHasSelector,
    /// The source and the target are the same Service.
    SourceIsTarget,
    /// The pair is part of a cycle (A→B and B→A, or longer): copying would feed on itself.
    Cycle {
        /// The targets on the cycle, starting with this pair's target, each reading the next one
        /// (the last one reads the first).
        through: Vec<ServiceRef>,
    },
    /// An `endpoint-copier/*` annotation is missing or not valid.
    InvalidAnnotation {
        /// The annotation key.
        key: String,
        /// The value found (empty when the annotation is missing).
        value: String,
        /// Why the value is not acceptable.
        why: String,
    },
    /// An annotated pair reads a Service in another namespace that `annotations.allowed_sources`
    /// does not list (otherwise anyone who can annotate a Service could read any namespace).
    SourceNotAllowed {
        /// The source the annotation asked for.
        source: ServiceRef,
    },
    /// The annotated Service is the source of a configured pair: an annotation may not change what
    /// a configured pair copies (annotating `default/kubernetes` would otherwise feed foreign
    /// endpoints into the VIP, or form a cycle that stops the VIP's own pair).
    TargetIsConfiguredSource,
    /// The annotated Service is also a configured target: the config wins, the annotation is ignored.
    TargetClaimedByConfig,
    /// Several config pairs name this target with different sources; none of them is applied.
    DuplicateTarget,
    /// The pair has a static source and the target Service names a targetPort: static addresses
    /// have no port names to resolve it against.
    StaticSourceNamedPort {
        /// The named targetPort.
        port: String,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TargetHasSelector => f.write_str(
                "the target Service has a selector, so the built-in EndpointSlice controller owns its EndpointSlices",
            ),
            Self::SourceIsTarget => f.write_str("the source and the target are the same Service"),
            Self::Cycle { through } => {
                f.write_str("the pair is part of a cycle: ")?;
                for (i, svc) in through.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" reads ")?;
                    }
                    write!(f, "{svc}")?;
                }
                if let Some(first) = through.first() {
                    write!(f, " reads {first}")?;
                }
                Ok(())
            }
            Self::InvalidAnnotation { key, value, why } => {
                write!(f, "annotation {key}='{value}' is not valid: {why}")
            }
            Self::SourceNotAllowed { source } => write!(
                f,
                "source {source} is in another namespace and not listed in annotations.allowed_sources"
            ),
            Self::TargetIsConfiguredSource => f.write_str(
                "the Service is the source of a configured pair; its annotations are ignored so they cannot change what that pair copies",
            ),
            Self::TargetClaimedByConfig => f.write_str(
                "the Service is also a configured target; the config pair wins and the annotations are ignored",
            ),
            Self::DuplicateTarget => {
                f.write_str("several config pairs name this target with different sources")
            }
            Self::StaticSourceNamedPort { port } => write!(
                f,
                "the target Service names targetPort '{port}', which static addresses cannot resolve; give that port a number as targetPort, or read the addresses from a Service that defines '{port}'"
            ),
        }
    }
}

/// A pair (or an annotated Service) that is not applied, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The target Service the refusal is about (the Event goes there).
    pub target: ServiceRef,
    /// The sources, when they could be determined.
    pub source: Option<Vec<Source>>,
    /// Why nothing is written for this pair.
    pub reason: Reason,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(source) => write!(
                f,
                "pair {} -> {} refused: {}",
                crate::source::describe(source),
                self.target,
                self.reason
            ),
            None => write!(
                f,
                "Service {} refused as a target: {}",
                self.target, self.reason
            ),
        }
    }
}

/// The outcome of [`resolve`]: the pairs to run and the refusals to report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolution {
    /// Active pairs, sorted by target (one pair per target).
    pub pairs: Vec<Pair>,
    /// Refused pairs and Services, sorted by target, then source, then reason text.
    pub refusals: Vec<Refusal>,
}

/// Decides the active pairs and the refusals.
///
/// `config_pairs` are `(sources, target)` from the config; `services` is every Service the daemon
/// knows (configured targets and sources, annotated Services), keyed by their reference.
///
/// - Config pairs are active even while their target Service does not exist yet (`desired` then
///   holds). An identical pair listed twice counts once; one target with different sources is
///   refused ([`Reason::DuplicateTarget`]) for every one of them.
/// - Annotated pairs are read only when `annotations_enabled`; an annotated Service that is also a
///   configured target is refused ([`Reason::TargetClaimedByConfig`]), the config pair stays.
/// - Refused: a local source = the target; a target Service that exists and has a non-empty
///   selector; a static source while the target names a targetPort; an annotated source in
///   another namespace not in `allowed_sources` (same namespace is always allowed); every pair
///   on a cycle through Services of this cluster (remote and static sources end every walk).
///   Chains (A→B, B→C) are allowed.
///
/// The output is deterministic: it does not depend on the order of `config_pairs`.
pub fn resolve(
    config_pairs: &[(Vec<Source>, ServiceRef)],
    annotations_enabled: bool,
    allowed_sources: &[ServiceRef],
    services: &BTreeMap<ServiceRef, Service>,
) -> Resolution {
    let mut refusals = Vec::new();
    let mut candidates: Vec<Pair> = Vec::new();

    // Config pairs, grouped by target so duplicates are found whatever their order.
    let mut by_target: BTreeMap<&ServiceRef, BTreeSet<&Vec<Source>>> = BTreeMap::new();
    for (sources, target) in config_pairs {
        by_target.entry(target).or_default().insert(sources);
    }
    for (target, lists) in &by_target {
        if lists.len() > 1 {
            refusals.extend(lists.iter().map(|sources| Refusal {
                target: (*target).clone(),
                source: Some((*sources).clone()),
                reason: Reason::DuplicateTarget,
            }));
        } else if let Some(sources) = lists.first() {
            candidates.push(Pair {
                sources: (*sources).clone(),
                target: (*target).clone(),
                origin: Origin::Config,
            });
        }
    }

    if annotations_enabled {
        for (target, service) in services {
            // The map key, not the Service's metadata, names the target: it is where the Event goes.
            let source = match annotated_pair(service) {
                None => continue,
                Some(Err(reason)) => {
                    refusals.push(Refusal {
                        target: target.clone(),
                        source: None,
                        reason,
                    });
                    continue;
                }
                Some(Ok((source, _))) => source,
            };
            let sources = vec![Source::Service(source.clone())];
            if by_target.contains_key(target) {
                refusals.push(Refusal {
                    target: target.clone(),
                    source: Some(sources),
                    reason: Reason::TargetClaimedByConfig,
                });
                continue;
            }
            if config_pairs
                .iter()
                .any(|(s, _)| s.iter().any(|s| s.local_service() == Some(target)))
            {
                refusals.push(Refusal {
                    target: target.clone(),
                    source: Some(sources),
                    reason: Reason::TargetIsConfiguredSource,
                });
                continue;
            }
            if source.namespace != target.namespace && !allowed_sources.contains(&source) {
                refusals.push(Refusal {
                    target: target.clone(),
                    source: Some(sources),
                    reason: Reason::SourceNotAllowed { source },
                });
                continue;
            }
            candidates.push(Pair {
                sources,
                target: target.clone(),
                origin: Origin::Annotation,
            });
        }
    }

    // Checks that apply to every origin.
    let mut survivors = Vec::with_capacity(candidates.len());
    for pair in candidates {
        let reason = if pair.local_sources().any(|s| *s == pair.target) {
            Some(Reason::SourceIsTarget)
        } else if services.get(&pair.target).is_some_and(has_selector) {
            Some(Reason::TargetHasSelector)
        } else if pair.sources.iter().any(|s| matches!(s, Source::Static(_))) {
            services
                .get(&pair.target)
                .and_then(named_target_port)
                .map(|port| Reason::StaticSourceNamedPort { port })
        } else {
            None
        };
        match reason {
            Some(reason) => refusals.push(Refusal {
                target: pair.target,
                source: Some(pair.sources),
                reason,
            }),
            None => survivors.push(pair),
        }
    }

    // Cycles among the survivors: "target reads source" over the Services of this cluster.
    let reads: BTreeMap<&ServiceRef, Vec<&ServiceRef>> = survivors
        .iter()
        .map(|p| (&p.target, p.local_sources().collect()))
        .collect();
    let mut pairs = Vec::with_capacity(survivors.len());
    for pair in &survivors {
        match cycle_through(&pair.target, &reads) {
            Some(through) => refusals.push(Refusal {
                target: pair.target.clone(),
                source: Some(pair.sources.clone()),
                reason: Reason::Cycle { through },
            }),
            None => pairs.push(pair.clone()),
        }
    }

    pairs.sort();
    refusals.sort_by(|a, b| {
        (&a.target, &a.source, a.reason.to_string()).cmp(&(
            &b.target,
            &b.source,
            b.reason.to_string(),
        ))
    });
    Resolution { pairs, refusals }
}

impl Pair {
    /// The Services of this cluster the pair reads.
    pub fn local_sources(&self) -> impl Iterator<Item = &ServiceRef> {
        self.sources.iter().filter_map(Source::local_service)
    }
}

/// The first named targetPort of `service`, if any.
fn named_target_port(service: &Service) -> Option<String> {
    service
        .spec
        .as_ref()?
        .ports
        .as_ref()?
        .iter()
        .find_map(|p| match &p.target_port {
            Some(IntOrString::String(name)) => Some(name.clone()),
            _ => None,
        })
}

/// The pair endpoint-copier-operator's annotations on `target` ask for, as `(source, target)`.
///
/// `None` when the Service is not annotated (`endpoint-copier/enabled` absent or exactly
/// `"false"`). Any other value than `"true"` (`"True"`, `"yes"`, `""`) is refused: read as "off",
/// a typo would make the pair vanish and its slices be deleted; refused, the pair is held with
/// its slices as they are until someone writes what they mean. Otherwise `endpoint-copier/default-service-name` is required (a DNS-1035 label) and
/// `endpoint-copier/default-service-namespace` defaults to the target's namespace (empty counts as
/// absent: endpoint-copier-operator would have listed every namespace, which we never do); it must be a DNS-1123 label.
///
/// # Errors
/// [`Reason::InvalidAnnotation`] naming the key, the value and why it is refused.
pub fn annotated_pair(target: &Service) -> Option<Result<(ServiceRef, ServiceRef), Reason>> {
    let annotations = target.metadata.annotations.as_ref()?;
    match annotations.get(ANNOTATION_ENABLED).map(String::as_str) {
        None | Some("false") => None,
        Some("true") => Some(parse_annotations(target, annotations)),
        Some(other) => Some(Err(Reason::InvalidAnnotation {
            key: ANNOTATION_ENABLED.to_owned(),
            value: other.to_owned(),
            why: "must be \"true\" or \"false\" (a value we do not understand holds the pair as it is)".to_owned(),
        })),
    }
}

/// The validation half of [`annotated_pair`], for a Service known to be enabled.
fn parse_annotations(
    target: &Service,
    annotations: &BTreeMap<String, String>,
) -> Result<(ServiceRef, ServiceRef), Reason> {
    let invalid = |key: &str, value: &str, why: &str| Reason::InvalidAnnotation {
        key: key.to_owned(),
        value: value.to_owned(),
        why: why.to_owned(),
    };
    let target_ns = target.metadata.namespace.as_deref().unwrap_or_default();
    let target_name = target.metadata.name.as_deref().unwrap_or_default();
    let target_ref = ServiceRef::new(target_ns, target_name).map_err(|e| {
        invalid(
            ANNOTATION_ENABLED,
            "true",
            &format!("the annotated Service itself has no valid namespace/name ({e})"),
        )
    })?;

    let name = match annotations.get(ANNOTATION_SOURCE_NAME) {
        None => {
            return Err(invalid(
                ANNOTATION_SOURCE_NAME,
                "",
                &format!("required when {ANNOTATION_ENABLED} is \"true\""),
            ));
        }
        Some(name) if !is_dns1035_label(name) => {
            return Err(invalid(
                ANNOTATION_SOURCE_NAME,
                name,
                "a Service name is a DNS-1035 label (lowercase letters, digits and '-', at most 63, starting with a letter and ending with a letter or digit)",
            ));
        }
        Some(name) => name.as_str(),
    };
    let namespace = match annotations
        .get(ANNOTATION_SOURCE_NAMESPACE)
        .map(String::as_str)
    {
        None | Some("") => target_ns,
        Some(ns) if !is_dns1123_label(ns) => {
            return Err(invalid(
                ANNOTATION_SOURCE_NAMESPACE,
                ns,
                "a namespace is a DNS-1123 label (lowercase letters, digits and '-', at most 63, starting and ending with a letter or digit)",
            ));
        }
        Some(ns) => ns,
    };
    if let Some(text) = annotations.get(ANNOTATION_PROBE) {
        // Refused, not ignored: a typo would otherwise silently turn the probes off. And refused
        // when it asks for more than its author could do without rights (an API path, a query,
        // another port): the whole pair is held, never applied without its probe.
        annotated_probe(target, text).map_err(|e| invalid(ANNOTATION_PROBE, text, &e))?;
    }
    // Both parts were validated just above, so this cannot fail; map the error anyway rather than
    // unwrap, should the two validations ever drift apart.
    let source = ServiceRef::new(namespace, name)
        .map_err(|e| invalid(ANNOTATION_SOURCE_NAME, name, &e.to_string()))?;
    Ok((source, target_ref))
}

/// The probe the `endpoint-copier/probe` annotation `text` of `target` asks for, if it is one an
/// annotation may ask for ([`crate::probe::spec::check_annotated`] against the ports the
/// target's EndpointSlices carry); `Ok(None)` for `false`.
fn annotated_probe(target: &Service, text: &str) -> Result<Option<crate::probe::Spec>, String> {
    let spec = crate::probe::spec::from_annotation(text).map_err(|e| e.to_string())?;
    if let Some(spec) = &spec {
        crate::probe::spec::check_annotated(spec, &target_ports(target))
            .map_err(|e| e.to_string())?;
    }
    Ok(spec)
}

/// The ports `service` sends traffic to on its endpoints: each numeric `targetPort`, or `port`
/// where `targetPort` is unset (a named one resolves to a source port, which a probe without
/// `port` dials anyway).
fn target_ports(service: &Service) -> BTreeSet<u16> {
    let ports = service.spec.as_ref().and_then(|s| s.ports.as_ref());
    ports
        .into_iter()
        .flatten()
        .filter_map(|p| match &p.target_port {
            Some(IntOrString::Int(n)) => u16::try_from(*n).ok(),
            Some(IntOrString::String(_)) => None,
            None => u16::try_from(p.port).ok(),
        })
        .collect()
}

/// True when the Service has a non-empty `spec.selector`.
fn has_selector(service: &Service) -> bool {
    service
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .is_some_and(|sel| !sel.is_empty())
}

/// The cycle `start` is on, as the list of targets from `start` onwards (each reading the next,
/// the last reading `start`), or `None`. Depth-first over "target reads source", each target
/// visited once, so the walk ends on any graph.
fn cycle_through(
    start: &ServiceRef,
    reads: &BTreeMap<&ServiceRef, Vec<&ServiceRef>>,
) -> Option<Vec<ServiceRef>> {
    fn walk<'a>(
        at: &'a ServiceRef,
        start: &ServiceRef,
        reads: &BTreeMap<&'a ServiceRef, Vec<&'a ServiceRef>>,
        path: &mut Vec<ServiceRef>,
        seen: &mut BTreeSet<&'a ServiceRef>,
    ) -> bool {
        for next in reads.get(at).into_iter().flatten() {
            if *next == start {
                return true;
            }
            if seen.insert(next) {
                path.push((*next).clone());
                if walk(next, start, reads, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.clone()];
    let mut seen = BTreeSet::new();
    walk(start, start, reads, &mut path, &mut seen).then_some(path)
}

mod rules;
#[cfg(test)]
mod tests;

pub use rules::Rules;
