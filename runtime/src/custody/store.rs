//! The software key store: one PKCS#8 file per key (mode 0600, in a 0700 directory) and, beside
//! it, the key's certificate chain as PEM. Files are written to a temporary name, synced, and
//! renamed, so a crash never leaves half a key behind.
//!
//! Encryption at rest (a key-encryption key from a passphrase, key file or systemd credential)
//! and PKCS#11 tokens are the next step for this module; see docs/design/custody.md.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use zeroize::Zeroizing;

use super::{CustodyError, KeyAlgorithm, PrivateKey};
use crate::pki::pem;

/// A key with the certificates that belong to it.
#[derive(Debug)]
pub struct StoredKey {
    pub name: String,
    pub key: PrivateKey,
    /// The key's own certificate first, then its issuers. Empty when it has none.
    pub chain: Vec<Vec<u8>>,
}

/// Keys on disk, loaded at start.
#[derive(Debug)]
pub struct KeyStore {
    dir: PathBuf,
    keys: RwLock<BTreeMap<String, Arc<StoredKey>>>,
}

/// One line of `certconn keys list`.
#[derive(Debug, serde::Serialize)]
pub struct KeySummary {
    pub name: String,
    pub kind: String,
    pub certificates: usize,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CustodyError + '_ {
    move |source| CustodyError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Key names become file names: keep them boring.
fn check_name(name: &str) -> Result<(), CustodyError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(CustodyError::BadName(name.into()))
    }
}

/// Writes `bytes` to `path` atomically with the given mode.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CustodyError> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))?;
    Ok(())
}

impl KeyStore {
    /// Opens (creating if needed) the store in `dir` and loads every key.
    pub fn open(dir: &Path) -> Result<Self, CustodyError> {
        fs::create_dir_all(dir).map_err(io(dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
        let mut keys = BTreeMap::new();
        for entry in fs::read_dir(dir).map_err(io(dir))? {
            let path = entry.map_err(io(dir))?.path();
            let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".key"))
            else {
                continue;
            };
            let name = name.to_owned();
            let mode = fs::metadata(&path).map_err(io(&path))?.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(CustodyError::Corrupt {
                    path,
                    reason: format!(
                        "permissions {:o} let others read it; expected 0600",
                        mode & 0o777
                    ),
                });
            }
            let der = Zeroizing::new(fs::read(&path).map_err(io(&path))?);
            let key = PrivateKey::from_pkcs8(der).map_err(|e| CustodyError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            let chain_path = dir.join(format!("{name}.chain.pem"));
            let chain = match fs::read_to_string(&chain_path) {
                Ok(text) => {
                    pem::decode_certificates(&text).map_err(|reason| CustodyError::Corrupt {
                        path: chain_path.clone(),
                        reason,
                    })?
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(io(&chain_path)(e)),
            };
            keys.insert(name.clone(), Arc::new(StoredKey { name, key, chain }));
        }
        Ok(Self {
            dir: dir.to_owned(),
            keys: RwLock::new(keys),
        })
    }

    /// The key called `name`.
    pub fn get(&self, name: &str) -> Result<Arc<StoredKey>, CustodyError> {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| CustodyError::NoSuchKey(name.into()))
    }

    /// Generates and stores a new key called `name`.
    pub fn create(&self, name: &str, alg: KeyAlgorithm) -> Result<Arc<StoredKey>, CustodyError> {
        check_name(name)?;
        if self.get(name).is_ok() {
            return Err(CustodyError::Exists(name.into()));
        }
        self.put(name, PrivateKey::generate(alg)?)
    }

    /// Stores an existing key under `name` (a device key kept while its CA answers pending).
    pub fn put(&self, name: &str, key: PrivateKey) -> Result<Arc<StoredKey>, CustodyError> {
        check_name(name)?;
        let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
        if keys.contains_key(name) {
            return Err(CustodyError::Exists(name.into()));
        }
        write_atomic(
            &self.dir.join(format!("{name}.key")),
            key.pkcs8_der(),
            0o600,
        )?;
        let stored = Arc::new(StoredKey {
            name: name.into(),
            key,
            chain: Vec::new(),
        });
        keys.insert(name.into(), stored.clone());
        Ok(stored)
    }

    /// Removes key `name` and its chain from the store. Missing keys are not an error.
    pub fn remove(&self, name: &str) -> Result<(), CustodyError> {
        let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
        keys.remove(name);
        for file in [format!("{name}.key"), format!("{name}.chain.pem")] {
            let path = self.dir.join(file);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&path)(e)),
            }
        }
        Ok(())
    }

    /// Records the certificate chain of key `name` (its own certificate first).
    pub fn set_chain(
        &self,
        name: &str,
        chain: Vec<Vec<u8>>,
    ) -> Result<Arc<StoredKey>, CustodyError> {
        let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
        let old = keys
            .get(name)
            .ok_or_else(|| CustodyError::NoSuchKey(name.into()))?;
        let text: String = chain
            .iter()
            .map(|c| pem::encode("CERTIFICATE", c))
            .collect();
        write_atomic(
            &self.dir.join(format!("{name}.chain.pem")),
            text.as_bytes(),
            0o644,
        )?;
        // Re-load the key from its PKCS#8 rather than share it: a key has one owner.
        let key = PrivateKey::from_pkcs8(Zeroizing::new(old.key.pkcs8_der().to_vec()))?;
        let stored = Arc::new(StoredKey {
            name: name.into(),
            key,
            chain,
        });
        keys.insert(name.into(), stored.clone());
        Ok(stored)
    }

    /// All keys, for listing.
    pub fn list(&self) -> Vec<KeySummary> {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|k| KeySummary {
                name: k.name.clone(),
                kind: k.key.kind().describe(),
                certificates: k.chain.len(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_survive_reopen_with_their_chain() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::open(dir.path()).unwrap();
        let k = store.create("ca", KeyAlgorithm::EcP256).unwrap();
        store.set_chain("ca", vec![vec![0x30, 0x00]]).unwrap();
        let mode = fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = KeyStore::open(dir.path()).unwrap();
        let k2 = again.get("ca").unwrap();
        assert_eq!(k2.key.public_key_der(), k.key.public_key_der());
        assert_eq!(k2.chain, vec![vec![0x30, 0x00]]);
    }

    #[test]
    fn names_are_checked_and_unique() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::open(dir.path()).unwrap();
        assert!(matches!(
            store.create("../evil", KeyAlgorithm::EcP256),
            Err(CustodyError::BadName(_))
        ));
        store.create("a", KeyAlgorithm::EcP256).unwrap();
        assert!(matches!(
            store.create("a", KeyAlgorithm::EcP256),
            Err(CustodyError::Exists(_))
        ));
        assert!(matches!(store.get("b"), Err(CustodyError::NoSuchKey(_))));
    }

    #[test]
    fn world_readable_key_stops_start_and_destroys_nothing() {
        let dir = tempfile::tempdir().unwrap();
        KeyStore::open(dir.path())
            .unwrap()
            .create("k", KeyAlgorithm::EcP256)
            .unwrap();
        let path = dir.path().join("k.key");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let before = fs::read(&path).unwrap();
        let err = KeyStore::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("0600"), "{err}");
        assert_eq!(fs::read(&path).unwrap(), before);
    }
}
