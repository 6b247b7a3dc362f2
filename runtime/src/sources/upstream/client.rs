//! certconn's side of the connector protocol's HTTP: one connection per call (a long poll holds
//! its own), through the site's proxy when one is set, TLS by the host's rustls, the
//! connector's credentials (its identity certificate in mutual TLS, or a bearer token), and
//! every answer bounded in size and time so that a service that misbehaves costs a timeout,
//! not memory.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;
use zeroize::Zeroizing;

use super::UpstreamError;
use crate::crypto::AlgorithmPolicy;

/// The largest answer read from the service (a batch of imported PFX files fits many times).
const MAX_ANSWER_BYTES: usize = 16 << 20;

/// A `Retry-After` longer than this is taken as this: a service's mistake must not park the
/// connector for days.
const MAX_RETRY_AFTER_SECONDS: u64 = 600;

/// How the connector proves who it is.
pub enum Credentials {
    /// A bearer token (the service's connector token, or a one-time enrolment token).
    Token(Zeroizing<String>),
    /// The registered identity: mutual TLS, no token.
    Identity(Arc<super::identity::Identity>),
}

/// An answer: its status, its `Retry-After` (seconds) if any, and its body.
pub struct Answer {
    pub status: StatusCode,
    pub retry_after: Option<Duration>,
    pub body: Bytes,
}

/// Calls one service.
pub struct ServiceClient {
    /// `https://host:port` or `http://host:port`, for messages.
    base: String,
    host: String,
    port: u16,
    /// Path the service's URL carries before `/connector/v1`, without a trailing slash.
    prefix: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    credentials: Credentials,
    proxy: Option<Arc<crate::proxy::Proxy>>,
}

impl ServiceClient {
    /// A client for the service at `url` (`https://…`, or `http://` to loopback), trusting
    /// `anchors` (a PEM file) or the system store.
    pub fn new(
        url: &str,
        anchors: Option<&std::path::Path>,
        credentials: Credentials,
        proxy: Option<Arc<crate::proxy::Proxy>>,
        policy: &AlgorithmPolicy,
    ) -> Result<Self, UpstreamError> {
        let bad = |why: &str| UpstreamError::Service {
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
                let identity = match &credentials {
                    Credentials::Identity(i) => {
                        Some(i.clone() as Arc<dyn rustls::client::ResolvesClientCert>)
                    }
                    Credentials::Token(_) => None,
                };
                let config =
                    crate::plugins::http::tls::outbound_client_config(anchors, identity, policy)
                        .map_err(|e| UpstreamError::Tls {
                            url: url.to_owned(),
                            source: e,
                        })?;
                let name =
                    ServerName::try_from(host.clone()).map_err(|_| bad("not a server name"))?;
                (Some((TlsConnector::from(Arc::clone(&config)), name)), 443)
            }
            Some("http") if matches!(credentials, Credentials::Identity(_)) => {
                return Err(bad(
                    "an identity is presented in mutual TLS: the service URL must be https",
                ))
            }
            Some("http") => (None, 80),
            _ => return Err(bad("the scheme must be https (or http to loopback)")),
        };
        let prefix = uri.path().trim_end_matches('/').to_owned();
        let port = uri.port_u16().unwrap_or(default_port);
        Ok(Self {
            base: format!(
                "{}://{}:{port}",
                uri.scheme_str().unwrap_or("https"),
                uri.host().unwrap_or_default()
            ),
            host,
            port,
            prefix,
            tls,
            credentials,
            proxy,
        })
    }

    /// Where the service is, for logs and status (no credentials in it).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `method path` (under the service URL's own path) with `body` as JSON, within `limit`.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        limit: Duration,
    ) -> Result<Answer, String> {
        if let Credentials::Identity(identity) = &self.credentials {
            if let Some(why) = identity.refusal(crate::journal::now_secs()) {
                return Err(format!(
                    "not calling: the connector's identity must be registered again ({why}); run `certconn upstream register`"
                ));
            }
        }
        let answer = match tokio::time::timeout(limit, self.exchange(method, path, body)).await {
            Ok(answer) => answer?,
            Err(_) => return Err(format!("no answer within {} s", limit.as_secs())),
        };
        if let Credentials::Identity(identity) = &self.credentials {
            self.check_refusal(identity, &answer);
        }
        Ok(answer)
    }

    /// A 401 with the code `identity_refused`: the service no longer takes this identity.
    fn check_refusal(&self, identity: &super::identity::Identity, answer: &Answer) {
        if answer.status != StatusCode::UNAUTHORIZED {
            return;
        }
        let Ok(said) = serde_json::from_slice::<certconn_connector::ErrorBody>(&answer.body) else {
            return;
        };
        if said.code.as_deref() != Some(certconn_connector::IDENTITY_REFUSED) {
            return;
        }
        let why = format!("the service refused it: {}", said.error);
        if identity.refuse(why.clone()) {
            tracing::error!(
                event_id = 5022,
                service = %self.base,
                serial = %identity.serial(),
                reason = %why,
                "the connector's identity is no longer accepted: register again with `certconn upstream register`; no calls are made until then"
            );
        }
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, String> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.prefix))
            .header("host", self.authority())
            .header(
                "user-agent",
                concat!("certconn/", env!("CARGO_PKG_VERSION")),
            );
        if let Credentials::Token(token) = &self.credentials {
            request = request.header("authorization", format!("Bearer {}", token.as_str()));
        }
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| e.to_string())?;
        let tcp = crate::proxy::connect(self.proxy.as_deref(), &self.host, self.port)
            .await
            .map_err(|e| crate::report::chain(&e))?;
        let response = match &self.tls {
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
                crate::sources::api::client::send(tls, request).await?
            }
            None => crate::sources::api::client::send(tcp, request).await?,
        };
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

    fn authority(&self) -> String {
        crate::proxy::authority(&self.host, self.port)
    }
}
