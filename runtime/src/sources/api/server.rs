//! Routes and handlers of the request API.
//!
//! Every error is JSON `{"error": "...", "field": "..."}` with a status that says whose fault it
//! is; nothing is journaled unless the whole request is valid.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use zeroize::Zeroizing;

use super::certificates;
use crate::crypto::fips::FipsStatus;
use crate::crypto::provider;
use crate::custody::{KeyAlgorithm, KeyStore};
use crate::jobs::model::{
    summarize, ImportJob, ImportPurpose, IssueJob, JobResult, PasswordPadding, ResultSummary,
    RevocationReason, RevokeJob,
};
use crate::jobs::{Intake, SubmitError};
use crate::journal::{
    JobRecord, JobState, JobStore, JournalError, Outbox, RevocationLedger, UnreadableJob,
};
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

    /// A query parameter out of its range: 400, like any query the endpoint cannot read.
    pub(super) fn bad_parameter(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            field: Some(field),
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

/// What every error response carries.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for a person.
    pub error: String,
    /// The request field at fault, when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<&'static str>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.message,
            field: self.field,
        };
        (self.status, Json(body)).into_response()
    }
}

/// A JSON answer that carries a secret (a PFX password, a one-time SCEP challenge). It is written
/// into a buffer sized first ([`crate::secret::json`]) that becomes the body itself and is
/// zeroized when the server drops it: axum's `Json` writes into a buffer that grows, each
/// growth freeing a copy unzeroized.
pub struct SecretJson<T>(pub StatusCode, pub T);

impl<T: Serialize> IntoResponse for SecretJson<T> {
    fn into_response(self) -> Response {
        match crate::secret::json(&self.1) {
            Ok(text) => (
                self.0,
                [(header::CONTENT_TYPE, "application/json")],
                axum::body::Body::from(bytes::Bytes::from_owner(text)),
            )
                .into_response(),
            Err(e) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the answer cannot be written as JSON: {e}"),
            )
            .into_response(),
        }
    }
}

/// A body that is not the JSON the endpoint takes (not JSON, the wrong content type, a field
/// of the wrong type, an unknown field): 400, with serde's words for what and where.
impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, r.body_text())
    }
}

/// A query string the endpoint cannot read: 400, saying which parameter.
impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, r.body_text())
    }
}

/// A path segment that is not valid (bad percent-encoding, not UTF-8): 400.
impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, r.body_text())
    }
}

