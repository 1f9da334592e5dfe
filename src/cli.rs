//! The command line: `endpoint-copier [--config-dir DIR]... [--kubeconfig PATH]
//! <run|check|status|drain|resume|version>`,
//! parsed with clap's derive, and the version text (`version`, `--version`, `-V`). The hidden
//! `generate man|completions DIR` writes the man pages and shell completions from this definition
//! ([`generate`], for packagers).
//!
//! Owns: the subcommands, the global flags, `--output` of `check` and `status`, and what `--help`
//! says. Leaves to others: reading files (`config`, which receives [`Cli::overrides`]), exit codes
//! and every `process::exit` (`main`), and what each subcommand does (`daemon`, `inspect`,
//! `drain`).
//!
//! The `///` docs here are for rustdoc; what an operator reads in `--help` is given separately in
//! `about`/`long_about`, so neither has to serve both readers.

use std::path::PathBuf;
use std::sync::OnceLock;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use crate::config::Overrides;

pub mod generate;

/// `endpoint-copier --help`, first line.
const ABOUT: &str = "Copy the EndpointSlices of default/kubernetes to default/kubernetes-vip, \
                     with one writer elected through a Lease";

/// `endpoint-copier --help`, the description.
const LONG_ABOUT: &str = "\
Keeps the EndpointSlices of a target Service (by default default/kubernetes-vip) equal to those of \
a source Service (by default default/kubernetes), so a load balancer such as MetalLB can announce \
a virtual IP for the Kubernetes API. It runs from systemd on every control-plane host; the hosts \
elect one writer through a Lease.

Configuration is read from *.toml drop-ins in /usr/lib, /run and /etc endpoint-copier/config.d \
(later wins); ENDPOINT_COPIER_LOG sets the log filter.

Exit codes: 0 success, 1 runtime failure or problems found, 64 bad command line, 78 invalid \
configuration or kubeconfig.";

/// The parsed command line.
///
/// Parse it with [`Cli::try_parse_from_env`] or [`Cli::try_parse_from_args`]; nothing here exits
/// the process.
#[derive(Debug, Clone, PartialEq, Eq, Parser)]
#[command(
    name = "endpoint-copier",
    about = ABOUT,
    long_about = LONG_ABOUT,
    // The text itself is set at run time (`version_text`): it holds the commit and compiler.
    version,
    propagate_version = false,
    disable_help_subcommand = true
)]
pub struct Cli {
    /// Drop-in directories given with `--config-dir`, in increasing precedence; empty means the
    /// standard search path.
    #[arg(
        long = "config-dir",
        value_name = "DIR",
        global = true,
        help = "Read drop-ins (*.toml) from DIR instead of /usr/lib, /run and /etc endpoint-copier/config.d; repeat it, in increasing precedence"
    )]
    pub config_dirs: Vec<PathBuf>,
    /// The kubeconfig given with `--kubeconfig`, if any.
    #[arg(
        long,
        value_name = "PATH",
        global = true,
        help = "Use this kubeconfig (an absolute path, or \"auto\"); wins over the config's `kubeconfig` key and ENDPOINT_COPIER_KUBECONFIG"
    )]
    pub kubeconfig: Option<PathBuf>,
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// `run`: the daemon.
    #[command(
        about = "Run the daemon (what the systemd unit starts)",
        long_about = "Run the daemon (what the systemd unit starts): wait for the kubeconfig, \
take part in the Lease election and, as the leader, keep the target EndpointSlices equal to the \
source's. Stops cleanly on SIGTERM or SIGINT, releasing the Lease; a second signal exits at once."
    )]
    Run,
    /// `check`: would the daemon work on this node?
    #[command(
        about = "Check that the daemon would work on this node, and show what it would write",
        long_about = "Check that the daemon would work on this node: the configuration, the \
kubeconfig, the API server, every permission the daemon needs, the pairs and what the leader \
would write now (a dry run), and the Lease holder. Writes nothing.

Exit codes: 0 all is well (a pair merely out of sync is not a problem), 1 problems found (one \
`problem:` line each), 78 invalid configuration."
    )]
    Check(OutputArgs),
    /// `status`: is it working?
    #[command(
        about = "Show the Lease holder and whether each pair is in sync",
        long_about = "Show the Lease holder and, per pair, the source and target ready-endpoint \
counts and whether they are in sync. Writes nothing.

