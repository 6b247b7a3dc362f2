//! The plugin manifest: who a plugin is and what it asks for.
//!
//! A plugin package is one file, `NAME.wasm`: the component with its manifest embedded as a
//! custom section named [`SECTION`], holding TOML. One file, so publishing a new version is one
//! atomic rename and the manifest can never disagree with the code beside it (a sidecar file
//! could be renamed in a moment apart from its component, and a watcher would see the pair
//! torn). `certconn plugin pack` embeds it for a component built in any language; Rust plugins
//! can embed it at build time with `certconn_sdk::plugin_manifest!` (the section then sits in
//! the component's core module, where the reader also looks).
//!
//! The manifest *asks*; the administrator's `[backends.NAME]` *grants*. A request beyond the
//! grant is reported when the backend loads, and any use beyond the grant is denied and logged
//! when it happens.

use serde::{Deserialize, Serialize};

/// The custom section that holds the manifest.
pub const SECTION: &str = "certconn-manifest";

/// Largest manifest accepted.
const MAX_MANIFEST: usize = 64 * 1024;

/// `certconn-plugin.toml`, as embedded in a plugin package.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The plugin's name; the package is published as `NAME.wasm`. Lowercase letters, digits,
    /// `-` and `_`.
    pub name: String,
    /// The plugin's own version (semver).
    pub version: String,
    /// The `certconn:plugin` contract version it was built against, for example `0.2.0`.
    pub contract: String,
    /// One line for `certconn plugins list`.
    #[serde(default)]
    pub description: String,
    /// Who publishes it.
    #[serde(default)]
    pub vendor: String,
    /// What it asks to be granted.
    #[serde(default)]
    pub requests: Requests,
}

/// What a plugin asks for. Entries of the form `settings.KEY` refer to the value of that
/// setting in the instance's configuration: a plugin whose CA URL is a setting asks for
/// `settings.url`, and the host compares the URL's host with the grant.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Requests {
    /// Hosts it reaches: `host`, `host:port`, or `settings.KEY` (an http(s) URL setting).
    #[serde(default)]
    pub http: Vec<String>,
    /// Custody key handles it uses: a handle name, or `settings.KEY` (a setting naming one).
    /// The `request` handle (the key a CSR certifies) needs no grant.
    #[serde(default)]
    pub keys: Vec<String>,
    /// Linear memory it needs, in MiB.
    pub memory_mb: Option<usize>,
    /// Time one call may need, in seconds.
    pub timeout_seconds: Option<u64>,
}

/// Why a manifest is not acceptable.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("the manifest is larger than {MAX_MANIFEST} bytes")]
    TooLarge,
    #[error("the manifest is not UTF-8 text")]
    NotText,
    #[error("the manifest does not parse: {0}")]
    Parse(String),
    #[error("manifest field {field}: {message}")]
    Field {
        field: &'static str,
        message: String,
    },
}

fn field(field: &'static str, message: impl Into<String>) -> ManifestError {
    ManifestError::Field {
        field,
        message: message.into(),
    }
}

/// A plugin or instance name: what config, files and URLs may carry.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_')
}

impl Manifest {
    /// Parses and checks the embedded bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, ManifestError> {
        if bytes.len() > MAX_MANIFEST {
            return Err(ManifestError::TooLarge);
        }
        let text = std::str::from_utf8(bytes).map_err(|_| ManifestError::NotText)?;
        let manifest: Manifest =
            toml::from_str(text).map_err(|e| ManifestError::Parse(e.to_string()))?;
        manifest.check()?;
        Ok(manifest)
    }

    /// The manifest as TOML, for embedding.
    pub fn to_toml(&self) -> Result<String, ManifestError> {
        toml::to_string(self).map_err(|e| ManifestError::Parse(e.to_string()))
    }

    fn check(&self) -> Result<(), ManifestError> {
        if !valid_name(&self.name) {
            return Err(field(
                "name",
                format!(
                    "{:?} must be 1-64 lowercase letters, digits, - or _",
                    self.name
                ),
            ));
        }
        semver::Version::parse(&self.version)
            .map_err(|e| field("version", format!("{:?} is not semver: {e}", self.version)))?;
        self.contract_version()?;
        if self.description.chars().count() > 200 {
            return Err(field("description", "at most 200 characters"));
        }
        for entry in self.requests.http.iter().chain(&self.requests.keys) {
            if entry.is_empty() || entry.len() > 255 {
                return Err(field(
                    "requests",
                    format!("{entry:?} is not a host, handle or settings.KEY"),
                ));
            }
        }
        if self.requests.memory_mb == Some(0) {
            return Err(field("requests.memory_mb", "must be at least 1"));
        }
        if self.requests.timeout_seconds == Some(0) {
            return Err(field("requests.timeout_seconds", "must be at least 1"));
        }
        Ok(())
    }

    /// The contract version the manifest declares.
    pub fn contract_version(&self) -> Result<semver::Version, ManifestError> {
        semver::Version::parse(&self.contract).map_err(|e| {
            field(
                "contract",
                format!(
                    "{:?} is not a full version like \"0.2.0\": {e}",
                    self.contract
                ),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "ndes"
version = "1.4.0"
contract = "0.2.0"
description = "Microsoft CA through NDES"
[requests]
http = ["settings.url"]
memory_mb = 32
"#;

    #[test]
    fn a_good_manifest_parses_and_round_trips() {
        let m = Manifest::parse(GOOD.as_bytes()).unwrap();
        assert_eq!(m.name, "ndes");
        assert_eq!(m.requests.http, ["settings.url"]);
        assert_eq!(m.contract_version().unwrap(), semver::Version::new(0, 2, 0));
        let again = Manifest::parse(m.to_toml().unwrap().as_bytes()).unwrap();
        assert_eq!(again, m);
    }

    #[test]
    fn bad_manifests_name_the_field() {
        for (from, to, needle) in [
            (
                "name = \"ndes\"",
                "name = \"../ndes\"",
                "manifest field name",
            ),
            (
                "version = \"1.4.0\"",
                "version = \"one\"",
                "manifest field version",
            ),
            (
                "contract = \"0.2.0\"",
                "contract = \"0.2\"",
                "manifest field contract",
            ),
            ("memory_mb = 32", "memory_mb = 0", "requests.memory_mb"),
            ("memory_mb = 32", "memroy_mb = 32", "unknown field"),
        ] {
            let e = Manifest::parse(GOOD.replace(from, to).as_bytes())
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{to}: {e}");
        }
        assert!(matches!(
            Manifest::parse(&[0xff, 0xfe]),
            Err(ManifestError::NotText)
        ));
        assert!(matches!(
            Manifest::parse(&vec![b' '; MAX_MANIFEST + 1]),
            Err(ManifestError::TooLarge)
        ));
    }
}
