//! Who is live in the group, judged by the local clock: [`Members`] records, per member Lease, its
//! content and the local monotonic instant it was last seen to *change*, and answers the leader's
//! questions — which copies are live, does anyone else still want this target, which pairs are
//! configured on some live copies but not others, which members may be forgotten.
//!
//! Pure except for [`watch`], which opens the member watch the engine polls; every other function
//! takes the current instant. Another host's `renewTime` is never compared with our clock (the
//! same rule as the election Lease): a member is live for its `leaseDurationSeconds` after we saw
//! its record change — at most our own expiry, so that a record claiming a longer life (a forged
//! `2147483647`) counts only while its writer keeps writing. Two live processes writing under one
//! identity are [`Twin`]s (`twins.rs`): their pairs still hold, their ballots do not count
//! ([`Members::ballots`]). Deciding what to do with the answers (hold, report, delete) is
//! `daemon`'s.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tokio::time::Instant;

use super::member::{DecodeError, MemberRecord, PairRef};
use super::twins::{Twin, Writers};
use super::{Group, Settings};
use crate::names::{self, ServiceRef};
use crate::watch::{Events, watch_backoff};

/// Watches `group`'s member Leases (label `endpoint-copier/group=<value>,endpoint-copier/member=true`
/// in the member namespace, and read-only in the election Lease's namespace when that differs,
/// where older versions keep theirs: `merge.rs`), for the engine to poll into
/// [`Members::apply`]. Another group's members carry another group label and are never seen.
pub fn watch(client: &Client, group: &Group) -> Events<Lease> {
    let one = |namespace: &str| -> Events<Lease> {
        let api: Api<Lease> = Api::namespaced(client.clone(), namespace);
        crate::watch::paced(
            watcher::watcher(
                api,
                watcher::Config::default().labels(&group.member_selector()),
            ),
            watch_backoff(),
        )
    };
    match group.legacy_members_namespace() {
        None => one(group.members_namespace()),
        Some(legacy) => super::merge::merged(one(group.members_namespace()), one(legacy), legacy),
    }
}

/// The answer to "may the leader delete this target's slices?" ([`Members::who_wants`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wanted {
    /// The member list has not arrived yet: nobody can be ruled out, hold.
    Unknown,
    /// No other member, live or recently stale, configures the target: the delete is allowed.
    Nobody,
    /// Configured on these live members (identities, sorted): hold and report, never delete.
    Live(Vec<String>),
    /// Configured only on members that are not live but not gone for good either (identities,
    /// sorted): hold; they may come back within `forget_after`.
    Stale(Vec<String>),
}

impl Wanted {
    /// Whether the leader may delete the target's slices: only for [`Wanted::Nobody`].
    pub fn allows_delete(&self) -> bool {
        matches!(self, Wanted::Nobody)
    }
}

/// A pair configured on some live members but not on others.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mismatch {
    /// The pair's source Service.
    pub source: ServiceRef,
    /// The pair's target Service.
    pub target: ServiceRef,
    /// Identities of the live members whose config names the pair (sorted).
    pub configured_on: Vec<String>,
    /// Identities of the live members whose config does not (sorted).
    pub missing_on: Vec<String>,
}

/// A member Lease not seen to change for `forget_after`: the leader may delete it with
/// [`super::member::forget`], whose preconditions (uid, resourceVersion) make sure it was not
/// renewed in between.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gone {
    /// Namespace of the member Lease (the member namespace, or the legacy place).
    pub namespace: String,
    /// Name of the member Lease.
    pub name: String,
    /// The identity it names.
    pub identity: String,
    /// Its uid, as last seen.
    pub uid: Option<String>,
    /// Its resourceVersion, as last seen.
    pub resource_version: Option<String>,
}

/// What of a member Lease counts as a change: its spec (a renewal rewrites `renewTime`) and the
/// record annotations (pairs, verdicts). Label or other metadata edits by a person do not make a
/// dead member live.
type Fingerprint = (Option<LeaseSpec>, Option<String>, Option<String>);

/// One member Lease as last seen.
#[derive(Clone, Debug)]
struct Seen {
    /// Its namespace.
    namespace: String,
    /// Its name.
    name: String,
    /// Its record, or why it cannot be read (such a member wants everything: see `wants`).
    content: Result<MemberRecord, DecodeError>,
    /// The identity it names (its object name when it names none).
    identity: String,
    uid: Option<String>,
    resource_version: Option<String>,
    fingerprint: Fingerprint,
    /// When we saw the fingerprint change (local monotonic clock).
    changed_at: Instant,
    /// How long it stays live after a change: its `leaseDurationSeconds`, at most our expiry
    /// (our expiry when absent).
    duration: Duration,
    /// Whether we have seen it change since we first read it: a record first read from a list
    /// may be the last one a host wrote before it died, however long ago.
    renewed: bool,
    /// Who wrote it lately, by nonce (see `twins.rs`).
    writers: Writers,
}

