//! The backend instances named in config and the plugin files they run.
//!
//! Loading a plugin version — at start, when the watcher sees a new file, or when an
//! administrator asks — happens off the hot path and is all-or-nothing per instance: the package
//! is read and its manifest checked, the component compiled once and linked against its contract
//! line, then every instance that runs it describes and configures it with its own settings and
//! (when replacing a working version) must report healthy. Only then is it swapped in. A version
//! that fails keeps nothing from happening but a log line and a `problem` in the status; a
//! deterministic failure is remembered by SHA-256 so the periodic rescan does not retry it, a
//! failed health check is retried (the CA may come back).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::instance::{Instance, InstanceSpec, InstanceStatus};
use super::manifest::Manifest;
use super::package::PluginPackage;
use super::settings::BackendConfig;
use super::signature::PublisherTrust;
use super::{LoadedBackend, PluginEngine, PluginError, PreparedPlugin};
use crate::crypto::AlgorithmPolicy;
use crate::custody::KeyStore;

/// Why an administrator's plugin action was not done.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    #[error("no backend runs a plugin named {plugin:?} (configured plugins: {known}){hint}")]
    UnknownPlugin {
        plugin: String,
        known: String,
        /// When the name is a backend's: which plugin it runs, and that `drain` acts on one
        /// backend.
        hint: String,
    },
    #[error("no backend named {backend:?} (configured backends: {known})")]
    UnknownBackend { backend: String, known: String },
    #[error("plugin {0:?} is unloaded; `certconn plugins load {0}` loads it again")]
    Unloaded(String),
    #[error("no backend running plugin {plugin:?} has a previous version to roll back to ({})", .backends.join(", "))]
    NothingToRollBack {
        plugin: String,
        backends: Vec<String>,
    },
    #[error(transparent)]
    Load(#[from] PluginError),
}

/// What the registry remembers about one plugin file.
#[derive(Debug, Default, Clone, Serialize)]
pub struct FileStatus {
    pub plugin: String,
    pub path: PathBuf,
    /// SHA-256 of the version the instances run.
    pub loaded_sha256: Option<String>,
    /// The fingerprint of the publisher key that signed that version, if signed.
    pub signed_by: Option<String>,
    /// A version that was refused, and why; not retried until the file changes.
    pub rejected: Option<Rejection>,
    /// The administrator unloaded it.
    pub unloaded: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Rejection {
    pub sha256: String,
    pub version: Option<String>,
    pub reason: String,
    /// False when a later rescan may try it again (a failed health check, an untrusted file).
    pub permanent: bool,
    /// Refused for where it lies, not for what it holds: the file or the plugin directory may
    /// be changed by someone other than certconn's user or root ([`super::placement`]).
    pub untrusted: bool,
}

/// What one load attempt did.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub plugin: String,
    /// The version read from the file, when it could be read.
    pub version: Option<String>,
    /// Instances now running it.
    pub installed: Vec<String>,
    /// Instances that kept their version, with the reason.
    pub refused: Vec<(String, String)>,
    /// Nothing to do (the instances already run this file).
    pub unchanged: bool,
}

/// The registry as `/v1/plugins` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RegistryStatus {
    pub plugins_dir: PathBuf,
    pub plugins: Vec<FileStatus>,
    pub backends: Vec<InstanceStatus>,
}

/// All backend instances and their plugin files.
pub struct Registry {
    engine: Arc<PluginEngine>,
    policy: AlgorithmPolicy,
    /// The site's outbound proxy, for the plugins' granted HTTP.
    proxy: Option<Arc<crate::proxy::Proxy>>,
    dir: PathBuf,
    /// The instances and what configures them; a configuration reload replaces it whole.
    configured: std::sync::RwLock<Arc<Configured>>,
    files: Mutex<BTreeMap<String, FileStatus>>,
    /// One load at a time: the watcher, the periodic rescan and the admin API take turns.
    loading: tokio::sync::Mutex<()>,
}

