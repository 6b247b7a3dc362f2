//! Credentials the administrator grants a backend's HTTP, used by the host — never handed to the
//! plugin. The host sends a plugin's request as the plugin wrote it; when the granted server
//! answers `401` and offers a scheme the backend has credentials for, the host sends the request
//! again with them: `Basic`, or an NTLM handshake (NEGOTIATE, CHALLENGE, AUTHENTICATE) on one
//! keep-alive connection, offered as `NTLM` or inside `Negotiate`. The plugin sees the final
//! answer only, so a plugin for a Windows service (NDES's `mscep_admin`) needs no MD4, no
//! password and no connection handling.

use base64::Engine as _;
use serde::Deserialize;
use wasmtime_wasi_http::Error as HttpError;
use zeroize::Zeroizing;

use super::{entry_matches, ntlm, Answer, Connection, GrantError, HttpGrant, Outgoing};
use crate::crypto::AlgorithmPolicy;

/// An HTTP authentication scheme the host can answer.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuthScheme {
    /// RFC 7617. Over plain http the password travels in clear; the host warns each time.
    Basic,
    /// NTLMv2 (MS-NLMP), Windows authentication. Never in FIPS mode (MD4, HMAC-MD5).
    Ntlm,
}

/// `[[backends.NAME.http.credentials]]`: credentials for one granted host.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CredentialConfig {
    /// The `http.allow` entry these credentials are for (`host` or `host:port`).
    pub host: String,
    pub scheme: AuthScheme,
    /// For NTLM `DOMAIN\user` or `user@domain`; for Basic the user name.
    pub username: String,
    /// The password, from this environment variable…
    pub password_env: Option<String>,
    /// …or from this file (0600).
    pub password_file: Option<crate::config::ConfigPath>,
}

/// A credential with its password read.
pub(super) struct Credential {
    host: String,
    scheme: AuthScheme,
    username: String,
    password: Zeroizing<String>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("host", &self.host)
            .field("scheme", &self.scheme)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// The schemes a `401` offers, lower-cased, each with its token when it carries one.
fn offered(answer: &Answer) -> Vec<(String, Option<String>)> {
    answer
        .parts
        .headers
        .get_all(http::header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|challenge| {
            let challenge = challenge.trim();
            let (scheme, rest) = challenge
                .split_once(' ')
                .map_or((challenge, ""), |(s, r)| (s, r.trim()));
            // `realm="x"` parameters follow Basic; a token68 (base64, `=` only as padding)
            // follows NTLM/Negotiate.
            (!scheme.is_empty() && !scheme.contains('=')).then(|| {
                let token68 = !rest.is_empty() && !rest.trim_end_matches('=').contains('=');
                let token = token68.then(|| rest.to_owned());
                (scheme.to_ascii_lowercase(), token)
            })
        })
        .collect()
}

impl Credential {
    /// Reads the password of `config` (entry `index` of `http.credentials`).
    pub(super) fn resolve(
        index: usize,
        config: &CredentialConfig,
        grant: &HttpGrant,
        policy: &AlgorithmPolicy,
    ) -> Result<Self, GrantError> {
        let host = || config.host.clone();
        if !grant
            .allow
            .iter()
            .any(|a| a.eq_ignore_ascii_case(&config.host))
        {
            return Err(GrantError::CredentialHost {
                index,
                host: host(),
                allow: grant.allow.join(", "),
            });
        }
        if config.username.is_empty() {
            return Err(GrantError::EmptyUsername {
                index,
                host: host(),
            });
        }
        if config.scheme == AuthScheme::Ntlm {
            policy.check_ntlm().map_err(|source| GrantError::Refused {
                index,
                host: host(),
                source,
            })?;
        }
        let password = crate::secret::read_text(
            "the password",
            config.password_env.as_deref(),
            config.password_file.as_deref(),
        )
        .map_err(|source| GrantError::Password {
            index,
            host: host(),
            source,
        })?;
        Ok(Self {
            host: config.host.clone(),
            scheme: config.scheme,
            username: config.username.clone(),
            password,
        })
    }

