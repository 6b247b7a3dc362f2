//! Certificate bags: the degenerate certs-only SignedData (GetCACert, the CertRep content) and
//! the choice of CA and RA certificates a GetCACert answer implies.

use certconn_x509::{CertificateFacts, KeyUsageName};
use cms::content_info::ContentInfo;
use der::{Decode, Encode};
use x509_cert::Certificate;

use crate::{oid, tlv, Error, Result};

/// A degenerate SignedData (no signers, no content) carrying `certs`. DER ContentInfo.
///
/// Written by hand rather than through the typed encoder because the order matters: clients
/// take the first certificate of a CertRep as theirs (micromdm's scepclient does), and a DER
/// SET OF encoder would sort them.
pub fn certs_only(certs: &[Vec<u8>]) -> Result<Vec<u8>> {
    let mut bag = Vec::new();
    for der in certs {
        Certificate::from_der(der).map_err(Error::malformed("certificate"))?;
        bag.extend_from_slice(der);
    }
    let data_oid = oid::DATA.to_der().map_err(Error::malformed("OID"))?;
    let signed_oid = oid::SIGNED_DATA.to_der().map_err(Error::malformed("OID"))?;
    let mut signed = vec![0x02, 0x01, 0x01, 0x31, 0x00];
    signed.extend(tlv::encode(0x30, &data_oid));
    signed.extend(tlv::encode(0xa0, &bag));
    signed.extend([0x31, 0x00]);
    let mut info = signed_oid;
    info.extend(tlv::encode(0xa0, &tlv::encode(0x30, &signed)));
    Ok(tlv::encode(0x30, &info))
}

/// A degenerate SignedData carrying one CRL and no certificates: the content of a CertRep
/// answering GetCRL (RFC 8894 §3.3.4). DER ContentInfo.
pub fn crl_only(crl: &[u8]) -> Result<Vec<u8>> {
    x509_cert::crl::CertificateList::from_der(crl).map_err(Error::malformed("CRL"))?;
    let data_oid = oid::DATA.to_der().map_err(Error::malformed("OID"))?;
    let signed_oid = oid::SIGNED_DATA.to_der().map_err(Error::malformed("OID"))?;
    let mut signed = vec![0x02, 0x01, 0x01, 0x31, 0x00];
    signed.extend(tlv::encode(0x30, &data_oid));
    signed.extend(tlv::encode(0xa1, crl));
    signed.extend([0x31, 0x00]);
    let mut info = signed_oid;
    info.extend(tlv::encode(0xa0, &tlv::encode(0x30, &signed)));
    Ok(tlv::encode(0x30, &info))
}

/// The certificates of a certs-only SignedData (BER accepted), DER each, in the order sent.
pub fn parse_certs_only(bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
    let der = certconn_x509::ber::to_der(bytes)
        .map_err(|e| Error::invalid("certificate bag", e.to_string()))?;
    let info = ContentInfo::from_der(&der).map_err(Error::malformed("certificate bag"))?;
    if info.content_type != oid::SIGNED_DATA {
        return Err(Error::invalid(
            "certificate bag",
            format!("content type {} is not signedData", info.content_type),
        ));
    }
    // The certificates are read from the raw SET so their order (leaf first, as servers send
    // it) survives; the typed decoder would sort them.
    let signed = tlv::children(info.content.value())?;
    let mut out = Vec::new();
    for child in signed.iter().filter(|c| c.tag == 0xa0) {
        for cert in tlv::children(child.content)? {
            if cert.tag == 0x30 {
                Certificate::from_der(cert.whole)
                    .map_err(Error::malformed("certificate in bag"))?;
                out.push(cert.whole.to_vec());
            }
        }
    }
    Ok(out)
}

/// The certificates a GetCACert answer gave, sorted by role.
#[derive(Debug, Clone)]
pub struct CaCertificates {
    /// The issuing CA.
    pub ca: Vec<u8>,
    /// The certificate requests are encrypted to: an RA with keyEncipherment, else the CA.
    pub encryption: Vec<u8>,
    /// The certificate replies are signed with: an RA with digitalSignature, else the CA.
    pub signing: Vec<u8>,
    /// Every certificate received, DER.
    pub all: Vec<Vec<u8>>,
}

impl CaCertificates {
    /// Reads a GetCACert body: one DER certificate (`application/x-x509-ca-cert`) or a
    /// certs-only SignedData (`application/x-x509-ca-ra-cert`). The content type is a hint only:
    /// some servers label one as the other.
    pub fn from_response(body: &[u8]) -> Result<Self> {
        let all = match Certificate::from_der(body) {
            Ok(_) => vec![body.to_vec()],
            Err(_) => parse_certs_only(body)?,
        };
        Self::from_certificates(all)
    }

    /// Sorts certificates by role. The CA is the certificate with cA = true that issued the
    /// others (or the only one); RAs are the rest, chosen by key usage.
    pub fn from_certificates(all: Vec<Vec<u8>>) -> Result<Self> {
        if all.is_empty() {
            return Err(Error::invalid("GetCACert answer", "no certificates"));
        }
        let mut parsed = Vec::new();
        for der in &all {
            let cert = Certificate::from_der(der).map_err(Error::malformed("CA certificate"))?;
            let facts = CertificateFacts::of(&cert)
                .map_err(|e| Error::invalid("CA certificate", e.to_string()))?;
            parsed.push((der.clone(), cert, facts));
        }
        if parsed.len() == 1 {
            let only = parsed[0].0.clone();
            return Ok(Self {
                ca: only.clone(),
                encryption: only.clone(),
                signing: only,
                all,
            });
        }
        let ras: Vec<_> = parsed.iter().filter(|(_, _, f)| !f.is_ca).collect();
        // The CA: the CA certificate that issued an RA, else the first CA certificate.
        let cas: Vec<_> = parsed.iter().filter(|(_, _, f)| f.is_ca).collect();
        let ca = cas
            .iter()
            .find(|(_, c, _)| {
                ras.iter()
                    .any(|(_, r, _)| r.tbs_certificate.issuer == c.tbs_certificate.subject)
            })
            .or_else(|| cas.first())
            .ok_or_else(|| {
                Error::invalid(
                    "GetCACert answer",
                    "no certificate is a CA (basicConstraints cA)",
                )
            })?;
        let with_usage = |usage: KeyUsageName| {
            ras.iter()
                .find(|(_, _, f)| f.key_usage.as_ref().is_some_and(|ku| ku.contains(&usage)))
                .or_else(|| ras.iter().find(|(_, _, f)| f.key_usage.is_none()))
                .map(|(d, _, _)| d.clone())
        };
        let encryption = with_usage(KeyUsageName::KeyEncipherment)
            .or_else(|| with_usage(KeyUsageName::DataEncipherment))
            .unwrap_or_else(|| ca.0.clone());
        let signing = with_usage(KeyUsageName::DigitalSignature).unwrap_or_else(|| ca.0.clone());
        Ok(Self {
            ca: ca.0.clone(),
            encryption,
            signing,
            all,
        })
    }
}
