//! The daemon: start-up, the engine, and the shutdown order that hands over cleanly.
//!
//! ```text
//!  kubeconfig::wait ─► client ─► Elector task ─────────► Leadership (watch channel) + Fence
//!                                Service watch ──────┐
//!                                slice watches (per ns)┼─► engine: caches ─► pairs ─► schedule
//!                                resync tick ────────┘                                │
//!                         (leader only) plan_for ─► task: apply (≤ 1 per pair) ◄──────┘
//! ```
//!
//! A source change reaches the write in five named steps (also in
//! `docs/development/architecture.md`): 1. [`crate::watch::SliceWatches::next`] yields the event;
//! 2. `Engine::on_slices` updates the cache and touches the pairs that read it; 3. `Engine::dispatch`
//! picks the pairs whose schedule is due; 4. `Engine::start_write` computes
//! [`crate::desired::step::plan_for`] and
//! spawns the write; 5. [`crate::apply::apply`] writes, fenced by the Lease.
//!
//! Modules: `kubeconfig` (wait, reload), `settings` (what the engine is told once), `engine`
//! (the one `select!` loop, leadership, pair resolution) and the sub-states it owns, each in
//! the file whose handlers change it — `caches` (Services, slices, their watches and errors by
//! `scope`), `members` (the group's members; whether ballots can be counted, else evictions
//! stay as written), `nodes` (Nodes, drains), `sources` (remote views), `probes` (verdicts,
//! quorum decisions), `tasks` (the task table) —; `pair` (per-pair state as enums), `schedule`
//! (pure: when work runs next), `dispatch` (what is due, a plan into a write), `jobs` (the tasks
//! the engine spawns), `outcome` (what a finished task changes), `status` (STATUS, readiness,
//! Events), `reported` (the one report-on-change memory), `supervise` (every long-lived task in
//! one named set: one that ends stops the daemon with its name).
//!
//! [`run_with`] is the one seam to the world outside the config: an [`Environment`] says how
//! the API client connects and how probes dial. [`run`] passes a host's (TCP and TLS); the
//! simulator (`tests/sim/`, docs/development/testing.md "Simulator") passes its in-memory
//! network, so that several real daemons run in one process under a virtual clock. Every task
//! `run_with` starts is supervised and aborted with its future (a simulated host crashing).

mod caches;
mod dispatch;
mod engine;
mod jobs;
mod kubeconfig;
mod members;
mod nodes;
mod outcome;
pub mod pair;
mod probes;
mod reported;
pub mod schedule;
mod scope;
mod settings;
mod sources;
mod status;
mod supervise;
mod tasks;
#[cfg(test)]
mod tests;

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use tracing::{Instrument, error, info, warn};

use crate::client;
use crate::config::Config;
use crate::error::chain;
use crate::events;
use crate::group::{self, Group, MemberRecord};
use crate::lease::{self, Elector};
use crate::metrics::{self, Health, Metrics};
use crate::notify::{self, Heartbeats, Notifier};
use crate::shutdown::Shutdown;

