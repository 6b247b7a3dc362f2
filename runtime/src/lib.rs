//! certconn: a certificate connector runtime.
//!
//! The flow (see `docs/design/overview.md`): a job arrives through a source (the request API),
//! is written to the journal before it is acknowledged, is leased by the scheduler, runs through
//! the pipeline — custody key generation, CSR, the routed backend plugin, PKCS#12, sealing for
//! the device — and its result lands in the outbox before it is reported.

pub mod api;
pub mod cli;
pub mod config;
pub mod connector;
pub mod crypto;
pub mod custody;
pub mod jobs;
pub mod pki;
pub mod plugins;
pub mod scep;
pub mod secret;
