//! Validation: once, at start, from the merged [`RawConfig`] into [`Config`], with every default
//! filled in. Every error names the key and, through `provenance`, the file, line and column (or
//! the variable, or the flag) that set it. A rule between keys points at the key the operator
//! set, so the position is where to look first.
//!
//! Owns: the accepted ranges and the cross-key rules (Lease timings, member timings, unique
//! targets). Leaves to others: the schema (`raw`), locating keys (`provenance`), the defaults
//! themselves ([`Config::default`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::provenance::{Layers, Part, key_name};
use super::raw::{RawAnnotations, RawConfig, RawLease, RawMembers, RawMetrics, RawPair, RawSync};
use super::{
    AnnotationsSettings, Config, Error, Kubeconfig, LeaseSettings, LogSettings, MembersSettings,
    MetricsSettings, PairConfig, SyncSettings,
};
use crate::names::{self, ServiceRef};
use crate::source::Source;

/// Longest Lease timing accepted (each of duration, renew deadline, retry period).
const MAX_LEASE_SECS: Duration = Duration::from_secs(3600);
/// Longest resync interval and backoff cap accepted.
const MAX_SYNC_SECS: Duration = Duration::from_secs(86_400);
/// Longest member timing accepted (each of heartbeat, expiry, forget-after): one day. Beyond it a
/// value is a typo, and unbounded seconds would overflow the monotonic clock arithmetic.
const MAX_MEMBERS_SECS: Duration = Duration::from_secs(86_400);

/// Builds errors that name a key and where it was set.
pub(super) struct Checker<'a> {
    /// The merged layers, to find where a key was set.
    layers: &'a Layers,
}

impl Checker<'_> {
    /// An [`Error::InvalidValue`] for the key at `path`, positioned at its value.
    pub(super) fn bad(&self, path: &[&str], reason: impl Into<String>) -> Error {
        let path: Vec<String> = path.iter().map(|s| (*s).to_owned()).collect();
        Error::InvalidValue {
            origin: self.layers.origin(&path, Part::Value),
            key: key_name(&path),
            reason: reason.into(),
        }
    }

    /// Parses a `namespace/name` value of the key at `path`.
    pub(super) fn service_ref(&self, path: &[&str], value: &str) -> Result<ServiceRef, Error> {
        value
            .parse::<ServiceRef>()
            .map_err(|e| self.bad(path, e.to_string()))
    }
}

/// Validates the merged document into [`Config`], section by section in key order, so the first
/// error reported is the first in the reference table.
///
/// # Errors
/// [`Error::InvalidValue`] naming the first key that breaks a rule.
pub(super) fn validate(raw: RawConfig, layers: &Layers) -> Result<Config, Error> {
    let c = Checker { layers };
    let d = Config::default();

    let kubeconfig = kubeconfig(&c, raw.kubeconfig.as_deref(), d.kubeconfig)?;
    let pairs = match raw.pair {
        None => d.pairs,
        Some(raw_pairs) => pairs(&c, &raw_pairs)?,
    };
    let annotations = annotations(&c, raw.annotations.unwrap_or_default(), d.annotations)?;
    let lease = lease(&c, raw.lease.unwrap_or_default(), d.lease)?;
    let members = members(&c, &raw.members.unwrap_or_default(), &d.members)?;
    let probe = super::probing::probe(&c, raw.probe.unwrap_or_default(), d.probe)?;
    let nodes = super::probing::nodes(&c, raw.nodes.unwrap_or_default(), d.nodes)?;
    let sync = sync(&c, &raw.sync.unwrap_or_default(), &d.sync)?;
    let level = log_level(&c, raw.log.and_then(|l| l.level).unwrap_or(d.log.level))?;
    let listen = metrics_listen(&c, raw.metrics.unwrap_or_default(), d.metrics.listen)?;

    Ok(Config {
        kubeconfig,
        allow_insecure_tls: raw.allow_insecure_tls.unwrap_or(d.allow_insecure_tls),
        pairs,
        annotations,
        lease,
        members,
        probe,
        nodes,
        sync,
        log: LogSettings { level },
        metrics: MetricsSettings { listen },
    })
}

/// `kubeconfig`: `"auto"` or an absolute path.
fn kubeconfig(
    c: &Checker<'_>,
    raw: Option<&str>,
    default: Kubeconfig,
) -> Result<Kubeconfig, Error> {
    match raw {
        None => Ok(default),
        Some("auto") => Ok(Kubeconfig::Auto),
        Some(p) if Path::new(p).is_absolute() => Ok(Kubeconfig::Path(PathBuf::from(p))),
        Some(p) => Err(c.bad(
            &["kubeconfig"],
            format!("'{p}' is neither \"auto\" nor an absolute path"),
        )),
    }
}

