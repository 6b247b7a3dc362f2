//! Intune's revocation requests (`PkiConnectorFEService`): certconn downloads them on an
//! interval (`downloadRevocationRequests`, up to 500 per call, optionally for one issuer),
//! journals each as a revoke job routed to the backend that issued the serial (the ledger),
//! with Intune's `requestContext` as its idempotency key, and uploads each outcome from the
//! outbox (`uploadRevocationResults`) until Intune takes it. A request that cannot be a job
//! (a serial certconn never issued, one already revoked, a malformed serial) is answered at
//! once with the matching code.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::watch;

use super::{Intune, IntuneError};
use crate::jobs::model::{RevocationReason, RevokeJob};
use crate::jobs::{Intake, SubmitError};
use crate::journal::{JobState, Outbox, OwedOutcome};

/// The source name Intune's revoke jobs carry.
pub const SOURCE: &str = "intune";

const SERVICE: &str = "PkiConnectorFEService";
const API_VERSION: &str = "5019-05-05";

/// Outcomes uploaded per call.
const ROUND: u32 = 100;

/// Intune's result codes (`CARequestErrorCode`), as the numeric strings the Java reference
/// client sends.
mod code {
    pub const NONE: &str = "0";
    pub const NON_RETRYABLE: &str = "4000";
    pub const PARAMETER_INVALID: &str = "4002";
    pub const NOT_FOUND: &str = "4004";
    pub const CONFLICT: &str = "4005";
    pub const RETRYABLE: &str = "4100";
}

/// What the status page and `/v1/health` show of Intune's revocation requests.
#[derive(Clone, Debug, Default, serde::Serialize, utoipa::ToSchema)]
pub struct IntuneRevocationStatus {
    /// Intune answered the last round.
    pub connected: bool,
    /// When the last round succeeded (RFC 3339).
    pub last_poll: Option<String>,
    /// Why the last round failed, until one succeeds.
    pub last_error: Option<String>,
    /// Requests journaled as revoke jobs since start.
    pub received: u64,
    /// Results Intune took since start (answers at once included).
    pub delivered: u64,
    /// Its jobs not ended, and results Intune has not taken yet (when the status is read).
    pub backlog: Option<crate::journal::Backlog>,
}

/// The poller of one tenant's revocation requests.
pub struct RevocationPoller {
    intune: Arc<Intune>,
    intake: Arc<Intake>,
    outbox: Arc<dyn Outbox>,
    interval: Duration,
    batch: u32,
    issuer: Option<String>,
    status: std::sync::Mutex<IntuneRevocationStatus>,
}

impl RevocationPoller {
    pub fn new(intune: Arc<Intune>, intake: Arc<Intake>, outbox: Arc<dyn Outbox>) -> Self {
        let c = &intune.config;
        Self {
            interval: Duration::from_secs(c.revocation_interval_seconds),
            batch: c.revocation_batch,
            issuer: c.revocation_issuer.clone(),
            intune: intune.clone(),
            intake,
            outbox,
            status: std::sync::Mutex::default(),
        }
    }

