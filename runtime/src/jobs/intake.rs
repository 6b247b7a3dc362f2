//! Intake: every request is validated completely before it is journaled, so bad input is
//! refused with the field and the reason and nothing is stored.

use std::str::FromStr;

use der::{Decode, Encode};
use x509_cert::name::Name;
use x509_cert::request::CertReq;

use super::model::{ImportJob, IssueJob, RevokeJob};
use crate::config::Config;
use crate::crypto::provider;
use crate::pki::{cms, pem};
use certconn_x509::{PublicKeyKind, SignatureScheme, SignedParts, SubjectAltName};

/// A request refused at intake.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{field}: {message}")]
pub struct IntakeError {
    pub field: &'static str,
    pub message: String,
}

fn bad(field: &'static str, message: impl Into<String>) -> IntakeError {
    IntakeError {
        field,
        message: message.into(),
    }
}

/// Checks an issue request against the config.
pub fn check_issue(config: &Config, req: &IssueJob) -> Result<(), IntakeError> {
    check_profile(config, &req.profile)?;
    if req.subject.is_empty() && req.csr_pem.is_none() {
        return Err(bad(
            "subject",
            "is required (for example \"CN=Alice,O=Example\")",
        ));
    }
    if !req.subject.is_empty() {
        Name::from_str(&req.subject).map_err(|e| {
            bad(
                "subject",
                format!("{:?} is not a distinguished name: {e}", req.subject),
            )
        })?;
    }
    for san in &req.sans {
        SubjectAltName::parse(san).map_err(|e| bad("sans", e.to_string()))?;
    }
    if let Some(days) = req.validity_days {
        if days == 0 || days > 3650 {
            return Err(bad("validity_days", "must be between 1 and 3650"));
        }
    }
    if let Some(recipient) = &req.recipient_pem {
        check_recipient(recipient)?;
    }
    if let Some(csr) = &req.csr_pem {
        if req.key.is_some() || req.recipient_pem.is_some() {
            return Err(bad(
                "csr",
                "a CSR brings its own key: do not also give key or recipient",
            ));
        }
        check_csr(csr)?;
    }
    Ok(())
}

/// Parses a PEM CSR and verifies its self-signature.
fn check_csr(text: &str) -> Result<(), IntakeError> {
    let blocks = pem::decode_all(text).map_err(|e| bad("csr", format!("not PEM: {e}")))?;
    let Some((label, der)) = blocks.into_iter().next() else {
        return Err(bad("csr", "no PEM block"));
    };
    if label != "CERTIFICATE REQUEST" && label != "NEW CERTIFICATE REQUEST" {
        return Err(bad(
            "csr",
            format!("expected a CERTIFICATE REQUEST block, found {label}"),
        ));
    }
    let csr = CertReq::from_der(&der).map_err(|e| bad("csr", format!("malformed PKCS#10: {e}")))?;
    let parts =
        SignedParts::split(&der).map_err(|e| bad("csr", format!("malformed PKCS#10: {e}")))?;
    let scheme = SignatureScheme::from_algorithm_identifier(&parts.algorithm)
        .map_err(|e| bad("csr", e.to_string()))?;
    if let PublicKeyKind::Rsa { bits } =
        PublicKeyKind::of(&csr.info.public_key).map_err(|e| bad("csr", e.to_string()))?
    {
        if bits < 2048 {
            return Err(bad(
                "csr",
                format!("the CSR's key is RSA-{bits}; RSA-2048 or larger is required"),
            ));
        }
    }
    let spki = csr
        .info
        .public_key
        .to_der()
        .map_err(|e| bad("csr", e.to_string()))?;
    if !provider::verify(&spki, scheme, parts.tbs, parts.signature)
        .map_err(|e| bad("csr", e.to_string()))?
    {
        return Err(bad(
            "csr",
            "the CSR's signature does not verify with its own public key",
        ));
    }
    Ok(())
}

/// Largest encrypted password accepted: an RSA-8192 ciphertext.
const MAX_ENCRYPTED_PASSWORD: usize = 1024;

/// Checks an imported-PFX delivery: everything that can be known without the custody key.
/// Opening the PFX needs the password, which only the pipeline decrypts.
pub fn check_import(
    config: &Config,
    keys: &crate::custody::KeyStore,
    req: &ImportJob,
) -> Result<(), IntakeError> {
    use base64::Engine as _;
    check_profile(config, &req.profile)?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let pfx = b64
        .decode(req.pfx_base64.trim())
        .map_err(|e| bad("pfx", format!("not base64: {e}")))?;
    if pfx.is_empty() {
        return Err(bad("pfx", "is empty"));
    }
    if pfx.len() > crate::pki::pkcs12::read::MAX_SIZE {
        return Err(bad(
            "pfx",
            format!(
                "is {} bytes; the limit is {}",
                pfx.len(),
                crate::pki::pkcs12::read::MAX_SIZE
            ),
        ));
    }
    let encrypted = b64
        .decode(req.encrypted_password_base64.trim())
        .map_err(|e| bad("encrypted_password", format!("not base64: {e}")))?;
    if encrypted.is_empty() || encrypted.len() > MAX_ENCRYPTED_PASSWORD {
        return Err(bad(
            "encrypted_password",
            format!(
                "is {} bytes; an RSA ciphertext is 256 to {MAX_ENCRYPTED_PASSWORD}",
                encrypted.len()
            ),
        ));
    }
    let key = keys.get(&req.key_name).map_err(|_| {
        bad(
            "key_name",
            format!("no custody key named {:?}", req.key_name),
        )
    })?;
    match key.key.kind() {
        PublicKeyKind::Rsa { bits } if bits / 8 == encrypted.len() => {}
        PublicKeyKind::Rsa { bits } => {
            return Err(bad(
                "encrypted_password",
                format!(
                    "is {} bytes, but key {:?} is RSA-{bits} ({} byte ciphertexts): was it encrypted to another key?",
                    encrypted.len(),
                    req.key_name,
                    bits / 8
                ),
            ))
        }
        other => {
            return Err(bad(
                "key_name",
                format!(
                    "key {:?} is {}; PFX passwords are encrypted to an RSA key",
                    req.key_name,
                    other.describe()
                ),
            ))
        }
    }
    let upn = &req.user_principal_name;
    if upn.is_empty() || upn.len() > 256 || upn.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(bad(
            "user_principal_name",
            "must be 1 to 256 characters without spaces (for example alice@example.com)",
        ));
    }
    check_recipient(&req.recipient_pem)?;
    Ok(())
}

fn check_profile(config: &Config, profile: &str) -> Result<(), IntakeError> {
    if config.profiles.contains_key(profile) {
        return Ok(());
    }
    let known: Vec<&str> = config.profiles.keys().map(String::as_str).collect();
    Err(bad(
        "profile",
        format!(
            "no profile named {profile:?} (configured: {})",
            known.join(", ")
        ),
    ))
}

fn check_recipient(pem_text: &str) -> Result<(), IntakeError> {
    let der =
        pem::certificate_from_pem_or_der(pem_text.as_bytes()).map_err(|e| bad("recipient", e))?;
    cms::check_recipient(&der).map_err(|e| bad("recipient", e.to_string()))?;
    Ok(())
}

/// Checks a revocation request.
pub fn check_revoke(config: &Config, req: &RevokeJob) -> Result<(), IntakeError> {
    req.normalized_serial().map_err(|e| bad("serial", e))?;
    if let Some(b) = &req.backend {
        if !config.backends.contains_key(b) {
            return Err(bad("backend", format!("no backend named {b:?}")));
        }
    }
    Ok(())
}
