//! One probe of one target: TCP connect, TLS for HTTPS, `GET <path>` with hyper's HTTP/1 client,
//! all within the probe timeout; the connection is kept alive between probes of the same target.
//!
//! Owns: the TLS and credentials taken from the kube config ([`Prober`]: kube's own
//! `rustls_client_config()` for the CA and client certificate, `auth_layer()` for bearer and
//! refreshable tokens, and the same CA without any credentials for [`Auth::Anonymous`] probes),
//! dialling an endpoint address, describing what went wrong in words, and telling a failure of
//! the endpoint from one that only says this host cannot judge it ([`Class::Abstain`]: a
//! certificate that does not verify, no TLS configuration, an anonymous probe refused).
//! Scheduling, thresholds and reporting are `run`'s; what a verdict means is the quorum's.
//!
//! [`Dialer`] is the seam under the dial: [`Dialer::Tcp`] on a host; [`Dialer::Dial`] takes
//! its streams from a [`ProbeDial`] someone else supplies (the simulator answers each host's
//! probes of each address: ok, refused, hung, black-holed, a TLS error, 500), and then stands
//! for TCP and TLS both.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use kube::client::ConfigExt;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower::{BoxError, Layer, ServiceExt};

use super::failure::Failure;
use super::{Auth, Class, Kind, Target};

/// The User-Agent of every probe, so an apiserver's audit log tells probes from the daemon's
/// own API requests.
const USER_AGENT: &str = concat!("endpoint-copier-probe/", env!("CARGO_PKG_VERSION"));
/// The most of a response body read to keep a connection reusable. `/readyz` answers "ok";
/// `?verbose` about 2 KiB. A longer body costs the kept-alive connection, not the verdict.
const MAX_BODY: usize = 64 * 1024;

/// Why no [`Prober`] could be built from a kube config.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The CA or the client certificate and key could not be loaded into rustls.
    #[error("failed to build the probes' TLS configuration from the kubeconfig")]
    Tls(#[source] kube::Error),
    /// The credentials (token, token file, exec plugin) could not be set up.
    #[error("failed to set up the probes' credentials from the kubeconfig")]
    Auth(#[source] kube::Error),
    /// The TLS server name override is not a valid DNS name or IP address.
    #[error("'{0}' is not a valid TLS server name")]
    ServerName(String),
}

/// Makes probe connections without sockets (the simulator's in-memory network).
pub trait ProbeDial: Send + Sync + 'static {
    /// A connection to `addr`, or the error a socket (or a TLS handshake, as an `io::Error`
    /// wrapping a `rustls::Error`) would give. For HTTPS targets the stream stands for a
    /// verified TLS session: no TLS is spoken on it.
    fn dial(&self, addr: SocketAddr) -> crate::client::transport::Dialling;
}

/// How probes reach an endpoint address.
#[derive(Clone, Default)]
pub enum Dialer {
    /// TCP, then TLS for HTTPS targets: the daemon's.
    #[default]
    Tcp,
    /// Streams from a [`ProbeDial`] (the simulator only).
    Dial(Arc<dyn ProbeDial>),
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dialer::Tcp => f.write_str("Tcp"),
            Dialer::Dial(_) => f.write_str("Dial"),
        }
    }
}

/// Request type the credentials layer rewrites.
type ProbeRequest = http::Request<Empty<Bytes>>;
/// The kube config's `Authorization` header as a service that adds it to a request (bearer
/// tokens, token files re-read when they change, exec plugins); `None` for client certificates.
/// The layer wants a service answering with an `http::Response`; ours carries the rewritten
/// request back as the response body.
type Credentials =
    tower::util::BoxCloneSyncService<ProbeRequest, http::Response<ProbeRequest>, BoxError>;

/// What the probes of every target share: TLS (CA, client certificate) and credentials from the
/// kube config, and how to name the server in TLS. Cheap to share behind an [`Arc`]; rebuild it
/// when the kubeconfig changes (RKE2 rotates client certificates).
#[derive(Clone)]
pub struct Prober {
    /// How HTTPS targets are dialled for [`Auth::Node`]: kube's rustls config (ALPN http/1.1,
    /// the client certificate if the kubeconfig has one), or why there is none.
    tls: Result<tokio_rustls::TlsConnector, String>,
    /// How HTTPS targets are dialled for [`Auth::Anonymous`]: the same CA, no client
    /// certificate, or why there is none.
    anonymous_tls: Result<tokio_rustls::TlsConnector, String>,
    /// The name the server certificate is verified against; `None`: the endpoint's IP address.
    server_name: Option<ServerName<'static>>,
    /// Adds `Authorization` to HTTPS requests; never sent in clear text.
    credentials: Option<Credentials>,
    /// How targets are dialled.
    dialer: Dialer,
}

