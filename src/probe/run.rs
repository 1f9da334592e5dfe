//! The probe scheduler: one task per target, a probe every period, never overlapping, thresholds
//! applied; a [`Report`] when a target's finding (a vote or an abstention) is first known and
//! whenever it changes.
//!
//! Owns the tasks (started and stopped as the engine changes the set of targets) and rebuilding
//! the [`Prober`] when the kube config changes. One probe is `check`'s; the thresholds are
//! `tracker`'s; what the engine does with a report (publish it, count votes) is not ours.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::check::{Dialer, Prober, Session};
use super::tracker::Tracker;
use super::{Auth, Class, Finding, Report, Target, Timing};
use crate::metrics::Metrics;

/// The shortest period honoured, so a config typo (`period_ms = 0`) cannot spin a core.
const MIN_PERIOD: Duration = Duration::from_millis(50);

/// What the engine asks to be probed: each target with the credentials its probes may carry.
pub type Wanted = BTreeMap<Target, Auth>;

/// The targets kept under the cap of `max_targets`: those the host's config names first
/// ([`Auth::Node`]), then those only annotations ask for, each kind in target order, so that
/// every host with the same caches keeps the same ones. Returns the kept targets and how many
/// were left out.
pub fn capped(wanted: Wanted, max_targets: usize) -> (Wanted, usize) {
    if wanted.len() <= max_targets {
        return (wanted, 0);
    }
    let over = wanted.len() - max_targets;
    let mut order: Vec<(Auth, Target)> = wanted.into_iter().map(|(t, a)| (a, t)).collect();
    order.sort();
    let kept = order
        .into_iter()
        .take(max_targets)
        .map(|(a, t)| (t, a))
        .collect();
    (kept, over)
}

/// Starts probing: every target in `targets` (the engine updates the set; a target that leaves
/// it stops being probed within one probe, and one whose [`Auth`] changes starts afresh), with
/// the TLS and credentials of the current `kubeconfig` (a new value rebuilds them; kept-alive
/// connections are re-dialled) — the credentials only on [`Auth::Node`] targets —, and sends a
/// [`Report`] to `reports` when a target's finding is first known and on each change. Records
/// every probe in `metrics`.
///
/// Probes dial as `reach` says ([`Reach::default`] on a host: TCP, the endpoint's address as
/// the TLS server name unless the kube config names one).
///
/// Never blocks the caller: everything runs in the returned task and the tasks it spawns, which
/// end when `shutdown` is cancelled or `targets`' sender is dropped. A full `reports` channel
/// delays only the target whose verdict changed.
pub fn spawn(
    targets: watch::Receiver<Wanted>,
    kubeconfig: watch::Receiver<kube::Config>,
    reach: Reach,
    timing: Timing,
    reports: mpsc::Sender<Report>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(supervise(
        targets, kubeconfig, reach, timing, reports, metrics, shutdown,
    ))
}

/// How probes reach their targets.
#[derive(Clone, Debug, Default)]
pub struct Reach {
    /// The name server certificates are verified against (`[probe] tls_server_name`); `None`:
    /// the kube config's `tls-server-name`, else the endpoint's address.
    pub server_name: Option<String>,
    /// How targets are dialled ([`Dialer::Tcp`] on a host).
    pub dialer: Dialer,
}

/// A running target task.
struct Probing {
    /// The credentials its probes carry.
    auth: Auth,
    /// Cancelled when the target leaves the set (a child of the shutdown token).
    stop: CancellationToken,
    handle: JoinHandle<()>,
}

/// Builds the prober for `config`, keeping `previous` when the new config is unusable: a
/// half-rotated kubeconfig must not turn every HTTPS target down on this host.
fn build(
    config: &kube::Config,
    server_name: Option<&str>,
    dialer: &Dialer,
    previous: Option<&Arc<Prober>>,
) -> Arc<Prober> {
    match Prober::new(config, server_name) {
        Ok(p) => Arc::new(p.with_dialer(dialer.clone())),
        Err(e) => {
            let error = crate::error::chain(&e);
            match previous {
                Some(p) => {
                    tracing::warn!(error = %error, "kept the previous probe credentials");
                    Arc::clone(p)
                }
                None => {
                    tracing::error!(error = %error, "HTTPS probes cannot run");
                    Arc::new(Prober::without_tls(&error).with_dialer(dialer.clone()))
                }
            }
        }
    }
}

