//! A plugin package on disk: the component bytes, their SHA-256 (the version's identity: the
//! watcher compares it, rollback returns to it) and the embedded [`Manifest`]. Reading checks
//! the size and the manifest; compiling and the contract check happen in the engine.

use std::path::{Path, PathBuf};

use wasmparser::{Parser, Payload};

use super::manifest::{Manifest, SECTION};
use super::PluginError;
use crate::crypto::provider::{self, Digest};

/// Largest plugin file read.
pub const MAX_PLUGIN_BYTES: u64 = 64 << 20;

/// A plugin file, read and its manifest checked.
pub struct PluginPackage {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    pub manifest: Manifest,
}

impl std::fmt::Debug for PluginPackage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginPackage")
            .field("path", &self.path)
            .field("sha256", &self.sha256)
            .field("manifest", &self.manifest)
            .finish_non_exhaustive()
    }
}

/// Why bytes are not a plugin package.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PackageError {
    #[error("not a WebAssembly component")]
    NotWasm(#[source] wasmparser::BinaryReaderError),
    #[error(
        "not a WebAssembly file: it begins with {head}, where WebAssembly begins with 00 61 73 6d \
         (\"\\0asm\")"
    )]
    NotWasmFile { head: String },
    #[error(
        "a core WebAssembly module, not a component: build for wasm32-wasip2 (or run \
         `wasm-tools component new`)"
    )]
    CoreModule,
    #[error("it is empty")]
    Empty,
    #[error("it has two different {SECTION} sections")]
    TwoManifests,
    #[error("a section without its header")]
    Truncated,
    #[error(transparent)]
    Manifest(#[from] super::manifest::ManifestError),
}

fn invalid(path: &Path, reason: impl Into<String>) -> PluginError {
    PluginError::Invalid {
        plugin: path.display().to_string(),
        reason: reason.into(),
    }
}

impl PluginPackage {
    /// Reads and checks `path`.
    pub fn read(path: &Path) -> Result<Self, PluginError> {
        let io = |source| PluginError::Io {
            path: path.to_owned(),
            source,
        };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > MAX_PLUGIN_BYTES {
            return Err(invalid(
                path,
                format!(
                    "{len} bytes is larger than the {MAX_PLUGIN_BYTES}-byte limit for a plugin"
                ),
            ));
        }
        let bytes = std::fs::read(path).map_err(io)?;
        Self::from_bytes(path, bytes)
    }

    /// Checks `bytes` as if read from `path`.
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self, PluginError> {
        let section = find_manifest(&bytes)
            .map_err(|e| invalid(path, crate::report::chain(&e)))?
            .ok_or_else(|| {
            invalid(
                path,
                format!("it has no {SECTION} section: package the component with its manifest (`certconn plugin pack COMPONENT --manifest certconn-plugin.toml`)"),
            )
        })?;
        let manifest = Manifest::parse(&section).map_err(|e| invalid(path, e.to_string()))?;
        Ok(Self {
            path: path.to_owned(),
            sha256: sha256_hex(&bytes),
            bytes,
            manifest,
        })
    }

    /// `name version (sha256 prefix)`: how logs, status and job results name this version.
    pub fn version_id(&self) -> String {
        version_id(&self.manifest, &self.sha256)
    }
}

/// The SHA-256 of a plugin file, hex: a version's identity (cache key, refusals, rollback).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(provider::digest(Digest::Sha256, bytes))
}

/// `name version (sha256 prefix)`.
pub fn version_id(manifest: &Manifest, sha256: &str) -> String {
    format!(
        "{} {} ({})",
        manifest.name,
        manifest.version,
        &sha256[..12.min(sha256.len())]
    )
}

/// The manifest section's bytes: at the component's top level, else inside one of its core
/// modules (where a Rust plugin's `#[link_section]` puts it). Two different manifests are an
/// error rather than a guess.
pub fn find_manifest(bytes: &[u8]) -> Result<Option<Vec<u8>>, PackageError> {
    check_magic(bytes)?;
    let mut depth = 0usize;
    let mut top = None;
    let mut nested: Option<Vec<u8>> = None;
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(PackageError::NotWasm)?;
        match payload {
            Payload::Version { encoding, .. }
                if depth == 0 && encoding != wasmparser::Encoding::Component =>
            {
                return Err(PackageError::CoreModule);
            }
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::CustomSection(c) if c.name() == SECTION => {
                let data = c.data().to_vec();
                let slot = if depth == 0 { &mut top } else { &mut nested };
                match slot {
                    Some(seen) if *seen != data => return Err(PackageError::TwoManifests),
                    _ => *slot = Some(data),
                }
            }
            _ => {}
        }
    }
    Ok(top.or(nested))
}

fn leb128(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Refuses bytes that do not begin as WebAssembly does, naming what they begin with (a text
/// file, an archive): wasmparser's own error prints the two magic numbers as debug arrays,
/// one byte a line.
pub(crate) fn check_magic(bytes: &[u8]) -> Result<(), PackageError> {
    const MAGIC: &[u8] = b"\0asm";
    if bytes.is_empty() {
        return Err(PackageError::Empty);
    }
    if bytes.starts_with(MAGIC) {
        return Ok(());
    }
    let head = &bytes[..bytes.len().min(MAGIC.len())];
    let hex: Vec<String> = head.iter().map(|b| format!("{b:02x}")).collect();
    let text: String = head
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            }
        })
        .collect();
    Err(PackageError::NotWasmFile {
        head: format!("{} ({text:?})", hex.join(" ")),
    })
}

