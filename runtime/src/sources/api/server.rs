//! Routes and handlers of the request API.
//!
//! Every error is JSON `{"error": "...", "field": "..."}` with a status that says whose fault it
//! is; nothing is journaled unless the whole request is valid.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use zeroize::Zeroizing;

use super::certificates;
use crate::crypto::fips::FipsStatus;
use crate::crypto::provider;
use crate::custody::{KeyAlgorithm, KeyStore};
use crate::jobs::model::{
    summarize, ImportJob, ImportPurpose, IssueJob, JobResult, PasswordPadding, RevocationReason,
    RevokeJob,
};
use crate::jobs::{Intake, SubmitError};
use crate::journal::{JobRecord, JobState, JobStore, JournalError, Outbox, RevocationLedger};
use crate::plugins::registry::RegistryError;
use crate::plugins::Registry;
use crate::revocation::Publisher;
use crate::sources::scep::Ra;

/// An API error response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    field: Option<&'static str>,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            field: None,
        }
    }

    /// A request field that is not acceptable.
    pub(super) fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: message.into(),
            field: Some(field),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = match self.field {
            Some(f) => json!({ "error": self.message, "field": f }),
            None => json!({ "error": self.message }),
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, r.body_text())
    }
}

impl From<JournalError> for ApiError {
    fn from(e: JournalError) -> Self {
        match e {
            JournalError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, e.to_string()),
            JournalError::NotRetryable { .. } => ApiError::new(StatusCode::CONFLICT, e.to_string()),
            other => {
                tracing::error!("{}", crate::report::chain(&other));
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the journal is unavailable; the request was not stored",
                )
            }
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::Invalid(i) => ApiError {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                message: i.message,
                field: Some(i.field),
            },
            SubmitError::Journal(j) => j.into(),
            e @ (SubmitError::Erased { .. } | SubmitError::AlreadyRevoked { .. }) => {
                ApiError::new(StatusCode::CONFLICT, e.to_string())
            }
        }
    }
}

/// A configuration reload as the API offers it (`POST /v1/reload`); the composition root
/// provides it.
#[async_trait::async_trait]
pub trait ConfigReload: Send + Sync {
    /// What changed, or why nothing did (the whole chain, for the administrator).
    async fn reload(&self) -> Result<serde_json::Value, String>;
}

/// What the request API serves from.
pub struct ApiState {
    pub intake: Arc<Intake>,
    pub jobs: Arc<dyn JobStore>,
    pub outbox: Arc<dyn Outbox>,
    pub registry: Arc<Registry>,
    pub keys: Arc<KeyStore>,
    /// Probed once at start: the self-test is not free, and the module cannot change under us.
    pub fips: FipsStatus,
    /// The SCEP server's RA, for minting one-time challenges.
    pub scep: Option<Arc<Ra>>,
    /// The ledger, for `/v1/certificates`.
    pub ledger: Arc<dyn RevocationLedger>,
    /// The CRL and OCSP publisher, for health.
    pub revocation: Option<Arc<Publisher>>,
    pub reload: Arc<dyn ConfigReload>,
    pub token: Zeroizing<String>,
    /// Reads `/metrics` and `/v1/status` and nothing else: for a scraper or the status page,
    /// which must not hold a token that issues and revokes.
    pub read_token: Zeroizing<String>,
    /// The configured custody keys: `/metrics` shows when their certificates expire.
    pub watched_keys: Vec<String>,
    /// When the API's own TLS certificate expires (Unix seconds), with `[api.tls]`.
    pub tls_not_after: Option<u64>,
    pub max_body_bytes: usize,
}

pub(super) type AppState = Arc<ApiState>;

