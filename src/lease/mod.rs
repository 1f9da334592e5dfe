//! Leader election on a `coordination.k8s.io` Lease, front door: the [`Settings`] the daemon
//! fills in, the [`Leadership`] it follows, the [`Error`] that ends a campaign and how a failed
//! Lease request is classified (transient, lost race, fatal); [`Elector`], [`Fence`] and
//! [`NotLeader`] are re-exported from the files that own them.
//!
//! Files: `decide.rs` is the pure core (Lease as read, identity, now → decision, and the records
//! we write); `elector.rs` is the I/O loop around it that reads, watches, claims, renews and
//! releases the Lease, publishes [`Leadership`] on a watch channel and keeps the [`Fence`];
//! `observed.rs` holds the records the loop remembers (the Lease as last read, the write last
//! sent) and the resourceVersion ordering of watch events; `requests.rs` the elector's requests
//! (read, claim or renew, release); `fence.rs` is the fence itself.
//!
//! What it leaves to others: the settings come from `config` (validated there: duration > renew
//! deadline > 1.2 × retry period ≥ 1 s, renew deadline + retry period < duration) and the
//! identity from `host`; `daemon` starts and stops the writers on [`Leadership`] transitions and
//! must stop them *before* it cancels the token given to [`Elector::run`]; `apply` calls
//! [`Fence::check`] right before every write and bounds the request by its answer. Services and
//! EndpointSlices are never touched here.
//!
//! The protocol and the reasons behind each rule are in `docs/development/lease.md`.

pub mod decide;
mod elector;
mod fence;
mod observed;
mod requests;
pub mod runtime;

use std::time::Duration;

use crate::client::{ErrorClass, classify};
use decide::Timing;
pub use elector::Elector;
pub use fence::{Fence, NotLeader};
pub use runtime::RuntimeLock;

/// Where the Lease is, who we are, and the three timings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Namespace of the Lease (default: `kube-system`).
    pub namespace: String,
    /// Name of the Lease (default: `endpoint-copier`).
    pub name: String,
    /// Our holder identity, unique per host (default: the host name).
    pub identity: String,
    /// How long a claim is valid without renewal (default: 15 s).
    pub duration: Duration,
    /// How long the leader may go without a successful renewal before it stops writing
    /// (default: 10 s).
    pub renew_deadline: Duration,
    /// How often the leader renews; also the cap of the retry backoff (default: 2 s).
    pub retry_period: Duration,
}

impl Settings {
    /// The timings, as the pure core takes them.
    pub fn timing(&self) -> Timing {
        Timing {
            duration: self.duration,
            renew_deadline: self.renew_deadline,
            retry_period: self.retry_period,
        }
    }

    /// `namespace/name` of the Lease, for logs and errors.
    pub fn lease_ref(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Who writes, as published on the watch channel returned by [`Elector::new`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Leadership {
    /// The Lease has not been read yet.
    Starting,
    /// We hold the Lease: start the writers (after a fresh list and plan).
    Leader,
    /// Someone else holds the Lease, or nobody does and we are about to try: stop the writers.
    Follower {
        /// The current holder as last read (`None`: unknown, released, or we just stepped down).
        holder: Option<String>,
    },
}

/// Why the elector stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request did not complete in time (transient: retried).
    #[error("request to {verb} Lease {lease} timed out after {after_ms} ms")]
    Timeout {
        /// `get`, `create` or `update`.
        verb: &'static str,
        /// `namespace/name` of the Lease.
        lease: String,
        /// The timeout, in milliseconds.
        after_ms: u128,
    },
    /// The API answered with an error or could not be reached.
    #[error("failed to {verb} Lease {lease}")]
    Request {
        /// `get`, `create` or `update`.
        verb: &'static str,
        /// `namespace/name` of the Lease.
        lease: String,
        /// The client error (its Status says why: Forbidden, NotFound namespace, ...).
        #[source]
        source: kube::Error,
    },
}

impl Error {
    /// The shared class of the client error; a timeout is transient.
    fn class(&self) -> ErrorClass {
        match self {
            Error::Timeout { .. } => ErrorClass::Transient,
            Error::Request { source, .. } => classify(source),
        }
    }

    /// Worth retrying: everything [`crate::client::classify`] does not call fatal — timeouts,
    /// connection failures, 401, 409, 429 and 5xx. A 401 is retried because RKE2 rotates the
    /// client certificate: the daemon re-reads the kubeconfig on the first 401
    /// (`client::Reloadable`) and the next attempt carries the new one; if the file never gets
    /// better, the renew deadline passes and we step down, which is the right outcome too.
    /// Everything else (403, 404 on create because the namespace is missing, 422) needs a person.
    pub fn is_transient(&self) -> bool {
        self.class().is_retryable()
    }

    /// Someone else wrote first: our resourceVersion is stale (409), the Lease we meant to create
    /// exists (409 AlreadyExists), or the Lease we meant to update was deleted (404 on update:
    /// fatal in the shared class, but for a Lease we hold a resourceVersion of, it can only mean
    /// the object went away under us). Not a failure: re-read and decide again.
    fn is_lost_race(&self) -> bool {
        match self {
            Error::Request { verb, source, .. } => {
                classify(source) == ErrorClass::Conflict
                    || (*verb == "update" && matches!(source, kube::Error::Api(s) if s.code == 404))
            }
            Error::Timeout { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names;

    fn api_error(code: u16, reason: &str) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            reason: reason.to_owned(),
            ..kube::core::Status::default()
        }))
    }

    fn request(verb: &'static str, code: u16) -> Error {
        Error::Request {
            verb,
            lease: "kube-system/endpoint-copier".into(),
            source: api_error(code, "x"),
        }
    }

    #[test]
    fn conflicts_and_updates_of_a_deleted_lease_are_lost_races_not_failures() {
        assert!(request("update", 409).is_lost_race());
        assert!(request("create", 409).is_lost_race());
        assert!(request("update", 404).is_lost_race());
        assert!(!request("create", 404).is_lost_race());
        assert!(!request("update", 503).is_lost_race());
    }

    #[test]
    fn only_retryable_errors_are_transient() {
        for code in [401, 408, 409, 429, 500, 503, 504] {
            assert!(request("update", code).is_transient(), "{code}");
        }
        for code in [400, 403, 404, 422] {
            assert!(!request("create", code).is_transient(), "{code}");
        }
        let timeout = Error::Timeout {
            verb: "get",
            lease: "kube-system/endpoint-copier".into(),
            after_ms: 10,
        };
        assert!(timeout.is_transient());
        assert_eq!(
            timeout.to_string(),
            "request to get Lease kube-system/endpoint-copier timed out after 10 ms"
        );
    }

    #[test]
    fn settings_name_the_lease_and_carry_the_timings() {
        let settings = Settings {
            namespace: names::LEASE_NAMESPACE.into(),
            name: names::LEASE_NAME.into(),
            identity: "node-1".into(),
            duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        };
        assert_eq!(settings.lease_ref(), "kube-system/endpoint-copier");
        assert_eq!(settings.timing().renew_deadline, Duration::from_secs(10));
    }
}
