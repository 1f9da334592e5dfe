//! Drop-in precedence: masking, name order, key-by-key merge, arrays replaced whole; a property
//! test compares the rule with a model for random sets of drop-ins.

use std::collections::BTreeMap;
use std::os::unix::fs::symlink;

use proptest::prelude::*;

use super::*;

#[test]
fn same_named_file_in_a_later_dir_masks_the_earlier_one() {
    let usr = dir_with(&[(
        "50-site.toml",
        "[log]\nlevel = \"debug\"\n[sync]\nmax_backoff_secs = 5\n",
    )]);
    let etc = dir_with(&[("50-site.toml", "[log]\nlevel = \"warn\"\n")]);
    let loaded = load_env(&[&usr, &etc], &[], &Overrides::default()).unwrap();
    assert_eq!(loaded.files, vec![etc.path().join("50-site.toml")]);
    assert_eq!(loaded.config.log.level, "warn");
    // The masked file contributes nothing, not even keys the masking file leaves out.
    assert_eq!(loaded.config.sync.max_backoff, Duration::from_secs(30));
}

#[test]
fn files_merge_in_name_order_not_directory_order() {
    let usr = dir_with(&[("90-late.toml", "[log]\nlevel = \"debug\"\n")]);
    let etc = dir_with(&[("20-early.toml", "[log]\nlevel = \"warn\"\n")]);
    let loaded = load_env(&[&usr, &etc], &[], &Overrides::default()).unwrap();
    assert_eq!(
        loaded.files,
        vec![
            etc.path().join("20-early.toml"),
            usr.path().join("90-late.toml")
        ]
    );
    assert_eq!(loaded.config.log.level, "debug");
}

#[test]
fn empty_file_masks_a_same_named_earlier_file() {
    let usr = dir_with(&[("10-defaults.toml", "[log]\nlevel = \"debug\"\n")]);
    let etc = dir_with(&[("10-defaults.toml", "")]);
    let loaded = load_env(&[&usr, &etc], &[], &Overrides::default()).unwrap();
    assert!(loaded.files.is_empty());
    assert_eq!(loaded.config.log.level, "info");
}

#[test]
fn symlink_to_dev_null_masks_a_same_named_earlier_file() {
    let usr = dir_with(&[("10-defaults.toml", "[log]\nlevel = \"debug\"\n")]);
    let etc = tempfile::tempdir().unwrap();
    symlink("/dev/null", etc.path().join("10-defaults.toml")).unwrap();
    let loaded = load_env(&[&usr, &etc], &[], &Overrides::default()).unwrap();
    assert!(loaded.files.is_empty());
    assert_eq!(loaded.config.log.level, "info");
}

#[test]
fn later_file_wins_key_by_key_and_tables_merge() {
    let dir = dir_with(&[
        (
            "10-a.toml",
            "[lease]\nduration_secs = 40\nrenew_deadline_secs = 30\n",
        ),
        ("20-b.toml", "[lease]\nduration_secs = 50\n"),
    ]);
    let c = load_env(&[&dir], &[], &Overrides::default())
        .unwrap()
        .config;
    assert_eq!(c.lease.duration, Duration::from_secs(50));
    assert_eq!(c.lease.renew_deadline, Duration::from_secs(30));
    assert_eq!(c.lease.retry_period, Duration::from_secs(1));
}

#[test]
fn non_toml_files_and_missing_dirs_are_ignored() {
    let dir = dir_with(&[
        ("50-site.toml.rpmsave", "garbage ="),
        ("README", "not toml"),
        ("50-site.toml", "[log]\nlevel = \"warn\"\n"),
    ]);
    fs::create_dir(dir.path().join("60-dir.toml")).unwrap();
    let missing = tempfile::tempdir().unwrap().path().join("gone");
    let dirs = vec![missing, dir.path().to_owned()];
    let loaded = load_from(&dirs, Vec::new(), &Overrides::default()).unwrap();
    assert_eq!(loaded.files, vec![dir.path().join("50-site.toml")]);
    assert_eq!(loaded.config.log.level, "warn");
}

