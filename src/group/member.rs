//! The member object: one `coordination.k8s.io/v1` Lease per running copy, in the group Lease's
//! namespace, saying "this copy is alive and its config names these pairs". This file owns its
//! content ([`MemberRecord`]), its name, the Lease built from it and read back, the publisher task
//! that keeps it fresh ([`publish`]) and the precondition delete of a member gone for good
//! ([`forget`]).
//!
//! Judging liveness from these objects is `live.rs`'s job; starting the publisher and deciding
//! when to forget is `daemon`'s. The probe verdicts travel in an annotation of their own
//! ([`names::MEMBER_VERDICTS_ANNOTATION`]), so older readers keep reading the pairs.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::{DeleteParams, PostParams, Preconditions};
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Group, Settings, fnv1a};
use crate::names::{self, ServiceRef};
use crate::probe::{Target, Verdict};

/// A configured pair as a member publishes it: `(source, target)`. A pair with several sources
/// is named by its first Service source, here or remote, and a pair of static addresses only by
/// its target as source (`config::PairConfig::record_source`): what the group needs is the
/// target, whose slices a live member still wants; the source tells two configs apart.
pub type PairRef = (ServiceRef, ServiceRef);

/// What a member publishes about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberRecord {
    /// The copy's identity (its election identity, by default the host name); written to
    /// `spec.holderIdentity`.
    pub identity: String,
    /// The pairs the copy's own config names (`[[pair]]`), not the annotated ones (those are the
    /// same for every copy: they live on the Services).
    pub pairs: BTreeSet<PairRef>,
    /// The copy's probe verdicts (what it sees up and down), the ballot the leader counts.
    pub verdicts: BTreeMap<Target, Verdict>,
    /// When each verdict last changed, by the copy's wall clock (shown by `status`; never used
    /// to decide anything, as another host's clock is never compared with ours).
    pub verdicts_since: BTreeMap<Target, Timestamp>,
    /// The targets the copy probes but cannot judge (a certificate that does not verify, an
    /// anonymous probe refused), each with why (at most [`MAX_ABSTENTION_REASON`] characters).
    /// Never in `verdicts`: an abstention counts neither way; it is here for `status` and
    /// `check` to show.
    pub abstained: BTreeMap<Target, String>,
}

/// The longest abstention reason a record carries, in characters: enough for a certificate's
/// names, bounded so that many abstentions cannot bloat the record.
pub const MAX_ABSTENTION_REASON: usize = 200;

impl MemberRecord {
    /// The record of the copy `identity` configured with `pairs`.
    pub fn new(identity: &str, pairs: impl IntoIterator<Item = PairRef>) -> MemberRecord {
        MemberRecord {
            identity: identity.to_owned(),
            pairs: pairs.into_iter().collect(),
            verdicts: BTreeMap::new(),
            verdicts_since: BTreeMap::new(),
            abstained: BTreeMap::new(),
        }
    }

    /// The annotations that carry this record: the pairs, and the verdicts when there are any.
    fn annotations(&self) -> Result<BTreeMap<String, String>, Error> {
        let mut annotations = BTreeMap::from([(
            names::MEMBER_PAIRS_ANNOTATION.to_owned(),
            encode_pairs(&self.pairs)?,
        )]);
        if !self.verdicts.is_empty() {
            annotations.insert(
                names::MEMBER_VERDICTS_ANNOTATION.to_owned(),
                encode_verdicts(&self.verdicts, &self.verdicts_since)?,
            );
        }
        if !self.abstained.is_empty() {
            annotations.insert(
                names::MEMBER_ABSTENTIONS_ANNOTATION.to_owned(),
                encode_abstentions(&self.abstained)?,
            );
        }
        Ok(annotations)
    }

