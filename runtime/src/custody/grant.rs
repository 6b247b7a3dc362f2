//! Grants: which custody keys one backend instance may use. The plugin host asks the grant,
//! never the store, so an ungranted handle is indistinguishable from a missing one.

use std::collections::BTreeSet;
use std::sync::Arc;

use certconn_x509::extensions::{ExtendedKeyUsageName, KeyUsageName};
use der::oid::ObjectIdentifier;

use super::store::StoredKey;
use super::{CustodyError, KeyRole, KeyStore};
use crate::journal::SignatureTrail;

/// The handle that names, during one `issue` or `poll` call, the key the CSR certifies when
/// certconn made it (server-side keys). Enrolment protocols need it: a SCEP client signs its
/// request with the key being certified and receives the reply encrypted to it.
pub const REQUEST_HANDLE: &str = "request";

/// The handle that names, during one `issue` or `poll` call of a renewal, the key of the
/// certificate being renewed; its custody chain is that certificate and its issuers. A SCEP
/// client signs a RenewalReq with it and receives the reply encrypted to it.
pub const CURRENT_HANDLE: &str = "current";

/// What one `issue` or `poll` call may have a CA key sign (the host checks every signature with
/// a CA key against it: `plugins::issuance`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuanceScope {
    /// The key the job certifies, DER SubjectPublicKeyInfo (certconn's device key or the key
    /// of the device's CSR).
    pub certified_key: Vec<u8>,
    /// The longest validity the job allows: the request's, else the profile's, else
    /// [`MAX_VALIDITY_DAYS`].
    pub max_validity_days: u32,
    /// The key usages and extended key usages the certificate may carry (the profile's).
    pub usage: UsageLimits,
}

/// The key usages and extended key usages a certificate signed by a CA key for a plugin may
/// carry: a profile's `allowed_key_usage` and `allowed_extended_key_usage`, else
/// [`UsageLimits::default`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageLimits {
    pub key_usage: Vec<KeyUsageName>,
    pub extended_key_usage: Vec<ObjectIdentifier>,
}

impl Default for UsageLimits {
    /// What end-entity certificates of devices and users carry. Never `key_cert_sign` or
    /// `crl_sign` (that is a CA's), and by default none of the purposes a relying party trusts
    /// beyond one device: code signing, time stamping, OCSP signing (a certificate that
    /// could answer for the CA) and anyExtendedKeyUsage — a profile that needs one names it.
    fn default() -> Self {
        Self {
            key_usage: vec![
                KeyUsageName::DigitalSignature,
                KeyUsageName::NonRepudiation,
                KeyUsageName::KeyEncipherment,
                KeyUsageName::DataEncipherment,
                KeyUsageName::KeyAgreement,
            ],
            extended_key_usage: [
                ExtendedKeyUsageName::ServerAuth,
                ExtendedKeyUsageName::ClientAuth,
                ExtendedKeyUsageName::EmailProtection,
                ExtendedKeyUsageName::SmartcardLogon,
            ]
            .into_iter()
            .map(ExtendedKeyUsageName::oid)
            .collect(),
        }
    }
}

impl UsageLimits {
    /// The limits a profile names: key usages and extended key usages by their config names
    /// (`digital_signature`, `client_auth`, a dotted OID); `None` keeps the default of each.
    /// A limit that would let a plugin make a CA (`key_cert_sign`, `crl_sign`) is an error.
    pub fn parse(
        key_usage: Option<&[String]>,
        extended_key_usage: Option<&[String]>,
    ) -> Result<Self, String> {
        let mut limits = Self::default();
        if let Some(names) = key_usage {
            limits.key_usage = names
                .iter()
                .map(|n| n.parse::<KeyUsageName>().map_err(|e| e.to_string()))
                .collect::<Result<_, _>>()?;
            if let Some(ca) = limits
                .key_usage
                .iter()
                .find(|u| matches!(u, KeyUsageName::KeyCertSign | KeyUsageName::CrlSign))
            {
                return Err(format!(
                    "{ca:?} is a CA's key usage; certconn never lets a CA key sign one for a plugin"
                ));
            }
        }
        if let Some(names) = extended_key_usage {
            limits.extended_key_usage = names
                .iter()
                .map(|n| {
                    n.parse::<ExtendedKeyUsageName>()
                        .map(ExtendedKeyUsageName::oid)
                        .map_err(|e| e.to_string())
                })
                .collect::<Result<_, _>>()?;
        }
        Ok(limits)
    }
}

/// The longest validity a request may ask for (intake refuses more).
pub const MAX_VALIDITY_DAYS: u32 = 3650;

impl IssuanceScope {
    /// The scope of an issue call: the certified key is `request_key` when certconn made it,
    /// else the key of the CSR (`csr_der`); the validity is `validity_days` when the job says.
    pub fn for_request(
        request_key: Option<&StoredKey>,
        csr_der: &[u8],
        validity_days: Option<u32>,
        usage: UsageLimits,
    ) -> Result<Self, der::Error> {
        use der::{Decode, Encode};
        let certified_key = match request_key {
            Some(k) => k.key.public_key_der().to_vec(),
            None => x509_cert::request::CertReq::from_der(csr_der)?
                .info
                .public_key
                .to_der()?,
        };
        Ok(Self {
            certified_key,
            max_validity_days: validity_days.unwrap_or(MAX_VALIDITY_DAYS),
            usage,
        })
    }
}

