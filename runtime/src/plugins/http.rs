//! Outgoing HTTP from plugins goes through [`HttpPolicy::send_request`]: only to the hosts the
//! administrator granted the backend instance (`backends.NAME.http.allow`), checked on every
//! request — a redirect is a new request from the plugin, so it is checked again. A granted
//! *name* that resolves to a loopback, private, link-local (cloud metadata) or otherwise
//! internal address is refused unless `allow_private` is set; an IP literal in the grant is the
//! administrator naming that address and is allowed. The host connects to the address it
//! checked (no second lookup to rebind), and reads at most `max_response_bytes` of the answer.
//! Plain HTTP only for now: TLS with per-backend trust anchors is the next step.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use serde::Deserialize;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

/// What one backend instance may reach over HTTP.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HttpGrant {
    /// `host` (any port) or `host:port`; host names compare without case.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Let granted names resolve to loopback/private/link-local addresses (an on-premises CA
    /// on a private network).
    #[serde(default)]
    pub allow_private: bool,
    /// Largest response body read (and request body sent), in bytes.
    #[serde(default = "default_max_response")]
    pub max_response_bytes: usize,
}

fn default_max_response() -> usize {
    1 << 20
}

impl Default for HttpGrant {
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            allow_private: false,
            max_response_bytes: default_max_response(),
        }
    }
}

impl HttpGrant {
    /// The grant entry that permits `host:port`, if any.
    fn entry_for(&self, host: &str, port: u16) -> Option<&str> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        self.allow
            .iter()
            .find(|entry| {
                let (h, p) = split_host_port(entry);
                h.eq_ignore_ascii_case(host) && p.is_none_or(|p| p == port)
            })
            .map(String::as_str)
    }
}

fn split_host_port(entry: &str) -> (&str, Option<u16>) {
    if let Some(rest) = entry.strip_prefix('[') {
        // [v6]:port
        if let Some((h, p)) = rest.split_once("]:") {
            return (h, p.parse().ok());
        }
        return (rest.trim_end_matches(']'), None);
    }
    match entry.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, p.parse().ok()),
        _ => (entry, None),
    }
}

/// Loopback, private, link-local (169.254.169.254 is the cloud metadata service), CGNAT,
/// unique-local, unspecified, broadcast and multicast addresses.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || o[0] == 0
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
        }
    }
}

/// The outbound-HTTP rules of one backend instance.
pub struct HttpPolicy {
    backend: Arc<str>,
    grant: Arc<HttpGrant>,
}

impl HttpPolicy {
    pub fn new(backend: Arc<str>, grant: Arc<HttpGrant>) -> Self {
        Self { backend, grant }
    }
}

type ResponseFuture = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), HttpError>> + Send>,
                ),
                HttpError,
            >,
        > + Send,
>;

impl WasiHttpHooks for HttpPolicy {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> ResponseFuture {
        let backend = self.backend.clone();
        let grant = self.grant.clone();
        let uri = request.uri().clone();
        let host = uri.host().unwrap_or("").to_owned();
        if uri.scheme_str() != Some("http") {
            tracing::warn!(backend = %backend, %host, scheme = uri.scheme_str().unwrap_or(""), "plugin HTTP request denied: only plain http is supported for plugins so far");
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        }
        let port = uri.port_u16().unwrap_or(80);
        let Some(entry) = grant.entry_for(&host, port).map(str::to_owned) else {
            tracing::warn!(backend = %backend, %host, port, "plugin HTTP request denied: host not granted to this backend");
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        };
        Box::new(async move {
            let literal = split_host_port(&entry).0.parse::<IpAddr>().is_ok();
            let addrs: Vec<_> = tokio::net::lookup_host((
                host.trim_start_matches('[').trim_end_matches(']'),
                port,
            ))
            .await
            .map_err(|_| HttpError::DnsError {
                rcode: None,
                info_code: None,
            })
            .inspect_err(
                |_| tracing::warn!(backend = %backend, %host, "plugin HTTP: name does not resolve"),
            )?
            .collect();
            let Some(addr) = addrs.first().copied() else {
                return Err(HttpError::DestinationNotFound);
            };
            if !literal && !grant.allow_private && addrs.iter().any(|a| is_internal(a.ip())) {
                tracing::warn!(backend = %backend, %host, address = %addr.ip(), "plugin HTTP request denied: a granted name resolves to an internal address (set http.allow_private for an on-premises CA)");
                return Err(HttpError::DestinationIpProhibited);
            }
            let stream = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(HttpError::Connect)?;
            // The body is sent whole with a Content-Length: servers that do not read chunked
            // requests (several SCEP servers) then work too, and a plugin cannot stream an
            // unbounded upload.
            let (mut parts, body) = request.into_parts();
            let body = Limited::new(body, grant.max_response_bytes)
                .collect()
                .await
                .map_err(|_| HttpError::HttpRequestBodySize(None))?
                .to_bytes();
            parts.headers.insert(
                http::header::CONTENT_LENGTH,
                http::HeaderValue::from(body.len()),
            );
            parts.headers.remove(http::header::TRANSFER_ENCODING);
            let mut request = http::Request::from_parts(parts, Full::new(body));
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .map_err(HttpError::Hyper)?;
            tokio::spawn(conn);
            // Origin form on the wire; the Host header stays as the plugin set it (or is added).
            if !request.headers().contains_key(http::header::HOST) {
                if let Ok(v) = http::HeaderValue::from_str(&format!("{host}:{port}")) {
                    request.headers_mut().insert(http::header::HOST, v);
                }
            }
            *request.uri_mut() = http::Uri::builder()
                .path_and_query(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
                .build()
                .map_err(|_| HttpError::HttpRequestUriInvalid)?;
            let response = sender
                .send_request(request)
                .await
                .map_err(HttpError::Hyper)?;
            let (parts, body) = response.into_parts();
            let max = grant.max_response_bytes;
            let bytes: Bytes = Limited::new(body, max)
                .collect()
                .await
                .map_err(|_| {
                    tracing::warn!(backend = %backend, %host, max, "plugin HTTP response refused: larger than http.max_response_bytes");
                    HttpError::HttpResponseBodySize(Some(max as u64))
                })?
                .to_bytes();
            let body = Full::new(bytes)
                .map_err(|never| match never {})
                .boxed_unsync();
            Ok((
                http::Response::from_parts(parts, body),
                Box::new(async { Ok(()) })
                    as Box<dyn Future<Output = Result<(), HttpError>> + Send>,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_match_host_and_port() {
        let g = HttpGrant {
            allow: vec![
                "ndes.corp.example".into(),
                "127.0.0.1:8080".into(),
                "[::1]:9000".into(),
            ],
            ..HttpGrant::default()
        };
        assert!(g.entry_for("NDES.corp.example", 80).is_some());
        assert!(g.entry_for("ndes.corp.example", 8443).is_some());
        assert!(g.entry_for("127.0.0.1", 8080).is_some());
        assert!(g.entry_for("127.0.0.1", 8081).is_none());
        assert!(g.entry_for("[::1]", 9000).is_some());
        assert!(g.entry_for("evil.example", 80).is_none());
        assert!(g.entry_for("ndes.corp.example.evil.example", 80).is_none());
    }

    #[test]
    fn internal_addresses() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_internal(a.parse().unwrap()), "{a}");
        }
        for a in ["8.8.8.8", "1.1.1.1", "2001:4860:4860::8888"] {
            assert!(!is_internal(a.parse().unwrap()), "{a}");
        }
    }
}
