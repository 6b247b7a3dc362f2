//! X.509 encoding shared by the certconn host and its plugins.
//!
//! Both sides build certificates — the host the local CA's self-signed root and its CSRs, the
//! `local-ca` plugin end-entity certificates — and both must agree on algorithm identifiers and
//! extension encodings. This crate holds that one piece of knowledge. It performs no cryptography:
//! signing is a callback, so the host can use its provider and a plugin its host's custody.

#![forbid(unsafe_code)]

pub mod algorithm;
pub mod ber;
pub mod crl;
pub mod dn;
pub mod extensions;
pub mod facts;
pub mod key;
pub mod pem;
mod san_syntax;
pub mod signed;
pub mod tbs;

pub use der;
pub use spki;
pub use x509_cert;

pub use algorithm::SignatureScheme;
pub use extensions::{ExtendedKeyUsageName, KeyUsageName, SubjectAltName};
pub use facts::{validity_of, CertificateFacts};
pub use key::PublicKeyKind;
pub use signed::SignedParts;
pub use tbs::CertificateTemplate;

/// A dotted OID as an administrator or a request writes it (`1.2.840.113549.1.9.1`), or `None`.
/// The one way text becomes an OID here: `const-oid`'s parser multiplies each arc without a
/// check, so an arc beyond 32 bits overflowed it (a panic with overflow checks, a silently
/// different OID without) — found by the `api_json` fuzz target. Arcs are checked first.
/// An arc must also be below 2^28: const-oid 0.9 writes larger ones in five bytes but reads
/// some of those back as "arc too big", and panics when it prints them (`0.4.709551615` —
/// found by the same target, 2026-12-07).
pub fn dotted_oid(text: &str) -> Option<const_oid::ObjectIdentifier> {
    let arcs: Vec<&str> = text.split('.').collect();
    let fits = arcs.len() >= 2
        && arcs.iter().all(|a| {
            !a.is_empty()
                && a.bytes().all(|b| b.is_ascii_digit())
                && a.parse::<u32>().is_ok_and(|n| n < 1 << 28)
        });
    if !fits {
        return None;
    }
    const_oid::ObjectIdentifier::new(text).ok()
}

/// Errors from encoding or decoding certificate structures.
#[derive(Debug)]
pub enum Error {
    /// A DER structure could not be decoded or encoded.
    Der(der::Error),
    /// The structure decoded but its content is not acceptable.
    Invalid(String),
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::Der(e) => write!(f, "DER: {e}"),
            Error::Invalid(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

impl From<der::Error> for Error {
    fn from(e: der::Error) -> Self {
        Error::Der(e)
    }
}

/// Result alias for this crate.
pub type Result<T> = core::result::Result<T, Error>;
