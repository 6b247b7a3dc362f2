//! PKI formats the host writes: CSRs, the local CA's self-signed certificate, PKCS#12 files and
//! CMS EnvelopedData. Encoding uses the RustCrypto `der` family; every primitive comes from
//! [`crate::crypto::provider`].

pub mod ca;
pub mod cms;
pub mod csr;
pub mod issued;
pub mod ocsp;
pub mod pkcs12;

/// PEM and distinguished names are shared with the plugins: see [`certconn_x509`].
pub use certconn_x509::{dn, pem};

/// Why a PKI structure could not be produced or read.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{what}")]
    Der {
        what: &'static str,
        #[source]
        source: der::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Crypto(#[from] crate::crypto::CryptoError),
}

impl PkiError {
    pub(crate) fn der(what: &'static str) -> impl FnOnce(der::Error) -> PkiError {
        move |source| PkiError::Der { what, source }
    }
}

/// A custody signature over an encoded structure (certificate or CRL) that failed in either half.
impl From<certconn_x509::tbs::SignError<crate::crypto::CryptoError>> for PkiError {
    fn from(e: certconn_x509::tbs::SignError<crate::crypto::CryptoError>) -> Self {
        match e {
            certconn_x509::tbs::SignError::Encode(e) => PkiError::from(e),
            certconn_x509::tbs::SignError::Signer(e) => PkiError::from(e),
        }
    }
}

impl From<certconn_x509::Error> for PkiError {
    fn from(e: certconn_x509::Error) -> Self {
        PkiError::Invalid(e.to_string())
    }
}
