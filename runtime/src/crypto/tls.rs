//! The TLS provider every rustls configuration in certconn is built on: aws-lc-rs, its FIPS
//! provider in FIPS builds. One place, so the API's server side, the CLI's client side and the
//! plugins' https all negotiate the same approved suites.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

/// The rustls crypto provider of this build.
pub fn provider() -> Arc<CryptoProvider> {
    #[cfg(feature = "fips")]
    let provider = rustls::crypto::default_fips_provider();
    #[cfg(not(feature = "fips"))]
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    Arc::new(provider)
}
