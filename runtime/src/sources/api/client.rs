//! A small client for the request API, used by the CLI.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use zeroize::Zeroizing;

/// Talks to one daemon.
pub struct ApiClient {
    base: String,
    token: Zeroizing<String>,
    http: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

/// A non-2xx answer, with the server's error text.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the certconn API at {base}: {reason} (is `certconn serve` running?)")]
    Unreachable { base: String, reason: String },
    #[error("{message}")]
    Api { status: u16, message: String },
}

impl ApiClient {
    pub fn new(addr: std::net::SocketAddr, token: Zeroizing<String>) -> Self {
        Self {
            base: format!("http://{addr}"),
            token,
            http: Client::builder(TokioExecutor::new()).build_http(),
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
        let request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {}", self.token.as_str()))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| unreachable(e.to_string()))?;
        let response = self
            .http
            .request(request)
            .await
            .map_err(|e| unreachable(format!("{e}")))?;
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
