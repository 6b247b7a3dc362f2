//! The one TOML config file, validated at start. Syntax and type errors come from the TOML
//! parser with their line and column; cross-references (a profile naming a missing backend) are
//! checked here and reported with the line of the offending value.
//!
//! Relative paths are resolved against the directory of the config file, so a config and its
//! data can move together.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::custody::KeyAlgorithm;
use crate::plugins::{BackendLimits, EngineLimits};

/// A config file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}, line {line}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        key: String,
        message: String,
    },
}

/// The whole configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Journal, key store, API token and issued files live here.
    pub data_dir: PathBuf,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub crypto: CryptoConfig,
    /// How the software key store is protected at rest, and the PKCS#11 token if any.
    #[serde(default)]
    pub custody: crate::custody::CustodyConfig,
    #[serde(default)]
    pub jobs: JobsConfig,
    pub plugins: PluginsConfig,
    #[serde(default)]
    pub pfx: PfxConfig,
    /// Custody keys to create at first start, by name.
    #[serde(default)]
    pub keys: BTreeMap<String, KeyConfig>,
    /// Backend instances, by name.
    #[serde(default)]
    pub backends: BTreeMap<String, BackendConfig>,
    /// Certificate profiles, by name: what a request names.
    #[serde(default)]
    pub profiles: BTreeMap<String, ProfileConfig>,
    /// certconn's own SCEP server, served on the API listener at `/scep`. Off when absent.
    pub scep: Option<ScepConfig>,
    #[serde(skip)]
    pub source_path: PathBuf,
}

/// certconn's SCEP server (RFC 8894): devices and device-management services enrol here, and the
/// CSR goes to the backend the profile routes to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScepConfig {
    /// The profile every SCEP request is routed by.
    pub profile: String,
    /// Custody key of the RA: it decrypts requests and signs replies. Created (RSA-2048) at first
    /// start with an RA certificate issued by `ca_key`.
    #[serde(default = "default_ra_key")]
    pub ra_key: String,
    /// Custody key whose certificate chain is the CA published by GetCACert and that issues
    /// the RA certificate (for example the local CA's key).
    pub ca_key: String,
    /// The RA certificate's subject.
    #[serde(default = "default_ra_subject")]
    pub ra_subject: String,
    /// A static challenge password, read from this environment variable.
    pub challenge_env: Option<String>,
    /// A static challenge password, read from this file (0600; trailing newline ignored).
    pub challenge_file: Option<PathBuf>,
    /// Accept one-time challenges minted by `certconn scep challenge` (or the API).
    #[serde(default = "default_true")]
    pub one_time_challenges: bool,
    /// Ask this URL (plain http) about challenges neither static nor one-time: certconn POSTs
    /// `{transaction_id, challenge, csr_pem, subject}` and accepts on a 2xx answer. Fails closed.
    pub challenge_webhook: Option<String>,
    /// How long a one-time challenge stays valid, in minutes.
    #[serde(default = "default_challenge_minutes")]
    pub challenge_minutes: u32,
    /// How long a PKIOperation waits for the backend before answering PENDING, in seconds.
    #[serde(default = "default_scep_wait")]
    pub wait_seconds: u32,
}

fn default_ra_key() -> String {
    "scep-ra".into()
}

fn default_ra_subject() -> String {
    "CN=certconn SCEP RA".into()
}

fn default_true() -> bool {
    true
}

fn default_challenge_minutes() -> u32 {
    60
}

