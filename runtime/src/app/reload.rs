//! Configuration reload (`SIGHUP`, `certconn reload`, `POST /v1/reload`): backends and
//! profiles change without a restart and without losing a job.
//!
//! The new file is read and checked as at start; then what may change without a restart is
//! compared with what runs. Only `[backends.*]` and `[profiles.*]` reload: everything else
//! (listeners, data directory, custody and keys, jobs, SCEP, revocation, plugins directory) is
//! wired into running parts, and a change there is refused with the sections named — nothing
//! half-applied. New and changed backends are built and must load their plugin before anything
//! changes; unchanged ones keep running untouched. A backend with jobs pending at its CA, or a
//! profile named by jobs not yet finished, cannot be removed: those jobs would fail for
//! nothing. Any refusal leaves the running configuration exactly as it was.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

use super::{publisher_trust, Config, StartError};
use crate::config::ConfigError;
use crate::custody::KeyStore;
use crate::jobs::{Intake, Profiles};
use crate::journal::{JobState, JobStore, JournalError};
use crate::plugins::Registry;

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    #[error("the new configuration is refused; the running one stays")]
    Config(#[source] ConfigError),
    #[error(
        "{} changed; that takes a restart (only [backends] and [profiles] reload); nothing was changed",
        .sections.join(", ")
    )]
    NeedsRestart { sections: Vec<String> },
    #[error("{0}; nothing was changed")]
    InUse(String),
    #[error("the new configuration is refused; the running one stays")]
    Start(#[source] StartError),
    #[error("reading the journal")]
    Journal(#[from] JournalError),
}

/// What a reload changed.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct ReloadReport {
    pub backends_added: Vec<String>,
    pub backends_changed: Vec<String>,
    pub backends_removed: Vec<String>,
    pub profiles_added: Vec<String>,
    pub profiles_changed: Vec<String>,
    pub profiles_removed: Vec<String>,
}

impl ReloadReport {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// The running parts a reload changes, and the configuration they run.
pub struct Reloader {
    path: PathBuf,
    /// The text of the configuration running now; the lock also keeps reloads one at a time.
    running: tokio::sync::Mutex<String>,
    registry: Arc<Registry>,
    profiles: Arc<Profiles>,
    intake: Arc<Intake>,
    keys: Arc<KeyStore>,
    jobs: Arc<dyn JobStore>,
}

impl Reloader {
    pub(super) fn new(
        config: &Config,
        registry: Arc<Registry>,
        profiles: Arc<Profiles>,
        intake: Arc<Intake>,
        keys: Arc<KeyStore>,
        jobs: Arc<dyn JobStore>,
    ) -> Self {
        Self {
            path: config.source_path.clone(),
            running: tokio::sync::Mutex::new(config.source_text.clone()),
            registry,
            profiles,
            intake,
            keys,
            jobs,
        }
    }

    /// Reads the config file again and applies what changed in `[backends]` and `[profiles]`.
    pub async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let mut running = self.running.lock().await;
        let new = Config::load(&self.path).map_err(ReloadError::Config)?;
        let (old_tables, new_tables) = (tables(&running), tables(&new.source_text));
        let sections: Vec<String> = old_tables
            .keys()
            .chain(new_tables.keys())
            .filter(|k| !matches!(k.as_str(), "backends" | "profiles"))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter(|k| old_tables.get(*k) != new_tables.get(*k))
            .map(|k| format!("[{k}]"))
            .collect();
        if !sections.is_empty() {
            return Err(ReloadError::NeedsRestart { sections });
        }
        let backends = diff(&old_tables, &new_tables, "backends");
        let profiles = diff(&old_tables, &new_tables, "profiles");
        self.check_removals(&backends.removed, &profiles.removed)
            .await?;

