//! SCEP (RFC 8894) messages, shared by certconn's SCEP server (in the host) and the SCEP client
//! in the plugin SDK.
//!
//! Both ends need the same knowledge — the pkiMessage layout, the SCEP attributes, EnvelopedData
//! with key transport, degenerate certs-only SignedData, GetCACaps — so it lives here once. The
//! crate performs no cryptography itself: every primitive goes through [`Crypto`] and every
//! private-key operation through [`Identity`], which the host implements with its provider and
//! custody and a plugin with its host imports. A plugin therefore never holds a private key.
//!
//! Input is untrusted: BER is normalised by [`certconn_x509::ber`] first, sizes are bounded,
//! and every failure is an [`Error`] that says which part of the message was wrong.

#![forbid(unsafe_code)]

pub mod algorithms;
pub mod caps;
pub mod certs;
pub mod crypto;
pub mod envelope;
pub mod lenient;
pub mod message;
pub mod ndes;
mod oid;
mod tlv;

pub use algorithms::{Cipher, Digest, KeyTransport};
pub use caps::{Capabilities, CipherPolicy};
pub use certs::CaCertificates;
pub use crypto::{Crypto, Identity};
pub use message::{FailInfo, IssuerAndSubject, MessageType, Outgoing, PkiStatus, SignedMessage};

/// Largest SCEP message either side accepts: a CSR or a certificate chain is a few KiB.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// Why a SCEP message could not be built or read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bytes are not the structure they should be; names the part.
    #[error("malformed {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
    /// The message is well formed but its signature or digest does not check out.
    #[error("signature check failed: {0}")]
    BadSignature(String),
    /// The message is not addressed to us (no RecipientInfo for our certificate).
    #[error("wrong recipient: {0}")]
    WrongRecipient(String),
    /// An algorithm the message uses that we do not implement or the policy refuses.
    #[error("unsupported algorithm: {0}")]
    Unsupported(String),
    /// A primitive failed in the caller's crypto provider or custody.
    #[error("crypto: {0}")]
    Crypto(String),
}

impl Error {
    pub(crate) fn malformed(what: &'static str) -> impl FnOnce(der::Error) -> Error {
        move |e| Error::Malformed {
            what,
            detail: e.to_string(),
        }
    }

    pub(crate) fn invalid(what: &'static str, detail: impl Into<String>) -> Error {
        Error::Malformed {
            what,
            detail: detail.into(),
        }
    }
}

/// Result alias for this crate.
pub type Result<T> = core::result::Result<T, Error>;
