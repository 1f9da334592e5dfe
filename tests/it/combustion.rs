//! Black-box tests of `combustion/custom/scripts/25-endpoint-copier.sh`, the first-boot installer
//! for images that cannot side-load the RPM.
//!
//! Each test runs the script with bash against a temporary root directory (`ENDPOINT_COPIER_ROOT`)
//! and a temporary files directory (`ENDPOINT_COPIER_FILES`) holding stand-ins: a shell script
//! in place of the binary (it records how it was called, writes stand-in man pages and
//! completions for `generate`, and exits with a chosen code), a minimal unit and a defaults
//! file. A few tests use the real binary instead, for what only it can show: its arch and the
//! man pages and completions it writes. The real unit and defaults belong to `systemd/` and
//! `packaging/config.d/`; what they contain is tested there. These tests pin what the script does
//! with them: paths, modes, the enable symlink, idempotence, its log lines and its failures.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The script under test, from the repository root.
const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/combustion/custom/scripts/25-endpoint-copier.sh"
);

/// Where the script must put the unit, and what the enable symlink must point to.
const UNIT_PATH: &str = "/usr/lib/systemd/system/endpoint-copier.service";

/// A unit stand-in with two WantedBy= targets, so enabling must create one symlink for each.
const UNIT: &str = "[Unit]\nDescription=endpoint-copier stand-in\n\n[Service]\n\
    ExecStart=/usr/bin/endpoint-copier run\n\n[Install]\nWantedBy=multi-user.target\n\
    WantedBy=rke2-server.service\n";

/// A temporary root, a files directory and the log the fake binary writes.
struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    files: PathBuf,
    fake_log: PathBuf,
}

impl Fixture {
    /// Files as an EIB definition's `custom/files/` would hold them, without a site drop-in.
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let files = dir.path().join("files");
        let fake_log = dir.path().join("fake-binary.log");
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(&files).unwrap();
        let fixture = Self {
            _dir: dir,
            root,
            files,
            fake_log,
        };
        fixture.set_binary("v1");
        fixture.write_file("endpoint-copier.service", UNIT, 0o644);
        fixture.write_file(
            "endpoint-copier-10-defaults.toml",
            "# defaults stand-in\n",
            0o644,
        );
        fixture
    }

    /// Writes the fake binary: it appends its arguments to `$FAKE_LOG`; `generate man DIR` and
    /// `generate completions DIR` write stand-ins (two pages, three completions, the same in every
    /// version) or exit with `$FAKE_GENERATE_EXIT` if set; everything else exits with
    /// `$FAKE_EXIT` (default 0). `tag` makes two versions differ; nothing else varies, so two
    /// fixtures install byte-identical binaries.
    fn set_binary(&self, tag: &str) {
        let body = format!(
            r##"#!/bin/sh
# fake endpoint-copier {tag}
echo "$*" >> "$FAKE_LOG"
if [ "$1" = generate ]; then
  [ -z "$FAKE_GENERATE_EXIT" ] || exit "$FAKE_GENERATE_EXIT"
  mkdir -p "$3"
  case $2 in
    man) for p in endpoint-copier endpoint-copier-run; do echo ".TH $p 1" > "$3/$p.1"; done ;;
    completions) for c in endpoint-copier.bash _endpoint-copier endpoint-copier.fish; do echo "# $c" > "$3/$c"; done ;;
  esac
  exit 0
