//! The request API: JSON over HTTP on loopback by default, bearer-token authenticated. It is a
//! source of work (`POST /v1/jobs/{issue,import,revoke}`, results by `GET /v1/jobs/ID/result`)
//! and the administrator's window on the daemon (jobs, plugins, health).
//!
//! - `token`: the API token file (created 0600 at first start).
//! - `server`: routes and handlers.
//! - `certificates`: the ledger for administrators.
//! - `client`: what the CLI uses to talk to a running daemon.
//! - `connections`: how many connections a listener holds at once (`api.max_connections`).
//! - `serve`: the accept loop, with a deadline for each request's headers.
//! - `deadlines`: the deadlines for a request's body and for taking its answer.
//! - `idle`: the connections between requests, one of which a listener at its limit closes.
//! - `tls`: the API over TLS, and client certificates.
//! - `metrics`: `GET /metrics` for Prometheus.
//! - `status`: the status page and `GET /v1/status`.
//! - `fleet`: `GET /v1/fleet`, the instances sharing the journal.
//! - `job_counts`: the job counts `GET /v1/health` shows, at most a second old.

pub mod certificates;
pub mod client;
pub mod connections;
pub mod deadlines;
pub mod fleet;
pub mod idle;
pub mod job_counts;
mod metrics;
pub mod per_address;
pub mod serve;
pub mod server;
pub mod status;
pub mod tls;
pub mod token;
pub mod updates;

use std::net::SocketAddr;

use crate::config::ConfigPath;

/// `[api]`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Where the request API listens. Loopback by default; port 0 takes a free port and writes
    /// the address it got to `<data_dir>/api.addr`.
    #[serde(
        default = "default_listen",
        deserialize_with = "crate::config::listen_address"
    )]
    pub listen: toml::Spanned<SocketAddr>,
    /// Bearer token file; created with mode 0600 on first start. Default: `<data_dir>/api-token`.
    pub token_file: Option<ConfigPath>,
    /// The read-only token (it reads `/metrics` and `/v1/status` and nothing else), for a
    /// scraper or a person at the status page, who must not hold the token that issues and
    /// revokes; created with mode 0600 on first start. Default:
    /// `<data_dir>/api-read-token`.
    pub read_token_file: Option<ConfigPath>,
    /// Largest request body accepted.
    #[serde(
        default = "default_body_limit",
        deserialize_with = "crate::config::in_range::<_, usize, 1024, 1_073_741_824>"
    )]
    pub max_body_bytes: usize,
    /// How long a client has to send a request's headers, and how long a keep-alive
    /// connection may stay idle, in seconds; then the connection is closed. Without it, a
    /// client that sends nothing holds its connection (and a file descriptor) for ever.
    #[serde(
        default = "default_header_timeout",
        deserialize_with = "crate::config::in_range::<_, u64, 1, 3600>"
    )]
    pub header_timeout_seconds: u64,
    /// How long a request's body may take once its headers are in, in seconds, and a second
    /// more for every 500 bytes received; then the client gets 408 and the connection is
    /// closed. Without it, a client that sends headers and then a byte a minute holds its
    /// connection for ever.
    #[serde(
        default = "default_body_timeout",
        deserialize_with = "crate::config::in_range::<_, u64, 1, 3600>"
    )]
    pub body_timeout_seconds: u64,
    /// How long a write of an answer may wait for the client to take it, in seconds; then the
    /// connection is closed. Without it, a client that asks and never reads holds its
    /// connection for ever.
    #[serde(
        default = "default_send_timeout",
        deserialize_with = "crate::config::in_range::<_, u64, 1, 3600>"
    )]
    pub send_timeout_seconds: u64,
    /// How many connections each listener (`listen`, and `plain_listen`) holds at once, TLS
    /// handshakes included. At the limit the oldest connection idle between requests is
    /// closed to make room; while every one has a request in progress, further ones wait in
    /// the kernel's queue until one closes. The
    /// deadlines above bound how long a client holds a connection; this bounds how many, so
    /// a flood of them cannot take every file descriptor the journal and plugins need.
    #[serde(
        default = "default_max_connections",
        deserialize_with = "crate::config::in_range::<_, usize, 1, 1_000_000>"
    )]
    pub max_connections: usize,
    /// How many of a listener's connections one client address may hold (an IPv6 client: its
    /// /64); 0, the default, is no limit. A connection beyond it is closed as it is accepted.
    /// Without it one client whose requests are all in progress (slow bodies, each within its
    /// deadline) can hold every slot of `max_connections`. Leave it off behind a reverse proxy
    /// or NAT, where every client has the same address.
    #[serde(
        default,
        deserialize_with = "crate::config::in_range::<_, usize, 0, 1_000_000>"
    )]
    pub max_connections_per_address: usize,
    /// TLS for the API (and everything served on its listener).
    pub tls: Option<tls::ApiTlsConfig>,
    /// Serve the API in plain HTTP on an address other than loopback. The bearer token then
    /// crosses the network in clear, so it takes this explicit setting.
    #[serde(default)]
    pub allow_plain_http: bool,
    /// A second listener, plain HTTP, serving only what clients need without TLS and without
    /// the token: the SCEP endpoint (its messages are CMS-protected) and the published CRLs,
    /// OCSP and CA certificates. Port 0 takes a free port, written to `<data_dir>/plain.addr`.
    #[serde(default, deserialize_with = "crate::config::listen_address_opt")]
    pub plain_listen: Option<SocketAddr>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            token_file: None,
            read_token_file: None,
            max_body_bytes: default_body_limit(),
            header_timeout_seconds: default_header_timeout(),
            body_timeout_seconds: default_body_timeout(),
            send_timeout_seconds: default_send_timeout(),
            max_connections: default_max_connections(),
            max_connections_per_address: 0,
            tls: None,
            allow_plain_http: false,
            plain_listen: None,
        }
    }
}

