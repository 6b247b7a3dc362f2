//! The config sections the job side owns: `[jobs]` (workers, retries, leases) and
//! `[profiles.NAME]` (what a request names: its backends and the certificate's shape).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use toml::Spanned;

use crate::custody::grant::UsageLimits;
use crate::custody::KeyAlgorithm;

/// `[jobs]`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsConfig {
    /// Jobs running at once; when absent, the default for the journal ([`JobsConfig::workers`]).
    #[serde(
        default,
        deserialize_with = "crate::config::in_range_opt::<_, usize, 1, 1024>"
    )]
    pub workers: Option<usize>,
    /// Attempts before a job is dead-lettered.
    #[serde(
        default = "default_attempts",
        deserialize_with = "crate::config::in_range::<_, u32, 1, 1000>"
    )]
    pub max_attempts: u32,
    /// First retry delay; doubles each attempt, with jitter.
    #[serde(default = "default_backoff_initial")]
    pub backoff_initial_ms: u64,
    #[serde(default = "default_backoff_max")]
    pub backoff_max_ms: u64,
    /// How long a worker holds a job before another may take it up, in seconds. The worker
    /// renews it while the job runs; it expires only when the worker (or its process) is gone.
    /// At least the longest `backends.*.timeout_seconds`.
    #[serde(default = "default_lease")]
    pub lease_seconds: Spanned<u64>,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            workers: None,
            max_attempts: default_attempts(),
            backoff_initial_ms: default_backoff_initial(),
            backoff_max_ms: default_backoff_max(),
            lease_seconds: default_lease(),
        }
    }
}

impl JobsConfig {
    /// The workers to run: `jobs.workers`, else the default for the journal they share.
    pub fn workers(&self, journal: &crate::journal::JournalConfig) -> usize {
        self.workers
            .unwrap_or_else(|| default_workers(journal.is_postgres()))
    }

    /// The lease a worker takes and renews.
    pub fn lease(&self) -> Duration {
        Duration::from_secs(*self.lease_seconds.get_ref())
    }
}

/// The workers to run when `jobs.workers` is not set: [`DEFAULT_WORKERS_POSTGRES`] on a
/// PostgreSQL journal, else [`DEFAULT_WORKERS`].
pub fn default_workers(postgres: bool) -> usize {
    if postgres {
        DEFAULT_WORKERS_POSTGRES
    } else {
        DEFAULT_WORKERS
    }
}

/// Workers with the embedded SQLite journal when `jobs.workers` is not set. Thirty-two, not the
/// core count: a worker spends much of a local-CA job waiting for the journal's commits (its
/// trail entry, its outcome), and only jobs in flight together share a commit. On two cores,
/// with 32 callers submitting, 32 workers kept 1.87–1.89 cores busy where 16 kept 1.77–1.80,
/// for a median ratio of 0.655–0.676 against 0.624–0.636 of the direct work; 48 gained little
/// more (`certconn bench --callers 32`, docs/design/pipeline.md). Idle workers cost nothing
/// (one of them polls). A CA that must see fewer requests at once has
/// `backends.NAME.max_concurrency`.
pub const DEFAULT_WORKERS: usize = 32;

/// Workers with a PostgreSQL journal when `jobs.workers` is not set. Eight: each write there is
/// its own transaction on one of `journal.pool_size` (4) connections, so there is no commit to
/// share, and under load 16 measured the same as 8 (`certconn bench --fleet 1`: 665 / 612
/// against 647 / 640 jobs/s; docs/design/pipeline.md). Idle workers cost the database one look
/// per half second per instance, whatever their number (`jobs::scheduler`).
pub const DEFAULT_WORKERS_POSTGRES: usize = 8;

fn default_attempts() -> u32 {
    5
}
fn default_backoff_initial() -> u64 {
    500
}
fn default_backoff_max() -> u64 {
    300_000
}
fn default_lease() -> Spanned<u64> {
    Spanned::new(0..0, 120)
}

