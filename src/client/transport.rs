//! The connections under a `kube::Client`: kube's own stack (TLS from the kubeconfig, the
//! credentials, the base URL), on TCP sockets that notice a dead peer by themselves.
//!
//! Owns only how a connection is made. Whether the connections still carry answers is
//! [`super::link`]'s business; which client is current is [`super::Reloadable`]'s.
//!
//! [`Connector`] is the one seam under it: [`Connector::Tcp`] (what the daemon uses) dials TCP
//! and speaks TLS; [`Connector::Dial`] takes its byte streams from a [`Dial`] someone else
//! supplies — the simulator (`tests/sim/`) hands in-memory streams to its test bed — and
//! leaves TLS and the client certificate to it (the stream stands for an authenticated TLS
//! connection; bearer tokens are still sent).
//!
//! Why not `kube::Client::try_from(config)`: its connector sets no TCP keepalive, and the client
//! has no read timeout (watches are long-lived), so a connection whose peer vanished — the
//! apiserver's host powered off, or a firewall that drops packets and later lets them through
//! again while the server has forgotten the connection — stays "established" on our side until
//! the kernel's retransmission timer gives up, about 15 minutes. A watch on it delivers nothing
//! and reports nothing. client-go guards against the same with HTTP/2 pings (`ReadIdleTimeout`
//! 30 s, `PingTimeout` 15 s in `k8s.io/client-go/transport`); kube speaks HTTP/1.1, so the
//! equivalent is TCP keepalive plus `TCP_USER_TIMEOUT` on every socket.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use kube::client::ConfigExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tower::{BoxError, ServiceBuilder};

/// Idle time before the first keepalive probe on a quiet connection (a watch between events).
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(5);
/// Time between unanswered keepalive probes.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
/// Unanswered probes before the kernel declares the peer gone.
pub const KEEPALIVE_RETRIES: u32 = 3;
/// How long sent data (or a keepalive probe, tcp(7)) may stay unacknowledged before the kernel
/// closes the connection: a black-holed apiserver fails a request in 10 s instead of ~15 minutes.
/// Longer than any request we make waits for (`apply::REQUEST_TIMEOUT`), so it never cuts a
/// connection a slow but answering server still serves.
pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(10);

/// The worst case from a peer vanishing to the kernel failing a quiet connection's read: the idle
/// time, then the probes until `TCP_USER_TIMEOUT` overrides their count (tcp(7)).
pub const DEAD_PEER_NOTICED_WITHIN: Duration =
    Duration::from_secs(KEEPALIVE_IDLE.as_secs() + TCP_USER_TIMEOUT.as_secs());

// A request we still wait for is never cut by the kernel first.
const _: () = assert!(TCP_USER_TIMEOUT.as_secs() >= super::REQUEST_TIMEOUT.as_secs());

/// A client for `config`: kube's layers (base URL, credentials, extra headers) over a hyper
/// client whose sockets carry TCP keepalive and `TCP_USER_TIMEOUT`.
///
/// A kubeconfig that names a proxy keeps kube's own builder (the proxy owns the TCP connection to
/// the apiserver, so our socket options would only reach the proxy).
///
/// # Errors
/// What kube reports for unusable TLS material or credentials.
pub fn client(config: &kube::Config) -> Result<kube::Client, kube::Error> {
    client_with(config, &Connector::Tcp)
}

/// A byte stream a [`Dial`] hands out: HTTP/1.1 flows on it as is.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// The future of one [`Dial::dial`].
pub type Dialling = Pin<Box<dyn Future<Output = std::io::Result<Box<dyn Stream>>> + Send>>;

/// Makes connections to the API server without sockets (the simulator's in-memory network).
pub trait Dial: Send + Sync + 'static {
    /// A connection to `uri`'s server (scheme and authority of the kubeconfig's `server:`), or
    /// the error a socket would give (refused, reset, timed out). The stream stands for a TLS
    /// connection already authenticated as the dialler's host: no TLS is spoken on it.
    fn dial(&self, uri: &http::Uri) -> Dialling;
}

/// How the API client reaches its server.
#[derive(Clone, Default)]
pub enum Connector {
    /// TCP with keepalive and `TCP_USER_TIMEOUT`, TLS from the kubeconfig: the daemon's.
    #[default]
    Tcp,
    /// Streams from a [`Dial`] (tests and the simulator only).
    Dial(Arc<dyn Dial>),
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Connector::Tcp => f.write_str("Tcp"),
            Connector::Dial(_) => f.write_str("Dial"),
        }
    }
}

/// A stream from a [`Dial`], as hyper's pool wants it.
struct Dialled(Box<dyn Stream>);

impl AsyncRead for Dialled {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Dialled {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

impl Connection for Dialled {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

/// [`client`] over `connector`'s connections.
///
/// # Errors
/// What kube reports for unusable TLS material or credentials.
pub fn client_with(
    config: &kube::Config,
    connector: &Connector,
) -> Result<kube::Client, kube::Error> {
    if let Connector::Dial(dial) = connector {
        let dial = Arc::clone(dial);
        let connect_timeout = config.connect_timeout;
        let connect = tower::service_fn(move |uri: http::Uri| {
            let dialling = dial.dial(&uri);
            Box::pin(async move {
                // What the socket connector's connect timeout does for TCP.
                let stream = match connect_timeout {
                    Some(limit) => tokio::time::timeout(limit, dialling)
                        .await
                        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??,
                    None => dialling.await?,
                };
                Ok::<_, std::io::Error>(TokioIo::new(Dialled(stream)))
            })
        });
        let hyper =
            hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(connect);
        let service = ServiceBuilder::new()
            .layer(config.base_uri_layer())
            .option_layer(config.auth_layer()?)
            .layer(config.extra_headers_layer()?)
            .map_err(BoxError::from)
            .service(hyper);
        return Ok(kube::Client::new(service, config.default_namespace.clone()));
    }
    if config.proxy_url.is_some() {
        return kube::Client::try_from(config.clone());
    }
    let mut http = HttpConnector::new();
    // The URL is https; the TLS connector wraps this one.
    http.enforce_http(false);
    // Watch events and Lease renewals are small writes that must leave at once.
    http.set_nodelay(true);
    http.set_connect_timeout(config.connect_timeout);
    http.set_keepalive(Some(KEEPALIVE_IDLE));
    http.set_keepalive_interval(Some(KEEPALIVE_INTERVAL));
    http.set_keepalive_retries(Some(KEEPALIVE_RETRIES));
    http.set_tcp_user_timeout(Some(TCP_USER_TIMEOUT));
    let https = config.rustls_https_connector_with_connector(http)?;
    let hyper = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(https);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .service(hyper);
    Ok(kube::Client::new(service, config.default_namespace.clone()))
}
