//! The key-encryption key (KEK) that protects the software key store at rest.
//!
//! Sources, chosen by `custody.protection`: a passphrase from an environment variable
//! (PBKDF2-HMAC-SHA256, 600 000 iterations, per-store salt), a key file (32 bytes, raw or hex,
//! mode 0600/0400), or a systemd credential (`$CREDENTIALS_DIRECTORY/NAME`, same format).
//!
//! `keys/kek.json` records the KDF parameters and an AES-256-GCM check value, so a wrong
//! passphrase or key is reported before any key file is touched.

use std::path::Path;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::CustodyError;
use crate::config::ConfigPath;
use crate::crypto::provider::{self, Prf};

/// PBKDF2 iterations for a passphrase-derived KEK (OWASP 2023 figure for PBKDF2-HMAC-SHA256).
pub const PASSPHRASE_ITERATIONS: u32 = 600_000;
const CHECK_PLAINTEXT: &[u8] = b"certconn key-encryption key check v1";
const MAGIC: &[u8] = b"CCKEY1\n";

/// Where the KEK comes from.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case", tag = "protection", deny_unknown_fields)]
pub enum KekSource {
    /// Key files are plain PKCS#8, protected by file permissions only.
    #[default]
    None,
    /// A passphrase read from the environment variable `passphrase_env`.
    Passphrase {
        #[serde(default = "default_passphrase_env")]
        passphrase_env: String,
    },
    /// A file holding 32 random bytes (raw or 64 hex characters).
    KeyFile { key_file: ConfigPath },
    /// A systemd credential (`LoadCredential=`/`SetCredentialEncrypted=`), same format as a key file.
    Credential { credential: String },
}

fn default_passphrase_env() -> String {
    "CERTCONN_KEYSTORE_PASSPHRASE".into()
}

/// The KEK, ready to seal and open key files.
pub struct Kek {
    key: LessSafeKey,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(..)")
    }
}

#[derive(Serialize, Deserialize)]
struct KekRecord {
    version: u32,
    source: String,
    salt: String,
    iterations: u32,
    check: String,
}

