//! The `endpoint-copier` binary: flags, logging, config, runtime, final error → exit code.
//!
//! This is the only place that calls `process::exit`. Everything it runs lives in the library
//! (`src/lib.rs`) so that the tests drive the same code.

use std::process::ExitCode;

use endpoint_copier::cli::{Cli, Command, OutputArgs};
use endpoint_copier::error::Error;
use endpoint_copier::{config, daemon, inspect, logging, shutdown};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = e.exit_code();
            match &e {
                // clap formats its own usage message.
                Error::Cli(c) => {
                    let _ = c.print();
                }
                Error::Inspect(i) if i.is_report() => {}
                _ => {
                    let chain = endpoint_copier::error::chain(&e);
                    tracing::error!(error = %chain, "exiting");
                    if !logging::is_initialized() {
                        // Under systemd, stderr is the journal: the "<3>" prefix (sd-daemon(3))
                        // files the line at priority err, so `journalctl -p err` shows why the
                        // unit failed (a config error, exit 78) and not just that it did.
                        let prefix = if std::env::var_os("JOURNAL_STREAM").is_some() {
                            "<3>"
                        } else {
                            ""
                        };
                        eprintln!("{prefix}endpoint-copier: {chain}");
                    }
                }
            }
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
    }
}

fn run() -> Result<(), Error> {
    let cli = match Cli::try_parse_from_env() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version: print and succeed.
            let _ = e.print();
            return Ok(());
        }
        Err(e) => return Err(Error::Cli(e)),
    };
    if let Command::Version = cli.command {
        println!("{}", version());
        return Ok(());
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
                        std::process::exit(1);
                    }
                }
            })
        }
        Command::Check(OutputArgs { output }) => {
            logging::init_for_cli(&config.log.level).map_err(Error::Logging)?;
            runtime
                .block_on(inspect::check(&config, &loaded.files, output))
                .map_err(Error::Inspect)
        }
        Command::Status(OutputArgs { output }) => {
            logging::init_for_cli(&config.log.level).map_err(Error::Logging)?;
            runtime
                .block_on(inspect::status(&config, output))
                .map_err(Error::Inspect)
        }
        Command::Version => Ok(()),
    }
}

/// `endpoint-copier <version> (commit <sha>, <rustc>)`.
fn version() -> String {
    format!(
        "endpoint-copier {} (commit {}, {})",
        env!("CARGO_PKG_VERSION"),
        option_env!("BUILD_GIT_COMMIT").unwrap_or("unknown"),
        option_env!("BUILD_RUSTC_VERSION").unwrap_or("rustc unknown"),
    )
}
