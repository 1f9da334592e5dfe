//! The copier group as a one-shot command sees it: its member Leases read once (in the member
//! namespace, and where older versions keep theirs), each judged live when it was renewed within
//! its `leaseDurationSeconds` — at most the configured expiry, as the daemon caps it — of now
//! **by this host's clock**: unlike the daemon (`group::live`), a one-shot command has no history
//! of observed changes, so it compares timestamps and says how long ago each member renewed.
//! Pairs configured on some live members but not on this host (or the reverse) become warnings:
//! the leader keeps such slices and never deletes them while a live member wants them, which an
//! operator should know about. So do live members that run another version or configure a pair
//! differently (`group::skew`), this host's own member Lease no longer renewed (its daemon
//! stopped, or cannot write its record) and a record over its size budget. A live record whose
//! writer saw another live process under its identity is a problem: a twin's ballots do not
//! count.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::ListParams;
use kube::{Api, Client};

use super::Error;
use super::report::{ConfiguredPair, MemberReport, VerdictReport};
use crate::group::digest::PairDigest;
use crate::group::member::{PairRef, UNVERSIONED, VERSION};
use crate::group::skew::{Difference, Versions, differences_among};
use crate::group::{Group, MemberRecord};
use crate::probe::{Target, Verdict};

/// Lists `group`'s member Leases — in the member namespace, and in the election Lease's
/// namespace where older versions keep theirs (skipped if we may not list there) — and reports
/// each, judged with the configured `expiry`, sorted by identity; `identity` is this host's.
///
/// # Errors
/// [`Error::Api`] when the member Leases cannot be listed.
pub async fn read(
    client: &Client,
    group: &Group,
    identity: &str,
    now: Timestamp,
    expiry: std::time::Duration,
) -> Result<Vec<MemberReport>, Error> {
    let list = |namespace: &str| {
        let api: Api<Lease> = Api::namespaced(client.clone(), namespace);
        async move {
            api.list(&ListParams::default().labels(&group.member_selector()))
                .await
                .map_err(|source| Error::Api {
                    what: format!("list the member Leases of copier group {group}"),
                    source,
                })
        }
    };
    let mut leases = list(group.members_namespace()).await?.items;
    if let Some(legacy) = group.legacy_members_namespace() {
        match list(legacy).await {
            Ok(older) => leases.extend(older.items),
            // The right is optional (a missing one is a warning of its own).
            Err(e) if e.is_forbidden() => {}
            Err(e) => return Err(e),
        }
    }
    let mut members: Vec<MemberReport> = leases
        .iter()
        .map(|l| member_report(l, identity, now, expiry))
        .collect();
    members.sort_by(|a, b| a.identity.cmp(&b.identity).then(a.lease.cmp(&b.lease)));
    Ok(members)
}

