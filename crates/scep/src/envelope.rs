//! The pkcsPKIEnvelope: CMS EnvelopedData with one key-transport recipient (RFC 8894 §3.2.2).

use cms::content_info::{CmsVersion, ContentInfo};
use cms::enveloped_data::EncryptedContentInfo;
use der::asn1::{Any, OctetString, SetOfVec};
use der::{Decode, Encode};
use spki::AlgorithmIdentifierOwned;

use crate::lenient::{self, CertificateId, EnvelopedData, IssuerSerial, KeyTransRecipientInfo};
use crate::{oid, Cipher, Crypto, Error, Identity, KeyTransport, Result};

/// Encrypts `content` for the holder of `recipient_der`'s key. Returns a DER ContentInfo.
pub fn seal(
    crypto: &dyn Crypto,
    content: &[u8],
    recipient_der: &[u8],
    cipher: Cipher,
    transport: KeyTransport,
) -> Result<Vec<u8>> {
    let recipient = lenient::certificate("recipient certificate", recipient_der)?;
    let tbs = &recipient.tbs_certificate;
    let spki = tbs
        .subject_public_key_info
        .to_der()
        .map_err(Error::malformed("recipient public key"))?;
    let cek = crypto.random(cipher.key_len())?;
    let iv = crypto.random(cipher.iv_len())?;
    let ciphertext = crypto.cbc_encrypt(cipher, &cek, &iv, content)?;
    let wrapped = crypto.encrypt_key(&spki, transport, &cek)?;
    let info = Any::encode_from(&KeyTransRecipientInfo {
        version: CmsVersion::V0,
        rid: CertificateId::IssuerAndSerialNumber(IssuerSerial::of(&recipient)),
        key_enc_alg: transport.algorithm_identifier(),
        enc_key: OctetString::new(wrapped).map_err(Error::malformed("encrypted key"))?,
    })
    .map_err(Error::malformed("recipient"))?;
    let enveloped = EnvelopedData {
        version: CmsVersion::V0,
        originator_info: None,
        recip_infos: SetOfVec::try_from(vec![info]).map_err(Error::malformed("recipients"))?,
        encrypted_content: EncryptedContentInfo {
            content_type: oid::DATA,
            content_enc_alg: AlgorithmIdentifierOwned {
                oid: cipher.oid(),
                parameters: Some(
                    Any::encode_from(
                        &OctetString::new(iv.to_vec()).map_err(Error::malformed("IV"))?,
                    )
                    .map_err(Error::malformed("IV"))?,
                ),
            },
            encrypted_content: Some(
                OctetString::new(ciphertext).map_err(Error::malformed("ciphertext"))?,
            ),
        },
        unprotected_attrs: None,
    };
    ContentInfo {
        content_type: oid::ENVELOPED_DATA,
        content: Any::encode_from(&enveloped).map_err(Error::malformed("EnvelopedData"))?,
    }
    .to_der()
    .map_err(Error::malformed("ContentInfo"))
}

/// What an envelope was sealed with, so a reply can use what the requester showed it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    pub cipher: Cipher,
    pub transport: KeyTransport,
}

/// Decrypts an envelope addressed to `identity`'s certificate. The cipher goes through the
/// caller's [`Crypto`], whose policy decides whether DES or 3DES may be read.
pub fn open(
    crypto: &dyn Crypto,
    identity: &dyn Identity,
    content_info_der: &[u8],
) -> Result<(Vec<u8>, Opened)> {
    let der = certconn_x509::ber::to_der(content_info_der)
        .map_err(|e| Error::invalid("pkcsPKIEnvelope", e.to_string()))?;
    let info = ContentInfo::from_der(&der).map_err(Error::malformed("pkcsPKIEnvelope"))?;
    if info.content_type != oid::ENVELOPED_DATA {
        return Err(Error::invalid(
            "pkcsPKIEnvelope",
            format!("content type {} is not envelopedData", info.content_type),
        ));
    }
    let enveloped: EnvelopedData = info
        .content
        .decode_as()
        .map_err(Error::malformed("EnvelopedData"))?;
    let me = lenient::certificate("our certificate", identity.certificate())?;
    let ktri = enveloped
        .key_transport_recipients()
        .find(|k| k.rid.names(&me))
        .ok_or_else(|| {
            Error::WrongRecipient(format!(
                "the envelope has no key-transport recipient for our certificate (serial {})",
                hex(me.tbs_certificate.serial_number.as_bytes())
            ))
        })?;
    let transport = KeyTransport::from_algorithm_identifier(&ktri.key_enc_alg)?;
    let eci = &enveloped.encrypted_content;
    let cipher = Cipher::from_oid(&eci.content_enc_alg.oid)?;
    let iv = eci
        .content_enc_alg
        .parameters
        .as_ref()
        .ok_or_else(|| Error::invalid("content encryption", "no IV"))?
        .decode_as::<OctetString>()
        .map_err(Error::malformed("content encryption IV"))?;
    if iv.as_bytes().len() != cipher.iv_len() {
        return Err(Error::invalid(
            "content encryption",
            format!("{} IV of {} bytes", cipher.name(), iv.as_bytes().len()),
        ));
    }
    let ciphertext = eci
        .encrypted_content
        .as_ref()
        .ok_or_else(|| Error::invalid("EnvelopedData", "no encrypted content"))?;
    let cek = identity.decrypt_key(transport, ktri.enc_key.as_bytes())?;
    if cek.len() != cipher.key_len() {
        return Err(Error::Crypto(format!(
            "the content-encryption key has {} bytes, {} needs {}",
            cek.len(),
            cipher.name(),
            cipher.key_len()
        )));
    }
    let plain = crypto.cbc_decrypt(cipher, &cek, iv.as_bytes(), ciphertext.as_bytes())?;
    Ok((plain, Opened { cipher, transport }))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}
