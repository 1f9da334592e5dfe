//! A rolling upgrade, both orders: the previous release's binary (0.1.0, built from the commit
//! CHANGELOG.md names by `tests/upgrade/build-previous.sh`) and this version's binary run side
//! by side in one group against the test bed, probing stand-in apiservers inside a network
//! namespace of the test's own. Whichever leads evicts an apiserver; then it stops (SIGTERM, as
//! `systemctl restart` after a package upgrade does) and the other takes over and evicts a
//! second one. A watch kept on the target's EndpointSlices from the start, and the test bed's
//! request log, show that no slice was deleted, the first eviction was never undone, and the
//! target never lost its last ready endpoint; this version's STATUS and `status` name both
//! versions while both run.
//!
//! Opt-in: it needs the previous binary, named by `ENDPOINT_COPIER_TEST_PREVIOUS_BIN`; without it the
//! tests print why and pass (docs/development/testing.md, docs/usage/upgrade.md):
//!
//! ```sh
//! export ENDPOINT_COPIER_TEST_PREVIOUS_BIN=$(tests/upgrade/build-previous.sh)
//! cargo test --test it upgrade::
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use endpoint_copier::names;
use endpoint_copier_testbed::Verb;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::watcher;

use crate::binary::BIN;
use crate::common::netns::{self, Mode};
use crate::common::{eventually, runtime_dir};
use crate::eviction::{A, B, Bed, C, WITHIN};
use crate::skew::{Host, Systemd};

/// The environment variable naming the previous release's binary. Under `ENDPOINT_COPIER_TEST_`,
/// which every version's config loader ignores: any other `ENDPOINT_COPIER_*` variable is a
/// config key to the daemons this test starts (`ENDPOINT_COPIER_PREVIOUS_BIN` makes both exit
/// 78, "unknown key 'previous_bin'").
const PREVIOUS_BIN: &str = "ENDPOINT_COPIER_TEST_PREVIOUS_BIN";

/// The previous binary and the version it prints, or `None` (with a message) when the variable
/// is unset. A path that does not run, or a binary of this very version, fails the test: that
/// is a mistake to fix, not a reason to skip.
fn previous(test: &str) -> Option<(PathBuf, String)> {
    let Some(path) = std::env::var_os(PREVIOUS_BIN) else {
        eprintln!(
            "skipping {test}: set {PREVIOUS_BIN} to the previous release's binary (export {PREVIOUS_BIN}=$(tests/upgrade/build-previous.sh))"
        );
        return None;
    };
    let path = PathBuf::from(path);
    let out = Command::new(&path)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("{PREVIOUS_BIN}={} does not run: {e}", path.display()));
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    let version = line
        .strip_prefix("endpoint-copier ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("{} --version printed {line:?}", path.display()))
        .to_owned();
    assert_ne!(
        version,
        env!("CARGO_PKG_VERSION"),
        "{PREVIOUS_BIN} is a binary of this version, not the previous one"
    );
    Some((path, version))
}

/// A config directory for `binary` as `identity`: the bed's pair probing `/readyz`, Lease
/// timings 4/2/1 s, member heartbeats every second (expiry 3 s), keys both versions know.
fn drop_in(bed: &Bed, identity: &str) -> tempfile::TempDir {
    let world = &bed.world;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = world.testbed().unwrap().kubeconfig_for(identity);
    std::fs::write(
        dir.path().join("50-site.toml"),
        format!(
            "kubeconfig = \"{}\"\n\n[[pair]]\nsource = \"{}\"\ntarget = \"{}\"\nprobe = {{ https = \"/readyz\" }}\n\n[lease]\nnamespace = \"{}\"\nidentity = \"{identity}\"\nduration_secs = 4\nrenew_deadline_secs = 2\nretry_period_secs = 1\nruntime_dir = \"{}\"\n\n[members]\nnamespace = \"{}\"\nheartbeat_secs = 1\nexpiry_secs = 3\n\n[metrics]\nlisten = \"\"\n",
            kubeconfig.display(),
            world.source(),
            world.target(),
            world.ns,
            runtime_dir().display(),
            world.ns,
        ),
    )
    .unwrap();
    dir
}

