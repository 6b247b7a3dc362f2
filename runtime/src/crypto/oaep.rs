//! RSA-OAEP decoding (RFC 8017, section 7.1.2, EME-OAEP with MGF1 and an empty label).
//!
//! Why this exists: some PKCS#11 tokens only decrypt OAEP with SHA-1 (SoftHSM2 2.6 refuses any
//! other hash with `CKR_ARGUMENTS_BAD`), yet the PFX-password format uses OAEP with SHA-512. For
//! such tokens custody asks the token for the raw RSA private operation (`CKM_RSA_X_509`, the
//! private key still never leaves it) and removes the OAEP encoding here. The checks run without
//! data-dependent branches or early exits, and every failure is the same error, so the decoder
//! does not become a padding oracle (Manger's attack).

use zeroize::Zeroizing;

use super::provider::{self, Digest};
use super::CryptoError;

fn digest_len(alg: Digest) -> usize {
    match alg {
        Digest::Sha1 => 20,
        Digest::Sha256 => 32,
        Digest::Sha384 => 48,
        Digest::Sha512 => 64,
    }
}

/// MGF1 (RFC 8017, B.2.1): `len` bytes of mask from `seed`.
fn mgf1(alg: Digest, seed: &[u8], len: usize) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(len + digest_len(alg)));
    let mut input = Zeroizing::new(Vec::with_capacity(seed.len() + 4));
    let mut counter: u32 = 0;
    while out.len() < len {
        input.clear();
        input.extend_from_slice(seed);
        input.extend_from_slice(&counter.to_be_bytes());
        out.extend_from_slice(&provider::digest(alg, &input));
        counter += 1;
    }
    out.truncate(len);
    out
}

/// Decodes the encoded message `em` (the raw RSA decryption, left-padded to the modulus length
/// `k`) and returns the plaintext.
pub fn decode(alg: Digest, em: &[u8], k: usize) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let failed = || {
        CryptoError::Failed(
            "RSA decryption failed (wrong key, padding or corrupt ciphertext)".into(),
        )
    };
    let h_len = digest_len(alg);
    if k < 2 * h_len + 2 || em.len() > k {
        return Err(failed());
    }
    // Left-pad: a token may return the integer without its leading zero bytes.
    let mut padded = Zeroizing::new(vec![0u8; k]);
    padded[k - em.len()..].copy_from_slice(em);
    let (y, rest) = (padded[0], &padded[1..]);
    let (masked_seed, masked_db) = rest.split_at(h_len);
    let seed_mask = mgf1(alg, masked_db, h_len);
    let seed: Zeroizing<Vec<u8>> = Zeroizing::new(
        masked_seed
            .iter()
            .zip(seed_mask.iter())
            .map(|(a, b)| a ^ b)
            .collect(),
    );
    let db_mask = mgf1(alg, &seed, k - h_len - 1);
    let db: Zeroizing<Vec<u8>> = Zeroizing::new(
        masked_db
            .iter()
            .zip(db_mask.iter())
            .map(|(a, b)| a ^ b)
            .collect(),
    );
    let l_hash = provider::digest(alg, b"");
    // bad != 0 means the encoding is invalid; accumulated without branching on secret data.
    let mut bad: u8 = y;
    for (a, b) in db[..h_len].iter().zip(l_hash.iter()) {
        bad |= a ^ b;
    }
    // Find the 0x01 separator after the zero padding, in constant time.
    let mut found: u8 = 0; // 0xff once the separator was seen
    let mut index: usize = 0;
    for (i, &byte) in db[h_len..].iter().enumerate() {
        let is_zero = ct_is_zero(byte);
        let is_one = ct_is_zero(byte ^ 1);
        let take = is_one & !found;
        index |= i & usize::from(take & 1).wrapping_neg();
        // A byte that is neither zero nor the separator before the separator is invalid.
        bad |= !found & !is_zero & !is_one;
        found |= take;
    }
    bad |= !found;
    if bad != 0 {
        return Err(failed());
    }
    Ok(Zeroizing::new(db[h_len + index + 1..].to_vec()))
}

/// 0xff when `b` is zero, 0x00 otherwise, without branching.
fn ct_is_zero(b: u8) -> u8 {
    // (b - 1) has its top bit set only when b == 0 (as a 9-bit quantity).
    (u16::from(b).wrapping_sub(1) >> 8) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    /// EME-OAEP encoding (RFC 8017, 7.1.1), for the round trip.
    fn encode(alg: Digest, msg: &[u8], k: usize, seed: &[u8]) -> Vec<u8> {
        let h_len = digest_len(alg);
        let mut db = provider::digest(alg, b"");
        db.resize(k - msg.len() - h_len - 2, 0);
        db.push(1);
        db.extend_from_slice(msg);
        let db_mask = mgf1(alg, seed, k - h_len - 1);
        let masked_db: Vec<u8> = db.iter().zip(db_mask.iter()).map(|(a, b)| a ^ b).collect();
        let seed_mask = mgf1(alg, &masked_db, h_len);
        let masked_seed: Vec<u8> = seed
            .iter()
            .zip(seed_mask.iter())
            .map(|(a, b)| a ^ b)
            .collect();
        let mut em = vec![0u8];
        em.extend(masked_seed);
        em.extend(masked_db);
        em
    }

    #[test]
    fn round_trips_for_every_digest_and_refuses_any_flipped_byte() {
        for alg in [Digest::Sha1, Digest::Sha256, Digest::Sha384, Digest::Sha512] {
            let k = 256;
            let seed = vec![0x5a; digest_len(alg)];
            let em = encode(alg, b"pfx password", k, &seed);
            assert_eq!(&decode(alg, &em, k).unwrap()[..], b"pfx password");
            // The token may drop the leading zero byte.
            assert_eq!(&decode(alg, &em[1..], k).unwrap()[..], b"pfx password");
            for i in 0..em.len() {
                let mut bad = em.clone();
                bad[i] ^= 0x80;
                assert!(
                    decode(alg, &bad, k).is_err(),
                    "{alg:?}: flip at {i} accepted"
                );
            }
        }
    }

    #[test]
    fn empty_message_and_wrong_digest() {
        let em = encode(Digest::Sha256, b"", 256, &[1; 32]);
        assert!(decode(Digest::Sha256, &em, 256).unwrap().is_empty());
        assert!(decode(Digest::Sha512, &em, 256).is_err());
        assert!(
            decode(Digest::Sha512, &em, 100).is_err(),
            "modulus too small"
        );
    }

    #[test]
    fn ct_is_zero_is_exact() {
        for b in 0..=255u8 {
            assert_eq!(ct_is_zero(b), if b == 0 { 0xff } else { 0 });
        }
    }
}