/// One member Lease as reported, judged at `now`; its duration counts up to `expiry` only (a
/// record claiming longer is live no longer than one claiming `expiry`).
pub fn member_report(
    lease: &Lease,
    identity: &str,
    now: Timestamp,
    expiry: std::time::Duration,
) -> MemberReport {
    let name = format!(
        "{}/{}",
        lease.metadata.namespace.as_deref().unwrap_or_default(),
        lease.metadata.name.as_deref().unwrap_or_default()
    );
    let spec = lease.spec.as_ref();
    let renewed_secs_ago = spec
        .and_then(|s| s.renew_time.as_ref())
        .map(|t| (now - t.0).get_seconds());
    let lease_duration_secs = spec.and_then(|s| s.lease_duration_seconds);
    let cap = i64::try_from(expiry.as_secs()).unwrap_or(i64::MAX);
    // No duration: never live (the publisher always writes one).
    let live = match (renewed_secs_ago, lease_duration_secs) {
        (Some(ago), Some(d)) => ago <= i64::from(d).min(cap),
        _ => false,
    };
    let (mut nonce, mut twin, mut omitted, mut version) = (None, None, 0, None);
    let (who, pairs, verdicts, error) = match MemberRecord::from_lease(lease) {
        Ok(record) => {
            nonce.clone_from(&record.nonce);
            twin.clone_from(&record.twin);
            omitted = record.omitted.up + record.omitted.down;
            version.clone_from(&record.version);
            let pairs = record
                .pairs
                .iter()
                .map(|pair| ConfiguredPair {
                    source: pair.0.to_string(),
                    target: pair.1.to_string(),
                    digest: record.digests.get(pair).map(ToString::to_string),
                })
                .collect();
            let mut verdicts: Vec<VerdictReport> = record
                .verdicts
                .iter()
                .map(|(t, v)| VerdictReport {
                    endpoint: t.to_string(),
                    verdict: match v {
                        Verdict::Up => "up",
                        Verdict::Down => "down",
                    }
                    .to_owned(),
                    since: record.verdicts_since.get(t).map(ToString::to_string),
                    reason: None,
                })
                .collect();
            // Abstentions are listed beside the votes, never counted as one (`ballots` reads
            // only "up" and "down").
            verdicts.extend(record.abstained.iter().map(|(t, why)| VerdictReport {
                endpoint: t.to_string(),
                verdict: "abstains".to_owned(),
                since: None,
                reason: Some(why.clone()),
            }));
            verdicts.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
            (record.identity, pairs, verdicts, None)
        }
        Err(e) => (
            spec.and_then(|s| s.holder_identity.clone())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| name.clone()),
            Vec::new(),
            Vec::new(),
            Some(e.to_string()),
        ),
    };
    MemberReport {
        this_host: who == identity,
        identity: who,
        lease: name,
        live,
        renewed_secs_ago,
        lease_duration_secs,
        pairs,
        error,
        verdicts,
        nonce,
        twin,
        omitted,
        version,
    }
}

/// The problems with the members: a live record whose writer saw another live process writing
/// under its identity — two copies share that identity, and their ballots do not count.
pub fn problems(members: &[MemberReport]) -> Vec<String> {
    members
        .iter()
        .filter(|m| m.live)
        .filter_map(|m| {
            let twin = m.twin.as_deref()?;
            let nonces = format!("{} and {twin}", m.nonce.as_deref().unwrap_or("-"));
            Some(format!(
                "two live copies run as {} (process nonces {nonces}): their probe verdicts are not counted; stop one, or give each host its own [lease] identity",
                m.identity
            ))
        })
        .collect()
}

/// The ballots of the live members as a one-shot command can judge them (renewed within their
/// duration by this host's clock), for [`crate::probe::quorum::Count::of`]; none of an
/// identity a live record says has a twin.
pub fn ballots(members: &[MemberReport]) -> Vec<(String, BTreeMap<Target, Verdict>)> {
    let twins: BTreeSet<&str> = members
        .iter()
        .filter(|m| m.live && m.twin.is_some())
        .map(|m| m.identity.as_str())
        .collect();
    members
        .iter()
        .filter(|m| m.live && m.error.is_none() && !twins.contains(m.identity.as_str()))
        .map(|m| {
            let verdicts = m
                .verdicts
                .iter()
                .filter_map(|v| {
                    let verdict = match v.verdict.as_str() {
                        "up" => Verdict::Up,
                        "down" => Verdict::Down,
                        _ => return None,
                    };
                    Some((v.endpoint.parse::<Target>().ok()?, verdict))
                })
                .collect();
            (m.identity.clone(), verdicts)
        })
        .collect()
}