/// The router, with authentication on everything under `/v1` except `/v1/health`.
pub fn router(state: ApiState) -> Router {
    let max_body = state.max_body_bytes;
    let state = Arc::new(state);
    let authed = Router::new()
        .route("/v1/jobs", get(list_jobs))
        .route("/v1/jobs/issue", post(submit_issue))
        .route("/v1/jobs/revoke", post(submit_revoke))
        .route("/v1/jobs/import", post(submit_import))
        .route("/v1/keys/{name}", get(show_key))
        .route("/v1/jobs/{id}", get(show_job))
        .route("/v1/jobs/{id}/retry", post(retry_job))
        .route("/v1/jobs/{id}/result", get(job_result))
        .route("/v1/plugins", get(list_plugins))
        .route("/v1/plugins/{name}/{action}", post(plugin_action))
        .route("/v1/backends/{name}/{action}", post(backend_action))
        .route("/v1/scep/challenges", post(mint_scep_challenge))
        .route("/v1/reload", post(reload_config))
        .route("/v1/certificates", get(certificates::list))
        .route(
            "/v1/certificates/reason-changes",
            get(certificates::reason_changes),
        )
        .route("/v1/certificates/{serial}", get(certificates::show))
        .route(
            "/v1/certificates/{serial}/reason",
            post(certificates::set_reason),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    let readable = Router::new()
        .route("/metrics", get(super::metrics::metrics))
        .route("/v1/status", get(super::status::status))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            authenticate_reader,
        ));
    Router::new()
        .route("/v1/health", get(health))
        .route("/status", get(super::status::page))
        .route("/status/page.js", get(super::status::script))
        .route("/status/page.css", get(super::status::style))
        .route("/status/icon.svg", get(super::status::icon))
        .merge(authed)
        .merge(readable)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// Reloads `[backends]` and `[profiles]` from the config file; 422 with the reason when the
/// new file is refused (the running configuration stays).
async fn reload_config(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    match state.reload.reload().await {
        Ok(changed) => Ok(Json(json!({ "changed": changed }))),
        Err(why) => Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, why)),
    }
}

/// Mints a one-time SCEP challenge password. The challenge is in this answer only.
async fn mint_scep_challenge(State(state): State<AppState>) -> Result<Response, ApiError> {
    let ra = state.scep.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "the SCEP server is not configured ([scep] in the config)",
        )
    })?;
    let (challenge, expires_at) = ra
        .mint_challenge()
        .await
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "one-time challenges are off (scep.one_time_challenges = false)",
            )
        })?
        .map_err(ApiError::from)?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "challenge": challenge.as_str(), "expires_at": expires_at })),
    )
        .into_response())
}

/// The bearer token, or a client certificate the TLS handshake verified against
/// `api.tls.client_ca` (only asked for when that is set).
async fn authenticate(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if by_certificate(&request) || presents(&request, &state.token) {
        return Ok(next.run(request).await);
    }
    Err(ApiError::new(
        StatusCode::UNAUTHORIZED,
        "missing or wrong bearer token",
    ))
}

/// [`authenticate`], or the read-only token.
async fn authenticate_reader(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if by_certificate(&request)
        || presents(&request, &state.read_token)
        || presents(&request, &state.token)
    {
        return Ok(next.run(request).await);
    }
    Err(ApiError::new(
        StatusCode::UNAUTHORIZED,
        "missing or wrong bearer token (the API token or the read-only token)",
    ))
}

/// True when the TLS handshake verified a client certificate.
fn by_certificate(request: &Request) -> bool {
    let subject = request
        .extensions()
        .get::<axum::extract::ConnectInfo<super::tls::Peer>>()
        .and_then(|peer| peer.0.client_certificate.as_ref());
    if let Some(subject) = subject {
        tracing::debug!(client = %subject, "API request authenticated by client certificate");
    }
    subject.is_some()
}

/// True when the request's bearer token is `token` (compared in constant time).
fn presents(request: &Request, token: &str) -> bool {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    provider::constant_time_eq(presented.as_bytes(), token.as_bytes())
}

async fn health(State(state): State<AppState>) -> Json<serde_json::Value> {
    let counts = state.jobs.counts().await.unwrap_or_default();
    let registry = &state.registry;
    let down: Vec<String> = registry
        .instances()
        .iter()
        .map(|i| (i, i.status().state))
        .filter(|(_, state)| *state != "serving")
        .map(|(i, state)| format!("{}: {state}", i.name))
        .collect();
    Json(json!({
        "status": if down.is_empty() { "ok" } else { "degraded" },
        "version": env!("CARGO_PKG_VERSION"),
        "backends": registry.instances().len(),
        "backends_not_serving": down,
        "fips": &state.fips,
        "jobs": counts.into_iter().map(|(s, n)| (s.as_str(), n)).collect::<std::collections::BTreeMap<_, _>>(),
        "revocation": state.revocation.as_ref().map(|p| p.status()),
        "scep_ra": state.scep.as_ref().map(|ra| ra.status()),
    }))
}

