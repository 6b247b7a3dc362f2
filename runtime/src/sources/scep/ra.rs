//! The SCEP registration authority: its custody key and certificate, and the processing of one
//! pkiMessage into a CertRep.

use std::sync::Arc;
use std::time::Duration;

use certconn_scep::{
    certs, envelope, message, Capabilities, FailInfo, IssuerAndSubject, MessageType, Outgoing,
    PkiStatus, SignedMessage,
};
use der::Decode;
use x509_cert::request::CertReq;
use x509_cert::Certificate;
use zeroize::Zeroizing;

use super::adapter::{CustodyIdentity, HostCrypto};
use super::challenge::{
    self, ChallengeError, ChallengeRequest, ChallengeValidator, Delegated, EnrolmentAuthority,
    OneTimeChallenges, StaticChallenge, Webhook,
};
use super::ra_keys::{Generation, RaKeys};
use super::remembered::Remembered;
use super::settings::ScepConfig;
use crate::crypto::AlgorithmPolicy;
use crate::custody::{CustodyError, KeyStore, StoredKey};
use crate::jobs::model::{serial_hex, IssueJob, JobResult};
use crate::jobs::{Intake, SubmitError};
use crate::journal::{
    ChallengeStore, JobRecord, JobState, JobStore, JournalError, Ledger, LedgerEntry, Outbox,
    ReplayGuard,
};
use crate::pki::{self, pem};

/// The journal source of SCEP jobs; the idempotency key is `scep:<transactionID>`.
pub const SOURCE: &str = "scep";
/// How long a senderNonce is remembered for replay detection: longer than any client retries a
/// message.
const NONCE_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// The replay-window scope of SCEP senderNonces.
const NONCE_SCOPE: &str = "scep-sender-nonce";

/// What a request gets when it cannot be answered with a CertRep at all.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotScep(pub String);

