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

/// What an active `pair` probes its endpoints with: a config pair's `probe` key, an annotated
/// pair's `endpoint-copier/probe` annotation (validated by [`annotated_pair`]: a bad value, or
/// one asking for more than an annotation may, refuses the pair), or, when neither says,
/// [`crate::probe::spec::default_for`] its source. The engine probes an annotated pair's
/// targets without credentials unless the host's config probes the same targets.
pub fn probe_of(
    pair: &Pair,
    config: &[crate::config::PairConfig],
    services: &BTreeMap<ServiceRef, Service>,
) -> Option<crate::probe::Spec> {
    match pair.origin {
        Origin::Config => config
            .iter()
            .find(|p| p.target == pair.target && p.sources == pair.sources)
            .and_then(|p| p.probe.clone()),
        Origin::Annotation => {
            let service = services.get(&pair.target);
            let annotated = service
                .and_then(|s| s.metadata.annotations.as_ref())
                .and_then(|a| a.get(ANNOTATION_PROBE));
            match (service, annotated) {
                (Some(service), Some(text)) => annotated_probe(service, text).ok().flatten(),
                _ => crate::probe::spec::default_for_sources(&pair.sources),
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ServiceSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn r(s: &str) -> ServiceRef {
        s.parse().unwrap()
    }

    /// One local Service source `s`.
    fn one(s: &str) -> Vec<Source> {
        vec![Source::Service(r(s))]
    }

    /// [`super::resolve`] for pairs of one local source each, as most tests write them.
    fn resolve(
        config_pairs: &[(ServiceRef, ServiceRef)],
        annotations_enabled: bool,
        allowed_sources: &[ServiceRef],
        services: &BTreeMap<ServiceRef, Service>,
    ) -> Resolution {
        let config: Vec<(Vec<Source>, ServiceRef)> = config_pairs
            .iter()
            .map(|(s, t)| (vec![Source::Service(s.clone())], t.clone()))
            .collect();
        super::resolve(&config, annotations_enabled, allowed_sources, services)
    }

    fn service(reference: &str, annotations: &[(&str, &str)]) -> Service {
        let reference = r(reference);
        Service {
            metadata: ObjectMeta {
                name: Some(reference.name.clone()),
                namespace: Some(reference.namespace.clone()),
                annotations: (!annotations.is_empty()).then(|| {
                    annotations
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect()
                }),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec::default()),
            ..Service::default()
        }
    }

    fn with_selector(mut s: Service) -> Service {
        s.spec.as_mut().unwrap().selector = Some(BTreeMap::from([("app".into(), "web".into())]));
        s
    }

    fn annotated(reference: &str, source_name: &str, source_ns: Option<&str>) -> Service {
        let mut a = vec![
            (ANNOTATION_ENABLED, "true"),
            (ANNOTATION_SOURCE_NAME, source_name),
        ];
        if let Some(ns) = source_ns {
            a.push((ANNOTATION_SOURCE_NAMESPACE, ns));
        }
        service(reference, &a)
    }

    fn known(services: Vec<Service>) -> BTreeMap<ServiceRef, Service> {
        services
            .into_iter()
            .map(|s| {
                let key = ServiceRef::new(
                    s.metadata.namespace.as_deref().unwrap(),
                    s.metadata.name.as_deref().unwrap(),
                )
                .unwrap();
                (key, s)
            })
            .collect()
    }

    fn default_pair() -> (ServiceRef, ServiceRef) {
        (
            r(crate::names::DEFAULT_SOURCE),
            r(crate::names::DEFAULT_TARGET),
        )
    }

    fn allowed() -> Vec<ServiceRef> {
        vec![r(crate::names::DEFAULT_SOURCE)]
    }

    fn pair(source: &str, target: &str, origin: Origin) -> Pair {
        Pair {
            sources: one(source),
            target: r(target),
            origin,
        }
    }

    #[test]
    fn default_config_pair_is_active() {
        let services = known(vec![
            service("default/kubernetes", &[]),
            service("default/kubernetes-vip", &[]),
        ]);
        let res = resolve(&[default_pair()], true, &allowed(), &services);
        assert_eq!(
            res.pairs,
            [pair(
                "default/kubernetes",
                "default/kubernetes-vip",
                Origin::Config
            )]
        );
        assert!(res.refusals.is_empty());
    }

    #[test]
    fn config_pair_is_active_before_its_target_service_exists() {
        let res = resolve(&[default_pair()], true, &allowed(), &BTreeMap::new());
        assert_eq!(res.pairs.len(), 1);
        assert!(res.refusals.is_empty());
    }

    #[test]
    fn target_with_a_selector_is_refused() {
        let services = known(vec![with_selector(service("default/kubernetes-vip", &[]))]);
        let res = resolve(&[default_pair()], true, &allowed(), &services);
        assert!(res.pairs.is_empty());
        assert_eq!(res.refusals[0].reason, Reason::TargetHasSelector);
        assert_eq!(res.refusals[0].target, r("default/kubernetes-vip"));
        assert_eq!(res.refusals[0].source, Some(one("default/kubernetes")));
    }

    #[test]
    fn target_with_an_empty_selector_is_accepted() {
        let mut s = service("default/kubernetes-vip", &[]);
        s.spec.as_mut().unwrap().selector = Some(BTreeMap::new());
        let res = resolve(&[default_pair()], true, &allowed(), &known(vec![s]));
        assert_eq!(res.pairs.len(), 1);
    }

    #[test]
    fn config_pair_whose_source_is_its_target_is_refused() {
        let p = (r("default/a"), r("default/a"));
        let res = resolve(&[p], true, &allowed(), &BTreeMap::new());
        assert!(res.pairs.is_empty());
        assert_eq!(res.refusals[0].reason, Reason::SourceIsTarget);
    }

    #[test]
    fn annotated_service_naming_itself_as_source_is_refused() {
        let services = known(vec![annotated("apps/web-vip", "web-vip", None)]);
        let res = resolve(&[], true, &allowed(), &services);
        assert!(res.pairs.is_empty());
        assert_eq!(res.refusals[0].reason, Reason::SourceIsTarget);
    }

    #[test]
    fn two_pairs_reading_each_other_are_both_refused_as_a_cycle() {
        let pairs = [
            (r("default/a"), r("default/b")),
            (r("default/b"), r("default/a")),
        ];
        let res = resolve(&pairs, true, &allowed(), &BTreeMap::new());
        assert!(res.pairs.is_empty());
        assert_eq!(res.refusals.len(), 2);
        assert_eq!(
            res.refusals[0].reason,
            Reason::Cycle {
                through: vec![r("default/a"), r("default/b")]
            }
        );
        assert_eq!(
            res.refusals[1].reason,
            Reason::Cycle {
                through: vec![r("default/b"), r("default/a")]
            }
        );
    }

    #[test]
    fn a_longer_cycle_refuses_its_pairs_but_not_a_pair_that_only_reads_from_it() {
        let pairs = [
            (r("default/b"), r("default/a")),
            (r("default/c"), r("default/b")),
            (r("default/a"), r("default/c")),
            // d reads a, which is on the cycle, but d itself is not.
            (r("default/a"), r("default/d")),
        ];
        let res = resolve(&pairs, true, &allowed(), &BTreeMap::new());
        assert_eq!(res.pairs, [pair("default/a", "default/d", Origin::Config)]);
        assert_eq!(res.refusals.len(), 3);
        assert!(
            res.refusals
                .iter()
                .all(|f| matches!(&f.reason, Reason::Cycle { through } if through.len() == 3))
        );
    }

    #[test]
    fn an_annotation_on_a_configured_source_is_refused_and_the_configured_pair_stays() {
        // Annotating default/kubernetes to read the VIP would form a cycle with the default pair
        // (stopping the VIP's own pair) or feed other endpoints into it.
        let services = known(vec![
            annotated("default/kubernetes", "kubernetes-vip", None),
            service("default/kubernetes-vip", &[]),
        ]);
        let config = [(r("default/kubernetes"), r("default/kubernetes-vip"))];
        let res = resolve(&config, true, &[r("default/kubernetes")], &services);
        assert_eq!(res.pairs.len(), 1, "{res:?}");
        assert_eq!(res.pairs[0].target, r("default/kubernetes-vip"));
        assert_eq!(res.refusals.len(), 1);
        assert_eq!(res.refusals[0].target, r("default/kubernetes"));
        assert_eq!(res.refusals[0].reason, Reason::TargetIsConfiguredSource);
    }

    #[test]
    fn chains_are_allowed() {
        let pairs = [
            (r("default/a"), r("default/b")),
            (r("default/b"), r("default/c")),
        ];
        let res = resolve(&pairs, true, &allowed(), &BTreeMap::new());
        assert_eq!(res.pairs.len(), 2);
        assert!(res.refusals.is_empty());
    }

    #[test]
    fn annotated_pair_in_the_same_namespace_is_allowed() {
        let services = known(vec![annotated("apps/web-vip", "web", None)]);
        let res = resolve(&[], true, &[], &services);
        assert_eq!(
            res.pairs,
            [pair("apps/web", "apps/web-vip", Origin::Annotation)]
        );
    }

    #[test]
    fn annotated_cross_namespace_source_must_be_allowed() {
        let services = known(vec![
            annotated("apps/vip", "kubernetes", Some("default")),
            annotated("apps/other", "secret-svc", Some("kube-system")),
        ]);
        let res = resolve(&[], true, &allowed(), &services);
        assert_eq!(
            res.pairs,
            [pair("default/kubernetes", "apps/vip", Origin::Annotation)]
        );
        assert_eq!(
            res.refusals,
            [Refusal {
                target: r("apps/other"),
                source: Some(one("kube-system/secret-svc")),
                reason: Reason::SourceNotAllowed {
                    source: r("kube-system/secret-svc")
                },
            }]
        );
    }

    #[test]
    fn config_pairs_may_read_any_namespace() {
        let p = (r("kube-system/anything"), r("apps/vip"));
        let res = resolve(&[p], true, &[], &BTreeMap::new());
        assert_eq!(res.pairs.len(), 1);
    }

    #[test]
    fn annotation_on_a_configured_target_is_refused_and_the_config_pair_stays() {
        let services = known(vec![annotated("default/kubernetes-vip", "other", None)]);
        let res = resolve(&[default_pair()], true, &allowed(), &services);
        assert_eq!(
            res.pairs,
            [pair(
                "default/kubernetes",
                "default/kubernetes-vip",
                Origin::Config
            )]
        );
        assert_eq!(res.refusals[0].reason, Reason::TargetClaimedByConfig);
        assert_eq!(res.refusals[0].source, Some(one("default/other")));
    }

    #[test]
    fn one_target_with_two_config_sources_is_refused_for_both() {
        let pairs = [
            (r("default/a"), r("default/vip")),
            (r("default/b"), r("default/vip")),
        ];
        let res = resolve(&pairs, true, &allowed(), &BTreeMap::new());
        assert!(res.pairs.is_empty());
        assert_eq!(res.refusals.len(), 2);
        assert!(
            res.refusals
                .iter()
                .all(|f| f.reason == Reason::DuplicateTarget)
        );
    }

    #[test]
    fn an_identical_config_pair_listed_twice_counts_once() {
        let res = resolve(
            &[default_pair(), default_pair()],
            true,
            &allowed(),
            &BTreeMap::new(),
        );
        assert_eq!(res.pairs.len(), 1);
        assert!(res.refusals.is_empty());
    }

    #[test]
    fn annotations_are_ignored_when_disabled() {
        let services = known(vec![
            annotated("apps/web-vip", "web", None),
            service("apps/bad", &[(ANNOTATION_ENABLED, "true")]),
        ]);
        let res = resolve(&[], false, &allowed(), &services);
        assert!(res.pairs.is_empty() && res.refusals.is_empty());
    }

    #[test]
    fn output_does_not_depend_on_config_order() {
        let mut pairs = vec![
            (r("default/a"), r("default/z")),
            (r("default/b"), r("default/y")),
            (r("default/y"), r("default/b")),
            (r("default/c"), r("default/x")),
            (r("default/d"), r("default/x")),
        ];
        let first = resolve(&pairs, true, &allowed(), &BTreeMap::new());
        pairs.reverse();
        assert_eq!(first, resolve(&pairs, true, &allowed(), &BTreeMap::new()));
        let targets: Vec<_> = first.pairs.iter().map(|p| p.target.to_string()).collect();
        assert_eq!(targets, ["default/z"]);
    }

    // ---- annotated_pair ----

    #[test]
    fn service_without_the_enabled_annotation_is_not_annotated() {
        assert_eq!(annotated_pair(&service("apps/web", &[])), None);
        assert_eq!(
            annotated_pair(&service("apps/web", &[(ANNOTATION_SOURCE_NAME, "x")])),
            None
        );
    }

    #[test]
    fn enabled_false_turns_the_pair_off() {
        let s = service(
            "apps/web",
            &[(ANNOTATION_ENABLED, "false"), (ANNOTATION_SOURCE_NAME, "x")],
        );
        assert_eq!(annotated_pair(&s), None);
    }

    #[test]
    fn an_enabled_value_that_is_not_true_or_false_is_refused_not_read_as_off() {
        for value in ["True", "yes", "1", ""] {
            let s = service(
                "apps/web",
                &[(ANNOTATION_ENABLED, value), (ANNOTATION_SOURCE_NAME, "x")],
            );
            match annotated_pair(&s) {
                Some(Err(Reason::InvalidAnnotation { key, value: v, .. })) => {
                    assert_eq!((key.as_str(), v.as_str()), (ANNOTATION_ENABLED, value));
                }
                other => panic!("{value:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn source_namespace_defaults_to_the_targets() {
        let got = annotated_pair(&annotated("apps/web-vip", "web", None));
        assert_eq!(got, Some(Ok((r("apps/web"), r("apps/web-vip")))));
        let empty = annotated_pair(&annotated("apps/web-vip", "web", Some("")));
        assert_eq!(empty, Some(Ok((r("apps/web"), r("apps/web-vip")))));
    }

    #[test]
    fn source_namespace_annotation_is_used_when_set() {
        let got = annotated_pair(&annotated("apps/vip", "kubernetes", Some("default")));
        assert_eq!(got, Some(Ok((r("default/kubernetes"), r("apps/vip")))));
    }

    #[test]
    fn missing_source_name_is_an_invalid_annotation_naming_the_key() {
        let s = service("apps/web", &[(ANNOTATION_ENABLED, "true")]);
        let Some(Err(reason)) = annotated_pair(&s) else {
            panic!("expected a refusal")
        };
        assert!(
            matches!(&reason, Reason::InvalidAnnotation { key, .. } if key == ANNOTATION_SOURCE_NAME)
        );
        assert!(reason.to_string().contains("required"));
    }

    #[test]
    fn invalid_source_names_are_refused_with_the_value_and_why() {
        for bad in ["Web", "1web", "web-", "web.svc", "", &"a".repeat(64)] {
            let Some(Err(reason)) = annotated_pair(&annotated("apps/vip", bad, None)) else {
                panic!("'{bad}' should be refused")
            };
            let Reason::InvalidAnnotation { key, value, why } = &reason else {
                panic!("{reason:?}")
            };
            assert_eq!(key, ANNOTATION_SOURCE_NAME);
            assert_eq!(value, bad);
            assert!(why.contains("DNS-1035"));
        }
    }

    #[test]
    fn invalid_source_namespaces_are_refused_with_the_value_and_why() {
        for bad in ["Default", "-ns", "ns_1", "a/b"] {
            let Some(Err(Reason::InvalidAnnotation { key, value, why })) =
                annotated_pair(&annotated("apps/vip", "web", Some(bad)))
            else {
                panic!("'{bad}' should be refused")
            };
            assert_eq!(key, ANNOTATION_SOURCE_NAMESPACE);
            assert_eq!(value, bad);
            assert!(why.contains("DNS-1123"));
        }
    }

    #[test]
    fn numeric_namespaces_are_valid_dns1123_labels() {
        let got = annotated_pair(&annotated("apps/vip", "web", Some("1ns")));
        assert_eq!(got, Some(Ok((r("1ns/web"), r("apps/vip")))));
    }

    #[test]
    fn invalid_annotation_is_reported_as_a_refusal_on_its_service() {
        let services = known(vec![annotated("apps/vip", "Web", None)]);
        let res = resolve(&[], true, &allowed(), &services);
        assert!(res.pairs.is_empty());
        assert_eq!(res.refusals[0].target, r("apps/vip"));
        assert_eq!(res.refusals[0].source, None);
        assert_eq!(
            res.refusals[0].to_string(),
            "Service apps/vip refused as a target: annotation endpoint-copier/default-service-name='Web' is not valid: a Service name is a DNS-1035 label (lowercase letters, digits and '-', at most 63, starting with a letter and ending with a letter or digit)"
        );
    }

    #[test]
    fn refusal_sentences_name_the_objects() {
        let f = Refusal {
            target: r("default/b"),
            source: Some(one("default/a")),
            reason: Reason::Cycle {
                through: vec![r("default/b"), r("default/a")],
            },
        };
        assert_eq!(
            f.to_string(),
            "pair default/a -> default/b refused: the pair is part of a cycle: default/b reads default/a reads default/b"
        );
        let g = Refusal {
            target: r("apps/vip"),
            source: Some(one("kube-system/x")),
            reason: Reason::SourceNotAllowed {
                source: r("kube-system/x"),
            },
        };
        assert!(
            g.to_string()
                .contains("source kube-system/x is in another namespace")
        );
    }

    fn arb_ref() -> impl proptest::strategy::Strategy<Value = ServiceRef> {
        use proptest::prelude::*;
        (prop_oneof![Just("default"), Just("apps")], 0u8..6)
            .prop_map(|(ns, i)| ServiceRef::new(ns, &format!("svc{i}")).unwrap())
    }

    proptest::proptest! {
        #[test]
        fn resolution_is_order_independent_and_every_target_has_at_most_one_acyclic_pair(
            config in proptest::collection::vec((arb_ref(), arb_ref()), 0..8),
            seed in proptest::prelude::any::<u64>(),
        ) {
            let res = resolve(&config, true, &allowed(), &BTreeMap::new());
            let mut shuffled = config.clone();
            fastrand::Rng::with_seed(seed).shuffle(&mut shuffled);
            proptest::prop_assert_eq!(&res, &resolve(&shuffled, true, &allowed(), &BTreeMap::new()));
            let targets: BTreeSet<&ServiceRef> = res.pairs.iter().map(|p| &p.target).collect();
            proptest::prop_assert_eq!(targets.len(), res.pairs.len());
            let reads: BTreeMap<&ServiceRef, Vec<&ServiceRef>> =
                res.pairs.iter().map(|p| (&p.target, p.local_sources().collect())).collect();
            for p in &res.pairs {
                proptest::prop_assert!(p.local_sources().all(|s| *s != p.target));
                proptest::prop_assert!(cycle_through(&p.target, &reads).is_none());
            }
            // Every config pair is accounted for: active or refused.
            for (source, target) in &config {
                let active = res.pairs.iter().any(|p| p.sources == [Source::Service(source.clone())] && &p.target == target);
                let refused = res.refusals.iter().any(|f| &f.target == target);
                proptest::prop_assert!(active || refused);
            }
        }
    }

    #[test]
    fn a_pair_reading_several_services_is_refused_when_any_of_them_closes_a_cycle() {
        let config = [
            (
                vec![Source::Service(r("app/a")), Source::Service(r("app/b"))],
                r("app/t"),
            ),
            (one("app/t"), r("app/b")),
            (one("app/x"), r("app/y")),
        ];
        let res = super::resolve(&config, true, &allowed(), &BTreeMap::new());
        assert_eq!(res.pairs.len(), 1, "{res:?}");
        assert_eq!(res.pairs[0].target, r("app/y"));
        let through: Vec<_> = res.refusals.iter().map(|f| f.reason.to_string()).collect();
        assert!(through.iter().all(|t| t.contains("cycle")), "{through:?}");
    }

    #[test]
    fn remote_and_static_sources_never_close_a_cycle() {
        let remote = Source::Remote(crate::source::RemoteSource {
            kubeconfig: "/etc/endpoint-copier/remote.yaml".into(),
            service: r("app/t"),
        });
        let fixed = Source::Static(crate::source::StaticSource::new(["203.0.113.1"
            .parse()
            .unwrap()]));
        let config = [(vec![remote, fixed], r("app/t"))];
        let res = super::resolve(&config, true, &allowed(), &BTreeMap::new());
        assert_eq!(res.pairs.len(), 1, "{res:?}");
    }

    #[test]
    fn a_static_source_with_a_named_target_port_is_refused_with_the_port_named() {
        use k8s_openapi::api::core::v1::ServicePort;
        let mut target = service("app/db", &[]);
        target.spec.as_mut().unwrap().ports = Some(vec![ServicePort {
            name: Some("pg".into()),
            port: 5432,
            target_port: Some(IntOrString::String("postgres".into())),
            ..ServicePort::default()
        }]);
        let fixed = Source::Static(crate::source::StaticSource::new(["203.0.113.1"
            .parse()
            .unwrap()]));
        let config = [(vec![fixed], r("app/db"))];
        let res = super::resolve(&config, true, &allowed(), &known(vec![target]));
        assert!(res.pairs.is_empty());
        let text = res.refusals[0].to_string();
        assert!(text.contains("targetPort 'postgres'"), "{text}");
        assert!(
            text.contains("pair static 203.0.113.1 -> app/db refused"),
            "{text}"
        );
    }

    #[test]
    fn probes_come_from_the_config_the_annotation_or_the_apiserver_default() {
        let mut cfg = crate::config::PairConfig::new(r("app/db"), r("app/db-vip"));
        cfg.probe = crate::probe::spec::from_annotation("{ tcp = 5432 }").unwrap();
        let services = known(vec![
            service(
                "apps/vip",
                &[
                    (ANNOTATION_ENABLED, "true"),
                    (ANNOTATION_SOURCE_NAME, "web"),
                    (ANNOTATION_PROBE, "{ http = \"/healthz\" }"),
                ],
            ),
            annotated("apps/kube-vip", "kubernetes", Some("default")),
        ]);
        let tcp = probe_of(
            &pair("app/db", "app/db-vip", Origin::Config),
            &[cfg],
            &services,
        );
        assert_eq!(crate::probe::spec::to_toml(tcp.as_ref()), "{ tcp = 5432 }");
        let http = probe_of(
            &pair("apps/web", "apps/vip", Origin::Annotation),
            &[],
            &services,
        );
        assert_eq!(
            crate::probe::spec::to_toml(http.as_ref()),
            "{ http = \"/healthz\" }"
        );
        let readyz = probe_of(
            &pair("default/kubernetes", "apps/kube-vip", Origin::Annotation),
            &[],
            &services,
        );
        assert_eq!(readyz, Some(crate::probe::Spec::readyz()));
    }

    #[test]
    fn a_bad_probe_annotation_refuses_the_pair_naming_the_annotation() {
        let svc = service(
            "apps/vip",
            &[
                (ANNOTATION_ENABLED, "true"),
                (ANNOTATION_SOURCE_NAME, "web"),
                (ANNOTATION_PROBE, "tcp:5432"),
            ],
        );
        let reason = annotated_pair(&svc).unwrap().unwrap_err().to_string();
        assert!(
            reason.contains("endpoint-copier/probe='tcp:5432'"),
            "{reason}"
        );
        assert!(reason.contains("is not a TOML value"), "{reason}");
    }

    #[test]
    fn an_annotated_pair_probing_an_api_path_is_refused_naming_the_service_and_the_value() {
        use k8s_openapi::api::core::v1::ServicePort;
        let mut svc = annotated("apps/vip", "kubernetes", Some("default"));
        svc.metadata.annotations.as_mut().unwrap().insert(
            ANNOTATION_PROBE.into(),
            "{ https = \"/api/v1/pods\" }".into(),
        );
        let res = super::resolve(&[], true, &allowed(), &known(vec![svc.clone()]));
        assert!(res.pairs.is_empty(), "{res:?}");
        let text = res.refusals[0].to_string();
        assert!(
            text.starts_with("Service apps/vip refused as a target"),
            "{text}"
        );
        assert!(
            text.contains("endpoint-copier/probe='{ https = \"/api/v1/pods\" }'"),
            "{text}"
        );
        assert!(text.contains("is not a health endpoint"), "{text}");
        // The same Service asking for a health path on the port it serves is a pair, and its
        // probe is the annotation's; a port it does not serve (a kubelet's) is refused.
        svc.spec.as_mut().unwrap().ports = Some(vec![ServicePort {
            port: 443,
            target_port: Some(IntOrString::Int(6443)),
            ..ServicePort::default()
        }]);
        let set = |svc: &mut Service, probe: &str| {
            svc.metadata
                .annotations
                .as_mut()
                .unwrap()
                .insert(ANNOTATION_PROBE.into(), probe.into());
        };
        set(&mut svc, "{ https = \"/livez\", port = 6443 }");
        let services = known(vec![svc.clone()]);
        let res = super::resolve(&[], true, &allowed(), &services);
        assert_eq!(res.pairs.len(), 1, "{res:?}");
        let probe = probe_of(&res.pairs[0], &[], &services);
        assert_eq!(
            crate::probe::spec::to_toml(probe.as_ref()),
            "{ https = \"/livez\", port = 6443 }"
        );
        set(&mut svc, "{ https = \"/healthz\", port = 10250 }");
        let services = known(vec![svc]);
        let res = super::resolve(&[], true, &allowed(), &services);
        let text = res.refusals[0].to_string();
        assert!(
            text.contains(
                "port 10250 is not a port the target Service sends traffic to (those are: 6443)"
            ),
            "{text}"
        );
    }
}
