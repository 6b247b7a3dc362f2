//! Keys on a PKCS#11 token (an HSM, or SoftHSM2 in the tests).
//!
//! Keys are generated on the token as sensitive, non-extractable token objects: the private key
//! never leaves it. The host keeps only the object's `CKA_ID` (in `NAME.p11` beside the software
//! keys, see [`super::store`]) and the public key it reads back. Signing hashes on the host and
//! asks the token for the raw signature (`CKM_ECDSA`, or `CKM_SHA*_RSA_PKCS[_PSS]`); RSA-OAEP
//! decryption asks for `CKM_RSA_PKCS_OAEP` and, on tokens that only do OAEP with SHA-1, for the
//! raw RSA operation with the OAEP decoding done by [`crate::crypto::oaep`].
//!
//! Sessions are pooled: a `Session` may not be shared between threads, and opening one per
//! operation costs more than the operation. The user login is per application, so one login
//! covers every session.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use certconn_x509::{PublicKeyKind, SignatureScheme};
use cryptoki::context::{CInitializeArgs, Pkcs11};
use cryptoki::error::{Error as P11Error, RvError};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use der::asn1::{BitString, Int, ObjectIdentifier, OctetString};
use der::{Decode, Encode};
use serde::Deserialize;
use zeroize::Zeroizing;

use super::{CustodyError, KeyAlgorithm};
use crate::config::ConfigPath;
use crate::crypto::provider::{self, Digest, Padding};
use crate::crypto::{oaep, CryptoError};

const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");

/// `[custody.pkcs11]`: which module and token hold the `store = "pkcs11"` keys.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Config {
    /// The vendor's PKCS#11 library, e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: ConfigPath,
    /// The token's label (`softhsm2-util --show-slots` shows it).
    pub token_label: String,
    /// Environment variable holding the user PIN.
    #[serde(default = "default_pin_env")]
    pub pin_env: String,
    /// A file holding the user PIN (mode 0600/0400) instead of the environment.
    pub pin_file: Option<ConfigPath>,
    /// A systemd credential holding the user PIN (`LoadCredential=NAME:FILE` in the unit), instead
    /// of the environment: the way to hand a service a secret without a file it can always read.
    pub pin_credential: Option<String>,
}

fn default_pin_env() -> String {
    "CERTCONN_PKCS11_PIN".into()
}

fn token_error(token: &str, what: &str) -> impl FnOnce(P11Error) -> CustodyError {
    let (token, what) = (token.to_owned(), what.to_owned());
    move |e| CustodyError::Token {
        token,
        reason: format!("{what}: {e}"),
    }
}

/// An open, logged-in token.
pub struct Token {
    ctx: Pkcs11,
    slot: Slot,
    label: String,
    /// The module's path, for what an error says about it.
    module: PathBuf,
    sessions: Mutex<Vec<Session>>,
    /// Cleared the first time the token refuses OAEP with a SHA-2 hash.
    native_oaep_sha2: AtomicBool,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token({:?})", self.label)
    }
}

/// A session borrowed from the pool; returned to it on drop.
struct Lease<'a> {
    token: &'a Token,
    session: Option<Session>,
}

impl std::ops::Deref for Lease<'_> {
    type Target = Session;
    fn deref(&self) -> &Session {
        self.session
            .as_ref()
            .expect("a lease holds its session until dropped")
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            self.token
                .sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(s);
        }
    }
}

