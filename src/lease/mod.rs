//! Leader election on a `coordination.k8s.io` Lease: the I/O loop around [`decide`] that reads,
//! watches, claims, renews and releases the Lease, publishes [`Leadership`] on a watch channel and
//! keeps the [`Fence`] that every EndpointSlice write checks.
//!
//! What it leaves to others: the settings come from `config` (validated there: duration > renew
//! deadline > 1.2 × retry period ≥ 1 s) and the identity from `host`; `daemon` starts and stops
//! the writers on [`Leadership`] transitions and must stop them *before* it cancels the token
//! given to [`Elector::run`]; `apply` calls [`Fence::check`] right before every write; `metrics`
//! reads [`Counters`]. Services and EndpointSlices are never touched here.
//!
//! The protocol and the reasons behind each rule are in `docs/development/lease.md`.

pub mod decide;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use futures::{Stream, StreamExt};
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::PostParams;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::names;
use decide::{Decision, Role, Timing};

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

/// Returned by [`Fence::check`] when we may not write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not the holder of Lease {lease}")]
pub struct NotLeader {
    /// `namespace/name` of the Lease we do not hold.
    pub lease: String,
}

/// The shared state behind a [`Fence`]: the monotonic instant until which writes are allowed.
#[derive(Debug)]
struct FenceState {
    /// `namespace/name` of the Lease, for [`NotLeader`].
    lease: String,
    /// Origin of `until_nanos` (an `Instant` is not atomic; an offset from it is).
    base: Instant,
    /// Writes are allowed while `now - base < until_nanos`; 0 means not allowed.
    until_nanos: AtomicU64,
}

impl FenceState {
    fn set_until(&self, until: Instant) {
        let nanos = u64::try_from(until.saturating_duration_since(self.base).as_nanos())
            .unwrap_or(u64::MAX);
        self.until_nanos.store(nanos, Ordering::SeqCst);
    }

    fn invalidate(&self) {
        self.until_nanos.store(0, Ordering::SeqCst);
    }

    fn valid_at(&self, now: Instant) -> bool {
        let until = self.until_nanos.load(Ordering::SeqCst);
        let elapsed =
            u64::try_from(now.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX);
        elapsed < until
    }
}

/// Fencing token: cloned into every EndpointSlice writer; [`Fence::check`] is called right before
/// each write.
///
/// It turns invalid by itself at (send time of the last successful renewal + renew deadline),
/// comparing the monotonic clock, so a stuck elector task cannot keep a stale leader writing;
/// the elector also invalidates it at once when it steps down or shuts down.
#[derive(Clone, Debug)]
pub struct Fence {
    /// `None`: [`Fence::always`].
    state: Option<Arc<FenceState>>,
}

impl Fence {
    /// `Ok` while we hold the Lease and our renew deadline has not passed.
    ///
    /// # Errors
    /// [`NotLeader`] otherwise.
    pub fn check(&self) -> Result<(), NotLeader> {
        self.check_at(Instant::now())
    }

    fn check_at(&self, now: Instant) -> Result<(), NotLeader> {
        match &self.state {
            None => Ok(()),
            Some(state) if state.valid_at(now) => Ok(()),
            Some(state) => Err(NotLeader {
                lease: state.lease.clone(),
            }),
        }
    }

    /// How long writes stay allowed from now: zero once the fence is closed, `None` for
    /// [`Fence::always`]. A writer bounds each request by it, so a write checked just before the
    /// deadline cannot land long after our term ended (a create carries no precondition).
    pub fn remaining(&self) -> Option<Duration> {
        let state = self.state.as_ref()?;
        let until = state.until_nanos.load(Ordering::SeqCst);
        let elapsed = u64::try_from(
            Instant::now()
                .saturating_duration_since(state.base)
                .as_nanos(),
        )
        .unwrap_or(u64::MAX);
        Some(Duration::from_nanos(until.saturating_sub(elapsed)))
    }

    /// A fence that always allows writing, for tests with a single writer and no Lease.
    pub fn always() -> Fence {
        Fence { state: None }
    }
}

/// Counters for metrics; cheap to clone, read at any time.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    inner: Arc<CountersInner>,
}

#[derive(Debug, Default)]
struct CountersInner {
    acquired: AtomicU64,
    lost: AtomicU64,
    writes: AtomicU64,
    /// `leaseTransitions` of the record last read, plus one (0: never read).
    transitions: AtomicI64,
}

