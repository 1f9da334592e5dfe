//! The runtime lock: one file in `[lease] runtime_dir` (default `/run/endpoint-copier/lease`, the
//! unit's `RuntimeDirectory=`) on which every running copy holds an exclusive, non-blocking
//! `flock`, and which holds a random token that names the lock (and the pid of its holder, for
//! humans).
//!
//! What it is for: a claim on the Lease carries the token of the lock its writer held (the
//! `endpoint-copier/claim` annotation, put on every write by [`mark_claim`] with the writing
//! process's nonce, its text built and judged in `decide.rs`). A copy that holds the
//! lock and reads a claim naming its own identity and carrying its own token knows that claim's
//! writer no longer holds the lock — the kernel drops a `flock` when its process dies — so it may
//! take the Lease over at once instead of waiting out a dead predecessor's claim. The argument,
//! and its assumptions, are in `docs/development/lease.md` ("A restart on the same host").
//!
//! What it leaves to others: `daemon` takes the lock at start, refuses to run when another live
//! copy holds it ([`Error::Held`]) and runs without it, logging once, when the directory is
//! unusable ([`Error::Unusable`]); the elector keeps the [`RuntimeLock`] for as long as it may
//! write the Lease.

use std::fs::{DirBuilder, File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use k8s_openapi::api::coordination::v1::LeaseSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::decide;

/// Name of the lock file inside the runtime directory.
pub const LOCK_FILE: &str = "claim.lock";

/// Length of a token in hex digits (128 random bits: two lock files never share one by chance).
const TOKEN_HEX: usize = 32;

/// Why the runtime lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Another live process holds the lock: a second copy sharing this runtime directory.
    #[error(
        "another endpoint-copier ({}) holds the runtime lock '{}'; only one copy may run per runtime directory (stop it, or give this copy another [lease] runtime_dir and identity)",
        pid.map_or_else(|| "pid unknown".to_owned(), |p| format!("pid {p}")),
        path.display()
    )]
    Held {
        /// The lock file.
        path: PathBuf,
        /// The holder's pid as it wrote it into the file (absent if it had not yet).
        pid: Option<u32>,
    },
    /// The directory or the file cannot be created, opened, locked or written (not root, a
    /// read-only file system, the unit's `RuntimeDirectory=` missing).
    #[error("cannot use the runtime lock '{}'", path.display())]
    Unusable {
        /// The lock file (or the directory, when that failed).
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
}

/// The lock, held until this value is dropped (the kernel releases it when the file is closed,
/// or when the process dies, however it dies).
#[derive(Debug)]
pub struct RuntimeLock {
    /// The open, locked file; never read again, kept only for the lock.
    _file: File,
    /// Where it is, for logs.
    path: PathBuf,
    /// The token of this lock file (lowercase hex).
    token: String,
}

impl RuntimeLock {
    /// Takes the exclusive lock on `dir/claim.lock` without waiting, creating the directory
    /// (mode 0700) and the file (mode 0600) if needed; keeps the token the file holds or writes
    /// a fresh one, and writes our pid beside it.
    ///
    /// # Errors
    /// [`Error::Held`] when another live process holds the lock; [`Error::Unusable`] when the
    /// directory or file cannot be used.
    pub fn acquire(dir: &Path) -> Result<RuntimeLock, Error> {
        let path = dir.join(LOCK_FILE);
        let unusable = |source| Error::Unusable {
            path: path.clone(),
            source,
        };
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(unusable)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(unusable)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let pid = read_content(&mut file)
                    .ok()
                    .and_then(|c| parse(&c).map(|(_, pid)| pid))
                    .flatten();
                return Err(Error::Held { path, pid });
            }
            Err(TryLockError::Error(e)) => return Err(unusable(e)),
        }
        // Only the holder of the lock writes the file, so the token can only be replaced while
        // no process holds it: a live holder's claims stay vouched for by the token it read.
        let content = read_content(&mut file).map_err(unusable)?;
        let token = match parse(&content) {
            Some((token, _)) => token.to_owned(),
            None => fresh_token().map_err(unusable)?,
        };
        let line = format!("{token} {}\n", std::process::id());
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(line.as_bytes()))
            .map_err(unusable)?;
        Ok(RuntimeLock {
            _file: file,
            path,
            token,
        })
    }

    /// The token of this lock file, written into our claims.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The lock file, for logs.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn read_content(file: &mut File) -> io::Result<String> {
    let mut content = String::new();
    file.seek(SeekFrom::Start(0))?;
    file.take(256).read_to_string(&mut content)?;
    Ok(content)
}

