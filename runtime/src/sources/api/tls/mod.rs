//! The request API over TLS (`[api.tls]`). The API carries a bearer token that can issue,
//! revoke and read results, so off loopback it must not travel in clear. The server side is
//! rustls on this build's provider ([`crate::crypto::tls::provider`]: the FIPS one in FIPS
//! builds); the CLI's client side trusts the certificates of the configured chain, so a
//! self-signed API certificate works without touching the system trust store.
//!
//! The certificate comes from files (`certificate`, `key`), or certconn issues it itself from a
//! CA key it holds (`issuer`) and renews it before it expires ([`issued`]); the CLI then trusts
//! that CA, which the daemon writes to `<data_dir>/api-ca.pem`.
//!
//! Client certificates are optional: with `client_ca`, a client that presents a certificate
//! issued by one of those CAs is authenticated by it (admin tools that hold a certificate rather
//! than the token); a client without one still connects and must present the token.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::ConfigPath;
use crate::crypto::AlgorithmPolicy;
use crate::files::FileError;

use super::connections::{Counted, LimitedListener};

pub mod issued;

pub use issued::{IssuedCertificate, ISSUED_KEY};

/// How long a client may take over the handshake before its connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes that finished and wait for the server to take them.
const ACCEPT_QUEUE: usize = 64;

/// `[api.tls]`: the certificate from files (`certificate` and `key`), or issued by a CA key
/// certconn holds (`issuer`).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiTlsConfig {
    /// PEM file: the API's certificate first, then its chain.
    pub certificate: Option<ConfigPath>,
    /// PEM file of the certificate's private key (PKCS#8, SEC1 or PKCS#1); a secret file (mode
    /// 0600, owned by certconn's user).
    pub key: Option<ConfigPath>,
    /// A CA key in `[keys]` (role `ca`, with its certificate): certconn issues the API's
    /// certificate from it for a key of its own (`api-tls` in custody) and renews it at two
    /// thirds of its lifetime, without a restart. Instead of `certificate` and `key`.
    pub issuer: Option<toml::Spanned<String>>,
    /// With `issuer`: the DNS names and IP addresses the certificate names. Default: the
    /// `server_name`, or the listen address (`127.0.0.1` and `localhost` for loopback or an
    /// unspecified address).
    #[serde(default)]
    pub names: Vec<toml::Spanned<String>>,
    /// With `issuer`: the certificate's lifetime in days.
    #[serde(
        default = "default_validity_days",
        deserialize_with = "crate::config::in_range::<_, u32, 1, 397>"
    )]
    pub validity_days: u32,
    /// PEM file of the CAs whose client certificates authenticate a client instead of the
    /// token. Without it no client certificate is asked for.
    pub client_ca: Option<ConfigPath>,
    /// The name the CLI checks the certificate against when it connects. Default: the IP
    /// address it connects to (`api.listen`, with an unspecified address meaning loopback).
    pub server_name: Option<String>,
}

fn default_validity_days() -> u32 {
    30
}

impl ApiTlsConfig {
    /// Exactly one source of the certificate, and names that a certificate can carry.
    pub fn check(&self, cx: &crate::config::Checker<'_>) -> Result<(), crate::config::ConfigError> {
        match (&self.certificate, &self.key, &self.issuer) {
            (Some(_), Some(_), None) | (None, None, Some(_)) => {}
            (_, _, Some(issuer)) => {
                return Err(cx.at(
                    issuer.span(),
                    "api.tls.issuer",
                    "certconn issues the API's certificate from this CA key, or it is read from \
                     certificate and key; set one or the other",
                ))
            }
            _ => {
                return Err(cx.section(
                    "api.tls",
                    "api.tls",
                    "set certificate and key (PEM files), or issuer (a CA key in [keys] that \
                     issues and renews the API's certificate)",
                ))
            }
        }
        if self.issuer.is_none() {
            if let Some(name) = self.names.first() {
                return Err(cx.at(
                    name.span(),
                    "api.tls.names",
                    "names are for a certificate certconn issues (api.tls.issuer); the one in \
                     api.tls.certificate names what it names",
                ));
            }
        }
        for name in &self.names {
            issued::server_name_of(name.get_ref())
                .map_err(|why| cx.at(name.span(), "api.tls.names", why))?;
        }
        Ok(())
    }
}

