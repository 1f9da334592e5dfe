//! The member object: one `coordination.k8s.io/v1` Lease per running copy, in the group's member
//! namespace (`[members] namespace`), saying "this copy is alive, its config names these pairs,
//! and this is what it sees". This file owns its content ([`MemberRecord`]), its name, the Lease
//! built from it and read back, and the precondition delete of a member gone for good
//! ([`forget`]).
//!
//! The annotations' wire form and the size budget are `wire.rs`'s; keeping the Lease written is
//! `publish.rs`'s; judging liveness from these objects is `live.rs`'s; starting the publisher and
//! deciding when to forget is `daemon`'s. The probe verdicts travel in an annotation of their own
//! ([`names::MEMBER_VERDICTS_ANNOTATION`]), so older readers keep reading the pairs.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::{DeleteParams, Preconditions};
use tracing::info;

use super::digest::PairDigest;
use super::wire::{self, Encoded, Omitted, RECORD_BUDGET};
use super::{Group, fnv1a};
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
    /// The writing process's nonce ([`names::MEMBER_NONCE_ANNOTATION`]; `None` in records of
    /// versions that write none): tells two live processes with one identity apart.
    pub nonce: Option<String>,
    /// The nonce of another live process this one saw writing under the same identity
    /// ([`names::MEMBER_TWIN_ANNOTATION`], `-` for one without a nonce): set by the publisher,
    /// never by the engine.
    pub twin: Option<String>,
    /// Verdicts the writer left out to fit the size budget (read back only; `wire::encode`
    /// decides them when writing).
    pub omitted: Omitted,
    /// The pairs the copy's own config names (`[[pair]]`), not the annotated ones (those are the
    /// same for every copy: they live on the Services).
    pub pairs: BTreeSet<PairRef>,
    /// The copy's probe verdicts (what it sees up and down), the ballot the leader counts.
    pub verdicts: BTreeMap<Target, Verdict>,
    /// When each verdict last changed, by the copy's wall clock (shown by `status`; never used
    /// to decide anything, as another host's clock is never compared with ours).
    pub verdicts_since: BTreeMap<Target, Timestamp>,
    /// The targets the copy probes but cannot judge (a certificate that does not verify, an
    /// anonymous probe refused), each with why (at most [`wire::MAX_ABSTENTION_REASON`]
    /// characters). Never in `verdicts`: an abstention counts neither way; it is here for
    /// `status` and `check` to show, and the budget drops it first (`wire::encode`).
    pub abstained: BTreeMap<Target, String>,
    /// The digest of each configured pair's full configuration ([`PairDigest`]), written beside
    /// the pair. A pair without one (a record of 0.1.0, or a digest this version cannot read)
    /// has an unknown configuration: never a difference.
    pub digests: BTreeMap<PairRef, PairDigest>,
    /// The writer's product version ([`names::MEMBER_VERSION_ANNOTATION`]; `None` in records of
    /// 0.1.0, which write none, or an unreadable value).
    pub version: Option<String>,
}

impl MemberRecord {
    /// The record of the copy `identity` configured with `pairs`.
    pub fn new(identity: &str, pairs: impl IntoIterator<Item = PairRef>) -> MemberRecord {
        MemberRecord {
            identity: identity.to_owned(),
            pairs: pairs.into_iter().collect(),
            ..MemberRecord::default()
        }
    }

