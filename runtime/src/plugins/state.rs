//! What one plugin store holds: a locked-down WASI context, the HTTP hooks, resource limits,
//! and the custody grants of the backend instance it runs for.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime::ResourceLimiter;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::http::{HttpAccess, HttpPolicy};
use crate::crypto::AlgorithmPolicy;
use crate::custody::Grants;

/// Bytes of a plugin's stderr kept, to explain a panic in the job's error.
const STDERR_CAPTURE: usize = 16 * 1024;

/// Which plugin version a store runs: what the signature trail and the policy's refusals name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PluginIdentity {
    /// `name version`.
    pub name_version: String,
    /// SHA-256 of the plugin file, hex.
    pub sha256: String,
}

/// Per-store data for one plugin call.
pub struct PluginState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    pub(crate) http_policy: HttpPolicy,
    pub(crate) limits: MemoryLimit,
    pub(crate) grants: Grants,
    pub(crate) policy: AlgorithmPolicy,
    pub(crate) backend: Arc<str>,
    pub(crate) plugin: Arc<PluginIdentity>,
    pub(crate) job: Option<Arc<str>>,
    pub(crate) log_lines_left: u32,
    pub(crate) stderr: MemoryOutputPipe,
    /// Why the journal could not record the call's last signature (so nothing was signed), when
    /// it could not: the host's failure, not the plugin's answer (see `backend`).
    pub(crate) journal_failure: Option<String>,
}

impl PluginState {
    /// A store state with no filesystem, no sockets, no environment, no arguments and no stdin;
    /// stderr is captured (bounded) for diagnostics.
    pub fn new(
        (backend, plugin): (Arc<str>, Arc<PluginIdentity>),
        job: Option<Arc<str>>,
        grants: Grants,
        http: Arc<HttpAccess>,
        policy: AlgorithmPolicy,
        memory_limit: usize,
        log_lines: u32,
    ) -> Self {
        let stderr = MemoryOutputPipe::new(STDERR_CAPTURE);
        let wasi = WasiCtxBuilder::new()
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        Self {
            wasi,
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            http_policy: HttpPolicy::new(backend.clone(), http),
            limits: MemoryLimit::new(memory_limit),
            grants,
            policy,
            backend,
            plugin,
            job,
            log_lines_left: log_lines,
            stderr,
            journal_failure: None,
        }
    }

    /// What the plugin said on stderr before it died: its panic message if it panicked
    /// (Rust prints `panicked at FILE:LINE:COL:` then the message), else its last line.
    pub fn last_stderr_line(&self) -> Option<String> {
        let bytes = self.stderr.contents();
        let text = String::from_utf8_lossy(&bytes);
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with("note: "))
            .collect();
        let said = match lines.iter().rposition(|l| l.contains("panicked at")) {
            Some(i) => lines[i..]
                .iter()
                .take(2)
                .copied()
                .collect::<Vec<_>>()
                .join(" "),
            None => (*lines.last()?).to_owned(),
        };
        Some(said.chars().take(500).collect())
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for PluginState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.http_policy,
        }
    }
}

/// A memory cap that remembers it was hit, so a trap can be explained as "memory limit".
pub struct MemoryLimit {
    max: usize,
    hit: Arc<AtomicBool>,
}

impl MemoryLimit {
    fn new(max: usize) -> Self {
        Self {
            max,
            hit: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn max_bytes(&self) -> usize {
        self.max
    }

    pub fn was_hit(&self) -> bool {
        self.hit.load(Ordering::Relaxed)
    }
}

impl ResourceLimiter for MemoryLimit {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max {
            self.hit.store(true, Ordering::Relaxed);
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}
