//! The fault schedule: drawn in full from the seed before the run starts ([`plan`]), then
//! played in virtual time ([`World::execute`]). Faults overlap (at most [`MAX_ACTIVE`] at a
//! time) but never two on the same thing: each takes locks (a door, a host, a path, the test
//! bed's request rules) and one that finds its locks taken when its time comes is skipped.
//!
//! To add a fault: a [`Fault`] variant, a line in [`draw`] (with its share of the draw), its
//! locks in [`Fault::locks`], and its apply and heal in [`World::apply`] / [`World::heal`].

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::time::Duration;

use endpoint_copier_testbed::{Failure, Match, Partition};
use tokio::time::Instant;

use crate::drains::Set;
use crate::net::{Door, PathFault};
use crate::world::{Dead, Opts, World, lock};

/// Faults active at once, at most: more would mostly break the majority and test nothing new.
const MAX_ACTIVE: usize = 2;
/// The group forms before the first fault.
const SETTLE: Duration = Duration::from_secs(20);

/// One fault, with what the seed chose for it.
#[derive(Clone, Debug)]
pub enum Fault {
    /// An apiserver killed, then restarted (its watch cache starts empty: 410s).
    Kill(usize),
    /// An apiserver hangs: connections accepted, nothing answered; it stays in the source.
    Hang(usize),
    /// `/readyz` answers 500 while the API serves.
    Unready(usize),
    /// Host `h` cannot reach apiserver `j` (its probes; its API too when `j` is its own).
    Path(usize, usize, PathFault),
    /// Node `j` partitioned from the others both ways; its own apiserver, cut off from etcd,
    /// leaves its requests unanswered.
    Partition(usize),
    /// Host `h` crashes and restarts after the hold, keeping its runtime directory or not.
    Crash(usize, bool),
    /// The leader's host crashes (host `h` when nobody leads), keeping its runtime dir or not.
    LeaderCrash(usize, bool),
    /// A burst of `n` failures on host `h`'s requests.
    Burst(usize, Failure, usize),
    /// The reply to host `h`'s next write of that resource is lost after the commit.
    LostReply(usize, &'static str),
    /// Host `h`'s election Lease requests fail with 503 while everything else works.
    LeaseFails(usize),
    /// Host `h`'s next 50 API requests each wait this long at its apiserver (a slow path).
    Slow(usize, Duration),
    /// History compacted and every watch closed: 410 and relists (instantaneous).
    Compaction,
    /// Node `j` drained (`endpoint-copier/drain: "true"`), then resumed.
    Drain(usize),
    /// `endpoint-copier drain --for secs` run on host `h` for Node `j`: written with host
    /// `h`'s wall clock (which may be off); it ends by itself, nobody resumes it.
    TimedDrain(usize, usize, u64),
    /// Host `h`'s wall clock stepped to `secs` off the true time (NTP, an operator, a VM
    /// restored), then back to its usual drift.
    ClockStep(usize, i64),
    /// Host `h` restarted (`systemctl restart`) with the pair only some hosts have turned on
    /// (`Some(true)`), off, or toggled (`None`); its old config back at the heal.
    Reconfigure(usize, Option<bool>),
    /// The other cluster's apiserver killed (`Down`) or hung, for every host.
    RemoteOutage(Door),
    /// The remote Service's endpoints change (instantaneous): the seed's pick of them.
    RemoteChange(u8),
    /// Nothing for a while (long enough for the liveness bound).
    Calm,
}

/// What a fault holds while it is active.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Lock {
    Door(usize),
    Host(usize),
    Path(usize, usize),
    /// The test bed's request rules (`fail_next`, `commit_then_drop_next`, `fail_until_healed`):
    /// `heal_failures` ends them all at once.
    Rules,
    Drain(usize),
    Clock(usize),
    Remote,
}

