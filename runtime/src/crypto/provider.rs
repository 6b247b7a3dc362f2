//! Thin, typed wrappers over aws-lc-rs. Nothing here decides *whether* an algorithm may be used;
//! callers ask the [`AlgorithmPolicy`](super::AlgorithmPolicy) first.

use aws_lc_rs::cipher::{
    DecryptionContext, EncryptionContext, PaddedBlockDecryptingKey, PaddedBlockEncryptingKey,
    UnboundCipherKey, AES_128, AES_192, AES_256,
};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::rsa::{
    OaepPublicEncryptingKey, Pkcs1PublicEncryptingKey, PublicEncryptingKey, OAEP_SHA1_MGF1SHA1,
    OAEP_SHA256_MGF1SHA256, OAEP_SHA384_MGF1SHA384, OAEP_SHA512_MGF1SHA512,
};
use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use aws_lc_rs::{digest, hmac, pbkdf2};
use certconn_x509::SignatureScheme;
use std::num::NonZeroU32;
use zeroize::Zeroizing;

use super::policy::Cipher;
use super::CryptoError;

/// Digest algorithms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Digest {
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl Digest {
    /// Name for reports, e.g. "SHA256".
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha1 => "SHA1",
            Self::Sha256 => "SHA256",
            Self::Sha384 => "SHA384",
            Self::Sha512 => "SHA512",
        }
    }

    fn algorithm(self) -> &'static digest::Algorithm {
        match self {
            Self::Sha1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
            Self::Sha256 => &digest::SHA256,
            Self::Sha384 => &digest::SHA384,
            Self::Sha512 => &digest::SHA512,
        }
    }
}

/// RSA key-transport paddings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Padding {
    OaepSha1,
    OaepSha256,
    OaepSha384,
    OaepSha512,
    Pkcs1,
}

impl Padding {
    pub(crate) fn oaep(self) -> Option<&'static aws_lc_rs::rsa::OaepAlgorithm> {
        match self {
            Self::OaepSha1 => Some(&OAEP_SHA1_MGF1SHA1),
            Self::OaepSha256 => Some(&OAEP_SHA256_MGF1SHA256),
            Self::OaepSha384 => Some(&OAEP_SHA384_MGF1SHA384),
            Self::OaepSha512 => Some(&OAEP_SHA512_MGF1SHA512),
            Self::Pkcs1 => None,
        }
    }
    /// The OAEP hash (also the MGF1 hash), or `None` for PKCS#1 v1.5.
    pub fn oaep_digest(self) -> Option<Digest> {
        match self {
            Self::OaepSha1 => Some(Digest::Sha1),
            Self::OaepSha256 => Some(Digest::Sha256),
            Self::OaepSha384 => Some(Digest::Sha384),
            Self::OaepSha512 => Some(Digest::Sha512),
            Self::Pkcs1 => None,
        }
    }
}

/// Fills `buf` from the approved DRBG.
pub fn fill_random(buf: &mut [u8]) -> Result<(), CryptoError> {
    SystemRandom::new()
        .fill(buf)
        .map_err(|_| CryptoError::Failed("the random generator failed".into()))
}

/// `len` random bytes.
pub fn random_vec(len: usize) -> Result<Vec<u8>, CryptoError> {
    let mut v = vec![0u8; len];
    fill_random(&mut v)?;
    Ok(v)
}

/// Hashes `data`.
pub fn digest(alg: Digest, data: &[u8]) -> Vec<u8> {
    digest::digest(alg.algorithm(), data).as_ref().to_vec()
}

/// `data` hashed `iterations` times over, each hash of the one before (the chain the PKCS#12
/// key derivation runs thousands of rounds long). One buffer holds the chain, zeroized when
/// done: a vector per round cost an allocation each and left every link in freed memory.
pub fn digest_iterated(alg: Digest, data: &[u8], iterations: u32) -> Zeroizing<Vec<u8>> {
    let alg = alg.algorithm();
    let len = alg.output_len();
    let mut chain = Zeroizing::new([0u8; digest::MAX_OUTPUT_LEN]);
    chain[..len].copy_from_slice(digest::digest(alg, data).as_ref());
    for _ in 1..iterations.max(1) {
        let next = digest::digest(alg, &chain[..len]);
        chain[..len].copy_from_slice(next.as_ref());
    }
    Zeroizing::new(chain[..len].to_vec())
}

