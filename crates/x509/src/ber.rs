//! BER → DER normalisation for the BER that real implementations send: indefinite lengths
//! (Firefox/NSS PKCS#12, some SCEP servers) and constructed OCTET STRINGs (EncryptedContentInfo
//! `[0]` content in segments). The `der` crate reads only DER, so untrusted BER input passes
//! through here first.
//!
//! Bounded: nesting depth at most [`MAX_DEPTH`]; output never larger than the input plus the
//! length octets it adds. Set ordering is not changed (the `der` crate sorts SET OF on decode).

use crate::Error;

/// Deepest nesting accepted.
pub const MAX_DEPTH: usize = 64;

/// Re-encodes one BER element (and nothing after it) as DER.
pub fn to_der(input: &[u8]) -> Result<Vec<u8>, Error> {
    let mut out = Vec::with_capacity(input.len());
    let used = element(input, 0, &mut out)?;
    if used != input.len() {
        return Err(Error::Invalid(format!(
            "{} bytes of trailing data after the BER element",
            input.len() - used
        )));
    }
    Ok(out)
}

fn invalid(at: usize, what: &str) -> Error {
    Error::Invalid(format!("BER at offset {at}: {what}"))
}

/// Reads identifier octets; returns (tag bytes, constructed, length of identifier).
fn identifier(input: &[u8]) -> Result<(&[u8], bool, usize), Error> {
    let first = *input
        .first()
        .ok_or_else(|| invalid(0, "truncated identifier"))?;
    let mut len = 1;
    if first & 0x1f == 0x1f {
        loop {
            let b = *input
                .get(len)
                .ok_or_else(|| invalid(len, "truncated high tag number"))?;
            len += 1;
            if b & 0x80 == 0 {
                break;
            }
            if len > 6 {
                return Err(invalid(0, "tag number too large"));
            }
        }
    }
    Ok((&input[..len], first & 0x20 != 0, len))
}

/// Reads length octets; `None` is the indefinite form. Returns (length, octets used).
fn length(input: &[u8], at: usize) -> Result<(Option<usize>, usize), Error> {
    let first = *input
        .first()
        .ok_or_else(|| invalid(at, "truncated length"))?;
    if first < 0x80 {
        return Ok((Some(first as usize), 1));
    }
    if first == 0x80 {
        return Ok((None, 1));
    }
    let n = (first & 0x7f) as usize;
    if n > 4 {
        return Err(invalid(at, "length does not fit in 32 bits"));
    }
    let bytes = input
        .get(1..1 + n)
        .ok_or_else(|| invalid(at, "truncated long-form length"))?;
    let len = bytes.iter().fold(0usize, |acc, b| (acc << 8) | *b as usize);
    Ok((Some(len), 1 + n))
}

fn push_length(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = (len as u64).to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (8 - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

/// Converts the element at the start of `input`; returns how many input bytes it used.
fn element(input: &[u8], depth: usize, out: &mut Vec<u8>) -> Result<usize, Error> {
    if depth > MAX_DEPTH {
        return Err(invalid(0, "nested too deeply"));
    }
    let (tag, constructed, id_len) = identifier(input)?;
    let (len, len_len) = length(&input[id_len..], id_len)?;
    let header = id_len + len_len;
    if !constructed {
        let len = len.ok_or_else(|| invalid(0, "indefinite length on a primitive element"))?;
        let content = input
            .get(header..header + len)
            .ok_or_else(|| invalid(header, "content runs past the end"))?;
        out.extend_from_slice(tag);
        push_length(out, len);
        out.extend_from_slice(content);
        return Ok(header + len);
    }
    // Constructed: convert the children, then write the header with their DER length.
    let mut children = Vec::new();
    let mut pos = header;
    let end = match len {
        Some(l) => Some(
            header
                .checked_add(l)
                .filter(|e| *e <= input.len())
                .ok_or_else(|| invalid(header, "content runs past the end"))?,
        ),
        None => None,
    };
    loop {
        match end {
            Some(e) if pos == e => break,
            Some(e) if pos > e => return Err(invalid(pos, "child runs past its parent")),
            None if input.get(pos..pos + 2) == Some(&[0, 0]) => {
                pos += 2;
                break;
            }
            _ => {}
        }
        if pos >= input.len() {
            return Err(invalid(pos, "missing end-of-contents"));
        }
        pos += element(&input[pos..], depth + 1, &mut children)?;
    }
    if tag == [0x24] {
        // A constructed OCTET STRING becomes one primitive OCTET STRING.
        let content = join_segments(&children)?;
        out.push(0x04);
        push_length(out, content.len());
        out.extend_from_slice(&content);
    } else if tag == [0x30] && is_segmented_encrypted_content_info(&children)? {
        // EncryptedContentInfo ::= SEQUENCE { contentType OID, contentEncryptionAlgorithm
        // SEQUENCE, encryptedContent [0] IMPLICIT OCTET STRING }: some encoders send the [0]
        // constructed, in segments; DER wants it primitive.
        let parts = split(&children)?;
        let content = join_segments(parts[2].content)?;
        let mut body = Vec::with_capacity(children.len());
        body.extend_from_slice(parts[0].whole);
        body.extend_from_slice(parts[1].whole);
        body.push(0x80);
        push_length(&mut body, content.len());
        body.extend_from_slice(&content);
        out.push(0x30);
        push_length(out, body.len());
        out.extend_from_slice(&body);
    } else {
        out.extend_from_slice(tag);
        push_length(out, children.len());
        out.extend_from_slice(&children);
    }
    Ok(pos)
}

/// One encoded element: the whole TLV, its identifier octets and its content.
struct Tlv<'a> {
    whole: &'a [u8],
    tag: &'a [u8],
    content: &'a [u8],
}

/// Splits DER children into their elements.
fn split(children: &[u8]) -> Result<Vec<Tlv<'_>>, Error> {
    let mut out = Vec::new();
    let mut rest = children;
    while !rest.is_empty() {
        let (t, _, il) = identifier(rest)?;
        let (l, ll) = length(&rest[il..], 0)?;
        let l = l.ok_or_else(|| invalid(0, "indefinite length after normalisation"))?;
        let end = il + ll + l;
        let whole = rest
            .get(..end)
            .ok_or_else(|| invalid(0, "child runs past its parent"))?;
        out.push(Tlv {
            whole,
            tag: t,
            content: &rest[il + ll..end],
        });
        rest = &rest[end..];
    }
    Ok(out)
}

