//! What the journal keeps and hands back.

use serde::{Deserialize, Serialize};

use super::Password;

/// Serial numbers as OpenSSL prints them: lowercase hex without DER sign-padding zeros.
pub fn serial_hex(bytes: &[u8]) -> String {
    let trimmed = match bytes.iter().position(|b| *b != 0) {
        Some(i) => &bytes[i..],
        None => &bytes[bytes.len().saturating_sub(1)..],
    };
    hex::encode(trimmed)
}

/// Where a job is in its life.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for a worker (first run or a retry after backoff).
    Queued,
    /// Leased by a worker.
    Running,
    /// The CA has not decided; polled at `next_run_at`.
    Pending,
    Succeeded,
    /// Permanently refused (bad request, CA rejection).
    Failed,
    /// Dead-lettered after exhausting its attempts.
    Dead,
}

impl JobState {
    pub const ALL: [JobState; 6] = [
        Self::Queued,
        Self::Running,
        Self::Pending,
        Self::Succeeded,
        Self::Failed,
        Self::Dead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Pending => "pending",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// A job in a terminal state never runs again (unless an operator retries it).
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Dead)
    }

    /// Settled: nothing will happen to it without the CA or an operator (ended, or pending).
    pub fn is_settled(self) -> bool {
        self.is_terminal() || self == Self::Pending
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kinds of work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    Issue,
    Revoke,
    /// Deliver an imported PFX (S/MIME).
    Import,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Issue => "issue",
            Self::Revoke => "revoke",
            Self::Import => "import",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "issue" => Some(Self::Issue),
            "revoke" => Some(Self::Revoke),
            "import" => Some(Self::Import),
            _ => None,
        }
    }
}

/// One job as the journal knows it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct JobRecord {
    pub id: String,
    /// Where the job came from: `api`, `cli`, `scep`.
    pub source: String,
    pub idempotency_key: String,
    pub kind: JobKind,
    pub state: JobState,
    /// The request as submitted (an import's PFX and password reduced to size and SHA-256).
    #[schema(value_type = Object)]
    pub request: serde_json::Value,
    pub attempts: u32,
    /// The backend instance that took it.
    pub backend: Option<String>,
    /// Why the last attempt did not succeed.
    pub last_error: Option<String>,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds.
    pub updated_at: i64,
    /// Unix milliseconds: when a queued or pending job runs next.
    pub next_run_at: i64,
    #[serde(skip)]
    pub poll_token: Option<String>,
}

impl JobRecord {
    /// Job `id` as the journal records `new` when it enqueues it at `at` (unix milliseconds):
    /// queued, due at once, not yet attempted.
    pub fn queued(id: String, new: &super::NewJob<'_>, at: i64) -> Self {
        Self {
            id,
            source: new.source.to_owned(),
            idempotency_key: new.idempotency_key.to_owned(),
            kind: new.kind,
            state: JobState::Queued,
            request: new.request.clone(),
            attempts: 0,
            backend: None,
            last_error: None,
            created_at: at,
            updated_at: at,
            next_run_at: at,
            poll_token: None,
        }
    }
}

/// A job the journal holds but cannot read: its request is not JSON, or its kind or state is
/// one this version does not know (as after going back to an older certconn). A listing shows
/// what it can of it instead of failing as a whole; the next lease that meets it fails it
/// ([`super::set_aside_reason`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct UnreadableJob {
    pub id: String,
    pub source: String,
    /// As stored: it may be a state this version does not know.
    pub state: String,
    pub last_error: Option<String>,
    /// Unix milliseconds.
    pub updated_at: i64,
    /// What cannot be read.
    pub reason: String,
}

/// An outcome owed to the source a job came from ([`super::Outbox::undelivered`]): what a
/// report of it needs, and no more. Neither the request nor the kind is read, so a job whose
/// request cannot be read (the lease fails it, [`super::set_aside_reason`]) is reported like
/// any other failure instead of staying owed for ever.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwedOutcome {
    pub id: String,
    /// The source's own name for the work (the upstream service's item id).
    pub idempotency_key: String,
    /// Succeeded, failed or dead.
    pub state: JobState,
    pub last_error: Option<String>,
}

