//! The journal on PostgreSQL: one database that every instance of a fleet shares. The same
//! traits and the same behaviour as SQLite (`behaviour` runs on both); what a fleet adds:
//!
//! - **Claiming** is `FOR UPDATE SKIP LOCKED`: instances taking work at the same moment each
//!   get a different job and never wait on each other's row locks. A lease is fenced by its own
//!   random token, as on SQLite, and an expired lease is the only way to take over a running
//!   job.
//! - **One clock.** Lease times, and every time the journal stamps, are the database's
//!   (`certconn_now_ms()`), so a host whose clock is off neither steals leases nor keeps them.
//! - **Wake-ups** by `LISTEN`/`NOTIFY`: an enqueue on one instance wakes the idle workers of all
//!   of them, and a job's change wakes whoever waits for it (a SCEP request answered in-line on
//!   one instance while another ran the job). Notifications are coalesced (at most one per
//!   channel per [`listen::THROTTLE`] from each instance), and the workers still look every
//!   `journal.poll_ms`, so nothing is lost behind a transaction-pooling proxy where `LISTEN`
//!   does not work, or while the listening connection reconnects.
//! - **Migrations** run under an advisory lock: the first instance to start applies them, the
//!   others wait for it and find nothing left to do.
//! - **Pool**: `journal.pool_size` connections (default 4) plus one for `LISTEN`.
//! - **Durable commits** whatever the database's defaults: each connection turns
//!   `synchronous_commit` back on when the default leaves it off, and `fsync = off` is said
//!   at start ([`durability`]).

pub mod connect;
pub mod durability;
mod listen;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use deadpool_postgres::{
    GenericClient, Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime,
};
use tokio::sync::{watch, Notify};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::config::JournalConfig;
use super::record::*;
use super::schema::{self, POSTGRES_MIGRATIONS};
use super::trail::{self, NewSignature, SignatureRecord, SignedKind};
use super::Password;
use super::{
    millis, new_job_id, random_hex, Backlog, ChallengeStore, InstanceRegistry, JobStore, Journal,
    JournalError, Ledger, Outbox, ReplayGuard, RevocationLedger, SharedKeys, SignatureTrail,
};
pub use connect::{Connect, ConnectError};

/// Advisory lock keys (arbitrary, fixed): migrations, and the signature trail's chain.
const MIGRATION_LOCK: i64 = 0x6365_7274_636f_6e01;
const TRAIL_LOCK: i64 = 0x6365_7274_636f_6e02;

impl From<tokio_postgres::Error> for JournalError {
    fn from(e: tokio_postgres::Error) -> Self {
        JournalError::Backend(Box::new(e))
    }
}

impl From<deadpool_postgres::PoolError> for JournalError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        JournalError::Backend(Box::new(e))
    }
}

/// The journal in a PostgreSQL database.
#[derive(Clone)]
pub struct PostgresJournal {
    inner: Arc<Inner>,
}

pub(super) struct Inner {
    pool: Pool,
    location: String,
    /// This instance: the owner of the leases it takes.
    owner: String,
    version: i64,
    /// The backends this instance runs jobs for (`None`: every one).
    serves: RwLock<Option<Vec<String>>>,
    /// The longest a worker waits without a notification before it looks again.
    poll: Duration,
    /// A job was enqueued or retried (here, or on another instance): workers should look.
    work: Notify,
    /// Who waits for which job ([`JobStore::wait_settled`]), and the change counter; another
    /// instance's changes arrive unnamed and wake every waiter.
    pub(super) waiters: super::waiters::JobWaiters,
    /// What this instance has to tell the others.
    signals: Arc<listen::Signals>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl std::fmt::Debug for PostgresJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresJournal")
            .field("location", &self.inner.location)
            .field("owner", &self.inner.owner)
            .finish_non_exhaustive()
    }
}

fn corrupt(id: &str, reason: impl Into<String>) -> JournalError {
    JournalError::Corrupt {
        id: id.to_owned(),
        reason: reason.into(),
    }
}

fn job_from_row(row: &Row) -> Result<JobRecord, JournalError> {
    let id: String = row.try_get("id")?;
    let kind: String = row.try_get("kind")?;
    let state: String = row.try_get("state")?;
    let request: String = row.try_get("request")?;
    let kind =
        JobKind::parse(&kind).ok_or_else(|| corrupt(&id, format!("unknown job kind {kind:?}")))?;
    let state = JobState::parse(&state)
        .ok_or_else(|| corrupt(&id, format!("unknown job state {state:?}")))?;
    let attempts: i32 = row.try_get("attempts")?;
    Ok(JobRecord {
        request: serde_json::from_str(&request).map_err(|e| corrupt(&id, e.to_string()))?,
        source: row.try_get("source")?,
        idempotency_key: row.try_get("idempotency_key")?,
        kind,
        state,
        attempts: u32::try_from(attempts).unwrap_or(0),
        backend: row.try_get("backend")?,
        last_error: row.try_get("last_error")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        next_run_at: row.try_get("next_run_at")?,
        poll_token: row.try_get("poll_token")?,
        id,
    })
}

/// Job `row` as a listing reads it: the record, or what can be read of a row that cannot
/// (an unknown kind or state, a request that is not JSON).
fn job_or_unreadable(row: &Row) -> Result<Result<JobRecord, UnreadableJob>, JournalError> {
    let reason = match job_from_row(row) {
        Ok(job) => return Ok(Ok(job)),
        Err(JournalError::Corrupt { reason, .. }) => reason,
        Err(other) => return Err(other),
    };
    Ok(Err(UnreadableJob {
        id: row.try_get("id")?,
        source: row.try_get("source")?,
        state: row.try_get("state")?,
        last_error: row.try_get("last_error")?,
        updated_at: row.try_get("updated_at")?,
        reason,
    }))
}