        let rebuild: BTreeSet<String> = backends
            .added
            .iter()
            .chain(&backends.changed)
            .cloned()
            .collect();
        let trust = publisher_trust(&new).map_err(ReloadError::Start)?;
        self.registry
            .reconfigure(&new.backends, &rebuild, self.keys.clone(), trust)
            .await
            .map_err(|e| ReloadError::Start(StartError::from_plugin(&new, e)))?;
        self.profiles.replace(new.profiles.clone());
        self.intake
            .set_names(new.profile_routes(), new.backends.keys().cloned());
        let report = ReloadReport {
            backends_added: backends.added,
            backends_changed: backends.changed,
            backends_removed: backends.removed,
            profiles_added: profiles.added,
            profiles_changed: profiles.changed,
            profiles_removed: profiles.removed,
        };
        *running = new.source_text;
        Ok(report)
    }

    /// Refuses to remove a backend that jobs are pending at, or a profile that unfinished
    /// jobs name.
    async fn check_removals(
        &self,
        backends: &[String],
        profiles: &[String],
    ) -> Result<(), ReloadError> {
        if backends.is_empty() && profiles.is_empty() {
            return Ok(());
        }
        let unfinished = self.jobs.unfinished().await?;
        for backend in backends {
            let pending = unfinished
                .iter()
                .filter(|j| j.state == JobState::Pending && j.backend.as_deref() == Some(backend))
                .count();
            if pending > 0 {
                return Err(ReloadError::InUse(format!(
                    "backend {backend:?} cannot be removed while {pending} job(s) are pending at its CA (they poll it until the CA decides); remove it once `certconn jobs list --state pending` shows none"
                )));
            }
        }
        for profile in profiles {
            let named = unfinished
                .iter()
                .filter(|j| j.request.get("profile").and_then(|p| p.as_str()) == Some(profile))
                .count();
            if named > 0 {
                return Err(ReloadError::InUse(format!(
                    "profile {profile:?} cannot be removed while {named} unfinished job(s) name it; remove it once they have finished"
                )));
            }
        }
        Ok(())
    }
}

/// The top-level tables of a configuration's text (which parsed once already).
fn tables(text: &str) -> BTreeMap<String, toml::Value> {
    text.parse::<toml::Table>()
        .map(|t| t.into_iter().collect())
        .unwrap_or_default()
}

/// The entries of table `section` that were added, changed and removed.
struct Diff {
    added: Vec<String>,
    changed: Vec<String>,
    removed: Vec<String>,
}

fn diff(
    old: &BTreeMap<String, toml::Value>,
    new: &BTreeMap<String, toml::Value>,
    section: &str,
) -> Diff {
    let entries = |t: &BTreeMap<String, toml::Value>| -> BTreeMap<String, toml::Value> {
        t.get(section)
            .and_then(|v| v.as_table())
            .map(|t| t.clone().into_iter().collect())
            .unwrap_or_default()
    };
    let (old, new) = (entries(old), entries(new));
    Diff {
        added: new
            .keys()
            .filter(|k| !old.contains_key(*k))
            .cloned()
            .collect(),
        changed: new
            .iter()
            .filter(|(k, v)| old.get(*k).is_some_and(|o| o != *v))
            .map(|(k, _)| k.clone())
            .collect(),
        removed: old
            .keys()
            .filter(|k| !new.contains_key(*k))
            .cloned()
            .collect(),
    }
}

#[async_trait::async_trait]
impl crate::sources::api::server::ConfigReload for Reloader {
    async fn reload(&self) -> Result<serde_json::Value, String> {
        match Reloader::reload(self).await {
            Ok(report) => {
                log(&report);
                Ok(serde_json::to_value(&report).unwrap_or_default())
            }
            Err(e) => {
                let why = crate::report::chain(&e);
                tracing::error!("configuration reload refused: {why}");
                Err(why)
            }
        }
    }
}

/// Logs what a reload changed.
pub fn log(report: &ReloadReport) {
    if report.is_empty() {
        tracing::info!("configuration reloaded: no backend or profile changed");
    } else {
        tracing::info!(
            backends_added = ?report.backends_added,
            backends_changed = ?report.backends_changed,
            backends_removed = ?report.backends_removed,
            profiles_added = ?report.profiles_added,
            profiles_changed = ?report.profiles_changed,
            profiles_removed = ?report.profiles_removed,
            "configuration reloaded"
        );
    }
}
