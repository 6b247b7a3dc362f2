//! PEM text (RFC 7468): the one place certconn encodes and splits PEM blocks, for the host and
//! for plugins.
//!
//! Reading is lenient where real files differ and strict where it matters: any base64 line
//! length (OpenSSL writes 64 columns, many Java and .NET tools 76), CRLF line ends, spaces and
//! tabs at line ends and text between blocks are accepted; a block without its END line, a
//! label mismatch or base64 that does not decode is an error that names the block.

use der::pem::{self, LineEnding};
use zeroize::Zeroizing;

/// Why PEM text could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PemError {
    /// No `-----BEGIN` line at all.
    NoBlock,
    /// A `-----BEGIN` line without its closing dashes.
    UnterminatedHeader,
    /// Block `label` has no `-----END label-----` line.
    NoEnd { label: String },
    /// The block's content is not base64 (or not what its label says).
    Undecodable { label: String, reason: String },
    /// A block of another kind where certificates were expected.
    UnexpectedLabel {
        expected: &'static str,
        found: String,
    },
}

impl core::fmt::Display for PemError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoBlock => f.write_str("no PEM block found"),
            Self::UnterminatedHeader => f.write_str("unterminated PEM header"),
            Self::NoEnd { label } => write!(f, "PEM block {label} has no END line"),
            Self::Undecodable { label, reason } => {
                write!(f, "PEM block {label} does not decode: {reason}")
            }
            Self::UnexpectedLabel { expected, found } => {
                write!(f, "expected {expected} blocks, found {found}")
            }
        }
    }
}

impl std::error::Error for PemError {}

/// Encodes one PEM block with LF line endings and 64-column lines.
pub fn encode(label: &str, der_bytes: &[u8]) -> String {
    // Encoding into a String cannot fail for a valid label; fall back to an empty block otherwise.
    pem::encode_string(label, LineEnding::LF, der_bytes).unwrap_or_default()
}

/// Decodes every `CERTIFICATE` block in `text`, in order. Other blocks are an error.
pub fn decode_certificates(text: &str) -> Result<Vec<Vec<u8>>, PemError> {
    decode_all(text)?
        .into_iter()
        .map(|(label, der)| {
            if label == "CERTIFICATE" {
                Ok(der)
            } else {
                Err(PemError::UnexpectedLabel {
                    expected: "CERTIFICATE",
                    found: label,
                })
            }
        })
        .collect()
}

/// Decodes every PEM block in `text` into (label, DER).
pub fn decode_all(text: &str) -> Result<Vec<(String, Vec<u8>)>, PemError> {
    Ok(decode_all_secret(text)?
        .into_iter()
        .map(|(label, mut der)| (label, core::mem::take(&mut *der)))
        .collect())
}

/// A PEM block's label and its bytes, zeroized when dropped.
pub type SecretBlock = (String, Zeroizing<Vec<u8>>);

/// [`decode_all`] for text that may hold a private key: every block's bytes are zeroized when
/// dropped, so neither the block a caller keeps nor the ones it passes over (a second key, a
/// block that failed to decode after the first) stay behind in freed memory.
pub fn decode_all_secret(text: &str) -> Result<Vec<SecretBlock>, PemError> {
    const BEGIN: &str = "-----BEGIN ";
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let block = &rest[start + BEGIN.len()..];
        let label_end = block.find("-----").ok_or(PemError::UnterminatedHeader)?;
        let label = &block[..label_end];
        if label.contains('\n') {
            return Err(PemError::UnterminatedHeader);
        }
        let body_start = label_end + "-----".len();
        let end_marker = format!("-----END {label}-----");
        let body_len = block[body_start..]
            .find(&end_marker)
            .ok_or_else(|| PemError::NoEnd {
                label: label.to_owned(),
            })?;
        let body = &block[body_start..body_start + body_len];
        out.push((label.to_owned(), decode_body(label, body)?));
        rest = &block[body_start + body_len + end_marker.len()..];
    }
    if out.is_empty() {
        return Err(PemError::NoBlock);
    }
    Ok(out)
}

/// The base64 between a header and its footer, whatever its line length and line ends:
/// re-wrapped into the canonical form and decoded by the RFC 7468 decoder.
///
/// A `PRIVATE KEY` block passes through here too, so every copy of its content is sized before
/// it is filled (a buffer that grows frees its smaller copies unzeroized) and zeroized when
/// dropped: the base64, its canonical form, and the decoded bytes.
fn decode_body(label: &str, body: &str) -> Result<Zeroizing<Vec<u8>>, PemError> {
    let undecodable = |reason: String| PemError::Undecodable {
        label: label.to_owned(),
        reason,
    };
    let mut b64 = Zeroizing::new(Vec::with_capacity(body.len()));
    b64.extend(body.bytes().filter(|b| !b.is_ascii_whitespace()));
    if !b64.is_ascii() {
        return Err(undecodable("a character that is not base64".into()));
    }
    let canonical = rewrap(label, &b64);
    let mut decoder = pem::Decoder::new(&canonical).map_err(|e| undecodable(e.to_string()))?;
    let mut der = Zeroizing::new(vec![0; decoder.remaining_len()]);
    let decoded_len = decoder
        .decode(&mut der)
        .map_err(|e| undecodable(e.to_string()))?
        .len();
    if decoded_len != der.len() || !decoder.is_finished() {
        return Err(undecodable("trailing data after the base64".into()));
    }
    Ok(der)
}

