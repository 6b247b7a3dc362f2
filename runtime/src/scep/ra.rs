//! The SCEP registration authority: its custody key and certificate, and the processing of one
//! pkiMessage into a CertRep.

use std::collections::{HashSet, VecDeque};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
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
use super::challenge::{self, ChallengeError};
use crate::config::{Config, ScepConfig};
use crate::connector::{Connector, StartError, SubmitError};
use crate::custody::store::StoredKey;
use crate::custody::{KeyAlgorithm, KeyLocation, KeyStore};
use crate::jobs::model::{serial_hex, IssueJob, JobRecord, JobState};
use crate::pki::{self, pem};

/// The journal source of SCEP jobs; the idempotency key is `scep:<transactionID>`.
pub const SOURCE: &str = "scep";
/// Nonces remembered for replay detection.
const NONCE_WINDOW: usize = 100_000;
/// challengePassword (PKCS#9).
const CHALLENGE_PASSWORD: const_oid::ObjectIdentifier =
    const_oid::ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.7");

/// What a request gets when it cannot be answered with a CertRep at all.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotScep(pub String);

/// The RA: configuration, key and certificates, and the replay window.
pub struct Ra {
    key: Arc<StoredKey>,
    certificate: Vec<u8>,
    ca_certificates: Vec<Vec<u8>>,
    static_challenge: Option<Zeroizing<String>>,
    profile: String,
    one_time: bool,
    challenge_minutes: u32,
    wait: Duration,
    webhook: Option<String>,
    crypto: HostCrypto,
    nonces: Mutex<NonceWindow>,
}

/// The most recent senderNonces, for replay detection.
#[derive(Default)]
struct NonceWindow {
    seen: HashSet<Vec<u8>>,
    order: VecDeque<Vec<u8>>,
}

impl NonceWindow {
    /// False when `nonce` was seen before.
    fn insert(&mut self, nonce: &[u8]) -> bool {
        if !self.seen.insert(nonce.to_vec()) {
            return false;
        }
        self.order.push_back(nonce.to_vec());
        if self.order.len() > NONCE_WINDOW {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }
}

impl Ra {
    /// Sets the RA up at start: creates its key and certificate the first time.
    pub fn open(config: &Config, keys: &KeyStore) -> Result<Option<Self>, StartError> {
        let Some(sc) = &config.scep else {
            return Ok(None);
        };
        let fail = |m: String| StartError::Scep(m);
        let ca = keys.get(&sc.ca_key)?;
        let ca_cert = ca
            .chain
            .first()
            .ok_or_else(|| {
                fail(format!(
                    "key {:?} has no certificate to publish as the SCEP CA",
                    sc.ca_key
                ))
            })?
            .clone();
        let ra = match keys.get(&sc.ra_key) {
            Ok(k) => k,
            Err(_) => {
                tracing::info!(key = %sc.ra_key, "creating the SCEP RA key");
                keys.create(&sc.ra_key, KeyAlgorithm::Rsa2048, KeyLocation::Software)?
            }
        };
        let ra = if ra.chain.is_empty() {
            let subject = x509_cert::name::Name::from_str(&sc.ra_subject)
                .map_err(|e| fail(format!("scep.ra_subject: {e}")))?;
            let cert = pki::ca::ra_certificate(&ra.key, &subject, Some((&ca.key, &ca_cert)), 730)
                .map_err(|e| fail(format!("issuing the RA certificate: {e}")))?;
            keys.set_chain(&sc.ra_key, vec![cert, ca_cert.clone()])?;
            tracing::info!(key = %sc.ra_key, subject = %sc.ra_subject, "issued the SCEP RA certificate");
            keys.get(&sc.ra_key)?
        } else {
            ra
        };
        let certificate = ra.chain[0].clone();
        Ok(Some(Self {
            key: ra,
            certificate,
            ca_certificates: ca.chain.clone(),
            static_challenge: static_challenge(sc)?,
            profile: sc.profile.clone(),
            one_time: sc.one_time_challenges,
            challenge_minutes: sc.challenge_minutes,
            wait: Duration::from_secs(u64::from(sc.wait_seconds)),
            webhook: sc.challenge_webhook.clone(),
            crypto: HostCrypto {
                policy: config.policy(),
            },
            nonces: Mutex::new(NonceWindow::default()),
        }))
    }

    /// GetCACaps: what this server does. 3DES is left out in FIPS mode.
    pub fn capabilities(&self) -> Capabilities {
        let mut caps = vec![
            "POSTPKIOperation",
            "Renewal",
            "SHA-1",
            "SHA-256",
            "SHA-512",
            "AES",
        ];
        if !self.crypto.policy.fips {
            caps.push("DES3");
        }
        caps.push("SCEPStandard");
        Capabilities::of(&caps)
    }

    /// GetCACert: the RA certificate and the CA chain, as a certs-only SignedData.
    pub fn ca_certificates(&self) -> Result<Vec<u8>, NotScep> {
        let mut all = vec![self.certificate.clone()];
        all.extend(self.ca_certificates.iter().cloned());
        certs::certs_only(&all).map_err(|e| NotScep(e.to_string()))
    }

