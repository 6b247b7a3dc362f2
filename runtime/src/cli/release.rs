//! `certconn release`: publishing the signed update feed, for a release engineer. Offline: it
//! reads and writes a feed workspace and its key directory, nothing else.

use std::path::PathBuf;

use clap::Subcommand;

use certconn::update::publish::{RoleShape, Shape, Workspace};
use certconn::update::release::{Kind, Release, DEFAULT_SUPPORT_DAYS};

#[derive(Debug, Subcommand)]
pub enum ReleaseCmd {
    /// Create a feed workspace: ECDSA P-256 keys for every role (root, targets, snapshot,
    /// timestamp, and the delegated plugins role) and the first root, which clients pin.
    Init {
        /// The feed workspace (feed.toml, files/, repository/).
        dir: PathBuf,
        /// Where the signing keys are written (mode 0600); keep the root keys offline.
        #[arg(long)]
        keys: PathBuf,
        /// How many root keys to make.
        #[arg(long, default_value_t = 1)]
        root_keys: u32,
        /// How many root keys must sign a new root.
        #[arg(long, default_value_t = 1)]
        root_threshold: u32,
        /// How many timestamp keys to make.
        #[arg(long, default_value_t = 1)]
        timestamp_keys: u32,
        /// How many timestamp keys must sign each timestamp.
        #[arg(long, default_value_t = 1)]
        timestamp_threshold: u32,
    },
    /// Add a release to the workspace (served once published).
    Add {
        /// The feed workspace.
        dir: PathBuf,
        /// `daemon` (a certconn binary) or `plugin` (a plugin package).
        #[arg(long, value_parser = ["daemon", "plugin"])]
        kind: String,
        /// The plugin's name (`certconn` for the daemon).
        #[arg(long, default_value = "certconn")]
        name: String,
        /// The release's version (semver).
        #[arg(long)]
        version: String,
        /// The channel it is released on (`stable`, `preview`, …).
        #[arg(long, default_value = "stable")]
        channel: String,
        /// The release date (YYYY-MM-DD, UTC); today when absent.
        #[arg(long)]
        released: Option<String>,
        /// The file released.
        file: PathBuf,
    },
    /// Sign the workspace's releases into `repository/` with a new metadata version. Serve
    /// that directory as it is (metadata/ and targets/).
    Publish {
        /// The feed workspace.
        dir: PathBuf,
        /// The signing keys' directory.
        #[arg(long)]
        keys: PathBuf,
    },
    /// Write a copy of a certconn binary that reports VERSION (`certconn --version`, health,
    /// the fleet), without a rebuild: for a release candidate, or a build republished.
    Stamp {
        /// The certconn binary.
        input: PathBuf,
        /// Where the stamped copy is written (mode 0755).
        output: PathBuf,
        /// The version it reports.
        #[arg(long)]
        version: String,
    },
    /// Replace the root key: a new root, signed by the old key and the new, that clients
    /// follow from the root they pin.
    RotateRoot {
        /// The feed workspace.
        dir: PathBuf,
        /// The signing keys' directory (the old root key is kept as `root-1.pem.retired`).
        #[arg(long)]
        keys: PathBuf,
    },
}

pub async fn run(what: ReleaseCmd) -> anyhow::Result<()> {
    match what {
        ReleaseCmd::Init {
            dir,
            keys,
            root_keys,
            root_threshold,
            timestamp_keys,
            timestamp_threshold,
        } => {
            let shape = Shape {
                root: RoleShape {
                    keys: root_keys,
                    threshold: root_threshold,
                },
                timestamp: RoleShape {
                    keys: timestamp_keys,
                    threshold: timestamp_threshold,
                },
                ..Shape::default()
            };
            let root = Workspace::new(&dir, &keys).init(shape).await?;
            println!(
                "feed workspace {} created; keys in {}",
                dir.display(),
                keys.display()
            );
            println!(
                "pin this root in each certconn's [update] root: {}",
                root.display()
            );
            Ok(())
        }
        ReleaseCmd::Add {
            dir,
            kind,
            name,
            version,
            channel,
            released,
            file,
        } => {
            let kind = if kind == "daemon" {
                Kind::Daemon
            } else {
                Kind::Plugin
            };
            let release = Release {
                kind,
                name,
                version,
                channel,
                released: released.unwrap_or_else(|| {
                    certconn::lifecycle::date_of_day(certconn::lifecycle::today())
                }),
                support_days: DEFAULT_SUPPORT_DAYS,
            };
            let bytes =
                std::fs::read(&file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            release.check_file(&file, &bytes).map_err(|why| {
                anyhow::anyhow!(
                    "{}: {why}; not added to the feed (every certconn would refuse it as {} {} {})",
                    file.display(),
                    release.kind.as_str(),
                    release.name,
                    release.version
                )
            })?;
            Workspace::new(&dir, PathBuf::new()).add(&release, &bytes)?;
            println!(
                "{} {} {} ({}, released {}) added; `certconn release publish` serves it",
                release.kind.as_str(),
                release.name,
                release.version,
                release.channel,
                release.released
            );
            Ok(())
        }
        ReleaseCmd::Publish { dir, keys } => {
            let ws = Workspace::new(&dir, &keys);
            let version = ws.publish().await?;
            println!(
                "published metadata version {version} in {}",
                ws.repository().display()
            );
            Ok(())
        }
        ReleaseCmd::Stamp {
            input,
            output,
            version,
        } => {
            let bytes =
                std::fs::read(&input).map_err(|e| anyhow::anyhow!("{}: {e}", input.display()))?;
            let stamped = certconn::version::stamp(&bytes, &version)
                .map_err(|e| anyhow::anyhow!("{}: {e}", input.display()))?;
            certconn::files::write_atomic(&output, &stamped, 0o755)
                .map_err(|e| anyhow::anyhow!("{}: {e}", output.display()))?;
            println!("{} reports certconn {version}", output.display());
            Ok(())
        }
        ReleaseCmd::RotateRoot { dir, keys } => {
            let root = Workspace::new(&dir, &keys).rotate_root().await?;
            println!(
                "new root {}; publish again so that clients see it (they follow it from the root they pin)",
                root.display()
            );
            Ok(())
        }
    }
}
