//! Configuration: locating the TOML drop-ins, merging them with figment, then the
//! `ENDPOINT_COPIER_*` environment and the command-line flags, and validating the result once into
//! [`Config`].
//!
//! This file is the front door: [`Config`] and its section types, the defaults
//! ([`Config::default`], mirrored by `packaging/config.d/10-defaults.toml`), [`load`] and
//! [`load_from`] (the merge of files, environment and flags), and [`Error`]. The steps live beside
//! it, in load order:
//! - `drop_ins`: which files of the search path are merged, and in which order ([`drop_ins()`]);
//! - `raw`: the TOML schema (`RawConfig`: every field optional, unknown keys refused);
//! - `provenance`: where each value came from ([`Provenance`]: file, line, column; variable; flag);
//! - `validate`: `RawConfig` → [`Config`], with the ranges and the cross-key rules (`sources`:
//!   the entries of `[[pair]] sources`).
//!
//! Leaves to others: parsing flags (`cli`), the `ENDPOINT_COPIER_LOG` filter and subscriber
//! (`logging`), reading the kubeconfig (`client`), the host name used when `lease.identity` is
//! unset (`host`), and the exit code itself (`main`). No network, no logging, no globals:
//! [`load_from`] takes the directories and the environment as arguments.

mod drop_ins;
mod probing;
mod provenance;
mod raw;
mod sources;
#[cfg(test)]
mod tests;
mod validate;

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use figment::Figment;
use figment::providers::Serialized;
use figment::value::{Dict, Value};

use crate::names::{self, ServiceRef};
use crate::probe;
use crate::source::Source;

pub use drop_ins::drop_ins;
pub use provenance::Provenance;

use provenance::{Layers, file_origin, from_figment};
use raw::{RawConfig, expected_type};

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
    pub annotations: AnnotationsSettings,
    /// Leader election (`[lease]`).
    pub lease: LeaseSettings,
    /// Per-host member objects (`[members]`).
    pub members: MembersSettings,
    /// Health probes (`[probe]`): timing for every pair that probes.
    pub probe: ProbeSettings,
    /// Which Nodes are watched for node facts and drains (`[nodes]`).
    pub nodes: NodesSettings,
    /// Periodic resync and retry backoff (`[sync]`).
    pub sync: SyncSettings,
    /// Logging (`[log]`).
    pub log: LogSettings,
    /// The metrics and health endpoint (`[metrics]`).
    pub metrics: MetricsSettings,
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
    /// Where the endpoints come from (key `sources`, or `source = "ns/name"` for one Service of
    /// this cluster): never empty, in config order, at most one [`Source::Static`] (every
    /// `addresses` entry merged).
    pub sources: Vec<Source>,
    /// The Service, without selector, whose EndpointSlices we own (key `target`).
    pub target: ServiceRef,
    /// What the pair's endpoints are probed with (key `probe`: `false`, `{ https = "/readyz" }`,
    /// `{ http = "/healthz" }`, `{ tcp = PORT }`); `None`: not probed. Unset: `{ https =
    /// "/readyz" }` for a pair reading `default/kubernetes` of this cluster, else not probed
    /// ([`crate::probe::spec::default_for_sources`]).
    pub probe: Option<probe::Spec>,
    /// Whether a family the target serves (`spec.ipFamilies`) but the source lacks is derived
    /// from the addresses of the source endpoints' Nodes (key `derive_families`; unset: true for
    /// a pair reading `default/kubernetes` of this cluster, whose slice is single-stack while
    /// EIB's `kubernetes-vip` may be dual-stack, else false: [`derive_families_default`]).
    pub derive_families: bool,
}

/// Whether a pair reading `sources` derives missing families by default: only when one of them
/// is the apiservers' `default/kubernetes` of this cluster, whose endpoints are the Nodes' own
/// addresses. Any other Service's endpoints are Pods or foreign hosts, whose other-family
/// address a Node cannot tell.
pub fn derive_families_default(sources: &[Source]) -> bool {
    sources
        .iter()
        .filter_map(Source::local_service)
        .any(|s| s.to_string() == names::DEFAULT_SOURCE)
}

