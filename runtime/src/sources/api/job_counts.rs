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

use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::journal::{JobState, JobStore, JournalError};

/// How old a count `/v1/health` may show.
pub const MAX_AGE: Duration = Duration::from_secs(1);

/// Jobs by state, as counted at a moment.
type Counts = Vec<(JobState, i64)>;

/// The last count and when it was taken. A failed count is not kept: the next request asks
/// the journal again, so `/v1/health` says at once when it is back.
#[derive(Default)]
pub struct JobCounts {
    last: Mutex<Option<(Instant, Counts)>>,
}

impl JobCounts {
    /// The counts of `jobs`, at most [`MAX_AGE`] old.
    pub async fn read(&self, jobs: &dyn JobStore) -> Result<Counts, JournalError> {
        self.read_at(jobs, Instant::now, MAX_AGE).await
    }

    async fn read_at(
        &self,
        jobs: &dyn JobStore,
        now: impl Fn() -> Instant,
        max_age: Duration,
    ) -> Result<Counts, JournalError> {
        // Held while counting: requests meanwhile wait for this count instead of starting theirs.
        let mut last = self.last.lock().await;
        if let Some((at, counts)) = last.as_ref() {
            if now().saturating_duration_since(*at) < max_age {
                return Ok(counts.clone());
            }
        }
        let counts = jobs.counts().await?;
        *last = Some((now(), counts.clone()));
        Ok(counts)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::journal::{JobKind, NewJob, SqliteJournal};

    /// Jobs in every state.
    fn total(counts: &Counts) -> i64 {
        counts.iter().map(|(_, n)| n).sum()
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
        let counts = JobCounts::default();
        let start = Instant::now();
        let at = |ms: u64| move || start + Duration::from_millis(ms);

        enqueue(&journal, "a").await;
        let first = counts.read_at(&*journal, at(0), MAX_AGE).await.unwrap();
        assert_eq!(total(&first), 1);

        enqueue(&journal, "b").await;
        let again = counts.read_at(&*journal, at(999), MAX_AGE).await.unwrap();
        assert_eq!(again, first, "a count under a second old is served again");

        let fresh = counts.read_at(&*journal, at(1000), MAX_AGE).await.unwrap();
        assert_eq!(total(&fresh), 2, "a second later the journal is counted");

        enqueue(&journal, "c").await;
        let kept = counts.read_at(&*journal, at(1500), MAX_AGE).await.unwrap();
        assert_eq!(
            kept, fresh,
            "the age runs from the last count, not the first"
        );
        let recounted = counts.read_at(&*journal, at(2000), MAX_AGE).await.unwrap();
        assert_eq!(total(&recounted), 3);
    }
}