/// Concatenates primitive OCTET STRING segments.
fn join_segments(children: &[u8]) -> Result<Vec<u8>, Error> {
    let mut content = Vec::with_capacity(children.len());
    for seg in split(children)? {
        if seg.tag != [0x04] || seg.whole[0] & 0x20 != 0 {
            return Err(invalid(0, "a segmented OCTET STRING holds something else"));
        }
        content.extend_from_slice(seg.content);
    }
    Ok(content)
}

fn is_segmented_encrypted_content_info(children: &[u8]) -> Result<bool, Error> {
    let parts = split(children)?;
    Ok(parts.len() == 3
        && parts[0].tag == [0x06]
        && parts[1].tag == [0x30]
        && parts[2].tag == [0xa0]
        && split(parts[2].content)?
            .iter()
            .all(|seg| seg.tag == [0x04] && seg.whole[0] & 0x20 == 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indefinite_lengths_and_segmented_octet_strings_become_der() {
        // SEQUENCE (indefinite) { OCTET STRING constructed (indefinite) { "ab", "c" }, NULL }
        let ber = [
            0x30, 0x80, 0x24, 0x80, 0x04, 0x02, b'a', b'b', 0x04, 0x01, b'c', 0x00, 0x00, 0x05,
            0x00, 0x00, 0x00,
        ];
        assert_eq!(
            to_der(&ber).unwrap(),
            vec![0x30, 0x07, 0x04, 0x03, b'a', b'b', b'c', 0x05, 0x00]
        );
    }

    #[test]
    fn segmented_encrypted_content_becomes_primitive() {
        // SEQUENCE { OID 1.2, SEQUENCE {}, [0] constructed { OCTET STRING "ab", OCTET STRING "c" } }
        let ber = [
            0x30, 0x80, 0x06, 0x01, 0x2a, 0x30, 0x00, 0xa0, 0x80, 0x04, 0x02, b'a', b'b', 0x04,
            0x01, b'c', 0x00, 0x00, 0x00, 0x00,
        ];
        assert_eq!(
            to_der(&ber).unwrap(),
            vec![0x30, 0x0a, 0x06, 0x01, 0x2a, 0x30, 0x00, 0x80, 0x03, b'a', b'b', b'c']
        );
        // An EXPLICIT [0] around one OCTET STRING in a two-element SEQUENCE stays as it is.
        let ci = [0x30, 0x08, 0x06, 0x01, 0x2a, 0xa0, 0x03, 0x04, 0x01, b'x'];
        assert_eq!(to_der(&ci).unwrap(), ci);
    }

    #[test]
    fn der_passes_through_unchanged() {
        let der = [0x30, 0x06, 0x02, 0x01, 0x05, 0x04, 0x01, 0xff];
        assert_eq!(to_der(&der).unwrap(), der);
    }

    #[test]
    fn truncation_depth_and_trailing_data_are_refused() {
        assert!(to_der(&[0x30, 0x80, 0x05, 0x00]).is_err());
        assert!(to_der(&[0x04, 0x05, 0x00]).is_err());
        assert!(to_der(&[0x05, 0x00, 0x00]).is_err());
        let deep: Vec<u8> = std::iter::repeat_n([0x30u8, 0x80], 100).flatten().collect();
        assert!(to_der(&deep).unwrap_err().to_string().contains("deeply"));
    }
}
