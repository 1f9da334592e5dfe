//! Runs a [`Plan`]: the only code that writes EndpointSlices (and removes ECO's leftover Endpoints).
//!
//! Deciding *what* to write is `desired`'s job; deciding *when* (coalescing, backoff) is
//! `daemon`'s. This module writes in the order that keeps the VIP reachable — creates, then
//! updates, then deletes — checks the leadership fence immediately before every request, bounds
//! every request by `min(REQUEST_TIMEOUT, what the fence has left)` so none is sent after our term
//! ended, and carries optimistic-concurrency preconditions on every write (resourceVersion on
//! updates, uid + resourceVersion on deletes, AlreadyExists on creates), which is what keeps a
//! request that reaches the server late — or a deposed leader that was paused — from overwriting
//! newer state. What each of these guarantees is in `docs/development/lease.md`.
//!
//! We write with create/replace/delete rather than server-side apply: the plan already holds the
//! whole object, and a replace carrying the resourceVersion we planned against is a compare-and-
//! swap that server-side apply (force) would not give us.

use std::time::Duration;

use tokio::time::Instant;

use k8s_openapi::api::core::v1::Endpoints;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};

use crate::client::{ErrorClass, classify};
use crate::desired::Plan;
use crate::lease::{Fence, NotLeader};
use crate::metrics::Metrics;
use crate::names;

pub use crate::client::REQUEST_TIMEOUT;

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
    /// Reading or deleting ECO's leftover core/v1 Endpoints did not complete in time
    /// ([`REQUEST_TIMEOUT`], or less when our Lease term ended sooner).
    #[error("timed out removing endpoint-copier-operator's Endpoints '{namespace}/{name}' after {} ms", after.as_millis())]
    LegacyTimeout {
        /// Namespace of the Endpoints.
        namespace: String,
        /// Name of the Endpoints.
        name: String,
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
        match self {
            Error::Api { op, source, .. } => match (classify(source), source) {
                (ErrorClass::Conflict, kube::Error::Api(s)) => s.reason != "AlreadyExists",
                (_, kube::Error::Api(s)) => s.code == 404 && *op == Op::Update,
                _ => false,
            },
            _ => false,
        }
    }

    /// Whether this heals by itself: what `client::classify` calls retryable (conflicts, 401
    /// after the daemon reloads the kubeconfig, 429, 5xx, transport errors), timeouts, and —
    /// on top of the shared class — a 404 on an update or delete: for an EndpointSlice we
    /// planned against, it means the object is gone and the next plan starts from what is there
    /// (the shared class calls 404 fatal because for a create it means the namespace is
    /// missing). These are logged at warn. The others (403 Forbidden, 422 Invalid, a create's
    /// 404) need a person and are logged at error — yet `daemon` retries them too, on the
    /// capped backoff: it never gives up on the VIP, and an RBAC fix or a Service edit makes the
    /// next attempt succeed without a restart.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::NotLeader { .. } => false,
            Error::Timeout { .. } | Error::LegacyTimeout { .. } => true,
            Error::Api { op, source, .. } => {
                classify(source).is_retryable()
                    || (*op != Op::Create && matches!(source, kube::Error::Api(s) if s.code == 404))
            }
            Error::Legacy { source, .. } => classify(source).is_retryable(),
        }
    }

    /// The server's Retry-After, when it sent one (429 from API Priority and Fairness).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Api { source, .. } | Error::Legacy { source, .. } => {
                crate::client::retry_after(source)
            }
            _ => None,
        }
    }
}

