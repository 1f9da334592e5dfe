//! The daemon as systemd sees it: the binary runs with `NOTIFY_SOCKET` pointing at a datagram
//! socket of this test, and the test reads what systemd would — READY=1 before the cluster is
//! reachable, STATUS lines for waiting, leader and follower, and STOPPING=1 on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use endpoint_copier_testbed::require_testbed;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const BIN: &str = env!("CARGO_BIN_EXE_endpoint-copier");

/// A notify socket like systemd's, collecting every message.
struct Systemd {
    socket: UnixDatagram,
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    seen: Vec<String>,
}

impl Systemd {
    fn new() -> Systemd {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        Systemd {
            socket,
            _dir: dir,
            path,
            seen: Vec::new(),
        }
    }

    /// Reads until a message satisfies `want`, or panics after `limit` listing what came.
    fn until(&mut self, what: &str, limit: Duration, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + limit;
        let mut buf = [0u8; 4096];
        loop {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.push(msg.clone());
                if want(&msg) {
                    return msg;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within {limit:?}; got {:?}",
                self.seen
            );
        }
    }
}

fn spawn(dir: &Path, notify: &Path) -> Child {
    Command::new(BIN)
        .args(["--config-dir", dir.to_str().unwrap(), "run"])
        .env("NOTIFY_SOCKET", notify)
        .env_remove("WATCHDOG_USEC")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn drop_in(dir: &Path, kubeconfig: &Path, world: &World, identity: &str) {
    std::fs::write(
        dir.join("50-test.toml"),
        format!(
            "kubeconfig = \"{}\"\n\n[[pair]]\nsource = \"{}\"\ntarget = \"{}\"\n\n[lease]\nnamespace = \"{}\"\nidentity = \"{identity}\"\nduration_secs = 4\nrenew_deadline_secs = 2\nretry_period_secs = 1\nruntime_dir = \"{}\"\n\n[metrics]\nlisten = \"\"\n",
            kubeconfig.display(),
            world.source(),
            world.target(),
            world.ns,
            dir.join("run").display(),
        ),
    )
    .unwrap();
}

fn sigterm(child: &Child) {
    kill(
        Pid::from_raw(i32::try_from(child.id()).unwrap()),
        Signal::SIGTERM,
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_then_waiting_then_leader_then_stopping() {
    let world = World::new("notify").await;
    let tb = require_testbed!(world.cluster);
    world.seed(&["198.51.100.1", "198.51.100.2"]).await;
    let conf = tempfile::tempdir().unwrap();
    let kubeconfig = conf.path().join("rke2.yaml");
    drop_in(conf.path(), &kubeconfig, &world, "node-1");
    let mut systemd = Systemd::new();
    let mut child = spawn(conf.path(), &systemd.path);

    // READY=1 comes before the kubeconfig even exists: `systemctl start` never waits on RKE2.
    systemd.until("READY=1", Duration::from_secs(10), |m| m == "READY=1");
    let waiting = systemd.until("a waiting STATUS", Duration::from_secs(5), |m| {
        m.starts_with("STATUS=")
    });
    assert_eq!(
        waiting,
        format!("STATUS=waiting for {}", kubeconfig.display())
    );

    std::fs::copy(tb.kubeconfig_for("node-1"), &kubeconfig).unwrap();
    let leader = systemd.until("a leader STATUS", Duration::from_secs(15), |m| {
        m.starts_with("STATUS=leader") && m.contains("2 endpoints, synced")
    });
    assert!(
        leader.contains(&format!("{}: 2 endpoints, synced", world.target())),
        "{leader}"
    );

    sigterm(&child);
    systemd.until("STOPPING=1", Duration::from_secs(10), |m| m == "STOPPING=1");
    systemd.until("a stopping STATUS", Duration::from_secs(5), |m| {
        m == "STATUS=stopping"
    });
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_says_who_leads() {
    let world = World::new("notify-follow").await;
    let tb = require_testbed!(world.cluster);
    world.seed(&["198.51.100.1"]).await;
    let leader = Daemon::start(world.config("node-1"));
    wait_for_target(
        &world.client,
        &world.ns,
        "vip",
        &["198.51.100.1"],
        Duration::from_secs(10),
    )
    .await;

    let conf = tempfile::tempdir().unwrap();
    drop_in(conf.path(), &tb.kubeconfig_for("node-2"), &world, "node-2");
    let mut systemd = Systemd::new();
    let child = spawn(conf.path(), &systemd.path);
    systemd.until("READY=1", Duration::from_secs(10), |m| m == "READY=1");
    systemd.until("a follower STATUS", Duration::from_secs(15), |m| {
        m == "STATUS=follower, leader node-1"
    });
    sigterm(&child);
    let mut child = child;
    let code = tokio::task::spawn_blocking(move || child.wait().unwrap().code())
        .await
        .unwrap();
    assert_eq!(code, Some(0));
    leader.stop().await;
}
