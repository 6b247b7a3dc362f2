//! certconn's reference service: the service side of the connector protocol
//! (`docs/connector-protocol.md`), small enough to read in one sitting, for a vendor to try
//! certconn end to end in minutes and for certconn's own tests and benchmark.
//!
//! - The connector's API under `/connector/v1`: long-poll for work, acknowledge, upload
//!   results, heartbeat (answered with the version policy from `--version-policy`). A
//!   connector proves who it is with a bearer token (`--connector-token-file`, for trying
//!   things out) or, with `--tls-ca-file`, with the identity certificate it got by registering
//!   (`POST /connector/v1/register` with a one-time enrolment token): mutual TLS.
//! - An administrator's JSON API under `/admin/v1` (no token; listen on loopback): enqueue work,
//!   read results and counters, see the connectors' last heartbeats, change the version policy,
//!   mint enrolment tokens, list and revoke connector identities.
//!
//! It keeps everything in memory: it is a reference, not a product. An item handed to a
//! connector and not acknowledged within `--visibility-seconds` is offered again, so that work a
//! dead connector took goes to another.

mod identity;
mod listener;
mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use certconn_connector::{
    Heartbeat, HeartbeatAnswer, IdentityAnswer, IdentityRequest, ItemResult, VersionPolicy,
    WorkItem, BASE, MAX_WAIT_SECONDS,
};
use clap::Parser;
use serde::Deserialize;
use serde_json::json;

use identity::Authority;
use listener::Peer;
use store::Store;

#[derive(Parser)]
#[command(
    version,
    about = "The service side of the certconn connector protocol, for trying certconn end to end"
)]
struct Args {
    /// Address to listen on; port 0 takes a free one.
    #[arg(long, default_value = "127.0.0.1:8970")]
    listen: SocketAddr,
    /// Where to write the address it got (the readiness signal for scripts and tests).
    #[arg(long)]
    addr_file: Option<PathBuf>,
    /// File holding a bearer token connectors may present instead of an identity.
    #[arg(long, required_unless_present = "tls_ca_file")]
    connector_token_file: Option<PathBuf>,
    /// Serve HTTPS with a CA made at start, which issues the service's TLS certificate and the
    /// connectors' identities (registration, mutual TLS); its certificate is written here
    /// before the address file, for `certconn upstream register --trust-anchors`.
    #[arg(long)]
    tls_ca_file: Option<PathBuf>,
    /// The names of the service's TLS certificate.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1,localhost")]
    tls_names: Vec<String>,
    /// How long a connector identity certificate lives, in seconds.
    #[arg(long, default_value_t = 30 * 86_400)]
    identity_seconds: u64,
    /// How long an item handed out stays with its connector before it is offered again.
    #[arg(long, default_value_t = 60)]
    visibility_seconds: u64,
    /// JSON file with the version policy heartbeats are answered with
    /// (`{"latest": "…", "deprecated": [{"version", "deprecated_on", "unsupported_after"}]}`).
    /// Default: this build's version is the latest, nothing deprecated.
    #[arg(long)]
    version_policy: Option<PathBuf>,
}

struct App {
    store: Store,
    token: Option<String>,
    /// The identity CA, with `--tls-ca-file`.
    authority: Option<Authority>,
    /// Calls refused because their identity was revoked or unknown.
    refused_identities: std::sync::atomic::AtomicU64,
    /// Until when the connector's calls are answered with this status (an outage, asked for
    /// through the admin API to see a connector ride one out).
    outage: std::sync::Mutex<Option<(std::time::Instant, StatusCode)>>,
    policy: std::sync::Mutex<VersionPolicy>,
    /// Each connector's last heartbeat and when it came (milliseconds since the epoch), by
    /// instance.
    connectors: std::sync::Mutex<std::collections::BTreeMap<String, (Heartbeat, u128)>>,
    /// How long each acknowledgement and result is held before it is answered (milliseconds;
    /// the admin's `POST /pace`), to see whether a connector's calls overlap.
    pace_ms: AtomicU64,
    /// Acknowledgements being answered now, and the most ever at once.
    acks: Gauge,
    /// Results being answered now, and the most ever at once.
    results: Gauge,
    /// The addresses connector calls came from: one per connection, so their number is how many
    /// connections connectors made (whether they keep theirs for the next call).
    connector_peers: std::sync::Mutex<std::collections::HashSet<SocketAddr>>,
}

