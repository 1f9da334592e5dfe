//! The `ENDPOINT_COPIER_*` environment and the `--kubeconfig` flag, over the drop-ins.

use super::*;

#[test]
fn env_overrides_files_with_double_underscore_nesting() {
    let dir = dir_with(&[(
        "50-site.toml",
        "[lease]\nduration_secs = 30\nname = \"x\"\n",
    )]);
    let c = load_env(
        &[&dir],
        &[
            ("ENDPOINT_COPIER_LEASE__DURATION_SECS", "20"),
            ("ENDPOINT_COPIER_KUBECONFIG", "/srv/kc.yaml"),
            ("ENDPOINT_COPIER_METRICS__LISTEN", ""),
        ],
        &Overrides::default(),
    )
    .unwrap()
    .config;
    assert_eq!(c.lease.duration, Duration::from_secs(20));
    assert_eq!(c.lease.name, "x");
    assert_eq!(
        c.kubeconfig,
        Kubeconfig::Path(PathBuf::from("/srv/kc.yaml"))
    );
    assert_eq!(c.metrics.listen, None);
}

#[test]
fn env_log_and_test_variables_are_not_config_keys() {
    let c = load_env(
        &[],
        &[
            ("ENDPOINT_COPIER_LOG", "trace"),
            ("ENDPOINT_COPIER_TEST_KUBECONFIG", "/tmp/kc"),
            ("ENDPOINT_COPIER_TEST_ANYTHING", "x"),
            ("OTHER_VARIABLE", "x"),
        ],
        &Overrides::default(),
    )
    .unwrap()
    .config;
    assert_eq!(c, Config::default());
}

#[test]
fn env_log_level_is_a_config_key_unlike_env_log() {
    let c = load_env(
        &[],
        &[("ENDPOINT_COPIER_LOG__LEVEL", "debug")],
        &Overrides::default(),
    )
    .unwrap()
    .config;
    assert_eq!(c.log.level, "debug");
}

#[test]
fn env_unknown_key_names_the_variable() {
    let e = load_env(
        &[],
        &[("ENDPOINT_COPIER_LEASE__DURATON_SECS", "20")],
        &Overrides::default(),
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "environment variable ENDPOINT_COPIER_LEASE__DURATON_SECS: unknown key 'lease.duraton_secs' (expected one of: namespace, name, identity, duration_secs, renew_deadline_secs, retry_period_secs, runtime_dir)"
    );
}

#[test]
fn env_bad_value_names_the_variable() {
    let dir = dir_with(&[("50-site.toml", "[sync]\nmax_backoff_secs = 5\n")]);
    let e = load_env(
        &[&dir],
        &[("ENDPOINT_COPIER_SYNC__MAX_BACKOFF_SECS", "soon")],
        &Overrides::default(),
    )
    .unwrap_err();
    assert!(
        matches!(&e, Error::WrongType { key, .. } if key == "sync.max_backoff_secs"),
        "{e}"
    );
    assert_eq!(
        e.origin(),
        Some(&Provenance::Env {
            var: "ENDPOINT_COPIER_SYNC__MAX_BACKOFF_SECS".to_owned()
        })
    );
}

#[test]
fn env_string_keys_take_the_value_literally() {
    let c = load_env(
        &[],
        &[
            ("ENDPOINT_COPIER_LEASE__IDENTITY", "12"),
            ("ENDPOINT_COPIER_LEASE__NAME", "\"quoted\""),
        ],
        &Overrides::default(),
    )
    .unwrap()
    .config;
    assert_eq!(c.lease.identity.as_deref(), Some("12"));
    assert_eq!(c.lease.name, "quoted");
}

#[test]
fn env_can_set_booleans_and_lists() {
    let c = load_env(
        &[],
        &[
            ("ENDPOINT_COPIER_ANNOTATIONS__ENABLED", "false"),
            (
                "ENDPOINT_COPIER_ANNOTATIONS__ALLOWED_SOURCES",
                "[\"default/kubernetes\", \"web/api\"]",
            ),
        ],
        &Overrides::default(),
    )
    .unwrap()
    .config;
    assert!(!c.annotations.enabled);
    assert_eq!(c.annotations.allowed_sources.len(), 2);
}

#[test]
fn kubeconfig_flag_wins_over_env_and_files() {
    let dir = dir_with(&[("50-site.toml", "kubeconfig = \"/etc/a.yaml\"\n")]);
    let o = Overrides {
        config_dirs: Vec::new(),
        kubeconfig: Some(PathBuf::from("/etc/c.yaml")),
    };
    let c = load_env(
        &[&dir],
        &[("ENDPOINT_COPIER_KUBECONFIG", "/etc/b.yaml")],
        &o,
    )
    .unwrap()
    .config;
    assert_eq!(c.kubeconfig, Kubeconfig::Path(PathBuf::from("/etc/c.yaml")));
}

#[test]
fn relative_kubeconfig_flag_names_the_flag() {
    let o = Overrides {
        config_dirs: Vec::new(),
        kubeconfig: Some(PathBuf::from("kc.yaml")),
    };
    let e = load_env(&[], &[], &o).unwrap_err();
    assert_eq!(
        e.to_string(),
        "flag --kubeconfig: invalid value for 'kubeconfig': 'kc.yaml' is neither \"auto\" nor an absolute path"
    );
}

#[test]
fn unreadable_config_dir_is_an_error_naming_it() {
    let dir = dir_with(&[("a.toml", "")]);
    let not_a_dir = dir.path().join("a.toml");
    let e = drop_ins(std::slice::from_ref(&not_a_dir)).unwrap_err();
    assert!(
        matches!(&e, Error::ReadDir { path, .. } if path == &not_a_dir),
        "{e}"
    );
}

#[test]
fn env_sets_members_keys_like_the_other_tables() {
    let c = load_env(
        &[],
        &[
            ("ENDPOINT_COPIER_MEMBERS__HEARTBEAT_SECS", "3"),
            ("ENDPOINT_COPIER_MEMBERS__EXPIRY_SECS", "9"),
            ("ENDPOINT_COPIER_MEMBERS__FORGET_AFTER_SECS", "60"),
        ],
        &Overrides::default(),
    )
    .unwrap()
    .config;
    assert_eq!(c.members.heartbeat, Duration::from_secs(3));
    assert_eq!(c.members.expiry, Duration::from_secs(9));
    assert_eq!(c.members.forget_after, Duration::from_secs(60));
}

#[test]
fn env_members_rule_names_the_variable() {
    let dir = dir_with(&[("50-site.toml", "[members]\nheartbeat_secs = 5\n")]);
    let e = load_env(
        &[&dir],
        &[("ENDPOINT_COPIER_MEMBERS__EXPIRY_SECS", "5")],
        &Overrides::default(),
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "environment variable ENDPOINT_COPIER_MEMBERS__EXPIRY_SECS: invalid value for 'members.expiry_secs': expiry_secs (5) must be greater than heartbeat_secs (5)"
    );
}