fi
exit "${{FAKE_EXIT:-0}}"
"##
        );
        self.write_file("endpoint-copier", &body, 0o755);
    }

    /// Puts the real binary, built for this host, in place of the fake one.
    fn use_real_binary(&self) {
        let path = self.files.join("endpoint-copier");
        fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_endpoint-copier"), &path).unwrap();
    }

    /// Puts a file with an ELF header for `machine` (`e_machine`: 62 x86_64, 183 aarch64) in
    /// place of the binary; nothing can run it, so only tests that refuse it use it.
    fn set_elf_binary(&self, machine: u16) {
        let mut header = vec![0u8; 64];
        header[..4].copy_from_slice(b"\x7fELF");
        header[4] = 2; // 64-bit
        header[5] = 1; // little-endian
        header[18..20].copy_from_slice(&machine.to_le_bytes());
        let path = self.files.join("endpoint-copier");
        fs::write(&path, header).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn write_file(&self, name: &str, contents: &str, mode: u32) {
        let path = self.files.join(name);
        fs::write(&path, contents).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    }

    /// Runs the script with the fallback enabler (no systemctl) and the given extra env.
    fn run(&self, env: &[(&str, &str)]) -> Output {
        let mut command = Command::new("bash");
        command
            .arg(SCRIPT)
            .env("ENDPOINT_COPIER_ROOT", &self.root)
            .env("ENDPOINT_COPIER_FILES", &self.files)
            .env("ENDPOINT_COPIER_SYSTEMCTL", "/nonexistent/systemctl")
            .env("FAKE_LOG", &self.fake_log)
            .env_remove("FAKE_EXIT")
            .env_remove("FAKE_GENERATE_EXIT");
        for (key, value) in env {
            command.env(key, value);
        }
        command.output().unwrap()
    }

    /// Runs the script and insists that it succeeded; returns its stdout lines.
    fn run_ok(&self, env: &[(&str, &str)]) -> Vec<String> {
        let output = self.run(env);
        assert!(
            output.status.success(),
            "script failed: {:?}\nstdout:\n{}\nstderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        lines(&output.stdout)
    }

    /// `path` (absolute, as on the node) inside the temporary root.
    fn at(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }
}

fn lines(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Every entry under `root`: kind, mode, contents or link target, and modification time, so that
/// two snapshots differ if the script touched anything at all.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    tree(root, true)
}

/// Every entry under `root`: kind, mode, contents or link target, and (if `with_times`) its
/// modification time.
fn tree(root: &Path, with_times: bool) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let mtime = if with_times {
                format!("{:?}", meta.modified().unwrap())
            } else {
                String::new()
            };
            let desc = if meta.file_type().is_symlink() {
                format!("link -> {}", fs::read_link(&path).unwrap().display())
            } else if meta.is_dir() {
                stack.push(path.clone());
                format!("dir {:o} {mtime}", mode(&path))
            } else {
                format!(
                    "file {:o} {mtime} {}",
                    mode(&path),
                    String::from_utf8_lossy(&fs::read(&path).unwrap())
                )
            };
            out.insert(path.strip_prefix(root).unwrap().to_path_buf(), desc);
        }
    }
    out
}

#[test]
fn first_run_installs_binary_unit_and_defaults_where_the_rpm_puts_them_with_their_modes() {
    let fx = Fixture::new();
    fx.run_ok(&[("ENDPOINT_COPIER_CHECK", "off")]);

    for (path, source, want_mode) in [
        ("/usr/bin/endpoint-copier", "endpoint-copier", 0o755),
        (UNIT_PATH, "endpoint-copier.service", 0o644),
        (
            "/usr/lib/endpoint-copier/config.d/10-defaults.toml",
            "endpoint-copier-10-defaults.toml",
            0o644,
        ),
    ] {
        let installed = fx.at(path);
        assert_eq!(
            fs::read(&installed).unwrap(),
            fs::read(fx.files.join(source)).unwrap(),
            "{path} differs from {source}"
        );
        assert_eq!(mode(&installed), want_mode, "mode of {path}");
    }
    let admin_dir = fx.at("/etc/endpoint-copier/config.d");
    assert!(admin_dir.is_dir(), "admin drop-in folder missing");
    assert_eq!(mode(&admin_dir), 0o755);
    assert_eq!(fs::read_dir(&admin_dir).unwrap().count(), 0);
}

