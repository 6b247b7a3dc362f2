//! Publishing the feed: `certconn release init|add|publish|rotate-root`, for a release engineer,
//! and the one way the tests build their repositories.
//!
//! A feed workspace is a directory:
//! ```text
//! feed.toml          support_days, expiry, and the list of releases (written by `add`)
//! files/             the released files, copied in by `add`
//! repository/        what to serve, as it is: metadata/ and targets/ (TUF, consistent snapshots)
//! ```
//! Keys live elsewhere (`--keys DIR`, one PKCS#8 PEM file per key, `ROLE-N.pem`, mode 0600):
//! the root keys belong offline. Every role is signed with ECDSA P-256 so that verification
//! stays on FIPS-approved algorithms. `publish` signs all metadata again with one new version
//! number, writes the targets first and `timestamp.json` last, each file by rename, so a client
//! reading during a publish sees the old feed or the new one.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use serde::{Deserialize, Serialize};
use tough::editor::signed::SignedRole;
use tough::key_source::KeySource;
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::{
    DelegatedRole, DelegatedTargets, Delegations, Hashes, KeyHolder, Metafile, PathPattern,
    PathSet, RoleKeys, RoleType, Root, Snapshot, Target, Targets, Timestamp,
};
use tough::sign::Sign;
use tough::TargetName;
use zeroize::Zeroizing;

use super::release::{
    Kind, Release, CUSTOM_KEY, DEFAULT_SUPPORT_DAYS, PLUGINS_ROLE, PLUGIN_PREFIX,
};
use crate::crypto::provider::{self, Digest};
use crate::files;

const SPEC_VERSION: &str = "1.0.0";

/// Why publishing failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{0}")]
    Invalid(String),
    #[error("signing {role}: {reason}")]
    Sign { role: String, reason: String },
}

fn file_error(path: &Path, e: impl std::fmt::Display) -> PublishError {
    PublishError::File {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

/// `feed.toml`: how long metadata lives, the grace, and what is released.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedFile {
    /// Days of support a release keeps once a newer one ships.
    #[serde(default = "default_support_days")]
    pub support_days: u32,
    /// Days until root, targets and snapshot metadata expire: publish again before.
    #[serde(default = "default_expires_days")]
    pub expires_days: u32,
    /// Days until `timestamp.json` expires: a client offered a timestamp older than this
    /// (a frozen feed) refuses it. Publish at least this often.
    #[serde(default = "default_timestamp_days")]
    pub timestamp_days: u32,
    /// How many plugin publisher keys must sign the plugins role.
    #[serde(default = "default_threshold")]
    pub plugins_threshold: u32,
    #[serde(default, rename = "release")]
    pub releases: Vec<FeedEntry>,
}

fn default_support_days() -> u32 {
    DEFAULT_SUPPORT_DAYS
}
fn default_expires_days() -> u32 {
    365
}
fn default_timestamp_days() -> u32 {
    7
}
fn default_threshold() -> u32 {
    1
}

/// One release in `feed.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedEntry {
    pub kind: Kind,
    pub name: String,
    pub version: String,
    pub channel: String,
    pub released: String,
    /// The file under `files/`.
    pub file: String,
}

/// How many keys each role has and how many must sign.
#[derive(Debug, Clone, Copy)]
pub struct RoleShape {
    pub keys: u32,
    pub threshold: u32,
}

impl Default for RoleShape {
    fn default() -> Self {
        Self {
            keys: 1,
            threshold: 1,
        }
    }
}

/// The shape of a new feed's roles.
#[derive(Debug, Clone, Copy, Default)]
pub struct Shape {
    pub root: RoleShape,
    pub targets: RoleShape,
    pub snapshot: RoleShape,
    pub timestamp: RoleShape,
    pub plugins: RoleShape,
}

/// A feed workspace and its keys.
pub struct Workspace {
    pub dir: PathBuf,
    pub keys: PathBuf,
}

/// One signing key file.
#[derive(Debug)]
struct PemKey {
    path: PathBuf,
}

#[async_trait::async_trait]
impl KeySource for PemKey {
    async fn as_sign(
        &self,
    ) -> Result<Box<dyn Sign>, Box<dyn std::error::Error + Send + Sync + 'static>> {
        let pem = files::read_protected(&self.path)?;
        let der = pem_to_der(&pem).map_err(|e| format!("{}: {e}", self.path.display()))?;
        Ok(Box::new(tough::sign::parse_keypair(&der)?))
    }

    async fn write(
        &self,
        _value: &str,
        _key_id_hex: &str,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        Err("certconn never rewrites a signing key".into())
    }
}

