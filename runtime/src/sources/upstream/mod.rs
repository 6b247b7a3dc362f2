//! The upstream: certconn fetches its work from a device-management service over the connector
//! protocol (`docs/connector-protocol.md`, the messages in `certconn-connector`) and sends each
//! result back. Three loops:
//!
//! - `poll`: long-polls the service for work; journals each item through the one
//!   [`crate::jobs::Intake`] (the item's id is the idempotency key, the source `upstream`)
//!   *before* it acknowledges it, so an item is never lost and an item offered twice is one
//!   job. An item that cannot be a job fails alone: its failure is sent as its result.
//! - `report`: sends the outcome of every upstream job that ended — from the outbox, oldest
//!   first, several at once — until the service takes it, then marks it delivered in the
//!   journal.
//! - `heartbeat`: tells the service who this instance is and how it is; its answer's version
//!   policy is this version's lifecycle in the status.
//! - `identity`: renews the connector's identity certificate at two thirds of its lifetime
//!   (when the connector authenticates with its registered identity; [`identity`]).
//!
//! Faults back off with jitter (a `Retry-After` the service gives is honoured) and show in the
//! status: nothing is lost or duplicated while the service is away.

mod client;
mod heartbeat;
pub mod identity;
mod poll;
mod renewal;
mod report;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::watch;
use zeroize::Zeroizing;

use crate::config::ConfigPath;
use crate::jobs::Intake;
use crate::journal::Outbox;

pub use client::{Credentials, ServiceClient};
pub use heartbeat::InstanceReport;

/// The source name upstream jobs carry.
pub const SOURCE: &str = "upstream";

/// Items of a batch, and results of a report round, handled at once: their journal writes
/// share commits and their calls to the service overlap, where one at a time each waited for
/// the one before (a commit, then a round trip). Few enough not to flood the service with
/// connections.
const IN_FLIGHT: usize = 8;

/// Calls to the service at once, at most: a long poll, a batch's acknowledgements, a report
/// round's results (two loops, [`IN_FLIGHT`] each) and a heartbeat. The client keeps as many
/// connections; with fewer, every call beyond them made a connection and a handshake of its
/// own (393 connections for 1,051 items in `certconn bench --upstream --tls --identity`
/// against 16 with enough kept).
const CALLS_AT_ONCE: usize = 2 * IN_FLIGHT + 2;

/// `[upstream]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The service's URL: `https://…` (or `http://` to loopback, for trying it out).
    pub service: toml::Spanned<String>,
    /// File with a bearer token the service gave this connector (mode 0600). Without it the
    /// connector authenticates with the identity `certconn upstream register` got (mutual
    /// TLS), the way to run in production.
    pub token_file: Option<ConfigPath>,
    /// PEM file of the CAs the service's TLS certificate must chain to. Default: the CA the
    /// service gave at registration, else the system trust store.
    pub trust_anchors: Option<ConfigPath>,
    /// How long one long poll waits for work.
    #[serde(
        default = "default_wait",
        deserialize_with = "crate::config::in_range::<_, u64, 1, 60>"
    )]
    pub poll_wait_seconds: u64,
    /// Items asked for per poll.
    #[serde(
        default = "default_batch",
        deserialize_with = "crate::config::in_range::<_, usize, 1, 100>"
    )]
    pub batch: usize,
    /// How often the heartbeat reports this instance to the service.
    #[serde(
        default = "default_heartbeat",
        deserialize_with = "crate::config::in_range::<_, u64, 1, 3600>"
    )]
    pub heartbeat_seconds: u64,
}

fn default_heartbeat() -> u64 {
    60
}

fn default_wait() -> u64 {
    30
}

fn default_batch() -> usize {
    10
}

impl UpstreamConfig {
    /// The service URL is https, or http to loopback: the token and the work (device
    /// certificates, encrypted PFX passwords) do not cross a network in clear.
    pub fn check(&self, cx: &crate::config::Checker<'_>) -> Result<(), crate::config::ConfigError> {
        crate::sources::outbound::check_scheme(self.service.get_ref())
            .map_err(|why| cx.at(self.service.span(), "upstream.service", why))
    }
}

