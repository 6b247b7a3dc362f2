//! A certconn backend for a CA with a JSON REST API — the template a CA vendor starts from.
//!
//! The API it speaks (`mock-ca.py` beside this file implements it, for the conformance kit):
//!
//! | call | answer |
//! |---|---|
//! | `POST /v1/certificates` `{csr, profile, template, validity_days}` | `201 {status: "issued", certificate, chain}` or `202 {status: "pending", id, retry_after}` |
//! | `GET /v1/requests/ID` | the same two answers, or `404` for an unknown id |
//! | `POST /v1/revocations` `{serial, reason}` | `200`, or `404` for a serial it never issued |
//! | `GET /v1/health` | `200` |
//!
//! Every request carries `Idempotency-Key: <job id>` (the host's job id is stable across
//! retries, so the CA answers a retry with the certificate it already issued) and
//! `X-Signature: base64(HMAC-SHA-256(api_key, METHOD \n PATH \n BODY))`, computed by the host
//! (`certconn:plugin@0.2` `crypto.hmac`). Certificates and CSRs travel as base64 DER.
//!
//! Replace the request and response shapes with your CA's; keep the rest: the error mapping
//! (`rejected` for the CA's final no, `transient` for what a retry can fix, `pending` with a
//! poll token), the settings checked field by field, and nothing kept between calls.

use base64::Engine as _;
use certconn_sdk::serde_json::{self, json, Value};
use certconn_sdk::{
    error, host, http, log, Backend, BackendError, BackendInfo, Capabilities, FieldError,
    HealthReport, IssueRequest, IssuedCertificate, RevocationReason, RevokeRequest,
};
use serde::Deserialize;

/// Settings, from `[backends.NAME.settings]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The CA's API, for example `https://api.example-ca.test`.
    pub url: String,
    /// The API key (give it through `settings_files`, so it is not in the config file).
    pub api_key: String,
    /// The CA-side template when a profile names none.
    #[serde(default = "default_template")]
    pub default_template: String,
    /// When to poll again if the CA does not say, in seconds.
    #[serde(default = "default_poll")]
    pub poll_seconds: u32,
}

fn default_template() -> String {
    "default".into()
}

fn default_poll() -> u32 {
    60
}

const SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "Example CA settings",
  "type": "object",
  "required": ["url", "api_key"],
  "additionalProperties": false,
  "properties": {
    "url": {"type": "string", "description": "the CA's API base URL (http or https)"},
    "api_key": {"type": "string", "description": "API key; give it through settings_files"},
    "default_template": {"type": "string", "default": "default"},
    "poll_seconds": {"type": "integer", "minimum": 1, "default": 60}
  }
}"#;

pub struct ExampleCa;

impl Config {
    /// Sends one signed request to the CA.
    fn call(
        &self,
        method: &str,
        path: &str,
        job_id: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), BackendError> {
        let body = body.map(Value::to_string).unwrap_or_default();
        let to_sign = format!("{method}\n{path}\n{body}");
        let mac = host::hmac_sha256(self.api_key.as_bytes(), to_sign.as_bytes())?;
        let signature = base64::engine::general_purpose::STANDARD.encode(mac);
        let url = format!("{}{path}", self.url.trim_end_matches('/'));
        let response = http::fetch(
            method,
            &url,
            &[
                ("content-type", "application/json"),
                ("idempotency-key", job_id),
                ("x-signature", &signature),
            ],
            (!body.is_empty()).then_some(body.as_bytes()),
        )
        // Unreachable, refused, timed out: a retry may succeed (transient); an untrusted
        // certificate or a host not granted will not (rejected).
        .map_err(|e| e.into_backend_error(&format!("the CA at {}", self.url)))?;
        let value = if response.body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&response.body).map_err(|e| {
                error::transient(format!(
                    "the CA answered HTTP {} with a body that is not JSON: {e}",
                    response.status
                ))
            })?
        };
        match response.status {
            429 | 500..=599 => Err(error::transient(format!(
                "the CA is busy or failing (HTTP {}): {}",
                response.status,
                reason(&value)
            ))),
            401 | 403 => Err(error::rejected(format!(
                "the CA refused our credentials (HTTP {}): check api_key: {}",
                response.status,
                reason(&value)
            ))),
            status => Ok((status, value)),
        }
    }

    /// Reads an `issued` or `pending` answer.
    fn certificate_or_pending(&self, value: &Value) -> Result<IssuedCertificate, BackendError> {
        let b64 = base64::engine::general_purpose::STANDARD;
        match value["status"].as_str() {
            Some("issued") => {
                let der = |v: &Value| -> Result<Vec<u8>, BackendError> {
                    v.as_str().and_then(|s| b64.decode(s).ok()).ok_or_else(|| {
                        error::rejected("the CA sent a certificate that is not base64")
                    })
                };
                Ok(IssuedCertificate {
                    certificate: der(&value["certificate"])?,
                    chain: value["chain"]
                        .as_array()
                        .map(|a| a.iter().map(der).collect::<Result<_, _>>())
                        .transpose()?
                        .unwrap_or_default(),
                })
            }
            Some("pending") => {
                let id = value["id"].as_str().ok_or_else(|| {
                    error::rejected("the CA answered pending without a request id")
                })?;
                let after = value["retry_after"]
                    .as_u64()
                    .map_or(self.poll_seconds, |s| s.clamp(1, 86_400) as u32);
                Err(error::pending(id, after, "waiting for approval at the CA"))
            }
            _ => Err(error::rejected(format!(
                "the CA's answer has no status: {}",
                reason(value)
            ))),
        }
    }
}

