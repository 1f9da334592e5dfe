//! The wire form of a member record — its annotations — and the size budget that keeps every
//! record writable by construction.
//!
//! Owns the JSON of [`names::MEMBER_PAIRS_ANNOTATION`] (each pair with its digest),
//! [`names::MEMBER_VERDICTS_ANNOTATION`] and [`names::MEMBER_ABSTENTIONS_ANNOTATION`]
//! (explanations only, dropped first by the budget), the three scalar annotations (nonce, twin
//! mark, version), and [`encode`], which picks the most complete
//! form that fits a byte budget: whole verdicts with their times, then without the times, then
//! grouped by probe (lossless, about a third of the size), then grouped with the down verdicts
//! left out first and the up verdicts last ([`Omitted`] says how many). The API refuses a
//! Lease whose annotations exceed 256 KiB (422); a record that grows past that with the number
//! of probe targets would stop the member's heartbeat, so the budget is a constant well below it
//! and the publisher lowers it further if the API still refuses (`publish.rs`). Building the
//! Lease and reading it back is `member.rs`'s.
//!
//! Why down verdicts go first: a missing verdict is an abstention, and the quorum evicts only on
//! a strict majority of down votes, so a ballot without its down votes can only keep endpoints,
//! never evict one; up votes go last because a ballot left with only down votes would look cut
//! off, and static addresses need up votes to stay ready.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use jiff::Timestamp;

use super::digest::PairDigest;
use super::member::{DecodeError, Error, MemberRecord, PairRef};
use crate::names::{self, ServiceRef};
use crate::probe::{Kind, Target, Verdict};

/// Bytes of annotations (keys and values, as the API counts them) a member record may take:
/// a quarter of the API's 256 KiB limit, so a record of 3,000 IPv4 targets fits whole and
/// nothing another writer adds can push ours over. Every copy watches every member Lease, so a
/// small record is also cheap to fan out.
pub const RECORD_BUDGET: usize = 64 * 1024;

/// The smallest budget the publisher lowers to after the API refused a record (below it, the
/// record goes without verdicts).
pub const MIN_BUDGET: usize = 1024;

/// The longest abstention reason a record carries, in characters: enough for a certificate's
/// names, bounded so that many abstentions cannot bloat the record.
pub const MAX_ABSTENTION_REASON: usize = 200;

/// Verdicts a record leaves out to fit its budget (the reader has no verdict on them: it
/// abstains).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Omitted {
    /// Up verdicts left out.
    #[serde(default)]
    pub up: usize,
    /// Down verdicts left out.
    #[serde(default)]
    pub down: usize,
}

impl Omitted {
    /// Whether nothing was left out.
    pub fn is_zero(&self) -> bool {
        self.up == 0 && self.down == 0
    }
}

/// Which form a record was written in, most complete first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Form {
    /// Every verdict with the wall-clock time it changed.
    Full,
    /// Every verdict, no times (`status` shows none).
    NoTimes,
    /// Every verdict, grouped by probe: `https://*:6443/readyz` and the addresses.
    Grouped,
    /// Grouped, some verdicts left out (down first).
    Partial,
}

/// A record's annotations, and what fitting them into the budget cost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    /// The annotations to write.
    pub annotations: BTreeMap<String, String>,
    /// The form the verdicts took.
    pub form: Form,
    /// Verdicts left out.
    pub omitted: Omitted,
    /// Their size as the API counts it (bytes of keys and values).
    pub bytes: usize,
}

