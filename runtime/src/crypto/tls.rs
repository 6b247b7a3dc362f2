//! The TLS provider every rustls configuration in certconn is built on: aws-lc-rs, its FIPS
//! provider in FIPS builds. One place, so the API's server side, the CLI's client side and the
//! plugins' https all negotiate the same approved suites.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

/// The rustls crypto provider of this build.
pub fn provider() -> Arc<CryptoProvider> {
    #[cfg(feature = "fips")]
    let provider = rustls::crypto::default_fips_provider();
    #[cfg(not(feature = "fips"))]
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    Arc::new(provider)
}

/// Why a PEM file of trust anchors could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AnchorsError {
    #[error("{}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: certificate {number}", path.display())]
    Certificate {
        path: PathBuf,
        number: usize,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{}: no PEM CERTIFICATE blocks in the file", path.display())]
    Empty { path: PathBuf },
}

/// The certificates of the PEM file `path`, as the only anchors a connection trusts: a private
/// CA pinned for one peer (a CA's web server, the journal's database, the upstream service).
pub fn read_anchors(path: &Path) -> Result<RootCertStore, AnchorsError> {
    let pem = std::fs::read(path).map_err(|source| AnchorsError::File {
        path: path.to_owned(),
        source,
    })?;
    let bad = |number: usize, source: Box<dyn std::error::Error + Send + Sync>| {
        AnchorsError::Certificate {
            path: path.to_owned(),
            number,
            source,
        }
    };
    let mut store = RootCertStore::empty();
    for (i, cert) in CertificateDer::pem_slice_iter(&pem).enumerate() {
        let cert = cert.map_err(|e| bad(i + 1, Box::new(e)))?;
        store.add(cert).map_err(|e| bad(i + 1, Box::new(e)))?;
    }
    if store.is_empty() {
        return Err(AnchorsError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(store)
}

/// The system trust store has no certificate rustls can use (`errors` entries failed).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the system trust store has no usable certificates ({errors} errors)")]
pub struct NoSystemRoots {
    pub errors: usize,
}

/// The system trust store, read once per process at its first use.
pub fn system_roots() -> Result<Arc<RootCertStore>, NoSystemRoots> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, NoSystemRoots>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut store = RootCertStore::empty();
            let (added, _ignored) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(NoSystemRoots {
                    errors: found.errors.len(),
                });
            }
            Ok(Arc::new(store))
        })
        .clone()
}
