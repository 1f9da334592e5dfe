//! Kubernetes Events on target Services (`kubectl describe svc kubernetes-vip` shows them).
//!
//! `daemon` decides *that* something happened (it reports transitions, not iterations); this
//! module publishes it without ever blocking the daemon: a bounded queue feeds one task that
//! rate-limits per target like client-go's spam filter (a burst of 25, then one per 5 minutes)
//! and lets kube's `Recorder` fold repeats into an Event series (create, then merge-patch the
//! count). Publishing is best effort: a failure is logged at debug and dropped.

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
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
pub fn channel(client: kube::Client, identity: &str) -> (Sender, impl Future<Output = ()> + use<>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let reporter = Reporter {
        controller: names::NAME.to_owned(),
        instance: Some(identity.to_owned()),
    };
    (
        Sender(tx),
        publish_loop(Recorder::new(client, reporter), rx),
    )
}

async fn publish_loop(recorder: Recorder, mut rx: mpsc::Receiver<Report>) {
    let mut limits: HashMap<ServiceRef, Bucket> = HashMap::new();
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
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Service".into()),
            namespace: Some(report.target.namespace.clone()),
            name: Some(report.target.name.clone()),
            uid: Some(uid),
            ..Default::default()
        };
        let event = Event {
            type_: report.reason.event_type(),
            reason: report.reason.as_str().into(),
            note: Some(truncate(&report.note, NOTE_MAX)),
            action: report.reason.action().into(),
            secondary: None,
        };
        match tokio::time::timeout(PUBLISH_TIMEOUT, recorder.publish(&event, &reference)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(service = %report.target, error = %e, "failed to publish event")
            }
            Err(_) => tracing::debug!(service = %report.target, "publishing an event timed out"),
        }
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
