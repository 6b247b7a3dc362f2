//! Prometheus metrics: what the daemon counts as it works, and the text exposition format
//! `/metrics` answers in.
//!
//! Counters and histograms live in one process-wide [`Metrics`] (as every Prometheus client
//! library keeps its default registry): the job scheduler and the plugin host record into it
//! without being handed a registry, and a counter starts at zero with the process, which
//! Prometheus's `rate()` expects. Gauges that describe state rather than events (jobs by state,
//! backend health, certificate expiry) are read at scrape time from where that state lives.
//!
//! Label values are bounded by the config: job kinds and outcomes are fixed sets, backends are
//! the configured instances. Nothing is ever labelled by device, subject, serial or job.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Upper bounds of the duration histograms, in seconds: from a millisecond (a local issue)
/// to an hour (a job that waited out its backoff).
const BUCKETS: [f64; 17] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 3600.0,
];

/// A duration histogram with [`BUCKETS`].
#[derive(Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative; the exposition sums them), and one for +Inf.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let seconds = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

/// How a job's run ended, as the metrics count it.
pub type JobOutcome = &'static str;

/// Everything the daemon counts.
#[derive(Default)]
pub struct Metrics {
    /// Runs of jobs, by (kind, outcome).
    job_runs: Mutex<BTreeMap<(&'static str, JobOutcome), u64>>,
    /// How long a run took, by kind.
    job_seconds: Mutex<BTreeMap<&'static str, Arc<Histogram>>>,
    /// How long a job waited between being due and being taken, by kind.
    queue_wait_seconds: Mutex<BTreeMap<&'static str, Arc<Histogram>>>,
    /// Plugin calls, by (backend, operation).
    plugin_call_seconds: Mutex<BTreeMap<(String, &'static str), Arc<Histogram>>>,
    /// Plugin faults (traps, limits), by backend.
    plugin_faults: Mutex<BTreeMap<String, u64>>,
    /// Where a job's time goes, by stage ([`JobStage`]).
    job_stage_seconds: Mutex<BTreeMap<JobStage, Arc<Histogram>>>,
    /// Transactions the SQLite journal's group commit made durable.
    journal_commits: AtomicU64,
    /// Writes those transactions carried: writes per commit is the batch the group commit
    /// achieved (each commit is one fsync).
    journal_commit_writes: AtomicU64,
    /// How long each of those commits took (the WAL's pages written and synced): the disk's
    /// latency as every write of a batch waits for it.
    journal_commit_seconds: Histogram,
    /// Job results removed by the retention sweep (`journal.keep_results_days`).
    journal_results_removed: AtomicU64,
    /// Finished jobs removed by the retention sweep (`journal.keep_jobs_days`).
    journal_jobs_removed: AtomicU64,
    /// The SQLite journal's WAL checkpoints, by who ran them ([`CheckpointBy::ALL`]'s order).
    journal_checkpoints: [CheckpointTotals; 2],
    /// The writer's `RESTART` checkpoints that gave up waiting for reads.
    journal_restarts_timed_out: AtomicU64,
    /// Bytes the SQLite journals' connections hold, by [`JOURNAL_MEMORY_KINDS`].
    journal_memory: [AtomicI64; 3],
    /// Connections each API listener holds now ([`ListenerKind::ALL`]'s order).
    api_connections: [AtomicU64; 2],
    /// Times each API listener found itself at `api.max_connections` when it went to take
    /// the next connection.
    api_connection_limit_reached: [AtomicU64; 2],
    /// Idle connections each API listener closed at its limit to make room.
    api_idle_connections_closed: [AtomicU64; 2],
    /// Connections each API listener closed as it took them, their address at
    /// `api.max_connections_per_address`.
    api_connections_refused_per_address: [AtomicU64; 2],
    /// Clients each API listener cut off for missing a deadline, by listener and
    /// [`ClientTimeout`].
    api_client_timeouts: [[AtomicU64; 2]; 2],
    /// PKCS#12 files written for issued certificates.
    pfx_written: AtomicU64,
    /// CPU time those files took on the threads that wrote them (key derivations, encryption).
    pfx_cpu_nanos: AtomicU64,
}

/// The `kind`s of `certconn_journal_memory_bytes`: a SQLite connection's page cache, its
/// prepared statements, its parsed schema.
pub const JOURNAL_MEMORY_KINDS: [&str; 3] = ["page_cache", "statements", "schema"];

/// What the checkpoints one [`CheckpointBy`] ran add up to.
#[derive(Default)]
struct CheckpointTotals {
    count: AtomicU64,
    /// WAL pages they found in the log.
    pages: AtomicU64,
    /// Time they took: on the writer, every write waited for it.
    nanos: AtomicU64,
}

/// Who ran a checkpoint of the SQLite journal's WAL (`journal::checkpoint`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointBy {
    /// The checkpoint thread, beside the writer.
    Background,
    /// The writer itself, between batches: the WAL had grown past its bound.
    Writer,
}

impl CheckpointBy {
    pub const ALL: [CheckpointBy; 2] = [Self::Background, Self::Writer];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Background => "background",
            Self::Writer => "writer",
        }
    }
}