/// The annotations of `record` in the most complete form whose size (keys and values) is at most
/// `budget` bytes. The pairs with their digests, nonce, twin mark and version always go whole
/// (they are bounded by the config); the verdicts shrink as the module documentation says, down to none at all.
///
/// # Errors
/// [`Error::Encode`] if JSON serialization fails (it does not for these types).
pub fn encode(record: &MemberRecord, budget: usize) -> Result<Encoded, Error> {
    let mut fixed = BTreeMap::from([(
        names::MEMBER_PAIRS_ANNOTATION.to_owned(),
        encode_pairs(&record.pairs, &record.digests)?,
    )]);
    if let Some(nonce) = &record.nonce {
        fixed.insert(names::MEMBER_NONCE_ANNOTATION.to_owned(), nonce.clone());
    }
    if let Some(twin) = &record.twin {
        fixed.insert(names::MEMBER_TWIN_ANNOTATION.to_owned(), twin.clone());
    }
    if let Some(version) = &record.version {
        fixed.insert(names::MEMBER_VERSION_ANNOTATION.to_owned(), version.clone());
    }
    let fixed_bytes = size(&fixed);
    // The abstentions explain; they decide nothing (an abstention is the absence of a verdict):
    // they go in whole if they fit beside the verdicts, else without their reasons, else not.
    let abstentions = [MAX_ABSTENTION_REASON, 0]
        .into_iter()
        .filter(|_| !record.abstained.is_empty())
        .map(|cut| encode_abstentions(&record.abstained, cut))
        .collect::<Result<Vec<String>, Error>>()?;
    let finish = |verdicts: Option<String>, form: Form, omitted: Omitted| {
        let mut annotations = fixed.clone();
        if let Some(v) = verdicts {
            annotations.insert(names::MEMBER_VERDICTS_ANNOTATION.to_owned(), v);
        }
        let key = names::MEMBER_ABSTENTIONS_ANNOTATION.len();
        if let Some(json) = abstentions
            .iter()
            .find(|json| size(&annotations) + key + json.len() <= budget)
        {
            annotations.insert(
                names::MEMBER_ABSTENTIONS_ANNOTATION.to_owned(),
                json.clone(),
            );
        }
        let bytes = size(&annotations);
        Encoded {
            annotations,
            form,
            omitted,
            bytes,
        }
    };
    if record.verdicts.is_empty() {
        return Ok(finish(None, Form::Full, Omitted::default()));
    }
    let key = names::MEMBER_VERDICTS_ANNOTATION.len();
    let fits = |json: &str| fixed_bytes + key + json.len() <= budget;
    let full = encode_flat(&record.verdicts, Some(&record.verdicts_since))?;
    if fits(&full) {
        return Ok(finish(Some(full), Form::Full, Omitted::default()));
    }
    let no_times = encode_flat(&record.verdicts, None)?;
    if fits(&no_times) {
        return Ok(finish(Some(no_times), Form::NoTimes, Omitted::default()));
    }
    // Up verdicts first, then down ones, each in target order: a prefix of this list is what a
    // partial record keeps.
    let ordered: Vec<(&Target, Verdict)> = record
        .verdicts
        .iter()
        .filter(|(_, v)| **v == Verdict::Up)
        .chain(record.verdicts.iter().filter(|(_, v)| **v == Verdict::Down))
        .map(|(t, v)| (t, *v))
        .collect();
    let grouped = encode_grouped(&ordered, Omitted::default())?;
    if fits(&grouped) {
        return Ok(finish(Some(grouped), Form::Grouped, Omitted::default()));
    }
    // The largest prefix that fits, by bisection (each try serializes at most the budget).
    let (mut lo, mut hi) = (0usize, ordered.len());
    let mut best: Option<String> = None;
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        let json = encode_grouped(&ordered[..mid], omitted_by(&ordered, mid))?;
        if fits(&json) {
            lo = mid;
            best = Some(json);
        } else {
            hi = mid - 1;
        }
    }
    let omitted = omitted_by(&ordered, lo);
    Ok(match best {
        Some(json) if lo > 0 => finish(Some(json), Form::Partial, omitted),
        // Not even one verdict fits: the record says only how many it leaves out, if that fits.
        _ => {
            let json = encode_grouped(&[], omitted)?;
            finish(fits(&json).then_some(json), Form::Partial, omitted)
        }
    })
}

