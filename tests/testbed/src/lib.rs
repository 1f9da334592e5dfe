//! endpoint-copier's test bed: an in-process stand-in for kube-apiserver, reached exactly like a
//! cluster (a kubeconfig file, HTTPS on 127.0.0.1, client certificate or bearer token), with fault
//! injection and a request log. Test-only; never shipped.
//!
//! Layout: [`TestBed`] (this file) starts the server and is the handle tests hold; `server` speaks
//! HTTP and routes to the `store` (objects, validation, watches, and the garbage collector and
//! EndpointSlice controllers of kube-controller-manager — the store person's modules); `tls`
//! makes certificates; `auth` knows identities and the allow/deny table; `faults` holds injected
//! faults; `reqlog` the request log; `kubeconfig` writes RKE2-shaped kubeconfig files; `discovery`
//! serves /api, /apis and /version; `cluster` switches the integration suite to a real cluster when
//! `ENDPOINT_COPIER_TEST_KUBECONFIG` is set. What is and is not modelled: docs/development/testing.md.

#![warn(missing_docs)]

pub mod auth;
pub mod cluster;
pub mod discovery;
pub mod faults;
pub mod kubeconfig;
pub mod meta;
pub mod patch;
pub mod rbac;
pub mod reqlog;
pub mod selector;
pub mod server;
pub mod store;
pub mod tls;
pub mod validate;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use cluster::Cluster;
pub use faults::{Failure, Match, Partition, Scope};
pub use kubeconfig::Credentials;
pub use reqlog::{RequestRecord, Verb};
pub use store::Store;

use server::Shared;

/// The admin identity RKE2's kubeconfig carries (CN of client-admin.crt).
pub const ADMIN: &str = "system:admin";
/// The group RKE2's admin certificate carries (O of client-admin.crt).
pub const MASTERS: &str = "system:masters";

/// How to start a [`TestBed`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Seed what a fresh cluster has: namespaces default, kube-system, kube-public,
    /// kube-node-lease, and Service default/kubernetes (default: true).
    pub seed: bool,
    /// Interval between BOOKMARK events on watches with allowWatchBookmarks=true (default: 1 s;
    /// the real server sends one about every minute, a shorter interval only speeds tests up).
    pub bookmark_interval: Duration,
    /// Worker threads of the server's own runtime (default: 2, the cores of our CI machines).
    pub worker_threads: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            seed: true,
            bookmark_interval: Duration::from_secs(1),
            worker_threads: 2,
        }
    }
}

/// A running test bed. Dropping it stops the server and deletes its kubeconfig files.
///
/// The server runs on its own runtime and thread (real time, even when the test pauses tokio
/// time); every method that is not `async` may be called from any thread.
pub struct TestBed {
    shared: Arc<Shared>,
    ca: tls::Ca,
    port: u16,
    dir: tempfile::TempDir,
    admin: PathBuf,
    /// kubeconfig path → (identity, whether it holds a client certificate), for rotation.
    files: Mutex<HashMap<PathBuf, String>>,
    server: Mutex<Option<JoinHandle<()>>>,
    counter: AtomicU64,
    /// The server's own runtime (see [`ServerRuntime`]); `None` for [`TestBed::in_memory`].
    runtime: Option<ServerRuntime>,
}

/// The test bed runs on its own runtime, on its own thread, not on the test's: a test that pauses
/// tokio time (`tokio::time::pause()`, as STYLE.md asks for lease and backoff tests) must not make
/// the server's watch timeouts, bookmarks and latency jump ahead, and a test blocking its own
/// runtime must not stall the server — a real apiserver runs on its own clock and CPU too.
struct ServerRuntime {
    handle: tokio::runtime::Handle,
    /// Dropping this ends the runtime's thread, which cancels every server task.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl ServerRuntime {
    fn start(worker_threads: usize) -> std::io::Result<ServerRuntime> {
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("testbed-server".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(worker_threads.max(1))
                    .thread_name("testbed-worker")
                    .enable_all()
                    .build();
                match rt {
                    Ok(rt) => {
                        let _ = handle_tx.send(Ok(rt.handle().clone()));
                        // Runs until the TestBed is dropped (the sender goes away).
                        rt.block_on(async {
                            let _ = stopped.await;
                        });
                        // The runtime is dropped here, outside any async context: every task
                        // (listener, connections, watches) is cancelled.
                    }
                    Err(e) => {
                        let _ = handle_tx.send(Err(e));
                    }
                }
            })?;
        let handle = handle_rx
            .recv()
            .map_err(|e| std::io::Error::other(e.to_string()))??;
        Ok(ServerRuntime {
            handle,
            _stop: stop,
        })
    }
}

