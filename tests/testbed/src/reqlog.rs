//! The request log: one [`RequestRecord`] per HTTP request the test bed answered (or refused), in
//! arrival order, so tests can assert "no EndpointSlice writes while nothing changes" and "never two
//! writers".
//!
//! Owns [`Verb`] (the Kubernetes verb as the apiserver's RequestInfo computes it) and the log itself.
//! Computing the verb from a request is left to server.rs.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// A Kubernetes API verb, as kube-apiserver's RequestInfo resolver computes it from method and path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    /// GET on one object (also every non-resource GET such as /version or discovery).
    Get,
    /// GET on a collection.
    List,
    /// GET with `?watch=true` (or the legacy `/watch/` path prefix).
    Watch,
    /// POST.
    Create,
    /// PUT.
    Update,
    /// PATCH.
    Patch,
    /// DELETE on one object.
    Delete,
    /// DELETE on a collection.
    DeleteCollection,
}

impl Verb {
    /// The verb as RBAC and SelfSubjectAccessReview spell it ("get", "deletecollection", ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
            Verb::DeleteCollection => "deletecollection",
        }
    }

    /// Parses the RBAC spelling; None for verbs the test bed does not model.
    pub fn parse(s: &str) -> Option<Verb> {
        Some(match s {
            "get" => Verb::Get,
            "list" => Verb::List,
            "watch" => Verb::Watch,
            "create" => Verb::Create,
            "update" => Verb::Update,
            "patch" => Verb::Patch,
            "delete" => Verb::Delete,
            "deletecollection" => Verb::DeleteCollection,
            _ => return None,
        })
    }

    /// Whether the verb changes objects (create, update, patch, delete, deletecollection).
    pub fn is_write(self) -> bool {
        matches!(
            self,
            Verb::Create | Verb::Update | Verb::Patch | Verb::Delete | Verb::DeleteCollection
        )
    }
}

impl std::fmt::Display for Verb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One request as the test bed saw it.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    /// Position in the log, from 1, strictly increasing in arrival order.
    pub seq: u64,
    /// When the request arrived (after the TLS handshake and header parsing).
    pub at: Instant,
    /// Who sent it: certificate CN or token user; "anonymous" when unauthenticated.
    pub identity: String,
    /// The Kubernetes verb.
    pub verb: Verb,
    /// The resource's plural name ("endpointslices"); empty for non-resource paths such as /version.
    pub resource: String,
    /// The API group of the resource ("" for core and for non-resource paths).
    pub group: String,
    /// The namespace in the path, if any.
    pub namespace: Option<String>,
    /// The object name in the path, if any (for a create: None, as RequestInfo has it).
    pub name: Option<String>,
    /// The request path without the query string.
    pub path: String,
    /// The HTTP status code answered (200 for a watch that streamed; 0 if the request was never
    /// answered, e.g. hung by a partition).
    pub code: u16,
}

/// The ordered log. Records are appended when the response status is known.
#[derive(Debug, Default)]
pub struct RequestLog {
    next: AtomicU64,
    records: Mutex<Vec<RequestRecord>>,
}

impl RequestLog {
    /// Allocates the next sequence number (called when a request arrives, so order is arrival order).
    pub fn next_seq(&self) -> u64 {
        self.next.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Adds a record, or replaces the one with the same seq (a hung request is logged with code 0,
    /// then again with its real code if it is answered after a heal); the log stays sorted by seq
    /// even when responses finish out of order.
    pub fn push(&self, record: RequestRecord) {
        let mut records = self.lock();
        let pos = records.partition_point(|r| r.seq < record.seq);
        match records.get_mut(pos) {
            Some(existing) if existing.seq == record.seq => *existing = record,
            _ => records.insert(pos, record),
        }
    }

    /// A copy of the log, ordered by seq.
    pub fn snapshot(&self) -> Vec<RequestRecord> {
        self.lock().clone()
    }

    /// Empties the log (sequence numbers keep increasing).
    pub fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<RequestRecord>> {
        // A panic while holding this lock cannot leave the Vec inconsistent: keep serving.
        self.records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64) -> RequestRecord {
        RequestRecord {
            seq,
            at: Instant::now(),
            identity: "system:admin".into(),
            verb: Verb::Get,
            resource: "services".into(),
            group: String::new(),
            namespace: Some("default".into()),
            name: Some("kubernetes".into()),
            path: "/api/v1/namespaces/default/services/kubernetes".into(),
            code: 200,
        }
    }

    #[test]
    fn records_finishing_out_of_order_are_kept_in_arrival_order() {
        let log = RequestLog::default();
        let (a, b, c) = (log.next_seq(), log.next_seq(), log.next_seq());
        log.push(rec(c));
        log.push(rec(a));
        log.push(rec(b));
        let seqs: Vec<u64> = log.snapshot().iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3]);
    }

    #[test]
    fn verbs_round_trip_through_their_rbac_spelling() {
        for v in [
            Verb::Get,
            Verb::List,
            Verb::Watch,
            Verb::Create,
            Verb::Update,
            Verb::Patch,
            Verb::Delete,
            Verb::DeleteCollection,
        ] {
            assert_eq!(Verb::parse(v.as_str()), Some(v));
        }
        assert_eq!(Verb::parse("escalate"), None);
    }
}