    /// The record of the copy `identity` configured with `pairs` (their digests computed), as
    /// this version writes it: with its version.
    pub fn of_config<'a>(
        identity: &str,
        pairs: impl IntoIterator<Item = &'a crate::config::PairConfig>,
    ) -> MemberRecord {
        let digests: BTreeMap<PairRef, PairDigest> = pairs
            .into_iter()
            .map(|p| ((p.record_source(), p.target.clone()), PairDigest::of(p)))
            .collect();
        MemberRecord {
            version: Some(VERSION.to_owned()),
            ..MemberRecord::new(identity, digests.keys().cloned())
        }
        .with_digests(digests)
    }

    /// The same record with `digests` for its pairs (a digest of a pair it does not name is
    /// left out).
    #[must_use]
    pub fn with_digests(mut self, digests: BTreeMap<PairRef, PairDigest>) -> MemberRecord {
        self.digests = digests
            .into_iter()
            .filter(|(pair, _)| self.pairs.contains(pair))
            .collect();
        self
    }

    /// The version that wrote this record: its version annotation, or [`UNVERSIONED`] when it
    /// has none.
    pub fn version_or_unversioned(&self) -> &str {
        self.version.as_deref().unwrap_or(UNVERSIONED)
    }

    /// The same record, written by the process with `nonce`.
    #[must_use]
    pub fn with_nonce(mut self, nonce: &str) -> MemberRecord {
        self.nonce = Some(nonce.to_owned());
        self
    }

    /// Reads a record back from a member Lease: the identity from `spec.holderIdentity`, the
    /// pairs from their annotation (absent: none), the verdicts in either wire form.
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
        let get = |key: &str| annotations.and_then(|a| a.get(key));
        let (pairs, digests) = match get(names::MEMBER_PAIRS_ANNOTATION) {
            None => (BTreeSet::new(), BTreeMap::new()),
            Some(json) => wire::decode_pairs(json)?,
        };
        // Verdicts a reader cannot parse (a newer kind of target) are skipped, not fatal: the
        // ballot then abstains on them, which never evicts.
        let (verdicts, verdicts_since, omitted) = get(names::MEMBER_VERDICTS_ANNOTATION)
            .map(|json| wire::decode_verdicts(json))
            .unwrap_or_default();
        let abstained = get(names::MEMBER_ABSTENTIONS_ANNOTATION)
            .map(|json| wire::decode_abstentions(json, &verdicts))
            .unwrap_or_default();
        Ok(MemberRecord {
            identity,
            nonce: get(names::MEMBER_NONCE_ANNOTATION).cloned(),
            twin: get(names::MEMBER_TWIN_ANNOTATION).cloned(),
            omitted,
            pairs,
            verdicts,
            verdicts_since,
            abstained,
            digests,
            version: get(names::MEMBER_VERSION_ANNOTATION).and_then(|v| wire::decode_version(v)),
        })
    }
}

/// This build's product version, written into every member record.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The version a record without a version annotation comes from: 0.1.0 wrote none, and every
/// build before it called itself 0.1.0 too (the first release).
pub const UNVERSIONED: &str = "0.1.0";

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

/// The longest object name the API accepts (a DNS-1123 subdomain).
const MAX_NAME: usize = 253;
/// The longest DNS-1123 label (each dot-separated part of a subdomain).
const MAX_LABEL: usize = 63;

/// The name of `identity`'s member Lease in `group`: `<lease-name>.<identity>-<hash>`, where
/// `<identity>` is the identity lowercased with every character outside `[a-z0-9-]` turned into
/// `-` (cut to 54 characters) and `<hash>` is 8 hex digits of FNV-1a over the group Lease's
/// namespace and name and the raw identity (`<lease-namespace>/<lease-name>/<identity>`), so that
/// identities that sanitize alike (`Node_1`, `node-1`) and groups sharing the member namespace
/// still get distinct objects. When the members live in the election Lease's namespace (the
/// layout before `[members] namespace`) the hash leaves the namespace out, as it always did:
/// [`legacy_member_name`]. Always a valid DNS-1123 subdomain of at most 253 characters whose
/// parts are labels of at most 63.
pub fn member_name(group: &Group, identity: &str) -> String {
    if group.legacy_members_namespace().is_none() {
        return legacy_member_name(group, identity);
    }
    let key = format!(
        "{}/{}/{identity}",
        group.lease_namespace(),
        group.lease_name()
    );
    named(group, identity, fnv1a(key.as_bytes()))
}

/// The name `identity`'s member Lease had in the election Lease's namespace before
/// `[members] namespace`: the hash over `<lease-name>/<identity>` only.
pub fn legacy_member_name(group: &Group, identity: &str) -> String {
    let key = format!("{}/{identity}", group.lease_name());
    named(group, identity, fnv1a(key.as_bytes()))
}