/// Body of `POST /v1/jobs/issue`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IssueBody {
    /// Makes the submission idempotent: the same key returns the same job.
    pub idempotency_key: Option<String>,
    pub profile: String,
    #[serde(default)]
    pub subject: String,
    #[serde(default)]
    pub sans: Vec<String>,
    pub key: Option<KeyAlgorithm>,
    /// PEM certificate of the device the PFX password is sealed for.
    pub recipient: Option<String>,
    /// PEM CSR from a device holding its own key.
    pub csr: Option<String>,
    pub validity_days: Option<u32>,
    /// Serial (hex) of a certificate this request renews, whose key certconn kept.
    pub renews: Option<String>,
}

/// Body of `POST /v1/jobs/import`: deliver an imported PFX to a device.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ImportBody {
    pub idempotency_key: Option<String>,
    /// Default: `import`.
    #[serde(default = "default_import_profile")]
    pub profile: String,
    /// The PFX file, base64.
    pub pfx: String,
    /// The PFX password encrypted to `key_name` (`certconn pfx encrypt-password`), base64.
    pub encrypted_password: String,
    pub key_name: String,
    /// `oaepSha512` (default), `oaepSha384`, `oaepSha256`.
    #[serde(default)]
    pub padding_scheme: PasswordPadding,
    pub user_principal_name: String,
    pub intended_purpose: ImportPurpose,
    /// PEM certificate of the device the PFX password is sealed for.
    pub recipient: String,
}

/// The profile an import names when it names none.
pub const DEFAULT_IMPORT_PROFILE: &str = "import";

fn default_import_profile() -> String {
    DEFAULT_IMPORT_PROFILE.into()
}

/// Body of `POST /v1/jobs/revoke`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeBody {
    pub idempotency_key: Option<String>,
    pub serial: String,
    #[serde(default)]
    pub reason: RevocationReason,
    pub backend: Option<String>,
}

fn idempotency_key(given: Option<String>) -> Result<String, ApiError> {
    match given {
        Some(k) if k.is_empty() || k.len() > 200 => Err(ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: "must be 1 to 200 characters".into(),
            field: Some("idempotency_key"),
        }),
        Some(k) => Ok(k),
        None => provider::random_vec(16)
            .map(hex::encode)
            .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
    }
}

fn accepted((job, created): (JobRecord, bool)) -> Response {
    let status = if created {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    (
        status,
        Json(json!({ "job": summarize(job), "created": created })),
    )
        .into_response()
}

async fn submit_issue(
    State(state): State<AppState>,
    body: Result<Json<IssueBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(b) = body?;
    let key = idempotency_key(b.idempotency_key)?;
    let job = IssueJob {
        profile: b.profile,
        subject: b.subject,
        sans: b.sans,
        key: b.key,
        recipient_pem: b.recipient,
        csr_pem: b.csr,
        validity_days: b.validity_days,
        renews: b.renews,
    };
    Ok(accepted(
        state.intake.submit_issue("api", &key, &job).await?,
    ))
}

async fn submit_import(
    State(state): State<AppState>,
    body: Result<Json<ImportBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(b) = body?;
    let key = idempotency_key(b.idempotency_key)?;
    let job = ImportJob {
        profile: b.profile,
        pfx_base64: b.pfx,
        encrypted_password_base64: b.encrypted_password,
        key_name: b.key_name,
        padding_scheme: b.padding_scheme,
        user_principal_name: b.user_principal_name,
        intended_purpose: b.intended_purpose,
        recipient_pem: b.recipient,
    };
    Ok(accepted(
        state.intake.submit_import("api", &key, &job).await?,
    ))
}

/// A custody key's public half, so that admins can encrypt PFX passwords to it.
async fn show_key(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let key = state
        .keys
        .get(&name)
        .map_err(|e| ApiError::new(StatusCode::NOT_FOUND, e.to_string()))?;
    Ok(Json(json!({
        "name": name,
        "kind": key.key.kind().describe(),
        "public_key_pem": crate::pki::pem::encode("PUBLIC KEY", key.key.public_key_der()),
    })))
}

async fn submit_revoke(
    State(state): State<AppState>,
    body: Result<Json<RevokeBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(b) = body?;
    let key = idempotency_key(b.idempotency_key)?;
    let job = RevokeJob {
        serial: b.serial,
        reason: b.reason,
        backend: b.backend,
    };
    Ok(accepted(
        state.intake.submit_revoke("api", &key, &job).await?,
    ))
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    state: Option<String>,
    limit: Option<u32>,
}

async fn list_jobs(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let filter = match q.state.as_deref() {
        None => None,
        Some(s) => Some(JobState::parse(s).ok_or_else(|| ApiError {
            status: StatusCode::BAD_REQUEST,
            message: format!(
                "unknown state {s:?}; expected queued, running, pending, succeeded, failed or dead"
            ),
            field: Some("state"),
        })?),
    };
    let jobs = state
        .jobs
        .list(filter, q.limit.unwrap_or(100).min(10_000))
        .await?;
    let jobs: Vec<JobRecord> = jobs.into_iter().map(summarize).collect();
    Ok(Json(json!({ "jobs": jobs })))
}

/// One job, and a summary of its result when it has one (nothing is handed out).
async fn show_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let job = summarize(state.jobs.get(&id).await?);
    let mut value = serde_json::to_value(&job).unwrap_or_else(|_| json!({}));
    if let Some(text) = state.outbox.peek_result(&id).await? {
        if let Ok(result) = serde_json::from_str::<JobResult>(&text) {
            value["result"] = result.summary();
        }
    }
    Ok(Json(value))
}

