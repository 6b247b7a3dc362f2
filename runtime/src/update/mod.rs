//! Signed updates and the version lifecycle.
//!
//! The feed is a TUF repository (`feed`, `transport`; published by `publish`): its metadata is
//! verified from a root pinned in config, and every release in it carries its version, channel
//! and date (`release`). From the release list come the lifecycle stages of the daemon and of
//! each plugin (current → deprecated with the days of grace left → unsupported), and, as each
//! backend's policy allows, plugin updates: downloaded, verified, published into the plugin
//! directory by rename, loaded by the registry's hot path, and judged on probation — rolled
//! back to the previous version, kept on disk, if they fail (`plugins`). What the updater
//! decided survives a restart (`state`).
//!
//! A feed that cannot be read or verified changes nothing: the running versions keep serving
//! and the status says why.

pub mod daemon;
pub mod feed;
pub mod plugins;
pub mod publish;
pub mod release;
pub mod settings;
pub mod state;
pub mod transport;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::json;

use self::feed::{FeedSource, Verified};
use self::release::{version_policy, Kind};
use self::settings::UpdateConfig;
use self::state::State;
use self::transport::FeedTransport;
use crate::crypto::AlgorithmPolicy;
use crate::lifecycle::{Lifecycle, Stage};
use crate::plugins::registry::Registry;
use crate::plugins::settings::{BackendConfig, UpdatePolicy};

/// The running daemon's version.
/// The running daemon's version ([`crate::version`]: the crate's, or a release's stamp).
pub fn daemon_version() -> &'static str {
    crate::version::version()
}

/// The feed as last read.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FeedStatus {
    pub url: String,
    pub channel: String,
    /// Unix milliseconds of the last look, and of the last successful one.
    pub checked_at_ms: Option<i64>,
    pub verified_at_ms: Option<i64>,
    /// Why the last look failed; the running versions keep serving.
    pub error: Option<String>,
    /// Releases in the feed that were left out, and why.
    pub problems: Vec<String>,
}

/// One line's standing: the daemon's or a plugin's.
#[derive(Debug, Clone, Serialize)]
pub struct Standing {
    pub name: String,
    /// The version running (for a plugin: on its backends).
    pub running: Option<String>,
    pub policy: String,
    pub lifecycle: Option<Lifecycle>,
    /// The newest release of the channel, when it is not the one running.
    pub available: Option<String>,
    /// What the updater last did or decided, for a person.
    pub note: Option<String>,
}

/// The updater: reads the feed on a schedule or when asked, keeps the lifecycle current, and
/// updates plugins as their policies allow.
pub struct Updater {
    config: UpdateConfig,
    source: FeedSource,
    transport: FeedTransport,
    /// `DATA/update`: state, the kept previous versions, TUF's datastore.
    dir: PathBuf,
    registry: Arc<Registry>,
    policies: BTreeMap<String, UpdatePolicy>,
    state: Mutex<State>,
    feed: Mutex<FeedStatus>,
    standings: Mutex<Vec<Standing>>,
    /// The versions on probation and the loaded backends they are judged by.
    probation: Mutex<BTreeMap<String, plugins::OnProbation>>,
    /// Each line's version policy by the feed as last read (`certconn`, each plugin in the
    /// channel), for judging other instances' versions.
    lines: Mutex<BTreeMap<String, certconn_connector::VersionPolicy>>,
    /// One look at the feed at a time.
    turn: tokio::sync::Mutex<()>,
}

/// Why the updater could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpdaterError {
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error("{0}")]
    Config(String),
}

