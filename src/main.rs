//! The `endpoint-copier` binary: flags, logging, config, runtime; the aggregate [`Error`] and the
//! one exit-code table.
//!
//! This is the only place that picks an exit code or calls `process::exit`. Everything it runs
//! lives in the library (`src/lib.rs`) so that the tests drive the same code.

use std::process::ExitCode;

use endpoint_copier::cli::{
    self, Cli, Command, DrainArgs, GenerateArgs, Generated, OutputArgs, ResumeArgs,
};
use endpoint_copier::error::Chain;
use endpoint_copier::inspect::Verdict;
use endpoint_copier::{config, daemon, drain, inspect, logging, shutdown};

/// Success, and a clean stop after SIGTERM/SIGINT.
const EXIT_OK: u8 = 0;
/// A failure at run time (systemd restarts the unit), or problems found by `check`/`status`.
const EXIT_FAILURE: u8 = 1;
/// Bad command-line flags (`EX_USAGE`), in the unit's `RestartPreventExitStatus=`.
const EXIT_USAGE: u8 = 64;
/// Invalid config or kubeconfig (`EX_CONFIG`), in the unit's `RestartPreventExitStatus=`: a typo
/// must not become a restart loop.
const EXIT_CONFIG: u8 = 78;

/// Everything that can stop the process.
#[derive(Debug, thiserror::Error)]
enum Error {
    /// Bad command-line flags.
    #[error("invalid command line")]
    Cli(#[source] clap::Error),
    /// Invalid configuration.
    #[error("invalid configuration")]
    Config(#[source] Box<config::Error>),
    /// Logging could not be set up.
    #[error("failed to set up logging")]
    Logging(#[source] logging::Error),
    /// The tokio runtime could not start.
    #[error("failed to start the async runtime")]
    Runtime(#[source] std::io::Error),
    /// Signal handlers could not be installed.
    #[error("failed to install signal handlers")]
    Shutdown(#[source] shutdown::Error),
    /// The daemon failed.
    #[error("daemon failed")]
    Daemon(#[source] daemon::Error),
    /// `check` or `status` could not produce their report.
    #[error(transparent)]
    Inspect(inspect::Error),
    /// `drain` or `resume` did not finish (refused, timed out, Node or API unreachable).
    #[error(transparent)]
    Drain(drain::Error),
    /// `generate` could not write the man pages or completions.
    #[error("failed to generate the man pages or completions")]
    Generate(#[source] cli::generate::Error),
}

impl Error {
    /// The exit code: the one table, [`EXIT_USAGE`] for flags, [`EXIT_CONFIG`] for what a
    /// restart cannot fix, [`EXIT_FAILURE`] for the rest.
    fn exit_code(&self) -> u8 {
        match self {
            Error::Cli(_) => EXIT_USAGE,
            Error::Config(_) => EXIT_CONFIG,
            // A bad filter (`[log] level` or ENDPOINT_COPIER_LOG) is a typo in config.
            Error::Logging(logging::Error::Filter { .. }) => EXIT_CONFIG,
            // Refused, or still unloadable after the daemon's wait: restarting will not help.
            Error::Daemon(daemon::Error::Kubeconfig(_)) => EXIT_CONFIG,
            Error::Drain(drain::Error::Client(_)) => EXIT_CONFIG,
            Error::Drain(_)
            | Error::Logging(_)
            | Error::Runtime(_)
            | Error::Shutdown(_)
            | Error::Daemon(_)
            | Error::Inspect(_)
            | Error::Generate(_) => EXIT_FAILURE,
        }
    }
}

/// The exit code of a printed report.
fn verdict_code(verdict: Verdict) -> u8 {
    match verdict {
        Verdict::Ok => EXIT_OK,
        Verdict::Problems(_) => EXIT_FAILURE,
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => ExitCode::from(code),
        Err(Error::Cli(c)) => {
            // clap formats its own usage message.
            let _ = c.print();
            ExitCode::from(EXIT_USAGE)
        }
        Err(e) => {
            let code = e.exit_code();
            tracing::error!(error = %Chain(&e), "exiting");
            if !logging::is_initialized() {
                // Under systemd, stderr is the journal: the "<3>" prefix (sd-daemon(3)) files the
                // line at priority err, so `journalctl -p err` shows why the unit failed (a config
                // error, exit 78) and not just that it did.
                let prefix = if std::env::var_os("JOURNAL_STREAM").is_some() {
                    "<3>"
                } else {
                    ""
                };
                eprintln!("{prefix}endpoint-copier: {}", Chain(&e));
            }
            ExitCode::from(code)
        }
    }
}

fn run() -> Result<u8, Error> {
    let cli = match Cli::try_parse_from_env() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version: print and succeed.
            let _ = e.print();
            return Ok(EXIT_OK);
        }
        Err(e) => return Err(Error::Cli(e)),
    };
    if let Command::Version = cli.command {
        println!("{}", cli::version());
        return Ok(EXIT_OK);
    }
    // For packagers, at build time: needs no config, so it runs before the config is read.
    if let Command::Generate(GenerateArgs { what, dir }) = &cli.command {
        let written = match what {
            Generated::Man => cli::generate::man_pages(dir),
            Generated::Completions => cli::generate::completions(dir),
        }
        .map_err(Error::Generate)?;
        for path in written {
            println!("{}", path.display());
        }
        return Ok(EXIT_OK);
    }
    let loaded = config::load(&cli.overrides()).map_err(|e| Error::Config(Box::new(e)))?;
    let config = loaded.config.clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)?;
    match cli.command {
        Command::Run => {
            logging::init(&config.log.level).map_err(Error::Logging)?;
            tracing::info!(version = env!("CARGO_PKG_VERSION"), files = ?loaded.files, "starting");
            runtime.block_on(async {
                let (token, second_signal) = shutdown::listen().map_err(Error::Shutdown)?;
                tokio::select! {
                    r = daemon::run(config, token) => r.map_err(Error::Daemon),
                    () = second_signal => {
                        tracing::warn!("second signal: exiting at once, without releasing the Lease");
                        std::process::exit(i32::from(EXIT_FAILURE));
                    }
                }
            })?;
            Ok(EXIT_OK)
        }
        Command::Check(OutputArgs { output }) => {
            logging::init_for_cli(&config.log.level).map_err(Error::Logging)?;
            runtime
                .block_on(inspect::check(&config, &loaded.files, output))
                .map(verdict_code)
                .map_err(Error::Inspect)
        }
        Command::Status(OutputArgs { output }) => {
            logging::init_for_cli(&config.log.level).map_err(Error::Logging)?;
            runtime
                .block_on(inspect::status(&config, output))
                .map(verdict_code)
                .map_err(Error::Inspect)
        }
        Command::Drain(DrainArgs {
            node,
            timeout_secs,
            expires_secs,
        }) => {
            logging::init_for_cli(&config.log.level).map_err(Error::Logging)?;
            let options = drain::DrainOptions {
                node,
                timeout: std::time::Duration::from_secs(timeout_secs),
                expires: std::time::Duration::from_secs(expires_secs),
            };
            let drained = runtime
                .block_on(drain::drain(&config, &options))
                .map_err(Error::Drain)?;
            println!("{drained}");
            Ok(EXIT_OK)
        }
        Command::Resume(ResumeArgs {
            node,
            timeout_secs,
            timed_only,
        }) => {
            logging::init_for_cli(&config.log.level).map_err(Error::Logging)?;
            let options = drain::ResumeOptions {
                node,
                timeout: std::time::Duration::from_secs(timeout_secs),
                timed_only,
            };
            let resumed = runtime
                .block_on(drain::resume(&config, &options))
                .map_err(Error::Drain)?;
            println!("{resumed}");
            Ok(EXIT_OK)
        }
        Command::Version | Command::Generate(_) => Ok(EXIT_OK),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_config_errors_map_to_the_codes_systemd_will_not_restart() {
        let cli = clap::Error::new(clap::error::ErrorKind::UnknownArgument);
        assert_eq!(Error::Cli(cli).exit_code(), 64);
        let rt = Error::Runtime(std::io::Error::other("x"));
        assert_eq!(rt.exit_code(), 1);
        assert_eq!(
            Error::Daemon(daemon::Error::TaskEnded("watch")).exit_code(),
            1
        );
    }

    #[test]
    fn a_refused_or_late_drain_exits_1_and_an_unusable_kubeconfig_78() {
        let refused = Error::Drain(drain::Error::LastReady {
            node: "cp-1".into(),
            targets: Vec::new(),
        });
        assert_eq!(refused.exit_code(), 1);
        let late = Error::Drain(drain::Error::StillReady {
            node: "cp-1".into(),
            secs: 10,
            still: Vec::new(),
        });
        assert_eq!(late.exit_code(), 1);
        let kubeconfig = Error::Drain(drain::Error::Client(
            endpoint_copier::client::Error::NotFound,
        ));
        assert_eq!(kubeconfig.exit_code(), 78);
    }

    #[test]
    fn a_report_with_problems_exits_1_and_a_clean_one_0() {
        assert_eq!(verdict_code(Verdict::Ok), 0);
        assert_eq!(verdict_code(Verdict::Problems(3)), 1);
    }
}
