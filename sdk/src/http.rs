//! Blocking HTTP for backends, over the host's `wasi:http/outgoing-handler`.
//!
//! The host decides what is reachable: only hosts the administrator granted this backend
//! instance, with bounded responses. A refusal comes back as an error naming the host.

use crate::bindings::wasi::http::outgoing_handler;
use crate::bindings::wasi::http::types::{
    Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, Scheme,
};
use crate::bindings::wasi::io::streams::StreamError;

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

/// Why a request got no response.
#[derive(Debug, Clone)]
pub struct HttpError(pub String);

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Splits `http://host[:port]/path?query` into (scheme, authority, path-with-query).
fn split_url(url: &str) -> Result<(Scheme, &str, &str), HttpError> {
    let (scheme, rest) = if let Some(r) = url.strip_prefix("http://") {
        (Scheme::Http, r)
    } else if let Some(r) = url.strip_prefix("https://") {
        (Scheme::Https, r)
    } else {
        return Err(HttpError(format!(
            "{url:?} is not an http:// or https:// URL"
        )));
    };
    let cut = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(cut);
    if authority.is_empty() {
        return Err(HttpError(format!("{url:?} has no host")));
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
            .map_err(|e| HttpError(format!("header {name}: {e:?}")))?;
    }
    let request = OutgoingRequest::new(fields);
    let method = match method {
        "GET" => Method::Get,
        "POST" => Method::Post,
        other => Method::Other(other.to_string()),
    };
    let bad = |what: &str| HttpError(format!("{url}: invalid {what}"));
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
        .map_err(|code| HttpError(format!("{authority}: {code:?}")))?;
    {
        let stream = outgoing.write().map_err(|_| bad("body stream"))?;
        for chunk in body.unwrap_or_default().chunks(4096) {
            stream
                .blocking_write_and_flush(chunk)
                .map_err(|e| HttpError(format!("{authority}: sending the body: {e:?}")))?;
        }
    }
    OutgoingBody::finish(outgoing, None)
        .map_err(|code| HttpError(format!("{authority}: {code:?}")))?;
    future.subscribe().block();
    let response = match future.get() {
        Some(Ok(Ok(r))) => r,
        Some(Ok(Err(code))) => return Err(HttpError(format!("{authority}: {code:?}"))),
        _ => {
            return Err(HttpError(format!(
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
                    return Err(HttpError(format!(
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