fn pem_to_der(pem: &[u8]) -> Result<Zeroizing<Vec<u8>>, String> {
    let text = std::str::from_utf8(pem).map_err(|_| "not a PEM file".to_owned())?;
    let (label, der) =
        der::pem::decode_vec(text.as_bytes()).map_err(|e| format!("not a PEM file: {e}"))?;
    if label != "PRIVATE KEY" {
        return Err(format!("a {label:?} PEM block, not a PKCS#8 PRIVATE KEY"));
    }
    Ok(Zeroizing::new(der))
}

/// Writes a new ECDSA P-256 key to `path` (mode 0600) and returns its TUF key.
fn generate_key(path: &Path) -> Result<tough::schema::key::Key, PublishError> {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
        .map_err(|_| PublishError::Invalid("generating an ECDSA P-256 key failed".into()))?;
    let pem = Zeroizing::new(
        der::pem::encode_string("PRIVATE KEY", der::pem::LineEnding::LF, pkcs8.as_ref())
            .map_err(|e| PublishError::Invalid(e.to_string()))?,
    );
    files::write_atomic(path, pem.as_bytes(), 0o600).map_err(|e| file_error(path, e))?;
    let pair = tough::sign::parse_keypair(pkcs8.as_ref())
        .map_err(|e| PublishError::Invalid(e.to_string()))?;
    Ok(pair.tuf_key())
}

async fn public_key(path: &Path) -> Result<tough::schema::key::Key, PublishError> {
    let sign = PemKey {
        path: path.to_owned(),
    }
    .as_sign()
    .await
    .map_err(|e| file_error(path, e))?;
    Ok(sign.tuf_key())
}

fn key_id(key: &tough::schema::key::Key) -> Result<Decoded<Hex>, PublishError> {
    key.key_id()
        .map_err(|e| PublishError::Invalid(format!("a key's id: {e}")))
}

fn days_from_now(days: u32) -> jiff::Timestamp {
    jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * i64::from(days))
}

fn nonzero(n: u64) -> NonZeroU64 {
    NonZeroU64::new(n).unwrap_or(NonZeroU64::MIN)
}

