//! The work the engine runs as tasks, so that a slow API never stalls the watches: a pair's
//! write, the check for endpoint-copier-operator's leftover Endpoints, and the scan for slices of
//! pairs removed while this copy did not lead. Each returns a [`Done`] the engine matches to the
//! run it started (by [`TaskId`]); none decides what to write (`desired::step::plan_for` does).

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::ListParams;
use tokio::time::Instant;

use super::schedule::TaskId;
use crate::apply::{self, Applied};
use crate::desired::step::Step;
use crate::group::Group;
use crate::group::live::Gone;
use crate::group::member::forget;
use crate::lease::Fence;
use crate::metrics::Metrics;
use crate::names::{SERVICE_NAME_LABEL, ServiceRef};
use crate::pairs;
use k8s_openapi::api::coordination::v1::Lease;
use tracing::{debug, info};

/// What a task works on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Job {
    /// Writing the plan of this target.
    Write(ServiceRef),
    /// Looking for (and removing) endpoint-copier-operator's Endpoints named like this target.
    Legacy(ServiceRef),
    /// Listing this group's slices cluster-wide to find targets no pair claims.
    Scan,
}

/// A finished task.
#[derive(Debug)]
pub struct Done {
    /// The run it belongs to.
    pub task: TaskId,
    /// What it worked on.
    pub job: Job,
    /// How it went.
    pub outcome: Outcome,
}

/// How a task went.
#[derive(Debug)]
pub enum Outcome {
    /// A write: what it wrote, or why it stopped.
    Write {
        /// When the run started (for the sync latency histogram).
        started: Instant,
        /// The result.
        result: Result<Applied, WriteError>,
    },
    /// The legacy check: whether it deleted ECO's Endpoints.
    Legacy(Result<bool, apply::Error>),
    /// The scan: every target holding a slice of this group.
    Scan(Result<BTreeSet<ServiceRef>, kube::Error>),
}

/// Why a write did not (fully) happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Writing failed.
    #[error(transparent)]
    Apply(#[from] apply::Error),
    /// A plan that clears the target was not confirmed: a fresh read shows the target is still
    /// a pair (the caches lag behind). Nothing was deleted.
    #[error("not deleting the EndpointSlices of {target}: a fresh read shows it is still a pair")]
    StillWanted {
        /// The target.
        target: ServiceRef,
    },
    /// Someone wrote first (409, or an update of a slice that vanished): the plan was made from
    /// a cache older than the API. The slice was read again so the next plan starts from it.
    #[error("the cache was older than the API; re-planning from a fresh read")]
    Conflict {
        /// The refused write.
        source: apply::Error,
        /// The slice as the API has it now, when the read succeeded (boxed: a whole slice).
        fresh: Option<Box<Refreshed>>,
    },
    /// The fresh read that must confirm a plan clearing the target failed.
    #[error("failed to read Service {target} before deleting its EndpointSlices")]
    Confirm {
        /// The target.
        target: ServiceRef,
        /// What the API said.
        #[source]
        source: kube::Error,
    },
}

/// One EndpointSlice as a fresh read (not the cache) found it after a conflict.
#[derive(Debug, Clone)]
pub struct Refreshed {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The slice, or `None` when it is gone.
    pub slice: Option<EndpointSlice>,
}

/// Reads the slice a conflicting write was about (bounded by [`apply::REQUEST_TIMEOUT`]);
/// `None` when the error is not about one slice or the read failed (the re-list brings it).
async fn reread(api: &Api<EndpointSlice>, error: &apply::Error) -> Option<Box<Refreshed>> {
    let apply::Error::Api {
        namespace, slice, ..
    } = error
    else {
        return None;
    };
    let fresh = tokio::time::timeout(apply::REQUEST_TIMEOUT, api.get_opt(slice))
        .await
        .ok()?
        .ok()?;
    Some(Box::new(Refreshed {
        namespace: namespace.clone(),
        name: slice.clone(),
        slice: fresh,
    }))
}

/// What a write task needs to know about the pair besides its plan.
#[derive(Debug, Clone)]
pub struct WriteContext {
    /// The target.
    pub target: ServiceRef,
    /// Whether the target is a configured pair's.
    pub configured: bool,
    /// Whether annotated pairs are read.
    pub annotations_enabled: bool,
}

