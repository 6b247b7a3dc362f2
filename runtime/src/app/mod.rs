//! The composition root: opens the data directory, custody, the journal and the plugin engine
//! from the config, builds the steps, the scheduler and the sources on the small traits each
//! needs, and runs them. `serve`, `bench` and the tests all start certconn through here, so what
//! they exercise is what runs in production. Nothing in the library imports this module: it is
//! the one place that knows every concrete type (see `docs/design/layers.md`).

pub mod check;
mod config;
pub mod datadir;
mod fleet;
/// The fuzz targets' entries: they reach every parser, as the composition root does.
#[doc(hidden)]
pub mod fuzzing;
pub mod reload;
mod wiring;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::watch;
use zeroize::Zeroizing;

pub use config::Config;
pub use datadir::DataDirError;

use crate::crypto::fips::FipsStatus;
use crate::custody::{CustodyError, KeyStore};
use crate::jobs::{Intake, Profiles, Scheduler, StepSettings, Steps};
use crate::journal::{Journal, JournalError, PostgresJournal, SqliteJournal};
use crate::plugins::{PluginEngine, PluginError, Registry};
use crate::revocation::Publisher;
use crate::sources::api::connections::{self, LimitedListener, ListenerKind};
use crate::sources::api::deadlines::ListenerDeadlines;
use crate::sources::api::serve::serve;
use crate::sources::api::server::ApiState;
use crate::sources::api::tls::{IssuedCertificate, ServerCertificate, TlsListener};
use crate::sources::api::token::{self, TokenError};
use crate::sources::scep::{Ra, RaError, RaPorts};

/// The publishers each backend trusts, from the config's key files.
pub fn publisher_trust(
    config: &Config,
) -> Result<crate::plugins::signature::PublisherTrust, StartError> {
    crate::plugins::signature::PublisherTrust::load(
        &config.plugins.trusted_publishers,
        &config.backends,
    )
    .map_err(|(setting, source)| StartError::Publisher { setting, source })
}

