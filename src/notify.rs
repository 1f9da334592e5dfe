//! Every sd-notify message the daemon sends — READY=1, STATUS=, WATCHDOG=1, STOPPING=1 — the
//! progress heartbeats that gate WATCHDOG=1, and the pure one-line STATUS text.
//!
//! Notification failures are logged and never stop the daemon: a missing or broken notify socket
//! must not take the VIP down. *When* to send READY/STOPPING and *what* the status says belongs to
//! `daemon`; this module only formats and delivers.

use sd_notify::NotifyState;
use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Environment variable naming systemd's notification socket (absent outside `Type=notify`).
const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";
/// Environment variable holding the watchdog interval, in microseconds.
const WATCHDOG_USEC_ENV: &str = "WATCHDOG_USEC";
/// Environment variable naming the PID the watchdog applies to (absent: the main process).
const WATCHDOG_PID_ENV: &str = "WATCHDOG_PID";
/// The STATUS text while shutting down, sent by [`Notifier::stopping`].
pub const STATUS_STOPPING: &str = "stopping";
/// Longest error text kept in the STATUS line, in characters: `systemctl status` shows one line.
const STATUS_ERROR_MAX_CHARS: usize = 120;

/// Why a notification could not be delivered (logged, never returned to the daemon).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `NOTIFY_SOCKET` is not an absolute path or an abstract (`@`) name.
    #[error("NOTIFY_SOCKET '{0}' is neither an absolute path nor an abstract socket name")]
    Address(String),
    /// The socket could not be created or addressed.
    #[error("failed to open a datagram socket for notify socket '{socket}'")]
    Open {
        /// The notify socket, as given.
        socket: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `sendto` failed (systemd gone, socket full).
    #[error("failed to send '{message}' to notify socket '{socket}'")]
    Send {
        /// The first line of the message.
        message: String,
        /// The notify socket, as given.
        socket: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Sends sd-notify messages to systemd; a no-op when there is no notify socket.
///
/// Cheap to clone: clones share the socket and the last STATUS text.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    inner: Option<Arc<Inner>>,
    watchdog: Option<Duration>,
}

#[derive(Debug)]
struct Inner {
    socket: UnixDatagram,
    addr: SocketAddr,
    /// The notify socket as given, for error messages.
    name: String,
    /// The last STATUS text systemd accepted, so an unchanged line is not resent.
    last_status: Mutex<Option<String>>,
    /// Set while sends fail, so a dead socket is logged once at warn, not on every ping.
    failing: AtomicBool,
}

impl Notifier {
    /// A notifier from the environment systemd sets: `NOTIFY_SOCKET`, and `WATCHDOG_USEC` unless
    /// `WATCHDOG_PID` names another process. Without `NOTIFY_SOCKET` every call is a no-op; an
    /// unusable socket is logged at warn and also gives a no-op notifier.
    ///
    /// The variables are left in the environment (removing them is `unsafe` in Rust 2024); the
    /// daemon starts no children that could inherit them.
    pub fn from_env() -> Notifier {
        let watchdog = watchdog_from(
            std::env::var(WATCHDOG_USEC_ENV).ok().as_deref(),
            std::env::var(WATCHDOG_PID_ENV).ok().as_deref(),
            std::process::id(),
        );
        let Some(socket) = std::env::var_os(NOTIFY_SOCKET_ENV) else {
            return Notifier::disabled();
        };
        let socket = socket.to_string_lossy().into_owned();
        match Self::open(&socket, watchdog) {
            Ok(n) => n,
            Err(error) => {
                tracing::warn!(error = %crate::error::chain(&error), "systemd notifications disabled");
                Notifier::disabled()
            }
        }
    }

    /// A notifier that sends to the datagram socket at `path`, with the given watchdog interval:
    /// what [`Notifier::from_env`] builds, without reading the environment (for tests and for a
    /// caller that already parsed it).
    ///
    /// # Errors
    /// [`Error::Open`] when the socket cannot be created.
    pub fn at(path: &Path, watchdog: Option<Duration>) -> Result<Notifier, Error> {
        Self::open(&path.to_string_lossy(), watchdog)
    }

    /// A notifier that sends nothing (no systemd, or `run` outside a unit).
    pub fn disabled() -> Notifier {
        Notifier {
            inner: None,
            watchdog: None,
        }
    }

    fn open(socket: &str, watchdog: Option<Duration>) -> Result<Notifier, Error> {
        let open_err = |source| Error::Open {
            socket: socket.to_owned(),
            source,
        };
        let addr = if let Some(name) = socket.strip_prefix('@') {
            // Abstract namespace socket (systemd uses these in containers and user managers).
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes()).map_err(open_err)?
        } else if socket.starts_with('/') {
            SocketAddr::from_pathname(PathBuf::from(socket)).map_err(open_err)?
        } else {
            return Err(Error::Address(socket.to_owned()));
        };
        let sock = UnixDatagram::unbound().map_err(open_err)?;
        // Non-blocking: a full socket buffer must drop a ping, never stall the one-thread runtime.
        sock.set_nonblocking(true).map_err(open_err)?;
        Ok(Notifier {
            inner: Some(Arc::new(Inner {
                socket: sock,
                addr,
                name: socket.to_owned(),
                last_status: Mutex::new(None),
                failing: AtomicBool::new(false),
            })),
            watchdog,
        })
    }

    /// Whether messages go anywhere (false outside systemd).
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// READY=1: the daemon runs its loops. Sent before the cluster is reachable, so
    /// `systemctl start` never waits on the API; STATUS tells what is still missing.
    pub fn ready(&self) {
        self.send(&NotifyState::Ready);
    }

    /// STATUS=`line`, sent only when the text differs from the last one systemd accepted.
    /// Newlines are replaced by spaces: STATUS is one line. The ages in a [`status_line`] move, so
    /// call this on every state change and on a slow timer (every few seconds), not in a hot loop.
    pub fn status(&self, line: &str) {
        let Some(inner) = &self.inner else { return };
        let line = line.replace('\n', " ");
        {
            let last = inner
                .last_status
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if last.as_deref() == Some(line.as_str()) {
                return;
            }
        }
        if self.send(&NotifyState::Status(&line)) {
            *inner
                .last_status
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(line);
        }
    }

    /// STOPPING=1, then STATUS=[`STATUS_STOPPING`]: shutdown has begun (systemd shows
    /// "deactivating" and the status line says so). The one way the daemon says it stops; a later
    /// [`Notifier::status`] with the same text sends nothing.
    pub fn stopping(&self) {
        self.send(&NotifyState::Stopping);
        self.status(STATUS_STOPPING);
    }

    /// WATCHDOG=1: one keep-alive ping. Call it through [`run_watchdog`], which sends it only while
    /// the loops make progress.
    pub fn watchdog(&self) {
        self.send(&NotifyState::Watchdog);
    }

    /// The watchdog interval systemd expects pings within (`WATCHDOG_USEC`), or `None` when the
    /// watchdog is off or `WATCHDOG_PID` names another process.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends one message; returns whether it was delivered. Failures are logged (warn on the
    /// first, debug while they continue, info when delivery recovers).
    ///
    /// The message text comes from the sd-notify crate's `NotifyState`; the socket is our own
    /// because `sd_notify::notify` opens a blocking socket per call, and a full notify queue must
    /// drop a ping here, never stall the daemon's one-thread runtime.
    fn send(&self, state: &NotifyState<'_>) -> bool {
        let Some(inner) = &self.inner else {
            return false;
        };
        let message = state.to_string();
        match inner.socket.send_to_addr(message.as_bytes(), &inner.addr) {
            Ok(_) => {
                if inner.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("systemd notifications delivered again");
                }
                true
            }
            Err(source) => {
                let error = Error::Send {
                    message: message.lines().next().unwrap_or_default().to_owned(),
                    socket: inner.name.clone(),
                    source,
                };
                if inner.failing.swap(true, Ordering::Relaxed) {
                    tracing::debug!(error = %crate::error::chain(&error), "systemd notification not delivered");
                } else {
                    tracing::warn!(error = %crate::error::chain(&error), "systemd notification not delivered");
                }
                false
            }
        }
    }
}

