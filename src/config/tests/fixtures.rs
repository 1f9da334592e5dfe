//! Operator-style tests, moved from the former `tests/config.rs`: the packaged defaults plus the
//! drop-ins in `tests/fixtures/config/`, laid out as an operator would lay them out.

use super::*;

/// The package's drop-in folder, as installed in /usr/lib/endpoint-copier/config.d.
fn packaged() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("packaging/config.d")
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/config")
        .join(name)
}

fn load_dirs(dirs: &[PathBuf]) -> Result<Loaded, Error> {
    load_from(dirs, Vec::new(), &Overrides::default())
}

fn pair(source: &str, target: &str) -> PairConfig {
    PairConfig::new(source.parse().unwrap(), target.parse().unwrap())
}

#[test]
fn packaged_defaults_alone_give_the_built_in_config() {
    let loaded = load_dirs(&[packaged()]).unwrap();
    assert_eq!(loaded.files, vec![packaged().join("10-defaults.toml")]);
    assert_eq!(loaded.config, Config::default());
}

#[test]
fn site_drop_in_adds_a_pair_and_keeps_the_other_defaults() {
    let loaded = load_dirs(&[packaged(), fixture("site")]).unwrap();
    assert_eq!(
        loaded.files,
        vec![
            packaged().join("10-defaults.toml"),
            fixture("site").join("50-site.toml")
        ]
    );
    let c = loaded.config;
    assert_eq!(
        c.pairs,
        vec![
            pair("default/kubernetes", "default/kubernetes-vip"),
            pair("ingress/router", "ingress/router-vip"),
        ]
    );
    assert_eq!(c.lease.identity.as_deref(), Some("cp-1.site-a"));
    assert_eq!(c.sync.resync_interval, Duration::from_secs(120));
    // Untouched keys keep the packaged values.
    assert_eq!(c.lease.duration, Duration::from_secs(4));
    assert_eq!(c.kubeconfig, Kubeconfig::Auto);
}

#[test]
fn empty_same_named_drop_in_masks_the_packaged_defaults() {
    let loaded = load_dirs(&[packaged(), fixture("mask")]).unwrap();
    assert!(loaded.files.is_empty(), "{:?}", loaded.files);
    assert_eq!(loaded.config, Config::default());
}

#[test]
fn disabling_annotations_keeps_the_default_pair() {
    let c = load_dirs(&[packaged(), fixture("no-annotations")])
        .unwrap()
        .config;
    assert!(!c.annotations.enabled);
    assert_eq!(c.pairs, Config::default().pairs);
}

#[test]
fn empty_pair_list_removes_the_default_pair() {
    let c = load_dirs(&[packaged(), fixture("no-pairs")])
        .unwrap()
        .config;
    assert!(c.pairs.is_empty());
    assert!(c.annotations.enabled);
}

#[test]
fn typo_is_reported_with_file_line_and_column_and_exits_78() {
    let e = load_dirs(&[packaged(), fixture("typo")]).unwrap_err();
    let file = fixture("typo").join("50-site.toml");
    assert_eq!(
        e.to_string(),
        format!(
            "{}:3:1: unknown key 'lease.duraton_secs' (expected one of: namespace, name, identity, duration_secs, renew_deadline_secs, retry_period_secs, runtime_dir)",
            file.display()
        )
    );
}

#[test]
fn inconsistent_lease_timings_are_refused_naming_the_key() {
    let e = load_dirs(&[packaged(), fixture("bad-lease")]).unwrap_err();
    let Error::InvalidValue { origin, key, .. } = &e else {
        panic!("expected an invalid value, got {e}");
    };
    assert_eq!(key, "lease.duration_secs");
    assert_eq!(
        origin,
        &Provenance::File {
            path: fixture("bad-lease").join("50-lease.toml"),
            line: 2,
            column: 17,
        }
    );
}

#[test]
fn environment_overrides_drop_ins_and_the_flag_overrides_both() {
    let env = vec![
        (
            "ENDPOINT_COPIER_SYNC__RESYNC_INTERVAL_SECS".to_owned(),
            "60".to_owned(),
        ),
        (
            "ENDPOINT_COPIER_KUBECONFIG".to_owned(),
            "/etc/rancher/k3s/k3s.yaml".to_owned(),
        ),
        (
            "ENDPOINT_COPIER_LOG".to_owned(),
            "not a config key".to_owned(),
        ),
    ];
    let o = Overrides {
        config_dirs: Vec::new(),
        kubeconfig: Some(PathBuf::from("/srv/admin.kubeconfig")),
    };
    let c = load_from(&[packaged(), fixture("site")], env, &o)
        .unwrap()
        .config;
    assert_eq!(c.sync.resync_interval, Duration::from_secs(60));
    assert_eq!(
        c.kubeconfig,
        Kubeconfig::Path(PathBuf::from("/srv/admin.kubeconfig"))
    );
    assert_eq!(c.log.level, "info");
}
