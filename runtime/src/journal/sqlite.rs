//! The journal on SQLite: the embedded default. WAL, `synchronous = FULL` (a job written before
//! it is acknowledged survives a power loss), one writer connection and a few read connections
//! ([`super::readers`]). The writer lives on its own thread and commits the writes of every worker waiting at that
//! moment together, one fsync for all of them ([`super::group_commit`]); reads run on tokio's
//! blocking pool. No fsync ever stalls an async thread. Statements are prepared once per
//! connection and cached.
//!
//! One process owns a data directory (its lock file), so "this instance" is the data directory's
//! instance id; a lease is still fenced per lease, because two workers of one process can hold
//! the same job one after the other.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};
use tokio::sync::{watch, Notify};

use super::checkpoint::WalCheckpoints;
use super::group_commit::GroupCommit;
use super::readers::{Reader, Readers, READERS};
use super::record::*;
use super::schema::{self, MIGRATIONS};
use super::trail::{self, NewSignature, SignatureRecord, SignedKind};
use super::Password;
use super::{
    millis, new_job_id, now_ms, random_hex, Backlog, ChallengeStore, InstanceRegistry, JobStore,
    Journal, JournalError, Ledger, Outbox, ReplayGuard, RevocationLedger, SharedKeys,
    SignatureTrail,
};

impl From<rusqlite::Error> for JournalError {
    fn from(e: rusqlite::Error) -> Self {
        JournalError::Backend(Box::new(e))
    }
}

/// The journal in one SQLite file.
#[derive(Clone)]
pub struct SqliteJournal {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// The one writer connection, on its own thread: see [`super::group_commit`].
    writer: GroupCommit,
    /// The read connections ([`super::readers`]).
    readers: Readers,
    /// This instance: the owner of the leases it takes.
    owner: String,
    version: i64,
    /// The backends this instance runs jobs for, as a JSON array (`None`: every one).
    serves: std::sync::RwLock<Option<String>>,
    /// A job was enqueued or retried: a worker should look.
    work: Notify,
    /// Who waits for which job ([`JobStore::wait_settled`]), and the change counter.
    waiters: super::waiters::JobWaiters,
}

impl std::fmt::Debug for SqliteJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteJournal")
            .field("path", &self.inner.path)
            .field("owner", &self.inner.owner)
            .finish_non_exhaustive()
    }
}

/// A column whose text is not one of the values certconn writes: the journal was edited or is
/// corrupt, which must not be mistaken for a real state.
fn unknown_value(column: &str, value: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        0,
        rusqlite::types::Type::Text,
        format!("unknown {column} {value:?}").into(),
    )
}

fn job_from_row(row: &Row<'_>) -> rusqlite::Result<(JobRecord, String)> {
    let kind: String = row.get("kind")?;
    let state: String = row.get("state")?;
    let kind = JobKind::parse(&kind).ok_or_else(|| unknown_value("job kind", &kind))?;
    let state = JobState::parse(&state).ok_or_else(|| unknown_value("job state", &state))?;
    Ok((
        JobRecord {
            id: row.get("id")?,
            source: row.get("source")?,
            idempotency_key: row.get("idempotency_key")?,
            kind,
            state,
            request: serde_json::Value::Null,
            attempts: row.get("attempts")?,
            backend: row.get("backend")?,
            last_error: row.get("last_error")?,
            created_at: row.get("created_at")?,
            updated_at: row.get("updated_at")?,
            next_run_at: row.get("next_run_at")?,
            poll_token: row.get("poll_token")?,
        },
        row.get("request")?,
    ))
}

fn finish_record((mut job, request): (JobRecord, String)) -> Result<JobRecord, JournalError> {
    job.request = serde_json::from_str(&request).map_err(|e| JournalError::Corrupt {
        id: job.id.clone(),
        reason: e.to_string(),
    })?;
    Ok(job)
}

/// Job `row` as a listing reads it: the record, or what can be read of a row that cannot
/// (an unknown kind or state, a request that is not JSON).
fn job_or_unreadable(row: &Row<'_>) -> rusqlite::Result<Result<JobRecord, UnreadableJob>> {
    let reason = match job_from_row(row).map(finish_record) {
        Ok(Ok(job)) => return Ok(Ok(job)),
        Ok(Err(JournalError::Corrupt { reason, .. })) => reason,
        Ok(Err(other)) => other.to_string(),
        // An unknown kind or state ([`unknown_value`]): its own words, not rusqlite's frame.
        Err(rusqlite::Error::FromSqlConversionFailure(_, _, why)) => why.to_string(),
        Err(e) => e.to_string(),
    };
    Ok(Err(UnreadableJob {
        id: row.get("id")?,
        source: row.get("source")?,
        state: row.get("state")?,
        last_error: row.get("last_error")?,
        updated_at: row.get("updated_at")?,
        reason,
    }))
}

/// What an enqueue wrote. A new job's row is exactly what was inserted, so it is not read back
/// (the writer thread is the journal's bottleneck: the read and the request's JSON parse were
/// a third of the enqueue's time on it); an existing one (the same idempotency key) is read.
enum Enqueued {
    New { id: String, at: i64 },
    Existing((JobRecord, String)),
}

/// A source's outcomes not yet delivered to it, oldest first: walks `jobs_undelivered` (its
/// predicate spelled as the index's).
const UNDELIVERED: &str = concat!(
    "SELECT id, idempotency_key, state, last_error FROM jobs WHERE source = ?1 AND ",
    schema::sqlite_owed!(),
    " ORDER BY updated_at, id LIMIT ?2"
);

/// Statements kept prepared per connection: more than the journal has distinct ones.
const STATEMENT_CACHE: usize = 96;

/// `temp_store = MEMORY`: the statement journals of a group commit's savepoints stay in memory.
/// On disk they were a temporary file opened, written and dropped every few commits (about one
/// per two jobs under load), leaving page images in freed disk blocks (an outbox page can hold
/// a password until it is claimed).
const PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
     PRAGMA foreign_keys = ON; PRAGMA secure_delete = ON; PRAGMA busy_timeout = 5000; \
     PRAGMA temp_store = MEMORY;";

/// The schema version of the journal at `path`, read without changing anything; `None` when
/// there is no journal there yet.
pub fn schema_version_of(path: &Path) -> Result<Option<i64>, JournalError> {
    if !path.exists() {
        return Ok(None);
    }
    let open_err = |e: rusqlite::Error| JournalError::Open {
        path: path.to_owned(),
        source: Box::new(e),
    };
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(open_err)?;
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
        .map(Some)
        .map_err(open_err)
}

/// Brings the schema of `conn` up to [`schema::CURRENT`], one transaction per migration.
fn migrate(conn: &mut Connection) -> Result<i64, JournalError> {
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > schema::CURRENT {
            return Err(JournalError::TooNew {
                found: version,
                supported: schema::CURRENT,
            });
        }
        let Some(next) = MIGRATIONS.iter().find(|m| m.version == version + 1) else {
            return Ok(version);
        };
        tx.execute_batch(next.sql)?;
        tx.execute_batch(&format!("PRAGMA user_version = {}", next.version))?;
        tx.commit()?;
        tracing::info!(
            version = next.version,
            "journal schema migrated: {}",
            next.description
        );
    }
}

impl SqliteJournal {
    /// Opens (creating) the journal at `path` for the instance `owner`, migrating its schema.
    pub fn open(path: &Path, owner: &str) -> Result<Self, JournalError> {
        let open_err = |e: JournalError| match e {
            JournalError::Backend(source) => JournalError::Open {
                path: path.to_owned(),
                source,
            },
            other => other,
        };
        let connect = || -> Result<Connection, JournalError> {
            let conn = Connection::open(path)?;
            conn.execute_batch(PRAGMAS)?;
            conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
            Ok(conn)
        };
        let mut writer = connect().map_err(open_err)?;
        let version = migrate(&mut writer).map_err(open_err)?;
        let readers = (0..READERS)
            .map(|_| {
                let reader = connect()?;
                reader.execute_batch("PRAGMA query_only = ON;")?;
                Ok(reader)
            })
            .collect::<Result<Vec<_>, JournalError>>()
            .map_err(open_err)?;
        let checkpoints =
            WalCheckpoints::in_background(connect().map_err(open_err)?, owner).map_err(open_err)?;
        Ok(Self {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                writer: GroupCommit::start(writer, owner, checkpoints).map_err(open_err)?,
                readers: Readers::new(readers),
                owner: owner.to_owned(),
                version,
                serves: std::sync::RwLock::new(None),
                work: Notify::new(),
                waiters: Default::default(),
            }),
        })
    }

    /// Runs `f` on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, JournalError> + Send + 'static,
    ) -> Result<T, JournalError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|_| JournalError::Closed)?
    }

    /// Runs `f` on the writer connection, in the next group commit (`super::group_commit`): it
    /// returns once the write is durable.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, JournalError> + Send + 'static,
    ) -> Result<T, JournalError> {
        self.inner.writer.write(f).await
    }

    /// The lease [`JobStore::lease_next`] takes, ready to run in a write.
    fn lease_query(&self, lease_for: Duration) -> Result<LeaseQuery, JournalError> {
        Ok(LeaseQuery {
            token: random_hex(16)?,
            serves: self
                .inner
                .serves
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            owner: self.inner.owner.clone(),
            lease_for,
        })
    }

    /// The job a committed lease took, after telling the waiters of it and of the jobs it
    /// failed on the way.
    fn leased(&self, outcome: LeaseOutcome) -> Option<Leased> {
        for id in &outcome.set_aside {
            self.inner.waiters.job_changed(id);
        }
        if let Some(leased) = &outcome.leased {
            self.inner.waiters.job_changed(&leased.job.id);
        }
        outcome.leased
    }

    /// Runs a fenced state change of a leased job; notes the change for waiters.
    async fn fenced(
        &self,
        sql: &'static str,
        lease: &Lease,
        values: Vec<rusqlite::types::Value>,
    ) -> Result<bool, JournalError> {
        let (id, token) = (lease.job_id.clone(), lease.token.clone());
        let changed = self
            .write(move |conn| {
                let mut all: Vec<rusqlite::types::Value> = vec![id.into(), token.into()];
                all.extend(values);
                Ok(conn
                    .prepare_cached(sql)?
                    .execute(rusqlite::params_from_iter(all))?
                    == 1)
            })
            .await?;
        if changed {
            self.inner.waiters.job_changed(&lease.job_id);
        }
        Ok(changed)
    }
}

