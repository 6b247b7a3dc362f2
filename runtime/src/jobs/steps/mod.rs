//! The pipeline steps: each turns one leased job into an [`Outcome`]; the scheduler records it.
//!
//! - `issue`: custody keygen → CSR → routed backend → certificate for our key → PKCS#12 → seal.
//! - `import`: custody decrypts the PFX password → PFX opened → backend's `check-import` → seal.
//! - `revoke`: the ledger names the issuing backend → its `revoke` → the ledger records it.
//!
//! A step depends on what its work needs — custody, the backends, the ledger and the settings
//! of its profiles — never on the daemon as a whole, so each is tested with stand-ins.

mod import;
mod issue;
mod revoke;

use std::sync::Arc;

use super::model::{ImportJob, IssueJob, RevokeJob};
use super::outcome::{JobError, Outcome};
use super::ports::Custody;
use super::routing::Backends;
use super::settings::{ProfileConfig, Profiles};
use crate::crypto::AlgorithmPolicy;
use crate::journal::{JobKind, JobRecord, Ledger};

/// What the steps need to know from the config.
#[derive(Debug, Clone)]
pub struct StepSettings {
    pub profiles: Arc<Profiles>,
    /// PBKDF2 and MAC iterations of the PFX files certconn writes.
    pub pfx_iterations: u32,
    pub policy: AlgorithmPolicy,
}

/// Runs one job: what the scheduler calls.
#[async_trait::async_trait]
pub trait JobRunner: Send + Sync {
    async fn run(&self, job: &JobRecord) -> Outcome;
}

/// The issue, import and revoke steps with what they depend on.
pub struct Steps {
    settings: StepSettings,
    custody: Arc<dyn Custody>,
    backends: Arc<dyn Backends>,
    ledger: Arc<dyn Ledger>,
}

impl Steps {
    pub fn new(
        settings: StepSettings,
        custody: Arc<dyn Custody>,
        backends: Arc<dyn Backends>,
        ledger: Arc<dyn Ledger>,
    ) -> Self {
        Self {
            settings,
            custody,
            backends,
            ledger,
        }
    }

    /// The profile a job names; a job whose profile is gone from the config fails (no backend
    /// is involved yet).
    fn profile(&self, name: &str) -> Result<Arc<ProfileConfig>, JobError> {
        self.settings
            .profiles
            .get(name)
            .ok_or_else(|| JobError::permanent(format!("profile {name:?} is not configured")))
    }
}

/// Runs `f`, a millisecond or more of the host's cryptography (a PKCS#12 file's key
/// derivations), on the blocking pool, so journal answers and plugin calls of other jobs are not
/// stuck behind it on the async threads.
async fn cpu_bound<R: Send + 'static>(
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<R, JobError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| JobError::permanent("the host's cryptography panicked").because(e))
}

fn parse<T: serde::de::DeserializeOwned>(job: &JobRecord) -> Result<T, JobError> {
    serde_json::from_value(job.request.clone())
        .map_err(|e| JobError::permanent("the stored request does not parse").because(e))
}

