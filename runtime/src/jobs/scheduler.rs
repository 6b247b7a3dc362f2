//! The scheduler: a fixed set of workers lease due jobs from the job store, run them, renew
//! their leases while they run, and record the outcome — success, retry with exponential backoff
//! and jitter, pending with a next-poll time, failure, or dead-letter after `max_attempts`.
//!
//! Workers take the job that is due soonest, so a job that keeps failing waits out its backoff
//! while the jobs behind it run: a poison job can slow nothing but itself.
//!
//! A lease is renewed every third of its length while the job runs, so a job outlives its lease
//! only when its worker is gone; if a renewal finds the lease lost anyway (the journal was
//! unreachable for a whole lease), the worker abandons the job — another worker owns it, and the
//! fenced journal would refuse this one's outcome in any case.
//!
//! Idle workers do not all poll. One of them, the watcher, looks at the journal when the next
//! job falls due and at least every [`IDLE_POLL`] (a job another instance enqueued, were its
//! notification missed); the others wait for a notification of work, or for the watcher to take
//! a job, when one of them becomes the watcher. On a journal shared by a fleet (PostgreSQL)
//! every idle worker polling made each instance's idle load grow with its workers; now it is
//! one look per interval per instance, and a worker more costs nothing while idle.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

use super::events::JobEvent;
use super::model::erased_request;
use super::outcome::{Completed, ErrorClass, JobError, Outcome};
use super::settings::JobsConfig;
use super::steps::JobRunner;
use crate::crypto::provider;
use crate::journal::{
    millis, now_ms, Completion, JobRecord, JobState, JobStore, JournalError, Lease, Leased,
};
use crate::metrics::JobStage;

/// Longest the watching idle worker sleeps without looking at the journal.
const IDLE_POLL: Duration = Duration::from_millis(500);

/// Longest any other idle worker sleeps without looking: only a safety net, since the watcher
/// wakes one of them whenever it takes a job.
const IDLE_FOLLOW: Duration = Duration::from_secs(10);

/// How often and how long jobs are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
}

/// The workers and what they need.
pub struct Scheduler {
    store: Arc<dyn JobStore>,
    runner: Arc<dyn JobRunner>,
    workers: usize,
    lease: Duration,
    retry: RetryPolicy,
    /// Whether an idle worker watches the journal for due jobs (see the module's doc).
    watching: AtomicBool,
    /// Wakes an idle worker to take the watch over from one that took a job.
    watch_free: Notify,
    /// Times an idle worker looked at the journal and found nothing.
    idle_looks: AtomicU64,
}

impl Scheduler {
    /// `workers` is [`JobsConfig::workers`] for the journal `store` is.
    pub fn new(
        store: Arc<dyn JobStore>,
        runner: Arc<dyn JobRunner>,
        config: &JobsConfig,
        workers: usize,
    ) -> Self {
        Self {
            store,
            runner,
            workers,
            lease: config.lease(),
            retry: RetryPolicy {
                max_attempts: config.max_attempts,
                backoff_initial_ms: config.backoff_initial_ms,
                backoff_max_ms: config.backoff_max_ms,
            },
            watching: AtomicBool::new(false),
            watch_free: Notify::new(),
            idle_looks: AtomicU64::new(0),
        }
    }

    /// Runs the workers until `shutdown` turns true; jobs in flight finish first.
    pub async fn run(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        let mut workers = JoinSet::new();
        for n in 0..self.workers {
            let this = self.clone();
            let shutdown = shutdown.clone();
            workers.spawn(async move { this.worker(n, shutdown).await });
        }
        while workers.join_next().await.is_some() {}
    }

    async fn worker(&self, n: usize, mut shutdown: watch::Receiver<bool>) {
        // The job taken in the same write as the last one's outcome, if any.
        let mut next: Option<Leased> = None;
        loop {
            let leased = match next.take() {
                Some(leased) => leased,
                None => {
                    if *shutdown.borrow() {
                        return;
                    }
                    let clock = std::time::Instant::now();
                    match self.store.lease_next(self.lease).await {
                        Ok(Some(leased)) => {
                            crate::metrics::global().job_stage(JobStage::Lease, clock.elapsed());
                            if !self.watching.load(Ordering::Acquire) {
                                // The watcher may be this worker, or gone to a job: another
                                // idle worker takes the watch over.
                                self.watch_free.notify_one();
                            }
                            leased
                        }
                        Ok(None) => {
                            self.idle_looks.fetch_add(1, Ordering::Relaxed);
                            self.idle(&mut shutdown).await;
                            continue;
                        }
                        Err(e) => {
                            tracing::error!("journal: {}", crate::report::chain(&e));
                            tokio::time::sleep(IDLE_POLL).await;
                            continue;
                        }
                    }
                }
            };
            tracing::debug!(worker = n, job = %leased.job.id, attempt = leased.job.attempts, "running job");
            // Once shutting down, no new job is taken; one already taken runs to its end.
            let take_next = !*shutdown.borrow();
            next = self.work(leased, take_next).await;
        }
    }

