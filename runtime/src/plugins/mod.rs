//! The plugin engine: CA backends as sandboxed WebAssembly components.
//!
//! - `bindings`: the host side of `wit/` (`certconn:plugin@0.1.x`).
//! - `engine`: one wasmtime engine, pooling allocator, epoch ticker, compiled-component cache.
//! - `state`, `host`, `http`: what a plugin's store holds and the host functions it can call.
//! - `backend`: a configured backend instance, and one fresh store per call with its limits.
//! - `registry`: the backend instances from config, and profile routing.

pub mod backend;
pub mod bindings;
pub mod engine;
pub mod host;
pub mod http;
pub mod registry;
pub mod state;

pub use backend::{BackendLimits, LoadedBackend};
pub use engine::{EngineLimits, PluginEngine};
pub use registry::Registry;

/// Why a plugin could not be loaded or did not answer.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("plugin engine: {0}")]
    Engine(String),
    #[error("plugin {plugin:?}: {reason}")]
    Invalid { plugin: String, reason: String },
    #[error("reading plugin {path}: {source}")]
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
