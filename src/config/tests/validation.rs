//! Validation rules: ranges, names, and the cross-key rules, each error naming the key.

use super::*;

fn invalid(text: &str) -> (String, String) {
    match err_of(text).0 {
        Error::InvalidValue { key, reason, .. } => (key, reason),
        e => panic!("expected an invalid value, got {e}"),
    }
}

#[test]
fn pair_source_must_be_namespace_slash_name() {
    let (key, reason) = invalid("[[pair]]\nsource = \"kubernetes\"\ntarget = \"default/vip\"\n");
    assert_eq!(key, "pair[0].source");
    assert!(reason.contains("namespace/name"), "{reason}");
}

#[test]
fn pair_without_target_is_refused() {
    let (key, reason) = invalid("[[pair]]\nsource = \"default/kubernetes\"\n");
    assert_eq!(key, "pair[0]");
    assert!(reason.contains("missing key 'target'"), "{reason}");
}

#[test]
fn pair_without_source_is_refused() {
    let (key, reason) = invalid("[[pair]]\ntarget = \"default/x\"\n");
    assert_eq!(key, "pair[0]");
    assert!(reason.contains("missing key 'source'"), "{reason}");
}

#[test]
fn pair_whose_source_is_its_target_is_refused() {
    let (key, reason) = invalid("[[pair]]\nsource = \"a/b\"\ntarget = \"a/b\"\n");
    assert_eq!(key, "pair[0].target");
    assert!(reason.contains("also the source"), "{reason}");
}

#[test]
fn two_pairs_with_the_same_target_are_refused() {
    let (key, reason) = invalid(
        "[[pair]]\nsource = \"a/b\"\ntarget = \"a/t\"\n[[pair]]\nsource = \"a/c\"\ntarget = \"a/t\"\n",
    );
    assert_eq!(key, "pair[1].target");
    assert!(reason.contains("already the target of pair[0]"), "{reason}");
}

#[test]
fn allowed_sources_entries_are_validated_with_their_index() {
    let (key, _) = invalid("[annotations]\nallowed_sources = [\"default/kubernetes\", \"nope\"]\n");
    assert_eq!(key, "annotations.allowed_sources[1]");
}

#[test]
fn lease_duration_must_exceed_renew_deadline() {
    let (key, reason) = invalid("[lease]\nduration_secs = 2\n");
    assert_eq!(key, "lease.duration_secs");
    assert!(
        reason.contains("greater than renew_deadline_secs (2)"),
        "{reason}"
    );
}

#[test]
fn lease_defaults_bound_a_hard_takeover_to_five_seconds() {
    // The goal of issue #11: a follower takes over a dead leader's claim one duration after the
    // last renewal it saw; the rest of the 5 s is for the watch delivery and the first write.
    let d = Config::default().lease;
    assert!(d.duration + Duration::from_millis(500) <= Duration::from_secs(5));
    assert!(d.renew_deadline + d.retry_period < d.duration);
    assert!(d.retry_period >= Duration::from_secs(1));
}

#[test]
fn integer_lease_timings_of_older_configs_stay_valid() {
    let (c, _) =
        load_toml("[lease]\nduration_secs = 15\nrenew_deadline_secs = 10\nretry_period_secs = 2\n");
    let lease = c.unwrap().lease;
    assert_eq!(lease.duration, Duration::from_secs(15));
    assert_eq!(lease.retry_period, Duration::from_secs(2));
}

#[test]
fn lease_runtime_dir_is_an_absolute_path_or_empty_for_none() {
    let (c, _) = load_toml("[lease]\nruntime_dir = \"/tmp/x\"\n");
    assert_eq!(
        c.unwrap().lease.runtime_dir,
        Some(std::path::PathBuf::from("/tmp/x"))
    );
    let (c, _) = load_toml("[lease]\nruntime_dir = \"\"\n");
    assert_eq!(c.unwrap().lease.runtime_dir, None);
    let (key, reason) = invalid("[lease]\nruntime_dir = \"run/x\"\n");
    assert_eq!(key, "lease.runtime_dir");
    assert!(reason.contains("absolute path"), "{reason}");
}