impl Config {
    /// Every remote source the pairs name, once each: what `remote::spawn` watches and
    /// `check` reaches.
    pub fn remote_sources(&self) -> std::collections::BTreeSet<crate::source::RemoteSource> {
        self.pairs
            .iter()
            .flat_map(|p| p.sources.iter())
            .filter_map(|s| match s {
                Source::Remote(r) => Some(r.clone()),
                Source::Service(_) | Source::Static(_) => None,
            })
            .collect()
    }
}

impl PairConfig {
    /// The pair of one local Service `source` → `target`, with the probe and derivation it has
    /// when its config says nothing.
    pub fn new(source: ServiceRef, target: ServiceRef) -> PairConfig {
        PairConfig::of(vec![Source::Service(source)], target)
    }

    /// The pair `sources` → `target`, with the defaults of [`PairConfig::new`].
    pub fn of(sources: Vec<Source>, target: ServiceRef) -> PairConfig {
        PairConfig {
            probe: probe::spec::default_for_sources(&sources),
            derive_families: derive_families_default(&sources),
            sources,
            target,
        }
    }

    /// The Service this pair names in member records (`group::MemberRecord`): its first
    /// Service source, local or remote; the target itself for a pair of static addresses only.
    pub fn record_source(&self) -> ServiceRef {
        self.sources
            .iter()
            .find_map(|s| match s {
                Source::Service(s) => Some(s.clone()),
                Source::Remote(r) => Some(r.service.clone()),
                Source::Static(_) => None,
            })
            .unwrap_or_else(|| self.target.clone())
    }
}

/// Health probes (`[probe]`): the timing every probing pair shares, the flap damping, how HTTPS
/// probes check the apiserver's certificate and how many targets a host probes at most.
/// Validated: `period_ms` 100–60,000, `timeout_ms` at least 10 and less than `period_ms` (probes
/// of one target never overlap), `failure_threshold` 2–100 (one failed probe never evicts),
/// `success_threshold` 1–100, `min_up_ms` 0–600,000, `max_targets` 1–10,000.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSettings {
    /// Period, timeout, thresholds and flap damping (keys `period_ms`, `timeout_ms`,
    /// `failure_threshold`, `success_threshold`, `min_up_ms`; defaults 300 ms, 250 ms, 2, 1,
    /// 2000 ms).
    pub timing: probe::Timing,
    /// The most probe targets (address, port, kind) one host probes (key `max_targets`,
    /// default 256). Beyond it, the targets of this host's config come first, then annotated
    /// pairs' in a fixed order; the rest are not probed (no vote), which is reported.
    pub max_targets: usize,
    /// The name an HTTPS probe checks the certificate against (key `tls_server_name`, default:
    /// unset, meaning the kubeconfig's `tls-server-name` if it sets one, else the endpoint's IP
    /// address, which RKE2's and K3s's apiserver certificates carry).
    pub tls_server_name: Option<String>,
}

/// Pairs declared through annotations on target Services (`[annotations]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnotationsSettings {
    /// Whether annotated target Services are watched and mirrored (key `enabled`, default: true).
    pub enabled: bool,
    /// The sources an annotated pair may read outside its own namespace (key `allowed_sources`,
    /// default: `["default/kubernetes"]`).
    pub allowed_sources: Vec<ServiceRef>,
}

