//! `certconn update`: the signed update feed as the running daemon sees it, through its API.

use std::path::Path;

use clap::Subcommand;
use hyper::Method;
use serde_json::Value;

use super::client_cmds::client;
use certconn::update::daemon::Install;
use certconn::update::feed::{directory_url, FeedSource};
use certconn::update::release::Kind;

#[derive(Debug, Subcommand)]
pub enum UpdateCmd {
    /// The feed's state, where the daemon and each plugin stand in their lifecycle, and what
    /// each plugin's policy did.
    Status {
        /// Print the daemon's JSON answer (`GET /v1/updates`).
        #[arg(long)]
        json: bool,
    },
    /// Read the feed now and act on it as the policies say.
    Check {
        /// Print the daemon's JSON answer (`POST /v1/updates/check`).
        #[arg(long)]
        json: bool,
    },
    /// Offline: install a daemon release from a copy of the feed (its `repository/`
    /// directory, brought on a medium), verified from the pinned root as the online feed is.
    /// It is staged and switched to; restart the service to run it (under `certconn launch`
    /// it must come up healthy in time or the previous version is put back).
    Apply {
        /// The copied feed repository (with metadata/ and targets/).
        bundle: std::path::PathBuf,
        /// The install directory (INSTALL/versions/VERSION/certconn, INSTALL/current).
        #[arg(long)]
        install_dir: std::path::PathBuf,
        /// The root to verify with; `[update] root` of the config when absent.
        #[arg(long)]
        root: Option<std::path::PathBuf>,
        /// The channel; `[update] channel` of the config, or `stable`.
        #[arg(long)]
        channel: Option<String>,
        /// Install exactly this version, even a lower one (a pin); the newest otherwise.
        #[arg(long)]
        version: Option<String>,
    },
    /// Offline: switch back to the previous daemon version; the one left is refused.
    Rollback {
        /// The install directory.
        #[arg(long)]
        install_dir: std::path::PathBuf,
    },
}

pub async fn run(config: &Path, what: UpdateCmd) -> anyhow::Result<()> {
    let what = match what {
        UpdateCmd::Apply {
            bundle,
            install_dir,
            root,
            channel,
            version,
        } => return apply(config, &bundle, &install_dir, root, channel, version).await,
        UpdateCmd::Rollback { install_dir } => {
            let (from, to) = Install::new(&install_dir).rollback()?;
            println!("switched from certconn {from} back to {to}; restart the service to run it");
            return Ok(());
        }
        other => other,
    };
    let api = client(config)?;
    let (answer, json) = match what {
        UpdateCmd::Status { json } => (api.call(Method::GET, "/v1/updates", None).await?, json),
        UpdateCmd::Check { json } => (
            api.call(Method::POST, "/v1/updates/check", None).await?,
            json,
        ),
        UpdateCmd::Apply { .. } | UpdateCmd::Rollback { .. } => unreachable!("handled above"),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        print!("{}", render(&answer));
    }
    Ok(())
}

fn render(status: &Value) -> String {
    let feed = &status["feed"];
    let mut out = format!(
        "feed {} (channel {}): {}\n",
        feed["url"].as_str().unwrap_or("?"),
        feed["channel"].as_str().unwrap_or("?"),
        match feed["error"].as_str() {
            Some(e) => format!("UNREACHABLE or refused — {e}; the running versions keep serving"),
            None if feed["verified_at_ms"].is_number() => "verified".to_owned(),
            None => "not read yet".to_owned(),
        }
    );
    for p in feed["problems"].as_array().into_iter().flatten() {
        out.push_str(&format!("  feed problem: {}\n", p.as_str().unwrap_or("?")));
    }
    for v in status["versions"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:<16} {:<12} policy {:<16} {}\n",
            v["name"].as_str().unwrap_or("?"),
            v["running"].as_str().unwrap_or("-"),
            v["policy"].as_str().unwrap_or("?"),
            v["lifecycle"]["summary"]
                .as_str()
                .unwrap_or("not in the feed"),
        ));
        if let Some(note) = v["note"].as_str() {
            out.push_str(&format!("{:<16} {note}\n", ""));
        }
    }
    for (plugin, line) in status["plugins"].as_object().into_iter().flatten() {
        if let Some(p) = line["probation"]["version"].as_str() {
            out.push_str(&format!("{plugin}: {p} on probation\n"));
        }
        for r in line["refused"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "{plugin}: {} refused: {}\n",
                r["version"].as_str().unwrap_or("?"),
                r["reason"].as_str().unwrap_or("?")
            ));
        }
    }
    out
}

async fn apply(
    config: &Path,
    bundle: &Path,
    install_dir: &Path,
    root: Option<std::path::PathBuf>,
    channel: Option<String>,
    version: Option<String>,
) -> anyhow::Result<()> {
    let update = match certconn::app::Config::load(config) {
        Ok(c) => c.update,
        Err(_) if root.is_some() => None,
        Err(e) => return Err(anyhow::anyhow!("{e}; or give --root")),
    };
    let root = root
        .or_else(|| update.as_ref().map(|u| u.root.to_path_buf()))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no root to verify with: give --root, or set [update] root in the config"
            )
        })?;
    let channel = channel
        .or_else(|| update.as_ref().map(|u| u.channel.clone()))
        .unwrap_or_else(|| "stable".into());
    let health = update.as_ref().map_or(120, |u| u.daemon_health_seconds);
    let install = Install::new(install_dir);
    let source = FeedSource {
        url: directory_url(bundle)?,
        root,
        datastore: install_dir.join("tuf"),
    };
    let transport = certconn::update::transport::FeedTransport::new(
        None,
        certconn::crypto::AlgorithmPolicy::default(),
        None,
        std::time::Duration::from_secs(300),
    );
    let verified = source.verify(transport).await?;
    let line = verified.line(Kind::Daemon, "certconn", &channel);
    let running = install.current();
    let wanted = match &version {
        Some(v) => line
            .iter()
            .find(|l| &l.release.version == v)
            .copied()
            .ok_or_else(|| {
                anyhow::anyhow!("the bundle has no certconn {v} in channel {channel:?}")
            })?,
        None => line.last().copied().ok_or_else(|| {
            anyhow::anyhow!("the bundle has no certconn release in channel {channel:?}")
        })?,
    };
    let v = &wanted.release.version;
    if let Some(r) = &running {
        let order = certconn_connector::compare_versions(v, r);
        if order.is_eq() {
            println!(
                "certconn {v} is already current in {}",
                install_dir.display()
            );
            return Ok(());
        }
        if order.is_lt() && version.is_none() {
            anyhow::bail!("the bundle's newest release, {v}, is lower than the current {r}: a lower version is installed only when named with --version");
        }
    }
    let bytes = verified.download(wanted, 1 << 30).await?;
    install.stage(v, &bytes)?;
    install.begin_trial(v, health)?;
    println!(
        "certconn {v} staged and switched to in {}; restart the service to run it: under `certconn launch` it must serve within {health} s, or {} is put back",
        install_dir.display(),
        running.as_deref().unwrap_or("the previous version")
    );
    Ok(())
}