async fn retry_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<JobRecord>, ApiError> {
    let job = state.intake.retry(&id).await?;
    Ok(Json(summarize(job)))
}

async fn job_result(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let job = state.jobs.get(&id).await?;
    if job.state != JobState::Succeeded {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("job {id} is {}; it has no result", job.state.as_str()),
        ));
    }
    let stored = state
        .outbox
        .take_result(&id)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "the job has no stored result"))?;
    let result = JobResult::from_outbox(&id, stored)?;
    Ok(Json(json!({ "job": summarize(job), "result": result })))
}

/// Plugin files, backend instances, the versions they run and their health.
async fn list_plugins(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(super::status::backends_with_health(&state.registry).await)
}

/// `POST /v1/backends/NAME/{drain,undrain}`.
async fn backend_action(
    State(state): State<AppState>,
    Path((name, action)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let drained = match action.as_str() {
        "drain" => true,
        "undrain" => false,
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no backend action {other:?}: drain or undrain"),
            ))
        }
    };
    let changed = state.registry.drain(&name, drained).map_err(|e| match e {
        e @ RegistryError::UnknownBackend { .. } => {
            ApiError::new(StatusCode::NOT_FOUND, e.to_string())
        }
        e => ApiError::new(StatusCode::CONFLICT, e.to_string()),
    })?;
    Ok(Json(
        json!({ "backend": name, "drained": drained, "changed": changed }),
    ))
}

/// `POST /v1/plugins/NAME/{load,reload,unload,rollback}`.
async fn plugin_action(
    State(state): State<AppState>,
    Path((name, action)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let registry = &state.registry;
    let conflict = |e: RegistryError| match e {
        e @ RegistryError::UnknownPlugin { .. } => {
            ApiError::new(StatusCode::NOT_FOUND, e.to_string())
        }
        e => ApiError::new(StatusCode::CONFLICT, crate::report::chain(&e)),
    };
    let answer = match action.as_str() {
        "load" => json!({ "report": registry.reload(&name, true).await.map_err(conflict)? }),
        "reload" => json!({ "report": registry.reload(&name, false).await.map_err(conflict)? }),
        "unload" => json!({ "unloaded": registry.unload(&name).await.map_err(conflict)? }),
        "rollback" => {
            let done = registry.rollback(&name).await.map_err(conflict)?;
            json!({ "rolled_back": done.into_iter().map(|(b, from, to)| json!({"backend": b, "from": from, "to": to})).collect::<Vec<_>>() })
        }
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no plugin action {other:?}: load, reload, unload or rollback"),
            ))
        }
    };
    Ok(Json(answer))
}
