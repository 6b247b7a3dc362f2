//! A small client for the request API, used by the CLI: plain HTTP on loopback, or TLS as
//! `[api.tls]` says (see [`super::tls::client_config`]). One connection per call: the CLI makes
//! a handful of calls, and nothing is kept between them.

use std::net::SocketAddr;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use zeroize::Zeroizing;

use super::tls::ApiTlsError;

/// Talks to one daemon.
pub struct ApiClient {
    addr: SocketAddr,
    base: String,
    token: Zeroizing<String>,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

/// A non-2xx answer, with the server's error text.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the certconn API at {base}: {reason} (is `certconn serve` running?)")]
    Unreachable { base: String, reason: String },
    #[error("{message}")]
    Api { status: u16, message: String },
    #[error("the API token holds a character an HTTP header may not (a control character or line end): check where it was read from")]
    TokenNotHeaderText,
}

impl ApiClient {
    /// A client for a daemon serving plain HTTP at `addr`.
    pub fn new(addr: SocketAddr, token: Zeroizing<String>) -> Self {
        Self {
            addr,
            base: format!("http://{addr}"),
            token,
            tls: None,
        }
    }

    /// A client for a daemon serving TLS at `addr` as `tls` (the daemon's own `[api.tls]`)
    /// describes, trusting the certificates in `anchors` ([`super::tls::trust_anchors`]).
    pub fn with_tls(
        addr: SocketAddr,
        token: Zeroizing<String>,
        tls: &super::tls::ApiTlsConfig,
        anchors: &std::path::Path,
        policy: &crate::crypto::AlgorithmPolicy,
    ) -> Result<Self, ApiTlsError> {
        let connector = TlsConnector::from(super::tls::client_config(anchors, policy)?);
        let name = super::tls::server_name(tls, addr)?;
        Ok(Self {
            addr,
            base: format!("https://{addr}"),
            token,
            tls: Some((connector, name)),
        })
    }

    /// One request on a fresh connection.
    async fn exchange(&self, request: Request<Full<Bytes>>) -> Result<Response<Incoming>, String> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(|e| e.to_string())?;
        match &self.tls {
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
                send(tls, request).await
            }
            None => send(tcp, request).await,
        }
    }

    /// Sends a request; returns the JSON body of a 2xx answer.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, ClientError> {
        let unreachable = |reason: String| ClientError::Unreachable {
            base: self.base.clone(),
            reason,
        };
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        let authorization = crate::secret::credential_header("Bearer", &self.token)
            .map_err(|_| ClientError::TokenNotHeaderText)?;
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string())
            .header("authorization", authorization)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| unreachable(e.to_string()))?;
        let response = self.exchange(request).await.map_err(unreachable)?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        let value: serde_json::Value = serde_json::from_slice(&body)
            .unwrap_or_else(|_| serde_json::json!({ "error": String::from_utf8_lossy(&body) }));
        if status.is_success() {
            Ok(value)
        } else {
            let mut message = value
                .get("error")
                .and_then(|e| e.as_str())
                .unwrap_or("request failed")
                .to_owned();
            if let Some(field) = value.get("field").and_then(|f| f.as_str()) {
                message = format!("{field}: {message}");
            }
            Err(ClientError::Api {
                status: status.as_u16(),
                message,
            })
        }
    }
}

/// Sends `request` over `io` (HTTP/1.1) and returns the response head; the body streams on.
pub(crate) async fn send<I>(
    io: I,
    request: Request<Full<Bytes>>,
) -> Result<Response<Incoming>, String>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    handshake(io)
        .await?
        .send_request(request)
        .await
        .map_err(|e| e.to_string())
}

/// An HTTP/1.1 connection over `io`, ready for its first request (its driver runs in a task of
/// its own until the connection ends).
pub(crate) async fn handshake<I>(io: I) -> Result<SendRequest<Full<Bytes>>, String>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    Ok(sender)
}