impl Workspace {
    pub fn new(dir: impl Into<PathBuf>, keys: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            keys: keys.into(),
        }
    }

    fn feed_path(&self) -> PathBuf {
        self.dir.join("feed.toml")
    }

    /// Where the repository to serve is written.
    pub fn repository(&self) -> PathBuf {
        self.dir.join("repository")
    }

    pub fn metadata(&self) -> PathBuf {
        self.repository().join("metadata")
    }

    /// The role's key files present, `ROLE-1.pem`, `ROLE-2.pem`, … in order.
    fn key_files(&self, role: &str) -> Vec<PathBuf> {
        (1..)
            .map(|n| self.keys.join(format!("{role}-{n}.pem")))
            .take_while(|p| p.exists())
            .collect()
    }

    /// Creates the workspace: keys for every role (kept if present), `feed.toml`, and the
    /// first root (`repository/metadata/1.root.json`), which clients pin. Returns its path.
    pub async fn init(&self, shape: Shape) -> Result<PathBuf, PublishError> {
        if self.feed_path().exists() {
            return Err(PublishError::Invalid(format!(
                "{} already holds a feed; publish it, or pick another directory",
                self.dir.display()
            )));
        }
        files::private_dir(&self.keys).map_err(|e| file_error(&self.keys, e))?;
        std::fs::create_dir_all(self.dir.join("files")).map_err(|e| file_error(&self.dir, e))?;
        std::fs::create_dir_all(self.metadata()).map_err(|e| file_error(&self.dir, e))?;
        let mut root = Root {
            spec_version: SPEC_VERSION.into(),
            consistent_snapshot: true,
            version: NonZeroU64::MIN,
            expires: days_from_now(default_expires_days()),
            keys: HashMap::new(),
            roles: HashMap::new(),
            _extra: HashMap::new(),
        };
        for (role, kind, s) in [
            ("root", Some(RoleType::Root), shape.root),
            ("targets", Some(RoleType::Targets), shape.targets),
            ("snapshot", Some(RoleType::Snapshot), shape.snapshot),
            ("timestamp", Some(RoleType::Timestamp), shape.timestamp),
            ("plugins", None, shape.plugins),
        ] {
            if s.threshold == 0 || s.threshold > s.keys {
                return Err(PublishError::Invalid(format!(
                    "the {role} role's threshold {} must be between 1 and its {} keys",
                    s.threshold, s.keys
                )));
            }
            let mut ids = Vec::new();
            for n in 1..=s.keys {
                let path = self.keys.join(format!("{role}-{n}.pem"));
                let key = if path.exists() {
                    public_key(&path).await?
                } else {
                    generate_key(&path)?
                };
                let id = key_id(&key)?;
                if kind.is_some() {
                    root.keys.insert(id.clone(), key);
                }
                ids.push(id);
            }
            if let Some(kind) = kind {
                root.roles.insert(
                    kind,
                    RoleKeys {
                        keyids: ids,
                        threshold: nonzero(u64::from(s.threshold)),
                        _extra: HashMap::new(),
                    },
                );
            }
        }
        let feed = FeedFile {
            support_days: DEFAULT_SUPPORT_DAYS,
            expires_days: default_expires_days(),
            timestamp_days: default_timestamp_days(),
            plugins_threshold: shape.plugins.threshold,
            releases: Vec::new(),
        };
        self.write_feed(&feed)?;
        self.sign_root(root, None).await
    }

    fn read_feed(&self) -> Result<FeedFile, PublishError> {
        let path = self.feed_path();
        let text = std::fs::read_to_string(&path).map_err(|e| file_error(&path, e))?;
        toml::from_str(&text).map_err(|e| file_error(&path, e))
    }

    fn write_feed(&self, feed: &FeedFile) -> Result<(), PublishError> {
        let path = self.feed_path();
        let text = toml::to_string_pretty(feed).map_err(|e| file_error(&path, e))?;
        files::write_atomic(&path, text.as_bytes(), 0o644).map_err(|e| file_error(&path, e))
    }

    /// Adds a release: writes the file's `bytes` into `files/` and lists it in `feed.toml`.
    /// Nothing is served until `publish`. Whether the bytes are what the release says (a
    /// package of that plugin and version, a certconn binary) is [`Release::check_file`]'s,
    /// which `certconn release add` asks first, of the same bytes it hands here (the file is
    /// read once: what was checked is what is stored); the tests put in releases it refuses,
    /// as an attacker would.
    pub fn add(&self, release: &Release, bytes: &[u8]) -> Result<(), PublishError> {
        release.check().map_err(PublishError::Invalid)?;
        let mut feed = self.read_feed()?;
        if feed.releases.iter().any(|r| {
            r.kind == release.kind && r.name == release.name && r.version == release.version
        }) {
            return Err(PublishError::Invalid(format!(
                "{} {} {} is already in the feed: a published version never changes; release a new version",
                release.kind.as_str(),
                release.name,
                release.version
            )));
        }
        let stored = format!(
            "{}-{}-{}",
            release.kind.as_str(),
            release.name,
            release.version
        );
        let dest = self.dir.join("files").join(&stored);
        files::write_atomic(&dest, bytes, 0o644).map_err(|e| file_error(&dest, e))?;
        feed.releases.push(FeedEntry {
            kind: release.kind,
            name: release.name.clone(),
            version: release.version.clone(),
            channel: release.channel.clone(),
            released: release.released.clone(),
            file: stored,
        });
        self.write_feed(&feed)
    }

    /// The newest root in the repository and its version.
    fn latest_root(&self) -> Result<(u64, Root), PublishError> {
        let dir = self.metadata();
        let mut n = 1;
        while dir.join(format!("{}.root.json", n + 1)).exists() {
            n += 1;
        }
        let path = dir.join(format!("{n}.root.json"));
        let text = std::fs::read(&path).map_err(|e| file_error(&path, e))?;
        let signed: tough::schema::Signed<Root> =
            serde_json::from_slice(&text).map_err(|e| file_error(&path, e))?;
        Ok((n, signed.signed))
    }

    fn all_keys(&self) -> Vec<Box<dyn KeySource>> {
        let mut keys: Vec<Box<dyn KeySource>> = Vec::new();
        for role in ["root", "targets", "snapshot", "timestamp", "plugins"] {
            for path in self.key_files(role) {
                keys.push(Box::new(PemKey { path }));
            }
        }
        keys
    }

    /// Signs `root` with its own root keys, plus the signatures of `also` (the previous
    /// root's, for a rotation), and writes it as `N.root.json`.
    async fn sign_root(
        &self,
        root: Root,
        also: Option<(&Root, &[Box<dyn KeySource>])>,
    ) -> Result<PathBuf, PublishError> {
        let n = root.version.get();
        let rng = SystemRandom::new();
        let sign_error = |e: tough::error::Error| PublishError::Sign {
            role: "root".into(),
            reason: crate::report::chain(&e),
        };
        let holder = KeyHolder::Root(root.clone());
        let signed = SignedRole::new(root.clone(), &holder, &self.all_keys(), &rng)
            .await
            .map_err(sign_error)?;
        let mut signed = signed.signed().clone();
        if let Some((previous, keys)) = also {
            // A client checks a new root with the root it trusts before it trusts the new one.
            let by_old = SignedRole::new(root, &KeyHolder::Root(previous.clone()), keys, &rng)
                .await
                .map_err(sign_error)?;
            signed.signatures.extend(by_old.signed().signatures.clone());
        }
        let mut buffer =
            serde_json::to_vec_pretty(&signed).map_err(|e| PublishError::Invalid(e.to_string()))?;
        buffer.push(b'\n');
        let path = self.metadata().join(format!("{n}.root.json"));
        files::write_atomic(&path, &buffer, 0o644).map_err(|e| file_error(&path, e))?;
        Ok(path)
    }

    /// Signs and writes the repository for the releases in `feed.toml`. Returns the new
    /// metadata version.
    pub async fn publish(&self) -> Result<u64, PublishError> {
        self.publish_with(&[]).await
    }

    /// `publish`, with the daemon releases of `smuggled` versions signed by the plugins role
    /// instead of targets — what a plugin publisher's key would try in order to ship a daemon
    /// binary. For the client's tests: it must not be offered.
    pub async fn publish_with(&self, smuggled: &[&str]) -> Result<u64, PublishError> {
        let feed = self.read_feed()?;
        let (_, root) = self.latest_root()?;
        let metadata = self.metadata();
        let version = match std::fs::read(metadata.join("timestamp.json")) {
            Ok(bytes) => {
                let t: tough::schema::Signed<Timestamp> = serde_json::from_slice(&bytes)
                    .map_err(|e| file_error(&metadata.join("timestamp.json"), e))?;
                t.signed.version.get() + 1
            }
            Err(_) => 1,
        };
        let v = nonzero(version);
        let expires = days_from_now(feed.expires_days);
        let keys = self.all_keys();
        let rng = SystemRandom::new();
        let sign_error = |role: &str, e: tough::error::Error| PublishError::Sign {
            role: role.into(),
            reason: crate::report::chain(&e),
        };

        // The targets, written first (by rename) so that no metadata ever names a missing file.
        let mut daemon = Targets::new(SPEC_VERSION.into(), v, expires);
        let mut plugins = Targets::new(SPEC_VERSION.into(), v, expires);
        for entry in &feed.releases {
            let release = Release {
                kind: entry.kind,
                name: entry.name.clone(),
                version: entry.version.clone(),
                channel: entry.channel.clone(),
                released: entry.released.clone(),
                support_days: feed.support_days,
            };
            release.check().map_err(|e| {
                PublishError::Invalid(format!("feed.toml, {} {}: {e}", entry.name, entry.version))
            })?;
            let source = self.dir.join("files").join(&entry.file);
            let bytes = std::fs::read(&source).map_err(|e| file_error(&source, e))?;
            let sha = provider::digest(Digest::Sha256, &bytes);
            let path = release.target_path();
            let served = self
                .repository()
                .join("targets")
                .join(format!("{}.{path}", hex::encode(&sha)));
            if let Some(parent) = served.parent() {
                std::fs::create_dir_all(parent).map_err(|e| file_error(parent, e))?;
            }
            if !served.exists() {
                files::write_atomic(&served, &bytes, 0o644).map_err(|e| file_error(&served, e))?;
            }
            let mut custom = HashMap::new();
            custom.insert(
                CUSTOM_KEY.to_owned(),
                serde_json::to_value(&release).map_err(|e| PublishError::Invalid(e.to_string()))?,
            );
            let target = Target {
                length: bytes.len() as u64,
                hashes: Hashes {
                    sha256: Decoded::from(sha),
                    _extra: HashMap::new(),
                },
                custom,
                _extra: HashMap::new(),
            };
            let name = TargetName::new(&path).map_err(|e| PublishError::Invalid(e.to_string()))?;
            match entry.kind {
                Kind::Daemon if !smuggled.contains(&entry.version.as_str()) => {
                    daemon.add_target(name, target)
                }
                _ => plugins.add_target(name, target),
            }
        }

        // The plugins role, delegated by targets to the plugin keys for `plugins/*` only.
        let mut delegations = Delegations::new();
        let mut plugin_ids = Vec::new();
        for path in self.key_files("plugins") {
            let key = public_key(&path).await?;
            let id = key_id(&key)?;
            delegations.keys.insert(id.clone(), key);
            plugin_ids.push(id);
        }
        if plugin_ids.is_empty() {
            return Err(PublishError::Invalid(format!(
                "no plugins-1.pem in {}: the plugins role needs a key",
                self.keys.display()
            )));
        }
        let threshold = u64::from(feed.plugins_threshold);
        delegations.roles.push(DelegatedRole {
            name: PLUGINS_ROLE.into(),
            keyids: plugin_ids,
            threshold: nonzero(threshold),
            paths: PathSet::Paths(vec![PathPattern::new(format!("{PLUGIN_PREFIX}*"))
                .map_err(|e| PublishError::Invalid(e.to_string()))?]),
            terminating: true,
            targets: None,
        });
        let plugins_role = DelegatedTargets {
            name: PLUGINS_ROLE.into(),
            targets: plugins,
        };
        let plugins_signed = SignedRole::new(
            plugins_role,
            &KeyHolder::Delegations(delegations.clone()),
            &keys,
            &rng,
        )
        .await
        .map_err(|e| sign_error(PLUGINS_ROLE, e))?;
        daemon.delegations = Some(delegations);
        let targets_signed = SignedRole::new(daemon, &KeyHolder::Root(root.clone()), &keys, &rng)
            .await
            .map_err(|e| sign_error("targets", e))?;

        let mut snapshot = Snapshot::new(SPEC_VERSION.into(), v, expires);
        for (name, buffer) in [
            ("targets.json", targets_signed.buffer()),
            ("plugins.json", plugins_signed.buffer()),
        ] {
            snapshot.meta.insert(name.into(), metafile(v, buffer));
        }
        let snapshot_signed =
            SignedRole::new(snapshot, &KeyHolder::Root(root.clone()), &keys, &rng)
                .await
                .map_err(|e| sign_error("snapshot", e))?;
        let mut timestamp =
            Timestamp::new(SPEC_VERSION.into(), v, days_from_now(feed.timestamp_days));
        timestamp.meta.insert(
            "snapshot.json".into(),
            metafile(v, snapshot_signed.buffer()),
        );
        let timestamp_signed = SignedRole::new(timestamp, &KeyHolder::Root(root), &keys, &rng)
            .await
            .map_err(|e| sign_error("timestamp", e))?;

        for (name, buffer) in [
            (
                format!("{version}.{PLUGINS_ROLE}.json"),
                plugins_signed.buffer(),
            ),
            (format!("{version}.targets.json"), targets_signed.buffer()),
            (format!("{version}.snapshot.json"), snapshot_signed.buffer()),
            ("timestamp.json".to_owned(), timestamp_signed.buffer()),
        ] {
            let path = metadata.join(name);
            files::write_atomic(&path, buffer, 0o644).map_err(|e| file_error(&path, e))?;
        }
        Ok(version)
    }

    /// Replaces the root key: a new `root-1.pem` (the old root keys are kept as
    /// `root-N.pem.retired`), and root version + 1 signed by the old keys and the new, so that
    /// clients trusting the old root follow to the new one. Returns the new root's path.
    pub async fn rotate_root(&self) -> Result<PathBuf, PublishError> {
        let (n, old_root) = self.latest_root()?;
        let old = self.key_files("root");
        let mut retired = Vec::new();
        for from in &old {
            let to = from.with_extension("pem.retired");
            std::fs::rename(from, &to).map_err(|e| file_error(from, e))?;
            retired.push(Box::new(PemKey { path: to }) as Box<dyn KeySource>);
        }
        let key = generate_key(&self.keys.join("root-1.pem"))?;
        let id = key_id(&key)?;
        let mut root = old_root.clone();
        if let Some(previous) = root.roles.get(&RoleType::Root) {
            for old_id in &previous.keyids {
                root.keys.remove(old_id);
            }
        }
        root.keys.insert(id.clone(), key);
        root.roles.insert(
            RoleType::Root,
            RoleKeys {
                keyids: vec![id],
                threshold: NonZeroU64::MIN,
                _extra: HashMap::new(),
            },
        );
        root.version = nonzero(n + 1);
        root.expires = days_from_now(self.read_feed()?.expires_days);
        self.sign_root(root, Some((&old_root, &retired))).await
    }
}

fn metafile(version: NonZeroU64, buffer: &[u8]) -> Metafile {
    Metafile {
        length: Some(buffer.len() as u64),
        hashes: Some(Hashes {
            sha256: Decoded::from(provider::digest(Digest::Sha256, buffer)),
            _extra: HashMap::new(),
        }),
        version,
        _extra: HashMap::new(),
    }
}