impl Token {
    /// Loads the module, finds the token by label and logs in as the user.
    pub fn open(config: &Pkcs11Config) -> Result<Arc<Self>, CustodyError> {
        let label = config.token_label.clone();
        let err = |what: &str| token_error(&label, what);
        let ctx = Pkcs11::new(&config.module).map_err(|e| CustodyError::Token {
            token: label.clone(),
            reason: format!("loading PKCS#11 module {}: {e}", config.module.display()),
        })?;
        match ctx.initialize(CInitializeArgs::OsThreads) {
            Ok(()) | Err(P11Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => {
                // Dropped, the context would finalise a module that never initialised and log
                // that failure as an error of its own, ahead of this one that says why.
                std::mem::forget(ctx);
                return Err(CustodyError::Token {
                    token: label.clone(),
                    reason: format!(
                        "initialising the module {}: {e}{}",
                        config.module.display(),
                        module_hint(&config.module)
                    ),
                });
            }
        }
        let mut slot = None;
        for s in ctx
            .get_slots_with_initialized_token()
            .map_err(err("listing slots"))?
        {
            let info = ctx.get_token_info(s).map_err(err("reading token info"))?;
            if info.label().trim_end() == label {
                slot = Some(s);
                break;
            }
        }
        let slot = slot.ok_or_else(|| CustodyError::Token {
            token: label.clone(),
            reason: format!(
                "no initialised token with this label in {}{}",
                config.module.display(),
                module_hint(&config.module)
            ),
        })?;
        let pin = read_pin(config)?;
        let session = ctx
            .open_rw_session(slot)
            .map_err(err("opening a session"))?;
        match session.login(UserType::User, Some(&pin)) {
            Ok(()) | Err(P11Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(P11Error::Pkcs11(RvError::PinIncorrect, _)) => {
                return Err(CustodyError::Token {
                    token: label,
                    reason: "the PIN is incorrect".into(),
                })
            }
            Err(e) => return Err(err("logging in")(e)),
        }
        Ok(Arc::new(Self {
            ctx,
            slot,
            label: config.token_label.clone(),
            module: config.module.to_path_buf(),
            sessions: Mutex::new(vec![session]),
            native_oaep_sha2: AtomicBool::new(true),
        }))
    }

    /// The token's label, for listings and errors.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The error for a refused `what` that stores an object on the token: with SoftHSM2, what
    /// this process may not write when that is the cause (the module says only
    /// `CKR_GENERAL_ERROR`).
    fn store_error(&self, what: &str) -> impl FnOnce(P11Error) -> CustodyError {
        let label = self.label.clone();
        let what = what.to_owned();
        let module = self.module.clone();
        move |e| CustodyError::Token {
            token: label,
            reason: format!(
                "{what}: {e}{}",
                super::softhsm::is_module(&module)
                    .then(|| super::softhsm::why_not_stored(&module))
                    .flatten()
                    .unwrap_or_default()
            ),
        }
    }

    fn session(&self) -> Result<Lease<'_>, CustodyError> {
        let pooled = self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop();
        let session = match pooled {
            Some(s) => s,
            None => self
                .ctx
                .open_rw_session(self.slot)
                .map_err(token_error(&self.label, "opening a session"))?,
        };
        Ok(Lease {
            token: self,
            session: Some(session),
        })
    }

    /// Generates a key pair on the token; `id` becomes its `CKA_ID` and `name` its label.
    pub fn generate(
        self: &Arc<Self>,
        name: &str,
        id: &[u8],
        alg: KeyAlgorithm,
    ) -> Result<TokenKey, CustodyError> {
        let session = self.session()?;
        let common_public = vec![
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Label(name.as_bytes().to_vec()),
            Attribute::Id(id.to_vec()),
            Attribute::Verify(true),
        ];
        let common_private = vec![
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Label(name.as_bytes().to_vec()),
            Attribute::Id(id.to_vec()),
            Attribute::Sign(true),
        ];
        let (mechanism, mut public, mut private) = match alg {
            KeyAlgorithm::EcP256 | KeyAlgorithm::EcP384 => {
                let curve = if alg == KeyAlgorithm::EcP256 {
                    SECP256R1
                } else {
                    SECP384R1
                };
                let params = curve.to_der().map_err(|e| CustodyError::Token {
                    token: self.label.clone(),
                    reason: format!("encoding the curve: {e}"),
                })?;
                (
                    Mechanism::EccKeyPairGen,
                    vec![Attribute::EcParams(params)],
                    vec![],
                )
            }
            KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => {
                let bits: u64 = match alg {
                    KeyAlgorithm::Rsa2048 => 2048,
                    KeyAlgorithm::Rsa3072 => 3072,
                    _ => 4096,
                };
                (
                    Mechanism::RsaPkcsKeyPairGen,
                    vec![
                        Attribute::ModulusBits(bits.into()),
                        Attribute::PublicExponent(vec![0x01, 0x00, 0x01]),
                        Attribute::Encrypt(true),
                    ],
                    vec![Attribute::Decrypt(true)],
                )
            }
        };
        public.extend(common_public);
        private.extend(common_private);
        let (_, private_handle) = session
            .generate_key_pair(&mechanism, &public, &private)
            .map_err(self.store_error(&format!("generating a {alg} key")))?;
        drop(session);
        self.key_from_handle(private_handle, id)
    }

    /// Puts an existing software key on the token as a key pair: the private half sensitive
    /// and not extractable (`CKA_SENSITIVE`, `CKA_EXTRACTABLE` false), `id` its `CKA_ID` and
    /// `name` its label — for `certconn keys migrate`. The token must confirm both attributes;
    /// if it does not, the objects are destroyed and the migration refused. A key made outside
    /// a token can never be `CKA_NEVER_EXTRACTABLE`: the software copy is the caller's to
    /// destroy.
    pub fn import(
        self: &Arc<Self>,
        name: &str,
        id: &[u8],
        key: &super::PrivateKey,
    ) -> Result<TokenKey, CustodyError> {
        let refused = |reason: String| CustodyError::Token {
            token: self.label.clone(),
            reason,
        };
        let pkcs8 = key
            .pkcs8_der()
            .map_err(|e| refused(format!("the key to import: {e}")))?;
        let info = pkcs8::PrivateKeyInfo::from_der(pkcs8)
            .map_err(|e| refused(format!("the key to import is not PKCS#8: {e}")))?;
        let spki = spki::SubjectPublicKeyInfoRef::from_der(key.public_key_der())
            .map_err(|e| refused(format!("the key's public half: {e}")))?;
        let common_public = vec![
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Label(name.as_bytes().to_vec()),
            Attribute::Id(id.to_vec()),
            Attribute::Verify(true),
        ];
        let common_private = vec![
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Label(name.as_bytes().to_vec()),
            Attribute::Id(id.to_vec()),
            Attribute::Sign(true),
        ];
        let material = ImportMaterial::of(&info, &spki).map_err(refused)?;
        let (mut public, mut private) = material.attributes();
        public.extend(common_public);
        private.extend(common_private);
        let session = self.session()?;
        let public_handle = session
            .create_object(&public)
            .map_err(self.store_error("creating the public key"))?;
        let created = session.create_object(&private);
        // The template held the private key's components: wipe them now.
        for a in &mut private {
            if let Attribute::Value(v)
            | Attribute::PrivateExponent(v)
            | Attribute::Prime1(v)
            | Attribute::Prime2(v)
            | Attribute::Exponent1(v)
            | Attribute::Exponent2(v)
            | Attribute::Coefficient(v) = a
            {
                zeroize::Zeroize::zeroize(v);
            }
        }
        let private_handle = match created {
            Ok(h) => h,
            Err(e) => {
                let _ = session.destroy_object(public_handle);
                return Err(self.store_error("creating the private key")(e));
            }
        };
        let kept = session
            .get_attributes(
                private_handle,
                &[AttributeType::Sensitive, AttributeType::Extractable],
            )
            .map_err(token_error(&self.label, "reading the new key's attributes"))?;
        let protected = kept.contains(&Attribute::Sensitive(true))
            && kept.contains(&Attribute::Extractable(false));
        if !protected {
            let _ = session.destroy_object(private_handle);
            let _ = session.destroy_object(public_handle);
            return Err(refused(
                "the token did not keep the imported key sensitive and non-extractable; it was removed again".into(),
            ));
        }
        drop(session);
        self.key_from_handle(private_handle, id)
    }

    /// The key pair whose `CKA_ID` is `id`.
    pub fn find(self: &Arc<Self>, id: &[u8]) -> Result<TokenKey, CustodyError> {
        let session = self.session()?;
        let found = session
            .find_objects(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::Id(id.to_vec()),
            ])
            .map_err(token_error(&self.label, "finding a key"))?;
        drop(session);
        match found.as_slice() {
            [handle] => self.key_from_handle(*handle, id),
            [] => Err(CustodyError::Token {
                token: self.label.clone(),
                reason: format!(
                    "no private key with CKA_ID {} on the token",
                    hex::encode(id)
                ),
            }),
            _ => Err(CustodyError::Token {
                token: self.label.clone(),
                reason: format!(
                    "{} private keys share CKA_ID {}",
                    found.len(),
                    hex::encode(id)
                ),
            }),
        }
    }

