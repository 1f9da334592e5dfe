//! The demo's stage: the test bed behind three doors of the simulator's network, seeded like a
//! fresh three-node RKE2 control plane; the hosts, each running the real daemon (and its `drain`
//! and `resume` commands) over that network; an observer of every write the test bed accepts,
//! which reports the VIP's endpoints, the Lease's holder and each host's published ballot; and
//! the waits the story uses, each bounded, each failing the demo with what it saw.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use endpoint_copier::client::transport::Connector;
use endpoint_copier::config::{Config, Kubeconfig};
use endpoint_copier::daemon::{self, Environment};
use endpoint_copier::group::MemberRecord;
use endpoint_copier::group::member::MIN_WRITE_GAP;
use endpoint_copier::probe::{Dialer, Verdict};
use endpoint_copier::shutdown::Shutdown;
use endpoint_copier::{drain, names};
use endpoint_copier_testbed::store::{self, ListParams, Store, WriteParams};
use endpoint_copier_testbed::{Options, TestBed, Verb};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

use crate::net::{self, Door, Net};
use crate::{fail, ms, say};

/// Control-plane hosts (and apiservers): `node-1`..`node-3`, apiserver `h` at door `h`.
pub(crate) const HOSTS: usize = 3;
/// Every door, by index.
pub(crate) const ALL: [usize; HOSTS] = [0, 1, 2];
/// Every running host publishing that it sees every apiserver up, after a change.
const SETTLE_BOUND: Duration = Duration::from_secs(5);
/// A daemon stopping on SIGTERM.
const STOP_BOUND: Duration = Duration::from_secs(5);

/// The target's endpoints as the store holds them: address → ready.
type Target = BTreeMap<IpAddr, bool>;
/// One host's published verdicts: address → seen up.
type Ballot = BTreeMap<IpAddr, bool>;

/// A value the write observer saw, and when the write that made it was accepted.
#[derive(Clone)]
struct Seen<T> {
    /// When the write was accepted.
    at: Instant,
    /// What it made of the watched object.
    value: T,
}

/// Tells `tx`'s receivers about `value` if it differs from the last one, with the time now.
fn note<T: PartialEq>(tx: &watch::Sender<Seen<T>>, value: T) {
    tx.send_if_modified(|seen| {
        let changed = seen.value != value;
        if changed {
            *seen = Seen {
                at: Instant::now(),
                value,
            };
        }
        changed
    });
}

/// One control-plane host.
pub(crate) struct Host {
    /// Its Node name and Lease identity.
    pub(crate) name: String,
    /// Its daemon's configuration: the defaults, its kubeconfig, identity and runtime directory.
    pub(crate) config: Config,
    /// Bumped by a crash: the network drops everything of older incarnations.
    incarnation: u32,
    /// Its daemon's SIGTERM and task, while it runs.
    running: Option<(Shutdown, tokio::task::JoinHandle<Result<(), daemon::Error>>)>,
}

/// The cluster: the test bed, the network, the hosts, and what the observer saw.
pub(crate) struct Demo {
    /// The API's store, served through every door.
    bed: Arc<TestBed>,
    /// The network between the hosts and the doors.
    pub(crate) net: Arc<Net>,
    /// The hosts, host `h` with door `h`.
    pub(crate) hosts: Vec<Host>,
    /// `default/kubernetes-vip`'s endpoints, on every change.
    vip: watch::Receiver<Seen<Target>>,
    /// The Lease's holder, on every change.
    holder: watch::Receiver<Seen<Option<String>>>,
    /// Each host's last published ballot (its member Lease), by identity.
    ballots: watch::Receiver<BTreeMap<String, Seen<Ballot>>>,
    /// Each host's runtime directory (`/run/endpoint-copier`), removed at the end.
    pub(crate) dirs: Vec<tempfile::TempDir>,
}

