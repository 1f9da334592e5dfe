//! Fault injection state: injected failures for the next N matching requests, added latency, and
//! per-identity network partitions.
//!
//! Owns only the state and its matching rules; server.rs applies them to requests (faults never
//! touch the Store). Closing watches, going down and compaction are driven from lib.rs.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Value, json};

use crate::reqlog::Verb;

/// Which requests a [`Failure`] applies to; `None` fields match anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Match {
    /// Only requests from this identity (certificate CN or token user).
    pub identity: Option<String>,
    /// Only requests with this verb.
    pub verb: Option<Verb>,
    /// Only requests on this resource (plural, e.g. "leases").
    pub resource: Option<String>,
}

impl Match {
    /// Matches every request.
    pub fn any() -> Match {
        Match::default()
    }

    /// Whether a request with these attributes matches.
    pub fn matches(&self, identity: &str, verb: Verb, resource: &str) -> bool {
        self.identity.as_deref().is_none_or(|i| i == identity)
            && self.verb.is_none_or(|v| v == verb)
            && self.resource.as_deref().is_none_or(|r| r == resource)
    }
}

/// An injected failure, answered with the Status body kube-apiserver sends for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// 409 Conflict ("the object has been modified"), as for a stale resourceVersion.
    Conflict,
    /// 429 TooManyRequests with a Retry-After header and details.retryAfterSeconds, as API
    /// Priority and Fairness answers.
    TooManyRequests {
        /// Seconds the client is told to wait.
        retry_after_secs: u32,
    },
    /// 500 InternalError.
    InternalError,
    /// 503 ServiceUnavailable.
    ServiceUnavailable,
    /// Any status code, with the reason kube-apiserver uses for it.
    Status(u16),
}

/// How a partitioned identity's traffic fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partition {
    /// Requests are never answered (until healed) and its open watches stop delivering.
    Hang,
    /// Connections are closed without an answer, as a reset would.
    Refuse,
}

/// The reason kube-apiserver puts in a Status for an HTTP code (apimachinery's StatusReason).
pub fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        406 => "NotAcceptable",
        409 => "Conflict",
        410 => "Expired",
        413 => "RequestEntityTooLarge",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "Unknown",
    }
}

/// What the request being failed is about (for the Status message and details).
#[derive(Debug, Clone, Default)]
pub struct Target<'a> {
    /// Plural resource.
    pub resource: &'a str,
    /// API group.
    pub group: &'a str,
    /// Object name, if the path has one.
    pub name: Option<&'a str>,
}

impl Failure {
    /// The HTTP code.
    pub fn code(&self) -> u16 {
        match self {
            Failure::Conflict => 409,
            Failure::TooManyRequests { .. } => 429,
            Failure::InternalError => 500,
            Failure::ServiceUnavailable => 503,
            Failure::Status(c) => *c,
        }
    }

    /// The Retry-After header value, for 429.
    pub fn retry_after(&self) -> Option<u32> {
        match self {
            Failure::TooManyRequests { retry_after_secs } => Some(*retry_after_secs),
            _ => None,
        }
    }

    /// The metav1.Status body.
    pub fn status(&self, t: &Target<'_>) -> Value {
        let qualified = if t.group.is_empty() {
            t.resource.to_string()
        } else {
            format!("{}.{}", t.resource, t.group)
        };
        let name = t.name.unwrap_or("");
        let code = self.code();
        let (message, details) = match self {
            // matches apimachinery errors.NewConflict + registry's OptimisticLockErrorMsg
            Failure::Conflict => (
                format!(
                    "Operation cannot be fulfilled on {qualified} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
                ),
                json!({"name": name, "group": t.group, "kind": t.resource}),
            ),
            // matches apiserver's tooManyRequests (filters/maxinflight.go, APF)
            Failure::TooManyRequests { retry_after_secs } => (
                "Too many requests, please try again later.".to_string(),
                json!({"retryAfterSeconds": retry_after_secs}),
            ),
            Failure::InternalError => (
                "Internal error occurred: injected by the test bed".to_string(),
                json!({"causes": [{"message": "injected by the test bed"}]}),
            ),
            Failure::ServiceUnavailable => (
                "the server is currently unable to handle the request".to_string(),
                json!({}),
            ),
            Failure::Status(c) => (
                format!("injected status {c} from the test bed"),
                json!({"name": name, "group": t.group, "kind": t.resource}),
            ),
        };
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason_for(code), "details": details, "code": code,
        })
    }
}

