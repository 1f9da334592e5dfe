//! What the engine does with a finished task: a write's result (synced, failed with backoff,
//! interrupted, or a delete not confirmed), the legacy check's and the orphan scan's; and the
//! drain at shutdown.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::engine::{BACKOFF_BASE, Engine};
use super::jobs::{Done, Job, Outcome, WriteError};
use super::pair::{PairState, Phase, Standing};
use super::schedule::{Finish, TaskId};
use crate::apply;
use crate::desired;
use crate::error::chain;
use crate::events::EventReason;
use crate::names::ServiceRef;

/// Conflicts in a row on one target after which it is reported (warning, Event): each one
/// re-read the slice and re-listed the namespace, so more mean another writer, not a stale cache.
pub(super) const CONFLICT_STREAK: u32 = 3;

impl Engine {
    /// The delay before the next run of `job` after one more failure.
    pub(super) fn backoff_for(&mut self, job: &Job) -> Duration {
        let (cap, attempt) = match job {
            Job::Write(_) => (
                self.settings.max_backoff,
                self.schedule_of(job).map_or(0, |s| s.attempt()),
            ),
            _ => (
                self.settings.chore_backoff,
                self.schedule_of(job).map_or(0, |s| s.attempt()),
            ),
        };
        crate::backoff::delay(attempt.saturating_add(1), BACKOFF_BASE, cap)
    }

    pub(super) fn finish(&mut self, done: Done) {
        let Done { task, job, outcome } = done;
        let now = Instant::now();
        match outcome {
            Outcome::Write { started, result } => {
                let Job::Write(target) = &job else { return };
                self.finish_write(task, target, started, result, now);
            }
            Outcome::Legacy(result) => {
                let Job::Legacy(target) = &job else { return };
                let how = match &result {
                    Ok(_) => Finish::Done,
                    Err(e) => {
                        Finish::Failed(e.retry_after().unwrap_or_else(|| self.backoff_for(&job)))
                    }
                };
                let Some(legacy) = self
                    .pairs
                    .get_mut(target)
                    .and_then(|s| s.phase.active_mut())
                    .map(|a| &mut a.legacy)
                else {
                    return;
                };
                if !legacy.finish(task, how, now) {
                    return;
                }
                match result {
                    Ok(true) => {
                        info!(service = %target, "removed endpoint-copier-operator's leftover Endpoints")
                    }
                    Ok(false) => {}
                    // One warning per failing streak; the schedule's backoff keeps it rare.
                    Err(e) if legacy.attempt() == 1 => {
                        warn!(service = %target, error = %chain(&e), "could not check for endpoint-copier-operator's leftover Endpoints; retrying with backoff")
                    }
                    Err(e) => {
                        debug!(service = %target, attempt = legacy.attempt(), error = %chain(&e), "legacy Endpoints check still failing")
                    }
                }
            }
            Outcome::Scan(result) => {
                let how = match &result {
                    Ok(_) => Finish::Done,
                    Err(_) => Finish::Failed(self.backoff_for(&job)),
                };
                if !self.scan.finish(task, how, now) {
                    return;
                }
                match result {
                    Ok(targets) => {
                        self.adopt_orphans(targets);
                        self.rewatch_slices();
                    }
                    Err(e) if self.scan.attempt() == 1 => {
                        warn!(error = %chain(&e), "could not list our EndpointSlices to find removed pairs; retrying with backoff")
                    }
                    Err(e) => {
                        debug!(attempt = self.scan.attempt(), error = %chain(&e), "orphan scan still failing")
                    }
                }
            }
        }
    }

