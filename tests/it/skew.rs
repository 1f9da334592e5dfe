//! Copies of one group that differ beyond their pair list: two hosts that configure the same
//! pair differently (here only one static address apart) are reported by the leader — a
//! warning, one `ConfiguredElsewhere` Event on the target naming both hosts and the part that
//! differs, a STATUS mention — and by `status` on either host.
//!
//! A slice of the group that a newer version wrote (a source id this version does not know) is
//! kept untouched by the leader, on a target it configures and on one it does not, and reported
//! once.
//!
//! The leader of the first test runs as the binary, with a unix datagram socket standing in for systemd's
//! `NOTIFY_SOCKET`, so that its STATUS lines can be read; the other host runs in-process.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use endpoint_copier::config::PairConfig;
use endpoint_copier::names;
use endpoint_copier::source::{Source, StaticSource};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::binary::{BIN, wait_exit};
use crate::common::*;

const CONVERGE: Duration = Duration::from_secs(20);

/// A bound socket playing systemd, in a temp dir that lives as long as it.
pub(crate) struct Systemd {
    _dir: tempfile::TempDir,
    socket: UnixDatagram,
    pub(crate) path: std::path::PathBuf,
    /// Every STATUS= text received so far, in order.
    statuses: Vec<String>,
}

impl Systemd {
    pub(crate) fn new() -> Systemd {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_nonblocking(true).unwrap();
        Systemd {
            _dir: dir,
            socket,
            path,
            statuses: Vec::new(),
        }
    }

    /// Reads what arrived; returns the last STATUS text seen so far.
    pub(crate) fn last_status(&mut self) -> Option<String> {
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = self.socket.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            for line in msg.lines() {
                if let Some(status) = line.strip_prefix("STATUS=") {
                    self.statuses.push(status.to_owned());
                }
            }
        }
        self.statuses.last().cloned()
    }
}

/// The world's pair with the source Service and the static address `static_address`.
fn pair_keys(world: &World, static_address: &str) -> String {
    format!(
        "[[pair]]\ntarget = \"{}\"\nsources = [\n  {{ service = \"{}\" }},\n  {{ addresses = [\"{static_address}\"] }},\n]\n",
        world.target(),
        world.source()
    )
}

/// Starts the binary as `identity` with the world's pair plus `static_address`, its STATUS going
/// to `systemd`.
fn spawn_binary(
    world: &World,
    identity: &str,
    static_address: &str,
    systemd: &Systemd,
) -> (Host, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = world.cluster.testbed().map_or_else(
        || world.cluster.kubeconfig(),
        |tb| tb.kubeconfig_for(identity),
    );
    std::fs::write(
        dir.path().join("50-site.toml"),
        format!(
            "kubeconfig = \"{}\"\n\n{}\n[lease]\nnamespace = \"{}\"\nidentity = \"{identity}\"\nduration_secs = 4\nrenew_deadline_secs = 2\nretry_period_secs = 1\nruntime_dir = \"{}\"\n\n[members]\nnamespace = \"{}\"\nheartbeat_secs = 1\nexpiry_secs = 3\n\n[metrics]\nlisten = \"\"\n",
            kubeconfig.display(),
            pair_keys(world, static_address),
            world.ns,
            runtime_dir().display(),
            world.ns,
        ),
    )
    .unwrap();
    let host = Host::spawn("node-1", Path::new(BIN), dir.path(), Some(systemd));
    (host, dir)
}

/// A daemon process of the test: killed (SIGKILL) if the test ends without stopping it, and its
/// stderr (in its config directory) printed then, so that a failure shows what each host said.
pub(crate) struct Host {
    child: Child,
    log: PathBuf,
    name: &'static str,
}

impl Host {
    /// Runs `binary` as `name` with the config in `dir`, its STATUS going to `systemd` when
    /// given.
    pub(crate) fn spawn(
        name: &'static str,
        binary: &Path,
        dir: &Path,
        systemd: Option<&Systemd>,
    ) -> Host {
        let log = dir.join("stderr.log");
        let mut command = Command::new(binary);
        command
            .args(["--config-dir", dir.to_str().unwrap(), "run"])
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            .env("ENDPOINT_COPIER_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        if let Some(systemd) = systemd {
            command.env("NOTIFY_SOCKET", &systemd.path);
        }
        Host {
            child: command.spawn().unwrap(),
            log,
            name,
        }
    }

    /// SIGTERM, then the exit code must be 0 (a clean stop that released the Lease).
    pub(crate) fn stop(&mut self) {
        kill(
            Pid::from_raw(i32::try_from(self.child.id()).unwrap()),
            Signal::SIGTERM,
        )
        .unwrap();
        let code = wait_exit(&mut self.child, Duration::from_secs(15));
        assert_eq!(code, 0, "{} stops cleanly: {}", self.name, self.tail());
    }

    /// The last lines the process wrote to stderr.
    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- {} (stderr) ---\n{}", self.name, self.tail());
        }
    }
}

/// An in-process daemon as `identity` with the world's pair plus `static_address`.
fn in_process_config(
    world: &World,
    identity: &str,
    static_address: &str,
) -> endpoint_copier::config::Config {
    let mut c = world.config(identity);
    c.pairs = vec![PairConfig::of(
        vec![
            Source::Service(world.source().parse().unwrap()),
            Source::Static(StaticSource::new([static_address.parse().unwrap()])),
        ],
        world.target().parse().unwrap(),
    )];
    c.members.heartbeat = Duration::from_secs(1);
    c.members.expiry = Duration::from_secs(3);
    c
}