/// Runs `step` for the target in `cx`. A step that clears the target first re-reads the target
/// Service (a quorum read, not the cache) and deletes only when it is gone or no pair any more.
pub async fn write(
    client: kube::Client,
    cx: WriteContext,
    step: Step,
    fence: Fence,
    metrics: std::sync::Arc<Metrics>,
) -> Result<Applied, WriteError> {
    let target = &cx.target;
    if step.clears_target {
        let services: Api<Service> = Api::namespaced(client.clone(), &target.namespace);
        let fresh = tokio::time::timeout(apply::REQUEST_TIMEOUT, services.get_opt(&target.name))
            .await
            .map_err(|_| WriteError::Confirm {
                target: target.clone(),
                source: kube::Error::Service("the read timed out".into()),
            })?
            .map_err(|source| WriteError::Confirm {
                target: target.clone(),
                source,
            })?;
        if still_a_pair(fresh.as_ref(), cx.configured, cx.annotations_enabled) {
            return Err(WriteError::StillWanted {
                target: target.clone(),
            });
        }
    }
    let api: Api<EndpointSlice> = Api::namespaced(client, &target.namespace);
    match apply::apply(&api, &target.namespace, &step.plan, &fence, &metrics).await {
        Ok(applied) => Ok(applied),
        Err(source) if source.is_conflict() => {
            // Re-planning from the same cache would send the same stale resourceVersion again
            // (a watch that went silent never brings the newer object): read it now.
            let fresh = reread(&api, &source).await;
            Err(WriteError::Conflict { source, fresh })
        }
        Err(e) => Err(e.into()),
    }
}

/// Whether a target Service read fresh from the API is (still) a pair's: it exists and is
/// configured, or carries our annotations (valid or not: a refused pair is held, not cleared).
pub fn still_a_pair(fresh: Option<&Service>, configured: bool, annotations_enabled: bool) -> bool {
    let Some(svc) = fresh else {
        return false;
    };
    if svc.metadata.deletion_timestamp.is_some() {
        return false;
    }
    configured || (annotations_enabled && pairs::annotated_pair(svc).is_some())
}

/// Removes endpoint-copier-operator's leftover Endpoints of `target`, fenced.
pub async fn legacy(
    client: kube::Client,
    target: ServiceRef,
    fence: Fence,
) -> Result<bool, apply::Error> {
    let api: Api<Endpoints> = Api::namespaced(client, &target.namespace);
    apply::remove_eco_endpoints(&api, &target.namespace, &target.name, &fence).await
}

/// Lists (metadata only) every slice of this group in the cluster and returns their targets;
/// first removes the member Leases of copies `gone` for good (each only if unchanged since it
/// was judged gone: uid and resourceVersion preconditions), so replaced hosts do not linger.
pub async fn scan(
    client: kube::Client,
    group: Group,
    gone: Vec<Gone>,
) -> Result<BTreeSet<ServiceRef>, kube::Error> {
    for member in gone {
        let (Some(uid), Some(rv)) = (&member.uid, &member.resource_version) else {
            continue;
        };
        // The member namespace, or the legacy place of an older version's member.
        let leases: Api<Lease> = Api::namespaced(client.clone(), &member.namespace);
        match forget(&leases, &member.name, uid, rv).await {
            Ok(true) => {
                info!(identity = %member.identity, lease = %member.name, "removed the member Lease of a copy gone for good")
            }
            Ok(false) => {}
            // Tried again at the next scan; nothing depends on it.
            Err(e) => {
                debug!(lease = %member.name, error = %crate::error::chain(&e), "could not remove a member Lease")
            }
        }
    }
    let api: Api<EndpointSlice> = Api::all(client);
    let mut targets = BTreeSet::new();
    for selector in group.label_selectors() {
        let list = tokio::time::timeout(
            apply::REQUEST_TIMEOUT,
            api.list_metadata(&ListParams::default().labels(&selector)),
        )
        .await
        .map_err(|_| kube::Error::Service("listing our EndpointSlices timed out".into()))??;
        targets.extend(list.items.iter().filter_map(|s| {
            let namespace = s.metadata.namespace.clone()?;
            let name = s.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?.clone();
            // A newer version's slice (labels this one does not know) is no removed pair of ours.
            crate::desired::understands(s.metadata.labels.as_ref())
                .then_some(ServiceRef { namespace, name })
        }));
    }
    Ok(targets)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    use super::*;
    use crate::names::{ANNOTATION_ENABLED, ANNOTATION_SOURCE_NAME};

    fn svc(annotations: &[(&str, &str)]) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some("vip".into()),
                namespace: Some("team".into()),
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect::<BTreeMap<_, _>>(),
                ),
                ..ObjectMeta::default()
            },
            ..Service::default()
        }
    }

    #[test]
    fn a_fresh_read_keeps_configured_and_annotated_targets_and_clears_the_rest() {
        assert!(!still_a_pair(None, true, true), "gone: clear");
        assert!(
            still_a_pair(Some(&svc(&[])), true, false),
            "configured: keep"
        );
        let annotated = svc(&[(ANNOTATION_ENABLED, "true"), (ANNOTATION_SOURCE_NAME, "db")]);
        assert!(still_a_pair(Some(&annotated), false, true));
        assert!(
            !still_a_pair(Some(&annotated), false, false),
            "annotations off"
        );
        assert!(
            !still_a_pair(Some(&svc(&[])), false, true),
            "annotation removed"
        );
        let mut deleting = svc(&[]);
        deleting.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
        assert!(!still_a_pair(Some(&deleting), true, true), "being deleted");
    }
}
