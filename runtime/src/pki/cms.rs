//! CMS EnvelopedData (RFC 5652): sealing a secret — a PFX password — for one device.
//!
//! Content encryption AES-256-CBC. RSA recipients: key transport with RSAES-OAEP (SHA-256,
//! MGF1-SHA-256, RFC 4055 parameters) or, per profile, RSAES-PKCS1-v1_5. EC recipients (P-256,
//! P-384): ephemeral-static ECDH, X9.63 KDF, AES-256 key wrap (RFC 5753). The recipient is named
//! by issuer and serial number. `openssl cms -decrypt` with the device's key reads every variant.

use cms::cert::IssuerAndSerialNumber;
use cms::content_info::{CmsVersion, ContentInfo};
use cms::enveloped_data::{
    EncryptedContentInfo, EnvelopedData, KeyAgreeRecipientIdentifier, KeyAgreeRecipientInfo,
    KeyTransRecipientInfo, OriginatorIdentifierOrKey, OriginatorPublicKey, RecipientEncryptedKey,
    RecipientIdentifier, RecipientInfo, RecipientInfos,
};
use const_oid::ObjectIdentifier;
use der::asn1::{Any, BitString, OctetString, SetOfVec};
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
const AES_256_CBC: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.1.42");
const AES_256_WRAP: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.1.45");
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const DH_SINGLE_PASS_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.1.11.1");
const DH_SINGLE_PASS_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.1.11.2");

/// How the content-encryption key reaches an RSA recipient. EC recipients always use ECDH
/// (RFC 5753 dhSinglePass-stdDH with the X9.63 KDF and AES-256 key wrap).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyTransport {
    /// RSAES-OAEP with SHA-256 and MGF1-SHA-256.
    #[default]
    RsaOaep,
    /// RSAES-PKCS1-v1_5, for devices that know nothing else.
    RsaPkcs1,
}

/// Parses a recipient certificate and checks that it can be sealed for.
pub fn check_recipient(recipient_der: &[u8]) -> Result<Certificate, PkiError> {
    let recipient =
        Certificate::from_der(recipient_der).map_err(PkiError::der("recipient certificate"))?;
    match PublicKeyKind::of(&recipient.tbs_certificate.subject_public_key_info)? {
        PublicKeyKind::Rsa { bits } if bits < 2048 => Err(PkiError::Invalid(format!(
            "recipient certificate has an RSA-{bits} key; sealing needs RSA-2048 or larger, or EC P-256/P-384"
        ))),
        _ => Ok(recipient),
    }
}

