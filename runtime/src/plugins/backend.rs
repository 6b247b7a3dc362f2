//! A configured backend instance and its calls. Every call gets a fresh store: instantiate from
//! the pre-linked component (microseconds with the pooling allocator), `configure`, then the
//! operation, under a memory cap, an epoch deadline and an outer timeout. A trap or timeout
//! drops that store and becomes a `plugin-fault`; nothing else is affected.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::{Store, Trap};

use super::bindings::types::{
    BackendError, BackendInfo, HealthReport, ImportCheck, IssueRequest, IssuedCertificate,
    RevokeRequest,
};
use super::bindings::{BackendInstance, BackendPre, Contract};
use super::engine::{PluginEngine, EPOCH_TICK};
use super::http::HttpAccess;
use super::instance::InstanceSpec;
use super::manifest::Manifest;
use super::package::PluginPackage;
use super::state::{PluginIdentity, PluginState};
use super::{PluginError, SettingError};
use crate::crypto::AlgorithmPolicy;
use crate::custody::grant::CallKeys;
use crate::custody::Grants;

/// Limits of one backend instance.
#[derive(Clone, Debug)]
pub struct BackendLimits {
    /// Linear memory cap.
    pub memory_bytes: usize,
    /// Wall-clock time for one call, instantiate to answer.
    pub timeout: Duration,
    /// Log lines one call may write.
    pub log_lines: u32,
}

impl Default for BackendLimits {
    fn default() -> Self {
        Self {
            memory_bytes: 64 << 20,
            timeout: Duration::from_secs(30),
            log_lines: 200,
        }
    }
}

/// One version of a plugin, compiled and linked once and shared by every backend instance that
/// runs it. Its identity is the package's SHA-256.
pub struct PreparedPlugin {
    pub manifest: Manifest,
    pub sha256: String,
    /// The `certconn:plugin` version the component was built against (from its exports).
    pub contract: semver::Version,
    /// What signatures made for this version are recorded under.
    pub identity: Arc<PluginIdentity>,
    pre: BackendPre,
}

impl std::fmt::Debug for PreparedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedPlugin")
            .field("version", &self.version_id())
            .field("contract", &self.contract.to_string())
            .finish_non_exhaustive()
    }
}

impl PreparedPlugin {
    /// Compiles (or loads from cache) the package's component, tells its contract line from its
    /// exports, checks that against the manifest, and links it. Nothing runs yet.
    pub fn prepare(engine: &PluginEngine, package: &PluginPackage) -> Result<Self, PluginError> {
        let name = &package.manifest.name;
        let invalid = |reason: String| PluginError::Invalid {
            plugin: name.clone(),
            reason,
        };
        let component = engine.compile(package)?;
        let (line, contract) = Contract::detect(engine.engine(), &component)
            .map_err(|e| invalid(crate::report::chain(&e)))?;
        let declared = package
            .manifest
            .contract_version()
            .map_err(|e| invalid(e.to_string()))?;
        if Contract::of(&declared) != Some(line) {
            return Err(invalid(format!(
                "its manifest says contract {declared}, but the component was built for certconn:plugin@{contract}"
            )));
        }
        let instance_pre = engine.linker().instantiate_pre(&component).map_err(|e| {
            invalid(format!(
                "it imports something certconn:plugin@{contract} on this host does not offer (built for a newer {}.{} than this certconn?): {e:#}",
                contract.major, contract.minor
            ))
        })?;
        let pre = BackendPre::new(&contract, instance_pre).map_err(|e| {
            invalid(format!(
                "its backend export does not match certconn:plugin@{contract}: {e:#}"
            ))
        })?;
        Ok(Self {
            identity: Arc::new(PluginIdentity {
                name_version: format!("{} {}", package.manifest.name, package.manifest.version),
                sha256: package.sha256.clone(),
            }),
            manifest: package.manifest.clone(),
            sha256: package.sha256.clone(),
            contract,
            pre,
        })
    }

    /// `name version (sha256 prefix)`.
    pub fn version_id(&self) -> String {
        super::package::version_id(&self.manifest, &self.sha256)
    }

    /// The plugin's `describe`, unconfigured, with nothing granted.
    pub async fn describe(
        self: &Arc<Self>,
        engine: Arc<PluginEngine>,
        policy: AlgorithmPolicy,
    ) -> Result<BackendInfo, PluginError> {
        LoadedBackend {
            outcomes: Outcomes::default(),
            name: self.manifest.name.as_str().into(),
            plugin: self.clone(),
            info: empty_info(),
            engine,
            settings_json: zeroize::Zeroizing::new("{}".into()),
            grants: Grants::none(),
            http: Arc::default(),
            policy,
            limits: BackendLimits::default(),
        }
        .describe()
        .await
    }
}

fn empty_info() -> BackendInfo {
    BackendInfo {
        name: String::new(),
        version: String::new(),
        capabilities: super::bindings::types::Capabilities::empty(),
        config_schema: String::new(),
    }
}

