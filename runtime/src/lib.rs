//! certconn: a certificate connector runtime.
//!
//! The flow (see `docs/design/layers.md`): a job arrives through a source (`sources`: the
//! request API, the SCEP server), is validated and written to the journal before it is
//! acknowledged (`jobs::intake`, `journal`), is leased by the scheduler, runs through its step —
//! custody key generation, CSR, the routed backend plugin, PKCS#12, sealing for the device
//! (`jobs`, `plugins`, `custody`, `pki`, `crypto`) — and its result lands in the outbox before it
//! is reported back through its source. `app` is the composition root that wires them.

pub mod app;
pub mod config;
pub mod crypto;
pub mod custody;
pub mod files;
pub mod jobs;
pub mod journal;
pub mod lifecycle;
pub mod metrics;
pub mod openapi;
pub mod pki;
pub mod plugins;
pub mod process;
pub mod proxy;
pub mod report;
pub mod revocation;
pub mod secret;
pub mod sources;
pub mod update;
pub mod version;