#[derive(Debug, Default)]
struct State {
    rules: Vec<(Match, usize, Failure)>,
    latency: Duration,
    partitions: HashMap<String, Partition>,
}

/// All fault state, shared by every connection.
#[derive(Debug)]
pub struct Faults {
    state: Mutex<State>,
    /// Bumped on every partition change so hung requests and paused watches re-check.
    changed: tokio::sync::watch::Sender<u64>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            state: Mutex::default(),
            changed: tokio::sync::watch::channel(0).0,
        }
    }
}

impl Faults {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Fails the next `n` requests matching `m` with `f` (rules are consumed in the order given).
    pub fn fail_next(&self, m: Match, n: usize, f: Failure) {
        if n > 0 {
            self.lock().rules.push((m, n, f));
        }
    }

    /// If a rule matches this request, consumes one of its count and returns the failure.
    pub fn take_failure(&self, identity: &str, verb: Verb, resource: &str) -> Option<Failure> {
        let mut s = self.lock();
        let i = s
            .rules
            .iter()
            .position(|(m, _, _)| m.matches(identity, verb, resource))?;
        let f = s.rules[i].2.clone();
        s.rules[i].1 -= 1;
        if s.rules[i].1 == 0 {
            s.rules.remove(i);
        }
        Some(f)
    }

    /// Sets the latency added before every response (zero by default).
    pub fn set_latency(&self, d: Duration) {
        self.lock().latency = d;
    }

    /// The latency added before every response.
    pub fn latency(&self) -> Duration {
        self.lock().latency
    }

    /// Partitions `identity`.
    pub fn partition(&self, identity: &str, mode: Partition) {
        self.lock().partitions.insert(identity.to_string(), mode);
        self.changed.send_modify(|g| *g += 1);
    }

    /// Heals `identity`'s partition.
    pub fn heal(&self, identity: &str) {
        self.lock().partitions.remove(identity);
        self.changed.send_modify(|g| *g += 1);
    }

    /// The partition currently applied to `identity`.
    pub fn partition_of(&self, identity: &str) -> Option<Partition> {
        self.lock().partitions.get(identity).copied()
    }

    /// A receiver that is notified whenever a partition is set or healed.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Waits until `identity` is no longer partitioned with [`Partition::Hang`].
    pub async fn wait_unhung(&self, identity: &str) {
        let mut rx = self.changed.subscribe();
        while self.partition_of(identity) == Some(Partition::Hang) {
            if rx.changed().await.is_err() {
                // The sender lives as long as `self`; unreachable, but never spin.
                std::future::pending::<()>().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_next_counts_only_matching_requests() {
        let f = Faults::default();
        let m = Match {
            identity: Some("node-1".into()),
            verb: Some(Verb::Update),
            resource: Some("leases".into()),
        };
        f.fail_next(m, 2, Failure::Conflict);
        assert_eq!(f.take_failure("node-2", Verb::Update, "leases"), None);
        assert_eq!(f.take_failure("node-1", Verb::Get, "leases"), None);
        assert_eq!(
            f.take_failure("node-1", Verb::Update, "leases"),
            Some(Failure::Conflict)
        );
        assert_eq!(
            f.take_failure("node-1", Verb::Update, "leases"),
            Some(Failure::Conflict)
        );
        assert_eq!(f.take_failure("node-1", Verb::Update, "leases"), None);
    }

    #[test]
    fn too_many_requests_status_carries_retry_after_seconds() {
        let s = Failure::TooManyRequests {
            retry_after_secs: 3,
        }
        .status(&Target::default());
        assert_eq!(s["code"], 429);
        assert_eq!(s["reason"], "TooManyRequests");
        assert_eq!(s["details"]["retryAfterSeconds"], 3);
    }
}