/// Seals `plaintext` for the holder of `recipient_der`'s private key. DER ContentInfo.
pub fn seal_for(
    recipient_der: &[u8],
    plaintext: &[u8],
    transport: KeyTransport,
) -> Result<Vec<u8>, PkiError> {
    let recipient = check_recipient(recipient_der)?;
    let spki = &recipient.tbs_certificate.subject_public_key_info;
    let rid = IssuerAndSerialNumber {
        issuer: recipient.tbs_certificate.issuer.clone(),
        serial_number: recipient.tbs_certificate.serial_number.clone(),
    };
    let cek = Zeroizing::new(provider::random_vec(32)?);
    let iv = provider::random_vec(16)?;
    let ciphertext = provider::cbc_encrypt(Cipher::Aes256Cbc, &cek, &iv, plaintext)?;

    let (version, recipient_info) = match PublicKeyKind::of(spki)? {
        PublicKeyKind::Rsa { .. } => (CmsVersion::V0, key_transport(spki, rid, &cek, transport)?),
        kind => (CmsVersion::V2, key_agreement(spki, kind, rid, &cek)?),
    };
    let enveloped = EnvelopedData {
        version,
        originator_info: None,
        recip_infos: RecipientInfos(
            SetOfVec::try_from(vec![recipient_info]).map_err(PkiError::der("recipients"))?,
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

fn key_transport(
    spki: &spki::SubjectPublicKeyInfoOwned,
    rid: IssuerAndSerialNumber,
    cek: &[u8],
    transport: KeyTransport,
) -> Result<RecipientInfo, PkiError> {
    let spki_der = spki
        .to_der()
        .map_err(PkiError::der("recipient public key"))?;
    // One definition of the RSA key-transport identifiers, shared with SCEP.
    let (padding, key_enc_alg) = match transport {
        KeyTransport::RsaOaep => (
            Padding::OaepSha256,
            certconn_scep::KeyTransport::OaepSha256.algorithm_identifier(),
        ),
        KeyTransport::RsaPkcs1 => (
            Padding::Pkcs1,
            certconn_scep::KeyTransport::Pkcs1.algorithm_identifier(),
        ),
    };
    let wrapped = provider::rsa_encrypt(&spki_der, padding, cek)?;
    Ok(RecipientInfo::Ktri(KeyTransRecipientInfo {
        version: CmsVersion::V0,
        rid: RecipientIdentifier::IssuerAndSerialNumber(rid),
        key_enc_alg,
        enc_key: OctetString::new(wrapped).map_err(PkiError::der("encrypted key"))?,
    }))
}

/// RFC 5753 ephemeral-static ECDH: a fresh key pair per message, the X9.63 KDF over the shared
/// secret and ECC-CMS-SharedInfo, and AES-256 key wrap of the content-encryption key.
fn key_agreement(
    spki: &spki::SubjectPublicKeyInfoOwned,
    kind: PublicKeyKind,
    rid: IssuerAndSerialNumber,
    cek: &[u8],
) -> Result<RecipientInfo, PkiError> {
    use aws_lc_rs::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey};
    use aws_lc_rs::key_wrap::{AesKek, KeyWrap, AES_256};

    let (curve, scheme, digest) = match kind {
        PublicKeyKind::EcP256 => (
            &agreement::ECDH_P256,
            DH_SINGLE_PASS_SHA256,
            provider::Digest::Sha256,
        ),
        PublicKeyKind::EcP384 => (
            &agreement::ECDH_P384,
            DH_SINGLE_PASS_SHA384,
            provider::Digest::Sha384,
        ),
        other => {
            return Err(PkiError::Invalid(format!(
                "cannot agree a key with a {} recipient",
                other.describe()
            )))
        }
    };
    let failed =
        |what: &str| PkiError::Invalid(format!("ECDH with the recipient's key failed: {what}"));
    let peer_point = spki
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| failed("its public key has unused bits"))?;
    let ephemeral = EphemeralPrivateKey::generate(curve, &aws_lc_rs::rand::SystemRandom::new())
        .map_err(|_| failed("key generation"))?;
    let ephemeral_public = ephemeral
        .compute_public_key()
        .map_err(|_| failed("public key"))?
        .as_ref()
        .to_vec();
    let wrap_alg = AlgorithmIdentifierOwned {
        oid: AES_256_WRAP,
        parameters: None,
    };
    let shared_info = EccCmsSharedInfo {
        key_info: wrap_alg.clone(),
        entity_u_info: None,
        supp_pub_info: OctetString::new(256u32.to_be_bytes().to_vec())
            .map_err(PkiError::der("SharedInfo"))?,
    }
    .to_der()
    .map_err(PkiError::der("SharedInfo"))?;
    let kek: Zeroizing<Vec<u8>> = agreement::agree_ephemeral(
        ephemeral,
        UnparsedPublicKey::new(curve, peer_point),
        failed("the recipient's public key was refused"),
        |z| {
            // ANSI X9.63 KDF, one block: Hash(Z || 00000001 || SharedInfo), first 256 bits.
            let mut input = Zeroizing::new(Vec::with_capacity(z.len() + 4 + shared_info.len()));
            input.extend_from_slice(z);
            input.extend_from_slice(&1u32.to_be_bytes());
            input.extend_from_slice(&shared_info);
            let mut k = Zeroizing::new(provider::digest(digest, &input));
            k.truncate(32);
            Ok(k)
        },
    )?;
    let mut wrapped = vec![0u8; cek.len() + 8];
    let n = AesKek::new(&AES_256, &kek)
        .and_then(|k| k.wrap(cek, &mut wrapped).map(|w| w.len()))
        .map_err(|_| failed("AES key wrap"))?;
    wrapped.truncate(n);
    Ok(RecipientInfo::Kari(KeyAgreeRecipientInfo {
        version: CmsVersion::V3,
        originator: OriginatorIdentifierOrKey::OriginatorKey(OriginatorPublicKey {
            algorithm: AlgorithmIdentifierOwned {
                oid: EC_PUBLIC_KEY,
                parameters: None,
            },
            public_key: BitString::from_bytes(&ephemeral_public)
                .map_err(PkiError::der("ephemeral key"))?,
        }),
        ukm: None,
        key_enc_alg: AlgorithmIdentifierOwned {
            oid: scheme,
            parameters: Some(
                Any::encode_from(&wrap_alg).map_err(PkiError::der("key wrap algorithm"))?,
            ),
        },
        recipient_enc_keys: vec![RecipientEncryptedKey {
            rid: KeyAgreeRecipientIdentifier::IssuerAndSerialNumber(rid),
            enc_key: OctetString::new(wrapped).map_err(PkiError::der("wrapped key"))?,
        }],
    }))
}

/// ECC-CMS-SharedInfo (RFC 5753 section 7.2).
#[derive(der::Sequence)]
struct EccCmsSharedInfo {
    key_info: AlgorithmIdentifierOwned,
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
    entity_u_info: Option<OctetString>,
    #[asn1(context_specific = "2", tag_mode = "EXPLICIT")]
    supp_pub_info: OctetString,
}
