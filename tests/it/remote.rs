//! Remote sources: `remote::spawn` and `remote::check` against a test bed standing in for the
//! other cluster. Always a dedicated test bed, even when the suite runs against a real cluster:
//! the remote is reached through a kubeconfig of its own, and its faults (outage, revoked
//! credentials, withdrawn rights) are the point.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::*;
use endpoint_copier::remote::{self, RemoteSource, Trouble, Update, View};
use endpoint_copier::shutdown::Shutdown;
use endpoint_copier_testbed::{Match, Partition, Verb};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::{Api, Client};

/// The identity the remote kubeconfig authenticates as.
const READER: &str = "remote-reader";
/// The namespace of the remote Service (a fresh test bed has it).
const NS: &str = "default";
/// How long any expected view may take: watch backoff is at most 5 s, the kubeconfig poll 5 s.
const LIMIT: Duration = Duration::from_secs(20);

/// A remote cluster with Service `default/db` and its slice `db-1`, and the receiving end of
/// `remote::spawn`.
struct Remote {
    tb: TestBed,
    /// Admin client of the remote, for the test's own writes.
    admin: Client,
    /// The kubeconfig the watched source names.
    kubeconfig: PathBuf,
    updates: tokio::sync::mpsc::Receiver<Update>,
    shutdown: Shutdown,
    task: Option<tokio::task::JoinHandle<()>>,
    /// The last view received per source.
    last: std::collections::BTreeMap<RemoteSource, View>,
}

impl Remote {
    /// A remote cluster seeded with `default/db` holding `addrs` (no watch started yet).
    async fn seeded(addrs: &[&str]) -> Remote {
        let tb = TestBed::start().await;
        let admin = client_for(tb.kubeconfig()).await;
        create(&admin, NS, &source_service(NS, "db")).await;
        create(&admin, NS, &source_slice(NS, "db", "db-1", "IPv4", addrs)).await;
        let kubeconfig = tb.kubeconfig_for(READER);
        let (_tx, updates) = tokio::sync::mpsc::channel(1);
        Remote {
            tb,
            admin,
            kubeconfig,
            updates,
            shutdown: Shutdown::new(),
            task: None,
            last: Default::default(),
        }
    }

    /// A remote seeded with `default/db` holding `address`, watched until its first view.
    async fn watching(address: &str) -> (Remote, RemoteSource) {
        let mut remote = Remote::seeded(&[address]).await;
        let db = remote.source("default/db");
        remote.spawn([db.clone()].into());
        remote
            .until(&db, "the first view", |v| holds(v, &[address]))
            .await;
        (remote, db)
    }

    fn source(&self, service: &str) -> RemoteSource {
        source_at(&self.kubeconfig, service)
    }

    /// Starts `remote::spawn` over `sources` (last known endpoints kept for the default 300 s).
    fn spawn(&mut self, sources: BTreeSet<RemoteSource>) {
        self.spawn_keeping(sources, Duration::from_secs(300));
    }

    /// Starts `remote::spawn` over `sources`, a source in trouble expiring after `keep`.
    fn spawn_keeping(&mut self, sources: BTreeSet<RemoteSource>, keep: Duration) {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        self.updates = rx;
        let options = remote::Options {
            allow_insecure_tls: false,
            keep_last_known: keep,
            connector: endpoint_copier::client::transport::Connector::Tcp,
        };
        self.task = Some(remote::spawn(sources, options, tx, self.shutdown.clone()));
    }

    /// Waits until the view of `source` satisfies `pred`; returns it.
    async fn until(
        &mut self,
        source: &RemoteSource,
        what: &str,
        pred: impl Fn(&View) -> bool,
    ) -> View {
        if let Some(v) = self.last.get(source)
            && pred(v)
        {
            return v.clone();
        }
        let deadline = tokio::time::Instant::now() + LIMIT;
        loop {
            let update = tokio::time::timeout_at(deadline, self.updates.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "timed out after {LIMIT:?} waiting for: {what} (last view: {:?})",
                        self.last.get(source)
                    )
                })
                .expect("remote::spawn keeps sending");
            self.last.insert(update.source.clone(), update.view.clone());
            if update.source == *source && pred(&update.view) {
                return update.view;
            }
        }
    }

    /// Replaces slice `db-1` so it holds exactly `addrs`.
    async fn set_slice(&self, addrs: &[&str]) {
        let api: Api<EndpointSlice> = Api::namespaced(self.admin.clone(), NS);
        let mut slice = source_slice(NS, "db", "db-1", "IPv4", addrs);
        slice.metadata.resource_version = api.get("db-1").await.unwrap().metadata.resource_version;
        api.replace("db-1", &Default::default(), &slice)
            .await
            .unwrap();
    }

    /// Stops the task and checks it ends.
    async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .expect("remote::spawn ends at shutdown")
                .unwrap();
        }
    }
}

