//! `pfx-import`: the policy over imported PFX files (S/MIME certificates a user already has,
//! delivered to their devices).
//!
//! The host has already decrypted the PFX password in custody, opened the PFX and checked that
//! its key matches its certificate; it hands this backend the certificates only (never the key
//! or the password). This backend decides whether that certificate may go to that user for that
//! purpose:
//!
//! - **purpose**: `smime-encryption` needs the e-mail protection extended key usage (when the
//!   certificate restricts it) and key encipherment (RSA) or key agreement (EC);
//!   `smime-signing` needs e-mail protection and digital signature or non-repudiation;
//!   `unassigned` is allowed or refused by `unassigned`.
//! - **user**: the user principal name appears among the certificate's e-mail and UPN subject
//!   alternative names or its subject emailAddress (case-insensitive).
//! - **validity**: now (with `clock_skew_seconds` of slack) is within the certificate's validity.
//! - **chain**: the certificate chains, through the PFX's other certificates and any configured
//!   intermediates, to one of `trust_anchors_pem`, each signature verified by the host and each
//!   issuer a CA that is valid now.

use std::time::{SystemTime, UNIX_EPOCH};

use certconn_sdk::x509::der::{Decode, Encode};
use certconn_sdk::x509::x509_cert::Certificate;
use certconn_sdk::x509::{
    CertificateFacts, ExtendedKeyUsageName, KeyUsageName, PublicKeyKind, SignatureScheme,
    SignedParts,
};
use certconn_sdk::{
    error, host, log, Backend, BackendError, BackendInfo, Capabilities, FieldError, HealthReport,
    ImportCheck, ImportPurpose,
};
use serde::Deserialize;

/// Settings, from `[backends.NAME.settings]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// PEM certificates the chain must end at (set from a file with `settings_files`).
    pub trust_anchors_pem: String,
    /// PEM intermediates to use when a PFX does not carry its own.
    #[serde(default)]
    pub intermediates_pem: String,
    /// Refuse a certificate that does not name the user.
    #[serde(default = "yes")]
    pub require_user_match: bool,
    /// Slack for clocks, in seconds, on both ends of the validity.
    #[serde(default = "default_skew")]
    pub clock_skew_seconds: u64,
    /// What to do with `unassigned` imports: `allow` (deliver, purpose unchecked) or `reject`.
    #[serde(default)]
    pub unassigned: Unassigned,
    /// Accept anyExtendedKeyUsage (2.5.29.37.0) in place of e-mail protection.
    #[serde(default)]
    pub accept_any_extended_key_usage: bool,
    /// Longest chain, leaf and anchor included.
    #[serde(default = "default_max_chain")]
    pub max_chain_length: usize,
    /// Smallest RSA key accepted anywhere in the chain.
    #[serde(default = "default_min_rsa_bits")]
    pub min_rsa_bits: usize,
}

#[derive(Debug, Default, Deserialize, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum Unassigned {
    #[default]
    Allow,
    Reject,
}

fn yes() -> bool {
    true
}
fn default_skew() -> u64 {
    300
}
fn default_max_chain() -> usize {
    6
}
fn default_min_rsa_bits() -> usize {
    2048
}

const ANY_EKU: &str = "2.5.29.37.0";

const SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "pfx-import settings",
  "type": "object",
  "required": ["trust_anchors_pem"],
  "additionalProperties": false,
  "properties": {
    "trust_anchors_pem": {"type": "string", "description": "PEM certificates an imported certificate must chain to"},
    "intermediates_pem": {"type": "string", "default": "", "description": "PEM intermediates for PFX files that do not carry them"},
    "require_user_match": {"type": "boolean", "default": true},
    "clock_skew_seconds": {"type": "integer", "minimum": 0, "default": 300},
    "unassigned": {"enum": ["allow", "reject"], "default": "allow"},
    "accept_any_extended_key_usage": {"type": "boolean", "default": false},
    "max_chain_length": {"type": "integer", "minimum": 1, "default": 6},
    "min_rsa_bits": {"type": "integer", "minimum": 2048, "default": 2048}
  }
}"#;

pub struct PfxImport;

/// A certificate with its DER (for signature checks) and its decoded facts.
struct Cert {
    der: Vec<u8>,
    cert: Certificate,
    facts: CertificateFacts,
}

impl Cert {
    fn parse(der: Vec<u8>, what: &str) -> Result<Self, String> {
        let cert =
            Certificate::from_der(&der).map_err(|e| format!("{what}: not a certificate: {e}"))?;
        let facts = CertificateFacts::of(&cert).map_err(|e| format!("{what}: {e}"))?;
        Ok(Self { der, cert, facts })
    }

    fn subject(&self) -> String {
        certconn_sdk::x509::dn::format(&self.cert.tbs_certificate.subject)
    }
}