impl From<JournalError> for ApiError {
    fn from(e: JournalError) -> Self {
        match e {
            JournalError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, e.to_string()),
            JournalError::NotRetryable { .. } => ApiError::new(StatusCode::CONFLICT, e.to_string()),
            // Not the journal's absence: a retry would meet the same record. Its reason is a
            // parser's message or an unknown kind or state, never the request.
            JournalError::Corrupt { .. } => {
                tracing::error!("{e}");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
            }
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
            e @ SubmitError::NotIssued { .. } => ApiError {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                message: format!(
                    "{e}; to revoke one a CA issued outside certconn, name the backend to \
                     revoke it at (the request's `backend`; `certconn submit revoke --backend \
                     NAME`)"
                ),
                field: Some("serial"),
            },
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
    /// When the API's own TLS certificate expires (Unix seconds; 0 without `[api.tls]`), kept
    /// current when certconn renews it.
    pub tls_not_after: Arc<std::sync::atomic::AtomicU64>,
    /// How the API listens (address, TLS and its certificate's source), for the status page.
    pub listener: String,
    /// `api.max_connections`, and whether `api.plain_listen` is served: the status page shows
    /// how full each listener is.
    pub max_connections: usize,
    pub plain_listener: bool,
    /// The upstream service, for status and health.
    pub upstream: Option<Arc<crate::sources::upstream::Upstream>>,
    /// Intune's revocation requests, for status and health.
    pub intune_revocation: Option<Arc<crate::sources::intune::revocation::RevocationPoller>>,
    /// The signed update feed, for `/v1/updates` and health.
    pub updates: Option<Arc<dyn crate::lifecycle::Updates>>,
    pub max_body_bytes: usize,
    /// The instances sharing the journal, for `/v1/fleet`.
    pub fleet: Arc<dyn crate::journal::InstanceRegistry>,
    /// `fleet.heartbeat_seconds`: an instance silent for three is missing.
    pub fleet_heartbeat: std::time::Duration,
    /// True when the journal is shared (PostgreSQL): an operator's plugin decisions are then
    /// recorded for the other instances. A lone instance keeps them in memory, as before.
    pub shared_journal: bool,
    /// This instance's id.
    pub instance: String,
    /// Where the journal is, for health (never a password).
    pub journal_location: String,
    /// The job counts health shows: it answers without a token, and a count reads every job.
    pub health_counts: super::job_counts::JobCounts,
    /// The OpenAPI document of the routes this daemon serves, set once they are all built
    /// (the composition root merges the SCEP and revocation routes in).
    pub openapi: Arc<std::sync::OnceLock<String>>,
}

pub(super) type AppState = Arc<ApiState>;

/// The router and its OpenAPI document, with authentication on everything under `/v1` except
/// `/v1/health` and `/v1/openapi.json`. Each route is registered from its handler's
/// `#[utoipa::path]`, so the document cannot list a route the router lacks, or miss one.
pub fn router(state: ApiState) -> OpenApiRouter {
    let max_body = state.max_body_bytes;
    let state = Arc::new(state);
    let authed = OpenApiRouter::new()
        .routes(routes!(list_jobs))
        .routes(routes!(submit_issue))
        .routes(routes!(submit_revoke))
        .routes(routes!(submit_import))
        .routes(routes!(list_keys))
        .routes(routes!(show_key))
        .routes(routes!(show_job))
        .routes(routes!(retry_job))
        .routes(routes!(job_result))
        .routes(routes!(list_plugins))
        .routes(routes!(plugin_action))
        .routes(routes!(backend_action))
        .routes(routes!(mint_scep_challenge))
        .routes(routes!(reload_config))
        .routes(routes!(certificates::list))
        .routes(routes!(certificates::reason_changes))
        .routes(routes!(certificates::show))
        .routes(routes!(certificates::set_reason))
        .routes(routes!(super::fleet::forget))
        .routes(routes!(super::updates::check))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    let readable = OpenApiRouter::new()
        .routes(routes!(super::metrics::metrics))
        .routes(routes!(super::status::status))
        .routes(routes!(super::fleet::fleet))
        .routes(routes!(super::updates::status))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            authenticate_reader,
        ));
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(openapi_document))
        .routes(routes!(super::status::page))
        .routes(routes!(super::status::script))
        .routes(routes!(super::status::style))
        .routes(routes!(super::status::icon))
        .merge(authed)
        .merge(readable)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// The answer to a method a route does not take (a `DELETE` of a job, a `PUT` on
/// `/v1/health`): the JSON error every other refusal has, where axum's own 405 has an empty
/// body. Installed on the whole router once every route is in it; the `Allow` header stays.
pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{method} is not allowed on {} (the Allow header says what is)",
            uri.path()
        ),
    )
}

/// Documents the answers the server gives for many operations, once, rather than on each
/// handler: the 401 that [`authenticate`] and [`authenticate_reader`] answer for every
/// operation behind a token, and the 408 for a request body that missed its deadline
/// (`deadlines`) on every operation that takes one.
pub fn document_shared_answers(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{Content, Ref, ResponseBuilder};
    let error = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                Content::new(Some(Ref::from_schema_name("ErrorBody"))),
            )
            .build()
    };
    let unauthorized = error("No token, or a token that may not call this");
    let late = error(
        "The body did not arrive within api.body_timeout_seconds of the headers (and a second \
         more for every 500 bytes received); the connection is closed",
    );
    for item in doc.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for op in operations.into_iter().flatten() {
            if op.security.as_ref().is_some_and(|s| !s.is_empty()) {
                op.responses
                    .responses
                    .entry("401".to_owned())
                    .or_insert_with(|| unauthorized.clone().into());
            }
            if op.request_body.is_some() {
                op.responses
                    .responses
                    .entry("408".to_owned())
                    .or_insert_with(|| late.clone().into());
            }
        }
    }
}