#[test]
fn lease_renew_deadline_must_exceed_1_2_retry_periods() {
    // The default 2 s is not more than 1.2 × 9 s = 10.8 s.
    let (key, reason) = invalid("[lease]\nduration_secs = 30\nretry_period_secs = 9\n");
    assert_eq!(key, "lease.retry_period_secs");
    assert!(reason.contains("1.2 × retry_period_secs (9)"), "{reason}");
    // 10 s is exactly 1.2 × 8.33 s: with whole seconds, 8 passes and the boundary is strict
    // (with a duration long enough for renew deadline + retry period).
    let (c, _) =
        load_toml("[lease]\nduration_secs = 20\nrenew_deadline_secs = 10\nretry_period_secs = 8\n");
    assert_eq!(c.unwrap().lease.retry_period, Duration::from_secs(8));
    let (key, _) =
        invalid("[lease]\nduration_secs = 30\nrenew_deadline_secs = 12\nretry_period_secs = 10\n");
    assert_eq!(key, "lease.renew_deadline_secs");
}

#[test]
fn lease_retry_period_must_be_at_least_one_second() {
    let (key, reason) = invalid("[lease]\nretry_period_secs = 0\n");
    assert_eq!(key, "lease.retry_period_secs");
    assert!(reason.contains("at least 1"), "{reason}");
}

#[test]
fn lease_namespace_must_be_a_dns_label() {
    assert_eq!(
        invalid("[lease]\nnamespace = \"kube.system\"\n").0,
        "lease.namespace"
    );
    assert_eq!(invalid("[lease]\nnamespace = \"\"\n").0, "lease.namespace");
}

#[test]
fn lease_name_must_be_a_dns_subdomain() {
    assert_eq!(
        invalid("[lease]\nname = \"Endpoint_Copier\"\n").0,
        "lease.name"
    );
    let (c, _) = load_toml("[lease]\nname = \"endpoint-copier.site-a\"\n");
    assert_eq!(c.unwrap().lease.name, "endpoint-copier.site-a");
}

#[test]
fn lease_identity_must_not_be_empty_when_set() {
    assert_eq!(invalid("[lease]\nidentity = \" \"\n").0, "lease.identity");
    let (c, _) = load_toml("[lease]\nidentity = \"node-1\"\n");
    assert_eq!(c.unwrap().lease.identity.as_deref(), Some("node-1"));
}

#[test]
fn resync_interval_must_be_at_least_ten_seconds() {
    assert_eq!(
        invalid("[sync]\nresync_interval_secs = 9\n").0,
        "sync.resync_interval_secs"
    );
    let (c, _) = load_toml("[sync]\nresync_interval_secs = 10\n");
    assert_eq!(c.unwrap().sync.resync_interval, Duration::from_secs(10));
}

#[test]
fn lease_timings_and_sync_intervals_have_upper_bounds() {
    let (key, reason) = invalid("[lease]\nduration_secs = 99999999999\n");
    assert_eq!(key, "lease.duration_secs");
    assert!(reason.contains("at most 3600"), "{reason}");
    let (key, reason) = invalid("[sync]\nresync_interval_secs = 999999999\n");
    assert_eq!(key, "sync.resync_interval_secs");
    assert!(reason.contains("at most 86400"), "{reason}");
}

#[test]
fn max_backoff_must_be_at_least_one_second() {
    assert_eq!(
        invalid("[sync]\nmax_backoff_secs = 0\n").0,
        "sync.max_backoff_secs"
    );
}

#[test]
fn kubeconfig_must_be_auto_or_an_absolute_path() {
    assert_eq!(invalid("kubeconfig = \"rke2.yaml\"\n").0, "kubeconfig");
    assert_eq!(invalid("kubeconfig = \"\"\n").0, "kubeconfig");
    let (c, _) = load_toml("kubeconfig = \"/etc/rancher/k3s/k3s.yaml\"\n");
    assert_eq!(
        c.unwrap().kubeconfig,
        Kubeconfig::Path(PathBuf::from("/etc/rancher/k3s/k3s.yaml"))
    );
}

