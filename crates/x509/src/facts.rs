//! What a certificate says about itself, decoded once: names, usages, CA flag, validity.
//!
//! Policy code (the `pfx-import` plugin deciding whether a PFX fits its user and purpose, the
//! host describing a certificate) reads these facts instead of walking extensions itself.

use der::asn1::{Ia5StringRef, ObjectIdentifier, PrintableStringRef, Utf8StringRef};
use der::Decode;
use x509_cert::ext::pkix::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages, SubjectAltName as SanExtension,
};
use x509_cert::Certificate;

use crate::extensions::KeyUsageName;
use crate::{Result, SubjectAltName};

const SAN_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.17");
const KEY_USAGE_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.15");
const EKU_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37");
const BASIC_CONSTRAINTS_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");
/// PKCS#9 emailAddress in a subject name (older S/MIME certificates put the address there).
const EMAIL_ADDRESS_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.1");

/// The decoded facts of one certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateFacts {
    /// Subject alternative names certconn understands (dns, email, upn, uri, ip).
    pub subject_alt_names: Vec<SubjectAltName>,
    /// emailAddress attributes of the subject name.
    pub subject_emails: Vec<String>,
    /// The key usage bits, or `None` when the extension is absent (any usage allowed).
    pub key_usage: Option<Vec<KeyUsageName>>,
    /// The extended key usage OIDs, or `None` when the extension is absent.
    pub extended_key_usage: Option<Vec<ObjectIdentifier>>,
    /// basicConstraints cA.
    pub is_ca: bool,
    /// Validity, in seconds since the Unix epoch.
    pub not_before: u64,
    pub not_after: u64,
}

/// A DER certificate's validity (notBefore, notAfter), in seconds since the Unix epoch, without
/// decoding its extensions: for code that only watches when certificates expire.
pub fn validity_of(der: &[u8]) -> Result<(u64, u64)> {
    let cert = Certificate::from_der(der)?;
    let v = &cert.tbs_certificate.validity;
    Ok((
        v.not_before.to_unix_duration().as_secs(),
        v.not_after.to_unix_duration().as_secs(),
    ))
}

impl CertificateFacts {
    /// Decodes the facts of `cert`. A malformed extension is an error, not an absent one.
    pub fn of(cert: &Certificate) -> Result<Self> {
        Self::of_tbs(&cert.tbs_certificate)
    }

    /// The facts of a certificate not yet signed (what a CA key is asked to sign).
    pub fn of_tbs(tbs: &x509_cert::TbsCertificate) -> Result<Self> {
        let mut facts = Self {
            subject_alt_names: Vec::new(),
            subject_emails: Vec::new(),
            key_usage: None,
            extended_key_usage: None,
            is_ca: false,
            not_before: tbs.validity.not_before.to_unix_duration().as_secs(),
            not_after: tbs.validity.not_after.to_unix_duration().as_secs(),
        };
        for rdn in tbs.subject.0.iter() {
            for atv in rdn.0.iter().filter(|a| a.oid == EMAIL_ADDRESS_OID) {
                let text = atv
                    .value
                    .decode_as::<Ia5StringRef<'_>>()
                    .map(|s| s.as_str().to_owned())
                    .or_else(|_| {
                        atv.value
                            .decode_as::<Utf8StringRef<'_>>()
                            .map(|s| s.as_str().to_owned())
                    })
                    .or_else(|_| {
                        atv.value
                            .decode_as::<PrintableStringRef<'_>>()
                            .map(|s| s.as_str().to_owned())
                    })?;
                facts.subject_emails.push(text);
            }
        }
        for ext in tbs.extensions.iter().flatten() {
            let value = ext.extn_value.as_bytes();
            match ext.extn_id {
                SAN_OID => {
                    let names = SanExtension::from_der(value)?;
                    facts
                        .subject_alt_names
                        .extend(names.0.iter().filter_map(SubjectAltName::from_general_name));
                }
                KEY_USAGE_OID => {
                    let ku = KeyUsage::from_der(value)?;
                    let all = [
                        (KeyUsages::DigitalSignature, KeyUsageName::DigitalSignature),
                        (KeyUsages::NonRepudiation, KeyUsageName::NonRepudiation),
                        (KeyUsages::KeyEncipherment, KeyUsageName::KeyEncipherment),
                        (KeyUsages::DataEncipherment, KeyUsageName::DataEncipherment),
                        (KeyUsages::KeyAgreement, KeyUsageName::KeyAgreement),
                        (KeyUsages::KeyCertSign, KeyUsageName::KeyCertSign),
                        (KeyUsages::CRLSign, KeyUsageName::CrlSign),
                    ];
                    facts.key_usage = Some(
                        all.iter()
                            .filter(|(flag, _)| ku.0.contains(*flag))
                            .map(|(_, name)| *name)
                            .collect(),
                    );
                }
                EKU_OID => {
                    facts.extended_key_usage = Some(ExtendedKeyUsage::from_der(value)?.0);
                }
                BASIC_CONSTRAINTS_OID => {
                    facts.is_ca = BasicConstraints::from_der(value)?.ca;
                }
                _ => {}
            }
        }
        Ok(facts)
    }