impl Fault {
    fn locks(&self, n: usize) -> Vec<Lock> {
        match self {
            Fault::Kill(j) | Fault::Hang(j) | Fault::Unready(j) => vec![Lock::Door(*j)],
            Fault::Path(h, j, _) => vec![Lock::Path(*h, *j)],
            Fault::Partition(j) => {
                let mut l = vec![Lock::Host(*j), Lock::Door(*j)];
                for k in (0..n).filter(|k| k != j) {
                    l.push(Lock::Path(*j, k));
                    l.push(Lock::Path(k, *j));
                }
                l
            }
            // Decided when it happens: takes every host lock, so it runs alone among crashes.
            Fault::LeaderCrash(..) => (0..n).map(Lock::Host).collect(),
            Fault::Crash(h, _) => vec![Lock::Host(*h)],
            Fault::Burst(..) | Fault::LostReply(..) | Fault::LeaseFails(_) | Fault::Slow(..) => {
                vec![Lock::Rules]
            }
            Fault::Drain(j) | Fault::TimedDrain(j, ..) => vec![Lock::Drain(*j)],
            Fault::ClockStep(h, _) => vec![Lock::Clock(*h)],
            Fault::Reconfigure(h, _) => vec![Lock::Host(*h)],
            Fault::RemoteOutage(_) => vec![Lock::Remote],
            Fault::Compaction | Fault::Calm | Fault::RemoteChange(_) => Vec::new(),
        }
    }

    /// The name in the counts and the schedule digest.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Kill(_) => "apiserver-kill",
            Fault::Hang(_) => "apiserver-hang",
            Fault::Unready(_) => "apiserver-500",
            Fault::Path(..) => "path",
            Fault::Partition(_) => "partition",
            Fault::Crash(..) => "host-crash",
            Fault::LeaderCrash(..) => "leader-crash",
            Fault::Burst(..) => "5xx-burst",
            Fault::LostReply(..) => "lost-reply",
            Fault::LeaseFails(_) => "lease-fails",
            Fault::Slow(..) => "slow",
            Fault::Compaction => "compaction",
            Fault::Drain(_) => "drain",
            Fault::TimedDrain(..) => "timed-drain",
            Fault::ClockStep(..) => "clock-step",
            Fault::Reconfigure(..) => "reconfigure",
            Fault::RemoteOutage(_) => "remote-outage",
            Fault::RemoteChange(_) => "remote-change",
            Fault::Calm => "calm",
        }
    }

    /// The label in the trace and the schedule digest: only what the seed chose.
    fn label(&self) -> String {
        match self {
            Fault::Kill(j) => format!("apiserver {} killed", j + 1),
            Fault::Hang(j) => format!("apiserver {} hangs", j + 1),
            Fault::Unready(j) => format!("apiserver {} unready (500)", j + 1),
            Fault::Path(h, j, f) => format!("path node-{} -> apiserver {}: {f:?}", h + 1, j + 1),
            Fault::Partition(j) => format!("node-{} partitioned", j + 1),
            Fault::Crash(h, keep) => format!("node-{} down (keeps runtime dir: {keep})", h + 1),
            Fault::LeaderCrash(_, keep) => format!("leader down (keeps runtime dir: {keep})"),
            Fault::Burst(h, f, n) => format!("{n} x {f:?} for node-{}", h + 1),
            Fault::LostReply(h, what) => format!("reply lost: next {what} write of node-{}", h + 1),
            Fault::LeaseFails(h) => format!("node-{}'s election Lease requests fail", h + 1),
            Fault::Slow(h, d) => format!(
                "node-{}'s API requests slowed by {} ms",
                h + 1,
                d.as_millis()
            ),
            Fault::Compaction => "compaction, watches closed".to_owned(),
            Fault::Drain(j) => format!("node-{} drained", j + 1),
            Fault::TimedDrain(j, h, secs) => {
                format!("node-{} drained for {secs} s from node-{}", j + 1, h + 1)
            }
            Fault::ClockStep(h, secs) => format!("node-{}'s clock stepped to {secs:+} s", h + 1),
            Fault::Reconfigure(h, on) => format!(
                "node-{} restarted with api-internal {}",
                h + 1,
                match on {
                    Some(true) => "on",
                    Some(false) => "off",
                    None => "toggled",
                }
            ),
            Fault::RemoteOutage(door) => format!("the other cluster's apiserver {door:?}"),
            Fault::RemoteChange(pick) => format!("remote endpoints changed (pick {pick})"),
            Fault::Calm => "calm".to_owned(),
        }
    }
}

