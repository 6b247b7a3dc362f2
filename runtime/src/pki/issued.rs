//! The one check of a certificate a backend returns: bounded in size, well-formed, and for the
//! key that was asked to be certified — a backend cannot substitute a key. The issue step and
//! the conformance kit both use it, so a plugin passes the kit exactly when the daemon would
//! accept its certificates.

use der::{Decode, Encode};
use x509_cert::Certificate;

/// Largest certificate a backend may return, and most certificates in its chain.
pub const MAX_CERTIFICATE: usize = 64 * 1024;
pub const MAX_CHAIN: usize = 16;

/// Why a returned certificate is not accepted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssuedError {
    #[error(
        "the backend returned a {size}-byte certificate with {chain} chain certificates; at most \
         {MAX_CERTIFICATE} bytes each and {MAX_CHAIN} in the chain"
    )]
    TooLarge { size: usize, chain: usize },
    #[error("the backend returned a certificate that does not parse")]
    Malformed(#[source] der::Error),
    #[error("the backend returned a certificate for a different public key")]
    WrongKey,
    #[error("chain certificate {index} from the backend does not parse")]
    MalformedChain {
        index: usize,
        #[source]
        source: der::Error,
    },
}

/// An accepted certificate and what the ledger keeps of it.
#[derive(Debug)]
pub struct CheckedCertificate {
    pub certificate: Certificate,
    /// As OpenSSL prints it: lowercase hex, no sign padding.
    pub serial: String,
    pub issuer_der: Vec<u8>,
    /// Seconds since the epoch.
    pub not_after: i64,
}

/// Checks `certificate` (DER) and its `chain` against the SubjectPublicKeyInfo (DER) of the
/// key that was to be certified.
pub fn check(
    certificate: &[u8],
    chain: &[Vec<u8>],
    expected_spki: &[u8],
) -> Result<CheckedCertificate, IssuedError> {
    if certificate.len() > MAX_CERTIFICATE
        || chain.len() > MAX_CHAIN
        || chain.iter().any(|c| c.len() > MAX_CERTIFICATE)
    {
        return Err(IssuedError::TooLarge {
            size: certificate.len(),
            chain: chain.len(),
        });
    }
    let cert = Certificate::from_der(certificate).map_err(IssuedError::Malformed)?;
    match cert.tbs_certificate.subject_public_key_info.to_der() {
        Ok(spki) if spki == expected_spki => {}
        _ => return Err(IssuedError::WrongKey),
    }
    for (index, c) in chain.iter().enumerate() {
        Certificate::from_der(c).map_err(|source| IssuedError::MalformedChain { index, source })?;
    }
    let issuer_der = cert
        .tbs_certificate
        .issuer
        .to_der()
        .map_err(IssuedError::Malformed)?;
    Ok(CheckedCertificate {
        serial: serial_hex(cert.tbs_certificate.serial_number.as_bytes()),
        issuer_der,
        not_after: cert
            .tbs_certificate
            .validity
            .not_after
            .to_unix_duration()
            .as_secs() as i64,
        certificate: cert,
    })
}

/// Serial numbers as the ledger keeps them (defined with the ledger).
pub use crate::journal::record::serial_hex;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::custody::{KeyAlgorithm, PrivateKey};

    #[test]
    fn only_a_certificate_for_the_requested_key_is_accepted() {
        let key = PrivateKey::generate(KeyAlgorithm::EcP256).unwrap();
        let other = PrivateKey::generate(KeyAlgorithm::EcP256).unwrap();
        let subject = "CN=t".parse().unwrap();
        let cert = crate::pki::ca::self_signed(&key, &subject, 1).unwrap();
        let ok = check(&cert, &[], key.public_key_der()).unwrap();
        assert_eq!(
            ok.serial,
            serial_hex(ok.certificate.tbs_certificate.serial_number.as_bytes())
        );
        assert!(matches!(
            check(&cert, &[], other.public_key_der()),
            Err(IssuedError::WrongKey)
        ));
        assert!(matches!(
            check(&cert, &[vec![0x30, 0x01]], key.public_key_der()),
            Err(IssuedError::MalformedChain { index: 0, .. })
        ));
        assert!(matches!(
            check(&[0x30], &[], key.public_key_der()),
            Err(IssuedError::Malformed(_))
        ));
        assert!(matches!(
            check(&vec![0u8; MAX_CERTIFICATE + 1], &[], key.public_key_der()),
            Err(IssuedError::TooLarge { .. })
        ));
    }

    #[test]
    fn serials_lose_their_sign_padding() {
        assert_eq!(serial_hex(&[0x00, 0x8f, 0x01]), "8f01");
        assert_eq!(serial_hex(&[0x00]), "00");
    }
}
