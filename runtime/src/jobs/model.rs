//! What a job asks for (the request of each kind, as journaled) and what it produces. The
//! journal keeps both as JSON; the job's identity and state are the journal's
//! ([`crate::journal::JobRecord`]).

use serde::{Deserialize, Serialize};

use crate::custody::KeyAlgorithm;
use crate::journal::{JobKind, JobRecord};

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
    /// The serial (hex) of a certificate this request renews. Its key, kept in custody when
    /// the profile says `keep_keys_for_renewal`, proves the renewal to CAs that ask for it
    /// (a SCEP RenewalReq is signed with it); the new certificate gets a new key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renews: Option<String>,
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// The serial as the ledger keys it (see [`normalize_serial`]).
    pub fn normalized_serial(&self) -> Result<String, BadSerial> {
        normalize_serial(&self.serial)
    }
}

/// A serial as the ledger keys it (lowercase hex, no sign padding). Accepts `0x`, colons and an
/// odd digit count, as people paste serials.
pub fn normalize_serial(given: &str) -> Result<String, BadSerial> {
    let digits: String = given
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
    let bad = |why| BadSerial {
        given: given.to_owned(),
        why,
    };
    if padded.is_empty() || padded.len() > 42 {
        return Err(bad("1 to 20 bytes of hex"));
    }
    hex::decode(&padded)
        .map(|b| serial_hex(&b))
        .map_err(|_| bad("not hexadecimal"))
}

/// A serial number that is not one.
#[derive(Debug, thiserror::Error)]
#[error("{given:?} is not a serial number ({why})")]
pub struct BadSerial {
    pub given: String,
    pub why: &'static str,
}

pub use crate::pki::issued::serial_hex;

/// RFC 5280 CRLReason names as used on the CLI and API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
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

/// The request of `job` as the API and CLI show it: an import's PFX and encrypted password are
/// replaced by their size and SHA-256 (they are large, and nobody needs them back from a
/// listing; the result carries the PFX).
pub fn summarize(mut job: JobRecord) -> JobRecord {
    if let Some(erased) = erased_request(&job) {
        job.request = erased;
    }
    job
}

/// The request to keep once `job` has ended, when it held secrets: an import's PFX and
/// encrypted password give way to their size and SHA-256. `None` when nothing needs erasing.
pub fn erased_request(job: &JobRecord) -> Option<serde_json::Value> {
    if job.kind != JobKind::Import {
        return None;
    }
    let mut request = job.request.clone();
    let obj = request.as_object_mut()?;
    let mut changed = false;
    for field in ["pfx_base64", "encrypted_password_base64"] {
        if let Some(serde_json::Value::String(b64)) = obj.remove(field) {
            let name = field.trim_end_matches("_base64");
            let bytes =
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64.trim())
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
            changed = true;
        }
    }
    changed.then_some(request)
}

/// What a finished issue job produced, as kept in the outbox.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
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
    #[schema(value_type = Option<String>)]
    pub password: Option<crate::secret::SecretString>,
    /// True when the password was already handed out and erased.
    #[serde(default)]
    pub password_claimed: bool,
    /// Revocation results.
    pub revoked: Option<bool>,
    /// The plugin version that did the work: `name version (sha256 prefix)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_version: Option<String>,
}

impl JobResult {
    /// Job `id`'s result as the outbox hands it out: the password the first time, and after
    /// that only the note that it was handed out.
    pub fn from_outbox(
        id: &str,
        stored: crate::journal::StoredResult,
    ) -> Result<Self, crate::journal::JournalError> {
        let mut result: JobResult = serde_json::from_str(&stored.result).map_err(|e| {
            crate::journal::JournalError::Corrupt {
                id: id.to_owned(),
                reason: format!("its result: {e}"),
            }
        })?;
        match stored.password {
            Some(p) => result.password = Some(p),
            None => {
                result.password_claimed =
                    result.sealed_password_base64.is_none() && result.pfx_base64.is_some()
            }
        }
        Ok(result)
    }
}

impl JobResult {
    /// What a listing may show of a result: no certificate body, no PFX, no password.
    pub fn summary(&self) -> ResultSummary {
        ResultSummary {
            serial: self.serial.clone(),
            backend_version: self.backend_version.clone(),
            pfx: self.pfx_base64.is_some(),
            password_sealed: self.sealed_password_base64.is_some(),
            revoked: self.revoked,
        }
    }
}

/// A job's result as a listing shows it: no certificate body, no PFX, no password.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ResultSummary {
    /// Serial number of the certificate issued, hex.
    pub serial: Option<String>,
    pub backend_version: Option<String>,
    /// The result holds a PKCS#12 file.
    pub pfx: bool,
    /// The PFX password is sealed for the device.
    pub password_sealed: bool,
    /// Revocation results.
    pub revoked: Option<bool>,
}

impl RevocationReason {
    /// The name the API and the ledger use (`key-compromise`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::KeyCompromise => "key-compromise",
            Self::CaCompromise => "ca-compromise",
            Self::AffiliationChanged => "affiliation-changed",
            Self::Superseded => "superseded",
            Self::CessationOfOperation => "cessation-of-operation",
            Self::CertificateHold => "certificate-hold",
            Self::PrivilegeWithdrawn => "privilege-withdrawn",
        }
    }
}
