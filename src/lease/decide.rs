//! The pure core of leader election: given the Lease as last read, our identity, the instant we
//! saw its record change and the current instant, decide whether to create, acquire, renew, wait
//! or step down; and build the Lease records we write (claim, renewal, release).
//!
//! Nothing here does I/O or reads a clock: the monotonic instants (`tokio::time::Instant`, so
//! tests can fabricate them) and the wall-clock timestamp written into the record are passed in.
//! Sending the records, watching the Lease and fencing writers belong to `lease/elector.rs`.
//!
//! The semantics are client-go's `tools/leaderelection`, with one deliberate difference: a
//! leader that reads a record held by someone else steps down at once instead of waiting for its
//! renew deadline (client-go keeps believing it leads until the deadline; we have a fence to
//! honour, so we stop as soon as we know).

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::LeaseSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use tokio::time::Instant;

/// The three timings of the protocol (validated by `config`: duration > renew deadline >
/// 1.2 × retry period ≥ 1 s, and renew deadline + retry period < duration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// How long a claim is valid without renewal; written to `leaseDurationSeconds` and used
    /// when a record lacks it (default: 15 s).
    pub duration: Duration,
    /// How long the leader may go without a successful renewal before it stops writing
    /// (default: 10 s).
    pub renew_deadline: Duration,
    /// How often the leader renews, and the cap of the retry backoff (default: 2 s).
    pub retry_period: Duration,
}

/// What we believe about ourselves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// We do not hold the Lease (or do not know that we do).
    Follower,
    /// We hold the Lease.
    Leader {
        /// When we *sent* the last write that succeeded (claim or renewal): our claim is only
        /// as fresh as the moment the request left, never the moment the answer came back.
        renewed_at: Instant,
    },
}

/// What to do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// No Lease exists: create it, holding it (a lost race shows up as AlreadyExists).
    Create,
    /// Take the Lease over (released, expired, or already recorded as ours): PUT a claim
    /// carrying the resourceVersion we read.
    Acquire,
    /// We lead and a retry period has passed since the last renewal: PUT a renewal.
    Renew,
    /// Nothing to do until `until` (or until the Lease changes).
    Wait {
        /// When to decide again at the latest: the holder's expiry for a follower, the next
        /// renewal for the leader.
        until: Instant,
        /// The holder of the Lease as read (`None` when released or absent).
        holder: Option<String>,
    },
    /// We believed we led, but must stop writing now.
    StepDown {
        /// Who holds the Lease instead, when the record names someone else.
        holder: Option<String>,
    },
}

/// The holder named by a record: `None` for a released Lease (holder absent or empty, the two
/// forms client-go and the API use).
pub fn holder(spec: &LeaseSpec) -> Option<&str> {
    spec.holder_identity.as_deref().filter(|h| !h.is_empty())
}

/// How long the record says a claim lasts: its `leaseDurationSeconds`, or ours when the field is
/// absent or not positive (a malformed record must not let anyone take a held Lease at once).
pub fn record_duration(spec: &LeaseSpec, timing: &Timing) -> Duration {
    match spec.lease_duration_seconds {
        Some(secs) if secs > 0 => Duration::from_secs(u64::from(secs.unsigned_abs())),
        _ => timing.duration,
    }
}

/// When a record expires for us: the instant we saw it change plus its duration. The record's
/// `renewTime` is never read: it was written by another host's clock.
pub fn expiry(spec: &LeaseSpec, observed_at: Instant, timing: &Timing) -> Instant {
    observed_at + record_duration(spec, timing)
}

/// The instant until which a leader whose last successful write was sent at `renewed_at` may
/// write. Peers cannot take over before `renewed_at + duration` (they saw the write no earlier
/// than it was sent), so `duration − renew_deadline` is the safety margin for latency and clock
/// rate differences.
pub fn fence_until(renewed_at: Instant, timing: &Timing) -> Instant {
    renewed_at + timing.renew_deadline
}

/// When we saw the record change: `previous_at` when the record equals the previous one,
/// `now` otherwise. `previous` is `None` when nothing was observed yet; `Some(None)` when the
/// Lease was observed absent.
///
/// The whole spec is compared (as client-go compares the whole record), so a leader's renewal,
/// which rewrites `renewTime`, restarts the clock even though we never interpret that time.
pub fn observed_at(
    previous: Option<(Option<&LeaseSpec>, Instant)>,
    current: Option<&LeaseSpec>,
    now: Instant,
) -> Instant {
    match previous {
        Some((spec, at)) if spec == current => at,
        _ => now,
    }
}

/// Whether this process wrote the record as read (`spec`, with resourceVersion `rv`), given
/// the resourceVersion our last successful write returned (`written_rv`) and the last claim or
/// renewal we sent (`sent`, whatever became of it).
///
/// Either proves it: the version is the one our write returned, or the record is *exactly* the
/// one we sent — holder, `acquireTime` and `renewTime` to the microsecond, transitions. The
/// second case is a write whose reply was lost (a timeout, a connection dropped after the server
/// committed it): the record carries a version we never saw, yet it is ours. A twin (another
/// process with our identity) writes its own `renewTime` from its own clock, so it cannot
/// produce our exact record by chance.
pub fn wrote_it(
    spec: &LeaseSpec,
    rv: Option<&str>,
    written_rv: Option<&str>,
    sent: Option<&LeaseSpec>,
) -> bool {
    (rv.is_some() && rv == written_rv) || sent == Some(spec)
}

