//! Host facts: the host name (the default Lease holder identity) and file permission bits (to warn
//! about a kubeconfig others can read). The only user of `nix`.
//!
//! What to do with these facts (which identity to use, whether to warn) is left to `config`,
//! `client` and `daemon`; this module only reads them.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Why a host fact could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `gethostname(2)` failed.
    #[error("failed to read the host name")]
    Hostname(#[source] nix::Error),
    /// The host name is empty or not UTF-8, so it cannot be a Lease holder identity.
    #[error("the host name '{0}' cannot be used as a Lease holder identity (empty or not UTF-8)")]
    BadHostname(String),
    /// `stat(2)` on a file failed.
    #[error("failed to read the permissions of '{path}'")]
    Stat {
        /// The file that was examined.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// The host name, as `hostname(1)` prints it: the default Lease holder identity.
///
/// # Errors
/// [`Error::Hostname`] when the system call fails, [`Error::BadHostname`] when the name is empty
/// or not UTF-8.
pub fn hostname() -> Result<String, Error> {
    let raw = nix::unistd::gethostname().map_err(Error::Hostname)?;
    let name = raw
        .into_string()
        .map_err(|raw| Error::BadHostname(raw.to_string_lossy().into_owned()))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(Error::BadHostname(String::new()));
    }
    Ok(name.to_owned())
}

/// The permission bits of `path` (`mode & 0o7777`, e.g. `0o600`), following symlinks as `open`
/// would.
///
/// # Errors
/// [`Error::Stat`] naming the path when it cannot be examined.
pub fn file_mode(path: &Path) -> Result<u32, Error> {
    let meta = std::fs::metadata(path).map_err(|source| Error::Stat {
        path: path.to_owned(),
        source,
    })?;
    Ok(meta.permissions().mode() & 0o7777)
}

/// Whether the group or others may read `path` (a kubeconfig holds a client key: it should be
/// 0600).
///
/// # Errors
/// [`Error::Stat`] naming the path when it cannot be examined.
pub fn is_group_or_world_readable(path: &Path) -> Result<bool, Error> {
    Ok(file_mode(path)? & 0o044 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostname_is_a_non_empty_trimmed_string() {
        let name = hostname().unwrap();
        assert!(!name.is_empty());
        assert_eq!(name, name.trim());
    }

    #[test]
    fn file_mode_reports_permission_bits_and_readability() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig.yaml");
        std::fs::write(&path, "apiVersion: v1\n").unwrap();

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(file_mode(&path).unwrap(), 0o600);
        assert!(!is_group_or_world_readable(&path).unwrap());

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(is_group_or_world_readable(&path).unwrap());

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o604)).unwrap();
        assert!(is_group_or_world_readable(&path).unwrap());
    }

    #[test]
    fn file_mode_names_the_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.yaml");
        let err = file_mode(&path).unwrap_err();
        assert!(err.to_string().contains("absent.yaml"), "{err}");
    }
}
