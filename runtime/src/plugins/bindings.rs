//! Host bindings for `certconn:plugin@0.1.x`, generated from `wit/`.
//!
//! A future `certconn:plugin@1.x` gets its own module beside this one; the host keeps linking
//! this one for backends built against 0.1.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "certconn:plugin/ca-backend",
    exports: { default: async },
    with: {
        "wasi:http": wasmtime_wasi_http::p2::bindings::http,
        "wasi:io": wasmtime_wasi::p2::bindings::io,
    },
});

pub use self::certconn::plugin::types;