/// The CA's reason, from `{"error": "..."}`.
fn reason(value: &Value) -> String {
    value["error"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| value.to_string())
}

impl Backend for ExampleCa {
    type Config = Config;

    fn describe() -> BackendInfo {
        BackendInfo {
            name: env!("CARGO_PKG_NAME").into(),
            version: env!("CARGO_PKG_VERSION").into(),
            capabilities: Capabilities::ISSUE | Capabilities::POLL | Capabilities::REVOKE,
            config_schema: SCHEMA.into(),
        }
    }

    fn validate(c: &Config) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        if !(c.url.starts_with("https://") || c.url.starts_with("http://")) {
            errors.push(error::field("url", "must be an http:// or https:// URL"));
        }
        if c.api_key.trim().is_empty() {
            errors.push(error::field("api_key", "is empty"));
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
        let body = json!({
            "csr": base64::engine::general_purpose::STANDARD.encode(&request.csr),
            "profile": request.profile,
            "template": request.template.as_deref().unwrap_or(&c.default_template),
            "validity_days": request.validity_days,
        });
        let (status, value) = c.call("POST", "/v1/certificates", &request.job_id, Some(&body))?;
        match status {
            200..=299 => c.certificate_or_pending(&value),
            // The CA looked at the request and said no: final.
            400..=499 => Err(error::rejected(format!(
                "the CA refused the request (HTTP {status}): {}",
                reason(&value)
            ))),
            other => Err(error::transient(format!(
                "unexpected HTTP {other} from the CA"
            ))),
        }
    }

    fn poll(
        c: &Config,
        job_id: String,
        poll_token: String,
    ) -> Result<IssuedCertificate, BackendError> {
        if poll_token.is_empty()
            || !poll_token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(error::rejected(format!(
                "{poll_token:?} is not a request id of this CA"
            )));
        }
        let (status, value) =
            c.call("GET", &format!("/v1/requests/{poll_token}"), &job_id, None)?;
        match status {
            200..=299 => c.certificate_or_pending(&value),
            404 => Err(error::rejected(format!(
                "the CA does not know request {poll_token}"
            ))),
            other => Err(error::rejected(format!(
                "the CA answered HTTP {other}: {}",
                reason(&value)
            ))),
        }
    }

    fn revoke(c: &Config, request: RevokeRequest) -> Result<(), BackendError> {
        let serial = request.serial.trim();
        if serial.is_empty() || !serial.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(error::rejected(format!(
                "{serial:?} is not a hexadecimal serial number"
            )));
        }
        let reason_name = match request.reason {
            RevocationReason::KeyCompromise => "keyCompromise",
            RevocationReason::CaCompromise => "cACompromise",
            RevocationReason::AffiliationChanged => "affiliationChanged",
            RevocationReason::Superseded => "superseded",
            RevocationReason::CessationOfOperation => "cessationOfOperation",
            RevocationReason::CertificateHold => "certificateHold",
            RevocationReason::PrivilegeWithdrawn => "privilegeWithdrawn",
            RevocationReason::Unspecified => "unspecified",
        };
        let body = json!({ "serial": serial, "reason": reason_name });
        let (status, value) = c.call("POST", "/v1/revocations", &request.job_id, Some(&body))?;
        match status {
            200..=299 => {
                log::info(&format!("revoked {serial} at the CA"));
                Ok(())
            }
            404 => Err(error::rejected(format!(
                "the CA never issued serial {serial}"
            ))),
            other => Err(error::rejected(format!(
                "the CA refused the revocation (HTTP {other}): {}",
                reason(&value)
            ))),
        }
    }

    fn health(c: Option<&Config>) -> HealthReport {
        let Some(c) = c else {
            return HealthReport {
                healthy: false,
                message: "not configured".into(),
            };
        };
        match c.call("GET", "/v1/health", "health", None) {
            Ok((200, _)) => HealthReport {
                healthy: true,
                message: format!("the CA at {} answers", c.url),
            },
            Ok((status, value)) => HealthReport {
                healthy: false,
                message: format!("the CA answered HTTP {status}: {}", reason(&value)),
            },
            Err(e) => HealthReport {
                healthy: false,
                message: error::describe(&e),
            },
        }
    }
}

certconn_sdk::export_backend!(ExampleCa);
certconn_sdk::plugin_manifest!("../certconn-plugin.toml");