fn verification_algorithm(scheme: SignatureScheme) -> &'static dyn VerificationAlgorithm {
    match scheme {
        SignatureScheme::EcdsaP256Sha256 => &signature::ECDSA_P256_SHA256_ASN1,
        SignatureScheme::EcdsaP384Sha384 => &signature::ECDSA_P384_SHA384_ASN1,
        SignatureScheme::RsaPkcs1Sha256 => &signature::RSA_PKCS1_2048_8192_SHA256,
        SignatureScheme::RsaPkcs1Sha384 => &signature::RSA_PKCS1_2048_8192_SHA384,
        SignatureScheme::RsaPkcs1Sha512 => &signature::RSA_PKCS1_2048_8192_SHA512,
        SignatureScheme::RsaPkcs1Sha1 => &signature::RSA_PKCS1_1024_8192_SHA1_FOR_LEGACY_USE_ONLY,
        SignatureScheme::RsaPssSha256 => &signature::RSA_PSS_2048_8192_SHA256,
    }
}

/// Verifies `sig` over `msg` with a DER SubjectPublicKeyInfo. `Ok(false)` is a mismatch.
pub fn verify(
    spki: &[u8],
    scheme: SignatureScheme,
    msg: &[u8],
    sig: &[u8],
) -> Result<bool, CryptoError> {
    Ok(UnparsedPublicKey::new(verification_algorithm(scheme), spki)
        .verify(msg, sig)
        .is_ok())
}

/// Encrypts `plaintext` to an RSA SubjectPublicKeyInfo.
pub fn rsa_encrypt(
    spki: &[u8],
    padding: Padding,
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let key = PublicEncryptingKey::from_der(spki)
        .map_err(|e| CryptoError::InvalidInput(format!("not an RSA public key: {e}")))?;
    let failed =
        |_| CryptoError::Failed("RSA encryption failed (plaintext too long for the key?)".into());
    match padding.oaep() {
        Some(alg) => {
            let key = OaepPublicEncryptingKey::new(key)
                .map_err(|_| CryptoError::InvalidInput("RSA key refused for OAEP".into()))?;
            let mut out = vec![0u8; key.ciphertext_size()];
            let n = key
                .encrypt(alg, plaintext, &mut out, None)
                .map_err(failed)?
                .len();
            out.truncate(n);
            Ok(out)
        }
        None => {
            let key = Pkcs1PublicEncryptingKey::new(key)
                .map_err(|_| CryptoError::InvalidInput("RSA key refused for PKCS#1".into()))?;
            let mut out = vec![0u8; key.ciphertext_size()];
            let n = key.encrypt(plaintext, &mut out).map_err(failed)?.len();
            out.truncate(n);
            Ok(out)
        }
    }
}

// 3DES and DES are deprecated in aws-lc-rs; they stay reachable only for legacy peers, and
// only after the algorithm policy allowed them (never in FIPS mode).
#[allow(deprecated)]
fn cipher_key(cipher: Cipher, key: &[u8]) -> Result<UnboundCipherKey, CryptoError> {
    let (alg, key_len) = match cipher {
        Cipher::Aes128Cbc => (&AES_128, 16),
        Cipher::Aes192Cbc => (&AES_192, 24),
        Cipher::Aes256Cbc => (&AES_256, 32),
        Cipher::DesEde3Cbc => (&aws_lc_rs::cipher::DES_EDE3_FOR_LEGACY_USE_ONLY, 24),
        Cipher::DesCbc => (&aws_lc_rs::cipher::DES_FOR_LEGACY_USE_ONLY, 8),
        Cipher::Rc2Cbc => {
            return Err(CryptoError::InvalidInput(
                "RC2 is decrypt-only, through rc2_cbc_decrypt".into(),
            ))
        }
    };
    if key.len() != key_len {
        return Err(CryptoError::InvalidInput(format!(
            "{} needs a {key_len}-byte key, got {}",
            cipher.name(),
            key.len()
        )));
    }
    UnboundCipherKey::new(alg, key)
        .map_err(|_| CryptoError::InvalidInput(format!("{} key refused", cipher.name())))
}

