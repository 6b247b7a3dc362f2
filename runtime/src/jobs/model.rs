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
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Issue => "issue",
            Self::Revoke => "revoke",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "issue" => Some(Self::Issue),
            "revoke" => Some(Self::Revoke),
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
}
