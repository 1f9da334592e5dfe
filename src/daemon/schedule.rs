//! When a piece of work runs next: a pair's write, the orphan scan, the check for
//! endpoint-copier-operator's leftover Endpoints. Pure: the caller passes the time, the task ids and
//! the backoff delay, so every rule here is a unit test under paused time.
//!
//! The rules that keep the daemon from hammering an apiserver:
//! - a failure always waits its backoff before the next run, whatever else happens meanwhile (a
//!   change of the source, a successful run of *other* work);
//! - at most one run of a piece of work at a time, and only the task that was started may finish
//!   it: a late answer from a task aborted at a leadership flap changes nothing;
//! - only a success resets the failure count.

use std::time::Duration;

use tokio::time::Instant;

/// Our own id of a spawned task, so a finished task is matched to the run it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskId(pub u64);

/// The state of one piece of work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// Nothing to do until something changes.
    Idle,
    /// Something changed: run as soon as a slot is free.
    Due,
    /// The last `attempt` runs failed in a row: run again at `at`, not before.
    Backoff {
        /// When the next run may start.
        at: Instant,
        /// Failures in a row so far.
        attempt: u32,
    },
    /// A task is running it.
    Running {
        /// The task; only its outcome counts.
        task: TaskId,
        /// Failures in a row before this run.
        attempt: u32,
        /// Something changed while it ran: run again afterwards.
        again: bool,
    },
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// Done; the failure count resets.
    Done,
    /// Failed; wait this long before the next run.
    Failed(Duration),
    /// Not done, through no fault of the work (our leadership ended mid-run): run again when
    /// possible, with the failure count as it was.
    Interrupted,
}

impl Schedule {
    /// Something changed that the work must see.
    pub fn touch(&mut self) {
        match self {
            Schedule::Idle => *self = Schedule::Due,
            Schedule::Running { again, .. } => *again = true,
            // A backoff is served in full: it ends in a run anyway, which sees the change.
            Schedule::Due | Schedule::Backoff { .. } => {}
        }
    }

    /// Whether a run may start at `now`.
    pub fn is_due(&self, now: Instant) -> bool {
        match self {
            Schedule::Due => true,
            Schedule::Backoff { at, .. } => *at <= now,
            Schedule::Idle | Schedule::Running { .. } => false,
        }
    }

    /// Whether a task runs it.
    pub fn is_running(&self) -> bool {
        matches!(self, Schedule::Running { .. })
    }

    /// Failures in a row so far (0 after a success).
    pub fn attempt(&self) -> u32 {
        match self {
            Schedule::Idle | Schedule::Due => 0,
            Schedule::Backoff { attempt, .. } | Schedule::Running { attempt, .. } => *attempt,
        }
    }

    /// When a backoff ends, if one runs.
    pub fn wakeup(&self) -> Option<Instant> {
        match self {
            Schedule::Backoff { at, .. } => Some(*at),
            _ => None,
        }
    }

    /// `task` starts a run. Ignored unless the work is due at `now`.
    pub fn start(&mut self, task: TaskId, now: Instant) -> bool {
        if !self.is_due(now) {
            return false;
        }
        *self = Schedule::Running {
            task,
            attempt: self.attempt(),
            again: false,
        };
        true
    }

    /// `task` ended as `how` at `now`. Returns false, changing nothing, when `task` is not the
    /// running one (it was aborted and another run started since).
    pub fn finish(&mut self, task: TaskId, how: Finish, now: Instant) -> bool {
        let Schedule::Running {
            task: running,
            attempt,
            again,
        } = *self
        else {
            return false;
        };
        if running != task {
            return false;
        }
        *self = match how {
            Finish::Done if again => Schedule::Due,
            Finish::Done => Schedule::Idle,
            Finish::Failed(delay) => Schedule::Backoff {
                at: now + delay,
                attempt: attempt.saturating_add(1),
            },
            Finish::Interrupted if attempt == 0 => Schedule::Due,
            Finish::Interrupted => Schedule::Backoff { at: now, attempt },
        };
        true
    }

    /// Nothing needed doing after all (the plan was empty, or the work is held): idle until the
    /// next change, the failure count reset.
    pub fn settle(&mut self) {
        if !self.is_running() {
            *self = Schedule::Idle;
        }
    }