/// `"<token> <pid>"` → the token (if well-formed) and the pid (if present and numeric).
fn parse(content: &str) -> Option<(&str, Option<u32>)> {
    let mut words = content.split_whitespace();
    let token = words
        .next()
        .filter(|t| t.len() == TOKEN_HEX && t.bytes().all(|b| b.is_ascii_hexdigit()))?;
    Some((token, words.next().and_then(|p| p.parse().ok())))
}

/// 128 random bits from the kernel, as lowercase hex.
fn fresh_token() -> io::Result<String> {
    let mut bytes = [0_u8; TOKEN_HEX / 2];
    File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Sets the `endpoint-copier/claim` annotation on the Lease record `spec` about to be written by
/// the process with `nonce`, with the runtime lock's token when we hold it; removes it when
/// there is neither. Rewriting it on every write matters: a stale mark left by an earlier run
/// must never vouch for a record written without the lock.
pub fn mark_claim(
    lock: Option<&RuntimeLock>,
    nonce: Option<&str>,
    metadata: &mut ObjectMeta,
    spec: &LeaseSpec,
) {
    if lock.is_none() && nonce.is_none() {
        if let Some(a) = metadata.annotations.as_mut() {
            a.remove(decide::CLAIM_ANNOTATION);
        }
        return;
    }
    metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(
            decide::CLAIM_ANNOTATION.to_owned(),
            decide::claim_mark(
                lock.map(RuntimeLock::token),
                std::process::id(),
                nonce,
                spec,
            ),
        );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_directory_is_refused_naming_the_holder_pid() {
        let dir = tempfile::tempdir().unwrap();
        let first = RuntimeLock::acquire(dir.path()).unwrap();
        let e = RuntimeLock::acquire(dir.path()).unwrap_err();
        match &e {
            Error::Held { path, pid } => {
                assert_eq!(path, &dir.path().join(LOCK_FILE));
                assert_eq!(*pid, Some(std::process::id()));
            }
            other => panic!("expected Held, got {other}"),
        }
        assert!(e.to_string().contains("holds the runtime lock"), "{e}");
        drop(first);
    }

    #[test]
    fn the_token_survives_a_release_and_a_new_lock() {
        let dir = tempfile::tempdir().unwrap();
        let first = RuntimeLock::acquire(dir.path()).unwrap();
        let token = first.token().to_owned();
        assert_eq!(token.len(), TOKEN_HEX);
        drop(first);
        let second = RuntimeLock::acquire(dir.path()).unwrap();
        assert_eq!(second.token(), token);
    }

    #[test]
    fn two_directories_have_different_tokens() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (la, lb) = (
            RuntimeLock::acquire(a.path()).unwrap(),
            RuntimeLock::acquire(b.path()).unwrap(),
        );
        assert_ne!(la.token(), lb.token());
    }

    #[test]
    fn a_missing_directory_is_created_and_a_garbled_file_gets_a_fresh_token() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("a/b");
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join(LOCK_FILE), "not a token\n").unwrap();
        let lock = RuntimeLock::acquire(&sub).unwrap();
        assert_eq!(lock.token().len(), TOKEN_HEX);
        let fresh = RuntimeLock::acquire(&dir.path().join("c")).unwrap();
        assert_eq!(fresh.path(), dir.path().join("c").join(LOCK_FILE));
    }

    #[test]
    fn an_unusable_directory_is_reported_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain");
        std::fs::write(&file, "").unwrap();
        assert!(matches!(
            RuntimeLock::acquire(&file.join("sub")),
            Err(Error::Unusable { .. })
        ));
    }
}
