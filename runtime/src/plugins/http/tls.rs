//! https for plugins, by the host's rustls on the aws-lc-rs provider (its FIPS provider in FIPS
//! builds). Each backend trusts either its own anchors (`http.trust_anchors`, a PEM file: an
//! on-premises CA's web server is usually certified by the enterprise PKI, and pinning the
//! backend to it keeps a public CA from vouching for a look-alike) or the system's trust store.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use wasmtime_wasi_http::Error as HttpError;

use super::{GrantError, HttpGrant};
use crate::crypto::AlgorithmPolicy;

/// Why the host cannot make TLS connections for a backend. Cloned out of the once-made
/// client configurations, so it holds no source that cannot be cloned.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error(
        "the system trust store has no usable certificates ({errors} errors); install \
         ca-certificates or set http.trust_anchors"
    )]
    NoSystemRoots { errors: usize },
    #[error("TLS configuration")]
    Config(#[source] rustls::Error),
    #[error("the TLS configuration is not FIPS-approved in this build")]
    NotFips,
}

fn system_roots() -> Result<Arc<RootCertStore>, TlsError> {
    crate::crypto::tls::system_roots().map_err(|e| TlsError::NoSystemRoots { errors: e.errors })
}

/// Which certificates a backend's https connections must chain to.
pub(super) enum Trust {
    /// Only these (from `http.trust_anchors`): the client config is made when the backend loads.
    Anchors(Arc<ClientConfig>),
    /// The system store, loaded at first use; the client config is made once.
    System(OnceLock<Result<Arc<ClientConfig>, TlsError>>),
}

/// A TLS connection about to be made: the backend's client config and the name to verify.
pub(super) struct Target {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl Trust {
    /// The grant's trust: its anchors file read and checked now, or the system store later.
    pub(super) fn from_grant(
        grant: &HttpGrant,
        policy: &AlgorithmPolicy,
    ) -> Result<Self, GrantError> {
        match &grant.trust_anchors {
            Some(path) => Ok(Self::Anchors(client_config(
                Arc::new(read_anchors(path)?),
                None,
                policy,
            )?)),
            None => Ok(Self::System(OnceLock::new())),
        }
    }

    fn client_config(&self, policy: &AlgorithmPolicy) -> Result<Arc<ClientConfig>, TlsError> {
        match self {
            Self::Anchors(config) => Ok(config.clone()),
            Self::System(config) => config
                .get_or_init(|| client_config(system_roots()?, None, policy))
                .clone(),
        }
    }

    /// Prepares a connection to `host` (a DNS name or an IP literal).
    pub(super) fn target(&self, host: &str, policy: &AlgorithmPolicy) -> Result<Target, HttpError> {
        let config = self
            .client_config(policy)
            .map_err(|e| HttpError::InternalError(Some(crate::report::chain(&e))))?;
        let name =
            ServerName::try_from(host.to_owned()).map_err(|_| HttpError::HttpRequestUriInvalid)?;
        Ok(Target {
            connector: TlsConnector::from(config),
            name,
        })
    }
}

impl Target {
    /// The TLS handshake over `tcp`. A certificate that does not verify is a
    /// `TLS-certificate-error` for the plugin, with the reason in the host's log.
    pub(super) async fn connect(&self, tcp: TcpStream) -> Result<TlsStream<TcpStream>, HttpError> {
        self.connector
            .connect(self.name.clone(), tcp)
            .await
            .map_err(|e| {
                let certificate = e
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                    .and_then(|r| match r {
                        rustls::Error::InvalidCertificate(c) => Some(c.clone()),
                        _ => None,
                    });
                tracing::warn!(server = ?self.name, "plugin HTTPS: TLS handshake failed: {e}");
                match certificate {
                    // The plugin is told why, in words it can pass on: an untrusted issuer, an
                    // expired certificate or a name mismatch is for the administrator to fix,
                    // not for a retry (`wasi:http`'s own code for it carries no reason).
                    Some(reason) => HttpError::InternalError(Some(format!(
                        "TLS certificate of {} not accepted: {}; if the server's CA is a private one, name it in this backend's http.trust_anchors",
                        server_label(&self.name),
                        certificate_reason(&reason)
                    ))),
                    None => HttpError::Tls(e),
                }
            })
    }
}

fn server_label(name: &ServerName<'_>) -> String {
    match name {
        ServerName::DnsName(d) => d.as_ref().to_owned(),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        _ => "the server".to_owned(),
    }
}

/// Why a certificate was not accepted, in words an administrator acts on.
fn certificate_reason(e: &rustls::CertificateError) -> String {
    use rustls::CertificateError as C;
    match e {
        C::UnknownIssuer => "it is not issued by a trusted CA (UnknownIssuer)".into(),
        C::Expired | C::ExpiredContext { .. } => "it has expired (Expired)".into(),
        C::NotValidYet | C::NotValidYetContext { .. } => "it is not valid yet (NotValidYet)".into(),
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            "it is not for this host name (NotValidForName)".into()
        }
        C::Revoked => "it is revoked (Revoked)".into(),
        other => format!("{other:?}"),
    }
}

/// A client configuration for the host's own outbound https (the upstream service): the
/// anchors in `anchors` (a PEM file), or the system trust store; the client certificate from
/// `identity` when there is one (mutual TLS).
pub(crate) fn outbound_client_config(
    anchors: Option<&Path>,
    identity: Option<Arc<dyn rustls::client::ResolvesClientCert>>,
    policy: &AlgorithmPolicy,
) -> Result<Arc<ClientConfig>, Box<dyn std::error::Error + Send + Sync>> {
    let roots = match anchors {
        Some(path) => Arc::new(read_anchors(path)?),
        None => system_roots()?,
    };
    Ok(client_config(roots, identity, policy)?)
}

fn read_anchors(path: &Path) -> Result<RootCertStore, GrantError> {
    use crate::crypto::tls::AnchorsError;
    crate::crypto::tls::read_anchors(path).map_err(|e| match e {
        AnchorsError::File { path, source } => GrantError::AnchorsFile { path, source },
        AnchorsError::Certificate {
            path,
            number,
            source,
        } => GrantError::Anchor {
            path,
            number,
            source,
        },
        AnchorsError::Empty { path } => GrantError::NoAnchors { path },
    })
}

fn client_config(
    roots: Arc<RootCertStore>,
    identity: Option<Arc<dyn rustls::client::ResolvesClientCert>>,
    policy: &AlgorithmPolicy,
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(crate::crypto::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(resolver) => builder.with_client_cert_resolver(resolver),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if policy.fips && !config.fips() {
        return Err(TlsError::NotFips);
    }
    Ok(Arc::new(config))
}
