//! The journal: the durable state every other part trusts — jobs and their leases, the outbox
//! of results, the ledger of certificates issued and revoked, SCEP one-time challenges and the
//! replay window. It is a set of small async traits ([`JobStore`], [`Outbox`], [`Ledger`],
//! [`ChallengeStore`], [`ReplayGuard`]), so each user depends on the part it needs and an
//! implementation is one new module: SQLite ([`sqlite`], the embedded default) and PostgreSQL
//! ([`postgres`], for fleets: many instances on one journal). The behaviour every implementation must have is written once, as tests any
//! implementation runs (`behaviour`).
//!
//! Fencing. Each lease carries a fresh random token, and every write that ends, parks, requeues
//! or renews a leased job is conditional on that token. A worker whose lease expired — it was
//! slow, paused, or its process died — can never overwrite the outcome of the worker that took
//! the job up after it, even a worker of the same process. Leases are renewed while a job runs
//! (the scheduler's business), so a slow CA does not make a job run twice.
//!
//! Requests are kept as JSON: the journal stores what the job layer gives it and never needs to
//! know an issue from an import.

mod checkpoint;
pub mod config;
mod group_commit;
mod memory;
pub mod postgres;
mod readers;
pub mod record;
pub mod retention;
pub mod schema;
pub mod sqlite;
pub mod trail;
mod waiters;

#[cfg(test)]
pub(crate) mod behaviour;

use std::time::Duration;

pub use config::JournalConfig;
pub use postgres::PostgresJournal;
pub use record::{
    Completion, FleetDecision, InstanceRecord, IssuedRecord, JobKind, JobListing, JobRecord,
    JobState, Lease, Leased, LedgerEntry, LedgerQuery, LedgerSelection, NewJob, OwedOutcome,
    ReasonChange, Revocation, RevocationMark, RevokedSerial, StoredResult, UnreadableJob,
};
pub use sqlite::SqliteJournal;
pub use trail::{NewSignature, SignatureRecord, SignedKind};

/// Why the journal could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    #[error("journal {path}")]
    Open {
        path: std::path::PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The journal's database cannot be used (unreachable, refused the login, bad TLS).
    #[error("journal {location}")]
    Database {
        location: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The database said no; the cause says why.
    #[error("journal")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("journal holds a malformed record for job {id}: {reason}")]
    Corrupt { id: String, reason: String },
    #[error("job {0} not found")]
    NotFound(String),
    #[error("certificate {serial} of backend {backend:?} is not revoked in the ledger")]
    NotRevoked { backend: String, serial: String },
    #[error("job {id} is {state}; only failed or dead jobs can be retried")]
    NotRetryable { id: String, state: &'static str },
    #[error(
        "journal schema version {found} is newer than this certconn knows ({supported}); run the \
         certconn version that wrote it, or a newer one"
    )]
    TooNew { found: i64, supported: i64 },
    #[error(
        "serial {serial} of {issuer} was already signed (signature trail entry {seq}); a serial \
         is never used twice"
    )]
    SerialReused {
        issuer: String,
        serial: String,
        seq: u64,
    },
    /// The journal's worker thread went away (the process is shutting down).
    #[error("the journal is shutting down")]
    Closed,
}

/// Current time in unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Seconds since the Unix epoch, for certificate validity and renewal points.
pub fn now_secs() -> u64 {
    u64::try_from(now_ms() / 1000).unwrap_or(0)
}

/// `bytes` fresh random bytes as hex: lease tokens, and the random part of job ids.
pub(crate) fn random_hex(bytes: usize) -> Result<String, JournalError> {
    crate::crypto::provider::random_vec(bytes)
        .map(hex::encode)
        .map_err(|e| JournalError::Backend(Box::new(e)))
}

/// A new job's id: the time in milliseconds (48 bits), then 80 random bits, as 32 hex digits.
///
/// Time first, so that jobs created together sit side by side in the indexes keyed by their id
/// (the jobs' and the outbox's primary keys) instead of each landing on a page of its own. The
/// pages a job makes the journal write did not drop measurably with it, because other keys
/// (certificate serials, idempotency keys) still scatter (docs/design/pipeline.md); it is kept
/// because it costs nothing. The 80 random bits keep ids unguessable and unique across a
/// fleet's instances.
pub(crate) fn new_job_id() -> Result<String, JournalError> {
    Ok(job_id_at(now_ms(), &random_hex(10)?))
}

