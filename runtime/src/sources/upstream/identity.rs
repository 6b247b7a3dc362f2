//! The connector's identity towards its upstream service: a key certconn makes in custody
//! (software or PKCS#11, never granted to a plugin) and the certificate the service issued for
//! it. `certconn upstream register` trades a one-time enrolment token and a CSR for the first
//! certificate; every later call is mutual TLS with it, the key signing the handshake through
//! custody; the daemon renews it at two thirds of its lifetime with a fresh key.
//!
//! Each generation of the key is its own custody key, `upstream-identity.<ms>`: a renewal
//! makes the next one beside the current and removes the old only once the new certificate is
//! in custody, so a renewal that fails midway (the service away, a crash) leaves the current
//! identity working. At start the newest key with a certificate is the identity.
//!
//! An identity the service no longer accepts (revoked: a 401 with the code
//! [`certconn_connector::IDENTITY_REFUSED`]) or that expired is a state, "re-register", with
//! one event: the connector stops calling instead of retrying into the same refusal.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use certconn_connector::{IdentityAnswer, IdentityRequest, BASE, TOKEN_REFUSED};
use certconn_x509::PublicKeyKind;
use hyper::{Method, StatusCode};
use rustls::client::ResolvesClientCert;
use rustls::pki_types::CertificateDer;
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::client::{Credentials, ServiceClient};
use crate::custody::{CustodyError, KeyAlgorithm, KeyLocation, KeyStore, StoredKey};

/// The custody name of every identity key generation: `upstream-identity.<ms>`.
pub const KEY_PREFIX: &str = "upstream-identity";

/// Where the registration is recorded: the service and the connector id it gave.
pub fn registration_file(data_dir: &Path) -> PathBuf {
    data_dir.join("upstream-registration.json")
}

/// The service's CA certificates from the registration answer: the anchors of later calls
/// when `upstream.trust_anchors` names none.
pub fn service_ca_file(data_dir: &Path) -> PathBuf {
    data_dir.join("upstream-service-ca.pem")
}

/// Whether `name` is one of the identity's custody keys (never granted to a plugin).
pub fn is_identity_key(name: &str) -> bool {
    name == KEY_PREFIX
        || name
            .strip_prefix(KEY_PREFIX)
            .is_some_and(|rest| rest.starts_with('.'))
}

/// The registration with `service` recorded in `data_dir`: none is
/// [`IdentityError::NotRegistered`], one with another service [`IdentityError::OtherService`].
pub fn read_registration(data_dir: &Path, service: &str) -> Result<Registration, IdentityError> {
    let file = registration_file(data_dir);
    let registration: Registration = match std::fs::read(&file) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| IdentityError::Record {
            path: file.clone(),
            reason: e.to_string(),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(IdentityError::NotRegistered)
        }
        Err(e) => {
            return Err(IdentityError::Record {
                path: file,
                reason: e.to_string(),
            })
        }
    };
    if !same_service(&registration.service, service) {
        return Err(IdentityError::OtherService {
            registered: registration.service,
            configured: service.to_owned(),
        });
    }
    Ok(registration)
}

/// What `certconn upstream register` recorded.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Registration {
    /// The service URL registered with.
    pub service: String,
    pub connector_id: String,
    /// RFC 3339.
    pub registered_at: String,
}