/// One state of the target's slices in watch order.
#[derive(Clone, Debug)]
enum Seen {
    /// A slice as written: its name and its ready and not-ready addresses.
    Written {
        name: String,
        ready: BTreeSet<String>,
        not_ready: BTreeSet<String>,
    },
    /// A slice deleted.
    Deleted(String),
}

/// Every event on the target's slices since before the first daemon started.
struct History {
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl History {
    async fn start(bed: &Bed) -> History {
        let world = &bed.world;
        let api: Api<EndpointSlice> = Api::namespaced(world.client.clone(), &world.ns);
        let config =
            watcher::Config::default().labels(&format!("{}=vip", names::SERVICE_NAME_LABEL));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let (listed_tx, listed_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut listed = Some(listed_tx);
            let mut stream = watcher::watcher(api, config).boxed();
            while let Some(event) = stream.next().await {
                let seen = match event {
                    Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => {
                        let (mut ready, mut not_ready) = (BTreeSet::new(), BTreeSet::new());
                        for e in &s.endpoints {
                            let is_ready =
                                e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                            let set = if is_ready { &mut ready } else { &mut not_ready };
                            set.extend(e.addresses.iter().cloned());
                        }
                        Seen::Written {
                            name: s.metadata.name.unwrap_or_default(),
                            ready,
                            not_ready,
                        }
                    }
                    Ok(watcher::Event::Delete(s)) => {
                        Seen::Deleted(s.metadata.name.unwrap_or_default())
                    }
                    Ok(watcher::Event::InitDone) => {
                        if let Some(tx) = listed.take() {
                            let _ = tx.send(());
                        }
                        continue;
                    }
                    // A relist is no change; a watch error is retried by the watcher.
                    Ok(watcher::Event::Init) | Err(_) => continue,
                };
                log.lock().unwrap().push(seen);
            }
        });
        listed_rx.await.unwrap();
        History { seen, task }
    }

    /// Stops watching and checks the history: no slice deleted, `evicted` never ready again
    /// once written not ready, the target never without a ready endpoint once it had one.
    fn check(self, evicted: &str) -> Vec<Seen> {
        self.task.abort();
        let seen = self.seen.lock().unwrap().clone();
        let deleted: Vec<&str> = seen
            .iter()
            .filter_map(|s| match s {
                Seen::Deleted(name) => Some(name.as_str()),
                Seen::Written { .. } => None,
            })
            .collect();
        assert!(
            deleted.is_empty(),
            "slices deleted: {deleted:?}\nhistory: {seen:#?}"
        );
        // Both versions write the one slice the other wrote, never one of their own.
        let names: BTreeSet<&str> = seen
            .iter()
            .filter_map(|s| match s {
                Seen::Written { name, .. } => Some(name.as_str()),
                Seen::Deleted(_) => None,
            })
            .collect();
        assert_eq!(names, BTreeSet::from(["vip"]), "{seen:#?}");
        let mut out_since = None;
        let mut had_ready = false;
        for (i, s) in seen.iter().enumerate() {
            let Seen::Written {
                ready, not_ready, ..
            } = s
            else {
                continue;
            };
            if not_ready.contains(evicted) && out_since.is_none() {
                out_since = Some(i);
            }
            if let Some(at) = out_since {
                assert!(
                    !ready.contains(evicted),
                    "{evicted} written ready again at {i} after its eviction at {at}: {seen:#?}"
                );
            }
            assert!(
                !(had_ready && ready.is_empty()),
                "the target lost its last ready endpoint at {i}: {seen:#?}"
            );
            had_ready |= !ready.is_empty();
        }
        assert!(
            out_since.is_some(),
            "{evicted} was never evicted: {seen:#?}"
        );
        seen
    }
}

/// The holder of the group's election Lease.
async fn holder(bed: &Bed) -> Option<String> {
    let api: Api<Lease> = Api::namespaced(bed.world.client.clone(), &bed.world.ns);
    let lease = api.get_opt(names::LEASE_NAME).await.ok()??;
    lease.spec?.holder_identity.filter(|h| !h.is_empty())
}

