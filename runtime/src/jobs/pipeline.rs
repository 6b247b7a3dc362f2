//! The pipeline steps. Each turns one leased job into an [`Outcome`]; the scheduler records it.
//!
//! issue:  custody keygen → CSR → routed backend `issue` (or `poll`) → check the certificate is
//!         for our key → PKCS#12 under a random password → seal the password for the device.
//! revoke: find the backend that issued the serial → backend `revoke` → mark it in the ledger.
//! import: see [`super::import`].

use std::str::FromStr;
use std::sync::Arc;

use base64::Engine as _;
use der::{Decode, Encode};
use x509_cert::name::Name;
use x509_cert::Certificate;
use zeroize::Zeroizing;

use super::journal::IssuedRecord;
use super::model::{
    ImportJob, IssueJob, JobKind, JobRecord, JobResult, RevocationReason, RevokeJob,
};
use crate::config::ProfileConfig;
use crate::connector::Services;
use crate::custody::store::StoredKey;
use crate::custody::PrivateKey;
use crate::pki::{self, pem};
use crate::plugins::backend::{bounded, describe_backend_error, CallResult};
use crate::plugins::bindings::types as wit;
use crate::plugins::instance::Lease;
use crate::plugins::registry::Route;
use crate::plugins::{LoadedBackend, PluginError};
use certconn_x509::SubjectAltName;

/// What happened to a job in one run.
#[derive(Debug)]
pub enum Outcome {
    Done {
        backend: String,
        result: Box<JobResult>,
        password: Option<Zeroizing<String>>,
        issued: Option<Box<IssuedRecord>>,
        revoked: Option<(String, String, String)>,
    },
    Pending {
        backend: String,
        token: String,
        retry_after_seconds: u32,
        message: String,
    },
    Retry {
        backend: Option<String>,
        error: String,
    },
    Fail {
        backend: Option<String>,
        error: String,
    },
    /// No backend of the route could take the job (unloaded, not loaded, quarantined): it waits
    /// without using up an attempt.
    Unavailable { error: String },
}

pub(super) fn fail(backend: Option<&str>, error: impl Into<String>) -> Outcome {
    Outcome::Fail {
        backend: backend.map(Into::into),
        error: error.into(),
    }
}

/// Runs one job.
pub async fn run(services: &Arc<Services>, job: &JobRecord) -> Outcome {
    match job.kind {
        JobKind::Issue => match serde_json::from_value::<IssueJob>(job.request.clone()) {
            Ok(req) => issue(services, job, &req).await,
            Err(e) => fail(None, format!("stored request does not parse: {e}")),
        },
        JobKind::Revoke => match serde_json::from_value::<RevokeJob>(job.request.clone()) {
            Ok(req) => revoke(services, job, &req).await,
            Err(e) => fail(None, format!("stored request does not parse: {e}")),
        },
        JobKind::Import => match serde_json::from_value::<ImportJob>(job.request.clone()) {
            Ok(req) => super::import::run(services, job, &req).await,
            Err(e) => fail(None, format!("stored request does not parse: {e}")),
        },
    }
}

/// Maps a backend's answer that is not a success.
pub(super) fn from_backend_error(backend: &str, e: wit::BackendError) -> Outcome {
    match e {
        wit::BackendError::Pending(p) if p.poll_token.len() > MAX_POLL_TOKEN => fail(
            Some(backend),
            format!(
                "the backend answered pending with a {}-byte poll token; at most {MAX_POLL_TOKEN}",
                p.poll_token.len()
            ),
        ),
        wit::BackendError::Pending(p) => Outcome::Pending {
            backend: backend.into(),
            token: p.poll_token,
            retry_after_seconds: p.retry_after_seconds.max(1),
            message: bounded(&p.message),
        },
        e @ wit::BackendError::Transient(_) => Outcome::Retry {
            backend: Some(backend.into()),
            error: describe_backend_error(&e),
        },
        other => fail(Some(backend), describe_backend_error(&other)),
    }
}

/// Largest poll token kept in the journal.
const MAX_POLL_TOKEN: usize = 8 * 1024;
/// Largest certificate a backend may return, and most certificates in its chain.
const MAX_CERTIFICATE: usize = 64 * 1024;
const MAX_CHAIN: usize = 16;

