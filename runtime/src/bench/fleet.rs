//! `certconn bench --fleet N`: a fleet on one PostgreSQL journal.
//!
//! 1. Issue jobs per second (EC P-256, local-ca, PKCS#12: the pipeline of `certconn bench`)
//!    with 1, 2, 4 … N instances on one database, each instance a whole connector (plugin
//!    engine, scheduler with `--workers` workers, its own data directory) in this process; and
//!    per job, the database's transactions and rows written (from `pg_stat_database`).
//! 2. The same jobs on one instance with the embedded SQLite journal.
//! 3. Claim latency — from enqueue to a worker's lease — with `--pollers` lightweight
//!    instances (a journal connection and one worker each, no plugins: the claiming is what is
//!    measured) polling one database while jobs arrive at a steady pace.
//!
//! After each run, every job must have been done once: as many certificates in the ledger as
//! jobs, one per job, and in 3. no job leased twice.
//!
//! The database is `--postgres URL` (its user must be allowed to create databases; each run
//! gets a fresh one), or a throwaway cluster `scripts/pg-cluster` starts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use certconn::app::App;
use certconn::journal::postgres::Connect;
use certconn::journal::{
    Completion, JobKind, JobState, JobStore, JournalConfig, NewJob, PostgresJournal,
};

/// Where the databases come from.
enum Server {
    Given(String),
    /// A cluster this run started (and stops).
    Throwaway {
        dir: PathBuf,
        script: PathBuf,
        url: String,
    },
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Server::Throwaway { dir, script, .. } = self {
            let _ = std::process::Command::new(script.as_path())
                .arg("stop")
                .arg(dir.as_path())
                .output();
        }
    }
}

