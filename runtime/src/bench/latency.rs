//! Request → sealed PFX latency at a given load: jobs submitted at a steady rate, or all at
//! once (a burst of SCEP clients, say), each timed from the submission to its result durable in
//! the journal, with its caller waiting as an API or SCEP client does
//! ([`certconn::journal::JobStore::wait_settled`]).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use certconn::app::App;
use certconn::jobs::model::IssueJob;
use certconn::journal::JobState;

/// Percentiles of one latency run.
pub struct Latency {
    /// Jobs submitted per second; infinite for a burst.
    rate: f64,
    samples: Vec<Duration>,
    /// From the first submission to the last job settled.
    took: Duration,
}

impl Latency {
    fn percentile(&self, p: f64) -> Duration {
        // `samples` is sorted and never empty (see `measure`).
        let rank = ((p / 100.0) * self.samples.len() as f64).ceil() as usize;
        self.samples[rank.clamp(1, self.samples.len()) - 1]
    }
}

impl fmt::Display for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let n = self.samples.len();
        if self.rate.is_finite() {
            write!(
                f,
                "latency:   request → sealed PFX at {:.0} jobs/s ({n} jobs)",
                self.rate
            )?;
        } else {
            write!(
                f,
                "burst:     {n} requests at once, each caller waiting for its job: all done in {:.0} ms ({:.0} jobs/s)",
                ms(self.took),
                n as f64 / self.took.as_secs_f64()
            )?;
        }
        write!(
            f,
            ": p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            ms(self.percentile(50.0)),
            ms(self.percentile(90.0)),
            ms(self.percentile(99.0)),
            ms(self.percentile(100.0)),
        )
    }
}

/// Submits `jobs` issue jobs at `rate` per second (the scheduler running) and times each from
/// its submission until it has succeeded.
pub async fn measure(
    app: &Arc<App>,
    request: &IssueJob,
    rate: f64,
    jobs: usize,
) -> anyhow::Result<Latency> {
    run(app, request, rate.max(1.0), jobs, "bench-latency").await
}

/// Submits `jobs` issue jobs at once, each from its own task that then waits for its job.
pub async fn burst(app: &Arc<App>, request: &IssueJob, jobs: usize) -> anyhow::Result<Latency> {
    run(app, request, f64::INFINITY, jobs, "bench-burst").await
}

async fn run(
    app: &Arc<App>,
    request: &IssueJob,
    rate: f64,
    jobs: usize,
    source: &'static str,
) -> anyhow::Result<Latency> {
    let every = Duration::from_secs_f64(1.0 / rate);
    let mut tasks = tokio::task::JoinSet::new();
    let start = tokio::time::Instant::now();
    for i in 0..jobs.max(1) {
        tokio::time::sleep_until(start + every.mul_f64(i as f64)).await;
        let (app, request) = (app.clone(), request.clone());
        tasks.spawn(async move {
            let t = Instant::now();
            let (job, _) = app
                .intake
                .submit_issue(source, &format!("job-{i}"), &request)
                .await?;
            let done = app
                .journal
                .wait_settled(&job.id, Duration::from_secs(60))
                .await?;
            if done.state != JobState::Succeeded {
                bail!(
                    "latency job {} ended {:?}: {}",
                    job.id,
                    done.state,
                    done.last_error.unwrap_or_default()
                );
            }
            anyhow::Ok(t.elapsed())
        });
    }
    let mut samples = Vec::with_capacity(jobs);
    while let Some(r) = tasks.join_next().await {
        samples.push(r.context("a latency task")??);
    }
    samples.sort();
    Ok(Latency {
        rate,
        samples,
        took: start.elapsed(),
    })
}
