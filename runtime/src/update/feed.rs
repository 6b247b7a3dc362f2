//! The feed as a client reads it: the TUF repository at `[update] url`, verified from the root
//! pinned in config (root rotations followed, thresholds, expiry, snapshot and timestamp
//! consistency, rollback of versions — all TUF's rules, by `tough`), then read as a list of
//! [`Listed`] releases. Daemon releases are taken only from the top-level targets role and
//! plugin releases only from the delegated `plugins` role, so a plugin publisher's key can
//! never ship a daemon binary. A release whose metadata does not match its path is left out
//! and named in `problems`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use tough::{Limits, Repository, RepositoryLoader, TargetName};
use url::Url;

use super::release::{
    Kind, Listed, Release, CUSTOM_KEY, DAEMON_PREFIX, PLUGINS_ROLE, PLUGIN_PREFIX,
};
use super::transport::FeedTransport;

/// Why the feed could not be read or a release fetched. The running versions keep serving.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FeedError {
    #[error("the pinned root {path}: {reason}")]
    Root { path: PathBuf, reason: String },
    #[error("the update feed at {url} was refused: {reason}")]
    Refused { url: String, reason: String },
    #[error("{target} from the update feed was refused: {reason}")]
    Target { target: String, reason: String },
    #[error("{0}")]
    Local(String),
}

/// Where the feed is and how far to trust it.
#[derive(Debug, Clone)]
pub struct FeedSource {
    /// The repository's base: metadata under `metadata/`, targets under `targets/`.
    pub url: Url,
    /// The root of trust (a `N.root.json` from the feed, copied out of band).
    pub root: PathBuf,
    /// Where the last verified metadata is kept, so that an older feed is refused.
    pub datastore: PathBuf,
}

/// A verified feed.
pub struct Verified {
    repository: Repository,
    pub releases: Vec<Listed>,
    /// Targets left out, and why.
    pub problems: Vec<String>,
}

impl std::fmt::Debug for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verified")
            .field("releases", &self.releases)
            .finish_non_exhaustive()
    }
}

/// The repository base of a directory holding a copied feed (`certconn update apply DIR`).
pub fn directory_url(dir: &Path) -> Result<Url, FeedError> {
    let dir = std::fs::canonicalize(dir)
        .map_err(|e| FeedError::Local(format!("{}: {e}", dir.display())))?;
    Url::from_directory_path(&dir)
        .map_err(|()| FeedError::Local(format!("{}: not an absolute directory", dir.display())))
}

fn join(base: &Url, path: &str) -> Result<Url, FeedError> {
    let mut base = base.clone();
    if !base.path().ends_with('/') {
        base.set_path(&format!("{}/", base.path()));
    }
    base.join(path)
        .map_err(|e| FeedError::Local(format!("{base}{path}: {e}")))
}

impl FeedSource {
    /// Fetches and verifies the feed's metadata.
    pub async fn verify(&self, transport: FeedTransport) -> Result<Verified, FeedError> {
        let root = std::fs::read(&self.root).map_err(|e| FeedError::Root {
            path: self.root.clone(),
            reason: e.to_string(),
        })?;
        std::fs::create_dir_all(&self.datastore)
            .map_err(|e| FeedError::Local(format!("{}: {e}", self.datastore.display())))?;
        let refused = |e: tough::error::Error| FeedError::Refused {
            url: self.url.to_string(),
            reason: crate::report::chain(&e),
        };
        let repository = RepositoryLoader::new(
            &root,
            join(&self.url, "metadata/")?,
            join(&self.url, "targets/")?,
        )
        .transport(transport)
        .datastore(&self.datastore)
        .limits(Limits::default())
        .load()
        .await
        .map_err(refused)?;
        let (releases, problems) = list(&repository);
        Ok(Verified {
            repository,
            releases,
            problems,
        })
    }
}

