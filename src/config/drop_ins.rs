//! Drop-in discovery: which `*.toml` files of the search path are merged, and in which order.
//!
//! Owns the precedence rule, as systemd applies it to its own drop-ins: a same-named file in a
//! later directory masks the earlier one, an empty file or a symlink to `/dev/null` masks and adds
//! nothing, and the rest merge in file-name order whatever their directory. The rule itself is the
//! pure [`resolve_drop_ins`]; [`list_dir`] is the only file-system access. Leaves to others:
//! reading and merging the files (`config::load_from`), the default search path (`names`).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::Error;

/// One `*.toml` entry of a drop-in directory, as [`resolve_drop_ins`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// File name, the key for masking and for merge order.
    name: OsString,
    /// Full path.
    path: PathBuf,
    /// Empty, or a symlink to `/dev/null`: hides same-named files of earlier directories and
    /// contributes nothing itself.
    masked: bool,
}

/// The precedence rule, pure: `listings[i]` is the `*.toml` entries of the i-th directory, in
/// increasing precedence. A same-named entry in a later directory replaces the earlier one; masked
/// winners are dropped; the rest are ordered by file name (bytes), not by directory.
fn resolve_drop_ins(listings: Vec<Vec<Entry>>) -> Vec<PathBuf> {
    let mut by_name: BTreeMap<OsString, Entry> = BTreeMap::new();
    for listing in listings {
        for entry in listing {
            by_name.insert(entry.name.clone(), entry);
        }
    }
    by_name
        .into_values()
        .filter(|e| !e.masked)
        .map(|e| e.path)
        .collect()
}

/// Lists one directory's drop-ins: `*.toml` names only; a missing directory is empty; anything
/// but a regular file (after following symlinks) is skipped, except `/dev/null`, which masks.
fn list_dir(dir: &Path) -> Result<Vec<Entry>, Error> {
    let read = match fs::read_dir(dir) {
        Ok(read) => read,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(Error::ReadDir {
                path: dir.to_owned(),
                source,
            });
        }
    };
    let mut entries = Vec::new();
    for item in read {
        let item = item.map_err(|source| Error::ReadDir {
            path: dir.to_owned(),
            source,
        })?;
        let name = item.file_name();
        if Path::new(&name).extension().is_none_or(|ext| ext != "toml") {
            continue;
        }
        let path = item.path();
        // As systemd does for its own drop-ins: a symlink to /dev/null or an empty file masks.
        let masked = if fs::canonicalize(&path).is_ok_and(|p| p == Path::new("/dev/null")) {
            true
        } else {
            match fs::metadata(&path) {
                Ok(meta) if meta.is_file() => meta.len() == 0,
                // Directories, sockets, dangling symlinks: not drop-ins.
                Ok(_) | Err(_) => continue,
            }
        };
        entries.push(Entry { name, path, masked });
    }
    Ok(entries)
}

/// The drop-ins to merge, in merge order, for a search path given in increasing precedence:
/// `*.toml` files only; a same-named file in a later directory masks the earlier one (an empty
/// file or a symlink to `/dev/null` masks and adds nothing); the remaining files sorted by file
/// name, whatever their directory; missing directories are skipped.
///
/// # Errors
/// [`Error::ReadDir`] when a directory exists but cannot be listed.
pub fn drop_ins(dirs: &[PathBuf]) -> Result<Vec<PathBuf>, Error> {
    let listings = dirs
        .iter()
        .map(|d| list_dir(d))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(resolve_drop_ins(listings))
}
