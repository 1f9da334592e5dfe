//! `endpoint-copier generate man|completions DIR`, hidden from `--help`: the man pages and the
//! shell completions, generated from the clap definition in `cli` so that they can never
//! disagree with `--help`. The RPM's `%install` and the combustion script run it with the binary
//! they just built or installed (as ripgrep's `rg --generate` does), and put the files at the
//! conventional paths themselves: this module only writes them into one folder.
//!
//! Owns: which pages and which shells, their file names, and the sections clap cannot know
//! (FILES, SEE ALSO). Leaves to `cli` what the commands and flags are, and to `main` the exit code.

use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;
use clap_mangen::Man;
use clap_mangen::roff::{Roff, bold, roman};

use super::Cli;
use crate::names::{CONFIG_DIRS, NAME};

/// The man section of every page: user commands, where `systemctl(1)` and `kubectl(1)` are.
const SECTION: &str = "1";
/// The shells whose completions are written, each under clap_complete's file name for it
/// (`endpoint-copier.bash`, `_endpoint-copier`, `endpoint-copier.fish`).
pub const SHELLS: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];
/// Where the RPM puts the operator documentation (SUSE's doc layout), named in SEE ALSO.
const DOCS: &str = "/usr/share/doc/packages/endpoint-copier/usage";

/// Why the files could not be written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The output folder could not be created.
    #[error("failed to create the folder '{}'", dir.display())]
    CreateDir {
        /// The folder given on the command line.
        dir: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A page or a completion script could not be rendered or written.
    #[error("failed to write '{}'", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Writes `endpoint-copier.1` and one `endpoint-copier-<subcommand>.1` per visible subcommand
/// into `dir` (created if missing), uncompressed; returns the files written, top page first.
///
/// # Errors
/// [`Error::CreateDir`] or [`Error::Write`], naming the folder or file.
pub fn man_pages(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    create_dir(dir)?;
    let mut top = command();
    // Gives each subcommand its display name (`endpoint-copier-drain`) and the global flags.
    top.build();
    let source = format!("{NAME} {}", env!("CARGO_PKG_VERSION"));
    let mut pages = vec![(top.clone(), Some(files_section()), see_also(None))];
    for sub in top.get_subcommands().filter(|s| !s.is_hide_set()) {
        pages.push((sub.clone(), None, see_also(Some(sub.get_name()))));
    }
    let mut written = Vec::new();
    for (cmd, files, see_also) in pages {
        let title = cmd.get_display_name().unwrap_or(cmd.get_name()).to_owned();
        let man = Man::new(cmd).section(SECTION);
        let path = dir.join(man.get_filename());
        let mut rendered = Vec::new();
        man.render(&mut rendered).map_err(|source| Error::Write {
            path: path.clone(),
            source,
        })?;
        let mut page = with_title_line(&rendered, &title, &source).into_bytes();
        if let Some(files) = files {
            page.extend_from_slice(files.render().as_bytes());
        }
        page.extend_from_slice(see_also.render().as_bytes());
        write(&path, &page)?;
        written.push(path);
    }
    Ok(written)
}

/// Writes the completion scripts for [`SHELLS`] into `dir` (created if missing); returns the
/// files written, in the order of [`SHELLS`].
///
/// # Errors
/// [`Error::CreateDir`] or [`Error::Write`], naming the folder or file.
pub fn completions(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    create_dir(dir)?;
    let mut written = Vec::new();
    for shell in SHELLS {
        let mut cmd = visible_command();
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut cmd, NAME, &mut script);
        let path = dir.join(clap_complete::Generator::file_name(&shell, NAME));
        write(&path, &script)?;
        written.push(path);
    }
    Ok(written)
}

/// The command line as `--help` shows it, with the plain package version: the pages must not
/// change with the commit or the compiler, so that two builds of one release are identical.
fn command() -> clap::Command {
    Cli::command().version(env!("CARGO_PKG_VERSION"))
}

/// `rendered` with its `.TH` line replaced by one whose empty date is quoted. clap_mangen
/// writes an empty date as nothing at all, so the source landed in the date's place and the
/// manual's name in the source's (`man` showed them in the wrong corners); no date at all keeps
/// two builds of one release identical.
fn with_title_line(rendered: &[u8], title: &str, source: &str) -> String {
    let th = format!(".TH {title} {SECTION} \"\" \"{source}\" \"{NAME} manual\"");
    String::from_utf8_lossy(rendered)
        .lines()
        .map(|line| {
            if line.starts_with(".TH ") {
                th.as_str()
            } else {
                line
            }
        })
        .fold(String::new(), |mut out, line| {
            out.push_str(line);
            out.push('\n');
            out
        })
}

/// [`command`] without its hidden subcommands: clap_complete, unlike clap_mangen, completes
/// hidden subcommands too, and clap has no way to remove one, so the visible ones are copied
/// into a fresh command with the same flags.
fn visible_command() -> clap::Command {
    let full = command();
    clap::Command::new(NAME)
        .version(env!("CARGO_PKG_VERSION"))
        .disable_help_subcommand(true)
        .args(full.get_arguments().cloned())
        .subcommands(full.get_subcommands().filter(|s| !s.is_hide_set()).cloned())
}

