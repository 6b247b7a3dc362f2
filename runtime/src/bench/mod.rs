//! `certconn bench`: the figures the foundation promises, measured in one run.
//!
//! 1. Per-call plugin overhead: a fresh instance + `describe`, and a fresh instance +
//!    `configure` + `health` (what every job pays before its real work).
//! 2. Issue jobs per second through the whole pipeline (journal, scheduler, custody keygen, CSR,
//!    `local-ca` plugin, PKCS#12, journal commit) with EC P-256 keys.
//! 3. Request → sealed PFX latency at half that throughput, and for a burst of requests at once
//!    with every caller waiting for its own job.
//! 4. The same cryptographic work done directly in the host (keygen, CSR, CA signature, PKCS#12)
//!    with the same parallelism, and the ratio of 2 to 4.
//!
//! Other figures by option: `--journal N` (the journal's reads with N jobs in it), `--pki`
//! (PFX, sealing, custody), `--scep URL` (enrolments per
//! second), `--hot-swap` (a new plugin version under load), `--ocsp` (CRL and OCSP costs),
//! `--upstream` (work through the connector protocol: items per second and request→result
//! latency against the reference service; with `--tls` over HTTPS, with `--identity` over
//! mutual TLS), `--fleet N` (instances on
//! one PostgreSQL journal: jobs per second with 1…N of them, per-job database cost, SQLite
//! beside it, and claim latency with `--pollers` instances polling).

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Args;
use der::Decode;
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::name::Name;

use certconn::app::{App, Config};
use certconn::custody::grant::{CallKeys, IssuanceScope, REQUEST_HANDLE};
use certconn::custody::store::StoredKey;
use certconn::custody::{KeyAlgorithm, PrivateKey};
use certconn::jobs::model::IssueJob;
use certconn::journal::JobState;
use certconn::pki;

mod daemon_update;
mod fleet;
mod journal_scale;
mod latency;
mod ocsp;
mod pki_parts;
mod scep;
mod swap;
mod upstream;
use certconn_x509::{
    extensions, CertificateTemplate, ExtendedKeyUsageName, KeyUsageName, SubjectAltName,
};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Directory holding local-ca.wasm.
    #[arg(long, env = "CERTCONN_PLUGIN_DIR", default_value = "dist/plugins")]
    plugins: PathBuf,
    /// Issue jobs to run through the pipeline (and directly).
    #[arg(long, default_value_t = 400, value_parser = at_least_one)]
    jobs: usize,
    /// Scheduler workers; by default the daemon's own for the journal measured (`jobs.workers`:
    /// 32 on SQLite, 8 on PostgreSQL with `--fleet`).
    #[arg(long)]
    workers: Option<usize>,
    /// Callers submitting the pipeline's jobs at once, as API and SCEP clients do. Apart from
    /// `--workers`, so that a change of workers is not also a change of the intake's load; 32,
    /// so that up to 64 workers find the queue never empty (8 left more than 16 without work).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    callers: u32,
    /// Requests submitted at once for the burst figure, each caller waiting for its own job as
    /// an API or SCEP client does (0: none).
    #[arg(long, default_value_t = 200)]
    burst: usize,
    /// Plugin calls for each overhead figure, run in five batches: the median batch's time per
    /// call is the figure, the fastest and slowest its range.
    #[arg(long, default_value_t = 2000, value_parser = at_least_one)]
    calls: usize,
    /// Measure the pipeline and the direct work this many times, in turn, and print the median
    /// ratio: one run's ratio moves by several percent with the machine's other load.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: u32,
    /// Measure the journal's reads instead, once it holds this many finished jobs (listings,
    /// counts, the upstream backlog, one job by id alone and beside long reads).
    #[arg(long, num_args = 0..=1, default_missing_value = "1000000", value_name = "JOBS")]
    journal: Option<usize>,
    /// Measure the PKI building blocks instead (PFX, sealing, custody), this many of each.
    #[arg(long, num_args = 0..=1, default_missing_value = "200", value_name = "N")]
    pki: Option<usize>,
    /// With --pki, also measure custody on a PKCS#11 token: `softhsm` makes a throwaway SoftHSM2
    /// token (needs `softhsm2-util`); a module path uses that module's token `--pkcs11-token`,
    /// with the user PIN in `CERTCONN_PKCS11_PIN` (two keys are made on it and destroyed).
    #[arg(long, value_name = "softhsm|MODULE", requires = "pki")]
    pkcs11: Option<String>,
    /// The token label to use on MODULE (with `--pkcs11 MODULE`).
    #[arg(long, default_value = "certconn-bench")]
    pkcs11_token: String,
    /// Measure SCEP enrolments per second at these SCEP servers instead (repeat the option to
    /// compare servers in one run): `--jobs` enrolments each, `--workers` at a time, device keys
    /// and requests made in advance.
    #[arg(long, value_name = "URL")]
    scep: Vec<String>,
    /// With --scep: the challenge password the servers accept.
    #[arg(long, requires = "scep", default_value = "")]
    challenge: String,
    /// Measure revocation publishing instead: a full CRL of `--revoked` entries made and signed,
    /// then `--calls` OCSP responses from the cache and freshly signed.
    #[arg(long)]
    ocsp: bool,
    /// With --ocsp: revoked certificates in the ledger.
    #[arg(long, default_value_t = 100_000, requires = "ocsp")]
    revoked: usize,
    /// Measure a hot swap under load instead: publish a new local-ca version while jobs run;
    /// print the swap latency, failed jobs and the throughput dip.
    #[arg(long)]
    hot_swap: bool,
    /// With --hot-swap: publish the new version through a signed update feed instead of a
    /// rename: `certconn release publish`, then one look at the feed (verify, download, stage,
    /// hot load, probation). Printed from the publish.
    #[arg(long, requires = "hot_swap")]
    via_feed: bool,
    /// With --hot-swap: seconds of load before the new version is published.
    #[arg(long, default_value_t = 3, requires = "hot_swap")]
    warm_up_seconds: u64,
    /// With --hot-swap: seconds of load after the first job on the new version.
    #[arg(long, default_value_t = 2, requires = "hot_swap")]
    after_seconds: u64,
    /// Measure the daemon's own update instead: this binary under `certconn launch`, a copy
    /// one patch version higher published to a signed feed; print publish → serving, the gap
    /// in service and failed jobs.
    #[arg(long)]
    daemon_update: bool,
    /// Measure work through the connector protocol instead: the reference service
    /// (`certconn-reference-service`, beside this binary) feeds issue items; printed are the
    /// request→result latency one at a time and for `--jobs` at once, items per second, and the
    /// latency a 30-second poll interval would give.
    #[arg(long)]
    upstream: bool,
    /// With --upstream: the service serves HTTPS (from a CA it makes, which the connector
    /// trusts), as a production service does, so that TLS handshakes are in the figures.
    #[arg(long, requires = "upstream")]
    tls: bool,
    /// With --upstream --tls: the connector registers with the service (a one-time enrolment
    /// token) and calls it over mutual TLS with its identity, the key in custody signing each
    /// handshake, as a registered connector does, instead of with a bearer token.
    #[arg(long, requires = "tls")]
    identity: bool,
    /// Measure a fleet on one PostgreSQL journal instead: jobs per second with 1, 2, 4 … N
    /// instances (each `--workers` workers), the database's cost per job, the same jobs on
    /// SQLite, and claim latency with `--pollers` lightweight instances.
    #[arg(long, value_name = "N")]
    fleet: Option<usize>,
    /// With --fleet: the lightweight instances polling for the claim-latency figure (each holds
    /// two connections).
    #[arg(long, default_value_t = 100, requires = "fleet")]
    pollers: usize,
    /// With --fleet: a PostgreSQL server whose user may create databases (one per run);
    /// otherwise `scripts/pg-cluster` starts a throwaway one.
    #[arg(long, value_name = "URL", requires = "fleet")]
    postgres: Option<String>,
}

