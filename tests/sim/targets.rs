//! The invariants on the targets beside the VIP: `default/db`, whose one source is a Service in
//! another cluster (read through a remote kubeconfig, without probes), and
//! `default/api-internal`, a pair only some hosts configure (a config that differs by host).
//!
//! - `fence` and `write-budget`, as on the VIP;
//! - `wanted-delete`: no slice of ours is deleted while a live member's record names its
//!   target (judged from the records the store accepted: the one in force [`RECORD_LAG`]
//!   before the delete and every later one name it, and it was written less than the
//!   `[members] forget_after` ago);
//! - `last-ready`: once a target had a ready endpoint, no write leaves it without one (during a
//!   remote outage the last known endpoints stay; past `[sync] keep_last_known` they turn not
//!   ready, never the last one);
//! - `remote-stale`: after [`CALM_BOUND`] without any fault, `default/db` holds exactly the
//!   remote Service's endpoints, all ready.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

use tokio::time::Instant;

use crate::check::{CALM_BOUND, Checker, Truth, WRITE_BUDGET};

/// How late the leader may see a member record after the store accepted it.
const RECORD_LAG: Duration = Duration::from_secs(5);
/// `[members] forget_after`: how long a member not seen to change still holds its pairs'
/// slices.
const FORGET_AFTER: Duration = Duration::from_secs(900);
/// The target of the remote source.
pub const REMOTE_TARGET: &str = "default/db";

/// One target's memory.
#[derive(Debug, Default)]
pub struct Other {
    /// Address → ready, now.
    target: BTreeMap<IpAddr, bool>,
    ever_ready: bool,
    writes: VecDeque<Instant>,
    reported_stale: Option<Instant>,
}

impl Checker {
    /// `member`'s record, written at `now`, names these targets (none: its Lease was deleted).
    pub fn on_wants(&mut self, now: Instant, member: &str, targets: BTreeSet<String>) {
        let versions = self.wants.entry(member.to_owned()).or_default();
        versions.push((now, targets));
        // Renewals every 10 s: what can still matter.
        if versions.len() > 128 {
            versions.drain(..versions.len() - 128);
        }
    }

    /// A live member that wanted `target` at `at` for certain, if any.
    pub fn wanted_by(&self, target: &str, at: Instant) -> Option<String> {
        let start = at.checked_sub(RECORD_LAG)?;
        self.wants.iter().find_map(|(member, versions)| {
            let in_force = versions.iter().rposition(|(t, _)| *t <= start)?;
            let (written, wants) = &versions[in_force];
            let since: Vec<_> = versions[in_force..]
                .iter()
                .filter(|(t, _)| *t <= at)
                .collect();
            let all_want = since.iter().all(|(_, w)| w.contains(target));
            // The last write at or before `at` (renewals move a version's time forward).
            let last = since.last().map_or(*written, |(t, _)| *t);
            (wants.contains(target)
                && all_want
                && at.saturating_duration_since(last) + RECORD_LAG < FORGET_AFTER)
                .then(|| member.clone())
        })
    }

    /// An EndpointSlice write of target `name` (not the VIP) by `writer`, arrived at `arrived`,
    /// accepted at `now`; `deleted`: the slice of ours it deleted; `target`: the target after it.
    pub fn on_other_write(
        &mut self,
        now: Instant,
        arrived: Instant,
        writer: &str,
        name: &str,
        deleted: Option<String>,
        target: BTreeMap<IpAddr, bool>,
    ) {
        self.check_fence(arrived, writer);
        if let Some(slice) = deleted
            && let Some(member) = self.wanted_by(name, now)
        {
            self.violate(
                "wanted-delete",
                format!("{writer} deleted {slice} of {name} while {member}'s record names it"),
            );
        }
        let other = self.others.entry(name.to_owned()).or_default();
        let ready = target.values().filter(|r| **r).count();
        let emptied = other.ever_ready && ready == 0 && !target.is_empty();
        other.ever_ready |= ready > 0;
        // A target whose slices all went (nobody wants it any more) starts over.
        if target.is_empty() {
            other.ever_ready = false;
        }
        other.target = target;
        other.writes.push_back(now);
        while other
            .writes
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
        {
            other.writes.pop_front();
        }
        let burst = other.writes.len() > WRITE_BUDGET;
        if burst {
            other.writes.clear();
        }
        if emptied {
            self.violate(
                "last-ready",
                format!("{writer} left {name} without a ready endpoint"),
            );
        }
        if burst {
            self.violate(
                "write-budget",
                format!("more than {WRITE_BUDGET} writes of {name} within 60 s"),
            );
        }
    }