/// Which listener a connection came in on, as the metrics and the log name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// `api.listen`: the API and, on it, everything else.
    Api,
    /// `api.plain_listen`: the SCEP endpoint and the published revocation data.
    Plain,
}

impl ListenerKind {
    pub const ALL: [ListenerKind; 2] = [Self::Api, Self::Plain];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Plain => "plain",
        }
    }
}

/// The deadline a client of the API missed after its request's headers
/// (`sources::api::deadlines`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientTimeout {
    /// The request's body did not arrive in time (`api.body_timeout_seconds`).
    Body,
    /// A write of the answer waited for the client too long (`api.send_timeout_seconds`).
    Send,
}

impl ClientTimeout {
    pub const ALL: [ClientTimeout; 2] = [Self::Body, Self::Send];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Body => "body",
            Self::Send => "send",
        }
    }
}

/// The stages a job's time is split into: what `certconn bench` prints and
/// `certconn_job_stage_seconds` counts, so the split is seen without a profiler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum JobStage {
    /// Validating a request and writing it to the journal, until it is acknowledged.
    Intake,
    /// A worker taking a due job from the journal (its lease written).
    Lease,
    /// The host's own cryptography for the job: keys, CSR, PKCS#12, sealing.
    Crypto,
    /// The backend's plugin call: a fresh instance, configure, the operation (and the host
    /// calls it makes: signatures, the signature trail).
    Plugin,
    /// Writing the job's outcome and result to the journal, until it is durable.
    Commit,
}

impl JobStage {
    pub const ALL: [JobStage; 5] = [
        Self::Intake,
        Self::Lease,
        Self::Crypto,
        Self::Plugin,
        Self::Commit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Intake => "intake",
            Self::Lease => "lease",
            Self::Crypto => "crypto",
            Self::Plugin => "plugin",
            Self::Commit => "commit",
        }
    }
}

/// CPU time (user and system) the calling thread has used so far; `None` where the clock is
/// not available. The difference across a piece of synchronous work is what that work cost,
/// whatever else the process ran meanwhile, which wall time under load does not tell.
pub fn thread_cpu_time() -> Option<Duration> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the pointer it is given, which is valid.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) } != 0 {
        return None;
    }
    Some(Duration::new(
        u64::try_from(now.tv_sec).ok()?,
        u32::try_from(now.tv_nsec).ok()?,
    ))
}

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static GLOBAL: OnceLock<Metrics> = OnceLock::new();
    GLOBAL.get_or_init(Metrics::default)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every update under these locks is one map insert that cannot panic halfway.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn histogram<K: Ord + Clone>(map: &Mutex<BTreeMap<K, Arc<Histogram>>>, key: &K) -> Arc<Histogram> {
    lock(map).entry(key.clone()).or_default().clone()
}