/// `<lease-name>.<sanitized identity>-<hash>`, cut to fit (see [`member_name`]).
fn named(group: &Group, identity: &str, hash: u32) -> String {
    let hash = format!("{hash:08x}");
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

/// The member Lease for `record` in `group`, renewed at `now`, valid for `expiry`, its
/// annotations within [`RECORD_BUDGET`].
///
/// # Errors
/// [`Error::Encode`] if the record cannot be serialized (it always can).
pub fn member_lease(
    group: &Group,
    record: &MemberRecord,
    expiry: Duration,
    now: Timestamp,
) -> Result<Lease, Error> {
    Ok(member_lease_within(group, record, expiry, now, RECORD_BUDGET)?.0)
}

/// [`member_lease`] with its annotations within `budget` bytes, and what fitting them cost.
///
/// # Errors
/// [`Error::Encode`] if the record cannot be serialized (it always can).
pub fn member_lease_within(
    group: &Group,
    record: &MemberRecord,
    expiry: Duration,
    now: Timestamp,
    budget: usize,
) -> Result<(Lease, Encoded), Error> {
    let encoded = wire::encode(record, budget)?;
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(member_name(group, &record.identity)),
            namespace: Some(group.members_namespace().to_owned()),
            labels: Some(BTreeMap::from([
                group.label(),
                (
                    names::MEMBER_LABEL.to_owned(),
                    names::MEMBER_LABEL_VALUE.to_owned(),
                ),
            ])),
            annotations: Some(encoded.annotations.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(record.identity.clone()),
            lease_duration_seconds: Some(duration_seconds(expiry)),
            renew_time: Some(MicroTime(now)),
            ..LeaseSpec::default()
        }),
    };
    Ok((lease, encoded))
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
    /// The HTTP status the API answered with, if it answered.
    pub(super) fn code(&self) -> Option<u16> {
        match self {
            Error::Request {
                source: kube::Error::Api(status),
                ..
            } => Some(status.code),
            _ => None,
        }
    }

    /// The API refused the object itself (400, 422): too big, or refused by a policy. The
    /// publisher writes a smaller record next (`publish.rs`); everything else (timeouts,
    /// connection failures, 401, 403 until RBAC is fixed, 404 until the namespace exists, 409,
    /// 429, 5xx) may get better as it is and is retried.
    pub fn is_refused(&self) -> bool {
        matches!(self.code(), Some(400 | 422))
    }
}

/// The least time between two writes of a member Lease: what the probes' verdicts may cost at
/// most (1 write a second per host, only while verdicts keep changing: with 7 hosts at most 420
/// writes a minute for the whole group, against ~930 with the 250 ms of before), and the longest
/// a verdict change waits behind the previous write. A change after a quiet second is written at
/// once, so a single eviction is not slowed; the probes' flap damping (`[probe] min_up_ms`)
/// keeps a flapping endpoint from changing verdicts in the first place.
pub const MIN_WRITE_GAP: Duration = Duration::from_secs(1);

/// A timed-out request on the member Lease `lease`.
pub(super) fn timeout(verb: &'static str, lease: &str, after: Duration) -> Error {
    Error::Timeout {
        verb,
        lease: lease.to_owned(),
        after_ms: after.as_millis(),
    }
}