    pub(super) fn finish_write(
        &mut self,
        task: TaskId,
        target: &ServiceRef,
        started: Instant,
        result: Result<apply::Applied, WriteError>,
        now: Instant,
    ) {
        let job = Job::Write(target.clone());
        let how = match &result {
            Ok(_) => Finish::Done,
            Err(WriteError::Apply(apply::Error::NotLeader { .. })) => Finish::Interrupted,
            Err(WriteError::Apply(e)) => {
                Finish::Failed(e.retry_after().unwrap_or_else(|| self.backoff_for(&job)))
            }
            Err(WriteError::Conflict { fresh, .. }) => {
                // The next plan starts from the API's version of the slice, and the watch that
                // fed the stale one lists again on a new connection (it may have gone silent).
                if let Some(r) = fresh {
                    self.caches
                        .slices
                        .refresh(&r.namespace, &r.name, r.slice.clone());
                }
                if self
                    .caches
                    .watches
                    .restart(&self.io.client, &target.namespace)
                {
                    debug!(namespace = %target.namespace, "re-listing the EndpointSlices of a namespace after a conflict");
                }
                Finish::Failed(self.backoff_for(&job))
            }
            Err(_) => Finish::Failed(self.backoff_for(&job)),
        };
        let Some(state) = self.pairs.get_mut(target) else {
            return;
        };
        if !state.write.finish(task, how, now) {
            return; // a run aborted at a leadership flap: another one owns the pair now
        }
        match result {
            Ok(applied) => {
                let source = crate::source::describe(state.phase.sources());
                let first = !matches!(state.standing, Standing::Synced { .. });
                // As the cache has it; the watch brings the write and the next plan recounts.
                let endpoints = desired::ready_endpoints(&self.caches.slices.slices_of(target));
                state.standing = Standing::Synced { at: now, endpoints };
                if first && let Some(active) = state.phase.active_mut() {
                    active.legacy.touch();
                }
                let retired = state.phase.is_retired();
                self.io.metrics.set_last_sync(&target.to_string());
                if applied.writes() > 0 {
                    self.io.metrics.observe_sync(now.duration_since(started));
                    info!(service = %target, source = %source, created = applied.created, updated = applied.updated, deleted = applied.deleted, "target EndpointSlices updated");
                    if !retired {
                        let note = format!(
                            "mirrored {source}: {} created, {} updated, {} deleted",
                            applied.created, applied.updated, applied.deleted
                        );
                        self.report(target, EventReason::Synced, note);
                    }
                }
            }
            Err(WriteError::Apply(e @ apply::Error::NotLeader { .. })) => {
                debug!(service = %target, error = %chain(&e), "write skipped: not the leader");
            }
            Err(e @ WriteError::StillWanted { .. }) => {
                // The caches lag behind the API: wait for the watch, never delete on a stale view.
                info!(service = %target, error = %chain(&e), "not deleting; waiting for the Service watch to catch up");
            }
            Err(e @ WriteError::Conflict { .. }) => {
                let message = chain(&e);
                let conflicts = state.fail(message.clone(), true);
                if conflicts < CONFLICT_STREAK {
                    debug!(service = %target, attempt = conflicts, error = %message, "conflict; re-planning");
                } else if conflicts == CONFLICT_STREAK {
                    // Each conflict re-read the slice and re-listed its namespace, so a streak
                    // means someone else keeps writing this target: said once per streak, and
                    // the backoff keeps growing.
                    warn!(service = %target, attempt = conflicts, error = %message, "conflicts keep coming; another writer changes this target, retrying with backoff");
                    self.report(
                        target,
                        EventReason::WriteFailed,
                        format!("{conflicts} conflicts in a row; another writer keeps changing the target: {message}"),
                    );
                }
            }
            Err(e) => {
                let message = chain(&e);
                let attempt = state.write.attempt();
                state.fail(message.clone(), false);
                let transient = matches!(&e, WriteError::Apply(a) if a.is_transient())
                    || matches!(e, WriteError::Confirm { .. });
                if transient {
                    warn!(service = %target, attempt, error = %message, "write failed; retrying with backoff");
                } else {
                    error!(service = %target, attempt, error = %message, "write refused; retrying with backoff until fixed");
                }
                self.report(target, EventReason::WriteFailed, message);
            }
        }
    }

    /// Targets holding this group's slices that no pair claims become retired pairs: their
    /// slices go after a fresh read confirms it.
    pub(super) fn adopt_orphans(&mut self, targets: BTreeSet<ServiceRef>) {
        for target in targets {
            // A refused target keeps its slices (held), like a pair refused while running.
            if self.pairs.contains_key(&target) || self.refusals.now.contains_key(&target) {
                continue;
            }
            info!(service = %target, "found EndpointSlices of a removed pair; deleting them once a fresh read confirms it");
            self.pairs.insert(target, PairState::new(Phase::Retired));
        }
    }

    /// Waits (bounded) for the writes in flight; aborts what is left. Returns until when the
    /// Lease must still be kept when a write was abandoned: its request may still be waiting for
    /// an answer until its own timeout, which the fence bounds ([`apply::outstanding_until`]).
    pub async fn drain(&mut self, limit: Duration) -> Option<Instant> {
        let deadline = Instant::now() + limit;
        // Background checks are not worth waiting for; writes are.
        self.tasks.forget_checks();
        while self.tasks.has_tracked() {
            match tokio::time::timeout_at(deadline, self.tasks.join_next()).await {
                Ok(Some(joined)) => self.joined(joined),
                Ok(None) => break,
                Err(_) => {
                    let until = apply::outstanding_until(&self.io.fence);
                    self.tasks.abort_all();
                    return Some(until);
                }
            }
        }
        self.tasks.abort_all();
        None
    }
}