impl Metrics {
    /// A job's run ended with `outcome` after `ran`, having waited `waited` to be taken.
    pub fn job_ran(
        &self,
        kind: &'static str,
        outcome: JobOutcome,
        ran: Duration,
        waited: Duration,
    ) {
        *lock(&self.job_runs).entry((kind, outcome)).or_default() += 1;
        histogram(&self.job_seconds, &kind).observe(ran);
        histogram(&self.queue_wait_seconds, &kind).observe(waited);
    }

    /// A call into backend `backend`'s plugin took `took`; `faulted` when it trapped or hit a
    /// limit.
    pub fn plugin_call(
        &self,
        backend: &str,
        operation: &'static str,
        took: Duration,
        faulted: bool,
    ) {
        histogram(&self.plugin_call_seconds, &(backend.to_owned(), operation)).observe(took);
        if faulted {
            *lock(&self.plugin_faults)
                .entry(backend.to_owned())
                .or_default() += 1;
        }
    }

    /// One stage of a job took `took`.
    pub fn job_stage(&self, stage: JobStage, took: Duration) {
        histogram(&self.job_stage_seconds, &stage).observe(took);
    }

    /// The SQLite journal committed one transaction carrying `writes` writes, in `took`.
    pub fn journal_committed(&self, writes: usize, took: Duration) {
        self.journal_commit_seconds.observe(took);
        self.journal_commits.fetch_add(1, Ordering::Relaxed);
        self.journal_commit_writes
            .fetch_add(writes as u64, Ordering::Relaxed);
    }