/// Why the SCEP server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RaError {
    #[error(transparent)]
    Custody(#[from] CustodyError),
    #[error("key {0:?} has no certificate to publish as the SCEP CA")]
    NoCaCertificate(String),
    #[error("scep.ra_subject is not a distinguished name: {0}")]
    Subject(String),
    #[error("issuing the RA certificate")]
    Certificate(#[source] pki::PkiError),
    #[error(transparent)]
    Secret(#[from] crate::secret::SecretError),
    #[error("scep.challenge = \"intune\" needs the [intune] section")]
    NoAuthority,
}

/// What the RA works with besides its key: the one door into the queue, the journal's parts it
/// reads, and the replay window.
pub struct RaPorts {
    pub intake: Arc<Intake>,
    /// The CRLs GetCRL answers with (`[revocation]`), when certconn publishes any.
    pub crls: Option<Arc<dyn CrlSource>>,
    pub jobs: Arc<dyn JobStore>,
    pub outbox: Arc<dyn Outbox>,
    pub ledger: Arc<dyn Ledger>,
    pub challenges: Arc<dyn ChallengeStore>,
    pub replay: Arc<dyn ReplayGuard>,
    /// The device-management service that decides challenges (`scep.challenge = "intune"`).
    pub authority: Option<Arc<dyn EnrolmentAuthority>>,
}

/// Where the RA finds a CA's current CRL for GetCRL.
pub trait CrlSource: Send + Sync {
    /// The current CRL (DER) of the CA whose subject is `issuer_der`, if certconn publishes one.
    fn crl_of(&self, issuer_der: &[u8]) -> Option<Vec<u8>>;
}

/// The RA: configuration, key and certificates, and what it admits requests with.
pub struct Ra {
    ra_keys: RaKeys,
    ca_certificates: Vec<Vec<u8>>,
    profile: String,
    wait: Duration,
    crypto: HostCrypto,
    validators: Vec<Box<dyn ChallengeValidator>>,
    one_time: Option<OneTimeChallenges>,
    ports: RaPorts,
    /// Jobs whose end the authority was told of in this process, so that a client polling
    /// again does not tell it twice (for a day: see [`super::remembered`]).
    reported: Remembered<()>,
    /// Jobs whose certificate the authority did not take, with why: withheld (in this
    /// process, for a day).
    withheld: Remembered<String>,
}

impl Ra {
    /// Sets the RA up at start: creates its key and certificate the first time, and takes
    /// over the next generation when that is due.
    pub fn open(
        sc: &ScepConfig,
        keys: Arc<KeyStore>,
        policy: AlgorithmPolicy,
        ports: RaPorts,
    ) -> Result<Self, RaError> {
        Self::open_at(sc, keys, policy, ports, crate::journal::now_secs())
    }

    /// [`Ra::open`] on the caller's clock (seconds since the Unix epoch).
    pub fn open_at(
        sc: &ScepConfig,
        keys: Arc<KeyStore>,
        policy: AlgorithmPolicy,
        ports: RaPorts,
        now: u64,
    ) -> Result<Self, RaError> {
        let ca_key = sc.ca_key.get_ref();
        let ca = keys.get(ca_key)?;
        if ca.chain.is_empty() {
            return Err(RaError::NoCaCertificate(ca_key.clone()));
        }
        let kind = ca.key.kind();
        if !matches!(kind, certconn_x509::key::PublicKeyKind::Rsa { .. }) {
            tracing::warn!(event_id = 4406, "{}", sc.ca_key_not_rsa(&kind.describe()));
        }
        let ra_keys = RaKeys::open(sc, keys, ca.clone(), now)?;
        let mut validators: Vec<Box<dyn ChallengeValidator>> = Vec::new();
        if let Some(s) = static_challenge(sc)? {
            validators.push(Box::new(StaticChallenge(s)));
        }
        let valid_for = Duration::from_secs(u64::from(sc.challenge_minutes) * 60);
        if sc.one_time_challenges {
            validators.push(Box::new(OneTimeChallenges {
                store: ports.challenges.clone(),
                valid_for,
            }));
        }
        if let Some(url) = &sc.challenge_webhook {
            validators.push(Box::new(Webhook::new(url.get_ref().clone())));
        }
        if sc.challenge.is_some() {
            let authority = ports.authority.clone().ok_or(RaError::NoAuthority)?;
            validators.push(Box::new(Delegated(authority)));
        }
        let one_time = sc.one_time_challenges.then(|| OneTimeChallenges {
            store: ports.challenges.clone(),
            valid_for,
        });
        Ok(Self {
            ra_keys,
            ca_certificates: ca.chain.clone(),
            profile: sc.profile.get_ref().clone(),
            wait: Duration::from_secs(u64::from(sc.wait_seconds)),
            crypto: HostCrypto { policy },
            validators,
            one_time,
            ports,
            reported: Remembered::new(),
            withheld: Remembered::new(),
        })
    }

    /// GetCACaps: what this server does. 3DES is left out in FIPS mode.
    /// GetCACaps, spelled as RFC 8894 spells the keywords. `SHA-384` is not an RFC 8894
    /// keyword, but certconn verifies SHA-384 and a widely shipped client picks AES only when it
    /// sees it beside `AES`. In FIPS mode there is no `DES3`: a client must use AES.
    pub fn capabilities(&self) -> Capabilities {
        let mut caps = vec![
            "GetNextCACert",
            "POSTPKIOperation",
            "Renewal",
            "SHA-1",
            "SHA-256",
            "SHA-384",
            "SHA-512",
            "AES",
        ];
        if !self.crypto.policy.fips {
            caps.push("DES3");
        }
        caps.push("SCEPStandard");
        Capabilities::of(&caps)
    }

    /// GetCACert: the current RA certificate(s) and the CA chain, as a certs-only SignedData.
    pub fn ca_certificates(&self) -> Result<Vec<u8>, NotScep> {
        let mut all = self.ra_keys.current().certificates();
        all.extend(self.ca_certificates.iter().cloned());
        certs::certs_only(&all).map_err(|e| NotScep(e.to_string()))
    }

    /// GetNextCACert: the RA certificate(s) that take over next and the CA chain, signed by
    /// the current RA; `Ok(None)` while no next generation is announced.
    pub fn next_ca_certificates(&self) -> Result<Option<Vec<u8>>, NotScep> {
        let Some(next) = self.ra_keys.next() else {
            return Ok(None);
        };
        let mut all = next.certificates();
        all.extend(self.ca_certificates.iter().cloned());
        let bag = certs::certs_only(&all).map_err(|e| NotScep(e.to_string()))?;
        let current = self.ra_keys.current();
        message::sign_next_ca(
            &self.crypto,
            &identity_of(&current.signer),
            certconn_scep::Digest::Sha256,
            &bag,
        )
        .map(Some)
        .map_err(|e| NotScep(format!("building the GetNextCACert answer: {e}")))
    }

    /// Renews the RA when that is due (see [`RaKeys`]); the app calls it every hour, tests
    /// with their own clock.
    pub fn maintain(&self, now: u64) -> Result<(), RaError> {
        self.ra_keys.maintain(now)
    }

    /// Runs [`Ra::maintain`] every `tick` until shutdown.
    pub async fn run(
        self: Arc<Self>,
        tick: Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            if let Err(e) = self.maintain(crate::journal::now_secs()) {
                tracing::error!(event_id = 4404, error = %crate::report::chain(&e), "SCEP RA maintenance failed");
            }
            self.record_made().await;
        }
    }

    /// Records the RA certificates made since the last call in the signature trail.
    pub async fn record_made(&self) {
        self.ra_keys.record_made().await;
    }

    /// When the RA certificate that signs now expires (Unix seconds).
    pub fn current_not_after(&self) -> u64 {
        self.ra_keys.current().not_after
    }

    /// What status shows of the RA: its generation, when the next one comes, any warning.
    pub fn status(&self) -> serde_json::Value {
        self.ra_keys.status(crate::journal::now_secs())
    }

    /// The current RA generation.
    pub fn current_generation(&self) -> Generation {
        self.ra_keys.current()
    }

    /// Mints a one-time challenge; `None` when one-time challenges are off.
    pub async fn mint_challenge(&self) -> Option<Result<(Zeroizing<String>, i64), JournalError>> {
        match &self.one_time {
            Some(o) => Some(o.mint().await),
            None => None,
        }
    }

    /// Opens a request's envelope with whichever of the server's keys it was sealed for.
    fn open_envelope(
        &self,
        content: &[u8],
    ) -> Result<(Vec<u8>, envelope::Opened), certconn_scep::Error> {
        for key in self.ra_keys.decryptors() {
            match envelope::open(&self.crypto, &identity_of(&key), content) {
                Err(certconn_scep::Error::WrongRecipient(_)) => continue,
                other => return other,
            }
        }
        Err(certconn_scep::Error::WrongRecipient(
            "the envelope is for none of this SCEP server's certificates (RA, encryption RA, or an RSA CA)".into(),
        ))
    }

    /// PKIOperation: one pkiMessage in, one CertRep out. `Err` only when the message cannot be
    /// answered in SCEP at all (not a verifiable pkiMessage): the caller sends HTTP 400.
    pub async fn pki_operation(&self, bytes: &[u8]) -> Result<Vec<u8>, NotScep> {
        let msg = message::verify(&self.crypto, bytes, &[])
            .map_err(|e| NotScep(format!("not a valid SCEP pkiMessage: {e}")))?;
        let reply = |status: PkiStatus,
                     fail: Option<(FailInfo, String)>,
                     content: Option<Vec<u8>>| {
            if let Some((f, why)) = &fail {
                tracing::warn!(event_id = 4201, transaction = %msg.transaction_id, fail_info = f.name(), "SCEP request refused: {why}");
            }
            self.cert_rep(&msg, status, fail.map(|f| f.0), content.as_deref())
        };
        // A senderNonce seen before is the same message again: a client polling by resending
        // it unchanged (micromdm's scepclient does, after PENDING) or a replay. Either may only
        // find the job its first sending made, and reads its state sealed for the message's
        // own signer; nothing is admitted, journaled or consumed again.
        let resent = !self.fresh_nonce(msg.sender_nonce.as_deref()).await;
        let polls = matches!(
            msg.message_type,
            MessageType::PkcsReq | MessageType::RenewalReq | MessageType::CertPoll
        );
        let made_a_job = async {
            matches!(
                self.latest_request(&msg.transaction_id).await,
                Ok((Some(_), _))
            )
        };
        if resent && !(polls && made_a_job.await) {
            return reply(
                PkiStatus::Failure,
                Some((
                    FailInfo::BadRequest,
                    "replayed message: senderNonce seen before".into(),
                )),
                None,
            );
        }
        match self.process(&msg, resent).await {
            Ok(Answer::Issued(content)) => reply(PkiStatus::Success, None, Some(content)),
            Ok(Answer::Pending) => reply(PkiStatus::Pending, None, None),
            Err((f, why)) => reply(PkiStatus::Failure, Some((f, why)), None),
        }
    }

    /// False for a senderNonce seen before within the window (a replay). A journal that
    /// cannot answer fails closed: the request is refused, and the client sends it again.
    async fn fresh_nonce(&self, nonce: Option<&[u8]>) -> bool {
        let Some(n) = nonce else {
            return true;
        };
        match self
            .ports
            .replay
            .first_use(NONCE_SCOPE, n, NONCE_WINDOW)
            .await
        {
            Ok(fresh) => fresh,
            Err(e) => {
                internal(e);
                false
            }
        }
    }

    /// `resent`: the message was seen before (its senderNonce), so it may only find the job
    /// it made then.
    async fn process(
        &self,
        msg: &SignedMessage,
        resent: bool,
    ) -> Result<Answer, (FailInfo, String)> {
        let bad = |f: FailInfo| move |e: certconn_scep::Error| (f, e.to_string());
        let content = msg.content.as_deref().ok_or((
            FailInfo::BadRequest,
            "the message carries no pkcsPKIEnvelope".to_string(),
        ))?;
        let (plain, opened) = self.open_envelope(content).map_err(|e| match e {
            certconn_scep::Error::Unsupported(_) => (FailInfo::BadAlg, e.to_string()),
            _ => (FailInfo::BadMessageCheck, e.to_string()),
        })?;
        match msg.message_type {
            MessageType::GetCrl => {
                return self.get_crl(msg, &plain, opened.cipher, opened.transport)
            }
            MessageType::GetCert => {
                return self
                    .get_cert(msg, &plain, opened.cipher, opened.transport)
                    .await
            }
            _ => {}
        }
        let job = match msg.message_type {
            MessageType::PkcsReq | MessageType::RenewalReq => {
                let csr_pem = pem::encode("CERTIFICATE REQUEST", &plain);
                let (latest, generation) = self.latest_request(&msg.transaction_id).await?;
                let issued = self.issued_signer(msg).await?;
                // Signed by the certificate that request produced: a renewal of it, even when
                // the CSR is byte for byte the first one (certmonger's same-key resubmit).
                let renews = |job: &JobRecord| issued.as_ref().is_some_and(|e| e.job_id == job.id);
                match latest {
                    // A resent request (the client polling by resending) finds its job again.
                    Some(job) if same_csr(&job, &csr_pem) && !renews(&job) => job,
                    _ if resent => {
                        return Err((
                            FailInfo::BadRequest,
                            "replayed message: senderNonce seen before, and no request of its \
                             transaction has its CSR"
                                .into(),
                        ))
                    }
                    Some(job) if !job.state.is_settled() => {
                        return Err((
                            FailInfo::BadRequest,
                            "the transaction ID is in use by a different request still in progress"
                                .into(),
                        ))
                    }
                    // A new CSR for the same key under a settled transaction ID: the SCEP
                    // drafts derived the ID from the key, and certmonger still does, so a
                    // same-key renewal comes under the ID of the first request. Another key
                    // under a used ID is refused.
                    Some(job) if !same_key(&job, &plain) => {
                        return Err((
                            FailInfo::BadRequest,
                            "the transaction ID was already used for a request for another key"
                                .into(),
                        ))
                    }
                    _ => {
                        self.admit(msg, issued, &plain, &csr_pem).await?;
                        let req = IssueJob {
                            profile: self.profile.clone(),
                            subject: String::new(),
                            sans: Vec::new(),
                            key: None,
                            recipient_pem: None,
                            csr_pem: Some(csr_pem.clone()),
                            validity_days: None,
                            renews: None,
                        };
                        let key = transaction_key(&msg.transaction_id, generation + 1);
                        let (job, _) = self
                            .ports
                            .intake
                            .submit_issue(SOURCE, &key, &req)
                            .await
                            .map_err(|e| match e {
                                SubmitError::Invalid(i) => (FailInfo::BadRequest, i.to_string()),
                                other => internal(other),
                            })?;
                        if !same_csr(&job, &csr_pem) {
                            // Another request took this generation between our look and ours.
                            return Err((
                                FailInfo::BadRequest,
                                "the transaction ID was just used for a different request".into(),
                            ));
                        }
                        job
                    }
                }
            }
            MessageType::CertPoll => {
                IssuerAndSubject::from_der(&plain)
                    .map_err(|e| (FailInfo::BadRequest, format!("CertPoll content: {e}")))?;
                self.latest_request(&msg.transaction_id).await?.0.ok_or((
                    FailInfo::BadCertId,
                    format!("no request with transaction ID {}", msg.transaction_id),
                ))?
            }
            other => {
                return Err((
                    FailInfo::BadRequest,
                    format!("messageType {} is not served here", other.code()),
                ));
            }
        };
        let job = if job.state.is_settled() {
            job
        } else {
            // Wait for the job to leave the queue, up to `wait_seconds`; then PENDING.
            self.ports
                .jobs
                .wait_settled(&job.id, self.wait)
                .await
                .map_err(internal)?
        };
        match job.state {
            JobState::Succeeded => {
                let stored = self
                    .ports
                    .outbox
                    .take_result(&job.id)
                    .await
                    .map_err(internal)?
                    .ok_or_else(|| {
                        // Only the retention sweep removes a finished job's result.
                        internal("the finished job's result was removed (journal.keep_results_days); a new enrolment, with a new transaction id, is needed")
                    })?;
                let result = JobResult::from_outbox(&job.id, stored).map_err(internal)?;
                let mut chain = Vec::new();
                for text in [result.certificate_pem, result.chain_pem]
                    .into_iter()
                    .flatten()
                {
                    for (_, der) in pem::decode_all(&text).map_err(internal)? {
                        chain.push(der);
                    }
                }
                if let Some(cert) = chain.first() {
                    self.report_issued(&msg.transaction_id, &job, cert).await?;
                }
                let bag = certs::certs_only(&chain).map_err(bad(FailInfo::BadRequest))?;
                // Answer in the cipher and key transport the request was sealed with: the
                // strongest the client has shown it reads.
                let sealed = envelope::seal(
                    &self.crypto,
                    &bag,
                    &msg.signer,
                    opened.cipher,
                    opened.transport,
                )
                .map_err(bad(FailInfo::BadAlg))?;
                Ok(Answer::Issued(sealed))
            }
            JobState::Failed | JobState::Dead => {
                let why = job
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "the backend refused the request".into());
                self.report_not_issued(&msg.transaction_id, &job, &why)
                    .await;
                Err((FailInfo::BadRequest, why))
            }
            _ => Ok(Answer::Pending),
        }
    }

    /// The authority admitted this job's request (its CSR carries a challenge, which the
    /// authority decides): its CSR, DER.
    fn admitted_by_authority(
        &self,
        job: &JobRecord,
    ) -> Option<(Arc<dyn EnrolmentAuthority>, Vec<u8>)> {
        let authority = self.ports.authority.clone()?;
        let der = csr_der_of(job)?;
        let csr = CertReq::from_der(&der).ok()?;
        challenge_password(&csr)?;
        Some((authority, der))
    }

    /// Before delivery: the authority hears of the certificate, and refusing it (or not
    /// answering) keeps it from the device — fail closed.
    async fn report_issued(
        &self,
        transaction_id: &str,
        job: &JobRecord,
        certificate_der: &[u8],
    ) -> Result<(), (FailInfo, String)> {
        let Some((authority, csr)) = self.admitted_by_authority(job) else {
            return Ok(());
        };
        if let Some(why) = self.withheld.get(&job.id) {
            return Err((FailInfo::BadRequest, why));
        }
        if self.reported_before(&job.id) {
            return Ok(());
        }
        if let Err(why) = authority
            .issued(transaction_id, &csr, certificate_der)
            .await
        {
            let why = format!(
                "the certificate is withheld: {} did not take the success notification: {why}",
                authority.name()
            );
            self.withheld.note(&job.id, why.clone());
            authority.not_issued(transaction_id, &csr, &why).await;
            return Err((FailInfo::BadRequest, why));
        }
        Ok(())
    }

    /// The authority hears that a request it admitted was not issued (once per job here).
    async fn report_not_issued(&self, transaction_id: &str, job: &JobRecord, why: &str) {
        if let Some((authority, csr)) = self.admitted_by_authority(job) {
            if !self.reported_before(&job.id) {
                authority.not_issued(transaction_id, &csr, why).await;
            }
        }
    }

    /// True when `job` was reported already; marks it reported.
    fn reported_before(&self, job: &str) -> bool {
        !self.reported.note(job, ())
    }

    /// The latest request journaled under a transaction ID, and its generation (0 when none).
    /// Generations are looked up in order; a transaction ID rarely has more than a few (one
    /// per same-key renewal).
    async fn latest_request(
        &self,
        transaction_id: &str,
    ) -> Result<(Option<JobRecord>, u32), (FailInfo, String)> {
        let mut latest = (None, 0);
        for generation in 1.. {
            let key = transaction_key(transaction_id, generation);
            match self.ports.jobs.find(SOURCE, &key).await.map_err(internal)? {
                Some(job) => latest = (Some(job), generation),
                None => break,
            }
        }
        Ok(latest)
    }

    /// GetCert: a certificate certconn issued, named by issuer and serial, sealed for the
    /// requester. Certificates are public; what this answers is only whether certconn issued
    /// that one.
    async fn get_cert(
        &self,
        msg: &SignedMessage,
        plain: &[u8],
        cipher: certconn_scep::Cipher,
        transport: certconn_scep::KeyTransport,
    ) -> Result<Answer, (FailInfo, String)> {
        let asked = certconn_scep::lenient::IssuerSerial::from_der(plain)
            .map_err(|e| (FailInfo::BadRequest, format!("GetCert content: {e}")))?;
        let serial = serial_hex(asked.serial_number.as_bytes());
        let not_found = || {
            (
                FailInfo::BadCertId,
                format!(
                    "certconn issued no certificate {serial} by {}",
                    asked.issuer
                ),
            )
        };
        let entry = self
            .ports
            .ledger
            .certificate(&serial)
            .await
            .map_err(internal)?
            .ok_or_else(not_found)?;
        let cert = Certificate::from_der(&entry.certificate_der).map_err(internal)?;
        if cert.tbs_certificate.issuer != asked.issuer {
            return Err(not_found());
        }
        let bag = certs::certs_only(&[entry.certificate_der]).map_err(internal)?;
        let sealed = envelope::seal(&self.crypto, &bag, &msg.signer, cipher, transport)
            .map_err(|e| (FailInfo::BadAlg, e.to_string()))?;
        tracing::info!(event_id = 4302, transaction = %msg.transaction_id, %serial, "answered GetCert");
        Ok(Answer::Issued(sealed))
    }

    /// GetCRL: the current CRL of the issuer named in the IssuerAndSerialNumber, sealed for
    /// the requester like any CertRep content.
    fn get_crl(
        &self,
        msg: &SignedMessage,
        plain: &[u8],
        cipher: certconn_scep::Cipher,
        transport: certconn_scep::KeyTransport,
    ) -> Result<Answer, (FailInfo, String)> {
        let asked = cms::cert::IssuerAndSerialNumber::from_der(plain)
            .map_err(|e| (FailInfo::BadRequest, format!("GetCRL content: {e}")))?;
        let issuer_der = der::Encode::to_der(&asked.issuer).map_err(internal)?;
        let crl = self
            .ports
            .crls
            .as_ref()
            .and_then(|c| c.crl_of(&issuer_der))
            .ok_or_else(|| {
                (
                    FailInfo::BadCertId,
                    format!(
                        "certconn publishes no CRL for issuer {} (see [revocation] in the config)",
                        asked.issuer
                    ),
                )
            })?;
        let bag = certs::crl_only(&crl).map_err(internal)?;
        let sealed = envelope::seal(&self.crypto, &bag, &msg.signer, cipher, transport)
            .map_err(|e| (FailInfo::BadAlg, e.to_string()))?;
        tracing::info!(event_id = 4301, transaction = %msg.transaction_id, issuer = %asked.issuer, "answered GetCRL");
        Ok(Answer::Issued(sealed))
    }

    /// The ledger entry of the message's signer, when certconn issued that very certificate.
    async fn issued_signer(
        &self,
        msg: &SignedMessage,
    ) -> Result<Option<LedgerEntry>, (FailInfo, String)> {
        let signer = signer_certificate(msg)?;
        let serial = serial_hex(signer.tbs_certificate.serial_number.as_bytes());
        Ok(self
            .ports
            .ledger
            .certificate(&serial)
            .await
            .map_err(internal)?
            .filter(|entry| entry.certificate_der == msg.signer))
    }

    /// Checks what a new request must satisfy: the signer and the challenge (PKCSReq) or a
    /// still-valid certificate certconn issued (RenewalReq).
    async fn admit(
        &self,
        msg: &SignedMessage,
        issued: Option<LedgerEntry>,
        csr_der: &[u8],
        csr_pem: &str,
    ) -> Result<(), (FailInfo, String)> {
        let csr = CertReq::from_der(csr_der)
            .map_err(|e| (FailInfo::BadRequest, format!("malformed PKCS#10: {e}")))?;
        let signer = signer_certificate(msg)?;
        let serial = serial_hex(signer.tbs_certificate.serial_number.as_bytes());
        // Signed by a certificate certconn issued (the very bytes in the ledger): a renewal,
        // whether the client says RenewalReq or, as certmonger does, PKCSReq. Its validity is
        // what authorises it; no challenge is needed.
        // With an authority deciding challenges (Intune), a request that carries one is the
        // authority's to decide, whatever signed it.
        let authority_decides =
            self.ports.authority.is_some() && challenge_password(&csr).is_some();
        match (issued, msg.message_type) {
            (Some(entry), _) if !authority_decides => {
                if entry.revoked.is_some() {
                    return Err((
                        FailInfo::BadCertId,
                        format!("the renewing certificate {serial} is revoked"),
                    ));
                }
                let now = crate::journal::now_ms() / 1000;
                let not_after = signer
                    .tbs_certificate
                    .validity
                    .not_after
                    .to_unix_duration()
                    .as_secs() as i64;
                if not_after < now {
                    return Err((
                        FailInfo::BadCertId,
                        format!("the renewing certificate {serial} has expired"),
                    ));
                }
                tracing::info!(event_id = 4202, transaction = %msg.transaction_id, %serial, "SCEP renewal authorised by the certificate certconn issued");
                return Ok(());
            }
            (None, MessageType::RenewalReq) => {
                return Err((
                    FailInfo::BadCertId,
                    "a RenewalReq must be signed by a certificate certconn issued".into(),
                ));
            }
            // Signed by a certificate certconn issued, with a challenge the authority decides.
            (Some(_), _) | (None, _) => {}
        }
        // PKCSReq from anyone else: the challenge authorises it. RFC 8894 §3.3.1 says the
        // signer SHOULD use the CSR's key, not MUST; clients that sign with a separate key (or
        // with an old certificate from another CA around a CSR for a new key) are accepted. The
        // CSR's own signature is its proof of possession, checked by the backend.
        if signer.tbs_certificate.subject_public_key_info != csr.info.public_key {
            tracing::debug!(transaction = %msg.transaction_id, "SCEP request signed by a key other than the CSR's; the challenge decides");
        }
        let Some(given) = challenge_password(&csr) else {
            return Err((FailInfo::BadRequest, ChallengeError::Missing.to_string()));
        };
        let subject = crate::pki::dn::format(&csr.info.subject);
        let request = ChallengeRequest {
            transaction_id: &msg.transaction_id,
            challenge: &given,
            csr_pem,
            subject: &subject,
        };
        let admitted = challenge::admit(&self.validators, &request).await;
        match admitted {
            Ok(validator) => {
                tracing::debug!(transaction = %msg.transaction_id, validator, "SCEP challenge accepted");
                Ok(())
            }
            Err(ChallengeError::Journal(j)) => Err(internal(j)),
            Err(other) => Err((FailInfo::BadRequest, other.to_string())),
        }
    }

    fn cert_rep(
        &self,
        msg: &SignedMessage,
        status: PkiStatus,
        fail_info: Option<FailInfo>,
        content: Option<&[u8]>,
    ) -> Result<Vec<u8>, NotScep> {
        let nonce = self.crypto_nonce()?;
        // The reply is signed with the request's digest, but never with SHA-1: custody does
        // not make new SHA-1 signatures, and every SCEP client that sends SHA-1 reads SHA-256.
        let digest = match msg.digest {
            certconn_scep::Digest::Sha1 => certconn_scep::Digest::Sha256,
            d => d,
        };
        let current = self.ra_keys.current();
        message::sign(
            &self.crypto,
            &identity_of(&current.signer),
            digest,
            &Outgoing {
                message_type: MessageType::CertRep,
                transaction_id: &msg.transaction_id,
                sender_nonce: &nonce,
                recipient_nonce: msg.sender_nonce.as_deref(),
                pki_status: Some(status),
                fail_info,
                content,
                extra_certificates: &[],
                send_certificates: true,
            },
        )
        .map_err(|e| NotScep(format!("building the CertRep: {e}")))
    }

    fn crypto_nonce(&self) -> Result<Zeroizing<Vec<u8>>, NotScep> {
        use certconn_scep::Crypto;
        self.crypto.random(16).map_err(|e| NotScep(e.to_string()))
    }
}

