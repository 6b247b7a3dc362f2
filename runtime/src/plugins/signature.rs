//! Publisher signatures on plugin packages.
//!
//! A package may carry its publisher's signature as its last top-level custom section,
//! `certconn-signature`: the publisher's public key (ECDSA P-256, DER SubjectPublicKeyInfo) and
//! an ECDSA P-256 / SHA-256 signature over every byte of the package before that section, with
//! a domain prefix so the signature means "this is a certconn plugin" and nothing else.
//! Verification runs in the host's crypto provider, so it is FIPS-clean in the FIPS build.
//!
//! The signature proves who made the bytes; *trust* is the administrator's: `[plugins]
//! trusted_publishers` (or a backend's own list) names the publishers' public keys. With a list
//! in force, a package that is unsigned, signed by another key, or changed after signing is
//! never loaded. The keys are ordinary P-256 key pairs, so the same key can sign a plugin's
//! target in an update feed: a plugin is trusted the same way however it arrives.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use certconn_x509::SignatureScheme;
use wasmparser::{Parser, Payload};

use crate::crypto::provider::{self, Digest};
use crate::custody::PrivateKey;

/// The custom section that carries the signature.
pub const SECTION: &str = "certconn-signature";

/// What the signature covers, before the package bytes.
const DOMAIN: &[u8] = b"certconn plugin package signature v1\0";

/// The one algorithm: approved in FIPS mode, and what the update feed's keys use.
const ALGORITHM: &str = "ecdsa-p256-sha256";

/// Why a signature cannot be made, read or trusted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    #[error("{0}")]
    NotWasm(String),
    #[error("its {SECTION} section is not the last section: something was added after signing")]
    NotLast,
    #[error("its {SECTION} section is malformed: {0}")]
    Malformed(String),
    #[error(
        "its publisher signature does not verify: the package was changed after it was signed"
    )]
    Invalid,
    #[error("{path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("signing: {0}")]
    Sign(String),
}

/// Who signed a package (the signature verified).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signer {
    /// SHA-256 of the publisher's public key (DER), hex: how config, status and logs name it.
    pub fingerprint: String,
}

/// A publisher an administrator trusts: a P-256 public key from a PEM file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publisher {
    pub path: PathBuf,
    pub fingerprint: String,
}

/// The fingerprint of a DER SubjectPublicKeyInfo.
pub fn fingerprint(spki: &[u8]) -> String {
    hex::encode(provider::digest(Digest::Sha256, spki))
}

