//! The digest of one configured pair: a short, stable summary of everything in its
//! [`PairConfig`] that changes what the leader writes, which each member publishes beside the
//! pair in its record (`wire.rs`), so that a leader sees when live copies configure one target
//! differently (`skew.rs`, [`super::skew::config_differences`]).
//!
//! The digest is made of **parts**, each the 32-bit FNV-1a hash of one canonical text, so that a
//! difference can be named (the static addresses, the probe...) without publishing the config
//! itself. The target is not a part: differences are looked for between records naming the same
//! pair, so it is equal by construction. Every part is computed from values that print the same on
//! every host and run: sources sorted and deduplicated (the union ignores their order), a remote
//! kubeconfig path normalized (`/etc//r.yaml` is `/etc/r.yaml`, as `config` and
//! `desired::union::source_id` spell it), addresses sorted.
//!
//! The wire form is `s=<8 hex>;a=<8 hex>;p=<8 hex>;d=<8 hex>`. A part's key names how it is
//! computed: a later version that hashes a part differently gives it a new key, and parts known
//! to only one side are not compared, so a difference is never reported because two versions
//! hash alike configs differently.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use super::fnv1a;
use crate::config::PairConfig;
use crate::probe::{Kind, Spec};
use crate::source::Source;

/// One part of a pair's configuration, hashed on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Part {
    /// The Services the pair reads, here and in other clusters (with their kubeconfig paths).
    Sources,
    /// The static addresses.
    Addresses,
    /// The probe (`probe`: kind, path, port, or none).
    Probe,
    /// `derive_families`.
    Derive,
}

impl Part {
    /// Every part this version computes, in wire order.
    pub const ALL: [Part; 4] = [Part::Sources, Part::Addresses, Part::Probe, Part::Derive];

    /// Its key in the wire form.
    pub fn key(self) -> &'static str {
        match self {
            Part::Sources => "s",
            Part::Addresses => "a",
            Part::Probe => "p",
            Part::Derive => "d",
        }
    }

    /// The part with wire key `key`, if this version knows it.
    fn of_key(key: &str) -> Option<Part> {
        Part::ALL.into_iter().find(|p| p.key() == key)
    }

    /// Its canonical text for `pair`: what the part's hash is taken over.
    fn text(self, pair: &PairConfig) -> String {
        match self {
            Part::Sources => {
                let mut services: Vec<String> = pair
                    .sources
                    .iter()
                    .filter_map(|s| match s {
                        Source::Service(s) => Some(format!("service {s}")),
                        Source::Remote(r) => {
                            let path: PathBuf = r.kubeconfig.components().collect();
                            Some(format!("remote {}|{}", path.display(), r.service))
                        }
                        Source::Static(_) => None,
                    })
                    .collect();
                services.sort();
                services.dedup();
                services.join("\n")
            }
            Part::Addresses => {
                let mut addresses: Vec<std::net::IpAddr> = pair
                    .sources
                    .iter()
                    .filter_map(|s| match s {
                        Source::Static(s) => Some(s.addresses.iter().copied()),
                        Source::Service(_) | Source::Remote(_) => None,
                    })
                    .flatten()
                    .collect();
                addresses.sort();
                addresses.dedup();
                addresses
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            }
            Part::Probe => match &pair.probe {
                None => "none".to_owned(),
                Some(spec) => probe_text(spec),
            },
            Part::Derive => pair.derive_families.to_string(),
        }
    }
}

impl fmt::Display for Part {
    /// What the part is, in the words of the config: `sources`, `static addresses`, `probe`,
    /// `derive_families`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Part::Sources => "sources",
            Part::Addresses => "static addresses",
            Part::Probe => "probe",
            Part::Derive => "derive_families",
        })
    }
}

/// `<scheme> <path> port=<port|->`: every field of a probe spec.
fn probe_text(spec: &Spec) -> String {
    let path = match &spec.kind {
        Kind::Https { path } | Kind::Http { path } => path.as_str(),
        Kind::Tcp => "",
    };
    let port = spec.port.map_or_else(|| "-".to_owned(), |p| p.to_string());
    format!("{} {path} port={port}", spec.kind.scheme())
}

/// The digest of one configured pair: its parts by wire key (unknown keys of a newer writer
/// kept, never compared).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PairDigest {
    parts: BTreeMap<String, String>,
}

