//! Network namespaces for the probe tests: real sockets at documentation-range addresses that
//! exist only inside a namespace the test created itself, with stand-in apiservers
//! ([`Listener`]) that a test makes answer, refuse, hang, fail or vanish (black hole).
//!
//! How: [`enter`] re-runs the current test alone under `unshare --net` and returns `None` to the
//! outer run; inside, it brings `lo` up, adds a veth pair whose both ends stay in the namespace
//! (the black hole: a route to an address through it and a neighbour entry for a MAC nobody has,
//! so connects and established connections time out instead of being refused), and checks that
//! nothing else exists: no other interface, no default route, so no probe can leave. The kernel
//! here has no tc classifiers, so the black hole is a route, not a qdisc.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use endpoint_copier::probe::{Kind, Target};
use endpoint_copier_testbed::{Authenticator, TestBed};

/// Set in the re-executed test: we are inside the namespace.
const IN_NETNS: &str = "ECTEST_IN_NETNS";
/// The black hole's veth pair (both ends inside the namespace).
const HOLE: &str = "ecbh0";
const HOLE_PEER: &str = "ecbh1";
/// A MAC address no interface has: frames to it are dropped by the peer end.
const NOBODY: &str = "02:00:00:00:00:03";

/// Runs `ip` with `args` and panics with its output when it fails.
fn ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .env("PATH", "/usr/sbin:/sbin:/usr/bin:/bin")
        .output()
        .unwrap_or_else(|e| panic!("failed to run ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn family(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() { "-4" } else { "-6" }
}

fn host_prefix(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}/32"),
        IpAddr::V6(a) => format!("{a}/128"),
    }
}

/// The namespace the current test runs in (only `lo` and the black hole's veth pair).
#[derive(Debug)]
pub struct NetNs {
    /// Addresses currently black-holed.
    holes: Mutex<BTreeSet<IpAddr>>,
}

/// Puts the calling test in a fresh network namespace.
///
/// `test` is the test's full name as libtest prints it (`probes::a_refused_apiserver_goes_down`).
/// Outside a namespace this re-runs that one test inside a new one, asserts it passed (printing
/// its output) and returns `None`: the caller returns at once. Inside, it prepares the namespace
/// and returns it. Also `None`, with a message, when the suite runs against a real cluster
/// (unreachable from inside) or when namespaces cannot be created — except under `CI=true`,
/// where that panics: CI must not skip these tests.
pub fn enter(test: &str) -> Option<Arc<NetNs>> {
    if inside() {
        return Some(Arc::new(NetNs::prepare()));
    }
    if std::env::var_os("ENDPOINT_COPIER_TEST_KUBECONFIG").is_some() {
        eprintln!(
            "skipping {test}: probe tests run in a network namespace, where a real cluster is not reachable"
        );
        return None;
    }
    let has_ip = Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    let command = if has_ip { unshare_command() } else { None };
    let Some(mut command) = command else {
        let why = if has_ip {
            "cannot create a network namespace (unshare --net failed, also with --map-root-user)"
        } else {
            "the ip command (iproute2) is missing, so the namespace's addresses cannot be set"
        };
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test}: {why}; CI must run the probe tests"
        );
        eprintln!("skipping {test}: {why}");
        return None;
    };
    let out = command
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("--- {test} inside a network namespace ---\n{stdout}\n{stderr}");
    assert!(
        out.status.success(),
        "{test} failed inside its network namespace"
    );
    // A misspelt name runs nothing and succeeds: make sure the test itself ran.
    assert!(
        stdout.contains("1 passed"),
        "{test} did not run inside its network namespace (is the name exact?)"
    );
    None
}

/// Whether this process runs inside a namespace made by [`enter`] or [`unshare_command`].
pub fn inside() -> bool {
    std::env::var_os(IN_NETNS).is_some()
}

