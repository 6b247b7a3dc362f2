//! Blocking HTTP for backends, over the host's `wasi:http/outgoing-handler`.
//!
//! The host decides what is reachable: only hosts the administrator granted this backend
//! instance, with bounded responses. A refusal comes back as an error naming the host.

use crate::bindings::wasi::http::outgoing_handler;
use crate::bindings::wasi::http::types::{
    ErrorCode, Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, Scheme,
};
use crate::bindings::wasi::io::streams::StreamError;
use crate::BackendError;

/// A whole response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// The Content-Type header, when there was one.
    pub content_type: Option<String>,
    /// Every header, names lower-cased, values that are not UTF-8 left out.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why a request got no response, in words, and whether trying again can help.
#[derive(Debug, Clone)]
pub struct HttpError {
    pub message: String,
    /// Retrying cannot help without the administrator (an untrusted certificate, a host not
    /// granted): the job should fail rather than be retried.
    pub permanent: bool,
}

impl HttpError {
    fn transient(message: String) -> Self {
        Self {
            message,
            permanent: false,
        }
    }

    fn permanent(message: String) -> Self {
        Self {
            message,
            permanent: true,
        }
    }

    /// The backend's error for this failure of `what` (`GetCACert`, `the CA at …`): rejected
    /// when retrying cannot help, transient otherwise.
    pub fn into_backend_error(self, what: &str) -> BackendError {
        let text = format!("{what}: {}", self.message);
        if self.permanent {
            BackendError::Rejected(text)
        } else {
            BackendError::Transient(text)
        }
    }