/// The OpenAPI document of this daemon's HTTP API: the routes it serves as configured (the
/// SCEP and revocation routes only when those are).
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The document (OpenAPI 3.1)", body = Object))
)]
async fn openapi_document(State(state): State<AppState>) -> Response {
    match state.openapi.get() {
        Some(document) => (
            [(header::CONTENT_TYPE, "application/json")],
            document.clone(),
        )
            .into_response(),
        // Set before the listener accepts anything; kept honest all the same.
        None => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the document is not built yet",
        )
        .into_response(),
    }
}

/// Reloads `[backends]` and `[profiles]` from the config file; 422 with the reason when the
/// new file is refused (the running configuration stays).
#[utoipa::path(
    post,
    path = "/v1/reload",
    tag = "operations",
    responses(
        (status = 200, description = "The new configuration runs; what changed", body = Reloaded),
        (status = 422, description = "The new configuration was refused (the reason); the old one keeps running", body = ErrorBody),
    ),
    security(("token" = []))
)]
async fn reload_config(State(state): State<AppState>) -> Result<Json<Reloaded>, ApiError> {
    match state.reload.reload().await {
        Ok(changed) => Ok(Json(Reloaded { changed })),
        Err(why) => Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, why)),
    }
}

/// Mints a one-time SCEP challenge password. The challenge is in this answer only.
#[utoipa::path(
    post,
    path = "/v1/scep/challenges",
    tag = "scep",
    responses(
        (status = 201, description = "A one-time challenge password; it is in this answer only", body = ScepChallenge),
        (status = 404, description = "The SCEP server is not configured", body = ErrorBody),
        (status = 409, description = "One-time challenges are off", body = ErrorBody),
        (status = 503, description = "The journal is unavailable; nothing was stored", body = ErrorBody),
    ),
    security(("token" = []))
)]
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
    let answer = ScepChallenge {
        challenge: challenge.into(),
        expires_at,
    };
    Ok(SecretJson(StatusCode::CREATED, answer).into_response())
}

/// Answer of `POST /v1/reload`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Reloaded {
    /// Backend instances and profiles added, changed and removed.
    #[schema(value_type = Object)]
    pub changed: serde_json::Value,
}

/// Answer of `POST /v1/scep/challenges`.
#[derive(Serialize, ToSchema)]
pub struct ScepChallenge {
    /// The one-time challenge password, for one SCEP request.
    #[schema(value_type = String)]
    pub challenge: crate::secret::SecretString,
    /// Unix milliseconds.
    pub expires_at: i64,
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

#[utoipa::path(
    get,
    path = "/v1/health",
    tag = "operations",
    responses(
        (status = 200, description = "Whether the daemon is well, without the token", body = Health),
    )
)]
async fn health(State(state): State<AppState>) -> Json<Health> {
    let (counts, journal_error) = match state.health_counts.read(&state.jobs).await {
        Ok(counts) => (counts, None),
        Err(why) => (Vec::new(), Some(why)),
    };
    let registry = &state.registry;
    let down = registry.not_serving();
    Json(Health {
        status: if down.is_empty() && journal_error.is_none() {
            "ok"
        } else {
            "degraded"
        },
        journal: JournalHealth {
            location: state.journal_location.clone(),
            reachable: journal_error.is_none(),
            error: journal_error,
        },
        version: crate::version::version(),
        backends: registry.instances().len(),
        backends_not_serving: down,
        fips: state.fips.clone(),
        jobs: counts.into_iter().collect(),
        revocation: state.revocation.as_ref().map(|p| p.status()),
        scep_ra: state.scep.as_ref().map(|ra| ra.status()),
        upstream: match &state.upstream {
            Some(u) => Some(u.status_with_backlog().await),
            None => None,
        },
        intune_revocation: match &state.intune_revocation {
            Some(p) => Some(p.status().await),
            None => None,
        },
        updates: state.updates.as_ref().map(|u| u.summary()),
        connections: super::connections::listener_connections(
            state.max_connections,
            state.plain_listener,
        ),
    })
}

/// The journal, as `/v1/health` sees it.
#[derive(Serialize, ToSchema)]
pub struct JournalHealth {
    /// `sqlite:PATH` or `postgres://user@host:port/database` (never a password).
    pub location: String,
    /// False while the journal cannot be read: work stalls (nothing is lost) until it is back.
    pub reachable: bool,
    /// Why it cannot be read.
    pub error: Option<String>,
}

