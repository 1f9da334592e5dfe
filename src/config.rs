//! Configuration: locating the TOML drop-ins, merging them with figment, then the
//! `ENDPOINT_COPIER_*` environment and the command-line flags, and validating the result once into
//! [`Config`].
//!
//! Owns: the drop-in precedence rule ([`drop_ins`]), the raw TOML schema (`RawConfig`, private),
//! the defaults ([`Config::default`], mirrored by `packaging/config.d/10-defaults.toml`) and every
//! config error with the file, line and column (or the variable, or the flag) that caused it.
//! Leaves to others: parsing flags (`cli`), the `ENDPOINT_COPIER_LOG` filter and subscriber
//! (`logging`), reading the kubeconfig (`client`), the host name used when `lease.identity` is
//! unset (`host`), and the exit code itself (`main`, through [`Error::exit_code`]). No network, no
//! logging, no globals: [`load_from`] takes the directories and the environment as arguments.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::error::Kind;
use figment::providers::Serialized;
use figment::value::{Dict, Value};
use serde::{Deserialize, Serialize};
use toml::de::{DeTable, DeValue};

use crate::names::{self, ServiceRef};

/// Exit code for every config error (`EX_CONFIG`): systemd's `RestartPreventExitStatus=64 78`
/// keeps a typo from becoming a restart loop.
pub const EXIT_CONFIG: i32 = 78;

/// Longest Lease timing accepted (each of duration, renew deadline, retry period).
const MAX_LEASE_SECS: Duration = Duration::from_secs(3600);
/// Longest resync interval and backoff cap accepted.
const MAX_SYNC_SECS: Duration = Duration::from_secs(86_400);

/// The validated configuration, with every default filled in. Only this leaves the module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Where the kubeconfig comes from (key `kubeconfig`, default: `auto`).
    pub kubeconfig: Kubeconfig,
    /// Whether a kubeconfig with `insecure-skip-tls-verify: true` is accepted (key
    /// `allow_insecure_tls`, default: false).
    pub allow_insecure_tls: bool,
    /// The configured pairs (`[[pair]]`, default: `default/kubernetes` → `default/kubernetes-vip`).
    /// May be empty (`pair = []`): then only annotated pairs are mirrored.
    pub pairs: Vec<PairConfig>,
    /// Pairs declared by annotations on target Services (`[annotations]`).
    pub annotations: Annotations,
    /// Leader election (`[lease]`).
    pub lease: Lease,
    /// Periodic resync and retry backoff (`[sync]`).
    pub sync: Sync,
    /// Logging (`[log]`).
    pub log: Log,
    /// The metrics and health endpoint (`[metrics]`).
    pub metrics: Metrics,
}

/// Where the daemon finds its kubeconfig (key `kubeconfig`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kubeconfig {
    /// `"auto"` (the default): [`names::AUTO_KUBECONFIGS`] in order, RKE2 then K3s; the daemon
    /// waits while neither exists.
    Auto,
    /// An absolute path to a kubeconfig file.
    Path(PathBuf),
}

/// One configured pair (`[[pair]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairConfig {
    /// The Service whose EndpointSlices are copied (key `source`).
    pub source: ServiceRef,
    /// The Service, without selector, whose EndpointSlices we own (key `target`).
    pub target: ServiceRef,
}

/// Pairs declared through annotations on target Services (`[annotations]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotations {
    /// Whether annotated target Services are watched and mirrored (key `enabled`, default: true).
    pub enabled: bool,
    /// The sources an annotated pair may read outside its own namespace (key `allowed_sources`,
    /// default: `["default/kubernetes"]`).
    pub allowed_sources: Vec<ServiceRef>,
}

/// Leader election on a `coordination.k8s.io` Lease (`[lease]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Namespace of the Lease, a DNS-1123 label (key `namespace`, default: `kube-system`).
    pub namespace: String,
    /// Name of the Lease, a DNS-1123 subdomain (key `name`, default: `endpoint-copier`).
    pub name: String,
    /// Holder identity written into the Lease (key `identity`, default: unset, meaning the host
    /// name, which `host` reads).
    pub identity: Option<String>,
    /// How long a claim is valid without renewal (key `duration_secs`, default: 15 s).
    pub duration: Duration,
    /// How long the leader keeps trying to renew before it stops writing (key
    /// `renew_deadline_secs`, default: 10 s).
    pub renew_deadline: Duration,
    /// Interval between Lease attempts, for the leader and candidates (key `retry_period_secs`,
    /// default: 2 s).
    pub retry_period: Duration,
}

/// Resync and backoff (`[sync]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sync {
    /// Interval of the full resync under the watches (key `resync_interval_secs`, default: 300 s,
    /// at least 10 s).
    pub resync_interval: Duration,
    /// Cap of the jittered exponential retry backoff (key `max_backoff_secs`, default: 30 s, at
    /// least 1 s).
    pub max_backoff: Duration,
}

/// Logging (`[log]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Log {
    /// A `tracing_subscriber::EnvFilter` directive (key `level`, default: `"info"`);
    /// `ENDPOINT_COPIER_LOG` wins over it (read by `logging`, not here).
    pub level: String,
}

/// The metrics and health endpoint (`[metrics]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metrics {
    /// Loopback address the endpoint listens on (key `listen`, default: `127.0.0.1:9402`);
    /// `None` when the key is `""` (disabled).
    pub listen: Option<SocketAddr>,
}

/// Default `[metrics] listen`: loopback only, because the unit's hardening only allows loopback.
const DEFAULT_METRICS_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9402);

impl Default for Config {
    fn default() -> Self {
        Self {
            kubeconfig: Kubeconfig::Auto,
            allow_insecure_tls: false,
            pairs: vec![PairConfig {
                source: builtin_ref(names::DEFAULT_SOURCE),
                target: builtin_ref(names::DEFAULT_TARGET),
            }],
            annotations: Annotations {
                enabled: true,
                allowed_sources: vec![builtin_ref(names::DEFAULT_SOURCE)],
            },
            lease: Lease {
                namespace: names::LEASE_NAMESPACE.to_owned(),
                name: names::LEASE_NAME.to_owned(),
                identity: None,
                duration: Duration::from_secs(15),
                renew_deadline: Duration::from_secs(10),
                retry_period: Duration::from_secs(2),
            },
            sync: Sync {
                resync_interval: Duration::from_secs(300),
                max_backoff: Duration::from_secs(30),
            },
            log: Log {
                level: "info".to_owned(),
            },
            metrics: Metrics {
                listen: Some(DEFAULT_METRICS_LISTEN),
            },
        }
    }
}

/// Splits one of the built-in `namespace/name` constants without a fallible parse (a unit test
/// checks that it equals the validated parse).
fn builtin_ref(s: &str) -> ServiceRef {
    let (namespace, name) = s.split_once('/').unwrap_or(("", s));
    ServiceRef {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    }
}

/// What the command line overrides: the search path and the kubeconfig.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--config-dir DIR`, in increasing precedence; empty means [`names::CONFIG_DIRS`].
    pub config_dirs: Vec<PathBuf>,
    /// `--kubeconfig PATH`: wins over the `kubeconfig` key from files and environment.
    pub kubeconfig: Option<PathBuf>,
}

/// The result of [`load`]: the configuration and the files it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// The validated configuration.
    pub config: Config,
    /// The drop-ins that were merged, in merge order (masked files left out), for logs and
    /// `endpoint-copier check`.
    pub files: Vec<PathBuf>,
}

