//! The plugin engine: CA backends as sandboxed WebAssembly components.
//!
//! - `manifest`, `package`, `pack`: a plugin package (component + embedded manifest), reading
//!   it, and making one.
//! - `bindings`: the host side of each `certconn:plugin` contract line it runs (0.1, 0.2).
//! - `engine`: one wasmtime engine, pooling allocator, epoch ticker, compiled-component cache.
//! - `state`, `host`, `http`: what a plugin's store holds and the host functions it can call.
//! - `backend`: a plugin version prepared once, loaded per instance; one fresh store per call.
//! - `instance`, `breaker`: a configured backend instance, its current and previous version,
//!   concurrency limit and circuit breaker.
//! - `registry`: all instances, loading and swapping versions.
//! - `watch`: the plugins directory watcher that triggers rescans.
//! - `settings`: the `[plugins]` and `[backends.NAME]` config sections.
//! - `conformance`: the kit a backend author runs (`certconn plugin test`).
//!
//! Routing a job to its backends (fallbacks, the breaker's verdict) is the job side's
//! (`jobs::routing`); the composition root lets it call the instances here.

pub mod backend;
pub mod bindings;
pub mod breaker;
pub mod conformance;
pub mod engine;
pub mod host;
pub mod http;
pub mod instance;
pub mod issuance;
pub mod manifest;
pub mod pack;
pub mod package;
pub mod placement;
pub mod registry;
pub mod settings;
pub mod signature;
pub mod state;
pub mod watch;

pub use backend::{BackendLimits, LoadedBackend, PreparedPlugin};
pub use engine::{EngineLimits, PluginEngine};
pub use registry::Registry;
pub use settings::{BackendConfig, PluginsConfig};

/// One setting a backend refused, as its plugin named it (`field` is the setting's path, empty
/// when the plugin did not say which).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingError {
    pub field: String,
    pub message: String,
}

impl SettingError {
    /// A refusal that names no setting.
    pub fn general(message: impl Into<String>) -> Self {
        Self {
            field: String::new(),
            message: message.into(),
        }
    }

    /// The setting this error is about: its `field`, or the one an "unknown field `x`" message
    /// names.
    pub fn setting(&self) -> Option<&str> {
        if !self.field.is_empty() {
            return Some(&self.field);
        }
        let rest = self.message.split_once("unknown field `")?.1;
        rest.split_once('`').map(|(name, _)| name)
    }
}

impl std::fmt::Display for SettingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// Several settings errors on one line, as the journal and the CLI show them.
pub(crate) fn join(errors: &[SettingError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// A plugin's message about its settings without the position in the JSON it was handed:
/// " at line 1 column 23" points into certconn's serialisation of the TOML, which the
/// administrator never sees (the SDK leaves it out; older plugins may not).
pub(crate) fn without_json_position(message: &str) -> &str {
    match message.rfind(" at line ") {
        Some(i)
            if message[i + " at line ".len()..]
                .split_once(" column ")
                .is_some_and(|(l, c)| {
                    !l.is_empty()
                        && !c.is_empty()
                        && l.bytes().all(|b| b.is_ascii_digit())
                        && c.bytes().all(|b| b.is_ascii_digit())
                }) =>
        {
            &message[..i]
        }
        _ => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_position_is_left_out_and_an_unknown_field_is_found() {
        assert_eq!(
            without_json_position("unknown field `ca_keyy`, expected `ca_key` at line 1 column 23"),
            "unknown field `ca_keyy`, expected `ca_key`"
        );
        assert_eq!(
            without_json_position("at line 1 column x"),
            "at line 1 column x"
        );
        assert_eq!(without_json_position("fine"), "fine");
        let e = SettingError::general("unknown field `ca_keyy`, expected `ca_key`");
        assert_eq!(e.setting(), Some("ca_keyy"));
        let e = SettingError {
            field: "profiles.smime.validity_days".into(),
            message: "invalid type".into(),
        };
        assert_eq!(e.setting(), Some("profiles.smime.validity_days"));
        assert_eq!(e.to_string(), "profiles.smime.validity_days: invalid type");
    }
}

/// Why a plugin could not be loaded or did not answer.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("plugin engine: {0}")]
    Engine(String),
    #[error("plugin {plugin:?}: {reason}")]
    Invalid { plugin: String, reason: String },
    #[error("reading plugin {path}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("backend {backend:?} settings are invalid: {}", join(.errors))]
    Config {
        backend: String,
        errors: Vec<SettingError>,
    },
    /// The plugin trapped, ran out of time or memory: a `plugin-fault`.
    #[error("plugin-fault in backend {backend:?}: {reason}")]
    Fault { backend: String, reason: String },
    /// The journal failed the call (it could not record a signature the plugin asked for, so
    /// nothing was signed): the host's failure, whatever the plugin answered, and a passing
    /// one (a job is tried again).
    #[error("backend {backend:?}: {reason}")]
    Journal { backend: String, reason: String },
}
