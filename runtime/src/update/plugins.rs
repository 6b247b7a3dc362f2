//! Plugin updates from the feed: the policy picks a release, the release is downloaded and
//! verified (TUF: signed length and hash, by the delegated plugins role), checked to be the
//! package it claims, the running version's file is kept under `DATA/update/plugins/`, and the
//! new file is published into the plugin directory by rename — the registry's hot path then
//! loads it as it loads any file (compile, configure, health check, swap; jobs in flight finish
//! on the version they started on). The new version is then on probation: if its calls fail
//! `probation_failures` times before it has answered `probation_jobs` jobs or lived
//! `probation_seconds`, the previous version is swapped back in memory at once, its file
//! restored, and the new version recorded as refused.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use super::feed::Verified;
use super::release::{version_policy, Kind, Listed};
use super::state::{Probation, Version};
use super::{Standing, Updater};
use crate::lifecycle::Lifecycle;
use crate::plugins::package::{sha256_hex, PluginPackage};
use crate::plugins::settings::UpdatePolicy;
use crate::plugins::LoadedBackend;

/// A version on probation and the loaded backends whose calls judge it.
pub struct OnProbation {
    pub version: String,
    pub sha256: String,
    since: Instant,
    backends: Vec<Arc<LoadedBackend>>,
}

/// The version a plugin's backends run, and the loaded backends running it.
struct Running {
    version: String,
    sha256: String,
    backends: Vec<Arc<LoadedBackend>>,
}

impl Updater {
    fn running(&self, plugin: &str) -> Option<Running> {
        let backends: Vec<Arc<LoadedBackend>> = self
            .registry
            .instances()
            .iter()
            .filter(|i| i.plugin == plugin)
            .filter_map(|i| i.current())
            .collect();
        let first = backends.first()?;
        Some(Running {
            version: first.plugin.manifest.version.clone(),
            sha256: first.plugin.sha256.clone(),
            backends: backends
                .iter()
                .filter(|b| b.plugin.sha256 == first.plugin.sha256)
                .cloned()
                .collect(),
        })
    }

    fn kept(&self, plugin: &str, version: &Version) -> PathBuf {
        let short = version.sha256.get(..12).unwrap_or(&version.sha256);
        self.dir
            .join("plugins")
            .join(plugin)
            .join(format!("{}-{short}.wasm", version.version))
    }

    /// Keeps the file of the running version, for a rollback after a restart.
    fn keep(&self, plugin: &str, running: &Version) -> Result<(), String> {
        let dest = self.kept(plugin, running);
        if dest.exists() {
            return Ok(());
        }
        let bytes = std::fs::read(self.registry.plugin_path(plugin))
            .map_err(|e| format!("reading the running file: {e}"))?;
        if sha256_hex(&bytes) != running.sha256 {
            return Err("the file in the plugin directory is not the version running".into());
        }
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        crate::files::write_atomic(&dest, &bytes, 0o600).map_err(|e| e.to_string())
    }

    /// One plugin at one look at the feed: its standing, and the update its policy asks for.
    pub(super) async fn plugin_step(&self, plugin: &str, verified: &Verified) -> Standing {
        let policy = self
            .policies
            .get(plugin)
            .cloned()
            .unwrap_or_else(|| self.config.plugins.clone());
        let running = self.running(plugin);
        let line = verified.line(Kind::Plugin, plugin, &self.config.channel);
        let lifecycle_policy = version_policy(line.iter().map(|l| &l.release));
        let lifecycle = match (&running, &lifecycle_policy) {
            (Some(r), Some(p)) => Some(Lifecycle::of(&r.version, p, crate::lifecycle::today())),
            _ => None,
        };
        let newer = |than: &str| {
            line.last()
                .filter(|l| certconn_connector::compare_versions(&l.release.version, than).is_gt())
                .copied()
        };
        let available = match &running {
            Some(r) => newer(&r.version).map(|l| l.release.version.clone()),
            None => line.last().map(|l| l.release.version.clone()),
        };
        let on_probation = Self::lock(&self.state)
            .plugins
            .get(plugin)
            .and_then(|l| l.probation.clone());
        if let (Some(r), None) = (&running, &on_probation) {
            let mut state = Self::lock(&self.state);
            let line_state = state.plugins.entry(plugin.to_owned()).or_default();
            let now = Version {
                version: r.version.clone(),
                sha256: r.sha256.clone(),
            };
            if line_state.current.as_ref() != Some(&now) {
                line_state.current = Some(now);
                drop(state);
                self.save_state();
            }
        }
        let wanted: Option<&Listed> = match &policy {
            UpdatePolicy::Auto => match &running {
                Some(r) => newer(&r.version),
                None => None,
            },
            UpdatePolicy::Pinned(v) => line
                .iter()
                .find(|l| certconn_connector::compare_versions(&l.release.version, v).is_eq())
                .copied()
                .filter(|l| running.as_ref().is_none_or(|r| r.sha256 != l.sha256)),
            UpdatePolicy::Notify => None,
        };
        let note = if let Some(p) = &on_probation {
            Some(format!("{plugin} {} is on probation", p.version))
        } else if let Some(w) = wanted {
            let refused = Self::lock(&self.state)
                .plugins
                .get(plugin)
                .and_then(|l| l.refused(&w.sha256).cloned());
            match refused {
                Some(r) => Some(format!(
                    "{plugin} {} was refused and is not tried again: {}",
                    r.version, r.reason
                )),
                None if running.is_none() => Some(format!(
                    "{plugin} is not loaded here; the feed does not install a plugin no backend runs"
                )),
                None => Some(match self.install(plugin, w, verified, running.as_ref()).await {
                    Ok(done) => done,
                    Err(why) => why,
                }),
            }
        } else {
            match (&policy, &available) {
                (UpdatePolicy::Pinned(v), _)
                    if running.as_ref().is_some_and(|r| &r.version != v) =>
                {
                    Some(format!("pinned to {v}, which the feed's channel {:?} does not have", self.config.channel))
                }
                (UpdatePolicy::Notify, Some(v)) => Some(format!(
                    "{plugin} {v} is available; the policy is notify: set update = \"auto\" for its backends, or `certconn update check` after changing it"
                )),
                _ => None,
            }
        };
        Standing {
            name: plugin.to_owned(),
            running: running.as_ref().map(|r| r.version.clone()),
            policy: policy.to_string(),
            lifecycle,
            available,
            note,
        }
    }

