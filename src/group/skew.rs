//! Where the live copies of a group differ from one another beyond which pairs they name (that
//! is [`super::Members::mismatches`]): a pair configured differently on two live copies
//! ([`Difference`], from the digests in their records), and the product versions they run
//! ([`Versions`]). Both follow whoever leads — the leader writes its own configuration, and an
//! older leader what it knows — so an operator must hear of them.
//!
//! Pure: the answers are computed from [`Members`] at an instant. [`Skew`] is the leader's memory
//! of what it reported ("is this different from what I last said?"), so that each difference is
//! a warning and an Event once; `daemon` logs and sends them, and puts [`Skew::status_note`] into
//! STATUS. `check` and `status` judge the member Leases on their own (`inspect::members`) with
//! [`differences_among`], the same rule.

use std::collections::{BTreeMap, BTreeSet};

use tokio::time::Instant;

use super::Members;
use super::digest::{PairDigest, Part};
use super::member::{PairRef, VERSION};
use crate::config::PairConfig;
use crate::names::ServiceRef;

/// One pair (same source, same target) that live copies configure differently.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Difference {
    /// The pair's source Service, as member records name it.
    pub source: ServiceRef,
    /// The pair's target Service.
    pub target: ServiceRef,
    /// The live copies by configuration: identities with equal digests, each list sorted, the
    /// lists in order of their first identity.
    pub configs: Vec<Vec<String>>,
    /// The parts in which some two of those configurations differ, in [`Part::ALL`] order
    /// (empty when the digests differ only in a part this version cannot name).
    pub parts: Vec<Part>,
}

impl Difference {
    /// What the leader logs and sends as the `ConfiguredElsewhere` Event: who differs from whom,
    /// and in what.
    pub fn note(&self) -> String {
        let what = if self.parts.is_empty() {
            String::new()
        } else {
            let parts: Vec<String> = self.parts.iter().map(ToString::to_string).collect();
            format!(" in its {}", parts.join(" and "))
        };
        let mut groups = self.configs.iter().map(|ids| ids.join(", "));
        let first = groups.next().unwrap_or_default();
        let rest: Vec<String> = groups.collect();
        format!(
            "pair {} -> {} is configured differently on live copies: {first} differs from {}{what}; its EndpointSlices follow the configuration of whichever copy leads",
            self.source,
            self.target,
            rest.join(" and from ")
        )
    }
}

/// The differences among `configs` (identity → its digests by pair): for every pair that two or
/// more of them carry a digest for, the groups of equal digests when some two differ in a part
/// both know. A copy without a digest for a pair (an older version) is left out: its
/// configuration is unknown, never a difference. Sorted.
pub fn differences_among(
    configs: &BTreeMap<String, BTreeMap<PairRef, PairDigest>>,
) -> Vec<Difference> {
    let mut by_pair: BTreeMap<&PairRef, BTreeMap<&PairDigest, Vec<String>>> = BTreeMap::new();
    for (id, digests) in configs {
        for (pair, digest) in digests {
            by_pair
                .entry(pair)
                .or_default()
                .entry(digest)
                .or_default()
                .push(id.clone());
        }
    }
    let mut out = Vec::new();
    for (pair, groups) in by_pair {
        let digests: Vec<&PairDigest> = groups.keys().copied().collect();
        let mut parts = BTreeSet::new();
        let mut differ = false;
        for (i, a) in digests.iter().enumerate() {
            for b in &digests[i + 1..] {
                // Digests that agree on every part both carry are the same configuration.
                differ |= !a.agrees_with(b);
                parts.extend(a.differences(b));
            }
        }
        if !differ {
            continue;
        }
        let mut configs: Vec<Vec<String>> = groups
            .into_values()
            .map(|mut ids| {
                ids.sort();
                ids
            })
            .collect();
        configs.sort();
        out.push(Difference {
            source: pair.0.clone(),
            target: pair.1.clone(),
            configs,
            parts: parts.into_iter().collect(),
        });
    }
    out
}

/// The digests of `pairs` (this copy's own config) by pair, as its record carries them.
pub fn own_digests(pairs: &[PairConfig]) -> BTreeMap<PairRef, PairDigest> {
    pairs
        .iter()
        .map(|p| ((p.record_source(), p.target.clone()), PairDigest::of(p)))
        .collect()
}

