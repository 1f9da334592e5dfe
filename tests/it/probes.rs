//! Health probes against stand-in apiservers at documentation-range addresses inside a network
//! namespace each test creates (see `common::netns`): nothing is dialled outside it.

// ---------------------------------------------------------------------------------------------
// The prober on its own (`probe::spawn`): each failure kind gives Down after the thresholds and
// Up again after healing (after the flap damping's `min_up`); credentials only on the targets the
// host's config names; certificate trouble abstains; no overlap; targets leaving the set.
// ---------------------------------------------------------------------------------------------

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use endpoint_copier::metrics::Metrics;
use endpoint_copier::probe::{self, Auth, Finding, Report, Target, Timing, Verdict, Wanted};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::common::TestBed;
use crate::common::netns::{self, Mode};

/// The prober running on a set of targets, as the engine runs it.
struct Probing {
    targets: watch::Sender<Wanted>,
    kubeconfig: watch::Sender<kube::Config>,
    reports: mpsc::Receiver<Report>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    timing: Timing,
}

async fn kube_config(kubeconfig: &Path) -> kube::Config {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap()
}

impl Probing {
    /// Starts probing `targets` with the default timing and `kubeconfig`'s credentials, as
    /// targets of the host's config.
    async fn start(kubeconfig: &Path, targets: Vec<Target>) -> Probing {
        Probing::start_with(
            kubeconfig,
            targets.into_iter().map(|t| (t, Auth::Node)).collect(),
        )
        .await
    }

    /// Starts probing `targets`, each with its credentials, with the default timing.
    async fn start_with(kubeconfig: &Path, targets: Wanted) -> Probing {
        let timing = Timing::default();
        let (targets_tx, targets_rx) = watch::channel(targets);
        let (config_tx, config_rx) = watch::channel(kube_config(kubeconfig).await);
        let (tx, reports) = mpsc::channel(16);
        let metrics = Metrics::new();
        let shutdown = CancellationToken::new();
        let task = probe::spawn(
            targets_rx,
            config_rx,
            probe::Reach::default(),
            timing,
            tx,
            Arc::clone(&metrics),
            shutdown.clone(),
        );
        Probing {
            targets: targets_tx,
            kubeconfig: config_tx,
            reports,
            metrics,
            shutdown,
            task,
            timing,
        }
    }

    /// The next report, within the time the thresholds and the flap damping allow (plus slack
    /// for a slow machine).
    async fn next(&mut self) -> Report {
        let limit = netns::verdict_deadline(&self.timing) + self.timing.min_up;
        tokio::time::timeout(limit, self.reports.recv())
            .await
            .unwrap_or_else(|_| panic!("no verdict within {limit:?}"))
            .unwrap()
    }

    /// Waits for `verdict` on `target` (skipping reports on other targets) and returns it.
    async fn expect(&mut self, target: &Target, verdict: Verdict) -> Report {
        self.expect_finding(target, Finding::Vote(verdict)).await
    }