/// A count that must be at least 1: a figure of zero jobs or calls is a division by zero.
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

impl BenchArgs {
    /// `--workers`, or the daemon's default for the journal this run measures.
    fn workers(&self) -> usize {
        let default = certconn::jobs::settings::default_workers(self.fleet.is_some());
        self.workers.unwrap_or(default).max(1)
    }
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if !args.scep.is_empty() {
        return scep::run(&args.scep, &args.challenge, args.jobs, args.workers()).await;
    }
    if let Some(n) = args.pki {
        let token = args
            .pkcs11
            .clone()
            .map(|module| pki_parts::TokenChoice::new(&module, &args.pkcs11_token));
        return tokio::task::spawn_blocking(move || pki_parts::run(n.max(1), token)).await?;
    }
    if args.ocsp {
        let dir = tempfile::tempdir()?;
        return ocsp::run(dir.path(), args.revoked, args.calls).await;
    }
    if let Some(jobs) = args.journal {
        let dir = tempfile::tempdir()?;
        return journal_scale::run(dir.path(), jobs.max(1)).await;
    }
    let plugins = std::fs::canonicalize(&args.plugins).with_context(|| {
        format!(
            "plugin directory {} (build it with scripts/build-plugins)",
            args.plugins.display()
        )
    })?;
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    let dir = std::env::temp_dir().join(format!("certconn-bench-{}-{stamp}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = if let Some(n) = args.fleet {
        fleet::run(
            &plugins,
            &dir,
            n.max(1),
            args.jobs,
            args.workers(),
            args.pollers.max(1),
            args.postgres.as_deref(),
        )
        .await
    } else if args.daemon_update {
        daemon_update::run(&plugins, &dir).await
    } else if args.upstream {
        upstream::run(
            &plugins,
            &dir,
            args.workers(),
            args.jobs,
            if args.identity {
                upstream::Credentials::Identity
            } else if args.tls {
                upstream::Credentials::TokenOverTls
            } else {
                upstream::Credentials::Token
            },
        )
        .await
    } else if args.hot_swap {
        swap::run(
            &plugins,
            &dir,
            args.workers(),
            Duration::from_secs(args.warm_up_seconds),
            Duration::from_secs(args.after_seconds),
            args.via_feed,
        )
        .await
    } else {
        bench(&args, &plugins, &dir).await
    };
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Batches a per-call figure is measured in.
const CALL_BATCHES: usize = 5;

/// The time of one call, from [`CALL_BATCHES`] batches of calls run in turn: the median batch's
/// mean, with the fastest and slowest batch's. A pause of a noisy machine (a few milliseconds
/// of another process) moves one batch and shows in the range, not in the figure.
struct PerCall {
    median_us: f64,
    min_us: f64,
    max_us: f64,
    batch: usize,
}

impl std::fmt::Display for PerCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>9.1} µs/call (median of {CALL_BATCHES} batches of {}; {:.1}–{:.1})",
            self.median_us, self.batch, self.min_us, self.max_us
        )
    }
}

