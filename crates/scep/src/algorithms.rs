//! The algorithms SCEP messages name, with their identifiers.

use certconn_x509::SignatureScheme;
use const_oid::ObjectIdentifier;
use der::asn1::Any;
use der::{Decode, Encode};
use spki::AlgorithmIdentifierOwned;

use crate::{oid, Error, Result};

/// Message digests for the SignerInfo and the transaction id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Digest {
    /// SHA-1: the SCEP default when a CA advertises nothing better.
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl Digest {
    pub fn oid(self) -> ObjectIdentifier {
        match self {
            Self::Sha1 => oid::SHA1,
            Self::Sha256 => oid::SHA256,
            Self::Sha384 => oid::SHA384,
            Self::Sha512 => oid::SHA512,
        }
    }

    pub fn from_oid(o: &ObjectIdentifier) -> Result<Self> {
        Ok(match *o {
            oid::SHA1 => Self::Sha1,
            oid::SHA256 => Self::Sha256,
            oid::SHA384 => Self::Sha384,
            oid::SHA512 => Self::Sha512,
            other => {
                return Err(Error::Unsupported(format!(
                    "digest algorithm {} ({other})",
                    known_name(&other).unwrap_or("an unknown algorithm")
                )))
            }
        })
    }

    /// The RSA PKCS#1 v1.5 signature scheme over this digest: SCEP signers are RSA keys.
    pub fn rsa_scheme(self) -> SignatureScheme {
        match self {
            Self::Sha1 => SignatureScheme::RsaPkcs1Sha1,
            Self::Sha256 => SignatureScheme::RsaPkcs1Sha256,
            Self::Sha384 => SignatureScheme::RsaPkcs1Sha384,
            Self::Sha512 => SignatureScheme::RsaPkcs1Sha512,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Sha1 => "SHA-1",
            Self::Sha256 => "SHA-256",
            Self::Sha384 => "SHA-384",
            Self::Sha512 => "SHA-512",
        }
    }

    /// The AlgorithmIdentifier, with the NULL parameters most SCEP peers write.
    pub fn algorithm_identifier(self) -> AlgorithmIdentifierOwned {
        AlgorithmIdentifierOwned {
            oid: self.oid(),
            parameters: Some(Any::null()),
        }
    }
}

/// Content-encryption ciphers for the pkcsPKIEnvelope, weakest last.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Cipher {
    /// Single DES: only when an administrator allows it explicitly.
    DesCbc,
    /// Triple DES: what NDES offers; refused in FIPS mode.
    DesEde3Cbc,
    Aes128Cbc,
    Aes192Cbc,
    Aes256Cbc,
}

impl Cipher {
    pub fn oid(self) -> ObjectIdentifier {
        match self {
            Self::DesCbc => oid::DES_CBC,
            Self::DesEde3Cbc => oid::DES_EDE3_CBC,
            Self::Aes128Cbc => oid::AES128_CBC,
            Self::Aes192Cbc => oid::AES192_CBC,
            Self::Aes256Cbc => oid::AES256_CBC,
        }
    }

    pub fn from_oid(o: &ObjectIdentifier) -> Result<Self> {
        Ok(match *o {
            oid::DES_CBC => Self::DesCbc,
            oid::DES_EDE3_CBC => Self::DesEde3Cbc,
            oid::AES128_CBC => Self::Aes128Cbc,
            oid::AES192_CBC => Self::Aes192Cbc,
            oid::AES256_CBC => Self::Aes256Cbc,
            other => {
                return Err(Error::Unsupported(format!(
                    "content encryption {} ({other}); SCEP here speaks AES-CBC, and 3DES or DES where allowed",
                    known_name(&other).unwrap_or("an unknown algorithm")
                )))
            }
        })
    }

    pub fn key_len(self) -> usize {
        match self {
            Self::DesCbc => 8,
            Self::DesEde3Cbc | Self::Aes192Cbc => 24,
            Self::Aes128Cbc => 16,
            Self::Aes256Cbc => 32,
        }
    }

    pub fn iv_len(self) -> usize {
        match self {
            Self::DesCbc | Self::DesEde3Cbc => 8,
            _ => 16,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::DesCbc => "DES-CBC",
            Self::DesEde3Cbc => "3DES-CBC",
            Self::Aes128Cbc => "AES-128-CBC",
            Self::Aes192Cbc => "AES-192-CBC",
            Self::Aes256Cbc => "AES-256-CBC",
        }
    }
}

/// How the content-encryption key reaches the recipient's RSA key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyTransport {
    /// RSAES-PKCS1-v1_5: what every SCEP implementation reads.
    Pkcs1,
    /// RSAES-OAEP with SHA-1 (the RFC 3560 default parameters).
    OaepSha1,
    /// RSAES-OAEP with SHA-256 and MGF1-SHA-256.
    OaepSha256,
}

/// RSAES-OAEP-params { hashFunc sha256, maskGenFunc mgf1(sha256), pSourceFunc default }.
const OAEP_SHA256_PARAMS: &[u8] = &[
    0x30, 0x2f, 0xa0, 0x0f, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
    0x01, 0x05, 0x00, 0xa1, 0x1c, 0x30, 0x1a, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01,
    0x01, 0x08, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00,
];

