//! Signature algorithm identifiers: one table from scheme to OID and back.

use der::asn1::ObjectIdentifier;
use der::{Decode, Encode};
use spki::AlgorithmIdentifierOwned;

use crate::{Error, Result};

const ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const ECDSA_WITH_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
const SHA1_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.5");
const SHA256_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
const SHA384_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.12");
const SHA512_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.13");
const RSASSA_PSS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10");

/// DER of RSASSA-PSS-params for SHA-256, MGF1-SHA-256, salt 32 (RFC 4055).
const PSS_SHA256_PARAMS: &[u8] = &[
    0x30, 0x34, 0xa0, 0x0f, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
    0x01, 0x05, 0x00, 0xa1, 0x1c, 0x30, 0x1a, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01,
    0x01, 0x08, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00, 0xa2, 0x03, 0x02, 0x01, 0x20,
];

/// A signature scheme as certconn names it, mirroring the WIT `signature-algorithm` enum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SignatureScheme {
    EcdsaP256Sha256,
    EcdsaP384Sha384,
    RsaPkcs1Sha256,
    RsaPkcs1Sha384,
    RsaPkcs1Sha512,
    RsaPkcs1Sha1,
    RsaPssSha256,
}

impl SignatureScheme {
    /// The AlgorithmIdentifier that goes into a certificate or CSR signed with this scheme.
    pub fn algorithm_identifier(self) -> AlgorithmIdentifierOwned {
        let (oid, parameters) = match self {
            Self::EcdsaP256Sha256 => (ECDSA_WITH_SHA256, None),
            Self::EcdsaP384Sha384 => (ECDSA_WITH_SHA384, None),
            // RFC 4055: the RSA PKCS#1 v1.5 identifiers carry an explicit NULL.
            Self::RsaPkcs1Sha256 => (SHA256_WITH_RSA, Some(der::asn1::Any::null())),
            Self::RsaPkcs1Sha384 => (SHA384_WITH_RSA, Some(der::asn1::Any::null())),
            Self::RsaPkcs1Sha512 => (SHA512_WITH_RSA, Some(der::asn1::Any::null())),
            Self::RsaPkcs1Sha1 => (SHA1_WITH_RSA, Some(der::asn1::Any::null())),
            Self::RsaPssSha256 => (
                RSASSA_PSS,
                Some(der::asn1::Any::from_der(PSS_SHA256_PARAMS).expect("constant DER is valid")),
            ),
        };
        AlgorithmIdentifierOwned { oid, parameters }
    }

    /// The scheme an AlgorithmIdentifier names, or an error naming the unsupported OID.
    pub fn from_algorithm_identifier(alg: &AlgorithmIdentifierOwned) -> Result<Self> {
        Ok(match alg.oid {
            ECDSA_WITH_SHA256 => Self::EcdsaP256Sha256,
            ECDSA_WITH_SHA384 => Self::EcdsaP384Sha384,
            SHA256_WITH_RSA => Self::RsaPkcs1Sha256,
            SHA384_WITH_RSA => Self::RsaPkcs1Sha384,
            SHA512_WITH_RSA => Self::RsaPkcs1Sha512,
            SHA1_WITH_RSA => Self::RsaPkcs1Sha1,
            RSASSA_PSS => {
                let params = alg
                    .parameters
                    .as_ref()
                    .map(|p| p.to_der())
                    .transpose()?
                    .unwrap_or_default();
                if params != PSS_SHA256_PARAMS {
                    return Err(Error::Invalid(
                        "RSASSA-PSS is supported only with SHA-256, MGF1-SHA-256 and salt length 32".into(),
                    ));
                }
                Self::RsaPssSha256
            }
            other => {
                return Err(Error::Invalid(format!(
                    "unsupported signature algorithm {other}"
                )))
            }
        })
    }

    /// Human-readable name, used in error messages and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::EcdsaP256Sha256 => "ecdsa-with-SHA256 (P-256)",
            Self::EcdsaP384Sha384 => "ecdsa-with-SHA384 (P-384)",
            Self::RsaPkcs1Sha256 => "sha256WithRSAEncryption",
            Self::RsaPkcs1Sha384 => "sha384WithRSAEncryption",
            Self::RsaPkcs1Sha512 => "sha512WithRSAEncryption",
            Self::RsaPkcs1Sha1 => "sha1WithRSAEncryption",
            Self::RsaPssSha256 => "RSASSA-PSS (SHA-256)",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scheme_round_trips_through_its_identifier() {
        for s in [
            SignatureScheme::EcdsaP256Sha256,
            SignatureScheme::EcdsaP384Sha384,
            SignatureScheme::RsaPkcs1Sha256,
            SignatureScheme::RsaPkcs1Sha384,
            SignatureScheme::RsaPkcs1Sha512,
            SignatureScheme::RsaPkcs1Sha1,
            SignatureScheme::RsaPssSha256,
        ] {
            let id = s.algorithm_identifier();
            assert_eq!(SignatureScheme::from_algorithm_identifier(&id).unwrap(), s);
        }
    }

    #[test]
    fn unknown_algorithm_is_named_in_the_error() {
        let id = AlgorithmIdentifierOwned {
            oid: ObjectIdentifier::new_unwrap("1.2.3.4"),
            parameters: None,
        };
        let err = SignatureScheme::from_algorithm_identifier(&id).unwrap_err();
        assert!(err.to_string().contains("1.2.3.4"), "{err}");
    }
}
