//! The supervisor: one `select!` over shutdown, leadership, watch events, finished writes and
//! timers. It owns every task's `JoinHandle` and every per-pair state; it computes nothing itself
//! (`pairs` and `desired` do) and writes nothing itself (`apply` does).
//!
//! ```text
//!  wait for kubeconfig ─► client ─► Elector task ───────► Leadership (watch channel) + Fence
//!                                  Service watch ──┐
//!                                  slice watch ────┼─► caches ─► pairs::resolve ─► dirty pairs
//!                                  resync tick ────┘                                  │
//!                  (leader only) desired + plan ─► apply task (≤1 per pair) ◄─────────┘
//! ```
//!
//! Concurrency choices, each at the line that makes it: one task owns all state (no locks around
//! caches); applies run as separate tasks so a slow write never stalls the watches, at most one
//! per pair (a pair's writes are ordered) and at most [`MAX_IN_FLIGHT`] in all.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Endpoints;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::watcher;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{Instrument, debug, error, info, warn};

use crate::apply::{self, Applied};
use crate::client::{self, Reloadable};
use crate::config::Config;
use crate::desired::{self, Hold, Plan};
use crate::error::chain;
use crate::events::{self, Reason, Report};
use crate::lease::{self, Elector, Fence, Leadership};
use crate::metrics::{self, Health, Metrics};
use crate::names::ServiceRef;
use crate::notify::{self, Heartbeats, Notifier, PairStatus, Role, StatusView};
use crate::pairs::{self, Pair, Refusal};
use crate::shutdown::Shutdown;
use crate::watch::{self, ServiceCache, SliceCache};

