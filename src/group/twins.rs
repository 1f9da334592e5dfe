//! Two live processes under one identity, told apart by the nonce each draws at start and puts
//! in every record it writes (member Lease annotation `endpoint-copier/nonce`, election claim
//! `nonce=`). Pure: the caller says when it saw a record change and passes the instant.
//!
//! Two rules, both cheap and neither fooled by a restart:
//! - **a nonce that comes back** ([`Writers`]): a restart replaces one nonce by another once; two
//!   live processes sharing a member Lease overwrite each other at every heartbeat (each write
//!   carries the resourceVersion it read, so each 409 is followed by a re-read and a write of its
//!   own), so the object's nonce goes `a, b, a`. Seen within `window`, that is a twin.
//! - **a writer's own word** (the `endpoint-copier/twin` mark): a process that saw another nonce
//!   write its own member Lease *after* its own first write knows a live process shares its
//!   identity (a dead predecessor's requests already sent can no longer land: each carries a
//!   resourceVersion our write made stale), and says so in its record; the publisher applies
//!   that rule (`publish.rs`), readers only read the mark.
//!
//! `live.rs` keeps a [`Writers`] per member Lease and reports [`Twin`]s; the leader counts no
//! ballot of a twin identity (`daemon/probes.rs`).

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

/// At most this many runs of one nonce are remembered per member Lease (a twin shows after
/// three).
const MAX_RUNS: usize = 8;

/// The sequence of writers of one member Lease: runs of one nonce, oldest first, each with the
/// instant of its last write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Writers {
    runs: VecDeque<(Option<String>, Instant)>,
}

impl Writers {
    /// Records a write by the process with `nonce` (`None`: a version that writes none), seen
    /// at `at`; runs last written `window` or longer before `at` are forgotten.
    pub fn wrote(&mut self, nonce: Option<&str>, at: Instant, window: Duration) {
        match self.runs.back_mut() {
            Some((last, seen)) if last.as_deref() == nonce => *seen = at,
            _ => self.runs.push_back((nonce.map(str::to_owned), at)),
        }
        while self
            .runs
            .front()
            .is_some_and(|(_, seen)| at.saturating_duration_since(*seen) >= window)
            || self.runs.len() > MAX_RUNS
        {
            self.runs.pop_front();
        }
    }

    /// When [`Writers::taking_turns`] turns empty if nobody writes again: after `now`, the
    /// instant the oldest runs have left `window` far enough that no nonce repeats. `None` when
    /// there are no turns at `now`.
    pub fn turns_end(&self, now: Instant, window: Duration) -> Option<Instant> {
        if self.taking_turns(now, window).is_empty() {
            return None;
        }
        // Runs leave the window oldest first: drop them one by one until no nonce repeats.
        (1..=self.runs.len()).find_map(|k| {
            let rest: Vec<&Option<String>> = self.runs.iter().skip(k).map(|(n, _)| n).collect();
            let unique: BTreeSet<&Option<String>> = rest.iter().copied().collect();
            (unique.len() == rest.len()).then(|| self.runs[k - 1].1 + window)
        })
    }

    /// The nonces of the processes seen taking turns within `window` before `now` (runs last
    /// written less than `window` ago): a nonce whose run was followed by another's and that
    /// wrote again. Empty when there is no twin.
    pub fn taking_turns(&self, now: Instant, window: Duration) -> BTreeSet<String> {
        let recent: Vec<&Option<String>> = self
            .runs
            .iter()
            .filter(|(_, seen)| now.saturating_duration_since(*seen) < window)
            .map(|(nonce, _)| nonce)
            .collect();
        let mut seen = BTreeSet::new();
        let mut twins = BTreeSet::new();
        for nonce in &recent {
            if !seen.insert(*nonce) {
                twins.extend(recent.iter().map(|n| label(n)));
                break;
            }
        }
        twins
    }
}

/// A nonce as reports show it (`-`: a writer that puts none, an older version).
pub fn label(nonce: &Option<String>) -> String {
    nonce.clone().unwrap_or_else(|| "-".to_owned())
}

/// An identity under which more than one live process writes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Twin {
    /// The shared identity.
    pub identity: String,
    /// The nonces seen (`-` for a writer without one), sorted.
    pub nonces: Vec<String>,
}

/// A fresh process nonce: 16 hex digits. Not a secret, only distinct per process: the global
/// generator is seeded from the operating system's randomness per process.
pub fn fresh_nonce() -> String {
    format!("{:016x}", fastrand::u64(..))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(60);

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn a_restart_changes_the_nonce_once_and_is_no_twin() {
        let t0 = Instant::now();
        let mut w = Writers::default();
        for i in 0..5 {
            w.wrote(Some("a"), t0 + s(10 * i), WINDOW);
        }
        for i in 5..10 {
            w.wrote(Some("b"), t0 + s(10 * i), WINDOW);
        }
        assert!(w.taking_turns(t0 + s(95), WINDOW).is_empty());
        // An older version (no nonce) upgraded in place: the same.
        let mut w = Writers::default();
        w.wrote(None, t0, WINDOW);
        w.wrote(Some("b"), t0 + s(1), WINDOW);
        assert!(w.taking_turns(t0 + s(2), WINDOW).is_empty());
    }

    #[test]
    fn two_processes_taking_turns_are_twins_until_one_stops() {
        let t0 = Instant::now();
        let mut w = Writers::default();
        w.wrote(Some("a"), t0, WINDOW);
        w.wrote(Some("b"), t0 + s(1), WINDOW);
        assert!(w.taking_turns(t0 + s(1), WINDOW).is_empty());
        w.wrote(Some("a"), t0 + s(10), WINDOW);
        assert_eq!(
            w.taking_turns(t0 + s(10), WINDOW),
            BTreeSet::from(["a".to_owned(), "b".to_owned()])
        );
        // Unless somebody writes again, the turns are over when a's first run leaves the window.
        assert_eq!(w.turns_end(t0 + s(10), WINDOW), Some(t0 + WINDOW));
        assert!(!w.taking_turns(t0 + WINDOW - s(1), WINDOW).is_empty());
        assert!(w.taking_turns(t0 + WINDOW, WINDOW).is_empty());
        // b stops: a alone for longer than the window is no twin any more.
        for i in 2..10 {
            w.wrote(Some("a"), t0 + s(10 * i), WINDOW);
        }
        assert!(w.taking_turns(t0 + s(95), WINDOW).is_empty());
    }

    #[test]
    fn a_writer_without_a_nonce_taking_turns_is_a_twin_too() {
        let t0 = Instant::now();
        let mut w = Writers::default();
        w.wrote(None, t0, WINDOW);
        w.wrote(Some("b"), t0 + s(1), WINDOW);
        w.wrote(None, t0 + s(2), WINDOW);
        assert_eq!(
            w.taking_turns(t0 + s(2), WINDOW),
            BTreeSet::from(["-".to_owned(), "b".to_owned()])
        );
    }

    #[test]
    fn nonces_differ_between_calls() {
        let (a, b) = (fresh_nonce(), fresh_nonce());
        assert_eq!(a.len(), 16);
        assert_ne!(a, b);
    }
}