/// `[profiles.NAME]`: what a request names.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileConfig {
    /// The backend instance that serves this profile.
    pub backend: Spanned<String>,
    /// Backend instances tried in order when `backend` is unloaded, quarantined, at its
    /// concurrency limit, or fails with a fault or a transient error. A CA's final answer
    /// (issued, rejected, pending) is never passed on.
    #[serde(default)]
    pub fallbacks: Vec<Spanned<String>>,
    /// Device key type when the request does not say.
    #[serde(default = "default_key")]
    pub key_algorithm: KeyAlgorithm,
    #[serde(
        default,
        deserialize_with = "crate::config::in_range_opt::<_, u32, 1, 3650>"
    )]
    pub validity_days: Option<u32>,
    /// CA-side template name, passed to the backend.
    pub template: Option<String>,
    /// `modern` (PBES2/AES-256, HMAC-SHA256) or `compat` (3DES, HMAC-SHA1) for older devices.
    #[serde(default)]
    pub pfx_format: crate::pki::pkcs12::PfxProfile,
    /// How the PFX password reaches an RSA recipient: `rsa-oaep` (default) or `rsa-pkcs1`.
    /// EC recipients always use ECDH.
    #[serde(default)]
    pub recipient_key_transport: crate::pki::cms::KeyTransport,
    /// Keep the device key certconn made (sealed in custody like any key) after the PFX is
    /// delivered, so that the certificate can later be renewed by proof of possession (a SCEP
    /// RenewalReq signed with it). Off by default: a server-side key then lives only in the
    /// PFX the device got. The key is forgotten once its certificate is renewed or revoked.
    #[serde(default)]
    pub keep_keys_for_renewal: bool,
    /// The key usages a CA key in custody may sign into this profile's certificates for a
    /// plugin (the host's issuance policy); default: every end-entity usage, never
    /// `key_cert_sign` or `crl_sign`.
    pub allowed_key_usage: Option<Spanned<Vec<String>>>,
    /// The extended key usages likewise; default: `server_auth`, `client_auth`,
    /// `email_protection`, `smartcard_logon`. Code signing, time stamping, OCSP signing and
    /// anyExtendedKeyUsage only when listed.
    pub allowed_extended_key_usage: Option<Spanned<Vec<String>>>,
}

impl ProfileConfig {
    /// The usage limits of the issuance policy for this profile, or why they do not parse and
    /// the setting that says it.
    pub fn usage_limits(
        &self,
    ) -> Result<UsageLimits, (&'static str, std::ops::Range<usize>, String)> {
        let span = |v: &Option<Spanned<Vec<String>>>| v.as_ref().map_or(0..0, |v| v.span());
        UsageLimits::parse(
            self.allowed_key_usage
                .as_ref()
                .map(|v| v.get_ref().as_slice()),
            None,
        )
        .map_err(|e| ("allowed_key_usage", span(&self.allowed_key_usage), e))?;
        UsageLimits::parse(
            self.allowed_key_usage
                .as_ref()
                .map(|v| v.get_ref().as_slice()),
            self.allowed_extended_key_usage
                .as_ref()
                .map(|v| v.get_ref().as_slice()),
        )
        .map_err(|e| {
            (
                "allowed_extended_key_usage",
                span(&self.allowed_extended_key_usage),
                e,
            )
        })
    }

    /// The backend instances this profile routes to, in the order they are tried.
    pub fn route(&self) -> impl Iterator<Item = &str> {
        std::iter::once(&self.backend)
            .chain(&self.fallbacks)
            .map(|b| b.get_ref().as_str())
    }
}

fn default_key() -> KeyAlgorithm {
    KeyAlgorithm::EcP256
}

/// The configured profiles, shared by intake (which checks a request names one) and the steps
/// (which run by one), and replaced whole by a configuration reload. A job reads its profile
/// once per run, so a reload never changes a run halfway.
#[derive(Debug, Default)]
pub struct Profiles(RwLock<Arc<BTreeMap<String, Arc<ProfileConfig>>>>);

impl Profiles {
    pub fn new(profiles: BTreeMap<String, ProfileConfig>) -> Self {
        let p = Self::default();
        p.replace(profiles);
        p
    }

    /// The profile called `name`, as configured now.
    pub fn get(&self, name: &str) -> Option<Arc<ProfileConfig>> {
        self.snapshot().get(name).cloned()
    }

    /// The names of the profiles configured now.
    pub fn names(&self) -> Vec<String> {
        self.snapshot().keys().cloned().collect()
    }

    /// Puts `profiles` in place of the ones configured.
    pub fn replace(&self, profiles: BTreeMap<String, ProfileConfig>) {
        let new = Arc::new(
            profiles
                .into_iter()
                .map(|(name, p)| (name, Arc::new(p)))
                .collect(),
        );
        // The lock guards one pointer swap, which cannot panic halfway.
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = new;
    }

    fn snapshot(&self) -> Arc<BTreeMap<String, Arc<ProfileConfig>>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