    /// `code` from the host, about a request to `authority`, in words.
    pub fn from_code(authority: &str, code: &ErrorCode) -> Self {
        let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
        match code {
            ErrorCode::DnsTimeout | ErrorCode::DnsError(_) => {
                Self::transient(format!("cannot resolve {host}"))
            }
            ErrorCode::DestinationNotFound => Self::transient(format!("{authority} was not found")),
            ErrorCode::DestinationUnavailable => {
                Self::transient(format!("{authority} is unavailable"))
            }
            ErrorCode::DestinationIpProhibited => Self::permanent(format!(
                "{authority} resolves to an internal address, which this backend may not reach (http.allow_private allows it)"
            )),
            ErrorCode::DestinationIpUnroutable => {
                Self::transient(format!("{authority} cannot be routed to"))
            }
            ErrorCode::ConnectionRefused => Self::transient(format!(
                "{authority} refused the connection (does the service listen on that port?)"
            )),
            ErrorCode::ConnectionTerminated => {
                Self::transient(format!("{authority} closed the connection"))
            }
            ErrorCode::ConnectionTimeout => {
                Self::transient(format!("connecting to {authority} timed out"))
            }
            ErrorCode::ConnectionReadTimeout
            | ErrorCode::ConnectionWriteTimeout
            | ErrorCode::HttpResponseTimeout => {
                Self::transient(format!("{authority} did not answer in time"))
            }
            ErrorCode::ConnectionLimitReached => {
                Self::transient(format!("too many connections to {authority}"))
            }
            ErrorCode::TlsProtocolError => {
                Self::transient(format!("the TLS handshake with {authority} failed"))
            }
            ErrorCode::TlsCertificateError => Self::permanent(format!(
                "the TLS certificate of {authority} is not trusted; if its CA is a private one, name it in this backend's http.trust_anchors"
            )),
            ErrorCode::TlsAlertReceived(alert) => Self::transient(format!(
                "{authority} ended the TLS handshake: {}",
                alert.alert_message.as_deref().unwrap_or("an alert")
            )),
            ErrorCode::HttpRequestDenied => Self::permanent(format!(
                "the host denied a request to {authority}: it is not in this backend's http.allow"
            )),
            ErrorCode::HttpResponseBodySize(_) => Self::permanent(format!(
                "the answer from {authority} is larger than this backend's http.max_response_bytes"
            )),
            // The host's own words: for an untrusted certificate they say why.
            ErrorCode::InternalError(Some(m)) if m.starts_with("TLS certificate") => {
                Self::permanent(m.clone())
            }
            ErrorCode::InternalError(Some(m)) => Self::transient(format!("{authority}: {m}")),
            other => Self::transient(format!("{authority}: {other:?}")),
        }
    }
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Splits `http://host[:port]/path?query` into (scheme, authority, path-with-query).
fn split_url(url: &str) -> Result<(Scheme, &str, &str), HttpError> {
    let (scheme, rest) = if let Some(r) = url.strip_prefix("http://") {
        (Scheme::Http, r)
    } else if let Some(r) = url.strip_prefix("https://") {
        (Scheme::Https, r)
    } else {
        return Err(HttpError::permanent(format!(
            "{url:?} is not an http:// or https:// URL"
        )));
    };
    let cut = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(cut);
    if authority.is_empty() {
        return Err(HttpError::permanent(format!("{url:?} has no host")));
    }
    Ok((scheme, authority, if path.is_empty() { "/" } else { path }))
}

/// Sends one request and reads the whole response.
pub fn fetch(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<Response, HttpError> {
    let (scheme, authority, path) = split_url(url)?;
    let fields = Fields::new();
    for (name, value) in headers {
        fields
            .append(name, &value.as_bytes().to_vec())
            .map_err(|e| HttpError::permanent(format!("header {name}: {e:?}")))?;
    }
    let request = OutgoingRequest::new(fields);
    let method = match method {
        "GET" => Method::Get,
        "POST" => Method::Post,
        other => Method::Other(other.to_string()),
    };
    let bad = |what: &str| HttpError::permanent(format!("{url}: invalid {what}"));
    request.set_method(&method).map_err(|_| bad("method"))?;
    request
        .set_scheme(Some(&scheme))
        .map_err(|_| bad("scheme"))?;
    request
        .set_authority(Some(authority))
        .map_err(|_| bad("host"))?;
    request
        .set_path_with_query(Some(path))
        .map_err(|_| bad("path"))?;
    let outgoing = request.body().map_err(|_| bad("body"))?;
    let future = outgoing_handler::handle(request, None)
        .map_err(|code| HttpError::from_code(authority, &code))?;
    {
        let stream = outgoing.write().map_err(|_| bad("body stream"))?;
        for chunk in body.unwrap_or_default().chunks(4096) {
            stream.blocking_write_and_flush(chunk).map_err(|e| {
                HttpError::transient(format!("{authority}: sending the body: {e:?}"))
            })?;
        }
    }
    OutgoingBody::finish(outgoing, None).map_err(|code| HttpError::from_code(authority, &code))?;
    future.subscribe().block();
    let response = match future.get() {
        Some(Ok(Ok(r))) => r,
        Some(Ok(Err(code))) => return Err(HttpError::from_code(authority, &code)),
        _ => {
            return Err(HttpError::transient(format!(
                "{authority}: the request ended without a response"
            )))
        }
    };
    let status = response.status();
    let headers: Vec<(String, String)> = response
        .headers()
        .entries()
        .into_iter()
        .filter_map(|(n, v)| Some((n.to_ascii_lowercase(), String::from_utf8(v).ok()?)))
        .collect();
    let content_type = headers
        .iter()
        .find(|(n, _)| n == "content-type")
        .map(|(_, v)| v.clone());
    let incoming = response.consume().map_err(|_| bad("response body"))?;
    let mut out = Vec::new();
    {
        let stream = incoming.stream().map_err(|_| bad("response stream"))?;
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => out.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(e) => {
                    return Err(HttpError::transient(format!(
                        "{authority}: reading the response: {e:?}"
                    )))
                }
            }
        }
    }
    let _ = IncomingBody::finish(incoming);
    Ok(Response {
        status,
        content_type,
        headers,
        body: out,
    })
}
