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
//! refusal, the wait, and the pure decisions behind them (`targets.rs`: [`views`], [`still_ready`],
//! [`would_empty`], [`expiry`], [`parse_expiry`]). Leaves to others: marking the endpoints not
//! ready (the leader's engine, `daemon`), which pairs exist (`pairs::resolve`, fed the Services
//! as `inspect` feeds it), building the client (`client`) and exit codes (`main`).
//!
//! Every request is bounded by [`crate::apply::REQUEST_TIMEOUT`] and by the command's own
//! `--timeout`: a hook on a stopping service must never hold the stop.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use tokio::time::Instant;

use crate::client::transport::Connector;
use crate::config::Config;
use crate::names::{self, ServiceRef};
use crate::nodes::NodeFacts;

mod targets;
use targets::list;
pub use targets::{
    Held, TargetView, Timed, annotation_patch, drained_addresses, expiry, node_addresses,
    node_of_host, parse_expiry, still_ready, targets_of, views, would_empty,
};

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
    /// The daemon does not watch the Node (`[nodes] selector`): a drain of it would never be
    /// seen; nothing was written.
    #[error(
        "refusing to drain Node '{node}': endpoint-copier does not watch it ([nodes] selector = \"{selector}\"), so its drain would never take effect; the Node was not annotated"
    )]
    NotWatched {
        /// The Node.
        node: String,
        /// The selector, as configured (`""`: every Node).
        selector: String,
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
/// [`Error::LastReady`] and [`Error::NotWatched`] before anything is written;
/// [`Error::StillReady`] when the targets do not
/// follow within `--timeout`; the others when the Node or the API cannot be reached.
pub async fn drain(config: &Config, options: &DrainOptions) -> Result<Drained, Error> {
    drain_with(config, options, &Connector::Tcp).await
}

/// [`drain`], its client's connections made by `connector` (the demo's in-memory network in
/// `examples/demo/`; [`Connector::Tcp`] on a host).
///
/// # Errors
/// As [`drain`].
pub async fn drain_with(
    config: &Config,
    options: &DrainOptions,
    connector: &Connector,
) -> Result<Drained, Error> {
    let deadline = Deadline::after(options.timeout);
    let client = connect(config, connector).await?;
    let node = find_node(&client, options.node.as_deref(), &deadline).await?;
    let name = node.metadata.name.clone().unwrap_or_default();
    // The addresses the leader takes out: the Node's by the daemon's rule over the Nodes it
    // watches (an address another Node claims too is nobody's), so the wait below waits for
    // nothing the leader will not do.
    let watched = watched_nodes(&client, config, &deadline).await?;
    if !watched
        .iter()
        .any(|n| n.metadata.name.as_deref() == Some(name.as_str()))
    {
        return Err(Error::NotWatched {
            node: name,
            selector: config.nodes.selector.clone().unwrap_or_default(),
        });
    }
    let addresses = drained_addresses(&watched, &name);
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
    let lasting = NodeFacts::from_node(&node).is_some_and(|f| f.has_lasting_drain());
    let expires = if lasting {
        None
    } else {
        let timed = Timed {
            expires: expiry(Timestamp::now(), options.expires),
            secs: options.expires.as_secs(),
        };
        annotate(&client, &name, Some(&timed), &deadline).await?;
        tracing::info!(node = %name, expires = %timed.expires, "node annotated for drain");
        Some(timed.expires)
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
    resume_with(config, options, &Connector::Tcp).await
}

/// [`resume`], its client's connections made by `connector` (as [`drain_with`]).
///
/// # Errors
/// As [`resume`].
pub async fn resume_with(
    config: &Config,
    options: &ResumeOptions,
    connector: &Connector,
) -> Result<Resumed, Error> {
    let deadline = Deadline::after(options.timeout);
    let client = connect(config, connector).await?;
    let node = find_node(&client, options.node.as_deref(), &deadline).await?;
    let name = node.metadata.name.clone().unwrap_or_default();
    let facts = NodeFacts::from_node(&node);
    let present = facts.as_ref().is_some_and(NodeFacts::has_drain_annotations);
    let kept = options.timed_only && facts.as_ref().is_some_and(NodeFacts::has_lasting_drain);
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

/// The client, from the kubeconfig every command uses, connecting through `connector`.
async fn connect(config: &Config, connector: &Connector) -> Result<Client, Error> {
    let path = crate::client::locate(&config.kubeconfig)
        .ok_or(Error::Client(crate::client::Error::NotFound))?;
    let loaded = crate::client::build_with(&path, config.allow_insecure_tls, connector)
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

/// The Nodes the daemon watches (`[nodes] selector`).
async fn watched_nodes(
    client: &Client,
    config: &Config,
    deadline: &Deadline,
) -> Result<Vec<Node>, Error> {
    let api: Api<Node> = Api::all(client.clone());
    let params = match config.nodes.selector.as_deref() {
        Some(s) => ListParams::default().labels(s),
        None => ListParams::default(),
    };
    Ok(deadline
        .request("list the watched Nodes", || api.list(&params))
        .await?
        .items)
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

/// Sets the drain annotations (`timed` given) or removes them (`None`), with a JSON merge
/// patch that touches nothing else on the Node.
async fn annotate(
    client: &Client,
    node: &str,
    timed: Option<&Timed>,
    deadline: &Deadline,
) -> Result<(), Error> {
    let api: Api<Node> = Api::all(client.clone());
    let patch = Patch::Merge(annotation_patch(timed));
    let params = PatchParams {
        field_manager: Some(names::FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    let what = match timed {
        Some(_) => format!("annotate Node {node} with {}", names::ANNOTATION_DRAIN),
        None => format!("remove the drain annotations from Node {node}"),
    };
    deadline
        .request(&what, || api.patch(node, &params, &patch))
        .await?;
    Ok(())
}
