//! `[update]`: where the signed feed is, the root of trust, the channel, how often to look, and
//! how plugin updates are judged.

use serde::Deserialize;

use crate::config::ConfigPath;
use crate::plugins::settings::UpdatePolicy;

/// `[update]`. Absent: no feed is read; versions are changed by hand.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateConfig {
    /// The feed's base URL: `https://…` (or `http://` to loopback, or `file:///…` for a copy
    /// on disk). Metadata is under `metadata/`, targets under `targets/`.
    pub url: String,
    /// The pinned root of trust: a `N.root.json` of the feed, copied out of band. Root key
    /// rotations published in the feed are followed from it.
    pub root: ConfigPath,
    /// The channel followed (`stable`, `preview`, …).
    #[serde(default = "default_channel")]
    pub channel: String,
    /// Seconds between looks at the feed.
    #[serde(
        default = "default_check_seconds",
        deserialize_with = "crate::config::in_range::<_, u64, 1, 604800>"
    )]
    pub check_seconds: u64,
    /// CA certificates (PEM) trusted for an https feed, instead of the system's.
    pub trust_anchors: Option<ConfigPath>,
    /// The policy of backends that set none: `"auto"`, `"notify"` (the default: nothing is
    /// installed without an administrator's word) or `"pinned VERSION"`.
    #[serde(default = "default_plugins")]
    pub plugins: UpdatePolicy,
    /// What the feed may do with the daemon itself: `"notify"` (the default), `"auto"`, or
    /// `"pinned VERSION"`. Installing needs the daemon to run from an install directory under
    /// `certconn launch` (see docs/updates.md); otherwise the feed only shows what is available.
    #[serde(default = "default_plugins")]
    pub daemon: UpdatePolicy,
    /// A new daemon version must serve within this many seconds of its start, or the launcher
    /// puts the previous one back.
    #[serde(
        default = "default_daemon_health",
        deserialize_with = "crate::config::in_range::<_, u64, 1, 3600>"
    )]
    pub daemon_health_seconds: u64,
    /// A new plugin version is on probation until it has answered this many jobs …
    #[serde(
        default = "default_probation_jobs",
        deserialize_with = "crate::config::in_range::<_, u64, 1, 1000000>"
    )]
    pub probation_jobs: u64,
    /// … or this many seconds have passed without it failing `probation_failures` jobs.
    #[serde(
        default = "default_probation_seconds",
        deserialize_with = "crate::config::in_range::<_, u64, 1, 604800>"
    )]
    pub probation_seconds: u64,
    /// This many failed calls (plugin faults, its CA unreachable) on probation roll it back.
    #[serde(
        default = "default_probation_failures",
        deserialize_with = "crate::config::in_range::<_, u64, 1, 1000>"
    )]
    pub probation_failures: u64,
    /// The most one file of the feed may take to arrive.
    #[serde(
        default = "default_fetch_timeout",
        deserialize_with = "crate::config::in_range::<_, u64, 1, 86400>"
    )]
    pub fetch_timeout_seconds: u64,
    /// The largest release downloaded.
    #[serde(default = "default_max_download")]
    pub max_download_bytes: u64,
}

fn default_channel() -> String {
    "stable".into()
}
fn default_check_seconds() -> u64 {
    3600
}
fn default_plugins() -> UpdatePolicy {
    UpdatePolicy::Notify
}
fn default_daemon_health() -> u64 {
    120
}
fn default_probation_jobs() -> u64 {
    20
}
fn default_probation_seconds() -> u64 {
    600
}
fn default_probation_failures() -> u64 {
    1
}
fn default_fetch_timeout() -> u64 {
    super::feed::DEFAULT_FETCH_SECONDS
}
fn default_max_download() -> u64 {
    256 << 20
}

impl UpdateConfig {
    /// The feed URL's scheme and the channel's name; the reason otherwise.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let url = url::Url::parse(&self.url)
            .map_err(|e| ("update.url", format!("{:?} is not a URL: {e}", self.url)))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err((
                "update.url",
                "the URL carries credentials, which would show in logs and the status: the feed is signed and needs none".into(),
            ));
        }
        match url.scheme() {
            "file" => {}
            "http" | "https" => {
                crate::sources::outbound::check_scheme(&self.url)
                    .map_err(|why| ("update.url", why))?;
            }
            other => {
                return Err((
                    "update.url",
                    format!(
                        "scheme {other:?}: the feed is https://, http:// to loopback, or file://"
                    ),
                ))
            }
        }
        if self.channel.is_empty()
            || !self
                .channel
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err((
                "update.channel",
                format!("{:?}: letters, digits, '-', '_' or '.'", self.channel),
            ));
        }
        if self.max_download_bytes < 1024 {
            return Err((
                "update.max_download_bytes",
                format!(
                    "{} bytes is too small for any release",
                    self.max_download_bytes
                ),
            ));
        }
        Ok(())
    }
}
