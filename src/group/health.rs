//! What this process knows of its own standing in the group, shared between the tasks that
//! learn it and the engine that reports it: whether the member publisher's writes succeed (and
//! what fitting the record into its budget cost), and whether another live process was seen
//! writing under this identity — by the publisher on our member Lease, or by the elector on the
//! election Lease.
//!
//! One small state behind a mutex ([`SelfHealth`], cheap to clone): the writers set it when
//! something happens, the engine reads it once a second for STATUS, `/readyz`, the metric
//! `endpoint_copier_member_publisher_up` and its reports. Deciding what to say is `daemon`'s.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::wire::{Form, Omitted};

/// How the member publisher is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Publisher {
    /// No write attempted yet.
    Starting,
    /// The last write succeeded.
    Up {
        /// When the current success streak began.
        since: Instant,
        /// The last record written, as fitted into its budget.
        written: Written,
    },
    /// The last write failed (a lone conflict, which is a lost race, does not count).
    Failing {
        /// When the failure streak began.
        since: Instant,
        /// The last error, as a chain.
        error: String,
        /// Failed attempts in a row.
        attempts: u32,
    },
}

/// What the last successful write carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Written {
    /// The form of its verdicts.
    pub form: Form,
    /// Verdicts left out.
    pub omitted: Omitted,
    /// Bytes of annotations.
    pub bytes: usize,
    /// The budget it was fitted into (lower than `wire::RECORD_BUDGET` after the API refused a
    /// record).
    pub budget: usize,
}

/// Where another live process with our identity was seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SeenOn {
    /// It wrote our member Lease after we did.
    MemberLease,
    /// It wrote the election Lease under our identity after we did.
    ElectionLease,
}

/// One sighting of a twin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TwinSeen {
    /// Where.
    pub on: SeenOn,
    /// Its nonce (`None`: it writes none, an older version).
    pub nonce: Option<String>,
    /// Its pid as it recorded it in a claim (for the log; pids are per host).
    pub pid: Option<u32>,
    /// When (local monotonic clock).
    pub at: Instant,
}

#[derive(Debug)]
struct Inner {
    publisher: Publisher,
    twin: Option<TwinSeen>,
}

/// This process's view of its own standing; see the module documentation.
#[derive(Clone, Debug)]
pub struct SelfHealth {
    inner: Arc<Mutex<Inner>>,
    /// How long a twin sighting is remembered after the last one.
    remember: Duration,
}

impl SelfHealth {
    /// A fresh state that remembers a twin for `remember` after it was last seen (the daemon
    /// passes twice the member expiry: a twin keeps writing at every heartbeat).
    pub fn new(remember: Duration) -> SelfHealth {
        SelfHealth {
            inner: Arc::new(Mutex::new(Inner {
                publisher: Publisher::Starting,
                twin: None,
            })),
            remember,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Plain values: a panic elsewhere cannot leave them half-updated.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A write of the member Lease succeeded at `now`.
    pub fn written(&self, written: Written, now: Instant) {
        let mut inner = self.lock();
        let since = match &inner.publisher {
            Publisher::Up { since, .. } => *since,
            _ => now,
        };
        inner.publisher = Publisher::Up { since, written };
    }

    /// A write of the member Lease failed at `now` with `error`.
    pub fn failed(&self, error: String, now: Instant) {
        let mut inner = self.lock();
        let (since, attempts) = match &inner.publisher {
            Publisher::Failing {
                since, attempts, ..
            } => (*since, attempts.saturating_add(1)),
            _ => (now, 1),
        };
        inner.publisher = Publisher::Failing {
            since,
            error,
            attempts,
        };
    }

    /// How the publisher is doing.
    pub fn publisher(&self) -> Publisher {
        self.lock().publisher.clone()
    }

    /// Another live process with our identity was seen.
    pub fn twin_seen(&self, seen: TwinSeen) {
        self.lock().twin = Some(seen);
    }

    /// The last twin sighting, if within the memory at `now`.
    pub fn twin(&self, now: Instant) -> Option<TwinSeen> {
        self.lock()
            .twin
            .clone()
            .filter(|t| now.saturating_duration_since(t.at) <= self.remember)
    }

    /// The `endpoint-copier/twin` mark for our record at `now`: the twin's nonce, `-` for one
    /// without; `None` when no twin was seen lately.
    pub fn twin_mark(&self, now: Instant) -> Option<String> {
        self.twin(now).map(|t| super::twins::label(&t.nonce))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_streak_keeps_its_start_and_a_success_ends_it() {
        let h = SelfHealth::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(h.publisher(), Publisher::Starting);
        h.failed("422".into(), t0);
        h.failed("422 again".into(), t0 + Duration::from_secs(1));
        assert_eq!(
            h.publisher(),
            Publisher::Failing {
                since: t0,
                error: "422 again".into(),
                attempts: 2
            }
        );
        let w = Written {
            form: Form::Full,
            omitted: Omitted::default(),
            bytes: 10,
            budget: 100,
        };
        h.written(w, t0 + Duration::from_secs(2));
        h.written(w, t0 + Duration::from_secs(3));
        assert_eq!(
            h.publisher(),
            Publisher::Up {
                since: t0 + Duration::from_secs(2),
                written: w
            }
        );
    }

    #[test]
    fn a_twin_is_remembered_for_a_while_then_forgotten() {
        let h = SelfHealth::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(h.twin_mark(t0), None);
        h.twin_seen(TwinSeen {
            on: SeenOn::MemberLease,
            nonce: None,
            pid: None,
            at: t0,
        });
        assert_eq!(
            h.twin_mark(t0 + Duration::from_secs(60)).as_deref(),
            Some("-")
        );
        assert_eq!(h.twin_mark(t0 + Duration::from_secs(61)), None);
    }
}