impl PairDigest {
    /// The digest of `pair`.
    pub fn of(pair: &PairConfig) -> PairDigest {
        PairDigest {
            parts: Part::ALL
                .into_iter()
                .map(|p| {
                    (
                        p.key().to_owned(),
                        format!("{:08x}", fnv1a(p.text(pair).as_bytes())),
                    )
                })
                .collect(),
        }
    }

    /// Reads the wire form; `None` when it is not `key=value` pairs separated by `;` (a reader
    /// that cannot read a digest treats the pair's configuration as unknown).
    pub fn parse(wire: &str) -> Option<PairDigest> {
        let mut parts = BTreeMap::new();
        for item in wire.split(';') {
            let (key, value) = item.split_once('=')?;
            let plain = |s: &str| {
                !s.is_empty()
                    && s.len() <= 16
                    && s.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            };
            if !plain(key)
                || !plain(value)
                || parts.insert(key.to_owned(), value.to_owned()).is_some()
            {
                return None;
            }
        }
        Some(PairDigest { parts })
    }

    /// The parts this version knows in which `self` and `other` differ, in [`Part::ALL`] order;
    /// empty when they agree on every part both carry.
    pub fn differences(&self, other: &PairDigest) -> Vec<Part> {
        self.parts
            .iter()
            .filter_map(|(key, value)| {
                let theirs = other.parts.get(key)?;
                (theirs != value).then(|| Part::of_key(key)).flatten()
            })
            .collect::<std::collections::BTreeSet<Part>>()
            .into_iter()
            .collect()
    }

    /// Whether `self` and `other` agree on every part both carry (those this version knows and
    /// any other): the same configuration as far as both can tell.
    pub fn agrees_with(&self, other: &PairDigest) -> bool {
        self.parts
            .iter()
            .all(|(key, value)| other.parts.get(key).is_none_or(|v| v == value))
    }

    /// Eight hex digits summing up the whole digest, for `status` to show beside a pair.
    pub fn short(&self) -> String {
        format!("{:08x}", fnv1a(self.to_string().as_bytes()))
    }
}