impl std::fmt::Debug for TestBed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestBed")
            .field("url", &self.url())
            .field("kubeconfig", &self.admin)
            .finish_non_exhaustive()
    }
}

/// Binds 127.0.0.1:`port` with SO_REUSEADDR, so `come_up` can take the same port again at once.
fn bind(rt: &tokio::runtime::Handle, port: u16) -> std::io::Result<TcpListener> {
    // The listener registers with the reactor of the runtime it is created in: the server's.
    let _guard = rt.enter();
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))?;
    socket.listen(1024)
}

/// The test bed's API is infallible for tests' convenience: setup failures (no free port, a full
/// temp dir) abort the test with the cause.
fn fatal(what: &str, e: impl std::fmt::Display) -> ! {
    panic!("test bed: {what}: {e}")
}

impl TestBed {
    /// Starts a test bed seeded like a fresh cluster, on 127.0.0.1 and an ephemeral port.
    ///
    /// # Panics
    /// When the CA, the listener or the kubeconfig cannot be created.
    pub async fn start() -> TestBed {
        TestBed::start_with(Options::default()).await
    }

    /// Starts a test bed with `opts`.
    ///
    /// # Panics
    /// When the CA, the listener or the kubeconfig cannot be created, or seeding fails.
    pub async fn start_with(opts: Options) -> TestBed {
        let ca = tls::Ca::new().unwrap_or_else(|e| fatal("failed to create the CA", e));
        let server_cert = ca
            .issue_server()
            .unwrap_or_else(|e| fatal("failed to issue the server certificate", e));
        let tls = ca
            .server_config(&server_cert)
            .unwrap_or_else(|e| fatal("failed to configure TLS", e));
        let runtime = ServerRuntime::start(opts.worker_threads)
            .unwrap_or_else(|e| fatal("failed to start the server runtime", e));
        let listener =
            bind(&runtime.handle, 0).unwrap_or_else(|e| fatal("failed to listen on 127.0.0.1", e));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| fatal("failed to read the listening port", e))
            .port();
        let shared = Arc::new(Shared {
            store: Store::new(),
            auth: auth::Auth::default(),
            faults: faults::Faults::default(),
            log: reqlog::RequestLog::default(),
            tls,
            close_watches: tokio::sync::watch::channel(0).0,
            address: format!("127.0.0.1:{port}"),
            bookmark_interval: opts.bookmark_interval,
            observer: server::ObserverSlot::default(),
        });
        let server = runtime
            .handle
            .spawn(server::serve(listener, shared.clone()));
        let dir = tempfile::Builder::new()
            .prefix("endpoint-copier-testbed-")
            .tempdir()
            .unwrap_or_else(|e| fatal("failed to create a temp dir", e));
        let admin = dir.path().join("rke2.yaml");
        let bed = TestBed {
            shared,
            ca,
            port,
            dir,
            admin: admin.clone(),
            files: Mutex::default(),
            server: Mutex::new(Some(server)),
            counter: AtomicU64::new(0),
            runtime: Some(runtime),
        };
        bed.write_cert_kubeconfig(&admin, ADMIN);
        if opts.seed {
            bed.seed();
        }
        bed
    }

    /// A test bed without a listener and without a runtime of its own: it serves only the
    /// connections handed to [`TestBed::serve_connection`], on the caller's runtime and clock.
    /// The simulator (`tests/sim/`) runs it beside several daemons under tokio's paused clock,
    /// with no socket at all. [`TestBed::go_down`] and [`TestBed::come_up`] do nothing on it
    /// (the caller owns the connections); every other fault works as on a listening one.
    ///
    /// # Panics
    /// When the CA or the kubeconfig cannot be created, or seeding fails.
    pub fn in_memory(opts: Options) -> TestBed {
        let ca = tls::Ca::new().unwrap_or_else(|e| fatal("failed to create the CA", e));
        let server_cert = ca
            .issue_server()
            .unwrap_or_else(|e| fatal("failed to issue the server certificate", e));
        let tls = ca
            .server_config(&server_cert)
            .unwrap_or_else(|e| fatal("failed to configure TLS", e));
        let shared = Arc::new(Shared {
            store: Store::new(),
            auth: auth::Auth::default(),
            faults: faults::Faults::default(),
            log: reqlog::RequestLog::default(),
            tls,
            close_watches: tokio::sync::watch::channel(0).0,
            address: "127.0.0.1:6443".to_owned(),
            bookmark_interval: opts.bookmark_interval,
            observer: server::ObserverSlot::default(),
        });
        let dir = tempfile::Builder::new()
            .prefix("endpoint-copier-testbed-")
            .tempdir()
            .unwrap_or_else(|e| fatal("failed to create a temp dir", e));
        let admin = dir.path().join("rke2.yaml");
        let bed = TestBed {
            shared,
            ca,
            port: 0,
            dir,
            admin: admin.clone(),
            files: Mutex::default(),
            server: Mutex::new(None),
            counter: AtomicU64::new(0),
            runtime: None,
        };
        bed.write_cert_kubeconfig(&admin, ADMIN);
        if opts.seed {
            bed.seed();
        }
        bed
    }

    /// Serves one HTTP/1.1 connection on `io` (any byte stream: a `tokio::io::duplex` end)
    /// until the client closes it, as if TLS had been done and the client had shown a
    /// certificate for `identity` (group `system:masters`). Runs on the caller's runtime;
    /// dropping the future drops the connection (the client sees it reset).
    pub fn serve_connection<I>(
        &self,
        io: I,
        identity: &str,
    ) -> impl Future<Output = ()> + Send + 'static
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let peer = auth::PeerCert {
            der: Vec::new(),
            user: Some(auth::User {
                name: identity.to_owned(),
                groups: vec![MASTERS.to_owned(), "system:authenticated".to_owned()],
            }),
        };
        server::serve_io(io, Some(peer), self.shared.clone())
    }

    /// Calls `observer` after every write the store carries out for a client (creates,
    /// updates, patches, deletes; not dry runs nor the controllers' own writes), with the write
    /// and the store as it left it. Replaces the previous observer.
    pub fn on_write(&self, observer: server::WriteObserver) {
        self.shared.observer.set(observer);
    }

    /// A new kubeconfig for CN=`identity` (O=system:masters) whose `server:` is `server`
    /// (an in-memory test bed's clients name the apiserver they dial there).
    pub fn kubeconfig_at(&self, identity: &str, server: &str) -> PathBuf {
        let path = self.next_file(identity);
        let issued = self
            .ca
            .issue_client(identity, &[MASTERS])
            .unwrap_or_else(|e| fatal("failed to issue a client certificate", e));
        self.shared.auth.register_cert(identity, issued.cert_der);
        let yaml = kubeconfig::render(
            server,
            &self.ca.cert_pem,
            &Credentials::Cert {
                cert_pem: issued.cert_pem,
                key_pem: issued.key_pem,
            },
        );
        kubeconfig::write_atomic(&path, &yaml).unwrap_or_else(|e| fatal("kubeconfig", e));
        path
    }

    fn seed(&self) {
        let store = &self.shared.store;
        let params = store::WriteParams::default();
        let namespaces = store::resource("", "v1", "namespaces");
        let services = store::resource("", "v1", "services");
        let (Some(namespaces), Some(services)) = (namespaces, services) else {
            fatal("seeding", "the store serves no namespaces or services")
        };
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns,
                "labels": {"kubernetes.io/metadata.name": ns}}});
            store
                .create(namespaces, None, body, &params)
                .unwrap_or_else(|e| fatal(&format!("failed to seed namespace '{ns}'"), e.message));
        }
        // The built-in Service as kube-apiserver creates it (RKE2's default service CIDR 10.43.0.0/16).
        let kubernetes = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kubernetes", "namespace": "default",
                "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {
                "clusterIP": "10.43.0.1", "clusterIPs": ["10.43.0.1"], "type": "ClusterIP",
                "sessionAffinity": "None", "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                "internalTrafficPolicy": "Cluster",
                "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}],
            },
        });
        store
            .create(services, Some("default"), kubernetes, &params)
            .unwrap_or_else(|e| fatal("failed to seed Service default/kubernetes", e.message));
    }

    fn next_file(&self, identity: &str) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let safe: String = identity
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.dir.path().join(format!("{safe}-{n}.yaml"))
    }

    fn write_cert_kubeconfig(&self, path: &Path, identity: &str) {
        self.write_cert_kubeconfig_in(path, identity, &[MASTERS]);
    }

    fn write_cert_kubeconfig_in(&self, path: &Path, identity: &str, groups: &[&str]) {
        let issued = self
            .ca
            .issue_client(identity, groups)
            .unwrap_or_else(|e| fatal("failed to issue a client certificate", e));
        self.shared.auth.register_cert(identity, issued.cert_der);
        let yaml = kubeconfig::render(
            &self.url(),
            &self.ca.cert_pem,
            &Credentials::Cert {
                cert_pem: issued.cert_pem,
                key_pem: issued.key_pem,
            },
        );
        kubeconfig::write_atomic(path, &yaml).unwrap_or_else(|e| fatal("kubeconfig", e));
        self.lock_files()
            .insert(path.to_path_buf(), identity.to_string());
    }

    fn lock_files(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, String>> {
        self.files
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The admin kubeconfig, shaped like RKE2's /etc/rancher/rke2/rke2.yaml (client certificate
    /// CN system:admin, O system:masters; EC key as "EC PRIVATE KEY"; mode 0600).
    pub fn kubeconfig(&self) -> &Path {
        &self.admin
    }

    /// A new kubeconfig with a fresh client certificate for CN=`identity`, O=system:masters.
    pub fn kubeconfig_for(&self, identity: &str) -> PathBuf {
        let path = self.next_file(identity);
        self.write_cert_kubeconfig(&path, identity);
        path
    }

    /// A new kubeconfig with a fresh client certificate for CN=`identity` and O=each of
    /// `groups` (no `system:masters` unless listed): once RBAC manifests are loaded
    /// ([`TestBed::apply_rbac`]), such a user may do only what they grant.
    pub fn kubeconfig_for_user(&self, identity: &str, groups: &[&str]) -> PathBuf {
        let path = self.next_file(identity);
        self.write_cert_kubeconfig_in(&path, identity, groups);
        path
    }

    /// Loads the RBAC objects of the YAML manifests in `yaml` (Roles, ClusterRoles and their
    /// bindings), which turns RBAC on for every user outside `system:masters`, and creates the
    /// other objects (a Namespace, a Lease...) as an admin would with `kubectl apply` (an
    /// existing one is left as it is). Returns the `kind namespace/name` of those created.
    ///
    /// # Panics
    /// When a document does not parse or an object cannot be created (a test bug).
    pub fn apply_rbac(&self, yaml: &str) -> Vec<String> {
        let others = self
            .shared
            .auth
            .load_rbac(yaml)
            .unwrap_or_else(|e| fatal("RBAC manifests", e));
        let mut created = Vec::new();
        // Namespaces first, as kubectl's ordering does.
        let (namespaces, rest): (Vec<_>, Vec<_>) =
            others.into_iter().partition(|o| o["kind"] == "Namespace");
        for object in namespaces.into_iter().chain(rest) {
            let (group, version) = match object["apiVersion"]
                .as_str()
                .unwrap_or_default()
                .split_once('/')
            {
                Some((g, v)) => (g.to_string(), v.to_string()),
                None => (
                    String::new(),
                    object["apiVersion"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                ),
            };
            let kind = object["kind"].as_str().unwrap_or_default().to_string();
            // The kinds a manifest beside RBAC may hold that the test bed serves.
            let plural = match kind.as_str() {
                "Namespace" => "namespaces",
                "Lease" => "leases",
                "Service" => "services",
                _ => "",
            };
            let r = store::resource(&group, &version, plural).unwrap_or_else(|| {
                fatal(
                    "RBAC manifests",
                    format!("the test bed does not serve {kind}"),
                )
            });
            let ns = object["metadata"]["namespace"].as_str().map(str::to_string);
            let name = object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            match self
                .shared
                .store
                .create(r, ns.as_deref(), object, &store::WriteParams::default())
            {
                Ok(_) => created.push(format!("{kind} {}/{name}", ns.unwrap_or_default())),
                Err(e) if e.code == 409 => {}
                Err(e) => fatal("RBAC manifests", e.message),
            }
        }
        created
    }

    /// A new kubeconfig with a bearer token the server knows as `identity`.
    pub fn kubeconfig_with_token(&self, identity: &str) -> PathBuf {
        let path = self.next_file(identity);
        let token = self.shared.auth.new_token(identity);
        let yaml = kubeconfig::render(&self.url(), &self.ca.cert_pem, &Credentials::Token(token));
        kubeconfig::write_atomic(&path, &yaml).unwrap_or_else(|e| fatal("kubeconfig", e));
        path
    }

    /// A kubeconfig that trusts the server but carries no credentials (every request gets 401).
    pub fn kubeconfig_without_credentials(&self) -> PathBuf {
        let path = self.next_file("anonymous");
        let yaml = kubeconfig::render(&self.url(), &self.ca.cert_pem, &Credentials::None);
        kubeconfig::write_atomic(&path, &yaml).unwrap_or_else(|e| fatal("kubeconfig", e));
        path
    }

    /// Rewrites `kubeconfig` in place (temp file + rename, as RKE2 does) with a new certificate and
    /// key for the same identity. The old certificate keeps working until [`TestBed::revoke`].
    ///
    /// # Panics
    /// When `kubeconfig` is not a certificate kubeconfig this test bed wrote.
    pub fn rotate_client_certificate(&self, kubeconfig: &Path) {
        let identity = self.lock_files().get(kubeconfig).cloned();
        let Some(identity) = identity else {
            fatal(
                "rotate_client_certificate",
                format!(
                    "'{}' is not a certificate kubeconfig of this test bed",
                    kubeconfig.display()
                ),
            )
        };
        self.write_cert_kubeconfig(kubeconfig, &identity);
    }

    /// Revokes every credential issued to `identity` so far: its requests now get 401 (models an
    /// expired certificate). Credentials issued afterwards (rotation, new kubeconfigs) work.
    pub fn revoke(&self, identity: &str) {
        self.shared.auth.revoke(identity);
    }

    /// "https://127.0.0.1:<port>".
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The listening port (kept across go_down/come_up).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A TLS server configuration for a stand-in apiserver at `ips` (health-probe tests): a
    /// certificate for exactly those IP addresses signed by this test bed's CA, and client
    /// certificates verified against the same CA but optional, as kube-apiserver does (a client
    /// without a valid certificate or token then gets 401 from [`Authenticator`]).
    ///
    /// # Panics
    /// When the certificate or the configuration cannot be built.
    pub fn server_tls_for(&self, ips: &[std::net::IpAddr]) -> Arc<rustls::ServerConfig> {
        let issued = self
            .ca
            .issue_server_for(ips)
            .unwrap_or_else(|e| fatal("failed to issue a server certificate", e));
        self.ca
            .server_config(&issued)
            .unwrap_or_else(|e| fatal("failed to configure TLS", e))
    }

    /// Who this test bed's credentials say a request comes from, for stand-in servers (the
    /// same certificates, tokens and revocations as the API server).
    pub fn authenticator(&self) -> Authenticator {
        Authenticator {
            shared: self.shared.clone(),
        }
    }

    /// The CA certificate (PEM) that signed the server and client certificates.
    pub fn ca_pem(&self) -> &str {
        &self.ca.cert_pem
    }

    /// Direct access to the objects, for seeding and inspection; bypasses HTTP, authentication,
    /// faults and the request log.
    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// The request log, ordered by arrival.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.log.snapshot()
    }

    /// Empties the request log.
    pub fn clear_requests(&self) {
        self.shared.log.clear();
    }

    /// Ends every open watch response cleanly (clients see the stream end and re-watch).
    pub fn close_watches(&self) {
        self.shared.store.close_watches();
        self.shared.close_watches.send_modify(|g| *g += 1);
    }

    /// Stops listening (new connections are refused) and aborts every open connection and watch.
    /// Data is kept.
    pub async fn go_down(&self) {
        let handle = self
            .server
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            handle.abort();
            // Wait until the task (listener and every connection) is dropped, so the port is
            // closed when this returns.
            let _ = handle.await;
        }
    }

    /// Listens again on the same port with the same data (no-op when already up). Like a
    /// restarted kube-apiserver, it has no watch history: resuming an old watch gets 410.
    ///
    /// # Panics
    /// When the port cannot be bound again.
    pub async fn come_up(&self) {
        let mut server = self
            .server
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if server.is_some() {
            return;
        }
        let Some(runtime) = &self.runtime else {
            return;
        };
        let listener = bind(&runtime.handle, self.port)
            .unwrap_or_else(|e| fatal(&format!("failed to listen again on port {}", self.port), e));
        // matches: staging/src/k8s.io/apiserver/pkg/storage/cacher/watch_cache.go — a restarted
        // apiserver's watch cache starts at the current etcd revision, so a client resuming from
        // an older resourceVersion gets 410 Gone and must re-list. The data survives (etcd).
        self.shared.store.compact();
        *server = Some(
            runtime
                .handle
                .spawn(server::serve(listener, self.shared.clone())),
        );
    }

    /// Fails the next `n` requests matching `m` with `f` (real Status bodies; 429 also sets
    /// Retry-After). Non-matching requests do not count.
    pub fn fail_next(&self, m: Match, n: usize, f: Failure) {
        self.shared.faults.fail_next(m, n, f);
    }

    /// Fails every request matching `m` with `f` until [`TestBed::heal_failures`], for a fault
    /// that lasts (for example every cluster-wide list and watch of EndpointSlices, with
    /// `Match::any().resource("endpointslices").cluster_wide()`, while namespaced ones succeed).
    /// Only new requests fail: watches already open carry on (`close_watches` ends them).
    pub fn fail_until_healed(&self, m: Match, f: Failure) {
        self.shared.faults.fail_until_healed(m, f);
    }

    /// Lets the next `n` requests matching `m` be carried out by the store, then drops their
    /// connection without an answer: a reply lost after the write was committed. The client sees
    /// a connection error, yet the object is written (watches see it; the request log records the
    /// code the server would have sent). Non-matching requests do not count.
    pub fn commit_then_drop_next(&self, m: Match, n: usize) {
        self.shared.faults.commit_then_drop_next(m, n);
    }

    /// Ends every `fail_next`, `fail_until_healed` and `commit_then_drop_next` rule still in force
    /// (partitions and latency are left as they are).
    pub fn heal_failures(&self) {
        self.shared.faults.heal_failures();
    }

    /// Delays the next `n` requests matching `m` by `d` before they are served (and before the
    /// store sees them): one kind of request stuck while the rest answer. A delay a request has
    /// already taken runs its course; [`TestBed::heal_failures`] drops the unused rules.
    pub fn delay_next(&self, m: Match, n: usize, d: Duration) {
        self.shared.faults.delay_next(m, n, d);
    }

    /// Adds `d` before every response (not before each watch event). Zero by default.
    pub fn set_latency(&self, d: Duration) {
        self.shared.faults.set_latency(d);
    }

    /// Partitions `identity`: its requests hang or are refused, and its open watches stop
    /// delivering (Hang) or are cut (Refuse); other identities are unaffected.
    pub fn partition(&self, identity: &str, mode: Partition) {
        self.shared.faults.partition(identity, mode);
    }

    /// Heals `identity`'s partition: hung requests and watches carry on.
    pub fn heal(&self, identity: &str) {
        self.shared.faults.heal(identity);
    }

    /// Forgets all watch history: a watch or list continuation from an older resourceVersion gets 410.
    pub fn compact(&self) {
        self.shared.store.compact();
    }

    /// Switches garbage collection through ownerReferences (on by default); off models a cluster
    /// whose garbage collector is not running ([`TestBed::set_controller_manager`] switches every
    /// modelled controller at once).
    pub fn set_garbage_collection(&self, on: bool) {
        self.shared.store.set_garbage_collection(on);
    }

    /// Switches kube-controller-manager's endpointslice controller (on by default): every Service
    /// with a selector gets a placeholder EndpointSlice managed by
    /// `endpointslice-controller.k8s.io` (Pods are not modelled, so it never has endpoints).
    /// Turning it back on catches up at once, as a restarted controller does.
    pub fn set_endpointslice_controller(&self, on: bool) {
        self.shared.store.set_endpointslice_controller(on);
    }

    /// Switches kube-controller-manager's endpointslice-mirroring controller (on by default): the
    /// core/v1 Endpoints of a Service without a selector are mirrored into EndpointSlices managed
    /// by `endpointslicemirroring-controller.k8s.io`, unless labelled
    /// `endpointslice.kubernetes.io/skip-mirror: "true"`. Turning it back on catches up at once.
    pub fn set_endpointslice_mirroring(&self, on: bool) {
        self.shared.store.set_endpointslice_mirroring(on);
    }

    /// Switches every modelled kube-controller-manager controller at once (garbage collector,
    /// endpointslice, endpointslice-mirroring): off models a dead controller manager.
    pub fn set_controller_manager(&self, on: bool) {
        self.set_garbage_collection(on);
        self.set_endpointslice_controller(on);
        self.set_endpointslice_mirroring(on);
    }

    /// Allows or denies `verb` on `resource` (plural) to `identity`; everything is allowed by
    /// default. Denied requests get 403 with RBAC's message; SelfSubjectAccessReview agrees.
    pub fn set_allowed(&self, identity: &str, verb: Verb, resource: &str, allowed: bool) {
        self.shared
            .auth
            .set_allowed(identity, verb, resource, allowed);
    }

    /// Number of watches currently open in the store.
    pub fn watcher_count(&self) -> usize {
        self.shared.store.watcher_count()
    }
}

