//! `check`'s probe of the remote sources: for each distinct kubeconfig, whether it loads and its
//! cluster answers; for each source, whether its credentials may read the Service and its
//! EndpointSlices, whether the Service exists, and how many ready endpoints its slices hold.
//!
//! Every request is bounded by [`REQUEST_TIMEOUT`], so a black-holed remote costs `check` a few
//! seconds, never a hang; once a cluster fails to answer, its remaining sources are not asked.
//! Printing the result is `inspect`'s job; the rights are asked through
//! `inspect::permissions::ask`, as for the local cluster.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::ListParams;
use serde::Serialize;

use super::permissions::{self, Feature, Wanted};
use crate::client::{self, Loaded};
use crate::error::chain;
use crate::names;
use crate::remote::cluster::by_kubeconfig;
use crate::remote::state::from_request;
use crate::remote::{RemoteSource, Trouble};

/// The longest one request to a remote may take (an access review, a get, a list): long enough
/// for a slow remote across a WAN, short enough that `check` answers at the console.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What `check` found about one remote kubeconfig and the sources that name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reach {
    /// The kubeconfig file.
    pub kubeconfig: PathBuf,
    /// Its API server URL, once it loaded.
    pub server: Option<String>,
    /// What keeps the whole cluster from being read (missing or unusable kubeconfig, no answer,
    /// refused credentials), one sentence each naming the file.
    pub problems: Vec<String>,
    /// Each source that names this kubeconfig, sorted.
    pub sources: Vec<SourceReach>,
}

/// What `check` found about one remote source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceReach {
    /// The source (in JSON: `{ "service": "ns/name", "kubeconfig": "/path" }`).
    #[serde(serialize_with = "remote_source")]
    pub source: RemoteSource,
    /// Whether the Service exists there; `None` when it could not be asked.
    pub service_exists: Option<bool>,
    /// Ready endpoints across its EndpointSlices; `None` when they could not be listed.
    pub ready_endpoints: Option<usize>,
    /// What is wrong with this source alone (a missing right, a missing Service).
    pub problems: Vec<String>,
}

/// Serializes a [`RemoteSource`] as its two config keys.
fn remote_source<S: serde::Serializer>(source: &RemoteSource, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeStruct;
    let mut st = s.serialize_struct("RemoteSource", 2)?;
    st.serialize_field("service", &source.service.to_string())?;
    st.serialize_field("kubeconfig", &source.kubeconfig)?;
    st.end()
}

/// Probes every distinct kubeconfig of `sources` and every source through it, one kubeconfig
/// after another, in path order.
pub async fn check(sources: &BTreeSet<RemoteSource>, allow_insecure_tls: bool) -> Vec<Reach> {
    let mut out = Vec::new();
    for (kubeconfig, of_cluster) in by_kubeconfig(sources) {
        out.push(reach(kubeconfig, of_cluster, allow_insecure_tls).await);
    }
    out
}

/// Why a cluster's remaining sources are not asked.
enum Abort {
    /// No answer, or not one that says anything about a source.
    Unreachable(String),
    /// The credentials are refused.
    Unauthorized(String),
}

/// Probes one kubeconfig and its sources.
async fn reach(kubeconfig: PathBuf, sources: Vec<RemoteSource>, allow_insecure_tls: bool) -> Reach {
    let mut reach = Reach {
        kubeconfig: kubeconfig.clone(),
        server: None,
        problems: Vec::new(),
        sources: sources
            .into_iter()
            .map(|source| SourceReach {
                source,
                service_exists: None,
                ready_endpoints: None,
                problems: Vec::new(),
            })
            .collect(),
    };
    let path = kubeconfig.display();
    if !kubeconfig.exists() {
        reach.problems.push(format!(
            "kubeconfig {path} does not exist: its remote sources cannot be read"
        ));
        return reach;
    }
    // Building reads only local files, but the exec and auth-provider plugins kube supports could
    // run anything: bounded as well.
    let loaded = match tokio::time::timeout(
        REQUEST_TIMEOUT,
        client::build(&kubeconfig, allow_insecure_tls),
    )
    .await
    {
        Ok(Ok(loaded)) => loaded,
        Ok(Err(e)) => {
            reach
                .problems
                .push(format!("kubeconfig {path} cannot be used: {}", chain(&e)));
            return reach;
        }
        Err(_) => {
            reach.problems.push(format!(
                "kubeconfig {path} did not load within {} s",
                REQUEST_TIMEOUT.as_secs()
            ));
            return reach;
        }
    };
    reach.server = Some(loaded.server.clone());
    for source in &mut reach.sources {
        match probe(&loaded, source).await {
            Ok(()) => {}
            Err(Abort::Unreachable(message)) => {
                reach.problems.push(format!(
                    "the cluster of {path} ({}) cannot be reached: {message}",
                    loaded.server
                ));
                break;
            }
            Err(Abort::Unauthorized(message)) => {
                reach.problems.push(format!(
                    "the cluster of {path} ({}) refuses the credentials of the kubeconfig (401 Unauthorized): {message}",
                    loaded.server
                ));
                break;
            }
        }
    }
    reach
}

