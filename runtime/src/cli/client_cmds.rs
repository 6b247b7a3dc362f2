//! `certconn submit`, `certconn jobs`, `certconn scep` and `certconn status`: clients of a
//! running daemon.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::Engine as _;
use clap::Subcommand;
use hyper::Method;
use serde_json::{json, Value};

use certconn::custody::KeyAlgorithm;
use certconn::jobs::model::RevocationReason;
use certconn::sources::api::client::{ApiClient, ClientError};
use certconn::sources::api::connections::ListenerConnections;

#[derive(Debug, Subcommand)]
pub enum Submit {
    /// Issue a certificate: the daemon makes the key, gets it certified, and returns a PFX.
    Issue {
        /// Profile that selects the backend and certificate contents.
        #[arg(long)]
        profile: String,
        /// Subject distinguished name, RFC 4514: comma-separated, the most significant part
        /// last, e.g. "CN=Alice,O=Example" (not OpenSSL's "/O=Example/CN=Alice"). With --csr it
        /// replaces the CSR's own subject.
        #[arg(long, default_value = "")]
        subject: String,
        /// Subject alternative name as kind:value (dns:, email:, upn:, uri:, ip:). Repeatable.
        #[arg(long = "san")]
        sans: Vec<String>,
        /// Device key type: ec-p256, ec-p384, rsa-2048, rsa-3072 or rsa-4096 (default: the
        /// profile's).
        #[arg(long)]
        key: Option<KeyAlgorithm>,
        /// Device certificate (PEM) to seal the PFX password for, as CMS EnvelopedData.
        #[arg(long)]
        recipient: Option<PathBuf>,
        /// A CSR (PEM) from a device that holds its own key; the result is a certificate, no PFX.
        #[arg(long)]
        csr: Option<PathBuf>,
        /// Days the certificate is valid, 1 to 3650 (default: the profile's, else the backend's).
        #[arg(long)]
        validity_days: Option<u32>,
        /// Serial (hex) of the certificate this one renews. certconn proves the renewal with
        /// that certificate's key (a SCEP RenewalReq), which it keeps only under a profile with
        /// keep_keys_for_renewal = true; the new certificate gets a new key.
        #[arg(long, conflicts_with = "csr")]
        renews: Option<String>,
        /// Where to write the PFX (or, with --csr, the certificate PEM). With --recipient the
        /// sealed password goes to FILE.password.cms.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Same key, same job: safe to repeat after a timeout.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Return once the job is accepted (prints its id).
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for the result.
        #[arg(long, default_value_t = 120)]
        timeout_seconds: u64,
    },
    /// Revoke a certificate by serial number.
    Revoke {
        /// Serial number, hexadecimal (colons and a 0x prefix are fine, as OpenSSL prints it).
        #[arg(long)]
        serial: String,
        /// Why (RFC 5280): unspecified, key-compromise, ca-compromise, affiliation-changed,
        /// superseded, cessation-of-operation, certificate-hold or privilege-withdrawn.
        #[arg(long, value_parser = parse_reason, default_value = "unspecified")]
        reason: RevocationReason,
        /// Backend to revoke at (default: the one that issued the serial).
        #[arg(long)]
        backend: Option<String>,
        /// Same key, same job: safe to repeat after a timeout.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Return once the job is accepted (prints its id).
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for the result.
        #[arg(long, default_value_t = 120)]
        timeout_seconds: u64,
    },
}

pub(super) fn parse_reason(s: &str) -> Result<RevocationReason, String> {
    serde_json::from_value(json!(s)).map_err(|_| {
        format!("unknown reason {s:?}: expected unspecified, key-compromise, ca-compromise, affiliation-changed, superseded, cessation-of-operation, certificate-hold or privilege-withdrawn")
    })
}