impl Counters {
    /// How many times this process became the leader.
    pub fn acquired(&self) -> u64 {
        self.inner.acquired.load(Ordering::Relaxed)
    }

    /// How many times this process stopped being the leader (step down, deadline, shutdown).
    pub fn lost(&self) -> u64 {
        self.inner.lost.load(Ordering::Relaxed)
    }

    /// Lease writes (create, claim, renewal, release) that succeeded.
    pub fn writes(&self) -> u64 {
        self.inner.writes.load(Ordering::Relaxed)
    }

    /// `spec.leaseTransitions` of the Lease as last read (holder changes over the Lease's life,
    /// counted by every holder), `None` before the first read.
    pub fn lease_transitions(&self) -> Option<i32> {
        match self.inner.transitions.load(Ordering::Relaxed) {
            0 => None,
            n => i32::try_from(n - 1).ok(),
        }
    }
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
    fn code(&self) -> Option<u16> {
        match self {
            Error::Request {
                source: kube::Error::Api(status),
                ..
            } => Some(status.code),
            _ => None,
        }
    }

    /// Worth retrying: timeouts, connection failures, 401, 409, 429 and 5xx. A 401 is transient
    /// because RKE2 rotates the client certificate: the daemon re-reads the kubeconfig on the
    /// first 401 (`client::Reloadable`) and the next attempt carries the new one; if the file
    /// never gets better, the renew deadline passes and we step down, which is the right outcome
    /// too. Everything else (403, 404 on create because the namespace is missing, 422) needs a
    /// person.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Timeout { .. } => true,
            Error::Request { source, .. } => match source {
                kube::Error::Api(status) => {
                    matches!(status.code, 401 | 408 | 409 | 429)
                        || (500..=599).contains(&status.code)
                }
                kube::Error::HyperError(_)
                | kube::Error::Service(_)
                | kube::Error::ReadEvents(_)
                | kube::Error::SerdeError(_)
                | kube::Error::FromUtf8(_) => true,
                _ => false,
            },
        }
    }

    /// Someone else wrote first: our resourceVersion is stale (409), the Lease we meant to create
    /// exists (409 AlreadyExists), or the Lease we meant to update was deleted (404 on update).
    /// Not a failure: re-read and decide again.
    fn is_lost_race(&self) -> bool {
        matches!(
            (self, self.code()),
            (_, Some(409)) | (Error::Request { verb: "update", .. }, Some(404))
        )
    }
}

/// Capped, jittered exponential backoff: 100 ms doubling per attempt up to `cap`, then a random
/// point in its upper half (so candidates that failed together do not retry together).
fn backoff(attempt: u32, cap: Duration) -> Duration {
    let full = Duration::from_millis(100)
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(cap);
    let half = full / 2;
    let jitter = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
    half + Duration::from_nanos(fastrand::u64(0..=jitter))
}

/// Whether a watch event's object is newer than what we hold. Kubernetes calls
/// resourceVersions opaque, but every etcd-backed apiserver uses the etcd revision; comparing
/// them only filters watch events older than a write response we already hold (which would
/// otherwise cost a needless 409). Getting it wrong never breaks safety: writes carry the
/// resourceVersion precondition.
fn is_newer(candidate: Option<&str>, current: Option<&str>) -> bool {
    match (
        candidate.and_then(|c| c.parse::<u64>().ok()),
        current.and_then(|c| c.parse::<u64>().ok()),
    ) {
        (Some(c), Some(cur)) => c > cur,
        _ => candidate != current || candidate.is_none(),
    }
}

/// What we last read of the Lease and when its record last changed.
struct Observed {
    /// `None`: the Lease does not exist.
    lease: Option<Lease>,
    /// When we saw the record change (local monotonic clock).
    at: Instant,
}

