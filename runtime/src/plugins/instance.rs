//! A backend instance: one `[backends.NAME]` from the config — a plugin, its settings, grants,
//! limits, concurrency limit and circuit breaker — and the plugin version it currently runs.
//!
//! The version is swapped atomically (one short lock): a job takes a [`Lease`] holding an `Arc`
//! of the version it started on, so a swap never touches jobs in flight, and the replaced
//! version stays as `previous` for rollback.

use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::breaker::{Admission, Breaker, BreakerConfig, BreakerStatus};
use super::http::HttpAccess;
use super::settings::BackendConfig;
use super::{BackendLimits, LoadedBackend, PluginEngine, PluginError, PreparedPlugin};
use crate::crypto::AlgorithmPolicy;
use crate::custody::{Grants, KeyStore};

/// What an instance is made of, from its config.
#[derive(Clone)]
pub struct InstanceSpec {
    pub name: String,
    pub plugin: String,
    /// Zeroized when dropped: `settings_files` put secrets here.
    pub settings_json: zeroize::Zeroizing<String>,
    pub grants: Grants,
    pub http: Arc<HttpAccess>,
    pub limits: BackendLimits,
    pub max_concurrency: Option<usize>,
    pub breaker: BreakerConfig,
}

impl InstanceSpec {
    /// The one way from `[backends.NAME]` to an instance, for the registry and the conformance
    /// kit alike: settings files read, HTTP secrets and trust anchors loaded, keys granted.
    pub fn from_config(
        name: &str,
        config: &BackendConfig,
        keys: Arc<KeyStore>,
        policy: AlgorithmPolicy,
        proxy: Option<Arc<crate::proxy::Proxy>>,
    ) -> Result<Self, PluginError> {
        let refused = |e: &dyn std::error::Error| PluginError::Config {
            backend: name.to_owned(),
            errors: vec![super::SettingError::general(crate::report::chain(e))],
        };
        let http = HttpAccess::new(config.http.clone(), policy, proxy).map_err(|e| refused(&e))?;
        let settings_json = config.settings_json().map_err(|e| refused(&e))?;
        Ok(Self {
            name: name.to_owned(),
            plugin: config.plugin.get_ref().clone(),
            settings_json,
            grants: Grants::new(keys, config.keys.iter().map(|k| k.get_ref().clone())),
            http: Arc::new(http),
            limits: config.limits(),
            max_concurrency: config.max_concurrency,
            breaker: BreakerConfig {
                threshold: config.quarantine_after,
                cooldown: std::time::Duration::from_secs(config.quarantine_seconds),
            },
        })
    }
}

#[derive(Default)]
struct Versions {
    current: Option<Arc<LoadedBackend>>,
    previous: Option<Arc<LoadedBackend>>,
    /// The administrator unloaded the plugin: not serving until it is loaded again.
    unloaded: bool,
    /// The administrator drained this instance: it takes no new jobs (jobs in flight finish)
    /// until it is undrained; other instances of the same plugin go on.
    drained: bool,
    /// Why the instance is not serving, or why the last new version was not taken.
    problem: Option<String>,
}

/// One backend instance.
pub struct Instance {
    pub name: String,
    pub plugin: String,
    spec: InstanceSpec,
    pub limits: BackendLimits,
    pub breaker: Breaker,
    max_concurrency: Option<usize>,
    permits: Option<Arc<Semaphore>>,
    versions: Mutex<Versions>,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("name", &self.name)
            .field("plugin", &self.plugin)
            .finish_non_exhaustive()
    }
}

/// A job's hold on an instance: the version it runs on and, with a concurrency limit, its slot.
pub struct Lease {
    pub instance: Arc<Instance>,
    pub backend: Arc<LoadedBackend>,
    /// True when this job is the circuit breaker's probe.
    pub probe: bool,
    _permit: Option<OwnedSemaphorePermit>,
}