#[test]
fn metrics_listen_must_be_loopback() {
    let (key, reason) = invalid("[metrics]\nlisten = \"0.0.0.0:9402\"\n");
    assert_eq!(key, "metrics.listen");
    assert!(reason.contains("loopback"), "{reason}");
    assert_eq!(
        invalid("[metrics]\nlisten = \"198.51.100.7:9402\"\n").0,
        "metrics.listen"
    );
    assert_eq!(
        invalid("[metrics]\nlisten = \"localhost:9402\"\n").0,
        "metrics.listen"
    );
    let (c, _) = load_toml("[metrics]\nlisten = \"[::1]:9000\"\n");
    assert_eq!(
        c.unwrap().metrics.listen,
        Some("[::1]:9000".parse().unwrap())
    );
}

#[test]
fn empty_metrics_listen_disables_metrics() {
    let (c, _) = load_toml("[metrics]\nlisten = \"\"\n");
    assert_eq!(c.unwrap().metrics.listen, None);
}

#[test]
fn log_level_must_parse_as_a_filter() {
    let (key, reason) = invalid("[log]\nlevel = \"info,=[\"\n");
    assert_eq!(key, "log.level");
    assert!(reason.contains("not a log filter"), "{reason}");
    assert_eq!(invalid("[log]\nlevel = \"\"\n").0, "log.level");
    let (c, _) = load_toml("[log]\nlevel = \"endpoint_copier=debug,kube=info\"\n");
    assert_eq!(c.unwrap().log.level, "endpoint_copier=debug,kube=info");
}

#[test]
fn allow_insecure_tls_and_annotations_enabled_are_read() {
    let (c, _) = load_toml("allow_insecure_tls = true\n[annotations]\nenabled = false\n");
    let c = c.unwrap();
    assert!(c.allow_insecure_tls);
    assert!(!c.annotations.enabled);
    assert_eq!(
        c.annotations.allowed_sources,
        Config::default().annotations.allowed_sources
    );
}

#[test]
fn lease_renew_deadline_plus_retry_period_must_be_less_than_duration() {
    // 2 + 1 = 3 is not less than 3: the old leader's last request could land after the
    // successor's first write.
    let (e, path) = err_of("[lease]\nduration_secs = 3\n");
    assert_eq!(
        e.to_string(),
        format!(
            "{}:2:17: invalid value for 'lease.duration_secs': renew_deadline_secs (2) + retry_period_secs (1) must be less than duration_secs (3)",
            path.display()
        )
    );
    let (c, _) = load_toml("[lease]\nduration_secs = 5\n");
    assert_eq!(c.unwrap().lease.duration, Duration::from_secs(5));
}

#[test]
fn lease_sum_rule_points_at_the_timing_the_operator_set() {
    let (key, reason) = invalid("[lease]\nrenew_deadline_secs = 3\n");
    assert_eq!(key, "lease.renew_deadline_secs");
    assert!(
        reason.contains("renew_deadline_secs (3) + retry_period_secs (1)"),
        "{reason}"
    );
    let (key, reason) =
        invalid("[lease]\nduration_secs = 14\nrenew_deadline_secs = 10\nretry_period_secs = 5\n");
    assert_eq!(key, "lease.duration_secs");
    assert!(
        reason.contains("must be less than duration_secs (14)"),
        "{reason}"
    );
}

#[test]
fn default_lease_timings_satisfy_every_lease_rule() {
    let d = Config::default().lease;
    assert!(d.duration > d.renew_deadline);
    assert!(d.renew_deadline.as_millis() * 10 > d.retry_period.as_millis() * 12);
    assert!(d.renew_deadline + d.retry_period < d.duration);
}

#[test]
fn members_keys_are_read_in_seconds() {
    let (c, _) =
        load_toml("[members]\nheartbeat_secs = 5\nexpiry_secs = 20\nforget_after_secs = 3600\n");
    assert_eq!(
        c.unwrap().members,
        MembersSettings {
            heartbeat: Duration::from_secs(5),
            expiry: Duration::from_secs(20),
            forget_after: Duration::from_secs(3600),
            namespace: "endpoint-copier".to_owned(),
        }
    );
}

