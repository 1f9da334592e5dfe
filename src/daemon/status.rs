//! What the engine tells people: the STATUS line and /readyz, Events on target Services (only
//! transitions, only by the leader), per-pair endpoint metrics, the report of slices on a
//! target that another manager writes, and this copy's standing in its group: a member
//! publisher that cannot write (its ballot is lost: not ready, `member_publisher_up` 0) and two
//! live processes under one identity (their ballots do not count: an error, an Event per
//! probing target, STATUS).

use k8s_openapi::api::discovery::v1::EndpointSlice;
use tokio::time::Instant;
use tracing::{error, info, warn};

use super::engine::{Engine, Host};
use super::pair::Standing as PairStanding;
use crate::desired::{self, ForeignSlice};
use crate::events::{EventReason, Report};
use crate::group::health::Publisher;
use crate::group::twins::Twin;
use crate::group::wire::Form;
use crate::lease::Leadership;
use crate::names::ServiceRef;
use crate::notify::{self, PairStatus, Standing, StatusView};

impl Engine {
    /// Refreshes STATUS, /readyz and the member publisher's gauge, and reports a change of
    /// the twins.
    pub(super) fn publish_status(&mut self, host: &Host<'_>) {
        let now = Instant::now();
        let twins = self.twins(now);
        self.note_twins(&twins);
        let standing = standing(
            self.members.live.own(),
            &twins,
            &self.probes.health.publisher(),
            self.members.live.settings().expiry,
            now,
        );
        let role = match &self.leader {
            // Neither the Lease nor the first list came back yet: say what we wait for.
            Leadership::Starting if !self.caches.services.is_ready() => Standing::Waiting(format!(
                "the API server at {}",
                host.credentials.current.loaded.server
            )),
            Leadership::Starting => Standing::Starting,
            Leadership::Leader => Standing::Leader,
            Leadership::Follower { holder } => Standing::Follower(holder.clone()),
        };
        // Per-pair counts are the leader's: a follower does not sync, and its line says who does.
        let pairs: Vec<PairStatus> = self
            .pairs
            .iter()
            .filter(|_| self.is_leader())
            .filter(|(_, s)| !s.phase.is_retired())
            .map(|(target, s)| {
                let evicted = self
                    .probes
                    .decided
                    .get(target)
                    .map(|d| &d.evicted)
                    .cloned()
                    .unwrap_or_default();
                let drained = &s.said.nodes.last().withheld.drained;
                let endpoints = match s.standing {
                    PairStanding::Synced { endpoints, .. } => endpoints,
                    _ => desired::ready_endpoints(&self.caches.slices.slices_of(target)),
                };
                // Evicted and drained endpoints are still in the target (not ready): "3
                // endpoints, 1 evicted" / "3 endpoints, 1 drained". An endpoint both drained and
                // evicted is one endpoint, counted once (as drained: the cause an operator set).
                let evicted_only = evicted.difference(drained).count();
                PairStatus {
                    target: target.to_string(),
                    endpoints: endpoints + evicted_only + drained.len(),
                    drained: drained.len(),
                    synced_ago: s.standing.synced_at().map(|t| now.duration_since(t)),
                    holding: s.standing.hold().as_ref().map(ToString::to_string),
                    evicted: evicted_only,
                    failing_sources: s
                        .said
                        .sources_failing
                        .last()
                        .keys()
                        .map(ToString::to_string)
                        .collect(),
                }
            })
            .collect();
        // This copy's standing in the group comes first: a twin or a member record not written
        // makes its ballot worthless, whatever the pairs say. Then an API that does not answer,
        // a failing watch scope (while it fails, the pairs it feeds do not follow), and a member
        // view that cannot be counted.
        let link = host.credentials.current.reloadable.link().health();
        let unanswered = link.trouble_since.map(|t| now.duration_since(t));
        self.io.metrics.set_link(
            unanswered.unwrap_or_default(),
            link.longest_silence.unwrap_or_default(),
        );
        let last_error = standing
            .line
            .clone()
            .or_else(|| {
                unanswered.map(|d| format!("the API server does not answer ({} s)", d.as_secs()))
            })
            .or_else(|| {
                self.caches
                    .errors
                    .first()
                    .map(|(scope, e)| format!("{scope} watch: {e}"))
            })
            .or_else(|| {
                self.is_leader()
                    .then(|| self.members_incomplete(now))
                    .flatten()
                    .map(|why| format!("member view not complete, evictions as written: {why}"))
            })
            .or_else(|| {
                self.pairs
                    .values()
                    .find_map(|s| s.standing.error().map(str::to_owned))
            });
        let mut line = notify::status_line(&StatusView {
            role,
            pairs,
            last_error,
        });
        // What the probes need a look at (targets over the cap, endpoints this host cannot
        // judge), on every copy: each host probes for itself.
        if let Some(note) = self.probes.status_note() {
            line.push_str("; ");
            line.push_str(&note);
        }
        // Live copies that run other versions (every copy says so) or configure a pair
        // differently (the leader's finding).
        if let Some(note) = self
            .members
            .skew
            .status_note(&self.members.live, self.is_leader(), now)
        {
            line.push_str("; ");
            line.push_str(&note);
        }
        host.notifier.status(&line);
        let in_sync = self
            .pairs
            .values()
            .filter(|s| !s.phase.is_retired())
            .all(super::pair::PairState::is_settled);
        let watching = self.caches.services.is_ready() && self.caches.slices.is_ready();
        let ready = match self.leader {
            Leadership::Leader => watching && in_sync,
            Leadership::Follower { .. } => watching,
            Leadership::Starting => false,
        };
        host.health.set_ready(ready && standing.ready);
        self.io
            .metrics
            .set_member_publisher_up(standing.publisher_up);
    }