/// A plugin version loaded as a backend instance with its settings, grants and limits.
pub struct LoadedBackend {
    pub name: Arc<str>,
    /// What this version's calls came to: an update on probation is judged by them.
    pub outcomes: Outcomes,
    pub plugin: Arc<PreparedPlugin>,
    pub info: BackendInfo,
    engine: Arc<PluginEngine>,
    settings_json: zeroize::Zeroizing<String>,
    grants: Grants,
    http: Arc<HttpAccess>,
    policy: AlgorithmPolicy,
    pub limits: BackendLimits,
}

impl std::fmt::Debug for LoadedBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedBackend")
            .field("name", &self.name)
            .field("plugin", &self.plugin)
            .finish_non_exhaustive()
    }
}

/// Counts of one loaded version's calls, as the circuit breaker sees them: answered, or failed
/// (a plugin fault or its CA unreachable).
#[derive(Debug, Default)]
pub struct Outcomes {
    pub answered: std::sync::atomic::AtomicU64,
    pub failed: std::sync::atomic::AtomicU64,
}

impl Outcomes {
    /// `(answered, failed)`.
    pub fn counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.answered.load(Relaxed), self.failed.load(Relaxed))
    }
}

/// What a plugin call returns: the backend's own answer, or a fault of the plugin.
pub type CallResult<T> = Result<Result<T, BackendError>, PluginError>;

impl LoadedBackend {
    /// Asks the plugin to describe itself and checks that it accepts `settings_json`. Nothing
    /// is registered if any step fails.
    pub async fn load(
        engine: Arc<PluginEngine>,
        plugin: Arc<PreparedPlugin>,
        spec: &InstanceSpec,
        policy: AlgorithmPolicy,
    ) -> Result<Self, PluginError> {
        let mut this = Self {
            outcomes: Outcomes::default(),
            name: spec.name.as_str().into(),
            plugin,
            info: empty_info(),
            engine,
            settings_json: spec.settings_json.clone(),
            grants: spec.grants.clone(),
            http: spec.http.clone(),
            policy,
            limits: spec.limits.clone(),
        };
        this.info = this.describe().await?;
        // `run` with configure=true fails with PluginError::Config on bad settings.
        this.run("configure", None, true, async |_, _| Ok(()))
            .await?;
        Ok(this)
    }

    /// How logs, status and job results name the version this instance runs.
    pub fn version_id(&self) -> String {
        self.plugin.version_id()
    }