fn job_id_at(now_ms: i64, random: &str) -> String {
    // 48 bits of milliseconds last until the year 10889.
    let millis = u64::try_from(now_ms).unwrap_or(0) & 0xffff_ffff_ffff;
    format!("{millis:012x}{random}")
}

/// Jobs whose record cannot be read that one lease fails in passing before it stops looking
/// (the next lease goes on): bounds one write, whatever the journal holds.
pub(crate) const UNREADABLE_PER_LEASE: usize = 8;

/// What a job whose record in the journal cannot be read (a request that is not JSON, a kind
/// this version does not know) ends with. The lease fails it and takes the next job: left
/// queued, it would be the first due job on every lease, and no job behind it would run.
/// Logged here, once per job set aside.
pub(crate) fn set_aside_reason(id: &str, reason: &str) -> String {
    let why = format!(
        "its record in the journal cannot be read ({reason}); it was failed so that the jobs queued behind it run"
    );
    tracing::error!(job = id, "journal: job {id}: {why}");
    why
}

/// The unfinished jobs of `rows` that can be read ([`JobStore::unfinished`]). Each other one
/// is left out and logged: one such job must not keep the whole listing from being read, and
/// it will not run as it is (the lease fails it the first time it meets it,
/// [`set_aside_reason`]).
pub(crate) fn readable_unfinished<E>(
    rows: impl IntoIterator<Item = Result<Result<JobRecord, UnreadableJob>, E>>,
) -> Result<Vec<JobRecord>, E> {
    let listing = JobListing::of(rows)?;
    for job in &listing.unreadable {
        tracing::error!(
            job = job.id,
            "journal: job {} is left out of the unfinished jobs: its record cannot be read ({})",
            job.id,
            job.reason
        );
    }
    Ok(listing.jobs)
}

/// The next lease of [`JobStore::complete_and_lease_next`]: one that failed is logged and
/// counts as nothing taken (the job before it has ended all the same; the worker asks again).
pub(crate) fn nothing_taken_if_failed(
    next: Result<Option<Leased>, JournalError>,
) -> Option<Leased> {
    next.unwrap_or_else(|e| {
        tracing::warn!("journal: taking the next job: {}", crate::report::chain(&e));
        None
    })
}