fn default_header_timeout() -> u64 {
    30
}

fn default_body_timeout() -> u64 {
    30
}

fn default_send_timeout() -> u64 {
    60
}

fn default_max_connections() -> usize {
    1024
}

fn default_listen() -> toml::Spanned<SocketAddr> {
    toml::Spanned::new(0..0, SocketAddr::from(([127, 0, 0, 1], 7443)))
}

impl ApiConfig {
    /// Refuses an API that would carry its bearer token in clear over a network: a listener off
    /// loopback needs `[api.tls]`, or `allow_plain_http = true` for a network the administrator
    /// trusts (a TLS-terminating proxy on the same host, a private segment).
    pub fn check(&self, cx: &crate::config::Checker<'_>) -> Result<(), crate::config::ConfigError> {
        let listen = self.listen.get_ref();
        if !listen.ip().is_loopback() && self.tls.is_none() && !self.allow_plain_http {
            return Err(cx.at(
                self.listen.span(),
                "api.listen",
                format!(
                    "{listen} is reachable from the network, and the API's bearer token would cross it in clear; \
                     configure [api.tls] (certificate and key), listen on loopback, or set \
                     api.allow_plain_http = true if a TLS proxy or a trusted network protects it. \
                     SCEP clients that need plain HTTP can use api.plain_listen"
                ),
            ));
        }
        if let Some(tls) = &self.tls {
            tls.check(cx)?;
        }
        Ok(())
    }

    /// The deadlines each listener holds its clients to.
    pub fn client_deadlines(&self) -> deadlines::ClientDeadlines {
        deadlines::ClientDeadlines {
            header: std::time::Duration::from_secs(self.header_timeout_seconds),
            body: std::time::Duration::from_secs(self.body_timeout_seconds),
            send: std::time::Duration::from_secs(self.send_timeout_seconds),
        }
    }

    /// The names of the certificate certconn issues for the API (`api.tls.issuer`):
    /// `api.tls.names`, or [`tls::issued::default_names`].
    pub fn issued_names(&self) -> Vec<String> {
        match &self.tls {
            Some(tls) if !tls.names.is_empty() => {
                tls.names.iter().map(|n| n.get_ref().clone()).collect()
            }
            tls => tls::issued::default_names(
                tls.as_ref().and_then(|t| t.server_name.as_deref()),
                self.listen.get_ref().ip(),
            ),
        }
    }
}

fn default_body_limit() -> usize {
    1 << 20
}