impl Demo {
    /// The test bed seeded like a fresh three-node control plane, the network, the hosts'
    /// configurations, and the observer that reports the VIP and the Lease holder.
    pub(crate) fn new() -> Demo {
        let bed = Arc::new(TestBed::in_memory(Options {
            // As the real server: a bookmark a minute.
            bookmark_interval: Duration::from_secs(60),
            ..Options::default()
        }));
        let (vip_tx, vip) = watch::channel(Seen {
            at: Instant::now(),
            value: Target::new(),
        });
        let (holder_tx, holder) = watch::channel(Seen {
            at: Instant::now(),
            value: None,
        });
        let (ballots_tx, ballots) = watch::channel(BTreeMap::new());
        bed.on_write(Arc::new(move |a, store| {
            let name = a.object["metadata"]["name"].as_str();
            match a.resource {
                "endpointslices" if a.namespace == Some("default") => {
                    note(&vip_tx, vip_of(store));
                }
                "leases"
                    if a.namespace == Some(names::LEASE_NAMESPACE)
                        && name == Some(names::LEASE_NAME) =>
                {
                    let value = match a.verb {
                        Verb::Delete => None,
                        _ => a.object["spec"]["holderIdentity"]
                            .as_str()
                            .filter(|h| !h.is_empty())
                            .map(str::to_owned),
                    };
                    note(&holder_tx, value);
                }
                "leases" if a.namespace == Some(names::MEMBERS_NAMESPACE) => {
                    let Ok(lease) = serde_json::from_value(a.object.clone()) else {
                        return;
                    };
                    let Ok(record) = MemberRecord::from_lease(&lease) else {
                        return;
                    };
                    let value: Ballot = record
                        .verdicts
                        .iter()
                        .map(|(t, v)| (t.address, *v == Verdict::Up))
                        .collect();
                    ballots_tx.send_modify(|ballots| {
                        ballots.insert(
                            record.identity,
                            Seen {
                                at: Instant::now(),
                                value,
                            },
                        );
                    });
                }
                _ => {}
            }
        }));
        seed(bed.store());
        let net = Net::with_remote(HOSTS, Arc::clone(&bed), None);
        let mut dirs = Vec::new();
        let hosts = (0..HOSTS)
            .map(|h| {
                let name = format!("node-{}", h + 1);
                // Each host's kubeconfig names its own apiserver, as RKE2's does.
                let server = format!("https://{}:{}", net::door_address(h), net::API_PORT);
                let mut config = Config {
                    kubeconfig: Kubeconfig::Path(bed.kubeconfig_at(&name, &server)),
                    ..Config::default()
                };
                config.lease.identity = Some(name.clone());
                config.lease.runtime_dir = Some(runtime_dir(&mut dirs));
                config.metrics.listen = None;
                Host {
                    name,
                    config,
                    incarnation: 0,
                    running: None,
                }
            })
            .collect();
        Demo {
            bed,
            net,
            hosts,
            vip,
            holder,
            ballots,
            dirs,
        }
    }

    /// Host `name`'s index.
    pub(crate) fn index(&self, name: &str) -> usize {
        self.hosts.iter().position(|h| h.name == name).unwrap()
    }

    /// Starts host `h`'s daemon over the network, as systemd would.
    pub(crate) fn start(&mut self, h: usize) {
        let host = &mut self.hosts[h];
        let environment = Environment {
            connector: Connector::Dial(self.net.connector(h, host.incarnation, &host.name)),
            dialer: Dialer::Dial(self.net.dialer(h, host.incarnation)),
            // Real time: the host's own clock.
            clock: endpoint_copier::clock::Clock::System,
        };
        let shutdown = Shutdown::new();
        let span = tracing::info_span!("host", name = %host.name);
        let task = tokio::spawn(
            daemon::run_with(host.config.clone(), shutdown.clone(), environment).instrument(span),
        );
        host.running = Some((shutdown, task));
    }

    /// Host `h` loses power: its connections die, its daemon stops mid-step (nothing released),
    /// its apiserver is gone, and its runtime directory (a tmpfs) with them.
    pub(crate) async fn crash(&mut self, h: usize) {
        let next = self.net.crash(h);
        self.net.set_door(h, Door::Down);
        let host = &mut self.hosts[h];
        host.incarnation = next;
        if let Some((shutdown, task)) = host.running.take() {
            task.abort();
            let _ = task.await;
            // Only tasks the aborted future did not own hear this, and the network drops
            // whatever they would still send.
            shutdown.cancel();
        }
        host.config.lease.runtime_dir = Some(runtime_dir(&mut self.dirs));
    }

