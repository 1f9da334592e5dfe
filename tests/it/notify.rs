//! sd-notify as systemd sees it: a real unix datagram socket stands in for `NOTIFY_SOCKET`, and
//! the tests read the messages the daemon's `Notifier` and watchdog send to it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use endpoint_copier::notify::{
    Heartbeats, Notifier, PairStatus, STATUS_STOPPING, Standing, StatusView, Watchdog,
    run_watchdog, status_line,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A bound socket playing systemd, in a temp dir that lives as long as it.
struct FakeSystemd {
    _dir: tempfile::TempDir,
    socket: UnixDatagram,
    path: std::path::PathBuf,
}

impl FakeSystemd {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_nonblocking(true).unwrap();
        FakeSystemd {
            _dir: dir,
            socket,
            path,
        }
    }

    fn notifier(&self, watchdog: Option<Duration>) -> Notifier {
        Notifier::at(&self.path, watchdog).unwrap()
    }

    /// Every message received so far, in order.
    fn drain(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.socket.recv(&mut buf) {
            out.push(String::from_utf8(buf[..n].to_vec()).unwrap());
        }
        out
    }

    /// Waits (bounded) for the next message, for the test that runs the real timer.
    fn recv_within(&self, limit: Duration) -> Option<String> {
        self.socket.set_nonblocking(false).unwrap();
        self.socket.set_read_timeout(Some(limit)).unwrap();
        let mut buf = [0u8; 4096];
        let got = self
            .socket
            .recv(&mut buf)
            .ok()
            .map(|n| String::from_utf8(buf[..n].to_vec()).unwrap());
        self.socket.set_nonblocking(true).unwrap();
        got
    }
}

fn leader_view(endpoints: usize, synced: u64) -> StatusView {
    StatusView {
        role: Standing::Leader,
        pairs: vec![PairStatus {
            target: "default/kubernetes-vip".into(),
            endpoints,
            synced_ago: Some(Duration::from_secs(synced)),
            holding: None,
            evicted: 0,
            drained: 0,
            failing_sources: Vec::new(),
        }],
        last_error: None,
    }
}

#[test]
fn lifecycle_sends_ready_status_watchdog_stopping_in_order() {
    let systemd = FakeSystemd::new();
    let n = systemd.notifier(Some(Duration::from_secs(30)));
    n.ready();
    n.status(&status_line(&StatusView {
        role: Standing::Waiting("/etc/rancher/rke2/rke2.yaml".into()),
        pairs: vec![],
        last_error: None,
    }));
    n.status(&status_line(&leader_view(3, 2)));
    n.watchdog();
    n.stopping();
    // The daemon's own STATUS=stopping after STOPPING=1 is not sent twice.
    n.status(STATUS_STOPPING);
    assert_eq!(
        systemd.drain(),
        [
            "READY=1",
            "STATUS=waiting for /etc/rancher/rke2/rke2.yaml",
            "STATUS=leader, default/kubernetes-vip: 3 endpoints, synced 2s ago",
            "WATCHDOG=1",
            "STOPPING=1",
            "STATUS=stopping",
        ]
    );
}

#[test]
fn unchanged_status_text_is_sent_once() {
    let systemd = FakeSystemd::new();
    let n = systemd.notifier(None);
    let clone = n.clone();
    n.status("follower, leader node-2");
    clone.status("follower, leader node-2");
    n.status("leader");
    n.status("follower, leader node-2");
    assert_eq!(
        systemd.drain(),
        [
            "STATUS=follower, leader node-2",
            "STATUS=leader",
            "STATUS=follower, leader node-2"
        ]
    );
}

#[test]
fn status_is_one_line_even_when_given_several() {
    let systemd = FakeSystemd::new();
    let n = systemd.notifier(None);
    n.status("leader\nsecond line");
    assert_eq!(systemd.drain(), ["STATUS=leader second line"]);
}

#[test]
fn missing_socket_is_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let n = Notifier::at(&dir.path().join("nobody-listens"), None).unwrap();
    // Must neither panic nor block; the failure is only logged.
    n.ready();
    n.status("leader");
    n.stopping();
    assert!(n.is_enabled());
}

#[test]
fn watchdog_interval_is_what_the_notifier_was_given() {
    let systemd = FakeSystemd::new();
    assert_eq!(
        systemd
            .notifier(Some(Duration::from_secs(30)))
            .watchdog_interval(),
        Some(Duration::from_secs(30))
    );
    assert_eq!(systemd.notifier(None).watchdog_interval(), None);
}

