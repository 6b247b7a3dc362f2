//! The request API: JSON over HTTP on loopback by default, bearer-token authenticated.
//!
//! - `token`: the API token file (created 0600 at first start).
//! - `server`: routes and handlers.
//! - `client`: what the CLI uses to talk to a running daemon.

pub mod client;
pub mod server;
pub mod token;
