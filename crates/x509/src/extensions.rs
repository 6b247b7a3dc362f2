//! Certificate extensions certconn writes and the names administrators use for them in config.

use core::str::FromStr;

use const_oid::db::rfc5912::{ID_AD_CA_ISSUERS, ID_AD_OCSP};
use const_oid::db::rfc6960::ID_PKIX_OCSP_NOCHECK;
use der::asn1::{Ia5String, ObjectIdentifier, OctetString, Utf8StringRef};
use der::{Decode, Encode};
use x509_cert::ext::pkix::crl::dp::DistributionPoint;
use x509_cert::ext::pkix::name::DistributionPointName;
use x509_cert::ext::pkix::name::{GeneralName, OtherName};
use x509_cert::ext::pkix::{
    AccessDescription, AuthorityInfoAccessSyntax, AuthorityKeyIdentifier, BasicConstraints,
    CrlDistributionPoints, ExtendedKeyUsage, KeyUsage, KeyUsages, SubjectAltName as SanExtension,
    SubjectKeyIdentifier,
};
use x509_cert::ext::{AsExtension, Extension};
use x509_cert::name::Name;

use crate::{san_syntax, Error, Result};

/// Microsoft's user principal name otherName (used by Windows logon and Intune).
pub const UPN_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.311.20.2.3");
/// PKCS#9 extensionRequest attribute, which carries requested extensions in a CSR.
pub const EXTENSION_REQUEST_OID: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.14");
const SUBJECT_ALT_NAME_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.17");

/// A subject alternative name, mirroring the WIT `subject-alt-name` variant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubjectAltName {
    Dns(String),
    Email(String),
    Upn(String),
    Uri(String),
    Ip(std::net::IpAddr),
}

impl SubjectAltName {
    /// Parses the CLI and API form `kind:value`, for example `email:alice@example.com`.
    pub fn parse(s: &str) -> Result<Self> {
        let (kind, value) = s.split_once(':').ok_or_else(|| {
            Error::Invalid(format!("subject alternative name {s:?} is not of the form kind:value (dns:, email:, upn:, uri:, ip:)"))
        })?;
        if value.is_empty() {
            return Err(Error::Invalid(format!(
                "subject alternative name {s:?} has an empty value"
            )));
        }
        let invalid =
            |why: String| Error::Invalid(format!("subject alternative name {s:?}: {why}"));
        let syntax = |check: core::result::Result<(), String>| check.map_err(invalid);
        Ok(match kind {
            "dns" => {
                syntax(san_syntax::dns_name(value, true))?;
                Self::Dns(value.to_owned())
            }
            "email" => {
                syntax(san_syntax::mailbox(value))?;
                Self::Email(value.to_owned())
            }
            "upn" => {
                syntax(san_syntax::user_principal_name(value))?;
                Self::Upn(value.to_owned())
            }
            "uri" => {
                syntax(san_syntax::uri(value))?;
                Self::Uri(value.to_owned())
            }
            "ip" => Self::Ip(
                value
                    .parse()
                    .map_err(|_| invalid(format!("{value:?} is not an IP address")))?,
            ),
            other => {
                return Err(Error::Invalid(format!(
                    "subject alternative name kind {other:?} is not one of dns, email, upn, uri, ip"
                )))
            }
        })
    }

    /// Encodes this name as an X.509 GeneralName.
    pub fn to_general_name(&self) -> Result<GeneralName> {
        let ia5 = |s: &str| {
            Ia5String::new(s)
                .map_err(|_| Error::Invalid(format!("{s:?} is not an IA5 (ASCII) string")))
        };
        Ok(match self {
            Self::Dns(d) => GeneralName::DnsName(ia5(d)?),
            Self::Email(e) => GeneralName::Rfc822Name(ia5(e)?),
            Self::Uri(u) => GeneralName::UniformResourceIdentifier(ia5(u)?),
            Self::Ip(ip) => GeneralName::from(*ip),
            Self::Upn(u) => GeneralName::OtherName(OtherName {
                type_id: UPN_OID,
                value: der::asn1::Any::encode_from(&Utf8StringRef::new(u)?)?,
            }),
        })
    }