    /// Reads a record back from a member Lease: the identity from `spec.holderIdentity`, the pairs
    /// from the annotation (absent: none).
    ///
    /// # Errors
    /// [`DecodeError`] when the holder identity is missing or the annotation is not a list of
    /// `{"source": "ns/name", "target": "ns/name"}` (unknown fields are ignored, so later
    /// versions may add some).
    pub fn from_lease(lease: &Lease) -> Result<MemberRecord, DecodeError> {
        let identity = lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.clone())
            .filter(|h| !h.is_empty())
            .ok_or(DecodeError::NoIdentity)?;
        let annotations = lease.metadata.annotations.as_ref();
        let pairs = match annotations.and_then(|a| a.get(names::MEMBER_PAIRS_ANNOTATION)) {
            None => BTreeSet::new(),
            Some(json) => decode_pairs(json)?,
        };
        // Verdicts a reader cannot parse (a newer kind of target) are skipped, not fatal: the
        // ballot then abstains on them, which never evicts.
        let (verdicts, verdicts_since) = annotations
            .and_then(|a| a.get(names::MEMBER_VERDICTS_ANNOTATION))
            .map(|json| decode_verdicts(json))
            .unwrap_or_default();
        let abstained = annotations
            .and_then(|a| a.get(names::MEMBER_ABSTENTIONS_ANNOTATION))
            .map(|json| decode_abstentions(json, &verdicts))
            .unwrap_or_default();
        Ok(MemberRecord {
            identity,
            pairs,
            verdicts,
            verdicts_since,
            abstained,
        })
    }
}

/// Why a member Lease could not be read as a [`MemberRecord`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// `spec.holderIdentity` is absent or empty.
    #[error("member Lease has no holder identity")]
    NoIdentity,
    /// The pairs annotation is not the JSON we write.
    #[error("annotation {annotation} is not a list of pairs: {0}", annotation = names::MEMBER_PAIRS_ANNOTATION)]
    Pairs(String),
}

/// The wire form of one pair in [`names::MEMBER_PAIRS_ANNOTATION`].
#[derive(serde::Serialize, serde::Deserialize)]
struct WirePair {
    source: ServiceRef,
    target: ServiceRef,
}

/// `[{"source":"ns/a","target":"ns/b"},...]`, sorted (a `BTreeSet` iterates in order), compact.
fn encode_pairs(pairs: &BTreeSet<PairRef>) -> Result<String, Error> {
    let wire: Vec<WirePair> = pairs
        .iter()
        .map(|(source, target)| WirePair {
            source: source.clone(),
            target: target.clone(),
        })
        .collect();
    serde_json::to_string(&wire).map_err(Error::Encode)
}

/// The wire form of [`names::MEMBER_VERDICTS_ANNOTATION`].
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct WireVerdicts {
    #[serde(default)]
    down: Vec<String>,
    #[serde(default)]
    up: Vec<String>,
    /// When each verdict last changed (RFC 3339), by target.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    since: BTreeMap<String, String>,
}

/// `{"down":[...],"up":[...],"since":{...}}`, each list sorted (the maps iterate in order),
/// compact.
fn encode_verdicts(
    verdicts: &BTreeMap<Target, Verdict>,
    since: &BTreeMap<Target, Timestamp>,
) -> Result<String, Error> {
    let mut wire = WireVerdicts::default();
    for (target, verdict) in verdicts {
        match verdict {
            Verdict::Down => wire.down.push(target.to_string()),
            Verdict::Up => wire.up.push(target.to_string()),
        }
        if let Some(at) = since.get(target) {
            wire.since.insert(target.to_string(), at.to_string());
        }
    }
    serde_json::to_string(&wire).map_err(Error::Encode)
}

/// Verdicts by target, and when each changed.
type Verdicts = (BTreeMap<Target, Verdict>, BTreeMap<Target, Timestamp>);

