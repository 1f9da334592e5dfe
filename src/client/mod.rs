//! The `kube::Client`, built from the configured kubeconfig file and nothing else.
//!
//! Owns: finding the kubeconfig (`auto` = RKE2's, then K3s's), loading it with the settings a
//! daemon needs (timeouts, no hidden retries), the safety checks an operator should hear about
//! (insecure TLS refused, loose file modes and host names warned), and noticing when the file is
//! rewritten (RKE2 rotates its client certificate by writing a new file); and the one
//! classification of failed requests ([`classify`], [`retry_after`]) that every caller retries
//! by. It never reads `~/.kube/config`, `KUBECONFIG` or the in-cluster environment. Deciding
//! *when* to rebuild is `daemon`'s job; permissions are read through `host`.
//!
//! Below it: `transport` makes the connections (kube's TLS and credentials on sockets with TCP
//! keepalive), `link` judges whether they still carry answers and restarts what a network cut
//! left silent.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use kube::config::{KubeConfigOptions, Kubeconfig, KubeconfigError};

use crate::config;

mod credentials;
pub mod link;
pub mod transport;

pub use credentials::{Credentials, Reloaded, cluster_of};
pub use link::{Link, Tracked};

/// How long to wait for a TCP/TLS connection to the API server. Short: a control-plane host's
/// apiserver is local or one hop away, and a dead one must not hold up a Lease renewal.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long writing one request may take.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one write may take before we give up on it and retry later. Long enough for a busy
/// apiserver, short enough that a hung one does not stall the pair past a Lease renew deadline.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why no client could be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `kubeconfig = "auto"` and neither RKE2's nor K3s's file exists (yet).
    #[error("no kubeconfig found (looked for {})", crate::names::AUTO_KUBECONFIGS.join(", "))]
    NotFound,
    /// The file could not be read or parsed.
    #[error("failed to load kubeconfig '{path}'")]
    Load {
        /// The kubeconfig file.
        path: PathBuf,
        /// What kube-rs reported.
        #[source]
        source: KubeconfigError,
    },
    /// The file asks to skip TLS verification and the config does not allow it.
    #[error(
        "kubeconfig '{path}' sets insecure-skip-tls-verify; refusing (set allow_insecure_tls = true to accept it)"
    )]
    Insecure {
        /// The kubeconfig file.
        path: PathBuf,
    },
    /// The client could not be built from a loaded config (bad certificate or key, bad URL).
    #[error("failed to build a Kubernetes client from '{path}'")]
    Build {
        /// The kubeconfig file.
        path: PathBuf,
        /// What kube-rs reported.
        #[source]
        source: kube::Error,
    },
}

impl Error {
    /// Whether waiting can fix this: a missing file may still appear (first boot), a file caught
    /// half-written may be complete on the next read. A file that loads but is refused or broken
    /// is a config error (exit 78).
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::NotFound | Error::Load { .. })
    }
}

/// A client and what it was built from.
#[derive(Clone)]
pub struct Loaded {
    /// The client: cheap to clone, one connection pool.
    pub client: kube::Client,
    /// The kubeconfig file it was built from.
    pub path: PathBuf,
    /// The API server URL, for logs and `check`.
    pub server: String,
    /// Things an operator should fix but that do not stop the daemon.
    pub warnings: Vec<String>,
    /// The file's fingerprint when it was read, to notice rewrites.
    pub fingerprint: Option<Fingerprint>,
    /// The kube config the client was built from: the probes take its CA and credentials.
    pub config: kube::Config,
}

/// Where the kubeconfig is: the configured path, or for `auto` the first of RKE2's and K3s's files
/// that exists. `None` while `auto` finds nothing.
pub fn locate(kubeconfig: &config::Kubeconfig) -> Option<PathBuf> {
    match kubeconfig {
        config::Kubeconfig::Path(p) => Some(p.clone()),
        config::Kubeconfig::Auto => crate::names::AUTO_KUBECONFIGS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists()),
    }
}