/// The certificate that signed `msg`, read leniently: a client's throwaway signer may carry a
/// serial RFC 5280 refuses.
fn signer_certificate(
    msg: &SignedMessage,
) -> Result<certconn_scep::lenient::AnyCertificate, (FailInfo, String)> {
    certconn_scep::lenient::certificate("signer certificate", &msg.signer)
        .map_err(|e| (FailInfo::BadRequest, e.to_string()))
}

/// The custody key and certificate of one RA key, as the SCEP crate's signer or recipient.
fn identity_of(key: &StoredKey) -> CustodyIdentity<'_> {
    CustodyIdentity {
        key: &key.key,
        certificate: &key.chain[0],
    }
}

enum Answer {
    Issued(Vec<u8>),
    Pending,
}

fn internal(e: impl std::fmt::Display) -> (FailInfo, String) {
    tracing::error!("SCEP server: {e}");
    (
        FailInfo::BadRequest,
        "internal error; see the server log".into(),
    )
}

/// The journal key of the `generation`th request under a transaction ID: `scep:<ID>` for the
/// first, `scep:<ID>#2`, `#3`… for the requests that came under the same ID once the one before
/// had settled. A transaction ID names one request at a time.
fn transaction_key(transaction_id: &str, generation: u32) -> String {
    match generation {
        0 | 1 => format!("scep:{transaction_id}"),
        n => format!("scep:{transaction_id}#{n}"),
    }
}

