//! Provenance: where each config value came from — a drop-in (file, line, column), an
//! environment variable or a flag — so that every error names the place to fix.
//!
//! Owns [`Provenance`], the stack of merged layers (`Layers`), locating a key's span in a drop-in
//! (re-parsed with spans only when an error needs a position), and turning figment's errors into
//! [`Error`]s. Leaves to others: which files are layers (`drop_ins`), the merge itself and the
//! environment's parsing (`config::load_from`), the value checks (`validate`).

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use figment::error::Kind;
use figment::value::{Dict, Value};
use toml::de::{DeTable, DeValue};

use super::Error;
use super::raw::expected_type;

/// Where a config value came from, as printed at the start of an error message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provenance {
    /// A drop-in file, with the 1-based line and column of the key or value.
    File {
        /// The drop-in.
        path: PathBuf,
        /// Line, from 1.
        line: usize,
        /// Column in characters, from 1.
        column: usize,
    },
    /// An `ENDPOINT_COPIER_*` environment variable.
    Env {
        /// The variable's full name.
        var: String,
    },
    /// A command-line flag.
    Flag {
        /// The flag, e.g. `--kubeconfig`.
        flag: &'static str,
    },
    /// The built-in default (never the cause of an error on its own; named for completeness).
    Default,
}

impl fmt::Display for Provenance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Provenance::File { path, line, column } => {
                write!(f, "{}:{line}:{column}", path.display())
            }
            Provenance::Env { var } => write!(f, "environment variable {var}"),
            Provenance::Flag { flag } => write!(f, "flag {flag}"),
            Provenance::Default => f.write_str("built-in default"),
        }
    }
}

/// One merged source, in merge order.
enum Layer {
    /// A drop-in; its text is re-parsed with spans only when an error needs a position (the
    /// happy path parses each file once, without spans).
    File {
        /// The drop-in.
        path: PathBuf,
        /// Its whole text.
        text: String,
    },
    /// An environment variable or a flag, as the one-key dict it contributed.
    Dict {
        /// The variable or the flag.
        origin: Provenance,
        /// `{table = {key = value}}`.
        dict: Dict,
    },
}

/// Every layer of one load, in merge order (the last one wins a key).
#[derive(Default)]
pub(super) struct Layers(Vec<Layer>);

/// Whether an error points at the key itself (unknown keys) or at its value.
#[derive(Clone, Copy)]
pub(super) enum Part {
    /// The key (`duraton_secs = 20` → column of `d`).
    Key,
    /// The value (`duration_secs = "15s"` → column of `"`).
    Value,
}

impl Layers {
    /// Records a drop-in that was merged.
    pub(super) fn push_file(&mut self, path: PathBuf, text: String) {
        self.0.push(Layer::File { path, text });
    }

    /// Records an environment variable or a flag that was merged as `dict`.
    pub(super) fn push_dict(&mut self, origin: Provenance, dict: Dict) {
        self.0.push(Layer::Dict { origin, dict });
    }

    /// The origin of the value at `path` (segments; array indices as numbers): the last layer that
    /// sets it. Arrays are replaced whole by a merge, so a layer that sets the array owns every
    /// element of it.
    pub(super) fn origin(&self, path: &[String], part: Part) -> Provenance {
        // The prefix that decides ownership: up to the first array index.
        let owner_len = path
            .iter()
            .position(|s| s.parse::<usize>().is_ok())
            .unwrap_or(path.len());
        let owner = &path[..owner_len];
        for layer in self.0.iter().rev() {
            match layer {
                Layer::File { path: file, text } => {
                    let Ok(table) = DeTable::parse(text) else {
                        continue;
                    };
                    let root = DeValue::Table(table.into_inner());
                    if locate(&root, owner).is_none() {
                        continue;
                    }
                    let span = locate_deepest(&root, path, part);
                    return file_origin(file, text, span.start);
                }
                Layer::Dict { origin, dict } => {
                    if dict_contains(dict, owner) {
                        return origin.clone();
                    }
                }
            }
        }
        Provenance::Default
    }
}

/// The key and value spans of `path` inside a parsed document, if every segment exists.
fn locate(root: &DeValue<'_>, path: &[String]) -> Option<(Range<usize>, Range<usize>)> {
    let mut node = root;
    let mut spans = None;
    for seg in path {
        match node {
            DeValue::Table(t) => {
                let (k, v) = t.iter().find(|(k, _)| k.get_ref() == seg)?;
                spans = Some((k.span(), v.span()));
                node = v.get_ref();
            }
            DeValue::Array(a) => {
                let v = a.get(seg.parse::<usize>().ok()?)?;
                spans = Some((v.span(), v.span()));
                node = v.get_ref();
            }
            _ => return None,
        }
    }
    spans
}

/// The span of the longest existing prefix of `path` (the key or its value), so an error always
/// points somewhere useful even when the exact key is not in this file.
fn locate_deepest(root: &DeValue<'_>, path: &[String], part: Part) -> Range<usize> {
    for len in (1..=path.len()).rev() {
        if let Some((key, value)) = locate(root, &path[..len]) {
            return match part {
                Part::Key => key,
                Part::Value => value,
            };
        }
    }
    0..0
}

/// Whether `dict` sets `path` (every segment present).
fn dict_contains(dict: &Dict, path: &[String]) -> bool {
    let Some((first, rest)) = path.split_first() else {
        return true;
    };
    let mut node = match dict.get(first) {
        Some(v) => v,
        None => return false,
    };
    for seg in rest {
        node = match node {
            Value::Dict(_, d) => match d.get(seg) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    true
}

/// `path:line:column` for a byte offset into `text` (1-based; column in characters).
pub(super) fn file_origin(path: &Path, text: &str, offset: usize) -> Provenance {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit_once('\n')
        .map_or(before, |(_, last)| last)
        .chars()
        .count()
        + 1;
    Provenance::File {
        path: path.to_owned(),
        line,
        column,
    }
}

/// `["pair", "1", "source"]` → `pair[1].source`.
pub(super) fn key_name(path: &[String]) -> String {
    let mut out = String::new();
    for seg in path {
        if seg.parse::<usize>().is_ok() {
            out.push('[');
            out.push_str(seg);
            out.push(']');
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(seg);
        }
    }
    out
}

/// The first of figment's errors as an [`Error`], positioned through `layers`.
pub(super) fn from_figment(e: figment::Error, layers: &Layers) -> Error {
    // figment may chain several errors; the first is the one to fix first.
    let e = e.into_iter().next().unwrap_or_else(|| "empty error".into());
    let key = key_name(&e.path);
    match e.kind {
        Kind::UnknownField(_, expected) => Error::UnknownKey {
            origin: layers.origin(&e.path, Part::Key),
            key,
            expected: expected.join(", "),
        },
        Kind::InvalidType(found, serde_expected) => Error::WrongType {
            origin: layers.origin(&e.path, Part::Value),
            expected: expected_type(&e.path).map_or(serde_expected, str::to_owned),
            key,
            found: found.to_string(),
        },
        Kind::InvalidValue(found, _) => Error::InvalidValue {
            origin: layers.origin(&e.path, Part::Value),
            reason: format!(
                "{found} is out of range, expected {}",
                expected_type(&e.path).unwrap_or("another value")
            ),
            key,
        },
        other => Error::InvalidValue {
            origin: layers.origin(&e.path, Part::Value),
            key,
            reason: other.to_string(),
        },
    }
}
