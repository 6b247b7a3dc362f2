//! The CMS structures SCEP uses, with certificate serials read as any INTEGER.
//!
//! A SCEP client signs its first request with a throwaway self-signed certificate that only
//! carries its key, and some mainstream clients give it a 32-byte serial (a hash). RFC 5280's
//! profile, which the `cms` and `x509-cert` types enforce, refuses serials over 20 octets, so
//! such a request could not even be read. What authorises a request is its signature and its
//! challenge, not the shape of that certificate, so every certificate, SignerIdentifier and
//! RecipientIdentifier a pkiMessage carries is read (and written, when a reply is sealed for
//! such a certificate) with the `Raw` profile here. The structures are otherwise RFC 5652's.

use cms::content_info::CmsVersion;
use cms::enveloped_data::{EncryptedContentInfo, OriginatorInfo};
use cms::signed_data::EncapsulatedContentInfo;
use der::asn1::{Any, OctetString, SetOfVec};
use der::{Choice, Decode, Encode, Sequence, Tagged, ValueOrd};
use spki::AlgorithmIdentifierOwned;
use x509_cert::attr::Attribute;
use x509_cert::certificate::{CertificateInner, Raw};
use x509_cert::ext::pkix::SubjectKeyIdentifier;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;

use crate::{Error, Result};

/// A certificate read without RFC 5280's profile checks.
pub type AnyCertificate = CertificateInner<Raw>;

/// Reads a certificate leniently; `what` names it in the error.
pub fn certificate(what: &'static str, der: &[u8]) -> Result<AnyCertificate> {
    AnyCertificate::from_der(der).map_err(Error::malformed(what))
}

/// IssuerAndSerialNumber (RFC 5652 §10.2.4) with a serial of any length.
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct IssuerSerial {
    pub issuer: Name,
    pub serial_number: SerialNumber<Raw>,
}

impl IssuerSerial {
    /// The identifier of `cert`.
    pub fn of(cert: &AnyCertificate) -> Self {
        Self {
            issuer: cert.tbs_certificate.issuer.clone(),
            serial_number: cert.tbs_certificate.serial_number.clone(),
        }
    }
}

/// SignerIdentifier and RecipientIdentifier: the same CHOICE (RFC 5652 §5.3, §6.2.1).
#[derive(Clone, Debug, Eq, PartialEq, Choice)]
pub enum CertificateId {
    IssuerAndSerialNumber(IssuerSerial),
    #[asn1(context_specific = "0", tag_mode = "IMPLICIT")]
    SubjectKeyIdentifier(SubjectKeyIdentifier),
}

impl ValueOrd for CertificateId {
    fn value_cmp(&self, other: &Self) -> der::Result<core::cmp::Ordering> {
        use der::DerOrd;
        self.to_der()?.der_cmp(&other.to_der()?)
    }
}

impl CertificateId {
    /// Whether this identifier names `cert`.
    pub fn names(&self, cert: &AnyCertificate) -> bool {
        match self {
            Self::IssuerAndSerialNumber(ias) => *ias == IssuerSerial::of(cert),
            Self::SubjectKeyIdentifier(ski) => {
                certconn_x509::extensions::subject_key_identifier_of(cert).as_deref()
                    == Some(ski.0.as_bytes())
            }
        }
    }
}

/// SignerInfo (RFC 5652 §5.3).
#[derive(Clone, Debug, Eq, PartialEq, Sequence, ValueOrd)]
pub struct SignerInfo {
    pub version: CmsVersion,
    pub sid: CertificateId,
    pub digest_alg: AlgorithmIdentifierOwned,
    #[asn1(
        context_specific = "0",
        tag_mode = "IMPLICIT",
        constructed = "true",
        optional = "true"
    )]
    pub signed_attrs: Option<SetOfVec<Attribute>>,
    pub signature_algorithm: AlgorithmIdentifierOwned,
    pub signature: OctetString,
    #[asn1(
        context_specific = "1",
        tag_mode = "IMPLICIT",
        constructed = "true",
        optional = "true"
    )]
    pub unsigned_attrs: Option<SetOfVec<Attribute>>,
}

