//! The backend instances named in config, and routing a profile to its backend.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::{LoadedBackend, PluginEngine, PluginError};
use crate::config::Config;
use crate::crypto::AlgorithmPolicy;
use crate::custody::{Grants, KeyStore};

/// All backend instances and the profile → backend routes.
#[derive(Debug, Default)]
pub struct Registry {
    backends: BTreeMap<String, Arc<LoadedBackend>>,
    routes: BTreeMap<String, String>,
}

impl Registry {
    /// Loads every backend in `config`. A backend that fails to load stops start-up with the
    /// reason: a daemon that silently serves fewer CAs than configured is worse than one that
    /// refuses to start.
    pub async fn load(
        engine: Arc<PluginEngine>,
        config: &Config,
        keys: Arc<KeyStore>,
        policy: AlgorithmPolicy,
    ) -> Result<Self, PluginError> {
        let mut backends = BTreeMap::new();
        for (name, b) in &config.backends {
            let plugin = b.plugin.get_ref();
            let path = config.plugins.dir.join(format!("{plugin}.wasm"));
            let wasm = read_plugin(&path)?;
            let http =
                crate::plugins::http::HttpAccess::new(b.http.clone(), policy).map_err(|e| {
                    PluginError::Config {
                        backend: name.clone(),
                        errors: vec![e],
                    }
                })?;
            let grants = Grants::new(keys.clone(), b.keys.iter().map(|k| k.get_ref().clone()))
                .with_http(http);
            let settings = b.settings_json().map_err(|e| PluginError::Config {
                backend: name.clone(),
                errors: vec![e],
            })?;
            let loaded = LoadedBackend::load(
                engine.clone(),
                name,
                plugin,
                &wasm,
                settings,
                grants,
                policy,
                b.limits(),
            )
            .await?;
            tracing::info!(
                backend = %name,
                %plugin,
                version = %loaded.info.version,
                "backend loaded"
            );
            backends.insert(name.clone(), Arc::new(loaded));
        }
        let routes = config
            .profiles
            .iter()
            .map(|(p, v)| (p.clone(), v.backend.get_ref().clone()))
            .collect();
        Ok(Self { backends, routes })
    }

    /// The backend instance called `name`.
    pub fn backend(&self, name: &str) -> Option<Arc<LoadedBackend>> {
        self.backends.get(name).cloned()
    }

    /// The backend a profile routes to.
    pub fn route(&self, profile: &str) -> Option<Arc<LoadedBackend>> {
        self.routes.get(profile).and_then(|b| self.backend(b))
    }

    /// All backend instances, by name.
    pub fn backends(&self) -> impl Iterator<Item = &Arc<LoadedBackend>> {
        self.backends.values()
    }
}

fn read_plugin(path: &Path) -> Result<Vec<u8>, PluginError> {
    std::fs::read(path).map_err(|source| PluginError::Io {
        path: path.to_owned(),
        source,
    })
}
