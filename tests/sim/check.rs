//! The invariants, checked on plain data: the write observer and the liveness ticker (world.rs)
//! turn the store into these calls, and `self_test` feeds hand-built histories that each
//! invariant must catch — a check that cannot fail is not a check.
//!
//! The invariants (DESIGN.md, "Invariants the simulator checks"; bounds in
//! docs/development/testing.md, "Simulator"):
//! - `last-ready`: once the target had a ready endpoint, no write leaves it without one;
//! - `wanted-delete`: no slice of the VIP is deleted while its source slice exists (every host
//!   configures that pair), nor of any target while a live member's record names it
//!   (targets.rs);
//! - `fence`: every EndpointSlice write arrived while the election Lease named its writer;
//! - `majority`: an endpoint turns not ready only when a strict majority of the counted
//!   ballots (live members' records, cut-off ballots and silence excluded; the writer's own
//!   taken as down, since it counts its verdicts before publishing them) saw it down, or its
//!   Node is drained;
//! - `healthy-evicted`: after [`CALM_BOUND`] without any fault, every source endpoint on a Node
//!   not drained is ready in the target;
//! - `dead-ready`: an endpoint every running host sees dead for [`DEAD_BOUND`], while nothing
//!   else is wrong but crashed hosts, is not ready (unless it is the last ready one);
//! - `drain-ignored`: while nothing but drains is wrong, a drained endpoint is not ready
//!   [`DRAIN_BOUND`] after its drain was written (unless it is the last ready one);
//! - `write-budget`: at most [`WRITE_BUDGET`] EndpointSlice writes in any minute;
//! - `progress` (main.rs): virtual time advances (a task that never yields, a wake-up loop that
//!   never sleeps, stops the clock);
//! - `reproducible` (main.rs): a run made again gives the same trace digest;
//! - on the other targets (targets.rs): `last-ready`, `fence`, `write-budget`, `remote-stale`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

use tokio::time::Instant;

/// How long after the last fault healed every healthy endpoint must be ready again. The slowest
/// path: a watch left on a hung connection is cut after `link::WATCH_IDLE` (90 s) at worst, but
/// the heal edge cuts it within `link::MIN_CUT_GAP` (10 s) of the next answer; a restarted
/// leader waits out a member expiry (30 s) for an unconfirmed record; a new leader waits out the
/// Lease (15 s). 60 s covers the sum of the likely ones.
pub const CALM_BOUND: Duration = Duration::from_secs(60);
/// How long an endpoint every running host sees dead may stay ready while nothing else is wrong
/// but hosts that crashed, counted from the later of its death and the last host start: a
/// crashed member's last ballot counts until its record expires (`[members] expiry`, 30 s
/// after the leader saw it change), a restarted leader weighs the records it has only listed
/// for as long, a crashed leader's Lease expires first (4 s), probes and the write take a few
/// seconds.
pub const DEAD_BOUND: Duration = Duration::from_secs(45);
/// How soon a drained endpoint must be not ready in the target, while nothing but drains is
/// wrong: the leader writes within milliseconds of the Node event; a new term relists first.
pub const DRAIN_BOUND: Duration = Duration::from_secs(10);
/// EndpointSlice writes allowed in any 60 s: each fault costs at most a few (evict, return,
/// a conflict's retry; the busiest minute of the 500 CI runs had 9); a loop that rewrites the
/// same slice blows it at once.
pub const WRITE_BUDGET: usize = 20;
/// How far back a ballot may have been published and still justify an eviction: the leader
/// counts what its member watch delivered, which lags the store a little.
const BALLOT_LAG: Duration = Duration::from_secs(5);
/// How long after an eviction it is judged: the other members' records written in the same
/// instant are in by then.
const OWN_LAG: Duration = Duration::from_secs(2);
/// `[members] expiry`: a member whose record has not changed for this long is stale to the
/// leader (judged from when the leader saw the change, which is no earlier than the write).
const MEMBER_EXPIRY: Duration = Duration::from_secs(30);
/// How long a member record may still count after it was written: [`MEMBER_EXPIRY`] plus
/// [`BALLOT_LAG`] (the leader may have seen the write that much later).
const MEMBER_LIVE: Duration = Duration::from_secs(35);

