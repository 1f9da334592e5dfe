//! The [`Elector`]: the I/O loop around [`decide`] that watches the Lease and decides when to
//! claim, renew or step down, publishes [`Leadership`] on a watch channel, keeps the [`Fence`]
//! writers check, and reports a live twin (another process writing under our identity) to
//! [`SelfHealth`]. The requests themselves are `requests.rs`'s; failed ones are classified by
//! [`Error`]'s methods in `mod.rs` and retried on `backoff::delay`.

use crate::clock::Clock;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::runtime::watcher;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::decide::{self, Decision, Role, Timing};
use super::fence::{Fence, FenceState};
use super::observed::{Observed, Sent, is_newer};
use super::runtime::RuntimeLock;
use super::{Error, Leadership, Settings};
use crate::group::SelfHealth;
use crate::group::health::{SeenOn, TwinSeen};

/// The first retry waits at most this long; then it doubles, capped at the retry period.
pub(super) const BACKOFF_BASE: Duration = Duration::from_millis(100);

/// Whether the loop goes on or shutdown was requested.
enum Flow {
    Continue,
    Stop,
}

/// Campaigns for the Lease; see [`Elector::run`].
pub struct Elector {
    pub(super) api: Api<Lease>,
    pub(super) settings: Settings,
    pub(super) lease_ref: String,
    pub(super) timing: Timing,
    pub(super) tx: watch::Sender<Leadership>,
    pub(super) fence: Arc<FenceState>,
    pub(super) observed: Option<Observed>,
    pub(super) role: Role,
    /// Consecutive failed requests (0 after a success).
    pub(super) failures: u32,
    /// After a failed request, do not send the next one before this instant.
    pub(super) retry_at: Option<Instant>,
    /// resourceVersion of the Lease our last successful write returned (or of the record that
    /// proved a write committed whose reply was lost): with [`Elector::sent`], how we tell our
    /// own record from a twin's (see `decide::wrote_it`).
    pub(super) written_rv: Option<String>,
    /// The last claim or renewal we sent. Seeing exactly this record proves that write
    /// committed, even when its reply was lost to a timeout or a dropped connection.
    pub(super) sent: Option<Sent>,
    /// Called on every decision (see [`Elector::with_progress`]).
    pub(super) progress: Option<Box<dyn Fn() + Send + Sync>>,
    /// Set once the campaign ended: from then on nothing may open the fence again.
    pub(super) stopped: bool,
    /// The runtime lock, held for as long as this elector may write the Lease (see
    /// [`Elector::with_runtime_lock`]); `None`: our claims carry no token.
    pub(super) runtime: Option<RuntimeLock>,
    /// This process's nonce, marked in every claim (see [`Elector::with_twin_watch`]).
    pub(super) nonce: Option<String>,
    /// Where a twin seen on the Lease is reported.
    pub(super) health: Option<SelfHealth>,
    /// Whether a write of ours succeeded: from then on, a record naming us that we did not
    /// write is a live twin's (`decide::twin`).
    pub(super) written_before: bool,
    /// Whether a live twin was seen: the fast takeover of `decide::dead_predecessor` is off for
    /// the rest of the process's life.
    pub(super) twin_seen: bool,
    /// The wall clock claims and renewals are stamped with (never read back to decide).
    pub(super) clock: Clock,
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
        let fence = FenceState::new(&lease_ref);
        let api = Api::namespaced(api.into_client(), &settings.namespace);
        let elector = Elector {
            api,
            timing: settings.timing(),
            settings,
            lease_ref,
            tx,
            fence: fence.clone(),
            observed: None,
            role: Role::Follower,
            failures: 0,
            retry_at: None,
            written_rv: None,
            sent: None,
            progress: None,
            stopped: false,
            runtime: None,
            nonce: None,
            health: None,
            written_before: false,
            twin_seen: false,
            clock: Clock::System,
        };
        (elector, rx, Fence::new(fence))
    }

    /// Calls `progress` every time the elector decides (at least once per retry period while
    /// leading, once per Lease duration while following): the daemon ticks a watchdog heartbeat
    /// with it. The lease module knows nothing of systemd.
    #[must_use]
    pub fn with_progress(mut self, progress: impl Fn() + Send + Sync + 'static) -> Elector {
        self.progress = Some(Box::new(progress));
        self
    }

    /// Holds `lock` for as long as this elector may write the Lease, marks every claim and
    /// renewal with its token (the `endpoint-copier/claim` annotation) and takes over at once a
    /// claim naming our identity that carries that token, since its writer is dead
    /// (`decide::dead_predecessor`). Without it, such a claim is waited out like anyone's.
    #[must_use]
    pub fn with_runtime_lock(mut self, lock: RuntimeLock) -> Elector {
        self.runtime = Some(lock);
        self
    }

    /// Marks every claim and renewal with this process's `nonce`, recognises as ours a record
    /// carrying it (`decide::marked_by_us`), and reports to `health` a record naming our
    /// identity that another live process wrote (`decide::twin`): logged at error, and from
    /// then on a claim carrying our runtime lock's token is no longer taken at once.
    #[must_use]
    pub fn with_twin_watch(mut self, nonce: &str, health: SelfHealth) -> Elector {
        self.nonce = Some(nonce.to_owned());
        self.health = Some(health);
        self
    }

    /// Stamps `acquireTime` and `renewTime` with `clock` (the system's by default).
    #[must_use]
    pub fn with_clock(mut self, clock: Clock) -> Elector {
        self.clock = clock;
        self
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
    /// Until `shutdown` is cancelled the elector keeps renewing, whatever the writers do. So a
    /// daemon that abandoned a write (its drain timed out) and wants to keep the Lease until that
    /// write's own deadline has passed (`apply::outstanding_until`) only has to wait until then
    /// before cancelling `shutdown`: no successor can start while we renew, and the release
    /// follows at once.
    ///
    /// # Errors
    /// Transient API errors (timeouts, connection failures, 409, 429, 5xx) are retried inside;
    /// [`Error`] is returned only for fatal ones (403, the namespace missing, 422). The fence
    /// is invalid when this returns.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), Error> {
        let config =
            watcher::Config::default().fields(&format!("metadata.name={}", self.settings.name));
        // The watch lets followers react the moment the Lease is released or changes hands
        // instead of polling. Re-watches are paced like our requests, capped at the retry
        // period: kube's default grows to 30 s, and a follower whose watch is down learns of a
        // release only at the holder's expiry.
        let mut events = crate::watch::paced(
            watcher(self.api.clone(), config),
            crate::backoff::Backoff::new(BACKOFF_BASE, self.timing.retry_period),
        )
        .fuse()
        .boxed();
        let result = self.campaign(&mut events, &shutdown).await;
        self.stopped = true;
        self.fence.invalidate();
        if matches!(self.role, Role::Leader { .. }) {
            self.role = Role::Follower;
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
            if self.observed.is_none() {
                continue;
            }
            let wrote_it = self.wrote_it();
            self.watch_for_twin(wrote_it);
            let predecessor = self.dead_predecessor(wrote_it);
            let Some(observed) = &self.observed else {
                continue;
            };
            // Read again: the GET above may have taken a while, and a stale `now` would only
            // make us decide early and loop once more.
            let now = Instant::now();
            let decision = decide::decide(
                observed.spec(),
                observed.at,
                &self.settings.identity,
                wrote_it || predecessor.is_some(),
                self.role,
                now,
                &self.timing,
            );
            debug!(lease = %self.lease_ref, ?decision, "lease decision");
            if let (Some(p), Decision::Acquire) = (&predecessor, &decision) {
                info!(
                    lease = %self.lease_ref,
                    identity = %self.settings.identity,
                    pid = p.pid.unwrap_or(0),
                    "the Lease names this identity, written by a previous run of this host that held our runtime lock and is gone; taking it over now"
                );
            }
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
                        if crate::client::link::cut_of(&error).is_some() {
                            debug!(lease = %self.lease_ref, error = %crate::error::chain(&error), "lease watch started over on a new connection");
                        } else {
                            warn!(lease = %self.lease_ref, error = %crate::error::chain(&error), "lease watch failed, re-watching");
                        }
                    }
                }
                Flow::Continue
            }
        }
    }

    pub(super) fn current_rv(&self) -> Option<&str> {
        self.observed.as_ref().and_then(Observed::resource_version)
    }

    /// A Lease seen on the watch: taken unless older than what we hold.
    pub(super) fn seen(&mut self, lease: Option<Lease>) {
        let rv = lease
            .as_ref()
            .and_then(|l| l.metadata.resource_version.as_deref());
        if self.observed.is_none() || is_newer(rv, self.current_rv()) {
            self.observe(lease);
        }
    }

    pub(super) fn observe(&mut self, lease: Option<Lease>) {
        let now = Instant::now();
        let spec = lease.as_ref().map(|l| l.spec.clone().unwrap_or_default());
        let previous = self.observed.as_ref().map(|o| (o.spec(), o.at));
        let at = decide::observed_at(previous, spec.as_ref(), now);
        self.observed = Some(Observed { lease, at });
        self.recognise_own_write();
    }

    /// Whether this process wrote the record as last read (see `decide::wrote_it`, and
    /// `decide::marked_by_us`: a record carrying our nonce is ours too).
    pub(super) fn wrote_it(&self) -> bool {
        self.observed
            .as_ref()
            .and_then(|o| o.spec().map(|spec| (spec, o.resource_version())))
            .is_some_and(|(spec, rv)| {
                decide::wrote_it(
                    spec,
                    rv,
                    self.written_rv.as_deref(),
                    self.sent.as_ref().map(|s| &s.spec),
                ) || decide::marked_by_us(spec, self.claim_annotation(), self.nonce.as_deref())
            })
    }

    /// The `endpoint-copier/claim` annotation of the record as last read.
    fn claim_annotation(&self) -> Option<&str> {
        self.observed
            .as_ref()?
            .lease
            .as_ref()?
            .metadata
            .annotations
            .as_ref()?
            .get(decide::CLAIM_ANNOTATION)
            .map(String::as_str)
    }

    /// Reports a record naming our identity that another live process wrote (`decide::twin`),
    /// and turns the fast takeover off for good.
    fn watch_for_twin(&mut self, wrote_it: bool) {
        let Some(spec) = self.observed.as_ref().and_then(Observed::spec) else {
            return;
        };
        let Some(claim) = decide::twin(
            spec,
            self.claim_annotation(),
            &self.settings.identity,
            wrote_it,
            self.written_before,
        ) else {
            return;
        };
        let now = Instant::now();
        // Once per sighting streak: the record stays the twin's while we wait for it to expire,
        // and every decision in between would find it again.
        let new = !self.twin_seen || self.health.as_ref().is_some_and(|h| h.twin(now).is_none());
        if new {
            error!(
                lease = %self.lease_ref,
                identity = %self.settings.identity,
                nonce = self.nonce.as_deref().unwrap_or("-"),
                twin = claim.nonce.as_deref().unwrap_or("-"),
                pid = claim.pid.unwrap_or(0),
                "another live process wrote the Lease under this identity; this copy no longer takes a claim of its identity over at once (two hosts with one host name, a cloned machine with its runtime directory?)"
            );
        }
        self.twin_seen = true;
        if let Some(health) = &self.health {
            health.twin_seen(TwinSeen {
                on: SeenOn::ElectionLease,
                nonce: claim.nonce,
                pid: claim.pid,
                at: now,
            });
        }
    }

    /// Whether the record as last read is the claim of a dead process that held our runtime
    /// lock (see `decide::dead_predecessor`).
    fn dead_predecessor(&self, wrote_it: bool) -> Option<decide::Predecessor> {
        let spec = self.observed.as_ref()?.spec()?;
        decide::dead_predecessor(
            spec,
            self.claim_annotation(),
            &self.settings.identity,
            wrote_it,
            self.runtime.as_ref().map(RuntimeLock::token),
            self.twin_seen,
        )
    }

    /// A record that is exactly the claim or renewal we last sent proves that write committed,
    /// even if its reply never reached us (a timeout, a connection dropped after the server
    /// wrote). Treat it as the success it was: remember its resourceVersion, forget the failure,
    /// and lead from the instant it was *sent* — as a reply would have made us — if that term
    /// has not already run out. Without this, the next read shows a record naming us with a
    /// version we never saw, which looks exactly like a twin: the leader stepped down with an
    /// error and everyone waited a whole Lease duration.
    pub(super) fn recognise_own_write(&mut self) {
        let Some(observed) = &self.observed else {
            return;
        };
        let Some(sent) = &self.sent else {
            return;
        };
        if observed.spec() != Some(&sent.spec) {
            return;
        }
        let rv = observed.resource_version().map(str::to_owned);
        if rv.is_none() || rv == self.written_rv {
            return;
        }
        let sent_at = sent.at;
        debug!(lease = %self.lease_ref, resource_version = rv.as_deref().unwrap_or(""), "our lease write committed although its reply was lost");
        self.written_rv = rv;
        self.failures = 0;
        self.retry_at = None;
        // Past its term the fence would open onto nothing: the loop steps down at the deadline
        // and, since the record is ours, re-acquires at once.
        if !self.stopped && Instant::now() < decide::fence_until(sent_at, &self.timing) {
            self.lead(sent_at);
        }
    }

    pub(super) fn lead(&mut self, sent: Instant) {
        let was_leader = matches!(self.role, Role::Leader { .. });
        self.role = Role::Leader { renewed_at: sent };
        self.fence
            .set_until(decide::fence_until(sent, &self.timing));
        if !was_leader {
            info!(
                lease = %self.lease_ref,
                identity = %self.settings.identity,
                holder = %self.settings.identity,
                "became leader"
            );
            self.publish(Leadership::Leader);
        }
    }

    pub(super) fn step_down(&mut self, holder: Option<String>) {
        // Fence first: writers must be refused before anyone hears we stepped down.
        self.fence.invalidate();
        if matches!(self.role, Role::Leader { .. }) {
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

    pub(super) fn follow(&mut self, holder: Option<String>) {
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

    pub(super) fn publish(&self, state: Leadership) {
        self.tx.send_if_modified(|current| {
            if *current == state {
                false
            } else {
                *current = state;
                true
            }
        });
    }
}
