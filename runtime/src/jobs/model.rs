//! What a job is: its kind, its request (never a secret), its state, and its result.

use serde::{Deserialize, Serialize};

use crate::custody::KeyAlgorithm;

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for a worker (first run or a retry after backoff).
    Queued,
    /// Leased by a worker.
    Running,
    /// The CA has not decided; polled at `next_run_at`.
    Pending,
    Succeeded,
    /// Permanently refused (bad request, CA rejection).
    Failed,
    /// Dead-lettered after exhausting its attempts.
    Dead,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Pending => "pending",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "pending" => Self::Pending,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "dead" => Self::Dead,
            _ => return None,
        })
    }

    /// A job in a terminal state never runs again (unless an operator retries it).
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Dead)
    }
}

/// The kinds of work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    Issue,
    Revoke,
    /// Deliver an imported PFX (S/MIME): see [`ImportJob`].
    Import,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Issue => "issue",
            Self::Revoke => "revoke",
            Self::Import => "import",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "issue" => Some(Self::Issue),
            "revoke" => Some(Self::Revoke),
            "import" => Some(Self::Import),
            _ => None,
        }
    }
}

/// An issue request as stored in the journal (validated at intake).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct IssueJob {
    pub profile: String,
    /// RFC 4514 distinguished name.
    pub subject: String,
    /// `kind:value` subject alternative names.
    #[serde(default)]
    pub sans: Vec<String>,
    /// Device key type; `None` uses the profile's.
    pub key: Option<KeyAlgorithm>,
    /// The device's certificate (PEM); the PFX password is sealed for it.
    pub recipient_pem: Option<String>,
    /// A CSR (PEM) from a device that holds its own key: no PFX, only the certificate.
    pub csr_pem: Option<String>,
    pub validity_days: Option<u32>,
}

/// An imported-PFX delivery as stored in the journal (validated at intake).
///
/// The PFX stays under its own password; the password travels encrypted to a custody key
/// (`key_name`) with RSA-OAEP — the format Microsoft's PFX import tooling produces. Neither is a
/// secret without the custody key, which never leaves the host.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ImportJob {
    /// The profile whose backend decides (a `pfx-import` instance).
    pub profile: String,
    /// The PKCS#12 file, base64.
    pub pfx_base64: String,
    /// The PFX password encrypted to `key_name`, base64.
    pub encrypted_password_base64: String,
    /// The custody key that decrypts the password.
    pub key_name: String,
    /// `oaepSha512` (default), `oaepSha384` or `oaepSha256`.
    pub padding_scheme: PasswordPadding,
    /// The user the certificate is delivered to.
    pub user_principal_name: String,
    pub intended_purpose: ImportPurpose,
    /// The device's certificate (PEM); the PFX password is sealed for it.
    pub recipient_pem: String,
}

/// How the PFX password was encrypted to the custody key (Microsoft Graph's
/// `userPfxPaddingScheme` names). `pkcs1` and `oaepSha1` are not accepted: the format itself
/// retired them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(try_from = "String")]
pub enum PasswordPadding {
    #[serde(rename = "oaepSha256")]
    OaepSha256,
    #[serde(rename = "oaepSha384")]
    OaepSha384,
    #[default]
    #[serde(rename = "oaepSha512")]
    OaepSha512,
}

impl PasswordPadding {
    pub fn padding(self) -> crate::crypto::provider::Padding {
        use crate::crypto::provider::Padding;
        match self {
            Self::OaepSha256 => Padding::OaepSha256,
            Self::OaepSha384 => Padding::OaepSha384,
            Self::OaepSha512 => Padding::OaepSha512,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::OaepSha256 => "oaepSha256",
            Self::OaepSha384 => "oaepSha384",
            Self::OaepSha512 => "oaepSha512",
        }
    }
}

/// A name as people write it, reduced for matching: `oaepSha512`, `OAEP_SHA512` and
/// `oaep-sha512` all become `oaepsha512`.
fn folded_name(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

impl std::str::FromStr for PasswordPadding {
    type Err = String;
    /// Case-insensitive, with or without separators (`oaepSha512`, `OAEP_SHA512`, `oaep-sha512`).
    fn from_str(s: &str) -> Result<Self, String> {
        match folded_name(s).as_str() {
            "oaepsha256" => Ok(Self::OaepSha256),
            "oaepsha384" => Ok(Self::OaepSha384),
            "oaepsha512" => Ok(Self::OaepSha512),
            "pkcs1" | "oaepsha1" | "none" => Err(format!(
                "padding {s:?} is not accepted for PFX passwords (the import format retired it); use oaepSha512, oaepSha384 or oaepSha256"
            )),
            _ => Err(format!(
                "unknown padding {s:?}; expected oaepSha512, oaepSha384 or oaepSha256"
            )),
        }
    }
}

/// What an imported PFX is delivered for (Microsoft Graph's `userPfxIntendedPurpose` names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub enum ImportPurpose {
    #[serde(rename = "smimeEncryption")]
    SmimeEncryption,
    #[serde(rename = "smimeSigning")]
    SmimeSigning,
    #[serde(rename = "unassigned")]
    Unassigned,
}