Exit codes: 0 all pairs in sync, 1 problems found (one `problem:` line each), 78 invalid \
configuration."
    )]
    Status(OutputArgs),
    /// `drain`: take this host's Node out of every target before planned work.
    #[command(
        about = "Take this host's Node out of the VIP before planned work (an RKE2 upgrade, a reboot)",
        long_about = "Take this host's Node out of the VIP before planned work (an RKE2 upgrade, a \
reboot): annotate the Node with endpoint-copier/drain=true and an expiry \
(endpoint-copier/drain-expires), then wait until every target that holds one of the Node's \
addresses shows them not ready. The leader marks them not ready; the Node's apiserver keeps \
running meanwhile. The drop-ins shipped for rke2-server.service and k3s.service run this before \
the server stops, and `resume` once it is up again.

The Node is the one given with --node, else the one named like this host. Refused, with nothing \
written, when the Node's endpoints are the last ready ones of some target. The drain lasts until \
`endpoint-copier resume` or until it expires, whichever comes first.

Exit codes: 0 drained (or no target holds the Node's addresses), 1 refused, or still ready when \
the timeout ran out (the annotation stays: the drain completes when the leader acts), 78 invalid \
configuration or kubeconfig."
    )]
    Drain(DrainArgs),
    /// `resume`: end a drain.
    #[command(
        about = "End a drain: put this host's Node back into the VIP",
        long_about = "End a drain: remove the endpoint-copier/drain and endpoint-copier/drain-expires \
annotations from this host's Node (the one given with --node, else the one named like this host); \
the leader marks its endpoints ready again as soon as its apiserver is. Retries while the API \
server does not answer yet, up to --timeout. With --timed-only (the drop-ins' choice) a drain \
set by hand without expiry (kubectl annotate node NAME endpoint-copier/drain=true) is kept.

Exit codes: 0 done (also when the Node was not drained), 1 the Node or the API could not be \
reached, 78 invalid configuration or kubeconfig."
    )]
    Resume(ResumeArgs),
    /// `version`.
    #[command(about = "Print the version, commit and compiler, and exit", long_about = None)]
    Version,
    /// `generate`: the man pages or the shell completions, for packagers ([`generate`]).
    #[command(
        hide = true,
        about = "Write the man pages or the shell completions into DIR (for packagers)",
        long_about = None
    )]
    Generate(GenerateArgs),
}

/// Options of the hidden `generate`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct GenerateArgs {
    /// What to write.
    #[arg(
        value_enum,
        help = "man: one page per command; completions: bash, zsh and fish"
    )]
    pub what: Generated,
    /// The folder to write into (created if missing).
    #[arg(value_name = "DIR", help = "Folder to write into (created if missing)")]
    pub dir: PathBuf,
}

/// What `generate` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Generated {
    /// `endpoint-copier.1` and `endpoint-copier-<subcommand>.1`.
    Man,
    /// `endpoint-copier.bash`, `_endpoint-copier` (zsh) and `endpoint-copier.fish`.
    Completions,
}

/// Options of `check` and `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct OutputArgs {
    /// The report's format (default: text).
    #[arg(
        long,
        value_enum,
        value_name = "FORMAT",
        default_value_t = Output::Text,
        help = "Report format: text for a person, json for scripts"
    )]
    pub output: Output,
}

/// Options of `drain`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct DrainArgs {
    /// The Node to drain; `None`: this host's.
    #[arg(
        long,
        value_name = "NAME",
        help = "The Node to drain (default: the Node named like this host)"
    )]
    pub node: Option<String>,
    /// How long the whole command may take, in seconds (default: 10).
    #[arg(
        long = "timeout",
        value_name = "SECS",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..=3600),
        help = "Give up after SECS seconds in all, naming what is still ready"
    )]
    pub timeout_secs: u64,
    /// How long the drain lasts unless resumed, in seconds (default: 900).
    #[arg(
        long = "expires",
        value_name = "SECS",
        default_value_t = 900,
        value_parser = clap::value_parser!(u64).range(1..=7 * 24 * 3600),
        help = "The drain ends by itself after SECS seconds unless `resume` ends it first"
    )]
    pub expires_secs: u64,
}

/// Options of `resume`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct ResumeArgs {
    /// The Node to resume; `None`: this host's.
    #[arg(
        long,
        value_name = "NAME",
        help = "The Node to resume (default: the Node named like this host)"
    )]
    pub node: Option<String>,
    /// How long the whole command may take, in seconds (default: 30).
    #[arg(
        long = "timeout",
        value_name = "SECS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..=3600),
        help = "Give up after SECS seconds in all (retrying while the API server does not answer)"
    )]
    pub timeout_secs: u64,
    /// Remove only a drain with an expiry (`--timed-only`).
    #[arg(
        long,
        help = "Remove only a drain with an expiry (as `drain` writes it); keep one set by hand without expiry"
    )]
    pub timed_only: bool,
}

