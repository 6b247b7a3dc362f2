//! The host's custody and crypto, with the x509 crate's types.
//!
//! Every function here crosses into the host: keys stay there and primitives run in its provider
//! under its algorithm policy. Errors come back as text suitable for a [`BackendError`].

use certconn_x509::SignatureScheme;

use crate::bindings::certconn::plugin::types::{DigestAlgorithm, SignatureAlgorithm};
use crate::bindings::certconn::plugin::{crypto, custody};
use crate::BackendError;

pub use crate::bindings::certconn::plugin::types::{EncryptionPadding, SymmetricCipher};
pub use crypto::CryptoError;
pub use custody::CustodyError;

impl From<SignatureScheme> for SignatureAlgorithm {
    fn from(s: SignatureScheme) -> Self {
        match s {
            SignatureScheme::EcdsaP256Sha256 => Self::EcdsaP256Sha256,
            SignatureScheme::EcdsaP384Sha384 => Self::EcdsaP384Sha384,
            SignatureScheme::RsaPkcs1Sha256 => Self::RsaPkcs1Sha256,
            SignatureScheme::RsaPkcs1Sha384 => Self::RsaPkcs1Sha384,
            SignatureScheme::RsaPkcs1Sha512 => Self::RsaPkcs1Sha512,
            SignatureScheme::RsaPkcs1Sha1 => Self::RsaPkcs1Sha1,
            SignatureScheme::RsaPssSha256 => Self::RsaPssSha256,
        }
    }
}

/// A custody failure is the administrator's to fix (a missing grant) or a fault: never retried
/// blindly, so it becomes `rejected` with the reason.
impl From<CustodyError> for BackendError {
    fn from(e: CustodyError) -> Self {
        BackendError::Rejected(e.to_string())
    }
}

impl From<CryptoError> for BackendError {
    fn from(e: CryptoError) -> Self {
        BackendError::Rejected(e.to_string())
    }
}

/// Signs `message` with the granted key `handle`; the host hashes.
pub fn sign(
    handle: &str,
    scheme: SignatureScheme,
    message: &[u8],
) -> Result<Vec<u8>, CustodyError> {
    custody::sign(handle, scheme.into(), message)
}

/// The granted key's SubjectPublicKeyInfo, DER.
pub fn public_key(handle: &str) -> Result<Vec<u8>, CustodyError> {
    custody::public_key(handle)
}

/// The certificate chain custody holds for the granted key, its own certificate first.
pub fn certificate_chain(handle: &str) -> Result<Vec<Vec<u8>>, CustodyError> {
    custody::certificate_chain(handle)
}

/// Decrypts a key-transport ciphertext with the granted key.
pub fn decrypt(
    handle: &str,
    padding: EncryptionPadding,
    ciphertext: &[u8],
) -> Result<Vec<u8>, CustodyError> {
    custody::decrypt(handle, padding, ciphertext)
}

/// Verifies a signature with a DER SubjectPublicKeyInfo.
pub fn verify(
    public_key: &[u8],
    scheme: SignatureScheme,
    message: &[u8],
    signature: &[u8],
) -> Result<bool, CryptoError> {
    crypto::verify(public_key, scheme.into(), message, signature)
}

/// SHA-256 of `data`, computed by the host.
pub fn sha256(data: &[u8]) -> Result<Vec<u8>, CryptoError> {
    crypto::digest(DigestAlgorithm::Sha256, data)
}

/// `len` random bytes from the host's approved generator.
pub fn random_bytes(len: u32) -> Vec<u8> {
    crypto::random_bytes(len)
}

/// Encrypts to a public key (key transport).
pub fn public_key_encrypt(
    public_key: &[u8],
    padding: EncryptionPadding,
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    crypto::public_key_encrypt(public_key, padding, plaintext)
}

/// Symmetric CBC encryption with PKCS#7 padding.
pub fn symmetric_encrypt(
    cipher: SymmetricCipher,
    key: &[u8],
    iv: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    crypto::symmetric_encrypt(cipher, key, iv, plaintext)
}

/// Symmetric CBC decryption, padding removed.
pub fn symmetric_decrypt(
    cipher: SymmetricCipher,
    key: &[u8],
    iv: &[u8],
    ciphertext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    crypto::symmetric_decrypt(cipher, key, iv, ciphertext)
}

/// HMAC-SHA-256 of `data` under `key`, computed by the host: for CA APIs that authenticate
/// requests with a keyed hash. (`certconn:plugin@0.2`.)
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> Result<Vec<u8>, CryptoError> {
    crypto::hmac(DigestAlgorithm::Sha256, key, data)
}
