//! `certconn plugins` (alias `plugin`): what the daemon runs, and the tools around a package.
//!
//! `list`, `load`, `unload`, `reload`, `rollback` talk to the running daemon; `inspect`, `pack`
//! and `test` work on a file, offline.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Subcommand;
use hyper::Method;
use serde_json::Value;

use super::client_cmds::client;
use certconn::plugins::manifest::Manifest;
use certconn::plugins::package::PluginPackage;
use certconn::plugins::{EngineLimits, PluginEngine, PreparedPlugin};

#[derive(Debug, Subcommand)]
pub enum Plugins {
    /// Plugin files and backend instances: version, state, health and problems.
    List {
        /// Print the daemon's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Show a plugin package without running it as a backend: manifest, contract, describe and
    /// settings schema.
    Inspect {
        /// The plugin package (`.wasm`).
        file: PathBuf,
        /// Print it as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Load a plugin now. NAME loads `plugins.dir/NAME.wasm` (and undoes `unload`); a FILE is
    /// checked, published into `plugins.dir` by rename, then loaded.
    Load {
        /// A plugin name, or the path of a plugin package to publish.
        plugin: String,
    },
    /// Stop serving every backend that runs a plugin (jobs in flight finish; profiles use their
    /// fallbacks). To stop one backend of several, use `drain`.
    Unload {
        /// The plugin's name (its file name without `.wasm`).
        plugin: String,
    },
    /// Load the plugin's file again now, even one refused before.
    Reload {
        /// The plugin's name.
        plugin: String,
    },
    /// Return the backends running a plugin — or one backend — to the version they ran before.
    Rollback {
        /// A plugin name (all its backends) or a backend name (that one only).
        name: String,
    },
    /// Stop one backend taking new jobs (jobs in flight finish; its profiles use their
    /// fallbacks or wait); other backends of the same plugin go on.
    Drain {
        /// The backend's name (`[backends.NAME]`).
        backend: String,
    },
    /// Let a drained backend take jobs again.
    Undrain {
        /// The backend's name.
        backend: String,
    },
    /// Make a plugin package: embed a manifest (`certconn-plugin.toml`) into a component.
    Pack {
        /// The component (`wasm32-wasip2` build output, or `wasm-tools component new`).
        component: PathBuf,
        /// The manifest to embed (`certconn-plugin.toml`).
        #[arg(long)]
        manifest: PathBuf,
        /// Where to write the package.
        #[arg(long, short)]
        out: PathBuf,
        /// Sign the package with this publisher key (PKCS#8 PEM, ECDSA P-256; see `keygen`).
        #[arg(long, value_name = "KEY")]
        sign_key: Option<PathBuf>,
    },
    /// Sign a plugin package (the SDK's build output, say) with a publisher key, replacing any
    /// signature it had. Administrators trust the key's `.pub` in `plugins.trusted_publishers`.
    Sign {
        /// The plugin package.
        package: PathBuf,
        /// The publisher's private key (PKCS#8 PEM, ECDSA P-256).
        #[arg(long)]
        key: PathBuf,
        /// Where to write the signed package (default: over the package).
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Make a publisher key pair for signing plugins: PREFIX.key (private, mode 0600; keep it
    /// offline or in your release system) and PREFIX.pub (give it to administrators).
    Keygen {
        /// Path prefix of the two files.
        #[arg(long)]
        out: PathBuf,
    },
    /// The conformance checks every backend must pass, against the backend in `--config`.
    Test(TestArgs),
}

/// `certconn plugin test`: see [`certconn::plugins::conformance`].
#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// The plugin package to test.
    pub file: PathBuf,
    /// The backend in `--config` whose settings and grants to use (default: the one whose
    /// plugin has the package's name, or the only one).
    #[arg(long)]
    pub backend: Option<String>,
    /// The profile name sent with issue requests.
    #[arg(long, default_value = "conformance")]
    pub profile: String,
    /// A CA-side template under which the CA answers pending (manual approval): tests
    /// pending and `poll`. Without it, that check is skipped.
    #[arg(long)]
    pub pending_template: Option<String>,
    /// How long to poll a pending request before failing, in seconds.
    #[arg(long, default_value_t = 60)]
    pub pending_timeout: u64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs the conformance kit and prints its report; any failed check is an error.
async fn test(config_path: &Path, args: TestArgs) -> anyhow::Result<()> {
    use certconn::plugins::conformance::{self, KitConfig, KitOptions, Verdict};
    let config = super::certconn_config(config_path)?;
    let report = conformance::run(
        KitConfig {
            backends: &config.backends,
            keys: &config.keys,
            policy: config.policy(),
            engine: config.engine_limits(),
        },
        &KitOptions {
            file: args.file,
            backend: args.backend,
            profile: args.profile,
            pending_template: args.pending_template,
            pending_timeout: std::time::Duration::from_secs(args.pending_timeout),
        },
    )
    .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else {
        println!("{report}");
    }
    let failed = report.count(Verdict::Fail);
    if failed > 0 {
        bail!("{failed} conformance check(s) failed");
    }
    Ok(())
}

pub async fn run(config_path: &Path, what: Plugins) -> anyhow::Result<()> {
    match what {
        Plugins::List { json } => list(config_path, json).await,
        Plugins::Inspect { file, json } => inspect(&file, json).await,
        Plugins::Load { plugin } => load(config_path, &plugin).await,
        Plugins::Unload { plugin } => action(config_path, &plugin, "unload").await,
        Plugins::Reload { plugin } => action(config_path, &plugin, "reload").await,
        Plugins::Rollback { name } => action(config_path, &name, "rollback").await,
        Plugins::Drain { backend } => drain(config_path, &backend, "drain").await,
        Plugins::Undrain { backend } => drain(config_path, &backend, "undrain").await,
        Plugins::Pack {
            component,
            manifest,
            out,
            sign_key,
        } => pack(&component, &manifest, &out, sign_key.as_deref()).await,
        Plugins::Sign { package, key, out } => sign(&package, &key, out.as_deref()),
        Plugins::Keygen { out } => keygen(&out),
        Plugins::Test(args) => test(config_path, args).await,
    }
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

async fn list(config_path: &Path, json: bool) -> anyhow::Result<()> {
    let answer = client(config_path)?
        .call(Method::GET, "/v1/plugins", None)
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    let empty = Vec::new();
    println!(
        "{:<12}  {:<11}  {:<11}  {:<32}  {:<20}  HEALTH",
        "BACKEND", "PLUGIN", "STATE", "VERSION", "CAPABILITIES"
    );
    for b in answer["backends"].as_array().unwrap_or(&empty) {
        let caps: Vec<&str> = b["capabilities"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        println!(
            "{:<12}  {:<11}  {:<11}  {:<32}  {:<20}  {}  {}",
            text(&b["backend"]),
            text(&b["plugin"]),
            text(&b["state"]),
            text(&b["version"]),
            caps.join(","),
            if b["healthy"].as_bool() == Some(true) {
                "ok"
            } else {
                "UNHEALTHY"
            },
            text(&b["health"]),
        );
        if let Some(p) = b["problem"].as_str() {
            println!("{:<12}  problem: {p}", "");
        }
        if let Some(p) = b["previous"].as_str() {
            println!("{:<12}  previous (rollback): {p}", "");
        }
        if let Some(r) = b["breaker"]["reason"].as_str() {
            println!("{:<12}  quarantined after: {r}", "");
        }
    }
    for p in answer["plugins"].as_array().unwrap_or(&empty) {
        if let Some(r) = p["rejected"].as_object() {
            println!(
                "plugin {}: refused {} ({}): {}",
                text(&p["plugin"]),
                r.get("version").map(text).unwrap_or("-"),
                r.get("sha256")
                    .and_then(Value::as_str)
                    .map(|s| &s[..12.min(s.len())])
                    .unwrap_or("-"),
                r.get("reason").map(text).unwrap_or("-")
            );
        }
        if let Some(f) = p["signed_by"].as_str() {
            println!("plugin {}: signed by publisher {f}", text(&p["plugin"]));
        }
        if p["unloaded"].as_bool() == Some(true) {
            println!("plugin {}: unloaded", text(&p["plugin"]));
        }
    }
    Ok(())
}

async fn action(config_path: &Path, plugin: &str, what: &str) -> anyhow::Result<()> {
    let answer = client(config_path)?
        .call(Method::POST, &format!("/v1/plugins/{plugin}/{what}"), None)
        .await?;
    print_answer(plugin, &answer);
    if answer["report"]["installed"]
        .as_array()
        .is_some_and(|a| a.is_empty())
        && answer["report"]["refused"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    {
        bail!("{plugin}: no backend took the new version");
    }
    Ok(())
}

fn print_answer(plugin: &str, answer: &Value) {
    let empty = Vec::new();
    if let Some(report) = answer.get("report") {
        let version = text(&report["version"]);
        for b in report["installed"].as_array().unwrap_or(&empty) {
            println!("{}: now runs {version}", text(b));
        }
        for r in report["refused"].as_array().unwrap_or(&empty) {
            println!("{}: kept its version: {}", text(&r[0]), text(&r[1]));
        }
        if report["unchanged"].as_bool() == Some(true) {
            println!("{plugin}: already running {version}");
        }
    }
    if let Some(names) = answer["unloaded"].as_array() {
        for n in names {
            println!("{}: unloaded", text(n));
        }
    }
    for r in answer["rolled_back"].as_array().unwrap_or(&empty) {
        println!(
            "{}: rolled back from {} to {}",
            text(&r["backend"]),
            text(&r["from"]),
            text(&r["to"])
        );
    }
}

async fn drain(config_path: &Path, backend: &str, what: &str) -> anyhow::Result<()> {
    let answer = client(config_path)?
        .call(
            Method::POST,
            &format!("/v1/backends/{backend}/{what}"),
            None,
        )
        .await?;
    let done = if what == "drain" {
        "drained"
    } else {
        "undrained"
    };
    if answer["changed"].as_bool() == Some(true) {
        println!("{backend}: {done}");
    } else {
        println!("{backend}: already {done}");
    }
    Ok(())
}

/// `load FILE` publishes the file first; `load NAME` just asks the daemon.
async fn load(config_path: &Path, plugin: &str) -> anyhow::Result<()> {
    let as_file = Path::new(plugin);
    let name = if plugin.ends_with(".wasm") || as_file.components().count() > 1 {
        let package = PluginPackage::read(as_file)?;
        let config = super::certconn_config(config_path)?;
        let target = config
            .plugins
            .dir
            .join(format!("{}.wasm", package.manifest.name));
        publish(&package.bytes, &target)?;
        println!("published {} as {}", package.version_id(), target.display());
        package.manifest.name
    } else {
        plugin.to_owned()
    };
    action(config_path, &name, "load").await
}

/// Writes `bytes` to `target` the supported way: a temporary file beside it, then a rename —
/// mode 0644 whatever the umask, since certconn loads no plugin others may change.
fn publish(bytes: &[u8], target: &Path) -> anyhow::Result<()> {
    certconn::files::write_atomic(target, bytes, 0o644)
        .with_context(|| format!("writing {}", target.display()))?;
    Ok(())
}

async fn pack(
    component: &Path,
    manifest: &Path,
    out: &Path,
    sign_key: Option<&Path>,
) -> anyhow::Result<()> {
    let bytes =
        std::fs::read(component).with_context(|| format!("reading {}", component.display()))?;
    let text =
        std::fs::read(manifest).with_context(|| format!("reading {}", manifest.display()))?;
    let manifest_value = Manifest::parse(&text).with_context(|| manifest.display().to_string())?;
    let (engine, _cache) = offline_engine()?;
    let checked = certconn::plugins::pack::pack(engine, &bytes, &manifest_value, out)
        .await
        .with_context(|| component.display().to_string())?;
    let Some(key) = sign_key else {
        publish(&checked.bytes, out)?;
        println!("{} → {}", checked.version_id(), out.display());
        return Ok(());
    };
    let key = signing_key(key)?;
    let signed = certconn::plugins::signature::sign(&checked.bytes, &key)?;
    publish(&signed, out)?;
    let package = PluginPackage::from_bytes(out, signed)?;
    println!(
        "{} → {}, signed by publisher {}",
        package.version_id(),
        out.display(),
        certconn::plugins::signature::fingerprint(key.public_key_der())
    );
    Ok(())
}

/// A publisher's private key from a PKCS#8 PEM file.
fn signing_key(path: &Path) -> anyhow::Result<certconn::custody::PrivateKey> {
    super::keep_keys_out_of_cores(None)?;
    let raw = certconn::files::read_secret_once(path)?;
    let text = std::str::from_utf8(&raw)
        .map_err(|_| anyhow::anyhow!("{}: not PEM (not UTF-8 text)", path.display()))?;
    let blocks = certconn::pki::pem::decode_all_secret(text)
        .with_context(|| format!("{}: not PEM", path.display()))?;
    let Some((_, der)) = blocks.into_iter().find(|(l, _)| l == "PRIVATE KEY") else {
        bail!(
            "{}: no PRIVATE KEY block; a publisher key is PKCS#8 PEM (`certconn plugin keygen`, or \
             `openssl pkcs8 -topk8 -nocrypt` from an EC key)",
            path.display()
        );
    };
    certconn::custody::PrivateKey::from_pkcs8(der)
        .with_context(|| format!("{}: not a private key certconn can use", path.display()))
}

fn sign(package: &Path, key: &Path, out: Option<&Path>) -> anyhow::Result<()> {
    let checked = PluginPackage::read(package)?;
    let key = signing_key(key)?;
    let signed = certconn::plugins::signature::sign(&checked.bytes, &key)?;
    let out = out.unwrap_or(package);
    publish(&signed, out)?;
    println!(
        "{} → {}, signed by publisher {}",
        PluginPackage::from_bytes(out, signed)?.version_id(),
        out.display(),
        certconn::plugins::signature::fingerprint(key.public_key_der())
    );
    Ok(())
}

fn keygen(prefix: &Path) -> anyhow::Result<()> {
    let with = |ext: &str| {
        let mut p = prefix.as_os_str().to_owned();
        p.push(ext);
        PathBuf::from(p)
    };
    let (private, public) = (with(".key"), with(".pub"));
    for p in [&private, &public] {
        if p.exists() {
            bail!("{} exists; not replacing a publisher key", p.display());
        }
    }
    super::keep_keys_out_of_cores(None)?;
    let key = certconn::custody::PrivateKey::generate(certconn::custody::KeyAlgorithm::EcP256)?;
    let pem = zeroize::Zeroizing::new(certconn::pki::pem::encode("PRIVATE KEY", key.pkcs8_der()?));
    certconn::files::write_atomic(&private, pem.as_bytes(), 0o600)?;
    certconn::files::write_atomic(
        &public,
        certconn::pki::pem::encode("PUBLIC KEY", key.public_key_der()).as_bytes(),
        0o644,
    )?;
    println!(
        "publisher key {} (private, keep it safe) and {} (public)",
        private.display(),
        public.display()
    );
    println!(
        "fingerprint {}",
        certconn::plugins::signature::fingerprint(key.public_key_der())
    );
    Ok(())
}

/// A throwaway engine for offline commands: small pool, cache in a temporary directory.
pub(super) fn offline_engine() -> anyhow::Result<(Arc<PluginEngine>, tempfile::TempDir)> {
    let cache = tempfile::tempdir().context("a temporary directory")?;
    let engine = PluginEngine::new(
        cache.path(),
        &EngineLimits {
            max_instances: 8,
            max_memory_bytes: 256 << 20,
        },
    )?;
    Ok((Arc::new(engine), cache))
}

async fn inspect(file: &Path, json: bool) -> anyhow::Result<()> {
    let package = PluginPackage::read(file)?;
    let (engine, _cache) = offline_engine()?;
    let prepared = PreparedPlugin::prepare(&engine, &package).map(Arc::new);
    let describe = match &prepared {
        Ok(p) => Some(
            p.describe(engine.clone(), certconn::crypto::AlgorithmPolicy::default())
                .await,
        ),
        Err(_) => None,
    };
    let m = &package.manifest;
    if json {
        let out = serde_json::json!({
            "file": file,
            "bytes": package.bytes.len(),
            "sha256": package.sha256,
            "manifest": m,
            "contract": prepared.as_ref().map(|p| p.contract.to_string()).ok(),
            "signed_by": certconn::plugins::signature::signer_of(&package.bytes).ok().flatten().map(|s| s.fingerprint),
            "signature_refused": certconn::plugins::signature::signer_of(&package.bytes).err().map(|e| e.to_string()),
            "refused": prepared.as_ref().err().map(|e| e.to_string()),
            "describe": describe.as_ref().map(|d| match d {
                Ok(info) => serde_json::json!({
                    "name": info.name,
                    "version": info.version,
                    "capabilities": certconn::plugins::instance::capability_names(info.capabilities),
                    "config_schema": serde_json::from_str::<Value>(&info.config_schema).unwrap_or(Value::String(info.config_schema.clone())),
                }),
                Err(e) => serde_json::json!({ "error": e.to_string() }),
            }),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "file       {} ({} KiB, sha256 {})",
            file.display(),
            package.bytes.len() / 1024,
            package.sha256
        );
        println!(
            "plugin     {} {}{}",
            m.name,
            m.version,
            if m.description.is_empty() {
                String::new()
            } else {
                format!(" — {}", m.description)
            }
        );
        if !m.vendor.is_empty() {
            println!("vendor     {}", m.vendor);
        }
        match certconn::plugins::signature::signer_of(&package.bytes) {
            Ok(Some(s)) => println!("signed     by publisher {}", s.fingerprint),
            Ok(None) => {
                println!("signed     no (loads only where no trusted publisher is configured)")
            }
            Err(e) => println!("signed     REFUSED: {e}"),
        }
        match &prepared {
            Ok(p) => println!(
                "contract   certconn:plugin@{} (manifest {}): runs on this certconn",
                p.contract, m.contract
            ),
            Err(e) => println!("contract   manifest {}: REFUSED: {e}", m.contract),
        }
        let r = &m.requests;
        println!(
            "requests   http: {}; keys: {}; memory: {}; timeout: {}",
            if r.http.is_empty() {
                "none".into()
            } else {
                r.http.join(", ")
            },
            if r.keys.is_empty() {
                "none".into()
            } else {
                r.keys.join(", ")
            },
            r.memory_mb.map_or("default".into(), |m| format!("{m} MiB")),
            r.timeout_seconds
                .map_or("default".into(), |s| format!("{s}s")),
        );
        match &describe {
            Some(Ok(info)) => {
                println!(
                    "describe   {} {}: {}",
                    info.name,
                    info.version,
                    certconn::plugins::instance::capability_names(info.capabilities).join(", ")
                );
                let schema = serde_json::from_str::<Value>(&info.config_schema)
                    .and_then(|v| serde_json::to_string_pretty(&v))
                    .unwrap_or_else(|_| info.config_schema.clone());
                println!("settings   {}", schema.replace('\n', "\n           "));
            }
            Some(Err(e)) => println!("describe   FAILED: {e}"),
            None => {}
        }
    }
    if let Err(e) = prepared {
        bail!("{} cannot run on this certconn: {e}", file.display());
    }
    Ok(())
}