/// One statement, prepared once per connection.
async fn query(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, JournalError> {
    let statement = c.prepare_cached(sql).await?;
    Ok(c.query(&statement, params).await?)
}

async fn query_opt(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Option<Row>, JournalError> {
    let statement = c.prepare_cached(sql).await?;
    Ok(c.query_opt(&statement, params).await?)
}

async fn execute(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, JournalError> {
    let statement = c.prepare_cached(sql).await?;
    Ok(c.execute(&statement, params).await?)
}

/// Brings the schema up to [`schema::POSTGRES_CURRENT`], one transaction per migration, under
/// an advisory lock so that instances starting together apply each migration once.
async fn migrate(client: &mut deadpool_postgres::Client) -> Result<i64, JournalError> {
    loop {
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS certconn_schema (version BIGINT NOT NULL)")
            .await?;
        let version: i64 = tx
            .query_one("SELECT COALESCE(MAX(version), 0) FROM certconn_schema", &[])
            .await?
            .try_get(0)?;
        if version > schema::POSTGRES_CURRENT {
            return Err(JournalError::TooNew {
                found: version,
                supported: schema::POSTGRES_CURRENT,
            });
        }
        let Some(next) = POSTGRES_MIGRATIONS
            .iter()
            .find(|m| m.version == version + 1)
        else {
            tx.commit().await?;
            return Ok(version);
        };
        tx.batch_execute(next.sql).await?;
        tx.execute(
            "INSERT INTO certconn_schema (version) VALUES ($1)",
            &[&next.version],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(
            version = next.version,
            "journal schema migrated: {}",
            next.description
        );
    }
}

/// The database `[journal]` names, as [`PostgresJournal::look`] found it.
#[derive(Debug)]
pub struct DatabaseLook {
    /// Where it is, as the log names it (without the password).
    pub location: String,
    /// `None` when certconn has not written there yet.
    pub schema_version: Option<i64>,
    pub commit: durability::CommitDefaults,
}

/// What the database does with a commit by default ([`durability::DEFAULTS`]).
async fn commit_defaults(
    c: &tokio_postgres::Client,
) -> Result<durability::CommitDefaults, JournalError> {
    let row = c.query_one(durability::DEFAULTS, &[]).await?;
    Ok(durability::CommitDefaults {
        fsync: row.try_get(0)?,
        full_page_writes: row.try_get(1)?,
        synchronous_commit: row.try_get(2)?,
    })
}

impl PostgresJournal {
    /// Connects to the database `[journal]` names for the instance `owner`, migrating its
    /// schema, and starts listening for the other instances' notifications.
    pub async fn open(
        config: &JournalConfig,
        owner: &str,
        fips: bool,
    ) -> Result<Self, JournalError> {
        let connect = Connect::new(config, fips).map_err(|e| JournalError::Database {
            location: config
                .url
                .clone()
                .map(|_| "[journal]".into())
                .unwrap_or_default(),
            source: Box::new(e),
        })?;
        let location = connect.location.clone();
        let unreachable = |e: JournalError| match e {
            JournalError::Backend(source) => JournalError::Database {
                location: location.clone(),
                source,
            },
            other => other,
        };
        let manager = Manager::from_config(
            connect.pg.clone(),
            connect.tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .post_create(Hook::async_fn(|client, _| {
                Box::pin(async move {
                    client
                        .batch_execute(durability::COMMIT_SYNCHRONOUSLY)
                        .await
                        .map_err(HookError::Backend)
                })
            }))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(30)))
            .create_timeout(Some(Duration::from_secs(15)))
            .build()
            .map_err(|e| JournalError::Database {
                location: location.clone(),
                source: Box::new(e),
            })?;
        let mut client = pool
            .get()
            .await
            .map_err(|e| unreachable(JournalError::from(e)))?;
        let version = migrate(&mut client).await.map_err(unreachable)?;
        let defaults = commit_defaults(&client).await.map_err(unreachable)?;
        drop(client);
        for weakness in defaults.weaknesses() {
            if weakness.made_up_for() {
                tracing::info!("{}", weakness.describe(&location));
            } else {
                tracing::warn!("{}", weakness.describe(&location));
            }
        }
        let signals = Arc::new(listen::Signals::default());
        let inner = Arc::new_cyclic(|weak| {
            let tasks = vec![
                tokio::spawn(listen::listen(connect.clone(), weak.clone())),
                tokio::spawn(listen::notify(pool.clone(), signals.clone())),
            ];
            Inner {
                pool,
                location,
                owner: owner.to_owned(),
                version,
                serves: RwLock::new(None),
                poll: Duration::from_millis(config.poll_ms),
                work: Notify::new(),
                waiters: Default::default(),
                signals,
                tasks,
            }
        });
        Ok(Self { inner })
    }

    /// What `check-config` reads of the database `[journal]` names, on one connection and
    /// changing nothing: its schema version and what it does with a commit by default.
    pub async fn look(config: &JournalConfig, fips: bool) -> Result<DatabaseLook, JournalError> {
        let connect = Connect::new(config, fips).map_err(|e| JournalError::Database {
            location: "[journal]".into(),
            source: Box::new(e),
        })?;
        let unreachable = |source| JournalError::Database {
            location: connect.location.clone(),
            source,
        };
        let client = connect
            .client()
            .await
            .map_err(|e| unreachable(Box::new(e)))?;
        let read = async {
            // Two statements: PostgreSQL resolves a table's name when it parses a statement,
            // so one naming `certconn_schema` fails where it does not exist yet.
            let migrated: bool = client
                .query_one("SELECT to_regclass('certconn_schema') IS NOT NULL", &[])
                .await?
                .try_get(0)?;
            let schema_version = if migrated {
                client
                    .query_one("SELECT MAX(version) FROM certconn_schema", &[])
                    .await?
                    .try_get::<_, Option<i64>>(0)?
            } else {
                None
            };
            Ok(DatabaseLook {
                location: connect.location.clone(),
                schema_version,
                commit: commit_defaults(&client).await?,
            })
        };
        read.await.map_err(|e| match e {
            JournalError::Backend(source) => unreachable(source),
            other => other,
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, JournalError> {
        Ok(self.inner.pool.get().await?)
    }

    /// Job `id` changed here: its waiters here now, the other instances soon.
    fn job_changed(&self, id: &str) {
        self.inner.waiters.job_changed(id);
        self.inner.signals.job_changed(id);
    }

    /// Jobs changed here that are not named: every waiter here now, the other instances soon.
    fn all_changed(&self) {
        self.inner.waiters.all_changed();
        self.inner.signals.all_changed();
    }

    /// Work arrived here: a worker here now, the other instances' soon.
    fn work_arrived(&self) {
        self.inner.work.notify_one();
        self.inner.signals.work();
    }

    fn serves(&self) -> Option<Vec<String>> {
        self.inner
            .serves
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Runs a fenced state change of a leased job (`$1` id, `$2` token, then `values`).
    async fn fenced(
        &self,
        sql: &str,
        lease: &Lease,
        values: &[&(dyn ToSql + Sync)],
    ) -> Result<bool, JournalError> {
        let mut all: Vec<&(dyn ToSql + Sync)> = vec![&lease.job_id, &lease.token];
        all.extend_from_slice(values);
        let changed = execute(&self.client().await?, sql, &all).await? == 1;
        if changed {
            self.job_changed(&lease.job_id);
        }
        Ok(changed)
    }

    async fn get_job(&self, c: &impl GenericClient, id: &str) -> Result<JobRecord, JournalError> {
        let row = query_opt(c, "SELECT * FROM jobs WHERE id = $1", &[&id])
            .await?
            .ok_or_else(|| JournalError::NotFound(id.into()))?;
        job_from_row(&row)
    }
}

impl Inner {
    /// Something may have arrived: one idle worker looks. A worker that finds a job wakes the
    /// next ([`JobStore::lease_next`]), so a burst fans out over this instance's workers while
    /// a notification to a hundred instances costs a hundred looks, not one per worker.
    pub(super) fn wake_one(&self) {
        self.work.notify_one();
    }

    /// Anything may have been missed (the notifications reconnected): every idle worker looks.
    pub(super) fn wake_all(&self) {
        self.work.notify_waiters();
        self.work.notify_one();
    }
}

/// The jobs this instance may take, with `$4` the backends it serves (`NULL`: every one): a job
/// routed to one of them, and a pending job only at a backend it serves.
macro_rules! serves_route {
    () => {
        "($4::TEXT[] IS NULL
           OR ((route IS NULL OR route && $4::TEXT[])
               AND (poll_token IS NULL OR backend IS NULL OR backend = ANY($4::TEXT[]))))"
    };
}

/// Leases the job due earliest of the first queued or pending job that is due and the first
/// running job whose lease ran out, among those this instance may take (`$4`, the backends it
/// serves; `NULL`: every one), for `$1` (owner) with `$2` (token) for `$3` ms.
///
/// The clock is read once (`now`): `certconn_now_ms()` is volatile, so compared row by row
/// it kept PostgreSQL from using an index, and one `OR` of both kinds of job could not be
/// read in due order either: every lease scanned and sorted the whole table (2.5 ms with
/// 3,000 jobs queued, growing with the queue). Each probe now walks its partial index
/// (`jobs_due`, `jobs_leased`) and locks at most one row; the row not taken is unlocked when
/// the statement ends.
const LEASE_NEXT_DUE: &str = concat!(
    "WITH now AS MATERIALIZED (SELECT certconn_now_ms() AS t),
due AS (
    SELECT id, next_run_at FROM jobs
    WHERE state IN ('queued', 'pending') AND next_run_at <= (SELECT t FROM now) AND ",
    serves_route!(),
    "
    ORDER BY next_run_at LIMIT 1
    FOR UPDATE SKIP LOCKED),
lapsed AS (
    SELECT id, next_run_at FROM jobs
    WHERE state = 'running' AND lease_until < (SELECT t FROM now) AND ",
    serves_route!(),
    "
    ORDER BY next_run_at LIMIT 1
    FOR UPDATE SKIP LOCKED)
UPDATE jobs SET state = 'running', lease_owner = $1, lease_token = $2,
       lease_until = (SELECT t FROM now) + $3, attempts = attempts + 1,
       updated_at = (SELECT t FROM now)
WHERE id = (SELECT id FROM (SELECT * FROM due UNION ALL SELECT * FROM lapsed) candidates
            ORDER BY next_run_at LIMIT 1)
RETURNING *"
);

#[async_trait::async_trait]
impl JobStore for PostgresJournal {
    async fn enqueue(&self, new: NewJob<'_>) -> Result<(JobRecord, bool), JournalError> {
        let id = new_job_id()?;
        let request = new.request.to_string();
        let route: Option<Vec<String>> = new.route.map(<[String]>::to_vec);
        let c = self.client().await?;
        let inserted = query_opt(
            &c,
            "INSERT INTO jobs (id, source, idempotency_key, kind, state, request, route,
                               next_run_at, created_at, updated_at)
             VALUES ($1, $2, $3, $4, 'queued', $5, $6,
                     certconn_now_ms(), certconn_now_ms(), certconn_now_ms())
             ON CONFLICT (source, idempotency_key) DO NOTHING
             RETURNING *",
            &[
                &id,
                &new.source,
                &new.idempotency_key,
                &new.kind.as_str(),
                &request,
                &route,
            ],
        )
        .await?;
        if let Some(row) = inserted {
            let job = job_from_row(&row)?;
            self.work_arrived();
            self.job_changed(&job.id);
            return Ok((job, true));
        }
        let row = query_opt(
            &c,
            "SELECT * FROM jobs WHERE source = $1 AND idempotency_key = $2",
            &[&new.source, &new.idempotency_key],
        )
        .await?
        .ok_or_else(|| JournalError::NotFound(new.idempotency_key.to_owned()))?;
        Ok((job_from_row(&row)?, false))
    }

    async fn lease_next(&self, lease_for: Duration) -> Result<Option<Leased>, JournalError> {
        let serves = self.serves();
        let client = self.client().await?;
        let mut leased = None;
        for _ in 0..=super::UNREADABLE_PER_LEASE {
            let token = random_hex(16)?;
            let row = query_opt(
                &client,
                LEASE_NEXT_DUE,
                &[&self.inner.owner, &token, &millis(lease_for), &serves],
            )
            .await?;
            let Some(row) = row else {
                return Ok(None);
            };
            match job_from_row(&row) {
                Ok(job) => {
                    leased = Some((job, token));
                    break;
                }
                // Leased already (the lease is one statement): failed under that lease.
                Err(JournalError::Corrupt { id, reason }) => {
                    execute(
                        &client,
                        "UPDATE jobs SET state = 'failed', last_error = $3, lease_owner = NULL,
                                lease_token = NULL, lease_until = NULL,
                                updated_at = certconn_now_ms()
                         WHERE id = $1 AND lease_token = $2",
                        &[&id, &token, &super::set_aside_reason(&id, &reason)],
                    )
                    .await?;
                    self.job_changed(&id);
                }
                Err(other) => return Err(other),
            }
        }
        let Some((job, token)) = leased else {
            return Ok(None);
        };
        self.job_changed(&job.id);
        // There may be more: the next idle worker here looks too.
        self.inner.wake_one();
        Ok(Some(Leased {
            lease: Lease {
                job_id: job.id.clone(),
                token,
            },
            job,
        }))
    }

    async fn renew(&self, lease: &Lease, lease_for: Duration) -> Result<bool, JournalError> {
        Ok(execute(
            &self.client().await?,
            "UPDATE jobs SET lease_until = certconn_now_ms() + $3
             WHERE id = $1 AND lease_token = $2 AND state = 'running'",
            &[&lease.job_id, &lease.token, &millis(lease_for)],
        )
        .await?
            == 1)
    }

    async fn complete(&self, lease: &Lease, done: Completion<'_>) -> Result<bool, JournalError> {
        let request = done.request.map(|r| r.to_string());
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let changed = execute(
            &tx,
            "UPDATE jobs SET state = 'succeeded', backend = $3, last_error = NULL,
                    lease_owner = NULL, lease_token = NULL, lease_until = NULL, poll_token = NULL,
                    request = COALESCE($4, request), updated_at = certconn_now_ms()
             WHERE id = $1 AND state = 'running' AND lease_token = $2",
            &[&lease.job_id, &lease.token, &done.backend, &request],
        )
        .await?;
        if changed == 0 {
            return Ok(false);
        }
        execute(
            &tx,
            "INSERT INTO outbox (job_id, result, password, created_at)
             VALUES ($1, $2, $3, certconn_now_ms())",
            &[
                &lease.job_id,
                &done.result,
                &done.password.map(Password::as_str),
            ],
        )
        .await?;
        if let Some(c) = done.issued {
            execute(
                &tx,
                "INSERT INTO certificates
                     (backend, serial, job_id, issuer, not_after, certificate, backend_version)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &c.backend,
                    &c.serial,
                    &lease.job_id,
                    &c.issuer_der,
                    &c.not_after,
                    &c.certificate_der,
                    &c.backend_version,
                ],
            )
            .await?;
        }
        if let Some(r) = done.revoked {
            execute(
                &tx,
                "UPDATE certificates SET revoked_at = certconn_now_ms(), revocation_reason = $3
                 WHERE backend = $1 AND serial = $2 AND revoked_at IS NULL",
                &[&r.backend, &r.serial, &r.reason],
            )
            .await?;
        }
        tx.commit().await?;
        self.job_changed(&lease.job_id);
        Ok(true)
    }

    async fn requeue(
        &self,
        lease: &Lease,
        backend: Option<&str>,
        error: &str,
        at: i64,
        uses_attempt: bool,
    ) -> Result<bool, JournalError> {
        let refund = i32::from(!uses_attempt);
        self.fenced(
            "UPDATE jobs SET state = 'queued', backend = COALESCE($3, backend), last_error = $4,
                    next_run_at = $5, attempts = attempts - $6, lease_owner = NULL,
                    lease_token = NULL, lease_until = NULL, updated_at = certconn_now_ms()
             WHERE id = $1 AND state = 'running' AND lease_token = $2",
            lease,
            &[&backend, &error, &at, &refund],
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
            "UPDATE jobs SET state = 'pending', backend = $3, poll_token = $4, last_error = $5,
                    next_run_at = $6, attempts = attempts - 1, lease_owner = NULL,
                    lease_token = NULL, lease_until = NULL, updated_at = certconn_now_ms()
             WHERE id = $1 AND state = 'running' AND lease_token = $2",
            lease,
            &[&backend, &poll_token, &message, &at],
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
        let request = request.map(|r| r.to_string());
        self.fenced(
            "UPDATE jobs SET state = $3, backend = COALESCE($4, backend), last_error = $5,
                    request = COALESCE($6, request), lease_owner = NULL, lease_token = NULL,
                    lease_until = NULL, updated_at = certconn_now_ms()
             WHERE id = $1 AND state = 'running' AND lease_token = $2",
            lease,
            &[&state.as_str(), &backend, &error, &request],
        )
        .await
    }

    async fn release_held(&self) -> Result<usize, JournalError> {
        let n = execute(
            &self.client().await?,
            "UPDATE jobs SET state = 'queued', next_run_at = certconn_now_ms(), lease_owner = NULL,
                    lease_token = NULL, lease_until = NULL, updated_at = certconn_now_ms()
             WHERE state = 'running' AND lease_owner = $1",
            &[&self.inner.owner],
        )
        .await?;
        if n > 0 {
            self.all_changed();
            self.work_arrived();
        }
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    async fn next_due(&self) -> Result<Option<i64>, JournalError> {
        let row = query(
            &self.client().await?,
            "SELECT LEAST(
                (SELECT MIN(next_run_at) FROM jobs WHERE state IN ('queued', 'pending')),
                (SELECT MIN(lease_until) FROM jobs WHERE state = 'running'))
                - certconn_now_ms()",
            &[],
        )
        .await?;
        // The database's clock decides when a job is due; the wait is measured here.
        let until: Option<i64> = row.first().map(|r| r.try_get(0)).transpose()?.flatten();
        Ok(until.map(|ms| super::now_ms().saturating_add(ms)))
    }

    async fn wait_for_work(&self, max: Duration) {
        self.wait_for_notice(max.min(self.inner.poll)).await;
    }

    async fn wait_for_notice(&self, max: Duration) {
        let _ = tokio::time::timeout(max, self.inner.work.notified()).await;
    }

    async fn retry(&self, id: &str) -> Result<JobRecord, JournalError> {
        let c = self.client().await?;
        let changed = execute(
            &c,
            "UPDATE jobs SET state = 'queued', attempts = 0, next_run_at = certconn_now_ms(),
                    updated_at = certconn_now_ms(), delivered_at = NULL
             WHERE id = $1 AND state IN ('failed', 'dead')",
            &[&id],
        )
        .await?;
        let job = self.get_job(&c, id).await?;
        if changed == 0 {
            return Err(JournalError::NotRetryable {
                id: id.to_owned(),
                state: job.state.as_str(),
            });
        }
        self.job_changed(id);
        self.work_arrived();
        Ok(job)
    }

    async fn get(&self, id: &str) -> Result<JobRecord, JournalError> {
        self.get_job(&self.client().await?, id).await
    }

    async fn find(
        &self,
        source: &str,
        idempotency_key: &str,
    ) -> Result<Option<JobRecord>, JournalError> {
        query_opt(
            &self.client().await?,
            "SELECT * FROM jobs WHERE source = $1 AND idempotency_key = $2",
            &[&source, &idempotency_key],
        )
        .await?
        .as_ref()
        .map(job_from_row)
        .transpose()
    }

    async fn list(&self, state: Option<JobState>, limit: u32) -> Result<JobListing, JournalError> {
        let rows = query(
            &self.client().await?,
            list_query(state),
            &[&i64::from(limit)],
        )
        .await?;
        JobListing::of(rows.iter().map(job_or_unreadable))
    }

    async fn unfinished(&self) -> Result<Vec<JobRecord>, JournalError> {
        let rows = query(
            &self.client().await?,
            "SELECT * FROM jobs WHERE state IN ('queued', 'running', 'pending')
             ORDER BY created_at, id",
            &[],
        )
        .await?;
        super::readable_unfinished(rows.iter().map(job_or_unreadable))
    }

    async fn counts(&self) -> Result<Vec<(JobState, i64)>, JournalError> {
        let rows = query(
            &self.client().await?,
            "SELECT state, COUNT(*) FROM jobs GROUP BY state ORDER BY state",
            &[],
        )
        .await?;
        let mut counts = Vec::with_capacity(rows.len());
        for r in &rows {
            let state: String = r.try_get(0)?;
            if let Some(state) = JobState::parse(&state) {
                counts.push((state, r.try_get(1)?));
            }
        }
        Ok(counts)
    }

    async fn wait_settled(&self, id: &str, max: Duration) -> Result<JobRecord, JournalError> {
        // Another instance's change arrives as a notification; were it lost, look anyway.
        self.inner
            .waiters
            .wait_settled(id, max, Some(self.inner.poll), || self.get(id))
            .await
    }

    fn serve_only(&self, backends: Option<&[String]>) {
        *self.inner.serves.write().unwrap_or_else(|p| p.into_inner()) =
            backends.map(<[String]>::to_vec);
        self.inner.wake_all();
    }
}

#[async_trait::async_trait]
impl Outbox for PostgresJournal {
    async fn take_result(&self, id: &str) -> Result<Option<StoredResult>, JournalError> {
        // The row is locked while it is read and its password erased: of two instances asking
        // at once, one gets the password and the other sees it gone.
        let row = query_opt(
            &self.client().await?,
            "UPDATE outbox o SET password = NULL
             FROM (SELECT job_id, result, password FROM outbox WHERE job_id = $1 FOR UPDATE) old
             WHERE o.job_id = old.job_id
             RETURNING old.result, old.password",
            &[&id],
        )
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        Ok(Some(StoredResult {
            result: row.try_get(0)?,
            password: row.try_get::<_, Option<String>>(1)?.map(Password::from),
        }))
    }

    async fn peek_result(&self, id: &str) -> Result<Option<String>, JournalError> {
        query_opt(
            &self.client().await?,
            "SELECT result FROM outbox WHERE job_id = $1",
            &[&id],
        )
        .await?
        .map(|r| r.try_get(0).map_err(JournalError::from))
        .transpose()
    }

    async fn undelivered(
        &self,
        source: &str,
        limit: u32,
    ) -> Result<Vec<OwedOutcome>, JournalError> {
        let rows = query(
            &self.client().await?,
            "SELECT id, idempotency_key, state, last_error FROM jobs
             WHERE source = $1 AND delivered_at IS NULL
                 AND state IN ('succeeded', 'failed', 'dead')
             ORDER BY updated_at, id LIMIT $2",
            &[&source, &i64::from(limit)],
        )
        .await?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get("id")?;
                let state: String = row.try_get("state")?;
                Ok(OwedOutcome {
                    state: JobState::parse(&state)
                        .ok_or_else(|| corrupt(&id, format!("unknown job state {state:?}")))?,
                    idempotency_key: row.try_get("idempotency_key")?,
                    last_error: row.try_get("last_error")?,
                    id,
                })
            })
            .collect()
    }

    async fn mark_delivered(&self, id: &str) -> Result<(), JournalError> {
        execute(
            &self.client().await?,
            "UPDATE jobs SET delivered_at = certconn_now_ms()
             WHERE id = $1 AND delivered_at IS NULL",
            &[&id],
        )
        .await?;
        Ok(())
    }

    async fn remove_results(
        &self,
        ended_before: i64,
        owed_to: &[&str],
        limit: u32,
    ) -> Result<u64, JournalError> {
        // No index on the age (it would cost every job a write): each batch reads the outbox
        // once, which PostgreSQL does beside the workers' writes, not in their way.
        execute(
            &self.client().await?,
            "DELETE FROM outbox WHERE job_id IN (
                 SELECT o.job_id FROM outbox o JOIN jobs j ON j.id = o.job_id
                 WHERE o.created_at < $1
                   AND NOT (j.delivered_at IS NULL AND j.source = ANY($2::TEXT[]))
                 ORDER BY o.created_at
                 LIMIT $3)",
            &[&ended_before, &owed_to, &i64::from(limit)],
        )
        .await
    }

    async fn remove_jobs(
        &self,
        ended_before: i64,
        owed_to: &[&str],
        limit: u32,
    ) -> Result<u64, JournalError> {
        // `jobs_created` from the oldest job, up to the cutoff.
        execute(
            &self.client().await?,
            "DELETE FROM jobs WHERE id IN (
                 SELECT j.id FROM jobs j
                 WHERE j.created_at < $1 AND j.updated_at < $1
                   AND j.state IN ('succeeded', 'failed', 'dead')
                   AND NOT (j.delivered_at IS NULL AND j.source = ANY($2::TEXT[]))
                   AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.job_id = j.id)
                 ORDER BY j.created_at
                 LIMIT $3)",
            &[&ended_before, &owed_to, &i64::from(limit)],
        )
        .await
    }

    async fn backlog(&self, source: &str) -> Result<Backlog, JournalError> {
        let rows = query(
            &self.client().await?,
            // Each count from an index of the jobs it counts (`jobs_state_created`, and
            // `jobs_undelivered`, whose predicate the second repeats), not a pass over every
            // job of the source: for a connector fed by the upstream service, every job.
            "SELECT
                 (SELECT COUNT(*) FROM jobs
                  WHERE source = $1 AND state IN ('queued', 'running', 'pending')),
                 (SELECT COUNT(*) FROM jobs
                  WHERE source = $1 AND delivered_at IS NULL
                    AND state IN ('succeeded', 'failed', 'dead'))",
            &[&source],
        )
        .await?;
        let (unfinished, owed): (i64, i64) = match rows.first() {
            Some(r) => (r.try_get(0)?, r.try_get(1)?),
            None => (0, 0),
        };
        Ok(Backlog {
            unfinished: u64::try_from(unfinished).unwrap_or(0),
            owed: u64::try_from(owed).unwrap_or(0),
        })
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.inner.waiters.changes()
    }
}