    /// Mints a one-time challenge.
    pub fn mint_challenge(
        &self,
        connector: &Connector,
    ) -> Result<(Zeroizing<String>, i64), crate::jobs::JournalError> {
        challenge::mint(&connector.services.journal, self.challenge_minutes)
    }

    fn identity(&self) -> CustodyIdentity<'_> {
        CustodyIdentity {
            key: &self.key.key,
            certificate: &self.certificate,
        }
    }

    /// PKIOperation: one pkiMessage in, one CertRep out. `Err` only when the message cannot be
    /// answered in SCEP at all (not a verifiable pkiMessage): the caller sends HTTP 400.
    pub async fn pki_operation(
        &self,
        connector: &Connector,
        bytes: &[u8],
    ) -> Result<Vec<u8>, NotScep> {
        let msg = message::verify(&self.crypto, bytes, &[])
            .map_err(|e| NotScep(format!("not a valid SCEP pkiMessage: {e}")))?;
        let reply = |status: PkiStatus,
                     fail: Option<(FailInfo, String)>,
                     content: Option<Vec<u8>>| {
            if let Some((f, why)) = &fail {
                tracing::warn!(transaction = %msg.transaction_id, fail_info = f.name(), "SCEP request refused: {why}");
            }
            self.cert_rep(&msg, status, fail.map(|f| f.0), content.as_deref())
        };
        if !self.fresh_nonce(msg.sender_nonce.as_deref()) {
            return reply(
                PkiStatus::Failure,
                Some((
                    FailInfo::BadRequest,
                    "replayed message: senderNonce seen before".into(),
                )),
                None,
            );
        }
        match self.process(connector, &msg).await {
            Ok(Answer::Issued(content)) => reply(PkiStatus::Success, None, Some(content)),
            Ok(Answer::Pending) => reply(PkiStatus::Pending, None, None),
            Err((f, why)) => reply(PkiStatus::Failure, Some((f, why)), None),
        }
    }

    fn fresh_nonce(&self, nonce: Option<&[u8]>) -> bool {
        let Some(n) = nonce else {
            return true;
        };
        self.nonces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(n)
    }