/// Parses `WATCHDOG_USEC`/`WATCHDOG_PID` as sd_watchdog_enabled(3) does: the watchdog applies to
/// us when the interval is a positive integer and the PID is absent or ours.
fn watchdog_from(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid
        && pid.trim().parse::<u32>().ok() != Some(own_pid)
    {
        return None;
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Progress heartbeats of the daemon's loops.
///
/// Each loop gets a [`Beat`] from [`Heartbeats::register`] and calls [`Beat::tick`] whenever it
/// makes progress (an event handled, a Lease renewed, an idle timer fired). [`run_watchdog`] pings
/// systemd only while every registered loop ticked within the watchdog interval, so a wedged loop
/// gets the process restarted. A loop that waits for events must therefore also tick on an idle
/// timer shorter than the interval. Cheap to clone: clones share the registry.
#[derive(Debug, Clone, Default)]
pub struct Heartbeats {
    inner: Arc<Mutex<Registry>>,
}

#[derive(Debug, Default)]
struct Registry {
    /// Each loop's name and last tick, in registration order.
    loops: Vec<(&'static str, Arc<AtomicInstant>)>,
}

/// The last tick, as nanoseconds since the registry's epoch (an atomic, so `tick` takes no lock).
#[derive(Debug)]
struct AtomicInstant {
    epoch: Instant,
    nanos: AtomicU64,
}

impl AtomicInstant {
    fn store(&self, at: Instant) {
        let nanos =
            u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX);
        self.nanos.store(nanos, Ordering::Relaxed);
    }

    fn load(&self) -> Instant {
        self.epoch + Duration::from_nanos(self.nanos.load(Ordering::Relaxed))
    }
}

/// One loop's heartbeat: call [`Beat::tick`] on progress. Clones tick the same heartbeat. A
/// `Beat` dropped stays registered, so a loop that died counts as wedged.
#[derive(Debug, Clone)]
pub struct Beat {
    last: Arc<AtomicInstant>,
}

impl Beat {
    /// Records progress now.
    pub fn tick(&self) {
        self.tick_at(Instant::now());
    }

    /// Records progress at `at` (for a loop that already holds the instant, and for tests that
    /// drive time by hand). An instant earlier than the registration counts as the registration.
    pub fn tick_at(&self, at: Instant) {
        self.last.store(at);
    }
}

impl Heartbeats {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a loop under `name` (shown in logs and `/healthz` when it goes stale), counting
    /// as having ticked just now.
    pub fn register(&self, name: &'static str) -> Beat {
        let now = Instant::now();
        let last = Arc::new(AtomicInstant {
            epoch: now,
            nanos: AtomicU64::new(0),
        });
        let mut reg = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        reg.loops.push((name, Arc::clone(&last)));
        Beat { last }
    }

    /// The names of the loops that have not ticked within `max_age` of now, in registration order.
    pub fn stale(&self, max_age: Duration) -> Vec<&'static str> {
        self.stale_at(Instant::now(), max_age)
    }

    /// [`Heartbeats::stale`] judged at `now` instead of the current time (for tests and for the
    /// watchdog, which passes the instant its timer fired).
    pub fn stale_at(&self, now: Instant, max_age: Duration) -> Vec<&'static str> {
        let reg = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        reg.loops
            .iter()
            .filter(|(_, last)| now.saturating_duration_since(last.load()) > max_age)
            .map(|(name, _)| *name)
            .collect()
    }
}

