//! Outgoing HTTP from plugins goes through [`HttpPolicy::send_request`]: only to the hosts the
//! administrator granted the backend instance (`backends.NAME.http.allow`), checked on every
//! request — a redirect is a new request from the plugin, so it is checked again. A granted
//! *name* that resolves to a loopback, private, link-local (cloud metadata) or otherwise
//! internal address is refused unless `allow_private` is set; an IP literal in the grant is the
//! administrator naming that address and is allowed. The host connects to the address it
//! checked (no second lookup to rebind), and reads at most `max_response_bytes` of the answer.
//!
//! Through the site's proxy (`[proxy]`, unless `no_proxy` names the host) the host opens a
//! tunnel to the granted *name*: behind a proxy the host often cannot resolve outside names,
//! and the proxy decides where a name leads (its own rules apply; `allow_private` is about
//! direct connections).
//!
//! - `tls`: https, by the host's rustls, with the backend's own trust anchors or the system's.
//! - `auth`: credentials the administrator granted the backend, used by the host to answer a
//!   server's `401` challenge (Basic, or NTLM on one connection) — the plugin never sees them.
//! - `ntlm`: the NTLM message framing.

mod auth;
pub(crate) mod ntlm;
pub mod tls;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use serde::Deserialize;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

pub use auth::{AuthScheme, CredentialConfig};

use crate::crypto::AlgorithmPolicy;
use crate::proxy::{split_host_port, Proxy};

/// Longest wait for a TCP connection and TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What one backend instance may reach over HTTP, as the administrator wrote it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HttpGrant {
    /// `host` (any port) or `host:port`; host names compare without case. Each entry is
    /// checked as it is read (`check_allow_entry`).
    #[serde(default, deserialize_with = "allow_entries")]
    pub allow: Vec<String>,
    /// Let granted names resolve to loopback/private/link-local addresses (an on-premises CA
    /// on a private network).
    #[serde(default)]
    pub allow_private: bool,
    /// Largest response body read (and request body sent), in bytes.
    #[serde(default = "default_max_response")]
    pub max_response_bytes: usize,
    /// PEM file of the CA certificates this backend trusts for https (only these). Without it,
    /// the system's trust store (`/etc/ssl/certs`).
    #[serde(default)]
    pub trust_anchors: Option<crate::config::ConfigPath>,
    /// Credentials the host answers a granted server's authentication challenge with.
    #[serde(default)]
    pub credentials: Vec<CredentialConfig>,
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
            trust_anchors: None,
            credentials: Vec::new(),
        }
    }
}

/// How an `http.allow` entry is written, for the errors that refuse one.
const ALLOW_SHAPE: &str = "write a host name or IP address, alone (any port) or with its \
     port: ca.example.com, ca.example.com:443, 10.0.0.5, [2001:db8::5]:8443";

/// `http.allow`, each entry checked where it is written in the file: the check runs inside
/// the entry's own visitor, so that toml's error carries the entry's place, not the array's.
fn allow_entries<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct Entry(String);
    impl<'de> Deserialize<'de> for Entry {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Checked;
            impl serde::de::Visitor<'_> for Checked {
                type Value = Entry;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a host or host:port")
                }
                fn visit_str<E: serde::de::Error>(self, entry: &str) -> Result<Entry, E> {
                    check_allow_entry(entry).map_err(E::custom)?;
                    Ok(Entry(entry.to_owned()))
                }
            }
            d.deserialize_str(Checked)
        }
    }
    Ok(Vec::<Entry>::deserialize(d)?
        .into_iter()
        .map(|e| e.0)
        .collect())
}

