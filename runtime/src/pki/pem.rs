//! PEM text: the one place certconn encodes and splits PEM blocks.

use der::pem::{self, LineEnding};

/// Encodes one PEM block with LF line endings.
pub fn encode(label: &str, der_bytes: &[u8]) -> String {
    // Encoding into a String cannot fail for a valid label; fall back to an empty block otherwise.
    pem::encode_string(label, LineEnding::LF, der_bytes).unwrap_or_default()
}

/// Decodes every `CERTIFICATE` block in `text`, in order. Other blocks are an error.
pub fn decode_certificates(text: &str) -> Result<Vec<Vec<u8>>, String> {
    decode_all(text)?
        .into_iter()
        .map(|(label, der)| {
            if label == "CERTIFICATE" {
                Ok(der)
            } else {
                Err(format!("expected CERTIFICATE blocks, found {label}"))
            }
        })
        .collect()
}

/// Decodes every PEM block in `text` into (label, DER).
pub fn decode_all(text: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
    const BEGIN: &str = "-----BEGIN ";
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let block = &rest[start..];
        let label_end = block[BEGIN.len()..]
            .find("-----")
            .ok_or("unterminated PEM header")?
            + BEGIN.len();
        let label = &block[BEGIN.len()..label_end];
        let end_marker = format!("-----END {label}-----");
        let end = block
            .find(&end_marker)
            .ok_or_else(|| format!("PEM block {label} has no END line"))?
            + end_marker.len();
        let (decoded_label, der) = pem::decode_vec(&block.as_bytes()[..end])
            .map_err(|e| format!("PEM block {label} does not decode: {e}"))?;
        out.push((decoded_label.to_owned(), der));
        rest = &block[end..];
    }
    if out.is_empty() {
        return Err("no PEM block found".into());
    }
    Ok(out)
}

/// Reads a certificate from PEM or DER bytes.
pub fn certificate_from_pem_or_der(bytes: &[u8]) -> Result<Vec<u8>, String> {
    match std::str::from_utf8(bytes) {
        Ok(text) if text.contains("-----BEGIN") => decode_certificates(text)?
            .into_iter()
            .next()
            .ok_or_else(|| "no certificate".to_string()),
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
    fn wrong_label_and_truncation_are_errors() {
        assert!(decode_certificates(&encode("PRIVATE KEY", &[1]))
            .unwrap_err()
            .contains("PRIVATE KEY"));
        let t = encode("CERTIFICATE", &[1, 2, 3]);
        assert!(decode_certificates(&t[..t.len() - 10]).is_err());
        assert!(decode_certificates("nothing here").is_err());
    }
}