/// What a prefix of `ordered` of length `kept` leaves out.
fn omitted_by(ordered: &[(&Target, Verdict)], kept: usize) -> Omitted {
    let mut omitted = Omitted::default();
    for (_, v) in ordered.iter().skip(kept) {
        match v {
            Verdict::Up => omitted.up += 1,
            Verdict::Down => omitted.down += 1,
        }
    }
    omitted
}

/// `{"target":"reason",...}`, sorted, compact, each reason cut to `cut` characters.
fn encode_abstentions(abstained: &BTreeMap<Target, String>, cut: usize) -> Result<String, Error> {
    let wire: BTreeMap<String, String> = abstained
        .iter()
        .map(|(t, why)| (t.to_string(), why.chars().take(cut).collect()))
        .collect();
    serde_json::to_string(&wire).map_err(Error::Encode)
}

/// The abstentions of [`names::MEMBER_ABSTENTIONS_ANNOTATION`]; what does not parse is left out,
/// and so is a target the record also votes on (the vote is what counts).
pub fn decode_abstentions(
    json: &str,
    verdicts: &BTreeMap<Target, Verdict>,
) -> BTreeMap<Target, String> {
    let wire: BTreeMap<String, String> = serde_json::from_str(json).unwrap_or_default();
    wire.into_iter()
        .filter_map(|(t, why)| Some((t.parse::<Target>().ok()?, why)))
        .filter(|(t, _)| !verdicts.contains_key(t))
        .map(|(t, why)| (t, why.chars().take(MAX_ABSTENTION_REASON).collect()))
        .collect()
}

/// Bytes of annotations as the API counts them against its limit: keys plus values.
pub fn size(annotations: &BTreeMap<String, String>) -> usize {
    annotations.iter().map(|(k, v)| k.len() + v.len()).sum()
}

/// The wire form of one pair in [`names::MEMBER_PAIRS_ANNOTATION`]. Readers before the digest
/// ignore the field (they ignore unknown fields).
#[derive(serde::Serialize, serde::Deserialize)]
struct WirePair {
    source: ServiceRef,
    target: ServiceRef,
    /// The pair's [`PairDigest`] in its wire form; absent in records of 0.1.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    digest: Option<String>,
}

/// `[{"source":"ns/a","target":"ns/b","digest":"s=…"},...]`, sorted (a `BTreeSet` iterates in
/// order), compact; a pair without a digest has no `digest` field.
fn encode_pairs(
    pairs: &BTreeSet<PairRef>,
    digests: &BTreeMap<PairRef, PairDigest>,
) -> Result<String, Error> {
    let wire: Vec<WirePair> = pairs
        .iter()
        .map(|pair| WirePair {
            source: pair.0.clone(),
            target: pair.1.clone(),
            digest: digests.get(pair).map(ToString::to_string),
        })
        .collect();
    serde_json::to_string(&wire).map_err(Error::Encode)
}

/// The pairs of [`names::MEMBER_PAIRS_ANNOTATION`], with the digests that are there and can be
/// read (a pair without one has an unknown configuration).
///
/// # Errors
/// [`DecodeError::Pairs`] when the JSON is not a list of pairs (unknown fields are ignored).
pub fn decode_pairs(
    json: &str,
) -> Result<(BTreeSet<PairRef>, BTreeMap<PairRef, PairDigest>), DecodeError> {
    let wire: Vec<WirePair> =
        serde_json::from_str(json).map_err(|e| DecodeError::Pairs(e.to_string()))?;
    let mut pairs = BTreeSet::new();
    let mut digests = BTreeMap::new();
    for p in wire {
        let pair = (p.source, p.target);
        if let Some(digest) = p.digest.as_deref().and_then(PairDigest::parse) {
            digests.insert(pair.clone(), digest);
        }
        pairs.insert(pair);
    }
    Ok((pairs, digests))
}

