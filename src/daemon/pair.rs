//! One pair's state in the engine: what is done with the target ([`Phase`], carrying what only
//! an active pair has), where it stands ([`Standing`]: one of synced, held, failing — never two),
//! when its work runs next (the pure schedules of `schedule.rs`), and what was last reported of
//! it. What to write is decided by the pure [`crate::desired::step::plan_for`], from what
//! [`Phase::intent`] asks.

use std::collections::BTreeMap;

use tokio::time::Instant;

use super::reported::Reported;
use super::schedule::Schedule;
use crate::desired::step::{Intent, NodeOutcome};
use crate::desired::{ForeignSlice, Hold};
use crate::events::EventReason;
use crate::names::ServiceRef;
use crate::probe::Spec;
use crate::source::Source;

/// What the engine does with a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Mirrored: the target's slices are the union of its sources'.
    Active(Active),
    /// Was active and is refused now (bad annotation, cycle, selector): nothing is written, its
    /// slices stay exactly as they are until the refusal is fixed or the pair removed.
    Refused {
        /// The sources it had while active.
        sources: Vec<Source>,
    },
    /// Removed (config, annotation or target gone), or found by the orphan scan: its slices are
    /// deleted once a fresh read of the target confirms it and no live member of the copier group
    /// still has it configured; then the state is dropped.
    Retired,
}

/// What an active pair is: its sources, how its endpoints are judged, and its chore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Active {
    /// Where the endpoints come from.
    pub sources: Vec<Source>,
    /// What its endpoints are probed with, if they are.
    pub probe: Option<Spec>,
    /// Whether a family the target serves but the sources lack is derived from the Nodes.
    pub derive: bool,
    /// When endpoint-copier-operator's leftover Endpoints are looked for next (once per
    /// leadership term and resync, after a successful sync; its own backoff).
    pub legacy: Schedule,
}

impl Active {
    /// An active pair reading `sources`, its chore not due.
    pub fn new(sources: Vec<Source>, probe: Option<Spec>, derive: bool) -> Active {
        Active {
            sources,
            probe,
            derive,
            legacy: Schedule::Idle,
        }
    }
}

impl Phase {
    /// The sources, while the pair has them.
    pub fn sources(&self) -> &[Source] {
        match self {
            Phase::Active(Active { sources, .. }) | Phase::Refused { sources } => sources,
            Phase::Retired => &[],
        }
    }

    /// What the phase asks of the target's slices.
    pub fn intent(&self) -> Intent<'_> {
        match self {
            Phase::Active(a) => Intent::Mirror(&a.sources),
            Phase::Refused { .. } => Intent::Keep,
            Phase::Retired => Intent::Clear,
        }
    }

    /// The active pair, if it is one.
    pub fn active(&self) -> Option<&Active> {
        match self {
            Phase::Active(a) => Some(a),
            _ => None,
        }
    }

    /// The active pair, if it is one, to change.
    pub fn active_mut(&mut self) -> Option<&mut Active> {
        match self {
            Phase::Active(a) => Some(a),
            _ => None,
        }
    }

    /// The probe of an active pair that probes.
    pub fn probe(&self) -> Option<&Spec> {
        self.active().and_then(|a| a.probe.as_ref())
    }

    /// Whether the pair is retired.
    pub fn is_retired(&self) -> bool {
        *self == Phase::Retired
    }

    /// Whether the pair reads the Service `service` of this cluster.
    pub fn reads(&self, service: &ServiceRef) -> bool {
        self.sources()
            .iter()
            .any(|s| s.local_service() == Some(service))
    }
}

/// Where a pair stands after its last plan or write: one of these, never two at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// Not planned since this copy became leader (or since the pair appeared).
    Unplanned,
    /// The target was seen equal to desired then.
    Synced {
        /// When.
        at: Instant,
        /// Its ready endpoints then.
        endpoints: usize,
    },
    /// Nothing may be written (fail-static): the target keeps what it has.
    Held(Hold),
    /// The last write failed; retried with backoff.
    Failing {
        /// Why, in words.
        error: String,
        /// Conflicts in a row (another writer, or a stale cache), 0 for another failure.
        conflicts: u32,
        /// When the target was last seen equal to desired, if it was this term.
        synced: Option<Instant>,
    },
}

impl Standing {
    /// When the target was last seen equal to desired this term.
    pub fn synced_at(&self) -> Option<Instant> {
        match self {
            Standing::Synced { at, .. } => Some(*at),
            Standing::Failing { synced, .. } => *synced,
            Standing::Unplanned | Standing::Held(_) => None,
        }
    }

    /// Why nothing is written, when so.
    pub fn hold(&self) -> Option<Hold> {
        match self {
            Standing::Held(hold) => Some(*hold),
            _ => None,
        }
    }

    /// The last write's error, while writes fail.
    pub fn error(&self) -> Option<&str> {
        match self {
            Standing::Failing { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// What was last reported of a pair, each fact said once per change.
#[derive(Debug, Default)]
pub struct Said {
    /// The last Event, so that only transitions are reported.
    pub event: Reported<Option<(EventReason, String)>>,
    /// Slices on the target that this group does not manage.
    pub foreign: Reported<Vec<ForeignSlice>>,
    /// Live or recent members of the group that still have this retired pair configured (its
    /// slices are held while this is not empty).
    pub wanted_by: Reported<Vec<String>>,
    /// What the Nodes did to the target at the last plan (its drained endpoints are also what
    /// a plan without a Node view keeps drained).
    pub nodes: Reported<NodeOutcome>,
    /// The sources failing at the last plan, with why.
    pub sources_failing: Reported<BTreeMap<Source, String>>,
}

/// What the engine knows about one target.
#[derive(Debug)]
pub struct PairState {
    /// What is done with the target.
    pub phase: Phase,
    /// Where it stands.
    pub standing: Standing,
    /// When its slices are planned and written next.
    pub write: Schedule,
    /// What was last reported of it.
    pub said: Said,
}

impl PairState {
    /// A pair first seen in `phase`: due for a plan now.
    pub fn new(phase: Phase) -> PairState {
        PairState {
            phase,
            standing: Standing::Unplanned,
            write: Schedule::Due,
            said: Said::default(),
        }
    }

    /// Whether the target equals desired and nothing is pending.
    pub fn is_in_sync(&self) -> bool {
        !self.write.is_due(Instant::now())
            && !self.write.is_running()
            && self.write.attempt() == 0
            && matches!(self.standing, Standing::Synced { .. })
    }

    /// A write failed with `error` (`conflict`: a 409, or an update of a slice that vanished);
    /// returns the conflicts in a row now (another failure breaks the row).
    pub fn fail(&mut self, error: String, conflict: bool) -> u32 {
        let (conflicts, synced) = match &self.standing {
            Standing::Failing {
                conflicts, synced, ..
            } => (*conflicts, *synced),
            other => (0, other.synced_at()),
        };
        let conflicts = if conflict { conflicts + 1 } else { 0 };
        self.standing = Standing::Failing {
            error,
            conflicts,
            synced,
        };
        conflicts
    }

    /// Whether the pair lets `/readyz` say ready: in sync, or held on purpose (fail-static is
    /// not a fault of this copy).
    pub fn is_settled(&self) -> bool {
        match &self.standing {
            Standing::Held(_) => true,
            Standing::Failing { .. } | Standing::Unplanned => false,
            Standing::Synced { .. } => self.is_in_sync(),
        }
    }
}
