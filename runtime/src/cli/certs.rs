//! `certconn certs`: the ledger — what certconn issued and revoked — from the running daemon.

use std::path::Path;

use clap::Subcommand;
use hyper::Method;
use serde_json::{json, Value};

use super::client_cmds::client;
use certconn::jobs::model::RevocationReason;

#[derive(Debug, Subcommand)]
pub enum Certs {
    /// List issued certificates, soonest expiry first.
    List {
        /// Only revoked certificates.
        #[arg(long)]
        revoked: bool,
        /// Only certificates not revoked that expire within this many days.
        #[arg(long, value_name = "DAYS")]
        expiring: Option<u32>,
        /// Only certificates this backend issued.
        #[arg(long)]
        backend: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Print the daemon's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Show one certificate: subject, SANs, issuer, validity, backend and plugin version, the
    /// job that issued it, and its revocation with reason and time.
    Show {
        /// The serial number in hex (colons and a 0x prefix are fine).
        serial: String,
        /// Print the daemon's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Change the reason of a revoked certificate (for example to key-compromise). Recorded
    /// with who did it (`certs changes`); the next CRL carries the new reason.
    SetReason {
        /// The serial number in hex.
        serial: String,
        /// The new reason: unspecified, key-compromise, ca-compromise, affiliation-changed,
        /// superseded, cessation-of-operation, certificate-hold, privilege-withdrawn.
        #[arg(value_parser = super::client_cmds::parse_reason)]
        reason: RevocationReason,
    },
    /// The recorded changes of revocation reasons, newest first.
    Changes {
        /// Print the daemon's JSON answer.
        #[arg(long)]
        json: bool,
    },
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

fn print_certificate(c: &Value) {
    println!("serial:       {}", text(&c["serial"]));
    println!("subject:      {}", text(&c["subject"]));
    let sans: Vec<&str> = c["subject_alt_names"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    println!(
        "alt names:    {}",
        if sans.is_empty() {
            "-".into()
        } else {
            sans.join(", ")
        }
    );
    println!("issuer:       {}", text(&c["issuer"]));
    println!(
        "valid:        {} to {}",
        text(&c["not_before"]),
        text(&c["not_after"])
    );
    println!(
        "backend:      {} (plugin {})",
        text(&c["backend"]),
        text(&c["plugin_version"])
    );
    println!("job:          {}", text(&c["job"]));
    match c["revoked"].as_object() {
        Some(r) => println!(
            "revoked:      {} ({})",
            r.get("at").map_or("-", text),
            r.get("reason").map_or("-", text)
        ),
        None => println!("revoked:      no"),
    }
}

/// `certconn certs …`.
pub async fn certs(config_path: &Path, what: Certs) -> anyhow::Result<()> {
    let api = client(config_path)?;
    match what {
        Certs::List {
            revoked,
            expiring,
            backend,
            limit,
            json,
        } => {
            let mut path = format!("/v1/certificates?limit={limit}");
            if revoked {
                path.push_str("&revoked=true");
            }
            if let Some(d) = expiring {
                path.push_str(&format!("&expiring_days={d}"));
            }
            if let Some(b) = backend {
                path.push_str(&format!("&backend={b}"));
            }
            let answer = api.call(Method::GET, &path, None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&answer)?);
                return Ok(());
            }
            println!(
                "{:<40}  {:<20}  {:<12}  {:<22}  SUBJECT",
                "SERIAL", "NOT AFTER", "BACKEND", "REVOKED"
            );
            for c in answer["certificates"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                let revoked = c["revoked"]["reason"].as_str().unwrap_or("");
                println!(
                    "{:<40}  {:<20}  {:<12}  {:<22}  {}",
                    text(&c["serial"]),
                    text(&c["not_after"]),
                    text(&c["backend"]),
                    revoked,
                    text(&c["subject"])
                );
            }
        }
        Certs::Show { serial, json } => {
            let c = api
                .call(Method::GET, &format!("/v1/certificates/{serial}"), None)
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&c)?);
            } else {
                print_certificate(&c);
            }
        }
        Certs::SetReason { serial, reason } => {
            let by = std::env::var("SUDO_USER")
                .or_else(|_| std::env::var("USER"))
                .unwrap_or_else(|_| "cli".into());
            let c = api
                .call(
                    Method::POST,
                    &format!("/v1/certificates/{serial}/reason"),
                    Some(&json!({ "reason": reason, "changed_by": by })),
                )
                .await?;
            println!(
                "certificate {}: reason is now {} (recorded as changed by {by})",
                text(&c["serial"]),
                text(&c["revoked"]["reason"])
            );
        }
        Certs::Changes { json } => {
            let answer = api
                .call(Method::GET, "/v1/certificates/reason-changes", None)
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&answer)?);
                return Ok(());
            }
            println!(
                "{:<20}  {:<40}  {:<22}  {:<22}  BY",
                "AT", "SERIAL", "FROM", "TO"
            );
            for c in answer["changes"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                println!(
                    "{:<20}  {:<40}  {:<22}  {:<22}  {}",
                    text(&c["at"]),
                    text(&c["serial"]),
                    text(&c["from"]),
                    text(&c["to"]),
                    text(&c["by"])
                );
            }
        }
    }
    Ok(())
}
