use super::plan::*;
use super::*;
use k8s_openapi::api::core::v1::{ObjectReference, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{EndpointConditions, EndpointHints, ForZone};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use proptest::prelude::*;

const UID: &str = "0d7c3b9e-5c1f-4a8e-9f1e-3c2b1a000001";

/// The default copier group, which every test below plans for unless it says otherwise.
fn owner() -> Owner {
    Owner {
        group: "kube-system.endpoint-copier".into(),
        adopts_unlabelled: true,
    }
}

/// [`super::desired`] for the default group.
fn desired(
    source: &ServiceRef,
    target_ref: &ServiceRef,
    target: &Service,
    source_slices: &[EndpointSlice],
) -> Result<Vec<EndpointSlice>, Hold> {
    super::desired(source, target_ref, target, source_slices, &owner())
}

/// [`super::plan`] for the default group.
fn plan(target_ref: &ServiceRef, desired: &[EndpointSlice], actual: &[EndpointSlice]) -> Plan {
    super::plan(target_ref, desired, actual, &owner())
}

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
fn target_slices_carry_our_four_labels_and_nothing_else() {
    let d = want(&vip4(), &[three_apiservers()]);
    assert_eq!(
        d[0].metadata.labels,
        Some(BTreeMap::from([
            (SERVICE_NAME_LABEL.to_owned(), "kubernetes-vip".to_owned()),
            (MANAGED_BY_LABEL.to_owned(), "endpoint-copier".to_owned()),
            (
                GROUP_LABEL.to_owned(),
                "kube-system.endpoint-copier".to_owned()
            ),
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
    assert_eq!(manager_of(&ours, &owner()), Manager::Us);
    let e = eco("kubernetes-vip", vec![]);
    assert_eq!(manager_of(&e, &owner()), Manager::Operator);
    let f = foreign("kubernetes-vip", IPV4);
    assert!(!manager_of(&f, &owner()).is_ours_to_change());
}

#[test]
fn slices_written_before_groups_are_adopted_in_place_by_the_default_group() {
    let d = want(&vip4(), &[three_apiservers()]);
    let mut legacy = written(&d);
    legacy[0]
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .remove(GROUP_LABEL);
    let p = plan(&target_ref(), &d, &legacy);
    assert!(p.creates.is_empty() && p.deletes.is_empty(), "{p:?}");
    assert_eq!(p.updates.len(), 1);
    assert_eq!(p.updates[0].metadata.name, legacy[0].metadata.name);
    assert_eq!(p.updates[0].metadata.uid, legacy[0].metadata.uid);
    assert_eq!(
        label(&p.updates[0].metadata, GROUP_LABEL),
        Some("kube-system.endpoint-copier")
    );
}

#[test]
fn another_group_never_adopts_or_deletes_unlabelled_or_foreign_group_slices() {
    let other = Owner {
        group: "kube-system.copier-b".into(),
        adopts_unlabelled: false,
    };
    let d = want(&vip4(), &[three_apiservers()]);
    let mut legacy = written(&d);
    legacy[0]
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .remove(GROUP_LABEL);
    // Group b wants nothing on this target: neither the legacy slice nor the default group's goes.
    assert!(super::plan(&target_ref(), &[], &legacy, &other).is_empty());
    assert!(super::plan(&target_ref(), &[], &written(&d), &other).is_empty());
    // Group b wants its own slice under the same name: it is created under another name.
    let mine = super::desired(
        &source(),
        &target_ref(),
        &vip4(),
        &[three_apiservers()],
        &other,
    )
    .unwrap();
    let p = super::plan(&target_ref(), &mine, &written(&d), &other);
    assert!(p.updates.is_empty() && p.deletes.is_empty(), "{p:?}");
    assert_eq!(p.creates.len(), 1);
    assert_ne!(p.creates[0].metadata.name, d[0].metadata.name);
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
    prop::collection::btree_map(1u8..40, prop::option::of(any::<bool>()), 0..5).prop_map(move |m| {
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
    })
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
            (0u8..5, 0usize..(n + 3), arb_family(), arb_endpoints(false)),
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
                        s.address_type = if s.address_type == IPV4 { IPV6 } else { IPV4 }.into();
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
                    3 => labelled(
                        src(&name, family, eps.clone()),
                        &[
                            (SERVICE_NAME_LABEL, "kubernetes-vip"),
                            (MANAGED_BY_LABEL, MANAGED_BY),
                            (GROUP_LABEL, "kube-system.another-copier"),
                            (SOURCE_LABEL, "kubernetes"),
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
    fn plan_never_touches_a_slice_of_another_group_or_manager_or_not_the_targets(
        (_t, d, actual) in arb_case(),
    ) {
        let p = plan(&target_ref(), &d, &actual);
        let untouchable: BTreeSet<String> = actual
            .iter()
            .filter(|s| {
                !manager_of(s, &owner()).is_ours_to_change()
                    || label(&s.metadata, SERVICE_NAME_LABEL) != Some("kubernetes-vip")
            })
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

#[test]
fn probed_endpoints_are_the_ready_served_ones_with_their_slice_port() {
    let mut slice = three_apiservers();
    slice.endpoints.push(ep("198.51.100.13", Some(false)));
    let six = src("kubernetes-v6", IPV6, vec![ep("2001:db8::1", None)]);
    let got = probed_endpoints(&source(), &vip4(), &[slice.clone(), six.clone()]);
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    assert_eq!(
        got,
        [
            (ip("198.51.100.10"), Some(6443)),
            (ip("198.51.100.11"), Some(6443)),
            (ip("198.51.100.12"), Some(6443)),
        ]
    );
    let both = probed_endpoints(&source(), &vip(None), &[slice, six]);
    assert_eq!(both.len(), 4);
    assert_eq!(both[3], (ip("2001:db8::1"), Some(6443)));
}

#[test]
fn a_slice_of_ours_written_by_a_newer_version_is_never_updated_or_deleted() {
    let d = want(&vip4(), &[three_apiservers()]);
    // Our slice as written, plus what a newer version would add.
    let with = |key: &str, value: &str| {
        let mut s = written(&d).remove(0);
        s.metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(key.to_owned(), value.to_owned());
        s
    };
    let newer = with(crate::names::SOURCE_ID_LABEL, "dns-0123abcd");
    assert_eq!(manager_of(&written(&d)[0], &owner()), Manager::Us);
    let mut other = newer.clone();
    other.metadata.name = Some("kubernetes-vip-dns".into());
    other.metadata.uid = Some("uid-dns".into());
    other.endpoints = vec![ep("203.0.113.7", Some(true))];
    // The pair removed (nothing wanted): neither is deleted.
    let p = plan(&target_ref(), &[], &[newer.clone(), other.clone()]);
    assert!(p.is_empty(), "{p:?}");
    // The pair wants its slice, whose name the newer slice holds: created beside it under
    // another name, the newer one neither rewritten nor deleted.
    let p = plan(&target_ref(), &d, &[newer.clone(), other]);
    assert!(p.updates.is_empty() && p.deletes.is_empty(), "{p:?}");
    assert_eq!(p.creates.len(), 1);
    assert_ne!(p.creates[0].metadata.name, newer.metadata.name);
    // A label under endpoint-copier/ this version does not write: the same.
    let labelled_newer = with("endpoint-copier/zone-hint", "a");
    assert!(plan(&target_ref(), &[], &[labelled_newer]).is_empty());
    // What this version writes is deleted as before.
    assert_eq!(plan(&target_ref(), &[], &written(&d)).deletes.len(), 1);
}