/// Why the API's TLS could not be set up. Each names the setting to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiTlsError {
    #[error("api.tls.{setting}: {path}")]
    Read {
        setting: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("api.tls.key")]
    Key(#[source] FileError),
    #[error("api.tls.{setting}: {path}: {reason}")]
    Pem {
        setting: &'static str,
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("api.tls.key: {key} is not the key of the certificate in {certificate}")]
    KeyMismatch {
        key: std::path::PathBuf,
        certificate: std::path::PathBuf,
    },
    #[error("api.tls: the certificate or the key is not usable: {0}")]
    Certified(#[source] rustls::Error),
    #[error("api.tls.client_ca: {0}")]
    ClientCa(String),
    #[error("api.tls: the TLS configuration is not FIPS-approved in this build")]
    NotFips,
    #[error("api.tls.server_name: {0:?} is neither a DNS name nor an IP address")]
    ServerName(String),
    #[error("api.tls.issuer: issuing the API's certificate from {issuer:?}")]
    Issue {
        issuer: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("api.tls: writing the API's CA certificate")]
    WriteAnchor {
        #[source]
        source: FileError,
    },
}

/// Where the API's certificate comes from, ready to serve.
pub enum ServerCertificate {
    /// `certificate` and `key`, read at start.
    Files,
    /// Issued by `issuer`, renewed while the daemon runs.
    Issued(Arc<IssuedCertificate>),
}

/// The server configuration: the certificate and key read now from files (a bad file stops
/// the start with the reason) or served from `source`, client certificates asked for when
/// `client_ca` is set.
pub fn server_config(
    tls: &ApiTlsConfig,
    source: &ServerCertificate,
    policy: &AlgorithmPolicy,
) -> Result<Arc<ServerConfig>, ApiTlsError> {
    let provider = crate::crypto::tls::provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(ApiTlsError::Certified)?;
    let builder = match &tls.client_ca {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for (i, cert) in certificates("client_ca", path)?.into_iter().enumerate() {
                roots.add(cert).map_err(|e| {
                    ApiTlsError::ClientCa(format!("{}: certificate {}: {e}", path.display(), i + 1))
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| ApiTlsError::ClientCa(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = match (source, &tls.certificate, &tls.key) {
        (ServerCertificate::Issued(issued), _, _) => builder.with_cert_resolver(issued.clone()),
        (ServerCertificate::Files, Some(certificate), Some(key_path)) => {
            let chain = certificates("certificate", certificate)?;
            let key_pem = crate::files::read_protected(key_path).map_err(ApiTlsError::Key)?;
            let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| ApiTlsError::Pem {
                setting: "key",
                path: key_path.to_path_buf(),
                reason: format!("no usable private key ({e})"),
            })?;
            builder.with_single_cert(chain, key).map_err(|e| match e {
                rustls::Error::InconsistentKeys(_) => ApiTlsError::KeyMismatch {
                    key: key_path.to_path_buf(),
                    certificate: certificate.to_path_buf(),
                },
                other => ApiTlsError::Certified(other),
            })?
        }
        // Config checks make this unreachable; say what is missing all the same.
        (ServerCertificate::Files, _, _) => {
            return Err(ApiTlsError::Pem {
                setting: "certificate",
                path: std::path::PathBuf::new(),
                reason: "certificate and key are both needed without issuer".into(),
            })
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if policy.fips && !config.fips() {
        return Err(ApiTlsError::NotFips);
    }
    Ok(Arc::new(config))
}

/// What the CLI trusts for a daemon with `tls`: the configured certificate chain, or the CA
/// that issues the API's certificate (written by the daemon to `<data_dir>/api-ca.pem`).
pub fn trust_anchors(tls: &ApiTlsConfig, data_dir: &Path) -> std::path::PathBuf {
    match &tls.certificate {
        Some(certificate) if tls.issuer.is_none() => certificate.to_path_buf(),
        _ => issued::anchor_file(data_dir),
    }
}

/// The CLI's client configuration: it trusts the certificates in `anchors` ([`trust_anchors`]:
/// the CLI runs beside the daemon and reads the same config), so neither a private CA nor a
/// self-signed certificate needs the system trust store.
pub fn client_config(
    anchors: &Path,
    policy: &AlgorithmPolicy,
) -> Result<Arc<ClientConfig>, ApiTlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates("certificate", anchors)? {
        // A chain may hold certificates webpki cannot take as anchors; the others still do.
        let _ = roots.add(cert);
    }
    let mut config = ClientConfig::builder_with_provider(crate::crypto::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(ApiTlsError::Certified)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if policy.fips && !config.fips() {
        return Err(ApiTlsError::NotFips);
    }
    Ok(Arc::new(config))
}

/// The name the CLI verifies for a daemon at `addr`.
pub fn server_name(
    tls: &ApiTlsConfig,
    addr: SocketAddr,
) -> Result<ServerName<'static>, ApiTlsError> {
    match &tls.server_name {
        Some(name) => {
            ServerName::try_from(name.clone()).map_err(|_| ApiTlsError::ServerName(name.clone()))
        }
        None => Ok(ServerName::IpAddress(addr.ip().into())),
    }
}

/// When the API's certificate (the first in `certificate`) expires, in Unix seconds.
pub fn certificate_not_after(tls: &ApiTlsConfig) -> Option<u64> {
    let chain = certificates("certificate", tls.certificate.as_ref()?).ok()?;
    certconn_x509::validity_of(chain.first()?)
        .ok()
        .map(|(_, end)| end)
}

/// Every certificate in the PEM file `path`; at least one.
fn certificates(
    setting: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, ApiTlsError> {
    let pem = std::fs::read(path).map_err(|source| ApiTlsError::Read {
        setting,
        path: path.to_owned(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiTlsError::Pem {
            setting,
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(ApiTlsError::Pem {
            setting,
            path: path.to_owned(),
            reason: "no PEM CERTIFICATE block in it".into(),
        });
    }
    Ok(certs)
}

/// Who is at the other end of a connection to the API.
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The subject of the client certificate the handshake verified, if one was presented.
    pub client_certificate: Option<String>,
}

/// A TLS listener for `axum::serve`. Handshakes run in their own tasks, each bounded by
/// [`HANDSHAKE_TIMEOUT`], so a client that stalls mid-handshake holds up nobody else; each
/// holds its connection's permit of `tcp`'s limit from the start.
pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<Counted<TcpStream>>, Peer)>,
}

impl TlsListener {
    /// Serves TLS with `config` on `tcp` until this listener is dropped.
    pub fn new(mut tcp: LimitedListener, config: Arc<ServerConfig>) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(ACCEPT_QUEUE);
        let acceptor = TlsAcceptor::from(config);
        tokio::spawn(async move {
            loop {
                let (stream, addr) = tokio::select! {
                    () = tx.closed() => return,
                    a = tcp.accept() => a,
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let peer = Peer {
                                addr,
                                client_certificate: client_subject(&tls),
                            };
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(peer = %addr, "API: TLS handshake failed: {e}")
                        }
                        Err(_) => tracing::debug!(peer = %addr, "API: TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self { local, ready })
    }
}

/// The subject of the verified client certificate on `tls`.
fn client_subject<T>(tls: &TlsStream<T>) -> Option<String> {
    use der::Decode;
    let first = tls.get_ref().1.peer_certificates()?.first()?;
    let subject = x509_cert::Certificate::from_der(first)
        .map(|c| crate::pki::dn::format(&c.tbs_certificate.subject))
        .unwrap_or_else(|_| "an unreadable subject".to_owned());
    Some(subject)
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<Counted<TcpStream>>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(next) => next,
            // The accepting task holds the sender until this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(Peer {
            addr: self.local,
            client_certificate: None,
        })
    }
}

/// A plain TCP peer: no certificate.
impl From<SocketAddr> for Peer {
    fn from(addr: SocketAddr) -> Self {
        Peer {
            addr,
            client_certificate: None,
        }
    }
}
