//! The local CA's self-signed root, created once in custody.

use std::time::{SystemTime, UNIX_EPOCH};

use certconn_x509::{extensions, CertificateTemplate, KeyUsageName};
use der::Decode;
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::name::Name;

use super::PkiError;
use crate::crypto::provider::{self, Digest};
use crate::custody::PrivateKey;

/// A self-signed CA certificate for `key`, valid for `days` from now.
pub fn self_signed(key: &PrivateKey, subject: &Name, days: u32) -> Result<Vec<u8>, PkiError> {
    let public_key = SubjectPublicKeyInfoOwned::from_der(key.public_key_der())
        .map_err(PkiError::der("public key"))?;
    let mut key_id = provider::digest(Digest::Sha256, public_key.subject_public_key.raw_bytes());
    key_id.truncate(20);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| PkiError::Invalid("clock before 1970".into()))?
        .as_secs();
    let template = CertificateTemplate {
        serial: provider::random_vec(16)?,
        issuer: subject.clone(),
        subject: subject.clone(),
        not_before: now.saturating_sub(300),
        not_after: now + u64::from(days) * 86_400,
        public_key,
        extensions: vec![
            extensions::basic_constraints(true, Some(0), subject)?,
            extensions::key_usage(
                &[
                    KeyUsageName::KeyCertSign,
                    KeyUsageName::CrlSign,
                    KeyUsageName::DigitalSignature,
                ],
                subject,
            )?,
            extensions::subject_key_identifier(&key_id, subject)?,
        ],
    };
    let scheme = key.kind().default_signature_scheme();
    template
        .sign(scheme, |tbs| key.sign(scheme, tbs))
        .map_err(|e| match e {
            certconn_x509::tbs::SignError::Encode(e) => PkiError::from(e),
            certconn_x509::tbs::SignError::Signer(e) => PkiError::from(e),
        })
}
