//! Sources: where work comes from and where its results go back. Each turns outside requests
//! into journaled jobs through the one [`crate::jobs::Intake`], and hands results back from the
//! outbox.
//!
//! - `api`: the request API (JSON over HTTP), and the administrator's endpoints beside it.
//! - `scep`: certconn's SCEP server; its challenge validators.
//!
//! Upstreams (a device-management service's connector protocol, Intune's APIs) are sources too,
//! and arrive as one more module here.

pub mod api;
pub mod scep;
