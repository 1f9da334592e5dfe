//! Error positions: every error names the file, line and column (in characters) of the culprit.

use super::*;

#[test]
fn unknown_key_names_file_line_column_and_the_valid_keys() {
    let (e, path) = err_of("[lease]\nduration_secs = 20\nduraton_secs = 20\n");
    assert_eq!(
        e.to_string(),
        format!(
            "{}:3:1: unknown key 'lease.duraton_secs' (expected one of: namespace, name, identity, duration_secs, renew_deadline_secs, retry_period_secs, runtime_dir)",
            path.display()
        )
    );
}

#[test]
fn unknown_top_level_key_points_at_the_key() {
    let (e, path) = err_of("# comment\n  kubeconfg = \"auto\"\n");
    assert!(matches!(&e, Error::UnknownKey { key, .. } if key == "kubeconfg"));
    assert_eq!(e.origin(), Some(&at(&path, 2, 3)));
}

#[test]
fn unknown_key_inside_a_pair_names_its_index() {
    let (e, path) = err_of(
        "[[pair]]\nsource = \"a/b\"\ntarget = \"a/c\"\n[[pair]]\nsource = \"a/d\"\ntraget = \"a/e\"\n",
    );
    assert!(
        matches!(&e, Error::UnknownKey { key, .. } if key == "pair[1].traget"),
        "{e}"
    );
    assert_eq!(e.origin(), Some(&at(&path, 6, 1)));
}

#[test]
fn wrong_type_points_at_the_value() {
    let (e, path) = err_of("[lease]\nname = \"x\"\nduration_secs = \"15s\"\n");
    assert!(
        matches!(&e, Error::WrongType { key, expected, .. }
            if key == "lease.duration_secs" && expected.contains("integer")),
        "{e}"
    );
    assert_eq!(e.origin(), Some(&at(&path, 3, 17)));
    assert!(
        e.to_string()
            .starts_with(&format!("{}:3:17: ", path.display()))
    );
}

#[test]
fn negative_duration_is_an_invalid_value_at_its_position() {
    let (e, path) = err_of("[sync]\nmax_backoff_secs = -1\n");
    assert!(
        matches!(&e, Error::InvalidValue { key, .. } if key == "sync.max_backoff_secs"),
        "{e}"
    );
    assert_eq!(e.origin(), Some(&at(&path, 2, 20)));
}

#[test]
fn bad_value_points_at_the_value_of_the_key() {
    let (e, path) =
        err_of("[[pair]]\nsource = \"default/kubernetes\"\ntarget =   \"Default/vip\"\n");
    assert!(
        matches!(&e, Error::InvalidValue { key, reason, .. }
        if key == "pair[0].target" && reason.contains("namespace 'Default'")),
        "{e}"
    );
    assert_eq!(e.origin(), Some(&at(&path, 3, 12)));
}

#[test]
fn toml_syntax_error_names_line_and_column() {
    let (e, path) = err_of("[log]\nlevel = \"info\"\nlevel2 \"x\"\n");
    let Error::Syntax { origin, .. } = &e else {
        panic!("expected a syntax error, got {e}");
    };
    let Provenance::File { path: p, line, .. } = origin else {
        panic!("{origin}");
    };
    assert_eq!(p, &path);
    assert_eq!(*line, 3);
}

#[test]
fn error_names_the_file_that_supplied_the_value_not_the_last_file() {
    let dir = dir_with(&[
        ("10-a.toml", "[sync]\n\nresync_interval_secs = 5\n"),
        ("20-b.toml", "[log]\nlevel = \"info\"\n"),
    ]);
    let e = load_env(&[&dir], &[], &Overrides::default()).unwrap_err();
    assert_eq!(e.origin(), Some(&at(&dir.path().join("10-a.toml"), 3, 24)));
}

#[test]
fn column_counts_characters_not_bytes() {
    let (e, path) = err_of("# é\n[log]\nlevel = \"\"  # ü\n");
    assert_eq!(e.origin(), Some(&at(&path, 3, 9)));
}
