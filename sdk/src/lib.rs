//! Write a certconn CA backend.
//!
//! A backend is a type implementing [`Backend`], exported with [`export_backend!`], built for
//! `wasm32-wasip2`. The host creates a fresh instance per job and calls `configure` first, so the
//! SDK parses your typed settings once per job and hands them to every method — no globals in your
//! code, and nothing survives from one job to the next.
//!
//! Private keys never reach a backend: [`host::sign`] and friends ask the host to use a key the
//! administrator granted by name. Every primitive runs in the host's crypto provider, under its
//! algorithm policy (FIPS mode included).
//!
//! See `sdk/README.md` for a walk-through and `plugins/local-ca` for a complete backend.

// The generated bindings name this crate by its public path, so that the export macro works
// from a backend's crate; this makes the same path resolve inside the SDK.
extern crate self as certconn_sdk;

use std::any::Any;
use std::cell::RefCell;
use std::marker::PhantomData;

use serde::de::DeserializeOwned;

pub use certconn_x509 as x509;
pub use serde;
pub use serde_json;

#[doc(hidden)]
pub use wit_bindgen as __wit_bindgen;

/// Raw bindings generated from `wit/certconn.wit` (and the WASI interfaces it imports).
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "certconn:plugin/ca-backend",
        generate_all,
        pub_export_macro: true,
        export_macro_name: "__export_ca_backend",
        default_bindings_module: "certconn_sdk::bindings",
        runtime_path: "certconn_sdk::__wit_bindgen::rt",
        bitflags_path: "certconn_sdk::__wit_bindgen::rt::bitflags",
    });
}

pub mod error;
pub mod host;
pub mod http;
pub mod log;
pub mod scep;

/// Seconds since the Unix epoch, from the host's wall clock (0 if the clock is before 1970).
pub fn now_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub use bindings::certconn::plugin::types::{
    BackendError, BackendInfo, Capabilities, FieldError, HealthReport, ImportCheck, ImportPurpose,
    IssueRequest, IssuedCertificate, Pending, RevocationReason, RevokeRequest, SubjectAltName,
};
use bindings::exports::certconn::plugin::backend::Guest;

/// A CA backend. Implement the operations your CA supports; the rest answer `unsupported`.
pub trait Backend: 'static {
    /// The backend's settings, deserialized from the administrator's `[backends.NAME.settings]`
    /// table (as JSON). Unknown or mistyped fields are reported per field by [`export_backend!`].
    type Config: DeserializeOwned + 'static;

    /// Name, version, capabilities and a JSON Schema of the settings.
    fn describe() -> BackendInfo;

    /// Checks settings beyond what deserialization checks (ranges, references between fields).
    fn validate(_config: &Self::Config) -> Result<(), Vec<FieldError>> {
        Ok(())
    }

    /// Issues a certificate, or returns [`error::pending`] when the CA has not decided yet.
    fn issue(
        _config: &Self::Config,
        _request: IssueRequest,
    ) -> Result<IssuedCertificate, BackendError> {
        Err(error::unsupported("issue"))
    }

    /// Asks about a request that was pending.
    fn poll(
        _config: &Self::Config,
        _job_id: String,
        _poll_token: String,
    ) -> Result<IssuedCertificate, BackendError> {
        Err(error::unsupported("poll"))
    }

    /// Revokes a certificate.
    fn revoke(_config: &Self::Config, _request: RevokeRequest) -> Result<(), BackendError> {
        Err(error::unsupported("revoke"))
    }

    /// Decides whether an imported PFX may be delivered.
    fn check_import(_config: &Self::Config, _request: ImportCheck) -> Result<(), BackendError> {
        Err(error::unsupported("check-import"))
    }

    /// Reports health. `config` is `None` when the host asks before configuring.
    fn health(_config: Option<&Self::Config>) -> HealthReport {
        HealthReport {
            healthy: true,
            message: "ok".into(),
        }
    }
}

thread_local! {
    /// The settings of this instance. An instance serves one job on one thread.
    static SETTINGS: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

/// Parses settings JSON into `T`, reporting each problem with the path of the offending field.
pub fn parse_settings<T: DeserializeOwned>(json: &str) -> Result<T, Vec<FieldError>> {
    let mut de = serde_json::Deserializer::from_str(json);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { String::new() } else { path };
        let inner = e.into_inner();
        let mut message = inner.to_string();
        // " at line 1 column 23" points into the JSON the host made of the administrator's
        // TOML; the host says where in the TOML instead.
        if inner.line() != 0 {
            if let Some(at) = message.rfind(" at line ") {
                message.truncate(at);
            }
        }
        vec![FieldError { field, message }]
    })
}