    fn refuse(&self, plugin: &str, version: &str, sha256: &str, reason: String) -> String {
        tracing::warn!(event_id = 5106, %plugin, %version, "plugin update refused: {reason}");
        Self::lock(&self.state)
            .plugins
            .entry(plugin.to_owned())
            .or_default()
            .refuse(version, sha256, reason.clone());
        self.save_state();
        format!("{plugin} {version} was refused: {reason}")
    }

    async fn install(
        &self,
        plugin: &str,
        wanted: &Listed,
        verified: &Verified,
        running: Option<&Running>,
    ) -> Result<String, String> {
        let version = &wanted.release.version;
        let bytes = verified
            .download(wanted, self.config.max_download_bytes)
            .await
            .map_err(|e| {
                let why = crate::report::chain(&e);
                tracing::warn!(event_id = 5104, %plugin, %version, "plugin update not downloaded: {why}; the running version keeps serving");
                why
            })?;
        let path = self.registry.plugin_path(plugin);
        let package = match PluginPackage::from_bytes(&path, bytes) {
            Ok(p) => p,
            Err(e) => {
                return Err(self.refuse(
                    plugin,
                    version,
                    &wanted.sha256,
                    format!("not a plugin package: {e}"),
                ))
            }
        };
        if let Err(why) = wanted.release.check_manifest(&package.manifest) {
            return Err(self.refuse(plugin, version, &wanted.sha256, why));
        }
        let previous = running.map(|r| Version {
            version: r.version.clone(),
            sha256: r.sha256.clone(),
        });
        if let Some(p) = &previous {
            if let Err(why) = self.keep(plugin, p) {
                tracing::warn!(%plugin, "the running version could not be kept for a rollback after a restart: {why}");
            }
        }
        crate::files::write_atomic(&path, &package.bytes, 0o644)
            .map_err(|e| format!("publishing {}: {e}", path.display()))?;
        let report = self.registry.reload(plugin, false).await;
        let installed = match &report {
            Ok(r) => !r.installed.is_empty() || r.unchanged,
            Err(_) => false,
        };
        let now = self.running(plugin);
        if installed && now.as_ref().is_some_and(|n| n.sha256 == wanted.sha256) {
            let now = now.map(|n| n.backends).unwrap_or_default();
            tracing::info!(
                event_id = 5105,
                %plugin,
                from = previous.as_ref().map(|p| p.version.as_str()).unwrap_or("none"),
                to = %version,
                "plugin updated from the feed; on probation"
            );
            Self::lock(&self.probation).insert(
                plugin.to_owned(),
                OnProbation {
                    version: version.clone(),
                    sha256: wanted.sha256.clone(),
                    since: Instant::now(),
                    backends: now,
                },
            );
            Self::lock(&self.state)
                .plugins
                .entry(plugin.to_owned())
                .or_default()
                .probation = Some(Probation {
                version: version.clone(),
                sha256: wanted.sha256.clone(),
                since_ms: crate::journal::now_ms(),
            });
            self.save_state();
            return Ok(format!("{plugin} {version} installed; on probation"));
        }
        let why = match report {
            Ok(r) => r
                .refused
                .iter()
                .map(|(b, why)| format!("{b}: {why}"))
                .collect::<Vec<_>>()
                .join("; "),
            Err(e) => crate::report::chain(&e),
        };
        // A refusal the registry would retry (a failed health check: the CA may be back) is
        // not held against the version: the next look tries it again.
        let transient = self
            .registry
            .status()
            .plugins
            .iter()
            .find(|f| f.plugin == plugin)
            .and_then(|f| f.rejected.as_ref())
            .is_some_and(|r| !r.permanent && !r.untrusted);
        self.restore(plugin, previous.as_ref());
        if transient {
            tracing::warn!(event_id = 5104, %plugin, %version, "plugin update not loaded this time: {why}; tried again at the next look");
            return Err(format!(
                "{plugin} {version} was not loaded this time ({why}); tried again at the next look"
            ));
        }
        Err(self.refuse(
            plugin,
            version,
            &wanted.sha256,
            format!("the registry did not load it ({why})"),
        ))
    }

