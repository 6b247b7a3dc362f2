//! Splitting a signed structure (certificate or CSR) into the exact bytes that were signed,
//! the algorithm and the signature — re-encoding a decoded structure is not guaranteed to
//! reproduce the signed bytes, so verification must use the original TLV.

use der::asn1::BitStringRef;
use der::{Decode, Encode, Reader, SliceReader, Tag};
use spki::AlgorithmIdentifierOwned;

use crate::{Error, Result};

/// The three parts of `SEQUENCE { tbs, signatureAlgorithm, signature }`.
#[derive(Debug)]
pub struct SignedParts<'a> {
    /// The complete TLV of the signed content, as it appeared in the input.
    pub tbs: &'a [u8],
    pub algorithm: AlgorithmIdentifierOwned,
    pub signature: &'a [u8],
}

impl<'a> SignedParts<'a> {
    /// Splits a DER certificate or certification request. Trailing data is an error.
    pub fn split(der_bytes: &'a [u8]) -> Result<Self> {
        let mut outer = SliceReader::new(der_bytes)?;
        let header = der::Header::decode(&mut outer)?;
        if header.tag != Tag::Sequence {
            return Err(Error::Invalid(format!(
                "expected a SEQUENCE, found {}",
                header.tag
            )));
        }
        let body_len: usize = header.length.try_into()?;
        let body = outer.read_slice(header.length)?;
        outer.finish(())?;
        debug_assert_eq!(body.len(), body_len);

        let mut inner = SliceReader::new(body)?;
        let tbs_header = der::Header::decode(&mut inner)?;
        let tbs_len: usize = (tbs_header.encoded_len()? + tbs_header.length)?.try_into()?;
        let tbs = body
            .get(..tbs_len)
            .ok_or_else(|| Error::Invalid("signed content is truncated".into()))?;
        let mut rest = SliceReader::new(&body[tbs_len..])?;
        let algorithm = AlgorithmIdentifierOwned::decode(&mut rest)?;
        let bits = BitStringRef::decode(&mut rest)?;
        rest.finish(())?;
        let signature = bits
            .as_bytes()
            .ok_or_else(|| Error::Invalid("signature BIT STRING has unused bits".into()))?;
        Ok(Self {
            tbs,
            algorithm,
            signature,
        })
    }
}

/// Encodes `SEQUENCE { tbs, algorithm, BIT STRING signature }` from already-encoded `tbs` DER.
pub fn assemble(
    tbs_der: &[u8],
    algorithm: &AlgorithmIdentifierOwned,
    signature: &[u8],
) -> Result<Vec<u8>> {
    let alg = algorithm.to_der()?;
    let sig = der::asn1::BitString::from_bytes(signature)?.to_der()?;
    let body_len = der::Length::try_from(tbs_der.len() + alg.len() + sig.len())?;
    let mut out = Vec::with_capacity(tbs_der.len() + alg.len() + sig.len() + 8);
    der::Header::new(Tag::Sequence, body_len)?.encode_to_vec(&mut out)?;
    out.extend_from_slice(tbs_der);
    out.extend_from_slice(&alg);
    out.extend_from_slice(&sig);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_and_assemble_are_inverse() {
        let alg = crate::SignatureScheme::EcdsaP256Sha256.algorithm_identifier();
        let tbs = der::asn1::OctetString::new(vec![1u8, 2, 3])
            .unwrap()
            .to_der()
            .unwrap();
        let whole = assemble(&tbs, &alg, &[9, 9, 9]).unwrap();
        let parts = SignedParts::split(&whole).unwrap();
        assert_eq!(parts.tbs, &tbs[..]);
        assert_eq!(parts.algorithm, alg);
        assert_eq!(parts.signature, &[9, 9, 9]);
    }

    #[test]
    fn trailing_garbage_is_refused() {
        let alg = crate::SignatureScheme::EcdsaP256Sha256.algorithm_identifier();
        let tbs = der::asn1::OctetString::new(vec![1u8])
            .unwrap()
            .to_der()
            .unwrap();
        let mut whole = assemble(&tbs, &alg, &[9]).unwrap();
        whole.push(0);
        assert!(SignedParts::split(&whole).is_err());
        assert!(SignedParts::split(&whole[..whole.len() - 3]).is_err());
    }
}
