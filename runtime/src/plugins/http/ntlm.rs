//! NTLM message framing (MS-NLMP §2.2): NEGOTIATE out, CHALLENGE in (untrusted: every length
//! and offset is checked), AUTHENTICATE out with NTLMv2 responses and a MIC. The computations
//! are in [`crate::crypto::ntlm`], under the algorithm policy.

use crate::crypto::ntlm::{self as compute, utf16le, NtlmV2Input};
use crate::crypto::{AlgorithmPolicy, CryptoError};
use zeroize::Zeroizing;

const SIGNATURE: &[u8; 8] = b"NTLMSSP\0";

const NEGOTIATE_UNICODE: u32 = 0x0000_0001;
const REQUEST_TARGET: u32 = 0x0000_0004;
const NEGOTIATE_NTLM: u32 = 0x0000_0200;
const NEGOTIATE_ALWAYS_SIGN: u32 = 0x0000_8000;
const NEGOTIATE_EXTENDED_SESSIONSECURITY: u32 = 0x0008_0000;
const NEGOTIATE_TARGET_INFO: u32 = 0x0080_0000;
const NEGOTIATE_VERSION: u32 = 0x0200_0000;
const NEGOTIATE_128: u32 = 0x2000_0000;
const NEGOTIATE_56: u32 = 0x8000_0000;

/// What certconn asks for: Unicode, NTLM with extended session security (NTLMv2), target info.
const CLIENT_FLAGS: u32 = NEGOTIATE_UNICODE
    | REQUEST_TARGET
    | NEGOTIATE_NTLM
    | NEGOTIATE_ALWAYS_SIGN
    | NEGOTIATE_EXTENDED_SESSIONSECURITY
    | NEGOTIATE_TARGET_INFO
    | NEGOTIATE_VERSION
    | NEGOTIATE_128
    | NEGOTIATE_56;

/// Windows 10 (build 19041), NTLMSSP_REVISION_W2K3 — the version field servers expect.
const VERSION: [u8; 8] = [10, 0, 0x61, 0x4a, 0, 0, 0, 15];

const AV_EOL: u16 = 0;
const AV_FLAGS: u16 = 6;
const AV_TIMESTAMP: u16 = 7;
/// MsvAvFlags bit: the AUTHENTICATE message carries a MIC.
const AV_FLAG_MIC: u32 = 0x2;

/// Offset of the MIC in an AUTHENTICATE message with a version field.
const MIC_OFFSET: usize = 72;
const AUTHENTICATE_HEADER: usize = 88;

/// The NEGOTIATE message: flags and the version, no domain or workstation.
pub fn negotiate() -> Vec<u8> {
    let mut m = Vec::with_capacity(40);
    m.extend_from_slice(SIGNATURE);
    m.extend_from_slice(&1u32.to_le_bytes());
    m.extend_from_slice(&CLIENT_FLAGS.to_le_bytes());
    m.extend_from_slice(&[0; 16]);
    m.extend_from_slice(&VERSION);
    m
}

