//! The command line: `endpoint-copier [--config-dir DIR]... [--kubeconfig PATH] <run|check|status|version>`,
//! parsed with clap's derive.
//!
//! Owns: the subcommands, the global flags, `--output` of `check` and `status`, and which exit
//! code a parse failure maps to ([`exit_code`]). Leaves to others: reading files (`config`, which
//! receives [`Cli::overrides`]), the version text and every `process::exit` (`main`), and what each
//! subcommand does (`daemon`, the check and status code).

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::Overrides;

/// Exit code for bad flags (`EX_USAGE`), listed in the unit's `RestartPreventExitStatus=`.
pub const EXIT_USAGE: i32 = 64;

/// The parsed command line.
///
/// Parse with [`Parser::try_parse_from`] (or [`Cli::try_parse_from_env`]) and map an error to an
/// exit code with [`exit_code`]; nothing here exits the process.
#[derive(Debug, Clone, PartialEq, Eq, Parser)]
#[command(
    name = "endpoint-copier",
    about = "Keeps the EndpointSlices of a target Service (default/kubernetes-vip) equal to those of a source Service (default/kubernetes)",
    // `version` is a subcommand whose text main builds; no `--version` flag.
    disable_version_flag = true,
    propagate_version = false
)]
pub struct Cli {
    /// Read drop-ins (*.toml) from DIR instead of /usr/lib, /run and /etc
    /// endpoint-copier/config.d; repeat it, in increasing precedence.
    #[arg(long = "config-dir", value_name = "DIR", global = true)]
    pub config_dirs: Vec<PathBuf>,
    /// Use this kubeconfig (an absolute path, or "auto"); wins over the `kubeconfig` key and
    /// ENDPOINT_COPIER_KUBECONFIG.
    #[arg(long, value_name = "PATH", global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Run the daemon (what the systemd unit starts).
    Run,
    /// Validate the config, reach the API, check permissions and show what the leader would
    /// write; exits 0 when all is well, 78 on a config error.
    Check(OutputArgs),
    /// Show the Lease holder and, per pair, the source and target endpoint counts.
    Status(OutputArgs),
    /// Print the version and exit.
    Version,
}

/// Options of `check` and `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct OutputArgs {
    /// Output format (default: text).
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = Output::Text)]
    pub output: Output,
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

impl Cli {
    /// Parses the process arguments.
    ///
    /// # Errors
    /// clap's error for unknown or malformed flags, and for `--help` (print it with
    /// [`clap::Error::print`], exit with [`exit_code`]).
    pub fn try_parse_from_env() -> Result<Self, clap::Error> {
        Self::try_parse_from(std::env::args_os())
    }

    /// What the command line overrides in the config.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            config_dirs: self.config_dirs.clone(),
            kubeconfig: self.kubeconfig.clone(),
        }
    }
}

/// The exit code for a parse error: 0 for `--help` (clap reports it as an "error" printed to
/// stdout), 64 (`EX_USAGE`) for everything else.
pub fn exit_code(error: &clap::Error) -> i32 {
    if error.use_stderr() { EXIT_USAGE } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("endpoint-copier").chain(args.iter().copied()))
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
        assert_eq!(exit_code(&e), 64);
    }

    #[test]
    fn output_is_refused_on_run() {
        let e = parse(&["run", "--output", "json"]).unwrap_err();
        assert_eq!(exit_code(&e), 64);
    }

    #[test]
    fn unknown_flag_exits_64() {
        let e = parse(&["--frobnicate", "run"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::UnknownArgument);
        assert_eq!(exit_code(&e), 64);
    }

    #[test]
    fn missing_subcommand_exits_64() {
        let e = parse(&[]).unwrap_err();
        assert_eq!(exit_code(&e), 64);
    }

    #[test]
    fn help_exits_0() {
        let e = parse(&["--help"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp);
        assert_eq!(exit_code(&e), 0);
    }

    #[test]
    fn version_is_a_subcommand_not_a_flag() {
        assert_eq!(parse(&["version"]).unwrap().command, Command::Version);
        assert_eq!(exit_code(&parse(&["--version"]).unwrap_err()), 64);
    }
}
