//! Revocation that relying parties can see: a CRL and an OCSP responder for every CA whose key
//! certconn holds and that `[revocation.cas]` names.
//!
//! The ledger is the source of truth (a revocation is in it once its job succeeded, in the same
//! transaction); this module turns it into signed lists. A CRL is made at start, after every
//! change of a CA's revocations (optionally after a short delay that gathers a burst), and at
//! least every `crl_refresh_hours`; its number comes from the journal, so it only grows, across
//! restarts and instances. OCSP responses without a nonce are produced once per certificate and
//! kept until the next CRL (RFC 5019's pre-produced responses): a busy responder does not sign
//! per request. A request with a nonce gets a fresh signature that echoes it.
//!
//! Decision (recorded in `docs/design/revocation.md`): the host signs CRLs and OCSP responses
//! itself with the custody key; no plugin is involved, so no plugin can have the CA key sign a
//! list of its choosing.

pub mod http;
mod settings;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use der::{Decode, Encode};
use tokio::sync::watch;
use x509_cert::Certificate;

pub use settings::{OcspSigner, PublishedCa, RevocationConfig};

use crate::custody::{CustodyError, KeyAlgorithm, KeyLocation, KeyStore, StoredKey};
use crate::journal::{JournalError, NewSignature, RevocationLedger, RevocationMark, SignedKind};
use crate::pki::ocsp::{self, Answer, Issuer, Status};
use crate::pki::PkiError;
use certconn_x509::crl::{reason_from_name, CrlTemplate, RevokedEntry};

/// Why revocation could not be published.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    #[error(transparent)]
    Custody(#[from] CustodyError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("custody key {key:?} of CA {ca:?} has no certificate; give it one (self_signed in [keys.{key}])")]
    NoCertificate { ca: String, key: String },
    #[error("CA {ca:?}: {what}")]
    Pki {
        ca: String,
        what: &'static str,
        #[source]
        source: PkiError,
    },
    #[error("writing the CRL of {ca:?} to {path}")]
    Write {
        ca: String,
        path: PathBuf,
        #[source]
        source: crate::files::FileError,
    },
    #[error("signing was interrupted (shutting down)")]
    Interrupted,
    /// A CRL that left a revoked certificate out would tell relying parties it is good, so
    /// none is published until the row is mended; the previous CRL stays served meanwhile.
    #[error("CA {ca:?}: the ledger lists revoked certificate {serial:?}, whose serial is not hex digits; no CRL is published without it until that row of the journal's certificates is corrected")]
    UnreadableSerial { ca: String, serial: String },
}

/// The CRL a CA publishes now.
#[derive(Debug, Clone)]
pub struct CurrentCrl {
    /// Shared, not copied, by every response that serves it (a CRL may be megabytes).
    pub der: Bytes,
    pub number: u64,
    /// Seconds since the epoch.
    pub this_update: u64,
    pub next_update: u64,
    pub revoked: usize,
    mark: RevocationMark,
}

/// One CA's published state, as status shows it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct CaStatus {
    pub name: String,
    pub key: String,
    pub crl_number: u64,
    pub revoked: usize,
    /// RFC 3339.
    pub this_update: String,
    pub next_update: String,
    /// `delegated`, `ca` or `off`.
    pub ocsp: &'static str,
    /// The delegated responder certificate's expiry (RFC 3339), when there is one.
    pub responder_not_after: Option<String>,
    /// Why publishing fails, while it does: the CRL above is the last one published, served
    /// until it expires.
    pub publishing_error: Option<String>,
}

/// A cap on cached OCSP responses per CA; beyond it the cache starts over (responses are cheap to
/// make again, memory is not unbounded).
const CACHE_LIMIT: usize = 65_536;