/// The longest version string a record carries, in characters.
const MAX_VERSION: usize = 64;

/// The version of [`names::MEMBER_VERSION_ANNOTATION`]: `None` unless it is 1 to
/// 64 characters of `[0-9A-Za-z.+-]` (a SemVer version), so that a forged value
/// cannot put anything else into STATUS or a log line.
pub fn decode_version(value: &str) -> Option<String> {
    let ok = !value.is_empty()
        && value.len() <= MAX_VERSION
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'+' | b'-'));
    ok.then(|| value.to_owned())
}

/// The wire form of [`names::MEMBER_VERDICTS_ANNOTATION`]. Readers before the grouped form read
/// `down` and `up` only (empty in the grouped form: they then see no verdicts, an abstention).
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct WireVerdicts {
    #[serde(default)]
    down: Vec<String>,
    #[serde(default)]
    up: Vec<String>,
    /// When each verdict last changed (RFC 3339), by target.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    since: BTreeMap<String, String>,
    /// The grouped form: one entry per probe.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    groups: Vec<WireGroup>,
    /// Verdicts left out to fit the budget.
    #[serde(default, skip_serializing_if = "Omitted::is_zero")]
    omitted: Omitted,
}

/// One probe of the grouped form: the target with `*` for its address, and the addresses (IPv6
/// without brackets) seen down and up.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct WireGroup {
    probe: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    down: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    up: Vec<String>,
}

/// `{"down":[...],"up":[...],"since":{...}}` (`since` only when given), each list sorted,
/// compact.
fn encode_flat(
    verdicts: &BTreeMap<Target, Verdict>,
    since: Option<&BTreeMap<Target, Timestamp>>,
) -> Result<String, Error> {
    let mut wire = WireVerdicts::default();
    for (target, verdict) in verdicts {
        match verdict {
            Verdict::Down => wire.down.push(target.to_string()),
            Verdict::Up => wire.up.push(target.to_string()),
        }
        if let Some(at) = since.and_then(|s| s.get(target)) {
            wire.since.insert(target.to_string(), at.to_string());
        }
    }
    serde_json::to_string(&wire).map_err(Error::Encode)
}

/// The probe of `target` with `*` for its address: what the targets of one group share.
fn probe_of(target: &Target) -> String {
    match &target.kind {
        Kind::Https { path } | Kind::Http { path } => {
            format!("{}://*:{}{path}", target.kind.scheme(), target.port)
        }
        Kind::Tcp => format!("tcp://*:{}", target.port),
    }
}

/// The grouped form of `verdicts`, groups in probe order and addresses in target order.
fn encode_grouped(verdicts: &[(&Target, Verdict)], omitted: Omitted) -> Result<String, Error> {
    let mut groups: BTreeMap<String, (BTreeSet<&Target>, BTreeSet<&Target>)> = BTreeMap::new();
    for (target, verdict) in verdicts {
        let (down, up) = groups.entry(probe_of(target)).or_default();
        match verdict {
            Verdict::Down => down.insert(*target),
            Verdict::Up => up.insert(*target),
        };
    }
    let address = |t: &&Target| t.address.to_string();
    let wire = WireVerdicts {
        groups: groups
            .into_iter()
            .map(|(probe, (down, up))| WireGroup {
                probe,
                down: down.iter().map(address).collect(),
                up: up.iter().map(address).collect(),
            })
            .collect(),
        omitted,
        ..WireVerdicts::default()
    };
    serde_json::to_string(&wire).map_err(Error::Encode)
}

/// The target `address` probed as `probe` (`https://*:6443/readyz`).
fn target_in(probe: &str, address: &str) -> Option<Target> {
    let ip: IpAddr = address.parse().ok()?;
    let host = match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    };
    probe.replacen('*', &host, 1).parse().ok()
}