/// The backend instances the config names, with their configs and trust.
struct Configured {
    instances: BTreeMap<String, Arc<Instance>>,
    /// Instance configs, for comparing a manifest's requests with the grants.
    configs: BTreeMap<String, BackendConfig>,
    /// The publishers each backend trusts ([`super::signature`]).
    trust: PublisherTrust,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field(
                "instances",
                &self.configured().instances.keys().collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// Creates every backend instance in `backends` and loads the plugin files present. A plugin
    /// that rejects an instance's settings stops start-up with the field named (the config is
    /// wrong); a missing or unusable plugin file does not — that instance waits for a good file,
    /// says why in its status and at error level in the log, and the profiles routed to it use
    /// their fallbacks.
    pub async fn load(
        engine: Arc<PluginEngine>,
        plugins_dir: &Path,
        backends: &BTreeMap<String, BackendConfig>,
        keys: Arc<KeyStore>,
        policy: AlgorithmPolicy,
        proxy: Option<Arc<crate::proxy::Proxy>>,
        trust: PublisherTrust,
    ) -> Result<Self, PluginError> {
        let mut instances = BTreeMap::new();
        for (name, b) in backends {
            let spec = InstanceSpec::from_config(name, b, keys.clone(), policy, proxy.clone())?;
            instances.insert(name.clone(), Arc::new(Instance::new(spec)));
        }
        let registry = Self {
            engine,
            policy,
            proxy,
            dir: plugins_dir.to_owned(),
            configured: std::sync::RwLock::new(Arc::new(Configured {
                instances,
                configs: backends.clone(),
                trust,
            })),
            files: Mutex::new(BTreeMap::new()),
            loading: tokio::sync::Mutex::new(()),
        };
        for plugin in registry.plugin_names() {
            let report = registry.load_plugin(&plugin, true, true).await?;
            for (backend, reason) in &report.refused {
                tracing::error!(%backend, %plugin, "backend not serving: {reason}");
            }
        }
        Ok(registry)
    }

    /// The instances as configured now. A snapshot: a reload meanwhile does not change it.
    fn configured(&self) -> Arc<Configured> {
        // Written only by one pointer swap, which cannot panic halfway.
        self.configured
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn files(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, FileStatus>> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The plugin files the instances run, by name.
    pub fn plugin_names(&self) -> BTreeSet<String> {
        self.configured()
            .instances
            .values()
            .map(|i| i.plugin.clone())
            .collect()
    }

    /// Where plugin `name` is published.
    pub fn plugin_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.wasm"))
    }

    pub fn plugins_dir(&self) -> &Path {
        &self.dir
    }

    /// The backend instance called `name`.
    pub fn instance(&self, name: &str) -> Option<Arc<Instance>> {
        self.configured().instances.get(name).cloned()
    }

    /// The version instance `name` serves now.
    pub fn backend(&self, name: &str) -> Option<Arc<LoadedBackend>> {
        self.instance(name).and_then(|i| i.current())
    }

    /// All backend instances configured now, by name.
    pub fn instances(&self) -> Vec<Arc<Instance>> {
        self.configured().instances.values().cloned().collect()
    }

    /// `NAME: state` of each instance that is not serving: what makes certconn's health
    /// `degraded`.
    pub fn not_serving(&self) -> Vec<String> {
        self.instances()
            .iter()
            .map(|i| (i, i.status().state))
            .filter(|(_, state)| *state != "serving")
            .map(|(i, state)| format!("{}: {state}", i.name))
            .collect()
    }

    /// A configuration reload: the instances become those of `backends`. The instances named
    /// in `rebuild` (new, or configured differently) are made afresh and must each load their
    /// plugin before anything changes; if one does not, nothing changes and the error says
    /// why. The others keep running as they are (version, breaker, drain). A removed instance
    /// takes no new jobs; jobs in flight on it finish on the version they hold.
    pub async fn reconfigure(
        &self,
        backends: &BTreeMap<String, BackendConfig>,
        rebuild: &BTreeSet<String>,
        keys: Arc<KeyStore>,
        trust: PublisherTrust,
    ) -> Result<(), PluginError> {
        let _turn = self.loading.lock().await;
        let old = self.configured();
        let mut instances = BTreeMap::new();
        let mut fresh = Vec::new();
        for (name, config) in backends {
            match old.instances.get(name) {
                Some(i) if !rebuild.contains(name) => {
                    instances.insert(name.clone(), i.clone());
                }
                before => {
                    let spec = InstanceSpec::from_config(
                        name,
                        config,
                        keys.clone(),
                        self.policy,
                        self.proxy.clone(),
                    )?;
                    let instance = Arc::new(Instance::new(spec));
                    // What the administrator said about the instance it replaces still holds.
                    if let Some(before) = before {
                        instance.set_drained(before.is_drained());
                    }
                    instances.insert(name.clone(), instance.clone());
                    fresh.push(instance);
                }
            }
        }
        let candidate = Configured {
            instances,
            configs: backends.clone(),
            trust,
        };
        let plugins: BTreeSet<String> = fresh.iter().map(|i| i.plugin.clone()).collect();
        for plugin in plugins {
            let users: Vec<Arc<Instance>> = fresh
                .iter()
                .filter(|i| i.plugin == plugin)
                .cloned()
                .collect();
            let report = self
                .load_into(&plugin, users, &candidate, true, true)
                .await?;
            if let Some((backend, reason)) = report.refused.first() {
                return Err(PluginError::Invalid {
                    plugin: plugin.clone(),
                    reason: format!("backend {backend:?} cannot load it: {reason}"),
                });
            }
            if self.files().get(&plugin).is_some_and(|f| f.unloaded) {
                for i in fresh.iter().filter(|i| i.plugin == plugin) {
                    i.set_unloaded(true);
                }
            }
        }
        *self.configured.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(candidate);
        Ok(())
    }

    /// Checks every plugin file in use and loads those that changed. The watcher calls this on
    /// any change in the plugins directory, and a timer as a backstop.
    pub async fn rescan(&self) -> Vec<LoadReport> {
        let mut reports = Vec::new();
        for plugin in self.plugin_names() {
            match self.load_plugin(&plugin, false, false).await {
                Ok(r) if !r.unchanged => reports.push(r),
                Ok(_) => {}
                Err(e) => tracing::error!(%plugin, "loading the plugin: {e}"),
            }
        }
        reports
    }

    /// `certconn plugins load|reload NAME`: loads the file now, even if it was refused before
    /// (the CA may be back); `load` also undoes `unload`.
    pub async fn reload(
        &self,
        plugin: &str,
        and_enable: bool,
    ) -> Result<LoadReport, RegistryError> {
        if !self.plugin_names().contains(plugin) {
            return Err(self.unknown_plugin(plugin));
        }
        let mut enabled = Vec::new();
        if and_enable {
            enabled = self
                .instances()
                .iter()
                .filter(|i| i.plugin == plugin && i.is_unloaded() && i.loaded_sha().is_some())
                .map(|i| i.name.clone())
                .collect();
            self.set_unloaded(plugin, false);
        } else if self.files().get(plugin).is_some_and(|f| f.unloaded) {
            return Err(RegistryError::Unloaded(plugin.to_owned()));
        }
        let mut report = self.load_plugin(plugin, true, false).await?;
        // Instances brought back by `load` serve again, on the version they had.
        for name in enabled {
            if !report.installed.contains(&name) && !report.refused.iter().any(|(n, _)| *n == name)
            {
                report.installed.push(name);
                report.unchanged = false;
            }
        }
        Ok(report)
    }

    fn unknown_plugin(&self, plugin: &str) -> RegistryError {
        let hint = self
            .instances()
            .iter()
            .find(|i| i.name == plugin)
            .map(|i| {
                format!(
                    "; {plugin:?} is a backend, and the plugin it runs is {:?} (to stop or \
                     start one backend alone: `certconn plugins drain|undrain {plugin}`)",
                    i.plugin
                )
            })
            .unwrap_or_default();
        RegistryError::UnknownPlugin {
            hint,
            plugin: plugin.to_owned(),
            known: self
                .plugin_names()
                .into_iter()
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    fn set_unloaded(&self, plugin: &str, unloaded: bool) -> Vec<String> {
        let mut names = Vec::new();
        for i in self.instances().iter().filter(|i| i.plugin == plugin) {
            i.set_unloaded(unloaded);
            names.push(i.name.clone());
        }
        let mut files = self.files();
        let f = files.entry(plugin.to_owned()).or_default();
        f.plugin = plugin.to_owned();
        f.unloaded = unloaded;
        names
    }

    /// `certconn plugins unload NAME`: its instances stop taking jobs (jobs in flight finish;
    /// profiles move to their fallbacks) until it is loaded again. The watcher leaves it alone.
    pub async fn unload(&self, plugin: &str) -> Result<Vec<String>, RegistryError> {
        if !self.plugin_names().contains(plugin) {
            return Err(self.unknown_plugin(plugin));
        }
        let _turn = self.loading.lock().await;
        let names = self.set_unloaded(plugin, true);
        tracing::warn!(%plugin, backends = ?names, "plugin unloaded by the administrator");
        Ok(names)
    }

    /// `certconn plugins drain|undrain BACKEND`: one instance stops taking new jobs (jobs in
    /// flight finish; its profiles use their fallbacks or wait) or takes them again. Other
    /// instances of the same plugin — another NDES forest — go on. Returns whether anything
    /// changed.
    pub fn drain(&self, backend: &str, drained: bool) -> Result<bool, RegistryError> {
        let instance = self
            .instance(backend)
            .ok_or_else(|| self.unknown_backend(backend))?;
        let changed = instance.set_drained(drained);
        if changed {
            tracing::warn!(%backend, drained, "backend {} by the administrator", if drained { "drained" } else { "undrained" });
        }
        Ok(changed)
    }

    fn unknown_backend(&self, backend: &str) -> RegistryError {
        RegistryError::UnknownBackend {
            backend: backend.to_owned(),
            known: self
                .configured()
                .instances
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    /// `certconn plugins rollback NAME`: each instance running plugin NAME — or the one
    /// backend NAME — goes back to the version it ran before. The file now in the directory is
    /// remembered as refused, so the watcher does not put it back; publishing a different file
    /// does.
    pub async fn rollback(
        &self,
        name: &str,
    ) -> Result<Vec<(String, String, String)>, RegistryError> {
        let (plugin, only) = match self.instance(name) {
            Some(i) => (i.plugin.clone(), Some(name)),
            None if self.plugin_names().contains(name) => (name.to_owned(), None),
            None => return Err(self.unknown_plugin(name)),
        };
        let plugin = plugin.as_str();
        let _turn = self.loading.lock().await;
        let mut done = Vec::new();
        let mut without = Vec::new();
        for i in self
            .instances()
            .iter()
            .filter(|i| i.plugin == plugin && only.is_none_or(|b| i.name == b))
        {
            match i.rollback() {
                Some((from, to)) => {
                    tracing::warn!(backend = %i.name, %from, %to, "rolled back by the administrator");
                    done.push((i.name.clone(), from, to));
                }
                None => without.push(i.name.clone()),
            }
        }
        if done.is_empty() {
            return Err(RegistryError::NothingToRollBack {
                plugin: plugin.to_owned(),
                backends: without,
            });
        }
        let serving = self
            .instances()
            .iter()
            .find(|i| i.plugin == plugin)
            .and_then(|i| i.loaded_sha());
        let mut files = self.files();
        let f = files.entry(plugin.to_owned()).or_default();
        f.loaded_sha256 = serving.clone();
        // The file in the directory is the version rolled back from (unless someone already
        // published the old one again): the watcher must not put it back. It is never the
        // version now serving, so the list cannot call the serving version refused.
        if let Ok(bytes) = std::fs::read(self.plugin_path(plugin)) {
            let sha = super::package::sha256_hex(&bytes);
            if serving.as_deref() != Some(sha.as_str()) {
                f.rejected = Some(Rejection {
                    sha256: sha,
                    version: done.first().map(|(_, from, _)| from.clone()),
                    reason: "rolled back by the administrator; publish a new file to load it"
                        .into(),
                    permanent: true,
                    untrusted: false,
                });
            }
        }
        drop(files);
        Ok(done)
    }

    /// Loads the file of `plugin` into every instance that runs it. `force` tries a file that
    /// was refused before; at `startup` settings the plugin rejects are an error (the config is
    /// wrong) and a missing file is noted for each instance. A file that disappears later
    /// changes nothing: the instances keep the version they run.
    async fn load_plugin(
        &self,
        plugin: &str,
        force: bool,
        startup: bool,
    ) -> Result<LoadReport, PluginError> {
        let _turn = self.loading.lock().await;
        let configured = self.configured();
        let users: Vec<Arc<Instance>> = configured
            .instances
            .values()
            .filter(|i| i.plugin == plugin && (!i.is_unloaded() || startup))
            .cloned()
            .collect();
        self.load_into(plugin, users, &configured, force, startup)
            .await
    }

    /// [`Self::load_plugin`] into `users`, configured as `configured` says; the caller holds
    /// the loading turn.
    async fn load_into(
        &self,
        plugin: &str,
        users: Vec<Arc<Instance>>,
        configured: &Configured,
        force: bool,
        startup: bool,
    ) -> Result<LoadReport, PluginError> {
        let path = self.plugin_path(plugin);
        let mut report = LoadReport {
            plugin: plugin.to_owned(),
            version: None,
            installed: Vec::new(),
            refused: Vec::new(),
            unchanged: false,
        };
        let refuse_all = |report: &mut LoadReport, reason: &str| {
            for i in &users {
                if i.current().is_none() || startup {
                    i.note_problem(reason);
                } else {
                    i.note_problem(format!(
                        "kept {}: {reason}",
                        i.current().map(|b| b.version_id()).unwrap_or_default()
                    ));
                }
                report.refused.push((i.name.clone(), reason.to_owned()));
            }
        };
        if users.is_empty() {
            report.unchanged = true;
            return Ok(report);
        }
        match super::placement::check(&self.dir, &path) {
            Ok(()) => self.clear_untrusted(plugin, &users),
            Err(why) => {
                let reason = self.refuse_untrusted(plugin, &path, &why);
                refuse_all(&mut report, &reason);
                return Ok(report);
            }
        }
        // Read the file's bytes once; everything after works on them, so a rename during the
        // load cannot mix two versions.
        let package = match tokio::task::spawn_blocking({
            let path = path.clone();
            move || PluginPackage::read(&path)
        })
        .await
        {
            Ok(Ok(p)) => p,
            Ok(Err(PluginError::Io { source, .. }))
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                let reason = format!("waiting for {}", path.display());
                if startup || force {
                    tracing::warn!(%plugin, "plugin file missing: {reason}");
                    refuse_all(&mut report, &reason);
                } else {
                    report.unchanged = true;
                }
                return Ok(report);
            }
            Ok(Err(e)) => {
                let sha = std::fs::read(&path)
                    .map(|b| super::package::sha256_hex(&b))
                    .unwrap_or_default();
                if !force && self.already_refused(plugin, &sha) {
                    report.unchanged = true;
                    return Ok(report);
                }
                let reason = e.to_string();
                tracing::error!(%plugin, "new plugin version refused: {reason}");
                self.remember_refusal(plugin, &path, &sha, None, &reason, true);
                refuse_all(&mut report, &reason);
                return Ok(report);
            }
            Err(e) => return Err(PluginError::Engine(format!("plugin loading task: {e}"))),
        };
        let version = package.version_id();
        report.version = Some(version.clone());
        // This version is refused for every instance that uses it, and remembered so.
        let refuse_package = |report: &mut LoadReport, sha: &str, reason: &str| {
            tracing::error!(%plugin, %version, "new plugin version refused: {reason}");
            self.remember_refusal(plugin, &path, sha, Some(&version), reason, true);
            refuse_all(report, reason);
        };
        let up_to_date = users
            .iter()
            .all(|i| i.loaded_sha().as_deref() == Some(package.sha256.as_str()));
        // Already running it everywhere: nothing to do, even when forced (a reload of the same
        // file must not make the running version its own "previous").
        if up_to_date || (!force && self.already_refused(plugin, &package.sha256)) {
            report.unchanged = true;
            return Ok(report);
        }
        if package.manifest.name != plugin {
            let reason = format!(
                "the package is the plugin {:?} but is published as {}.wasm",
                package.manifest.name, plugin
            );
            refuse_package(&mut report, &package.sha256, &reason);
            return Ok(report);
        }
        let signer = match super::signature::signer_of(&package.bytes) {
            Ok(s) => s,
            Err(e) => {
                refuse_package(&mut report, &package.sha256, &e.to_string());
                return Ok(report);
            }
        };
        // Trust is decided before the code is compiled: a package no backend trusts never
        // reaches the compiler.
        let trust = &configured.trust;
        let distrusted: BTreeMap<String, String> = users
            .iter()
            .filter_map(|i| {
                super::signature::check_trust(signer.as_ref(), trust.for_backend(&i.name))
                    .err()
                    .map(|reason| (i.name.clone(), reason))
            })
            .collect();
        let refuse_distrusted = |instance: &Instance, report: &mut LoadReport| {
            let reason = distrusted.get(&instance.name)?;
            tracing::error!(backend = %instance.name, %version, "new plugin version refused: {reason}");
            instance.note_problem(match instance.current() {
                Some(cur) => format!("kept {}: {version} refused: {reason}", cur.version_id()),
                None => reason.clone(),
            });
            report.refused.push((instance.name.clone(), reason.clone()));
            Some(reason.clone())
        };
        if distrusted.len() == users.len() {
            let mut last = None;
            for instance in &users {
                last = refuse_distrusted(instance, &mut report).or(last);
            }
            if let Some(reason) = last {
                self.remember_refusal(
                    plugin,
                    &path,
                    &package.sha256,
                    Some(&version),
                    &reason,
                    true,
                );
            }
            return Ok(report);
        }
        let sha = package.sha256.clone();
        let manifest = package.manifest.clone();
        let prepared = match compile_in_background(self.engine.clone(), package).await? {
            Ok(p) => Arc::new(p),
            Err(e) => {
                refuse_package(&mut report, &sha, &e.to_string());
                return Ok(report);
            }
        };

        let mut health_failed = false;
        let mut permanent_failure = None;
        for instance in &users {
            if let Some(reason) = refuse_distrusted(instance, &mut report) {
                permanent_failure = Some(reason);
                continue;
            }
            let unmet = match configured.configs.get(&instance.name) {
                Some(config) => unmet_requests(config, &manifest),
                None => Vec::new(),
            };
            for note in unmet {
                tracing::warn!(backend = %instance.name, %version, "{note}");
            }
            let built = match instance
                .build(self.engine.clone(), prepared.clone(), self.policy)
                .await
            {
                Ok(b) => b,
                Err(e @ PluginError::Config { .. }) if startup => return Err(e),
                Err(e) => {
                    let reason = e.to_string();
                    tracing::error!(backend = %instance.name, %version, "new plugin version refused: {reason}");
                    instance.note_problem(match instance.current() {
                        Some(cur) => {
                            format!("kept {}: {version} refused: {reason}", cur.version_id())
                        }
                        None => reason.clone(),
                    });
                    report.refused.push((instance.name.clone(), reason.clone()));
                    permanent_failure = Some(reason);
                    continue;
                }
            };
            // Health gates only the replacement of a working version: with nothing to protect
            // (first load, start-up) the version serves, and a CA that is down at start must
            // not hold the daemon up behind its connect timeouts.
            if instance.current().is_some() && !startup {
                let why = match built.health().await {
                    Ok(h) if h.healthy => None,
                    Ok(h) => Some(h.message),
                    Err(e) => Some(e.to_string()),
                };
                if let Some(why) = why {
                    let reason = format!("health check failed: {why}");
                    tracing::warn!(backend = %instance.name, %version, "new plugin version not swapped in: {reason}");
                    instance.note_problem(format!(
                        "kept {}: {version} not swapped in: {reason}",
                        instance
                            .current()
                            .map(|b| b.version_id())
                            .unwrap_or_default()
                    ));
                    report.refused.push((instance.name.clone(), reason));
                    health_failed = true;
                    continue;
                }
            }
            let was = instance.install(Arc::new(built));
            match was {
                Some(was) => {
                    tracing::info!(backend = %instance.name, %version, %was, "new plugin version swapped in")
                }
                None => {
                    tracing::info!(backend = %instance.name, %version, contract = %prepared.contract, "backend loaded")
                }
            }
            report.installed.push(instance.name.clone());
        }
        {
            let mut files = self.files();
            let f = files.entry(plugin.to_owned()).or_default();
            f.plugin = plugin.to_owned();
            f.path = path.clone();
            if !report.installed.is_empty() {
                f.loaded_sha256 = Some(sha.clone());
                f.signed_by = signer.as_ref().map(|s| s.fingerprint.clone());
            }
            f.rejected = match (&permanent_failure, health_failed) {
                (Some(reason), _) => Some(Rejection {
                    sha256: sha.clone(),
                    version: Some(version.clone()),
                    reason: reason.clone(),
                    permanent: true,
                    untrusted: false,
                }),
                (None, true) => Some(Rejection {
                    sha256: sha.clone(),
                    version: Some(version.clone()),
                    reason: "health check failed; retried at the next rescan".into(),
                    permanent: false,
                    untrusted: false,
                }),
                (None, false) => None,
            };
        }
        Ok(report)
    }

    fn already_refused(&self, plugin: &str, sha: &str) -> bool {
        self.files()
            .get(plugin)
            .and_then(|f| f.rejected.as_ref())
            .is_some_and(|r| r.permanent && r.sha256 == sha)
    }

    fn remember_refusal(
        &self,
        plugin: &str,
        path: &Path,
        sha: &str,
        version: Option<&str>,
        reason: &str,
        permanent: bool,
    ) {
        let mut files = self.files();
        let f = files.entry(plugin.to_owned()).or_default();
        f.plugin = plugin.to_owned();
        f.path = path.to_owned();
        f.rejected = Some(Rejection {
            sha256: sha.to_owned(),
            version: version.map(str::to_owned),
            reason: reason.to_owned(),
            permanent,
            untrusted: false,
        });
    }

    /// Refuses the file of `plugin` for where it lies, telling each instance, and logs it once
    /// per file and reason (the check runs again at every rescan, so that a fixed mode is seen).
    fn refuse_untrusted(&self, plugin: &str, path: &Path, why: &str) -> String {
        let reason = format!("not loaded: {why}");
        let sha = std::fs::read(path)
            .map(|b| super::package::sha256_hex(&b))
            .unwrap_or_default();
        let mut files = self.files();
        let f = files.entry(plugin.to_owned()).or_default();
        let known = f
            .rejected
            .as_ref()
            .is_some_and(|r| r.untrusted && r.reason == reason && r.sha256 == sha);
        if !known {
            tracing::error!(%plugin, "plugin file refused: {reason}");
        }
        f.plugin = plugin.to_owned();
        f.path = path.to_owned();
        f.rejected = Some(Rejection {
            sha256: sha,
            version: None,
            reason: reason.clone(),
            permanent: false,
            untrusted: true,
        });
        reason
    }

    /// Forgets an earlier refusal of `plugin`'s file for where it lay, once the file passes
    /// the check: the instances' notes about it go too (a new version, if any, loads next).
    fn clear_untrusted(&self, plugin: &str, users: &[Arc<Instance>]) {
        let mut files = self.files();
        let Some(f) = files.get_mut(plugin) else {
            return;
        };
        if f.rejected.as_ref().is_some_and(|r| r.untrusted) {
            f.rejected = None;
            tracing::info!(%plugin, "plugin file trusted again");
            for i in users {
                i.clear_problem();
            }
        }
    }

    /// Everything `certconn plugins list` shows.
    pub fn status(&self) -> RegistryStatus {
        let files = self.files();
        let plugins = self
            .plugin_names()
            .into_iter()
            .map(|p| {
                let mut f = files.get(&p).cloned().unwrap_or_default();
                f.plugin = p.clone();
                f.path = self.plugin_path(&p);
                f
            })
            .collect();
        RegistryStatus {
            plugins_dir: self.dir.clone(),
            plugins,
            backends: self.instances().iter().map(|i| i.status()).collect(),
        }
    }
}

/// One thing a plugin's manifest asks for that its instance is not granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unmet {
    /// A custody key it needs (named by its settings): its work will fail.
    Key(String),
    /// Hosts, memory, time: it may cope with less.
    Other(String),
}

impl std::fmt::Display for Unmet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Key(s) | Self::Other(s) => f.write_str(s),
        }
    }
}

/// What `manifest` asks for that `config` (a backend instance) does not grant, in words: the
/// administrator sees it at load (and in `certconn check-config`), and the plugin is denied
/// those uses when it tries.
pub fn unmet_requests(config: &BackendConfig, manifest: &Manifest) -> Vec<Unmet> {
    let setting = |entry: &str| -> Option<String> {
        let key = entry.strip_prefix("settings.")?;
        config
            .settings
            .get(key)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    let mut notes = Vec::new();
    for entry in &manifest.requests.http {
        // (host, port); no port: any port of that host will do.
        let wanted = match setting(entry) {
            Some(url) => url.parse::<http::Uri>().ok().and_then(|u| {
                let port = u.port_u16().unwrap_or(if u.scheme_str() == Some("https") {
                    443
                } else {
                    80
                });
                u.host().map(|h| (h.to_owned(), Some(port)))
            }),
            None if entry.starts_with("settings.") => None,
            None => {
                let (h, p) = crate::proxy::split_host_port(entry);
                Some((h.to_owned(), p))
            }
        };
        if let Some((host, port)) = wanted {
            let granted = config.http.allow.iter().any(|a| {
                let port = port.or(crate::proxy::split_host_port(a).1).unwrap_or(0);
                super::http::entry_matches(a, &host, port)
            });
            if !granted {
                notes.push(Unmet::Other(format!("the plugin asks to reach {host} ({entry}), which is not in http.allow: those requests will be denied")));
            }
        }
    }
    for entry in &manifest.requests.keys {
        let handle = setting(entry).unwrap_or_else(|| entry.clone());
        let known = !entry.starts_with("settings.") || setting(entry).is_some();
        if known && !config.keys.iter().any(|k| *k.get_ref() == handle) {
            notes.push(Unmet::Key(format!("the plugin asks for custody key {handle:?} ({entry}), which is not granted in keys: its use will be denied")));
        }
    }
    let limits = config.limits();
    if let Some(mb) = manifest.requests.memory_mb {
        if mb << 20 > limits.memory_bytes {
            notes.push(Unmet::Other(format!("the plugin asks for {mb} MiB of memory; the instance is granted {} MiB (memory_mb)", limits.memory_bytes >> 20)));
        }
    }
    if let Some(s) = manifest.requests.timeout_seconds {
        if s > limits.timeout.as_secs() {
            notes.push(Unmet::Other(format!(
                "the plugin asks for {s}s per call; the instance is granted {}s (timeout_seconds)",
                limits.timeout.as_secs()
            )));
        }
    }
    notes
}

/// Compiles and links a plugin version on a thread of its own at low CPU priority (nice 10), so
/// that loading a new version while jobs run slows the jobs as little as it can: compilation is
/// the one CPU-heavy step of a hot load (cranelift, hundreds of milliseconds), and the engine
/// compiles on one thread (`parallel_compilation(false)`), so the other cores stay with the jobs.
async fn compile_in_background(
    engine: Arc<PluginEngine>,
    package: PluginPackage,
) -> Result<Result<PreparedPlugin, PluginError>, PluginError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("certconn-compile".into())
        .spawn(move || {
            // SAFETY: setpriority on the calling thread (on Linux, PRIO_PROCESS with `who` 0
            // is this thread) changes only its scheduling priority; a failure is harmless.
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS, 0, 10);
            }
            let _ = tx.send(PreparedPlugin::prepare(&engine, &package));
        })
        .map_err(|e| PluginError::Engine(format!("starting a compile thread: {e}")))?;
    rx.await
        .map_err(|_| PluginError::Engine("the compile thread ended without an answer".into()))
}
