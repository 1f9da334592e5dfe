//! The quorum: which endpoints the leader marks not ready, from the verdicts the live copies
//! publish. Pure — no clock, no API: the caller says which ballots are live (`group::live`
//! judges that by the local clock) and passes its own verdicts as one more ballot.
//!
//! The rules (docs/usage/operations.md, "Probes and eviction"):
//! - a copy whose every verdict is down is presumed cut off itself (its NIC, its route, its
//!   firewall), and its ballot is not counted;
//! - a ballot votes only on the targets it has a verdict on: one silent on a target (a copy
//!   without that pair, an older version, one not probing it yet, one whose probe cannot even
//!   judge it — a TLS failure of its own) abstains, and does not count toward that target's
//!   majority either way;
//! - an endpoint is evicted when a strict majority of the ballots with a verdict on it see it
//!   down; with one such ballot, that copy's view decides;
//! - a static address must be seen up before it is ready (kubelet's readiness starts at
//!   failure): it is evicted unless a strict majority of the ballots with a verdict on it see it
//!   up — so hosts without the static pair never keep its addresses out;
//! - fail-static: if that would leave a target with no ready endpoint, the endpoint with the
//!   fewest down votes (then the lowest address) stays ready. Probes never blank a VIP.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::{Target, Verdict};

/// One copy's published verdicts.
#[derive(Clone, Copy, Debug)]
pub struct Ballot<'a> {
    /// The copy's identity (for `status` and logs).
    pub voter: &'a str,
    /// Whether the copy is live (fresh heartbeat); a stale ballot is never counted.
    pub live: bool,
    /// Its verdicts; a target it does not name is one it has no verdict on.
    pub verdicts: &'a BTreeMap<Target, Verdict>,
}

impl Ballot<'_> {
    /// A copy that sees every target it probes down is presumed cut off itself.
    fn is_cut_off(&self) -> bool {
        !self.verdicts.is_empty() && self.verdicts.values().all(|v| *v == Verdict::Down)
    }
}

/// The ballots that count, and how they see each target.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Count {
    /// Voters whose ballots count (live, not cut off), sorted.
    pub counted: Vec<String>,
    /// Live voters presumed cut off (every verdict down), sorted.
    pub cut_off: Vec<String>,
    /// Per target, the voters that see it down and up (sorted).
    pub votes: BTreeMap<Target, Votes>,
}

/// How the counted ballots see one target.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Votes {
    /// Voters that see it down.
    pub down: Vec<String>,
    /// Voters that see it up.
    pub up: Vec<String>,
}

impl Votes {
    /// How many counted ballots have a verdict on the target: its majority's denominator.
    pub fn voters(&self) -> usize {
        self.down.len() + self.up.len()
    }
}

impl Count {
    /// Counts `ballots`: stale ones and cut-off ones are left out.
    pub fn of(ballots: &[Ballot<'_>]) -> Count {
        let mut count = Count::default();
        for ballot in ballots.iter().filter(|b| b.live) {
            if ballot.is_cut_off() {
                count.cut_off.push(ballot.voter.to_owned());
                continue;
            }
            count.counted.push(ballot.voter.to_owned());
            for (target, verdict) in ballot.verdicts {
                let votes = count.votes.entry(target.clone()).or_default();
                match verdict {
                    Verdict::Down => votes.down.push(ballot.voter.to_owned()),
                    Verdict::Up => votes.up.push(ballot.voter.to_owned()),
                }
            }
        }
        count.counted.sort();
        count.cut_off.sort();
        for votes in count.votes.values_mut() {
            votes.down.sort();
            votes.up.sort();
        }
        count
    }

    /// Down votes on `target`.
    pub fn down(&self, target: &Target) -> usize {
        self.votes.get(target).map_or(0, |v| v.down.len())
    }

    /// Counted ballots with a verdict on `target`: the ones its majority is taken over
    /// (abstentions are not votes).
    pub fn voters(&self, target: &Target) -> usize {
        self.votes.get(target).map_or(0, Votes::voters)
    }

    /// Whether a strict majority of the counted ballots with a verdict on `target` see it down.
    pub fn majority_down(&self, target: &Target) -> bool {
        2 * self.down(target) > self.voters(target)
    }

    /// Whether a strict majority of the counted ballots with a verdict on `target` see it up
    /// (never, while no ballot has a verdict on it).
    pub fn majority_up(&self, target: &Target) -> bool {
        2 * self.votes.get(target).map_or(0, |v| v.up.len()) > self.voters(target)
    }
}

/// One ready endpoint of a pair's source, and what probes it (`None`: nothing can, e.g. no port).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Candidate {
    /// The endpoint's address.
    pub address: IpAddr,
    /// Its probe target.
    pub target: Option<Target>,
    /// Whether it is ready only once seen up (a static address, kubelet's initial failure)
    /// rather than until seen down (a Service's endpoint, which its source says is ready).
    pub needs_up: bool,
}

