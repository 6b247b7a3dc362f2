//! The software key store: one file per key (mode 0600, in a 0700 directory) and, beside it, the
//! key's certificate chain as PEM. With `custody.protection` set, each key file is PKCS#8 sealed
//! with AES-256-GCM under the key-encryption key ([`kek`]), bound to the key's name; otherwise it
//! is plain PKCS#8. Files are written to a temporary name, synced, and renamed, so a crash never
//! leaves half a key behind. A tampered file or a wrong KEK stops start-up and changes nothing.
//!
//! Keys created with `store = "pkcs11"` live on the configured token; the store keeps only
//! `NAME.p11` (the token label and the key's `CKA_ID`, nothing secret) so that names, chains,
//! grants and listings work the same for both.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use super::kek::{self, Kek};
use super::pkcs11::Token;
use super::{CustodyConfig, CustodyError, KeyAlgorithm, KeyRole, PrivateKey};
use crate::files::{self, overwrite_and_remove, write_atomic};
use crate::journal::SignatureTrail;
use certconn_x509::pem;
use certconn_x509::CertificateFacts;
use der::Decode;
use x509_cert::Certificate;

/// A key with the certificates that belong to it.
#[derive(Debug)]
pub struct StoredKey {
    pub name: String,
    pub key: PrivateKey,
    /// The key's own certificate first, then its issuers. Empty when it has none.
    pub chain: Vec<Vec<u8>>,
    /// [`Self::ca_certificate`], parsed at its first use.
    ca: std::sync::OnceLock<Option<Certificate>>,
}

impl StoredKey {
    pub fn new(name: String, key: PrivateKey, chain: Vec<Vec<u8>>) -> Self {
        Self {
            name,
            key,
            chain,
            ca: std::sync::OnceLock::new(),
        }
    }

    /// The key's own certificate (first in its chain) when it is a CA certificate. Parsed
    /// once per key, not at every signature the key makes: the host checks each certificate
    /// a CA key signs against it.
    pub fn ca_certificate(&self) -> Option<&Certificate> {
        self.ca
            .get_or_init(|| {
                let cert = Certificate::from_der(self.chain.first()?).ok()?;
                CertificateFacts::of(&cert)
                    .ok()
                    .filter(|f| f.is_ca)
                    .map(|_| cert)
            })
            .as_ref()
    }
}

/// Keys on disk, loaded at start.
pub struct KeyStore {
    dir: PathBuf,
    kek: Option<Kek>,
    token: Option<Arc<Token>>,
    keys: RwLock<BTreeMap<String, Arc<StoredKey>>>,
    /// Where every signature a CA key makes is recorded first (set once the journal is open).
    trail: std::sync::OnceLock<Arc<dyn SignatureTrail>>,
    /// The role of each key the config declares (`[keys.NAME] role`); others are general.
    roles: std::sync::OnceLock<BTreeMap<String, KeyRole>>,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore")
            .field("dir", &self.dir)
            .field("sealed", &self.kek.is_some())
            .field("token", &self.token.is_some())
            .field("recorded", &self.trail.get().is_some())
            .finish_non_exhaustive()
    }
}

/// Where a new key is made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyLocation {
    /// In the software store (sealed at rest when `custody.protection` is set).
    #[default]
    Software,
    /// On the `custody.pkcs11` token, never extractable.
    Pkcs11,
}

impl std::str::FromStr for KeyLocation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "software" => Ok(Self::Software),
            "pkcs11" => Ok(Self::Pkcs11),
            other => Err(format!(
                "unknown key store {other:?}: expected software or pkcs11"
            )),
        }
    }
}

/// The content of `NAME.p11`.
#[derive(serde::Serialize, serde::Deserialize)]
struct TokenRecord {
    token: String,
    id: String,
}

