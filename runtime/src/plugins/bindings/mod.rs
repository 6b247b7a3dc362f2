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

use wasmtime::component::{Component, InstancePre};
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

/// A component linked and checked against its contract line, ready to instantiate.
pub enum BackendPre {
    V0_1(v0_1::CaBackendPre<PluginState>),
    V0_2(v0_2::CaBackendPre<PluginState>),
}

/// One instance of a backend, of either line.
pub enum BackendInstance {
    V0_1(v0_1::CaBackend),
    V0_2(v0_2::CaBackend),
}

impl BackendPre {
    /// Wraps a linked component in the bindings of its line.
    pub fn new(contract: Contract, pre: InstancePre<PluginState>) -> wasmtime::Result<Self> {
        Ok(match contract {
            Contract::V0_1 => Self::V0_1(v0_1::CaBackendPre::new(pre)?),
            Contract::V0_2 => Self::V0_2(v0_2::CaBackendPre::new(pre)?),
        })
    }

    pub async fn instantiate(
        &self,
        store: &mut Store<PluginState>,
    ) -> wasmtime::Result<BackendInstance> {
        Ok(match self {
            Self::V0_1(p) => BackendInstance::V0_1(p.instantiate_async(store).await?),
            Self::V0_2(p) => BackendInstance::V0_2(p.instantiate_async(store).await?),
        })
    }
}

/// Calls the same export on whichever line the instance is.
macro_rules! call {
    ($self:ident, $store:ident, $method:ident $(, $arg:expr)*) => {
        match $self {
            BackendInstance::V0_1(b) => b.certconn_plugin_backend().$method($store $(, $arg)*).await,
            BackendInstance::V0_2(b) => b.certconn_plugin_backend().$method($store $(, $arg)*).await,
        }
    };
}

impl BackendInstance {
    pub async fn describe(&self, store: &mut Store<PluginState>) -> wasmtime::Result<BackendInfo> {
        call!(self, store, call_describe)
    }

    pub async fn configure(
        &self,
        store: &mut Store<PluginState>,
        settings: &str,
    ) -> wasmtime::Result<Result<(), BackendError>> {
        call!(self, store, call_configure, settings)
    }

    pub async fn issue(
        &self,
        store: &mut Store<PluginState>,
        request: &IssueRequest,
    ) -> wasmtime::Result<Result<IssuedCertificate, BackendError>> {
        call!(self, store, call_issue, request)
    }

    pub async fn poll(
        &self,
        store: &mut Store<PluginState>,
        job_id: &str,
        token: &str,
    ) -> wasmtime::Result<Result<IssuedCertificate, BackendError>> {
        call!(self, store, call_poll, job_id, token)
    }

    pub async fn revoke(
        &self,
        store: &mut Store<PluginState>,
        request: &RevokeRequest,
    ) -> wasmtime::Result<Result<(), BackendError>> {
        call!(self, store, call_revoke, request)
    }

    pub async fn check_import(
        &self,
        store: &mut Store<PluginState>,
        request: &ImportCheck,
    ) -> wasmtime::Result<Result<(), BackendError>> {
        call!(self, store, call_check_import, request)
    }

    pub async fn health(&self, store: &mut Store<PluginState>) -> wasmtime::Result<HealthReport> {
        call!(self, store, call_health)
    }
}