/// The verdicts of [`names::MEMBER_VERDICTS_ANNOTATION`]; what does not parse is left out.
fn decode_verdicts(json: &str) -> Verdicts {
    let wire: WireVerdicts = serde_json::from_str(json).unwrap_or_default();
    let parse = |list: Vec<String>, verdict: Verdict| {
        list.into_iter()
            .filter_map(move |t| Some((t.parse::<Target>().ok()?, verdict)))
    };
    // A target listed as both is read as down: a writer never lists one twice, and down is the
    // verdict a majority must reach, so a garbled ballot cannot help to keep a dead endpoint.
    let verdicts: BTreeMap<Target, Verdict> = parse(wire.up, Verdict::Up)
        .chain(parse(wire.down, Verdict::Down))
        .collect();
    let since = wire
        .since
        .iter()
        .filter_map(|(t, at)| Some((t.parse::<Target>().ok()?, at.parse::<Timestamp>().ok()?)))
        .filter(|(t, _)| verdicts.contains_key(t))
        .collect();
    (verdicts, since)
}

/// `{"target":"reason",...}`, sorted, compact, each reason cut to [`MAX_ABSTENTION_REASON`].
fn encode_abstentions(abstained: &BTreeMap<Target, String>) -> Result<String, Error> {
    let wire: BTreeMap<String, String> = abstained
        .iter()
        .map(|(t, why)| {
            (
                t.to_string(),
                why.chars().take(MAX_ABSTENTION_REASON).collect(),
            )
        })
        .collect();
    serde_json::to_string(&wire).map_err(Error::Encode)
}

/// The abstentions of [`names::MEMBER_ABSTENTIONS_ANNOTATION`]; what does not parse is left out,
/// and so is a target the record also votes on (the vote is what counts).
fn decode_abstentions(
    json: &str,
    verdicts: &BTreeMap<Target, Verdict>,
) -> BTreeMap<Target, String> {
    let wire: BTreeMap<String, String> = serde_json::from_str(json).unwrap_or_default();
    wire.into_iter()
        .filter_map(|(t, why)| Some((t.parse::<Target>().ok()?, why)))
        .filter(|(t, _)| !verdicts.contains_key(t))
        .map(|(t, why)| (t, why.chars().take(MAX_ABSTENTION_REASON).collect()))
        .collect()
}

fn decode_pairs(json: &str) -> Result<BTreeSet<PairRef>, DecodeError> {
    let wire: Vec<WirePair> =
        serde_json::from_str(json).map_err(|e| DecodeError::Pairs(e.to_string()))?;
    Ok(wire.into_iter().map(|p| (p.source, p.target)).collect())
}

/// The longest object name the API accepts (a DNS-1123 subdomain).
const MAX_NAME: usize = 253;
/// The longest DNS-1123 label (each dot-separated part of a subdomain).
const MAX_LABEL: usize = 63;

/// The name of `identity`'s member Lease in `group`: `<lease-name>.<identity>-<hash>`, where
/// `<identity>` is the identity lowercased with every character outside `[a-z0-9-]` turned into
/// `-` (cut to 54 characters) and `<hash>` is 8 hex digits of FNV-1a over the group Lease name
/// and the raw identity, so that identities that sanitize alike (`Node_1`, `node-1`) still get
/// distinct objects. Always a valid DNS-1123 subdomain of at most 253 characters whose parts are
/// labels of at most 63.
pub fn member_name(group: &Group, identity: &str) -> String {
    let hash = format!(
        "{:08x}",
        fnv1a(format!("{}/{identity}", group.lease_name()).as_bytes())
    );
    let sanitized: String = identity
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .take(MAX_LABEL - 9)
        .collect();
    let sanitized = sanitized.trim_matches('-');
    let tail = if sanitized.is_empty() {
        hash
    } else {
        format!("{sanitized}-{hash}")
    };
    // The group Lease name is a valid subdomain already; it is cut only when very long.
    let room = MAX_NAME - tail.len() - 1;
    let head: String = group.lease_name().chars().take(room).collect();
    let head = head.trim_end_matches(['-', '.']);
    if head.is_empty() {
        tail
    } else {
        format!("{head}.{tail}")
    }
}

/// `leaseDurationSeconds` for `d`: whole seconds, rounded up, at least 1.
fn duration_seconds(d: Duration) -> i32 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i32::try_from(secs.max(1)).unwrap_or(i32::MAX)
}

