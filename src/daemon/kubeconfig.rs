//! The node kubeconfig over the daemon's life: waiting for it on first boot, and swapping the
//! credentials under the running client when the file is rewritten (RKE2 rotates its client
//! certificates) or the API answers 401.

use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, warn};

use super::Error;
use crate::client;
use crate::config::Config;
use crate::error::chain;
use crate::notify::{Beat, Notifier};
use crate::shutdown::Shutdown;

/// How long a kubeconfig that exists but does not load is retried before it is a config error:
/// long enough for any writer to finish the file, short enough to be seen as a failed unit.
const GIVE_UP: Duration = Duration::from_secs(60);
/// How often a missing or unloadable kubeconfig is looked at again.
const WAIT_POLL: Duration = Duration::from_secs(2);

/// Waits until the configured kubeconfig exists and loads; `None` when `shutdown` came first.
///
/// # Errors
/// [`Error::Kubeconfig`] when the file is refused (insecure) or still fails to load after
/// [`GIVE_UP`].
pub async fn wait(
    config: &Config,
    connector: &client::transport::Connector,
    notifier: &Notifier,
    beat: &Beat,
    shutdown: &Shutdown,
) -> Result<Option<client::Loaded>, Error> {
    // First boot: RKE2 writes its kubeconfig only once the server is up. Wait for it, visibly.
    // A file that exists but does not load is retried for a while (caught mid-write), warned
    // about when the error changes, and after GIVE_UP it is a config error (78).
    let mut failing: Option<(Instant, String)> = None;
    loop {
        let found = client::locate(&config.kubeconfig);
        let attempt = match &found {
            // A configured path that does not exist yet is waited for like `auto`'s files.
            Some(path) if path.exists() => {
                client::build_with(path, config.allow_insecure_tls, connector).await
            }
            _ => Err(client::Error::NotFound),
        };
        match attempt {
            Ok(loaded) => return Ok(Some(loaded)),
            Err(client::Error::NotFound) => {
                notifier.status(&format!(
                    "waiting for {}",
                    client::waiting_for(&config.kubeconfig)
                ));
                debug!("no kubeconfig yet");
            }
            Err(e) if e.is_transient() => {
                let what = found.map_or_else(
                    || client::waiting_for(&config.kubeconfig),
                    |p| p.display().to_string(),
                );
                let message = chain(&e);
                let since = match &failing {
                    Some((since, previous)) if *previous == message => *since,
                    _ => {
                        warn!(path = %what, error = %message, "kubeconfig exists but cannot be used yet; retrying");
                        Instant::now()
                    }
                };
                if since.elapsed() >= GIVE_UP {
                    return Err(Error::Kubeconfig(e));
                }
                notifier.status(&format!("waiting for {what}: {message}"));
                failing = Some((since, message));
            }
            Err(e) => return Err(Error::Kubeconfig(e)),
        }
        beat.tick();
        tokio::select! {
            () = shutdown.cancelled() => return Ok(None),
            () = tokio::time::sleep(WAIT_POLL) => {}
        }
    }
}

/// The node's kubeconfig: the client it feeds, where it is looked for, and the probes' copy.
pub struct NodeCredentials {
    /// The loaded kubeconfig and the client whose transport a reload swaps.
    pub current: client::Credentials,
    /// Its kube config, for the probes (their TLS and credentials follow a rotation too).
    pub probe_config: tokio::sync::watch::Sender<kube::Config>,
    /// Where the kubeconfig is looked for (`kubeconfig`: `auto` may find another file later).
    pub kubeconfig: crate::config::Kubeconfig,
}

impl NodeCredentials {
    /// Re-reads the kubeconfig when its file changed (or always, when `force`: after a 401) and
    /// swaps the credentials if it loads; a file that does not load keeps the previous ones.
    pub async fn reload(&mut self, force: bool) {
        let path =
            client::locate(&self.kubeconfig).unwrap_or_else(|| self.current.loaded.path.clone());
        if self.current.reload(&path, force).await != client::Reloaded::Kept {
            self.probe_config
                .send_replace(self.current.loaded.config.clone());
        }
    }
}