/// `b64` (whitespace already gone) as one canonical PEM block: 64-column lines, LF ends. The
/// buffer is allocated once, at its final length.
fn rewrap(label: &str, b64: &[u8]) -> Zeroizing<Vec<u8>> {
    const BEGIN: &str = "-----BEGIN ";
    const END: &str = "-----END ";
    const CLOSE: &str = "-----\n";
    let framing = BEGIN.len() + END.len() + 2 * (label.len() + CLOSE.len());
    let mut out = Zeroizing::new(Vec::with_capacity(
        framing + b64.len() + b64.len().div_ceil(64),
    ));
    for part in [BEGIN, label, CLOSE] {
        out.extend_from_slice(part.as_bytes());
    }
    for line in b64.chunks(64) {
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    for part in [END, label, CLOSE] {
        out.extend_from_slice(part.as_bytes());
    }
    out
}

/// Reads a certificate from PEM or DER bytes: the first certificate of a PEM text.
pub fn certificate_from_pem_or_der(bytes: &[u8]) -> Result<Vec<u8>, PemError> {
    match core::str::from_utf8(bytes) {
        Ok(text) if text.contains("-----BEGIN") => decode_certificates(text)?
            .into_iter()
            .next()
            .ok_or(PemError::NoBlock),
        _ => Ok(bytes.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_blocks_round_trip_in_order() {
        let text = format!(
            "{}junk between\n{}",
            encode("CERTIFICATE", &[0x30, 0x00]),
            encode("CERTIFICATE", &[0x30, 0x01, 0x00])
        );
        assert_eq!(
            decode_certificates(&text).unwrap(),
            vec![vec![0x30, 0x00], vec![0x30, 0x01, 0x00]]
        );
    }

    #[test]
    fn any_line_length_crlf_and_trailing_spaces_are_read() {
        let der: Vec<u8> = (0..200u8).collect();
        let canonical = encode("CERTIFICATE", &der);
        let b64: String = canonical
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        for width in [76, 40, 1000] {
            let wrapped: String = b64
                .as_bytes()
                .chunks(width)
                .map(|c| format!("{} \t\r\n", String::from_utf8_lossy(c)))
                .collect();
            let text =
                format!("-----BEGIN CERTIFICATE-----\r\n{wrapped}-----END CERTIFICATE-----\r\n");
            assert_eq!(
                decode_certificates(&text).unwrap(),
                vec![der.clone()],
                "width {width}"
            );
        }
    }

    #[test]
    fn the_canonical_form_is_allocated_once_at_its_final_length() {
        // A buffer that grew would have freed a smaller copy of a private key's base64.
        for len in [0, 1, 63, 64, 65, 128, 1000] {
            let b64 = vec![b'A'; len];
            let out = rewrap("PRIVATE KEY", &b64);
            assert_eq!(out.len(), out.capacity(), "{len} base64 characters");
            let text = core::str::from_utf8(&out).unwrap();
            assert!(text.starts_with("-----BEGIN PRIVATE KEY-----\n"));
            assert!(text.ends_with("\n-----END PRIVATE KEY-----\n"));
            assert!(text
                .lines()
                .all(|l| l.len() <= 64 || l.starts_with("-----")));
        }
    }

    #[test]
    fn a_private_key_block_in_any_wrapping_decodes_to_its_bytes() {
        let der: Vec<u8> = (0..=255u8).cycle().take(1217).collect();
        let canonical = encode("PRIVATE KEY", &der);
        let b64: String = canonical
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let wrapped: String = b64
            .as_bytes()
            .chunks(76)
            .map(|c| format!("{}\r\n", core::str::from_utf8(c).unwrap()))
            .collect();
        let text = format!("-----BEGIN PRIVATE KEY-----\r\n{wrapped}-----END PRIVATE KEY-----\r\n");
        let blocks = decode_all_secret(&text).unwrap();
        assert_eq!(blocks.len(), 1);
        assert_eq!(blocks[0].0, "PRIVATE KEY");
        assert_eq!(*blocks[0].1, der);
        assert_eq!(
            decode_all(&text).unwrap(),
            vec![("PRIVATE KEY".to_owned(), der)]
        );
    }

    #[test]
    fn a_character_outside_ascii_is_named_as_not_base64() {
        let err =
            decode_all("-----BEGIN PRIVATE KEY-----\nMII\u{e9}AA==\n-----END PRIVATE KEY-----\n")
                .unwrap_err();
        assert_eq!(
            err.to_string(),
            "PEM block PRIVATE KEY does not decode: a character that is not base64"
        );
    }

    #[test]
    fn wrong_label_truncation_and_garbage_are_errors() {
        assert_eq!(
            decode_certificates(&encode("PRIVATE KEY", &[1])).unwrap_err(),
            PemError::UnexpectedLabel {
                expected: "CERTIFICATE",
                found: "PRIVATE KEY".into()
            }
        );
        let t = encode("CERTIFICATE", &[1, 2, 3]);
        assert!(matches!(
            decode_certificates(&t[..t.len() - 10]),
            Err(PemError::NoEnd { .. })
        ));
        assert_eq!(decode_certificates("nothing here"), Err(PemError::NoBlock));
        assert!(matches!(
            decode_all("-----BEGIN X-----\n!!!!\n-----END X-----\n"),
            Err(PemError::Undecodable { .. })
        ));
    }
}