/// The policy of each plugin: of the backends running it, the most careful one's; two
/// different pins of one plugin are an error naming both backends.
pub fn plugin_policies(
    backends: &BTreeMap<String, BackendConfig>,
    default: &UpdatePolicy,
) -> Result<BTreeMap<String, UpdatePolicy>, String> {
    let mut chosen: BTreeMap<String, (UpdatePolicy, String)> = BTreeMap::new();
    for (name, b) in backends {
        let policy = b
            .update
            .as_ref()
            .map(|p| p.get_ref().clone())
            .unwrap_or_else(|| default.clone());
        let plugin = b.plugin.get_ref().clone();
        match chosen.get(&plugin) {
            Some((UpdatePolicy::Pinned(a), other)) if matches!(&policy, UpdatePolicy::Pinned(b) if b != a) =>
            {
                return Err(format!(
                    "backends.{name}.update pins plugin {plugin:?} to {policy}, but backend {other:?} pins it to {a}: backends sharing a plugin share its version"
                ));
            }
            Some((p, _)) if p.care() >= policy.care() => {}
            _ => {
                chosen.insert(plugin, (policy, name.clone()));
            }
        }
    }
    Ok(chosen.into_iter().map(|(k, (p, _))| (k, p)).collect())
}

/// Why the plugin directory `dir` cannot take the releases `policies` would install there, when
/// one would (`auto`, or a pin) and it cannot ([`crate::files::check_writable_dir`]): said at
/// start and by `check-config`, so that an operator does not learn it first from a release that
/// fails to publish.
pub fn unwritable_plugin_dir(
    dir: &std::path::Path,
    policies: &BTreeMap<String, UpdatePolicy>,
) -> Option<String> {
    let installing: Vec<&str> = policies
        .iter()
        .filter(|(_, p)| !matches!(p, UpdatePolicy::Notify))
        .map(|(plugin, _)| plugin.as_str())
        .collect();
    if installing.is_empty() {
        return None;
    }
    let refused = crate::files::check_writable_dir(dir).err()?;
    Some(format!(
        "plugins.dir {} cannot be written by this process ({}), so the plugin releases [update] \
         would install ({}) cannot be published there: give the plugins a directory certconn's \
         user owns, or set their policy to notify (docs/updates.md, \"Under the packaged unit\")",
        dir.display(),
        refused,
        installing.join(", ")
    ))
}

impl Updater {
    pub fn new(
        config: UpdateConfig,
        data_dir: &std::path::Path,
        registry: Arc<Registry>,
        backends: &BTreeMap<String, BackendConfig>,
        policy: AlgorithmPolicy,
        proxy: Option<Arc<crate::proxy::Proxy>>,
    ) -> Result<Arc<Self>, UpdaterError> {
        let dir = data_dir.join("update");
        crate::files::private_dir(&dir)
            .map_err(|e| UpdaterError::Config(format!("{}: {e}", dir.display())))?;
        let url = url::Url::parse(&config.url)
            .map_err(|e| UpdaterError::Config(format!("update.url: {e}")))?;
        let source = FeedSource {
            url: url.clone(),
            root: config.root.to_path_buf(),
            datastore: dir.join("tuf"),
        };
        let transport = FeedTransport::new(
            config.trust_anchors.as_ref().map(|p| p.to_path_buf()),
            policy,
            proxy,
            feed::fetch_deadline(config.fetch_timeout_seconds),
        );
        let policies = plugin_policies(backends, &config.plugins).map_err(UpdaterError::Config)?;
        if let Some(why) = unwritable_plugin_dir(registry.plugins_dir(), &policies) {
            tracing::warn!(event_id = 5110, "{why}");
        }
        let state = State::load(&dir)?;
        let feed = FeedStatus {
            url: config.url.clone(),
            channel: config.channel.clone(),
            ..FeedStatus::default()
        };
        Ok(Arc::new(Self {
            config,
            source,
            transport,
            dir,
            registry,
            policies,
            state: Mutex::new(state),
            feed: Mutex::new(feed),
            standings: Mutex::new(Vec::new()),
            probation: Mutex::new(BTreeMap::new()),
            lines: Mutex::new(BTreeMap::new()),
            turn: tokio::sync::Mutex::new(()),
        }))
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn save_state(&self) {
        let state = Self::lock(&self.state).clone();
        if let Err(e) = state.save(&self.dir) {
            tracing::error!(event_id = 5109, "the update state could not be saved: {e}");
        }
    }

    /// Runs until the process ends: a look at the feed every `check_seconds`, probation
    /// checks every second. Updates left on probation by a restart resume it.
    pub async fn run(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        self.resume_probations();
        let every = Duration::from_secs(self.config.check_seconds);
        let mut next = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            self.judge_probations().await;
            if tokio::time::Instant::now() >= next {
                let _ = self.check().await;
                next = tokio::time::Instant::now() + every;
            }
        }
    }

