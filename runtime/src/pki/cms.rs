//! CMS EnvelopedData (RFC 5652): sealing a secret — a PFX password — for one device.
//!
//! Content encryption AES-256-CBC; key transport RSAES-OAEP with SHA-256 and MGF1-SHA-256
//! (RFC 8017, parameters per RFC 4055), the recipient named by issuer and serial number.
//! `openssl cms -decrypt` with the device's key reads it.

use cms::cert::IssuerAndSerialNumber;
use cms::content_info::{CmsVersion, ContentInfo};
use cms::enveloped_data::{
    EncryptedContentInfo, EnvelopedData, KeyTransRecipientInfo, RecipientIdentifier, RecipientInfo,
    RecipientInfos,
};
use const_oid::ObjectIdentifier;
use der::asn1::{Any, OctetString, SetOfVec};
use der::{Decode, Encode};
use spki::AlgorithmIdentifierOwned;
use x509_cert::Certificate;
use zeroize::Zeroizing;

use super::PkiError;
use crate::crypto::policy::Cipher;
use crate::crypto::provider::{self, Padding};
use certconn_x509::PublicKeyKind;

const ID_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.1");
const ID_ENVELOPED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.3");
const RSAES_OAEP: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.7");
const AES_256_CBC: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.1.42");

/// RSAES-OAEP-params { hashFunc sha256, maskGenFunc mgf1(sha256), pSourceFunc default }.
const OAEP_SHA256_PARAMS: &[u8] = &[
    0x30, 0x2f, 0xa0, 0x0f, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
    0x01, 0x05, 0x00, 0xa1, 0x1c, 0x30, 0x1a, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01,
    0x01, 0x08, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00,
];

/// Parses a recipient certificate and checks that it can be sealed for.
pub fn check_recipient(recipient_der: &[u8]) -> Result<Certificate, PkiError> {
    let recipient =
        Certificate::from_der(recipient_der).map_err(PkiError::der("recipient certificate"))?;
    match PublicKeyKind::of(&recipient.tbs_certificate.subject_public_key_info)? {
        PublicKeyKind::Rsa { bits } if bits >= 2048 => Ok(recipient),
        other => Err(PkiError::Invalid(format!(
            "recipient certificate has a {} key; sealing needs RSA-2048 or larger",
            other.describe()
        ))),
    }
}

/// Seals `plaintext` for the holder of `recipient_der`'s private key. DER ContentInfo.
pub fn seal_for(recipient_der: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, PkiError> {
    let recipient = check_recipient(recipient_der)?;
    let spki = &recipient.tbs_certificate.subject_public_key_info;
    let spki_der = spki
        .to_der()
        .map_err(PkiError::der("recipient public key"))?;

    let cek = Zeroizing::new(provider::random_vec(32)?);
    let iv = provider::random_vec(16)?;
    let ciphertext = provider::cbc_encrypt(Cipher::Aes256Cbc, &cek, &iv, plaintext)?;
    let wrapped = provider::rsa_encrypt(&spki_der, Padding::OaepSha256, &cek)?;

    let ktri = KeyTransRecipientInfo {
        version: CmsVersion::V0,
        rid: RecipientIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
            issuer: recipient.tbs_certificate.issuer.clone(),
            serial_number: recipient.tbs_certificate.serial_number.clone(),
        }),
        key_enc_alg: AlgorithmIdentifierOwned {
            oid: RSAES_OAEP,
            parameters: Some(
                Any::from_der(OAEP_SHA256_PARAMS).map_err(PkiError::der("OAEP parameters"))?,
            ),
        },
        enc_key: OctetString::new(wrapped).map_err(PkiError::der("encrypted key"))?,
    };
    let enveloped = EnvelopedData {
        version: CmsVersion::V0,
        originator_info: None,
        recip_infos: RecipientInfos(
            SetOfVec::try_from(vec![RecipientInfo::Ktri(ktri)])
                .map_err(PkiError::der("recipients"))?,
        ),
        encrypted_content: EncryptedContentInfo {
            content_type: ID_DATA,
            content_enc_alg: AlgorithmIdentifierOwned {
                oid: AES_256_CBC,
                parameters: Some(
                    Any::encode_from(&OctetString::new(iv).map_err(PkiError::der("IV"))?)
                        .map_err(PkiError::der("IV"))?,
                ),
            },
            encrypted_content: Some(
                OctetString::new(ciphertext).map_err(PkiError::der("ciphertext"))?,
            ),
        },
        unprotected_attrs: None,
    };
    ContentInfo {
        content_type: ID_ENVELOPED_DATA,
        content: Any::encode_from(&enveloped).map_err(PkiError::der("EnvelopedData"))?,
    }
    .to_der()
    .map_err(PkiError::der("ContentInfo"))
}