    async fn process(
        &self,
        connector: &Connector,
        msg: &SignedMessage,
    ) -> Result<Answer, (FailInfo, String)> {
        let bad = |f: FailInfo| move |e: certconn_scep::Error| (f, e.to_string());
        let content = msg.content.as_deref().ok_or((
            FailInfo::BadRequest,
            "the message carries no pkcsPKIEnvelope".to_string(),
        ))?;
        let (plain, opened) =
            envelope::open(&self.crypto, &self.identity(), content).map_err(|e| match e {
                certconn_scep::Error::Unsupported(_) => (FailInfo::BadAlg, e.to_string()),
                _ => (FailInfo::BadMessageCheck, e.to_string()),
            })?;
        let key = format!("scep:{}", msg.transaction_id);
        let job = match msg.message_type {
            MessageType::PkcsReq | MessageType::RenewalReq => {
                let csr_pem = pem::encode("CERTIFICATE REQUEST", &plain);
                // A resent request (the client polling by resending) finds its job again.
                match connector
                    .services
                    .journal
                    .find(SOURCE, &key)
                    .map_err(internal)?
                {
                    Some(job) => same_request(job, &csr_pem)?,
                    None => {
                        self.admit(connector, msg, &plain, &csr_pem).await?;
                        let req = IssueJob {
                            profile: self.profile.clone(),
                            subject: String::new(),
                            sans: Vec::new(),
                            key: None,
                            recipient_pem: None,
                            csr_pem: Some(csr_pem.clone()),
                            validity_days: None,
                        };
                        let (job, _) =
                            connector
                                .submit_issue(SOURCE, &key, &req)
                                .map_err(|e| match e {
                                    SubmitError::Invalid(i) => {
                                        (FailInfo::BadRequest, i.to_string())
                                    }
                                    other => internal(other),
                                })?;
                        same_request(job, &csr_pem)?
                    }
                }
            }
            MessageType::CertPoll => {
                IssuerAndSubject::from_der(&plain)
                    .map_err(|e| (FailInfo::BadRequest, format!("CertPoll content: {e}")))?;
                connector
                    .services
                    .journal
                    .find(SOURCE, &key)
                    .map_err(internal)?
                    .ok_or((
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
        let job = self.wait_for(connector, job).await?;
        match job.state {
            JobState::Succeeded => {
                let result = connector
                    .services
                    .journal
                    .take_result(&job.id)
                    .map_err(internal)?
                    .ok_or_else(|| internal("the finished job has no result"))?;
                let mut chain = Vec::new();
                for text in [result.certificate_pem, result.chain_pem]
                    .into_iter()
                    .flatten()
                {
                    for (_, der) in pem::decode_all(&text).map_err(internal)? {
                        chain.push(der);
                    }
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
            JobState::Failed | JobState::Dead => Err((
                FailInfo::BadRequest,
                job.last_error
                    .unwrap_or_else(|| "the backend refused the request".into()),
            )),
            _ => Ok(Answer::Pending),
        }
    }

    /// Checks what a new request must satisfy: the signer and the challenge (PKCSReq) or a
    /// still-valid certificate certconn issued (RenewalReq).
    async fn admit(
        &self,
        connector: &Connector,
        msg: &SignedMessage,
        csr_der: &[u8],
        csr_pem: &str,
    ) -> Result<(), (FailInfo, String)> {
        let csr = CertReq::from_der(csr_der)
            .map_err(|e| (FailInfo::BadRequest, format!("malformed PKCS#10: {e}")))?;
        let signer = Certificate::from_der(&msg.signer)
            .map_err(|e| (FailInfo::BadRequest, e.to_string()))?;
        if msg.message_type == MessageType::RenewalReq {
            let serial = serial_hex(signer.tbs_certificate.serial_number.as_bytes());
            let issued = connector
                .services
                .journal
                .issued_certificate(&serial)
                .map_err(internal)?;
            match issued {
                Some((der, revoked)) if der == msg.signer => {
                    if revoked {
                        return Err((
                            FailInfo::BadCertId,
                            format!("the renewing certificate {serial} is revoked"),
                        ));
                    }
                    let now = crate::jobs::journal::now_ms() / 1000;
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
                    return Ok(());
                }
                _ => {
                    return Err((
                        FailInfo::BadCertId,
                        "a RenewalReq must be signed by a certificate certconn issued".into(),
                    ));
                }
            }
        }
        // PKCSReq: signed with the key the CSR certifies (RFC 8894 §3.3.1), plus the challenge.
        if signer.tbs_certificate.subject_public_key_info != csr.info.public_key {
            return Err((
                FailInfo::BadMessageCheck,
                "the message is not signed by the key of the CSR".into(),
            ));
        }
        let given = challenge_password(&csr);
        let static_challenge = self.static_challenge.as_deref().map(String::as_str);
        match challenge::check(
            &connector.services.journal,
            static_challenge,
            self.one_time,
            given.as_deref(),
        ) {
            Ok(()) => Ok(()),
            Err(ChallengeError::Journal(j)) => Err(internal(j)),
            Err(ChallengeError::Invalid) if self.webhook.is_some() => {
                let url = self.webhook.as_deref().unwrap_or_default();
                let subject = csr.info.subject.to_string();
                let given = given.as_deref().unwrap_or_default();
                if challenge::ask_webhook(url, &msg.transaction_id, given, csr_pem, &subject).await
                {
                    Ok(())
                } else {
                    Err((
                        FailInfo::BadRequest,
                        "the challenge password is not valid (refused by the webhook)".into(),
                    ))
                }
            }
            Err(other) => Err((FailInfo::BadRequest, other.to_string())),
        }
    }

    /// Waits up to `wait` for the job to leave the queue.
    async fn wait_for(
        &self,
        connector: &Connector,
        mut job: JobRecord,
    ) -> Result<JobRecord, (FailInfo, String)> {
        let deadline = tokio::time::Instant::now() + self.wait;
        let mut step = Duration::from_millis(5);
        while !job.state.is_terminal()
            && job.state != JobState::Pending
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(step).await;
            step = (step * 2).min(Duration::from_millis(100));
            job = connector.services.journal.get(&job.id).map_err(internal)?;
        }
        Ok(job)
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
        message::sign(
            &self.crypto,
            &self.identity(),
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

/// A transaction ID names one request: the same ID with another CSR is refused.
fn same_request(job: JobRecord, csr_pem: &str) -> Result<JobRecord, (FailInfo, String)> {
    let stored = job.request.get("csr_pem").and_then(|v| v.as_str());
    if stored != Some(csr_pem) {
        return Err((
            FailInfo::BadRequest,
            "the transaction ID was already used for a different request".into(),
        ));
    }
    Ok(job)
}

fn challenge_password(csr: &CertReq) -> Option<String> {
    let attr = csr
        .info
        .attributes
        .iter()
        .find(|a| a.oid == CHALLENGE_PASSWORD)?;
    let value = attr.values.iter().next()?;
    // DirectoryString: PrintableString, UTF8String, … — the value bytes are the text.
    String::from_utf8(value.value().to_vec()).ok()
}

fn static_challenge(sc: &ScepConfig) -> Result<Option<Zeroizing<String>>, StartError> {
    let (env, file) = (sc.challenge_env.as_deref(), sc.challenge_file.as_deref());
    if env.is_none() && file.is_none() {
        return Ok(None);
    }
    crate::secret::read_text(
        "the static SCEP challenge (scep.challenge_env/challenge_file)",
        env,
        file,
    )
    .map(Some)
    .map_err(StartError::Scep)
}
