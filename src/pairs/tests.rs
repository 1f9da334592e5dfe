//! Unit tests of pair resolution.

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
    let tcp = Rules::new(vec![cfg], true, Vec::new())
        .probe_of(&pair("app/db", "app/db-vip", Origin::Config), &services);
    assert_eq!(crate::probe::spec::to_toml(tcp.as_ref()), "{ tcp = 5432 }");
    let http =
        Rules::default().probe_of(&pair("apps/web", "apps/vip", Origin::Annotation), &services);
    assert_eq!(
        crate::probe::spec::to_toml(http.as_ref()),
        "{ http = \"/healthz\" }"
    );
    let readyz = Rules::default().probe_of(
        &pair("default/kubernetes", "apps/kube-vip", Origin::Annotation),
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
    let probe = Rules::default().probe_of(&res.pairs[0], &services);
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