    pub(super) fn matches(&self, host: &str, port: u16) -> bool {
        entry_matches(&self.host, host, port)
    }

    /// Answers the server's `401` (`first`) if it offers this credential's scheme; otherwise the
    /// `401` goes to the plugin as it is.
    pub(super) async fn answer(
        &self,
        backend: &str,
        first: Answer,
        outgoing: &Outgoing,
        connection: &mut Connection,
        max: usize,
        policy: &AlgorithmPolicy,
    ) -> Result<Answer, HttpError> {
        let offers = offered(&first);
        let has = |s: &str| offers.iter().any(|(o, _)| o == s);
        let answer = match self.scheme {
            AuthScheme::Basic if has("basic") => {
                if !connection.is_tls() {
                    tracing::warn!(backend, host = %self.host, "sending Basic credentials over plain http: the password travels in clear (use https)");
                }
                // Each buffer sized before it is filled: one that grew would free its smaller
                // copies of the password unzeroized (`format!` grows as it writes).
                let mut pair = Zeroizing::new(String::with_capacity(
                    self.username.len() + 1 + self.password.len(),
                ));
                pair.push_str(&self.username);
                pair.push(':');
                pair.push_str(&self.password);
                let token =
                    Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&*pair));
                let value = crate::secret::credential_header("Basic", &token).map_err(|_| {
                    HttpError::InternalError(Some(
                        "the Basic credentials are not valid header text".into(),
                    ))
                })?;
                connection
                    .exchange(outgoing.request(Some(value)), max, false)
                    .await?
            }
            AuthScheme::Ntlm if has("ntlm") || has("negotiate") => {
                let scheme = if has("ntlm") { "NTLM" } else { "Negotiate" };
                self.ntlm(scheme, outgoing, connection, max, policy).await?
            }
            _ => {
                tracing::warn!(backend, host = %self.host, offered = ?offers.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>(), granted = ?self.scheme, "the server asks for authentication in a scheme the backend has no credentials for");
                return Ok(first);
            }
        };
        if answer.parts.status == http::StatusCode::UNAUTHORIZED {
            tracing::warn!(backend, host = %self.host, username = %self.username, scheme = ?self.scheme, "the server refused the granted credentials");
        }
        Ok(answer)
    }

    /// NEGOTIATE → CHALLENGE → AUTHENTICATE on one connection.
    async fn ntlm(
        &self,
        scheme: &str,
        outgoing: &Outgoing,
        connection: &mut Connection,
        max: usize,
        policy: &AlgorithmPolicy,
    ) -> Result<Answer, HttpError> {
        let b64 = base64::engine::general_purpose::STANDARD;
        // The AUTHENTICATE message carries the NTLMv2 response, which a listener could guess
        // the password from offline: its header is a credential's (sensitive, zeroized).
        let header = |msg: &[u8]| {
            let mut text = Zeroizing::new(String::with_capacity(
                base64::encoded_len(msg.len(), true).unwrap_or_default(),
            ));
            b64.encode_string(msg, &mut text);
            crate::secret::credential_header(scheme, &text)
                .map_err(|_| HttpError::InternalError(Some("NTLM header".into())))
        };
        let negotiate = ntlm::negotiate();
        let second = connection
            .exchange(outgoing.request(Some(header(&negotiate)?)), max, false)
            .await?;
        if second.parts.status != http::StatusCode::UNAUTHORIZED {
            return Ok(second);
        }
        let scheme_lc = scheme.to_ascii_lowercase();
        let token = offered(&second)
            .into_iter()
            .find_map(|(s, t)| (s == scheme_lc).then_some(t).flatten())
            .ok_or_else(|| {
                HttpError::InternalError(Some(format!(
                    "the server answered the NTLM NEGOTIATE message without a CHALLENGE ({scheme})"
                )))
            })?;
        let challenge = b64
            .decode(token.as_bytes())
            .map_err(|_| HttpError::InternalError(Some("the NTLM CHALLENGE is not base64".into())))
            .and_then(|raw| {
                ntlm::Challenge::parse(&raw)
                    .map_err(|e| HttpError::InternalError(Some(e.to_string())))
            })?;
        let (domain, user) = ntlm::split_username(&self.username);
        let mut client_challenge = [0u8; 8];
        crate::crypto::provider::fill_random(&mut client_challenge)
            .map_err(|e| HttpError::InternalError(Some(e.to_string())))?;
        let authenticate = ntlm::authenticate(
            policy,
            &negotiate,
            &challenge,
            &ntlm::Identity {
                domain,
                user,
                password: &self.password,
            },
            client_challenge,
            ntlm::filetime_now(),
        )
        .map_err(|e| HttpError::InternalError(Some(crate::report::chain(&e))))?;
        connection
            .exchange(outgoing.request(Some(header(&authenticate)?)), max, true)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer_with(headers: &[&str]) -> Answer {
        let mut response = http::Response::new(());
        for h in headers {
            response.headers_mut().append(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_str(h).unwrap(),
            );
        }
        let (parts, ()) = response.into_parts();
        Answer {
            parts,
            body: bytes::Bytes::new(),
        }
    }

    #[test]
    fn challenges_are_read_as_iis_and_apache_send_them() {
        let a = answer_with(&["Negotiate", "NTLM", "Basic realm=\"ndes\""]);
        let schemes: Vec<_> = offered(&a).into_iter().map(|(s, _)| s).collect();
        assert_eq!(schemes, ["negotiate", "ntlm", "basic"]);
        let a = answer_with(&["NTLM TlRMTVNTUAACAAAA"]);
        assert_eq!(
            offered(&a),
            [("ntlm".to_string(), Some("TlRMTVNTUAACAAAA".to_string()))]
        );
        let a = answer_with(&["NTLM TlRMTVNTUAACAAAAAA=="]);
        assert_eq!(offered(&a)[0].1.as_deref(), Some("TlRMTVNTUAACAAAAAA=="));
        let a = answer_with(&["Basic realm=\"a\", charset=\"UTF-8\""]);
        assert_eq!(offered(&a), [("basic".to_string(), None)]);
    }

    #[test]
    fn credentials_must_name_a_granted_host_and_never_print_the_password() {
        crate::secret::testing::with_env("CERTCONN_TEST_HTTP_PASSWORD", "s3cret-value", || {
            let grant = HttpGrant {
                allow: vec!["ndes.corp.example".into()],
                ..HttpGrant::default()
            };
            let mut config = CredentialConfig {
                host: "ndes.corp.example".into(),
                scheme: AuthScheme::Ntlm,
                username: "CORP\\svc".into(),
                password_env: Some("CERTCONN_TEST_HTTP_PASSWORD".into()),
                password_file: None,
            };
            let c = Credential::resolve(0, &config, &grant, &AlgorithmPolicy::default()).unwrap();
            assert!(!format!("{c:?}").contains("s3cret"));
            assert!(c.matches("NDES.corp.example", 80) && !c.matches("other", 80));
            let fips = AlgorithmPolicy {
                fips: true,
                ..AlgorithmPolicy::default()
            };
            let e =
                crate::report::chain(&Credential::resolve(0, &config, &grant, &fips).unwrap_err());
            assert!(e.contains("NTLM") && e.contains("FIPS"), "{e}");
            config.host = "elsewhere.example".into();
            let e = Credential::resolve(0, &config, &grant, &AlgorithmPolicy::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains("not one of http.allow"), "{e}");
            config.host = "ndes.corp.example".into();
            config.password_env = Some("CERTCONN_TEST_HTTP_PASSWORD_UNSET".into());
            let e = crate::report::chain(
                &Credential::resolve(0, &config, &grant, &AlgorithmPolicy::default()).unwrap_err(),
            );
            assert!(
            e.starts_with("http.credentials[0] (ndes.corp.example): the password: environment variable CERTCONN_TEST_HTTP_PASSWORD_UNSET is not set"),
            "{e}"
        );
        });
    }
}