/// The pairs configured differently on live members at `now`; `own` (this copy's config) stands
/// for our own record, and we always count as live.
pub fn config_differences(
    members: &Members,
    own: &BTreeMap<PairRef, PairDigest>,
    now: Instant,
) -> Vec<Difference> {
    let mut configs: BTreeMap<String, BTreeMap<PairRef, PairDigest>> = members
        .live(now)
        .into_iter()
        .map(|(id, record)| (id, record.digests))
        .collect();
    configs.insert(members.own().to_owned(), own.clone());
    differences_among(&configs)
}

/// The product versions of the live members: version → identities (sorted). A record without a
/// version counts as [`super::member::UNVERSIONED`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Versions(pub BTreeMap<String, Vec<String>>);

impl Versions {
    /// The versions of the live members at `now`, this copy's ([`VERSION`]) included.
    pub fn of(members: &Members, now: Instant) -> Versions {
        let mut by_version: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (id, record) in members.live(now) {
            if id != members.own() {
                by_version
                    .entry(record.version_or_unversioned().to_owned())
                    .or_default()
                    .insert(id);
            }
        }
        by_version
            .entry(VERSION.to_owned())
            .or_default()
            .insert(members.own().to_owned());
        Versions(
            by_version
                .into_iter()
                .map(|(v, ids)| (v, ids.into_iter().collect()))
                .collect(),
        )
    }

    /// `members run 0.1.0 and 0.2.0` when the live members run more than one version (in
    /// version order), else `None`.
    pub fn note(&self) -> Option<String> {
        if self.0.len() < 2 {
            return None;
        }
        let mut versions: Vec<&String> = self.0.keys().collect();
        versions.sort_by(|a, b| semver_key(a).cmp(&semver_key(b)).then(a.cmp(b)));
        let (last, head) = versions.split_last()?;
        let head: Vec<&str> = head.iter().map(|v| v.as_str()).collect();
        Some(format!("members run {} and {last}", head.join(", ")))
    }
}

/// `MAJOR.MINOR.PATCH` as numbers for ordering (missing or unreadable parts count as 0), so that
/// 0.10.0 comes after 0.9.0.
fn semver_key(version: &str) -> Vec<u64> {
    version
        .split(['-', '+'])
        .next()
        .unwrap_or_default()
        .split('.')
        .map(|n| n.parse().unwrap_or(0))
        .collect()
}

/// What the leader last reported about the group's skew: each difference is reported once, when
/// it appears (report on change).
#[derive(Clone, Debug, Default)]
pub struct Skew {
    /// The differences known at the last [`Skew::update`].
    differences: Vec<Difference>,
}

impl Skew {
    /// Computes the differences at `now` from `members` and this copy's `own` pairs, remembers
    /// them, and returns the ones that are new since the last call (to log and report once).
    pub fn update(
        &mut self,
        members: &Members,
        own: &[PairConfig],
        now: Instant,
    ) -> Vec<Difference> {
        let found = config_differences(members, &own_digests(own), now);
        let new = found
            .iter()
            .filter(|d| !self.differences.contains(d))
            .cloned()
            .collect();
        self.differences = found;
        new
    }