    /// Waits, after a look found no job due: as the watcher until the next job is due (or
    /// [`IDLE_POLL`]), or, when another worker watches, until work is announced or the watch
    /// is free.
    async fn idle(&self, shutdown: &mut watch::Receiver<bool>) {
        let watch =
            self.watching
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire);
        if watch.is_err() {
            tokio::select! {
                () = self.store.wait_for_notice(IDLE_FOLLOW) => {}
                () = self.watch_free.notified() => {}
                _ = shutdown.changed() => {}
            }
            return;
        }
        let wait = match self.store.next_due().await {
            Ok(Some(due)) => {
                Duration::from_millis((due - now_ms()).clamp(1, millis(IDLE_POLL)) as u64)
            }
            _ => IDLE_POLL,
        };
        tokio::select! {
            () = self.store.wait_for_work(wait) => {}
            _ = shutdown.changed() => {}
        }
        // Free while this worker looks again; it takes the watch back if it finds nothing, and
        // hands it on if it finds a job.
        self.watching.store(false, Ordering::Release);
    }

    /// Runs one leased job while renewing its lease, then records how it ended; with
    /// `take_next`, a successful job's outcome is written with the lease of the next job,
    /// which is returned.
    async fn work(&self, leased: Leased, take_next: bool) -> Option<Leased> {
        let Leased { job, lease } = leased;
        let started = std::time::Instant::now();
        let waited = Duration::from_millis(u64::try_from(now_ms() - job.next_run_at).unwrap_or(0));
        let outcome = tokio::select! {
            biased;
            outcome = self.runner.run(&job) => outcome,
            () = self.keep_lease(&lease) => {
                tracing::warn!(job = %job.id, "the job's lease was lost (the journal was unreachable for longer than jobs.lease_seconds); abandoning it to the worker that took it over");
                return None;
            }
        };
        crate::metrics::global().job_ran(
            job.kind.as_str(),
            self.outcome_label(&job, &outcome),
            started.elapsed(),
            waited,
        );
        let clock = std::time::Instant::now();
        let (recorded, next) = self.record(&job, &lease, outcome, take_next).await;
        crate::metrics::global().job_stage(JobStage::Commit, clock.elapsed());
        match recorded {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                job = %job.id,
                "the lease was lost before the outcome was recorded; another worker owns the job"
            ),
            Err(e) => {
                tracing::error!(job = %job.id, "recording the outcome failed, the lease will expire and the job run again: {}", crate::report::chain(&e))
            }
        }
        next
    }

    /// Renews `lease` every third of its length; returns only when it is lost.
    async fn keep_lease(&self, lease: &Lease) {
        let every = (self.lease / 3).max(Duration::from_millis(10));
        loop {
            tokio::time::sleep(every).await;
            match self.store.renew(lease, self.lease).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(job = %lease.job_id, "renewing the lease: {}", crate::report::chain(&e))
                }
            }
        }
    }

    /// What [`Self::record`] will make of `outcome`, as the metrics count it.
    fn outcome_label(&self, job: &JobRecord, outcome: &Outcome) -> crate::metrics::JobOutcome {
        match outcome {
            Ok(_) => "succeeded",
            Err(e) => match e.class {
                ErrorClass::Pending { .. } => "pending",
                ErrorClass::Unavailable => "unavailable",
                ErrorClass::Transient if job.attempts >= self.retry.max_attempts => "dead",
                ErrorClass::Transient => "retried",
                ErrorClass::Permanent => "failed",
            },
        }
    }

    /// The retry policy: what each outcome does to the job. With `take_next`, a success is
    /// written with the lease of the next job (a failure, rarer, is not).
    async fn record(
        &self,
        job: &JobRecord,
        lease: &Lease,
        outcome: Outcome,
        take_next: bool,
    ) -> (Result<bool, JournalError>, Option<Leased>) {
        let error = match outcome {
            Ok(done) => return self.complete(job, lease, done, take_next).await,
            Err(error) => error,
        };
        (self.record_failure(job, lease, error).await, None)
    }

    async fn record_failure(
        &self,
        job: &JobRecord,
        lease: &Lease,
        error: JobError,
    ) -> Result<bool, JournalError> {
        let id = job.id.as_str();
        let event = |e: JobEvent| e.id(job.kind);
        let backend = error.backend.as_deref();
        let reason = error.report();
        match &error.class {
            ErrorClass::Pending { token, retry_after } => {
                tracing::info!(
                    event_id = event(JobEvent::Pending),
                    job = id,
                    backend,
                    retry_after_seconds = retry_after.as_secs(),
                    "pending at the CA: {reason}"
                );
                let at = now_ms().saturating_add(millis(*retry_after));
                self.store
                    .park(lease, backend.unwrap_or_default(), token, &reason, at)
                    .await
            }
            ErrorClass::Unavailable => {
                let delay = self.retry.backoff_max_ms.min(5_000);
                tracing::warn!(
                    event_id = event(JobEvent::Waiting),
                    job = id,
                    retry_in_ms = delay,
                    "{reason}"
                );
                let at = now_ms().saturating_add(delay as i64);
                self.store.requeue(lease, None, &reason, at, false).await
            }
            ErrorClass::Transient if job.attempts >= self.retry.max_attempts => {
                let reason = format!(
                    "dead-lettered after {} attempts; last error: {reason}",
                    job.attempts
                );
                tracing::warn!(
                    event_id = event(JobEvent::Dead),
                    job = id,
                    backend,
                    "{reason}"
                );
                self.end(job, lease, JobState::Dead, backend, &reason).await
            }
            ErrorClass::Transient => {
                let delay = backoff_ms(
                    self.retry.backoff_initial_ms,
                    self.retry.backoff_max_ms,
                    job.attempts,
                );
                tracing::warn!(
                    event_id = event(JobEvent::Retrying),
                    job = id,
                    backend,
                    attempt = job.attempts,
                    retry_in_ms = delay,
                    "{reason}"
                );
                let at = now_ms().saturating_add(delay as i64);
                self.store.requeue(lease, backend, &reason, at, true).await
            }
            ErrorClass::Permanent => {
                tracing::warn!(
                    event_id = event(JobEvent::Failed),
                    job = id,
                    backend,
                    "job failed: {reason}"
                );
                self.end(job, lease, JobState::Failed, backend, &reason)
                    .await
            }
        }
    }

    async fn complete(
        &self,
        job: &JobRecord,
        lease: &Lease,
        done: Completed,
        take_next: bool,
    ) -> (Result<bool, JournalError>, Option<Leased>) {
        let result = match serde_json::to_string(&done.result) {
            Ok(result) => result,
            Err(e) => {
                let reason = format!("its result does not serialize: {e}");
                let id = job.id.clone();
                return (Err(JournalError::Corrupt { id, reason }), None);
            }
        };
        let erased = erased_request(job);
        let completion = Completion {
            backend: &done.backend,
            result: &result,
            password: done.password.as_ref(),
            issued: done.issued.as_ref(),
            revoked: done.revoked.as_ref(),
            request: erased.as_ref(),
        };
        let recorded = if take_next {
            self.store
                .complete_and_lease_next(lease, completion, self.lease)
                .await
        } else {
            self.store
                .complete(lease, completion)
                .await
                .map(|kept| (kept, None))
        };
        match recorded {
            Ok((kept, next)) => {
                if kept {
                    tracing::info!(event_id = JobEvent::Succeeded.id(job.kind), job = %job.id, backend = %done.backend, serial = done.result.serial.as_deref(), "job succeeded");
                }
                (Ok(kept), next)
            }
            Err(e) => (Err(e), None),
        }
    }

    async fn end(
        &self,
        job: &JobRecord,
        lease: &Lease,
        state: JobState,
        backend: Option<&str>,
        reason: &str,
    ) -> Result<bool, JournalError> {
        let erased = erased_request(job);
        self.store
            .end(lease, state, backend, reason, erased.as_ref())
            .await
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

/// A job error's class as it shows in logs and tests.
impl std::fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Permanent => "permanent",
            Self::Transient => "transient",
            Self::Unavailable => "unavailable",
            Self::Pending { .. } => "pending",
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;

    use super::*;
    use crate::jobs::ports::testing::MemoryCustody;
    use crate::jobs::routing::testing::{StandIn, StandIns};
    use crate::jobs::steps::tests::{settings, OneEntryLedger, TestCa};
    use crate::jobs::steps::Steps;
    use crate::jobs::JobError;
    use crate::journal::{JobKind, NewJob, Outbox, SqliteJournal};

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

    /// A scheduler over a fresh SQLite journal, with a lease of `lease`.
    fn scheduler(
        runner: Arc<dyn JobRunner>,
        workers: usize,
        lease: Duration,
        max_attempts: u32,
    ) -> (tempfile::TempDir, Arc<SqliteJournal>, Arc<Scheduler>) {
        let retry = RetryPolicy {
            max_attempts,
            backoff_initial_ms: 1,
            backoff_max_ms: 1,
        };
        scheduler_retrying(runner, workers, lease, retry)
    }

    fn scheduler_retrying(
        runner: Arc<dyn JobRunner>,
        workers: usize,
        lease: Duration,
        retry: RetryPolicy,
    ) -> (tempfile::TempDir, Arc<SqliteJournal>, Arc<Scheduler>) {
        let dir = tempfile::tempdir().unwrap();
        let journal = Arc::new(SqliteJournal::open(&dir.path().join("j.sqlite"), "test").unwrap());
        let scheduler = Arc::new(Scheduler {
            store: journal.clone(),
            runner,
            workers,
            lease,
            retry,
            watching: AtomicBool::new(false),
            watch_free: Notify::new(),
            idle_looks: AtomicU64::new(0),
        });
        (dir, journal, scheduler)
    }

    async fn enqueue(j: &SqliteJournal, request: serde_json::Value) -> JobRecord {
        j.enqueue(NewJob {
            source: "api",
            idempotency_key: "k",
            kind: JobKind::Issue,
            request: &request,
            route: None,
        })
        .await
        .unwrap()
        .0
    }

    #[tokio::test]
    async fn slow_backend_past_lease_issues_once() {
        let ca = TestCa::new();
        // The CA takes three leases' time to answer.
        let lease = Duration::from_millis(200);
        let backend = {
            let ca = ca.clone();
            StandIn::slow("ca", lease * 3, move |_, key| ca.issue(key))
        };
        let steps = Steps::new(
            settings(),
            Arc::new(MemoryCustody::default()),
            Arc::new(StandIns(vec![backend.clone()])),
            Arc::new(OneEntryLedger::default()),
        );
        let (_dir, journal, scheduler) = scheduler(Arc::new(steps), 4, lease, 5);
        let (stop, stopped) = watch::channel(false);
        let running = tokio::spawn(scheduler.run(stopped));
        let job = enqueue(
            &journal,
            serde_json::json!({"profile": "smime", "subject": "CN=Alice", "sans": [], "key": null,
                "recipient_pem": null, "csr_pem": null, "validity_days": null}),
        )
        .await;
        let ended = journal
            .wait_settled(&job.id, Duration::from_secs(30))
            .await
            .unwrap();
        stop.send(true).unwrap();
        running.await.unwrap();
        assert_eq!(ended.state, JobState::Succeeded, "{:?}", ended.last_error);
        assert_eq!(
            backend.calls(),
            1,
            "the CA was asked more than once for one job"
        );
        assert_eq!(ended.attempts, 1);
        assert!(journal.take_result(&job.id).await.unwrap().is_some());
    }

    /// Answers with the outcomes it is given, in order, and counts its runs.
    struct Scripted {
        outcomes: Mutex<Vec<fn() -> Outcome>>,
        runs: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl JobRunner for Scripted {
        async fn run(&self, _job: &JobRecord) -> Outcome {
            self.runs.fetch_add(1, Ordering::SeqCst);
            let next = self.outcomes.lock().unwrap().remove(0);
            next()
        }
    }

    async fn run_script(script: Vec<fn() -> Outcome>, max_attempts: u32) -> (JobRecord, usize) {
        let runner = Arc::new(Scripted {
            outcomes: Mutex::new(script),
            runs: AtomicUsize::new(0),
        });
        let (_dir, journal, scheduler) =
            scheduler(runner.clone(), 2, Duration::from_secs(60), max_attempts);
        let (stop, stopped) = watch::channel(false);
        let running = tokio::spawn(scheduler.run(stopped));
        let job = enqueue(&journal, serde_json::json!({})).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let ended = loop {
            let j = journal
                .wait_settled(&job.id, Duration::from_secs(30))
                .await
                .unwrap();
            if j.state.is_terminal() || tokio::time::Instant::now() > deadline {
                break j;
            }
        };
        stop.send(true).unwrap();
        running.await.unwrap();
        (ended, runner.runs.load(Ordering::SeqCst))
    }

    #[tokio::test]
    async fn transient_errors_are_retried_then_dead_lettered() {
        let transient: fn() -> Outcome = || Err(JobError::transient("CA unreachable").at("ca"));
        let (job, runs) = run_script(vec![transient; 3], 3).await;
        assert_eq!((job.state, runs, job.attempts), (JobState::Dead, 3, 3));
        let error = job.last_error.unwrap();
        assert!(
            error.starts_with("dead-lettered after 3 attempts; last error: CA unreachable"),
            "{error}"
        );
        assert_eq!(job.backend.as_deref(), Some("ca"));
    }

    #[tokio::test]
    async fn a_permanent_error_fails_at_once_and_waiting_uses_no_attempt() {
        let unavailable: fn() -> Outcome = || Err(JobError::unavailable("waiting for a backend"));
        let permanent: fn() -> Outcome = || Err(JobError::permanent("rejected: no"));
        // Waiting could go on for ever without dead-lettering: two waits, then the CA's answer.
        let (job, runs) = run_script(vec![unavailable, unavailable, permanent], 1).await;
        assert_eq!((job.state, runs, job.attempts), (JobState::Failed, 3, 1));
        assert_eq!(job.last_error.as_deref(), Some("rejected: no"));
    }

    #[tokio::test]
    async fn idle_workers_leave_the_polling_to_one_of_them() {
        let runner = Arc::new(Scripted {
            outcomes: Mutex::new(Vec::new()),
            runs: AtomicUsize::new(0),
        });
        let (_dir, _journal, scheduler) = scheduler(runner, 8, Duration::from_secs(60), 1);
        let (stop, stopped) = watch::channel(false);
        let running = tokio::spawn(scheduler.clone().run(stopped));
        let idle = Duration::from_millis(1600);
        tokio::time::sleep(idle).await;
        stop.send(true).unwrap();
        running.await.unwrap();
        // Each worker's first look, then the watcher's, at most one per IDLE_POLL: 8 + 3 here
        // (+ 2 to spare). Every worker polling would have made about 8 × 4.
        let looks = scheduler.idle_looks.load(Ordering::Relaxed);
        let most = 8 + idle.as_millis() / IDLE_POLL.as_millis() + 2;
        assert!(
            (8..=most as u64).contains(&looks),
            "{looks} looks by 8 idle workers in {idle:?}; expected 8 to {most}"
        );
    }

    /// Sends each job away for `again` at its first run; at its second, waits for `together`
    /// other runs to reach the same point and fails with what it saw.
    struct ComeBackTogether {
        seen: Mutex<std::collections::HashSet<String>>,
        together: tokio::sync::Barrier,
    }

    #[async_trait::async_trait]
    impl JobRunner for ComeBackTogether {
        async fn run(&self, job: &JobRecord) -> Outcome {
            if self.seen.lock().unwrap().insert(job.id.clone()) {
                return Err(JobError::unavailable("not yet"));
            }
            match tokio::time::timeout(Duration::from_secs(5), self.together.wait()).await {
                Ok(_) => Err(JobError::permanent("ran together")),
                Err(_) => Err(JobError::permanent("ran alone")),
            }
        }
    }

    #[tokio::test]
    async fn jobs_falling_due_together_run_together_though_only_one_worker_watches() {
        let runner = Arc::new(ComeBackTogether {
            seen: Mutex::new(Default::default()),
            together: tokio::sync::Barrier::new(2),
        });
        // A job sent away comes due again 300 ms later; a missed handover would leave the
        // second one to a follower's IDLE_FOLLOW, past the barrier's 5 s.
        let retry = RetryPolicy {
            max_attempts: 3,
            backoff_initial_ms: 300,
            backoff_max_ms: 300,
        };
        let (_dir, journal, scheduler) =
            scheduler_retrying(runner, 4, Duration::from_secs(60), retry);
        let (stop, stopped) = watch::channel(false);
        let running = tokio::spawn(scheduler.run(stopped));
        let mut jobs = Vec::new();
        for key in ["a", "b"] {
            let job = journal
                .enqueue(NewJob {
                    source: "api",
                    idempotency_key: key,
                    kind: JobKind::Issue,
                    request: &serde_json::json!({}),
                    route: None,
                })
                .await
                .unwrap()
                .0;
            jobs.push(job);
        }
        for job in &jobs {
            let ended = journal
                .wait_settled(&job.id, Duration::from_secs(30))
                .await
                .unwrap();
            assert_eq!(ended.state, JobState::Failed);
            assert_eq!(ended.last_error.as_deref(), Some("ran together"));
        }
        stop.send(true).unwrap();
        running.await.unwrap();
    }
}