/// `[[pair]]`: a target and its sources (`source` or `sources`, not both), each valid; a target
/// differs from its local sources, no two pairs share a target (a target has one list of
/// sources).
fn pairs(c: &Checker<'_>, raw_pairs: &[RawPair]) -> Result<Vec<PairConfig>, Error> {
    let mut pairs: Vec<PairConfig> = Vec::with_capacity(raw_pairs.len());
    for (i, p) in raw_pairs.iter().enumerate() {
        let idx = i.to_string();
        let Some(target) = &p.target else {
            return Err(c.bad(&["pair", &idx], "missing key 'target'"));
        };
        let sources = match (&p.source, &p.sources) {
            (Some(_), Some(_)) => {
                return Err(c.bad(
                    &["pair", &idx, "sources"],
                    "set either 'source' (one Service of this cluster) or 'sources', not both",
                ));
            }
            (None, None) => {
                return Err(c.bad(&["pair", &idx], "missing key 'source' (or 'sources')"));
            }
            (Some(source), None) => {
                vec![Source::Service(
                    c.service_ref(&["pair", &idx, "source"], source)?,
                )]
            }
            (None, Some(list)) => super::sources::sources(c, &idx, list)?,
        };
        let target = c.service_ref(&["pair", &idx, "target"], target)?;
        if let Some(j) = sources
            .iter()
            .position(|s| s.local_service() == Some(&target))
        {
            let key = if p.source.is_some() {
                vec!["pair".to_owned(), idx.clone(), "target".to_owned()]
            } else {
                vec![
                    "pair".to_owned(),
                    idx.clone(),
                    "sources".to_owned(),
                    j.to_string(),
                ]
            };
            let key: Vec<&str> = key.iter().map(String::as_str).collect();
            let what = if p.source.is_some() {
                "also the source"
            } else {
                "also the target"
            };
            return Err(c.bad(&key, format!("'{target}' is {what} of this pair")));
        }
        if let Some(j) = pairs.iter().position(|q| q.target == target) {
            return Err(c.bad(
                &["pair", &idx, "target"],
                format!("'{target}' is already the target of pair[{j}]; a target has one list of sources"),
            ));
        }
        let probe = match &p.probe {
            None => crate::probe::spec::default_for_sources(&sources),
            Some(value) => crate::probe::spec::from_value(value)
                .map_err(|e| c.bad(&["pair", &idx, "probe"], e.to_string()))?,
        };
        let derive_families = p
            .derive_families
            .unwrap_or_else(|| super::derive_families_default(&sources));
        pairs.push(PairConfig {
            sources,
            target,
            probe,
            derive_families,
        });
    }
    Ok(pairs)
}

/// `[annotations]`: every allowed source is a valid `namespace/name`.
fn annotations(
    c: &Checker<'_>,
    raw: RawAnnotations,
    d: AnnotationsSettings,
) -> Result<AnnotationsSettings, Error> {
    let allowed_sources = match raw.allowed_sources {
        None => d.allowed_sources,
        Some(list) => list
            .iter()
            .enumerate()
            .map(|(i, s)| c.service_ref(&["annotations", "allowed_sources", &i.to_string()], s))
            .collect::<Result<Vec<_>, _>>()?,
    };
    Ok(AnnotationsSettings {
        enabled: raw.enabled.unwrap_or(d.enabled),
        allowed_sources,
    })
}

