//! What the updater remembers across restarts, in `DATA/update/state.json` (written by rename):
//! for each plugin the version current, the previous one (kept on disk for a
//! rollback), the versions refused and why, and an update on probation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::files;

/// A version and the SHA-256 of its file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Version {
    pub version: String,
    pub sha256: String,
}

/// A version the updater will not install again, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Refusal {
    pub version: String,
    pub sha256: String,
    pub reason: String,
    /// Unix milliseconds.
    pub at_ms: i64,
}

/// An update being judged by the jobs it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Probation {
    pub version: String,
    pub sha256: String,
    /// Unix milliseconds when it began (again, after a restart).
    pub since_ms: i64,
}

/// Records `version` as refused in `refused` (replacing an older refusal of the same version),
/// keeping the last 16: enough to explain, while the feed moves on.
pub fn record_refusal(refused: &mut Vec<Refusal>, version: &str, sha256: &str, reason: String) {
    refused.retain(|r| r.version != version || r.sha256 != sha256);
    refused.push(Refusal {
        version: version.to_owned(),
        sha256: sha256.to_owned(),
        reason,
        at_ms: crate::journal::now_ms(),
    });
    if refused.len() > 16 {
        refused.remove(0);
    }
}

/// One plugin's line of versions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Line {
    pub current: Option<Version>,
    /// The version a rollback returns to; its file is kept under `DATA/update/`.
    pub previous: Option<Version>,
    #[serde(default)]
    pub refused: Vec<Refusal>,
    pub probation: Option<Probation>,
}

impl Line {
    /// Whether `sha256` was refused before.
    pub fn refused(&self, sha256: &str) -> Option<&Refusal> {
        self.refused.iter().find(|r| r.sha256 == sha256)
    }

    pub fn refuse(&mut self, version: &str, sha256: &str, reason: String) {
        record_refusal(&mut self.refused, version, sha256, reason);
    }
}

/// The updater's memory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Per plugin. (The daemon's versions are kept beside its binaries: [`super::daemon`].)
    #[serde(default)]
    pub plugins: BTreeMap<String, Line>,
}

/// Why the state could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct StateError {
    pub path: PathBuf,
    pub reason: String,
}

impl State {
    /// The state file under `dir` (`DATA/update`).
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("state.json")
    }

    /// Reads the state; an absent file is a fresh state. A file that is not a state is an
    /// error (never silently forgotten: refused versions would be installed again).
    pub fn load(dir: &Path) -> Result<Self, StateError> {
        let path = Self::path(dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StateError {
                path,
                reason: format!("not an update state: {e}"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(StateError {
                path,
                reason: e.to_string(),
            }),
        }
    }

    pub fn save(&self, dir: &Path) -> Result<(), StateError> {
        let path = Self::path(dir);
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| StateError {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        files::write_atomic(&path, &bytes, 0o600).map_err(|e| StateError {
            path,
            reason: e.to_string(),
        })
    }
}
