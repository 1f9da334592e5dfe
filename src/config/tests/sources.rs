//! `[[pair]] sources`: the three kinds, and every way to write one wrong, each error naming the
//! file, line and column of the culprit.

use std::net::IpAddr;

use super::*;
use crate::source::{RemoteSource, Source, StaticSource};

/// The issue's example, with documentation addresses.
const EXAMPLE: &str = r#"
[[pair]]
target = "app/db"
sources = [
  { service = "app/db-primary" },
  { service = "app/db", kubeconfig = "/etc/endpoint-copier/remote.yaml" },
  { addresses = ["198.51.100.10", "2001:db8::10"] },
]
probe = { tcp = 5432 }
"#;

#[test]
fn the_three_kinds_of_source_load_in_config_order() {
    let (config, _) = load_toml(EXAMPLE);
    let pair = &config.unwrap().pairs[0];
    assert_eq!(pair.target, "app/db".parse().unwrap());
    assert_eq!(
        pair.sources,
        [
            Source::Service("app/db-primary".parse().unwrap()),
            Source::Remote(RemoteSource {
                kubeconfig: "/etc/endpoint-copier/remote.yaml".into(),
                service: "app/db".parse().unwrap(),
            }),
            Source::Static(StaticSource::new(
                ["2001:db8::10", "198.51.100.10"].map(|a| a.parse::<IpAddr>().unwrap())
            )),
        ]
    );
    assert!(pair.probe.is_some());
    assert!(!pair.derive_families);
}

#[test]
fn a_remote_kubeconfig_path_is_normalized() {
    let (config, _) = load_toml(
        "[[pair]]\ntarget = \"app/db\"\nsources = [\n  { service = \"app/db\", kubeconfig = \"/etc//endpoint-copier/./remote.yaml\" },\n]\n",
    );
    let sources = &config.unwrap().pairs[0].sources;
    let [Source::Remote(remote)] = sources.as_slice() else {
        panic!("{sources:?}")
    };
    // As spelled (`Path`'s own equality already ignores the difference; the hash, the logs and
    // the member records do not).
    assert_eq!(
        remote.kubeconfig.as_os_str(),
        "/etc/endpoint-copier/remote.yaml"
    );
}

#[test]
fn every_addresses_entry_of_a_pair_is_one_static_source() {
    let (config, _) = load_toml(
        "[[pair]]\ntarget = \"app/x\"\nsources = [{ addresses = [\"203.0.113.2\"] }, { addresses = [\"203.0.113.1\", \"203.0.113.2\"] }]\n",
    );
    let pair = &config.unwrap().pairs[0];
    assert_eq!(
        pair.sources,
        [Source::Static(StaticSource::new(
            ["203.0.113.1", "203.0.113.2"].map(|a| a.parse::<IpAddr>().unwrap())
        ))]
    );
    assert_eq!(
        pair.probe, None,
        "static addresses are not probed unless asked"
    );
}

#[test]
fn a_source_reading_default_kubernetes_keeps_the_apiserver_defaults() {
    let (config, _) = load_toml(
        "[[pair]]\ntarget = \"default/kubernetes-vip\"\nsources = [{ service = \"default/kubernetes\" }, { addresses = [\"203.0.113.9\"] }]\n",
    );
    let pair = &config.unwrap().pairs[0];
    assert_eq!(pair.probe, Some(crate::probe::Spec::readyz()));
    assert!(pair.derive_families);
}

/// Loads `sources = [<entry>]` on line 3 of a drop-in; returns the error and the file.
fn bad_source(entry: &str) -> (Error, PathBuf) {
    err_of(&format!(
        "[[pair]]\ntarget = \"app/db\"\nsources = [{entry}]\n"
    ))
}

#[test]
fn an_unknown_source_key_names_file_line_and_the_valid_keys() {
    let (e, path) = bad_source("{ servce = \"app/a\" }");
    let text = e.to_string();
    assert!(
        text.starts_with(&format!("{}:3:", path.display())),
        "{text}"
    );
    assert!(
        text.contains("unknown key 'pair[0].sources[0].servce'"),
        "{text}"
    );
    assert!(text.contains("service, kubeconfig, addresses"), "{text}");
}