fn source_at(kubeconfig: &Path, service: &str) -> RemoteSource {
    RemoteSource {
        kubeconfig: kubeconfig.to_owned(),
        service: service.parse().unwrap(),
    }
}

/// Sorted addresses of every endpoint the view's slices hold; `None` before the first list.
fn addresses(view: &View) -> Option<Vec<String>> {
    view.slices.as_ref().map(ready_addresses)
}

fn holds(view: &View, want: &[&str]) -> bool {
    addresses(view).is_some_and(|a| a == want)
}

#[tokio::test]
async fn the_first_view_holds_the_remote_slices_and_a_change_follows() {
    let mut remote = Remote::seeded(&["198.51.100.1"]).await;
    let db = remote.source("default/db");
    remote.spawn([db.clone()].into());
    let first = remote
        .until(&db, "the slices of default/db", |v| {
            holds(v, &["198.51.100.1"]) && v.service_exists == Some(true)
        })
        .await;
    assert_eq!(first.trouble, None);
    remote.set_slice(&["198.51.100.2", "203.0.113.2"]).await;
    remote
        .until(&db, "the changed slice", |v| {
            holds(v, &["198.51.100.2", "203.0.113.2"])
        })
        .await;
    remote.stop().await;
}

#[tokio::test]
async fn an_outage_keeps_the_slices_and_the_recovery_clears_the_trouble() {
    let (mut remote, db) = Remote::watching("198.51.100.1").await;
    remote.tb.go_down().await;
    let down = remote
        .until(&db, "Unreachable", |v| {
            matches!(v.trouble, Some(Trouble::Unreachable(_)))
        })
        .await;
    assert!(holds(&down, &["198.51.100.1"]), "fail-static: {down:?}");
    remote.tb.come_up().await;
    remote
        .until(&db, "the recovery", |v| {
            v.trouble.is_none() && holds(v, &["198.51.100.1"])
        })
        .await;
    remote.set_slice(&["203.0.113.9"]).await;
    remote
        .until(&db, "a change after the recovery", |v| {
            holds(v, &["203.0.113.9"])
        })
        .await;
    remote.stop().await;
}

#[tokio::test]
async fn a_source_in_trouble_for_longer_than_the_limit_expires_until_it_recovers() {
    let mut remote = Remote::seeded(&["198.51.100.1"]).await;
    let db = remote.source("default/db");
    remote.spawn_keeping([db.clone()].into(), Duration::from_secs(2));
    remote
        .until(&db, "the first view", |v| holds(v, &["198.51.100.1"]))
        .await;
    remote.tb.go_down().await;
    let down = remote
        .until(&db, "Unreachable", |v| {
            matches!(v.trouble, Some(Trouble::Unreachable(_)))
        })
        .await;
    assert!(!down.expired, "not before the limit: {down:?}");
    let started = tokio::time::Instant::now();
    // Nothing else happens meanwhile: the expiry comes by itself.
    let expired = remote.until(&db, "expired", |v| v.expired).await;
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert!(
        holds(&expired, &["198.51.100.1"]),
        "still the last known: {expired:?}"
    );
    remote.tb.come_up().await;
    remote
        .until(&db, "the recovery", |v| v.trouble.is_none() && !v.expired)
        .await;
    remote.stop().await;
}

