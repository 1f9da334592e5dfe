//! The test bed's HTTPS front end: accepting connections (TLS with optional client certificates),
//! authenticating, applying injected faults, resolving each request to a Kubernetes verb and resource
//! as kube-apiserver's RequestInfo does, routing it to the Store, streaming watches, and logging it.
//!
//! Owns HTTP semantics (paths, query parameters, content types, status codes, watch framing). Object
//! semantics (validation, resourceVersions, selectors, patches, history) are the Store's; certificate
//! material is tls.rs's; identities and the allow/deny table are auth.rs's; fault state is faults.rs's.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::auth::{Auth, PeerCert, User};
use crate::faults::{Faults, Partition, Target};
use crate::rbac::{self, Attributes};
use crate::reqlog::{RequestLog, RequestRecord, Verb};
use crate::store::{
    self, ApiError, DeleteParams, ListParams, PatchKind, Resource, Store, WatchParams, WriteParams,
};

/// The response body type: whole JSON documents and watch streams alike. A body error (only
/// [`Refused`]) makes hyper drop the connection mid-stream, which is how a refusing partition cuts
/// an open watch.
pub type Body = UnsyncBoxBody<Bytes, Refused>;

/// Default watch timeout when the client sends no timeoutSeconds: kube-apiserver picks a random value
/// in [minRequestTimeout, 2×minRequestTimeout) with minRequestTimeout = 1800 s; the low end suffices.
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

/// State shared by every connection.
#[derive(Debug)]
pub struct Shared {
    /// The object store.
    pub store: Store,
    /// Credentials and the allow/deny table.
    pub auth: Auth,
    /// Injected faults.
    pub faults: Faults,
    /// The request log.
    pub log: RequestLog,
    /// TLS configuration (server certificate, client CA).
    pub tls: Arc<rustls::ServerConfig>,
    /// Bumped by `close_watches`: every open watch response ends cleanly.
    pub close_watches: tokio::sync::watch::Sender<u64>,
    /// "127.0.0.1:<port>", for /api's serverAddressByClientCIDRs.
    pub address: String,
    /// Interval between BOOKMARK events on watches that allow them (default 1 s).
    pub bookmark_interval: Duration,
    /// Told of every write the store carried out for a client (see [`Accepted`]).
    pub observer: ObserverSlot,
}

/// Where the [`WriteObserver`] is kept (none by default).
#[derive(Default)]
pub struct ObserverSlot(std::sync::RwLock<Option<WriteObserver>>);

impl std::fmt::Debug for ObserverSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ObserverSlot")
    }
}

impl ObserverSlot {
    /// Sets (replaces) the observer.
    pub fn set(&self, observer: WriteObserver) {
        match self.0.write() {
            Ok(mut g) => *g = Some(observer),
            Err(p) => *p.into_inner() = Some(observer),
        }
    }

    fn get(&self) -> Option<WriteObserver> {
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

/// Called after every write the store carried out for a client, before the answer leaves
/// (and whether or not it then reaches the client): the simulator checks its invariants here.
/// Gets the write and the store as the write left it. Controllers' writes and dry runs are not
/// reported.
pub type WriteObserver = Arc<dyn Fn(&Accepted<'_>, &Store) + Send + Sync>;

/// When and in which order a request arrived, carried in its extensions.
#[derive(Debug, Clone, Copy)]
struct Arrival {
    seq: u64,
    at: tokio::time::Instant,
}

/// One write the store carried out for a client.
#[derive(Debug)]
pub struct Accepted<'a> {
    /// Its request's position in the request log.
    pub seq: u64,
    /// When the request arrived, on tokio's clock (the simulator's virtual time), before any
    /// injected delay or partition held it.
    pub arrived: tokio::time::Instant,
    /// Who sent it.
    pub identity: &'a str,
    /// Create, update, patch or delete.
    pub verb: Verb,
    /// The resource's plural name.
    pub resource: &'a str,
    /// The namespace in the path.
    pub namespace: Option<&'a str>,
    /// The object as written (for a delete: its last state).
    pub object: &'a Value,
}

impl Shared {
    fn observe(&self, accepted: &Accepted<'_>) {
        if let Some(observer) = self.observer.get() {
            observer(accepted, &self.store);
        }
    }
}

/// Accepts connections until aborted. Every connection runs in a JoinSet owned by this future, so
/// aborting the task that runs it (go_down) also aborts every open connection and watch at once.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    connections.spawn(connection(stream, shared.clone()));
                }
            }
            // Reap finished connections so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Raised by the service to make hyper drop the connection without answering (Partition::Refuse,
