//! certconn's reference service: the service side of the connector protocol
//! (`docs/connector-protocol.md`), small enough to read in one sitting, for a vendor to try
//! certconn end to end in minutes and for certconn's own tests and benchmark.
//!
//! - The connector's API under `/connector/v1` (bearer token from `--connector-token-file`):
//!   long-poll for work, acknowledge, upload results, heartbeat (answered with the version
//!   policy from `--version-policy`).
//! - An administrator's JSON API under `/admin/v1` (no token; listen on loopback): enqueue work,
//!   read results and counters, see the connectors' last heartbeats, change the version policy.
//!
//! It keeps everything in memory: it is a reference, not a product. An item handed to a
//! connector and not acknowledged within `--visibility-seconds` is offered again, so that work a
//! dead connector took goes to another.

mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use certconn_connector::{
    Heartbeat, HeartbeatAnswer, ItemResult, VersionPolicy, WorkItem, BASE, MAX_WAIT_SECONDS,
};
use clap::Parser;
use serde::Deserialize;
use serde_json::json;

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
    /// File holding the bearer token connectors present.
    #[arg(long)]
    connector_token_file: PathBuf,
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
    token: String,
    /// Until when the connector's calls are answered with this status (an outage, asked for
    /// through the admin API to see a connector ride one out).
    outage: std::sync::Mutex<Option<(std::time::Instant, StatusCode)>>,
    policy: std::sync::Mutex<VersionPolicy>,
    /// Each connector's last heartbeat and when it came (milliseconds since the epoch), by
    /// instance.
    connectors: std::sync::Mutex<std::collections::BTreeMap<String, (Heartbeat, u128)>>,
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
    let token = std::fs::read_to_string(&args.connector_token_file)
        .map_err(|e| format!("{}: {e}", args.connector_token_file.display()))?
        .trim()
        .to_owned();
    if token.is_empty() {
        return Err(format!(
            "{}: the token is empty",
            args.connector_token_file.display()
        ));
    }
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
        outage: std::sync::Mutex::new(None),
        policy: std::sync::Mutex::new(policy),
        connectors: std::sync::Mutex::default(),
    });
    let connector = Router::new()
        .route("/work", get(poll))
        .route("/work/{id}/ack", post(ack))
        .route("/results", post(result))
        .route("/heartbeat", post(heartbeat))
        .route_layer(middleware::from_fn_with_state(app.clone(), authenticate));
    let admin = Router::new()
        .route("/work", post(enqueue))
        .route("/results", get(results))
        .route("/results/{id}", get(one_result))
        .route("/stats", get(stats))
        .route("/timings", get(timings))
        .route("/outage", post(outage))
        .route("/connectors", get(connectors))
        .route("/version-policy", get(get_policy).put(put_policy));
    let router = Router::new()
        .nest(BASE, connector)
        .nest("/admin/v1", admin)
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("binding {}: {e}", args.listen))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    if let Some(file) = &args.addr_file {
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, bound.to_string())
            .and_then(|()| std::fs::rename(&tmp, file))
            .map_err(|e| format!("{}: {e}", file.display()))?;
    }
    eprintln!("certconn-reference-service: listening on http://{bound}");
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| e.to_string())
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

async fn authenticate(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
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
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if presented != Some(app.token.as_str()) {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong connector token");
    }
    next.run(request).await
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
    if app.store.ack(&id) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        error(StatusCode::NOT_FOUND, format!("no work item {id:?}"))
    }
}

/// `POST /connector/v1/results`: kept once; a repeat is accepted and changes nothing.
async fn result(State(app): State<Arc<App>>, Json(result): Json<ItemResult>) -> Response {
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

/// `GET /admin/v1/timings`: per answered item, when it was enqueued and how long its result
/// took (`certconn bench --upstream` reads it).
async fn timings(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    Json(app.store.timings())
}

/// `GET /admin/v1/stats`: counters a test or a person checks.
async fn stats(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    Json(app.store.stats())
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
