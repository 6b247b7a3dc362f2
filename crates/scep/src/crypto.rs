//! What SCEP needs from the side that holds the keys and runs the primitives.

use certconn_x509::SignatureScheme;
use zeroize::Zeroizing;

use crate::{Cipher, Digest, KeyTransport, Result};

/// The primitives: the host's provider on the server, the host's `crypto` import in a plugin.
pub trait Crypto {
    fn digest(&self, digest: Digest, data: &[u8]) -> Result<Vec<u8>>;
    /// `Ok(false)` when the signature does not match; `Err` when the check could not run.
    fn verify(
        &self,
        spki_der: &[u8],
        scheme: SignatureScheme,
        message: &[u8],
        signature: &[u8],
    ) -> Result<bool>;
    /// Encrypts a content-encryption key to an RSA public key (SubjectPublicKeyInfo DER).
    fn encrypt_key(&self, spki_der: &[u8], transport: KeyTransport, key: &[u8]) -> Result<Vec<u8>>;
    /// CBC with PKCS#7 padding; the implementation applies its algorithm policy.
    fn cbc_encrypt(
        &self,
        cipher: Cipher,
        key: &[u8],
        iv: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>>;
    fn cbc_decrypt(
        &self,
        cipher: Cipher,
        key: &[u8],
        iv: &[u8],
        ciphertext: &[u8],
    ) -> Result<Vec<u8>>;
    fn random(&self, len: usize) -> Result<Zeroizing<Vec<u8>>>;
}

/// A certificate and the private key behind it, held by custody: the SCEP server's RA, or the
/// requester's (device) key in a plugin. Only handles cross this trait, never key bytes.
pub trait Identity {
    /// The certificate, DER: the signer of outgoing messages and the recipient of replies.
    fn certificate(&self) -> &[u8];
    fn sign(&self, scheme: SignatureScheme, message: &[u8]) -> Result<Vec<u8>>;
    /// Decrypts a key-transport ciphertext (the content-encryption key of an envelope).
    fn decrypt_key(&self, transport: KeyTransport, ciphertext: &[u8])
        -> Result<Zeroizing<Vec<u8>>>;
}
