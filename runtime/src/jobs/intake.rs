//! Intake: every request is validated completely before it is journaled, so bad input is
//! refused with the field and the reason and nothing is stored. Every source (the request API,
//! the SCEP server, upstreams) submits through one [`Intake`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use der::{Decode, Encode};
use x509_cert::request::CertReq;

use super::events::JobEvent;
use super::model::{ImportJob, IssueJob, RevokeJob};
use super::ports::Custody;
use crate::crypto::provider;
use crate::journal::{JobKind, JobRecord, JobStore, JournalError, Ledger, NewJob};
use crate::pki::{cms, pem};
use certconn_x509::{PublicKeyKind, SignatureScheme, SignedParts, SubjectAltName};

/// Why a submission was not accepted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    #[error(transparent)]
    Invalid(#[from] IntakeError),
    #[error("the request was not stored")]
    Journal(#[from] JournalError),
    #[error(
        "certificate {serial} was already revoked at {at} (reason {reason}); to change the \
         reason, use `certconn certs set-reason {serial} REASON`"
    )]
    AlreadyRevoked {
        serial: String,
        /// RFC 3339.
        at: String,
        reason: String,
    },
    #[error(
        "job {id} is an import that ended: its PFX and encrypted password were erased; submit \
         it again (certconn pfx import …) with the password to use now"
    )]
    Erased { id: String },
    /// A revocation of a serial the ledger does not hold, naming no backend. Each source says
    /// what its requester can do about it: an API caller can name the backend, an upstream
    /// service or Intune cannot.
    #[error("certconn issued no certificate with serial {serial}")]
    NotIssued { serial: String },
}

/// Validates requests and journals them: the one door into the job queue.
pub struct Intake {
    store: Arc<dyn JobStore>,
    ledger: Arc<dyn Ledger>,
    /// The profiles (with their routes) and backends configured now (a reload replaces them).
    names: std::sync::RwLock<Names>,
    custody: Arc<dyn Custody>,
}

#[derive(Default)]
struct Names {
    /// Each profile's route: its backend, then its fallbacks. A job carries it into the
    /// journal, where an instance of a fleet takes only jobs it has a backend for.
    profiles: BTreeMap<String, Vec<String>>,
    backends: BTreeSet<String>,
}

impl Intake {
    /// Requests may name `profiles` (each with its route); revocations may name `backends`
    /// and are checked against the `ledger`.
    pub fn new(
        store: Arc<dyn JobStore>,
        ledger: Arc<dyn Ledger>,
        profiles: impl IntoIterator<Item = (String, Vec<String>)>,
        backends: impl IntoIterator<Item = String>,
        custody: Arc<dyn Custody>,
    ) -> Self {
        Self {
            store,
            ledger,
            names: std::sync::RwLock::new(Names {
                profiles: profiles.into_iter().collect(),
                backends: backends.into_iter().collect(),
            }),
            custody,
        }
    }

    /// A configuration reload: requests may name these profiles and backends from now on.
    pub fn set_names(
        &self,
        profiles: impl IntoIterator<Item = (String, Vec<String>)>,
        backends: impl IntoIterator<Item = String>,
    ) {
        let names = Names {
            profiles: profiles.into_iter().collect(),
            backends: backends.into_iter().collect(),
        };
        *self.names.write().unwrap_or_else(|p| p.into_inner()) = names;
    }

