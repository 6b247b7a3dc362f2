//! `certconn bench --journal N`: what the journal's reads cost once it holds N finished jobs,
//! as a connector fed by the upstream service has after a few years. The figures of the status
//! page, health checks, metrics and listings, each the median of several calls, and one read
//! while others that scan many jobs run beside it.
//!
//! The jobs are written straight into a fresh SQLite journal (one SQL statement; going through
//! the pipeline would take an hour for a million), then read through the journal's own API.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use certconn::journal::sqlite::SqliteJournal;
use certconn::journal::{JobState, JobStore, Outbox};

/// Calls of each read measured; the median is printed.
const CALLS: usize = 15;

/// Outcomes not yet taken by the upstream service among the jobs.
const OWED: usize = 1_000;

/// Reads scanning many jobs that run beside the measured one in the last figure.
const BESIDE: usize = 4;

pub async fn run(dir: &Path, jobs: usize) -> anyhow::Result<()> {
    let path = dir.join("journal.sqlite");
    let journal = Arc::new(SqliteJournal::open(&path, "bench")?);
    let filled = Instant::now();
    fill(&path, jobs)?;
    println!(
        "certconn bench --journal: {jobs} finished upstream jobs (1 in 50 failed, the newest {OWED} not yet taken by the service), SQLite, written in {:.1} s",
        filled.elapsed().as_secs_f64()
    );
    let newest = journal
        .list(None, 1)
        .await?
        .jobs
        .first()
        .map(|j| j.id.clone())
        .context("no job in the filled journal")?;

    for (what, state) in [
        ("newest 50 jobs (jobs list)", None),
        ("newest 50 failed (the status page)", Some(JobState::Failed)),
        ("newest 50 succeeded", Some(JobState::Succeeded)),
        ("newest 50 queued", Some(JobState::Queued)),
    ] {
        let j = journal.clone();
        let ms = median_ms(|| {
            let j = j.clone();
            async move { j.list(state, 50).await.map(|_| ()) }
        })
        .await?;
        println!("  list {what:<36} {ms:>9.2} ms");
    }
    let j = journal.clone();
    let ms = median_ms(|| {
        let j = j.clone();
        async move { j.backlog("upstream").await.map(|_| ()) }
    })
    .await?;
    println!("  backlog of the upstream source            {ms:>9.2} ms  (health, metrics, status)");
    let j = journal.clone();
    let counts_ms = median_ms(|| {
        let j = j.clone();
        async move { j.counts().await.map(|_| ()) }
    })
    .await?;
    println!("  jobs counted by state                     {counts_ms:>9.2} ms  (health, metrics, status; reads every job)");
    let j = journal.clone();
    let id = newest.clone();
    let alone = median_ms(|| {
        let (j, id) = (j.clone(), id.clone());
        async move { j.get(&id).await.map(|_| ()) }
    })
    .await?;
    println!("  one job by id                             {alone:>9.2} ms");

    // The same read while others count every job beside it.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut beside = tokio::task::JoinSet::new();
    for _ in 0..BESIDE {
        let (j, stop) = (journal.clone(), stop.clone());
        beside.spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                j.counts().await?;
            }
            anyhow::Ok(())
        });
    }
    // Let every one of them start its first count.
    tokio::time::sleep(Duration::from_secs_f64(counts_ms / 1000.0)).await;
    let j = journal.clone();
    let busy = median_ms(|| {
        let (j, id) = (j.clone(), newest.clone());
        async move { j.get(&id).await.map(|_| ()) }
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    while let Some(done) = beside.join_next().await {
        done??;
    }
    println!(
        "  one job by id, {BESIDE} counts running beside   {:>9.2} ms",
        busy?
    );
    Ok(())
}

/// The median of [`CALLS`] calls of `read`, in ms.
async fn median_ms<F, Fut>(read: F) -> anyhow::Result<f64>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), certconn::journal::JournalError>>,
{
    let mut ms = Vec::with_capacity(CALLS);
    for _ in 0..CALLS {
        let t = Instant::now();
        read().await?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    Ok(ms[CALLS / 2])
}

/// Writes `jobs` finished upstream jobs into the journal at `path`, a millisecond apart, in one
/// transaction.
fn fill(path: &Path, jobs: usize) -> anyhow::Result<()> {
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(30))?;
    let now = certconn::journal::now_ms();
    let jobs = i64::try_from(jobs)?;
    let first = now - jobs - 1;
    let owed_from = jobs - i64::try_from(OWED)?;
    conn.execute(
        r#"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
           INSERT INTO jobs (id, source, idempotency_key, kind, state, request, attempts,
                             next_run_at, backend, last_error, created_at, updated_at,
                             delivered_at)
           SELECT printf('%032x', i), 'upstream', 'item-' || i, 'issue',
                  CASE WHEN i % 50 = 0 THEN 'failed' ELSE 'succeeded' END,
                  '{"profile":"device","subject":"CN=bench device","sans":[]}', 1,
                  ?2 + i, 'local', CASE WHEN i % 50 = 0 THEN 'refused' END, ?2 + i, ?2 + i + 5,
                  CASE WHEN i <= ?3 THEN ?2 + i + 10 END
           FROM n"#,
        rusqlite::params![jobs, first, owed_from],
    )
    .context("filling the journal")?;
    Ok(())
}