    /// Stops host `h`'s daemon as `systemctl stop` does (SIGTERM), if it runs.
    pub(crate) async fn stop(&mut self, h: usize) {
        let host = &mut self.hosts[h];
        let Some((shutdown, task)) = host.running.take() else {
            return;
        };
        shutdown.cancel();
        match tokio::time::timeout(STOP_BOUND, task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => fail(&format!(
                "{}'s daemon stopped with an error: {}",
                host.name,
                endpoint_copier::error::Chain(&e)
            )),
            Ok(Err(e)) => fail(&format!("{}'s daemon panicked: {e}", host.name)),
            Err(_) => fail(&format!(
                "{}'s daemon did not stop within {} s of SIGTERM",
                host.name,
                STOP_BOUND.as_secs()
            )),
        }
    }

    /// `endpoint-copier drain` on host `h`, over its own apiserver, as the `ExecStop=` hook.
    pub(crate) async fn drain(&self, h: usize, timeout: Duration) -> drain::Drained {
        let host = &self.hosts[h];
        let options = drain::DrainOptions {
            node: Some(host.name.clone()),
            timeout,
            expires: drain::DEFAULT_EXPIRES,
        };
        let connector = Connector::Dial(self.net.connector(h, host.incarnation, &host.name));
        let span = tracing::info_span!("host", name = %host.name);
        drain::drain_with(&host.config, &options, &connector)
            .instrument(span)
            .await
            .unwrap_or_else(|e| {
                fail(&format!(
                    "`endpoint-copier drain` on {}: {}",
                    host.name,
                    endpoint_copier::error::Chain(&e)
                ))
            })
    }

    /// `endpoint-copier resume --timed-only` on host `h`, as the `ExecStartPost=` hook.
    pub(crate) async fn resume(&self, h: usize) -> drain::Resumed {
        let host = &self.hosts[h];
        let options = drain::ResumeOptions {
            node: Some(host.name.clone()),
            timeout: drain::DEFAULT_RESUME_TIMEOUT,
            timed_only: true,
        };
        let connector = Connector::Dial(self.net.connector(h, host.incarnation, &host.name));
        let span = tracing::info_span!("host", name = %host.name);
        let resumed = drain::resume_with(&host.config, &options, &connector)
            .instrument(span)
            .await
            .unwrap_or_else(|e| {
                fail(&format!(
                    "`endpoint-copier resume` on {}: {}",
                    host.name,
                    endpoint_copier::error::Chain(&e)
                ))
            });
        if !resumed.removed {
            fail(&format!("`resume` on {} removed no drain", host.name));
        }
        resumed
    }

