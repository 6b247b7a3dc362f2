//! From `[journal]` to connections: the URL checked (no password in it), the password read
//! from its environment variable or file, TLS by the host's rustls (aws-lc-rs, its FIPS
//! module in FIPS builds) with the server always verified, and an optional client certificate
//! for PostgreSQL's `cert` authentication.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::journal::config::JournalConfig;

/// Why `[journal]` cannot be used. Never carries the password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    #[error("journal.url is not a PostgreSQL URL ({0}); write postgres://user@host:port/database")]
    Url(String),
    #[error(
        "journal.url carries a password; move it to journal.password_file or \
         journal.password_env, so that it is not in the config"
    )]
    PasswordInUrl,
    #[error("journal.url names no user")]
    NoUser,
    #[error("journal password")]
    Password(#[source] crate::secret::SecretError),
    #[error("journal.{field}: {path}")]
    File {
        field: &'static str,
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("journal.{field}: {path} holds no {what}")]
    Empty {
        field: &'static str,
        path: String,
        what: &'static str,
    },
    #[error("journal.trust_anchors")]
    Anchors(#[source] Box<crate::crypto::tls::AnchorsError>),
    #[error("journal.client_certificate and journal.client_key go together")]
    HalfAClient,
    #[error("the system trust store has no usable certificates; set journal.trust_anchors")]
    NoSystemRoots,
    #[error("journal TLS")]
    Tls(#[source] rustls::Error),
    #[error("the journal's TLS configuration is not FIPS-approved in this build")]
    NotFips,
}

/// What connecting needs, made once: the parsed URL with the password added, and the TLS
/// connector (used only when the URL's `sslmode` asks for TLS).
#[derive(Clone)]
pub struct Connect {
    pub pg: tokio_postgres::Config,
    pub tls: MakeRustlsConnect,
    /// `host:port/database`, for logs and status: never a password.
    pub location: String,
}

impl Connect {
    /// Reads `[journal]`: the URL, the password, the TLS anchors and client certificate.
    pub fn new(config: &JournalConfig, fips: bool) -> Result<Self, ConnectError> {
        let url = config.url.as_deref().unwrap_or_default();
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(ConnectError::Url("the scheme must be postgres://".into()));
        }
        let mut pg: tokio_postgres::Config = url
            .parse()
            // The parser's cause names the option or the byte that is wrong, never a value.
            .map_err(|e: tokio_postgres::Error| ConnectError::Url(crate::report::chain(&e)))?;
        if pg.get_password().is_some() {
            return Err(ConnectError::PasswordInUrl);
        }
        if pg.get_user().is_none() {
            return Err(ConnectError::NoUser);
        }
        if config.password_env.is_some() || config.password_file.is_some() {
            let password = crate::secret::read_text(
                "journal password",
                config.password_env.as_deref(),
                config.password_file.as_deref(),
            )
            .map_err(ConnectError::Password)?;
            pg.password(password.as_bytes());
        }
        if pg.get_application_name().is_none() {
            pg.application_name("certconn");
        }
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(std::time::Duration::from_secs(10));
        }
        // A dead server is noticed on an idle connection too, not only at the next query.
        pg.keepalives(true)
            .keepalives_idle(std::time::Duration::from_secs(30));
        let tls = if pg.get_ssl_mode() == SslMode::Disable {
            // Never used, but the pool's type is the same either way.
            MakeRustlsConnect::new(client_config(Arc::new(RootCertStore::empty()), None, fips)?)
        } else {
            let roots = match &config.trust_anchors {
                Some(path) => Arc::new(read_anchors(path)?),
                // `prefer` (the default) without anchors and without a system store: TLS, if
                // the server offers it, cannot be verified and fails, rather than go unverified.
                None if pg.get_ssl_mode() == SslMode::Prefer => {
                    system_roots().unwrap_or_else(|_| Arc::new(RootCertStore::empty()))
                }
                None => system_roots()?,
            };
            let client = match (&config.client_certificate, &config.client_key) {
                (Some(cert), Some(key)) => Some(read_client(cert, key)?),
                (None, None) => None,
                _ => return Err(ConnectError::HalfAClient),
            };
            MakeRustlsConnect::new(client_config(roots, client, fips)?)
        };
        let location = location_of(&pg);
        let remote = pg.get_hosts().iter().any(|h| match h {
            Host::Tcp(name) => !is_loopback(name),
            Host::Unix(_) => false,
        });
        if remote && pg.get_ssl_mode() != SslMode::Require {
            tracing::warn!(
                journal = %location,
                "the journal's database is not on this host and journal.url does not say \
                 sslmode=require: the connection may go without TLS"
            );
        }
        Ok(Self { pg, tls, location })
    }
}