    /// `task` was aborted (leadership lost): the work is due again, its failure count and any
    /// backoff kept. Ignored unless `task` is the running one.
    pub fn abort(&mut self, task: TaskId, now: Instant) {
        if let Schedule::Running {
            task: running,
            attempt,
            ..
        } = *self
            && running == task
        {
            *self = if attempt == 0 {
                Schedule::Due
            } else {
                Schedule::Backoff { at: now, attempt }
            };
        }
    }

    /// Starts over, as for a new leadership term: due now, no failures counted.
    pub fn reset(&mut self) {
        *self = Schedule::Due;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[tokio::test(start_paused = true)]
    async fn a_change_during_backoff_does_not_cut_the_backoff_short() {
        let t0 = Instant::now();
        let mut s = Schedule::Due;
        assert!(s.start(TaskId(1), t0));
        assert!(s.finish(TaskId(1), Finish::Failed(500 * MS), t0));
        s.touch();
        assert!(!s.is_due(t0));
        tokio::time::advance(499 * MS).await;
        assert!(!s.is_due(Instant::now()));
        assert!(!s.start(TaskId(2), Instant::now()));
        tokio::time::advance(MS).await;
        assert!(s.is_due(Instant::now()));
        assert_eq!(s.wakeup(), Some(t0 + 500 * MS));
    }

    #[tokio::test(start_paused = true)]
    async fn failures_count_up_and_only_a_success_resets_them() {
        let mut s = Schedule::Due;
        for n in 1..=3u64 {
            let now = Instant::now();
            assert!(s.start(TaskId(n), now));
            assert!(s.finish(TaskId(n), Finish::Failed(10 * MS), now));
            assert_eq!(s.attempt(), u32::try_from(n).unwrap());
            tokio::time::advance(10 * MS).await;
        }
        let now = Instant::now();
        assert!(s.start(TaskId(9), now));
        assert_eq!(s.attempt(), 3, "a running retry keeps the count");
        assert!(s.finish(TaskId(9), Finish::Done, now));
        assert_eq!(s, Schedule::Idle);
        assert_eq!(s.attempt(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_task_that_was_started_may_finish_the_run() {
        let now = Instant::now();
        let mut s = Schedule::Due;
        assert!(s.start(TaskId(1), now));
        // Leadership flapped: task 1 was aborted, task 2 started.
        s.abort(TaskId(1), now);
        assert!(s.start(TaskId(2), now));
        // Task 1's cancellation, joined late, must not abort task 2's run either.
        s.abort(TaskId(1), now);
        assert!(s.is_running());
        // Task 1's late outcome must not mark the run finished while task 2 writes.
        assert!(!s.finish(TaskId(1), Finish::Done, now));
        assert!(s.is_running());
        assert!(!s.start(TaskId(3), now), "one run at a time");
        assert!(s.finish(TaskId(2), Finish::Done, now));
        assert!(!s.is_running());
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_while_running_runs_again_after_success_but_not_before_a_backoff() {
        let now = Instant::now();
        let mut s = Schedule::Due;
        s.start(TaskId(1), now);
        s.touch();
        s.finish(TaskId(1), Finish::Done, now);
        assert_eq!(s, Schedule::Due);
        s.start(TaskId(2), now);
        s.touch();
        s.finish(TaskId(2), Finish::Failed(100 * MS), now);
        assert!(!s.is_due(now));
    }

    #[tokio::test(start_paused = true)]
    async fn an_interrupted_or_aborted_run_keeps_its_failure_count() {
        let now = Instant::now();
        let mut s = Schedule::Due;
        s.start(TaskId(1), now);
        s.finish(TaskId(1), Finish::Failed(MS), now);
        tokio::time::advance(MS).await;
        let now = Instant::now();
        s.start(TaskId(2), now);
        s.finish(TaskId(2), Finish::Interrupted, now);
        assert_eq!(s.attempt(), 1);
        assert!(s.is_due(now));
        s.start(TaskId(3), now);
        s.abort(TaskId(3), now);
        assert_eq!(s.attempt(), 1);
        s.reset();
        assert_eq!((s, s.attempt()), (Schedule::Due, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_work_is_not_due_until_touched() {
        let now = Instant::now();
        let mut s = Schedule::Idle;
        assert!(!s.is_due(now));
        assert!(!s.start(TaskId(1), now));
        s.touch();
        assert!(s.is_due(now));
    }
}
