//! Kubernetes Events on target Services (`kubectl describe svc kubernetes-vip` shows them).
//!
//! `daemon` decides *that* something happened (it reports transitions, not iterations); this
//! module publishes it without ever blocking the daemon: a bounded queue feeds one task that
//! rate-limits per target like client-go's spam filter (a burst of 25, then one per 5 minutes)
//! and folds a repeat of the same Event into a series (create, then merge-patch the count).
//! Publishing is best effort: a failure is logged at debug and dropped.
//!
//! A repeat is the same target, reason *and note*, as client-go's core/v1 correlator keys it.
//! Not kube's `Recorder`: it keys a series by reason alone (the events.k8s.io/v1 isomorphism),
//! so a second `SourceUnavailable` with another cause ("cannot be reached" after "not read
//! yet", 401 after 403) only bumped the first Event's count, and `kubectl describe` kept showing
//! the first cause. The daemon raises an Event only when (reason, note) changes, so each one it
//! raises must be visible with its own note.

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::names::{self, ServiceRef};

/// How many Events may wait to be published; more are dropped (they are advisory).
const QUEUE: usize = 256;
/// client-go's EventSourceObjectSpamFilter: burst per object...
const BURST: f64 = 25.0;
/// ...then one token every 5 minutes.
const REFILL_EVERY: Duration = Duration::from_secs(300);
/// events.k8s.io/v1 rejects a `note` longer than this (in bytes): a long error chain would lose
/// exactly the Events that need a person.
const NOTE_MAX: usize = 1024;
/// One publish may not take longer than this.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// A repeat within this long of the last one extends its series; a later one starts a new
/// Event (kube's `Recorder` and client-go's events library use 6 minutes).
const SERIES_TTL: Duration = Duration::from_secs(6 * 60);

/// The Event types, as the API spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EventType {
    /// Something worked as it should.
    Normal,
    /// Something an operator may want to look at.
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// What happened to a pair, as an Event reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventReason {
    /// The target's slices were written to match the source (Normal).
    Synced,
    /// The source has no EndpointSlices: the target keeps what it has (Warning).
    SourceMissing,
    /// The source's slices hold no endpoints: the target keeps what it has (Warning).
    SourceEmpty,
    /// The pair is refused (selector on the target, cycle, bad annotation...) (Warning).
    Refused,
    /// Writing the target's slices failed and is being retried (Warning).
    WriteFailed,
    /// Slices another manager writes also reach the target (Warning).
    ForeignSlices,
    /// The pair is configured on some copies of the group and not on others; slices of a pair
    /// that live copies still configure are kept (Warning).
    ConfiguredElsewhere,
    /// A majority of the live copies sees an endpoint down: it is marked not ready (Warning).
    Evicted,
    /// An evicted endpoint is seen up again: it is ready again (Normal).
    Returned,
    /// Every endpoint looks down: one is kept ready so the target is never empty (Warning).
    Spared,
    /// Endpoints on a drained Node are marked not ready, or ready again after the drain (Normal).
    Drained,
    /// A Node lacks an address of a family the target derives, or no Node holds a source
    /// endpoint's address: that family has no endpoint for it (Warning).
    NodeAddressMissing,
    /// One source of a pair cannot be read (remote cluster unreachable, credentials refused,
    /// Service missing) or has nothing to give: its endpoints stay in the target as they were,
    /// the other sources keep syncing (Warning).
    SourceUnavailable,
    /// Two live copies run under one identity: their probe verdicts are not counted (Warning).
    TwinIdentity,
}