    /// Reports each change of the twins once: an error (and, from the leader, an Event on every
    /// active pair's target: twins overwrite each other's verdicts and configured pairs) for a
    /// new one, a notice when one is gone.
    fn note_twins(&mut self, twins: &[Twin]) {
        if self.probes.twins_reported != twins {
            let before = std::mem::replace(&mut self.probes.twins_reported, twins.to_vec());
            for twin in twins.iter().filter(|t| !before.contains(t)) {
                error!(identity = %twin.identity, nonces = %twin.nonces.join(", "), "two live copies run under one identity; their probe verdicts are not counted until one stops or gets its own [lease] identity");
            }
            for twin in before
                .iter()
                .filter(|t| !twins.iter().any(|n| n.identity == t.identity))
            {
                info!(identity = %twin.identity, "one live copy runs under this identity again; its probe verdicts count again");
            }
        }
        // Events are the leader's: a copy that becomes leader announces what it already knew.
        if !self.is_leader() {
            self.probes.twins_announced.clear();
            return;
        }
        if self.probes.twins_announced == twins {
            return;
        }
        let before = std::mem::replace(&mut self.probes.twins_announced, twins.to_vec());
        let active: Vec<ServiceRef> = self
            .pairs
            .iter()
            .filter(|(_, s)| !s.phase.is_retired())
            .map(|(t, _)| t.clone())
            .collect();
        for twin in twins.iter().filter(|t| !before.contains(t)) {
            let note = format!(
                "two live copies run as {} (process nonces {}); their probe verdicts are not counted until one stops or gets its own [lease] identity",
                twin.identity,
                twin.nonces.join(", ")
            );
            for target in &active {
                self.report(target, EventReason::TwinIdentity, note.clone());
            }
        }
    }

    /// Reports `note` for `target` as an Event, once per change of (reason, note), leader only.
    pub(super) fn report(&mut self, target: &ServiceRef, reason: EventReason, note: String) {
        if !self.is_leader() {
            return;
        }
        if let Some(state) = self.pairs.get_mut(target)
            && state
                .said
                .event
                .change(Some((reason, note.clone())))
                .is_none()
        {
            return;
        }
        let uid = self
            .caches
            .services
            .objects()
            .get(target)
            .and_then(|s| s.metadata.uid.clone());
        self.io.events.send(Report {
            target: target.clone(),
            uid,
            reason,
            note,
        });
    }

    /// Per-family ready/not-ready endpoint gauges of `target`.
    pub(super) fn record_endpoints(&self, target: &ServiceRef, slices: &[EndpointSlice]) {
        record_endpoints_of(&self.io.metrics, target, slices);
    }

    /// Slices on `target` that this group does not manage: never touched, always reported (the
    /// VIP serves them too). Logged, raised as an Event and counted when the set changes.
    pub(super) fn note_foreign(&mut self, target: &ServiceRef, actual: &[EndpointSlice]) {
        let foreign = desired::foreign_slices(actual, &self.settings.owner);
        let Some(state) = self.pairs.get_mut(target) else {
            return;
        };
        if state.said.foreign.change(foreign.clone()).is_none() {
            return;
        }
        self.io
            .metrics
            .set_foreign_slices(&target.to_string(), foreign.len());
        if foreign.is_empty() {
            return;
        }
        let text = describe_foreign(&foreign);
        warn!(service = %target, slices = %text, "the target has EndpointSlices that endpoint-copier does not manage; the VIP serves their addresses too");
        self.report(
            target,
            EventReason::ForeignSlices,
            format!("EndpointSlices not managed by this copier group also reach {target}: {text}"),
        );
    }
}