#[test]
fn watchdog_pings_stop_when_a_loop_stops_ticking_and_resume_when_it_ticks() {
    let systemd = FakeSystemd::new();
    let interval = Duration::from_secs(30);
    let beats = Heartbeats::new();
    let start = Instant::now();
    let lease = beats.register("lease");
    let watch = beats.register("watch");
    let mut wd = Watchdog::new(systemd.notifier(Some(interval)), beats.clone(), interval);
    let at = |s: u64| start + Duration::from_secs(s);

    // Both loops fresh: ping.
    assert!(wd.check(at(15)));
    assert_eq!(systemd.drain(), ["WATCHDOG=1"]);

    // The lease loop keeps ticking, the watch loop is wedged since its registration.
    lease.tick_at(at(20));
    assert!(wd.check(at(29)));
    lease.tick_at(at(35));
    assert!(!wd.check(at(45)));
    assert_eq!(beats.stale_at(at(45), interval), ["watch"]);
    lease.tick_at(at(50));
    assert!(!wd.check(at(60)));
    assert_eq!(systemd.drain(), ["WATCHDOG=1"]);

    // The watch loop makes progress again: pings resume.
    watch.tick_at(at(61));
    assert!(wd.check(at(62)));
    assert_eq!(systemd.drain(), ["WATCHDOG=1"]);

    // Nobody ticks for longer than the interval: both are named.
    assert!(!wd.check(at(100)));
    assert_eq!(beats.stale_at(at(100), interval), ["lease", "watch"]);
    assert!(systemd.drain().is_empty());
}

#[test]
fn a_dropped_beat_still_counts_as_a_wedged_loop() {
    let systemd = FakeSystemd::new();
    let interval = Duration::from_secs(30);
    let beats = Heartbeats::new();
    let start = Instant::now();
    drop(beats.register("watch"));
    let mut wd = Watchdog::new(systemd.notifier(Some(interval)), beats.clone(), interval);
    assert!(!wd.check(start + Duration::from_secs(40)));
    assert_eq!(
        beats.stale_at(start + Duration::from_secs(40), interval),
        ["watch"]
    );
    assert!(systemd.drain().is_empty());
}

#[tokio::test(flavor = "current_thread")]
async fn run_watchdog_pings_at_half_the_interval_and_returns_on_shutdown() {
    let systemd = FakeSystemd::new();
    // A short real interval: tokio's paused clock needs the `test-util` feature, which the crate
    // does not enable; the wait below is bounded, not a guess.
    let notifier = systemd.notifier(Some(Duration::from_millis(400)));
    let beats = Heartbeats::new();
    let beat = beats.register("loop");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run_watchdog(notifier, beats, shutdown.clone()));
    let ticker = tokio::spawn(async move {
        loop {
            beat.tick();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let (first, second) = tokio::task::spawn_blocking(move || {
        let a = systemd.recv_within(Duration::from_secs(5));
        let b = systemd.recv_within(Duration::from_secs(5));
        (a, b)
    })
    .await
    .unwrap();
    assert_eq!(first.as_deref(), Some("WATCHDOG=1"));
    assert_eq!(second.as_deref(), Some("WATCHDOG=1"));
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("run_watchdog returns once shutdown is cancelled")
        .unwrap();
    ticker.abort();
}

#[tokio::test(flavor = "current_thread")]
async fn run_watchdog_without_interval_waits_for_shutdown() {
    let systemd = FakeSystemd::new();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run_watchdog(
        systemd.notifier(None),
        Heartbeats::new(),
        shutdown.clone(),
    ));
    tokio::task::yield_now().await;
    assert!(!task.is_finished());
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    assert!(systemd.drain().is_empty());
}

#[test]
fn status_line_for_a_leader_shows_each_pair_and_its_sync_age() {
    let mut v = leader_view(3, 2);
    v.pairs.push(PairStatus {
        target: "default/other-vip".into(),
        endpoints: 1,
        synced_ago: Some(Duration::from_secs(150)),
        holding: None,
        evicted: 0,
        drained: 0,
        failing_sources: Vec::new(),
    });
    assert_eq!(
        status_line(&v),
        "leader, default/kubernetes-vip: 3 endpoints, synced 2s ago; default/other-vip: 1 endpoint, synced 2m ago"
    );
}

#[test]
fn status_line_names_a_failing_source_and_counts_several() {
    let mut v = leader_view(3, 2);
    v.pairs[0].failing_sources =
        vec!["app/db in the cluster of /etc/endpoint-copier/remote.yaml".into()];
    assert_eq!(
        status_line(&v),
        "leader, default/kubernetes-vip: 3 endpoints, synced 2s ago, source failing: app/db in the cluster of /etc/endpoint-copier/remote.yaml"
    );
    v.pairs[0].failing_sources.push("static 203.0.113.1".into());
    assert!(
        status_line(&v).ends_with(", 2 sources failing"),
        "{}",
        status_line(&v)
    );
}

#[test]
fn status_line_counts_the_endpoints_the_probes_evicted() {
    let mut v = leader_view(3, 2);
    v.pairs[0].evicted = 1;
    assert_eq!(
        status_line(&v),
        "leader, default/kubernetes-vip: 3 endpoints, 1 evicted, synced 2s ago"
    );
}

#[test]
fn status_line_for_a_leader_before_its_first_sync_says_so() {
    let mut v = leader_view(0, 0);
    v.pairs[0].synced_ago = None;
    assert_eq!(
        status_line(&v),
        "leader, default/kubernetes-vip: 0 endpoints, not synced yet"
    );
}

#[test]
fn status_line_for_a_pair_held_fail_static_gives_the_reason() {
    let mut v = leader_view(3, 125);
    v.pairs[0].holding = Some("source default/kubernetes has no slices".into());
    assert_eq!(
        status_line(&v),
        "leader, default/kubernetes-vip: 3 endpoints, synced 2m ago, holding: source default/kubernetes has no slices"
    );
}

#[test]
fn status_line_for_a_follower_names_the_leader() {
    let v = StatusView {
        role: Standing::Follower(Some("node-2".into())),
        pairs: vec![],
        last_error: None,
    };
    assert_eq!(status_line(&v), "follower, leader node-2");
    let v = StatusView {
        role: Standing::Follower(None),
        ..v
    };
    assert_eq!(status_line(&v), "follower, no leader");
}

#[test]
fn status_line_while_waiting_says_for_what() {
    let v = StatusView {
        role: Standing::Waiting("/etc/rancher/rke2/rke2.yaml".into()),
        pairs: vec![],
        last_error: None,
    };
    assert_eq!(status_line(&v), "waiting for /etc/rancher/rke2/rke2.yaml");
}

#[test]
fn status_line_while_starting() {
    let v = StatusView {
        role: Standing::Starting,
        pairs: vec![],
        last_error: None,
    };
    assert_eq!(status_line(&v), "starting");
}

#[test]
fn status_line_appends_the_last_error_on_one_short_line() {
    let mut v = leader_view(3, 120);
    v.last_error = Some("update default/kubernetes-vip: 409 conflict".into());
    assert_eq!(
        status_line(&v),
        "leader, default/kubernetes-vip: 3 endpoints, synced 2m ago; last error: update default/kubernetes-vip: 409 conflict"
    );

    v.last_error = Some(format!("first line\n{}", "x".repeat(300)));
    let line = status_line(&v);
    assert!(!line.contains('\n'));
    let error = line.split("; last error: ").nth(1).unwrap();
    assert_eq!(error.chars().count(), 120);
    assert!(error.starts_with("first line x"));
    assert!(error.ends_with('…'));
}

// --- `Notifier::from_env` in a real process ---------------------------------------------------
// The environment is process-wide (and `set_var` is unsafe), so these tests give it to a child:
// the test binary re-executes itself with `CHILD_ENV` set, running only the entry point below.

/// Set in the child's environment; the entry point does nothing without it.
const CHILD_ENV: &str = "ENDPOINT_COPIER_TEST_NOTIFY_CHILD";

#[test]
fn child_entry_point_notifies_from_the_environment() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return; // Not a child: the parent tests below drive this.
    }
    let n = Notifier::from_env();
    n.ready();
    n.status(&format!("watchdog {:?}", n.watchdog_interval()));
}