    /// `remote-stale` at `now`.
    pub fn tick_others(&mut self, now: Instant, truth: &Truth) {
        let Some(since) = truth.calm_since else {
            return;
        };
        if now.duration_since(since) < CALM_BOUND {
            return;
        }
        let Some(other) = self.others.get_mut(REMOTE_TARGET) else {
            return;
        };
        let ready: BTreeSet<IpAddr> = other
            .target
            .iter()
            .filter(|(_, r)| **r)
            .map(|(a, _)| *a)
            .collect();
        let stale = ready != truth.remote_source || other.target.len() != ready.len();
        if stale && other.reported_stale != Some(since) {
            other.reported_stale = Some(since);
            let detail = format!(
                "{REMOTE_TARGET} holds {:?} {} s after the last fault healed; the remote Service has {:?}",
                other.target,
                now.duration_since(since).as_secs(),
                truth.remote_source
            );
            self.violate("remote-stale", detail);
        }
    }
}

/// The invariants of this file caught on hand-built histories; appends their names.
pub fn self_test(fired: &mut Vec<&'static str>) -> Result<(), String> {
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    let a = |n: u8| IpAddr::from([203, 0, 113, n]);
    let wants = |t: &[&str]| t.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<_>>();
    let fired_now =
        |c: &Checker, name: &'static str| c.violations.iter().any(|v| v.invariant == name);

    // A checker in which node-1 holds the Lease.
    let holding = || {
        let mut c = Checker::default();
        c.on_lease(at(0), Some("node-1".into()));
        c
    };
    // node-1 deletes a slice of api-internal at second 12.
    let delete_extra = |c: &mut Checker| {
        c.on_other_write(
            at(12),
            at(12),
            "node-1",
            "default/api-internal",
            Some("api-internal-x".into()),
            BTreeMap::new(),
        );
    };

    // wanted-delete: node-2 names api-internal in every record; node-1's delete breaks it.
    let mut c = holding();
    c.on_wants(at(1), "node-1", wants(&["default/kubernetes-vip"]));
    c.on_wants(
        at(1),
        "node-2",
        wants(&["default/kubernetes-vip", "default/api-internal"]),
    );
    c.on_wants(
        at(11),
        "node-2",
        wants(&["default/kubernetes-vip", "default/api-internal"]),
    );
    delete_extra(&mut c);
    if !fired_now(&c, "wanted-delete") {
        return Err(
            "the wanted-delete check did not fire on a delete a live member's record wants".into(),
        );
    }
    fired.push("wanted-delete (members)");
    // ... but not once node-2's newer record (seen for the lag) no longer names it.
    let mut c = holding();
    c.on_wants(at(1), "node-2", wants(&["default/api-internal"]));
    c.on_wants(at(11), "node-2", wants(&[]));
    delete_extra(&mut c);
    if !c.violations.is_empty() {
        return Err(format!("wanted-delete: false alarm {:?}", c.violations));
    }

    // node-1, holding the Lease, writes the remote target with .40 ready or not at second `t`.
    let write_40 = |c: &mut Checker, t: u64, ready: bool| {
        c.on_other_write(
            at(t),
            at(t),
            "node-1",
            REMOTE_TARGET,
            None,
            [(a(40), ready)].into(),
        );
    };

    // last-ready on another target.
    let mut c = holding();
    write_40(&mut c, 1, true);
    write_40(&mut c, 2, false);
    if !fired_now(&c, "last-ready") {
        return Err("the last-ready check did not fire on the remote target".into());
    }

    // remote-stale: calm for the bound, the target still has the old endpoint.
    let mut c = holding();
    write_40(&mut c, 1, true);
    let truth = Truth {
        calm_since: Some(at(2)),
        remote_source: [a(40), a(41)].into(),
        ..Truth::default()
    };
    c.tick_others(at(2) + CALM_BOUND - Duration::from_secs(1), &truth);
    if !c.violations.is_empty() {
        return Err(format!(
            "remote-stale inside its bound: false alarm {:?}",
            c.violations
        ));
    }
    c.tick_others(at(2) + CALM_BOUND, &truth);
    if !fired_now(&c, "remote-stale") {
        return Err("the remote-stale check did not fire".into());
    }
    fired.push("remote-stale");
    Ok(())
}