#[tokio::test]
async fn revoked_credentials_are_unauthorized_until_the_kubeconfig_is_rotated() {
    let (mut remote, db) = Remote::watching("198.51.100.1").await;
    remote.tb.revoke(READER);
    // Open watches were authenticated when they started: end them, as a real apiserver's
    // watch timeout would.
    remote.tb.close_watches();
    let refused = remote
        .until(&db, "Unauthorized", |v| {
            matches!(v.trouble, Some(Trouble::Unauthorized(_)))
        })
        .await;
    assert!(holds(&refused, &["198.51.100.1"]), "fail-static");
    remote.tb.rotate_client_certificate(&remote.kubeconfig);
    remote
        .until(&db, "the recovery with the new certificate", |v| {
            v.trouble.is_none()
        })
        .await;
    remote.stop().await;
}

#[tokio::test]
async fn a_rotated_certificate_keeps_the_source_readable() {
    let (mut remote, db) = Remote::watching("198.51.100.1").await;
    // RKE2-style: a new certificate in the file, the old one expiring at the same moment.
    remote.tb.revoke(READER);
    remote.tb.rotate_client_certificate(&remote.kubeconfig);
    remote.tb.close_watches();
    remote.set_slice(&["198.51.100.3"]).await;
    // An Unauthorized in between is allowed (the reload follows it at once); the change must
    // arrive within a few seconds, with no trouble left.
    let started = tokio::time::Instant::now();
    remote
        .until(&db, "the change, read with the new certificate", |v| {
            holds(v, &["198.51.100.3"]) && v.trouble.is_none()
        })
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "{:?}",
        started.elapsed()
    );
    remote.stop().await;
}

#[tokio::test]
async fn a_withdrawn_right_is_forbidden_until_it_is_granted_again() {
    let (mut remote, db) = Remote::watching("198.51.100.1").await;
    for verb in [Verb::List, Verb::Watch] {
        remote.tb.set_allowed(READER, verb, "endpointslices", false);
    }
    remote.tb.close_watches();
    let forbidden = remote
        .until(&db, "Forbidden", |v| {
            matches!(v.trouble, Some(Trouble::Forbidden(_)))
        })
        .await;
    assert!(holds(&forbidden, &["198.51.100.1"]), "fail-static");
    for verb in [Verb::List, Verb::Watch] {
        remote.tb.set_allowed(READER, verb, "endpointslices", true);
    }
    remote
        .until(&db, "the recovery once allowed", |v| v.trouble.is_none())
        .await;
    remote.stop().await;
}

#[tokio::test]
async fn a_deleted_service_is_reported_missing() {
    let mut remote = Remote::seeded(&["198.51.100.1"]).await;
    let db = remote.source("default/db");
    remote.spawn([db.clone()].into());
    remote
        .until(&db, "the first view", |v| v.service_exists == Some(true))
        .await;
    delete::<Service>(&remote.admin, NS, "db").await;
    let missing = remote
        .until(&db, "ServiceMissing", |v| {
            v.trouble == Some(Trouble::ServiceMissing)
        })
        .await;
    assert_eq!(missing.service_exists, Some(false));
    remote.stop().await;
}

#[tokio::test]
async fn a_kubeconfig_written_after_the_start_is_waited_for() {
    let mut remote = Remote::seeded(&["198.51.100.1"]).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("remote.yaml");
    let db = source_at(&path, "default/db");
    remote.spawn([db.clone()].into());
    let waiting = remote
        .until(&db, "Waiting", |v| v.trouble == Some(Trouble::Waiting))
        .await;
    assert_eq!(waiting.slices, None);
    let tmp = dir.path().join(".remote.yaml.tmp");
    std::fs::copy(&remote.kubeconfig, &tmp).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    remote
        .until(&db, "the slices once the kubeconfig exists", |v| {
            holds(v, &["198.51.100.1"]) && v.trouble.is_none()
        })
        .await;
    remote.stop().await;
}