/// Annotation on the Lease that says who wrote the current claim: `token=<token of the runtime
/// lock file> pid=<pid, for humans> nonce=<the writing process's nonce> renew=<renewTime in µs
/// since the epoch>`. Written with every claim and renewal (`token=` only by a copy that holds
/// its runtime lock), removed on release (see [`claim_mark`], [`dead_predecessor`], [`twin`]).
pub const CLAIM_ANNOTATION: &str = "endpoint-copier/claim";

/// The `endpoint-copier/claim` value for the record `spec` we are about to write, by the
/// process with `nonce`, holding the runtime lock whose token is `token` (if any). It names
/// `spec`'s `renewTime`, so it vouches for that one record only: a writer that copies the
/// annotation along without rewriting it (an older endpoint-copier, `kubectl edit`) and changes
/// the record makes it void.
pub fn claim_mark(token: Option<&str>, pid: u32, nonce: Option<&str>, spec: &LeaseSpec) -> String {
    let renew = spec.renew_time.as_ref().map_or(0, |t| t.0.as_microsecond());
    let mut words = Vec::new();
    if let Some(token) = token {
        words.push(format!("token={token}"));
    }
    words.push(format!("pid={pid}"));
    if let Some(nonce) = nonce {
        words.push(format!("nonce={nonce}"));
    }
    words.push(format!("renew={renew}"));
    words.join(" ")
}

/// The `endpoint-copier/claim` annotation as read; every part optional.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Claim {
    /// The runtime lock's token.
    pub token: Option<String>,
    /// The writer's pid (for the log only: pids are reused and namespaced).
    pub pid: Option<u32>,
    /// The writing process's nonce.
    pub nonce: Option<String>,
    /// The `renewTime` it vouches for, in µs since the epoch.
    pub renew: Option<i64>,
}

impl Claim {
    /// Reads an annotation's words; unknown and malformed ones are ignored.
    pub fn parse(annotation: &str) -> Claim {
        let mut claim = Claim::default();
        for word in annotation.split_whitespace() {
            match word.split_once('=') {
                Some(("token", v)) if !v.is_empty() => claim.token = Some(v.to_owned()),
                Some(("pid", v)) => claim.pid = v.parse().ok(),
                Some(("nonce", v)) if !v.is_empty() => claim.nonce = Some(v.to_owned()),
                Some(("renew", v)) => claim.renew = v.parse().ok(),
                _ => {}
            }
        }
        claim
    }

    /// Whether the mark vouches for `spec`: it names exactly its `renewTime`.
    fn vouches_for(&self, spec: &LeaseSpec) -> bool {
        let record_renew = spec.renew_time.as_ref().map(|t| t.0.as_microsecond());
        self.renew.is_some() && self.renew == record_renew
    }
}

/// Whether the record as read (`spec`, with its `endpoint-copier/claim` annotation) carries the
/// mark of this process (nonce `our_nonce`), vouching for exactly this record: then this
/// process wrote it, whatever the resourceVersion says (a write whose reply was lost, and whose
/// exact record we no longer hold because we sent another since). Only this process writes its
/// nonce.
pub fn marked_by_us(spec: &LeaseSpec, annotation: Option<&str>, our_nonce: Option<&str>) -> bool {
    let (Some(annotation), Some(ours)) = (annotation, our_nonce) else {
        return false;
    };
    let claim = Claim::parse(annotation);
    claim.nonce.as_deref() == Some(ours) && claim.vouches_for(spec)
}

/// A claim written by a process that held the runtime lock we hold now, as told by the record's
/// `endpoint-copier/claim` annotation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Predecessor {
    /// The pid it recorded (for the log only: pids are reused and namespaced).
    pub pid: Option<u32>,
}

/// Whether the record as read (`spec`, with its `endpoint-copier/claim` annotation) is the claim
/// of a *dead* process that held our runtime lock (token `our_token`; `None`: we hold none):
/// it names our identity, this process did not write it (`wrote_it` false), and its annotation
/// carries our lock's token and exactly this record's `renewTime`; and no live twin sharing our
/// token was seen (`twin_seen` false: see [`twin`]).
///
/// Why that means dead: a claim carries a token only when its writer held the lock of the file
/// holding that token, and writers hold their lock for as long as they may write the Lease. We
/// hold that lock now, exclusively; the kernel gives it to us only once every earlier holder
/// closed it, which a copy does only by exiting (or dying). Another host, a container with its
/// own `/run`, or a copy with another `runtime_dir` has another lock file, so another token: its
/// claims are waited for like anyone's. The full argument is in `docs/development/lease.md`.
/// Its one assumption — nobody copies a lock file to another host — fails for a cloned machine
/// with a persistent runtime directory; a twin seen once turns the fast takeover off for the
/// rest of the process's life, so two such clones flip the Lease once, not at API speed.
pub fn dead_predecessor(
    spec: &LeaseSpec,
    annotation: Option<&str>,
    identity: &str,
    wrote_it: bool,
    our_token: Option<&str>,
    twin_seen: bool,
) -> Option<Predecessor> {
    if wrote_it || twin_seen || holder(spec) != Some(identity) {
        return None;
    }
    let our_token = our_token?;
    let claim = Claim::parse(annotation?);
    (claim.token.as_deref() == Some(our_token) && claim.vouches_for(spec))
        .then_some(Predecessor { pid: claim.pid })
}

