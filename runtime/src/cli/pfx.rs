//! `certconn pfx`: imported PFX files (S/MIME) — the admin's side of the import format, and
//! bulk submission to a running daemon.
//!
//! The format is the one Microsoft's PFX import tooling produces: the PFX unchanged, its
//! password encrypted to the connector's RSA key with OAEP (SHA-512 unless told otherwise), the
//! key's name and the padding's name beside it.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::Engine as _;
use clap::Subcommand;
use hyper::Method;
use serde_json::json;
use zeroize::Zeroizing;

use super::client_cmds::{client, read_text, write_private};
use certconn::crypto::provider;
use certconn::jobs::model::{ImportPurpose, PasswordPadding};
use certconn::pki::pem;
use certconn::sources::api::client::ApiClient;

#[derive(Debug, Subcommand)]
pub enum Pfx {
    /// Encrypt a PFX password to a connector key (RSA-OAEP) and print it as JSON:
    /// {"key_name", "padding_scheme", "encrypted_password"} — what an import job carries.
    EncryptPassword {
        /// The custody key's name, recorded beside the ciphertext.
        #[arg(long)]
        key_name: String,
        /// The key's public half (PEM, from `certconn keys export-public NAME`). Without it the
        /// running daemon is asked for it.
        #[arg(long)]
        public_key: Option<PathBuf>,
        /// oaepSha512, oaepSha384 or oaepSha256.
        #[arg(long, default_value = "oaepSha512")]
        padding: PasswordPadding,
        #[command(flatten)]
        password: PasswordSource,
    },
    /// Submit PFX files for delivery to a user's devices, with a progress bar, and wait for the
    /// decisions. Each file becomes one import job; the summary names every refusal.
    Import {
        /// PFX files (all opened with the same password).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The user principal name the certificates belong to.
        #[arg(long)]
        user: String,
        /// smimeEncryption, smimeSigning or unassigned.
        #[arg(long)]
        purpose: ImportPurpose,
        /// The device certificate (PEM) the PFX password is sealed for.
        #[arg(long)]
        recipient: PathBuf,
        /// The custody key the password is encrypted to.
        #[arg(long, default_value = "pfx-password")]
        key_name: String,
        /// oaepSha512, oaepSha384 or oaepSha256.
        #[arg(long, default_value = "oaepSha512")]
        padding: PasswordPadding,
        /// The profile whose backend decides (a pfx-import instance).
        #[arg(long, default_value = certconn::sources::api::server::DEFAULT_IMPORT_PROFILE)]
        profile: String,
        #[command(flatten)]
        password: PasswordSource,
        /// Write each delivered file's sealed password here, as NAME.password.cms.
        #[arg(long)]
        out_dir: Option<PathBuf>,
        /// Return once every job is accepted.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for all decisions.
        #[arg(long, default_value_t = 300)]
        timeout_seconds: u64,
        /// Names this attempt: the same key (with the same file) returns the job it made before.
        /// Without it, a file is the same job for the same user, purpose, device and password,
        /// so a rerun after a timeout is safe and a rerun with a corrected password is a new
        /// attempt.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
}

/// Where the PFX password comes from: never the command line (it would be in `ps` and history).
#[derive(Debug, clap::Args)]
pub struct PasswordSource {
    /// Environment variable holding the PFX password.
    #[arg(long, default_value = "CERTCONN_PFX_PASSWORD")]
    password_env: String,
    /// Read the password from the first line of standard input instead.
    #[arg(long)]
    password_stdin: bool,
}

impl PasswordSource {
    fn read(&self) -> anyhow::Result<Zeroizing<String>> {
        let password = if self.password_stdin {
            // Room for any sane password, so that the line is not reallocated while it is read
            // (a grown string frees its smaller copies unzeroized).
            let mut line = Zeroizing::new(String::with_capacity(1024));
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("reading the password from standard input")?;
            Zeroizing::new(line.trim_end_matches(['\r', '\n']).to_owned())
        } else {
            password_from_env(&self.password_env, "--password-stdin")?
        };
        if password.is_empty() {
            bail!("the PFX password is empty");
        }
        Ok(password)
    }
}

/// A PFX password from environment variable `var`; unset is an error that names it, and the
/// other way to give it (`instead`), rather than an empty password that then fails as "wrong
/// password". Set but empty is an empty password.
pub(super) fn password_from_env(var: &str, instead: &str) -> anyhow::Result<Zeroizing<String>> {
    match certconn::secret::env_var(var) {
        Ok(password) => Ok(password),
        Err(std::env::VarError::NotPresent) => bail!(
            "the PFX password is read from the environment variable {var}, which is not set \
             (or use {instead})"
        ),
        Err(std::env::VarError::NotUnicode(_)) => {
            bail!("the environment variable {var} is not UTF-8 text")
        }
    }
}

/// The public key of custody key `name`, from a PEM file or the daemon.
pub(super) async fn public_key(
    config_path: &Path,
    name: &str,
    file: Option<&Path>,
) -> anyhow::Result<Vec<u8>> {
    let text = match file {
        Some(path) => read_text(path, "public key")?,
        None => {
            let api = client(config_path)?;
            let answer = api
                .call(
                    Method::GET,
                    &format!(
                        "/v1/keys/{}",
                        percent_encoding::utf8_percent_encode(
                            name,
                            percent_encoding::NON_ALPHANUMERIC
                        )
                    ),
                    None,
                )
                .await
                .with_context(|| format!("asking the daemon for key {name:?}"))?;
            answer["public_key_pem"]
                .as_str()
                .context("the daemon's answer has no public_key_pem")?
                .to_owned()
        }
    };
    let blocks = pem::decode_all(&text).map_err(anyhow::Error::msg)?;
    match blocks.into_iter().next() {
        Some((label, der)) if label == "PUBLIC KEY" => Ok(der),
        Some((label, _)) => bail!("expected a PUBLIC KEY block, found {label}"),
        None => bail!("no PEM block in the public key"),
    }
}

fn encrypt(spki: &[u8], padding: PasswordPadding, password: &str) -> anyhow::Result<String> {
    let ct = provider::rsa_encrypt(spki, padding.padding(), password.as_bytes())
        .context("encrypting the password (the key must be RSA)")?;
    Ok(base64::engine::general_purpose::STANDARD.encode(ct))
}

pub async fn run(config_path: &Path, what: Pfx) -> anyhow::Result<()> {
    match what {
        Pfx::EncryptPassword {
            key_name,
            public_key: file,
            padding,
            password,
        } => {
            let password = password.read()?;
            let spki = public_key(config_path, &key_name, file.as_deref()).await?;
            let encrypted = encrypt(&spki, padding, &password)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({
                    "key_name": key_name,
                    "padding_scheme": padding.as_str(),
                    "encrypted_password": encrypted,
                }))?
            );
            Ok(())
        }
        Pfx::Import {
            files,
            user,
            purpose,
            recipient,
            key_name,
            padding,
            profile,
            password,
            out_dir,
            no_wait,
            timeout_seconds,
            idempotency_key,
        } => {
            let password = password.read()?;
            let recipient_pem = read_text(&recipient, "recipient certificate")?;
            // Where the sealed passwords go is made and checked before anything is submitted: a
            // write that failed halfway would end the run's waiting and its summary.
            if let Some(dir) = &out_dir {
                std::fs::create_dir_all(dir)
                    .and_then(|()| certconn::files::check_writable_dir(dir))
                    .with_context(|| {
                        format!(
                            "--out-dir {}: this process cannot write there; nothing was submitted",
                            dir.display()
                        )
                    })?;
            }
            let config = super::certconn_config(config_path)?;
            let api = super::api_client(&config)?;
            // The password takes part in a file's identity, keyed by the API token so that the
            // job's idempotency key (which listings show) says nothing about the password.
            let token = certconn::sources::api::token::read(&config.token_file())?;
            let mut tagged = Zeroizing::new(b"certconn pfx import password\0".to_vec());
            tagged.extend_from_slice(password.as_bytes());
            let password_tag = provider::hmac(provider::Digest::Sha256, token.as_bytes(), &tagged);
            let spki = public_key(config_path, &key_name, None).await?;
            let import = Import {
                api: &api,
                user: &user,
                purpose,
                recipient_pem: &recipient_pem,
                key_name: &key_name,
                padding,
                profile: &profile,
                spki: &spki,
                password: &password,
                password_tag: &password_tag,
                idempotency_key: idempotency_key.as_deref(),
            };
            import
                .run_all(&files, out_dir.as_deref(), no_wait, timeout_seconds)
                .await
        }
    }
}

