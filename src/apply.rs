//! Runs a [`Plan`]: the only code that writes EndpointSlices (and removes ECO's leftover Endpoints).
//!
//! Deciding *what* to write is `desired`'s job; deciding *when* (coalescing, backoff) is
//! `daemon`'s. This module writes in the order that keeps the VIP reachable — creates, then
//! updates, then deletes — checks the leadership fence immediately before every request, bounds
//! every request with a timeout, and carries optimistic-concurrency preconditions on every write
//! (resourceVersion on updates, uid + resourceVersion on deletes, AlreadyExists on creates) so a
//! stale cache or a deposed leader can never overwrite newer state.
//!
//! We write with create/replace/delete rather than server-side apply: the plan already holds the
//! whole object, and a replace carrying the resourceVersion we planned against is a compare-and-
//! swap that server-side apply (force) would not give us.

use std::time::Duration;

use k8s_openapi::api::core::v1::Endpoints;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};

use crate::desired::Plan;
use crate::lease::{Fence, NotLeader};
use crate::metrics::Metrics;
use crate::names;

/// How long one write may take before we give up on it and retry later. Long enough for a busy
/// apiserver, short enough that a hung one does not stall the pair past a Lease renew deadline.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The kind of write, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// POST of a new slice.
    Create,
    /// PUT of an existing slice, with its resourceVersion.
    Update,
    /// DELETE with uid and resourceVersion preconditions.
    Delete,
}

impl Op {
    /// Lowercase name, as used in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Update => "update",
            Op::Delete => "delete",
        }
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a plan was not (fully) applied. Writes done before the failure stay done: every step of a
/// plan leaves the target valid, and the next plan starts from what is there.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Our Lease term ended (or never began): nothing more is written.
    #[error("not writing EndpointSlice '{namespace}/{slice}': not the leader")]
    NotLeader {
        /// Namespace of the slice we were about to write.
        namespace: String,
        /// The slice we were about to write.
        slice: String,
        /// The fence's reason.
        #[source]
        source: NotLeader,
    },
    /// The API server refused or failed the write.
    #[error("failed to {op} EndpointSlice '{namespace}/{slice}'")]
    Api {
        /// What we tried.
        op: Op,
        /// Namespace of the slice.
        namespace: String,
        /// The slice.
        slice: String,
        /// What the API said.
        #[source]
        source: kube::Error,
    },
    /// The API server did not answer in time ([`REQUEST_TIMEOUT`], or less when our Lease term
    /// ended sooner).
    #[error("timed out trying to {op} EndpointSlice '{namespace}/{slice}' after {} ms", after.as_millis())]
    Timeout {
        /// What we tried.
        op: Op,
        /// Namespace of the slice.
        namespace: String,
        /// The slice.
        slice: String,
        /// How long we waited.
        after: Duration,
    },
    /// Reading or deleting ECO's leftover core/v1 Endpoints failed.
    #[error("failed to remove endpoint-copier-operator's Endpoints '{namespace}/{name}'")]
    Legacy {
        /// Namespace of the Endpoints.
        namespace: String,
        /// Name of the Endpoints.
        name: String,
        /// What the API said.
        #[source]
        source: kube::Error,
    },
}

impl Error {
    /// The HTTP status code of an API error, for metrics.
    pub fn code(&self) -> Option<u16> {
        match self {
            Error::Api {
                source: kube::Error::Api(s),
                ..
            }
            | Error::Legacy {
                source: kube::Error::Api(s),
                ..
            } => Some(s.code),
            _ => None,
        }
    }

    /// Someone else changed the target since we read it (409 on any write, or 404 on an update
    /// of a slice that vanished): re-plan from fresher state, soon.
    ///
    /// A create refused with AlreadyExists is not one of these: it is usually a name taken by a
    /// slice of another Service, which re-planning does not change. It is retried on the normal
    /// backoff and reported (warn, Event), so a person can see the clash instead of a silent loop.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Api { op, source: kube::Error::Api(s), .. }
            if (s.code == 409 && s.reason != "AlreadyExists") || (s.code == 404 && *op == Op::Update))
    }

    /// Whether this heals by itself: conflicts, 429, 5xx, timeouts and transport errors. These are
    /// logged at warn. The others (403 Forbidden, 422 Invalid) need a person and are logged at
    /// error — yet `daemon` retries them too, on the capped backoff: it never gives up on the VIP,
    /// and an RBAC fix or a Service edit makes the next attempt succeed without a restart.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::NotLeader { .. } => false,
            Error::Timeout { .. } => true,
            Error::Api { source, .. } | Error::Legacy { source, .. } => match source {
                kube::Error::Api(s) => {
                    s.code == 409 || s.code == 429 || s.code >= 500 || s.code == 404
                }
                _ => true,
            },
        }
    }

    /// The server's Retry-After, when it sent one (429 from API Priority and Fairness).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Api {
                source: kube::Error::Api(s),
                ..
            } => s
                .details
                .as_ref()
                .map(|d| d.retry_after_seconds)
                .filter(|s| *s > 0)
                .map(|s| Duration::from_secs(u64::from(s))),
            _ => None,
        }
    }
}