/// Whether `job` asked for a certificate for the key of the CSR `csr_der`.
fn same_key(job: &JobRecord, csr_der: &[u8]) -> bool {
    let key_of = |der: &[u8]| CertReq::from_der(der).ok().map(|c| c.info.public_key);
    let stored = csr_der_of(job).and_then(|der| key_of(&der));
    stored.is_some() && stored == key_of(csr_der)
}

/// The CSR a SCEP job was journaled with, DER.
fn csr_der_of(job: &JobRecord) -> Option<Vec<u8>> {
    job.request
        .get("csr_pem")
        .and_then(|v| v.as_str())
        .and_then(|text| pem::decode_all(text).ok())
        .and_then(|blocks| blocks.into_iter().next())
        .map(|(_, der)| der)
}

/// Whether `job` is the request for `csr_pem`.
fn same_csr(job: &JobRecord, csr_pem: &str) -> bool {
    job.request.get("csr_pem").and_then(|v| v.as_str()) == Some(csr_pem)
}

pub(crate) fn challenge_password(csr: &CertReq) -> Option<String> {
    let attr = csr
        .info
        .attributes
        .iter()
        .find(|a| a.oid == pki::csr::CHALLENGE_PASSWORD)?;
    let value = attr.values.iter().next()?;
    // DirectoryString: PrintableString, UTF8String, … — the value bytes are the text.
    String::from_utf8(value.value().to_vec()).ok()
}

fn static_challenge(sc: &ScepConfig) -> Result<Option<Zeroizing<String>>, RaError> {
    let (env, file) = (
        sc.challenge_env.as_ref().map(|e| e.get_ref().as_str()),
        sc.challenge_file.as_deref(),
    );
    if env.is_none() && file.is_none() {
        return Ok(None);
    }
    Ok(Some(crate::secret::read_text(
        "the static SCEP challenge (scep.challenge_env/challenge_file)",
        env,
        file,
    )?))
}

#[cfg(test)]
mod tests {
    use certconn_scep::{Cipher, Crypto, Digest, KeyTransport};
    use der::Encode;

    use super::*;
    use crate::custody::{CustodyConfig, KeyAlgorithm, KeyLocation, PrivateKey};
    use crate::jobs::ports::testing::MemoryCustody;
    use crate::journal::{Completion, SqliteJournal};

    const CHALLENGE: &str = "static-Secret-42";

    /// An RA over a fresh journal and key store, with no scheduler: tests play the worker.
    struct Harness {
        _dir: tempfile::TempDir,
        journal: Arc<SqliteJournal>,
        ra: Ra,
        ca: Arc<StoredKey>,
        ra_cert: Vec<u8>,
        /// What the RA was opened with, to open it again as a restart would.
        keys: Arc<KeyStore>,
        sc: ScepConfig,
    }

    fn harness() -> Harness {
        harness_with("", crate::journal::now_secs(), KeyAlgorithm::EcP256)
    }

    /// A harness with `extra` lines in `[scep]`, its RA opened at `now`, its CA key `ca_alg`.
    fn harness_with(extra: &str, now: u64, ca_alg: KeyAlgorithm) -> Harness {
        harness_full(extra, now, ca_alg, None)
    }

    /// [`harness_with`] with an enrolment authority deciding challenges.
    fn harness_full(
        extra: &str,
        now: u64,
        ca_alg: KeyAlgorithm,
        authority: Option<Arc<dyn EnrolmentAuthority>>,
    ) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let keys =
            Arc::new(KeyStore::open(&dir.path().join("keys"), &CustodyConfig::default()).unwrap());
        let ca = keys.create("ca", ca_alg, KeyLocation::Software).unwrap();
        let ca_cert =
            pki::ca::self_signed(&ca.key, &"CN=RA test CA".parse().unwrap(), 3650).unwrap();
        let ca = keys.set_chain("ca", vec![ca_cert]).unwrap();
        let challenge_file = dir.path().join("challenge");
        std::fs::write(&challenge_file, CHALLENGE).unwrap();
        std::fs::set_permissions(
            &challenge_file,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let sc: ScepConfig = toml::from_str(&format!(
            "profile = \"smime\"\nca_key = \"ca\"\nwait_seconds = 0\nchallenge_file = {:?}\n{extra}",
            challenge_file.display().to_string()
        ))
        .unwrap();
        let journal = Arc::new(SqliteJournal::open(&dir.path().join("j.sqlite"), "t").unwrap());
        let intake = Arc::new(Intake::new(
            journal.clone(),
            journal.clone(),
            [("smime".to_owned(), vec!["local".to_owned()])],
            Vec::<String>::new(),
            Arc::new(MemoryCustody::default()),
        ));
        let ra = Ra::open_at(
            &sc,
            keys.clone(),
            AlgorithmPolicy::default(),
            RaPorts {
                intake,
                crls: Some(Arc::new(crl_for(&ca))),
                jobs: journal.clone(),
                outbox: journal.clone(),
                ledger: journal.clone(),
                challenges: journal.clone(),
                replay: journal.clone(),
                authority,
            },
            now,
        )
        .unwrap();
        let ra_cert = keys.get("scep-ra").unwrap().chain[0].clone();
        Harness {
            _dir: dir,
            journal,
            ra,
            ca,
            ra_cert,
            keys,
            sc,
        }
    }

    /// The one CRL the test RA knows: its CA's, empty, number 1.
    struct FixedCrl {
        issuer: Vec<u8>,
        crl: Vec<u8>,
    }

    impl CrlSource for FixedCrl {
        fn crl_of(&self, issuer_der: &[u8]) -> Option<Vec<u8>> {
            (issuer_der == self.issuer).then(|| self.crl.clone())
        }
    }

    fn crl_for(ca: &StoredKey) -> FixedCrl {
        let issuer = Certificate::from_der(&ca.chain[0])
            .unwrap()
            .tbs_certificate
            .subject;
        let template = certconn_x509::crl::CrlTemplate {
            issuer: issuer.clone(),
            this_update: 1_700_000_000,
            next_update: 1_700_086_400,
            number: 1,
            authority_key_id: None,
            entries: Vec::new(),
        };
        let crl = pki::ca::sign_crl(&ca.key, &template).unwrap();
        FixedCrl {
            issuer: issuer.to_der().unwrap(),
            crl,
        }
    }

    #[tokio::test]
    async fn get_crl_answers_with_the_issuers_crl_sealed_for_the_requester() {
        let h = harness();
        let d = device("device-crl");
        let asked = |issuer: x509_cert::name::Name| {
            cms::cert::IssuerAndSerialNumber {
                issuer,
                serial_number: x509_cert::serial_number::SerialNumber::new(&[1]).unwrap(),
            }
            .to_der()
            .unwrap()
        };
        let ca_subject = Certificate::from_der(&h.ca.chain[0])
            .unwrap()
            .tbs_certificate
            .subject;
        let rep = answer(
            &h,
            &message(
                &h,
                &d,
                MessageType::GetCrl,
                "tx-crl",
                &asked(ca_subject.clone()),
            ),
        )
        .await;
        assert_eq!(
            rep.pki_status,
            Some(PkiStatus::Success),
            "{:?}",
            rep.fail_info_text
        );
        let bag = opened(&rep, &d);
        let info = cms::content_info::ContentInfo::from_der(&bag).unwrap();
        let signed: cms::signed_data::SignedData = info.content.decode_as().unwrap();
        let crls = signed.crls.expect("a CRL in the bag");
        assert_eq!(crls.0.len(), 1);
        let crl =
            x509_cert::crl::CertificateList::from_der(&crls.0.get(0).unwrap().to_der().unwrap())
                .unwrap();
        assert_eq!(crl.tbs_cert_list.issuer, ca_subject);
        assert!(signed.certificates.is_none());

        let rep = answer(
            &h,
            &message(
                &h,
                &d,
                MessageType::GetCrl,
                "tx-crl-2",
                &asked(d.subject.clone()),
            ),
        )
        .await;
        assert_eq!(
            (rep.pki_status, rep.fail_info),
            (Some(PkiStatus::Failure), Some(FailInfo::BadCertId))
        );
    }

