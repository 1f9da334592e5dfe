//! Shared harness for the integration tests: a cluster (the in-process test bed, or a real one
//! when `ENDPOINT_COPIER_TEST_KUBECONFIG` is set), fixtures written through the API as a user
//! would, and the real daemon started from a `Config` that points at the cluster's kubeconfig.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, missing_docs)]

pub mod netns;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use endpoint_copier::config::{Config, Kubeconfig, PairConfig};
use endpoint_copier::daemon;
use endpoint_copier::names;
use endpoint_copier::shutdown::Shutdown;
pub use endpoint_copier_testbed::{Cluster, TestBed};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};

/// A kube client for the test itself (seeding, asserting), from the cluster's kubeconfig.
pub async fn client_for(kubeconfig: &Path) -> Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    Client::try_from(cfg).unwrap()
}

/// A runtime directory of its own for each daemon config (`[lease] runtime_dir`): the daemons
/// of a test share one process, and the default `/run/endpoint-copier/lease` would make the
/// second one a refused twin. Left behind in the temp dir (a few bytes each).
pub fn runtime_dir() -> std::path::PathBuf {
    tempfile::Builder::new()
        .prefix("endpoint-copier-it-run-")
        .tempdir()
        .unwrap()
        .keep()
}

/// A daemon config for tests: the given pairs, short Lease timings, no metrics listener, a
/// runtime directory of its own.
pub fn config(kubeconfig: &Path, identity: &str, pairs: &[(&str, &str)]) -> Config {
    let mut c = Config {
        kubeconfig: Kubeconfig::Path(kubeconfig.to_owned()),
        pairs: pairs
            .iter()
            .map(|(s, t)| PairConfig::new(s.parse().unwrap(), t.parse().unwrap()))
            .collect(),
        ..Config::default()
    };
    c.lease.identity = Some(identity.to_owned());
    c.lease.duration = Duration::from_secs(3);
    c.lease.renew_deadline = Duration::from_secs(2);
    c.lease.retry_period = Duration::from_millis(500);
    c.lease.runtime_dir = Some(runtime_dir());
    c.metrics.listen = None;
    c
}

/// A running daemon; stopping it (or dropping it) cancels its shutdown token. There is no hard
/// kill in-process: aborting `run` would leave its spawned tasks (the elector, the prober)
/// running; a test that kills a host runs the binary and sends SIGKILL.
pub struct Daemon {
    pub shutdown: Shutdown,
    pub task: tokio::task::JoinHandle<Result<(), daemon::Error>>,
}

impl Daemon {
    pub fn start(config: Config) -> Daemon {
        // Probes dial the endpoint addresses: only inside a test's own network namespace may a
        // test daemon do that (every address here is a documentation address, routed nowhere
        // but out of this machine).
        assert!(
            netns::inside() || config.pairs.iter().all(|p| p.probe.is_none()),
            "a test daemon probes only inside a network namespace (common::netns::enter)"
        );
        let shutdown = Shutdown::new();
        let task = tokio::spawn(daemon::run(config, shutdown.clone()));
        Daemon { shutdown, task }
    }

    /// Graceful stop (SIGTERM path): waits for the daemon to return and checks it returned Ok.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let r = tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("daemon stops within 15 s");
        r.unwrap().unwrap();
    }
}

/// Polls `f` every 20 ms until it returns `Some`, or panics after `limit` naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn meta(ns: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(ns.into()),
        name: Some(name.into()),
        ..Default::default()
    }
}

