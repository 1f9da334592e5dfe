//! `endpoint-copier drain` and `endpoint-copier resume`: planned maintenance of one control-plane
//! host, run by hand or by the systemd drop-ins on `rke2-server.service` and `k3s.service`
//! (`ExecStop=` drains before the apiserver stops, `ExecStartPost=` resumes once it is up).
//!
//! `drain` finds this host's Node (`--node`, else the host name), refuses when the Node's
//! endpoints are the last ready ones of some target, annotates the Node with
//! [`names::ANNOTATION_DRAIN`] and an expiry ([`names::ANNOTATION_DRAIN_EXPIRES`]), then waits
//! until every target that holds one of the Node's addresses shows them not ready in the
//! EndpointSlices endpoint-copier manages. `resume` removes both annotations.
//!
//! Owns: finding the Node, the two annotations (a JSON merge patch of those two keys only), the
//! refusal, the wait, and the pure decisions behind them ([`views`], [`still_ready`],
//! [`would_empty`], [`expiry`], [`parse_expiry`]). Leaves to others: marking the endpoints not
//! ready (the leader's engine, `daemon`), which pairs exist (`pairs::resolve`, fed the Services
//! as `inspect` feeds it), building the client (`client`) and exit codes (`main`).
//!
//! Every request is bounded by [`crate::apply::REQUEST_TIMEOUT`] and by the command's own
//! `--timeout`: a hook on a stopping service must never hold the stop.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use tokio::time::Instant;

use crate::config::Config;
use crate::names::{self, ServiceRef};

/// How long `drain` may take in all (`--timeout`, default 10 s): the drop-in runs it from
/// `ExecStop=`, inside the server unit's stop budget (90 s by default), and the leader marks a
/// drained Node's endpoints not ready within about a second.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a drain lasts unless `resume` ends it first (`--expires`, default 15 min): long
/// enough for an RKE2 upgrade or a reboot (the drop-in's `resume` ends it as soon as the server
/// is back), short enough that a host which never comes back does not stay drained for ever.
pub const DEFAULT_EXPIRES: Duration = Duration::from_secs(15 * 60);
/// How long `resume` may take in all (`--timeout`, default 30 s): run from `ExecStartPost=`, it
/// retries while the freshly started apiserver does not answer yet.
pub const DEFAULT_RESUME_TIMEOUT: Duration = Duration::from_secs(30);
/// Interval between two reads of the targets' EndpointSlices while `drain` waits.
const POLL: Duration = Duration::from_millis(250);
/// Pause before retrying a request that failed transiently (refused, 5xx, 429).
const RETRY: Duration = Duration::from_millis(500);

/// What `drain` was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainOptions {
    /// The Node to drain (`--node`); `None` means this host's (its host name).
    pub node: Option<String>,
    /// How long the whole command may take (`--timeout`, default [`DEFAULT_TIMEOUT`]).
    pub timeout: Duration,
    /// How long the drain lasts unless resumed (`--expires`, default [`DEFAULT_EXPIRES`]).
    pub expires: Duration,
}

/// What `resume` was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeOptions {
    /// The Node to resume (`--node`); `None` means this host's (its host name).
    pub node: Option<String>,
    /// How long the whole command may take (`--timeout`, default [`DEFAULT_RESUME_TIMEOUT`]).
    pub timeout: Duration,
    /// Remove only a drain with an expiry, as `drain` writes it (`--timed-only`, the drop-ins'
    /// choice); a drain set by hand without expiry stays.
    pub timed_only: bool,
}

/// The drain a Node's annotations describe, as written (expiry not judged: that is the
/// daemon's business, against its own clock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrainState {
    /// No [`names::ANNOTATION_DRAIN`] `"true"`.
    None,
    /// `"true"` without [`names::ANNOTATION_DRAIN_EXPIRES`]: set by hand, lasts until removed.
    Persistent,
    /// `"true"` with an expiry (the value as written).
    Timed(String),
}

/// The [`DrainState`] of a Node's annotations.
pub fn drain_state(annotations: Option<&BTreeMap<String, String>>) -> DrainState {
    let get = |k: &str| annotations.and_then(|a| a.get(k));
    match (
        get(names::ANNOTATION_DRAIN).map(String::as_str),
        get(names::ANNOTATION_DRAIN_EXPIRES),
    ) {
        (Some("true"), None) => DrainState::Persistent,
        (Some("true"), Some(t)) => DrainState::Timed(t.clone()),
        _ => DrainState::None,
    }
}

/// A target and some of its endpoint addresses (which ones depends on the context).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The target Service.
    pub target: ServiceRef,
    /// The addresses, sorted.
    pub addresses: Vec<IpAddr>,
}