/// The releases in the verified metadata, each from the role allowed to sign it.
fn list(repository: &Repository) -> (Vec<Listed>, Vec<String>) {
    let mut releases = Vec::new();
    let mut problems = Vec::new();
    let top = &repository.targets().signed;
    let mut candidates: Vec<(Kind, &TargetName, &tough::schema::Target)> = top
        .targets
        .iter()
        .filter(|(name, _)| name.resolved().starts_with(DAEMON_PREFIX))
        .map(|(n, t)| (Kind::Daemon, n, t))
        .collect();
    match top.delegated_targets(PLUGINS_ROLE) {
        Ok(role) => {
            for (name, target) in &role.signed.targets {
                if name.resolved().starts_with(PLUGIN_PREFIX) {
                    candidates.push((Kind::Plugin, name, target));
                } else {
                    problems.push(format!(
                        "{}: signed by the {PLUGINS_ROLE:?} role outside {PLUGIN_PREFIX}: ignored (a plugin publisher cannot ship a daemon)",
                        name.resolved()
                    ));
                }
            }
        }
        Err(_) => problems.push(format!(
            "the feed has no {PLUGINS_ROLE:?} role: no plugin updates"
        )),
    }
    for (kind, name, target) in candidates {
        let path = name.resolved();
        let release: Release = match target
            .custom
            .get(CUSTOM_KEY)
            .map(|v| serde_json::from_value(v.clone()))
        {
            Some(Ok(r)) => r,
            Some(Err(e)) => {
                problems.push(format!(
                    "{path}: its custom.{CUSTOM_KEY} is not a release: {e}"
                ));
                continue;
            }
            None => {
                problems.push(format!(
                    "{path}: no custom.{CUSTOM_KEY}: not a certconn release"
                ));
                continue;
            }
        };
        if let Err(e) = release.check() {
            problems.push(format!("{path}: {e}"));
            continue;
        }
        // A release is what its path says it is: a plugin named "x" cannot claim "y", nor a
        // plugin target a daemon release.
        if release.kind != kind || release.target_path() != path {
            if release.kind == Kind::Daemon && kind == Kind::Daemon {
                // Another architecture's binary: not ours, not a problem.
                if path.starts_with(&format!("{DAEMON_PREFIX}{}/", release.version)) {
                    continue;
                }
            }
            problems.push(format!(
                "{path}: its metadata names {} {} {}, which is published at {}",
                release.kind.as_str(),
                release.name,
                release.version,
                release.target_path()
            ));
            continue;
        }
        releases.push(Listed {
            release,
            target: path.to_owned(),
            length: target.length,
            sha256: hex::encode(target.hashes.sha256.as_ref()),
        });
    }
    (releases, problems)
}

impl Verified {
    /// Downloads `listed` and returns its bytes, checked against the signed length and hash.
    /// No byte is returned unless all are right.
    pub async fn download(&self, listed: &Listed, max_bytes: u64) -> Result<Vec<u8>, FeedError> {
        let refused = |reason: String| FeedError::Target {
            target: listed.target.clone(),
            reason,
        };
        if listed.length > max_bytes {
            return Err(refused(format!(
                "{} bytes is more than the {max_bytes}-byte limit (update.max_download_bytes)",
                listed.length
            )));
        }
        let name = TargetName::new(&listed.target).map_err(|e| refused(e.to_string()))?;
        let mut stream = self
            .repository
            .read_target(&name)
            .await
            .map_err(|e| refused(crate::report::chain(&e)))?
            .ok_or_else(|| refused("not in the feed".into()))?;
        let mut bytes = Vec::with_capacity(usize::try_from(listed.length).unwrap_or(0));
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| refused(crate::report::chain(&e)))?;
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    }

    /// The releases of one line in `channel`, oldest first.
    pub fn line(&self, kind: Kind, name: &str, channel: &str) -> Vec<&Listed> {
        let mut line: Vec<&Listed> = self
            .releases
            .iter()
            .filter(|l| {
                l.release.kind == kind && l.release.name == name && l.release.channel == channel
            })
            .collect();
        line.sort_by(|a, b| {
            certconn_connector::compare_versions(&a.release.version, &b.release.version)
        });
        line
    }
}

/// The default time allowed for one file of the feed.
pub const DEFAULT_FETCH_SECONDS: u64 = 300;

/// `Duration` of `update.fetch_timeout_seconds`.
pub fn fetch_deadline(seconds: u64) -> Duration {
    Duration::from_secs(seconds.max(1))
}