/// Verdicts by target, when each changed, and how many the writer left out.
pub type Verdicts = (
    BTreeMap<Target, Verdict>,
    BTreeMap<Target, Timestamp>,
    Omitted,
);

/// The verdicts of [`names::MEMBER_VERDICTS_ANNOTATION`], either form; what does not parse is
/// left out (a newer kind of target: the ballot abstains on it, which never evicts).
pub fn decode_verdicts(json: &str) -> Verdicts {
    let wire: WireVerdicts = serde_json::from_str(json).unwrap_or_default();
    let flat = |list: Vec<String>, verdict: Verdict| {
        list.into_iter()
            .filter_map(move |t| Some((t.parse::<Target>().ok()?, verdict)))
            .collect::<Vec<_>>()
    };
    let mut ups = flat(wire.up, Verdict::Up);
    let mut downs = flat(wire.down, Verdict::Down);
    for group in &wire.groups {
        let each = |list: &[String], verdict: Verdict| {
            list.iter()
                .filter_map(|a| Some((target_in(&group.probe, a)?, verdict)))
                .collect::<Vec<_>>()
        };
        ups.extend(each(&group.up, Verdict::Up));
        downs.extend(each(&group.down, Verdict::Down));
    }
    // A target listed as both is read as down: a writer never lists one twice, and down is the
    // verdict a majority must reach, so a garbled ballot cannot help to keep a dead endpoint.
    let verdicts: BTreeMap<Target, Verdict> = ups.into_iter().chain(downs).collect();
    let since = wire
        .since
        .iter()
        .filter_map(|(t, at)| Some((t.parse::<Target>().ok()?, at.parse::<Timestamp>().ok()?)))
        .filter(|(t, _)| verdicts.contains_key(t))
        .collect();
    (verdicts, since, wire.omitted)
}

#[cfg(test)]
mod tests {
    #[test]
    fn abstentions_travel_in_their_own_annotation_cut_short_and_never_beside_a_vote() {
        let t = |s: &str| s.parse::<Target>().unwrap();
        let mut rec = MemberRecord::new("node-1", []);
        rec.verdicts = BTreeMap::from([(t("https://198.51.100.1:6443/readyz"), Verdict::Up)]);
        rec.abstained = BTreeMap::from([(
            t("https://198.51.100.2:6443/readyz"),
            "TLS: the certificate does not name 198.51.100.2".to_owned(),
        )]);
        let annotations = encode(&rec, RECORD_BUDGET).unwrap().annotations;
        assert_eq!(
            annotations[names::MEMBER_ABSTENTIONS_ANNOTATION],
            r#"{"https://198.51.100.2:6443/readyz":"TLS: the certificate does not name 198.51.100.2"}"#
        );
        assert!(!annotations[names::MEMBER_VERDICTS_ANNOTATION].contains("198.51.100.2"));
        // A long reason is cut; a target also voted on is read as the vote only.
        let long = "x".repeat(1000);
        let json = format!(
            r#"{{"https://198.51.100.1:6443/readyz":"up?","https://198.51.100.3:6443/readyz":"{long}","nonsense":"y"}}"#
        );
        let read = decode_abstentions(&json, &rec.verdicts);
        assert_eq!(read.len(), 1);
        assert_eq!(
            read[&t("https://198.51.100.3:6443/readyz")].len(),
            MAX_ABSTENTION_REASON
        );
    }

    #[test]
    fn abstentions_never_push_a_record_over_its_budget() {
        let mut rec = MemberRecord::new("node-1", []);
        rec.abstained = (0..3000u32)
            .map(|i| {
                let ip = std::net::Ipv4Addr::from(0xc633_6400 + i);
                (
                    format!("https://{ip}:6443/readyz")
                        .parse::<Target>()
                        .unwrap(),
                    "TLS: ".to_owned() + &"y".repeat(300),
                )
            })
            .collect();
        let encoded = encode(&rec, RECORD_BUDGET).unwrap();
        assert!(encoded.bytes <= RECORD_BUDGET, "{} bytes", encoded.bytes);
    }