fn iv_context(cipher: Cipher, iv: &[u8]) -> Result<[u8; 16], CryptoError> {
    let block = if matches!(cipher, Cipher::DesCbc | Cipher::DesEde3Cbc) {
        8
    } else {
        16
    };
    if iv.len() != block {
        return Err(CryptoError::InvalidInput(format!(
            "{} needs a {block}-byte IV, got {}",
            cipher.name(),
            iv.len()
        )));
    }
    let mut out = [0u8; 16];
    out[..block].copy_from_slice(iv);
    Ok(out)
}

/// CBC encryption with PKCS#7 padding under the caller's IV.
pub fn cbc_encrypt(
    cipher: Cipher,
    key: &[u8],
    iv: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let iv_buf = iv_context(cipher, iv)?;
    let key = PaddedBlockEncryptingKey::cbc_pkcs7(cipher_key(cipher, key)?)
        .map_err(|_| CryptoError::Failed(format!("{} key setup failed", cipher.name())))?;
    let context = if iv.len() == 8 {
        EncryptionContext::Iv64(
            <[u8; 8]>::try_from(&iv_buf[..8])
                .map_err(|_| CryptoError::InvalidInput("IV".into()))?
                .into(),
        )
    } else {
        EncryptionContext::Iv128(iv_buf.into())
    };
    let mut data = plaintext.to_vec();
    key.less_safe_encrypt(&mut data, context)
        .map_err(|_| CryptoError::Failed(format!("{} encryption failed", cipher.name())))?;
    Ok(data)
}

/// CBC decryption; removes PKCS#7 padding. A padding error is reported as such.
pub fn cbc_decrypt(
    cipher: Cipher,
    key: &[u8],
    iv: &[u8],
    ciphertext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let iv_buf = iv_context(cipher, iv)?;
    let key = PaddedBlockDecryptingKey::cbc_pkcs7(cipher_key(cipher, key)?)
        .map_err(|_| CryptoError::Failed(format!("{} key setup failed", cipher.name())))?;
    let context = if iv.len() == 8 {
        DecryptionContext::Iv64(
            <[u8; 8]>::try_from(&iv_buf[..8])
                .map_err(|_| CryptoError::InvalidInput("IV".into()))?
                .into(),
        )
    } else {
        DecryptionContext::Iv128(iv_buf.into())
    };
    let mut data = ciphertext.to_vec();
    let n = key
        .decrypt(&mut data, context)
        .map_err(|_| {
            CryptoError::Failed(format!(
                "{} decryption failed (wrong key or corrupt data)",
                cipher.name()
            ))
        })?
        .len();
    data.truncate(n);
    Ok(data)
}

/// PBKDF2 pseudo-random functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prf {
    HmacSha1,
    HmacSha256,
    HmacSha384,
    HmacSha512,
}

/// PBKDF2 into `out`.
pub fn pbkdf2(
    prf: Prf,
    password: &[u8],
    salt: &[u8],
    iterations: u32,
    out: &mut [u8],
) -> Result<(), CryptoError> {
    let iterations = NonZeroU32::new(iterations)
        .ok_or_else(|| CryptoError::InvalidInput("PBKDF2 needs at least one iteration".into()))?;
    let alg = match prf {
        Prf::HmacSha1 => pbkdf2::PBKDF2_HMAC_SHA1,
        Prf::HmacSha256 => pbkdf2::PBKDF2_HMAC_SHA256,
        Prf::HmacSha384 => pbkdf2::PBKDF2_HMAC_SHA384,
        Prf::HmacSha512 => pbkdf2::PBKDF2_HMAC_SHA512,
    };
    pbkdf2::derive(alg, iterations, salt, password, out);
    Ok(())
}

