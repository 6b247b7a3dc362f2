//! The revoke step: find the backend that issued the serial (the ledger) → its `revoke` → the
//! revocation recorded in the ledger with the outcome.

use super::Steps;
use crate::jobs::model::{JobResult, RevocationReason, RevokeJob};
use crate::jobs::outcome::{Completed, JobError, Outcome};
use crate::jobs::routing::{backend_refusal, call_through, Route};
use crate::journal::{JobRecord, Revocation};
use crate::plugins::bindings::types as wit;

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

impl Steps {
    pub(super) async fn revoke(&self, job: &JobRecord, req: &RevokeJob) -> Outcome {
        let serial = req
            .normalized_serial()
            .map_err(|e| JobError::permanent("the serial number").because(e))?;
        let known =
            self.ledger.certificate(&serial).await.map_err(|e| {
                JobError::transient("looking the serial up in the ledger").because(e)
            })?;
        let (name, issuer) = match (&req.backend, known) {
            (Some(b), Some(entry)) if *b == entry.backend => (b.clone(), Some(entry.issuer_der)),
            (Some(b), _) => (b.clone(), None),
            (None, Some(entry)) => (entry.backend, Some(entry.issuer_der)),
            (None, None) => {
                return Err(JobError::permanent(format!(
                "serial {serial} was not issued through certconn; name the backend to revoke it at"
            )))
            }
        };
        let mut route = Route::to(&name, &*self.backends).ok_or_else(|| {
            JobError::permanent(format!("backend {name:?} is not configured")).at(&name)
        })?;
        let request = wit::RevokeRequest {
            job_id: job.id.clone(),
            serial: serial.clone(),
            issuer,
            reason: reason_to_wit(req.reason),
        };
        let request_ref = &request;
        let answer =
            call_through(&mut route, |b| async move { b.revoke(request_ref).await }).await?;
        answer.answer.map_err(|e| backend_refusal(&name, e))?;
        // A revoked certificate is renewed by no one: its kept key (if any) goes.
        if let Err(e) = self.custody.forget_renewal(&serial) {
            tracing::warn!(job = %job.id, %serial, "could not remove the revoked certificate's kept key: {}", crate::report::chain(&e));
        }
        Ok(Completed {
            backend: name.clone(),
            result: JobResult {
                serial: Some(serial.clone()),
                revoked: Some(true),
                backend_version: Some(answer.backend.version_id()),
                ..Default::default()
            },
            password: None,
            issued: None,
            revoked: Some(Revocation {
                backend: name,
                serial,
                reason: req.reason.as_str().to_owned(),
            }),
        })
    }
}