/// A duration in milliseconds, saturating (a lease of `u64::MAX` seconds must not wrap).
pub fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Jobs: the queue, leases and their fenced outcomes.
#[async_trait::async_trait]
pub trait JobStore: Send + Sync {
    /// Records a new job, or returns the existing one with the same source and idempotency key.
    /// The bool is true when the job is new. Wakes a worker.
    async fn enqueue(&self, new: NewJob<'_>) -> Result<(JobRecord, bool), JournalError>;

    /// Takes up to one due job — queued or pending with `next_run_at` passed, or running with an
    /// expired lease — for `lease_for`, under a fresh lease token. Counts an attempt.
    async fn lease_next(&self, lease_for: Duration) -> Result<Option<Leased>, JournalError>;

    /// Extends `lease` to `lease_for` from now. False when the lease was lost.
    async fn renew(&self, lease: &Lease, lease_for: Duration) -> Result<bool, JournalError>;

    /// Ends a leased job successfully: outbox row, ledger changes and state in one transaction.
    /// False (and nothing changed) when `lease` no longer holds the job.
    async fn complete(&self, lease: &Lease, done: Completion<'_>) -> Result<bool, JournalError>;

    /// [`Self::complete`], then [`Self::lease_next`] for `lease_for`: what a worker does
    /// between two jobs. A journal whose writes queue behind one writer (SQLite) does both in
    /// one write, saving a round trip to it per job; the default does them in turn. The job
    /// ends as `complete` would end it whatever becomes of the lease: a lease that fails is
    /// `None` (nothing taken), as is an empty queue, and the caller asks again.
    async fn complete_and_lease_next(
        &self,
        lease: &Lease,
        done: Completion<'_>,
        lease_for: Duration,
    ) -> Result<(bool, Option<Leased>), JournalError> {
        let kept = self.complete(lease, done).await?;
        Ok((
            kept,
            nothing_taken_if_failed(self.lease_next(lease_for).await),
        ))
    }

    /// Puts a leased job back in the queue until `at` (unix ms). `uses_attempt` false when the
    /// job only waits (for a backend to be loaded or to leave quarantine).
    async fn requeue(
        &self,
        lease: &Lease,
        backend: Option<&str>,
        error: &str,
        at: i64,
        uses_attempt: bool,
    ) -> Result<bool, JournalError>;

    /// Parks a leased job as pending at the CA until `at`; a poll does not use up an attempt.
    async fn park(
        &self,
        lease: &Lease,
        backend: &str,
        poll_token: &str,
        message: &str,
        at: i64,
    ) -> Result<bool, JournalError>;

    /// Ends a leased job as [`JobState::Failed`] or [`JobState::Dead`] with the reason; with
    /// `request`, the stored request is replaced (secrets erased when the job ends).
    async fn end(
        &self,
        lease: &Lease,
        state: JobState,
        backend: Option<&str>,
        error: &str,
        request: Option<&serde_json::Value>,
    ) -> Result<bool, JournalError>;

    /// At start: the jobs this instance held when it stopped are due again now. Leases other
    /// instances hold are left alone; they expire on their own if their holder is gone.
    async fn release_held(&self) -> Result<usize, JournalError>;

    /// When the next job becomes due, if any (unix ms).
    async fn next_due(&self) -> Result<Option<i64>, JournalError>;

    /// Returns when work may have arrived (a job was enqueued or retried), or after `max`; on a
    /// journal whose notifications can be missed, after its poll interval at the latest.
    async fn wait_for_work(&self, max: Duration);

    /// Returns when work may have arrived, or after `max`, whatever the poll interval: for the
    /// idle workers that leave polling to one of them (see `jobs::scheduler`).
    async fn wait_for_notice(&self, max: Duration);

    /// An operator's retry of a failed or dead job: attempts start over.
    async fn retry(&self, id: &str) -> Result<JobRecord, JournalError>;

    /// One job.
    async fn get(&self, id: &str) -> Result<JobRecord, JournalError>;

    /// The job a source's idempotency key names, if any.
    async fn find(
        &self,
        source: &str,
        idempotency_key: &str,
    ) -> Result<Option<JobRecord>, JournalError>;

    /// Jobs, newest first, optionally in one state. A row that cannot be read is listed
    /// apart ([`JobListing::unreadable`]) rather than fail the listing: an operator must see
    /// the jobs beside it, and it too.
    async fn list(&self, state: Option<JobState>, limit: u32) -> Result<JobListing, JournalError>;

    /// Every job not yet ended (queued, running or pending), read in one snapshot: a job
    /// moving between those states while it is read is seen once, never missed, which
    /// separate listings per state cannot promise. A job whose record cannot be read is left
    /// out and logged ([`readable_unfinished`]): it will not run as it is (the next lease fails it), so
    /// nothing that checks what is unfinished need wait for it.
    async fn unfinished(&self) -> Result<Vec<JobRecord>, JournalError>;

    /// How many jobs are in each state (states with none are left out). A state this version
    /// does not know (a hand edit, a newer certconn) is not counted rather than fail the
    /// count: health, metrics and a version on trial read it. `list` shows such a job apart.
    async fn counts(&self) -> Result<Vec<(JobState, i64)>, JournalError>;

    /// From now on, take only jobs that one of `backends` may run (its route names one; a job
    /// pending at a CA, only when that CA's backend is among them); `None`: any job. An
    /// instance of a fleet serves the backends it can reach, so a CA reachable from one site
    /// need not be reachable from every one.
    fn serve_only(&self, backends: Option<&[String]>);

    /// Waits until job `id` is settled — ended, or pending at its CA — or `max` passed, and
    /// returns it as it is then. A source that answers in-line (SCEP) waits here instead of
    /// polling.
    async fn wait_settled(&self, id: &str, max: Duration) -> Result<JobRecord, JournalError>;
}

/// What a source still waits for ([`Outbox::backlog`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Backlog {
    /// Jobs queued, running or pending at their CA.
    pub unfinished: u64,
    /// Jobs that ended and whose outcome has not reached the source.
    pub owed: u64,
}

/// The results of finished jobs.
#[async_trait::async_trait]
pub trait Outbox: Send + Sync {
    /// A finished job's result. The PFX password, if still held, is returned this once and
    /// erased in the same transaction.
    async fn take_result(&self, id: &str) -> Result<Option<StoredResult>, JournalError>;

    /// A finished job's result, without its password and without handing anything out: what
    /// a listing may show.
    async fn peek_result(&self, id: &str) -> Result<Option<String>, JournalError>;

    /// Jobs from `source` that ended (succeeded, failed or dead) and whose outcome has not
    /// reached the source yet, oldest first: what a source that reports back (the upstream
    /// service, Intune's revocations) still owes.
    async fn undelivered(&self, source: &str, limit: u32)
        -> Result<Vec<OwedOutcome>, JournalError>;