    /// Destroys the key pair whose `CKA_ID` is `id`. Missing objects are not an error.
    pub fn destroy(&self, id: &[u8]) -> Result<(), CustodyError> {
        let session = self.session()?;
        let handles = session
            .find_objects(&[Attribute::Id(id.to_vec())])
            .map_err(token_error(&self.label, "finding a key"))?;
        for h in handles {
            session
                .destroy_object(h)
                .map_err(token_error(&self.label, "destroying a key"))?;
        }
        Ok(())
    }

    fn key_from_handle(
        self: &Arc<Self>,
        private: ObjectHandle,
        id: &[u8],
    ) -> Result<TokenKey, CustodyError> {
        let session = self.session()?;
        let publics = session
            .find_objects(&[
                Attribute::Class(ObjectClass::PUBLIC_KEY),
                Attribute::Id(id.to_vec()),
            ])
            .map_err(token_error(&self.label, "finding the public key"))?;
        let public = *publics.first().ok_or_else(|| CustodyError::Token {
            token: self.label.clone(),
            reason: format!("no public key with CKA_ID {}", hex::encode(id)),
        })?;
        let attrs = session
            .get_attributes(
                public,
                &[
                    AttributeType::KeyType,
                    AttributeType::Modulus,
                    AttributeType::PublicExponent,
                    AttributeType::EcParams,
                    AttributeType::EcPoint,
                ],
            )
            .map_err(token_error(&self.label, "reading the public key"))?;
        let spki = spki_from_attributes(&attrs).map_err(|reason| CustodyError::Token {
            token: self.label.clone(),
            reason,
        })?;
        let (_, kind) = PublicKeyKind::of_der(&spki).map_err(|e| CustodyError::Token {
            token: self.label.clone(),
            reason: format!("the public key: {e}"),
        })?;
        Ok(TokenKey {
            token: self.clone(),
            handle: private,
            kind,
            spki,
        })
    }
}

