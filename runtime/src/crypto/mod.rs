//! The host's crypto provider (aws-lc-rs) and the algorithm policy in front of it.
//!
//! Every primitive certconn uses — its own and those plugins ask for through the `crypto` import —
//! runs here, so FIPS mode is one switch in one place.

pub mod fips;
pub mod ntlm;
pub mod oaep;
pub mod policy;
pub mod provider;
pub mod tls;

pub use policy::AlgorithmPolicy;

/// Why a cryptographic operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The algorithm policy forbids this algorithm for this use.
    #[error("{algorithm} is refused by the algorithm policy: {reason}")]
    Refused { algorithm: String, reason: String },
    /// The input is malformed (a key that does not parse, a wrong IV length).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The operation itself failed (bad padding, wrong key).
    #[error("{0}")]
    Failed(String),
}