    /// The status now, with the backlog from the journal.
    pub async fn status(&self) -> IntuneRevocationStatus {
        let mut status = self.lock().clone();
        match self.outbox.backlog(SOURCE).await {
            Ok(b) => status.backlog = Some(b),
            Err(e) => tracing::warn!("Intune's revocation backlog: {}", crate::report::chain(&e)),
        }
        status
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, IntuneRevocationStatus> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Downloads and uploads every `interval` until `shutdown`; a failed round is logged once
    /// per distinct error and tried again at the next.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        tracing::info!(
            event_id = 3601,
            every_seconds = self.interval.as_secs(),
            "polling Intune for revocation requests"
        );
        let mut last_error: Option<String> = None;
        loop {
            let round = async {
                self.download().await?;
                self.upload().await
            };
            match round.await {
                Ok(()) => {
                    last_error = None;
                    let mut s = self.lock();
                    s.connected = true;
                    s.last_poll = Some(crate::report::rfc3339_ms(crate::journal::now_ms()));
                    s.last_error = None;
                }
                Err(e) => {
                    let error = crate::report::chain(&e);
                    {
                        let mut s = self.lock();
                        s.connected = false;
                        s.last_error = Some(error.clone());
                    }
                    if last_error.as_deref() != Some(error.as_str()) {
                        tracing::warn!(event_id = 3604, %error, "Intune revocation polling: a round failed; trying again at the next");
                    }
                    last_error = Some(error);
                }
            }
            tokio::select! {
                () = tokio::time::sleep(self.interval) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }

    /// One download: each request journaled, or answered at once when it cannot be a job.
    async fn download(&self) -> Result<(), IntuneError> {
        let body = json!({
            "downloadParameters": {
                "maxRequests": self.batch,
                "issuerName": self.issuer,
            }
        });
        let answer = self
            .intune
            .post(
                SERVICE,
                "CertificateAuthorityRequests/downloadRevocationRequests",
                API_VERSION,
                &body,
            )
            .await?;
        let requests = answer["value"].as_array().cloned().unwrap_or_default();
        let mut refused = Vec::new();
        let mut journaled = 0u64;
        for request in &requests {
            let Some(context) = request["requestContext"].as_str().filter(|c| !c.is_empty()) else {
                tracing::warn!(event_id = 3605, request = %request, "an Intune revocation request without a requestContext cannot be answered; skipped");
                continue;
            };
            let serial = request["serialNumber"].as_str().unwrap_or_default();
            let job = RevokeJob {
                serial: serial.to_owned(),
                reason: RevocationReason::Unspecified,
                backend: None,
            };
            match self.intake.submit_revoke(SOURCE, context, &job).await {
                Ok((_, true)) => journaled += 1,
                Ok((_, false)) => {}
                Err(SubmitError::Journal(e)) => {
                    return Err(IntuneError::Config(format!(
                        "journaling a revocation request: {}",
                        crate::report::chain(&e)
                    )))
                }
                Err(e) => {
                    let code = match &e {
                        SubmitError::AlreadyRevoked { .. } => code::CONFLICT,
                        SubmitError::NotIssued { .. } => code::NOT_FOUND,
                        SubmitError::Invalid(_) => code::PARAMETER_INVALID,
                        _ => code::NON_RETRYABLE,
                    };
                    refused.push(result(context, false, code, &e.to_string()));
                }
            }
        }
        self.lock().received += journaled;
        if !requests.is_empty() {
            tracing::info!(
                event_id = 3602,
                requests = requests.len(),
                journaled,
                refused = refused.len(),
                "downloaded revocation requests from Intune"
            );
        }
        if !refused.is_empty() {
            self.send(refused).await?;
        }
        Ok(())
    }

    /// Uploads the outcomes of the jobs that ended, until none is owed.
    async fn upload(&self) -> Result<(), IntuneError> {
        loop {
            let owed = self
                .outbox
                .undelivered(SOURCE, ROUND)
                .await
                .map_err(journal)?;
            if owed.is_empty() {
                return Ok(());
            }
            let results = owed.iter().map(outcome).collect();
            self.send(results).await?;
            for job in &owed {
                self.outbox.mark_delivered(&job.id).await.map_err(journal)?;
            }
        }
    }

    async fn send(&self, results: Vec<Value>) -> Result<(), IntuneError> {
        let count = results.len();
        let answer = self
            .intune
            .post(
                SERVICE,
                "CertificateAuthorityRequests/uploadRevocationResults",
                API_VERSION,
                &json!({ "results": results }),
            )
            .await?;
        if answer["value"] != json!(true) {
            return Err(IntuneError::Config(format!(
                "uploadRevocationResults was not taken: {answer}"
            )));
        }
        self.lock().delivered += count as u64;
        tracing::info!(
            event_id = 3603,
            results = count,
            "uploaded revocation results to Intune"
        );
        Ok(())
    }
}

fn journal(e: crate::journal::JournalError) -> IntuneError {
    IntuneError::Config(format!("the journal: {}", crate::report::chain(&e)))
}

fn result(context: &str, succeeded: bool, code: &str, message: &str) -> Value {
    json!({
        "requestContext": context,
        "succeeded": succeeded,
        "errorCode": code,
        "errorMessage": message,
    })
}

/// A revoke job's end as Intune's result: revoked; refused for good; or given up after
/// certconn's retries (retryable: Intune asks again).
fn outcome(job: &OwedOutcome) -> Value {
    let context = job.idempotency_key.as_str();
    let why = job.last_error.as_deref().unwrap_or("");
    match job.state {
        JobState::Succeeded => result(context, true, code::NONE, ""),
        JobState::Dead => result(context, false, code::RETRYABLE, why),
        _ => result(context, false, code::NON_RETRYABLE, why),
    }
}