/// The member Lease for `record` in `group`, renewed at `now`, valid for `expiry`.
///
/// # Errors
/// [`Error::Encode`] if the record cannot be serialized (it always can).
pub fn member_lease(
    group: &Group,
    record: &MemberRecord,
    expiry: Duration,
    now: Timestamp,
) -> Result<Lease, Error> {
    Ok(Lease {
        metadata: ObjectMeta {
            name: Some(member_name(group, &record.identity)),
            namespace: Some(group.lease_namespace().to_owned()),
            labels: Some(BTreeMap::from([
                group.label(),
                (
                    names::MEMBER_LABEL.to_owned(),
                    names::MEMBER_LABEL_VALUE.to_owned(),
                ),
            ])),
            annotations: Some(record.annotations()?),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(record.identity.clone()),
            lease_duration_seconds: Some(duration_seconds(expiry)),
            renew_time: Some(MicroTime(now)),
            ..LeaseSpec::default()
        }),
    })
}

/// Why a member request failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request did not complete in time (retried).
    #[error("request to {verb} member Lease {lease} timed out after {after_ms} ms")]
    Timeout {
        /// `get`, `create`, `update` or `delete`.
        verb: &'static str,
        /// `namespace/name` of the member Lease.
        lease: String,
        /// The timeout, in milliseconds.
        after_ms: u128,
    },
    /// The API answered with an error or could not be reached.
    #[error("failed to {verb} member Lease {lease}")]
    Request {
        /// `get`, `create`, `update` or `delete`.
        verb: &'static str,
        /// `namespace/name` of the member Lease.
        lease: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
    /// The record could not be serialized.
    #[error("failed to encode the member record")]
    Encode(#[source] serde_json::Error),
}

impl Error {
    fn code(&self) -> Option<u16> {
        match self {
            Error::Request {
                source: kube::Error::Api(status),
                ..
            } => Some(status.code),
            _ => None,
        }
    }

    /// The API refused the object itself (400, 422): a bug on our side that no retry can fix.
    /// Everything else (timeouts, connection failures, 401, 403 until RBAC is fixed, 404 until
    /// the namespace exists, 409, 429, 5xx) may get better and is retried.
    pub fn is_fatal(&self) -> bool {
        matches!(self, Error::Encode(_)) || matches!(self.code(), Some(400 | 422))
    }
}

/// The least time between two writes of a member Lease: what the probes' verdicts may cost at
/// most (1 write a second per host, only while verdicts keep changing: with 7 hosts at most 420
/// writes a minute for the whole group, against ~930 with the 250 ms of before), and the longest
/// a verdict change waits behind the previous write. A change after a quiet second is written at
/// once, so a single eviction is not slowed; the probes' flap damping (`[probe] min_up_ms`)
/// keeps a flapping endpoint from changing verdicts in the first place.
pub const MIN_WRITE_GAP: Duration = Duration::from_secs(1);

/// The request timeout of the publisher: a heartbeat, but at least 1 s (a request slower than a
/// heartbeat is late anyway; the next one carries fresher content).
fn request_timeout(settings: &Settings) -> Duration {
    settings.heartbeat.max(Duration::from_secs(1))
}

/// Keeps `identity`'s member Lease in `group` equal to the latest `record` and renewed every
/// `settings.heartbeat`, until `shutdown` is cancelled.
///
/// Each write is a PUT carrying the resourceVersion last read or written (409: re-read and
/// retry), or a create when the object is missing. A change of `record` is written at once;
/// a dropped sender just freezes the content. Failures are retried with capped jittered backoff
/// (`backoff::delay` from 200 ms, capped at one heartbeat), with one warning per failure streak and a notice
/// when it ends. On shutdown the object is left in place: a restart must not look like the member
/// left (its liveness simply lapses if the copy does not come back).
///
/// `api` may be scoped to any namespace: requests use the group Lease's namespace.
///
/// # Errors
/// Only [`Error::is_fatal`] errors (the API refuses the object as invalid); everything else is
/// retried inside.
pub async fn publish(
    api: Api<Lease>,
    group: Group,
    mut record: watch::Receiver<MemberRecord>,
    settings: Settings,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let api: Api<Lease> = Api::namespaced(api.into_client(), group.lease_namespace());
    let mut publisher = Publisher {
        api,
        group,
        settings,
        current: None,
        failures: 0,
        warned: false,
    };
    let mut sender_alive = true;
    // Write at once: our first heartbeat is how the leader learns we exist.
    let mut next = Instant::now();
    // A changed record is written at once, but never before the backoff of a failure has passed.
    let mut not_before = next;
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return Ok(()),
            changed = record.changed(), if sender_alive => {
                if changed.is_err() {
                    // The content is frozen; keep renewing it.
                    sender_alive = false;
                    continue;
                }
                next = Instant::now().max(not_before);
            }
            () = sleep_until(next) => {
                let content = record.borrow_and_update().clone();
                let outcome = tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return Ok(()),
                    outcome = publisher.write(&content) => outcome,
                };
                (next, not_before) = match outcome {
                    // A changed record waits MIN_WRITE_GAP after a write: a burst of verdict
                    // changes becomes one write, and a flapping endpoint costs at most
                    // 1 / MIN_WRITE_GAP writes a second.
                    Ok(sent) => (
                        sent + publisher.settings.heartbeat,
                        Instant::now() + MIN_WRITE_GAP,
                    ),
                    Err(e) if e.is_fatal() => return Err(e),
                    Err(_) => {
                        let retry = Instant::now() + publisher.backoff();
                        (retry, retry)
                    }
                };
            }
        }
    }
}