/// A source's backlog: its jobs not yet ended, counted from the due index (`+source` keeps
/// SQLite off the index of every job of the source), and its outcomes it has not taken, from
/// `jobs_undelivered`. Each count reads only the jobs it counts, where one pass over every job
/// of the source took 300 ms with a million upstream jobs, at every `/v1/health`.
const BACKLOG: &str = concat!(
    "SELECT
         (SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'running', 'pending') AND +source = ?1),
         (SELECT COUNT(*) FROM jobs WHERE source = ?1 AND ",
    schema::sqlite_owed!(),
    ")"
);

/// Up to `?3` jobs that ended before `?1` with nothing left to hand out (no stored result, no
/// outcome owed to a source of the JSON array `?2`), oldest first. It walks `jobs_created` from
/// the oldest job and stops at the first made after the cutoff, so a sweep reads what it
/// removes and the few old jobs that must stay (owed, or not ended). `+state` keeps SQLite off
/// the state indexes, through which it read and sorted every ended job, on the writer.
const REMOVABLE_JOBS: &str = "SELECT id FROM jobs
     WHERE created_at < ?1 AND updated_at < ?1
       AND (+state = 'succeeded' OR +state = 'failed' OR +state = 'dead')
       AND NOT (delivered_at IS NULL AND source IN (SELECT value FROM json_each(?2)))
       AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.job_id = jobs.id)
     ORDER BY created_at LIMIT ?3";

/// The newest `?1` jobs in `state` (`None`: every job), each query walking an index in created
/// order and stopping there (schema 9), where one query for all had SQLite sort every job
/// (120–170 ms with a million jobs in the journal, each holding up the other reads then).
///
/// The state is written in the query, not bound: SQLite uses a partial index only for a
/// condition it can see implies the index's. A succeeded job is found by walking every job
/// newest first (`+state` keeps SQLite off the due index, whose rows of one state it would
/// fetch and sort): nearly every job succeeds. A job not yet ended is one of the queue's,
/// fetched from the due index and sorted.
fn list_query(state: Option<JobState>) -> &'static str {
    macro_rules! newest {
        ($where:literal) => {
            concat!(
                "SELECT * FROM jobs ",
                $where,
                " ORDER BY created_at DESC, id LIMIT ?1"
            )
        };
    }
    match state {
        None => newest!(""),
        Some(JobState::Succeeded) => newest!("WHERE +state = 'succeeded'"),
        Some(JobState::Failed) => newest!("WHERE state = 'failed'"),
        Some(JobState::Dead) => newest!("WHERE state = 'dead'"),
        Some(JobState::Queued) => newest!("WHERE state = 'queued'"),
        Some(JobState::Pending) => newest!("WHERE state = 'pending'"),
        Some(JobState::Running) => newest!("WHERE state = 'running'"),
    }
}

/// The jobs this instance may take, with `?2` the JSON array of backends it serves (`NULL`:
/// every one): a job routed to one of them, and a pending job only at a backend it serves.
macro_rules! serves_route {
    () => {
        r#"(?2 IS NULL
             OR ((route IS NULL OR EXISTS (
                    SELECT 1 FROM json_each(route) r
                    WHERE r.value IN (SELECT value FROM json_each(?2))))
                 AND (poll_token IS NULL OR backend IS NULL
                      OR backend IN (SELECT value FROM json_each(?2)))))"#
    };
}

impl Inner {
    fn reader(&self) -> Reader<'_> {
        self.readers.get()
    }

    fn get(&self, id: &str) -> Result<JobRecord, JournalError> {
        let row = self
            .reader()
            .query_row(
                "SELECT * FROM jobs WHERE id = ?1",
                params![id],
                job_from_row,
            )
            .optional()?
            .ok_or_else(|| JournalError::NotFound(id.into()))?;
        finish_record(row)
    }
}

/// The job a lease takes: of the first queued job that is due, the first pending job whose poll
/// time has come and the first running job whose lease ran out (each among those this instance
/// may take), the one due earliest. `?1` is now, `?2` the backends it serves.
///
/// Three probes, each walking `jobs_due` in due order for one state and stopping at the first
/// job it may take. One `OR` of them would gather every due job and sort them, a cost that
/// grows with the queue (0.7 ms a lease with 3,000 queued). One probe per state, and `MIN`
/// rather than `ORDER BY` over the three, leave SQLite nothing to sort: `state IN ('queued',
/// 'pending')` and an outer `ORDER BY` made it fill and drop a temporary B-tree on every lease,
/// about a third of the lease's time on the writer thread.
const NEXT_DUE_JOB: &str = concat!(
    r##"SELECT * FROM jobs WHERE id = (SELECT id FROM (SELECT id, MIN(next_run_at) FROM (
        SELECT * FROM (
            SELECT id, next_run_at FROM jobs
            WHERE state = 'queued' AND next_run_at <= ?1 AND "##,
    serves_route!(),
    r##"
            ORDER BY next_run_at LIMIT 1)
        UNION ALL
        SELECT * FROM (
            SELECT id, next_run_at FROM jobs
            WHERE state = 'pending' AND next_run_at <= ?1 AND "##,
    serves_route!(),
    r##"
            ORDER BY next_run_at LIMIT 1)
        UNION ALL
        SELECT * FROM (
            SELECT id, next_run_at FROM jobs
            WHERE state = 'running' AND lease_until < ?1 AND "##,
    serves_route!(),
    r##"
            ORDER BY next_run_at LIMIT 1)
     )))"##
);

/// A lease to take, with what it needs from the journal's state, run inside a write.
struct LeaseQuery {
    token: String,
    serves: Option<String>,
    owner: String,
    lease_for: Duration,
}

/// What a lease did: the job it took, and the jobs it failed on the way because their records
/// cannot be read (`super::set_aside_reason`), whose waiters must hear of it.
#[derive(Default)]
struct LeaseOutcome {
    leased: Option<Leased>,
    set_aside: Vec<String>,
}

impl LeaseQuery {
    fn run(self, conn: &Connection) -> Result<LeaseOutcome, JournalError> {
        let Self {
            token,
            serves,
            owner,
            lease_for,
        } = self;
        let now = now_ms();
        let until = now.saturating_add(millis(lease_for));
        let mut outcome = LeaseOutcome::default();
        for _ in 0..=super::UNREADABLE_PER_LEASE {
            // See `NEXT_DUE_JOB`. The job is read, then leased by its id, not with `UPDATE …
            // RETURNING`, which buffers the returned row in a temporary table. Both statements
            // run in the writer's one transaction, so no other write comes between them.
            let row = conn
                .prepare_cached(NEXT_DUE_JOB)?
                .query_row(params![now, serves], |row| {
                    let id: String = row.get("id")?;
                    Ok(job_from_row(row).map_err(|e| (id, e.to_string())))
                })
                .optional()?;
            let Some(row) = row else {
                return Ok(outcome);
            };
            let read = match row {
                Ok(read) => finish_record(read),
                Err((id, reason)) => Err(JournalError::Corrupt { id, reason }),
            };
            match read {
                Ok(job) => {
                    outcome.leased = Some(lease(conn, job, &owner, token, until, now)?);
                    return Ok(outcome);
                }
                Err(JournalError::Corrupt { id, reason }) => {
                    set_aside(conn, &id, &reason, now)?;
                    outcome.set_aside.push(id);
                }
                Err(other) => return Err(other),
            }
        }
        Ok(outcome)
    }
}

/// Fails job `id`, whose record cannot be read, so that the lease can go on to the next.
fn set_aside(conn: &Connection, id: &str, reason: &str, now: i64) -> Result<(), JournalError> {
    conn.prepare_cached(
        "UPDATE jobs SET state = 'failed', last_error = ?2, lease_owner = NULL,
                lease_token = NULL, lease_until = NULL, updated_at = ?3
         WHERE id = ?1",
    )?
    .execute(params![id, super::set_aside_reason(id, reason), now])?;
    Ok(())
}

