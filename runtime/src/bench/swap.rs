//! `certconn bench --hot-swap`: a new plugin version published under load.
//!
//! A daemon-equivalent connector (journal, scheduler, plugin watcher) serves issue jobs through
//! `local-ca` with a steady number in flight. After a warm-up, a new version of the plugin (the
//! same component with a new manifest version, so a new SHA-256) is published the supported way
//! — temporary file, rename — and the run goes on. Printed: the time from the rename to the
//! registry's swap and to the first job served by the new version, jobs that failed or had to
//! be retried over the whole run (the target is zero), and throughput in 100 ms windows before
//! and after the rename (the dip), by the completion times the journal recorded.
//!
//! With `--via-feed` the new version goes the way of a plugin update: added to a signed feed
//! (`certconn release`'s workspace, read as `file://`), published, and found by one look at the
//! feed, which verifies, downloads, publishes by rename and hot-loads it on probation; the
//! times are then from the publish.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use certconn::app::App;
use certconn::jobs::model::JobResult;
use certconn::journal::JobState;
use certconn::plugins::manifest::Manifest;
use certconn::plugins::package::{self, PluginPackage};

const WINDOW: Duration = Duration::from_millis(100);

pub async fn run(
    plugins: &Path,
    dir: &Path,
    workers: usize,
    warm_up: Duration,
    after: Duration,
    via_feed: bool,
) -> anyhow::Result<()> {
    let plugin_dir = dir.join("plugins");
    std::fs::create_dir_all(&plugin_dir)?;
    let source = plugins.join("local-ca.wasm");
    let old = PluginPackage::read(&source)
        .with_context(|| format!("{} (build it with scripts/build-plugins)", source.display()))?;
    std::fs::write(plugin_dir.join("local-ca.wasm"), &old.bytes)?;
    let mut manifest: Manifest = old.manifest.clone();
    let mut version = semver::Version::parse(&manifest.version)?;
    version.patch += 1;
    manifest.version = version.to_string();
    let new_bytes = package::embed(&old.bytes, &manifest)?;
    let new = PluginPackage::from_bytes(Path::new("local-ca.wasm"), new_bytes)?;

    let feed = certconn::update::publish::Workspace::new(dir.join("feed"), dir.join("feed-keys"));
    let mut extra = String::new();
    if via_feed {
        let root = feed.init(Default::default()).await?;
        let release = |version: &str| certconn::update::release::Release {
            kind: certconn::update::release::Kind::Plugin,
            name: "local-ca".into(),
            version: version.into(),
            channel: "stable".into(),
            released: certconn::lifecycle::date_of_day(certconn::lifecycle::today()),
            support_days: certconn::update::release::DEFAULT_SUPPORT_DAYS,
        };
        feed.add(&release(&old.manifest.version), &old.bytes)?;
        feed.publish().await?;
        feed.add(&release(&new.manifest.version), &new.bytes)?;
        extra = format!(
            "[update]\nurl = \"{}\"\nroot = \"{}\"\nplugins = \"auto\"\ncheck_seconds = 604800\nprobation_jobs = 1000000\n",
            certconn::update::feed::directory_url(&feed.repository())?,
            root.display()
        );
    }
    let app =
        Arc::new(App::open(super::bench_config_with(dir, &plugin_dir, workers, &extra)?).await?);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let scheduler = {
        let app = app.clone();
        let rx = stop_rx.clone();
        tokio::spawn(async move { app.run_scheduler(rx).await })
    };
    let watcher = {
        let app = app.clone();
        tokio::spawn(async move { app.run_plugin_watcher(stop_rx).await })
    };
    let registry = app.registry.clone();
    let old_id = old.version_id();
    let new_id = new.version_id();
    let journal = app.journal.clone();
    let request = super::bench_request();
    let in_flight_target = workers * 2;
    println!(
        "certconn bench --hot-swap{}: local-ca {} → {}, {workers} workers, {in_flight_target} jobs in flight, {:?} before the rename, {:?} after the first job on the new version",
        if via_feed { " --via-feed" } else { "" },
        old.manifest.version, new.manifest.version, warm_up, after
    );

    let start = Instant::now();
    // Completion times come from the journal (when the worker recorded the job), not from when
    // this loop noticed, so the windows measure the daemon rather than the observer.
    let start_ms = certconn::journal::now_ms();
    let mut outstanding: VecDeque<String> = VecDeque::new();
    let mut completions: Vec<(Duration, bool)> = Vec::new(); // (when, served by the new version)
    let mut next = 0usize;
    let mut published: Option<Instant> = None;
    let mut swap_seen: Option<Duration> = None;
    let mut first_new: Option<Duration> = None;
    let mut failed = 0usize;
    let mut retried = 0usize;
    let mut stop_at: Option<Instant> = None;
    loop {
        while outstanding.len() < in_flight_target && stop_at.is_none_or(|s| Instant::now() < s) {
            let (job, _) = app
                .intake
                .submit_issue("bench", &format!("swap-{next}"), &request)
                .await?;
            next += 1;
            outstanding.push_back(job.id);
        }
        if published.is_none() && start.elapsed() >= warm_up {
            published = Some(Instant::now());
            if via_feed {
                feed.publish().await?;
                let updater = app.updater.clone().context("no updater")?;
                tokio::spawn(async move { updater.check().await });
            } else {
                let target = plugin_dir.join("local-ca.wasm");
                let tmp = plugin_dir.join(".local-ca.wasm.tmp");
                std::fs::write(&tmp, &new.bytes)?;
                std::fs::rename(&tmp, &target)?;
            }
        }
        if let (Some(p), None) = (published, swap_seen) {
            if registry
                .backend("local")
                .is_some_and(|b| b.version_id() == new_id)
            {
                swap_seen = Some(p.elapsed());
            }
        }
        let mut still = VecDeque::with_capacity(outstanding.len());
        for id in outstanding.drain(..) {
            let job = journal.get(&id).await?;
            match job.state {
                JobState::Succeeded => {
                    if job.attempts > 1 {
                        retried += 1;
                    }
                    let result = match journal.take_result(&id).await? {
                        Some(stored) => JobResult::from_outbox(&id, stored)?,
                        None => JobResult::default(),
                    };
                    let on_new = result.backend_version.as_deref() == Some(new_id.as_str());
                    if !on_new && result.backend_version.as_deref() != Some(old_id.as_str()) {
                        bail!("job {id} was served by {:?}", result.backend_version);
                    }
                    let done = Duration::from_millis((job.updated_at - start_ms).max(0) as u64);
                    completions.push((done, on_new));
                    if on_new && first_new.is_none() {
                        if let Some(p) = published {
                            first_new = Some(p.elapsed());
                            stop_at = Some(Instant::now() + after);
                        }
                    }
                }
                JobState::Failed | JobState::Dead => {
                    failed += 1;
                    eprintln!("job {id} failed: {:?}", job.last_error);
                }
                _ => still.push_back(id),
            }
        }
        outstanding = still;
        if stop_at.is_some_and(|s| Instant::now() >= s) && outstanding.is_empty() {
            break;
        }
        if published.is_some_and(|p| p.elapsed() > Duration::from_secs(60)) && first_new.is_none() {
            bail!("no job was served by the new version within 60 s of the rename");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let _ = stop_tx.send(true);
    scheduler.await?;
    let _ = watcher.await;

    let published_at = published
        .map(|p| p.duration_since(start))
        .unwrap_or_default();
    let windows = |from: Duration, to: Duration| -> Vec<usize> {
        let n = ((to.saturating_sub(from)).as_millis() / WINDOW.as_millis()) as usize;
        (0..n)
            .map(|i| {
                let lo = from + WINDOW * i as u32;
                let hi = lo + WINDOW;
                completions
                    .iter()
                    .filter(|(t, _)| *t >= lo && *t < hi)
                    .count()
            })
            .collect()
    };
    // Baseline: the last second before the rename (the first part of the warm-up is cold).
    let base = windows(
        published_at.saturating_sub(Duration::from_secs(1)),
        published_at,
    );
    let around = windows(published_at, published_at + Duration::from_secs(2));
    let rate = |w: &[usize]| {
        w.iter().sum::<usize>() as f64 / (w.len().max(1) as f64 * WINDOW.as_secs_f64())
    };
    let base_rate = rate(&base);
    let min_window = around.iter().copied().min().unwrap_or(0) as f64 / WINDOW.as_secs_f64();
    let min_before = base.iter().copied().min().unwrap_or(0) as f64 / WINDOW.as_secs_f64();
    let second_second = rate(&around[around.len().min(10)..]);
    let first_second = rate(&around[..around.len().min(10)]);
    let on_new = completions.iter().filter(|(_, n)| *n).count();
    let from = if via_feed { "publish" } else { "rename" };
    println!(
        "swap: {from} → registry swapped       {:>8.1} ms",
        swap_seen.unwrap_or_default().as_secs_f64() * 1e3
    );
    println!(
        "swap: {from} → first job on the new version {:>8.1} ms",
        first_new.unwrap_or_default().as_secs_f64() * 1e3
    );
    println!(
        "jobs: {} completed ({} on the old version, {on_new} on the new), {failed} failed, {retried} retried",
        completions.len(),
        completions.len() - on_new
    );
    println!("throughput before the rename (1 s):     {base_rate:>8.1} jobs/s");
    println!(
        "throughput in the first second after:  {first_second:>8.1} jobs/s ({:.0}% of before)",
        first_second / base_rate.max(f64::MIN_POSITIVE) * 100.0
    );
    println!(
        "throughput in the second after that:   {second_second:>8.1} jobs/s ({:.0}% of before)",
        second_second / base_rate.max(f64::MIN_POSITIVE) * 100.0
    );
    println!(
        "worst 100 ms window: the second before {min_before:>6.1} jobs/s, the 2 s after {min_window:>6.1} jobs/s"
    );
    let series = |w: &[usize]| {
        w.iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!("jobs per 100 ms, the second before:  {}", series(&base));
    println!("jobs per 100 ms, the 2 s after:      {}", series(&around));
    if failed > 0 {
        bail!("{failed} jobs failed during the swap");
    }
    Ok(())
}