/// One member's published verdicts: address → up.
pub type Ballot = BTreeMap<IpAddr, bool>;

/// A broken invariant.
#[derive(Clone, Debug)]
pub struct Violation {
    /// Its name (`fence`, `majority`...).
    pub invariant: &'static str,
    /// What happened.
    pub detail: String,
}

/// What the world is like, for the liveness checks (the driver knows it; the daemons do not).
#[derive(Clone, Debug, Default)]
pub struct Truth {
    /// Since when no fault at all is active (None: one is).
    pub calm_since: Option<Instant>,
    /// The addresses of the source slice now.
    pub source: BTreeSet<IpAddr>,
    /// Addresses on drained Nodes.
    pub drained: BTreeSet<IpAddr>,
    /// Addresses every running host sees dead, since when — only while the other faults
    /// active, if any, are crashed hosts (and some host runs).
    pub dead_alone: BTreeMap<IpAddr, Instant>,
    /// The addresses of the remote Service (in the other cluster) now.
    pub remote_source: BTreeSet<IpAddr>,
    /// Addresses whose drain is within its length (lasting, or timed and not yet run out),
    /// with when it was written.
    pub drain_started: BTreeMap<IpAddr, Instant>,
    /// Since when every active fault is a drain (`None`: another fault is active).
    pub drains_only_since: Option<Instant>,
}

/// The invariants' memory of the run.
#[derive(Default)]
pub struct Checker {
    /// The election Lease's holder over time.
    holders: Vec<(Instant, Option<String>)>,
    /// Each member's ballots, oldest first.
    ballots: BTreeMap<String, Vec<(Instant, Ballot)>>,
    /// The target now: address → ready.
    target: BTreeMap<IpAddr, bool>,
    /// Whether the target ever had a ready endpoint.
    ever_ready: bool,
    /// Addresses drained now, and when drains ended.
    drained: BTreeSet<IpAddr>,
    undrained_at: BTreeMap<IpAddr, Instant>,
    /// EndpointSlice writes in the last minute.
    writes: VecDeque<Instant>,
    /// The most EndpointSlice writes seen in any 60 s of the run.
    pub busiest_minute: usize,
    /// Evictions to judge once the writer's own ballot had time to be published: when,
    /// which address, by whom.
    pending: Vec<(Instant, IpAddr, String)>,
    /// What broke.
    pub violations: Vec<Violation>,
    /// Liveness episodes already reported (one report each): the calm period's start, the
    /// dead addresses with their `since`.
    reported_calm: Option<Instant>,
    reported_dead: BTreeSet<(IpAddr, Instant)>,
    reported_drains: BTreeSet<(IpAddr, Instant)>,
    /// Each member's records over time: the targets of the pairs it configures (targets.rs).
    pub(crate) wants: BTreeMap<String, Vec<(Instant, BTreeSet<String>)>>,
    /// The targets beside the VIP, by `namespace/name` (targets.rs).
    pub(crate) others: BTreeMap<String, crate::targets::Other>,
}

impl Checker {
    pub(crate) fn violate(&mut self, invariant: &'static str, detail: String) {
        self.violations.push(Violation { invariant, detail });
    }

    /// `fence`: a write that arrived at `arrived` must be the Lease holder's of that instant.
    pub(crate) fn check_fence(&mut self, arrived: Instant, writer: &str) {
        let holder = self.holder_at(arrived).map(str::to_owned);
        if holder.as_deref() != Some(writer) {
            self.violate(
                "fence",
                format!(
                    "{writer} wrote an EndpointSlice while the Lease named {}",
                    holder.as_deref().unwrap_or("nobody")
                ),
            );
        }
    }