/// Jobs as a listing reads them ([`super::JobStore::list`]).
#[derive(Clone, Debug, Default)]
pub struct JobListing {
    pub jobs: Vec<JobRecord>,
    /// The listed rows that cannot be read, in the listing's order.
    pub unreadable: Vec<UnreadableJob>,
}

impl JobListing {
    /// The listing of `rows`, each read as a job or found unreadable, in their order.
    pub(crate) fn of<E>(
        rows: impl IntoIterator<Item = Result<Result<JobRecord, UnreadableJob>, E>>,
    ) -> Result<Self, E> {
        let mut listing = Self::default();
        for row in rows {
            match row? {
                Ok(job) => listing.jobs.push(job),
                Err(unreadable) => listing.unreadable.push(unreadable),
            }
        }
        Ok(listing)
    }
}

#[cfg(test)]
impl JobRecord {
    /// A running job of `kind` with `request` (id `job-1`, from the API), for tests that need
    /// a record without a journal.
    pub(crate) fn running(kind: JobKind, request: serde_json::Value) -> Self {
        Self {
            id: "job-1".into(),
            source: "api".into(),
            idempotency_key: "k".into(),
            kind,
            state: JobState::Running,
            request,
            attempts: 1,
            backend: None,
            last_error: None,
            created_at: 0,
            updated_at: 0,
            next_run_at: 0,
            poll_token: None,
        }
    }
}

/// A job to record.
#[derive(Clone, Copy, Debug)]
pub struct NewJob<'a> {
    pub source: &'a str,
    pub idempotency_key: &'a str,
    pub kind: JobKind,
    pub request: &'a serde_json::Value,
    /// The backends that may run it, in the order they are tried; `None`: any. An instance
    /// of a fleet takes only jobs with a backend it serves ([`super::JobStore::serve_only`]).
    pub route: Option<&'a [String]>,
}

/// One worker's hold on one job: every write about the job while it runs is fenced on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub job_id: String,
    /// Random, fresh for every lease of the job.
    pub token: String,
}

/// A job taken by a worker, with its lease.
#[derive(Clone, Debug)]
pub struct Leased {
    pub job: JobRecord,
    pub lease: Lease,
}

/// A certificate certconn issued, for the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedRecord {
    pub backend: String,
    pub serial: String,
    pub issuer_der: Vec<u8>,
    /// Seconds since the epoch.
    pub not_after: i64,
    pub certificate_der: Vec<u8>,
    /// The plugin version that issued it (`name version (sha256 prefix)`): kept in the ledger,
    /// which outlives the job's result.
    pub backend_version: Option<String>,
}

/// A revocation to record in the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub backend: String,
    pub serial: String,
    /// RFC 5280 reason, as the API names it (`key-compromise`).
    pub reason: String,
}

/// How a leased job ends successfully.
#[derive(Debug, Default)]
pub struct Completion<'a> {
    pub backend: &'a str,
    /// The result as the outbox keeps it (JSON).
    pub result: &'a str,
    /// A PFX password handed out once by [`super::Outbox::take_result`], then erased.
    pub password: Option<&'a Password>,
    pub issued: Option<&'a IssuedRecord>,
    pub revoked: Option<&'a Revocation>,
    /// Replaces the stored request (its secrets erased now that the job ended).
    pub request: Option<&'a serde_json::Value>,
}

/// A certificate in the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    pub backend: String,
    pub serial: String,
    pub job_id: String,
    pub issuer_der: Vec<u8>,
    pub not_after: i64,
    pub certificate_der: Vec<u8>,
    /// When (unix ms) and why it was revoked.
    pub revoked: Option<(i64, String)>,
    /// The plugin version that issued it; `None` for certificates recorded before the ledger
    /// kept it (journal schema 7 on SQLite, 2 on PostgreSQL).
    pub backend_version: Option<String>,
}

/// A finished job's result as the outbox hands it out.
#[derive(Debug)]
pub struct StoredResult {
    /// The result JSON the job completed with.
    pub result: String,
    /// The PFX password, the first time only.
    pub password: Option<Password>,
}

