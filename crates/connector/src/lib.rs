//! The certconn connector protocol, version 1: what a device-management service and certconn
//! say to each other. The service holds the work (certificates to issue with a server-side key,
//! imported PFX files to deliver, certificates to revoke); certconn long-polls for it, journals
//! each item before it acknowledges it, does it, and uploads each item's result until the
//! service has it. `docs/connector-protocol.md` is the specification; these types are its
//! messages, defined once and used by certconn and by the reference service alike.
//!
//! The connector's calls, under [`BASE`]:
//! - `GET /work?wait=SECONDS&max=N` → [`WorkBatch`]: items not yet acknowledged, leased to this
//!   caller for the service's visibility timeout; an empty batch after `wait` seconds.
//! - `POST /work/{id}/ack` → 204: certconn has journaled the item; the service stops offering it.
//! - `POST /results` with an [`ItemResult`] → 204: the item's outcome; sending it again is
//!   harmless.
//! - `POST /heartbeat` with a [`Heartbeat`] → [`HeartbeatAnswer`]: who the connector is and how
//!   it is; the answer carries the service's [`VersionPolicy`].
//! - `POST /register` with an [`IdentityRequest`] (bearer: a one-time enrolment token) →
//!   [`IdentityAnswer`]: the connector's identity certificate; every later call is mutual TLS
//!   with it. `POST /identity/renew` (mutual TLS) renews it.
//!
//! An item certconn cannot read fails alone: its result is a [`Outcome::Failed`] naming what was
//! wrong, and the items beside it are done as usual ([`parse_batch`]).

mod heartbeat;
mod identity;
mod policy;
pub mod spec;

pub use heartbeat::{Heartbeat, HeartbeatAnswer, PluginReport, VersionStanding};
pub use identity::{IdentityAnswer, IdentityRequest, IDENTITY_REFUSED, TOKEN_REFUSED};
pub use policy::{compare_versions, day_number, Deprecation, VersionPolicy};

use serde::{Deserialize, Serialize};

/// The protocol version these types speak.
pub const VERSION: u32 = 1;

/// Where the connector's calls live on the service.
pub const BASE: &str = "/connector/v1";

/// The longest `wait` a service must honour for a long poll, in seconds.
pub const MAX_WAIT_SECONDS: u64 = 60;

/// One piece of work; `id` is unique per service and is certconn's idempotency key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkItem {
    pub id: String,
    #[serde(flatten)]
    pub work: Work,
}

/// What an item asks for, by `kind`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Work {
    /// Issue a certificate with a key certconn makes, delivered as PKCS#12 whose password is
    /// sealed to the device's certificate.
    Issue(IssueWork),
    /// Deliver an imported PFX (S/MIME) whose password was encrypted to a custody key.
    Import(ImportWork),
    /// Revoke a certificate.
    Revoke(RevokeWork),
}

/// `kind = "issue"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IssueWork {
    /// A profile configured in certconn.
    pub profile: String,
    /// Subject DN, RFC 4514 (`CN=…,O=…`).
    #[serde(default)]
    pub subject: String,
    /// `kind:value`: `dns:`, `email:`, `upn:`, `uri:`, `ip:`, each in the syntax RFC 5280 requires
    /// (a DNS name of letters, digits and hyphens, `*` only as its leftmost label; a mailbox
    /// `local@domain`; an absolute URI; `user@suffix`); a name that is not is refused.
    #[serde(default)]
    pub sans: Vec<String>,
    /// `ec-p256`, `ec-p384`, `rsa-2048`, `rsa-3072`, `rsa-4096`; default: the profile's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_algorithm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validity_days: Option<u32>,
    /// PEM certificate of the device the PFX password is sealed for.
    pub device_certificate: String,
}

/// `kind = "import"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportWork {
    /// Default: certconn's `import` profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// The PFX file, base64.
    pub pfx: String,
    /// The PFX password encrypted to the custody key `key_name`, base64.
    pub encrypted_password: String,
    pub key_name: String,
    /// `oaepSha512` (default), `oaepSha384`, `oaepSha256`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub padding_scheme: Option<String>,
    pub user_principal_name: String,
    /// `smimeEncryption`, `smimeSigning` or `unassigned`.
    pub intended_purpose: String,
    /// PEM certificate of the device the PFX password is sealed for.
    pub device_certificate: String,
}

/// `kind = "revoke"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeWork {
    /// Hex.
    pub serial: String,
    /// RFC 5280 reason, kebab-case (`key-compromise`, …); default `unspecified`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The answer to `GET /work`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkBatch {
    pub items: Vec<WorkItem>,
}