/// At most this many pairs are written at once: enough to bring 1,000 annotated pairs in sync in
/// well under a second, few enough not to look like a flood to API Priority and Fairness.
pub const MAX_IN_FLIGHT: usize = 16;
/// First retry delay after a failed write; doubles per attempt up to `[sync] max_backoff_secs`.
const BACKOFF_BASE: Duration = Duration::from_millis(200);
/// How often the kubeconfig file is checked for a rewrite (certificate rotation).
const KUBECONFIG_POLL: Duration = Duration::from_secs(5);
/// How often STATUS, metrics and the heartbeat are refreshed.
const TICK: Duration = Duration::from_secs(1);
/// How long a kubeconfig that exists but does not load is retried before it is a config error:
/// long enough for any writer to finish the file, short enough to be seen as a failed unit.
const KUBECONFIG_GIVE_UP: Duration = Duration::from_secs(60);
/// How long a stopping leader waits for its in-flight writes before releasing the Lease.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long releasing the Lease may take on shutdown.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the daemon stopped other than by a signal.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kubeconfig exists but cannot be used (insecure, bad credentials).
    #[error("unusable kubeconfig")]
    Kubeconfig(#[source] client::Error),
    /// The host name could not be read for the Lease identity.
    #[error("failed to determine the Lease identity")]
    Identity(#[source] crate::host::Error),
    /// Leader election failed for good (for example 403 on the Lease).
    #[error("leader election failed")]
    Lease(#[source] lease::Error),
    /// A task that should run until shutdown ended.
    #[error("the {0} task ended unexpectedly")]
    TaskEnded(&'static str),
}

impl Error {
    /// Exit code for `main`: a refused kubeconfig is a config error (78), the rest runtime (1).
    pub fn exit_code(&self) -> i32 {
        match self {
            // Refused, or still unloadable after KUBECONFIG_GIVE_UP: restarting will not help.
            Error::Kubeconfig(_) => 78,
            _ => 1,
        }
    }
}

/// Runs the daemon until `shutdown` is cancelled (→ `Ok`) or something fatal happens.
///
/// Sends READY=1 at once (so `systemctl start` never waits for the cluster), then waits for the
/// kubeconfig, elects, watches and mirrors.
///
/// # Errors
/// [`Error`] for the failures listed there; transient API trouble is retried inside, never
/// returned.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), Error> {
    let notifier = Notifier::from_env();
    let heartbeats = Heartbeats::new();
    let metrics = Metrics::new();
    let health = Health::tracking(
        heartbeats.clone(),
        notifier
            .watchdog_interval()
            .unwrap_or(Duration::from_secs(30)),
    );
    let mut tasks: JoinSet<Result<(), Error>> = JoinSet::new();

    if let Some(listen) = config.metrics.listen {
        let (m, h, s) = (metrics.clone(), health.clone(), shutdown.clone());
        tasks.spawn(async move {
            // Metrics are for observing; they must never stop the mirroring. A port already taken
            // is reported once, loudly, and the daemon goes on without the endpoint.
            if let Err(e) = metrics::serve(listen, m, h, s.clone()).await {
                error!(listen = %listen, error = %chain(&e), "metrics endpoint disabled; mirroring goes on");
                s.cancelled().await;
            }
            Ok(())
        });
    }
    {
        let (n, b, s) = (notifier.clone(), heartbeats.clone(), shutdown.clone());
        tasks.spawn(async move {
            notify::run_watchdog(n, b, s).await;
            Ok(())
        });
    }
    notifier.ready();

    let beat = heartbeats.register("supervisor");
    let identity = match &config.lease.identity {
        Some(id) => id.clone(),
        None => crate::host::hostname().map_err(Error::Identity)?,
    };

    // First boot: RKE2 writes its kubeconfig only once the server is up. Wait for it, visibly.
    // A file that exists but does not load is retried for a while (caught mid-write), warned
    // about when the error changes, and after KUBECONFIG_GIVE_UP it is a config error (78).
    let mut load_failing: Option<(Instant, String)> = None;
    let loaded = loop {
        let found = client::locate(&config.kubeconfig);
        let attempt = match &found {
            // A configured path that does not exist yet is waited for like `auto`'s files.
            Some(path) if path.exists() => client::build(path, config.allow_insecure_tls).await,
            _ => Err(client::Error::NotFound),
        };
        match attempt {
            Ok(l) => break l,
            Err(client::Error::NotFound) => {
                notifier.status(&format!(
                    "waiting for {}",
                    client::waiting_for(&config.kubeconfig)
                ));
                debug!("no kubeconfig yet");
            }
            Err(e) if e.is_transient() => {
                let what = found.map_or_else(
                    || client::waiting_for(&config.kubeconfig),
                    |p| p.display().to_string(),
                );
                let message = chain(&e);
                let since = match &load_failing {
                    Some((since, previous)) if *previous == message => *since,
                    _ => {
                        warn!(path = %what, error = %message, "kubeconfig exists but cannot be used yet; retrying");
                        Instant::now()
                    }
                };
                if since.elapsed() >= KUBECONFIG_GIVE_UP {
                    return Err(Error::Kubeconfig(e));
                }
                notifier.status(&format!("waiting for {what}: {message}"));
                load_failing = Some((since, message));
            }
            Err(e) => return Err(Error::Kubeconfig(e)),
        }
        beat.tick();
        tokio::select! {
            () = shutdown.cancelled() => {
                notifier.stopping();
                return Ok(());
            }
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    };
    for w in &loaded.warnings {
        warn!(path = %loaded.path.display(), "{w}");
    }
    info!(path = %loaded.path.display(), server = %loaded.server, identity = %identity, "connected");
    let reloadable = Reloadable::new(loaded.client.clone());
    let client = reloadable.client();

    let settings = lease::Settings {
        namespace: config.lease.namespace.clone(),
        name: config.lease.name.clone(),
        identity: identity.clone(),
        duration: config.lease.duration,
        renew_deadline: config.lease.renew_deadline,
        retry_period: config.lease.retry_period,
    };
    let lease_api: Api<Lease> = Api::namespaced(client.clone(), &settings.namespace);
    let (elector, leadership, fence) = Elector::new(lease_api, settings);
    // The elector is a loop the watchdog must see progress from too, not only the supervisor.
    let lease_beat = heartbeats.register("lease");
    let elector = elector.with_progress(move || lease_beat.tick());
    // The Lease outlives the writers: it is released only after they drained (see below).
    let lease_stop = Shutdown::new();
    let mut elector_task = {
        let s = lease_stop.clone();
        tokio::spawn(async move { elector.run(s).await }.in_current_span())
    };
    let (event_tx, event_loop) = events::channel(client.clone(), &identity);
    let event_task = tokio::spawn(event_loop.in_current_span());

    let mut engine = Engine::new(&config, client.clone(), fence, metrics.clone(), event_tx);
    let result = engine
        .supervise(
            &config,
            &shutdown,
            leadership,
            &mut tasks,
            &mut elector_task,
            Loop {
                notifier: &notifier,
                health: &health,
                beat: &beat,
                reloadable: &reloadable,
                loaded,
            },
        )
        .await;

    // Shutdown, in the order that hands over cleanly: say so, stop watching, let the writes in
    // flight finish, then release the Lease so a peer takes over at once.
    notifier.stopping();
    notifier.status("stopping");
    info!("stopping");
    let drained = engine.drain(DRAIN_TIMEOUT).await;
    if elector_task.is_finished() {
        // It ended by itself (its error is in `result`): there is nothing left to release, and
        // its handle may already have been awaited.
    } else if !drained {
        // A write may still reach the server: do not invite a peer to write concurrently.
        // Aborting skips the release; peers take over when the Lease expires, after our fence
        // (renew deadline) has closed.
        elector_task.abort();
    } else {
        lease_stop.cancel();
        match tokio::time::timeout(RELEASE_TIMEOUT, &mut elector_task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => warn!(error = %chain(&e), "leader election ended with an error"),
            Ok(Err(e)) => warn!(error = %e, "leader election task failed"),
            Err(_) => {
                warn!(lease = %config.lease.name, "releasing the Lease timed out; peers take over when it expires");
                elector_task.abort();
            }
        }
    }
    event_task.abort();
    tasks.abort_all();
    result
}

/// Borrowed pieces the supervisor loop needs besides the engine.
struct Loop<'a> {
    notifier: &'a Notifier,
    health: &'a Health,
    beat: &'a notify::Beat,
    reloadable: &'a Reloadable,
    loaded: client::Loaded,
}

/// Per-pair bookkeeping.
#[derive(Debug)]
struct PairState {
    source: ServiceRef,
    /// Something changed since the last plan.
    dirty: bool,
    /// An apply task for this pair is running.
    in_flight: bool,
    /// Backoff: not before this instant.
    retry_at: Option<Instant>,
    /// Consecutive failures.
    attempt: u32,
    /// When the target was last seen equal to desired (after a write or an empty plan).
    synced_at: Option<Instant>,
    /// Ready endpoints in the target after the last sync.
    endpoints: usize,
    /// Why nothing is written (fail-static), if so.
    hold: Option<Hold>,
    /// The last write error, until a sync succeeds.
    last_error: Option<String>,
    /// The last Event reported, so only transitions are reported.
    reported: Option<(Reason, String)>,
    /// ECO's leftover Endpoints already checked this leadership term.
    legacy_checked: bool,
    /// The pair is gone (config, annotation or target removed): its slices are deleted, then
    /// this state is dropped. Kept as a pair so deletes get the same queue and backoff.
    retired: bool,
    /// The pair was active and is refused now: nothing is written, its slices stay as they are.
    held_by_refusal: bool,
}

impl PairState {
    fn new(source: ServiceRef) -> PairState {
        PairState {
            source,
            dirty: true,
            in_flight: false,
            retry_at: None,
            attempt: 0,
            synced_at: None,
            endpoints: 0,
            hold: None,
            last_error: None,
            reported: None,
            legacy_checked: false,
            retired: false,
            held_by_refusal: false,
        }
    }
}

/// What an apply task returns.
struct Outcome {
    target: ServiceRef,
    started: Instant,
    result: Result<Applied, apply::Error>,
    legacy_removed: Option<Result<bool, apply::Error>>,
}

/// The state the supervisor owns.
struct Engine {
    client: kube::Client,
    fence: Fence,
    metrics: Arc<Metrics>,
    events: events::Sender,
    config_pairs: Vec<(ServiceRef, ServiceRef)>,
    annotations_enabled: bool,
    allowed_sources: Vec<ServiceRef>,
    max_backoff: Duration,
    services: ServiceCache,
    slices: SliceCache,
    pairs: BTreeMap<ServiceRef, PairState>,
    refused: BTreeMap<ServiceRef, Refusal>,
    /// Refusals already reported as an Event during this leadership term.
    refusals_reported: BTreeSet<(ServiceRef, String)>,
    leader: Leadership,
    writers: JoinSet<Outcome>,
    /// Which target each running writer serves, to clean up after a panic.
    writer_targets: std::collections::HashMap<tokio::task::Id, ServiceRef>,
    /// The scan for slices of pairs removed while we were not leading (at most one running).
    scans: JoinSet<Result<BTreeSet<ServiceRef>, kube::Error>>,
    /// Whether this leadership term (or resync period) has scanned for orphaned slices.
    scanned: bool,
    /// The last watch failure, until a watch delivers again (shown in STATUS).
    last_error: Option<String>,
}

impl Engine {
    fn new(
        config: &Config,
        client: kube::Client,
        fence: Fence,
        metrics: Arc<Metrics>,
        events: events::Sender,
    ) -> Engine {
        let config_pairs: Vec<(ServiceRef, ServiceRef)> = config
            .pairs
            .iter()
            .map(|p| (p.source.clone(), p.target.clone()))
            .collect();
        let configured: BTreeSet<ServiceRef> =
            config_pairs.iter().map(|(_, t)| t.clone()).collect();
        Engine {
            client,
            fence,
            metrics,
            events,
            config_pairs,
            annotations_enabled: config.annotations.enabled,
            allowed_sources: config.annotations.allowed_sources.clone(),
            max_backoff: config.sync.max_backoff,
            services: ServiceCache::new(configured),
            slices: SliceCache::default(),
            pairs: BTreeMap::new(),
            refused: BTreeMap::new(),
            refusals_reported: BTreeSet::new(),
            leader: Leadership::Starting,
            writers: JoinSet::new(),
            writer_targets: std::collections::HashMap::new(),
            scans: JoinSet::new(),
            scanned: false,
            last_error: None,
        }
    }

    fn is_leader(&self) -> bool {
        self.leader == Leadership::Leader
    }

    async fn supervise(
        &mut self,
        config: &Config,
        shutdown: &Shutdown,
        mut leadership: tokio::sync::watch::Receiver<Leadership>,
        tasks: &mut JoinSet<Result<(), Error>>,
        elector_task: &mut tokio::task::JoinHandle<Result<(), lease::Error>>,
        mut lp: Loop<'_>,
    ) -> Result<(), Error> {
        let mut service_events = watch::services(&self.client);
        let mut slice_events: Option<watch::Events<EndpointSlice>> = None;
        let mut resync = tokio::time::interval_at(
            Instant::now() + config.sync.resync_interval,
            config.sync.resync_interval,
        );
        let mut tick = tokio::time::interval(TICK);
        let mut kubeconfig_poll = tokio::time::interval(KUBECONFIG_POLL);
        let never = Instant::now() + Duration::from_secs(86_400 * 365);

        loop {
            let next_retry = self.next_retry().unwrap_or(never);
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                changed = leadership.changed() => {
                    if changed.is_err() {
                        // The elector dropped its sender: it ended; its JoinHandle says why.
                        return match elector_task.await {
                            Ok(Err(e)) => Err(Error::Lease(e)),
                            _ => Err(Error::TaskEnded("leader election")),
                        };
                    }
                    let now = leadership.borrow_and_update().clone();
                    self.set_leadership(now);
                }
                Some(event) = service_events.next() => match event {
                    Ok(event) => {
                        self.last_error = None;
                        let changed = self.services.apply(event);
                        if self.services.is_ready() {
                            self.resolve(&changed);
                            self.rewatch_slices(&mut slice_events);
                        }
                    }
                    Err(e) => self.watch_error("services", &e),
                },
                Some(event) = next_event(&mut slice_events) => match event {
                    Ok(event) => {
                        self.last_error = None;
                        let changed = self.slices.apply(event);
                        self.mark_services_dirty(&changed);
                    }
                    Err(e) => self.watch_error("endpointslices", &e),
                },
                Some(done) = self.writers.join_next_with_id(), if !self.writers.is_empty() => {
                    self.joined(done);
                }
                Some(done) = self.scans.join_next(), if !self.scans.is_empty() => {
                    match done {
                        Ok(Ok(targets)) => {
                            self.adopt_orphans(targets);
                            self.rewatch_slices(&mut slice_events);
                        }
                        Ok(Err(e)) => {
                            // Retried at the next resync; nothing depends on it meanwhile.
                            warn!(error = %chain(&e), "could not list our EndpointSlices to find removed pairs");
                            self.scanned = false;
                        }
                        Err(e) => error!(error = %e, "orphan scan task failed"),
                    }
                }
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    return match done {
                        Ok(Err(e)) => Err(e),
                        Ok(Ok(())) if shutdown.is_cancelled() => Ok(()),
                        _ => Err(Error::TaskEnded("metrics or watchdog")),
                    };
                }
                () = tokio::time::sleep_until(next_retry) => {
                    let now = Instant::now();
                    for state in self.pairs.values_mut() {
                        if state.retry_at.is_some_and(|t| t <= now) {
                            state.retry_at = None;
                            state.dirty = true;
                        }
                    }
                }
                _ = resync.tick() => {
                    debug!("periodic resync");
                    self.scanned = false;
                    self.mark_all_dirty();
                    for state in self.pairs.values_mut() {
                        state.legacy_checked = false;
                    }
                }
                _ = kubeconfig_poll.tick() => self.maybe_reload(config, &mut lp, false).await,
                () = lp.reloadable.unauthorized() => {
                    warn!(path = %lp.loaded.path.display(), "the API server answered 401 Unauthorized; re-reading the kubeconfig");
                    self.maybe_reload(config, &mut lp, true).await;
                }
                _ = tick.tick() => {
                    lp.beat.tick();
                    self.publish_status(lp.notifier, lp.health, &lp.loaded.server);
                }
            }
            self.dispatch();
        }
    }

    fn set_leadership(&mut self, now: Leadership) {
        if now == self.leader {
            return;
        }
        match &now {
            Leadership::Leader => {
                // Events are the leader's job: a new leader reports the standing refusals again.
                self.refusals_reported.clear();
                // Pairs may have been removed while another copy (or none) led.
                self.scanned = false;
                // A new leader plans every pair from its (warm) caches before its first write;
                // preconditions on every write catch anything the caches have not seen yet.
                self.mark_all_dirty();
                for state in self.pairs.values_mut() {
                    state.attempt = 0;
                    state.retry_at = None;
                    state.legacy_checked = false;
                    state.reported = None;
                }
            }
            _ => {
                // Writers check the fence before every request; aborting them also stops retries.
                self.writers.abort_all();
                self.scans.abort_all();
                for state in self.pairs.values_mut() {
                    state.in_flight = false;
                }
            }
        }
        let holder = |l: &Leadership| match l {
            Leadership::Leader => Some(None),
            Leadership::Follower { holder } => Some(holder.clone()),
            Leadership::Starting => None,
        };
        // A transition is a change of holder we can see: us ↔ someone, or one peer to another.
        if let (Some(before), Some(after)) = (holder(&self.leader), holder(&now))
            && (before != after
                || (self.leader == Leadership::Leader) != (now == Leadership::Leader))
        {
            self.metrics.lease_transition();
        }
        self.metrics.set_leader(now == Leadership::Leader);
        self.leader = now;
    }

    /// Recomputes the pairs after Services changed.
    fn resolve(&mut self, changed: &BTreeSet<ServiceRef>) {
        let resolution = pairs::resolve(
            &self.config_pairs,
            self.annotations_enabled,
            &self.allowed_sources,
            self.services.objects(),
        );
        let active: BTreeMap<ServiceRef, Pair> = resolution
            .pairs
            .into_iter()
            .map(|p| (p.target.clone(), p))
            .collect();
        let refused: BTreeMap<ServiceRef, Refusal> = resolution
            .refusals
            .into_iter()
            .map(|r| (r.target.clone(), r))
            .collect();
        // Pairs that went away: their slices are deleted (only removing a pair removes slices).
        // A pair that is refused now is not removed: it is held, its slices untouched, until the
        // refusal is fixed ("never half-applied" — and never a VIP blanked by a bad annotation).
        for (target, state) in &mut self.pairs {
            let is_refused = refused.contains_key(target) && !active.contains_key(target);
            state.held_by_refusal = is_refused;
            if !state.retired && !active.contains_key(target) && !is_refused {
                info!(service = %target, "pair removed; deleting its EndpointSlices");
                state.retired = true;
                state.dirty = true;
                state.hold = None;
            }
        }
        for (target, pair) in active {
            match self.pairs.get_mut(&target) {
                Some(state) if state.source == pair.source && !state.retired => {
                    if changed.contains(&target) {
                        state.dirty = true;
                    }
                }
                Some(state) => {
                    // The source changed, or a removed pair came back: same target, so keep what
                    // protects its writes (one in flight, backoff) and plan afresh.
                    info!(service = %target, source = %pair.source, origin = %pair.origin, "pair active");
                    state.source = pair.source;
                    state.retired = false;
                    state.hold = None;
                    state.dirty = true;
                }
                None => {
                    info!(service = %target, source = %pair.source, origin = %pair.origin, "pair active");
                    self.pairs.insert(target, PairState::new(pair.source));
                }
            }
        }
        for (target, refusal) in &refused {
            let is_new = self
                .refused
                .get(target)
                .is_none_or(|old| old.reason.to_string() != refusal.reason.to_string());
            if is_new {
                warn!(service = %target, reason = %refusal.reason, "pair refused; nothing is written for it");
            }
        }
        self.refused = refused;
        self.metrics.set_pairs(
            self.pairs.values().filter(|s| !s.retired).count(),
            self.refused.len(),
        );
    }

    /// Restarts the slice watch when the set of Services in play changed.
    fn rewatch_slices(&mut self, slice_events: &mut Option<watch::Events<EndpointSlice>>) {
        let wanted = self.wanted_services();
        if &wanted != self.slices.wanted() || slice_events.is_none() {
            debug!(
                services = wanted.len(),
                "watching EndpointSlices of a new set of Services"
            );
            self.slices.rewatch(wanted.clone());
            *slice_events = watch::slices(&self.client, &wanted);
        }
    }

    /// Lists (metadata only, one request) every EndpointSlice we manage in the cluster, so that
    /// slices of pairs removed while this copy was not leading — an annotation dropped while the
    /// daemon was down — are found and deleted. Without it they would stay forever.
    fn scan_for_orphans(&mut self) {
        self.scanned = true;
        let api: Api<EndpointSlice> = Api::all(self.client.clone());
        let selector = format!(
            "{}={}",
            crate::names::MANAGED_BY_LABEL,
            crate::names::MANAGED_BY
        );
        self.scans.spawn(
            async move {
                let list = tokio::time::timeout(
                    apply::REQUEST_TIMEOUT,
                    api.list_metadata(&kube::api::ListParams::default().labels(&selector)),
                )
                .await
                .map_err(|_| {
                    kube::Error::Service("listing our EndpointSlices timed out".into())
                })??;
                Ok(list
                    .items
                    .iter()
                    .filter_map(|s| {
                        let namespace = s.metadata.namespace.clone()?;
                        let name = s
                            .metadata
                            .labels
                            .as_ref()?
                            .get(crate::names::SERVICE_NAME_LABEL)?
                            .clone();
                        Some(ServiceRef { namespace, name })
                    })
                    .collect())
            }
            .in_current_span(),
        );
    }

    /// Targets holding our slices that no pair claims become retired pairs: their slices go.
    fn adopt_orphans(&mut self, targets: BTreeSet<ServiceRef>) {
        for target in targets {
            // A refused target keeps its slices (held), like a pair refused while running.
            if self.pairs.contains_key(&target) || self.refused.contains_key(&target) {
                continue;
            }
            info!(service = %target, "found EndpointSlices of a removed pair; deleting them");
            let mut state = PairState::new(target.clone());
            state.retired = true;
            self.pairs.insert(target, state);
        }
    }

    /// Every Service whose slices we need: sources and targets of active pairs, and retired
    /// targets until their slices are gone.
    fn wanted_services(&self) -> BTreeSet<ServiceRef> {
        let mut wanted = BTreeSet::new();
        for (target, state) in &self.pairs {
            wanted.insert(target.clone());
            if !state.retired {
                wanted.insert(state.source.clone());
            }
        }
        wanted
    }

    fn mark_services_dirty(&mut self, changed: &BTreeSet<ServiceRef>) {
        for (target, state) in &mut self.pairs {
            if changed.contains(target) || changed.contains(&state.source) {
                state.dirty = true;
            }
        }
    }

    fn mark_all_dirty(&mut self) {
        for state in self.pairs.values_mut() {
            state.dirty = true;
        }
    }

    fn next_retry(&self) -> Option<Instant> {
        self.pairs.values().filter_map(|s| s.retry_at).min()
    }

    fn watch_error(&mut self, watch: &'static str, e: &watcher::Error) {
        // kube's watcher re-lists on 410 and backs off on failures by itself; we count and say.
        self.metrics.watch_restart(watch);
        if let watcher::Error::WatchError(s)
        | watcher::Error::InitialListFailed(kube::Error::Api(s)) = e
        {
            self.metrics.record_api_error(s.code);
        }
        warn!(watch, error = %chain(e), "watch failed; retrying with backoff");
        self.last_error = Some(format!("{watch} watch: {e}"));
    }

    /// Plans every dirty pair that may be planned now and starts its writes.
    fn dispatch(&mut self) {
        if !self.services.is_ready() || !self.slices.is_ready() {
            return;
        }
        if !self.is_leader() {
            return;
        }
        if !self.scanned && self.scans.is_empty() {
            self.scan_for_orphans();
        }
        let now = Instant::now();
        let unreported: Vec<(ServiceRef, String)> = self
            .refused
            .iter()
            .map(|(t, r)| (t.clone(), r.reason.to_string()))
            .filter(|k| !self.refusals_reported.contains(k))
            .collect();
        for (target, note) in unreported {
            self.report(&target, Reason::Refused, note.clone());
            self.refusals_reported.insert((target, note));
        }
        let targets: Vec<ServiceRef> = self
            .pairs
            .iter()
            .filter(|(_, s)| {
                s.dirty && !s.in_flight && !s.held_by_refusal && s.retry_at.is_none_or(|t| t <= now)
            })
            .map(|(t, _)| t.clone())
            .collect();
        for target in targets {
            if self.writers.len() >= MAX_IN_FLIGHT {
                break;
            }
            self.sync_pair(&target, now);
        }
    }

    fn sync_pair(&mut self, target: &ServiceRef, now: Instant) {
        let Some(state) = self.pairs.get_mut(target) else {
            return;
        };
        state.dirty = false;
        let source = state.source.clone();
        let actual = self.slices.slices_of(target);
        let target_svc = if state.retired {
            None
        } else {
            self.services.objects().get(target)
        };
        let plan = match target_svc {
            // The pair or its target Service is gone: nothing to protect, our slices go.
            None => {
                if !state.retired {
                    state.hold = Some(Hold::TargetMissing);
                }
                desired::plan(target, &[], &actual)
            }
            Some(svc) => {
                let source_slices = self.slices.slices_of(&source);
                match desired::desired(&source, target, svc, &source_slices) {
                    Ok(d) => {
                        state.hold = None;
                        desired::plan(target, &d, &actual)
                    }
                    Err(hold) => {
                        // Fail-static: the target keeps what it has.
                        let kept = desired::ready_endpoints(&actual);
                        if state.hold.as_ref() != Some(&hold) {
                            warn!(service = %target, source = %source, endpoints = kept, reason = %hold, "holding the target's EndpointSlices as they are");
                        }
                        state.hold = Some(hold);
                        let reason = match hold {
                            Hold::NoSourceSlices => Some(Reason::SourceMissing),
                            Hold::NoEndpoints => Some(Reason::SourceEmpty),
                            _ => None,
                        };
                        if let Some(reason) = reason {
                            let note =
                                format!("{hold}; keeping the {kept} ready endpoints of {target}");
                            self.report(target, reason, note);
                        }
                        return;
                    }
                }
            }
        };
        if plan.is_empty() && self.pairs.get(target).is_some_and(|s| s.retired) {
            // Every slice of a removed pair is gone: forget it (and stop watching its slices on
            // the next Service change).
            self.pairs.remove(target);
            self.metrics.forget_pair(&target.to_string());
            return;
        }
        if plan.is_empty() {
            let state = self.pairs.get_mut(target).map(|s| {
                s.synced_at = Some(now);
                s.attempt = 0;
                s.last_error = None;
                s.endpoints = desired::ready_endpoints(&actual);
            });
            if state.is_some() {
                self.metrics.writes_skipped();
                self.record_endpoints(target, &actual);
            }
            if !self.pairs.get(target).is_some_and(|s| s.legacy_checked) {
                self.spawn_write(target, Plan::default(), now);
            }
            return;
        }
        debug!(service = %target, creates = plan.creates.len(), updates = plan.updates.len(), deletes = plan.deletes.len(), "applying plan");
        self.spawn_write(target, plan, now);
    }

    fn spawn_write(&mut self, target: &ServiceRef, plan: Plan, started: Instant) {
        let Some(state) = self.pairs.get_mut(target) else {
            return;
        };
        state.in_flight = true;
        let check_legacy = !state.legacy_checked && !state.retired;
        let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), &target.namespace);
        let legacy_api: Api<Endpoints> = Api::namespaced(self.client.clone(), &target.namespace);
        let (fence, metrics, target_ref) =
            (self.fence.clone(), self.metrics.clone(), target.clone());
        let target = target_ref.clone();
        let handle = self.writers.spawn(
            async move {
                let result = apply::apply(&api, &target.namespace, &plan, &fence, &metrics).await;
                // After our slices are in place, so the VIP never depends on the legacy object.
                let legacy_removed = match (&result, check_legacy) {
                    (Ok(_), true) => Some(
                        apply::remove_eco_endpoints(
                            &legacy_api,
                            &target.namespace,
                            &target.name,
                            &fence,
                        )
                        .await,
                    ),
                    _ => None,
                };
                Outcome {
                    target,
                    started,
                    result,
                    legacy_removed,
                }
            }
            .in_current_span(),
        );
        self.writer_targets.insert(handle.id(), target_ref);
    }

    fn finish(&mut self, outcome: Outcome) {
        let Outcome {
            target,
            started,
            result,
            legacy_removed,
        } = outcome;
        let elapsed = started.elapsed();
        if let Some(state) = self.pairs.get_mut(&target) {
            state.in_flight = false;
        }
        match legacy_removed {
            Some(Ok(removed)) => {
                if removed {
                    info!(service = %target, "removed endpoint-copier-operator's leftover Endpoints");
                }
                if let Some(s) = self.pairs.get_mut(&target) {
                    s.legacy_checked = true;
                }
            }
            Some(Err(e)) => {
                warn!(service = %target, error = %chain(&e), "could not check for endpoint-copier-operator's leftover Endpoints");
                if let Some(s) = self.pairs.get_mut(&target) {
                    s.dirty = true;
                    s.attempt += 1;
                    s.retry_at = Some(Instant::now() + backoff(s.attempt, self.max_backoff));
                }
            }
            None => {}
        }
        match result {
            Ok(applied) => {
                let actual = self.slices.slices_of(&target);
                if applied.writes() > 0 {
                    self.metrics.observe_sync(elapsed);
                    let source = self
                        .pairs
                        .get(&target)
                        .map(|s| s.source.to_string())
                        .unwrap_or_default();
                    info!(service = %target, source = %source, created = applied.created, updated = applied.updated, deleted = applied.deleted, "target EndpointSlices updated");
                    if self.pairs.get(&target).is_some_and(|s| !s.retired) {
                        self.report(
                            &target,
                            Reason::Synced,
                            format!(
                                "mirrored {source}: {} created, {} updated, {} deleted",
                                applied.created, applied.updated, applied.deleted
                            ),
                        );
                    }
                }
                if let Some(state) = self.pairs.get_mut(&target) {
                    state.attempt = 0;
                    state.retry_at = None;
                    state.synced_at = Some(Instant::now());
                    state.last_error = None;
                    state.endpoints = desired::ready_endpoints(&actual);
                    self.metrics.set_last_sync(&target.to_string());
                }
            }
            Err(e) if matches!(e, apply::Error::NotLeader { .. }) => {
                // Our term ended mid-plan. Keep the pair dirty: if the elector re-acquires before
                // the supervisor notices the gap, nothing else would re-plan it.
                debug!(service = %target, error = %chain(&e), "write skipped: not the leader");
                if let Some(state) = self.pairs.get_mut(&target) {
                    state.dirty = true;
                }
            }
            Err(e) => {
                let Some(state) = self.pairs.get_mut(&target) else {
                    return;
                };
                state.attempt += 1;
                let delay = e
                    .retry_after()
                    .unwrap_or_else(|| backoff(state.attempt, self.max_backoff));
                state.retry_at = Some(Instant::now() + delay);
                state.dirty = true;
                let chain = chain(&e);
                let attempt = state.attempt;
                state.last_error = Some(chain.clone());
                let backoff_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
                if e.is_conflict() {
                    debug!(service = %target, attempt, backoff_ms, error = %chain, "conflict; re-planning");
                } else if e.is_transient() {
                    warn!(service = %target, attempt, backoff_ms, error = %chain, "write failed; retrying");
                } else {
                    error!(service = %target, attempt, backoff_ms, error = %chain, "write refused; retrying until fixed");
                }
                if !e.is_conflict() {
                    self.report(&target, Reason::WriteFailed, chain);
                }
            }
        }
    }

    fn report(&mut self, target: &ServiceRef, reason: Reason, note: String) {
        if !self.is_leader() {
            return;
        }
        if let Some(state) = self.pairs.get_mut(target) {
            let key = (reason, note.clone());
            if state.reported.as_ref() == Some(&key) {
                return;
            }
            state.reported = Some(key);
        }
        let uid = self
            .services
            .objects()
            .get(target)
            .and_then(|s| s.metadata.uid.clone());
        self.events.send(Report {
            target: target.clone(),
            uid,
            reason,
            note,
        });
    }

    fn record_endpoints(&self, target: &ServiceRef, slices: &[EndpointSlice]) {
        for family in ["IPv4", "IPv6"] {
            let of_family: Vec<EndpointSlice> = slices
                .iter()
                .filter(|s| s.address_type == family)
                .cloned()
                .collect();
            let total: usize = of_family.iter().map(|s| s.endpoints.len()).sum();
            let ready = desired::ready_endpoints(&of_family);
            self.metrics
                .set_endpoints(&target.to_string(), family, ready, total - ready);
        }
    }

    async fn maybe_reload(&mut self, config: &Config, lp: &mut Loop<'_>, force: bool) {
        let path = client::locate(&config.kubeconfig).unwrap_or_else(|| lp.loaded.path.clone());
        let now = client::Fingerprint::of(&path);
        if !force && now == lp.loaded.fingerprint && path == lp.loaded.path {
            return;
        }
        if now.is_none() {
            // Mid-rename or removed: keep the client we have; the next poll looks again.
            return;
        }
        match client::build(&path, config.allow_insecure_tls).await {
            Ok(next) => {
                info!(path = %path.display(), "kubeconfig changed; reconnecting with the new credentials");
                lp.reloadable.swap(next.client.clone());
                lp.loaded = next;
            }
            Err(e) => {
                warn!(path = %path.display(), error = %chain(&e), "kubeconfig changed but cannot be used; keeping the previous credentials");
                // Do not retry every poll on the same broken file: remember its fingerprint.
                lp.loaded.fingerprint = now;
            }
        }
    }

    fn publish_status(&self, notifier: &Notifier, health: &Health, server: &str) {
        let role = match &self.leader {
            // Neither the Lease nor the first list came back yet: say what we wait for.
            Leadership::Starting if !self.services.is_ready() => {
                Role::Waiting(format!("the API server at {server}"))
            }
            Leadership::Starting => Role::Starting,
            Leadership::Leader => Role::Leader,
            Leadership::Follower { holder } => Role::Follower(holder.clone()),
        };
        let now = Instant::now();
        // Per-pair counts are the leader's: a follower does not sync, and its line says who does.
        let pairs: Vec<PairStatus> = self
            .pairs
            .iter()
            .filter(|_| self.is_leader())
            .filter(|(_, s)| !s.retired)
            .map(|(target, s)| PairStatus {
                target: target.to_string(),
                endpoints: s.endpoints,
                synced_ago: s.synced_at.map(|t| now.duration_since(t)),
                holding: s.hold.as_ref().map(ToString::to_string),
            })
            .collect();
        let last_error = self
            .pairs
            .values()
            .find_map(|s| s.last_error.clone())
            .or_else(|| self.last_error.clone());
        notifier.status(&notify::status_line(&StatusView {
            role,
            pairs,
            last_error,
        }));
        let in_sync = self
            .pairs
            .values()
            .all(|s| !s.dirty && !s.in_flight && s.last_error.is_none() && s.synced_at.is_some());
        let watching = self.services.is_ready() && self.slices.is_ready();
        let ready = match self.leader {
            Leadership::Leader => watching && in_sync,
            Leadership::Follower { .. } => watching,
            Leadership::Starting => false,
        };
        health.set_ready(ready);
    }

    /// A writer task ended: its outcome, or why it has none.
    fn joined(&mut self, done: Result<(tokio::task::Id, Outcome), tokio::task::JoinError>) {
        match done {
            Ok((id, outcome)) => {
                self.writer_targets.remove(&id);
                self.finish(outcome);
            }
            Err(e) => {
                let target = self.writer_targets.remove(&e.id());
                let state = target.as_ref().and_then(|t| self.pairs.get_mut(t));
                if let Some(state) = state {
                    state.in_flight = false;
                    if !e.is_cancelled() {
                        // A panic: retried like any failed write, after a backoff.
                        state.dirty = true;
                        state.attempt += 1;
                        state.retry_at =
                            Some(Instant::now() + backoff(state.attempt, self.max_backoff));
                    }
                }
                if !e.is_cancelled() {
                    error!(service = ?target, error = %e, "apply task failed");
                }
            }
        }
    }

    /// Waits (bounded) for writes in flight; aborts what is left. Returns whether every write
    /// finished: if one was abandoned it may still reach the server, so the Lease must not be
    /// released (peers then take over only when it expires, after our fence has closed).
    async fn drain(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while !self.writers.is_empty() {
            match tokio::time::timeout_at(deadline, self.writers.join_next_with_id()).await {
                Ok(Some(done)) => self.joined(done),
                Ok(None) => break,
                Err(_) => {
                    warn!(
                        "writes still in flight at shutdown were abandoned; not releasing the Lease"
                    );
                    self.writers.abort_all();
                    return false;
                }
            }
        }
        true
    }
}