async fn supervise(
    mut targets: watch::Receiver<Wanted>,
    mut kubeconfig: watch::Receiver<kube::Config>,
    Reach {
        server_name,
        dialer,
    }: Reach,
    timing: Timing,
    reports: mpsc::Sender<Report>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    // A watch channel to the target tasks: each picks up a rebuilt prober before its next probe,
    // and only the latest one matters.
    let first = build(
        &kubeconfig.borrow_and_update(),
        server_name.as_deref(),
        &dialer,
        None,
    );
    let (prober_tx, prober_rx) = watch::channel(first);
    let mut running: BTreeMap<Target, Probing> = BTreeMap::new();
    let mut kubeconfig_open = true;
    loop {
        let wanted = targets.borrow_and_update().clone();
        // A target whose credentials change is stopped and started again: its connection and
        // its thresholds belonged to the other kind of probe.
        running.retain(|target, probing| {
            let keep = wanted.get(target) == Some(&probing.auth);
            if !keep {
                probing.stop.cancel();
            }
            keep
        });
        for (target, auth) in wanted {
            if running.contains_key(&target) {
                continue;
            }
            let stop = shutdown.child_token();
            let handle = tokio::spawn(probe_target(
                target.clone(),
                auth,
                prober_rx.clone(),
                timing,
                reports.clone(),
                Arc::clone(&metrics),
                stop.clone(),
            ));
            running.insert(target, Probing { auth, stop, handle });
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            changed = targets.changed() => if changed.is_err() { break },
            changed = kubeconfig.changed(), if kubeconfig_open => match changed {
                Ok(()) => {
                    let next = build(
                        &kubeconfig.borrow_and_update(),
                        server_name.as_deref(),
                        &dialer,
                        Some(&prober_tx.borrow()),
                    );
                    prober_tx.send_replace(next);
                }
                // Nobody will rotate it any more: keep probing with what we have.
                Err(_) => kubeconfig_open = false,
            },
        }
    }
    for probing in running.values() {
        probing.stop.cancel();
    }
    for (_, probing) in running {
        // Each task ends at its next await once cancelled; a panic in one is not ours to raise.
        let _ = probing.handle.await;
    }
}

/// Probes `target` with `auth`'s credentials every period until `stop` is cancelled.
async fn probe_target(
    target: Target,
    auth: Auth,
    mut prober: watch::Receiver<Arc<Prober>>,
    timing: Timing,
    reports: mpsc::Sender<Report>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let mut session = Session::new(
        Arc::clone(&prober.borrow_and_update()),
        target.clone(),
        auth,
    );
    let mut tracker = Tracker::new(&timing);
    // Delay, not Burst: a probe that ran long pushes the next one back instead of letting a
    // backlog fire in a row, so probes of one target never overlap nor pile up.
    let mut ticks = tokio::time::interval(timing.period.max(MIN_PERIOD));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let kind = target.kind.scheme();
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        if prober.has_changed().unwrap_or(false) {
            // New credentials: drop the old connection with the old session.
            session = Session::new(
                Arc::clone(&prober.borrow_and_update()),
                target.clone(),
                auth,
            );
        }
        let outcome = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            outcome = session.probe(timing.timeout) => outcome,
        };
        metrics.observe_probe(kind, result(outcome.class), outcome.took);
        let Some(change) = tracker.observe(outcome.class, Instant::now()) else {
            continue;
        };
        // Debug only: the engine says each change once, at warn or info (`daemon/probes.rs`).
        match change.finding {
            Finding::Vote(verdict) => tracing::debug!(
                endpoint = %target,
                verdict = ?verdict,
                detail = %outcome.detail,
                "probe verdict changed"
            ),
            Finding::Abstain => tracing::debug!(
                endpoint = %target,
                detail = %outcome.detail,
                "probe cannot judge the endpoint; this host abstains"
            ),
        }
        let report = Report {
            target: target.clone(),
            finding: change.finding,
            since: change.since,
            detail: outcome.detail,
        };
        tokio::select! {
            () = stop.cancelled() => return,
            sent = reports.send(report) => if sent.is_err() { return },
        }
    }
}