/// The publisher's state between writes.
struct Publisher {
    api: Api<Lease>,
    group: Group,
    settings: Settings,
    /// The member Lease as last read or written (`None`: unknown, read it first).
    current: Option<Lease>,
    /// Consecutive failed attempts (0 after a success).
    failures: u32,
    /// Whether this failure streak was logged as a warning (once per streak).
    warned: bool,
}

impl Publisher {
    /// One write: read if needed, then create or update. Returns when the write was sent.
    async fn write(&mut self, record: &MemberRecord) -> Result<Instant, Error> {
        let name = member_name(&self.group, &record.identity);
        let lease_ref = format!("{}/{name}", self.group.lease_namespace());
        let after = request_timeout(&self.settings);
        let params = PostParams {
            dry_run: false,
            field_manager: Some(names::FIELD_MANAGER.to_owned()),
        };
        let result: Result<(Instant, Lease), Error> = async {
            if self.current.is_none() {
                let read = tokio::time::timeout(after, self.api.get_opt(&name))
                    .await
                    .map_err(|_| timeout("get", &lease_ref, after))?
                    .map_err(|source| request("get", &lease_ref, source))?;
                if let Some(existing) = &read {
                    let holder = existing.spec.as_ref().and_then(|s| s.holder_identity.as_deref());
                    if holder.is_some_and(|h| h != record.identity) {
                        warn!(lease = %lease_ref, identity = %record.identity, holder = holder.unwrap_or(""), "member Lease names another identity, overwriting it (two identities with the same member name?)");
                    }
                }
                self.current = Some(read.unwrap_or_default());
            }
            let mut lease = member_lease(
                &self.group,
                record,
                self.settings.expiry,
                Timestamp::now(),
            )?;
            let sent = Instant::now();
            let existing_rv = self
                .current
                .as_ref()
                .and_then(|l| l.metadata.resource_version.clone());
            let written = match existing_rv {
                None => tokio::time::timeout(after, self.api.create(&params, &lease))
                    .await
                    .map_err(|_| timeout("create", &lease_ref, after))?
                    .map_err(|source| request("create", &lease_ref, source))?,
                Some(rv) => {
                    // The resourceVersion we read: a concurrent writer (a twin, a person) makes
                    // this a 409 instead of a silent overwrite of what we did not see.
                    lease.metadata.resource_version = Some(rv);
                    tokio::time::timeout(after, self.api.replace(&name, &params, &lease))
                        .await
                        .map_err(|_| timeout("update", &lease_ref, after))?
                        .map_err(|source| request("update", &lease_ref, source))?
                }
            };
            Ok((sent, written))
        }
        .await;
        match result {
            Ok((sent, written)) => {
                if self.warned {
                    info!(lease = %lease_ref, identity = %record.identity, attempt = self.failures, "member Lease written again");
                }
                self.failures = 0;
                self.warned = false;
                self.current = Some(written);
                Ok(sent)
            }
            Err(e) => {
                self.failures = self.failures.saturating_add(1);
                // 409 (stale resourceVersion, or AlreadyExists on create) and 404 (deleted under
                // us) mean our copy is stale: read again before the next attempt.
                if matches!(e.code(), Some(404 | 409)) {
                    self.current = None;
                }
                // A lone 409 is a lost race, not trouble: only the first other failure of a
                // streak is a warning, the rest are debug.
                if !self.warned && !matches!(e.code(), Some(409)) {
                    self.warned = true;
                    warn!(lease = %lease_ref, identity = %record.identity, error = %crate::error::chain(&e), "member Lease write failed, retrying");
                } else {
                    debug!(lease = %lease_ref, attempt = self.failures, error = %crate::error::chain(&e), "member Lease write failed again");
                }
                Err(e)
            }
        }
    }