#[test]
fn first_run_enables_the_unit_with_one_absolute_wants_symlink_per_wanted_by_target() {
    let fx = Fixture::new();
    let log = fx.run_ok(&[("ENDPOINT_COPIER_CHECK", "off")]);

    for target in ["multi-user.target", "rke2-server.service"] {
        let link = fx.at(&format!(
            "/etc/systemd/system/{target}.wants/endpoint-copier.service"
        ));
        assert_eq!(
            fs::read_link(&link).unwrap(),
            Path::new(UNIT_PATH),
            "{target}"
        );
    }
    assert!(
        log.contains(&"endpoint-copier: enabled endpoint-copier.service for multi-user.target rke2-server.service (by symlink)".to_owned()),
        "log: {log:#?}"
    );
}

#[test]
fn systemctl_and_the_fallback_produce_the_same_tree() {
    let Some(systemctl) = ["/usr/bin/systemctl", "/bin/systemctl"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        eprintln!("skipped: no systemctl on this host to compare the fallback with");
        return;
    };
    let by_systemctl = Fixture::new();
    let log = by_systemctl.run_ok(&[
        ("ENDPOINT_COPIER_CHECK", "off"),
        ("ENDPOINT_COPIER_SYSTEMCTL", systemctl),
    ]);
    let by_symlink = Fixture::new();
    by_symlink.run_ok(&[("ENDPOINT_COPIER_CHECK", "off")]);

    // Kinds, modes, contents and link targets; not the times.
    assert_eq!(
        tree(&by_systemctl.root, false),
        tree(&by_symlink.root, false),
        "log: {log:#?}"
    );
}

#[test]
fn second_run_changes_nothing_and_says_so() {
    let fx = Fixture::new();
    fx.write_file("endpoint-copier-50-site.toml", "# site\n", 0o644);
    fx.run_ok(&[]);
    let before = snapshot(&fx.root);

    let log = fx.run_ok(&[]);

    assert_eq!(snapshot(&fx.root), before, "second run touched the root");
    assert_eq!(
        log,
        [
            "endpoint-copier: unchanged /usr/bin/endpoint-copier",
            "endpoint-copier: unchanged /usr/lib/systemd/system/endpoint-copier.service",
            "endpoint-copier: unchanged /usr/lib/endpoint-copier/config.d/10-defaults.toml",
            "endpoint-copier: unchanged /etc/endpoint-copier/config.d/50-site.toml",
            "endpoint-copier: unchanged /usr/share/man/man1/endpoint-copier-run.1.gz",
            "endpoint-copier: unchanged /usr/share/man/man1/endpoint-copier.1.gz",
            "endpoint-copier: unchanged /usr/share/bash-completion/completions/endpoint-copier",
            "endpoint-copier: unchanged /usr/share/zsh/site-functions/_endpoint-copier",
            "endpoint-copier: unchanged /usr/share/fish/vendor_completions.d/endpoint-copier.fish",
            "endpoint-copier: unchanged endpoint-copier.service, already enabled for multi-user.target rke2-server.service",
            "endpoint-copier: configuration valid (endpoint-copier check)",
            "endpoint-copier: nothing to change, already installed and enabled",
        ]
    );
}

#[test]
fn first_run_logs_one_line_per_change_and_counts_them() {
    let fx = Fixture::new();
    let log = fx.run_ok(&[("ENDPOINT_COPIER_CHECK", "off")]);
    assert_eq!(
        log,
        [
            "endpoint-copier: installed /usr/bin/endpoint-copier (mode 0755)",
            "endpoint-copier: installed /usr/lib/systemd/system/endpoint-copier.service (mode 0644)",
            "endpoint-copier: installed /usr/lib/endpoint-copier/config.d/10-defaults.toml (mode 0644)",
            "endpoint-copier: created /etc/endpoint-copier/config.d",
            "endpoint-copier: installed /usr/share/man/man1/endpoint-copier-run.1.gz (mode 0644)",
            "endpoint-copier: installed /usr/share/man/man1/endpoint-copier.1.gz (mode 0644)",
            "endpoint-copier: installed /usr/share/bash-completion/completions/endpoint-copier (mode 0644)",
            "endpoint-copier: installed /usr/share/zsh/site-functions/_endpoint-copier (mode 0644)",
            "endpoint-copier: installed /usr/share/fish/vendor_completions.d/endpoint-copier.fish (mode 0644)",
            "endpoint-copier: enabled endpoint-copier.service for multi-user.target rke2-server.service (by symlink)",
            "endpoint-copier: done, 10 change(s)",
        ]
    );
}