impl Server {
    fn open(given: Option<&str>, dir: &Path) -> anyhow::Result<Self> {
        if let Some(url) = given {
            return Ok(Server::Given(url.to_owned()));
        }
        let root = std::env::var_os("CERTCONN_ROOT")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."));
        let script = root.join("scripts/pg-cluster");
        if !script.exists() {
            bail!(
                "no PostgreSQL to measure: pass --postgres URL, or run from a certconn checkout \
                 (scripts/pg-cluster starts a throwaway cluster)"
            );
        }
        let dir = dir.join("pg");
        let out = std::process::Command::new(&script)
            .arg("start")
            .arg(&dir)
            .output()
            .with_context(|| script.display().to_string())?;
        if !out.status.success() {
            bail!(
                "{} start: {}",
                script.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        Ok(Server::Throwaway { dir, script, url })
    }

    fn url(&self) -> &str {
        match self {
            Server::Given(url) | Server::Throwaway { url, .. } => url,
        }
    }

    /// A fresh database; its URL.
    async fn database(&self, name: &str) -> anyhow::Result<String> {
        let admin = connect(self.url()).await?;
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
            .await?;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
        let base = self
            .url()
            .rsplit_once('/')
            .map(|(b, _)| b)
            .unwrap_or(self.url());
        Ok(format!("{base}/{name}"))
    }
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let c = Connect::new(
        &JournalConfig {
            url: Some(url.to_owned()),
            ..JournalConfig::default()
        },
        false,
    )?;
    Ok(c.client().await?)
}

/// Transactions committed and rows written in the current database so far.
async fn db_work(client: &tokio_postgres::Client) -> anyhow::Result<(i64, i64)> {
    let row = client
        .query_one(
            "SELECT xact_commit, tup_inserted + tup_updated + tup_deleted
             FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

pub async fn run(
    plugins: &Path,
    dir: &Path,
    max_instances: usize,
    jobs: usize,
    workers: usize,
    pollers: usize,
    postgres: Option<&str>,
) -> anyhow::Result<()> {
    let server = Server::open(postgres, dir)?;
    println!(
        "certconn bench --fleet {max_instances}: {jobs} jobs, {workers} workers per instance, {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    let mut counts: Vec<usize> = [1, 2, 4, 8]
        .into_iter()
        .filter(|n| *n <= max_instances)
        .collect();
    if counts.last() != Some(&max_instances) {
        counts.push(max_instances);
    }
    let cache = dir.join("plugin-cache");
    let mut single = None;
    for n in counts {
        let db = server.database(&format!("bench_fleet_{n}")).await?;
        let rate = fleet_run(plugins, dir, &cache, n, jobs, workers, Some(&db)).await?;
        let stats = connect(&db).await?;
        // Other sessions report their statistics within a second of going idle.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (xacts, rows) = db_work(&stats).await?;
        let twice: i64 = stats
            .query_one(
                "SELECT COUNT(*) - COUNT(DISTINCT job_id) FROM certificates",
                &[],
            )
            .await?
            .try_get(0)?;
        let issued: i64 = stats
            .query_one("SELECT COUNT(*) FROM certificates", &[])
            .await?
            .try_get(0)?;
        if twice != 0 || issued != jobs as i64 {
            bail!("{n} instances: {issued} certificates for {jobs} jobs ({twice} twice)");
        }
        let base = *single.get_or_insert(rate);
        println!(
            "postgres:  {n:>2} instance(s) {rate:>8.1} jobs/s ({:.2}x one)  per job: {:>5.1} transactions, {:>5.1} rows written; done twice: 0",
            rate / base,
            xacts as f64 / jobs as f64,
            rows as f64 / jobs as f64,
        );
    }
    let sqlite = fleet_run(plugins, dir, &cache, 1, jobs, workers, None).await?;
    println!(
        "sqlite:     1 instance    {sqlite:>8.1} jobs/s (the embedded journal; postgres with one instance is {:.2}x of it)",
        single.unwrap_or(0.0) / sqlite
    );
    claim_latency(&server, pollers, jobs).await
}

/// `n` instances on `db` (SQLite in the data directory when `None`) run `jobs` issue jobs;
/// jobs per second from the first submission to the last success.
async fn fleet_run(
    plugins: &Path,
    dir: &Path,
    cache: &Path,
    n: usize,
    jobs: usize,
    workers: usize,
    db: Option<&str>,
) -> anyhow::Result<f64> {
    let run_dir = dir.join(format!(
        "run-{}-{n}",
        if db.is_some() { "pg" } else { "sqlite" }
    ));
    let mut apps = Vec::new();
    for i in 0..n {
        let instance_dir = run_dir.join(format!("i{i}"));
        std::fs::create_dir_all(&instance_dir)?;
        let mut config = super::bench_config(&instance_dir, plugins, workers)?;
        config.plugins.cache_dir = Some(cache.to_path_buf().into());
        config.journal.url = db.map(str::to_owned);
        apps.push(Arc::new(App::open(config).await?));
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut schedulers = Vec::new();
    for app in &apps {
        let app = app.clone();
        let stop = stop_rx.clone();
        schedulers.push(tokio::spawn(async move { app.run_scheduler(stop).await }));
    }
    let request = super::bench_request();
    let t = Instant::now();
    for i in 0..jobs {
        apps[i % n]
            .intake
            .submit_issue("bench", &format!("job-{i}"), &request)
            .await?;
    }
    let journal = apps[0].journal.clone();
    loop {
        let counts = journal.counts().await?;
        let count = |want: &[JobState]| -> i64 {
            counts
                .iter()
                .filter(|(s, _)| want.contains(s))
                .map(|(_, c)| c)
                .sum()
        };
        if count(&[JobState::Failed, JobState::Dead]) > 0 {
            bail!("bench jobs failed");
        }
        if count(&[JobState::Succeeded]) as usize >= jobs {
            break;
        }
        if t.elapsed() > Duration::from_secs(600) {
            bail!("{n} instances did not finish {jobs} jobs in 10 minutes");
        }
        // Not much more often: these looks are transactions the per-job cost would count.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rate = jobs as f64 / t.elapsed().as_secs_f64();
    let _ = stop_tx.send(true);
    for s in schedulers {
        s.await?;
    }
    Ok(rate)
}

/// `pollers` lightweight instances claim jobs enqueued at a steady pace; prints the claim
/// latency and checks that no job was leased twice.
async fn claim_latency(server: &Server, pollers: usize, jobs: usize) -> anyhow::Result<()> {
    let db = server.database("bench_claims").await?;
    let config = JournalConfig {
        url: Some(db),
        pool_size: 1,
        ..JournalConfig::default()
    };
    let enqueued: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let claims: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    for i in 0..pollers {
        let journal = PostgresJournal::open(&config, &format!("poller-{i}"), false).await?;
        let (claims, mut stop) = (claims.clone(), stop_rx.clone());
        tasks.spawn(async move {
            loop {
                if *stop.borrow() {
                    return Ok::<(), anyhow::Error>(());
                }
                match journal.lease_next(Duration::from_secs(60)).await? {
                    Some(held) => {
                        claims
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((held.job.id.clone(), Instant::now()));
                        journal
                            .complete(
                                &held.lease,
                                Completion {
                                    backend: "bench",
                                    result: "{}",
                                    ..Completion::default()
                                },
                            )
                            .await?;
                    }
                    None => tokio::select! {
                        _ = journal.wait_for_work(Duration::from_millis(500)) => {}
                        _ = stop.changed() => {}
                    },
                }
            }
        });
    }
    let connected = started.elapsed();
    // A steady stream: one job every 10 ms from a producer of its own.
    let producer = PostgresJournal::open(&config, "producer", false).await?;
    let request = serde_json::json!({});
    let t = Instant::now();
    for i in 0..jobs {
        let due = Duration::from_millis(10 * i as u64);
        if let Some(wait) = due.checked_sub(t.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        let before = Instant::now();
        let key = format!("claim-{i}");
        let (job, _) = producer
            .enqueue(NewJob {
                source: "bench",
                idempotency_key: &key,
                kind: JobKind::Issue,
                request: &request,
                route: None,
            })
            .await?;
        enqueued
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(job.id, before);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while claims.lock().unwrap_or_else(|p| p.into_inner()).len() < jobs {
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = stop_tx.send(true);
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let claims = std::mem::take(&mut *claims.lock().unwrap_or_else(|p| p.into_inner()));
    let mut seen = HashMap::new();
    for (id, _) in &claims {
        *seen.entry(id.clone()).or_insert(0usize) += 1;
    }
    let twice = seen.values().filter(|n| **n > 1).count();
    if seen.len() != jobs || twice > 0 {
        bail!(
            "{pollers} pollers: {} of {jobs} jobs claimed, {twice} claimed twice",
            seen.len()
        );
    }
    let enqueued = std::mem::take(&mut *enqueued.lock().unwrap_or_else(|p| p.into_inner()));
    let mut latencies = Vec::with_capacity(claims.len());
    for (id, at) in &claims {
        let since = enqueued
            .get(id)
            .with_context(|| format!("job {id} was claimed but never enqueued"))?;
        latencies.push(at.saturating_duration_since(*since).as_secs_f64() * 1000.0);
    }
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    println!(
        "claims:   {pollers} instances polling one database ({} connections each; started in {:.1} s), {jobs} jobs at 100/s: claim latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; claimed twice: 0",
        config.pool_size + 1,
        connected.as_secs_f64(),
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    Ok(())
}