/// A parsed CHALLENGE message.
#[derive(Debug)]
pub struct Challenge {
    flags: u32,
    server_challenge: [u8; 8],
    target_info: Vec<u8>,
    raw: Vec<u8>,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Why an NTLM exchange could not go on. A server's malformed message is refused, never
/// panicked on: every offset in it is checked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NtlmError {
    #[error("the server's NTLM CHALLENGE is malformed: {0}")]
    Malformed(&'static str),
    #[error("the server does not offer Unicode NTLM; certconn speaks only that")]
    NotUnicode,
    #[error("the NTLM AUTHENTICATE message would be too long")]
    TooLong,
    #[error("computing the NTLMv2 response")]
    Crypto(#[from] CryptoError),
}

/// The AV pairs of a target-info block, up to MsvAvEOL.
fn av_pairs(info: &[u8]) -> Result<Vec<(u16, &[u8])>, NtlmError> {
    let mut pairs = Vec::new();
    let mut at = 0;
    loop {
        let (Some(id), Some(len)) = (u16_at(info, at), u16_at(info, at + 2)) else {
            return Err(NtlmError::Malformed(
                "its target info ends without MsvAvEOL",
            ));
        };
        if id == AV_EOL {
            return Ok(pairs);
        }
        let value = info
            .get(at + 4..at + 4 + len as usize)
            .ok_or(NtlmError::Malformed(
                "a target-info pair runs past its block",
            ))?;
        pairs.push((id, value));
        at += 4 + len as usize;
    }
}

impl Challenge {
    /// Parses a CHALLENGE message from the server.
    pub fn parse(raw: &[u8]) -> Result<Self, NtlmError> {
        let bad = NtlmError::Malformed;
        if raw.get(..8) != Some(SIGNATURE) || u32_at(raw, 8) != Some(2) {
            return Err(bad("not an NTLMSSP CHALLENGE message"));
        }
        let flags = u32_at(raw, 20).ok_or_else(|| bad("too short"))?;
        if flags & NEGOTIATE_UNICODE == 0 {
            return Err(NtlmError::NotUnicode);
        }
        let server_challenge: [u8; 8] = raw
            .get(24..32)
            .and_then(|c| c.try_into().ok())
            .ok_or_else(|| bad("too short"))?;
        let target_info = if flags & NEGOTIATE_TARGET_INFO != 0 {
            let len = u16_at(raw, 40).ok_or_else(|| bad("too short"))? as usize;
            let offset = u32_at(raw, 44).ok_or_else(|| bad("too short"))? as usize;
            raw.get(offset..offset.saturating_add(len))
                .ok_or_else(|| bad("target info outside the message"))?
                .to_vec()
        } else {
            Vec::new()
        };
        if !target_info.is_empty() {
            av_pairs(&target_info)?;
        }
        Ok(Self {
            flags,
            server_challenge,
            target_info,
            raw: raw.to_vec(),
        })
    }

    /// The server's MsvAvTimestamp, if it sent one.
    fn timestamp(&self) -> Option<u64> {
        av_pairs(&self.target_info)
            .ok()?
            .into_iter()
            .find(|(id, _)| *id == AV_TIMESTAMP)
            .and_then(|(_, v)| Some(u64::from_le_bytes(v.try_into().ok()?)))
    }
}

/// Who authenticates.
pub struct Identity<'a> {
    pub domain: &'a str,
    pub user: &'a str,
    pub password: &'a str,
}

/// `DOMAIN\user` → (DOMAIN, user); `user@domain` stays whole with an empty domain, as Windows
/// expects a UPN.
pub fn split_username(name: &str) -> (&str, &str) {
    name.split_once('\\').unwrap_or(("", name))
}

/// Now, as a Windows FILETIME.
pub fn filetime_now() -> u64 {
    const UNIX_EPOCH_AS_FILETIME: u64 = 116_444_736_000_000_000;
    let since_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() / 100)
        .unwrap_or(0) as u64;
    UNIX_EPOCH_AS_FILETIME + since_unix
}

/// The target info certconn sends back: the server's pairs, with MsvAvFlags saying a MIC
/// follows when the server sent a timestamp (MS-NLMP §3.1.5.1.2).
fn client_target_info(challenge: &Challenge, with_mic: bool) -> Result<Vec<u8>, NtlmError> {
    let mut out = Vec::new();
    let mut flags = 0u32;
    for (id, value) in av_pairs(&challenge.target_info)? {
        if id == AV_FLAGS {
            flags = value
                .try_into()
                .map(u32::from_le_bytes)
                .map_err(|_| NtlmError::Malformed("MsvAvFlags is not 4 bytes"))?;
            continue;
        }
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&(value.len() as u16).to_le_bytes());
        out.extend_from_slice(value);
    }
    if with_mic {
        flags |= AV_FLAG_MIC;
    }
    if flags != 0 {
        out.extend_from_slice(&AV_FLAGS.to_le_bytes());
        out.extend_from_slice(&4u16.to_le_bytes());
        out.extend_from_slice(&flags.to_le_bytes());
    }
    out.extend_from_slice(&[0; 4]);
    Ok(out)
}

