//! The metrics and health endpoints as a scraper sees them: `Server` on 127.0.0.1:0, plain HTTP/1.1
//! over a `TcpStream`, the text parsed back into series.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use endpoint_copier::metrics::{Error, Health, Metrics, Server, serve};
use endpoint_copier::notify::Heartbeats;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// A raw HTTP/1.1 exchange: returns the status code, the headers (lower-cased names) and the body.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
) -> (u16, BTreeMap<String, String>, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw))
        .await
        .expect("the server answers and closes")
        .unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_lowercase(), v.to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

/// `name{labels}` → value, for every sample line of the exposition.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse().unwrap())
        })
        .collect()
}

struct Running {
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Health,
    beats: Heartbeats,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn start(max_age: Duration) -> Running {
    let metrics = Metrics::new();
    let beats = Heartbeats::new();
    let health = Health::tracking(beats.clone(), max_age);
    let shutdown = CancellationToken::new();
    let server = Server::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = server.local_addr();
    assert_ne!(addr.port(), 0);
    let task = tokio::spawn(server.run(Arc::clone(&metrics), health.clone(), shutdown.clone()));
    Running {
        addr,
        metrics,
        health,
        beats,
        shutdown,
        task,
    }
}

#[tokio::test(flavor = "current_thread")]
async fn scrape_shows_every_family_with_help_and_the_values_set() {
    let r = start(Duration::from_secs(30)).await;
    let m = &r.metrics;
    m.set_leader(true);
    m.lease_transition();
    m.set_pairs(1, 2);
    m.set_endpoints("default/kubernetes-vip", "IPv4", 3, 1);
    m.set_endpoints("default/kubernetes-vip", "IPv6", 2, 0);
    m.record_write("update", "ok");
    m.record_write("update", "ok");
    m.record_write("create", "conflict");
    m.record_write("delete", "error");
    m.writes_skipped();
    m.observe_sync(Duration::from_millis(30));
    m.set_last_sync_at(
        "default/kubernetes-vip",
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
    );
    m.watch_restart("endpointslices");
    m.record_api_error(503);

    let (status, headers, body) = request(r.addr, "GET", "/metrics").await;
    assert_eq!(status, 200);
    assert!(headers["content-type"].starts_with("application/openmetrics-text"));
    assert!(body.ends_with("# EOF\n"));

    for family in [
        "endpoint_copier_leader",
        "endpoint_copier_lease_transitions",
        "endpoint_copier_pairs",
        "endpoint_copier_endpoints",
        "endpoint_copier_writes",
        "endpoint_copier_writes_skipped",
        "endpoint_copier_sync_duration_seconds",
        "endpoint_copier_last_sync_timestamp_seconds",
        "endpoint_copier_watch_restarts",
        "endpoint_copier_api_errors",
    ] {
        assert!(
            body.lines()
                .any(|l| l.starts_with(&format!("# HELP {family} "))),
            "no HELP for {family} in\n{body}"
        );
    }

    let s = samples(&body);
    let v = |k: &str| {
        *s.get(k)
            .unwrap_or_else(|| panic!("no series {k} in\n{body}"))
    };
    assert_eq!(v("endpoint_copier_leader"), 1.0);
    assert_eq!(v("endpoint_copier_lease_transitions_total"), 1.0);
    assert_eq!(v("endpoint_copier_pairs{state=\"active\"}"), 1.0);
    assert_eq!(v("endpoint_copier_pairs{state=\"refused\"}"), 2.0);
    assert_eq!(
        v(
            "endpoint_copier_endpoints{pair=\"default/kubernetes-vip\",family=\"IPv4\",ready=\"true\"}"
        ),
        3.0
    );
    assert_eq!(
        v(
            "endpoint_copier_endpoints{pair=\"default/kubernetes-vip\",family=\"IPv4\",ready=\"false\"}"
        ),
        1.0
    );
    assert_eq!(
        v(
            "endpoint_copier_endpoints{pair=\"default/kubernetes-vip\",family=\"IPv6\",ready=\"true\"}"
        ),
        2.0
    );
    assert_eq!(
        v("endpoint_copier_writes_total{operation=\"update\",result=\"ok\"}"),
        2.0
    );
    assert_eq!(
        v("endpoint_copier_writes_total{operation=\"create\",result=\"conflict\"}"),
        1.0
    );
    assert_eq!(
        v("endpoint_copier_writes_total{operation=\"delete\",result=\"error\"}"),
        1.0
    );
    assert_eq!(v("endpoint_copier_writes_skipped_total"), 1.0);
    assert_eq!(v("endpoint_copier_sync_duration_seconds_count"), 1.0);
    assert!((v("endpoint_copier_sync_duration_seconds_sum") - 0.03).abs() < 1e-9);
    assert_eq!(
        v("endpoint_copier_sync_duration_seconds_bucket{le=\"0.04\"}"),
        1.0
    );
    assert_eq!(
        v("endpoint_copier_sync_duration_seconds_bucket{le=\"0.02\"}"),
        0.0
    );
    assert_eq!(
        v("endpoint_copier_last_sync_timestamp_seconds{pair=\"default/kubernetes-vip\"}"),
        1_700_000_000.0
    );
    assert_eq!(
        v("endpoint_copier_watch_restarts_total{watch=\"endpointslices\"}"),
        1.0
    );
    assert_eq!(v("endpoint_copier_api_errors_total{code=\"503\"}"), 1.0);

    r.shutdown.cancel();
    r.task.await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn a_forgotten_pair_leaves_no_series_behind() {
    let r = start(Duration::from_secs(30)).await;
    r.metrics
        .set_endpoints("default/kubernetes-vip", "IPv4", 3, 0);
    r.metrics.set_endpoints("default/other-vip", "IPv4", 1, 0);
    r.metrics.set_last_sync("default/kubernetes-vip");
    r.metrics.forget_pair("default/kubernetes-vip");
    let (_, _, body) = request(r.addr, "GET", "/metrics").await;
    assert!(!body.contains("pair=\"default/kubernetes-vip\""), "{body}");
    assert!(body.contains("pair=\"default/other-vip\""), "{body}");
    r.shutdown.cancel();
    r.task.await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn readyz_follows_the_ready_flag() {
    let r = start(Duration::from_secs(30)).await;
    assert_eq!(request(r.addr, "GET", "/readyz").await.0, 503);
    r.health.set_ready(true);
    let (status, _, body) = request(r.addr, "GET", "/readyz").await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    r.health.set_ready(false);
    assert_eq!(request(r.addr, "GET", "/readyz").await.0, 503);
    r.shutdown.cancel();
    r.task.await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn healthz_fails_naming_the_loop_that_stopped_progressing() {
    let max_age = Duration::from_millis(200);
    let r = start(max_age).await;
    let (status, _, body) = request(r.addr, "GET", "/healthz").await;
    assert_eq!(
        (status, body.as_str()),
        (200, "ok\n"),
        "no loops yet: alive"
    );

    let lease = r.beats.register("lease");
    tokio::time::sleep(max_age * 2).await;
    let (status, _, body) = request(r.addr, "GET", "/healthz").await;
    assert_eq!(status, 503);
    assert_eq!(body, "loops without progress: lease\n");

    // The loop makes progress again: healthy again.
    lease.tick();
    assert_eq!(request(r.addr, "GET", "/healthz").await.0, 200);
    r.shutdown.cancel();
    r.task.await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn last_sync_without_a_time_records_now() {
    let m = Metrics::new();
    let before = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    m.set_last_sync("default/kubernetes-vip");
    let s = samples(&m.encode());
    let at = s["endpoint_copier_last_sync_timestamp_seconds{pair=\"default/kubernetes-vip\"}"];
    assert!(
        at >= before.floor() && at < before + 60.0,
        "{at} vs {before}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn healthz_without_loop_tracking_only_says_the_process_serves() {
    let metrics = Metrics::new();
    let shutdown = CancellationToken::new();
    let server = Server::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = server.local_addr();
    let task = tokio::spawn(server.run(metrics, Health::new(), shutdown.clone()));
    assert_eq!(request(addr, "GET", "/healthz").await.0, 200);
    assert_eq!(request(addr, "GET", "/readyz").await.0, 503);
    shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn healthz_is_ok_while_loops_tick() {
    let r = start(Duration::from_secs(30)).await;
    let beat = r.beats.register("watch");
    beat.tick();
    assert_eq!(request(r.addr, "GET", "/healthz").await.0, 200);
    r.shutdown.cancel();
    r.task.await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn unknown_paths_are_404_and_other_methods_405() {
    let r = start(Duration::from_secs(30)).await;
    assert_eq!(request(r.addr, "GET", "/").await.0, 404);
    assert_eq!(request(r.addr, "GET", "/metrics/extra").await.0, 404);
    let (status, headers, _) = request(r.addr, "POST", "/metrics").await;
    assert_eq!(status, 405);
    assert_eq!(headers["allow"], "GET, HEAD");
    let (status, _, body) = request(r.addr, "HEAD", "/metrics").await;
    assert_eq!((status, body.as_str()), (200, ""));
    r.shutdown.cancel();
    r.task.await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn serve_returns_once_shutdown_is_cancelled_even_with_an_idle_connection() {
    let r = start(Duration::from_secs(30)).await;
    // A client that connects and says nothing must not hold the shutdown up.
    let _idle = TcpStream::connect(r.addr).await.unwrap();
    tokio::task::yield_now().await;
    r.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), r.task)
        .await
        .expect("the server stops within the drain timeout")
        .unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn an_address_in_use_is_an_error_naming_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let err = serve(
        addr,
        Metrics::new(),
        Health::new(),
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Bind { .. }));
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}