#[async_trait::async_trait]
impl JobRunner for Steps {
    async fn run(&self, job: &JobRecord) -> Outcome {
        match job.kind {
            JobKind::Issue => self.issue(job, &parse::<IssueJob>(job)?).await,
            JobKind::Revoke => self.revoke(job, &parse::<RevokeJob>(job)?).await,
            JobKind::Import => self.import(job, &parse::<ImportJob>(job)?).await,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use der::{Decode, Encode};

    use super::*;
    use crate::custody::{KeyAlgorithm, PrivateKey, StoredKey};
    use crate::jobs::model::JobResult;
    use crate::jobs::ports::testing::MemoryCustody;
    use crate::jobs::routing::testing::{StandIn, StandIns};
    use crate::jobs::Completed;
    use crate::jobs::ErrorClass;
    use crate::journal::LedgerEntry;
    use crate::plugins::backend::CallResult;
    use crate::plugins::bindings::types as wit;

    /// A ledger with nothing in it, or one entry.
    #[derive(Default)]
    pub(crate) struct OneEntryLedger(pub Option<LedgerEntry>);

    #[async_trait::async_trait]
    impl Ledger for OneEntryLedger {
        async fn certificate(
            &self,
            serial: &str,
        ) -> Result<Option<LedgerEntry>, crate::journal::JournalError> {
            Ok(self.0.clone().filter(|e| e.serial == serial))
        }
    }

    /// A CA in the test: a key and its self-signed certificate.
    pub(crate) struct TestCa {
        key: PrivateKey,
        cert: Vec<u8>,
    }

    impl TestCa {
        pub(crate) fn new() -> Arc<Self> {
            let key = PrivateKey::generate(KeyAlgorithm::EcP256).unwrap();
            let cert =
                crate::pki::ca::self_signed(&key, &"CN=Test CA".parse().unwrap(), 30).unwrap();
            Arc::new(Self { key, cert })
        }

        /// Issues for the host-made key the backend was handed, as local-ca would.
        pub(crate) fn issue(&self, key: Option<&StoredKey>) -> CallResult<wit::IssuedCertificate> {
            let Some(key) = key else {
                return Ok(Err(wit::BackendError::Rejected("no key handle".into())));
            };
            let cert = crate::pki::ca::ra_certificate(
                &key.key,
                &"CN=device".parse().unwrap(),
                Some((&self.key, &self.cert)),
                1,
            )
            .unwrap();
            Ok(Ok(wit::IssuedCertificate {
                certificate: cert,
                chain: vec![self.cert.clone()],
            }))
        }
    }

    pub(crate) fn settings() -> StepSettings {
        let profile: ProfileConfig =
            toml::from_str("backend = \"ca\"\nfallbacks = [\"spare\"]\n").unwrap();
        StepSettings {
            profiles: Arc::new(Profiles::new(BTreeMap::from([(
                "smime".to_owned(),
                profile,
            )]))),
            pfx_iterations: 1000,
            policy: AlgorithmPolicy::default(),
        }
    }

    fn job(kind: JobKind, request: serde_json::Value) -> JobRecord {
        JobRecord::running(kind, request)
    }

    fn issue_request() -> serde_json::Value {
        serde_json::json!({
            "profile": "smime", "subject": "CN=Alice,O=Example", "sans": ["email:alice@example.com"],
            "key": null, "recipient_pem": null, "csr_pem": null, "validity_days": null
        })
    }

    fn steps(backends: Vec<Arc<StandIn>>, custody: Arc<MemoryCustody>) -> Steps {
        Steps::new(
            settings(),
            custody,
            Arc::new(StandIns(backends)),
            Arc::new(OneEntryLedger::default()),
        )
    }

    #[tokio::test]
    async fn issue_makes_a_pfx_for_the_key_the_backend_certified() {
        let ca = TestCa::new();
        let backend = {
            let ca = ca.clone();
            StandIn::new("ca", move |_, key| ca.issue(key))
        };
        let custody = Arc::new(MemoryCustody::default());
        let s = steps(vec![backend.clone()], custody.clone());
        let done = s
            .run(&job(JobKind::Issue, issue_request()))
            .await
            .expect("completed");
        assert!(
            custody.renewal.lock().unwrap().is_empty(),
            "a profile keeps no device key unless it says so"
        );
        let JobResult {
            pfx_base64: Some(pfx),
            serial: Some(serial),
            backend_version: Some(version),
            ..
        } = &done.result
        else {
            panic!("no PFX: {:?}", done.result);
        };
        assert_eq!(version, "ca 1.0.0 (stand-in)");
        let password = done.password.as_ref().expect("a password to hand out once");
        let pfx = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, pfx).unwrap();
        let opened = crate::pki::pkcs12::open(&pfx, password, &AlgorithmPolicy::default()).unwrap();
        let (key, cert) = opened.key_and_certificate().unwrap();
        // The PFX holds the very key the backend was asked to certify.
        let handed = backend.keys_seen.lock().unwrap()[0].clone().unwrap();
        assert_eq!(key.public_key_der(), handed);
        let cert = x509_cert::Certificate::from_der(&cert.der).unwrap();
        assert_eq!(
            &crate::pki::issued::serial_hex(cert.tbs_certificate.serial_number.as_bytes()),
            serial
        );
        let issued = done.issued.expect("a ledger record");
        assert_eq!((issued.backend.as_str(), &issued.serial), ("ca", serial));
    }

    #[tokio::test]
    async fn a_certificate_for_another_key_is_refused() {
        let ca = TestCa::new();
        let backend = {
            let ca = ca.clone();
            StandIn::new("ca", move |_, _| {
                let other = StoredKey::new(
                    "x".into(),
                    PrivateKey::generate(KeyAlgorithm::EcP256).unwrap(),
                    Vec::new(),
                );
                ca.issue(Some(&other))
            })
        };
        let e = steps(vec![backend], Arc::default())
            .run(&job(JobKind::Issue, issue_request()))
            .await
            .expect_err("refused");
        assert_eq!(e.class, ErrorClass::Permanent);
        assert_eq!(e.backend.as_deref(), Some("ca"));
        assert!(
            e.report().contains("for a different public key"),
            "{}",
            e.report()
        );
    }

    #[tokio::test]
    async fn pending_keeps_the_device_key_and_the_poll_certifies_that_key() {
        let ca = TestCa::new();
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let backend = {
            let (ca, calls) = (ca.clone(), calls.clone());
            StandIn::new("ca", move |_, key| {
                if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                    Ok(Err(wit::BackendError::Pending(wit::Pending {
                        poll_token: "t-1".into(),
                        retry_after_seconds: 30,
                        message: "awaiting approval".into(),
                    })))
                } else {
                    ca.issue(key)
                }
            })
        };
        let custody = Arc::new(MemoryCustody::default());
        let s = steps(vec![backend.clone()], custody.clone());
        let mut j = job(JobKind::Issue, issue_request());
        let e = s.run(&j).await.expect_err("pending");
        assert!(matches!(e.class, ErrorClass::Pending { ref token, .. } if token == "t-1"));
        let kept = custody
            .pending_key(&j.id)
            .await
            .unwrap()
            .expect("the device key is kept");
        // The scheduler parks it; the poll goes to the backend that answered pending.
        j.poll_token = Some("t-1".into());
        j.backend = Some("ca".into());
        let done = s.run(&j).await.expect("issued on poll");
        let seen = backend.keys_seen.lock().unwrap()[1].clone().unwrap();
        assert_eq!(seen, kept.key.public_key_der());
        assert!(done.result.pfx_base64.is_some());
        assert!(
            custody.pending_key(&j.id).await.unwrap().is_none(),
            "forgotten once issued"
        );
    }