/// Where a config value came from, as printed at the start of an error message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
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

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, line, column } => {
                write!(f, "{}:{line}:{column}", path.display())
            }
            Origin::Env { var } => write!(f, "environment variable {var}"),
            Origin::Flag { flag } => write!(f, "flag {flag}"),
            Origin::Default => f.write_str("built-in default"),
        }
    }
}

/// Why the configuration could not be loaded. Every variant exits 78.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A drop-in directory exists but could not be listed.
    #[error("failed to read config directory '{}'", path.display())]
    ReadDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A drop-in could not be read (or is not UTF-8).
    #[error("failed to read '{}'", path.display())]
    ReadFile {
        /// The drop-in.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A drop-in is not valid TOML.
    #[error("{origin}: invalid TOML: {message}")]
    Syntax {
        /// File, line and column of the error.
        origin: Origin,
        /// The parser's message.
        message: String,
    },
    /// An `ENDPOINT_COPIER_*` variable whose value is not UTF-8.
    #[error("environment variable {var} is not valid UTF-8")]
    EnvNotUnicode {
        /// The variable.
        var: String,
    },
    /// A key that does not exist (a typo, or a key from another version).
    #[error("{origin}: unknown key '{key}' (expected one of: {expected})")]
    UnknownKey {
        /// Where the key was written.
        origin: Origin,
        /// The full key, e.g. `lease.duraton_secs`.
        key: String,
        /// The keys valid at that level, comma-separated.
        expected: String,
    },
    /// A value of the wrong TOML type.
    #[error("{origin}: '{key}' has the wrong type: expected {expected}, found {found}")]
    WrongType {
        /// Where the value was written.
        origin: Origin,
        /// The full key.
        key: String,
        /// The type the key takes.
        expected: String,
        /// What was found.
        found: String,
    },
    /// A value of the right type that is not acceptable.
    #[error("{origin}: invalid value for '{key}': {reason}")]
    InvalidValue {
        /// Where the value was written (for a cross-key rule: the key named).
        origin: Origin,
        /// The full key.
        key: String,
        /// What is wrong and what is accepted.
        reason: String,
    },
}

impl Error {
    /// The process exit code for this error: always 78 (`EX_CONFIG`).
    pub fn exit_code(&self) -> i32 {
        EXIT_CONFIG
    }

