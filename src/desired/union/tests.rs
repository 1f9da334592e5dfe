use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
use proptest::prelude::*;

use super::*;
use crate::names::{SERVICE_NAME_LABEL, SOURCE_LABEL};
use crate::source::RemoteSource;

fn owner() -> Owner {
    Owner {
        group: "kube-system.endpoint-copier".into(),
        adopts_unlabelled: true,
    }
}

fn r(s: &str) -> ServiceRef {
    s.parse().unwrap()
}

fn target_ref() -> ServiceRef {
    r("app/db")
}

/// `app/db`, dual-stack, port `pg` 5432 → targetPort 5432.
fn target(families: &[&str]) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some("db".into()),
            namespace: Some("app".into()),
            uid: Some("u-db".into()),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            ip_families: Some(families.iter().map(|f| (*f).to_owned()).collect()),
            ports: Some(vec![ServicePort {
                name: Some("pg".into()),
                port: 5432,
                target_port: Some(IntOrString::Int(5432)),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn ep(addr: &str, ready: bool) -> Endpoint {
    Endpoint {
        addresses: vec![addr.to_owned()],
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            ..EndpointConditions::default()
        }),
        ..Endpoint::default()
    }
}

/// A slice of Service `service` (`ns/name`) named `name`.
fn slice(service: &str, name: &str, family: &str, endpoints: Vec<Endpoint>) -> EndpointSlice {
    let s = r(service);
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(s.namespace.clone()),
            labels: Some(BTreeMap::from([(SERVICE_NAME_LABEL.into(), s.name)])),
            ..ObjectMeta::default()
        },
        address_type: family.into(),
        endpoints,
        ports: Some(vec![EndpointPort {
            name: Some("pg".into()),
            port: Some(5432),
            protocol: Some("TCP".into()),
            app_protocol: None,
        }]),
    }
}

fn local(s: &str) -> Source {
    Source::Service(r(s))
}

fn remote(s: &str) -> Source {
    Source::Remote(RemoteSource {
        kubeconfig: "/etc/endpoint-copier/remote.yaml".into(),
        service: r(s),
    })
}

fn fixed(addrs: &[&str]) -> Source {
    Source::Static(StaticSource::new(addrs.iter().map(|a| a.parse().unwrap())))
}

/// The three kinds of the example, each with its slices.
fn three_kinds() -> Vec<(Source, Vec<EndpointSlice>)> {
    let t = target(&[IPV4, IPV6]);
    let statics = fixed(&["203.0.113.10", "2001:db8::10"]);
    let Source::Static(s) = &statics else {
        unreachable!()
    };
    let static_part = static_slices(s, &t);
    vec![
        (
            local("app/db-primary"),
            vec![slice(
                "app/db-primary",
                "db-primary-x7k2p",
                IPV4,
                vec![ep("198.51.100.1", true)],
            )],
        ),
        (
            remote("app/db"),
            vec![slice(
                "app/db",
                "db-9qz4m",
                IPV4,
                vec![ep("198.51.100.2", true), ep("198.51.100.1", false)],
            )],
        ),
        (statics, static_part),
    ]
}

/// `parts` as union inputs; a source `held` picks has nothing to give.
fn inputs(
    parts: &[(Source, Vec<EndpointSlice>)],
    held: impl Fn(&Source) -> bool,
) -> Vec<Input<'_>> {
    parts
        .iter()
        .map(|(source, slices)| Input {
            source,
            slices: if held(source) {
                Err(Hold::NoSourceSlices)
            } else {
                Ok(slices)
            },
        })
        .collect()
}

fn run(parts: &[(Source, Vec<EndpointSlice>)], actual: &[EndpointSlice]) -> Result<Union, Hold> {
    let inputs = inputs(parts, |_| false);
    union(
        &target_ref(),
        &target(&[IPV4, IPV6]),
        &inputs,
        actual,
        &owner(),
    )
}

fn addresses(slices: &[EndpointSlice]) -> Vec<(String, String, Option<bool>)> {
    let mut out: Vec<_> = slices
        .iter()
        .flat_map(|s| {
            s.endpoints.iter().map(|e| {
                (
                    s.metadata.name.clone().unwrap_or_default(),
                    e.addresses[0].clone(),
                    e.conditions.as_ref().and_then(|c| c.ready),
                )
            })
        })
        .collect();
    out.sort();
    out
}

