//! The daemon's own update: versioned binaries in an install directory, a `current` symlink
//! switched by rename, and a trial the new version must pass — come up healthy within a
//! deadline — or the previous binary is put back and the version refused.
//!
//! ```text
//! INSTALL/versions/0.1.0/certconn
//! INSTALL/versions/0.2.0/certconn
//! INSTALL/current -> versions/0.2.0
//! INSTALL/install.json            current, previous, refused, the trial under way
//! ```
//! `certconn launch INSTALL -- serve …` (what systemd runs) starts `current/certconn` as its
//! child and watches a trial: a child that exits or stays unhealthy past the deadline is
//! stopped, `current` is switched back, and the previous version started — so a binary that
//! cannot even start is rolled back too. The new version commits its own trial once it serves
//! (API bound, journal open). A binary is never used half-written: it is staged as
//! `certconn.partial`, synced, run once (`--version` must name the version the feed signed),
//! and only then renamed into place; `current` is replaced by rename.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::state::Refusal;
use crate::files;

/// The exit status with which `serve` asks its launcher to start `current` again: a switch to
/// a new version was made (sysexits' EX_TEMPFAIL).
pub const RESTART_EXIT: i32 = 75;

/// What the install directory remembers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallState {
    pub current: Option<String>,
    pub previous: Option<String>,
    #[serde(default)]
    pub refused: Vec<Refusal>,
    pub trial: Option<Trial>,
}

/// A switch to a new version, not yet proven.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trial {
    pub version: String,
    /// What to go back to.
    pub previous: Option<String>,
    pub since_ms: i64,
    /// The new version must serve within this many seconds of its start.
    pub deadline_seconds: u64,
}

/// Why an install step failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InstallError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("the new binary did not pass its first run: {0}")]
    Smoke(String),
    #[error("{0}")]
    Refused(String),
}

