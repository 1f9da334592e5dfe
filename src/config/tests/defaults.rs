//! The built-in defaults and the packaged `10-defaults.toml`, which must agree.

use super::*;
use crate::config::raw::{
    RawAnnotations, RawLease, RawLog, RawMembers, RawMetrics, RawNodes, RawPair, RawProbe, RawSync,
};

#[test]
fn packaged_defaults_file_equals_built_in_defaults() {
    let dir = dir_with(&[("10-defaults.toml", DEFAULTS_TOML)]);
    let loaded = load_env(&[&dir], &[], &Overrides::default()).unwrap();
    assert_eq!(loaded.files, vec![dir.path().join("10-defaults.toml")]);
    assert_eq!(loaded.config, Config::default());
}

#[test]
fn packaged_defaults_file_lists_every_key() {
    // A struct literal with every field, so adding a key to RawConfig fails to compile here
    // until this test (and therefore the file) knows about it.
    let all = RawConfig {
        kubeconfig: Some(String::new()),
        allow_insecure_tls: Some(false),
        pair: Some(vec![RawPair {
            source: Some(String::new()),
            sources: Some(vec![crate::config::raw::RawSource {
                service: Some(String::new()),
                kubeconfig: Some(String::new()),
                addresses: Some(vec![]),
            }]),
            target: Some(String::new()),
            probe: Some(serde_json::Value::Bool(false)),
            derive_families: Some(true),
        }]),
        annotations: Some(RawAnnotations {
            enabled: Some(true),
            allowed_sources: Some(vec![]),
        }),
        lease: Some(RawLease {
            namespace: Some(String::new()),
            name: Some(String::new()),
            identity: Some(String::new()),
            duration_secs: Some(0),
            renew_deadline_secs: Some(0),
            retry_period_secs: Some(0),
            runtime_dir: Some(String::new()),
        }),
        members: Some(RawMembers {
            heartbeat_secs: Some(0),
            expiry_secs: Some(0),
            forget_after_secs: Some(0),
            namespace: Some(String::new()),
        }),
        probe: Some(RawProbe {
            period_ms: Some(0),
            timeout_ms: Some(0),
            failure_threshold: Some(0),
            success_threshold: Some(0),
            min_up_ms: Some(0),
            max_targets: Some(0),
            tls_server_name: Some(String::new()),
        }),
        nodes: Some(RawNodes {
            selector: Some(String::new()),
        }),
        sync: Some(RawSync {
            resync_interval_secs: Some(0),
            max_backoff_secs: Some(0),
            keep_last_known_secs: Some(0),
        }),
        log: Some(RawLog {
            level: Some(String::new()),
        }),
        metrics: Some(RawMetrics {
            listen: Some(String::new()),
        }),
    };
    let schema: toml::Table = toml::Table::try_from(&all).unwrap();
    let file: toml::Table = toml::from_str(DEFAULTS_TOML).unwrap();
    let mut checked = 0;
    for (key, value) in &schema {
        let sub = match value {
            toml::Value::Table(t) => t.clone(),
            toml::Value::Array(a) if key == "pair" => a[0].as_table().unwrap().clone(),
            _ => {
                assert!(file.contains_key(key), "10-defaults.toml lacks key '{key}'");
                checked += 1;
                continue;
            }
        };
        let in_file = match &file[key] {
            toml::Value::Array(a) => a[0].as_table().unwrap().clone(),
            v => v.as_table().unwrap().clone(),
        };
        for leaf in sub.keys() {
            // A key whose default is "unset" can only be shown commented out.
            let commented = DEFAULTS_TOML.contains(&format!("\n# {leaf} = "));
            assert!(
                in_file.contains_key(leaf) || commented,
                "10-defaults.toml lacks key '{key}.{leaf}'"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 33);
}

#[test]
fn built_in_default_pair_parses_as_a_valid_service_ref() {
    let d = Config::default();
    assert_eq!(
        d.pairs[0].sources,
        [crate::source::Source::Service(
            names::DEFAULT_SOURCE.parse().unwrap()
        )]
    );
    assert_eq!(d.pairs[0].target, names::DEFAULT_TARGET.parse().unwrap());
    assert_eq!(
        d.annotations.allowed_sources,
        vec![names::DEFAULT_SOURCE.parse::<ServiceRef>().unwrap()]
    );
}

#[test]
fn no_drop_ins_at_all_gives_the_built_in_defaults() {
    let missing = PathBuf::from("/nonexistent/endpoint-copier/config.d");
    let loaded = load_from(&[missing], Vec::new(), &Overrides::default()).unwrap();
    assert!(loaded.files.is_empty());
    assert_eq!(loaded.config, Config::default());
}

#[test]
fn default_member_timings_are_10_30_and_900_seconds() {
    let m = Config::default().members;
    assert_eq!(m.heartbeat, Duration::from_secs(10));
    assert_eq!(m.expiry, Duration::from_secs(30));
    assert_eq!(m.forget_after, Duration::from_secs(900));
    assert_eq!(m.namespace, "endpoint-copier");
}
