//! `certconn fleet`: the instances sharing this instance's journal, through its API.

use std::path::Path;

use clap::Subcommand;
use hyper::Method;

use super::client_cmds::client;
use certconn::sources::api::fleet::FleetView;

#[derive(Debug, Subcommand)]
pub enum Fleet {
    /// List the instances: id, host, version, backends served, state, last report; warn when
    /// versions differ, an instance has gone quiet, or no instance serves a backend.
    List {
        /// Print the daemon's JSON answer (`GET /v1/fleet`).
        #[arg(long)]
        json: bool,
    },
    /// Forget a decommissioned instance (one still running reports itself again).
    Forget {
        /// The instance id, as `certconn fleet list` shows it.
        id: String,
    },
}

pub async fn run(config: &Path, what: Option<Fleet>) -> anyhow::Result<()> {
    let api = client(config)?;
    match what.unwrap_or(Fleet::List { json: false }) {
        Fleet::List { json } => {
            let answer = api.call(Method::GET, "/v1/fleet", None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&answer)?);
                return Ok(());
            }
            let fleet: FleetView = serde_json::from_value(answer)?;
            print!("{}", table(&fleet));
            for w in &fleet.warnings {
                eprintln!("warning: {w}");
            }
            Ok(())
        }
        Fleet::Forget { id } => {
            let path = format!(
                "/v1/fleet/{}",
                percent_encoding::utf8_percent_encode(&id, percent_encoding::NON_ALPHANUMERIC)
            );
            api.call(Method::DELETE, &path, None).await?;
            println!("instance {id} forgotten");
            Ok(())
        }
    }
}

/// The listing, one instance per line.
fn table(fleet: &FleetView) -> String {
    let mut rows = vec![[
        "INSTANCE".to_owned(),
        "HOST".into(),
        "VERSION".into(),
        "SERVES".into(),
        "STATE".into(),
        "SEEN".into(),
    ]];
    for i in &fleet.instances {
        let r = &i.instance;
        rows.push([
            if i.this {
                format!("{} (this)", r.id)
            } else {
                r.id.clone()
            },
            r.host.clone(),
            r.version.clone(),
            r.serves
                .as_ref()
                .map_or_else(|| "all".to_owned(), |s| s.join(",")),
            if r.health == "ok" || i.state != "up" {
                i.state.clone()
            } else {
                format!("{} ({})", i.state, r.health)
            },
            format!("{} s ago", i.last_seen_ms_ago / 1000),
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
