//! Pure: the thresholds of one target, turning single probe outcomes into a [`Finding`].
//!
//! kubelet's prober semantics: no finding until `success_threshold` probes in a row passed or
//! `failure_threshold` probes in a row failed; after that the finding changes only when the
//! opposite threshold is met in a row, so one failed probe never evicts (the failure threshold is
//! at least 2 by config) and a flapping target changes verdict at most once per threshold's worth
//! of probes. Two additions of ours:
//! - **abstention**: `failure_threshold` probes in a row that could not judge the target (its
//!   certificate does not verify, an anonymous probe refused) make the finding
//!   [`Finding::Abstain`]: no vote either way, whatever the vote was before;
//! - **flap damping**: once this tracker voted a target down, an up vote needs, besides
//!   `success_threshold` passes in a row, passes for [`Timing::min_up`] without a failure or an
//!   abstention in between. A target that fails every few probes therefore stays down.
//!
//! Time is passed in; probing and reporting are `run`'s.

use tokio::time::Instant;

use super::{Class, Finding, Timing, Verdict};

/// A finding that was just decided: the first one, or one that differs from the previous one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    /// The finding now.
    pub finding: Finding,
    /// When the streak that produced it began: the finish time of its first probe.
    pub since: Instant,
}

/// A run of probes with the same outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Streak {
    /// How these probes went.
    class: Class,
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
    /// Failures (or abstentions) in a row that make the verdict down (or an abstention); at
    /// least 1.
    failure_threshold: u32,
    /// How long passes must last before a target this tracker voted down is voted up again.
    min_up: std::time::Duration,
    /// The finding decided so far, `None` before the first threshold is met.
    finding: Option<Finding>,
    /// The last vote given (an abstention does not clear it): a down vote here damps the next
    /// up vote.
    last_vote: Option<Verdict>,
    /// The current run of equal outcomes, `None` before the first probe.
    streak: Option<Streak>,
}

impl Tracker {
    /// A tracker with no finding yet, using `timing`'s thresholds (a threshold of 0 counts as 1)
    /// and flap damping.
    pub fn new(timing: &Timing) -> Tracker {
        Tracker {
            success_threshold: timing.success_threshold.max(1),
            failure_threshold: timing.failure_threshold.max(1),
            min_up: timing.min_up,
            finding: None,
            last_vote: None,
            streak: None,
        }
    }

    /// The finding so far: `None` until a threshold was met.
    pub fn finding(&self) -> Option<Finding> {
        self.finding
    }