/// How long a stopping leader waits for its in-flight writes before it abandons them.
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
    /// Another live copy holds our runtime lock (`[lease] runtime_dir`): refused at start.
    #[error("refusing to start a second copy")]
    RuntimeLock(#[source] lease::runtime::Error),
    /// A task that should run until shutdown ended.
    #[error("the {0} task ended unexpectedly")]
    TaskEnded(&'static str),
}

/// The member timings from `[members]`.
fn member_settings(config: &Config) -> group::Settings {
    group::Settings {
        heartbeat: config.members.heartbeat,
        expiry: config.members.expiry,
        forget_after: config.members.forget_after,
    }
}

/// The copier group of `config`: elected by `[lease]`'s Lease, members in `[members] namespace`.
pub(crate) fn group_of(config: &Config) -> Group {
    Group::configured(config)
}

/// How the daemon reaches the world outside its config: the API server and the probed
/// endpoints. [`Environment::default`] is a host's: TCP, TLS from the kubeconfig.
///
/// Everything else a daemon touches on its host is config already: the health server
/// (`[metrics] listen`, none in tests), the runtime directory (`[lease] runtime_dir`), the Lease
/// identity (`[lease] identity`), sd-notify (`NOTIFY_SOCKET`, absent outside systemd); logging
/// is `main`'s. Random choices (backoff jitter, the process nonce) come from `fastrand`'s
/// thread-local generator, which a caller running every copy on one thread seeds with
/// `fastrand::seed`.
#[derive(Clone, Debug, Default)]
pub struct Environment {
    /// How the API client connects (the kubeconfig's client and every client rebuilt from it).
    pub connector: client::transport::Connector,
    /// How the probes dial endpoint addresses.
    pub dialer: crate::probe::Dialer,
    /// The wall clock what the daemon writes is stamped with.
    pub clock: crate::clock::Clock,
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
    run_with(config, shutdown, Environment::default()).await
}

/// [`run`] in `environment`: the API client connects and the probes dial as it says.
///
/// # Errors
/// As [`run`].
pub async fn run_with(
    config: Config,
    shutdown: Shutdown,
    environment: Environment,
) -> Result<(), Error> {
    // First of all, before any port or API is touched: a second live copy sharing our runtime
    // directory is refused (exit 1; under systemd that copy can only be a manual run, and the
    // unit retries until it is gone). An unusable directory only costs the fast restart.
    let runtime_lock = match &config.lease.runtime_dir {
        None => None,
        Some(dir) => match lease::RuntimeLock::acquire(dir) {
            Ok(lock) => Some(lock),
            Err(e @ lease::runtime::Error::Held { .. }) => return Err(Error::RuntimeLock(e)),
            Err(e) => {
                warn!(error = %chain(&e), "no runtime lock: after a crash this copy waits out its own old claim on the Lease");
                None
            }
        },
    };
    let notifier = Notifier::from_env();
    let heartbeats = Heartbeats::new();
    let metrics = Metrics::new();
    let health = Health::tracking(
        heartbeats.clone(),
        notifier
            .watchdog_interval()
            .unwrap_or(Duration::from_secs(30)),
    );
    let mut supervised = supervise::Supervised::default();

    if let Some(listen) = config.metrics.listen {
        let (m, h, s) = (metrics.clone(), health.clone(), shutdown.clone());
        supervised.spawn("metrics", async move {
            // Metrics are for observing; they must never stop the mirroring. A port already taken
            // is reported once, loudly, and the daemon goes on without the endpoint.
            if let Err(e) = metrics::serve(listen, m, h, s.clone()).await {
                error!(listen = %listen, error = %chain(&e), "metrics endpoint disabled; mirroring goes on");
            }
            s.cancelled().await;
            Ok(())
        });
    }
    {
        let (n, b, s) = (notifier.clone(), heartbeats.clone(), shutdown.clone());
        supervised.spawn("watchdog", async move {
            notify::run_watchdog(n, b, s).await;
            Ok(())
        });
    }
    notifier.ready();

    let beat = heartbeats.register("engine");
    let identity = match &config.lease.identity {
        Some(id) => id.clone(),
        None => crate::host::hostname().map_err(Error::Identity)?,
    };
    let Some(loaded) =
        kubeconfig::wait(&config, &environment.connector, &notifier, &beat, &shutdown).await?
    else {
        notifier.stopping();
        return Ok(());
    };
    for w in &loaded.warnings {
        warn!(path = %loaded.path.display(), "{w}");
    }
    info!(path = %loaded.path.display(), server = %loaded.server, identity = %identity, "connected");
    let (probe_config, probe_config_rx) = tokio::sync::watch::channel(loaded.config.clone());
    let credentials = client::Credentials::new(loaded, config.allow_insecure_tls, "kubeconfig")
        .with_connector(environment.connector.clone());
    let client = credentials.reloadable.client();

    let settings = lease::Settings {
        namespace: config.lease.namespace.clone(),
        name: config.lease.name.clone(),
        identity: identity.clone(),
        duration: config.lease.duration,
        renew_deadline: config.lease.renew_deadline,
        retry_period: config.lease.retry_period,
    };
    // One nonce per process, in its member record and its claims: two live processes under one
    // identity are told apart by it (group::twins), and what each learns goes into `self_health`.
    let nonce = group::twins::fresh_nonce();
    let self_health = group::SelfHealth::new(2 * config.members.expiry);
    let lease_api: Api<Lease> = Api::namespaced(client.clone(), &settings.namespace);
    let (elector, leadership, fence) = Elector::new(lease_api, settings);
    let elector = elector
        .with_twin_watch(&nonce, self_health.clone())
        .with_clock(environment.clock.clone());
    // The elector is a loop the watchdog must see progress from too, not only the engine.
    let lease_beat = heartbeats.register("lease");
    let elector = elector.with_progress(move || lease_beat.tick());
    let elector = match runtime_lock {
        Some(lock) => elector.with_runtime_lock(lock),
        None => elector,
    };
    // The Lease outlives the writers: it is released only after they drained (see below).
    let lease_stop = Shutdown::new();
    supervised.elector({
        let s = lease_stop.clone();
        tokio::spawn(async move { elector.run(s).await }.in_current_span())
    });
    // Every copy, leader or not, says which pairs it has configured, so that a leader never
    // deletes the slices of a pair another live copy of the group still wants.
    let group = group_of(&config);
    // With this version and each pair's digest, so that the leader sees versions and
    // configurations that differ (group::skew).
    let record = MemberRecord::of_config(&identity, &config.pairs).with_nonce(&nonce);
    // The pairs are fixed for the process's life (no config reload); the engine puts this copy's
    // probe verdicts into the record as they change.
    let (record_tx, record_rx) = tokio::sync::watch::channel(record);
    {
        let api: Api<Lease> = Api::namespaced(client.clone(), group.members_namespace());
        let (g, settings, s) = (group.clone(), member_settings(&config), shutdown.clone());
        let (h, clock) = (self_health.clone(), environment.clock.clone());
        supervised.spawn("member publisher", async move {
            // Never gives up: what it cannot write it reports through `self_health`.
            group::publish(api, g, record_rx, settings, h, clock, s).await;
            Ok(())
        });
    }
    let (event_tx, event_loop) =
        events::channel(client.clone(), &identity, environment.clock.clone());
    supervised.adopt("events", tokio::spawn(event_loop.in_current_span()));

    let members = group::Members::new(member_settings(&config), &identity);
    // Every copy probes, leader or not: its verdicts are its ballot. The prober's tasks never
    // block the engine; a report waits only when the engine is behind by 64 verdict changes.
    let (report_tx, report_rx) = tokio::sync::mpsc::channel(64);
    let (probe_state, wanted_rx) =
        probes::ProbeState::new(record_tx, report_rx, config.probe.max_targets, self_health);
    let prober = crate::probe::spawn(
        wanted_rx,
        probe_config_rx,
        crate::probe::Reach {
            server_name: config.probe.tls_server_name.clone(),
            dialer: environment.dialer.clone(),
        },
        config.probe.timing,
        report_tx,
        metrics.clone(),
        shutdown.clone(),
    );
    supervised.adopt("prober", prober);
    let io = engine::Io {
        client,
        fence,
        metrics: metrics.clone(),
        events: event_tx,
        clock: environment.clock.clone(),
    };
    let mut engine = engine::Engine::new(settings::Settings::of(&config), io, members, probe_state);
    // Sources in other clusters: one client per kubeconfig, watched whether this copy leads or
    // not, so that a new leader plans from warm views.
    let remote_sources = config.remote_sources();
    if !remote_sources.is_empty() {
        let remotes = crate::remote::spawn(
            remote_sources,
            crate::remote::Options {
                allow_insecure_tls: config.allow_insecure_tls,
                keep_last_known: config.sync.keep_last_known,
                connector: environment.connector.clone(),
            },
            engine.remote_sender(),
            shutdown.clone(),
        );
        supervised.adopt("remote sources", remotes);
    }
    let mut host = engine::Host {
        notifier: &notifier,
        health: &health,
        beat: &beat,
        credentials: kubeconfig::NodeCredentials {
            current: credentials,
            probe_config,
            kubeconfig: config.kubeconfig.clone(),
        },
    };
    let result = engine
        .run(&shutdown, leadership, &mut supervised, &mut host)
        .await;

    // Shutdown, in the order that hands over cleanly: say so, stop watching, let the writes in
    // flight finish, then release the Lease so a peer takes over at once.
    notifier.stopping();
    info!("stopping");
    let abandoned = engine.drain(DRAIN_TIMEOUT).await;
    // `None` once it ended by itself (its error is in `result`): nothing left to release.
    if let Some(mut elector_task) = supervised.take_elector().filter(|t| !t.is_finished()) {
        if let Some(until) = abandoned {
            // A write we abandoned may still be on its way to (or inside) the API server. Keep
            // the Lease — the elector renews it meanwhile — until that request's own timeout has
            // passed, so no peer is invited to write while our client may still send; the
            // preconditions on every write make a later arrival harmless (docs/development/lease.md).
            let margin = until.saturating_duration_since(tokio::time::Instant::now());
            warn!(
                margin_ms = u64::try_from(margin.as_millis()).unwrap_or(u64::MAX),
                "writes still in flight at shutdown were abandoned; keeping the Lease until their requests have timed out"
            );
            tokio::time::sleep_until(until).await;
        }
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
    supervised.abort_all();
    result
}