/// One planned fault.
#[derive(Clone, Debug)]
pub struct Planned {
    /// When it starts, from the run's start.
    pub at: Duration,
    /// How long it lasts.
    pub hold: Duration,
    /// What.
    pub fault: Fault,
}

/// One fault drawn from `rng` for `n` hosts.
fn draw(rng: &mut fastrand::Rng, n: usize) -> Fault {
    let (h, j) = (rng.usize(0..n), rng.usize(0..n));
    match rng.u32(0..120) {
        0..=10 => Fault::Kill(j),
        11..=19 => Fault::Hang(j),
        20..=27 => Fault::Unready(j),
        28..=38 => Fault::Path(
            h,
            j,
            match rng.u32(0..4) {
                0 => PathFault::Refuse,
                1 => PathFault::TlsAlert,
                2 => PathFault::TlsCert,
                _ => PathFault::BlackHole,
            },
        ),
        39..=47 => Fault::Partition(j),
        48..=56 => Fault::Crash(h, rng.bool()),
        57..=64 => Fault::LeaderCrash(h, rng.bool()),
        65..=70 => Fault::Burst(
            h,
            match rng.u32(0..3) {
                0 => Failure::InternalError,
                1 => Failure::ServiceUnavailable,
                _ => Failure::TooManyRequests {
                    retry_after_secs: 1,
                },
            },
            rng.usize(1..=20),
        ),
        71..=76 => Fault::LostReply(
            h,
            if rng.bool() {
                "endpointslices"
            } else {
                "leases"
            },
        ),
        77..=80 => Fault::LeaseFails(h),
        81..=83 => Fault::Slow(h, Duration::from_millis(rng.u64(200..=3_000))),
        84..=85 => Fault::Compaction,
        86..=94 => Fault::Drain(j),
        95..=100 => Fault::TimedDrain(j, h, rng.u64(5..=40)),
        101..=104 => Fault::ClockStep(h, rng.i64(-7_200..=7_200)),
        105..=109 => Fault::Reconfigure(h, None),
        110..=113 => Fault::RemoteOutage(if rng.bool() { Door::Down } else { Door::Hung }),
        114..=116 => Fault::RemoteChange(rng.u8(1..8)),
        _ => Fault::Calm,
    }
}

/// The whole schedule of a run, from the seed alone.
pub fn plan(rng: &mut fastrand::Rng, opts: &Opts) -> Vec<Planned> {
    let mut out = Vec::new();
    let mut at = SETTLE;
    while at < opts.duration {
        let fault = draw(rng, opts.hosts);
        let hold = match fault {
            Fault::Calm => crate::check::CALM_BOUND + Duration::from_secs(10),
            // It ends by itself; the fault is over then.
            Fault::TimedDrain(_, _, secs) => Duration::from_secs(secs),
            // Mostly short; one in five long enough for the dead-ready bound.
            _ if rng.u32(0..5) == 0 => Duration::from_millis(rng.u64(40_000..=90_000)),
            _ => Duration::from_millis(rng.u64(2_000..=40_000)),
        };
        out.push(Planned { at, hold, fault });
        // The next one: often while this one lasts; now and then after a calm long enough
        // for the liveness bound.
        at += if rng.u32(0..5) == 0 {
            hold + crate::check::CALM_BOUND + Duration::from_secs(5)
        } else {
            Duration::from_millis(rng.u64(1_000..=25_000))
        };
    }
    out
}

/// A named, scripted run. CI runs each once before the seeds; `SIM_SCENARIO=name` runs one.
pub fn scenario(name: &str) -> Option<Opts> {
    let (hosts, duration, plan, extra) = scripted(name)?;
    Some(Opts {
        hosts,
        duration,
        scenario: Some(plan),
        extra,
    })
}

