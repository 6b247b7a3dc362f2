//! The NTLMv2 computations (MS-NLMP §3.3.2), for the host's HTTP client when an administrator
//! grants a backend Windows credentials (NDES's `mscep_admin` behind Windows authentication).
//!
//! MD4 and HMAC-MD5 are not FIPS-approved and aws-lc does not offer them, so they come from
//! RustCrypto here, in the host, behind [`AlgorithmPolicy::check_ntlm`]: FIPS mode refuses the
//! whole mechanism. The password and every key derived from it are zeroized after use. The
//! message framing lives with the HTTP client (`plugins::http::ntlm`); only arithmetic is here.

use hmac::{Hmac, Mac};
use md4::{Digest as _, Md4};
use md5::Md5;
use zeroize::Zeroizing;

use super::{AlgorithmPolicy, CryptoError};

/// What the NTLMv2 responses are computed from.
pub struct NtlmV2Input<'a> {
    pub user: &'a str,
    pub domain: &'a str,
    pub password: &'a str,
    /// From the CHALLENGE message, 8 bytes.
    pub server_challenge: &'a [u8],
    /// Random, 8 bytes.
    pub client_challenge: &'a [u8],
    /// Windows FILETIME (100 ns since 1601): the server's MsvAvTimestamp when it sent one.
    pub timestamp: u64,
    /// The AV pairs the client sends back (the server's, plus MsvAvFlags), ending in MsvAvEOL.
    pub target_info: &'a [u8],
}

/// The NTLMv2 answers to one CHALLENGE.
pub struct NtlmV2Response {
    /// NtChallengeResponse = NTProofStr ‖ temp. Zeroized: with the challenges it is an offline
    /// guess at the password away (as a hash is).
    pub nt_response: Zeroizing<Vec<u8>>,
    /// LmChallengeResponse (LMv2); a client sends zeros instead when the server sent a timestamp.
    pub lm_response: Zeroizing<Vec<u8>>,
    /// SessionBaseKey: the exported session key when no key exchange is negotiated; the MIC key.
    pub session_base_key: Zeroizing<Vec<u8>>,
}

/// UTF-16LE, as NTLM encodes every string. Sized before it is filled (at most one UTF-16 unit
/// per UTF-8 byte), since the password passes through here: a vector that grew would free its
/// smaller copies unzeroized.
pub fn utf16le(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 * s.len());
    for unit in s.encode_utf16() {
        out.extend_from_slice(&unit.to_le_bytes());
    }
    out
}

/// HMAC-MD5 over the concatenation of `parts`.
pub fn hmac_md5(key: &[u8], parts: &[&[u8]]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let mut mac = <Hmac<Md5> as Mac>::new_from_slice(key)
        .map_err(|_| CryptoError::InvalidInput("HMAC-MD5 key".into()))?;
    for p in parts {
        mac.update(p);
    }
    Ok(Zeroizing::new(mac.finalize().into_bytes().to_vec()))
}

/// NTOWFv2: HMAC-MD5(MD4(UTF-16LE(password)), UTF-16LE(UPPER(user) ‖ domain)).
fn response_key(input: &NtlmV2Input<'_>) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let password = Zeroizing::new(utf16le(input.password));
    let nt_hash = Zeroizing::new(Md4::digest(&*password).to_vec());
    let identity = utf16le(&format!("{}{}", input.user.to_uppercase(), input.domain));
    hmac_md5(&nt_hash, &[&identity])
}