const LEDGER_COLUMNS: &str =
    "backend, serial, job_id, issuer, not_after, certificate, revoked_at, \
     revocation_reason, backend_version";

/// The newest `$1` jobs in `state` (`None`: every job), walking `jobs_state_created` (or
/// `jobs_created`) newest first. The state is written into the statement, not bound: a
/// prepared statement's generic plan, which PostgreSQL may cache, judges a bound state by the
/// average one, and with nearly every job succeeded it walked every job to list the few
/// dead or queued ones (170–240 ms among a million), where a written state is planned from
/// that state's own share.
fn list_query(state: Option<JobState>) -> &'static str {
    macro_rules! newest {
        ($where:literal) => {
            concat!(
                "SELECT * FROM jobs ",
                $where,
                " ORDER BY created_at DESC, id LIMIT $1"
            )
        };
    }
    match state {
        None => newest!(""),
        Some(JobState::Succeeded) => newest!("WHERE state = 'succeeded'"),
        Some(JobState::Failed) => newest!("WHERE state = 'failed'"),
        Some(JobState::Dead) => newest!("WHERE state = 'dead'"),
        Some(JobState::Queued) => newest!("WHERE state = 'queued'"),
        Some(JobState::Pending) => newest!("WHERE state = 'pending'"),
        Some(JobState::Running) => newest!("WHERE state = 'running'"),
    }
}