    /// The election Lease was written: `holder` holds it from `now`.
    pub fn on_lease(&mut self, now: Instant, holder: Option<String>) {
        if self.holders.last().map(|(_, h)| h) != Some(&holder) {
            self.holders.push((now, holder));
        }
    }

    /// Who held the Lease at `at`.
    pub fn holder_at(&self, at: Instant) -> Option<&str> {
        self.holders
            .iter()
            .rev()
            .find(|(t, _)| *t <= at)
            .and_then(|(_, h)| h.as_deref())
    }

    /// `identity` published `ballot` at `now`.
    pub fn on_member(&mut self, now: Instant, identity: &str, ballot: Ballot) {
        // A renewal publishes the same ballot again: it is live until later.
        let versions = self.ballots.entry(identity.to_owned()).or_default();
        versions.push((now, ballot));
        // Keep what can still matter.
        if versions.len() > 64 {
            versions.drain(..versions.len() - 64);
        }
    }

    /// Node drains now.
    pub fn on_drains(&mut self, now: Instant, drained: BTreeSet<IpAddr>) {
        for a in self.drained.difference(&drained) {
            self.undrained_at.insert(*a, now);
        }
        self.drained = drained;
    }

    /// An EndpointSlice write of the target by `writer`, arrived at `arrived`, was accepted at
    /// `now`; `target` is the target after it (address → ready), `wanted_delete` names a
    /// slice of ours deleted while its source slice exists.
    pub fn on_slice_write(
        &mut self,
        now: Instant,
        arrived: Instant,
        writer: &str,
        wanted_delete: Option<String>,
        target: BTreeMap<IpAddr, bool>,
    ) {
        self.check_fence(arrived, writer);
        // wanted-delete
        if let Some(slice) = wanted_delete {
            self.violate(
                "wanted-delete",
                format!("{writer} deleted {slice} while its source slice exists"),
            );
        }
        // last-ready
        let ready = target.values().filter(|r| **r).count();
        if self.ever_ready && ready == 0 {
            self.violate(
                "last-ready",
                format!("{writer} left the target without a ready endpoint"),
            );
        }
        self.ever_ready |= ready > 0;
        // majority
        for (address, now_ready) in &target {
            let was_ready = self.target.get(address).copied().unwrap_or(true);
            if was_ready && !now_ready && !self.recently_drained(*address, now) {
                self.pending.push((now, *address, writer.to_owned()));
            }
        }
        self.target = target;
        // write-budget
        self.writes.push_back(now);
        while self
            .writes
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
        {
            self.writes.pop_front();
        }
        self.busiest_minute = self.busiest_minute.max(self.writes.len());
        if self.writes.len() > WRITE_BUDGET {
            self.violate(
                "write-budget",
                format!(
                    "{} EndpointSlice writes within 60 s (budget {WRITE_BUDGET})",
                    self.writes.len()
                ),
            );
            // One report per burst.
            self.writes.clear();
        }
    }

    fn recently_drained(&self, address: IpAddr, now: Instant) -> bool {
        self.drained.contains(&address)
            || self
                .undrained_at
                .get(&address)
                .is_some_and(|t| now.duration_since(*t) < BALLOT_LAG)
    }