/// Leader election on a `coordination.k8s.io` Lease (`[lease]`).
///
/// Validated so that two copies never write at once: `duration > renew_deadline >
/// 1.2 × retry_period`, `retry_period ≥ 1 s` (client-go's rules), and `renew_deadline +
/// retry_period < duration`. The last is ours: a successor takes over only `duration` after the
/// last renewal it saw; the old leader's fence closes `renew_deadline` after its last successful
/// renewal; `retry_period` is the margin for one request still in flight when the fence closes.
/// The defaults 4/2/1 satisfy all of them and bound a hard takeover to the Lease duration plus
/// one watch delivery (the arithmetic is in `docs/development/lease.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSettings {
    /// Namespace of the Lease, a DNS-1123 label (key `namespace`, default: `kube-system`).
    pub namespace: String,
    /// Name of the Lease, a DNS-1123 subdomain (key `name`, default: `endpoint-copier`).
    pub name: String,
    /// Holder identity written into the Lease (key `identity`, default: unset, meaning the host
    /// name, which `host` reads).
    pub identity: Option<String>,
    /// How long a claim is valid without renewal (key `duration_secs`, default: 4 s).
    pub duration: Duration,
    /// How long the leader keeps trying to renew before it stops writing (key
    /// `renew_deadline_secs`, default: 2 s).
    pub renew_deadline: Duration,
    /// Interval between Lease attempts, for the leader and candidates (key `retry_period_secs`,
    /// default: 1 s).
    pub retry_period: Duration,
    /// Directory of the runtime lock file that lets a restarted copy take over its own dead
    /// claim at once and refuses a second live copy sharing it (key `runtime_dir`, default:
    /// `/run/endpoint-copier/lease`, the unit's `RuntimeDirectory=`; `None` when set to `""`:
    /// no lock, a restarted copy waits out its old claim).
    pub runtime_dir: Option<PathBuf>,
}

/// Per-host member objects (`[members]`): each live copy renews one, naming the pairs it has
/// configured, so that the leader knows which pairs some live copy still wants (and the probes
/// can publish their verdicts in it). Validated: `expiry > heartbeat ≥ 1 s`, `forget_after ≥
/// expiry`, each at most a day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembersSettings {
    /// How often a copy renews its member object (key `heartbeat_secs`, default: 10 s, at least
    /// 1 s).
    pub heartbeat: Duration,
    /// A member not renewed for this long, as judged by the local monotonic clock, is not live
    /// (key `expiry_secs`, default: 30 s; greater than `heartbeat`, so one late renewal does not
    /// make a healthy copy flap).
    pub expiry: Duration,
    /// A member not live for this long is gone for good: pairs only it configured may be deleted
    /// and its object is removed (key `forget_after_secs`, default: 900 s; at least `expiry`).
    pub forget_after: Duration,
    /// The namespace of the member Leases (key `namespace`, default: `endpoint-copier`): a
    /// namespace of their own, so that the right to write them reaches no other component's
    /// Lease. Versions before this key kept them in the election Lease's namespace, which the
    /// member watch still reads (read-only) while older copies may run.
    pub namespace: String,
}

/// Which Nodes the daemon watches (`[nodes]`) to fill `nodeName` and zone, derive a missing
/// family and honour drains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodesSettings {
    /// A label selector for the Node watch (key `selector`, default:
    /// `node-role.kubernetes.io/control-plane`, which RKE2 and K3s set on server Nodes, the
    /// apiservers' hosts: memory then does not grow with the number of workers); `None` when set
    /// to `""`: every Node (for pairs whose endpoints run on agents).
    pub selector: Option<String>,
}

/// Resync and backoff (`[sync]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncSettings {
    /// Interval of the full resync under the watches (key `resync_interval_secs`, default: 300 s,
    /// at least 10 s).
    pub resync_interval: Duration,
    /// Cap of the jittered exponential retry backoff (key `max_backoff_secs`, default: 30 s, at
    /// least 1 s).
    pub max_backoff: Duration,
    /// How long a remote source that cannot be read (unreachable, refusing us, its Service gone
    /// there) keeps its last known endpoints ready in a pair that does not probe (key
    /// `keep_last_known_secs`, default: 300 s, Kubernetes' own toleration of an unreachable
    /// Node; from 1 s to one day). A pair that probes goes by its probes instead.
    pub keep_last_known: Duration,
}

/// Logging (`[log]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// A `tracing_subscriber::EnvFilter` directive (key `level`, default: `"info"`);
    /// `ENDPOINT_COPIER_LOG` wins over it (read by `logging`, not here).
    pub level: String,
}

/// The metrics and health endpoint (`[metrics]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsSettings {
    /// Loopback address the endpoint listens on (key `listen`, default: `127.0.0.1:9402`);
    /// `None` when the key is `""` (disabled).
    pub listen: Option<SocketAddr>,
}

