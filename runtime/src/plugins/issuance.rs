//! The host's issuance policy: what a CA key may sign when a plugin asks.
//!
//! A backend granted a CA key could otherwise have custody sign any bytes with it — a
//! subordinate CA, a certificate for a key of its choosing, a hundred-year certificate. So when
//! the key a plugin signs with is a CA key (its own certificate says `cA`), the host reads the
//! message as a TBSCertificate and signs only a certificate for the job in hand: for the key the
//! job certifies, not a CA, issued by this CA, within the CA's own validity and the job's
//! validity, with no key usage or extended key usage beyond the profile's limits, and a serial
//! its issuer never used (the signature trail reserves it: `journal::trail`). Everything else
//! is refused — including any signature with a CA key outside an `issue` or `poll` call — and
//! the job fails with the reason. CRLs, OCSP answers and RA
//! certificates are signed by the host itself (`pki::ca`, `revocation`), never through a plugin.

use der::{Decode, Encode};
use x509_cert::{Certificate, TbsCertificate};

use certconn_x509::CertificateFacts;

pub use crate::custody::grant::{IssuanceScope, UsageLimits, MAX_VALIDITY_DAYS};

/// How far before "now" a certificate may start (CAs backdate a little for clock skew).
const BACKDATE_SECONDS: u64 = 2 * 86_400;

/// A certificate the policy let through: what the signature trail records of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permitted {
    /// Lowercase hex, no sign padding (as the ledger and OpenSSL write serials).
    pub serial: String,
    pub subject: String,
    pub issuer: String,
}

/// Checks that `message` is a certificate the CA `ca` may sign for this call. The error says
/// why, in words an administrator reading the job's failure can act on.
pub fn check(
    scope: Option<&IssuanceScope>,
    ca: &Certificate,
    message: &[u8],
    now: u64,
) -> Result<Permitted, String> {
    let scope = scope.ok_or(
        "a CA key signs only a certificate for the job in hand, and this call is not issuing one",
    )?;
    let tbs = TbsCertificate::from_der(message)
        .map_err(|e| format!("the message is not a TBSCertificate ({e})"))?;
    let facts = CertificateFacts::of_tbs(&tbs)
        .map_err(|e| format!("the certificate's extensions do not decode ({e})"))?;
    if facts.is_ca {
        return Err("it is a CA certificate (basicConstraints cA = true)".into());
    }
    let key = tbs
        .subject_public_key_info
        .to_der()
        .map_err(|e| format!("its public key does not encode ({e})"))?;
    if key != scope.certified_key {
        return Err("it is for a key that is not the one this job certifies".into());
    }
    if tbs.issuer != ca.tbs_certificate.subject {
        return Err(format!(
            "its issuer {} is not the CA's subject {}",
            tbs.issuer, ca.tbs_certificate.subject
        ));
    }
    let ca_until = ca
        .tbs_certificate
        .validity
        .not_after
        .to_unix_duration()
        .as_secs();
    if facts.not_after > ca_until {
        return Err(format!(
            "it is valid beyond the CA certificate itself (until {}, the CA until {})",
            tbs.validity.not_after, ca.tbs_certificate.validity.not_after
        ));
    }
    if facts.not_before + BACKDATE_SECONDS < now {
        return Err(format!(
            "it starts at {}, more than two days in the past",
            tbs.validity.not_before
        ));
    }
    let allowed = u64::from(scope.max_validity_days) * 86_400 + BACKDATE_SECONDS;
    if facts.not_after.saturating_sub(now) > allowed {
        return Err(format!(
            "it is valid for {} days, more than the {} this job allows",
            facts.not_after.saturating_sub(now) / 86_400,
            scope.max_validity_days
        ));
    }
    check_usage(&scope.usage, &facts)?;
    Ok(Permitted {
        serial: crate::pki::issued::serial_hex(tbs.serial_number.as_bytes()),
        subject: crate::pki::dn::format(&tbs.subject),
        issuer: crate::pki::dn::format(&tbs.issuer),
    })
}