/// A failed request on the member Lease `lease`.
pub(super) fn request(verb: &'static str, lease: &str, source: kube::Error) -> Error {
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
        let legacy = Group::new("kube-system", "endpoint-copier");
        let a = member_name(&legacy, "node-1");
        // The example in docs/development/group.md (members beside the election Lease).
        assert_eq!(a, "endpoint-copier.node-1-4a802314");
        assert_eq!(a, legacy_member_name(&Group::default_group(), "node-1"));
        assert_ne!(a, member_name(&legacy, "Node_1"));
        assert_ne!(
            a,
            member_name(&Group::new("kube-system", "other"), "node-1")
        );
        // In a member namespace of their own, two groups with one Lease name stay apart.
        let b = member_name(&Group::default_group(), "node-1");
        assert_eq!(b, "endpoint-copier.node-1-f511efb6");
        assert_ne!(
            b,
            member_name(
                &Group::new("edge", "endpoint-copier").members_in(names::MEMBERS_NAMESPACE),
                "node-1"
            )
        );
    }

    #[test]
    fn the_nonce_and_the_twin_mark_read_back() {
        let rec = MemberRecord {
            twin: Some("-".into()),
            ..record().with_nonce("00112233445566ff")
        };
        let lease = member_lease(
            &Group::default_group(),
            &rec,
            Duration::from_secs(30),
            Timestamp::UNIX_EPOCH,
        )
        .unwrap();
        let annotations = lease.metadata.annotations.as_ref().unwrap();
        assert_eq!(
            annotations[names::MEMBER_NONCE_ANNOTATION],
            "00112233445566ff"
        );
        assert_eq!(annotations[names::MEMBER_TWIN_ANNOTATION], "-");
        assert_eq!(lease.metadata.namespace.as_deref(), Some("endpoint-copier"));
        assert_eq!(MemberRecord::from_lease(&lease).unwrap(), rec);
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
    fn the_version_and_each_pairs_digest_are_written_and_read_back() {
        let pairs = [
            crate::config::PairConfig::new(
                svc("default/kubernetes"),
                svc("default/kubernetes-vip"),
            ),
            crate::config::PairConfig::new(svc("edge/api"), svc("edge/api-vip")),
        ];
        let rec = MemberRecord::of_config("node-1", &pairs);
        assert_eq!(rec.version.as_deref(), Some(VERSION));
        assert_eq!(rec.digests.len(), 2);
        let lease = member_lease(
            &Group::default_group(),
            &rec,
            Duration::from_secs(30),
            Timestamp::UNIX_EPOCH,
        )
        .unwrap();
        let annotations = lease.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations[names::MEMBER_VERSION_ANNOTATION], VERSION);
        let digest = PairDigest::of(&pairs[0]);
        assert!(
            annotations[names::MEMBER_PAIRS_ANNOTATION].starts_with(&format!(
                r#"[{{"source":"default/kubernetes","target":"default/kubernetes-vip","digest":"{digest}"}}"#
            )),
            "{}",
            annotations[names::MEMBER_PAIRS_ANNOTATION]
        );
        let back = MemberRecord::from_lease(&lease).unwrap();
        assert_eq!(back, rec);
        assert_eq!(back.version_or_unversioned(), VERSION);
    }

    #[test]
    fn a_record_of_0_1_0_reads_with_no_version_and_no_digests() {
        // What 0.1.0 wrote: pairs without digests, no version annotation.
        let mut lease = member_lease(
            &Group::default_group(),
            &record(),
            Duration::from_secs(30),
            Timestamp::UNIX_EPOCH,
        )
        .unwrap();
        let annotations = lease.metadata.annotations.as_mut().unwrap();
        assert!(!annotations.contains_key(names::MEMBER_VERSION_ANNOTATION));
        let back = MemberRecord::from_lease(&lease).unwrap();
        assert_eq!(back.version, None);
        assert!(back.digests.is_empty());
        assert_eq!(back.pairs.len(), 2);
        assert_eq!(back.version_or_unversioned(), UNVERSIONED);
        // A digest or a version this version cannot read is unknown, not an error.
        let annotations = lease.metadata.annotations.as_mut().unwrap();
        annotations.insert(
            names::MEMBER_PAIRS_ANNOTATION.into(),
            r#"[{"source":"edge/api","target":"edge/api-vip","digest":"not a digest"}]"#.into(),
        );
        annotations.insert(
            names::MEMBER_VERSION_ANNOTATION.into(),
            "0.3.0\nEVIL".into(),
        );
        let back = MemberRecord::from_lease(&lease).unwrap();
        assert_eq!(back.pairs.len(), 1);
        assert!(back.digests.is_empty());
        assert_eq!(back.version, None);
    }

    #[test]
    fn unknown_fields_in_the_pairs_annotation_are_ignored() {
        let pairs = wire::decode_pairs(
            r#"[{"source":"default/kubernetes","target":"default/kubernetes-vip","probe":"readyz"}]"#,
        )
        .unwrap();
        assert_eq!(pairs.0.len(), 1);
    }

    #[test]
    fn only_a_refused_object_is_written_smaller() {
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
        assert!(api(422).is_refused());
        assert!(api(400).is_refused());
        for code in [401, 403, 404, 409, 429, 500, 503] {
            assert!(!api(code).is_refused(), "{code}");
        }
        assert!(!timeout("get", "kube-system/x", Duration::from_secs(1)).is_refused());
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
