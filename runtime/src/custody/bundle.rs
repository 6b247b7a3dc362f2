//! Key bundles: custody keys carried from one instance to another, so that every instance of a
//! fleet that serves a CA holds its key (and the PFX-password and RA keys it needs). A bundle
//! is a JSON file; each key in it is its PKCS#8 sealed with AES-256-GCM under a key derived from
//! a passphrase (PBKDF2-HMAC-SHA256, the custody passphrase iterations) and bound to its name,
//! with its certificate chain beside it. A key on a PKCS#11 token cannot leave it: the instances
//! share the token instead.
//!
//! Importing is all or nothing: every key is opened and checked before the first is stored,
//! and a name the store already holds for another key stops the import.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::kek::{Kek, PASSPHRASE_ITERATIONS};
use super::{CustodyError, KeyStore, PrivateKey};
use crate::crypto::provider::{self, Prf};

const FORMAT: &str = "certconn-key-bundle";
const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct BundleFile {
    format: String,
    version: u32,
    /// PBKDF2 salt, hex.
    salt: String,
    iterations: u32,
    keys: Vec<BundledKey>,
}

#[derive(Serialize, Deserialize)]
struct BundledKey {
    name: String,
    /// SHA-256 of the public key, hex: what `certconn keys list` shows, to check by eye.
    spki_sha256: String,
    /// The sealed PKCS#8, base64.
    sealed: String,
    /// The key's certificate chain (DER, base64), its own certificate first.
    chain: Vec<String>,
}

/// What an import did with each key.
#[derive(Debug, PartialEq, Eq)]
pub enum Imported {
    Added(String),
    /// The store already held this very key under this name.
    Unchanged(String),
}

