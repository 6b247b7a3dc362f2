//! `/v1/certificates`: the ledger as an administrator reads it — what certconn issued, what it
//! revoked and why, what expires soon — and the one audited change it allows (a revocation's
//! reason).

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use der::Decode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use x509_cert::Certificate;

use super::server::{ApiError, AppState, ErrorBody};
use crate::jobs::model::{JobResult, RevocationReason};
use crate::journal::{JournalError, LedgerEntry, LedgerQuery, ReasonChange};
use crate::report::rfc3339_ms;
use certconn_x509::CertificateFacts;

/// Query of `GET /v1/certificates`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CertificatesQuery {
    /// Only revoked certificates.
    #[serde(default)]
    pub revoked: bool,
    /// Not revoked and expiring within this many days.
    #[param(maximum = 36500)]
    pub expiring_days: Option<u32>,
    /// Only those this backend instance issued.
    pub backend: Option<String>,
    /// At most this many (default 100).
    #[param(minimum = 1, maximum = 10000)]
    pub limit: Option<u32>,
}

/// Body of `POST /v1/certificates/{serial}/reason`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReasonBody {
    pub reason: RevocationReason,
    /// Who asks, for the audit record (the CLI sends the user's name).
    pub changed_by: String,
}

/// A certificate certconn issued, as people read it: its facts, not its bytes.
#[derive(Serialize, ToSchema)]
pub struct CertificateView {
    /// Hex, as OpenSSL prints it.
    pub serial: String,
    pub subject: Option<String>,
    pub issuer: Option<String>,
    pub subject_alt_names: Option<Vec<String>>,
    /// RFC 3339.
    pub not_before: Option<String>,
    /// RFC 3339.
    pub not_after: String,
    /// The backend instance that issued it.
    pub backend: String,
    /// The plugin version that issued it (for a certificate issued before version 7 of the
    /// SQLite journal, 2 of PostgreSQL: while its job's result is kept).
    pub plugin_version: Option<String>,
    /// The job that issued it. The job is removed `journal.keep_jobs_days` after it ended;
    /// the certificate stays.
    pub job: String,
    pub revoked: Option<Revoked>,
}

/// When and why a certificate was revoked.
#[derive(Serialize, ToSchema)]
pub struct Revoked {
    /// RFC 3339.
    pub at: String,
    pub reason: String,
}

/// Answer of `GET /v1/certificates`.
#[derive(Serialize, ToSchema)]
pub struct CertificateList {
    pub certificates: Vec<CertificateView>,
}

/// One audited change of a revocation's reason.
#[derive(Serialize, ToSchema)]
pub struct ReasonChangeView {
    pub serial: String,
    pub backend: String,
    pub from: String,
    pub to: String,
    /// Who changed it.
    pub by: String,
    /// RFC 3339.
    pub at: String,
}

/// Answer of `GET /v1/certificates/reason-changes`.
#[derive(Serialize, ToSchema)]
pub struct ReasonChanges {
    pub changes: Vec<ReasonChangeView>,
}

/// A ledger entry as people read it: the certificate's facts, not its bytes.
async fn view(state: &AppState, e: LedgerEntry) -> CertificateView {
    let cert = Certificate::from_der(&e.certificate_der).ok();
    let facts = cert.as_ref().and_then(|c| CertificateFacts::of(c).ok());
    // The ledger keeps it; a certificate recorded before it did has it only in its job's
    // result, while that is kept.
    let plugin_version = match e.backend_version {
        Some(version) => Some(version),
        None => match state.outbox.peek_result(&e.job_id).await {
            Ok(Some(text)) => serde_json::from_str::<JobResult>(&text)
                .ok()
                .and_then(|r| r.backend_version),
            _ => None,
        },
    };
    CertificateView {
        serial: e.serial,
        subject: cert
            .as_ref()
            .map(|c| crate::pki::dn::format(&c.tbs_certificate.subject)),
        issuer: cert
            .as_ref()
            .map(|c| crate::pki::dn::format(&c.tbs_certificate.issuer)),
        subject_alt_names: facts
            .as_ref()
            .map(|f| f.subject_alt_names.iter().map(|s| s.to_string()).collect()),
        not_before: facts.as_ref().map(|f| {
            rfc3339_ms(
                i64::try_from(f.not_before)
                    .unwrap_or(0)
                    .saturating_mul(1000),
            )
        }),
        not_after: rfc3339_ms(e.not_after.saturating_mul(1000)),
        backend: e.backend,
        plugin_version,
        job: e.job_id,
        revoked: e.revoked.map(|(at, reason)| Revoked {
            at: rfc3339_ms(at),
            reason,
        }),
    }
}

/// The `{serial}` of a path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct SerialPath {
    /// Serial number, hex (colons and a `0x` prefix are accepted).
    #[param(pattern = "^(0x)?[0-9A-Fa-f:]{1,62}$")]
    pub serial: String,
}

