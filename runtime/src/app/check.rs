//! `certconn check-config`: every check `serve` makes before it serves that needs no network
//! and changes nothing, so an administrator can trust a config before a restart —
//! the secrets it names are readable (and private), the key-encryption key and the PKCS#11 token
//! open, every plugin file exists, compiles, links against its contract and accepts its
//! settings with the keys it is granted, and what a plugin's manifest asks beyond its grant is
//! said. It reads the data directory (the API token, the journal's schema version) but writes
//! nothing outside a temporary directory: keys are made fresh there (as the
//! conformance kit does), plugins compiled there. Health checks are left out (they call CAs).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{Config, StartError};
use crate::crypto::fips::FipsStatus;
use crate::custody::{CustodyConfig, KeyConfig, KeyLocation, KeyStore, SelfSigned};
use crate::journal::schema;
use crate::plugins::instance::InstanceSpec;
use crate::plugins::package::PluginPackage;
use crate::plugins::registry::{unmet_requests, Unmet};
use crate::plugins::{LoadedBackend, PluginEngine, PluginError, PreparedPlugin};

/// What the check found.
#[derive(Debug, Default)]
pub struct CheckReport {
    /// What would stop `serve`, or leave a backend not serving.
    pub problems: Vec<String>,
    /// What `serve` would log and go on with.
    pub warnings: Vec<String>,
    /// Backends that loaded and accepted their settings: (name, plugin version).
    pub backends: Vec<(String, String)>,
}

