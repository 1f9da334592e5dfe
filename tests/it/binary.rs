//! The binary as systemd and operators run it: exit codes, `--help`, `version`, `check`, `status`
//! with the API down, and SIGTERM handling.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use endpoint_copier_testbed::{Partition, require_testbed};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_endpoint-copier");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("ENDPOINT_COPIER_LOG")
        .output()
        .unwrap()
}

/// A config directory with one drop-in for `world`, as combustion would write it (Lease 4/2/1 s,
/// a runtime directory of its own).
pub(crate) fn config_dir(world: &World, identity: &str) -> tempfile::TempDir {
    drop_in_dir(
        world,
        identity,
        "",
        &format!(
            "duration_secs = 4\nrenew_deadline_secs = 2\nretry_period_secs = 1\nruntime_dir = \"{}\"",
            runtime_dir().display()
        ),
    )
}

pub(crate) fn spawn_run(dir: &Path) -> Child {
    Command::new(BIN)
        .args(["--config-dir", dir.to_str().unwrap(), "run"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

pub(crate) fn wait_exit(child: &mut Child, limit: Duration) -> i32 {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        assert!(
            start.elapsed() < limit,
            "the daemon did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn version_prints_version_commit_and_compiler() {
    let out = run(&["version"]);
    assert!(out.status.success());
    let line = String::from_utf8(out.stdout).unwrap();
    assert!(
        line.starts_with(&format!(
            "endpoint-copier {} (commit ",
            env!("CARGO_PKG_VERSION")
        )),
        "{line}"
    );
    assert!(line.contains("rustc "), "{line}");
}

#[test]
fn version_flags_print_the_same_line_as_the_version_subcommand() {
    let want = run(&["version"]).stdout;
    for flag in ["--version", "-V"] {
        let out = run(&[flag]);
        assert_eq!(out.status.code(), Some(0), "{flag}");
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(want.clone()).unwrap(),
            "{flag}"
        );
    }
}

#[test]
fn help_describes_the_program_and_each_command_for_an_operator() {
    let out = run(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(help.contains("kubernetes-vip"), "{help}");
    assert!(help.contains("Exit codes"), "{help}");
    for command in ["run", "check", "status", "version"] {
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(command) && l.len() > command.len() + 4),
            "{command} has no summary: {help}"
        );
    }
    assert!(
        !help.contains("Parse") && !help.contains("[`"),
        "rustdoc leaked into --help: {help}"
    );
    let out = run(&["check", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(help.contains("permission"), "{help}");
}

/// A port on 127.0.0.1 that nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
    // Dropped here: connections are refused from now on.
}

/// Runs `command` (`status` or `check`) against an API server that refuses connections, with an
/// empty config directory; returns (exit code, stdout, stderr).
fn run_with_api_down(command: &str) -> (Option<i32>, String, String) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig.yaml");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:{}/\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n",
            closed_port()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&kubeconfig, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = dir.path().join("config.d");
    std::fs::create_dir(&config).unwrap();
    let out = run(&[
        "--config-dir",
        config.to_str().unwrap(),
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        command,
    ]);
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn status_with_the_api_down_exits_1_naming_each_cause_once() {
    let (code, stdout, _) = run_with_api_down("status");
    assert_eq!(code, Some(1), "{stdout}");
    let problem = stdout
        .lines()
        .find_map(|l| l.strip_prefix("problem: "))
        .unwrap_or_else(|| panic!("no problem line: {stdout}"));
    assert!(problem.contains("Connection refused"), "{problem}");
    let causes: Vec<&str> = problem.split(": ").collect();
    for (i, cause) in causes.iter().enumerate() {
        assert!(
            !causes[i + 1..].contains(cause),
            "'{cause}' repeated in: {problem}"
        );
    }
}

#[test]
fn status_and_check_with_the_api_down_print_no_library_log_lines() {
    for command in ["status", "check"] {
        let (code, stdout, stderr) = run_with_api_down(command);
        assert_eq!(code, Some(1), "{command}: {stdout}");
        assert!(
            stderr.is_empty(),
            "{command}: the report says it all, once: {stderr}"
        );
    }
}

#[test]
fn no_report_line_ends_in_a_space_when_the_server_version_is_unknown() {
    for command in ["status", "check"] {
        let (_, stdout, _) = run_with_api_down(command);
        assert!(
            stdout.contains("api server: https://127.0.0.1:"),
            "{stdout}"
        );
        for line in stdout.lines() {
            assert!(!line.ends_with(' '), "{command}: {line:?}");
        }
    }
}

#[test]
fn an_unknown_flag_exits_64() {
    let out = run(&["--no-such-flag", "run"]);
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn a_config_error_exits_78_and_names_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("50-site.toml"),
        "[lease]\nduration_secs = 15\nrenew_deadlin_secs = 5\n",
    )
    .unwrap();
    let out = run(&["--config-dir", dir.path().to_str().unwrap(), "run"]);
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("50-site.toml:3:1"), "{stderr}");
    assert!(stderr.contains("renew_deadlin_secs"), "{stderr}");
}

#[test]
fn under_systemd_a_config_error_is_filed_at_priority_err() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("50-site.toml"),
        "[lease]\nduraton_secs = 15\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["--config-dir", dir.path().to_str().unwrap(), "run"])
        .env("JOURNAL_STREAM", "1:1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.starts_with("<3>endpoint-copier: "), "{stderr}");
}

#[tokio::test]
async fn check_exits_0_when_all_is_well_and_1_with_one_line_per_problem() {
    let world = World::new("bin-check").await;
    let tb = require_testbed!(world.cluster);
    world.seed(&["198.51.100.1"]).await;
    let dir = config_dir(&world, "node-1");
    let dir_arg = dir.path().to_str().unwrap().to_owned();
    // Not in sync yet (nobody mirrored): a problem, exit 1, the plan shown.
    let out = tokio::task::spawn_blocking({
        let d = dir_arg.clone();
        move || run(&["--config-dir", &d, "check"])
    })
    .await
    .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "out of sync alone is not a problem for check: {stdout}"
    );
    assert!(stdout.contains("would create vip"), "{stdout}");
    tb.set_allowed(
        "node-1",
        endpoint_copier_testbed::Verb::Delete,
        "endpointslices",
        false,
    );
    let out = tokio::task::spawn_blocking(move || {
        run(&["--config-dir", &dir_arg, "check", "--output", "json"])
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let problems = json["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0]
            .as_str()
            .unwrap()
            .contains("delete endpointslices"),
        "{problems:?}"
    );
}

#[tokio::test]
async fn sigterm_releases_the_lease_and_exits_0() {
    let world = World::new("bin-term").await;
    require_testbed!(world.cluster);
    world.seed(&["198.51.100.1"]).await;
    let dir = config_dir(&world, "node-1");
    let mut child = spawn_run(dir.path());
    wait_for_target(
        &world.client,
        &world.ns,
        "vip",
        &["198.51.100.1"],
        Duration::from_secs(15),
    )
    .await;
    kill(
        Pid::from_raw(i32::try_from(child.id()).unwrap()),
        Signal::SIGTERM,
    )
    .unwrap();
    let code = tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(code, 0);
    let lease = Api::<Lease>::namespaced(world.client.clone(), &world.ns)
        .get("endpoint-copier")
        .await
        .unwrap();
    let holder = lease.spec.unwrap().holder_identity.unwrap_or_default();
    assert!(
        holder.is_empty(),
        "released on the way out, so a peer takes over at once (holder {holder:?})"
    );
}

#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let world = World::new("bin-twice").await;
    let tb = require_testbed!(world.cluster);
    world.seed(&["198.51.100.1"]).await;
    let dir = config_dir(&world, "node-1");
    let mut child = spawn_run(dir.path());
    wait_for_target(
        &world.client,
        &world.ns,
        "vip",
        &["198.51.100.1"],
        Duration::from_secs(15),
    )
    .await;
    // With the API hanging for this node, releasing the Lease would take its full timeout...
    tb.partition("node-1", Partition::Hang);
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap());
    kill(pid, Signal::SIGTERM).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ...unless the operator insists.
    let t = Instant::now();
    kill(pid, Signal::SIGTERM).unwrap();
    let code = tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(3)))
        .await
        .unwrap();
    assert_eq!(code, 1, "exits at once, without a clean release");
    assert!(t.elapsed() < Duration::from_secs(2));
    tb.heal("node-1");
}
