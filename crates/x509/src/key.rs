//! What kind of public key a SubjectPublicKeyInfo holds, and how strong it is.

use der::asn1::{ObjectIdentifier, UintRef};
use der::{Decode, Reader, SliceReader};
use spki::SubjectPublicKeyInfoOwned;

use crate::{Error, Result, SignatureScheme};

const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");

/// The public key types certconn issues for and signs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublicKeyKind {
    /// RSA with the modulus size in bits.
    Rsa {
        bits: usize,
    },
    EcP256,
    EcP384,
}

impl PublicKeyKind {
    /// Classifies a SubjectPublicKeyInfo; anything else is an error naming what it is.
    pub fn of(spki: &SubjectPublicKeyInfoOwned) -> Result<Self> {
        match spki.algorithm.oid {
            RSA_ENCRYPTION => {
                let bytes = spki
                    .subject_public_key
                    .as_bytes()
                    .ok_or_else(|| Error::Invalid("RSA public key has unused bits".into()))?;
                Ok(Self::Rsa {
                    bits: rsa_modulus_bits(bytes)?,
                })
            }
            EC_PUBLIC_KEY => {
                let curve = spki
                    .algorithm
                    .parameters
                    .as_ref()
                    .ok_or_else(|| Error::Invalid("EC public key without a named curve".into()))?
                    .decode_as::<ObjectIdentifier>()
                    .map_err(|_| {
                        Error::Invalid("EC public key parameters are not a named curve".into())
                    })?;
                match curve {
                    SECP256R1 => Ok(Self::EcP256),
                    SECP384R1 => Ok(Self::EcP384),
                    other => Err(Error::Invalid(format!(
                        "unsupported elliptic curve {other}"
                    ))),
                }
            }
            other => Err(Error::Invalid(format!(
                "unsupported public key algorithm {other}"
            ))),
        }
    }

    /// Decodes a DER SubjectPublicKeyInfo and classifies it.
    pub fn of_der(spki_der: &[u8]) -> Result<(SubjectPublicKeyInfoOwned, Self)> {
        let spki = SubjectPublicKeyInfoOwned::from_der(spki_der)?;
        let kind = Self::of(&spki)?;
        Ok((spki, kind))
    }

    /// The signature scheme a key of this kind signs certificates with by default.
    pub fn default_signature_scheme(self) -> SignatureScheme {
        match self {
            Self::Rsa { .. } => SignatureScheme::RsaPkcs1Sha256,
            Self::EcP256 => SignatureScheme::EcdsaP256Sha256,
            Self::EcP384 => SignatureScheme::EcdsaP384Sha384,
        }
    }

    /// Human-readable description, for errors.
    pub fn describe(self) -> String {
        match self {
            Self::Rsa { bits } => format!("RSA-{bits}"),
            Self::EcP256 => "EC P-256".into(),
            Self::EcP384 => "EC P-384".into(),
        }
    }
}

/// Bit length of the modulus in a DER RSAPublicKey.
fn rsa_modulus_bits(rsa_public_key: &[u8]) -> Result<usize> {
    let mut reader = SliceReader::new(rsa_public_key)?;
    let n = reader.sequence(|seq| {
        let n = UintRef::decode(seq)?;
        let _e = UintRef::decode(seq)?;
        Ok(n)
    })?;
    let bytes = n.as_bytes();
    let Some(first) = bytes.first() else {
        return Err(Error::Invalid("RSA modulus is zero".into()));
    };
    Ok((bytes.len() - 1) * 8 + (8 - first.leading_zeros() as usize))
}
