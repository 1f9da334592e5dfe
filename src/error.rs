//! The top-level error: one variant per module error, and the exit code each one means.
//!
//! `main` logs the chain once and exits with [`Error::exit_code`]; nothing else picks exit codes.

/// Everything that can stop the process.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad command-line flags.
    #[error("invalid command line")]
    Cli(#[source] clap::Error),
    /// Invalid configuration.
    #[error("invalid configuration")]
    Config(#[source] Box<crate::config::Error>),
    /// Logging could not be set up.
    #[error("failed to set up logging")]
    Logging(#[source] crate::logging::Error),
    /// The tokio runtime could not start.
    #[error("failed to start the async runtime")]
    Runtime(#[source] std::io::Error),
    /// Signal handlers could not be installed.
    #[error("failed to install signal handlers")]
    Shutdown(#[source] crate::shutdown::Error),
    /// The daemon failed.
    #[error("daemon failed")]
    Daemon(#[source] crate::daemon::Error),
    /// `check` or `status` found problems or could not run.
    #[error("{0}")]
    Inspect(#[source] crate::inspect::Error),
}

impl Error {
    /// The process exit code: 64 bad flags, 78 bad config, 1 anything else at run time.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Cli(_) => 64,
            Error::Config(_) => 78,
            Error::Daemon(e) => e.exit_code(),
            Error::Inspect(e) => e.exit_code(),
            // A bad filter (`[log] level` or ENDPOINT_COPIER_LOG) is a typo in config: 78, so
            // systemd does not restart it in a loop.
            Error::Logging(crate::logging::Error::Filter { .. }) => 78,
            Error::Logging(_) | Error::Runtime(_) | Error::Shutdown(_) => 1,
        }
    }
}

/// An error and its sources, joined with ": ", for one log field or one line of output. Every
/// module logs errors through this, so a chain reads the same everywhere.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
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
    }
}