/// The latest instant at which a write in flight now can still be waiting for its answer, while
/// the fence is open: every request is bounded by `min(REQUEST_TIMEOUT, fence.remaining())` when
/// it is sent, and the fence only moves forward while we lead. A daemon that abandons writes at
/// shutdown keeps the Lease (lets the elector renew) until this instant before releasing it.
/// It bounds how long *we* wait, not when the server acts on a request it already received:
/// that is what the preconditions are for (see `docs/development/lease.md`).
pub fn outstanding_until(fence: &Fence) -> Instant {
    Instant::now() + fence.remaining().min(REQUEST_TIMEOUT)
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
    let left = fence.check().map_err(|source| Error::NotLeader {
        namespace: namespace.to_owned(),
        slice: slice.to_owned(),
        source,
    })?;
    // Bounded by our term as well: past the fence we no longer wait for an answer, and a request
    // not yet sent (a slow connect) is dropped unsent.
    let limit = left.min(REQUEST_TIMEOUT);
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
    // Both requests are bounded by what the fence has left, as every write is: the read decides
    // the delete, and a delete sent after our term would race the next leader's view.
    let bound = || {
        fence
            .check()
            .map(|left| left.min(REQUEST_TIMEOUT))
            .map_err(|source| Error::NotLeader {
                namespace: namespace.to_owned(),
                slice: name.to_owned(),
                source,
            })
    };
    let timed_out = |after| Error::LegacyTimeout {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        after,
    };
    let limit = bound()?;
    let found = match tokio::time::timeout(limit, api.get_opt(name)).await {
        Ok(r) => r.map_err(legacy)?,
        Err(_) => return Err(timed_out(limit)),
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
    let limit = bound()?;
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: endpoints.metadata.uid.clone(),
            resource_version: endpoints.metadata.resource_version.clone(),
        }),
        ..DeleteParams::default()
    };
    match tokio::time::timeout(limit, api.delete(name, &dp)).await {
        Ok(Ok(_)) => Ok(true),
        // Already gone (a 404 on a delete means what we wanted happened).
        Ok(Err(kube::Error::Api(s))) if s.code == 404 => Ok(false),
        Ok(Err(source)) => Err(legacy(source)),
        Err(_) => Err(timed_out(limit)),
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
    fn every_caller_shares_one_class_and_only_apply_reads_404_as_gone() {
        // 401: reload the credentials and retry, as the Lease does.
        assert!(api_error(Op::Update, 401, 0).is_transient());
        // An update or delete of a slice that vanished: re-plan.
        assert!(api_error(Op::Update, 404, 0).is_transient());
        assert!(api_error(Op::Delete, 404, 0).is_transient());
        // A create's 404 is a missing namespace: a person must act.
        assert!(!api_error(Op::Create, 404, 0).is_transient());
        assert!(!api_error(Op::Create, 404, 0).is_conflict());
        assert!(!api_error(Op::Delete, 404, 0).is_conflict());
    }

    /// A client whose API server answers a GET of Endpoints with ECO's leftover object (when
    /// `answer_get`) and never answers anything else.
    fn hung_client(answer_get: bool) -> kube::Client {
        let service = tower::service_fn(
            move |request: http::Request<kube::client::Body>| async move {
                if answer_get && request.method() == http::Method::GET {
                    let body = serde_json::json!({
                        "apiVersion": "v1",
                        "kind": "Endpoints",
                        "metadata": {
                            "name": "kubernetes-vip",
                            "namespace": "default",
                            "uid": "u-1",
                            "resourceVersion": "5",
                            "labels": { names::MANAGED_BY_LABEL: names::ECO_MANAGED_BY },
                        },
                    });
                    let response = http::Response::builder()
                        .status(200)
                        .header("content-type", "application/json")
                        .body(http_body_util::Full::new(bytes::Bytes::from(
                            body.to_string(),
                        )))
                        .unwrap();
                    return Ok::<_, std::convert::Infallible>(response);
                }
                futures::future::pending().await
            },
        );
        kube::Client::new(service, "default")
    }

    async fn remove_with_fence_of(client: kube::Client, left: Duration) -> (Error, Duration) {
        let api = Api::<Endpoints>::namespaced(client, "default");
        let fence = Fence::open_for("kube-system/endpoint-copier", left);
        let started = Instant::now();
        let error = remove_eco_endpoints(&api, "default", "kubernetes-vip", &fence)
            .await
            .unwrap_err();
        (error, started.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn the_legacy_delete_on_a_hung_server_gives_up_when_the_fence_closes() {
        let (error, took) =
            remove_with_fence_of(hung_client(true), Duration::from_millis(200)).await;
        assert!(matches!(error, Error::LegacyTimeout { .. }), "{error:?}");
        assert!(took <= Duration::from_millis(200), "{took:?}");
        assert!(error.is_transient());
        assert_eq!(
            error.to_string(),
            format!(
                "timed out removing endpoint-copier-operator's Endpoints 'default/kubernetes-vip' after {} ms",
                took.as_millis()
            )
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_read_before_the_legacy_delete_is_bounded_by_the_fence_too() {
        let (error, took) =
            remove_with_fence_of(hung_client(false), Duration::from_millis(200)).await;
        assert!(matches!(error, Error::LegacyTimeout { .. }), "{error:?}");
        assert!(took <= Duration::from_millis(200), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_fence_sends_no_legacy_request_at_all() {
        let (error, took) = remove_with_fence_of(hung_client(false), Duration::ZERO).await;
        assert!(matches!(error, Error::NotLeader { .. }), "{error:?}");
        assert_eq!(took, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slice_write_on_a_hung_server_gives_up_when_the_fence_closes() {
        let api = Api::<EndpointSlice>::namespaced(hung_client(false), "default");
        let fence = Fence::open_for("kube-system/endpoint-copier", Duration::from_millis(300));
        let mut slice = EndpointSlice::default();
        slice.metadata.name = Some("kubernetes-vip".into());
        let plan = Plan {
            creates: vec![slice],
            ..Plan::default()
        };
        let started = Instant::now();
        let error = apply(&api, "default", &plan, &fence, &Metrics::new())
            .await
            .unwrap_err();
        assert!(matches!(error, Error::Timeout { .. }), "{error:?}");
        assert!(started.elapsed() <= Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn writes_in_flight_are_outstanding_until_the_fence_or_the_timeout_whichever_is_first() {
        let short = Fence::open_for("kube-system/endpoint-copier", Duration::from_secs(2));
        let until = outstanding_until(&short);
        assert_eq!(until, Instant::now() + Duration::from_secs(2));
        let long = Fence::open_for("kube-system/endpoint-copier", Duration::from_secs(60));
        assert_eq!(outstanding_until(&long), Instant::now() + REQUEST_TIMEOUT);
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