    /// Waits for the next finding on `target` (skipping reports on other targets), asserts it
    /// is `finding` and returns it.
    async fn expect_finding(&mut self, target: &Target, finding: Finding) -> Report {
        loop {
            let r = self.next().await;
            if &r.target == target {
                assert_eq!(r.finding, finding, "{target}: {}", r.detail);
                return r;
            }
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

fn addr(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Room for a loaded CI machine (the whole suite runs in parallel on two cores) on top of the
/// times the thresholds allow. The speed itself is `examples/bench_probe.rs`'s to measure; this
/// bound only catches a prober that is grossly late (stuck behind another target, say).
const SLACK: Duration = Duration::from_secs(1);

/// How long after a fault the verdict may turn down with the default timing: the first failing
/// probe starts within one period, then `failure_threshold - 1` more periods, plus the last
/// probe's own time (the timeout when the fault is a timeout, next to nothing otherwise).
fn down_within(by_timeout: bool) -> Duration {
    let t = Timing::default();
    let last = if by_timeout {
        t.timeout
    } else {
        Duration::ZERO
    };
    t.period * t.failure_threshold + last + SLACK
}

/// Up, then `mode` gives Down with a detail starting with `detail` within `within` of the fault,
/// then `Mode::Ok` gives Up again after the flap damping's `min_up` of passing probes, within one
/// more period and a probe.
async fn fault_and_heal(test: &str, mode: Mode, detail: &str, within: Duration) {
    let Some(ns) = netns::enter(test) else { return };
    let bed = TestBed::start().await;
    let api = ns.listener(addr("198.51.100.11"), 6443, Some(&bed)).await;
    let target = api.target("https");
    let mut probing = Probing::start(&bed.kubeconfig_for("node-1"), vec![target.clone()]).await;
    let up = probing.expect(&target, Verdict::Up).await;
    assert_eq!(up.detail, "HTTP 200");

    // Let a kept-alive connection exist, so the fault also meets an established connection.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let fault = Instant::now();
    api.set_mode(mode);
    let down = probing.expect(&target, Verdict::Down).await;
    let took = fault.elapsed();
    println!("{mode:?}: down after {took:?} ({})", down.detail);
    assert!(
        down.detail.starts_with(detail),
        "detail '{}' should start with '{detail}'",
        down.detail
    );
    assert!(
        took <= within,
        "{mode:?}: down after {took:?}, more than {within:?}"
    );
    assert!(
        down.since >= fault,
        "the failing streak began after the fault"
    );

    let healed = Instant::now();
    api.set_mode(Mode::Ok);
    let up = probing.expect(&target, Verdict::Up).await;
    let back = healed.elapsed();
    println!("{mode:?}: up again after {back:?}");
    assert_eq!(up.detail, "HTTP 200");
    // One period until the first passing probe, `min_up` of passes (damping: never sooner),
    // plus the probe itself (a fresh connection and TLS).
    let t = Timing::default();
    assert!(
        back >= t.min_up,
        "up again after {back:?}, before min_up {:?} of passes",
        t.min_up
    );
    let limit = t.min_up + t.period * 2 + SLACK;
    assert!(
        back <= limit,
        "up again after {back:?}, more than {limit:?}"
    );
    assert!(
        api.requests().iter().all(|r| r.path == "/readyz"),
        "{:?}",
        api.requests()
    );
    probing.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_apiserver_is_down_after_two_periods_and_up_when_it_listens_again() {
    fault_and_heal(
        "probes::a_refused_apiserver_is_down_after_two_periods_and_up_when_it_listens_again",
        Mode::Refuse,
        "connection refused",
        down_within(false),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_apiserver_is_down_by_timeout_and_up_when_it_answers_again() {
    fault_and_heal(
        "probes::a_hung_apiserver_is_down_by_timeout_and_up_when_it_answers_again",
        Mode::Hang,
        "timed out after 250 ms",
        down_within(true),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_apiserver_is_down_by_timeout_and_up_when_healed() {
    fault_and_heal(
        "probes::a_black_holed_apiserver_is_down_by_timeout_and_up_when_healed",
        Mode::BlackHole,
        "timed out after 250 ms",
        down_within(true),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apiserver_answering_500_is_down_and_up_when_it_answers_200() {
    fault_and_heal(
        "probes::an_apiserver_answering_500_is_down_and_up_when_it_answers_200",
        Mode::Status(500),
        "HTTP 500",
        down_within(false),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apiserver_answering_401_is_down_and_up_when_it_accepts_us_again() {
    fault_and_heal(
        "probes::an_apiserver_answering_401_is_down_and_up_when_it_accepts_us_again",
        Mode::Unauthorized,
        "HTTP 401",
        down_within(false),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_probes_carry_the_kubeconfig_client_certificate_over_one_kept_alive_connection() {
    let test = "probes::https_probes_carry_the_kubeconfig_client_certificate_over_one_kept_alive_connection";
    let Some(ns) = netns::enter(test) else { return };
    let bed = TestBed::start().await;
    let api = ns.listener(addr("198.51.100.12"), 6443, Some(&bed)).await;
    let target = api.target("https");
    let mut probing = Probing::start(&bed.kubeconfig_for("node-1"), vec![target.clone()]).await;
    assert_eq!(
        probing.expect(&target, Verdict::Up).await.detail,
        "HTTP 200"
    );
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let requests = api.requests();
    assert!(requests.len() >= 4, "{requests:?}");
    for r in &requests {
        assert_eq!(r.path, "/readyz");
        assert_eq!(r.user.as_deref(), Some("node-1"));
        assert!(r.client_certificate && !r.authorization, "{r:?}");
    }
    // One TLS handshake for all of them: probing is cheap on CPU.
    assert_eq!(api.connection_count(), 1);
    let page = probing.metrics.encode();
    assert!(
        page.contains("endpoint_copier_probes_total{kind=\"https\",result=\"ok\"}"),
        "{page}"
    );
    probing.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_probes_carry_a_bearer_token() {
    let Some(ns) = netns::enter("probes::https_probes_carry_a_bearer_token") else {
        return;
    };
    let bed = TestBed::start().await;
    let api = ns.listener(addr("198.51.100.13"), 6443, Some(&bed)).await;
    let target = api.target("https");
    let mut probing =
        Probing::start(&bed.kubeconfig_with_token("node-2"), vec![target.clone()]).await;
    assert_eq!(
        probing.expect(&target, Verdict::Up).await.detail,
        "HTTP 200"
    );
    assert_eq!(api.requests()[0].user.as_deref(), Some("node-2"));
    probing.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_without_credentials_gets_401_and_is_down() {
    let Some(ns) = netns::enter("probes::a_probe_without_credentials_gets_401_and_is_down") else {
        return;
    };
    let bed = TestBed::start().await;
    let api = ns.listener(addr("198.51.100.14"), 6443, Some(&bed)).await;
    let target = api.target("https");
    let mut probing =
        Probing::start(&bed.kubeconfig_without_credentials(), vec![target.clone()]).await;
    let down = probing.expect(&target, Verdict::Down).await;
    assert_eq!(down.detail, "HTTP 401");
    probing.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_from_another_ca_abstains_and_no_request_is_sent() {
    let Some(ns) = netns::enter(
        "probes::a_server_certificate_from_another_ca_abstains_and_no_request_is_sent",
    ) else {
        return;
    };
    let bed = TestBed::start().await;
    let other = TestBed::start().await;
    let api = ns.listener(addr("198.51.100.15"), 6443, Some(&bed)).await;
    let target = api.target("https");
    let mut probing = Probing::start(&other.kubeconfig_for("node-1"), vec![target.clone()]).await;
    // A CA this host does not trust says nothing about the endpoint's health: no vote.
    let abstained = probing.expect_finding(&target, Finding::Abstain).await;
    // Both test bed CAs have the same name, so rustls reports a bad signature, not an unknown
    // issuer; either way the certificate is refused.
    assert!(
        abstained
            .detail
            .starts_with("TLS: the certificate is not signed by the kubeconfig's CA"),
        "{}",
        abstained.detail
    );
    assert_eq!(api.request_count(), 0);
    probing.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_without_the_endpoint_address_abstains_naming_the_sans_it_has() {
    let Some(ns) = netns::enter(
        "probes::a_certificate_without_the_endpoint_address_abstains_naming_the_sans_it_has",
    ) else {
        return;
    };
    let bed = TestBed::start().await;
    // The apiserver at .24 serves a certificate for .25 only (a derived address, an ExternalIP
    // its certificate lacks).
    let api = ns
        .listener_with_sans(
            addr("198.51.100.24"),
            6443,
            Some(&bed),
            &[addr("198.51.100.25")],
        )
        .await;
    let target = api.target("https");
    let mut probing = Probing::start(&bed.kubeconfig_for("node-1"), vec![target.clone()]).await;
    let abstained = probing.expect_finding(&target, Finding::Abstain).await;
    assert_eq!(
        abstained.detail,
        "TLS: the certificate does not name 198.51.100.24 (its subject alternative names: 198.51.100.25)"
    );
    assert_eq!(api.request_count(), 0);
    let page = probing.metrics.encode();
    assert!(
        page.contains("endpoint_copier_probes_total{kind=\"https\",result=\"abstained\"}"),
        "{page}"
    );
    probing.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_probes_carry_no_client_certificate_nor_token_and_abstain_when_refused() {
    let Some(ns) = netns::enter(
        "probes::anonymous_probes_carry_no_client_certificate_nor_token_and_abstain_when_refused",
    ) else {
        return;
    };
    let bed = TestBed::start().await;
    let by_cert = ns.listener(addr("198.51.100.26"), 6443, Some(&bed)).await;
    let by_token = ns.listener(addr("198.51.100.27"), 6443, Some(&bed)).await;
    let (cert_target, token_target) = (by_cert.target("https"), by_token.target("https"));
    // One prober with a client certificate, one with a token: neither goes with an anonymous
    // target.
    let mut with_cert = Probing::start_with(
        &bed.kubeconfig_for("node-1"),
        Wanted::from([(cert_target.clone(), Auth::Anonymous)]),
    )
    .await;
    let mut with_token = Probing::start_with(
        &bed.kubeconfig_with_token("node-2"),
        Wanted::from([(token_target.clone(), Auth::Anonymous)]),
    )
    .await;
    // The stand-ins, as RKE2's apiservers, refuse anonymous requests: no vote either way.
    for (probing, target) in [
        (&mut with_cert, &cert_target),
        (&mut with_token, &token_target),
    ] {
        let r = probing.expect_finding(target, Finding::Abstain).await;
        assert!(
            r.detail
                .starts_with("HTTP 401: the endpoint refuses anonymous probes"),
            "{}",
            r.detail
        );
    }
    for api in [&by_cert, &by_token] {
        let requests = api.requests();
        assert!(!requests.is_empty());
        assert!(
            requests
                .iter()
                .all(|r| !r.has_credentials() && r.user.is_none()),
            "{requests:?}"
        );
    }
    // The host's config names the target now: the same target, with the node's credentials.
    with_cert
        .targets
        .send_replace(Wanted::from([(cert_target.clone(), Auth::Node)]));
    let up = with_cert.expect(&cert_target, Verdict::Up).await;
    assert_eq!(up.detail, "HTTP 200");
    assert_eq!(
        by_cert.requests().last().unwrap().user.as_deref(),
        Some("node-1")
    );
    with_cert.stop().await;
    with_token.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_and_tcp_probes_are_up_and_down_like_https() {
    let Some(ns) = netns::enter("probes::plain_http_and_tcp_probes_are_up_and_down_like_https")
    else {
        return;
    };
    let bed = TestBed::start().await;
    let web = ns.listener(addr("198.51.100.16"), 80, None).await;
    let http = web.target("http");
    let tcp = web.target("tcp");
    let mut probing = Probing::start(bed.kubeconfig(), vec![http.clone(), tcp.clone()]).await;
    let mut up = BTreeSet::new();
    while up.len() < 2 {
        let r = probing.next().await;
        assert_eq!(
            r.finding,
            Finding::Vote(Verdict::Up),
            "{}: {}",
            r.target,
            r.detail
        );
        up.insert(r.detail);
    }
    assert_eq!(up, BTreeSet::from(["HTTP 200".into(), "connected".into()]));
    // Plain HTTP never carries the kubeconfig's credentials.
    assert!(web.requests().iter().all(|r| !r.has_credentials()));
    web.set_mode(Mode::Refuse);
    for _ in 0..2 {
        let r = probing.next().await;
        assert_eq!(
            (r.finding, r.detail.as_str()),
            (Finding::Vote(Verdict::Down), "connection refused")
        );
    }
    probing.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_endpoint_is_probed_and_black_holed_like_ipv4() {
    let Some(ns) = netns::enter("probes::an_ipv6_endpoint_is_probed_and_black_holed_like_ipv4")
    else {
        return;
    };
    let bed = TestBed::start().await;
    let api = ns.listener(addr("2001:db8::11"), 6443, Some(&bed)).await;
    let target = api.target("https");
    let mut probing = Probing::start(&bed.kubeconfig_for("node-1"), vec![target.clone()]).await;
    probing.expect(&target, Verdict::Up).await;
    api.set_mode(Mode::BlackHole);
    let down = probing.expect(&target, Verdict::Down).await;
    assert_eq!(down.detail, "timed out after 250 ms");
    api.set_mode(Mode::Ok);
    probing.expect(&target, Verdict::Up).await;
    probing.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_of_a_hung_apiserver_never_overlap() {
    let Some(ns) = netns::enter("probes::probes_of_a_hung_apiserver_never_overlap") else {
        return;
    };
    let bed = TestBed::start().await;
    let api = ns.listener(addr("198.51.100.17"), 6443, Some(&bed)).await;
    api.set_mode(Mode::Hang);
    let target = api.target("https");
    let started = Instant::now();
    let mut probing = Probing::start(&bed.kubeconfig_for("node-1"), vec![target.clone()]).await;
    probing.expect(&target, Verdict::Down).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let elapsed = started.elapsed();
    let most = (elapsed.as_millis() / probing.timing.period.as_millis()) as usize + 1;
    let connections = api.connection_count();
    println!(
        "hung for {elapsed:?}: {connections} connections, at most {} open at once",
        api.max_open()
    );
    // One connection per probe at most, each given up before the next one is dialled.
    assert!(
        connections <= most,
        "{connections} connections in {elapsed:?}"
    );
    assert!(api.max_open() <= 2, "{} open at once", api.max_open());
    assert_eq!(api.request_count(), 0);
    probing.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_leaving_the_set_is_no_longer_probed() {
    let Some(ns) = netns::enter("probes::a_target_leaving_the_set_is_no_longer_probed") else {
        return;
    };
    let bed = TestBed::start().await;
    let a = ns.listener(addr("198.51.100.18"), 6443, Some(&bed)).await;
    let b = ns.listener(addr("198.51.100.19"), 6443, Some(&bed)).await;
    let (ta, tb) = (a.target("https"), b.target("https"));
    let mut probing =
        Probing::start(&bed.kubeconfig_for("node-1"), vec![ta.clone(), tb.clone()]).await;
    probing.next().await;
    probing.next().await;
    probing
        .targets
        .send_replace(Wanted::from([(tb.clone(), Auth::Node)]));
    // A probe already running when the set changed may still land.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let before = (a.request_count(), b.request_count());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(a.request_count(), before.0, "a removed target was probed");
    assert!(
        b.request_count() >= before.1 + 2,
        "the remaining target is still probed"
    );
    probing.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_kubeconfig_is_used_by_the_next_probes() {
    let Some(ns) = netns::enter("probes::a_rotated_kubeconfig_is_used_by_the_next_probes") else {
        return;
    };
    let bed = TestBed::start().await;
    let api = ns.listener(addr("198.51.100.20"), 6443, Some(&bed)).await;
    let target = api.target("https");
    let mut probing = Probing::start(&bed.kubeconfig_for("node-1"), vec![target.clone()]).await;
    probing.expect(&target, Verdict::Up).await;
    // The old certificate stops working; a new kubeconfig (RKE2's rotation) is handed over.
    bed.revoke("node-1");
    probing.expect(&target, Verdict::Down).await;
    let rotated = kube_config(&bed.kubeconfig_for("node-1")).await;
    probing.kubeconfig.send_replace(rotated);
    let up = probing.expect(&target, Verdict::Up).await;
    assert_eq!(up.detail, "HTTP 200");
    probing.stop().await;
}

/// CPU time (user + system) this process used so far, from /proc/self/stat (10 ms ticks).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name (which may contain spaces) start at ") ".
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probing_three_endpoints_twice_a_second_costs_little_cpu() {
    let Some(ns) = netns::enter("probes::probing_three_endpoints_twice_a_second_costs_little_cpu")
    else {
        return;
    };
    let bed = TestBed::start().await;
    let mut apis = Vec::new();
    for a in ["198.51.100.21", "198.51.100.22", "198.51.100.23"] {
        apis.push(ns.listener(addr(a), 6443, Some(&bed)).await);
    }
    let targets: Vec<Target> = apis.iter().map(|a| a.target("https")).collect();
    let mut probing = Probing::start(&bed.kubeconfig_for("node-1"), targets).await;
    for _ in 0..3 {
        probing.next().await;
    }
    let (cpu, wall) = (cpu_time(), Instant::now());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (cpu, wall) = (cpu_time() - cpu, wall.elapsed());
    let share = cpu.as_secs_f64() / wall.as_secs_f64();
    println!(
        "3 endpoints, 2 probes/s each: {:.2}% of a core (prober and stand-in servers, this build)",
        share * 100.0
    );
    // The goal is 1% for the prober alone in a release build; this counts the servers too and
    // runs unoptimized, so it only catches a regression such as a TLS handshake per probe.
    assert!(share < 0.05, "{:.2}% of a core", share * 100.0);
    assert!(apis.iter().all(|a| a.connection_count() == 1));
    probing.stop().await;
}

// ---------------------------------------------------------------------------------------------
// End of the prober's own tests.
// ---------------------------------------------------------------------------------------------
