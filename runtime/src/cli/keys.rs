//! `certconn keys`: administer the key store offline. These commands take the data directory's
//! lock, so they refuse to run while the daemon owns it (the daemon holds keys in memory); only
//! `list` and `export-public`, which change nothing, ask the running daemon instead.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Subcommand;
use zeroize::Zeroizing;

use certconn::app::datadir;
use certconn::app::Config;
use certconn::custody::{bundle, KeyAlgorithm, KeyLocation, KeyStore, KeySummary, PrivateKey};
use certconn::pki::{pem, pkcs12};

#[derive(Debug, Subcommand)]
pub enum Keys {
    /// Generate a key in custody.
    Create {
        /// The key's name: letters, digits, '-', '_' and '.', at most 64 characters.
        name: String,
        /// ec-p256, ec-p384, rsa-2048, rsa-3072 or rsa-4096.
        #[arg(long, default_value = "ec-p256")]
        alg: KeyAlgorithm,
        /// `software` (sealed at rest per custody.protection) or `pkcs11` (on the
        /// custody.pkcs11 token, never extractable).
        #[arg(long, default_value = "software")]
        store: KeyLocation,
    },
    /// List keys with their type, certificates and public-key fingerprint.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a key's public half as PEM SubjectPublicKeyInfo.
    ExportPublic {
        /// The key's name.
        name: String,
    },
    /// Take an existing key into custody: an unencrypted PKCS#8 file (PEM or DER), or a PFX
    /// (its certificate and chain come along).
    Import {
        /// The name the key gets in custody.
        name: String,
        /// An unencrypted PKCS#8 private key file, PEM or DER.
        #[arg(long, conflicts_with = "pfx", required_unless_present = "pfx")]
        pkcs8: Option<PathBuf>,
        /// A PKCS#12 file: its key, certificate and chain.
        #[arg(long)]
        pfx: Option<PathBuf>,
        /// The PFX password, read from this environment variable (never from the command line).
        #[arg(long, default_value = "CERTCONN_PFX_PASSWORD")]
        pfx_password_env: String,
    },
    /// Move a software key onto the PKCS#11 token (`[custody.pkcs11]`): created there sensitive
    /// and not extractable, checked to sign as the same key, then the key file is overwritten
    /// and removed. Its certificates stay.
    Migrate {
        /// The key's name.
        name: String,
        /// Where to: `pkcs11` (the only destination there is).
        #[arg(long, default_value = "pkcs11")]
        to: KeyLocation,
    },
    /// Write software keys and their certificates to a bundle sealed under a passphrase, to
    /// import on another instance of a fleet (a CA's key, the PFX-password key, RA keys).
    ExportBundle {
        /// The keys to carry.
        #[arg(required = true)]
        names: Vec<String>,
        /// The bundle file to write (0600).
        #[arg(long)]
        out: PathBuf,
        /// The environment variable holding the bundle's passphrase (never the command line).
        #[arg(long, default_value = "CERTCONN_BUNDLE_PASSPHRASE")]
        passphrase_env: String,
    },
    /// Take the keys of a bundle `export-bundle` wrote into custody: all of them, or none when
    /// one does not open or its name is taken by another key.
    ImportBundle {
        /// The bundle file.
        bundle: PathBuf,
        /// The environment variable holding the bundle's passphrase.
        #[arg(long, default_value = "CERTCONN_BUNDLE_PASSPHRASE")]
        passphrase_env: String,
    },
    /// Delete a key and its certificates from custody.
    Delete {
        /// The key's name.
        name: String,
        /// Required: deleting a key cannot be undone.
        #[arg(long)]
        yes: bool,
    },
}