    use super::*;
    use proptest::prelude::*;

    fn target(i: u32, v6: bool) -> Target {
        let address = if v6 {
            IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, (i >> 16) as u16, i as u16])
        } else {
            IpAddr::from([198, 51, (100 + (i >> 8) % 3) as u8, i as u8])
        };
        Target {
            address,
            port: 6443,
            kind: Kind::Https {
                path: "/readyz".into(),
            },
        }
    }

    /// A record probing `n` distinct targets, every `down_every`-th seen down, each with a time.
    fn record(n: u32, down_every: u32) -> MemberRecord {
        let mut r = MemberRecord::new(
            "node-1",
            [(
                "default/kubernetes".parse().unwrap(),
                "default/kubernetes-vip".parse().unwrap(),
            )],
        );
        r.nonce = Some("0123456789abcdef".into());
        for i in 0..n {
            let t = Target {
                port: 6443 + (i / 700) as u16,
                ..target(i % 700, i % 2 == 1)
            };
            let v = if i % down_every == 0 {
                Verdict::Down
            } else {
                Verdict::Up
            };
            r.verdicts_since
                .insert(t.clone(), "2026-11-30T19:00:00.123456Z".parse().unwrap());
            r.verdicts.insert(t, v);
        }
        r
    }

    fn read_back(e: &Encoded) -> Verdicts {
        decode_verdicts(&e.annotations[names::MEMBER_VERDICTS_ANNOTATION])
    }

    #[test]
    fn a_small_record_goes_whole_with_its_times() {
        let r = record(3, 2);
        let e = encode(&r, RECORD_BUDGET).unwrap();
        assert_eq!(e.form, Form::Full);
        let (verdicts, since, omitted) = read_back(&e);
        assert_eq!(verdicts, r.verdicts);
        assert_eq!(since, r.verdicts_since);
        assert!(omitted.is_zero());
        assert_eq!(
            e.annotations[names::MEMBER_NONCE_ANNOTATION],
            "0123456789abcdef"
        );
    }

    #[test]
    fn three_thousand_targets_fit_the_budget_without_losing_a_verdict() {
        let r = record(3000, 7);
        let e = encode(&r, RECORD_BUDGET).unwrap();
        assert!(e.bytes <= RECORD_BUDGET, "{} bytes", e.bytes);
        assert_eq!(e.bytes, size(&e.annotations));
        assert_eq!(e.form, Form::Grouped);
        let (verdicts, _, omitted) = read_back(&e);
        assert_eq!(verdicts, r.verdicts);
        assert!(omitted.is_zero());
    }

    #[test]
    fn over_the_budget_down_verdicts_go_first_and_are_counted() {
        let r = record(3000, 3);
        // Room for every up verdict and a few thousand bytes of down ones.
        let ups_only = MemberRecord {
            verdicts: r
                .verdicts
                .iter()
                .filter(|(_, v)| **v == Verdict::Up)
                .map(|(t, v)| (t.clone(), *v))
                .collect(),
            ..r.clone()
        };
        let fixed = encode(
            &MemberRecord::new("node-1", r.pairs.clone()).with_nonce("0123456789abcdef"),
            0,
        )
        .unwrap()
        .bytes;
        let ups: Vec<(&Target, Verdict)> = ups_only.verdicts.iter().map(|(t, v)| (t, *v)).collect();
        let budget = fixed
            + names::MEMBER_VERDICTS_ANNOTATION.len()
            + encode_grouped(&ups, Omitted::default()).unwrap().len()
            + 4000;
        let grouped = encode(&r, budget).unwrap();
        assert!(grouped.bytes <= budget, "{} bytes", grouped.bytes);
        assert_eq!(grouped.form, Form::Partial);
        let (verdicts, _, omitted) = read_back(&grouped);
        let ups = ups_only.verdicts.len();
        let downs = r.verdicts.len() - ups;
        // Every up verdict kept, some down ones; what is kept is what was seen.
        assert_eq!(omitted.up, 0);
        assert!(omitted.down > 0 && omitted.down < downs, "{omitted:?}");
        assert_eq!(verdicts.len(), r.verdicts.len() - omitted.down);
        for (t, v) in &verdicts {
            assert_eq!(r.verdicts.get(t), Some(v));
        }
        // Tighter still: up verdicts go too, the ballot keeps only up ones.
        let tight = encode(&r, 20 * 1024).unwrap();
        let (verdicts, _, omitted) = read_back(&tight);
        assert_eq!(omitted.down, downs);
        assert!(omitted.up > 0);
        assert!(verdicts.values().all(|v| *v == Verdict::Up));
    }

    #[test]
    fn with_no_room_the_record_goes_without_verdicts_and_pairs_stay() {
        let r = record(50, 2);
        let e = encode(&r, 10).unwrap();
        assert!(
            !e.annotations
                .contains_key(names::MEMBER_VERDICTS_ANNOTATION)
        );
        assert!(e.annotations.contains_key(names::MEMBER_PAIRS_ANNOTATION));
        assert_eq!(e.omitted.up + e.omitted.down, 50);
        // Room for the count only: the reader learns how many it does not see.
        let e = encode(&r, e.bytes + 80).unwrap();
        let (verdicts, _, omitted) = read_back(&e);
        assert!(verdicts.is_empty());
        assert_eq!(omitted.up + omitted.down, 50);
    }

    #[test]
    fn verdicts_a_reader_cannot_parse_are_skipped_and_down_wins_a_double_listing() {
        let (got, _, _) = decode_verdicts(
            r#"{"down":["https://198.51.100.1:6443/readyz","quic://x"],"up":["https://198.51.100.1:6443/readyz","tcp://198.51.100.9:1"],"later":1}"#,
        );
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[&"https://198.51.100.1:6443/readyz"
                .parse::<Target>()
                .unwrap()],
            Verdict::Down
        );
        assert!(decode_verdicts("not json").0.is_empty());
        let (got, _, _) = decode_verdicts(
            r#"{"groups":[{"probe":"tcp://*:5432","up":["2001:db8::1","nope"]},{"probe":"quic://*:1","down":["198.51.100.1"]}]}"#,
        );
        assert_eq!(
            got.keys().map(ToString::to_string).collect::<Vec<_>>(),
            vec!["tcp://[2001:db8::1]:5432"]
        );
    }

    proptest! {
        #[test]
        fn every_record_fits_its_budget_and_reads_back_as_a_subset_of_what_it_saw(
            n in 0u32..400,
            down_every in 1u32..5,
            budget in 0usize..20_000,
        ) {
            let r = record(n, down_every);
            let e = encode(&r, budget).unwrap();
            let fixed = size(&encode(&MemberRecord { verdicts: BTreeMap::new(), ..r.clone() }, 0).unwrap().annotations);
            prop_assert!(e.bytes <= budget.max(fixed), "{} > {}", e.bytes, budget);
            let (verdicts, _, omitted) = e
                .annotations
                .get(names::MEMBER_VERDICTS_ANNOTATION)
                .map(|j| decode_verdicts(j))
                .unwrap_or((BTreeMap::new(), BTreeMap::new(), e.omitted));
            for (t, v) in &verdicts {
                prop_assert_eq!(r.verdicts.get(t), Some(v));
            }
            prop_assert_eq!(verdicts.len() + omitted.up + omitted.down, r.verdicts.len());
            // Never a down verdict kept while an up one is left out.
            prop_assert!(omitted.up == 0 || verdicts.values().all(|v| *v == Verdict::Up));
        }
    }
}