/// The test bed's authentication, usable by stand-in servers on other addresses (see
/// [`TestBed::authenticator`]). Cheap to clone.
#[derive(Clone)]
pub struct Authenticator {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").finish_non_exhaustive()
    }
}

impl Authenticator {
    /// The user name of a request with the verified client certificate `peer_cert` (DER, if
    /// any) and the `Authorization` header value (if any); `None` means 401.
    pub fn authenticate(
        &self,
        peer_cert: Option<&[u8]>,
        authorization: Option<&str>,
    ) -> Option<String> {
        let cert = peer_cert.map(|der| auth::PeerCert::new(der.to_vec()));
        self.shared
            .auth
            .authenticate(cert.as_ref(), authorization)
            .map(|user| user.name)
    }
}

impl Drop for TestBed {
    fn drop(&mut self) {
        if let Some(handle) = self
            .server
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            handle.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_bed_can_be_shared_across_tasks_and_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<TestBed>();
        send_sync::<Cluster>();
    }

    #[test]
    fn test_bed_serves_while_the_test_thread_is_blocked() {
        // The server has its own runtime: a test blocking its thread does not stall it.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let bed = rt.block_on(TestBed::start());
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", bed.port())).unwrap();
        // A TLS ClientHello is answered by the server even though `rt` is not being driven.
        use std::io::{Read, Write};
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates({
            use rustls::pki_types::pem::PemObject;
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls::pki_types::CertificateDer::pem_slice_iter(bed.ca_pem().as_bytes()) {
                roots.add(c.unwrap()).unwrap();
            }
            roots
        })
        .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let mut tls = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut stream = rustls::Stream::new(&mut tls, &mut conn);
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = Vec::new();
        let _ = stream.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out);
        // No credentials: the server answered (401), which is all this test needs.
        assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    }
}
