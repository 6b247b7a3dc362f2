//! The status page: `GET /status` (with its script and style sheet, embedded in the binary —
//! nothing is fetched from elsewhere) and the one endpoint it reads, `GET /v1/status`, which
//! the read-only token may read.
//!
//! The page holds no data of its own: it asks for a token once, keeps it in the tab's
//! `sessionStorage` (gone when the tab closes; never in a cookie, the URL or `localStorage`),
//! sends it as a bearer token, and builds the page from `/v1/status` with DOM text nodes (no
//! HTML from data). It refreshes itself every five seconds. Retrying a failed or dead job from
//! the page takes the API token; the read-only token reads only.
//!
//! `/v1/status` gathers what an administrator checks first: version and FIPS state, the sources
//! of work (the request API and how it listens, the SCEP server and its RA), backends with a
//! live health check, jobs by state, the jobs that failed or were dead-lettered with
//! their reasons, when the certificates certconn depends on expire — with a warning three
//! weeks ahead (an expired SCEP RA certificate is how SCEP "quietly stops") — and each CA's
//! published CRL and OCSP responder, with why publishing fails while it does.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::server::AppState;
use crate::journal::JobState;
use crate::plugins::Registry;

/// How far ahead a certificate's expiry is a warning.
pub const EXPIRY_WARNING_DAYS: u64 = 21;

/// Failed and dead jobs listed, of each.
const ATTENTION_JOBS: u32 = 20;

const PAGE: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("page.js");
const STYLE: &str = include_str!("page.css");
const ICON: &str = include_str!("icon.svg");

/// Headers for the page and its assets: nothing from elsewhere may load or run, the page may
/// not be framed, and nothing is cached or sent on as a referrer.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        body,
    )
        .into_response()
}

/// The status page (it asks for a token, and reads `/v1/status`)
#[utoipa::path(
    get,
    path = "/status",
    tag = "status page",
    responses((status = 200, description = "The status page (it asks for a token, and reads `/v1/status`)", content_type = "text/html; charset=utf-8", body = String))
)]
pub(super) async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

/// The status page's script
#[utoipa::path(
    get,
    path = "/status/page.js",
    tag = "status page",
    responses((status = 200, description = "The status page's script", content_type = "text/javascript; charset=utf-8", body = String))
)]
pub(super) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// The status page's style sheet
#[utoipa::path(
    get,
    path = "/status/page.css",
    tag = "status page",
    responses((status = 200, description = "The status page's style sheet", content_type = "text/css; charset=utf-8", body = String))
)]
pub(super) async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

/// The status page's icon
#[utoipa::path(
    get,
    path = "/status/icon.svg",
    tag = "status page",
    responses((status = 200, description = "The status page's icon", content_type = "image/svg+xml", body = String))
)]
pub(super) async fn icon() -> Response {
    asset("image/svg+xml", ICON)
}

/// The certificates certconn depends on, labelled, with their notAfter (Unix seconds): custody
/// keys' certificates (`key/NAME`), the SCEP RA (`scep-ra`), the API's TLS certificate
/// (`api-tls`), the connector's identity towards its upstream (`upstream-identity`).
pub(super) fn watched_certificates(state: &AppState) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for name in &state.watched_keys {
        let not_after = state.keys.get(name).ok().and_then(|k| {
            k.chain
                .first()
                .and_then(|der| certconn_x509::validity_of(der).ok())
        });
        if let Some((_, end)) = not_after {
            out.push((format!("key/{name}"), end));
        }
    }
    if let Some(ra) = &state.scep {
        out.push(("scep-ra".to_owned(), ra.current_not_after()));
    }
    match state
        .tls_not_after
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        0 => {}
        end => out.push(("api-tls".to_owned(), end)),
    }
    if let Some(end) = state.upstream.as_ref().and_then(|u| u.identity_not_after()) {
        out.push(("upstream-identity".to_owned(), end));
    }
    out
}

