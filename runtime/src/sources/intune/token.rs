//! Entra ID client-credentials tokens, one per scope, cached until shortly before they expire.
//! The application proves itself with its client secret, or with a client assertion (a JWT,
//! RS256, `x5t` naming the certificate registered on the app) signed by a custody key — the
//! way beyond Microsoft's reference clients, which take secrets only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use zeroize::Zeroizing;

use super::{guid, ok_json, path_of, Intune, IntuneConfig, IntuneError, CALL_LIMIT};
use crate::custody::{KeyStore, StoredKey};

/// `application/x-www-form-urlencoded` leaves these as they are.
const FORM: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'*');

/// How the app proves itself.
enum Credential {
    Secret(Zeroizing<String>),
    Certificate { key: Arc<StoredKey>, x5t: String },
}

struct Cached {
    token: Zeroizing<String>,
    /// When to fetch a new one: before the token expires, by a quarter of its lifetime, at
    /// most five minutes.
    refresh_at: Instant,
}

/// The tokens of one app.
pub(super) struct Tokens {
    credential: Credential,
    cache: Mutex<HashMap<String, Cached>>,
}

impl Tokens {
    pub(super) fn open(config: &IntuneConfig, keys: Arc<KeyStore>) -> Result<Self, IntuneError> {
        let credential = match &config.certificate_key {
            Some(name) => {
                let name = name.get_ref();
                let key = keys
                    .get(name)
                    .map_err(|e| IntuneError::Config(format!("certificate_key {name:?}: {e}")))?;
                let cert = key.chain.first().ok_or_else(|| {
                    IntuneError::Config(format!(
                        "certificate_key {name:?} has no certificate: import the one registered on the app (`certconn keys import --pfx`)"
                    ))
                })?;
                if !matches!(key.key.kind(), certconn_x509::PublicKeyKind::Rsa { .. }) {
                    return Err(IntuneError::Config(format!(
                        "certificate_key {name:?} must be RSA: Entra ID takes RS256 client assertions"
                    )));
                }
                let thumbprint =
                    crate::crypto::provider::digest(crate::crypto::provider::Digest::Sha1, cert);
                Credential::Certificate {
                    x5t: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(thumbprint),
                    key,
                }
            }
            None => Credential::Secret(
                crate::secret::read_text(
                    "the Intune app's client secret (intune.client_secret_env/client_secret_file)",
                    config
                        .client_secret_env
                        .as_ref()
                        .map(|e| e.get_ref().as_str()),
                    config.client_secret_file.as_ref().map(|p| p.as_path()),
                )
                .map_err(|e| IntuneError::Config(crate::report::chain(&e)))?,
            ),
        };
        Ok(Self {
            credential,
            cache: Mutex::default(),
        })
    }

    /// A token for `scope`: the cached one while it is fresh, else a new one.
    pub(super) async fn get(
        &self,
        intune: &Intune,
        scope: &str,
    ) -> Result<Zeroizing<String>, IntuneError> {
        if let Some(c) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(scope)
            .filter(|c| Instant::now() < c.refresh_at)
        {
            return Ok(c.token.clone());
        }
        let (token, lifetime) = self.fetch(intune, scope).await?;
        let early = (lifetime / 4).min(Duration::from_secs(300));
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).insert(
            scope.to_owned(),
            Cached {
                token: token.clone(),
                refresh_at: Instant::now() + lifetime.saturating_sub(early),
            },
        );
        Ok(token)
    }

    /// Drops the token of `scope` (the service refused it: revoked or expired early).
    pub(super) fn forget(&self, scope: &str) {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(scope);
    }

    async fn fetch(
        &self,
        intune: &Intune,
        scope: &str,
    ) -> Result<(Zeroizing<String>, Duration), IntuneError> {
        let url = intune.config.token_url();
        let failed = |reason: String| IntuneError::Token {
            url: url.clone(),
            reason,
        };
        let app = intune.config.app_id.get_ref();
        let (secret, assertion) = match &self.credential {
            Credential::Secret(secret) => (Some(secret), None),
            Credential::Certificate { key, x5t } => (
                None,
                Some(client_assertion(key, x5t, app, &url).map_err(failed)?),
            ),
        };
        // Sized before it is filled: a form that grew would free its smaller copies of the client
        // secret unzeroized. Percent-encoding at most triples a byte; the names and the
        // assertion type take under 256 bytes.
        let room = 256
            + 3 * (app.len() + scope.len() + secret.map_or(0, |s| s.len()))
            + assertion.as_ref().map_or(0, String::len);
        let mut form = Zeroizing::new(String::with_capacity(room));
        form.push_str("client_id=");
        form.extend(utf8_percent_encode(app, FORM));
        if let Some(secret) = secret {
            form.push_str("&client_secret=");
            form.extend(utf8_percent_encode(secret, FORM));
        }
        if let Some(assertion) = assertion {
            form.push_str("&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion=");
            form.push_str(&assertion);
        }
        form.push_str("&scope=");
        form.extend(utf8_percent_encode(scope, FORM));
        form.push_str("&grant_type=client_credentials");
        let target = intune.target(&url).map_err(failed)?;
        let request = Request::builder()
            .method(Method::POST)
            .uri(path_of(&url))
            .header("host", target.authority())
            .header("content-type", "application/x-www-form-urlencoded")
            .header("client-request-id", guid())
            // The form itself becomes the body, not a copy of it: zeroized when hyper drops it.
            .body(Full::new(Bytes::from_owner(form)))
            .map_err(|e| failed(e.to_string()))?;
        let answer = target
            .send(request, intune.proxy.as_deref(), CALL_LIMIT)
            .await
            .map_err(failed)?;
        // Entra ID's error answers name the error (`invalid_client`, …), never the secret.
        let answer = ok_json(answer).map_err(failed)?;
        let token = answer["access_token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| failed("no access_token in the answer".into()))?;
        let lifetime = answer["expires_in"]
            .as_u64()
            .or_else(|| answer["expires_in"].as_str().and_then(|s| s.parse().ok()))
            .unwrap_or(300);
        tracing::debug!(%scope, lifetime, "got a token from Entra ID");
        Ok((
            Zeroizing::new(token.to_owned()),
            Duration::from_secs(lifetime),
        ))
    }
}

/// A client assertion for `app` at the token endpoint `audience`, signed by `key` (RS256).
fn client_assertion(
    key: &StoredKey,
    x5t: &str,
    app: &str,
    audience: &str,
) -> Result<String, String> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let now = crate::journal::now_secs();
    let header = serde_json::json!({ "alg": "RS256", "typ": "JWT", "x5t": x5t });
    let claims = serde_json::json!({
        "aud": audience,
        "iss": app,
        "sub": app,
        "jti": guid(),
        "nbf": now,
        "iat": now,
        "exp": now + 600,
    });
    let input = format!(
        "{}.{}",
        b64.encode(header.to_string()),
        b64.encode(claims.to_string())
    );
    let signature = key
        .key
        .sign(
            certconn_x509::SignatureScheme::RsaPkcs1Sha256,
            input.as_bytes(),
        )
        .map_err(|e| format!("signing the client assertion with {}: {e}", key.name))?;
    Ok(format!("{input}.{}", b64.encode(signature)))
}