/// Key usage and extended key usage within `limits`. An absent extension restricts nothing in
/// the certificate, and is accepted: an OCSP responder, the purpose that matters most here,
/// needs its EKU present, and `key_cert_sign` needs `cA`, which is refused above.
fn check_usage(limits: &UsageLimits, facts: &CertificateFacts) -> Result<(), String> {
    if let Some(used) = &facts.key_usage {
        if let Some(bit) = used.iter().find(|u| !limits.key_usage.contains(u)) {
            return Err(format!(
                "its key usage {bit:?} is not one the profile allows (allowed_key_usage)"
            ));
        }
    }
    if let Some(purposes) = &facts.extended_key_usage {
        if let Some(oid) = purposes
            .iter()
            .find(|p| !limits.extended_key_usage.contains(p))
        {
            return Err(format!(
                "its extended key usage {oid} is not one the profile allows (allowed_extended_key_usage)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use certconn_x509::extensions::{ExtendedKeyUsageName, KeyUsageName};
    use certconn_x509::{extensions, CertificateTemplate, SignatureScheme};
    use x509_cert::name::Name;

    use super::*;
    use crate::custody::{KeyAlgorithm, PrivateKey};

    struct Case {
        ca_key: PrivateKey,
        ca: Certificate,
        device: Vec<u8>,
        now: u64,
    }

    fn case() -> Case {
        let ca_key = PrivateKey::generate(KeyAlgorithm::EcP256).unwrap();
        let der = crate::pki::ca::self_signed(&ca_key, &Name::from_str("CN=Test CA").unwrap(), 365)
            .unwrap();
        let device = PrivateKey::generate(KeyAlgorithm::EcP256).unwrap();
        Case {
            ca: Certificate::from_der(&der).unwrap(),
            ca_key,
            device: device.public_key_der().to_vec(),
            now: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
        }
    }

    /// A TBSCertificate as a plugin would make it, changed by `edit`.
    fn tbs(c: &Case, edit: impl FnOnce(&mut CertificateTemplate)) -> Vec<u8> {
        let subject = Name::from_str("CN=device").unwrap();
        let mut t = CertificateTemplate {
            serial: vec![1, 2, 3],
            issuer: c.ca.tbs_certificate.subject.clone(),
            subject: subject.clone(),
            not_before: c.now - 60,
            not_after: c.now + 30 * 86_400,
            public_key: spki::SubjectPublicKeyInfoOwned::from_der(&c.device).unwrap(),
            extensions: vec![extensions::basic_constraints(false, None, &subject).unwrap()],
        };
        edit(&mut t);
        let mut out = None;
        t.sign(SignatureScheme::EcdsaP256Sha256, |m| {
            out = Some(m.to_vec());
            c.ca_key.sign(SignatureScheme::EcdsaP256Sha256, m)
        })
        .unwrap();
        out.unwrap()
    }

    fn scope(c: &Case) -> IssuanceScope {
        IssuanceScope {
            certified_key: c.device.clone(),
            max_validity_days: 30,
            usage: UsageLimits::default(),
        }
    }

    #[test]
    fn a_ca_key_signs_only_the_jobs_certificate() {
        let c = case();
        let s = scope(&c);
        let permitted =
            check(Some(&s), &c.ca, &tbs(&c, |_| {}), c.now).expect("the job's own certificate");
        assert_eq!(
            (permitted.serial.as_str(), permitted.subject.as_str()),
            ("010203", "CN=device")
        );

        let refused = |message: Vec<u8>, scope: Option<&IssuanceScope>, why: &str| {
            let e = check(scope, &c.ca, &message, c.now).unwrap_err();
            assert!(e.contains(why), "{why}: {e}");
        };
        refused(tbs(&c, |_| {}), None, "not issuing one");
        refused(b"raw bytes".to_vec(), Some(&s), "not a TBSCertificate");
        let subject = Name::from_str("CN=device").unwrap();
        refused(
            tbs(&c, |t| {
                t.extensions = vec![extensions::basic_constraints(true, None, &subject).unwrap()]
            }),
            Some(&s),
            "CA certificate",
        );
        let other = PrivateKey::generate(KeyAlgorithm::EcP256).unwrap();
        refused(
            tbs(&c, |t| {
                t.public_key =
                    spki::SubjectPublicKeyInfoOwned::from_der(other.public_key_der()).unwrap()
            }),
            Some(&s),
            "not the one this job certifies",
        );
        refused(
            tbs(&c, |t| t.not_after = c.now + 100 * 365 * 86_400),
            Some(&s),
            "beyond the CA certificate",
        );
        refused(
            tbs(&c, |t| t.not_after = c.now + 90 * 86_400),
            Some(&s),
            "more than the 30 this job allows",
        );
        refused(
            tbs(&c, |t| t.not_before = c.now - 30 * 86_400),
            Some(&s),
            "in the past",
        );
        refused(
            tbs(&c, |t| t.issuer = Name::from_str("CN=Another CA").unwrap()),
            Some(&s),
            "not the CA's subject",
        );
        let with = |ku: &[KeyUsageName], eku: &[ExtendedKeyUsageName]| {
            let (ku, eku, subject) = (ku.to_vec(), eku.to_vec(), subject.clone());
            tbs(&c, move |t| {
                t.extensions
                    .push(extensions::key_usage(&ku, &subject).unwrap());
                t.extensions
                    .push(extensions::extended_key_usage(&eku, &subject).unwrap());
            })
        };
        check(
            Some(&s),
            &c.ca,
            &with(
                &[KeyUsageName::DigitalSignature],
                &[ExtendedKeyUsageName::ClientAuth],
            ),
            c.now,
        )
        .expect("client authentication is a default purpose");
        refused(
            with(
                &[KeyUsageName::DigitalSignature],
                &[ExtendedKeyUsageName::OcspSigning],
            ),
            Some(&s),
            "extended key usage 1.3.6.1.5.5.7.3.9 is not one the profile allows",
        );
        refused(
            with(
                &[KeyUsageName::DigitalSignature, KeyUsageName::KeyCertSign],
                &[ExtendedKeyUsageName::ClientAuth],
            ),
            Some(&s),
            "key usage KeyCertSign",
        );
        // A profile that allows code signing lets it through, and only it.
        let signing = IssuanceScope {
            usage: UsageLimits::parse(None, Some(&["code_signing".to_owned()])).unwrap(),
            ..s.clone()
        };
        check(
            Some(&signing),
            &c.ca,
            &with(
                &[KeyUsageName::DigitalSignature],
                &[ExtendedKeyUsageName::CodeSigning],
            ),
            c.now,
        )
        .expect("the profile allows code signing");
        refused(
            with(
                &[KeyUsageName::DigitalSignature],
                &[ExtendedKeyUsageName::ClientAuth],
            ),
            Some(&signing),
            "1.3.6.1.5.5.7.3.2 is not one the profile allows",
        );
    }

    #[test]
    fn a_profile_cannot_allow_a_cas_key_usage() {
        let e = UsageLimits::parse(Some(&["key_cert_sign".to_owned()]), None).unwrap_err();
        assert!(e.contains("CA's key usage"), "{e}");
        let e = UsageLimits::parse(None, Some(&["nonsense".to_owned()])).unwrap_err();
        assert!(e.contains("unknown extended key usage"), "{e}");
    }

    #[test]
    fn only_a_key_whose_certificate_is_a_ca_is_a_ca_key() {
        let c = case();
        let key = |chain| {
            crate::custody::StoredKey::new(
                "k".into(),
                PrivateKey::generate(KeyAlgorithm::EcP256).unwrap(),
                chain,
            )
        };
        let ca = key(vec![c.ca.to_der().unwrap()]);
        assert_eq!(ca.ca_certificate(), Some(&c.ca));
        // Parsed once: the second answer is the same certificate.
        assert!(std::ptr::eq(
            ca.ca_certificate().unwrap(),
            ca.ca_certificate().unwrap()
        ));
        assert!(key(Vec::new()).ca_certificate().is_none());
        let leaf = crate::pki::ca::ra_certificate(
            &PrivateKey::generate(KeyAlgorithm::EcP256).unwrap(),
            &Name::from_str("CN=leaf").unwrap(),
            None,
            1,
        )
        .unwrap();
        assert!(key(vec![leaf]).ca_certificate().is_none());
    }
}
