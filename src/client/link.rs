//! Link liveness: whether one client's connections to its API server still carry answers, judged
//! from the requests themselves, and the exchanges (requests waiting for an answer, response
//! bodies being read — watches above all) that are cut when they cannot be trusted any more.
//!
//! Owns the rules; [`super::Reloadable`] runs every request of a client through one [`Link`].
//! kube's watcher, the elector's Lease watch and the member watch need no change: a cut ends their
//! response body with an error, and each starts over on a new connection with its own backoff.
//!
//! Why: a network cut between a host and its apiserver that heals later leaves every open watch
//! on a connection the server has forgotten. Nothing closes it on our side, nothing arrives on
//! it, and the caches stop changing while the daemon looks healthy (measured on three real
//! apiservers: 60 s and counting after a 25 s cut). Three guards, fastest first:
//!
//! 1. **The heal edge.** A request that fails to connect, or that its caller gives up on, puts
//!    the link in trouble; the next answer on the link ends the trouble and cuts every exchange
//!    that has heard nothing since the trouble began. The Lease is renewed (or read) every retry
//!    period, so a healed link restarts its silent watches within about one retry period.
//! 2. **Idle deadlines.** A watch that has received nothing — not even a bookmark — for
//!    [`WATCH_IDLE`] is cut; any other exchange that waits [`ANSWER_IDLE`] for its next byte too.
//!    kube-apiserver sends every watch that allows bookmarks one at least every minute
//!    (`defaultBookmarkFrequency` in `k8s.io/apiserver/pkg/storage/cacher/cacher.go`), and
//!    kube's watcher asks for them.
//! 3. **TCP keepalive** on every socket ([`super::transport`]), for a peer that vanished.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::task::AtomicWaker;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};
use tracing::{info, warn};

/// A watch that has received nothing for this long is cut and starts over: kube-apiserver sends a
/// bookmark at least once a minute (see the module doc), so a healthy watch is never this quiet.
pub const WATCH_IDLE: Duration = Duration::from_secs(90);
/// Any other request whose answer (its headers, or the next bytes of its body) has not come for
/// this long is cut: every request we wait for is bounded below this by its caller already
/// (`apply::REQUEST_TIMEOUT`, the Lease deadlines); this catches the ones that are not (a
/// watcher's initial LIST).
pub const ANSWER_IDLE: Duration = Duration::from_secs(30);
/// A request its caller dropped after waiting this long counts as a failure of the link (the
/// caller's deadline passed); dropped sooner, it was cancelled for reasons of the caller's own.
pub const GAVE_UP_AFTER: Duration = Duration::from_millis(500);
/// At most one heal-edge cut per this interval: a link that keeps failing and recovering (an
/// overloaded apiserver answering some requests late) must not turn into a re-list storm; the
/// idle deadlines still catch what a skipped cut leaves.
pub const MIN_CUT_GAP: Duration = Duration::from_secs(10);

/// Why an exchange was cut. Surfaces to the caller as the request's or body's error, so kube's
/// watcher logs it and starts over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Cut {
    /// The link recovered from trouble, and this exchange heard nothing since it began.
    #[error("the connection went silent while the API server could not be reached; starting over")]
    Healed,
    /// A watch received nothing, not even a bookmark, for [`WATCH_IDLE`].
    #[error("the watch received nothing for {} s; starting over on a new connection", WATCH_IDLE.as_secs())]
    WatchIdle,
    /// No answer (or no next bytes) for [`ANSWER_IDLE`].
    #[error("no answer from the API server for {} s", ANSWER_IDLE.as_secs())]
    AnswerIdle,
}

/// What a link looks like now, for STATUS and `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    /// Since when requests fail or time out, while they do.
    pub trouble_since: Option<Instant>,
    /// Watches open now.
    pub watches: usize,
    /// The longest a watch open now has heard nothing.
    pub longest_silence: Option<Duration>,
    /// Exchanges cut so far (heal edges and idle deadlines).
    pub cuts: u64,
}