/// The `result` label of a probe's metrics.
fn result(class: Class) -> &'static str {
    match class {
        Class::Pass => "ok",
        Class::Fail => "failed",
        Class::Abstain => "abstained",
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::probe::{Kind, Verdict};

    fn https(last: u8) -> Target {
        format!("https://198.51.100.{last}:6443/readyz")
            .parse()
            .unwrap()
    }

    fn config() -> kube::Config {
        kube::Config::new("https://127.0.0.1:1".parse().unwrap())
    }

    fn tcp(port: u16) -> Target {
        Target {
            address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port,
            kind: Kind::Tcp,
        }
    }

    fn fast() -> Timing {
        Timing {
            period: Duration::from_millis(50),
            timeout: Duration::from_millis(40),
            ..Timing::default()
        }
    }

    #[test]
    fn the_cap_keeps_the_configs_targets_first_then_the_lowest_ones() {
        let wanted: Wanted = [
            (https(1), Auth::Anonymous),
            (https(2), Auth::Anonymous),
            (https(3), Auth::Node),
            (https(4), Auth::Anonymous),
            (https(5), Auth::Node),
        ]
        .into_iter()
        .collect();
        let (kept, over) = capped(wanted.clone(), 3);
        assert_eq!(over, 2);
        assert_eq!(
            kept.into_iter().collect::<Vec<_>>(),
            vec![
                (https(1), Auth::Anonymous),
                (https(3), Auth::Node),
                (https(5), Auth::Node),
            ]
        );
        assert_eq!(capped(wanted.clone(), 5), (wanted, 0));
    }

    // Loopback in a unit test only: these targets are never written to an EndpointSlice.
    #[tokio::test]
    async fn a_listening_port_is_up_and_a_closed_one_down_after_two_failures() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap().port();
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let (_targets_tx, targets) = watch::channel(Wanted::from([
            (tcp(open), Auth::Node),
            (tcp(closed), Auth::Node),
        ]));
        let (_config_tx, kubeconfig) = watch::channel(config());
        let (tx, mut rx) = mpsc::channel(8);
        let metrics = Metrics::new();
        let shutdown = CancellationToken::new();
        let task = spawn(
            targets,
            kubeconfig,
            Reach::default(),
            fast(),
            tx,
            Arc::clone(&metrics),
            shutdown.clone(),
        );
        let mut seen = BTreeMap::new();
        while seen.len() < 2 {
            let r = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .unwrap()
                .unwrap();
            seen.insert(r.target.port, (r.finding, r.detail));
        }
        assert_eq!(
            seen[&open],
            (Finding::Vote(Verdict::Up), "connected".to_owned())
        );
        assert_eq!(
            seen[&closed],
            (
                Finding::Vote(Verdict::Down),
                "connection refused".to_owned()
            )
        );
        shutdown.cancel();
        task.await.unwrap();
        let page = metrics.encode();
        assert!(
            page.contains("endpoint_copier_probes_total{kind=\"tcp\",result=\"failed\"}"),
            "{page}"
        );
        assert!(page.contains("endpoint_copier_probe_duration_seconds_bucket{"));
    }

    #[tokio::test]
    async fn a_target_leaving_the_set_is_no_longer_probed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (targets_tx, targets) = watch::channel(Wanted::from([(tcp(port), Auth::Node)]));
        let (_config_tx, kubeconfig) = watch::channel(config());
        let (tx, mut rx) = mpsc::channel(8);
        let shutdown = CancellationToken::new();
        let task = spawn(
            targets,
            kubeconfig,
            Reach::default(),
            fast(),
            tx,
            Metrics::new(),
            shutdown.clone(),
        );
        let first = rx.recv().await.unwrap();
        assert_eq!(first.finding, Finding::Vote(Verdict::Up));
        targets_tx.send_replace(Wanted::new());
        // Drain what was accepted before the removal took effect, then nothing more arrives.
        tokio::time::sleep(Duration::from_millis(100)).await;
        while let Ok((s, _)) = tokio::time::timeout(Duration::from_millis(10), listener.accept())
            .await
            .map(Result::unwrap)
        {
            drop(s);
        }
        let late = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
        assert!(late.is_err(), "a removed target was probed again");
        shutdown.cancel();
        task.await.unwrap();
    }
}