/// and lost replies from `commit_then_drop_next`).
#[derive(Debug, thiserror::Error)]
#[error("connection refused by an injected partition")]
pub struct Refused;

async fn connection(stream: TcpStream, shared: Arc<Shared>) {
    // Watch events are small writes that must leave at once.
    let _ = stream.set_nodelay(true);
    let acceptor = tokio_rustls::TlsAcceptor::from(shared.tls.clone());
    let Ok(tls) = acceptor.accept(stream).await else {
        return;
    };
    let peer = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| PeerCert::new(c.to_vec()));
    serve_io(tls, peer, shared).await;
}

/// Serves HTTP/1.1 on `io` until the client closes it: a connection whose TLS (if any) is done
/// and whose client certificate, if it showed one, is `peer`.
pub async fn serve_io<I>(io: I, peer: Option<PeerCert>, shared: Arc<Shared>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let peer = Arc::new(peer);
    // One flag per connection: a black-holed partition freezes the connections it touched for
    // good, while connections opened after the heal serve normally.
    let frozen = Frozen::default();
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(frozen.clone());
        handle(shared.clone(), peer.clone(), req)
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), service)
        .await;
}

/// Set on a connection that carried a request or a watch of an identity while it was black-holed
/// ([`Partition::BlackHole`]): nothing is ever sent on it again, and nothing closes it. A real
/// firewall that drops packets does this to a connection whose server side gave up meanwhile
/// (its watch timed out, its FIN was dropped): after the heal the client still holds an
/// "established" connection that the server has forgotten.
#[derive(Debug, Clone, Default)]
pub struct Frozen(Arc<std::sync::atomic::AtomicBool>);

impl Frozen {
    fn freeze(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }

    fn is_frozen(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Never returns once frozen: the connection stays silent until the client drops it.
    async fn hold_if_frozen(&self) {
        if self.is_frozen() {
            std::future::pending::<()>().await;
        }
    }
}

/// What kube-apiserver's RequestInfoFactory computes from a request.
#[derive(Debug, Clone, Default)]
struct Info {
    /// Whether the path is /api/... or /apis/... with a resource.
    resource_request: bool,
    verb: Option<Verb>,
    group: String,
    version: String,
    resource: String,
    subresource: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
}

fn truthy(v: Option<&String>) -> bool {
    matches!(v.map(String::as_str), Some("true" | "1"))
}

fn request_info(method: &Method, path: &str, query: &HashMap<String, String>) -> Info {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let mut info = Info::default();
    let rest: &[&str] = match segs.as_slice() {
        ["api", version, rest @ ..] => {
            info.version = (*version).to_string();
            rest
        }
        ["apis", group, version, rest @ ..] => {
            info.group = (*group).to_string();
            info.version = (*version).to_string();
            rest
        }
        _ => &[],
    };
    let mut rest = rest;
    let mut watch_path = false;
    if rest.first() == Some(&"watch") {
        watch_path = true;
        rest = &rest[1..];
    }
    if rest.is_empty() {
        // Non-resource request (discovery, /version, health): verb from the method alone.
        info.verb = Some(match *method {
            Method::POST => Verb::Create,
            Method::PUT => Verb::Update,
            Method::PATCH => Verb::Patch,
            Method::DELETE => Verb::Delete,
            _ => Verb::Get,
        });
        return info;
    }
    info.resource_request = true;
    // namespaces/<ns>/<resource>... is a namespaced request; namespaces, namespaces/<name> and
    // namespaces/<name>/{status,finalize} address Namespace objects (RequestInfoFactory does the same).
    if rest[0] == "namespaces" && rest.len() > 2 && !matches!(rest[2], "status" | "finalize") {
        info.namespace = Some(rest[1].to_string());
        rest = &rest[2..];
    }
    info.resource = rest[0].to_string();
    info.name = rest.get(1).map(|s| (*s).to_string());
    info.subresource = rest.get(2).map(|s| (*s).to_string());
    let is_watch = watch_path || truthy(query.get("watch"));
    info.verb = Some(match *method {
        Method::GET | Method::HEAD if is_watch => Verb::Watch,
        Method::GET | Method::HEAD if info.name.is_none() => Verb::List,
        Method::POST => Verb::Create,
        Method::PUT => Verb::Update,
        Method::PATCH => Verb::Patch,
        Method::DELETE if info.name.is_none() => Verb::DeleteCollection,
        Method::DELETE => Verb::Delete,
        _ => Verb::Get,
    });
    info
}

fn parse_query(q: Option<&str>) -> HashMap<String, String> {
    let decode = |s: &str| {
        // application/x-www-form-urlencoded: '+' is a space (kube encodes '+' as %2B).
        let s = s.replace('+', " ");
        percent_encoding::percent_decode_str(&s)
            .decode_utf8_lossy()
            .into_owned()
    };
    q.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

fn json_response(code: u16, v: &Value) -> Response<Body> {
    let body = serde_json::to_vec(v).unwrap_or_default();
    let mut resp = Response::new(full(body));
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.code, &e.status())
}

fn api_error(
    code: u16,
    reason: &str,
    message: impl Into<String>,
    details: Option<Value>,
) -> ApiError {
    ApiError {
        code,
        reason: reason.to_string(),
        message: message.into(),
        details,
    }
}

/// The 404 kube-apiserver answers for a path it does not serve.
fn not_found_path() -> ApiError {
    // matches: k8s.io/apiserver/pkg/endpoints/handlers/responsewriters NotFound for unknown paths
    api_error(
        404,
        "NotFound",
        "the server could not find the requested resource",
        Some(json!({})),
    )
}

fn bad_request(message: impl Into<String>) -> ApiError {
    api_error(400, "BadRequest", message, None)
}

fn text_response(code: u16, text: &'static str) -> Response<Body> {
    let mut resp = Response::new(full(text));
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

async fn handle(
    shared: Arc<Shared>,
    peer: Arc<Option<PeerCert>>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Refused> {
    let seq = shared.log.next_seq();
    let at = Instant::now();
    let mut req = req;
    req.extensions_mut().insert(Arrival {
        seq,
        at: tokio::time::Instant::now(),
    });
    let path = req.uri().path().to_string();
    let query = parse_query(req.uri().query());
    let info = request_info(req.method(), &path, &query);
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let user = shared
        .auth
        .authenticate(peer.as_ref().as_ref(), authorization);
    let identity = user
        .as_ref()
        .map(|u| u.name.clone())
        .unwrap_or_else(|| "anonymous".to_string());
    let log = |code: u16| {
        shared.log.push(RequestRecord {
            seq,
            at,
            identity: identity.clone(),
            verb: info.verb.unwrap_or(Verb::Get),
            resource: info.resource.clone(),
            group: info.group.clone(),
            namespace: info.namespace.clone(),
            name: info.name.clone(),
            path: path.clone(),
            code,
        })
    };
    let Some(user) = user else {
        // matches: https://kubernetes.io/docs/reference/access-authn-authz/authentication/ (401 when
        // no authenticator accepts the request and anonymous requests are disabled)
        log(401);
        return Ok(error_response(&api_error(
            401,
            "Unauthorized",
            "Unauthorized",
            None,
        )));
    };
    let frozen = req
        .extensions()
        .get::<Frozen>()
        .cloned()
        .unwrap_or_default();
    frozen.hold_if_frozen().await;
    match shared.faults.partition_of(&identity) {
        Some(Partition::Refuse) => {
            log(0);
            return Err(Refused);
        }
        Some(Partition::BlackHole) => {
            log(0);
            frozen.freeze();
            frozen.hold_if_frozen().await;
        }
        Some(Partition::Hang) => {
            log(0);
            shared.faults.wait_unhung(&identity).await;
            // Healed into a refusing partition: drop the connection now.
            if shared.faults.partition_of(&identity) == Some(Partition::Refuse) {
                return Err(Refused);
            }
        }
        None => {}
    }
    let latency = shared.faults.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let verb = info.verb.unwrap_or(Verb::Get);
    let ns = info.namespace.as_deref();
    let delay = shared
        .faults
        .take_delay(&identity, verb, &info.resource, ns);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some(f) = shared
        .faults
        .take_failure(&identity, verb, &info.resource, ns)
    {
        let target = Target {
            resource: &info.resource,
            group: &info.group,
            name: info.name.as_deref(),
        };
        let mut resp = json_response(f.code(), &f.status(&target));
        if let Some(secs) = f.retry_after() {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        log(f.code());
        return Ok(resp);
    }
    // Decided before routing, so that the rule is consumed by the request that arrived first.
    let drop_reply = shared.faults.take_drop(&identity, verb, &info.resource, ns);
    let resp = route(&shared, &user, &info, &query, req).await;
    log(resp.status().as_u16());
    if drop_reply {
        // A lost reply: the store has committed (or refused) the request; the client gets no
        // answer, only a closed connection, as when the apiserver or the network dies right after
        // the etcd write.
        return Err(Refused);
    }
    Ok(resp)
}

async fn route(
    shared: &Arc<Shared>,
    user: &User,
    info: &Info,
    query: &HashMap<String, String>,
    req: Request<Incoming>,
) -> Response<Body> {
    let identity = user.name.as_str();
    let path = req.uri().path().trim_end_matches('/').to_string();
    if !info.resource_request {
        let get = req.method() == Method::GET;
        return match path.as_str() {
            "/healthz" | "/readyz" | "/livez" if get => text_response(200, "ok"),
            "/version" if get => json_response(200, &crate::discovery::version()),
            "/api" if get => json_response(200, &crate::discovery::api_versions(&shared.address)),
            "/apis" if get => {
                json_response(200, &crate::discovery::api_group_list_with_authorization())
            }
            "/api/v1" if get => match crate::discovery::api_resource_list("", "v1") {
                Some(v) => json_response(200, &v),
                None => error_response(&not_found_path()),
            },
            _ if get && path.starts_with("/apis/") => {
                let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
                let doc = match parts.as_slice() {
                    ["apis", group] => crate::discovery::api_group(group),
                    ["apis", group, version] => crate::discovery::api_resource_list(group, version),
                    _ => None,
                };
                match doc {
                    Some(v) => json_response(200, &v),
                    None => error_response(&not_found_path()),
                }
            }
            _ => error_response(&not_found_path()),
        };
    }
    let verb = info.verb.unwrap_or(Verb::Get);
    if info.group == "authorization.k8s.io"
        && info.version == "v1"
        && info.resource == "selfsubjectaccessreviews"
        && info.name.is_none()
        && verb == Verb::Create
    {
        return match read_json(req).await {
            Ok(body) => self_subject_access_review(shared, user, body),
            Err(e) => error_response(&e),
        };
    }
    let Some(r) = store::resource(&info.group, &info.version, &info.resource) else {
        return error_response(&not_found_path());
    };
    // Scope: cluster-scoped kinds have no namespace segment; a namespaced object needs one.
    if (!r.namespaced && info.namespace.is_some())
        || (r.namespaced && info.namespace.is_none() && info.name.is_some())
        || info.subresource.is_some()
    {
        return error_response(&not_found_path());
    }
    // The name RBAC sees: the path's, or for a list or watch the one its field selector
    // requires (apiserver RequestInfoFactory), so that resourceNames narrow a named watch.
    let name = info.name.as_deref().or_else(|| {
        matches!(verb, Verb::List | Verb::Watch)
            .then(|| query.get("fieldSelector"))
            .flatten()
            .and_then(|f| rbac::name_from_field_selector(f))
    });
    let attrs = Attributes {
        verb: verb.as_str(),
        api_group: r.group,
        resource: r.plural,
        subresource: info.subresource.as_deref(),
        namespace: info.namespace.as_deref(),
        name,
    };
    if !shared.auth.authorize(user, &attrs) {
        return error_response(&forbidden(identity, verb, r, info));
    }
    match resource_request(shared, identity, r, info, verb, query, req).await {
        Ok(resp) => resp,
        Err(e) => error_response(&e),
    }
}

/// The 403 kube-apiserver's authorization filter answers, message as RBAC words it.
fn forbidden(identity: &str, verb: Verb, r: &Resource, info: &Info) -> ApiError {
    // matches: k8s.io/apiserver/pkg/endpoints/filters/authorization.go forbiddenMessage +
    // apimachinery errors.NewForbidden
    let scope = match &info.namespace {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".to_string(),
    };
    let reason = format!(
        "User \"{identity}\" cannot {verb} resource \"{}\" in API group \"{}\" {scope}",
        r.plural, r.group
    );
    let qualified = if r.group.is_empty() {
        r.plural.to_string()
    } else {
        format!("{}.{}", r.plural, r.group)
    };
    let message = match &info.name {
        Some(name) => format!("{qualified} \"{name}\" is forbidden: {reason}"),
        None => format!("{qualified} is forbidden: {reason}"),
    };
    api_error(
        403,
        "Forbidden",
        message,
        Some(
            json!({"name": info.name.clone().unwrap_or_default(), "group": r.group, "kind": r.plural}),
        ),
    )
}

fn self_subject_access_review(shared: &Shared, user: &User, body: Value) -> Response<Body> {
    // matches: https://kubernetes.io/docs/reference/access-authn-authz/authorization/#checking-api-access
    let attrs = &body["spec"]["resourceAttributes"];
    let text = |key: &str| attrs[key].as_str().filter(|s| !s.is_empty());
    let allowed = match (text("verb"), text("resource")) {
        (Some(verb), Some(resource)) => shared.auth.authorize(
            user,
            &Attributes {
                verb,
                api_group: text("group").unwrap_or_default(),
                resource,
                subresource: text("subresource"),
                namespace: text("namespace"),
                name: text("name"),
            },
        ),
        // Non-resource attributes: allowed (the test bed models no non-resource rules).
        _ => true,
    };
    let status = if allowed {
        json!({"allowed": true, "reason": "RBAC: allowed by ClusterRoleBinding \"cluster-admin\" of ClusterRole \"cluster-admin\" to Group \"system:masters\""})
    } else {
        json!({"allowed": false})
    };
    json_response(
        201,
        &json!({
            "kind": "SelfSubjectAccessReview",
            "apiVersion": "authorization.k8s.io/v1",
            "metadata": {"creationTimestamp": null},
            "spec": body["spec"].clone(),
            "status": status,
        }),
    )
}

fn media_type(req: &Request<Incoming>) -> Option<String> {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    req.into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| bad_request(format!("failed to read the request body: {e}")))
}

/// Reads a JSON body (create, update, SelfSubjectAccessReview).
async fn read_json(req: Request<Incoming>) -> Result<Value, ApiError> {
    match media_type(&req).as_deref() {
        None | Some("application/json") | Some("*/*") => {}
        Some(_) => {
            return Err(api_error(
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf",
                None,
            ));
        }
    }
    let bytes = read_body(req).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| bad_request(format!("the object provided is unrecognized (json: {e})")))
}

fn dry_run(query: &HashMap<String, String>) -> Result<bool, ApiError> {
    match query.get("dryRun").map(String::as_str) {
        None | Some("") => Ok(false),
        Some("All") => Ok(true),
        Some(other) => Err(api_error(
            400,
            "BadRequest",
            format!("Invalid dryRun value: {other}, accepted values are: [All]"),
            None,
        )),
    }
}

fn write_params(query: &HashMap<String, String>) -> Result<WriteParams, ApiError> {
    Ok(WriteParams {
        field_manager: query.get("fieldManager").cloned(),
        dry_run: dry_run(query)?,
    })
}

/// Checks that the object's metadata.namespace (if set) matches the path, as the real server does.
fn check_namespace(body: &Value, ns: Option<&str>) -> Result<(), ApiError> {
    match (body["metadata"]["namespace"].as_str(), ns) {
        (Some(b), Some(p)) if !b.is_empty() && b != p => Err(bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
        _ => Ok(()),
    }
}

async fn resource_request(
    shared: &Arc<Shared>,
    identity: &str,
    r: &'static Resource,
    info: &Info,
    verb: Verb,
    query: &HashMap<String, String>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let store = &shared.store;
    let ns = info.namespace.as_deref();
    let name = info.name.as_deref().unwrap_or("");
    let arrival = req.extensions().get::<Arrival>().copied();
    let observe = |object: &Value, dry_run: bool| {
        if let (Some(a), false) = (arrival, dry_run) {
            shared.observe(&Accepted {
                seq: a.seq,
                arrived: a.at,
                identity,
                verb,
                resource: r.plural,
                namespace: ns,
                object,
            });
        }
    };
    match verb {
        Verb::Get => Ok(json_response(200, &store.get(r, ns, name)?)),
        Verb::List => {
            let limit = match query.get("limit") {
                Some(l) if !l.is_empty() => Some(
                    l.parse::<i64>()
                        .map_err(|_| bad_request(format!("invalid limit '{l}'")))?
                        .max(0) as usize,
                ),
                _ => None,
            };
            let p = ListParams {
                label_selector: query.get("labelSelector").cloned(),
                field_selector: query.get("fieldSelector").cloned(),
                // limit=0 means "no limit" to the real server.
                limit: limit.filter(|l| *l > 0),
                continue_token: query.get("continue").filter(|c| !c.is_empty()).cloned(),
                resource_version: query.get("resourceVersion").cloned(),
                resource_version_match: query.get("resourceVersionMatch").cloned(),
            };
            Ok(json_response(200, &store.list(r, ns, &p)?))
        }
        Verb::Watch => {
            let frozen = req
                .extensions()
                .get::<Frozen>()
                .cloned()
                .unwrap_or_default();
            watch(shared, identity, r, info, query, frozen)
        }
        Verb::Create => {
            if info.name.is_some() {
                return Err(api_error(
                    405,
                    "MethodNotAllowed",
                    "the server does not allow this method on the requested resource",
                    None,
                ));
            }
            let p = write_params(query)?;
            let body = read_json(req).await?;
            check_namespace(&body, ns)?;
            let out = store.create(r, ns, body, &p)?;
            observe(&out, p.dry_run);
            Ok(json_response(201, &out))
        }
        Verb::Update => {
            let p = write_params(query)?;
            let body = read_json(req).await?;
            check_namespace(&body, ns)?;
            if let Some(body_name) = body["metadata"]["name"].as_str()
                && body_name != name
            {
                return Err(bad_request(format!(
                    "the name of the object ({body_name}) does not match the name on the URL ({name})"
                )));
            }
            let out = store.replace(r, ns, name, body, &p)?;
            observe(&out, p.dry_run);
            Ok(json_response(200, &out))
        }
        Verb::Patch => {
            let kind = match media_type(&req).as_deref() {
                Some("application/merge-patch+json") => PatchKind::Merge,
                Some("application/json-patch+json") => PatchKind::Json,
                Some("application/strategic-merge-patch+json") => PatchKind::StrategicMerge,
                Some("application/apply-patch+yaml") | Some("application/apply-patch+cbor") => {
                    PatchKind::Apply {
                        force: truthy(query.get("force")),
                    }
                }
                _ => {
                    return Err(api_error(
                        415,
                        "UnsupportedMediaType",
                        "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
                        None,
                    ));
                }
            };
            let p = write_params(query)?;
            let bytes = read_body(req).await?;
            let patch: Value = match kind {
                // Apply bodies are YAML (JSON is YAML); everything else is JSON.
                PatchKind::Apply { .. } => serde_yaml::from_slice(&bytes)
                    .map_err(|e| bad_request(format!("error decoding YAML: {e}")))?,
                _ => serde_json::from_slice(&bytes)
                    .map_err(|e| bad_request(format!("error decoding patch: {e}")))?,
            };
            // Apply that creates the object answers 201, as the real server does.
            let created =
                matches!(kind, PatchKind::Apply { .. }) && store.get(r, ns, name).is_err();
            let out = store.patch(r, ns, name, kind, patch, &p)?;
            observe(&out, p.dry_run);
            Ok(json_response(if created { 201 } else { 200 }, &out))
        }
        Verb::Delete => {
            let bytes = read_body(req).await?;
            let mut p = DeleteParams {
                dry_run: dry_run(query)?,
                ..DeleteParams::default()
            };
            if !bytes.is_empty() {
                let opts: Value = serde_json::from_slice(&bytes)
                    .map_err(|e| bad_request(format!("error decoding DeleteOptions: {e}")))?;
                p.precondition_uid = opts["preconditions"]["uid"].as_str().map(str::to_string);
                p.precondition_resource_version = opts["preconditions"]["resourceVersion"]
                    .as_str()
                    .map(str::to_string);
                if let Some(dr) = opts["dryRun"].as_array() {
                    p.dry_run |= dr.iter().any(|v| v == "All");
                }
            }
            let out = store.delete(r, ns, name, &p)?;
            observe(&out, p.dry_run);
            Ok(json_response(200, &out))
        }
        Verb::DeleteCollection => {
            let p = ListParams {
                label_selector: query.get("labelSelector").cloned(),
                field_selector: query.get("fieldSelector").cloned(),
                ..ListParams::default()
            };
            let mut list = store.list(r, ns, &p)?;
            let dp = DeleteParams {
                dry_run: dry_run(query)?,
                ..DeleteParams::default()
            };
            let mut deleted = Vec::new();
            for item in list["items"].as_array().cloned().unwrap_or_default() {
                let item_ns = item["metadata"]["namespace"].as_str();
                let Some(item_name) = item["metadata"]["name"].as_str() else {
                    continue;
                };
                // Gone in the meantime is fine: deletecollection is best effort per item.
                if let Ok(v) = store.delete(r, item_ns, item_name, &dp) {
                    deleted.push(v);
                }
            }
            list["items"] = Value::Array(deleted);
            Ok(json_response(200, &list))
        }
    }
}

fn watch(
    shared: &Arc<Shared>,
    identity: &str,
    r: &'static Resource,
    info: &Info,
    query: &HashMap<String, String>,
    frozen: Frozen,
) -> Result<Response<Body>, ApiError> {
    let p = WatchParams {
        label_selector: query.get("labelSelector").cloned(),
        field_selector: query.get("fieldSelector").cloned(),
        resource_version: query.get("resourceVersion").cloned(),
        resource_version_match: query.get("resourceVersionMatch").cloned(),
        allow_bookmarks: truthy(query.get("allowWatchBookmarks")),
        send_initial_events: query
            .get("sendInitialEvents")
            .map(|v| v == "true" || v == "1"),
    };
    let timeout = match query.get("timeoutSeconds") {
        Some(t) if !t.is_empty() => {
            let secs = t
                .parse::<u64>()
                .map_err(|_| bad_request(format!("invalid timeoutSeconds '{t}'")))?;
            // timeoutSeconds=0 means "no client timeout": the server's default applies
            // (apiserver handlers/watch.go only uses a positive value).
            if secs == 0 {
                DEFAULT_WATCH_TIMEOUT
            } else {
                Duration::from_secs(secs)
            }
        }
        _ => DEFAULT_WATCH_TIMEOUT,
    };
    let ns = info.namespace.as_deref();
    let w = shared.store.watch(r, ns, &p)?;
    let state = WatchState {
        watch_id: w.id,
        initial: w.initial.into(),
        events: w.events,
        bookmarks: p.allow_bookmarks.then(|| {
            let mut i = tokio::time::interval_at(
                tokio::time::Instant::now() + shared.bookmark_interval,
                shared.bookmark_interval,
            );
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        }),
        deadline: tokio::time::Instant::now() + timeout,
        close: shared.close_watches.subscribe(),
        shared: shared.clone(),
        resource: r,
        identity: identity.to_string(),
        frozen,
        done: false,
    };
    let stream = futures::stream::unfold(state, next_event).map(|line| line.map(Frame::data));
    let mut resp = Response::new(StreamBody::new(stream).boxed_unsync());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // No Content-Length: hyper answers with Transfer-Encoding: chunked and flushes each frame.
    Ok(resp)
}

struct WatchState {
    watch_id: u64,
    initial: VecDeque<Value>,
    events: tokio::sync::mpsc::UnboundedReceiver<Value>,
    bookmarks: Option<tokio::time::Interval>,
    deadline: tokio::time::Instant,
    close: tokio::sync::watch::Receiver<u64>,
    shared: Arc<Shared>,
    resource: &'static Resource,
    identity: String,
    frozen: Frozen,
    done: bool,
}

fn line(v: &Value) -> Bytes {
    let mut b = serde_json::to_vec(v).unwrap_or_default();
    b.push(b'\n');
    Bytes::from(b)
}

/// Produces the next newline-terminated watch event, None to end the response cleanly, or
/// Err(Refused) to cut the connection (refusing partition).
async fn next_event(mut s: WatchState) -> Option<(Result<Bytes, Refused>, WatchState)> {
    if s.done {
        return None;
    }
    let ev = match s.initial.pop_front() {
        Some(ev) => ev,
        None => {
            let mut partitions = s.shared.faults.subscribe();
            loop {
                match s.shared.faults.partition_of(&s.identity) {
                    Some(Partition::Refuse) => {
                        s.done = true;
                        return Some((Err(Refused), s));
                    }
                    Some(Partition::BlackHole) => s.frozen.freeze(),
                    _ => {}
                }
                s.frozen.hold_if_frozen().await;
                tokio::select! {
                    ev = s.events.recv() => break ev?,
                    // The bookmark goes into this watch's own channel, behind every event already
                    // queued: written ahead of them, it would let a client that loses the
                    // connection resume past events it never received.
                    _ = tick(&mut s.bookmarks) => {
                        s.shared.store.request_bookmark(s.resource, s.watch_id);
                    }
                    _ = tokio::time::sleep_until(s.deadline) => return None,
                    _ = s.close.changed() => return None,
                    // Re-check the partition state when it changes.
                    _ = partitions.changed() => {}
                }
            }
        }
    };
    // A hung partition stops delivery (events queue up in the channel) until healed; a black hole
    // stops it for good.
    if s.shared.faults.partition_of(&s.identity) == Some(Partition::BlackHole) {
        s.frozen.freeze();
    }
    s.frozen.hold_if_frozen().await;
    s.shared.faults.wait_unhung(&s.identity).await;
    if s.shared.faults.partition_of(&s.identity) == Some(Partition::Refuse) {
        s.done = true;
        return Some((Err(Refused), s));
    }
    // An ERROR event (410 Expired for a compacted resourceVersion) is the last one the real server
    // sends on that watch.
    s.done = ev["type"] == "ERROR";
    Some((Ok(line(&ev)), s))
}

async fn tick(i: &mut Option<tokio::time::Interval>) {
    match i {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> HashMap<String, String> {
        parse_query(Some(s))
    }

    #[test]
    fn get_on_a_collection_with_watch_true_is_the_watch_verb() {
        // matches: k8s.io/apiserver/pkg/endpoints/request/requestinfo.go (list → watch on ?watch)
        let i = request_info(
            &Method::GET,
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
            &q("watch=true&resourceVersion=5"),
        );
        assert_eq!(i.verb, Some(Verb::Watch));
        assert_eq!(i.namespace.as_deref(), Some("default"));
        assert_eq!(i.resource, "endpointslices");
        assert_eq!(i.group, "discovery.k8s.io");
        let i = request_info(
            &Method::GET,
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
            &q(""),
        );
        assert_eq!(i.verb, Some(Verb::List));
    }

    #[test]
    fn namespace_objects_are_addressed_without_a_namespace_segment() {
        // matches: k8s.io/apiserver/pkg/endpoints/request/requestinfo.go (namespaces special case)
        let i = request_info(&Method::GET, "/api/v1/namespaces/kube-system", &q(""));
        assert_eq!(i.resource, "namespaces");
        assert_eq!(i.name.as_deref(), Some("kube-system"));
        assert_eq!(i.namespace, None);
        assert_eq!(i.verb, Some(Verb::Get));
        let i = request_info(&Method::DELETE, "/api/v1/namespaces/x/services", &q(""));
        assert_eq!(i.verb, Some(Verb::DeleteCollection));
        let i = request_info(
            &Method::GET,
            "/api/v1/watch/namespaces/x/services/y",
            &q(""),
        );
        assert_eq!(i.verb, Some(Verb::Watch));
    }

    #[test]
    fn query_values_are_form_decoded() {
        let m = q("labelSelector=a%3Db%2Cc+in+%28x%2Cy%29&limit=5");
        assert_eq!(m["labelSelector"], "a=b,c in (x,y)");
        assert_eq!(m["limit"], "5");
    }
}