/// Runs `request` within [`REQUEST_TIMEOUT`]; a failure that says nothing about the source ends
/// the cluster's probe, a 403 comes back as `Ok(Err(message))`.
async fn bounded<T>(
    request: impl Future<Output = Result<T, kube::Error>>,
) -> Result<Result<T, String>, Abort> {
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(Ok(v)) => Ok(Ok(v)),
        Ok(Err(e)) => forbidden_or_abort(&e).map(Err),
        Err(_) => Err(Abort::Unreachable(format!(
            "no answer within {} s",
            REQUEST_TIMEOUT.as_secs()
        ))),
    }
}

/// The message of a 403, or why the cluster's probe ends.
fn forbidden_or_abort(error: &kube::Error) -> Result<String, Abort> {
    match from_request(error) {
        Trouble::Forbidden(message) => Ok(message),
        Trouble::Unauthorized(message) => Err(Abort::Unauthorized(message)),
        Trouble::Unreachable(message) => Err(Abort::Unreachable(message)),
        other => Err(Abort::Unreachable(other.to_string())),
    }
}

/// The rights a remote source needs in its namespace: what its two watches request.
fn wanted(namespace: &str) -> Vec<Wanted> {
    let mut out = Vec::new();
    for (group, resource, verbs) in [
        ("", "services", &["get", "list", "watch"][..]),
        ("discovery.k8s.io", "endpointslices", &["list", "watch"][..]),
    ] {
        for &verb in verbs {
            out.push(Wanted {
                verb,
                group,
                resource,
                namespace: Some(namespace.to_owned()),
                name: None,
                features: vec![Feature::Mirroring],
            });
        }
    }
    out
}

/// Probes one source through `loaded`, filling `reach`.
async fn probe(loaded: &Loaded, reach: &mut SourceReach) -> Result<(), Abort> {
    let client = &loaded.client;
    let path = loaded.path.display();
    let service = reach.source.service.clone();
    let ns = service.namespace.as_str();
    // One review at a time, each within its own deadline: a remote that hangs costs one timeout.
    let mut answers = Vec::new();
    for w in wanted(ns) {
        match tokio::time::timeout(REQUEST_TIMEOUT, permissions::ask(client, vec![w])).await {
            Ok(Ok(answer)) => answers.extend(answer),
            Ok(Err(super::Error::Api { source, .. })) => {
                let message = forbidden_or_abort(&source)?;
                reach.problems.push(format!(
                    "the kubeconfig {path} may not ask its own rights (SelfSubjectAccessReview): {message}"
                ));
                break;
            }
            Ok(Err(e)) => return Err(Abort::Unreachable(chain(&e))),
            Err(_) => {
                return Err(Abort::Unreachable(format!(
                    "no answer within {} s",
                    REQUEST_TIMEOUT.as_secs()
                )));
            }
        }
    }
    let mut denied = false;
    for p in answers.iter().filter(|p| !p.allowed) {
        denied = true;
        let group = if p.group.is_empty() {
            String::new()
        } else {
            format!(".{}", p.group)
        };
        reach.problems.push(format!(
            "missing permission: {} {}{group} in namespace {ns} for the kubeconfig {path}: the remote source {} cannot be read",
            p.verb, p.resource, reach.source
        ));
    }

    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    match bounded(services.get_opt(&service.name)).await? {
        Ok(found) => {
            reach.service_exists = Some(found.is_some());
            if found.is_none() {
                reach.problems.push(format!(
                    "Service {service} does not exist in the cluster of {path}"
                ));
            }
        }
        Err(message) => {
            if !denied {
                reach.problems.push(format!(
                    "the kubeconfig {path} may not read Service {service}: {message}"
                ));
            }
        }
    }

    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let selector = format!("{}={}", names::SERVICE_NAME_LABEL, service.name);
    match bounded(slices.list(&ListParams::default().labels(&selector))).await? {
        Ok(list) => reach.ready_endpoints = Some(crate::desired::ready_endpoints(&list.items)),
        Err(message) => {
            if !denied {
                reach.problems.push(format!(
                    "the kubeconfig {path} may not list the EndpointSlices of Service {service}: {message}"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remote_source_asks_for_exactly_what_its_watches_request() {
        let w = wanted("app");
        let asked: Vec<(&str, &str)> = w.iter().map(|w| (w.verb, w.resource)).collect();
        assert_eq!(
            asked,
            [
                ("get", "services"),
                ("list", "services"),
                ("watch", "services"),
                ("list", "endpointslices"),
                ("watch", "endpointslices"),
            ]
        );
        assert!(w.iter().all(|w| w.namespace.as_deref() == Some("app")));
    }

    #[tokio::test]
    async fn a_missing_kubeconfig_is_a_problem_naming_the_file() {
        let source = RemoteSource {
            kubeconfig: "/nonexistent/remote.yaml".into(),
            service: "app/db".parse().unwrap(),
        };
        let reaches = check(&[source.clone()].into(), false).await;
        assert_eq!(reaches.len(), 1);
        assert_eq!(reaches[0].server, None);
        assert!(
            reaches[0].problems[0].contains("/nonexistent/remote.yaml"),
            "{:?}",
            reaches[0].problems
        );
        assert_eq!(reaches[0].sources[0].source, source);
        assert_eq!(reaches[0].sources[0].service_exists, None);
    }
}
