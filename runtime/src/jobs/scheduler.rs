//! The scheduler: a fixed set of workers lease due jobs from the journal, run them through the
//! pipeline, and record the outcome — success, retry with exponential backoff and jitter,
//! pending with a next-poll time, failure, or dead-letter after `max_attempts`.
//!
//! Workers take the job that is due soonest, so a job that keeps failing waits out its backoff
//! while the jobs behind it run: a poison job can slow nothing but itself.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

use super::journal::now_ms;
use super::model::JobState;
use super::pipeline::{self, Outcome};
use crate::connector::Services;
use crate::crypto::provider;

/// Longest a worker sleeps without looking at the journal.
const IDLE_POLL: Duration = Duration::from_millis(500);

/// Runs the workers until `shutdown` turns true; jobs in flight finish first.
pub async fn run(services: Arc<Services>, wake: Arc<Notify>, mut shutdown: watch::Receiver<bool>) {
    let mut workers = JoinSet::new();
    for n in 0..services.config.jobs.workers {
        let services = services.clone();
        let wake = wake.clone();
        let shutdown = shutdown.clone();
        workers.spawn(async move { worker(n, services, wake, shutdown).await });
    }
    let _ = shutdown.wait_for(|s| *s).await;
    wake.notify_waiters();
    while workers.join_next().await.is_some() {}
}

async fn worker(
    n: usize,
    services: Arc<Services>,
    wake: Arc<Notify>,
    shutdown: watch::Receiver<bool>,
) {
    let lease_ms = (services.config.jobs.lease_seconds * 1000) as i64;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let leased = services.journal.lease_next(lease_ms);
        match leased {
            Ok(Some(job)) => {
                tracing::debug!(worker = n, job = %job.id, attempt = job.attempts, "running job");
                let outcome = pipeline::run(&services, &job).await;
                if let Err(e) = record(&services, &job.id, job.attempts, outcome) {
                    tracing::error!(job = %job.id, "recording the outcome failed, the lease will expire and the job run again: {e}");
                }
            }
            Ok(None) => {
                let wait = match services.journal.next_due() {
                    Ok(Some(due)) => Duration::from_millis(
                        (due - now_ms()).clamp(1, IDLE_POLL.as_millis() as i64) as u64,
                    ),
                    _ => IDLE_POLL,
                };
                let mut shutdown = shutdown.clone();
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => {}
                }
            }
            Err(e) => {
                tracing::error!("journal: {e}");
                tokio::time::sleep(IDLE_POLL).await;
            }
        }
    }
}

/// Delay before attempt `attempts + 1`: initial × 2^(attempts−1), capped, with equal jitter.
pub fn backoff_ms(initial: u64, max: u64, attempts: u32) -> u64 {
    let exp = initial
        .saturating_mul(1u64 << attempts.saturating_sub(1).min(32))
        .min(max);
    let mut r = [0u8; 8];
    let jitter = match provider::fill_random(&mut r) {
        Ok(()) => u64::from_le_bytes(r) % (exp / 2 + 1),
        Err(_) => 0,
    };
    exp / 2 + jitter
}

fn record(
    services: &Services,
    id: &str,
    attempts: u32,
    outcome: Outcome,
) -> Result<(), crate::jobs::JournalError> {
    let jobs = &services.config.jobs;
    let journal = &services.journal;
    let kept = match outcome {
        Outcome::Done {
            backend,
            result,
            password,
            issued,
            revoked,
        } => {
            let revoked = revoked
                .as_ref()
                .map(|(b, s, r)| (b.as_str(), s.as_str(), r.as_str()));
            let kept = journal.succeed(
                id,
                &backend,
                &result,
                password.as_deref().map(|p| p.as_str()),
                issued.as_deref(),
                revoked,
            )?;
            if kept {
                tracing::info!(job = id, %backend, serial = result.serial.as_deref(), "job succeeded");
            }
            kept
        }
        Outcome::Pending {
            backend,
            token,
            retry_after_seconds,
            message,
        } => {
            tracing::info!(job = id, %backend, retry_after_seconds, "pending at the CA: {message}");
            journal.pend(
                id,
                &backend,
                &token,
                &message,
                now_ms() + i64::from(retry_after_seconds) * 1000,
            )?
        }
        Outcome::Retry { backend, error } if attempts >= jobs.max_attempts => {
            let reason = format!("dead-lettered after {attempts} attempts; last error: {error}");
            tracing::warn!(job = id, backend = backend.as_deref(), "{reason}");
            journal.fail(id, JobState::Dead, backend.as_deref(), &reason)?
        }
        Outcome::Retry { backend, error } => {
            let delay = backoff_ms(jobs.backoff_initial_ms, jobs.backoff_max_ms, attempts);
            tracing::warn!(
                job = id,
                backend = backend.as_deref(),
                attempt = attempts,
                retry_in_ms = delay,
                "{error}"
            );
            journal.retry_later(id, backend.as_deref(), &error, now_ms() + delay as i64)?
        }
        Outcome::Unavailable { error } => {
            let delay = jobs.backoff_max_ms.min(5_000);
            tracing::warn!(job = id, retry_in_ms = delay, "{error}");
            journal.wait_for_backend(id, &error, now_ms() + delay as i64)?
        }
        Outcome::Fail { backend, error } => {
            tracing::warn!(
                job = id,
                backend = backend.as_deref(),
                "job failed: {error}"
            );
            journal.fail(id, JobState::Failed, backend.as_deref(), &error)?
        }
    };
    if !kept {
        tracing::warn!(
            job = id,
            "the lease was lost before the outcome was recorded; another worker owns the job"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::backoff_ms;

    #[test]
    fn backoff_grows_caps_and_jitters_within_bounds() {
        for attempt in 1..=12 {
            let exp = (500u64 << (attempt - 1)).min(10_000);
            for _ in 0..50 {
                let d = backoff_ms(500, 10_000, attempt);
                assert!(
                    d >= exp / 2 && d <= exp,
                    "attempt {attempt}: {d} not in [{}, {exp}]",
                    exp / 2
                );
            }
        }
    }
}