/// The ledger's listing of `selection`, soonest expiry first, with `$1` the backend and `$2`
/// the issuer (`NULL`: any), `$3` the limit and `$4` the expiry cutoff: one statement per
/// shape, so that the plan PostgreSQL caches for it walks that shape's index (schema 5) even
/// once it is generic, which a plan for every shape, its conditions bound, could not.
fn ledger_listing(selection: LedgerSelection) -> String {
    let only = match selection {
        LedgerSelection::Every | LedgerSelection::Nothing => "",
        LedgerSelection::Revoked => "revoked_at IS NOT NULL AND",
        LedgerSelection::ExpiringBefore(_) => "not_after < $4 AND revoked_at IS NULL AND",
    };
    format!(
        "SELECT {LEDGER_COLUMNS} FROM certificates
         WHERE {only} ($1::TEXT IS NULL OR backend = $1) AND ($2::BYTEA IS NULL OR issuer = $2)
         ORDER BY not_after, serial LIMIT $3"
    )
}

fn ledger_entry(r: &Row) -> Result<LedgerEntry, JournalError> {
    let revoked_at: Option<i64> = r.try_get(6)?;
    let reason: Option<String> = r.try_get(7)?;
    Ok(LedgerEntry {
        backend: r.try_get(0)?,
        serial: r.try_get(1)?,
        job_id: r.try_get(2)?,
        issuer_der: r.try_get(3)?,
        not_after: r.try_get(4)?,
        certificate_der: r.try_get(5)?,
        revoked: revoked_at.map(|t| (t, reason.unwrap_or_default())),
        backend_version: r.try_get(8)?,
    })
}