    /// One look at the feed: verify, recompute where every version stands, then act on each
    /// plugin's policy. An error leaves everything running as it was.
    pub async fn check(&self) -> Result<(), String> {
        let _turn = self.turn.lock().await;
        let now = crate::journal::now_ms();
        Self::lock(&self.feed).checked_at_ms = Some(now);
        let verified = match self.source.verify(self.transport.clone()).await {
            Ok(v) => v,
            Err(e) => {
                let why = crate::report::chain(&e);
                let mut feed = Self::lock(&self.feed);
                if feed.error.as_deref() != Some(why.as_str()) {
                    tracing::warn!(
                        event_id = 5101,
                        "update feed: {why}; the running versions keep serving"
                    );
                }
                feed.error = Some(why.clone());
                return Err(why);
            }
        };
        {
            let mut feed = Self::lock(&self.feed);
            if feed.error.take().is_some() || feed.verified_at_ms.is_none() {
                tracing::info!(
                    event_id = 5102,
                    releases = verified.releases.len(),
                    "update feed verified"
                );
            }
            feed.verified_at_ms = Some(now);
            for p in verified
                .problems
                .iter()
                .filter(|p| !feed.problems.contains(p))
            {
                tracing::warn!(event_id = 5103, "update feed: {p}");
            }
            feed.problems = verified.problems.clone();
        }
        let mut lines = BTreeMap::new();
        for l in verified
            .releases
            .iter()
            .filter(|l| l.release.channel == self.config.channel)
        {
            lines
                .entry(l.release.name.clone())
                .or_insert_with(Vec::new)
                .push(&l.release);
        }
        *Self::lock(&self.lines) = lines
            .into_iter()
            .filter_map(|(name, line)| version_policy(line).map(|p| (name, p)))
            .collect();
        let mut standings = vec![self.daemon_standing(&verified).await];
        for plugin in self.registry.plugin_names() {
            let standing = self.plugin_step(&plugin, &verified).await;
            standings.push(standing);
        }
        let before = std::mem::replace(&mut *Self::lock(&self.standings), standings.clone());
        for s in &standings {
            let was = before
                .iter()
                .find(|b| b.name == s.name)
                .and_then(|b| b.lifecycle.as_ref())
                .map(|l| (l.stage, l.version.clone()));
            if let Some(l) = &s.lifecycle {
                if was != Some((l.stage, l.version.clone())) {
                    announce(&s.name, l);
                }
            }
        }
        Ok(())
    }

    async fn daemon_standing(&self, verified: &Verified) -> Standing {
        let running = daemon_version();
        let line = verified.line(Kind::Daemon, "certconn", &self.config.channel);
        let policy = version_policy(line.iter().map(|l| &l.release));
        let lifecycle = policy
            .as_ref()
            .map(|p| Lifecycle::of(running, p, crate::lifecycle::today()));
        let newest = line
            .last()
            .filter(|l| certconn_connector::compare_versions(&l.release.version, running).is_gt())
            .copied();
        let available = newest.map(|l| l.release.version.clone());
        let wanted = match &self.config.daemon {
            UpdatePolicy::Auto => newest,
            UpdatePolicy::Pinned(v) => line
                .iter()
                .find(|l| certconn_connector::compare_versions(&l.release.version, v).is_eq())
                .copied()
                .filter(|l| l.release.version != running),
            UpdatePolicy::Notify => None,
        };
        let note = match wanted {
            Some(w) => Some(match self.install_daemon(w, verified).await {
                Ok(done) => done,
                Err(why) => why,
            }),
            None => available.as_ref().map(|v| {
                format!("certconn {v} is available: `certconn update apply`, or set [update] daemon = \"auto\" under `certconn launch`")
            }),
        };
        Standing {
            name: "certconn".into(),
            running: Some(running.into()),
            policy: self.config.daemon.to_string(),
            note,
            lifecycle,
            available,
        }
    }