#[test]
fn the_member_namespace_must_be_a_namespace_name() {
    let (c, _) = load_toml("[members]\nnamespace = \"copier-members\"\n");
    assert_eq!(c.unwrap().members.namespace, "copier-members");
    let (key, reason) = invalid("[members]\nnamespace = \"Kube_System\"\n");
    assert_eq!(key, "members.namespace");
    assert!(
        reason.contains("'Kube_System' is not a valid namespace"),
        "{reason}"
    );
}

#[test]
fn members_expiry_must_exceed_the_heartbeat() {
    let (e, path) = err_of("[members]\nexpiry_secs = 10\n");
    assert_eq!(
        e.to_string(),
        format!(
            "{}:2:15: invalid value for 'members.expiry_secs': expiry_secs (10) must be greater than heartbeat_secs (10)",
            path.display()
        )
    );
    let (key, reason) = invalid("[members]\nheartbeat_secs = 30\n");
    assert_eq!(key, "members.heartbeat_secs");
    assert!(
        reason.contains("expiry_secs (30) must be greater than heartbeat_secs (30)"),
        "{reason}"
    );
}

#[test]
fn members_forget_after_must_be_at_least_the_expiry() {
    let (key, reason) = invalid("[members]\nforget_after_secs = 29\n");
    assert_eq!(key, "members.forget_after_secs");
    assert!(
        reason.contains("forget_after_secs (29) must be at least expiry_secs (30)"),
        "{reason}"
    );
    let (c, _) = load_toml("[members]\nforget_after_secs = 30\n");
    assert_eq!(c.unwrap().members.forget_after, Duration::from_secs(30));
    let (key, _) = invalid("[members]\nexpiry_secs = 1000\n");
    assert_eq!(key, "members.expiry_secs");
}

#[test]
fn members_heartbeat_must_be_at_least_one_second() {
    let (key, reason) = invalid("[members]\nheartbeat_secs = 0\n");
    assert_eq!(key, "members.heartbeat_secs");
    assert!(reason.contains("at least 1"), "{reason}");
}

#[test]
fn members_timings_have_an_upper_bound() {
    let (key, reason) = invalid("[members]\nforget_after_secs = 99999999999\n");
    assert_eq!(key, "members.forget_after_secs");
    assert!(reason.contains("at most 86400"), "{reason}");
}

