//! `scep`: a backend for any RFC 8894 SCEP CA (micromdm, EJBCA, a CA behind NDES with a static
//! challenge, certconn's own SCEP server).
//!
//! For each job the host has made the device key and a CSR; the SDK's [`Enrolment`] adds the
//! challenge password to the CSR and re-signs it with the device key (custody handle
//! `request`), signs a PKCSReq with a short-lived self-signed certificate for the same key,
//! encrypts it to the CA's encryption certificate in the strongest cipher GetCACaps offers that
//! policy allows, and reads the CertRep. PENDING becomes a host `pending` with a poll token;
//! `poll` sends CertPoll.
//!
//! The CA is pinned by the SHA-256 of its certificate when `ca_fingerprint_sha256` is set;
//! without it the GetCACert answer is trusted (and the log says so on every job).

use certconn_sdk::scep::{messages, normalize_fingerprint, Enrolment, ScepClient};
use certconn_sdk::{
    error, Backend, BackendError, BackendInfo, Capabilities, FieldError, HealthReport,
    IssueRequest, IssuedCertificate,
};
use serde::Deserialize;

/// Settings, from `[backends.NAME.settings]`. Not `Debug`: it holds the challenge password.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The SCEP URL (for example `http://ca.example/scep`).
    pub url: String,
    /// A static challenge password (give it through `settings_files` to keep it out of the
    /// config). None: the CA needs no challenge.
    #[serde(default)]
    pub challenge: Option<String>,
    /// SHA-256 of the CA certificate, hex (colons allowed). Strongly recommended.
    #[serde(default)]
    pub ca_fingerprint_sha256: Option<String>,
    /// Use 3DES when the CA offers no AES (refused anyway in FIPS mode).
    #[serde(default = "yes")]
    pub allow_des3: bool,
    /// Use single DES when the CA offers nothing better (the host's crypto.allow_single_des
    /// must allow it too).
    #[serde(default)]
    pub allow_single_des: bool,
    /// Key transport to the CA: `pkcs1` (what every SCEP CA reads), `oaep-sha1`, `oaep-sha256`.
    #[serde(default)]
    pub key_transport: Transport,
    /// When to poll again after PENDING, in seconds.
    #[serde(default = "default_poll")]
    pub poll_seconds: u32,
    /// Add the CA certificate from GetCACert to the chain when the CertRep carries only the leaf.
    #[serde(default = "yes")]
    pub include_ca_in_chain: bool,
}

/// `key_transport` values.
#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    #[default]
    Pkcs1,
    OaepSha1,
    OaepSha256,
}

impl Transport {
    pub fn key_transport(self) -> messages::KeyTransport {
        match self {
            Transport::Pkcs1 => messages::KeyTransport::Pkcs1,
            Transport::OaepSha1 => messages::KeyTransport::OaepSha1,
            Transport::OaepSha256 => messages::KeyTransport::OaepSha256,
        }
    }
}

fn yes() -> bool {
    true
}

fn default_poll() -> u32 {
    60
}

const SCHEMA: &str = r#"{"type":"object","required":["url"],"properties":{"url":{"type":"string"},"challenge":{"type":"string"},"ca_fingerprint_sha256":{"type":"string"},"allow_des3":{"type":"boolean"},"allow_single_des":{"type":"boolean"},"key_transport":{"enum":["pkcs1","oaep-sha1","oaep-sha256"]},"poll_seconds":{"type":"integer","minimum":1},"include_ca_in_chain":{"type":"boolean"}},"additionalProperties":false}"#;

pub struct Scep;

impl Config {
    fn enrolment(&self) -> Enrolment {
        Enrolment {
            client: ScepClient {
                url: self.url.clone(),
                ciphers: messages::CipherPolicy {
                    allow_des3: self.allow_des3,
                    allow_single_des: self.allow_single_des,
                },
                key_transport: self.key_transport.key_transport(),
            },
            ca_fingerprint: self
                .ca_fingerprint_sha256
                .as_deref()
                .and_then(|f| normalize_fingerprint(f).ok()),
            poll_seconds: self.poll_seconds,
            include_ca_in_chain: self.include_ca_in_chain,
        }
    }
}

impl Backend for Scep {
    type Config = Config;

    fn describe() -> BackendInfo {
        BackendInfo {
            name: "scep".into(),
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
        if let Some(Err(e)) = c
            .ca_fingerprint_sha256
            .as_deref()
            .map(normalize_fingerprint)
        {
            errors.push(error::field("ca_fingerprint_sha256", e));
        }
        if c.challenge.as_deref() == Some("") {
            errors.push(error::field(
                "challenge",
                "is empty; leave it out when the CA needs none",
            ));
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
        c.enrolment().issue(&request, || Ok(c.challenge.clone()))
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
                    "{} answers GetCACaps ({})",
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

certconn_sdk::export_backend!(Scep);
certconn_sdk::plugin_manifest!("../certconn-plugin.toml");