#[derive(Debug, Subcommand)]
pub enum Jobs {
    /// List jobs, newest first.
    List {
        /// Only jobs in this state.
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(
            certconn::journal::JobState::ALL.map(certconn::journal::JobState::as_str)
        ))]
        state: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Print the daemon's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Show one job: its state, attempts, backend, times, last error and a summary of its
    /// result (nothing is handed out: see `jobs result`).
    Show {
        /// The job's ID (as `submit` printed it).
        id: String,
        /// Print the daemon's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Fetch a finished job's result: the certificate or PFX (written to --out), the sealed
    /// password beside it, or the one-time password (shown once). For a job submitted earlier,
    /// or one whose `submit` was interrupted.
    Result {
        /// The job's ID (as `submit` printed it).
        id: String,
        /// Where to write the PFX (or, for a CSR job, the certificate chain PEM).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Queue a failed or dead job again (not an import: submit it again).
    Retry {
        /// The job's ID.
        id: String,
    },
}

pub(super) fn client(config_path: &Path) -> anyhow::Result<ApiClient> {
    super::api_client(&super::certconn_config(config_path)?)
}

pub(super) fn read_text(path: &Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading the {what} {}", path.display()))
}

pub async fn submit(config_path: &Path, what: Submit) -> anyhow::Result<()> {
    let api = client(config_path)?;
    match what {
        Submit::Issue {
            profile,
            subject,
            sans,
            key,
            recipient,
            csr,
            validity_days,
            renews,
            out,
            idempotency_key,
            no_wait,
            timeout_seconds,
        } => {
            let recipient_pem = recipient
                .as_deref()
                .map(|p| read_text(p, "recipient certificate"))
                .transpose()?;
            let csr_pem = csr.as_deref().map(|p| read_text(p, "CSR")).transpose()?;
            if let Some(path) = &out {
                check_out(path, recipient.is_some(), "nothing was submitted")?;
            }
            if let (Some(text), false) = (&csr_pem, subject.is_empty()) {
                let of_csr = certconn::pki::pem::decode_all(text)
                    .ok()
                    .and_then(|b| b.into_iter().next())
                    .and_then(|(_, der)| {
                        <x509_cert::request::CertReq as der::Decode>::from_der(&der).ok()
                    })
                    .map(|c| certconn::pki::dn::format(&c.info.subject))
                    .unwrap_or_else(|| "?".into());
                eprintln!(
                    "warning: --subject {subject:?} replaces the CSR's own subject {of_csr:?} in the certificate"
                );
            }
            let body = json!({
                "idempotency_key": idempotency_key,
                "profile": profile,
                "subject": subject,
                "sans": sans,
                "key": key,
                "recipient": recipient_pem,
                "csr": csr_pem,
                "validity_days": validity_days,
                "renews": renews,
            });
            let Some((id, result)) =
                submit_and_wait(&api, "/v1/jobs/issue", &body, no_wait, timeout_seconds).await?
            else {
                return Ok(());
            };
            write_issue_result(&id, &result, out.as_deref())
        }
        Submit::Revoke {
            serial,
            reason,
            backend,
            idempotency_key,
            no_wait,
            timeout_seconds,
        } => {
            let body = json!({ "idempotency_key": idempotency_key, "serial": serial, "reason": reason, "backend": backend });
            let Some((id, result)) =
                submit_and_wait(&api, "/v1/jobs/revoke", &body, no_wait, timeout_seconds).await?
            else {
                return Ok(());
            };
            let backend = result["job"]["backend"].as_str().unwrap_or("?");
            println!(
                "job {id}: revoked serial {} at backend {backend}",
                result["result"]["serial"].as_str().unwrap_or(&serial)
            );
            Ok(())
        }
    }
}

/// Submits, then (unless `no_wait`, which prints the job id) waits for the job's result.
async fn submit_and_wait(
    api: &ApiClient,
    path: &str,
    body: &Value,
    no_wait: bool,
    timeout_seconds: u64,
) -> anyhow::Result<Option<(String, Value)>> {
    let accepted = api.call(Method::POST, path, Some(body)).await?;
    let id = accepted["job"]["id"]
        .as_str()
        .map(String::from)
        .context("the daemon's answer has no job id")?;
    if no_wait {
        println!("{id}");
        return Ok(None);
    }
    let created = accepted["created"].as_bool() == Some(true);
    println!(
        "job {id}: {}; waiting for the result",
        if created {
            "accepted"
        } else {
            "already submitted with this idempotency key"
        }
    );
    let result = wait_for_result(api, &id, Duration::from_secs(timeout_seconds))
        .await
        .map_err(|e| match e.downcast_ref::<ClientError>() {
            Some(ClientError::Unreachable { .. }) => anyhow::anyhow!(
                "{e}\njob {id} is journaled and goes on when the daemon runs: fetch its result with `certconn jobs result {id} --out FILE`"
            ),
            _ => e,
        })?;
    Ok(Some((id, result)))
}

/// Polls until the job ends; returns its result, or an error with the job's reason. While it
/// waits, each new reason the job records for not being done yet (a drained backend, a retry
/// after a CA's refusal) is said on stderr as it appears, not only at the timeout.
async fn wait_for_result(api: &ApiClient, id: &str, timeout: Duration) -> anyhow::Result<Value> {
    let start = Instant::now();
    let mut delay = Duration::from_millis(20);
    let mut said: Option<String> = None;
    loop {
        let job = api
            .call(Method::GET, &format!("/v1/jobs/{id}"), None)
            .await?;
        let state = job["state"].as_str().unwrap_or("?");
        let reason = job["last_error"].as_str();
        match state {
            "succeeded" => return Ok(api.call(Method::GET, &format!("/v1/jobs/{id}/result"), None).await?),
            "failed" | "dead" => bail!(
                "job {id} {state}: {}",
                reason.unwrap_or("no reason recorded")
            ),
            _ if start.elapsed() > timeout => bail!(
                "job {id} is still {state} after {timeout:?}{}; it keeps running — see `certconn jobs show {id}`",
                reason.map(|r| format!(" ({r})")).unwrap_or_default()
            ),
            _ => {
                if let Some(r) = reason.filter(|r| said.as_deref() != Some(*r)) {
                    eprintln!("job {id}: {state}: {r}");
                    said = Some(r.to_owned());
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(500));
            }
        }
    }
}

fn write_issue_result(id: &str, answer: &Value, out: Option<&Path>) -> anyhow::Result<()> {
    let result = &answer["result"];
    let b64 = base64::engine::general_purpose::STANDARD;
    let serial = result["serial"].as_str().unwrap_or("?");
    println!(
        "job {id}: issued serial {serial} by backend {}",
        answer["job"]["backend"].as_str().unwrap_or("?")
    );
    match (result["pfx_base64"].as_str(), out) {
        (Some(pfx), Some(path)) => {
            let bytes = b64
                .decode(pfx)
                .context("the PFX in the answer is not base64")?;
            if let Err(e) = write_private(path, &bytes) {
                // The one-time password is not kept: shown now, it still opens the PFX the
                // job's result gives again.
                if let Some(password) = result["password"].as_str() {
                    println!("PFX password (shown once, not kept): {password}");
                }
                return Err(e.context(format!(
                    "the PFX was not written; fetch it again with `certconn jobs result {id} --out FILE`"
                )));
            }
            println!("PFX: {}", path.display());
            if let Some(sealed) = result["sealed_password_base64"].as_str() {
                let sealed_path = PathBuf::from(format!("{}.password.cms", path.display()));
                write_private(
                    &sealed_path,
                    &b64.decode(sealed)
                        .context("the sealed password is not base64")?,
                )?;
                println!(
                    "PFX password sealed for the recipient (CMS EnvelopedData): {}",
                    sealed_path.display()
                );
                println!("read it: openssl cms -decrypt -inform DER -in {} -recip DEVICE-CERT.pem -inkey DEVICE-KEY.pem", sealed_path.display());
            } else if let Some(password) = result["password"].as_str() {
                println!("PFX password (shown once, not kept): {password}");
                println!(
                    "read it: openssl pkcs12 -info -in {} -passin pass:{password} -noenc",
                    path.display()
                );
            } else {
                println!("the PFX password was already handed out and is not kept");
            }
        }
        (Some(_), None) => println!(
            "no --out given: the PFX was not written (the job's result keeps the certificate)"
        ),
        (None, Some(path)) => {
            let pem = format!(
                "{}{}",
                result["certificate_pem"].as_str().unwrap_or(""),
                result["chain_pem"].as_str().unwrap_or("")
            );
            std::fs::write(path, pem).with_context(|| format!("writing {}", path.display()))?;
            println!("certificate chain (PEM): {}", path.display());
        }
        (None, None) => print!("{}", result["certificate_pem"].as_str().unwrap_or("")),
    }
    Ok(())
}

/// A time the daemon gives in unix milliseconds, as people read it (UTC, RFC 3339).
fn when(ms: &Value) -> String {
    ms.as_i64()
        .map(certconn::report::rfc3339_ms)
        .unwrap_or_else(|| "-".into())
}

/// `jobs show`: one job, for a person.
fn print_job(job: &Value) {
    let field = |k: &str| job[k].as_str().unwrap_or("-").to_owned();
    println!("job        {}", field("id"));
    println!(
        "kind       {} (source {}, idempotency key {})",
        field("kind"),
        field("source"),
        field("idempotency_key")
    );
    println!(
        "state      {} after {} attempt(s)",
        field("state"),
        job["attempts"].as_u64().unwrap_or(0)
    );
    println!("backend    {}", field("backend"));
    println!("created    {}", when(&job["created_at"]));
    println!("updated    {}", when(&job["updated_at"]));
    if matches!(job["state"].as_str(), Some("queued" | "pending")) {
        println!("next run   {}", when(&job["next_run_at"]));
    }
    let request = &job["request"];
    for key in [
        "profile",
        "subject",
        "serial",
        "reason",
        "user_principal_name",
    ] {
        if let Some(v) = request[key].as_str().filter(|v| !v.is_empty()) {
            println!("{:<10} {v}", key.replace("user_principal_name", "user"));
        }
    }
    if let Some(sans) = request["sans"].as_array().filter(|s| !s.is_empty()) {
        let sans: Vec<&str> = sans.iter().filter_map(Value::as_str).collect();
        println!("sans       {}", sans.join(", "));
    }
    let result = &job["result"];
    if result.is_object() {
        if let Some(serial) = result["serial"].as_str() {
            println!("serial     {serial}");
        }
        if let Some(version) = result["backend_version"].as_str() {
            println!("served by  {version}");
        }
        if result["revoked"].as_bool() == Some(true) {
            println!("revoked    yes");
        }
        if result["pfx"].as_bool() == Some(true) {
            println!(
                "result     a PFX{}: `certconn jobs result {} --out FILE`",
                if result["password_sealed"].as_bool() == Some(true) {
                    ", its password sealed for the device"
                } else {
                    ""
                },
                field("id")
            );
        }
    }
    if let Some(e) = job["last_error"].as_str() {
        println!("last error {e}");
    }
}

/// The listed jobs the journal cannot read, after the table: each one's id, state and why.
fn print_unreadable(unreadable: &serde_json::Value) {
    let unreadable = unreadable.as_array().map(Vec::as_slice).unwrap_or_default();
    if unreadable.is_empty() {
        return;
    }
    println!(
        "\n{} listed job(s) cannot be read from the journal (the next lease fails a queued one):",
        unreadable.len()
    );
    for j in unreadable {
        println!(
            "{:<32}  {:<9}  {}",
            j["id"].as_str().unwrap_or(""),
            j["state"].as_str().unwrap_or(""),
            j["reason"].as_str().unwrap_or("")
        );
    }
}

/// Refuses an `--out` this process could not write, before anything is asked of the daemon: a
/// PFX's password is handed out once, so a result fetched and then not written would be lost.
/// With `sealed`, the sealed password goes beside it (`FILE.password.cms`), in the same
/// directory.
fn check_out(path: &Path, sealed: bool, so: &str) -> anyhow::Result<()> {
    let refused = |why: String| anyhow::anyhow!("--out {}: {why}; {so}", path.display());
    if path.is_dir() {
        return Err(refused("a directory, not a file".into()));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    certconn::files::check_writable_dir(dir).map_err(|e| {
        refused(format!(
            "this process cannot create files in {} ({e})",
            dir.display()
        ))
    })?;
    if sealed {
        let beside = PathBuf::from(format!("{}.password.cms", path.display()));
        if beside.is_dir() {
            return Err(refused(format!(
                "{} (where the sealed password goes) is a directory",
                beside.display()
            )));
        }
    }
    Ok(())
}

pub(super) fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))
}