impl std::fmt::Debug for Prober {
    // Hand-written: the TLS connector and the credentials must never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prober")
            .field("tls", &self.tls.as_ref().map(|_| "configured"))
            .field(
                "anonymous_tls",
                &self.anonymous_tls.as_ref().map(|_| "configured"),
            )
            .field("server_name", &self.server_name)
            .field("credentials", &self.credentials.is_some())
            .field("dialer", &self.dialer)
            .finish()
    }
}

impl Prober {
    /// A prober that verifies HTTPS targets against `config`'s CA and authenticates with its
    /// client certificate or token. The server certificate is checked against `server_name` when
    /// given, else the kube config's `tls-server-name`, else the endpoint's IP address (an
    /// apiserver's serving certificate lists its node addresses).
    ///
    /// # Errors
    /// [`Error::Tls`] for an unusable CA, certificate or key; [`Error::Auth`] for unusable
    /// credentials; [`Error::ServerName`] for a bad override.
    pub fn new(config: &kube::Config, server_name: Option<&str>) -> Result<Prober, Error> {
        let mut tls = config.rustls_client_config().map_err(Error::Tls)?;
        // We speak HTTP/1.1 only (one request at a time per connection is all a probe needs).
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        // The anonymous configuration is kube's own for the same config without any user
        // credentials: the same CA (file, data or reloading verifier), no client certificate.
        let mut bare = config.clone();
        bare.auth_info = kube::config::AuthInfo::default();
        let mut anonymous_tls = bare.rustls_client_config().map_err(Error::Tls)?;
        anonymous_tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let server_name = match server_name.or(config.tls_server_name.as_deref()) {
            Some(name) => Some(
                ServerName::try_from(name.to_owned())
                    .map_err(|_| Error::ServerName(name.to_owned()))?,
            ),
            None => None,
        };
        let credentials = config.auth_layer().map_err(Error::Auth)?.map(|layer| {
            let pass = tower::service_fn(|r: ProbeRequest| async move {
                Ok::<_, BoxError>(http::Response::new(r))
            });
            Credentials::new(layer.layer(pass))
        });
        Ok(Prober {
            tls: Ok(tokio_rustls::TlsConnector::from(Arc::new(tls))),
            anonymous_tls: Ok(tokio_rustls::TlsConnector::from(Arc::new(anonymous_tls))),
            server_name,
            credentials,
            dialer: Dialer::Tcp,
        })
    }

    /// This prober, dialling through `dialer`.
    pub fn with_dialer(mut self, dialer: Dialer) -> Prober {
        self.dialer = dialer;
        self
    }

    /// A prober without a kube config: HTTP and TCP targets work, HTTPS targets abstain with
    /// `reason` in their detail (say why there is no config, for `status`): this host cannot
    /// judge them, which says nothing about the endpoints.
    pub fn without_tls(reason: &str) -> Prober {
        Prober {
            tls: Err(reason.to_owned()),
            anonymous_tls: Err(reason.to_owned()),
            server_name: None,
            credentials: None,
            dialer: Dialer::Tcp,
        }
    }
}

/// The result of one probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Passed (connected, or a 2xx answer), failed, or could not judge the endpoint.
    pub class: Class,
    /// What happened, in words: `HTTP 200`, `connected`, `connection refused`, `timed out after
    /// 400 ms`, `HTTP 401`, `TLS: the certificate does not name 198.51.100.1 (it names
    /// 198.51.100.9)`...
    pub detail: String,
    /// How long it took, connect and TLS included (at most about the timeout).
    pub took: Duration,
}

impl Outcome {
    /// Whether it passed: connected (TCP), or a 2xx answer (HTTP, HTTPS).
    pub fn ok(&self) -> bool {
        self.class == Class::Pass
    }
}

