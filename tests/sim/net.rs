//! The simulated network: every byte between the daemons, the apiservers and the probed
//! endpoints goes through `tokio::io::duplex` pipes handed out here, so a run opens no socket.
//!
//! The model: `n` hosts, each with one apiserver ("door" `j` at `198.51.100.(11+j):6443`), all
//! doors serving the one test bed store. Host `h`'s daemon talks to its own door (its kubeconfig
//! names it, as RKE2's names the local apiserver) and probes every door. What can go wrong:
//! - a door ([`Door`]): killed (connections reset, new ones refused), hung (TCP accepted, never
//!   answered — the kernel keeps answering keepalives, so nothing ever closes), unready
//!   (`/readyz` answers 500 while the API serves);
//! - a path from host `h` to door `j` ([`PathFault`]): refused, black-holed (packets dropped both
//!   ways: new connections never complete; open ones go silent and die 15 s later, as TCP
//!   keepalive with `TCP_USER_TIMEOUT` makes them — `client::transport::DEAD_PEER_NOTICED_WITHIN`),
//!   or a TLS handshake that fails (an alert: the endpoint's failure; a certificate that does not
//!   verify: an abstention);
//! - a crashed host: every connection of its incarnation reset, nothing new ever dialled.
//!
//! - the other cluster ([`REMOTE_ADDRESS`], a second test bed) that a remote source reads:
//!   up, killed or hung for every host at once (its outage).
//!
//! Faults on one host's API path at the HTTP level (hung, refused, black-holed requests) are
//! the test bed's own `partition(identity, ..)`: each host's API traffic carries its identity.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use endpoint_copier::client::transport::{Dial, Dialling};
use endpoint_copier::probe::ProbeDial;
use endpoint_copier_testbed::TestBed;
use futures::task::AtomicWaker;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::task::AbortHandle;

/// The apiservers' port, in `default/kubernetes` and in the kubeconfigs.
pub const API_PORT: u16 = 6443;
/// How long a black-holed connection lives on: keepalive idle + `TCP_USER_TIMEOUT`.
const DEAD_PEER: Duration = endpoint_copier::client::transport::DEAD_PEER_NOTICED_WITHIN;
/// Bytes in flight per direction of a pipe (a socket buffer).
const PIPE: usize = 256 * 1024;

/// The other cluster's apiserver, which remote sources reach (`203.0.113.20:6443`).
pub const REMOTE_ADDRESS: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 20));

/// Door `j`'s address (`198.51.100.11` for door 0).
pub fn door_address(j: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 51, 100, 11 + j as u8))
}

/// The door at `address`, if it is one.
pub fn door_of(address: IpAddr, doors: usize) -> Option<usize> {
    (0..doors).find(|j| door_address(*j) == address)
}

/// The door number of [`REMOTE_ADDRESS`] on connections (no host-to-door path fault applies).
const REMOTE_DOOR: usize = usize::MAX;

/// How an apiserver is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Door {
    /// Serving.
    Up,
    /// Killed: connections reset, new ones refused.
    Down,
    /// The process hangs: connections accepted, nothing ever answered.
    Hung,
    /// Serving the API, `/readyz` answers 500.
    Unready,
}

/// What is wrong with the path from one host to one door.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathFault {
    /// Connections refused; open ones reset.
    Refuse,
    /// Packets dropped both ways.
    BlackHole,
    /// The TLS handshake fails with an alert (new connections only).
    TlsAlert,
    /// The server certificate does not verify (new connections only).
    TlsCert,
}

/// One connection's state, shared by its client end and the network.
#[derive(Default)]
struct Wire {
    state: Mutex<WireState>,
    read: AtomicWaker,
    write: AtomicWaker,
    server: Mutex<Option<AbortHandle>>,
}

#[derive(Clone, Copy, Default, PartialEq, Eq)]
enum WireState {
    #[default]
    Open,
    /// Reads never complete, writes vanish.
    Frozen,
    /// Every read and write fails with this.
    Dead(io::ErrorKind),
}