/// Runs `call` `calls` times (at least once per batch) and times it per batch.
async fn per_call(
    calls: usize,
    mut call: impl AsyncFnMut() -> anyhow::Result<()>,
) -> anyhow::Result<PerCall> {
    let batch = calls.div_ceil(CALL_BATCHES).max(1);
    let mut us = Vec::with_capacity(CALL_BATCHES);
    for _ in 0..CALL_BATCHES {
        let t = Instant::now();
        for _ in 0..batch {
            call().await?;
        }
        us.push(t.elapsed().as_secs_f64() * 1e6 / batch as f64);
    }
    us.sort_by(f64::total_cmp);
    Ok(PerCall {
        median_us: us[CALL_BATCHES / 2],
        min_us: us[0],
        max_us: us[CALL_BATCHES - 1],
        batch,
    })
}

async fn bench(
    args: &BenchArgs,
    plugins: &std::path::Path,
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    let app = Arc::new(App::open(bench_config(dir, plugins, args.workers())?).await?);
    let backend = app
        .registry
        .backend("local")
        .context("backend local is not loaded")?;

    println!(
        "certconn bench: {} jobs, {} workers, {} plugin calls, {} cores, {}",
        args.jobs,
        args.workers(),
        args.calls,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        certconn::crypto::fips::module_name()
    );

    // 1. Plugin overhead.
    for _ in 0..50 {
        backend.describe().await?;
    }
    let describe = per_call(args.calls, async || {
        backend.describe().await?;
        Ok(())
    })
    .await?;
    let health = per_call(args.calls, async || {
        backend.health().await?;
        Ok(())
    })
    .await?;
    println!("plugin overhead: instantiate + describe           {describe}");
    println!("plugin overhead: instantiate + configure + health {health}");

    // The plugin's own work on one issue (instantiate + configure + issue), CSR made in advance.
    let device = Arc::new(StoredKey::new(
        REQUEST_HANDLE.into(),
        PrivateKey::generate(KeyAlgorithm::EcP256)?,
        Vec::new(),
    ));
    let subject = Name::from_str("CN=bench device,O=certconn")?;
    let csr = pki::csr::build(
        &device.key,
        &subject,
        &[SubjectAltName::Email("device@bench.example".into())],
    )?;
    let issue_request = certconn::plugins::bindings::types::IssueRequest {
        job_id: "bench".into(),
        profile: "device".into(),
        csr,
        subject: None,
        subject_alt_names: Vec::new(),
        validity_days: None,
        template: None,
    };
    let issue_calls = (args.calls / 4).max(1);
    // What the issue step hands the call: the request key certconn made, the CSR it signed
    // with it, and the one certificate the CA key may sign.
    let call_keys = CallKeys {
        scope: Some(IssuanceScope::for_request(
            Some(&device),
            &issue_request.csr,
            None,
            Default::default(),
        )?),
        host_signed_csr: Some(Arc::from(issue_request.csr.as_slice())),
        ..CallKeys::request(Some(device.clone()))
    };
    let writer_before = journal_thread_cpu(WRITER_THREAD);
    let cpu_before = cpu_time();
    let t = Instant::now();
    for _ in 0..issue_calls {
        backend
            .issue(&issue_request, call_keys.clone())
            .await?
            .map_err(|e| {
                anyhow::anyhow!("{}", certconn::plugins::backend::describe_backend_error(&e))
            })?;
    }
    let issue_us = t.elapsed().as_secs_f64() * 1e6 / issue_calls as f64;
    let issue_cpu_us =
        cpu_time().saturating_sub(cpu_before).as_secs_f64() * 1e6 / issue_calls as f64;
    // Each call's signature-trail entry is a commit of its own here, with nothing to share it.
    let trail_us = writer_before.zip(journal_thread_cpu(WRITER_THREAD)).map_or(
        "?".to_owned(),
        |(before, after)| {
            format!(
                "{:.1}",
                after.saturating_sub(before).as_secs_f64() * 1e6 / issue_calls as f64
            )
        },
    );
    println!(
        "local-ca:  instantiate + configure + issue (CSR check, sign) {issue_us:>9.1} µs/call (CPU {issue_cpu_us:.1} µs, {trail_us} of it the journal's writer committing the signature trail's entry alone)"
    );

    // 2. Pipeline throughput.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let scheduler = {
        let app = app.clone();
        tokio::spawn(async move { app.run_scheduler(stop_rx).await })
    };
    let request = bench_request();
    let stages_before = certconn::metrics::global().job_stage_totals();
    let commits_before = certconn::metrics::global().journal_commit_totals();
    let checkpoints_before = checkpoint_counts();
    let callers = args.callers as usize;
    let pipeline = pipeline_round(&app, args.jobs, callers, &request, 0).await?;
    println!("pipeline:  {:>6} issue jobs (EC P-256, local-ca, PKCS#12; {} callers, {} workers) in {:>7.3} s = {:>8.1} jobs/s; CPU {:.0} µs/job, {:.2} cores busy", args.jobs, callers, args.workers(), pipeline.secs, pipeline.rate, pipeline.cpu_us, pipeline.cores);
    print_stages(&stages_before, args.jobs, pipeline.secs, args.workers());
    print_commits(commits_before, checkpoints_before, args.jobs, &pipeline);

    // Latency at moderate load: half the throughput just measured, one job at a time.
    let slow_commits_before = slow_commits();
    let latency =
        latency::measure(&app, &request, pipeline.rate / 2.0, args.jobs.min(1000)).await?;
    println!("{latency}");
    println!("{}", slow_commits_since(slow_commits_before));
    if args.burst > 0 {
        println!("{}", latency::burst(&app, &request, args.burst).await?);
    }

    // 3. The same cryptographic work, directly.
    let direct = direct_round(&app, args.jobs).await?;
    println!("direct:    {:>6} issues (keygen, CSR, CA signature, PKCS#12)     in {:>7.3} s = {:>8.1} issues/s; CPU {:.0} µs/issue, {:.2} cores busy", args.jobs, direct.secs, direct.rate, direct.cpu_us, direct.cores);
    let ratio = pipeline.rate / direct.rate;
    println!("ratio pipeline/direct: {ratio:.3} (the journal, scheduler and plugin sandbox cost {:.1}% of throughput)", (1.0 - ratio) * 100.0);
    println!("{}", cpu_split(&pipeline, &direct));

    // 4. With --rounds: both again, in turn, and the median of the ratios.
    let mut ratios = vec![ratio];
    for round in 1..args.rounds {
        let pipeline = pipeline_round(&app, args.jobs, callers, &request, round).await?;
        let direct = direct_round(&app, args.jobs).await?;
        let ratio = pipeline.rate / direct.rate;
        println!(
            "round {:>3}: pipeline {:>8.1} jobs/s (CPU {:.0} µs/job, journal writer {} µs, PKCS#12 {} µs), direct {:>8.1} issues/s (CPU {:.0} µs/issue, PKCS#12 {} µs), ratio {ratio:.3}",
            round + 1,
            pipeline.rate,
            pipeline.cpu_us,
            whole_us(pipeline.writer_us),
            whole_us(pipeline.pfx_us),
            direct.rate,
            direct.cpu_us,
            whole_us(direct.pfx_us),
        );
        ratios.push(ratio);
    }
    if ratios.len() > 1 {
        ratios.sort_by(f64::total_cmp);
        let n = ratios.len();
        let median = if n % 2 == 1 {
            ratios[n / 2]
        } else {
            (ratios[n / 2 - 1] + ratios[n / 2]) / 2.0
        };
        println!(
            "ratio over {n} rounds: median {median:.3} (min {:.3}, max {:.3})",
            ratios[0],
            ratios[n - 1]
        );
    }
    let _ = stop_tx.send(true);
    scheduler.await?;
    Ok(())
}

