//! The raw schema: structs that mirror the TOML drop-ins key for key. Every field is an `Option`
//! (a drop-in sets only the keys it changes) and every table refuses unknown keys
//! (`deny_unknown_fields`), so a typo fails instead of being ignored. Also the words an operator
//! reads for each key's type ([`expected_type`]).
//!
//! Owns: the key names and their TOML types. Leaves to others: where a key was set
//! (`provenance`), defaults and value checks (`validate`). Nothing here leaves `config`.
//!
//! `Serialize` exists for the unit test that checks the packaged `10-defaults.toml` names every
//! key: it serialises a value with every field set and compares the key sets.

use serde::{Deserialize, Serialize};

/// The whole merged document (top-level keys and tables).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    /// `kubeconfig`: `"auto"` or an absolute path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) kubeconfig: Option<String>,
    /// `allow_insecure_tls`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) allow_insecure_tls: Option<bool>,
    /// `[[pair]]`: replaced as a whole by a later layer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) pair: Option<Vec<RawPair>>,
    /// `[annotations]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) annotations: Option<RawAnnotations>,
    /// `[lease]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) lease: Option<RawLease>,
    /// `[members]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) members: Option<RawMembers>,
    /// `[probe]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) probe: Option<RawProbe>,
    /// `[sync]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) sync: Option<RawSync>,
    /// `[nodes]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) nodes: Option<RawNodes>,
    /// `[log]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) log: Option<RawLog>,
    /// `[metrics]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) metrics: Option<RawMetrics>,
}

/// One `[[pair]]` element; both keys are required, which `validate` checks so that the error
/// can name the element.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPair {
    /// `source`: `"namespace/name"`, the short form of one local Service source.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) source: Option<String>,
    /// `sources`: one or more sources whose union the target gets (instead of `source`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) sources: Option<Vec<RawSource>>,
    /// `target`: `"namespace/name"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) target: Option<String>,
    /// `probe`: `false` or a table (`{ https = "/readyz" }`...), read by `probe::spec` so that
    /// the config and the `endpoint-copier/probe` annotation share one vocabulary and one set of
    /// error messages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) probe: Option<serde_json::Value>,
    /// `derive_families`: a boolean.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) derive_families: Option<bool>,
}

/// One element of `sources`: `{ service = "ns/name" }`, `{ service = "ns/name", kubeconfig =
/// "/path" }` or `{ addresses = ["198.51.100.10"] }`; which keys go together is `validate`'s.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
    /// `service`: `"namespace/name"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) service: Option<String>,
    /// `kubeconfig`: an absolute path; the Service is then read in the cluster it reaches.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) kubeconfig: Option<String>,
    /// `addresses`: IPv4 and IPv6 addresses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) addresses: Option<Vec<String>>,
}

/// `[nodes]`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNodes {
    /// `selector`: a label selector, or `""` for every Node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) selector: Option<String>,
}

/// `[probe]`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProbe {
    /// `period_ms`, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) period_ms: Option<u64>,
    /// `timeout_ms`, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) timeout_ms: Option<u64>,
    /// `failure_threshold`, a count.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) failure_threshold: Option<u64>,
    /// `success_threshold`, a count.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) success_threshold: Option<u64>,
    /// `min_up_ms`, in milliseconds (0: no flap damping).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) min_up_ms: Option<u64>,
    /// `max_targets`, a count.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) max_targets: Option<u64>,
    /// `tls_server_name`: a DNS name or an IP address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) tls_server_name: Option<String>,
}

/// `[annotations]`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAnnotations {
    /// `enabled`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) enabled: Option<bool>,
    /// `allowed_sources`: `"namespace/name"` each.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) allowed_sources: Option<Vec<String>>,
}

/// `[lease]`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLease {
    /// `namespace`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) namespace: Option<String>,
    /// `name`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) name: Option<String>,
    /// `identity`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) identity: Option<String>,
    /// `duration_secs`, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) duration_secs: Option<u64>,
    /// `renew_deadline_secs`, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) renew_deadline_secs: Option<u64>,
    /// `retry_period_secs`, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) retry_period_secs: Option<u64>,
    /// `runtime_dir`: an absolute path, or `""` for none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) runtime_dir: Option<String>,
}

/// `[members]`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMembers {
    /// `heartbeat_secs`, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) heartbeat_secs: Option<u64>,
    /// `expiry_secs`, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) expiry_secs: Option<u64>,
    /// `forget_after_secs`, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) forget_after_secs: Option<u64>,
    /// `namespace`: where the member Leases live.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) namespace: Option<String>,
}

/// `[sync]`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSync {
    /// `resync_interval_secs`, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) resync_interval_secs: Option<u64>,
    /// `max_backoff_secs`, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) max_backoff_secs: Option<u64>,
    /// `keep_last_known_secs`, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) keep_last_known_secs: Option<u64>,
}

/// `[log]`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    /// `level`: an `EnvFilter` directive.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) level: Option<String>,
}

/// `[metrics]`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    /// `listen`: a loopback `address:port`, or `""`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) listen: Option<String>,
}

/// What a key takes, in an operator's words (serde's own words name private Rust types).
/// `path` is the key's segments, array indices as numbers.
pub(super) fn expected_type(path: &[String]) -> Option<&'static str> {
    let last = path.iter().rev().find(|s| s.parse::<usize>().is_err())?;
    let is_element = path.last().is_some_and(|s| s.parse::<usize>().is_ok());
    Some(match (last.as_str(), is_element) {
        ("pair", true) => "a table with source (or sources) and target",
        ("sources", true) => {
            "a table { service = \"ns/name\" }, { service = \"ns/name\", kubeconfig = \"/path\" } or { addresses = [\"IP\", ...] }"
        }
        ("sources", false) => "an array of source tables",
        ("addresses", true) => "a string (an IP address)",
        ("addresses", false) => "an array of strings (IP addresses)",
        ("pair", false) => "an array of tables ([[pair]])",
        ("allowed_sources", true) => "a string \"namespace/name\"",
        ("allowed_sources", false) => "an array of strings \"namespace/name\"",
        (
            "annotations" | "lease" | "members" | "probe" | "nodes" | "sync" | "log" | "metrics",
            _,
        ) if path.len() == 1 => "a table",
        ("probe", _) => "false or a table such as { https = \"/readyz\" }",
        ("failure_threshold" | "success_threshold", _) => "a positive integer",
        (k, _) if k.ends_with("_ms") => "a non-negative integer (milliseconds)",
        ("enabled" | "allow_insecure_tls" | "derive_families", _) => "a boolean",
        (k, _) if k.ends_with("_secs") => "a non-negative integer (seconds)",
        _ => "a string",
    })
}