/// `component` with `manifest` as its top-level manifest section (replacing any there).
pub fn embed(component: &[u8], manifest: &Manifest) -> Result<Vec<u8>, PackageError> {
    check_magic(component)?;
    let toml = manifest.to_toml()?;
    let mut out = Vec::with_capacity(component.len() + toml.len() + 32);
    let mut depth = 0usize;
    let mut saw_component = false;
    for payload in Parser::new(0).parse_all(component) {
        let payload = payload.map_err(PackageError::NotWasm)?;
        let top = depth == 0;
        match &payload {
            Payload::Version {
                encoding, range, ..
            } if top => {
                if *encoding != wasmparser::Encoding::Component {
                    return Err(PackageError::CoreModule);
                }
                saw_component = true;
                out.extend_from_slice(&component[range.clone()]);
            }
            // The old manifest is replaced; a publisher signature no longer holds once the
            // package changes, so it goes too (sign again after packing).
            Payload::CustomSection(c)
                if top && (c.name() == SECTION || c.name() == super::signature::SECTION) => {}
            Payload::End(_) => {
                depth = depth.saturating_sub(1);
            }
            other if top => {
                if let Some((_, range)) = other.as_section() {
                    // The section's id and size precede its contents.
                    let start = section_start(component, range.start)?;
                    out.extend_from_slice(&component[start..range.end]);
                }
                if matches!(
                    other,
                    Payload::ModuleSection { .. } | Payload::ComponentSection { .. }
                ) {
                    depth += 1;
                }
            }
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            _ => {}
        }
    }
    if !saw_component {
        return Err(PackageError::Empty);
    }
    append_custom_section(&mut out, SECTION, toml.as_bytes());
    Ok(out)
}

/// Appends a top-level custom section `name` holding `data`.
pub(crate) fn append_custom_section(out: &mut Vec<u8>, name: &str, data: &[u8]) {
    let mut header = Vec::new();
    leb128(name.len(), &mut header);
    header.extend_from_slice(name.as_bytes());
    out.push(0); // custom section id
    leb128(header.len() + data.len(), out);
    out.extend_from_slice(&header);
    out.extend_from_slice(data);
}

/// Where the section whose contents start at `contents` begins: walks back over the LEB128 size
/// and the id byte. The size is at most 5 bytes; the id byte is below 0x80, and so is the last
/// byte of the size, so the walk is unambiguous from the end of the size backwards.
pub(crate) fn section_start(bytes: &[u8], contents: usize) -> Result<usize, PackageError> {
    // The size's last byte has its high bit clear; earlier size bytes have it set.
    let mut at = contents.checked_sub(1).ok_or(PackageError::Truncated)?;
    while at > 0 && bytes[at - 1] & 0x80 != 0 {
        at -= 1;
    }
    at.checked_sub(1).ok_or(PackageError::Truncated)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(version: &str) -> Manifest {
        Manifest::parse(
            format!("name = \"demo\"\nversion = \"{version}\"\ncontract = \"0.2.0\"\n").as_bytes(),
        )
        .unwrap()
    }

    /// The smallest component: magic, component layer.
    const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0";

    #[test]
    fn embedding_replaces_the_manifest_and_keeps_the_rest() {
        let once = embed(EMPTY_COMPONENT, &manifest("1.0.0")).unwrap();
        let found = find_manifest(&once).unwrap().unwrap();
        assert_eq!(Manifest::parse(&found).unwrap().version, "1.0.0");
        let twice = embed(&once, &manifest("2.0.0")).unwrap();
        let found = find_manifest(&twice).unwrap().unwrap();
        assert_eq!(Manifest::parse(&found).unwrap().version, "2.0.0");
        assert_eq!(
            twice.len(),
            once.len(),
            "the old section was replaced, not kept"
        );
        wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all())
            .validate_all(&twice)
            .unwrap();
    }

    #[test]
    fn core_modules_and_garbage_are_refused_with_the_reason() {
        let core = b"\0asm\x01\0\0\0";
        assert!(matches!(find_manifest(core), Err(PackageError::CoreModule)));
        assert!(embed(core, &manifest("1.0.0")).is_err());
        assert!(find_manifest(b"MZ\x90\0 not wasm").is_err());
        let e = PluginPackage::from_bytes(Path::new("x.wasm"), EMPTY_COMPONENT.to_vec())
            .unwrap_err()
            .to_string();
        assert!(e.contains("certconn plugin pack"), "{e}");
    }

    /// A file that is not WebAssembly at all is named by what it begins with, on one line.
    #[test]
    fn a_file_of_another_kind_is_named_by_its_first_bytes() {
        let e = find_manifest(b"root:x:0:0:root:/root:/bin/bash\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "not a WebAssembly file: it begins with 72 6f 6f 74 (\"root\"), where WebAssembly \
             begins with 00 61 73 6d (\"\\0asm\")"
        );
        let e = embed(b"PK\x03\x04zip", &manifest("1.0.0")).unwrap_err();
        assert!(e.to_string().contains("50 4b 03 04 (\"PK..\")"), "{e}");
        assert!(matches!(find_manifest(b""), Err(PackageError::Empty)));
    }
}