/// An instance as `certconn plugins list` and `/v1/plugins` show it.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceStatus {
    pub backend: String,
    pub plugin: String,
    /// `serving`, `quarantined`, `probing`, `drained`, `unloaded` or `not-loaded`.
    pub state: &'static str,
    /// The version it runs: `name version (sha256 prefix)`.
    pub version: Option<String>,
    /// The version a rollback returns to.
    pub previous: Option<String>,
    pub contract: Option<String>,
    /// The backend's own `describe` answer.
    pub describe_name: Option<String>,
    pub describe_version: Option<String>,
    pub capabilities: Vec<&'static str>,
    pub problem: Option<String>,
    pub breaker: BreakerStatus,
    pub max_concurrency: Option<usize>,
    pub in_flight: Option<usize>,
    pub memory_mb: usize,
    pub timeout_seconds: u64,
}

impl Instance {
    pub fn new(spec: InstanceSpec) -> Self {
        Self {
            name: spec.name.clone(),
            plugin: spec.plugin.clone(),
            limits: spec.limits.clone(),
            breaker: Breaker::new(spec.breaker),
            max_concurrency: spec.max_concurrency,
            permits: spec.max_concurrency.map(|n| Arc::new(Semaphore::new(n))),
            versions: Mutex::new(Versions::default()),
            spec,
        }
    }

    fn versions(&self) -> std::sync::MutexGuard<'_, Versions> {
        // Every update under this lock is a few assignments that cannot panic halfway.
        self.versions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The version serving now; `None` when unloaded or never loaded.
    pub fn current(&self) -> Option<Arc<LoadedBackend>> {
        let v = self.versions();
        if v.unloaded {
            None
        } else {
            v.current.clone()
        }
    }

    /// The SHA-256 of the version loaded (served or not).
    pub fn loaded_sha(&self) -> Option<String> {
        self.versions()
            .current
            .as_ref()
            .map(|b| b.plugin.sha256.clone())
    }

    /// True when the instance was granted any host to talk to: its calls may leave the host.
    pub fn reaches_outside(&self) -> bool {
        !self.spec.http.grant.allow.is_empty()
    }

    pub fn is_unloaded(&self) -> bool {
        self.versions().unloaded
    }

    /// Loads `plugin` with this instance's settings and grants: describe and configure. Not yet
    /// installed.
    pub async fn build(
        &self,
        engine: Arc<PluginEngine>,
        plugin: Arc<PreparedPlugin>,
        policy: AlgorithmPolicy,
    ) -> Result<LoadedBackend, PluginError> {
        LoadedBackend::load(engine, plugin, &self.spec, policy).await
    }

    /// Makes `new` the serving version; the one it replaces becomes `previous`.
    pub fn install(&self, new: Arc<LoadedBackend>) -> Option<String> {
        let mut v = self.versions();
        let old = v.current.replace(new);
        let was = old.as_ref().map(|b| b.version_id());
        if old.is_some() {
            v.previous = old;
        }
        v.problem = None;
        was
    }

    /// Swaps back to the previous version. Returns (from, to); `None` when there is no
    /// previous version. The version rolled back from is dropped, not kept as the next
    /// "previous": a rollback is not a toggle (a second one has nothing to go back to until a
    /// new version is loaded).
    pub fn rollback(&self) -> Option<(String, String)> {
        let mut v = self.versions();
        let previous = v.previous.take()?;
        let to = previous.version_id();
        let from = v.current.replace(previous);
        let from_id = from.as_ref().map(|b| b.version_id()).unwrap_or_default();
        v.problem = None;
        Some((from_id, to))
    }

    pub fn set_unloaded(&self, unloaded: bool) {
        self.versions().unloaded = unloaded;
    }

    /// Drains (`true`) or undrains the instance. Returns whether that changed anything.
    pub fn set_drained(&self, drained: bool) -> bool {
        let mut v = self.versions();
        std::mem::replace(&mut v.drained, drained) != drained
    }

    pub fn is_drained(&self) -> bool {
        self.versions().drained
    }