    /// A device: its key and the throwaway self-signed certificate it signs requests with.
    struct Device {
        key: PrivateKey,
        cert: Vec<u8>,
        subject: x509_cert::name::Name,
    }

    fn device(name: &str) -> Device {
        let key = PrivateKey::generate(KeyAlgorithm::Rsa2048).unwrap();
        let subject: x509_cert::name::Name = format!("CN={name}").parse().unwrap();
        let cert = pki::ca::self_signed(&key, &subject, 1).unwrap();
        Device { key, cert, subject }
    }

    fn crypto() -> HostCrypto {
        HostCrypto {
            policy: AlgorithmPolicy::default(),
        }
    }

    /// A pkiMessage of `kind` from `device` with `content` sealed for the RA.
    fn message(
        h: &Harness,
        device: &Device,
        kind: MessageType,
        txid: &str,
        content: &[u8],
    ) -> Vec<u8> {
        let crypto = crypto();
        let sealed = envelope::seal(
            &crypto,
            content,
            &h.ra_cert,
            Cipher::Aes256Cbc,
            KeyTransport::Pkcs1,
        )
        .unwrap();
        let nonce = crypto.random(16).unwrap();
        message::sign(
            &crypto,
            &CustodyIdentity {
                key: &device.key,
                certificate: &device.cert,
            },
            Digest::Sha256,
            &Outgoing {
                message_type: kind,
                transaction_id: txid,
                sender_nonce: &nonce,
                recipient_nonce: None,
                pki_status: None,
                fail_info: None,
                content: Some(&sealed),
                extra_certificates: &[],
                send_certificates: true,
            },
        )
        .unwrap()
    }

    fn pkcs_req(h: &Harness, device: &Device, txid: &str, challenge: &str) -> Vec<u8> {
        let csr =
            pki::csr::build_with_challenge(&device.key, &device.subject, &[], Some(challenge))
                .unwrap();
        message(h, device, MessageType::PkcsReq, txid, &csr)
    }

    /// The content of a reply sealed for `device`, opened with its key.
    fn opened(rep: &SignedMessage, device: &Device) -> Vec<u8> {
        let (bag, _) = envelope::open(
            &crypto(),
            &CustodyIdentity {
                key: &device.key,
                certificate: &device.cert,
            },
            rep.content.as_deref().expect("a sealed content"),
        )
        .unwrap();
        bag.to_vec()
    }

    async fn answer(h: &Harness, msg: &[u8]) -> SignedMessage {
        let rep = h.ra.pki_operation(msg).await.unwrap();
        message::verify(&crypto(), &rep, &[]).unwrap()
    }

    /// Plays the worker: completes the queued job with a certificate for `device`'s key.
    async fn issue(h: &Harness, device: &Device) {
        let held = h
            .journal
            .lease_next(Duration::from_secs(60))
            .await
            .unwrap()
            .expect("a queued job");
        let cert = pki::ca::ra_certificate(
            &device.key,
            &device.subject,
            Some((&h.ca.key, &h.ca.chain[0])),
            1,
        )
        .unwrap();
        let result = serde_json::to_string(&JobResult {
            certificate_pem: Some(pem::encode("CERTIFICATE", &cert)),
            chain_pem: Some(pem::encode("CERTIFICATE", &h.ca.chain[0])),
            ..Default::default()
        })
        .unwrap();
        assert!(h
            .journal
            .complete(
                &held.lease,
                Completion {
                    backend: "local",
                    result: &result,
                    ..Default::default()
                }
            )
            .await
            .unwrap());
    }

    #[tokio::test]
    async fn pkcs_req_is_journaled_answered_pending_then_cert_poll_delivers() {
        let h = harness();
        let d = device("device-1");
        let rep = answer(&h, &pkcs_req(&h, &d, "tx-1", CHALLENGE)).await;
        assert_eq!(rep.pki_status, Some(PkiStatus::Pending));
        let job = h
            .journal
            .find(SOURCE, "scep:tx-1")
            .await
            .unwrap()
            .expect("journaled");
        assert_eq!(job.state, JobState::Queued);
        issue(&h, &d).await;
        let poll = IssuerAndSubject {
            issuer: d.subject.clone(),
            subject: d.subject.clone(),
        }
        .to_der()
        .unwrap();
        let rep = answer(&h, &message(&h, &d, MessageType::CertPoll, "tx-1", &poll)).await;
        assert_eq!(
            rep.pki_status,
            Some(PkiStatus::Success),
            "{:?}",
            rep.fail_info_text
        );
        let bag = opened(&rep, &d);
        let certs = certs::parse_certs_only(&bag).unwrap();
        let leaf = Certificate::from_der(&certs[0]).unwrap();
        assert_eq!(
            leaf.tbs_certificate
                .subject_public_key_info
                .to_der()
                .unwrap(),
            d.key.public_key_der()
        );
    }

    /// A message sent again unchanged (its senderNonce seen before) finds the job its first
    /// sending made, as micromdm's scepclient polls after PENDING; it admits nothing anew. One
    /// whose first sending was refused stays refused, and a challenge spent by another request
    /// is not spent again by a replay.
    #[tokio::test]
    async fn a_replayed_message_finds_only_its_own_job_and_a_wrong_challenge_journals_nothing() {
        let h = harness();
        let d = device("device-2");
        let req = pkcs_req(&h, &d, "tx-2", CHALLENGE);
        assert_eq!(answer(&h, &req).await.pki_status, Some(PkiStatus::Pending));
        let replay = answer(&h, &req).await;
        assert_eq!(
            (replay.pki_status, replay.fail_info),
            (Some(PkiStatus::Pending), None)
        );
        let wrong_req = pkcs_req(&h, &device("device-3"), "tx-3", "guess");
        for _ in 0..2 {
            let wrong = answer(&h, &wrong_req).await;
            assert_eq!(
                (wrong.pki_status, wrong.fail_info),
                (Some(PkiStatus::Failure), Some(FailInfo::BadRequest))
            );
        }
        assert_eq!(h.journal.list(None, 10).await.unwrap().jobs.len(), 1);
        // A one-time challenge spent: the replay of the request that spent it finds that
        // request's job; another request with it is refused, and so is that one's replay.
        let (once, _) = h.ra.mint_challenge().await.unwrap().unwrap();
        let first = pkcs_req(&h, &device("device-4"), "tx-4", &once);
        assert_eq!(
            answer(&h, &first).await.pki_status,
            Some(PkiStatus::Pending)
        );
        let other = pkcs_req(&h, &device("device-5"), "tx-5", &once);
        for r in [&other, &other] {
            assert_eq!(answer(&h, r).await.fail_info, Some(FailInfo::BadRequest));
        }
        assert_eq!(
            answer(&h, &first).await.pki_status,
            Some(PkiStatus::Pending)
        );
        assert_eq!(h.journal.list(None, 10).await.unwrap().jobs.len(), 2);
        // A CertPoll for a transaction nobody sent is badCertId.
        let poll = IssuerAndSubject {
            issuer: d.subject.clone(),
            subject: d.subject.clone(),
        }
        .to_der()
        .unwrap();
        let rep = answer(
            &h,
            &message(&h, &d, MessageType::CertPoll, "tx-none", &poll),
        )
        .await;
        assert_eq!(rep.fail_info, Some(FailInfo::BadCertId));
    }

    #[tokio::test]
    async fn a_one_time_challenge_minted_here_admits_once() {
        let h = harness();
        let (challenge, _) = h.ra.mint_challenge().await.unwrap().unwrap();
        let first = answer(&h, &pkcs_req(&h, &device("a"), "tx-a", &challenge)).await;
        assert_eq!(first.pki_status, Some(PkiStatus::Pending));
        let second = answer(&h, &pkcs_req(&h, &device("b"), "tx-b", &challenge)).await;
        assert_eq!(second.fail_info, Some(FailInfo::BadRequest));
    }

    /// What OpenSSL's own verifiers make of a reply: `openssl smime -verify` (PKCS7_verify,
    /// what many SCEP clients are built on) and `openssl cms -verify`, signature checked, chain
    /// not (the RA certificate is the test's). Returns the content they output.
    fn openssl_reads(reply: &[u8]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("reply.der");
        std::fs::write(&input, reply).unwrap();
        let mut contents = Vec::new();
        for tool in ["smime", "cms"] {
            let out = dir.path().join(format!("{tool}.out"));
            let o = std::process::Command::new("openssl")
                .args([
                    tool,
                    "-verify",
                    "-inform",
                    "DER",
                    "-noverify",
                    "-binary",
                    "-in",
                ])
                .arg(&input)
                .arg("-out")
                .arg(&out)
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "openssl {tool} -verify refused the reply: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            contents.push(std::fs::read(&out).unwrap());
        }
        assert_eq!(contents[0], contents[1]);
        contents.remove(0)
    }

    #[tokio::test]
    async fn every_reply_type_has_content_that_openssls_verifiers_read() {
        let h = harness();
        let d = device("device-openssl");
        // PENDING (the harness answers at once, before any worker ran).
        let pending =
            h.ra.pki_operation(&pkcs_req(&h, &d, "tx-o", CHALLENGE))
                .await
                .unwrap();
        assert_eq!(
            message::verify(&crypto(), &pending, &[])
                .unwrap()
                .pki_status,
            Some(PkiStatus::Pending)
        );
        assert!(openssl_reads(&pending).is_empty(), "an empty content");
        // FAILURE.
        let failure =
            h.ra.pki_operation(&pkcs_req(&h, &device("x"), "tx-f", "wrong"))
                .await
                .unwrap();
        let read = message::verify(&crypto(), &failure, &[]).unwrap();
        assert_eq!(read.pki_status, Some(PkiStatus::Failure));
        assert!(
            read.content.is_none(),
            "certconn's own reader sees no content"
        );
        assert!(openssl_reads(&failure).is_empty());
        // SUCCESS: the content is the EnvelopedData certconn's reader saw.
        issue(&h, &d).await;
        let poll = IssuerAndSubject {
            issuer: d.subject.clone(),
            subject: d.subject.clone(),
        }
        .to_der()
        .unwrap();
        let success =
            h.ra.pki_operation(&message(&h, &d, MessageType::CertPoll, "tx-o", &poll))
                .await
                .unwrap();
        let read = message::verify(&crypto(), &success, &[]).unwrap();
        assert_eq!(read.pki_status, Some(PkiStatus::Success));
        assert_eq!(openssl_reads(&success), read.content.unwrap());
    }

