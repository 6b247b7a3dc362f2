//! Sources: where work comes from and where its results go back. Each turns outside requests
//! into journaled jobs through the one [`crate::jobs::Intake`], and hands results back from the
//! outbox.
//!
//! - `api`: the request API (JSON over HTTP), and the administrator's endpoints beside it.
//! - `scep`: certconn's SCEP server; its challenge validators.
//! - `upstream`: the device-management service certconn polls for work (the connector
//!   protocol), and sends results back to.
//! - `intune`: Microsoft Intune's third-party CA APIs (SCEP challenge validation).
//! - `outbound`: the host's own outbound HTTP(S) calls, which `upstream` and `intune` make.

pub mod api;
pub mod intune;
pub mod outbound;
pub mod scep;
pub mod upstream;