impl Observed {
    fn spec(&self) -> Option<&LeaseSpec> {
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

    fn resource_version(&self) -> Option<&str> {
        self.lease
            .as_ref()
            .and_then(|l| l.metadata.resource_version.as_deref())
    }
}

/// Whether the loop goes on or shutdown was requested.
enum Flow {
    Continue,
    Stop,
}

/// Campaigns for the Lease; see [`Elector::run`].
pub struct Elector {
    api: Api<Lease>,
    settings: Settings,
    lease_ref: String,
    timing: Timing,
    tx: watch::Sender<Leadership>,
    fence: Arc<FenceState>,
    counters: Counters,
    observed: Option<Observed>,
    role: Role,
    /// Consecutive failed requests (0 after a success).
    failures: u32,
    /// After a failed request, do not send the next one before this instant.
    retry_at: Option<Instant>,
    /// resourceVersion of the Lease our last successful write returned: a record naming us with
    /// any other version was written by another process with our identity (see `decide`).
    written_rv: Option<String>,
    /// Called on every decision (see [`Elector::with_progress`]).
    progress: Option<Box<dyn Fn() + Send + Sync>>,
}

impl Elector {
    /// An elector for the Lease `settings.namespace/settings.name` reached through `api`
    /// (which may be scoped to any namespace: requests use `settings.namespace`), with the
    /// receiver on which [`Leadership`] changes are published and the [`Fence`] for writers.
    pub fn new(
        api: Api<Lease>,
        settings: Settings,
    ) -> (Elector, watch::Receiver<Leadership>, Fence) {
        let (tx, rx) = watch::channel(Leadership::Starting);
        let lease_ref = settings.lease_ref();
        let fence = Arc::new(FenceState {
            lease: lease_ref.clone(),
            base: Instant::now(),
            until_nanos: AtomicU64::new(0),
        });
        let api = Api::namespaced(api.into_client(), &settings.namespace);
        let elector = Elector {
            api,
            timing: settings.timing(),
            settings,
            lease_ref,
            tx,
            fence: fence.clone(),
            counters: Counters::default(),
            observed: None,
            role: Role::Follower,
            failures: 0,
            retry_at: None,
            written_rv: None,
            progress: None,
        };
        (elector, rx, Fence { state: Some(fence) })
    }

    /// Calls `progress` every time the elector decides (at least once per retry period while
    /// leading, once per Lease duration while following): the daemon ticks a watchdog heartbeat
    /// with it. The lease module knows nothing of systemd.
    #[must_use]
    pub fn with_progress(mut self, progress: impl Fn() + Send + Sync + 'static) -> Elector {
        self.progress = Some(Box::new(progress));
        self
    }

    /// Counters for metrics (shared: keep the clone, they keep counting while `run` runs).
    pub fn counters(&self) -> Counters {
        self.counters.clone()
    }

    /// Campaigns until `shutdown` is cancelled; then, if the Lease names us, releases it (empty
    /// holder, as client-go's `release()`) so a follower takes over at once, and returns `Ok`.
    ///
    /// The daemon must stop its writers and wait for the write in flight *before* cancelling
    /// `shutdown` (use a token of its own, not the process-wide one): the fence is invalidated
    /// before the release is sent, but a write already past its check could otherwise land after
    /// the next leader's first write. A Lease write in flight when `shutdown` is cancelled is
    /// finished first (bounded by its timeout). The release is bounded by the renew deadline; if
    /// it fails the Lease simply expires.
    ///
    /// # Errors
    /// Transient API errors (timeouts, connection failures, 409, 429, 5xx) are retried inside;
    /// [`Error`] is returned only for fatal ones (403, the namespace missing, 422). The fence
    /// is invalid when this returns.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), Error> {
        let config =
            watcher::Config::default().fields(&format!("metadata.name={}", self.settings.name));
        // The watch lets followers react the moment the Lease is released or changes hands
        // instead of polling; its own backoff paces re-watches when the API is unreachable.
        let mut events = watcher(self.api.clone(), config)
            .default_backoff()
            .fuse()
            .boxed();
        let result = self.campaign(&mut events, &shutdown).await;
        self.fence.invalidate();
        if matches!(self.role, Role::Leader { .. }) {
            self.role = Role::Follower;
            self.counters.inner.lost.fetch_add(1, Ordering::Relaxed);
            info!(lease = %self.lease_ref, identity = %self.settings.identity, "lost leadership");
        }
        self.publish(Leadership::Follower { holder: None });
        if result.is_ok() {
            self.release().await;
        }
        result
    }

