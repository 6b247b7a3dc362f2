//! Who is waiting for which job, so that a change to one job wakes only its own waiters.
//!
//! [`super::JobStore::wait_settled`] used to wake on every change of any job and read its job
//! again: with W callers waiting (a burst of SCEP clients, API clients with `?wait=`), every
//! change cost W reads of the journal, all through one reader connection. A journal now says
//! which job changed ([`JobWaiters::job_changed`]), and only that job's waiters look; so do the
//! instances of a PostgreSQL fleet, whose notifications name the jobs another instance changed
//! ([`JobWaiters::jobs_changed`]). A change that cannot name its jobs — a bulk update, or more
//! jobs than one notification names — wakes everyone ([`JobWaiters::all_changed`]), as before.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;

use super::{JobRecord, JournalError};

/// The waiters of one journal, by job id. Also ticks the journal's change counter
/// ([`super::Outbox::changes`]) so that every change is noted in one place.
#[derive(Debug)]
pub(crate) struct JobWaiters {
    by_job: Mutex<HashMap<String, watch::Sender<()>>>,
    changes: watch::Sender<u64>,
}

impl Default for JobWaiters {
    fn default() -> Self {
        Self {
            by_job: Mutex::default(),
            changes: watch::Sender::new(0),
        }
    }
}

impl JobWaiters {
    fn by_job(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Sender<()>>> {
        // Every update under the lock is one map operation that cannot panic halfway.
        self.by_job.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Job `id` changed: its waiters look, and the change counter ticks.
    pub(crate) fn job_changed(&self, id: &str) {
        self.jobs_changed([id]);
    }

    /// Jobs `ids` changed (another instance of a fleet names them in one notification): their
    /// waiters look, and the change counter ticks once.
    pub(crate) fn jobs_changed<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        {
            let by_job = self.by_job();
            for id in ids {
                if let Some(tx) = by_job.get(id) {
                    tx.send_replace(());
                }
            }
        }
        self.tick();
    }

    /// Jobs changed that cannot be named: every waiter looks, and the change counter ticks.
    pub(crate) fn all_changed(&self) {
        for tx in self.by_job().values() {
            tx.send_replace(());
        }
        self.tick();
    }

    fn tick(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The change counter, for [`super::Outbox::changes`].
    pub(crate) fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Waits until `get` reads job `id` settled, or `max` has passed; then returns what it read
    /// last. Reads again after each change of the job and, with `look_every`, at least that
    /// often (for changes this process is not told of).
    pub(crate) async fn wait_settled<F, Fut>(
        &self,
        id: &str,
        max: Duration,
        look_every: Option<Duration>,
        get: F,
    ) -> Result<JobRecord, JournalError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<JobRecord, JournalError>>,
    {
        let deadline = tokio::time::Instant::now() + max;
        // Registered before reading, so a change between the read and the wait is not lost.
        let mut waiting = self.watch(id);
        loop {
            let job = get().await?;
            let now = tokio::time::Instant::now();
            if job.state.is_settled() || now >= deadline {
                return Ok(job);
            }
            let until = look_every.map_or(deadline, |every| (now + every).min(deadline));
            // A change or the time to look again: either way, read the job again.
            let _ = tokio::time::timeout_at(until, waiting.rx.changed()).await;
        }
    }

    fn watch(&self, id: &str) -> Waiting<'_> {
        let mut by_job = self.by_job();
        let rx = match by_job.get(id) {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = watch::channel(());
                by_job.insert(id.to_owned(), tx);
                rx
            }
        };
        Waiting {
            waiters: self,
            id: id.to_owned(),
            rx,
        }
    }

    /// A receiver told of each change of job `id`, for a test to see who was woken.
    #[cfg(test)]
    pub(crate) fn subscribe(&self, id: &str) -> watch::Receiver<()> {
        // The clone keeps the job's entry in the map when `watch`'s waiter is dropped.
        self.watch(id).rx.clone()
    }

    #[cfg(test)]
    fn jobs_watched(&self) -> usize {
        self.by_job().len()
    }
}