#[test]
fn site_drop_in_is_installed_into_etc_only_when_given() {
    let fx = Fixture::new();
    fx.run_ok(&[("ENDPOINT_COPIER_CHECK", "off")]);
    let site = fx.at("/etc/endpoint-copier/config.d/50-site.toml");
    assert!(!site.exists(), "site drop-in written without being given");

    fx.write_file(
        "endpoint-copier-50-site.toml",
        "[log]\nlevel = \"debug\"\n",
        0o600,
    );
    let log = fx.run_ok(&[("ENDPOINT_COPIER_CHECK", "off")]);

    assert_eq!(
        fs::read_to_string(&site).unwrap(),
        "[log]\nlevel = \"debug\"\n"
    );
    assert_eq!(
        mode(&site),
        0o644,
        "the daemon and operators must be able to read it"
    );
    assert!(
        log.contains(
            &"endpoint-copier: installed /etc/endpoint-copier/config.d/50-site.toml (mode 0644)"
                .to_owned()
        )
    );
}

#[test]
fn a_new_binary_replaces_the_installed_one_and_is_logged_as_updated() {
    let fx = Fixture::new();
    fx.run_ok(&[("ENDPOINT_COPIER_CHECK", "off")]);

    fx.set_binary("v2");
    let log = fx.run_ok(&[("ENDPOINT_COPIER_CHECK", "off")]);

    let installed = fs::read_to_string(fx.at("/usr/bin/endpoint-copier")).unwrap();
    assert!(installed.contains("fake endpoint-copier v2"));
    assert_eq!(
        log.first().map(String::as_str),
        Some("endpoint-copier: updated /usr/bin/endpoint-copier (mode 0755)")
    );
    assert_eq!(
        log.last().map(String::as_str),
        Some("endpoint-copier: done, 1 change(s)")
    );
}

#[test]
fn a_wrong_mode_on_an_installed_file_is_repaired() {
    let fx = Fixture::new();
    fx.run_ok(&[("ENDPOINT_COPIER_CHECK", "off")]);
    fs::set_permissions(fx.at(UNIT_PATH), fs::Permissions::from_mode(0o600)).unwrap();

    let log = fx.run_ok(&[("ENDPOINT_COPIER_CHECK", "off")]);

    assert_eq!(mode(&fx.at(UNIT_PATH)), 0o644);
    assert!(
        log.contains(
            &"endpoint-copier: updated /usr/lib/systemd/system/endpoint-copier.service (mode 0644)"
                .to_owned()
        )
    );
}

#[test]
fn a_missing_input_file_fails_before_anything_is_installed_and_names_the_file() {
    let fx = Fixture::new();
    fs::remove_file(fx.files.join("endpoint-copier-10-defaults.toml")).unwrap();

    let output = fx.run(&[]);

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("endpoint-copier-10-defaults.toml' is missing"),
        "stderr: {stderr}"
    );
    assert!(snapshot(&fx.root).is_empty(), "something was installed");
}

#[test]
fn a_unit_without_wanted_by_is_refused_with_a_reason() {
    let fx = Fixture::new();
    fx.write_file(
        "endpoint-copier.service",
        "[Service]\nExecStart=/usr/bin/endpoint-copier run\n",
        0o644,
    );

    let output = fx.run(&[("ENDPOINT_COPIER_CHECK", "off")]);

    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("has no WantedBy= in [Install]"));
}