    /// Stages `wanted`, switches to it on trial, and asks `serve` to hand over to the
    /// launcher, which starts it and watches its trial.
    async fn install_daemon(
        &self,
        wanted: &release::Listed,
        verified: &Verified,
    ) -> Result<String, String> {
        let version = &wanted.release.version;
        let Some((install, _)) = daemon::Install::of_running_exe() else {
            return Err(format!(
                "certconn {version} is wanted, but this daemon does not run from an install directory (INSTALL/versions/VERSION/certconn): update it with the package manager, or see docs/updates.md"
            ));
        };
        if std::env::var_os("CERTCONN_LAUNCHED").is_none() {
            return Err(format!(
                "certconn {version} is wanted, but this daemon was not started by `certconn launch`, which watches a new version's first start"
            ));
        }
        if let Some(r) = install.refusal(version) {
            return Err(format!(
                "certconn {version} was refused and is not tried again: {}",
                r.reason
            ));
        }
        let bytes = verified
            .download(wanted, self.config.max_download_bytes)
            .await
            .map_err(|e| {
                let why = crate::report::chain(&e);
                tracing::warn!(event_id = 5104, %version, "daemon update not downloaded: {why}; this version keeps serving");
                why
            })?;
        let staged = tokio::task::spawn_blocking({
            let install = install.clone();
            let version = version.clone();
            let health = self.config.daemon_health_seconds;
            move || {
                install.stage(&version, &bytes)?;
                install.begin_trial(&version, health)
            }
        })
        .await
        .map_err(|e| e.to_string())?;
        if let Err(e) = staged {
            let why = crate::report::chain(&e);
            tracing::warn!(event_id = 5106, %version, "daemon update refused: {why}");
            return Err(format!("certconn {version} was not installed: {why}"));
        }
        tracing::warn!(
            event_id = 5121,
            from = daemon_version(),
            to = %version,
            "switching to certconn {version}: stopping to hand over (jobs in flight finish first)"
        );
        restart_for_update().notify_one();
        Ok(format!("certconn {version} staged; restarting into it"))
    }

    /// What `/v1/health` shows: the feed's state and each version's stage.
    fn summary_value(&self) -> serde_json::Value {
        let feed = Self::lock(&self.feed).clone();
        let standings = Self::lock(&self.standings).clone();
        let worst = standings
            .iter()
            .filter_map(|s| s.lifecycle.as_ref().map(|l| l.stage))
            .max();
        json!({
            "feed": if feed.error.is_some() { "unreachable" } else if feed.verified_at_ms.is_some() { "verified" } else { "not yet read" },
            "error": feed.error,
            "stage": worst.map(Stage::as_str),
            "versions": standings.iter().map(|s| json!({
                "name": s.name,
                "running": s.running,
                "stage": s.lifecycle.as_ref().map(|l| l.stage.as_str()),
                "summary": s.lifecycle.as_ref().map(|l| l.summary.clone()),
            })).collect::<Vec<_>>(),
        })
    }

    fn status_value(&self) -> serde_json::Value {
        let feed = Self::lock(&self.feed).clone();
        let standings = Self::lock(&self.standings).clone();
        let state = Self::lock(&self.state).clone();
        json!({
            "feed": feed,
            "versions": standings,
            "plugins": state.plugins,
            // The daemon's versions live beside its binaries, when it runs from an install
            // directory (`certconn launch`).
            "install": daemon::Install::of_running_exe().and_then(|(i, _)| {
                i.load().ok().map(|s| json!({ "dir": i.dir(), "state": s }))
            }),
            "probation": {
                "jobs": self.config.probation_jobs,
                "seconds": self.config.probation_seconds,
                "failures": self.config.probation_failures,
            },
        })
    }
}