/// How many connections each listener holds against `api.max_connections`, as the status page
/// says it, and whether one is at its limit now.
fn connections(state: &AppState) -> (String, bool) {
    let listeners = crate::sources::api::connections::listener_connections(
        state.max_connections,
        state.plain_listener,
    );
    let said: Vec<String> = listeners.iter().map(|l| l.to_string()).collect();
    (said.join(", "), listeners.iter().any(|l| l.at_limit))
}

/// Every backend instance as `plugins list` shows it, with a health check of each run now (at
/// once: each may wait on its CA).
pub(super) async fn backends_with_health(registry: &Registry) -> serde_json::Value {
    let mut status = serde_json::to_value(registry.status()).unwrap_or_else(|_| json!({}));
    if let Some(backends) = status["backends"].as_array_mut() {
        let checks: Vec<_> = registry
            .instances()
            .iter()
            .map(|i| {
                let current = i.current();
                tokio::spawn(async move {
                    match current {
                        Some(b) => match b.health().await {
                            Ok(h) => (h.healthy, h.message),
                            Err(e) => (false, e.to_string()),
                        },
                        None => (false, "not serving".to_string()),
                    }
                })
            })
            .collect();
        for (b, check) in backends.iter_mut().zip(checks) {
            let (healthy, message) = check
                .await
                .unwrap_or_else(|e| (false, format!("health check task: {e}")));
            b["healthy"] = json!(healthy);
            b["health"] = json!(crate::plugins::backend::bounded(&message));
        }
    }
    status
}