fn names(slices: &[EndpointSlice]) -> BTreeMap<String, String> {
    slices
        .iter()
        .map(|s| {
            (
                s.metadata.name.clone().unwrap_or_default(),
                label(&s.metadata, SOURCE_ID_LABEL)
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect()
}

#[test]
fn the_union_of_three_kinds_splits_families_and_writes_each_address_once() {
    let got = run(&three_kinds(), &[]).unwrap();
    assert!(got.held.is_empty());
    let listed = addresses(&got.slices);
    let ips: Vec<&str> = listed.iter().map(|(_, a, _)| a.as_str()).collect();
    assert_eq!(
        ips.iter().copied().collect::<BTreeSet<_>>().len(),
        ips.len(),
        "every address once: {listed:?}"
    );
    assert_eq!(ips.len(), 4);
    // 198.51.100.1 is ready in the local source and not ready in the remote one: the ready copy wins.
    let one = listed.iter().find(|(_, a, _)| a == "198.51.100.1").unwrap();
    assert_eq!(one.2, Some(true));
    assert!(one.0.starts_with("db-"), "{one:?}");
    // The static source gives one slice per family, both named for the target.
    let v6: Vec<&EndpointSlice> = got
        .slices
        .iter()
        .filter(|s| s.address_type == IPV6)
        .collect();
    assert_eq!(v6.len(), 1);
    assert_eq!(v6[0].endpoints[0].addresses, ["2001:db8::10"]);
    assert_eq!(label(&v6[0].metadata, SOURCE_ID_LABEL), Some("static"));
    assert_eq!(label(&v6[0].metadata, SOURCE_LABEL), Some("static-ipv6"));
    // Ports come from the target Service.
    for s in &got.slices {
        let p = s.ports.as_ref().unwrap();
        assert_eq!((p[0].name.as_deref(), p[0].port), (Some("pg"), Some(5432)));
    }
}

#[test]
fn a_local_service_keeps_its_names_and_others_are_named_by_their_source() {
    let got = run(&three_kinds(), &[]).unwrap();
    let n = names(&got.slices);
    assert_eq!(n["db-x7k2p"], source_id(&local("app/db-primary")));
    let remote_id = source_id(&remote("app/db"));
    assert!(remote_id.starts_with("remote-"));
    assert_eq!(n.values().filter(|v| **v == remote_id).count(), 1);
    assert_eq!(n.values().filter(|v| *v == "static").count(), 2);
    assert!(n.keys().all(|k| k.starts_with("db")), "{n:?}");
}

#[test]
fn a_remote_kubeconfig_spelled_two_ways_names_the_same_slices() {
    let spelled = |path: &str| {
        Source::Remote(RemoteSource {
            kubeconfig: path.into(),
            service: r("app/db"),
        })
    };
    let plain = source_id(&spelled("/etc/endpoint-copier/remote.yaml"));
    for other in [
        "/etc//endpoint-copier/remote.yaml",
        "/etc/./endpoint-copier/remote.yaml",
        "//etc/endpoint-copier//remote.yaml/",
    ] {
        assert_eq!(source_id(&spelled(other)), plain, "{other}");
    }
    // Unchanged for a path spelled plainly: an upgrade renames nothing.
    assert_eq!(
        plain,
        format!(
            "remote-{:08x}",
            crate::desired::fnv1a(b"/etc/endpoint-copier/remote.yaml|app/db")
        )
    );
    assert_ne!(source_id(&spelled("/etc/other.yaml")), plain);
}

#[test]
fn one_local_service_is_written_exactly_as_by_desired() {
    let parts = vec![(
        local("app/db-primary"),
        vec![slice(
            "app/db-primary",
            "db-primary-x7k2p",
            IPV4,
            vec![ep("198.51.100.1", true)],
        )],
    )];
    let got = run(&parts, &[]).unwrap();
    let plain = desired(
        &r("app/db-primary"),
        &target_ref(),
        &target(&[IPV4, IPV6]),
        &parts[0].1,
        &owner(),
    )
    .unwrap();
    assert_eq!(got.slices, plain);
    assert!(label(&got.slices[0].metadata, SOURCE_ID_LABEL).is_none());
}

#[test]
fn a_source_with_nothing_to_give_keeps_its_slices_as_they_are() {
    let parts = three_kinds();
    let before = run(&parts, &[]).unwrap().slices;
    // The remote is unreachable and was never read by this copy: its slice stays in the target.
    let inputs = inputs(&parts, |s| matches!(s, Source::Remote(_)));
    let got = union(
        &target_ref(),
        &target(&[IPV4, IPV6]),
        &inputs,
        &before,
        &owner(),
    )
    .unwrap();
    assert_eq!(got.held, [(remote("app/db"), Hold::NoSourceSlices)]);
    assert_eq!(got.slices, before);
    assert!(super::super::plan(&target_ref(), &got.slices, &before, &owner()).is_empty());
}

#[test]
fn only_when_every_source_has_nothing_is_the_pair_held() {
    let parts = three_kinds();
    let inputs = inputs(&parts, |_| true);
    let got = union(
        &target_ref(),
        &target(&[IPV4, IPV6]),
        &inputs,
        &[],
        &owner(),
    );
    assert_eq!(got, Err(Hold::NoSourceSlices));
}

#[test]
fn a_target_that_cannot_be_written_holds_the_pair() {
    let parts = three_kinds();
    let inputs = inputs(&parts, |_| false);
    let mut t = target(&[IPV4]);
    t.metadata.uid = None;
    assert_eq!(
        union(&target_ref(), &t, &inputs, &[], &owner()),
        Err(Hold::TargetHasNoUid)
    );
}

#[test]
fn a_single_stack_target_takes_only_its_family_of_static_addresses() {
    let statics = fixed(&["203.0.113.10", "2001:db8::10"]);
    let Source::Static(s) = &statics else {
        unreachable!()
    };
    let t = target(&[IPV6]);
    let slices = static_slices(s, &t);
    let got = union(
        &target_ref(),
        &t,
        &[Input {
            source: &statics,
            slices: Ok(&slices),
        }],
        &[],
        &owner(),
    )
    .unwrap();
    assert_eq!(got.slices.len(), 1);
    assert_eq!(got.slices[0].address_type, IPV6);
}

#[test]
fn a_named_target_port_gives_a_static_slice_no_port() {
    let mut t = target(&[IPV4]);
    t.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].target_port =
        Some(IntOrString::String("postgres".into()));
    let s = StaticSource::new(["203.0.113.10".parse().unwrap()]);
    assert_eq!(static_slices(&s, &t)[0].ports, Some(vec![]));
}

proptest! {
    #[test]
    fn the_union_ignores_the_order_of_its_inputs(seed in 0usize..6) {
        let mut parts = three_kinds();
        parts.rotate_left(seed % 3);
        if seed >= 3 {
            parts.reverse();
        }
        prop_assert_eq!(run(&parts, &[]).unwrap(), run(&three_kinds(), &[]).unwrap());
    }

    #[test]
    fn adding_or_removing_a_source_renames_no_other_source_slice(drop in 0usize..3) {
        let all = run(&three_kinds(), &[]).unwrap();
        let mut fewer = three_kinds();
        let gone = fewer.remove(drop).0;
        let got = run(&fewer, &[]).unwrap();
        let gone_id = source_id(&gone);
        let expected: BTreeMap<String, String> = names(&all.slices)
            .into_iter()
            .filter(|(_, id)| *id != gone_id)
            .collect();
        // A lone local Service carries no source id; its names are the same all the same.
        let got_names: BTreeSet<String> = names(&got.slices).into_keys().collect();
        prop_assert_eq!(got_names, expected.into_keys().collect::<BTreeSet<_>>());
    }

    #[test]
    fn every_address_is_written_once_whatever_the_sources_hold(
        a in proptest::collection::vec((0u8..6, any::<bool>()), 0..6),
        b in proptest::collection::vec((0u8..6, any::<bool>()), 0..6),
        c in proptest::collection::btree_set(0u8..6, 1..4),
    ) {
        let first = |v: &[(u8, bool)]| -> Vec<(u8, bool)> {
            let mut seen = BTreeSet::new();
            v.iter().copied().filter(|(n, _)| seen.insert(*n)).collect()
        };
        let (a, b) = (first(&a), first(&b));
        let eps = |v: &[(u8, bool)]| -> Vec<Endpoint> {
            v.iter()
                .map(|(n, ready)| ep(&format!("198.51.100.{n}"), *ready))
                .collect()
        };
        let statics: Vec<String> = c.iter().map(|n| format!("198.51.100.{n}")).collect();
        let statics: Vec<&str> = statics.iter().map(String::as_str).collect();
        let st = fixed(&statics);
        let Source::Static(s) = &st else { unreachable!() };
        let parts = vec![
            (local("app/db-primary"), vec![slice("app/db-primary", "db-primary-a", IPV4, eps(&a))]),
            (remote("app/db"), vec![slice("app/db", "db-b", IPV4, eps(&b))]),
            (st.clone(), static_slices(s, &target(&[IPV4, IPV6]))),
        ];
        let got = run(&parts, &[]).unwrap();
        let listed = addresses(&got.slices);
        let unique: BTreeSet<&str> = listed.iter().map(|(_, a, _)| a.as_str()).collect();
        prop_assert_eq!(unique.len(), listed.len());
        // Every address any source gives is there, ready if any source has it ready.
        let given: BTreeSet<String> = a.iter().chain(&b).map(|(n, _)| format!("198.51.100.{n}"))
            .chain(statics.iter().map(|s| (*s).to_owned())).collect();
        prop_assert_eq!(unique, given.iter().map(String::as_str).collect::<BTreeSet<_>>());
        for (_, addr, ready) in &listed {
            let any_ready = statics.contains(&addr.as_str())
                || a.iter().chain(&b).any(|(n, r)| *r && format!("198.51.100.{n}") == *addr);
            prop_assert_eq!(*ready == Some(true), any_ready, "{}", addr);
        }
    }
}