struct Authority {
    name: String,
    key_name: String,
    ca: Arc<StoredKey>,
    ca_der: Vec<u8>,
    /// The CA certificate's subject: every CRL's issuer.
    issuer_name: x509_cert::name::Name,
    issuer: Issuer,
    key_id: Option<Vec<u8>>,
    signer: OcspSigner,
    responder_days: u32,
    current: RwLock<Option<CurrentCrl>>,
    /// The delegated responder: its key, with its certificate first in the chain.
    responder: RwLock<Option<Arc<StoredKey>>>,
    /// Pre-produced responses by the DER of the CertID asked about.
    cache: Mutex<HashMap<Vec<u8>, Bytes>>,
    /// When a change of the ledger was first seen and not yet published.
    changed_since: Mutex<Option<Instant>>,
    /// Why publishing has failed since the last success: shown in status, logged once.
    failing: Mutex<Option<String>>,
}

/// The CRLs and OCSP responders of the configured CAs.
pub struct Publisher {
    authorities: BTreeMap<String, Arc<Authority>>,
    ledger: Arc<dyn RevocationLedger>,
    keys: Arc<KeyStore>,
    validity: Duration,
    refresh: Duration,
    after_revoke: Duration,
    crl_dir: Option<PathBuf>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn rfc3339(secs: u64) -> String {
    crate::report::rfc3339_ms(i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX))
}

impl Publisher {
    /// Opens every configured CA (its key and certificate from custody, its delegated OCSP
    /// responder created or renewed) and makes the first CRLs, so that the routes never serve
    /// nothing.
    pub async fn open(
        config: &RevocationConfig,
        keys: Arc<KeyStore>,
        ledger: Arc<dyn RevocationLedger>,
    ) -> Result<Self, PublishError> {
        let mut authorities = BTreeMap::new();
        for (name, ca) in &config.cas {
            let key_name = ca.key.get_ref().clone();
            let stored = keys.get(&key_name)?;
            let ca_der = stored
                .chain
                .first()
                .ok_or_else(|| PublishError::NoCertificate {
                    ca: name.clone(),
                    key: key_name.clone(),
                })?
                .clone();
            let pki = |what| {
                let ca = name.clone();
                move |source| PublishError::Pki { ca, what, source }
            };
            let parsed = Certificate::from_der(&ca_der)
                .map_err(PkiError::der("CA certificate"))
                .map_err(pki("reading its certificate"))?;
            let issuer = Issuer::of(&parsed).map_err(pki("reading its certificate"))?;
            authorities.insert(
                name.clone(),
                Arc::new(Authority {
                    name: name.clone(),
                    key_name,
                    ca: stored,
                    key_id: certconn_x509::extensions::subject_key_identifier_of(&parsed),
                    issuer_name: parsed.tbs_certificate.subject,
                    ca_der,
                    issuer,
                    signer: ca.ocsp,
                    responder_days: ca.responder_validity_days,
                    current: RwLock::new(None),
                    responder: RwLock::new(None),
                    cache: Mutex::new(HashMap::new()),
                    changed_since: Mutex::new(None),
                    failing: Mutex::new(None),
                }),
            );
        }
        let publisher = Self {
            authorities,
            ledger,
            keys,
            validity: Duration::from_secs(u64::from(config.crl_validity_hours) * 3600),
            refresh: Duration::from_secs(u64::from(*config.crl_refresh_hours.get_ref()) * 3600),
            after_revoke: Duration::from_secs(u64::from(config.after_revoke_seconds)),
            crl_dir: config.crl_dir.as_ref().map(|p| p.to_path_buf()),
        };
        for a in publisher.authorities.values() {
            publisher.renew_responder(a).await?;
            publisher.publish(a).await?;
        }
        Ok(publisher)
    }

