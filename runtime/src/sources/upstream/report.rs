//! Sending results back: every upstream job that ended, from the outbox, until the service has
//! it.

use std::sync::Arc;
use std::time::Duration;

use certconn_connector::{Delivered, ItemResult, Outcome};
use tokio::sync::watch;

use super::{pause, Upstream, SOURCE};
use crate::jobs::model::JobResult;
use crate::journal::{JobRecord, JobState};

/// With nothing owed, the reporter waits for a job to change in this process; it asks the
/// journal again after this anyway (a job ended by another process sharing the journal).
const IDLE: Duration = Duration::from_secs(1);

/// Outcomes sent per round.
const ROUND: u32 = 50;

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

    /// Sends what is owed now, in the order the jobs ended: how many went.
    async fn report_round(&self) -> Result<usize, (&'static str, String, Option<Duration>)> {
        let journal = |e: crate::journal::JournalError| ("journal", crate::report::chain(&e), None);
        let owed = self
            .outbox
            .undelivered(SOURCE, ROUND)
            .await
            .map_err(journal)?;
        let mut sent = 0;
        for job in owed {
            let result = ItemResult {
                item_id: job.idempotency_key.clone(),
                outcome: self.outcome_of(&job).await.map_err(journal)?,
            };
            self.send_result(&result)
                .await
                .map_err(|(e, retry_after)| ("report", e, retry_after))?;
            self.outbox.mark_delivered(&job.id).await.map_err(journal)?;
            self.update(|s| {
                s.delivered += 1;
                s.last_error = None;
            });
            tracing::info!(event_id = 5009, item = %job.idempotency_key, job = %job.id, state = job.state.as_str(), "sent a result to the upstream service");
            sent += 1;
        }
        Ok(sent)
    }

    /// A job's outcome as the protocol carries it.
    async fn outcome_of(&self, job: &JobRecord) -> Result<Outcome, crate::journal::JournalError> {
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
                return Err(crate::journal::JournalError::Corrupt {
                    id: job.id.clone(),
                    reason: format!("its result: {e}"),
                })
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