/// Why the identity cannot be had or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    #[error("this connector is not registered with its upstream service: run `certconn upstream register --token-file FILE` (with the daemon stopped), or give upstream.token_file")]
    NotRegistered,
    #[error("this connector is registered with {registered}, but upstream.service is {configured}: register with the configured service (`certconn upstream register`)")]
    OtherService {
        registered: String,
        configured: String,
    },
    #[error("{path}: {reason}")]
    Record { path: PathBuf, reason: String },
    #[error("no identity key with a certificate in custody ({KEY_PREFIX}.*): register again (`certconn upstream register`)")]
    NoKey,
    #[error("custody")]
    Custody(#[from] CustodyError),
    #[error("the identity key {name}: {reason}")]
    Key { name: String, reason: String },
    #[error("{service} refused the registration: {reason}")]
    Refused { service: String, reason: String },
    #[error("{service}: {reason}")]
    Call { service: String, reason: String },
    #[error("{service}: its answer: {reason}")]
    Answer { service: String, reason: String },
    #[error("{0}")]
    File(#[from] crate::files::FileError),
}

struct Current {
    key: Arc<StoredKey>,
    certified: Arc<CertifiedKey>,
    serial: String,
    not_before: u64,
    not_after: u64,
}

impl Current {
    fn of(key: Arc<StoredKey>) -> Result<Self, IdentityError> {
        let bad = |reason: String| IdentityError::Key {
            name: key.name.clone(),
            reason,
        };
        let cert = key
            .chain
            .first()
            .ok_or_else(|| bad("it has no certificate".into()))?;
        let parsed = <x509_cert::Certificate as der::Decode>::from_der(cert)
            .map_err(|e| bad(format!("its certificate: {e}")))?;
        let (not_before, not_after) =
            certconn_x509::validity_of(cert).map_err(|e| bad(format!("its certificate: {e}")))?;
        let chain = key
            .chain
            .iter()
            .map(|c| CertificateDer::from(c.clone()))
            .collect();
        let certified = Arc::new(CertifiedKey::new(
            chain,
            Arc::new(crate::custody::tls::CustodySigningKey(key.clone())),
        ));
        Ok(Self {
            serial: hex::encode(parsed.tbs_certificate.serial_number.as_bytes()),
            key,
            certified,
            not_before,
            not_after,
        })
    }

    fn renew_at(&self) -> u64 {
        self.not_before + self.not_after.saturating_sub(self.not_before) * 2 / 3
    }
}

/// What the status shows of the identity.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct IdentityStatus {
    pub connector_id: String,
    /// The identity certificate's serial, hex.
    pub serial: String,
    /// RFC 3339.
    pub not_after: String,
    /// When certconn renews it (two thirds of its lifetime), RFC 3339.
    pub renew_at: String,
    /// `valid`, or `re-register` when the service refuses it or it expired.
    pub state: String,
    /// Why it must be registered again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The identity in use; rustls asks it for the client certificate at each handshake.
pub struct Identity {
    keys: Arc<KeyStore>,
    connector_id: String,
    current: RwLock<Current>,
    /// Why the service refused it, once it did.
    refused: Mutex<Option<String>>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("connector_id", &self.connector_id)
            .field("serial", &self.read().serial)
            .finish()
    }
}

impl Identity {
    /// The registered identity for `service`: the newest identity key with a certificate.
    /// Older generations and keys a renewal left without a certificate are removed.
    pub fn load(
        keys: Arc<KeyStore>,
        data_dir: &Path,
        service: &str,
    ) -> Result<Self, IdentityError> {
        let registration = read_registration(data_dir, service)?;
        let mut generations: Vec<Arc<StoredKey>> = keys
            .list()
            .into_iter()
            .filter(|k| is_identity_key(&k.name))
            .filter_map(|k| keys.get(&k.name).ok())
            .collect();
        // Newest generation last: the names end in the milliseconds they were made at.
        generations.sort_by_key(|k| generation_of(&k.name));
        let newest = generations
            .iter()
            .rev()
            .find(|k| !k.chain.is_empty())
            .cloned()
            .ok_or(IdentityError::NoKey)?;
        for stale in generations.iter().filter(|k| k.name != newest.name) {
            keys.remove(&stale.name)?;
        }
        Ok(Self {
            current: RwLock::new(Current::of(newest)?),
            keys,
            connector_id: registration.connector_id,
            refused: Mutex::new(None),
        })
    }