    /// Decodes a GeneralName certconn understands; `None` for kinds it does not carry.
    pub fn from_general_name(name: &GeneralName) -> Option<Self> {
        match name {
            GeneralName::DnsName(d) => Some(Self::Dns(d.to_string())),
            GeneralName::Rfc822Name(e) => Some(Self::Email(e.to_string())),
            GeneralName::UniformResourceIdentifier(u) => Some(Self::Uri(u.to_string())),
            GeneralName::IpAddress(o) => match o.as_bytes().len() {
                4 => <[u8; 4]>::try_from(o.as_bytes())
                    .ok()
                    .map(|b| Self::Ip(b.into())),
                16 => <[u8; 16]>::try_from(o.as_bytes())
                    .ok()
                    .map(|b| Self::Ip(b.into())),
                _ => None,
            },
            GeneralName::OtherName(o) if o.type_id == UPN_OID => o
                .value
                .decode_as::<Utf8StringRef<'_>>()
                .ok()
                .map(|s| Self::Upn(s.as_str().to_owned())),
            _ => None,
        }
    }
}

impl core::fmt::Display for SubjectAltName {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Dns(v) => write!(f, "dns:{v}"),
            Self::Email(v) => write!(f, "email:{v}"),
            Self::Upn(v) => write!(f, "upn:{v}"),
            Self::Uri(v) => write!(f, "uri:{v}"),
            Self::Ip(v) => write!(f, "ip:{v}"),
        }
    }
}

/// A key usage bit, named as in RFC 5280 but in snake_case for config files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyUsageName {
    DigitalSignature,
    NonRepudiation,
    KeyEncipherment,
    DataEncipherment,
    KeyAgreement,
    KeyCertSign,
    CrlSign,
}

impl KeyUsageName {
    fn flag(self) -> KeyUsages {
        match self {
            Self::DigitalSignature => KeyUsages::DigitalSignature,
            Self::NonRepudiation => KeyUsages::NonRepudiation,
            Self::KeyEncipherment => KeyUsages::KeyEncipherment,
            Self::DataEncipherment => KeyUsages::DataEncipherment,
            Self::KeyAgreement => KeyUsages::KeyAgreement,
            Self::KeyCertSign => KeyUsages::KeyCertSign,
            Self::CrlSign => KeyUsages::CRLSign,
        }
    }
}

impl FromStr for KeyUsageName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "digital_signature" => Self::DigitalSignature,
            "non_repudiation" | "content_commitment" => Self::NonRepudiation,
            "key_encipherment" => Self::KeyEncipherment,
            "data_encipherment" => Self::DataEncipherment,
            "key_agreement" => Self::KeyAgreement,
            "key_cert_sign" => Self::KeyCertSign,
            "crl_sign" => Self::CrlSign,
            other => return Err(Error::Invalid(format!(
                "unknown key usage {other:?}; expected one of digital_signature, non_repudiation, key_encipherment, data_encipherment, key_agreement, key_cert_sign, crl_sign"
            ))),
        })
    }
}

/// An extended key usage by name, or any purpose by dotted OID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtendedKeyUsageName {
    ServerAuth,
    ClientAuth,
    EmailProtection,
    CodeSigning,
    TimeStamping,
    OcspSigning,
    /// Microsoft smart card logon.
    SmartcardLogon,
    Oid(ObjectIdentifier),
}

impl ExtendedKeyUsageName {
    /// The purpose's OID.
    pub fn oid(self) -> ObjectIdentifier {
        match self {
            Self::ServerAuth => ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.1"),
            Self::ClientAuth => ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.2"),
            Self::CodeSigning => ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.3"),
            Self::EmailProtection => ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.4"),
            Self::TimeStamping => ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.8"),
            Self::OcspSigning => ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.9"),
            Self::SmartcardLogon => ObjectIdentifier::new_unwrap("1.3.6.1.4.1.311.20.2.2"),
            Self::Oid(o) => o,
        }
    }
}

impl FromStr for ExtendedKeyUsageName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "server_auth" => Self::ServerAuth,
            "client_auth" => Self::ClientAuth,
            "email_protection" => Self::EmailProtection,
            "code_signing" => Self::CodeSigning,
            "time_stamping" => Self::TimeStamping,
            "ocsp_signing" => Self::OcspSigning,
            "smartcard_logon" => Self::SmartcardLogon,
            other => Self::Oid(crate::dotted_oid(other).ok_or_else(|| {
                Error::Invalid(format!(
                    "unknown extended key usage {other:?}; expected server_auth, client_auth, email_protection, code_signing, time_stamping, ocsp_signing, smartcard_logon or a dotted OID"
                ))
            })?),
        })
    }
}

fn extension<E: AsExtension>(value: &E, subject: &Name) -> Result<Extension> {
    Ok(value.to_extension(subject, &[])?)
}

/// `basicConstraints` (critical): a CA with an optional path length, or an end entity.
pub fn basic_constraints(ca: bool, path_len: Option<u8>, subject: &Name) -> Result<Extension> {
    extension(
        &BasicConstraints {
            ca,
            path_len_constraint: path_len,
        },
        subject,
    )
}