/// One client's link to its API server. Cheap to clone; every clone is the same link.
#[derive(Clone, Default)]
pub struct Link {
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    next_id: u64,
    /// By id, in the order they began: a heal edge cuts them in that order, the same every time
    /// (a simulated run replays exactly).
    exchanges: BTreeMap<u64, Entry>,
    trouble_since: Option<Instant>,
    last_cut: Option<Instant>,
    cuts: u64,
}

struct Entry {
    /// When this exchange last heard from the server (began: when it was sent).
    heard: Instant,
    watch: bool,
    signal: Arc<Signal>,
}

/// The cut flag of one exchange and the task to wake when it is set.
#[derive(Default)]
struct Signal {
    cut: Mutex<Option<Cut>>,
    set: AtomicBool,
    waker: AtomicWaker,
}

impl Signal {
    fn cut(&self, why: Cut) {
        if let Ok(mut g) = self.cut.lock() {
            g.get_or_insert(why);
        }
        self.set.store(true, Ordering::Release);
        self.waker.wake();
    }

    fn poll(&self, cx: &mut Context<'_>) -> Poll<Cut> {
        self.waker.register(cx.waker());
        if self.set.load(Ordering::Acquire) {
            let why = self.cut.lock().ok().and_then(|g| *g).unwrap_or(Cut::Healed);
            return Poll::Ready(why);
        }
        Poll::Pending
    }
}

impl Link {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a holder panicked between two assignments of plain data.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a request about to be sent.
    pub fn open(&self, watch: bool) -> Exchange {
        let now = Instant::now();
        let signal = Arc::new(Signal::default());
        let mut s = self.lock();
        s.next_id += 1;
        let id = s.next_id;
        s.exchanges.insert(
            id,
            Entry {
                heard: now,
                watch,
                signal: signal.clone(),
            },
        );
        Exchange {
            link: self.clone(),
            id,
            sent: now,
            answered: false,
            signal,
        }
    }

    /// A request failed to connect or its caller gave up waiting: the link is in trouble.
    fn failed(&self, now: Instant) {
        let mut s = self.lock();
        if s.trouble_since.is_none() {
            s.trouble_since = Some(now);
            drop(s);
            warn!("the API server does not answer; requests fail or time out");
        }
    }

    /// An answer arrived on `id`: the link works. Leaving trouble, every exchange that has heard
    /// nothing since the trouble began is cut (it sits on a connection that carried nothing
    /// through the trouble, most likely one the server has forgotten).
    fn answered(&self, id: u64, now: Instant) {
        let mut s = self.lock();
        if let Some(e) = s.exchanges.get_mut(&id) {
            e.heard = now;
        }
        let Some(since) = s.trouble_since.take() else {
            return;
        };
        if s.last_cut
            .is_some_and(|t| now.duration_since(t) < MIN_CUT_GAP)
        {
            drop(s);
            info!("the API server answers again");
            return;
        }
        let silent: Vec<Arc<Signal>> = s
            .exchanges
            .values()
            .filter(|e| e.heard < since)
            .map(|e| e.signal.clone())
            .collect();
        s.last_cut = Some(now);
        s.cuts += silent.len() as u64;
        drop(s);
        for signal in &silent {
            signal.cut(Cut::Healed);
        }
        info!(
            cut = silent.len(),
            "the API server answers again; restarting the watches and requests that stayed silent"
        );
    }

    fn heard(&self, id: u64, now: Instant) {
        if let Some(e) = self.lock().exchanges.get_mut(&id) {
            e.heard = now;
        }
    }

    fn idle_cut(&self) {
        self.lock().cuts += 1;
    }

    fn close(&self, id: u64) {
        self.lock().exchanges.remove(&id);
    }

    /// What the link looks like now.
    pub fn health(&self) -> Health {
        let now = Instant::now();
        let s = self.lock();
        let watches = s.exchanges.values().filter(|e| e.watch);
        Health {
            trouble_since: s.trouble_since,
            watches: watches.clone().count(),
            longest_silence: watches.map(|e| now.duration_since(e.heard)).max(),
            cuts: s.cuts,
        }
    }
}

