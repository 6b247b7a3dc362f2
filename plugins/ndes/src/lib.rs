//! `ndes`: a Microsoft CA through NDES (Network Device Enrollment Service).
//!
//! Each enrolment fetches a fresh one-time challenge from `mscep_admin` with the service
//! account's credentials, immediately before the request is signed — challenges
//! are never cached or reused, so none is ever used near its 60-minute expiry — and then
//! enrols like any SCEP client (the SDK's [`Enrolment`]): NDES's CA + signing RA + encryption
//! RA layout, its DES3-only capabilities, its CertRep without certificates and PENDING (a CA
//! manager's approval) are handled there.
//!
//! Two ways to authenticate to `mscep_admin`: `auth = "basic"` — this plugin sends HTTP Basic
//! with the `username`/`password` settings — or `auth = "ntlm"` — Windows authentication, done
//! by the host with the credentials the administrator granted this backend
//! (`[[backends.NAME.http.credentials]]`), so the password never enters the plugin and the
//! NTLM handshake runs on one connection in the host (never in FIPS mode: MD4, HMAC-MD5).
//!
//! The page is read as NDES serves it (UTF-16LE, usually no BOM, no charset); "the password
//! cache is full" is a transient error (it clears as unused challenges expire) and "you do not
//! have sufficient permission" a final one the administrator must fix.

use base64::Engine;
use certconn_sdk::scep::messages::ndes::{self, AdminPage};
use certconn_sdk::scep::{messages, normalize_fingerprint, Enrolment, ScepClient};
use certconn_sdk::{
    error, http, log, Backend, BackendError, BackendInfo, Capabilities, FieldError, HealthReport,
    IssueRequest, IssuedCertificate,
};
use serde::Deserialize;

/// Settings, from `[backends.NAME.settings]`. Not `Debug`: it holds the password.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The NDES server, for example `http://ndes.corp.example`.
    pub url: String,
    /// Path of the SCEP endpoint.
    #[serde(default = "default_scep_path")]
    pub scep_path: String,
    /// Path of the challenge page.
    #[serde(default = "default_admin_path")]
    pub admin_path: String,
    /// The account allowed to fetch challenges (`DOMAIN\user` or `user@domain`). With
    /// `auth = "basic"` the plugin authenticates as it; with `ntlm` it only names the account
    /// in messages (the host holds the credentials).
    #[serde(default)]
    pub username: Option<String>,
    /// Its password, for `auth = "basic"` only (give it through `settings_files`).
    #[serde(default)]
    pub password: Option<String>,
    /// How to authenticate to mscep_admin: `basic` (this plugin, with `username`/`password`)
    /// or `ntlm` (the host, with the backend's `http.credentials`).
    #[serde(default)]
    pub auth: Auth,
    /// SHA-256 of the CA certificate, hex (colons allowed). Strongly recommended.
    #[serde(default)]
    pub ca_fingerprint_sha256: Option<String>,
    /// NDES offers only 3DES; set false to refuse it (FIPS mode refuses it anyway).
    #[serde(default = "yes")]
    pub allow_des3: bool,
    /// Key transport to the encryption RA: `pkcs1` (NDES default) or `oaep-sha1`.
    #[serde(default)]
    pub key_transport: Transport,
    /// When to poll again after PENDING (a CA manager must approve), in seconds.
    #[serde(default = "default_poll")]
    pub poll_seconds: u32,
}

#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Auth {
    #[default]
    Basic,
    Ntlm,
}

#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    #[default]
    Pkcs1,
    OaepSha1,
}

fn yes() -> bool {
    true
}
fn default_poll() -> u32 {
    300
}
fn default_scep_path() -> String {
    "/certsrv/mscep/mscep.dll".into()
}
fn default_admin_path() -> String {
    "/certsrv/mscep_admin/".into()
}

const SCHEMA: &str = r#"{"type":"object","required":["url"],"properties":{"url":{"type":"string"},"scep_path":{"type":"string"},"admin_path":{"type":"string"},"username":{"type":"string"},"password":{"type":"string"},"auth":{"enum":["basic","ntlm"]},"ca_fingerprint_sha256":{"type":"string"},"allow_des3":{"type":"boolean"},"key_transport":{"enum":["pkcs1","oaep-sha1"]},"poll_seconds":{"type":"integer","minimum":1}},"additionalProperties":false}"#;

pub struct Ndes;

impl Config {
    fn base(&self) -> &str {
        self.url.trim_end_matches('/')
    }

    fn enrolment(&self) -> Enrolment {
        Enrolment {
            client: ScepClient {
                url: format!("{}{}", self.base(), self.scep_path),
                ciphers: messages::CipherPolicy {
                    allow_des3: self.allow_des3,
                    allow_single_des: false,
                },
                key_transport: match self.key_transport {
                    Transport::Pkcs1 => messages::KeyTransport::Pkcs1,
                    Transport::OaepSha1 => messages::KeyTransport::OaepSha1,
                },
            },
            ca_fingerprint: self
                .ca_fingerprint_sha256
                .as_deref()
                .and_then(|f| normalize_fingerprint(f).ok()),
            poll_seconds: self.poll_seconds,
            include_ca_in_chain: true,
        }
    }

