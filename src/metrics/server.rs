//! The health flags ([`Health`]) and the small HTTP server for `/metrics`, `/healthz` and
//! `/readyz` ([`Server`], [`serve`]): binding, serving until shutdown, and answering each path.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{
    ACCEPT_BACKOFF, DRAIN_TIMEOUT, Error, HEADER_READ_TIMEOUT, METRICS_CONTENT_TYPE, Metrics,
};
use crate::notify::Heartbeats;

/// The flags behind `/healthz` and `/readyz`, shared between the daemon and the server. Cheap to
/// clone: clones share the flags.
#[derive(Debug, Clone)]
pub struct Health {
    loops: Option<(Heartbeats, Duration)>,
    ready: Arc<AtomicBool>,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    /// Health without loop tracking: `/healthz` answers 200 while the process serves. Prefer
    /// [`Health::tracking`], which makes `/healthz` mean "every loop makes progress". Not ready
    /// until [`Health::set_ready`].
    pub fn new() -> Self {
        Health {
            loops: None,
            ready: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Health judged from `beats`: `/healthz` answers 200 while every registered loop ticked
    /// within `max_age` (use the watchdog interval, or 30 s without one) — the same signal that
    /// gates the systemd watchdog. Not ready until [`Health::set_ready`].
    pub fn tracking(beats: Heartbeats, max_age: Duration) -> Self {
        Health {
            loops: Some((beats, max_age)),
            ready: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Sets readiness: true while in sync as leader, or watching as follower.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The loops that made no progress within the maximum age (empty: `/healthz` answers 200).
    pub fn stale_loops(&self) -> Vec<&'static str> {
        self.loops
            .as_ref()
            .map_or_else(Vec::new, |(beats, max_age)| beats.stale(*max_age))
    }
}

/// A bound metrics listener, so a caller (or a test binding port 0) learns the address before
/// serving.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    addr: SocketAddr,
}

impl Server {
    /// Binds `listen`. A non-loopback address is allowed but warned about: the metrics and health
    /// endpoints have no authentication.
    ///
    /// # Errors
    /// [`Error::Bind`] naming the address.
    pub async fn bind(listen: SocketAddr) -> Result<Server, Error> {
        let err = |source| Error::Bind {
            addr: listen,
            source,
        };
        let listener = TcpListener::bind(listen).await.map_err(err)?;
        let addr = listener.local_addr().map_err(err)?;
        if !addr.ip().is_loopback() {
            tracing::warn!(address = %addr, "metrics served on a non-loopback address, without authentication");
        }
        Ok(Server { listener, addr })
    }

    /// The address actually bound (the real port when `:0` was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` is cancelled, then gives open connections a moment to finish.
    /// Accept failures (out of file descriptors) are logged and retried, never fatal.
    pub async fn run(self, metrics: Arc<Metrics>, health: Health, shutdown: CancellationToken) {
        tracing::info!(address = %self.addr, "serving metrics and health");
        // Every connection task is kept here, so none outlives the server.
        let mut connections = JoinSet::new();
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = self.listener.accept() => accepted,
                // Reap finished connections as we go, so the set does not grow without bound.
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(error = %error, "failed to accept a metrics connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let metrics = Arc::clone(&metrics);
            let health = health.clone();
            let shutdown = shutdown.clone();
            connections.spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let response = route(&req, &metrics, &health);
                    async move { Ok::<_, Infallible>(response) }
                });
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT);
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                let mut conn = std::pin::pin!(conn);
                let result = tokio::select! {
                    r = conn.as_mut() => r,
                    () = shutdown.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                };
                if let Err(error) = result {
                    tracing::debug!(error = %error, "metrics connection ended with an error");
                }
            });
        }
        // Dropping the set aborts what did not finish in time.
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
    }
}

/// Binds `listen` and serves `/metrics`, `/healthz` and `/readyz` until `shutdown` is cancelled.
///
/// # Errors
/// [`Error::Bind`] when the address cannot be bound.
pub async fn serve(
    listen: SocketAddr,
    metrics: Arc<Metrics>,
    health: Health,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    Server::bind(listen)
        .await?
        .run(metrics, health, shutdown)
        .await;
    Ok(())
}

/// Answers one request: GET or HEAD on `/metrics`, `/healthz`, `/readyz`; 405 for other methods on
/// those paths; 404 elsewhere.
fn route(req: &Request<Incoming>, metrics: &Metrics, health: &Health) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match path {
        "/metrics" => {
            let mut r = Response::new(Full::new(Bytes::from(metrics.encode())));
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(METRICS_CONTENT_TYPE));
            r
        }
        "/healthz" => {
            let stale = health.stale_loops();
            if stale.is_empty() {
                text(StatusCode::OK, "ok\n")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("loops without progress: {}\n", stale.join(", ")),
                )
            }
        }
        _ => {
            if health.is_ready() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_owned())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
