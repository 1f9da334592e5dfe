//! Sources in other clusters: watching a Service and its EndpointSlices through a kubeconfig of
//! their own, and reporting what this copy knows of each as a [`View`].
//!
//! Owns: one client per distinct kubeconfig path (waited for while missing, re-read when the
//! file is rewritten or the remote answers 401, exactly like the node kubeconfig in
//! `daemon::kubeconfig`), two read-only watches per source (the Service by name, its slices by
//! label) and the classification of what goes wrong into a [`Trouble`] (`check`'s probe of the
//! remotes is `inspect::remote`). It never writes to a remote cluster, and it decides nothing about the
//! target: uniting the sources is `desired`'s job, reacting to a [`Update`] is `daemon`'s.
//!
//! Files: `state.rs` (pure: one source's events in, its [`View`] out), `cluster.rs` (the task of
//! one kubeconfig: credentials, watches, updates).

use std::collections::BTreeSet;
use std::fmt;

use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::shutdown::Shutdown;
pub use crate::source::RemoteSource;

pub(crate) mod cluster;
pub(crate) mod state;

/// What this copy knows of one remote source now.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct View {
    /// The Service's EndpointSlices (label `kubernetes.io/service-name=<name>` in its namespace) as
    /// last listed and watched, sorted by name, `managedFields` dropped; `None` until the first
    /// list completed. Kept as they are while the remote fails (fail-static): never cleared by an
    /// error.
    pub slices: Option<Vec<EndpointSlice>>,
    /// Whether the Service itself exists in that cluster; `None` until known.
    pub service_exists: Option<bool>,
    /// What is wrong now, `None` when the last watch events arrived fine.
    pub trouble: Option<Trouble>,
    /// The source has been in trouble without a break for longer than `keep_last_known` (by this
    /// copy's monotonic clock): what this copy last knew of it — its slices here, or its slices
    /// kept in a target — no longer counts as ready in a pair that does not probe. False again
    /// as soon as the trouble is gone.
    pub expired: bool,
}

/// What keeps a remote source from being read, most pressing first when several apply (a
/// kubeconfig problem hides the watches' errors, which hide a missing Service).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trouble {
    /// The kubeconfig file does not exist (yet): waited for, like the node kubeconfig on first boot.
    Waiting,
    /// The kubeconfig exists but cannot be used (unparsable, insecure-skip-tls-verify without
    /// allow_insecure_tls, bad certificate); message = error chain.
    Kubeconfig(String),
    /// Connection refused, timeout, TLS failure, 5xx: the cluster cannot be reached.
    Unreachable(String),
    /// 401: the credentials are refused (the kubeconfig is re-read at once).
    Unauthorized(String),
    /// 403: the credentials may not list/watch the Service or its EndpointSlices.
    Forbidden(String),
    /// The Service does not exist in that cluster.
    ServiceMissing,
}

impl Trouble {
    /// A name per kind, without the message: a change of kind is logged at warn, a new message
    /// for the same kind only at debug (the text of a connection error varies between retries).
    pub fn kind(&self) -> &'static str {
        match self {
            Trouble::Waiting => "waiting",
            Trouble::Kubeconfig(_) => "kubeconfig",
            Trouble::Unreachable(_) => "unreachable",
            Trouble::Unauthorized(_) => "unauthorized",
            Trouble::Forbidden(_) => "forbidden",
            Trouble::ServiceMissing => "service-missing",
        }
    }
}

impl fmt::Display for Trouble {
    /// One lowercase phrase, for logs, Events and `status`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trouble::Waiting => f.write_str("the kubeconfig does not exist yet"),
            Trouble::Kubeconfig(m) => write!(f, "the kubeconfig cannot be used: {m}"),
            Trouble::Unreachable(m) => write!(f, "the cluster cannot be reached: {m}"),
            Trouble::Unauthorized(m) => write!(f, "the credentials are refused: {m}"),
            Trouble::Forbidden(m) => write!(
                f,
                "the credentials may not read the Service or its EndpointSlices: {m}"
            ),
            Trouble::ServiceMissing => f.write_str("the Service does not exist there"),
        }
    }
}

/// A source's whole [`View`], sent after every change of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    /// The source the view is of.
    pub source: RemoteSource,
    /// Everything known of it now.
    pub view: View,
}

/// How the remote sources are read.
#[derive(Debug, Clone)]
pub struct Options {
    /// Whether a kubeconfig with `insecure-skip-tls-verify: true` is accepted.
    pub allow_insecure_tls: bool,
    /// How long a source may stay in trouble before its [`View`] says `expired`
    /// (`[sync] keep_last_known_secs`).
    pub keep_last_known: std::time::Duration,
    /// How the clients connect (the node kubeconfig's connector: TCP, or the simulator's).
    pub connector: crate::client::transport::Connector,
}

/// Watches every source in `sources` until `shutdown`: one client per distinct kubeconfig path
/// (shared by the sources naming it), two watches per source (the Service by name with a
/// fieldSelector `metadata.name=<name>`; its EndpointSlices by label), and sends the source's whole
/// [`View`] after every change of it (slices, existence, trouble, expiry). Never returns an
/// error: trouble is reported in the View and retried with backoff forever. The task ends at
/// `shutdown`, or when `updates` has no receiver left.
pub fn spawn(
    sources: BTreeSet<RemoteSource>,
    options: Options,
    updates: tokio::sync::mpsc::Sender<Update>,
    shutdown: Shutdown,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut clusters = tokio::task::JoinSet::new();
        for (kubeconfig, of_cluster) in cluster::by_kubeconfig(&sources) {
            clusters.spawn(cluster::run(
                kubeconfig,
                of_cluster,
                options.clone(),
                updates.clone(),
                shutdown.clone(),
            ));
        }
        // Each cluster's task ends only at shutdown (or when nobody listens any more); a panic in
        // one must not leave the others orphaned, so all are awaited.
        while clusters.join_next().await.is_some() {}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_trouble_reads_as_one_lowercase_phrase() {
        let all = [
            Trouble::Waiting,
            Trouble::Kubeconfig("x".into()),
            Trouble::Unreachable("connection refused".into()),
            Trouble::Unauthorized("x".into()),
            Trouble::Forbidden("x".into()),
            Trouble::ServiceMissing,
        ];
        for t in &all {
            let s = t.to_string();
            assert!(s.starts_with("the "), "{s}");
            assert!(!s.ends_with('.'), "{s}");
        }
        assert_eq!(
            Trouble::Unreachable("connection refused".into()).to_string(),
            "the cluster cannot be reached: connection refused"
        );
        let kinds: BTreeSet<&str> = all.iter().map(Trouble::kind).collect();
        assert_eq!(kinds.len(), all.len());
    }
}
