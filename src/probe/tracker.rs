//! Pure: the thresholds of one target, turning single probe outcomes into a [`Verdict`].
//!
//! kubelet's prober semantics: no verdict until `success_threshold` probes in a row passed or
//! `failure_threshold` probes in a row failed; after that the verdict changes only when the
//! opposite threshold is met in a row, so one failed probe never evicts (the failure threshold is
//! at least 2 by config) and a flapping target changes verdict at most once per threshold's worth
//! of probes. Time is passed in; probing and reporting are `run`'s.

use tokio::time::Instant;

use super::{Timing, Verdict};

/// A verdict that was just decided: the first one, or one that differs from the previous one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    /// The verdict now.
    pub verdict: Verdict,
    /// When the streak that produced it began: the finish time of its first probe.
    pub since: Instant,
}

/// A run of probes with the same outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Streak {
    /// Whether these probes passed.
    ok: bool,
    /// How many in a row (at least 1).
    count: u32,
    /// When the first of them finished.
    began: Instant,
}

/// The threshold state of one target.
#[derive(Clone, Debug)]
pub struct Tracker {
    /// Passes in a row that make the verdict up (at least 1).
    success_threshold: u32,
    /// Failures in a row that make the verdict down (at least 1).
    failure_threshold: u32,
    /// The verdict decided so far, `None` before the first threshold is met.
    verdict: Option<Verdict>,
    /// The current run of equal outcomes, `None` before the first probe.
    streak: Option<Streak>,
}

impl Tracker {
    /// A tracker with no verdict yet, using `timing`'s thresholds (a threshold of 0 counts as 1).
    pub fn new(timing: &Timing) -> Tracker {
        Tracker {
            success_threshold: timing.success_threshold.max(1),
            failure_threshold: timing.failure_threshold.max(1),
            verdict: None,
            streak: None,
        }
    }

    /// The verdict so far: `None` until a threshold was met.
    pub fn verdict(&self) -> Option<Verdict> {
        self.verdict
    }