    /// Waits until the Lease's holder satisfies `pred`; returns it and when it was written.
    pub(crate) async fn await_holder(
        &mut self,
        what: &str,
        since: Instant,
        bound: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> (String, Instant) {
        {
            let waited = tokio::time::timeout_at(
                since + bound,
                self.holder
                    .wait_for(|seen| seen.value.as_deref().is_some_and(&pred)),
            )
            .await;
            if let Ok(Ok(seen)) = waited {
                return (seen.value.clone().unwrap_or_default(), seen.at);
            }
        }
        fail(&format!(
            "waited {} ms for {what} (the Lease is held by {})",
            bound.as_millis(),
            self.holder.borrow().value.as_deref().unwrap_or("nobody")
        ))
    }

    /// Waits until the cluster is at rest, as before any fault in real life: the VIP holds
    /// every apiserver ready, every running host has published a ballot that sees them all up,
    /// and the last of those ballots is [`MIN_WRITE_GAP`] old (a host writes its ballot at most
    /// once per gap: a fault right after a write would wait for the gap to be published).
    pub(crate) async fn settle(&mut self) {
        let since = Instant::now();
        self.await_vip(
            "a VIP with every apiserver ready",
            since,
            SETTLE_BOUND,
            &ALL,
            &[],
        )
        .await;
        let running: Vec<String> = self
            .hosts
            .iter()
            .filter(|h| h.running.is_some())
            .map(|h| h.name.clone())
            .collect();
        let at_rest = |ballots: &BTreeMap<String, Seen<Ballot>>| {
            running.iter().all(|n| {
                ballots
                    .get(n)
                    .is_some_and(|b| b.value.len() == HOSTS && b.value.values().all(|up| *up))
            })
        };
        let last = {
            let waited =
                tokio::time::timeout_at(since + SETTLE_BOUND, self.ballots.wait_for(at_rest)).await;
            match waited {
                Ok(Ok(ballots)) => running
                    .iter()
                    .filter_map(|n| ballots.get(n).map(|b| b.at))
                    .max()
                    .unwrap_or(since),
                _ => fail(&format!(
                    "the hosts did not all publish that they see every apiserver up within {} ms",
                    SETTLE_BOUND.as_millis()
                )),
            }
        };
        tokio::time::sleep_until(last + MIN_WRITE_GAP).await;
        say(&format!(
            "at rest: every running host has published that it sees the {HOSTS} apiservers up"
        ));
    }

    /// Waits until each of `hosts` has published a ballot, written after `since`, that sees
    /// `address` up (`up`) or down; returns when the last of them was written.
    pub(crate) async fn await_ballots(
        &mut self,
        what: &str,
        since: Instant,
        bound: Duration,
        hosts: &[usize],
        address: IpAddr,
        up: bool,
    ) -> Instant {
        let names: Vec<String> = hosts.iter().map(|h| self.hosts[*h].name.clone()).collect();
        let sees = |ballots: &BTreeMap<String, Seen<Ballot>>, name: &String| {
            ballots
                .get(name)
                .is_some_and(|b| b.at >= since && b.value.get(&address) == Some(&up))
        };
        {
            let waited = tokio::time::timeout_at(
                since + bound,
                self.ballots
                    .wait_for(|ballots| names.iter().all(|n| sees(ballots, n))),
            )
            .await;
            if let Ok(Ok(ballots)) = waited {
                return names
                    .iter()
                    .filter_map(|n| ballots.get(n).map(|b| b.at))
                    .max()
                    .unwrap_or(since);
            }
        }
        let ballots = self.ballots.borrow();
        let missing: Vec<&str> = names
            .iter()
            .filter(|n| !sees(&ballots, n))
            .map(String::as_str)
            .collect();
        fail(&format!(
            "waited {} ms for {what}: {} published no ballot that sees {address} {}",
            bound.as_millis(),
            missing.join(", "),
            if up { "up" } else { "down" }
        ))
    }

    /// Waits until the VIP holds exactly `ready` ready and `not_ready` not ready (door
    /// indices); returns the milliseconds from `since` to the write that made it so.
    pub(crate) async fn await_vip(
        &mut self,
        what: &str,
        since: Instant,
        bound: Duration,
        ready: &[usize],
        not_ready: &[usize],
    ) -> u128 {
        let want = target(ready, not_ready);
        {
            let waited = tokio::time::timeout_at(
                since + bound,
                self.vip.wait_for(|seen| seen.value == want),
            )
            .await;
            if let Ok(Ok(seen)) = waited {
                return ms(seen.at.saturating_duration_since(since));
            }
        }
        fail(&format!(
            "waited {} ms for {what}: default/kubernetes-vip holds {}, expected {}",
            bound.as_millis(),
            show(&self.vip.borrow().value),
            show(&want)
        ))
    }

    /// Fails unless the VIP holds exactly `ready` ready and `not_ready` not ready now.
    pub(crate) fn check_vip(&self, when: &str, ready: &[usize], not_ready: &[usize]) {
        let want = target(ready, not_ready);
        let now = vip_of(self.bed.store());
        if now != want {
            fail(&format!(
                "{when}, default/kubernetes-vip holds {}, expected {}",
                show(&now),
                show(&want)
            ));
        }
    }

    /// Fails unless `default/kubernetes` still lists `address` as ready (`why` it should).
    pub(crate) fn check_source_lists(&self, address: IpAddr, why: &str) {
        let r = resource("discovery.k8s.io", "v1", "endpointslices");
        let slice = self
            .bed
            .store()
            .get(r, Some("default"), "kubernetes")
            .unwrap_or_else(|e| fail(&format!("default/kubernetes: {}", e.message)));
        let listed = slice["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["conditions"]["ready"].as_bool().unwrap_or(true))
            .flat_map(|e| e["addresses"].as_array().into_iter().flatten())
            .any(|a| a.as_str() == Some(address.to_string().as_str()));
        if !listed {
            fail(&format!(
                "default/kubernetes no longer lists {address} as ready, but {why}"
            ));
        }
    }
}

/// Door indices others than `j`.
pub(crate) fn others(j: usize) -> Vec<usize> {
    (0..HOSTS).filter(|h| *h != j).collect()
}

/// The target holding the doors `ready` ready and `not_ready` not ready.
fn target(ready: &[usize], not_ready: &[usize]) -> Target {
    let mut t: Target = ready
        .iter()
        .map(|j| (net::door_address(*j), true))
        .collect();
    t.extend(not_ready.iter().map(|j| (net::door_address(*j), false)));
    t
}

/// The target as the failure messages show it.
fn show(target: &Target) -> String {
    if target.is_empty() {
        return "nothing".to_owned();
    }
    target
        .iter()
        .map(|(a, ready)| format!("{a}{}", if *ready { "" } else { " (not ready)" }))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A new runtime directory (`/run/endpoint-copier` on a host), kept in `dirs` until the end.
fn runtime_dir(dirs: &mut Vec<tempfile::TempDir>) -> std::path::PathBuf {
    let dir = tempfile::Builder::new()
        .prefix("endpoint-copier-demo-run-")
        .tempdir()
        .unwrap();
    let path = dir.path().to_owned();
    dirs.push(dir);
    path
}

/// The test bed's resource `plural` of `group/version`.
fn resource(group: &str, version: &str, plural: &str) -> &'static store::Resource {
    store::resource(group, version, plural).unwrap()
}

/// `default/kubernetes-vip`'s endpoints in the EndpointSlices endpoint-copier manages: address →
/// ready (ready in any slice counts).
fn vip_of(store: &Store) -> Target {
    let p = ListParams {
        label_selector: Some(format!(
            "{}=kubernetes-vip,{}={}",
            names::SERVICE_NAME_LABEL,
            names::MANAGED_BY_LABEL,
            names::MANAGED_BY
        )),
        ..ListParams::default()
    };
    let mut out = Target::new();
    let r = resource("discovery.k8s.io", "v1", "endpointslices");
    let Ok(list) = store.list(r, Some("default"), &p) else {
        return out;
    };
    for e in list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["endpoints"].as_array().into_iter().flatten())
    {
        let ready = e["conditions"]["ready"].as_bool().unwrap_or(true);
        for a in e["addresses"].as_array().into_iter().flatten() {
            if let Some(a) = a.as_str().and_then(|s| s.parse().ok()) {
                *out.entry(a).or_insert(false) |= ready;
            }
        }
    }
    out
}

/// What a fresh three-node RKE2 control plane has: the control-plane Nodes, the `kubernetes`
/// EndpointSlice the apiservers write (port `https` 6443) and EIB's `kubernetes-vip` Service.
fn seed(store: &Store) {
    let p = WriteParams::default();
    let nodes = resource("", "v1", "nodes");
    for h in 0..HOSTS {
        let name = format!("node-{}", h + 1);
        let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name,
            "labels": {names::CONTROL_PLANE_LABEL: "true"}}});
        store.create(nodes, None, node, &p).unwrap();
        let status = json!({"status": {"addresses": [
            {"type": "InternalIP", "address": net::door_address(h).to_string()},
            {"type": "Hostname", "address": name}]}});
        store
            .replace_status(nodes, None, &name, status, &p)
            .unwrap();
    }
    let endpoints: Vec<Value> = (0..HOSTS)
        .map(|h| {
            json!({"addresses": [net::door_address(h).to_string()],
                "conditions": {"ready": true, "serving": true, "terminating": false}})
        })
        .collect();
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes", "namespace": "default",
            "labels": {names::SERVICE_NAME_LABEL: "kubernetes"}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "https", "port": net::API_PORT, "protocol": "TCP"}],
    });
    let slices = resource("discovery.k8s.io", "v1", "endpointslices");
    store.create(slices, Some("default"), slice, &p).unwrap();
    let vip = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kubernetes-vip", "namespace": "default",
            "labels": {"serviceType": "kubernetes-vip"}},
        "spec": {"type": "LoadBalancer", "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
            "ports": [
                {"name": "rke2-api", "port": 9345, "protocol": "TCP", "targetPort": 9345},
                {"name": "k8s-api", "port": 6443, "protocol": "TCP", "targetPort": 6443}]},
    });
    store
        .create(resource("", "v1", "services"), Some("default"), vip, &p)
        .unwrap();
}