/// What certconn issued, soonest expiry first: all, the revoked, or those expiring soon.
#[utoipa::path(
    get,
    path = "/v1/certificates",
    tag = "certificates",
    params(CertificatesQuery),
    responses(
        (status = 200, description = "Certificates", body = CertificateList),
        (status = 400, description = "The query is not what the endpoint takes", body = ErrorBody),
        (status = 503, description = "The journal is unavailable", body = ErrorBody),
    ),
    security(("token" = []))
)]
pub(super) async fn list(
    State(state): State<AppState>,
    query: Result<Query<CertificatesQuery>, QueryRejection>,
) -> Result<Json<CertificateList>, ApiError> {
    let Query(q) = query?;
    let now = crate::journal::now_ms() / 1000;
    let query = LedgerQuery {
        revoked: q.revoked,
        expiring_before: match q.expiring_days {
            Some(d @ 0..=36_500) => Some(now.saturating_add(i64::from(d) * 86_400)),
            Some(d) => {
                return Err(ApiError::bad_parameter(
                    "expiring_days",
                    format!("{d} days is out of range: 0 to 36500"),
                ))
            }
            None => None,
        },
        backend: q.backend,
        issuer_der: None,
        limit: super::server::listing_limit(q.limit)? as usize,
    };
    let mut certificates = Vec::new();
    for e in state.ledger.certificates(&query).await? {
        certificates.push(view(&state, e).await);
    }
    Ok(Json(CertificateList { certificates }))
}

/// The ledger's entry for `serial` as given in the path, or 422/404 saying why there is none.
async fn known(state: &AppState, serial: &str) -> Result<LedgerEntry, ApiError> {
    let serial = crate::jobs::model::normalize_serial(serial)
        .map_err(|e| ApiError::invalid("serial", e.to_string()))?;
    state.ledger.certificate(&serial).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("certconn issued no certificate with serial {serial}"),
        )
    })
}

/// One certificate certconn issued.
#[utoipa::path(
    get,
    path = "/v1/certificates/{serial}",
    tag = "certificates",
    params(SerialPath),
    responses(
        (status = 200, description = "The certificate", body = CertificateView),
        (status = 400, description = "The path is not valid", body = ErrorBody),
        (status = 404, description = "certconn issued no certificate with this serial", body = ErrorBody),
        (status = 422, description = "Not a serial number", body = ErrorBody),
        (status = 503, description = "The journal is unavailable", body = ErrorBody),
    ),
    security(("token" = []))
)]
pub(super) async fn show(
    State(state): State<AppState>,
    path: Result<Path<SerialPath>, PathRejection>,
) -> Result<Json<CertificateView>, ApiError> {
    let Path(SerialPath { serial }) = path?;
    let entry = known(&state, &serial).await?;
    Ok(Json(view(&state, entry).await))
}

/// Changes a revocation's reason (audited; the next CRL and OCSP answers carry it).
#[utoipa::path(
    post,
    path = "/v1/certificates/{serial}/reason",
    tag = "certificates",
    params(SerialPath),
    request_body = ReasonBody,
    responses(
        (status = 200, description = "The certificate, with its new reason", body = CertificateView),
        (status = 400, description = "The body is not what the endpoint takes", body = ErrorBody),
        (status = 404, description = "certconn issued no certificate with this serial", body = ErrorBody),
        (status = 409, description = "Not revoked, already revoked with this reason, or changed meanwhile", body = ErrorBody),
        (status = 422, description = "Not a serial number", body = ErrorBody),
        (status = 503, description = "The journal is unavailable", body = ErrorBody),
    ),
    security(("token" = []))
)]
pub(super) async fn set_reason(
    State(state): State<AppState>,
    path: Result<Path<SerialPath>, PathRejection>,
    body: Result<Json<ReasonBody>, JsonRejection>,
) -> Result<Json<CertificateView>, ApiError> {
    let Path(SerialPath { serial }) = path?;
    let Json(body) = body?;
    let entry = known(&state, &serial).await?;
    let serial = entry.serial.clone();
    let Some((_, old)) = entry.revoked.clone() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("certificate {serial} is not revoked; revoke it with `certconn submit revoke`"),
        ));
    };
    let new = body.reason.as_str().to_owned();
    if old == new {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("certificate {serial} is already revoked with reason {new}"),
        ));
    }
    let change = ReasonChange {
        backend: entry.backend.clone(),
        serial: serial.clone(),
        old_reason: old,
        new_reason: new,
        changed_by: body.changed_by,
        changed_at: crate::journal::now_ms(),
    };
    match state.ledger.change_reason(&change).await {
        Ok(()) => {}
        // Changed by someone else between the read and the write: say so rather than guess.
        Err(JournalError::NotRevoked { .. }) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("the revocation of {serial} changed meanwhile; look again with `certconn certs show {serial}`"),
            ))
        }
        Err(e) => return Err(e.into()),
    }
    tracing::warn!(event_id = 3010, serial = %change.serial, backend = %change.backend, from = %change.old_reason, to = %change.new_reason, by = %change.changed_by, "changed a revocation's reason");
    Ok(Json(view(&state, known(&state, &serial).await?).await))
}

/// The audit record of revocation reasons changed (the newest 1000).
#[utoipa::path(
    get,
    path = "/v1/certificates/reason-changes",
    tag = "certificates",
    responses(
        (status = 200, description = "Changes, newest first", body = ReasonChanges),
        (status = 503, description = "The journal is unavailable", body = ErrorBody),
    ),
    security(("token" = []))
)]
pub(super) async fn reason_changes(
    State(state): State<AppState>,
) -> Result<Json<ReasonChanges>, ApiError> {
    let changes = state
        .ledger
        .reason_changes(1000)
        .await?
        .into_iter()
        .map(|c| ReasonChangeView {
            serial: c.serial,
            backend: c.backend,
            from: c.old_reason,
            to: c.new_reason,
            by: c.changed_by,
            at: rfc3339_ms(c.changed_at),
        })
        .collect();
    Ok(Json(ReasonChanges { changes }))
}