/// What the status page shows: version, FIPS, backends with a health check run now, jobs by
/// state, failed and dead jobs with their reasons, the certificates certconn depends on, and
/// revocation (CRLs and OCSP). `status` is `attention` when any of them needs an operator.
#[utoipa::path(
    get,
    path = "/v1/status",
    tag = "operations",
    responses(
        (status = 200, description = "The daemon's state", body = Object),
    ),
    security(("token" = []), ("read_token" = []))
)]
pub(super) async fn status(State(state): State<AppState>) -> Json<serde_json::Value> {
    let now = crate::journal::now_secs();
    let certificates: Vec<_> = watched_certificates(&state)
        .into_iter()
        .map(|(name, not_after)| {
            let days_left = (i128::from(not_after) - i128::from(now)) / 86_400;
            json!({
                "name": name,
                "not_after": crate::report::rfc3339_ms(i64::try_from(not_after).unwrap_or(i64::MAX).saturating_mul(1000)),
                "days_left": days_left,
                "warning": not_after < now + EXPIRY_WARNING_DAYS * 86_400,
                "expired": not_after <= now,
            })
        })
        .collect();
    let mut attention = Vec::new();
    for job_state in [JobState::Dead, JobState::Failed] {
        if let Ok(listing) = state.jobs.list(Some(job_state), ATTENTION_JOBS).await {
            attention.extend(listing.jobs.into_iter().map(|j| {
                json!({
                    "id": j.id,
                    "kind": j.kind.as_str(),
                    "state": j.state.as_str(),
                    "backend": j.backend,
                    "attempts": j.attempts,
                    "reason": j.last_error,
                    "updated_at": crate::report::rfc3339_ms(j.updated_at),
                })
            }));
            // A job the lease failed because its record cannot be read needs an operator
            // most of all.
            attention.extend(listing.unreadable.into_iter().map(|j| {
                json!({
                    "id": j.id,
                    "kind": "unreadable",
                    "state": j.state,
                    "backend": null,
                    "attempts": null,
                    "reason": j.last_error.unwrap_or(j.reason),
                    "updated_at": crate::report::rfc3339_ms(j.updated_at),
                })
            }));
        }
    }
    let counts = state.jobs.counts().await.unwrap_or_default();
    let backends = backends_with_health(&state.registry).await;
    let (connections, at_limit) = connections(&state);
    let mut sources = vec![json!({
        "name": "request API",
        "state": if at_limit { "attention" } else { "serving" },
        "detail": format!("{}; {connections}", state.listener),
    })];
    if let Some(upstream) = &state.upstream {
        let u = upstream.status_with_backlog().await;
        // The first long poll may wait `poll_wait_seconds` for work: until it returns, no
        // poll has been answered, which is not "never polled".
        let mut detail = format!(
            "{}; {}; {} received, {} results sent, {} refused",
            u.service,
            u.last_poll
                .as_deref()
                .map_or("no poll answered yet".to_owned(), |t| format!(
                    "last poll answered {t}"
                )),
            u.received,
            u.delivered,
            u.refused
        );
        if let Some(b) = u.backlog {
            detail = format!(
                "{detail}; backlog: {} jobs unfinished, {} results to send",
                b.unfinished, b.owed
            );
        }
        if let Some(e) = &u.last_error {
            detail = format!("{detail}; last error: {e}");
        }
        if let Some(e) = &u.heartbeat_error {
            detail = format!("{detail}; heartbeat: {e}");
        }
        sources.push(json!({
            "name": "upstream service",
            "state": if u.connected && u.last_error.is_none() { "serving" } else { "disconnected" },
            "detail": detail,
        }));
    }
    if let Some(poller) = &state.intune_revocation {
        let r = poller.status().await;
        let mut detail = format!(
            "last poll {}; {} requests received, {} results sent",
            r.last_poll.as_deref().unwrap_or("never"),
            r.received,
            r.delivered
        );
        if let Some(b) = r.backlog {
            detail = format!(
                "{detail}; backlog: {} jobs unfinished, {} results to send",
                b.unfinished, b.owed
            );
        }
        if let Some(e) = &r.last_error {
            detail = format!("{detail}; last error: {e}");
        }
        sources.push(json!({
            "name": "Intune revocation requests",
            "state": if r.connected { "serving" } else { "disconnected" },
            "detail": detail,
        }));
    }
    if let Some(ra) = &state.scep {
        let ra = ra.status();
        let warning = ra["warning"].as_str();
        sources.push(json!({
            "name": "SCEP server",
            "state": if warning.is_some() { "attention" } else { "serving" },
            "detail": warning.map(str::to_owned).unwrap_or_else(|| format!(
                "/scep and /cgi-bin/pkiclient.exe; RA certificate generation {}, renewed from {}",
                ra["generation"], ra["next_at"].as_str().unwrap_or("?")
            )),
        }));
    }
    let degraded = backends["backends"].as_array().is_some_and(|b| {
        b.iter()
            .any(|b| b["state"] != "serving" || b["healthy"] != true)
    }) || certificates.iter().any(|c| c["warning"] == true);
    let lifecycle = state.upstream.as_ref().and_then(|u| u.status().lifecycle);
    let out_of_date = lifecycle.as_ref().is_some_and(|l| {
        matches!(
            l.stage,
            crate::lifecycle::Stage::Deprecated | crate::lifecycle::Stage::Unsupported
        )
    });
    let updates = state.updates.as_ref().map(|u| u.summary());
    let updates_attention = updates.as_ref().is_some_and(|u| {
        u["error"].is_string() || matches!(u["stage"].as_str(), Some("deprecated" | "unsupported"))
    });
    let revocation = state.revocation.as_ref().map(|p| p.status());
    // A CA whose CRL cannot be published: relying parties keep the last CRL until it expires,
    // and trust whatever was revoked since.
    let publishing_fails = revocation
        .iter()
        .flatten()
        .any(|ca| ca.publishing_error.is_some());
    let degraded = degraded || out_of_date || updates_attention || publishing_fails || at_limit;
    Json(json!({
        "version": crate::version::version(),
        "lifecycle": lifecycle,
        "updates": updates,
        "status": if degraded { "attention" } else { "ok" },
        "sources": sources,
        "fips": &state.fips,
        "backends": backends["backends"],
        "jobs": counts.into_iter().map(|(s, n)| (s.as_str(), n)).collect::<std::collections::BTreeMap<_, _>>(),
        "attention": attention,
        "certificates": certificates,
        "certificate_warning_days": EXPIRY_WARNING_DAYS,
        "scep_ra": state.scep.as_ref().map(|ra| ra.status()),
        "revocation": revocation,
    }))
}
