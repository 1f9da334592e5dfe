//! The wall clock the daemon stamps what it writes with: a Lease's `acquireTime` and
//! `renewTime`, a member record's renewals and verdict times, an Event's time, and the one wall
//! clock judgement it makes — a drain written as an instant alone (`drain-expires`).
//!
//! A host's is the system clock. The simulator gives each simulated host its own, running on
//! tokio's (virtual) clock and off by a drift of its choosing, as real hosts' clocks are: no
//! decision may compare one host's wall clock with another's (docs/development/lease.md), and
//! the simulator checks that none does.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use jiff::{SignedDuration, Timestamp};
use tokio::time::Instant;

/// Where "now" comes from, on the wall clock.
#[derive(Clone, Debug, Default)]
pub enum Clock {
    /// The host's system clock.
    #[default]
    System,
    /// `epoch` at tokio's instant `start`, advancing with tokio's clock, off by a drift that
    /// its [`Drift`] handle may step at any time (as NTP or an operator steps a host's clock).
    Virtual {
        /// The true wall time at `start`.
        epoch: Timestamp,
        /// The tokio instant `epoch` corresponds to.
        start: Instant,
        /// How far this clock is ahead (positive) or behind (negative) of the true time.
        drift: Drift,
    },
}

/// A virtual clock's offset from the true time, shared with whoever steps it.
#[derive(Clone, Debug, Default)]
pub struct Drift(Arc<AtomicI64>);

impl Drift {
    /// An offset of `by` (milliseconds kept).
    pub fn new(by: SignedDuration) -> Drift {
        let drift = Drift::default();
        drift.set(by);
        drift
    }

    /// Steps the clock: from now on it is off by `by`.
    pub fn set(&self, by: SignedDuration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(if by.is_negative() {
            i64::MIN
        } else {
            i64::MAX
        });
        self.0.store(ms, Ordering::Relaxed);
    }

    /// The offset now.
    pub fn get(&self) -> SignedDuration {
        SignedDuration::from_millis(self.0.load(Ordering::Relaxed))
    }
}

impl Clock {
    /// A clock whose true time is `epoch` at tokio's instant `start`, off by `drift`.
    pub fn simulated(epoch: Timestamp, start: Instant, drift: Drift) -> Clock {
        Clock::Virtual {
            epoch,
            start,
            drift,
        }
    }

    /// Now, by this clock.
    pub fn now(&self) -> Timestamp {
        match self {
            Clock::System => Timestamp::now(),
            Clock::Virtual {
                epoch,
                start,
                drift,
            } => {
                let elapsed =
                    SignedDuration::try_from(start.elapsed()).unwrap_or(SignedDuration::MAX);
                epoch
                    .saturating_add(elapsed.saturating_add(drift.get()))
                    .unwrap_or(*epoch)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_virtual_clock_advances_with_tokio_and_keeps_its_drift() {
        let (epoch, start) = (
            Timestamp::from_second(1_800_000_000).unwrap(),
            Instant::now(),
        );
        let drift = Drift::new(SignedDuration::from_secs(3600));
        let ahead = Clock::simulated(epoch, start, drift.clone());
        let behind = Clock::simulated(epoch, start, Drift::new(SignedDuration::from_secs(-90)));
        assert_eq!(ahead.now(), epoch + SignedDuration::from_secs(3600));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(ahead.now(), epoch + SignedDuration::from_millis(3_601_500));
        assert_eq!(behind.now(), epoch - SignedDuration::from_millis(88_500));
        // A step is seen by every holder of the clock at once.
        drift.set(SignedDuration::from_secs(-1));
        assert_eq!(ahead.now(), epoch + SignedDuration::from_millis(500));
    }

    #[test]
    fn the_system_clock_is_the_hosts() {
        let before = Timestamp::now();
        let now = Clock::System.now();
        assert!(now >= before && now <= Timestamp::now());
    }
}
