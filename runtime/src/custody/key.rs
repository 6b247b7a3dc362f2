//! One private key and what it can do. Key bytes are zeroized on drop and never printed.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{
    KeySize, OaepPrivateDecryptingKey, Pkcs1PrivateDecryptingKey, PrivateDecryptingKey,
};
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use certconn_x509::{PublicKeyKind, SignatureScheme};
use zeroize::Zeroizing;

use super::pkcs11::TokenKey;
use crate::crypto::provider::Padding;
use crate::crypto::CryptoError;

/// Key types custody can create.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum KeyAlgorithm {
    #[serde(rename = "ec-p256")]
    EcP256,
    #[serde(rename = "ec-p384")]
    EcP384,
    #[serde(rename = "rsa-2048")]
    Rsa2048,
    #[serde(rename = "rsa-3072")]
    Rsa3072,
    #[serde(rename = "rsa-4096")]
    Rsa4096,
}

impl std::str::FromStr for KeyAlgorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "ec-p256" => Self::EcP256,
            "ec-p384" => Self::EcP384,
            "rsa-2048" => Self::Rsa2048,
            "rsa-3072" => Self::Rsa3072,
            "rsa-4096" => Self::Rsa4096,
            other => return Err(format!("unknown key algorithm {other:?}: expected ec-p256, ec-p384, rsa-2048, rsa-3072 or rsa-4096")),
        })
    }
}

impl KeyAlgorithm {
    /// RSA of any size: what can decrypt (an SCEP RA or CA that clients encrypt to, a PFX
    /// password key), where EC can only sign.
    pub fn is_rsa(self) -> bool {
        matches!(self, Self::Rsa2048 | Self::Rsa3072 | Self::Rsa4096)
    }
}

impl std::fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::EcP256 => "ec-p256",
            Self::EcP384 => "ec-p384",
            Self::Rsa2048 => "rsa-2048",
            Self::Rsa3072 => "rsa-3072",
            Self::Rsa4096 => "rsa-4096",
        })
    }
}

enum Inner {
    Ec(EcdsaKeyPair),
    Rsa {
        sign: RsaKeyPair,
        oaep: OaepPrivateDecryptingKey,
        pkcs1: Pkcs1PrivateDecryptingKey,
    },
    /// On a PKCS#11 token: only a handle is here.
    Token(TokenKey),
}

/// The SubjectPublicKeyInfo (DER) of an aws-lc public key, EC or RSA.
fn spki_der<'a, K: AsDer<aws_lc_rs::encoding::PublicKeyX509Der<'a>>>(
    key: &K,
) -> Result<Vec<u8>, CryptoError> {
    Ok(key
        .as_der()
        .map_err(|_| CryptoError::Failed("encoding the public key failed".into()))?
        .as_ref()
        .to_vec())
}

/// A private key held by the host: in memory (software store, device keys) or on a token.
pub struct PrivateKey {
    inner: Inner,
    kind: PublicKeyKind,
    /// `None` for token keys, which cannot leave the token.
    pkcs8: Option<Zeroizing<Vec<u8>>>,
    spki: Vec<u8>,
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key bytes.
        match &self.inner {
            Inner::Token(t) => write!(
                f,
                "PrivateKey({} on token {:?})",
                self.kind.describe(),
                t.token_label()
            ),
            _ => write!(f, "PrivateKey({})", self.kind.describe()),
        }
    }
}