/// What `daemon` shows while it waits for the kubeconfig to appear.
pub fn waiting_for(kubeconfig: &config::Kubeconfig) -> String {
    match kubeconfig {
        config::Kubeconfig::Path(p) => p.display().to_string(),
        config::Kubeconfig::Auto => crate::names::AUTO_KUBECONFIGS.join(" or "),
    }
}

/// Loads `path` and builds a client.
///
/// # Errors
/// [`Error::Load`] when the file is missing or unparsable, [`Error::Insecure`] when it skips TLS
/// verification without `allow_insecure_tls`, [`Error::Build`] when the credentials are unusable.
pub async fn build(path: &Path, allow_insecure_tls: bool) -> Result<Loaded, Error> {
    build_with(path, allow_insecure_tls, &transport::Connector::Tcp).await
}

/// [`build`], the client's connections made by `connector` ([`transport::Connector::Tcp`] on
/// a host; the simulator's in-memory network in `tests/sim/`).
///
/// # Errors
/// As [`build`].
pub async fn build_with(
    path: &Path,
    allow_insecure_tls: bool,
    connector: &transport::Connector,
) -> Result<Loaded, Error> {
    let fingerprint = Fingerprint::of(path);
    let kubeconfig = Kubeconfig::read_from(path).map_err(|source| Error::Load {
        path: path.to_owned(),
        source,
    })?;
    let mut config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|source| Error::Load {
                path: path.to_owned(),
                source,
            })?;
    if config.accept_invalid_certs && !allow_insecure_tls {
        return Err(Error::Insecure {
            path: path.to_owned(),
        });
    }
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.write_timeout = Some(WRITE_TIMEOUT);
    // No read timeout on the client: watches are long-lived streams. Every non-watch request is
    // bounded where it is sent instead (apply, lease), so a hung apiserver costs one deadline.
    config.read_timeout = None;
    // kube's built-in retry would re-send a 429/503 up to 15 times over minutes, hiding the error
    // from our own backoff and, worse, re-sending a write after our Lease renew deadline passed.
    // Retries are ours: capped, jittered, and each one re-checks the fence.
    config.default_retry = false;

    let server = config.cluster_url.to_string();
    let mut warnings = Vec::new();
    if let Some(host) = config.cluster_url.host()
        && host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_err()
    {
        warnings.push(format!(
            "kubeconfig '{}' names the API server by host name '{host}': the static binary resolves it \
             through the host's NSS libraries; an IP address avoids that dependency",
            path.display()
        ));
    }
    if config.accept_invalid_certs {
        warnings.push(format!(
            "kubeconfig '{}' skips TLS verification (allowed by allow_insecure_tls)",
            path.display()
        ));
    }
    if let Ok(true) = crate::host::is_group_or_world_readable(path) {
        warnings.push(format!(
            "kubeconfig '{}' is readable by group or others: it holds cluster-admin credentials (chmod 600)",
            path.display()
        ));
    }
    let client = transport::client_with(&config, connector).map_err(|source| Error::Build {
        path: path.to_owned(),
        source,
    })?;
    Ok(Loaded {
        client,
        path: path.to_owned(),
        server,
        warnings,
        fingerprint,
        config,
    })
}

/// Identity of a file's content on disk: RKE2 replaces the kubeconfig by rename on certificate
/// rotation (new inode) or rewrites it in place (new mtime/size); either changes this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    dev: u64,
    ino: u64,
    len: u64,
    modified: Option<SystemTime>,
}

impl Fingerprint {
    /// The fingerprint of `path` now, or `None` when it cannot be read.
    pub fn of(path: &Path) -> Option<Fingerprint> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(Fingerprint {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            modified: m.modified().ok(),
        })
    }
}