    /// Opens a job's PFX: the key and certificate (DER) it holds.
    fn pfx_key_and_certificate(done: &Completed) -> (Vec<u8>, Vec<u8>) {
        let pfx = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            done.result.pfx_base64.as_ref().expect("a PFX"),
        )
        .unwrap();
        let password = done.password.as_ref().expect("a password");
        let opened = crate::pki::pkcs12::open(&pfx, password, &AlgorithmPolicy::default()).unwrap();
        let (key, cert) = opened.key_and_certificate().unwrap();
        (key.public_key_der().to_vec(), cert.der.clone())
    }

    #[tokio::test]
    async fn a_kept_key_proves_one_renewal_and_goes_when_renewed_or_revoked() {
        let ca = TestCa::new();
        let subjects = Arc::new(std::sync::Mutex::new(Vec::new()));
        let backend = {
            let (ca, subjects) = (ca.clone(), subjects.clone());
            StandIn::new("ca", move |req, key| {
                subjects.lock().unwrap().push(req.subject.clone());
                ca.issue(key)
            })
        };
        let custody = Arc::new(MemoryCustody::default());
        let keeping = settings();
        let mut smime = (*keeping.profiles.get("smime").unwrap()).clone();
        smime.keep_keys_for_renewal = true;
        keeping
            .profiles
            .replace(BTreeMap::from([("smime".to_owned(), smime)]));
        let s = Steps::new(
            keeping,
            custody.clone(),
            Arc::new(StandIns(vec![backend.clone()])),
            Arc::new(OneEntryLedger::default()),
        );
        let first = s
            .run(&job(JobKind::Issue, issue_request()))
            .await
            .expect("issued");
        let serial = first.result.serial.clone().unwrap();
        let kept = custody
            .renewal_key(&serial)
            .expect("the device key is kept");
        let (first_key, first_cert) = pfx_key_and_certificate(&first);
        assert_eq!(
            kept.key.public_key_der(),
            first_key,
            "the very key in the PFX"
        );
        assert_eq!(kept.chain, vec![first_cert.clone(), ca.cert.clone()]);
        assert_eq!(
            backend.current_seen.lock().unwrap()[0],
            None,
            "not a renewal"
        );

        // The renewal names the serial as people write it; the backend gets the old
        // certificate's key as `current`, and the new certificate is for a new key.
        let spelled: String = serial
            .to_uppercase()
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(":");
        // It names no subject: the renewed certificate's is asked for.
        let mut renewal = issue_request();
        renewal["renews"] = spelled.into();
        renewal["subject"] = "".into();
        renewal["sans"] = serde_json::json!([]);
        let mut j = job(JobKind::Issue, renewal.clone());
        j.id = "job-2".into();
        let second = s.run(&j).await.expect("renewed");
        assert_eq!(
            backend.current_seen.lock().unwrap()[1].as_ref(),
            Some(&first_cert)
        );
        let (second_key, _) = pfx_key_and_certificate(&second);
        assert_ne!(second_key, first_key, "a renewal re-keys");
        let first_subject = x509_cert::Certificate::from_der(&first_cert)
            .unwrap()
            .tbs_certificate
            .subject
            .to_der()
            .unwrap();
        assert_eq!(subjects.lock().unwrap()[1].as_ref(), Some(&first_subject));
        let second_serial = second.result.serial.clone().unwrap();
        assert!(
            custody.renewal_key(&serial).is_none(),
            "used once, then gone"
        );
        assert!(custody.renewal_key(&second_serial).is_some());

        // The same certificate cannot be renewed twice.
        j.id = "job-3".into();
        let e = s.run(&j).await.expect_err("nothing to prove it with");
        assert_eq!(e.class, ErrorClass::Permanent);
        assert!(
            e.report().contains("no key is kept for certificate"),
            "{}",
            e.report()
        );
        assert_eq!(backend.calls(), 2, "refused before any backend call");

        // Revoking the new certificate forgets its key too.
        let revoker = Steps::new(
            settings(),
            custody.clone(),
            Arc::new(StandIns(vec![backend.clone()])),
            Arc::new(OneEntryLedger(Some(LedgerEntry {
                backend: "ca".into(),
                serial: second_serial.clone(),
                job_id: "job-2".into(),
                issuer_der: vec![0x30, 0x00],
                not_after: 0,
                certificate_der: Vec::new(),
                revoked: None,
                backend_version: None,
            }))),
        );
        revoker
            .run(&job(
                JobKind::Revoke,
                serde_json::json!({"serial": second_serial, "reason": "superseded", "backend": null}),
            ))
            .await
            .expect("revoked");
        assert!(custody.renewal_key(&second_serial).is_none());
    }

    #[tokio::test]
    async fn an_unknown_profile_fails_without_a_backend() {
        let mut request = issue_request();
        request["profile"] = "gone".into();
        let e = steps(Vec::new(), Arc::default())
            .run(&job(JobKind::Issue, request))
            .await
            .expect_err("fails");
        assert_eq!((e.class, e.backend), (ErrorClass::Permanent, None));
    }

    #[tokio::test]
    async fn revoke_goes_to_the_issuing_backend_and_records_the_reason() {
        let backend = StandIn::new("issuer", |_, _| unreachable!("no issue"));
        let ledger = OneEntryLedger(Some(LedgerEntry {
            backend: "issuer".into(),
            serial: "0a1b".into(),
            job_id: "j0".into(),
            issuer_der: vec![0x30, 0x00],
            not_after: 0,
            certificate_der: Vec::new(),
            revoked: None,
            backend_version: None,
        }));
        let s = Steps::new(
            settings(),
            Arc::new(MemoryCustody::default()),
            Arc::new(StandIns(vec![backend.clone()])),
            Arc::new(ledger),
        );
        let done = s
            .run(&job(
                JobKind::Revoke,
                serde_json::json!({"serial": "0A:1B", "reason": "key-compromise", "backend": null}),
            ))
            .await
            .expect("revoked");
        assert_eq!(backend.calls(), 1);
        let r = done.revoked.unwrap();
        assert_eq!(
            (r.backend.as_str(), r.serial.as_str(), r.reason.as_str()),
            ("issuer", "0a1b", "key-compromise")
        );
        let e = s
            .run(&job(
                JobKind::Revoke,
                serde_json::json!({"serial": "ffff", "reason": "unspecified", "backend": null}),
            ))
            .await
            .expect_err("unknown serial");
        assert!(e.to_string().contains("not issued through certconn"), "{e}");
    }

    /// An import request for a PFX under `password`, its password encrypted to `custody_key`.
    fn import_request(custody_key: &PrivateKey, password: &str) -> (serde_json::Value, Vec<u8>) {
        let user = PrivateKey::generate(KeyAlgorithm::EcP256).unwrap();
        let cert = crate::pki::ca::self_signed(&user, &"CN=alice@example.com".parse().unwrap(), 30)
            .unwrap();
        let pfx = crate::pki::pkcs12::write(
            &crate::pki::pkcs12::PfxContents {
                key_pkcs8: user.pkcs8_der().unwrap(),
                certificate: &cert,
                chain: &[],
                friendly_name: None,
            },
            password,
            1000,
            crate::pki::pkcs12::PfxProfile::Modern,
            &AlgorithmPolicy::default(),
        )
        .unwrap();
        let encrypted = crate::crypto::provider::rsa_encrypt(
            custody_key.public_key_der(),
            crate::crypto::provider::Padding::OaepSha512,
            b"s3cret",
        )
        .unwrap();
        let device = PrivateKey::generate(KeyAlgorithm::EcP256).unwrap();
        let device_cert =
            crate::pki::ca::self_signed(&device, &"CN=device".parse().unwrap(), 30).unwrap();
        let b64 = |b: &[u8]| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b);
        let request = serde_json::json!({
            "profile": "smime", "pfx_base64": b64(&pfx), "encrypted_password_base64": b64(&encrypted),
            "key_name": "pfx-password", "padding_scheme": "oaepSha512",
            "user_principal_name": "alice@example.com", "intended_purpose": "smimeEncryption",
            "recipient_pem": crate::pki::pem::encode("CERTIFICATE", &device_cert),
        });
        (request, pfx)
    }

    #[tokio::test]
    async fn import_delivers_the_pfx_unchanged_and_seals_its_password() {
        let custody_key = PrivateKey::generate(KeyAlgorithm::Rsa2048).unwrap();
        let (request, pfx) = import_request(&custody_key, "s3cret");
        let custody =
            MemoryCustody::default().with_key("pfx-password", custody_key.duplicate().unwrap());
        let backend = StandIn::new("ca", |_, _| unreachable!("no issue"));
        let s = steps(vec![backend.clone()], Arc::new(custody));
        let done = s
            .run(&job(JobKind::Import, request))
            .await
            .expect("delivered");
        assert_eq!(backend.calls(), 1, "check-import asked");
        let delivered = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            done.result.pfx_base64.unwrap(),
        )
        .unwrap();
        assert_eq!(delivered, pfx);
        assert!(done.result.sealed_password_base64.is_some());
        assert!(done.password.is_none(), "the password is only ever sealed");
    }

    #[tokio::test]
    async fn import_with_a_wrong_password_fails_for_good_before_the_backend() {
        let custody_key = PrivateKey::generate(KeyAlgorithm::Rsa2048).unwrap();
        // The PFX is under another password than the one encrypted in the request.
        let (request, _) = import_request(&custody_key, "something else");
        let custody = MemoryCustody::default().with_key("pfx-password", custody_key);
        let backend = StandIn::new("ca", |_, _| unreachable!("no issue"));
        let e = steps(vec![backend.clone()], Arc::new(custody))
            .run(&job(JobKind::Import, request))
            .await
            .expect_err("refused");
        assert_eq!(e.class, ErrorClass::Permanent);
        assert_eq!(backend.calls(), 0);
        assert!(
            e.report().starts_with("the imported PFX: opening the PFX"),
            "{}",
            e.report()
        );
    }
}
