//! Sending results back: every upstream job that ended, from the outbox, until the service has
//! it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use certconn_connector::{Delivered, ItemResult, Outcome};
use futures::StreamExt;
use tokio::sync::watch;

use super::{pause, Upstream, IN_FLIGHT, SOURCE};
use crate::jobs::model::JobResult;
use crate::journal::{JobState, OwedOutcome};

/// With nothing owed, the reporter waits for a job to change in this process; it asks the
/// journal again after this anyway (a job ended by another process sharing the journal).
const IDLE: Duration = Duration::from_secs(1);

/// Outcomes sent per round.
const ROUND: u32 = 50;

/// Why a round stopped: what failed (for the status), the error, the service's Retry-After.
type Failure = (&'static str, String, Option<Duration>);

fn journal_failure(e: crate::journal::JournalError) -> Failure {
    ("journal", crate::report::chain(&e), None)
}

impl Upstream {
    /// Sends outcomes until `shutdown`.
    pub(super) async fn report_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut failures = 0u32;
        let mut changes = self.outbox.changes();
        loop {
            // Seen before the journal is read: a job that ends during the round ticks again.
            changes.borrow_and_update();
            let delay = match self.report_round().await {
                Ok(0) => {
                    tokio::select! {
                        _ = changes.changed() => {}
                        () = tokio::time::sleep(IDLE) => {}
                        _ = shutdown.wait_for(|s| *s) => return,
                    }
                    continue;
                }
                Ok(_) => {
                    failures = 0;
                    Duration::ZERO
                }
                Err((what, error, retry_after)) => {
                    failures += 1;
                    self.fault(what, error, failures, retry_after)
                }
            };
            if pause(delay, &mut shutdown).await {
                return;
            }
        }
    }

    /// Sends what is owed now, oldest first, [`IN_FLIGHT`] at a time: how many went. Each
    /// result is marked delivered once the service has it, so the marks of a round share
    /// commits. After a result the service did not take, no other is started (the ones on
    /// their way finish); the round then returns that failure, and what did not go stays owed.
    async fn report_round(&self) -> Result<usize, Failure> {
        let owed = self
            .outbox
            .undelivered(SOURCE, ROUND)
            .await
            .map_err(journal_failure)?;
        let failed = AtomicBool::new(false);
        let delivered: Vec<Result<bool, Failure>> = futures::stream::iter(owed)
            .map(|job| self.deliver(job, &failed))
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        let mut sent = 0;
        let mut failure = None;
        for d in delivered {
            match d {
                Ok(went) => sent += usize::from(went),
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        failure.map_or(Ok(sent), Err)
    }

    /// Sends one job's outcome and marks it delivered: false when it was not tried, because
    /// another of the round failed first.
    async fn deliver(&self, job: OwedOutcome, failed: &AtomicBool) -> Result<bool, Failure> {
        if failed.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let sent = async {
            let result = ItemResult {
                item_id: job.idempotency_key.clone(),
                outcome: self.outcome_of(&job).await.map_err(journal_failure)?,
            };
            self.send_result(&result)
                .await
                .map_err(|(e, retry_after)| ("report", e, retry_after))?;
            self.outbox
                .mark_delivered(&job.id)
                .await
                .map_err(journal_failure)
        }
        .await;
        if let Err(e) = sent {
            failed.store(true, Ordering::Relaxed);
            return Err(e);
        }
        self.update(|s| {
            s.delivered += 1;
            s.last_error = None;
        });
        tracing::info!(event_id = 5009, item = %job.idempotency_key, job = %job.id, state = job.state.as_str(), "sent a result to the upstream service");
        Ok(true)
    }

    /// A job's outcome as the protocol carries it. A succeeded job whose result cannot be
    /// read is reported failed, with why: left owed, it would stop every report round behind
    /// it for ever, and the service could never ask again.
    async fn outcome_of(&self, job: &OwedOutcome) -> Result<Outcome, crate::journal::JournalError> {
        if job.state != JobState::Succeeded {
            let reason = job
                .last_error
                .clone()
                .unwrap_or_else(|| format!("the job is {}", job.state.as_str()));
            return Ok(Outcome::Failed { reason });
        }
        let stored = self.outbox.peek_result(&job.id).await?;
        let result: JobResult = match stored.as_deref().map(serde_json::from_str) {
            Some(Ok(r)) => r,
            Some(Err(e)) => {
                let reason = format!(
                    "job {} succeeded, but its result in certconn's journal cannot be read ({e})",
                    job.id
                );
                tracing::error!(event_id = 5014, item = %job.idempotency_key, job = %job.id, "{reason}; it is reported failed");
                return Ok(Outcome::Failed { reason });
            }
            None => JobResult::default(),
        };
        Ok(Outcome::Succeeded(Delivered {
            certificate_pem: result.certificate_pem,
            chain_pem: result.chain_pem,
            serial: result.serial,
            pfx: result.pfx_base64,
            sealed_password: result.sealed_password_base64,
            revoked: result.revoked,
        }))
    }
}