/// Calls of one kind being answered now, and the most ever at once.
#[derive(Default)]
struct Gauge {
    now: AtomicU64,
    most: AtomicU64,
}

/// A call being answered: counted in its gauge while it lives.
struct InFlight<'a>(&'a Gauge);

impl<'a> InFlight<'a> {
    /// Counts the call in, then holds it for the admin's pace.
    async fn paced(app: &App, gauge: &'a Gauge) -> Self {
        let now = gauge.now.fetch_add(1, Ordering::SeqCst) + 1;
        gauge.most.fetch_max(now, Ordering::SeqCst);
        let call = Self(gauge);
        let pace = app.pace_ms.load(Ordering::SeqCst);
        if pace > 0 {
            tokio::time::sleep(Duration::from_millis(pace)).await;
        }
        call
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Err(e) = run(args).await {
        eprintln!("certconn-reference-service: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), String> {
    let token = match &args.connector_token_file {
        Some(file) => {
            let token = std::fs::read_to_string(file)
                .map_err(|e| format!("{}: {e}", file.display()))?
                .trim()
                .to_owned();
            if token.is_empty() {
                return Err(format!("{}: the token is empty", file.display()));
            }
            Some(token)
        }
        None => None,
    };
    let authority = match &args.tls_ca_file {
        Some(_) => Some(Authority::new(args.identity_seconds.max(1))?),
        None => None,
    };
    let policy = match &args.version_policy {
        Some(file) => {
            let text = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
            let policy: VersionPolicy = serde_json::from_slice(&text)
                .map_err(|e| format!("{}: not a version policy: {e}", file.display()))?;
            policy
                .check()
                .map_err(|e| format!("{}: {e}", file.display()))?;
            policy
        }
        None => VersionPolicy {
            latest: env!("CARGO_PKG_VERSION").to_owned(),
            deprecated: Vec::new(),
        },
    };
    let app = Arc::new(App {
        store: Store::new(Duration::from_secs(args.visibility_seconds)),
        token,
        authority,
        refused_identities: std::sync::atomic::AtomicU64::new(0),
        outage: std::sync::Mutex::new(None),
        policy: std::sync::Mutex::new(policy),
        connectors: std::sync::Mutex::default(),
        pace_ms: AtomicU64::new(0),
        acks: Gauge::default(),
        results: Gauge::default(),
        connector_peers: std::sync::Mutex::default(),
    });
    let connector = Router::new()
        .route("/work", get(poll))
        .route("/work/{id}/ack", post(ack))
        .route("/results", post(result))
        .route("/heartbeat", post(heartbeat))
        .route("/identity/renew", post(renew))
        .route_layer(middleware::from_fn_with_state(app.clone(), authenticate))
        .route("/register", post(register));
    let admin = Router::new()
        .route("/work", post(enqueue))
        .route("/results", get(results))
        .route("/results/{id}", get(one_result))
        .route("/stats", get(stats))
        .route("/timings", get(timings))
        .route("/outage", post(outage))
        .route("/pace", post(pace))
        .route("/connectors", get(connectors))
        .route("/connectors/{id}/revoke", post(revoke))
        .route("/identities", get(identities))
        .route("/enrolment-tokens", post(new_token))
        .route("/version-policy", get(get_policy).put(put_policy));
    let router = Router::new()
        .nest(BASE, connector)
        .nest("/admin/v1", admin)
        .with_state(app.clone());
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("binding {}: {e}", args.listen))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    let tls = match (&app.authority, &args.tls_ca_file) {
        (Some(authority), Some(ca_file)) => {
            write_atomic(ca_file, authority.ca_pem().as_bytes())?;
            let (chain, key) = authority.server_certificate(&args.tls_names)?;
            Some(listener::server_config(chain, key, authority.ca_der())?)
        }
        _ => None,
    };
    if let Some(file) = &args.addr_file {
        write_atomic(file, bound.to_string().as_bytes())?;
    }
    let service = router.into_make_service_with_connect_info::<Peer>();
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    match tls {
        Some(config) => {
            eprintln!("certconn-reference-service: listening on https://{bound}");
            let listener =
                listener::TlsListener::new(listener, config).map_err(|e| e.to_string())?;
            axum::serve(listener, service)
                .with_graceful_shutdown(shutdown)
                .await
                .map_err(|e| e.to_string())
        }
        None => {
            eprintln!("certconn-reference-service: listening on http://{bound}");
            axum::serve(listener, service)
                .with_graceful_shutdown(shutdown)
                .await
                .map_err(|e| e.to_string())
        }
    }
}

/// Writes `bytes` to `file` through a rename, so a reader never sees half of it.
fn write_atomic(file: &std::path::Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, file))
        .map_err(|e| format!("{}: {e}", file.display()))
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

fn refusal(r: identity::Refusal) -> Response {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST);
    let body = certconn_connector::ErrorBody {
        error: r.reason,
        code: r.code.map(str::to_owned),
    };
    (status, Json(body)).into_response()
}

