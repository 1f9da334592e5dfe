//! Sources in other clusters (being written on branch `remote`; this is its interface).

use std::collections::BTreeSet;
use std::fmt;

use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::shutdown::Shutdown;
use crate::source::RemoteSource;

/// What this copy knows of one remote source now.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct View {
    /// The Service's EndpointSlices as last listed and watched; `None` until the first list.
    pub slices: Option<Vec<EndpointSlice>>,
    /// Whether the Service exists in that cluster; `None` until known.
    pub service_exists: Option<bool>,
    /// What is wrong now.
    pub trouble: Option<Trouble>,
}

/// What is wrong with a remote source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trouble {
    /// The kubeconfig does not exist yet.
    Waiting,
    /// The kubeconfig cannot be used.
    Kubeconfig(String),
    /// The cluster cannot be reached.
    Unreachable(String),
    /// 401.
    Unauthorized(String),
    /// 403.
    Forbidden(String),
    /// The Service does not exist there.
    ServiceMissing,
}

impl fmt::Display for Trouble {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

/// One source's view, after a change.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    /// The source.
    pub source: RemoteSource,
    /// Its view now.
    pub view: View,
}

/// Placeholder until branch `remote` lands.
pub fn spawn(
    _sources: BTreeSet<RemoteSource>,
    _allow_insecure_tls: bool,
    _updates: tokio::sync::mpsc::Sender<Update>,
    shutdown: Shutdown,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move { shutdown.cancelled().await })
}
