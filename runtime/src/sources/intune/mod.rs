//! Microsoft Intune's third-party CA APIs, as Intune documents them for SCEP CAs
//! (`../shared/fixtures/intune/` holds the exact wire formats): an Entra ID application's
//! client-credentials tokens, Graph service discovery of Intune's endpoints, and the SCEP
//! challenge validation calls — `validateRequest` before anything is issued, then
//! `successNotification` or `failureNotification`. Fail closed: when Intune cannot be asked or
//! does not say yes, the device gets no certificate.
//!
//! - [`token`]: tokens for Graph and for Intune, cached until shortly before they expire; the
//!   application proves itself with a client secret or with a certificate whose key is in
//!   custody (a signed client assertion; the key never leaves custody).
//! - [`scep`]: certconn's SCEP server asks Intune through it (`scep.challenge = "intune"`).
//! - [`revocation`]: Intune's revocation requests become revoke jobs, and their outcomes go
//!   back (`intune.revocation = true`).
//!
//! Discovery's answer is cached per process and cleared whenever a call to a discovered
//! endpoint fails, as Microsoft's reference clients do: Intune moves tenants between rings.

mod config;
pub mod revocation;
pub mod scep;
mod token;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};

pub use config::IntuneConfig;
use token::Tokens;

use crate::custody::KeyStore;
use crate::sources::outbound::{Answer, Target};

/// Intune's application id, whose service principal's endpoints discovery reads.
const INTUNE_APP_ID: &str = "0000000a-0000-0000-c000-000000000000";

/// How long one call to Entra ID, Graph or Intune may take.
const CALL_LIMIT: Duration = Duration::from_secs(30);

/// Why a call to Intune did not get its answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IntuneError {
    #[error("intune: {0}")]
    Config(String),
    #[error("the token from {url}: {reason}")]
    Token { url: String, reason: String },
    #[error("Graph service discovery ({url}): {reason}")]
    Discovery { url: String, reason: String },
    #[error("Graph service discovery lists no {0} endpoint for this tenant")]
    NoEndpoint(&'static str),
    #[error("{url} (client-request-id {request_id}): {reason}")]
    Call {
        url: String,
        request_id: String,
        reason: String,
    },
}

/// A client of one tenant's Intune.
pub struct Intune {
    config: IntuneConfig,
    tokens: Tokens,
    /// `providerName` (lower case) → `uri`, from the last discovery.
    endpoints: Mutex<Option<HashMap<String, String>>>,
    targets: Mutex<HashMap<String, Arc<Target>>>,
    proxy: Option<Arc<crate::proxy::Proxy>>,
    policy: crate::crypto::AlgorithmPolicy,
}

impl Intune {
    /// Reads the application's credential (the secret, or the custody key and its
    /// certificate) and prepares the client; nothing is called until needed.
    pub fn open(
        config: IntuneConfig,
        keys: Arc<KeyStore>,
        proxy: Option<Arc<crate::proxy::Proxy>>,
        policy: crate::crypto::AlgorithmPolicy,
    ) -> Result<Self, IntuneError> {
        let tokens = Tokens::open(&config, keys)?;
        Ok(Self {
            config,
            tokens,
            endpoints: Mutex::new(None),
            targets: Mutex::default(),
            proxy,
            policy,
        })
    }

    /// Whether Intune's revocation requests are polled (`intune.revocation`).
    pub fn revocation_enabled(&self) -> bool {
        self.config.revocation
    }

    /// What certconn calls itself in Intune's records (`callerInfo`).
    pub fn caller_info(&self) -> &str {
        self.config.provider_name_and_version.get_ref()
    }

