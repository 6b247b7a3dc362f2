//! The site's outbound HTTP proxy. Enterprise connectors reach their cloud service through
//! one, so every outbound connection certconn makes — to the upstream service and for the
//! plugins' granted HTTP — opens through it: `CONNECT host:port` (RFC 9110 §9.3.6), with
//! Basic credentials from a protected file when the proxy asks for them, then TLS (or plain
//! HTTP, to loopback) inside the tunnel. Destinations in `no_proxy` are reached directly.
//!
//! A tunnel for plain HTTP too, rather than absolute-form requests: one code path, and the
//! proxy sees nothing but the destination in either case.
//!
//! A leaf: it knows configuration paths, protected files and TCP; nothing of who calls it.

mod no_proxy;

use std::sync::Arc;

use base64::Engine;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use zeroize::Zeroizing;

use crate::config::ConfigPath;

/// The longest answer to CONNECT certconn reads before the tunnel.
const MAX_CONNECT_ANSWER: usize = 16 * 1024;

/// `[proxy]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// `http://host:port` of the proxy. Absent: no proxy (unless `from_env`).
    pub url: Option<toml::Spanned<String>>,
    /// File holding `user:password` for the proxy's Basic authentication (mode 0600).
    pub credentials_file: Option<ConfigPath>,
    /// Destinations reached directly: a host name (and its subdomains; also written
    /// `.domain` or `*.domain`), an IP address, a CIDR block, either of the first two with
    /// `:port`, or `*` for all ([`no_proxy`]'s rules, which are curl's).
    #[serde(default)]
    pub no_proxy: Vec<toml::Spanned<String>>,
    /// Without `url`: take the proxy from `HTTPS_PROXY` (or `https_proxy`; `user:password@` in
    /// it is used when there is no `credentials_file`) and add the entries of `NO_PROXY` (or
    /// `no_proxy`), as other tools on the host do.
    #[serde(default)]
    pub from_env: bool,
}

/// Why the proxy settings cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyConfigError {
    #[error("{field}: {url:?}: {reason}")]
    Url {
        field: &'static str,
        url: String,
        reason: String,
    },
    #[error("proxy.credentials_file")]
    Credentials(#[source] crate::files::FileError),
    #[error("proxy.credentials_file: {0}: not `user:password` on one line")]
    CredentialsFormat(std::path::PathBuf),
    #[error("proxy.no_proxy: {entry:?}: {reason}; {}", no_proxy::SHAPES)]
    NoProxy { entry: String, reason: String },
}

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    #[error("connecting to {target}: {source}")]
    Direct {
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to the proxy {proxy}: {source}")]
    Unreachable {
        proxy: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the proxy {proxy} refused CONNECT to {target}: {status}")]
    Refused {
        proxy: String,
        target: String,
        status: String,
    },
    #[error("the proxy {proxy} asks for credentials to reach {target} ({status}): set proxy.credentials_file")]
    CredentialsNeeded {
        proxy: String,
        target: String,
        status: String,
    },
    #[error("the proxy {proxy} did not take the credentials of proxy.credentials_file to reach {target} ({status})")]
    CredentialsRefused {
        proxy: String,
        target: String,
        status: String,
    },
    #[error(
        "the proxy {proxy} answered CONNECT to {target} with something that is not HTTP: {reason}"
    )]
    Garbled {
        proxy: String,
        target: String,
        reason: String,
    },
}

/// A configured proxy, ready to open tunnels.
pub struct Proxy {
    /// `http://host:port`, for messages (never with credentials).
    url: String,
    host: String,
    port: u16,
    /// `Basic …`.
    authorization: Option<Zeroizing<String>>,
    bypass: Vec<no_proxy::Entry>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("url", &self.url)
            .field("credentials", &self.authorization.as_ref().map(|_| "[set]"))
            .field("bypass", &self.bypass)
            .finish()
    }
}

