//! Certificates the host itself signs with custody keys: the local CA's self-signed root, the
//! SCEP server's RA certificate (issued by a CA key in custody, or self-signed), the delegated
//! OCSP responder's certificate, the API's own TLS certificate, and CRLs.

use std::time::{SystemTime, UNIX_EPOCH};

use certconn_x509::crl::CrlTemplate;
use certconn_x509::{extensions, CertificateTemplate, KeyUsageName};
use der::Decode;
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::Certificate;

use super::PkiError;
use crate::crypto::provider::{self, Digest};
use crate::custody::{CustodyError, KeyConfig, KeyStore, PrivateKey};

/// Why the keys `[keys]` declares could not be provisioned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProvisionError {
    #[error(transparent)]
    Custody(#[from] CustodyError),
    #[error("creating the self-signed certificate of key {key:?}")]
    SelfSigned {
        key: String,
        #[source]
        source: PkiError,
    },
}

/// Creates the keys `wanted` declares that the store does not hold yet, with their self-signed
/// CA certificates: first-start state, made the same way for the daemon and the conformance kit.
pub fn provision<'a>(
    keys: &KeyStore,
    wanted: impl IntoIterator<Item = (&'a String, &'a KeyConfig)>,
) -> Result<(), ProvisionError> {
    for (name, k) in wanted {
        let stored = match keys.get(name) {
            Ok(s) => s,
            Err(_) => {
                tracing::info!(key = %name, algorithm = %k.algorithm, store = ?k.store.get_ref(), "creating custody key");
                keys.create(name, k.algorithm, *k.store.get_ref())?
            }
        };
        if let (Some(ss), true) = (&k.self_signed, stored.chain.is_empty()) {
            let failed = |source| ProvisionError::SelfSigned {
                key: name.clone(),
                source,
            };
            let subject = super::dn::parse(ss.subject.get_ref())
                .map_err(|e| failed(PkiError::Invalid(e.to_string())))?;
            let cert = self_signed(&stored.key, &subject, ss.validity_days).map_err(failed)?;
            keys.set_chain(name, vec![cert])?;
            tracing::info!(key = %name, subject = %ss.subject.get_ref(), "created self-signed CA certificate");
        }
    }
    Ok(())
}

/// A self-signed CA certificate for `key`, valid for `days` from now.
pub fn self_signed(key: &PrivateKey, subject: &Name, days: u32) -> Result<Vec<u8>, PkiError> {
    let extensions = |key_id: &[u8]| -> Result<Vec<Extension>, PkiError> {
        Ok(vec![
            extensions::basic_constraints(true, Some(0), subject)?,
            extensions::key_usage(
                &[
                    KeyUsageName::KeyCertSign,
                    KeyUsageName::CrlSign,
                    KeyUsageName::DigitalSignature,
                ],
                subject,
            )?,
            extensions::subject_key_identifier(key_id, subject)?,
        ])
    };
    sign(key, subject, key, subject, days, extensions)
}

/// What an RA certificate is for: the NDES layout has one RA that signs and one that receives
/// key transport, because some clients pick the encryption certificate by its key usage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RaUsage {
    /// Signs replies and receives key transport.
    SignAndDecrypt,
    /// Signs replies only (digitalSignature).
    Sign,
    /// Receives key transport only (keyEncipherment).
    Decrypt,
}

/// An RA certificate for `ra_key`: a non-CA certificate that signs (SCEP replies) and receives
/// key transport (SCEP requests). Issued by `issuer` when given (the CA's key and certificate),
/// else self-signed.
pub fn ra_certificate(
    ra_key: &PrivateKey,
    subject: &Name,
    issuer: Option<(&PrivateKey, &[u8])>,
    days: u32,
) -> Result<Vec<u8>, PkiError> {
    ra_certificate_at(
        ra_key,
        subject,
        issuer,
        days,
        RaUsage::SignAndDecrypt,
        unix_now()?,
    )
}

/// [`ra_certificate`] for one `usage`, valid from `now` (seconds since the Unix epoch): the RA
/// renews itself on its own clock, which tests set.
pub fn ra_certificate_at(
    ra_key: &PrivateKey,
    subject: &Name,
    issuer: Option<(&PrivateKey, &[u8])>,
    days: u32,
    usage: RaUsage,
    now: u64,
) -> Result<Vec<u8>, PkiError> {
    let usages: &[KeyUsageName] = match usage {
        RaUsage::SignAndDecrypt => &[
            KeyUsageName::DigitalSignature,
            KeyUsageName::KeyEncipherment,
        ],
        RaUsage::Sign => &[KeyUsageName::DigitalSignature],
        RaUsage::Decrypt => &[KeyUsageName::KeyEncipherment],
    };
    let extensions = |key_id: &[u8]| -> Result<Vec<Extension>, PkiError> {
        Ok(vec![
            extensions::basic_constraints(false, None, subject)?,
            extensions::key_usage(usages, subject)?,
            extensions::subject_key_identifier(key_id, subject)?,
        ])
    };
    match issuer {
        Some((ca_key, ca_cert)) => {
            let ca = Certificate::from_der(ca_cert).map_err(PkiError::der("CA certificate"))?;
            let mut exts = extensions(&key_id_of(ra_key)?)?;
            if let Some(aki) = certconn_x509::extensions::subject_key_identifier_of(&ca) {
                exts.push(extensions::authority_key_identifier(&aki, subject)?);
            }
            sign_at(
                now,
                ra_key,
                subject,
                ca_key,
                &ca.tbs_certificate.subject,
                days,
                |_| Ok(exts.clone()),
            )
        }
        None => sign_at(now, ra_key, subject, ra_key, subject, days, extensions),
    }
}

