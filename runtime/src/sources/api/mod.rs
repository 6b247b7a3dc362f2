//! The request API: JSON over HTTP on loopback by default, bearer-token authenticated. It is a
//! source of work (`POST /v1/jobs/{issue,import,revoke}`, results by `GET /v1/jobs/ID/result`)
//! and the administrator's window on the daemon (jobs, plugins, health).
//!
//! - `token`: the API token file (created 0600 at first start).
//! - `server`: routes and handlers.
//! - `certificates`: the ledger for administrators.
//! - `client`: what the CLI uses to talk to a running daemon.

pub mod certificates;
pub mod client;
pub mod server;
pub mod token;

use std::net::SocketAddr;

use crate::config::ConfigPath;

/// `[api]`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Where the request API listens. Loopback by default; port 0 takes a free port and writes
    /// the address it got to `<data_dir>/api.addr`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Bearer token file; created with mode 0600 on first start. Default: `<data_dir>/api-token`.
    pub token_file: Option<ConfigPath>,
    /// Largest request body accepted.
    #[serde(
        default = "default_body_limit",
        deserialize_with = "crate::config::in_range::<_, usize, 1024, 1_073_741_824>"
    )]
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