impl EventReason {
    /// The CamelCase reason string.
    pub fn as_str(self) -> &'static str {
        match self {
            EventReason::Synced => "Synced",
            EventReason::SourceMissing => "SourceMissing",
            EventReason::SourceEmpty => "SourceEmpty",
            EventReason::Refused => "Refused",
            EventReason::WriteFailed => "WriteFailed",
            EventReason::ForeignSlices => "ForeignSlices",
            EventReason::ConfiguredElsewhere => "ConfiguredElsewhere",
            EventReason::Evicted => "EndpointEvicted",
            EventReason::Returned => "EndpointReturned",
            EventReason::Spared => "EndpointSpared",
            EventReason::Drained => "EndpointDrained",
            EventReason::NodeAddressMissing => "NodeAddressMissing",
            EventReason::SourceUnavailable => "SourceUnavailable",
            EventReason::TwinIdentity => "TwinIdentity",
        }
    }

    fn event_type(self) -> EventType {
        match self {
            EventReason::Synced | EventReason::Returned | EventReason::Drained => EventType::Normal,
            _ => EventType::Warning,
        }
    }

    fn action(self) -> &'static str {
        match self {
            EventReason::Synced | EventReason::WriteFailed => "Sync",
            EventReason::SourceMissing | EventReason::SourceEmpty => "Hold",
            EventReason::Refused => "Refuse",
            EventReason::ForeignSlices => "Report",
            EventReason::ConfiguredElsewhere => "Hold",
            EventReason::Evicted | EventReason::Returned | EventReason::Spared => "Probe",
            EventReason::Drained => "Drain",
            EventReason::NodeAddressMissing => "Report",
            EventReason::SourceUnavailable => "Hold",
            EventReason::TwinIdentity => "Report",
        }
    }
}

/// One Event to publish.
#[derive(Debug, Clone)]
pub struct Report {
    /// The target Service the Event is about.
    pub target: ServiceRef,
    /// Its uid, when known (Events about a Service that does not exist are not published).
    pub uid: Option<String>,
    /// What happened.
    pub reason: EventReason,
    /// One sentence for `kubectl describe`.
    pub note: String,
}

/// A sender whose reports stay in the returned queue, for unit tests of the engine.
#[cfg(test)]
pub(crate) fn captured() -> (Sender, mpsc::Receiver<Report>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (Sender(tx), rx)
}

/// The sending side, cheap to clone; never blocks.
#[derive(Clone)]
pub struct Sender(mpsc::Sender<Report>);

impl Sender {
    /// Queues `report`; drops it (debug log) when the queue is full.
    pub fn send(&self, report: Report) {
        if let Err(e) = self.0.try_send(report) {
            tracing::debug!(error = %e, "event dropped");
        }
    }
}

/// Creates the queue and the publishing loop (run it as a task; it ends when every [`Sender`] is
/// dropped).
pub fn channel(
    client: kube::Client,
    identity: &str,
    clock: crate::clock::Clock,
) -> (Sender, impl Future<Output = ()> + use<>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (
        Sender(tx),
        publish_loop(client, identity.to_owned(), clock, rx),
    )
}

async fn publish_loop(
    client: kube::Client,
    identity: String,
    clock: crate::clock::Clock,
    mut rx: mpsc::Receiver<Report>,
) {
    let mut limits: HashMap<ServiceRef, Bucket> = HashMap::new();
    let mut series = SeriesCache::default();
    while let Some(report) = rx.recv().await {
        let Some(uid) = report.uid.clone() else {
            continue;
        };
        let now = Instant::now();
        if !limits
            .entry(report.target.clone())
            .or_insert_with(|| Bucket::full(now))
            .take(now)
        {
            tracing::debug!(service = %report.target, reason = report.reason.as_str(), "event rate-limited");
            continue;
        }
        let note = truncate(&report.note, NOTE_MAX);
        let key = SeriesKey {
            target: report.target.clone(),
            uid,
            reason: report.reason,
            note,
        };
        let api: Api<Event> = Api::namespaced(client.clone(), &report.target.namespace);
        let stamp = MicroTime(clock.now());
        let request = async {
            match series.repeat(&key, now) {
                Some((name, count)) => {
                    let patch = serde_json::json!({
                        "series": EventSeries { count, last_observed_time: stamp },
                    });
                    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .map(|_| name)
                }
                None => {
                    let event = new_event(&key, &identity, stamp);
                    api.create(&PostParams::default(), &event)
                        .await
                        .map(|e| e.metadata.name.unwrap_or_default())
                }
            }
        };
        match tokio::time::timeout(PUBLISH_TIMEOUT, request).await {
            Ok(Ok(name)) => series.published(key, name, now),
            Ok(Err(e)) => {
                tracing::debug!(service = %report.target, error = %e, "failed to publish event");
                // A patch of an Event that is gone (expired, deleted) would fail again: the
                // next repeat starts a new Event.
                series.forget(&key);
            }
            Err(_) => tracing::debug!(service = %report.target, "publishing an event timed out"),
        }
    }
}

