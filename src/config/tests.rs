//! Unit tests of config loading, one file per concern under `tests/`: the defaults and the
//! packaged `10-defaults.toml`, drop-in precedence (with a property test against a model), error
//! positions, validation rules, the environment and flags, and the operator-style fixtures in
//! `tests/fixtures/config/`. The helpers here load real files from temporary directories through
//! [`load_from`], as the daemon does, but never touch the process environment.

mod defaults;
mod env;
mod fixtures;
mod positions;
mod precedence;
mod sources;
mod validation;

use std::path::Path;

use tempfile::TempDir;

use super::*;

/// The packaged defaults, as installed in `/usr/lib/endpoint-copier/config.d`.
const DEFAULTS_TOML: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/packaging/config.d/10-defaults.toml"
));

fn dir_with(files: &[(&str, &str)]) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

fn load_env(dirs: &[&TempDir], env: &[(&str, &str)], o: &Overrides) -> Result<Loaded, Error> {
    let dirs: Vec<PathBuf> = dirs.iter().map(|d| d.path().to_owned()).collect();
    let env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned()));
    load_from(&dirs, env, o)
}

/// Loads one drop-in `50-test.toml`; returns the config or the error and the file's path.
fn load_toml(text: &str) -> (Result<Config, Error>, PathBuf) {
    let dir = dir_with(&[("50-test.toml", text)]);
    let path = dir.path().join("50-test.toml");
    let r = load_env(&[&dir], &[], &Overrides::default()).map(|l| l.config);
    (r, path)
}

fn err_of(text: &str) -> (Error, PathBuf) {
    let (r, path) = load_toml(text);
    (r.unwrap_err(), path)
}

fn at(path: &Path, line: usize, column: usize) -> Provenance {
    Provenance::File {
        path: path.to_owned(),
        line,
        column,
    }
}

fn file_names(files: &[PathBuf]) -> Vec<String> {
    files
        .iter()
        .map(|p| {
            let dir = p.parent().unwrap().file_name().unwrap().to_string_lossy();
            format!("{dir}/{}", p.file_name().unwrap().to_string_lossy())
        })
        .collect()
}