/// Why certconn could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error("keeping the keys in memory out of core files (custody.allow_core_dumps)")]
    CoreDumps(#[source] std::io::Error),
    #[error(transparent)]
    Custody(#[from] CustodyError),
    #[error(transparent)]
    Provision(#[from] crate::pki::ca::ProvisionError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error("{0}")]
    Fips(String),
    #[error("{setting}")]
    Publisher {
        setting: String,
        #[source]
        source: crate::plugins::signature::SignatureError,
    },
    #[error("SCEP server")]
    Scep(#[from] RaError),
    #[error("the upstream service")]
    Upstream(#[from] crate::sources::upstream::UpstreamError),
    #[error("the update feed")]
    Update(#[from] crate::update::UpdaterError),
    #[error("the outbound proxy")]
    Proxy(#[from] crate::proxy::ProxyConfigError),
    #[error("intune")]
    Intune(#[from] crate::sources::intune::IntuneError),
    #[error("publishing revocation")]
    Revocation(#[from] crate::revocation::PublishError),
    #[error("{}", render_settings(path, backend, problems))]
    Settings {
        path: std::path::PathBuf,
        backend: String,
        /// Each refused setting, with its line in the config file when it was found.
        problems: Vec<(Option<usize>, crate::plugins::SettingError)>,
    },
}

fn render_settings(
    path: &std::path::Path,
    backend: &str,
    problems: &[(Option<usize>, crate::plugins::SettingError)],
) -> String {
    let mut out = format!(
        "config {}: backend {backend:?} refused its settings:",
        path.display()
    );
    for (line, e) in problems {
        let key = match e.setting() {
            Some(s) => format!("backends.{backend}.settings.{s}"),
            None => format!("backends.{backend}"),
        };
        match line {
            Some(l) => out.push_str(&format!("\n  line {l}: {key}: {}", e.message)),
            None => out.push_str(&format!("\n  {key}: {}", e.message)),
        }
    }
    out
}

impl StartError {
    /// A plugin's refusal of its settings, pointed at the lines of `config` it is about.
    fn from_plugin(config: &Config, e: PluginError) -> Self {
        match e {
            PluginError::Config { backend, errors } => {
                let problems = errors
                    .into_iter()
                    .map(|e| {
                        let line = e
                            .setting()
                            .and_then(|s| config.setting_line(&backend, s))
                            .or_else(|| config.setting_line(&backend, "settings"));
                        (line, e)
                    })
                    .collect();
                Self::Settings {
                    path: config.source_path.clone(),
                    backend,
                    problems,
                }
            }
            other => Self::Plugin(other),
        }
    }
}

/// Why the running daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("binding the API to {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the API address to the data directory")]
    Address(#[source] crate::files::FileError),
    #[error("the API server stopped")]
    Api(#[source] std::io::Error),
    #[error(transparent)]
    Tls(#[from] crate::sources::api::tls::ApiTlsError),
    #[error("the scheduler stopped abnormally")]
    Scheduler(#[source] tokio::task::JoinError),
}

/// Where a pending job's device key is shared with the fleet: the journal, when it is one a
/// fleet shares (PostgreSQL) and custody has a KEK to seal under. Without a KEK the keys stay
/// on the instance that made them, and a job pending at a CA can only be finished there.
fn shared_keys(
    config: &Config,
    keys: &KeyStore,
    journal: &Arc<dyn Journal>,
) -> Option<Arc<dyn crate::journal::SharedKeys>> {
    if !config.journal.is_postgres() {
        return None;
    }
    // Only a backend that reaches a CA out there answers pending (or keeps a key over a call).
    let reaches_outside = config.backends.values().any(|b| !b.http.allow.is_empty());
    if !keys.seals() {
        if !reaches_outside {
            return None;
        }
        tracing::warn!(
            "custody.protection is none: the device keys of jobs pending at a CA stay on this \
             instance, and another cannot finish them if it stops; give every instance the same \
             custody.protection key file to share them sealed in the journal"
        );
        return None;
    }
    Some(journal.clone())
}

/// How often the revocation publisher looks at the ledger: the longest a revocation waits
/// for its CRL (plus `after_revoke_seconds`). The look is one indexed query per CA.
const PUBLISH_TICK: std::time::Duration = std::time::Duration::from_secs(1);
/// How often the SCEP RA checks whether its next certificate is due: its points are months
/// apart, so an hour late is nothing.
const RA_TICK: std::time::Duration = std::time::Duration::from_secs(3600);
/// How often old job results are looked for: retention is counted in days, so an hour late is
/// nothing. A sweep that finds nothing reads up to the first young result on SQLite, and the
/// outbox once on PostgreSQL.
const RETENTION_TICK: std::time::Duration = std::time::Duration::from_secs(3600);

/// A started connector: everything opened and wired, nothing running yet.
pub struct App {
    pub config: Config,
    /// Probed once at start: the self-test is not free, and the module cannot change under us.
    pub fips: FipsStatus,
    pub keys: Arc<KeyStore>,
    pub journal: Arc<dyn Journal>,
    pub engine: Arc<PluginEngine>,
    pub registry: Arc<Registry>,
    pub intake: Arc<Intake>,
    pub scheduler: Arc<Scheduler>,
    /// The SCEP server's RA, when `[scep]` is configured.
    pub scep: Option<Arc<Ra>>,
    /// CRLs and OCSP, when `[revocation]` is configured.
    pub revocation: Option<Arc<Publisher>>,
    /// The device-management service work comes from, when `[upstream]` is configured.
    pub upstream: Option<Arc<crate::sources::upstream::Upstream>>,
    /// Intune's revocation requests, when `intune.revocation` is on.
    pub intune_revocation: Option<Arc<crate::sources::intune::revocation::RevocationPoller>>,
    /// The signed update feed, when `[update]` is configured.
    pub updater: Option<Arc<crate::update::Updater>>,
    /// Applies a changed `[backends]`/`[profiles]` without a restart.
    pub reloader: Arc<reload::Reloader>,
    /// This instance's id (`<data_dir>/instance-id`).
    pub instance: String,
    /// What this instance reports of itself, to the upstream service and to the fleet.
    report: Arc<wiring::HeartbeatReport>,
    _lock: std::fs::File,
}

impl App {
    /// Opens everything the config names, creating first-start state (data directory, keys and
    /// their self-signed certificates). Any failure stops start-up with the reason.
    pub async fn open(config: Config) -> Result<Self, StartError> {
        let fips = FipsStatus::probe(config.crypto.fips);
        if let Some(reason) = fips.refusal() {
            return Err(StartError::Fips(reason));
        }
        let lock = datadir::lock(&config.data_dir)?;
        let instance = datadir::instance_id(&config.data_dir)?;
        // The engine before any secret is read, so that the process can stop being dumpable
        // in between (`custody::core_dumps` says why that order).
        let engine = Arc::new(PluginEngine::new(
            &config.cache_dir(),
            &config.engine_limits(),
        )?);
        crate::custody::core_dumps::deny_unless_allowed(&config.custody)
            .map_err(StartError::CoreDumps)?;
        let keys = Arc::new(KeyStore::open(&config.keys_dir(), &config.custody)?);
        keys.assign_roles(config.key_roles());
        crate::pki::ca::provision(&keys, &config.keys)?;
        let journal: Arc<dyn Journal> = if config.journal.is_postgres() {
            Arc::new(PostgresJournal::open(&config.journal, &instance, config.crypto.fips).await?)
        } else {
            Arc::new(SqliteJournal::open(&config.journal_path(), &instance)?)
        };
        journal.serve_only(config.served_backends().as_deref());
        // Before any backend loads: no CA signature without its trail entry.
        keys.record_signatures_in(journal.clone());
        let forgotten = wiring::forget_finished_pending_keys(&keys, &*journal).await;
        if forgotten > 0 {
            tracing::info!(
                keys = forgotten,
                "removed the device keys of jobs that ended while this instance was away"
            );
        }
        let released = journal.release_held().await?;
        if released > 0 {
            tracing::info!(
                jobs = released,
                "resuming jobs that were running when certconn stopped"
            );
        }
        let proxy = crate::proxy::Proxy::open(&config.proxy)?;
        if let Some(p) = &proxy {
            tracing::info!(proxy = %p.url(), "outbound connections go through the proxy");
        }
        let registry = Arc::new(
            Registry::load(
                engine.clone(),
                &config.plugins.dir,
                &config.backends,
                keys.clone(),
                config.policy(),
                proxy.clone(),
                publisher_trust(&config)?,
            )
            .await
            .map_err(|e| StartError::from_plugin(&config, e))?,
        );
        let custody = Arc::new(wiring::StoreCustody {
            keys: keys.clone(),
            shared: shared_keys(&config, &keys, &journal),
        });
        let profiles = Arc::new(Profiles::new(config.profiles.clone()));
        let steps = Steps::new(
            StepSettings {
                profiles: profiles.clone(),
                pfx_iterations: config.pfx.iterations,
                policy: config.policy(),
            },
            custody.clone(),
            Arc::new(wiring::RegistryBackends {
                registry: registry.clone(),
                serves: config.served_backends().map(|s| s.into_iter().collect()),
            }),
            journal.clone(),
        );
        let scheduler = Arc::new(Scheduler::new(
            journal.clone(),
            Arc::new(steps),
            &config.jobs,
            config.jobs.workers(&config.journal),
        ));
        let intake = Arc::new(Intake::new(
            journal.clone(),
            journal.clone(),
            config.profile_routes(),
            config.backends.keys().cloned(),
            custody,
        ));
        let revocation = match &config.revocation {
            Some(rc) => Some(Arc::new(
                Publisher::open(rc, keys.clone(), journal.clone()).await?,
            )),
            None => None,
        };
        let intune = match &config.intune {
            Some(ic) => Some(Arc::new(crate::sources::intune::Intune::open(
                ic.clone(),
                keys.clone(),
                proxy.clone(),
                config.policy(),
            )?)),
            None => None,
        };
        let scep = match &config.scep {
            Some(sc) => Some(Arc::new(Ra::open(
                sc,
                keys.clone(),
                config.policy(),
                RaPorts {
                    intake: intake.clone(),
                    crls: revocation.clone().map(|p| {
                        Arc::new(wiring::PublishedCrls(p))
                            as Arc<dyn crate::sources::scep::CrlSource>
                    }),
                    jobs: journal.clone(),
                    outbox: journal.clone(),
                    ledger: journal.clone(),
                    challenges: journal.clone(),
                    replay: journal.clone(),
                    authority: intune.clone().map(|i| {
                        Arc::new(crate::sources::intune::scep::IntuneScep(i))
                            as Arc<dyn crate::sources::scep::challenge::EnrolmentAuthority>
                    }),
                },
            )?)),
            None => None,
        };
        if let Some(ra) = &scep {
            ra.record_made().await;
        }
        let report = Arc::new(wiring::HeartbeatReport {
            instance: instance.clone(),
            registry: registry.clone(),
            jobs: journal.clone(),
            features: wiring::HeartbeatReport::features_of(&config, &fips),
            updates: std::sync::OnceLock::new(),
        });
        let upstream = match &config.upstream {
            Some(uc) => Some(Arc::new(crate::sources::upstream::Upstream::open(
                uc,
                crate::sources::upstream::UpstreamState {
                    keys: keys.clone(),
                    data_dir: &config.data_dir,
                    instance: instance.clone(),
                },
                intake.clone(),
                journal.clone(),
                report.clone(),
                proxy.clone(),
                &config.policy(),
            )?)),
            None => None,
        };
        let intune_revocation = intune.as_ref().filter(|i| i.revocation_enabled()).map(|i| {
            Arc::new(crate::sources::intune::revocation::RevocationPoller::new(
                i.clone(),
                intake.clone(),
                journal.clone(),
            ))
        });
        let updater = match &config.update {
            Some(uc) => Some(crate::update::Updater::new(
                uc.clone(),
                &config.data_dir,
                registry.clone(),
                &config.backends,
                config.policy(),
                proxy.clone(),
            )?),
            None => None,
        };
        if let Some(u) = &updater {
            let _ = report.updates.set(u.clone());
        }
        tracing::debug!(journal = %journal.location(), schema = journal.schema_version(), %instance, "opened");
        let reloader = Arc::new(reload::Reloader::new(
            &config,
            registry.clone(),
            profiles,
            intake.clone(),
            keys.clone(),
            journal.clone(),
        ));
        Ok(Self {
            config,
            reloader,
            fips,
            keys,
            journal,
            engine,
            registry,
            intake,
            scheduler,
            scep,
            revocation,
            upstream,
            intune_revocation,
            updater,
            instance,
            report,
            _lock: lock,
        })
    }

    /// The HTTP routes: the request API, and the SCEP server and the published CRLs and OCSP
    /// when configured; `/v1/openapi.json` serves the document of exactly these routes.
    pub fn router(
        &self,
        token: Zeroizing<String>,
        read_token: Zeroizing<String>,
        tls_not_after: Arc<std::sync::atomic::AtomicU64>,
        listener: String,
    ) -> axum::Router {
        let openapi = Arc::new(std::sync::OnceLock::new());
        let api = crate::sources::api::server::router(ApiState {
            intake: self.intake.clone(),
            jobs: self.journal.clone(),
            outbox: self.journal.clone(),
            registry: self.registry.clone(),
            keys: self.keys.clone(),
            fips: self.fips.clone(),
            scep: self.scep.clone(),
            ledger: self.journal.clone(),
            revocation: self.revocation.clone(),
            reload: self.reloader.clone(),
            token,
            read_token,
            watched_keys: self.config.keys.keys().cloned().collect(),
            tls_not_after,
            listener,
            max_connections: self.config.api.max_connections,
            plain_listener: self.config.api.plain_listen.is_some(),
            upstream: self.upstream.clone(),
            intune_revocation: self.intune_revocation.clone(),
            updates: self
                .updater
                .clone()
                .map(|u| u as Arc<dyn crate::lifecycle::Updates>),
            max_body_bytes: self.config.api.max_body_bytes,
            fleet: self.journal.clone(),
            fleet_heartbeat: std::time::Duration::from_secs(self.config.fleet.heartbeat_seconds),
            shared_journal: self.config.journal.is_postgres(),
            instance: self.instance.clone(),
            journal_location: self.journal.location(),
            health_counts: Default::default(),
            openapi: openapi.clone(),
        });
        let (router, mut document) =
            utoipa_axum::router::OpenApiRouter::with_openapi(crate::openapi::front_matter())
                .merge(self.documented_public_routes())
                .merge(api)
                .split_for_parts();
        crate::sources::api::server::document_shared_answers(&mut document);
        match document.to_pretty_json() {
            Ok(json) => {
                let _ = openapi.set(json);
            }
            Err(e) => tracing::error!("the OpenAPI document cannot be written: {e}"),
        }
        router.method_not_allowed_fallback(crate::sources::api::server::method_not_allowed)
    }

    /// What is served without the token (and, on `api.plain_listen`, without TLS): the SCEP
    /// endpoint and the published CRLs, OCSP and CA certificates, when configured.
    pub fn public_routes(&self) -> axum::Router {
        self.documented_public_routes()
            .split_for_parts()
            .0
            .method_not_allowed_fallback(crate::sources::api::server::method_not_allowed)
    }

    /// [`Self::public_routes`] with their OpenAPI document.
    fn documented_public_routes(&self) -> utoipa_axum::router::OpenApiRouter {
        let routes = utoipa_axum::router::OpenApiRouter::new();
        let routes = match &self.revocation {
            Some(p) => crate::revocation::http::routes(p.clone()).merge(routes),
            None => routes,
        };
        match &self.scep {
            Some(ra) => crate::sources::scep::http::routes(ra.clone()).merge(routes),
            None => routes,
        }
    }

    /// The sweep of old job results and jobs (`journal.keep_results_days`,
    /// `journal.keep_jobs_days`; none when results are kept forever). What is owed to the
    /// upstream service stays until delivered, whether or not one is configured now.
    fn result_retention(&self) -> Option<crate::journal::retention::ResultRetention> {
        let days = |d: u32| (d > 0).then(|| std::time::Duration::from_secs(u64::from(d) * 86_400));
        let keep = days(self.config.journal.keep_results_days);
        // A job stays at least as long as its result: with results kept for ever, so are the
        // jobs that have one, and a sweep would walk all of them every time, on the writer.
        let keep_jobs = keep.and_then(|results| {
            days(self.config.journal.keep_jobs_days).map(|jobs| jobs.max(results))
        });
        keep.is_some()
            .then(|| crate::journal::retention::ResultRetention {
                journal: self.journal.clone(),
                keep,
                keep_jobs,
                owed_to: vec![crate::sources::upstream::SOURCE],
                every: RETENTION_TICK,
            })
    }

    /// The API's certificate: from files, or issued (or taken up again from custody) from the
    /// CA key `api.tls.issuer` names.
    async fn api_certificate(
        &self,
        tls: &crate::sources::api::tls::ApiTlsConfig,
    ) -> Result<ServerCertificate, ServeError> {
        let Some(issuer) = &tls.issuer else {
            return Ok(ServerCertificate::Files);
        };
        let names = self
            .config
            .api
            .issued_names()
            .iter()
            .map(|n| {
                crate::sources::api::tls::issued::server_name_of(n)
                    .map_err(|_| crate::sources::api::tls::ApiTlsError::ServerName(n.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let plan = crate::sources::api::tls::issued::IssuePlan {
            issuer: issuer.get_ref().clone(),
            names,
            validity_days: tls.validity_days,
        };
        let issued = IssuedCertificate::open(
            self.keys.clone(),
            plan,
            &self.config.data_dir,
            crate::journal::now_secs(),
        )
        .await?;
        Ok(ServerCertificate::Issued(Arc::new(issued)))
    }

    /// Binds `addr` and writes the address it got to `file` (the readiness signal scripts and
    /// tests wait for; the port, when `addr` asks for port 0).
    async fn bind(
        &self,
        addr: SocketAddr,
        file: &std::path::Path,
    ) -> Result<tokio::net::TcpListener, ServeError> {
        let bind_error = |source| ServeError::Bind { addr, source };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(bind_error)?;
        let bound = listener.local_addr().map_err(bind_error)?;
        crate::files::write_atomic(file, format!("{bound}\n").as_bytes(), 0o644)
            .map_err(ServeError::Address)?;
        Ok(listener)
    }

    /// Runs the scheduler until `shutdown` turns true; jobs in flight finish first.
    pub async fn run_scheduler(&self, shutdown: watch::Receiver<bool>) {
        self.scheduler.clone().run(shutdown).await
    }

    /// Watches the plugins directory and rescans it periodically until `shutdown` turns true:
    /// new and changed plugin versions are loaded without a restart.
    pub async fn run_plugin_watcher(&self, shutdown: watch::Receiver<bool>) {
        let plugins = &self.config.plugins;
        crate::plugins::watch::run(
            self.registry.clone(),
            plugins.watch,
            std::time::Duration::from_secs(plugins.rescan_seconds),
            shutdown,
        )
        .await
    }

    /// Serves until `shutdown` turns true: binds the API (writing the address it got to
    /// `<data_dir>/api.addr`, the readiness signal for scripts and tests, and sending it on
    /// `ready`, for the service manager), runs the scheduler
    /// and the plugin watcher, then drains: the API stops taking requests, jobs in flight end.
    pub async fn serve(
        &self,
        shutdown: watch::Receiver<bool>,
        ready: tokio::sync::oneshot::Sender<SocketAddr>,
    ) -> Result<(), ServeError> {
        let token_path = self.config.token_file();
        let token = token::load_or_create(&token_path)?;
        let read_token = token::load_or_create(&self.config.read_token_file())?;
        let api_config = &self.config.api;
        // The certificate and key are read, or issued, before anything listens: a bad file or
        // an issuer that cannot issue stops the start.
        let (tls, issued) = match &api_config.tls {
            Some(t) => {
                let source = self.api_certificate(t).await?;
                let config =
                    crate::sources::api::tls::server_config(t, &source, &self.config.policy())?;
                let issued = match source {
                    ServerCertificate::Issued(i) => Some(i),
                    ServerCertificate::Files => None,
                };
                (Some(config), issued)
            }
            None => (None, None),
        };
        let tls_not_after = match (&issued, &api_config.tls) {
            (Some(i), _) => i.not_after(),
            (None, Some(t)) => Arc::new(std::sync::atomic::AtomicU64::new(
                crate::sources::api::tls::certificate_not_after(t).unwrap_or(0),
            )),
            (None, None) => Arc::default(),
        };
        // Before anything is bound, and said before api.addr is written.
        let listeners = if api_config.plain_listen.is_some() {
            2
        } else {
            1
        };
        match connections::raise_file_limit() {
            Some(limit) => {
                if let Some(warning) = connections::file_limit_warning(
                    limit,
                    listeners,
                    api_config.max_connections as u64,
                ) {
                    tracing::warn!(event_id = 5605, "{warning}");
                }
            }
            None => tracing::warn!(
                "the process's open-file limit could not be read: {}",
                std::io::Error::last_os_error()
            ),
        }
        let plain = match api_config.plain_listen {
            Some(addr) => Some(self.bind(addr, &self.config.plain_addr_file()).await?),
            None => None,
        };
        // Bound last: api.addr says everything is listening.
        let listener = self
            .bind(*api_config.listen.get_ref(), &self.config.api_addr_file())
            .await?;
        let bound = listener.local_addr().map_err(|source| ServeError::Bind {
            addr: *api_config.listen.get_ref(),
            source,
        })?;
        if tls.is_some() && self.scep.is_some() && plain.is_none() {
            tracing::warn!("the SCEP endpoint is served over TLS only (on the API listener); most SCEP clients need plain HTTP: set api.plain_listen");
        }
        let listening = listener_description(
            bound,
            api_config.tls.as_ref(),
            plain.as_ref().and_then(|l| l.local_addr().ok()),
        );
        let _ = ready.send(bound);
        tracing::info!(api = %bound, tls = tls.is_some(), plain = ?plain.as_ref().and_then(|l| l.local_addr().ok()), token_file = %token_path.display(), backends = self.registry.instances().len(), "certconn is serving");

        let scheduler = tokio::spawn(self.scheduler.clone().run(shutdown.clone()));
        if let Some(p) = &self.revocation {
            tokio::spawn(p.clone().run(PUBLISH_TICK, shutdown.clone()));
        }
        if let Some(ra) = &self.scep {
            tokio::spawn(ra.clone().run(RA_TICK, shutdown.clone()));
        }
        if let Some(issued) = issued {
            tokio::spawn(issued.run(shutdown.clone()));
        }
        if let Some(poller) = &self.intune_revocation {
            tokio::spawn(poller.clone().run(shutdown.clone()));
        }
        if let Some(upstream) = &self.upstream {
            tokio::spawn(upstream.clone().run(shutdown.clone()));
        }
        if let Some(updater) = &self.updater {
            tokio::spawn(updater.clone().run(shutdown.clone()));
        }
        if let Some(retention) = self.result_retention() {
            tokio::spawn(retention.run(shutdown.clone()));
        }
        tokio::spawn(
            fleet::FleetHeartbeat {
                registry: self.journal.clone(),
                plugins: self
                    .config
                    .journal
                    .is_postgres()
                    .then(|| self.registry.clone()),
                report: self.report.clone(),
                serves: self.config.served_backends(),
                every: std::time::Duration::from_secs(self.config.fleet.heartbeat_seconds),
            }
            .run(shutdown.clone()),
        );
        let watcher = self.run_plugin_watcher(shutdown.clone());
        let router = self.router(token, read_token, tls_not_after, listening);
        let deadlines = self.config.api.client_deadlines();
        let max_connections = self.config.api.max_connections;
        let per_address = self.config.api.max_connections_per_address;
        let listener =
            LimitedListener::new(listener, ListenerKind::Api, max_connections, per_address);
        let idle = listener.idle_connections();
        let api_deadlines = ListenerDeadlines::new(ListenerKind::Api, deadlines);
        let api: Pin<Box<dyn Future<Output = ()> + Send>> = match tls {
            Some(config) => Box::pin(serve(
                TlsListener::new(listener, config).map_err(ServeError::Api)?,
                router,
                api_deadlines,
                idle,
                shutdown.clone(),
            )),
            None => Box::pin(serve(
                listener,
                router,
                api_deadlines,
                idle,
                shutdown.clone(),
            )),
        };
        let plain: Pin<Box<dyn Future<Output = ()> + Send>> = match plain {
            Some(listener) => {
                let listener = LimitedListener::new(
                    listener,
                    ListenerKind::Plain,
                    max_connections,
                    per_address,
                );
                let idle = listener.idle_connections();
                Box::pin(serve(
                    listener,
                    self.public_routes(),
                    ListenerDeadlines::new(ListenerKind::Plain, deadlines),
                    idle,
                    shutdown.clone(),
                ))
            }
            None => Box::pin(async {}),
        };
        tokio::join!(api, plain, watcher);
        scheduler.await.map_err(ServeError::Scheduler)?;
        Ok(())
    }
}

/// How the API is served, as the status page says it: the address, TLS and where its
/// certificate comes from, and the plain listener beside it.
fn listener_description(
    bound: SocketAddr,
    tls: Option<&crate::sources::api::tls::ApiTlsConfig>,
    plain: Option<SocketAddr>,
) -> String {
    let api = match tls {
        Some(t) => match &t.issuer {
            Some(issuer) => format!(
                "https://{bound}, certificate issued by {} (renews itself)",
                issuer.get_ref()
            ),
            None => format!("https://{bound}, certificate from files"),
        },
        None => format!("http://{bound} (plain HTTP)"),
    };
    match plain {
        Some(p) => format!("{api}; SCEP and /pki also on http://{p}"),
        None => api,
    }
}