pub async fn jobs(config_path: &Path, what: Jobs) -> anyhow::Result<()> {
    let api = client(config_path)?;
    match what {
        Jobs::List { state, limit, json } => {
            let mut path = format!("/v1/jobs?limit={limit}");
            if let Some(s) = state {
                path.push_str(&format!("&state={s}"));
            }
            let answer = api.call(Method::GET, &path, None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&answer)?);
                return Ok(());
            }
            println!(
                "{:<32}  {:<7}  {:<9}  {:>3}  {:<12}  LAST ERROR",
                "ID", "KIND", "STATE", "TRY", "BACKEND"
            );
            for j in answer["jobs"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                println!(
                    "{:<32}  {:<7}  {:<9}  {:>3}  {:<12}  {}",
                    j["id"].as_str().unwrap_or(""),
                    j["kind"].as_str().unwrap_or(""),
                    j["state"].as_str().unwrap_or(""),
                    j["attempts"].as_u64().unwrap_or(0),
                    j["backend"].as_str().unwrap_or("-"),
                    j["last_error"].as_str().unwrap_or("")
                );
            }
            print_unreadable(&answer["unreadable"]);
        }
        Jobs::Show { id, json } => {
            let job = api
                .call(Method::GET, &format!("/v1/jobs/{id}"), None)
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&job)?);
            } else {
                print_job(&job);
            }
        }
        Jobs::Result { id, out } => {
            if let Some(path) = &out {
                // Whether the job sealed its password for a device is known only from its
                // result: the sealed password's place beside the PFX is checked either way.
                check_out(
                    path,
                    true,
                    "the result was not fetched (a one-time password is handed out once)",
                )?;
            }
            let answer = api
                .call(Method::GET, &format!("/v1/jobs/{id}/result"), None)
                .await?;
            match answer["job"]["kind"].as_str() {
                Some("revoke") => println!(
                    "job {id}: revoked serial {} at backend {}",
                    answer["result"]["serial"].as_str().unwrap_or("?"),
                    answer["job"]["backend"].as_str().unwrap_or("?")
                ),
                _ => write_issue_result(&id, &answer, out.as_deref())?,
            }
        }
        Jobs::Retry { id } => {
            let job = api
                .call(Method::POST, &format!("/v1/jobs/{id}/retry"), None)
                .await?;
            println!(
                "job {} is {} again",
                job["id"].as_str().unwrap_or(&id),
                job["state"].as_str().unwrap_or("?")
            );
        }
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum Scep {
    /// Mint a one-time challenge password for one SCEP enrolment (printed once; only its hash is kept).
    Challenge {
        /// Print the daemon's JSON answer (the challenge and its expiry).
        #[arg(long)]
        json: bool,
    },
}