impl Seen {
    fn live_until(&self) -> Instant {
        self.changed_at + self.duration
    }

    fn gone_at(&self, forget_after: Duration) -> Instant {
        self.changed_at + forget_after.max(self.duration)
    }

    /// Whether this member configures a pair into `target`. An unreadable record might: it
    /// counts as wanting every target, so what we cannot read is never deleted.
    fn wants(&self, target: &ServiceRef) -> bool {
        match &self.content {
            Ok(record) => record.pairs.iter().any(|(_, t)| t == target),
            Err(_) => true,
        }
    }
}

/// The members of one group as seen through the member watch.
#[derive(Clone, Debug)]
pub struct Members {
    settings: Settings,
    /// Our own identity: its member Lease is ours, and what we want the engine already knows
    /// from its config (our published record may lag behind a restart).
    own: String,
    /// By member Lease `namespace/name`.
    seen: BTreeMap<String, Seen>,
    /// Objects of a re-list in progress (between `Init` and `InitDone`).
    buffer: Option<Vec<Lease>>,
    /// Whether a full list has arrived.
    ready: bool,
}

impl Members {
    /// An empty view for the copy `own_identity`, judging liveness with `settings`.
    pub fn new(settings: Settings, own_identity: &str) -> Members {
        Members {
            settings,
            own: own_identity.to_owned(),
            seen: BTreeMap::new(),
            buffer: None,
            ready: false,
        }
    }

    /// Our own identity.
    pub fn own(&self) -> &str {
        &self.own
    }

    /// The timings members are judged with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Whether the first full list has arrived; before that [`Members::who_wants`] says
    /// [`Wanted::Unknown`].
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// Applies one event of [`watch`] observed at `now`. Returns whether something the answers
    /// depend on changed beyond a plain renewal of a live member: a member appeared, vanished,
    /// changed content, or came back after being stale.
    pub fn apply(&mut self, event: Event<Lease>, now: Instant) -> bool {
        match event {
            Event::Init => {
                self.buffer = Some(Vec::new());
                false
            }
            Event::InitApply(lease) => {
                if let Some(buffer) = self.buffer.as_mut() {
                    buffer.push(lease);
                }
                false
            }
            Event::InitDone => {
                let fresh = self.buffer.take().unwrap_or_default();
                let mut changed = !self.ready;
                let mut next = BTreeMap::new();
                for lease in fresh.iter().filter(|l| l.metadata.name.is_some()) {
                    let key = super::merge::key(lease);
                    let (seen, news) = self.observe(self.seen.get(&key), lease, now, false);
                    changed |= news;
                    next.insert(key, seen);
                }
                changed |= self.seen.keys().any(|k| !next.contains_key(k));
                self.seen = next;
                self.ready = true;
                changed
            }
            Event::Apply(lease) => {
                if lease.metadata.name.is_none() {
                    return false;
                }
                let key = super::merge::key(&lease);
                let (seen, news) = self.observe(self.seen.get(&key), &lease, now, true);
                self.seen.insert(key, seen);
                news
            }
            Event::Delete(lease) => {
                lease.metadata.name.is_some()
                    && self.seen.remove(&super::merge::key(&lease)).is_some()
            }
        }
    }