/// Whether the record as read was written under our identity by another live process: it names
/// us, this process did not write it (`wrote_it`, which includes [`marked_by_us`]), and this
/// process wrote the Lease successfully before (`written_before`). A dead predecessor cannot
/// produce such a record: its requests still in flight carry a resourceVersion our write made
/// stale, so they fail with 409. Returns the claim the twin wrote (its nonce and pid, when it
/// marks them).
pub fn twin(
    spec: &LeaseSpec,
    annotation: Option<&str>,
    identity: &str,
    wrote_it: bool,
    written_before: bool,
) -> Option<Claim> {
    (written_before && !wrote_it && holder(spec) == Some(identity))
        .then(|| annotation.map(Claim::parse).unwrap_or_default())
}

/// The decision for the Lease as read (`None`: it does not exist), given when we saw its record
/// change, who we are, whether this process wrote the record as read (`wrote_it`: its
/// resourceVersion is the one our last successful write returned), and what we believe.
///
/// `wrote_it` is also true for the claim of a dead predecessor that held our runtime lock
/// ([`dead_predecessor`]): such a record is acquired at once, like one this process wrote.
///
/// `wrote_it` guards against a twin: two processes with the same identity (an operator running
/// `endpoint-copier run` by hand next to the unit, two hosts both named `localhost`). A record
/// that names us but that we did not write is treated like anyone else's — waited for until it
/// expires — and a leader that finds one steps down. Otherwise both twins would keep renewing
/// "their" Lease, each 409 resolved by re-reading a record that still names them, and both
/// fences would stay valid.
pub fn decide(
    lease: Option<&LeaseSpec>,
    observed_at: Instant,
    identity: &str,
    wrote_it: bool,
    role: Role,
    now: Instant,
    timing: &Timing,
) -> Decision {
    if let Role::Leader { renewed_at } = role {
        let current = lease.and_then(holder);
        if current != Some(identity) || !wrote_it {
            // Deleted, released or taken by someone else: the record proves we no longer hold
            // it, whatever our deadline says.
            return Decision::StepDown {
                holder: current.map(str::to_owned),
            };
        }
        if now >= fence_until(renewed_at, timing) {
            return Decision::StepDown { holder: None };
        }
        let next = renewed_at + timing.retry_period;
        if now >= next {
            return Decision::Renew;
        }
        return Decision::Wait {
            until: next,
            holder: Some(identity.to_owned()),
        };
    }
    let Some(spec) = lease else {
        return Decision::Create;
    };
    match holder(spec) {
        // Released: take it at once, no need to wait for any expiry.
        None => Decision::Acquire,
        // Recorded as ours by this very process (we stepped down on a deadline and nobody took
        // it since): client-go's IsLeader case. Safe because the write carries the
        // resourceVersion we read, so it fails if anyone changed the record since. A record that
        // names us but was written by another process (a twin, or our previous incarnation) falls
        // through to the expiry rule below.
        Some(h) if h == identity && wrote_it => Decision::Acquire,
        Some(h) => {
            let until = expiry(spec, observed_at, timing);
            if now >= until {
                Decision::Acquire
            } else {
                Decision::Wait {
                    until,
                    holder: Some(h.to_owned()),
                }
            }
        }
    }
}

/// `leaseDurationSeconds` for our duration: whole seconds, rounded up, at least 1.
fn duration_seconds(d: Duration) -> i32 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i32::try_from(secs.max(1)).unwrap_or(i32::MAX)
}

/// `now` truncated to the microsecond: a `MicroTime` is sent with six decimals, so this is the
/// value the server stores and echoes, and a record we built compares equal to the record we
/// read back (which is how [`wrote_it`] recognises a write whose reply was lost).
fn micro(now: Timestamp) -> Timestamp {
    Timestamp::from_microsecond(now.as_microsecond()).unwrap_or(now)
}

