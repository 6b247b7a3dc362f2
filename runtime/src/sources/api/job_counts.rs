//! The journal's job counts as `/v1/health` shows them: read at most once a second.
//!
//! A count reads every job the journal holds: about 50 ms of CPU per million jobs on SQLite
//! (`certconn bench --journal`), and the journal keeps half a year of jobs
//! (`journal.keep_jobs_days`). `/v1/health` answers without a token, so every request cost
//! that, and one of the journal's read connections, to anyone who could reach the port: twenty
//! requests a second would keep a core busy. Here a count serves every request within
//! [`MAX_AGE`] of it, and requests that arrive while one runs wait for it rather than start
//! their own, so however often the endpoint is asked, the journal counts at most once a
//! second. `/metrics` and the status page, which need a token, count afresh.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::journal::{JobState, JobStore};

/// How old a count `/v1/health` may show.
pub const MAX_AGE: Duration = Duration::from_secs(1);

/// Jobs by state as counted at a moment, or why the journal could not be counted (the whole
/// chain, as health shows it).
pub type Counted = Result<Vec<(JobState, i64)>, String>;

/// The last count and when it was taken. A failure is kept as long as a count: when the
/// journal is unreachable, requests that waited for a count that failed do not each try again
/// in turn (each would wait out the journal's timeout behind the others).
#[derive(Default)]
pub struct JobCounts {
    last: Arc<Mutex<Option<(Instant, Counted)>>>,
}

impl JobCounts {
    /// The counts of `jobs`, at most [`MAX_AGE`] old.
    pub async fn read(&self, jobs: &Arc<dyn JobStore>) -> Counted {
        self.read_at(jobs, Instant::now, MAX_AGE).await
    }

    async fn read_at(
        &self,
        jobs: &Arc<dyn JobStore>,
        now: impl Fn() -> Instant + Send + 'static,
        max_age: Duration,
    ) -> Counted {
        // Held while counting: requests meanwhile wait for this count instead of starting theirs.
        let mut last = self.last.clone().lock_owned().await;
        if let Some((at, counted)) = last.as_ref() {
            if now().saturating_duration_since(*at) < max_age {
                return counted.clone();
            }
        }
        // The count runs in a task of its own, which keeps the lock until it has stored what
        // it found: a request that goes away meanwhile (its client hung up) leaves the count to
        // finish for the next one, instead of letting the next start another beside it.
        let jobs = jobs.clone();
        tokio::spawn(async move {
            let counted = jobs.counts().await.map_err(|e| crate::report::chain(&e));
            *last = Some((now(), counted.clone()));
            counted
        })
        .await
        .unwrap_or_else(|e| Err(format!("counting the jobs failed: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{JobKind, NewJob, SqliteJournal};

    /// Jobs in every state.
    fn total(counted: &Counted) -> i64 {
        counted.as_ref().unwrap().iter().map(|(_, n)| n).sum()
    }

    async fn enqueue(j: &SqliteJournal, key: &str) {
        j.enqueue(NewJob {
            source: "api",
            idempotency_key: key,
            kind: JobKind::Issue,
            request: &serde_json::json!({}),
            route: None,
        })
        .await
        .unwrap();
    }

    /// Within the age a count is served again, so a flood of requests costs one count; past it
    /// the journal is counted afresh.
    #[tokio::test]
    async fn a_count_serves_until_it_is_a_second_old() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Arc::new(SqliteJournal::open(&dir.path().join("j.sqlite"), "t").unwrap());
        let store: Arc<dyn JobStore> = journal.clone();
        let counts = JobCounts::default();
        let start = Instant::now();
        let at = |ms: u64| move || start + Duration::from_millis(ms);

        enqueue(&journal, "a").await;
        let first = counts.read_at(&store, at(0), MAX_AGE).await;
        assert_eq!(total(&first), 1);

        enqueue(&journal, "b").await;
        let again = counts.read_at(&store, at(999), MAX_AGE).await;
        assert_eq!(again, first, "a count under a second old is served again");

        let fresh = counts.read_at(&store, at(1000), MAX_AGE).await;
        assert_eq!(total(&fresh), 2, "a second later the journal is counted");

        enqueue(&journal, "c").await;
        let kept = counts.read_at(&store, at(1500), MAX_AGE).await;
        assert_eq!(
            kept, fresh,
            "the age runs from the last count, not the first"
        );
        let recounted = counts.read_at(&store, at(2000), MAX_AGE).await;
        assert_eq!(total(&recounted), 3);
    }

    /// A request that goes away mid-count leaves its count to finish and serve the next ones,
    /// as if it had stayed: the next request, half a second later, does not count again.
    #[tokio::test]
    async fn a_count_outlives_the_request_that_started_it() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Arc::new(SqliteJournal::open(&dir.path().join("j.sqlite"), "t").unwrap());
        let store: Arc<dyn JobStore> = journal.clone();
        let counts = JobCounts::default();
        let start = Instant::now();
        let at = |ms: u64| move || start + Duration::from_millis(ms);
        enqueue(&journal, "a").await;
        // Polled once, then dropped: its count has started (in a task not yet run), and the
        // request is gone.
        let mut request = Box::pin(counts.read_at(&store, at(0), MAX_AGE));
        let polled = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(std::future::Future::poll(request.as_mut(), cx))
        })
        .await;
        assert!(polled.is_pending(), "a count cannot end within one poll");
        drop(request);
        let next = counts.read_at(&store, at(500), MAX_AGE).await;
        assert_eq!(total(&next), 1);
        // Taken at 0, that count is a second old at 1,200 (one taken at 500 would not be).
        enqueue(&journal, "b").await;
        assert_eq!(total(&counts.read_at(&store, at(1200), MAX_AGE).await), 2);
    }

    /// A count that failed is answered as long as one that did not, and the journal is counted
    /// again once it is a second old.
    #[tokio::test]
    async fn a_failed_count_is_kept_as_long() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.sqlite");
        let journal = Arc::new(SqliteJournal::open(&path, "t").unwrap());
        let store: Arc<dyn JobStore> = journal.clone();
        enqueue(&journal, "a").await;
        let counts = JobCounts::default();
        let start = Instant::now();
        let at = |ms: u64| move || start + Duration::from_millis(ms);
        // The journal loses its jobs table, then gets it back.
        let outside = rusqlite::Connection::open(&path).unwrap();
        outside
            .execute_batch("ALTER TABLE jobs RENAME TO jobs_away")
            .unwrap();
        let failed = counts.read_at(&store, at(0), MAX_AGE).await;
        let why = failed.clone().unwrap_err();
        assert!(why.contains("jobs"), "{why}");
        outside
            .execute_batch("ALTER TABLE jobs_away RENAME TO jobs")
            .unwrap();
        assert_eq!(counts.read_at(&store, at(999), MAX_AGE).await, failed);
        assert_eq!(total(&counts.read_at(&store, at(1000), MAX_AGE).await), 1);
    }
}