/// The custody name of a device key kept while the CA answers pending.
fn pending_key_name(job_id: &str) -> String {
    format!("pending-{job_id}")
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

/// Where the key being certified lives.
enum DeviceKey {
    /// The device sent a CSR and keeps its key.
    OwnedByDevice,
    /// Made for this attempt; it goes into the PFX. Held as a stored key (not yet in the
    /// store) so the backend can use it as the `request` handle.
    Fresh(Arc<StoredKey>),
    /// Made by an earlier attempt that the CA answered `pending`; kept in custody until now.
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
            Self::Fresh(k) => Some(&k.key),
            Self::Kept(k) => Some(&k.key),
        }
    }
}

/// The subject and SANs of a request, parsed once (intake already validated them).
fn requested_names(req: &IssueJob) -> Result<(Option<Name>, Vec<SubjectAltName>), String> {
    let subject = if req.subject.is_empty() {
        None
    } else {
        Some(Name::from_str(&req.subject).map_err(|e| format!("subject {:?}: {e}", req.subject))?)
    };
    let sans = req
        .sans
        .iter()
        .map(|s| SubjectAltName::parse(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    Ok((subject, sans))
}

/// The profile a job names and the backends it routes to, in order, or why the job cannot run
/// (no backend is involved yet, so the caller fails it with none).
pub(super) fn routed<'a>(
    services: &'a Services,
    profile_name: &str,
) -> Result<(&'a ProfileConfig, Route), String> {
    let profile = services
        .config
        .profiles
        .get(profile_name)
        .ok_or_else(|| format!("profile {profile_name:?} is not configured"))?;
    let route = services
        .registry
        .route(profile_name)
        .ok_or_else(|| format!("profile {profile_name:?} has no route"))?;
    Ok((profile, route))
}

/// How a call through a [`Route`] ended.
pub(super) enum Routed<T> {
    /// A backend answered (issued, rejected, pending…): the CA's decision, never passed on.
    Answer {
        lease: Lease,
        answer: Result<T, wit::BackendError>,
    },
    /// The call could not be made for a reason no other backend changes (bad settings).
    Final(Outcome),
    /// Every candidate was down, quarantined or failed with a fault or a transient error:
    /// retried later with all the reasons.
    Exhausted(Outcome),
}

/// Makes one call through `route`: candidates in order; a plugin fault or a transient error
/// counts against that instance's circuit breaker and moves to the next candidate.
pub(super) async fn call_through<T, F, Fut>(route: &mut Route, mut call: F) -> Routed<T>
where
    F: FnMut(Arc<LoadedBackend>) -> Fut,
    Fut: std::future::Future<Output = CallResult<T>>,
{
    let mut failures = Vec::new();
    let mut last = None;
    while let Some(lease) = route.next().await {
        let name = lease.backend.name.to_string();
        let failure = match call(lease.backend.clone()).await {
            Ok(Err(e @ wit::BackendError::Transient(_))) => describe_backend_error(&e),
            Err(e @ PluginError::Fault { .. }) => bounded(&e.to_string()),
            Err(other) => return Routed::Final(fail(Some(&name), other.to_string())),
            Ok(answer) => {
                lease.instance.breaker.success(&name);
                return Routed::Answer { lease, answer };
            }
        };
        lease.instance.breaker.failure(&name, &failure);
        if route.remaining() > 0 {
            tracing::warn!(backend = %name, "trying the next backend of the route after: {failure}");
        }
        failures.push((name.clone(), failure));
        last = Some(name);
    }
    if failures.is_empty() {
        let error = if route.skipped.is_empty() {
            "no backend is configured for this route".into()
        } else {
            format!("waiting for a backend: {}", route.skipped.join("; "))
        };
        return Routed::Exhausted(Outcome::Unavailable { error });
    }
    let error = match (failures.len(), route.skipped.is_empty()) {
        (1, true) => failures.remove(0).1,
        _ => failures
            .into_iter()
            .map(|(n, e)| format!("backend {n:?}: {e}"))
            .chain(route.skipped.drain(..))
            .collect::<Vec<_>>()
            .join("; "),
    };
    Routed::Exhausted(Outcome::Retry {
        backend: last,
        error,
    })
}

async fn issue(services: &Arc<Services>, job: &JobRecord, req: &IssueJob) -> Outcome {
    let (profile, mut route) = match routed(services, &req.profile) {
        Ok(r) => r,
        Err(e) => return fail(None, e),
    };
    // A pending job polls the backend that answered pending, and no other.
    if job.poll_token.is_some() {
        match job
            .backend
            .as_deref()
            .and_then(|b| services.registry.route_to(b))
        {
            Some(r) => route = r,
            None => {
                return fail(
                    job.backend.as_deref(),
                    "the backend this job is pending at is no longer configured",
                )
            }
        }
    }
    let bname = job
        .backend
        .clone()
        .unwrap_or_else(|| profile.backend.get_ref().clone());
    let (subject, sans) = match requested_names(req) {
        Ok(n) => n,
        Err(e) => return fail(None, e),
    };

    let (csr, key) = match &req.csr_pem {
        Some(pem_text) => match pem::decode_all(pem_text).map(|b| b.into_iter().next()) {
            Ok(Some((_, der))) => (der, DeviceKey::OwnedByDevice),
            Ok(None) => return fail(Some(&bname), "the CSR has no PEM block"),
            Err(e) => return fail(Some(&bname), format!("the CSR is not PEM: {e}")),
        },
        None => {
            let key = match services.keys.get(&pending_key_name(&job.id)) {
                Ok(kept) => DeviceKey::Kept(kept),
                Err(_) => {
                    let alg = req.key.unwrap_or(profile.key_algorithm);
                    match tokio::task::spawn_blocking(move || PrivateKey::generate(alg)).await {
                        Ok(Ok(k)) => DeviceKey::Fresh(Arc::new(StoredKey {
                            name: crate::custody::grant::REQUEST_HANDLE.into(),
                            key: k,
                            chain: Vec::new(),
                        })),
                        Ok(Err(e)) => {
                            return Outcome::Retry {
                                backend: Some(bname),
                                error: format!("key generation: {e}"),
                            }
                        }
                        Err(e) => {
                            return Outcome::Retry {
                                backend: Some(bname),
                                error: format!("key generation task: {e}"),
                            }
                        }
                    }
                }
            };
            let Some(subject) = &subject else {
                return fail(
                    Some(&bname),
                    "a subject is required when certconn makes the key",
                );
            };
            match key.private().map(|k| pki::csr::build(k, subject, &sans)) {
                Some(Ok(csr)) => (csr, key),
                Some(Err(e)) => return fail(Some(&bname), format!("building the CSR: {e}")),
                None => return fail(Some(&bname), "no key to certify"),
            }
        }
    };

    let request = wit::IssueRequest {
        job_id: job.id.clone(),
        profile: req.profile.clone(),
        csr,
        subject: match subject.as_ref().map(|n| n.to_der()).transpose() {
            Ok(s) => s,
            Err(e) => return fail(Some(&bname), format!("subject: {e}")),
        },
        subject_alt_names: wit_sans(&sans),
        validity_days: req.validity_days.or(profile.validity_days),
        template: profile.template.clone(),
    };
    let (job_id, poll_token, request_ref) = (&job.id, &job.poll_token, &request);
    let routed = call_through(&mut route, |backend| {
        let request_key = key.request_key();
        async move {
            match poll_token {
                Some(token) => backend.poll(job_id, token, request_key).await,
                None => backend.issue(request_ref, request_key).await,
            }
        }
    })
    .await;
    let (lease, answer) = match routed {
        Routed::Answer { lease, answer } => (lease, answer),
        Routed::Final(o) | Routed::Exhausted(o) => return o,
    };
    let backend = lease.backend.clone();
    let bname = backend.name.to_string();
    drop(lease);
    let issued = match answer {
        Ok(issued) => issued,
        Err(e) => {
            let outcome = from_backend_error(&bname, e);
            if let (Outcome::Pending { .. }, DeviceKey::Fresh(k)) = (&outcome, key) {
                // Keep the device key in custody until the CA answers. The plugin's store is
                // gone, so this is the last reference.
                let Ok(StoredKey { key: k, .. }) = Arc::try_unwrap(k) else {
                    return Outcome::Retry {
                        backend: Some(bname),
                        error: "the device key is still in use; retrying".into(),
                    };
                };
                if let Err(e) = services.keys.put(&pending_key_name(&job.id), k) {
                    return Outcome::Retry {
                        backend: Some(bname),
                        error: format!("keeping the device key while pending: {e}"),
                    };
                }
            }
            return outcome;
        }
    };
    let outcome = finish_issue(services, &backend, &request.csr, key.private(), issued, req);
    if let (Outcome::Done { .. }, DeviceKey::Kept(_)) = (&outcome, &key) {
        if let Err(e) = services.keys.remove(&pending_key_name(&job.id)) {
            tracing::warn!(job = %job.id, "could not remove the kept device key: {e}");
        }
    }
    outcome
}

/// Checks the backend's certificate and packages it.
fn finish_issue(
    services: &Services,
    backend: &LoadedBackend,
    csr_der: &[u8],
    key: Option<&PrivateKey>,
    issued: wit::IssuedCertificate,
    req: &IssueJob,
) -> Outcome {
    let bname = backend.name.to_string();
    if issued.certificate.len() > MAX_CERTIFICATE
        || issued.chain.len() > MAX_CHAIN
        || issued.chain.iter().any(|c| c.len() > MAX_CERTIFICATE)
    {
        return fail(
            Some(&bname),
            format!(
                "the backend returned a {}-byte certificate with {} chain certificates; at most {MAX_CERTIFICATE} bytes each and {MAX_CHAIN} in the chain",
                issued.certificate.len(),
                issued.chain.len()
            ),
        );
    }
    let cert = match Certificate::from_der(&issued.certificate) {
        Ok(c) => c,
        Err(e) => {
            return fail(
                Some(&bname),
                format!("the backend returned a certificate that does not parse: {e}"),
            )
        }
    };
    // The certificate must be for the key we asked for: a backend cannot substitute a key.
    let expected_spki = match key {
        Some(k) => k.public_key_der().to_vec(),
        None => match x509_cert::request::CertReq::from_der(csr_der)
            .and_then(|c| c.info.public_key.to_der())
        {
            Ok(s) => s,
            Err(e) => return fail(Some(&bname), format!("CSR: {e}")),
        },
    };
    match cert.tbs_certificate.subject_public_key_info.to_der() {
        Ok(spki) if spki == expected_spki => {}
        _ => {
            return fail(
                Some(&bname),
                "the backend returned a certificate for a different public key",
            )
        }
    }
    for (i, c) in issued.chain.iter().enumerate() {
        if Certificate::from_der(c).is_err() {
            return fail(
                Some(&bname),
                format!("chain certificate {i} from the backend does not parse"),
            );
        }
    }

    let serial = super::model::serial_hex(cert.tbs_certificate.serial_number.as_bytes());
    let issuer_der = match cert.tbs_certificate.issuer.to_der() {
        Ok(d) => d,
        Err(e) => return fail(Some(&bname), format!("issuer: {e}")),
    };
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
        serial: Some(serial.clone()),
        backend_version: Some(backend.version_id()),
        ..Default::default()
    };
    let mut password_out = None;
    if let Some(key) = key {
        let password = match pki::pkcs12::random_password() {
            Ok(p) => p,
            Err(e) => {
                return Outcome::Retry {
                    backend: Some(bname),
                    error: e.to_string(),
                }
            }
        };
        let friendly = cert.tbs_certificate.subject.to_string();
        let key_transport = services
            .config
            .profiles
            .get(&req.profile)
            .map(|p| p.recipient_key_transport)
            .unwrap_or_default();
        let pfx_profile = services
            .config
            .profiles
            .get(&req.profile)
            .map(|p| p.pfx_format)
            .unwrap_or_default();
        let key_pkcs8 = match key.pkcs8_der() {
            Ok(k) => k,
            Err(e) => return fail(Some(&bname), format!("the device key: {e}")),
        };
        let contents = pki::pkcs12::PfxContents {
            key_pkcs8,
            certificate: &issued.certificate,
            chain: &issued.chain,
            friendly_name: Some(&friendly),
        };
        let pfx = match pki::pkcs12::write(
            &contents,
            &password,
            services.config.pfx.iterations,
            pfx_profile,
            &services.config.policy(),
        ) {
            Ok(p) => p,
            Err(e) => return fail(Some(&bname), format!("writing the PFX: {e}")),
        };
        result.pfx_base64 = Some(b64.encode(&pfx));
        match &req.recipient_pem {
            Some(recipient) => {
                let sealed = pem::certificate_from_pem_or_der(recipient.as_bytes())
                    .map_err(|e| format!("recipient certificate: {e}"))
                    .and_then(|der| {
                        pki::cms::seal_for(&der, password.as_bytes(), key_transport)
                            .map_err(|e| format!("sealing the password: {e}"))
                    });
                match sealed {
                    Ok(s) => result.sealed_password_base64 = Some(b64.encode(s)),
                    Err(e) => return fail(Some(&bname), e),
                }
            }
            None => password_out = Some(password),
        }
    }
    let issued_record = IssuedRecord {
        backend: bname.clone(),
        serial,
        issuer_der,
        not_after: cert
            .tbs_certificate
            .validity
            .not_after
            .to_unix_duration()
            .as_secs() as i64,
        certificate_der: issued.certificate,
    };
    Outcome::Done {
        backend: bname,
        result: Box::new(result),
        password: password_out,
        issued: Some(Box::new(issued_record)),
        revoked: None,
    }
}