    async fn campaign<S>(
        &mut self,
        events: &mut S,
        shutdown: &CancellationToken,
    ) -> Result<(), Error>
    where
        S: Stream<Item = Result<watcher::Event<Lease>, watcher::Error>> + Unpin,
    {
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            // Progress for the watchdog: every decision passes here, at least once per retry
            // period or Lease duration, so a wedged elector stops the keep-alive pings.
            if let Some(progress) = &self.progress {
                progress();
            }
            let now = Instant::now();
            // The deadline holds even when we cannot read the Lease at all.
            if let Role::Leader { renewed_at } = self.role
                && now >= decide::fence_until(renewed_at, &self.timing)
            {
                self.step_down(None);
            }
            if self.observed.is_none() {
                if let Some(until) = self.retry_at.filter(|t| *t > now) {
                    if let Flow::Stop = self.wait(until, events, shutdown).await {
                        return Ok(());
                    }
                    continue;
                }
                match self.read().await {
                    Ok(()) => {}
                    Err(e) if e.is_transient() => {
                        self.failed(&e);
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let Some(observed) = &self.observed else {
                continue;
            };
            // Read again: the GET above may have taken a while, and a stale `now` would only
            // make us decide early and loop once more.
            let now = Instant::now();
            let wrote_it = observed.resource_version().is_some()
                && observed.resource_version() == self.written_rv.as_deref();
            let decision = decide::decide(
                observed.spec(),
                observed.at,
                &self.settings.identity,
                wrote_it,
                self.role,
                now,
                &self.timing,
            );
            debug!(lease = %self.lease_ref, ?decision, "lease decision");
            match decision {
                Decision::StepDown { holder } => self.step_down(holder),
                Decision::Wait { until, holder } => {
                    if self.role == Role::Follower {
                        self.follow(holder);
                    }
                    if let Flow::Stop = self.wait(until, events, shutdown).await {
                        return Ok(());
                    }
                }
                Decision::Create | Decision::Acquire | Decision::Renew => {
                    if let Some(until) = self.retry_at.filter(|t| *t > now) {
                        if let Flow::Stop = self.wait(until, events, shutdown).await {
                            return Ok(());
                        }
                        continue;
                    }
                    self.write(decision).await?;
                }
            }
        }
    }

    /// Sleeps until `until`, shutdown, or a watch event (which updates the observation).
    async fn wait<S>(
        &mut self,
        until: Instant,
        events: &mut S,
        shutdown: &CancellationToken,
    ) -> Flow
    where
        S: Stream<Item = Result<watcher::Event<Lease>, watcher::Error>> + Unpin,
    {
        // A leader never sleeps past its own deadline, so it steps down on time.
        let until = match self.role {
            Role::Leader { renewed_at } => until.min(decide::fence_until(renewed_at, &self.timing)),
            Role::Follower => until,
        };
        tokio::select! {
            biased;
            () = shutdown.cancelled() => Flow::Stop,
            () = sleep_until(until) => Flow::Continue,
            Some(event) = events.next() => {
                match event {
                    Ok(watcher::Event::Apply(lease) | watcher::Event::InitApply(lease)) => {
                        self.seen(Some(lease));
                    }
                    Ok(watcher::Event::Delete(lease)) => {
                        if is_newer(lease.metadata.resource_version.as_deref(), self.current_rv()) {
                            self.observe(None);
                        }
                    }
                    Ok(watcher::Event::Init | watcher::Event::InitDone) => {}
                    Err(error) => {
                        warn!(lease = %self.lease_ref, error = %crate::error::chain(&error), "lease watch failed, re-watching");
                    }
                }
                Flow::Continue
            }
        }
    }

    fn current_rv(&self) -> Option<&str> {
        self.observed.as_ref().and_then(Observed::resource_version)
    }

    /// A Lease seen on the watch: taken unless older than what we hold.
    fn seen(&mut self, lease: Option<Lease>) {
        let rv = lease
            .as_ref()
            .and_then(|l| l.metadata.resource_version.as_deref());
        if self.observed.is_none() || is_newer(rv, self.current_rv()) {
            self.observe(lease);
        }
    }

    fn observe(&mut self, lease: Option<Lease>) {
        let now = Instant::now();
        let spec = lease.as_ref().map(|l| l.spec.clone().unwrap_or_default());
        let previous = self.observed.as_ref().map(|o| (o.spec(), o.at));
        let at = decide::observed_at(previous, spec.as_ref(), now);
        if let Some(transitions) = spec.as_ref().and_then(|s| s.lease_transitions) {
            self.counters
                .inner
                .transitions
                .store(i64::from(transitions) + 1, Ordering::Relaxed);
        }
        self.observed = Some(Observed { lease, at });
    }

    /// Timeout for the next request: a leader must not wait past its deadline; a follower has
    /// no deadline, the renew deadline is a generous bound.
    fn request_timeout(&self) -> Duration {
        match self.role {
            Role::Leader { renewed_at } => decide::fence_until(renewed_at, &self.timing)
                .saturating_duration_since(Instant::now()),
            Role::Follower => self.timing.renew_deadline,
        }
        .max(Duration::from_millis(1))
    }

    async fn read(&mut self) -> Result<(), Error> {
        let after = self.request_timeout();
        let lease = match tokio::time::timeout(after, self.api.get_opt(&self.settings.name)).await {
            Err(_) => Err(self.timeout("get", after)),
            Ok(result) => result.map_err(|source| self.request("get", source)),
        }?;
        self.failures = 0;
        self.retry_at = None;
        self.observe(lease);
        Ok(())
    }

    async fn write(&mut self, decision: Decision) -> Result<(), Error> {
        let current = self.observed.as_ref().and_then(Observed::spec);
        let spec = decide::claim(
            current,
            &self.settings.identity,
            Timestamp::now(),
            &self.timing,
        );
        let after = self.request_timeout();
        let params = PostParams {
            dry_run: false,
            field_manager: Some(names::FIELD_MANAGER.to_owned()),
        };
        // Our claim is as old as the moment the request leaves: peers may see it any time after.
        let sent = Instant::now();
        let (verb, result) = if decision == Decision::Create {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.settings.name.clone()),
                    namespace: Some(self.settings.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(spec),
            };
            (
                "create",
                tokio::time::timeout(after, self.api.create(&params, &lease)).await,
            )
        } else {
            // The body carries the resourceVersion we read: the API refuses it (409) if anyone
            // wrote in between, so two candidates can never both win.
            let mut lease = self
                .observed
                .as_ref()
                .and_then(|o| o.lease.clone())
                .unwrap_or_default();
            lease.spec = Some(spec);
            let name = self.settings.name.clone();
            (
                "update",
                tokio::time::timeout(after, self.api.replace(&name, &params, &lease)).await,
            )
        };
        let result = match result {
            Err(_) => Err(self.timeout(verb, after)),
            Ok(r) => r.map_err(|source| self.request(verb, source)),
        };
        match result {
            Ok(lease) => {
                self.failures = 0;
                self.retry_at = None;
                self.written_rv = lease.metadata.resource_version.clone();
                self.counters.inner.writes.fetch_add(1, Ordering::Relaxed);
                self.observe(Some(lease));
                self.lead(sent);
                Ok(())
            }
            Err(e) if e.is_lost_race() => {
                debug!(lease = %self.lease_ref, error = %crate::error::chain(&e), "lease changed under us, re-reading");
                self.observed = None;
                Ok(())
            }
            Err(e) if e.is_transient() => {
                self.failed(&e);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn failed(&mut self, error: &Error) {
        self.failures = self.failures.saturating_add(1);
        let wait = backoff(self.failures, self.timing.retry_period);
        self.retry_at = Some(Instant::now() + wait);
        warn!(
            lease = %self.lease_ref,
            identity = %self.settings.identity,
            attempt = self.failures,
            backoff_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            error = %crate::error::chain(error),
            "lease request failed, retrying"
        );
    }

    fn lead(&mut self, sent: Instant) {
        let was_leader = matches!(self.role, Role::Leader { .. });
        self.role = Role::Leader { renewed_at: sent };
        self.fence
            .set_until(decide::fence_until(sent, &self.timing));
        if !was_leader {
            self.counters.inner.acquired.fetch_add(1, Ordering::Relaxed);
            info!(
                lease = %self.lease_ref,
                identity = %self.settings.identity,
                holder = %self.settings.identity,
                "became leader"
            );
            self.publish(Leadership::Leader);
        }
    }

    fn step_down(&mut self, holder: Option<String>) {
        // Fence first: writers must be refused before anyone hears we stepped down.
        self.fence.invalidate();
        if matches!(self.role, Role::Leader { .. }) {
            self.counters.inner.lost.fetch_add(1, Ordering::Relaxed);
            if holder.as_deref() == Some(self.settings.identity.as_str()) {
                error!(
                    lease = %self.lease_ref,
                    identity = %self.settings.identity,
                    "another process renewed the Lease under this identity; stepping down (is endpoint-copier running twice with the same identity?)"
                );
            }
            info!(
                lease = %self.lease_ref,
                identity = %self.settings.identity,
                holder = holder.as_deref().unwrap_or(""),
                "lost leadership"
            );
        }
        self.role = Role::Follower;
        self.publish(Leadership::Follower { holder });
    }

    fn follow(&mut self, holder: Option<String>) {
        let next = Leadership::Follower { holder };
        if *self.tx.borrow() != next {
            if let Leadership::Follower { holder: Some(h) } = &next
                && *h == self.settings.identity
            {
                warn!(
                    lease = %self.lease_ref,
                    identity = %self.settings.identity,
                    "the Lease names this identity but another process wrote it (a previous run of this host, or a second copy with the same identity); waiting for it to expire"
                );
            } else if let Leadership::Follower { holder: Some(h) } = &next {
                info!(lease = %self.lease_ref, identity = %self.settings.identity, holder = %h, "following");
            }
            self.publish(next);
        }
    }

    fn publish(&self, state: Leadership) {
        self.tx.send_if_modified(|current| {
            if *current == state {
                false
            } else {
                *current = state;
                true
            }
        });
    }

    /// Releases the Lease if the record as last read names us; best effort, bounded by the renew
    /// deadline (failure only means peers wait for expiry).
    async fn release(&mut self) {
        let deadline = Instant::now() + self.timing.renew_deadline;
        let params = PostParams {
            dry_run: false,
            field_manager: Some(names::FIELD_MANAGER.to_owned()),
        };
        for _ in 0..3 {
            let Some(mut lease) = self.observed.as_ref().and_then(|o| o.lease.clone()) else {
                return;
            };
            let spec = lease.spec.clone().unwrap_or_default();
            if decide::holder(&spec) != Some(self.settings.identity.as_str()) {
                return;
            }
            lease.spec = Some(decide::release(&spec, Timestamp::now()));
            let name = self.settings.name.clone();
            match tokio::time::timeout_at(deadline, self.api.replace(&name, &params, &lease)).await
            {
                Ok(Ok(lease)) => {
                    self.counters.inner.writes.fetch_add(1, Ordering::Relaxed);
                    info!(lease = %self.lease_ref, identity = %self.settings.identity, "released lease");
                    self.observe(Some(lease));
                    return;
                }
                Ok(Err(source)) => {
                    let e = self.request("update", source);
                    if !e.is_transient() {
                        warn!(lease = %self.lease_ref, error = %crate::error::chain(&e), "could not release lease, peers wait for expiry");
                        return;
                    }
                    // A conflict means the record changed (our own renewal seen late, or a
                    // takeover): re-read, and release only if it still names us.
                    match tokio::time::timeout_at(deadline, self.api.get_opt(&name)).await {
                        Ok(Ok(lease)) => self.observe(lease),
                        _ => {
                            warn!(lease = %self.lease_ref, error = %crate::error::chain(&e), "could not release lease, peers wait for expiry");
                            return;
                        }
                    }
                }
                Err(_) => {
                    warn!(lease = %self.lease_ref, "lease release timed out, peers wait for expiry");
                    return;
                }
            }
        }
    }

    fn timeout(&self, verb: &'static str, after: Duration) -> Error {
        Error::Timeout {
            verb,
            lease: self.lease_ref.clone(),
            after_ms: after.as_millis(),
        }
    }

    fn request(&self, verb: &'static str, source: kube::Error) -> Error {
        Error::Request {
            verb,
            lease: self.lease_ref.clone(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fence_for(lease: &str) -> (Arc<FenceState>, Fence) {
        let state = Arc::new(FenceState {
            lease: lease.to_owned(),
            base: Instant::now(),
            until_nanos: AtomicU64::new(0),
        });
        (state.clone(), Fence { state: Some(state) })
    }

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
    fn a_new_fence_refuses_writes_and_names_the_lease() {
        let (_, fence) = fence_for("kube-system/endpoint-copier");
        assert_eq!(
            fence.check(),
            Err(NotLeader {
                lease: "kube-system/endpoint-copier".into()
            })
        );
    }

    #[test]
    fn the_fence_expires_by_itself_at_its_deadline() {
        let (state, fence) = fence_for("kube-system/endpoint-copier");
        let t0 = state.base + Duration::from_secs(1);
        state.set_until(t0 + Duration::from_secs(10));
        assert!(fence.check_at(t0).is_ok());
        assert!(fence.check_at(t0 + Duration::from_millis(9_999)).is_ok());
        assert!(fence.check_at(t0 + Duration::from_secs(10)).is_err());
        // A clone shares the deadline: every writer sees the same fence.
        let clone = fence.clone();
        state.invalidate();
        assert!(clone.check_at(t0).is_err());
    }

    #[test]
    fn the_always_fence_allows_every_write() {
        assert!(Fence::always().check().is_ok());
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
    fn backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half() {
        let cap = Duration::from_secs(2);
        for _ in 0..100 {
            let first = backoff(1, cap);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let third = backoff(3, cap);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            let late = backoff(40, cap);
            assert!(late >= Duration::from_secs(1) && late <= cap);
        }
    }

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
