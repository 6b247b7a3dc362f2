//! The one TOML config file: the sections, each owned and checked by its module, composed here,
//! and the checks that span sections (a profile naming a missing backend, a lease shorter than a
//! backend's timeout), each reported at the line of the offending value.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::{self, Checker, ConfigError, ConfigPath};
use crate::crypto::AlgorithmPolicy;
use crate::custody::{CustodyConfig, KeyConfig, KeyRole};
use crate::jobs::{JobsConfig, ProfileConfig};
use crate::pki::pkcs12::PfxConfig;
use crate::plugins::{BackendConfig, EngineLimits, PluginsConfig};
use crate::revocation::RevocationConfig;
use crate::sources::api::ApiConfig;
use crate::sources::scep::ScepConfig;

/// The whole configuration.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Journal, key store, API token and issued files live here.
    pub data_dir: ConfigPath,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub crypto: AlgorithmPolicy,
    /// How the software key store is protected at rest, and the PKCS#11 token if any.
    #[serde(default)]
    pub custody: CustodyConfig,
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
    /// CRLs and OCSP for CAs whose key certconn holds, served on the API listener at `/pki/`.
    /// Off when absent.
    pub revocation: Option<RevocationConfig>,
    /// The device-management service certconn takes its work from (the connector protocol).
    /// Off when absent.
    pub upstream: Option<crate::sources::upstream::UpstreamConfig>,
    /// A Microsoft Intune tenant: its SCEP challenge validation (`scep.challenge = "intune"`).
    /// Off when absent.
    pub intune: Option<crate::sources::intune::IntuneConfig>,
    /// The site's outbound HTTP proxy, for every connection certconn opens to the outside
    /// (the upstream service, the plugins' granted HTTP).
    #[serde(default)]
    pub proxy: crate::proxy::ProxyConfig,
    /// Where the journal is: SQLite in the data directory (the default), or a PostgreSQL
    /// database a fleet of instances shares.
    #[serde(default)]
    pub journal: crate::journal::JournalConfig,
    /// This instance's place in a fleet: the backends it serves, how often it reports itself.
    #[serde(default)]
    pub fleet: FleetConfig,
    /// The signed update feed: the version lifecycle, and plugin updates as each backend's
    /// `update` policy allows. Off when absent.
    pub update: Option<crate::update::settings::UpdateConfig>,
    #[serde(skip)]
    pub source_path: PathBuf,
    /// The file as read, to point at a line when a plugin refuses a setting.
    #[serde(skip)]
    pub source_text: String,
}

/// `[fleet]`: this instance among the others on a shared journal.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// The backends this instance runs jobs for: CA pinning, when a CA is reachable from one
    /// site only. Jobs for other backends wait for an instance that serves one of theirs.
    /// Absent: every backend configured here.
    pub serves: Option<Vec<toml::Spanned<String>>>,
    /// Seconds between this instance's reports of itself (id, host, version, plugins,
    /// backends served) in the journal; an instance silent for three of them is `missing`.
    #[serde(
        default = "default_heartbeat_seconds",
        deserialize_with = "crate::config::in_range::<_, u64, 1, 3600>"
    )]
    pub heartbeat_seconds: u64,
}