/// The keys one `issue` or `poll` call gets besides the instance's grants, and what a CA key
/// may sign during it.
#[derive(Clone, Debug, Default)]
pub struct CallKeys {
    /// The key the CSR certifies, when certconn made it ([`REQUEST_HANDLE`]).
    pub request: Option<Arc<StoredKey>>,
    /// The key of the certificate a renewal replaces, with that certificate first in its
    /// chain ([`CURRENT_HANDLE`]).
    pub current: Option<Arc<StoredKey>>,
    /// The one certificate a CA key may sign in this call; none outside an issue.
    pub scope: Option<IssuanceScope>,
    /// The CSR certconn itself made and signed with `request` for this call (none when the
    /// device sent its own). See [`Grants::is_host_signed_csr`].
    pub host_signed_csr: Option<Arc<[u8]>>,
}

impl CallKeys {
    /// Only the request key (a first enrolment of it), which a CA key may certify for up to
    /// [`MAX_VALIDITY_DAYS`].
    pub fn request(key: Option<Arc<StoredKey>>) -> Self {
        let scope = key.as_ref().map(|k| IssuanceScope {
            certified_key: k.key.public_key_der().to_vec(),
            max_validity_days: MAX_VALIDITY_DAYS,
            usage: UsageLimits::default(),
        });
        Self {
            request: key,
            current: None,
            scope,
            host_signed_csr: None,
        }
    }
}

/// The keys one backend instance was granted, by handle name.
#[derive(Clone, Debug)]
pub struct Grants {
    store: Option<Arc<KeyStore>>,
    granted: Arc<BTreeSet<String>>,
    call: CallKeys,
}

impl Grants {
    pub fn new(store: Arc<KeyStore>, granted: impl IntoIterator<Item = String>) -> Self {
        Self {
            store: Some(store),
            granted: Arc::new(granted.into_iter().collect()),
            call: CallKeys::default(),
        }
    }

    /// No keys at all (for describing a plugin that is not configured).
    pub fn none() -> Self {
        Self {
            store: None,
            granted: Arc::default(),
            call: CallKeys::default(),
        }
    }

    /// These grants plus [`REQUEST_HANDLE`] and [`CURRENT_HANDLE`] bound to the call's keys.
    pub fn with_call_keys(&self, call: CallKeys) -> Self {
        Self {
            call,
            ..self.clone()
        }
    }

    /// The key behind `handle`, if it was granted and exists.
    pub fn key(&self, handle: &str) -> Result<Arc<StoredKey>, CustodyError> {
        let bound = match handle {
            REQUEST_HANDLE => Some(&self.call.request),
            CURRENT_HANDLE => Some(&self.call.current),
            _ => None,
        };
        if let Some(key) = bound {
            return key
                .clone()
                .ok_or_else(|| CustodyError::NotGranted(handle.into()));
        }
        if !self.granted.contains(handle) {
            return Err(CustodyError::NotGranted(handle.into()));
        }
        self.store
            .as_ref()
            .and_then(|s| s.get(handle).ok())
            .ok_or_else(|| CustodyError::NotGranted(handle.into()))
    }

    /// The role of the key behind `handle`: the call-bound handles are the job's own device
    /// keys (signing and decrypting, as enrolment protocols need).
    pub fn role(&self, handle: &str) -> KeyRole {
        match handle {
            REQUEST_HANDLE | CURRENT_HANDLE => KeyRole::General,
            _ => self
                .store
                .as_ref()
                .map_or(KeyRole::General, |s| s.role(handle)),
        }
    }

    /// What a CA key may sign in this call.
    pub fn scope(&self) -> Option<&IssuanceScope> {
        self.call.scope.as_ref()
    }

    /// Whether a backend asks to verify the very signature certconn made on this call's CSR
    /// ([`CallKeys::host_signed_csr`]) with the request key: the same public key, scheme,
    /// signed bytes and signature. Then the answer is known — certconn signed those bytes
    /// with that key moments ago — and the crypto host answers it without verifying again,
    /// which saved ≈ 55 of the ≈ 400 µs of CPU a local-ca issue call cost
    /// (docs/design/pipeline.md).
    /// Anything else, one byte different, is verified.
    pub fn is_host_signed_csr(
        &self,
        public_key: &[u8],
        scheme: certconn_x509::SignatureScheme,
        message: &[u8],
        signature: &[u8],
    ) -> bool {
        let (Some(csr), Some(key)) = (&self.call.host_signed_csr, &self.call.request) else {
            return false;
        };
        let Ok(parts) = certconn_x509::SignedParts::split(csr) else {
            return false;
        };
        key.key.public_key_der() == public_key
            && parts.tbs == message
            && parts.signature == signature
            && certconn_x509::SignatureScheme::from_algorithm_identifier(&parts.algorithm)
                .is_ok_and(|s| s == scheme)
    }

    /// Where signatures with a CA key are recorded before they are made (none in tools that
    /// run a plugin without a journal: the conformance kit, the benchmark).
    pub fn signature_trail(&self) -> Option<Arc<dyn SignatureTrail>> {
        self.store.as_ref().and_then(|s| s.signature_trail())
    }

    /// The granted handle names.
    pub fn handles(&self) -> impl Iterator<Item = &str> {
        self.granted.iter().map(String::as_str)
    }
}
