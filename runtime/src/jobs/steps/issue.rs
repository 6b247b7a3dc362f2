//! The issue step: custody keygen → CSR → routed backend `issue` (or `poll`) → the certificate
//! must be for our key → PKCS#12 under a random password → the password sealed for the device.
//! A device that sent a CSR keeps its key and gets the certificate only.

use std::sync::Arc;
use std::time::Instant;

use base64::Engine as _;
use certconn_x509::SubjectAltName;
use der::{Decode, Encode};
use x509_cert::name::Name;
use zeroize::Zeroizing;

use super::Steps;
use crate::custody::grant::{CallKeys, IssuanceScope, REQUEST_HANDLE};
use crate::custody::{KeyAlgorithm, PrivateKey, StoredKey};
use crate::jobs::model::{normalize_serial, IssueJob, JobResult};
use crate::jobs::outcome::{Completed, ErrorClass, JobError, Outcome};
use crate::jobs::routing::{backend_refusal, call_through, CaBackend, Route};
use crate::jobs::settings::ProfileConfig;
use crate::journal::{IssuedRecord, JobRecord};
use crate::metrics::{self, JobStage};
use crate::pki::{self, pem};
use crate::plugins::bindings::types as wit;

/// Where the key being certified lives.
enum DeviceKey {
    /// The device sent a CSR and keeps its key.
    OwnedByDevice,
    /// Made for this attempt; it goes into the PFX. Held as a stored key (not in the store) so
    /// the backend can use it as the `request` handle.
    Fresh(Arc<StoredKey>),
    /// Kept in custody until the job ends: made by an earlier attempt that the CA answered
    /// `pending` or that may have reached it, or made now for a call that leaves the host.
    Kept(Arc<StoredKey>),
}

impl DeviceKey {
    fn request_key(&self) -> Option<Arc<StoredKey>> {
        match self {
            Self::OwnedByDevice => None,
            Self::Fresh(k) | Self::Kept(k) => Some(k.clone()),
        }
    }

    fn private(&self) -> Option<&PrivateKey> {
        match self {
            Self::OwnedByDevice => None,
            Self::Fresh(k) | Self::Kept(k) => Some(&k.key),
        }
    }
}

