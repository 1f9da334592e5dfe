//! Whether the leader's view of the group's members is complete enough to count ballots: listed,
//! its watch neither failing nor silent. Then ballots are counted twice when some member has not
//! been seen renewing yet (with and without it), and a plan changes an endpoint only where the
//! two counts agree ([`Verdicts::Agreed`]). Until the view is complete
//! is, plans keep the evictions as written ([`Verdicts::AsWritten`]) and STATUS says what is
//! missing — a new leader whose member watch went silent (a network cut that healed), or that
//! restarted before its caches filled, must not evict by its own ballot alone, nor return the
//! endpoints the group evicted.
//!
//! Owns [`MemberView`] (when the member watch last delivered) and the rule; the ballots
//! themselves are `group::live`'s and the count `probes.rs`'s.

use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use super::engine::Engine;
use super::pair::Verdicts;
use crate::probe::quorum::Count;

/// Why the member view is not complete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Incomplete {
    /// The member watch has not delivered its first list.
    NotListed,
    /// The member watch fails.
    WatchFailing,
    /// The member watch has delivered nothing for this long, though our own member Lease is
    /// renewed every heartbeat: it went silent (and is started over).
    Silent(Duration),
}

impl std::fmt::Display for Incomplete {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Incomplete::NotListed => write!(f, "the member Leases are not listed yet"),
            Incomplete::WatchFailing => write!(f, "the member watch fails"),
            Incomplete::Silent(d) => {
                write!(f, "the member watch has been silent for {} s", d.as_secs())
            }
        }
    }
}

/// When the member watch last delivered, and what was last said about the view.
#[derive(Debug)]
pub struct MemberView {
    /// The last event of the member watch, or its (re)start.
    heard: Instant,
    /// How long the watch may stay quiet: our own member Lease changes every heartbeat, so a
    /// working watch delivers at least that often.
    silent_after: Duration,
    /// When the watch was last started over for its silence.
    restarted: Option<Instant>,
    /// What was last reported, so each change is said once.
    reported: Option<Incomplete>,
}

impl MemberView {
    /// A view whose watch starts now; `heartbeat` is how often our own member Lease is renewed.
    pub fn new(heartbeat: Duration, now: Instant) -> MemberView {
        MemberView {
            heard: now,
            // Two missed heartbeats and a margin for a slow write.
            silent_after: heartbeat * 2 + Duration::from_secs(5),
            restarted: None,
            reported: None,
        }
    }

    /// The member watch delivered an event (or was started over) at `now`.
    pub fn heard(&mut self, now: Instant) {
        self.heard = now;
    }

    /// How long the watch has been silent past its allowance, if it has.
    pub fn silence(&self, now: Instant) -> Option<Duration> {
        let quiet = now.duration_since(self.heard);
        (quiet >= self.silent_after).then_some(quiet)
    }

    /// Whether the silent watch should be started over now: silent, and not started over in
    /// the last allowance (a watch that cannot connect retries on its own backoff).
    pub fn restart_due(&self, now: Instant) -> bool {
        self.silence(now).is_some()
            && self
                .restarted
                .is_none_or(|t| now.duration_since(t) >= self.silent_after)
    }

    /// The watch was started over at `now`; it stays silent until it delivers.
    pub fn restarted(&mut self, now: Instant) {
        self.restarted = Some(now);
    }
}

impl Engine {
    /// Why the member view cannot be counted from now, if it cannot.
    pub(super) fn members_incomplete(&self, now: Instant) -> Option<Incomplete> {
        if !self.members.is_ready() {
            return Some(Incomplete::NotListed);
        }
        if self.watch_errors.contains_key("members") {
            return Some(Incomplete::WatchFailing);
        }
        self.member_view.silence(now).map(Incomplete::Silent)
    }

    /// The ballots counted now, or why they cannot be (then plans keep what is written).
    pub(super) fn ballots(&mut self, now: Instant) -> Result<Ballots, Incomplete> {
        let incomplete = self.members_incomplete(now);
        if incomplete != self.member_view.reported && self.is_leader() {
            match &incomplete {
                Some(why) => {
                    warn!(reason = %why, "the member view is not complete; evictions stay as written until it is")
                }
                None => info!("the member view is complete; counting ballots"),
            }
        }
        self.member_view.reported.clone_from(&incomplete);
        if let Some(why) = incomplete {
            return Err(why);
        }
        // A record read from a list may be a dead host's last words, or a live host's not yet
        // renewed: counted both without and with those, a decision changes what is written only
        // where the two agree (a restarted leader's still empty ballot must not undo the group's
        // evictions, and a dead host's last ballot must not block them).
        let unconfirmed = !self.members.unconfirmed(now).is_empty();
        let confirmed = self.count(now, false);
        let all = unconfirmed.then(|| self.count(now, true));
        Ok(Ballots { confirmed, all })
    }
}

/// The ballots a plan decides by.
#[derive(Debug, Clone)]
pub struct Ballots {
    /// This copy's and those of the members seen renewing.
    pub confirmed: Count,
    /// With the members not yet seen renewing too, when there are any.
    pub all: Option<Count>,
}

/// The verdicts a plan gets from [`Engine::ballots`]'s answer.
pub(super) fn verdicts(ballots: &Result<Ballots, Incomplete>) -> Verdicts<'_> {
    match ballots {
        Ok(Ballots {
            confirmed,
            all: None,
        }) => Verdicts::Counted(confirmed),
        Ok(Ballots {
            confirmed,
            all: Some(all),
        }) => Verdicts::Agreed { confirmed, all },
        Err(_) => Verdicts::AsWritten,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_member_watch_is_silent_after_two_heartbeats_and_a_margin() {
        let t0 = Instant::now();
        let mut view = MemberView::new(Duration::from_secs(10), t0);
        assert_eq!(view.silence(t0 + Duration::from_secs(24)), None);
        assert_eq!(
            view.silence(t0 + Duration::from_secs(25)),
            Some(Duration::from_secs(25))
        );
        view.heard(t0 + Duration::from_secs(20));
        assert_eq!(view.silence(t0 + Duration::from_secs(30)), None);
    }

    #[test]
    fn a_silent_watch_is_started_over_once_per_allowance_and_stays_silent_until_it_delivers() {
        let t0 = Instant::now();
        let mut view = MemberView::new(Duration::from_secs(10), t0);
        let t = t0 + Duration::from_secs(25);
        assert!(view.restart_due(t));
        view.restarted(t);
        assert!(!view.restart_due(t + Duration::from_secs(24)));
        assert!(view.silence(t + Duration::from_secs(1)).is_some());
        assert!(view.restart_due(t + Duration::from_secs(25)));
        view.heard(t + Duration::from_secs(26));
        assert!(!view.restart_due(t + Duration::from_secs(27)));
        assert_eq!(view.silence(t + Duration::from_secs(27)), None);
    }

    #[test]
    fn each_reason_names_what_is_missing() {
        assert_eq!(
            Incomplete::NotListed.to_string(),
            "the member Leases are not listed yet"
        );
        assert!(
            Incomplete::Silent(Duration::from_secs(31))
                .to_string()
                .contains("31 s")
        );
    }
}