impl fmt::Display for Held {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addresses: Vec<String> = self.addresses.iter().map(ToString::to_string).collect();
        write!(f, "{} ({})", self.target, addresses.join(", "))
    }
}

/// `a (x), b (y)` for an error message.
fn list(held: &[Held]) -> String {
    held.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why `drain` or `resume` did not finish.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No client could be built from the kubeconfig.
    #[error("cannot use the kubeconfig")]
    Client(#[source] crate::client::Error),
    /// `--node` was not given and the host name could not be read.
    #[error("cannot tell this host's Node (give it with --node)")]
    Hostname(#[source] crate::host::Error),
    /// No Node has that name (nor, for a host name, that `Hostname` address).
    #[error("no Node named '{node}' (give this host's Node name with --node)")]
    NodeNotFound {
        /// The name looked for.
        node: String,
    },
    /// A request failed for good, or kept failing until the deadline.
    #[error("failed to {what}")]
    Api {
        /// What we tried, naming the object.
        what: String,
        /// What the API said last.
        #[source]
        source: kube::Error,
    },
    /// The API server did not answer before the command's deadline.
    #[error("gave up after {secs} s: the API server did not answer while trying to {what}")]
    Deadline {
        /// What we tried, naming the object.
        what: String,
        /// The command's `--timeout`, in seconds.
        secs: u64,
    },
    /// Draining would leave a target without a ready endpoint; nothing was written.
    #[error(
        "refusing to drain Node '{node}': its endpoints are the last ready ones of {}; the VIP would be left without an apiserver (bring another one back first); the Node was not annotated",
        list(.targets)
    )]
    LastReady {
        /// The Node.
        node: String,
        /// Each target that only this Node keeps ready, with the Node's ready addresses there.
        targets: Vec<Held>,
    },
    /// The Node is annotated, but some target still shows its endpoints ready.
    #[error(
        "Node '{node}' is annotated for drain, but after {secs} s these targets still show its endpoints ready: {}; is the endpoint-copier daemon running (endpoint-copier status)?",
        list(.still)
    )]
    StillReady {
        /// The Node.
        node: String,
        /// The command's `--timeout`, in seconds.
        secs: u64,
        /// Each target that still shows one of the Node's addresses ready, with those addresses.
        still: Vec<Held>,
    },
}

/// What a successful `drain` did, for the line it prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drained {
    /// The Node.
    pub node: String,
    /// The Node's addresses, sorted.
    pub addresses: Vec<IpAddr>,
    /// The targets that held one of the Node's addresses, now all not ready there.
    pub targets: Vec<ServiceRef>,
    /// The annotation's expiry, RFC 3339; `None` when the Node was already drained without
    /// expiry (that drain is kept as it is).
    pub expires: Option<String>,
}

impl fmt::Display for Drained {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let until = match &self.expires {
            Some(t) => format!("until {t}"),
            None => "without expiry (set by hand, kept)".to_owned(),
        };
        if self.targets.is_empty() {
            let addresses: Vec<String> = self.addresses.iter().map(ToString::to_string).collect();
            write!(
                f,
                "Node {} annotated for drain {until}; no target holds its addresses ({}), nothing to wait for",
                self.node,
                addresses.join(", ")
            )
        } else {
            let targets: Vec<String> = self.targets.iter().map(ToString::to_string).collect();
            write!(
                f,
                "Node {} drained {until}: its endpoints are not ready in {}; `endpoint-copier resume` ends it",
                self.node,
                targets.join(", "),
            )
        }
    }
}

/// What a successful `resume` did, for the line it prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resumed {
    /// The Node.
    pub node: String,
    /// Whether there were drain annotations to remove.
    pub removed: bool,
    /// Whether a drain without expiry was left in place (`--timed-only`).
    pub kept: bool,
}

impl fmt::Display for Resumed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kept {
            write!(
                f,
                "Node {} keeps its drain without expiry (set by hand); remove it with `endpoint-copier resume --node {}`",
                self.node, self.node
            )
        } else if self.removed {
            write!(
                f,
                "Node {} resumed: drain annotations removed, the leader marks its endpoints ready again",
                self.node
            )
        } else {
            write!(f, "Node {} was not drained: nothing to remove", self.node)
        }
    }
}