fn file_error(path: &Path, e: impl std::fmt::Display) -> InstallError {
    InstallError::File {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

/// An install directory.
#[derive(Debug, Clone)]
pub struct Install {
    dir: PathBuf,
}

impl Install {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The install directory and version of the running binary, when it runs from one
    /// (`INSTALL/versions/VERSION/certconn`).
    pub fn of_running_exe() -> Option<(Self, String)> {
        let exe = std::env::current_exe().ok()?;
        let version_dir = exe.parent()?;
        let versions = version_dir.parent()?;
        if versions.file_name()? != "versions" {
            return None;
        }
        let version = version_dir.file_name()?.to_str()?.to_owned();
        Some((Self::new(versions.parent()?), version))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join("install.json")
    }

    pub fn load(&self) -> Result<InstallState, InstallError> {
        let path = self.state_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| file_error(&path, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(InstallState {
                current: self.current(),
                ..InstallState::default()
            }),
            Err(e) => Err(file_error(&path, e)),
        }
    }

    fn save(&self, state: &InstallState) -> Result<(), InstallError> {
        let path = self.state_path();
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| file_error(&path, e))?;
        files::write_atomic(&path, &bytes, 0o644).map_err(|e| file_error(&path, e))
    }

    pub fn binary(&self, version: &str) -> PathBuf {
        self.dir.join("versions").join(version).join("certconn")
    }

    /// What `current` points at.
    pub fn current(&self) -> Option<String> {
        let target = std::fs::read_link(self.dir.join("current")).ok()?;
        target.file_name()?.to_str().map(str::to_owned)
    }

    /// The binary `current` names.
    pub fn current_binary(&self) -> PathBuf {
        self.dir.join("current").join("certconn")
    }

    /// Writes `bytes` as version `version`'s binary: staged, synced, run once, then renamed
    /// into place. A binary already there with the same bytes is kept.
    pub fn stage(&self, version: &str, bytes: &[u8]) -> Result<PathBuf, InstallError> {
        let dest = self.binary(version);
        if std::fs::read(&dest).is_ok_and(|b| b == bytes) {
            return Ok(dest);
        }
        let dir = dest.parent().unwrap_or(&self.dir).to_owned();
        std::fs::create_dir_all(&dir).map_err(|e| file_error(&dir, e))?;
        let partial = dir.join("certconn.partial");
        files::write_atomic(&partial, bytes, 0o755).map_err(|e| file_error(&partial, e))?;
        if let Err(e) = smoke(&partial, version) {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
        std::fs::rename(&partial, &dest).map_err(|e| file_error(&dest, e))?;
        Ok(dest)
    }

    /// Points `current` at `version`, by rename.
    fn switch(&self, version: &str) -> Result<(), InstallError> {
        let link = self.dir.join("current");
        let tmp = self.dir.join(".current.new");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(Path::new("versions").join(version), &tmp)
            .map_err(|e| file_error(&tmp, e))?;
        std::fs::rename(&tmp, &link).map_err(|e| file_error(&link, e))?;
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Whether `version` was refused before, and why.
    pub fn refusal(&self, version: &str) -> Option<Refusal> {
        self.load()
            .ok()?
            .refused
            .into_iter()
            .find(|r| r.version == version)
    }

    /// Switches to a staged `version` on trial.
    pub fn begin_trial(&self, version: &str, deadline_seconds: u64) -> Result<(), InstallError> {
        if !self.binary(version).exists() {
            return Err(InstallError::Refused(format!(
                "version {version} is not staged in {}",
                self.dir.display()
            )));
        }
        let mut state = self.load()?;
        let previous = self.current();
        state.trial = Some(Trial {
            version: version.to_owned(),
            previous,
            since_ms: crate::journal::now_ms(),
            deadline_seconds,
        });
        self.save(&state)?;
        self.switch(version)
    }

    /// The version on trial has come up healthy: it is current now.
    pub fn commit(&self, version: &str) -> Result<bool, InstallError> {
        let mut state = self.load()?;
        match &state.trial {
            Some(t) if t.version == version => {
                state.previous = t.previous.clone();
                state.current = Some(version.to_owned());
                state.trial = None;
                self.save(&state)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// The trial failed: back to the previous version, the trial's version refused.
    pub fn fail_trial(&self, reason: &str) -> Result<Option<String>, InstallError> {
        let mut state = self.load()?;
        let Some(trial) = state.trial.take() else {
            return Ok(None);
        };
        let back = trial.previous.clone();
        if let Some(previous) = &back {
            self.switch(previous)?;
        }
        refuse(&mut state, &trial.version, reason);
        state.current = back.clone();
        self.save(&state)?;
        Ok(back)
    }

    /// `certconn update rollback`: back to the previous version; the one left is refused (the
    /// feed does not install it again).
    pub fn rollback(&self) -> Result<(String, String), InstallError> {
        let mut state = self.load()?;
        if state.trial.is_some() {
            let back = self.fail_trial("rolled back by the administrator during its trial")?;
            let state = self.load()?;
            let from = state
                .refused
                .last()
                .map(|r| r.version.clone())
                .unwrap_or_default();
            return Ok((from, back.unwrap_or_default()));
        }
        let (Some(from), Some(to)) = (self.current(), state.previous.clone()) else {
            return Err(InstallError::Refused(format!(
                "no previous version to roll back to in {}",
                self.dir.display()
            )));
        };
        if !self.binary(&to).exists() {
            return Err(InstallError::Refused(format!(
                "the previous version {to} is no longer in {}",
                self.dir.display()
            )));
        }
        self.switch(&to)?;
        refuse(&mut state, &from, "rolled back by the administrator");
        state.current = Some(to.clone());
        state.previous = None;
        self.save(&state)?;
        Ok((from, to))
    }
}

fn refuse(state: &mut InstallState, version: &str, reason: &str) {
    // A daemon version is refused by its number: a binary has no other identity here.
    super::state::record_refusal(&mut state.refused, version, "", reason.to_owned());
}

/// Runs `binary --version` once: it must answer `certconn VERSION` within 10 s.
fn smoke(binary: &Path, version: &str) -> Result<(), InstallError> {
    let mut child = std::process::Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| InstallError::Smoke(format!("it does not run here: {e}")))?;
    let started = std::time::Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if started.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(InstallError::Smoke(
                    "`--version` did not answer within 10 s".into(),
                ));
            }
        }
    }
    let output = child
        .wait_with_output()
        .map_err(|e| InstallError::Smoke(e.to_string()))?;
    let said = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if !output.status.success() || said != format!("certconn {version}") {
        return Err(InstallError::Smoke(format!(
            "`--version` said {said:?} ({}), not \"certconn {version}\"",
            output.status
        )));
    }
    Ok(())
}

/// `certconn launch INSTALL -- ARGS`: runs `INSTALL/current/certconn ARGS` and keeps it
/// running through updates — a child that exits with [`RESTART_EXIT`] is started again from
/// `current`; a version on trial that exits, or has not committed its trial by the deadline,
/// is stopped and the previous version started. SIGTERM and SIGINT are passed to the child;
/// the launcher then exits as the child did. SIGHUP is passed on for the child to reload its
/// configuration: the unit's `ExecReload=` signals the main process, which is the launcher
/// here, and a SIGHUP left to its default action would end it.
pub async fn launch(install: Install, args: Vec<std::ffi::OsString>) -> anyhow::Result<i32> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        let state = install.load()?;
        let exe = install.current_binary();
        let mut child = tokio::process::Command::new(&exe)
            .args(&args)
            .env("CERTCONN_LAUNCHED", "1")
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {}: {e}", exe.display()))?;
        let trial = state.trial.clone();
        let deadline = trial
            .as_ref()
            .map(|t| tokio::time::Instant::now() + Duration::from_secs(t.deadline_seconds));
        let mut poll = tokio::time::interval(Duration::from_millis(200));
        let mut on_trial = trial.is_some();
        // Stopped by the administrator: the child's exit then says nothing about the version.
        let mut stopping = false;
        let outcome = loop {
            tokio::select! {
                status = child.wait() => break Some(status?),
                _ = term.recv() => { stopping = true; pass_on(&child, libc::SIGTERM); }
                _ = int.recv() => { stopping = true; pass_on(&child, libc::SIGINT); }
                _ = hup.recv() => pass_on(&child, libc::SIGHUP),
                _ = poll.tick(), if on_trial => {
                    let committed = install.load().map(|s| s.trial.is_none()).unwrap_or(false);
                    if committed {
                        on_trial = false;
                    } else if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                        let _ = child.kill().await;
                        break None;
                    }
                }
            }
        };
        if let (Some(status), true) = (outcome, stopping) {
            // A trial interrupted by a stop is judged again at the next start.
            return Ok(status.code().unwrap_or(1));
        }
        match (outcome, on_trial) {
            (Some(status), false) if status.code() == Some(RESTART_EXIT) => {
                tracing::info!("launcher: starting {} again after an update", exe.display());
            }
            (Some(status), false) => return Ok(status.code().unwrap_or(1)),
            (outcome, _) => {
                let version = trial.map(|t| t.version).unwrap_or_default();
                let why = match outcome {
                    Some(status) => format!("it exited ({status}) before it served"),
                    None => format!(
                        "it did not serve within {} s",
                        state
                            .trial
                            .as_ref()
                            .map(|t| t.deadline_seconds)
                            .unwrap_or(0)
                    ),
                };
                let back = install.fail_trial(&why)?;
                tracing::error!(
                    event_id = 5122,
                    %version,
                    back_to = back.as_deref().unwrap_or("none"),
                    "certconn {version} was rolled back: {why}"
                );
                if back.is_none() {
                    anyhow::bail!("certconn {version} failed its trial ({why}) and there is no previous version to start");
                }
            }
        }
    }
}

fn pass_on(child: &tokio::process::Child, sig: i32) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: kill(2) with a child's pid and a signal number has no memory effects.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}
