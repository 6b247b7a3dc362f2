//! The host's side of [`certconn_scep`]'s traits: primitives from the provider under the
//! algorithm policy, private-key operations from custody.

use certconn_scep::{Cipher, Crypto, Digest, Error, Identity, KeyTransport, Result};
use certconn_x509::SignatureScheme;
use zeroize::Zeroizing;

use crate::crypto::policy::{self, AlgorithmPolicy};
use crate::crypto::provider::{self, Padding};
use crate::custody::PrivateKey;

/// The host provider, filtered by the administrator's algorithm policy.
pub struct HostCrypto {
    pub policy: AlgorithmPolicy,
}

fn err(e: impl std::fmt::Display) -> Error {
    Error::Crypto(e.to_string())
}

pub(crate) fn cipher(c: Cipher) -> policy::Cipher {
    match c {
        Cipher::DesCbc => policy::Cipher::DesCbc,
        Cipher::DesEde3Cbc => policy::Cipher::DesEde3Cbc,
        Cipher::Aes128Cbc => policy::Cipher::Aes128Cbc,
        Cipher::Aes192Cbc => policy::Cipher::Aes192Cbc,
        Cipher::Aes256Cbc => policy::Cipher::Aes256Cbc,
    }
}

pub(crate) fn padding(t: KeyTransport) -> Padding {
    match t {
        KeyTransport::Pkcs1 => Padding::Pkcs1,
        KeyTransport::OaepSha1 => Padding::OaepSha1,
        KeyTransport::OaepSha256 => Padding::OaepSha256,
    }
}

impl Crypto for HostCrypto {
    fn digest(&self, digest: Digest, data: &[u8]) -> Result<Vec<u8>> {
        let d = match digest {
            Digest::Sha1 => provider::Digest::Sha1,
            Digest::Sha256 => provider::Digest::Sha256,
            Digest::Sha384 => provider::Digest::Sha384,
            Digest::Sha512 => provider::Digest::Sha512,
        };
        Ok(provider::digest(d, data))
    }

    fn verify(&self, spki: &[u8], scheme: SignatureScheme, msg: &[u8], sig: &[u8]) -> Result<bool> {
        self.policy.check_verification(scheme).map_err(err)?;
        provider::verify(spki, scheme, msg, sig).map_err(err)
    }

    fn encrypt_key(&self, spki: &[u8], t: KeyTransport, key: &[u8]) -> Result<Vec<u8>> {
        provider::rsa_encrypt(spki, padding(t), key).map_err(err)
    }

    fn cbc_encrypt(&self, c: Cipher, key: &[u8], iv: &[u8], pt: &[u8]) -> Result<Vec<u8>> {
        self.policy
            .check_cipher(cipher(c))
            .map_err(|e| Error::Unsupported(e.to_string()))?;
        provider::cbc_encrypt(cipher(c), key, iv, pt).map_err(err)
    }

    fn cbc_decrypt(&self, c: Cipher, key: &[u8], iv: &[u8], ct: &[u8]) -> Result<Vec<u8>> {
        self.policy
            .check_cipher(cipher(c))
            .map_err(|e| Error::Unsupported(e.to_string()))?;
        provider::cbc_decrypt(cipher(c), key, iv, ct).map_err(err)
    }

    fn random(&self, len: usize) -> Result<Zeroizing<Vec<u8>>> {
        provider::random_vec(len).map(Zeroizing::new).map_err(err)
    }
}

/// A custody key and its certificate (the SCEP RA).
pub struct CustodyIdentity<'a> {
    pub key: &'a PrivateKey,
    pub certificate: &'a [u8],
}

impl Identity for CustodyIdentity<'_> {
    fn certificate(&self) -> &[u8] {
        self.certificate
    }

    fn sign(&self, scheme: SignatureScheme, message: &[u8]) -> Result<Vec<u8>> {
        self.key.sign(scheme, message).map_err(err)
    }

    fn decrypt_key(&self, t: KeyTransport, ct: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        self.key.decrypt(padding(t), ct).map_err(err)
    }
}