    fn new_store(&self, job: Option<&str>, call_keys: CallKeys) -> Store<PluginState> {
        let state = PluginState::new(
            (self.name.clone(), self.plugin.identity.clone()),
            job.map(Arc::from),
            self.grants.with_call_keys(call_keys),
            self.http.clone(),
            self.policy,
            self.limits.memory_bytes,
            self.limits.log_lines,
        );
        let mut store = Store::new(self.engine.engine(), state);
        store.limiter(|s| &mut s.limits);
        let ticks = (self.limits.timeout.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64;
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_trap();
        store
    }

    /// Runs one operation in a fresh instance (configured first when `configure` is set).
    async fn run<R>(
        &self,
        operation: &'static str,
        job: Option<&str>,
        configure: bool,
        op: impl AsyncFnOnce(&mut Store<PluginState>, &BackendInstance<'_>) -> wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        self.run_with_keys(operation, job, CallKeys::default(), configure, op)
            .await
    }

    /// `run`, with the call's own keys bound ([`CallKeys`]: the key the job's CSR certifies,
    /// and for a renewal the key of the certificate it replaces).
    async fn run_with_keys<R>(
        &self,
        operation: &'static str,
        job: Option<&str>,
        call_keys: CallKeys,
        configure: bool,
        op: impl AsyncFnOnce(&mut Store<PluginState>, &BackendInstance<'_>) -> wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        let started = std::time::Instant::now();
        let answer = self.run_in_fresh_store(job, call_keys, configure, op).await;
        let faulted = matches!(answer, Err(PluginError::Fault { .. }));
        crate::metrics::global().plugin_call(&self.name, operation, started.elapsed(), faulted);
        answer
    }

    async fn run_in_fresh_store<R>(
        &self,
        job: Option<&str>,
        call_keys: CallKeys,
        configure: bool,
        op: impl AsyncFnOnce(&mut Store<PluginState>, &BackendInstance<'_>) -> wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        let mut store = self.new_store(job, call_keys);
        // The epoch deadline stops a spinning plugin; this outer timeout also covers time spent
        // in the host on the plugin's behalf (HTTP, custody).
        let outer = self.limits.timeout + Duration::from_secs(1);
        let work = async {
            let instance = self.plugin.pre.instantiate(&mut store).await?;
            if configure {
                if let Err(e) = instance.configure(&mut store, &self.settings_json).await? {
                    return Ok(Err(e));
                }
            }
            op(&mut store, &instance).await.map(Ok)
        };
        let answer = tokio::time::timeout(outer, work).await;
        if let Some(reason) = store.data_mut().journal_failure.take() {
            // The plugin saw a custody error and answered as it would for any (most likely a
            // rejection); the job must not fail for a journal that was away.
            return Err(PluginError::Journal {
                backend: self.name.to_string(),
                reason,
            });
        }
        match answer {
            Err(_) => Err(PluginError::Fault {
                backend: self.name.to_string(),
                reason: format!(
                    "did not answer within its time limit of {:?}",
                    self.limits.timeout
                ),
            }),
            Ok(Err(e)) => Err(self.fault(&store, e)),
            Ok(Ok(Err(config_error))) => Err(self.config_error(config_error)),
            Ok(Ok(Ok(r))) => Ok(r),
        }
    }

    fn config_error(&self, e: BackendError) -> PluginError {
        let errors = match e {
            BackendError::InvalidConfig(fields) => fields
                .into_iter()
                .take(50)
                .map(|f| SettingError {
                    field: bounded(&f.field),
                    message: bounded(super::without_json_position(&f.message)),
                })
                .collect(),
            other => vec![SettingError::general(format!(
                "configure failed: {}",
                describe_backend_error(&other)
            ))],
        };
        PluginError::Config {
            backend: self.name.to_string(),
            errors,
        }
    }

    fn fault(&self, store: &Store<PluginState>, e: wasmtime::Error) -> PluginError {
        let state = store.data();
        let reason = if state.limits.was_hit() {
            format!(
                "exceeded its memory limit of {} MiB",
                state.limits.max_bytes() >> 20
            )
        } else if matches!(e.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
            format!("exceeded its time limit of {:?}", self.limits.timeout)
        } else {
            match state.last_stderr_line() {
                Some(line) => format!("trapped ({}): {line}", e.root_cause()),
                None => format!("trapped: {}", e.root_cause()),
            }
        };
        tracing::warn!(backend = %self.name, version = %self.version_id(), job = state.job.as_deref(), "plugin-fault: {reason}");
        PluginError::Fault {
            backend: self.name.to_string(),
            reason,
        }
    }

    /// `describe` in a fresh, unconfigured instance: the bare cost of instantiate + one call.
    pub async fn describe(&self) -> Result<BackendInfo, PluginError> {
        self.run("describe", None, false, async |store, b| {
            b.describe(store).await
        })
        .await
    }

    /// `issue` for one job, with the job's own keys bound (see [`CallKeys`]).
    pub async fn issue(
        &self,
        request: &IssueRequest,
        call_keys: CallKeys,
    ) -> CallResult<IssuedCertificate> {
        self.run_with_keys(
            "issue",
            Some(&request.job_id),
            call_keys,
            true,
            async |store, b| b.issue(store, request).await,
        )
        .await
    }

    /// `poll` for one pending job.
    pub async fn poll(
        &self,
        job_id: &str,
        token: &str,
        call_keys: CallKeys,
    ) -> CallResult<IssuedCertificate> {
        self.run_with_keys("poll", Some(job_id), call_keys, true, async |store, b| {
            b.poll(store, job_id, token).await
        })
        .await
    }

    /// `revoke` for one job.
    pub async fn revoke(&self, request: &RevokeRequest) -> CallResult<()> {
        self.run("revoke", Some(&request.job_id), true, async |store, b| {
            b.revoke(store, request).await
        })
        .await
    }

    /// `check-import` for one import job.
    pub async fn check_import(&self, request: &ImportCheck) -> CallResult<()> {
        self.run(
            "check-import",
            Some(&request.job_id),
            true,
            async |store, b| b.check_import(store, request).await,
        )
        .await
    }

    /// `health`, configured.
    pub async fn health(&self) -> Result<HealthReport, PluginError> {
        self.run("health", None, true, async |store, b| b.health(store).await)
            .await
    }
}

/// One line describing a backend's error, for job records and logs.
pub fn describe_backend_error(e: &BackendError) -> String {
    match e {
        BackendError::InvalidConfig(fields) => format!(
            "invalid-config: {}",
            bounded(
                &fields
                    .iter()
                    .map(|f| format!("{}: {}", f.field, f.message))
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        ),
        BackendError::Rejected(m) => format!("rejected: {}", bounded(m)),
        BackendError::Transient(m) => format!("transient: {}", bounded(m)),
        BackendError::Unsupported(m) => format!("unsupported: {}", bounded(m)),
        BackendError::Pending(p) => format!("pending: {}", bounded(&p.message)),
    }
}

/// Longest text from a plugin (an error, a pending message) that the host keeps: a plugin must
/// not fill the journal or the log.
pub const MAX_PLUGIN_TEXT: usize = 2000;

/// `text`, cut to [`MAX_PLUGIN_TEXT`] bytes at a character boundary, saying how long it was.
pub fn bounded(text: &str) -> String {
    if text.len() <= MAX_PLUGIN_TEXT {
        return text.to_owned();
    }
    let mut cut = MAX_PLUGIN_TEXT;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}… (cut: {} bytes in all)", &text[..cut], text.len())
}
