//! How long a finished job's result stays in the journal (`journal.keep_results_days`).
//!
//! A result is the bulk of what a job leaves behind: the PFX (a device's private key, under its
//! password), the certificates as PEM, a password not yet handed out — about 4.4 KB of the
//! 6.9 KB a job adds to the journal (the one-hour soak, `scripts/soak`). Kept forever, it made
//! the journal grow by about half a gigabyte a day at the soak's rate, and kept every device's
//! key, encrypted, for as long as the file lived. The sweep removes results older than the
//! retention; the job (its state, request summary, error) and its ledger entry stay, so
//! listings, revocation and CRLs are unchanged, and fetching the result of such a job says it
//! was removed. A result still owed to the upstream service stays until it is delivered,
//! however old. SQLite's `secure_delete` overwrites the freed pages.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::{now_ms, Journal, JournalError};

/// Results removed per write: each batch is one write of the journal, so the workers' writes
/// wait for at most one batch (about a millisecond of SQLite's time per 100).
const BATCH: u32 = 200;

/// Removes results older than `keep`, at start and then every `every`.
pub struct ResultRetention {
    pub journal: Arc<dyn Journal>,
    /// How long a result stays after its job ended.
    pub keep: Duration,
    /// Sources that report outcomes back ([`super::Outbox::undelivered`]): their results stay
    /// until delivered.
    pub owed_to: Vec<&'static str>,
    pub every: Duration,
}

impl ResultRetention {
    /// Sweeps until `shutdown` turns true; a sweep that fails (the journal unreachable) is
    /// logged and tried again at the next.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            match self.sweep().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    removed = n,
                    keep_days = self.keep.as_secs() / 86_400,
                    "journal: removed the stored results of jobs that ended before the retention (journal.keep_results_days)"
                ),
                Err(e) => tracing::warn!(
                    "journal: removing old results: {}",
                    crate::report::chain(&e)
                ),
            }
            tokio::select! {
                () = tokio::time::sleep(self.every) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }

    /// Removes every result older than the retention, a batch per write; returns how many.
    pub async fn sweep(&self) -> Result<u64, JournalError> {
        let keep = i64::try_from(self.keep.as_millis()).unwrap_or(i64::MAX);
        let ended_before = now_ms().saturating_sub(keep);
        let mut removed = 0;
        loop {
            let n = self
                .journal
                .remove_results(ended_before, &self.owed_to, BATCH)
                .await?;
            removed += n;
            crate::metrics::global().journal_results_removed(n);
            if n < u64::from(BATCH) {
                return Ok(removed);
            }
        }
    }
}