/// What makes two Events one series: the same target, reason and note.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SeriesKey {
    /// The target Service.
    target: ServiceRef,
    /// Its uid (a re-created Service starts new series).
    uid: String,
    /// What happened.
    reason: EventReason,
    /// The note as published (already truncated).
    note: String,
}

/// One published Event and its repeats.
#[derive(Debug, Clone)]
struct Series {
    /// The Event's name.
    name: String,
    /// How many times it happened (1 before the first repeat).
    count: i32,
    /// When it last happened (local monotonic clock).
    last: Instant,
}

/// The series published within [`SERIES_TTL`]; older ones are forgotten on the next publish,
/// so the cache holds at most what the rate limit let through in that time.
#[derive(Debug, Default)]
struct SeriesCache(HashMap<SeriesKey, Series>);

impl SeriesCache {
    /// For a repeat of `key` at `now`: the Event to patch and its new count; `None` when it
    /// starts a new Event (first time, or the last one is older than [`SERIES_TTL`]).
    fn repeat(&mut self, key: &SeriesKey, now: Instant) -> Option<(String, i32)> {
        self.0
            .retain(|_, s| now.saturating_duration_since(s.last) < SERIES_TTL);
        self.0
            .get(key)
            .map(|s| (s.name.clone(), s.count.saturating_add(1)))
    }

    /// Records that `key` was published at `now` as Event `name` (created or patched).
    fn published(&mut self, key: SeriesKey, name: String, now: Instant) {
        let count = self.0.get(&key).map_or(1, |s| s.count.saturating_add(1));
        self.0.insert(
            key,
            Series {
                name,
                count,
                last: now,
            },
        );
    }

    /// Forgets `key`: its next occurrence creates a new Event.
    fn forget(&mut self, key: &SeriesKey) {
        self.0.remove(key);
    }
}

/// A new events.k8s.io/v1 Event for `key`, reported by `identity`, observed at `stamp`.
fn new_event(key: &SeriesKey, identity: &str, stamp: MicroTime) -> Event {
    Event {
        metadata: ObjectMeta {
            namespace: Some(key.target.namespace.clone()),
            // As kube's Recorder and client-go name them: `<object>.<nanoseconds in hex>`.
            name: Some(format!("{}.{:x}", key.target.name, stamp.0.as_nanosecond())),
            ..ObjectMeta::default()
        },
        action: Some(key.reason.action().to_owned()),
        reason: Some(key.reason.as_str().to_owned()),
        note: Some(key.note.clone()),
        type_: Some(key.reason.event_type().as_str().to_owned()),
        event_time: Some(stamp),
        regarding: Some(ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Service".into()),
            namespace: Some(key.target.namespace.clone()),
            name: Some(key.target.name.clone()),
            uid: Some(key.uid.clone()),
            ..ObjectReference::default()
        }),
        reporting_controller: Some(names::NAME.to_owned()),
        reporting_instance: Some(identity.to_owned()),
        ..Event::default()
    }
}

/// `note` cut to at most `max` bytes at a character boundary, marked with "…" when cut.
fn truncate(note: &str, max: usize) -> String {
    if note.len() <= max {
        return note.to_owned();
    }
    let ellipsis = "…";
    let mut end = max - ellipsis.len();
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{ellipsis}", &note[..end])
}

