//! OCSP (RFC 6960) messages: reading a request and writing a signed response. What the answer
//! says (good, revoked, unknown) is the caller's; this module only matches the request's
//! CertIDs against one CA and encodes and signs the BasicOCSPResponse.

use std::time::{Duration, UNIX_EPOCH};

use const_oid::db::rfc5912::{ID_SHA_1, ID_SHA_256, ID_SHA_384, ID_SHA_512};
use der::asn1::{BitString, GeneralizedTime, OctetString};
use der::{Decode, Encode};
use x509_cert::ext::pkix::CrlReason;
use x509_cert::ext::Extension;
use x509_cert::Certificate;
use x509_ocsp::{
    BasicOcspResponse, CertId, CertStatus, OcspGeneralizedTime, OcspRequest, OcspResponse,
    ResponderId, ResponseData, RevokedInfo, SingleResponse, Version,
};

use super::PkiError;
use crate::crypto::provider::{self, Digest};
use crate::custody::PrivateKey;

/// At most this many certificates in one request: a relying party asks about one or a few.
pub const MAX_REQUESTS: usize = 16;

/// The CA an OCSP responder answers for, as CertIDs name it.
#[derive(Debug, Clone)]
pub struct Issuer {
    /// DER of the CA certificate's subject Name.
    pub name_der: Vec<u8>,
    /// The CA's subjectPublicKey BIT STRING contents.
    pub public_key: Vec<u8>,
}

impl Issuer {
    /// The issuer of certificates signed by `ca`.
    pub fn of(ca: &Certificate) -> Result<Self, PkiError> {
        Ok(Self {
            name_der: ca
                .tbs_certificate
                .subject
                .to_der()
                .map_err(PkiError::der("CA subject"))?,
            public_key: ca
                .tbs_certificate
                .subject_public_key_info
                .subject_public_key
                .raw_bytes()
                .to_vec(),
        })
    }

    /// True when `id` names this CA (by the hash algorithm it chose).
    fn issued(&self, id: &CertId) -> bool {
        let Some(digest) = digest_of(&id.hash_algorithm.oid) else {
            return false;
        };
        provider::digest(digest, &self.name_der) == id.issuer_name_hash.as_bytes()
            && provider::digest(digest, &self.public_key) == id.issuer_key_hash.as_bytes()
    }
}

fn digest_of(oid: &der::asn1::ObjectIdentifier) -> Option<Digest> {
    Some(match *oid {
        ID_SHA_1 => Digest::Sha1,
        ID_SHA_256 => Digest::Sha256,
        ID_SHA_384 => Digest::Sha384,
        ID_SHA_512 => Digest::Sha512,
        _ => return None,
    })
}

/// A request, read: the certificates it asks about and its nonce.
#[derive(Debug)]
pub struct Query {
    pub ids: Vec<CertId>,
    pub nonce: Option<Vec<u8>>,
}

/// Why a request is answered without a signed response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not DER, no requests, too many, or a nonce that is not an OCTET STRING of 1–32 bytes.
    Malformed,
    /// A CertID names a CA this responder does not answer for.
    Unauthorized,
}

impl Refusal {
    /// The unsigned OCSPResponse that says so.
    pub fn response_der(self) -> Vec<u8> {
        let r = match self {
            Refusal::Malformed => OcspResponse::malformed_request(),
            Refusal::Unauthorized => OcspResponse::unauthorized(),
        };
        // Two fixed, tiny structures: encoding cannot fail.
        r.to_der().unwrap_or_default()
    }
}

/// Reads an OCSPRequest and checks that every CertID names `issuer`.
pub fn read_request(der_bytes: &[u8], issuer: &Issuer) -> Result<Query, Refusal> {
    let req = OcspRequest::from_der(der_bytes).map_err(|_| Refusal::Malformed)?;
    let list = &req.tbs_request.request_list;
    if list.is_empty() || list.len() > MAX_REQUESTS {
        return Err(Refusal::Malformed);
    }
    let nonce = match req
        .tbs_request
        .request_extensions
        .as_ref()
        .and_then(|exts| {
            exts.iter()
                .find(|e| e.extn_id == const_oid::db::rfc6960::ID_PKIX_OCSP_NONCE)
        }) {
        None => None,
        // RFC 8954: an OCTET STRING of 1 to 32 bytes inside the extension's value.
        Some(ext) => match OctetString::from_der(ext.extn_value.as_bytes()) {
            Ok(n) if (1..=32).contains(&n.as_bytes().len()) => Some(n.as_bytes().to_vec()),
            _ => return Err(Refusal::Malformed),
        },
    };
    let ids: Vec<CertId> = list.iter().map(|r| r.req_cert.clone()).collect();
    if ids.iter().any(|id| !issuer.issued(id)) {
        return Err(Refusal::Unauthorized);
    }
    Ok(Query { ids, nonce })
}