/// The connector a call comes from, as its credentials showed it.
#[derive(Clone)]
struct Caller {
    /// The identity certificate (DER), when the call came with one.
    identity: Option<Vec<u8>>,
}

/// A connector call: its identity certificate (verified by the handshake, and not revoked),
/// else the bearer token.
async fn authenticate(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    mut request: Request,
    next: Next,
) -> Response {
    let down = *app.outage.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((until, status)) = down {
        if std::time::Instant::now() < until {
            let mut answer = error(status, "the service is unavailable (an outage asked for)");
            answer
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            return answer;
        }
    }
    if let Some(addr) = peer.addr {
        app.connector_peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(addr);
    }
    if let (Some(cert), Some(authority)) = (&peer.client_certificate, &app.authority) {
        if let Err(r) = authority.connector_of(cert) {
            app.refused_identities
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return refusal(r);
        }
        request.extensions_mut().insert(Caller {
            identity: Some(cert.clone()),
        });
        return next.run(request).await;
    }
    let presented = bearer(&request);
    if app.token.is_none() || presented != app.token.as_deref() {
        return error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong connector credentials (an identity certificate or the connector token)",
        );
    }
    request.extensions_mut().insert(Caller { identity: None });
    next.run(request).await
}

fn bearer(request: &Request) -> Option<&str> {
    request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// `POST /connector/v1/register` (bearer: a one-time enrolment token): the connector's first
/// identity certificate, and the CA to trust from now on.
async fn register(State(app): State<Arc<App>>, request: Request) -> Response {
    let Some(authority) = &app.authority else {
        return error(
            StatusCode::NOT_FOUND,
            "this service runs without TLS (--tls-ca-file): no registration",
        );
    };
    let token = bearer(&request).map(str::to_owned);
    let body = match axum::body::to_bytes(request.into_body(), 64 << 10).await {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let asked: IdentityRequest = match serde_json::from_slice(&body) {
        Ok(a) => a,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    match authority.register(token.as_deref(), &asked.csr) {
        Ok((connector_id, certificate)) => {
            eprintln!("certconn-reference-service: registered {connector_id}");
            let answer = IdentityAnswer {
                connector_id,
                certificate,
                service_ca: authority.ca_pem(),
            };
            (StatusCode::CREATED, Json(answer)).into_response()
        }
        Err(r) => refusal(r),
    }
}

/// `POST /connector/v1/identity/renew` (mutual TLS): a new identity certificate.
async fn renew(
    State(app): State<Arc<App>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Json(asked): Json<IdentityRequest>,
) -> Response {
    let (Some(authority), Some(presented)) = (&app.authority, &caller.identity) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "renewal needs the current identity (mutual TLS)",
        );
    };
    match authority.renew(presented, &asked.csr) {
        Ok((connector_id, certificate)) => Json(IdentityAnswer {
            connector_id,
            certificate,
            service_ca: authority.ca_pem(),
        })
        .into_response(),
        Err(r) => refusal(r),
    }
}

/// `POST /admin/v1/enrolment-tokens`: a one-time token for `certconn upstream register`.
async fn new_token(State(app): State<Arc<App>>) -> Response {
    let Some(authority) = &app.authority else {
        return error(
            StatusCode::NOT_FOUND,
            "this service runs without TLS (--tls-ca-file): no registration",
        );
    };
    match authority.new_token() {
        Ok(token) => (StatusCode::CREATED, Json(json!({ "token": token }))).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// `GET /admin/v1/identities`: every identity certificate issued, oldest first, and how many
/// calls came with a revoked or unknown one.
async fn identities(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    let list = app
        .authority
        .as_ref()
        .map(Authority::issued)
        .unwrap_or_default();
    let refused = app
        .refused_identities
        .load(std::sync::atomic::Ordering::Relaxed);
    Json(json!({ "identities": list, "refused_calls": refused }))
}

/// `POST /admin/v1/connectors/{id}/revoke`: every identity of the connector is refused from
/// now on.
async fn revoke(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    match &app.authority {
        Some(a) if a.revoke(&id) => StatusCode::NO_CONTENT.into_response(),
        _ => error(StatusCode::NOT_FOUND, format!("no connector {id:?}")),
    }
}

#[derive(Deserialize)]
struct PollQuery {
    wait: Option<u64>,
    max: Option<usize>,
}

/// `GET /connector/v1/work?wait=&max=`: up to `max` items, waiting up to `wait` seconds for one
/// (a [`certconn_connector::WorkBatch`]; items are sent as they were enqueued).
async fn poll(State(app): State<Arc<App>>, Query(q): Query<PollQuery>) -> Json<serde_json::Value> {
    let wait = Duration::from_secs(q.wait.unwrap_or(30).min(MAX_WAIT_SECONDS));
    let max = q.max.unwrap_or(10).clamp(1, 100);
    Json(json!({ "items": app.store.take(max, wait).await }))
}

/// `POST /connector/v1/work/{id}/ack`.
async fn ack(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    let _call = InFlight::paced(&app, &app.acks).await;
    if app.store.ack(&id) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        error(StatusCode::NOT_FOUND, format!("no work item {id:?}"))
    }
}

/// `POST /connector/v1/results`: kept once; a repeat is accepted and changes nothing.
async fn result(State(app): State<Arc<App>>, Json(result): Json<ItemResult>) -> Response {
    let _call = InFlight::paced(&app, &app.results).await;
    if app.store.record(result) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        error(StatusCode::NOT_FOUND, "no work item with this id")
    }
}

#[derive(Deserialize)]
struct EnqueueQuery {
    /// Enqueue the item even when it is not a valid work item: for trying how a connector
    /// copes with a bad item beside good ones.
    #[serde(default)]
    unchecked: bool,
}

/// `POST /admin/v1/work`: a work item (`id` optional: one is made).
async fn enqueue(
    State(app): State<Arc<App>>,
    Query(q): Query<EnqueueQuery>,
    Json(mut item): Json<serde_json::Value>,
) -> Response {
    if !item.is_object() {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "a work item is a JSON object",
        );
    }
    if item.get("id").is_none() {
        item["id"] = json!(app.store.next_id());
    }
    let id = match (
        serde_json::from_value::<WorkItem>(item.clone()),
        q.unchecked,
    ) {
        (Ok(work), _) => work.id,
        (Err(_), true) => item["id"].as_str().unwrap_or_default().to_owned(),
        (Err(e), false) => return error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
    };
    if app.store.enqueue(&id, item) {
        (StatusCode::CREATED, Json(json!({ "id": id }))).into_response()
    } else {
        error(StatusCode::CONFLICT, format!("work item {id:?} exists"))
    }
}

