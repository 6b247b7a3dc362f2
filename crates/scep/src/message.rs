//! The pkiMessage (RFC 8894 §3.2): a CMS SignedData whose signed attributes carry the SCEP
//! transaction and whose content is the pkcsPKIEnvelope.

use cms::content_info::{CmsVersion, ContentInfo};
use cms::signed_data::EncapsulatedContentInfo;
use der::asn1::{Any, OctetString, PrintableStringRef, SetOfVec};
use der::{Decode, Encode, Sequence, Tag, Tagged};
use spki::AlgorithmIdentifierOwned;
use x509_cert::attr::Attribute;
use x509_cert::name::Name;

use crate::algorithms::signer_scheme;
use crate::lenient::{self, CertificateId, IssuerSerial, SignedData, SignerInfo};
use crate::{oid, tlv, Crypto, Digest, Error, Identity, Result};

/// SCEP messageType values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageType {
    CertRep,
    RenewalReq,
    PkcsReq,
    /// CertPoll, called GetCertInitial before RFC 8894.
    CertPoll,
    GetCert,
    GetCrl,
}

impl MessageType {
    pub fn code(self) -> u8 {
        match self {
            Self::CertRep => 3,
            Self::RenewalReq => 17,
            Self::PkcsReq => 19,
            Self::CertPoll => 20,
            Self::GetCert => 21,
            Self::GetCrl => 22,
        }
    }

    fn from_code(s: &str) -> Result<Self> {
        Ok(match s.trim() {
            "3" => Self::CertRep,
            "17" => Self::RenewalReq,
            "19" => Self::PkcsReq,
            "20" => Self::CertPoll,
            "21" => Self::GetCert,
            "22" => Self::GetCrl,
            other => {
                return Err(Error::invalid(
                    "messageType",
                    format!("unknown value {other:?}"),
                ))
            }
        })
    }
}

/// SCEP pkiStatus values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PkiStatus {
    Success,
    Failure,
    Pending,
}

impl PkiStatus {
    fn code(self) -> &'static str {
        match self {
            Self::Success => "0",
            Self::Failure => "2",
            Self::Pending => "3",
        }
    }

    fn from_code(s: &str) -> Result<Self> {
        Ok(match s.trim() {
            "0" => Self::Success,
            "2" => Self::Failure,
            "3" => Self::Pending,
            other => {
                return Err(Error::invalid(
                    "pkiStatus",
                    format!("unknown value {other:?}"),
                ))
            }
        })
    }
}

/// SCEP failInfo values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailInfo {
    /// Unrecognized or unsupported algorithm.
    BadAlg,
    /// Integrity check (signature) failed, or the message could not be decrypted.
    BadMessageCheck,
    /// Transaction not permitted or supported.
    BadRequest,
    /// The signingTime attribute was not close enough to the system time.
    BadTime,
    /// No certificate could be identified matching the provided criteria.
    BadCertId,
}

impl FailInfo {
    pub fn code(self) -> u8 {
        match self {
            Self::BadAlg => 0,
            Self::BadMessageCheck => 1,
            Self::BadRequest => 2,
            Self::BadTime => 3,
            Self::BadCertId => 4,
        }
    }