/// Refuses an `http.allow` entry that is not `host` or `host:port`. Read loosely, a URL
/// (`https://ca.example.com`) granted a host named `https`, and a port that is not one
/// (`ca.example.com:99999`) granted every port; both only showed later, as a plugin's
/// requests refused, or not refused.
fn check_allow_entry(entry: &str) -> Result<(), String> {
    if let Some((_, rest)) = entry.split_once("://") {
        let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
        return Err(format!(
            "{entry:?} is a URL, not a host; {ALLOW_SHAPE} (here {host:?})"
        ));
    }
    if entry.contains('*') {
        return Err(format!(
            "{entry:?}: a wildcard grants nothing here, list each host; {ALLOW_SHAPE}"
        ));
    }
    if let Some(c) = entry
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | '?' | '#' | '@'))
    {
        return Err(format!(
            "{entry:?} is not a host ({c:?} in it); {ALLOW_SHAPE}"
        ));
    }
    let (host, port) = match entry.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((ip, after)) if ip.parse::<std::net::Ipv6Addr>().is_ok() => {
                match after.strip_prefix(':') {
                    Some(port) => (ip, Some(port)),
                    None if after.is_empty() => (ip, None),
                    None => {
                        return Err(format!(
                            "{entry:?}: {after:?} after the address; {ALLOW_SHAPE}"
                        ))
                    }
                }
            }
            _ => {
                return Err(format!(
                    "{entry:?} is not an IPv6 address in brackets; {ALLOW_SHAPE}"
                ))
            }
        },
        None => match entry.rsplit_once(':') {
            // One colon: `host:port`. More: an IPv6 address without a port.
            Some((host, port)) if !host.contains(':') => (host, Some(port)),
            _ => (entry, None),
        },
    };
    if host.is_empty() {
        return Err(format!("{entry:?} names no host; {ALLOW_SHAPE}"));
    }
    match port.map(crate::proxy::port_number) {
        None | Some(Ok(_)) => Ok(()),
        Some(Err(why)) => Err(format!("{entry:?}: {why}; {ALLOW_SHAPE}")),
    }
}

/// `host` or `host:port` (IPv6 in brackets) matches `host:port`?
pub(crate) fn entry_matches(entry: &str, host: &str, port: u16) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let (h, p) = split_host_port(entry);
    h.eq_ignore_ascii_case(host) && p.is_none_or(|p| p == port)
}

impl HttpGrant {
    /// The grant entry that permits `host:port`, if any.
    fn entry_for(&self, host: &str, port: u16) -> Option<&str> {
        self.allow
            .iter()
            .find(|entry| entry_matches(entry, host, port))
            .map(String::as_str)
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

/// Why a backend's HTTP grant cannot be used. Each names the setting to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GrantError {
    #[error("http.credentials[{index}] ({host}): host is not one of http.allow ({allow})")]
    CredentialHost {
        index: usize,
        host: String,
        allow: String,
    },
    #[error("http.credentials[{index}] ({host}): username is empty")]
    EmptyUsername { index: usize, host: String },
    #[error("http.credentials[{index}] ({host})")]
    Refused {
        index: usize,
        host: String,
        #[source]
        source: crate::crypto::CryptoError,
    },
    #[error("http.credentials[{index}] ({host})")]
    Password {
        index: usize,
        host: String,
        #[source]
        source: crate::secret::SecretError,
    },
    #[error("http.trust_anchors {path}")]
    AnchorsFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("http.trust_anchors {path}: certificate {number}")]
    Anchor {
        path: std::path::PathBuf,
        number: usize,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("http.trust_anchors {path}: no PEM CERTIFICATE blocks in the file")]
    NoAnchors { path: std::path::PathBuf },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// A backend instance's HTTP grant made ready to use: credentials read, trust anchors loaded.
/// Built once when the backend loads, so a missing secret or a bad PEM file stops the load with
/// the reason instead of failing a job later.
pub struct HttpAccess {
    pub grant: HttpGrant,
    credentials: Vec<auth::Credential>,
    tls: tls::Trust,
    policy: AlgorithmPolicy,
    proxy: Option<Arc<Proxy>>,
}

impl std::fmt::Debug for HttpAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpAccess")
            .field("grant", &self.grant)
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

impl Default for HttpAccess {
    fn default() -> Self {
        Self {
            grant: HttpGrant::default(),
            credentials: Vec::new(),
            tls: tls::Trust::System(Default::default()),
            policy: AlgorithmPolicy::default(),
            proxy: None,
        }
    }
}

impl HttpAccess {
    /// Reads the grant's secrets and trust anchors. Errors name the setting.
    pub fn new(
        grant: HttpGrant,
        policy: AlgorithmPolicy,
        proxy: Option<Arc<Proxy>>,
    ) -> Result<Self, GrantError> {
        let credentials = grant
            .credentials
            .iter()
            .enumerate()
            .map(|(i, c)| auth::Credential::resolve(i, c, &grant, &policy))
            .collect::<Result<Vec<_>, _>>()?;
        let tls = tls::Trust::from_grant(&grant, &policy)?;
        Ok(Self {
            grant,
            credentials,
            tls,
            policy,
            proxy,
        })
    }

