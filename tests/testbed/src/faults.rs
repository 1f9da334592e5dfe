//! Fault injection state: injected failures for the next N matching requests or until healed,
//! lost replies (the request is committed, the answer never sent), added latency, and per-identity
//! network partitions.
//!
//! Owns only the state and its matching rules; server.rs applies them to requests (faults never
//! touch the Store). Closing watches, going down and compaction are driven from lib.rs.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Value, json};

use crate::reqlog::Verb;

/// Which requests a fault applies to; `None` fields match anything.
///
/// Build one with [`Match::any`] and the builder methods
/// (`Match::any().verb(Verb::List).resource("endpointslices").cluster_wide()`), or as a struct
/// literal ending in `..Match::any()` so that new fields do not break it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Match {
    /// Only requests from this identity (certificate CN or token user).
    pub identity: Option<String>,
    /// Only requests with this verb.
    pub verb: Option<Verb>,
    /// Only requests on this resource (plural, e.g. "leases").
    pub resource: Option<String>,
    /// Only requests in this scope: cluster-wide or one namespace (see [`Scope`]).
    pub scope: Option<Scope>,
}

/// The scope a request addresses, as the namespace segment of its path says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// No namespace in the path: a list or watch of a namespaced resource across all namespaces
    /// (`/apis/discovery.k8s.io/v1/endpointslices`), or any request on a cluster-scoped resource.
    Cluster,
    /// `/namespaces/<name>/...` requests in this namespace.
    Namespace(String),
}

impl Match {
    /// Matches every request.
    pub fn any() -> Match {
        Match::default()
    }

    /// Only requests from `identity`.
    pub fn identity(self, identity: impl Into<String>) -> Match {
        Match {
            identity: Some(identity.into()),
            ..self
        }
    }

    /// Only requests with `verb`.
    pub fn verb(self, verb: Verb) -> Match {
        Match {
            verb: Some(verb),
            ..self
        }
    }

    /// Only requests on `resource` (plural, e.g. "endpointslices").
    pub fn resource(self, resource: impl Into<String>) -> Match {
        Match {
            resource: Some(resource.into()),
            ..self
        }
    }

    /// Only requests without a namespace in their path ([`Scope::Cluster`]).
    pub fn cluster_wide(self) -> Match {
        Match {
            scope: Some(Scope::Cluster),
            ..self
        }
    }

    /// Only requests in namespace `ns` ([`Scope::Namespace`]).
    pub fn namespace(self, ns: impl Into<String>) -> Match {
        Match {
            scope: Some(Scope::Namespace(ns.into())),
            ..self
        }
    }

    /// Whether a request with these attributes matches (`namespace`: the namespace segment of
    /// its path, None when it has none).
    pub fn matches(
        &self,
        identity: &str,
        verb: Verb,
        resource: &str,
        namespace: Option<&str>,
    ) -> bool {
        self.identity.as_deref().is_none_or(|i| i == identity)
            && self.verb.is_none_or(|v| v == verb)
            && self.resource.as_deref().is_none_or(|r| r == resource)
            && self.scope.as_ref().is_none_or(|s| match s {
                Scope::Cluster => namespace.is_none(),
                Scope::Namespace(ns) => namespace == Some(ns.as_str()),
            })
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
    /// Every packet dropped, both ways: requests are never answered, open watches stop
    /// delivering — and the connections that carried either stay silent for good, even after the
    /// heal, without being closed (the server gave up on them meanwhile and its FIN was dropped
    /// too). Connections opened after the heal work. What `ha-kill.sh N --partition` followed by
    /// `ha-revive.sh N` does to a kube-rs client on a real control plane.
    BlackHole,
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

/// How long a failure rule lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lasts {
    /// This many more matching requests.
    Next(usize),
    /// Every matching request until [`Faults::heal_failures`].
    UntilHealed,
}

#[derive(Debug, Default)]
struct State {
    rules: Vec<(Match, Lasts, Failure)>,
    /// Lost replies: (which requests, how many more).
    drops: Vec<(Match, usize)>,
    /// Slow requests: (which requests, how many more, how long each waits before it is served).
    delays: Vec<(Match, usize, Duration)>,
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

    /// Fails the next `n` requests matching `m` with `f` (rules apply in the order given: the
    /// first one that matches a request answers it).
    pub fn fail_next(&self, m: Match, n: usize, f: Failure) {
        if n > 0 {
            self.lock().rules.push((m, Lasts::Next(n), f));
        }
    }

    /// Fails every request matching `m` with `f` until [`Faults::heal_failures`].
    pub fn fail_until_healed(&self, m: Match, f: Failure) {
        self.lock().rules.push((m, Lasts::UntilHealed, f));
    }

    /// Lets the next `n` requests matching `m` reach the store, then drops their connection
    /// instead of answering.
    pub fn commit_then_drop_next(&self, m: Match, n: usize) {
        if n > 0 {
            self.lock().drops.push((m, n));
        }
    }

    /// Removes every injected failure and lost-reply rule, counted or not (partitions and latency
    /// stay).
    pub fn heal_failures(&self) {
        let mut s = self.lock();
        s.rules.clear();
        s.drops.clear();
        s.delays.clear();
    }