/// A token bucket: `BURST` tokens, one more every `REFILL_EVERY`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(now: Instant) -> Bucket {
        Bucket {
            tokens: BURST,
            at: now,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let refill = now.duration_since(self.at).as_secs_f64() / REFILL_EVERY.as_secs_f64();
        self.tokens = (self.tokens + refill).min(BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_target_gets_a_burst_of_25_then_one_event_per_five_minutes() {
        let now = Instant::now();
        let mut b = Bucket::full(now);
        for _ in 0..25 {
            assert!(b.take(now));
        }
        assert!(!b.take(now));
        // Half a token after 150 s is not enough...
        assert!(!b.take(now + Duration::from_secs(150)));
        // ...one and a half after 450 s buys exactly one Event.
        assert!(b.take(now + Duration::from_secs(450)));
        assert!(!b.take(now + Duration::from_secs(450)));
    }

    #[test]
    fn long_notes_are_cut_to_what_the_api_accepts_at_a_character_boundary() {
        let note = "é".repeat(700);
        let cut = truncate(&note, NOTE_MAX);
        assert!(cut.len() <= NOTE_MAX, "{}", cut.len());
        assert!(cut.ends_with('…'));
        assert_eq!(truncate("short", NOTE_MAX), "short");
    }

    fn key(reason: EventReason, note: &str) -> SeriesKey {
        SeriesKey {
            target: "default/kubernetes-vip".parse().unwrap(),
            uid: "u1".into(),
            reason,
            note: note.into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_repeat_extends_its_series_and_another_note_starts_a_new_event() {
        let mut cache = SeriesCache::default();
        let t0 = Instant::now();
        let down = key(EventReason::SourceUnavailable, "source x: not read yet");
        assert_eq!(cache.repeat(&down, t0), None);
        cache.published(down.clone(), "vip.1".into(), t0);
        assert_eq!(cache.repeat(&down, t0), Some(("vip.1".into(), 2)));
        cache.published(down.clone(), "vip.1".into(), t0);
        assert_eq!(cache.repeat(&down, t0), Some(("vip.1".into(), 3)));
        // The same reason with another cause is an Event of its own, so `kubectl describe`
        // shows the cause now (kube's Recorder folded it into the first one's count).
        let cut = key(
            EventReason::SourceUnavailable,
            "source x: cannot be reached",
        );
        assert_eq!(cache.repeat(&cut, t0), None);
        // Six minutes after the last one, a repeat starts over.
        let later = t0 + SERIES_TTL;
        assert_eq!(cache.repeat(&down, later), None);
    }

    #[test]
    fn a_new_event_names_its_target_reason_note_and_reporter() {
        let k = key(
            EventReason::SourceUnavailable,
            "source x: cannot be reached",
        );
        let stamp = MicroTime(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        let e = new_event(&k, "cp-1", stamp);
        assert_eq!(e.reason.as_deref(), Some("SourceUnavailable"));
        assert_eq!(e.note.as_deref(), Some("source x: cannot be reached"));
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert_eq!(e.action.as_deref(), Some("Hold"));
        assert_eq!(e.reporting_controller.as_deref(), Some(names::NAME));
        assert_eq!(e.reporting_instance.as_deref(), Some("cp-1"));
        let regarding = e.regarding.unwrap();
        assert_eq!(regarding.name.as_deref(), Some("kubernetes-vip"));
        assert_eq!(regarding.uid.as_deref(), Some("u1"));
        assert_eq!(e.metadata.name.as_deref(), Some("kubernetes-vip.0"));
    }

    #[test]
    fn only_synced_is_normal() {
        assert!(matches!(
            EventReason::Synced.event_type(),
            EventType::Normal
        ));
        for r in [
            EventReason::SourceMissing,
            EventReason::SourceEmpty,
            EventReason::Refused,
            EventReason::WriteFailed,
        ] {
            assert!(matches!(r.event_type(), EventType::Warning), "{r:?}");
        }
    }
}
