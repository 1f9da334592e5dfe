//! Node drains as the simulated operator sets them, and what the checker counts as drained.
//!
//! Two kinds, as `endpoint-copier drain` writes them (docs/usage/operations.md, "Nodes and
//! drains"): a lasting drain (`endpoint-copier/drain: "true"` alone, set by hand, until removed)
//! and a timed drain (`drain --for N` run on some host: `drain-duration-secs: N` beside
//! `drain-expires`, the instant N seconds after *that host's* wall clock — which may be off).
//! The daemons count a timed drain N seconds from when they first see it, never by a wall
//! clock; so to the checker it lasts N seconds from its write, extended to N seconds from the
//! last host start or fault heal after it (a copy that starts later, or whose watches were cut
//! off — partitioned, its apiserver killed or hung — first sees it then), plus the watch lag.
//! A drain may so last longer than asked, never shorter: the safe side.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use endpoint_copier::names;
use endpoint_copier_testbed::store::{self, ListParams, WriteParams};
use serde_json::json;
use tokio::time::Instant;

use crate::world::{Lab, World, lock, resource};

/// How late the leader may see a Node change (its watch) after the store accepted it.
const WATCH_LAG: Duration = Duration::from_secs(5);

/// One Node's drain as written, and when the sim first saw it so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// The drain's annotations as written: `(duration, expires)`, both `None` for a lasting one.
    key: (Option<String>, Option<String>),
    /// Its length, for a timed drain.
    lasts: Option<Duration>,
    since: Instant,
}

/// The drains in the store, by address.
#[derive(Debug, Default)]
pub struct Drains {
    seen: BTreeMap<IpAddr, Seen>,
}

impl Drains {
    /// Re-reads the Nodes' drain annotations from `store` (after a Node write).
    pub fn read(&mut self, store: &store::Store, now: Instant) {
        let mut next = BTreeMap::new();
        let Ok(list) = store.list(resource("", "v1", "nodes"), None, &ListParams::default()) else {
            return;
        };
        for node in list["items"].as_array().into_iter().flatten() {
            let annotations = &node["metadata"]["annotations"];
            if annotations[names::ANNOTATION_DRAIN] != names::DRAIN_VALUE {
                continue;
            }
            let text = |key: &str| annotations[key].as_str().map(str::to_owned);
            let key = (
                text(names::ANNOTATION_DRAIN_DURATION),
                text(names::ANNOTATION_DRAIN_EXPIRES),
            );
            let lasts = key
                .0
                .as_deref()
                .and_then(|s| s.parse().ok())
                .map(Duration::from_secs);
            for a in node["status"]["addresses"].as_array().into_iter().flatten() {
                if let Some(a) = a["address"].as_str().and_then(|s| s.parse().ok()) {
                    let since = match self.seen.get(&a) {
                        Some(s) if s.key == key => s.since,
                        _ => now,
                    };
                    next.insert(
                        a,
                        Seen {
                            key: key.clone(),
                            lasts,
                            since,
                        },
                    );
                }
            }
        }
        self.seen = next;
    }

    /// The addresses drained at `now`, with when their drain was written, a host having last
    /// started or a fault last healed at `news` (when a copy may first have seen a drain
    /// written earlier).
    pub fn drained(&self, now: Instant, news: Option<Instant>) -> BTreeMap<IpAddr, Instant> {
        self.seen
            .iter()
            .filter(|(_, s)| match s.lasts {
                None => true,
                Some(lasts) => {
                    let from = news.map_or(s.since, |t| t.max(s.since));
                    now < from + lasts + WATCH_LAG
                }
            })
            .map(|(a, s)| (*a, s.since))
            .collect()
    }

    /// Whether a timed drain of `address` written at `since` is still within its own length
    /// (not only within the leeway a late copy gets): what the leader must honour.
    pub fn within_length(&self, address: IpAddr, now: Instant) -> bool {
        self.seen
            .get(&address)
            .is_some_and(|s| s.lasts.is_none_or(|lasts| now < s.since + lasts))
    }
}

impl Lab {
    /// Tells the checker which addresses are drained now (after a Node write, and on every
    /// tick: a timed drain ends by itself).
    pub(crate) fn refresh_drains(&mut self) {
        let now = Instant::now();
        let news = match (self.last_start, self.last_heal) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let started = self.drains.drained(now, news);
        let drained: BTreeSet<IpAddr> = started.keys().copied().collect();
        self.truth.drain_started = started
            .into_iter()
            .filter(|(a, _)| self.drains.within_length(*a, now))
            .collect();
        if drained != self.truth.drained {
            self.checker.on_drains(now, drained.clone());
            self.truth.drained = drained;
        }
    }
}

/// How a drain fault sets a Node.
pub enum Set {
    /// `endpoint-copier/drain: "true"` alone, as by hand.
    Lasting,
    /// What `endpoint-copier drain --for secs` writes when run on a host whose wall clock
    /// reads `wall`.
    Timed { secs: u64, wall: jiff::Timestamp },
    /// No drain annotation at all.
    Off,
}

impl World {
    /// Writes Node `node-(j+1)`'s drain annotations.
    pub(crate) fn set_drain(&self, j: usize, set: &Set) {
        let store = self.bed.store();
        let r = resource("", "v1", "nodes");
        let name = format!("node-{}", j + 1);
        let Ok(mut node) = store.get(r, None, &name) else {
            return;
        };
        if let Some(m) = node["metadata"].as_object_mut() {
            m.remove("resourceVersion");
            let annotations = m.entry("annotations").or_insert_with(|| json!({}));
            if let Some(a) = annotations.as_object_mut() {
                for key in [
                    names::ANNOTATION_DRAIN,
                    names::ANNOTATION_DRAIN_DURATION,
                    names::ANNOTATION_DRAIN_EXPIRES,
                ] {
                    a.remove(key);
                }
                match set {
                    Set::Off => {}
                    Set::Lasting => {
                        a.insert(names::ANNOTATION_DRAIN.into(), json!(names::DRAIN_VALUE));
                    }
                    Set::Timed { secs, wall } => {
                        a.insert(names::ANNOTATION_DRAIN.into(), json!(names::DRAIN_VALUE));
                        a.insert(
                            names::ANNOTATION_DRAIN_DURATION.into(),
                            json!(secs.to_string()),
                        );
                        a.insert(
                            names::ANNOTATION_DRAIN_EXPIRES.into(),
                            json!(endpoint_copier::drain::expiry(
                                *wall,
                                Duration::from_secs(*secs)
                            )),
                        );
                    }
                }
            }
        }
        if let Err(e) = store.replace(r, None, &name, node, &WriteParams::default()) {
            panic!("sim: drain: {}", e.message);
        }
        // Not a client write: the observer does not see it.
        let mut lab = lock(&self.lab);
        lab.drains.read(store, Instant::now());
        lab.refresh_drains();
    }
}