    /// Records why the instance is not serving or did not take a new version.
    pub fn note_problem(&self, problem: impl Into<String>) {
        self.versions().problem = Some(problem.into());
    }

    /// Forgets the recorded problem (its cause is gone).
    pub fn clear_problem(&self) {
        self.versions().problem = None;
    }

    /// The serving version with a concurrency slot, if the breaker admits a job now. With
    /// `wait`, waits for a slot; otherwise a full instance is `Err(Busy)`.
    pub async fn lease(self: &Arc<Self>, wait: bool) -> Result<Lease, Unavailable> {
        let Some(backend) = self.current().filter(|_| !self.is_drained()) else {
            return Err(Unavailable::Down(self.why_not_serving()));
        };
        let probe = match self.breaker.admit() {
            Admission::Yes => false,
            Admission::Probe => true,
            Admission::No(reason) => return Err(Unavailable::Down(reason)),
        };
        let permit = match &self.permits {
            None => None,
            Some(s) if wait => Some(
                s.clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| Unavailable::Down("the instance is shutting down".into()))?,
            ),
            Some(s) => match s.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    if probe {
                        // Give the probe back: the next job takes it.
                        self.breaker.release_probe();
                    }
                    return Err(Unavailable::Busy);
                }
            },
        };
        Ok(Lease {
            instance: self.clone(),
            backend,
            probe,
            _permit: permit,
        })
    }

    fn why_not_serving(&self) -> String {
        let v = self.versions();
        if v.drained {
            format!(
                "backend {:?} is drained (certconn plugins undrain {})",
                self.name, self.name
            )
        } else if v.unloaded {
            format!(
                "backend {:?} is unloaded (certconn plugins load {})",
                self.name, self.plugin
            )
        } else {
            match &v.problem {
                Some(p) => format!("backend {:?} is not loaded: {p}", self.name),
                None => format!("backend {:?} is not loaded", self.name),
            }
        }
    }

    pub fn status(&self) -> InstanceStatus {
        let v = self.versions();
        let breaker = self.breaker.status();
        let state = match (&v.current, v.unloaded, breaker.state) {
            (_, true, _) => "unloaded",
            (Some(_), _, _) if v.drained => "drained",
            (None, _, _) => "not-loaded",
            (Some(_), _, "closed") => "serving",
            (Some(_), _, other) => other,
        };
        let current = v.current.as_ref();
        InstanceStatus {
            backend: self.name.clone(),
            plugin: self.plugin.clone(),
            state,
            version: current.map(|b| b.version_id()),
            previous: v.previous.as_ref().map(|b| b.version_id()),
            contract: current.map(|b| b.plugin.contract.to_string()),
            describe_name: current.map(|b| b.info.name.clone()),
            describe_version: current.map(|b| b.info.version.clone()),
            capabilities: current
                .map(|b| capability_names(b.info.capabilities))
                .unwrap_or_default(),
            problem: v.problem.clone(),
            breaker,
            max_concurrency: self.max_concurrency,
            in_flight: self
                .permits
                .as_ref()
                .zip(self.max_concurrency)
                .map(|(s, n)| n - s.available_permits()),
            memory_mb: self.limits.memory_bytes >> 20,
            timeout_seconds: self.limits.timeout.as_secs(),
        }
    }
}

/// Why an instance cannot take a job now.
#[derive(Debug)]
pub enum Unavailable {
    /// Not loaded, unloaded or quarantined, with the reason.
    Down(String),
    /// At its concurrency limit.
    Busy,
}

/// The names of a backend's capabilities, as the WIT spells them.
pub fn capability_names(caps: super::bindings::types::Capabilities) -> Vec<&'static str> {
    use super::bindings::types::Capabilities as C;
    [
        (C::ISSUE, "issue"),
        (C::REVOKE, "revoke"),
        (C::POLL, "poll"),
        (C::CHECK_IMPORT, "check-import"),
    ]
    .into_iter()
    .filter(|(c, _)| caps.contains(*c))
    .map(|(_, n)| n)
    .collect()
}