#[async_trait::async_trait]
impl Ledger for PostgresJournal {
    async fn certificate(&self, serial: &str) -> Result<Option<LedgerEntry>, JournalError> {
        query_opt(
            &self.client().await?,
            &format!("SELECT {LEDGER_COLUMNS} FROM certificates WHERE serial = $1 LIMIT 1"),
            &[&serial],
        )
        .await?
        .as_ref()
        .map(ledger_entry)
        .transpose()
    }
}

#[async_trait::async_trait]
impl RevocationLedger for PostgresJournal {
    async fn certificates(&self, q: &LedgerQuery) -> Result<Vec<LedgerEntry>, JournalError> {
        let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
        let selection = q.selection();
        let sql = ledger_listing(selection);
        let client = self.client().await?;
        let rows = match selection {
            LedgerSelection::Nothing => return Ok(Vec::new()),
            LedgerSelection::ExpiringBefore(before) => {
                query(&client, &sql, &[&q.backend, &q.issuer_der, &limit, &before]).await?
            }
            LedgerSelection::Every | LedgerSelection::Revoked => {
                query(&client, &sql, &[&q.backend, &q.issuer_der, &limit]).await?
            }
        };
        rows.iter().map(ledger_entry).collect()
    }

    async fn revocations(
        &self,
        issuer_der: &[u8],
        expiring_from: i64,
    ) -> Result<Vec<RevokedSerial>, JournalError> {
        let rows = query(
            &self.client().await?,
            "SELECT serial, revoked_at, revocation_reason FROM certificates
             WHERE issuer = $1 AND revoked_at IS NOT NULL AND not_after >= $2
             ORDER BY revoked_at, serial",
            &[&issuer_der, &expiring_from],
        )
        .await?;
        rows.iter()
            .map(|r| {
                Ok(RevokedSerial {
                    serial: r.try_get(0)?,
                    revoked_at: r.try_get(1)?,
                    reason: r.try_get::<_, Option<String>>(2)?.unwrap_or_default(),
                })
            })
            .collect()
    }

    async fn revocation_mark(&self, issuer_der: &[u8]) -> Result<RevocationMark, JournalError> {
        let rows = query(
            &self.client().await?,
            "SELECT COUNT(revoked_at), COALESCE(MAX(revoked_at), 0),
                    (SELECT COALESCE(MAX(id), 0) FROM revocation_changes)
             FROM certificates WHERE issuer = $1 AND revoked_at IS NOT NULL",
            &[&issuer_der],
        )
        .await?;
        let Some(r) = rows.first() else {
            return Ok(RevocationMark::default());
        };
        Ok(RevocationMark {
            revoked: r.try_get(0)?,
            latest_revocation: r.try_get(1)?,
            latest_change: r.try_get(2)?,
        })
    }

    async fn next_crl_number(&self, ca: &str) -> Result<u64, JournalError> {
        let rows = query(
            &self.client().await?,
            "INSERT INTO crl_numbers (ca, number) VALUES ($1, 1)
             ON CONFLICT (ca) DO UPDATE SET number = crl_numbers.number + 1
             RETURNING number",
            &[&ca],
        )
        .await?;
        let number: i64 = rows.first().map(|r| r.try_get(0)).transpose()?.unwrap_or(0);
        Ok(u64::try_from(number).unwrap_or(0))
    }

    async fn change_reason(&self, c: &ReasonChange) -> Result<(), JournalError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let changed = execute(
            &tx,
            "UPDATE certificates SET revocation_reason = $3
             WHERE backend = $1 AND serial = $2 AND revoked_at IS NOT NULL
               AND revocation_reason = $4",
            &[&c.backend, &c.serial, &c.new_reason, &c.old_reason],
        )
        .await?;
        if changed == 0 {
            return Err(JournalError::NotRevoked {
                backend: c.backend.clone(),
                serial: c.serial.clone(),
            });
        }
        execute(
            &tx,
            "INSERT INTO revocation_changes
               (backend, serial, old_reason, new_reason, changed_by, changed_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &c.backend,
                &c.serial,
                &c.old_reason,
                &c.new_reason,
                &c.changed_by,
                &c.changed_at,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn reason_changes(&self, limit: usize) -> Result<Vec<ReasonChange>, JournalError> {
        let rows = query(
            &self.client().await?,
            "SELECT backend, serial, old_reason, new_reason, changed_by, changed_at
             FROM revocation_changes ORDER BY id DESC LIMIT $1",
            &[&i64::try_from(limit).unwrap_or(i64::MAX)],
        )
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ReasonChange {
                    backend: r.try_get(0)?,
                    serial: r.try_get(1)?,
                    old_reason: r.try_get(2)?,
                    new_reason: r.try_get(3)?,
                    changed_by: r.try_get(4)?,
                    changed_at: r.try_get(5)?,
                })
            })
            .collect()
    }
}

