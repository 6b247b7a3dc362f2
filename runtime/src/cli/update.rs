//! `certconn update`: the signed update feed as the running daemon sees it, through its API.

use std::path::Path;

use clap::Subcommand;
use hyper::Method;
use serde_json::Value;

use super::client_cmds::client;

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
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(config: &Path, what: UpdateCmd) -> anyhow::Result<()> {
    let api = client(config)?;
    let (answer, json) = match what {
        UpdateCmd::Status { json } => (api.call(Method::GET, "/v1/updates", None).await?, json),
        UpdateCmd::Check { json } => (
            api.call(Method::POST, "/v1/updates/check", None).await?,
            json,
        ),
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