/// The AUTHENTICATE message for `challenge`.
pub fn authenticate(
    policy: &AlgorithmPolicy,
    negotiate: &[u8],
    challenge: &Challenge,
    identity: &Identity<'_>,
    client_challenge: [u8; 8],
    now: u64,
) -> Result<Zeroizing<Vec<u8>>, NtlmError> {
    let server_time = challenge.timestamp();
    let with_mic = server_time.is_some();
    let target_info = client_target_info(challenge, with_mic)?;
    let v2 = compute::v2_response(
        policy,
        &NtlmV2Input {
            user: identity.user,
            domain: identity.domain,
            password: identity.password,
            server_challenge: &challenge.server_challenge,
            client_challenge: &client_challenge,
            timestamp: server_time.unwrap_or(now),
            target_info: &target_info,
        },
    )?;
    // With a server timestamp the LM response is 24 zero bytes (MS-NLMP §3.3.2).
    let lm: &[u8] = if with_mic { &[0; 24] } else { &v2.lm_response };
    let domain = utf16le(identity.domain);
    let user = utf16le(identity.user);
    let workstation = utf16le("CERTCONN");
    let flags = (challenge.flags & CLIENT_FLAGS) | NEGOTIATE_UNICODE;

    // The message carries the responses: sized before it is filled and zeroized, as they are.
    let fields: [&[u8]; 5] = [lm, &v2.nt_response, &domain, &user, &workstation];
    let payload_len: usize = fields.iter().map(|f| f.len()).sum();
    let mut message = Zeroizing::new(Vec::with_capacity(AUTHENTICATE_HEADER + payload_len));
    message.extend_from_slice(SIGNATURE);
    message.extend_from_slice(&3u32.to_le_bytes());
    let mut payload = Zeroizing::new(Vec::with_capacity(payload_len));
    let mut field = |message: &mut Vec<u8>, value: &[u8]| -> Result<(), NtlmError> {
        let len = u16::try_from(value.len()).map_err(|_| NtlmError::TooLong)?;
        let offset =
            u32::try_from(AUTHENTICATE_HEADER + payload.len()).map_err(|_| NtlmError::TooLong)?;
        message.extend_from_slice(&len.to_le_bytes());
        message.extend_from_slice(&len.to_le_bytes());
        message.extend_from_slice(&offset.to_le_bytes());
        payload.extend_from_slice(value);
        Ok(())
    };
    for value in fields {
        field(&mut message, value)?;
    }
    field(&mut message, &[])?; // no encrypted random session key: no key exchange
    message.extend_from_slice(&flags.to_le_bytes());
    message.extend_from_slice(&VERSION);
    message.extend_from_slice(&[0; 16]); // MIC, filled below
    debug_assert_eq!(message.len(), AUTHENTICATE_HEADER);
    message.extend_from_slice(&payload);
    if with_mic {
        let mic = compute::mic(
            policy,
            &v2.session_base_key,
            &[negotiate, &challenge.raw, &message],
        )?;
        message[MIC_OFFSET..MIC_OFFSET + 16].copy_from_slice(&mic);
    }
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CHALLENGE as Windows sends it: flags, challenge, target info with a timestamp.
    fn challenge_message(with_timestamp: bool) -> Vec<u8> {
        let mut info = Vec::new();
        for (id, value) in [(2u16, utf16le("CORP")), (1, utf16le("NDES01"))] {
            info.extend_from_slice(&id.to_le_bytes());
            info.extend_from_slice(&(value.len() as u16).to_le_bytes());
            info.extend_from_slice(&value);
        }
        if with_timestamp {
            info.extend_from_slice(&AV_TIMESTAMP.to_le_bytes());
            info.extend_from_slice(&8u16.to_le_bytes());
            info.extend_from_slice(&133_000_000_000_000_000u64.to_le_bytes());
        }
        info.extend_from_slice(&[0; 4]);
        let mut m = Vec::new();
        m.extend_from_slice(SIGNATURE);
        m.extend_from_slice(&2u32.to_le_bytes());
        m.extend_from_slice(&[0; 8]); // target name: empty
        m.extend_from_slice(&(CLIENT_FLAGS).to_le_bytes());
        m.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        m.extend_from_slice(&[0; 8]);
        m.extend_from_slice(&(info.len() as u16).to_le_bytes());
        m.extend_from_slice(&(info.len() as u16).to_le_bytes());
        m.extend_from_slice(&56u32.to_le_bytes());
        m.extend_from_slice(&VERSION);
        m.extend_from_slice(&info);
        m
    }

    #[test]
    fn authenticate_carries_the_fields_where_their_offsets_say() {
        let challenge = Challenge::parse(&challenge_message(true)).unwrap();
        assert_eq!(challenge.timestamp(), Some(133_000_000_000_000_000));
        let negotiate = negotiate();
        let m = authenticate(
            &AlgorithmPolicy::default(),
            &negotiate,
            &challenge,
            &Identity {
                domain: "CORP",
                user: "svc-ndes",
                password: "pw",
            },
            [9; 8],
            0,
        )
        .unwrap();
        let field = |at: usize| {
            let len = u16_at(&m, at).unwrap() as usize;
            let off = u32_at(&m, at + 4).unwrap() as usize;
            &m[off..off + len]
        };
        assert_eq!(field(12), &[0; 24], "LM response is zeros with a timestamp");
        assert_eq!(field(28), utf16le("CORP"));
        assert_eq!(field(36), utf16le("svc-ndes"));
        let nt = field(20);
        // temp: 1 1 Z6 time client-challenge Z4 AV-pairs Z4; the time is the server's.
        assert_eq!(&nt[16..18], &[1, 1]);
        assert_eq!(&nt[24..32], &133_000_000_000_000_000u64.to_le_bytes());
        assert_eq!(&nt[32..40], &[9; 8]);
        let pairs = av_pairs(&nt[44..]).unwrap();
        assert!(pairs.contains(&(AV_FLAGS, &AV_FLAG_MIC.to_le_bytes()[..])));
        assert_ne!(&m[MIC_OFFSET..MIC_OFFSET + 16], &[0; 16], "MIC present");
        // The responses pass through it: allocated once, at its length (a message that grew
        // would have freed a copy of them unzeroized).
        assert_eq!(m.capacity(), m.len());

        let plain = Challenge::parse(&challenge_message(false)).unwrap();
        let m = authenticate(
            &AlgorithmPolicy::default(),
            &negotiate,
            &plain,
            &Identity {
                domain: "",
                user: "svc@corp.example",
                password: "pw",
            },
            [9; 8],
            42,
        )
        .unwrap();
        assert_eq!(
            &m[MIC_OFFSET..MIC_OFFSET + 16],
            &[0; 16],
            "no MIC without a timestamp"
        );
        let lm_len = u16_at(&m, 12).unwrap();
        assert_eq!(lm_len, 24);
        assert_eq!(m.capacity(), m.len());
    }

    #[test]
    fn malformed_challenges_are_refused_not_panicked_on() {
        let good = challenge_message(true);
        for cut in 0..good.len() {
            let _ = Challenge::parse(&good[..cut]);
        }
        let mut bad = good.clone();
        bad[44] = 0xff; // target-info offset far outside
        assert!(Challenge::parse(&bad)
            .unwrap_err()
            .to_string()
            .contains("outside"));
        let mut oem = good.clone();
        oem[20] &= !1;
        assert!(matches!(Challenge::parse(&oem), Err(NtlmError::NotUnicode)));
        assert!(Challenge::parse(b"NTLMSSP\0\x01\0\0\0").is_err());
    }

    #[test]
    fn usernames_split_as_windows_expects() {
        assert_eq!(split_username("CORP\\svc"), ("CORP", "svc"));
        assert_eq!(split_username("svc@corp.example"), ("", "svc@corp.example"));
    }
}