fn default_heartbeat_seconds() -> u64 {
    10
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            serves: None,
            heartbeat_seconds: default_heartbeat_seconds(),
        }
    }
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
        let mut config: Config = config::parse(path, text)?;
        config.source_path = path.to_owned();
        config.source_text = text.to_owned();
        config.check(&Checker::new(path, text))?;
        Ok(config)
    }

    /// Each section's own checks, then the ones that span sections.
    fn check(&self, cx: &Checker<'_>) -> Result<(), ConfigError> {
        for (name, key) in &self.keys {
            key.check(name, &self.custody, cx)?;
        }
        for (name, b) in &self.backends {
            b.check(name, cx)?;
            for k in &b.keys {
                let reserved = [
                    crate::custody::grant::REQUEST_HANDLE,
                    crate::custody::grant::CURRENT_HANDLE,
                ];
                if reserved.contains(&k.get_ref().as_str()) {
                    return Err(cx.at(
                        k.span(),
                        format!("backends.{name}.keys"),
                        format!(
                            "{:?} is the handle certconn binds to a job's own key during a call; name the custody key otherwise",
                            k.get_ref()
                        ),
                    ));
                }
                let Some(key) = self.keys.get(k.get_ref()) else {
                    return Err(cx.at(
                        k.span(),
                        format!("backends.{name}.keys"),
                        format!("key {:?} is not declared in [keys]", k.get_ref()),
                    ));
                };
                if key.role().host_only() || self.host_made_key(k.get_ref()) {
                    return Err(cx.at(
                        k.span(),
                        format!("backends.{name}.keys"),
                        format!(
                            "key {:?} is the host's own ({}); it is never granted to a plugin",
                            k.get_ref(),
                            if key.role().host_only() {
                                format!("role {}", key.role().as_str())
                            } else {
                                "certconn makes and uses it itself".to_owned()
                            }
                        ),
                    ));
                }
            }
        }
        let known: Vec<&str> = self.backends.keys().map(String::as_str).collect();
        for (name, p) in &self.profiles {
            if let Err((setting, span, why)) = p.usage_limits() {
                return Err(cx.at(span, format!("profiles.{name}.{setting}"), why));
            }
            let mut seen = std::collections::BTreeSet::new();
            for (i, b) in std::iter::once(&p.backend).chain(&p.fallbacks).enumerate() {
                let key = if i == 0 {
                    format!("profiles.{name}.backend")
                } else {
                    format!("profiles.{name}.fallbacks")
                };
                if !self.backends.contains_key(b.get_ref()) {
                    return Err(cx.at(
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
                    return Err(cx.at(
                        b.span(),
                        key,
                        format!("backend {:?} is listed twice", b.get_ref()),
                    ));
                }
            }
        }
        if let Some(serves) = &self.fleet.serves {
            for b in serves {
                if !self.backends.contains_key(b.get_ref()) {
                    return Err(cx.at(
                        b.span(),
                        "fleet.serves",
                        format!(
                            "no backend named {:?} (configured: {})",
                            b.get_ref(),
                            known.join(", ")
                        ),
                    ));
                }
            }
        }
        match &self.update {
            Some(update) => {
                update.check().map_err(|(key, why)| cx.at(0..0, key, why))?;
                crate::update::plugin_policies(&self.backends, &update.plugins)
                    .map_err(|why| cx.at(0..0, "backends", why))?;
            }
            None => {
                if let Some((name, b)) = self.backends.iter().find(|(_, b)| b.update.is_some()) {
                    let span = b.update.as_ref().map(|u| u.span()).unwrap_or(0..0);
                    return Err(cx.at(
                        span,
                        format!("backends.{name}.update"),
                        "an update policy needs a feed: add an [update] section (url, root)",
                    ));
                }
            }
        }
        if self.journal.url.is_none() && self.journal.has_postgres_settings() {
            return Err(cx.at(
                0..0,
                "journal",
                "journal.password_env, password_file, trust_anchors, client_certificate and \
                 client_key are for a PostgreSQL journal: set journal.url, or remove them",
            ));
        }
        self.check_lease(cx)?;
        if let Err(e) = self.crypto.check_pbkdf2_iterations(self.pfx.iterations) {
            return Err(cx.section("pfx", "pfx.iterations", e.to_string()));
        }
        self.api.check(cx)?;
        self.proxy.check(cx)?;
        if let Some(upstream) = &self.upstream {
            upstream.check(cx)?;
        }
        if let Some(intune) = &self.intune {
            intune.check(cx)?;
            if let Some(key) = &intune.certificate_key {
                if !self.keys.contains_key(key.get_ref()) {
                    return Err(cx.at(
                        key.span(),
                        "intune.certificate_key",
                        format!("key {:?} is not declared in [keys]", key.get_ref()),
                    ));
                }
            }
        }
        if let Some(challenge) = self.scep.as_ref().and_then(|s| s.challenge.as_ref()) {
            if self.intune.is_none() {
                return Err(cx.at(
                    challenge.span(),
                    "scep.challenge",
                    "\"intune\" needs an [intune] section: the tenant and the app certconn asks Intune as",
                ));
            }
        }
        if let Some(rev) = &self.revocation {
            rev.check(cx)?;
            for (name, ca) in &rev.cas {
                self.check_ca_key(
                    cx,
                    &ca.key,
                    &format!("revocation.cas.{name}.key"),
                    "a CA's CRLs are signed by a key with role ca",
                )?;
            }
        }
        if let Some(scep) = &self.scep {
            scep.check(cx)?;
            if !self.profiles.contains_key(scep.profile.get_ref()) {
                return Err(cx.at(
                    scep.profile.span(),
                    "scep.profile",
                    format!("no profile named {:?}", scep.profile.get_ref()),
                ));
            }
            self.check_ca_key(
                cx,
                &scep.ca_key,
                "scep.ca_key",
                "the SCEP server's CA key has role ca",
            )?;
        }
        if let Some(issuer) = self.api.tls.as_ref().and_then(|t| t.issuer.as_ref()) {
            self.check_ca_key(
                cx,
                issuer,
                "api.tls.issuer",
                "the API's certificate is issued by a key with role ca",
            )?;
            if self.keys.contains_key(crate::sources::api::tls::ISSUED_KEY) {
                return Err(cx.section(
                    &format!("keys.{}", crate::sources::api::tls::ISSUED_KEY),
                    format!("keys.{}", crate::sources::api::tls::ISSUED_KEY),
                    "with api.tls.issuer, certconn makes and renews this key itself; name your key otherwise",
                ));
            }
        }
        Ok(())
    }

    /// `key` (at `setting`) is declared in `[keys]` and may sign certificates: role `ca` (or
    /// `general`, which predates roles); `why` says what needs it.
    fn check_ca_key(
        &self,
        cx: &Checker<'_>,
        key: &toml::Spanned<String>,
        setting: &str,
        why: &str,
    ) -> Result<(), ConfigError> {
        match self.keys.get(key.get_ref()).map(|k| k.role()) {
            None => Err(cx.at(
                key.span(),
                setting,
                format!("key {:?} is not declared in [keys]", key.get_ref()),
            )),
            Some(KeyRole::Ca | KeyRole::General) => Ok(()),
            Some(other) => Err(cx.at(
                key.span(),
                setting,
                format!("key {:?} has role {}; {why}", key.get_ref(), other.as_str()),
            )),
        }
    }

    /// The keys certconn makes and uses itself: the SCEP server's RA keys (every generation, and
    /// their encryption twins), the OCSP responders' keys, the API's TLS key when certconn
    /// issues the API's certificate, the upstream identity's keys (always: a registration
    /// may come before the config names the upstream), and the Intune app's certificate key.
    fn host_made_key(&self, name: &str) -> bool {
        let ra = self.scep.as_ref().is_some_and(|s| {
            let base = s.ra_key.as_str();
            name.strip_prefix(base).is_some_and(|rest| {
                rest.is_empty() || rest.starts_with('.') || rest.starts_with("-enc")
            })
        });
        let responder = self.revocation.as_ref().is_some_and(|r| {
            r.cas
                .keys()
                .any(|ca| crate::revocation::PublishedCa::responder_key(ca) == name)
        });
        let api = self.api.tls.as_ref().is_some_and(|t| t.issuer.is_some())
            && name == crate::sources::api::tls::ISSUED_KEY;
        let upstream = crate::sources::upstream::identity::is_identity_key(name);
        let intune = self
            .intune
            .as_ref()
            .and_then(|i| i.certificate_key.as_ref())
            .is_some_and(|k| k.get_ref() == name);
        ra || responder || api || upstream || intune
    }

    /// The role of each key `[keys]` declares, for custody.
    pub fn key_roles(&self) -> BTreeMap<String, crate::custody::KeyRole> {
        self.keys
            .iter()
            .map(|(name, k)| (name.clone(), k.role()))
            .collect()
    }

    /// A job must be able to outlive one plugin call without its lease running out: a lease at
    /// least as long as the longest backend timeout (the scheduler renews it every third).
    fn check_lease(&self, cx: &Checker<'_>) -> Result<(), ConfigError> {
        let lease = &self.jobs.lease_seconds;
        if *lease.get_ref() == 0 {
            return Err(cx.at(lease.span(), "jobs.lease_seconds", "must be at least 1"));
        }
        let longest = self
            .backends
            .iter()
            .max_by_key(|(_, b)| *b.timeout_seconds.get_ref());
        if let Some((name, b)) = longest {
            let timeout = *b.timeout_seconds.get_ref();
            if *lease.get_ref() < timeout {
                let message = format!(
                    "jobs.lease_seconds ({}) is shorter than backends.{name}.timeout_seconds \
                     ({timeout}): a job could outlive its lease; set lease_seconds to at least \
                     {timeout}",
                    lease.get_ref()
                );
                // Point at the lease when the file sets it, else at the timeout that outgrew it.
                return Err(if lease.span().is_empty() {
                    cx.at(
                        b.timeout_seconds.span(),
                        format!("backends.{name}.timeout_seconds"),
                        message,
                    )
                } else {
                    cx.at(lease.span(), "jobs.lease_seconds", message)
                });
            }
        }
        Ok(())
    }

    /// The line (1-based) of backend `backend`'s setting `path`, as a plugin names it
    /// (`ca_key`, `profiles.smime.validity_days`): in `[backends.B.settings…]` tables, an inline
    /// `settings = { … }` or dotted `settings.…` keys; else the backend's own table header. A
    /// plugin sees its settings as JSON; the administrator wrote TOML, and is told where.
    pub fn setting_line(&self, backend: &str, path: &str) -> Option<usize> {
        let lines: Vec<&str> = self.source_text.lines().collect();
        let key_of = |line: &str| -> Option<String> {
            let (key, _) = line.split_once('=')?;
            Some(key.trim().trim_matches('"').to_owned())
        };
        let header = |name: &str| {
            lines
                .iter()
                .position(|l| l.split('#').next().unwrap_or("").trim() == format!("[{name}]"))
        };
        let segments: Vec<&str> = path.split('.').filter(|s| !s.is_empty()).collect();
        let (last, parents) = segments.split_last()?;
        let table = std::iter::once(format!("backends.{backend}.settings"))
            .chain(parents.iter().map(|p| p.to_string()))
            .collect::<Vec<_>>()
            .join(".");
        // Keys under a table header, up to the next header.
        let under = |start: usize, wanted: &str| -> Option<usize> {
            lines[start + 1..]
                .iter()
                .take_while(|l| !l.trim_start().starts_with('['))
                .position(|l| key_of(l).as_deref() == Some(wanted))
                .map(|i| start + 1 + i + 1)
        };
        if let Some(found) = header(&table).and_then(|h| under(h, last)) {
            return Some(found);
        }
        let own = header(&format!("backends.{backend}"));
        if let Some(h) = own {
            let dotted = format!("settings.{}", segments.join("."));
            if let Some(found) = under(h, &dotted) {
                return Some(found);
            }
            // An inline table: `settings = { ca_key = "x" }`.
            let inline = lines[h + 1..]
                .iter()
                .take_while(|l| !l.trim_start().starts_with('['))
                .position(|l| {
                    key_of(l).as_deref() == Some("settings")
                        && l.split_once('{').is_some_and(|(_, rest)| {
                            rest.contains(&format!("{last} ="))
                                || rest.contains(&format!("{last}="))
                        })
                });
            if let Some(i) = inline {
                return Some(h + 1 + i + 1);
            }
        }
        own.or_else(|| header(&format!("backends.{backend}.settings")))
            .map(|h| h + 1)
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
            .as_ref()
            .map(ConfigPath::to_path_buf)
            .unwrap_or_else(|| self.data_dir.join("api-token"))
    }

    /// The read-only token's file (`api.read_token_file`).
    pub fn read_token_file(&self) -> PathBuf {
        self.api
            .read_token_file
            .as_ref()
            .map(ConfigPath::to_path_buf)
            .unwrap_or_else(|| self.data_dir.join("api-read-token"))
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.plugins
            .cache_dir
            .as_ref()
            .map(ConfigPath::to_path_buf)
            .unwrap_or_else(|| self.data_dir.join("cache"))
    }

    /// Each profile's route (its backend, then its fallbacks), for the intake.
    pub fn profile_routes(&self) -> impl Iterator<Item = (String, Vec<String>)> + '_ {
        self.profiles
            .iter()
            .map(|(name, p)| (name.clone(), p.route().map(str::to_owned).collect()))
    }

    /// The backends this instance runs jobs for (`fleet.serves`); `None`: all it configures.
    pub fn served_backends(&self) -> Option<Vec<String>> {
        self.fleet
            .serves
            .as_ref()
            .map(|s| s.iter().map(|b| b.get_ref().clone()).collect())
    }

    pub fn journal_path(&self) -> PathBuf {
        self.data_dir.join("journal.sqlite")
    }

    pub fn keys_dir(&self) -> PathBuf {
        self.data_dir.join("keys")
    }

    /// Where `serve` writes the address the API listens on (the port, when `listen` asks for
    /// port 0).
    pub fn api_addr_file(&self) -> PathBuf {
        self.data_dir.join("api.addr")
    }

    /// The API address clients use: the one the daemon wrote when it bound port 0, else
    /// `api.listen`.
    /// An unspecified address (`0.0.0.0`, `::`) is reached on loopback.
    pub fn api_address(&self) -> std::net::SocketAddr {
        let listen = *self.api.listen.get_ref();
        let mut addr = listen;
        if listen.port() == 0 {
            if let Some(bound) = std::fs::read_to_string(self.api_addr_file())
                .ok()
                .and_then(|t| t.trim().parse().ok())
            {
                addr = bound;
            }
        }
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        addr
    }

    /// A client for the daemon this config describes: its address, and TLS when `[api.tls]`
    /// is set.
    pub fn api_client(
        &self,
        token: zeroize::Zeroizing<String>,
    ) -> Result<crate::sources::api::client::ApiClient, crate::sources::api::tls::ApiTlsError> {
        use crate::sources::api::client::ApiClient;
        let addr = self.api_address();
        match &self.api.tls {
            Some(tls) => ApiClient::with_tls(
                addr,
                token,
                tls,
                &crate::sources::api::tls::trust_anchors(tls, &self.data_dir),
                &self.policy(),
            ),
            None => Ok(ApiClient::new(addr, token)),
        }
    }

    /// Where `serve` writes the address of `api.plain_listen` it got.
    pub fn plain_addr_file(&self) -> PathBuf {
        self.data_dir.join("plain.addr")
    }

    pub fn policy(&self) -> AlgorithmPolicy {
        self.crypto
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::custody::KeyAlgorithm;

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

    fn error(text: &str) -> String {
        Config::parse(Path::new("c.toml"), text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn fips_mode_refuses_pfx_iterations_below_sp_800_132() {
        let e = error(&format!(
            "{GOOD}[crypto]\nfips = true\n[pfx]\niterations = 999\n"
        ));
        assert!(e.contains("pfx.iterations"), "{e}");
        assert!(e.contains("PBKDF2 with 999 iterations"), "{e}");
        assert!(e.contains("at least 1000"), "{e}");
        assert!(e.contains("| [pfx]"), "{e}");
        for ok in [
            "[crypto]\nfips = true\n[pfx]\niterations = 1000\n",
            "[pfx]\niterations = 1\n",
        ] {
            Config::parse(Path::new("c.toml"), &format!("{GOOD}{ok}"))
                .unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn good_config_resolves_paths_against_its_directory() {
        let c = Config::parse(
            Path::new("/etc/certconn/certconn.toml"),
            &GOOD.replace(
                "settings = { ca_key = \"ca\" }",
                "settings = { ca_key = \"ca\" }\nhttp = { trust_anchors = \"anchors.pem\" }\nsettings_files = { x = \"/abs/x.pem\" }",
            ),
        )
        .unwrap();
        assert_eq!(c.data_dir.as_path(), Path::new("/etc/certconn/data"));
        assert_eq!(c.plugins.dir.as_path(), Path::new("/etc/certconn/plugins"));
        let http = &c.backends["local"].http;
        assert_eq!(
            http.trust_anchors.as_deref(),
            Some(Path::new("/etc/certconn/anchors.pem"))
        );
        assert_eq!(
            c.backends["local"].settings_files["x"].get_ref().as_path(),
            Path::new("/abs/x.pem")
        );
        assert_eq!(c.api.listen.get_ref().to_string(), "127.0.0.1:7443");
        assert_eq!(c.profiles["device"].key_algorithm, KeyAlgorithm::EcP256);
    }

    #[test]
    fn unknown_backend_names_key_and_line() {
        let e = error(&GOOD.replace("backend = \"local\"", "backend = \"nope\""));
        assert!(e.contains("line 13"), "{e}");
        assert!(e.contains("profiles.device.backend"), "{e}");
        assert!(e.contains("nope"), "{e}");
        assert!(e.contains("13 | backend = \"nope\""), "{e}");
    }

    #[test]
    fn fleet_and_journal_settings_are_checked_where_they_are_written() {
        let e = error(&format!(
            "{GOOD}[fleet]\nserves = [\"local\", \"elsewhere\"]\n"
        ));
        assert!(e.contains("fleet.serves"), "{e}");
        assert!(
            e.contains("no backend named \"elsewhere\" (configured: local)"),
            "{e}"
        );
        // A password file without a database to use it for is a mistake, not a no-op.
        let e = error(&format!(
            "{GOOD}[journal]\npassword_file = \"/etc/certconn/db-password\"\n"
        ));
        assert!(e.contains("set journal.url"), "{e}");
        let e = error(&format!(
            "{GOOD}[journal]\nurl = \"postgres://c@db/c\"\npool_size = 0\n"
        ));
        assert!(e.contains("pool_size"), "{e}");
        let ok = Config::parse(
            Path::new("c.toml"),
            &format!(
                "{GOOD}[journal]\nurl = \"postgres://c@db/c\"\n[fleet]\nserves = [\"local\"]\n"
            ),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(ok.journal.is_postgres());
        assert_eq!(ok.served_backends(), Some(vec!["local".to_owned()]));
        assert_eq!(
            ok.journal.pool_size,
            crate::journal::config::DEFAULT_POOL_SIZE
        );
        assert_eq!(ok.fleet.heartbeat_seconds, 10);
    }

    #[test]
    fn workers_default_by_journal_and_a_set_count_wins() {
        use crate::jobs::settings::{DEFAULT_WORKERS, DEFAULT_WORKERS_POSTGRES};
        let parse =
            |text: &str| Config::parse(Path::new("c.toml"), text).unwrap_or_else(|e| panic!("{e}"));
        let postgres = "[journal]\nurl = \"postgres://c@db/c\"\n";
        let sqlite = parse(GOOD);
        assert_eq!(sqlite.jobs.workers(&sqlite.journal), DEFAULT_WORKERS);
        let pg = parse(&format!("{GOOD}{postgres}"));
        assert_eq!(pg.jobs.workers(&pg.journal), DEFAULT_WORKERS_POSTGRES);
        assert_ne!(DEFAULT_WORKERS, DEFAULT_WORKERS_POSTGRES);
        for journal in ["", postgres] {
            let set = parse(&format!("{GOOD}{journal}[jobs]\nworkers = 3\n"));
            assert_eq!(set.jobs.workers(&set.journal), 3, "{journal}");
        }
        let e = error(&format!("{GOOD}[jobs]\nworkers = 0\n"));
        assert!(e.contains("workers"), "{e}");
    }

    #[test]
    fn a_call_bound_handle_cannot_be_granted_by_name() {
        for handle in ["request", "current"] {
            let text = GOOD
                .replace(
                    "[keys.ca]",
                    &format!("[keys.{handle}]\nalgorithm = \"ec-p256\"\n[keys.ca]"),
                )
                .replace("keys = [\"ca\"]", &format!("keys = [\"ca\", \"{handle}\"]"));
            let e = error(&text);
            assert!(
                e.contains("backends.local.keys") && e.contains("handle certconn binds"),
                "{e}"
            );
        }
    }

    #[test]
    fn a_keys_role_limits_who_may_be_granted_it() {
        // The host's own keys are never granted, whether by role or because certconn makes them.
        let ra = GOOD.replace(
            "[backends.local]",
            "[keys.ra]\nalgorithm = \"rsa-2048\"\nrole = \"scep-ra\"\n[backends.local]",
        );
        let e = error(&ra.replace("keys = [\"ca\"]", "keys = [\"ca\", \"ra\"]"));
        assert!(
            e.contains("backends.local.keys") && e.contains("host's own (role scep-ra)"),
            "{e}"
        );
        let made = format!(
            "{}[keys.scep-ra]\nalgorithm = \"rsa-2048\"\n[scep]\nca_key = \"ca\"\nprofile = \"device\"\nchallenge_file = \"c\"\n",
            GOOD.replace("keys = [\"ca\"]", "keys = [\"ca\", \"scep-ra\"]")
        );
        let e = error(&made);
        assert!(e.contains("certconn makes and uses it itself"), "{e}");
        // A self-signed key is a CA; saying otherwise is an error at the role's line.
        let e = error(&GOOD.replace(
            "self_signed = { subject = \"CN=Test CA\" }",
            "self_signed = { subject = \"CN=Test CA\" }\nrole = \"signing\"",
        ));
        assert!(e.contains("line 8: keys.ca.role"), "{e}");
        let c = Config::parse(Path::new("c.toml"), GOOD).unwrap();
        assert_eq!(c.key_roles()["ca"], KeyRole::Ca);
        let e = error(&GOOD.replace(
            "algorithm = \"ec-p256\"",
            "algorithm = \"ec-p256\"\nrole = \"boss\"",
        ));
        assert!(
            e.contains("keys.ca.role") || e.contains("unknown variant"),
            "{e}"
        );
    }

    #[test]
    fn unknown_field_and_bad_type_name_the_line() {
        let e = error(&GOOD.replace("[plugins]", "[plugins]\ndirr = 1"));
        assert!(e.contains("dirr") && e.contains("line 4"), "{e}");
        let e = error(&GOOD.replace("algorithm = \"ec-p256\"", "algorithm = \"ec-p999\""));
        assert!(e.contains("ec-p999") && e.contains("line 6"), "{e}");
    }

    #[test]
    fn a_value_out_of_range_is_reported_at_its_own_line_not_a_namesake() {
        // Two backends; the second one's memory_mb is wrong. The error must point at it, not at
        // the first line that mentions memory_mb.
        let text = GOOD.replace(
            "[profiles.device]",
            "[backends.other]\nplugin = \"local-ca\"\nmemory_mb = 64\n[backends.broken]\nplugin = \"local-ca\"\nmemory_mb = 0\n[profiles.device]",
        );
        let e = error(&text);
        assert!(
            e.contains("line 17") && e.contains("17 | memory_mb = 0"),
            "{e}"
        );
        assert!(e.contains("between 1 and 4096 (it is 0)"), "{e}");
    }

    #[test]
    fn a_lease_shorter_than_a_backend_timeout_is_refused() {
        let e = error(&GOOD.replace(
            "plugin = \"local-ca\"",
            "plugin = \"local-ca\"\ntimeout_seconds = 300",
        ));
        assert!(e.contains("backends.local.timeout_seconds"), "{e}");
        assert!(e.contains("at least 300"), "{e}");
        let e = error(&format!("{GOOD}[jobs]\nlease_seconds = 10\n"));
        assert!(
            e.contains("jobs.lease_seconds") && e.contains("line 15"),
            "{e}"
        );
        let e = error(&format!("{GOOD}[jobs]\nlease_seconds = 0\n"));
        assert!(e.contains("must be at least 1"), "{e}");
        // An enormous lease is no overflow.
        Config::parse(
            Path::new("c.toml"),
            &format!("{GOOD}[jobs]\nlease_seconds = 18446744073709551615\n"),
        )
        .unwrap();
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
        let e = error(&format!(
            "{GOOD}[custody.pkcs11]\nmodule = \"/x.so\"\ntoken = \"t\"\n"
        ));
        assert!(e.contains("pkcs11") && e.contains("token"), "{e}");
        let e = error(&GOOD.replace(
            "algorithm = \"ec-p256\"",
            "algorithm = \"ec-p256\"\nstore = \"pkcs11\"",
        ));
        assert!(
            e.contains("keys.ca") && e.contains("[custody.pkcs11]") && e.contains("line 7"),
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
        let e = error(&format!("{GOOD}[custody]\nprotection = \"rot13\"\n"));
        // The [custody] table is read as a whole (see CustodyConfig), so the error points at it.
        assert!(e.contains("rot13") && e.contains("line 14"), "{e}");
    }

    #[test]
    fn core_dumps_are_denied_unless_custody_allows_them() {
        let parse =
            |extra: &str| Config::parse(Path::new("/etc/c/c.toml"), &format!("{GOOD}{extra}"));
        assert!(!parse("").unwrap().custody.allow_core_dumps);
        assert!(!parse("[custody]\n").unwrap().custody.allow_core_dumps);
        let allowed =
            parse("[custody]\nallow_core_dumps = true\nkey_file = \"kek.bin\"\n").unwrap();
        assert!(allowed.custody.allow_core_dumps);
        assert_eq!(
            allowed.custody.protection,
            crate::custody::KekSource::KeyFile {
                key_file: Path::new("/etc/c/kek.bin").into()
            },
            "the setting is not taken for a kind of protection"
        );
        let e = error(&format!("{GOOD}[custody]\nallow_core_dumps = \"yes\"\n"));
        assert!(
            e.contains("allow_core_dumps: expected true or false, found string"),
            "{e}"
        );
    }

    #[test]
    fn custody_protection_defaults_to_none_or_to_the_kind_its_settings_name() {
        let parse =
            |extra: &str| Config::parse(Path::new("/etc/c/c.toml"), &format!("{GOOD}{extra}"));
        assert_eq!(
            parse("[custody]\n").unwrap().custody.protection,
            crate::custody::KekSource::None
        );
        assert_eq!(
            parse("[custody]\nkey_file = \"kek.bin\"\n")
                .unwrap()
                .custody
                .protection,
            crate::custody::KekSource::KeyFile {
                key_file: Path::new("/etc/c/kek.bin").into()
            }
        );
        assert_eq!(
            parse("[custody]\npassphrase_env = \"MY_PASS\"\n")
                .unwrap()
                .custody
                .protection,
            crate::custody::KekSource::Passphrase {
                passphrase_env: "MY_PASS".into()
            }
        );
        let e = parse("[custody]\nkey_file = \"k\"\ncredential = \"c\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("several kinds of protection"), "{e}");
    }

    #[test]
    fn bad_subject_is_reported() {
        let e = error(&GOOD.replace("CN=Test CA", "not a dn"));
        assert!(
            e.contains("keys.ca.self_signed.subject") && e.contains("line 7"),
            "{e}"
        );
    }

    #[test]
    fn scep_references_are_checked_at_their_line() {
        let e = error(&format!(
            "{GOOD}[scep]\nprofile = \"device\"\nca_key = \"missing\"\n"
        ));
        assert!(e.contains("scep.ca_key") && e.contains("line 16"), "{e}");
        let e = error(&format!(
            "{GOOD}[scep]\nprofile = \"device\"\nca_key = \"ca\"\nwait_seconds = 61\n"
        ));
        assert!(
            e.contains("between 0 and 60") && e.contains("line 17"),
            "{e}"
        );
    }

    /// Every configuration the documents show (their `toml` blocks, each set into the quick
    /// start's config as an administrator would paste it) is one certconn reads: a setting
    /// renamed or removed must not stay in the runbook, where it would stop `serve`.
    #[test]
    fn the_documents_show_only_settings_that_exist() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the runtime crate sits in the repository");
        let base: toml::Table = toml::from_str(
            &std::fs::read_to_string(root.join("examples/quickstart.toml")).unwrap(),
        )
        .unwrap();
        let mut checked = 0;
        let mut wrong = Vec::new();
        for doc in ["operations.md", "scep.md", "updates.md", "plugin-guide.md"] {
            let text = std::fs::read_to_string(root.join("docs").join(doc)).unwrap();
            let mut lines = text.lines().enumerate();
            while let Some((at, line)) = lines.next() {
                if line.trim() != "```toml" {
                    continue;
                }
                let block: String = lines
                    .by_ref()
                    .map(|(_, l)| l)
                    .take_while(|l| l.trim() != "```")
                    .flat_map(|l| [l, "\n"])
                    .collect();
                let fragment: toml::Table = match toml::from_str(&block) {
                    Ok(t) => t,
                    Err(e) => {
                        wrong.push(format!("docs/{doc}:{}: not TOML: {e}", at + 1));
                        continue;
                    }
                };
                // A plugin's manifest (plugin-guide.md) is not a certconn config.
                if fragment.contains_key("requests") {
                    continue;
                }
                let mut merged = base.clone();
                merge(&mut merged, fragment);
                checked += 1;
                if let Err(e) = crate::config::parse::<Config>(
                    Path::new("/etc/certconn/certconn.toml"),
                    &toml::to_string(&merged).unwrap(),
                ) {
                    wrong.push(format!("docs/{doc}:{}: {e}", at + 1));
                }
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
        assert!(
            checked >= 15,
            "only {checked} configurations found in the documents"
        );
    }

    fn merge(into: &mut toml::Table, from: toml::Table) {
        for (key, value) in from {
            match (into.get_mut(&key), value) {
                (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
                (_, value) => {
                    into.insert(key, value);
                }
            }
        }
    }
}
