//! Building a certificate revocation list (RFC 5280 §5): the TBSCertList and its signature.
//!
//! Like [`crate::tbs`], this is encoding only: signing is a callback, so the host signs with a
//! custody key and the bytes signed are exactly the ones encoded here.

use der::asn1::Uint;
use der::Encode;
use x509_cert::certificate::Version;
use x509_cert::crl::{RevokedCert, TbsCertList};
use x509_cert::ext::pkix::{CrlNumber, CrlReason};
use x509_cert::ext::{AsExtension, Extension};
use x509_cert::name::Name;

use crate::tbs::{serial_number, time};
use crate::{signed, Error, Result, SignatureScheme};

/// One revoked certificate on the list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevokedEntry {
    /// Serial number as unsigned big-endian bytes, as in the certificate (no sign padding).
    pub serial: Vec<u8>,
    /// Seconds since the Unix epoch.
    pub revoked_at: u64,
    /// `None` for `unspecified`: RFC 5280 §5.3.1 says to leave the reason code out then.
    pub reason: Option<CrlReason>,
}

/// Everything that goes into a CRL except the signature.
#[derive(Clone, Debug)]
pub struct CrlTemplate {
    /// The CA certificate's subject.
    pub issuer: Name,
    /// Seconds since the Unix epoch.
    pub this_update: u64,
    /// Seconds since the Unix epoch; after `this_update`.
    pub next_update: u64,
    /// The cRLNumber: strictly increasing for each CA (RFC 5280 §5.2.3).
    pub number: u64,
    /// The CA's subject key identifier, so a relying party finds the key when a CA re-keys.
    pub authority_key_id: Option<Vec<u8>>,
    pub entries: Vec<RevokedEntry>,
}

impl CrlTemplate {
    /// DER of the TBSCertList for signing with `scheme`.
    pub fn tbs_der(&self, scheme: SignatureScheme) -> Result<Vec<u8>> {
        if self.next_update <= self.this_update {
            return Err(Error::Invalid(
                "the CRL's nextUpdate is not after its thisUpdate".into(),
            ));
        }
        let revoked = self
            .entries
            .iter()
            .map(|e| {
                let extensions = match e.reason {
                    Some(reason) => Some(vec![reason.to_extension(&self.issuer, &[])?]),
                    None => None,
                };
                Ok(RevokedCert {
                    serial_number: serial_number(&e.serial)?,
                    revocation_date: time(e.revoked_at)?,
                    crl_entry_extensions: extensions,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut extensions: Vec<Extension> = Vec::new();
        if let Some(id) = &self.authority_key_id {
            extensions.push(crate::extensions::authority_key_identifier(
                id,
                &self.issuer,
            )?);
        }
        let number = CrlNumber(Uint::new(&self.number.to_be_bytes())?);
        extensions.push(number.to_extension(&self.issuer, &[])?);
        let tbs = TbsCertList {
            version: Version::V2,
            signature: scheme.algorithm_identifier(),
            issuer: self.issuer.clone(),
            this_update: time(self.this_update)?,
            next_update: Some(time(self.next_update)?),
            revoked_certificates: if revoked.is_empty() {
                None
            } else {
                Some(revoked)
            },
            crl_extensions: Some(extensions),
        };
        Ok(tbs.to_der()?)
    }

    /// Builds the TBSCertList, has `sign` sign its exact bytes, and returns the CRL's DER.
    pub fn sign<E>(
        &self,
        scheme: SignatureScheme,
        sign: impl FnOnce(&[u8]) -> core::result::Result<Vec<u8>, E>,
    ) -> core::result::Result<Vec<u8>, crate::tbs::SignError<E>> {
        use crate::tbs::SignError;
        let tbs = self.tbs_der(scheme).map_err(SignError::Encode)?;
        let signature = sign(&tbs).map_err(SignError::Signer)?;
        signed::assemble(&tbs, &scheme.algorithm_identifier(), &signature)
            .map_err(SignError::Encode)
    }
}

/// Keyed by the names the API and the ledger use (`key-compromise`), which are RFC 5280's
/// reason names in kebab case.
pub fn reason_from_name(name: &str) -> Option<CrlReason> {
    Some(match name {
        "unspecified" => CrlReason::Unspecified,
        "key-compromise" => CrlReason::KeyCompromise,
        "ca-compromise" => CrlReason::CaCompromise,
        "affiliation-changed" => CrlReason::AffiliationChanged,
        "superseded" => CrlReason::Superseded,
        "cessation-of-operation" => CrlReason::CessationOfOperation,
        "certificate-hold" => CrlReason::CertificateHold,
        "privilege-withdrawn" => CrlReason::PrivilegeWithdrawn,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use der::Decode;
    use x509_cert::crl::CertificateList;

    fn template(entries: Vec<RevokedEntry>) -> CrlTemplate {
        CrlTemplate {
            issuer: crate::dn::parse("CN=Test CA").unwrap(),
            this_update: 1_700_000_000,
            next_update: 1_700_086_400,
            number: 7,
            authority_key_id: Some(vec![1; 20]),
            entries,
        }
    }

    #[test]
    fn a_crl_carries_its_number_entries_and_reasons() {
        let der = template(vec![
            RevokedEntry {
                serial: vec![0x80, 1],
                revoked_at: 1_699_999_000,
                reason: Some(CrlReason::KeyCompromise),
            },
            RevokedEntry {
                serial: vec![0, 0, 5],
                revoked_at: 1_699_999_500,
                reason: None,
            },
        ])
        .sign(SignatureScheme::EcdsaP256Sha256, |_| {
            Ok::<_, ()>(vec![0x30, 0x00])
        })
        .unwrap();
        let crl = CertificateList::from_der(&der).unwrap();
        let tbs = crl.tbs_cert_list;
        assert_eq!(tbs.version, Version::V2);
        let revoked = tbs.revoked_certificates.unwrap();
        assert_eq!(revoked[0].serial_number.as_bytes(), [0, 0x80, 1]);
        assert_eq!(revoked[1].serial_number.as_bytes(), [5]);
        let reason = &revoked[0].crl_entry_extensions.as_ref().unwrap()[0];
        assert_eq!(reason.extn_value.as_bytes(), [0x0a, 0x01, 0x01]);
        assert!(revoked[1].crl_entry_extensions.is_none());
        let exts = tbs.crl_extensions.unwrap();
        let number = exts
            .iter()
            .find(|e| e.extn_id == const_oid::db::rfc5280::ID_CE_CRL_NUMBER)
            .unwrap();
        assert_eq!(number.extn_value.as_bytes(), [0x02, 0x01, 0x07]);
    }

    #[test]
    fn a_crl_that_ends_before_it_starts_is_refused() {
        let mut t = template(vec![]);
        t.next_update = t.this_update;
        assert!(t.tbs_der(SignatureScheme::EcdsaP256Sha256).is_err());
    }

    #[test]
    fn every_api_reason_name_has_a_code() {
        for name in [
            "unspecified",
            "key-compromise",
            "ca-compromise",
            "affiliation-changed",
            "superseded",
            "cessation-of-operation",
            "certificate-hold",
            "privilege-withdrawn",
        ] {
            assert!(reason_from_name(name).is_some(), "{name}");
        }
        assert!(reason_from_name("keyCompromise").is_none());
    }
}