/// The decision half of [`run_watchdog`]: on each timer tick, ping when no loop is stale.
/// Logs the transitions (a loop went stale, all loops progress again), not every tick.
#[derive(Debug)]
pub struct Watchdog {
    notifier: Notifier,
    beats: Heartbeats,
    max_age: Duration,
    withheld: bool,
}

impl Watchdog {
    /// A watchdog that pings `notifier` while every loop in `beats` ticked within `max_age`.
    pub fn new(notifier: Notifier, beats: Heartbeats, max_age: Duration) -> Self {
        Watchdog {
            notifier,
            beats,
            max_age,
            withheld: false,
        }
    }

    /// Judges the loops at `now`; sends WATCHDOG=1 and returns true when none is stale.
    pub fn check(&mut self, now: Instant) -> bool {
        let stale = self.beats.stale_at(now, self.max_age);
        if stale.is_empty() {
            if std::mem::replace(&mut self.withheld, false) {
                tracing::info!("all loops progress again, watchdog pings resumed");
            }
            self.notifier.watchdog();
            true
        } else {
            if !std::mem::replace(&mut self.withheld, true) {
                tracing::error!(
                    loops = %stale.join(", "),
                    max_age_ms = u64::try_from(self.max_age.as_millis()).unwrap_or(u64::MAX),
                    "loops made no progress, watchdog pings withheld so systemd restarts us"
                );
            }
            false
        }
    }
}