    /// The account, for messages.
    fn account(&self) -> &str {
        self.username.as_deref().unwrap_or("the granted account")
    }

    /// A fresh one-time challenge from mscep_admin.
    fn challenge(&self) -> Result<String, BackendError> {
        let url = format!("{}{}", self.base(), self.admin_path);
        let authorization;
        let headers: &[(&str, &str)] = match self.auth {
            Auth::Basic => {
                if url.starts_with("http://") {
                    log::warn("mscep_admin is reached over plain http with Basic authentication: the service account's password travels in clear (use https, or auth = \"ntlm\")");
                }
                let credentials = base64::engine::general_purpose::STANDARD.encode(format!(
                    "{}:{}",
                    self.username.as_deref().unwrap_or_default(),
                    self.password.as_deref().unwrap_or_default()
                ));
                authorization = format!("Basic {credentials}");
                &[("authorization", &authorization)]
            }
            // The host answers NDES's Windows-authentication challenge.
            Auth::Ntlm => &[],
        };
        let response = http::fetch("GET", &url, headers, None)
            .map_err(|e| e.into_backend_error("fetching an NDES challenge"))?;
        match response.status {
            200 => {}
            401 if self.auth == Auth::Basic => {
                return Err(error::rejected(format!(
                    "NDES refused the credentials of {} at {url} (HTTP 401): check username/password and that Basic authentication is enabled on mscep_admin",
                    self.account()
                )))
            }
            401 => {
                return Err(error::rejected(format!(
                    "NDES refused Windows authentication for {} at {url} (HTTP 401): check the backend's http.credentials (scheme = \"ntlm\", DOMAIN\\user, password) and that Windows authentication is enabled on mscep_admin",
                    self.account()
                )))
            }
            s if s >= 500 => return Err(error::transient(format!("NDES mscep_admin answered HTTP {s}"))),
            s => return Err(error::rejected(format!("NDES mscep_admin answered HTTP {s}"))),
        }
        match ndes::parse(&response.body) {
            AdminPage::Challenge(c) => Ok(c),
            AdminPage::CacheFull => Err(error::transient(
                "NDES's challenge password cache is full: unused challenges expire after 60 minutes (or raise PasswordMax / restart IIS on the NDES server)",
            )),
            AdminPage::InsufficientPermission => Err(error::rejected(format!(
                "NDES says {} does not have sufficient permission to enrol with SCEP: give the account Enroll permission on the NDES certificate templates (and membership of the CA's enrolment agents)",
                self.account()
            ))),
            AdminPage::Unrecognized(text) => Err(error::rejected(format!(
                "NDES mscep_admin returned a page without a challenge: {text}"
            ))),
        }
    }
}

impl Backend for Ndes {
    type Config = Config;

    fn describe() -> BackendInfo {
        BackendInfo {
            name: "ndes".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            capabilities: Capabilities::ISSUE | Capabilities::POLL,
            config_schema: SCHEMA.into(),
        }
    }

    fn validate(c: &Config) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        if !(c.url.starts_with("http://") || c.url.starts_with("https://")) {
            errors.push(error::field("url", "must be an http:// or https:// URL"));
        }
        match c.auth {
            Auth::Basic => {
                if c.username.as_deref().unwrap_or_default().is_empty() {
                    errors.push(error::field(
                        "username",
                        "is required with auth = \"basic\"",
                    ));
                }
                if c.password.as_deref().unwrap_or_default().is_empty() {
                    errors.push(error::field(
                        "password",
                        "is required with auth = \"basic\"",
                    ));
                }
            }
            Auth::Ntlm => {
                if c.password.is_some() {
                    errors.push(error::field(
                        "password",
                        "with auth = \"ntlm\" the host holds the password: grant it in [[backends.NAME.http.credentials]] (scheme = \"ntlm\") and remove it from the settings",
                    ));
                }
            }
        }
        if let Some(Err(e)) = c
            .ca_fingerprint_sha256
            .as_deref()
            .map(normalize_fingerprint)
        {
            errors.push(error::field("ca_fingerprint_sha256", e));
        }
        if c.poll_seconds == 0 {
            errors.push(error::field("poll_seconds", "must be at least 1"));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    fn issue(c: &Config, request: IssueRequest) -> Result<IssuedCertificate, BackendError> {
        c.enrolment().issue(&request, || c.challenge().map(Some))
    }

    fn poll(
        c: &Config,
        _job_id: String,
        poll_token: String,
    ) -> Result<IssuedCertificate, BackendError> {
        c.enrolment().poll(&poll_token)
    }

    fn health(c: Option<&Config>) -> HealthReport {
        let Some(c) = c else {
            return HealthReport {
                healthy: false,
                message: "not configured".into(),
            };
        };
        match c.enrolment().client.capabilities() {
            Ok(caps) => HealthReport {
                healthy: true,
                message: format!(
                    "NDES at {} answers GetCACaps ({})",
                    c.url,
                    caps.to_body().trim().replace('\n', ", ")
                ),
            },
            Err(e) => HealthReport {
                healthy: false,
                message: format!("{}: {}", c.url, error::describe(&e)),
            },
        }
    }
}

certconn_sdk::export_backend!(Ndes);
certconn_sdk::plugin_manifest!("../certconn-plugin.toml");