/// An item of a batch as certconn reads it: the item, or why it is not one (with its id when
/// it has one, so that the failure can be reported).
#[derive(Debug, PartialEq)]
pub enum Parsed {
    Item(WorkItem),
    Malformed { id: Option<String>, reason: String },
}

/// Reads a batch item by item, so that one malformed item never holds back the others.
pub fn parse_batch(body: &[u8]) -> Result<Vec<Parsed>, String> {
    #[derive(Deserialize)]
    struct Raw {
        items: Vec<serde_json::Value>,
    }
    let raw: Raw =
        serde_json::from_slice(body).map_err(|e| format!("not a batch of work items: {e}"))?;
    Ok(raw
        .items
        .into_iter()
        .map(|value| {
            let id = value
                .get("id")
                .and_then(|i| i.as_str())
                .filter(|i| !i.is_empty() && i.len() <= MAX_ID_LEN)
                .map(str::to_owned);
            match (serde_json::from_value::<WorkItem>(value), id) {
                (Ok(item), Some(_)) => Parsed::Item(item),
                (Ok(_), None) => Parsed::Malformed {
                    id: None,
                    reason: format!("the id must be 1 to {MAX_ID_LEN} characters"),
                },
                (Err(e), id) => Parsed::Malformed {
                    id,
                    reason: e.to_string(),
                },
            }
        })
        .collect())
}

/// Every error answer: `{"error": "…"}` with a 4xx or 5xx status, and a `code` where the
/// connector must act on the kind of error ([`IDENTITY_REFUSED`], [`TOKEN_REFUSED`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// The longest item id certconn takes (it is the job's idempotency key).
pub const MAX_ID_LEN: usize = 200;

/// `POST /results`: what became of an item.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ItemResult {
    pub item_id: String,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// The end of an item, by `status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    Succeeded(Delivered),
    /// Refused for good (a bad item, the CA's refusal) or given up after certconn's retries.
    Failed {
        reason: String,
    },
}

/// What a succeeded item delivers; which fields are set depends on its kind.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Delivered {
    /// Issue: the certificate, PEM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_pem: Option<String>,
    /// Issue: its issuers, PEM, nearest first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_pem: Option<String>,
    /// Issue and revoke: the serial, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Issue and import: the PKCS#12 file, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pfx: Option<String>,
    /// Issue and import: the PFX password sealed for the device (CMS EnvelopedData, base64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_password: Option<String>,
    /// Revoke: true when the certificate is revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_item_reads_and_writes_as_the_specification_shows_it() {
        let text = r#"{"id":"w-1","kind":"issue","profile":"device","subject":"CN=dev-1","sans":["dns:dev-1.example.com"],"device_certificate":"-----BEGIN CERTIFICATE-----\n…"}"#;
        let item: WorkItem = serde_json::from_str(text).unwrap();
        assert_eq!(item.id, "w-1");
        let Work::Issue(issue) = &item.work else {
            panic!("{item:?}")
        };
        assert_eq!(issue.profile, "device");
        let back: serde_json::Value = serde_json::to_value(&item).unwrap();
        assert_eq!(back["kind"], "issue");
        assert_eq!(back["sans"][0], "dns:dev-1.example.com");
    }

    #[test]
    fn a_malformed_item_fails_alone_and_keeps_its_id() {
        let body = br#"{"items":[
            {"id":"good","kind":"revoke","serial":"01ab"},
            {"id":"bad","kind":"revoke"},
            {"kind":"teleport"},
            {"id":"","kind":"revoke","serial":"02"},
            {"id":"also-good","kind":"revoke","serial":"03","reason":"superseded"}
        ]}"#;
        let parsed = parse_batch(body).unwrap();
        assert_eq!(parsed.len(), 5);
        assert!(matches!(&parsed[0], Parsed::Item(i) if i.id == "good"));
        assert!(
            matches!(&parsed[1], Parsed::Malformed { id: Some(id), reason } if id == "bad" && reason.contains("serial"))
        );
        assert!(matches!(&parsed[2], Parsed::Malformed { id: None, .. }));
        assert!(matches!(&parsed[3], Parsed::Malformed { id: None, .. }));
        assert!(matches!(&parsed[4], Parsed::Item(i) if i.id == "also-good"));
        assert!(parse_batch(b"[]").is_err());
    }

    #[test]
    fn a_result_carries_its_status() {
        let failed = ItemResult {
            item_id: "w-2".into(),
            outcome: Outcome::Failed {
                reason: "no profile named \"x\"".into(),
            },
        };
        let value = serde_json::to_value(&failed).unwrap();
        assert_eq!(value["status"], "failed");
        assert_eq!(value["item_id"], "w-2");
        let back: ItemResult = serde_json::from_value(value).unwrap();
        assert_eq!(back, failed);
    }
}