impl fmt::Display for PairDigest {
    /// The wire form: `s=…;a=…;p=…;d=…` (keys in this version's order, then any others).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let known = Part::ALL.iter().map(|p| p.key());
        let others = self
            .parts
            .keys()
            .map(String::as_str)
            .filter(|k| Part::of_key(k).is_none());
        let mut first = true;
        for key in known.chain(others) {
            if let Some(value) = self.parts.get(key) {
                if !first {
                    f.write_str(";")?;
                }
                first = false;
                write!(f, "{key}={value}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{RemoteSource, StaticSource};
    use proptest::prelude::*;

    fn svc(s: &str) -> crate::names::ServiceRef {
        s.parse().unwrap()
    }

    fn remote(path: &str) -> Source {
        Source::Remote(RemoteSource {
            kubeconfig: path.into(),
            service: svc("app/db"),
        })
    }

    fn statics(addresses: &[&str]) -> Source {
        Source::Static(StaticSource::new(
            addresses.iter().map(|a| a.parse().unwrap()),
        ))
    }

    fn pair(sources: Vec<Source>) -> PairConfig {
        PairConfig::of(sources, svc("default/kubernetes-vip"))
    }

    #[test]
    fn a_remote_kubeconfig_spelled_two_ways_gives_one_digest() {
        let a = PairDigest::of(&pair(vec![remote("/etc//r.yaml")]));
        let b = PairDigest::of(&pair(vec![remote("/etc/r.yaml")]));
        let c = PairDigest::of(&pair(vec![remote("/etc/./r.yaml/")]));
        assert_eq!(a, b);
        assert_eq!(a.to_string(), b.to_string());
        assert_eq!(b, c);
        assert_ne!(a, PairDigest::of(&pair(vec![remote("/etc/s.yaml")])));
    }

    #[test]
    fn the_digest_is_stable_across_runs_and_versions() {
        // Pinned: a change of this value makes every mixed group report a difference during an
        // upgrade. Give a part a new key instead (see the module documentation).
        let d = PairDigest::of(&PairConfig::new(
            svc("default/kubernetes"),
            svc("default/kubernetes-vip"),
        ));
        assert_eq!(d.to_string(), "s=b327c2da;a=811c9dc5;p=143ef665;d=4db211e5");
        assert_eq!(PairDigest::parse(&d.to_string()), Some(d));
    }

    #[test]
    fn source_order_and_repeated_addresses_do_not_change_the_digest() {
        let a = pair(vec![
            Source::Service(svc("default/kubernetes")),
            statics(&["198.51.100.2", "198.51.100.1"]),
        ]);
        let b = pair(vec![
            statics(&["198.51.100.1", "198.51.100.2", "198.51.100.1"]),
            Source::Service(svc("default/kubernetes")),
        ]);
        assert_eq!(PairDigest::of(&a), PairDigest::of(&b));
    }

    #[test]
    fn each_field_of_the_pair_changes_its_own_part() {
        let base = pair(vec![
            Source::Service(svc("default/kubernetes")),
            statics(&["198.51.100.1"]),
        ]);
        let digest = PairDigest::of(&base);
        let changed = |p: PairConfig| PairDigest::of(&p).differences(&digest);

        let mut one_address = base.clone();
        one_address.sources[1] = statics(&["198.51.100.2"]);
        assert_eq!(changed(one_address), vec![Part::Addresses]);

        let mut other_service = base.clone();
        other_service.sources[0] = Source::Service(svc("default/other"));
        assert_eq!(changed(other_service), vec![Part::Sources]);

        let mut remote_added = base.clone();
        remote_added.sources.push(remote("/etc/r.yaml"));
        assert_eq!(changed(remote_added), vec![Part::Sources]);

        let mut no_probe = base.clone();
        no_probe.probe = None;
        assert_eq!(changed(no_probe), vec![Part::Probe]);

        let mut other_port = base.clone();
        other_port.probe = Some(Spec {
            port: Some(6444),
            ..Spec::readyz()
        });
        assert_eq!(changed(other_port), vec![Part::Probe]);

        let mut other_path = base.clone();
        other_path.probe = Some(Spec {
            kind: Kind::Https {
                path: "/livez".into(),
            },
            port: None,
        });
        assert_eq!(changed(other_path), vec![Part::Probe]);

        let mut tcp = base.clone();
        tcp.probe = Some(Spec {
            kind: Kind::Tcp,
            port: Some(6443),
        });
        assert_eq!(changed(tcp), vec![Part::Probe]);

        let mut derive = base.clone();
        derive.derive_families = !derive.derive_families;
        assert_eq!(changed(derive), vec![Part::Derive]);
    }

    #[test]
    fn parts_only_one_side_knows_are_not_compared_and_bad_wire_forms_are_unknown() {
        let ours = PairDigest::of(&pair(vec![statics(&["198.51.100.1"])]));
        let newer = PairDigest::parse(&format!("{ours};x=00000001")).unwrap();
        assert!(newer.differences(&ours).is_empty());
        assert!(ours.differences(&newer).is_empty());
        assert!(newer.agrees_with(&ours) && ours.agrees_with(&newer));
        let newer_other = PairDigest::parse(&format!("{ours};x=00000002")).unwrap();
        assert!(!newer.agrees_with(&newer_other));
        assert!(newer.differences(&newer_other).is_empty());
        assert_eq!(newer.to_string(), format!("{ours};x=00000001"));
        let fewer = PairDigest::parse("a=00000000").unwrap();
        assert_eq!(ours.differences(&fewer), vec![Part::Addresses]);
        for bad in ["", "s", "s=", "=1", "S=1", "s=1;s=2", "s=1;;a=2", "s=1 a=2"] {
            assert_eq!(PairDigest::parse(bad), None, "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn any_change_of_the_static_addresses_changes_the_digest(
            a in proptest::collection::btree_set(any::<u32>(), 1..6),
            b in proptest::collection::btree_set(any::<u32>(), 1..6),
        ) {
            let of = |set: &std::collections::BTreeSet<u32>| {
                PairDigest::of(&pair(vec![Source::Static(StaticSource::new(
                    set.iter().map(|n| std::net::IpAddr::from(n.to_be_bytes())),
                ))]))
            };
            prop_assert_eq!(a == b, of(&a) == of(&b));
        }
    }
}
