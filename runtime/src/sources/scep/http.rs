//! The SCEP HTTP binding (RFC 8894 §4.1): `operation` and `message` query parameters, the
//! PKIOperation message in the body of a POST or base64 in the `message` parameter of a GET.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::Ra;
use crate::openapi::Binary;
use std::collections::BTreeMap;
use utoipa::openapi::{Content, RefOr, ResponseBuilder, ResponsesBuilder};
use utoipa::PartialSchema;

#[derive(Clone)]
struct ScepState {
    ra: Arc<Ra>,
}

/// `/scep` and the classic `/cgi-bin/pkiclient.exe` (the same endpoint under the name
/// Windows clients and NDES use; not listed again in the OpenAPI document), unauthenticated:
/// SCEP authenticates by challenge password or by the renewing certificate.
pub fn routes(ra: Arc<Ra>) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(get_operation))
        .routes(routes!(post_operation))
        .route(
            "/cgi-bin/pkiclient.exe",
            get(get_operation).post(post_operation),
        )
        .layer(axum::extract::DefaultBodyLimit::max(
            certconn_scep::MAX_MESSAGE_BYTES,
        ))
        .with_state(ScepState { ra })
}

/// A request that is not SCEP at all (not a pkiMessage, a missing parameter): HTTP 400, and a
/// warning an administrator sees — a client that gets this retries for ever, and nothing else
/// would say why.
fn refused(text: impl Into<String>) -> Response {
    let text = text.into();
    tracing::warn!(event_id = 4101, reason = %text, "SCEP request refused before it was read");
    plain(StatusCode::BAD_REQUEST, text)
}

fn plain(status: StatusCode, text: impl Into<String>) -> Response {
    (status, [(header::CONTENT_TYPE, TEXT)], text.into()).into_response()
}

/// A SCEP operation by GET (RFC 8894 §4.1): GetCACaps, GetCACert, GetNextCACert, and
/// PKIOperation with the message in the `message` parameter. Also at `/cgi-bin/pkiclient.exe`.
#[utoipa::path(
    get,
    path = "/scep",
    tag = "scep",
    params(
        ("operation" = inline(Operation), Query, description = "The SCEP operation"),
        ("message" = Option<String>, Query, description = "PKIOperation's message, base64"),
    ),
    responses(ScepAnswer)
)]
async fn get_operation(state: State<ScepState>, query: RawQuery) -> Response {
    handle(state, Method::GET, query, Bytes::new()).await
}

/// PKIOperation by POST (RFC 8894 §4.1), the message in the body. Also at
/// `/cgi-bin/pkiclient.exe`.
#[utoipa::path(
    post,
    path = "/scep",
    tag = "scep",
    params(("operation" = inline(PostOperation), Query, description = "Only PKIOperation is posted")),
    request_body(
        description = "The pkiMessage: DER (or base64)",
        content = inline(Binary),
        content_type = PKI_MESSAGE,
    ),
    responses(ScepAnswer)
)]
async fn post_operation(state: State<ScepState>, query: RawQuery, body: Bytes) -> Response {
    handle(state, Method::POST, query, body).await
}

/// What both methods answer, for the OpenAPI document.
struct ScepAnswer;

impl utoipa::IntoResponses for ScepAnswer {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        let text = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(TEXT, Content::new(Some(String::schema())))
                .build()
        };
        let binary = || Content::new(Some(Binary::schema()));
        let answer = ResponseBuilder::new()
            .description(
                "GetCACaps: the capabilities, a line each; GetCACert: the CA and RA \
                 certificates; GetNextCACert: the next RA certificate, signed; PKIOperation: a \
                 CertRep (which may itself say failure or pending)",
            )
            .content(TEXT, Content::new(Some(String::schema())))
            .content(CA_RA_CERT, binary())
            .content(NEXT_CA_CERT, binary())
            .content(PKI_MESSAGE, binary())
            .build();
        ResponsesBuilder::new()
            .response("200", answer)
            .response("400", text("Not SCEP: no or an unknown operation, an operation sent by the wrong method, a message that is not a pkiMessage"))
            .response("404", text("GetNextCACert: no next RA certificate is announced"))
            .response("500", text("The RA's certificates cannot be read"))
            .build()
            .into()
    }
}

const TEXT: &str = "text/plain; charset=utf-8";
const CA_RA_CERT: &str = "application/x-x509-ca-ra-cert";
const NEXT_CA_CERT: &str = "application/x-x509-next-ca-cert";
const PKI_MESSAGE: &str = "application/x-pki-message";