    /// A checkpoint of the SQLite journal's WAL ran, with `pages` in the log.
    pub fn journal_checkpointed(&self, by: CheckpointBy, pages: i64, took: Duration) {
        let totals = &self.journal_checkpoints[by as usize];
        totals.count.fetch_add(1, Ordering::Relaxed);
        totals
            .pages
            .fetch_add(u64::try_from(pages).unwrap_or(0), Ordering::Relaxed);
        totals.nanos.fetch_add(
            u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// The writer's `RESTART` checkpoint gave up waiting for the reads begun before it.
    pub fn journal_restart_timed_out(&self) {
        self.journal_restarts_timed_out
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The writer's `RESTART` checkpoints that timed out since the process started.
    pub fn journal_restart_timeouts(&self) -> u64 {
        self.journal_restarts_timed_out.load(Ordering::Relaxed)
    }

    /// Checkpoints of the SQLite journal's WAL that `by` ran since the process started, and
    /// the time they took.
    pub fn journal_checkpoint_totals(&self, by: CheckpointBy) -> (u64, Duration) {
        let totals = &self.journal_checkpoints[by as usize];
        (
            totals.count.load(Ordering::Relaxed),
            Duration::from_nanos(totals.nanos.load(Ordering::Relaxed)),
        )
    }

    /// A PKCS#12 file for an issued certificate was written, using `cpu` of its thread's CPU
    /// time ([`thread_cpu_time`]). With `pfx.iterations` it is most of what an issue costs the
    /// host, so its share of the daemon's CPU is worth seeing apart from the rest.
    pub fn pfx_written(&self, cpu: Duration) {
        self.pfx_written.fetch_add(1, Ordering::Relaxed);
        self.pfx_cpu_nanos.fetch_add(
            u64::try_from(cpu.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// `(files, CPU time)` of the PKCS#12 files written since the process started.
    pub fn pfx_totals(&self) -> (u64, Duration) {
        (
            self.pfx_written.load(Ordering::Relaxed),
            Duration::from_nanos(self.pfx_cpu_nanos.load(Ordering::Relaxed)),
        )
    }

    /// A connection on `listener` was taken.
    pub fn api_connection_opened(&self, listener: ListenerKind) {
        self.api_connections[listener as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A connection on `listener` closed.
    pub fn api_connection_closed(&self, listener: ListenerKind) {
        self.api_connections[listener as usize].fetch_sub(1, Ordering::Relaxed);
    }

    /// Connections `listener` holds now.
    pub fn api_connections_open(&self, listener: ListenerKind) -> u64 {
        self.api_connections[listener as usize].load(Ordering::Relaxed)
    }

    /// `listener` was at `api.max_connections` when it went to take the next connection.
    pub fn api_connection_limit_reached(&self, listener: ListenerKind) {
        self.api_connection_limit_reached[listener as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// How often `listener` was at its limit since the process started.
    pub fn api_connection_limit_reached_total(&self, listener: ListenerKind) -> u64 {
        self.api_connection_limit_reached[listener as usize].load(Ordering::Relaxed)
    }

    /// `listener`, at its limit, closed a connection idle between requests.
    pub fn api_idle_connection_closed(&self, listener: ListenerKind) {
        self.api_idle_connections_closed[listener as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// `listener` closed a connection as it took it: its address held
    /// `api.max_connections_per_address` already.
    pub fn api_connection_refused_per_address(&self, listener: ListenerKind) {
        self.api_connections_refused_per_address[listener as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Connections `listener` refused for their address since the process started.
    pub fn api_connections_refused_per_address_total(&self, listener: ListenerKind) -> u64 {
        self.api_connections_refused_per_address[listener as usize].load(Ordering::Relaxed)
    }

    /// Idle connections `listener` closed at its limit since the process started.
    pub fn api_idle_connections_closed_total(&self, listener: ListenerKind) -> u64 {
        self.api_idle_connections_closed[listener as usize].load(Ordering::Relaxed)
    }

    /// A client of `listener` missed the `phase` deadline and was cut off.
    pub fn api_client_timeout(&self, listener: ListenerKind, phase: ClientTimeout) {
        self.api_client_timeouts[listener as usize][phase as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Clients of `listener` cut off at the `phase` deadline since the process started.
    pub fn api_client_timeouts_total(&self, listener: ListenerKind, phase: ClientTimeout) -> u64 {
        self.api_client_timeouts[listener as usize][phase as usize].load(Ordering::Relaxed)
    }

    /// The retention sweep removed `n` job results.
    pub fn journal_results_removed(&self, n: u64) {
        self.journal_results_removed.fetch_add(n, Ordering::Relaxed);
    }

    /// The retention sweep removed `n` finished jobs.
    pub fn journal_jobs_removed(&self, n: u64) {
        self.journal_jobs_removed.fetch_add(n, Ordering::Relaxed);
    }

    /// A SQLite journal connection's memory went from `was` to `now` (by
    /// [`JOURNAL_MEMORY_KINDS`]).
    pub fn journal_memory_changed(&self, was: &[u64; 3], now: &[u64; 3]) {
        for ((gauge, was), now) in self.journal_memory.iter().zip(was).zip(now) {
            let change =
                i64::try_from(*now).unwrap_or(i64::MAX) - i64::try_from(*was).unwrap_or(i64::MAX);
            if change != 0 {
                gauge.fetch_add(change, Ordering::Relaxed);
            }
        }
    }

    /// Bytes the SQLite journals' connections hold now, by [`JOURNAL_MEMORY_KINDS`].
    pub fn journal_memory(&self) -> [u64; 3] {
        self.journal_memory
            .each_ref()
            .map(|g| u64::try_from(g.load(Ordering::Relaxed)).unwrap_or(0))
    }

    /// `(commits, writes)` the SQLite journal has made durable since the process started.
    pub fn journal_commit_totals(&self) -> (u64, u64) {
        (
            self.journal_commits.load(Ordering::Relaxed),
            self.journal_commit_writes.load(Ordering::Relaxed),
        )
    }

    /// The SQLite journal's commits since the process started that took longer than
    /// `seconds`, which must be one of the histograms' bucket bounds (`None` otherwise).
    pub fn journal_commits_over(&self, seconds: f64) -> Option<u64> {
        let bound = BUCKETS.iter().position(|b| *b == seconds)?;
        Some(
            self.journal_commit_seconds.counts[bound + 1..]
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .sum(),
        )
    }

    /// How many runs of `kind` jobs ended with `outcome` since the process started. A run is
    /// counted as it ends, before its outcome is in the journal.
    pub fn job_runs(&self, kind: &str, outcome: JobOutcome) -> u64 {
        lock(&self.job_runs)
            .iter()
            .filter(|((k, o), _)| *k == kind && *o == outcome)
            .map(|(_, n)| n)
            .sum()
    }

    /// `(observations, total time)` of each stage since the process started.
    pub fn job_stage_totals(&self) -> Vec<(JobStage, u64, Duration)> {
        let stages = lock(&self.job_stage_seconds);
        JobStage::ALL
            .iter()
            .map(|stage| match stages.get(stage) {
                Some(h) => (
                    *stage,
                    h.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum(),
                    Duration::from_nanos(h.sum_nanos.load(Ordering::Relaxed)),
                ),
                None => (*stage, 0, Duration::ZERO),
            })
            .collect()
    }

    /// Writes the counters and histograms.
    pub fn write(&self, out: &mut Exposition) {
        out.family(
            "certconn_job_runs_total",
            "counter",
            "Runs of jobs by kind and outcome (succeeded, failed, dead, retried, pending, unavailable).",
        );
        for ((kind, outcome), n) in lock(&self.job_runs).iter() {
            out.sample(
                "certconn_job_runs_total",
                &[("kind", kind), ("outcome", outcome)],
                *n as f64,
            );
        }
        out.family(
            "certconn_job_run_seconds",
            "histogram",
            "How long one run of a job took, by kind.",
        );
        for (kind, h) in lock(&self.job_seconds).iter() {
            out.histogram("certconn_job_run_seconds", &[("kind", kind)], h);
        }
        out.family(
            "certconn_job_queue_wait_seconds",
            "histogram",
            "How long a job waited between being due and a worker taking it, by kind.",
        );
        for (kind, h) in lock(&self.queue_wait_seconds).iter() {
            out.histogram("certconn_job_queue_wait_seconds", &[("kind", kind)], h);
        }
        out.family(
            "certconn_plugin_call_seconds",
            "histogram",
            "How long a call into a backend's plugin took (a fresh instance each), by backend and operation.",
        );
        for ((backend, operation), h) in lock(&self.plugin_call_seconds).iter() {
            out.histogram(
                "certconn_plugin_call_seconds",
                &[("backend", backend), ("operation", operation)],
                h,
            );
        }
        out.family(
            "certconn_job_stage_seconds",
            "histogram",
            "Where jobs' time goes, by stage: intake, lease, crypto (the host's keys, CSR, PKCS#12, sealing), plugin (the backend call), commit.",
        );
        for (stage, h) in lock(&self.job_stage_seconds).iter() {
            out.histogram(
                "certconn_job_stage_seconds",
                &[("stage", stage.as_str())],
                h,
            );
        }
        let (commits, writes) = self.journal_commit_totals();
        out.family(
            "certconn_journal_commits_total",
            "counter",
            "Transactions the SQLite journal committed (each one fsync); writes_total / commits_total is the group commit's batch.",
        );
        out.sample("certconn_journal_commits_total", &[], commits as f64);
        out.family(
            "certconn_journal_writes_total",
            "counter",
            "Writes the SQLite journal's commits carried.",
        );
        out.sample("certconn_journal_writes_total", &[], writes as f64);
        out.family(
            "certconn_journal_commit_seconds",
            "histogram",
            "How long the SQLite journal's commits took (the write-ahead log's pages written and synced to the disk); every write of a batch waits for its commit.",
        );
        out.histogram(
            "certconn_journal_commit_seconds",
            &[],
            &self.journal_commit_seconds,
        );
        out.family(
            "certconn_journal_memory_bytes",
            "gauge",
            "Memory the SQLite journal's connections hold: their page caches (up to 2 MiB each, six connections), prepared statements and schema. Part of certconn_heap_bytes{kind=\"in_use\"}.",
        );
        for (kind, bytes) in JOURNAL_MEMORY_KINDS.iter().zip(self.journal_memory()) {
            out.sample(
                "certconn_journal_memory_bytes",
                &[("kind", kind)],
                bytes as f64,
            );
        }
        let (pfx_files, pfx_cpu) = self.pfx_totals();
        out.family(
            "certconn_pfx_written_total",
            "counter",
            "PKCS#12 files written for issued certificates.",
        );
        out.sample("certconn_pfx_written_total", &[], pfx_files as f64);
        out.family(
            "certconn_pfx_cpu_seconds_total",
            "counter",
            "CPU time writing those files took (their key derivations: pfx.iterations), on the threads that wrote them.",
        );
        out.sample("certconn_pfx_cpu_seconds_total", &[], pfx_cpu.as_secs_f64());
        out.family(
            "certconn_journal_results_removed_total",
            "counter",
            "Job results (PFX, certificates) removed after journal.keep_results_days.",
        );
        out.sample(
            "certconn_journal_results_removed_total",
            &[],
            self.journal_results_removed.load(Ordering::Relaxed) as f64,
        );
        out.family(
            "certconn_journal_jobs_removed_total",
            "counter",
            "Finished jobs removed after journal.keep_jobs_days (their certificates stay in the ledger).",
        );
        out.sample(
            "certconn_journal_jobs_removed_total",
            &[],
            self.journal_jobs_removed.load(Ordering::Relaxed) as f64,
        );
        out.family(
            "certconn_journal_checkpoint_timeouts_total",
            "counter",
            "Times the SQLite journal's writer gave up starting its write-ahead log again, because reads begun before it went on for longer than it waits (1 s); it tries again 4,000 pages later, and the log grows meanwhile.",
        );
        out.sample(
            "certconn_journal_checkpoint_timeouts_total",
            &[],
            self.journal_restart_timeouts() as f64,
        );
        type Family = (&'static str, &'static str, fn(&CheckpointTotals) -> f64);
        let checkpoints: [Family; 3] = [
            (
                "certconn_journal_checkpoints_total",
                "Checkpoints of the SQLite journal's write-ahead log: by the checkpoint thread (background) or, when the log outgrew it, by the writer itself (writer).",
                |t| t.count.load(Ordering::Relaxed) as f64,
            ),
            (
                "certconn_journal_checkpoint_seconds_total",
                "Time the SQLite journal's checkpoints took, by who ran them: on the writer, every write waited for it.",
                |t| Duration::from_nanos(t.nanos.load(Ordering::Relaxed)).as_secs_f64(),
            ),
            (
                "certconn_journal_checkpoint_pages_total",
                "WAL pages the SQLite journal's checkpoints found in the log, by who ran them.",
                |t| t.pages.load(Ordering::Relaxed) as f64,
            ),
        ];
        for (name, help, value) in checkpoints {
            out.family(name, "counter", help);
            for by in CheckpointBy::ALL {
                out.sample(
                    name,
                    &[("by", by.as_str())],
                    value(&self.journal_checkpoints[by as usize]),
                );
            }
        }
        out.family(
            "certconn_api_connections",
            "gauge",
            "Connections the API's listeners hold now, by listener (api, plain), TLS handshakes included; at most api.max_connections each.",
        );
        for listener in ListenerKind::ALL {
            out.sample(
                "certconn_api_connections",
                &[("listener", listener.as_str())],
                self.api_connections_open(listener) as f64,
            );
        }
        out.family(
            "certconn_api_connection_limit_reached_total",
            "counter",
            "Times a listener held api.max_connections connections when it went to take the next one, which then waited in the kernel's queue.",
        );
        for listener in ListenerKind::ALL {
            out.sample(
                "certconn_api_connection_limit_reached_total",
                &[("listener", listener.as_str())],
                self.api_connection_limit_reached_total(listener) as f64,
            );
        }
        out.family(
            "certconn_api_connections_refused_per_address_total",
            "counter",
            "Connections a listener closed as it took them because their client address (an IPv6 client's /64) held api.max_connections_per_address already.",
        );
        for listener in ListenerKind::ALL {
            out.sample(
                "certconn_api_connections_refused_per_address_total",
                &[("listener", listener.as_str())],
                self.api_connections_refused_per_address_total(listener) as f64,
            );
        }
        out.family(
            "certconn_api_idle_connections_closed_total",
            "counter",
            "Connections idle between requests that a listener at api.max_connections closed to make room for a new one, oldest first.",
        );
        for listener in ListenerKind::ALL {
            out.sample(
                "certconn_api_idle_connections_closed_total",
                &[("listener", listener.as_str())],
                self.api_idle_connections_closed_total(listener) as f64,
            );
        }
        out.family(
            "certconn_api_client_timeouts_total",
            "counter",
            "Connections closed because the client missed a deadline after its request's headers, by listener and phase: body (api.body_timeout_seconds) or send (api.send_timeout_seconds).",
        );
        for listener in ListenerKind::ALL {
            for phase in ClientTimeout::ALL {
                out.sample(
                    "certconn_api_client_timeouts_total",
                    &[("listener", listener.as_str()), ("phase", phase.as_str())],
                    self.api_client_timeouts_total(listener, phase) as f64,
                );
            }
        }
        out.family(
            "certconn_plugin_faults_total",
            "counter",
            "Plugin calls that trapped or exceeded a limit, by backend.",
        );
        for (backend, n) in lock(&self.plugin_faults).iter() {
            out.sample(
                "certconn_plugin_faults_total",
                &[("backend", backend)],
                *n as f64,
            );
        }
    }
}

/// The Prometheus text exposition format (version 0.0.4), written family by family.
#[derive(Default)]
pub struct Exposition(String);

impl Exposition {
    /// The content type `/metrics` answers with.
    pub const CONTENT_TYPE: &'static str = "text/plain; version=0.0.4; charset=utf-8";

    /// Starts family `name`: its HELP and TYPE lines.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {}", escape(help, false));
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    /// One sample of the current family.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        self.labels(labels, None);
        let _ = writeln!(self.0, " {}", number(value));
    }

    /// The buckets, sum and count of a histogram.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) {
        let mut cumulative = 0u64;
        for (i, bound) in BUCKETS
            .iter()
            .map(|b| number(*b))
            .chain(["+Inf".to_owned()])
            .enumerate()
        {
            cumulative += h.counts[i].load(Ordering::Relaxed);
            let _ = write!(self.0, "{name}_bucket");
            self.labels(labels, Some(("le", &bound)));
            let _ = writeln!(self.0, " {cumulative}");
        }
        let sum = h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = write!(self.0, "{name}_sum");
        self.labels(labels, None);
        let _ = writeln!(self.0, " {}", number(sum));
        let _ = write!(self.0, "{name}_count");
        self.labels(labels, None);
        let _ = writeln!(self.0, " {cumulative}");
    }

    fn labels(&mut self, labels: &[(&str, &str)], extra: Option<(&str, &str)>) {
        let all: Vec<(&str, &str)> = labels.iter().copied().chain(extra).collect();
        if all.is_empty() {
            return;
        }
        self.0.push('{');
        for (i, (k, v)) in all.iter().enumerate() {
            if i > 0 {
                self.0.push(',');
            }
            let _ = write!(self.0, "{k}=\"{}\"", escape(v, true));
        }
        self.0.push('}');
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// A float as the exposition format writes it.
fn number(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else if v.is_nan() {
        "NaN".to_owned()
    } else {
        format!("{v}")
    }
}

/// Escapes a HELP text (backslash, newline) or a label value (also the double quote).
fn escape(s: &str, quote: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_threads_cpu_time_counts_its_own_work_and_not_its_sleep() {
        let start = thread_cpu_time().expect("Linux has a per-thread CPU clock");
        std::thread::sleep(Duration::from_millis(50));
        let slept = thread_cpu_time().unwrap().saturating_sub(start);
        let mut x = 1u64;
        let busy_from = thread_cpu_time().unwrap();
        let clock = std::time::Instant::now();
        while clock.elapsed() < Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let busy = thread_cpu_time().unwrap().saturating_sub(busy_from);
        assert!(
            slept < Duration::from_millis(25),
            "{slept:?} of CPU while asleep"
        );
        // 50 ms of spinning; the thread may be preempted, so only a part is certain.
        assert!(
            busy > Duration::from_millis(5),
            "{busy:?} of CPU while busy"
        );
    }

    #[test]
    fn pfx_totals_add_up_the_files_and_their_cpu() {
        let m = Metrics::default();
        m.pfx_written(Duration::from_micros(700));
        m.pfx_written(Duration::from_micros(300));
        assert_eq!(m.pfx_totals(), (2, Duration::from_millis(1)));
        let mut out = Exposition::default();
        m.write(&mut out);
        let text = out.into_string();
        assert!(text.contains("\ncertconn_pfx_written_total 2\n"), "{text}");
        assert!(
            text.contains("\ncertconn_pfx_cpu_seconds_total 0.001\n"),
            "{text}"
        );
    }

    #[test]
    fn histograms_are_cumulative_and_count_every_observation() {
        let m = Metrics::default();
        m.job_ran(
            "issue",
            "succeeded",
            Duration::from_millis(3),
            Duration::ZERO,
        );
        m.job_ran(
            "issue",
            "succeeded",
            Duration::from_secs(7200),
            Duration::ZERO,
        );
        m.job_ran("issue", "failed", Duration::from_millis(20), Duration::ZERO);
        let mut out = Exposition::default();
        m.write(&mut out);
        let text = out.into_string();
        assert!(
            text.contains("certconn_job_runs_total{kind=\"issue\",outcome=\"succeeded\"} 2"),
            "{text}"
        );
        assert!(text.contains("certconn_job_run_seconds_bucket{kind=\"issue\",le=\"0.005\"} 1"));
        assert!(text.contains("certconn_job_run_seconds_bucket{kind=\"issue\",le=\"0.025\"} 2"));
        assert!(text.contains("certconn_job_run_seconds_bucket{kind=\"issue\",le=\"3600\"} 2"));
        assert!(text.contains("certconn_job_run_seconds_bucket{kind=\"issue\",le=\"+Inf\"} 3"));
        assert!(text.contains("certconn_job_run_seconds_count{kind=\"issue\"} 3"));
    }

    #[test]
    fn job_runs_counts_one_kind_and_outcome() {
        let m = Metrics::default();
        assert_eq!(m.job_runs("issue", "succeeded"), 0);
        for (kind, outcome) in [
            ("issue", "succeeded"),
            ("issue", "succeeded"),
            ("issue", "failed"),
            ("revoke", "succeeded"),
        ] {
            m.job_ran(kind, outcome, Duration::ZERO, Duration::ZERO);
        }
        assert_eq!(m.job_runs("issue", "succeeded"), 2);
        assert_eq!(m.job_runs("issue", "failed"), 1);
        assert_eq!(m.job_runs("issue", "dead"), 0);
        assert_eq!(m.job_runs("revoke", "succeeded"), 1);
    }

    #[test]
    fn slow_commits_are_counted_past_a_bucket_bound_and_only_a_bound_is_asked() {
        let m = Metrics::default();
        for ms in [1, 8, 10, 11, 30, 400] {
            m.journal_committed(3, Duration::from_millis(ms));
        }
        assert_eq!(m.journal_commit_totals(), (6, 18));
        // 10 ms falls in the bucket up to 10 ms: not over it.
        assert_eq!(m.journal_commits_over(0.01), Some(3));
        assert_eq!(m.journal_commits_over(0.025), Some(2));
        assert_eq!(m.journal_commits_over(0.25), Some(1));
        assert_eq!(m.journal_commits_over(0.02), None);
        let mut out = Exposition::default();
        m.write(&mut out);
        let text = out.into_string();
        assert!(
            text.contains("\ncertconn_journal_commit_seconds_bucket{le=\"0.01\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("\ncertconn_journal_commit_seconds_count 6\n"),
            "{text}"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = Exposition::default();
        out.sample("x", &[("backend", "a\"b\\c\nd")], 1.0);
        assert_eq!(out.into_string(), "x{backend=\"a\\\"b\\\\c\\nd\"} 1\n");
    }
}