/// SignedData (RFC 5652 §5.1). Certificates and CRLs are kept as their DER elements: each
/// certificate is read leniently when it is needed, and the other CertificateChoices are
/// ignored rather than refused.
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct SignedData {
    pub version: CmsVersion,
    pub digest_algorithms: SetOfVec<AlgorithmIdentifierOwned>,
    pub encap_content_info: EncapsulatedContentInfo,
    #[asn1(
        context_specific = "0",
        tag_mode = "IMPLICIT",
        constructed = "true",
        optional = "true"
    )]
    pub certificates: Option<SetOfVec<Any>>,
    #[asn1(
        context_specific = "1",
        tag_mode = "IMPLICIT",
        constructed = "true",
        optional = "true"
    )]
    pub crls: Option<SetOfVec<Any>>,
    pub signer_infos: SetOfVec<SignerInfo>,
}

impl SignedData {
    /// The DER of every plain certificate (the `certificate` CertificateChoice) carried.
    pub fn certificate_ders(&self) -> Vec<Vec<u8>> {
        self.certificates
            .iter()
            .flat_map(|set| set.iter())
            .filter(|c| c.tag() == der::Tag::Sequence)
            .filter_map(|c| c.to_der().ok())
            .collect()
    }
}

/// KeyTransRecipientInfo (RFC 5652 §6.2.1).
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct KeyTransRecipientInfo {
    pub version: CmsVersion,
    pub rid: CertificateId,
    pub key_enc_alg: AlgorithmIdentifierOwned,
    pub enc_key: OctetString,
}

/// EnvelopedData (RFC 5652 §6.1). RecipientInfos are kept as DER elements: the
/// key-transport ones are read with [`KeyTransRecipientInfo`], any other kind is skipped.
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct EnvelopedData {
    pub version: CmsVersion,
    #[asn1(
        context_specific = "0",
        tag_mode = "IMPLICIT",
        constructed = "true",
        optional = "true"
    )]
    pub originator_info: Option<OriginatorInfo>,
    pub recip_infos: SetOfVec<Any>,
    pub encrypted_content: EncryptedContentInfo,
    #[asn1(
        context_specific = "1",
        tag_mode = "IMPLICIT",
        constructed = "true",
        optional = "true"
    )]
    pub unprotected_attrs: Option<SetOfVec<Attribute>>,
}

impl EnvelopedData {
    /// The key-transport recipients, in the order they were sent.
    pub fn key_transport_recipients(&self) -> impl Iterator<Item = KeyTransRecipientInfo> + '_ {
        self.recip_infos
            .iter()
            .filter(|r| r.tag() == der::Tag::Sequence)
            .filter_map(|r| r.decode_as::<KeyTransRecipientInfo>().ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate with a 32-byte serial, as a mainstream Linux client makes its throwaway
    /// signer: RFC 5280's profile refuses it, this one reads it and writes it back unchanged.
    #[test]
    fn a_32_byte_serial_is_read_and_written_back() {
        let serial = [0x5au8; 32];
        let tbs = x509_cert::certificate::TbsCertificateInner::<Raw> {
            version: x509_cert::certificate::Version::V3,
            serial_number: SerialNumber::<Raw>::from_der(
                &der::asn1::Int::new(&serial).unwrap().to_der().unwrap(),
            )
            .unwrap(),
            signature: AlgorithmIdentifierOwned {
                oid: crate::oid::SHA256_WITH_RSA,
                parameters: None,
            },
            issuer: "CN=device".parse().unwrap(),
            validity: x509_cert::time::Validity::from_now(core::time::Duration::from_secs(60))
                .unwrap(),
            subject: "CN=device".parse().unwrap(),
            subject_public_key_info: spki::SubjectPublicKeyInfoOwned {
                algorithm: AlgorithmIdentifierOwned {
                    oid: crate::oid::RSA_ENCRYPTION,
                    parameters: Some(Any::null()),
                },
                subject_public_key: der::asn1::BitString::from_bytes(&[0]).unwrap(),
            },
            issuer_unique_id: None,
            subject_unique_id: None,
            extensions: None,
        };
        let cert = AnyCertificate {
            tbs_certificate: tbs,
            signature_algorithm: AlgorithmIdentifierOwned {
                oid: crate::oid::SHA256_WITH_RSA,
                parameters: None,
            },
            signature: der::asn1::BitString::from_bytes(&[0]).unwrap(),
        };
        let der = cert.to_der().unwrap();
        assert!(
            x509_cert::Certificate::from_der(&der).is_err(),
            "RFC 5280's profile refuses a 32-byte serial"
        );
        let read = certificate("signer certificate", &der).unwrap();
        assert_eq!(read.tbs_certificate.serial_number.as_bytes(), &serial);
        let id = CertificateId::IssuerAndSerialNumber(IssuerSerial::of(&read));
        let back = CertificateId::from_der(&id.to_der().unwrap()).unwrap();
        assert!(back.names(&read));
    }
}