impl CheckReport {
    /// Nothing found that would stop `serve` or leave a backend out.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Runs the checks. `Err` only when the check itself cannot run (no temporary directory).
pub async fn check(config: &Config) -> Result<CheckReport, std::io::Error> {
    let mut report = CheckReport::default();
    if let Some(reason) = FipsStatus::probe(config.crypto.fips).refusal() {
        report.problems.push(reason);
    }
    let scratch = tempfile::tempdir()?;
    check_files(config, &scratch, &mut report);
    check_journal(config, &mut report).await;
    let keys = match scratch_keys(config, &scratch) {
        Ok(k) => k,
        Err(e) => {
            report.problems.push(crate::report::chain(&e));
            return Ok(report);
        }
    };
    check_backends(config, keys, &scratch, &mut report).await;
    Ok(report)
}

/// The journal: reachable (PostgreSQL: connected, with the password and TLS `serve` uses), at a
/// schema version this certconn can use, and (PostgreSQL) durable in what it commits.
async fn check_journal(config: &Config, report: &mut CheckReport) {
    let (where_, found, current) = if config.journal.is_postgres() {
        let look = crate::journal::PostgresJournal::look(&config.journal, config.crypto.fips).await;
        if let Ok(look) = &look {
            report.warnings.extend(
                look.commit
                    .weaknesses()
                    .into_iter()
                    .map(|w| w.describe(&look.location)),
            );
        }
        (
            "the journal's database".to_owned(),
            look.map(|l| l.schema_version),
            schema::POSTGRES_CURRENT,
        )
    } else {
        (
            format!("journal {}", config.journal_path().display()),
            crate::journal::sqlite::schema_version_of(&config.journal_path()),
            schema::CURRENT,
        )
    };
    match found {
        Ok(Some(v)) if v > current => report.problems.push(format!(
            "{where_}: schema version {v} is newer than this certconn knows ({current})"
        )),
        Ok(Some(v)) if v < current => report.warnings.push(format!(
            "{where_}: schema version {v} will be migrated to {current} at start"
        )),
        Ok(_) => {}
        Err(e) => report.problems.push(crate::report::chain(&e)),
    }
}

/// Secrets and state that `serve` reads: the API's TLS certificate and key, the API tokens, the
/// SCEP challenge, the key-encryption key, the PKCS#11 token, the upstream's token or
/// registration, the proxy's credentials; and the directories outside the data directory it
/// writes to (the plugin directory, when the feed would install there; `crl_dir`).
fn check_files(config: &Config, scratch: &tempfile::TempDir, report: &mut CheckReport) {
    // A certificate certconn issues itself is checked when serve issues it (the issuer's
    // key is checked with the other keys).
    if let Some(tls) = config.api.tls.as_ref().filter(|t| t.issuer.is_none()) {
        let files = crate::sources::api::tls::ServerCertificate::Files;
        if let Err(e) = crate::sources::api::tls::server_config(tls, &files, &config.policy()) {
            report.problems.push(crate::report::chain(&e));
        }
    }
    for (what, token) in [
        ("the API token", config.token_file()),
        ("the read-only API token", config.read_token_file()),
    ] {
        if token.exists() {
            if let Err(e) = crate::files::read_protected(&token) {
                report
                    .problems
                    .push(format!("{what}: {}", crate::report::chain(&e)));
            }
        }
    }
    if let Some(sc) = &config.scep {
        let env = sc.challenge_env.as_ref().map(|e| e.get_ref().as_str());
        if env.is_some() || sc.challenge_file.is_some() {
            if let Err(e) = crate::secret::read_text(
                "the static SCEP challenge (scep.challenge_env/challenge_file)",
                env,
                sc.challenge_file.as_deref(),
            ) {
                report.problems.push(crate::report::chain(&e));
            }
        }
    }
    // The SCEP server's CA key, as declared (serve looks at the key itself).
    if let Some(sc) = &config.scep {
        if let Some(key) = config.keys.get(sc.ca_key.get_ref()) {
            if !key.algorithm.is_rsa() {
                report
                    .warnings
                    .push(sc.ca_key_not_rsa(&key.algorithm.to_string()));
            }
        }
    }
    // The key-encryption key: obtained as `serve` would, against a scratch record.
    if let Err(e) = crate::custody::kek::Kek::obtain(&config.custody.protection, scratch.path()) {
        // A `Protection` error names the setting itself.
        let setting = match e {
            crate::custody::CustodyError::Protection(_) => "",
            _ => "custody.protection: ",
        };
        report
            .problems
            .push(format!("{setting}{}", crate::report::chain(&e)));
    }
    if let Some(p11) = &config.custody.pkcs11 {
        match crate::custody::pkcs11::Token::open(p11) {
            Err(e) => report.problems.push(crate::report::chain(&e)),
            Ok(_) => check_token_keys_made_at_start(config, p11, report),
        }
    }
    // The upstream's credentials: its token, or the registration of its identity.
    if let Some(upstream) = &config.upstream {
        let checked = match &upstream.token_file {
            Some(file) => crate::files::read_protected(file)
                .map(drop)
                .map_err(|e| format!("upstream.token_file: {}", crate::report::chain(&e))),
            None => crate::sources::upstream::identity::read_registration(
                &config.data_dir,
                upstream.service.get_ref(),
            )
            .map(drop)
            .map_err(|e| format!("upstream: {}", crate::report::chain(&e))),
        };
        if let Err(problem) = checked {
            report.problems.push(problem);
        }
    }
    // Where the plugin releases the feed's policies would install must be writable.
    if let Some(update) = &config.update {
        if let Ok(policies) = crate::update::plugin_policies(&config.backends, &update.plugins) {
            if let Some(why) = crate::update::unwritable_plugin_dir(&config.plugins.dir, &policies)
            {
                report.warnings.push(format!("update: {why}"));
            }
        }
    }
    // The directory the CRLs are also written to.
    if let Some(dir) = config.revocation.as_ref().and_then(|r| r.crl_dir.as_ref()) {
        if let Err(e) = crate::files::check_writable_dir(dir) {
            report.warnings.push(format!(
                "revocation.crl_dir {}: this process cannot write it ({e}), so the CRLs will not \
                 be written there (under the packaged unit: ReadWritePaths= in a drop-in)",
                dir.display()
            ));
        }
    }
    // The proxy's credentials file, and a proxy from the environment of this check.
    if let Err(e) = crate::proxy::Proxy::open(&config.proxy) {
        report.problems.push(crate::report::chain(&e));
    }
}

/// The token keys `serve` would make at its first start (declared `store = "pkcs11"`, not yet
/// in the key store): on SoftHSM2, whether this process could store them, since the token
/// (not the key store) is what the packaged unit's read-only file system keeps it from
/// writing, and `serve` would stop there.
fn check_token_keys_made_at_start(
    config: &Config,
    p11: &crate::custody::Pkcs11Config,
    report: &mut CheckReport,
) {
    use crate::custody::softhsm;
    let to_make: Vec<&str> = config
        .keys
        .iter()
        .filter(|(name, k)| {
            *k.store.get_ref() == KeyLocation::Pkcs11
                && KeyStore::holds(&config.keys_dir(), name) == Some(false)
        })
        .map(|(name, _)| name.as_str())
        .collect();
    if to_make.is_empty() || !softhsm::is_module(&p11.module) {
        return;
    }
    if let Some(why) = softhsm::why_not_stored(&p11.module) {
        report.problems.push(format!(
            "keys {}: `serve` would make {} on PKCS#11 token {:?} at its first start, and \
             could not{why}",
            to_make.join(", "),
            if to_make.len() == 1 { "it" } else { "them" },
            p11.token_label
        ));
    }
}

/// The keys `[keys]` declares, made fresh in the scratch directory and in software (a key that
/// `serve` would make on the token is not made on it by a check).
fn scratch_keys(config: &Config, scratch: &tempfile::TempDir) -> Result<Arc<KeyStore>, StartError> {
    let keys = Arc::new(KeyStore::open(
        &scratch.path().join("keys"),
        &CustodyConfig::default(),
    )?);
    let software: BTreeMap<String, KeyConfig> = config
        .keys
        .iter()
        .map(|(name, k)| {
            (
                name.clone(),
                KeyConfig {
                    algorithm: k.algorithm,
                    store: toml::Spanned::new(k.store.span(), KeyLocation::Software),
                    self_signed: k.self_signed.as_ref().map(|s| SelfSigned {
                        subject: s.subject.clone(),
                        validity_days: s.validity_days,
                    }),
                    role: k.role.clone(),
                },
            )
        })
        .collect();
    keys.assign_roles(config.key_roles());
    // Unlogged: "creating custody key … store=Software" would read as this check having made
    // the CA's key, and in software where the config says a token.
    tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || {
        crate::pki::ca::provision(&keys, &software)
    })?;
    Ok(keys)
}

