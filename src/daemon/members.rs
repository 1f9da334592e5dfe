//! The engine's view of its group's members: who is live and what each configures
//! ([`MemberState`]), the member watch's events ([`Engine::on_members`]: a change touches the
//! retired pairs and the probing pairs at once, and reports pairs configured on some members
//! only), and whether the view is complete enough to count ballots: listed, its watch neither
//! failing nor silent. Then ballots are counted twice when some member has not been seen
//! renewing yet (with and without it), and a plan changes an endpoint only where the two counts
//! agree ([`Verdicts::Agreed`]). Until the view is complete, plans keep the evictions as written
//! ([`Verdicts::AsWritten`]) and STATUS says what is missing — a new leader whose member watch
//! went silent (a network cut that healed), or that restarted before its caches filled, must not
//! evict by its own ballot alone, nor return the endpoints the group evicted.
//!
//! The ballots themselves are `group::live`'s and the count `probes.rs`'s.

use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::watcher;

use super::engine::Engine;
use super::reported::Reported;
use super::scope::Scope;
use crate::desired::step::Verdicts;
use crate::events::EventReason;
use crate::group::{Members, Mismatch, Wanted};
use crate::names::ServiceRef;
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

/// The group's members as this copy knows them.
#[derive(Debug)]
pub struct MemberState {
    /// The member Leases: who is live, what each configures, its ballot.
    pub live: Members,
    /// When an answer of `live` changes by time alone (a member turning stale or gone).
    pub due: Option<Instant>,
    /// When the member watch last delivered: whether ballots can be counted.
    pub view: MemberView,
    /// Pairs configured on some live members and not on others, as last reported.
    pub mismatches: Reported<Vec<Mismatch>>,
    /// Pairs configured differently on live members (`group::skew`), as last reported.
    pub skew: crate::group::Skew,
}

impl MemberState {
    /// The state of `live`, whose member Leases this copy renews every `heartbeat`.
    pub fn new(live: Members, heartbeat: Duration, now: Instant) -> MemberState {
        MemberState {
            live,
            due: None,
            view: MemberView::new(heartbeat, now),
            mismatches: Reported::default(),
            skew: crate::group::Skew::default(),
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
    reported: Reported<Option<Incomplete>>,
}

impl MemberView {
    /// A view whose watch starts now; `heartbeat` is how often our own member Lease is renewed.
    pub fn new(heartbeat: Duration, now: Instant) -> MemberView {
        MemberView {
            heard: now,
            // Two missed heartbeats and a margin for a slow write.
            silent_after: heartbeat * 2 + Duration::from_secs(5),
            restarted: None,
            reported: Reported::default(),
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
    /// A member watch event: the members' answers may have changed.
    pub(super) fn on_members(&mut self, event: Result<watcher::Event<Lease>, watcher::Error>) {
        let now = Instant::now();
        match event {
            Ok(event) => {
                self.members.view.heard(now);
                if crate::watch::is_progress(&event) {
                    self.caches.errors.recovered(&Scope::Members);
                }
                if self.members.live.apply(event, now) {
                    self.members_changed(now);
                }
            }
            Err(e) => self.watch_error(Scope::Members, &e),
        }
    }

    /// Whether the member watch brought nothing for two heartbeats (our own member Lease
    /// changes every heartbeat: it is on a dead connection). Then it is to be started over, and
    /// until it delivers, ballots are not counted.
    pub(super) fn member_watch_silent(&mut self, now: Instant) -> bool {
        if !self.members.view.restart_due(now) {
            return false;
        }
        warn!(
            watch = "members",
            "the member watch brought nothing for two heartbeats; starting it over"
        );
        self.members.view.restarted(now);
        self.io.metrics.watch_restart(Scope::Members.metric_label());
        self.touch_probing();
        true
    }

    /// The members' answers may have changed (an event, or a member turning stale): retired
    /// pairs are looked at again, the probing pairs planned again (a ballot changed), and —
    /// by the leader — pairs configured on some members only, or differently, are reported.
    pub(super) fn members_changed(&mut self, now: Instant) {
        self.members.due = self.members.live.next_change(now);
        for state in self.pairs.values_mut() {
            if state.phase.is_retired() {
                state.write.touch();
            }
        }
        self.touch_probing();
        if !self.is_leader() {
            return;
        }
        let configured = self.settings.rules.configured();
        for d in self
            .members
            .skew
            .update(&self.members.live, configured, now)
        {
            let note = d.note();
            warn!(service = %d.target, source = %d.source, "{note}");
            self.report(&d.target, EventReason::ConfiguredElsewhere, note);
        }
        let own: std::collections::BTreeSet<(ServiceRef, ServiceRef)> = self
            .settings
            .rules
            .configured()
            .iter()
            .map(|p| (p.record_source(), p.target.clone()))
            .collect();
        let mismatches = self.members.live.mismatches(&own, now);
        let Some(before) = self.members.mismatches.change(mismatches.clone()) else {
            return;
        };
        for m in mismatches.iter().filter(|m| !before.contains(m)) {
            let note = format!(
                "pair {} -> {} is configured on {} but not on {}; its EndpointSlices are kept, never deleted, while a live copy configures it",
                m.source,
                m.target,
                m.configured_on.join(", "),
                m.missing_on.join(", ")
            );
            warn!(service = %m.target, source = %m.source, "{note}");
            self.report(&m.target, EventReason::ConfiguredElsewhere, note);
        }
    }

    /// Who still wants the retired pair `target`: nobody can be ruled out while the member
    /// watch fails (a live member may look gone).
    pub(super) fn wanted(&self, target: &ServiceRef, now: Instant) -> Wanted {
        if self.caches.errors.fails(&Scope::Members) {
            return Wanted::Unknown;
        }
        self.members.live.who_wants(target, now)
    }

    /// Why the member view cannot be counted from now, if it cannot.
    pub(super) fn members_incomplete(&self, now: Instant) -> Option<Incomplete> {
        if !self.members.live.is_ready() {
            return Some(Incomplete::NotListed);
        }
        if self.caches.errors.fails(&Scope::Members) {
            return Some(Incomplete::WatchFailing);
        }
        self.members.view.silence(now).map(Incomplete::Silent)
    }

    /// The ballots counted now, or why they cannot be (then plans keep what is written).
    pub(super) fn ballots(&mut self, now: Instant) -> Result<Ballots, Incomplete> {
        let incomplete = self.members_incomplete(now);
        let news = self
            .members
            .view
            .reported
            .change(incomplete.clone())
            .is_some();
        if news && self.is_leader() {
            match &incomplete {
                Some(why) => {
                    warn!(reason = %why, "the member view is not complete; evictions stay as written until it is")
                }
                None => info!("the member view is complete; counting ballots"),
            }
        }
        if let Some(why) = incomplete {
            return Err(why);
        }
        // A record read from a list may be a dead host's last words, or a live host's not yet
        // renewed: counted both without and with those, a decision changes what is written only
        // where the two agree (a restarted leader's still empty ballot must not undo the group's
        // evictions, and a dead host's last ballot must not block them).
        let unconfirmed = !self.members.live.unconfirmed(now).is_empty();
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