impl ProxyConfig {
    /// The proxy's URL: `url`, else the environment's when `from_env`.
    fn chosen_url(&self) -> Option<(&'static str, String)> {
        if let Some(url) = &self.url {
            return Some(("proxy.url", url.get_ref().clone()));
        }
        if self.from_env {
            for var in ["HTTPS_PROXY", "https_proxy"] {
                if let Ok(v) = std::env::var(var) {
                    if !v.trim().is_empty() {
                        return Some(("HTTPS_PROXY", v.trim().to_owned()));
                    }
                }
            }
        }
        None
    }

    /// `url` is `http://host:port` without credentials in it, and every `no_proxy` entry is
    /// one, each refused at its place. (A proxy from the environment is checked when certconn
    /// starts: the environment of `check-config` may not be the daemon's.)
    pub fn check(&self, cx: &crate::config::Checker<'_>) -> Result<(), crate::config::ConfigError> {
        if let Some(url) = &self.url {
            if let Err(ProxyConfigError::Url { reason, .. }) = parse_url("proxy.url", url.get_ref())
            {
                return Err(cx.at_hiding_value(url.span(), "proxy.url", reason));
            }
        }
        self.no_proxy_entries().map_err(|(entry, reason)| {
            cx.at(
                entry.span(),
                "proxy.no_proxy",
                format!("{:?}: {reason}; {}", entry.get_ref(), no_proxy::SHAPES),
            )
        })?;
        Ok(())
    }

    /// The `no_proxy` entries read, or the first that is none, with why.
    fn no_proxy_entries(&self) -> Result<Vec<no_proxy::Entry>, (&toml::Spanned<String>, String)> {
        self.no_proxy
            .iter()
            .map(|entry| no_proxy::Entry::parse(entry.get_ref().trim()).map_err(|why| (entry, why)))
            .collect()
    }
}

/// The entries of `NO_PROXY` (variable `var`) certconn can read. The variable is the host's,
/// shared with other tools that may read more, so an entry certconn cannot read is left out
/// with a warning rather than stopping it; empty entries (`a,,b`) are nothing.
fn environment_entries(var: &str, value: &str) -> Vec<no_proxy::Entry> {
    value
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .filter_map(|e| match no_proxy::Entry::parse(e) {
            Ok(entry) => Some(entry),
            Err(reason) => {
                tracing::warn!(
                    "{var}: {e:?} is left out: {reason}; connections to it go through the proxy"
                );
                None
            }
        })
        .collect()
}

/// A proxy URL's parts; `userinfo` (percent-decoded `user:password`) only from the environment.
struct ProxyUrl {
    host: String,
    port: u16,
    userinfo: Option<Zeroizing<String>>,
}

/// `http://host:port` → (host, port). Credentials in the URL are refused in the config (it is
/// not a secret store), and taken from `HTTPS_PROXY`, where tools put them.
fn parse_url(field: &'static str, url: &str) -> Result<(String, u16), ProxyConfigError> {
    parse_full(field, url).map(|u| (u.host, u.port))
}

fn parse_full(field: &'static str, url: &str) -> Result<ProxyUrl, ProxyConfigError> {
    let bad = |reason: &str| ProxyConfigError::Url {
        field,
        url: redact(url),
        reason: reason.to_owned(),
    };
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| bad("the proxy URL must be http://host:port (a TLS connection to the proxy itself is not supported; the tunnel through it is TLS)"))?;
    let authority = rest.trim_end_matches('/');
    let (userinfo, authority) = match authority.rsplit_once('@') {
        Some(_) if field == "proxy.url" => return Err(bad(
            "credentials do not belong in the URL: put `user:password` in proxy.credentials_file",
        )),
        Some((userinfo, authority)) => (
            Some(
                percent_decode(userinfo)
                    .ok_or_else(|| bad("its credentials are not valid percent-encoded UTF-8"))?,
            ),
            authority,
        ),
        None => (None, authority),
    };
    if authority.contains('/') {
        return Err(bad("a proxy URL has no path"));
    }
    let (host, port) = authority
        .rsplit_once(':')
        .filter(|(h, _)| !h.is_empty())
        .ok_or_else(|| bad("the URL needs host and port (e.g. http://proxy.example.com:3128)"))?;
    let port = port_number(port).map_err(|why| bad(&why))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok(ProxyUrl {
        host: host.to_owned(),
        port,
        userinfo,
    })
}