/// An open HTTP/1 connection to one target, with the task that drives it.
struct Connection {
    sender: SendRequest<Empty<Bytes>>,
    /// Aborted on drop, so a connection we gave up on (timeout, error) is closed at once
    /// instead of lingering on a hung server.
    driver: JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// The probes of one target: one kept-alive connection reused from probe to probe and dropped
/// on any error or timeout. Not shared: `run` gives each target its own, and probes of one
/// target never overlap.
pub struct Session {
    prober: Arc<Prober>,
    target: Target,
    /// Whose credentials the probes carry.
    auth: Auth,
    connection: Option<Connection>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("target", &self.target)
            .field("auth", &self.auth)
            .field("connected", &self.connection.is_some())
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A session for `target` whose probes carry `auth`'s credentials (HTTPS only); nothing is
    /// dialled until the first probe.
    pub fn new(prober: Arc<Prober>, target: Target, auth: Auth) -> Session {
        Session {
            prober,
            target,
            auth,
            connection: None,
        }
    }

    /// The target probed.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The prober this session was built with (to notice a rebuilt one).
    pub fn prober(&self) -> &Arc<Prober> {
        &self.prober
    }

    /// Whether a kept-alive connection is open (for tests and the benchmark).
    pub fn is_connected(&self) -> bool {
        self.connection
            .as_ref()
            .is_some_and(|c| !c.sender.is_closed())
    }

    /// Probes once; the whole probe (connect, TLS, request, response) takes at most `timeout`.
    /// Never fails: a failure is an [`Outcome`] that says why.
    pub async fn probe(&mut self, timeout: Duration) -> Outcome {
        let started = Instant::now();
        let result = tokio::time::timeout(timeout, self.attempt()).await;
        let (class, detail) = match result {
            Ok(Ok(detail)) => (Class::Pass, detail),
            Ok(Err(failure)) => {
                self.connection = None;
                (failure.class, failure.detail)
            }
            Err(_elapsed) => {
                // The server may answer this request later; a fresh connection next time keeps
                // a late answer from being read as the next probe's.
                self.connection = None;
                (
                    Class::Fail,
                    format!("timed out after {} ms", timeout.as_millis()),
                )
            }
        };
        Outcome {
            class,
            detail,
            took: started.elapsed(),
        }
    }

    /// One probe without the time limit: `Ok(detail)` when it passed.
    async fn attempt(&mut self) -> Result<String, Failure> {
        let addr = SocketAddr::new(self.target.address, self.target.port);
        let (path, https) = match &self.target.kind {
            Kind::Tcp => {
                match &self.prober.dialer {
                    Dialer::Tcp => drop(
                        TcpStream::connect(addr)
                            .await
                            .map_err(|e| Failure::io(&e))?,
                    ),
                    Dialer::Dial(dial) => drop(dial.dial(addr).await.map_err(|e| Failure::io(&e))?),
                }
                return Ok("connected".to_owned());
            }
            Kind::Http { path } => (path.clone(), false),
            Kind::Https { path } => (path.clone(), true),
        };
        let request = self.request(&path, https).await?;
        if let Some(mut connection) = self.connection.take()
            && !connection.sender.is_closed()
        {
            match send(&mut connection, request).await {
                Ok(answer) => {
                    if answer.reusable {
                        self.connection = Some(connection);
                    }
                    return answer.verdict(self.auth);
                }
                // A reused connection can fail only because the server closed it while idle;
                // like Go's transport, try once more on a fresh one before calling it a failure
                // (a dead server then refuses, a black-holed one times out).
                Err(_) => {
                    let retry = self.request(&path, https).await?;
                    return self.fresh(addr, https, retry).await;
                }
            }
        }
        self.fresh(addr, https, request).await
    }

    /// Dials a new connection, sends `request` on it and keeps the connection when it can be
    /// reused.
    async fn fresh(
        &mut self,
        addr: SocketAddr,
        https: bool,
        request: ProbeRequest,
    ) -> Result<String, Failure> {
        self.connection = None;
        let mut connection = self.connect(addr, https).await?;
        let answer = send(&mut connection, request).await?;
        if answer.reusable {
            self.connection = Some(connection);
        }
        answer.verdict(self.auth)
    }

