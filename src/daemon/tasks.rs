//! The engine's task table: the writes and checks it runs as tasks, each tagged with the run of
//! the schedule it belongs to, at most [`MAX_IN_FLIGHT`] at once.

use std::collections::HashMap;
use std::future::Future;

use tokio::task::{JoinError, JoinSet};
use tracing::Instrument;

use super::jobs::{Done, Job, Outcome};
use super::schedule::TaskId;

/// At most this many tasks (writes, checks) run at once: enough to bring 1,000 annotated pairs
/// in sync in well under a second, few enough not to look like a flood to API Priority and
/// Fairness.
pub const MAX_IN_FLIGHT: usize = 16;

/// The tasks running now.
#[derive(Default)]
pub struct Tasks {
    /// The tasks themselves.
    set: JoinSet<Done>,
    /// The run each task belongs to, by tokio's id (a panicked task has no outcome of its own).
    running: HashMap<tokio::task::Id, (TaskId, Job)>,
    /// The last run id handed out.
    last: u64,
}

/// How a task ended, as [`Tasks::join_next`] hands it over.
pub enum Joined {
    /// With its outcome.
    Done(Done),
    /// Cancelled: its run was aborted.
    Cancelled(TaskId, Job),
    /// Panicked: retried like any failure.
    Panicked(TaskId, Job, JoinError),
}

impl Tasks {
    /// Whether another task may start now.
    pub fn has_room(&self) -> bool {
        self.set.len() < MAX_IN_FLIGHT
    }

    /// Whether nothing runs.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// A fresh run id, for the schedule to start before the task is spawned.
    pub fn next_id(&mut self) -> TaskId {
        self.last += 1;
        TaskId(self.last)
    }

    /// Runs `work` for `job` as the run `task`.
    pub fn spawn(
        &mut self,
        task: TaskId,
        job: Job,
        work: impl Future<Output = Outcome> + Send + 'static,
    ) {
        let tagged = job.clone();
        let handle = self.set.spawn(
            async move {
                Done {
                    task,
                    job: tagged,
                    outcome: work.await,
                }
            }
            .in_current_span(),
        );
        self.running.insert(handle.id(), (task, job));
    }

    /// The next task to end; `None` once none runs. Tasks already accounted for (aborted with
    /// [`Tasks::abort_all`]) are passed over.
    pub async fn join_next(&mut self) -> Option<Joined> {
        loop {
            match self.set.join_next_with_id().await? {
                Ok((id, done)) => {
                    self.running.remove(&id);
                    return Some(Joined::Done(done));
                }
                Err(e) => {
                    let Some((task, job)) = self.running.remove(&e.id()) else {
                        continue;
                    };
                    return Some(if e.is_cancelled() {
                        Joined::Cancelled(task, job)
                    } else {
                        Joined::Panicked(task, job, e)
                    });
                }
            }
        }
    }

    /// Aborts every task; returns their runs in the order they were spawned, for their
    /// schedules to be told (the same order every time: a simulated run replays exactly).
    pub fn abort_all(&mut self) -> Vec<(TaskId, Job)> {
        self.set.abort_all();
        let mut runs: Vec<(TaskId, Job)> =
            std::mem::take(&mut self.running).into_values().collect();
        runs.sort_by_key(|(id, _)| *id);
        runs
    }

    /// Forgets the background checks (the scan): at shutdown they are not worth waiting for.
    pub fn forget_checks(&mut self) {
        self.running.retain(|_, (_, job)| !matches!(job, Job::Scan));
    }

    /// Whether a task that matters at shutdown (a write) still runs.
    pub fn has_tracked(&self) -> bool {
        !self.running.is_empty()
    }
}