    /// Records one probe that finished at `at` and passed (`ok`) or failed. Returns the new
    /// verdict when this probe made it known or changed it.
    pub fn observe(&mut self, ok: bool, at: Instant) -> Option<Change> {
        let streak = match self.streak {
            Some(s) if s.ok == ok => Streak {
                count: s.count.saturating_add(1),
                ..s
            },
            _ => Streak {
                ok,
                count: 1,
                began: at,
            },
        };
        self.streak = Some(streak);
        let (candidate, threshold) = if ok {
            (Verdict::Up, self.success_threshold)
        } else {
            (Verdict::Down, self.failure_threshold)
        };
        // `>=` rather than `==`: a streak continuing past the threshold after a change is a no-op
        // below, and a streak that met it is the only way to get here with a new verdict.
        if streak.count >= threshold && self.verdict != Some(candidate) {
            self.verdict = Some(candidate);
            return Some(Change {
                verdict: candidate,
                since: streak.began,
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    fn timing(success: u32, failure: u32) -> Timing {
        Timing {
            success_threshold: success,
            failure_threshold: failure,
            ..Timing::default()
        }
    }

    /// Feeds `outcomes`, one probe every 500 ms from `t0`, and returns each change with the index
    /// of the probe that caused it.
    fn feed(t: &Timing, t0: Instant, outcomes: &[bool]) -> Vec<(usize, Change)> {
        let mut tracker = Tracker::new(t);
        outcomes
            .iter()
            .enumerate()
            .filter_map(|(i, ok)| {
                tracker
                    .observe(*ok, t0 + Duration::from_millis(500) * i as u32)
                    .map(|c| (i, c))
            })
            .collect()
    }

    #[test]
    fn no_verdict_before_a_threshold_is_met() {
        let t0 = Instant::now();
        let mut tracker = Tracker::new(&timing(2, 3));
        assert_eq!(tracker.observe(true, t0), None);
        assert_eq!(tracker.observe(false, t0), None);
        assert_eq!(tracker.observe(false, t0), None);
        assert_eq!(tracker.verdict(), None);
    }

    #[test]
    fn the_first_success_gives_up_with_the_default_thresholds() {
        let t0 = Instant::now();
        let changes = feed(&Timing::default(), t0, &[true, true, true]);
        assert_eq!(
            changes,
            vec![(
                0,
                Change {
                    verdict: Verdict::Up,
                    since: t0
                }
            )]
        );
    }

    #[test]
    fn a_single_failure_never_evicts_and_two_in_a_row_do() {
        let t0 = Instant::now();
        let changes = feed(&Timing::default(), t0, &[true, false, true, false, false]);
        let down = Change {
            verdict: Verdict::Down,
            since: t0 + Duration::from_millis(1500),
        };
        assert_eq!(changes.len(), 2);
        assert_eq!(changes[1], (4, down));
    }

    #[test]
    fn since_is_when_the_deciding_streak_began() {
        let t0 = Instant::now();
        let changes = feed(&timing(2, 2), t0, &[false, false, true, false, true, true]);
        assert_eq!(changes[0].1.since, t0);
        assert_eq!(changes[1].0, 5);
        assert_eq!(changes[1].1.since, t0 + Duration::from_millis(2000));
    }

    #[test]
    fn zero_thresholds_count_as_one() {
        let changes = feed(&timing(0, 0), Instant::now(), &[false, true]);
        assert_eq!(changes.len(), 2);
    }

    proptest! {
        /// A verdict changes only after its own threshold of equal outcomes in a row, ending
        /// with the probe that changed it; and it is always reported with the start of that run.
        #[test]
        fn a_verdict_never_changes_faster_than_the_thresholds_allow(
            success in 1u32..4,
            failure in 2u32..5,
            outcomes in proptest::collection::vec(any::<bool>(), 0..60),
        ) {
            let t = timing(success, failure);
            let t0 = Instant::now();
            let changes = feed(&t, t0, &outcomes);
            let mut previous = None;
            for (i, change) in &changes {
                prop_assert_ne!(Some(change.verdict), previous);
                let ok = change.verdict == Verdict::Up;
                let need = if ok { success } else { failure } as usize;
                prop_assert!(*i + 1 >= need);
                prop_assert!(outcomes[*i + 1 - need..=*i].iter().all(|o| *o == ok));
                let start = outcomes[..=*i].iter().rposition(|o| *o != ok).map_or(0, |p| p + 1);
                prop_assert_eq!(change.since, t0 + Duration::from_millis(500) * start as u32);
                previous = Some(change.verdict);
            }
        }

        /// With a failure threshold of at least 2, failures that never come two in a row never
        /// give a down verdict.
        #[test]
        fn isolated_failures_never_give_down(
            failure in 2u32..5,
            outcomes in proptest::collection::vec(any::<bool>(), 0..60),
        ) {
            let isolated: Vec<bool> = outcomes
                .iter()
                .enumerate()
                .map(|(i, o)| *o || i % 2 == 1)
                .collect();
            let changes = feed(&timing(1, failure), Instant::now(), &isolated);
            prop_assert!(changes.iter().all(|(_, c)| c.verdict == Verdict::Up));
        }

        /// The tracker reports exactly when the verdict it holds changes: replaying the changes
        /// gives the final verdict.
        #[test]
        fn changes_replay_to_the_final_verdict(
            success in 1u32..4,
            failure in 1u32..5,
            outcomes in proptest::collection::vec(any::<bool>(), 0..60),
        ) {
            let t = timing(success, failure);
            let mut tracker = Tracker::new(&t);
            let t0 = Instant::now();
            let mut last = None;
            for ok in &outcomes {
                if let Some(c) = tracker.observe(*ok, t0) {
                    last = Some(c.verdict);
                }
            }
            prop_assert_eq!(last, tracker.verdict());
        }
    }
}