/// A selectorless Service like the ones EIB creates for the VIP.
pub fn vip_service(ns: &str, name: &str, families: &[&str]) -> Service {
    let mut m = meta(ns, name);
    m.labels = Some([("serviceType".to_owned(), "kubernetes-vip".to_owned())].into());
    Service {
        metadata: m,
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".into()),
            ip_families: Some(families.iter().map(|f| (*f).to_owned()).collect()),
            ip_family_policy: Some(
                if families.len() > 1 {
                    "RequireDualStack"
                } else {
                    "SingleStack"
                }
                .into(),
            ),
            ports: Some(vec![
                ServicePort {
                    name: Some("rke2-api".into()),
                    port: 9345,
                    protocol: Some("TCP".into()),
                    target_port: Some(IntOrString::Int(9345)),
                    ..Default::default()
                },
                ServicePort {
                    name: Some("k8s-api".into()),
                    port: 6443,
                    protocol: Some("TCP".into()),
                    target_port: Some(IntOrString::Int(6443)),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Sets `svc`'s annotations to exactly `annotations`.
pub fn annotate(svc: &mut Service, annotations: &[(&str, &str)]) {
    svc.metadata.annotations = Some(
        annotations
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    );
}

/// A selectorless source Service (stands in for `default/kubernetes` in its own namespace).
pub fn source_service(ns: &str, name: &str) -> Service {
    Service {
        metadata: meta(ns, name),
        spec: Some(ServiceSpec {
            ports: Some(vec![ServicePort {
                name: Some("https".into()),
                port: 443,
                protocol: Some("TCP".into()),
                target_port: Some(IntOrString::Int(6443)),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn endpoint(addr: &str, ready: bool) -> Endpoint {
    Endpoint {
        addresses: vec![addr.to_owned()],
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(ready),
            terminating: Some(false),
        }),
        ..Default::default()
    }
}

/// A source slice the way the apiserver writes `kubernetes`: one family, port https 6443.
pub fn source_slice(
    ns: &str,
    service: &str,
    name: &str,
    family: &str,
    addrs: &[&str],
) -> EndpointSlice {
    let mut m = meta(ns, name);
    m.labels = Some([(names::SERVICE_NAME_LABEL.to_owned(), service.to_owned())].into());
    EndpointSlice {
        metadata: m,
        address_type: family.into(),
        endpoints: addrs.iter().map(|a| endpoint(a, true)).collect(),
        ports: Some(vec![EndpointPort {
            name: Some("https".into()),
            port: Some(6443),
            protocol: Some("TCP".into()),
            app_protocol: None,
        }]),
    }
}

pub async fn create<K>(client: &Client, ns: &str, obj: &K) -> K
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    Api::<K>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), obj)
        .await
        .unwrap()
}

pub async fn delete<K>(client: &Client, ns: &str, name: &str)
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    Api::<K>::namespaced(client.clone(), ns)
        .delete(name, &DeleteParams::default())
        .await
        .unwrap();
}

/// The slices labelled for `service`, by name — but those written by another test's copier
/// group ([`of_another_test`]).
pub async fn slices_of(
    client: &Client,
    ns: &str,
    service: &str,
) -> BTreeMap<String, EndpointSlice> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let lp = kube::api::ListParams::default()
        .labels(&format!("{}={service}", names::SERVICE_NAME_LABEL));
    api.list(&lp)
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|s| !of_another_test(s, ns))
        .map(|s| (s.metadata.name.clone().unwrap(), s))
        .collect()
}

thread_local! {
    /// The namespaces of the worlds of the test running on this thread (a `#[tokio::test]` runs
    /// on a thread of its own, its daemons' tasks too): its copier groups' labels name them.
    static OWN_NAMESPACES: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Whether `slice`, in namespace `ns`, was written by the copier group of another test. On a
/// real cluster every test's daemons share one API: each mirrors every annotated Service it
/// sees (annotations are on by default), so the annotated target of one test gets a slice from
/// the group of every other test running at once — as two copier groups of one cluster would
/// (each writes only its own labelled slice). A test observes what its own groups wrote: their
/// group label names its world's namespace (`<namespace>.<name>`, or `kube-system.<ns>-…`),
/// while another test's names another unique namespace (`<prefix>-<8 hex>`). On the test bed
/// every test has its own API, and nothing is ever filtered out.
pub fn of_another_test(slice: &EndpointSlice, ns: &str) -> bool {
    let Some(group) = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(names::GROUP_LABEL))
    else {
        return false;
    };
    let is_test_namespace = |part: &str| {
        part.rsplit_once('-').is_some_and(|(_, suffix)| {
            suffix.len() == 8 && suffix.chars().all(|c| c.is_ascii_hexdigit())
        })
    };
    let ours = OWN_NAMESPACES.with(|own| own.borrow().iter().any(|o| group.contains(o.as_str())));
    !ours
        && !group.contains(ns)
        && group
            .split('.')
            .any(|part| is_test_namespace(part.trim_end_matches("-default")))
}

/// Sorted addresses of the ready endpoints in `slices`.
pub fn ready_addresses<'a>(slices: impl IntoIterator<Item = &'a EndpointSlice>) -> Vec<String> {
    let mut v: Vec<String> = slices
        .into_iter()
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .flat_map(|e| e.addresses.iter().cloned())
        .collect();
    v.sort();
    v
}

/// Waits until the target's ready addresses are exactly `want`.
pub async fn wait_for_target(
    client: &Client,
    ns: &str,
    target: &str,
    want: &[&str],
    limit: Duration,
) {
    let mut want: Vec<String> = want.iter().map(|s| (*s).to_owned()).collect();
    want.sort();
    eventually(
        &format!("{ns}/{target} to hold {want:?}"),
        limit,
        || async {
            let slices = slices_of(client, ns, target).await;
            (ready_addresses(slices.values()) == want).then_some(())
        },
    )
    .await;
}

/// One test's world: a cluster, a namespace of its own holding a source Service `apiserver`
/// (standing in for `default/kubernetes`) and, unless told otherwise, a target Service `vip`.
pub struct World {
    pub cluster: Cluster,
    pub ns: String,
    pub client: Client,
}

impl World {
    pub async fn new(prefix: &str) -> World {
        let cluster = Cluster::connect().await;
        let client = client_for(&cluster.kubeconfig()).await;
        let ns = cluster.unique_namespace(prefix).await;
        OWN_NAMESPACES.with(|own| own.borrow_mut().push(ns.clone()));
        World {
            cluster,
            ns,
            client,
        }
    }

    pub fn source(&self) -> String {
        format!("{}/apiserver", self.ns)
    }

    pub fn target(&self) -> String {
        format!("{}/vip", self.ns)
    }

    /// A daemon config mirroring this world's source into its target, as `identity`.
    pub fn config(&self, identity: &str) -> Config {
        let kubeconfig = match self.cluster.testbed() {
            Some(tb) => tb.kubeconfig_for(identity),
            None => self.cluster.kubeconfig(),
        };
        let mut c = config(&kubeconfig, identity, &[(&self.source(), &self.target())]);
        // Each test elects among its own daemons only, and keeps its members to itself.
        c.lease.namespace = self.ns.clone();
        c.members.namespace = self.ns.clone();
        c
    }

    /// Creates the source Service with one IPv4 slice holding `addrs`, and the IPv4 target.
    pub async fn seed(&self, addrs: &[&str]) {
        self.seed_source(addrs).await;
        create(
            &self.client,
            &self.ns,
            &vip_service(&self.ns, "vip", &["IPv4"]),
        )
        .await;
    }

    /// Seeds as [`World::seed`], starts the daemon as `node-1` and waits until the target holds
    /// `addrs`: the starting point of most tests.
    pub async fn synced(&self, addrs: &[&str]) -> Daemon {
        self.seed(addrs).await;
        let daemon = Daemon::start(self.config("node-1"));
        wait_for_target(
            &self.client,
            &self.ns,
            "vip",
            addrs,
            std::time::Duration::from_secs(10),
        )
        .await;
        daemon
    }

    /// Creates only the source Service `apiserver` with one IPv4 slice holding `addrs`.
    pub async fn seed_source(&self, addrs: &[&str]) {
        create(
            &self.client,
            &self.ns,
            &source_service(&self.ns, "apiserver"),
        )
        .await;
        let slice = source_slice(&self.ns, "apiserver", "apiserver", "IPv4", addrs);
        create(&self.client, &self.ns, &slice).await;
    }

    /// Replaces the source's IPv4 slice so it holds exactly `addrs` (read, then replace with its
    /// resourceVersion, as a writer of `default/kubernetes` would).
    pub async fn set_source(&self, addrs: &[&str]) {
        let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), &self.ns);
        let mut slice = source_slice(&self.ns, "apiserver", "apiserver", "IPv4", addrs);
        slice.metadata.resource_version = api
            .get("apiserver")
            .await
            .unwrap()
            .metadata
            .resource_version;
        api.replace("apiserver", &Default::default(), &slice)
            .await
            .unwrap();
    }

    /// Creates the source (as [`World::seed_source`]) and a target `vip` that names it through
    /// endpoint-copier-operator's annotations instead of the config.
    pub async fn seed_annotated(&self, addrs: &[&str]) {
        self.seed_source(addrs).await;
        let mut svc = vip_service(&self.ns, "vip", &["IPv4"]);
        annotate(
            &mut svc,
            &[
                (names::ANNOTATION_ENABLED, "true"),
                (names::ANNOTATION_SOURCE_NAME, "apiserver"),
            ],
        );
        create(&self.client, &self.ns, &svc).await;
    }

    /// Creates a target `name` (like EIB's VIP Service) carrying exactly `annotations`.
    pub async fn create_annotated(&self, name: &str, annotations: &[(&str, &str)]) {
        let mut svc = vip_service(&self.ns, name, &["IPv4"]);
        annotate(&mut svc, annotations);
        create(&self.client, &self.ns, &svc).await;
    }

    pub fn testbed(&self) -> Option<&TestBed> {
        self.cluster.testbed()
    }
}

/// A config directory with one drop-in for the binary, as combustion would write it: `world`'s
/// pair (plus `pair_keys`, e.g. `probe = { https = "/readyz" }`), the Lease and the members in
/// the world's namespace as `identity` (plus `lease_keys`: timings, `runtime_dir`), no metrics
/// listener.
pub fn drop_in_dir(
    world: &World,
    identity: &str,
    pair_keys: &str,
    lease_keys: &str,
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = world.cluster.testbed().map_or_else(
        || world.cluster.kubeconfig(),
        |tb| tb.kubeconfig_for(identity),
    );
    std::fs::write(
        dir.path().join("50-site.toml"),
        format!(
            "kubeconfig = \"{}\"\n\n[[pair]]\nsource = \"{}\"\ntarget = \"{}\"\n{pair_keys}\n\n[lease]\nnamespace = \"{}\"\nidentity = \"{identity}\"\n{lease_keys}\n\n[members]\nnamespace = \"{}\"\n\n[metrics]\nlisten = \"\"\n",
            kubeconfig.display(),
            world.source(),
            world.target(),
            world.ns,
            world.ns,
        ),
    )
    .unwrap();
    dir
}

/// The notes of the Events with `reason` about the Service `target` in the world's namespace.
pub async fn events_on(world: &World, target: &str, reason: &str) -> Vec<String> {
    let api: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(world.client.clone(), &world.ns);
    api.list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some(reason)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(target)
        })
        .map(|e| e.note.unwrap_or_default())
        .collect()
}