/// The `main` of a benchmark that measures inside a network namespace of its own: outside one,
/// re-runs this program under `unshare --net` (or says why nothing was measured); inside, runs
/// `bench` on a two-thread runtime. `name` is the program's, for the message.
pub fn bench_main<F, Fut>(name: &str, bench: F) -> std::process::ExitCode
where
    F: FnOnce(std::sync::Arc<NetNs>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use std::process::ExitCode;
    if !inside() {
        let Some(mut command) = unshare_command() else {
            println!(
                "{name}: cannot create a network namespace (unshare --net failed, also with \
                 --map-root-user); run it as root. Nothing measured."
            );
            return ExitCode::SUCCESS;
        };
        return if command.status().unwrap().success() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    let ns = std::sync::Arc::new(NetNs::prepare());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(bench(ns));
    ExitCode::SUCCESS
}

/// A command that runs this executable again in a new network namespace (as root, else with a
/// user namespace), marked so that [`inside`] is true there; add the arguments. `None` when
/// namespaces cannot be created here. For programs other than the test suite (the benchmark):
/// re-run yourself with it, and call [`NetNs::prepare`] inside.
pub fn unshare_command() -> Option<Command> {
    let flags = [vec!["--net"], vec!["--net", "--map-root-user"]]
        .into_iter()
        .find(|args| {
            Command::new("unshare")
                .args(args)
                .arg("true")
                .output()
                .is_ok_and(|o| o.status.success())
        })?;
    let mut command = Command::new("unshare");
    command
        .args(flags)
        .arg("--")
        .arg(std::env::current_exe().ok()?)
        .env(IN_NETNS, "1");
    Some(command)
}

impl NetNs {
    /// Prepares the namespace this process is in (see [`inside`]): `lo` up, the black hole's
    /// veth pair, and a check that nothing can leave. Panics when that fails.
    pub fn prepare() -> NetNs {
        ip(&["link", "set", "lo", "up"]);
        ip(&[
            "link", "add", HOLE, "type", "veth", "peer", "name", HOLE_PEER,
        ]);
        ip(&["link", "set", HOLE, "up"]);
        ip(&["link", "set", HOLE_PEER, "up"]);
        let ns = NetNs {
            holes: Mutex::default(),
        };
        ns.assert_sealed();
        ns
    }

    /// Asserts that no traffic can leave: only `lo` and the black hole's pair exist, and there
    /// is no default route in either family.
    pub fn assert_sealed(&self) {
        let links: BTreeSet<String> = ip(&["-o", "link", "show"])
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|name| name.trim().split('@').next().unwrap_or("").to_owned())
            .collect();
        let expected: BTreeSet<String> = ["lo", HOLE, HOLE_PEER]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        assert_eq!(links, expected, "unexpected interfaces in the namespace");
        for f in ["-4", "-6"] {
            let default = ip(&[f, "route", "show", "default"]);
            assert!(
                default.trim().is_empty(),
                "a default route exists: {default}"
            );
        }
    }

    /// Adds `address` to `lo`, so it can be listened on and dialled inside the namespace.
    pub fn add_address(&self, address: IpAddr) {
        let prefix = host_prefix(address);
        let mut args = vec![family(address), "addr", "add", prefix.as_str(), "dev", "lo"];
        if address.is_ipv6() {
            // No duplicate address detection: usable at once, not "tentative".
            args.push("nodad");
        }
        ip(&args);
    }

    /// Makes `address` a black hole: taken off `lo` and routed into the veth pair towards a MAC
    /// nobody has. Connects and established connections time out; nothing is refused.
    pub fn black_hole(&self, address: IpAddr) {
        let prefix = host_prefix(address);
        let f = family(address);
        ip(&[f, "addr", "del", prefix.as_str(), "dev", "lo"]);
        ip(&[f, "route", "add", prefix.as_str(), "dev", HOLE]);
        let a = address.to_string();
        ip(&[
            f,
            "neigh",
            "replace",
            a.as_str(),
            "lladdr",
            NOBODY,
            "dev",
            HOLE,
            "nud",
            "permanent",
        ]);
        self.holes.lock().unwrap().insert(address);
    }

    /// Undoes [`NetNs::black_hole`]: the address is local again; a listener still bound to it
    /// accepts again.
    pub fn heal(&self, address: IpAddr) {
        let prefix = host_prefix(address);
        let f = family(address);
        let a = address.to_string();
        ip(&[f, "neigh", "del", a.as_str(), "dev", HOLE]);
        ip(&[f, "route", "del", prefix.as_str(), "dev", HOLE]);
        self.add_address(address);
        self.holes.lock().unwrap().remove(&address);
    }

    /// Adds `address` and starts a stand-in apiserver on `address:port` (0: any free port),
    /// in `Mode::Ok`. With `tls`, HTTPS with a certificate for `address` signed by the test bed's
    /// CA and the test bed's authentication (client certificate or token; else 401); without,
    /// plain HTTP and no authentication.
    pub async fn listener(
        self: &Arc<Self>,
        address: IpAddr,
        port: u16,
        tls: Option<&TestBed>,
    ) -> Listener {
        self.listener_with_sans(address, port, tls, &[address])
            .await
    }

    /// As [`NetNs::listener`], but the HTTPS certificate names exactly `sans` (IP SANs), which
    /// need not include `address`: an apiserver whose certificate lacks an address it is
    /// reached at (a derived IPv6 address, an ExternalIP).
    pub async fn listener_with_sans(
        self: &Arc<Self>,
        address: IpAddr,
        port: u16,
        tls: Option<&TestBed>,
        sans: &[IpAddr],
    ) -> Listener {
        self.add_address(address);
        let tls = tls.map(|bed| {
            (
                tokio_rustls::TlsAcceptor::from(bed.server_tls_for(sans)),
                bed.authenticator(),
            )
        });
        let socket = bind(SocketAddr::new(address, port));
        let addr = socket.local_addr().unwrap();
        let (mode, _) = watch::channel(Mode::Ok);
        let state = Arc::new(State {
            mode,
            tls,
            requests: Mutex::default(),
            connections: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            max_open: AtomicUsize::new(0),
            flaps: AtomicUsize::new(0),
        });
        let listener = Listener {
            ns: Arc::clone(self),
            addr,
            state,
            server: Mutex::new(None),
        };
        listener.start(socket);
        listener
    }
}

