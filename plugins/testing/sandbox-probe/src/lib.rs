//! Test-only backend: on `issue` it does whatever its `mode` setting says, most of it hostile, so
//! the host's tests can prove that the sandbox holds and that one bad job hurts nothing else.
//!
//! Every mode that *should* be stopped by the host reports a breach in its error text if it is not,
//! so a test that only checks "the job failed" still catches a sandbox hole.

use certconn_sdk::bindings::wasi::http::outgoing_handler;
use certconn_sdk::bindings::wasi::http::types::{Fields, OutgoingRequest, Scheme};
use certconn_sdk::{
    error, Backend, BackendError, BackendInfo, Capabilities, IssueRequest, IssuedCertificate,
};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// loop | memory | read-file | env | http | fail | panic
    pub mode: String,
    /// For `read-file`.
    #[serde(default)]
    pub path: Option<String>,
    /// For `http`: host:port to call.
    #[serde(default)]
    pub authority: Option<String>,
}

pub struct Probe;

impl Backend for Probe {
    type Config = Config;

    fn describe() -> BackendInfo {
        BackendInfo {
            name: "sandbox-probe".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            capabilities: Capabilities::ISSUE,
            config_schema: r#"{"type":"object","required":["mode"]}"#.into(),
        }
    }

    fn issue(c: &Config, _request: IssueRequest) -> Result<IssuedCertificate, BackendError> {
        match c.mode.as_str() {
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = core::hint::black_box(n.wrapping_add(1));
                }
            }
            "memory" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![0xA5; 1 << 20]);
                    core::hint::black_box(&hoard);
                }
            }
            "read-file" => {
                let path = c.path.as_deref().unwrap_or("/etc/passwd");
                match std::fs::read(path) {
                    Ok(bytes) => Err(error::rejected(format!(
                        "SANDBOX BREACH: read {} bytes from {path}",
                        bytes.len()
                    ))),
                    Err(e) => Err(error::rejected(format!("read-file {path}: {e}"))),
                }
            }
            "env" => {
                let n = std::env::vars_os().count();
                Err(error::rejected(format!(
                    "environment variables visible: {n}"
                )))
            }
            "http" => Err(http_get(c.authority.as_deref().unwrap_or("127.0.0.1:9"))),
            "fail" => Err(error::transient("sandbox-probe always fails")),
            "panic" => panic!("sandbox-probe panicked on purpose"),
            other => Err(error::rejected(format!("unknown mode {other:?}"))),
        }
    }
}

/// Tries a plain HTTP GET; returns the error describing how it ended.
fn http_get(authority: &str) -> BackendError {
    let request = OutgoingRequest::new(Fields::new());
    let _ = request.set_scheme(Some(&Scheme::Http));
    let _ = request.set_authority(Some(authority));
    let _ = request.set_path_with_query(Some("/"));
    match outgoing_handler::handle(request, None) {
        Err(code) => error::rejected(format!("http to {authority} refused: {code:?}")),
        Ok(future) => {
            future.subscribe().block();
            match future.get() {
                Some(Ok(Ok(response))) => error::rejected(format!(
                    "SANDBOX BREACH: http to {authority} answered with status {}",
                    response.status()
                )),
                Some(Ok(Err(code))) => {
                    error::rejected(format!("http to {authority} refused: {code:?}"))
                }
                other => error::rejected(format!(
                    "http to {authority} ended oddly: {}",
                    other.is_some()
                )),
            }
        }
    }
}

certconn_sdk::export_backend!(Probe);