    /// Records one probe that finished at `at` as `class`. Returns the new finding when this
    /// probe made it known or changed it.
    pub fn observe(&mut self, class: Class, at: Instant) -> Option<Change> {
        let streak = match self.streak {
            Some(s) if s.class == class => Streak {
                count: s.count.saturating_add(1),
                ..s
            },
            _ => Streak {
                class,
                count: 1,
                began: at,
            },
        };
        self.streak = Some(streak);
        let (candidate, threshold) = match class {
            Class::Pass => (Finding::Vote(Verdict::Up), self.success_threshold),
            Class::Fail => (Finding::Vote(Verdict::Down), self.failure_threshold),
            Class::Abstain => (Finding::Abstain, self.failure_threshold),
        };
        // Damping: back up only after passing for `min_up` since the first pass of the streak.
        let damped = class == Class::Pass
            && self.last_vote == Some(Verdict::Down)
            && at.saturating_duration_since(streak.began) < self.min_up;
        // `>=` rather than `==`: a streak continuing past the threshold after a change is a no-op
        // below, and a damped streak meets its threshold later than its count does.
        if streak.count >= threshold && !damped && self.finding != Some(candidate) {
            self.finding = Some(candidate);
            if let Finding::Vote(v) = candidate {
                self.last_vote = Some(v);
            }
            return Some(Change {
                finding: candidate,
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

    const UP: Finding = Finding::Vote(Verdict::Up);
    const DOWN: Finding = Finding::Vote(Verdict::Down);

    fn timing(success: u32, failure: u32) -> Timing {
        Timing {
            success_threshold: success,
            failure_threshold: failure,
            min_up: Duration::ZERO,
            ..Timing::default()
        }
    }

    fn class(ok: bool) -> Class {
        if ok { Class::Pass } else { Class::Fail }
    }

    /// Feeds `outcomes`, one probe every 500 ms from `t0`, and returns each change with the index
    /// of the probe that caused it.
    fn feed(t: &Timing, t0: Instant, outcomes: &[Class]) -> Vec<(usize, Change)> {
        let mut tracker = Tracker::new(t);
        outcomes
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                tracker
                    .observe(*c, t0 + Duration::from_millis(500) * i as u32)
                    .map(|change| (i, change))
            })
            .collect()
    }

    fn bools(outcomes: &[bool]) -> Vec<Class> {
        outcomes.iter().map(|o| class(*o)).collect()
    }

    #[test]
    fn no_finding_before_a_threshold_is_met() {
        let t0 = Instant::now();
        let mut tracker = Tracker::new(&timing(2, 3));
        assert_eq!(tracker.observe(Class::Pass, t0), None);
        assert_eq!(tracker.observe(Class::Fail, t0), None);
        assert_eq!(tracker.observe(Class::Fail, t0), None);
        assert_eq!(tracker.finding(), None);
    }

    #[test]
    fn the_first_success_gives_up_with_the_default_thresholds() {
        let t0 = Instant::now();
        let changes = feed(&Timing::default(), t0, &bools(&[true, true, true]));
        assert_eq!(
            changes,
            vec![(
                0,
                Change {
                    finding: UP,
                    since: t0
                }
            )]
        );
    }

    #[test]
    fn a_single_failure_never_evicts_and_two_in_a_row_do() {
        let t0 = Instant::now();
        let changes = feed(
            &Timing::default(),
            t0,
            &bools(&[true, false, true, false, false]),
        );
        let down = Change {
            finding: DOWN,
            since: t0 + Duration::from_millis(1500),
        };
        assert_eq!(changes.len(), 2);
        assert_eq!(changes[1], (4, down));
    }

    #[test]
    fn since_is_when_the_deciding_streak_began() {
        let t0 = Instant::now();
        let changes = feed(
            &timing(2, 2),
            t0,
            &bools(&[false, false, true, false, true, true]),
        );
        assert_eq!(changes[0].1.since, t0);
        assert_eq!(changes[1].0, 5);
        assert_eq!(changes[1].1.since, t0 + Duration::from_millis(2000));
    }

    #[test]
    fn zero_thresholds_count_as_one() {
        let changes = feed(&timing(0, 0), Instant::now(), &bools(&[false, true]));
        assert_eq!(changes.len(), 2);
    }

    #[test]
    fn certificate_trouble_is_an_abstention_after_the_failure_threshold_not_a_down_vote() {
        let t0 = Instant::now();
        let changes = feed(
            &Timing::default(),
            t0,
            &[Class::Pass, Class::Abstain, Class::Abstain, Class::Abstain],
        );
        let findings: Vec<(usize, Finding)> =
            changes.iter().map(|(i, c)| (*i, c.finding)).collect();
        assert_eq!(findings, vec![(0, UP), (2, Finding::Abstain)]);
        // A first abstention, before any vote, is an abstention too.
        let first = feed(&Timing::default(), t0, &[Class::Abstain, Class::Abstain]);
        assert_eq!(first[0].1.finding, Finding::Abstain);
    }

    #[tokio::test(start_paused = true)]
    async fn a_target_seen_down_is_up_again_only_after_min_up_of_passes() {
        // Paused time: the probes come every 300 ms of tokio's clock, as `run` schedules them.
        let timing = Timing::default();
        let mut tracker = Tracker::new(&timing);
        let mut probe = |class: Class| {
            let change = tracker.observe(class, Instant::now());
            change.map(|c| c.finding)
        };
        assert_eq!(
            probe(Class::Pass),
            Some(UP),
            "the first verdict is not damped"
        );
        tokio::time::advance(timing.period).await;
        assert_eq!(probe(Class::Fail), None);
        tokio::time::advance(timing.period).await;
        assert_eq!(probe(Class::Fail), Some(DOWN));
        // Passing again: nothing until 2 s of passes (the first at +0, so the eighth at +2.1 s).
        let back = Instant::now() + timing.period;
        let mut seen = None;
        for _ in 0..20 {
            tokio::time::advance(timing.period).await;
            if let Some(f) = probe(Class::Pass) {
                seen = Some((f, Instant::now() - back));
                break;
            }
        }
        let (finding, after) = seen.expect("up again within 20 probes");
        assert_eq!(finding, UP);
        assert!(after >= timing.min_up, "up after {after:?}");
        assert!(after < timing.min_up + timing.period, "up after {after:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_flapping_target_stays_down_under_damping() {
        // Pass, fail, fail, over and over: without damping that is down after the two failures
        // and up at the next pass, two changes every three probes (about 2 a second with the
        // default period); damped, the target is down once and stays down.
        let changes = |min_up: Duration| {
            let t = Timing {
                min_up,
                ..Timing::default()
            };
            let mut tracker = Tracker::new(&t);
            let mut changes = 0;
            let t0 = Instant::now();
            for i in 0..300u32 {
                let class = if i % 3 == 0 { Class::Pass } else { Class::Fail };
                changes += usize::from(tracker.observe(class, t0 + t.period * i).is_some());
            }
            changes
        };
        let undamped = changes(Duration::ZERO);
        let damped = changes(Timing::default().min_up);
        assert_eq!(undamped, 200, "two changes every three probes");
        assert_eq!(damped, 2, "up once, then down for good");
    }

    #[test]
    fn damping_waits_out_abstentions_too() {
        let t = Timing::default();
        let t0 = Instant::now();
        let mut tracker = Tracker::new(&t);
        let at = |i: u32| t0 + t.period * i;
        tracker.observe(Class::Fail, at(0));
        assert_eq!(tracker.observe(Class::Fail, at(1)).unwrap().finding, DOWN);
        tracker.observe(Class::Abstain, at(2));
        assert_eq!(
            tracker.observe(Class::Abstain, at(3)).unwrap().finding,
            Finding::Abstain
        );
        // Passing after abstaining: still damped, as the last vote was down.
        assert_eq!(tracker.observe(Class::Pass, at(4)), None);
        let up = (5..20).find_map(|i| tracker.observe(Class::Pass, at(i)));
        assert_eq!(up.unwrap().finding, UP);
        assert_eq!(up.unwrap().since, at(4));
    }

    proptest! {
        /// A finding changes only after its own threshold of equal outcomes in a row, ending
        /// with the probe that changed it; and it is always reported with the start of that run.
        #[test]
        fn a_finding_never_changes_faster_than_the_thresholds_allow(
            success in 1u32..4,
            failure in 2u32..5,
            outcomes in proptest::collection::vec(0u8..3, 0..60),
        ) {
            let t = timing(success, failure);
            let t0 = Instant::now();
            let outcomes: Vec<Class> = outcomes
                .iter()
                .map(|o| [Class::Pass, Class::Fail, Class::Abstain][usize::from(*o)])
                .collect();
            let changes = feed(&t, t0, &outcomes);
            let mut previous = None;
            for (i, change) in &changes {
                prop_assert_ne!(Some(change.finding), previous);
                let (class, need) = match change.finding {
                    Finding::Vote(Verdict::Up) => (Class::Pass, success),
                    Finding::Vote(Verdict::Down) => (Class::Fail, failure),
                    Finding::Abstain => (Class::Abstain, failure),
                };
                let need = need as usize;
                prop_assert!(*i + 1 >= need);
                prop_assert!(outcomes[*i + 1 - need..=*i].iter().all(|o| *o == class));
                let start = outcomes[..=*i].iter().rposition(|o| *o != class).map_or(0, |p| p + 1);
                prop_assert_eq!(change.since, t0 + Duration::from_millis(500) * start as u32);
                previous = Some(change.finding);
            }
        }

        /// Damped, an up vote after a down vote (abstentions in between or not) comes only
        /// after passes lasting `min_up` without anything else in between.
        #[test]
        fn after_a_down_vote_up_needs_min_up_of_uninterrupted_passes(
            min_up_periods in 0u32..10,
            outcomes in proptest::collection::vec(0u8..3, 0..120),
        ) {
            let t = Timing {
                min_up: Timing::default().period * min_up_periods,
                ..Timing::default()
            };
            let t0 = Instant::now();
            let outcomes: Vec<Class> = outcomes
                .iter()
                .map(|o| [Class::Pass, Class::Fail, Class::Abstain][usize::from(*o)])
                .collect();
            let mut tracker = Tracker::new(&t);
            let mut voted_down = false;
            for (i, c) in outcomes.iter().enumerate() {
                let at = t0 + t.period * i as u32;
                let Some(change) = tracker.observe(*c, at) else { continue };
                match change.finding {
                    Finding::Vote(Verdict::Down) => voted_down = true,
                    Finding::Vote(Verdict::Up) => {
                        if voted_down {
                            let start = outcomes[..=i].iter().rposition(|o| *o != Class::Pass).map_or(0, |p| p + 1);
                            prop_assert!(at - (t0 + t.period * start as u32) >= t.min_up);
                        }
                        voted_down = false;
                    }
                    Finding::Abstain => {}
                }
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
            let changes = feed(&timing(1, failure), Instant::now(), &bools(&isolated));
            prop_assert!(changes.iter().all(|(_, c)| c.finding == UP));
        }

        /// The tracker reports exactly when the finding it holds changes: replaying the changes
        /// gives the final finding.
        #[test]
        fn changes_replay_to_the_final_finding(
            success in 1u32..4,
            failure in 1u32..5,
            outcomes in proptest::collection::vec(0u8..3, 0..60),
        ) {
            let t = Timing { min_up: Duration::from_millis(700), ..timing(success, failure) };
            let mut tracker = Tracker::new(&t);
            let t0 = Instant::now();
            let mut last = None;
            for (i, o) in outcomes.iter().enumerate() {
                let class = [Class::Pass, Class::Fail, Class::Abstain][usize::from(*o)];
                if let Some(c) = tracker.observe(class, t0 + t.period * i as u32) {
                    last = Some(c.finding);
                }
            }
            prop_assert_eq!(last, tracker.finding());
        }
    }
}