/// Rung when the daemon switched to a new version and must stop so that the launcher starts it.
pub fn restart_for_update() -> &'static tokio::sync::Notify {
    static RESTART: std::sync::OnceLock<tokio::sync::Notify> = std::sync::OnceLock::new();
    RESTART.get_or_init(tokio::sync::Notify::new)
}

/// Called once the daemon serves: a version on trial in its install directory has passed.
pub fn commit_trial() {
    let Some((install, version)) = daemon::Install::of_running_exe() else {
        return;
    };
    match install.commit(&version) {
        Ok(true) => {
            tracing::info!(event_id = 5123, %version, "certconn {version} came up healthy: the update is complete")
        }
        Ok(false) => {}
        Err(e) => tracing::error!(event_id = 5109, "recording the update as complete: {e}"),
    }
}

/// The event of a version's new stage, at the level its stage deserves.
fn announce(name: &str, l: &Lifecycle) {
    let summary = &l.summary;
    match l.stage {
        Stage::Current | Stage::Outdated => {
            tracing::info!(event_id = 5111, %name, stage = l.stage.as_str(), latest = %l.latest, "version: {summary}")
        }
        Stage::Deprecated => {
            tracing::warn!(event_id = 5112, %name, stage = l.stage.as_str(), latest = %l.latest, days_left = l.days_left, "version: {summary}")
        }
        Stage::Unsupported => {
            tracing::error!(event_id = 5113, %name, stage = l.stage.as_str(), latest = %l.latest, "version: {summary}")
        }
    }
}

#[async_trait::async_trait]
impl crate::lifecycle::Updates for Updater {
    fn status(&self) -> serde_json::Value {
        self.status_value()
    }

    fn summary(&self) -> serde_json::Value {
        self.summary_value()
    }

    async fn check(&self) -> Result<serde_json::Value, String> {
        Updater::check(self).await?;
        Ok(self.status_value())
    }

    fn stage_of(&self, name: &str, version: &str) -> Option<Lifecycle> {
        let lines = Self::lock(&self.lines);
        let policy = lines.get(name)?;
        Some(Lifecycle::of(version, policy, crate::lifecycle::today()))
    }
}

impl Updater {
    /// Where this instance's versions stand, for the heartbeat.
    pub fn standings(&self) -> Vec<certconn_connector::VersionStanding> {
        Self::lock(&self.standings)
            .iter()
            .filter_map(|s| s.lifecycle.as_ref().map(|l| l.standing(&s.name)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only a policy that installs (`auto`, a pin) needs the directory writable, and the
    /// message names the directory, the reason and the plugins that would be installed. (The
    /// suite runs as root, whom `access` lets write anywhere on a writable file system: a
    /// missing directory stands in for one this process may not write.)
    #[test]
    fn a_plugin_dir_that_cannot_take_an_installed_release_is_named_with_its_plugins() {
        let dir = tempfile::tempdir().unwrap();
        let policies = |ndes: UpdatePolicy| {
            BTreeMap::from([
                ("ndes".to_owned(), ndes),
                ("scep".to_owned(), UpdatePolicy::Notify),
            ])
        };
        assert_eq!(
            unwritable_plugin_dir(dir.path(), &policies(UpdatePolicy::Auto)),
            None
        );
        let gone = dir.path().join("gone");
        assert_eq!(
            unwritable_plugin_dir(&gone, &policies(UpdatePolicy::Notify)),
            None
        );
        let why =
            unwritable_plugin_dir(&gone, &policies(UpdatePolicy::Pinned("1.2.0".into()))).unwrap();
        assert!(
            why.contains(&gone.display().to_string())
                && why.contains("No such file or directory")
                && why.contains("would install (ndes)"),
            "{why}"
        );
    }
}