/// Answer of `GET /v1/health`.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok`, or `degraded` when a backend instance is not serving or the journal is
    /// unreachable.
    pub status: &'static str,
    pub journal: JournalHealth,
    pub version: &'static str,
    /// Backend instances configured.
    pub backends: usize,
    /// `NAME: state` of each instance that is not serving.
    pub backends_not_serving: Vec<String>,
    pub fips: FipsStatus,
    /// Jobs in the journal by state.
    pub jobs: std::collections::BTreeMap<JobState, i64>,
    /// The CRLs and OCSP certconn publishes, when configured.
    pub revocation: Option<Vec<crate::revocation::CaStatus>>,
    /// The SCEP RA's certificates, when the SCEP server is configured.
    #[schema(value_type = Option<Object>)]
    pub scep_ra: Option<serde_json::Value>,
    /// The upstream service, when configured.
    pub upstream: Option<crate::sources::upstream::UpstreamStatus>,
    /// Intune's revocation requests, when polled.
    pub intune_revocation: Option<crate::sources::intune::revocation::IntuneRevocationStatus>,
    /// The signed update feed, when configured: `feed` (`verified`, `unreachable`, `not yet
    /// read`), its `error`, the worst lifecycle `stage`, and each version's stage and summary.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub updates: Option<serde_json::Value>,
    /// How many connections each listener holds against `api.max_connections`.
    pub connections: Vec<super::connections::ListenerConnections>,
}

/// Body of `POST /v1/jobs/issue`.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IssueBody {
    /// Makes the submission idempotent: the same key returns the same job.
    pub idempotency_key: Option<String>,
    pub profile: String,
    #[serde(default)]
    pub subject: String,
    /// Subject alternative names, `kind:value`: `dns:`, `email:`, `upn:`, `uri:`, `ip:`, each in
    /// the syntax RFC 5280 requires (a DNS name of letters, digits and hyphens, `*` only as its
    /// leftmost label; a mailbox `local@domain`; an absolute URI; `user@suffix`); a name that
    /// is not is refused with 400.
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
#[derive(Debug, Deserialize, Serialize, ToSchema)]
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
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeBody {
    pub idempotency_key: Option<String>,
    pub serial: String,
    #[serde(default)]
    pub reason: RevocationReason,
    pub backend: Option<String>,
}

/// How many entries a listing returns: `limit` (1 to 10000), 100 by default.
pub(super) fn listing_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    match limit {
        None => Ok(100),
        Some(n @ 1..=10_000) => Ok(n),
        Some(n) => Err(ApiError::bad_parameter(
            "limit",
            format!("{n} is out of range: 1 to 10000"),
        )),
    }
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

/// Answer of the three `POST /v1/jobs/KIND`.
#[derive(Serialize, ToSchema)]
pub struct Submitted {
    pub job: JobRecord,
    /// False when the idempotency key named a job submitted before.
    pub created: bool,
}

fn accepted((job, created): (JobRecord, bool)) -> Response {
    let status = if created {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    let answer = Submitted {
        job: summarize(job),
        created,
    };
    (status, Json(answer)).into_response()
}

#[utoipa::path(
    post,
    path = "/v1/jobs/issue",
    tag = "jobs",
    request_body = IssueBody,
    responses(
        (status = 202, description = "Journaled: a new job", body = Submitted),
        (status = 200, description = "A job with this idempotency key was already submitted; it is returned", body = Submitted),
        (status = 400, description = "The body or query is not what the endpoint takes", body = ErrorBody),
        (status = 422, description = "A field is not acceptable (`field` names it)", body = ErrorBody),
        (status = 503, description = "The journal is unavailable; nothing was stored", body = ErrorBody),
    ),
    security(("token" = []))
)]
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

#[utoipa::path(
    post,
    path = "/v1/jobs/import",
    tag = "jobs",
    request_body = ImportBody,
    responses(
        (status = 202, description = "Journaled: a new job", body = Submitted),
        (status = 200, description = "A job with this idempotency key was already submitted; it is returned", body = Submitted),
        (status = 400, description = "The body or query is not what the endpoint takes", body = ErrorBody),
        (status = 422, description = "A field is not acceptable (`field` names it)", body = ErrorBody),
        (status = 503, description = "The journal is unavailable; nothing was stored", body = ErrorBody),
    ),
    security(("token" = []))
)]
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