/// Leases `job`, read as due, to `owner` with `token` until `until`.
fn lease(
    conn: &Connection,
    mut job: JobRecord,
    owner: &str,
    token: String,
    until: i64,
    now: i64,
) -> Result<Leased, JournalError> {
    let leased = conn
        .prepare_cached(
            "UPDATE jobs SET state = 'running', lease_owner = ?2, lease_token = ?3,
                    lease_until = ?4, attempts = attempts + 1, updated_at = ?5
             WHERE id = ?1",
        )?
        .execute(params![job.id, owner, token, until, now])?;
    if leased != 1 {
        return Err(JournalError::Backend(
            format!("job {} was found due but could not be leased", job.id).into(),
        ));
    }
    job.state = JobState::Running;
    job.attempts += 1;
    job.updated_at = now;
    Ok(Leased {
        lease: Lease {
            job_id: job.id.clone(),
            token,
        },
        job,
    })
}

/// A [`Completion`] owned, to cross to the writer thread.
struct OwnedCompletion {
    id: String,
    token: String,
    backend: String,
    result: String,
    password: Option<Password>,
    issued: Option<IssuedRecord>,
    revoked: Option<Revocation>,
    request: Option<String>,
}

impl OwnedCompletion {
    fn new(lease: &Lease, done: Completion<'_>) -> Self {
        Self {
            id: lease.job_id.clone(),
            token: lease.token.clone(),
            backend: done.backend.to_owned(),
            result: done.result.to_owned(),
            password: done.password.cloned(),
            issued: done.issued.cloned(),
            revoked: done.revoked.cloned(),
            request: done.request.map(|r| r.to_string()),
        }
    }

    /// The fenced end of the job: false, and nothing changed, when the lease no longer holds it.
    fn run(self, tx: &Connection) -> Result<bool, JournalError> {
        let Self {
            id,
            token,
            backend,
            result,
            password,
            issued,
            revoked,
            request,
        } = self;
        let now = now_ms();
        let changed = tx
            .prepare_cached(
                "UPDATE jobs SET state = 'succeeded', backend = ?3, last_error = NULL, lease_owner = NULL,
                        lease_token = NULL, lease_until = NULL, poll_token = NULL,
                        request = COALESCE(?5, request), updated_at = ?4
                 WHERE id = ?1 AND state = 'running' AND lease_token = ?2",
            )?
            .execute(params![id, token, backend, now, request])?;
        if changed == 0 {
            return Ok(false);
        }
        tx.prepare_cached(
            "INSERT INTO outbox (job_id, result, password, created_at) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![id, result, password.as_deref(), now])?;
        if let Some(c) = issued {
            tx.prepare_cached(
                "INSERT INTO certificates
                     (backend, serial, job_id, issuer, not_after, certificate, backend_version)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                c.backend,
                c.serial,
                id,
                c.issuer_der,
                c.not_after,
                c.certificate_der,
                c.backend_version
            ])?;
        }
        if let Some(r) = revoked {
            tx.prepare_cached(
                "UPDATE certificates SET revoked_at = ?3, revocation_reason = ?4
                 WHERE backend = ?1 AND serial = ?2 AND revoked_at IS NULL",
            )?
            .execute(params![r.backend, r.serial, now, r.reason])?;
        }
        Ok(true)
    }
}

#[async_trait::async_trait]
impl JobStore for SqliteJournal {
    async fn enqueue(&self, new: NewJob<'_>) -> Result<(JobRecord, bool), JournalError> {
        let (source, key, kind) = (
            new.source.to_owned(),
            new.idempotency_key.to_owned(),
            new.kind,
        );
        let request = new.request.to_string();
        let route = new
            .route
            .map(|r| serde_json::Value::from(r.to_vec()).to_string());
        let id = new_job_id()?;
        let written = self.write(move |conn| {
                let now = now_ms();
                let inserted = conn.prepare_cached(
                    "INSERT INTO jobs (id, source, idempotency_key, kind, state, request, route, next_run_at, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, 'queued', ?5, ?7, ?6, ?6, ?6)
                     ON CONFLICT (source, idempotency_key) DO NOTHING")?.execute(
                    params![id, source, key, kind.as_str(), request, now, route],
                )?;
                if inserted == 1 {
                    return Ok(Enqueued::New { id, at: now });
                }
                let row = conn.prepare_cached(
                    "SELECT * FROM jobs WHERE source = ?1 AND idempotency_key = ?2")?.query_row(
                    params![source, key],
                    job_from_row,
                )?;
                Ok(Enqueued::Existing(row))
            })
            .await?;
        match written {
            Enqueued::New { id, at } => {
                self.inner.work.notify_one();
                Ok((JobRecord::queued(id, &new, at), true))
            }
            Enqueued::Existing(row) => Ok((finish_record(row)?, false)),
        }
    }

    async fn lease_next(&self, lease_for: Duration) -> Result<Option<Leased>, JournalError> {
        let lease = self.lease_query(lease_for)?;
        let outcome = self.write(move |conn| lease.run(conn)).await?;
        Ok(self.leased(outcome))
    }

    async fn renew(&self, lease: &Lease, lease_for: Duration) -> Result<bool, JournalError> {
        let until = now_ms().saturating_add(millis(lease_for));
        let (id, token) = (lease.job_id.clone(), lease.token.clone());
        self.write(move |conn| {
            Ok(conn
                .prepare_cached(
                    "UPDATE jobs SET lease_until = ?3
                 WHERE id = ?1 AND lease_token = ?2 AND state = 'running'",
                )?
                .execute(params![id, token, until])?
                == 1)
        })
        .await
    }

    async fn complete(&self, lease: &Lease, done: Completion<'_>) -> Result<bool, JournalError> {
        let completion = OwnedCompletion::new(lease, done);
        let kept = self.write(move |tx| completion.run(tx)).await?;
        if kept {
            self.inner.waiters.job_changed(&lease.job_id);
        }
        Ok(kept)
    }

    async fn complete_and_lease_next(
        &self,
        lease: &Lease,
        done: Completion<'_>,
        lease_for: Duration,
    ) -> Result<(bool, Option<Leased>), JournalError> {
        let completion = OwnedCompletion::new(lease, done);
        let next = self.lease_query(lease_for);
        let (kept, taken) = self
            .write(move |tx| {
                let kept = completion.run(tx)?;
                // A lease that fails leaves the completion standing: SQLite undoes only the
                // failed statement, and the worker asks again on its own.
                let taken = next.and_then(|lease| lease.run(tx));
                Ok((kept, taken))
            })
            .await?;
        if kept {
            self.inner.waiters.job_changed(&lease.job_id);
        }
        let leased = super::nothing_taken_if_failed(taken.map(|outcome| self.leased(outcome)));
        Ok((kept, leased))
    }

    async fn requeue(
        &self,
        lease: &Lease,
        backend: Option<&str>,
        error: &str,
        at: i64,
        uses_attempt: bool,
    ) -> Result<bool, JournalError> {
        self.fenced(
            "UPDATE jobs SET state = 'queued', backend = COALESCE(?3, backend), last_error = ?4,
                    next_run_at = ?5, attempts = attempts - ?6, lease_owner = NULL, lease_token = NULL,
                    lease_until = NULL, updated_at = ?7
             WHERE id = ?1 AND state = 'running' AND lease_token = ?2",
            lease,
            vec![
                backend.map(str::to_owned).into(),
                error.to_owned().into(),
                at.into(),
                i64::from(!uses_attempt).into(),
                now_ms().into(),
            ],
        )
        .await
    }

    async fn park(
        &self,
        lease: &Lease,
        backend: &str,
        poll_token: &str,
        message: &str,
        at: i64,
    ) -> Result<bool, JournalError> {
        self.fenced(
            "UPDATE jobs SET state = 'pending', backend = ?3, poll_token = ?4, last_error = ?5,
                    next_run_at = ?6, attempts = attempts - 1, lease_owner = NULL, lease_token = NULL,
                    lease_until = NULL, updated_at = ?7
             WHERE id = ?1 AND state = 'running' AND lease_token = ?2",
            lease,
            vec![
                backend.to_owned().into(),
                poll_token.to_owned().into(),
                message.to_owned().into(),
                at.into(),
                now_ms().into(),
            ],
        )
        .await
    }

    async fn end(
        &self,
        lease: &Lease,
        state: JobState,
        backend: Option<&str>,
        error: &str,
        request: Option<&serde_json::Value>,
    ) -> Result<bool, JournalError> {
        debug_assert!(matches!(state, JobState::Failed | JobState::Dead));
        self.fenced(
            "UPDATE jobs SET state = ?3, backend = COALESCE(?4, backend), last_error = ?5,
                    request = COALESCE(?6, request), lease_owner = NULL, lease_token = NULL,
                    lease_until = NULL, updated_at = ?7
             WHERE id = ?1 AND state = 'running' AND lease_token = ?2",
            lease,
            vec![
                state.as_str().to_owned().into(),
                backend.map(str::to_owned).into(),
                error.to_owned().into(),
                request.map(|r| r.to_string()).into(),
                now_ms().into(),
            ],
        )
        .await
    }