#[test]
fn unknown_members_key_lists_the_valid_ones() {
    let (e, path) = err_of("[members]\nheartbeat = 10\n");
    assert_eq!(
        e.to_string(),
        format!(
            "{}:2:1: unknown key 'members.heartbeat' (expected one of: heartbeat_secs, expiry_secs, forget_after_secs, namespace)",
            path.display()
        )
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Lease timings are accepted exactly when client-go's rules and the sum rule all hold.
    #[test]
    fn lease_timings_are_accepted_exactly_when_every_rule_holds(
        duration in 1u64..40, renew in 1u64..40, retry in 0u64..40,
    ) {
        let (c, _) = load_toml(&format!(
            "[lease]\nduration_secs = {duration}\nrenew_deadline_secs = {renew}\nretry_period_secs = {retry}\n"
        ));
        let valid = retry >= 1 && renew * 10 > retry * 12 && duration > renew && renew + retry < duration;
        proptest::prop_assert_eq!(c.is_ok(), valid);
    }

    /// Member timings are accepted exactly when expiry > heartbeat ≥ 1 and forget_after ≥ expiry.
    #[test]
    fn member_timings_are_accepted_exactly_when_every_rule_holds(
        heartbeat in 0u64..50, expiry in 0u64..50, forget_after in 0u64..100,
    ) {
        let (c, _) = load_toml(&format!(
            "[members]\nheartbeat_secs = {heartbeat}\nexpiry_secs = {expiry}\nforget_after_secs = {forget_after}\n"
        ));
        let valid = heartbeat >= 1 && expiry > heartbeat && forget_after >= expiry;
        proptest::prop_assert_eq!(c.is_ok(), valid);
    }
}

#[test]
fn a_pair_reads_every_probe_kind_and_the_apiserver_source_probes_readyz_by_default() {
    let (c, _) = load_toml(
        "[[pair]]\nsource = \"default/kubernetes\"\ntarget = \"default/vip\"\n\
         [[pair]]\nsource = \"app/db\"\ntarget = \"app/db-vip\"\nprobe = { tcp = 5432 }\n\
         [[pair]]\nsource = \"app/web\"\ntarget = \"app/web-vip\"\n\
         [[pair]]\nsource = \"default/kubernetes\"\ntarget = \"default/vip2\"\nprobe = false\n\
         [[pair]]\nsource = \"app/api\"\ntarget = \"app/api-vip\"\nprobe = { https = \"/livez\", port = 8443 }\n",
    );
    let probes: Vec<String> = c
        .unwrap()
        .pairs
        .iter()
        .map(|p| crate::probe::spec::to_toml(p.probe.as_ref()))
        .collect();
    assert_eq!(
        probes,
        [
            "{ https = \"/readyz\" }",
            "{ tcp = 5432 }",
            "false",
            "false",
            "{ https = \"/livez\", port = 8443 }"
        ]
    );
}

#[test]
fn a_bad_probe_names_the_pair_and_where_it_is() {
    let (e, path) = err_of("[[pair]]\nsource = \"a/b\"\ntarget = \"a/c\"\nprobe = { tcp = 0 }\n");
    let text = e.to_string();
    assert!(
        text.starts_with(&format!("{}:4:", path.display())),
        "{text}"
    );
    assert!(text.contains("pair[0].probe"), "{text}");
    assert!(text.contains("tcp = 0 is not a port"), "{text}");
    let (key, reason) = invalid("[[pair]]\nsource = \"a/b\"\ntarget = \"a/c\"\nprobe = true\n");
    assert_eq!(key, "pair[0].probe");
    assert!(reason.contains("does not say what to probe"), "{reason}");
}

#[test]
fn probe_timing_rules_name_the_key() {
    for (text, key, says) in [
        (
            "[probe]\nperiod_ms = 50\ntimeout_ms = 20\n",
            "probe.period_ms",
            "100-60000",
        ),
        (
            "[probe]\ntimeout_ms = 300\n",
            "probe.timeout_ms",
            "less than period_ms (300)",
        ),
        (
            "[probe]\nperiod_ms = 200\n",
            "probe.period_ms",
            "timeout_ms (250) must be less",
        ),
        (
            "[probe]\nfailure_threshold = 1\n",
            "probe.failure_threshold",
            "never evict",
        ),
        (
            "[probe]\nsuccess_threshold = 0\n",
            "probe.success_threshold",
            "outside 1-100",
        ),
        (
            "[probe]\ntls_server_name = \"a b\"\n",
            "probe.tls_server_name",
            "neither",
        ),
        (
            "[probe]\nmin_up_ms = 600001\n",
            "probe.min_up_ms",
            "0-600000 (0: no flap damping)",
        ),
        (
            "[probe]\nmax_targets = 0\n",
            "probe.max_targets",
            "outside 1-10000",
        ),
        (
            "[probe]\nmax_targets = 10001\n",
            "probe.max_targets",
            "outside 1-10000",
        ),
    ] {
        let (k, reason) = invalid(text);
        assert_eq!(k, key, "{text}");
        assert!(reason.contains(says), "{text}: {reason}");
    }
    let (c, _) = load_toml(
        "[probe]\nperiod_ms = 1000\ntimeout_ms = 900\nfailure_threshold = 3\nsuccess_threshold = 2\ntls_server_name = \"kubernetes.default.svc\"\n",
    );
    let p = c.unwrap().probe;
    assert_eq!(p.timing.period, Duration::from_millis(1000));
    assert_eq!(p.timing.timeout, Duration::from_millis(900));
    assert_eq!(
        (p.timing.failure_threshold, p.timing.success_threshold),
        (3, 2)
    );
    assert_eq!(p.tls_server_name.as_deref(), Some("kubernetes.default.svc"));
    let (c, _) = load_toml("[probe]\nmin_up_ms = 0\nmax_targets = 10\n");
    let p = c.unwrap().probe;
    assert_eq!((p.timing.min_up, p.max_targets), (Duration::ZERO, 10));
}