/// Answer of `GET /v1/keys/{name}`.
#[derive(Serialize, ToSchema)]
pub struct PublicKeyView {
    pub name: String,
    /// The key's type, as custody describes it.
    pub kind: String,
    /// SubjectPublicKeyInfo, PEM.
    pub public_key_pem: String,
}

/// Answer of `GET /v1/keys`.
#[derive(Serialize, ToSchema)]
pub struct KeyList {
    /// Every key in custody, by name.
    pub keys: Vec<crate::custody::KeySummary>,
}

/// The keys in custody — type, store, certificates and public-key fingerprint, nothing
/// secret — as `certconn keys list` shows them while the daemon holds the store.
#[utoipa::path(
    get,
    path = "/v1/keys",
    tag = "keys",
    responses(
        (status = 200, description = "Every key in custody", body = KeyList),
    ),
    security(("token" = []))
)]
async fn list_keys(State(state): State<AppState>) -> Json<KeyList> {
    Json(KeyList {
        keys: state.keys.list(),
    })
}

/// A custody key's public half, so that admins can encrypt PFX passwords to it.
#[utoipa::path(
    get,
    path = "/v1/keys/{name}",
    tag = "keys",
    params(("name" = String, Path, description = "The custody key's name ([keys.NAME])")),
    responses(
        (status = 200, description = "The key's public half", body = PublicKeyView),
        (status = 400, description = "The body or query is not what the endpoint takes", body = ErrorBody),
        (status = 404, description = "No custody key has this name", body = ErrorBody),
    ),
    security(("token" = []))
)]
async fn show_key(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<PublicKeyView>, ApiError> {
    let Path(name) = path?;
    let key = state
        .keys
        .get(&name)
        .map_err(|e| ApiError::new(StatusCode::NOT_FOUND, e.to_string()))?;
    Ok(Json(PublicKeyView {
        kind: key.key.kind().describe().to_string(),
        public_key_pem: crate::pki::pem::encode("PUBLIC KEY", key.key.public_key_der()),
        name,
    }))
}

#[utoipa::path(
    post,
    path = "/v1/jobs/revoke",
    tag = "jobs",
    request_body = RevokeBody,
    responses(
        (status = 202, description = "Journaled: a new job", body = Submitted),
        (status = 200, description = "A job with this idempotency key was already submitted; it is returned", body = Submitted),
        (status = 400, description = "The body or query is not what the endpoint takes", body = ErrorBody),
        (status = 409, description = "The certificate is already revoked", body = ErrorBody),
        (status = 422, description = "A field is not acceptable (`field` names it)", body = ErrorBody),
        (status = 503, description = "The journal is unavailable; nothing was stored", body = ErrorBody),
    ),
    security(("token" = []))
)]
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

/// Query of `GET /v1/jobs`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only jobs in this state.
    state: Option<JobState>,
    /// At most this many (default 100).
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<u32>,
}

/// Answer of `GET /v1/jobs`.
#[derive(Serialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<JobRecord>,
    /// Listed jobs whose record the journal cannot read (a request that is not JSON, a kind
    /// or state this version does not know): what can be read of each, and why not the rest.
    pub unreadable: Vec<UnreadableJob>,
}

/// Answer of `GET /v1/jobs/{id}`.
#[derive(Serialize, ToSchema)]
pub struct JobView {
    #[serde(flatten)]
    pub job: JobRecord,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<ResultSummary>,
}

/// Answer of `GET /v1/jobs/{id}/result`.
#[derive(Serialize, ToSchema)]
pub struct FinishedJob {
    pub job: JobRecord,
    pub result: JobResult,
}