impl std::str::FromStr for ImportPurpose {
    type Err = String;
    /// Case-insensitive, with or without separators (`smimeEncryption`, `smime-encryption`).
    fn from_str(s: &str) -> Result<Self, String> {
        match folded_name(s).as_str() {
            "smimeencryption" => Ok(Self::SmimeEncryption),
            "smimesigning" => Ok(Self::SmimeSigning),
            "unassigned" => Ok(Self::Unassigned),
            _ => Err(format!(
                "unknown purpose {s:?}; expected smimeEncryption, smimeSigning or unassigned"
            )),
        }
    }
}

impl TryFrom<String> for PasswordPadding {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl TryFrom<String> for ImportPurpose {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

/// A revocation request as stored in the journal.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RevokeJob {
    /// Hexadecimal serial number.
    pub serial: String,
    pub reason: RevocationReason,
    /// The backend to ask; when absent, the backend that issued the serial.
    pub backend: Option<String>,
}

impl RevokeJob {
    /// The serial as the ledger keys it. Accepts `0x`, colons and an odd digit count, as people
    /// paste serials.
    pub fn normalized_serial(&self) -> Result<String, String> {
        let digits: String = self
            .serial
            .trim()
            .trim_start_matches("0x")
            .chars()
            .filter(|c| *c != ':')
            .collect();
        let padded = if digits.len() % 2 == 1 {
            format!("0{digits}")
        } else {
            digits
        };
        if padded.is_empty() || padded.len() > 42 {
            return Err(format!(
                "{:?} is not a serial number (1 to 20 bytes of hex)",
                self.serial
            ));
        }
        hex::decode(&padded)
            .map(|b| serial_hex(&b))
            .map_err(|_| format!("{:?} is not a hexadecimal serial number", self.serial))
    }
}

/// Serial numbers as OpenSSL prints them: lowercase hex without DER sign-padding zeros.
pub fn serial_hex(bytes: &[u8]) -> String {
    let trimmed = match bytes.iter().position(|b| *b != 0) {
        Some(i) => &bytes[i..],
        None => &bytes[bytes.len().saturating_sub(1)..],
    };
    hex::encode(trimmed)
}

/// RFC 5280 CRLReason names as used on the CLI and API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RevocationReason {
    #[default]
    Unspecified,
    KeyCompromise,
    CaCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
    CertificateHold,
    PrivilegeWithdrawn,
}

/// One job as the journal knows it.
#[derive(Clone, Debug, Serialize)]
pub struct JobRecord {
    pub id: String,
    pub source: String,
    pub idempotency_key: String,
    pub kind: JobKind,
    pub state: JobState,
    pub request: serde_json::Value,
    pub attempts: u32,
    pub backend: Option<String>,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub next_run_at: i64,
    #[serde(skip)]
    pub poll_token: Option<String>,
}

impl JobRecord {
    /// The record as the API and CLI show it: an import's PFX and encrypted password are
    /// replaced by their size and SHA-256 (they are large, and nobody needs them back from a
    /// listing; the result carries the PFX).
    pub fn summarized(mut self) -> Self {
        if self.kind == JobKind::Import {
            if let Some(obj) = self.request.as_object_mut() {
                for field in ["pfx_base64", "encrypted_password_base64"] {
                    if let Some(serde_json::Value::String(b64)) = obj.remove(field) {
                        let name = field.trim_end_matches("_base64");
                        let bytes = base64::Engine::decode(
                            &base64::engine::general_purpose::STANDARD,
                            b64.trim(),
                        )
                        .unwrap_or_default();
                        obj.insert(
                            name.to_owned(),
                            serde_json::json!({
                                "bytes": bytes.len(),
                                "sha256": hex::encode(crate::crypto::provider::digest(
                                    crate::crypto::provider::Digest::Sha256,
                                    &bytes
                                )),
                            }),
                        );
                    }
                }
            }
        }
        self
    }
}

/// What a finished issue job produced, as kept in the outbox.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct JobResult {
    /// Certificate, PEM.
    pub certificate_pem: Option<String>,
    /// Issuer chain, PEM, nearest first.
    pub chain_pem: Option<String>,
    /// Serial number, hex.
    pub serial: Option<String>,
    /// The PKCS#12 file, base64.
    pub pfx_base64: Option<String>,
    /// The PFX password sealed for the recipient device (CMS EnvelopedData DER, base64).
    pub sealed_password_base64: Option<String>,
    /// The PFX password, when no recipient was given: returned once, then erased.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// True when the password was already handed out and erased.
    #[serde(default)]
    pub password_claimed: bool,
    /// Revocation results.
    pub revoked: Option<bool>,
    /// The plugin version that did the work: `name version (sha256 prefix)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_version: Option<String>,
}
