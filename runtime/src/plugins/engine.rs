//! The one wasmtime [`Engine`]: component model, pooling allocator, epoch interruption, and an
//! on-disk cache of compiled components keyed by the engine's compatibility hash and the
//! component's SHA-256, so a restart does not recompile.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::bindings::v0_2::certconn::plugin::{crypto, custody, log, types};
use super::state::PluginState;
use super::PluginError;

/// Bytes of a freed instance's linear memory reset in place rather than unmapped.
const KEEP_RESIDENT_MEMORY: usize = 2 << 20;
/// Bytes of a freed instance's tables reset in place.
const KEEP_RESIDENT_TABLE: usize = 64 << 10;

/// How often the epoch advances; deadlines are counted in these ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Engine-wide limits. Per-backend limits are at most these.
#[derive(Clone, Debug)]
pub struct EngineLimits {
    /// Concurrent plugin instances across all backends.
    pub max_instances: u32,
    /// Largest linear memory any plugin may have.
    pub max_memory_bytes: usize,
}

impl Default for EngineLimits {
    fn default() -> Self {
        Self {
            max_instances: 256,
            max_memory_bytes: 256 << 20,
        }
    }
}

/// The engine, its linker and the compiled-component cache.
pub struct PluginEngine {
    engine: Engine,
    /// The engine's configuration without the pooling allocator: what [`Self::compile_apart`]
    /// compiles with.
    compile_config: Config,
    linker: Linker<PluginState>,
    cache_dir: PathBuf,
    _ticker: Arc<EpochTicker>,
}