async fn handle(
    State(s): State<ScepState>,
    method: Method,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let params = parse_query(query.as_deref().unwrap_or_default());
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let Some(operation) = param("operation") else {
        return refused("missing the operation parameter");
    };
    if method == Method::POST && operation != "PKIOperation" {
        return refused(format!(
            "{operation} is sent by GET (RFC 8894 §4.1); only PKIOperation is posted"
        ));
    }
    match operation {
        "GetCACaps" => plain(StatusCode::OK, s.ra.capabilities().to_body()),
        "GetCACert" => match s.ra.ca_certificates() {
            Ok(bag) => (
                [(header::CONTENT_TYPE, CA_RA_CERT)],
                bag,
            )
                .into_response(),
            Err(e) => plain(StatusCode::INTERNAL_SERVER_ERROR, e.0),
        },
        "GetNextCACert" => match s.ra.next_ca_certificates() {
            Ok(Some(signed)) => (
                [(header::CONTENT_TYPE, NEXT_CA_CERT)],
                signed,
            )
                .into_response(),
            Ok(None) => plain(
                StatusCode::NOT_FOUND,
                "no next RA certificate is announced yet",
            ),
            Err(e) => plain(StatusCode::INTERNAL_SERVER_ERROR, e.0),
        },
        "PKIOperation" => {
            let message = if method == Method::POST {
                body_message(&body)
            } else {
                match param("message") {
                    Some(m) => decode_base64(m)
                        .ok_or_else(|| "the message parameter is not base64".to_string()),
                    None => Err("a GET PKIOperation needs the message parameter".into()),
                }
            };
            let message = match message {
                Ok(m) => m,
                Err(e) => return refused(e),
            };
            match s.ra.pki_operation(&message).await {
                Ok(rep) => {
                    ([(header::CONTENT_TYPE, PKI_MESSAGE)], rep).into_response()
                }
                Err(e) => refused(e.0),
            }
        }
        other => refused(format!(
            "unknown operation {other:?}; expected GetCACaps, GetCACert, GetNextCACert or PKIOperation"
        )),
    }
}

/// The operations RFC 8894 defines (the schema of the `operation` parameter).
#[derive(utoipa::ToSchema)]
// Documentation only: `handle` reads the raw query, as SCEP clients write it. The variants
// are RFC 8894's names.
#[allow(dead_code, clippy::enum_variant_names)]
enum Operation {
    GetCACaps,
    GetCACert,
    GetNextCACert,
    PKIOperation,
}

/// The one operation sent by POST.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // Documentation only, as [`Operation`].
enum PostOperation {
    PKIOperation,
}

/// A POST body is the DER message; some clients post it base64-encoded instead.
fn body_message(body: &[u8]) -> Result<Vec<u8>, String> {
    match body.first() {
        None => Err("the POST body is empty".into()),
        Some(0x30) => Ok(body.to_vec()),
        Some(_) => std::str::from_utf8(body)
            .ok()
            .and_then(decode_base64)
            .ok_or_else(|| "the POST body is neither DER nor base64".into()),
    }
}

/// Standard or URL-safe base64, padded or not, with any line breaks and spaces (a `+` that a
/// form decoder turned into a space is a `+`).
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let mut s: String = text
        .chars()
        .filter(|c| !matches!(c, '\r' | '\n' | '\t'))
        .map(|c| match c {
            ' ' => '+',
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    while s.ends_with('=') {
        s.pop();
    }
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(s)
        .ok()
}

/// Query pairs, percent-decoded. `+` is left alone: in SCEP's base64 it is data, not a space.
fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_in_every_spelling() {
        let data: Vec<u8> = (0..=255u8).collect();
        let std = base64::engine::general_purpose::STANDARD.encode(&data);
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&data);
        let wrapped: String = std
            .as_bytes()
            .chunks(64)
            .map(|c| format!("{}\r\n", std::str::from_utf8(c).unwrap()))
            .collect();
        let escaped = std
            .replace('+', "%2B")
            .replace('/', "%2F")
            .replace('=', "%3D");
        let spaced = std.replace('+', " ");
        for (name, text) in [
            ("standard", std.clone()),
            ("url-safe", url),
            ("wrapped", wrapped),
            ("spaced", spaced),
        ] {
            assert_eq!(decode_base64(&text).as_deref(), Some(&data[..]), "{name}");
        }
        let q = parse_query(&format!("operation=PKIOperation&message={escaped}"));
        assert_eq!(
            decode_base64(&q[1].1).as_deref(),
            Some(&data[..]),
            "escaped"
        );
        assert_eq!(decode_base64("not base64!"), None);
    }
}