    async fn connect(&self, addr: SocketAddr, https: bool) -> Result<Connection, Failure> {
        if let Dialer::Dial(dial) = &self.prober.dialer {
            // The dialled stream stands for TCP and TLS both (see `ProbeDial`).
            let stream = dial.dial(addr).await.map_err(|e| Failure::io(&e))?;
            return handshake(TokioIo::new(stream)).await;
        }
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| Failure::io(&e))?;
        // Requests are tiny and latency is what we measure.
        let _ = tcp.set_nodelay(true);
        if https {
            let tls = match self.auth {
                Auth::Node => &self.prober.tls,
                Auth::Anonymous => &self.prober.anonymous_tls,
            };
            // No TLS configuration on this host says nothing about the endpoint.
            let connector = tls
                .as_ref()
                .map_err(|reason| Failure::abstain(format!("TLS: {reason}")))?;
            let name = self
                .prober
                .server_name
                .clone()
                .unwrap_or(ServerName::IpAddress(addr.ip().into()));
            let tls = connector.connect(name, tcp).await.map_err(|e| {
                // A refused certificate is a rustls error ("TLS: ..."); anything else in the
                // handshake (a reset, EOF) is named as happening there.
                let failure = Failure::io(&e);
                if failure.detail.starts_with("TLS: ") {
                    failure
                } else {
                    Failure::fail(format!("TLS handshake: {}", failure.detail))
                }
            })?;
            handshake(TokioIo::new(tls)).await
        } else {
            handshake(TokioIo::new(tcp)).await
        }
    }

    /// `GET path`, with the kube config's credentials on HTTPS for [`Auth::Node`] only (never in
    /// clear text, never for a probe only annotations ask for).
    async fn request(&self, path: &str, https: bool) -> Result<ProbeRequest, Failure> {
        let host = match self.target.address {
            IpAddr::V4(a) => format!("{a}:{}", self.target.port),
            IpAddr::V6(a) => format!("[{a}]:{}", self.target.port),
        };
        let request = http::Request::get(path)
            .header(http::header::HOST, host)
            .header(http::header::USER_AGENT, USER_AGENT)
            .body(Empty::new())
            .map_err(|e| Failure::fail(format!("bad request: {e}")))?;
        match (&self.prober.credentials, https, self.auth) {
            (Some(credentials), true, Auth::Node) => credentials
                .clone()
                .oneshot(request)
                .await
                .map(http::Response::into_body)
                // An exec plugin's or token file's error names the source, never the token.
                .map_err(|e| Failure::abstain(format!("credentials: {e}"))),
            _ => Ok(request),
        }
    }
}

/// HTTP/1 handshake on an open stream; the connection is driven by its own task.
async fn handshake<T>(io: T) -> Result<Connection, Failure>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| Failure::hyper(&e))?;
    let driver = tokio::spawn(async move {
        // Its errors surface on the request side, where they are described.
        let _ = connection.await;
    });
    Ok(Connection { sender, driver })
}

/// What a server answered.
struct Answer {
    status: http::StatusCode,
    /// Whether the connection can carry the next probe (the body was read to its end).
    reusable: bool,
}

impl Answer {
    /// `Ok(detail)` for 2xx, else the status as the failure. An anonymous probe refused (401,
    /// 403) abstains: the server answered, and says only that it wants credentials the probe
    /// must not carry (RKE2 and K3s turn anonymous auth off).
    fn verdict(&self, auth: Auth) -> Result<String, Failure> {
        let code = self.status.as_u16();
        let detail = format!("HTTP {code}");
        if self.status.is_success() {
            Ok(detail)
        } else if auth == Auth::Anonymous && matches!(code, 401 | 403) {
            Err(Failure::abstain(format!(
                "{detail}: the endpoint refuses anonymous probes, and a probe only annotations ask for carries no credentials"
            )))
        } else {
            Err(Failure::fail(detail))
        }
    }
}

