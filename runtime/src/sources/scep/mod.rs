//! certconn's SCEP server (RFC 8894): a source of issue jobs, so a Linux host can stand where a
//! Windows NDES server stood.
//!
//! `GET|POST /scep` (and the classic `/cgi-bin/pkiclient.exe`) answer GetCACaps, GetCACert and
//! PKIOperation. A PKCSReq is verified (signature, then the envelope opened with the RA key in
//! custody, then the CSR's own signature and challenge password), journaled as an issue job
//! with the idempotency key `scep:<transactionID>`, and answered with the certificate when the
//! routed backend finishes within `wait_seconds`, else PENDING; CertPoll and a resent PKCSReq
//! find the same job. A RenewalReq must be signed by a certificate certconn issued that is
//! still valid and not revoked; it needs no challenge.
//!
//! Message encoding is shared with the SDK's SCEP client in the `certconn-scep` crate; this
//! module holds only what is the server's: the RA, challenges, and the mapping to jobs.

pub mod adapter;
pub mod challenge;
pub mod http;
pub mod ra;
pub mod ra_keys;
pub mod remembered;
pub mod settings;

pub use ra::{CrlSource, Ra, RaError, RaPorts};
pub use settings::ScepConfig;