    /// POSTs `body` to `{endpoint of service}/{suffix}` with `api-version`, and reads the JSON
    /// answer. Any failure clears the discovery cache.
    pub async fn post(
        &self,
        service: &'static str,
        suffix: &str,
        api_version: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, IntuneError> {
        let result = self.post_once(service, suffix, api_version, body).await;
        if result.is_err() {
            *self.endpoints.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
        result
    }

    async fn post_once(
        &self,
        service: &'static str,
        suffix: &str,
        api_version: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, IntuneError> {
        let base = self.endpoint(service).await?;
        let url = format!("{}/{suffix}", base.trim_end_matches('/'));
        let request_id = guid();
        let failed = |reason: String| IntuneError::Call {
            url: url.clone(),
            request_id: request_id.clone(),
            reason,
        };
        let headers = [
            ("content-type", "application/json; charset=utf-8"),
            ("api-version", api_version),
            ("UserAgent", self.caller_info()),
        ];
        let answer = self
            .authorized(
                Method::POST,
                &url,
                &self.config.intune_scope(),
                &request_id,
                &headers,
                Bytes::from(body.to_string()),
            )
            .await?
            .map_err(failed)?;
        tracing::debug!(%url, %request_id, "Intune answered");
        Ok(answer)
    }

    /// `method url` with a bearer token for `scope`, `client-request-id` and `headers`: the
    /// JSON of a 2xx answer, or why not (the outer error: no token). A 401 drops the token.
    async fn authorized(
        &self,
        method: Method,
        url: &str,
        scope: &str,
        request_id: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Result<serde_json::Value, String>, IntuneError> {
        let token = self.tokens.get(self, scope).await?;
        Ok(async {
            let target = self.target(url)?;
            let authorization =
                crate::secret::credential_header("Bearer", &token).map_err(|_| {
                    "the access token Entra ID issued holds a character an HTTP header may not"
                        .to_owned()
                })?;
            let mut request = Request::builder()
                .method(method)
                .uri(path_of(url))
                .header("host", target.authority())
                .header("authorization", authorization)
                .header("client-request-id", request_id);
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            let request = request.body(Full::new(body)).map_err(|e| e.to_string())?;
            let answer = target
                .send(request, self.proxy.as_deref(), CALL_LIMIT)
                .await?;
            if answer.status == StatusCode::UNAUTHORIZED {
                self.tokens.forget(scope);
            }
            ok_json(answer)
        }
        .await)
    }

    /// The URI discovery gives for `service`, discovering first when the cache is empty.
    async fn endpoint(&self, service: &'static str) -> Result<String, IntuneError> {
        let key = service.to_ascii_lowercase();
        if let Some(uri) = self
            .endpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .and_then(|e| e.get(&key).cloned())
        {
            return Ok(uri);
        }
        let found = self.discover().await?;
        let uri = found.get(&key).cloned();
        *self.endpoints.lock().unwrap_or_else(|p| p.into_inner()) = Some(found);
        uri.ok_or(IntuneError::NoEndpoint(service))
    }

    /// Graph service discovery: Intune's service principal's endpoints.
    async fn discover(&self) -> Result<HashMap<String, String>, IntuneError> {
        let url = format!(
            "{}/{}/servicePrincipals/appId={INTUNE_APP_ID}/endpoints",
            self.config.graph_url.get_ref().trim_end_matches('/'),
            self.config.graph_api_version
        );
        let failed = |reason: String| IntuneError::Discovery {
            url: url.clone(),
            reason,
        };
        let answer = self
            .authorized(
                Method::GET,
                &url,
                &self.config.graph_scope(),
                &guid(),
                &[("accept", "application/json")],
                Bytes::new(),
            )
            .await?
            .map_err(failed)?;
        let endpoints = answer["value"]
            .as_array()
            .ok_or_else(|| failed("no \"value\" list in the answer".into()))?
            .iter()
            .filter_map(|e| {
                Some((
                    e["providerName"].as_str()?.to_ascii_lowercase(),
                    e["uri"].as_str()?.to_owned(),
                ))
            })
            .collect();
        tracing::info!(event_id = 4601, %url, "discovered Intune's endpoints through Graph");
        Ok(endpoints)
    }

    /// The target of `url`'s scheme, host and port, made once.
    fn target(&self, url: &str) -> Result<Arc<Target>, String> {
        let uri: hyper::Uri = url.parse().map_err(|_| format!("{url}: not a URL"))?;
        let key = format!(
            "{}://{}",
            uri.scheme_str().unwrap_or_default(),
            uri.authority().map(|a| a.as_str()).unwrap_or_default()
        );
        let mut targets = self.targets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = targets.get(&key) {
            return Ok(t.clone());
        }
        if let Err(why) = crate::sources::outbound::check_scheme(url) {
            return Err(format!("{url}: {why}"));
        }
        let anchors = self.config.trust_anchors.as_ref().map(|p| p.as_path());
        let target = Arc::new(
            Target::new(&key, anchors, None, &self.policy).map_err(|e| crate::report::chain(&e))?,
        );
        targets.insert(key, target.clone());
        Ok(target)
    }
}

/// The path and query of `url`, as the request line carries it.
fn path_of(url: &str) -> String {
    url.parse::<hyper::Uri>()
        .ok()
        .and_then(|u| u.path_and_query().map(|p| p.as_str().to_owned()))
        .unwrap_or_else(|| "/".into())
}

/// A 2xx JSON answer's body, or why not (the status and the start of the body).
fn ok_json(answer: Answer) -> Result<serde_json::Value, String> {
    if !answer.status.is_success() {
        let text = String::from_utf8_lossy(&answer.body);
        let start: String = text.chars().take(300).collect();
        return Err(format!("HTTP {}: {start}", answer.status));
    }
    serde_json::from_slice(&answer.body).map_err(|e| format!("the answer is not JSON: {e}"))
}

/// A new GUID (version 4), for `client-request-id` and client assertions' `jti`.
fn guid() -> String {
    let mut b = crate::crypto::provider::random_vec(16).unwrap_or_else(|_| vec![0; 16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}