    /// Why the identity cannot be used at `now` (Unix seconds), if it cannot: the service
    /// refused it, or it expired.
    pub fn refusal(&self, now: u64) -> Option<String> {
        if let Some(why) = self
            .refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Some(why);
        }
        let not_after = self.read().not_after;
        (now >= not_after).then(|| format!("it expired at {}", rfc3339(not_after)))
    }

    /// The identity can no longer be used (`service` refused it, or it expired): from now on
    /// no call is made with it. Logged once (event 5022), whoever notices first.
    pub fn refuse(&self, why: String, service: &str) {
        let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        if refused.is_some() {
            return;
        }
        tracing::error!(
            event_id = 5022,
            %service,
            serial = %self.serial(),
            reason = %why,
            "the connector's identity is no longer accepted: register again with `certconn upstream register`; no calls are made until then"
        );
        *refused = Some(why);
    }

    /// When the identity is due for renewal (Unix seconds).
    pub fn renew_at(&self) -> u64 {
        self.read().renew_at()
    }

    /// When the identity certificate in use expires (Unix seconds).
    pub fn not_after(&self) -> u64 {
        self.read().not_after
    }

    /// The serial of the identity certificate in use, hex.
    pub fn serial(&self) -> String {
        self.read().serial.clone()
    }

    pub fn status(&self, now: u64) -> IdentityStatus {
        let reason = self.refusal(now);
        let current = self.read();
        IdentityStatus {
            connector_id: self.connector_id.clone(),
            serial: current.serial.clone(),
            not_after: rfc3339(current.not_after),
            renew_at: rfc3339(current.renew_at()),
            state: if reason.is_some() {
                "re-register".into()
            } else {
                "valid".into()
            },
            reason,
        }
    }

    /// Renews over mutual TLS with the current identity through `client`: a fresh key of the
    /// same algorithm and location, a certificate for it, then the old key removed.
    pub async fn renew(&self, client: &ServiceClient, instance: &str) -> Result<(), RenewError> {
        let old = self.read().key.clone();
        let algorithm = algorithm_of(&old).map_err(RenewError::Local)?;
        let location = if old.key.token().is_some() {
            KeyLocation::Pkcs11
        } else {
            KeyLocation::Software
        };
        let next = new_generation(&self.keys, algorithm, location).map_err(local)?;
        let renewed = async {
            let body = request_body(&next, instance).map_err(RenewError::Local)?;
            let path = format!("{BASE}/identity/renew");
            let answer = client
                .call(Method::POST, &path, Some(body), super::poll::CALL_LIMIT)
                .await
                .map_err(RenewError::Call)?;
            if answer.status != StatusCode::OK {
                return Err(RenewError::Call(format!(
                    "HTTP {}: {}",
                    answer.status,
                    super::poll::snippet(&answer.body)
                )));
            }
            let answer: IdentityAnswer = serde_json::from_slice(&answer.body)
                .map_err(|e| RenewError::Call(format!("its answer: {e}")))?;
            install(&self.keys, &next, &answer.certificate).map_err(local)
        }
        .await;
        let key = match renewed {
            Ok(key) => key,
            Err(e) => {
                // The half-made generation goes; the current identity stays in use.
                let _ = self.keys.remove(&next.name);
                return Err(e);
            }
        };
        let current = Current::of(key).map_err(local)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = current;
        self.keys.remove(&old.name).map_err(|e| local(e.into()))?;
        Ok(())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Current> {
        self.current.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// Why a renewal did not happen.
#[derive(Debug)]
pub enum RenewError {
    /// Custody or a certificate that does not fit: certconn's side.
    Local(String),
    /// The call or the service's answer.
    Call(String),
}

impl std::fmt::Display for RenewError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Local(why) => write!(f, "{why}"),
            Self::Call(why) => write!(f, "the service: {why}"),
        }
    }
}

fn local(e: IdentityError) -> RenewError {
    RenewError::Local(crate::report::chain(&e))
}