#[tokio::test]
async fn sources_of_one_kubeconfig_get_a_view_each() {
    let mut remote = Remote::seeded(&["198.51.100.1"]).await;
    create(&remote.admin, NS, &source_service(NS, "cache")).await;
    create(
        &remote.admin,
        NS,
        &source_slice(NS, "cache", "cache-1", "IPv6", &["2001:db8::7"]),
    )
    .await;
    let db = remote.source("default/db");
    let cache = remote.source("default/cache");
    let absent = remote.source("default/absent");
    // One slice list answers late: a view is the sum of two independent watches (the Service
    // by name, its slices by label), and either may complete first. A view that says
    // `ServiceMissing` before its slices are listed is true (`slices: None` means "not listed
    // yet"), so each wait below asks for what it checks, not for an order of arrival.
    remote.tb.delay_next(
        Match::any().verb(Verb::List).resource("endpointslices"),
        1,
        Duration::from_millis(500),
    );
    remote.spawn([db.clone(), cache.clone(), absent.clone()].into());
    remote
        .until(&db, "db", |v| holds(v, &["198.51.100.1"]))
        .await;
    remote
        .until(&cache, "cache", |v| holds(v, &["2001:db8::7"]))
        .await;
    let a = remote
        .until(&absent, "absent, missing and listed", |v| {
            v.trouble == Some(Trouble::ServiceMissing) && v.slices.is_some()
        })
        .await;
    assert_eq!(a.slices, Some(vec![]), "no slices of a missing Service");
    remote.stop().await;
}

#[tokio::test]
async fn a_kubeconfig_repointed_at_another_cluster_lists_that_cluster_afresh() {
    let mut first = Remote::seeded(&["198.51.100.1"]).await;
    let second = Remote::seeded(&["203.0.113.1"]).await;
    // Both clusters have seen the same writes: the first one's resourceVersions are valid
    // numbers in the second one too, which a resumed watch would accept.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("remote.yaml");
    std::fs::copy(&first.kubeconfig, &path).unwrap();
    let db = source_at(&path, "default/db");
    first.spawn([db.clone()].into());
    first
        .until(&db, "the first cluster's slices", |v| {
            holds(v, &["198.51.100.1"])
        })
        .await;
    // The same file now names the second cluster (another server, another CA): written
    // beside it and renamed over it, as configuration management does.
    let tmp = dir.path().join(".remote.yaml.tmp");
    std::fs::copy(&second.kubeconfig, &tmp).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    let seen = first
        .until(&db, "the second cluster's slices", |v| {
            addresses(v).is_some_and(|a| a.contains(&"203.0.113.1".to_owned()))
        })
        .await;
    assert!(
        holds(&seen, &["203.0.113.1"]),
        "no mix of two clusters: {seen:?}"
    );
    // And it follows the second cluster from now on.
    second.set_slice(&["203.0.113.2"]).await;
    first
        .until(&db, "a change in the second cluster", |v| {
            holds(v, &["203.0.113.2"]) && v.trouble.is_none()
        })
        .await;
    first.stop().await;
}

#[tokio::test]
async fn check_reports_a_healthy_remote() {
    let remote = Remote::seeded(&["198.51.100.1", "203.0.113.1"]).await;
    let db = remote.source("default/db");
    let reaches = endpoint_copier::inspect::remote::check(&[db.clone()].into(), false).await;
    assert_eq!(reaches.len(), 1);
    let reach = &reaches[0];
    assert_eq!(reach.kubeconfig, remote.kubeconfig);
    let server = reach.server.as_deref().unwrap();
    assert!(server.starts_with(&remote.tb.url()), "{server}");
    assert!(reach.problems.is_empty(), "{:?}", reach.problems);
    let s = &reach.sources[0];
    assert_eq!(s.source, db);
    assert_eq!(s.service_exists, Some(true));
    assert_eq!(s.ready_endpoints, Some(2));
    assert!(s.problems.is_empty(), "{:?}", s.problems);
}

