//! Making a plugin package (`certconn plugin pack`): the component with its manifest embedded,
//! checked the way the daemon will load it — the contract its exports show is the one the
//! manifest declares, and its own `describe` gives the manifest's version. A package whose two
//! versions disagree would log one version and report another; it is refused here, before it
//! is published.

use std::path::Path;
use std::sync::Arc;

use super::manifest::Manifest;
use super::package::{self, PackageError, PluginPackage};
use super::{PluginEngine, PluginError, PreparedPlugin};
use crate::crypto::AlgorithmPolicy;

/// Why a component and a manifest do not make a package.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PackError {
    #[error(transparent)]
    Package(#[from] PackageError),
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error(
        "the manifest says version {manifest}, but the component's describe says {describe}: \
         they must be the same (set version in certconn-plugin.toml, or rebuild the component)"
    )]
    VersionMismatch { manifest: String, describe: String },
}

/// Embeds `manifest` into `component` and checks the result; `out` is where it will be
/// published (its name is what the daemon loads it by).
pub async fn pack(
    engine: Arc<PluginEngine>,
    component: &[u8],
    manifest: &Manifest,
    out: &Path,
) -> Result<PluginPackage, PackError> {
    let bytes = package::embed(component, manifest)?;
    let package = PluginPackage::from_bytes(out, bytes)?;
    let prepared = Arc::new(PreparedPlugin::prepare(&engine, &package)?);
    let info = prepared
        .describe(engine, AlgorithmPolicy::default())
        .await?;
    if info.version != manifest.version {
        return Err(PackError::VersionMismatch {
            manifest: manifest.version.clone(),
            describe: info.version,
        });
    }
    Ok(package)
}