fn default_scep_wait() -> u32 {
    10
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Where the request API listens. Loopback by default.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Bearer token file; created with mode 0600 on first start. Default: `<data_dir>/api-token`.
    pub token_file: Option<PathBuf>,
    /// Largest request body accepted.
    #[serde(default = "default_body_limit")]
    pub max_body_bytes: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            token_file: None,
            max_body_bytes: default_body_limit(),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7443))
}
fn default_body_limit() -> usize {
    1 << 20
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CryptoConfig {
    /// Only FIPS-approved algorithms (needs the `fips` build).
    #[serde(default)]
    pub fips: bool,
    /// Permit single DES for legacy SCEP peers.
    #[serde(default)]
    pub allow_single_des: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsConfig {
    /// Jobs running at once.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Attempts before a job is dead-lettered.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// First retry delay; doubles each attempt, with jitter.
    #[serde(default = "default_backoff_initial")]
    pub backoff_initial_ms: u64,
    #[serde(default = "default_backoff_max")]
    pub backoff_max_ms: u64,
    /// A running job whose lease expires (its worker died) is taken up again.
    #[serde(default = "default_lease")]
    pub lease_seconds: u64,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            workers: default_workers(),
            max_attempts: default_attempts(),
            backoff_initial_ms: default_backoff_initial(),
            backoff_max_ms: default_backoff_max(),
            lease_seconds: default_lease(),
        }
    }
}

fn default_workers() -> usize {
    8
}
fn default_attempts() -> u32 {
    5
}
fn default_backoff_initial() -> u64 {
    500
}
fn default_backoff_max() -> u64 {
    300_000
}
fn default_lease() -> u64 {
    120
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    /// Directory of plugin components (`NAME.wasm`).
    pub dir: PathBuf,
    /// Compiled-component cache. Default: `<data_dir>/cache`.
    pub cache_dir: Option<PathBuf>,
    /// Concurrent plugin instances across all backends.
    #[serde(default = "default_instances")]
    pub max_instances: u32,
    /// Watch `dir` and load a new or changed plugin without a restart (publish by writing a
    /// temporary file and renaming it to `NAME.wasm`).
    #[serde(default = "default_true")]
    pub watch: bool,
    /// Rescan `dir` this often even without a change event, in seconds (a backstop for
    /// filesystems that do not deliver events, and the retry of a failed health check).
    #[serde(default = "default_rescan")]
    pub rescan_seconds: u64,
}

fn default_rescan() -> u64 {
    30
}