/// Output format of `check` and `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Output {
    /// Lines for a person at a console (the default).
    #[default]
    Text,
    /// One JSON document, for scripts.
    Json,
}

/// The version line `version`, `--version` and `-V` print:
/// `endpoint-copier <version> (commit <sha>, <rustc>)`. The commit and compiler come from the
/// build's `BUILD_GIT_COMMIT` and `BUILD_RUSTC_VERSION` (`unknown` when not set).
pub fn version() -> String {
    format!("{} {}", crate::names::NAME, version_text())
}

/// The version without the program name, as clap wants it for `--version`.
fn version_text() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        format!(
            "{} (commit {}, {})",
            env!("CARGO_PKG_VERSION"),
            option_env!("BUILD_GIT_COMMIT").unwrap_or("unknown"),
            option_env!("BUILD_RUSTC_VERSION").unwrap_or("rustc unknown"),
        )
    })
}

impl Cli {
    /// Parses the process arguments.
    ///
    /// # Errors
    /// clap's error for unknown or malformed flags, and for `--help` and `--version` (for those,
    /// [`clap::Error::use_stderr`] is false: print it and succeed).
    pub fn try_parse_from_env() -> Result<Self, clap::Error> {
        Self::try_parse_from_args(std::env::args_os())
    }

    /// Parses `args` (the first is the program name), with the version text `--version` prints.
    ///
    /// # Errors
    /// As [`Cli::try_parse_from_env`].
    pub fn try_parse_from_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let mut command = Self::command().version(version_text());
        let matches = command.try_get_matches_from_mut(args)?;
        Self::from_arg_matches(&matches).map_err(|e| e.format(&mut command))
    }

    /// What the command line overrides in the config.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            config_dirs: self.config_dirs.clone(),
            kubeconfig: self.kubeconfig.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from_args(std::iter::once("endpoint-copier").chain(args.iter().copied()))
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_without_flags_uses_the_standard_search_path() {
        let cli = parse(&["run"]).unwrap();
        assert_eq!(cli.command, Command::Run);
        assert_eq!(cli.overrides(), Overrides::default());
    }

    #[test]
    fn config_dir_repeats_in_the_given_order() {
        let cli = parse(&["--config-dir", "/a", "--config-dir", "/b", "run"]).unwrap();
        assert_eq!(
            cli.overrides().config_dirs,
            vec![PathBuf::from("/a"), PathBuf::from("/b")]
        );
    }

    #[test]
    fn global_flags_are_accepted_after_the_subcommand() {
        let cli = parse(&["check", "--kubeconfig", "/k.yaml", "--config-dir", "/c"]).unwrap();
        assert_eq!(cli.kubeconfig, Some(PathBuf::from("/k.yaml")));
        assert_eq!(cli.config_dirs, vec![PathBuf::from("/c")]);
        assert_eq!(cli.overrides().kubeconfig, Some(PathBuf::from("/k.yaml")));
    }

    #[test]
    fn check_and_status_default_to_text_output() {
        assert_eq!(
            parse(&["check"]).unwrap().command,
            Command::Check(OutputArgs {
                output: Output::Text
            })
        );
        assert_eq!(
            parse(&["status"]).unwrap().command,
            Command::Status(OutputArgs {
                output: Output::Text
            })
        );
    }

    #[test]
    fn output_json_is_accepted_by_check_and_status() {
        assert_eq!(
            parse(&["status", "--output", "json"]).unwrap().command,
            Command::Status(OutputArgs {
                output: Output::Json
            })
        );
        assert_eq!(
            parse(&["check", "--output=json"]).unwrap().command,
            Command::Check(OutputArgs {
                output: Output::Json
            })
        );
    }

    #[test]
    fn unknown_output_format_is_a_usage_error() {
        let e = parse(&["check", "--output", "yaml"]).unwrap_err();
        assert!(e.use_stderr(), "a usage error, for main to map to 64");
    }

    #[test]
    fn output_is_refused_on_run() {
        let e = parse(&["run", "--output", "json"]).unwrap_err();
        assert!(e.use_stderr(), "a usage error, for main to map to 64");
    }

    #[test]
    fn an_unknown_flag_is_a_usage_error() {
        let e = parse(&["--frobnicate", "run"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::UnknownArgument);
        assert!(e.use_stderr(), "a usage error, for main to map to 64");
    }

    #[test]
    fn a_missing_subcommand_is_a_usage_error() {
        let e = parse(&[]).unwrap_err();
        assert!(e.use_stderr(), "a usage error, for main to map to 64");
    }

    #[test]
    fn help_is_printed_to_stdout_not_reported_as_an_error() {
        let e = parse(&["--help"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp);
        assert!(!e.use_stderr());
    }

    #[test]
    fn help_describes_the_program_not_the_rust_type() {
        let help = parse(&["--help"]).unwrap_err().to_string();
        assert!(help.contains("kubernetes-vip"), "{help}");
        assert!(help.contains("Exit codes"), "{help}");
        assert!(
            !help.contains("Parse"),
            "rustdoc leaked into --help: {help}"
        );
        let short = Cli::command().render_help().to_string();
        assert!(short.starts_with(ABOUT), "{short}");
    }

    #[test]
    fn every_subcommand_has_help_of_its_own() {
        for name in ["run", "check", "status", "drain", "resume", "version"] {
            let mut cmd = Cli::command();
            let sub = cmd.find_subcommand_mut(name).unwrap();
            let about = sub.get_about().map(ToString::to_string).unwrap_or_default();
            assert!(!about.is_empty(), "{name} has no about");
            assert!(!about.contains('`'), "{name}: rustdoc in help: {about}");
        }
    }

    #[test]
    fn generate_is_accepted_but_hidden_from_help() {
        assert_eq!(
            parse(&["generate", "man", "/tmp/out"]).unwrap().command,
            Command::Generate(GenerateArgs {
                what: Generated::Man,
                dir: PathBuf::from("/tmp/out")
            })
        );
        assert!(
            parse(&["generate", "pdf", "/tmp/out"])
                .unwrap_err()
                .use_stderr()
        );
        assert!(parse(&["generate", "man"]).unwrap_err().use_stderr());
        let help = parse(&["--help"]).unwrap_err().to_string();
        assert!(!help.contains("generate"), "{help}");
    }

    #[test]
    fn drain_defaults_to_this_host_a_10_s_timeout_and_a_15_min_expiry() {
        assert_eq!(
            parse(&["drain"]).unwrap().command,
            Command::Drain(DrainArgs {
                node: None,
                timeout_secs: 10,
                expires_secs: 900
            })
        );
        assert_eq!(
            parse(&[
                "drain",
                "--node",
                "cp-1",
                "--timeout",
                "5",
                "--expires",
                "60"
            ])
            .unwrap()
            .command,
            Command::Drain(DrainArgs {
                node: Some("cp-1".into()),
                timeout_secs: 5,
                expires_secs: 60
            })
        );
    }

    #[test]
    fn resume_defaults_to_this_host_and_a_30_s_timeout() {
        assert_eq!(
            parse(&["resume"]).unwrap().command,
            Command::Resume(ResumeArgs {
                node: None,
                timeout_secs: 30,
                timed_only: false
            })
        );
        assert_eq!(
            parse(&["resume", "--node", "cp-2", "--timed-only"])
                .unwrap()
                .command,
            Command::Resume(ResumeArgs {
                node: Some("cp-2".into()),
                timeout_secs: 30,
                timed_only: true
            })
        );
    }

    #[test]
    fn a_zero_or_non_numeric_drain_timeout_is_a_usage_error() {
        for bad in ["0", "ten", "-1"] {
            let e = parse(&["drain", "--timeout", bad]).unwrap_err();
            assert!(
                e.use_stderr(),
                "{bad}: a usage error, for main to map to 64"
            );
        }
        assert!(
            parse(&["resume", "--expires", "60"])
                .unwrap_err()
                .use_stderr()
        );
    }

    #[test]
    fn version_flags_print_the_same_line_as_the_version_subcommand() {
        assert_eq!(parse(&["version"]).unwrap().command, Command::Version);
        for flag in ["--version", "-V"] {
            let e = parse(&[flag]).unwrap_err();
            assert_eq!(e.kind(), clap::error::ErrorKind::DisplayVersion, "{flag}");
            assert!(!e.use_stderr());
            assert_eq!(e.to_string().trim_end(), version(), "{flag}");
        }
        assert!(
            version().starts_with(&format!(
                "endpoint-copier {} (commit ",
                env!("CARGO_PKG_VERSION")
            )),
            "{}",
            version()
        );
    }
}