/// A scenario: hosts, simulated time, schedule, and which hosts have the extra pair (`None`:
/// the seed's choice).
type Scripted = (usize, Duration, Vec<Planned>, Option<Vec<bool>>);

fn scripted(name: &str) -> Option<Scripted> {
    let s = Duration::from_secs;
    let at = |at: u64, hold: u64, fault: Fault| Planned {
        at: s(at),
        hold: s(hold),
        fault,
    };
    Some(match name {
        // Two hosts; one crashes and stays down, then the other's apiserver turns unready:
        // the crashed member's last ballot (all up) must stop counting once it is stale, or
        // the tie keeps the dead apiserver in the VIP for good.
        "stale-ballot" => (
            2,
            s(240),
            vec![
                at(20, 200, Fault::Crash(0, true)),
                at(30, 150, Fault::Unready(1)),
            ],
            None,
        ),
        // An apiserver hangs (TCP accepted, never answered): Kubernetes keeps it in
        // default/kubernetes, the quorum takes it out of the VIP.
        "hung-apiserver" => (3, s(150), vec![at(20, 90, Fault::Hang(1))], None),
        // The leader's host crashes for good: a peer takes over and the group keeps mirroring.
        "leader-dies" => (
            3,
            s(150),
            vec![
                at(20, 120, Fault::LeaderCrash(0, false)),
                at(40, 60, Fault::Unready(2)),
            ],
            None,
        ),
        // A drain before a planned restart of node-2's apiserver, then the restart.
        "planned-restart" => (
            3,
            s(150),
            vec![at(20, 60, Fault::Drain(1)), at(30, 20, Fault::Kill(1))],
            None,
        ),
        // Wall clocks two hours apart: a timed drain written on a follower two hours ahead,
        // then one written on a follower two hours behind. Each takes effect at once and ends
        // after its duration — never by the writer's clock against the leader's.
        "clock-drift" => (
            3,
            s(240),
            vec![
                at(20, 100, Fault::ClockStep(1, 7_200)),
                at(30, 20, Fault::TimedDrain(2, 1, 20)),
                at(125, 100, Fault::ClockStep(2, -7_200)),
                at(130, 20, Fault::TimedDrain(1, 2, 20)),
            ],
            Some(vec![true, true, true]),
        ),
        // Only node-1 configures api-internal, and leads. Its host crashes: node-2, without
        // the pair, leads and must keep the pair's slices while node-1's record names it
        // (`[members] forget_after`). node-1 comes back, then restarts without the pair: now
        // nobody wants them, and they may go.
        "config-differs" => (
            2,
            s(240),
            vec![
                at(30, 40, Fault::LeaderCrash(0, true)),
                at(100, 60, Fault::Reconfigure(0, Some(false))),
            ],
            Some(vec![true, false]),
        ),
        // The other cluster's apiserver hangs for longer than `keep_last_known` (60 s here),
        // and its Service changes meanwhile: the last known endpoints stay (never the last
        // ready one goes), and the change arrives after the heal.
        "remote-outage" => (
            3,
            s(240),
            vec![
                at(20, 90, Fault::RemoteOutage(Door::Hung)),
                at(40, 0, Fault::RemoteChange(0b100)),
            ],
            None,
        ),
        _ => return None,
    })
}

/// Every scenario's name.
pub const SCENARIOS: &[&str] = &[
    "stale-ballot",
    "hung-apiserver",
    "leader-dies",
    "planned-restart",
    "clock-drift",
    "config-differs",
    "remote-outage",
];

/// A step of the schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Heal(usize),
    Apply(usize),
}