/// The candidates of a pair that probes with `spec`, from its ready source endpoints as
/// `desired::probed_endpoints` lists them (address, port of its slice); `needs_up` for static
/// addresses.
pub fn candidates(
    spec: &super::Spec,
    endpoints: impl IntoIterator<Item = (IpAddr, Option<u16>)>,
    needs_up: bool,
) -> Vec<Candidate> {
    endpoints
        .into_iter()
        .map(|(address, port)| Candidate {
            address,
            target: super::spec::target(spec, address, port),
            needs_up,
        })
        .collect()
}

/// What the quorum decided for one pair's endpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// Addresses to write with `ready: false, serving: false` (a static address not yet seen up
    /// by a majority included).
    pub evicted: BTreeSet<IpAddr>,
    /// An address a majority sees down but kept ready because it is the last one (fail-static).
    pub spared: Option<IpAddr>,
}

/// Decides which of a pair's ready `candidates` are evicted under `count`. Never all of them:
/// when every candidate has a majority down, the one with the fewest down votes (then the lowest
/// address) is spared. The result does not depend on the order of `candidates`.
pub fn decide(candidates: &[Candidate], count: &Count) -> Decision {
    let addresses: BTreeSet<IpAddr> = candidates.iter().map(|c| c.address).collect();
    // An address listed twice (two families never share one; two slices of a family might) is
    // evicted only when every target naming it has a majority down.
    let mut down: BTreeMap<IpAddr, (bool, usize)> = BTreeMap::new();
    for c in candidates {
        let (majority, votes) = match &c.target {
            Some(t) if c.needs_up => (!count.majority_up(t), count.down(t)),
            Some(t) => (count.majority_down(t), count.down(t)),
            // Nothing can probe it (no port): a Service's endpoint stays as its source says;
            // a static address is as ready as without a probe.
            None => (false, 0),
        };
        let entry = down.entry(c.address).or_insert((true, usize::MAX));
        entry.0 &= majority;
        entry.1 = entry.1.min(votes);
    }
    let mut evicted: BTreeSet<IpAddr> = down
        .iter()
        .filter(|(_, (majority, _))| *majority)
        .map(|(a, _)| *a)
        .collect();
    let mut spared = None;
    if !addresses.is_empty() && evicted.len() == addresses.len() {
        // BTreeMap order makes the lowest address win a tie.
        let keep = down
            .iter()
            .min_by_key(|(_, (_, votes))| *votes)
            .map(|(a, _)| *a);
        if let Some(keep) = keep {
            evicted.remove(&keep);
            spared = Some(keep);
        }
    }
    Decision { evicted, spared }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::probe::Kind;

    fn target(last: u8) -> Target {
        Target {
            address: IpAddr::from([198, 51, 100, last]),
            port: 6443,
            kind: Kind::Https {
                path: "/readyz".into(),
            },
        }
    }

    fn candidate(last: u8) -> Candidate {
        Candidate {
            address: IpAddr::from([198, 51, 100, last]),
            target: Some(target(last)),
            needs_up: false,
        }
    }

    fn fixed(last: u8) -> Candidate {
        Candidate {
            needs_up: true,
            ..candidate(last)
        }
    }

    #[test]
    fn a_static_address_is_ready_only_once_a_majority_sees_it_up() {
        // Three copies: n1 and n2 see .1 up; n1 sees .2 up, n2 down; nobody has probed .3 yet;
        // n3 probes nothing yet.
        let (a, b, c) = (view(&[], &[1, 2]), view(&[2], &[1]), view(&[], &[]));
        let ballots = [
            Ballot {
                voter: "n1",
                live: true,
                verdicts: &a,
            },
            Ballot {
                voter: "n2",
                live: true,
                verdicts: &b,
            },
            Ballot {
                voter: "n3",
                live: true,
                verdicts: &c,
            },
        ];
        let d = decide(&[fixed(1), fixed(2), fixed(3)], &Count::of(&ballots));
        assert_eq!(d.evicted, BTreeSet::from([ip(2), ip(3)]));
        // Before any verdict, one of them is spared all the same: probes never blank a target.
        let none = decide(&[fixed(1), fixed(2)], &Count::of(&[]));
        assert_eq!(
            (none.evicted, none.spared),
            (BTreeSet::from([ip(2)]), Some(ip(1)))
        );
    }

    /// Live ballots of `views`, voters `n1`, `n2`, ...
    fn ballots(
        views: &[BTreeMap<Target, Verdict>],
    ) -> Vec<(String, bool, BTreeMap<Target, Verdict>)> {
        views
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("n{}", i + 1), true, v.clone()))
            .collect()
    }

    #[test]
    fn five_hosts_three_without_the_static_pair_keep_what_the_probing_two_see_up() {
        // n1 and n2 have the static pair (.10, .11, .12) besides the apiservers (.1, .2); n3..n5
        // do not (not configured there, an older version, not probing it yet): they have no
        // verdict on the static addresses and abstain on them.
        let probing = |down: &[u8], up: &[u8]| view(down, &[&[1, 2][..], up].concat());
        let b = ballots(&[
            probing(&[], &[10, 11, 12]),
            probing(&[12], &[10, 11]),
            view(&[], &[1, 2]),
            view(&[], &[1, 2]),
            view(&[], &[1, 2]),
        ]);
        let count = Count::of(&ballots_of(&b));
        assert_eq!(count.counted.len(), 5);
        assert_eq!(count.voters(&target(10)), 2);
        let d = decide(&[fixed(10), fixed(11), fixed(12)], &count);
        // .10 and .11: both probing hosts see them up. .12: one of two is no majority.
        assert_eq!(d.evicted, BTreeSet::from([ip(12)]));
        assert_eq!(d.spared, None);
    }

    #[test]
    fn two_copies_evict_what_both_see_down_and_a_tie_never() {
        // cp-1's apiserver (.1) refuses, its host is fine: both copies see it down.
        let b = ballots(&[view(&[1], &[2]), view(&[1], &[2])]);
        let d = decide(&[candidate(1), candidate(2)], &Count::of(&ballots_of(&b)));
        assert_eq!(d.evicted, BTreeSet::from([ip(1)]));
        // cp-1's host died: its last ballot (everything up) stays live until its member Lease
        // expires, and 1 of 2 is a tie. A partition between the two looks the same from
        // either side: a tie never evicts, whichever it is.
        let b = ballots(&[view(&[], &[1, 2]), view(&[1], &[2])]);
        assert!(
            decide(&[candidate(1), candidate(2)], &Count::of(&ballots_of(&b)))
                .evicted
                .is_empty()
        );
        // Once its ballot is stale (30 s), the survivor decides alone.
        let mut b = b;
        b[0].1 = false;
        let d = decide(&[candidate(1), candidate(2)], &Count::of(&ballots_of(&b)));
        assert_eq!(d.evicted, BTreeSet::from([ip(1)]));
        // A static address of the dead host leaves at once: it needs a majority up.
        let b = ballots(&[view(&[], &[1, 2]), view(&[1], &[2])]);
        let d = decide(&[fixed(1), fixed(2)], &Count::of(&ballots_of(&b)));
        assert_eq!(d.evicted, BTreeSet::from([ip(1)]));
    }

    #[test]
    fn a_ballot_silent_on_an_endpoint_does_not_count_toward_its_majority() {
        // n2 and n3 have no verdict on .1 (they do not probe it, or their probe cannot judge
        // it); n1, the only copy with a verdict, sees it down.
        let b = ballots(&[view(&[1], &[2]), view(&[], &[2]), view(&[], &[2])]);
        let count = Count::of(&ballots_of(&b));
        assert_eq!(count.voters(&target(1)), 1);
        let d = decide(&[candidate(1), candidate(2)], &count);
        assert_eq!(d.evicted, BTreeSet::from([ip(1)]));
        // With one more verdict, up, it is a tie: no majority, no eviction.
        let b = ballots(&[view(&[1], &[2]), view(&[], &[1, 2]), view(&[], &[2])]);
        assert!(
            decide(&[candidate(1), candidate(2)], &Count::of(&ballots_of(&b)))
                .evicted
                .is_empty()
        );
    }

    fn view(down: &[u8], up: &[u8]) -> BTreeMap<Target, Verdict> {
        down.iter()
            .map(|l| (target(*l), Verdict::Down))
            .chain(up.iter().map(|l| (target(*l), Verdict::Up)))
            .collect()
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([198, 51, 100, last])
    }

    #[test]
    fn a_majority_of_three_evicts_a_dead_apiserver() {
        let (a, b, c) = (
            view(&[1], &[2, 3]),
            view(&[1], &[2, 3]),
            view(&[], &[1, 2, 3]),
        );
        let ballots = [
            Ballot {
                voter: "node-2",
                live: true,
                verdicts: &a,
            },
            Ballot {
                voter: "node-3",
                live: true,
                verdicts: &b,
            },
            // node-1's last word before it died: it saw itself up.
            Ballot {
                voter: "node-1",
                live: true,
                verdicts: &c,
            },
        ];
        let count = Count::of(&ballots);
        let d = decide(&[candidate(1), candidate(2), candidate(3)], &count);
        assert_eq!(d.evicted, BTreeSet::from([ip(1)]));
        assert_eq!(d.spared, None);
        assert_eq!(count.votes[&target(1)].down, ["node-2", "node-3"]);
    }

    #[test]
    fn one_copy_of_three_never_evicts_and_a_lone_copy_decides() {
        let (a, b) = (view(&[1], &[2]), view(&[], &[1, 2]));
        let ballots = [
            Ballot {
                voter: "n1",
                live: true,
                verdicts: &a,
            },
            Ballot {
                voter: "n2",
                live: true,
                verdicts: &b,
            },
            Ballot {
                voter: "n3",
                live: true,
                verdicts: &b,
            },
        ];
        let cands = [candidate(1), candidate(2)];
        assert!(decide(&cands, &Count::of(&ballots)).evicted.is_empty());
        let alone = [Ballot {
            voter: "n1",
            live: true,
            verdicts: &a,
        }];
        assert_eq!(
            decide(&cands, &Count::of(&alone)).evicted,
            BTreeSet::from([ip(1)])
        );
    }

    #[test]
    fn a_copy_that_sees_everything_down_is_presumed_cut_off() {
        let (cut, ok) = (view(&[1, 2, 3], &[]), view(&[], &[1, 2, 3]));
        let ballots = [
            Ballot {
                voter: "cut",
                live: true,
                verdicts: &cut,
            },
            Ballot {
                voter: "ok",
                live: true,
                verdicts: &ok,
            },
        ];
        let count = Count::of(&ballots);
        assert_eq!(count.cut_off, ["cut"]);
        assert_eq!(count.counted, ["ok"]);
        assert!(
            decide(&[candidate(1), candidate(2)], &count)
                .evicted
                .is_empty()
        );
    }

    #[test]
    fn the_last_ready_endpoint_is_spared_the_one_with_fewest_down_votes() {
        let (a, b, c) = (
            view(&[1, 2], &[3]),
            view(&[2, 3], &[1]),
            view(&[1, 2, 3], &[]),
        );
        let (d, e) = (view(&[2, 3], &[1]), view(&[1, 2], &[3]));
        let ballots = [
            Ballot {
                voter: "a",
                live: true,
                verdicts: &a,
            },
            Ballot {
                voter: "b",
                live: true,
                verdicts: &b,
            },
            Ballot {
                voter: "c",
                live: true,
                verdicts: &c,
            },
            Ballot {
                voter: "d",
                live: true,
                verdicts: &d,
            },
            Ballot {
                voter: "e",
                live: true,
                verdicts: &e,
            },
        ];
        // c is cut off; of a, b, d, e: 1 has 2 down (no majority), 2 has 4, 3 has 2.
        let got = decide(
            &[candidate(1), candidate(2), candidate(3)],
            &Count::of(&ballots),
        );
        assert_eq!(got.evicted, BTreeSet::from([ip(2)]));
        // Every candidate down by majority: the fewest votes (then the lowest address) stays.
        let (x, z) = (view(&[1, 2], &[3]), view(&[1], &[2, 3]));
        let ballots = [
            Ballot {
                voter: "x",
                live: true,
                verdicts: &x,
            },
            Ballot {
                voter: "y",
                live: true,
                verdicts: &x,
            },
            Ballot {
                voter: "z",
                live: true,
                verdicts: &z,
            },
        ];
        let count = Count::of(&ballots);
        let got = decide(&[candidate(1), candidate(2)], &count);
        assert_eq!(got.evicted, BTreeSet::from([ip(1)]));
        assert_eq!(got.spared, Some(ip(2)));
    }

    #[test]
    fn an_endpoint_nothing_can_probe_is_never_evicted() {
        let v = view(&[1], &[2]);
        let ballots = [Ballot {
            voter: "n",
            live: true,
            verdicts: &v,
        }];
        let unprobed = Candidate {
            address: ip(1),
            target: None,
            needs_up: false,
        };
        let got = decide(&[unprobed, candidate(2)], &Count::of(&ballots));
        assert!(got.evicted.is_empty());
    }

    fn arb_view() -> impl Strategy<Value = BTreeMap<Target, Verdict>> {
        proptest::collection::btree_map(
            (1u8..6).prop_map(target),
            prop_oneof![Just(Verdict::Up), Just(Verdict::Down)],
            0..6,
        )
    }

    fn arb_ballots() -> impl Strategy<Value = Vec<(String, bool, BTreeMap<Target, Verdict>)>> {
        proptest::collection::vec((any::<bool>(), arb_view()), 0..7).prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (live, view))| (format!("n{i}"), live, view))
                .collect()
        })
    }

    fn ballots_of(v: &[(String, bool, BTreeMap<Target, Verdict>)]) -> Vec<Ballot<'_>> {
        v.iter()
            .map(|(voter, live, verdicts)| Ballot {
                voter,
                live: *live,
                verdicts,
            })
            .collect()
    }

    fn arb_candidates() -> impl Strategy<Value = Vec<Candidate>> {
        proptest::collection::vec(
            ((1u8..6), any::<bool>()).prop_map(|(l, needs_up)| Candidate {
                needs_up,
                ..candidate(l)
            }),
            1..6,
        )
    }

    proptest! {
        #[test]
        fn never_evicts_every_ready_endpoint(b in arb_ballots(), c in arb_candidates()) {
            let d = decide(&c, &Count::of(&ballots_of(&b)));
            let distinct: BTreeSet<IpAddr> = c.iter().map(|c| c.address).collect();
            prop_assert!(d.evicted.len() < distinct.len());
        }

        #[test]
        fn a_minority_never_evicts(b in arb_ballots(), c in arb_candidates()) {
            let count = Count::of(&ballots_of(&b));
            for a in decide(&c, &count).evicted {
                let t = c.iter().find(|c| c.address == a).and_then(|c| c.target.clone());
                let t = t.expect("an evicted endpoint has a target");
                let needs_up = c.iter().filter(|c| c.address == a).all(|c| c.needs_up);
                prop_assert!(needs_up || 2 * count.down(&t) > count.voters(&t));
            }
        }

        #[test]
        fn what_a_majority_of_its_voters_sees_up_is_never_evicted(
            b in arb_ballots(), c in arb_candidates(),
        ) {
            let count = Count::of(&ballots_of(&b));
            let d = decide(&c, &count);
            for cand in &c {
                let t = cand.target.as_ref().expect("every arbitrary candidate has a target");
                let all_up = c
                    .iter()
                    .filter(|o| o.address == cand.address)
                    .all(|o| o.target.as_ref().is_some_and(|t| count.majority_up(t)));
                if all_up {
                    prop_assert!(!d.evicted.contains(&cand.address), "{} {:?}", t, count);
                }
            }
        }

        #[test]
        fn abstentions_never_change_a_decision(
            b in arb_ballots(), c in arb_candidates(), extra in 1usize..5,
        ) {
            let before = decide(&c, &Count::of(&ballots_of(&b)));
            // Live copies with verdicts only on targets none of the candidates has (another
            // pair's, seen up so they are not cut off): they abstain on every candidate.
            let mut more = b.clone();
            for i in 0..extra {
                more.push((format!("abstains-{i}"), true, view(&[], &[200])));
            }
            prop_assert_eq!(decide(&c, &Count::of(&ballots_of(&more))), before);
        }

        #[test]
        fn stale_and_cut_off_ballots_never_count(
            b in arb_ballots(), c in arb_candidates(), extra in arb_view(), cut in 1u8..6,
        ) {
            let before = decide(&c, &Count::of(&ballots_of(&b)));
            let mut more = b.clone();
            more.push(("stale".into(), false, extra));
            more.push(("cut".into(), true, view(&(1..=cut).collect::<Vec<_>>(), &[])));
            prop_assert_eq!(decide(&c, &Count::of(&ballots_of(&more))), before);
        }

        #[test]
        fn order_does_not_matter(b in arb_ballots(), c in arb_candidates(), seed in any::<u64>()) {
            let before = decide(&c, &Count::of(&ballots_of(&b)));
            let mut rng = fastrand::Rng::with_seed(seed);
            let (mut b2, mut c2) = (b.clone(), c.clone());
            rng.shuffle(&mut b2);
            rng.shuffle(&mut c2);
            prop_assert_eq!(decide(&c2, &Count::of(&ballots_of(&b2))), before);
            prop_assert_eq!(Count::of(&ballots_of(&b2)), Count::of(&ballots_of(&b)));
        }
    }
}