/// Jobs, newest first, optionally in one state.
#[utoipa::path(
    get,
    path = "/v1/jobs",
    tag = "jobs",
    params(ListQuery),
    responses(
        (status = 200, description = "Jobs, newest first", body = JobList),
        (status = 400, description = "The body or query is not what the endpoint takes", body = ErrorBody),
        (status = 503, description = "The journal is unavailable; nothing was stored", body = ErrorBody),
    ),
    security(("token" = []))
)]
async fn list_jobs(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<JobList>, ApiError> {
    let Query(q) = query?;
    let listing = state.jobs.list(q.state, listing_limit(q.limit)?).await?;
    Ok(Json(JobList {
        jobs: listing.jobs.into_iter().map(summarize).collect(),
        unreadable: listing.unreadable,
    }))
}

/// One job, and a summary of its result when it has one (nothing is handed out).
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}",
    tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job, and a summary of its result when it has one", body = JobView),
        (status = 400, description = "The body or query is not what the endpoint takes", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 500, description = "The journal holds the job but cannot read its record; the error says why", body = ErrorBody),
        (status = 503, description = "The journal is unavailable; nothing was stored", body = ErrorBody),
    ),
    security(("token" = []))
)]
async fn show_job(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<JobView>, ApiError> {
    let Path(id) = path?;
    let job = summarize(state.jobs.get(&id).await?);
    let result = state
        .outbox
        .peek_result(&id)
        .await?
        .and_then(|text| serde_json::from_str::<JobResult>(&text).ok())
        .map(|r| r.summary());
    Ok(Json(JobView { job, result }))
}

#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/retry",
    tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job, queued again", body = JobRecord),
        (status = 400, description = "The body or query is not what the endpoint takes", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 409, description = "The job is not failed or dead, or it is an import whose secrets were erased", body = ErrorBody),
        (status = 500, description = "The journal holds the job but cannot read its record; the error says why", body = ErrorBody),
        (status = 503, description = "The journal is unavailable; nothing was stored", body = ErrorBody),
    ),
    security(("token" = []))
)]
async fn retry_job(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<JobRecord>, ApiError> {
    let Path(id) = path?;
    let job = state.intake.retry(&id).await?;
    Ok(Json(summarize(job)))
}

#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/result",
    tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job and its result; a PFX password not sealed for a device is in the first answer only", body = FinishedJob),
        (status = 400, description = "The body or query is not what the endpoint takes", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 409, description = "The job has not succeeded", body = ErrorBody),
        (status = 410, description = "The result was removed: results are kept `journal.keep_results_days` after the job ended", body = ErrorBody),
        (status = 500, description = "The journal holds the job but cannot read its record; the error says why", body = ErrorBody),
        (status = 503, description = "The journal is unavailable; nothing was stored", body = ErrorBody),
    ),
    security(("token" = []))
)]
async fn job_result(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<SecretJson<FinishedJob>, ApiError> {
    let Path(id) = path?;
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
        .ok_or_else(|| {
            // Every job that succeeded stored a result; only the retention sweep removes one.
            ApiError::new(
                StatusCode::GONE,
                format!("the result of job {id} was removed: results are kept journal.keep_results_days days after the job ended"),
            )
        })?;
    let result = JobResult::from_outbox(&id, stored)?;
    Ok(SecretJson(
        StatusCode::OK,
        FinishedJob {
            job: summarize(job),
            result,
        },
    ))
}

/// Plugin files, backend instances, the versions they run and their health.
#[utoipa::path(
    get,
    path = "/v1/plugins",
    tag = "plugins",
    responses(
        (status = 200, description = "Plugin files and backend instances: versions, state, breaker, health checked now", body = Object),
    ),
    security(("token" = []))
)]
async fn list_plugins(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(super::status::backends_with_health(&state.registry).await)
}

/// What `POST /v1/backends/{name}/{action}` does.
#[derive(Clone, Copy, Debug, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackendAction {
    /// Take no new jobs; finish those in flight.
    Drain,
    /// Take jobs again.
    Undrain,
}

/// Answer of `POST /v1/backends/{name}/{action}`.
#[derive(Serialize, ToSchema)]
pub struct Drained {
    pub backend: String,
    pub drained: bool,
    /// False when the backend was already so.
    pub changed: bool,
}

