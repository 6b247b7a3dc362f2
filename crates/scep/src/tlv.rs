//! A minimal DER element reader, for the one place the typed decoders cannot serve: the signed
//! attributes must be verified over the bytes the sender signed, and the `der` crate re-sorts a
//! SET OF when it decodes one.

use crate::{Error, Result};

/// One DER element: its first identifier octet, its content and the whole encoding.
#[derive(Clone, Copy)]
pub struct Tlv<'a> {
    pub tag: u8,
    pub content: &'a [u8],
    pub whole: &'a [u8],
}

/// Reads the element at the start of `input`.
pub fn read(input: &[u8]) -> Result<Tlv<'_>> {
    let bad = |d: &str| Error::invalid("DER element", d.to_string());
    let tag = *input.first().ok_or_else(|| bad("empty"))?;
    if tag & 0x1f == 0x1f {
        return Err(bad("high tag numbers are not used in CMS"));
    }
    let first = *input.get(1).ok_or_else(|| bad("truncated length"))?;
    let (len, header) = if first < 0x80 {
        (first as usize, 2)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 {
            return Err(bad("unsupported length form"));
        }
        let bytes = input.get(2..2 + n).ok_or_else(|| bad("truncated length"))?;
        (
            bytes.iter().fold(0usize, |a, b| (a << 8) | *b as usize),
            2 + n,
        )
    };
    let end = header
        .checked_add(len)
        .filter(|e| *e <= input.len())
        .ok_or_else(|| bad("content runs past the end"))?;
    Ok(Tlv {
        tag,
        content: &input[header..end],
        whole: &input[..end],
    })
}

/// The children of a constructed element's content.
pub fn children(mut content: &[u8]) -> Result<Vec<Tlv<'_>>> {
    let mut out = Vec::new();
    while !content.is_empty() {
        let t = read(content)?;
        content = &content[t.whole.len()..];
        out.push(t);
    }
    Ok(out)
}

/// Encodes one DER element from its tag and content.
pub fn encode(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = (len as u64).to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (8 - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}