/// `certconn scep challenge`.
pub async fn scep(config_path: &Path, what: Scep) -> anyhow::Result<()> {
    let api = client(config_path)?;
    let Scep::Challenge { json } = what;
    let answer = api.call(Method::POST, "/v1/scep/challenges", None).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        println!("{}", answer["challenge"].as_str().unwrap_or_default());
    }
    Ok(())
}

/// `certconn status`: the daemon's health, job counts and FIPS state.
/// `certconn reload`: the daemon reads its config file again.
pub async fn reload(config_path: &Path) -> anyhow::Result<()> {
    let api = client(config_path)?;
    let answer = api.call(Method::POST, "/v1/reload", None).await?;
    let changed = &answer["changed"];
    let mut lines = Vec::new();
    for (key, what) in [
        ("backends_added", "backend added"),
        ("backends_changed", "backend changed"),
        ("backends_removed", "backend removed"),
        ("profiles_added", "profile added"),
        ("profiles_changed", "profile changed"),
        ("profiles_removed", "profile removed"),
    ] {
        for name in changed[key].as_array().into_iter().flatten() {
            lines.push(format!("{what}: {}", name.as_str().unwrap_or("?")));
        }
    }
    if lines.is_empty() {
        println!("reloaded: no backend or profile changed");
    } else {
        println!("reloaded:");
        for l in lines {
            println!("  {l}");
        }
    }
    Ok(())
}

