//! Assembling a running connector from its config: data directory, custody, journal, plugin
//! engine and backends. `serve`, `bench` and the tests all start certconn through here, so what
//! they exercise is what runs in production.

use std::os::unix::fs::DirBuilderExt;
use std::str::FromStr;
use std::sync::Arc;

use tokio::sync::{watch, Notify};

use crate::config::Config;
use crate::custody::{CustodyError, KeyStore};
use crate::jobs::intake::{self, IntakeError};
use crate::jobs::model::{ImportJob, IssueJob, JobKind, JobRecord, RevokeJob};
use crate::jobs::{scheduler, Journal, JournalError};
use crate::pki::{self, PkiError};
use crate::plugins::{PluginEngine, PluginError, Registry};

/// Why certconn could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Custody(#[from] CustodyError),
    #[error("creating the self-signed certificate of key {key:?}: {source}")]
    SelfSigned { key: String, source: PkiError },
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error("{0}")]
    Fips(String),
    #[error("SCEP server: {0}")]
    Scep(String),
    #[error("data directory {path} is in use by another certconn process (serve, or a keys command); stop it first")]
    Locked { path: std::path::PathBuf },
}

/// Creates the data directory (0700) and takes its exclusive lock, held for the life of the
/// returned file. One process at a time owns a data directory: the daemon, or an offline
/// administrative command such as `certconn keys`.
pub fn lock_data_dir(config: &Config) -> Result<std::fs::File, StartError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&config.data_dir)
        .map_err(|source| StartError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
    let path = config.data_dir.join("certconn.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| StartError::DataDir {
            path: path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StartError::Locked {
            path: config.data_dir.clone(),
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(StartError::DataDir { path, source }),
    }
}

/// Creates the keys `[keys]` declares that the store does not hold yet, with their self-signed
/// certificates: first-start state, made the same way for the daemon and the conformance kit.
pub fn create_configured_keys(config: &Config, keys: &KeyStore) -> Result<(), StartError> {
    for (name, k) in &config.keys {
        let stored = match keys.get(name) {
            Ok(s) => s,
            Err(_) => {
                tracing::info!(key = %name, algorithm = %k.algorithm, store = ?k.store, "creating custody key");
                keys.create(name, k.algorithm, k.store)?
            }
        };
        if let (Some(ss), true) = (&k.self_signed, stored.chain.is_empty()) {
            let subject = x509_cert::name::Name::from_str(ss.subject.get_ref()).map_err(|e| {
                StartError::SelfSigned {
                    key: name.clone(),
                    source: PkiError::Invalid(e.to_string()),
                }
            })?;
            let cert = pki::ca::self_signed(&stored.key, &subject, ss.validity_days).map_err(
                |source| StartError::SelfSigned {
                    key: name.clone(),
                    source,
                },
            )?;
            keys.set_chain(name, vec![cert])?;
            tracing::info!(key = %name, subject = %ss.subject.get_ref(), "created self-signed CA certificate");
        }
    }
    Ok(())
}

/// Why a submission was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Invalid(#[from] IntakeError),
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// Everything a job needs, shared by the workers and the API.
pub struct Services {
    pub config: Arc<Config>,
    /// Probed once at start: the self-test is not free, and the module cannot change under us.
    pub fips: crate::crypto::fips::FipsStatus,
    pub journal: Arc<Journal>,
    pub keys: Arc<KeyStore>,
    pub registry: Arc<Registry>,
    pub engine: Arc<PluginEngine>,
}

/// A started connector: services plus the scheduler's wake-up signal.
pub struct Connector {
    pub services: Arc<Services>,
    /// The SCEP server's RA, when `[scep]` is configured.
    pub scep: Option<Arc<crate::scep::Ra>>,
    wake: Arc<Notify>,
    _lock: std::fs::File,
}

impl Connector {
    /// Opens everything the config names, creating first-start state (data directory, keys and
    /// their self-signed certificates). Any failure stops start-up with the reason.
    pub async fn open(config: Config) -> Result<Self, StartError> {
        let fips = crate::crypto::fips::FipsStatus::probe(config.crypto.fips);
        if let Some(reason) = fips.refusal() {
            return Err(StartError::Fips(reason));
        }
        let lock = lock_data_dir(&config)?;
        let keys = Arc::new(KeyStore::open(&config.keys_dir(), &config.custody)?);
        create_configured_keys(&config, &keys)?;
        let scep = crate::scep::Ra::open(&config, &keys)?.map(Arc::new);
        let journal = Arc::new(Journal::open(&config.journal_path())?);
        let reclaimed = journal.reclaim_running()?;
        if reclaimed > 0 {
            tracing::info!(
                jobs = reclaimed,
                "resuming jobs that were running when certconn stopped"
            );
        }
        let engine = Arc::new(PluginEngine::new(
            &config.cache_dir(),
            &config.engine_limits(),
        )?);
        let registry =
            Arc::new(Registry::load(engine.clone(), &config, keys.clone(), config.policy()).await?);
        let services = Arc::new(Services {
            fips,
            config: Arc::new(config),
            journal,
            keys,
            registry,
            engine,
        });
        Ok(Self {
            services,
            scep,
            wake: Arc::new(Notify::new()),
            _lock: lock,
        })
    }

    /// Validates and journals an issue request. The bool is true when it is new (false: the same
    /// source and idempotency key were seen before, and that job is returned).
    pub fn submit_issue(
        &self,
        source: &str,
        idempotency_key: &str,
        req: &IssueJob,
    ) -> Result<(JobRecord, bool), SubmitError> {
        intake::check_issue(&self.services.config, req)?;
        self.journal_request(source, idempotency_key, JobKind::Issue, req)
    }

    /// Validates and journals an imported-PFX delivery.
    pub fn submit_import(
        &self,
        source: &str,
        idempotency_key: &str,
        req: &ImportJob,
    ) -> Result<(JobRecord, bool), SubmitError> {
        intake::check_import(&self.services.config, &self.services.keys, req)?;
        self.journal_request(source, idempotency_key, JobKind::Import, req)
    }

    /// Validates and journals a revocation.
    pub fn submit_revoke(
        &self,
        source: &str,
        idempotency_key: &str,
        req: &RevokeJob,
    ) -> Result<(JobRecord, bool), SubmitError> {
        intake::check_revoke(&self.services.config, req)?;
        self.journal_request(source, idempotency_key, JobKind::Revoke, req)
    }

    /// Writes a validated request to the journal and wakes a worker.
    fn journal_request(
        &self,
        source: &str,
        idempotency_key: &str,
        kind: JobKind,
        req: &impl serde::Serialize,
    ) -> Result<(JobRecord, bool), SubmitError> {
        let value = serde_json::to_value(req).map_err(|e| IntakeError {
            field: "request",
            message: e.to_string(),
        })?;
        let r = self
            .services
            .journal
            .enqueue(source, idempotency_key, kind, &value)?;
        self.wake.notify_one();
        Ok(r)
    }

    /// Wakes the workers (after an operator retry).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Watches the plugins directory and rescans it periodically until `shutdown` turns true:
    /// new and changed plugin versions are loaded without a restart.
    pub async fn run_plugin_watcher(&self, shutdown: watch::Receiver<bool>) {
        let plugins = &self.services.config.plugins;
        crate::plugins::watch::run(
            self.services.registry.clone(),
            plugins.watch,
            std::time::Duration::from_secs(plugins.rescan_seconds.max(1)),
            shutdown,
        )
        .await
    }

    /// Runs the scheduler until `shutdown` turns true.
    pub async fn run_scheduler(&self, shutdown: watch::Receiver<bool>) {
        scheduler::run(self.services.clone(), self.wake.clone(), shutdown).await
    }
}