/// Binds with SO_REUSEADDR, so a listener that was stopped ([`Mode::Refuse`]) can bind again.
fn bind(addr: SocketAddr) -> TcpListener {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind(addr).unwrap();
    socket.listen(128).unwrap()
}

/// How a stand-in apiserver behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// 200 "ok" on `/readyz` (`/livez`, `/healthz` too), 404 elsewhere; 401 over HTTPS without
    /// valid credentials.
    Ok,
    /// Not listening, open connections closed: connection refused.
    Refuse,
    /// Accepts connections but never answers (new connections do not even get TLS).
    Hang,
    /// Answers every request with this status.
    Status(u16),
    /// Answers every request with 401.
    Unauthorized,
    /// The address is black-holed: nothing reaches the listener (see [`NetNs::black_hole`]).
    BlackHole,
    /// Every other request fails with 500 (the first one fails): a flapping apiserver.
    Flap,
    /// Each request fails with 500 with this chance, in percent, drawn independently: an
    /// apiserver whose `/readyz` hovers around the probes' timeout, as each host sees it.
    Flaky(u8),
}

/// One received request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// Path and query.
    pub path: String,
    /// The authenticated user, if any (HTTPS only).
    pub user: Option<String>,
    /// Whether the request carried an `Authorization` header (valid or not).
    pub authorization: bool,
    /// Whether its TLS connection presented a client certificate (valid or not).
    pub client_certificate: bool,
}

impl Received {
    /// Whether it carried any credential at all: a token or a client certificate.
    pub fn has_credentials(&self) -> bool {
        self.authorization || self.client_certificate
    }
}

struct State {
    mode: watch::Sender<Mode>,
    tls: Option<(tokio_rustls::TlsAcceptor, Authenticator)>,
    requests: Mutex<Vec<Received>>,
    connections: AtomicUsize,
    open: AtomicUsize,
    max_open: AtomicUsize,
    /// Requests answered in [`Mode::Flap`].
    flaps: AtomicUsize,
}

/// A stand-in apiserver at one address of the namespace. Stops when dropped.
pub struct Listener {
    ns: Arc<NetNs>,
    addr: SocketAddr,
    state: Arc<State>,
    /// The accept loop and every connection; dropping it closes them all.
    server: Mutex<Option<JoinSet<()>>>,
}

impl Listener {
    /// The address and port listened on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A probe target for this listener (`/readyz` for HTTP kinds).
    pub fn target(&self, scheme: &str) -> Target {
        let kind = match scheme {
            "https" => Kind::Https {
                path: "/readyz".into(),
            },
            "http" => Kind::Http {
                path: "/readyz".into(),
            },
            "tcp" => Kind::Tcp,
            other => panic!("unknown scheme {other}"),
        };
        Target {
            address: self.addr.ip(),
            port: self.addr.port(),
            kind,
        }
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        *self.state.mode.borrow()
    }