fn default_instances() -> u32 {
    128
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PfxConfig {
    /// PBKDF2 and MAC iterations for PFX files certconn writes.
    #[serde(default = "default_pfx_iterations")]
    pub iterations: u32,
}

impl Default for PfxConfig {
    fn default() -> Self {
        Self {
            iterations: default_pfx_iterations(),
        }
    }
}

fn default_pfx_iterations() -> u32 {
    crate::pki::pkcs12::DEFAULT_ITERATIONS
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    pub algorithm: KeyAlgorithm,
    /// `software` (default) or `pkcs11` (the `custody.pkcs11` token).
    #[serde(default)]
    pub store: crate::custody::KeyLocation,
    /// Give the key a self-signed CA certificate when it is created (for `local-ca`).
    pub self_signed: Option<SelfSigned>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelfSigned {
    pub subject: Spanned<String>,
    #[serde(default = "default_ca_days")]
    pub validity_days: u32,
}

fn default_ca_days() -> u32 {
    3650
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Plugin file name without `.wasm`, in `plugins.dir`.
    pub plugin: Spanned<String>,
    /// Custody keys this instance may use, by name.
    #[serde(default)]
    pub keys: Vec<Spanned<String>>,
    #[serde(default = "default_memory_mb")]
    pub memory_mb: usize,
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
    #[serde(default = "default_log_lines")]
    pub log_lines_per_call: u32,
    /// Jobs this instance runs at once; more wait, or go to a profile's fallback. Unlimited
    /// (up to `jobs.workers`) when absent.
    pub max_concurrency: Option<usize>,
    /// Faults in a row (plugin faults, unreachable CA) after which the instance is quarantined.
    #[serde(default = "default_quarantine_after")]
    pub quarantine_after: u32,
    /// How long a quarantine lasts before one job probes the instance again, in seconds.
    #[serde(default = "default_quarantine_seconds")]
    pub quarantine_seconds: u64,
    /// Outbound HTTP this instance may make: hosts, internal addresses, response size.
    #[serde(default)]
    pub http: crate::plugins::http::HttpGrant,
    /// Handed to the plugin's `configure` as JSON.
    #[serde(default)]
    pub settings: toml::Table,
    /// Settings whose value is the text of a file, read at load (a plugin has no file access):
    /// `trust_anchors_pem = "anchors.pem"`. Relative to the config file.
    #[serde(default)]
    pub settings_files: BTreeMap<String, PathBuf>,
}

impl BackendConfig {
    /// The settings as the JSON object `configure` receives, with `settings_files` read in.
    pub fn settings_json(&self) -> Result<String, String> {
        let mut settings = self.settings.clone();
        for (key, path) in &self.settings_files {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("settings_files.{key}: reading {}: {e}", path.display()))?;
            settings.insert(key.clone(), toml::Value::String(text));
        }
        serde_json::to_string(&settings)
            .map_err(|e| format!("settings cannot be expressed as JSON: {e}"))
    }
}

fn default_quarantine_after() -> u32 {
    5
}
fn default_quarantine_seconds() -> u64 {
    30
}

fn default_memory_mb() -> usize {
    64
}
fn default_timeout() -> u64 {
    30
}
fn default_log_lines() -> u32 {
    200
}

impl BackendConfig {
    pub fn limits(&self) -> BackendLimits {
        BackendLimits {
            memory_bytes: self.memory_mb << 20,
            timeout: Duration::from_secs(self.timeout_seconds),
            log_lines: self.log_lines_per_call,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileConfig {
    /// The backend instance that serves this profile.
    pub backend: Spanned<String>,
    /// Backend instances tried in order when `backend` is unloaded, quarantined, at its
    /// concurrency limit, or fails with a fault or a transient error. A CA's final answer
    /// (issued, rejected, pending) is never passed on.
    #[serde(default)]
    pub fallbacks: Vec<Spanned<String>>,
    /// Device key type when the request does not say.
    #[serde(default = "default_key")]
    pub key_algorithm: KeyAlgorithm,
    pub validity_days: Option<u32>,
    /// CA-side template name, passed to the backend.
    pub template: Option<String>,
    /// `modern` (PBES2/AES-256, HMAC-SHA256) or `compat` (3DES, HMAC-SHA1) for older devices.
    #[serde(default)]
    pub pfx_format: crate::pki::pkcs12::PfxProfile,
    /// How the PFX password reaches an RSA recipient: `rsa-oaep` (default) or `rsa-pkcs1`.
    /// EC recipients always use ECDH.
    #[serde(default)]
    pub recipient_key_transport: crate::pki::cms::KeyTransport,
}

fn default_key() -> KeyAlgorithm {
    KeyAlgorithm::EcP256
}

impl Config {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates `text` as if read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        config.source_path = path.to_owned();
        let base = path.parent().map(Path::to_owned).unwrap_or_default();
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut config.data_dir);
        resolve(&mut config.plugins.dir);
        if let Some(d) = config.plugins.cache_dir.as_mut() {
            resolve(d);
        }
        if let Some(f) = config.api.token_file.as_mut() {
            resolve(f);
        }
        if let Some(f) = config
            .custody
            .pkcs11
            .as_mut()
            .and_then(|p| p.pin_file.as_mut())
        {
            resolve(f);
        }
        for b in config.backends.values_mut() {
            for f in b.settings_files.values_mut() {
                resolve(f);
            }
            if let Some(f) = b.http.trust_anchors.as_mut() {
                resolve(f);
            }
            for c in &mut b.http.credentials {
                if let Some(f) = c.password_file.as_mut() {
                    resolve(f);
                }
            }
        }
        if let Some(f) = config.scep.as_mut().and_then(|s| s.challenge_file.as_mut()) {
            resolve(f);
        }
        config.validate(text)?;
        Ok(config)
    }

    fn invalid(
        &self,
        text: &str,
        span: std::ops::Range<usize>,
        key: String,
        message: String,
    ) -> ConfigError {
        let line = text[..span.start.min(text.len())].lines().count().max(1);
        let line = if text[..span.start.min(text.len())].ends_with('\n') {
            line + 1
        } else {
            line
        };
        ConfigError::Invalid {
            path: self.source_path.clone(),
            line,
            key,
            message,
        }
    }

    fn validate(&self, text: &str) -> Result<(), ConfigError> {
        let whole = |key: &str, message: String| ConfigError::Invalid {
            path: self.source_path.clone(),
            line: find_line(text, key),
            key: key.into(),
            message,
        };
        if self.jobs.workers == 0 {
            return Err(whole("jobs.workers", "must be at least 1".into()));
        }
        if self.jobs.max_attempts == 0 {
            return Err(whole("jobs.max_attempts", "must be at least 1".into()));
        }
        if self.pfx.iterations == 0 || self.pfx.iterations > 10_000_000 {
            return Err(whole(
                "pfx.iterations",
                "must be between 1 and 10000000".into(),
            ));
        }
        for (name, key) in &self.keys {
            if key.store == crate::custody::KeyLocation::Pkcs11 && self.custody.pkcs11.is_none() {
                return Err(whole(
                    &format!("keys.{name}"),
                    "store = \"pkcs11\" needs a [custody.pkcs11] section (module, token_label)"
                        .into(),
                ));
            }
            if let Some(ss) = &key.self_signed {
                if let Err(e) = ss.subject.get_ref().parse::<x509_cert::name::Name>() {
                    return Err(self.invalid(text, ss.subject.span(), format!("keys.{name}.self_signed.subject"), format!("not a distinguished name ({e}); write it like \"CN=Example CA,O=Example\"")));
                }
            }
        }
        for (name, b) in &self.backends {
            if let Some(key) = b
                .settings_files
                .keys()
                .find(|k| b.settings.contains_key(*k))
            {
                return Err(whole(
                    &format!("backends.{name}.settings_files.{key}"),
                    "is also set in settings; give it in one place".into(),
                ));
            }
            if !crate::plugins::manifest::valid_name(b.plugin.get_ref()) {
                return Err(self.invalid(
                    text,
                    b.plugin.span(),
                    format!("backends.{name}.plugin"),
                    "must be a plugin file name without .wasm (lowercase letters, digits, - and _)"
                        .into(),
                ));
            }
            if b.max_concurrency == Some(0) {
                return Err(whole(
                    &format!("backends.{name}.max_concurrency"),
                    "must be at least 1 (leave it out for no limit)".into(),
                ));
            }
            if b.quarantine_after == 0 {
                return Err(whole(
                    &format!("backends.{name}.quarantine_after"),
                    "must be at least 1".into(),
                ));
            }
            for k in &b.keys {
                if !self.keys.contains_key(k.get_ref()) {
                    // Keys may also be created by `certconn keys create`; those are checked at
                    // start against the store. Only warn-level here would hide typos, so
                    // require declared keys to be in [keys] for now.
                    return Err(self.invalid(
                        text,
                        k.span(),
                        format!("backends.{name}.keys"),
                        format!("key {:?} is not declared in [keys]", k.get_ref()),
                    ));
                }
            }
            if b.memory_mb == 0 || b.memory_mb > 4096 {
                return Err(whole(
                    &format!("backends.{name}.memory_mb"),
                    "must be between 1 and 4096".into(),
                ));
            }
            if b.timeout_seconds == 0 {
                return Err(whole(
                    &format!("backends.{name}.timeout_seconds"),
                    "must be at least 1".into(),
                ));
            }
        }
        let known: Vec<&str> = self.backends.keys().map(String::as_str).collect();
        for (name, p) in &self.profiles {
            let mut seen = std::collections::BTreeSet::new();
            for (i, b) in std::iter::once(&p.backend).chain(&p.fallbacks).enumerate() {
                let key = if i == 0 {
                    format!("profiles.{name}.backend")
                } else {
                    format!("profiles.{name}.fallbacks")
                };
                if !self.backends.contains_key(b.get_ref()) {
                    return Err(self.invalid(
                        text,
                        b.span(),
                        key,
                        format!(
                            "no backend named {:?} (configured: {})",
                            b.get_ref(),
                            known.join(", ")
                        ),
                    ));
                }
                if !seen.insert(b.get_ref()) {
                    return Err(self.invalid(
                        text,
                        b.span(),
                        key,
                        format!("backend {:?} is listed twice", b.get_ref()),
                    ));
                }
            }
        }
        if let Some(scep) = &self.scep {
            if !self.profiles.contains_key(&scep.profile) {
                return Err(whole(
                    "scep.profile",
                    format!("no profile named {:?}", scep.profile),
                ));
            }
            if !self.keys.contains_key(&scep.ca_key) {
                return Err(whole(
                    "scep.ca_key",
                    format!("key {:?} is not declared in [keys]", scep.ca_key),
                ));
            }
            if let Err(e) = scep.ra_subject.parse::<x509_cert::name::Name>() {
                return Err(whole(
                    "scep.ra_subject",
                    format!("not a distinguished name ({e})"),
                ));
            }
            if scep.challenge_env.is_some() && scep.challenge_file.is_some() {
                return Err(whole(
                    "scep.challenge_env",
                    "give the static challenge in one place: challenge_env or challenge_file"
                        .into(),
                ));
            }
            if let Some(url) = &scep.challenge_webhook {
                if !url.starts_with("http://") || url.parse::<http::Uri>().is_err() {
                    return Err(whole(
                        "scep.challenge_webhook",
                        format!("{url:?} is not an http:// URL"),
                    ));
                }
            }
            if scep.wait_seconds > 60 {
                return Err(whole(
                    "scep.wait_seconds",
                    "at most 60: longer requests time out in SCEP clients; PENDING covers the rest"
                        .into(),
                ));
            }
        }
        Ok(())
    }

    /// Engine-wide plugin limits.
    pub fn engine_limits(&self) -> EngineLimits {
        let largest = self
            .backends
            .values()
            .map(|b| b.memory_mb << 20)
            .max()
            .unwrap_or(64 << 20);
        EngineLimits {
            max_instances: self.plugins.max_instances,
            max_memory_bytes: largest.max(16 << 20),
        }
    }

    pub fn token_file(&self) -> PathBuf {
        self.api
            .token_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("api-token"))
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.plugins
            .cache_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("cache"))
    }

    pub fn journal_path(&self) -> PathBuf {
        self.data_dir.join("journal.sqlite")
    }

    pub fn keys_dir(&self) -> PathBuf {
        self.data_dir.join("keys")
    }

    pub fn policy(&self) -> crate::crypto::AlgorithmPolicy {
        crate::crypto::AlgorithmPolicy {
            fips: self.crypto.fips,
            allow_single_des: self.crypto.allow_single_des,
        }
    }
}

