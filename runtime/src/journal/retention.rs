//! How long a finished job's result (`journal.keep_results_days`) and the job itself
//! (`journal.keep_jobs_days`) stay in the journal.
//!
//! A result is the bulk of what a job leaves behind: the PFX (a device's private key, under its
//! password), the certificates as PEM, a password not yet handed out — about 4.4 KB of the
//! 6.9 KB a job adds to the journal (the one-hour soak, `scripts/soak`). Kept forever, it made
//! the journal grow by about half a gigabyte a day at the soak's rate, and kept every device's
//! key, encrypted, for as long as the file lived. The sweep removes results older than the
//! retention; fetching the result of such a job says it was removed. A result still owed to
//! the upstream service stays until it is delivered, however old. SQLite's `secure_delete`
//! overwrites the freed pages.
//!
//! The job goes later (half a year by default), once its result is gone and its outcome
//! delivered. Kept forever, jobs made every count of them (`/v1/health`, `/metrics`) grow with
//! the journal's age: about 50 ms per million jobs on SQLite (`certconn bench --journal`). The
//! ledger keeps its certificates for ever (it is the CA database: revocation and CRLs read it),
//! naming a job that may be gone; the signature trail keeps every signature. A removed job's
//! idempotency key is forgotten with it: the same key again makes a new job.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::{now_ms, Journal, JournalError};

/// Results or jobs removed per write: each batch is one write of the journal, so the workers'
/// writes wait for at most one batch (about a millisecond of SQLite's time per 100).
const BATCH: u32 = 200;

/// Removes results, then jobs, older than their retention, at start and then every `every`.
pub struct ResultRetention {
    pub journal: Arc<dyn Journal>,
    /// How long a result stays after its job ended (`None`: for ever).
    pub keep: Option<Duration>,
    /// How long a finished job stays after it ended (`None`: for ever); at least as long as
    /// its result, whatever this says.
    pub keep_jobs: Option<Duration>,
    /// Sources that report outcomes back ([`super::Outbox::undelivered`]): their results and
    /// jobs stay until delivered.
    pub owed_to: Vec<&'static str>,
    pub every: Duration,
}

/// What one sweep removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub results: u64,
    pub jobs: u64,
}

impl ResultRetention {
    /// Sweeps until `shutdown` turns true; a sweep that fails (the journal unreachable) is
    /// logged and tried again at the next.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            match self.sweep().await {
                Ok(swept) => {
                    if swept.results > 0 {
                        tracing::info!(
                            removed = swept.results,
                            keep_days = self.keep.map_or(0, |k| k.as_secs() / 86_400),
                            "journal: removed the stored results of jobs that ended before the retention (journal.keep_results_days)"
                        );
                    }
                    if swept.jobs > 0 {
                        tracing::info!(
                            removed = swept.jobs,
                            keep_days = self.keep_jobs.map_or(0, |k| k.as_secs() / 86_400),
                            "journal: removed finished jobs that ended before the retention (journal.keep_jobs_days); their certificates stay in the ledger"
                        );
                    }
                }
                Err(e) => tracing::warn!(
                    "journal: removing old results and jobs: {}",
                    crate::report::chain(&e)
                ),
            }
            tokio::select! {
                () = tokio::time::sleep(self.every) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }

    /// Removes every result, then every job, older than its retention, a batch per write.
    pub async fn sweep(&self) -> Result<Swept, JournalError> {
        let metrics = crate::metrics::global();
        let mut swept = Swept::default();
        if let Some(keep) = self.keep {
            let ended_before = cutoff(keep);
            swept.results = in_batches(
                |limit| {
                    self.journal
                        .remove_results(ended_before, &self.owed_to, limit)
                },
                |n| metrics.journal_results_removed(n),
            )
            .await?;
        }
        if let Some(keep) = self.keep_jobs {
            let ended_before = cutoff(keep);
            swept.jobs = in_batches(
                |limit| self.journal.remove_jobs(ended_before, &self.owed_to, limit),
                |n| metrics.journal_jobs_removed(n),
            )
            .await?;
        }
        Ok(swept)
    }
}

/// Calls `remove` with [`BATCH`] (one write each) until a batch comes back short, telling
/// `removed` of each batch as it goes; how many in all.
async fn in_batches<F, Fut>(remove: F, removed: impl Fn(u64)) -> Result<u64, JournalError>
where
    F: Fn(u32) -> Fut,
    Fut: std::future::Future<Output = Result<u64, JournalError>>,
{
    let mut total = 0;
    loop {
        let n = remove(BATCH).await?;
        total += n;
        removed(n);
        if n < u64::from(BATCH) {
            return Ok(total);
        }
    }
}

/// Unix ms `keep` ago.
fn cutoff(keep: Duration) -> i64 {
    now_ms().saturating_sub(i64::try_from(keep.as_millis()).unwrap_or(i64::MAX))
}