/// Why a module initialises without the token, or not at all. The usual cause is that
/// certconn runs without the files or environment the module needs, or may not read them;
/// for SoftHSM2 those are known and looked at ([`super::softhsm::why_no_token`]).
fn module_hint(module: &std::path::Path) -> String {
    if super::softhsm::is_module(module) {
        super::softhsm::why_no_token(module)
    } else {
        " (if the module needs its own configuration file or environment, check that certconn's \
         environment has it and that the user certconn runs as may read it)"
            .into()
    }
}

fn read_pin(config: &Pkcs11Config) -> Result<AuthPin, CustodyError> {
    const WHAT: &str = "the PKCS#11 user PIN (custody.pkcs11.pin_env, pin_file or pin_credential)";
    let text = match (&config.pin_file, &config.pin_credential) {
        (Some(_), Some(_)) => Err(crate::secret::SecretError::TwoSources { what: WHAT.into() }),
        (Some(path), None) => crate::secret::read_text(WHAT, None, Some(path)),
        (None, Some(name)) => {
            let path =
                crate::secret::systemd_credential(name).map_err(|why| CustodyError::Token {
                    token: config.token_label.clone(),
                    reason: format!("custody.pkcs11.pin_credential: {why}"),
                })?;
            crate::secret::read_text(WHAT, None, Some(&path))
        }
        (None, None) => crate::secret::read_text(WHAT, Some(&config.pin_env), None),
    }?;
    Ok(AuthPin::new(text.as_str().into()))
}