/// Pings WATCHDOG=1 every half watchdog interval while every registered loop ticked within the
/// interval (with no loop registered nothing can be wedged, so it pings); returns when `shutdown`
/// is cancelled. Without a watchdog interval it only waits for
/// `shutdown`, so the daemon can treat any early return as a dead task.
pub async fn run_watchdog(notifier: Notifier, beats: Heartbeats, shutdown: CancellationToken) {
    let Some(interval) = notifier.watchdog_interval() else {
        shutdown.cancelled().await;
        return;
    };
    // Half the interval, as sd_watchdog_enabled(3) advises: one late tick is not yet a restart.
    let mut timer = tokio::time::interval(interval / 2);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watchdog = Watchdog::new(notifier, beats, interval);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            now = timer.tick() => { watchdog.check(now); }
        }
    }
}

/// Where the daemon stands, for the STATUS line. (Named apart from `lease::decide::Role`, which is
/// the elector's own view of the Lease.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// Waiting for something before it can start (the kubeconfig file, the API); the text says
    /// what, e.g. `/etc/rancher/rke2/rke2.yaml`.
    Waiting(String),
    /// Connected, not yet leader or follower.
    Starting,
    /// Holds the Lease and writes the target slices.
    Leader,
    /// Another host holds the Lease (its identity, when known).
    Follower(Option<String>),
}

/// The state of one pair, for the STATUS line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairStatus {
    /// The target Service, `namespace/name`.
    pub target: String,
    /// Endpoints in the target slices.
    pub endpoints: usize,
    /// Time since the last successful sync; `None` before the first.
    pub synced_ago: Option<Duration>,
    /// Why the pair is held fail-static (source missing, read failed), if it is.
    pub holding: Option<String>,
    /// Endpoints marked not ready by the probes' quorum.
    pub evicted: usize,
    /// Endpoints marked not ready because their Node is drained.
    pub drained: usize,
    /// Sources of the pair that fail now (their endpoints kept), by name.
    pub failing_sources: Vec<String>,
}

/// Everything the STATUS line shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusView {
    /// Where the daemon stands.
    pub role: Standing,
    /// The pairs, in the order to show them.
    pub pairs: Vec<PairStatus>,
    /// The last error worth an operator's attention, if any.
    pub last_error: Option<String>,
}