#[test]
fn check_runs_the_installed_binary_on_the_installed_config_folders() {
    let fx = Fixture::new();
    fx.run_ok(&[]);

    let calls = fs::read_to_string(&fx.fake_log).unwrap();
    let checks: Vec<&str> = calls.lines().filter(|l| l.starts_with("check")).collect();
    let root = fx.root.display();
    assert_eq!(
        checks.join("\n"),
        format!(
            "check --config-dir {root}/usr/lib/endpoint-copier/config.d --config-dir {root}/etc/endpoint-copier/config.d"
        )
    );
}

#[test]
fn a_failed_check_is_a_warning_by_default_and_an_error_when_strict() {
    let fx = Fixture::new();
    let log = fx.run_ok(&[("FAKE_EXIT", "78")]);
    assert!(
        log.iter().any(|l| l.starts_with(
            "endpoint-copier: warning: endpoint-copier check failed with exit code 78"
        )),
        "log: {log:#?}"
    );

    let output = fx.run(&[("FAKE_EXIT", "78"), ("ENDPOINT_COPIER_CHECK", "strict")]);
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("endpoint-copier check failed with exit code 78")
    );
}

#[test]
fn check_off_never_runs_check() {
    let fx = Fixture::new();
    fx.run_ok(&[("ENDPOINT_COPIER_CHECK", "off")]);
    let calls = fs::read_to_string(&fx.fake_log).unwrap();
    assert!(
        calls.lines().all(|l| l.starts_with("generate ")),
        "the binary ran something else than generate although check was off: {calls}"
    );
}

#[test]
fn the_real_binary_installs_its_man_pages_and_completions_where_the_rpm_puts_them() {
    let fx = Fixture::new();
    fx.use_real_binary();
    let log = fx.run_ok(&[("ENDPOINT_COPIER_CHECK", "off")]);

    let arch = std::env::consts::ARCH;
    assert_eq!(
        log.first().map(String::as_str),
        Some(format!("endpoint-copier: binary built for {arch}, like this node").as_str()),
        "log: {log:#?}"
    );
    for name in [
        "endpoint-copier",
        "endpoint-copier-run",
        "endpoint-copier-check",
        "endpoint-copier-status",
        "endpoint-copier-drain",
        "endpoint-copier-resume",
        "endpoint-copier-version",
    ] {
        let page = fx.at(&format!("/usr/share/man/man1/{name}.1.gz"));
        assert_eq!(mode(&page), 0o644, "{name}");
        let out = Command::new("gzip").arg("-dc").arg(&page).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(&format!(".TH {name} 1 ")), "{name}: {text}");
    }
    let bash = fs::read_to_string(fx.at("/usr/share/bash-completion/completions/endpoint-copier"))
        .unwrap();
    assert!(bash.contains("complete -F"), "{bash}");
    let zsh = fs::read_to_string(fx.at("/usr/share/zsh/site-functions/_endpoint-copier")).unwrap();
    assert!(zsh.starts_with("#compdef endpoint-copier"), "{zsh}");
    let fish =
        fs::read_to_string(fx.at("/usr/share/fish/vendor_completions.d/endpoint-copier.fish"))
            .unwrap();
    assert!(fish.contains("complete -c endpoint-copier"), "{fish}");

    // Generated again on the next run, byte for byte: nothing changes.
    let before = snapshot(&fx.root);
    let again = fx.run_ok(&[("ENDPOINT_COPIER_CHECK", "off")]);
    assert_eq!(snapshot(&fx.root), before, "log: {again:#?}");
    assert_eq!(
        again.last().map(String::as_str),
        Some("endpoint-copier: nothing to change, already installed and enabled")
    );
}

#[test]
fn a_binary_for_another_arch_is_refused_before_anything_is_installed() {
    let fx = Fixture::new();
    let (other, machine) = if std::env::consts::ARCH == "aarch64" {
        ("x86_64", 62)
    } else {
        ("aarch64", 183)
    };
    fx.set_elf_binary(machine);

    let output = fx.run(&[("ENDPOINT_COPIER_CHECK", "off")]);

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "is built for {other} but this node is {}",
            std::env::consts::ARCH
        )),
        "stderr: {stderr}"
    );
    assert!(snapshot(&fx.root).is_empty(), "something was installed");
}