fn pem_certificates(text: &str, field: &str) -> Result<Vec<Cert>, String> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let certs = Certificate::load_pem_chain(text.as_bytes())
        .map_err(|e| format!("{field}: not PEM certificates: {e}"))?;
    certs
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let der = c
                .to_der()
                .map_err(|e| format!("{field}: certificate {}: {e}", i + 1))?;
            Cert::parse(der, &format!("{field}: certificate {}", i + 1))
        })
        .collect()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Backend for PfxImport {
    type Config = Config;

    fn describe() -> BackendInfo {
        BackendInfo {
            name: "pfx-import".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            capabilities: Capabilities::CHECK_IMPORT,
            config_schema: SCHEMA.into(),
        }
    }

    fn validate(c: &Config) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        match pem_certificates(&c.trust_anchors_pem, "trust_anchors_pem") {
            Ok(a) if a.is_empty() => errors.push(error::field(
                "trust_anchors_pem",
                "holds no certificate: give at least one trust anchor",
            )),
            Ok(_) => {}
            Err(e) => errors.push(error::field("trust_anchors_pem", e)),
        }
        if let Err(e) = pem_certificates(&c.intermediates_pem, "intermediates_pem") {
            errors.push(error::field("intermediates_pem", e));
        }
        if c.max_chain_length == 0 {
            errors.push(error::field("max_chain_length", "must be at least 1"));
        }
        if c.min_rsa_bits < 2048 {
            errors.push(error::field("min_rsa_bits", "must be at least 2048"));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    fn check_import(c: &Config, request: ImportCheck) -> Result<(), BackendError> {
        let leaf = Cert::parse(request.certificate, "the certificate").map_err(error::rejected)?;
        let now = now();
        check_validity(c, &leaf, now, "the certificate")?;
        check_purpose(c, &leaf, request.purpose)?;
        if c.require_user_match {
            check_user(&leaf, &request.user_principal_name)?;
        }
        let anchors =
            pem_certificates(&c.trust_anchors_pem, "trust_anchors_pem").map_err(error::rejected)?;
        let mut pool =
            pem_certificates(&c.intermediates_pem, "intermediates_pem").map_err(error::rejected)?;
        for (i, der) in request.others.into_iter().enumerate() {
            // A PFX may carry anything; certificates that do not parse are not used.
            match Cert::parse(der, &format!("PFX certificate {}", i + 1)) {
                Ok(cert) => pool.push(cert),
                Err(e) => log::warn(&e),
            }
        }
        let path = build_chain(c, &leaf, &pool, &anchors, now)?;
        log::info(&format!(
            "job {}: {} for {} as {:?}, chain {}",
            request.job_id,
            leaf.subject(),
            request.user_principal_name,
            request.purpose,
            path.join(" <- ")
        ));
        Ok(())
    }

    fn health(config: Option<&Config>) -> HealthReport {
        match config {
            None => HealthReport {
                healthy: false,
                message: "not configured".into(),
            },
            Some(c) => match pem_certificates(&c.trust_anchors_pem, "trust_anchors_pem") {
                Ok(a) => {
                    let now = now();
                    let expired: Vec<String> = a
                        .iter()
                        .filter(|t| t.facts.not_after < now)
                        .map(Cert::subject)
                        .collect();
                    if expired.is_empty() {
                        HealthReport {
                            healthy: true,
                            message: format!("{} trust anchor(s)", a.len()),
                        }
                    } else {
                        HealthReport {
                            healthy: false,
                            message: format!("expired trust anchor(s): {}", expired.join("; ")),
                        }
                    }
                }
                Err(e) => HealthReport {
                    healthy: false,
                    message: e,
                },
            },
        }
    }
}

fn check_validity(c: &Config, cert: &Cert, now: u64, what: &str) -> Result<(), BackendError> {
    let validity = &cert.cert.tbs_certificate.validity;
    if now.saturating_add(c.clock_skew_seconds) < cert.facts.not_before {
        return Err(error::rejected(format!(
            "{what} ({}) is not valid before {}",
            cert.subject(),
            validity.not_before
        )));
    }
    if now.saturating_sub(c.clock_skew_seconds) > cert.facts.not_after {
        return Err(error::rejected(format!(
            "{what} ({}) expired on {}",
            cert.subject(),
            validity.not_after
        )));
    }
    Ok(())
}

fn check_purpose(c: &Config, cert: &Cert, purpose: ImportPurpose) -> Result<(), BackendError> {
    let (name, usages): (&str, &[KeyUsageName]) = match purpose {
        ImportPurpose::Unassigned => {
            return match c.unassigned {
                Unassigned::Allow => Ok(()),
                Unassigned::Reject => Err(error::rejected(
                    "imports without a purpose are refused by this backend's policy (unassigned = \"reject\")",
                )),
            }
        }
        ImportPurpose::SmimeEncryption => {
            let kind = PublicKeyKind::of(&cert.cert.tbs_certificate.subject_public_key_info)
                .map_err(|e| error::rejected(format!("the certificate's key: {e}")))?;
            match kind {
                PublicKeyKind::Rsa { .. } => ("S/MIME encryption", &[KeyUsageName::KeyEncipherment]),
                _ => ("S/MIME encryption", &[KeyUsageName::KeyAgreement]),
            }
        }
        ImportPurpose::SmimeSigning => (
            "S/MIME signing",
            &[KeyUsageName::DigitalSignature, KeyUsageName::NonRepudiation],
        ),
    };
    if let Some(ekus) = &cert.facts.extended_key_usage {
        let email = ExtendedKeyUsageName::EmailProtection.oid();
        let any_ok =
            c.accept_any_extended_key_usage && ekus.iter().any(|o| o.to_string() == ANY_EKU);
        if !ekus.contains(&email) && !any_ok {
            let listed: Vec<String> = ekus.iter().map(ToString::to_string).collect();
            return Err(error::rejected(format!(
                "the certificate is not for {name}: its extended key usage ({}) lacks e-mail protection (1.3.6.1.5.5.7.3.4)",
                listed.join(", ")
            )));
        }
    }
    if !usages.iter().any(|u| cert.facts.allows(*u)) {
        return Err(error::rejected(format!(
            "the certificate is not for {name}: its key usage ({:?}) has none of {:?}",
            cert.facts.key_usage.as_deref().unwrap_or_default(),
            usages
        )));
    }
    Ok(())
}

fn check_user(cert: &Cert, upn: &str) -> Result<(), BackendError> {
    let addresses = cert.facts.addresses();
    if addresses.iter().any(|a| a == &upn.to_ascii_lowercase()) {
        return Ok(());
    }
    Err(error::rejected(if addresses.is_empty() {
        format!(
            "the certificate ({}) names no e-mail address or UPN, so it cannot be matched to user {upn}",
            cert.subject()
        )
    } else {
        format!(
            "the certificate is for {}, not for user {upn}",
            addresses.join(", ")
        )
    }))
}

/// Verifies `child`'s signature with `issuer`'s public key, through the host.
fn signed_by(c: &Config, child: &Cert, issuer: &Cert) -> Result<bool, BackendError> {
    if child.cert.tbs_certificate.issuer != issuer.cert.tbs_certificate.subject {
        return Ok(false);
    }
    let spki_info = &issuer.cert.tbs_certificate.subject_public_key_info;
    if let Ok(PublicKeyKind::Rsa { bits }) = PublicKeyKind::of(spki_info) {
        if bits < c.min_rsa_bits {
            return Err(error::rejected(format!(
                "{} has an RSA-{bits} key; at least RSA-{} is required",
                issuer.subject(),
                c.min_rsa_bits
            )));
        }
    }
    let parts = SignedParts::split(&child.der)
        .map_err(|e| error::rejected(format!("{}: {e}", child.subject())))?;
    let scheme = SignatureScheme::from_algorithm_identifier(&parts.algorithm)
        .map_err(|e| error::rejected(format!("{}: {e}", child.subject())))?;
    let spki = spki_info
        .to_der()
        .map_err(|e| error::rejected(format!("{}: {e}", issuer.subject())))?;
    host::verify(&spki, scheme, parts.tbs, parts.signature).map_err(|e| {
        error::rejected(format!(
            "verifying the signature on {}: {e}",
            child.subject()
        ))
    })
}

/// Walks from `leaf` to an anchor; returns the subjects on the way.
fn build_chain(
    c: &Config,
    leaf: &Cert,
    pool: &[Cert],
    anchors: &[Cert],
    now: u64,
) -> Result<Vec<String>, BackendError> {
    let mut path = vec![leaf.subject()];
    if anchors.iter().any(|a| a.der == leaf.der) {
        return Ok(path);
    }
    let mut current = leaf;
    let mut used: Vec<&[u8]> = vec![&leaf.der];
    while path.len() < c.max_chain_length {
        for anchor in anchors {
            if signed_by(c, current, anchor)? {
                check_validity(c, anchor, now, "the trust anchor")?;
                path.push(anchor.subject());
                return Ok(path);
            }
        }
        let mut next = None;
        for candidate in pool.iter().filter(|p| !used.contains(&p.der.as_slice())) {
            if signed_by(c, current, candidate)? {
                next = Some(candidate);
                break;
            }
        }
        let Some(issuer) = next else {
            return Err(error::rejected(format!(
                "the certificate does not chain to a configured trust anchor: no trusted issuer found for {} (issuer {})",
                current.subject(),
                current.cert.tbs_certificate.issuer
            )));
        };
        if !issuer.facts.is_ca || !issuer.facts.allows(KeyUsageName::KeyCertSign) {
            return Err(error::rejected(format!(
                "{} signed {} but is not a CA certificate",
                issuer.subject(),
                current.subject()
            )));
        }
        check_validity(c, issuer, now, "an intermediate CA certificate")?;
        used.push(&issuer.der);
        path.push(issuer.subject());
        current = issuer;
    }
    Err(error::rejected(format!(
        "the chain is longer than max_chain_length ({}) without reaching a trust anchor",
        c.max_chain_length
    )))
}

certconn_sdk::export_backend!(PfxImport);
certconn_sdk::plugin_manifest!("../certconn-plugin.toml");
