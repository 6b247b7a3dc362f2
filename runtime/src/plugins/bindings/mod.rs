//! Host bindings for every `certconn:plugin` compatibility line this host runs, and the one
//! place that tells a component's line from its exports.
//!
//! - [`v0_2`]: the current contract, `wit/` (`certconn:plugin@0.2.x`), implemented in `host.rs`.
//! - [`v0_1`]: the 0.1 contract, kept verbatim in `wit/compat/v0.1/`. Its types are 0.2's
//!   (0.2 changed no type), and its imports forward to the 0.2 implementation, so a backend built
//!   for 0.1 keeps running unchanged.
//!
//! Before 1.0, `0.MINOR` is the compatibility line (semver, and wasmtime's linker, which links a
//! 0.2.0 import to a 0.2.3 definition but never to 0.3): a new line gets a module here and a
//! variant in [`Contract`]; lines are dropped only with a deprecation period.

pub mod v0_1;

/// The current contract.
pub mod v0_2 {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "certconn:plugin/ca-backend",
        exports: { default: async },
        // Signing with a CA key waits for the signature trail's durable write.
        imports: { "certconn:plugin/custody.sign": async },
        with: {
            "wasi:http": wasmtime_wasi_http::p2::bindings::http,
            "wasi:io": wasmtime_wasi::p2::bindings::io,
        },
    });
}

pub use v0_2::certconn::plugin::types;

use wasmtime::component::types::{ComponentFunc, ComponentItem};
use wasmtime::component::{Component, ComponentExportIndex, Instance, InstancePre, TypedFunc};
use wasmtime::{Engine, Store};

use super::state::PluginState;
use types::{
    BackendError, BackendInfo, HealthReport, ImportCheck, IssueRequest, IssuedCertificate,
    RevokeRequest,
};

/// The contract version of `wit/`, which new backends target.
pub const CURRENT: &str = "0.2.0";

/// The compatibility lines this host runs, newest first, as text for messages.
pub const SUPPORTED_LINES: &str = "0.2.x and 0.1.x";

/// A compatibility line of the contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contract {
    V0_1,
    V0_2,
}

/// The export every backend has; its version says which contract the backend was built for.
const BACKEND_EXPORT: &str = "certconn:plugin/backend@";

impl Contract {
    /// The line of a `certconn:plugin` version, if this host runs it.
    pub fn of(version: &semver::Version) -> Option<Self> {
        match (version.major, version.minor) {
            (0, 1) => Some(Self::V0_1),
            (0, 2) => Some(Self::V0_2),
            _ => None,
        }
    }

    /// Which contract `component` was built against, from the version of its
    /// `certconn:plugin/backend` export. Errors name the plugin's version and the host's.
    pub fn detect(
        engine: &Engine,
        component: &Component,
    ) -> Result<(Self, semver::Version), ContractError> {
        let ty = component.component_type();
        let exported: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
        let Some(version) = exported.iter().find_map(|n| n.strip_prefix(BACKEND_EXPORT)) else {
            return Err(ContractError::NotABackend {
                exports: if exported.is_empty() {
                    "none".to_string()
                } else {
                    exported.join(", ")
                },
            });
        };
        let version =
            semver::Version::parse(version).map_err(|source| ContractError::NotSemver {
                version: version.to_owned(),
                source,
            })?;
        match Self::of(&version) {
            Some(line) => Ok((line, version)),
            None => Err(ContractError::Unsupported { version }),
        }
    }
}

/// Why a component cannot run as a backend of any contract line this host runs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContractError {
    #[error(
        "it does not export certconn:plugin/backend (exports: {exports}); is it a certconn backend?"
    )]
    NotABackend { exports: String },
    #[error("its certconn:plugin version {version:?} is not semver")]
    NotSemver {
        version: String,
        #[source]
        source: semver::Error,
    },
    #[error(
        "it was built for certconn:plugin@{version}, which this certconn does not run (it runs \
         {SUPPORTED_LINES}; current {CURRENT}): rebuild it against a supported contract or \
         upgrade certconn"
    )]
    Unsupported { version: semver::Version },
}

/// A component linked and its backend export found and type-checked, ready to instantiate.
///
/// The export's functions are type-checked here, once per plugin version, instead of at every
/// instantiation as bindgen's `CaBackendPre` does (its `load` type-checks all seven functions
/// for each fresh instance: about 1.4 µs of a 16 µs bare call, `certconn bench`). A function's
/// type is a property of the component and the linker, both fixed for the life of this value,
/// so checking it once is the same check. Both lines share one signature per function (0.1's
/// types are 0.2's), so one table serves them. The check uses what bindgen's generated code
/// uses (`ComponentFunc::typecheck`, `InstancePre::instance_type`, hidden from wasmtime's
/// docs): after a wasmtime upgrade, `contracts::a_backend_whose_functions_have_other_types_
/// is_refused_before_any_call` shows it still refuses a mistyped backend.
pub struct BackendPre {
    instance_pre: InstancePre<PluginState>,
    exports: BackendExports,
}