/// `status` of this version on `dir`'s host, as an operator runs it.
fn status_output(dir: &Path) -> String {
    let out = Command::new(BIN)
        .args(["--config-dir", dir.to_str().unwrap(), "status"])
        .env_remove("ENDPOINT_COPIER_LOG")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Deletes of EndpointSlices in the bed's namespace in the test bed's request log.
fn slice_deletes(bed: &Bed) -> Vec<String> {
    bed.world
        .testbed()
        .unwrap()
        .requests()
        .into_iter()
        .filter(|r| {
            r.resource == "endpointslices" && r.namespace.as_deref() == Some(bed.world.ns.as_str())
        })
        .filter(|r| matches!(r.verb, Verb::Delete | Verb::DeleteCollection))
        .map(|r| format!("{} {} by {}", r.path, r.code, r.identity))
        .collect()
}

/// The scenario, `old_leads` deciding which version starts first (and leads), the other
/// joining, then taking over.
async fn rolling_upgrade(test: &str, old_leads: bool) {
    let Some((old_bin, old_version)) = previous(test) else {
        return;
    };
    let Some(ns) = netns::enter(test) else { return };
    let bed = Bed::new(ns).await;
    let history = History::start(&bed).await;
    let new_bin = PathBuf::from(BIN);
    let (first, second) = if old_leads {
        (&old_bin, &new_bin)
    } else {
        (&new_bin, &old_bin)
    };
    let mut systemd = Systemd::new();
    let new_is = |bin: &PathBuf| (bin == &new_bin).then_some(&systemd);
    let (dir1, dir2) = (drop_in(&bed, "node-1"), drop_in(&bed, "node-2"));
    let name = |bin: &PathBuf| {
        if bin == &new_bin {
            "this version"
        } else {
            "the previous release"
        }
    };
    let mut node1 = Host::spawn(name(first), first, dir1.path(), new_is(first));
    bed.vip(&[A, B, C]).await;
    bed.published("node-1", A, endpoint_copier::probe::Verdict::Up)
        .await;
    let mut node2 = Host::spawn(name(second), second, dir2.path(), new_is(second));
    bed.published("node-2", A, endpoint_copier::probe::Verdict::Up)
        .await;
    assert_eq!(holder(&bed).await.as_deref(), Some("node-1"));

    // Both versions live: this version says so, in STATUS and in `status`.
    let ours = env!("CARGO_PKG_VERSION");
    let both = format!("members run {old_version} and {ours}");
    eventually("STATUS naming both versions", WITHIN, || {
        let s = systemd.last_status().filter(|s| s.contains(&both));
        async move { s }
    })
    .await;
    let new_dir = if old_leads { &dir2 } else { &dir1 };
    let status = status_output(new_dir.path());
    assert!(status.contains(&format!("warning: {both}")), "{status}");

    // The first leader evicts B: both hosts see it refuse.
    bed.api(B).set_mode(Mode::Refuse);
    bed.vip(&[A, C]).await;

    // The first leader stops (its host is upgraded); the other takes over without undoing
    // the eviction, and evicts C when it refuses too (its own ballot alone once node-1's
    // member expires; A, the last ready one, stays).
    node1.stop();
    eventually("node-2 to lead", WITHIN, || async {
        (holder(&bed).await.as_deref() == Some("node-2")).then_some(())
    })
    .await;
    bed.api(C).set_mode(Mode::Refuse);
    bed.vip(&[A]).await;
    node2.stop();

    let seen = history.check(B);
    assert!(
        seen.iter()
            .any(|s| matches!(s, Seen::Written { not_ready, .. } if not_ready.contains(C))),
        "the second leader wrote C not ready: {seen:#?}"
    );
    let deletes = slice_deletes(&bed);
    assert!(deletes.is_empty(), "EndpointSlice deletes: {deletes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_previous_release_leads_then_this_version_joins_and_takes_over() {
    rolling_upgrade(
        "upgrade::the_previous_release_leads_then_this_version_joins_and_takes_over",
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn this_version_leads_then_the_previous_release_joins_and_takes_over() {
    rolling_upgrade(
        "upgrade::this_version_leads_then_the_previous_release_joins_and_takes_over",
        false,
    )
    .await;
}