    #[tokio::test]
    async fn a_request_signed_by_another_key_is_decided_by_its_challenge() {
        let h = harness();
        // The client signs with its own throwaway key; the CSR is for a different key.
        let signer = device("signer");
        let csr_key = PrivateKey::generate(KeyAlgorithm::Rsa2048).unwrap();
        let csr = |challenge: &str| {
            pki::csr::build_with_challenge(&csr_key, &signer.subject, &[], Some(challenge)).unwrap()
        };
        let ok = answer(
            &h,
            &message(&h, &signer, MessageType::PkcsReq, "tx-k1", &csr(CHALLENGE)),
        )
        .await;
        assert_eq!(
            ok.pki_status,
            Some(PkiStatus::Pending),
            "{:?}",
            ok.fail_info_text
        );
        let wrong = answer(
            &h,
            &message(&h, &signer, MessageType::PkcsReq, "tx-k2", &csr("guess")),
        )
        .await;
        assert_eq!(
            (wrong.pki_status, wrong.fail_info),
            (Some(PkiStatus::Failure), Some(FailInfo::BadRequest))
        );
        assert_eq!(h.journal.list(None, 10).await.unwrap().jobs.len(), 1);
    }

    #[tokio::test]
    async fn a_pkcs_req_signed_by_a_certificate_certconn_issued_is_a_renewal_without_challenge() {
        let h = harness();
        let d = device("renewer");
        let issued = record_in_ledger(&h, &d).await;
        // certmonger's way: a PKCSReq for a new key, no challenge, signed with the current
        // certificate.
        let current = Device {
            key: d.key.duplicate().unwrap(),
            cert: issued,
            subject: d.subject.clone(),
        };
        let new_key = PrivateKey::generate(KeyAlgorithm::Rsa2048).unwrap();
        let csr = pki::csr::build_with_challenge(&new_key, &d.subject, &[], None).unwrap();
        let rep = answer(
            &h,
            &message(&h, &current, MessageType::PkcsReq, "tx-renew", &csr),
        )
        .await;
        assert_eq!(
            rep.pki_status,
            Some(PkiStatus::Pending),
            "{:?}",
            rep.fail_info_text
        );
        // The same request signed by a look-alike certificate (same key, not the issued bytes)
        // still needs a challenge.
        let lookalike = Device {
            key: d.key.duplicate().unwrap(),
            cert: d.cert.clone(),
            subject: d.subject.clone(),
        };
        let rep = answer(
            &h,
            &message(&h, &lookalike, MessageType::PkcsReq, "tx-fake", &csr),
        )
        .await;
        assert_eq!(rep.pki_status, Some(PkiStatus::Failure));
    }

    /// A certificate for `d` that certconn issued earlier, in the ledger.
    async fn record_in_ledger(h: &Harness, d: &Device) -> Vec<u8> {
        let issued =
            pki::ca::ra_certificate(&d.key, &d.subject, Some((&h.ca.key, &h.ca.chain[0])), 30)
                .unwrap();
        let serial = serial_hex(
            Certificate::from_der(&issued)
                .unwrap()
                .tbs_certificate
                .serial_number
                .as_bytes(),
        );
        let request = serde_json::json!({});
        h.journal
            .enqueue(crate::journal::NewJob {
                source: "api",
                idempotency_key: &format!("earlier-{serial}"),
                kind: crate::journal::JobKind::Issue,
                request: &request,
                route: None,
            })
            .await
            .unwrap();
        let held = h
            .journal
            .lease_next(Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        let record = crate::journal::IssuedRecord {
            backend: "local".into(),
            serial,
            issuer_der: vec![0x30, 0x00],
            not_after: 4_000_000_000,
            certificate_der: issued.clone(),
            backend_version: None,
        };
        assert!(h
            .journal
            .complete(
                &held.lease,
                Completion {
                    backend: "local",
                    result: "{}",
                    issued: Some(&record),
                    ..Default::default()
                }
            )
            .await
            .unwrap());
        issued
    }

    /// An authority (Intune's place) that admits challenges starting with `ok` and records
    /// what it is asked and told.
    #[derive(Default)]
    struct FakeAuthority {
        validated: std::sync::Mutex<Vec<String>>,
        issued: std::sync::Mutex<Vec<String>>,
        not_issued: std::sync::Mutex<Vec<String>>,
        refuse_issued: std::sync::atomic::AtomicBool,
    }

    #[async_trait::async_trait]
    impl EnrolmentAuthority for FakeAuthority {
        fn name(&self) -> &'static str {
            "fake"
        }
        async fn validate(&self, r: &ChallengeRequest<'_>, csr_der: &[u8]) -> challenge::Verdict {
            assert!(CertReq::from_der(csr_der).is_ok(), "the CSR, DER");
            self.validated
                .lock()
                .unwrap()
                .push(r.transaction_id.to_owned());
            if r.challenge.starts_with("ok") {
                challenge::Verdict::Accepted
            } else {
                challenge::Verdict::Refused("not this one".into())
            }
        }
        async fn issued(&self, tx: &str, _: &[u8], cert: &[u8]) -> Result<(), String> {
            assert!(Certificate::from_der(cert).is_ok(), "the certificate, DER");
            self.issued.lock().unwrap().push(tx.to_owned());
            if self
                .refuse_issued
                .load(std::sync::atomic::Ordering::Relaxed)
            {
                Err("the service is down".into())
            } else {
                Ok(())
            }
        }
        async fn not_issued(&self, tx: &str, _: &[u8], _: &str) {
            self.not_issued.lock().unwrap().push(tx.to_owned());
        }
    }

    fn cert_poll(h: &Harness, d: &Device, txid: &str) -> Vec<u8> {
        let poll = IssuerAndSubject {
            issuer: d.subject.clone(),
            subject: d.subject.clone(),
        }
        .to_der()
        .unwrap();
        message(h, d, MessageType::CertPoll, txid, &poll)
    }

    #[tokio::test]
    async fn an_authority_validates_then_hears_of_the_certificate_once_before_a_poll_delivers_it() {
        let fake = Arc::new(FakeAuthority::default());
        let h = harness_full(
            "challenge = \"intune\"",
            crate::journal::now_secs(),
            KeyAlgorithm::EcP256,
            Some(fake.clone() as Arc<dyn EnrolmentAuthority>),
        );
        // Validated before it is journaled; PENDING; nothing told yet.
        let d = device("device-a");
        let rep = answer(&h, &pkcs_req(&h, &d, "tx-a", "ok-blob")).await;
        assert_eq!(rep.pki_status, Some(PkiStatus::Pending));
        assert_eq!(*fake.validated.lock().unwrap(), ["tx-a"]);
        assert!(fake.issued.lock().unwrap().is_empty());
        // Issued; the poll that delivers it tells the authority first, once.
        issue(&h, &d).await;
        for _ in 0..2 {
            let rep = answer(&h, &cert_poll(&h, &d, "tx-a")).await;
            assert_eq!(
                rep.pki_status,
                Some(PkiStatus::Success),
                "{:?}",
                rep.fail_info_text
            );
        }
        assert_eq!(*fake.issued.lock().unwrap(), ["tx-a"]);

        // The authority does not take the notification: withheld, now and on the next poll,
        // and it is told the request was not delivered, once.
        fake.refuse_issued
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let d2 = device("device-b");
        let rep = answer(&h, &pkcs_req(&h, &d2, "tx-b", "ok-blob-2")).await;
        assert_eq!(rep.pki_status, Some(PkiStatus::Pending));
        issue(&h, &d2).await;
        for _ in 0..2 {
            let rep = answer(&h, &cert_poll(&h, &d2, "tx-b")).await;
            assert_eq!(rep.pki_status, Some(PkiStatus::Failure));
        }
        assert_eq!(*fake.issued.lock().unwrap(), ["tx-a", "tx-b"]);
        assert_eq!(*fake.not_issued.lock().unwrap(), ["tx-b"]);

        // Refused by the authority: FAILURE, nothing journaled.
        let d3 = device("device-c");
        let rep = answer(&h, &pkcs_req(&h, &d3, "tx-c", "forged")).await;
        assert_eq!(rep.pki_status, Some(PkiStatus::Failure));
        assert!(h.journal.find(SOURCE, "scep:tx-c").await.unwrap().is_none());

        // A renewal (signed by a certificate certconn issued, in the ledger) that carries a
        // challenge is the authority's to decide too: refused here, though the certificate
        // alone would have authorised it.
        let d4 = device("device-d");
        let renewing = Device {
            cert: record_in_ledger(&h, &d4).await,
            key: d4.key.duplicate().unwrap(),
            subject: d4.subject.clone(),
        };
        let rep = answer(&h, &pkcs_req(&h, &renewing, "tx-renew", "forged-renewal")).await;
        assert_eq!(rep.pki_status, Some(PkiStatus::Failure));
        assert!(fake
            .validated
            .lock()
            .unwrap()
            .contains(&"tx-renew".to_owned()));
    }