#[tokio::test]
async fn check_names_a_missing_right_and_a_missing_service() {
    let remote = Remote::seeded(&["198.51.100.1"]).await;
    remote
        .tb
        .set_allowed(READER, Verb::List, "endpointslices", false);
    let db = remote.source("default/db");
    let nope = remote.source("default/nope");
    let reaches =
        endpoint_copier::inspect::remote::check(&[db.clone(), nope.clone()].into(), false).await;
    let reach = &reaches[0];
    assert!(reach.problems.is_empty(), "{:?}", reach.problems);
    let of = |s: &RemoteSource| reach.sources.iter().find(|r| r.source == *s).unwrap();
    let db_reach = of(&db);
    assert_eq!(db_reach.ready_endpoints, None);
    assert_eq!(db_reach.service_exists, Some(true));
    let path = remote.kubeconfig.display().to_string();
    assert!(
        db_reach.problems.iter().any(|p| p.contains(
            "missing permission: list endpointslices.discovery.k8s.io in namespace default"
        ) && p.contains(&path)),
        "{:?}",
        db_reach.problems
    );
    assert_eq!(db_reach.problems.len(), 1, "{:?}", db_reach.problems);
    let nope_reach = of(&nope);
    assert_eq!(nope_reach.service_exists, Some(false));
    assert!(
        nope_reach.problems.contains(&format!(
            "Service default/nope does not exist in the cluster of {path}"
        )),
        "{:?}",
        nope_reach.problems
    );
}

#[tokio::test]
async fn check_of_a_remote_that_is_down_ends_with_one_problem() {
    let remote = Remote::seeded(&["198.51.100.1"]).await;
    remote.tb.go_down().await;
    let sources: BTreeSet<RemoteSource> =
        [remote.source("default/db"), remote.source("default/other")].into();
    let started = tokio::time::Instant::now();
    let reaches = endpoint_copier::inspect::remote::check(&sources, false).await;
    assert!(started.elapsed() < Duration::from_secs(15));
    let reach = &reaches[0];
    assert_eq!(reach.problems.len(), 1, "{:?}", reach.problems);
    assert!(
        reach.problems[0].contains("cannot be reached"),
        "{:?}",
        reach.problems
    );
}

#[tokio::test]
async fn each_kubeconfig_has_credentials_of_its_own() {
    let mut remote = Remote::seeded(&["198.51.100.1"]).await;
    let other = remote.tb.kubeconfig_for("other-reader");
    let db = remote.source("default/db");
    let db_elsewhere = source_at(&other, "default/db");
    remote.spawn([db.clone(), db_elsewhere.clone()].into());
    for s in [&db, &db_elsewhere] {
        remote
            .until(s, "the first view", |v| holds(v, &["198.51.100.1"]))
            .await;
    }
    remote.tb.revoke(READER);
    remote.tb.close_watches();
    remote
        .until(&db, "Unauthorized", |v| {
            matches!(v.trouble, Some(Trouble::Unauthorized(_)))
        })
        .await;
    remote.set_slice(&["203.0.113.4"]).await;
    let fine = remote
        .until(
            &db_elsewhere,
            "the change through the other kubeconfig",
            |v| holds(v, &["203.0.113.4"]),
        )
        .await;
    assert_eq!(fine.trouble, None);
    remote.stop().await;
}

#[tokio::test]
async fn a_black_holed_remote_is_unreachable_and_its_watches_start_over_when_it_answers() {
    let (mut remote, db) = Remote::watching("198.51.100.1").await;
    // Requests hang and open watches go silent: nothing fails by itself.
    remote.tb.partition(READER, Partition::Hang);
    let cut = remote
        .until(&db, "Unreachable", |v| {
            matches!(v.trouble, Some(Trouble::Unreachable(_)))
        })
        .await;
    assert!(holds(&cut, &["198.51.100.1"]), "fail-static: {cut:?}");
    remote.set_slice(&["203.0.113.5"]).await;
    remote.tb.heal(READER);
    remote
        .until(&db, "the change once the remote answers", |v| {
            holds(v, &["203.0.113.5"]) && v.trouble.is_none()
        })
        .await;
    remote.stop().await;
}

#[tokio::test]
async fn check_of_a_black_holed_remote_ends_within_seconds() {
    let remote = Remote::seeded(&["198.51.100.1"]).await;
    remote.tb.partition(READER, Partition::Hang);
    let sources: BTreeSet<RemoteSource> =
        [remote.source("default/db"), remote.source("default/other")].into();
    let started = tokio::time::Instant::now();
    let reaches = endpoint_copier::inspect::remote::check(&sources, false).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(reaches[0].problems.len(), 1, "{:?}", reaches[0].problems);
    assert!(
        reaches[0].problems[0].contains("no answer within 5 s"),
        "{:?}",
        reaches[0].problems
    );
    remote.tb.heal(READER);
}