/// One measured phase: its rate, CPU per item and cores kept busy.
struct Phase {
    secs: f64,
    rate: f64,
    cpu_us: f64,
    cores: f64,
    /// CPU per item of the journal's writer thread, where the kernel reports it.
    writer_us: Option<f64>,
    /// Time per item the writer thread was runnable but waited for a core.
    writer_wait_us: Option<f64>,
    /// The same of the journal's checkpoint thread.
    checkpoint_us: Option<f64>,
    /// CPU per item its PKCS#12 files took, on the threads that wrote them.
    pfx_us: Option<f64>,
    /// KiB per item this process sent to the disk (the journal's WAL and its checkpoints),
    /// where the kernel counts it.
    disk_kib: Option<f64>,
}

impl Phase {
    fn measured(items: usize, secs: f64, cpu: Duration) -> Self {
        Self {
            secs,
            rate: items as f64 / secs,
            cpu_us: cpu.as_secs_f64() * 1e6 / items as f64,
            cores: cpu.as_secs_f64() / secs,
            writer_us: None,
            writer_wait_us: None,
            checkpoint_us: None,
            pfx_us: None,
            disk_kib: None,
        }
    }
}

/// A figure in whole microseconds, or `?` where the kernel did not provide it.
fn whole_us(us: Option<f64>) -> String {
    us.map_or("?".to_owned(), |us| format!("{us:.0}"))
}

