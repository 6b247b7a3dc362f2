//! The plugin engine: CA backends as sandboxed WebAssembly components.
//!
//! - `manifest`, `package`: a plugin package (component + embedded manifest) and reading it.
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
pub mod manifest;
pub mod package;
pub mod registry;
pub mod settings;
pub mod state;
pub mod watch;

pub use backend::{BackendLimits, LoadedBackend, PreparedPlugin};
pub use engine::{EngineLimits, PluginEngine};
pub use registry::Registry;
pub use settings::{BackendConfig, PluginsConfig};

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
    #[error("backend {backend:?} settings are invalid: {}", .errors.join("; "))]
    Config {
        backend: String,
        errors: Vec<String>,
    },
    /// The plugin trapped, ran out of time or memory: a `plugin-fault`.
    #[error("plugin-fault in backend {backend:?}: {reason}")]
    Fault { backend: String, reason: String },
}