/// Line of the first mention of a dotted key's last part, for errors about a whole value.
fn find_line(text: &str, dotted: &str) -> usize {
    let last = dotted.rsplit('.').next().unwrap_or(dotted);
    text.lines()
        .position(|l| l.trim_start().starts_with(last))
        .map(|i| i + 1)
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
data_dir = "data"
[plugins]
dir = "plugins"
[keys.ca]
algorithm = "ec-p256"
self_signed = { subject = "CN=Test CA" }
[backends.local]
plugin = "local-ca"
keys = ["ca"]
settings = { ca_key = "ca" }
[profiles.device]
backend = "local"
"#;

    #[test]
    fn good_config_resolves_paths_against_its_directory() {
        let c = Config::parse(Path::new("/etc/certconn/certconn.toml"), GOOD).unwrap();
        assert_eq!(c.data_dir, Path::new("/etc/certconn/data"));
        assert_eq!(c.plugins.dir, Path::new("/etc/certconn/plugins"));
        assert_eq!(c.api.listen.to_string(), "127.0.0.1:7443");
        assert_eq!(c.profiles["device"].key_algorithm, KeyAlgorithm::EcP256);
    }

    #[test]
    fn unknown_backend_names_key_and_line() {
        let text = GOOD.replace("backend = \"local\"", "backend = \"nope\"");
        let e = Config::parse(Path::new("c.toml"), &text)
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 13"), "{e}");
        assert!(e.contains("profiles.device.backend"), "{e}");
        assert!(e.contains("nope"), "{e}");
    }

    #[test]
    fn unknown_field_and_bad_type_name_the_line() {
        let e = Config::parse(
            Path::new("c.toml"),
            &GOOD.replace("[plugins]", "[plugins]\ndirr = 1"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("dirr") && e.contains("line 4"), "{e}");
        let e = Config::parse(
            Path::new("c.toml"),
            &GOOD.replace("algorithm = \"ec-p256\"", "algorithm = \"ec-p999\""),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("ec-p999") && e.contains("line 6"), "{e}");
    }

    #[test]
    fn pkcs11_token_config_parses_and_is_required_by_pkcs11_keys() {
        let c = Config::parse(
            Path::new("c.toml"),
            &format!("{GOOD}[custody]\nprotection = \"passphrase\"\n[custody.pkcs11]\nmodule = \"/usr/lib/softhsm/libsofthsm2.so\"\ntoken_label = \"certconn\"\n"),
        )
        .unwrap();
        let p11 = c.custody.pkcs11.expect("pkcs11 parsed");
        assert_eq!(p11.token_label, "certconn");
        assert_eq!(p11.pin_env, "CERTCONN_PKCS11_PIN");
        assert!(matches!(
            c.custody.protection,
            crate::custody::KekSource::Passphrase { .. }
        ));
        let e = Config::parse(
            Path::new("c.toml"),
            &format!("{GOOD}[custody.pkcs11]\nmodule = \"/x.so\"\ntoken = \"t\"\n"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("pkcs11") && e.contains("token"), "{e}");
        let e = Config::parse(
            Path::new("c.toml"),
            &GOOD.replace(
                "algorithm = \"ec-p256\"",
                "algorithm = \"ec-p256\"\nstore = \"pkcs11\"",
            ),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("keys.ca") && e.contains("[custody.pkcs11]"),
            "{e}"
        );
    }

    #[test]
    fn custody_protection_parses_and_rejects_unknown_kinds() {
        let c = Config::parse(
            Path::new("c.toml"),
            &format!("{GOOD}[custody]\nprotection = \"passphrase\"\n"),
        )
        .unwrap();
        assert_eq!(
            c.custody.protection,
            crate::custody::KekSource::Passphrase {
                passphrase_env: "CERTCONN_KEYSTORE_PASSPHRASE".into()
            }
        );
        assert_eq!(c.custody.pkcs11, None);
        let e = Config::parse(
            Path::new("c.toml"),
            &format!("{GOOD}[custody]\nprotection = \"rot13\"\n"),
        )
        .unwrap_err()
        .to_string();
        // The [custody] table is read as a whole (see CustodyConfig), so the error points at it.
        assert!(e.contains("rot13") && e.contains("line 14"), "{e}");
    }

    #[test]
    fn bad_subject_is_reported() {
        let e = Config::parse(Path::new("c.toml"), &GOOD.replace("CN=Test CA", "not a dn"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("keys.ca.self_signed.subject") && e.contains("line 7"),
            "{e}"
        );
    }
}