#[tokio::test]
async fn two_hosts_differing_only_in_one_static_address_are_reported() {
    let world = World::new("skew-static").await;
    world.seed(&["198.51.100.1"]).await;
    let mut systemd = Systemd::new();
    let (mut leader, _dir) = spawn_binary(&world, "node-1", "203.0.113.1", &systemd);
    wait_for_target(
        &world.client,
        &world.ns,
        "vip",
        &["198.51.100.1", "203.0.113.1"],
        CONVERGE,
    )
    .await;
    // Alone, the leader has nothing to report.
    let status = eventually("a STATUS line from the leader", CONVERGE, || {
        let s = systemd.last_status().filter(|s| s.starts_with("leader"));
        async move { s }
    })
    .await;
    assert!(!status.contains("differently"), "{status}");
    assert!(
        events_on(&world, "vip", "ConfiguredElsewhere")
            .await
            .is_empty()
    );

    // node-2 joins with the same pair, one static address apart.
    let node2_config = in_process_config(&world, "node-2", "203.0.113.2");
    let node2 = Daemon::start(node2_config.clone());
    let note = eventually("a ConfiguredElsewhere Event on vip", CONVERGE, || async {
        events_on(&world, "vip", "ConfiguredElsewhere").await.pop()
    })
    .await;
    assert!(
        note.contains(&format!(
            "pair {} -> {} is configured differently on live copies: node-1 differs from node-2 in its static addresses",
            world.source(),
            world.target()
        )),
        "{note}"
    );
    let status = eventually("STATUS naming the difference", CONVERGE, || {
        let s = systemd
            .last_status()
            .filter(|s| s.contains("configured differently on live copies"));
        async move { s }
    })
    .await;
    assert!(status.contains(&world.target()), "{status}");
    // `status` on node-2 says the same, from the member Leases alone.
    let report = endpoint_copier::inspect::status_report(&node2_config)
        .await
        .unwrap();
    assert!(
        report.warnings.iter().any(|w| w.contains(
            "is configured differently on live copies: node-1 differs from node-2 in its static addresses"
        )),
        "{:?}",
        report.warnings
    );
    // Once: the difference is one Event, however many passes the leader makes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        events_on(&world, "vip", "ConfiguredElsewhere").await.len(),
        1,
        "one Event for one difference"
    );
    leader.stop();
    node2.stop().await;
}

/// A slice of `world`'s default group on `service`, as a newer version might write it: our
/// managed-by and group labels, a source id of a kind this version does not know.
fn newer_slice(world: &World, service: &str, name: &str, address: &str) -> EndpointSlice {
    let mut slice = source_slice(&world.ns, service, name, "IPv4", &[address]);
    let labels = slice.metadata.labels.as_mut().unwrap();
    labels.insert(names::MANAGED_BY_LABEL.into(), names::MANAGED_BY.into());
    labels.insert(
        names::GROUP_LABEL.into(),
        format!("{}.{}", world.ns, names::LEASE_NAME),
    );
    labels.insert(names::SOURCE_ID_LABEL.into(), "dns-0123abcd".into());
    slice
}

#[tokio::test]
async fn slices_of_a_newer_version_are_kept_untouched_and_reported_once() {
    let world = World::new("skew-newer").await;
    world.seed(&["198.51.100.1"]).await;
    create(
        &world.client,
        &world.ns,
        &vip_service(&world.ns, "vip-new", &["IPv4"]),
    )
    .await;
    // One on the configured target, one on a target only a newer version configures.
    let on_vip = create(
        &world.client,
        &world.ns,
        &newer_slice(&world, "vip", "vip-dns", "203.0.113.7"),
    )
    .await;
    let on_other = create(
        &world.client,
        &world.ns,
        &newer_slice(&world, "vip-new", "vip-new-dns", "203.0.113.8"),
    )
    .await;
    let daemon = Daemon::start(world.config("node-1"));
    wait_for_target(
        &world.client,
        &world.ns,
        "vip",
        &["198.51.100.1", "203.0.113.7"],
        CONVERGE,
    )
    .await;
    let note = eventually("a ForeignSlices Event on vip", CONVERGE, || async {
        events_on(&world, "vip", "ForeignSlices").await.pop()
    })
    .await;
    assert!(
        note.contains("vip-dns (managed by endpoint-copier, a newer version (source id 'dns-0123abcd' is unknown to version"),
        "{note}"
    );
    // The leader's scan for removed pairs has run (it runs first in a term) and a resync
    // passes: both slices are exactly as written.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (service, before) in [("vip", &on_vip), ("vip-new", &on_other)] {
        let now = slices_of(&world.client, &world.ns, service).await;
        let name = before.metadata.name.as_deref().unwrap();
        assert_eq!(
            now.get(name)
                .and_then(|s| s.metadata.resource_version.clone()),
            before.metadata.resource_version,
            "{service}: {name} untouched"
        );
    }
    assert_eq!(events_on(&world, "vip", "ForeignSlices").await.len(), 1);
    assert!(
        events_on(&world, "vip-new", "ForeignSlices")
            .await
            .is_empty()
    );
    daemon.stop().await;
}
