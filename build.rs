//! Build script: bakes the git commit and the rustc version into the binary, for
//! `endpoint-copier version`.
//!
//! It sets two compile-time environment variables that `src/main.rs` reads with `env!`:
//! - `BUILD_GIT_COMMIT`: `SOURCE_GIT_COMMIT` when set (the RPM spec passes it, since an
//!   OBS build runs from a tarball without `.git`), else the short hash of `HEAD` when the crate is
//!   the top of a git checkout, else `unknown`;
//! - `BUILD_RUSTC_VERSION`: the first line of `$RUSTC -V`, else `rustc unknown`.
//!
//! It never fails the build: version information is nice to have, a release is not.
//! What the binary prints is `main.rs`'s business.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Length of the abbreviated commit hash: long enough to stay unique in this repository for years.
const SHORT_SHA_LEN: usize = 12;
/// Longest `SOURCE_GIT_COMMIT` accepted (a full SHA-256 object name is 64 characters).
const MAX_COMMIT_LEN: usize = 64;

fn main() {
    // Without this line, emitting any other rerun-if-changed would stop cargo from rerunning us
    // when this file itself changes.
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=SOURCE_GIT_COMMIT");

    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let commit = commit_from_env()
        .unwrap_or_else(|| commit_from_git(&manifest_dir).unwrap_or_else(|| "unknown".to_owned()));
    println!("cargo:rustc-env=BUILD_GIT_COMMIT={commit}");

    // Cargo passes the compiler it uses in RUSTC, and reruns build scripts when it changes.
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let rustc_version = run(Command::new(rustc).arg("-V"))
        .and_then(|out| out.lines().next().map(str::to_owned))
        .filter(|line| !line.is_empty())
        .unwrap_or_else(|| "rustc unknown".to_owned());
    println!("cargo:rustc-env=BUILD_RUSTC_VERSION={rustc_version}");
}

/// `SOURCE_GIT_COMMIT`, if set to something that looks like a commit name.
fn commit_from_env() -> Option<String> {
    let value = std::env::var("SOURCE_GIT_COMMIT").ok()?;
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if value.len() <= MAX_COMMIT_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    {
        Some(value.to_owned())
    } else {
        // A newline here would break the `cargo:` protocol; say why the value was dropped.
        println!(
            "cargo:warning=ignoring SOURCE_GIT_COMMIT '{}': expected up to {MAX_COMMIT_LEN} of [A-Za-z0-9._-]",
            value.escape_debug()
        );
        None
    }
}

/// The short hash of `HEAD`, if `dir` is the top of a git work tree (not merely inside one: a
/// tarball unpacked into some other checkout must not report that checkout's commit).
fn commit_from_git(dir: &Path) -> Option<String> {
    let toplevel = git(dir, &["rev-parse", "--show-toplevel"])?;
    let same = match (Path::new(&toplevel).canonicalize(), dir.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if !same {
        return None;
    }

    // Rerun when HEAD moves: HEAD itself (checkout), the branch it points to (commit), and
    // packed-refs (gc, fetch). `--git-path` resolves them for linked worktrees too, where `.git` is
    // a file. Only existing files are listed: cargo treats a missing one as always changed.
    let mut watched = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
    if let Some(head_ref) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
        watched.push(head_ref);
    }
    for name in watched {
        if let Some(path) = git(dir, &["rev-parse", "--git-path", &name]) {
            let path = dir.join(path);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }

    let sha = git(
        dir,
        &["rev-parse", &format!("--short={SHORT_SHA_LEN}"), "HEAD"],
    )?;
    if sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        Some(sha)
    } else {
        None
    }
}

/// Runs `git -C dir args…` and returns its trimmed stdout, or `None` on any failure.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    run(Command::new("git").arg("-C").arg(dir).args(args))
}

/// Runs a command and returns its trimmed stdout if it succeeded with non-empty output.
fn run(command: &mut Command) -> Option<String> {
    let output = command.output().ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}