/// One caller waiting for one job; the job leaves the map with its last waiter.
struct Waiting<'a> {
    waiters: &'a JobWaiters,
    id: String,
    rx: watch::Receiver<()>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut by_job = self.waiters.by_job();
        // Our own receiver is still counted: it is dropped after this.
        if by_job
            .get(&self.id)
            .is_some_and(|tx| tx.receiver_count() <= 1)
        {
            by_job.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{JobKind, JobState};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn job(id: &str, state: JobState) -> JobRecord {
        JobRecord {
            id: id.into(),
            state,
            ..JobRecord::running(JobKind::Issue, serde_json::Value::Null)
        }
    }

    /// A job whose state the test sets, counting how often it is read.
    struct Fake {
        state: Mutex<JobState>,
        reads: AtomicUsize,
    }

    impl Fake {
        fn new() -> Arc<Self> {
            Arc::new(Self {
                state: Mutex::new(JobState::Running),
                reads: AtomicUsize::new(0),
            })
        }

        async fn get(&self, id: &str) -> Result<JobRecord, JournalError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            Ok(job(id, *self.state.lock().unwrap()))
        }
    }

    #[tokio::test]
    async fn a_change_wakes_only_the_waiters_of_its_job() {
        let waiters = Arc::new(JobWaiters::default());
        let (a, b) = (Fake::new(), Fake::new());
        let wait = |fake: Arc<Fake>, id: &'static str| {
            let waiters = waiters.clone();
            tokio::spawn(async move {
                waiters
                    .wait_settled(id, Duration::from_secs(60), None, || fake.get(id))
                    .await
            })
        };
        let (wait_a, wait_b) = (wait(a.clone(), "a"), wait(b.clone(), "b"));
        // Both have read once and are waiting.
        while a.reads.load(Ordering::SeqCst) < 1 || b.reads.load(Ordering::SeqCst) < 1 {
            tokio::task::yield_now().await;
        }
        assert_eq!(waiters.jobs_watched(), 2);

        // Changes of job a (not yet settled, then settled): b reads nothing more.
        waiters.job_changed("a");
        while a.reads.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        *a.state.lock().unwrap() = JobState::Succeeded;
        waiters.job_changed("a");
        let settled = wait_a.await.unwrap().unwrap();
        assert_eq!(settled.state, JobState::Succeeded);
        assert_eq!(a.reads.load(Ordering::SeqCst), 3);
        assert_eq!(
            b.reads.load(Ordering::SeqCst),
            1,
            "b was woken by a's changes"
        );
        assert_eq!(waiters.jobs_watched(), 1, "a's entry outlived its waiter");

        // A change that names no job wakes b too.
        *b.state.lock().unwrap() = JobState::Failed;
        waiters.all_changed();
        assert_eq!(wait_b.await.unwrap().unwrap().state, JobState::Failed);
        assert_eq!(waiters.jobs_watched(), 0);
    }

    #[tokio::test]
    async fn a_change_between_the_read_and_the_wait_is_not_lost() {
        let waiters = Arc::new(JobWaiters::default());
        let fake = Fake::new();
        let get = {
            let (fake, waiters) = (fake.clone(), waiters.clone());
            move || {
                let (fake, waiters) = (fake.clone(), waiters.clone());
                async move {
                    let read = fake.get("a").await;
                    // The job settles right after this read, before the waiter waits.
                    *fake.state.lock().unwrap() = JobState::Succeeded;
                    waiters.job_changed("a");
                    read
                }
            }
        };
        let settled = waiters
            .wait_settled("a", Duration::from_secs(3600), None, get)
            .await
            .unwrap();
        assert_eq!(settled.state, JobState::Succeeded);
        assert_eq!(fake.reads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn waiting_ends_at_its_time_with_the_job_as_it_is() {
        let waiters = JobWaiters::default();
        let fake = Fake::new();
        let started = std::time::Instant::now();
        let job = waiters
            .wait_settled("a", Duration::from_millis(50), None, || fake.get("a"))
            .await
            .unwrap();
        assert_eq!(job.state, JobState::Running);
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(
            fake.reads.load(Ordering::SeqCst),
            2,
            "one read, one at the deadline"
        );
        assert_eq!(waiters.jobs_watched(), 0);
    }

    #[tokio::test]
    async fn told_to_look_every_so_often_it_reads_without_being_told_of_a_change() {
        let waiters = JobWaiters::default();
        let fake = Fake::new();
        // Nobody reports a change; the job settles as its third read sees it.
        let get = || {
            let fake = fake.clone();
            async move {
                if fake.reads.load(Ordering::SeqCst) == 2 {
                    *fake.state.lock().unwrap() = JobState::Succeeded;
                }
                fake.get("a").await
            }
        };
        let waited = tokio::time::timeout(
            Duration::from_secs(30),
            waiters.wait_settled(
                "a",
                Duration::from_secs(3600),
                Some(Duration::from_millis(1)),
                get,
            ),
        )
        .await
        .expect("no look without a change");
        assert_eq!(waited.unwrap().state, JobState::Succeeded);
        assert_eq!(fake.reads.load(Ordering::SeqCst), 3);
    }
}
