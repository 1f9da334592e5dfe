//! The fence: the monotonic instant until which this process may write EndpointSlices, shared
//! between the elector (which moves it forward after each successful Lease write and closes it
//! when it steps down) and every writer (which asks it before each request and bounds the
//! request by it).
//!
//! What it guarantees, and what it does not (a request already inside the server, a paused
//! process), is written down in `docs/development/lease.md`, section "What the fence guarantees".
//! Deciding when it moves is `lease/elector.rs`'s job (through `decide::fence_until`); bounding
//! each request by [`Fence::check`]'s answer is `apply`'s.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Returned by [`Fence::check`] when we may not write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not the holder of Lease {lease}")]
pub struct NotLeader {
    /// `namespace/name` of the Lease we do not hold.
    pub lease: String,
}

/// The shared state behind a [`Fence`]; the elector keeps the writing end.
#[derive(Debug)]
pub(super) struct FenceState {
    /// `namespace/name` of the Lease, for [`NotLeader`].
    lease: String,
    /// Origin of `until_nanos` (an `Instant` is not atomic; an offset from it is).
    base: Instant,
    /// Writes are allowed while `now - base < until_nanos`, in nanoseconds; 0: not allowed
    /// (the initial state).
    until_nanos: AtomicU64,
}

impl FenceState {
    /// A closed fence for the Lease `lease` (`namespace/name`).
    pub(super) fn new(lease: &str) -> Arc<FenceState> {
        Arc::new(FenceState {
            lease: lease.to_owned(),
            base: Instant::now(),
            until_nanos: AtomicU64::new(0),
        })
    }

    /// Allows writes until `until` (the caller only ever moves it forward while it leads).
    pub(super) fn set_until(&self, until: Instant) {
        let nanos = u64::try_from(until.saturating_duration_since(self.base).as_nanos())
            .unwrap_or(u64::MAX);
        self.until_nanos.store(nanos, Ordering::SeqCst);
    }

    /// Refuses writes from now on, until the next `set_until`.
    pub(super) fn invalidate(&self) {
        self.until_nanos.store(0, Ordering::SeqCst);
    }

    /// How long writes stay allowed after `now`: zero once closed.
    fn remaining_at(&self, now: Instant) -> Duration {
        let until = self.until_nanos.load(Ordering::SeqCst);
        let elapsed =
            u64::try_from(now.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(until.saturating_sub(elapsed))
    }
}

/// Fencing token: cloned into every EndpointSlice writer; [`Fence::check`] is called right before
/// each request and its answer bounds that request.
///
/// It closes by itself at (send time of the last successful Lease write + renew deadline),
/// comparing the monotonic clock, so a stuck elector task cannot keep a stale leader writing;
/// the elector also closes it at once when it steps down or shuts down.
#[derive(Clone, Debug)]
pub struct Fence {
    state: Arc<FenceState>,
}

impl Fence {
    /// The reading end of `state`.
    pub(super) fn new(state: Arc<FenceState>) -> Fence {
        Fence { state }
    }

    /// How long writes stay allowed from now, while we hold the Lease and our renew deadline has
    /// not passed. A writer sends its request only on `Ok`, and gives it at most that long
    /// (`min(its own timeout, this)`), so no request of ours is *sent* after the fence closed.
    ///
    /// # Errors
    /// [`NotLeader`] when the fence is closed (never opened, deadline passed, stepped down).
    pub fn check(&self) -> Result<Duration, NotLeader> {
        self.check_at(Instant::now())
    }

    fn check_at(&self, now: Instant) -> Result<Duration, NotLeader> {
        let remaining = self.state.remaining_at(now);
        if remaining.is_zero() {
            Err(NotLeader {
                lease: self.state.lease.clone(),
            })
        } else {
            Ok(remaining)
        }
    }

    /// How long writes stay allowed from now; zero once the fence is closed.
    pub fn remaining(&self) -> Duration {
        self.state.remaining_at(Instant::now())
    }

    /// A fence open for `remaining` from now, for unit tests of writers.
    #[cfg(test)]
    pub(crate) fn open_for(lease: &str, remaining: Duration) -> Fence {
        let state = FenceState::new(lease);
        state.set_until(Instant::now() + remaining);
        Fence::new(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: &str = "kube-system/endpoint-copier";

    #[test]
    fn a_new_fence_refuses_writes_and_names_the_lease() {
        let fence = Fence::new(FenceState::new(LEASE));
        assert_eq!(
            fence.check(),
            Err(NotLeader {
                lease: LEASE.into()
            })
        );
        assert_eq!(fence.remaining(), Duration::ZERO);
        assert_eq!(
            fence.check().unwrap_err().to_string(),
            "not the holder of Lease kube-system/endpoint-copier"
        );
    }

    #[test]
    fn the_fence_closes_by_itself_at_its_deadline_and_says_how_long_is_left() {
        let state = FenceState::new(LEASE);
        let fence = Fence::new(state.clone());
        let t0 = state.base + Duration::from_secs(1);
        state.set_until(t0 + Duration::from_secs(10));
        assert_eq!(fence.check_at(t0), Ok(Duration::from_secs(10)));
        assert_eq!(
            fence.check_at(t0 + Duration::from_millis(9_999)),
            Ok(Duration::from_millis(1))
        );
        assert!(fence.check_at(t0 + Duration::from_secs(10)).is_err());
        // A clone shares the deadline: every writer sees the same fence.
        let clone = fence.clone();
        state.invalidate();
        assert!(clone.check_at(t0).is_err());
    }

    #[test]
    fn an_open_fence_for_tests_is_open_for_about_what_was_asked() {
        let fence = Fence::open_for(LEASE, Duration::from_secs(5));
        let left = fence.check().unwrap();
        assert!(left <= Duration::from_secs(5) && left > Duration::from_secs(4));
    }
}