    /// Names of the published CAs.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.authorities.keys().map(String::as_str)
    }

    /// Looks at the ledger once per `tick` and publishes what changed, until `shutdown`.
    pub async fn run(self: Arc<Self>, tick: Duration, mut shutdown: watch::Receiver<bool>) {
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            for a in self.authorities.values() {
                let error = self
                    .refresh(a)
                    .await
                    .err()
                    .map(|e| crate::report::chain(&e));
                let mut failing = a.failing.lock().unwrap_or_else(|p| p.into_inner());
                // Once per distinct error, not at every look (each second).
                if let Some(error) = error.as_ref().filter(|e| failing.as_ref() != Some(*e)) {
                    tracing::warn!(event_id = 3100, ca = %a.name, %error, "publishing revocation failed; the previous CRL stays until it is fixed");
                }
                *failing = error;
            }
        }
    }

    /// Publishes `a`'s CRL again when its revocations changed (after the configured delay),
    /// when it is due, or when its delegated responder needs a new certificate.
    async fn refresh(&self, a: &Authority) -> Result<(), PublishError> {
        let renewed = self.renew_responder(a).await?;
        let mark = self.ledger.revocation_mark(&a.issuer.name_der).await?;
        let (changed, due) = {
            let current = a.current.read().unwrap_or_else(|p| p.into_inner());
            match &*current {
                None => (true, true),
                Some(c) => (
                    c.mark != mark,
                    now_secs() >= c.this_update + self.refresh.as_secs(),
                ),
            }
        };
        let waited = {
            let mut since = a.changed_since.lock().unwrap_or_else(|p| p.into_inner());
            if changed {
                since.get_or_insert_with(Instant::now).elapsed() >= self.after_revoke
            } else {
                *since = None;
                false
            }
        };
        if waited || due || renewed {
            self.publish(a).await?;
        }
        Ok(())
    }

    /// Makes, signs, stores and swaps in a new CRL for `a`; clears its OCSP cache.
    async fn publish(&self, a: &Authority) -> Result<(), PublishError> {
        // The mark is read before the list: a revocation landing in between changes the mark
        // again, so it is published on the next look, never lost.
        let mark = self.ledger.revocation_mark(&a.issuer.name_der).await?;
        let this_update = now_secs();
        let next_update = this_update + self.validity.as_secs();
        // A revoked certificate stays listed until it has been expired for one CRL validity:
        // so it is on at least one CRL issued after it expired (RFC 5280, 5.1.2.6), and every
        // CRL a relying party may still hold as current from before then lists it too.
        // (Were the cutoff out of i64's range, 0 lists every revocation: a CRL that left one
        // out would vouch for it.)
        let expiring_from = this_update.saturating_sub(self.validity.as_secs());
        let revoked = self
            .ledger
            .revocations(
                &a.issuer.name_der,
                i64::try_from(expiring_from).unwrap_or(0),
            )
            .await?;
        let number = self.ledger.next_crl_number(&a.name).await?;
        let entries = revoked
            .iter()
            .map(|r| {
                let serial =
                    hex::decode(&r.serial).map_err(|_| PublishError::UnreadableSerial {
                        ca: a.name.clone(),
                        serial: r.serial.clone(),
                    })?;
                Ok(RevokedEntry {
                    serial,
                    revoked_at: u64::try_from(r.revoked_at / 1000).unwrap_or(0),
                    reason: reason_from_name(&r.reason)
                        .filter(|r| *r != x509_cert::ext::pkix::CrlReason::Unspecified),
                })
            })
            .collect::<Result<Vec<RevokedEntry>, PublishError>>()?;
        let count = entries.len();
        let template = CrlTemplate {
            issuer: a.issuer_name.clone(),
            this_update,
            next_update,
            number,
            authority_key_id: a.key_id.clone(),
            entries,
        };
        let ca = a.ca.clone();
        let der = tokio::task::spawn_blocking(move || crate::pki::ca::sign_crl(&ca.key, &template))
            .await
            .map_err(|_| PublishError::Interrupted)?
            .map_err(|source| PublishError::Pki {
                ca: a.name.clone(),
                what: "signing its CRL",
                source,
            })?;
        let tbs = x509_cert::crl::CertificateList::from_der(&der)
            .and_then(|crl| crl.tbs_cert_list.to_der())
            .map_err(|e| PublishError::Pki {
                ca: a.name.clone(),
                what: "reading back its CRL",
                source: PkiError::Invalid(e.to_string()),
            })?;
        self.record_crl(a, &tbs, number).await?;
        if let Some(dir) = &self.crl_dir {
            for (file, bytes) in [
                (format!("{}.crl", a.name), &der),
                (format!("{}.crt", a.name), &a.ca_der),
            ] {
                let path = dir.join(file);
                crate::files::write_atomic(&path, bytes, 0o644).map_err(|source| {
                    PublishError::Write {
                        ca: a.name.clone(),
                        path: path.clone(),
                        source,
                    }
                })?;
            }
        }
        *a.current.write().unwrap_or_else(|p| p.into_inner()) = Some(CurrentCrl {
            der: Bytes::from(der),
            number,
            this_update,
            next_update,
            revoked: count,
            mark,
        });
        a.cache.lock().unwrap_or_else(|p| p.into_inner()).clear();
        *a.changed_since.lock().unwrap_or_else(|p| p.into_inner()) = None;
        tracing::info!(event_id = 3001, ca = %a.name, crl_number = number, revoked = count, next_update = %rfc3339(next_update), "published a CRL");
        Ok(())
    }

    /// Records CRL `number`, which the host signed with `a`'s CA key, in the signature trail
    /// before it is served or stored (see `journal::trail`).
    async fn record_crl(&self, a: &Authority, tbs: &[u8], number: u64) -> Result<(), PublishError> {
        let kind = SignedKind::Crl;
        let Some(trail) = self.keys.signature_trail() else {
            return Ok(());
        };
        let r = trail
            .append_signature(&NewSignature {
                key: a.ca.name.clone(),
                kind,
                job: None,
                backend: "host".into(),
                signer: crate::custody::trail::host_signer(),
                signer_sha256: String::new(),
                tbs_sha256: hex::encode(crate::crypto::provider::digest(
                    crate::crypto::provider::Digest::Sha256,
                    tbs,
                )),
                issuer: crate::pki::dn::format(&a.issuer_name),
                serial: format!("{number:x}"),
                subject: String::new(),
            })
            .await?;
        tracing::info!(ca = %a.name, seq = r.seq, hash = %r.hash, "signature trail: CA key {} signs a {}", a.ca.name, kind.as_str());
        Ok(())
    }

    /// Creates the delegated responder's key, or gives it a new certificate when it has none,
    /// when a third of its validity is left, or when the CA's certificate changed. True when
    /// it issued one.
    async fn renew_responder(&self, a: &Authority) -> Result<bool, PublishError> {
        if a.signer != OcspSigner::Delegated {
            return Ok(false);
        }
        let name = PublishedCa::responder_key(&a.name);
        let stored = match self.keys.get(&name) {
            Ok(k) => k,
            Err(_) => {
                tracing::info!(key = %name, ca = %a.name, "creating the OCSP responder key");
                self.keys
                    .create(&name, KeyAlgorithm::EcP256, KeyLocation::Software)?
            }
        };
        let fresh = stored.chain.first().is_some_and(|cert| {
            stored.chain.get(1) == Some(&a.ca_der) && third_left(cert).unwrap_or(false)
        });
        if fresh {
            let mut slot = a.responder.write().unwrap_or_else(|p| p.into_inner());
            if slot.is_none() {
                *slot = Some(stored);
            }
            return Ok(false);
        }
        let subject = certconn_x509::dn::parse(&format!("CN=OCSP responder for {}", a.name))
            .map_err(|e| PublishError::Pki {
                ca: a.name.clone(),
                what: "naming its OCSP responder",
                source: PkiError::Invalid(e.to_string()),
            })?;
        let cert = crate::pki::ca::ocsp_responder_certificate(
            &stored.key,
            &subject,
            &a.ca.key,
            &a.ca_der,
            a.responder_days,
        )
        .map_err(|source| PublishError::Pki {
            ca: a.name.clone(),
            what: "issuing its OCSP responder certificate",
            source,
        })?;
        crate::custody::trail::record_host_certificate(&self.keys, &a.ca.name, &cert).await?;
        self.keys.set_chain(&name, vec![cert, a.ca_der.clone()])?;
        let renewed = self.keys.get(&name)?;
        *a.responder.write().unwrap_or_else(|p| p.into_inner()) = Some(renewed);
        a.cache.lock().unwrap_or_else(|p| p.into_inner()).clear();
        tracing::info!(event_id = 3002, ca = %a.name, days = a.responder_days, "issued the OCSP responder certificate");
        Ok(true)
    }

    /// The current CRL of `ca` (DER), or `None` for a CA not published here.
    pub fn crl(&self, ca: &str) -> Option<CurrentCrl> {
        let a = self.authorities.get(ca)?;
        let current = a.current.read().unwrap_or_else(|p| p.into_inner());
        current.clone()
    }

    /// The current CRL of the CA whose subject is `issuer_der` (DER Name).
    pub fn crl_by_issuer(&self, issuer_der: &[u8]) -> Option<CurrentCrl> {
        let a = self
            .authorities
            .values()
            .find(|a| a.issuer.name_der == issuer_der)?;
        let current = a.current.read().unwrap_or_else(|p| p.into_inner());
        current.clone()
    }

    /// The certificate of `ca` (DER), for AIA caIssuers.
    pub fn certificate(&self, ca: &str) -> Option<Vec<u8>> {
        Some(self.authorities.get(ca)?.ca_der.clone())
    }

    /// Answers an OCSP request for `ca`: `None` when the CA is not published here or does not
    /// answer OCSP; otherwise an OCSPResponse's DER (refusals included, as RFC 6960 wants).
    pub async fn ocsp(&self, ca: &str, request: &[u8]) -> Option<Bytes> {
        let a = self.authorities.get(ca)?;
        if a.signer == OcspSigner::Off {
            return None;
        }
        let query = match ocsp::read_request(request, &a.issuer) {
            Ok(q) => q,
            Err(refusal) => {
                tracing::info!(event_id = 3201, ca = %a.name, ?refusal, "refused an OCSP request");
                return Some(Bytes::from(refusal.response_der()));
            }
        };
        let cache_key = match (&query.nonce, query.ids.as_slice()) {
            (None, [id]) => id.to_der().ok(),
            _ => None,
        };
        if let Some(k) = &cache_key {
            let cache = a.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(hit) = cache.get(k) {
                return Some(hit.clone());
            }
        }
        let answer = match self.answer(a, query).await {
            Ok(der) => Bytes::from(der),
            Err(e) => {
                tracing::warn!(event_id = 3202, ca = %a.name, error = %crate::report::chain(&e), "could not answer an OCSP request");
                return Some(Bytes::from(
                    x509_ocsp::OcspResponse::internal_error()
                        .to_der()
                        .unwrap_or_default(),
                ));
            }
        };
        if let Some(k) = cache_key {
            let mut cache = a.cache.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
            cache.insert(k, answer.clone());
        }
        Some(answer)
    }

    async fn answer(&self, a: &Authority, query: ocsp::Query) -> Result<Vec<u8>, PublishError> {
        let mut answers = Vec::with_capacity(query.ids.len());
        for id in query.ids {
            let serial = ocsp::serial_of(&id);
            let status = match self.ledger.certificate(&serial).await? {
                Some(e) if e.issuer_der == a.issuer.name_der => match e.revoked {
                    None => Status::Good,
                    Some((at, reason)) => Status::Revoked(
                        u64::try_from(at / 1000).unwrap_or(0),
                        reason_from_name(&reason),
                    ),
                },
                _ => Status::Unknown,
            };
            answers.push(Answer { id, status });
        }
        let (this_update, next_update) = {
            let current = a.current.read().unwrap_or_else(|p| p.into_inner());
            match &*current {
                Some(c) => (c.this_update, c.next_update),
                None => {
                    let now = now_secs();
                    (now, now + self.validity.as_secs())
                }
            }
        };
        let signer_key = match a.signer {
            OcspSigner::Delegated => a
                .responder
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            _ => None,
        };
        let ca = a.ca.clone();
        let nonce = query.nonce;
        tokio::task::spawn_blocking(move || {
            let signer = match &signer_key {
                Some(r) => ocsp::Signer {
                    key: &r.key,
                    certificate: r.chain.first().map(Vec::as_slice),
                },
                None => ocsp::Signer {
                    key: &ca.key,
                    certificate: None,
                },
            };
            ocsp::respond(
                answers,
                nonce.as_deref(),
                this_update,
                next_update,
                now_secs(),
                &signer,
            )
        })
        .await
        .map_err(|_| PublishError::Interrupted)?
        .map_err(|source| PublishError::Pki {
            ca: a.name.clone(),
            what: "signing an OCSP response",
            source,
        })
    }

    /// Each CA's published state.
    pub fn status(&self) -> Vec<CaStatus> {
        self.authorities
            .values()
            .map(|a| {
                let current = a.current.read().unwrap_or_else(|p| p.into_inner()).clone();
                let responder_not_after = a
                    .responder
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                    .and_then(|r| r.chain.first().and_then(|c| not_after(c)))
                    .map(rfc3339);
                CaStatus {
                    name: a.name.clone(),
                    key: a.key_name.clone(),
                    crl_number: current.as_ref().map_or(0, |c| c.number),
                    revoked: current.as_ref().map_or(0, |c| c.revoked),
                    this_update: current
                        .as_ref()
                        .map_or(String::new(), |c| rfc3339(c.this_update)),
                    next_update: current
                        .as_ref()
                        .map_or(String::new(), |c| rfc3339(c.next_update)),
                    ocsp: match a.signer {
                        OcspSigner::Delegated => "delegated",
                        OcspSigner::Ca => "ca",
                        OcspSigner::Off => "off",
                    },
                    responder_not_after,
                    publishing_error: a.failing.lock().unwrap_or_else(|p| p.into_inner()).clone(),
                }
            })
            .collect()
    }
}