    async fn release_held(&self) -> Result<usize, JournalError> {
        let owner = self.inner.owner.clone();
        let n = self.write(move |conn| {
                Ok(conn.prepare_cached(
                    "UPDATE jobs SET state = 'queued', next_run_at = ?1, lease_owner = NULL, lease_token = NULL,
                            lease_until = NULL, updated_at = ?1
                     WHERE state = 'running' AND lease_owner = ?2")?.execute(
                    params![now_ms(), owner],
                )?)
            })
            .await?;
        if n > 0 {
            self.inner.waiters.all_changed();
        }
        Ok(n)
    }

    async fn next_due(&self) -> Result<Option<i64>, JournalError> {
        self.blocking(|inner| {
            Ok(inner.reader().query_row(
                "SELECT MIN(t) FROM (
                    SELECT MIN(next_run_at) AS t FROM jobs WHERE state IN ('queued', 'pending')
                    UNION ALL SELECT MIN(lease_until) FROM jobs WHERE state = 'running')",
                [],
                |r| r.get::<_, Option<i64>>(0),
            )?)
        })
        .await
    }

    async fn wait_for_work(&self, max: Duration) {
        self.wait_for_notice(max).await;
    }

    async fn wait_for_notice(&self, max: Duration) {
        let _ = tokio::time::timeout(max, self.inner.work.notified()).await;
    }

    async fn retry(&self, id: &str) -> Result<JobRecord, JournalError> {
        let id = id.to_owned();
        let target = id.clone();
        self.write(move |conn| {
                let state: Option<String> = conn
                    .prepare_cached("SELECT state FROM jobs WHERE id = ?1")?.query_row( params![id], |r| {
                        r.get(0)
                    })
                    .optional()?;
                let state = state.ok_or_else(|| JournalError::NotFound(id.clone()))?;
                let changed = conn.prepare_cached(
                    "UPDATE jobs SET state = 'queued', attempts = 0, next_run_at = ?2, updated_at = ?2,
                         delivered_at = NULL
                     WHERE id = ?1 AND state IN ('failed', 'dead')")?.execute(
                    params![id, now_ms()],
                )?;
                if changed == 0 {
                    return Err(JournalError::NotRetryable {
                        id: id.clone(),
                        state: JobState::parse(&state).map_or("in an unknown state", JobState::as_str),
                    });
                }
                Ok(())
            })
            .await?;
        self.inner.waiters.job_changed(&target);
        self.inner.work.notify_one();
        self.get(&target).await
    }

    async fn get(&self, id: &str) -> Result<JobRecord, JournalError> {
        let id = id.to_owned();
        self.blocking(move |inner| inner.get(&id)).await
    }

    async fn find(
        &self,
        source: &str,
        idempotency_key: &str,
    ) -> Result<Option<JobRecord>, JournalError> {
        let (source, key) = (source.to_owned(), idempotency_key.to_owned());
        self.blocking(move |inner| {
            let row = inner
                .reader()
                .query_row(
                    "SELECT * FROM jobs WHERE source = ?1 AND idempotency_key = ?2",
                    params![source, key],
                    job_from_row,
                )
                .optional()?;
            row.map(finish_record).transpose()
        })
        .await
    }

    async fn list(&self, state: Option<JobState>, limit: u32) -> Result<JobListing, JournalError> {
        self.blocking(move |inner| {
            let conn = inner.reader();
            let mut stmt = conn.prepare_cached(list_query(state))?;
            let rows = stmt.query_map(params![limit], job_or_unreadable)?;
            Ok(JobListing::of(rows)?)
        })
        .await
    }

    async fn unfinished(&self) -> Result<Vec<JobRecord>, JournalError> {
        self.blocking(|inner| {
            let conn = inner.reader();
            let mut stmt = conn.prepare_cached(
                "SELECT * FROM jobs WHERE state IN ('queued', 'running', 'pending') ORDER BY created_at, id",
            )?;
            let rows = stmt.query_map([], job_or_unreadable)?;
            Ok(super::readable_unfinished(rows)?)
        })
        .await
    }

    async fn counts(&self) -> Result<Vec<(JobState, i64)>, JournalError> {
        self.blocking(|inner| {
            let conn = inner.reader();
            let mut stmt = conn
                .prepare_cached("SELECT state, COUNT(*) FROM jobs GROUP BY state ORDER BY state")?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows
                .into_iter()
                .filter_map(|(s, n)| JobState::parse(&s).map(|s| (s, n)))
                .collect())
        })
        .await
    }

    fn serve_only(&self, backends: Option<&[String]>) {
        *self.inner.serves.write().unwrap_or_else(|p| p.into_inner()) =
            backends.map(|b| serde_json::Value::from(b.to_vec()).to_string());
        self.inner.work.notify_waiters();
    }

    async fn wait_settled(&self, id: &str, max: Duration) -> Result<JobRecord, JournalError> {
        // Every change of a job's state goes through this process's writer: no need to look
        // but when told.
        self.inner
            .waiters
            .wait_settled(id, max, None, || self.get(id))
            .await
    }
}

#[async_trait::async_trait]
impl Outbox for SqliteJournal {
    async fn take_result(&self, id: &str) -> Result<Option<StoredResult>, JournalError> {
        let id = id.to_owned();
        self.write(move |tx| {
            let row: Option<(String, Option<String>)> = tx
                .prepare_cached("SELECT result, password FROM outbox WHERE job_id = ?1")?
                .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let Some((result, password)) = row else {
                return Ok(None);
            };
            let password = password.map(Password::from);
            if password.is_some() {
                tx.prepare_cached("UPDATE outbox SET password = NULL WHERE job_id = ?1")?
                    .execute(params![id])?;
            }
            Ok(Some(StoredResult { result, password }))
        })
        .await
    }

    async fn peek_result(&self, id: &str) -> Result<Option<String>, JournalError> {
        let id = id.to_owned();
        self.blocking(move |inner| {
            Ok(inner
                .reader()
                .query_row(
                    "SELECT result FROM outbox WHERE job_id = ?1",
                    params![id],
                    |r| r.get(0),
                )
                .optional()?)
        })
        .await
    }

