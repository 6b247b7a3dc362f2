//! The revocation routes, unauthenticated like any CRL or OCSP server: relying parties fetch
//! `GET /pki/<ca>/crl` (DER, `application/pkix-crl`), `GET /pki/<ca>/ca.crt` (the AIA
//! caIssuers target) and ask `POST /pki/<ca>/ocsp` or `GET /pki/<ca>/ocsp/<base64 request>`
//! (RFC 6960 appendix A).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::engine::{general_purpose::GeneralPurpose, DecodePaddingMode, GeneralPurposeConfig};
use base64::{alphabet, Engine};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::Publisher;
use crate::openapi::Binary;

/// An OCSP request is a few hundred bytes; anything near this is not one.
const MAX_OCSP_REQUEST: usize = 16 * 1024;

/// Base64 as clients put it in a URL: some drop the padding.
const PADDING_OPTIONAL: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// `GET /pki/{ca}/ocsp/{request}` for the OpenAPI document: axum routes it as a wildcard
/// (base64 holds `/`), which `routes!` cannot express.
#[derive(OpenApi)]
#[openapi(paths(ocsp_get))]
struct OcspGet;

/// The routes, for merging into the API listener.
pub fn routes(publisher: Arc<Publisher>) -> OpenApiRouter {
    OpenApiRouter::with_openapi(OcspGet::openapi())
        .routes(routes!(crl))
        .routes(routes!(certificate))
        .routes(routes!(ocsp_post))
        .route("/pki/{ca}/ocsp/{*request}", get(ocsp_get))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_OCSP_REQUEST))
        .with_state(publisher)
}

fn not_here(ca: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("certconn publishes no CA named {ca:?}\n"),
    )
        .into_response()
}

/// The CA's current CRL, DER.
#[utoipa::path(
    get,
    path = "/pki/{ca}/crl",
    tag = "pki",
    params(("ca" = String, Path, description = "The CA's name ([revocation.ca.NAME])")),
    responses(
        (status = 200, description = "The CRL", content_type = "application/pkix-crl", body = inline(Binary)),
        (status = 404, description = "certconn publishes no CA by this name", content_type = "text/plain; charset=utf-8", body = String),
    )
)]
async fn crl(State(p): State<Arc<Publisher>>, Path(ca): Path<String>) -> Response {
    let Some(current) = p.crl(&ca) else {
        return not_here(&ca);
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // Caches may keep it until it would be replaced, never past its nextUpdate.
    let max_age = current.next_update.saturating_sub(now).min(3600);
    let cache = HeaderValue::from_str(&format!("public, max-age={max_age}"))
        .unwrap_or(HeaderValue::from_static("no-cache"));
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/pkix-crl"),
            ),
            (header::CACHE_CONTROL, cache),
        ],
        current.der,
    )
        .into_response()
}

/// The CA's certificate, DER (the AIA caIssuers target).
#[utoipa::path(
    get,
    path = "/pki/{ca}/ca.crt",
    tag = "pki",
    params(("ca" = String, Path, description = "The CA's name ([revocation.ca.NAME])")),
    responses(
        (status = 200, description = "The certificate", content_type = "application/pkix-cert", body = inline(Binary)),
        (status = 404, description = "certconn publishes no CA by this name", content_type = "text/plain; charset=utf-8", body = String),
    )
)]
async fn certificate(State(p): State<Arc<Publisher>>, Path(ca): Path<String>) -> Response {
    match p.certificate(&ca) {
        Some(der) => ([(header::CONTENT_TYPE, "application/pkix-cert")], der).into_response(),
        None => not_here(&ca),
    }
}

/// An OCSP request (RFC 6960), DER in the body.
#[utoipa::path(
    post,
    path = "/pki/{ca}/ocsp",
    tag = "pki",
    params(("ca" = String, Path, description = "The CA's name ([revocation.ca.NAME])")),
    request_body(
        description = "The DER OCSPRequest (an empty or malformed one gets the malformedRequest response)",
        content = inline(Option<Binary>),
        content_type = "application/ocsp-request",
    ),
    responses(
        (status = 200, description = "An OCSP response (a malformed request gets the malformedRequest response)", content_type = "application/ocsp-response", body = inline(Binary)),
        (status = 404, description = "certconn publishes no CA by this name", content_type = "text/plain; charset=utf-8", body = String),
    )
)]
async fn ocsp_post(
    State(p): State<Arc<Publisher>>,
    Path(ca): Path<String>,
    body: Bytes,
) -> Response {
    ocsp(&p, &ca, &body).await
}

/// An OCSP request (RFC 6960 appendix A), base64 in the path.
#[utoipa::path(
    get,
    path = "/pki/{ca}/ocsp/{request}",
    tag = "pki",
    params(("ca" = String, Path, description = "The CA's name ([revocation.ca.NAME])"), ("request" = String, Path, description = "The DER request, base64 (padding optional)")),
    responses(
        (status = 200, description = "An OCSP response (a malformed request gets the malformedRequest response)", content_type = "application/ocsp-response", body = inline(Binary)),
        (status = 404, description = "certconn publishes no CA by this name", content_type = "text/plain; charset=utf-8", body = String),
    )
)]
async fn ocsp_get(
    State(p): State<Arc<Publisher>>,
    Path((ca, request)): Path<(String, String)>,
) -> Response {
    let text: String = request.chars().filter(|c| !c.is_whitespace()).collect();
    match PADDING_OPTIONAL.decode(text) {
        Ok(der) => ocsp(&p, &ca, &der).await,
        Err(_) => respond(crate::pki::ocsp::Refusal::Malformed.response_der().into()),
    }
}

async fn ocsp(p: &Publisher, ca: &str, request: &[u8]) -> Response {
    match p.ocsp(ca, request).await {
        Some(der) => respond(der),
        None => not_here(ca),
    }
}

fn respond(der: Bytes) -> Response {
    ([(header::CONTENT_TYPE, "application/ocsp-response")], der).into_response()
}