/// Sends one request and reads the answer; `Err` when the connection failed before an answer.
async fn send(connection: &mut Connection, request: ProbeRequest) -> Result<Answer, Failure> {
    connection
        .sender
        .ready()
        .await
        .map_err(|e| Failure::hyper(&e))?;
    let response = connection
        .sender
        .send_request(request)
        .await
        .map_err(|e| Failure::hyper(&e))?;
    let status = response.status();
    // Read the body to its end so the connection can carry the next probe; a body too long or
    // cut short costs the connection, not the verdict (the status stands).
    let body = http_body_util::Limited::new(response.into_body(), MAX_BODY);
    let reusable = body.collect().await.is_ok();
    Ok(Answer { status, reusable })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::failure::{describe_certificate, describe_io};

    #[test]
    fn io_errors_are_described_in_words() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(describe_io(&refused), "connection refused");
        let tls = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert_eq!(
            describe_io(&tls),
            "TLS: the certificate is not signed by the kubeconfig's CA (invalid peer certificate: UnknownIssuer)"
        );
        assert_eq!(Failure::io(&tls).class, Class::Abstain);
        assert_eq!(Failure::io(&refused).class, Class::Fail);
    }

    #[test]
    fn a_certificate_without_the_endpoint_address_names_what_it_has() {
        let e = rustls::CertificateError::NotValidForNameContext {
            expected: ServerName::IpAddress(IpAddr::from([198, 51, 100, 31]).into()),
            presented: vec![
                "IpAddress(198.51.100.30)".to_owned(),
                "DnsName(\"kubernetes\")".to_owned(),
            ],
        };
        assert_eq!(
            describe_certificate(&e),
            "the certificate does not name 198.51.100.31 (its subject alternative names: 198.51.100.30, DNS:kubernetes)"
        );
        let failure = Failure::tls(&rustls::Error::InvalidCertificate(e));
        assert_eq!(failure.class, Class::Abstain);
        // Another TLS error (the server's alert, a protocol error) is the endpoint's failure.
        let alert = Failure::tls(&rustls::Error::AlertReceived(
            rustls::AlertDescription::InternalError,
        ));
        assert_eq!(alert.class, Class::Fail);
    }

    #[test]
    fn an_anonymous_probe_refused_abstains_and_an_authenticated_one_fails() {
        let answer = |code: u16| Answer {
            status: http::StatusCode::from_u16(code).unwrap(),
            reusable: true,
        };
        for code in [401, 403] {
            let anonymous = answer(code).verdict(Auth::Anonymous).unwrap_err();
            assert_eq!(anonymous.class, Class::Abstain, "{code}");
            assert!(anonymous.detail.contains("refuses anonymous probes"));
            assert_eq!(
                answer(code).verdict(Auth::Node).unwrap_err().class,
                Class::Fail
            );
        }
        assert_eq!(
            answer(500).verdict(Auth::Anonymous).unwrap_err().class,
            Class::Fail
        );
        assert_eq!(answer(200).verdict(Auth::Anonymous).unwrap(), "HTTP 200");
    }

    #[test]
    fn a_bad_server_name_override_is_refused() {
        let config = kube::Config::new("https://127.0.0.1:6443".parse().unwrap());
        let err = Prober::new(&config, Some("not a name")).unwrap_err();
        assert!(matches!(err, Error::ServerName(_)), "{err}");
    }

    #[test]
    fn a_prober_never_shows_its_token() {
        let mut config = kube::Config::new("https://127.0.0.1:6443".parse().unwrap());
        config.auth_info.token = Some("s3cr3t-token".to_owned().into());
        let prober = Prober::new(&config, None).unwrap();
        let shown = format!("{prober:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("credentials: true"), "{shown}");
    }

    #[tokio::test]
    async fn without_tls_an_https_target_abstains_with_the_reason() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = Target {
            address: IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            port: listener.local_addr().unwrap().port(),
            kind: Kind::Https {
                path: "/readyz".to_owned(),
            },
        };
        let prober = Arc::new(Prober::without_tls("no kubeconfig yet"));
        let outcome = Session::new(prober, target, Auth::Node)
            .probe(Duration::from_millis(400))
            .await;
        // This host cannot judge it: an abstention, not a failure of the endpoint.
        assert_eq!(outcome.class, Class::Abstain);
        assert_eq!(outcome.detail, "TLS: no kubeconfig yet");
    }

    /// Reads one request head from `stream` (probes send no body).
    async fn read_head(stream: &mut tokio::net::TcpStream) -> bool {
        use tokio::io::AsyncReadExt;
        let mut head = Vec::new();
        let mut buf = [0u8; 512];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        true
    }

    #[tokio::test]
    async fn a_kept_alive_connection_the_server_dropped_is_retried_on_a_fresh_one() {
        use tokio::io::AsyncWriteExt;
        const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            // First connection: answers one request, then drops the second unanswered, as a
            // server closing an idle connection at the wrong moment does.
            let (mut first, _) = listener.accept().await.unwrap();
            assert!(read_head(&mut first).await);
            first.write_all(OK).await.unwrap();
            assert!(read_head(&mut first).await);
            drop(first);
            let (mut second, _) = listener.accept().await.unwrap();
            assert!(read_head(&mut second).await);
            second.write_all(OK).await.unwrap();
            second
        });
        let target = Target {
            address: IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            port,
            kind: Kind::Http {
                path: "/healthz".to_owned(),
            },
        };
        let mut session = Session::new(Arc::new(Prober::without_tls("unused")), target, Auth::Node);
        let timeout = Duration::from_secs(2);
        assert_eq!(session.probe(timeout).await.detail, "HTTP 200");
        assert!(session.is_connected());
        let second = session.probe(timeout).await;
        assert!(second.ok(), "{}", second.detail);
        let _kept = server.await.unwrap();
    }
}