/// Runs `endpoint-copier drain`: refuse, annotate, wait (see the module docs).
///
/// # Errors
/// [`Error::LastReady`] before anything is written; [`Error::StillReady`] when the targets do not
/// follow within `--timeout`; the others when the Node or the API cannot be reached.
pub async fn drain(config: &Config, options: &DrainOptions) -> Result<Drained, Error> {
    let deadline = Deadline::after(options.timeout);
    let client = connect(config).await?;
    let node = find_node(&client, options.node.as_deref(), &deadline).await?;
    let name = node.metadata.name.clone().unwrap_or_default();
    let addresses = node_addresses(&node);
    let targets = targets(&client, config, &deadline).await?;
    let slices = managed_slices(&client, &deadline).await?;
    let current = views(&targets, &slices, &addresses);
    let emptied = would_empty(&current);
    if !emptied.is_empty() {
        return Err(Error::LastReady {
            node: name,
            targets: emptied,
        });
    }
    // A drain set by hand without expiry is kept as it is: giving it one would let the hook's
    // `resume --timed-only` end a drain an operator meant to last.
    let expires = match drain_state(node.metadata.annotations.as_ref()) {
        DrainState::Persistent => None,
        DrainState::None | DrainState::Timed(_) => {
            let expires = expiry(Timestamp::now(), options.expires);
            annotate(&client, &name, Some(&expires), &deadline).await?;
            tracing::info!(node = %name, expires = %expires, "node annotated for drain");
            Some(expires)
        }
    };
    let held: Vec<ServiceRef> = current.iter().map(|v| v.target.clone()).collect();
    let mut still = still_ready(&current);
    while !still.is_empty() {
        if deadline.left() <= POLL {
            return Err(Error::StillReady {
                node: name,
                secs: deadline.secs(),
                still,
            });
        }
        tokio::time::sleep(POLL).await;
        match managed_slices(&client, &deadline).await {
            Ok(slices) => still = still_ready(&views(&targets, &slices, &addresses)),
            // The last reading stands: it is what the operator needs to hear.
            Err(Error::Deadline { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Drained {
        node: name,
        addresses: addresses.into_iter().collect(),
        targets: held,
        expires,
    })
}

/// Runs `endpoint-copier resume`: removes both drain annotations from the Node (a no-op when
/// there are none).
///
/// # Errors
/// When the Node or the API cannot be reached within `--timeout`.
pub async fn resume(config: &Config, options: &ResumeOptions) -> Result<Resumed, Error> {
    let deadline = Deadline::after(options.timeout);
    let client = connect(config).await?;
    let node = find_node(&client, options.node.as_deref(), &deadline).await?;
    let name = node.metadata.name.clone().unwrap_or_default();
    let present = node.metadata.annotations.as_ref().is_some_and(|a| {
        a.contains_key(names::ANNOTATION_DRAIN) || a.contains_key(names::ANNOTATION_DRAIN_EXPIRES)
    });
    let kept = options.timed_only
        && drain_state(node.metadata.annotations.as_ref()) == DrainState::Persistent;
    let removed = present && !kept;
    if removed {
        annotate(&client, &name, None, &deadline).await?;
        tracing::info!(node = %name, "node drain annotations removed");
    }
    Ok(Resumed {
        node: name,
        removed,
        kept,
    })
}

/// The command's end, and how to bound one request by it.
struct Deadline {
    /// When the command gives up.
    at: Instant,
    /// The whole budget, for messages.
    total: Duration,
}

impl Deadline {
    fn after(total: Duration) -> Deadline {
        Deadline {
            at: Instant::now() + total,
            total,
        }
    }

    fn left(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    fn secs(&self) -> u64 {
        self.total.as_secs()
    }

    /// Sends `request` until it succeeds, fails for good, or the deadline passes; each attempt
    /// is bounded by [`crate::apply::REQUEST_TIMEOUT`] and by what the deadline has left.
    async fn request<T, F, Fut>(&self, what: &str, mut request: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, kube::Error>>,
    {
        let mut last = None;
        loop {
            let until = self.at.min(Instant::now() + crate::apply::REQUEST_TIMEOUT);
            match tokio::time::timeout_at(until, request()).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) if !crate::client::classify(&e).is_retryable() => {
                    return Err(Error::Api {
                        what: what.to_owned(),
                        source: e,
                    });
                }
                // A refused connection right after the server started, a 429 or 5xx: retried.
                Ok(Err(e)) => last = Some(e),
                Err(_) => {}
            }
            if self.left() <= RETRY {
                return Err(match last {
                    Some(source) => Error::Api {
                        what: what.to_owned(),
                        source,
                    },
                    None => Error::Deadline {
                        what: what.to_owned(),
                        secs: self.secs(),
                    },
                });
            }
            tokio::time::sleep(RETRY).await;
        }
    }
}

/// The client, from the kubeconfig every command uses.
async fn connect(config: &Config) -> Result<Client, Error> {
    let path = crate::client::locate(&config.kubeconfig)
        .ok_or(Error::Client(crate::client::Error::NotFound))?;
    let loaded = crate::client::build(&path, config.allow_insecure_tls)
        .await
        .map_err(Error::Client)?;
    Ok(loaded.client)
}

/// The Node named `given`, else this host's: the Node named like the host, else the one whose
/// `Hostname` address or short name matches it.
async fn find_node(
    client: &Client,
    given: Option<&str>,
    deadline: &Deadline,
) -> Result<Node, Error> {
    let api: Api<Node> = Api::all(client.clone());
    let name = match given {
        Some(n) => n.to_owned(),
        None => crate::host::hostname().map_err(Error::Hostname)?,
    };
    let found = deadline
        .request(&format!("read Node {name}"), || api.get_opt(&name))
        .await?;
    if let Some(node) = found {
        return Ok(node);
    }
    if given.is_some() {
        return Err(Error::NodeNotFound { node: name });
    }
    // The kubelet may have registered the Node under another spelling of the host name (lower
    // case, without the domain): its Hostname address still says which host it is.
    let all = ListParams::default();
    let nodes = deadline.request("list Nodes", || api.list(&all)).await?;
    node_of_host(&nodes.items, &name)
        .cloned()
        .ok_or(Error::NodeNotFound { node: name })
}

/// The targets of every pair the daemon would run now: configured ones and, when annotations
/// are enabled, annotated Services (the same inputs `inspect` gives `pairs::resolve`).
async fn targets(
    client: &Client,
    config: &Config,
    deadline: &Deadline,
) -> Result<BTreeSet<ServiceRef>, Error> {
    let api: Api<Service> = Api::all(client.clone());
    let all = ListParams::default();
    let list = deadline.request("list Services", || api.list(&all)).await?;
    Ok(targets_of(config, &list.items))
}

/// Every EndpointSlice endpoint-copier manages, in every namespace.
async fn managed_slices(client: &Client, deadline: &Deadline) -> Result<Vec<EndpointSlice>, Error> {
    let api: Api<EndpointSlice> = Api::all(client.clone());
    let params = ListParams::default().labels(&format!(
        "{}={}",
        names::MANAGED_BY_LABEL,
        names::MANAGED_BY
    ));
    let what = format!(
        "list the EndpointSlices labelled {}={}",
        names::MANAGED_BY_LABEL,
        names::MANAGED_BY
    );
    Ok(deadline.request(&what, || api.list(&params)).await?.items)
}

/// Sets both drain annotations (`expires` given) or removes both (`None`), with a JSON merge
/// patch that touches nothing else on the Node.
async fn annotate(
    client: &Client,
    node: &str,
    expires: Option<&str>,
    deadline: &Deadline,
) -> Result<(), Error> {
    let api: Api<Node> = Api::all(client.clone());
    let patch = Patch::Merge(annotation_patch(expires));
    let params = PatchParams {
        field_manager: Some(names::FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    let what = match expires {
        Some(_) => format!("annotate Node {node} with {}", names::ANNOTATION_DRAIN),
        None => format!("remove the drain annotations from Node {node}"),
    };
    deadline
        .request(&what, || api.patch(node, &params, &patch))
        .await?;
    Ok(())
}

/// The merge patch: both annotations set, or both `null` (removed).
pub fn annotation_patch(expires: Option<&str>) -> serde_json::Value {
    let (drain, until) = match expires {
        Some(t) => (serde_json::json!("true"), serde_json::json!(t)),
        None => (serde_json::Value::Null, serde_json::Value::Null),
    };
    serde_json::json!({
        "metadata": {
            "annotations": {
                names::ANNOTATION_DRAIN: drain,
                names::ANNOTATION_DRAIN_EXPIRES: until,
            }
        }
    })
}

/// The value of [`names::ANNOTATION_DRAIN_EXPIRES`] for a drain starting at `now` and lasting
/// `expires`: RFC 3339 in UTC, whole seconds (`2025-01-31T12:00:00Z`).
pub fn expiry(now: Timestamp, expires: Duration) -> String {
    let secs = i64::try_from(expires.as_secs()).unwrap_or(i64::MAX);
    let at = now
        .as_second()
        .saturating_add(secs)
        .min(Timestamp::MAX.as_second());
    Timestamp::from_second(at)
        .unwrap_or(Timestamp::MAX)
        .to_string()
}

/// Reads a [`names::ANNOTATION_DRAIN_EXPIRES`] value (RFC 3339, any offset); `None` when it is
/// not a timestamp.
pub fn parse_expiry(value: &str) -> Option<Timestamp> {
    value.trim().parse().ok()
}

/// The Node's IP addresses (`status.addresses` of every type that holds an IP: InternalIP,
/// ExternalIP).
pub fn node_addresses(node: &Node) -> BTreeSet<IpAddr> {
    node.status
        .iter()
        .flat_map(|s| s.addresses.iter().flatten())
        .filter_map(|a| a.address.parse().ok())
        .collect()
}

/// Among `nodes`, the one this host (named `host`) runs: its `Hostname` address equals the host
/// name, or its name equals the host name in lower case or without its domain.
pub fn node_of_host<'a>(nodes: &'a [Node], host: &str) -> Option<&'a Node> {
    let lower = host.to_ascii_lowercase();
    let short = lower.split('.').next().unwrap_or(&lower).to_owned();
    let by_address = nodes.iter().find(|n| {
        n.status
            .iter()
            .flat_map(|s| s.addresses.iter().flatten())
            .any(|a| a.type_ == "Hostname" && a.address.eq_ignore_ascii_case(host))
    });
    by_address.or_else(|| {
        nodes.iter().find(|n| {
            n.metadata
                .name
                .as_deref()
                .is_some_and(|name| name == lower || name == short)
        })
    })
}

/// The targets of the pairs `config` and the annotated `services` give (refused pairs left out).
pub fn targets_of(config: &Config, services: &[Service]) -> BTreeSet<ServiceRef> {
    let configured: Vec<(ServiceRef, ServiceRef)> = config
        .pairs
        .iter()
        .map(|p| (p.source.clone(), p.target.clone()))
        .collect();
    let mut known: BTreeMap<ServiceRef, Service> = BTreeMap::new();
    for svc in services {
        if let Some(r) = crate::watch::service_ref(svc) {
            let annotated = svc
                .metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(names::ANNOTATION_ENABLED));
            if annotated || configured.iter().any(|(_, t)| *t == r) {
                known.insert(r, svc.clone());
            }
        }
    }
    crate::pairs::resolve(
        &configured,
        config.annotations.enabled,
        &config.annotations.allowed_sources,
        &known,
    )
    .pairs
    .into_iter()
    .map(|p| p.target)
    .collect()
}

/// One target as seen from one Node: which of the Node's addresses it shows ready or not, and
/// which other addresses it shows ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetView {
    /// The target Service.
    pub target: ServiceRef,
    /// The Node's addresses that some slice of the target shows ready (or with no readiness,
    /// which consumers take as ready).
    pub node_ready: BTreeSet<IpAddr>,
    /// The Node's addresses that the target holds, not ready in every slice.
    pub node_not_ready: BTreeSet<IpAddr>,
    /// Ready addresses of the target that are not the Node's.
    pub others_ready: BTreeSet<IpAddr>,
}

/// Per target in `targets` that holds at least one of the Node's `addresses`, what its
/// endpoint-copier-managed `slices` show (slices of other managers, or of Services that are not
/// targets, are ignored). Sorted by target.
pub fn views(
    targets: &BTreeSet<ServiceRef>,
    slices: &[EndpointSlice],
    addresses: &BTreeSet<IpAddr>,
) -> Vec<TargetView> {
    let mut by_target: BTreeMap<ServiceRef, TargetView> = BTreeMap::new();
    for slice in slices {
        let labels = slice.metadata.labels.as_ref();
        let label = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
        if label(names::MANAGED_BY_LABEL) != Some(names::MANAGED_BY) {
            continue;
        }
        let (Some(ns), Some(svc)) = (
            slice.metadata.namespace.as_deref(),
            label(names::SERVICE_NAME_LABEL),
        ) else {
            continue;
        };
        let Ok(target) = ServiceRef::new(ns, svc) else {
            continue;
        };
        if !targets.contains(&target) {
            continue;
        }
        let view = by_target
            .entry(target.clone())
            .or_insert_with(|| TargetView {
                target,
                node_ready: BTreeSet::new(),
                node_not_ready: BTreeSet::new(),
                others_ready: BTreeSet::new(),
            });
        for endpoint in &slice.endpoints {
            // An absent `ready` means ready to every consumer (kube-proxy, MetalLB).
            let ready = endpoint.conditions.as_ref().and_then(|c| c.ready) != Some(false);
            for address in endpoint.addresses.iter().filter_map(|a| a.parse().ok()) {
                match (addresses.contains(&address), ready) {
                    (true, true) => {
                        view.node_ready.insert(address);
                    }
                    (true, false) => {
                        view.node_not_ready.insert(address);
                    }
                    (false, true) => {
                        view.others_ready.insert(address);
                    }
                    (false, false) => {}
                }
            }
        }
    }
    by_target
        .into_values()
        .map(|mut v| {
            // Ready in one slice wins: the VIP may still send traffic there.
            v.node_not_ready = &v.node_not_ready - &v.node_ready;
            v
        })
        .filter(|v| !v.node_ready.is_empty() || !v.node_not_ready.is_empty())
        .collect()
}

/// The targets that still show one of the Node's addresses ready, with those addresses: what
/// `drain` waits to see empty.
pub fn still_ready(views: &[TargetView]) -> Vec<Held> {
    views
        .iter()
        .filter(|v| !v.node_ready.is_empty())
        .map(|v| Held {
            target: v.target.clone(),
            addresses: v.node_ready.iter().copied().collect(),
        })
        .collect()
}

/// The targets of which draining the Node would leave a family without a ready endpoint, with
/// the Node's ready addresses of those families: `drain` refuses when there is any. Per family,
/// as the daemon judges it: it keeps one ready endpoint in each family a target serves (a
/// dual-stack VIP whose every IPv6 endpoint is on this Node keeps it ready, so the drain could
/// never complete).
pub fn would_empty(views: &[TargetView]) -> Vec<Held> {
    views
        .iter()
        .filter_map(|v| {
            let addresses: Vec<IpAddr> = v
                .node_ready
                .iter()
                .filter(|a| !v.others_ready.iter().any(|o| o.is_ipv4() == a.is_ipv4()))
                .copied()
                .collect();
            (!addresses.is_empty()).then(|| Held {
                target: v.target.clone(),
                addresses,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeStatus};
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn set(addrs: &[&str]) -> BTreeSet<IpAddr> {
        addrs.iter().map(|a| ip(a)).collect()
    }

    fn target(s: &str) -> ServiceRef {
        s.parse().unwrap()
    }

    fn slice(
        ns: &str,
        service: &str,
        manager: &str,
        endpoints: &[(&str, Option<bool>)],
    ) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(format!("{service}-x")),
                labels: Some(
                    [
                        (names::SERVICE_NAME_LABEL.to_owned(), service.to_owned()),
                        (names::MANAGED_BY_LABEL.to_owned(), manager.to_owned()),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: endpoints
                .iter()
                .map(|(a, ready)| Endpoint {
                    addresses: vec![(*a).to_owned()],
                    conditions: Some(EndpointConditions {
                        ready: *ready,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            ports: None,
        }
    }

    fn node(name: &str, addresses: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            status: Some(NodeStatus {
                addresses: Some(
                    addresses
                        .iter()
                        .map(|(t, a)| NodeAddress {
                            type_: (*t).into(),
                            address: (*a).into(),
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    const US: &str = names::MANAGED_BY;

    #[test]
    fn a_target_showing_the_nodes_address_ready_is_still_ready() {
        let targets = BTreeSet::from([target("default/kubernetes-vip")]);
        let slices = [slice(
            "default",
            "kubernetes-vip",
            US,
            &[("198.51.100.1", Some(true)), ("198.51.100.2", Some(true))],
        )];
        let v = views(&targets, &slices, &set(&["198.51.100.1"]));
        assert_eq!(
            still_ready(&v),
            vec![Held {
                target: target("default/kubernetes-vip"),
                addresses: vec![ip("198.51.100.1")]
            }]
        );
        assert!(would_empty(&v).is_empty());
    }

    #[test]
    fn a_target_showing_the_nodes_address_not_ready_is_done() {
        let targets = BTreeSet::from([target("default/kubernetes-vip")]);
        let slices = [slice(
            "default",
            "kubernetes-vip",
            US,
            &[("198.51.100.1", Some(false)), ("198.51.100.2", Some(true))],
        )];
        let v = views(&targets, &slices, &set(&["198.51.100.1"]));
        assert_eq!(v.len(), 1);
        assert!(still_ready(&v).is_empty());
        assert_eq!(v[0].node_not_ready, set(&["198.51.100.1"]));
    }

    #[test]
    fn an_absent_ready_condition_counts_as_ready() {
        let targets = BTreeSet::from([target("default/kubernetes-vip")]);
        let slices = [slice(
            "default",
            "kubernetes-vip",
            US,
            &[("198.51.100.1", None)],
        )];
        let v = views(&targets, &slices, &set(&["198.51.100.1"]));
        assert_eq!(still_ready(&v).len(), 1);
    }

    #[test]
    fn ready_in_one_slice_wins_over_not_ready_in_another() {
        let targets = BTreeSet::from([target("default/kubernetes-vip")]);
        let slices = [
            slice(
                "default",
                "kubernetes-vip",
                US,
                &[("198.51.100.1", Some(false))],
            ),
            slice(
                "default",
                "kubernetes-vip",
                US,
                &[("198.51.100.1", Some(true))],
            ),
        ];
        let v = views(&targets, &slices, &set(&["198.51.100.1"]));
        assert_eq!(v[0].node_ready, set(&["198.51.100.1"]));
        assert!(v[0].node_not_ready.is_empty());
    }

    #[test]
    fn slices_of_other_managers_and_of_services_that_are_not_targets_are_ignored() {
        let targets = BTreeSet::from([target("default/kubernetes-vip")]);
        let slices = [
            slice(
                "default",
                "kubernetes-vip",
                "endpointslice-controller.k8s.io",
                &[("198.51.100.1", Some(true))],
            ),
            slice("default", "other", US, &[("198.51.100.1", Some(true))]),
            slice(
                "other",
                "kubernetes-vip",
                US,
                &[("198.51.100.1", Some(true))],
            ),
        ];
        assert!(views(&targets, &slices, &set(&["198.51.100.1"])).is_empty());
    }

    #[test]
    fn a_target_without_the_nodes_addresses_has_no_view() {
        let targets = BTreeSet::from([target("default/kubernetes-vip")]);
        let slices = [slice(
            "default",
            "kubernetes-vip",
            US,
            &[("198.51.100.2", Some(true))],
        )];
        assert!(views(&targets, &slices, &set(&["198.51.100.1"])).is_empty());
    }

    #[test]
    fn draining_the_only_ready_endpoint_would_empty_the_target() {
        let targets = BTreeSet::from([target("default/kubernetes-vip"), target("ns/db")]);
        let slices = [
            slice(
                "default",
                "kubernetes-vip",
                US,
                &[("198.51.100.1", Some(true)), ("198.51.100.2", Some(false))],
            ),
            slice(
                "ns",
                "db",
                US,
                &[("198.51.100.1", Some(true)), ("198.51.100.3", Some(true))],
            ),
        ];
        let v = views(&targets, &slices, &set(&["198.51.100.1"]));
        assert_eq!(
            would_empty(&v),
            vec![Held {
                target: target("default/kubernetes-vip"),
                addresses: vec![ip("198.51.100.1")]
            }]
        );
    }

    #[test]
    fn a_node_with_two_addresses_in_one_target_would_empty_it_alone() {
        let targets = BTreeSet::from([target("default/kubernetes-vip")]);
        let slices = [slice(
            "default",
            "kubernetes-vip",
            US,
            &[("198.51.100.1", Some(true)), ("2001:db8::1", Some(true))],
        )];
        let v = views(&targets, &slices, &set(&["198.51.100.1", "2001:db8::1"]));
        assert_eq!(would_empty(&v)[0].addresses.len(), 2);
    }

    #[test]
    fn a_drain_that_would_empty_one_family_of_a_dual_stack_target_is_refused() {
        let targets = BTreeSet::from([target("default/kubernetes-vip")]);
        let slices = [slice(
            "default",
            "kubernetes-vip",
            US,
            &[
                ("198.51.100.1", Some(true)),
                ("198.51.100.2", Some(true)),
                ("2001:db8::1", Some(true)),
            ],
        )];
        let v = views(&targets, &slices, &set(&["198.51.100.1", "2001:db8::1"]));
        assert_eq!(
            would_empty(&v),
            vec![Held {
                target: target("default/kubernetes-vip"),
                addresses: vec![ip("2001:db8::1")]
            }]
        );
    }

    #[test]
    fn an_already_drained_node_never_counts_as_emptying_a_target() {
        let targets = BTreeSet::from([target("default/kubernetes-vip")]);
        let slices = [slice(
            "default",
            "kubernetes-vip",
            US,
            &[("198.51.100.1", Some(false)), ("198.51.100.2", Some(false))],
        )];
        let v = views(&targets, &slices, &set(&["198.51.100.1"]));
        assert!(would_empty(&v).is_empty());
    }

    #[test]
    fn ipv6_addresses_compare_by_value_not_by_spelling() {
        let targets = BTreeSet::from([target("default/kubernetes-vip")]);
        let slices = [slice(
            "default",
            "kubernetes-vip",
            US,
            &[("2001:db8:0:0::1", Some(true))],
        )];
        let v = views(&targets, &slices, &set(&["2001:db8::1"]));
        assert_eq!(still_ready(&v).len(), 1);
    }

    #[test]
    fn expiry_is_rfc3339_utc_in_whole_seconds_and_parses_back() {
        let now: Timestamp = "2025-01-31T12:00:00.750Z".parse().unwrap();
        let s = expiry(now, Duration::from_secs(15 * 60));
        assert_eq!(s, "2025-01-31T12:15:00Z");
        assert_eq!(
            parse_expiry(&s),
            Some("2025-01-31T12:15:00Z".parse().unwrap())
        );
    }

    #[test]
    fn parse_expiry_accepts_offsets_and_refuses_what_is_not_a_timestamp() {
        assert_eq!(
            parse_expiry("2025-01-31T13:15:00+01:00"),
            Some("2025-01-31T12:15:00Z".parse().unwrap())
        );
        assert_eq!(parse_expiry("soon"), None);
        assert_eq!(parse_expiry(""), None);
    }

    #[test]
    fn a_huge_expiry_saturates_instead_of_failing() {
        let s = expiry(Timestamp::now(), Duration::from_secs(u64::MAX));
        assert!(parse_expiry(&s).is_some(), "{s}");
    }

    #[test]
    fn the_patch_sets_or_removes_exactly_the_two_annotations() {
        let set = annotation_patch(Some("2025-01-31T12:15:00Z"));
        assert_eq!(
            set,
            serde_json::json!({"metadata": {"annotations": {
                "endpoint-copier/drain": "true",
                "endpoint-copier/drain-expires": "2025-01-31T12:15:00Z"
            }}})
        );
        let removed = annotation_patch(None);
        assert_eq!(
            removed,
            serde_json::json!({"metadata": {"annotations": {
                "endpoint-copier/drain": null,
                "endpoint-copier/drain-expires": null
            }}})
        );
    }

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_drain_without_expiry_is_persistent_and_one_with_expiry_is_timed() {
        assert_eq!(drain_state(None), DrainState::None);
        assert_eq!(
            drain_state(Some(&annotations(&[(names::ANNOTATION_DRAIN, "true")]))),
            DrainState::Persistent
        );
        assert_eq!(
            drain_state(Some(&annotations(&[
                (names::ANNOTATION_DRAIN, "true"),
                (names::ANNOTATION_DRAIN_EXPIRES, "2025-01-31T12:15:00Z")
            ]))),
            DrainState::Timed("2025-01-31T12:15:00Z".into())
        );
        assert_eq!(
            drain_state(Some(&annotations(&[(names::ANNOTATION_DRAIN, "false")]))),
            DrainState::None
        );
    }

    #[test]
    fn node_addresses_are_its_ips_of_every_type() {
        let n = node(
            "cp-1",
            &[
                ("InternalIP", "198.51.100.1"),
                ("ExternalIP", "203.0.113.1"),
                ("InternalIP", "2001:db8::1"),
                ("Hostname", "cp-1"),
            ],
        );
        assert_eq!(
            node_addresses(&n),
            set(&["198.51.100.1", "203.0.113.1", "2001:db8::1"])
        );
    }

    #[test]
    fn the_hosts_node_is_found_by_its_hostname_address_then_by_a_lower_or_short_name() {
        let nodes = [
            node("a", &[("Hostname", "CP-9.example.com")]),
            node("cp-1", &[("Hostname", "cp-1")]),
        ];
        assert_eq!(
            node_of_host(&nodes, "cp-9.example.com").and_then(|n| n.metadata.name.as_deref()),
            Some("a")
        );
        assert_eq!(
            node_of_host(&nodes, "CP-1.edge.example.com").and_then(|n| n.metadata.name.as_deref()),
            Some("cp-1")
        );
        assert!(node_of_host(&nodes, "cp-2").is_none());
    }

    #[test]
    fn messages_name_the_node_and_the_targets() {
        let held = vec![Held {
            target: target("default/kubernetes-vip"),
            addresses: vec![ip("198.51.100.1")],
        }];
        let refused = Error::LastReady {
            node: "cp-1".into(),
            targets: held.clone(),
        }
        .to_string();
        assert!(
            refused.contains("'cp-1'")
                && refused.contains("default/kubernetes-vip (198.51.100.1)")
                && refused.contains("not annotated"),
            "{refused}"
        );
        let late = Error::StillReady {
            node: "cp-1".into(),
            secs: 10,
            still: held,
        }
        .to_string();
        assert!(
            late.contains("'cp-1'")
                && late.contains("10 s")
                && late.contains("default/kubernetes-vip (198.51.100.1)"),
            "{late}"
        );
    }
}