/// `[lease]`: valid names, and timings that keep two writers apart (see [`LeaseSettings`]).
fn lease(c: &Checker<'_>, rl: RawLease, d: LeaseSettings) -> Result<LeaseSettings, Error> {
    let namespace = rl.namespace.unwrap_or(d.namespace);
    if !names::is_dns1123_label(&namespace) {
        return Err(c.bad(
            &["lease", "namespace"],
            format!("'{namespace}' is not a valid namespace (a DNS-1123 label: lowercase letters, digits and '-', at most 63)"),
        ));
    }
    let name = rl.name.unwrap_or(d.name);
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
    let runtime_dir = match rl.runtime_dir {
        None => d.runtime_dir,
        Some(dir) if dir.is_empty() => None,
        Some(dir) if Path::new(&dir).is_absolute() => Some(PathBuf::from(dir)),
        Some(dir) => {
            return Err(c.bad(
                &["lease", "runtime_dir"],
                format!("'{dir}' is not an absolute path (or \"\" for no runtime lock)"),
            ));
        }
    };
    let lease = LeaseSettings {
        namespace,
        name,
        identity: rl.identity,
        duration: secs(rl.duration_secs, d.duration),
        renew_deadline: secs(rl.renew_deadline_secs, d.renew_deadline),
        retry_period: secs(rl.retry_period_secs, d.retry_period),
        runtime_dir,
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
    // Stricter than client-go: a successor takes over only `duration` after the last renewal it
    // saw, while the old leader's fence closes `renew_deadline` after its last successful
    // renewal; `retry_period` is the margin for the one request that may still be in flight
    // when the fence closes. Without it, a write sent just before the fence closed could land
    // after the successor's first write.
    if lease.renew_deadline + lease.retry_period >= lease.duration {
        let key = if rl.duration_secs.is_some() {
            "duration_secs"
        } else {
            pick(
                rl.renew_deadline_secs.is_some(),
                "renew_deadline_secs",
                "retry_period_secs",
            )
        };
        return Err(c.bad(
            &["lease", key],
            format!(
                "renew_deadline_secs ({}) + retry_period_secs ({}) must be less than duration_secs ({})",
                lease.renew_deadline.as_secs(),
                lease.retry_period.as_secs(),
                lease.duration.as_secs()
            ),
        ));
    }
    Ok(lease)
}

/// `[members]`: a heartbeat of at least a second, an expiry longer than the heartbeat (else a
/// healthy member would flap), forgetting no sooner than expiry, and a valid namespace.
fn members(
    c: &Checker<'_>,
    rm: &RawMembers,
    d: &MembersSettings,
) -> Result<MembersSettings, Error> {
    let members = MembersSettings {
        heartbeat: secs(rm.heartbeat_secs, d.heartbeat),
        expiry: secs(rm.expiry_secs, d.expiry),
        forget_after: secs(rm.forget_after_secs, d.forget_after),
        namespace: rm.namespace.clone().unwrap_or_else(|| d.namespace.clone()),
    };
    if !names::is_dns1123_label(&members.namespace) {
        return Err(c.bad(
            &["members", "namespace"],
            format!(
                "'{}' is not a valid namespace (a DNS-1123 label: lowercase letters, digits and '-', at most 63)",
                members.namespace
            ),
        ));
    }
    if members.heartbeat < Duration::from_secs(1) {
        return Err(c.bad(&["members", "heartbeat_secs"], "must be at least 1"));
    }
    for (key, value) in [
        ("heartbeat_secs", members.heartbeat),
        ("expiry_secs", members.expiry),
        ("forget_after_secs", members.forget_after),
    ] {
        if value > MAX_MEMBERS_SECS {
            return Err(c.bad(
                &["members", key],
                format!("must be at most {} (one day)", MAX_MEMBERS_SECS.as_secs()),
            ));
        }
    }
    if members.expiry <= members.heartbeat {
        return Err(c.bad(
            &[
                "members",
                pick(rm.expiry_secs.is_some(), "expiry_secs", "heartbeat_secs"),
            ],
            format!(
                "expiry_secs ({}) must be greater than heartbeat_secs ({})",
                members.expiry.as_secs(),
                members.heartbeat.as_secs()
            ),
        ));
    }
    if members.forget_after < members.expiry {
        return Err(c.bad(
            &[
                "members",
                pick(
                    rm.forget_after_secs.is_some(),
                    "forget_after_secs",
                    "expiry_secs",
                ),
            ],
            format!(
                "forget_after_secs ({}) must be at least expiry_secs ({})",
                members.forget_after.as_secs(),
                members.expiry.as_secs()
            ),
        ));
    }
    Ok(members)
}

/// `[sync]`: a resync of at least 10 s, a backoff cap of at least 1 s, both at most a day.
fn sync(c: &Checker<'_>, rs: &RawSync, d: &SyncSettings) -> Result<SyncSettings, Error> {
    let sync = SyncSettings {
        resync_interval: secs(rs.resync_interval_secs, d.resync_interval),
        max_backoff: secs(rs.max_backoff_secs, d.max_backoff),
        keep_last_known: secs(rs.keep_last_known_secs, d.keep_last_known),
    };
    if sync.keep_last_known < Duration::from_secs(1) || sync.keep_last_known > MAX_SYNC_SECS {
        return Err(c.bad(
            &["sync", "keep_last_known_secs"],
            format!("must be from 1 to {} (one day)", MAX_SYNC_SECS.as_secs()),
        ));
    }
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
    Ok(sync)
}

/// `[log] level`: not empty, and a filter `tracing_subscriber` accepts, so that a typo exits 78
/// here instead of failing later in `logging`.
fn log_level(c: &Checker<'_>, level: String) -> Result<String, Error> {
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
    Ok(level)
}

/// `[metrics] listen`: `""` disables; otherwise a loopback `address:port`, because the unit's
/// hardening only allows loopback sockets.
fn metrics_listen(
    c: &Checker<'_>,
    raw: RawMetrics,
    default: Option<SocketAddr>,
) -> Result<Option<SocketAddr>, Error> {
    match raw.listen {
        None => Ok(default),
        Some(s) if s.is_empty() => Ok(None),
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
            Ok(Some(addr))
        }
    }
}

/// A `*_secs` value, or the default.
fn secs(value: Option<u64>, default: Duration) -> Duration {
    value.map_or(default, Duration::from_secs)
}

/// The key a cross-key error points at: the one the operator set, preferring `first`.
pub(super) fn pick(first_set: bool, first: &'static str, second: &'static str) -> &'static str {
    if first_set { first } else { second }
}
