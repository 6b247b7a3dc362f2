//! PKCS#10 certification requests for keys held in custody.

use certconn_x509::{extensions, signed, SubjectAltName};
use der::asn1::{Any, SetOfVec};
use der::{Decode, Encode};
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::attr::Attribute;
use x509_cert::name::Name;
use x509_cert::request::{CertReqInfo, Version};

use super::PkiError;
use crate::custody::PrivateKey;

/// challengePassword (PKCS#9), the SCEP enrolment secret: written here into the requests
/// certconn makes, read by the SCEP server from the requests devices send.
pub const CHALLENGE_PASSWORD: const_oid::ObjectIdentifier =
    const_oid::ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.7");

/// Builds and signs a CSR for `key` with `subject` and, when given, the SANs as an
/// extensionRequest.
pub fn build(
    key: &PrivateKey,
    subject: &Name,
    sans: &[SubjectAltName],
) -> Result<Vec<u8>, PkiError> {
    build_with_challenge(key, subject, sans, None)
}

/// [`build`], with a challengePassword attribute (SCEP) when `challenge` is given.
pub fn build_with_challenge(
    key: &PrivateKey,
    subject: &Name,
    sans: &[SubjectAltName],
    challenge: Option<&str>,
) -> Result<Vec<u8>, PkiError> {
    let public_key = SubjectPublicKeyInfoOwned::from_der(key.public_key_der())
        .map_err(PkiError::der("public key"))?;
    let mut attributes = SetOfVec::new();
    if !sans.is_empty() {
        let ext = extensions::subject_alt_name(sans, subject)?;
        let list = Any::from_der(&extensions::encode_extension_list(&[ext])?)
            .map_err(PkiError::der("extension request"))?;
        let values = SetOfVec::try_from(vec![list]).map_err(PkiError::der("extension request"))?;
        attributes
            .insert(Attribute {
                oid: extensions::EXTENSION_REQUEST_OID,
                values,
            })
            .map_err(PkiError::der("extension request"))?;
    }
    if let Some(c) = challenge {
        let value = der::asn1::Utf8StringRef::new(c)
            .and_then(|s| Any::encode_from(&s))
            .map_err(PkiError::der("challenge password"))?;
        attributes
            .insert(Attribute {
                oid: CHALLENGE_PASSWORD,
                values: SetOfVec::try_from(vec![value])
                    .map_err(PkiError::der("challenge password"))?,
            })
            .map_err(PkiError::der("challenge password"))?;
    }
    let info = CertReqInfo {
        version: Version::V1,
        subject: subject.clone(),
        public_key,
        attributes,
    };
    let tbs = info.to_der().map_err(PkiError::der("CSR"))?;
    let scheme = key.kind().default_signature_scheme();
    let signature = key.sign(scheme, &tbs)?;
    Ok(signed::assemble(
        &tbs,
        &scheme.algorithm_identifier(),
        &signature,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::provider;
    use crate::custody::KeyAlgorithm;
    use std::str::FromStr;

    #[test]
    fn csr_verifies_and_carries_its_sans() {
        let key = PrivateKey::generate(KeyAlgorithm::EcP256).unwrap();
        let subject = Name::from_str("CN=Alice,O=Example").unwrap();
        let sans = vec![SubjectAltName::Email("alice@example.com".into())];
        let der = build(&key, &subject, &sans).unwrap();
        let parts = signed::SignedParts::split(&der).unwrap();
        let scheme =
            certconn_x509::SignatureScheme::from_algorithm_identifier(&parts.algorithm).unwrap();
        assert!(
            provider::verify(key.public_key_der(), scheme, parts.tbs, parts.signature).unwrap()
        );
        let req = x509_cert::request::CertReq::from_der(&der).unwrap();
        assert_eq!(extensions::requested_subject_alt_names(&req).unwrap(), sans);
    }
}