    fn credential_for(&self, host: &str, port: u16) -> Option<&auth::Credential> {
        self.credentials.iter().find(|c| c.matches(host, port))
    }
}

/// The outbound-HTTP rules of one backend instance.
pub struct HttpPolicy {
    backend: Arc<str>,
    access: Arc<HttpAccess>,
}

impl HttpPolicy {
    pub fn new(backend: Arc<str>, access: Arc<HttpAccess>) -> Self {
        Self { backend, access }
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
        let access = self.access.clone();
        Box::new(async move {
            let answer = send(&backend, &access, request).await?;
            let body = Full::new(answer.body)
                .map_err(|never| match never {})
                .boxed_unsync();
            Ok((
                http::Response::from_parts(answer.parts, body),
                Box::new(async { Ok(()) })
                    as Box<dyn Future<Output = Result<(), HttpError>> + Send>,
            ))
        })
    }
}

/// A whole response.
pub(super) struct Answer {
    parts: http::response::Parts,
    body: Bytes,
}

/// The plugin's request, kept whole so it can be sent again with credentials.
struct Outgoing {
    method: http::Method,
    /// Origin form: path and query.
    target: http::Uri,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Outgoing {
    fn request(&self, authorization: Option<HeaderValue>) -> http::Request<Full<Bytes>> {
        let mut request = http::Request::new(Full::new(self.body.clone()));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.target.clone();
        *request.headers_mut() = self.headers.clone();
        if let Some(value) = authorization {
            request
                .headers_mut()
                .insert(http::header::AUTHORIZATION, value);
        }
        request
    }
}

/// Where a connection goes: the checked address, or a granted name through the proxy.
#[derive(Clone)]
enum Endpoint {
    Direct(SocketAddr),
    Proxied {
        proxy: Arc<Proxy>,
        host: String,
        port: u16,
    },
}

/// One HTTP/1.1 connection to the checked address, reopened when the server closes it (except
/// where a handshake needs the same connection).
struct Connection {
    endpoint: Endpoint,
    tls: Option<tls::Target>,
    sender: SendRequest<Full<Bytes>>,
}

impl Connection {
    async fn open(endpoint: Endpoint, tls: Option<tls::Target>) -> Result<Self, HttpError> {
        let sender = Self::handshake(&endpoint, tls.as_ref()).await?;
        Ok(Self {
            endpoint,
            tls,
            sender,
        })
    }

    async fn handshake(
        endpoint: &Endpoint,
        tls: Option<&tls::Target>,
    ) -> Result<SendRequest<Full<Bytes>>, HttpError> {
        let connect = async {
            let tcp = match endpoint {
                Endpoint::Direct(addr) => tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(HttpError::Connect)?,
                Endpoint::Proxied { proxy, host, port } => proxy
                    .tunnel(host, *port)
                    .await
                    .map_err(|e| HttpError::Connect(std::io::Error::other(e.to_string())))?,
            };
            match tls {
                None => {
                    let (sender, conn) =
                        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                            .await
                            .map_err(HttpError::Hyper)?;
                    tokio::spawn(conn);
                    Ok(sender)
                }
                Some(target) => {
                    let stream = target.connect(tcp).await?;
                    let (sender, conn) =
                        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                            .await
                            .map_err(HttpError::Hyper)?;
                    tokio::spawn(conn);
                    Ok(sender)
                }
            }
        };
        tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| HttpError::ConnectionTimeout)?
    }

    fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Sends `request` and reads the whole answer, at most `max` bytes of body. With
    /// `same_connection`, a closed connection is an error instead of being reopened.
    async fn exchange(
        &mut self,
        request: http::Request<Full<Bytes>>,
        max: usize,
        same_connection: bool,
    ) -> Result<Answer, HttpError> {
        if self.sender.ready().await.is_err() {
            if same_connection {
                return Err(HttpError::InternalError(Some(
                    "the server closed the connection in the middle of an authentication handshake"
                        .into(),
                )));
            }
            self.sender = Self::handshake(&self.endpoint, self.tls.as_ref()).await?;
        }
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(HttpError::Hyper)?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, max)
            .collect()
            .await
            .map_err(|_| HttpError::HttpResponseBodySize(Some(max as u64)))?
            .to_bytes();
        Ok(Answer { parts, body })
    }
}

/// The address a granted name resolves to, refused when it is internal and the grant does
/// not allow that (an IP literal in the grant is the administrator naming that address).
async fn checked_address(
    backend: &str,
    grant: &HttpGrant,
    entry: &str,
    host: &str,
    port: u16,
) -> Result<SocketAddr, HttpError> {
    let literal = split_host_port(entry).0.parse::<IpAddr>().is_ok();
    let addrs: Vec<_> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|_| {
            tracing::warn!(backend, %host, "plugin HTTP: name does not resolve");
            HttpError::DnsError {
                rcode: None,
                info_code: None,
            }
        })?
        .collect();
    let Some(addr) = addrs.first().copied() else {
        return Err(HttpError::DestinationNotFound);
    };
    if !literal && !grant.allow_private && addrs.iter().any(|a| is_internal(a.ip())) {
        tracing::warn!(backend, %host, address = %addr.ip(), "plugin HTTP request denied: a granted name resolves to an internal address (set http.allow_private for an on-premises CA)");
        return Err(HttpError::DestinationIpProhibited);
    }
    Ok(addr)
}