/// What a plan did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// Slices created.
    pub created: usize,
    /// Slices updated.
    pub updated: usize,
    /// Slices deleted.
    pub deleted: usize,
}

impl Applied {
    /// Total writes.
    pub fn writes(&self) -> usize {
        self.created + self.updated + self.deleted
    }
}

/// Writes `plan` to the target namespace of `api`: creates, then updates, then deletes.
///
/// # Errors
/// The first write that failed ([`Error`]); the writes before it are done.
pub async fn apply(
    api: &Api<EndpointSlice>,
    namespace: &str,
    plan: &Plan,
    fence: &Fence,
    metrics: &Metrics,
) -> Result<Applied, Error> {
    let mut done = Applied::default();
    let pp = PostParams {
        dry_run: false,
        field_manager: Some(names::FIELD_MANAGER.to_owned()),
    };
    // Order matters: new and updated slices first, deletions last, so that at every instant the
    // target holds at least the endpoints it will hold at the end (no VIP gap, even when an
    // addressType change forces a delete + create).
    for slice in &plan.creates {
        let name = slice_name(slice);
        write(
            Op::Create,
            namespace,
            &name,
            fence,
            metrics,
            api.create(&pp, slice),
        )
        .await?;
        done.created += 1;
    }
    for slice in &plan.updates {
        let name = slice_name(slice);
        write(
            Op::Update,
            namespace,
            &name,
            fence,
            metrics,
            api.replace(&name, &pp, slice),
        )
        .await?;
        done.updated += 1;
    }
    for del in &plan.deletes {
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: del.uid.clone(),
                resource_version: del.resource_version.clone(),
            }),
            ..DeleteParams::default()
        };
        match write(
            Op::Delete,
            namespace,
            &del.name,
            fence,
            metrics,
            api.delete(&del.name, &dp),
        )
        .await
        {
            // Already gone is what we wanted.
            Err(Error::Api {
                source: kube::Error::Api(s),
                ..
            }) if s.code == 404 => {}
            Err(e) => return Err(e),
            Ok(_) => done.deleted += 1,
        }
    }
    Ok(done)
}

/// One fenced, bounded write.
async fn write<T>(
    op: Op,
    namespace: &str,
    slice: &str,
    fence: &Fence,
    metrics: &Metrics,
    request: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, Error> {
    // The fence is checked here, after every earlier write of the plan returned, and not once per
    // plan: a plan can take long enough for our term to end in the middle of it.
    fence.check().map_err(|source| Error::NotLeader {
        namespace: namespace.to_owned(),
        slice: slice.to_owned(),
        source,
    })?;
    // Bounded by our term as well: past the fence the write must not be in flight any more.
    let limit = fence
        .remaining()
        .map_or(REQUEST_TIMEOUT, |r| r.min(REQUEST_TIMEOUT));
    let result = match tokio::time::timeout(limit, request).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(Error::Api {
            op,
            namespace: namespace.to_owned(),
            slice: slice.to_owned(),
            source,
        }),
        Err(_) => Err(Error::Timeout {
            op,
            namespace: namespace.to_owned(),
            slice: slice.to_owned(),
            after: limit,
        }),
    };
    match &result {
        Ok(_) => metrics.record_write(op.as_str(), "ok"),
        Err(e) if e.is_conflict() => metrics.record_write(op.as_str(), "conflict"),
        Err(e) => {
            metrics.record_write(op.as_str(), "error");
            if let Some(code) = e.code() {
                metrics.record_api_error(code);
            }
        }
    }
    result
}

fn slice_name(slice: &EndpointSlice) -> String {
    slice.metadata.name.clone().unwrap_or_default()
}

