//! Supervision: every long-lived task of the daemon in one named set. Each must run until
//! shutdown; one that ends before (returns, fails or panics) is named in the error and the
//! daemon exits non-zero — systemd restarts it — rather than running half-blind (a dead prober
//! would leave frozen verdicts in a live member record; a dead publisher, a stale one).
//!
//! The elector is one of them, kept apart because shutdown needs its handle: the Lease is
//! released only after the writes drained.

use std::collections::HashMap;
use std::future::Future;

use tokio::task::{AbortHandle, JoinHandle, JoinSet};
use tracing::Instrument;

use super::Error;
use crate::lease;

/// The daemon's long-lived tasks.
#[derive(Default)]
pub struct Supervised {
    /// The tasks, each answering with its name and how it ended.
    set: JoinSet<(&'static str, Result<(), Error>)>,
    /// Each task's name by tokio's id (a panicked task has no answer of its own).
    names: HashMap<tokio::task::Id, &'static str>,
    /// Tasks spawned elsewhere that the set watches: aborted with the set.
    adopted: Vec<AbortHandle>,
    /// The elector, until shutdown takes it to release the Lease.
    elector: Option<JoinHandle<Result<(), lease::Error>>>,
}

impl Supervised {
    /// Runs `work` as the task `name`; it must not end before shutdown.
    pub fn spawn(
        &mut self,
        name: &'static str,
        work: impl Future<Output = Result<(), Error>> + Send + 'static,
    ) {
        let handle = self
            .set
            .spawn(async move { (name, work.await) }.in_current_span());
        self.names.insert(handle.id(), name);
    }

    /// Watches the task `name` spawned elsewhere; it must not end before shutdown.
    pub fn adopt(&mut self, name: &'static str, task: JoinHandle<()>) {
        self.adopted.push(task.abort_handle());
        self.spawn(name, async move {
            // A panic inside is a task that ended, like any other end.
            let _ = task.await;
            Ok(())
        });
    }

    /// Keeps the elector's handle.
    pub fn elector(&mut self, task: JoinHandle<Result<(), lease::Error>>) {
        self.elector = Some(task);
    }

    /// Why the first task to end ended; pending while none has (or none runs).
    pub async fn next_ended(&mut self) -> Error {
        let ended = match self.set.join_next_with_id().await {
            None => return std::future::pending().await,
            Some(ended) => ended,
        };
        match ended {
            Ok((_, (_, Err(e)))) => e,
            Ok((_, (name, Ok(())))) => Error::TaskEnded(name),
            Err(e) => Error::TaskEnded(self.names.get(&e.id()).copied().unwrap_or("unnamed")),
        }
    }

    /// Why the elector ended, once its leadership channel closed.
    pub async fn elector_ended(&mut self) -> Error {
        match self.elector.take() {
            Some(task) => match task.await {
                Ok(Err(e)) => Error::Lease(e),
                _ => Error::TaskEnded("leader election"),
            },
            None => Error::TaskEnded("leader election"),
        }
    }

    /// The elector's handle, for shutdown to release the Lease (`None` once it ended).
    pub fn take_elector(&mut self) -> Option<JoinHandle<Result<(), lease::Error>>> {
        self.elector.take()
    }

    /// Stops every task (at shutdown, once the Lease is released).
    pub fn abort_all(&mut self) {
        self.set.abort_all();
        for task in self.adopted.drain(..) {
            task.abort();
        }
    }
}

impl Drop for Supervised {
    /// A daemon whose future is dropped (a simulated host crashing, a test ending) takes its
    /// tasks with it instead of leaving them running detached.
    fn drop(&mut self) {
        self.abort_all();
        if let Some(elector) = self.elector.take() {
            elector.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_ends_before_shutdown_is_named() {
        let mut tasks = Supervised::default();
        tasks.spawn("metrics", std::future::pending());
        tasks.adopt("prober", tokio::spawn(async {}));
        assert!(matches!(
            tasks.next_ended().await,
            Error::TaskEnded("prober")
        ));
    }

    #[tokio::test]
    async fn a_panicked_task_is_named_and_a_failed_one_gives_its_error() {
        let mut tasks = Supervised::default();
        tasks.spawn("events", async { panic!("boom") });
        assert!(matches!(
            tasks.next_ended().await,
            Error::TaskEnded("events")
        ));
        tasks.spawn("publisher", async { Err(Error::TaskEnded("inner")) });
        assert!(matches!(
            tasks.next_ended().await,
            Error::TaskEnded("inner")
        ));
    }

    #[tokio::test]
    async fn dropping_the_set_stops_every_task_the_adopted_and_the_elector_too() {
        let adopted = tokio::spawn(std::future::pending::<()>());
        let watch = adopted.abort_handle();
        let elector = tokio::spawn(std::future::pending::<Result<(), lease::Error>>());
        let elector_watch = elector.abort_handle();
        let mut tasks = Supervised::default();
        tasks.adopt("prober", adopted);
        tasks.elector(elector);
        drop(tasks);
        tokio::task::yield_now().await;
        assert!(watch.is_finished() && elector_watch.is_finished());
    }

    #[tokio::test(start_paused = true)]
    async fn with_every_task_running_nothing_ends() {
        let mut tasks = Supervised::default();
        tasks.spawn("watchdog", std::future::pending());
        let waited =
            tokio::time::timeout(std::time::Duration::from_secs(3600), tasks.next_ended()).await;
        assert!(waited.is_err());
        tasks.abort_all();
    }
}