/// One request and, once answered, its response body, as the link tracks it. Dropping it
/// unregisters the exchange; dropped while still waiting for an answer after [`GAVE_UP_AFTER`],
/// it counts as a failure of the link.
pub struct Exchange {
    link: Link,
    id: u64,
    sent: Instant,
    answered: bool,
    signal: Arc<Signal>,
}

impl Exchange {
    /// Completes when the link cuts this exchange.
    pub async fn cut(&self) -> Cut {
        std::future::poll_fn(|cx| self.signal.poll(cx)).await
    }

    /// The request got its answer (the response headers): the link works.
    pub fn answered(&mut self) {
        self.answered = true;
        self.link.answered(self.id, Instant::now());
    }

    /// The request failed without an answer from the server (refused, reset, TLS): trouble.
    pub fn failed(&mut self) {
        // Said once, here: the drop must not count it again.
        self.answered = true;
        self.link.failed(Instant::now());
    }

    /// The link cut this exchange itself: no news about the link (it just answered).
    pub fn dismissed(&mut self) {
        self.answered = true;
    }

    /// The caller's wait ran out ([`ANSWER_IDLE`]) before any answer: trouble.
    pub fn timed_out(&mut self) {
        self.link.idle_cut();
        self.failed();
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if !self.answered && self.sent.elapsed() >= GAVE_UP_AFTER {
            self.link.failed(Instant::now());
        }
        self.link.close(self.id);
    }
}

/// A response body read through the link: each frame counts as hearing from the server; a cut,
/// or no frame for the idle limit, ends it with an error.
pub struct Tracked<B> {
    inner: B,
    exchange: Exchange,
    limit: Duration,
    why_idle: Cut,
    idle: Pin<Box<Sleep>>,
    ended: bool,
}

impl<B> Tracked<B> {
    /// Tracks `inner`, the body answering `exchange`; `watch` picks the idle limit.
    pub fn new(inner: B, exchange: Exchange, watch: bool) -> Tracked<B> {
        let (limit, why_idle) = if watch {
            (WATCH_IDLE, Cut::WatchIdle)
        } else {
            (ANSWER_IDLE, Cut::AnswerIdle)
        };
        Tracked {
            inner,
            exchange,
            limit,
            why_idle,
            idle: Box::pin(tokio::time::sleep(limit)),
            ended: false,
        }
    }
}

impl<B> Body for Tracked<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<tower::BoxError>,
{
    type Data = Bytes;
    type Error = tower::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        if let Poll::Ready(why) = this.exchange.signal.poll(cx) {
            this.ended = true;
            return Poll::Ready(Some(Err(why.into())));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let now = Instant::now();
                this.exchange.link.heard(this.exchange.id, now);
                this.idle.as_mut().reset(now + this.limit);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.ended = true;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.ended = true;
                Poll::Ready(None)
            }
            Poll::Pending => {
                if this.idle.as_mut().poll(cx).is_ready() {
                    // Nothing for the whole limit: the connection under it is as good as dead,
                    // and likely the others of this link too.
                    this.ended = true;
                    this.exchange.link.idle_cut();
                    this.exchange.link.failed(Instant::now());
                    return Poll::Ready(Some(Err(this.why_idle.into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The [`Cut`] behind `error`, if a cut is what ended it (anywhere in its source chain): a watch
/// that the link started over, not one that failed.
pub fn cut_of(error: &(dyn std::error::Error + 'static)) -> Option<Cut> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(cut) = e.downcast_ref::<Cut>() {
            return Some(*cut);
        }
        // An io::Error's `source` is its inner error's source, skipping the inner error itself.
        next = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

/// Whether a request is a watch (`?watch=true`, `?watch=1`, as kube-apiserver reads it).
pub fn is_watch(uri: &http::Uri) -> bool {
    uri.query().is_some_and(|q| {
        q.split('&')
            .any(|kv| matches!(kv, "watch=true" | "watch=1" | "watch=True"))
    })
}

#[cfg(test)]
mod tests;
