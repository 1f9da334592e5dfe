//! The link's rules under paused time: heal edges, idle deadlines, give-ups.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Frame;
use tokio::time::Instant;

use super::*;

/// A body fed by the test: frames sent on the channel arrive, dropping the sender ends it.
struct Fed(tokio::sync::mpsc::UnboundedReceiver<Bytes>);

impl Body for Fed {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

fn fed() -> (tokio::sync::mpsc::UnboundedSender<Bytes>, Fed) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    (tx, Fed(rx))
}

/// An answered watch whose body the test feeds.
fn watch(link: &Link) -> (tokio::sync::mpsc::UnboundedSender<Bytes>, Tracked<Fed>) {
    let mut exchange = link.open(true);
    exchange.answered();
    let (tx, body) = fed();
    (tx, Tracked::new(body, exchange, true))
}

/// The next frame of `body` within `limit`: `Some(Ok)` data, `Some(Err)` a cut, `None` nothing yet.
async fn next(body: &mut Tracked<Fed>, limit: Duration) -> Option<Result<Bytes, String>> {
    match tokio::time::timeout(limit, body.frame()).await {
        Ok(Some(Ok(f))) => Some(Ok(f.into_data().unwrap())),
        Ok(Some(Err(e))) => Some(Err(e.to_string())),
        Ok(None) => Some(Err("ended".into())),
        Err(_) => None,
    }
}

#[tokio::test(start_paused = true)]
async fn a_watch_silent_through_trouble_is_cut_when_the_link_answers_again() {
    let link = Link::default();
    let (_tx, mut body) = watch(&link);
    tokio::time::advance(Duration::from_secs(3)).await;
    // The Lease renewal times out: its caller drops it after a second without an answer.
    let renewal = link.open(false);
    tokio::time::advance(Duration::from_secs(1)).await;
    drop(renewal);
    assert!(link.health().trouble_since.is_some());
    assert_eq!(
        next(&mut body, Duration::from_millis(10)).await,
        None,
        "not cut while in trouble"
    );
    // The next renewal is answered: the link works again, the silent watch starts over.
    tokio::time::advance(Duration::from_secs(2)).await;
    link.open(false).answered();
    let cut = next(&mut body, Duration::from_millis(10)).await;
    assert_eq!(cut, Some(Err(Cut::Healed.to_string())));
    assert_eq!(link.health().trouble_since, None);
    assert_eq!(link.health().cuts, 1);
}

#[tokio::test(start_paused = true)]
async fn a_watch_that_heard_from_the_server_during_the_trouble_is_kept() {
    let link = Link::default();
    let (tx, mut body) = watch(&link);
    link.open(false).failed();
    tokio::time::advance(Duration::from_secs(1)).await;
    tx.send(Bytes::from_static(b"{\"type\":\"BOOKMARK\"}\n"))
        .unwrap();
    assert!(matches!(
        next(&mut body, Duration::from_millis(10)).await,
        Some(Ok(_))
    ));
    link.open(false).answered();
    assert_eq!(
        next(&mut body, Duration::from_millis(10)).await,
        None,
        "kept"
    );
    assert_eq!(link.health().cuts, 0);
}

#[tokio::test(start_paused = true)]
async fn a_watch_that_receives_nothing_for_the_idle_limit_is_cut_and_bookmarks_keep_it_alive() {
    let link = Link::default();
    let (tx, mut body) = watch(&link);
    // A bookmark a minute, as kube-apiserver sends them: never cut.
    for _ in 0..5 {
        tokio::time::advance(Duration::from_secs(60)).await;
        tx.send(Bytes::from_static(b"{\"type\":\"BOOKMARK\"}\n"))
            .unwrap();
        assert!(matches!(
            next(&mut body, Duration::from_millis(10)).await,
            Some(Ok(_))
        ));
    }
    let quiet = Instant::now();
    let cut = next(&mut body, WATCH_IDLE + Duration::from_secs(1)).await;
    assert_eq!(cut, Some(Err(Cut::WatchIdle.to_string())));
    assert!(quiet.elapsed() >= WATCH_IDLE);
    assert!(
        link.health().trouble_since.is_some(),
        "a dead watch says the link is in trouble"
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_dropped_quickly_is_no_trouble_and_one_dropped_after_waiting_is() {
    let link = Link::default();
    drop(link.open(false));
    assert_eq!(link.health().trouble_since, None);
    let slow = link.open(false);
    tokio::time::advance(GAVE_UP_AFTER).await;
    drop(slow);
    assert!(link.health().trouble_since.is_some());
}

#[tokio::test(start_paused = true)]
async fn a_request_waiting_since_before_the_trouble_is_cut_at_the_heal_edge() {
    let link = Link::default();
    let pending = link.open(false);
    tokio::time::advance(Duration::from_secs(1)).await;
    link.open(false).failed();
    tokio::time::advance(Duration::from_secs(1)).await;
    link.open(false).answered();
    let why = tokio::time::timeout(Duration::from_millis(10), pending.cut()).await;
    assert_eq!(why, Ok(Cut::Healed));
}

#[tokio::test(start_paused = true)]
async fn heal_edges_cut_at_most_once_per_gap() {
    let link = Link::default();
    let (_a, mut first) = watch(&link);
    tokio::time::advance(Duration::from_secs(1)).await;
    link.open(false).failed();
    link.open(false).answered();
    assert!(matches!(
        next(&mut first, Duration::from_millis(10)).await,
        Some(Err(_))
    ));
    let (_b, mut second) = watch(&link);
    tokio::time::advance(Duration::from_secs(1)).await;
    link.open(false).failed();
    link.open(false).answered();
    assert_eq!(
        next(&mut second, Duration::from_millis(10)).await,
        None,
        "within the gap"
    );
    tokio::time::advance(MIN_CUT_GAP).await;
    link.open(false).failed();
    link.open(false).answered();
    assert!(matches!(
        next(&mut second, Duration::from_millis(10)).await,
        Some(Err(_))
    ));
}

#[test]
fn watches_are_told_from_other_requests_by_their_query() {
    let w = |s: &str| is_watch(&s.parse().unwrap());
    assert!(w("/api/v1/services?watch=true&resourceVersion=5"));
    assert!(w(
        "/apis/coordination.k8s.io/v1/namespaces/x/leases?fieldSelector=a&watch=1"
    ));
    assert!(!w("/api/v1/services?limit=500"));
    assert!(!w("/api/v1/services?watchers=true"));
    assert!(!w("/api/v1/services"));
}

#[test]
fn a_cut_is_recognised_through_the_errors_a_watch_wraps_it_in() {
    // As a watch reports a cut body: the watcher's error, kube's read error, the io::Error of
    // the lines reader, kube's service error, the cut.
    let io = std::io::Error::other(kube::Error::Service(Box::new(Cut::Healed)));
    let error = kube::runtime::watcher::Error::WatchFailed(kube::Error::ReadEvents(io));
    assert_eq!(cut_of(&error), Some(Cut::Healed));
    let other = kube::runtime::watcher::Error::WatchFailed(kube::Error::ReadEvents(
        std::io::Error::from(std::io::ErrorKind::ConnectionReset),
    ));
    assert_eq!(cut_of(&other), None);
}