impl ResolvesClientCert for Identity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.read().certified.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// What `certconn upstream register` needs.
pub struct Enrolment<'a> {
    pub service: &'a str,
    /// The one-time enrolment token.
    pub token: Zeroizing<String>,
    /// Anchors for the service's TLS certificate at registration; default: the system store.
    pub anchors: Option<&'a Path>,
    pub proxy: Option<Arc<crate::proxy::Proxy>>,
    pub algorithm: KeyAlgorithm,
    pub location: KeyLocation,
    /// This instance's id, the identity certificate's requested subject.
    pub instance: &'a str,
}

/// A registration done.
#[derive(Debug)]
pub struct Registered {
    pub connector_id: String,
    pub key: String,
    pub serial: String,
    pub not_after: String,
}

/// Registers this connector: a new identity key in custody, its CSR sent with the enrolment
/// token, and the certificate, the service's CA and the registration recorded. A failure
/// leaves the previous identity (if any) as it was.
pub async fn register(
    keys: &Arc<KeyStore>,
    data_dir: &Path,
    enrolment: Enrolment<'_>,
    policy: &crate::crypto::AlgorithmPolicy,
) -> Result<Registered, IdentityError> {
    let service = enrolment.service.to_owned();
    let client = ServiceClient::new(
        enrolment.service,
        enrolment.anchors,
        Credentials::Token(enrolment.token),
        enrolment.proxy,
        policy,
    )
    .map_err(|e| IdentityError::Call {
        service: service.clone(),
        reason: crate::report::chain(&e),
    })?;
    let next = new_generation(keys, enrolment.algorithm, enrolment.location)?;
    let result = async {
        let body =
            request_body(&next, enrolment.instance).map_err(|reason| IdentityError::Key {
                name: next.name.clone(),
                reason,
            })?;
        let answer = client
            .call(
                Method::POST,
                &format!("{BASE}/register"),
                Some(body),
                super::poll::CALL_LIMIT,
            )
            .await
            .map_err(|reason| IdentityError::Call {
                service: service.clone(),
                reason,
            })?;
        if answer.status != StatusCode::CREATED && answer.status != StatusCode::OK {
            let said = serde_json::from_slice::<certconn_connector::ErrorBody>(&answer.body).ok();
            let reason = match said {
                Some(b) if b.code.as_deref() == Some(TOKEN_REFUSED) => format!(
                    "HTTP {}: {} (ask the service for a new enrolment token)",
                    answer.status, b.error
                ),
                Some(b) => format!("HTTP {}: {}", answer.status, b.error),
                None => format!(
                    "HTTP {}: {}",
                    answer.status,
                    super::poll::snippet(&answer.body)
                ),
            };
            return Err(IdentityError::Refused {
                service: service.clone(),
                reason,
            });
        }
        let answer: IdentityAnswer =
            serde_json::from_slice(&answer.body).map_err(|e| IdentityError::Answer {
                service: service.clone(),
                reason: e.to_string(),
            })?;
        let anchors = crate::pki::pem::decode_certificates(&answer.service_ca).map_err(|e| {
            IdentityError::Answer {
                service: service.clone(),
                reason: format!("service_ca: {e}"),
            }
        })?;
        if anchors.is_empty() {
            return Err(IdentityError::Answer {
                service: service.clone(),
                reason: "service_ca holds no certificate".into(),
            });
        }
        let key = install(keys, &next, &answer.certificate)?;
        Ok((answer, key))
    }
    .await;
    let (answer, key) = match result {
        Ok(done) => done,
        Err(e) => {
            let _ = keys.remove(&next.name);
            return Err(e);
        }
    };
    crate::files::write_atomic(
        &service_ca_file(data_dir),
        answer.service_ca.as_bytes(),
        0o644,
    )?;
    let registration = Registration {
        service: service.clone(),
        connector_id: answer.connector_id.clone(),
        registered_at: crate::report::rfc3339_ms(crate::journal::now_ms()),
    };
    let json = serde_json::to_vec_pretty(&registration).unwrap_or_default();
    crate::files::write_atomic(&registration_file(data_dir), &json, 0o644)?;
    // The earlier identity, if any, is replaced.
    for old in keys.list().into_iter().filter(|k| is_identity_key(&k.name)) {
        if old.name != key.name {
            keys.remove(&old.name)?;
        }
    }
    let current = Current::of(key)?;
    Ok(Registered {
        connector_id: answer.connector_id,
        key: current.key.name.clone(),
        serial: current.serial.clone(),
        not_after: rfc3339(current.not_after),
    })
}

