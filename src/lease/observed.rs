//! What the elector remembers between requests: the Lease as last read with the instant its
//! record was seen to change ([`Observed`]), the claim or renewal last sent ([`Sent`]), and the
//! resourceVersion ordering that drops stale watch events ([`is_newer`]). No I/O.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use tokio::time::Instant;

/// Whether a watch event's object is newer than what we hold. Kubernetes calls
/// resourceVersions opaque, but every etcd-backed apiserver uses the etcd revision; comparing
/// them only filters watch events older than a write response we already hold (which would
/// otherwise cost a needless 409). Getting it wrong never breaks safety: writes carry the
/// resourceVersion precondition.
pub(super) fn is_newer(candidate: Option<&str>, current: Option<&str>) -> bool {
    match (
        candidate.and_then(|c| c.parse::<u64>().ok()),
        current.and_then(|c| c.parse::<u64>().ok()),
    ) {
        (Some(c), Some(cur)) => c > cur,
        _ => candidate != current || candidate.is_none(),
    }
}

/// What we last read of the Lease and when its record last changed.
pub(super) struct Observed {
    /// `None`: the Lease does not exist.
    pub(super) lease: Option<Lease>,
    /// When we saw the record change (local monotonic clock).
    pub(super) at: Instant,
}

impl Observed {
    pub(super) fn spec(&self) -> Option<&LeaseSpec> {
        // A Lease without spec is a Lease without holder: the same as released.
        static EMPTY: LeaseSpec = LeaseSpec {
            acquire_time: None,
            holder_identity: None,
            lease_duration_seconds: None,
            lease_transitions: None,
            preferred_holder: None,
            renew_time: None,
            strategy: None,
        };
        self.lease
            .as_ref()
            .map(|l| l.spec.as_ref().unwrap_or(&EMPTY))
    }

    pub(super) fn resource_version(&self) -> Option<&str> {
        self.lease
            .as_ref()
            .and_then(|l| l.metadata.resource_version.as_deref())
    }
}

/// The last claim or renewal we sent, whatever became of it.
pub(super) struct Sent {
    /// The record as sent: timestamps truncated to the microsecond, so the server echoes it
    /// exactly (see `decide::claim`).
    pub(super) spec: LeaseSpec,
    /// When the request left (local monotonic clock): the claim is as fresh as this, no more.
    pub(super) at: Instant,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_events_older_than_the_lease_we_hold_are_ignored() {
        assert!(is_newer(Some("12"), Some("11")));
        assert!(!is_newer(Some("11"), Some("11")));
        assert!(!is_newer(Some("9"), Some("11")));
        // Opaque versions: anything different counts as news.
        assert!(is_newer(Some("b"), Some("a")));
        assert!(!is_newer(Some("a"), Some("a")));
        assert!(is_newer(Some("5"), None));
    }
}