/// Connects a [`Backend`] to the generated export trait. Used by [`export_backend!`].
#[doc(hidden)]
pub struct Adapter<B>(PhantomData<B>);

impl<B: Backend> Adapter<B> {
    fn with_config<R>(
        f: impl FnOnce(&B::Config) -> Result<R, BackendError>,
    ) -> Result<R, BackendError> {
        SETTINGS.with(|s| {
            let guard = s.borrow();
            let config = guard
                .as_ref()
                .and_then(|c| c.downcast_ref::<B::Config>())
                .ok_or_else(|| error::transient("the host called the backend before configure"))?;
            f(config)
        })
    }
}

impl<B: Backend> Guest for Adapter<B> {
    fn describe() -> BackendInfo {
        B::describe()
    }

    fn configure(settings: String) -> Result<(), BackendError> {
        let config: B::Config = parse_settings(&settings).map_err(BackendError::InvalidConfig)?;
        B::validate(&config).map_err(BackendError::InvalidConfig)?;
        SETTINGS.with(|s| *s.borrow_mut() = Some(Box::new(config)));
        Ok(())
    }

    fn issue(request: IssueRequest) -> Result<IssuedCertificate, BackendError> {
        Self::with_config(|c| B::issue(c, request))
    }

    fn poll(job_id: String, poll_token: String) -> Result<IssuedCertificate, BackendError> {
        Self::with_config(|c| B::poll(c, job_id, poll_token))
    }

    fn revoke(request: RevokeRequest) -> Result<(), BackendError> {
        Self::with_config(|c| B::revoke(c, request))
    }

    fn check_import(request: ImportCheck) -> Result<(), BackendError> {
        Self::with_config(|c| B::check_import(c, request))
    }

    fn health() -> HealthReport {
        SETTINGS.with(|s| {
            let guard = s.borrow();
            B::health(guard.as_ref().and_then(|c| c.downcast_ref::<B::Config>()))
        })
    }
}

#[doc(hidden)]
pub const fn __manifest_bytes<const N: usize>(text: &str) -> [u8; N] {
    let bytes = text.as_bytes();
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N {
        out[i] = bytes[i];
        i += 1;
    }
    out
}

/// Embeds the plugin's manifest in the component, making the build output a plugin package
/// that certconn loads as it is.
///
/// The file (`certconn-plugin.toml`, path relative to the calling source file) holds the
/// description, the vendor and `[requests]`; `name`, `version` and `contract` are filled in
/// from `Cargo.toml` and this SDK, so they cannot drift:
///
/// ```ignore
/// certconn_sdk::plugin_manifest!("../certconn-plugin.toml");
/// ```
///
/// For a component built any other way, `certconn plugin pack COMPONENT --manifest FILE` embeds
/// a complete manifest instead.
#[macro_export]
macro_rules! plugin_manifest {
    ($path:literal) => {
        const _: () = {
            // The contract is the version of `wit/certconn.wit` this SDK is generated from.
            const TEXT: &str = concat!(
                "name = \"",
                env!("CARGO_PKG_NAME"),
                "\"\nversion = \"",
                env!("CARGO_PKG_VERSION"),
                "\"\ncontract = \"0.2.0\"\n",
                include_str!($path)
            );
            #[used]
            #[link_section = "certconn-manifest"]
            static MANIFEST: [u8; TEXT.len()] = $crate::__manifest_bytes::<{ TEXT.len() }>(TEXT);
        };
    };
}

/// Exports a [`Backend`] implementation as the component's `certconn:plugin/backend`.
///
/// ```ignore
/// struct MyCa;
/// impl certconn_sdk::Backend for MyCa { /* ... */ }
/// certconn_sdk::export_backend!(MyCa);
/// ```
#[macro_export]
macro_rules! export_backend {
    ($backend:ty) => {
        type __CertconnBackendAdapter = $crate::Adapter<$backend>;
        $crate::bindings::__export_ca_backend!(__CertconnBackendAdapter with_types_in $crate::bindings);
    };
}