#[test]
fn a_later_pair_list_replaces_the_earlier_one() {
    let dir = dir_with(&[
        ("10-defaults.toml", DEFAULTS_TOML),
        (
            "50-site.toml",
            "[[pair]]\nsource = \"web/api\"\ntarget = \"web/api-vip\"\n",
        ),
    ]);
    let c = load_env(&[&dir], &[], &Overrides::default())
        .unwrap()
        .config;
    assert_eq!(
        c.pairs,
        vec![PairConfig::new(
            "web/api".parse().unwrap(),
            "web/api-vip".parse().unwrap(),
        )]
    );
}

#[test]
fn empty_pair_list_removes_the_default_pair() {
    let (c, _) = load_toml("pair = []\n");
    assert!(c.unwrap().pairs.is_empty());
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Sets,
    Silent,
    Empty,
    DevNull,
    NotToml,
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        3 => Just(Kind::Sets),
        1 => Just(Kind::Silent),
        1 => Just(Kind::Empty),
        1 => Just(Kind::DevNull),
        1 => Just(Kind::NotToml),
    ]
}

const NAMES: [&str; 5] = ["05-a", "10-defaults", "50-site", "50-site2", "90-local"];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Precedence for any set of drop-ins, against a model: per name the last directory wins;
    /// masked and non-toml winners drop out; the rest merge by name; the last setter wins.
    #[test]
    fn precedence_matches_the_model_for_any_set_of_drop_ins(
        listing in prop::collection::vec(
            prop::collection::btree_map(0..NAMES.len(), kind(), 0..NAMES.len()),
            1..4,
        )
    ) {
        let dirs: Vec<TempDir> = listing.iter().map(|_| tempfile::tempdir().unwrap()).collect();
        for (d, files) in listing.iter().enumerate() {
            for (&n, &k) in files {
                let stem = NAMES[n];
                let dir = dirs[d].path();
                match k {
                    Kind::Sets => fs::write(
                        dir.join(format!("{stem}.toml")),
                        format!("[lease]\nidentity = \"{d}/{stem}\"\n"),
                    ).unwrap(),
                    Kind::Silent => fs::write(
                        dir.join(format!("{stem}.toml")),
                        "# only a comment\n[log]\n",
                    ).unwrap(),
                    Kind::Empty => fs::write(dir.join(format!("{stem}.toml")), "").unwrap(),
                    Kind::DevNull => symlink("/dev/null", dir.join(format!("{stem}.toml"))).unwrap(),
                    Kind::NotToml => fs::write(
                        dir.join(format!("{stem}.conf")),
                        "[lease]\nidentity = \"never\"\n",
                    ).unwrap(),
                }
            }
        }

        // The model.
        let mut winner: BTreeMap<&str, (usize, Kind)> = BTreeMap::new();
        for (d, files) in listing.iter().enumerate() {
            for (&n, &k) in files {
                if !matches!(k, Kind::NotToml) {
                    winner.insert(NAMES[n], (d, k));
                }
            }
        }
        let expected_files: Vec<PathBuf> = winner
            .iter()
            .filter(|(_, (_, k))| matches!(k, Kind::Sets | Kind::Silent))
            .map(|(stem, (d, _))| dirs[*d].path().join(format!("{stem}.toml")))
            .collect();
        let expected_identity = winner
            .iter()
            .filter(|(_, (_, k))| matches!(k, Kind::Sets))
            .map(|(stem, (d, _))| format!("{d}/{stem}"))
            .next_back();

        let paths: Vec<PathBuf> = dirs.iter().map(|d| d.path().to_owned()).collect();
        let loaded = load_from(&paths, Vec::new(), &Overrides::default()).unwrap();
        prop_assert_eq!(&loaded.files, &expected_files);
        prop_assert_eq!(drop_ins(&paths).unwrap(), expected_files);
        prop_assert_eq!(loaded.config.lease.identity, expected_identity);
    }
}

#[test]
fn file_names_sort_bytewise_across_dirs() {
    let a = dir_with(&[("9-x.toml", "\n"), ("10-y.toml", "\n")]);
    let b = dir_with(&[("Z.toml", "\n"), ("a.toml", "\n")]);
    let files = drop_ins(&[a.path().to_owned(), b.path().to_owned()]).unwrap();
    let names: Vec<String> = file_names(&files)
        .iter()
        .map(|s| s.rsplit('/').next().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["10-y.toml", "9-x.toml", "Z.toml", "a.toml"]);
}