/// HMAC with the given digest.
pub fn hmac(digest: Digest, key: &[u8], data: &[u8]) -> Vec<u8> {
    let alg = match digest {
        Digest::Sha1 => hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        Digest::Sha256 => hmac::HMAC_SHA256,
        Digest::Sha384 => hmac::HMAC_SHA384,
        Digest::Sha512 => hmac::HMAC_SHA512,
    };
    hmac::sign(&hmac::Key::new(alg, key), data)
        .as_ref()
        .to_vec()
}

/// RC2-CBC decryption with PKCS#7 padding removed, for legacy PKCS#12 files only. RC2 is not in
/// aws-lc-rs; this is RustCrypto's, reached only after the policy allowed `Cipher::Rc2Cbc`.
pub fn rc2_cbc_decrypt(
    key: &[u8],
    effective_bits: usize,
    iv: &[u8],
    ciphertext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    use cbc::cipher::{block_padding::Pkcs7, BlockDecryptMut, InnerIvInit};
    let iv: [u8; 8] = iv.try_into().map_err(|_| {
        CryptoError::InvalidInput(format!("RC2-CBC needs an 8-byte IV, got {}", iv.len()))
    })?;
    let cipher = rc2::Rc2::new_with_eff_key_len(key, effective_bits);
    cbc::Decryptor::<rc2::Rc2>::inner_iv_init(cipher, &iv.into())
        .decrypt_padded_vec_mut::<Pkcs7>(ciphertext)
        .map_err(|_| {
            CryptoError::Failed("RC2-CBC decryption failed (wrong key or corrupt data)".into())
        })
}

/// Constant-time equality, for MACs and tokens.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cbc_round_trips_for_each_cipher() {
        for (cipher, klen, ivlen) in [
            (Cipher::Aes128Cbc, 16, 16),
            (Cipher::Aes256Cbc, 32, 16),
            (Cipher::DesEde3Cbc, 24, 8),
        ] {
            let key = random_vec(klen).unwrap();
            let iv = random_vec(ivlen).unwrap();
            let ct = cbc_encrypt(cipher, &key, &iv, b"attack at dawn").unwrap();
            assert_ne!(&ct[..], b"attack at dawn");
            assert_eq!(
                cbc_decrypt(cipher, &key, &iv, &ct).unwrap(),
                b"attack at dawn"
            );
        }
    }

    /// Each round hashes the one before, for every digest length (SHA-1's 20 bytes to
    /// SHA-512's 64); zero rounds count as one, as the PKCS#12 derivation's loop always did.
    #[test]
    fn an_iterated_digest_is_the_chain_of_single_ones() {
        for alg in [Digest::Sha1, Digest::Sha256, Digest::Sha384, Digest::Sha512] {
            let mut chain = digest(alg, b"certconn");
            assert_eq!(&digest_iterated(alg, b"certconn", 1)[..], &chain[..]);
            assert_eq!(&digest_iterated(alg, b"certconn", 0)[..], &chain[..]);
            for _ in 1..5 {
                chain = digest(alg, &chain);
            }
            assert_eq!(
                &digest_iterated(alg, b"certconn", 5)[..],
                &chain[..],
                "{alg:?}"
            );
        }
    }

    #[test]
    fn wrong_iv_length_is_named() {
        let e = cbc_encrypt(Cipher::Aes256Cbc, &[0; 32], &[0; 8], b"x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("16-byte IV"), "{e}");
    }

    #[test]
    fn pbkdf2_matches_rfc7914_vector() {
        // RFC 7914 section 11: PBKDF2-HMAC-SHA256, P="passwd", S="salt", c=1, dkLen=64.
        let mut out = [0u8; 64];
        pbkdf2(Prf::HmacSha256, b"passwd", b"salt", 1, &mut out).unwrap();
        assert_eq!(hex::encode(&out[..16]), "55ac046e56e3089fec1691c22544b605");
    }
}