/// Checks a plugin's request against the grant and sends it.
async fn send(
    backend: &str,
    access: &HttpAccess,
    request: http::Request<WasiBody>,
) -> Result<Answer, HttpError> {
    let grant = &access.grant;
    let uri = request.uri().clone();
    let host = uri.host().unwrap_or("").to_owned();
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        other => {
            tracing::warn!(backend, %host, scheme = other.unwrap_or(""), "plugin HTTP request denied: only http and https");
            return Err(HttpError::HttpRequestDenied);
        }
    };
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let Some(entry) = grant.entry_for(&host, port) else {
        tracing::warn!(backend, %host, port, "plugin HTTP request denied: host not granted to this backend");
        return Err(HttpError::HttpRequestDenied);
    };
    let bare_host = host.trim_start_matches('[').trim_end_matches(']');
    let endpoint = match &access.proxy {
        Some(proxy) if !proxy.bypasses(bare_host, port) => Endpoint::Proxied {
            proxy: proxy.clone(),
            host: bare_host.to_owned(),
            port,
        },
        _ => Endpoint::Direct(checked_address(backend, grant, entry, bare_host, port).await?),
    };

    // The body is sent whole with a Content-Length: servers that do not read chunked requests
    // (several SCEP servers) then work too, a plugin cannot stream an unbounded upload, and the
    // request can be sent again to answer an authentication challenge.
    let max = grant.max_response_bytes;
    let (mut parts, body) = request.into_parts();
    let body = Limited::new(body, max)
        .collect()
        .await
        .map_err(|_| HttpError::HttpRequestBodySize(None))?
        .to_bytes();
    parts
        .headers
        .insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    parts.headers.remove(http::header::TRANSFER_ENCODING);
    // The Host header stays as the plugin set it, or is the URI's authority.
    if !parts.headers.contains_key(http::header::HOST) {
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or(bare_host);
        if let Ok(v) = HeaderValue::from_str(authority) {
            parts.headers.insert(http::header::HOST, v);
        }
    }
    let outgoing = Outgoing {
        method: parts.method,
        target: http::Uri::builder()
            .path_and_query(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
            .build()
            .map_err(|_| HttpError::HttpRequestUriInvalid)?,
        headers: parts.headers,
        body,
    };

    let target = if https {
        Some(access.tls.target(bare_host, &access.policy).inspect_err(
            |e| tracing::warn!(backend, %host, "plugin HTTPS request not sent: {e:?}"),
        )?)
    } else {
        None
    };
    let mut connection = Connection::open(endpoint, target).await.inspect_err(
        |e| tracing::warn!(backend, %host, port, "plugin HTTP: connecting failed: {e}"),
    )?;
    let answer = connection
        .exchange(outgoing.request(None), max, false)
        .await
        .inspect_err(|e| {
            if matches!(e, HttpError::HttpResponseBodySize(_)) {
                tracing::warn!(backend, %host, max, "plugin HTTP response refused: larger than http.max_response_bytes");
            }
        })?;
    if answer.parts.status != http::StatusCode::UNAUTHORIZED {
        return Ok(answer);
    }
    match access.credential_for(bare_host, port) {
        Some(credential) => {
            credential
                .answer(
                    backend,
                    answer,
                    &outgoing,
                    &mut connection,
                    max,
                    &access.policy,
                )
                .await
        }
        None => Ok(answer),
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
    fn an_allow_entry_that_is_not_a_host_is_refused_where_it_is_written() {
        let grant: HttpGrant = crate::config::parse(
            std::path::Path::new("c.toml"),
            "allow = [\"ca.example.com\", \"CA.example.com:443\", \"10.0.0.5\", \
             \"2001:db8::5\", \"[2001:db8::5]:8443\", \"[::1]\"]\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(grant.allow.len(), 6);
        assert!(grant.entry_for("2001:db8::5", 1).is_some());
        for (entry, why) in [
            ("https://ca.example.com/certsrv", "is a URL, not a host"),
            (
                "https://ca.example.com/certsrv",
                "(here \"ca.example.com\")",
            ),
            (
                "ca.example.com:99999",
                "\"99999\" is not a port (1 to 65535)",
            ),
            ("ca.example.com:0", "\"0\" is not a port"),
            ("ca.example.com:https", "\"https\" is not a port"),
            ("*.example.com", "a wildcard grants nothing here"),
            ("ca.example.com/certsrv", "is not a host ('/' in it)"),
            ("user@ca.example.com", "is not a host ('@' in it)"),
            ("ca example", "is not a host (' ' in it)"),
            ("", "names no host"),
            (":443", "names no host"),
            ("[ca.example.com]:443", "is not an IPv6 address in brackets"),
            ("[::1]8443", "after the address"),
        ] {
            // The caret is on the entry, on its own line in the array.
            let text = format!("# the CA\nallow = [\n  \"ok.example\",\n  \"{entry}\",\n]\n");
            let e = crate::config::parse::<HttpGrant>(std::path::Path::new("c.toml"), &text)
                .unwrap_err()
                .to_string();
            assert!(e.contains(why), "{entry}: {e}");
            assert!(e.contains("line 4"), "{entry}: {e}");
            assert!(e.contains("4 |   \""), "{entry}: {e}");
            assert!(e.contains("ca.example.com:443, 10.0.0.5"), "{entry}: {e}");
        }
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