/// The one-line STATUS text, e.g. `leader, default/kubernetes-vip: 3 endpoints, synced 2s ago`,
/// `follower, leader node-2`, `waiting for /etc/rancher/rke2/rke2.yaml`; pairs are separated by
/// `; ` and a last error is appended as `; last error: ...` (cut to 120 characters).
pub fn status_line(v: &StatusView) -> String {
    let mut line = match &v.role {
        Standing::Waiting(what) => format!("waiting for {what}"),
        Standing::Starting => "starting".to_owned(),
        Standing::Leader => "leader".to_owned(),
        Standing::Follower(Some(holder)) => format!("follower, leader {holder}"),
        Standing::Follower(None) => "follower, no leader".to_owned(),
    };
    let leader = v.role == Standing::Leader;
    for (i, pair) in v.pairs.iter().enumerate() {
        line.push_str(if i == 0 { ", " } else { "; " });
        line.push_str(&pair_text(pair, leader));
    }
    if let Some(error) = &v.last_error {
        line.push_str("; last error: ");
        let error = error.replace('\n', " ");
        if error.chars().count() > STATUS_ERROR_MAX_CHARS {
            line.extend(error.chars().take(STATUS_ERROR_MAX_CHARS - 1));
            line.push('…');
        } else {
            line.push_str(&error);
        }
    }
    line
}

fn pair_text(pair: &PairStatus, leader: bool) -> String {
    let noun = if pair.endpoints == 1 {
        "endpoint"
    } else {
        "endpoints"
    };
    let mut text = format!("{}: {} {noun}", pair.target, pair.endpoints);
    if pair.evicted > 0 {
        text.push_str(&format!(", {} evicted", pair.evicted));
    }
    if pair.drained > 0 {
        text.push_str(&format!(", {} drained", pair.drained));
    }
    match pair.synced_ago {
        Some(ago) => {
            text.push_str(", synced ");
            text.push_str(&human(ago));
            text.push_str(" ago");
        }
        // Only the leader syncs: "not synced yet" on a follower would read like a fault.
        None if leader && pair.holding.is_none() => text.push_str(", not synced yet"),
        None => {}
    }
    if let Some(reason) = &pair.holding {
        text.push_str(", holding: ");
        text.push_str(reason);
    }
    match pair.failing_sources.as_slice() {
        [] => {}
        [one] => text.push_str(&format!(", source failing: {one}")),
        many => text.push_str(&format!(", {} sources failing", many.len())),
    }
    text
}

/// A coarse, short duration: `45s`, `2m`, `3h`, `5d` (whole units, rounded down).
fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_applies_only_to_our_pid_and_positive_intervals() {
        assert_eq!(
            watchdog_from(Some("30000000"), None, 42),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            watchdog_from(Some("30000000"), Some("42"), 42),
            Some(Duration::from_secs(30))
        );
        assert_eq!(watchdog_from(Some("30000000"), Some("7"), 42), None);
        assert_eq!(watchdog_from(Some("0"), None, 42), None);
        assert_eq!(watchdog_from(Some("soon"), None, 42), None);
        assert_eq!(watchdog_from(None, Some("42"), 42), None);
    }

    #[test]
    fn durations_are_shown_in_their_largest_whole_unit() {
        assert_eq!(human(Duration::from_millis(2500)), "2s");
        assert_eq!(human(Duration::from_secs(59)), "59s");
        assert_eq!(human(Duration::from_secs(150)), "2m");
        assert_eq!(human(Duration::from_secs(3 * 3600 + 5)), "3h");
        assert_eq!(human(Duration::from_secs(5 * 86_400)), "5d");
    }

    #[test]
    fn relative_notify_socket_is_refused() {
        assert!(matches!(
            Notifier::open("run/notify", None),
            Err(Error::Address(_))
        ));
    }

    #[test]
    fn disabled_notifier_sends_nothing_and_has_no_watchdog() {
        let n = Notifier::disabled();
        assert!(!n.is_enabled());
        assert!(!n.send(&NotifyState::Ready));
        assert_eq!(n.watchdog_interval(), None);
    }
}
