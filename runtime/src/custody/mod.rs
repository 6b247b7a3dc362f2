//! Key custody: the host holds every private key; plugins get named handles they were granted.
//!
//! `key` is one private key and the operations on it; `store` keeps keys (and the certificate
//! chain that belongs to each) on disk; `grant` is the per-backend view that enforces which
//! handles a backend instance may use.

pub mod grant;
pub mod kek;
pub mod key;
pub mod pkcs11;
pub mod store;

pub use grant::Grants;
pub use kek::KekSource;
pub use key::{KeyAlgorithm, PrivateKey};
pub use pkcs11::Pkcs11Config;
pub use store::{KeyLocation, KeyStore};

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
    #[error("key store {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("wrong key-encryption key: {0}")]
    WrongKek(String),
    #[error("PKCS#11 token {token:?}: {reason}")]
    Token { token: String, reason: String },
    #[error("key {0:?} is on a PKCS#11 token, but custody.pkcs11 is not configured")]
    NoToken(String),
    #[error("key file {path} is corrupt: {reason}")]
    Corrupt {
        path: std::path::PathBuf,
        reason: String,
    },
}

/// `[custody]`: how the software store is sealed at rest (`protection` and its settings, see
/// [`KekSource`]) and, optionally, the PKCS#11 token for `store = "pkcs11"` keys
/// (`[custody.pkcs11]`, see [`Pkcs11Config`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CustodyConfig {
    pub protection: KekSource,
    pub pkcs11: Option<Pkcs11Config>,
}

impl From<KekSource> for CustodyConfig {
    fn from(protection: KekSource) -> Self {
        Self {
            protection,
            pkcs11: None,
        }
    }
}

impl<'de> serde::Deserialize<'de> for CustodyConfig {
    // `KekSource` is an internally tagged enum with `deny_unknown_fields`, which serde cannot
    // flatten; so the `pkcs11` table is taken out first and the rest is the protection.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut table = toml::Table::deserialize(d)?;
        let pkcs11 = table
            .remove("pkcs11")
            .map(|v| {
                Pkcs11Config::deserialize(v).map_err(|e| D::Error::custom(format!("pkcs11: {e}")))
            })
            .transpose()?;
        let protection = if table.is_empty() {
            KekSource::None
        } else {
            KekSource::deserialize(toml::Value::Table(table)).map_err(D::Error::custom)?
        };
        Ok(Self { protection, pkcs11 })
    }
}