/// A delegated OCSP responder's certificate for `responder_key`, issued by the CA (`ca_key`,
/// `ca_cert`): it may sign OCSP responses only (id-kp-OCSPSigning) and carries
/// id-pkix-ocsp-nocheck, so it is kept short-lived and renewed instead of checked.
pub fn ocsp_responder_certificate(
    responder_key: &PrivateKey,
    subject: &Name,
    ca_key: &PrivateKey,
    ca_cert: &[u8],
    days: u32,
) -> Result<Vec<u8>, PkiError> {
    let ca = Certificate::from_der(ca_cert).map_err(PkiError::der("CA certificate"))?;
    let mut exts = vec![
        extensions::basic_constraints(false, None, subject)?,
        extensions::key_usage(&[KeyUsageName::DigitalSignature], subject)?,
        extensions::extended_key_usage(
            &[certconn_x509::ExtendedKeyUsageName::OcspSigning],
            subject,
        )?,
        extensions::ocsp_no_check()?,
        extensions::subject_key_identifier(&key_id_of(responder_key)?, subject)?,
    ];
    if let Some(aki) = certconn_x509::extensions::subject_key_identifier_of(&ca) {
        exts.push(extensions::authority_key_identifier(&aki, subject)?);
    }
    sign(
        responder_key,
        subject,
        ca_key,
        &ca.tbs_certificate.subject,
        days,
        |_| Ok(exts),
    )
}

/// A TLS server certificate for `server_key` naming `names` (DNS names and IP addresses; the
/// first is also the subject's CN), issued by the CA (`ca_key`, `ca_cert`), valid from `now`:
/// the API's own certificate when `api.tls.issuer` names a CA certconn holds.
pub fn tls_server_certificate_at(
    server_key: &PrivateKey,
    names: &[certconn_x509::SubjectAltName],
    ca_key: &PrivateKey,
    ca_cert: &[u8],
    days: u32,
    now: u64,
) -> Result<Vec<u8>, PkiError> {
    let first = match names.first() {
        Some(certconn_x509::SubjectAltName::Dns(name)) => name.clone(),
        Some(certconn_x509::SubjectAltName::Ip(ip)) => ip.to_string(),
        _ => {
            return Err(PkiError::Invalid(
                "a TLS server certificate needs a DNS name or an IP address".into(),
            ))
        }
    };
    let subject = super::dn::parse(&format!("CN={first}"))
        .map_err(|e| PkiError::Invalid(format!("the name {first:?}: {e}")))?;
    let ca = Certificate::from_der(ca_cert).map_err(PkiError::der("CA certificate"))?;
    let mut exts = vec![
        extensions::basic_constraints(false, None, &subject)?,
        extensions::key_usage(&[KeyUsageName::DigitalSignature], &subject)?,
        extensions::extended_key_usage(
            &[certconn_x509::ExtendedKeyUsageName::ServerAuth],
            &subject,
        )?,
        extensions::subject_alt_name(names, &subject)?,
        extensions::subject_key_identifier(&key_id_of(server_key)?, &subject)?,
    ];
    if let Some(aki) = certconn_x509::extensions::subject_key_identifier_of(&ca) {
        exts.push(extensions::authority_key_identifier(&aki, &subject)?);
    }
    sign_at(
        now,
        server_key,
        &subject,
        ca_key,
        &ca.tbs_certificate.subject,
        days,
        |_| Ok(exts),
    )
}

fn key_id_of(key: &PrivateKey) -> Result<Vec<u8>, PkiError> {
    let public_key = SubjectPublicKeyInfoOwned::from_der(key.public_key_der())
        .map_err(PkiError::der("public key"))?;
    let mut key_id = provider::digest(Digest::Sha256, public_key.subject_public_key.raw_bytes());
    key_id.truncate(20);
    Ok(key_id)
}

/// Signs a certificate for `subject_key` with `signer`.
fn sign(
    subject_key: &PrivateKey,
    subject: &Name,
    signer: &PrivateKey,
    issuer: &Name,
    days: u32,
    extensions: impl FnOnce(&[u8]) -> Result<Vec<Extension>, PkiError>,
) -> Result<Vec<u8>, PkiError> {
    sign_at(
        unix_now()?,
        subject_key,
        subject,
        signer,
        issuer,
        days,
        extensions,
    )
}

fn unix_now() -> Result<u64, PkiError> {
    Ok(SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| PkiError::Invalid("clock before 1970".into()))?
        .as_secs())
}

fn sign_at(
    now: u64,
    subject_key: &PrivateKey,
    subject: &Name,
    signer: &PrivateKey,
    issuer: &Name,
    days: u32,
    extensions: impl FnOnce(&[u8]) -> Result<Vec<Extension>, PkiError>,
) -> Result<Vec<u8>, PkiError> {
    let public_key = SubjectPublicKeyInfoOwned::from_der(subject_key.public_key_der())
        .map_err(PkiError::der("public key"))?;
    let key_id = key_id_of(subject_key)?;
    let template = CertificateTemplate {
        serial: provider::random_vec(16)?,
        issuer: issuer.clone(),
        subject: subject.clone(),
        not_before: now.saturating_sub(300),
        not_after: now + u64::from(days) * 86_400,
        public_key,
        extensions: extensions(&key_id)?,
    };
    let scheme = signer.kind().default_signature_scheme();
    Ok(template.sign(scheme, |tbs| signer.sign(scheme, tbs))?)
}

/// Signs a CRL with the CA's custody key, in the key's default scheme.
pub fn sign_crl(ca_key: &PrivateKey, template: &CrlTemplate) -> Result<Vec<u8>, PkiError> {
    let scheme = ca_key.kind().default_signature_scheme();
    Ok(template.sign(scheme, |tbs| ca_key.sign(scheme, tbs))?)
}