    /// A device whose throwaway signer certificate has a 32-byte serial, made by the openssl
    /// CLI as a mainstream Linux client makes it.
    fn device_with_long_serial(dir: &std::path::Path, name: &str) -> Device {
        let key = PrivateKey::generate(KeyAlgorithm::Rsa2048).unwrap();
        let key_file = dir.join(format!("{name}.key.der"));
        std::fs::write(&key_file, key.pkcs8_der().unwrap()).unwrap();
        let cert_file = dir.join(format!("{name}.crt.der"));
        let out = std::process::Command::new("openssl")
            .args(["req", "-x509", "-new", "-keyform", "DER", "-key"])
            .arg(&key_file)
            .args([
                "-subj",
                &format!("/CN={name}"),
                "-days",
                "1",
                "-outform",
                "DER",
            ])
            .args(["-set_serial", &format!("0x{}", "a5".repeat(32))])
            .arg("-out")
            .arg(&cert_file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cert = std::fs::read(&cert_file).unwrap();
        assert!(
            Certificate::from_der(&cert).is_err(),
            "RFC 5280's profile refuses this serial"
        );
        Device {
            key,
            cert,
            subject: format!("CN={name}").parse().unwrap(),
        }
    }

    #[tokio::test]
    async fn a_signer_with_a_32_byte_serial_enrols_and_openssl_opens_the_reply() {
        let h = harness();
        let dir = tempfile::tempdir().unwrap();
        let d = device_with_long_serial(dir.path(), "long-serial");
        let rep = answer(&h, &pkcs_req(&h, &d, "tx-long", CHALLENGE)).await;
        assert_eq!(
            rep.pki_status,
            Some(PkiStatus::Pending),
            "{:?}",
            rep.fail_info_text
        );
        issue(&h, &d).await;
        let poll = IssuerAndSubject {
            issuer: d.subject.clone(),
            subject: d.subject.clone(),
        }
        .to_der()
        .unwrap();
        let reply =
            h.ra.pki_operation(&message(&h, &d, MessageType::CertPoll, "tx-long", &poll))
                .await
                .unwrap();
        let rep = message::verify(&crypto(), &reply, &[]).unwrap();
        assert_eq!(rep.pki_status, Some(PkiStatus::Success));
        // The reply is sealed for the 32-byte serial, and OpenSSL finds itself as recipient.
        let envelope = dir.path().join("envelope.der");
        std::fs::write(&envelope, openssl_reads(&reply)).unwrap();
        let key_file = dir.path().join("long-serial.key.der");
        let out = std::process::Command::new("openssl")
            .args(["cms", "-decrypt", "-inform", "DER", "-in"])
            .arg(&envelope)
            .args(["-recip"])
            .arg(dir.path().join("long-serial.crt.der"))
            .args(["-inkey"])
            .arg(&key_file)
            .args(["-keyform", "DER", "-binary"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl cms -decrypt: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, opened(&rep, &d));
        let certs = certs::parse_certs_only(&out.stdout).unwrap();
        let leaf = Certificate::from_der(&certs[0]).unwrap();
        assert_eq!(
            leaf.tbs_certificate
                .subject_public_key_info
                .to_der()
                .unwrap(),
            d.key.public_key_der()
        );
    }

    #[tokio::test]
    async fn a_transaction_id_names_a_new_request_once_the_one_before_has_settled() {
        let h = harness();
        let d = device("same-key");
        let rep = answer(&h, &pkcs_req(&h, &d, "tx-key-hash", CHALLENGE)).await;
        assert_eq!(rep.pki_status, Some(PkiStatus::Pending));
        // Another CSR under the same ID while the first is in progress is refused.
        let other = pki::csr::build_with_challenge(
            &d.key,
            &"CN=same-key-2".parse().unwrap(),
            &[],
            Some(CHALLENGE),
        )
        .unwrap();
        let rep = answer(
            &h,
            &message(&h, &d, MessageType::PkcsReq, "tx-key-hash", &other),
        )
        .await;
        assert_eq!(
            (rep.pki_status, rep.fail_info),
            (Some(PkiStatus::Failure), Some(FailInfo::BadRequest))
        );
        issue(&h, &d).await;
        // Once it has settled, a CSR for another key under the same ID is still refused…
        let stranger = device("stranger");
        let rep = answer(&h, &pkcs_req(&h, &stranger, "tx-key-hash", CHALLENGE)).await;
        assert_eq!(
            (rep.pki_status, rep.fail_info),
            (Some(PkiStatus::Failure), Some(FailInfo::BadRequest))
        );
        // …and a new CSR for the same key (a same-key renewal from a client that derives the
        // ID from the key) is a new request, journaled beside the first.
        let rep = answer(
            &h,
            &message(&h, &d, MessageType::PkcsReq, "tx-key-hash", &other),
        )
        .await;
        assert_eq!(
            rep.pki_status,
            Some(PkiStatus::Pending),
            "{:?}",
            rep.fail_info_text
        );
        let second = h
            .journal
            .find(SOURCE, "scep:tx-key-hash#2")
            .await
            .unwrap()
            .expect("the second request is journaled");
        assert_eq!(second.state, JobState::Queued);
        // CertPoll asks about the latest request under the ID.
        let poll = IssuerAndSubject {
            issuer: d.subject.clone(),
            subject: d.subject.clone(),
        }
        .to_der()
        .unwrap();
        let rep = answer(
            &h,
            &message(&h, &d, MessageType::CertPoll, "tx-key-hash", &poll),
        )
        .await;
        assert_eq!(rep.pki_status, Some(PkiStatus::Pending));
    }

    #[tokio::test]
    async fn a_request_signed_with_rsassa_pss_is_verified_and_admitted() {
        let h = harness();
        let d = device("pss-signer");
        let csr = pki::csr::build_with_challenge(&d.key, &d.subject, &[], Some(CHALLENGE)).unwrap();
        let crypto = crypto();
        let sealed = envelope::seal(
            &crypto,
            &csr,
            &h.ra_cert,
            Cipher::Aes256Cbc,
            KeyTransport::Pkcs1,
        )
        .unwrap();
        let nonce = crypto.random(16).unwrap();
        let identity = CustodyIdentity {
            key: &d.key,
            certificate: &d.cert,
        };
        let outgoing = |content: Option<&[u8]>| -> Vec<u8> {
            message::sign_pss(
                &crypto,
                &identity,
                &Outgoing {
                    message_type: MessageType::PkcsReq,
                    transaction_id: "tx-pss",
                    sender_nonce: &nonce,
                    recipient_nonce: None,
                    pki_status: None,
                    fail_info: None,
                    content,
                    extra_certificates: &[],
                    send_certificates: true,
                },
            )
            .unwrap()
        };
        let request = outgoing(Some(&sealed));
        // OpenSSL reads the request as an RSASSA-PSS SignedData: the encoding is the standard one.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pss.der");
        std::fs::write(&file, &request).unwrap();
        let out = std::process::Command::new("openssl")
            .args([
                "cms",
                "-verify",
                "-noverify",
                "-inform",
                "DER",
                "-binary",
                "-in",
            ])
            .arg(&file)
            .args(["-out", "/dev/null"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl cms -verify: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dump = std::process::Command::new("openssl")
            .args(["cms", "-cmsout", "-print", "-inform", "DER", "-in"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&dump.stdout).contains("rsassaPss"));

        let rep = answer(&h, &request).await;
        assert_eq!(
            rep.pki_status,
            Some(PkiStatus::Pending),
            "{:?}",
            rep.fail_info_text
        );
        assert!(h
            .journal
            .find(SOURCE, "scep:tx-pss")
            .await
            .unwrap()
            .is_some());
        // A PSS signature that does not verify is refused like any other.
        let mut forged = outgoing(Some(&sealed));
        let at = forged.len() - 10;
        forged[at] ^= 0x01;
        assert!(h.ra.pki_operation(&forged).await.is_err());
    }

    /// A PKCSReq from `device` sealed for `recipient` (whatever certificate a client chose).
    fn pkcs_req_to(device: &Device, txid: &str, recipient: &[u8]) -> Vec<u8> {
        let csr =
            pki::csr::build_with_challenge(&device.key, &device.subject, &[], Some(CHALLENGE))
                .unwrap();
        let crypto = crypto();
        let sealed = envelope::seal(
            &crypto,
            &csr,
            recipient,
            Cipher::Aes128Cbc,
            KeyTransport::Pkcs1,
        )
        .unwrap();
        let nonce = crypto.random(16).unwrap();
        message::sign(
            &crypto,
            &CustodyIdentity {
                key: &device.key,
                certificate: &device.cert,
            },
            Digest::Sha256,
            &Outgoing {
                message_type: MessageType::PkcsReq,
                transaction_id: txid,
                sender_nonce: &nonce,
                recipient_nonce: None,
                pki_status: None,
                fail_info: None,
                content: Some(&sealed),
                extra_certificates: &[],
                send_certificates: true,
            },
        )
        .unwrap()
    }

    fn key_usage(cert: &[u8]) -> (bool, bool) {
        let cert = Certificate::from_der(cert).unwrap();
        let (_, ku) = cert
            .tbs_certificate
            .get::<x509_cert::ext::pkix::KeyUsage>()
            .unwrap()
            .expect("a key usage");
        (ku.digital_signature(), ku.key_encipherment())
    }

    #[tokio::test]
    async fn the_ndes_layout_has_a_signing_and_an_encryption_ra_and_either_or_the_ca_if_allowed_decrypts(
    ) {
        let h = harness_with(
            "ra_layout = \"ndes\"\ndecrypt_with_ca_key = true",
            crate::journal::now_secs(),
            KeyAlgorithm::Rsa2048,
        );
        let published = certs::parse_certs_only(&h.ra.ca_certificates().unwrap()).unwrap();
        assert_eq!(published.len(), 3, "signing RA, encryption RA, CA");
        // What a client that picks by key usage finds: one certificate for each job.
        let encryption: Vec<_> = published
            .iter()
            .filter(|c| key_usage(c) == (false, true))
            .collect();
        let signing: Vec<_> = published
            .iter()
            .filter(|c| **c != h.ca.chain[0] && key_usage(c) == (true, false))
            .collect();
        assert_eq!((encryption.len(), signing.len()), (1, 1));
        assert_eq!(signing[0], &h.ra_cert);
        for (txid, recipient) in [
            ("tx-enc", encryption[0].as_slice()),
            ("tx-sign", signing[0].as_slice()),
            ("tx-ca", h.ca.chain[0].as_slice()),
        ] {
            let d = device(txid);
            let rep = answer(&h, &pkcs_req_to(&d, txid, recipient)).await;
            assert_eq!(
                rep.pki_status,
                Some(PkiStatus::Pending),
                "{txid}: {:?}",
                rep.fail_info_text
            );
            assert_eq!(
                rep.signer, h.ra_cert,
                "replies are signed by the signing RA"
            );
        }
        // Without decrypt_with_ca_key the CA key opens nothing.
        let strict = harness_with(
            "ra_layout = \"ndes\"",
            crate::journal::now_secs(),
            KeyAlgorithm::Rsa2048,
        );
        let d = device("ca-sealed");
        let rep = answer(
            &strict,
            &pkcs_req_to(&d, "tx-ca-strict", &strict.ca.chain[0]),
        )
        .await;
        assert_eq!(rep.fail_info, Some(FailInfo::BadMessageCheck));
        // A certificate the server holds no key for is still the wrong recipient.
        let stranger = device("stranger");
        let rep = answer(&h, &pkcs_req_to(&device("d"), "tx-x", &stranger.cert)).await;
        assert_eq!(rep.fail_info, Some(FailInfo::BadMessageCheck));
    }

    /// openssl's reading of a GetNextCACert answer: the certificates it carries and the
    /// certificate that signed it.
    fn openssl_next_ca(signed: &[u8]) -> (Vec<Vec<u8>>, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("next.der");
        std::fs::write(&input, signed).unwrap();
        let (bag, signer) = (dir.path().join("bag.der"), dir.path().join("signer.pem"));
        let o = std::process::Command::new("openssl")
            .args([
                "cms",
                "-verify",
                "-noverify",
                "-inform",
                "DER",
                "-binary",
                "-in",
            ])
            .arg(&input)
            .arg("-out")
            .arg(&bag)
            .arg("-signer")
            .arg(&signer)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let certs = certs::parse_certs_only(&std::fs::read(&bag).unwrap()).unwrap();
        let signer = pem::decode_all(&std::fs::read_to_string(&signer).unwrap()).unwrap();
        (certs, signer[0].1.clone())
    }

    #[tokio::test]
    async fn the_ra_renews_announces_its_successor_switches_and_still_decrypts_for_the_old_one() {
        let day = 86_400;
        let t0 = crate::journal::now_secs();
        let h = harness_with("ra_validity_days = 30", t0, KeyAlgorithm::EcP256);
        let old = h.ra_cert.clone();
        assert!(h.ra.capabilities().to_body().contains("GetNextCACert"));
        assert!(h.ra.next_ca_certificates().unwrap().is_none());
        // A client fetched GetCACert before the switch and seals its request for the old RA.
        let late = device("late");
        let sealed_for_old = pkcs_req(&h, &late, "tx-late", CHALLENGE);

        // Day 21 of 30 (past two thirds): the next RA is made and announced, not yet used.
        h.ra.maintain(t0 + 21 * day).unwrap();
        let (announced, signer) = openssl_next_ca(
            &h.ra
                .next_ca_certificates()
                .unwrap()
                .expect("the next RA is announced"),
        );
        assert_eq!(signer, old, "the announcement is signed by the current RA");
        let next = announced[0].clone();
        assert_ne!(next, old);
        assert!(announced.contains(&h.ca.chain[0]));
        let published = certs::parse_certs_only(&h.ra.ca_certificates().unwrap()).unwrap();
        assert_eq!(
            published[0], old,
            "GetCACert still publishes the current RA"
        );

        // Day 26 (past five sixths): the next RA takes over.
        h.ra.maintain(t0 + 26 * day).unwrap();
        let published = certs::parse_certs_only(&h.ra.ca_certificates().unwrap()).unwrap();
        assert_eq!(published[0], next);
        assert!(h.ra.next_ca_certificates().unwrap().is_none());
        assert_eq!(h.ra.current_generation().number, 2);
        let status = h.ra.ra_keys.status(t0 + 26 * day);
        assert_eq!(status["generation"], 2);
        assert_eq!(status["next_announced"], false);
        assert!(status["warning"].is_null(), "{status}");

        // The request sealed for the old RA before the switch is still read, and answered
        // by the new RA.
        let rep = answer(&h, &sealed_for_old).await;
        assert_eq!(
            rep.pki_status,
            Some(PkiStatus::Pending),
            "{:?}",
            rep.fail_info_text
        );
        assert_eq!(rep.signer, next);
        // A client that enrols across the switch seals for the new RA.
        let fresh = device("fresh");
        let rep = answer(&h, &pkcs_req_to(&fresh, "tx-fresh", &next)).await;
        assert_eq!(rep.pki_status, Some(PkiStatus::Pending));

        // A restart finds the same generations in custody and the same current one.
        let reopened = RaKeys::open(&h.sc, h.keys.clone(), h.ca.clone(), t0 + 26 * day).unwrap();
        assert_eq!(reopened.current().number, 2);
        assert_eq!(reopened.current().certificate(), next.as_slice());
        assert!(reopened.next().is_none());
        // … and, restarted before the switch point, the old one with the next announced.
        let before = RaKeys::open(&h.sc, h.keys.clone(), h.ca.clone(), t0 + 22 * day).unwrap();
        assert_eq!(before.current().certificate(), old.as_slice());
        assert_eq!(
            before.next().map(|g| g.certificate().to_vec()),
            Some(next.clone())
        );

        // Once the old RA has expired (day 31), it no longer decrypts.
        h.ra.maintain(t0 + 31 * day).unwrap();
        let rep = answer(
            &h,
            &pkcs_req(&h, &device("too-late"), "tx-too-late", CHALLENGE),
        )
        .await;
        assert_eq!(rep.fail_info, Some(FailInfo::BadMessageCheck));
    }

    #[tokio::test]
    async fn an_identical_csr_signed_by_the_certificate_it_produced_is_a_renewal_and_get_cert_finds_it(
    ) {
        let h = harness();
        let d = device("resubmitter");
        let first = pkcs_req(&h, &d, "tx-resubmit", CHALLENGE);
        assert_eq!(
            answer(&h, &first).await.pki_status,
            Some(PkiStatus::Pending)
        );
        // The worker issues, recording the certificate in the ledger.
        let held = h
            .journal
            .lease_next(Duration::from_secs(60))
            .await
            .unwrap()
            .expect("a queued job");
        let issued =
            pki::ca::ra_certificate(&d.key, &d.subject, Some((&h.ca.key, &h.ca.chain[0])), 30)
                .unwrap();
        let record = crate::journal::IssuedRecord {
            backend: "local".into(),
            serial: serial_hex(
                Certificate::from_der(&issued)
                    .unwrap()
                    .tbs_certificate
                    .serial_number
                    .as_bytes(),
            ),
            issuer_der: vec![0x30, 0x00],
            not_after: 4_000_000_000,
            certificate_der: issued.clone(),
            backend_version: None,
        };
        let result = serde_json::to_string(&JobResult {
            certificate_pem: Some(pem::encode("CERTIFICATE", &issued)),
            ..Default::default()
        })
        .unwrap();
        assert!(h
            .journal
            .complete(
                &held.lease,
                Completion {
                    backend: "local",
                    result: &result,
                    issued: Some(&record),
                    ..Default::default()
                }
            )
            .await
            .unwrap());
        // The same CSR resent under the throwaway signer is the first request again.
        let resent = pkcs_req(&h, &d, "tx-resubmit", CHALLENGE);
        assert_eq!(
            answer(&h, &resent).await.pki_status,
            Some(PkiStatus::Success)
        );
        assert!(h
            .journal
            .find(SOURCE, "scep:tx-resubmit#2")
            .await
            .unwrap()
            .is_none());
        // Byte for byte the same CSR, signed by the certificate it produced: a renewal.
        let holder = Device {
            key: d.key.duplicate().unwrap(),
            cert: issued,
            subject: d.subject.clone(),
        };
        let csr = pki::csr::build_with_challenge(&d.key, &d.subject, &[], Some(CHALLENGE)).unwrap();
        let first_job = h
            .journal
            .find(SOURCE, "scep:tx-resubmit")
            .await
            .unwrap()
            .unwrap();
        assert!(same_csr(
            &first_job,
            &pem::encode("CERTIFICATE REQUEST", &csr)
        ));
        let rep = answer(
            &h,
            &message(&h, &holder, MessageType::PkcsReq, "tx-resubmit", &csr),
        )
        .await;
        assert_eq!(
            rep.pki_status,
            Some(PkiStatus::Pending),
            "{:?}",
            rep.fail_info_text
        );
        assert!(h
            .journal
            .find(SOURCE, "scep:tx-resubmit#2")
            .await
            .unwrap()
            .is_some());

        // GetCert finds the certificate by issuer and serial; another issuer finds nothing.
        let cert = Certificate::from_der(&holder.cert).unwrap();
        let ask = |issuer: x509_cert::name::Name| {
            cms::cert::IssuerAndSerialNumber {
                issuer,
                serial_number: cert.tbs_certificate.serial_number.clone(),
            }
            .to_der()
            .unwrap()
        };
        let rep = answer(
            &h,
            &message(
                &h,
                &d,
                MessageType::GetCert,
                "tx-get-cert",
                &ask(cert.tbs_certificate.issuer.clone()),
            ),
        )
        .await;
        assert_eq!(
            rep.pki_status,
            Some(PkiStatus::Success),
            "{:?}",
            rep.fail_info_text
        );
        assert_eq!(
            certs::parse_certs_only(&opened(&rep, &d)).unwrap(),
            vec![holder.cert.clone()]
        );
        let rep = answer(
            &h,
            &message(
                &h,
                &d,
                MessageType::GetCert,
                "tx-get-cert-2",
                &ask(d.subject.clone()),
            ),
        )
        .await;
        assert_eq!(rep.fail_info, Some(FailInfo::BadCertId));
    }
}