/// The warnings about the members: unreadable records, and every pair configured on some live
/// members but not on others, this host counting as live with `own_pairs` (its own config is the
/// truth about itself; its published record may lag behind a restart).
pub fn warnings(
    identity: &str,
    own_pairs: &BTreeSet<ConfiguredPair>,
    members: &[MemberReport],
) -> Vec<String> {
    let mut out = Vec::new();
    // Only a member Lease that exists and stopped: before the daemon first ran on this host (at
    // install, from combustion) there is none, and that is no news.
    let own: Vec<&MemberReport> = members.iter().filter(|m| m.this_host).collect();
    if !own.is_empty() && !own.iter().any(|m| m.live) {
        let ago = own
            .iter()
            .filter_map(|m| m.renewed_secs_ago)
            .min()
            .map_or_else(
                || "never renewed".to_owned(),
                |a| format!("renewed {a}s ago"),
            );
        out.push(format!(
            "this host's member Lease ({identity}) is not live ({ago}): the daemon here is not running or cannot write it (its STATUS and the metric endpoint_copier_member_publisher_up say why); its probe verdicts are not counted"
        ));
    }
    for m in members.iter().filter(|m| m.live && m.omitted > 0) {
        out.push(format!(
            "member {} leaves {} probe verdicts out of its record (over its size budget): it abstains on them",
            m.identity, m.omitted
        ));
    }
    for m in members.iter().filter(|m| !m.this_host) {
        if let Some(e) = &m.error {
            out.push(format!(
                "member Lease {} cannot be read ({e}): the leader counts it as wanting every target and deletes nothing while it is live",
                m.lease
            ));
        }
    }
    let others: Vec<&MemberReport> = members
        .iter()
        .filter(|m| m.live && !m.this_host && m.error.is_none())
        .collect();
    // A pair is its source and target; the digest says how it is configured (below).
    let key = |p: &ConfiguredPair| ConfiguredPair {
        digest: None,
        ..p.clone()
    };
    let names = |pairs: &[ConfiguredPair]| pairs.iter().map(key).collect::<BTreeSet<_>>();
    let own_keys: BTreeSet<ConfiguredPair> = own_pairs.iter().map(key).collect();
    let mut all: BTreeMap<ConfiguredPair, (Vec<&str>, Vec<&str>)> = BTreeMap::new();
    for p in own_pairs
        .iter()
        .chain(others.iter().flat_map(|m| m.pairs.iter()))
    {
        all.entry(key(p)).or_default();
    }
    for (pair, (on, off)) in &mut all {
        for m in &others {
            if names(&m.pairs).contains(pair) {
                on.push(&m.identity);
            } else {
                off.push(&m.identity);
            }
        }
    }
    for (pair, (on, off)) in all {
        if own_keys.contains(&pair) {
            if off.is_empty() {
                continue;
            }
            let leads = if off.len() == 1 {
                format!("while {} leads", off[0])
            } else {
                "while one of them leads".to_owned()
            };
            out.push(format!(
                "pair {} <- {} is configured on this host ({identity}) but not on {}: {leads}, its slices are kept but not updated",
                pair.target,
                pair.source,
                off.join(", ")
            ));
        } else {
            let live = if on.len() == 1 {
                format!("while {} is live", on[0])
            } else {
                "while any of them is live".to_owned()
            };
            out.push(format!(
                "pair {} <- {} is configured on {} only: kept, never deleted, {live}",
                pair.target,
                pair.source,
                on.join(", ")
            ));
        }
    }
    out.extend(skew_warnings(identity, own_pairs, &others));
    out
}