/// The subject and SANs of a request, parsed once (intake already validated them).
fn requested_names(req: &IssueJob) -> Result<(Option<Name>, Vec<SubjectAltName>), JobError> {
    let subject = if req.subject.is_empty() {
        None
    } else {
        Some(
            crate::pki::dn::parse(&req.subject)
                .map_err(|e| JobError::permanent("the subject").because(e))?,
        )
    };
    let sans = req
        .sans
        .iter()
        .map(|s| SubjectAltName::parse(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| JobError::permanent("a subject alternative name").because(e))?;
    Ok((subject, sans))
}

/// The subject and SANs of the certificate a renewal replaces, for a renewal that names none.
fn names_of_renewed(current: &StoredKey) -> Result<(Option<Name>, Vec<SubjectAltName>), JobError> {
    let der = current
        .chain
        .first()
        .ok_or_else(|| JobError::permanent("the kept key has no certificate"))?;
    let cert = x509_cert::Certificate::from_der(der)
        .map_err(|e| JobError::permanent("the renewed certificate").because(e))?;
    let sans = certconn_x509::extensions::subject_alt_names_of(&cert)
        .map_err(|e| JobError::permanent("the renewed certificate's names").because(e))?;
    Ok((Some(cert.tbs_certificate.subject), sans))
}

/// Turns the validated request's SAN strings into WIT values.
fn wit_sans(sans: &[SubjectAltName]) -> Vec<wit::SubjectAltName> {
    sans.iter()
        .map(|s| match s {
            SubjectAltName::Dns(v) => wit::SubjectAltName::Dns(v.clone()),
            SubjectAltName::Email(v) => wit::SubjectAltName::Email(v.clone()),
            SubjectAltName::Upn(v) => wit::SubjectAltName::Upn(v.clone()),
            SubjectAltName::Uri(v) => wit::SubjectAltName::Uri(v.clone()),
            SubjectAltName::Ip(v) => wit::SubjectAltName::Ip(v.to_string()),
        })
        .collect()
}

impl Steps {
    pub(super) async fn issue(&self, job: &JobRecord, req: &IssueJob) -> Outcome {
        let profile = self.profile(&req.profile)?;
        let profile = &*profile;
        // A pending job polls the backend that answered pending, and no other.
        let mut route = match (&job.poll_token, job.backend.as_deref()) {
            (Some(_), Some(b)) => Route::to(b, &*self.backends).ok_or_else(|| {
                JobError::permanent("the backend this job is pending at is no longer configured")
                    .at(b)
            })?,
            (Some(_), None) => {
                return Err(JobError::permanent(
                    "the job is pending at a backend the journal does not name",
                ))
            }
            (None, _) => Route::for_profile(profile, &*self.backends),
        };
        let renewed = self.renewed(req)?;
        let (subject, sans) = match &renewed {
            Some((_, current)) if req.subject.is_empty() => names_of_renewed(current)?,
            _ => requested_names(req)?,
        };
        let clock = Instant::now();
        let (csr, key) = self
            .csr_and_key(job, req, profile, subject.as_ref(), &sans)
            .await?;
        metrics::global().job_stage(JobStage::Crypto, clock.elapsed());
        let key = self.keep_if_outside(job, key, &route).await?;
        let request = wit::IssueRequest {
            job_id: job.id.clone(),
            profile: req.profile.clone(),
            csr,
            subject: subject
                .as_ref()
                .map(|n| n.to_der())
                .transpose()
                .map_err(|e| JobError::permanent("encoding the subject").because(e))?,
            subject_alt_names: wit_sans(&sans),
            validity_days: req.validity_days.or(profile.validity_days),
            template: profile.template.clone(),
        };
        let current = renewed.as_ref().map(|(_, k)| k);
        // The one certificate a CA key may sign for this job (the host's issuance policy).
        let scope = IssuanceScope::for_request(
            key.request_key().as_deref(),
            &request.csr,
            request.validity_days,
            // Checked when the config was loaded.
            profile.usage_limits().unwrap_or_default(),
        )
        .map_err(|e| JobError::permanent("the CSR").because(e))?;
        let scope = &scope;
        // certconn signed the CSR it made itself; a CSR the device sent is the device's.
        let host_signed_csr: Option<Arc<[u8]>> =
            key.request_key().map(|_| Arc::from(request.csr.as_slice()));
        let host_signed_csr = &host_signed_csr;
        let (job_id, poll_token, request_ref, key_ref) = (&job.id, &job.poll_token, &request, &key);
        let clock = Instant::now();
        let answer = call_through(&mut route, |backend| async move {
            let keys = CallKeys {
                request: key_ref.request_key(),
                current: current.cloned(),
                scope: Some(scope.clone()),
                host_signed_csr: host_signed_csr.clone(),
            };
            match poll_token {
                Some(token) => backend.poll(job_id, token, keys).await,
                None => backend.issue(request_ref, keys).await,
            }
        })
        .await?;
        metrics::global().job_stage(JobStage::Plugin, clock.elapsed());
        let name = answer.backend_name;
        let clock = Instant::now();
        let outcome = match answer.answer {
            Ok(issued) => {
                self.package(
                    &name,
                    &*answer.backend,
                    &scope.certified_key,
                    &key,
                    issued,
                    req,
                    profile,
                )
                .await
            }
            Err(refusal) => Err(backend_refusal(&name, refusal)),
        };
        metrics::global().job_stage(JobStage::Crypto, clock.elapsed());
        self.settle_device_key(job, key, &outcome).await?;
        if let (Ok(_), Some((serial, _))) = (&outcome, &renewed) {
            // Renewed: the old key has done its one job.
            if let Err(e) = self.custody.forget_renewal(serial) {
                tracing::warn!(job = %job.id, %serial, "could not remove the renewed certificate's kept key: {}", crate::report::chain(&e));
            }
        }
        outcome
    }

    /// For a renewal, the renewed certificate's serial and its kept key (the `current` handle).
    /// A renewal needs a key certconn made and kept: a device that holds its own key signs its
    /// own renewal.
    fn renewed(&self, req: &IssueJob) -> Result<Option<(String, Arc<StoredKey>)>, JobError> {
        let Some(given) = &req.renews else {
            return Ok(None);
        };
        let serial = normalize_serial(given)
            .map_err(|e| JobError::permanent("the serial of the renewed certificate").because(e))?;
        let key = self.custody.renewal_key(&serial).ok_or_else(|| {
            JobError::permanent(format!(
                "no key is kept for certificate {serial}: certconn keeps the keys it makes only under a profile with keep_keys_for_renewal = true, and forgets a key once its certificate is renewed or revoked; enrol anew instead"
            ))
        })?;
        let certificate = key.chain.first().ok_or_else(|| {
            JobError::permanent(format!("the key kept for {serial} has no certificate"))
        })?;
        let not_after = x509_cert::Certificate::from_der(certificate)
            .map_err(|e| JobError::permanent("the renewed certificate").because(e))?
            .tbs_certificate
            .validity
            .not_after
            .to_unix_duration()
            .as_secs();
        let now = crate::journal::now_ms() / 1000;
        if (not_after as i64) < now {
            return Err(JobError::permanent(format!(
                "certificate {serial} has expired: an expired certificate proves nothing; enrol anew instead"
            )));
        }
        Ok(Some((serial, key)))
    }

    /// The CSR to send and the key it certifies: the device's own CSR, or a key certconn makes
    /// (or kept from an earlier pending attempt) and a CSR for it.
    async fn csr_and_key(
        &self,
        job: &JobRecord,
        req: &IssueJob,
        profile: &ProfileConfig,
        subject: Option<&Name>,
        sans: &[SubjectAltName],
    ) -> Result<(Vec<u8>, DeviceKey), JobError> {
        if let Some(pem_text) = &req.csr_pem {
            let blocks = pem::decode_all(pem_text)
                .map_err(|e| JobError::permanent("the CSR is not PEM").because(e))?;
            let (_, der) = blocks
                .into_iter()
                .next()
                .ok_or_else(|| JobError::permanent("the CSR has no PEM block"))?;
            return Ok((der, DeviceKey::OwnedByDevice));
        }
        let kept = self.custody.pending_key(&job.id).await.map_err(|e| {
            JobError::transient("reading the device key kept for this job").because(e)
        })?;
        let key = match kept {
            Some(kept) => DeviceKey::Kept(kept),
            None => {
                let alg = req.key.unwrap_or(profile.key_algorithm);
                let key = generate_device_key(alg).await?;
                DeviceKey::Fresh(Arc::new(StoredKey::new(
                    REQUEST_HANDLE.into(),
                    key,
                    Vec::new(),
                )))
            }
        };
        let subject = subject.ok_or_else(|| {
            JobError::permanent("a subject is required when certconn makes the key")
        })?;
        let private = key
            .private()
            .ok_or_else(|| JobError::permanent("no key to certify"))?;
        let csr = pki::csr::build(private, subject, sans)
            .map_err(|e| JobError::permanent("building the CSR").because(e))?;
        Ok((csr, key))
    }

    /// Keeps a fresh device key in custody before a call that may leave the host. A CA out
    /// there may issue for the request and the answer be lost (the daemon killed, the
    /// connection cut); the retry then sends the same request for the same key, and a CA that
    /// remembers the job (an idempotency key, a SCEP transaction id) answers with the
    /// certificate it already issued — for this key, which must still exist. A backend on
    /// the host itself (no network grant) loses nothing with its answer, and the key stays in
    /// memory only.
    async fn keep_if_outside(
        &self,
        job: &JobRecord,
        key: DeviceKey,
        route: &Route,
    ) -> Result<DeviceKey, JobError> {
        let DeviceKey::Fresh(fresh) = key else {
            return Ok(key);
        };
        if !route.reaches_outside() {
            return Ok(DeviceKey::Fresh(fresh));
        }
        let copy = fresh
            .key
            .duplicate()
            .map_err(|e| JobError::transient("copying the device key").because(e))?;
        self.custody
            .keep_pending(&job.id, copy)
            .await
            .map_err(|e| {
                JobError::transient("keeping the device key before asking the CA").because(e)
            })?;
        let kept = self
            .custody
            .pending_key(&job.id)
            .await
            .map_err(|e| JobError::transient("reading the device key just kept").because(e))?
            .ok_or_else(|| JobError::transient("the device key just kept is not in custody"))?;
        Ok(DeviceKey::Kept(kept))
    }

    /// Keeps a fresh device key in custody when the CA answered pending (the certificate it
    /// issues later must be for a key that still exists); forgets a kept one once the job has
    /// an answer that ends it.
    async fn settle_device_key(
        &self,
        job: &JobRecord,
        key: DeviceKey,
        outcome: &Outcome,
    ) -> Result<(), JobError> {
        let pending = matches!(
            outcome,
            Err(JobError {
                class: ErrorClass::Pending { .. },
                ..
            })
        );
        let ended = matches!(
            outcome,
            Ok(_)
                | Err(JobError {
                    class: ErrorClass::Permanent,
                    ..
                })
        );
        match key {
            DeviceKey::Fresh(k) if pending => {
                // The plugin's store is gone, so this is the last reference.
                let StoredKey { key, .. } = Arc::try_unwrap(k)
                    .map_err(|_| JobError::transient("the device key is still in use; retrying"))?;
                self.custody.keep_pending(&job.id, key).await.map_err(|e| {
                    JobError::transient("keeping the device key while the CA decides").because(e)
                })
            }
            DeviceKey::Kept(_) if ended => {
                if let Err(e) = self.custody.forget_pending(&job.id).await {
                    tracing::warn!(job = %job.id, "could not remove the kept device key: {}", crate::report::chain(&e));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Checks the backend's certificate and packages it: the certificate and chain, and with a
    /// key certconn made, a PFX under a random password, the password sealed for the device or
    /// handed out once.
    #[allow(clippy::too_many_arguments)]
    async fn package(
        &self,
        name: &str,
        backend: &dyn CaBackend,
        certified_key: &[u8],
        key: &DeviceKey,
        issued: wit::IssuedCertificate,
        req: &IssueJob,
        profile: &ProfileConfig,
    ) -> Outcome {
        let fail = |e: JobError| e.at(name);
        // The key the job certifies, found once (the issuance scope): the certificate must be
        // for it.
        let checked = pki::issued::check(&issued.certificate, &issued.chain, certified_key)
            .map_err(|e| {
                fail(JobError::permanent("the backend's certificate is refused").because(e))
            })?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut result = JobResult {
            certificate_pem: Some(pem::encode("CERTIFICATE", &issued.certificate)),
            chain_pem: Some(
                issued
                    .chain
                    .iter()
                    .map(|c| pem::encode("CERTIFICATE", c))
                    .collect(),
            ),
            serial: Some(checked.serial.clone()),
            backend_version: Some(backend.version_id()),
            ..Default::default()
        };
        let mut password_out = None;
        if let Some(key) = key.private() {
            let password = pki::pkcs12::random_password()
                .map_err(|e| fail(JobError::transient("a PFX password").because(e)))?;
            let friendly = crate::pki::dn::format(&checked.certificate.tbs_certificate.subject);
            let key_pkcs8 = key
                .pkcs8_der()
                .map_err(|e| fail(JobError::permanent("the device key").because(e)))?;
            let pfx = {
                let key_pkcs8 = Zeroizing::new(key_pkcs8.to_vec());
                let (certificate, chain) = (issued.certificate.clone(), issued.chain.clone());
                let password = password.clone();
                let (iterations, format, policy) = (
                    self.settings.pfx_iterations,
                    profile.pfx_format,
                    self.settings.policy,
                );
                super::cpu_bound(move || {
                    let contents = pki::pkcs12::PfxContents {
                        key_pkcs8: &key_pkcs8,
                        certificate: &certificate,
                        chain: &chain,
                        friendly_name: Some(&friendly),
                    };
                    let cpu = metrics::thread_cpu_time();
                    let pfx = pki::pkcs12::write(&contents, &password, iterations, format, &policy);
                    if let (Ok(_), Some(before), Some(after)) =
                        (&pfx, cpu, metrics::thread_cpu_time())
                    {
                        metrics::global().pfx_written(after.saturating_sub(before));
                    }
                    pfx
                })
                .await
                .map_err(fail)?
                .map_err(|e| fail(JobError::permanent("writing the PFX").because(e)))?
            };
            result.pfx_base64 = Some(b64.encode(&pfx));
            match &req.recipient_pem {
                Some(recipient) => {
                    let sealed = seal_for(recipient, &password, profile).map_err(fail)?;
                    result.sealed_password_base64 = Some(b64.encode(sealed));
                }
                None => password_out = Some(password.into()),
            }
        }
        if profile.keep_keys_for_renewal {
            if let Some(private) = key.private() {
                self.keep_for_renewal(&checked.serial, private, &issued);
            }
        }
        let backend_version = result.backend_version.clone();
        Ok(Completed {
            backend: name.to_owned(),
            result,
            password: password_out,
            issued: Some(IssuedRecord {
                backend: name.to_owned(),
                serial: checked.serial,
                issuer_der: checked.issuer_der,
                not_after: checked.not_after,
                certificate_der: issued.certificate,
                backend_version,
            }),
            revoked: None,
        })
    }
}

impl Steps {
    /// Keeps the device key of a certificate just issued, with the certificate and its chain.
    /// A failure costs only the later proof of possession, not the certificate: it is logged,
    /// and the job completes.
    fn keep_for_renewal(&self, serial: &str, key: &PrivateKey, issued: &wit::IssuedCertificate) {
        let mut chain = vec![issued.certificate.clone()];
        chain.extend(issued.chain.iter().cloned());
        let kept = key
            .duplicate()
            .map_err(crate::custody::CustodyError::from)
            .and_then(|k| self.custody.keep_for_renewal(serial, k, chain));
        if let Err(e) = kept {
            tracing::warn!(event_id = 1105, %serial, "the device key could not be kept for renewal; the certificate can be replaced only by a new enrolment: {}", crate::report::chain(&e));
        }
    }
}

/// Seals `password` for the device certificate `recipient_pem` (CMS EnvelopedData), the way the
/// profile says an RSA recipient gets it.
pub(super) fn seal_for(
    recipient_pem: &str,
    password: &Zeroizing<String>,
    profile: &ProfileConfig,
) -> Result<Vec<u8>, JobError> {
    let der = pem::certificate_from_pem_or_der(recipient_pem.as_bytes())
        .map_err(|e| JobError::permanent("the recipient certificate").because(e))?;
    pki::cms::seal_for(&der, password.as_bytes(), profile.recipient_key_transport)
        .map_err(|e| JobError::permanent("sealing the password for the device").because(e))
}

/// Makes a device key. An EC key takes a few tens of microseconds, less than handing it to a
/// blocking-pool thread and back costs (two thread switches), so it is made in place; an RSA
/// key takes tens to hundreds of milliseconds and is made off the async threads.
async fn generate_device_key(alg: KeyAlgorithm) -> Result<PrivateKey, JobError> {
    let made = match alg {
        KeyAlgorithm::EcP256 | KeyAlgorithm::EcP384 => PrivateKey::generate(alg),
        KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => {
            tokio::task::spawn_blocking(move || PrivateKey::generate(alg))
                .await
                .map_err(|e| JobError::transient("the key generation task").because(e))?
        }
    };
    made.map_err(|e| JobError::transient("generating the device key").because(e))
}