/// `%XX` escapes decoded (RFC 3986 userinfo); `None` when the result is not UTF-8.
fn percent_decode(text: &str) -> Option<Zeroizing<String>> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .ok()
        .map(|decoded| Zeroizing::new(decoded.into_owned()))
}

/// A URL as it may be shown: any `user:password@` replaced.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}[credentials]@{}", &url[..scheme + 3], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

impl Proxy {
    /// The proxy `config` describes, with its credentials read; `None` when no proxy is set.
    pub fn open(config: &ProxyConfig) -> Result<Option<Arc<Self>>, ProxyConfigError> {
        let Some((field, url)) = config.chosen_url() else {
            return Ok(None);
        };
        let ProxyUrl {
            host,
            port,
            userinfo,
        } = parse_full(field, &url)?;
        let basic = |credentials: &str| {
            let encoded = Zeroizing::new(
                base64::engine::general_purpose::STANDARD.encode(credentials.as_bytes()),
            );
            crate::secret::credential("Basic", &encoded)
        };
        let authorization = match &config.credentials_file {
            Some(path) => {
                let raw =
                    crate::files::read_protected(path).map_err(ProxyConfigError::Credentials)?;
                let text = std::str::from_utf8(&raw)
                    .map_err(|_| ProxyConfigError::CredentialsFormat(path.to_path_buf()))?
                    .trim();
                if !text.contains(':') || text.contains('\n') {
                    return Err(ProxyConfigError::CredentialsFormat(path.to_path_buf()));
                }
                Some(basic(text))
            }
            None => userinfo.as_deref().map(|u| basic(u)),
        };
        let mut bypass =
            config
                .no_proxy_entries()
                .map_err(|(entry, reason)| ProxyConfigError::NoProxy {
                    entry: entry.get_ref().clone(),
                    reason,
                })?;
        if config.from_env {
            for var in ["NO_PROXY", "no_proxy"] {
                if let Ok(v) = std::env::var(var) {
                    bypass.extend(environment_entries(var, &v));
                }
            }
        }
        Ok(Some(Arc::new(Self {
            url: format!("http://{}", authority(&host, port)),
            host,
            port,
            authorization,
            bypass,
        })))
    }

    /// `http://host:port` of the proxy.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether `host:port` is reached directly (`no_proxy`).
    pub fn bypasses(&self, host: &str, port: u16) -> bool {
        self.bypass.iter().any(|entry| entry.covers(host, port))
    }

    /// A tunnel to `host:port` through the proxy.
    pub async fn tunnel(&self, host: &str, port: u16) -> Result<TcpStream, ProxyError> {
        let target = authority(host, port);
        let mut stream = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|source| ProxyError::Unreachable {
                proxy: self.url.clone(),
                source,
            })?;
        let request = connect_request(&target, self.authorization.as_ref().map(|a| a.as_str()));
        let unreachable = |source| ProxyError::Unreachable {
            proxy: self.url.clone(),
            source,
        };
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(unreachable)?;
        let head = read_head(&mut stream)
            .await
            .map_err(|reason| ProxyError::Garbled {
                proxy: self.url.clone(),
                target: target.clone(),
                reason,
            })?;
        let status_line = head.lines().next().unwrap_or_default().trim().to_owned();
        let code = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse::<u16>().ok());
        match code {
            Some(200..=299) if status_line.starts_with("HTTP/1.") => Ok(stream),
            Some(407) if self.authorization.is_some() => Err(ProxyError::CredentialsRefused {
                proxy: self.url.clone(),
                target,
                status: status_line,
            }),
            Some(407) => Err(ProxyError::CredentialsNeeded {
                proxy: self.url.clone(),
                target,
                status: status_line,
            }),
            Some(_) => Err(ProxyError::Refused {
                proxy: self.url.clone(),
                target,
                status: status_line,
            }),
            None => Err(ProxyError::Garbled {
                proxy: self.url.clone(),
                target,
                reason: format!("status line {status_line:?}"),
            }),
        }
    }
}