/// One bulk import: the settings every file shares.
struct Import<'a> {
    api: &'a ApiClient,
    user: &'a str,
    purpose: ImportPurpose,
    recipient_pem: &'a str,
    key_name: &'a str,
    padding: PasswordPadding,
    profile: &'a str,
    spki: &'a [u8],
    password: &'a str,
    /// A keyed digest of the password: part of each file's identity.
    password_tag: &'a [u8],
    /// The administrator's name for this attempt, if given.
    idempotency_key: Option<&'a str>,
}

/// Where one file got to.
enum FileState {
    Refused(String),
    Submitted(String),
    Delivered { job: String, serial: String },
}

impl Import<'_> {
    async fn submit(&self, file: &Path) -> Result<String, String> {
        let pfx = std::fs::read(file).map_err(|e| format!("reading it: {e}"))?;
        let b64 = base64::engine::general_purpose::STANDARD;
        // The same file for the same user, purpose, device and password is the same job: safe
        // to rerun. A corrected password is a new attempt, not the failed one again.
        let file_id = hex::encode(&provider::digest(provider::Digest::Sha256, &pfx)[..16]);
        let idempotency_key = match self.idempotency_key {
            Some(key) => format!("{key}-{file_id}"),
            None => {
                let mut identity = pfx.clone();
                identity.extend_from_slice(
                    format!(
                        "\0{}\0{:?}\0{}\0",
                        self.user, self.purpose, self.recipient_pem
                    )
                    .as_bytes(),
                );
                identity.extend_from_slice(self.password_tag);
                format!(
                    "pfx-import-{}",
                    hex::encode(&provider::digest(provider::Digest::Sha256, &identity)[..16])
                )
            }
        };
        let encrypted =
            encrypt(self.spki, self.padding, self.password).map_err(|e| format!("{e:#}"))?;
        let body = json!({
            "idempotency_key": idempotency_key,
            "profile": self.profile,
            "pfx": b64.encode(&pfx),
            "encrypted_password": encrypted,
            "key_name": self.key_name,
            "padding_scheme": self.padding.as_str(),
            "user_principal_name": self.user,
            "intended_purpose": self.purpose,
            "recipient": self.recipient_pem,
        });
        let answer = self
            .api
            .call(Method::POST, "/v1/jobs/import", Some(&body))
            .await
            .map_err(|e| e.to_string())?;
        answer["job"]["id"]
            .as_str()
            .map(String::from)
            .ok_or_else(|| "the daemon's answer has no job id".into())
    }

    async fn run_all(
        &self,
        files: &[PathBuf],
        out_dir: Option<&Path>,
        no_wait: bool,
        timeout_seconds: u64,
    ) -> anyhow::Result<()> {
        let bar = indicatif::ProgressBar::new(files.len() as u64 * 2);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{bar:30}] {pos}/{len} {msg} ({elapsed})",
            )
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message("submitting");
        let mut states = Vec::with_capacity(files.len());
        for file in files {
            let state = match self.submit(file).await {
                Ok(id) => FileState::Submitted(id),
                Err(e) => {
                    bar.inc(1); // a refused file has no decision to wait for
                    FileState::Refused(e)
                }
            };
            states.push(state);
            bar.inc(1);
        }
        if no_wait {
            bar.finish_and_clear();
            for (file, state) in files.iter().zip(&states) {
                match state {
                    FileState::Submitted(id) => println!("{}: job {id}", file.display()),
                    FileState::Refused(e) => println!("{}: refused: {e}", file.display()),
                    FileState::Delivered { .. } => {}
                }
            }
            return summary(&states);
        }
        bar.set_message("waiting for decisions");
        let deadline = Instant::now() + Duration::from_secs(timeout_seconds);
        let mut delay = Duration::from_millis(20);
        loop {
            let mut open = 0;
            for (file, state) in files.iter().zip(states.iter_mut()) {
                let FileState::Submitted(id) = state else {
                    continue;
                };
                let job = self
                    .api
                    .call(Method::GET, &format!("/v1/jobs/{id}"), None)
                    .await?;
                match job["state"].as_str().unwrap_or("") {
                    "succeeded" => {
                        let answer = self
                            .api
                            .call(Method::GET, &format!("/v1/jobs/{id}/result"), None)
                            .await?;
                        let result = &answer["result"];
                        if let (Some(dir), Some(sealed)) =
                            (out_dir, result["sealed_password_base64"].as_str())
                        {
                            let name = file
                                .file_name()
                                .map(|n| n.to_string_lossy().into_owned())
                                .unwrap_or_else(|| id.clone());
                            write_private(
                                &dir.join(format!("{name}.password.cms")),
                                &base64::engine::general_purpose::STANDARD
                                    .decode(sealed)
                                    .context("the sealed password is not base64")?,
                            )?;
                        }
                        *state = FileState::Delivered {
                            job: id.clone(),
                            serial: result["serial"].as_str().unwrap_or("?").to_owned(),
                        };
                        bar.inc(1);
                    }
                    "failed" | "dead" => {
                        *state = FileState::Refused(format!(
                            "job {id}: {}",
                            job["last_error"].as_str().unwrap_or("no reason recorded")
                        ));
                        bar.inc(1);
                    }
                    _ => open += 1,
                }
            }
            if open == 0 {
                break;
            }
            if Instant::now() > deadline {
                bar.abandon_with_message("timed out");
                bail!("{open} import job(s) still running after {timeout_seconds} s; they keep running — see `certconn jobs list`");
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(500));
        }
        bar.finish_and_clear();
        for (file, state) in files.iter().zip(&states) {
            match state {
                FileState::Delivered { job, serial } => println!(
                    "{}: delivered (job {job}, certificate serial {serial})",
                    file.display()
                ),
                FileState::Refused(e) => println!("{}: refused: {e}", file.display()),
                FileState::Submitted(id) => println!("{}: job {id}", file.display()),
            }
        }
        summary(&states)
    }
}

fn summary(states: &[FileState]) -> anyhow::Result<()> {
    let refused = states
        .iter()
        .filter(|s| matches!(s, FileState::Refused(_)))
        .count();
    if refused > 0 {
        bail!("{refused} of {} PFX file(s) were refused", states.len());
    }
    Ok(())
}