    async fn undelivered(
        &self,
        source: &str,
        limit: u32,
    ) -> Result<Vec<OwedOutcome>, JournalError> {
        let source = source.to_owned();
        self.blocking(move |inner| {
            let conn = inner.reader();
            let mut stmt = conn.prepare_cached(UNDELIVERED)?;
            let owed = stmt
                .query_map(params![source, limit], |row| {
                    let state: String = row.get("state")?;
                    Ok(OwedOutcome {
                        id: row.get("id")?,
                        idempotency_key: row.get("idempotency_key")?,
                        state: JobState::parse(&state)
                            .ok_or_else(|| unknown_value("job state", &state))?,
                        last_error: row.get("last_error")?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(owed)
        })
        .await
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.inner.waiters.changes()
    }

    async fn backlog(&self, source: &str) -> Result<Backlog, JournalError> {
        let source = source.to_owned();
        self.blocking(move |inner| {
            let (unfinished, owed): (i64, i64) = inner
                .reader()
                .prepare_cached(BACKLOG)?
                .query_row(params![source], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(Backlog {
                unfinished: unfinished.max(0) as u64,
                owed: owed.max(0) as u64,
            })
        })
        .await
    }

    async fn mark_delivered(&self, id: &str) -> Result<(), JournalError> {
        let id = id.to_owned();
        self.write(move |conn| {
            conn.prepare_cached(
                "UPDATE jobs SET delivered_at = ?2 WHERE id = ?1 AND delivered_at IS NULL",
            )?
            .execute(params![id, now_ms()])?;
            Ok(())
        })
        .await
    }

    async fn remove_results(
        &self,
        ended_before: i64,
        owed_to: &[&str],
        limit: u32,
    ) -> Result<u64, JournalError> {
        let owed_to = serde_json::Value::from(owed_to.to_vec()).to_string();
        self.write(move |tx| {
            // Results are stored in the order jobs end, so the walk in rowid order stops at the
            // first one too young: a sweep reads what it removes (and the few results still
            // owed), not the whole outbox, while the writer's other work waits.
            let mut doomed = Vec::new();
            {
                let mut stmt = tx.prepare_cached(
                    "SELECT o.rowid, o.created_at,
                            j.delivered_at IS NULL
                            AND j.source IN (SELECT value FROM json_each(?1))
                     FROM outbox o JOIN jobs j ON j.id = o.job_id
                     ORDER BY o.rowid",
                )?;
                let mut rows = stmt.query(params![owed_to])?;
                while doomed.len() < limit as usize {
                    let Some(row) = rows.next()? else { break };
                    let (rowid, ended, owed): (i64, i64, bool) =
                        (row.get(0)?, row.get(1)?, row.get(2)?);
                    if ended >= ended_before {
                        break;
                    }
                    if !owed {
                        doomed.push(rowid);
                    }
                }
            }
            let mut delete = tx.prepare_cached("DELETE FROM outbox WHERE rowid = ?1")?;
            for rowid in &doomed {
                delete.execute(params![rowid])?;
            }
            Ok(doomed.len() as u64)
        })
        .await
    }

    async fn remove_jobs(
        &self,
        ended_before: i64,
        owed_to: &[&str],
        limit: u32,
    ) -> Result<u64, JournalError> {
        let owed_to = serde_json::Value::from(owed_to.to_vec()).to_string();
        self.write(move |tx| {
            let doomed = tx
                .prepare_cached(REMOVABLE_JOBS)?
                .query_map(params![ended_before, owed_to, limit], |r| {
                    r.get::<_, String>(0)
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let mut delete = tx.prepare_cached("DELETE FROM jobs WHERE id = ?1")?;
            for id in &doomed {
                delete.execute(params![id])?;
            }
            Ok(doomed.len() as u64)
        })
        .await
    }
}

const LEDGER_COLUMNS: &str =
    "backend, serial, job_id, issuer, not_after, certificate, revoked_at, \
     revocation_reason, backend_version";

/// The ledger's listing of `selection`, soonest expiry first, with `?1` the backend and `?2`
/// the issuer (`NULL`: any), `?3` the limit and `?4` the expiry cutoff. Each shape walks an
/// index in expiry order and stops at its limit (schema 11: revoked certificates have an index
/// of their own). One query for every shape, its conditions bound, let SQLite use no index for
/// them: a listing of revoked certificates, or of those expiring soon when few do, read every
/// certificate the ledger holds, which it keeps for ever.
fn ledger_listing(selection: LedgerSelection) -> String {
    let only = match selection {
        LedgerSelection::Every | LedgerSelection::Nothing => "",
        LedgerSelection::Revoked => "revoked_at IS NOT NULL AND",
        LedgerSelection::ExpiringBefore(_) => "not_after < ?4 AND revoked_at IS NULL AND",
    };
    format!(
        "SELECT {LEDGER_COLUMNS} FROM certificates
         WHERE {only} (?1 IS NULL OR backend = ?1) AND (?2 IS NULL OR issuer = ?2)
         ORDER BY not_after, serial LIMIT ?3"
    )
}

fn ledger_entry(r: &Row<'_>) -> rusqlite::Result<LedgerEntry> {
    let revoked_at: Option<i64> = r.get(6)?;
    let reason: Option<String> = r.get(7)?;
    Ok(LedgerEntry {
        backend: r.get(0)?,
        serial: r.get(1)?,
        job_id: r.get(2)?,
        issuer_der: r.get(3)?,
        not_after: r.get(4)?,
        certificate_der: r.get(5)?,
        revoked: revoked_at.map(|t| (t, reason.unwrap_or_default())),
        backend_version: r.get(8)?,
    })
}

#[async_trait::async_trait]
impl Ledger for SqliteJournal {
    async fn certificate(&self, serial: &str) -> Result<Option<LedgerEntry>, JournalError> {
        let serial = serial.to_owned();
        self.blocking(move |inner| {
            Ok(inner
                .reader()
                .query_row(
                    &format!("SELECT {LEDGER_COLUMNS} FROM certificates WHERE serial = ?1 LIMIT 1"),
                    params![serial],
                    ledger_entry,
                )
                .optional()?)
        })
        .await
    }
}

#[async_trait::async_trait]
impl RevocationLedger for SqliteJournal {
    async fn certificates(&self, query: &LedgerQuery) -> Result<Vec<LedgerEntry>, JournalError> {
        let q = query.clone();
        let before = match q.selection() {
            LedgerSelection::Nothing => return Ok(Vec::new()),
            LedgerSelection::ExpiringBefore(before) => Some(before),
            LedgerSelection::Every | LedgerSelection::Revoked => None,
        };
        self.blocking(move |inner| {
            let conn = inner.reader();
            let mut stmt = conn.prepare_cached(&ledger_listing(q.selection()))?;
            let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
            let (backend, issuer) = (&q.backend, &q.issuer_der);
            let rows = match before {
                Some(before) => {
                    stmt.query_map(params![backend, issuer, limit, before], ledger_entry)?
                }
                None => stmt.query_map(params![backend, issuer, limit], ledger_entry)?,
            };
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn revocations(
        &self,
        issuer_der: &[u8],
        expiring_from: i64,
    ) -> Result<Vec<RevokedSerial>, JournalError> {
        let issuer = issuer_der.to_vec();
        self.blocking(move |inner| {
            let conn = inner.reader();
            let mut stmt = conn.prepare_cached(
                "SELECT serial, revoked_at, revocation_reason FROM certificates
                 WHERE issuer = ?1 AND revoked_at IS NOT NULL AND not_after >= ?2
                 ORDER BY revoked_at, serial",
            )?;
            let rows = stmt.query_map(params![issuer, expiring_from], |r| {
                Ok(RevokedSerial {
                    serial: r.get(0)?,
                    revoked_at: r.get(1)?,
                    reason: r.get::<_, Option<String>>(2)?.unwrap_or_default(),
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn revocation_mark(&self, issuer_der: &[u8]) -> Result<RevocationMark, JournalError> {
        let issuer = issuer_der.to_vec();
        self.blocking(move |inner| {
            Ok(inner.reader().query_row(
                "SELECT COUNT(revoked_at), COALESCE(MAX(revoked_at), 0),
                        (SELECT COALESCE(MAX(id), 0) FROM revocation_changes)
                 FROM certificates WHERE issuer = ?1 AND revoked_at IS NOT NULL",
                params![issuer],
                |r| {
                    Ok(RevocationMark {
                        revoked: r.get(0)?,
                        latest_revocation: r.get(1)?,
                        latest_change: r.get(2)?,
                    })
                },
            )?)
        })
        .await
    }

    async fn next_crl_number(&self, ca: &str) -> Result<u64, JournalError> {
        let ca = ca.to_owned();
        self.write(move |tx| {
            let number: i64 = tx
                .prepare_cached(
                    "INSERT INTO crl_numbers (ca, number) VALUES (?1, 1)
                 ON CONFLICT (ca) DO UPDATE SET number = number + 1
                 RETURNING number",
                )?
                .query_row(params![ca], |r| r.get(0))?;
            Ok(u64::try_from(number).unwrap_or(0))
        })
        .await
    }

    async fn change_reason(&self, change: &ReasonChange) -> Result<(), JournalError> {
        let c = change.clone();
        self.write(move |tx| {
            let changed = tx
                .prepare_cached(
                    "UPDATE certificates SET revocation_reason = ?3
                 WHERE backend = ?1 AND serial = ?2 AND revoked_at IS NOT NULL
                   AND revocation_reason = ?4",
                )?
                .execute(params![c.backend, c.serial, c.new_reason, c.old_reason])?;
            if changed == 0 {
                return Err(JournalError::NotRevoked {
                    backend: c.backend,
                    serial: c.serial,
                });
            }
            tx.prepare_cached(
                "INSERT INTO revocation_changes
                   (backend, serial, old_reason, new_reason, changed_by, changed_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                c.backend,
                c.serial,
                c.old_reason,
                c.new_reason,
                c.changed_by,
                c.changed_at
            ])?;
            Ok(())
        })
        .await
    }

    async fn reason_changes(&self, limit: usize) -> Result<Vec<ReasonChange>, JournalError> {
        self.blocking(move |inner| {
            let conn = inner.reader();
            let mut stmt = conn.prepare_cached(
                "SELECT backend, serial, old_reason, new_reason, changed_by, changed_at
                 FROM revocation_changes ORDER BY id DESC LIMIT ?1",
            )?;
            let rows = stmt.query_map(params![i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
                Ok(ReasonChange {
                    backend: r.get(0)?,
                    serial: r.get(1)?,
                    old_reason: r.get(2)?,
                    new_reason: r.get(3)?,
                    changed_by: r.get(4)?,
                    changed_at: r.get(5)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }
}

#[async_trait::async_trait]
impl ChallengeStore for SqliteJournal {
    async fn add_challenge(&self, digest: &str, expires_at: i64) -> Result<(), JournalError> {
        let digest = digest.to_owned();
        self.write(move |tx| {
            tx.prepare_cached("DELETE FROM scep_challenges WHERE expires_at < ?1")?
                .execute(params![now_ms()])?;
            tx.prepare_cached("INSERT INTO scep_challenges (digest, expires_at) VALUES (?1, ?2)")?
                .execute(params![digest, expires_at])?;
            Ok(())
        })
        .await
    }

    async fn consume_challenge(&self, digest: &str) -> Result<bool, JournalError> {
        let digest = digest.to_owned();
        self.write(move |conn| {
            let now = now_ms();
            Ok(conn
                .prepare_cached(
                    "UPDATE scep_challenges SET used_at = ?2
                 WHERE digest = ?1 AND used_at IS NULL AND expires_at > ?2",
                )?
                .execute(params![digest, now])?
                == 1)
        })
        .await
    }
}

#[async_trait::async_trait]
impl ReplayGuard for SqliteJournal {
    async fn first_use(
        &self,
        scope: &str,
        value: &[u8],
        keep_for: Duration,
    ) -> Result<bool, JournalError> {
        let (scope, value) = (scope.to_owned(), hex::encode(value));
        self.write(move |tx| {
            let now = now_ms();
            tx.prepare_cached("DELETE FROM replay_window WHERE expires_at <= ?1")?
                .execute(params![now])?;
            let inserted = tx
                .prepare_cached(
                    "INSERT INTO replay_window (scope, value, expires_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (scope, value) DO NOTHING",
                )?
                .execute(params![scope, value, now.saturating_add(millis(keep_for))])?;
            Ok(inserted == 1)
        })
        .await
    }
}

#[async_trait::async_trait]
impl SignatureTrail for SqliteJournal {
    async fn append_signature(
        &self,
        signature: &NewSignature,
    ) -> Result<SignatureRecord, JournalError> {
        let s = signature.clone();
        self.write(move |tx| {
            if s.kind == SignedKind::Certificate {
                let used: Option<i64> = tx
                    .prepare_cached(
                        "SELECT seq FROM signature_trail
                         WHERE issuer = ?1 AND serial = ?2 AND kind = 'certificate'",
                    )?
                    .query_row(params![s.issuer, s.serial], |r| r.get(0))
                    .optional()?;
                if let Some(seq) = used {
                    let seq = u64::try_from(seq).unwrap_or(0);
                    // The very same certificate again (a retried job whose first answer was
                    // lost) is not a reuse: it is the entry already there.
                    if let Some(same) = signatures_after(tx, seq.saturating_sub(1), 1)?
                        .into_iter()
                        .find(|r| r.seq == seq && r.signature.tbs_sha256 == s.tbs_sha256)
                    {
                        return Ok(same);
                    }
                    return Err(JournalError::SerialReused {
                        issuer: s.issuer,
                        serial: s.serial,
                        seq,
                    });
                }
            }
            let last: Option<(i64, String)> = tx
                .prepare_cached("SELECT seq, hash FROM signature_trail ORDER BY seq DESC LIMIT 1")?
                .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let (seq, prev_hash) = match last {
                Some((seq, hash)) => (u64::try_from(seq).unwrap_or(0) + 1, hash),
                None => (1, trail::GENESIS.to_owned()),
            };
            let at = now_ms();
            let hash = trail::entry_hash(seq, at, &s, &prev_hash);
            tx.prepare_cached(concat!(
                "INSERT INTO signature_trail (",
                trail_columns!(),
                ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
            ))?
            .execute(params![
                i64::try_from(seq).unwrap_or(i64::MAX),
                at,
                s.key,
                s.kind.as_str(),
                s.job,
                s.backend,
                s.signer,
                s.signer_sha256,
                s.tbs_sha256,
                s.issuer,
                s.serial,
                s.subject,
                prev_hash,
                hash
            ])?;
            Ok(SignatureRecord {
                seq,
                at,
                signature: s,
                prev_hash,
                hash,
            })
        })
        .await
    }

    async fn signatures(
        &self,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<SignatureRecord>, JournalError> {
        self.blocking(move |inner| signatures_after(&inner.reader(), after_seq, limit))
            .await
    }
}

/// The columns of a trail entry, in the order the append binds them and the reader reads them.
macro_rules! trail_columns {
    () => {
        "seq, at, key, kind, job_id, backend, signer, signer_sha256, tbs_sha256, issuer, serial, subject, prev_hash, hash"
    };
}
use trail_columns;

/// The signature trail of the journal at `path`, read without changing anything (for
/// `certconn audit`, which works on a stopped daemon's journal or a copy of it): up to `limit`
/// entries after `after_seq`, oldest first. `Ok(None)` when the journal predates the trail.
pub fn read_signature_trail(
    path: &Path,
    after_seq: u64,
    limit: usize,
) -> Result<Option<Vec<SignatureRecord>>, JournalError> {
    if schema_version_of(path)?.unwrap_or(0) < schema::SIGNATURE_TRAIL_SINCE {
        return Ok(None);
    }
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| JournalError::Open {
            path: path.to_owned(),
            source: Box::new(e),
        })?;
    signatures_after(&conn, after_seq, limit).map(Some)
}

fn signatures_after(
    conn: &Connection,
    after_seq: u64,
    limit: usize,
) -> Result<Vec<SignatureRecord>, JournalError> {
    let mut stmt = conn.prepare_cached(concat!(
        "SELECT ",
        trail_columns!(),
        " FROM signature_trail WHERE seq > ?1 ORDER BY seq LIMIT ?2"
    ))?;
    let rows = stmt.query_map(
        params![
            i64::try_from(after_seq).unwrap_or(i64::MAX),
            i64::try_from(limit).unwrap_or(i64::MAX)
        ],
        |r| {
            let kind: String = r.get(3)?;
            Ok((
                kind,
                SignatureRecord {
                    seq: u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
                    at: r.get(1)?,
                    signature: NewSignature {
                        key: r.get(2)?,
                        kind: SignedKind::Certificate,
                        job: r.get(4)?,
                        backend: r.get(5)?,
                        signer: r.get(6)?,
                        signer_sha256: r.get(7)?,
                        tbs_sha256: r.get(8)?,
                        issuer: r.get(9)?,
                        serial: r.get(10)?,
                        subject: r.get(11)?,
                    },
                    prev_hash: r.get(12)?,
                    hash: r.get(13)?,
                },
            ))
        },
    )?;
    let mut out = Vec::new();
    for row in rows {
        let (kind, mut record) = row?;
        record.signature.kind = SignedKind::parse(&kind).ok_or_else(|| JournalError::Corrupt {
            id: format!("signature trail entry {}", record.seq),
            reason: format!("unknown kind {kind:?}"),
        })?;
        out.push(record);
    }
    Ok(out)
}

#[async_trait::async_trait]
impl InstanceRegistry for SqliteJournal {
    async fn report_instance(&self, me: &InstanceRecord) -> Result<(), JournalError> {
        let me = me.clone();
        self.write(move |conn| {
            let now = now_ms();
            conn.prepare_cached(
                "INSERT INTO instances (id, host, version, plugins, serves, health, started_at, last_seen)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (id) DO UPDATE SET host = ?2, version = ?3, plugins = ?4, serves = ?5,
                     health = ?6, started_at = ?7, last_seen = ?8")?.execute(
                params![
                    me.id,
                    me.host,
                    me.version,
                    me.plugins.to_string(),
                    serde_json::to_string(&me.serves).unwrap_or_else(|_| "null".into()),
                    me.health,
                    me.started_at,
                    now
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn instances(&self) -> Result<(Vec<InstanceRecord>, i64), JournalError> {
        self.blocking(|inner| {
            let conn = inner.reader();
            let mut stmt = conn.prepare_cached(
                "SELECT id, host, version, plugins, serves, health, started_at, last_seen
                 FROM instances ORDER BY id",
            )?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, String>(5)?,
                        r.get::<_, i64>(6)?,
                        r.get::<_, i64>(7)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let records = rows
                .into_iter()
                .map(
                    |(id, host, version, plugins, serves, health, started_at, last_seen)| {
                        instance_record(
                            id, host, version, &plugins, &serves, health, started_at, last_seen,
                        )
                    },
                )
                .collect::<Result<Vec<_>, _>>()?;
            Ok((records, now_ms()))
        })
        .await
    }

    async fn forget_instance(&self, id: &str) -> Result<bool, JournalError> {
        let id = id.to_owned();
        self.write(move |conn| {
            Ok(conn
                .prepare_cached("DELETE FROM instances WHERE id = ?1")?
                .execute(params![id])?
                == 1)
        })
        .await
    }

    async fn record_decision(
        &self,
        subject: &str,
        action: &str,
        made_by: &str,
    ) -> Result<i64, JournalError> {
        let (subject, action, made_by) =
            (subject.to_owned(), action.to_owned(), made_by.to_owned());
        self.write(move |conn| {
            Ok(conn
                .prepare_cached(
                    "INSERT INTO fleet_decisions (subject, action, made_by, made_at)
                 VALUES (?1, ?2, ?3, ?4) RETURNING seq",
                )?
                .query_row(params![subject, action, made_by, now_ms()], |r| r.get(0))?)
        })
        .await
    }

    async fn decisions_after(&self, seq: i64) -> Result<Vec<FleetDecision>, JournalError> {
        self.blocking(move |inner| {
            let conn = inner.reader();
            let mut stmt = conn.prepare_cached(
                "SELECT seq, subject, action, made_by, made_at FROM fleet_decisions
                 WHERE seq > ?1 ORDER BY seq",
            )?;
            let rows = stmt
                .query_map(params![seq], |r| {
                    Ok(FleetDecision {
                        seq: r.get(0)?,
                        subject: r.get(1)?,
                        action: r.get(2)?,
                        made_by: r.get(3)?,
                        made_at: r.get(4)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }
}

#[async_trait::async_trait]
impl SharedKeys for SqliteJournal {
    async fn put_shared_key(&self, name: &str, sealed: &[u8]) -> Result<(), JournalError> {
        let (name, sealed) = (name.to_owned(), sealed.to_vec());
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO shared_keys (name, sealed, created_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET sealed = ?2, created_at = ?3",
            )?
            .execute(params![name, sealed, now_ms()])?;
            Ok(())
        })
        .await
    }

    async fn shared_key(&self, name: &str) -> Result<Option<Vec<u8>>, JournalError> {
        let name = name.to_owned();
        self.blocking(move |inner| {
            Ok(inner
                .reader()
                .query_row(
                    "SELECT sealed FROM shared_keys WHERE name = ?1",
                    params![name],
                    |r| r.get(0),
                )
                .optional()?)
        })
        .await
    }

    async fn remove_shared_key(&self, name: &str) -> Result<(), JournalError> {
        let name = name.to_owned();
        self.write(move |conn| {
            conn.prepare_cached("DELETE FROM shared_keys WHERE name = ?1")?
                .execute(params![name])?;
            Ok(())
        })
        .await
    }
}

impl Journal for SqliteJournal {
    fn schema_version(&self) -> i64 {
        self.inner.version
    }

    fn location(&self) -> String {
        format!("sqlite:{}", self.inner.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::behaviour;

    struct Sqlite(tempfile::TempDir);

    #[async_trait::async_trait]
    impl behaviour::Factory for Sqlite {
        async fn open(&self, instance: &str) -> Arc<dyn Journal> {
            Arc::new(SqliteJournal::open(&self.0.path().join("journal.sqlite"), instance).unwrap())
        }
    }

    async fn factory() -> Sqlite {
        Sqlite(tempfile::tempdir().unwrap())
    }

    crate::journal_behaviour_tests!(factory);

    /// A connection to a journal just made (every migration applied), in `dir`.
    fn migrated(dir: &tempfile::TempDir) -> Connection {
        let path = dir.path().join("j.sqlite");
        drop(SqliteJournal::open(&path, "a").unwrap());
        Connection::open(&path).unwrap()
    }

    /// Column `column` of every row `sql` (an `EXPLAIN`) returns with `values`.
    fn explained(
        conn: &Connection,
        sql: &str,
        values: impl rusqlite::Params,
        column: usize,
    ) -> Vec<String> {
        conn.prepare(sql)
            .unwrap()
            .query_map(values, |r| r.get::<_, String>(column))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn the_lease_query_walks_the_due_index_and_sorts_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let conn = migrated(&dir);
        for serves in [None, Some(r#"["local-ca"]"#)] {
            let plan = explained(
                &conn,
                &format!("EXPLAIN QUERY PLAN {NEXT_DUE_JOB}"),
                params![0_i64, serves],
                3,
            );
            assert!(
                !plan.iter().any(|step| step.contains("TEMP B-TREE")),
                "the lease sorts: {plan:#?}"
            );
            let probes = plan
                .iter()
                .filter(|s| s.contains("USING INDEX jobs_due"))
                .count();
            assert_eq!(probes, 3, "one probe of jobs_due per state: {plan:#?}");
        }
    }

    /// The bundled SQLite is built as `.cargo/config.toml` says: no allocation statistics (a
    /// global mutex around every allocation), no shared cache, and no memory management (which
    /// puts every connection's page cache behind one mutex). docs/design/pipeline.md, "SQLite
    /// without the global mutexes on its allocations and page caches". A build that drops the
    /// flags still works, a little slower: this says so.
    #[test]
    fn sqlite_takes_no_global_mutex_to_allocate_or_cache_pages() {
        let conn = Connection::open_in_memory().unwrap();
        let options: Vec<String> = conn
            .prepare("PRAGMA compile_options")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        for wanted in ["DEFAULT_MEMSTATUS=0", "OMIT_SHARED_CACHE", "THREADSAFE=1"] {
            assert!(
                options.iter().any(|o| o == wanted),
                "{wanted} missing: {options:?}"
            );
        }
        assert!(
            !options.iter().any(|o| o == "ENABLE_MEMORY_MANAGEMENT"),
            "{options:?}"
        );
    }

    /// A read does not wait for another to end: with a read connection held (as a long read
    /// holds it), a read still answers; with every one held, a read waits and goes on when one
    /// comes back. With one connection for every read, the first read waited.
    #[tokio::test]
    async fn a_read_is_not_held_up_by_others_in_progress() {
        let dir = tempfile::tempdir().unwrap();
        let j = SqliteJournal::open(&dir.path().join("j.sqlite"), "a").unwrap();
        let [id, _, _] = crate::journal::behaviour::three_jobs(&j).await;
        let within = Duration::from_secs(30);
        let mut held = vec![j.inner.reader()];
        let job = tokio::time::timeout(within, j.get(&id))
            .await
            .expect("a read waited for another in progress")
            .unwrap();
        assert_eq!(job.id, id);

        held.extend((1..READERS).map(|_| j.inner.reader()));
        let waiting = {
            let j = j.clone();
            let id = id.clone();
            tokio::spawn(async move { j.get(&id).await })
        };
        held.pop();
        let job = tokio::time::timeout(within, waiting)
            .await
            .expect("a read waiting for a connection was not woken when one came back")
            .unwrap()
            .unwrap();
        assert_eq!(job.id, id);
    }

    /// A source's backlog counts from the indexes of unfinished and owed jobs, never every job
    /// of the source (which, for a connector fed by the upstream service, is every job).
    #[test]
    fn the_backlog_reads_only_unfinished_and_owed_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let conn = migrated(&dir);
        let plan = explained(
            &conn,
            &format!("EXPLAIN QUERY PLAN {BACKLOG}"),
            params!["upstream"],
            3,
        );
        for index in ["USING INDEX jobs_due", "USING INDEX jobs_undelivered"] {
            assert!(
                plan.iter().any(|step| step.contains(index)),
                "{index}: {plan:#?}"
            );
        }
        assert!(
            !plan
                .iter()
                .any(|step| step == "SCAN jobs" || step.contains("sqlite_autoindex_jobs")),
            "the backlog reads every job of the source: {plan:#?}"
        );
    }

    /// The sweep of old jobs runs on the writer: it walks the jobs oldest first and stops at
    /// the cutoff. Through the state indexes SQLite read and sorted every ended job.
    #[test]
    fn the_sweep_of_old_jobs_walks_them_oldest_first_and_sorts_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let conn = migrated(&dir);
        let plan = explained(
            &conn,
            &format!("EXPLAIN QUERY PLAN {REMOVABLE_JOBS}"),
            params![1_i64, r#"["upstream"]"#, 200],
            3,
        );
        assert!(
            plan.iter()
                .any(|step| step.starts_with("SEARCH jobs USING INDEX jobs_created")),
            "{plan:#?}"
        );
        assert!(
            !plan.iter().any(|step| step.contains("TEMP B-TREE")),
            "the sweep sorts: {plan:#?}"
        );
    }

    /// A listing walks an index and stops at its limit: with one query for every state,
    /// SQLite sorted every job in the journal (a second at a million jobs).
    #[test]
    fn each_listing_of_jobs_walks_an_index_instead_of_sorting_every_job() {
        let dir = tempfile::tempdir().unwrap();
        let conn = migrated(&dir);
        let mut cases: Vec<(Option<JobState>, &str)> =
            vec![(None, "SCAN jobs USING INDEX jobs_created")];
        for state in JobState::ALL {
            let walk = match state {
                JobState::Succeeded => "SCAN jobs USING INDEX jobs_created",
                JobState::Failed | JobState::Dead => "SEARCH jobs USING INDEX jobs_ended_badly",
                // The queue's own states: that state's rows of the due index, sorted.
                JobState::Queued | JobState::Pending | JobState::Running => {
                    "SEARCH jobs USING INDEX jobs_due"
                }
            };
            assert!(
                list_query(Some(state)).contains(&format!("'{}'", state.as_str())),
                "{}",
                list_query(Some(state))
            );
            cases.push((Some(state), walk));
        }
        for (state, walk) in cases {
            let plan = explained(
                &conn,
                &format!("EXPLAIN QUERY PLAN {}", list_query(state)),
                params![10],
                3,
            );
            assert!(
                plan.iter().any(|step| step.starts_with(walk)),
                "{state:?}: {plan:#?}"
            );
            assert!(
                !plan.iter().any(|step| step == "SCAN jobs"),
                "{state:?} reads every job: {plan:#?}"
            );
        }
    }

    /// Each listing of the ledger walks an index in expiry order and stops at its limit; none
    /// reads every certificate or sorts them all. One query for all three, with its
    /// conditions bound, walked `certificates_not_after` filtering every row.
    #[test]
    fn each_listing_of_the_ledger_walks_an_index_in_expiry_order() {
        let dir = tempfile::tempdir().unwrap();
        let conn = migrated(&dir);
        let none: Option<String> = None;
        for (selection, walk) in [
            (
                LedgerSelection::Every,
                "SCAN certificates USING INDEX certificates_not_after",
            ),
            (
                LedgerSelection::Revoked,
                "SCAN certificates USING INDEX certificates_revoked",
            ),
            (
                LedgerSelection::ExpiringBefore(1),
                "SEARCH certificates USING INDEX certificates_not_after (not_after<?)",
            ),
        ] {
            let sql = format!("EXPLAIN QUERY PLAN {}", ledger_listing(selection));
            let plan = match selection {
                LedgerSelection::ExpiringBefore(before) => {
                    explained(&conn, &sql, params![none, none, 10, before], 3)
                }
                _ => explained(&conn, &sql, params![none, none, 10], 3),
            };
            assert!(
                plan.iter().any(|step| step == walk),
                "{selection:?}: {plan:#?}"
            );
            assert!(
                !plan
                    .iter()
                    .any(|step| step == "SCAN certificates"
                        || step == "USE TEMP B-TREE FOR ORDER BY"),
                "{selection:?} reads or sorts every certificate: {plan:#?}"
            );
        }
    }

    /// Updating a job's state evaluates `jobs_undelivered`'s predicate on the row before and
    /// after; written as `state IN (…)` each evaluation filled a temporary table (two per
    /// update, on the writer thread). And the query of what is owed still walks that index.
    #[test]
    fn a_job_update_fills_no_temporary_table_and_owed_outcomes_use_their_index() {
        let dir = tempfile::tempdir().unwrap();
        let conn = migrated(&dir);
        let opcodes = explained(
            &conn,
            "EXPLAIN UPDATE jobs SET state = ?2, updated_at = ?3 WHERE id = ?1",
            params!["j1", "succeeded", 1_i64],
            1,
        );
        assert!(
            opcodes.iter().any(|op| op == "IdxInsert"),
            "the update maintains no index: {opcodes:?}"
        );
        assert!(
            !opcodes.iter().any(|op| op == "OpenEphemeral"),
            "an update of a job fills a temporary table: {opcodes:?}"
        );
        let plan = explained(
            &conn,
            &format!("EXPLAIN QUERY PLAN {UNDELIVERED}"),
            params!["upstream", 8],
            3,
        );
        assert!(
            plan.iter()
                .any(|step| step.contains("USING INDEX jobs_undelivered")),
            "{plan:#?}"
        );
    }

    #[tokio::test]
    async fn a_job_whose_record_cannot_be_read_is_failed_and_the_queue_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let j = SqliteJournal::open(&dir.path().join("j.sqlite"), "a").unwrap();
        let ids = crate::journal::behaviour::three_jobs(&j).await;
        let [a, b, _] = ids.clone();
        j.write(move |conn| {
            conn.execute(
                "UPDATE jobs SET request = 'not JSON', next_run_at = next_run_at - 2000 WHERE id = ?1",
                params![a],
            )?;
            conn.execute(
                "UPDATE jobs SET kind = 'renew-v9', next_run_at = next_run_at - 1000 WHERE id = ?1",
                params![b],
            )?;
            Ok(())
        })
        .await
        .unwrap();
        crate::journal::behaviour::unreadable_jobs_are_failed_and_the_queue_goes_on(&j, &ids).await;
        let [a, b, _] = ids;
        let last_error = |id: String| {
            let path = dir.path().join("j.sqlite");
            Connection::open(path)
                .unwrap()
                .query_row(
                    "SELECT last_error FROM jobs WHERE id = ?1",
                    params![id],
                    |r| r.get::<_, String>(0),
                )
                .unwrap()
        };
        let (a, b) = (last_error(a), last_error(b));
        assert!(
            a.contains("cannot be read (expected ident at line 1 column 2)"),
            "{a}"
        );
        assert!(b.contains("unknown job kind \"renew-v9\""), "{b}");
    }

    #[tokio::test]
    async fn an_edited_state_is_an_error_not_a_guess() {
        let dir = tempfile::tempdir().unwrap();
        let j = SqliteJournal::open(&dir.path().join("j.sqlite"), "a").unwrap();
        let request = serde_json::json!({});
        let (job, _) = j
            .enqueue(NewJob {
                source: "api",
                idempotency_key: "k",
                kind: JobKind::Issue,
                request: &request,
                route: None,
            })
            .await
            .unwrap();
        let id = job.id.clone();
        j.write(move |conn| {
            conn.execute(
                "UPDATE jobs SET state = 'paused' WHERE id = ?1",
                params![id],
            )?;
            Ok(())
        })
        .await
        .unwrap();
        crate::journal::behaviour::an_edited_state_is_shown_not_guessed(&j, &job.id).await;
    }

    /// The schema before versioning, as certconn 0.1 wrote it, with one finished job.
    const UNVERSIONED: &str = r#"
CREATE TABLE jobs (id TEXT PRIMARY KEY, source TEXT NOT NULL, idempotency_key TEXT NOT NULL,
    kind TEXT NOT NULL, state TEXT NOT NULL, request TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    next_run_at INTEGER NOT NULL, lease_owner TEXT, lease_until INTEGER, poll_token TEXT, backend TEXT,
    last_error TEXT, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, UNIQUE (source, idempotency_key));
CREATE INDEX jobs_due ON jobs (state, next_run_at);
CREATE TABLE outbox (job_id TEXT PRIMARY KEY REFERENCES jobs(id), result TEXT NOT NULL, password TEXT,
    created_at INTEGER NOT NULL);
CREATE TABLE certificates (backend TEXT NOT NULL, serial TEXT NOT NULL, job_id TEXT NOT NULL REFERENCES jobs(id),
    issuer BLOB NOT NULL, not_after INTEGER NOT NULL, certificate BLOB NOT NULL, revoked_at INTEGER,
    revocation_reason TEXT, PRIMARY KEY (backend, serial));
CREATE INDEX certificates_serial ON certificates (serial);
CREATE TABLE scep_challenges (digest TEXT PRIMARY KEY, expires_at INTEGER NOT NULL, used_at INTEGER);
INSERT INTO jobs VALUES ('j1', 'api', 'k1', 'issue', 'succeeded', '{"profile":"smime"}', 1, 0, NULL, NULL,
    NULL, 'local', NULL, 1, 2);
INSERT INTO certificates VALUES ('local', '0a', 'j1', x'30', 99, x'3000', NULL, NULL);
"#;

    #[tokio::test]
    async fn a_journal_from_before_versioning_is_migrated_and_keeps_its_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.sqlite");
        Connection::open(&path)
            .unwrap()
            .execute_batch(UNVERSIONED)
            .unwrap();
        let j = SqliteJournal::open(&path, "a").unwrap();
        assert_eq!(j.schema_version(), schema::CURRENT);
        let job = j.get("j1").await.unwrap();
        assert_eq!(
            (job.state, job.request["profile"].as_str()),
            (JobState::Succeeded, Some("smime"))
        );
        assert_eq!(j.certificate("0a").await.unwrap().unwrap().job_id, "j1");
        // The new columns work on the old rows.
        assert!(j
            .first_use("t", b"n", Duration::from_secs(60))
            .await
            .unwrap());
        drop(j);
        // Opening again changes nothing.
        assert_eq!(
            SqliteJournal::open(&path, "a").unwrap().schema_version(),
            schema::CURRENT
        );
    }

    #[test]
    fn a_journal_newer_than_this_binary_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.sqlite");
        drop(SqliteJournal::open(&path, "a").unwrap());
        Connection::open(&path)
            .unwrap()
            .execute_batch(&format!("PRAGMA user_version = {}", schema::CURRENT + 1))
            .unwrap();
        let e = SqliteJournal::open(&path, "a").unwrap_err();
        assert!(matches!(e, JournalError::TooNew { .. }), "{e}");
        assert!(
            e.to_string().contains("newer than this certconn knows"),
            "{e}"
        );
    }

    /// Schema 7 takes each certificate's plugin version from its job's result where one is
    /// kept and reads as JSON; the others stay without one, and the upgrade does not fail.
    #[tokio::test]
    async fn the_ledger_learns_the_plugin_versions_of_certificates_issued_before_it_kept_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.sqlite");
        drop(SqliteJournal::open(&path, "a").unwrap());
        let version_6 = r#"
ALTER TABLE certificates DROP COLUMN backend_version;
DROP INDEX jobs_created;
DROP INDEX jobs_ended_badly;
DROP INDEX certificates_revoked;
PRAGMA user_version = 6;
INSERT INTO jobs (id, source, idempotency_key, kind, state, request, next_run_at, created_at, updated_at)
    VALUES ('j1', 'api', 'k1', 'issue', 'succeeded', '{}', 0, 1, 2),
           ('j2', 'api', 'k2', 'issue', 'succeeded', '{}', 0, 1, 2),
           ('j3', 'api', 'k3', 'issue', 'succeeded', '{}', 0, 1, 2);
INSERT INTO outbox (job_id, result, created_at)
    VALUES ('j1', '{"serial":"0a","backend_version":"local-ca 1.0.0 (0123abcd)"}', 2),
           ('j2', 'not JSON', 2);
INSERT INTO certificates (backend, serial, job_id, issuer, not_after, certificate)
    VALUES ('local', '0a', 'j1', x'30', 99, x'3000'), ('local', '0b', 'j2', x'30', 99, x'3000'),
           ('local', '0c', 'j3', x'30', 99, x'3000');
"#;
        Connection::open(&path)
            .unwrap()
            .execute_batch(version_6)
            .unwrap();
        let j = SqliteJournal::open(&path, "a").unwrap();
        assert_eq!(j.schema_version(), schema::CURRENT);
        crate::journal::behaviour::versions_learned_from_results(&j).await;
    }
}