/// Opens a TCP connection to `host:port`: through `proxy` when there is one that does not
/// bypass the destination, else directly.
pub async fn connect(
    proxy: Option<&Proxy>,
    host: &str,
    port: u16,
) -> Result<TcpStream, ProxyError> {
    match proxy {
        Some(p) if !p.bypasses(host, port) => p.tunnel(host, port).await,
        _ => TcpStream::connect((host.trim_start_matches('[').trim_end_matches(']'), port))
            .await
            .map_err(|source| ProxyError::Direct {
                target: authority(host, port),
                source,
            }),
    }
}

/// `host` or `host:port` (IPv6 in brackets): the host and the port, if one is given. The one
/// reader of such entries: plugins' HTTP grants and `no_proxy`.
pub fn split_host_port(entry: &str) -> (&str, Option<u16>) {
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

/// A port a setting names after a host's colon: 1 to 65535, or why not.
pub fn port_number(text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(port @ 1..) => Ok(port),
        _ => Err(format!("{text:?} is not a port (1 to 65535)")),
    }
}

/// `host:port`, with an IPv6 address in brackets.
pub fn authority(host: &str, port: u16) -> String {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The proxy's answer head, up to the blank line, read a byte at a time so that nothing of
/// the tunnel behind it is consumed.
async fn read_head(stream: &mut TcpStream) -> Result<String, String> {
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_CONNECT_ANSWER {
            return Err(format!(
                "no end of the answer's head in {MAX_CONNECT_ANSWER} bytes"
            ));
        }
        match stream.read(&mut byte).await {
            Ok(0) => {
                return Err(if head.is_empty() {
                    "it closed the connection without an answer".into()
                } else {
                    "it closed the connection in the middle of its answer".into()
                })
            }
            Ok(_) => head.push(byte[0]),
            Err(e) => return Err(e.to_string()),
        }
    }
    String::from_utf8(head).map_err(|_| "its answer is not text".into())
}