impl BackendPre {
    /// Finds the functions of `certconn:plugin/backend@{contract}` and checks their types.
    pub fn new(
        contract: &semver::Version,
        instance_pre: InstancePre<PluginState>,
    ) -> wasmtime::Result<Self> {
        let exports = BackendExports::find(&instance_pre, &format!("{BACKEND_EXPORT}{contract}"))?;
        Ok(Self {
            instance_pre,
            exports,
        })
    }

    /// A fresh instance in `store`.
    pub async fn instantiate(
        &self,
        store: &mut Store<PluginState>,
    ) -> wasmtime::Result<BackendInstance<'_>> {
        Ok(BackendInstance {
            instance: self.instance_pre.instantiate_async(store).await?,
            exports: &self.exports,
        })
    }
}

/// One instance of a backend, of either line, with the exports of the component it was made
/// from (never another's: only [`BackendPre::instantiate`] makes one).
pub struct BackendInstance<'a> {
    instance: Instance,
    exports: &'a BackendExports,
}

/// The function `name` of the backend export, and where it is.
fn function(
    pre: &InstancePre<PluginState>,
    backend: &ComponentExportIndex,
    name: &str,
) -> wasmtime::Result<(ComponentFunc, ComponentExportIndex)> {
    let Some((item, index)) = pre.component().get_export(Some(backend), name) else {
        wasmtime::bail!("it has no function `{name}`");
    };
    let ComponentItem::ComponentFunc(func) = item else {
        wasmtime::bail!("its `{name}` is not a function");
    };
    Ok((func, index))
}

/// The backend's functions: for each, the Rust signature it is type-checked against when the
/// component is prepared and called with after. One list makes both, so they cannot differ.
macro_rules! backend_functions {
    ($($method:ident = $name:literal ($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        /// Where each function of the backend export is, type-checked.
        struct BackendExports {
            $($method: ComponentExportIndex,)*
        }

        impl BackendExports {
            fn find(pre: &InstancePre<PluginState>, export: &str) -> wasmtime::Result<Self> {
                let Some(backend) = pre.component().get_export_index(None, export) else {
                    wasmtime::bail!("it does not export `{export}`");
                };
                Ok(Self {
                    $($method: {
                        let (func, index) = function(pre, &backend, $name)?;
                        func.typecheck::<($($ty,)*), ($ret,)>(&pre.instance_type()).map_err(
                            |e| wasmtime::format_err!("its function `{}` has another type: {e:#}", $name),
                        )?;
                        index
                    },)*
                })
            }
        }

        impl BackendInstance<'_> {
            $(
                pub async fn $method(
                    &self,
                    store: &mut Store<PluginState>,
                    $($arg: $ty),*
                ) -> wasmtime::Result<$ret> {
                    let Some(func) = self.instance.get_func(&mut *store, self.exports.$method) else {
                        wasmtime::bail!("the instance has no function `{}`", $name);
                    };
                    // SAFETY: `BackendExports::find` type-checked this export against exactly
                    // these parameter and result types (the same macro arm wrote both), for the
                    // component and linker this instance was made from (`BackendInstance` is
                    // only made by `BackendPre::instantiate`, which pairs the instance with its
                    // own `BackendPre`'s exports). That is the check `get_typed_func` would
                    // repeat here.
                    let typed = unsafe { TypedFunc::<($($ty,)*), ($ret,)>::new_unchecked(func) };
                    let (answer,) = typed.call_async(&mut *store, ($($arg,)*)).await?;
                    Ok(answer)
                }
            )*
        }
    };
}

backend_functions! {
    describe = "describe"() -> BackendInfo;
    configure = "configure"(settings: &str) -> Result<(), BackendError>;
    issue = "issue"(request: &IssueRequest) -> Result<IssuedCertificate, BackendError>;
    poll = "poll"(job_id: &str, token: &str) -> Result<IssuedCertificate, BackendError>;
    revoke = "revoke"(request: &RevokeRequest) -> Result<(), BackendError>;
    check_import = "check-import"(request: &ImportCheck) -> Result<(), BackendError>;
    health = "health"() -> HealthReport;
}
