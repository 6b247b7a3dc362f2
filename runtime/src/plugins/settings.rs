//! The config sections the plugin engine owns: `[plugins]` (where plugins are, how they are
//! loaded) and `[backends.NAME]` (one backend instance: a plugin, its settings, grants and
//! limits).

use std::collections::BTreeMap;
use std::time::Duration;

use toml::Spanned;
use zeroize::{Zeroize, Zeroizing};

use super::http::HttpGrant;
use super::BackendLimits;
use crate::config::{Checker, ConfigError, ConfigPath};

/// `[plugins]`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    /// Directory of plugin components (`NAME.wasm`).
    pub dir: ConfigPath,
    /// Compiled-component cache. Default: `<data_dir>/cache`. Must be owned by certconn's user
    /// and writable by nobody else: certconn runs the native code it holds.
    pub cache_dir: Option<ConfigPath>,
    /// Concurrent plugin instances across all backends.
    #[serde(
        default = "default_instances",
        deserialize_with = "crate::config::in_range::<_, u32, 1, 10_000>"
    )]
    pub max_instances: u32,
    /// Watch `dir` and load a new or changed plugin without a restart (publish by writing a
    /// temporary file and renaming it to `NAME.wasm`).
    #[serde(default = "default_true")]
    pub watch: bool,
    /// Rescan `dir` this often even without a change event, in seconds (a backstop for
    /// filesystems that do not deliver events, and the retry of a failed health check).
    #[serde(
        default = "default_rescan",
        deserialize_with = "crate::config::in_range::<_, u64, 1, 86_400>"
    )]
    pub rescan_seconds: u64,
    /// Public keys (PEM, ECDSA P-256) of the publishers whose signed packages may load, for
    /// every backend that has no list of its own. Empty: any package loads, signed or not.
    #[serde(default)]
    pub trusted_publishers: Vec<Spanned<ConfigPath>>,
}

fn default_true() -> bool {
    true
}

fn default_rescan() -> u64 {
    30
}

fn default_instances() -> u32 {
    128
}

/// `[backends.NAME]`: one backend instance.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Plugin file name without `.wasm`, in `plugins.dir`.
    pub plugin: Spanned<String>,
    /// Custody keys this instance may use, by name.
    #[serde(default)]
    pub keys: Vec<Spanned<String>>,
    #[serde(
        default = "default_memory_mb",
        deserialize_with = "crate::config::in_range::<_, usize, 1, 4096>"
    )]
    pub memory_mb: usize,
    #[serde(default = "default_timeout")]
    pub timeout_seconds: Spanned<u64>,
    #[serde(
        default = "default_log_lines",
        deserialize_with = "crate::config::in_range::<_, u32, 0, 1_000_000>"
    )]
    pub log_lines_per_call: u32,
    /// Jobs this instance runs at once; more wait, or go to a profile's fallback. Unlimited
    /// (up to `jobs.workers`) when absent.
    #[serde(
        default,
        deserialize_with = "crate::config::in_range_opt::<_, usize, 1, 100_000>"
    )]
    pub max_concurrency: Option<usize>,
    /// Faults in a row (plugin faults, unreachable CA) after which the instance is quarantined.
    #[serde(
        default = "default_quarantine_after",
        deserialize_with = "crate::config::in_range::<_, u32, 1, 1_000_000>"
    )]
    pub quarantine_after: u32,
    /// How long a quarantine lasts before one job probes the instance again, in seconds.
    #[serde(default = "default_quarantine_seconds")]
    pub quarantine_seconds: u64,
    /// Outbound HTTP this instance may make: hosts, internal addresses, response size.
    #[serde(default)]
    pub http: HttpGrant,
    /// Handed to the plugin's `configure` as JSON.
    #[serde(default)]
    pub settings: toml::Table,
    /// Settings whose value is the text of a file, read at load (a plugin has no file access):
    /// `trust_anchors_pem = "anchors.pem"`. Relative to the config file.
    #[serde(default)]
    pub settings_files: BTreeMap<String, Spanned<ConfigPath>>,
    /// This backend's own trusted publishers, instead of `plugins.trusted_publishers`.
    pub trusted_publishers: Option<Vec<Spanned<ConfigPath>>>,
    /// How the signed update feed may change this backend's plugin: `"auto"`, `"notify"` or
    /// `"pinned VERSION"`. Absent: `[update] plugins`. Backends that share a plugin file share
    /// its updates; the most careful policy among them wins.
    #[serde(default)]
    pub update: Option<Spanned<UpdatePolicy>>,
}

/// Longest call a backend may be given, in seconds.
pub const MAX_TIMEOUT_SECONDS: u64 = 3600;

/// What the update feed may do with a plugin.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UpdatePolicy {
    /// Install the newest release of the channel, hot, on probation.
    Auto,
    /// Show that a newer release exists; install nothing.
    Notify,
    /// Run exactly this version: installed from the feed when it is not the one running, even
    /// when it is lower. Nothing else is installed.
    Pinned(String),
}

impl UpdatePolicy {
    /// How careful a policy is: of the backends sharing a plugin, the most careful wins.
    pub fn care(&self) -> u8 {
        match self {
            Self::Auto => 0,
            Self::Notify => 1,
            Self::Pinned(_) => 2,
        }
    }
}

impl std::fmt::Display for UpdatePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Notify => f.write_str("notify"),
            Self::Pinned(v) => write!(f, "pinned {v}"),
        }
    }
}