    /// Puts the kept file of `previous` back into the plugin directory.
    fn restore(&self, plugin: &str, previous: Option<&Version>) -> bool {
        let Some(p) = previous else { return false };
        let kept = self.kept(plugin, p);
        match std::fs::read(&kept) {
            Ok(bytes) => {
                match crate::files::write_atomic(&self.registry.plugin_path(plugin), &bytes, 0o644)
                {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::error!(%plugin, "restoring {} {}: {e}", plugin, p.version);
                        false
                    }
                }
            }
            Err(e) => {
                tracing::error!(%plugin, "the kept file of {} {} is gone ({}): {e}", plugin, p.version, kept.display());
                false
            }
        }
    }

    /// After a restart, an update still on probation is judged again from the start.
    pub(super) fn resume_probations(&self) {
        let pending: Vec<(String, Probation)> = Self::lock(&self.state)
            .plugins
            .iter()
            .filter_map(|(name, l)| l.probation.clone().map(|p| (name.clone(), p)))
            .collect();
        for (plugin, p) in pending {
            match self.running(&plugin) {
                Some(r) if r.sha256 == p.sha256 => {
                    tracing::info!(%plugin, version = %p.version, "plugin update resumes its probation");
                    Self::lock(&self.probation).insert(
                        plugin,
                        OnProbation {
                            version: p.version,
                            sha256: p.sha256,
                            since: Instant::now(),
                            backends: r.backends,
                        },
                    );
                }
                _ => {
                    // Someone published another file meanwhile: nothing left to judge.
                    if let Some(l) = Self::lock(&self.state).plugins.get_mut(&plugin) {
                        l.probation = None;
                    }
                    self.save_state();
                }
            }
        }
    }

    /// Passes or rolls back each version on probation, by its calls so far.
    pub(super) async fn judge_probations(&self) {
        let verdicts: Vec<(String, String, String, bool, String)> = {
            let probation = Self::lock(&self.probation);
            probation
                .iter()
                .filter_map(|(plugin, p)| {
                    let (answered, failed) = p.backends.iter().fold((0, 0), |(a, f), b| {
                        let (x, y) = b.outcomes.counts();
                        (a + x, f + y)
                    });
                    if failed >= self.config.probation_failures {
                        Some((plugin.clone(), p.version.clone(), p.sha256.clone(), false, format!(
                            "{failed} of its {} calls failed on probation (update.probation_failures = {})",
                            answered + failed,
                            self.config.probation_failures
                        )))
                    } else if answered >= self.config.probation_jobs
                        || p.since.elapsed().as_secs() >= self.config.probation_seconds
                    {
                        Some((plugin.clone(), p.version.clone(), p.sha256.clone(), true, format!("{answered} calls answered, {failed} failed")))
                    } else {
                        None
                    }
                })
                .collect()
        };
        for (plugin, version, sha256, passed, how) in verdicts {
            Self::lock(&self.probation).remove(&plugin);
            let previous = {
                let mut state = Self::lock(&self.state);
                let line = state.plugins.entry(plugin.clone()).or_default();
                line.probation = None;
                let previous = line.current.clone();
                if passed {
                    line.previous = previous.clone();
                    line.current = Some(Version {
                        version: version.clone(),
                        sha256: sha256.clone(),
                    });
                }
                previous
            };
            if passed {
                tracing::info!(event_id = 5108, %plugin, %version, "plugin update passed its probation ({how})");
                self.save_state();
                self.prune(&plugin);
                continue;
            }
            // Back at once in memory; then the file, so that a restart runs it too.
            let swapped = self.registry.rollback(&plugin).await.is_ok();
            let restored = self.restore(&plugin, previous.as_ref());
            if !swapped && restored {
                if let Err(e) = self.registry.reload(&plugin, false).await {
                    tracing::error!(%plugin, "loading the restored version: {}", crate::report::chain(&e));
                }
            }
            tracing::error!(
                event_id = 5107,
                %plugin,
                %version,
                back_to = previous.as_ref().map(|p| p.version.as_str()).unwrap_or("none"),
                "plugin update rolled back: {how}"
            );
            self.refuse(&plugin, &version, &sha256, format!("rolled back: {how}"));
        }
    }

    /// Keeps only the files of the current and previous versions.
    fn prune(&self, plugin: &str) {
        let keep: Vec<PathBuf> = {
            let state = Self::lock(&self.state);
            let Some(line) = state.plugins.get(plugin) else {
                return;
            };
            [&line.current, &line.previous]
                .into_iter()
                .flatten()
                .map(|v| self.kept(plugin, v))
                .collect()
        };
        let dir = self.dir.join("plugins").join(plugin);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for e in entries.flatten() {
            if !keep.contains(&e.path()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}