/// Each backend: its plugin file read, compiled and linked, described and configured with its
/// settings, settings files, HTTP secrets and granted keys.
async fn check_backends(
    config: &Config,
    keys: Arc<KeyStore>,
    scratch: &tempfile::TempDir,
    report: &mut CheckReport,
) {
    let engine = match PluginEngine::new(&scratch.path().join("cache"), &config.engine_limits()) {
        Ok(e) => Arc::new(e),
        Err(e) => {
            report.problems.push(crate::report::chain(&e));
            return;
        }
    };
    let trust = match super::publisher_trust(config) {
        Ok(t) => t,
        Err(e) => {
            report.problems.push(crate::report::chain(&e));
            return;
        }
    };
    type Checked = (
        Arc<PreparedPlugin>,
        Option<crate::plugins::signature::Signer>,
    );
    let mut prepared: BTreeMap<String, Result<Checked, String>> = BTreeMap::new();
    for (name, b) in &config.backends {
        let spec = match InstanceSpec::from_config(name, b, keys.clone(), config.policy(), None) {
            Ok(s) => s,
            Err(e) => {
                report.problems.push(settings_problem(config, e));
                continue;
            }
        };
        let plugin = b.plugin.get_ref();
        let compiled = prepared
            .entry(plugin.clone())
            .or_insert_with(|| {
                let path = config.plugins.dir.join(format!("{plugin}.wasm"));
                crate::plugins::placement::check(&config.plugins.dir, &path)?;
                let package = PluginPackage::read(&path).map_err(|e| crate::report::chain(&e))?;
                if package.manifest.name != *plugin {
                    return Err(format!(
                        "{}: the package is the plugin {:?} but is published as {plugin}.wasm",
                        path.display(),
                        package.manifest.name
                    ));
                }
                let signer = crate::plugins::signature::signer_of(&package.bytes)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                PreparedPlugin::prepare(&engine, &package)
                    .map(|p| (Arc::new(p), signer))
                    .map_err(|e| crate::report::chain(&e))
            })
            .clone();
        let compiled = match compiled {
            Ok((c, signer)) => {
                if let Err(why) =
                    crate::plugins::signature::check_trust(signer.as_ref(), trust.for_backend(name))
                {
                    report
                        .problems
                        .push(format!("backends.{name} (plugin {plugin}): {why}"));
                    continue;
                }
                c
            }
            Err(e) => {
                report
                    .problems
                    .push(format!("backends.{name} (plugin {plugin}): {e}"));
                continue;
            }
        };
        for note in unmet_requests(b, &compiled.manifest) {
            match note {
                Unmet::Key(_) => report.problems.push(format!("backends.{name}: {note}")),
                Unmet::Other(_) => report.warnings.push(format!("backends.{name}: {note}")),
            }
        }
        match LoadedBackend::load(engine.clone(), compiled.clone(), &spec, config.policy()).await {
            Ok(loaded) => report.backends.push((name.clone(), loaded.version_id())),
            Err(e) => report.problems.push(settings_problem(config, e)),
        }
    }
}

fn settings_problem(config: &Config, e: PluginError) -> String {
    StartError::from_plugin(config, e).to_string()
}