/// `GET /admin/v1/results`: every result so far.
async fn results(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    Json(json!({ "results": app.store.results() }))
}

/// `GET /admin/v1/results/{id}`.
async fn one_result(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    match app.store.result(&id) {
        Some(r) => Json(r).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no result for {id:?} yet")),
    }
}

#[derive(Deserialize)]
struct Outage {
    seconds: u64,
    /// 503 (default) or 429.
    #[serde(default)]
    status: Option<u16>,
}

/// `POST /admin/v1/outage` `{"seconds": N, "status": 503}`: for `seconds`, every connector call
/// is answered with `status` and `Retry-After: 1`.
async fn outage(State(app): State<Arc<App>>, Json(o): Json<Outage>) -> Response {
    let status = match o.status.unwrap_or(503) {
        429 => StatusCode::TOO_MANY_REQUESTS,
        503 => StatusCode::SERVICE_UNAVAILABLE,
        other => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("status {other}: 503 or 429"),
            )
        }
    };
    let until = std::time::Instant::now() + Duration::from_secs(o.seconds);
    *app.outage.lock().unwrap_or_else(|p| p.into_inner()) = Some((until, status));
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
struct Pace {
    millis: u64,
}

/// `POST /admin/v1/pace` `{"millis": N}`: each acknowledgement and result is held N ms before
/// it is answered (0: at once). With it, `most_in_flight` in the stats shows whether a
/// connector's acknowledgements (and its results) overlap.
async fn pace(State(app): State<Arc<App>>, Json(p): Json<Pace>) -> Response {
    if p.millis > 60_000 {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("millis {}: at most 60000", p.millis),
        );
    }
    app.pace_ms.store(p.millis, Ordering::SeqCst);
    StatusCode::NO_CONTENT.into_response()
}

