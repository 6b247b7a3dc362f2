//! The PKCS#12 key derivation (RFC 7292 appendix B.2), over any digest the provider offers.

use zeroize::Zeroizing;

use crate::crypto::provider::{self, Digest};

/// What the derived bytes are for (the "ID" byte).
#[derive(Clone, Copy, Debug)]
pub enum Purpose {
    Key = 1,
    Iv = 2,
    Mac = 3,
}

/// The password as the KDF takes it: BMPString (UTF-16BE) with a two-byte NUL terminator.
pub fn bmp_password(password: &str) -> Zeroizing<Vec<u8>> {
    let mut bmp = Zeroizing::new(Vec::with_capacity(password.len() * 2 + 2));
    for unit in password.encode_utf16() {
        bmp.extend_from_slice(&unit.to_be_bytes());
    }
    bmp.extend_from_slice(&[0, 0]);
    bmp
}

fn block_size(d: Digest) -> usize {
    match d {
        Digest::Sha384 | Digest::Sha512 => 128,
        _ => 64,
    }
}

/// Derives `len` bytes. `password` is already in KDF form (see [`bmp_password`]).
pub fn derive(
    digest: Digest,
    password: &[u8],
    salt: &[u8],
    purpose: Purpose,
    iterations: u32,
    len: usize,
) -> Zeroizing<Vec<u8>> {
    let v = block_size(digest);
    let fill = |src: &[u8]| -> Vec<u8> {
        if src.is_empty() {
            return Vec::new();
        }
        src.iter()
            .copied()
            .cycle()
            .take(src.len().div_ceil(v) * v)
            .collect()
    };
    let mut i = Zeroizing::new(fill(salt));
    i.extend_from_slice(&Zeroizing::new(fill(password)));
    let d = vec![purpose as u8; v];
    let mut out = Zeroizing::new(Vec::with_capacity(len));
    loop {
        let mut input = Zeroizing::new(d.clone());
        input.extend_from_slice(&i);
        let a = provider::digest_iterated(digest, &input, iterations);
        let take = (len - out.len()).min(a.len());
        out.extend_from_slice(&a[..take]);
        if out.len() == len {
            return out;
        }
        // I_j = (I_j + B + 1) mod 2^(8v), B = A repeated to v bytes.
        let b: Zeroizing<Vec<u8>> = Zeroizing::new(a.iter().copied().cycle().take(v).collect());
        for chunk in i.chunks_mut(v) {
            let mut carry = 1u16;
            for k in (0..v).rev() {
                let sum = chunk[k] as u16 + b[k] as u16 + carry;
                chunk[k] = sum as u8;
                carry = sum >> 8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// OpenSSL's test vector for PKCS12_key_gen (test/pkcs12_format_test data, SHA-1):
    /// password "smeg", salt 0A58CF64530D823F, id 1, 1 iteration, 24 bytes.
    #[test]
    fn matches_the_classic_sha1_vector() {
        let salt = hex::decode("0A58CF64530D823F").unwrap();
        let key = derive(
            Digest::Sha1,
            &bmp_password("smeg"),
            &salt,
            Purpose::Key,
            1,
            24,
        );
        assert_eq!(
            hex::encode(&key[..]),
            "8aaae6297b6cb04642ab5b077851284eb7128f1a2a7fbca3"
        );
        let iv = derive(
            Digest::Sha1,
            &bmp_password("smeg"),
            &salt,
            Purpose::Iv,
            1,
            8,
        );
        assert_eq!(hex::encode(&iv[..]), "79993dfe048d3b76");
    }
}