impl Connect {
    /// One connection outside any pool, for a one-off look (`check-config`, the benchmark's
    /// administration); it closes when the client is dropped.
    pub async fn client(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) = self.pg.connect(self.tls.clone()).await?;
        tokio::spawn(connection);
        Ok(client)
    }
}

/// `postgres://user@host:port/database`, without the password, for the log and status.
fn location_of(pg: &tokio_postgres::Config) -> String {
    let host = match pg.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres://{}@{host}:{port}/{}",
        pg.get_user().unwrap_or_default(),
        pg.get_dbname().or(pg.get_user()).unwrap_or_default()
    )
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn read_anchors(path: &std::path::Path) -> Result<RootCertStore, ConnectError> {
    crate::crypto::tls::read_anchors(path).map_err(|e| ConnectError::Anchors(Box::new(e)))
}

fn system_roots() -> Result<Arc<RootCertStore>, ConnectError> {
    crate::crypto::tls::system_roots().map_err(|_| ConnectError::NoSystemRoots)
}

type ClientAuth = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn read_client(cert: &std::path::Path, key: &std::path::Path) -> Result<ClientAuth, ConnectError> {
    let file_err = |field: &'static str,
                    path: &std::path::Path,
                    source: Box<dyn std::error::Error + Send + Sync>| {
        ConnectError::File {
            field,
            path: path.display().to_string(),
            source,
        }
    };
    let pem = std::fs::read(cert).map_err(|e| file_err("client_certificate", cert, Box::new(e)))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err("client_certificate", cert, Box::new(e)))?;
    if chain.is_empty() {
        return Err(ConnectError::Empty {
            field: "client_certificate",
            path: cert.display().to_string(),
            what: "PEM certificate",
        });
    }
    let key_pem =
        crate::files::read_protected(key).map_err(|e| file_err("client_key", key, Box::new(e)))?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| file_err("client_key", key, Box::new(e)))?;
    Ok((chain, private))
}

fn client_config(
    roots: Arc<RootCertStore>,
    client: Option<ClientAuth>,
    fips: bool,
) -> Result<ClientConfig, ConnectError> {
    let builder = ClientConfig::builder_with_provider(crate::crypto::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(ConnectError::Tls)?
        .with_root_certificates(roots);
    let config = match client {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(ConnectError::Tls)?,
        None => builder.with_no_client_auth(),
    };
    if fips && !config.fips() {
        return Err(ConnectError::NotFips);
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> JournalConfig {
        JournalConfig {
            url: Some(url.into()),
            ..JournalConfig::default()
        }
    }

    #[test]
    fn a_password_in_the_url_is_refused_and_never_echoed() {
        let e = Connect::new(&config("postgres://certconn:hunter2@db/certconn"), false)
            .err()
            .expect("refused");
        let text = crate::report::chain(&e);
        assert!(text.contains("password_file"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn the_url_must_be_postgres_and_name_a_user() {
        let e = Connect::new(&config("mysql://u@db/x"), false)
            .err()
            .expect("refused");
        assert!(e.to_string().contains("postgres://"), "{e}");
        let e = Connect::new(&config("postgres://db:5432/x"), false)
            .err()
            .expect("refused");
        assert!(e.to_string().contains("no user"), "{e}");
    }

    #[test]
    fn a_url_that_does_not_parse_says_which_option_is_wrong_without_its_password() {
        let e = Connect::new(
            &config("postgres://certconn:hunter2@db/certconn?sslmode=sometimes"),
            false,
        )
        .err()
        .expect("refused");
        let text = crate::report::chain(&e);
        assert!(
            text.contains("invalid value for option `sslmode`"),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "{text}");
        let e = Connect::new(
            &config("postgres://certconn@db/certconn?colour=blue"),
            false,
        )
        .err()
        .expect("refused");
        assert!(e.to_string().contains("unknown option `colour`"), "{e}");
    }

    #[test]
    fn the_location_shows_where_but_not_the_password() {
        let c = crate::secret::testing::with_env("CERTCONN_TEST_PG_PASSWORD", "s3cret-pw", || {
            Connect::new(
                &JournalConfig {
                    password_env: Some("CERTCONN_TEST_PG_PASSWORD".into()),
                    ..config("postgres://certconn@db.example:6543/fleet")
                },
                false,
            )
        })
        .unwrap_or_else(|e| panic!("{}", crate::report::chain(&e)));
        assert_eq!(c.location, "postgres://certconn@db.example:6543/fleet");
        assert_eq!(c.pg.get_password(), Some(&b"s3cret-pw"[..]));
        assert!(!format!("{:?}", c.location).contains("s3cret"));
    }
}