/// A new identity key generation.
fn new_generation(
    keys: &KeyStore,
    algorithm: KeyAlgorithm,
    location: KeyLocation,
) -> Result<Arc<StoredKey>, IdentityError> {
    if !matches!(algorithm, KeyAlgorithm::EcP256 | KeyAlgorithm::EcP384) {
        return Err(IdentityError::Key {
            name: KEY_PREFIX.into(),
            reason:
                "the identity key is ec-p256 or ec-p384 (it signs TLS handshakes through custody)"
                    .into(),
        });
    }
    let mut ms = crate::journal::now_ms();
    // Two generations in one millisecond (a renewal right after a registration) get apart.
    while keys.get(&format!("{KEY_PREFIX}.{ms}")).is_ok() {
        ms += 1;
    }
    Ok(keys.create(&format!("{KEY_PREFIX}.{ms}"), algorithm, location)?)
}

fn generation_of(name: &str) -> i64 {
    name.rsplit('.')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The registration or renewal body: a CSR for `key` asking for `CN=<instance>`.
fn request_body(key: &StoredKey, instance: &str) -> Result<Vec<u8>, String> {
    let subject = crate::pki::dn::parse(&format!("CN={}", instance.replace(',', "\\,")))
        .map_err(|e| e.to_string())?;
    let csr = crate::pki::csr::build(&key.key, &subject, &[]).map_err(|e| e.to_string())?;
    let request = IdentityRequest {
        csr: crate::pki::pem::encode("CERTIFICATE REQUEST", &csr),
        instance: Some(instance.to_owned()),
    };
    serde_json::to_vec(&request).map_err(|e| e.to_string())
}

/// Puts the service's certificate for `key` into custody, after checking that it is for that
/// key and can authenticate a TLS client.
fn install(keys: &KeyStore, key: &StoredKey, pem: &str) -> Result<Arc<StoredKey>, IdentityError> {
    let bad = |reason: String| IdentityError::Key {
        name: key.name.clone(),
        reason,
    };
    let chain = crate::pki::pem::decode_certificates(pem)
        .map_err(|e| bad(format!("the certificate the service sent: {e}")))?;
    let cert = chain
        .first()
        .ok_or_else(|| bad("the service sent no certificate".into()))?;
    let parsed = <x509_cert::Certificate as der::Decode>::from_der(cert)
        .map_err(|e| bad(format!("the certificate the service sent: {e}")))?;
    let spki = der::Encode::to_der(&parsed.tbs_certificate.subject_public_key_info)
        .map_err(|e| bad(e.to_string()))?;
    if spki != key.key.public_key_der() {
        return Err(bad(
            "the certificate the service sent is for another key".into()
        ));
    }
    keys.set_chain(&key.name, chain)?;
    Ok(keys.get(&key.name)?)
}

fn algorithm_of(key: &StoredKey) -> Result<KeyAlgorithm, String> {
    match key.key.kind() {
        PublicKeyKind::EcP256 => Ok(KeyAlgorithm::EcP256),
        PublicKeyKind::EcP384 => Ok(KeyAlgorithm::EcP384),
        other => Err(format!(
            "the identity key {} is {}: only EC keys sign TLS handshakes through custody",
            key.name,
            other.describe()
        )),
    }
}

/// `a` and `b` name the same service (a trailing slash aside).
fn same_service(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

fn rfc3339(secs: u64) -> String {
    crate::report::rfc3339_ms(i64::try_from(secs).unwrap_or(i64::MAX).saturating_mul(1000))
}