#[test]
fn bad_sources_are_refused_with_the_culprit_named() {
    let unreadable = tempfile::tempdir().unwrap();
    let unreadable_entry = format!(
        "{{ service = \"app/a\", kubeconfig = \"{}\" }}",
        unreadable.path().display()
    );
    for (entry, key, says) in [
        (
            "{ addresses = [\"db.example.com\"] }",
            "pair[0].sources[0].addresses[0]",
            "'db.example.com' is a host name; static sources take IP addresses",
        ),
        (
            "{ addresses = [\"198.51.100.10:postgres\"] }",
            "pair[0].sources[0].addresses[0]",
            "names a port; write the address alone ('198.51.100.10'): the ports come from the target Service",
        ),
        (
            "{ addresses = [\"[2001:db8::1]:5432\"] }",
            "pair[0].sources[0].addresses[0]",
            "write the address alone ('2001:db8::1')",
        ),
        (
            "{ addresses = [\"127.0.0.1\"] }",
            "pair[0].sources[0].addresses[0]",
            "a loopback address (127.0.0.0/8), which the EndpointSlice API refuses",
        ),
        (
            "{ addresses = [\"fe80::1\"] }",
            "pair[0].sources[0].addresses[0]",
            "link-local",
        ),
        (
            "{ addresses = [\"198.51.100.300\"] }",
            "pair[0].sources[0].addresses[0]",
            "is not an IPv4 or IPv6 address",
        ),
        (
            "{ addresses = [] }",
            "pair[0].sources[0].addresses",
            "lists no address",
        ),
        (
            "{ service = \"app/a\", addresses = [\"203.0.113.1\"] }",
            "pair[0].sources[0]",
            "not both",
        ),
        (
            "{ kubeconfig = \"/etc/endpoint-copier/remote.yaml\" }",
            "pair[0].sources[0].kubeconfig",
            "'kubeconfig' goes with 'service'",
        ),
        ("{ }", "pair[0].sources[0]", "a source needs 'service'"),
        (
            "{ service = \"app/a\", kubeconfig = \"remote.yaml\" }",
            "pair[0].sources[0].kubeconfig",
            "'remote.yaml' is not an absolute path",
        ),
        (
            "{ service = \"app/a\", kubeconfig = \"/etc/endpoint-copier/../remote.yaml\" }",
            "pair[0].sources[0].kubeconfig",
            "contains '..'",
        ),
        (
            unreadable_entry.as_str(),
            "pair[0].sources[0].kubeconfig",
            "cannot be read",
        ),
        (
            "{ service = \"app/db\" }",
            "pair[0].sources[0]",
            "'app/db' is also the target of this pair",
        ),
        (
            "{ service = \"app/a\" }, { service = \"app/a\" }",
            "pair[0].sources[1]",
            "app/a is listed twice",
        ),
    ] {
        let (e, path) = bad_source(entry);
        let Error::InvalidValue {
            origin,
            key: got,
            reason,
        } = &e
        else {
            panic!("{entry}: expected an invalid value, got {e}");
        };
        assert_eq!(got, key, "{entry}: {e}");
        assert!(reason.contains(says), "{entry}: {reason}");
        match origin {
            Provenance::File { path: p, line, .. } => {
                assert_eq!((p, *line), (&path, 3), "{entry}: {e}");
            }
            other => panic!("{entry}: expected a file position, got {other}"),
        }
    }
}

#[test]
fn a_pair_sets_source_or_sources_and_at_least_one() {
    let (e, _) = err_of(
        "[[pair]]\nsource = \"app/a\"\ntarget = \"app/db\"\nsources = [{ service = \"app/b\" }]\n",
    );
    assert!(e.to_string().contains("set either 'source'"), "{e}");
    let (e, path) = err_of("[[pair]]\ntarget = \"app/db\"\nsources = []\n");
    assert!(e.to_string().contains("at least one source"), "{e}");
    assert_eq!(
        e.origin().map(ToString::to_string),
        Some(format!("{}:3:11", path.display()))
    );
}