/// `GET /admin/v1/timings`: per answered item, when it was enqueued and how long its result
/// took (`certconn bench --upstream` reads it).
async fn timings(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    Json(app.store.timings())
}

/// `GET /admin/v1/stats`: counters a test or a person checks.
async fn stats(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    let mut stats = app.store.stats();
    stats["connector_connections"] = json!(app
        .connector_peers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .len());
    stats["most_in_flight"] = json!({
        "acks": app.acks.most.load(Ordering::SeqCst),
        "results": app.results.most.load(Ordering::SeqCst),
    });
    Json(stats)
}

/// `POST /connector/v1/heartbeat`: kept as the connector's latest; answered with the version
/// policy.
async fn heartbeat(
    State(app): State<Arc<App>>,
    Json(beat): Json<Heartbeat>,
) -> Json<HeartbeatAnswer> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    app.connectors
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(beat.instance.clone(), (beat, now));
    Json(HeartbeatAnswer {
        version_policy: app.policy.lock().unwrap_or_else(|p| p.into_inner()).clone(),
    })
}

/// `GET /admin/v1/connectors`: each connector's last heartbeat, with `last_seen_ms`.
async fn connectors(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    let connectors = app.connectors.lock().unwrap_or_else(|p| p.into_inner());
    let list: Vec<_> = connectors
        .values()
        .map(|(beat, seen)| json!({ "heartbeat": beat, "last_seen_ms": seen }))
        .collect();
    Json(json!({ "connectors": list }))
}

/// `GET /admin/v1/version-policy`.
async fn get_policy(State(app): State<Arc<App>>) -> Json<VersionPolicy> {
    Json(app.policy.lock().unwrap_or_else(|p| p.into_inner()).clone())
}

/// `PUT /admin/v1/version-policy`: the policy the next heartbeats are answered with.
async fn put_policy(State(app): State<Arc<App>>, Json(policy): Json<VersionPolicy>) -> Response {
    if let Err(e) = policy.check() {
        return error(StatusCode::UNPROCESSABLE_ENTITY, e);
    }
    *app.policy.lock().unwrap_or_else(|p| p.into_inner()) = policy;
    StatusCode::NO_CONTENT.into_response()
}