    /// True when the key usage allows `usage` (an absent extension allows everything).
    pub fn allows(&self, usage: KeyUsageName) -> bool {
        self.key_usage.as_ref().is_none_or(|k| k.contains(&usage))
    }

    /// Every address-like name of the certificate, lower-cased, each once, in the order first
    /// met: email and UPN SANs, then subject emailAddress attributes (a certificate often
    /// carries the same address in both).
    pub fn addresses(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let names = self
            .subject_alt_names
            .iter()
            .filter_map(|n| match n {
                SubjectAltName::Email(e) | SubjectAltName::Upn(e) => Some(e.to_ascii_lowercase()),
                _ => None,
            })
            .chain(self.subject_emails.iter().map(|e| e.to_ascii_lowercase()));
        for name in names {
            if !out.contains(&name) {
                out.push(name);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extensions;
    use crate::{CertificateTemplate, ExtendedKeyUsageName, SignatureScheme};
    use core::str::FromStr;
    use x509_cert::name::Name;

    fn certificate(
        subject: &str,
        exts: impl FnOnce(&Name) -> Vec<x509_cert::ext::Extension>,
    ) -> Certificate {
        let subject = Name::from_str(subject).unwrap();
        let mut point = vec![4u8];
        point.extend([7u8; 64]);
        let template = CertificateTemplate {
            serial: vec![1],
            issuer: subject.clone(),
            subject: subject.clone(),
            not_before: 1_700_000_000,
            not_after: 1_800_000_000,
            public_key: spki::SubjectPublicKeyInfoOwned {
                algorithm: spki::AlgorithmIdentifierOwned {
                    oid: ObjectIdentifier::new_unwrap("1.2.840.10045.2.1"),
                    parameters: Some(der::asn1::Any::from(ObjectIdentifier::new_unwrap(
                        "1.2.840.10045.3.1.7",
                    ))),
                },
                subject_public_key: der::asn1::BitString::from_bytes(&point).unwrap(),
            },
            extensions: exts(&subject),
        };
        let der = template
            .sign(SignatureScheme::EcdsaP256Sha256, |_| {
                Ok::<_, ()>(vec![0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01])
            })
            .unwrap();
        Certificate::from_der(&der).unwrap()
    }

    #[test]
    fn reads_names_usages_and_validity() {
        let cert = certificate("CN=Alice,emailAddress=Old@Example.com", |s| {
            vec![
                extensions::key_usage(&[KeyUsageName::KeyEncipherment], s).unwrap(),
                extensions::extended_key_usage(&[ExtendedKeyUsageName::EmailProtection], s)
                    .unwrap(),
                extensions::subject_alt_name(
                    &[
                        SubjectAltName::Email("alice@example.com".into()),
                        SubjectAltName::Upn("Alice@Corp.Example".into()),
                    ],
                    s,
                )
                .unwrap(),
            ]
        });
        let f = CertificateFacts::of(&cert).unwrap();
        assert!(f.allows(KeyUsageName::KeyEncipherment));
        assert!(!f.allows(KeyUsageName::DigitalSignature));
        assert_eq!(
            f.extended_key_usage,
            Some(vec![ExtendedKeyUsageName::EmailProtection.oid()])
        );
        assert_eq!(
            f.addresses(),
            ["alice@example.com", "alice@corp.example", "old@example.com"]
        );
        assert!(!f.is_ca);
        assert_eq!((f.not_before, f.not_after), (1_700_000_000, 1_800_000_000));
    }

    #[test]
    fn an_address_in_both_the_san_and_the_subject_is_named_once() {
        let cert = certificate("CN=Carol,emailAddress=Carol@Example.com", |s| {
            vec![extensions::subject_alt_name(
                &[SubjectAltName::Email("carol@example.com".into())],
                s,
            )
            .unwrap()]
        });
        assert_eq!(
            CertificateFacts::of(&cert).unwrap().addresses(),
            ["carol@example.com"]
        );
    }

    #[test]
    fn absent_extensions_mean_no_restriction() {
        let f = CertificateFacts::of(&certificate("CN=Bob", |_| Vec::new())).unwrap();
        assert_eq!(
            (f.key_usage.clone(), f.extended_key_usage.clone()),
            (None, None)
        );
        assert!(f.allows(KeyUsageName::DigitalSignature));
        assert!(f.addresses().is_empty());
    }
}