struct EpochTicker {
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl PluginEngine {
    /// Builds the engine and links the host interfaces: WASI with nothing granted, `wasi:http`
    /// through the host's policy, and certconn's custody, crypto and log — for every contract
    /// line the host runs (see `bindings`), so one linker serves backends of any of them.
    pub fn new(cache_dir: &Path, limits: &EngineLimits) -> Result<Self, PluginError> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(limits.max_instances)
            .total_core_instances(limits.max_instances * 4)
            .total_memories(limits.max_instances * 2)
            .total_tables(limits.max_instances * 4)
            .total_stacks(limits.max_instances)
            .max_memory_size(limits.max_memory_bytes)
            .max_core_instance_size(4 << 20)
            .max_component_instance_size(1 << 20)
            .max_memories_per_component(4)
            .max_tables_per_component(8)
            // A fresh instance per call, but not fresh pages: a freed slot's memory is reset
            // to its initial image in place (only the pages the last call touched, found with
            // PAGEMAP_SCAN where the kernel has it) instead of being unmapped, which cost every
            // call page faults and a TLB shootdown on the other core (47 → 19 µs per bare
            // call, `certconn bench`). Isolation between calls is the same: the next call
            // sees the module's initial memory, nothing of the last.
            .linear_memory_keep_resident(KEEP_RESIDENT_MEMORY)
            .table_keep_resident(KEEP_RESIDENT_TABLE)
            .pagemap_scan(wasmtime::Enabled::Auto);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            // One thread per compilation: a plugin version loaded under load must not take
            // every core from the jobs in flight (see `compile_in_background`).
            .parallel_compilation(false)
            .epoch_interruption(true)
            .max_wasm_stack(1 << 20)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        if std::env::var_os("CERTCONN_WASM_PERFMAP").is_some() {
            // For `perf`: names the plugins' compiled functions in profiles (/tmp/perf-PID.map).
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config).map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        // Compiled code does not depend on the allocation strategy (wasmtime's
        // `PoolingAllocationConfig` docs), and a second pool would reserve its address space
        // again for nothing.
        let mut compile_config = config.clone();
        compile_config.allocation_strategy(InstanceAllocationStrategy::OnDemand);

        let mut linker = Linker::new(&engine);
        let link =
            |e: wasmtime::Error| PluginError::Engine(format!("linking host interfaces: {e:#}"));
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(link)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(link)?;
        types::add_to_linker::<_, HasSelf<PluginState>>(&mut linker, |s| s).map_err(link)?;
        custody::add_to_linker::<_, HasSelf<PluginState>>(&mut linker, |s| s).map_err(link)?;
        crypto::add_to_linker::<_, HasSelf<PluginState>>(&mut linker, |s| s).map_err(link)?;
        log::add_to_linker::<_, HasSelf<PluginState>>(&mut linker, |s| s).map_err(link)?;
        super::bindings::v0_1::add_to_linker(&mut linker).map_err(link)?;

        let ticker = Arc::new(EpochTicker {
            stop: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        });
        let stop = ticker.stop.clone();
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("certconn-epoch".into())
            .spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .map_err(|e| PluginError::Engine(format!("starting the epoch thread: {e}")))?;

        Ok(Self {
            engine,
            compile_config,
            linker,
            cache_dir: cache_dir.to_owned(),
            _ticker: ticker,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn linker(&self) -> &Linker<PluginState> {
        &self.linker
    }

    /// Compiles a package's component, or loads the cached compilation (keyed by the package's
    /// SHA-256).
    pub fn compile(
        &self,
        package: &super::package::PluginPackage,
    ) -> Result<Component, PluginError> {
        let (name, wasm) = (package.manifest.name.as_str(), package.bytes.as_slice());
        let mut hasher = DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        let dir = self.cache_dir.join(format!("{:016x}", hasher.finish()));
        let path = dir.join(format!("{}.cwasm", package.sha256));
        if path.exists() {
            match self.trusted_entry(&dir, &path) {
                // SAFETY: `deserialize_file` maps the file as native code and runs it; that is
                // sound only for the output of `Component::serialize` by a compatible engine,
                // unmodified since. The directory name is this engine's compatibility hash and
                // the file name the SHA-256 of the source component, both written by
                // `store_compiled` below; `trusted_entry` has just checked that the cache
                // directory, this subdirectory and the file are owned by certconn's user (or
                // root) and writable by nobody else, so nobody but certconn can have put or
                // changed it there.
                Ok(()) => match unsafe { Component::deserialize_file(&self.engine, &path) } {
                    Ok(c) => return Ok(c),
                    Err(e) => {
                        tracing::warn!(plugin = name, path = %path.display(), "discarding unusable compiled-plugin cache entry: {e:#}")
                    }
                },
                Err(e) => {
                    tracing::error!(
                        plugin = name,
                        "not loading the compiled-plugin cache entry (compiling instead): {}",
                        crate::report::chain(&e)
                    )
                }
            }
        }
        let compiled = self.compile_apart(name, wasm)?;
        // SAFETY: `deserialize` runs the bytes as native code; they are what
        // `precompile_component` made a moment ago in this process, from an engine with this
        // engine's configuration (but its allocator, which compiled code does not depend on),
        // and have not left memory since. wasmtime checks their compatibility all the same.
        let component = unsafe { Component::deserialize(&self.engine, &compiled) }
            .map_err(|e| PluginError::Engine(format!("loading the plugin just compiled: {e:#}")))?;
        if let Err(e) = self.store_compiled(&dir, &path, &compiled) {
            tracing::warn!(plugin = name, "could not cache the compiled plugin: {e}");
        }
        Ok(component)
    }

    /// Compiles a component on an engine of its own, dropped when it is done.
    ///
    /// Cranelift keeps the scratch space of every compilation (register allocator, function
    /// builder: about 16 MB after the soak's two plugins) in its engine for the next one, for
    /// as long as the engine lives; for the daemon's engine that was the life of the process,
    /// three quarters of its heap after a first start or a plugin update (a heap profile of
    /// `scripts/soak`, `SOAK_HEAPTRACK=1`). Compiled apart, that space goes with the engine and
    /// back to the kernel, and the code is loaded into the daemon's engine as a cached
    /// compilation is. A daemon's anonymous memory after a first start with two plugins
    /// (`local-ca`, `scep`): 37 MB before, 13 MB after; 5 MB from the cache, after a restart.
    fn compile_apart(&self, name: &str, wasm: &[u8]) -> Result<Vec<u8>, PluginError> {
        let engine =
            Engine::new(&self.compile_config).map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        let compiled = engine
            .precompile_component(wasm)
            .map_err(|e| PluginError::Invalid {
                plugin: name.into(),
                reason: format!("not a valid WebAssembly component: {e:#}"),
            });
        drop(engine);
        // What the compilation freed (its scratch space and the engine's) would stay resident.
        crate::process::heap::release_free();
        compiled
    }

    /// Checks that a cache entry may be trusted: see the SAFETY note in [`Self::compile`].
    fn trusted_entry(&self, dir: &Path, path: &Path) -> Result<(), crate::files::FileError> {
        crate::files::check_trusted_dir(&self.cache_dir)?;
        crate::files::check_trusted_dir(dir)?;
        crate::files::check_trusted_file(path)
    }

    fn store_compiled(&self, dir: &Path, path: &Path, compiled: &[u8]) -> Result<(), PluginError> {
        let cache = |e: crate::files::FileError| PluginError::Engine(crate::report::chain(&e));
        crate::files::private_dir(&self.cache_dir).map_err(cache)?;
        crate::files::private_dir(dir).map_err(cache)?;
        crate::files::write_atomic(path, compiled, 0o600).map_err(cache)
    }
}
