//! `[journal]`: where the journal is. Absent (or without `url`), it is SQLite in the data
//! directory, the embedded default. With `url = "postgres://…"`, it is a PostgreSQL database
//! that every instance of a fleet shares.

use serde::Deserialize;

use crate::config::ConfigPath;

/// How many connections an instance holds to PostgreSQL by default: the workers' leases and
/// outcomes, the API's reads, and one more for `LISTEN` (not pooled). 100 instances × 5 is 500
/// connections; raise PostgreSQL's `max_connections`, or lower this, to fit.
pub const DEFAULT_POOL_SIZE: usize = 4;

/// The `[journal]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalConfig {
    /// `postgres://user@host:port/database[?sslmode=require]`. Without a password: give it in
    /// `password_env` or `password_file`, or use a client certificate.
    pub url: Option<String>,
    /// The environment variable holding the database password.
    pub password_env: Option<String>,
    /// A file (readable only by certconn's account) holding the database password.
    pub password_file: Option<ConfigPath>,
    /// The CAs (PEM) the database server's certificate must chain to; the system store when
    /// absent. TLS is used when the URL says `sslmode=require` (or `prefer`), and the server's
    /// certificate and name are always verified then.
    pub trust_anchors: Option<ConfigPath>,
    /// A client certificate (PEM chain) for PostgreSQL's `cert` authentication, with
    /// `client_key` (PKCS#8 PEM, readable only by certconn's account).
    pub client_certificate: Option<ConfigPath>,
    pub client_key: Option<ConfigPath>,
    /// Connections in this instance's pool (1 to 64). The `LISTEN` connection is one more.
    #[serde(
        default = "default_pool_size",
        deserialize_with = "crate::config::in_range::<_, usize, 1, 64>"
    )]
    pub pool_size: usize,
    /// Milliseconds between looks at the journal when no notification came: the longest a
    /// job another instance enqueued waits, were `LISTEN` unavailable (behind a
    /// transaction-pooling proxy). 50 to 60 000.
    #[serde(
        default = "default_poll_ms",
        deserialize_with = "crate::config::in_range::<_, u64, 50, 60000>"
    )]
    pub poll_ms: u64,
    /// Days a finished job's result (the PFX, the certificates) stays in the journal after the
    /// job ended; 0 keeps results forever. The job and its ledger entry stay either way, and a
    /// result owed to the upstream service stays until delivered. See [`super::retention`].
    #[serde(
        default = "default_keep_results_days",
        deserialize_with = "crate::config::in_range::<_, u32, 0, 36500>"
    )]
    pub keep_results_days: u32,
    /// Days a finished job stays in the journal after it ended; 0 keeps jobs forever. A job
    /// stays at least as long as its result (`keep_results_days`; when that is 0, jobs are
    /// kept forever too) and until its outcome is delivered; its certificates stay in the
    /// ledger for ever. Its idempotency key is forgotten with it.
    #[serde(
        default = "default_keep_jobs_days",
        deserialize_with = "crate::config::in_range::<_, u32, 0, 36500>"
    )]
    pub keep_jobs_days: u32,
}

/// Half a year of history for operators (listings, a job's reason), while the journal, and
/// every count over its jobs, stays bounded by the work of that half year.
fn default_keep_jobs_days() -> u32 {
    180
}

/// A month: long enough for a client to come back for its result, short enough that the
/// journal does not keep every device key it ever made.
fn default_keep_results_days() -> u32 {
    30
}

fn default_pool_size() -> usize {
    DEFAULT_POOL_SIZE
}

fn default_poll_ms() -> u64 {
    500
}

impl Default for JournalConfig {
    fn default() -> Self {
        Self {
            url: None,
            password_env: None,
            password_file: None,
            trust_anchors: None,
            client_certificate: None,
            client_key: None,
            pool_size: DEFAULT_POOL_SIZE,
            poll_ms: default_poll_ms(),
            keep_results_days: default_keep_results_days(),
            keep_jobs_days: default_keep_jobs_days(),
        }
    }
}

impl JournalConfig {
    /// True when the journal is a PostgreSQL database (a fleet's).
    pub fn is_postgres(&self) -> bool {
        self.url.is_some()
    }

    /// True when a setting only a PostgreSQL journal uses is given.
    pub fn has_postgres_settings(&self) -> bool {
        self.password_env.is_some()
            || self.password_file.is_some()
            || self.trust_anchors.is_some()
            || self.client_certificate.is_some()
            || self.client_key.is_some()
    }
}
