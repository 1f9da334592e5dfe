//! The one retry backoff of the daemon: capped exponential growth with "equal jitter".
//!
//! Owns the formula and nothing else. The Lease elector, the engine's per-pair retries and
//! the watches all wait by it, so a flapping apiserver sees the same pacing from every loop, and
//! the watches get it through kube's [`kube::runtime::utils::Backoff`] trait. *When* to retry,
//! and whether an error is worth retrying at all, stays with each caller (see
//! `client::classify`).
//!
//! The formula, for attempt `n ≥ 1` (0 counts as 1):
//!
//! ```text
//! ceiling(n) = min(base · 2^(n−1), max)
//! delay(n)   = uniformly random in [ceiling(n) / 2, ceiling(n)]
//! ```
//!
//! Half the ceiling is fixed and half is random ("equal jitter"): the wait never collapses to
//! almost nothing as full jitter can, and copies that failed together (every host's daemon after
//! an apiserver restart) spread their retries over the upper half instead of retrying in
//! lockstep.

use std::time::Duration;

/// The jittered wait before retry number `attempt` (1 = the first retry; 0 counts as 1):
/// uniformly in `[ceiling / 2, ceiling]` with `ceiling = min(base · 2^(attempt−1), max)`.
///
/// Doubling stops after 2^31 (where any sane `max` has long capped it), and durations saturate
/// instead of overflowing.
pub fn delay(attempt: u32, base: Duration, max: Duration) -> Duration {
    let exponent = attempt.saturating_sub(1).min(31);
    let ceiling = base.saturating_mul(1u32 << exponent).min(max);
    let half = ceiling / 2;
    let spread = u64::try_from((ceiling - half).as_nanos()).unwrap_or(u64::MAX);
    half + Duration::from_nanos(fastrand::u64(0..=spread))
}

/// An endless iterator of [`delay`]s for attempts 1, 2, 3, …; [`Backoff::reset`] starts over.
///
/// Implements [`kube::runtime::utils::Backoff`], so it paces `watcher(..).backoff(..)` too.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling of the first delay.
    base: Duration,
    /// The ceiling no delay exceeds.
    max: Duration,
    /// Delays handed out since the last reset.
    attempt: u32,
}

impl Backoff {
    /// A backoff whose first delay is at most `base` and whose delays never exceed `max`.
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max,
            attempt: 0,
        }
    }

    /// How many delays were handed out since the last reset (0 after a success).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Starts over at the first, shortest delay (call it after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

impl Iterator for Backoff {
    type Item = Duration;

    /// The next delay; never `None`.
    fn next(&mut self) -> Option<Duration> {
        self.attempt = self.attempt.saturating_add(1);
        Some(delay(self.attempt, self.base, self.max))
    }
}

impl kube::runtime::utils::Backoff for Backoff {
    fn reset(&mut self) {
        Backoff::reset(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(2);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn each_delay_lies_in_the_upper_half_of_its_doubling_ceiling() {
        for _ in 0..200 {
            for (attempt, ceiling) in [(0, 100), (1, 100), (2, 200), (3, 400), (5, 1_600)] {
                let d = delay(attempt, BASE, MAX);
                assert!(
                    d >= ms(ceiling) / 2 && d <= ms(ceiling),
                    "attempt {attempt}: {d:?}"
                );
            }
        }
    }

    #[test]
    fn delays_never_exceed_the_cap_even_for_huge_attempts() {
        for attempt in [6, 31, 32, 1_000, u32::MAX] {
            let d = delay(attempt, BASE, MAX);
            assert!(d >= MAX / 2 && d <= MAX, "attempt {attempt}: {d:?}");
        }
        let d = delay(u32::MAX, Duration::MAX, Duration::MAX);
        assert!(d >= Duration::MAX / 2);
    }

    #[test]
    fn a_zero_base_or_cap_means_no_wait() {
        assert_eq!(delay(3, Duration::ZERO, MAX), Duration::ZERO);
        assert_eq!(delay(3, BASE, Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn the_jitter_actually_spreads_the_delays() {
        let distinct: std::collections::BTreeSet<Duration> =
            (0..50).map(|_| delay(4, BASE, MAX)).collect();
        assert!(distinct.len() > 10, "{distinct:?}");
    }

    #[test]
    fn the_iterator_grows_and_reset_starts_over() {
        let mut b = Backoff::new(BASE, MAX);
        let first = b.next().unwrap();
        assert!(first <= BASE);
        for _ in 0..10 {
            b.next();
        }
        assert_eq!(b.attempt(), 11);
        assert!(b.next().unwrap() >= MAX / 2);
        kube::runtime::utils::Backoff::reset(&mut b);
        assert_eq!(b.attempt(), 0);
        assert!(b.next().unwrap() <= BASE);
    }
}
