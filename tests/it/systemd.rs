//! The daemon as systemd sees it: the binary runs with `NOTIFY_SOCKET` pointing at a datagram
//! socket of this test, and the test reads what systemd would — READY=1 before the cluster is
//! reachable, STATUS lines for waiting, leader and follower, and STOPPING=1 on SIGTERM. And the
//! drain/resume drop-ins for `rke2-server.service` and `k3s.service`: their command lines parse
//! with the real CLI, never fail the server and fit its stop budget; `systemd-analyze verify`
//! accepts them on stand-in server units; combustion installs them where the RPM does.
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

/// The server units the shipped drop-ins attach to.
const SERVERS: [&str; 2] = ["rke2-server", "k3s"];

/// systemd's stop budget for a unit that sets no TimeoutStopSec= (RKE2's and K3s's do not):
/// DefaultTimeoutStopSec=, 90 s unless the host changed it.
const DEFAULT_STOP_SECS: u64 = 90;

fn drop_in_path(server: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("systemd")
        .join(format!("{server}.service.d/50-endpoint-copier.conf"))
}

/// The values of `key=` in the drop-in's [Service] section.
fn service_values(text: &str, key: &str) -> Vec<String> {
    let mut in_service = false;
    let mut values = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_service = line == "[Service]";
        } else if in_service && let Some(v) = line.strip_prefix(&format!("{key}=")) {
            values.push(v.to_owned());
        }
    }
    values
}

/// Parses an `Exec*=` value: the `-` prefix, then the command line through the real CLI parser.
fn parse_exec(value: &str) -> (bool, endpoint_copier::cli::Cli) {
    let ignore_failure = value.starts_with('-');
    let words: Vec<&str> = value.trim_start_matches('-').split_whitespace().collect();
    assert_eq!(words[0], "/usr/bin/endpoint-copier", "{value}");
    let cli = endpoint_copier::cli::Cli::try_parse_from_args(words).unwrap();
    (ignore_failure, cli)
}

#[test]
fn the_drop_ins_drain_before_the_stop_and_resume_after_the_start_and_never_fail_the_server() {
    use endpoint_copier::cli::{Command as Sub, DrainArgs, ResumeArgs};
    for server in SERVERS {
        let text = std::fs::read_to_string(drop_in_path(server)).unwrap();
        let stop = service_values(&text, "ExecStop");
        assert_eq!(stop.len(), 1, "{server}: {stop:?}");
        let (ignored, cli) = parse_exec(&stop[0]);
        assert!(ignored, "{server}: a failed drain must never fail the stop");
        let Sub::Drain(DrainArgs {
            node: None,
            timeout_secs,
            ..
        }) = cli.command
        else {
            panic!(
                "{server}: ExecStop= is not a drain of this host: {:?}",
                cli.command
            );
        };
        // The drain's --timeout bounds the whole command; it must leave the server most of
        // its stop budget.
        assert!(
            timeout_secs * 3 <= DEFAULT_STOP_SECS,
            "{server}: drain --timeout {timeout_secs} takes too much of {DEFAULT_STOP_SECS} s"
        );
        let start = service_values(&text, "ExecStartPost");
        assert_eq!(start.len(), 1, "{server}: {start:?}");
        let (ignored, cli) = parse_exec(&start[0]);
        assert!(
            ignored,
            "{server}: a failed resume must never fail the start"
        );
        assert!(
            matches!(
                cli.command,
                Sub::Resume(ResumeArgs {
                    node: None,
                    timed_only: true,
                    ..
                })
            ),
            "{server}: ExecStartPost= is not `resume --timed-only` of this host: {:?}",
            cli.command
        );
        // Nothing else: the drop-in must not change how the server itself runs.
        let keys: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
            .filter_map(|l| l.split_once('=').map(|(k, _)| k))
            .collect();
        assert_eq!(keys, ["ExecStop", "ExecStartPost"], "{server}");
    }
}

#[test]
fn the_drop_ins_pass_systemd_analyze_verify_on_stand_in_server_units() {
    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("skipped: no systemd-analyze (.ci/check-unit.sh runs the same check in CI)");
        return;
    };
    assert!(version.status.success());
    let root = tempfile::tempdir().unwrap();
    let bin = root.path().join("usr/bin/endpoint-copier");
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::fs::write(&bin, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let units = root.path().join("usr/lib/systemd/system");
    for server in SERVERS {
        // Shaped like RKE2's and K3s's own units: Type=notify, no start timeout, no stop timeout.
        // DefaultDependencies=no: the root holds no sysinit.target to order against, and the
        // check is about the drop-in, not the server's ordering.
        let dir = units.join(format!("{server}.service.d"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            units.join(format!("{server}.service")),
            "[Unit]\nDescription=stand-in\nDefaultDependencies=no\n[Service]\nType=notify\nTimeoutStartSec=0\nExecStart=/usr/bin/endpoint-copier version\n",
        )
        .unwrap();
        std::fs::copy(drop_in_path(server), dir.join("50-endpoint-copier.conf")).unwrap();
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(format!("--root={}", root.path().display()))
            .arg(format!("{server}.service"))
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && said.trim().is_empty(),
            "{server}: {said}"
        );
    }
    // The check notices a broken drop-in: a misspelt key is reported.
    let dir = units.join("k3s.service.d");
    std::fs::write(
        dir.join("50-endpoint-copier.conf"),
        "[Service]\nExecStopp=-/usr/bin/endpoint-copier drain\n",
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(format!("--root={}", root.path().display()))
        .arg("k3s.service")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ExecStopp"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn combustion_installs_the_drop_ins_where_the_rpm_puts_them() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let work = tempfile::tempdir().unwrap();
    let binary = work.path().join("endpoint-copier");
    std::fs::write(&binary, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&binary, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let eib = work.path().join("eib");
    std::fs::create_dir_all(&eib).unwrap();
    let stage = Command::new("bash")
        .arg(repo.join("combustion/stage.sh"))
        .arg(&eib)
        .env("ENDPOINT_COPIER_BINARY", &binary)
        .output()
        .unwrap();
    assert!(
        stage.status.success(),
        "{}",
        String::from_utf8_lossy(&stage.stderr)
    );
    let root = work.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let install = || {
        Command::new("bash")
            .arg(eib.join("custom/scripts/25-endpoint-copier.sh"))
            .env("ENDPOINT_COPIER_ROOT", &root)
            .env("ENDPOINT_COPIER_FILES", eib.join("custom/files"))
            .env("ENDPOINT_COPIER_SYSTEMCTL", "/nonexistent/systemctl")
            .env("ENDPOINT_COPIER_CHECK", "off")
            .output()
            .unwrap()
    };
    let first = install();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let log = String::from_utf8_lossy(&first.stdout);
    for server in SERVERS {
        let path = format!("/usr/lib/systemd/system/{server}.service.d/50-endpoint-copier.conf");
        let installed = root.join(path.trim_start_matches('/'));
        assert_eq!(
            std::fs::read(&installed).unwrap(),
            std::fs::read(drop_in_path(server)).unwrap(),
            "{path}"
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&installed).unwrap().permissions(),
        );
        assert_eq!(mode & 0o7777, 0o644, "{path}");
        assert!(
            log.contains(&format!("endpoint-copier: installed {path} (mode 0644)")),
            "{log}"
        );
    }
    let second = install();
    let log = String::from_utf8_lossy(&second.stdout);
    assert!(
        log.contains("endpoint-copier: unchanged /usr/lib/systemd/system/k3s.service.d/50-endpoint-copier.conf")
            && log.contains("nothing to change"),
        "{log}"
    );
}