    fn names(&self) -> std::sync::RwLockReadGuard<'_, Names> {
        // Written only by one assignment, which cannot panic halfway.
        self.names.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Validates and journals an issue request. The bool is true when it is new (false: the
    /// same source and idempotency key were seen before, and that job is returned).
    pub async fn submit_issue(
        &self,
        source: &str,
        idempotency_key: &str,
        req: &IssueJob,
    ) -> Result<(JobRecord, bool), SubmitError> {
        let clock = std::time::Instant::now();
        let route = self.route_of(&req.profile)?;
        check_issue(req)?;
        let journaled = self
            .journal(source, idempotency_key, JobKind::Issue, req, &route)
            .await;
        crate::metrics::global().job_stage(crate::metrics::JobStage::Intake, clock.elapsed());
        journaled
    }

    /// Validates and journals an imported-PFX delivery.
    pub async fn submit_import(
        &self,
        source: &str,
        idempotency_key: &str,
        req: &ImportJob,
    ) -> Result<(JobRecord, bool), SubmitError> {
        let clock = std::time::Instant::now();
        let route = self.route_of(&req.profile)?;
        check_import(&*self.custody, req)?;
        let journaled = self
            .journal(source, idempotency_key, JobKind::Import, req, &route)
            .await;
        crate::metrics::global().job_stage(crate::metrics::JobStage::Intake, clock.elapsed());
        journaled
    }

    /// Validates and journals a revocation. A serial the ledger does not know is refused unless
    /// the request names the backend to revoke it at (a certificate that CA issued before or
    /// outside certconn); a serial already revoked is refused with when and why, unless this is
    /// the same request again (its idempotency key), which returns its job.
    pub async fn submit_revoke(
        &self,
        source: &str,
        idempotency_key: &str,
        req: &RevokeJob,
    ) -> Result<(JobRecord, bool), SubmitError> {
        let clock = std::time::Instant::now();
        let journaled = self.revoke_request(source, idempotency_key, req).await;
        crate::metrics::global().job_stage(crate::metrics::JobStage::Intake, clock.elapsed());
        journaled
    }

    async fn revoke_request(
        &self,
        source: &str,
        idempotency_key: &str,
        req: &RevokeJob,
    ) -> Result<(JobRecord, bool), SubmitError> {
        let serial = req
            .normalized_serial()
            .map_err(|e| bad("serial", crate::report::chain(&e)))?;
        if let Some(b) = &req.backend {
            if !self.names().backends.contains(b) {
                return Err(bad("backend", format!("no backend named {b:?}")).into());
            }
        }
        if let Some(job) = self.store.find(source, idempotency_key).await? {
            return Ok((job, false));
        }
        // Revoked where it was issued (the ledger knows), or at the backend the request names.
        let route = match (self.ledger.certificate(&serial).await?, &req.backend) {
            (Some(entry), _) => {
                if let Some((at, reason)) = entry.revoked {
                    return Err(SubmitError::AlreadyRevoked {
                        serial,
                        at: crate::report::rfc3339_ms(at),
                        reason,
                    });
                }
                vec![req.backend.clone().unwrap_or(entry.backend)]
            }
            (None, Some(b)) => vec![b.clone()],
            (None, None) => return Err(SubmitError::NotIssued { serial }),
        };
        self.journal(source, idempotency_key, JobKind::Revoke, req, &route)
            .await
    }

    /// An operator's retry of a failed or dead job: queued again, attempts start over. An
    /// import cannot be retried: its PFX and encrypted password were erased when it ended, and
    /// a retry must use what the administrator gives now (submit it again).
    pub async fn retry(&self, id: &str) -> Result<JobRecord, SubmitError> {
        let job = self.store.get(id).await?;
        if job.kind == JobKind::Import && job.state.is_terminal() {
            return Err(SubmitError::Erased { id: id.to_owned() });
        }
        Ok(self.store.retry(id).await?)
    }

    async fn journal(
        &self,
        source: &str,
        idempotency_key: &str,
        kind: JobKind,
        req: &impl serde::Serialize,
        route: &[String],
    ) -> Result<(JobRecord, bool), SubmitError> {
        let request =
            serde_json::to_value(req).map_err(|e| bad("request", crate::report::chain(&e)))?;
        let (job, created) = self
            .store
            .enqueue(NewJob {
                source,
                idempotency_key,
                kind,
                request: &request,
                route: Some(route),
            })
            .await?;
        if created {
            tracing::info!(event_id = JobEvent::Accepted.id(kind), job = %job.id, %source, kind = kind.as_str(), "job accepted");
        }
        Ok((job, created))
    }

    /// The route of `profile`, or why there is none.
    fn route_of(&self, profile: &str) -> Result<Vec<String>, IntakeError> {
        let names = self.names();
        if let Some(route) = names.profiles.get(profile) {
            return Ok(route.clone());
        }
        let known: Vec<&str> = names.profiles.keys().map(String::as_str).collect();
        Err(bad(
            "profile",
            format!(
                "no profile named {profile:?} (configured: {})",
                known.join(", ")
            ),
        ))
    }
}

/// A request refused at intake.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{field}: {message}")]
pub struct IntakeError {
    pub field: &'static str,
    pub message: String,
}

fn bad(field: &'static str, message: impl Into<String>) -> IntakeError {
    IntakeError {
        field,
        message: message.into(),
    }
}

/// Checks an issue request on its own (the profile is checked by [`Intake`]).
pub fn check_issue(req: &IssueJob) -> Result<(), IntakeError> {
    if req.subject.is_empty() && req.csr_pem.is_none() && req.renews.is_none() {
        return Err(bad(
            "subject",
            "is required (for example \"CN=Alice,O=Example\")",
        ));
    }
    if !req.subject.is_empty() {
        crate::pki::dn::parse(&req.subject)
            .map_err(|e| bad("subject", crate::report::chain(&e)))?;
    }
    for san in &req.sans {
        SubjectAltName::parse(san).map_err(|e| bad("sans", crate::report::chain(&e)))?;
    }
    if let Some(days) = req.validity_days {
        if days == 0 || days > 3650 {
            return Err(bad("validity_days", "must be between 1 and 3650"));
        }
    }
    if let Some(recipient) = &req.recipient_pem {
        check_recipient(recipient)?;
    }
    if let Some(csr) = &req.csr_pem {
        if req.key.is_some() || req.recipient_pem.is_some() {
            return Err(bad(
                "csr",
                "a CSR brings its own key: do not also give key or recipient",
            ));
        }
        check_csr(csr)?;
    }
    if let Some(serial) = &req.renews {
        if req.csr_pem.is_some() {
            return Err(bad(
                "renews",
                "a device that sends its own CSR holds its own key and renews with it; renews is for keys certconn made",
            ));
        }
        crate::jobs::model::normalize_serial(serial)
            .map_err(|e| bad("renews", crate::report::chain(&e)))?;
    }
    Ok(())
}

/// Parses a PEM CSR and verifies its self-signature.
pub(crate) fn check_csr(text: &str) -> Result<(), IntakeError> {
    let blocks = pem::decode_all(text).map_err(|e| bad("csr", format!("not PEM: {e}")))?;
    let Some((label, der)) = blocks.into_iter().next() else {
        return Err(bad("csr", "no PEM block"));
    };
    if label != "CERTIFICATE REQUEST" && label != "NEW CERTIFICATE REQUEST" {
        return Err(bad(
            "csr",
            format!("expected a CERTIFICATE REQUEST block, found {label}"),
        ));
    }
    let csr = CertReq::from_der(&der).map_err(|e| bad("csr", format!("malformed PKCS#10: {e}")))?;
    let parts =
        SignedParts::split(&der).map_err(|e| bad("csr", format!("malformed PKCS#10: {e}")))?;
    let scheme = SignatureScheme::from_algorithm_identifier(&parts.algorithm)
        .map_err(|e| bad("csr", crate::report::chain(&e)))?;
    if let PublicKeyKind::Rsa { bits } =
        PublicKeyKind::of(&csr.info.public_key).map_err(|e| bad("csr", crate::report::chain(&e)))?
    {
        if bits < 2048 {
            return Err(bad(
                "csr",
                format!("the CSR's key is RSA-{bits}; RSA-2048 or larger is required"),
            ));
        }
    }
    let spki = csr
        .info
        .public_key
        .to_der()
        .map_err(|e| bad("csr", crate::report::chain(&e)))?;
    if !provider::verify(&spki, scheme, parts.tbs, parts.signature)
        .map_err(|e| bad("csr", crate::report::chain(&e)))?
    {
        return Err(bad(
            "csr",
            "the CSR's signature does not verify with its own public key",
        ));
    }
    Ok(())
}

/// Largest encrypted password accepted: an RSA-8192 ciphertext.
const MAX_ENCRYPTED_PASSWORD: usize = 1024;

/// Checks an imported-PFX delivery: everything that can be known without the custody key.
/// Opening the PFX needs the password, which only the pipeline decrypts.
fn check_import(custody: &dyn Custody, req: &ImportJob) -> Result<(), IntakeError> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let pfx = b64
        .decode(req.pfx_base64.trim())
        .map_err(|e| bad("pfx", format!("not base64: {e}")))?;
    if pfx.is_empty() {
        return Err(bad("pfx", "is empty"));
    }
    if pfx.len() > crate::pki::pkcs12::read::MAX_SIZE {
        return Err(bad(
            "pfx",
            format!(
                "is {} bytes; the limit is {}",
                pfx.len(),
                crate::pki::pkcs12::read::MAX_SIZE
            ),
        ));
    }
    let encrypted = b64
        .decode(req.encrypted_password_base64.trim())
        .map_err(|e| bad("encrypted_password", format!("not base64: {e}")))?;
    if encrypted.is_empty() || encrypted.len() > MAX_ENCRYPTED_PASSWORD {
        return Err(bad(
            "encrypted_password",
            format!(
                "is {} bytes; an RSA ciphertext is 256 to {MAX_ENCRYPTED_PASSWORD}",
                encrypted.len()
            ),
        ));
    }
    crate::pki::pkcs12::Pfx::from_der(&pfx)
        .map_err(|e| bad("pfx", format!("not a PKCS#12 file: {e}")))?;
    let key = custody.key(&req.key_name).map_err(|_| {
        bad(
            "key_name",
            format!("no custody key named {:?}", req.key_name),
        )
    })?;
    match key.key.kind() {
        PublicKeyKind::Rsa { bits } if bits / 8 == encrypted.len() => {}
        PublicKeyKind::Rsa { bits } => {
            return Err(bad(
                "encrypted_password",
                format!(
                    "is {} bytes, but key {:?} is RSA-{bits} ({} byte ciphertexts): was it encrypted to another key?",
                    encrypted.len(),
                    req.key_name,
                    bits / 8
                ),
            ))
        }
        other => {
            return Err(bad(
                "key_name",
                format!(
                    "key {:?} is {}; PFX passwords are encrypted to an RSA key",
                    req.key_name,
                    other.describe()
                ),
            ))
        }
    }
    let upn = &req.user_principal_name;
    if upn.is_empty() || upn.len() > 256 || upn.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(bad(
            "user_principal_name",
            "must be 1 to 256 characters without spaces (for example alice@example.com)",
        ));
    }
    check_recipient(&req.recipient_pem)?;
    Ok(())
}