    /// Records that job `id`'s outcome reached its source. An operator's retry of the job
    /// clears it, so that the new outcome is delivered too.
    async fn mark_delivered(&self, id: &str) -> Result<(), JournalError>;

    /// Removes up to `limit` stored results (the PFX, the certificates, a password not yet
    /// handed out) of jobs that ended before `ended_before` (Unix ms), oldest first; a result
    /// still owed to one of the `owed_to` sources ([`Self::undelivered`]) stays. The job and its
    /// ledger entry stay too. Returns how many were removed. See [`retention`].
    async fn remove_results(
        &self,
        ended_before: i64,
        owed_to: &[&str],
        limit: u32,
    ) -> Result<u64, JournalError>;

    /// Removes up to `limit` jobs that ended before `ended_before` (Unix ms), oldest first,
    /// each with nothing left to hand out: its result is removed already
    /// ([`Self::remove_results`]) and its outcome is not owed to one of the `owed_to` sources.
    /// Their certificates stay in the ledger, naming the job. Returns how many were removed.
    /// See [`retention`].
    async fn remove_jobs(
        &self,
        ended_before: i64,
        owed_to: &[&str],
        limit: u32,
    ) -> Result<u64, JournalError>;

    /// A source's backlog: its jobs not yet ended, and its ended jobs whose outcome it has not
    /// taken yet.
    async fn backlog(&self, source: &str) -> Result<Backlog, JournalError>;

    /// Ticks after every change of a job's state made through this journal, so that a source
    /// reporting outcomes waits on it instead of polling. Changes made by other processes
    /// sharing the journal do not tick it: poll now and then as well.
    fn changes(&self) -> tokio::sync::watch::Receiver<u64>;
}

/// The certificates issued and revoked through certconn.
#[async_trait::async_trait]
pub trait Ledger: Send + Sync {
    /// The certificate with this serial (lowercase hex, no sign padding), if certconn issued it.
    async fn certificate(&self, serial: &str) -> Result<Option<LedgerEntry>, JournalError>;
}

/// The ledger as administrators and relying parties see it: listings, the revocations a CRL
/// lists, CRL numbers, and audited reason changes. Separate from [`Ledger`] so that the job
/// steps, which only look a serial up, depend on no more than that.
#[async_trait::async_trait]
pub trait RevocationLedger: Ledger {
    /// The certificates `query` selects, soonest expiry first.
    async fn certificates(&self, query: &LedgerQuery) -> Result<Vec<LedgerEntry>, JournalError>;

    /// The revoked certificates of `issuer_der` (a DER Name) that expire at or after
    /// `expiring_from` (unix seconds), oldest revocation first: a CRL. The ledger keeps every
    /// revocation; a CRL need not list certificates long expired (RFC 5280, 5.1.2.6), and one
    /// that listed them all would grow with every revocation for the life of the CA.
    async fn revocations(
        &self,
        issuer_der: &[u8],
        expiring_from: i64,
    ) -> Result<Vec<RevokedSerial>, JournalError>;

    /// A cheap summary of `issuer_der`'s revocations that changes whenever one is made or
    /// changed (a certificate that leaves the CRL by expiring leaves it at the next refresh).
    async fn revocation_mark(&self, issuer_der: &[u8]) -> Result<RevocationMark, JournalError>;

    /// The next cRLNumber of `ca`: one more than the last one handed out, durable before it is
    /// returned, so numbers only grow even across crashes (a number may be skipped, never reused).
    async fn next_crl_number(&self, ca: &str) -> Result<u64, JournalError>;

    /// Changes the reason of a revoked certificate, recording who did it. Fails with
    /// [`JournalError::NotRevoked`] when the serial is not a revoked certificate of `backend`.
    async fn change_reason(&self, change: &ReasonChange) -> Result<(), JournalError>;