/// The PKCS#11 attributes of a software key about to be imported.
enum ImportMaterial {
    Ec {
        params: Vec<u8>,
        point: Vec<u8>,
        value: Zeroizing<Vec<u8>>,
    },
    Rsa {
        public: [Vec<u8>; 2],
        private: Zeroizing<Vec<Vec<u8>>>,
    },
}

/// RFC 8017 RSAPrivateKey.
#[derive(der::Sequence)]
struct RsaPrivateKey<'a> {
    version: u8,
    modulus: der::asn1::UintRef<'a>,
    public_exponent: der::asn1::UintRef<'a>,
    private_exponent: der::asn1::UintRef<'a>,
    prime1: der::asn1::UintRef<'a>,
    prime2: der::asn1::UintRef<'a>,
    exponent1: der::asn1::UintRef<'a>,
    exponent2: der::asn1::UintRef<'a>,
    coefficient: der::asn1::UintRef<'a>,
}

/// RFC 5915 ECPrivateKey (the parameters and public key, when present, are not needed: the
/// curve is in the PKCS#8 algorithm, the point in the key's SubjectPublicKeyInfo).
#[derive(der::Sequence)]
struct EcPrivateKey<'a> {
    version: u8,
    private_key: der::asn1::OctetStringRef<'a>,
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
    parameters: Option<ObjectIdentifier>,
    #[asn1(context_specific = "1", tag_mode = "EXPLICIT", optional = "true")]
    public_key: Option<der::asn1::BitStringRef<'a>>,
}

impl ImportMaterial {
    fn of(
        info: &pkcs8::PrivateKeyInfo<'_>,
        spki: &spki::SubjectPublicKeyInfoRef<'_>,
    ) -> Result<Self, String> {
        let bad = |what: &str, e: der::Error| format!("the key to import: {what}: {e}");
        match info.algorithm.oid {
            EC_PUBLIC_KEY => {
                let curve: ObjectIdentifier = info
                    .algorithm
                    .parameters_oid()
                    .map_err(|e| format!("the key to import has no named curve: {e}"))?;
                let ec =
                    EcPrivateKey::from_der(info.private_key).map_err(|e| bad("ECPrivateKey", e))?;
                let point = spki
                    .subject_public_key
                    .as_bytes()
                    .ok_or("the key's public point is not whole bytes")?;
                Ok(Self::Ec {
                    params: curve.to_der().map_err(|e| bad("the curve", e))?,
                    point: OctetString::new(point)
                        .and_then(|o| o.to_der())
                        .map_err(|e| bad("the point", e))?,
                    value: Zeroizing::new(ec.private_key.as_bytes().to_vec()),
                })
            }
            RSA_ENCRYPTION => {
                let rsa = RsaPrivateKey::from_der(info.private_key)
                    .map_err(|e| bad("RSAPrivateKey", e))?;
                Ok(Self::Rsa {
                    public: [
                        rsa.modulus.as_bytes().to_vec(),
                        rsa.public_exponent.as_bytes().to_vec(),
                    ],
                    private: Zeroizing::new(
                        [
                            rsa.private_exponent,
                            rsa.prime1,
                            rsa.prime2,
                            rsa.exponent1,
                            rsa.exponent2,
                            rsa.coefficient,
                        ]
                        .iter()
                        .map(|v| v.as_bytes().to_vec())
                        .collect(),
                    ),
                })
            }
            other => Err(format!(
                "the key to import is of algorithm {other}, which certconn does not put on tokens"
            )),
        }
    }