impl World {
    /// Plays `plan` until `end`; whatever is still active at the end stays (the run stops).
    pub async fn execute(&mut self, plan: Vec<Planned>, end: Instant) {
        let start = end - self.duration();
        let n = self.hosts.len();
        // Heals sort before applies at the same instant.
        let mut queue: BinaryHeap<Reverse<(Duration, Step)>> = plan
            .iter()
            .enumerate()
            .map(|(i, p)| Reverse((p.at, Step::Apply(i))))
            .collect();
        let mut held: BTreeSet<Lock> = BTreeSet::new();
        let mut active: Vec<Option<Vec<Lock>>> = vec![None; plan.len()];
        let mut running = 0usize;
        while let Some(Reverse((at, step))) = queue.pop() {
            let when = start + at;
            if when >= end {
                break;
            }
            tokio::time::sleep_until(when).await;
            match step {
                Step::Apply(i) => {
                    let p = &plan[i];
                    let locks = p.fault.locks(n);
                    let instant = matches!(
                        p.fault,
                        Fault::Compaction | Fault::Calm | Fault::RemoteChange(_)
                    );
                    let free = locks.iter().all(|l| !held.contains(l));
                    if !free || (!instant && running >= MAX_ACTIVE) {
                        lock(&self.lab).schedule(&format!("skipped: {}", p.fault.label()));
                        continue;
                    }
                    self.count(p.fault.kind());
                    self.apply(&p.fault).await;
                    if !instant {
                        held.extend(locks.iter().cloned());
                        active[i] = Some(locks);
                        running += 1;
                        queue.push(Reverse((p.at + p.hold, Step::Heal(i))));
                    }
                }
                Step::Heal(i) => {
                    if let Some(locks) = active[i].take() {
                        self.heal(&plan[i].fault).await;
                        for l in &locks {
                            held.remove(l);
                        }
                        running -= 1;
                    }
                }
            }
        }
        tokio::time::sleep_until(end).await;
    }