/// Runs the entry point with `env` and returns its exit code.
fn run_child(env: &[(&str, &str)]) -> i32 {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "notify::child_entry_point_notifies_from_the_environment",
        "--test-threads=1",
    ])
    .env(CHILD_ENV, "1")
    .env_remove("NOTIFY_SOCKET")
    .env_remove("WATCHDOG_USEC")
    .env_remove("WATCHDOG_PID")
    .stdout(std::process::Stdio::null());
    cmd.envs(env.iter().copied());
    cmd.status().unwrap().code().unwrap()
}

#[test]
fn from_env_sends_to_notify_socket_with_the_watchdog_interval() {
    let systemd = FakeSystemd::new();
    let path = systemd.path.to_str().unwrap().to_owned();
    let code = run_child(&[("NOTIFY_SOCKET", &path), ("WATCHDOG_USEC", "30000000")]);
    assert_eq!(code, 0);
    assert_eq!(systemd.drain(), ["READY=1", "STATUS=watchdog Some(30s)"]);
}

#[test]
fn from_env_ignores_a_watchdog_meant_for_another_pid() {
    let systemd = FakeSystemd::new();
    let path = systemd.path.to_str().unwrap().to_owned();
    let code = run_child(&[
        ("NOTIFY_SOCKET", &path),
        ("WATCHDOG_USEC", "30000000"),
        ("WATCHDOG_PID", "1"),
    ]);
    assert_eq!(code, 0);
    assert_eq!(systemd.drain(), ["READY=1", "STATUS=watchdog None"]);
}

#[test]
fn from_env_reaches_an_abstract_notify_socket() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("endpoint-copier-test-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let socket = UnixDatagram::bind_addr(&addr).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let code = run_child(&[("NOTIFY_SOCKET", &format!("@{name}"))]);
    assert_eq!(code, 0);
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1");
}

#[test]
fn from_env_without_notify_socket_is_a_silent_no_op() {
    let systemd = FakeSystemd::new();
    assert_eq!(run_child(&[("WATCHDOG_USEC", "30000000")]), 0);
    assert!(systemd.drain().is_empty());
}
