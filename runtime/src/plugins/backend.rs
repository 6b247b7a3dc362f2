//! A configured backend instance and its calls. Every call gets a fresh store: instantiate from
//! the pre-linked component (microseconds with the pooling allocator), `configure`, then the
//! operation, under a memory cap, an epoch deadline and an outer timeout. A trap or timeout
//! drops that store and becomes a `plugin-fault`; nothing else is affected.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::Component;
use wasmtime::{Store, Trap};

use super::bindings::types::{
    BackendError, BackendInfo, HealthReport, ImportCheck, IssueRequest, IssuedCertificate,
    RevokeRequest,
};
use super::bindings::{CaBackend, CaBackendPre};
use super::engine::{PluginEngine, EPOCH_TICK};
use super::state::PluginState;
use super::PluginError;
use crate::crypto::AlgorithmPolicy;
use crate::custody::store::StoredKey;
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

/// A plugin loaded as a backend instance with its settings, grants and limits.
pub struct LoadedBackend {
    pub name: Arc<str>,
    pub plugin: String,
    pub info: BackendInfo,
    pre: CaBackendPre<PluginState>,
    engine: Arc<PluginEngine>,
    settings_json: String,
    grants: Grants,
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

/// What a plugin call returns: the backend's own answer, or a fault of the plugin.
pub type CallResult<T> = Result<Result<T, BackendError>, PluginError>;

impl LoadedBackend {
    /// Compiles (or loads from cache) and links `wasm`, asks it to describe itself, and checks
    /// that it accepts `settings_json`. Nothing is registered if any step fails.
    #[allow(clippy::too_many_arguments)]
    pub async fn load(
        engine: Arc<PluginEngine>,
        name: &str,
        plugin: &str,
        wasm: &[u8],
        settings_json: String,
        grants: Grants,
        policy: AlgorithmPolicy,
        limits: BackendLimits,
    ) -> Result<Self, PluginError> {
        let component: Component = engine.compile(plugin, wasm)?;
        let instance_pre = engine.linker().instantiate_pre(&component).map_err(|e| PluginError::Invalid {
            plugin: plugin.into(),
            reason: format!("does not fit the certconn:plugin@0.1 contract or asks for an import the host does not offer: {e:#}"),
        })?;
        let pre = CaBackendPre::new(instance_pre).map_err(|e| PluginError::Invalid {
            plugin: plugin.into(),
            reason: format!("does not export certconn:plugin/backend@0.1: {e:#}"),
        })?;
        let mut this = Self {
            name: name.into(),
            plugin: plugin.into(),
            info: BackendInfo {
                name: String::new(),
                version: String::new(),
                capabilities: super::bindings::types::Capabilities::empty(),
                config_schema: String::new(),
            },
            pre,
            engine,
            settings_json,
            grants,
            policy,
            limits,
        };
        this.info = this.describe().await?;
        // `run` with configure=true fails with PluginError::Config on bad settings.
        this.run(None, true, async |_, _| Ok(())).await?;
        Ok(this)
    }

    fn new_store(
        &self,
        job: Option<&str>,
        request_key: Option<Arc<StoredKey>>,
    ) -> Store<PluginState> {
        let state = PluginState::new(
            self.name.clone(),
            job.map(Arc::from),
            self.grants.with_request_key(request_key),
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
        job: Option<&str>,
        configure: bool,
        op: impl AsyncFnOnce(&mut Store<PluginState>, &CaBackend) -> wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        self.run_with_key(job, None, configure, op).await
    }

    /// `run`, with [`REQUEST_HANDLE`](crate::custody::grant::REQUEST_HANDLE) bound to the key
    /// the job's CSR certifies.
    async fn run_with_key<R>(
        &self,
        job: Option<&str>,
        request_key: Option<Arc<StoredKey>>,
        configure: bool,
        op: impl AsyncFnOnce(&mut Store<PluginState>, &CaBackend) -> wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        let mut store = self.new_store(job, request_key);
        // The epoch deadline stops a spinning plugin; this outer timeout also covers time spent
        // in the host on the plugin's behalf (HTTP, custody).
        let outer = self.limits.timeout + Duration::from_secs(1);
        let work = async {
            let instance = self.pre.instantiate_async(&mut store).await?;
            if configure {
                if let Err(e) = instance
                    .certconn_plugin_backend()
                    .call_configure(&mut store, &self.settings_json)
                    .await?
                {
                    return Ok(Err(e));
                }
            }
            op(&mut store, &instance).await.map(Ok)
        };
        match tokio::time::timeout(outer, work).await {
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
                .map(|f| {
                    if f.field.is_empty() {
                        f.message
                    } else {
                        format!("{}: {}", f.field, f.message)
                    }
                })
                .collect(),
            other => vec![format!(
                "configure failed: {}",
                describe_backend_error(&other)
            )],
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
        tracing::warn!(backend = %self.name, job = state.job.as_deref(), "plugin-fault: {reason}");
        PluginError::Fault {
            backend: self.name.to_string(),
            reason,
        }
    }

    /// `describe` in a fresh, unconfigured instance: the bare cost of instantiate + one call.
    pub async fn describe(&self) -> Result<BackendInfo, PluginError> {
        self.run(None, false, async |store, b| {
            b.certconn_plugin_backend().call_describe(store).await
        })
        .await
    }

    /// `issue` for one job; `request_key` is the key the CSR certifies when certconn made it.
    pub async fn issue(
        &self,
        request: &IssueRequest,
        request_key: Option<Arc<StoredKey>>,
    ) -> CallResult<IssuedCertificate> {
        self.run_with_key(
            Some(&request.job_id),
            request_key,
            true,
            async |store, b| b.certconn_plugin_backend().call_issue(store, request).await,
        )
        .await
    }

    /// `poll` for one pending job.
    pub async fn poll(
        &self,
        job_id: &str,
        token: &str,
        request_key: Option<Arc<StoredKey>>,
    ) -> CallResult<IssuedCertificate> {
        self.run_with_key(Some(job_id), request_key, true, async |store, b| {
            b.certconn_plugin_backend()
                .call_poll(store, job_id, token)
                .await
        })
        .await
    }

    /// `revoke` for one job.
    pub async fn revoke(&self, request: &RevokeRequest) -> CallResult<()> {
        self.run(Some(&request.job_id), true, async |store, b| {
            b.certconn_plugin_backend()
                .call_revoke(store, request)
                .await
        })
        .await
    }

    /// `check-import` for one import job.
    pub async fn check_import(&self, request: &ImportCheck) -> CallResult<()> {
        self.run(Some(&request.job_id), true, async |store, b| {
            b.certconn_plugin_backend()
                .call_check_import(store, request)
                .await
        })
        .await
    }

    /// `health`, configured.
    pub async fn health(&self) -> Result<HealthReport, PluginError> {
        self.run(None, true, async |store, b| {
            b.certconn_plugin_backend().call_health(store).await
        })
        .await
    }
}

/// One line describing a backend's error, for job records and logs.
pub fn describe_backend_error(e: &BackendError) -> String {
    match e {
        BackendError::InvalidConfig(fields) => format!(
            "invalid-config: {}",
            fields
                .iter()
                .map(|f| format!("{}: {}", f.field, f.message))
                .collect::<Vec<_>>()
                .join("; ")
        ),
        BackendError::Rejected(m) => format!("rejected: {m}"),
        BackendError::Transient(m) => format!("transient: {m}"),
        BackendError::Unsupported(m) => format!("unsupported: {m}"),
        BackendError::Pending(p) => format!("pending: {}", p.message),
    }
}
