//! The durable journal on SQLite (WAL, synchronous=FULL): jobs, their outbox, and the ledger of
//! certificates issued and revoked through certconn.
//!
//! Every state change is one transaction, and every change to a leased job is fenced on the
//! lease owner, so a worker whose lease expired (or a process that died) can never overwrite
//! the outcome of the worker that took the job up after it.

use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::model::{JobKind, JobRecord, JobResult, JobState};
use crate::crypto::provider;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Open {
        path: std::path::PathBuf,
        source: rusqlite::Error,
    },
    #[error("journal: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("journal holds a malformed record for job {id}: {reason}")]
    Corrupt { id: String, reason: String },
    #[error("job {0} not found")]
    NotFound(String),
    #[error("job {id} is {state}; only failed or dead jobs can be retried")]
    NotRetryable { id: String, state: &'static str },
}

/// A certificate certconn issued, for the ledger.
#[derive(Debug, Clone)]
pub struct IssuedRecord {
    pub backend: String,
    pub serial: String,
    pub issuer_der: Vec<u8>,
    pub not_after: i64,
    pub certificate_der: Vec<u8>,
}

/// Current time in unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS jobs (
    id              TEXT PRIMARY KEY,
    source          TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    kind            TEXT NOT NULL,
    state           TEXT NOT NULL,
    request         TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_run_at     INTEGER NOT NULL,
    lease_owner     TEXT,
    lease_until     INTEGER,
    poll_token      TEXT,
    backend         TEXT,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    UNIQUE (source, idempotency_key)
);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (state, next_run_at);
CREATE TABLE IF NOT EXISTS outbox (
    job_id      TEXT PRIMARY KEY REFERENCES jobs(id),
    result      TEXT NOT NULL,
    password    TEXT,
    created_at  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS certificates (
    backend     TEXT NOT NULL,
    serial      TEXT NOT NULL,
    job_id      TEXT NOT NULL REFERENCES jobs(id),
    issuer      BLOB NOT NULL,
    not_after   INTEGER NOT NULL,
    certificate BLOB NOT NULL,
    revoked_at  INTEGER,
    revocation_reason TEXT,
    PRIMARY KEY (backend, serial)
);
CREATE INDEX IF NOT EXISTS certificates_serial ON certificates (serial);
-- One-time SCEP challenges: only their SHA-256 is kept, never the challenge itself.
CREATE TABLE IF NOT EXISTS scep_challenges (
    digest      TEXT PRIMARY KEY,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER
);
"#;

/// The journal. One connection behind a mutex: SQLite has one writer anyway, and every
/// operation here is a short transaction.
pub struct Journal {
    conn: Mutex<Connection>,
    owner: String,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("owner", &self.owner)
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
    let id: String = row.get("id")?;
    let kind: String = row.get("kind")?;
    let state: String = row.get("state")?;
    let kind = JobKind::parse(&kind).ok_or_else(|| unknown_value("job kind", &kind))?;
    let state = JobState::parse(&state).ok_or_else(|| unknown_value("job state", &state))?;
    let request: String = row.get("request")?;
    Ok((
        JobRecord {
            id,
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
        request,
    ))
}

fn finish_record((mut job, request): (JobRecord, String)) -> Result<JobRecord, JournalError> {
    job.request = serde_json::from_str(&request).map_err(|e| JournalError::Corrupt {
        id: job.id.clone(),
        reason: e.to_string(),
    })?;
    Ok(job)
}

impl Journal {
    /// Opens (creating) the journal at `path`.
    pub fn open(path: &Path) -> Result<Self, JournalError> {
        let open_err = |source| JournalError::Open {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA secure_delete = ON; PRAGMA busy_timeout = 5000;",
        )
        .map_err(open_err)?;
        conn.execute_batch(SCHEMA).map_err(open_err)?;
        let owner = hex::encode(
            provider::random_vec(8).unwrap_or_else(|_| std::process::id().to_be_bytes().to_vec()),
        );
        Ok(Self {
            conn: Mutex::new(conn),
            owner,
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a new job, or returns the existing one with the same source and idempotency key.
    /// The bool is true when the job is new.
    pub fn enqueue(
        &self,
        source: &str,
        idempotency_key: &str,
        kind: JobKind,
        request: &serde_json::Value,
    ) -> Result<(JobRecord, bool), JournalError> {
        let now = now_ms();
        let id = new_job_id();
        let conn = self.conn();
        let inserted = conn.execute(
            "INSERT INTO jobs (id, source, idempotency_key, kind, state, request, next_run_at, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, 'queued', ?5, ?6, ?6, ?6)
             ON CONFLICT (source, idempotency_key) DO NOTHING",
            params![id, source, idempotency_key, kind.as_str(), request.to_string(), now],
        )?;
        let row = conn.query_row(
            "SELECT * FROM jobs WHERE source = ?1 AND idempotency_key = ?2",
            params![source, idempotency_key],
            job_from_row,
        )?;
        Ok((finish_record(row)?, inserted == 1))
    }

    /// Takes up to one job that is due: queued or pending with `next_run_at` passed, or running
    /// with an expired lease. Counts an attempt.
    pub fn lease_next(&self, lease_ms: i64) -> Result<Option<JobRecord>, JournalError> {
        let now = now_ms();
        let conn = self.conn();
        let row = conn
            .query_row(
                "UPDATE jobs SET state = 'running', lease_owner = ?1, lease_until = ?2, attempts = attempts + 1, updated_at = ?3
                 WHERE id = (
                    SELECT id FROM jobs
                    WHERE (state IN ('queued', 'pending') AND next_run_at <= ?3)
                       OR (state = 'running' AND lease_until < ?3)
                    ORDER BY next_run_at LIMIT 1)
                 RETURNING *",
                params![self.owner, now + lease_ms, now],
                job_from_row,
            )
            .optional()?;
        row.map(finish_record).transpose()
    }

    /// When the next job becomes due, if any (unix ms).
    pub fn next_due(&self) -> Result<Option<i64>, JournalError> {
        let conn = self.conn();
        Ok(conn.query_row(
            "SELECT MIN(t) FROM (
                SELECT MIN(next_run_at) AS t FROM jobs WHERE state IN ('queued', 'pending')
                UNION ALL SELECT MIN(lease_until) FROM jobs WHERE state = 'running')",
            [],
            |r| r.get::<_, Option<i64>>(0),
        )?)
    }

    /// Ends a leased job successfully: outbox row, ledger changes and state in one transaction.
    /// Returns false (and changes nothing) when this worker no longer holds the lease.
    pub fn succeed(
        &self,
        id: &str,
        backend: &str,
        result: &JobResult,
        password: Option<&str>,
        issued: Option<&IssuedRecord>,
        revoked: Option<(&str, &str, &str)>,
    ) -> Result<bool, JournalError> {
        let now = now_ms();
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let changed = tx.execute(
            "UPDATE jobs SET state = 'succeeded', backend = ?3, last_error = NULL, lease_owner = NULL, lease_until = NULL, poll_token = NULL, updated_at = ?4
             WHERE id = ?1 AND state = 'running' AND lease_owner = ?2",
            params![id, self.owner, backend, now],
        )?;
        if changed == 0 {
            return Ok(false);
        }
        let json = serde_json::to_string(result).map_err(|e| JournalError::Corrupt {
            id: id.into(),
            reason: e.to_string(),
        })?;
        tx.execute(
            "INSERT INTO outbox (job_id, result, password, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![id, json, password, now],
        )?;
        if let Some(c) = issued {
            tx.execute(
                "INSERT INTO certificates (backend, serial, job_id, issuer, not_after, certificate) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![c.backend, c.serial, id, c.issuer_der, c.not_after, c.certificate_der],
            )?;
        }
        if let Some((backend, serial, reason)) = revoked {
            tx.execute(
                "UPDATE certificates SET revoked_at = ?3, revocation_reason = ?4 WHERE backend = ?1 AND serial = ?2 AND revoked_at IS NULL",
                params![backend, serial, now, reason],
            )?;
        }
        tx.commit()?;
        Ok(true)
    }

    /// Puts a leased job back in the queue after a passing failure.
    pub fn retry_later(
        &self,
        id: &str,
        backend: Option<&str>,
        error: &str,
        next_run_at: i64,
    ) -> Result<bool, JournalError> {
        let conn = self.conn();
        Ok(conn.execute(
            "UPDATE jobs SET state = 'queued', backend = COALESCE(?3, backend), last_error = ?4, next_run_at = ?5, lease_owner = NULL, lease_until = NULL, updated_at = ?6
             WHERE id = ?1 AND state = 'running' AND lease_owner = ?2",
            params![id, self.owner, backend, error, next_run_at, now_ms()],
        )? == 1)
    }

    /// Puts a leased job back in the queue because no backend could take it (unloaded, not
    /// loaded, quarantined). Waiting for a backend does not use up an attempt: an administrator
    /// unloading a plugin for a while must not dead-letter the jobs queued for it.
    pub fn wait_for_backend(
        &self,
        id: &str,
        error: &str,
        next_run_at: i64,
    ) -> Result<bool, JournalError> {
        let conn = self.conn();
        Ok(conn.execute(
            "UPDATE jobs SET state = 'queued', last_error = ?3, next_run_at = ?4, attempts = attempts - 1, lease_owner = NULL, lease_until = NULL, updated_at = ?5
             WHERE id = ?1 AND state = 'running' AND lease_owner = ?2",
            params![id, self.owner, error, next_run_at, now_ms()],
        )? == 1)
    }

    /// Parks a leased job as pending at the CA until `next_run_at`. A poll does not use up an attempt.
    pub fn pend(
        &self,
        id: &str,
        backend: &str,
        token: &str,
        message: &str,
        next_run_at: i64,
    ) -> Result<bool, JournalError> {
        let conn = self.conn();
        Ok(conn.execute(
            "UPDATE jobs SET state = 'pending', backend = ?3, poll_token = ?4, last_error = ?5, next_run_at = ?6, attempts = attempts - 1, lease_owner = NULL, lease_until = NULL, updated_at = ?7
             WHERE id = ?1 AND state = 'running' AND lease_owner = ?2",
            params![id, self.owner, backend, token, message, next_run_at, now_ms()],
        )? == 1)
    }

    /// Ends a leased job as failed or dead, with the reason.
    pub fn fail(
        &self,
        id: &str,
        state: JobState,
        backend: Option<&str>,
        error: &str,
    ) -> Result<bool, JournalError> {
        debug_assert!(matches!(state, JobState::Failed | JobState::Dead));
        let conn = self.conn();
        Ok(conn.execute(
            "UPDATE jobs SET state = ?3, backend = COALESCE(?4, backend), last_error = ?5, lease_owner = NULL, lease_until = NULL, updated_at = ?6
             WHERE id = ?1 AND state = 'running' AND lease_owner = ?2",
            params![id, self.owner, state.as_str(), backend, error, now_ms()],
        )? == 1)
    }

    /// After a restart of the only process using this journal: jobs it was running are due now.
    pub fn reclaim_running(&self) -> Result<usize, JournalError> {
        let conn = self.conn();
        Ok(conn.execute(
            "UPDATE jobs SET state = 'queued', next_run_at = ?1, lease_owner = NULL, lease_until = NULL, updated_at = ?1 WHERE state = 'running'",
            params![now_ms()],
        )?)
    }

    /// An operator's retry of a failed or dead job: attempts start over.
    pub fn retry(&self, id: &str) -> Result<JobRecord, JournalError> {
        let job = self.get(id)?;
        if !matches!(job.state, JobState::Failed | JobState::Dead) {
            return Err(JournalError::NotRetryable {
                id: id.into(),
                state: job.state.as_str(),
            });
        }
        let conn = self.conn();
        conn.execute(
            "UPDATE jobs SET state = 'queued', attempts = 0, next_run_at = ?2, updated_at = ?2 WHERE id = ?1",
            params![id, now_ms()],
        )?;
        drop(conn);
        self.get(id)
    }

    /// One job.
    pub fn get(&self, id: &str) -> Result<JobRecord, JournalError> {
        let conn = self.conn();
        let row = conn
            .query_row(
                "SELECT * FROM jobs WHERE id = ?1",
                params![id],
                job_from_row,
            )
            .optional()?
            .ok_or_else(|| JournalError::NotFound(id.into()))?;
        finish_record(row)
    }

    /// Jobs, newest first, optionally in one state.
    pub fn list(
        &self,
        state: Option<JobState>,
        limit: u32,
    ) -> Result<Vec<JobRecord>, JournalError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT * FROM jobs WHERE (?1 IS NULL OR state = ?1) ORDER BY created_at DESC, id LIMIT ?2",
        )?;
        let rows = stmt
            .query_map(params![state.map(JobState::as_str), limit], job_from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter().map(finish_record).collect()
    }

    /// Counts jobs per state.
    pub fn counts(&self) -> Result<Vec<(String, i64)>, JournalError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT state, COUNT(*) FROM jobs GROUP BY state ORDER BY state")?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// A finished job's result. The PFX password, if still held, is returned this once and
    /// erased in the same transaction.
    pub fn take_result(&self, id: &str) -> Result<Option<JobResult>, JournalError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let row: Option<(String, Option<String>)> = tx
            .query_row(
                "SELECT result, password FROM outbox WHERE job_id = ?1",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((json, password)) = row else {
            return Ok(None);
        };
        let mut result: JobResult =
            serde_json::from_str(&json).map_err(|e| JournalError::Corrupt {
                id: id.into(),
                reason: e.to_string(),
            })?;
        if password.is_some() {
            tx.execute(
                "UPDATE outbox SET password = NULL WHERE job_id = ?1",
                params![id],
            )?;
            result.password = password;
        } else {
            result.password_claimed =
                result.sealed_password_base64.is_none() && result.pfx_base64.is_some();
        }
        tx.commit()?;
        Ok(Some(result))
    }

    /// The job a source's idempotency key names, if any.
    pub fn find(
        &self,
        source: &str,
        idempotency_key: &str,
    ) -> Result<Option<JobRecord>, JournalError> {
        let conn = self.conn();
        let row = conn
            .query_row(
                "SELECT * FROM jobs WHERE source = ?1 AND idempotency_key = ?2",
                params![source, idempotency_key],
                job_from_row,
            )
            .optional()?;
        row.map(finish_record).transpose()
    }

    /// Records a one-time SCEP challenge by its digest.
    pub fn add_challenge(&self, digest: &str, expires_at: i64) -> Result<(), JournalError> {
        let conn = self.conn();
        conn.execute(
            "DELETE FROM scep_challenges WHERE expires_at < ?1",
            params![now_ms()],
        )?;
        conn.execute(
            "INSERT INTO scep_challenges (digest, expires_at) VALUES (?1, ?2)",
            params![digest, expires_at],
        )?;
        Ok(())
    }

    /// Uses up a one-time challenge: true only the first time, and only before it expires.
    pub fn consume_challenge(&self, digest: &str) -> Result<bool, JournalError> {
        let now = now_ms();
        let conn = self.conn();
        let n = conn.execute(
            "UPDATE scep_challenges SET used_at = ?2
             WHERE digest = ?1 AND used_at IS NULL AND expires_at > ?2",
            params![digest, now],
        )?;
        Ok(n == 1)
    }

    /// A certificate certconn issued, by serial: (DER, revoked).
    pub fn issued_certificate(
        &self,
        serial: &str,
    ) -> Result<Option<(Vec<u8>, bool)>, JournalError> {
        let conn = self.conn();
        Ok(conn
            .query_row(
                "SELECT certificate, revoked_at IS NOT NULL FROM certificates WHERE serial = ?1 LIMIT 1",
                params![serial],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    /// The backend that issued `serial`, and the issuer name, if certconn issued it.
    pub fn issued_by(&self, serial: &str) -> Result<Option<(String, Vec<u8>)>, JournalError> {
        let conn = self.conn();
        Ok(conn
            .query_row(
                "SELECT backend, issuer FROM certificates WHERE serial = ?1 LIMIT 1",
                params![serial],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }
}

/// A new job id: 128 random bits, hex.
fn new_job_id() -> String {
    match provider::random_vec(16) {
        Ok(b) => hex::encode(b),
        // The DRBG failing is fatal elsewhere; a time-based id keeps intake from panicking.
        Err(_) => format!(
            "{:032x}",
            now_ms() as u128 ^ ((std::process::id() as u128) << 64)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn journal() -> (tempfile::TempDir, Journal) {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&dir.path().join("j.sqlite")).unwrap();
        (dir, j)
    }

    #[test]
    fn same_idempotency_key_is_one_job() {
        let (_d, j) = journal();
        let (a, new_a) = j
            .enqueue("api", "k1", JobKind::Issue, &json!({"x": 1}))
            .unwrap();
        let (b, new_b) = j
            .enqueue("api", "k1", JobKind::Issue, &json!({"x": 2}))
            .unwrap();
        assert!(new_a && !new_b);
        assert_eq!(a.id, b.id);
        assert_eq!(b.request, json!({"x": 1}));
        let (c, new_c) = j.enqueue("scep", "k1", JobKind::Issue, &json!({})).unwrap();
        assert!(new_c);
        assert_ne!(c.id, a.id);
    }

    #[test]
    fn a_stale_worker_cannot_end_a_job_it_lost() {
        let (dir, j) = journal();
        let (job, _) = j.enqueue("api", "k", JobKind::Issue, &json!({})).unwrap();
        let leased = j.lease_next(0).unwrap().unwrap(); // lease expires at once
        assert_eq!(leased.id, job.id);
        // Another process takes the expired lease.
        let other = Journal::open(&dir.path().join("j.sqlite")).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert_eq!(other.lease_next(60_000).unwrap().unwrap().id, job.id);
        assert!(!j
            .succeed(&job.id, "b", &JobResult::default(), None, None, None)
            .unwrap());
        assert!(other
            .succeed(&job.id, "b", &JobResult::default(), None, None, None)
            .unwrap());
        assert_eq!(j.get(&job.id).unwrap().state, JobState::Succeeded);
        assert_eq!(j.get(&job.id).unwrap().attempts, 2);
    }

    #[test]
    fn password_is_handed_out_once() {
        let (_d, j) = journal();
        let (job, _) = j.enqueue("api", "k", JobKind::Issue, &json!({})).unwrap();
        j.lease_next(60_000).unwrap().unwrap();
        let result = JobResult {
            pfx_base64: Some("AA==".into()),
            ..Default::default()
        };
        assert!(j
            .succeed(&job.id, "b", &result, Some("s3cret"), None, None)
            .unwrap());
        assert_eq!(
            j.take_result(&job.id).unwrap().unwrap().password.as_deref(),
            Some("s3cret")
        );
        let again = j.take_result(&job.id).unwrap().unwrap();
        assert_eq!(again.password, None);
        assert!(again.password_claimed);
    }

    #[test]
    fn pending_waits_for_its_poll_time_without_using_attempts() {
        let (_d, j) = journal();
        let (job, _) = j.enqueue("api", "k", JobKind::Issue, &json!({})).unwrap();
        j.lease_next(60_000).unwrap().unwrap();
        assert!(j
            .pend(&job.id, "b", "token-1", "awaiting approval", now_ms() + 150)
            .unwrap());
        let parked = j.get(&job.id).unwrap();
        assert_eq!((parked.state, parked.attempts), (JobState::Pending, 0));
        assert!(j.lease_next(60_000).unwrap().is_none(), "not due yet");
        std::thread::sleep(std::time::Duration::from_millis(200));
        let polled = j.lease_next(60_000).unwrap().expect("due now");
        assert_eq!(polled.poll_token.as_deref(), Some("token-1"));
        assert_eq!(polled.attempts, 1);
    }

    #[test]
    fn an_edited_state_is_an_error_not_a_guess() {
        let (_d, j) = journal();
        let (job, _) = j.enqueue("api", "k", JobKind::Issue, &json!({})).unwrap();
        j.conn()
            .execute(
                "UPDATE jobs SET state = 'paused' WHERE id = ?1",
                params![job.id],
            )
            .unwrap();
        let err = j.get(&job.id).unwrap_err().to_string();
        assert!(err.contains("unknown job state \"paused\""), "{err}");
    }

    #[test]
    fn retry_only_from_terminal_failure() {
        let (_d, j) = journal();
        let (job, _) = j.enqueue("api", "k", JobKind::Issue, &json!({})).unwrap();
        assert!(matches!(
            j.retry(&job.id),
            Err(JournalError::NotRetryable { .. })
        ));
        j.lease_next(60_000).unwrap().unwrap();
        assert!(j.fail(&job.id, JobState::Dead, Some("b"), "boom").unwrap());
        let again = j.retry(&job.id).unwrap();
        assert_eq!(again.state, JobState::Queued);
        assert_eq!(again.attempts, 0);
    }
}