#[async_trait::async_trait]
impl ChallengeStore for PostgresJournal {
    async fn add_challenge(&self, digest: &str, expires_at: i64) -> Result<(), JournalError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        execute(
            &tx,
            "DELETE FROM scep_challenges WHERE expires_at < certconn_now_ms()",
            &[],
        )
        .await?;
        execute(
            &tx,
            "INSERT INTO scep_challenges (digest, expires_at) VALUES ($1, $2)",
            &[&digest, &expires_at],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn consume_challenge(&self, digest: &str) -> Result<bool, JournalError> {
        Ok(execute(
            &self.client().await?,
            "UPDATE scep_challenges SET used_at = certconn_now_ms()
             WHERE digest = $1 AND used_at IS NULL AND expires_at > certconn_now_ms()",
            &[&digest],
        )
        .await?
            == 1)
    }
}

#[async_trait::async_trait]
impl ReplayGuard for PostgresJournal {
    async fn first_use(
        &self,
        scope: &str,
        value: &[u8],
        keep_for: Duration,
    ) -> Result<bool, JournalError> {
        let value = hex::encode(value);
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        execute(&tx, FORGET_EXPIRED_VALUES, &[]).await?;
        let inserted = execute(
            &tx,
            "INSERT INTO replay_window (scope, value, expires_at)
             VALUES ($1, $2, certconn_now_ms() + $3)
             ON CONFLICT (scope, value) DO NOTHING",
            &[&scope, &value, &millis(keep_for)],
        )
        .await?;
        tx.commit().await?;
        Ok(inserted == 1)
    }
}

/// Drops the replay window's expired values, found by `replay_window_expiry`. The clock is read
/// once (a scalar subquery): the volatile `certconn_now_ms()` compared row by row made every
/// check scan the whole window.
const FORGET_EXPIRED_VALUES: &str =
    "DELETE FROM replay_window WHERE expires_at <= (SELECT certconn_now_ms())";

/// The columns of a trail entry, in the order the append binds them and the reader reads them.
const TRAIL_COLUMNS: &str = "seq, at, key, kind, job_id, backend, signer, signer_sha256, \
                             tbs_sha256, issuer, serial, subject, prev_hash, hash";

fn trail_entry(r: &Row) -> Result<SignatureRecord, JournalError> {
    let seq: i64 = r.try_get(0)?;
    let kind: String = r.try_get(3)?;
    let kind = SignedKind::parse(&kind).ok_or_else(|| {
        corrupt(
            &format!("signature trail entry {seq}"),
            format!("unknown kind {kind:?}"),
        )
    })?;
    Ok(SignatureRecord {
        seq: u64::try_from(seq).unwrap_or(0),
        at: r.try_get(1)?,
        signature: NewSignature {
            key: r.try_get(2)?,
            kind,
            job: r.try_get(4)?,
            backend: r.try_get(5)?,
            signer: r.try_get(6)?,
            signer_sha256: r.try_get(7)?,
            tbs_sha256: r.try_get(8)?,
            issuer: r.try_get(9)?,
            serial: r.try_get(10)?,
            subject: r.try_get(11)?,
        },
        prev_hash: r.try_get(12)?,
        hash: r.try_get(13)?,
    })
}

#[async_trait::async_trait]
impl SignatureTrail for PostgresJournal {
    async fn append_signature(&self, s: &NewSignature) -> Result<SignatureRecord, JournalError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // One chain for the whole fleet: appends take turns.
        execute(&tx, "SELECT pg_advisory_xact_lock($1)", &[&TRAIL_LOCK]).await?;
        if s.kind == SignedKind::Certificate {
            let used = query_opt(
                &tx,
                &format!(
                    "SELECT {TRAIL_COLUMNS} FROM signature_trail
                     WHERE issuer = $1 AND serial = $2 AND kind = 'certificate'"
                ),
                &[&s.issuer, &s.serial],
            )
            .await?;
            if let Some(row) = used {
                let same = trail_entry(&row)?;
                // The very same certificate again (a retried job whose first answer was
                // lost) is not a reuse: it is the entry already there.
                if same.signature.tbs_sha256 == s.tbs_sha256 {
                    return Ok(same);
                }
                return Err(JournalError::SerialReused {
                    issuer: s.issuer.clone(),
                    serial: s.serial.clone(),
                    seq: same.seq,
                });
            }
        }
        let last = query_opt(
            &tx,
            "SELECT seq, hash FROM signature_trail ORDER BY seq DESC LIMIT 1",
            &[],
        )
        .await?;
        let (seq, prev_hash) = match last {
            Some(r) => (
                u64::try_from(r.try_get::<_, i64>(0)?).unwrap_or(0) + 1,
                r.try_get::<_, String>(1)?,
            ),
            None => (1, trail::GENESIS.to_owned()),
        };
        let at: i64 = query(&tx, "SELECT certconn_now_ms()", &[])
            .await?
            .first()
            .map(|r| r.try_get(0))
            .transpose()?
            .unwrap_or(0);
        let hash = trail::entry_hash(seq, at, s, &prev_hash);
        let seq_i64 = i64::try_from(seq).unwrap_or(i64::MAX);
        execute(
            &tx,
            &format!(
                "INSERT INTO signature_trail ({TRAIL_COLUMNS})
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
            ),
            &[
                &seq_i64,
                &at,
                &s.key,
                &s.kind.as_str(),
                &s.job,
                &s.backend,
                &s.signer,
                &s.signer_sha256,
                &s.tbs_sha256,
                &s.issuer,
                &s.serial,
                &s.subject,
                &prev_hash,
                &hash,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(SignatureRecord {
            seq,
            at,
            signature: s.clone(),
            prev_hash,
            hash,
        })
    }

    async fn signatures(
        &self,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<SignatureRecord>, JournalError> {
        let rows = query(
            &self.client().await?,
            &format!(
                "SELECT {TRAIL_COLUMNS} FROM signature_trail WHERE seq > $1 ORDER BY seq LIMIT $2"
            ),
            &[
                &i64::try_from(after_seq).unwrap_or(i64::MAX),
                &i64::try_from(limit).unwrap_or(i64::MAX),
            ],
        )
        .await?;
        rows.iter().map(trail_entry).collect()
    }
}

#[async_trait::async_trait]
impl InstanceRegistry for PostgresJournal {
    async fn report_instance(&self, me: &InstanceRecord) -> Result<(), JournalError> {
        let serves = serde_json::to_string(&me.serves).unwrap_or_else(|_| "null".into());
        execute(
            &self.client().await?,
            "INSERT INTO instances (id, host, version, plugins, serves, health, started_at, last_seen)
             VALUES ($1, $2, $3, $4, $5, $6, $7, certconn_now_ms())
             ON CONFLICT (id) DO UPDATE SET host = $2, version = $3, plugins = $4, serves = $5,
                 health = $6, started_at = $7, last_seen = certconn_now_ms()",
            &[
                &me.id,
                &me.host,
                &me.version,
                &me.plugins.to_string(),
                &serves,
                &me.health,
                &me.started_at,
            ],
        )
        .await?;
        Ok(())
    }

    async fn instances(&self) -> Result<(Vec<InstanceRecord>, i64), JournalError> {
        let rows = query(
            &self.client().await?,
            "SELECT id, host, version, plugins, serves, health, started_at, last_seen,
                    certconn_now_ms()
             FROM instances ORDER BY id",
            &[],
        )
        .await?;
        let mut now = None;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            now = Some(r.try_get::<_, i64>(8)?);
            out.push(instance_record(
                r.try_get(0)?,
                r.try_get(1)?,
                r.try_get(2)?,
                &r.try_get::<_, String>(3)?,
                &r.try_get::<_, String>(4)?,
                r.try_get(5)?,
                r.try_get(6)?,
                r.try_get(7)?,
            )?);
        }
        let now = match now {
            Some(now) => now,
            None => query(&self.client().await?, "SELECT certconn_now_ms()", &[])
                .await?
                .first()
                .map(|r| r.try_get(0))
                .transpose()?
                .unwrap_or_else(super::now_ms),
        };
        Ok((out, now))
    }

    async fn forget_instance(&self, id: &str) -> Result<bool, JournalError> {
        Ok(execute(
            &self.client().await?,
            "DELETE FROM instances WHERE id = $1",
            &[&id],
        )
        .await?
            == 1)
    }

    async fn record_decision(
        &self,
        subject: &str,
        action: &str,
        made_by: &str,
    ) -> Result<i64, JournalError> {
        let rows = query(
            &self.client().await?,
            "INSERT INTO fleet_decisions (subject, action, made_by, made_at)
             VALUES ($1, $2, $3, certconn_now_ms()) RETURNING seq",
            &[&subject, &action, &made_by],
        )
        .await?;
        let seq = rows.first().map(|r| r.try_get(0)).transpose()?.unwrap_or(0);
        self.all_changed();
        Ok(seq)
    }

    async fn decisions_after(&self, seq: i64) -> Result<Vec<FleetDecision>, JournalError> {
        let rows = query(
            &self.client().await?,
            "SELECT seq, subject, action, made_by, made_at FROM fleet_decisions
             WHERE seq > $1 ORDER BY seq",
            &[&seq],
        )
        .await?;
        rows.iter()
            .map(|r| {
                Ok(FleetDecision {
                    seq: r.try_get(0)?,
                    subject: r.try_get(1)?,
                    action: r.try_get(2)?,
                    made_by: r.try_get(3)?,
                    made_at: r.try_get(4)?,
                })
            })
            .collect()
    }
}

#[async_trait::async_trait]
impl SharedKeys for PostgresJournal {
    async fn put_shared_key(&self, name: &str, sealed: &[u8]) -> Result<(), JournalError> {
        execute(
            &self.client().await?,
            "INSERT INTO shared_keys (name, sealed, created_at) VALUES ($1, $2, certconn_now_ms())
             ON CONFLICT (name) DO UPDATE SET sealed = $2, created_at = certconn_now_ms()",
            &[&name, &sealed],
        )
        .await?;
        Ok(())
    }

    async fn shared_key(&self, name: &str) -> Result<Option<Vec<u8>>, JournalError> {
        query_opt(
            &self.client().await?,
            "SELECT sealed FROM shared_keys WHERE name = $1",
            &[&name],
        )
        .await?
        .map(|r| r.try_get(0).map_err(JournalError::from))
        .transpose()
    }

    async fn remove_shared_key(&self, name: &str) -> Result<(), JournalError> {
        execute(
            &self.client().await?,
            "DELETE FROM shared_keys WHERE name = $1",
            &[&name],
        )
        .await?;
        Ok(())
    }
}

impl Journal for PostgresJournal {
    fn schema_version(&self) -> i64 {
        self.inner.version
    }

    fn location(&self) -> String {
        self.inner.location.clone()
    }
}

#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
mod tests {
    use super::*;

    crate::journal_behaviour_tests!(testing::factory);

    #[tokio::test]
    async fn instances_starting_together_migrate_once() {
        let db = testing::fresh_database().await;
        let opens = (0..4).map(|i| {
            let config = db.config();
            async move { PostgresJournal::open(&config, &format!("i{i}"), false).await }
        });
        for j in futures_join_all(opens).await {
            let j = j.unwrap_or_else(|e| panic!("{}", crate::report::chain(&e)));
            assert_eq!(j.schema_version(), schema::POSTGRES_CURRENT);
        }
        let rows = db.psql("SELECT version FROM certconn_schema ORDER BY version");
        let expected: Vec<String> = (1..=schema::POSTGRES_CURRENT)
            .map(|v| v.to_string())
            .collect();
        assert_eq!(rows, expected);
    }