    /// (public template, private template) for these keys.
    fn attributes(&self) -> (Vec<Attribute>, Vec<Attribute>) {
        match self {
            Self::Ec {
                params,
                point,
                value,
            } => (
                vec![
                    Attribute::KeyType(KeyType::EC),
                    Attribute::EcParams(params.clone()),
                    Attribute::EcPoint(point.clone()),
                ],
                vec![
                    Attribute::KeyType(KeyType::EC),
                    Attribute::EcParams(params.clone()),
                    Attribute::Value(value.to_vec()),
                ],
            ),
            Self::Rsa { public, private } => (
                vec![
                    Attribute::KeyType(KeyType::RSA),
                    Attribute::Modulus(public[0].clone()),
                    Attribute::PublicExponent(public[1].clone()),
                    Attribute::Encrypt(true),
                ],
                vec![
                    Attribute::KeyType(KeyType::RSA),
                    Attribute::Modulus(public[0].clone()),
                    Attribute::PublicExponent(public[1].clone()),
                    Attribute::PrivateExponent(private[0].clone()),
                    Attribute::Prime1(private[1].clone()),
                    Attribute::Prime2(private[2].clone()),
                    Attribute::Exponent1(private[3].clone()),
                    Attribute::Exponent2(private[4].clone()),
                    Attribute::Coefficient(private[5].clone()),
                    Attribute::Decrypt(true),
                ],
            ),
        }
    }
}

/// Builds a DER SubjectPublicKeyInfo from the token's public-key attributes.
fn spki_from_attributes(attrs: &[Attribute]) -> Result<Vec<u8>, String> {
    let mut key_type = None;
    let (mut n, mut e, mut params, mut point) = (None, None, None, None);
    for a in attrs {
        match a {
            Attribute::KeyType(t) => key_type = Some(*t),
            Attribute::Modulus(v) => n = Some(v.clone()),
            Attribute::PublicExponent(v) => e = Some(v.clone()),
            Attribute::EcParams(v) => params = Some(v.clone()),
            Attribute::EcPoint(v) => point = Some(v.clone()),
            _ => {}
        }
    }
    let enc = |e: der::Error| format!("encoding the public key: {e}");
    let (alg, parameters, key_bits) = match key_type {
        Some(KeyType::RSA) => {
            let (Some(n), Some(e)) = (n, e) else {
                return Err("RSA public key without modulus or exponent".into());
            };
            let rsa_public_key = der::asn1::SequenceOf::<Int, 2>::new();
            let mut seq = rsa_public_key;
            for v in [n, e] {
                seq.add(Int::new(&unsigned(&v)).map_err(enc)?)
                    .map_err(enc)?;
            }
            (
                RSA_ENCRYPTION,
                der::asn1::Any::from(der::asn1::Null),
                seq.to_der().map_err(enc)?,
            )
        }
        Some(KeyType::EC) => {
            let (Some(params), Some(point)) = (params, point) else {
                return Err("EC public key without parameters or point".into());
            };
            // CKA_EC_POINT is the DER OCTET STRING holding the point (PKCS#11 2.40+).
            let point = OctetString::from_der(&point)
                .map(|o| o.as_bytes().to_vec())
                .unwrap_or(point);
            (
                EC_PUBLIC_KEY,
                der::asn1::Any::from_der(&params).map_err(enc)?,
                point,
            )
        }
        other => return Err(format!("unsupported key type {other:?}")),
    };
    spki::SubjectPublicKeyInfoOwned {
        algorithm: spki::AlgorithmIdentifierOwned {
            oid: alg,
            parameters: Some(parameters),
        },
        subject_public_key: BitString::from_bytes(&key_bits).map_err(enc)?,
    }
    .to_der()
    .map_err(enc)
}

/// A big-endian unsigned integer as DER INTEGER content (a leading zero when the top bit is set).
fn unsigned(v: &[u8]) -> Vec<u8> {
    let trimmed: &[u8] = {
        let start = v
            .iter()
            .position(|&b| b != 0)
            .unwrap_or(v.len().saturating_sub(1));
        &v[start..]
    };
    let mut out = Vec::with_capacity(trimmed.len() + 1);
    if trimmed.first().is_some_and(|b| b & 0x80 != 0) {
        out.push(0);
    }
    out.extend_from_slice(trimmed);
    out
}