/// Which certificates a ledger listing returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerQuery {
    /// Only revoked certificates.
    pub revoked: bool,
    /// Only certificates not revoked that expire before this time (seconds since the epoch).
    pub expiring_before: Option<i64>,
    pub backend: Option<String>,
    /// Only certificates of this issuer (DER Name).
    pub issuer_der: Option<Vec<u8>>,
    /// At most this many, soonest expiry first.
    pub limit: usize,
}

/// What a ledger listing selects besides its backend and issuer, each shape a query of its own
/// in each journal, walking an index in expiry order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerSelection {
    Every,
    Revoked,
    /// Not revoked, expiring before this time (seconds since the epoch).
    ExpiringBefore(i64),
    /// Revoked and expiring: a certificate that expires soon is one not revoked.
    Nothing,
}

impl LedgerQuery {
    pub fn selection(&self) -> LedgerSelection {
        match (self.revoked, self.expiring_before) {
            (false, None) => LedgerSelection::Every,
            (true, None) => LedgerSelection::Revoked,
            (false, Some(before)) => LedgerSelection::ExpiringBefore(before),
            (true, Some(_)) => LedgerSelection::Nothing,
        }
    }
}

/// One line of a CRL: a revoked serial, without the certificate (a CRL may have 100 000).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedSerial {
    /// Lowercase hex, as the ledger keys it.
    pub serial: String,
    /// Unix ms.
    pub revoked_at: i64,
    /// As the API names it (`key-compromise`).
    pub reason: String,
}

/// What changed in the ledger's revocations of one issuer, cheaply: when it differs from the
/// last one seen, a CRL must be made again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RevocationMark {
    pub revoked: i64,
    pub latest_revocation: i64,
    pub latest_change: i64,
}

/// A revocation's reason changed by an operator: kept for audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReasonChange {
    pub backend: String,
    pub serial: String,
    pub old_reason: String,
    pub new_reason: String,
    /// Who asked (the API's caller, the CLI's user).
    pub changed_by: String,
    /// Unix ms.
    pub changed_at: i64,
}

/// One instance of certconn on this journal, as it last reported itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstanceRecord {
    /// The instance id (`<data_dir>/instance-id`).
    pub id: String,
    pub host: String,
    /// The certconn version it runs.
    pub version: String,
    /// Its backends and the plugin versions serving them (as the upstream heartbeat reports):
    /// `backend`, `plugin`, `version`, `state`.
    #[schema(value_type = Vec<Object>)]
    pub plugins: serde_json::Value,
    /// The backends it runs jobs for (`fleet.serves`); `None`: every one it configures.
    pub serves: Option<Vec<String>>,
    /// `ok`, or `degraded` when a backend it configures is not serving.
    pub health: String,
    /// Unix ms, the journal's clock.
    pub started_at: i64,
    /// Unix ms, the journal's clock: its last report.
    pub last_seen: i64,
}

/// An instance row as both journals store it (plugins and serves as JSON text).
#[allow(clippy::too_many_arguments)]
pub(crate) fn instance_record(
    id: String,
    host: String,
    version: String,
    plugins: &str,
    serves: &str,
    health: String,
    started_at: i64,
    last_seen: i64,
) -> Result<InstanceRecord, super::JournalError> {
    let corrupt = |e: serde_json::Error| super::JournalError::Corrupt {
        id: format!("instance {id}"),
        reason: e.to_string(),
    };
    Ok(InstanceRecord {
        plugins: serde_json::from_str(plugins).map_err(corrupt)?,
        serves: serde_json::from_str(serves).map_err(corrupt)?,
        id,
        host,
        version,
        health,
        started_at,
        last_seen,
    })
}

/// An operator's decision about a plugin or backend, taken on one instance and followed by
/// every instance of the fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FleetDecision {
    /// Its place in the order decisions were made.
    pub seq: i64,
    /// The plugin file (`unload`, `load`, `rollback`) or backend instance (`drain`,
    /// `undrain`) it is about.
    pub subject: String,
    pub action: String,
    /// The instance where the operator took it.
    pub made_by: String,
    /// Unix ms, the journal's clock.
    pub made_at: i64,
}