    /// A database whose default is `synchronous_commit = off` (as the test cluster's is, with
    /// `fsync = off`: `scripts/pg-cluster`): every connection of the journal's pool commits
    /// synchronously all the same, and what the defaults would cost is named for
    /// `check-config`.
    #[tokio::test]
    async fn every_connection_commits_synchronously_whatever_the_database_default() {
        let db = testing::migrated_database().await;
        let set_default = |level: &str| {
            db.psql(&format!(
                "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET synchronous_commit = {level}', \
                 current_database()); END $$"
            ))
        };
        set_default("off");
        assert_eq!(db.psql("SHOW synchronous_commit"), ["off"]);
        let fsync_off = db.psql("SHOW fsync") == ["off"];
        let torn_pages = db.psql("SHOW full_page_writes") == ["off"];
        let j = PostgresJournal::open(&db.config(), "a", false)
            .await
            .unwrap_or_else(|e| panic!("{}", crate::report::chain(&e)));
        // Three connections held at once: the pool makes a new one for each.
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(
                j.client()
                    .await
                    .unwrap_or_else(|e| panic!("{}", crate::report::chain(&e))),
            );
        }
        for c in &clients {
            let level: String = c
                .query_one("SHOW synchronous_commit", &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(level, "on");
        }
        drop(clients);
        let look = PostgresJournal::look(&db.config(), false)
            .await
            .unwrap_or_else(|e| panic!("{}", crate::report::chain(&e)));
        assert_eq!(look.location, j.location());
        assert_eq!(look.schema_version, Some(schema::POSTGRES_CURRENT));
        // A database certconn has not written to yet: no version, and no error.
        let fresh = testing::fresh_database().await;
        let look_fresh = PostgresJournal::look(&fresh.config(), false)
            .await
            .unwrap_or_else(|e| panic!("{}", crate::report::chain(&e)));
        assert_eq!(look_fresh.schema_version, None);
        let defaults = look.commit;
        let mut expected = Vec::new();
        if fsync_off {
            expected.push(durability::Weakness::NoFsync);
        }
        if torn_pages {
            expected.push(durability::Weakness::TornPages);
        }
        expected.push(durability::Weakness::AsynchronousDefault);
        assert_eq!(defaults.weaknesses(), expected);
        // A stronger level chosen for the database is kept, not lowered to `on`.
        set_default("remote_apply");
        let k = PostgresJournal::open(&db.config(), "b", false)
            .await
            .unwrap();
        let level: String = k
            .client()
            .await
            .unwrap()
            .query_one("SHOW synchronous_commit", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(level, "remote_apply");
    }

    /// Schema 2 takes each certificate's plugin version from its job's result where one is
    /// kept and reads as JSON; the others stay without one, and the upgrade does not fail.
    #[tokio::test]
    async fn the_ledger_learns_the_plugin_versions_of_certificates_issued_before_it_kept_them() {
        let db = testing::migrated_database().await;
        let config = db.config();
        db.psql(
            "ALTER TABLE certificates DROP COLUMN backend_version;
             DROP INDEX jobs_created;
             DROP INDEX certificates_revoked;
             ALTER TABLE certificates ADD CONSTRAINT certificates_job_id_fkey
                 FOREIGN KEY (job_id) REFERENCES jobs(id);
             DELETE FROM certconn_schema WHERE version >= 2;
             INSERT INTO jobs (id, source, idempotency_key, kind, state, request, next_run_at,
                               created_at, updated_at)
                 VALUES ('j1', 'api', 'k1', 'issue', 'succeeded', '{}', 0, 1, 2),
                        ('j2', 'api', 'k2', 'issue', 'succeeded', '{}', 0, 1, 2),
                        ('j3', 'api', 'k3', 'issue', 'succeeded', '{}', 0, 1, 2);
             INSERT INTO outbox (job_id, result, created_at)
                 VALUES ('j1', '{\"serial\":\"0a\",\"backend_version\":\"local-ca 1.0.0 (0123abcd)\"}', 2),
                        ('j2', 'not JSON', 2);
             INSERT INTO certificates (backend, serial, job_id, issuer, not_after, certificate)
                 VALUES ('local', '0a', 'j1', '\\x30', 99, '\\x3000'),
                        ('local', '0b', 'j2', '\\x30', 99, '\\x3000'),
                        ('local', '0c', 'j3', '\\x30', 99, '\\x3000');",
        );
        let j = PostgresJournal::open(&config, "a", false).await.unwrap();
        assert_eq!(j.schema_version(), schema::POSTGRES_CURRENT);
        crate::journal::behaviour::versions_learned_from_results(&j).await;
    }

    /// With thousands of jobs queued, a lease walks the due index to the first job instead of
    /// reading and sorting the whole table.
    #[tokio::test]
    async fn a_lease_reads_the_due_index_not_the_whole_queue() {
        let db = testing::migrated_database().await;
        db.psql(
            "INSERT INTO jobs (id, source, idempotency_key, kind, state, request, next_run_at,
                               created_at, updated_at)
                 SELECT 'q' || g, 'api', 'k' || g, 'issue', 'queued', '{}',
                        certconn_now_ms() - 100000 + g, 0, 0
                 FROM generate_series(1, 3000) g;
             ANALYZE jobs;",
        );
        let plan = db
            .psql(&format!(
                "PREPARE lease (TEXT, TEXT, BIGINT, TEXT[]) AS {LEASE_NEXT_DUE};
                 EXPLAIN (COSTS OFF) EXECUTE lease ('o', 't', 60000, NULL);"
            ))
            .join("\n");
        assert!(plan.contains("Index Scan using jobs_due"), "{plan}");
        assert!(!plan.contains("Seq Scan on jobs"), "{plan}");
    }

    /// A listing of jobs, of one state or of all, walks its index newest first even with the
    /// generic plan PostgreSQL may cache for a prepared statement.
    #[tokio::test]
    async fn each_listing_of_jobs_walks_its_index_even_with_a_generic_plan() {
        let db = testing::migrated_database().await;
        db.psql(
            "INSERT INTO jobs (id, source, idempotency_key, kind, state, request, next_run_at,
                               created_at, updated_at)
                 SELECT 'j' || g, 'api', 'k' || g, 'issue',
                        CASE WHEN g % 1000 = 0 THEN 'dead' ELSE 'succeeded' END, '{}', 0, g, g
                 FROM generate_series(1, 20000) g;
             ANALYZE jobs;",
        );
        let (every, one_state) = (
            "Index Scan Backward using jobs_created",
            "Index Scan Backward using jobs_state_created",
        );
        // Nearly every job succeeded: walking every job in order is as good as walking theirs.
        for (state, walks) in [
            (None, &[every][..]),
            (Some(JobState::Dead), &[one_state][..]),
            (Some(JobState::Succeeded), &[every, one_state][..]),
        ] {
            let statement = list_query(state);
            if let Some(state) = state {
                assert!(statement.contains(&format!("'{}'", state.as_str())));
            }
            let plan = db
                .psql(&format!(
                    "SET plan_cache_mode = force_generic_plan;
                     PREPARE listing (BIGINT) AS {statement};
                     EXPLAIN (COSTS OFF) EXECUTE listing (50);"
                ))
                .join("\n");
            assert!(
                walks.iter().any(|walk| plan.contains(walk)),
                "{statement}: {plan}"
            );
            assert!(!plan.contains("Seq Scan"), "{statement}: {plan}");
        }
    }

    /// Each listing of the ledger walks its index in expiry order even with the generic plan
    /// PostgreSQL may cache for a prepared statement. One statement for every shape, its
    /// conditions bound, had a generic plan walking `certificates_not_after` past every
    /// certificate: 386 ms for a listing of those expiring soon with a million certificates
    /// and none expiring.
    #[tokio::test]
    async fn each_listing_of_the_ledger_walks_its_index_even_with_a_generic_plan() {
        let db = testing::migrated_database().await;
        db.psql(
            "INSERT INTO certificates (backend, serial, job_id, issuer, not_after, certificate,
                                       revoked_at, revocation_reason)
                 SELECT 'local', to_hex(g), 'j' || g, '\\x30', 2000000000 + g, '\\x3000',
                        CASE WHEN g % 1000 = 0 THEN 1 END, CASE WHEN g % 1000 = 0 THEN 'superseded' END
                 FROM generate_series(1, 20000) g;
             ANALYZE certificates;",
        );
        for (selection, walk) in [
            (
                LedgerSelection::Revoked,
                "Index Scan using certificates_revoked",
            ),
            (
                LedgerSelection::ExpiringBefore(1),
                "Index Cond: (not_after < $4)",
            ),
        ] {
            let (types, args) = match selection {
                LedgerSelection::ExpiringBefore(_) => {
                    ("TEXT, BYTEA, BIGINT, BIGINT", "NULL, NULL, 50, 1")
                }
                _ => ("TEXT, BYTEA, BIGINT", "NULL, NULL, 50"),
            };
            let plan = db
                .psql(&format!(
                    "SET plan_cache_mode = force_generic_plan;
                     PREPARE listing ({types}) AS {};
                     EXPLAIN (COSTS OFF) EXECUTE listing ({args});",
                    ledger_listing(selection)
                ))
                .join("\n");
            assert!(plan.contains(walk), "{selection:?}: {plan}");
            assert!(!plan.contains("Seq Scan"), "{selection:?}: {plan}");
        }
    }