/// Why the upstream cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    #[error("upstream.service")]
    Service(#[from] crate::sources::outbound::TargetError),
    #[error("upstream.token_file")]
    Token(#[source] crate::files::FileError),
    #[error("upstream.token_file: {0}: no token in it (empty, or not UTF-8 text)")]
    EmptyToken(std::path::PathBuf),
    #[error("upstream: the connector's identity")]
    Identity(#[from] identity::IdentityError),
}

/// What the status page and `/v1/health` show of the upstream.
#[derive(Clone, Debug, Default, serde::Serialize, utoipa::ToSchema)]
pub struct UpstreamStatus {
    pub service: String,
    /// The service answers: the last poll got an answer (or, before the first long poll
    /// returns, a heartbeat did).
    pub connected: bool,
    /// When the last poll got an answer (RFC 3339).
    pub last_poll: Option<String>,
    /// The same, in milliseconds since the epoch, for the metrics.
    #[serde(skip)]
    pub last_poll_ms: Option<i64>,
    /// The last fault, until a call succeeds again.
    pub last_error: Option<String>,
    /// Items journaled from the service since start.
    pub received: u64,
    /// Results the service took since start.
    pub delivered: u64,
    /// Items that could not be jobs and were answered with their failure.
    pub refused: u64,
    /// When the service last answered a heartbeat (RFC 3339).
    pub last_heartbeat: Option<String>,
    /// Why the last heartbeat got no answer, until one does.
    pub heartbeat_error: Option<String>,
    /// Where this version stands in the service's version policy (from the last heartbeat).
    pub lifecycle: Option<crate::lifecycle::Lifecycle>,
    /// Work from the service not done yet, and results it has not taken yet (from the
    /// journal, when the status is read).
    pub backlog: Option<crate::journal::Backlog>,
    /// The connector's identity, when it authenticates with one.
    pub identity: Option<identity::IdentityStatus>,
    /// Why the last renewal of the identity failed, until one succeeds.
    pub identity_error: Option<String>,
}

/// The upstream source: the client, where work goes, and its status.
pub struct Upstream {
    client: ServiceClient,
    intake: Arc<Intake>,
    outbox: Arc<dyn Outbox>,
    wait: Duration,
    batch: usize,
    heartbeat: Duration,
    report: Arc<dyn InstanceReport>,
    identity: Option<Arc<identity::Identity>>,
    /// This instance's id, the subject its identity renewals ask for.
    instance: String,
    status: Mutex<UpstreamStatus>,
}

/// Where the upstream's state outside the journal lives: custody (the identity key) and the
/// data directory (the registration and the service's CA).
pub struct UpstreamState<'a> {
    pub keys: Arc<crate::custody::KeyStore>,
    pub data_dir: &'a std::path::Path,
    /// This instance's id.
    pub instance: String,
}

impl Upstream {
    /// Reads the token, or loads the registered identity, and prepares the client; a bad
    /// file or URL, or a connector not registered, stops the start.
    pub fn open(
        config: &UpstreamConfig,
        state: UpstreamState<'_>,
        intake: Arc<Intake>,
        outbox: Arc<dyn Outbox>,
        report: Arc<dyn InstanceReport>,
        proxy: Option<Arc<crate::proxy::Proxy>>,
        policy: &crate::crypto::AlgorithmPolicy,
    ) -> Result<Self, UpstreamError> {
        let service = config.service.get_ref();
        let (credentials, identity, anchors) = match &config.token_file {
            Some(file) => {
                let token = read_token(file)?;
                let anchors = config.trust_anchors.as_ref().map(|p| p.to_path_buf());
                (Credentials::Token(token), None, anchors)
            }
            None => {
                let identity = Arc::new(identity::Identity::load(
                    state.keys,
                    state.data_dir,
                    service,
                )?);
                let anchors = match &config.trust_anchors {
                    Some(p) => p.to_path_buf(),
                    None => identity::service_ca_file(state.data_dir),
                };
                (
                    Credentials::Identity(identity.clone()),
                    Some(identity),
                    Some(anchors),
                )
            }
        };
        let client = ServiceClient::new(service, anchors.as_deref(), credentials, proxy, policy)?;
        let status = UpstreamStatus {
            service: client.base().to_owned(),
            ..Default::default()
        };
        Ok(Self {
            client,
            intake,
            outbox,
            wait: Duration::from_secs(config.poll_wait_seconds),
            batch: config.batch,
            heartbeat: Duration::from_secs(config.heartbeat_seconds),
            report,
            identity,
            instance: state.instance,
            status: Mutex::new(status),
        })
    }

    /// Polls and reports until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        tracing::info!(event_id = 5001, service = %self.client.base(), "polling the upstream service for work");
        let poll = tokio::spawn(self.clone().poll_loop(shutdown.clone()));
        let report = tokio::spawn(self.clone().report_loop(shutdown.clone()));
        let heartbeat = tokio::spawn(self.clone().heartbeat_loop(shutdown.clone()));
        let identity = tokio::spawn(self.clone().identity_loop(shutdown));
        let _ = tokio::join!(poll, report, heartbeat, identity);
    }

    /// The status now, without the backlog (no journal read).
    pub fn status(&self) -> UpstreamStatus {
        let mut status = self
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        status.identity = self
            .identity
            .as_ref()
            .map(|i| i.status(crate::journal::now_secs()));
        status
    }

    /// When the identity certificate in use expires (Unix seconds), with an identity.
    pub fn identity_not_after(&self) -> Option<u64> {
        self.identity.as_ref().map(|i| i.not_after())
    }

    /// The status now with the backlog, as `/v1/health` and the status page show it.
    pub async fn status_with_backlog(&self) -> UpstreamStatus {
        let mut status = self.status();
        match self.outbox.backlog(SOURCE).await {
            Ok(b) => status.backlog = Some(b),
            Err(e) => tracing::warn!("the upstream's backlog: {}", crate::report::chain(&e)),
        }
        status
    }

    fn update(&self, change: impl FnOnce(&mut UpstreamStatus)) {
        change(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Records a fault (once per distinct message in the log, at warn) and returns how long
    /// to wait: the service's `Retry-After`, or backoff with jitter.
    fn fault(
        &self,
        what: &str,
        error: String,
        failures: u32,
        retry_after: Option<Duration>,
    ) -> Duration {
        let mut first = false;
        self.update(|s| {
            first = s.last_error.as_deref() != Some(error.as_str());
            s.last_error = Some(error.clone());
            if what == "poll" {
                s.connected = false;
            }
        });
        if first {
            tracing::warn!(event_id = 5002, service = %self.client.base(), %what, %error, "the upstream service: a call failed; retrying with backoff");
        }
        retry_after.unwrap_or_else(|| {
            Duration::from_millis(crate::jobs::scheduler::backoff_ms(500, 60_000, failures))
        })
    }
}

/// The token in `file`, kept only in zeroized memory.
fn read_token(file: &ConfigPath) -> Result<Zeroizing<String>, UpstreamError> {
    let raw = crate::files::read_protected(file).map_err(UpstreamError::Token)?;
    // No lossy copy: the token is only ever in zeroized memory.
    let token = std::str::from_utf8(&raw)
        .map(|t| Zeroizing::new(t.trim().to_owned()))
        .unwrap_or_default();
    if token.is_empty() {
        return Err(UpstreamError::EmptyToken(file.to_path_buf()));
    }
    Ok(token)
}

/// Waits `delay`, or until `shutdown`; true when shut down.
async fn pause(delay: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    let stopped = tokio::select! {
        () = tokio::time::sleep(delay) => false,
        _ = shutdown.wait_for(|s| *s) => true,
    };
    stopped || *shutdown.borrow()
}