    /// Judges the evictions at least [`OWN_LAG`] old (all of them when `all`).
    fn settle(&mut self, now: Instant, all: bool) {
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|(at, _, _)| all || now.duration_since(*at) >= OWN_LAG);
        self.pending = later;
        for (at, address, writer) in due {
            if let Err(why) = self.justified(address, at, &writer) {
                self.violate("majority", format!("{writer} evicted {address}: {why}"));
            }
        }
    }

    /// The end of a run: judges what is still pending.
    pub fn finish(&mut self, now: Instant) {
        self.settle(now, true);
    }

    /// Whether some choice among each member's recent ballots gives a strict majority down on
    /// `address` at `at`: each live member counts down if any recent ballot (not cut off) saw
    /// it down, else abstains if it can, else counts up. Recent: in force during the
    /// [`BALLOT_LAG`] before `at`. The writer itself counts down: a leader counts its own
    /// verdicts as they are in memory, and one that flips back before the next publication
    /// (at most once a second, and not at all while its apiserver does not answer) never
    /// reaches the store — so the check can hold only the others' ballots against it.
    fn justified(&self, address: IpAddr, at: Instant, writer: &str) -> Result<(), String> {
        let (mut down, mut up) = (vec![writer], Vec::new());
        for (member, versions) in &self.ballots {
            if member == writer {
                continue;
            }
            let start = at.checked_sub(BALLOT_LAG).unwrap_or(at);
            let end = at;
            // The ones published in the window, and the one before (in force at its start).
            let first = versions.iter().rposition(|(t, _)| *t <= start).unwrap_or(0);
            let last = versions
                .iter()
                .rposition(|(t, _)| *t <= end)
                .map_or(first, |i| i + 1);
            let recent = &versions[first..last.max(first)];
            // The leader may count a member whose last write is up to MEMBER_LIVE old, and may
            // already hold one stale whose last write is MEMBER_EXPIRY old.
            let age = recent
                .last()
                .map_or(Duration::MAX, |(t, _)| at.saturating_duration_since(*t));
            if age > MEMBER_LIVE {
                continue;
            }
            let may_be_stale = age >= MEMBER_EXPIRY;
            let counted = |b: &Ballot| !b.is_empty() && b.values().any(|up| *up);
            let sees_down = recent
                .iter()
                .any(|(_, b)| counted(b) && b.get(&address) == Some(&false));
            let can_abstain = may_be_stale
                || recent
                    .iter()
                    .any(|(_, b)| !counted(b) || !b.contains_key(&address));
            if sees_down {
                down.push(member.as_str());
            } else if !can_abstain {
                up.push(member.as_str());
            }
        }
        if !down.is_empty() && down.len() > up.len() {
            Ok(())
        } else {
            Err(format!(
                "live ballots down {down:?}, up {up:?}: no strict majority down"
            ))
        }
    }

    /// The liveness checks at `now`.
    pub fn tick(&mut self, now: Instant, truth: &Truth) {
        self.settle(now, false);
        self.tick_others(now, truth);
        if self.target.is_empty() {
            return;
        }
        if let Some(since) = truth.calm_since
            && now.duration_since(since) >= CALM_BOUND
            && self.reported_calm != Some(since)
        {
            let evicted: Vec<IpAddr> = truth
                .source
                .iter()
                .filter(|a| !truth.drained.contains(a))
                .filter(|a| self.target.get(a) != Some(&true))
                .copied()
                .collect();
            if !evicted.is_empty() {
                self.reported_calm = Some(since);
                self.violate(
                    "healthy-evicted",
                    format!(
                        "{evicted:?} not ready in the target {} s after the last fault healed",
                        now.duration_since(since).as_secs()
                    ),
                );
            }
        }
        for (address, written) in &truth.drain_started {
            let Some(quiet) = truth.drains_only_since else {
                break;
            };
            let from = quiet.max(*written);
            let others_ready = self
                .target
                .iter()
                .any(|(a, r)| *r && a != address && !truth.drained.contains(a));
            if now.duration_since(from) >= DRAIN_BOUND
                && self.target.get(address) == Some(&true)
                && others_ready
                && self.reported_drains.insert((*address, *written))
            {
                self.violate(
                    "drain-ignored",
                    format!(
                        "{address}, drained {} s ago, is still ready while other endpoints are",
                        now.duration_since(*written).as_secs()
                    ),
                );
            }
        }
        for (address, since) in &truth.dead_alone {
            let others_ready = self
                .target
                .iter()
                .any(|(a, r)| *r && a != address && !truth.dead_alone.contains_key(a));
            if now.duration_since(*since) >= DEAD_BOUND
                && truth.source.contains(address)
                && self.target.get(address) == Some(&true)
                && others_ready
                && !self.reported_dead.contains(&(*address, *since))
            {
                self.reported_dead.insert((*address, *since));
                let detail = format!(
                    "{address}, dead for every host for {} s, is still ready",
                    now.duration_since(*since).as_secs()
                );
                self.violate("dead-ready", detail);
            }
        }
    }
}