impl Publisher {
    /// Reads a publisher's public key (`-----BEGIN PUBLIC KEY-----`, P-256).
    pub fn load(path: &Path) -> Result<Self, SignatureError> {
        let bad = |reason: String| SignatureError::Key {
            path: path.to_owned(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let spki = certconn_x509::pem::decode_all(&text)
            .map_err(|e| bad(e.to_string()))?
            .into_iter()
            .find(|(label, _)| label == "PUBLIC KEY")
            .map(|(_, der)| der)
            .ok_or_else(|| {
                bad("no PUBLIC KEY block (a publisher key is the .pub file `certconn plugin keygen` wrote)".into())
            })?;
        is_p256(&spki).map_err(bad)?;
        Ok(Self {
            path: path.to_owned(),
            fingerprint: fingerprint(&spki),
        })
    }
}

fn is_p256(spki: &[u8]) -> Result<(), String> {
    use der::Decode;
    let info = spki::SubjectPublicKeyInfoRef::from_der(spki)
        .map_err(|e| format!("not a public key: {e}"))?;
    let p256 = der::oid::ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
    let curve = info
        .algorithm
        .parameters
        .and_then(|p| p.decode_as::<der::oid::ObjectIdentifier>().ok());
    if curve != Some(p256) {
        return Err("not an ECDSA P-256 key: publisher keys are P-256".into());
    }
    Ok(())
}

/// Where a package's signature section starts, and its contents, if it has one.
fn find(bytes: &[u8]) -> Result<Option<(usize, &[u8])>, SignatureError> {
    let mut depth = 0usize;
    let mut found = None;
    super::package::check_magic(bytes).map_err(|e| SignatureError::NotWasm(e.to_string()))?;
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload
            .map_err(|e| SignatureError::NotWasm(format!("not a WebAssembly component: {e}")))?;
        match &payload {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::CustomSection(c) if depth == 0 && c.name() == SECTION => {
                if found.is_some() {
                    return Err(SignatureError::Malformed("it appears twice".into()));
                }
                let range = c.range();
                let start = super::package::section_start(bytes, range.start)
                    .map_err(|e| SignatureError::Malformed(e.to_string()))?;
                if range.end != bytes.len() {
                    return Err(SignatureError::NotLast);
                }
                found = Some((start, c.data()));
            }
            _ => {}
        }
    }
    Ok(found)
}

/// The package without its signature section.
pub fn unsigned(bytes: &[u8]) -> Result<&[u8], SignatureError> {
    Ok(match find(bytes)? {
        Some((start, _)) => &bytes[..start],
        None => bytes,
    })
}

fn message(unsigned: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + unsigned.len());
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(unsigned);
    m
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Section {
    algorithm: String,
    /// Base64 DER SubjectPublicKeyInfo.
    public_key: String,
    /// Base64 DER ECDSA signature.
    signature: String,
}

/// `package` signed by `key` (a P-256 key), replacing any signature it had.
pub fn sign(package: &[u8], key: &PrivateKey) -> Result<Vec<u8>, SignatureError> {
    is_p256(key.public_key_der()).map_err(SignatureError::Sign)?;
    let body = unsigned(package)?;
    let signature = key
        .sign(SignatureScheme::EcdsaP256Sha256, &message(body))
        .map_err(|e| SignatureError::Sign(e.to_string()))?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let section = toml::to_string(&Section {
        algorithm: ALGORITHM.into(),
        public_key: b64.encode(key.public_key_der()),
        signature: b64.encode(signature),
    })
    .map_err(|e| SignatureError::Sign(e.to_string()))?;
    let mut out = body.to_vec();
    super::package::append_custom_section(&mut out, SECTION, section.as_bytes());
    Ok(out)
}

/// Who signed `package`, after checking the signature; `None` when it is unsigned. A signature
/// that does not verify is an error, whoever is trusted.
pub fn signer_of(package: &[u8]) -> Result<Option<Signer>, SignatureError> {
    let Some((start, data)) = find(package)? else {
        return Ok(None);
    };
    let text = std::str::from_utf8(data).map_err(|e| SignatureError::Malformed(e.to_string()))?;
    let section: Section =
        toml::from_str(text).map_err(|e| SignatureError::Malformed(e.message().to_owned()))?;
    if section.algorithm != ALGORITHM {
        return Err(SignatureError::Malformed(format!(
            "algorithm {:?}; certconn verifies {ALGORITHM}",
            section.algorithm
        )));
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let spki = b64
        .decode(&section.public_key)
        .map_err(|e| SignatureError::Malformed(format!("public_key: {e}")))?;
    let signature = b64
        .decode(&section.signature)
        .map_err(|e| SignatureError::Malformed(format!("signature: {e}")))?;
    is_p256(&spki).map_err(SignatureError::Malformed)?;
    match provider::verify(
        &spki,
        SignatureScheme::EcdsaP256Sha256,
        &message(&package[..start]),
        &signature,
    ) {
        Ok(true) => Ok(Some(Signer {
            fingerprint: fingerprint(&spki),
        })),
        _ => Err(SignatureError::Invalid),
    }
}

/// The publishers each backend trusts, loaded from the config's key files.
#[derive(Clone, Debug, Default)]
pub struct PublisherTrust {
    global: Vec<Publisher>,
    own: std::collections::BTreeMap<String, Vec<Publisher>>,
}

impl PublisherTrust {
    /// Reads `plugins.trusted_publishers` and each backend's own list. A key file that is
    /// missing or not a P-256 public key is an error naming the setting.
    pub fn load(
        global: &[toml::Spanned<crate::config::ConfigPath>],
        backends: &std::collections::BTreeMap<String, super::settings::BackendConfig>,
    ) -> Result<Self, (String, SignatureError)> {
        let read = |setting: String, paths: &[toml::Spanned<crate::config::ConfigPath>]| {
            paths
                .iter()
                .map(|p| Publisher::load(p.get_ref().as_path()).map_err(|e| (setting.clone(), e)))
                .collect::<Result<Vec<_>, _>>()
        };
        let mut own = std::collections::BTreeMap::new();
        for (name, b) in backends {
            if let Some(list) = &b.trusted_publishers {
                own.insert(
                    name.clone(),
                    read(format!("backends.{name}.trusted_publishers"), list)?,
                );
            }
        }
        Ok(Self {
            global: read("plugins.trusted_publishers".into(), global)?,
            own,
        })
    }

    /// The publishers `backend` trusts: its own list if it has one, else the global one.
    pub fn for_backend(&self, backend: &str) -> &[Publisher] {
        self.own.get(backend).unwrap_or(&self.global)
    }
}

/// Whether a package signed by `signer` (or unsigned) may serve a backend that trusts
/// `trusted`; an empty list means any package may load (signed or not).
pub fn check_trust(signer: Option<&Signer>, trusted: &[Publisher]) -> Result<(), String> {
    if trusted.is_empty() {
        return Ok(());
    }
    let names = || {
        trusted
            .iter()
            .map(|p| format!("{} ({})", &p.fingerprint[..16], p.path.display()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match signer {
        None => Err(format!(
            "it is not signed, and this backend trusts only packages signed by {}",
            names()
        )),
        Some(s) if trusted.iter().any(|p| p.fingerprint == s.fingerprint) => Ok(()),
        Some(s) => Err(format!(
            "it is signed by publisher key {}, which this backend does not trust (trusted: {})",
            &s.fingerprint[..16],
            names()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::custody::KeyAlgorithm;

    /// The smallest component: magic, component layer.
    const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0";

    fn publisher_of(key: &PrivateKey) -> Publisher {
        Publisher {
            path: "vendor.pub".into(),
            fingerprint: fingerprint(key.public_key_der()),
        }
    }

    #[test]
    fn a_signed_package_verifies_and_names_its_publisher() {
        let key = PrivateKey::generate(KeyAlgorithm::EcP256).unwrap();
        let signed = sign(EMPTY_COMPONENT, &key).unwrap();
        wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all())
            .validate_all(&signed)
            .unwrap();
        let signer = signer_of(&signed).unwrap().unwrap();
        assert_eq!(signer.fingerprint, fingerprint(key.public_key_der()));
        assert_eq!(unsigned(&signed).unwrap(), EMPTY_COMPONENT);
        check_trust(Some(&signer), &[publisher_of(&key)]).unwrap();
        // Signing again replaces the signature, not adds one.
        let other = PrivateKey::generate(KeyAlgorithm::EcP256).unwrap();
        let resigned = sign(&signed, &other).unwrap();
        assert_eq!(
            signer_of(&resigned).unwrap().unwrap().fingerprint,
            fingerprint(other.public_key_der())
        );
        assert_eq!(signer_of(EMPTY_COMPONENT).unwrap(), None);
    }

    #[test]
    fn changed_unsigned_and_untrusted_packages_are_refused() {
        let key = PrivateKey::generate(KeyAlgorithm::EcP256).unwrap();
        let trusted = [publisher_of(&key)];
        let mut changed = sign(EMPTY_COMPONENT, &key).unwrap();
        changed[6] ^= 1; // inside the signed bytes (the layer field)
        assert!(signer_of(&changed).is_err());

        let mut appended = sign(EMPTY_COMPONENT, &key).unwrap();
        super::super::package::append_custom_section(&mut appended, "later", b"x");
        assert!(matches!(signer_of(&appended), Err(SignatureError::NotLast)));

        let e = check_trust(None, &trusted).unwrap_err();
        assert!(e.contains("not signed"), "{e}");
        let stranger = PrivateKey::generate(KeyAlgorithm::EcP256).unwrap();
        let theirs = signer_of(&sign(EMPTY_COMPONENT, &stranger).unwrap())
            .unwrap()
            .unwrap();
        let e = check_trust(Some(&theirs), &trusted).unwrap_err();
        assert!(e.contains("does not trust"), "{e}");
        check_trust(None, &[]).expect("no list: anything loads");

        let rsa = PrivateKey::generate(KeyAlgorithm::Rsa2048).unwrap();
        assert!(sign(EMPTY_COMPONENT, &rsa).is_err());
    }
}