/// The next event of an optional stream; pending forever when there is none.
async fn next_event<K>(
    events: &mut Option<watch::Events<K>>,
) -> Option<Result<watcher::Event<K>, watcher::Error>> {
    match events {
        Some(s) => s.next().await,
        None => futures::future::pending().await,
    }
}

/// Capped exponential backoff with full jitter: uniformly in [base·2^(n-1)/2, base·2^(n-1)],
/// never above `max`.
pub fn backoff(attempt: u32, max: Duration) -> Duration {
    let exp = BACKOFF_BASE.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let ceiling = exp.min(max);
    let half = ceiling / 2;
    half + half.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let max = Duration::from_secs(30);
        for attempt in 1..40 {
            let d = backoff(attempt, max);
            assert!(d <= max, "attempt {attempt}: {d:?}");
        }
        assert!(backoff(1, max) <= BACKOFF_BASE);
        assert!(backoff(30, max) >= max / 2);
    }

    #[test]
    fn the_error_chain_lists_every_cause() {
        let inner = std::io::Error::other("connection refused");
        let outer = client::Error::Build {
            path: "/etc/rancher/rke2/rke2.yaml".into(),
            source: kube::Error::Service(Box::new(inner)),
        };
        let chain = chain(&outer);
        assert!(
            chain.starts_with(
                "failed to build a Kubernetes client from '/etc/rancher/rke2/rke2.yaml': "
            ),
            "{chain}"
        );
        assert!(chain.contains("connection refused"), "{chain}");
    }
}
