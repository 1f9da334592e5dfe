//! Turns SIGTERM and SIGINT into a cloneable shutdown handle; the only user of `tokio::signal`.
//!
//! What happens after the signal (STOPPING=1, releasing the Lease) belongs to `daemon`; the
//! immediate exit on a second signal belongs to `main`, which owns `process::exit`.

use tokio::signal::unix::{SignalKind, signal};
pub use tokio_util::sync::CancellationToken as Shutdown;

/// Why the signal handlers could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `sigaction` failed (only when the process is out of resources).
    #[error("failed to install the {signal} handler")]
    Install {
        /// SIGTERM or SIGINT.
        signal: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Installs the SIGTERM/SIGINT handlers.
///
/// Returns the token that is cancelled on the first signal, and a future that completes on the
/// second one (so `main` can exit at once when an operator insists).
///
/// # Errors
/// [`Error::Install`] when a handler cannot be installed.
pub fn listen() -> Result<(Shutdown, impl Future<Output = ()>), Error> {
    let mut term = signal(SignalKind::terminate()).map_err(|source| Error::Install {
        signal: "SIGTERM",
        source,
    })?;
    let mut int = signal(SignalKind::interrupt()).map_err(|source| Error::Install {
        signal: "SIGINT",
        source,
    })?;
    let token = Shutdown::new();
    let first = token.clone();
    let second = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        first.cancel();
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    Ok((token, second))
}
