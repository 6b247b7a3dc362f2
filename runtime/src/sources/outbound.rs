//! The host's own outbound HTTP(S) calls — to the upstream service, to Intune and Microsoft
//! Graph: one connection per call, through the site's proxy when one is set, TLS by the host's
//! rustls (with a client certificate when the caller has one), and every answer bounded in size
//! and time, so that a server that misbehaves costs a timeout, not memory.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use crate::crypto::AlgorithmPolicy;

/// The largest answer read (a batch of imported PFX files fits many times).
pub const MAX_ANSWER_BYTES: usize = 16 << 20;

/// A `Retry-After` longer than this is taken as this: a server's mistake must not park
/// certconn for days.
const MAX_RETRY_AFTER_SECONDS: u64 = 600;

/// An answer: its status, its `Retry-After` (seconds) if any, and its body.
pub struct Answer {
    pub status: StatusCode,
    pub retry_after: Option<Duration>,
    pub body: Bytes,
}

/// A URL certconn sends secrets or work to must be https, or http to loopback (for trying
/// things out and for tests): nothing crosses a network in clear.
pub fn check_scheme(url: &str) -> Result<(), &'static str> {
    let uri: hyper::Uri = url.parse().map_err(|_| "not a URL")?;
    let host = uri.host().ok_or("the URL has no host")?;
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") => {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let loopback = host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if loopback {
                Ok(())
            } else {
                Err("plain http only to loopback: credentials and work would cross the network in clear; use https")
            }
        }
        _ => Err("the scheme must be https (or http to loopback)"),
    }
}

/// Why a URL cannot be called.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    #[error("{url}: {reason}")]
    Url { url: String, reason: String },
    #[error("{url}: TLS")]
    Tls {
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Where calls go: a host and port, TLS or not, and the path its URL carries.
pub struct Target {
    /// `https://host:port` or `http://host:port`, for messages.
    base: String,
    host: String,
    port: u16,
    /// The path the URL carries, without a trailing slash.
    prefix: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl Target {
    /// `url` (`https://…`, or `http://` — whether plain http is allowed there is the config's
    /// check), trusting `anchors` (a PEM file) or the system store, presenting the client
    /// certificate `client` resolves (https only).
    pub fn new(
        url: &str,
        anchors: Option<&std::path::Path>,
        client: Option<Arc<dyn rustls::client::ResolvesClientCert>>,
        policy: &AlgorithmPolicy,
    ) -> Result<Self, TargetError> {
        let bad = |why: &str| TargetError::Url {
            url: url.to_owned(),
            reason: why.to_owned(),
        };
        let uri: hyper::Uri = url.parse().map_err(|_| bad("not a URL"))?;
        let host = uri.host().ok_or_else(|| bad("no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let (tls, default_port) = match uri.scheme_str() {
            Some("https") => {
                let config =
                    crate::plugins::http::tls::outbound_client_config(anchors, client, policy)
                        .map_err(|e| TargetError::Tls {
                            url: url.to_owned(),
                            source: e,
                        })?;
                let name =
                    ServerName::try_from(host.clone()).map_err(|_| bad("not a server name"))?;
                (Some((TlsConnector::from(config), name)), 443)
            }
            Some("http") if client.is_some() => {
                return Err(bad(
                    "a client certificate is presented in TLS: the URL must be https",
                ))
            }
            Some("http") => (None, 80),
            _ => return Err(bad("the scheme must be https (or http to loopback)")),
        };
        let port = uri.port_u16().unwrap_or(default_port);
        Ok(Self {
            base: format!(
                "{}://{}:{port}",
                uri.scheme_str().unwrap_or("https"),
                uri.host().unwrap_or_default()
            ),
            host,
            port,
            prefix: uri.path().trim_end_matches('/').to_owned(),
            tls,
        })
    }

    /// Where calls go, for logs and status (no credentials in it).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The path the target's URL carries, without a trailing slash.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The `Host` header's value.
    pub fn authority(&self) -> String {
        crate::proxy::authority(&self.host, self.port)
    }

    /// Sends `request` (its URI a path, its `Host` header set) and reads the answer, within
    /// `limit`.
    pub async fn send(
        &self,
        request: Request<Full<Bytes>>,
        proxy: Option<&crate::proxy::Proxy>,
        limit: Duration,
    ) -> Result<Answer, String> {
        match tokio::time::timeout(limit, self.exchange(request, proxy)).await {
            Ok(answer) => answer,
            Err(_) => Err(format!("no answer within {} s", limit.as_secs())),
        }
    }

    /// Sends `request` and returns the answer's head; its body streams on, for the caller to
    /// bound (an update feed reads targets far larger than [`MAX_ANSWER_BYTES`]).
    pub async fn open(
        &self,
        request: Request<Full<Bytes>>,
        proxy: Option<&crate::proxy::Proxy>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, String> {
        let tcp = crate::proxy::connect(proxy, &self.host, self.port)
            .await
            .map_err(|e| crate::report::chain(&e))?;
        match &self.tls {
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
                super::api::client::send(tls, request).await
            }
            None => super::api::client::send(tcp, request).await,
        }
    }

    async fn exchange(
        &self,
        request: Request<Full<Bytes>>,
        proxy: Option<&crate::proxy::Proxy>,
    ) -> Result<Answer, String> {
        let response = self.open(request, proxy).await?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|secs| Duration::from_secs(secs.min(MAX_RETRY_AFTER_SECONDS)));
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading the answer (at most {MAX_ANSWER_BYTES} bytes): {e}"))?
            .to_bytes();
        Ok(Answer {
            status,
            retry_after,
            body,
        })
    }
}