/// One line of `certconn keys list` (and of `GET /v1/keys`).
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct KeySummary {
    /// The name a backend's grant, `scep.ca_key` or `api.tls.issuer` uses for the key.
    pub name: String,
    /// The key's algorithm and size, as people write it: `RSA-2048`, `EC P-256`, `EC P-384`.
    pub kind: String,
    /// `software`, or `pkcs11:<token label>`.
    pub store: String,
    /// Certificates held with the key: its own first, then its issuers.
    pub certificates: usize,
    /// SHA-256 of the key's SubjectPublicKeyInfo, hex: what to compare with another copy.
    pub spki_sha256: String,
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

fn load_chain(dir: &Path, name: &str) -> Result<Vec<Vec<u8>>, CustodyError> {
    let chain_path = dir.join(format!("{name}.chain.pem"));
    match fs::read_to_string(&chain_path) {
        Ok(text) => pem::decode_certificates(&text).map_err(|e| CustodyError::Corrupt {
            path: chain_path.clone(),
            reason: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io(&chain_path)(e)),
    }
}

fn read_token_record(path: &Path) -> Result<TokenRecord, CustodyError> {
    let text = fs::read_to_string(path).map_err(io(path))?;
    serde_json::from_str(&text).map_err(|e| CustodyError::Corrupt {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

fn record_id(path: &Path, record: &TokenRecord) -> Result<Vec<u8>, CustodyError> {
    hex::decode(&record.id).map_err(|_| CustodyError::Corrupt {
        path: path.to_owned(),
        reason: "\"id\" is not hex".into(),
    })
}

/// Finds the token key a `NAME.p11` record points at.
fn load_token_key(
    path: &Path,
    name: &str,
    token: Option<&Arc<Token>>,
) -> Result<PrivateKey, CustodyError> {
    let record = read_token_record(path)?;
    let token = token.ok_or_else(|| CustodyError::NoToken(name.into()))?;
    if record.token != token.label() {
        return Err(CustodyError::Corrupt {
            path: path.to_owned(),
            reason: format!(
                "the key is on token {:?}, but custody.pkcs11 names token {:?}",
                record.token,
                token.label()
            ),
        });
    }
    let id = record_id(path, &record)?;
    let key = token.find(&id).map_err(|e| CustodyError::Corrupt {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(PrivateKey::from_token(key))
}

impl KeyStore {
    /// Records every later signature a CA key makes in `trail` (once; a second call is
    /// ignored). The daemon sets it as soon as the journal is open, before any backend loads.
    pub fn record_signatures_in(&self, trail: Arc<dyn SignatureTrail>) {
        let _ = self.trail.set(trail);
    }

    /// Gives the keys the config declares their roles (once, at start, before any backend
    /// loads; a second call is ignored).
    pub fn assign_roles(&self, roles: BTreeMap<String, KeyRole>) {
        let _ = self.roles.set(roles);
    }

    /// The role of key `name`: as the config declared it, else general.
    pub fn role(&self, name: &str) -> KeyRole {
        self.roles
            .get()
            .and_then(|r| r.get(name).copied())
            .unwrap_or(KeyRole::General)
    }

    /// The signature trail, once set.
    pub fn signature_trail(&self) -> Option<Arc<dyn SignatureTrail>> {
        self.trail.get().cloned()
    }

    /// Whether the store in `dir` holds a key called `name`, known from its file names alone
    /// (nothing is opened or unsealed): for a check that must tell which keys `serve` would
    /// make at its first start. A directory this process cannot look into holds nothing it
    /// can tell of: `None`.
    pub fn holds(dir: &Path, name: &str) -> Option<bool> {
        let mut held = false;
        for ext in ["key", "p11"] {
            held |= dir.join(format!("{name}.{ext}")).try_exists().ok()?;
        }
        Some(held)
    }

    /// Opens (creating if needed) the store in `dir`, obtains its key-encryption key from
    /// `protection`, and loads every key. Plain key files found in a protected store are sealed
    /// in place (the way to turn protection on).
    pub fn open(dir: &Path, custody: &CustodyConfig) -> Result<Self, CustodyError> {
        fs::create_dir_all(dir).map_err(io(dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
        let kek = Kek::obtain(&custody.protection, dir)?;
        let token = custody.pkcs11.as_ref().map(Token::open).transpose()?;
        let mut keys = BTreeMap::new();
        let mut to_seal = Vec::new();
        for entry in fs::read_dir(dir).map_err(io(dir))? {
            let path = entry.map_err(io(dir))?.path();
            let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if let Some(name) = file_name.strip_suffix(".p11") {
                let key = load_token_key(&path, name, token.as_ref())?;
                let chain = load_chain(dir, name)?;
                keys.insert(
                    name.to_owned(),
                    Arc::new(StoredKey::new(name.to_owned(), key, chain)),
                );
                continue;
            }
            let Some(name) = file_name.strip_suffix(".key") else {
                continue;
            };
            let name = name.to_owned();
            let bytes = files::read_protected(&path)?;
            let der =
                match (&kek, kek::is_sealed(&bytes)) {
                    (Some(kek), true) => kek.open(&name, &bytes).ok_or_else(|| {
                        CustodyError::Corrupt {
                        path: path.clone(),
                        reason:
                            "authentication failed: the file was changed, or belongs to another key"
                                .into(),
                    }
                    })?,
                    (None, true) => {
                        return Err(CustodyError::Protection(format!(
                            "{} is encrypted, but custody.protection is \"none\": configure how \
                             to obtain its key-encryption key",
                            path.display()
                        )))
                    }
                    (Some(_), false) => {
                        to_seal.push(name.clone());
                        bytes
                    }
                    (None, false) => bytes,
                };
            let key = PrivateKey::from_pkcs8(der).map_err(|e| CustodyError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            let chain = load_chain(dir, &name)?;
            keys.insert(name.clone(), Arc::new(StoredKey::new(name, key, chain)));
        }
        let store = Self {
            dir: dir.to_owned(),
            kek,
            token,
            keys: RwLock::new(keys),
            trail: std::sync::OnceLock::new(),
            roles: std::sync::OnceLock::new(),
        };
        for name in to_seal {
            let key = store.get(&name)?;
            store.write_key(&name, &key.key)?;
            tracing::info!(key = %name, "sealed a plain key file under the key-encryption key");
        }
        Ok(store)
    }

    /// Writes a key file, sealed when the store is protected.
    fn write_key(&self, name: &str, key: &PrivateKey) -> Result<(), CustodyError> {
        let path = self.dir.join(format!("{name}.key"));
        match &self.kek {
            Some(kek) => Ok(write_atomic(
                &path,
                &kek.seal(name, key.pkcs8_der()?)?,
                0o600,
            )?),
            None => Ok(write_atomic(&path, key.pkcs8_der()?, 0o600)?),
        }
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

    /// Generates and stores a new key called `name`, in software or on the token.
    pub fn create(
        &self,
        name: &str,
        alg: KeyAlgorithm,
        location: KeyLocation,
    ) -> Result<Arc<StoredKey>, CustodyError> {
        check_name(name)?;
        if self.get(name).is_ok() {
            return Err(CustodyError::Exists(name.into()));
        }
        match location {
            KeyLocation::Software => self.put(name, PrivateKey::generate(alg)?),
            KeyLocation::Pkcs11 => {
                let token = self
                    .token
                    .as_ref()
                    .ok_or_else(|| CustodyError::NoToken(name.into()))?;
                let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
                if keys.contains_key(name) {
                    return Err(CustodyError::Exists(name.into()));
                }
                let id = crate::crypto::provider::random_vec(16)?;
                let key = PrivateKey::from_token(token.generate(name, &id, alg)?);
                let record = TokenRecord {
                    token: token.label().to_owned(),
                    id: hex::encode(&id),
                };
                let json =
                    serde_json::to_vec_pretty(&record).map_err(|e| CustodyError::Corrupt {
                        path: self.dir.join(format!("{name}.p11")),
                        reason: e.to_string(),
                    })?;
                if let Err(e) = write_atomic(&self.dir.join(format!("{name}.p11")), &json, 0o600) {
                    // Do not leave an orphan on the token.
                    let _ = token.destroy(&id);
                    return Err(e.into());
                }
                let stored = Arc::new(StoredKey::new(name.into(), key, Vec::new()));
                keys.insert(name.into(), stored.clone());
                Ok(stored)
            }
        }
    }

    /// Stores an existing key under `name` (a device key kept while its CA answers pending).
    pub fn put(&self, name: &str, key: PrivateKey) -> Result<Arc<StoredKey>, CustodyError> {
        check_name(name)?;
        let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
        if keys.contains_key(name) {
            return Err(CustodyError::Exists(name.into()));
        }
        self.write_key(name, &key)?;
        let stored = Arc::new(StoredKey::new(name.into(), key, Vec::new()));
        keys.insert(name.into(), stored.clone());
        Ok(stored)
    }

    /// True when this store has a key-encryption key, so that keys can be sealed for other
    /// instances holding the same KEK ([`Self::seal_for_fleet`]).
    pub fn seals(&self) -> bool {
        self.kek.is_some()
    }

    /// `key` sealed under this store's KEK and bound to `name`, for the journal a fleet
    /// shares: an instance with the same KEK (`custody.protection` the same key file or
    /// credential) opens it; the database, its backups and its administrators cannot.
    pub fn seal_for_fleet(&self, name: &str, key: &PrivateKey) -> Result<Vec<u8>, CustodyError> {
        let kek = self.kek.as_ref().ok_or_else(|| CustodyError::Unsupported {
            name: name.to_owned(),
            operation: "be shared with the fleet".into(),
            kind: "in a store without a key-encryption key (custody.protection)".into(),
        })?;
        kek.seal(&fleet_aad(name), key.pkcs8_der()?)
    }

    /// Opens what [`Self::seal_for_fleet`] sealed for `name` (on this or another instance).
    pub fn open_from_fleet(&self, name: &str, sealed: &[u8]) -> Result<PrivateKey, CustodyError> {
        let kek = self.kek.as_ref().ok_or_else(|| CustodyError::Unsupported {
            name: name.to_owned(),
            operation: "be opened from the fleet".into(),
            kind: "in a store without a key-encryption key (custody.protection)".into(),
        })?;
        let pkcs8 = kek.open(&fleet_aad(name), sealed).ok_or_else(|| {
            CustodyError::WrongKek(format!(
                "key {name:?} in the journal was sealed under another key-encryption key; every \
                 instance of a fleet needs the same custody.protection key"
            ))
        })?;
        Ok(PrivateKey::from_pkcs8(pkcs8)?)
    }

    /// Removes key `name` and its chain from the store (destroying it on the token when it
    /// lives there). Missing keys are not an error.
    pub fn remove(&self, name: &str) -> Result<(), CustodyError> {
        let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
        let record_path = self.dir.join(format!("{name}.p11"));
        if keys.get(name).is_some_and(|k| k.key.token().is_some()) {
            let record = read_token_record(&record_path)?;
            let token = self
                .token
                .as_ref()
                .ok_or_else(|| CustodyError::NoToken(name.into()))?;
            token.destroy(&record_id(&record_path, &record)?)?;
        }
        keys.remove(name);
        overwrite_and_remove(&self.dir.join(format!("{name}.key")))?;
        for file in [format!("{name}.p11"), format!("{name}.chain.pem")] {
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
        // A second owner of the key rather than a shared one: a key has one owner.
        let key = old.key.duplicate()?;
        let stored = Arc::new(StoredKey::new(name.into(), key, chain));
        keys.insert(name.into(), stored.clone());
        Ok(stored)
    }

    /// Moves software key `name` onto the PKCS#11 token (`certconn keys migrate`): the key is
    /// created there sensitive and not extractable, checked to be the same key (its public
    /// half, and a signature made on the token that the old public key verifies), recorded as
    /// `NAME.p11`, and only then is `NAME.key` overwritten and removed. Its certificate chain
    /// stays. A failure at any step leaves the software key as it was and nothing on the token.
    pub fn migrate_to_token(&self, name: &str) -> Result<Arc<StoredKey>, CustodyError> {
        let token = self
            .token
            .as_ref()
            .ok_or_else(|| CustodyError::NoToken(name.into()))?;
        let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
        let current = keys
            .get(name)
            .cloned()
            .ok_or_else(|| CustodyError::NoSuchKey(name.into()))?;
        if let Some(t) = current.key.token() {
            return Err(CustodyError::Token {
                token: t.token_label().to_owned(),
                reason: format!("key {name:?} is on this token already"),
            });
        }
        let id = crate::crypto::provider::random_vec(16)?;
        let moved = PrivateKey::from_token(token.import(name, &id, &current.key)?);
        let undo = |reason: String| {
            let _ = token.destroy(&id);
            CustodyError::Token {
                token: token.label().to_owned(),
                reason,
            }
        };
        if moved.public_key_der() != current.key.public_key_der() {
            return Err(undo(
                "the key on the token has another public key than the one imported".into(),
            ));
        }
        let scheme = moved.kind().default_signature_scheme();
        let probe = b"certconn keys migrate: the token signs for this key";
        let signed = moved
            .sign(scheme, probe)
            .map_err(|e| undo(format!("a test signature on the token failed: {e}")))?;
        if !crate::crypto::provider::verify(current.key.public_key_der(), scheme, probe, &signed)
            .unwrap_or(false)
        {
            return Err(undo(
                "the token's signature does not verify with the key's public half".into(),
            ));
        }
        let record = TokenRecord {
            token: token.label().to_owned(),
            id: hex::encode(&id),
        };
        let record_path = self.dir.join(format!("{name}.p11"));
        let json = serde_json::to_vec_pretty(&record).map_err(|e| undo(e.to_string()))?;
        if let Err(e) = write_atomic(&record_path, &json, 0o600) {
            let _ = token.destroy(&id);
            return Err(e.into());
        }
        // The software copy goes (a backup of the file still holds it: the command says so).
        let key_path = self.dir.join(format!("{name}.key"));
        overwrite_and_remove(&key_path)?;
        let stored = Arc::new(StoredKey::new(name.into(), moved, current.chain.clone()));
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
                store: match k.key.token() {
                    Some(t) => format!("pkcs11:{}", t.token_label()),
                    None => "software".into(),
                },
                certificates: k.chain.len(),
                spki_sha256: k.key.spki_sha256(),
            })
            .collect()
    }
}

/// What a key sealed for the fleet is bound to: its name, and that it is a journal's copy, so
/// that one cannot be planted as a key file of the store (or the other way round).
fn fleet_aad(name: &str) -> String {
    format!("fleet:{name}")
}

#[cfg(test)]
mod tests {
    use super::super::KekSource;
    use super::*;

    #[test]
    fn keys_survive_reopen_with_their_chain() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::open(dir.path(), &CustodyConfig::default()).unwrap();
        let k = store
            .create("ca", KeyAlgorithm::EcP256, KeyLocation::Software)
            .unwrap();
        store.set_chain("ca", vec![vec![0x30, 0x00]]).unwrap();
        let mode = fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = KeyStore::open(dir.path(), &CustodyConfig::default()).unwrap();
        let k2 = again.get("ca").unwrap();
        assert_eq!(k2.key.public_key_der(), k.key.public_key_der());
        assert_eq!(k2.chain, vec![vec![0x30, 0x00]]);
    }

    fn with_passphrase<T>(value: &str, f: impl FnOnce(&CustodyConfig) -> T) -> T {
        let var = "CERTCONN_TEST_PASSPHRASE";
        crate::secret::testing::with_env(var, value, || {
            f(&KekSource::Passphrase {
                passphrase_env: var.to_owned(),
            }
            .into())
        })
    }

    #[test]
    fn sealed_keys_open_only_with_the_right_passphrase_and_name() {
        let dir = tempfile::tempdir().unwrap();
        let public = with_passphrase("correct horse", |p| {
            let store = KeyStore::open(dir.path(), p).unwrap();
            let a = store
                .create("a", KeyAlgorithm::EcP256, KeyLocation::Software)
                .unwrap();
            store
                .create("b", KeyAlgorithm::EcP256, KeyLocation::Software)
                .unwrap();
            a.key.public_key_der().to_vec()
        });
        let on_disk = fs::read(dir.path().join("a.key")).unwrap();
        assert!(kek::is_sealed(&on_disk), "the key file is not plain PKCS#8");
        with_passphrase("correct horse", |p| {
            assert_eq!(
                KeyStore::open(dir.path(), p)
                    .unwrap()
                    .get("a")
                    .unwrap()
                    .key
                    .public_key_der(),
                &public[..]
            );
        });
        let before: Vec<_> = ["a.key", "b.key", "kek.json"]
            .iter()
            .map(|f| fs::read(dir.path().join(f)).unwrap())
            .collect();
        let err = with_passphrase("wrong horse", |p| {
            KeyStore::open(dir.path(), p).unwrap_err().to_string()
        });
        assert!(
            err.contains("wrong key-encryption key") && err.contains("nothing was changed"),
            "{err}"
        );
        let err = KeyStore::open(dir.path(), &CustodyConfig::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("custody.protection is \"none\"") && !err.contains("corrupt"),
            "{err}"
        );
        // Swapping two key files is detected: each is bound to its name.
        fs::rename(dir.path().join("a.key"), dir.path().join("tmp")).unwrap();
        fs::rename(dir.path().join("b.key"), dir.path().join("a.key")).unwrap();
        fs::rename(dir.path().join("tmp"), dir.path().join("b.key")).unwrap();
        let err = with_passphrase("correct horse", |p| {
            KeyStore::open(dir.path(), p).unwrap_err().to_string()
        });
        assert!(err.contains("authentication failed"), "{err}");
        fs::rename(dir.path().join("a.key"), dir.path().join("tmp")).unwrap();
        fs::rename(dir.path().join("b.key"), dir.path().join("a.key")).unwrap();
        fs::rename(dir.path().join("tmp"), dir.path().join("b.key")).unwrap();
        // A flipped byte is detected too, and nothing was rewritten by any failed start.
        let mut tampered = fs::read(dir.path().join("a.key")).unwrap();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        fs::write(dir.path().join("a.key"), &tampered).unwrap();
        let err = with_passphrase("correct horse", |p| {
            KeyStore::open(dir.path(), p).unwrap_err().to_string()
        });
        assert!(
            err.contains("a.key") && err.contains("authentication failed"),
            "{err}"
        );
        assert_eq!(fs::read(dir.path().join("b.key")).unwrap(), before[1]);
        assert_eq!(fs::read(dir.path().join("kek.json")).unwrap(), before[2]);
    }

    /// A key-encryption key the configuration cannot give (its variable not set, its systemd
    /// credential not passed) is said to be that, not a corrupt key file: the files are fine.
    #[test]
    fn a_key_encryption_key_that_cannot_be_had_is_not_called_a_corrupt_file() {
        let dir = tempfile::tempdir().unwrap();
        with_passphrase("correct horse", |p| KeyStore::open(dir.path(), p).unwrap());
        let unset: CustodyConfig = KekSource::Passphrase {
            passphrase_env: "CERTCONN_TEST_PASSPHRASE_NEVER_SET".into(),
        }
        .into();
        let err = crate::report::chain(&KeyStore::open(dir.path(), &unset).unwrap_err());
        assert_eq!(
            err,
            "the key store's key-encryption key: custody.protection is \"passphrase\" but \
             $CERTCONN_TEST_PASSPHRASE_NEVER_SET is not set"
        );
        if std::env::var_os("CREDENTIALS_DIRECTORY").is_none() {
            let credential: CustodyConfig = KekSource::Credential {
                credential: "kek".into(),
            }
            .into();
            let err = crate::report::chain(&KeyStore::open(dir.path(), &credential).unwrap_err());
            assert!(
                err.starts_with(
                    "the key store's key-encryption key: custody.protection is \"credential\""
                ) && err.contains("$CREDENTIALS_DIRECTORY is not set")
                    && !err.contains("corrupt"),
                "{err}"
            );
        }
    }

    #[test]
    fn turning_protection_on_seals_existing_plain_keys() {
        let dir = tempfile::tempdir().unwrap();
        KeyStore::open(dir.path(), &CustodyConfig::default())
            .unwrap()
            .create("k", KeyAlgorithm::EcP256, KeyLocation::Software)
            .unwrap();
        assert!(!kek::is_sealed(
            &fs::read(dir.path().join("k.key")).unwrap()
        ));
        let kek_file = dir.path().join("kek.bin");
        fs::write(&kek_file, hex::encode([7u8; 32])).unwrap();
        fs::set_permissions(&kek_file, fs::Permissions::from_mode(0o600)).unwrap();
        let source: CustodyConfig = KekSource::KeyFile {
            key_file: kek_file.clone().into(),
        }
        .into();
        KeyStore::open(dir.path(), &source).unwrap();
        assert!(kek::is_sealed(&fs::read(dir.path().join("k.key")).unwrap()));
        assert!(KeyStore::open(dir.path(), &source)
            .unwrap()
            .get("k")
            .is_ok());
        fs::set_permissions(&kek_file, fs::Permissions::from_mode(0o644)).unwrap();
        let e = crate::report::chain(&KeyStore::open(dir.path(), &source).unwrap_err());
        assert!(e.contains("0644") && e.contains("chmod 600"), "{e}");
    }

    #[test]
    fn names_are_checked_and_unique() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::open(dir.path(), &CustodyConfig::default()).unwrap();
        assert!(matches!(
            store.create("../evil", KeyAlgorithm::EcP256, KeyLocation::Software),
            Err(CustodyError::BadName(_))
        ));
        store
            .create("a", KeyAlgorithm::EcP256, KeyLocation::Software)
            .unwrap();
        assert!(matches!(
            store.create("a", KeyAlgorithm::EcP256, KeyLocation::Software),
            Err(CustodyError::Exists(_))
        ));
        assert!(matches!(store.get("b"), Err(CustodyError::NoSuchKey(_))));
    }

    #[test]
    fn world_readable_key_stops_start_and_destroys_nothing() {
        let dir = tempfile::tempdir().unwrap();
        KeyStore::open(dir.path(), &CustodyConfig::default())
            .unwrap()
            .create("k", KeyAlgorithm::EcP256, KeyLocation::Software)
            .unwrap();
        let path = dir.path().join("k.key");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let before = fs::read(&path).unwrap();
        let err = crate::report::chain(
            &KeyStore::open(dir.path(), &CustodyConfig::default()).unwrap_err(),
        );
        // The error says what is wrong and how to fix it, not that the key is "corrupt".
        assert!(
            err.contains("k.key") && err.contains("0644") && err.contains("chmod 600"),
            "{err}"
        );
        assert!(!err.contains("corrupt"), "{err}");
        assert_eq!(fs::read(&path).unwrap(), before);
    }
}