/// The record to write when we claim or renew the Lease whose current record is `current`
/// (`None`: it does not exist yet). A claim by a new holder sets `acquireTime` and increments
/// `leaseTransitions` (client-go counts a takeover from a released Lease too); a renewal by the
/// current holder keeps both. Timestamps are truncated to the microsecond, as the API keeps them.
pub fn claim(
    current: Option<&LeaseSpec>,
    identity: &str,
    now: Timestamp,
    timing: &Timing,
) -> LeaseSpec {
    let now = micro(now);
    let ours = current.and_then(holder) == Some(identity);
    let (acquire_time, transitions) = match current {
        None => (MicroTime(now), 0),
        Some(spec) if ours => (
            spec.acquire_time.clone().unwrap_or(MicroTime(now)),
            spec.lease_transitions.unwrap_or(0),
        ),
        Some(spec) => (
            MicroTime(now),
            spec.lease_transitions.unwrap_or(0).saturating_add(1),
        ),
    };
    LeaseSpec {
        holder_identity: Some(identity.to_owned()),
        lease_duration_seconds: Some(duration_seconds(timing.duration)),
        acquire_time: Some(acquire_time),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    }
}

/// The record that releases the Lease, as client-go's `release()` writes it: empty holder,
/// `leaseDurationSeconds` 1, `acquireTime` = `renewTime` = now, transitions kept.
pub fn release(current: &LeaseSpec, now: Timestamp) -> LeaseSpec {
    let now = micro(now);
    LeaseSpec {
        holder_identity: Some(String::new()),
        lease_duration_seconds: Some(1),
        acquire_time: Some(MicroTime(now)),
        renew_time: Some(MicroTime(now)),
        lease_transitions: current.lease_transitions,
        ..LeaseSpec::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Most tests are about records this process wrote (or others' records, where the flag
    /// does not matter); the twin tests call `super::decide` with `wrote_it = false`.
    fn decide(
        lease: Option<&LeaseSpec>,
        observed_at: Instant,
        identity: &str,
        role: Role,
        now: Instant,
        timing: &Timing,
    ) -> Decision {
        super::decide(lease, observed_at, identity, true, role, now, timing)
    }

    #[test]
    fn a_record_naming_us_that_another_process_wrote_is_waited_for_like_anyones() {
        let t0 = Instant::now();
        let spec = held_by("node-1", 1_700_000_000);
        assert!(matches!(
            super::decide(
                Some(&spec),
                t0,
                "node-1",
                false,
                Role::Follower,
                t0 + secs(1),
                &TIMING
            ),
            Decision::Wait { .. }
        ));
        assert_eq!(
            super::decide(
                Some(&spec),
                t0,
                "node-1",
                false,
                Role::Follower,
                t0 + secs(15),
                &TIMING
            ),
            Decision::Acquire
        );
    }

    #[test]
    fn a_renewal_whose_reply_was_lost_is_recognised_and_the_leader_keeps_leading() {
        let t0 = Instant::now();
        let held = claim(None, "node-1", ts(1_700_000_000), &TIMING);
        // The renewal we sent; the server committed it as version 12, the reply never came, so
        // the last version we know is 11's.
        let sent = claim(
            Some(&held),
            "node-1",
            Timestamp::from_nanosecond(1_700_000_002_123_456_789).unwrap(),
            &TIMING,
        );
        // As read back from the API (MicroTime keeps six decimals).
        let observed: LeaseSpec =
            serde_json::from_value(serde_json::to_value(&sent).unwrap()).unwrap();
        let ours = wrote_it(&observed, Some("12"), Some("11"), Some(&sent));
        assert!(ours);
        let role = Role::Leader { renewed_at: t0 };
        let decision = super::decide(
            Some(&observed),
            t0 + secs(1),
            "node-1",
            ours,
            role,
            t0 + secs(1),
            &TIMING,
        );
        assert!(
            matches!(decision, Decision::Wait { .. } | Decision::Renew),
            "{decision:?}"
        );
    }

    #[test]
    fn a_create_or_claim_whose_reply_was_lost_is_taken_without_waiting_for_expiry() {
        let t0 = Instant::now();
        for current in [None, Some(held_by("node-2", 1_700_000_000))] {
            let sent = claim(current.as_ref(), "node-1", ts(1_700_000_020), &TIMING);
            let ours = wrote_it(&sent, Some("7"), None, Some(&sent));
            assert!(ours);
            assert_eq!(
                super::decide(Some(&sent), t0, "node-1", ours, Role::Follower, t0, &TIMING),
                Decision::Acquire
            );
        }
    }

    #[test]
    fn a_record_naming_us_that_differs_from_what_we_sent_is_not_ours() {
        let sent = claim(None, "node-1", ts(1_700_000_000), &TIMING);
        // A twin's renewal: same identity, its own clock.
        let twin = claim(Some(&sent), "node-1", ts(1_700_000_001), &TIMING);
        assert!(!wrote_it(&twin, Some("9"), Some("8"), Some(&sent)));
        assert!(!wrote_it(&twin, Some("9"), None, None));
        assert!(!wrote_it(&twin, None, None, None), "no version is no proof");
        assert!(wrote_it(&twin, Some("9"), Some("9"), Some(&sent)));
    }

    #[test]
    fn records_we_build_carry_microseconds_so_they_survive_the_round_trip() {
        let now = Timestamp::from_nanosecond(1_700_000_000_999_999_999).unwrap();
        for spec in [
            claim(None, "node-1", now, &TIMING),
            release(&held_by("node-1", 1_700_000_000), now),
        ] {
            let back: LeaseSpec =
                serde_json::from_value(serde_json::to_value(&spec).unwrap()).unwrap();
            assert_eq!(back, spec);
        }
    }

    #[test]
    fn a_leader_that_finds_its_identity_written_by_another_process_steps_down() {
        let t0 = Instant::now();
        let spec = held_by("node-1", 1_700_000_000);
        let role = Role::Leader { renewed_at: t0 };
        assert!(matches!(
            super::decide(
                Some(&spec),
                t0,
                "node-1",
                false,
                role,
                t0 + secs(1),
                &TIMING
            ),
            Decision::StepDown { .. }
        ));
    }
    use proptest::prelude::*;

    const TIMING: Timing = Timing {
        duration: Duration::from_secs(15),
        renew_deadline: Duration::from_secs(10),
        retry_period: Duration::from_secs(2),
    };

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn ts(second: i64) -> Timestamp {
        Timestamp::from_second(second).unwrap()
    }

    fn held_by(holder: &str, renew_second: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.to_owned()),
            lease_duration_seconds: Some(15),
            acquire_time: Some(MicroTime(ts(renew_second - 60))),
            renew_time: Some(MicroTime(ts(renew_second))),
            lease_transitions: Some(3),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn an_absent_lease_is_created() {
        let t0 = Instant::now();
        assert_eq!(
            decide(None, t0, "node-1", Role::Follower, t0, &TIMING),
            Decision::Create
        );
    }

    #[test]
    fn a_released_lease_is_taken_at_once() {
        let t0 = Instant::now();
        let released = release(&held_by("node-2", 1_700_000_000), ts(1_700_000_001));
        // Observed this very instant: no expiry to wait for.
        assert_eq!(
            decide(Some(&released), t0, "node-1", Role::Follower, t0, &TIMING),
            Decision::Acquire
        );
        let no_holder = LeaseSpec::default();
        assert_eq!(
            decide(Some(&no_holder), t0, "node-1", Role::Follower, t0, &TIMING),
            Decision::Acquire
        );
    }

    #[test]
    fn a_lease_held_by_another_is_waited_for_until_it_expires() {
        let t0 = Instant::now();
        let spec = held_by("node-2", 1_700_000_000);
        assert_eq!(
            decide(
                Some(&spec),
                t0,
                "node-1",
                Role::Follower,
                t0 + secs(14),
                &TIMING
            ),
            Decision::Wait {
                until: t0 + secs(15),
                holder: Some("node-2".into())
            }
        );
        assert_eq!(
            decide(
                Some(&spec),
                t0,
                "node-1",
                Role::Follower,
                t0 + secs(15),
                &TIMING
            ),
            Decision::Acquire
        );
    }

    #[test]
    fn expiry_uses_the_records_duration_and_ours_only_when_it_is_missing_or_not_positive() {
        let t0 = Instant::now();
        let mut spec = held_by("node-2", 1_700_000_000);
        spec.lease_duration_seconds = Some(40);
        assert_eq!(expiry(&spec, t0, &TIMING), t0 + secs(40));
        spec.lease_duration_seconds = None;
        assert_eq!(expiry(&spec, t0, &TIMING), t0 + secs(15));
        spec.lease_duration_seconds = Some(0);
        assert_eq!(expiry(&spec, t0, &TIMING), t0 + secs(15));
        spec.lease_duration_seconds = Some(-5);
        assert_eq!(expiry(&spec, t0, &TIMING), t0 + secs(15));
    }

    #[test]
    fn a_record_naming_us_is_acquired_without_waiting() {
        let t0 = Instant::now();
        let spec = held_by("node-1", 1_700_000_000);
        assert_eq!(
            decide(Some(&spec), t0, "node-1", Role::Follower, t0, &TIMING),
            Decision::Acquire
        );
    }

    #[test]
    fn a_remote_renew_time_far_in_the_future_or_past_changes_nothing() {
        let t0 = Instant::now();
        let now_wall = 1_700_000_000;
        for skew in [-6 * 3600, -1, 0, 1, 6 * 3600] {
            let spec = held_by("node-2", now_wall + skew);
            for elapsed in [0, 5, 14] {
                assert_eq!(
                    decide(
                        Some(&spec),
                        t0,
                        "node-1",
                        Role::Follower,
                        t0 + secs(elapsed),
                        &TIMING
                    ),
                    Decision::Wait {
                        until: t0 + secs(15),
                        holder: Some("node-2".into())
                    },
                    "skew {skew}s, {elapsed}s after observation"
                );
            }
            assert_eq!(
                decide(
                    Some(&spec),
                    t0,
                    "node-1",
                    Role::Follower,
                    t0 + secs(15),
                    &TIMING
                ),
                Decision::Acquire,
                "skew {skew}s"
            );
        }
    }

    #[test]
    fn the_leader_renews_every_retry_period() {
        let t0 = Instant::now();
        let spec = held_by("node-1", 1_700_000_000);
        let role = Role::Leader { renewed_at: t0 };
        assert_eq!(
            decide(Some(&spec), t0, "node-1", role, t0 + secs(1), &TIMING),
            Decision::Wait {
                until: t0 + secs(2),
                holder: Some("node-1".into())
            }
        );
        assert_eq!(
            decide(Some(&spec), t0, "node-1", role, t0 + secs(2), &TIMING),
            Decision::Renew
        );
        // Renewals that keep failing are still attempted right up to the deadline.
        assert_eq!(
            decide(
                Some(&spec),
                t0,
                "node-1",
                role,
                t0 + Duration::from_millis(9_999),
                &TIMING
            ),
            Decision::Renew
        );
    }

    #[test]
    fn the_leader_steps_down_at_the_renew_deadline() {
        let t0 = Instant::now();
        let spec = held_by("node-1", 1_700_000_000);
        let role = Role::Leader { renewed_at: t0 };
        assert_eq!(
            decide(Some(&spec), t0, "node-1", role, t0 + secs(10), &TIMING),
            Decision::StepDown { holder: None }
        );
        assert_eq!(fence_until(t0, &TIMING), t0 + secs(10));
    }

    #[test]
    fn the_leader_steps_down_at_once_when_the_record_names_another_holder() {
        let t0 = Instant::now();
        let role = Role::Leader { renewed_at: t0 };
        let taken = held_by("node-2", 1_700_000_000);
        assert_eq!(
            decide(Some(&taken), t0, "node-1", role, t0, &TIMING),
            Decision::StepDown {
                holder: Some("node-2".into())
            }
        );
        let released = release(&taken, ts(1_700_000_000));
        assert_eq!(
            decide(Some(&released), t0, "node-1", role, t0, &TIMING),
            Decision::StepDown { holder: None }
        );
        assert_eq!(
            decide(None, t0, "node-1", role, t0, &TIMING),
            Decision::StepDown { holder: None }
        );
    }

    #[test]
    fn observation_time_restarts_only_when_the_record_changes() {
        let t0 = Instant::now();
        let later = t0 + secs(7);
        let a = held_by("node-2", 1_700_000_000);
        let renewed = held_by("node-2", 1_700_000_002);
        assert_eq!(observed_at(None, Some(&a), later), later);
        assert_eq!(observed_at(Some((Some(&a), t0)), Some(&a), later), t0);
        assert_eq!(
            observed_at(Some((Some(&a), t0)), Some(&renewed), later),
            later
        );
        assert_eq!(observed_at(Some((None, t0)), None, later), t0);
        assert_eq!(observed_at(Some((None, t0)), Some(&a), later), later);
    }

    #[test]
    fn creating_the_lease_counts_no_transition() {
        let spec = claim(None, "node-1", ts(1_700_000_000), &TIMING);
        assert_eq!(spec.holder_identity.as_deref(), Some("node-1"));
        assert_eq!(spec.lease_transitions, Some(0));
        assert_eq!(spec.lease_duration_seconds, Some(15));
        assert_eq!(spec.acquire_time, Some(MicroTime(ts(1_700_000_000))));
        assert_eq!(spec.renew_time, Some(MicroTime(ts(1_700_000_000))));
    }

    #[test]
    fn taking_over_counts_a_transition_and_renewing_does_not() {
        let theirs = held_by("node-2", 1_700_000_000);
        let taken = claim(Some(&theirs), "node-1", ts(1_700_000_100), &TIMING);
        assert_eq!(taken.lease_transitions, Some(4));
        assert_eq!(taken.acquire_time, Some(MicroTime(ts(1_700_000_100))));

        let renewed = claim(Some(&taken), "node-1", ts(1_700_000_102), &TIMING);
        assert_eq!(renewed.lease_transitions, Some(4));
        assert_eq!(renewed.acquire_time, Some(MicroTime(ts(1_700_000_100))));
        assert_eq!(renewed.renew_time, Some(MicroTime(ts(1_700_000_102))));
    }

    #[test]
    fn release_empties_the_holder_and_keeps_the_transition_count() {
        let ours = held_by("node-1", 1_700_000_000);
        let released = release(&ours, ts(1_700_000_005));
        assert_eq!(released.holder_identity.as_deref(), Some(""));
        assert_eq!(holder(&released), None);
        assert_eq!(released.lease_duration_seconds, Some(1));
        assert_eq!(released.lease_transitions, Some(3));
        assert_eq!(released.renew_time, Some(MicroTime(ts(1_700_000_005))));
        // The next holder counts the handover.
        let next = claim(Some(&released), "node-2", ts(1_700_000_006), &TIMING);
        assert_eq!(next.lease_transitions, Some(4));
    }

    #[test]
    fn sub_second_durations_round_up_to_whole_seconds() {
        let timing = Timing {
            duration: Duration::from_millis(2_500),
            ..TIMING
        };
        let spec = claim(None, "node-1", ts(1_700_000_000), &timing);
        assert_eq!(spec.lease_duration_seconds, Some(3));
        assert_eq!(duration_seconds(Duration::ZERO), 1);
    }

    fn any_spec() -> impl Strategy<Value = LeaseSpec> {
        (
            prop::option::of(prop::sample::select(vec![
                "node-2", "node-3", "", "node-10",
            ])),
            prop::option::of(-5i32..100),
            prop::option::of(-4_000_000_000i64..4_000_000_000),
            prop::option::of(0i32..1000),
        )
            .prop_map(|(h, d, renew, transitions)| LeaseSpec {
                holder_identity: h.map(str::to_owned),
                lease_duration_seconds: d,
                renew_time: renew.map(|s| MicroTime(ts(s))),
                acquire_time: renew.map(|s| MicroTime(ts(s - 1))),
                lease_transitions: transitions,
                ..LeaseSpec::default()
            })
    }

    proptest! {
        #[test]
        fn an_unexpired_lease_held_by_someone_else_is_never_taken(
            spec in any_spec(),
            elapsed_ms in 0u64..200_000,
        ) {
            let t0 = Instant::now();
            let now = t0 + Duration::from_millis(elapsed_ms);
            let decision = decide(Some(&spec), t0, "node-1", Role::Follower, now, &TIMING);
            let held_by_other = holder(&spec).is_some_and(|h| h != "node-1");
            if held_by_other && now < expiry(&spec, t0, &TIMING) {
                let is_wait = matches!(decision, Decision::Wait { .. });
                prop_assert!(is_wait, "took a held Lease: {:?}", decision);
            }
        }

        #[test]
        fn a_leader_never_keeps_writing_past_its_deadline_or_under_another_holder(
            spec in any_spec(),
            elapsed_ms in 0u64..30_000,
        ) {
            let t0 = Instant::now();
            let now = t0 + Duration::from_millis(elapsed_ms);
            let mut ours = spec.clone();
            ours.holder_identity = Some("node-1".into());
            for (record, is_ours) in [(&spec, false), (&ours, true)] {
                let decision = decide(Some(record), t0, "node-1", Role::Leader { renewed_at: t0 }, now, &TIMING);
                let may_write = matches!(decision, Decision::Renew | Decision::Wait { .. });
                let allowed = is_ours && now < fence_until(t0, &TIMING);
                prop_assert_eq!(may_write, allowed, "{:?}", decision);
            }
        }

        #[test]
        fn the_remote_renew_time_never_changes_a_decision(
            spec in any_spec(),
            other_renew in -4_000_000_000i64..4_000_000_000,
            elapsed_ms in 0u64..60_000,
            leader in any::<bool>(),
        ) {
            let t0 = Instant::now();
            let now = t0 + Duration::from_millis(elapsed_ms);
            let role = if leader { Role::Leader { renewed_at: t0 } } else { Role::Follower };
            let mut skewed = spec.clone();
            skewed.renew_time = Some(MicroTime(ts(other_renew)));
            prop_assert_eq!(
                decide(Some(&spec), t0, "node-1", role, now, &TIMING),
                decide(Some(&skewed), t0, "node-1", role, now, &TIMING)
            );
        }

        #[test]
        fn the_transition_count_rises_exactly_when_the_holder_changes(
            spec in any_spec(),
            who in prop::sample::select(vec!["node-1", "node-2"]),
        ) {
            let next = claim(Some(&spec), who, ts(1_700_000_000), &TIMING);
            let before = spec.lease_transitions.unwrap_or(0);
            let expected = if holder(&spec) == Some(who) { before } else { before + 1 };
            prop_assert_eq!(next.lease_transitions, Some(expected));
            prop_assert_eq!(next.holder_identity.as_deref(), Some(who));
        }
    }

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    fn marked(holder: &str, token: &str) -> (LeaseSpec, String) {
        let spec = claim(None, holder, ts(1_700_000_000), &TIMING);
        let mark = claim_mark(Some(token), 4242, Some("1111222233334444"), &spec);
        (spec, mark)
    }

    #[test]
    fn a_claim_naming_us_with_our_lock_token_is_a_dead_predecessor_and_taken_at_once() {
        let t0 = Instant::now();
        let (spec, mark) = marked("node-1", TOKEN);
        let found = dead_predecessor(&spec, Some(&mark), "node-1", false, Some(TOKEN), false);
        assert_eq!(found, Some(Predecessor { pid: Some(4242) }));
        // The elector passes it to decide as a record of ours: acquired without waiting.
        assert_eq!(
            super::decide(Some(&spec), t0, "node-1", true, Role::Follower, t0, &TIMING),
            Decision::Acquire
        );
    }

    #[test]
    fn a_claim_with_another_token_is_a_live_twin_for_all_we_know() {
        let (spec, mark) = marked("node-1", "ffffffffffffffffffffffffffffffff");
        assert_eq!(
            dead_predecessor(&spec, Some(&mark), "node-1", false, Some(TOKEN), false),
            None
        );
    }

    #[test]
    fn without_a_lock_of_our_own_no_claim_is_a_dead_predecessor() {
        let (spec, mark) = marked("node-1", TOKEN);
        assert_eq!(
            dead_predecessor(&spec, Some(&mark), "node-1", false, None, false),
            None
        );
    }

    #[test]
    fn a_claim_without_annotation_or_with_a_garbled_one_is_not_a_dead_predecessor() {
        let (spec, _) = marked("node-1", TOKEN);
        for annotation in [
            None,
            Some(""),
            Some("token="),
            Some(TOKEN),
            Some("pid=1 renew=2"),
        ] {
            assert_eq!(
                dead_predecessor(&spec, annotation, "node-1", false, Some(TOKEN), false),
                None,
                "{annotation:?}"
            );
        }
    }

    #[test]
    fn another_holder_with_our_token_is_not_our_predecessor() {
        let (spec, mark) = marked("node-2", TOKEN);
        assert_eq!(
            dead_predecessor(&spec, Some(&mark), "node-1", false, Some(TOKEN), false),
            None
        );
    }

    #[test]
    fn a_record_changed_without_rewriting_the_annotation_voids_it() {
        // An older copy (or kubectl edit) renewed the record and carried our annotation along.
        let (spec, mark) = marked("node-1", TOKEN);
        let renewed = claim(Some(&spec), "node-1", ts(1_700_000_001), &TIMING);
        assert_eq!(
            dead_predecessor(&renewed, Some(&mark), "node-1", false, Some(TOKEN), false),
            None
        );
    }

    #[test]
    fn a_record_this_process_wrote_is_not_a_predecessor() {
        let (spec, mark) = marked("node-1", TOKEN);
        assert_eq!(
            dead_predecessor(&spec, Some(&mark), "node-1", true, Some(TOKEN), false),
            None
        );
    }

    #[test]
    fn the_claim_mark_reads_back_with_or_without_a_token() {
        let (spec, mark) = marked("node-1", TOKEN);
        assert_eq!(
            mark,
            format!("token={TOKEN} pid=4242 nonce=1111222233334444 renew=1700000000000000")
        );
        let claim = Claim::parse(&mark);
        assert_eq!(claim.token.as_deref(), Some(TOKEN));
        assert_eq!(claim.nonce.as_deref(), Some("1111222233334444"));
        assert!(claim.vouches_for(&spec));
        let bare = Claim::parse(&claim_mark(None, 7, None, &spec));
        assert_eq!((bare.token, bare.nonce, bare.pid), (None, None, Some(7)));
    }

    #[test]
    fn a_record_with_our_nonce_vouching_for_it_is_ours() {
        let (spec, mark) = marked("node-1", TOKEN);
        assert!(marked_by_us(&spec, Some(&mark), Some("1111222233334444")));
        assert!(!marked_by_us(&spec, Some(&mark), Some("ffff222233334444")));
        assert!(!marked_by_us(&spec, Some(&mark), None));
        // Changed under the mark (kubectl edit, an older copy): no longer vouched for.
        let renewed = claim(Some(&spec), "node-1", ts(1_700_000_001), &TIMING);
        assert!(!marked_by_us(
            &renewed,
            Some(&mark),
            Some("1111222233334444")
        ));
    }

    #[test]
    fn a_record_naming_us_after_our_own_write_is_a_live_twin_and_ends_the_fast_takeover() {
        // A clone of this host: same identity, same runtime-lock token, another nonce.
        let spec = claim(None, "node-1", ts(1_700_000_000), &TIMING);
        let mark = claim_mark(Some(TOKEN), 99, Some("2222222222222222"), &spec);
        // Before we wrote anything, it may be a dead predecessor: taken at once...
        assert!(twin(&spec, Some(&mark), "node-1", false, false).is_none());
        assert!(
            dead_predecessor(&spec, Some(&mark), "node-1", false, Some(TOKEN), false).is_some()
        );
        // ...but written after a write of ours, it is a live process: a twin.
        let found = twin(&spec, Some(&mark), "node-1", false, true).unwrap();
        assert_eq!(found.nonce.as_deref(), Some("2222222222222222"));
        assert_eq!(found.pid, Some(99));
        // And once a twin was seen, a claim with our token is waited out like anyone's.
        assert!(dead_predecessor(&spec, Some(&mark), "node-1", false, Some(TOKEN), true).is_none());
        // Records we wrote, and others' records, are no twin.
        assert!(twin(&spec, Some(&mark), "node-1", true, true).is_none());
        assert!(twin(&spec, Some(&mark), "node-2", false, true).is_none());
    }

    proptest! {
        /// Whatever the annotation says, a claim carrying a token other than ours is never
        /// taken before it expires.
        #[test]
        fn a_foreign_token_never_shortens_the_wait(
            other in "[0-9a-f]{32}",
            pid in any::<u32>(),
            after_ms in 0_u64..14_999,
        ) {
            prop_assume!(other != TOKEN);
            let t0 = Instant::now();
            let spec = claim(None, "node-1", ts(1_700_000_000), &TIMING);
            let mark = claim_mark(Some(&other), pid, None, &spec);
            let ours = dead_predecessor(&spec, Some(&mark), "node-1", false, Some(TOKEN), false).is_some();
            prop_assert!(!ours);
            let decision = super::decide(
                Some(&spec), t0, "node-1", ours, Role::Follower,
                t0 + Duration::from_millis(after_ms), &TIMING,
            );
            let waits = matches!(decision, Decision::Wait { .. });
            prop_assert!(waits);
        }
    }
}
