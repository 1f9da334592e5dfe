//! The README's first command: `cargo run --example demo`.
//!
//! Three copies of the real daemon (as on three control-plane hosts) run against the in-process
//! test bed, seeded like a fresh three-node RKE2 cluster: the `kubernetes` EndpointSlice holds
//! three documentation-range addresses and EIB's `kubernetes-vip` Service exists. The demo
//! narrates what happens — election, the first sync, a node leaving, the leader stopping and a
//! peer taking over — and exits 0 with a summary. No cluster, no root, well under 30 s.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use endpoint_copier::config::{Config, Kubeconfig};
use endpoint_copier::shutdown::Shutdown;
use endpoint_copier::{daemon, names};
use endpoint_copier_testbed::TestBed;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use tracing::Instrument;

const NODES: [(&str, &str); 3] = [
    ("node-1", "198.51.100.11"),
    ("node-2", "198.51.100.12"),
    ("node-3", "198.51.100.13"),
];

struct Node {
    name: &'static str,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<Result<(), daemon::Error>>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env(names::LOG_ENV).unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("endpoint_copier=info,demo=info")
            }),
        )
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .init();
    let started = Instant::now();
    say(
        "starting an in-process Kubernetes API server (the test bed) seeded like a 3-node RKE2 control plane",
    );
    let tb = TestBed::start().await;
    let admin = client(tb.kubeconfig()).await;
    seed(&admin).await;
    say(&format!(
        "default/kubernetes holds {}; default/kubernetes-vip exists with no EndpointSlice yet",
        NODES.iter().map(|(_, a)| *a).collect::<Vec<_>>().join(", ")
    ));

    let mut nodes: Vec<Node> = NODES
        .iter()
        .map(|(name, _)| {
            let mut config = Config {
                kubeconfig: Kubeconfig::Path(tb.kubeconfig_for(name)),
                ..Config::default()
            };
            config.lease.identity = Some((*name).to_owned());
            config.metrics.listen = None;
            // Three copies in one process: each its own runtime lock, as each host has its own.
            config.lease.runtime_dir = Some(std::env::temp_dir().join(format!(
                "endpoint-copier-demo-{}-{name}",
                std::process::id()
            )));
            // No probes in the demo: the seeded apiserver addresses exist nowhere, and probing
            // them would send packets off this machine. The probes are shown by the tests, which
            // give the addresses to stand-in apiservers inside a network namespace.
            config.pairs[0].probe = None;
            let shutdown = Shutdown::new();
            let span = tracing::info_span!("host", name = *name);
            let task = tokio::spawn(daemon::run(config, shutdown.clone()).instrument(span));
            Node {
                name,
                shutdown,
                task,
            }
        })
        .collect();
    say("started endpoint-copier on node-1, node-2 and node-3 (the real daemon code, one Lease)");

    let leader = wait("a leader", Duration::from_secs(10), || holder(&admin)).await;
    say(&format!(
        "{leader} holds Lease kube-system/endpoint-copier; the others follow"
    ));
    let t = Instant::now();
    wait_for_vip(&admin, &["198.51.100.11", "198.51.100.12", "198.51.100.13"]).await;
    say(&format!(
        "default/kubernetes-vip now holds the 3 control-plane addresses ({} ms after election)",
        t.elapsed().as_millis()
    ));

    say(
        "node-3's apiserver dies: the surviving apiservers remove 198.51.100.13 from default/kubernetes",
    );
    let t = Instant::now();
    set_source(&admin, &["198.51.100.11", "198.51.100.12"]).await;
    wait_for_vip(&admin, &["198.51.100.11", "198.51.100.12"]).await;
    let follow_ms = t.elapsed().as_millis();
    say(&format!(
        "the VIP dropped 198.51.100.13 {follow_ms} ms later: MetalLB now only sends API traffic to live nodes"
    ));

    say(&format!(
        "`systemctl stop endpoint-copier` on {leader}: it finishes its writes and releases the Lease"
    ));
    let idx = nodes.iter().position(|n| n.name == leader).unwrap();
    let stopping = nodes.remove(idx);
    let t = Instant::now();
    stopping.shutdown.cancel();
    stopping.task.await.unwrap().unwrap();
    let next = wait("a new leader", Duration::from_secs(10), || async {
        holder(&admin).await.filter(|h| h != leader.as_str())
    })
    .await;
    let handover_ms = t.elapsed().as_millis();
    say(&format!(
        "{next} took over in {handover_ms} ms (no wait for the {} s Lease to expire)",
        Config::default().lease.duration.as_secs()
    ));

    say("node-3 comes back: its apiserver re-adds 198.51.100.13");
    let t = Instant::now();
    set_source(&admin, &["198.51.100.11", "198.51.100.12", "198.51.100.13"]).await;
    wait_for_vip(&admin, &["198.51.100.11", "198.51.100.12", "198.51.100.13"]).await;
    let rejoin_ms = t.elapsed().as_millis();
    say(&format!("{next} mirrored it in {rejoin_ms} ms"));

    for n in nodes {
        n.shutdown.cancel();
        n.task.await.unwrap().unwrap();
    }
    println!();
    println!("summary:");
    println!(
        "  source change mirrored to the VIP:  {follow_ms} ms (by the first leader), {rejoin_ms} ms (by the second)"
    );
    println!("  graceful handover ({leader} → {next}): {handover_ms} ms");
    println!(
        "  whole demo:                         {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

fn say(line: &str) {
    println!("==> {line}");
}

async fn client(kubeconfig: &std::path::Path) -> Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    Client::try_from(
        kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap(),
    )
    .unwrap()
}