/// `keyUsage` (critical). Empty input is an error: a certificate without usages is a config mistake.
pub fn key_usage(usages: &[KeyUsageName], subject: &Name) -> Result<Extension> {
    let mut flags = usages.iter().map(|u| u.flag());
    let first = flags
        .next()
        .ok_or_else(|| Error::Invalid("key usage list is empty".into()))?;
    let set = flags.fold(first.into(), |acc, f| acc | f);
    extension(&KeyUsage(set), subject)
}

/// `extKeyUsage`, not critical: x509-cert marks it critical by default, which RFC 5280 allows
/// but which some S/MIME clients reject in end-entity certificates.
pub fn extended_key_usage(purposes: &[ExtendedKeyUsageName], subject: &Name) -> Result<Extension> {
    let mut ext = extension(
        &ExtendedKeyUsage(purposes.iter().map(|p| p.oid()).collect()),
        subject,
    )?;
    ext.critical = false;
    Ok(ext)
}

/// `subjectAltName`; critical when the subject is empty, as RFC 5280 requires.
pub fn subject_alt_name(names: &[SubjectAltName], subject: &Name) -> Result<Extension> {
    let general = names
        .iter()
        .map(|n| n.to_general_name())
        .collect::<Result<Vec<_>>>()?;
    extension(&SanExtension(general), subject)
}

/// `subjectKeyIdentifier` with the given identifier bytes.
pub fn subject_key_identifier(id: &[u8], subject: &Name) -> Result<Extension> {
    extension(&SubjectKeyIdentifier(OctetString::new(id)?), subject)
}

/// `authorityKeyIdentifier` carrying the issuer's key identifier.
pub fn authority_key_identifier(id: &[u8], subject: &Name) -> Result<Extension> {
    extension(
        &AuthorityKeyIdentifier {
            key_identifier: Some(OctetString::new(id)?),
            authority_cert_issuer: None,
            authority_cert_serial_number: None,
        },
        subject,
    )
}