/// What a failed request means for whoever sent it: the one classification of `kube::Error`
/// that every caller (Lease, EndpointSlice writes, legacy Endpoints) builds on.
///
/// Callers may refine it with what only they know, and say so where they do: for an
/// EndpointSlice update or delete, a 404 is [`ErrorClass::Fatal`] here but means "the object is
/// gone, re-plan" to `apply`; for a Lease update it means "deleted under us, re-read" to `lease`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// Heals by itself: 408, 429 (API Priority and Fairness), 5xx, timeouts, connection and
    /// transport errors (refused, reset, TLS handshake, a body cut short). Retry on the backoff.
    Transient,
    /// 409: someone wrote first (stale resourceVersion) or the name exists (AlreadyExists).
    /// Re-read, decide again.
    Conflict,
    /// 401, or the client could not produce credentials: RKE2 rotated the client certificate.
    /// Reload the kubeconfig (`Reloadable` notices 401s), then retry: transient for retry purposes.
    Auth,
    /// Needs a person: 400, 403 (RBAC), 404 (a namespace or resource that does not exist), 422,
    /// and errors that are not about the server at all (a request we could not build).
    Fatal,
}

impl ErrorClass {
    /// Whether retrying (after a re-read or a credential reload where the class says so) can
    /// succeed without a person: everything but [`ErrorClass::Fatal`].
    pub fn is_retryable(self) -> bool {
        self != ErrorClass::Fatal
    }
}

/// The [`ErrorClass`] of a failed request.
pub fn classify(error: &kube::Error) -> ErrorClass {
    match error {
        kube::Error::Api(status) => match status.code {
            401 => ErrorClass::Auth,
            409 => ErrorClass::Conflict,
            408 | 429 | 500..=599 => ErrorClass::Transient,
            _ => ErrorClass::Fatal,
        },
        // The connection failed or the answer was cut short: nothing the server decided.
        kube::Error::HyperError(_)
        | kube::Error::Service(_)
        | kube::Error::ReadEvents(_)
        | kube::Error::SerdeError(_)
        | kube::Error::FromUtf8(_)
        | kube::Error::LinesCodecMaxLineLengthExceeded => ErrorClass::Transient,
        kube::Error::Auth(_) => ErrorClass::Auth,
        _ => ErrorClass::Fatal,
    }
}

/// The server's Retry-After, when it sent one (429 from API Priority and Fairness, some 5xx):
/// honour it instead of our own backoff.
pub fn retry_after(error: &kube::Error) -> Option<Duration> {
    match error {
        kube::Error::Api(status) => status
            .details
            .as_ref()
            .map(|d| d.retry_after_seconds)
            .filter(|s| *s > 0)
            .map(|s| Duration::from_secs(u64::from(s))),
        _ => None,
    }
}

/// One `kube::Client` for the whole process whose credentials can be replaced underneath it.
///
/// Every task (Lease, watches, writers) clones [`Reloadable::client`] once; when RKE2 rotates the
/// client certificate, [`Reloadable::swap`] points all of them at a client built from the new
/// file. Requests already in flight finish on the old connection; the Lease is never dropped.
/// A 401 from the server is reported through [`Reloadable::unauthorized`], so the daemon re-reads
/// the kubeconfig at once instead of waiting for the file watch. Every request and response body
/// goes through one [`Link`], which restarts the watches a network cut left silent.
#[derive(Clone)]
pub struct Reloadable {
    current: std::sync::Arc<std::sync::RwLock<kube::Client>>,
    unauthorized: std::sync::Arc<tokio::sync::Notify>,
    link: Link,
    outer: kube::Client,
}

impl Reloadable {
    /// Wraps `initial`.
    pub fn new(initial: kube::Client) -> Reloadable {
        let current = std::sync::Arc::new(std::sync::RwLock::new(initial));
        let unauthorized = std::sync::Arc::new(tokio::sync::Notify::new());
        let link = Link::default();
        let (c, u, l) = (current.clone(), unauthorized.clone(), link.clone());
        let service = tower::service_fn(move |request: http::Request<kube::client::Body>| {
            // A poisoned lock only means a swap panicked half-way; the client inside is whole.
            let inner = match c.read() {
                Ok(g) => g.clone(),
                Err(p) => p.into_inner().clone(),
            };
            let (u, l) = (u.clone(), l.clone());
            async move {
                let watch = link::is_watch(request.uri());
                let mut exchange = l.open(watch);
                let answer = tokio::select! {
                    answer = inner.send(request) => answer,
                    why = exchange.cut() => {
                        exchange.dismissed();
                        return Err(kube::Error::Service(Box::new(why)));
                    }
                    () = tokio::time::sleep(link::ANSWER_IDLE) => {
                        exchange.timed_out();
                        return Err(kube::Error::Service(Box::new(link::Cut::AnswerIdle)));
                    }
                };
                let response = match answer {
                    Ok(response) => response,
                    Err(e) => {
                        exchange.failed();
                        return Err(e);
                    }
                };
                exchange.answered();
                if response.status() == http::StatusCode::UNAUTHORIZED {
                    u.notify_one();
                }
                Ok::<_, kube::Error>(response.map(|body| Tracked::new(body, exchange, watch)))
            }
        });
        let outer = kube::Client::new(service, "default");
        Reloadable {
            current,
            unauthorized,
            link,
            outer,
        }
    }