/// The `CONNECT` request's head, with the proxy's credentials when there are any. Sized before
/// it is filled and zeroized when dropped: a string that grew would free its smaller copies of
/// the credentials unzeroized.
fn connect_request(target: &str, authorization: Option<&str>) -> Zeroizing<String> {
    const AUTH_NAME: &str = "Proxy-Authorization: ";
    let head = format!(
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: certconn/{}\r\n",
        env!("CARGO_PKG_VERSION")
    );
    let auth_len = authorization.map_or(0, |auth| AUTH_NAME.len() + auth.len() + 2);
    let mut request = Zeroizing::new(String::with_capacity(head.len() + auth_len + 2));
    request.push_str(&head);
    if let Some(auth) = authorization {
        request.push_str(AUTH_NAME);
        request.push_str(auth);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxy(bypass: &[&str]) -> Proxy {
        Proxy {
            url: "http://proxy:3128".into(),
            host: "proxy".into(),
            port: 3128,
            authorization: None,
            bypass: bypass
                .iter()
                .map(|s| no_proxy::Entry::parse(s).unwrap())
                .collect(),
        }
    }

    #[test]
    fn a_connect_request_with_credentials_is_allocated_once_at_its_length() {
        let auth = crate::secret::credential("Basic", "YWxpY2U6czNjcmV0");
        let request = connect_request("ca.example:443", Some(auth.as_str()));
        assert!(request.starts_with("CONNECT ca.example:443 HTTP/1.1\r\nHost: ca.example:443\r\n"));
        assert!(request.ends_with("\r\nProxy-Authorization: Basic YWxpY2U6czNjcmV0\r\n\r\n"));
        assert_eq!(request.len(), request.capacity());
        let bare = connect_request("ca.example:443", None);
        assert!(!bare.contains("Proxy-Authorization") && bare.ends_with("\r\n\r\n"));
        assert_eq!(bare.len(), bare.capacity());
    }

    #[test]
    fn no_proxy_entries_match_hosts_domains_addresses_and_ports() {
        let p = proxy(&[
            "localhost",
            ".corp.example",
            "example.com",
            "10.0.0.7",
            "ca.lan:8443",
            "[::1]",
        ]);
        assert!(p.bypasses("localhost", 80));
        assert!(p.bypasses("ndes.corp.example", 443));
        assert!(p.bypasses("corp.example", 443));
        assert!(!p.bypasses("evilcorp.example", 443));
        assert!(p.bypasses("example.com", 443) && p.bypasses("www.example.com", 443));
        assert!(!p.bypasses("notexample.com", 443));
        assert!(p.bypasses("10.0.0.7", 80));
        assert!(p.bypasses("ca.lan", 8443) && !p.bypasses("ca.lan", 443));
        assert!(p.bypasses("::1", 443));
        assert!(!p.bypasses("mdm.example.net", 443));
        assert!(proxy(&["*"]).bypasses("anything", 1));
    }

    #[test]
    fn a_no_proxy_entry_that_is_not_a_destination_is_refused_at_its_place() {
        let path = std::path::Path::new("c.toml");
        let text = "url = \"http://proxy:3128\"\nno_proxy = [\"localhost\", \"10.0.0.0/8\",\n  \"https://ca.corp.example\"]\n";
        let config: ProxyConfig = crate::config::parse(path, text).unwrap();
        let e = config
            .check(&crate::config::Checker::new(path, text))
            .unwrap_err()
            .to_string();
        assert!(e.contains("proxy.no_proxy"), "{e}");
        assert!(e.contains("line 3: proxy.no_proxy"), "{e}");
        assert!(
            e.contains("3 |   \"https://ca.corp.example\"]\n  |   ^^^^"),
            "the caret is on the entry: {e}"
        );
        assert!(e.contains("a URL: write the host alone"), "{e}");
        assert!(e.contains("a CIDR block (10.0.0.0/8)"), "{e}");
        let good = "url = \"http://proxy:3128\"\nno_proxy = [\"localhost\", \"10.0.0.0/8\", \"*.corp.example:8443\"]\n";
        let config: ProxyConfig = crate::config::parse(path, good).unwrap();
        config
            .check(&crate::config::Checker::new(path, good))
            .unwrap();
        let p = Proxy::open(&config).unwrap().unwrap();
        assert!(p.bypasses("10.9.8.7", 443) && p.bypasses("ndes.corp.example", 8443));
        assert!(!p.bypasses("ndes.corp.example", 443) && !p.bypasses("11.0.0.1", 443));
    }

    #[test]
    fn no_proxy_from_the_environment_keeps_the_entries_it_can_read() {
        let entries = environment_entries(
            "NO_PROXY",
            "localhost, ,10.0.0.0/8,https://x.example,.corp.example:99999,[::1],",
        );
        assert_eq!(
            entries,
            vec![
                no_proxy::Entry::parse("localhost").unwrap(),
                no_proxy::Entry::parse("10.0.0.0/8").unwrap(),
                no_proxy::Entry::parse("::1").unwrap(),
            ]
        );
    }

    #[test]
    fn a_url_is_http_host_port_and_credentials_come_only_from_the_environment() {
        assert_eq!(
            parse_url("proxy.url", "http://proxy.example.com:3128").unwrap(),
            ("proxy.example.com".into(), 3128)
        );
        assert_eq!(
            parse_url("proxy.url", "http://[::1]:8080/").unwrap(),
            ("::1".into(), 8080)
        );
        let err = parse_url("proxy.url", "http://alice:s3cret@proxy:3128")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("credentials_file") && !err.contains("s3cret"),
            "{err}"
        );
        let env = parse_full("HTTPS_PROXY", "http://alice:p%40ss@proxy:3128").unwrap();
        assert_eq!(
            env.userinfo.as_deref().map(String::as_str),
            Some("alice:p@ss")
        );
        assert_eq!((env.host.as_str(), env.port), ("proxy", 3128));
        for bad in [
            "https://proxy:3128",
            "http://proxy",
            "http://proxy:0",
            "http://proxy:3128/x",
        ] {
            assert!(parse_url("proxy.url", bad).is_err(), "{bad}");
        }
    }
}