impl PrivateKey {
    /// Generates a fresh key.
    ///
    /// An EC key is kept as generated: loading it back from its PKCS#8 (as [`Self::from_pkcs8`]
    /// does with a key from outside) repeats the public key's scalar multiplication to check a
    /// key that aws-lc has just made, about a third of an EC P-256 key's cost, on every device
    /// key of every issue job. The FIPS build keeps its own check: aws-lc generates through
    /// `EC_KEY_generate_key_fips` there, which tests the new key's pairwise consistency.
    pub fn generate(alg: KeyAlgorithm) -> Result<Self, CryptoError> {
        let failed = |_| CryptoError::Failed(format!("generating a {alg} key failed"));
        match alg {
            KeyAlgorithm::EcP256 | KeyAlgorithm::EcP384 => {
                let sig_alg = if alg == KeyAlgorithm::EcP256 {
                    &signature::ECDSA_P256_SHA256_ASN1_SIGNING
                } else {
                    &signature::ECDSA_P384_SHA384_ASN1_SIGNING
                };
                let kp = EcdsaKeyPair::generate(sig_alg).map_err(failed)?;
                let pkcs8 = Zeroizing::new(kp.to_pkcs8v1().map_err(failed)?.as_ref().to_vec());
                let spki = spki_der(kp.public_key())?;
                Self::software(Inner::Ec(kp), spki, pkcs8)
            }
            KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => {
                let size = match alg {
                    KeyAlgorithm::Rsa2048 => KeySize::Rsa2048,
                    KeyAlgorithm::Rsa3072 => KeySize::Rsa3072,
                    _ => KeySize::Rsa4096,
                };
                let kp = RsaKeyPair::generate(size).map_err(failed)?;
                let pkcs8 = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&kp)
                    .map_err(failed)?
                    .as_ref()
                    .to_vec();
                // The decrypting keys are made from the PKCS#8 (aws-lc-rs has no other way).
                Self::from_pkcs8(Zeroizing::new(pkcs8))
            }
        }
    }

    /// Loads a PKCS#8 PrivateKeyInfo (RSA, or EC on P-256/P-384).
    pub fn from_pkcs8(pkcs8: Zeroizing<Vec<u8>>) -> Result<Self, CryptoError> {
        let (inner, spki) = if let Ok(kp) =
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &pkcs8).or_else(
                |_| EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P384_SHA384_ASN1_SIGNING, &pkcs8),
            ) {
            let spki = spki_der(kp.public_key())?;
            (Inner::Ec(kp), spki)
        } else {
            let sign = RsaKeyPair::from_pkcs8(&pkcs8).map_err(|e| {
                CryptoError::InvalidInput(match e.to_string().as_str() {
                    "TooSmall" => {
                        "the RSA key is smaller than 2048 bits, which certconn does not hold".into()
                    }
                    other => format!("not an RSA or EC (P-256/P-384) PKCS#8 key: {other}"),
                })
            })?;
            let decrypting = || {
                PrivateDecryptingKey::from_pkcs8(&pkcs8).map_err(|e| {
                    CryptoError::InvalidInput(format!("RSA key refused for decryption: {e}"))
                })
            };
            let refused = |_| CryptoError::InvalidInput("RSA key refused for decryption".into());
            let oaep = OaepPrivateDecryptingKey::new(decrypting()?).map_err(refused)?;
            let pkcs1 = Pkcs1PrivateDecryptingKey::new(decrypting()?).map_err(refused)?;
            let spki = spki_der(sign.public_key())?;
            (Inner::Rsa { sign, oaep, pkcs1 }, spki)
        };
        Self::software(inner, spki, pkcs8)
    }

    /// A key held in memory, with its public key and its PKCS#8 (for PFX files, sealing and
    /// `duplicate`).
    fn software(
        inner: Inner,
        spki: Vec<u8>,
        pkcs8: Zeroizing<Vec<u8>>,
    ) -> Result<Self, CryptoError> {
        let (_, kind) =
            PublicKeyKind::of_der(&spki).map_err(|e| CryptoError::InvalidInput(e.to_string()))?;
        Ok(Self {
            inner,
            kind,
            pkcs8: Some(pkcs8),
            spki,
        })
    }

    /// Wraps a key that lives on a PKCS#11 token.
    pub fn from_token(key: TokenKey) -> Self {
        Self {
            kind: key.kind(),
            spki: key.public_key_der().to_vec(),
            inner: Inner::Token(key),
            pkcs8: None,
        }
    }

    /// The token key behind this key, when it is on a token.
    pub fn token(&self) -> Option<&TokenKey> {
        match &self.inner {
            Inner::Token(t) => Some(t),
            _ => None,
        }
    }

    /// A second owner of the same key (a new handle for token keys, a re-parse for software
    /// keys: the aws-lc key objects are not `Clone`).
    pub fn duplicate(&self) -> Result<Self, CryptoError> {
        match (&self.inner, &self.pkcs8) {
            (Inner::Token(t), _) => Ok(Self::from_token(t.clone())),
            (_, Some(pkcs8)) => Self::from_pkcs8(Zeroizing::new(pkcs8.to_vec())),
            (_, None) => Err(CryptoError::Failed(
                "a software key without its PKCS#8".into(),
            )),
        }
    }

    /// DER SubjectPublicKeyInfo.
    pub fn public_key_der(&self) -> &[u8] {
        &self.spki
    }

    /// SHA-256 of [`Self::public_key_der`], hex: how `keys list`, bundles and the API name a
    /// key's public half, so that two copies of a key can be compared without either secret.
    pub fn spki_sha256(&self) -> String {
        hex::encode(crate::crypto::provider::digest(
            crate::crypto::provider::Digest::Sha256,
            &self.spki,
        ))
    }

    /// The key's kind (RSA with size, or the curve).
    pub fn kind(&self) -> PublicKeyKind {
        self.kind
    }

    /// The PKCS#8 encoding, for sealing into a PFX or the key store. Zeroized when the key is
    /// dropped. Token keys have none: they cannot leave the token.
    pub fn pkcs8_der(&self) -> Result<&[u8], CryptoError> {
        match (&self.inner, &self.pkcs8) {
            (Inner::Token(t), _) => Err(CryptoError::InvalidInput(format!(
                "the key is on PKCS#11 token {:?} and cannot be exported",
                t.token_label()
            ))),
            (_, Some(p)) => Ok(p),
            (_, None) => Err(CryptoError::Failed(
                "a software key without its PKCS#8".into(),
            )),
        }
    }

    /// Signs `message` (hashing it) with `scheme`, which must fit the key.
    pub fn sign(&self, scheme: SignatureScheme, message: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mismatch = || {
            CryptoError::InvalidInput(format!(
                "a {} key cannot sign with {}",
                self.kind.describe(),
                scheme.name()
            ))
        };
        let fits = match (self.kind, scheme) {
            (PublicKeyKind::EcP256, SignatureScheme::EcdsaP256Sha256)
            | (PublicKeyKind::EcP384, SignatureScheme::EcdsaP384Sha384) => true,
            (PublicKeyKind::Rsa { .. }, s) => !matches!(
                s,
                SignatureScheme::EcdsaP256Sha256 | SignatureScheme::EcdsaP384Sha384
            ),
            _ => false,
        };
        if !fits {
            return Err(mismatch());
        }
        let rng = SystemRandom::new();
        match &self.inner {
            Inner::Token(t) => t.sign(scheme, message),
            Inner::Ec(kp) => Ok(kp
                .sign(&rng, message)
                .map_err(|_| CryptoError::Failed("ECDSA signing failed".into()))?
                .as_ref()
                .to_vec()),
            Inner::Rsa { sign, .. } => {
                let padding: &'static dyn signature::RsaEncoding = match scheme {
                    SignatureScheme::RsaPkcs1Sha256 => &signature::RSA_PKCS1_SHA256,
                    SignatureScheme::RsaPkcs1Sha384 => &signature::RSA_PKCS1_SHA384,
                    SignatureScheme::RsaPkcs1Sha512 => &signature::RSA_PKCS1_SHA512,
                    SignatureScheme::RsaPssSha256 => &signature::RSA_PSS_SHA256,
                    _ => return Err(mismatch()),
                };
                let mut sig = vec![0u8; sign.public_modulus_len()];
                sign.sign(padding, &rng, message, &mut sig)
                    .map_err(|_| CryptoError::Failed("RSA signing failed".into()))?;
                Ok(sig)
            }
        }
    }

    /// Decrypts an RSA key-transport ciphertext.
    pub fn decrypt(
        &self,
        padding: Padding,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        if let Inner::Token(t) = &self.inner {
            return t.decrypt(padding, ciphertext);
        }
        let Inner::Rsa { oaep, pkcs1, .. } = &self.inner else {
            return Err(CryptoError::InvalidInput(format!(
                "a {} key cannot decrypt",
                self.kind.describe()
            )));
        };
        let failed = |_| {
            CryptoError::Failed(
                "RSA decryption failed (wrong key, padding or corrupt ciphertext)".into(),
            )
        };
        let mut out = Zeroizing::new(vec![0u8; oaep.key_size_bytes()]);
        let n = match padding.oaep() {
            Some(alg) => oaep
                .decrypt(alg, ciphertext, &mut out, None)
                .map_err(failed)?
                .len(),
            None => pkcs1.decrypt(ciphertext, &mut out).map_err(failed)?.len(),
        };
        out.truncate(n);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::provider;

    /// A generated key signs, and its PKCS#8 (what a PFX carries) is the same key: an EC key is
    /// kept as generated, not loaded back from that PKCS#8, so the two must be checked to agree.
    #[test]
    fn generated_keys_sign_and_verify() {
        for (alg, scheme) in [
            (KeyAlgorithm::EcP256, SignatureScheme::EcdsaP256Sha256),
            (KeyAlgorithm::EcP384, SignatureScheme::EcdsaP384Sha384),
            (KeyAlgorithm::Rsa2048, SignatureScheme::RsaPkcs1Sha256),
        ] {
            let key = PrivateKey::generate(alg).unwrap();
            assert_eq!(key.kind().default_signature_scheme(), scheme, "{alg}");
            let sig = key.sign(scheme, b"message").unwrap();
            assert!(provider::verify(key.public_key_der(), scheme, b"message", &sig).unwrap());
            assert!(!provider::verify(key.public_key_der(), scheme, b"massage", &sig).unwrap());
            let reloaded =
                PrivateKey::from_pkcs8(Zeroizing::new(key.pkcs8_der().unwrap().to_vec())).unwrap();
            assert_eq!(reloaded.public_key_der(), key.public_key_der());
            assert_eq!(reloaded.kind(), key.kind());
            let by_reloaded = reloaded.sign(scheme, b"message").unwrap();
            assert!(
                provider::verify(key.public_key_der(), scheme, b"message", &by_reloaded).unwrap()
            );
        }
    }

    #[test]
    fn ec_key_refuses_rsa_scheme_and_decrypt() {
        let key = PrivateKey::generate(KeyAlgorithm::EcP256).unwrap();
        assert!(key.sign(SignatureScheme::RsaPkcs1Sha256, b"m").is_err());
        assert!(key.decrypt(Padding::OaepSha256, b"c").is_err());
    }

    #[test]
    fn rsa_oaep_round_trip() {
        let key = PrivateKey::generate(KeyAlgorithm::Rsa2048).unwrap();
        let ct =
            provider::rsa_encrypt(key.public_key_der(), Padding::OaepSha256, b"secret").unwrap();
        assert_eq!(
            &key.decrypt(Padding::OaepSha256, &ct).unwrap()[..],
            b"secret"
        );
        assert!(key.decrypt(Padding::OaepSha512, &ct).is_err());
    }

    #[test]
    fn serde_and_cli_names_agree() {
        for alg in [
            KeyAlgorithm::EcP256,
            KeyAlgorithm::EcP384,
            KeyAlgorithm::Rsa2048,
            KeyAlgorithm::Rsa3072,
            KeyAlgorithm::Rsa4096,
        ] {
            let json = serde_json::to_value(alg).unwrap();
            assert_eq!(json.as_str().unwrap(), alg.to_string());
            assert_eq!(alg.to_string().parse::<KeyAlgorithm>().unwrap(), alg);
        }
    }

    #[test]
    fn debug_output_has_no_key_bytes() {
        let key = PrivateKey::generate(KeyAlgorithm::EcP256).unwrap();
        assert_eq!(format!("{key:?}"), "PrivateKey(EC P-256)");
    }
}