/// Drains a backend instance, or takes it back into service.
#[utoipa::path(
    post,
    path = "/v1/backends/{name}/{action}",
    tag = "plugins",
    params(("name" = String, Path, description = "Backend instance"), ("action" = inline(BackendAction), Path)),
    responses(
        (status = 200, description = "Done (or nothing to do)", body = Drained),
        (status = 400, description = "The body or query is not what the endpoint takes", body = ErrorBody),
        (status = 404, description = "No backend instance has this name", body = ErrorBody),
        (status = 409, description = "The backend cannot be drained now", body = ErrorBody),
    ),
    security(("token" = []))
)]
async fn backend_action(
    State(state): State<AppState>,
    path: Result<Path<(String, BackendAction)>, PathRejection>,
) -> Result<Json<Drained>, ApiError> {
    let Path((name, action)) = path?;
    let drained = matches!(action, BackendAction::Drain);
    let changed = state.registry.drain(&name, drained).map_err(|e| match e {
        e @ RegistryError::UnknownBackend { .. } => {
            ApiError::new(StatusCode::NOT_FOUND, e.to_string())
        }
        e => ApiError::new(StatusCode::CONFLICT, e.to_string()),
    })?;
    record_for_fleet(&state, &name, if drained { "drain" } else { "undrain" }).await;
    Ok(Json(Drained {
        backend: name,
        drained,
        changed,
    }))
}

/// What `POST /v1/plugins/{name}/{action}` does.
#[derive(Clone, Copy, Debug, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PluginAction {
    /// Load the plugin file now, even one that was unloaded.
    Load,
    /// Load it again if it changed on disk.
    Reload,
    /// Stop serving it; its backends stop taking jobs.
    Unload,
    /// Go back to the version that served before the last load.
    Rollback,
}

/// Loads, reloads, unloads or rolls back a plugin file.
#[utoipa::path(
    post,
    path = "/v1/plugins/{name}/{action}",
    tag = "plugins",
    params(("name" = String, Path, description = "Plugin file name"), ("action" = inline(PluginAction), Path)),
    responses(
        (status = 200, description = "What the action did", body = Object),
        (status = 400, description = "The body or query is not what the endpoint takes", body = ErrorBody),
        (status = 404, description = "No plugin file has this name", body = ErrorBody),
        (status = 409, description = "The action was refused (the reason)", body = ErrorBody),
    ),
    security(("token" = []))
)]
async fn plugin_action(
    State(state): State<AppState>,
    path: Result<Path<(String, PluginAction)>, PathRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Path((name, action)) = path?;
    let registry = &state.registry;
    let conflict = |e: RegistryError| match e {
        e @ RegistryError::UnknownPlugin { .. } => {
            ApiError::new(StatusCode::NOT_FOUND, e.to_string())
        }
        e => ApiError::new(StatusCode::CONFLICT, crate::report::chain(&e)),
    };
    let answer = match action {
        PluginAction::Load => {
            json!({ "report": registry.reload(&name, true).await.map_err(conflict)? })
        }
        PluginAction::Reload => {
            json!({ "report": registry.reload(&name, false).await.map_err(conflict)? })
        }
        PluginAction::Unload => {
            json!({ "unloaded": registry.unload(&name).await.map_err(conflict)? })
        }
        PluginAction::Rollback => {
            let done = registry.rollback(&name).await.map_err(conflict)?;
            json!({ "rolled_back": done.into_iter().map(|(b, from, to)| json!({"backend": b, "from": from, "to": to})).collect::<Vec<_>>() })
        }
    };
    // A reload follows this instance's own files; the others are the operator's decision for
    // the whole fleet.
    let decision = match action {
        PluginAction::Load => Some("load"),
        PluginAction::Unload => Some("unload"),
        PluginAction::Rollback => Some("rollback"),
        PluginAction::Reload => None,
    };
    if let Some(decision) = decision {
        record_for_fleet(&state, &name, decision).await;
    }
    Ok(Json(answer))
}

/// Records an operator's decision, taken here, for the other instances sharing the journal
/// (they follow it at their next heartbeat). It took effect here whatever happens to the
/// record; a failure to record it is logged.
async fn record_for_fleet(state: &ApiState, subject: &str, action: &str) {
    if !state.shared_journal {
        return;
    }
    if let Err(e) = state
        .fleet
        .record_decision(subject, action, &state.instance)
        .await
    {
        tracing::warn!(
            %subject,
            %action,
            "the decision took effect here but could not be recorded for the other instances: {}",
            crate::report::chain(&e)
        );
    }
}