    /// If a rule matches this request, consumes one of its count (if counted) and returns the
    /// failure.
    pub fn take_failure(
        &self,
        identity: &str,
        verb: Verb,
        resource: &str,
        namespace: Option<&str>,
    ) -> Option<Failure> {
        let mut s = self.lock();
        let i = s
            .rules
            .iter()
            .position(|(m, _, _)| m.matches(identity, verb, resource, namespace))?;
        let f = s.rules[i].2.clone();
        if let Lasts::Next(n) = &mut s.rules[i].1 {
            *n -= 1;
            if *n == 0 {
                s.rules.remove(i);
            }
        }
        Some(f)
    }

    /// Delays the next `n` requests matching `m` by `d` before they are served (and the store
    /// is touched): a slow or stuck apiserver for one kind of request, while others answer.
    pub fn delay_next(&self, m: Match, n: usize, d: Duration) {
        if n > 0 {
            self.lock().delays.push((m, n, d));
        }
    }

    /// How long this request waits before it is served (consumes one of the matching rule's
    /// count); zero when no rule matches.
    pub fn take_delay(
        &self,
        identity: &str,
        verb: Verb,
        resource: &str,
        namespace: Option<&str>,
    ) -> Duration {
        let mut s = self.lock();
        let Some(i) = s
            .delays
            .iter()
            .position(|(m, _, _)| m.matches(identity, verb, resource, namespace))
        else {
            return Duration::ZERO;
        };
        let d = s.delays[i].2;
        s.delays[i].1 -= 1;
        if s.delays[i].1 == 0 {
            s.delays.remove(i);
        }
        d
    }

    /// Whether this request's reply is to be lost (consumes one of the matching rule's count).
    pub fn take_drop(
        &self,
        identity: &str,
        verb: Verb,
        resource: &str,
        namespace: Option<&str>,
    ) -> bool {
        let mut s = self.lock();
        let Some(i) = s
            .drops
            .iter()
            .position(|(m, _)| m.matches(identity, verb, resource, namespace))
        else {
            return false;
        };
        s.drops[i].1 -= 1;
        if s.drops[i].1 == 0 {
            s.drops.remove(i);
        }
        true
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
            ..Match::any()
        };
        let ns = Some("kube-system");
        f.fail_next(m, 2, Failure::Conflict);
        assert_eq!(f.take_failure("node-2", Verb::Update, "leases", ns), None);
        assert_eq!(f.take_failure("node-1", Verb::Get, "leases", ns), None);
        assert_eq!(
            f.take_failure("node-1", Verb::Update, "leases", ns),
            Some(Failure::Conflict)
        );
        assert_eq!(
            f.take_failure("node-1", Verb::Update, "leases", ns),
            Some(Failure::Conflict)
        );
        assert_eq!(f.take_failure("node-1", Verb::Update, "leases", ns), None);
    }

    #[test]
    fn a_scope_matches_cluster_wide_requests_or_one_namespace_only() {
        let cluster = Match::any().resource("endpointslices").cluster_wide();
        assert!(cluster.matches("a", Verb::List, "endpointslices", None));
        assert!(!cluster.matches("a", Verb::List, "endpointslices", Some("default")));
        let default = Match::any().namespace("default");
        assert!(default.matches("a", Verb::Watch, "services", Some("default")));
        assert!(!default.matches("a", Verb::Watch, "services", Some("kube-system")));
        assert!(!default.matches("a", Verb::Watch, "services", None));
        assert!(Match::any().matches("a", Verb::Get, "nodes", None));
    }

    #[test]
    fn a_failure_until_healed_is_not_used_up_and_heal_failures_ends_it() {
        let f = Faults::default();
        f.fail_until_healed(Match::any().verb(Verb::List), Failure::ServiceUnavailable);
        for _ in 0..100 {
            assert_eq!(
                f.take_failure("a", Verb::List, "services", None),
                Some(Failure::ServiceUnavailable)
            );
        }
        f.heal_failures();
        assert_eq!(f.take_failure("a", Verb::List, "services", None), None);
    }

    #[test]
    fn commit_then_drop_counts_only_matching_requests() {
        let f = Faults::default();
        f.commit_then_drop_next(Match::any().verb(Verb::Create), 1);
        assert!(!f.take_drop("a", Verb::Get, "services", Some("default")));
        assert!(f.take_drop("a", Verb::Create, "services", Some("default")));
        assert!(!f.take_drop("a", Verb::Create, "services", Some("default")));
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

    #[test]
    fn a_delay_applies_to_matching_requests_only_and_is_used_up() {
        let f = Faults::default();
        let d = Duration::from_secs(7);
        f.delay_next(
            Match::any().resource("endpointslices").verb(Verb::Update),
            1,
            d,
        );
        assert_eq!(
            f.take_delay("node-1", Verb::Update, "leases", Some("x")),
            Duration::ZERO
        );
        assert_eq!(
            f.take_delay("node-1", Verb::Update, "endpointslices", Some("x")),
            d
        );
        assert_eq!(
            f.take_delay("node-1", Verb::Update, "endpointslices", Some("x")),
            Duration::ZERO
        );
    }
}
