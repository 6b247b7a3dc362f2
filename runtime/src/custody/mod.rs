//! Key custody: the host holds every private key; plugins get named handles they were granted.
//!
//! `key` is one private key and the operations on it; `store` keeps keys (and the certificate
//! chain that belongs to each) on disk; `grant` is the per-backend view that enforces which
//! handles a backend instance may use; `settings` are the `[custody]` and `[keys]` sections.

pub mod bundle;
pub mod core_dumps;
pub mod grant;
pub mod kek;
pub mod key;
pub mod pkcs11;
pub mod settings;
pub mod softhsm;
pub mod store;
pub mod tls;
pub mod trail;

pub use grant::Grants;
pub use kek::KekSource;
pub use key::{KeyAlgorithm, PrivateKey};
pub use pkcs11::Pkcs11Config;
pub use settings::{CustodyConfig, KeyConfig, KeyRole, SelfSigned};
pub use store::{KeyLocation, KeyStore, KeySummary, StoredKey};

/// Why a custody operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CustodyError {
    #[error("key {0:?} does not exist")]
    NoSuchKey(String),
    #[error("key {0:?} already exists")]
    Exists(String),
    #[error("key handle {0:?} is not granted to this backend")]
    NotGranted(String),
    #[error("key {name:?} cannot {operation}: it is {kind}")]
    Unsupported {
        name: String,
        operation: String,
        kind: String,
    },
    #[error(
        "key name {0:?} is invalid: use letters, digits, '-', '_' and '.', at most 64 characters"
    )]
    BadName(String),
    #[error(transparent)]
    Crypto(#[from] crate::crypto::CryptoError),
    #[error("key store {path}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    File(#[from] crate::files::FileError),
    #[error(transparent)]
    Secret(#[from] crate::secret::SecretError),
    #[error("wrong key-encryption key: {0}")]
    WrongKek(String),
    #[error("PKCS#11 token {token:?}: {reason}")]
    Token { token: String, reason: String },
    #[error("key {0:?} is on a PKCS#11 token, but custody.pkcs11 is not configured")]
    NoToken(String),
    #[error("the signature trail")]
    Trail(#[source] crate::journal::JournalError),
    #[error("the keys the fleet shares in the journal")]
    Shared(#[source] crate::journal::JournalError),
    /// The key-encryption key cannot be had as `custody.protection` says (a variable not set,
    /// a credential not passed), or the store and the setting disagree: the configuration's
    /// or the environment's fault, never the files'.
    #[error("the key store's key-encryption key: {0}")]
    Protection(String),
    #[error("key file {path} is corrupt: {reason}")]
    Corrupt {
        path: std::path::PathBuf,
        reason: String,
    },
}
