//! Building a TBSCertificate and turning it into a signed certificate.

use std::time::{Duration, UNIX_EPOCH};

use der::Encode;
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::certificate::{TbsCertificate, Version};
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};

use crate::{signed, Error, Result, SignatureScheme};

/// Everything that goes into a certificate except the signature.
#[derive(Clone, Debug)]
pub struct CertificateTemplate {
    /// Serial number as unsigned big-endian bytes (at most 20 after sign padding).
    pub serial: Vec<u8>,
    pub issuer: Name,
    pub subject: Name,
    /// Seconds since the Unix epoch.
    pub not_before: u64,
    /// Seconds since the Unix epoch.
    pub not_after: u64,
    pub public_key: SubjectPublicKeyInfoOwned,
    pub extensions: Vec<Extension>,
}

impl CertificateTemplate {
    /// DER of the TBSCertificate for signing with `scheme`.
    pub fn tbs_der(&self, scheme: SignatureScheme) -> Result<Vec<u8>> {
        if self.not_after <= self.not_before {
            return Err(Error::Invalid(
                "certificate validity ends before it starts".into(),
            ));
        }
        let tbs = TbsCertificate {
            version: Version::V3,
            serial_number: serial_number(&self.serial)?,
            signature: scheme.algorithm_identifier(),
            issuer: self.issuer.clone(),
            validity: Validity {
                not_before: time(self.not_before)?,
                not_after: time(self.not_after)?,
            },
            subject: self.subject.clone(),
            subject_public_key_info: self.public_key.clone(),
            issuer_unique_id: None,
            subject_unique_id: None,
            extensions: if self.extensions.is_empty() {
                None
            } else {
                Some(self.extensions.clone())
            },
        };
        Ok(tbs.to_der()?)
    }

    /// Builds the TBSCertificate, has `sign` sign it, and returns the certificate DER.
    /// `sign` gets the exact TBS bytes; the signer does the hashing.
    pub fn sign<E>(
        &self,
        scheme: SignatureScheme,
        sign: impl FnOnce(&[u8]) -> core::result::Result<Vec<u8>, E>,
    ) -> core::result::Result<Vec<u8>, SignError<E>> {
        let tbs = self.tbs_der(scheme).map_err(SignError::Encode)?;
        let signature = sign(&tbs).map_err(SignError::Signer)?;
        signed::assemble(&tbs, &scheme.algorithm_identifier(), &signature)
            .map_err(SignError::Encode)
    }
}

/// A serial's DER INTEGER from unsigned big-endian bytes: leading zeros dropped, a zero added
/// when the top bit is set (the minimal encoding DER requires). Certificates and CRL entries
/// both encode serials this way.
pub fn serial_number(unsigned: &[u8]) -> Result<SerialNumber> {
    let start = unsigned
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(unsigned.len().saturating_sub(1));
    let mut bytes = unsigned[start..].to_vec();
    if bytes.is_empty() {
        bytes.push(0);
    }
    if bytes[0] & 0x80 != 0 {
        bytes.insert(0, 0);
    }
    Ok(SerialNumber::new(&bytes)?)
}

/// Failure of [`CertificateTemplate::sign`]: either encoding or the signer.
#[derive(Debug)]
pub enum SignError<E> {
    Encode(Error),
    Signer(E),
}

/// RFC 5280: UTCTime through 2049, GeneralizedTime from 2050.
pub(crate) fn time(unix: u64) -> Result<Time> {
    let t = UNIX_EPOCH + Duration::from_secs(unix);
    Ok(Time::try_from(t)?)
}