#[test]
fn a_file_that_is_no_executable_is_refused() {
    let fx = Fixture::new();
    fx.write_file("endpoint-copier", "<html>404 Not Found</html>\n", 0o755);

    let output = fx.run(&[("ENDPOINT_COPIER_CHECK", "off")]);

    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("is not an x86_64 or aarch64 executable")
    );
    assert!(snapshot(&fx.root).is_empty(), "something was installed");
}

#[test]
fn a_binary_that_cannot_generate_its_docs_is_installed_with_a_warning() {
    let fx = Fixture::new();
    let log = fx.run_ok(&[
        ("ENDPOINT_COPIER_CHECK", "off"),
        ("FAKE_GENERATE_EXIT", "64"),
    ]);
    assert!(
        log.contains(
            &"endpoint-copier: warning: endpoint-copier generate failed; no man pages or shell completions installed"
                .to_owned()
        ),
        "log: {log:#?}"
    );
    assert!(fx.at("/usr/bin/endpoint-copier").is_file());
    assert!(!fx.at("/usr/share/man").exists());
}

#[test]
fn an_unknown_check_mode_is_rejected_before_any_change() {
    let fx = Fixture::new();
    let output = fx.run(&[("ENDPOINT_COPIER_CHECK", "sometimes")]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("ENDPOINT_COPIER_CHECK='sometimes'"));
    assert!(snapshot(&fx.root).is_empty());
}

#[test]
fn staged_eib_folder_installs_the_same_files_it_was_staged_from() {
    let fx = Fixture::new();
    // A stand-in checkout: stage.sh reads the unit and defaults from their real paths in it.
    let checkout = fx.files.parent().unwrap().join("checkout");
    fs::create_dir_all(checkout.join("systemd")).unwrap();
    fs::create_dir_all(checkout.join("packaging/config.d")).unwrap();
    fs::copy(
        fx.files.join("endpoint-copier.service"),
        checkout.join("systemd/endpoint-copier.service"),
    )
    .unwrap();
    fs::copy(
        fx.files.join("endpoint-copier-10-defaults.toml"),
        checkout.join("packaging/config.d/10-defaults.toml"),
    )
    .unwrap();
    let site = checkout.join("site.toml");
    fs::write(&site, "# site\n").unwrap();
    let eib = fx.files.parent().unwrap().join("eib");
    fs::create_dir_all(&eib).unwrap();

    let stage = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/combustion/stage.sh"))
        .arg(&eib)
        .arg(&site)
        .env("SOURCE_DIR", &checkout)
        .env("ENDPOINT_COPIER_BINARY", fx.files.join("endpoint-copier"))
        .output()
        .unwrap();
    assert!(
        stage.status.success(),
        "{}",
        String::from_utf8_lossy(&stage.stderr)
    );

    let staged_script = eib.join("custom/scripts/25-endpoint-copier.sh");
    assert_eq!(
        mode(&staged_script),
        0o755,
        "EIB runs custom scripts directly"
    );
    assert_eq!(fs::read(&staged_script).unwrap(), fs::read(SCRIPT).unwrap());
    let output = Command::new("bash")
        .arg(&staged_script)
        .env("ENDPOINT_COPIER_ROOT", &fx.root)
        .env("ENDPOINT_COPIER_FILES", eib.join("custom/files"))
        .env("ENDPOINT_COPIER_SYSTEMCTL", "/nonexistent/systemctl")
        .env("ENDPOINT_COPIER_CHECK", "off")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        fs::read(fx.at("/usr/bin/endpoint-copier")).unwrap(),
        fs::read(fx.files.join("endpoint-copier")).unwrap()
    );
    assert_eq!(
        fs::read_to_string(fx.at("/etc/endpoint-copier/config.d/50-site.toml")).unwrap(),
        "# site\n"
    );
    assert!(fx.at(UNIT_PATH).is_file());
}