#[test]
fn only_a_slice_of_another_tests_copier_group_is_left_out() {
    let slice = |group: Option<&str>| {
        let mut s = source_slice("orphans-cb026381", "vip", "vip-x", "IPv4", &["203.0.113.9"]);
        if let Some(g) = group {
            s.metadata
                .labels
                .get_or_insert_default()
                .insert(names::GROUP_LABEL.to_owned(), g.to_owned());
        }
        s
    };
    let ns = "orphans-cb026381";
    assert!(!of_another_test(&slice(None), ns), "no group: kept");
    assert!(!of_another_test(
        &slice(Some("orphans-cb026381.endpoint-copier")),
        ns
    ));
    assert!(!of_another_test(
        &slice(Some("orphans-cb026381.copier-a")),
        ns
    ));
    assert!(!of_another_test(
        &slice(Some("kube-system.orphans-cb026381-default")),
        ns
    ));
    assert!(
        !of_another_test(&slice(Some("kube-system.endpoint-copier")), ns),
        "the default group"
    );
    assert!(of_another_test(
        &slice(Some("scope-a-0f1e2d3c.endpoint-copier")),
        ns
    ));
    assert!(of_another_test(
        &slice(Some("kube-system.two-groups-89abcdef-default")),
        ns
    ));
}
