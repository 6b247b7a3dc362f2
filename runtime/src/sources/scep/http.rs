//! The SCEP HTTP binding (RFC 8894 §4.1): `operation` and `message` query parameters, the
//! PKIOperation message in the body of a POST or base64 in the `message` parameter of a GET.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::Engine;

use super::Ra;

#[derive(Clone)]
struct ScepState {
    ra: Arc<Ra>,
}

/// `/scep` and the classic `/cgi-bin/pkiclient.exe`, unauthenticated: SCEP authenticates by
/// challenge password or by the renewing certificate.
pub fn routes(ra: Arc<Ra>) -> Router {
    Router::new()
        .route("/scep", get(handle).post(handle))
        .route("/cgi-bin/pkiclient.exe", get(handle).post(handle))
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
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text.into(),
    )
        .into_response()
}

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
    match operation {
        "GetCACaps" => plain(StatusCode::OK, s.ra.capabilities().to_body()),
        "GetCACert" => match s.ra.ca_certificates() {
            Ok(bag) => (
                [(header::CONTENT_TYPE, "application/x-x509-ca-ra-cert")],
                bag,
            )
                .into_response(),
            Err(e) => plain(StatusCode::INTERNAL_SERVER_ERROR, e.0),
        },
        "GetNextCACert" => match s.ra.next_ca_certificates() {
            Ok(Some(signed)) => (
                [(header::CONTENT_TYPE, "application/x-x509-next-ca-cert")],
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
                    ([(header::CONTENT_TYPE, "application/x-pki-message")], rep).into_response()
                }
                Err(e) => refused(e.0),
            }
        }
        other => refused(format!(
            "unknown operation {other:?}; expected GetCACaps, GetCACert, GetNextCACert or PKIOperation"
        )),
    }
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
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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
