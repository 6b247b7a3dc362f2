//! Custody's side of the signature trail (`journal::trail`): the certificates the host itself
//! signs with a CA key — SCEP RA certificates, OCSP responder certificates — are recorded the
//! same way as those a plugin asks for, under the signer `certconn VERSION`.

use der::{Decode, Encode};

use super::{CustodyError, KeyStore};
use crate::crypto::provider::{self, Digest};
use crate::crypto::CryptoError;
use crate::journal::{NewSignature, SignedKind};

/// How the host names itself as a signer in the trail.
pub fn host_signer() -> String {
    format!("certconn {}", crate::version::version())
}

/// Records `cert_der`, which the host signed with custody key `key`, in `store`'s signature
/// trail (nothing when the store has none: tools without a journal).
pub async fn record_host_certificate(
    store: &KeyStore,
    key: &str,
    cert_der: &[u8],
) -> Result<(), CustodyError> {
    let Some(trail) = store.signature_trail() else {
        return Ok(());
    };
    let invalid = |e: der::Error| {
        CustodyError::Crypto(CryptoError::InvalidInput(format!(
            "a certificate the host signed does not parse: {e}"
        )))
    };
    let cert = x509_cert::Certificate::from_der(cert_der).map_err(invalid)?;
    let tbs = cert.tbs_certificate.to_der().map_err(invalid)?;
    let serial = crate::journal::record::serial_hex(cert.tbs_certificate.serial_number.as_bytes());
    let r = trail
        .append_signature(&NewSignature {
            key: key.to_owned(),
            kind: SignedKind::Certificate,
            job: None,
            backend: "host".into(),
            signer: host_signer(),
            signer_sha256: String::new(),
            tbs_sha256: hex::encode(provider::digest(Digest::Sha256, &tbs)),
            issuer: certconn_x509::dn::format(&cert.tbs_certificate.issuer),
            serial,
            subject: certconn_x509::dn::format(&cert.tbs_certificate.subject),
        })
        .await
        .map_err(CustodyError::Trail)?;
    tracing::info!(seq = r.seq, hash = %r.hash, serial = %r.signature.serial, subject = %r.signature.subject, "signature trail: CA key {key} signs a certificate for the host");
    Ok(())
}