/// Default `[lease] runtime_dir`: the unit's `RuntimeDirectory=endpoint-copier/lease`. A
/// subdirectory, so that the unit makes only it writable, not the `config.d` drop-ins beside it.
pub const DEFAULT_LEASE_RUNTIME_DIR: &str = "/run/endpoint-copier/lease";

/// Default `[probe] max_targets`: far above what a control plane's pairs need (a few pairs of
/// 3–7 apiservers, two families), and low enough that annotations alone cannot make a host send
/// thousands of probes a second (256 targets at the default period: about 850) or outgrow its
/// member record.
pub const DEFAULT_MAX_PROBE_TARGETS: usize = 256;

/// Default `[metrics] listen`: loopback only, because the unit's hardening only allows loopback.
const DEFAULT_METRICS_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9402);

impl Default for Config {
    fn default() -> Self {
        Self {
            kubeconfig: Kubeconfig::Auto,
            allow_insecure_tls: false,
            pairs: vec![PairConfig::new(
                builtin_ref(names::DEFAULT_SOURCE),
                builtin_ref(names::DEFAULT_TARGET),
            )],
            annotations: AnnotationsSettings {
                enabled: true,
                allowed_sources: vec![builtin_ref(names::DEFAULT_SOURCE)],
            },
            lease: LeaseSettings {
                namespace: names::LEASE_NAMESPACE.to_owned(),
                name: names::LEASE_NAME.to_owned(),
                identity: None,
                duration: Duration::from_secs(4),
                renew_deadline: Duration::from_secs(2),
                retry_period: Duration::from_secs(1),
                runtime_dir: Some(PathBuf::from(DEFAULT_LEASE_RUNTIME_DIR)),
            },
            members: MembersSettings {
                heartbeat: Duration::from_secs(10),
                expiry: Duration::from_secs(30),
                forget_after: Duration::from_secs(900),
                namespace: crate::names::MEMBERS_NAMESPACE.to_owned(),
            },
            probe: ProbeSettings {
                timing: probe::Timing::default(),
                max_targets: DEFAULT_MAX_PROBE_TARGETS,
                tls_server_name: None,
            },
            nodes: NodesSettings {
                selector: Some(names::CONTROL_PLANE_LABEL.to_owned()),
            },
            sync: SyncSettings {
                resync_interval: Duration::from_secs(300),
                max_backoff: Duration::from_secs(30),
                keep_last_known: Duration::from_secs(300),
            },
            log: LogSettings {
                level: "info".to_owned(),
            },
            metrics: MetricsSettings {
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
        origin: Provenance,
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
        origin: Provenance,
        /// The full key, e.g. `lease.duraton_secs`.
        key: String,
        /// The keys valid at that level, comma-separated.
        expected: String,
    },
    /// A value of the wrong TOML type.
    #[error("{origin}: '{key}' has the wrong type: expected {expected}, found {found}")]
    WrongType {
        /// Where the value was written.
        origin: Provenance,
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
        origin: Provenance,
        /// The full key.
        key: String,
        /// What is wrong and what is accepted.
        reason: String,
    },
}

impl Error {
    /// Where the culprit was written, when the error is about one key or file position.
    pub fn origin(&self) -> Option<&Provenance> {
        match self {
            Error::Syntax { origin, .. }
            | Error::UnknownKey { origin, .. }
            | Error::WrongType { origin, .. }
            | Error::InvalidValue { origin, .. } => Some(origin),
            Error::ReadDir { .. } | Error::ReadFile { .. } | Error::EnvNotUnicode { .. } => None,
        }
    }
}

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
        layers.push_file(path.clone(), text);
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
        layers.push_dict(Provenance::Env { var }, dict);
    }

    if let Some(path) = &o.kubeconfig {
        let origin = Provenance::Flag {
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
        layers.push_dict(origin, dict);
    }

    let raw: RawConfig = figment.extract().map_err(|e| from_figment(e, &layers))?;
    let config = validate::validate(raw, &layers)?;
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