/// What the responder says of one certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Good,
    /// Revoked at (seconds since the epoch), for a reason (`None`: unspecified, left out).
    Revoked(u64, Option<CrlReason>),
    Unknown,
}

/// The signer of responses: the CA itself, or a delegated responder with its certificate.
pub struct Signer<'a> {
    pub key: &'a PrivateKey,
    /// The responder certificate to include (delegated), or none (the CA signs).
    pub certificate: Option<&'a [u8]>,
}

/// One answer: the certificate asked about and its status.
pub struct Answer {
    pub id: CertId,
    pub status: Status,
}

/// Encodes and signs a successful OCSPResponse. `this_update`/`next_update` are the CRL's
/// (seconds since the epoch): a response is as fresh as the list it agrees with.
pub fn respond(
    answers: Vec<Answer>,
    nonce: Option<&[u8]>,
    this_update: u64,
    next_update: u64,
    produced_at: u64,
    signer: &Signer<'_>,
) -> Result<Vec<u8>, PkiError> {
    let key_hash = provider::digest(Digest::Sha1, &public_key_bits(signer.key)?);
    let responses = answers
        .into_iter()
        .map(|a| {
            Ok(SingleResponse {
                cert_id: a.id,
                cert_status: match a.status {
                    Status::Good => CertStatus::good(),
                    Status::Unknown => CertStatus::unknown(),
                    Status::Revoked(at, reason) => CertStatus::revoked(RevokedInfo {
                        revocation_time: time(at)?,
                        revocation_reason: reason,
                    }),
                },
                this_update: time(this_update)?,
                next_update: Some(time(next_update)?),
                single_extensions: None,
            })
        })
        .collect::<Result<Vec<_>, PkiError>>()?;
    let response_extensions = match nonce {
        None => None,
        Some(n) => Some(vec![Extension {
            extn_id: const_oid::db::rfc6960::ID_PKIX_OCSP_NONCE,
            critical: false,
            extn_value: OctetString::new(
                OctetString::new(n)
                    .and_then(|o| o.to_der())
                    .map_err(PkiError::der("nonce"))?,
            )
            .map_err(PkiError::der("nonce"))?,
        }]),
    };
    let data = ResponseData {
        version: Version::V1,
        responder_id: ResponderId::ByKey(
            OctetString::new(key_hash).map_err(PkiError::der("responder id"))?,
        ),
        produced_at: time(produced_at)?,
        responses,
        response_extensions,
    };
    let tbs = data.to_der().map_err(PkiError::der("OCSP ResponseData"))?;
    let scheme = signer.key.kind().default_signature_scheme();
    let signature = signer.key.sign(scheme, &tbs)?;
    let certs = match signer.certificate {
        Some(der) => Some(vec![
            Certificate::from_der(der).map_err(PkiError::der("responder certificate"))?
        ]),
        None => None,
    };
    let basic = BasicOcspResponse {
        tbs_response_data: data,
        signature_algorithm: scheme.algorithm_identifier(),
        signature: BitString::from_bytes(&signature).map_err(PkiError::der("signature"))?,
        certs,
    };
    OcspResponse::successful(basic)
        .and_then(|r| r.to_der())
        .map_err(PkiError::der("OCSPResponse"))
}

fn public_key_bits(key: &PrivateKey) -> Result<Vec<u8>, PkiError> {
    let spki = spki::SubjectPublicKeyInfoOwned::from_der(key.public_key_der())
        .map_err(PkiError::der("public key"))?;
    Ok(spki.subject_public_key.raw_bytes().to_vec())
}

fn time(unix: u64) -> Result<OcspGeneralizedTime, PkiError> {
    GeneralizedTime::from_system_time(UNIX_EPOCH + Duration::from_secs(unix))
        .map(OcspGeneralizedTime)
        .map_err(PkiError::der("time"))
}

/// The serial a CertID asks about, as the ledger keys it.
pub fn serial_of(id: &CertId) -> String {
    super::issued::serial_hex(id.serial_number.as_bytes())
}