    /// The link every request of this client goes through: its health for STATUS and `status`.
    pub fn link(&self) -> &Link {
        &self.link
    }

    /// The client every task uses.
    pub fn client(&self) -> kube::Client {
        self.outer.clone()
    }

    /// Replaces the credentials and connection pool under [`Reloadable::client`].
    pub fn swap(&self, next: kube::Client) {
        match self.current.write() {
            Ok(mut g) => *g = next,
            Err(p) => *p.into_inner() = next,
        }
    }

    /// Completes after the API server answered 401 Unauthorized to any request.
    pub async fn unauthorized(&self) {
        self.unauthorized.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configured_path_is_used_as_given_even_when_missing() {
        let p = PathBuf::from("/nonexistent/kubeconfig.yaml");
        assert_eq!(locate(&config::Kubeconfig::Path(p.clone())), Some(p));
    }

    #[test]
    fn waiting_names_both_auto_paths() {
        let s = waiting_for(&config::Kubeconfig::Auto);
        assert!(
            s.contains("/etc/rancher/rke2/rke2.yaml") && s.contains("/etc/rancher/k3s/k3s.yaml")
        );
    }

    #[test]
    fn fingerprint_changes_when_the_file_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.yaml");
        std::fs::write(&p, "a").unwrap();
        let before = Fingerprint::of(&p).unwrap();
        let tmp = dir.path().join("k.yaml.tmp");
        std::fs::write(&tmp, "bb").unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        assert_ne!(Fingerprint::of(&p).unwrap(), before);
        assert_eq!(Fingerprint::of(&dir.path().join("missing")), None);
    }

    fn api(code: u16) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure("x", "y")
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn every_status_code_has_one_class() {
        for code in [408, 429, 500, 502, 503, 504] {
            assert_eq!(classify(&api(code)), ErrorClass::Transient, "{code}");
        }
        assert_eq!(classify(&api(409)), ErrorClass::Conflict);
        assert_eq!(classify(&api(401)), ErrorClass::Auth);
        for code in [400, 403, 404, 410, 422] {
            assert_eq!(classify(&api(code)), ErrorClass::Fatal, "{code}");
        }
    }

    #[test]
    fn transport_failures_are_transient_and_only_fatal_is_not_retryable() {
        let reset = kube::Error::Service(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert_eq!(classify(&reset), ErrorClass::Transient);
        assert!(ErrorClass::Transient.is_retryable());
        assert!(ErrorClass::Conflict.is_retryable());
        assert!(ErrorClass::Auth.is_retryable());
        assert!(!ErrorClass::Fatal.is_retryable());
    }

    #[test]
    fn retry_after_comes_from_the_status_details() {
        // Deserialized, as the client gets it: StatusDetails has no Default.
        let details =
            serde_json::from_value(serde_json::json!({ "retryAfterSeconds": 3 })).unwrap();
        let throttled = kube::Error::Api(
            kube::core::Status::failure("x", "TooManyRequests")
                .with_code(429)
                .with_details(details)
                .boxed(),
        );
        assert_eq!(retry_after(&throttled), Some(Duration::from_secs(3)));
        assert_eq!(retry_after(&api(503)), None);
    }

    #[tokio::test]
    async fn an_unreadable_kubeconfig_names_the_file() {
        let err = build(Path::new("/nonexistent/rke2.yaml"), false)
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("/nonexistent/rke2.yaml"), "{err}");
        assert!(err.is_transient());
    }
}
