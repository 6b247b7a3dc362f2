//! `ndes`: a Microsoft CA through NDES (Network Device Enrollment Service).
//!
//! Each enrolment fetches a fresh one-time challenge from `mscep_admin` with the service
//! account's credentials (HTTP Basic), immediately before the request is signed — challenges
//! are never cached or reused, so none is ever used near its 60-minute expiry — and then
//! enrols like any SCEP client (the SDK's [`Enrolment`]): NDES's CA + signing RA + encryption
//! RA layout, its DES3-only capabilities, its CertRep without certificates and PENDING (a CA
//! manager's approval) are handled there.
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

/// Settings, from `[backends.NAME.settings]`.
#[derive(Debug, Deserialize)]
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
    /// The account allowed to fetch challenges (`DOMAIN\user` or `user@domain`).
    pub username: String,
    /// Its password (give it through `settings_files`).
    pub password: String,
    /// How to authenticate to mscep_admin: `basic`. (`ntlm` is recognised and refused: not
    /// implemented yet, and never available in FIPS mode.)
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

const SCHEMA: &str = r#"{"type":"object","required":["url","username","password"],"properties":{"url":{"type":"string"},"scep_path":{"type":"string"},"admin_path":{"type":"string"},"username":{"type":"string"},"password":{"type":"string"},"auth":{"enum":["basic","ntlm"]},"ca_fingerprint_sha256":{"type":"string"},"allow_des3":{"type":"boolean"},"key_transport":{"enum":["pkcs1","oaep-sha1"]},"poll_seconds":{"type":"integer","minimum":1}},"additionalProperties":false}"#;

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

    /// A fresh one-time challenge from mscep_admin.
    fn challenge(&self) -> Result<String, BackendError> {
        let url = format!("{}{}", self.base(), self.admin_path);
        if url.starts_with("http://") {
            log::warn("mscep_admin is reached over plain http: the service account's password travels in clear");
        }
        let credentials = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", self.username, self.password));
        let response = http::fetch(
            "GET",
            &url,
            &[("authorization", &format!("Basic {credentials}"))],
            None,
        )
        .map_err(|e| error::transient(format!("fetching an NDES challenge: {e}")))?;
        match response.status {
            200 => {}
            401 => {
                return Err(error::rejected(format!(
                    "NDES refused the credentials of {} at {url} (HTTP 401): check username/password and that Basic authentication is enabled on mscep_admin",
                    self.username
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
                self.username
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
        if c.auth == Auth::Ntlm {
            errors.push(error::field(
                "auth",
                "NTLM is not implemented yet (and is never available in FIPS mode): enable Basic authentication on mscep_admin and set auth = \"basic\"",
            ));
        }
        if c.username.is_empty() {
            errors.push(error::field("username", "is empty"));
        }
        if c.password.is_empty() {
            errors.push(error::field("password", "is empty"));
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