    async fn apply(&mut self, fault: &Fault) {
        let n = self.hosts.len();
        let label = fault.label();
        match fault {
            Fault::Compaction => {
                {
                    let mut lab = lock(&self.lab);
                    lab.schedule(&format!("fault: {label}"));
                    lab.event(&format!("fault: {label}"));
                }
                self.bed.compact();
                self.bed.close_watches();
                return;
            }
            Fault::Calm => {
                let mut lab = lock(&self.lab);
                lab.schedule("calm");
                lab.event("calm");
                return;
            }
            Fault::RemoteChange(pick) => {
                {
                    let mut lab = lock(&self.lab);
                    lab.schedule(&format!("fault: {label}"));
                    lab.event(&format!("fault: {label}"));
                }
                // A non-empty subset of the three addresses, by the pick's bits.
                let addresses = crate::world::REMOTE_ADDRESSES
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| pick & (1 << i) != 0)
                    .map(|(_, a)| *a)
                    .collect();
                self.write_remote(&addresses);
                return;
            }
            Fault::LeaderCrash(h, keep) => {
                let l = self.leader().unwrap_or(*h);
                self.leader_crashed = Some(l);
                {
                    let mut lab = lock(&self.lab);
                    lab.schedule(&format!("fault: {label}"));
                    lab.fault_on_as(label.clone(), true);
                    lab.event(&format!("(the leader is node-{})", l + 1));
                }
                self.crash(l, *keep).await;
                return;
            }
            Fault::Crash(..) => {
                let mut lab = lock(&self.lab);
                lab.schedule(&format!("fault: {label}"));
                lab.fault_on_as(label, true);
            }
            Fault::Drain(_) | Fault::TimedDrain(..) => lock(&self.lab).drain_on(label),
            Fault::ClockStep(..) => lock(&self.lab).harmless_on(&label),
            _ => lock(&self.lab).fault_on(label),
        }
        match fault {
            Fault::Kill(j) => {
                self.set_door(*j, Door::Down);
                self.mark_dead(*j, Some(Dead::Silent));
            }
            Fault::Hang(j) => {
                self.set_door(*j, Door::Hung);
                self.mark_dead(*j, Some(Dead::Silent));
            }
            Fault::Unready(j) => {
                self.set_door(*j, Door::Unready);
                self.mark_dead(*j, Some(Dead::ServingApi));
            }
            Fault::Path(h, j, f) => self.net.set_path(*h, *j, Some(*f)),
            Fault::Partition(j) => {
                for k in (0..n).filter(|k| k != j) {
                    self.net.set_path(*j, k, Some(PathFault::BlackHole));
                    self.net.set_path(k, *j, Some(PathFault::BlackHole));
                }
                self.bed
                    .partition(&self.hosts[*j].identity, Partition::BlackHole);
            }
            Fault::Crash(h, keep) => self.crash(*h, *keep).await,

            Fault::Burst(h, f, count) => self.bed.fail_next(
                Match::any().identity(&self.hosts[*h].identity),
                *count,
                f.clone(),
            ),
            Fault::LostReply(h, what) => self.bed.commit_then_drop_next(
                Match::any()
                    .identity(&self.hosts[*h].identity)
                    .resource(*what),
                1,
            ),
            Fault::LeaseFails(h) => self.bed.fail_until_healed(
                Match::any()
                    .identity(&self.hosts[*h].identity)
                    .resource("leases")
                    .namespace("kube-system"),
                Failure::ServiceUnavailable,
            ),
            Fault::Slow(h, d) => {
                self.bed
                    .delay_next(Match::any().identity(&self.hosts[*h].identity), 50, *d);
            }
            Fault::Drain(j) => self.set_drain(*j, &Set::Lasting),
            Fault::TimedDrain(j, h, secs) => {
                let wall = self.wall_of(*h);
                self.set_drain(*j, &Set::Timed { secs: *secs, wall });
            }
            Fault::ClockStep(h, secs) => {
                self.hosts[*h]
                    .drift
                    .set(jiff::SignedDuration::from_secs(*secs));
            }
            Fault::Reconfigure(h, on) => {
                let before = self.hosts[*h].extra;
                self.reconfigured.insert(*h, before);
                self.reconfigure(*h, on.unwrap_or(!before)).await;
            }
            Fault::RemoteOutage(door) => self.net.set_remote(*door),
            Fault::LeaderCrash(..) | Fault::Compaction | Fault::Calm | Fault::RemoteChange(_) => {}
        }
    }

    async fn heal(&mut self, fault: &Fault) {
        let n = self.hosts.len();
        match fault {
            Fault::Kill(j) => {
                self.set_door(*j, Door::Up);
                self.mark_dead(*j, None);
                // A restarted apiserver's watch cache starts at the current revision.
                self.bed.compact();
            }
            Fault::Hang(j) => {
                self.set_door(*j, Door::Up);
                self.mark_dead(*j, None);
            }
            Fault::Unready(j) => {
                self.set_door(*j, Door::Up);
                self.mark_dead(*j, None);
            }
            Fault::Path(h, j, _) => self.net.set_path(*h, *j, None),
            Fault::Partition(j) => {
                for k in (0..n).filter(|k| k != j) {
                    self.net.set_path(*j, k, None);
                    self.net.set_path(k, *j, None);
                }
                self.bed.heal(&self.hosts[*j].identity);
            }
            Fault::Crash(h, _) => self.start(*h),
            Fault::LeaderCrash(..) => {
                if let Some(l) = self.leader_crashed.take() {
                    self.start(l);
                }
            }
            Fault::Burst(..) | Fault::LostReply(..) | Fault::LeaseFails(_) | Fault::Slow(..) => {
                self.bed.heal_failures();
            }
            Fault::Drain(j) => self.set_drain(*j, &Set::Off),
            // Its annotations stay, ended (as after `drain --for`); a later drain replaces them.
            Fault::TimedDrain(..) => {}
            Fault::ClockStep(h, _) => {
                let usual = self.hosts[*h].usual_drift;
                self.hosts[*h].drift.set(usual);
                lock(&self.lab).harmless_off(&fault.label());
                return;
            }
            Fault::Reconfigure(h, _) => {
                if let Some(before) = self.reconfigured.remove(h) {
                    self.reconfigure(*h, before).await;
                }
            }
            Fault::RemoteOutage(_) => self.net.set_remote(Door::Up),
            Fault::Compaction | Fault::Calm | Fault::RemoteChange(_) => return,
        }
        lock(&self.lab).fault_off(&fault.label());
    }
}
