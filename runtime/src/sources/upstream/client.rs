//! certconn's side of the connector protocol's HTTP: the calls to one service
//! ([`crate::sources::outbound::Target`]) with the connector's credentials — its identity
//! certificate in mutual TLS, or a bearer token — and the service's refusal of an identity
//! noticed once, so that a revoked identity stops the calls instead of repeating them.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use zeroize::Zeroizing;

use super::UpstreamError;
use crate::crypto::AlgorithmPolicy;
use crate::sources::outbound::Target;

pub use crate::sources::outbound::Answer;

/// How the connector proves who it is.
pub enum Credentials {
    /// A bearer token (the service's connector token, or a one-time enrolment token).
    Token(Zeroizing<String>),
    /// The registered identity: mutual TLS, no token.
    Identity(Arc<super::identity::Identity>),
}

/// Calls one service.
pub struct ServiceClient {
    target: Target,
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
        let identity = match &credentials {
            Credentials::Identity(i) => {
                Some(i.clone() as Arc<dyn rustls::client::ResolvesClientCert>)
            }
            Credentials::Token(_) => None,
        };
        let target = Target::new(url, anchors, identity, policy)?.keeping(super::CALLS_AT_ONCE);
        Ok(Self {
            target,
            credentials,
            proxy,
        })
    }

    /// Where the service is, for logs and status (no credentials in it).
    pub fn base(&self) -> &str {
        self.target.base()
    }

    /// The identity was renewed: the next calls make new connections, whose handshakes present
    /// the new certificate (a kept connection would go on presenting the old one).
    pub fn forget_connections(&self) {
        self.target.forget_connections();
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
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.target.prefix()))
            .header("host", self.target.authority())
            .header(
                "user-agent",
                concat!("certconn/", env!("CARGO_PKG_VERSION")),
            );
        if let Credentials::Token(token) = &self.credentials {
            let authorization = crate::secret::credential_header("Bearer", token).map_err(|_| {
                "the service token holds a character an HTTP header may not (a control character or line end)".to_owned()
            })?;
            request = request.header("authorization", authorization);
        }
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| e.to_string())?;
        let answer = self
            .target
            .send(request, self.proxy.as_deref(), limit)
            .await?;
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
        identity.refuse(
            format!("the service refused it: {}", said.error),
            self.base(),
        );
    }
}