    /// The reason changes, newest first.
    async fn reason_changes(&self, limit: usize) -> Result<Vec<ReasonChange>, JournalError>;
}

/// SCEP one-time challenge passwords, kept only as digests.
#[async_trait::async_trait]
pub trait ChallengeStore: Send + Sync {
    /// Records a challenge digest valid until `expires_at` (unix ms).
    async fn add_challenge(&self, digest: &str, expires_at: i64) -> Result<(), JournalError>;
    /// Uses up a challenge: true only the first time, and only before it expires.
    async fn consume_challenge(&self, digest: &str) -> Result<bool, JournalError>;
}

/// Values that must not be accepted twice (SCEP senderNonces), for as long as they are kept.
#[async_trait::async_trait]
pub trait ReplayGuard: Send + Sync {
    /// True the first time `value` is seen in `scope` within `keep_for`; false for a replay.
    async fn first_use(
        &self,
        scope: &str,
        value: &[u8],
        keep_for: Duration,
    ) -> Result<bool, JournalError>;
}

/// The chained record of every signature a CA key makes (see [`trail`]).
#[async_trait::async_trait]
pub trait SignatureTrail: Send + Sync {
    /// Records `signature` as the next entry of the chain, durably, before the signature is
    /// made. A certificate serial its issuer already used for another certificate is refused
    /// with [`JournalError::SerialReused`] and nothing is recorded; the same certificate again
    /// (the same TBSCertificate hash: a retried job) returns the entry already there.
    async fn append_signature(
        &self,
        signature: &NewSignature,
    ) -> Result<SignatureRecord, JournalError>;

    /// Up to `limit` entries after `after_seq`, oldest first.
    async fn signatures(
        &self,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<SignatureRecord>, JournalError>;
}

/// The instances sharing the journal: each reports itself now and then, so that any of them
/// can show the fleet, its versions and who has gone quiet.
#[async_trait::async_trait]
pub trait InstanceRegistry: Send + Sync {
    /// Records `me` (its `last_seen` is the journal's clock now; its `started_at` is kept
    /// from its first report since `me.started_at`).
    async fn report_instance(&self, me: &InstanceRecord) -> Result<(), JournalError>;

    /// Every instance that has reported, by id, and the journal's clock now (unix ms), to
    /// tell how long ago each was seen.
    async fn instances(&self) -> Result<(Vec<InstanceRecord>, i64), JournalError>;

    /// Forgets instance `id` (decommissioned); false when it was not there.
    async fn forget_instance(&self, id: &str) -> Result<bool, JournalError>;

    /// Records an operator's decision (`action` on `subject`, taken on instance `made_by`) for
    /// the other instances to follow; its sequence number.
    async fn record_decision(
        &self,
        subject: &str,
        action: &str,
        made_by: &str,
    ) -> Result<i64, JournalError>;

    /// The decisions after `seq`, oldest first.
    async fn decisions_after(&self, seq: i64) -> Result<Vec<FleetDecision>, JournalError>;
}

/// Keys sealed under the custody KEK that every instance of a fleet holds: the device keys of
/// jobs pending at a CA, so that any instance can finish such a job. The journal stores bytes
/// it cannot open.
#[async_trait::async_trait]
pub trait SharedKeys: Send + Sync {
    /// Stores (or replaces) the sealed key `name`.
    async fn put_shared_key(&self, name: &str, sealed: &[u8]) -> Result<(), JournalError>;
    /// The sealed key `name`, if stored.
    async fn shared_key(&self, name: &str) -> Result<Option<Vec<u8>>, JournalError>;
    /// Removes the sealed key `name`; missing is not an error.
    async fn remove_shared_key(&self, name: &str) -> Result<(), JournalError>;
}

/// All of it: what the composition root opens and hands out in parts.
pub trait Journal:
    JobStore
    + Outbox
    + RevocationLedger
    + ChallengeStore
    + ReplayGuard
    + SignatureTrail
    + InstanceRegistry
    + SharedKeys
{
    /// The schema version in use.
    fn schema_version(&self) -> i64;
    /// Where it is, for the log and status (never a password).
    fn location(&self) -> String;
}

/// A password the outbox holds until its one reader takes it.
pub type Password = crate::secret::SecretString;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_sort_by_creation_time_and_stay_unguessable() {
        let later_but_smaller_random = job_id_at(1_000_001, &"0".repeat(20));
        let earlier = job_id_at(1_000_000, &"f".repeat(20));
        assert!(earlier < later_but_smaller_random);
        assert_eq!(earlier, format!("0000000f4240{}", "f".repeat(20)));
        let (a, b) = (new_job_id().unwrap(), new_job_id().unwrap());
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()), "{a}");
        assert_ne!(a[12..], b[12..], "80 fresh random bits each");
        let now = u64::from_str_radix(&a[..12], 16).unwrap();
        assert!(
            now.abs_diff(u64::try_from(now_ms()).unwrap()) < 60_000,
            "{a}"
        );
    }
}