/// A private key on a token: a handle, its public key, and the token to ask.
#[derive(Clone)]
pub struct TokenKey {
    token: Arc<Token>,
    handle: ObjectHandle,
    kind: PublicKeyKind,
    spki: Vec<u8>,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TokenKey({}, {})",
            self.token.label,
            self.kind.describe()
        )
    }
}

impl TokenKey {
    pub fn public_key_der(&self) -> &[u8] {
        &self.spki
    }

    pub fn kind(&self) -> PublicKeyKind {
        self.kind
    }

    pub fn token_label(&self) -> &str {
        self.token.label()
    }

    fn failed(&self, what: &str) -> impl FnOnce(P11Error) -> CryptoError {
        let message = format!("token {:?}: {what}", self.token.label);
        move |e| CryptoError::Failed(format!("{message}: {e}"))
    }

    fn session(&self) -> Result<Lease<'_>, CryptoError> {
        self.token
            .session()
            .map_err(|e| CryptoError::Failed(e.to_string()))
    }

    /// Signs `message` with `scheme`, which the caller checked fits the key. The result is in
    /// the X.509 encoding (DER ECDSA-Sig-Value for ECDSA).
    pub fn sign(&self, scheme: SignatureScheme, message: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let session = self.session()?;
        let pss = |hash_alg, mgf, s_len| PkcsPssParams {
            hash_alg,
            mgf,
            s_len: cryptoki::types::Ulong::from(s_len),
        };
        match scheme {
            SignatureScheme::EcdsaP256Sha256 | SignatureScheme::EcdsaP384Sha384 => {
                let digest = if scheme == SignatureScheme::EcdsaP256Sha256 {
                    Digest::Sha256
                } else {
                    Digest::Sha384
                };
                let raw = session
                    .sign(
                        &Mechanism::Ecdsa,
                        self.handle,
                        &provider::digest(digest, message),
                    )
                    .map_err(self.failed("ECDSA signing"))?;
                ecdsa_raw_to_der(&raw)
            }
            SignatureScheme::RsaPkcs1Sha256 => session
                .sign(&Mechanism::Sha256RsaPkcs, self.handle, message)
                .map_err(self.failed("RSA signing")),
            SignatureScheme::RsaPkcs1Sha384 => session
                .sign(&Mechanism::Sha384RsaPkcs, self.handle, message)
                .map_err(self.failed("RSA signing")),
            SignatureScheme::RsaPkcs1Sha512 => session
                .sign(&Mechanism::Sha512RsaPkcs, self.handle, message)
                .map_err(self.failed("RSA signing")),
            SignatureScheme::RsaPssSha256 => session
                .sign(
                    &Mechanism::Sha256RsaPkcsPss(pss(
                        MechanismType::SHA256,
                        PkcsMgfType::MGF1_SHA256,
                        32,
                    )),
                    self.handle,
                    message,
                )
                .map_err(self.failed("RSA-PSS signing")),
            SignatureScheme::RsaPkcs1Sha1 => Err(CryptoError::InvalidInput(
                "custody does not sign with SHA-1".into(),
            )),
        }
    }

    /// Decrypts an RSA key-transport ciphertext on the token.
    pub fn decrypt(
        &self,
        padding: Padding,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let PublicKeyKind::Rsa { bits } = self.kind else {
            return Err(CryptoError::InvalidInput(format!(
                "a {} key cannot decrypt",
                self.kind.describe()
            )));
        };
        let session = self.session()?;
        let digest = match padding.oaep_digest() {
            None => {
                return session
                    .decrypt(&Mechanism::RsaPkcs, self.handle, ciphertext)
                    .map(Zeroizing::new)
                    .map_err(self.failed("RSA PKCS#1 decryption"))
            }
            Some(d) => d,
        };
        let (hash, mgf) = match digest {
            Digest::Sha1 => (MechanismType::SHA1, PkcsMgfType::MGF1_SHA1),
            Digest::Sha256 => (MechanismType::SHA256, PkcsMgfType::MGF1_SHA256),
            Digest::Sha384 => (MechanismType::SHA384, PkcsMgfType::MGF1_SHA384),
            Digest::Sha512 => (MechanismType::SHA512, PkcsMgfType::MGF1_SHA512),
        };
        if digest == Digest::Sha1 || self.token.native_oaep_sha2.load(Ordering::Relaxed) {
            let mechanism =
                Mechanism::RsaPkcsOaep(PkcsOaepParams::new(hash, mgf, PkcsOaepSource::empty()));
            match session.decrypt(&mechanism, self.handle, ciphertext) {
                Ok(plain) => return Ok(Zeroizing::new(plain)),
                Err(P11Error::Pkcs11(
                    RvError::ArgumentsBad
                    | RvError::MechanismParamInvalid
                    | RvError::MechanismInvalid,
                    _,
                )) if digest != Digest::Sha1 => {
                    tracing::info!(token = %self.token.label, "the token does not decrypt RSA-OAEP with SHA-2; using its raw RSA operation and decoding OAEP on the host");
                    self.token.native_oaep_sha2.store(false, Ordering::Relaxed);
                }
                Err(e) => return Err(self.failed("RSA-OAEP decryption")(e)),
            }
        }
        let em = Zeroizing::new(
            session
                .decrypt(&Mechanism::RsaX509, self.handle, ciphertext)
                .map_err(self.failed("raw RSA decryption"))?,
        );
        oaep::decode(digest, &em, bits.div_ceil(8))
    }
}