/// This copy's standing in its group (identity `own`) at `now`, from the `twins` known and how
/// its member `publisher` does: what STATUS says of it, whether it keeps the copy ready (a twin
/// never; a publisher failing for `expiry` or longer not, since the leader no longer counts its
/// ballot), and whether the publisher's last write succeeded.
fn standing(
    own: &str,
    twins: &[Twin],
    publisher: &Publisher,
    expiry: std::time::Duration,
    now: Instant,
) -> GroupStanding {
    let publisher_up = matches!(publisher, Publisher::Up { .. });
    if let Some(twin) = twins.iter().find(|t| t.identity == own) {
        return GroupStanding {
            line: Some(format!(
                "another live process runs as {own} (nonces {}): this identity's ballots do not count",
                twin.nonces.join(", ")
            )),
            ready: false,
            publisher_up,
        };
    }
    match publisher {
        Publisher::Starting => GroupStanding {
            line: None,
            ready: true,
            publisher_up,
        },
        Publisher::Failing {
            since,
            error,
            attempts,
        } => {
            let failing = now.saturating_duration_since(*since);
            GroupStanding {
                line: Some(format!(
                    "member Lease not written for {}s ({attempts} attempts): {error}",
                    failing.as_secs()
                )),
                ready: failing < expiry,
                publisher_up,
            }
        }
        Publisher::Up { written, .. } => GroupStanding {
            line: (written.form == Form::Partial).then(|| {
                format!(
                    "member record over its size budget ({} bytes): {} verdicts left out, counted as abstentions",
                    written.budget,
                    written.omitted.up + written.omitted.down
                )
            }),
            ready: true,
            publisher_up,
        },
    }
}

/// This copy's standing in its group, as `publish_status` reports it.
#[derive(Debug, PartialEq, Eq)]
struct GroupStanding {
    /// What STATUS says first, if anything.
    line: Option<String>,
    /// Whether it lets `/readyz` say ready.
    ready: bool,
    /// Whether the member publisher's last write succeeded.
    publisher_up: bool,
}

/// One line naming each foreign slice, its manager and its ready addresses.
pub fn describe_foreign(foreign: &[ForeignSlice]) -> String {
    foreign
        .iter()
        .map(|f| {
            format!(
                "{} (managed by {}; ready: {})",
                f.name,
                f.manager,
                if f.ready_addresses.is_empty() {
                    "none".to_owned()
                } else {
                    f.ready_addresses.join(", ")
                }
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Per-family ready/not-ready endpoint gauges of `target`, from its slices.
pub fn record_endpoints_of(
    metrics: &crate::metrics::Metrics,
    target: &ServiceRef,
    slices: &[EndpointSlice],
) {
    for family in [desired::IPV4, desired::IPV6] {
        let of_family: Vec<EndpointSlice> = slices
            .iter()
            .filter(|s| s.address_type == family)
            .cloned()
            .collect();
        let total: usize = of_family.iter().map(|s| s.endpoints.len()).sum();
        let ready = desired::ready_endpoints(&of_family);
        metrics.set_endpoints(&target.to_string(), family, ready, total - ready);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::group::health::Written;
    use crate::group::wire::Omitted;

    const EXPIRY: Duration = Duration::from_secs(30);

    #[test]
    fn a_failing_member_publisher_is_said_at_once_and_unready_after_an_expiry() {
        let t0 = Instant::now();
        let failing = Publisher::Failing {
            since: t0,
            error: "failed to update member Lease endpoint-copier/x".into(),
            attempts: 4,
        };
        let s = standing(
            "node-1",
            &[],
            &failing,
            EXPIRY,
            t0 + Duration::from_secs(29),
        );
        assert_eq!(
            s.line.as_deref(),
            Some(
                "member Lease not written for 29s (4 attempts): failed to update member Lease endpoint-copier/x"
            )
        );
        assert!(s.ready && !s.publisher_up);
        let s = standing("node-1", &[], &failing, EXPIRY, t0 + EXPIRY);
        assert!(!s.ready);
    }

    #[test]
    fn a_written_record_is_up_and_one_over_its_budget_is_said() {
        let t0 = Instant::now();
        let up = |form, omitted| Publisher::Up {
            since: t0,
            written: Written {
                form,
                omitted,
                bytes: 100,
                budget: 65536,
            },
        };
        let s = standing(
            "node-1",
            &[],
            &up(Form::Grouped, Omitted::default()),
            EXPIRY,
            t0,
        );
        assert_eq!(
            s,
            GroupStanding {
                line: None,
                ready: true,
                publisher_up: true
            }
        );
        let s = standing(
            "node-1",
            &[],
            &up(Form::Partial, Omitted { up: 1, down: 2 }),
            EXPIRY,
            t0,
        );
        assert_eq!(
            s.line.as_deref(),
            Some(
                "member record over its size budget (65536 bytes): 3 verdicts left out, counted as abstentions"
            )
        );
        assert!(s.ready);
    }

    #[test]
    fn a_twin_of_this_identity_is_said_first_and_never_ready() {
        let twins = [
            Twin {
                identity: "node-2".into(),
                nonces: vec!["a".into(), "b".into()],
            },
            Twin {
                identity: "node-1".into(),
                nonces: vec!["c".into(), "d".into()],
            },
        ];
        let s = standing(
            "node-1",
            &twins,
            &Publisher::Starting,
            EXPIRY,
            Instant::now(),
        );
        assert_eq!(
            s.line.as_deref(),
            Some(
                "another live process runs as node-1 (nonces c, d): this identity's ballots do not count"
            )
        );
        assert!(!s.ready);
        // Another identity's twin is the leader's to report, not this copy's standing.
        let s = standing(
            "node-3",
            &twins,
            &Publisher::Starting,
            EXPIRY,
            Instant::now(),
        );
        assert_eq!(s.line, None);
    }
}