impl KeyTransport {
    pub fn algorithm_identifier(self) -> AlgorithmIdentifierOwned {
        let (oid, parameters) = match self {
            Self::Pkcs1 => (oid::RSA_ENCRYPTION, Some(Any::null())),
            // Empty RSAES-OAEP-params: every field at its SHA-1 default.
            Self::OaepSha1 => (
                oid::RSAES_OAEP,
                Some(Any::from_der(&[0x30, 0x00]).expect("constant DER")),
            ),
            Self::OaepSha256 => (
                oid::RSAES_OAEP,
                Some(Any::from_der(OAEP_SHA256_PARAMS).expect("constant DER")),
            ),
        };
        AlgorithmIdentifierOwned { oid, parameters }
    }

    pub fn from_algorithm_identifier(alg: &AlgorithmIdentifierOwned) -> Result<Self> {
        match alg.oid {
            oid::RSA_ENCRYPTION => Ok(Self::Pkcs1),
            oid::RSAES_OAEP => {
                let params = match &alg.parameters {
                    Some(p) => p
                        .to_der()
                        .map_err(Error::malformed("RSAES-OAEP parameters"))?,
                    None => return Ok(Self::OaepSha1),
                };
                if params == [0x30, 0x00] {
                    Ok(Self::OaepSha1)
                } else if params == OAEP_SHA256_PARAMS {
                    Ok(Self::OaepSha256)
                } else {
                    Err(Error::Unsupported(
                        "RSAES-OAEP parameters other than SHA-1 or SHA-256 with MGF1 of the same hash".into(),
                    ))
                }
            }
            other => Err(Error::Unsupported(format!("key transport {other}"))),
        }
    }
}

/// The digest and signature scheme of a SignerInfo. The digest comes from its
/// signatureAlgorithm when that names one (sha256WithRSAEncryption), else from its
/// digestAlgorithm (rsaEncryption, as NDES writes). RSASSA-PSS is read with SHA-256, MGF1-SHA-256
/// and a 32-byte salt: what clients that sign with PSS send.
pub(crate) fn signer_scheme(
    digest_alg: &AlgorithmIdentifierOwned,
    signature_alg: &AlgorithmIdentifierOwned,
) -> Result<(Digest, SignatureScheme)> {
    let digest = Digest::from_oid(&digest_alg.oid)?;
    let named = match signature_alg.oid {
        oid::RSA_ENCRYPTION => None,
        oid::SHA1_WITH_RSA => Some(Digest::Sha1),
        oid::SHA256_WITH_RSA => Some(Digest::Sha256),
        oid::SHA384_WITH_RSA => Some(Digest::Sha384),
        oid::SHA512_WITH_RSA => Some(Digest::Sha512),
        oid::RSASSA_PSS => {
            let scheme = SignatureScheme::from_algorithm_identifier(signature_alg)
                .map_err(|e| Error::Unsupported(e.to_string()))?;
            if digest != Digest::Sha256 {
                return Err(Error::BadSignature(format!(
                    "the signer's digest ({}) and RSASSA-PSS with SHA-256 disagree",
                    digest.name()
                )));
            }
            return Ok((digest, scheme));
        }
        other => {
            return Err(Error::Unsupported(format!(
                "signature algorithm {other} (SCEP signers are RSA keys)"
            )))
        }
    };
    match named {
        Some(n) if n != digest => Err(Error::BadSignature(format!(
            "the signer's digest ({}) and signature algorithm ({}) disagree",
            digest.name(),
            n.name()
        ))),
        _ => Ok((digest, digest.rsa_scheme())),
    }
}

/// The names of algorithms a peer may use that SCEP here does not, for errors that say which
/// one it was rather than only its OID.
pub fn known_name(o: &ObjectIdentifier) -> Option<&'static str> {
    Some(match o.to_string().as_str() {
        "2.16.840.1.101.3.4.1.6" => "AES-128-GCM",
        "2.16.840.1.101.3.4.1.26" => "AES-192-GCM",
        "2.16.840.1.101.3.4.1.46" => "AES-256-GCM",
        "2.16.840.1.101.3.4.1.7" => "AES-128-CCM",
        "2.16.840.1.101.3.4.1.47" => "AES-256-CCM",
        "1.2.840.113549.3.2" => "RC2-CBC",
        "1.2.840.113549.3.4" => "RC4",
        "1.2.840.113549.2.5" => "MD5",
        "1.2.840.113549.2.2" => "MD2",
        "2.16.840.1.101.3.4.2.4" => "SHA-224",
        "2.16.840.1.101.3.4.2.8" => "SHA3-256",
        "1.2.840.113549.1.9.16.3.18" => "ChaCha20-Poly1305",
        _ => return None,
    })
}

#[cfg(test)]
mod name_tests {
    use super::*;

    #[test]
    fn an_unsupported_cipher_is_named() {
        let gcm = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.1.46");
        let e = Cipher::from_oid(&gcm).unwrap_err().to_string();
        assert!(
            e.contains("AES-256-GCM") && e.contains("2.16.840.1.101.3.4.1.46"),
            "{e}"
        );
    }
}
