//! Prometheus metrics and the health endpoints: the [`Metrics`] registry with one typed setter per
//! series, the [`Health`] flags, and a small HTTP server for `/metrics`, `/healthz` and `/readyz`.
//!
//! The daemon decides when to count and what "ready" means (in sync as leader, or watching as
//! follower) and calls the setters; this module only stores, encodes and serves. Whether to serve
//! at all (an empty listen address disables it) is `config`'s and `daemon`'s call.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// Prefix of every metric name (`endpoint_copier_leader`, ...).
pub const PREFIX: &str = "endpoint_copier";
/// Content type of `/metrics`: the registry encodes the OpenMetrics text format, which Prometheus
/// negotiates and parses.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// How long a client may take to send its request headers, so an idle connection cannot pin a
/// task forever.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long open connections get to finish after shutdown, before they are dropped.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause after a failed `accept` (out of file descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Address families an EndpointSlice can hold, for clearing a removed pair's series.
const ADDRESS_TYPES: [&str; 3] = ["IPv4", "IPv6", "FQDN"];

/// Why the metrics server could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listen address could not be bound (in use, not local).
    #[error("failed to listen for metrics on {addr}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    pair: String,
    family: String,
    ready: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WriteLabels {
    operation: &'static str,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    pair: String,
    source: String,
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PairLabels {
    pair: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WatchLabels {
    watch: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeLabels {
    kind: &'static str,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: String,
}

/// Every series the daemon exports, each behind a typed setter.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    leader: Gauge,
    api_unanswered: Gauge,
    watch_silence: Gauge,
    member_publisher_up: Gauge,
    lease_transitions: Counter,
    pairs: Family<StateLabels, Gauge>,
    endpoints: Family<EndpointLabels, Gauge>,
    writes: Family<WriteLabels, Counter>,
    writes_skipped: Counter,
    sync_duration: Histogram,
    last_sync: Family<PairLabels, Gauge<f64, AtomicU64>>,
    watch_restarts: Family<WatchLabels, Counter>,
    api_errors: Family<CodeLabels, Counter>,
    foreign_slices: Family<PairLabels, Gauge>,
    probe_verdict: Family<EndpointTargetLabels, Gauge>,
    evictions: Family<PairLabels, Counter>,
    evicted: Family<PairLabels, Gauge>,
    drained: Family<PairLabels, Gauge>,
    source_up: Family<SourceLabels, Gauge>,
    time_to_evict: Histogram,
    probe_duration: Family<ProbeLabels, Histogram>,
    probes: Family<ProbeLabels, Counter>,
    probe_abstaining: Family<EndpointTargetLabels, Gauge>,
    probe_targets: Family<StateLabels, Gauge>,
}

/// Labels of a per-probe-target series: its display form (`https://198.51.100.1:6443/readyz`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointTargetLabels {
    endpoint: String,
}

impl Metrics {
    /// A registry with every series registered (gauges at 0, counters at 0, no labelled series
    /// until first set).
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix(PREFIX);
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this host holds the Lease and writes the target EndpointSlices, else 0",
            leader.clone(),
        );
        let api_unanswered = Gauge::default();
        registry.register(
            "api_unanswered_seconds",
            "Seconds since requests to the API server started failing or timing out (0 while it answers)",
            api_unanswered.clone(),
        );
        let watch_silence = Gauge::default();
        registry.register(
            "watch_silence_seconds",
            "The longest any open watch has received nothing, not even a bookmark (cut and started over at 90 s)",
            watch_silence.clone(),
        );
        let member_publisher_up = Gauge::default();
        registry.register(
            "member_publisher_up",
            "1 while this host's member Lease writes succeed, 0 while they fail (its probe verdicts then stop counting after [members] expiry_secs)",
            member_publisher_up.clone(),
        );
        let lease_transitions = Counter::default();
        registry.register(
            "lease_transitions",
            "Times this host gained or lost the Lease",
            lease_transitions.clone(),
        );
        let pairs = Family::default();
        registry.register(
            "pairs",
            "Pairs by state: active (mirrored) or refused (invalid, see the Events on the target)",
            pairs.clone(),
        );
        let endpoints = Family::default();
        registry.register(
            "endpoints",
            "Endpoints in the target EndpointSlices, by pair, address family and readiness",
            endpoints.clone(),
        );
        let writes = Family::default();
        registry.register(
            "writes",
            "EndpointSlice writes by operation (create, update, delete) and result (ok, conflict, error)",
            writes.clone(),
        );
        let writes_skipped = Counter::default();
        registry.register(
            "writes_skipped",
            "Syncs whose plan was empty: the target EndpointSlices already matched",
            writes_skipped.clone(),
        );
        // 5 ms to ~10 s: a sync is a few API calls; beyond 10 s something is wrong anyway.
        let sync_duration = Histogram::new(exponential_buckets(0.005, 2.0, 12));
        registry.register_with_unit(
            "sync_duration",
            "Time to compute and apply one pair's plan",
            Unit::Seconds,
            sync_duration.clone(),
        );
        let last_sync = Family::default();
        registry.register(
            "last_sync_timestamp_seconds",
            "Unix time of the last successful sync, by pair",
            last_sync.clone(),
        );
        let watch_restarts = Family::default();
        registry.register(
            "watch_restarts",
            "Times a watch was restarted (dropped connection, 410 Gone), by watch",
            watch_restarts.clone(),
        );
        let api_errors = Family::default();
        registry.register(
            "api_errors",
            "API requests answered with an error status, by HTTP status code",
            api_errors.clone(),
        );
        let foreign_slices = Family::default();
        registry.register(
            "foreign_slices",
            "EndpointSlices on a target that this copier group does not manage (another controller, another group), by pair",
            foreign_slices.clone(),
        );
        let probe_verdict = Family::default();
        registry.register(
            "probe_verdict",
            "This host's probe verdict per endpoint: 1 up, 0 down (after the thresholds)",
            probe_verdict.clone(),
        );
        let evictions = Family::default();
        registry.register(
            "evictions",
            "Endpoints the leader marked not ready because a majority of the live hosts saw them down, by pair",
            evictions.clone(),
        );
        let evicted = Family::default();
        registry.register(
            "evicted_endpoints",
            "Endpoints marked not ready by the probes' quorum now, by pair (leader only)",
            evicted.clone(),
        );
        let drained = Family::default();
        registry.register(
            "drained_endpoints",
            "Endpoints marked not ready because their Node is drained (endpoint-copier/drain), by pair (leader only)",
            drained.clone(),
        );
        let source_up = Family::default();
        registry.register(
            "source_up",
            "1 while a source of a pair gives its endpoints, 0 while it fails (its last endpoints are kept in the target), by pair and source (leader only)",
            source_up.clone(),
        );
        // 100 ms to ~100 s: the goal is under 2 s; the tail shows a slow quorum or a slow Lease.
        let time_to_evict = Histogram::new(exponential_buckets(0.1, 2.0, 11));
        registry.register_with_unit(
            "probe_time_to_evict",
            "Time from this host's first failed probe of an endpoint to the leader's eviction of it",
            Unit::Seconds,
            time_to_evict.clone(),
        );
        // 1 ms to ~1 s: a probe is one request on a kept-alive connection (about a millisecond),
        // and the timeout cuts it off below a second.
        let probe_duration = Family::<ProbeLabels, Histogram>::new_with_constructor(
            probe_buckets as fn() -> Histogram,
        );
        registry.register_with_unit(
            "probe_duration",
            "Time one health probe took, by kind (https, http, tcp) and result (ok, failed, abstained)",
            Unit::Seconds,
            probe_duration.clone(),
        );
        let probes = Family::default();
        registry.register(
            "probes",
            "Health probes run, by kind (https, http, tcp) and result (ok, failed, abstained)",
            probes.clone(),
        );
        let probe_abstaining = Family::default();
        registry.register(
            "probe_abstaining",
            "1 per endpoint this host cannot judge (its certificate does not verify, it refuses anonymous probes): no vote either way",
            probe_abstaining.clone(),
        );
        let probe_targets = Family::default();
        registry.register(
            "probe_targets",
            "Probe targets this host wants, by state: probed, or over_cap ([probe] max_targets reached: not probed, no vote)",
            probe_targets.clone(),
        );
        let metrics = Metrics {
            probe_verdict,
            evictions,
            evicted,
            drained,
            source_up,
            time_to_evict,
            probe_duration,
            probes,
            probe_abstaining,
            probe_targets,
            foreign_slices,
            registry,
            leader,
            api_unanswered,
            watch_silence,
            member_publisher_up,
            lease_transitions,
            pairs,
            endpoints,
            writes,
            writes_skipped,
            sync_duration,
            last_sync,
            watch_restarts,
            api_errors,
        };
        // Both states exist from the start, so a dashboard sees 0 rather than no data.
        metrics.set_pairs(0, 0);
        Arc::new(metrics)
    }

    /// Sets `endpoint_copier_api_unanswered_seconds` (how long the API has not answered, 0 while
    /// it does) and `endpoint_copier_watch_silence_seconds` (the longest silence of an open
    /// watch), from the client's link.
    pub fn set_link(&self, unanswered: std::time::Duration, silence: std::time::Duration) {
        self.api_unanswered
            .set(i64::try_from(unanswered.as_secs()).unwrap_or(i64::MAX));
        self.watch_silence
            .set(i64::try_from(silence.as_secs()).unwrap_or(i64::MAX));
    }

    /// Sets `endpoint_copier_leader` to 1 (holds the Lease) or 0.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// Sets `endpoint_copier_member_publisher_up` to 1 (the last write of this host's member
    /// Lease succeeded) or 0.
    pub fn set_member_publisher_up(&self, up: bool) {
        self.member_publisher_up.set(i64::from(up));
    }

    /// Sets `endpoint_copier_foreign_slices{pair}`: slices on the target another manager writes.
    pub fn set_foreign_slices(&self, pair: &str, n: usize) {
        self.foreign_slices
            .get_or_create(&PairLabels {
                pair: pair.to_owned(),
            })
            .set(saturating_i64(n));
    }

    /// Counts one gained or lost Lease in `endpoint_copier_lease_transitions_total`.
    pub fn lease_transition(&self) {
        self.lease_transitions.inc();
    }

    /// Sets `endpoint_copier_pairs{state="active"|"refused"}`.
    pub fn set_pairs(&self, active: usize, refused: usize) {
        for (state, n) in [("active", active), ("refused", refused)] {
            self.pairs
                .get_or_create(&StateLabels { state })
                .set(saturating_i64(n));
        }
    }

    /// Sets `endpoint_copier_probe_verdict{endpoint}`: 1 up, 0 down; `None` drops the series (the
    /// endpoint is no longer probed).
    pub fn set_probe_verdict(&self, endpoint: &str, up: Option<bool>) {
        let labels = EndpointTargetLabels {
            endpoint: endpoint.to_owned(),
        };
        match up {
            Some(up) => {
                self.probe_verdict.get_or_create(&labels).set(i64::from(up));
            }
            None => {
                self.probe_verdict.remove(&labels);
            }
        }
    }

    /// Sets `endpoint_copier_probe_abstaining{endpoint}` to 1 while this host abstains on it;
    /// `false` drops the series.
    pub fn set_probe_abstaining(&self, endpoint: &str, abstaining: bool) {
        let labels = EndpointTargetLabels {
            endpoint: endpoint.to_owned(),
        };
        if abstaining {
            self.probe_abstaining.get_or_create(&labels).set(1);
        } else {
            self.probe_abstaining.remove(&labels);
        }
    }

    /// Sets `endpoint_copier_probe_targets{state="probed"|"over_cap"}`.
    pub fn set_probe_targets(&self, probed: usize, over_cap: usize) {
        for (state, n) in [("probed", probed), ("over_cap", over_cap)] {
            self.probe_targets
                .get_or_create(&StateLabels { state })
                .set(saturating_i64(n));
        }
    }

    /// Counts one eviction in `endpoint_copier_evictions_total{pair}`.
    pub fn probe_eviction(&self, pair: &str) {
        self.evictions
            .get_or_create(&PairLabels {
                pair: pair.to_owned(),
            })
            .inc();
    }

    /// Sets `endpoint_copier_evicted_endpoints{pair}`.
    pub fn set_evicted(&self, pair: &str, n: usize) {
        self.evicted
            .get_or_create(&PairLabels {
                pair: pair.to_owned(),
            })
            .set(saturating_i64(n));
    }

    /// Sets `endpoint_copier_source_up{pair, source, kind}` (`kind`: `service`, `remote`,
    /// `static`).
    pub fn set_source_up(&self, pair: &str, source: &str, kind: &'static str, up: bool) {
        self.source_up
            .get_or_create(&SourceLabels {
                pair: pair.to_owned(),
                source: source.to_owned(),
                kind,
            })
            .set(i64::from(up));
    }

    /// Sets `endpoint_copier_drained_endpoints{pair}`.
    pub fn set_drained(&self, pair: &str, n: usize) {
        self.drained
            .get_or_create(&PairLabels {
                pair: pair.to_owned(),
            })
            .set(saturating_i64(n));
    }

    /// Observes one time from first failed probe to eviction.
    pub fn observe_time_to_evict(&self, took: Duration) {
        self.time_to_evict.observe(took.as_secs_f64());
    }

    /// Sets `endpoint_copier_endpoints{pair, family, ready}` for one pair (its target,
    /// `namespace/name`) and address family (the EndpointSlice's `addressType`; the daemon sets
    /// `IPv4` and `IPv6`).
    pub fn set_endpoints(&self, pair: &str, family: &str, ready: usize, not_ready: usize) {
        for (flag, n) in [("true", ready), ("false", not_ready)] {
            self.endpoints
                .get_or_create(&EndpointLabels {
                    pair: pair.to_owned(),
                    family: family.to_owned(),
                    ready: flag,
                })
                .set(saturating_i64(n));
        }
    }

    /// Drops every per-pair series of a pair that no longer exists, so it does not linger at its
    /// last value.
    pub fn forget_pair(&self, pair: &str) {
        for family in ADDRESS_TYPES {
            for ready in ["true", "false"] {
                self.endpoints.remove(&EndpointLabels {
                    pair: pair.to_owned(),
                    family: family.to_owned(),
                    ready,
                });
            }
        }
        self.last_sync.remove(&PairLabels {
            pair: pair.to_owned(),
        });
    }

    /// Counts one EndpointSlice write in `endpoint_copier_writes_total{operation, result}`:
    /// `operation` is `create`, `update` or `delete`; `result` is `ok`, `conflict` (409, re-read
    /// and retried) or `error`. Static strings only, so the label set stays small and fixed.
    pub fn record_write(&self, operation: &'static str, result: &'static str) {
        self.writes
            .get_or_create(&WriteLabels { operation, result })
            .inc();
    }

    /// Counts one sync whose plan was empty in `endpoint_copier_writes_skipped_total`.
    pub fn writes_skipped(&self) {
        self.writes_skipped.inc();
    }

    /// Records one sync's duration in `endpoint_copier_sync_duration_seconds`.
    pub fn observe_sync(&self, took: Duration) {
        self.sync_duration.observe(took.as_secs_f64());
    }

    /// Sets `endpoint_copier_last_sync_timestamp_seconds{pair}` to now.
    pub fn set_last_sync(&self, pair: &str) {
        self.set_last_sync_at(pair, SystemTime::now());
    }

    /// Sets `endpoint_copier_last_sync_timestamp_seconds{pair}` to `at` (Unix seconds).
    pub fn set_last_sync_at(&self, pair: &str, at: SystemTime) {
        let secs = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.last_sync
            .get_or_create(&PairLabels {
                pair: pair.to_owned(),
            })
            .set(secs);
    }

    /// Counts one restart of the named watch (the daemon's are `services` and `endpointslices`)
    /// in `endpoint_copier_watch_restarts_total{watch}`.
    pub fn watch_restart(&self, watch: &str) {
        self.watch_restarts
            .get_or_create(&WatchLabels {
                watch: watch.to_owned(),
            })
            .inc();
    }

    /// Counts one API request that the API answered with the error status `code` in
    /// `endpoint_copier_api_errors_total{code}`. A request that got no answer (refused, timed
    /// out) has no code and is not counted here.
    pub fn record_api_error(&self, code: u16) {
        self.api_errors
            .get_or_create(&CodeLabels {
                code: code.to_string(),
            })
            .inc();
    }

    /// Records one health probe in `endpoint_copier_probe_duration_seconds{kind, result}` and
    /// `endpoint_copier_probes_total{kind, result}`: `kind` is the target's scheme (`https`,
    /// `http`, `tcp`), `result` is `ok`, `failed` or `abstained` (the probe could not judge the
    /// endpoint: a certificate that does not verify, an anonymous probe refused).
    pub fn observe_probe(&self, kind: &'static str, result: &'static str, took: Duration) {
        let labels = ProbeLabels { kind, result };
        self.probe_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        self.probes.get_or_create(&labels).inc();
    }

    /// The whole registry in the OpenMetrics text format (ends with `# EOF`).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; an encoder error would leave a partial page, which
        // Prometheus rejects as a failed scrape, the honest outcome.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Buckets of the probe duration histogram: 1 ms doubling to ~1 s.
fn probe_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 11))
}

fn saturating_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

mod server;
pub use server::{Health, Server, serve};
