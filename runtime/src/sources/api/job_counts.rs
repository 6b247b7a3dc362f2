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
    use crate::journal::behaviour::enqueue;
    use crate::journal::SqliteJournal;

    /// A fresh journal at `path`, the same as the store health reads, and when the test began.
    struct Fixture {
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
        journal: Arc<SqliteJournal>,
        store: Arc<dyn JobStore>,
        start: Instant,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("j.sqlite");
            let journal = Arc::new(SqliteJournal::open(&path, "t").unwrap());
            Self {
                _dir: dir,
                path,
                store: journal.clone(),
                journal,
                start: Instant::now(),
            }
        }

        /// `counts` read when the clock says `ms` after the test began.
        async fn read(&self, counts: &JobCounts, ms: u64) -> Counted {
            let start = self.start;
            let now = move || start + Duration::from_millis(ms);
            counts.read_at(&self.store, now, MAX_AGE).await
        }
    }

    /// Jobs in every state.
    fn total(counted: &Counted) -> i64 {
        counted.as_ref().unwrap().iter().map(|(_, n)| n).sum()
    }

    /// Within the age a count is served again, so a flood of requests costs one count; past it
    /// the journal is counted afresh.
    #[tokio::test]
    async fn a_count_serves_until_it_is_a_second_old() {
        let f = Fixture::new();
        let counts = JobCounts::default();

        enqueue(&*f.journal, "a").await;
        let first = f.read(&counts, 0).await;
        assert_eq!(total(&first), 1);

        enqueue(&*f.journal, "b").await;
        let again = f.read(&counts, 999).await;
        assert_eq!(again, first, "a count under a second old is served again");

        let fresh = f.read(&counts, 1000).await;
        assert_eq!(total(&fresh), 2, "a second later the journal is counted");

        enqueue(&*f.journal, "c").await;
        let kept = f.read(&counts, 1500).await;
        assert_eq!(
            kept, fresh,
            "the age runs from the last count, not the first"
        );
        let recounted = f.read(&counts, 2000).await;
        assert_eq!(total(&recounted), 3);
    }

    /// A request that goes away mid-count leaves its count to finish and serve the next ones,
    /// as if it had stayed: the next request, half a second later, does not count again.
    #[tokio::test]
    async fn a_count_outlives_the_request_that_started_it() {
        let f = Fixture::new();
        let counts = JobCounts::default();
        enqueue(&*f.journal, "a").await;
        // Polled once, then dropped: its count has started (in a task not yet run), and the
        // request is gone.
        let mut request = Box::pin(f.read(&counts, 0));
        let polled = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(std::future::Future::poll(request.as_mut(), cx))
        })
        .await;
        assert!(polled.is_pending(), "a count cannot end within one poll");
        drop(request);
        let next = f.read(&counts, 500).await;
        assert_eq!(total(&next), 1);
        // Taken at 0, that count is a second old at 1,200 (one taken at 500 would not be).
        enqueue(&*f.journal, "b").await;
        assert_eq!(total(&f.read(&counts, 1200).await), 2);
    }

    /// A count that failed is answered as long as one that did not, and the journal is counted
    /// again once it is a second old.
    #[tokio::test]
    async fn a_failed_count_is_kept_as_long() {
        let f = Fixture::new();
        let counts = JobCounts::default();
        enqueue(&*f.journal, "a").await;
        // The journal loses its jobs table, then gets it back.
        let outside = rusqlite::Connection::open(&f.path).unwrap();
        outside
            .execute_batch("ALTER TABLE jobs RENAME TO jobs_away")
            .unwrap();
        let failed = f.read(&counts, 0).await;
        let why = failed.clone().unwrap_err();
        assert!(why.contains("jobs"), "{why}");
        outside
            .execute_batch("ALTER TABLE jobs_away RENAME TO jobs")
            .unwrap();
        assert_eq!(f.read(&counts, 999).await, failed);
        assert_eq!(total(&f.read(&counts, 1000).await), 1);
    }
}