impl std::str::FromStr for UpdatePolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        match s {
            "auto" => Ok(Self::Auto),
            "notify" => Ok(Self::Notify),
            _ => match s.strip_prefix("pinned") {
                Some(v) if semver::Version::parse(v.trim().trim_start_matches('v')).is_ok() => {
                    Ok(Self::Pinned(v.trim().to_owned()))
                }
                _ => Err(format!(
                    "{s:?} is not an update policy: \"auto\", \"notify\" or \"pinned VERSION\" (e.g. \"pinned 1.2.0\")"
                )),
            },
        }
    }
}

impl<'de> serde::Deserialize<'de> for UpdatePolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

fn default_quarantine_after() -> u32 {
    5
}
fn default_quarantine_seconds() -> u64 {
    30
}
fn default_memory_mb() -> usize {
    64
}
fn default_timeout() -> Spanned<u64> {
    Spanned::new(0..0, 30)
}
fn default_log_lines() -> u32 {
    200
}

/// Why a backend's settings could not be handed to its plugin.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    #[error("settings_files.{key}: reading {path}")]
    File {
        key: String,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the settings cannot be expressed as JSON")]
    Json(#[source] serde_json::Error),
}

impl BackendConfig {
    /// The settings as the JSON object `configure` receives, with `settings_files` read in.
    ///
    /// A file's text loses its trailing line ends, as every secret file certconn reads does
    /// (`echo secret > file` must not make the challenge `secret\n`). The files are where
    /// secrets go (a challenge, a password), so their texts are zeroized once in the JSON, and
    /// the JSON is written into a buffer sized first (one that grew would free copies of them
    /// unzeroized) and zeroized when the backend drops it.
    pub fn settings_json(&self) -> Result<Zeroizing<String>, SettingsError> {
        let mut settings = self.settings.clone();
        let json = self
            .read_files_into(&mut settings)
            .and_then(|()| crate::secret::json(&settings).map_err(SettingsError::Json));
        for key in self.settings_files.keys() {
            if let Some(toml::Value::String(text)) = settings.get_mut(key) {
                text.zeroize();
            }
        }
        json
    }

    fn read_files_into(&self, settings: &mut toml::Table) -> Result<(), SettingsError> {
        for (key, path) in &self.settings_files {
            let path = path.get_ref();
            // Sized to the file before the read, so it is never reallocated.
            let mut text = std::fs::read_to_string(path).map_err(|source| SettingsError::File {
                key: key.clone(),
                path: path.to_path_buf(),
                source,
            })?;
            crate::secret::drop_line_ends(&mut text);
            settings.insert(key.clone(), toml::Value::String(text));
        }
        Ok(())
    }

    /// The sandbox limits of this instance.
    pub fn limits(&self) -> BackendLimits {
        BackendLimits {
            memory_bytes: self.memory_mb << 20,
            timeout: Duration::from_secs(*self.timeout_seconds.get_ref()),
            log_lines: self.log_lines_per_call,
        }
    }

    /// Checks what can be checked of backend `name` on its own.
    pub fn check(&self, name: &str, cx: &Checker<'_>) -> Result<(), ConfigError> {
        if let Some((key, path)) = self
            .settings_files
            .iter()
            .find(|(k, _)| self.settings.contains_key(*k))
        {
            return Err(cx.at(
                path.span(),
                format!("backends.{name}.settings_files.{key}"),
                "is also set in settings; give it in one place",
            ));
        }
        if !super::manifest::valid_name(self.plugin.get_ref()) {
            return Err(cx.at(
                self.plugin.span(),
                format!("backends.{name}.plugin"),
                "must be a plugin file name without .wasm (lowercase letters, digits, - and _)",
            ));
        }
        let timeout = *self.timeout_seconds.get_ref();
        if !(1..=MAX_TIMEOUT_SECONDS).contains(&timeout) {
            return Err(cx.at(
                self.timeout_seconds.span(),
                format!("backends.{name}.timeout_seconds"),
                format!("must be between 1 and {MAX_TIMEOUT_SECONDS} (it is {timeout})"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_settings_file_loses_its_trailing_line_ends_and_the_json_is_sized_once() {
        let dir = tempfile::tempdir().unwrap();
        let challenge = dir.path().join("challenge");
        std::fs::write(&challenge, "one-time \"7f\"\r\n\n").unwrap();
        let anchors = dir.path().join("anchors.pem");
        std::fs::write(
            &anchors,
            "-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let config: BackendConfig = toml::from_str(&format!(
            "plugin = \"scep\"\nsettings_files = {{ challenge = {:?}, anchors = {:?} }}\n\
             [settings]\nurl = \"http://ca.example/scep\"\n",
            challenge.display().to_string(),
            anchors.display().to_string(),
        ))
        .unwrap();
        let json = config.settings_json().unwrap();
        assert_eq!(json.len(), json.capacity(), "allocated once, at its length");
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["challenge"], "one-time \"7f\"");
        assert_eq!(
            value["anchors"],
            "-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----"
        );
        assert_eq!(value["url"], "http://ca.example/scep");
    }

    #[test]
    fn a_missing_settings_file_is_named_with_its_key() {
        let config: BackendConfig = toml::from_str(
            "plugin = \"scep\"\nsettings_files = { challenge = \"/nonexistent/challenge\" }\n",
        )
        .unwrap();
        let err = config.settings_json().unwrap_err();
        assert_eq!(
            err.to_string(),
            "settings_files.challenge: reading /nonexistent/challenge"
        );
    }
}