/// Converts a PKCS#11 ECDSA signature (r || s, each the field size) to DER ECDSA-Sig-Value.
fn ecdsa_raw_to_der(raw: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if raw.is_empty() || !raw.len().is_multiple_of(2) {
        return Err(CryptoError::Failed(format!(
            "the token returned a {}-byte ECDSA signature",
            raw.len()
        )));
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    let enc = |e: der::Error| CryptoError::Failed(format!("encoding an ECDSA signature: {e}"));
    let mut seq = der::asn1::SequenceOf::<Int, 2>::new();
    seq.add(Int::new(&unsigned(r)).map_err(enc)?).map_err(enc)?;
    seq.add(Int::new(&unsigned(s)).map_err(enc)?).map_err(enc)?;
    seq.to_der().map_err(enc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsigned_integers_get_a_sign_byte_only_when_needed() {
        assert_eq!(unsigned(&[0x00, 0x00, 0x7f]), vec![0x7f]);
        assert_eq!(unsigned(&[0x00, 0x80]), vec![0x00, 0x80]);
        assert_eq!(unsigned(&[0x00, 0x00]), vec![0x00]);
    }

    #[test]
    fn raw_ecdsa_signature_becomes_der_that_verifies() {
        // Sign with a software key, take r||s apart from its DER, and rebuild it.
        let key = super::super::PrivateKey::generate(KeyAlgorithm::EcP256).unwrap();
        let der_sig = key.sign(SignatureScheme::EcdsaP256Sha256, b"m").unwrap();
        let seq = der::asn1::SequenceOf::<der::asn1::UintRef, 2>::from_der(&der_sig).unwrap();
        let mut raw = Vec::new();
        for i in seq.iter() {
            let mut b = vec![0u8; 32 - i.as_bytes().len()];
            b.extend_from_slice(i.as_bytes());
            raw.extend(b);
        }
        let rebuilt = ecdsa_raw_to_der(&raw).unwrap();
        assert!(provider::verify(
            key.public_key_der(),
            SignatureScheme::EcdsaP256Sha256,
            b"m",
            &rebuilt
        )
        .unwrap());
        assert!(ecdsa_raw_to_der(&raw[1..]).is_err());
    }
}