/// `cRLDistributionPoints`: one distribution point per URL (each a full name), in order.
pub fn crl_distribution_points(urls: &[String], subject: &Name) -> Result<Extension> {
    let points = urls
        .iter()
        .map(|u| {
            Ok(DistributionPoint {
                distribution_point: Some(DistributionPointName::FullName(vec![uri(u)?])),
                reasons: None,
                crl_issuer: None,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    extension(&CrlDistributionPoints(points), subject)
}

/// `authorityInfoAccess` with OCSP responders and the URLs where the issuer's certificate is.
pub fn authority_info_access(
    ocsp: &[String],
    ca_issuers: &[String],
    subject: &Name,
) -> Result<Extension> {
    let describe = |method: ObjectIdentifier, urls: &[String]| {
        urls.iter()
            .map(move |u| {
                Ok(AccessDescription {
                    access_method: method,
                    access_location: uri(u)?,
                })
            })
            .collect::<Result<Vec<_>>>()
    };
    let mut all = describe(ID_AD_OCSP, ocsp)?;
    all.extend(describe(ID_AD_CA_ISSUERS, ca_issuers)?);
    extension(&AuthorityInfoAccessSyntax(all), subject)
}

/// `id-pkix-ocsp-nocheck` (RFC 6960 §4.2.2.2.1): a delegated OCSP responder's certificate is
/// not itself checked for revocation (it is short-lived instead).
pub fn ocsp_no_check() -> Result<Extension> {
    Ok(Extension {
        extn_id: ID_PKIX_OCSP_NOCHECK,
        critical: false,
        extn_value: OctetString::new(der::asn1::Null.to_der()?)?,
    })
}

fn uri(url: &str) -> Result<GeneralName> {
    if !(url.starts_with("http://") || url.starts_with("https://") || url.starts_with("ldap://")) {
        return Err(Error::Invalid(format!(
            "{url:?} is not an http://, https:// or ldap:// URL"
        )));
    }
    Ok(GeneralName::UniformResourceIdentifier(Ia5String::new(url)?))
}

/// The subject alternative names a CSR asks for in its extensionRequest attribute.
pub fn requested_subject_alt_names(
    csr: &x509_cert::request::CertReq,
) -> Result<Vec<SubjectAltName>> {
    let mut out = Vec::new();
    for attr in csr
        .info
        .attributes
        .iter()
        .filter(|a| a.oid == EXTENSION_REQUEST_OID)
    {
        for value in attr.values.iter() {
            let exts: Vec<Extension> = value.decode_as()?;
            out.extend(subject_alt_names_in(&exts)?);
        }
    }
    Ok(out)
}

/// The subject alternative names a certificate carries (those certconn can express), so that
/// a renewal asks for what the renewed certificate had.
pub fn subject_alt_names_of(cert: &x509_cert::Certificate) -> Result<Vec<SubjectAltName>> {
    match &cert.tbs_certificate.extensions {
        Some(exts) => subject_alt_names_in(exts),
        None => Ok(Vec::new()),
    }
}

fn subject_alt_names_in(exts: &[Extension]) -> Result<Vec<SubjectAltName>> {
    let mut out = Vec::new();
    for ext in exts.iter().filter(|e| e.extn_id == SUBJECT_ALT_NAME_OID) {
        let names = SanExtension::from_der(ext.extn_value.as_bytes())?;
        out.extend(names.0.iter().filter_map(SubjectAltName::from_general_name));
    }
    Ok(out)
}

/// The subject key identifier of a certificate, when it carries one.
pub fn subject_key_identifier_of<P: x509_cert::certificate::Profile>(
    cert: &x509_cert::certificate::CertificateInner<P>,
) -> Option<Vec<u8>> {
    const SKI_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.14");
    cert.tbs_certificate
        .extensions
        .as_ref()?
        .iter()
        .find(|e| e.extn_id == SKI_OID)
        .and_then(|e| OctetString::from_der(e.extn_value.as_bytes()).ok())
        .map(|o| o.as_bytes().to_vec())
}

/// Encodes an extension list for an extensionRequest attribute value.
pub fn encode_extension_list(exts: &[Extension]) -> Result<Vec<u8>> {
    Ok(exts.to_vec().to_der()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An EKU OID with an arc beyond 32 bits is refused (it overflowed the OID parser); a real
    /// one is kept.
    #[test]
    fn an_eku_oid_arc_beyond_32_bits_is_refused() {
        assert!("1.3.6.1.5.5.7.3.4294967296"
            .parse::<ExtendedKeyUsageName>()
            .is_err());
        assert!("99999999999999999999"
            .parse::<ExtendedKeyUsageName>()
            .is_err());
        assert!(matches!(
            "1.3.6.1.4.1.311.20.2.2".parse::<ExtendedKeyUsageName>(),
            Ok(ExtendedKeyUsageName::Oid(_))
        ));
    }

    #[test]
    fn san_text_forms_round_trip() {
        for s in [
            "dns:host.example",
            "email:a@example.com",
            "upn:a@corp.example",
            "uri:https://x.example/",
            "ip:192.0.2.1",
            "ip:2001:db8::1",
        ] {
            let san = SubjectAltName::parse(s).unwrap();
            assert_eq!(san.to_string(), s);
            let gn = san.to_general_name().unwrap();
            assert_eq!(SubjectAltName::from_general_name(&gn), Some(san));
        }
    }

    #[test]
    fn bad_san_forms_say_what_is_wrong() {
        assert!(SubjectAltName::parse("nocolon")
            .unwrap_err()
            .to_string()
            .contains("kind:value"));
        assert!(SubjectAltName::parse("fax:123")
            .unwrap_err()
            .to_string()
            .contains("fax"));
        assert!(SubjectAltName::parse("ip:not-an-ip")
            .unwrap_err()
            .to_string()
            .contains("IP"));
        assert!(SubjectAltName::parse("dns:")
            .unwrap_err()
            .to_string()
            .contains("empty"));
        // Each kind's syntax (san_syntax has the cases), named with the whole name.
        for (bad, why) in [
            ("dns:-bad-.example", "hyphen"),
            ("email:not an email", "no @"),
            ("uri:not a uri", "scheme"),
            ("upn:alice", "no @"),
        ] {
            let err = SubjectAltName::parse(bad).unwrap_err().to_string();
            assert!(
                err.contains(&format!("{bad:?}")) && err.contains(why),
                "{err}"
            );
        }
    }

    #[test]
    fn usage_names_parse_and_reject() {
        assert_eq!(
            "key_encipherment".parse::<KeyUsageName>().unwrap(),
            KeyUsageName::KeyEncipherment
        );
        assert!("keyEncipherment".parse::<KeyUsageName>().is_err());
        assert_eq!(
            "client_auth"
                .parse::<ExtendedKeyUsageName>()
                .unwrap()
                .oid()
                .to_string(),
            "1.3.6.1.5.5.7.3.2"
        );
        assert_eq!(
            "1.2.3.4"
                .parse::<ExtendedKeyUsageName>()
                .unwrap()
                .oid()
                .to_string(),
            "1.2.3.4"
        );
        assert!("clientAuthX".parse::<ExtendedKeyUsageName>().is_err());
    }
}