fn corrupt(path: &Path, reason: impl Into<String>) -> CustodyError {
    CustodyError::Corrupt {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

fn read_secret_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, CustodyError> {
    let raw = crate::files::read_protected(path)?;
    let text = std::str::from_utf8(&raw).map(str::trim).unwrap_or("");
    if raw.len() == 32 {
        return Ok(raw);
    }
    match hex::decode(text) {
        Ok(bytes) if bytes.len() == 32 => Ok(Zeroizing::new(bytes)),
        _ => Err(corrupt(
            path,
            "a key-encryption key file must hold 32 bytes, raw or as 64 hex characters",
        )),
    }
}

impl Kek {
    /// Obtains the KEK for the store in `dir`, creating `kek.json` at first use. `None` when the
    /// store is unprotected.
    pub fn obtain(source: &KekSource, dir: &Path) -> Result<Option<Self>, CustodyError> {
        let record_path = dir.join("kek.json");
        let record: Option<KekRecord> = match std::fs::read_to_string(&record_path) {
            Ok(text) => Some(
                serde_json::from_str(&text).map_err(|e| corrupt(&record_path, e.to_string()))?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(CustodyError::Io {
                    path: record_path,
                    source,
                })
            }
        };
        let (name, salt, iterations, material): (&str, Vec<u8>, u32, Zeroizing<Vec<u8>>) =
            match source {
                KekSource::None => {
                    if record.is_some() {
                        return Err(CustodyError::Protection(format!(
                            "the key store ({}) is encrypted, but custody.protection is \"none\": \
                             configure how to obtain its key-encryption key",
                            dir.display()
                        )));
                    }
                    return Ok(None);
                }
                KekSource::Passphrase { passphrase_env } => {
                    let passphrase = crate::secret::env_var(passphrase_env).map_err(|_| {
                        CustodyError::Protection(format!(
                            "custody.protection is \"passphrase\" but ${passphrase_env} is not set"
                        ))
                    })?;
                    if passphrase.is_empty() {
                        return Err(CustodyError::Protection(format!(
                            "custody.protection is \"passphrase\" but ${passphrase_env} is empty"
                        )));
                    }
                    let (salt, iterations) = match &record {
                        Some(r) => (
                            hex::decode(&r.salt)
                                .map_err(|e| corrupt(&record_path, e.to_string()))?,
                            r.iterations,
                        ),
                        None => (provider::random_vec(16)?, PASSPHRASE_ITERATIONS),
                    };
                    let mut kek = Zeroizing::new(vec![0u8; 32]);
                    provider::pbkdf2(
                        Prf::HmacSha256,
                        passphrase.as_bytes(),
                        &salt,
                        iterations,
                        &mut kek,
                    )?;
                    ("passphrase", salt, iterations, kek)
                }
                KekSource::KeyFile { key_file } => {
                    ("key-file", Vec::new(), 0, read_secret_file(key_file)?)
                }
                KekSource::Credential { credential } => {
                    let path = crate::secret::systemd_credential(credential).map_err(|why| {
                        CustodyError::Protection(format!(
                            "custody.protection is \"credential\": {why}"
                        ))
                    })?;
                    ("credential", Vec::new(), 0, read_secret_file(&path)?)
                }
            };
        let kek = Self::from_bytes(&material)?;
        match record {
            Some(r) => {
                let check =
                    hex::decode(&r.check).map_err(|e| corrupt(&record_path, e.to_string()))?;
                match kek.open("kek-check", &check) {
                    Some(plain) if plain.as_slice() == CHECK_PLAINTEXT => {}
                    _ => {
                        return Err(CustodyError::WrongKek(format!(
                            "the {name} does not open this key store ({}); nothing was changed",
                            record_path.display()
                        )))
                    }
                }
            }
            None => {
                let record = KekRecord {
                    version: 1,
                    source: name.into(),
                    salt: hex::encode(&salt),
                    iterations,
                    check: hex::encode(kek.seal("kek-check", CHECK_PLAINTEXT)?),
                };
                let text = serde_json::to_string_pretty(&record)
                    .map_err(|e| corrupt(&record_path, e.to_string()))?;
                crate::files::write_atomic(&record_path, text.as_bytes(), 0o600)?;
            }
        }
        Ok(Some(kek))
    }

    pub(crate) fn from_bytes(bytes: &[u8]) -> Result<Self, CustodyError> {
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| {
            CustodyError::WrongKek("the key-encryption key must be 32 bytes".into())
        })?;
        Ok(Self {
            key: LessSafeKey::new(unbound),
        })
    }

    /// Encrypts `plaintext` bound to `name` (a key file cannot be renamed to another key).
    pub fn seal(&self, name: &str, plaintext: &[u8]) -> Result<Vec<u8>, CustodyError> {
        let mut nonce = [0u8; 12];
        provider::fill_random(&mut nonce)?;
        let mut buf = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(name).as_bytes()),
                &mut buf,
            )
            .map_err(|_| CustodyError::WrongKek("AES-256-GCM sealing failed".into()))?;
        let mut out = Vec::with_capacity(MAGIC.len() + 12 + buf.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        Ok(out)
    }

    /// Opens what [`seal`](Self::seal) wrote for `name`; `None` when it does not authenticate.
    pub fn open(&self, name: &str, sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        let rest = sealed.strip_prefix(MAGIC)?;
        if rest.len() < 12 + 16 {
            return None;
        }
        let (nonce, ct) = rest.split_at(12);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = Zeroizing::new(ct.to_vec());
        let len = self
            .key
            .open_in_place(nonce, Aad::from(aad(name).as_bytes()), &mut buf)
            .ok()?
            .len();
        buf.truncate(len);
        Some(buf)
    }
}

/// Whether `bytes` is a sealed key file (as opposed to plain PKCS#8).
pub fn is_sealed(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

fn aad(name: &str) -> String {
    format!("certconn key {name}")
}