/// Computes the NTLMv2 responses and session key for one CHALLENGE.
pub fn v2_response(
    policy: &AlgorithmPolicy,
    input: &NtlmV2Input<'_>,
) -> Result<NtlmV2Response, CryptoError> {
    policy.check_ntlm()?;
    if input.server_challenge.len() != 8 || input.client_challenge.len() != 8 {
        return Err(CryptoError::InvalidInput(
            "NTLM server and client challenges are 8 bytes".into(),
        ));
    }
    let key = response_key(input)?;
    let mut temp = vec![1, 1, 0, 0, 0, 0, 0, 0];
    temp.extend_from_slice(&input.timestamp.to_le_bytes());
    temp.extend_from_slice(input.client_challenge);
    temp.extend_from_slice(&[0; 4]);
    temp.extend_from_slice(input.target_info);
    temp.extend_from_slice(&[0; 4]);
    let proof = hmac_md5(&key, &[input.server_challenge, &temp])?;
    let session_base_key = hmac_md5(&key, &[&proof])?;
    // Each response sized before it is filled: one that grew would free a copy unzeroized.
    let lm_proof = hmac_md5(&key, &[input.server_challenge, input.client_challenge])?;
    let mut lm_response = Zeroizing::new(Vec::with_capacity(lm_proof.len() + 8));
    lm_response.extend_from_slice(&lm_proof);
    lm_response.extend_from_slice(input.client_challenge);
    let mut nt_response = Zeroizing::new(Vec::with_capacity(proof.len() + temp.len()));
    nt_response.extend_from_slice(&proof);
    nt_response.extend_from_slice(&temp);
    Ok(NtlmV2Response {
        nt_response,
        lm_response,
        session_base_key,
    })
}

/// The AUTHENTICATE message's MIC: HMAC-MD5(session key, NEGOTIATE ‖ CHALLENGE ‖ AUTHENTICATE
/// with the MIC field zeroed).
pub fn mic(
    policy: &AlgorithmPolicy,
    session_key: &[u8],
    messages: &[&[u8]],
) -> Result<Vec<u8>, CryptoError> {
    policy.check_ntlm()?;
    Ok(hmac_md5(session_key, messages)?.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// MS-NLMP §4.2.4 (NTLMv2 authentication) test vectors.
    #[test]
    fn ms_nlmp_test_vectors() {
        let target_info = [
            0x02, 0x00, 0x0c, 0x00, 0x44, 0x00, 0x6f, 0x00, 0x6d, 0x00, 0x61, 0x00, 0x69, 0x00,
            0x6e, 0x00, 0x01, 0x00, 0x0c, 0x00, 0x53, 0x00, 0x65, 0x00, 0x72, 0x00, 0x76, 0x00,
            0x65, 0x00, 0x72, 0x00, 0x00, 0x00, 0x00, 0x00,
        ];
        let input = NtlmV2Input {
            user: "User",
            domain: "Domain",
            password: "Password",
            server_challenge: &[0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef],
            client_challenge: &[0xaa; 8],
            timestamp: 0,
            target_info: &target_info,
        };
        assert_eq!(
            hex::encode(&*response_key(&input).unwrap()),
            "0c868a403bfd7a93a3001ef22ef02e3f",
            "NTOWFv2"
        );
        let r = v2_response(&AlgorithmPolicy::default(), &input).unwrap();
        assert_eq!(
            hex::encode(&r.nt_response[..16]),
            "68cd0ab851e51c96aabc927bebef6a1c",
            "NTProofStr"
        );
        assert_eq!(&r.nt_response[16..18], &[1, 1]);
        assert_eq!(
            hex::encode(&*r.session_base_key),
            "8de40ccadbc14a82f15cb0ad0de95ca3",
            "SessionBaseKey"
        );
        assert_eq!(
            hex::encode(&*r.lm_response),
            "86c35097ac9cec102554764a57cccc19aaaaaaaaaaaaaaaa",
            "LMv2"
        );
        // Each response allocated once at its length: one that grew would have freed a copy.
        assert_eq!(r.nt_response.capacity(), r.nt_response.len());
        assert_eq!(r.lm_response.capacity(), r.lm_response.len());
    }

    #[test]
    fn fips_mode_refuses_ntlm() {
        let fips = AlgorithmPolicy {
            fips: true,
            ..AlgorithmPolicy::default()
        };
        let input = NtlmV2Input {
            user: "u",
            domain: "d",
            password: "p",
            server_challenge: &[0; 8],
            client_challenge: &[0; 8],
            timestamp: 0,
            target_info: &[0; 4],
        };
        let e = v2_response(&fips, &input)
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("NTLM") && e.contains("FIPS"), "{e}");
        assert!(mic(&fips, &[0; 16], &[b"x"]).is_err());
    }
}