pub async fn status(config_path: &Path, json: bool) -> anyhow::Result<()> {
    let api = client(config_path)?;
    let health = api.call(Method::GET, "/v1/health", None).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&health)?);
        return Ok(());
    }
    let fips = &health["fips"];
    let yes = |v: &Value| {
        if v.as_bool() == Some(true) {
            "yes"
        } else {
            "no"
        }
    };
    println!(
        "certconn {}: {}",
        health["version"].as_str().unwrap_or("?"),
        health["status"].as_str().unwrap_or("?")
    );
    println!("backends: {}", health["backends"]);
    let listeners: Vec<ListenerConnections> =
        serde_json::from_value(health["connections"].clone()).unwrap_or_default();
    for l in listeners {
        println!("{}{l}", if l.at_limit { "warning: " } else { "" });
    }
    let journal = &health["journal"];
    if journal["reachable"].as_bool() == Some(false) {
        println!(
            "error: journal {} unreachable: {}; work waits (nothing is lost) until it is back",
            journal["location"].as_str().unwrap_or("?"),
            journal["error"].as_str().unwrap_or("?")
        );
    }
    let updates = &health["updates"];
    if updates.is_object() {
        match updates["error"].as_str() {
            Some(e) => println!("warning: update feed: {e}; the running versions keep serving"),
            None => println!("update feed: {}", updates["feed"].as_str().unwrap_or("?")),
        }
        for v in updates["versions"].as_array().into_iter().flatten() {
            let Some(summary) = v["summary"].as_str() else {
                continue;
            };
            let level = match v["stage"].as_str() {
                Some("deprecated") => "warning: ",
                Some("unsupported") => "error: ",
                _ => "",
            };
            println!("{level}{}: {summary}", v["name"].as_str().unwrap_or("?"));
        }
    }
    let upstream = &health["upstream"];
    if upstream.is_object() {
        println!(
            "upstream {}: {}, {}; {} received, {} results sent, {} refused",
            upstream["service"].as_str().unwrap_or("?"),
            if upstream["connected"].as_bool() == Some(true) {
                "connected"
            } else {
                "not connected"
            },
            // Until the first long poll returns, none is answered; it is not "never polled".
            upstream["last_poll"]
                .as_str()
                .map_or("no poll answered yet".to_owned(), |t| format!(
                    "last poll answered {t}"
                )),
            upstream["received"],
            upstream["delivered"],
            upstream["refused"]
        );
        let backlog = &upstream["backlog"];
        if backlog.is_object() {
            println!(
                "upstream backlog: {} jobs unfinished, {} results to send",
                backlog["unfinished"], backlog["owed"]
            );
        }
        if let Some(e) = upstream["last_error"].as_str() {
            println!("upstream: last error: {e}");
        }
        if let Some(e) = upstream["heartbeat_error"].as_str() {
            println!("upstream: heartbeat: {e}");
        }
        let lifecycle = &upstream["lifecycle"];
        if let Some(summary) = lifecycle["summary"].as_str() {
            let level = match lifecycle["stage"].as_str() {
                Some("deprecated") => "warning: ",
                Some("unsupported") => "error: ",
                _ => "",
            };
            println!("{level}version: {summary}");
        }
        let identity = &upstream["identity"];
        if identity.is_object() {
            let id = identity["connector_id"].as_str().unwrap_or("?");
            let serial = identity["serial"].as_str().unwrap_or("?");
            match identity["state"].as_str() {
                Some("re-register") => println!(
                    "error: upstream identity {id} (serial {serial}): re-register: {}; stop the daemon and run `certconn upstream register --token-file FILE` with a new enrolment token",
                    identity["reason"].as_str().unwrap_or("refused")
                ),
                _ => println!(
                    "upstream identity {id}: serial {serial}, valid until {}, renews at {}",
                    identity["not_after"].as_str().unwrap_or("?"),
                    identity["renew_at"].as_str().unwrap_or("?")
                ),
            }
        }
        if let Some(e) = upstream["identity_error"].as_str() {
            println!("upstream: identity renewal: {e}");
        }
    }
    let intune = &health["intune_revocation"];
    if intune.is_object() {
        println!(
            "intune revocation requests: {}, last poll {}; {} received, {} results sent",
            if intune["connected"].as_bool() == Some(true) {
                "connected"
            } else {
                "not connected"
            },
            intune["last_poll"].as_str().unwrap_or("never"),
            intune["received"],
            intune["delivered"]
        );
        let backlog = &intune["backlog"];
        if backlog.is_object() {
            println!(
                "intune backlog: {} jobs unfinished, {} results to send",
                backlog["unfinished"], backlog["owed"]
            );
        }
        if let Some(e) = intune["last_error"].as_str() {
            println!("intune: last error: {e}");
        }
    }
    let jobs: Vec<String> = health["jobs"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{k} {v}")).collect())
        .unwrap_or_default();
    println!(
        "jobs: {}",
        if jobs.is_empty() {
            "none".into()
        } else {
            jobs.join(", ")
        }
    );
    for ca in health["revocation"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        println!(
            "CA {}: CRL #{} ({} revoked) until {}, OCSP {}{}",
            ca["name"].as_str().unwrap_or("?"),
            ca["crl_number"],
            ca["revoked"],
            ca["next_update"].as_str().unwrap_or("?"),
            ca["ocsp"].as_str().unwrap_or("?"),
            ca["responder_not_after"]
                .as_str()
                .map(|t| format!(" (responder certificate until {t})"))
                .unwrap_or_default()
        );
        if let Some(error) = ca["publishing_error"].as_str() {
            println!("  publishing fails, the CRL above stays served until then: {error}");
        }
    }
    let ra = &health["scep_ra"];
    if ra.is_object() {
        println!(
            "SCEP RA: certificate #{} until {}; {}",
            ra["generation"],
            ra["not_after"].as_str().unwrap_or("?"),
            if ra["next_announced"].as_bool() == Some(true) {
                format!(
                    "the next one is announced and takes over at {}",
                    ra["switch_at"].as_str().unwrap_or("?")
                )
            } else {
                format!(
                    "the next one is made at {}",
                    ra["next_at"].as_str().unwrap_or("?")
                )
            }
        );
        if let Some(w) = ra["warning"].as_str() {
            println!("warning: SCEP RA: {w}");
        }
    }
    println!(
        "FIPS: policy {}, module built {}, active {}, self-test {}",
        if fips["policy"].as_bool() == Some(true) {
            "on"
        } else {
            "off"
        },
        yes(&fips["module_built"]),
        yes(&fips["module_active"]),
        match fips["self_test_passed"].as_bool() {
            Some(true) => "passed",
            Some(false) => "FAILED",
            None => "n/a",
        }
    );
    Ok(())
}