/// The CPU per job of both phases taken apart by what was measured on its own thread: the
/// PKCS#12 files (the same work in both, so their figures should match), the journal's
/// threads, and the rest. The pipeline's rest minus the direct rest is what the journal's
/// callers, the scheduler, the plugin call and the intake cost beyond the cryptography.
fn cpu_split(pipeline: &Phase, direct: &Phase) -> String {
    let rest = |phase: &Phase| {
        let known =
            phase.pfx_us? + phase.writer_us.unwrap_or(0.0) + phase.checkpoint_us.unwrap_or(0.0);
        Some(phase.cpu_us - known)
    };
    format!(
        "CPU per job: pipeline {:.0} µs = PKCS#12 {} + journal writer {} + checkpoints {} + the rest {} (keys, CSR, CA signature, plugin call, scheduler, intake); direct {:.0} µs = PKCS#12 {} + the rest {} (keys, CSR, CA signature)",
        pipeline.cpu_us,
        whole_us(pipeline.pfx_us),
        whole_us(pipeline.writer_us),
        whole_us(pipeline.checkpoint_us),
        whole_us(rest(pipeline)),
        direct.cpu_us,
        whole_us(direct.pfx_us),
        whole_us(rest(direct)),
    )
}

/// Submits `jobs` issue jobs (idempotency keys of round `round`) from `clients` callers at once
/// and waits until the running scheduler has done them all.
///
/// Several callers, as requests come (API clients, SCEP clients, an upstream batch): one
/// caller submitting in turn waits for each job's commit before the next, and the workers then
/// at times run out of work because of the intake, not the pipeline (in one run 855 of 2000
/// jobs were leased from an empty-handed wait, in others 28–148; with eight callers, 8 — each
/// worker's first). But eight callers could not keep 32 workers busy (2,461 of 4,000 jobs
/// leased from an empty-handed wait), which made more workers look costlier than they are;
/// with 32 callers every worker found a job waiting but for its first.
async fn pipeline_round(
    app: &App,
    jobs: usize,
    clients: usize,
    request: &IssueJob,
    round: u32,
) -> anyhow::Result<Phase> {
    let succeeded = |counts: &[(JobState, i64)]| -> usize {
        counts
            .iter()
            .filter(|(s, _)| *s == JobState::Succeeded)
            .map(|(_, n)| usize::try_from(*n).unwrap_or(0))
            .sum()
    };
    // Jobs of earlier rounds (and of the latency phase) have succeeded already.
    let target = succeeded(&app.journal.counts().await?) + jobs;
    const SUCCEEDED: &[&str] = &["succeeded"];
    const FAILED: &[&str] = &["failed", "dead"];
    let runs = |outcomes: &[&'static str]| -> u64 {
        outcomes
            .iter()
            .map(|&o| certconn::metrics::global().job_runs("issue", o))
            .sum()
    };
    let (ran_before, failed_before) = (runs(SUCCEEDED), runs(FAILED));
    let writer_before = journal_thread_times(WRITER_THREAD);
    let checkpoint_before = journal_thread_cpu(CHECKPOINT_THREAD);
    let pfx_before = certconn::metrics::global().pfx_totals();
    let disk_before = disk_written();
    let cpu_before = cpu_time();
    let t = Instant::now();
    let mut callers = tokio::task::JoinSet::new();
    for caller in 0..clients.max(1) {
        let intake = app.intake.clone();
        let request = request.clone();
        callers.spawn(async move {
            for i in (caller..jobs).step_by(clients.max(1)) {
                intake
                    .submit_issue("bench", &format!("job-{round}-{i}"), &request)
                    .await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(submitted) = callers.join_next().await {
        submitted??;
    }
    loop {
        // The journal's count reads every job it holds (about 40 µs a thousand jobs here, so
        // half a millisecond by the third round), and asked every 20 ms for the whole run it
        // was a load on the pipeline it measures. The metrics count runs as they end, for
        // free, a moment before their outcomes are committed: the journal is asked only once
        // they say every job has run, or one has failed.
        let ran = runs(SUCCEEDED).saturating_sub(ran_before);
        let failed = runs(FAILED).saturating_sub(failed_before);
        if ran < jobs as u64 && failed == 0 {
            if t.elapsed() > Duration::from_secs(600) {
                bail!("the pipeline did not finish {jobs} jobs in 10 minutes ({ran} done)");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let counts = app.journal.counts().await?;
        let done = succeeded(&counts);
        let bad: i64 = counts
            .iter()
            .filter(|(s, _)| matches!(s, JobState::Failed | JobState::Dead))
            .map(|(_, n)| n)
            .sum();
        if bad > 0 {
            bail!(
                "{bad} bench jobs failed: {:?}",
                app.journal
                    .list(Some(JobState::Failed), 1)
                    .await?
                    .jobs
                    .first()
                    .and_then(|j| j.last_error.clone())
            );
        }
        if done >= target {
            break;
        }
        if t.elapsed() > Duration::from_secs(600) {
            bail!(
                "the pipeline did not finish {jobs} jobs in 10 minutes ({} done)",
                (done + jobs).saturating_sub(target)
            );
        }
        // Every job has run and the last outcomes are being committed.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut phase = Phase::measured(
        jobs,
        t.elapsed().as_secs_f64(),
        cpu_time().saturating_sub(cpu_before),
    );
    let per_job = |before: Option<Duration>, after: Option<Duration>| {
        before
            .zip(after)
            .map(|(before, after)| after.saturating_sub(before).as_secs_f64() * 1e6 / jobs as f64)
    };
    let writer_after = journal_thread_times(WRITER_THREAD);
    phase.writer_us = per_job(
        writer_before.map(|t| t.on_cpu),
        writer_after.map(|t| t.on_cpu),
    );
    phase.writer_wait_us = per_job(
        writer_before.map(|t| t.waiting),
        writer_after.map(|t| t.waiting),
    );
    phase.checkpoint_us = per_job(checkpoint_before, journal_thread_cpu(CHECKPOINT_THREAD));
    phase.disk_kib = disk_before
        .zip(disk_written())
        .map(|(before, after)| after.saturating_sub(before) as f64 / 1024.0 / jobs as f64);
    let pfx_after = certconn::metrics::global().pfx_totals();
    // Every job wrote one PKCS#12 file; a count that differs means the figure is not per job.
    phase.pfx_us = (pfx_after.0 - pfx_before.0 == jobs as u64)
        .then(|| pfx_after.1.saturating_sub(pfx_before.1).as_secs_f64() * 1e6 / jobs as f64);
    Ok(phase)
}

/// `jobs` issues done directly (no journal, scheduler or plugin), one thread per core.
///
/// As many threads as cores, not `--workers`: work that never waits gains nothing from more
/// threads than cores, and the denominator of the ratio must not move when the pipeline's
/// worker count does. On two cores, 2, 4, 8 and 16 threads gave the same rate within the
/// noise (2,255–2,551 issues/s, 2026-12-05).
async fn direct_round(app: &App, jobs: usize) -> anyhow::Result<Phase> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let ca = app.keys.get("bench-ca")?;
    let iterations = app.config.pfx.iterations;
    let cpu_before = cpu_time();
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let ca = ca.clone();
        let n = jobs / workers + usize::from(w < jobs % workers);
        tasks.spawn_blocking(move || -> anyhow::Result<Option<Duration>> {
            let mut pfx_cpu = Some(Duration::ZERO);
            for _ in 0..n {
                let cpu = direct_issue(&ca.key, &ca.chain, iterations)?;
                pfx_cpu = pfx_cpu.zip(cpu).map(|(sum, cpu)| sum + cpu);
            }
            Ok(pfx_cpu)
        });
    }
    let mut pfx_cpu = Some(Duration::ZERO);
    while let Some(r) = tasks.join_next().await {
        pfx_cpu = pfx_cpu.zip(r??).map(|(sum, cpu)| sum + cpu);
    }
    let mut phase = Phase::measured(
        jobs,
        t.elapsed().as_secs_f64(),
        cpu_time().saturating_sub(cpu_before),
    );
    phase.pfx_us = pfx_cpu.map(|cpu| cpu.as_secs_f64() * 1e6 / jobs as f64);
    Ok(phase)
}

/// The journal's writer thread (`group_commit`) as the kernel names it: it keeps 15 bytes of a
/// thread's name, so "certconn-journal-…" reads so.
const WRITER_THREAD: &str = "certconn-journa";

/// The journal's checkpoint thread (`journal::checkpoint`), likewise.
const CHECKPOINT_THREAD: &str = "certconn-checkp";

/// CPU time the journal's threads named `name` have used. The writer's is its SQL, its WAL
/// writes and its commits' `fsync` work, all of which wait in one line; the checkpoint
/// thread's runs beside it. Read from the kernel's per-thread `schedstat` (nanoseconds on the
/// CPU), so the journal's share needs no profiler and costs the connector nothing; `None`
/// where the kernel does not provide it.
fn journal_thread_cpu(name: &str) -> Option<Duration> {
    journal_thread_times(name).map(|t| t.on_cpu)
}

/// What the kernel's `schedstat` says of a thread: time on a core, and time runnable but
/// waiting for one.
#[derive(Clone, Copy, Default)]
struct ThreadTimes {
    on_cpu: Duration,
    waiting: Duration,
}

/// [`ThreadTimes`] summed over the journal's threads named `name`. The writer's wait for a
/// core is a wait of every write in line behind it: under full load the PKCS#12 threads keep
/// it from a core for 5–10 ms at a time (docs/design/pipeline.md).
fn journal_thread_times(name: &str) -> Option<ThreadTimes> {
    let mut total: Option<ThreadTimes> = None;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let path = task.path();
        let named =
            std::fs::read_to_string(path.join("comm")).is_ok_and(|comm| comm.trim_end() == name);
        if !named {
            continue;
        }
        let stat = std::fs::read_to_string(path.join("schedstat")).ok()?;
        let mut fields = stat.split_whitespace().map(|f| f.parse::<u64>().ok());
        let (on_cpu_ns, waiting_ns) = (fields.next()??, fields.next()??);
        let t = total.get_or_insert_default();
        t.on_cpu += Duration::from_nanos(on_cpu_ns);
        t.waiting += Duration::from_nanos(waiting_ns);
    }
    total
}

/// Bytes this process has caused to be sent to the disk (`write_bytes` of `/proc/self/io`:
/// counted when a page is first dirtied, so a page written again before it reached the disk
/// counts once), where the kernel keeps the count.
fn disk_written() -> Option<u64> {
    std::fs::read_to_string("/proc/self/io")
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("write_bytes:"))?
        .trim()
        .parse()
        .ok()
}

/// CPU time this process has used (user and system, every thread).
fn cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a whole rusage into the pointer it is given, which is valid.
    let usage = unsafe {
        if libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) != 0 {
            return Duration::ZERO;
        }
        usage.assume_init()
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Where the pipeline's jobs spent their time, from the stage histograms
/// (`certconn_job_stage_seconds`): each stage's time per job, summed over the workers that ran
/// at once — so the column adds up to more than the wall time per job when workers overlap.
fn print_stages(
    before: &[(certconn::metrics::JobStage, u64, Duration)],
    jobs: usize,
    wall_secs: f64,
    workers: usize,
) {
    let after = certconn::metrics::global().job_stage_totals();
    let per_job_wall_us = wall_secs * 1e6 / jobs as f64;
    println!(
        "where a job's time goes (µs per job; {workers} workers overlap, so stages add up to about {workers} × the {per_job_wall_us:.0} µs of wall time per job):"
    );
    for ((stage, n0, t0), (_, n1, t1)) in before.iter().zip(after.iter()) {
        let n = n1 - n0;
        let took = t1.saturating_sub(*t0);
        let per_job = took.as_secs_f64() * 1e6 / jobs as f64;
        println!(
            "  {:<7} {per_job:>9.1} µs/job  ({n} timings)",
            stage.as_str()
        );
    }
}

/// What counts as a slow commit of the journal for the latency phase: one that alone uses up
/// half, or all, of the 20 ms p99 the latency is held to.
const SLOW_COMMITS: [f64; 2] = [0.01, 0.025];

/// The journal's commits so far, and those slower than each of [`SLOW_COMMITS`].
fn slow_commits() -> (u64, [u64; 2]) {
    let metrics = certconn::metrics::global();
    (
        metrics.journal_commit_totals().0,
        SLOW_COMMITS.map(|s| metrics.journal_commits_over(s).unwrap_or(0)),
    )
}

/// The journal's commits since `before`, and how many were slow: a latency phase whose p99
/// jumps, with a slow commit beside it, waited for the disk.
fn slow_commits_since(before: (u64, [u64; 2])) -> String {
    let (commits, slow) = slow_commits();
    format!(
        "           its journal commits: {}, over 10 ms: {}, over 25 ms: {}",
        commits - before.0,
        slow[0] - before.1[0],
        slow[1] - before.1[1],
    )
}

/// Checkpoints of the journal's WAL so far, and their time: `(by the checkpoint thread, by the
/// writer)`.
fn checkpoint_counts() -> [(u64, Duration); 2] {
    use certconn::metrics::CheckpointBy;
    let metrics = certconn::metrics::global();
    [
        metrics.journal_checkpoint_totals(CheckpointBy::Background),
        metrics.journal_checkpoint_totals(CheckpointBy::Writer),
    ]
}

/// The journal's commits (fsyncs) per job and writes per commit over the pipeline run: how
/// much the group commit batched; and its WAL checkpoints, beside the writer and on it.
fn print_commits(
    before: (u64, u64),
    checkpoints_before: [(u64, Duration); 2],
    jobs: usize,
    phase: &Phase,
) {
    let (commits, writes) = certconn::metrics::global().journal_commit_totals();
    let (commits, writes) = (commits - before.0, writes - before.1);
    let [background, on_writer] = checkpoint_counts();
    let [background_before, on_writer_before] = checkpoints_before;
    println!(
        "journal:   {:.2} commits (fsyncs) per job, {:.2} writes per commit; its writer thread {} µs of CPU per job, {} µs waiting for a core; {} checkpoints beside it ({} µs of CPU per job), {} on it ({:.1} ms in all); {} KiB per job to the disk",
        commits as f64 / jobs as f64,
        writes as f64 / commits.max(1) as f64,
        whole_us(phase.writer_us),
        whole_us(phase.writer_wait_us),
        background.0 - background_before.0,
        whole_us(phase.checkpoint_us),
        on_writer.0 - on_writer_before.0,
        on_writer.1.saturating_sub(on_writer_before.1).as_secs_f64() * 1e3,
        phase.disk_kib.map_or("?".to_owned(), |kib| format!("{kib:.1}")),
    );
}

/// The benchmarks' configuration: the local CA (`bench-ca` key) behind profile `device`, the
/// journal in `dir/data`, plugins from `plugins`.
pub(crate) fn bench_config(
    dir: &std::path::Path,
    plugins: &std::path::Path,
    workers: usize,
) -> anyhow::Result<Config> {
    bench_config_with(dir, plugins, workers, "")
}

/// [`bench_config`] with `extra` sections appended.
pub(crate) fn bench_config_with(
    dir: &std::path::Path,
    plugins: &std::path::Path,
    workers: usize,
    extra: &str,
) -> anyhow::Result<Config> {
    let mut toml = format!(
        r#"
data_dir = "{data}"
[jobs]
workers = {workers}
[plugins]
dir = "{plugins}"
[keys.bench-ca]
algorithm = "ec-p256"
self_signed = {{ subject = "CN=certconn bench CA" }}
[backends.local]
plugin = "local-ca"
keys = ["bench-ca"]
[backends.local.settings]
ca_key = "bench-ca"
[profiles.device]
backend = "local"
"#,
        data = dir.join("data").display(),
        plugins = plugins.display()
    );
    toml.push_str(extra);
    let config_path = dir.join("bench.toml");
    std::fs::write(&config_path, &toml)?;
    let mut config = Config::parse(&config_path, &toml)?;
    // The bench reads its own `/proc/self/io` and is profiled; it holds only its own test keys.
    config.custody.allow_core_dumps = true;
    Ok(config)
}

/// The issue job every benchmark submits: an EC P-256 device key made by certconn.
pub(crate) fn bench_request() -> IssueJob {
    IssueJob {
        profile: "device".into(),
        subject: "CN=bench device,O=certconn".into(),
        sans: vec!["email:device@bench.example".into()],
        key: Some(KeyAlgorithm::EcP256),
        recipient_pem: None,
        csr_pem: None,
        validity_days: None,
        renews: None,
    }
}

/// One issuance without journal or plugin: what the pipeline's cryptography costs on its own.
/// Returns the CPU time its PKCS#12 file took, measured as the pipeline measures its own.
fn direct_issue(
    ca: &PrivateKey,
    ca_chain: &[Vec<u8>],
    iterations: u32,
) -> anyhow::Result<Option<Duration>> {
    let key = PrivateKey::generate(KeyAlgorithm::EcP256)?;
    let subject = Name::from_str("CN=bench device,O=certconn")?;
    let sans = [SubjectAltName::Email("device@bench.example".into())];
    let csr = pki::csr::build(&key, &subject, &sans)?;
    // The plugin verifies the CSR signature; so does this.
    let parts = certconn_x509::SignedParts::split(&csr)?;
    let scheme = certconn_x509::SignatureScheme::from_algorithm_identifier(&parts.algorithm)?;
    let req = x509_cert::request::CertReq::from_der(&csr)?;
    let spki = der::Encode::to_der(&req.info.public_key)?;
    if !certconn::crypto::provider::verify(&spki, scheme, parts.tbs, parts.signature)? {
        bail!("CSR does not verify");
    }
    let ca_cert = x509_cert::Certificate::from_der(&ca_chain[0])?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let template = CertificateTemplate {
        serial: certconn::crypto::provider::random_vec(16)?,
        issuer: ca_cert.tbs_certificate.subject.clone(),
        subject: subject.clone(),
        not_before: now - 300,
        not_after: now + 365 * 86_400,
        public_key: SubjectPublicKeyInfoOwned::from_der(key.public_key_der())?,
        extensions: vec![
            extensions::basic_constraints(false, None, &subject)?,
            extensions::key_usage(
                &[
                    KeyUsageName::DigitalSignature,
                    KeyUsageName::KeyEncipherment,
                ],
                &subject,
            )?,
            extensions::extended_key_usage(&[ExtendedKeyUsageName::ClientAuth], &subject)?,
            extensions::subject_alt_name(&sans, &subject)?,
        ],
    };
    let ca_scheme = ca.kind().default_signature_scheme();
    let cert = template
        .sign(ca_scheme, |tbs| ca.sign(ca_scheme, tbs))
        .map_err(|e| anyhow::anyhow!("signing: {e:?}"))?;
    let password = pki::pkcs12::random_password()?;
    let cpu = certconn::metrics::thread_cpu_time();
    pki::pkcs12::write(
        &pki::pkcs12::PfxContents {
            key_pkcs8: key.pkcs8_der()?,
            certificate: &cert,
            chain: ca_chain,
            friendly_name: Some("bench"),
        },
        &password,
        iterations,
        pki::pkcs12::PfxProfile::Modern,
        &certconn::crypto::AlgorithmPolicy::default(),
    )?;
    let pfx_cpu = cpu
        .zip(certconn::metrics::thread_cpu_time())
        .map(|(before, after)| after.saturating_sub(before));
    Ok(pfx_cpu)
}