    /// The wait before the next attempt after `failures` failures in a row.
    fn backoff(&self) -> Duration {
        crate::backoff::delay(
            self.failures,
            std::time::Duration::from_millis(200),
            self.settings.heartbeat,
        )
    }
}

fn timeout(verb: &'static str, lease: &str, after: Duration) -> Error {
    Error::Timeout {
        verb,
        lease: lease.to_owned(),
        after_ms: after.as_millis(),
    }
}

fn request(verb: &'static str, lease: &str, source: kube::Error) -> Error {
    Error::Request {
        verb,
        lease: lease.to_owned(),
        source,
    }
}

/// Deletes the member Lease `name` (in `api`'s namespace) if it is still the object with `uid`
/// at `resource_version`, i.e. nobody renewed it since it was judged gone for good. Returns
/// whether it was deleted; `false` when it was already gone (404) or changed (409: the member
/// came back).
///
/// # Errors
/// [`Error`] for any other failure (retry on a later pass).
pub async fn forget(
    api: &Api<Lease>,
    name: &str,
    uid: &str,
    resource_version: &str,
) -> Result<bool, Error> {
    let lease_ref = format!("{}/{name}", api.namespace().unwrap_or_default());
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(uid.to_owned()),
            resource_version: Some(resource_version.to_owned()),
        }),
        ..DeleteParams::default()
    };
    let after = Duration::from_secs(10);
    match tokio::time::timeout(after, api.delete(name, &params)).await {
        Err(_) => Err(timeout("delete", &lease_ref, after)),
        Ok(Ok(_)) => {
            info!(lease = %lease_ref, "forgot member gone for good");
            Ok(true)
        }
        Ok(Err(kube::Error::Api(status))) if matches!(status.code, 404 | 409) => Ok(false),
        Ok(Err(source)) => Err(request("delete", &lease_ref, source)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn svc(s: &str) -> ServiceRef {
        s.parse().unwrap()
    }

    fn record() -> MemberRecord {
        MemberRecord::new(
            "node-1",
            [
                (svc("default/kubernetes"), svc("default/kubernetes-vip")),
                (svc("edge/api"), svc("edge/api-vip")),
            ],
        )
    }

    #[test]
    fn the_pairs_annotation_is_compact_sorted_json() {
        let lease = member_lease(
            &Group::default_group(),
            &record(),
            Duration::from_secs(30),
            Timestamp::UNIX_EPOCH,
        )
        .unwrap();
        let annotations = lease.metadata.annotations.unwrap();
        assert_eq!(
            annotations[names::MEMBER_PAIRS_ANNOTATION],
            r#"[{"source":"default/kubernetes","target":"default/kubernetes-vip"},{"source":"edge/api","target":"edge/api-vip"}]"#
        );
    }

    #[test]
    fn verdicts_travel_in_their_own_annotation_and_read_back() {
        let mut rec = record();
        let t = |s: &str| s.parse::<Target>().unwrap();
        rec.verdicts = BTreeMap::from([
            (t("https://198.51.100.2:6443/readyz"), Verdict::Down),
            (t("https://198.51.100.1:6443/readyz"), Verdict::Up),
            (t("tcp://[2001:db8::1]:5432"), Verdict::Up),
        ]);
        rec.verdicts_since = BTreeMap::from([(
            t("https://198.51.100.2:6443/readyz"),
            "2026-11-30T19:00:00Z".parse().unwrap(),
        )]);
        let lease = member_lease(
            &Group::default_group(),
            &rec,
            Duration::from_secs(30),
            Timestamp::UNIX_EPOCH,
        )
        .unwrap();
        let annotations = lease.metadata.annotations.as_ref().unwrap();
        assert_eq!(
            annotations[names::MEMBER_VERDICTS_ANNOTATION],
            r#"{"down":["https://198.51.100.2:6443/readyz"],"up":["https://198.51.100.1:6443/readyz","tcp://[2001:db8::1]:5432"],"since":{"https://198.51.100.2:6443/readyz":"2026-11-30T19:00:00Z"}}"#
        );
        assert_eq!(MemberRecord::from_lease(&lease).unwrap(), rec);
        // No verdicts: no annotation, so a copy that probes nothing writes what it always did.
        let plain = member_lease(
            &Group::default_group(),
            &record(),
            Duration::from_secs(30),
            Timestamp::UNIX_EPOCH,
        )
        .unwrap();
        assert!(
            !plain
                .metadata
                .annotations
                .unwrap()
                .contains_key(names::MEMBER_VERDICTS_ANNOTATION)
        );
    }

    #[test]
    fn verdicts_a_reader_cannot_parse_are_skipped_and_down_wins_a_double_listing() {
        let (got, _) = decode_verdicts(
            r#"{"down":["https://198.51.100.1:6443/readyz","quic://x"],"up":["https://198.51.100.1:6443/readyz","tcp://198.51.100.9:1"],"later":1}"#,
        );
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[&"https://198.51.100.1:6443/readyz"
                .parse::<Target>()
                .unwrap()],
            Verdict::Down
        );
        assert!(decode_verdicts("not json").0.is_empty());
    }

    #[test]
    fn abstentions_travel_in_their_own_annotation_cut_short_and_never_beside_a_vote() {
        let t = |s: &str| s.parse::<Target>().unwrap();
        let mut rec = record();
        rec.verdicts = BTreeMap::from([(t("https://198.51.100.1:6443/readyz"), Verdict::Up)]);
        rec.abstained = BTreeMap::from([(
            t("https://198.51.100.2:6443/readyz"),
            "TLS: the certificate does not name 198.51.100.2".to_owned(),
        )]);
        let lease = member_lease(
            &Group::default_group(),
            &rec,
            Duration::from_secs(30),
            Timestamp::UNIX_EPOCH,
        )
        .unwrap();
        let annotations = lease.metadata.annotations.as_ref().unwrap();
        assert_eq!(
            annotations[names::MEMBER_ABSTENTIONS_ANNOTATION],
            r#"{"https://198.51.100.2:6443/readyz":"TLS: the certificate does not name 198.51.100.2"}"#
        );
        assert!(!annotations[names::MEMBER_VERDICTS_ANNOTATION].contains("198.51.100.2"));
        assert_eq!(MemberRecord::from_lease(&lease).unwrap(), rec);
        // A long reason is cut; a target also voted on is read as the vote only.
        let long = "x".repeat(1000);
        let json = format!(
            r#"{{"https://198.51.100.1:6443/readyz":"up?","https://198.51.100.3:6443/readyz":"{long}","nonsense":"y"}}"#
        );
        let read = decode_abstentions(&json, &rec.verdicts);
        assert_eq!(read.len(), 1);
        assert_eq!(
            read[&t("https://198.51.100.3:6443/readyz")].len(),
            MAX_ABSTENTION_REASON
        );
    }

    #[test]
    fn the_member_lease_carries_the_group_and_member_labels_and_the_heartbeat_fields() {
        let group = Group::new("kube-system", "endpoint-copier");
        let lease = member_lease(
            &group,
            &record(),
            Duration::from_millis(1500),
            Timestamp::UNIX_EPOCH,
        )
        .unwrap();
        assert_eq!(
            lease.metadata.name.as_deref(),
            Some(member_name(&group, "node-1").as_str())
        );
        assert_eq!(lease.metadata.namespace.as_deref(), Some("kube-system"));
        let labels = lease.metadata.labels.clone().unwrap();
        assert_eq!(labels[names::GROUP_LABEL], "kube-system.endpoint-copier");
        assert_eq!(labels[names::MEMBER_LABEL], "true");
        let spec = lease.spec.clone().unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("node-1"));
        assert_eq!(spec.lease_duration_seconds, Some(2));
        assert_eq!(spec.renew_time, Some(MicroTime(Timestamp::UNIX_EPOCH)));
        assert_eq!(MemberRecord::from_lease(&lease).unwrap(), record());
    }

    #[test]
    fn member_names_are_readable_and_distinct_for_identities_that_sanitize_alike() {
        let group = Group::default_group();
        let a = member_name(&group, "node-1");
        // The example in docs/development/group.md.
        assert_eq!(a, "endpoint-copier.node-1-4a802314");
        assert_ne!(a, member_name(&group, "Node_1"));
        assert_ne!(
            a,
            member_name(&Group::new("kube-system", "other"), "node-1")
        );
    }

    #[test]
    fn a_lease_without_holder_or_with_a_broken_annotation_is_not_a_record() {
        let mut lease = member_lease(
            &Group::default_group(),
            &record(),
            Duration::from_secs(30),
            Timestamp::UNIX_EPOCH,
        )
        .unwrap();
        lease
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(names::MEMBER_PAIRS_ANNOTATION.into(), "{".into());
        assert!(matches!(
            MemberRecord::from_lease(&lease),
            Err(DecodeError::Pairs(_))
        ));
        lease.spec.as_mut().unwrap().holder_identity = Some(String::new());
        assert_eq!(
            MemberRecord::from_lease(&lease),
            Err(DecodeError::NoIdentity)
        );
    }

    #[test]
    fn unknown_fields_in_the_pairs_annotation_are_ignored() {
        let pairs = decode_pairs(
            r#"[{"source":"default/kubernetes","target":"default/kubernetes-vip","probe":"readyz"}]"#,
        )
        .unwrap();
        assert_eq!(pairs.len(), 1);
    }

    #[test]
    fn only_invalid_objects_are_fatal() {
        let api = |code| {
            request(
                "update",
                "kube-system/x",
                kube::Error::Api(Box::new(kube::core::Status {
                    code,
                    ..Default::default()
                })),
            )
        };
        assert!(api(422).is_fatal());
        assert!(api(400).is_fatal());
        for code in [401, 403, 404, 409, 429, 500, 503] {
            assert!(!api(code).is_fatal(), "{code}");
        }
        assert!(!timeout("get", "kube-system/x", Duration::from_secs(1)).is_fatal());
    }

    proptest! {
        #[test]
        fn every_member_name_is_a_valid_subdomain(
            lease in "[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?){0,3}",
            identity in ".{0,300}",
        ) {
            let name = member_name(&Group::new("kube-system", &lease), &identity);
            prop_assert!(names::is_dns1123_subdomain(&name), "{}", name);
        }

        #[test]
        fn distinct_identities_get_distinct_member_names(a in ".{0,80}", b in ".{0,80}") {
            prop_assume!(a != b);
            let group = Group::default_group();
            prop_assert_ne!(member_name(&group, &a), member_name(&group, &b));
        }
    }
}