/// The warnings about how the live members differ beyond their pairs: the versions they run
/// (this host counting as this build), and pairs configured differently (`group::skew`'s rule,
/// this host counting with `own_pairs`).
fn skew_warnings(
    identity: &str,
    own_pairs: &BTreeSet<ConfiguredPair>,
    others: &[&MemberReport],
) -> Vec<String> {
    let mut out = Vec::new();
    let mut versions: BTreeMap<String, Vec<String>> = BTreeMap::new();
    versions
        .entry(VERSION.to_owned())
        .or_default()
        .push(identity.to_owned());
    for m in others {
        versions
            .entry(m.version.clone().unwrap_or_else(|| UNVERSIONED.to_owned()))
            .or_default()
            .push(m.identity.clone());
    }
    if let Some(note) = Versions(versions.clone()).note() {
        let who: Vec<String> = versions
            .iter()
            .map(|(v, ids)| format!("{v} on {}", ids.join(", ")))
            .collect();
        out.push(format!(
            "{note} ({}): finish the upgrade (docs/usage/upgrade.md); until then what only the newer version does waits",
            who.join("; ")
        ));
    }
    let digests = |pairs: &mut dyn Iterator<Item = &ConfiguredPair>| {
        pairs
            .filter_map(|p| {
                let pair = (p.source.parse().ok()?, p.target.parse().ok()?);
                Some((pair, PairDigest::parse(p.digest.as_deref()?)?))
            })
            .collect::<BTreeMap<PairRef, PairDigest>>()
    };
    let mut configs: BTreeMap<String, BTreeMap<PairRef, PairDigest>> = others
        .iter()
        .map(|m| (m.identity.clone(), digests(&mut m.pairs.iter())))
        .collect();
    configs.insert(identity.to_owned(), digests(&mut own_pairs.iter()));
    out.extend(differences_among(&configs).iter().map(Difference::note));
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::group::member::member_lease;

    fn pair(s: &str, t: &str) -> ConfiguredPair {
        ConfiguredPair {
            source: s.into(),
            target: t.into(),
            digest: None,
        }
    }

    fn member(identity: &str, live: bool, pairs: &[ConfiguredPair]) -> MemberReport {
        MemberReport {
            identity: identity.into(),
            lease: format!("endpoint-copier.{identity}"),
            this_host: identity == "node-1",
            live,
            renewed_secs_ago: Some(if live { 1 } else { 100 }),
            lease_duration_secs: Some(30),
            pairs: pairs.to_vec(),
            error: None,
            verdicts: Vec::new(),
            nonce: None,
            twin: None,
            omitted: 0,
            version: Some(VERSION.into()),
        }
    }

    #[test]
    fn a_member_is_live_within_its_lease_duration_by_our_clock() {
        let record = MemberRecord::new(
            "node-2",
            [("a/src".parse().unwrap(), "a/vip".parse().unwrap())],
        );
        let lease = member_lease(
            &Group::default_group(),
            &record,
            Duration::from_secs(30),
            Timestamp::UNIX_EPOCH,
        )
        .unwrap();
        let at = |secs| Timestamp::UNIX_EPOCH + jiff::SignedDuration::from_secs(secs);
        let expiry = Duration::from_secs(30);
        let m = member_report(&lease, "node-1", at(30), expiry);
        assert!(m.live && !m.this_host);
        assert_eq!(m.renewed_secs_ago, Some(30));
        assert_eq!(m.pairs, vec![pair("a/src", "a/vip")]);
        assert!(!member_report(&lease, "node-1", at(31), expiry).live);
        assert!(member_report(&lease, "node-2", at(0), expiry).this_host);
        // A forged duration counts only up to the configured expiry.
        let mut forged = lease.clone();
        forged.spec.as_mut().unwrap().lease_duration_seconds = Some(i32::MAX);
        assert!(member_report(&forged, "node-1", at(30), expiry).live);
        assert!(!member_report(&forged, "node-1", at(31), expiry).live);
    }

    #[test]
    fn a_twin_is_a_problem_and_its_ballot_is_not_counted() {
        let mut twin = member("node-2", true, &[]);
        twin.nonce = Some("aaaa".into());
        twin.twin = Some("bbbb".into());
        let members = vec![member("node-1", true, &[]), twin];
        assert_eq!(
            problems(&members),
            vec!["two live copies run as node-2 (process nonces aaaa and bbbb): their probe verdicts are not counted; stop one, or give each host its own [lease] identity".to_owned()]
        );
        let counted: Vec<String> = ballots(&members).into_iter().map(|(id, _)| id).collect();
        assert_eq!(counted, vec!["node-1".to_owned()]);
    }

    #[test]
    fn this_hosts_member_not_live_and_a_truncated_record_are_warned_about() {
        let mut big = member("node-2", true, &[]);
        big.omitted = 12;
        let members = vec![member("node-1", false, &[]), big];
        let w = warnings("node-1", &BTreeSet::new(), &members);
        assert!(
            w[0].starts_with("this host's member Lease (node-1) is not live (renewed 100s ago): "),
            "{w:?}"
        );
        assert_eq!(
            w[1],
            "member node-2 leaves 12 probe verdicts out of its record (over its size budget): it abstains on them"
        );
        // None at all (the daemon never ran here, e.g. `check` at install): no news.
        assert!(warnings("node-1", &BTreeSet::new(), &[]).is_empty());
    }

    #[test]
    fn another_version_and_a_pair_configured_differently_are_warned_about() {
        let with = |last: u8| {
            let p = crate::config::PairConfig::of(
                vec![
                    crate::source::Source::Service("default/kubernetes".parse().unwrap()),
                    crate::source::Source::Static(crate::source::StaticSource::new([
                        std::net::IpAddr::from([198, 51, 100, last]),
                    ])),
                ],
                "default/kubernetes-vip".parse().unwrap(),
            );
            ConfiguredPair {
                digest: Some(PairDigest::of(&p).to_string()),
                ..pair("default/kubernetes", "default/kubernetes-vip")
            }
        };
        let own: BTreeSet<ConfiguredPair> = [with(1)].into();
        let mut older = member(
            "node-3",
            true,
            &[pair("default/kubernetes", "default/kubernetes-vip")],
        );
        older.version = None;
        let members = vec![
            member("node-1", true, &[with(1)]),
            member("node-2", true, &[with(2)]),
            older,
        ];
        let w = warnings("node-1", &own, &members);
        // The pair is the same pair everywhere (no "configured on ... only"), only its digest
        // differs; node-3 publishes none and is not compared.
        assert_eq!(w.len(), 2, "{w:?}");
        if VERSION != UNVERSIONED {
            assert_eq!(
                w[0],
                format!(
                    "members run 0.1.0 and {VERSION} (0.1.0 on node-3; {VERSION} on node-1, node-2): finish the upgrade (docs/usage/upgrade.md); until then what only the newer version does waits"
                )
            );
        }
        assert_eq!(
            w[1],
            "pair default/kubernetes -> default/kubernetes-vip is configured differently on live copies: node-1 differs from node-2 in its static addresses; its EndpointSlices follow the configuration of whichever copy leads"
        );
        // All on one version and one configuration: nothing.
        let same = vec![
            member("node-1", true, &[with(1)]),
            member("node-2", true, &[with(1)]),
        ];
        assert!(warnings("node-1", &own, &same).is_empty());
    }

    #[test]
    fn pairs_configured_elsewhere_or_only_here_are_warned_about_and_stale_members_are_ignored() {
        let common = pair("default/kubernetes", "default/kubernetes-vip");
        let extra = pair("edge/api", "edge/api-vip");
        let mine = pair("lab/a", "lab/a-vip");
        let own: BTreeSet<ConfiguredPair> = [common.clone(), mine].into();
        let members = vec![
            member("node-1", true, std::slice::from_ref(&common)),
            member("node-2", true, &[common.clone(), extra]),
            member("node-3", false, &[pair("old/x", "old/x-vip")]),
        ];
        assert_eq!(
            warnings("node-1", &own, &members),
            vec![
                "pair edge/api-vip <- edge/api is configured on node-2 only: kept, never deleted, while node-2 is live".to_owned(),
                "pair lab/a-vip <- lab/a is configured on this host (node-1) but not on node-2: while node-2 leads, its slices are kept but not updated".to_owned(),
            ]
        );
    }
}