    /// The new state of a member Lease seen at `now`, and whether it is news (see `apply`).
    /// `written_now`: it came as a watch event, i.e. it was just written (a list may hold a dead
    /// host's last record).
    fn observe(
        &self,
        previous: Option<&Seen>,
        lease: &Lease,
        now: Instant,
        written_now: bool,
    ) -> (Seen, bool) {
        let annotation = |key: &str| {
            lease
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(key).cloned())
        };
        let fingerprint: Fingerprint = (
            lease.spec.clone(),
            annotation(names::MEMBER_PAIRS_ANNOTATION),
            annotation(names::MEMBER_VERDICTS_ANNOTATION),
        );
        let content = MemberRecord::from_lease(lease);
        let identity = match &content {
            Ok(record) => record.identity.clone(),
            Err(_) => super::merge::key(lease),
        };
        // A record's own duration is honoured up to our expiry, never beyond: a member counts
        // only while its writer keeps writing, whatever it claims.
        let duration = match lease.spec.as_ref().and_then(|s| s.lease_duration_seconds) {
            Some(secs) if secs > 0 => {
                Duration::from_secs(u64::from(secs.unsigned_abs())).min(self.settings.expiry)
            }
            _ => self.settings.expiry,
        };
        let mut writers = previous.map(|p| p.writers.clone()).unwrap_or_default();
        let (changed_at, news, renewed) = match previous {
            Some(p) if p.fingerprint == fingerprint => (p.changed_at, false, p.renewed),
            // Seen renewing for the first time is news too: its ballot starts to count.
            Some(p) => (
                now,
                p.content != content || now >= p.live_until() || !p.renewed,
                true,
            ),
            None => (now, true, written_now),
        };
        if changed_at == now {
            let nonce = content.as_ref().ok().and_then(|r| r.nonce.as_deref());
            writers.wrote(nonce, now, self.twin_window());
        }
        let seen = Seen {
            namespace: lease.metadata.namespace.clone().unwrap_or_default(),
            name: lease.metadata.name.clone().unwrap_or_default(),
            content,
            identity,
            uid: lease.metadata.uid.clone(),
            resource_version: lease.metadata.resource_version.clone(),
            fingerprint,
            changed_at,
            duration,
            renewed,
            writers,
        };
        (seen, news)
    }

    /// Members that look live but have not been seen renewing since this copy first read them
    /// (ours excepted), sorted: until they renew or turn stale, their records may be a dead
    /// host's last words, and the ballots are not complete.
    pub fn unconfirmed(&self, now: Instant) -> Vec<String> {
        let mut ids: Vec<String> = self
            .seen
            .values()
            .filter(|s| now < s.live_until() && !s.renewed && s.identity != self.own)
            .map(|s| s.identity.clone())
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// How long a nonce's writes are remembered to tell a twin: two expiries (a twin writes at
    /// every heartbeat, so it shows within two).
    fn twin_window(&self) -> Duration {
        2 * self.settings.expiry
    }

    /// The identities under which more than one live process writes: a member Lease whose
    /// writers take turns, or a live record whose writer says it saw a twin. Sorted.
    pub fn twins(&self, now: Instant) -> Vec<Twin> {
        let mut by_identity: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for seen in self.seen.values() {
            let taking_turns = seen.writers.taking_turns(now, self.twin_window());
            if !taking_turns.is_empty() {
                by_identity
                    .entry(seen.identity.clone())
                    .or_default()
                    .extend(taking_turns);
            }
            if let Ok(record) = &seen.content
                && let Some(mark) = &record.twin
                && now < seen.live_until()
            {
                let nonces = by_identity.entry(seen.identity.clone()).or_default();
                nonces.insert(super::twins::label(&record.nonce));
                nonces.insert(mark.clone());
            }
        }
        by_identity
            .into_iter()
            .map(|(identity, nonces)| Twin {
                identity,
                nonces: nonces.into_iter().collect(),
            })
            .collect()
    }

    /// The live members whose ballots count: [`Members::live`] without the [`Twin`]s (two
    /// processes under one identity overwrite each other's verdicts, so neither speaks for
    /// it). Ours included unless we are a twin.
    pub fn ballots(&self, now: Instant) -> BTreeMap<String, MemberRecord> {
        let twins: BTreeSet<String> = self.twins(now).into_iter().map(|t| t.identity).collect();
        self.live(now)
            .into_iter()
            .filter(|(id, _)| !twins.contains(id))
            .collect()
    }

    /// The live members (changed within their duration) by identity, with their records; ours
    /// included. Members whose record cannot be read are left out (see [`Members::unreadable`]).
    pub fn live(&self, now: Instant) -> BTreeMap<String, MemberRecord> {
        let mut newest: BTreeMap<String, &Seen> = BTreeMap::new();
        for seen in self.seen.values().filter(|s| now < s.live_until()) {
            if let Ok(record) = &seen.content {
                let slot = newest.entry(record.identity.clone()).or_insert(seen);
                if seen.changed_at > slot.changed_at {
                    *slot = seen;
                }
            }
        }
        newest
            .into_iter()
            .filter_map(|(id, s)| s.content.clone().ok().map(|r| (id, r)))
            .collect()
    }

    /// Members not live but not gone for good, by identity (sorted, deduplicated).
    pub fn stale(&self, now: Instant) -> Vec<String> {
        let live = self.live(now);
        let stale: BTreeSet<String> = self
            .seen
            .values()
            .filter(|s| now >= s.live_until() && now < s.gone_at(self.settings.forget_after))
            .map(|s| s.identity.clone())
            .filter(|id| !live.contains_key(id))
            .collect();
        stale.into_iter().collect()
    }

    /// Member Leases not seen to change for `forget_after` (and at least their own duration):
    /// they no longer hold anything, and the leader may delete them.
    pub fn gone_for_good(&self, now: Instant) -> Vec<Gone> {
        self.seen
            .values()
            .filter(|s| now >= s.gone_at(self.settings.forget_after))
            .map(|s| Gone {
                namespace: s.namespace.clone(),
                name: s.name.clone(),
                identity: s.identity.clone(),
                uid: s.uid.clone(),
                resource_version: s.resource_version.clone(),
            })
            .collect()
    }

    /// Member Leases whose record cannot be read and that are not gone for good, by
    /// `namespace/name`, with the reason (for a warning: they hold every target until fixed or
    /// forgotten).
    pub fn unreadable(&self, now: Instant) -> Vec<(String, DecodeError)> {
        self.seen
            .iter()
            .filter(|(_, s)| now < s.gone_at(self.settings.forget_after))
            .filter_map(|(key, s)| s.content.clone().err().map(|e| (key.clone(), e)))
            .collect()
    }

    /// Whether any member other than us still wants `target`'s slices: asked by the leader before
    /// it deletes the slices of a target its own config and annotations no longer name. Our own
    /// member Lease is ignored: the engine's config is the truth about us, and our published
    /// record may still show what we wanted before a restart.
    pub fn who_wants(&self, target: &ServiceRef, now: Instant) -> Wanted {
        if !self.ready {
            return Wanted::Unknown;
        }
        let mut live = BTreeSet::new();
        let mut stale = BTreeSet::new();
        for seen in self.seen.values() {
            if seen.identity == self.own || !seen.wants(target) {
                continue;
            }
            if now < seen.live_until() {
                live.insert(seen.identity.clone());
            } else if now < seen.gone_at(self.settings.forget_after) {
                stale.insert(seen.identity.clone());
            }
        }
        if !live.is_empty() {
            Wanted::Live(live.into_iter().collect())
        } else if !stale.is_empty() {
            Wanted::Stale(stale.into_iter().collect())
        } else {
            Wanted::Nobody
        }
    }

    /// Pairs configured on some live members but not on others, sorted; `own` (our configured
    /// pairs) stands for our own record, and we always count as live. Empty with fewer than two
    /// live members.
    pub fn mismatches(&self, own: &BTreeSet<PairRef>, now: Instant) -> Vec<Mismatch> {
        let mut configs: BTreeMap<String, BTreeSet<PairRef>> = self
            .live(now)
            .into_iter()
            .map(|(id, record)| (id, record.pairs))
            .collect();
        configs.insert(self.own.clone(), own.clone());
        if configs.len() < 2 {
            return Vec::new();
        }
        let all: BTreeSet<&PairRef> = configs.values().flatten().collect();
        all.into_iter()
            .filter_map(|pair| {
                let (configured_on, missing_on): (Vec<&String>, Vec<&String>) =
                    configs.keys().partition(|id| configs[*id].contains(pair));
                (!missing_on.is_empty()).then(|| Mismatch {
                    source: pair.0.clone(),
                    target: pair.1.clone(),
                    configured_on: configured_on.into_iter().cloned().collect(),
                    missing_on: missing_on.into_iter().cloned().collect(),
                })
            })
            .collect()
    }

    /// The next instant after `now` at which an answer may change by time alone (a member
    /// turning stale, or gone for good, or twins no longer taking turns), for the engine's
    /// timer; `None` when none will.
    pub fn next_change(&self, now: Instant) -> Option<Instant> {
        let window = self.twin_window();
        self.seen
            .values()
            .flat_map(|s| {
                [
                    Some(s.live_until()),
                    Some(s.gone_at(self.settings.forget_after)),
                    s.writers.turns_end(now, window),
                ]
            })
            .flatten()
            .filter(|t| *t > now)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::member::member_lease;
    use jiff::Timestamp;
    use proptest::prelude::*;

    const SETTINGS: Settings = Settings {
        heartbeat: Duration::from_secs(10),
        expiry: Duration::from_secs(30),
        forget_after: Duration::from_secs(900),
    };

    fn svc(s: &str) -> ServiceRef {
        s.parse().unwrap()
    }

    fn pair(n: u8) -> PairRef {
        (svc(&format!("ns/src-{n}")), svc(&format!("ns/dst-{n}")))
    }

    /// A member Lease of the default group for `identity` configured with `pairs`, renewed at
    /// wall-clock second `renewed` (which we never interpret, but which makes each renewal a
    /// change).
    fn lease(identity: &str, pairs: &[u8], renewed: i64) -> Lease {
        let record = MemberRecord::new(identity, pairs.iter().map(|n| pair(*n)));
        let mut l = member_lease(
            &Group::default_group(),
            &record,
            SETTINGS.expiry,
            Timestamp::from_second(1_700_000_000 + renewed).unwrap(),
        )
        .unwrap();
        l.metadata.uid = Some(format!("uid-{identity}"));
        l.metadata.resource_version = Some(renewed.to_string());
        l
    }

    fn listed(leases: Vec<Lease>, now: Instant) -> Members {
        let mut m = Members::new(SETTINGS, "self");
        m.apply(Event::Init, now);
        for l in leases {
            m.apply(Event::InitApply(l), now);
        }
        m.apply(Event::InitDone, now);
        m
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn before_the_first_list_nobody_can_be_ruled_out() {
        let m = Members::new(SETTINGS, "self");
        assert_eq!(m.who_wants(&pair(1).1, Instant::now()), Wanted::Unknown);
        assert!(!Wanted::Unknown.allows_delete());
        assert!(Wanted::Nobody.allows_delete());
    }

    #[test]
    fn a_target_configured_on_a_live_member_is_held() {
        let t0 = Instant::now();
        let m = listed(vec![lease("node-2", &[1], 0)], t0);
        assert_eq!(
            m.who_wants(&pair(1).1, t0 + secs(29)),
            Wanted::Live(vec!["node-2".into()])
        );
        assert_eq!(m.who_wants(&pair(2).1, t0), Wanted::Nobody);
    }

    #[test]
    fn a_member_not_renewed_turns_stale_then_gone_for_good() {
        let t0 = Instant::now();
        let m = listed(vec![lease("node-2", &[1], 0)], t0);
        assert!(m.live(t0 + secs(29)).contains_key("node-2"));
        assert!(m.live(t0 + secs(30)).is_empty());
        assert_eq!(m.stale(t0 + secs(30)), vec!["node-2".to_owned()]);
        assert_eq!(
            m.who_wants(&pair(1).1, t0 + secs(30)),
            Wanted::Stale(vec!["node-2".into()])
        );
        assert!(m.gone_for_good(t0 + secs(899)).is_empty());
        let gone = m.gone_for_good(t0 + secs(900));
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].identity, "node-2");
        assert_eq!(gone[0].uid.as_deref(), Some("uid-node-2"));
        assert_eq!(gone[0].resource_version.as_deref(), Some("0"));
        assert_eq!(m.who_wants(&pair(1).1, t0 + secs(900)), Wanted::Nobody);
        assert!(m.stale(t0 + secs(900)).is_empty());
    }

    #[test]
    fn a_renewal_keeps_a_member_live_and_a_repeated_record_does_not() {
        let t0 = Instant::now();
        let mut m = listed(vec![lease("node-2", &[1], 0)], t0);
        // The same record seen again (a re-list, a resync) is no change.
        assert!(!m.apply(Event::Apply(lease("node-2", &[1], 0)), t0 + secs(20)));
        assert!(m.live(t0 + secs(30)).is_empty());
        // A renewal (new renewTime) restarts the clock; the first one seen confirms a listed
        // member (news: its ballot starts to count), later ones are no news while live.
        assert!(m.apply(Event::Apply(lease("node-2", &[1], 10)), t0 + secs(25)));
        assert!(!m.apply(Event::Apply(lease("node-2", &[1], 11)), t0 + secs(25)));
        assert!(m.live(t0 + secs(54)).contains_key("node-2"));
        // Coming back after being stale is news.
        assert!(m.apply(Event::Apply(lease("node-2", &[1], 99)), t0 + secs(60)));
    }

    #[test]
    fn a_listed_member_is_unconfirmed_until_seen_renewing_and_a_written_one_is_confirmed() {
        let t0 = Instant::now();
        let mut m = listed(vec![lease("node-2", &[1], 0), lease("self", &[1], 0)], t0);
        // A record from the first list may be a host's last words before it died long ago.
        assert_eq!(m.unconfirmed(t0), vec!["node-2".to_owned()]);
        // Seen renewing for the first time is news: its ballot starts to count.
        assert!(m.apply(Event::Apply(lease("node-2", &[1], 10)), t0 + secs(10)));
        assert!(m.unconfirmed(t0 + secs(10)).is_empty());
        // One created while we watch was just written.
        m.apply(Event::Apply(lease("node-3", &[1], 0)), t0 + secs(11));
        assert!(m.unconfirmed(t0 + secs(11)).is_empty());
        // A listed member that never renews stops being waited for once it turns stale.
        let m = listed(vec![lease("node-4", &[1], 0)], t0);
        assert_eq!(m.unconfirmed(t0 + secs(29)), vec!["node-4".to_owned()]);
        assert!(m.unconfirmed(t0 + secs(30)).is_empty());
    }

    #[test]
    fn a_relist_keeps_when_unchanged_members_were_last_seen_to_change() {
        let t0 = Instant::now();
        let mut m = listed(vec![lease("node-2", &[1], 0), lease("node-3", &[1], 0)], t0);
        // After a watch gap, node-2 renewed and node-3 did not; node-4 is new; node-3 stays
        // judged from t0.
        m.apply(Event::Init, t0 + secs(20));
        m.apply(Event::InitApply(lease("node-2", &[1], 20)), t0 + secs(20));
        m.apply(Event::InitApply(lease("node-3", &[1], 0)), t0 + secs(20));
        m.apply(Event::InitApply(lease("node-4", &[], 20)), t0 + secs(20));
        assert!(m.apply(Event::InitDone, t0 + secs(20)));
        let live = m.live(t0 + secs(35));
        assert_eq!(
            live.keys().cloned().collect::<Vec<_>>(),
            vec!["node-2".to_owned(), "node-4".to_owned()]
        );
        // A member missing from the re-list is dropped.
        m.apply(Event::Init, t0 + secs(21));
        m.apply(Event::InitApply(lease("node-2", &[1], 20)), t0 + secs(21));
        assert!(m.apply(Event::InitDone, t0 + secs(21)));
        assert_eq!(m.live(t0 + secs(22)).len(), 1);
    }

    #[test]
    fn a_deleted_member_no_longer_holds_anything() {
        let t0 = Instant::now();
        let mut m = listed(vec![lease("node-2", &[1], 0)], t0);
        assert!(m.apply(Event::Delete(lease("node-2", &[1], 0)), t0));
        assert_eq!(m.who_wants(&pair(1).1, t0), Wanted::Nobody);
    }

    #[test]
    fn our_own_member_lease_never_holds_a_delete() {
        let t0 = Instant::now();
        let m = listed(vec![lease("self", &[1], 0)], t0);
        assert_eq!(m.who_wants(&pair(1).1, t0), Wanted::Nobody);
        assert!(m.live(t0).contains_key("self"));
    }

    #[test]
    fn an_unreadable_member_holds_every_target() {
        let t0 = Instant::now();
        let mut broken = lease("node-2", &[1], 0);
        broken
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(names::MEMBER_PAIRS_ANNOTATION.into(), "not json".into());
        let m = listed(vec![broken], t0);
        assert_eq!(
            m.who_wants(&pair(7).1, t0),
            Wanted::Live(vec![m.unreadable(t0)[0].0.clone()])
        );
        assert!(m.live(t0).is_empty());
    }

    #[test]
    fn the_record_duration_wins_over_our_expiry() {
        let t0 = Instant::now();
        let mut short = lease("node-2", &[1], 0);
        short.spec.as_mut().unwrap().lease_duration_seconds = Some(5);
        let m = listed(vec![short], t0);
        assert!(m.live(t0 + secs(4)).contains_key("node-2"));
        assert!(m.live(t0 + secs(5)).is_empty());
        assert_eq!(m.next_change(t0), Some(t0 + secs(5)));
        assert_eq!(m.next_change(t0 + secs(5)), Some(t0 + secs(900)));
        assert_eq!(m.next_change(t0 + secs(900)), None);
    }

    #[test]
    fn a_forged_lease_duration_stops_counting_at_our_expiry() {
        let t0 = Instant::now();
        let mut forged = lease("node-9", &[1], 0);
        forged.spec.as_mut().unwrap().lease_duration_seconds = Some(i32::MAX);
        let m = listed(vec![forged], t0);
        assert!(m.ballots(t0 + secs(29)).contains_key("node-9"));
        assert!(m.live(t0 + secs(30)).is_empty());
        assert!(m.ballots(t0 + secs(30)).is_empty());
        assert_eq!(m.next_change(t0), Some(t0 + secs(30)));
        // Its pairs hold no longer than anyone's either.
        assert_eq!(m.gone_for_good(t0 + secs(900)).len(), 1);
    }

    /// `identity`'s member Lease written by the process `nonce` at wall-clock second `renewed`.
    fn written_by(identity: &str, nonce: &str, renewed: i64) -> Lease {
        let mut l = lease(identity, &[1], renewed);
        l.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(names::MEMBER_NONCE_ANNOTATION.into(), nonce.into());
        l
    }

    #[test]
    fn two_processes_taking_turns_on_one_member_lease_are_twins_and_their_ballot_does_not_count() {
        let t0 = Instant::now();
        let mut m = listed(
            vec![written_by("node-2", "aaaa", 0), lease("node-3", &[1], 0)],
            t0,
        );
        // A restart: another nonce, once. Not a twin.
        m.apply(Event::Apply(written_by("node-2", "bbbb", 1)), t0 + secs(1));
        assert!(m.twins(t0 + secs(1)).is_empty());
        assert!(m.ballots(t0 + secs(1)).contains_key("node-2"));
        // The first one writes again: two live processes.
        m.apply(Event::Apply(written_by("node-2", "aaaa", 2)), t0 + secs(2));
        assert_eq!(
            m.twins(t0 + secs(2)),
            vec![Twin {
                identity: "node-2".into(),
                nonces: vec!["aaaa".into(), "bbbb".into()],
            }]
        );
        let ballots = m.ballots(t0 + secs(2));
        assert!(!ballots.contains_key("node-2"));
        assert!(ballots.contains_key("node-3"));
        // Still live for what it wants: its pairs are not deleted.
        assert!(m.live(t0 + secs(2)).contains_key("node-2"));
        assert_eq!(
            m.who_wants(&pair(1).1, t0 + secs(2)),
            Wanted::Live(vec!["node-2".into(), "node-3".into()])
        );
        // One of them stops: two expiries later the other speaks alone again.
        for i in 3..70 {
            m.apply(
                Event::Apply(written_by("node-2", "aaaa", i)),
                t0 + secs(i as u64),
            );
        }
        assert!(m.twins(t0 + secs(69)).is_empty());
        assert!(m.ballots(t0 + secs(69)).contains_key("node-2"));
    }

    #[test]
    fn the_end_of_the_turns_is_a_change_the_leader_wakes_up_for() {
        let t0 = Instant::now();
        let mut m = listed(vec![written_by("node-2", "aaaa", 0)], t0);
        m.apply(Event::Apply(written_by("node-2", "bbbb", 1)), t0 + secs(1));
        m.apply(Event::Apply(written_by("node-2", "aaaa", 2)), t0 + secs(2));
        // Only aaaa writes on: its ballot counts again once bbbb's turn left the window, which
        // comes before anything else changes by time.
        for i in [12, 22, 32, 42, 52] {
            m.apply(
                Event::Apply(written_by("node-2", "aaaa", i)),
                t0 + secs(i as u64),
            );
        }
        let end = t0 + 2 * SETTINGS.expiry;
        assert_eq!(m.next_change(t0 + secs(52)), Some(end));
        assert!(!m.ballots(end - secs(1)).contains_key("node-2"));
        assert!(m.ballots(end).contains_key("node-2"));
    }

    #[test]
    fn a_record_that_says_it_saw_a_twin_does_not_count() {
        let t0 = Instant::now();
        let mut marked = written_by("node-2", "aaaa", 0);
        marked
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(names::MEMBER_TWIN_ANNOTATION.into(), "-".into());
        let m = listed(vec![marked], t0);
        assert_eq!(
            m.twins(t0),
            vec![Twin {
                identity: "node-2".into(),
                nonces: vec!["-".into(), "aaaa".into()],
            }]
        );
        assert!(m.ballots(t0).is_empty());
        // A stale mark is no news.
        assert!(m.twins(t0 + secs(30)).is_empty());
    }

    #[test]
    fn members_in_two_places_are_kept_apart() {
        let t0 = Instant::now();
        let mut old = lease("node-2", &[1], 0);
        old.metadata.namespace = Some("kube-system".into());
        let new = lease("node-2", &[2], 0);
        let mut m = listed(vec![old.clone(), new], t0);
        assert_eq!(
            m.who_wants(&pair(1).1, t0),
            Wanted::Live(vec!["node-2".into()])
        );
        assert_eq!(
            m.who_wants(&pair(2).1, t0),
            Wanted::Live(vec!["node-2".into()])
        );
        assert!(m.apply(Event::Delete(old), t0));
        assert_eq!(m.who_wants(&pair(1).1, t0), Wanted::Nobody);
        assert_eq!(
            m.gone_for_good(t0 + secs(900))[0].namespace,
            "endpoint-copier"
        );
    }

    #[test]
    fn a_pair_configured_on_some_live_members_only_is_a_mismatch() {
        let t0 = Instant::now();
        let m = listed(
            vec![
                lease("node-2", &[1, 2], 0),
                lease("node-3", &[1], 0),
                lease("node-9", &[3], -100),
            ],
            t0,
        );
        let own: BTreeSet<PairRef> = [pair(1), pair(2)].into();
        // node-9 is live too (we judge by our clock, never by its renewTime).
        let found = m.mismatches(&own, t0);
        assert_eq!(found.len(), 3);
        assert_eq!(found[1].target, pair(2).1);
        assert_eq!(
            found[1].configured_on,
            vec!["node-2".to_owned(), "self".to_owned()]
        );
        assert_eq!(
            found[1].missing_on,
            vec!["node-3".to_owned(), "node-9".to_owned()]
        );
        // Once node-9 and node-3 are stale, only we and node-2 count, and we agree.
        let mut m = m;
        m.apply(Event::Apply(lease("node-2", &[1, 2], 40)), t0 + secs(40));
        assert!(m.mismatches(&own, t0 + secs(41)).is_empty());
        assert!(
            Members::new(SETTINGS, "self")
                .mismatches(&own, t0)
                .is_empty()
        );
    }

    /// One member in a generated scenario: its pairs, and how long before `now` it last changed.
    fn member() -> impl Strategy<Value = (Vec<u8>, u64)> {
        (proptest::collection::vec(0u8..6, 0..4), 0u64..1200)
    }

    /// Applies each member's last change at its instant, in the given order.
    fn observed(members: &[(Vec<u8>, u64)], order: &[usize], t0: Instant, now: Instant) -> Members {
        let mut m = listed(Vec::new(), t0);
        for &i in order {
            let (pairs, age) = &members[i];
            let at = now - secs(*age);
            // Seen first when listed (unchanged since), or at its last change.
            m.apply(
                Event::Apply(lease(&format!("node-{i}"), pairs, 0)),
                at.max(t0),
            );
        }
        m
    }

    proptest! {
        #[test]
        fn stale_members_never_count_as_live(members in proptest::collection::vec(member(), 0..6)) {
            let t0 = Instant::now();
            let now = t0 + secs(2000);
            let order: Vec<usize> = (0..members.len()).collect();
            let m = observed(&members, &order, t0, now);
            let live = m.live(now);
            for (i, (pairs, age)) in members.iter().enumerate() {
                let id = format!("node-{i}");
                prop_assert_eq!(live.contains_key(&id), *age < 30, "{} aged {}", id, age);
                for n in pairs {
                    let wanted = m.who_wants(&pair(*n).1, now);
                    if *age >= 30 {
                        prop_assert!(!matches!(&wanted, Wanted::Live(ids) if ids.contains(&id) ));
                    }
                }
            }
        }

        #[test]
        fn the_order_of_observations_does_not_matter(
            members in proptest::collection::vec(member(), 1..6),
            seed in any::<u64>(),
        ) {
            let t0 = Instant::now();
            let now = t0 + secs(2000);
            let order: Vec<usize> = (0..members.len()).collect();
            let mut shuffled = order.clone();
            fastrand::Rng::with_seed(seed).shuffle(&mut shuffled);
            let a = observed(&members, &order, t0, now);
            let b = observed(&members, &shuffled, t0, now);
            prop_assert_eq!(a.live(now), b.live(now));
            prop_assert_eq!(a.stale(now), b.stale(now));
            prop_assert_eq!(a.gone_for_good(now), b.gone_for_good(now));
            for n in 0..6 {
                prop_assert_eq!(a.who_wants(&pair(n).1, now), b.who_wants(&pair(n).1, now));
            }
            prop_assert_eq!(a.mismatches(&BTreeSet::new(), now), b.mismatches(&BTreeSet::new(), now));
        }

        #[test]
        fn a_pair_configured_by_any_live_member_is_never_nobodys(
            members in proptest::collection::vec(member(), 1..6),
        ) {
            let t0 = Instant::now();
            let now = t0 + secs(2000);
            let order: Vec<usize> = (0..members.len()).collect();
            let m = observed(&members, &order, t0, now);
            for (pairs, age) in &members {
                for n in pairs {
                    let wanted = m.who_wants(&pair(*n).1, now);
                    if *age < 900 {
                        prop_assert!(!wanted.allows_delete(), "{:?}", wanted);
                    }
                    if *age < 30 {
                        prop_assert!(matches!(wanted, Wanted::Live(_)), "{:?}", wanted);
                    }
                }
            }
        }

        #[test]
        fn a_member_not_seen_to_change_for_forget_after_is_gone(
            members in proptest::collection::vec(member(), 1..6),
        ) {
            let t0 = Instant::now();
            let now = t0 + secs(2000);
            let order: Vec<usize> = (0..members.len()).collect();
            let m = observed(&members, &order, t0, now);
            let gone: BTreeSet<String> =
                m.gone_for_good(now).into_iter().map(|g| g.identity).collect();
            for (i, (pairs, age)) in members.iter().enumerate() {
                let id = format!("node-{i}");
                prop_assert_eq!(gone.contains(&id), *age >= 900);
                if *age >= 900 {
                    prop_assert!(!m.stale(now).contains(&id));
                    for n in pairs {
                        let wanted = m.who_wants(&pair(*n).1, now);
                        let holds = match &wanted {
                            Wanted::Live(ids) | Wanted::Stale(ids) => ids.contains(&id),
                            _ => false,
                        };
                        prop_assert!(!holds);
                    }
                }
            }
        }
    }
}