pub async fn run(config_path: &std::path::Path, what: Keys) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let _lock = match (datadir::lock(&config.data_dir), &what) {
        // What changes nothing and holds no secret — the list, a public half — the daemon
        // answers while it owns the key store (`GET /v1/keys`, `GET /v1/keys/NAME`), so that an
        // administrator need not stop it to read them.
        (Err(datadir::DataDirError::Locked { .. }), Keys::List { json }) => {
            let api = super::api_client(&config)?;
            let answer = api
                .call(hyper::Method::GET, "/v1/keys", None)
                .await
                .context(IN_USE)?;
            let keys: Vec<KeySummary> = serde_json::from_value(answer["keys"].clone())
                .context("the daemon's list of keys is not what this certconn reads")?;
            return print_list(&keys, *json);
        }
        (Err(datadir::DataDirError::Locked { .. }), Keys::ExportPublic { name }) => {
            let spki = super::pfx::public_key(config_path, name, None)
                .await
                .context(IN_USE)?;
            print!("{}", pem::encode("PUBLIC KEY", &spki));
            return Ok(());
        }
        (lock, _) => lock?,
    };
    super::keep_keys_out_of_cores(Some(&config.custody))?;
    let store = KeyStore::open(&config.keys_dir(), &config.custody)?;
    match what {
        Keys::Create {
            name,
            alg,
            store: location,
        } => {
            let key = store.create(&name, alg, location)?;
            let place = match key.key.token() {
                Some(t) => format!(" on PKCS#11 token {:?}", t.token_label()),
                None => String::new(),
            };
            println!(
                "created {name}: {}{place} {}",
                key.key.kind().describe(),
                key.key.spki_sha256()
            );
        }
        Keys::List { json } => print_list(&store.list(), json)?,
        Keys::ExportPublic { name } => {
            let key = store.get(&name)?;
            print!("{}", pem::encode("PUBLIC KEY", key.key.public_key_der()));
        }
        Keys::Import {
            name,
            pkcs8,
            pfx,
            pfx_password_env,
        } => {
            let (key, chain) = match (pkcs8, pfx) {
                (Some(path), _) => (read_pkcs8(&path)?, Vec::new()),
                (None, Some(path)) => {
                    let password = super::pfx::password_from_env(
                        &pfx_password_env,
                        "--pfx-password-env NAME",
                    )?;
                    let bytes = std::fs::read(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    let opened = pkcs12::open(&bytes, &password, &config.policy())
                        .with_context(|| format!("opening {}", path.display()))?;
                    let (key, cert) = opened.key_and_certificate()?;
                    let mut chain = vec![cert.der.clone()];
                    chain.extend(
                        opened
                            .certificates
                            .iter()
                            .filter(|c| c.der != cert.der)
                            .map(|c| c.der.clone()),
                    );
                    (key, chain)
                }
                (None, None) => bail!("give --pkcs8 FILE or --pfx FILE"),
            };
            let description = format!("{} {}", key.kind().describe(), key.spki_sha256());
            store.put(&name, key)?;
            if !chain.is_empty() {
                store.set_chain(&name, chain)?;
            }
            println!("imported {name}: {description}");
        }
        Keys::ExportBundle {
            names,
            out,
            passphrase_env,
        } => {
            let passphrase = bundle_passphrase(&passphrase_env)?;
            let bytes = bundle::export(&store, &names, &passphrase)?;
            certconn::files::write_atomic(&out, &bytes, 0o600)
                .with_context(|| format!("writing {}", out.display()))?;
            println!(
                "wrote {} key(s) to {}: import them with certconn keys import-bundle on each instance, then destroy the file",
                names.len(),
                out.display()
            );
        }
        Keys::ImportBundle {
            bundle: path,
            passphrase_env,
        } => {
            let passphrase = bundle_passphrase(&passphrase_env)?;
            let bytes =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            for done in bundle::import(&store, &bytes, &passphrase)? {
                match done {
                    bundle::Imported::Added(name) => {
                        let key = store.get(&name)?;
                        println!(
                            "imported {name}: {} {}",
                            key.key.kind().describe(),
                            key.key.spki_sha256()
                        );
                    }
                    bundle::Imported::Unchanged(name) => {
                        println!("{name}: already here, the same key")
                    }
                }
            }
        }
        Keys::Migrate { name, to } => {
            if to != KeyLocation::Pkcs11 {
                bail!("keys migrate moves a software key onto the PKCS#11 token: --to pkcs11");
            }
            let key = store.migrate_to_token(&name)?;
            let token = key
                .key
                .token()
                .map(|t| t.token_label().to_owned())
                .unwrap_or_default();
            println!(
                "moved {name} onto PKCS#11 token {token:?}: sensitive, not extractable, {} (same public key {})",
                key.key.kind().describe(),
                key.key.spki_sha256()
            );
            println!(
                "the key file {} was overwritten and removed; a backup of it still holds the key — destroy any copy you made",
                config.keys_dir().join(format!("{name}.key")).display()
            );
        }
        Keys::Delete { name, yes } => {
            store.get(&name)?;
            if !yes {
                bail!("deleting {name} cannot be undone; repeat with --yes");
            }
            store.remove(&name)?;
            println!("deleted {name}");
        }
    }
    Ok(())
}

/// Why a read-only keys command asked the daemon.
const IN_USE: &str = "the data directory is in use (the daemon runs), so the daemon was asked";

/// `keys list`: a table, or JSON.
fn print_list(keys: &[KeySummary], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(keys)?);
        return Ok(());
    }
    println!(
        "{:<24}  {:<10}  {:<20}  {:>5}  SPKI SHA-256",
        "NAME", "TYPE", "STORE", "CERTS"
    );
    for k in keys {
        println!(
            "{:<24}  {:<10}  {:<20}  {:>5}  {}",
            k.name, k.kind, k.store, k.certificates, k.spki_sha256
        );
    }
    Ok(())
}

fn read_pkcs8(path: &std::path::Path) -> anyhow::Result<PrivateKey> {
    let raw = certconn::files::read_secret_once(path)?;
    let der = match std::str::from_utf8(&raw) {
        Ok(text) if text.contains("-----BEGIN") => {
            let blocks = pem::decode_all_secret(text).map_err(anyhow::Error::msg)?;
            let (label, der) = blocks.into_iter().next().context("no PEM block")?;
            match label.as_str() {
                "PRIVATE KEY" => der,
                "ENCRYPTED PRIVATE KEY" => bail!("{}: encrypted PKCS#8 is not supported; decrypt it with `openssl pkcs8 -topk8 -nocrypt` first, or import a PFX", path.display()),
                other => bail!("{}: expected a PRIVATE KEY (PKCS#8) block, found {other}; convert with `openssl pkcs8 -topk8 -nocrypt`", path.display()),
            }
        }
        _ => raw,
    };
    PrivateKey::from_pkcs8(der).with_context(|| format!("{}", path.display()))
}

/// The bundle passphrase from `var`: set and not empty.
fn bundle_passphrase(var: &str) -> anyhow::Result<Zeroizing<String>> {
    let passphrase = certconn::secret::env_var(var).map_err(|_| {
        anyhow::anyhow!(
            "set the bundle passphrase in ${var} (it is never taken from the command line)"
        )
    })?;
    if passphrase.is_empty() {
        bail!("${var} is empty");
    }
    Ok(passphrase)
}