/// Each invariant caught on a hand-built history; returns the names checked.
pub fn self_test() -> Result<Vec<&'static str>, String> {
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    let a = |n: u8| IpAddr::from([198, 51, 100, n]);
    let target = |r: &[(u8, bool)]| {
        r.iter()
            .map(|(n, ok)| (a(*n), *ok))
            .collect::<BTreeMap<_, _>>()
    };
    let ballot = |r: &[(u8, bool)]| r.iter().map(|(n, ok)| (a(*n), *ok)).collect::<Ballot>();
    let mut fired = Vec::new();
    let expect = |c: &Checker, name: &'static str, fired: &mut Vec<&'static str>| {
        if c.violations.iter().any(|v| v.invariant == name) {
            fired.push(name);
            Ok(())
        } else {
            Err(format!(
                "the {name} check did not fire on its crafted history"
            ))
        }
    };
    let clean = |c: &Checker, what: &str| {
        if c.violations.is_empty() {
            Ok(())
        } else {
            Err(format!("{what}: false alarm {:?}", c.violations))
        }
    };
    let all_ready = target(&[(11, true), (12, true), (13, true)]);

    // fence: node-2 writes while node-1 holds; node-1's own write is fine.
    let mut c = Checker::default();
    c.on_lease(at(0), Some("node-1".into()));
    c.on_slice_write(at(1), at(1), "node-1", None, all_ready.clone());
    clean(&c, "a holder's write")?;
    c.on_slice_write(at(2), at(2), "node-2", None, all_ready.clone());
    expect(&c, "fence", &mut fired)?;

    // wanted-delete
    let mut c = Checker::default();
    c.on_lease(at(0), Some("node-1".into()));
    c.on_slice_write(
        at(1),
        at(1),
        "node-1",
        Some("kubernetes-vip".into()),
        all_ready.clone(),
    );
    expect(&c, "wanted-delete", &mut fired)?;

    // last-ready
    let mut c = Checker::default();
    c.on_lease(at(0), Some("node-1".into()));
    c.on_slice_write(at(1), at(1), "node-1", None, target(&[(11, true)]));
    c.on_slice_write(at(2), at(2), "node-1", None, target(&[(11, false)]));
    expect(&c, "last-ready", &mut fired)?;

    // majority: two live ballots down justify; a stale third ballot does not count.
    let mut c = Checker::default();
    c.on_lease(at(0), Some("node-1".into()));
    c.on_slice_write(at(1), at(1), "node-1", None, all_ready.clone());
    c.on_member(
        at(100),
        "node-1",
        ballot(&[(11, true), (12, true), (13, false)]),
    );
    c.on_member(
        at(100),
        "node-2",
        ballot(&[(11, true), (12, true), (13, false)]),
    );
    c.on_member(
        at(100),
        "node-3",
        ballot(&[(11, true), (12, true), (13, true)]),
    );
    c.on_slice_write(
        at(101),
        at(101),
        "node-1",
        None,
        target(&[(11, true), (12, true), (13, false)]),
    );
    c.finish(at(110));
    clean(&c, "an eviction two of three ballots justify")?;
    // The writer counts its own verdicts before it publishes them (here: never).
    let mut c = Checker::default();
    c.on_lease(at(0), Some("node-1".into()));
    c.on_slice_write(at(1), at(1), "node-1", None, all_ready.clone());
    c.on_member(
        at(99),
        "node-1",
        ballot(&[(11, true), (12, true), (13, true)]),
    );
    c.on_member(
        at(100),
        "node-2",
        ballot(&[(11, true), (12, true), (13, false)]),
    );
    c.on_member(
        at(100),
        "node-3",
        ballot(&[(11, true), (12, true), (13, true)]),
    );
    c.on_slice_write(
        at(101),
        at(101),
        "node-1",
        None,
        target(&[(11, true), (12, true), (13, false)]),
    );
    c.on_member(
        at(102),
        "node-1",
        ballot(&[(11, true), (12, true), (13, false)]),
    );
    c.finish(at(110));
    clean(
        &c,
        "an eviction the writer's own unpublished verdict and one other ballot justify",
    )?;
    let mut c = Checker::default();
    c.on_lease(at(0), Some("node-1".into()));
    c.on_slice_write(at(1), at(1), "node-1", None, all_ready.clone());
    // node-3 saw .12 down, then stopped publishing (crashed) 60 s before the eviction.
    c.on_member(
        at(40),
        "node-3",
        ballot(&[(11, true), (12, false), (13, true)]),
    );
    c.on_member(
        at(99),
        "node-1",
        ballot(&[(11, true), (12, false), (13, true)]),
    );
    c.on_member(
        at(99),
        "node-2",
        ballot(&[(11, true), (12, true), (13, true)]),
    );
    c.on_slice_write(
        at(100),
        at(100),
        "node-1",
        None,
        target(&[(11, true), (12, false), (13, true)]),
    );
    c.finish(at(110));
    expect(&c, "majority", &mut fired)?;

    // write-budget
    let mut c = Checker::default();
    c.on_lease(at(0), Some("node-1".into()));
    for i in 0..=WRITE_BUDGET as u64 {
        c.on_slice_write(
            at(1) + Duration::from_millis(i * 100),
            at(1),
            "node-1",
            None,
            all_ready.clone(),
        );
    }
    expect(&c, "write-budget", &mut fired)?;

    // healthy-evicted: calm for the bound, .13 still not ready.
    let mut c = Checker::default();
    c.on_lease(at(0), Some("node-1".into()));
    c.on_member(
        at(0),
        "node-1",
        ballot(&[(11, true), (12, true), (13, false)]),
    );
    c.on_member(
        at(0),
        "node-2",
        ballot(&[(11, true), (12, true), (13, false)]),
    );
    c.on_slice_write(
        at(1),
        at(1),
        "node-1",
        None,
        target(&[(11, true), (12, true), (13, false)]),
    );
    let mut truth = Truth {
        calm_since: Some(at(2)),
        source: [a(11), a(12), a(13)].into(),
        ..Truth::default()
    };
    c.tick(at(2) + CALM_BOUND - Duration::from_secs(1), &truth);
    clean(&c, "an eviction still inside the calm bound")?;
    c.tick(at(2) + CALM_BOUND, &truth);
    expect(&c, "healthy-evicted", &mut fired)?;

    // dead-ready: .13 dead alone for the bound and still ready.
    let mut c = Checker::default();
    c.on_lease(at(0), Some("node-1".into()));
    c.on_slice_write(at(1), at(1), "node-1", None, all_ready);
    truth.calm_since = None;
    truth.dead_alone.insert(a(13), at(2));
    c.tick(at(2) + DEAD_BOUND - Duration::from_secs(1), &truth);
    clean(&c, "a dead endpoint still inside its bound")?;
    c.tick(at(2) + DEAD_BOUND, &truth);
    expect(&c, "dead-ready", &mut fired)?;
    // drain-ignored: .12 drained, nothing else wrong, still ready after the bound.
    let mut c = Checker::default();
    c.on_lease(at(0), Some("node-1".into()));
    c.on_slice_write(
        at(1),
        at(1),
        "node-1",
        None,
        target(&[(11, true), (12, true), (13, true)]),
    );
    let truth = Truth {
        drained: [a(12)].into(),
        drain_started: [(a(12), at(2))].into(),
        drains_only_since: Some(at(0)),
        ..Truth::default()
    };
    c.tick(at(2) + DRAIN_BOUND - Duration::from_secs(1), &truth);
    clean(&c, "a drain still inside its bound")?;
    c.tick(at(2) + DRAIN_BOUND, &truth);
    expect(&c, "drain-ignored", &mut fired)?;
    crate::targets::self_test(&mut fired)?;
    Ok(fired)
}