/// Removes endpoint-copier-operator v0.2's core/v1 Endpoints named like the target, if it is
/// there and carries ECO's managed-by label, and nothing else. Left in place, the EndpointSlice
/// mirroring controller would keep copying its stale addresses into an extra slice of the target.
///
/// Returns whether it deleted something.
///
/// # Errors
/// [`Error::NotLeader`] when our term ended, [`Error::Legacy`] when the read or delete failed.
pub async fn remove_eco_endpoints(
    api: &Api<Endpoints>,
    namespace: &str,
    name: &str,
    fence: &Fence,
) -> Result<bool, Error> {
    let legacy = |source| Error::Legacy {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        source,
    };
    let found = match tokio::time::timeout(REQUEST_TIMEOUT, api.get_opt(name)).await {
        Ok(r) => r.map_err(legacy)?,
        Err(_) => {
            return Err(Error::Timeout {
                op: Op::Delete,
                namespace: namespace.to_owned(),
                slice: name.to_owned(),
                after: REQUEST_TIMEOUT,
            });
        }
    };
    let Some(endpoints) = found else {
        return Ok(false);
    };
    let is_eco = endpoints
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(names::MANAGED_BY_LABEL))
        .is_some_and(|v| v == names::ECO_MANAGED_BY);
    if !is_eco {
        return Ok(false);
    }
    fence.check().map_err(|source| Error::NotLeader {
        namespace: namespace.to_owned(),
        slice: name.to_owned(),
        source,
    })?;
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: endpoints.metadata.uid.clone(),
            resource_version: endpoints.metadata.resource_version.clone(),
        }),
        ..DeleteParams::default()
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, api.delete(name, &dp)).await {
        Ok(Ok(_)) => Ok(true),
        Ok(Err(kube::Error::Api(s))) if s.code == 404 => Ok(false),
        Ok(Err(source)) => Err(legacy(source)),
        Err(_) => Err(Error::Timeout {
            op: Op::Delete,
            namespace: namespace.to_owned(),
            slice: name.to_owned(),
            after: REQUEST_TIMEOUT,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(op: Op, code: u16, retry_after: u32) -> Error {
        let mut status = kube::core::Status::failure("x", "y").with_code(code);
        if retry_after > 0 {
            // Deserialized, as the client gets it: StatusDetails has no Default.
            let details =
                serde_json::from_value(serde_json::json!({ "retryAfterSeconds": retry_after }))
                    .unwrap();
            status = status.with_details(details);
        }
        Error::Api {
            op,
            namespace: "default".into(),
            slice: "kubernetes-vip".into(),
            source: kube::Error::Api(status.boxed()),
        }
    }

    #[test]
    fn conflicts_and_vanished_updates_mean_replan() {
        assert!(api_error(Op::Update, 409, 0).is_conflict());
        assert!(api_error(Op::Create, 409, 0).is_conflict());
        assert!(api_error(Op::Update, 404, 0).is_conflict());
        assert!(!api_error(Op::Create, 422, 0).is_conflict());
    }

    #[test]
    fn a_name_already_taken_is_reported_not_silently_replanned() {
        let status = kube::core::Status::failure(
            "endpointslices.discovery.k8s.io \"vip-abc\" already exists",
            "AlreadyExists",
        )
        .with_code(409);
        let e = Error::Api {
            op: Op::Create,
            namespace: "default".into(),
            slice: "vip-abc".into(),
            source: kube::Error::Api(status.boxed()),
        };
        assert!(!e.is_conflict());
        assert!(e.is_transient(), "still retried on the backoff");
    }

    #[test]
    fn throttling_and_server_errors_are_transient_but_invalid_is_not() {
        assert!(api_error(Op::Create, 429, 3).is_transient());
        assert!(api_error(Op::Create, 503, 0).is_transient());
        assert!(!api_error(Op::Create, 422, 0).is_transient());
        assert!(!api_error(Op::Create, 403, 0).is_transient());
    }

    #[test]
    fn retry_after_comes_from_the_status_details() {
        assert_eq!(
            api_error(Op::Create, 429, 3).retry_after(),
            Some(Duration::from_secs(3))
        );
        assert_eq!(api_error(Op::Create, 503, 0).retry_after(), None);
    }

    #[test]
    fn error_messages_name_the_slice_and_the_operation() {
        let e = api_error(Op::Update, 409, 0);
        assert_eq!(
            e.to_string(),
            "failed to update EndpointSlice 'default/kubernetes-vip'"
        );
    }
}