impl Wire {
    fn state(&self) -> WireState {
        *self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set(&self, next: WireState) {
        {
            let mut s = self
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if matches!(*s, WireState::Dead(_)) {
                return;
            }
            *s = next;
        }
        if matches!(next, WireState::Dead(_))
            && let Some(server) = self
                .server
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take()
        {
            server.abort();
        }
        self.read.wake();
        self.write.wake();
    }
}

/// The client end of a simulated connection.
struct Stream {
    inner: DuplexStream,
    wire: Arc<Wire>,
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.wire.read.register(cx.waker());
        match self.wire.state() {
            WireState::Open => Pin::new(&mut self.inner).poll_read(cx, buf),
            WireState::Frozen => Poll::Pending,
            WireState::Dead(kind) => Poll::Ready(Err(kind.into())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.wire.write.register(cx.waker());
        match self.wire.state() {
            WireState::Open => Pin::new(&mut self.inner).poll_write(cx, buf),
            // Into a socket buffer, never to arrive.
            WireState::Frozen => Poll::Ready(Ok(buf.len())),
            WireState::Dead(kind) => Poll::Ready(Err(kind.into())),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.wire.state() {
            WireState::Open => Pin::new(&mut self.inner).poll_flush(cx),
            WireState::Frozen => Poll::Ready(Ok(())),
            WireState::Dead(kind) => Poll::Ready(Err(kind.into())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.wire.state() {
            WireState::Open => Pin::new(&mut self.inner).poll_shutdown(cx),
            _ => Poll::Ready(Ok(())),
        }
    }
}

/// A connection the network can still reach.
struct Conn {
    host: usize,
    door: usize,
    incarnation: u32,
    wire: Weak<Wire>,
}

struct State {
    doors: Vec<Door>,
    paths: BTreeMap<(usize, usize), PathFault>,
    /// The current incarnation of each host; older ones are dead.
    incarnations: Vec<u32>,
    /// The other cluster's apiserver.
    remote: Door,
    conns: Vec<Conn>,
}

/// The network of one run.
pub struct Net {
    state: Mutex<State>,
    bed: Arc<TestBed>,
    /// The other cluster, when the run has one.
    remote: Option<Arc<TestBed>>,
}

impl Net {
    /// A network of `hosts` hosts and as many doors, all up, onto `bed`; and `remote` (another
    /// cluster), if any, served at [`REMOTE_ADDRESS`].
    pub fn with_remote(hosts: usize, bed: Arc<TestBed>, remote: Option<Arc<TestBed>>) -> Arc<Net> {
        Arc::new(Net {
            state: Mutex::new(State {
                doors: vec![Door::Up; hosts],
                paths: BTreeMap::new(),
                incarnations: vec![0; hosts],
                remote: Door::Up,
                conns: Vec::new(),
            }),
            bed,
            remote,
        })
    }

    /// Sets the other cluster's apiserver (`Down`: killed, `Hung`), acting on its connections.
    pub fn set_remote(&self, door: Door) {
        let mut s = self.lock();
        s.remote = door;
        let wires = s.wires(|c| c.door == REMOTE_DOOR);
        drop(s);
        door_changed(&wires, door);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Door `j`'s state now.
    pub fn door(&self, j: usize) -> Door {
        self.lock().doors[j]
    }

    /// Sets door `j`'s state, acting on its open connections.
    pub fn set_door(&self, j: usize, door: Door) {
        let mut s = self.lock();
        s.doors[j] = door;
        let wires = s.wires(|c| c.door == j);
        drop(s);
        door_changed(&wires, door);
    }

    /// Sets (or with `None` heals) the path from host `h` to door `j`.
    pub fn set_path(self: &Arc<Net>, h: usize, j: usize, fault: Option<PathFault>) {
        let mut s = self.lock();
        match fault {
            Some(f) => s.paths.insert((h, j), f),
            None => s.paths.remove(&(h, j)),
        };
        let wires = s.wires(|c| c.host == h && c.door == j);
        drop(s);
        for w in wires {
            match fault {
                Some(PathFault::Refuse) => w.set(WireState::Dead(io::ErrorKind::ConnectionReset)),
                Some(PathFault::BlackHole) => {
                    w.set(WireState::Frozen);
                    let w = Arc::clone(&w);
                    tokio::spawn(async move {
                        tokio::time::sleep(DEAD_PEER).await;
                        if w.state() == WireState::Frozen {
                            w.set(WireState::Dead(io::ErrorKind::TimedOut));
                        }
                    });
                }
                _ => {}
            }
        }
    }

    /// Host `h` crashed: its incarnation's connections reset; returns the next incarnation.
    pub fn crash(&self, h: usize) -> u32 {
        let mut s = self.lock();
        let old = s.incarnations[h];
        s.incarnations[h] = old + 1;
        let wires = s.wires(|c| c.host == h && c.incarnation == old);
        drop(s);
        for w in wires {
            w.set(WireState::Dead(io::ErrorKind::ConnectionReset));
        }
        old + 1
    }

    /// The API connector of host `h`'s incarnation `incarnation`, as `identity`.
    pub fn connector(self: &Arc<Net>, h: usize, incarnation: u32, identity: &str) -> Arc<dyn Dial> {
        Arc::new(ApiDial {
            net: Arc::clone(self),
            host: h,
            incarnation,
            identity: identity.to_owned(),
        })
    }

    /// The probe dialer of host `h`'s incarnation `incarnation`.
    pub fn dialer(self: &Arc<Net>, h: usize, incarnation: u32) -> Arc<dyn ProbeDial> {
        Arc::new(ProbeDialer {
            net: Arc::clone(self),
            host: h,
            incarnation,
        })
    }

    /// What a new connection from `h` (incarnation `k`) to door `j` meets.
    fn admit(&self, h: usize, k: u32, j: usize) -> Admit {
        let s = self.lock();
        if s.incarnations[h] != k {
            return Admit::Refused;
        }
        if j == REMOTE_DOOR {
            return match s.remote {
                Door::Down => Admit::Refused,
                Door::Hung => Admit::Hung,
                Door::Up | Door::Unready => Admit::Open,
            };
        }
        match s.paths.get(&(h, j)) {
            Some(PathFault::Refuse) => return Admit::Refused,
            Some(PathFault::BlackHole) => return Admit::Never,
            Some(PathFault::TlsAlert) => return Admit::Tls(false),
            Some(PathFault::TlsCert) => return Admit::Tls(true),
            None => {}
        }
        match s.doors[j] {
            Door::Down => Admit::Refused,
            Door::Hung => Admit::Hung,
            Door::Up | Door::Unready => Admit::Open,
        }
    }

    /// A new pipe from `h` (incarnation `k`) to door `j`: the client end, registered, and the
    /// server end.
    fn pipe(&self, h: usize, k: u32, j: usize, frozen: bool) -> (Stream, DuplexStream, Arc<Wire>) {
        let (client, server) = tokio::io::duplex(PIPE);
        let wire = Arc::new(Wire::default());
        if frozen {
            wire.set(WireState::Frozen);
        }
        let mut s = self.lock();
        s.conns.retain(|c| c.wire.strong_count() > 0);
        s.conns.push(Conn {
            host: h,
            door: j,
            incarnation: k,
            wire: Arc::downgrade(&wire),
        });
        drop(s);
        (
            Stream {
                inner: client,
                wire: Arc::clone(&wire),
            },
            server,
            wire,
        )
    }
}

/// What an apiserver turning `door` does to the connections it holds: killed resets them, hung
/// freezes them; one that serves again leaves them as they are.
fn door_changed(wires: &[Arc<Wire>], door: Door) {
    for w in wires {
        match door {
            Door::Down => w.set(WireState::Dead(io::ErrorKind::ConnectionReset)),
            Door::Hung => w.set(WireState::Frozen),
            Door::Up | Door::Unready => {}
        }
    }
}

impl State {
    fn wires(&mut self, pick: impl Fn(&Conn) -> bool) -> Vec<Arc<Wire>> {
        self.conns.retain(|c| c.wire.strong_count() > 0);
        self.conns
            .iter()
            .filter(|c| pick(c))
            .filter_map(|c| c.wire.upgrade())
            .collect()
    }
}

enum Admit {
    Open,
    Refused,
    /// SYN dropped: never completes (the caller's connect timeout ends it).
    Never,
    /// Accepted by the kernel, never served.
    Hung,
    /// The TLS handshake fails: `true` a certificate that does not verify, `false` an alert.
    Tls(bool),
}

fn refused() -> io::Error {
    io::ErrorKind::ConnectionRefused.into()
}

fn tls_error(certificate: bool) -> io::Error {
    let e = if certificate {
        rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
    } else {
        rustls::Error::AlertReceived(rustls::AlertDescription::HandshakeFailure)
    };
    io::Error::new(io::ErrorKind::InvalidData, e)
}

struct ApiDial {
    net: Arc<Net>,
    host: usize,
    incarnation: u32,
    identity: String,
}

impl Dial for ApiDial {
    fn dial(&self, uri: &http::Uri) -> Dialling {
        let net = Arc::clone(&self.net);
        let (h, k) = (self.host, self.incarnation);
        let identity = self.identity.clone();
        let door = {
            let doors = net.lock().doors.len();
            uri.host()
                .and_then(|host| host.parse::<IpAddr>().ok())
                .and_then(|a| {
                    if a == REMOTE_ADDRESS && net.remote.is_some() {
                        Some(REMOTE_DOOR)
                    } else {
                        door_of(a, doors)
                    }
                })
        };
        Box::pin(async move {
            let Some(j) = door else {
                return Err(refused());
            };
            match net.admit(h, k, j) {
                Admit::Refused => Err(refused()),
                Admit::Never => std::future::pending().await,
                Admit::Tls(cert) => Err(tls_error(cert)),
                Admit::Hung => {
                    let (client, server, _) = net.pipe(h, k, j, true);
                    // The server end stays open and unread until the client goes.
                    tokio::spawn(async move {
                        let _held = server;
                        std::future::pending::<()>().await;
                    });
                    Ok(Box::new(client) as Box<dyn endpoint_copier::client::transport::Stream>)
                }
                Admit::Open => {
                    let (client, server, wire) = net.pipe(h, k, j, false);
                    let bed = match &net.remote {
                        Some(remote) if j == REMOTE_DOOR => remote,
                        _ => &net.bed,
                    };
                    let task = tokio::spawn(bed.serve_connection(server, &identity));
                    *wire
                        .server
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) =
                        Some(task.abort_handle());
                    Ok(Box::new(client) as Box<dyn endpoint_copier::client::transport::Stream>)
                }
            }
        })
    }
}

struct ProbeDialer {
    net: Arc<Net>,
    host: usize,
    incarnation: u32,
}

impl ProbeDial for ProbeDialer {
    fn dial(&self, addr: SocketAddr) -> Dialling {
        let net = Arc::clone(&self.net);
        let (h, k) = (self.host, self.incarnation);
        Box::pin(async move {
            let doors = net.lock().doors.len();
            let Some(j) = door_of(addr.ip(), doors).filter(|_| addr.port() == API_PORT) else {
                return Err(refused());
            };
            match net.admit(h, k, j) {
                Admit::Refused => Err(refused()),
                Admit::Never => std::future::pending().await,
                Admit::Tls(cert) => Err(tls_error(cert)),
                Admit::Hung => {
                    let (client, server, _) = net.pipe(h, k, j, true);
                    tokio::spawn(async move {
                        let _held = server;
                        std::future::pending::<()>().await;
                    });
                    Ok(Box::new(client) as Box<dyn endpoint_copier::client::transport::Stream>)
                }
                Admit::Open => {
                    let (client, server, wire) = net.pipe(h, k, j, false);
                    let task = tokio::spawn(readyz(Arc::clone(&net), j, server));
                    *wire
                        .server
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) =
                        Some(task.abort_handle());
                    Ok(Box::new(client) as Box<dyn endpoint_copier::client::transport::Stream>)
                }
            }
        })
    }
}

/// Door `j`'s health endpoint on one connection: 200 `ok`, or 500 while the door is unready.
async fn readyz(net: Arc<Net>, j: usize, io: DuplexStream) {
    let service = hyper::service::service_fn(move |_req: http::Request<hyper::body::Incoming>| {
        let status = match net.door(j) {
            Door::Unready => http::StatusCode::INTERNAL_SERVER_ERROR,
            _ => http::StatusCode::OK,
        };
        let mut response = http::Response::new(Full::new(Bytes::from_static(b"ok")));
        *response.status_mut() = status;
        async move { Ok::<_, std::convert::Infallible>(response) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), service)
        .await;
}