    /// Where the culprit was written, when the error is about one key or file position.
    pub fn origin(&self) -> Option<&Origin> {
        match self {
            Error::Syntax { origin, .. }
            | Error::UnknownKey { origin, .. }
            | Error::WrongType { origin, .. }
            | Error::InvalidValue { origin, .. } => Some(origin),
            Error::ReadDir { .. } | Error::ReadFile { .. } | Error::EnvNotUnicode { .. } => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The raw schema: mirrors the TOML, every field optional, unknown keys refused at every level.

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    kubeconfig: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    allow_insecure_tls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pair: Option<Vec<RawPair>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    annotations: Option<RawAnnotations>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lease: Option<RawLease>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sync: Option<RawSync>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log: Option<RawLog>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics: Option<RawMetrics>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawPair {
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawAnnotations {
    #[serde(skip_serializing_if = "Option::is_none")]
    enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    allowed_sources: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawLease {
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    identity: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    renew_deadline_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_period_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawSync {
    #[serde(skip_serializing_if = "Option::is_none")]
    resync_interval_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_backoff_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    #[serde(skip_serializing_if = "Option::is_none")]
    level: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Drop-ins.

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

// ---------------------------------------------------------------------------------------------
// Loading.

/// Loads the configuration of this process: drop-ins from `o.config_dirs` (or
/// [`names::CONFIG_DIRS`]), then the process environment, then `o`.
///
/// # Errors
/// Any [`Error`]; all of them mean exit 78.
pub fn load(o: &Overrides) -> Result<Loaded, Error> {
    let dirs: Vec<PathBuf> = if o.config_dirs.is_empty() {
        names::CONFIG_DIRS.iter().map(PathBuf::from).collect()
    } else {
        o.config_dirs.clone()
    };
    let mut env = Vec::new();
    for (key, value) in std::env::vars_os() {
        // Only config keys matter; other variables (ENDPOINT_COPIER_LOG included) may be
        // anything, UTF-8 or not.
        let Some(key) = key.to_str().filter(|k| is_config_var(k)) else {
            continue;
        };
        let value = value.into_string().map_err(|_| Error::EnvNotUnicode {
            var: key.to_owned(),
        })?;
        env.push((key.to_owned(), value));
    }
    load_from(&dirs, env, o)
}

/// Loads from explicit directories (increasing precedence) and environment variables, so tests
/// never touch the process environment. `o.config_dirs` is ignored here (`dirs` is the search
/// path); `o.kubeconfig` is applied last.
///
/// Variables are `ENDPOINT_COPIER_<KEY>` with `__` between nesting levels, case-insensitive after
/// the prefix, values parsed like TOML scalars; `ENDPOINT_COPIER_LOG` (the log filter) and
/// `ENDPOINT_COPIER_TEST_*` (the test suite's) are not config keys and are ignored; other
/// variables are ignored too.
///
/// # Errors
/// Any [`Error`]; all of them mean exit 78.
pub fn load_from(
    dirs: &[PathBuf],
    env: impl IntoIterator<Item = (String, String)>,
    o: &Overrides,
) -> Result<Loaded, Error> {
    let files = drop_ins(dirs)?;
    let mut layers = Layers::default();
    // Merge, not join: a later provider wins, tables merge key by key, and an array (`pair`,
    // `allowed_sources`) is replaced as a whole.
    let mut figment = Figment::new();
    for path in &files {
        let text = fs::read_to_string(path).map_err(|source| Error::ReadFile {
            path: path.clone(),
            source,
        })?;
        let table: toml::Table = toml::from_str(&text).map_err(|e| Error::Syntax {
            origin: file_origin(path, &text, e.span().map_or(0, |s| s.start)),
            message: e.message().trim_end().to_owned(),
        })?;
        figment = figment.merge(Serialized::defaults(table));
        layers.0.push(Layer {
            source: LayerSource::File {
                path: path.clone(),
                text,
            },
        });
    }

    let mut vars: Vec<(String, String)> =
        env.into_iter().filter(|(k, _)| is_config_var(k)).collect();
    // One provider per variable, in name order, so the culprit of an error is one variable.
    vars.sort();
    for (var, value) in vars {
        let key = var[names::ENV_PREFIX.len()..].to_ascii_lowercase();
        let path: Vec<String> = key.split("__").map(str::to_owned).collect();
        // figment's Env would parse `12` as a number even for a string key (a numeric host name
        // as lease.identity); string keys take the value literally unless it is quoted.
        let literal = expected_type(&path) == Some("a string")
            && !(value.len() >= 2 && value.starts_with('"') && value.ends_with('"'));
        let parsed: Value = if literal {
            Value::from(value)
        } else {
            value
                .parse()
                .unwrap_or_else(|e: std::convert::Infallible| match e {})
        };
        let dict = nest(&path, parsed);
        figment = figment.merge(Serialized::defaults(dict.clone()));
        layers.0.push(Layer {
            source: LayerSource::Dict {
                origin: Origin::Env { var },
                dict,
            },
        });
    }

    if let Some(path) = &o.kubeconfig {
        let origin = Origin::Flag {
            flag: "--kubeconfig",
        };
        let Some(s) = path.to_str() else {
            return Err(Error::InvalidValue {
                origin,
                key: "kubeconfig".to_owned(),
                reason: format!("'{}' is not valid UTF-8", path.display()),
            });
        };
        let dict = nest(&["kubeconfig".to_owned()], Value::from(s.to_owned()));
        figment = figment.merge(Serialized::defaults(dict.clone()));
        layers.0.push(Layer {
            source: LayerSource::Dict { origin, dict },
        });
    }

    let raw: RawConfig = figment.extract().map_err(|e| from_figment(e, &layers))?;
    let config = validate(raw, &layers)?;
    Ok(Loaded { config, files })
}

/// Whether an environment variable is a config key (see [`load_from`]).
fn is_config_var(var: &str) -> bool {
    let Some(rest) = var.strip_prefix(names::ENV_PREFIX) else {
        return false;
    };
    var != names::LOG_ENV && !rest.starts_with("TEST_") && !rest.is_empty()
}

/// `["a", "b"], v` → `{a = {b = v}}`.
fn nest(path: &[String], value: Value) -> Dict {
    let mut value = value;
    for key in path.iter().skip(1).rev() {
        let mut d = Dict::new();
        d.insert(key.clone(), value);
        value = Value::from(d);
    }
    let mut d = Dict::new();
    d.insert(path.first().cloned().unwrap_or_default(), value);
    d
}

// ---------------------------------------------------------------------------------------------
// Provenance: which layer supplied a key, and where in it.

/// One merged source, in merge order.
struct Layer {
    source: LayerSource,
}

enum LayerSource {
    /// A drop-in; its text is re-parsed with spans only when an error needs a position.
    File { path: PathBuf, text: String },
    /// An environment variable or a flag.
    Dict { origin: Origin, dict: Dict },
}

#[derive(Default)]
struct Layers(Vec<Layer>);

/// Whether an error points at the key itself (unknown keys) or at its value.
#[derive(Clone, Copy)]
enum Part {
    Key,
    Value,
}

impl Layers {
    /// The origin of the value at `path` (segments; array indices as numbers): the last layer that
    /// sets it. Arrays are replaced whole by a merge, so a layer that sets the array owns every
    /// element of it.
    fn origin(&self, path: &[String], part: Part) -> Origin {
        // The prefix that decides ownership: up to the first array index.
        let owner_len = path
            .iter()
            .position(|s| s.parse::<usize>().is_ok())
            .unwrap_or(path.len());
        let owner = &path[..owner_len];
        for layer in self.0.iter().rev() {
            match &layer.source {
                LayerSource::File { path: file, text } => {
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
                LayerSource::Dict { origin, dict } => {
                    if dict_contains(dict, owner) {
                        return origin.clone();
                    }
                }
            }
        }
        Origin::Default
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
fn file_origin(path: &Path, text: &str, offset: usize) -> Origin {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit_once('\n')
        .map_or(before, |(_, last)| last)
        .chars()
        .count()
        + 1;
    Origin::File {
        path: path.to_owned(),
        line,
        column,
    }
}

/// `["pair", "1", "source"]` → `pair[1].source`.
fn key_name(path: &[String]) -> String {
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

/// What a key takes, in an operator's words (serde's own words name private Rust types).
fn expected_type(path: &[String]) -> Option<&'static str> {
    let last = path.iter().rev().find(|s| s.parse::<usize>().is_err())?;
    let is_element = path.last().is_some_and(|s| s.parse::<usize>().is_ok());
    Some(match (last.as_str(), is_element) {
        ("pair", true) => "a table with source and target",
        ("pair", false) => "an array of tables ([[pair]])",
        ("allowed_sources", true) => "a string \"namespace/name\"",
        ("allowed_sources", false) => "an array of strings \"namespace/name\"",
        ("annotations" | "lease" | "sync" | "log" | "metrics", _) => "a table",
        ("enabled" | "allow_insecure_tls", _) => "a boolean",
        (k, _) if k.ends_with("_secs") => "a non-negative integer (seconds)",
        _ => "a string",
    })
}

fn from_figment(e: figment::Error, layers: &Layers) -> Error {
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

// ---------------------------------------------------------------------------------------------
// Validation: once, into `Config`, every error naming the key and where it was set.

struct Checker<'a> {
    layers: &'a Layers,
}

impl Checker<'_> {
    fn bad(&self, path: &[&str], reason: impl Into<String>) -> Error {
        let path: Vec<String> = path.iter().map(|s| (*s).to_owned()).collect();
        Error::InvalidValue {
            origin: self.layers.origin(&path, Part::Value),
            key: key_name(&path),
            reason: reason.into(),
        }
    }

    fn service_ref(&self, path: &[&str], value: &str) -> Result<ServiceRef, Error> {
        value
            .parse::<ServiceRef>()
            .map_err(|e| self.bad(path, e.to_string()))
    }
}

fn validate(raw: RawConfig, layers: &Layers) -> Result<Config, Error> {
    let c = Checker { layers };
    let d = Config::default();

    let kubeconfig = match raw.kubeconfig.as_deref() {
        None => d.kubeconfig,
        Some("auto") => Kubeconfig::Auto,
        Some(p) if Path::new(p).is_absolute() => Kubeconfig::Path(PathBuf::from(p)),
        Some(p) => {
            return Err(c.bad(
                &["kubeconfig"],
                format!("'{p}' is neither \"auto\" nor an absolute path"),
            ));
        }
    };

    let pairs = match raw.pair {
        None => d.pairs,
        Some(raw_pairs) => {
            let mut pairs: Vec<PairConfig> = Vec::with_capacity(raw_pairs.len());
            for (i, p) in raw_pairs.iter().enumerate() {
                let idx = i.to_string();
                let Some(source) = &p.source else {
                    return Err(c.bad(&["pair", &idx], "missing key 'source'"));
                };
                let Some(target) = &p.target else {
                    return Err(c.bad(&["pair", &idx], "missing key 'target'"));
                };
                let source = c.service_ref(&["pair", &idx, "source"], source)?;
                let target = c.service_ref(&["pair", &idx, "target"], target)?;
                if source == target {
                    return Err(c.bad(
                        &["pair", &idx, "target"],
                        format!("'{target}' is also the source of this pair"),
                    ));
                }
                if let Some(j) = pairs.iter().position(|q| q.target == target) {
                    return Err(c.bad(
                        &["pair", &idx, "target"],
                        format!(
                            "'{target}' is already the target of pair[{j}]; a target has one source"
                        ),
                    ));
                }
                pairs.push(PairConfig { source, target });
            }
            pairs
        }
    };

    let ann = raw.annotations.unwrap_or_default();
    let allowed_sources = match ann.allowed_sources {
        None => d.annotations.allowed_sources,
        Some(list) => list
            .iter()
            .enumerate()
            .map(|(i, s)| c.service_ref(&["annotations", "allowed_sources", &i.to_string()], s))
            .collect::<Result<Vec<_>, _>>()?,
    };
    let annotations = Annotations {
        enabled: ann.enabled.unwrap_or(d.annotations.enabled),
        allowed_sources,
    };

    let rl = raw.lease.unwrap_or_default();
    let namespace = rl.namespace.unwrap_or(d.lease.namespace);
    if !names::is_dns1123_label(&namespace) {
        return Err(c.bad(
            &["lease", "namespace"],
            format!("'{namespace}' is not a valid namespace (a DNS-1123 label: lowercase letters, digits and '-', at most 63)"),
        ));
    }
    let name = rl.name.unwrap_or(d.lease.name);
    if !names::is_dns1123_subdomain(&name) {
        return Err(c.bad(
            &["lease", "name"],
            format!("'{name}' is not a valid Lease name (a DNS-1123 subdomain: lowercase letters, digits, '-' and '.', at most 253)"),
        ));
    }
    if rl.identity.as_deref().is_some_and(|i| i.trim().is_empty()) {
        return Err(c.bad(
            &["lease", "identity"],
            "must not be empty (leave it unset to use the host name)",
        ));
    }
    let lease = Lease {
        namespace,
        name,
        identity: rl.identity,
        duration: secs(rl.duration_secs, d.lease.duration),
        renew_deadline: secs(rl.renew_deadline_secs, d.lease.renew_deadline),
        retry_period: secs(rl.retry_period_secs, d.lease.retry_period),
    };
    // client-go's rules: the leader must give up (renew deadline) before its claim can expire
    // (duration), and have time for more than one retry before giving up (the 1.2 jitter factor).
    if lease.retry_period < Duration::from_secs(1) {
        return Err(c.bad(&["lease", "retry_period_secs"], "must be at least 1"));
    }
    if lease.renew_deadline.as_millis() * 10 <= lease.retry_period.as_millis() * 12 {
        return Err(c.bad(
            &[
                "lease",
                pick(
                    rl.renew_deadline_secs.is_some(),
                    "renew_deadline_secs",
                    "retry_period_secs",
                ),
            ],
            format!(
                "renew_deadline_secs ({}) must be greater than 1.2 × retry_period_secs ({})",
                lease.renew_deadline.as_secs(),
                lease.retry_period.as_secs()
            ),
        ));
    }
    // Upper bounds: beyond them a value is a typo, and unbounded seconds would overflow the
    // monotonic clock arithmetic (and `leaseDurationSeconds` is an int32).
    for (key, value) in [
        ("duration_secs", lease.duration),
        ("renew_deadline_secs", lease.renew_deadline),
        ("retry_period_secs", lease.retry_period),
    ] {
        if value > MAX_LEASE_SECS {
            return Err(c.bad(
                &["lease", key],
                format!("must be at most {} (one hour)", MAX_LEASE_SECS.as_secs()),
            ));
        }
    }
    if lease.duration <= lease.renew_deadline {
        return Err(c.bad(
            &[
                "lease",
                pick(
                    rl.duration_secs.is_some(),
                    "duration_secs",
                    "renew_deadline_secs",
                ),
            ],
            format!(
                "duration_secs ({}) must be greater than renew_deadline_secs ({})",
                lease.duration.as_secs(),
                lease.renew_deadline.as_secs()
            ),
        ));
    }

    let rs = raw.sync.unwrap_or_default();
    let sync = Sync {
        resync_interval: secs(rs.resync_interval_secs, d.sync.resync_interval),
        max_backoff: secs(rs.max_backoff_secs, d.sync.max_backoff),
    };
    if sync.resync_interval < Duration::from_secs(10) {
        return Err(c.bad(
            &["sync", "resync_interval_secs"],
            "must be at least 10 (a full resync lists every source and target)",
        ));
    }
    if sync.max_backoff < Duration::from_secs(1) {
        return Err(c.bad(&["sync", "max_backoff_secs"], "must be at least 1"));
    }
    if sync.resync_interval > MAX_SYNC_SECS {
        return Err(c.bad(
            &["sync", "resync_interval_secs"],
            format!("must be at most {} (one day)", MAX_SYNC_SECS.as_secs()),
        ));
    }
    if sync.max_backoff > MAX_SYNC_SECS {
        return Err(c.bad(
            &["sync", "max_backoff_secs"],
            format!("must be at most {} (one day)", MAX_SYNC_SECS.as_secs()),
        ));
    }

    let level = raw.log.and_then(|l| l.level).unwrap_or(d.log.level);
    if level.trim().is_empty() {
        return Err(c.bad(&["log", "level"], "must not be empty (e.g. \"info\")"));
    }
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&level) {
        return Err(c.bad(
            &["log", "level"],
            format!(
                "'{level}' is not a log filter ({e}); e.g. \"info\" or \"endpoint_copier=debug\""
            ),
        ));
    }

    let listen = match raw.metrics.and_then(|m| m.listen) {
        None => d.metrics.listen,
        Some(s) if s.is_empty() => None,
        Some(s) => {
            let addr: SocketAddr = s.parse().map_err(|_| {
                c.bad(
                    &["metrics", "listen"],
                    format!("'{s}' is not an address:port (e.g. \"127.0.0.1:9402\" or \"[::1]:9402\"; \"\" disables)"),
                )
            })?;
            if !addr.ip().is_loopback() {
                return Err(c.bad(
                    &["metrics", "listen"],
                    format!("'{s}' is not a loopback address (the unit only allows loopback)"),
                ));
            }
            Some(addr)
        }
    };

    Ok(Config {
        kubeconfig,
        allow_insecure_tls: raw.allow_insecure_tls.unwrap_or(d.allow_insecure_tls),
        pairs,
        annotations,
        lease,
        sync,
        log: Log { level },
        metrics: Metrics { listen },
    })
}

/// A `*_secs` value, or the default.
fn secs(value: Option<u64>, default: Duration) -> Duration {
    value.map_or(default, Duration::from_secs)
}

/// The key a cross-key error points at: the one the operator set, preferring `first`.
fn pick(first_set: bool, first: &'static str, second: &'static str) -> &'static str {
    if first_set { first } else { second }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::os::unix::fs::symlink;
    use tempfile::TempDir;

    const DEFAULTS_TOML: &str = include_str!("../packaging/config.d/10-defaults.toml");

    fn dir_with(files: &[(&str, &str)]) -> TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    fn load_env(dirs: &[&TempDir], env: &[(&str, &str)], o: &Overrides) -> Result<Loaded, Error> {
        let dirs: Vec<PathBuf> = dirs.iter().map(|d| d.path().to_owned()).collect();
        let env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned()));
        load_from(&dirs, env, o)
    }

    /// Loads one drop-in `50-test.toml`; returns the config or the error and the file's path.
    fn load_toml(text: &str) -> (Result<Config, Error>, PathBuf) {
        let dir = dir_with(&[("50-test.toml", text)]);
        let path = dir.path().join("50-test.toml");
        let r = load_env(&[&dir], &[], &Overrides::default()).map(|l| l.config);
        (r, path)
    }

    fn err_of(text: &str) -> (Error, PathBuf) {
        let (r, path) = load_toml(text);
        (r.unwrap_err(), path)
    }

    fn at(path: &Path, line: usize, column: usize) -> Origin {
        Origin::File {
            path: path.to_owned(),
            line,
            column,
        }
    }

    fn file_names(files: &[PathBuf]) -> Vec<String> {
        files
            .iter()
            .map(|p| {
                let dir = p.parent().unwrap().file_name().unwrap().to_string_lossy();
                format!("{dir}/{}", p.file_name().unwrap().to_string_lossy())
            })
            .collect()
    }

    // --- defaults -------------------------------------------------------------------------

    #[test]
    fn packaged_defaults_file_equals_built_in_defaults() {
        let dir = dir_with(&[("10-defaults.toml", DEFAULTS_TOML)]);
        let loaded = load_env(&[&dir], &[], &Overrides::default()).unwrap();
        assert_eq!(loaded.files, vec![dir.path().join("10-defaults.toml")]);
        assert_eq!(loaded.config, Config::default());
    }

    #[test]
    fn packaged_defaults_file_lists_every_key() {
        // A struct literal with every field, so adding a key to RawConfig fails to compile here
        // until this test (and therefore the file) knows about it.
        let all = RawConfig {
            kubeconfig: Some(String::new()),
            allow_insecure_tls: Some(false),
            pair: Some(vec![RawPair {
                source: Some(String::new()),
                target: Some(String::new()),
            }]),
            annotations: Some(RawAnnotations {
                enabled: Some(true),
                allowed_sources: Some(vec![]),
            }),
            lease: Some(RawLease {
                namespace: Some(String::new()),
                name: Some(String::new()),
                identity: Some(String::new()),
                duration_secs: Some(0),
                renew_deadline_secs: Some(0),
                retry_period_secs: Some(0),
            }),
            sync: Some(RawSync {
                resync_interval_secs: Some(0),
                max_backoff_secs: Some(0),
            }),
            log: Some(RawLog {
                level: Some(String::new()),
            }),
            metrics: Some(RawMetrics {
                listen: Some(String::new()),
            }),
        };
        let schema: toml::Table = toml::Table::try_from(&all).unwrap();
        let file: toml::Table = toml::from_str(DEFAULTS_TOML).unwrap();
        let mut checked = 0;
        for (key, value) in &schema {
            let sub = match value {
                toml::Value::Table(t) => t.clone(),
                toml::Value::Array(a) if key == "pair" => a[0].as_table().unwrap().clone(),
                _ => {
                    assert!(file.contains_key(key), "10-defaults.toml lacks key '{key}'");
                    checked += 1;
                    continue;
                }
            };
            let in_file = match &file[key] {
                toml::Value::Array(a) => a[0].as_table().unwrap().clone(),
                v => v.as_table().unwrap().clone(),
            };
            for leaf in sub.keys() {
                // A key whose default is "unset" can only be shown commented out.
                let commented = DEFAULTS_TOML.contains(&format!("\n# {leaf} = "));
                assert!(
                    in_file.contains_key(leaf) || commented,
                    "10-defaults.toml lacks key '{key}.{leaf}'"
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 16);
    }

    #[test]
    fn built_in_default_pair_parses_as_a_valid_service_ref() {
        let d = Config::default();
        assert_eq!(d.pairs[0].source, names::DEFAULT_SOURCE.parse().unwrap());
        assert_eq!(d.pairs[0].target, names::DEFAULT_TARGET.parse().unwrap());
        assert_eq!(
            d.annotations.allowed_sources,
            vec![names::DEFAULT_SOURCE.parse::<ServiceRef>().unwrap()]
        );
    }

    #[test]
    fn no_drop_ins_at_all_gives_the_built_in_defaults() {
        let missing = PathBuf::from("/nonexistent/endpoint-copier/config.d");
        let loaded = load_from(&[missing], Vec::new(), &Overrides::default()).unwrap();
        assert!(loaded.files.is_empty());
        assert_eq!(loaded.config, Config::default());
    }

    // --- precedence -----------------------------------------------------------------------

    #[test]
    fn same_named_file_in_a_later_dir_masks_the_earlier_one() {
        let usr = dir_with(&[(
            "50-site.toml",
            "[log]\nlevel = \"debug\"\n[sync]\nmax_backoff_secs = 5\n",
        )]);
        let etc = dir_with(&[("50-site.toml", "[log]\nlevel = \"warn\"\n")]);
        let loaded = load_env(&[&usr, &etc], &[], &Overrides::default()).unwrap();
        assert_eq!(loaded.files, vec![etc.path().join("50-site.toml")]);
        assert_eq!(loaded.config.log.level, "warn");
        // The masked file contributes nothing, not even keys the masking file leaves out.
        assert_eq!(loaded.config.sync.max_backoff, Duration::from_secs(30));
    }

    #[test]
    fn files_merge_in_name_order_not_directory_order() {
        let usr = dir_with(&[("90-late.toml", "[log]\nlevel = \"debug\"\n")]);
        let etc = dir_with(&[("20-early.toml", "[log]\nlevel = \"warn\"\n")]);
        let loaded = load_env(&[&usr, &etc], &[], &Overrides::default()).unwrap();
        assert_eq!(
            loaded.files,
            vec![
                etc.path().join("20-early.toml"),
                usr.path().join("90-late.toml")
            ]
        );
        assert_eq!(loaded.config.log.level, "debug");
    }

    #[test]
    fn empty_file_masks_a_same_named_earlier_file() {
        let usr = dir_with(&[("10-defaults.toml", "[log]\nlevel = \"debug\"\n")]);
        let etc = dir_with(&[("10-defaults.toml", "")]);
        let loaded = load_env(&[&usr, &etc], &[], &Overrides::default()).unwrap();
        assert!(loaded.files.is_empty());
        assert_eq!(loaded.config.log.level, "info");
    }

    #[test]
    fn symlink_to_dev_null_masks_a_same_named_earlier_file() {
        let usr = dir_with(&[("10-defaults.toml", "[log]\nlevel = \"debug\"\n")]);
        let etc = tempfile::tempdir().unwrap();
        symlink("/dev/null", etc.path().join("10-defaults.toml")).unwrap();
        let loaded = load_env(&[&usr, &etc], &[], &Overrides::default()).unwrap();
        assert!(loaded.files.is_empty());
        assert_eq!(loaded.config.log.level, "info");
    }

    #[test]
    fn later_file_wins_key_by_key_and_tables_merge() {
        let dir = dir_with(&[
            (
                "10-a.toml",
                "[lease]\nduration_secs = 40\nrenew_deadline_secs = 30\n",
            ),
            ("20-b.toml", "[lease]\nduration_secs = 50\n"),
        ]);
        let c = load_env(&[&dir], &[], &Overrides::default())
            .unwrap()
            .config;
        assert_eq!(c.lease.duration, Duration::from_secs(50));
        assert_eq!(c.lease.renew_deadline, Duration::from_secs(30));
        assert_eq!(c.lease.retry_period, Duration::from_secs(2));
    }

    #[test]
    fn non_toml_files_and_missing_dirs_are_ignored() {
        let dir = dir_with(&[
            ("50-site.toml.rpmsave", "garbage ="),
            ("README", "not toml"),
            ("50-site.toml", "[log]\nlevel = \"warn\"\n"),
        ]);
        fs::create_dir(dir.path().join("60-dir.toml")).unwrap();
        let missing = tempfile::tempdir().unwrap().path().join("gone");
        let dirs = vec![missing, dir.path().to_owned()];
        let loaded = load_from(&dirs, Vec::new(), &Overrides::default()).unwrap();
        assert_eq!(loaded.files, vec![dir.path().join("50-site.toml")]);
        assert_eq!(loaded.config.log.level, "warn");
    }

    #[test]
    fn a_later_pair_list_replaces_the_earlier_one() {
        let dir = dir_with(&[
            ("10-defaults.toml", DEFAULTS_TOML),
            (
                "50-site.toml",
                "[[pair]]\nsource = \"web/api\"\ntarget = \"web/api-vip\"\n",
            ),
        ]);
        let c = load_env(&[&dir], &[], &Overrides::default())
            .unwrap()
            .config;
        assert_eq!(
            c.pairs,
            vec![PairConfig {
                source: "web/api".parse().unwrap(),
                target: "web/api-vip".parse().unwrap(),
            }]
        );
    }

    #[test]
    fn empty_pair_list_removes_the_default_pair() {
        let (c, _) = load_toml("pair = []\n");
        assert!(c.unwrap().pairs.is_empty());
    }

    #[derive(Debug, Clone, Copy)]
    enum Kind {
        Sets,
        Silent,
        Empty,
        DevNull,
        NotToml,
    }

    fn kind() -> impl Strategy<Value = Kind> {
        prop_oneof![
            3 => Just(Kind::Sets),
            1 => Just(Kind::Silent),
            1 => Just(Kind::Empty),
            1 => Just(Kind::DevNull),
            1 => Just(Kind::NotToml),
        ]
    }

    const NAMES: [&str; 5] = ["05-a", "10-defaults", "50-site", "50-site2", "90-local"];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Precedence for any set of drop-ins, against a model: per name the last directory wins;
        /// masked and non-toml winners drop out; the rest merge by name; the last setter wins.
        #[test]
        fn precedence_matches_the_model_for_any_set_of_drop_ins(
            listing in prop::collection::vec(
                prop::collection::btree_map(0..NAMES.len(), kind(), 0..NAMES.len()),
                1..4,
            )
        ) {
            let dirs: Vec<TempDir> = listing.iter().map(|_| tempfile::tempdir().unwrap()).collect();
            for (d, files) in listing.iter().enumerate() {
                for (&n, &k) in files {
                    let stem = NAMES[n];
                    let dir = dirs[d].path();
                    match k {
                        Kind::Sets => fs::write(
                            dir.join(format!("{stem}.toml")),
                            format!("[lease]\nidentity = \"{d}/{stem}\"\n"),
                        ).unwrap(),
                        Kind::Silent => fs::write(
                            dir.join(format!("{stem}.toml")),
                            "# only a comment\n[log]\n",
                        ).unwrap(),
                        Kind::Empty => fs::write(dir.join(format!("{stem}.toml")), "").unwrap(),
                        Kind::DevNull => symlink("/dev/null", dir.join(format!("{stem}.toml"))).unwrap(),
                        Kind::NotToml => fs::write(
                            dir.join(format!("{stem}.conf")),
                            "[lease]\nidentity = \"never\"\n",
                        ).unwrap(),
                    }
                }
            }

            // The model.
            let mut winner: BTreeMap<&str, (usize, Kind)> = BTreeMap::new();
            for (d, files) in listing.iter().enumerate() {
                for (&n, &k) in files {
                    if !matches!(k, Kind::NotToml) {
                        winner.insert(NAMES[n], (d, k));
                    }
                }
            }
            let expected_files: Vec<PathBuf> = winner
                .iter()
                .filter(|(_, (_, k))| matches!(k, Kind::Sets | Kind::Silent))
                .map(|(stem, (d, _))| dirs[*d].path().join(format!("{stem}.toml")))
                .collect();
            let expected_identity = winner
                .iter()
                .filter(|(_, (_, k))| matches!(k, Kind::Sets))
                .map(|(stem, (d, _))| format!("{d}/{stem}"))
                .next_back();

            let paths: Vec<PathBuf> = dirs.iter().map(|d| d.path().to_owned()).collect();
            let loaded = load_from(&paths, Vec::new(), &Overrides::default()).unwrap();
            prop_assert_eq!(&loaded.files, &expected_files);
            prop_assert_eq!(drop_ins(&paths).unwrap(), expected_files);
            prop_assert_eq!(loaded.config.lease.identity, expected_identity);
        }
    }

    #[test]
    fn file_names_sort_bytewise_across_dirs() {
        let a = dir_with(&[("9-x.toml", "\n"), ("10-y.toml", "\n")]);
        let b = dir_with(&[("Z.toml", "\n"), ("a.toml", "\n")]);
        let files = drop_ins(&[a.path().to_owned(), b.path().to_owned()]).unwrap();
        let names: Vec<String> = file_names(&files)
            .iter()
            .map(|s| s.rsplit('/').next().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["10-y.toml", "9-x.toml", "Z.toml", "a.toml"]);
    }

    // --- error positions ------------------------------------------------------------------

    #[test]
    fn unknown_key_names_file_line_column_and_the_valid_keys() {
        let (e, path) = err_of("[lease]\nduration_secs = 20\nduraton_secs = 20\n");
        assert_eq!(
            e.to_string(),
            format!(
                "{}:3:1: unknown key 'lease.duraton_secs' (expected one of: namespace, name, identity, duration_secs, renew_deadline_secs, retry_period_secs)",
                path.display()
            )
        );
        assert_eq!(e.exit_code(), 78);
    }

    #[test]
    fn unknown_top_level_key_points_at_the_key() {
        let (e, path) = err_of("# comment\n  kubeconfg = \"auto\"\n");
        assert!(matches!(&e, Error::UnknownKey { key, .. } if key == "kubeconfg"));
        assert_eq!(e.origin(), Some(&at(&path, 2, 3)));
    }

    #[test]
    fn unknown_key_inside_a_pair_names_its_index() {
        let (e, path) = err_of(
            "[[pair]]\nsource = \"a/b\"\ntarget = \"a/c\"\n[[pair]]\nsource = \"a/d\"\ntraget = \"a/e\"\n",
        );
        assert!(
            matches!(&e, Error::UnknownKey { key, .. } if key == "pair[1].traget"),
            "{e}"
        );
        assert_eq!(e.origin(), Some(&at(&path, 6, 1)));
    }

    #[test]
    fn wrong_type_points_at_the_value() {
        let (e, path) = err_of("[lease]\nname = \"x\"\nduration_secs = \"15s\"\n");
        assert!(
            matches!(&e, Error::WrongType { key, expected, .. }
                if key == "lease.duration_secs" && expected.contains("integer")),
            "{e}"
        );
        assert_eq!(e.origin(), Some(&at(&path, 3, 17)));
        assert!(
            e.to_string()
                .starts_with(&format!("{}:3:17: ", path.display()))
        );
    }

    #[test]
    fn negative_duration_is_an_invalid_value_at_its_position() {
        let (e, path) = err_of("[sync]\nmax_backoff_secs = -1\n");
        assert!(
            matches!(&e, Error::InvalidValue { key, .. } if key == "sync.max_backoff_secs"),
            "{e}"
        );
        assert_eq!(e.origin(), Some(&at(&path, 2, 20)));
    }

    #[test]
    fn bad_value_points_at_the_value_of_the_key() {
        let (e, path) =
            err_of("[[pair]]\nsource = \"default/kubernetes\"\ntarget =   \"Default/vip\"\n");
        assert!(
            matches!(&e, Error::InvalidValue { key, reason, .. }
            if key == "pair[0].target" && reason.contains("namespace 'Default'")),
            "{e}"
        );
        assert_eq!(e.origin(), Some(&at(&path, 3, 12)));
    }

    #[test]
    fn toml_syntax_error_names_line_and_column() {
        let (e, path) = err_of("[log]\nlevel = \"info\"\nlevel2 \"x\"\n");
        let Error::Syntax { origin, .. } = &e else {
            panic!("expected a syntax error, got {e}");
        };
        let Origin::File { path: p, line, .. } = origin else {
            panic!("{origin}");
        };
        assert_eq!(p, &path);
        assert_eq!(*line, 3);
    }

    #[test]
    fn error_names_the_file_that_supplied_the_value_not_the_last_file() {
        let dir = dir_with(&[
            ("10-a.toml", "[sync]\n\nresync_interval_secs = 5\n"),
            ("20-b.toml", "[log]\nlevel = \"info\"\n"),
        ]);
        let e = load_env(&[&dir], &[], &Overrides::default()).unwrap_err();
        assert_eq!(e.origin(), Some(&at(&dir.path().join("10-a.toml"), 3, 24)));
    }

    #[test]
    fn column_counts_characters_not_bytes() {
        let (e, path) = err_of("# é\n[log]\nlevel = \"\"  # ü\n");
        assert_eq!(e.origin(), Some(&at(&path, 3, 9)));
    }

    // --- validation -----------------------------------------------------------------------

    fn invalid(text: &str) -> (String, String) {
        match err_of(text).0 {
            Error::InvalidValue { key, reason, .. } => (key, reason),
            e => panic!("expected an invalid value, got {e}"),
        }
    }

    #[test]
    fn pair_source_must_be_namespace_slash_name() {
        let (key, reason) =
            invalid("[[pair]]\nsource = \"kubernetes\"\ntarget = \"default/vip\"\n");
        assert_eq!(key, "pair[0].source");
        assert!(reason.contains("namespace/name"), "{reason}");
    }

    #[test]
    fn pair_without_target_is_refused() {
        let (key, reason) = invalid("[[pair]]\nsource = \"default/kubernetes\"\n");
        assert_eq!(key, "pair[0]");
        assert!(reason.contains("missing key 'target'"), "{reason}");
    }

    #[test]
    fn pair_without_source_is_refused() {
        let (key, reason) = invalid("[[pair]]\ntarget = \"default/x\"\n");
        assert_eq!(key, "pair[0]");
        assert!(reason.contains("missing key 'source'"), "{reason}");
    }

    #[test]
    fn pair_whose_source_is_its_target_is_refused() {
        let (key, reason) = invalid("[[pair]]\nsource = \"a/b\"\ntarget = \"a/b\"\n");
        assert_eq!(key, "pair[0].target");
        assert!(reason.contains("also the source"), "{reason}");
    }

    #[test]
    fn two_pairs_with_the_same_target_are_refused() {
        let (key, reason) = invalid(
            "[[pair]]\nsource = \"a/b\"\ntarget = \"a/t\"\n[[pair]]\nsource = \"a/c\"\ntarget = \"a/t\"\n",
        );
        assert_eq!(key, "pair[1].target");
        assert!(reason.contains("already the target of pair[0]"), "{reason}");
    }

    #[test]
    fn allowed_sources_entries_are_validated_with_their_index() {
        let (key, _) =
            invalid("[annotations]\nallowed_sources = [\"default/kubernetes\", \"nope\"]\n");
        assert_eq!(key, "annotations.allowed_sources[1]");
    }

    #[test]
    fn lease_duration_must_exceed_renew_deadline() {
        let (key, reason) = invalid("[lease]\nduration_secs = 10\n");
        assert_eq!(key, "lease.duration_secs");
        assert!(
            reason.contains("greater than renew_deadline_secs (10)"),
            "{reason}"
        );
    }

    #[test]
    fn lease_renew_deadline_must_exceed_1_2_retry_periods() {
        // 10 s is not more than 1.2 × 9 s = 10.8 s.
        let (key, reason) = invalid("[lease]\nretry_period_secs = 9\n");
        assert_eq!(key, "lease.retry_period_secs");
        assert!(reason.contains("1.2 × retry_period_secs (9)"), "{reason}");
        // 10 s is exactly 1.2 × 8.33 s: with whole seconds, 8 passes and the boundary is strict.
        let (c, _) = load_toml("[lease]\nretry_period_secs = 8\n");
        assert_eq!(c.unwrap().lease.retry_period, Duration::from_secs(8));
        let (key, _) = invalid(
            "[lease]\nduration_secs = 30\nrenew_deadline_secs = 12\nretry_period_secs = 10\n",
        );
        assert_eq!(key, "lease.renew_deadline_secs");
    }

    #[test]
    fn lease_retry_period_must_be_at_least_one_second() {
        let (key, reason) = invalid("[lease]\nretry_period_secs = 0\n");
        assert_eq!(key, "lease.retry_period_secs");
        assert!(reason.contains("at least 1"), "{reason}");
    }

    #[test]
    fn lease_namespace_must_be_a_dns_label() {
        assert_eq!(
            invalid("[lease]\nnamespace = \"kube.system\"\n").0,
            "lease.namespace"
        );
        assert_eq!(invalid("[lease]\nnamespace = \"\"\n").0, "lease.namespace");
    }

    #[test]
    fn lease_name_must_be_a_dns_subdomain() {
        assert_eq!(
            invalid("[lease]\nname = \"Endpoint_Copier\"\n").0,
            "lease.name"
        );
        let (c, _) = load_toml("[lease]\nname = \"endpoint-copier.site-a\"\n");
        assert_eq!(c.unwrap().lease.name, "endpoint-copier.site-a");
    }

    #[test]
    fn lease_identity_must_not_be_empty_when_set() {
        assert_eq!(invalid("[lease]\nidentity = \" \"\n").0, "lease.identity");
        let (c, _) = load_toml("[lease]\nidentity = \"node-1\"\n");
        assert_eq!(c.unwrap().lease.identity.as_deref(), Some("node-1"));
    }

    #[test]
    fn resync_interval_must_be_at_least_ten_seconds() {
        assert_eq!(
            invalid("[sync]\nresync_interval_secs = 9\n").0,
            "sync.resync_interval_secs"
        );
        let (c, _) = load_toml("[sync]\nresync_interval_secs = 10\n");
        assert_eq!(c.unwrap().sync.resync_interval, Duration::from_secs(10));
    }

    #[test]
    fn lease_timings_and_sync_intervals_have_upper_bounds() {
        let (key, reason) = invalid("[lease]\nduration_secs = 99999999999\n");
        assert_eq!(key, "lease.duration_secs");
        assert!(reason.contains("at most 3600"), "{reason}");
        let (key, reason) = invalid("[sync]\nresync_interval_secs = 999999999\n");
        assert_eq!(key, "sync.resync_interval_secs");
        assert!(reason.contains("at most 86400"), "{reason}");
    }

    #[test]
    fn max_backoff_must_be_at_least_one_second() {
        assert_eq!(
            invalid("[sync]\nmax_backoff_secs = 0\n").0,
            "sync.max_backoff_secs"
        );
    }

    #[test]
    fn kubeconfig_must_be_auto_or_an_absolute_path() {
        assert_eq!(invalid("kubeconfig = \"rke2.yaml\"\n").0, "kubeconfig");
        assert_eq!(invalid("kubeconfig = \"\"\n").0, "kubeconfig");
        let (c, _) = load_toml("kubeconfig = \"/etc/rancher/k3s/k3s.yaml\"\n");
        assert_eq!(
            c.unwrap().kubeconfig,
            Kubeconfig::Path(PathBuf::from("/etc/rancher/k3s/k3s.yaml"))
        );
    }

    #[test]
    fn metrics_listen_must_be_loopback() {
        let (key, reason) = invalid("[metrics]\nlisten = \"0.0.0.0:9402\"\n");
        assert_eq!(key, "metrics.listen");
        assert!(reason.contains("loopback"), "{reason}");
        assert_eq!(
            invalid("[metrics]\nlisten = \"198.51.100.7:9402\"\n").0,
            "metrics.listen"
        );
        assert_eq!(
            invalid("[metrics]\nlisten = \"localhost:9402\"\n").0,
            "metrics.listen"
        );
        let (c, _) = load_toml("[metrics]\nlisten = \"[::1]:9000\"\n");
        assert_eq!(
            c.unwrap().metrics.listen,
            Some("[::1]:9000".parse().unwrap())
        );
    }

    #[test]
    fn empty_metrics_listen_disables_metrics() {
        let (c, _) = load_toml("[metrics]\nlisten = \"\"\n");
        assert_eq!(c.unwrap().metrics.listen, None);
    }

    #[test]
    fn log_level_must_parse_as_a_filter() {
        let (key, reason) = invalid("[log]\nlevel = \"info,=[\"\n");
        assert_eq!(key, "log.level");
        assert!(reason.contains("not a log filter"), "{reason}");
        assert_eq!(invalid("[log]\nlevel = \"\"\n").0, "log.level");
        let (c, _) = load_toml("[log]\nlevel = \"endpoint_copier=debug,kube=info\"\n");
        assert_eq!(c.unwrap().log.level, "endpoint_copier=debug,kube=info");
    }

    #[test]
    fn allow_insecure_tls_and_annotations_enabled_are_read() {
        let (c, _) = load_toml("allow_insecure_tls = true\n[annotations]\nenabled = false\n");
        let c = c.unwrap();
        assert!(c.allow_insecure_tls);
        assert!(!c.annotations.enabled);
        assert_eq!(
            c.annotations.allowed_sources,
            Config::default().annotations.allowed_sources
        );
    }

    // --- environment and flags ------------------------------------------------------------

    #[test]
    fn env_overrides_files_with_double_underscore_nesting() {
        let dir = dir_with(&[(
            "50-site.toml",
            "[lease]\nduration_secs = 30\nname = \"x\"\n",
        )]);
        let c = load_env(
            &[&dir],
            &[
                ("ENDPOINT_COPIER_LEASE__DURATION_SECS", "20"),
                ("ENDPOINT_COPIER_KUBECONFIG", "/srv/kc.yaml"),
                ("ENDPOINT_COPIER_METRICS__LISTEN", ""),
            ],
            &Overrides::default(),
        )
        .unwrap()
        .config;
        assert_eq!(c.lease.duration, Duration::from_secs(20));
        assert_eq!(c.lease.name, "x");
        assert_eq!(
            c.kubeconfig,
            Kubeconfig::Path(PathBuf::from("/srv/kc.yaml"))
        );
        assert_eq!(c.metrics.listen, None);
    }

    #[test]
    fn env_log_and_test_variables_are_not_config_keys() {
        let c = load_env(
            &[],
            &[
                ("ENDPOINT_COPIER_LOG", "trace"),
                ("ENDPOINT_COPIER_TEST_KUBECONFIG", "/tmp/kc"),
                ("ENDPOINT_COPIER_TEST_ANYTHING", "x"),
                ("OTHER_VARIABLE", "x"),
            ],
            &Overrides::default(),
        )
        .unwrap()
        .config;
        assert_eq!(c, Config::default());
    }

    #[test]
    fn env_log_level_is_a_config_key_unlike_env_log() {
        let c = load_env(
            &[],
            &[("ENDPOINT_COPIER_LOG__LEVEL", "debug")],
            &Overrides::default(),
        )
        .unwrap()
        .config;
        assert_eq!(c.log.level, "debug");
    }

    #[test]
    fn env_unknown_key_names_the_variable() {
        let e = load_env(
            &[],
            &[("ENDPOINT_COPIER_LEASE__DURATON_SECS", "20")],
            &Overrides::default(),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "environment variable ENDPOINT_COPIER_LEASE__DURATON_SECS: unknown key 'lease.duraton_secs' (expected one of: namespace, name, identity, duration_secs, renew_deadline_secs, retry_period_secs)"
        );
    }

    #[test]
    fn env_bad_value_names_the_variable() {
        let dir = dir_with(&[("50-site.toml", "[sync]\nmax_backoff_secs = 5\n")]);
        let e = load_env(
            &[&dir],
            &[("ENDPOINT_COPIER_SYNC__MAX_BACKOFF_SECS", "soon")],
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(
            matches!(&e, Error::WrongType { key, .. } if key == "sync.max_backoff_secs"),
            "{e}"
        );
        assert_eq!(
            e.origin(),
            Some(&Origin::Env {
                var: "ENDPOINT_COPIER_SYNC__MAX_BACKOFF_SECS".to_owned()
            })
        );
    }

    #[test]
    fn env_string_keys_take_the_value_literally() {
        let c = load_env(
            &[],
            &[
                ("ENDPOINT_COPIER_LEASE__IDENTITY", "12"),
                ("ENDPOINT_COPIER_LEASE__NAME", "\"quoted\""),
            ],
            &Overrides::default(),
        )
        .unwrap()
        .config;
        assert_eq!(c.lease.identity.as_deref(), Some("12"));
        assert_eq!(c.lease.name, "quoted");
    }

    #[test]
    fn env_can_set_booleans_and_lists() {
        let c = load_env(
            &[],
            &[
                ("ENDPOINT_COPIER_ANNOTATIONS__ENABLED", "false"),
                (
                    "ENDPOINT_COPIER_ANNOTATIONS__ALLOWED_SOURCES",
                    "[\"default/kubernetes\", \"web/api\"]",
                ),
            ],
            &Overrides::default(),
        )
        .unwrap()
        .config;
        assert!(!c.annotations.enabled);
        assert_eq!(c.annotations.allowed_sources.len(), 2);
    }

    #[test]
    fn kubeconfig_flag_wins_over_env_and_files() {
        let dir = dir_with(&[("50-site.toml", "kubeconfig = \"/etc/a.yaml\"\n")]);
        let o = Overrides {
            config_dirs: Vec::new(),
            kubeconfig: Some(PathBuf::from("/etc/c.yaml")),
        };
        let c = load_env(
            &[&dir],
            &[("ENDPOINT_COPIER_KUBECONFIG", "/etc/b.yaml")],
            &o,
        )
        .unwrap()
        .config;
        assert_eq!(c.kubeconfig, Kubeconfig::Path(PathBuf::from("/etc/c.yaml")));
    }

    #[test]
    fn relative_kubeconfig_flag_names_the_flag() {
        let o = Overrides {
            config_dirs: Vec::new(),
            kubeconfig: Some(PathBuf::from("kc.yaml")),
        };
        let e = load_env(&[], &[], &o).unwrap_err();
        assert_eq!(
            e.to_string(),
            "flag --kubeconfig: invalid value for 'kubeconfig': 'kc.yaml' is neither \"auto\" nor an absolute path"
        );
    }

    #[test]
    fn unreadable_config_dir_is_an_error_naming_it() {
        let dir = dir_with(&[("a.toml", "")]);
        let not_a_dir = dir.path().join("a.toml");
        let e = drop_ins(std::slice::from_ref(&not_a_dir)).unwrap_err();
        assert!(
            matches!(&e, Error::ReadDir { path, .. } if path == &not_a_dir),
            "{e}"
        );
        assert_eq!(e.exit_code(), 78);
    }
}