    /// Switches to `mode`, undoing the previous one (re-listening after `Refuse`, healing after
    /// `BlackHole`).
    pub fn set_mode(&self, mode: Mode) {
        let previous = self.state.mode.send_replace(mode);
        if previous == mode {
            return;
        }
        if previous == Mode::BlackHole {
            self.ns.heal(self.addr.ip());
        }
        if previous == Mode::Refuse {
            self.start(bind(self.addr));
        }
        match mode {
            Mode::Refuse => {
                // Dropping the set closes the listening socket and every open connection, as a
                // killed process's sockets are.
                let server = self.server.lock().unwrap().take();
                drop(server);
            }
            Mode::BlackHole => self.ns.black_hole(self.addr.ip()),
            _ => {}
        }
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Received> {
        self.state.requests.lock().unwrap().clone()
    }

    /// How many requests were received so far.
    pub fn request_count(&self) -> usize {
        self.state.requests.lock().unwrap().len()
    }

    /// How many connections were accepted so far.
    pub fn connection_count(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// The most connections that were open at once (a connection held in `Hang` counts until
    /// the client closes it).
    pub fn max_open(&self) -> usize {
        self.state.max_open.load(Ordering::SeqCst)
    }

    fn start(&self, socket: TcpListener) {
        let mut set = JoinSet::new();
        let state = Arc::clone(&self.state);
        set.spawn(accept_loop(socket, state));
        *self.server.lock().unwrap() = Some(set);
    }
}

/// Counts an open connection while alive.
struct Open(Arc<State>);

impl Open {
    fn new(state: &Arc<State>) -> Open {
        state.connections.fetch_add(1, Ordering::SeqCst);
        let now = state.open.fetch_add(1, Ordering::SeqCst) + 1;
        state.max_open.fetch_max(now, Ordering::SeqCst);
        Open(Arc::clone(state))
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn accept_loop(socket: TcpListener, state: Arc<State>) {
    // Connections live in this set, so aborting the accept loop (Refuse, drop) closes them too.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = socket.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                connections.spawn(connection(stream, Arc::clone(&state)));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn connection(mut stream: tokio::net::TcpStream, state: Arc<State>) {
    let _open = Open::new(&state);
    if *state.mode.borrow() == Mode::Hang {
        // Hold the socket without a word until the client gives up (EOF) or the listener stops.
        let mut buf = [0u8; 1024];
        while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
        return;
    }
    let service_state = Arc::clone(&state);
    match &state.tls {
        None => {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let authorization = req.headers().contains_key(hyper::header::AUTHORIZATION);
                answer(
                    req,
                    Arc::clone(&service_state),
                    false,
                    None,
                    (authorization, false),
                )
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        }
        Some((acceptor, authenticator)) => {
            let Ok(tls) = acceptor.accept(stream).await else {
                return;
            };
            let peer = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.as_ref().to_vec());
            let authenticator = authenticator.clone();
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let authorization = req
                    .headers()
                    .get(hyper::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok());
                let user = authenticator.authenticate(peer.as_deref(), authorization);
                let presented = (authorization.is_some(), peer.is_some());
                answer(req, Arc::clone(&service_state), true, user, presented)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await;
        }
    }
}

async fn answer(
    req: Request<hyper::body::Incoming>,
    state: Arc<State>,
    https: bool,
    user: Option<String>,
    (authorization, client_certificate): (bool, bool),
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned());
    state.requests.lock().unwrap().push(Received {
        path: path.clone(),
        user: user.clone(),
        authorization,
        client_certificate,
    });
    // A hung server: the request waits until the mode changes (the client has long given up).
    let mut mode = state.mode.subscribe();
    while *mode.borrow_and_update() == Mode::Hang {
        if mode.changed().await.is_err() {
            break;
        }
    }
    let current = *mode.borrow();
    let (status, body) = match current {
        Mode::Status(code) => (StatusCode::from_u16(code).unwrap(), "failed"),
        Mode::Unauthorized => (StatusCode::UNAUTHORIZED, "Unauthorized"),
        Mode::Flap if state.flaps.fetch_add(1, Ordering::SeqCst).is_multiple_of(2) => {
            (StatusCode::INTERNAL_SERVER_ERROR, "failed")
        }
        Mode::Flaky(percent) if fastrand::u8(0..100) < percent => {
            (StatusCode::INTERNAL_SERVER_ERROR, "failed")
        }
        _ if https && user.is_none() => (StatusCode::UNAUTHORIZED, "Unauthorized"),
        _ if matches!(req.uri().path(), "/readyz" | "/livez" | "/healthz") => {
            (StatusCode::OK, "ok")
        }
        _ => (StatusCode::NOT_FOUND, "not found"),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    Ok(response)
}

/// How long a test waits at most for a verdict: the thresholds' worth of periods and timeouts,
/// with room for a slow CI machine.
pub fn verdict_deadline(timing: &endpoint_copier::probe::Timing) -> Duration {
    let probes = timing.failure_threshold.max(timing.success_threshold) + 1;
    (timing.period + timing.timeout) * probes + Duration::from_secs(1)
}
