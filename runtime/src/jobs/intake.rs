//! Intake: every request is validated completely before it is journaled, so bad input is
//! refused with the field and the reason and nothing is stored.

use std::str::FromStr;

use der::{Decode, Encode};
use x509_cert::name::Name;
use x509_cert::request::CertReq;

use super::model::{IssueJob, RevokeJob};
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
    if !config.profiles.contains_key(&req.profile) {
        let known: Vec<&str> = config.profiles.keys().map(String::as_str).collect();
        return Err(bad(
            "profile",
            format!(
                "no profile named {:?} (configured: {})",
                req.profile,
                known.join(", ")
            ),
        ));
    }
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
        let der = pem::certificate_from_pem_or_der(recipient.as_bytes())
            .map_err(|e| bad("recipient", e))?;
        cms::check_recipient(&der).map_err(|e| bad("recipient", e.to_string()))?;
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