    fn from_code(s: &str) -> Result<Self> {
        Ok(match s.trim() {
            "0" => Self::BadAlg,
            "1" => Self::BadMessageCheck,
            "2" => Self::BadRequest,
            "3" => Self::BadTime,
            "4" => Self::BadCertId,
            other => {
                return Err(Error::invalid(
                    "failInfo",
                    format!("unknown value {other:?}"),
                ))
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::BadAlg => "badAlg",
            Self::BadMessageCheck => "badMessageCheck",
            Self::BadRequest => "badRequest",
            Self::BadTime => "badTime",
            Self::BadCertId => "badCertId",
        }
    }
}

/// The CertPoll (GetCertInitial) content: which request is being asked about.
#[derive(Clone, Debug, PartialEq, Eq, Sequence)]
pub struct IssuerAndSubject {
    pub issuer: Name,
    pub subject: Name,
}

/// A pkiMessage to sign.
pub struct Outgoing<'a> {
    pub message_type: MessageType,
    pub transaction_id: &'a str,
    pub sender_nonce: &'a [u8],
    pub recipient_nonce: Option<&'a [u8]>,
    pub pki_status: Option<PkiStatus>,
    pub fail_info: Option<FailInfo>,
    /// The pkcsPKIEnvelope (a DER ContentInfo), absent in FAILURE and PENDING replies.
    pub content: Option<&'a [u8]>,
    /// Certificates sent beside the signer's own.
    pub extra_certificates: &'a [Vec<u8>],
    /// Whether the message carries certificates at all (NDES sends its CertRep without any).
    pub send_certificates: bool,
}

fn attribute(oid: const_oid::ObjectIdentifier, value: Any) -> Result<Attribute> {
    Ok(Attribute {
        oid,
        values: SetOfVec::try_from(vec![value]).map_err(Error::malformed("attribute"))?,
    })
}

fn printable(s: &str) -> Result<Any> {
    let p = PrintableStringRef::new(s)
        .map_err(|_| Error::invalid("SCEP attribute", format!("{s:?} is not a PrintableString")))?;
    Any::encode_from(&p).map_err(Error::malformed("SCEP attribute"))
}

fn octets(b: &[u8]) -> Result<Any> {
    Any::encode_from(&OctetString::new(b).map_err(Error::malformed("SCEP attribute"))?)
        .map_err(Error::malformed("SCEP attribute"))
}

/// Signs a pkiMessage with `identity` (RSA PKCS#1 v1.5 over `digest`). Returns the DER
/// ContentInfo.
pub fn sign(
    crypto: &dyn Crypto,
    identity: &dyn Identity,
    digest: Digest,
    out: &Outgoing<'_>,
) -> Result<Vec<u8>> {
    sign_with(crypto, identity, digest, digest.rsa_scheme(), out)
}

/// Signs a pkiMessage with RSASSA-PSS (SHA-256, MGF1-SHA-256, 32-byte salt), as some clients
/// sign theirs.
pub fn sign_pss(
    crypto: &dyn Crypto,
    identity: &dyn Identity,
    out: &Outgoing<'_>,
) -> Result<Vec<u8>> {
    sign_with(
        crypto,
        identity,
        Digest::Sha256,
        certconn_x509::SignatureScheme::RsaPssSha256,
        out,
    )
}

fn sign_with(
    crypto: &dyn Crypto,
    identity: &dyn Identity,
    digest: Digest,
    scheme: certconn_x509::SignatureScheme,
    out: &Outgoing<'_>,
) -> Result<Vec<u8>> {
    let mut attrs = vec![
        attribute(
            oid::SCEP_MESSAGE_TYPE,
            printable(&out.message_type.code().to_string())?,
        )?,
        attribute(oid::SCEP_TRANSACTION_ID, printable(out.transaction_id)?)?,
        attribute(oid::SCEP_SENDER_NONCE, octets(out.sender_nonce)?)?,
    ];
    if let Some(n) = out.recipient_nonce {
        attrs.push(attribute(oid::SCEP_RECIPIENT_NONCE, octets(n)?)?);
    }
    if let Some(s) = out.pki_status {
        attrs.push(attribute(oid::SCEP_PKI_STATUS, printable(s.code())?)?);
    }
    if let Some(f) = out.fail_info {
        attrs.push(attribute(
            oid::SCEP_FAIL_INFO,
            printable(&f.code().to_string())?,
        )?);
    }
    signed_data(
        crypto,
        identity,
        (digest, scheme),
        attrs,
        out.content.unwrap_or_default(),
        out.extra_certificates,
        out.send_certificates,
    )
}

/// GetNextCACert's answer (RFC 8894 §4.7): the certificates that take over next, as a
/// certs-only bag, carried in a SignedData signed by `identity` (the current RA, which clients
/// already trust as the server's signer).
pub fn sign_next_ca(
    crypto: &dyn Crypto,
    identity: &dyn Identity,
    digest: Digest,
    bag: &[u8],
) -> Result<Vec<u8>> {
    signed_data(
        crypto,
        identity,
        (digest, digest.rsa_scheme()),
        Vec::new(),
        bag,
        &[],
        true,
    )
}

/// A SignedData over `content` with contentType and messageDigest, then `attrs`, as signed
/// attributes.
fn signed_data(
    crypto: &dyn Crypto,
    identity: &dyn Identity,
    (digest, scheme): (Digest, certconn_x509::SignatureScheme),
    attrs: Vec<Attribute>,
    content: &[u8],
    extra_certificates: &[Vec<u8>],
    send_certificates: bool,
) -> Result<Vec<u8>> {
    let me = lenient::certificate("signer certificate", identity.certificate())?;
    let mut all = vec![
        attribute(
            oid::CONTENT_TYPE,
            Any::encode_from(&oid::DATA).map_err(Error::malformed("contentType"))?,
        )?,
        attribute(
            oid::MESSAGE_DIGEST,
            octets(&crypto.digest(digest, content)?)?,
        )?,
    ];
    all.extend(attrs);
    let signed_attrs = SetOfVec::try_from(all).map_err(Error::malformed("signed attributes"))?;
    // The signature covers the attributes encoded as a SET (tag 0x31), RFC 5652 §5.4.
    let to_sign = signed_attrs
        .to_der()
        .map_err(Error::malformed("signed attributes"))?;
    let signature = identity.sign(scheme, &to_sign)?;
    // PKCS#1 v1.5 is written as rsaEncryption, as NDES and most clients write it; PSS needs
    // its parameters.
    let signature_algorithm = match scheme {
        certconn_x509::SignatureScheme::RsaPssSha256 => scheme.algorithm_identifier(),
        _ => AlgorithmIdentifierOwned {
            oid: oid::RSA_ENCRYPTION,
            parameters: Some(Any::null()),
        },
    };

    let signer = SignerInfo {
        version: CmsVersion::V1,
        sid: CertificateId::IssuerAndSerialNumber(IssuerSerial::of(&me)),
        digest_alg: digest.algorithm_identifier(),
        signed_attrs: Some(signed_attrs),
        signature_algorithm,
        signature: OctetString::new(signature).map_err(Error::malformed("signature"))?,
        unsigned_attrs: None,
    };
    let mut certs = Vec::new();
    for der in
        std::iter::once(identity.certificate()).chain(extra_certificates.iter().map(Vec::as_slice))
    {
        lenient::certificate("certificate", der)?;
        certs.push(Any::from_der(der).map_err(Error::malformed("certificate"))?);
    }
    let signed = SignedData {
        version: CmsVersion::V1,
        digest_algorithms: SetOfVec::try_from(vec![digest.algorithm_identifier()])
            .map_err(Error::malformed("digest algorithms"))?,
        encap_content_info: EncapsulatedContentInfo {
            econtent_type: oid::DATA,
            // Always present, empty when there is nothing to carry (a FAILURE or PENDING
            // CertRep): clients built on OpenSSL's PKCS7 verification refuse a SignedData
            // without content ("no content"), others crash reading one.
            econtent: Some(octets(content)?),
        },
        certificates: if send_certificates {
            Some(SetOfVec::try_from(certs).map_err(Error::malformed("certificates"))?)
        } else {
            None
        },
        crls: None,
        signer_infos: SetOfVec::try_from(vec![signer]).map_err(Error::malformed("signer infos"))?,
    };
    ContentInfo {
        content_type: oid::SIGNED_DATA,
        content: Any::encode_from(&signed).map_err(Error::malformed("SignedData"))?,
    }
    .to_der()
    .map_err(Error::malformed("ContentInfo"))
}

/// A pkiMessage whose signature has been verified.
#[derive(Debug, Clone)]
pub struct SignedMessage {
    pub message_type: MessageType,
    pub transaction_id: String,
    pub sender_nonce: Option<Vec<u8>>,
    pub recipient_nonce: Option<Vec<u8>>,
    pub pki_status: Option<PkiStatus>,
    pub fail_info: Option<FailInfo>,
    /// RFC 8894 failInfoText, when the sender gave one.
    pub fail_info_text: Option<String>,
    /// The encapsulated content (the pkcsPKIEnvelope), when present.
    pub content: Option<Vec<u8>>,
    /// Every certificate the message carries, DER.
    pub certificates: Vec<Vec<u8>>,
    /// The certificate whose key signed the message, DER.
    pub signer: Vec<u8>,
    pub digest: Digest,
}

/// Verifies a pkiMessage (BER accepted) and reads its attributes. The signer is looked up
/// among the message's own certificates and then `known_signers` — NDES, for one, sends its
/// CertRep without certificates, signed by the RA the client already holds.
pub fn verify(
    crypto: &dyn Crypto,
    bytes: &[u8],
    known_signers: &[Vec<u8>],
) -> Result<SignedMessage> {
    if bytes.len() > crate::MAX_MESSAGE_BYTES {
        return Err(Error::invalid(
            "pkiMessage",
            format!(
                "{} bytes is over the {} byte limit",
                bytes.len(),
                crate::MAX_MESSAGE_BYTES
            ),
        ));
    }
    let der = certconn_x509::ber::to_der(bytes)
        .map_err(|e| Error::invalid("pkiMessage", e.to_string()))?;
    let info = ContentInfo::from_der(&der).map_err(Error::malformed("pkiMessage"))?;
    if info.content_type != oid::SIGNED_DATA {
        return Err(Error::invalid(
            "pkiMessage",
            format!("content type {} is not signedData", info.content_type),
        ));
    }
    let signed: SignedData = info
        .content
        .decode_as()
        .map_err(Error::malformed("SignedData"))?;
    let raw_attrs = raw_signed_attributes(info.content.value())?;
    let signer_info = match signed.signer_infos.as_slice() {
        [one] => one,
        [] => return Err(Error::invalid("SignedData", "no signer")),
        _ => return Err(Error::invalid("SignedData", "more than one signer")),
    };
    let attrs = signer_info
        .signed_attrs
        .as_ref()
        .ok_or_else(|| Error::invalid("SignerInfo", "no signed attributes"))?;

    let certificates = signed.certificate_ders();
    let signer = certificates
        .iter()
        .chain(known_signers)
        .find(|der| {
            lenient::certificate("certificate", der).is_ok_and(|c| signer_info.sid.names(&c))
        })
        .cloned()
        .ok_or_else(|| {
            Error::BadSignature(
                "the signer's certificate is neither in the message nor known".into(),
            )
        })?;
    let signer_cert = lenient::certificate("signer certificate", &signer)?;
    let spki = signer_cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(Error::malformed("signer public key"))?;
    let (digest, scheme) =
        signer_scheme(&signer_info.digest_alg, &signer_info.signature_algorithm)?;

    let content = match &signed.encap_content_info.econtent {
        Some(any) => Some(
            any.decode_as::<OctetString>()
                .map_err(Error::malformed("encapsulated content"))?
                .into_bytes(),
        ),
        None => None,
    };
    // An empty content is no content (how FAILURE and PENDING replies carry none).
    let content = content.filter(|c| !c.is_empty());
    let want = crypto.digest(digest, content.as_deref().unwrap_or_default())?;
    let got = single_value(attrs, oid::MESSAGE_DIGEST)?
        .ok_or_else(|| Error::invalid("signed attributes", "no messageDigest"))?
        .decode_as::<OctetString>()
        .map_err(Error::malformed("messageDigest"))?;
    if got.as_bytes() != want.as_slice() {
        return Err(Error::BadSignature(
            "messageDigest does not match the content".into(),
        ));
    }
    // RSA keys under 2048 bits are read only for SHA-1 signatures (old Apple devices send
    // RSA-1024 with SHA-1); otherwise say so rather than report a bad signature.
    if let Ok(certconn_x509::PublicKeyKind::Rsa { bits }) =
        certconn_x509::PublicKeyKind::of(&signer_cert.tbs_certificate.subject_public_key_info)
    {
        if bits < 2048 && digest != Digest::Sha1 {
            return Err(Error::Unsupported(format!(
                "the signer's key is RSA-{bits}; RSA-2048 or larger is required (RSA-1024 is read only with SHA-1, for legacy devices)"
            )));
        }
    }
    // Verify over the bytes as sent, with the [0] IMPLICIT tag replaced by SET (0x31).
    let mut signed_bytes = raw_attrs;
    signed_bytes[0] = 0x31;
    let ok = crypto.verify(
        &spki,
        scheme,
        &signed_bytes,
        signer_info.signature.as_bytes(),
    )?;
    if !ok {
        return Err(Error::BadSignature(
            "the signature does not verify with the signer's certificate".into(),
        ));
    }

    let text = |o| -> Result<Option<String>> {
        single_value(attrs, o)?
            .map(|v| string_value(&v))
            .transpose()
    };
    let bytes_of = |o| -> Result<Option<Vec<u8>>> {
        single_value(attrs, o)?
            .map(|v| {
                v.decode_as::<OctetString>()
                    .map(OctetString::into_bytes)
                    .map_err(Error::malformed("nonce"))
            })
            .transpose()
    };
    let message_type = MessageType::from_code(
        &text(oid::SCEP_MESSAGE_TYPE)?
            .ok_or_else(|| Error::invalid("signed attributes", "no messageType"))?,
    )?;
    Ok(SignedMessage {
        message_type,
        transaction_id: text(oid::SCEP_TRANSACTION_ID)?
            .ok_or_else(|| Error::invalid("signed attributes", "no transactionID"))?,
        sender_nonce: bytes_of(oid::SCEP_SENDER_NONCE)?,
        recipient_nonce: bytes_of(oid::SCEP_RECIPIENT_NONCE)?,
        pki_status: text(oid::SCEP_PKI_STATUS)?
            .map(|s| PkiStatus::from_code(&s))
            .transpose()?,
        fail_info: text(oid::SCEP_FAIL_INFO)?
            .map(|s| FailInfo::from_code(&s))
            .transpose()?,
        fail_info_text: text(oid::SCEP_FAIL_INFO_TEXT)?,
        content,
        certificates,
        signer,
        digest,
    })
}

fn single_value(
    attrs: &SetOfVec<Attribute>,
    o: const_oid::ObjectIdentifier,
) -> Result<Option<Any>> {
    let mut found = attrs.iter().filter(|a| a.oid == o);
    let Some(a) = found.next() else {
        return Ok(None);
    };
    if found.next().is_some() || a.values.len() != 1 {
        return Err(Error::invalid(
            "signed attributes",
            format!("attribute {o} must appear once with one value"),
        ));
    }
    Ok(a.values.iter().next().cloned())
}

fn string_value(v: &Any) -> Result<String> {
    match v.tag() {
        Tag::PrintableString | Tag::Utf8String | Tag::Ia5String => {
            String::from_utf8(v.value().to_vec())
                .map_err(|_| Error::invalid("SCEP attribute", "not UTF-8"))
        }
        t => Err(Error::invalid(
            "SCEP attribute",
            format!("a string was expected, found {t}"),
        )),
    }
}

/// The raw `[0] IMPLICIT SignedAttributes` of the single SignerInfo, from SignedData's content.
fn raw_signed_attributes(signed_data_content: &[u8]) -> Result<Vec<u8>> {
    let children = tlv::children(signed_data_content)?;
    let signer_infos = children
        .last()
        .filter(|c| c.tag == 0x31)
        .ok_or_else(|| Error::invalid("SignedData", "no signerInfos"))?;
    let first = tlv::children(signer_infos.content)?
        .into_iter()
        .next()
        .ok_or_else(|| Error::invalid("SignedData", "no signer"))?;
    tlv::children(first.content)?
        .into_iter()
        .find(|c| c.tag == 0xa0)
        .map(|c| c.whole.to_vec())
        .ok_or_else(|| Error::invalid("SignerInfo", "no signed attributes"))
}
