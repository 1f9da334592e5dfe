//! A kubeconfig over the daemon's life, one type for the node's and for every remote source's:
//! the client it feeds (whose transport a reload swaps, so nothing restarts) and the re-read
//! when the file changes (RKE2 rotates its client certificates) or the API answers 401. A file
//! that does not load keeps the previous credentials; a file that names another cluster (another
//! server URL or CA) is told apart from new credentials for the same one.

use std::path::Path;

use tracing::{debug, info, warn};

use super::{Fingerprint, Loaded, Reloadable, build_with, transport};
use crate::error::chain;

/// What a re-read of a kubeconfig did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reloaded {
    /// Nothing: the file is unchanged, gone for a moment, or cannot be used.
    Kept,
    /// New credentials for the same cluster (a rotated certificate): watches go on.
    Credentials,
    /// The file names another cluster now (another server URL or CA): whatever was read from
    /// the old one must be read afresh.
    Repointed,
}

/// A loaded kubeconfig and the client whose credentials a reload swaps.
pub struct Credentials {
    /// The client under every API object built from this kubeconfig.
    pub reloadable: Reloadable,
    /// The kubeconfig as last loaded (or its fingerprint as last refused).
    pub loaded: Loaded,
    /// Whether `insecure-skip-tls-verify` is accepted (`allow_insecure_tls`).
    allow_insecure_tls: bool,
    /// What the logs call it: "kubeconfig" (the node's), "remote kubeconfig".
    what: &'static str,
    /// How a rebuilt client connects ([`transport::Connector::Tcp`] unless the daemon was given
    /// another: the simulator's).
    connector: transport::Connector,
}

impl Credentials {
    /// The credentials of `loaded`; `what` names them in the logs.
    pub fn new(loaded: Loaded, allow_insecure_tls: bool, what: &'static str) -> Credentials {
        Credentials {
            reloadable: Reloadable::new(loaded.client.clone()),
            loaded,
            allow_insecure_tls,
            what,
            connector: transport::Connector::Tcp,
        }
    }

    /// These credentials, rebuilt through `connector` on every reload.
    pub fn with_connector(mut self, connector: transport::Connector) -> Credentials {
        self.connector = connector;
        self
    }

    /// Re-reads the kubeconfig at `path` when it is not the file last loaded or that file
    /// changed (or always, when `force`: after a 401) and swaps the credentials if it loads.
    pub async fn reload(&mut self, path: &Path, force: bool) -> Reloaded {
        let what = self.what;
        let now = Fingerprint::of(path);
        let changed = now != self.loaded.fingerprint || path != self.loaded.path;
        if now.is_none() || (!force && !changed) {
            // Removed or mid-rename: keep the client we have; the next poll looks again.
            return Reloaded::Kept;
        }
        match build_with(path, self.allow_insecure_tls, &self.connector).await {
            Ok(next) => {
                let repointed = cluster_of(&next.config) != cluster_of(&self.loaded.config);
                if repointed {
                    warn!(kubeconfig = %path.display(), server = %next.server, previous = %self.loaded.server, "{what} points at another cluster now (server or CA changed); reading afresh");
                } else if changed {
                    info!(kubeconfig = %path.display(), server = %next.server, "{what} changed; reconnecting with the new credentials");
                } else {
                    debug!(kubeconfig = %path.display(), "{what} re-read after a 401");
                }
                self.reloadable.swap(next.client.clone());
                self.loaded = next;
                if repointed {
                    Reloaded::Repointed
                } else {
                    Reloaded::Credentials
                }
            }
            Err(e) => {
                if changed {
                    warn!(kubeconfig = %path.display(), error = %chain(&e), "{what} changed but cannot be used; keeping the previous credentials");
                } else {
                    debug!(kubeconfig = %path.display(), error = %chain(&e), "{what} still cannot be used");
                }
                // Do not warn on every poll about the same broken file: remember its fingerprint.
                self.loaded.fingerprint = now;
                Reloaded::Kept
            }
        }
    }
}

/// What identifies the cluster a kubeconfig reaches: the server URL, the CA certificates and
/// the name the server's certificate is checked against. Credentials are not part of it.
pub fn cluster_of(config: &kube::Config) -> (String, Option<&Vec<Vec<u8>>>, Option<&str>) {
    (
        config.cluster_url.to_string(),
        config.root_cert.as_ref(),
        config.tls_server_name.as_deref(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_server_or_ca_is_another_cluster_and_new_credentials_are_not() {
        let config = |url: &str| kube::Config::new(url.parse().unwrap());
        let a = config("https://198.51.100.1:6443");
        let mut rotated = a.clone();
        rotated.auth_info.token = Some("new".to_owned().into());
        assert_eq!(cluster_of(&a), cluster_of(&rotated), "credentials only");
        assert_ne!(
            cluster_of(&a),
            cluster_of(&config("https://203.0.113.1:6443"))
        );
        let mut other_ca = a.clone();
        other_ca.root_cert = Some(vec![vec![1, 2, 3]]);
        assert_ne!(cluster_of(&a), cluster_of(&other_ca));
        let mut other_name = a.clone();
        other_name.tls_server_name = Some("kubernetes.default.svc".into());
        assert_ne!(cluster_of(&a), cluster_of(&other_name));
    }
}