fn not_after(cert_der: &[u8]) -> Option<u64> {
    let cert = Certificate::from_der(cert_der).ok()?;
    Some(
        cert.tbs_certificate
            .validity
            .not_after
            .to_unix_duration()
            .as_secs(),
    )
}

/// True while more than a third of `cert_der`'s validity is left.
fn third_left(cert_der: &[u8]) -> Option<bool> {
    let (start, end) = certconn_x509::validity_of(cert_der).ok()?;
    let renew_at = end.saturating_sub((end.saturating_sub(start)) / 3);
    Some(now_secs() < renew_at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::custody::CustodyConfig;
    use crate::journal::SqliteJournal;
    use certconn_x509::{extensions, CertificateTemplate};

    const DAY: u64 = 86_400;

    /// A responder certificate issued `age_days` ago, valid `days` in all.
    fn aged_responder_cert(
        responder: &StoredKey,
        ca: &StoredKey,
        age_days: u64,
        days: u64,
    ) -> Vec<u8> {
        let ca_cert = Certificate::from_der(&ca.chain[0]).unwrap();
        let subject = certconn_x509::dn::parse("CN=old responder").unwrap();
        let now = now_secs();
        let template = CertificateTemplate {
            serial: vec![0x42],
            issuer: ca_cert.tbs_certificate.subject.clone(),
            subject: subject.clone(),
            not_before: now - age_days * DAY,
            not_after: now - age_days * DAY + days * DAY,
            public_key: spki::SubjectPublicKeyInfoOwned::from_der(responder.key.public_key_der())
                .unwrap(),
            extensions: vec![extensions::basic_constraints(false, None, &subject).unwrap()],
        };
        let scheme = ca.key.kind().default_signature_scheme();
        template
            .sign(scheme, |tbs| ca.key.sign(scheme, tbs))
            .map_err(|_| "sign")
            .unwrap()
    }

    fn setup(dir: &std::path::Path) -> (Arc<KeyStore>, Arc<SqliteJournal>, RevocationConfig) {
        let keys = Arc::new(KeyStore::open(&dir.join("keys"), &CustodyConfig::default()).unwrap());
        let ca = keys
            .create("ca", KeyAlgorithm::EcP256, KeyLocation::Software)
            .unwrap();
        let subject = certconn_x509::dn::parse("CN=Renewal CA").unwrap();
        let cert = crate::pki::ca::self_signed(&ca.key, &subject, 365).unwrap();
        keys.set_chain("ca", vec![cert]).unwrap();
        let journal = Arc::new(SqliteJournal::open(&dir.join("j.sqlite"), "t").unwrap());
        let config: RevocationConfig = toml::from_str("[cas.local]\nkey = \"ca\"\n").unwrap();
        (keys, journal, config)
    }

    /// The test CA's subject, DER: the issuer its CRL and its revocations name.
    fn ca_subject_der(keys: &KeyStore) -> Vec<u8> {
        let ca = keys.get("ca").unwrap();
        Certificate::from_der(&ca.chain[0])
            .unwrap()
            .tbs_certificate
            .subject
            .to_der()
            .unwrap()
    }

    #[tokio::test]
    async fn a_responder_certificate_with_a_third_left_is_renewed_and_a_fresh_one_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (keys, journal, config) = setup(dir.path());
        let ca = keys.get("ca").unwrap();
        let responder = keys
            .create("ocsp-local", KeyAlgorithm::EcP256, KeyLocation::Software)
            .unwrap();
        // 30 days of validity, 25 gone: less than a third left.
        let old = aged_responder_cert(&responder, &ca, 25, 30);
        keys.set_chain("ocsp-local", vec![old.clone(), ca.chain[0].clone()])
            .unwrap();

        let publisher = Publisher::open(&config, keys.clone(), journal.clone())
            .await
            .unwrap();
        let renewed = keys.get("ocsp-local").unwrap().chain[0].clone();
        assert_ne!(renewed, old, "the ageing certificate was replaced");
        let end = not_after(&renewed).unwrap();
        assert!(end > now_secs() + 29 * DAY, "a new 30-day certificate");
        let shown = publisher.status();
        assert!(shown[0].responder_not_after.is_some());
        assert_eq!(shown[0].crl_number, 1);

        // Opened again: the fresh certificate stays, and the CRL number goes on growing.
        let again = Publisher::open(&config, keys.clone(), journal)
            .await
            .unwrap();
        assert_eq!(keys.get("ocsp-local").unwrap().chain[0], renewed);
        assert_eq!(again.status()[0].crl_number, 2);
    }

    #[tokio::test]
    async fn a_responder_certificate_from_another_ca_certificate_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let (keys, journal, config) = setup(dir.path());
        let ca = keys.get("ca").unwrap();
        let responder = keys
            .create("ocsp-local", KeyAlgorithm::EcP256, KeyLocation::Software)
            .unwrap();
        // Young, but its chain names a CA certificate that is not the current one.
        let young = aged_responder_cert(&responder, &ca, 0, 30);
        keys.set_chain("ocsp-local", vec![young.clone(), young.clone()])
            .unwrap();
        Publisher::open(&config, keys.clone(), journal)
            .await
            .unwrap();
        let chain = keys.get("ocsp-local").unwrap().chain.clone();
        assert_ne!(chain[0], young);
        assert_eq!(chain[1], ca.chain[0]);
    }

    /// A CRL lists revoked certificates until they have been expired for a CRL validity (a
    /// week by default), not for ever: one that listed every revocation would grow with each
    /// for the life of the CA (a soak's CRL grew 38 bytes a revocation, all held in memory).
    #[tokio::test]
    async fn a_certificate_expired_for_a_crl_validity_leaves_the_crl() {
        let dir = tempfile::tempdir().unwrap();
        let (keys, journal, config) = setup(dir.path());
        let issuer = ca_subject_der(&keys);
        let now = i64::try_from(now_secs()).unwrap();
        let week = 7 * i64::try_from(DAY).unwrap();
        for (serial, not_after) in [
            ("0a", now - week - 3600),
            ("0b", now - week + 3600),
            ("0c", now - 3600),
            ("0d", now + week),
        ] {
            crate::journal::behaviour::issue_and_revoke(
                &*journal,
                serial,
                &issuer,
                not_after,
                Some("key-compromise"),
            )
            .await;
        }
        let publisher = Publisher::open(&config, keys, journal).await.unwrap();
        let a = publisher.authorities.values().next().unwrap().clone();
        let current = a.current.read().unwrap().clone().unwrap();
        let crl = x509_cert::crl::CertificateList::from_der(&current.der).unwrap();
        let listed: Vec<String> = crl
            .tbs_cert_list
            .revoked_certificates
            .unwrap_or_default()
            .iter()
            .map(|r| hex::encode(r.serial_number.as_bytes()))
            .collect();
        assert_eq!(listed, ["0b", "0c", "0d"]);
        assert_eq!(current.revoked, 3);
    }

    #[tokio::test]
    async fn a_revoked_serial_that_is_not_hex_stops_the_crl_instead_of_vanishing_from_it() {
        let dir = tempfile::tempdir().unwrap();
        let (keys, journal, config) = setup(dir.path());
        let issuer = ca_subject_der(&keys);
        let revoke = |serial: &'static str| {
            let (journal, issuer) = (journal.clone(), issuer.clone());
            async move {
                crate::journal::behaviour::issue_and_revoke(
                    &*journal,
                    serial,
                    &issuer,
                    i64::MAX,
                    Some("key-compromise"),
                )
                .await
            }
        };
        revoke("8f01").await;
        let publisher = Publisher::open(&config, keys.clone(), journal.clone())
            .await
            .unwrap();
        let a = publisher.authorities.values().next().unwrap().clone();
        let published = || a.current.read().unwrap().clone().unwrap();
        assert_eq!(published().revoked, 1);
        let before = published().der;

        revoke("zz").await;
        let err = publisher.publish(&a).await.unwrap_err();
        assert!(
            matches!(&err, PublishError::UnreadableSerial { serial, .. } if serial == "zz"),
            "{err:?}"
        );
        assert!(err.to_string().contains("\"zz\""), "{err}");
        assert_eq!(published().der, before, "the previous CRL stays served");

        let err = Publisher::open(&config, keys, journal).await.err().unwrap();
        assert!(
            matches!(err, PublishError::UnreadableSerial { .. }),
            "nor is one made at start: {err:?}"
        );

        // Running, the publisher shows why it fails until the row is mended, then publishes.
        let publisher = Arc::new(publisher);
        let (stop, stopped) = watch::channel(false);
        let running = tokio::spawn(publisher.clone().run(Duration::from_millis(10), stopped));
        let shown = |want_error: bool| {
            let publisher = publisher.clone();
            async move {
                for _ in 0..3000 {
                    let status = publisher.status().remove(0);
                    if status.publishing_error.is_some() == want_error {
                        return status;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                panic!("publishing_error is never {want_error}");
            }
        };
        let failing = shown(true).await;
        assert!(
            failing.publishing_error.unwrap().contains("\"zz\""),
            "status names the serial"
        );
        assert_eq!(failing.revoked, 1, "the last CRL published is shown");
        rusqlite::Connection::open(dir.path().join("j.sqlite"))
            .unwrap()
            .execute(
                "UPDATE certificates SET serial = '0b' WHERE serial = 'zz'",
                [],
            )
            .unwrap();
        let mended = shown(false).await;
        assert_eq!(mended.revoked, 2, "the mended revocation is published");
        stop.send(true).unwrap();
        running.await.unwrap();
    }
}