fn reason_to_wit(r: RevocationReason) -> wit::RevocationReason {
    use wit::RevocationReason as W;
    match r {
        RevocationReason::Unspecified => W::Unspecified,
        RevocationReason::KeyCompromise => W::KeyCompromise,
        RevocationReason::CaCompromise => W::CaCompromise,
        RevocationReason::AffiliationChanged => W::AffiliationChanged,
        RevocationReason::Superseded => W::Superseded,
        RevocationReason::CessationOfOperation => W::CessationOfOperation,
        RevocationReason::CertificateHold => W::CertificateHold,
        RevocationReason::PrivilegeWithdrawn => W::PrivilegeWithdrawn,
    }
}

async fn revoke(services: &Arc<Services>, job: &JobRecord, req: &RevokeJob) -> Outcome {
    let serial = match req.normalized_serial() {
        Ok(s) => s,
        Err(e) => return fail(None, e),
    };
    let known = match services.journal.issued_by(&serial) {
        Ok(k) => k,
        Err(e) => {
            return Outcome::Retry {
                backend: None,
                error: e.to_string(),
            }
        }
    };
    let (bname, issuer) = match (&req.backend, known) {
        (Some(b), Some((issued_by, issuer))) if *b == issued_by => (b.clone(), Some(issuer)),
        (Some(b), _) => (b.clone(), None),
        (None, Some((b, issuer))) => (b, Some(issuer)),
        (None, None) => {
            return fail(
                None,
                format!(
                "serial {serial} was not issued through certconn; name the backend to revoke it at"
            ),
            )
        }
    };
    let Some(mut route) = services.registry.route_to(&bname) else {
        return fail(Some(&bname), format!("backend {bname:?} is not configured"));
    };
    let request = wit::RevokeRequest {
        job_id: job.id.clone(),
        serial: serial.clone(),
        issuer,
        reason: reason_to_wit(req.reason),
    };
    let request_ref = &request;
    let (version, answer) =
        match call_through(&mut route, |b| async move { b.revoke(request_ref).await }).await {
            Routed::Answer { lease, answer } => (lease.backend.version_id(), answer),
            Routed::Final(o) | Routed::Exhausted(o) => return o,
        };
    match answer {
        Ok(()) => {
            let reason = serde_json::to_value(req.reason)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            Outcome::Done {
                backend: bname.clone(),
                result: Box::new(JobResult {
                    serial: Some(serial.clone()),
                    revoked: Some(true),
                    backend_version: Some(version),
                    ..Default::default()
                }),
                password: None,
                issued: None,
                revoked: Some((bname, serial, reason)),
            }
        }
        Err(e) => from_backend_error(&bname, e),
    }
}