fn bad(reason: impl Into<String>) -> CustodyError {
    CustodyError::Corrupt {
        path: "key bundle".into(),
        reason: reason.into(),
    }
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

fn derive(passphrase: &str, salt: &[u8], iterations: u32) -> Result<Kek, CustodyError> {
    if passphrase.is_empty() {
        return Err(bad("the bundle passphrase is empty"));
    }
    let mut key = Zeroizing::new(vec![0u8; 32]);
    provider::pbkdf2(
        Prf::HmacSha256,
        passphrase.as_bytes(),
        salt,
        iterations,
        &mut key,
    )?;
    Kek::from_bytes(&key)
}

fn aad(name: &str) -> String {
    format!("bundle:{name}")
}

/// The keys `names` of `store`, sealed under `passphrase`, as a bundle file's bytes.
pub fn export(
    store: &KeyStore,
    names: &[String],
    passphrase: &str,
) -> Result<Vec<u8>, CustodyError> {
    let salt = provider::random_vec(16)?;
    let kek = derive(passphrase, &salt, PASSPHRASE_ITERATIONS)?;
    let mut keys = Vec::new();
    for name in names {
        let stored = store.get(name)?;
        if stored.key.token().is_some() {
            return Err(CustodyError::Unsupported {
                name: name.clone(),
                operation: "be exported".into(),
                kind: "on a PKCS#11 token, which it never leaves (give the other instances the same token)".into(),
            });
        }
        keys.push(BundledKey {
            name: name.clone(),
            spki_sha256: stored.key.spki_sha256(),
            sealed: b64().encode(kek.seal(&aad(name), stored.key.pkcs8_der()?)?),
            chain: stored.chain.iter().map(|c| b64().encode(c)).collect(),
        });
    }
    let file = BundleFile {
        format: FORMAT.into(),
        version: VERSION,
        salt: hex::encode(salt),
        iterations: PASSPHRASE_ITERATIONS,
        keys,
    };
    serde_json::to_vec_pretty(&file).map_err(|e| bad(e.to_string()))
}

/// Stores the keys of `bundle` (a bundle file's bytes) in `store`. Nothing is stored unless
/// every key opens and none clashes with a different key of the same name.
pub fn import(
    store: &KeyStore,
    bundle: &[u8],
    passphrase: &str,
) -> Result<Vec<Imported>, CustodyError> {
    let file: BundleFile =
        serde_json::from_slice(bundle).map_err(|e| bad(format!("not a key bundle: {e}")))?;
    if file.format != FORMAT || file.version != VERSION {
        return Err(bad(format!(
            "format {:?} version {} is not one this certconn reads ({FORMAT} {VERSION})",
            file.format, file.version
        )));
    }
    let salt = hex::decode(&file.salt).map_err(|e| bad(format!("salt: {e}")))?;
    if file.iterations < 100_000 {
        return Err(bad(format!(
            "{} PBKDF2 iterations is too few to trust",
            file.iterations
        )));
    }
    let kek = derive(passphrase, &salt, file.iterations)?;
    let mut opened = Vec::new();
    for k in &file.keys {
        let sealed = b64()
            .decode(&k.sealed)
            .map_err(|e| bad(format!("key {:?}: {e}", k.name)))?;
        let pkcs8 = kek.open(&aad(&k.name), &sealed).ok_or_else(|| {
            CustodyError::WrongKek(format!(
                "the passphrase does not open key {:?} of the bundle (or the bundle was altered); nothing was imported",
                k.name
            ))
        })?;
        let key = PrivateKey::from_pkcs8(pkcs8)?;
        if key.spki_sha256() != k.spki_sha256 {
            return Err(bad(format!(
                "key {:?} is not the key its fingerprint names",
                k.name
            )));
        }
        let chain = k
            .chain
            .iter()
            .map(|c| b64().decode(c))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("key {:?} chain: {e}", k.name)))?;
        match store.get(&k.name) {
            Ok(existing) if existing.key.public_key_der() == key.public_key_der() => {
                opened.push((k.name.clone(), None, chain));
            }
            Ok(_) => {
                return Err(CustodyError::Exists(format!(
                    "{} (a different key; delete it first if the bundle's should replace it)",
                    k.name
                )))
            }
            Err(CustodyError::NoSuchKey(_)) => opened.push((k.name.clone(), Some(key), chain)),
            Err(e) => return Err(e),
        }
    }
    let mut done = Vec::new();
    for (name, key, chain) in opened {
        match key {
            Some(key) => {
                store.put(&name, key)?;
                if !chain.is_empty() {
                    store.set_chain(&name, chain)?;
                }
                done.push(Imported::Added(name));
            }
            None => done.push(Imported::Unchanged(name)),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::custody::{CustodyConfig, KeyAlgorithm, KeyLocation};

    fn store(dir: &std::path::Path) -> KeyStore {
        KeyStore::open(dir, &CustodyConfig::default()).unwrap()
    }

    #[test]
    fn a_bundle_carries_keys_and_chains_and_opens_only_with_its_passphrase() {
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (store(a_dir.path()), store(b_dir.path()));
        let ca = a
            .create("ca", KeyAlgorithm::EcP256, KeyLocation::Software)
            .unwrap();
        a.set_chain("ca", vec![vec![0x30, 0x00]]).unwrap();
        a.create("pfx", KeyAlgorithm::Rsa2048, KeyLocation::Software)
            .unwrap();
        let bundle = export(&a, &["ca".into(), "pfx".into()], "correct horse").unwrap();
        let text = String::from_utf8_lossy(&bundle);
        assert!(!text.contains("PRIVATE"), "{text}");

        let e = import(&b, &bundle, "wrong").unwrap_err();
        assert!(matches!(e, CustodyError::WrongKek(_)), "{e}");
        assert!(
            b.list().is_empty(),
            "nothing imported with a wrong passphrase"
        );

        let done = import(&b, &bundle, "correct horse").unwrap();
        assert_eq!(
            done,
            [Imported::Added("ca".into()), Imported::Added("pfx".into())]
        );
        let got = b.get("ca").unwrap();
        assert_eq!(got.key.public_key_der(), ca.key.public_key_der());
        assert_eq!(got.chain, vec![vec![0x30, 0x00]]);
        // Again: nothing changes.
        let again = import(&b, &bundle, "correct horse").unwrap();
        assert_eq!(
            again,
            [
                Imported::Unchanged("ca".into()),
                Imported::Unchanged("pfx".into())
            ]
        );
    }

    #[test]
    fn a_name_held_by_another_key_stops_the_whole_import() {
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (store(a_dir.path()), store(b_dir.path()));
        a.create("ca", KeyAlgorithm::EcP256, KeyLocation::Software)
            .unwrap();
        a.create("zz", KeyAlgorithm::EcP256, KeyLocation::Software)
            .unwrap();
        b.create("zz", KeyAlgorithm::EcP256, KeyLocation::Software)
            .unwrap();
        let bundle = export(&a, &["ca".into(), "zz".into()], "pw").unwrap();
        let e = import(&b, &bundle, "pw").unwrap_err();
        assert!(e.to_string().contains("zz"), "{e}");
        assert!(b.get("ca").is_err(), "the first key was not stored either");
    }

    #[test]
    fn an_altered_bundle_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = store(dir.path());
        a.create("ca", KeyAlgorithm::EcP256, KeyLocation::Software)
            .unwrap();
        let bundle = export(&a, &["ca".into()], "pw").unwrap();
        let mut v: serde_json::Value = serde_json::from_slice(&bundle).unwrap();
        // The sealed key renamed: bound to its name, it no longer opens.
        v["keys"][0]["name"] = "other".into();
        let other = tempfile::tempdir().unwrap();
        let e = import(&store(other.path()), &serde_json::to_vec(&v).unwrap(), "pw").unwrap_err();
        assert!(matches!(e, CustodyError::WrongKek(_)), "{e}");
    }
}