/// FILES on the top page: the drop-in folders the daemon reads.
fn files_section() -> Roff {
    let mut roff = Roff::new();
    roff.control("SH", ["FILES"]);
    for dir in CONFIG_DIRS {
        roff.control("TP", []).text([bold(format!("{dir}/*.toml"))]);
        let why = match dir {
            d if d.starts_with("/usr/lib") => "Package defaults (lowest precedence).",
            d if d.starts_with("/run") => "Runtime drop-ins; a same-named file masks /usr/lib's.",
            _ => {
                "Administrator drop-ins (e.g. 50-site.toml); a same-named file masks /run's and /usr/lib's."
            }
        };
        roff.text([roman(why)]);
    }
    roff
}

/// SEE ALSO: the other pages, the unit and the operator documentation. `sub` is the page's
/// subcommand, `None` for the top page.
fn see_also(sub: Option<&str>) -> Roff {
    let mut refs = Vec::new();
    if sub.is_some() {
        refs.push(format!("{NAME}({SECTION})"));
    }
    refs.extend(
        ["systemctl(1)", "journalctl(1)", "kubectl(1)"]
            .into_iter()
            .map(str::to_owned),
    );
    let mut roff = Roff::new();
    roff.control("SH", ["SEE ALSO"]);
    roff.text([roman(refs.join(", "))]);
    roff.control("PP", []);
    roff.text([roman(format!(
        "The unit {NAME}.service, and the operator guides in {DOCS}/ (operations.md: \
         STATUS, logs, metrics, alerts and troubleshooting by symptom; configuration.md: every key)."
    ))]);
    roff
}

fn create_dir(dir: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|source| Error::CreateDir {
        dir: dir.to_path_buf(),
        source,
    })
}

fn write(path: &Path, contents: &[u8]) -> Result<(), Error> {
    std::fs::write(path, contents).map_err(|source| Error::Write {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(files: &[PathBuf]) -> Vec<String> {
        files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn man_pages_are_written_for_the_program_and_each_visible_subcommand() {
        let dir = tempfile::tempdir().unwrap();
        let files = man_pages(dir.path()).unwrap();
        assert_eq!(
            names(&files),
            [
                "endpoint-copier.1",
                "endpoint-copier-run.1",
                "endpoint-copier-check.1",
                "endpoint-copier-status.1",
                "endpoint-copier-drain.1",
                "endpoint-copier-resume.1",
                "endpoint-copier-version.1",
            ]
        );
        let mut on_disk = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect::<Vec<_>>();
        on_disk.sort();
        let mut listed = names(&files);
        listed.sort();
        assert_eq!(on_disk, listed, "nothing else is written");
    }

    #[test]
    fn the_top_page_holds_the_help_text_the_subcommands_and_the_files() {
        let dir = tempfile::tempdir().unwrap();
        man_pages(dir.path()).unwrap();
        let page = std::fs::read_to_string(dir.path().join("endpoint-copier.1")).unwrap();
        // roff escapes '-' as '\-'.
        for needle in [
            format!(
                ".TH endpoint-copier 1 \"\" \"endpoint-copier {}\" \"endpoint-copier manual\"\n",
                env!("CARGO_PKG_VERSION")
            )
            .as_str(),
            "kubernetes\\-vip",
            "Exit codes",
            "endpoint\\-copier\\-drain(1)",
            ".SH FILES",
            "/etc/endpoint\\-copier/config.d/*.toml",
            ".SH \"SEE ALSO\"",
            format!("v{}", env!("CARGO_PKG_VERSION")).as_str(),
        ] {
            assert!(page.contains(needle), "no {needle:?} in:\n{page}");
        }
        assert!(!page.contains("generate"), "the hidden subcommand leaked");
        assert!(!page.contains("(commit "), "the page depends on the build");
    }

    #[test]
    fn a_subcommand_page_has_its_flags_and_points_back_to_the_top_page() {
        let dir = tempfile::tempdir().unwrap();
        man_pages(dir.path()).unwrap();
        let page = std::fs::read_to_string(dir.path().join("endpoint-copier-drain.1")).unwrap();
        for needle in [
            ".TH endpoint-copier-drain 1",
            "\\-\\-expires",
            "\\-\\-config\\-dir",
            "endpoint\\-copier(1)",
        ] {
            assert!(page.contains(needle), "no {needle:?} in:\n{page}");
        }
    }

    #[test]
    fn completions_are_written_for_bash_zsh_and_fish_without_the_hidden_subcommand() {
        let dir = tempfile::tempdir().unwrap();
        let files = completions(dir.path()).unwrap();
        assert_eq!(
            names(&files),
            [
                "endpoint-copier.bash",
                "_endpoint-copier",
                "endpoint-copier.fish"
            ]
        );
        for file in &files {
            let script = std::fs::read_to_string(file).unwrap();
            for needle in ["drain", "timed-only", "config-dir"] {
                assert!(script.contains(needle), "{}: no {needle}", file.display());
            }
            assert!(
                !script.contains("generate"),
                "{}: the hidden subcommand leaked",
                file.display()
            );
        }
    }

    #[test]
    fn a_missing_output_folder_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b");
        completions(&nested).unwrap();
        assert!(nested.join("_endpoint-copier").is_file());
    }

    #[test]
    fn an_output_folder_that_cannot_be_created_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain-file");
        std::fs::write(&file, "").unwrap();
        let err = man_pages(&file.join("man1")).unwrap_err();
        assert!(matches!(err, Error::CreateDir { .. }), "{err:?}");
        assert!(err.to_string().contains("plain-file/man1"), "{err}");
    }
}