fn check_recipient(pem_text: &str) -> Result<(), IntakeError> {
    // The API carries it as text: without a PEM block it is not DER either.
    if !pem_text.contains("-----BEGIN") {
        return Err(bad(
            "recipient",
            "not a PEM certificate: no -----BEGIN CERTIFICATE----- block",
        ));
    }
    let der = pem::certificate_from_pem_or_der(pem_text.as_bytes())
        .map_err(|e| bad("recipient", crate::report::chain(&e)))?;
    cms::check_recipient(&der).map_err(|e| bad("recipient", crate::report::chain(&e)))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::custody::{KeyAlgorithm, PrivateKey};
    use crate::jobs::model::{ImportPurpose, PasswordPadding, RevocationReason};
    use crate::jobs::ports::testing::MemoryCustody;
    use crate::journal::SqliteJournal;

    fn intake() -> (tempfile::TempDir, Arc<SqliteJournal>, Intake) {
        let dir = tempfile::tempdir().unwrap();
        let journal = Arc::new(SqliteJournal::open(&dir.path().join("j.sqlite"), "t").unwrap());
        let custody = MemoryCustody::default().with_key(
            "pfx-password",
            PrivateKey::generate(KeyAlgorithm::Rsa2048).unwrap(),
        );
        let intake = Intake::new(
            journal.clone(),
            journal.clone(),
            [("smime".to_owned(), vec!["local".to_owned()])],
            ["local".to_owned()],
            Arc::new(custody),
        );
        (dir, journal, intake)
    }

    fn issue() -> IssueJob {
        IssueJob {
            profile: "smime".into(),
            subject: "CN=Alice,O=Example".into(),
            sans: vec!["email:alice@example.com".into()],
            key: None,
            recipient_pem: None,
            csr_pem: None,
            validity_days: None,
            renews: None,
        }
    }

    async fn refused(r: Result<(JobRecord, bool), SubmitError>) -> IntakeError {
        match r {
            Err(SubmitError::Invalid(e)) => e,
            other => panic!("not refused at intake: {other:?}"),
        }
    }

    #[tokio::test]
    async fn bad_input_names_the_field_and_stores_nothing() {
        let (_d, journal, intake) = intake();
        let cases: Vec<(&str, IssueJob)> = vec![
            (
                "profile",
                IssueJob {
                    profile: "nope".into(),
                    ..issue()
                },
            ),
            (
                "subject",
                IssueJob {
                    subject: "not a dn".into(),
                    ..issue()
                },
            ),
            (
                "sans",
                IssueJob {
                    sans: vec!["fax:123".into()],
                    ..issue()
                },
            ),
            (
                "validity_days",
                IssueJob {
                    validity_days: Some(0),
                    ..issue()
                },
            ),
            (
                "csr",
                IssueJob {
                    csr_pem: Some("garbage".into()),
                    ..issue()
                },
            ),
            (
                "recipient",
                IssueJob {
                    recipient_pem: Some("garbage".into()),
                    ..issue()
                },
            ),
            (
                "renews",
                IssueJob {
                    renews: Some("not-hex".into()),
                    ..issue()
                },
            ),
        ];
        for (field, req) in cases {
            let e = refused(intake.submit_issue("api", field, &req).await).await;
            assert_eq!(e.field, field, "{e}");
            // A recipient that is no certificate once said only "recipient certificate".
            if field == "recipient" {
                assert!(
                    e.to_string()
                        .contains("no -----BEGIN CERTIFICATE----- block"),
                    "{e}"
                );
            }
        }
        let import = ImportJob {
            profile: "smime".into(),
            pfx_base64: "bm90IGEgUEZY".into(), // "not a PFX"
            encrypted_password_base64: base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                [1u8; 256],
            ),
            key_name: "pfx-password".into(),
            padding_scheme: PasswordPadding::OaepSha512,
            user_principal_name: "alice@example.com".into(),
            intended_purpose: ImportPurpose::SmimeEncryption,
            recipient_pem: String::new(),
        };
        let e = refused(intake.submit_import("api", "i", &import).await).await;
        assert_eq!(e.field, "pfx", "{e}");
        assert!(e.message.contains("not a PKCS#12 file"), "{e}");
        let revoke = RevokeJob {
            serial: "0a".into(),
            reason: RevocationReason::Unspecified,
            backend: Some("other".into()),
        };
        assert_eq!(
            refused(intake.submit_revoke("api", "r", &revoke).await)
                .await
                .field,
            "backend"
        );
        let revoke = RevokeJob {
            serial: "xyz".into(),
            backend: None,
            ..revoke
        };
        assert_eq!(
            refused(intake.submit_revoke("api", "r", &revoke).await)
                .await
                .field,
            "serial"
        );
        let never_issued = RevokeJob {
            serial: "0b".into(),
            ..revoke
        };
        match intake.submit_revoke("api", "r", &never_issued).await {
            Err(SubmitError::NotIssued { serial }) => assert_eq!(serial, "0b"),
            other => panic!("a serial never issued was not refused as such: {other:?}"),
        }
        assert!(
            journal.list(None, 100).await.unwrap().jobs.is_empty(),
            "something was stored"
        );
    }

    #[tokio::test]
    async fn a_valid_request_is_journaled_once_per_idempotency_key() {
        let (_d, journal, intake) = intake();
        let (a, new_a) = intake.submit_issue("api", "k", &issue()).await.unwrap();
        let (b, new_b) = intake.submit_issue("api", "k", &issue()).await.unwrap();
        assert!(new_a && !new_b);
        assert_eq!(a.id, b.id);
        assert_eq!(a.kind, JobKind::Issue);
        assert_eq!(journal.list(None, 100).await.unwrap().jobs.len(), 1);
    }
}