    /// What STATUS says of the group's skew, if anything: the versions when live members run
    /// more than one (every copy says so), then, on the `leader` (which keeps them up to date),
    /// the pairs configured differently.
    pub fn status_note(&self, members: &Members, leader: bool, now: Instant) -> Option<String> {
        let mut notes: Vec<String> = Versions::of(members, now).note().into_iter().collect();
        if leader && !self.differences.is_empty() {
            let targets: BTreeSet<String> = self
                .differences
                .iter()
                .map(|d| d.target.to_string())
                .collect();
            notes.push(format!(
                "configured differently on live copies: {}",
                targets.into_iter().collect::<Vec<_>>().join(", ")
            ));
        }
        (!notes.is_empty()).then(|| notes.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use jiff::Timestamp;
    use k8s_openapi::api::coordination::v1::Lease;
    use kube::runtime::watcher::Event;

    use super::*;
    use crate::group::member::{MemberRecord, member_lease};
    use crate::group::{Group, Settings};
    use crate::source::{Source, StaticSource};

    fn svc(s: &str) -> ServiceRef {
        s.parse().unwrap()
    }

    /// The default pair plus the static address `last` (198.51.100.`last`).
    fn config(last: u8) -> Vec<PairConfig> {
        vec![PairConfig::of(
            vec![
                Source::Service(svc("default/kubernetes")),
                Source::Static(StaticSource::new([std::net::IpAddr::from([
                    198, 51, 100, last,
                ])])),
            ],
            svc("default/kubernetes-vip"),
        )]
    }

    fn lease(record: &MemberRecord) -> Lease {
        member_lease(
            &Group::default_group(),
            record,
            Duration::from_secs(30),
            Timestamp::UNIX_EPOCH,
        )
        .unwrap()
    }

    fn members(records: &[MemberRecord], now: Instant) -> Members {
        let mut m = Members::new(Settings::default(), "node-1");
        m.apply(Event::Init, now);
        for r in records {
            m.apply(Event::InitApply(lease(r)), now);
        }
        m.apply(Event::InitDone, now);
        m
    }

    #[test]
    fn two_copies_differing_only_in_one_static_address_are_a_difference_named_by_part() {
        let now = Instant::now();
        let m = members(&[MemberRecord::of_config("node-2", &config(2))], now);
        let mut skew = Skew::default();
        let new = skew.update(&m, &config(1), now);
        assert_eq!(new.len(), 1, "{new:?}");
        assert_eq!(
            new[0].configs,
            vec![vec!["node-1".to_owned()], vec!["node-2".to_owned()]]
        );
        assert_eq!(new[0].parts, vec![Part::Addresses]);
        assert_eq!(
            new[0].note(),
            "pair default/kubernetes -> default/kubernetes-vip is configured differently on live copies: node-1 differs from node-2 in its static addresses; its EndpointSlices follow the configuration of whichever copy leads"
        );
        // Reported once: the same difference is no news.
        assert!(skew.update(&m, &config(1), now).is_empty());
        assert_eq!(
            skew.status_note(&m, true, now).as_deref(),
            Some("configured differently on live copies: default/kubernetes-vip")
        );
        // The same configuration: nothing.
        assert!(Skew::default().update(&m, &config(2), now).is_empty());
    }

    #[test]
    fn a_record_without_digests_is_unknown_never_a_difference() {
        let now = Instant::now();
        let older = MemberRecord::new(
            "node-2",
            [(svc("default/kubernetes"), svc("default/kubernetes-vip"))],
        );
        let m = members(&[older], now);
        assert!(Skew::default().update(&m, &config(1), now).is_empty());
        // ... but its version shows.
        assert_eq!(
            Versions::of(&m, now).note(),
            Some(format!("members run 0.1.0 and {VERSION}")).filter(|_| VERSION != "0.1.0")
        );
    }

    #[test]
    fn three_configurations_are_named_each() {
        let configs = BTreeMap::from([
            ("a".to_owned(), own_digests(&config(1))),
            ("b".to_owned(), own_digests(&config(2))),
            ("c".to_owned(), own_digests(&config(2))),
            ("d".to_owned(), own_digests(&config(3))),
        ]);
        let found = differences_among(&configs);
        assert_eq!(found.len(), 1);
        assert!(
            found[0]
                .note()
                .contains("a differs from b, c and from d in its static addresses"),
            "{}",
            found[0].note()
        );
    }

    #[test]
    fn versions_are_listed_in_version_order_only_when_they_differ() {
        let v = |pairs: &[(&str, &[&str])]| {
            Versions(
                pairs
                    .iter()
                    .map(|(v, ids)| {
                        (
                            (*v).to_owned(),
                            ids.iter().map(|s| (*s).to_owned()).collect(),
                        )
                    })
                    .collect(),
            )
        };
        assert_eq!(v(&[("0.2.0", &["a", "b"])]).note(), None);
        assert_eq!(
            v(&[("0.2.0", &["a"]), ("0.1.0", &["b"])]).note().as_deref(),
            Some("members run 0.1.0 and 0.2.0")
        );
        assert_eq!(
            v(&[("0.10.0", &["a"]), ("0.9.1", &["b"]), ("0.2.0", &["c"])])
                .note()
                .as_deref(),
            Some("members run 0.2.0, 0.9.1 and 0.10.0")
        );
    }
}
