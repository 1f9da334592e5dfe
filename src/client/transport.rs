//! The connections under a `kube::Client`: kube's own stack (TLS from the kubeconfig, the
//! credentials, the base URL), on TCP sockets that notice a dead peer by themselves.
//!
//! Owns only how a connection is made. Whether the connections still carry answers is
//! [`super::link`]'s business; which client is current is [`super::Reloadable`]'s.
//!
//! Why not `kube::Client::try_from(config)`: its connector sets no TCP keepalive, and the client
//! has no read timeout (watches are long-lived), so a connection whose peer vanished — the
//! apiserver's host powered off, or a firewall that drops packets and later lets them through
//! again while the server has forgotten the connection — stays "established" on our side until
//! the kernel's retransmission timer gives up, about 15 minutes. A watch on it delivers nothing
//! and reports nothing. client-go guards against the same with HTTP/2 pings (`ReadIdleTimeout`
//! 30 s, `PingTimeout` 15 s in `k8s.io/client-go/transport`); kube speaks HTTP/1.1, so the
//! equivalent is TCP keepalive plus `TCP_USER_TIMEOUT` on every socket.

use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::client::ConfigExt;
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