fn endpoint(addr: &str) -> Endpoint {
    Endpoint {
        addresses: vec![addr.to_owned()],
        conditions: Some(EndpointConditions {
            ready: Some(true),
            serving: Some(true),
            terminating: Some(false),
        }),
        ..Default::default()
    }
}

async fn seed(client: &Client) {
    // What the apiservers write: one slice named like the Service, port https 6443.
    let slice = EndpointSlice {
        metadata: ObjectMeta {
            name: Some("kubernetes".into()),
            labels: Some(
                [(
                    names::SERVICE_NAME_LABEL.to_owned(),
                    "kubernetes".to_owned(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: NODES.iter().map(|(_, a)| endpoint(a)).collect(),
        ports: Some(vec![EndpointPort {
            name: Some("https".into()),
            port: Some(6443),
            protocol: Some("TCP".into()),
            app_protocol: None,
        }]),
    };
    Api::<EndpointSlice>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &slice)
        .await
        .unwrap();
    // What EIB creates for the VIP.
    let port = |name: &str, port: i32| ServicePort {
        name: Some(name.into()),
        port,
        protocol: Some("TCP".into()),
        target_port: Some(IntOrString::Int(port)),
        ..Default::default()
    };
    let vip = Service {
        metadata: ObjectMeta {
            name: Some("kubernetes-vip".into()),
            labels: Some([("serviceType".to_owned(), "kubernetes-vip".to_owned())].into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".into()),
            ports: Some(vec![port("rke2-api", 9345), port("k8s-api", 6443)]),
            ..Default::default()
        }),
        ..Default::default()
    };
    Api::<Service>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &vip)
        .await
        .unwrap();
}

async fn set_source(client: &Client, addrs: &[&str]) {
    let api = Api::<EndpointSlice>::namespaced(client.clone(), "default");
    let mut slice = api.get("kubernetes").await.unwrap();
    slice.endpoints = addrs.iter().map(|a| endpoint(a)).collect();
    api.replace("kubernetes", &PostParams::default(), &slice)
        .await
        .unwrap();
}

async fn holder(client: &Client) -> Option<String> {
    let api = Api::<Lease>::namespaced(client.clone(), names::LEASE_NAMESPACE);
    let lease = api.get_opt(names::LEASE_NAME).await.ok()??;
    lease.spec?.holder_identity.filter(|h| !h.is_empty())
}

async fn vip_addresses(client: &Client) -> Vec<String> {
    let api = Api::<EndpointSlice>::namespaced(client.clone(), "default");
    let lp = ListParams::default().labels(&format!("{}=kubernetes-vip", names::SERVICE_NAME_LABEL));
    let mut v: Vec<String> = api
        .list(&lp)
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .flat_map(|e| e.addresses.clone())
        .collect();
    v.sort();
    v
}

async fn wait_for_vip(client: &Client, want: &[&str]) {
    wait(
        "the VIP's EndpointSlices",
        Duration::from_secs(10),
        || async { (vip_addresses(client).await == want).then_some(()) },
    )
    .await;
}

async fn wait<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            eprintln!("demo failed: no {what} after {limit:?}");
            std::process::exit(1);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
