//! `/v1/certificates`: the ledger as an administrator reads it — what certconn issued, what it
//! revoked and why, what expires soon — and the one audited change it allows (a revocation's
//! reason).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use der::Decode;
use serde::Deserialize;
use serde_json::{json, Value};
use x509_cert::Certificate;

use super::server::{ApiError, AppState};
use crate::jobs::model::{JobResult, RevocationReason};
use crate::journal::{JournalError, LedgerEntry, LedgerQuery, ReasonChange};
use crate::report::rfc3339_ms;
use certconn_x509::CertificateFacts;

/// Query of `GET /v1/certificates`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificatesQuery {
    #[serde(default)]
    pub revoked: bool,
    /// Not revoked and expiring within this many days.
    pub expiring_days: Option<u32>,
    pub backend: Option<String>,
    pub limit: Option<usize>,
}

/// Body of `POST /v1/certificates/{serial}/reason`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReasonBody {
    pub reason: RevocationReason,
    /// Who asks, for the audit record (the CLI sends the user's name).
    pub changed_by: String,
}

/// A ledger entry as people read it: the certificate's facts, not its bytes.
async fn view(state: &AppState, e: LedgerEntry) -> Value {
    let cert = Certificate::from_der(&e.certificate_der).ok();
    let facts = cert.as_ref().and_then(|c| CertificateFacts::of(c).ok());
    let plugin_version = match state.outbox.peek_result(&e.job_id).await {
        Ok(Some(text)) => serde_json::from_str::<JobResult>(&text)
            .ok()
            .and_then(|r| r.backend_version),
        _ => None,
    };
    json!({
        "serial": e.serial,
        "subject": cert.as_ref().map(|c| c.tbs_certificate.subject.to_string()),
        "issuer": cert.as_ref().map(|c| c.tbs_certificate.issuer.to_string()),
        "subject_alt_names": facts.as_ref().map(|f| f.subject_alt_names.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
        "not_before": facts.as_ref().map(|f| rfc3339_ms(i64::try_from(f.not_before).unwrap_or(0).saturating_mul(1000))),
        "not_after": rfc3339_ms(e.not_after.saturating_mul(1000)),
        "backend": e.backend,
        "plugin_version": plugin_version,
        "job": e.job_id,
        "revoked": e.revoked.as_ref().map(|(at, reason)| json!({ "at": rfc3339_ms(*at), "reason": reason })),
    })
}

pub(super) async fn list(
    State(state): State<AppState>,
    Query(q): Query<CertificatesQuery>,
) -> Result<Json<Value>, ApiError> {
    let now = crate::journal::now_ms() / 1000;
    let query = LedgerQuery {
        revoked: q.revoked,
        expiring_before: q
            .expiring_days
            .map(|d| now.saturating_add(i64::from(d) * 86_400)),
        backend: q.backend,
        issuer_der: None,
        limit: q.limit.unwrap_or(100).min(10_000),
    };
    let mut out = Vec::new();
    for e in state.ledger.certificates(&query).await? {
        out.push(view(&state, e).await);
    }
    Ok(Json(json!({ "certificates": out })))
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

pub(super) async fn show(
    State(state): State<AppState>,
    Path(serial): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let entry = known(&state, &serial).await?;
    Ok(Json(view(&state, entry).await))
}

pub(super) async fn set_reason(
    State(state): State<AppState>,
    Path(serial): Path<String>,
    Json(body): Json<ReasonBody>,
) -> Result<Json<Value>, ApiError> {
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

pub(super) async fn reason_changes(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let changes: Vec<Value> = state
        .ledger
        .reason_changes(1000)
        .await?
        .into_iter()
        .map(|c| {
            json!({
                "serial": c.serial, "backend": c.backend, "from": c.old_reason,
                "to": c.new_reason, "by": c.changed_by, "at": rfc3339_ms(c.changed_at),
            })
        })
        .collect();
    Ok(Json(json!({ "changes": changes })))
}