    /// A replay check drops expired values through the expiry index, not by reading the whole
    /// window.
    #[tokio::test]
    async fn a_replay_check_reads_only_the_expired_values() {
        let db = testing::migrated_database().await;
        db.psql(
            "INSERT INTO replay_window (scope, value, expires_at)
                 SELECT 'scep', 'v' || g, certconn_now_ms() + 600000 + g
                 FROM generate_series(1, 5000) g;
             ANALYZE replay_window;",
        );
        let plan = db
            .psql(&format!("EXPLAIN (COSTS OFF) {FORGET_EXPIRED_VALUES}"))
            .join("\n");
        assert!(plan.contains("replay_window_expiry"), "{plan}");
        assert!(!plan.contains("Seq Scan"), "{plan}");
    }

    /// Another instance's change wakes only the waiters of the jobs it names; one that names
    /// none wakes them all.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_change_on_another_instance_wakes_only_that_jobs_waiters() {
        let db = testing::fresh_database().await;
        let config = db.config();
        let a = PostgresJournal::open(&config, "a", false).await.unwrap();
        let b = PostgresJournal::open(&config, "b", false).await.unwrap();
        // Whether `rx` is told of a change it has not seen within `secs`.
        let within = |rx: &tokio::sync::watch::Receiver<()>, secs| {
            let mut rx = rx.clone();
            async move {
                tokio::time::timeout(Duration::from_secs(secs), rx.changed())
                    .await
                    .is_ok()
            }
        };
        // Until a listens: b tells of a change until a hears it.
        let up = a.inner.waiters.subscribe("f0");
        let mut heard = false;
        for _ in 0..100 {
            b.job_changed("f0");
            if within(&up, 1).await {
                heard = true;
                break;
            }
        }
        assert!(heard, "a never heard of b's changes");

        let mut waiting = a.inner.waiters.subscribe("a0");
        let other = a.inner.waiters.subscribe("b0");
        b.job_changed("b0");
        assert!(within(&other, 30).await, "b's change of b0 never came");
        assert!(
            !waiting.has_changed().unwrap(),
            "a's waiter of a0 was woken by a change of b0"
        );
        b.job_changed("a0");
        assert!(within(&waiting, 30).await, "b's change of a0 never came");
        waiting.borrow_and_update();
        b.all_changed();
        assert!(
            within(&waiting, 30).await,
            "a change naming no job did not wake a0's waiter"
        );
    }

    #[tokio::test]
    async fn a_journal_newer_than_this_binary_is_refused() {
        let db = testing::migrated_database().await;
        db.psql(&format!(
            "INSERT INTO certconn_schema VALUES ({})",
            schema::POSTGRES_CURRENT + 1
        ));
        let e = PostgresJournal::open(&db.config(), "a", false)
            .await
            .unwrap_err();
        assert!(matches!(e, JournalError::TooNew { .. }), "{e}");
    }

    #[tokio::test]
    async fn a_job_whose_record_cannot_be_read_is_failed_and_the_queue_goes_on() {
        let db = testing::fresh_database().await;
        let j = PostgresJournal::open(&db.config(), "a", false)
            .await
            .unwrap();
        let ids = crate::journal::behaviour::three_jobs(&j).await;
        db.psql(&format!(
            "UPDATE jobs SET request = 'not JSON', next_run_at = next_run_at - 2000 WHERE id = '{}';
             UPDATE jobs SET kind = 'renew-v9', next_run_at = next_run_at - 1000 WHERE id = '{}';",
            ids[0], ids[1]
        ));
        crate::journal::behaviour::unreadable_jobs_are_failed_and_the_queue_goes_on(&j, &ids).await;
        let errors = db
            .psql(&format!(
                "SELECT last_error FROM jobs WHERE id IN ('{}', '{}') ORDER BY next_run_at",
                ids[0], ids[1]
            ))
            .join("\n");
        assert!(
            errors.contains("cannot be read (expected ident at line 1 column 2)"),
            "{errors}"
        );
        assert!(errors.contains("unknown job kind \"renew-v9\""), "{errors}");
    }

    #[tokio::test]
    async fn an_edited_state_is_an_error_not_a_guess() {
        let db = testing::fresh_database().await;
        let j = PostgresJournal::open(&db.config(), "a", false)
            .await
            .unwrap();
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
        db.psql(&format!(
            "UPDATE jobs SET state = 'paused' WHERE id = '{}'",
            job.id
        ));
        crate::journal::behaviour::an_edited_state_is_shown_not_guessed(&j, &job.id).await;
    }

    #[tokio::test]
    async fn an_unreachable_database_is_reported_with_where_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let config = JournalConfig {
            url: Some(format!(
                "postgres://certconn@{}:5432/fleet",
                percent_encoding::utf8_percent_encode(
                    &dir.path().display().to_string(),
                    percent_encoding::NON_ALPHANUMERIC
                )
            )),
            ..JournalConfig::default()
        };
        let e = PostgresJournal::open(&config, "a", false)
            .await
            .unwrap_err();
        let text = crate::report::chain(&e);
        assert!(text.contains("postgres://certconn@"), "{text}");
        assert!(text.contains("/fleet"), "{text}");
    }

    /// TLS against a real server: the server is always verified, and the login is a client
    /// certificate (PostgreSQL's `cert`) or a password from a file; secrets never show.
    #[tokio::test]
    async fn tls_logins_by_certificate_or_password_with_the_server_verified() {
        let cluster = testing::OwnCluster::tls();
        cluster.psql("CREATE ROLE certconn LOGIN; CREATE ROLE pwuser LOGIN PASSWORD 'pw-secret'");
        // Each role owns its database (PostgreSQL 15 lets only the owner create in `public`).
        cluster.psql("CREATE DATABASE certconn OWNER certconn");
        cluster.psql("CREATE DATABASE pwuser OWNER pwuser");
        let tls = cluster.dir.join("tls");
        let url = |user: &str| {
            format!(
                "postgres://{user}@127.0.0.1:{}/{user}?sslmode=require",
                cluster.port
            )
        };
        let with = |user: &str| JournalConfig {
            url: Some(url(user)),
            trust_anchors: Some(tls.join("ca.pem").into()),
            ..JournalConfig::default()
        };
        let works = |j: PostgresJournal| async move {
            let request = serde_json::json!({});
            j.enqueue(NewJob {
                source: "api",
                idempotency_key: "k",
                kind: JobKind::Issue,
                request: &request,
                route: None,
            })
            .await
            .unwrap_or_else(|e| panic!("{}", crate::report::chain(&e)));
        };
        // A client certificate.
        let by_certificate = JournalConfig {
            client_certificate: Some(tls.join("client.pem").into()),
            client_key: Some(tls.join("client.key").into()),
            ..with("certconn")
        };
        let j = PostgresJournal::open(&by_certificate, "a", false)
            .await
            .unwrap_or_else(|e| panic!("{}", crate::report::chain(&e)));
        works(j.clone()).await;
        let ssl = cluster.psql(
            "SELECT DISTINCT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.usename = 'certconn'",
        );
        assert_eq!(ssl, ["t"]);
        drop(j);
        // Without it, the same role is refused.
        let e = PostgresJournal::open(&with("certconn"), "a", false)
            .await
            .unwrap_err();
        assert!(matches!(e, JournalError::Database { .. }), "{e}");
        // A password from a file; a wrong one is refused and never shown.
        let dir = tempfile::tempdir().unwrap();
        let password = dir.path().join("pw");
        std::fs::write(&password, "pw-secret\n").unwrap();
        std::fs::set_permissions(
            &password,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let by_password = JournalConfig {
            password_file: Some(password.clone().into()),
            ..with("pwuser")
        };
        works(
            PostgresJournal::open(&by_password, "b", false)
                .await
                .unwrap(),
        )
        .await;
        std::fs::write(&password, "wrong-secret\n").unwrap();
        let e = crate::report::chain(
            &PostgresJournal::open(&by_password, "b", false)
                .await
                .unwrap_err(),
        );
        assert!(e.contains("password"), "{e}");
        assert!(
            !e.contains("wrong-secret") && !e.contains("pw-secret"),
            "{e}"
        );
        // A server whose certificate is not under the anchors is refused.
        let other_ca = dir.path().join("other-ca.pem");
        let made = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args(["-nodes", "-days", "1", "-subj", "/CN=another CA", "-keyout"])
            .arg(dir.path().join("other.key"))
            .arg("-out")
            .arg(&other_ca)
            .output()
            .unwrap();
        assert!(made.status.success());
        let e = crate::report::chain(
            &PostgresJournal::open(
                &JournalConfig {
                    trust_anchors: Some(other_ca.into()),
                    ..by_certificate.clone()
                },
                "c",
                false,
            )
            .await
            .unwrap_err(),
        );
        assert!(e.to_lowercase().contains("certificate"), "{e}");
    }

    async fn futures_join_all<F: std::future::Future + Send + 'static>(
        futures: impl IntoIterator<Item = F>,
    ) -> Vec<F::Output>
    where
        F::Output: Send + 'static,
    {
        let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.expect("task"));
        }
        out
    }
}
