//! The API's certificate issued by a CA key certconn holds (`api.tls.issuer`), and renewed by
//! certconn before it expires — the way the SCEP RA renews itself, so that the API does not
//! quietly stop one day because a file nobody watched ran out.
//!
//! The key is `api-tls` in custody (P-256, made by certconn, never granted to a plugin); the
//! certificate is its chain there, so a restart serves the same certificate until it is due. It
//! is due at two thirds of its lifetime, when the CA's certificate changed, or when the names
//! asked for changed; then a fresh key is made and a new certificate issued, and new handshakes
//! get it at once (the server resolves its certificate per handshake). Each certificate is
//! recorded in the signature trail, as every certificate a CA key signs is.
//!
//! The key signs TLS handshakes through custody ([`CustodySigningKey`]): its private half is
//! never copied into rustls.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use certconn_x509::SubjectAltName;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

use super::ApiTlsError;
use crate::custody::{KeyAlgorithm, KeyLocation, KeyStore, StoredKey};

/// The custody key of the API's issued certificate.
pub const ISSUED_KEY: &str = "api-tls";

/// Checked at least this often, so that a clock change or a long suspend is noticed.
const LONGEST_SLEEP: Duration = Duration::from_secs(3600);

/// Where the daemon writes the issuing CA's certificate, for the CLI and other clients to trust.
pub fn anchor_file(data_dir: &Path) -> PathBuf {
    data_dir.join("api-ca.pem")
}

/// `text` as a name a TLS server certificate carries: an IP address or a DNS name.
pub fn server_name_of(text: &str) -> Result<SubjectAltName, String> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(SubjectAltName::Ip(ip));
    }
    match ServerName::try_from(text.to_owned()) {
        Ok(ServerName::DnsName(_)) if !text.is_empty() => {
            Ok(SubjectAltName::Dns(text.to_ascii_lowercase()))
        }
        _ => Err(format!("{text:?} is neither a DNS name nor an IP address")),
    }
}

/// The names of the API's certificate when `api.tls.names` gives none: the name the CLI
/// checks (`server_name`), or the address it connects to — for loopback or an unspecified
/// address, `127.0.0.1` and `localhost`.
pub fn default_names(server_name: Option<&str>, listen: IpAddr) -> Vec<String> {
    if let Some(name) = server_name {
        return vec![name.to_owned()];
    }
    if listen.is_loopback() || listen.is_unspecified() {
        vec!["127.0.0.1".to_owned(), "localhost".to_owned()]
    } else {
        vec![listen.to_string()]
    }
}

/// What the API's issued certificate is made from.
pub struct IssuePlan {
    /// The CA key in custody.
    pub issuer: String,
    pub names: Vec<SubjectAltName>,
    pub validity_days: u32,
}

struct Current {
    certified: Arc<CertifiedKey>,
    serial: Vec<u8>,
    not_before: u64,
    not_after: u64,
}

impl Current {
    fn renew_at(&self) -> u64 {
        self.not_before + self.not_after.saturating_sub(self.not_before) * 2 / 3
    }
}

/// The API's certificate as certconn issues and renews it; rustls asks it for the certificate
/// at each handshake.
pub struct IssuedCertificate {
    keys: Arc<KeyStore>,
    plan: IssuePlan,
    current: RwLock<Current>,
    /// When the served certificate expires (Unix seconds), for metrics and the status page.
    not_after: Arc<AtomicU64>,
}

impl std::fmt::Debug for IssuedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCertificate")
            .field("issuer", &self.plan.issuer)
            .field("not_after", &self.not_after.load(Ordering::Relaxed))
            .finish()
    }
}

impl IssuedCertificate {
    /// At start: the certificate custody holds, when it is still good for `plan` at `now`;
    /// otherwise a fresh key and certificate. Writes the issuing CA's certificate to
    /// [`anchor_file`] in `data_dir`.
    pub async fn open(
        keys: Arc<KeyStore>,
        plan: IssuePlan,
        data_dir: &Path,
        now: u64,
    ) -> Result<Self, ApiTlsError> {
        let ca_cert = ca_certificate(&keys, &plan.issuer)?;
        let anchor = anchor_file(data_dir);
        let pem = crate::pki::pem::encode("CERTIFICATE", &ca_cert);
        crate::files::write_atomic(&anchor, pem.as_bytes(), 0o644)
            .map_err(|source| ApiTlsError::WriteAnchor { source })?;
        let held = keys
            .get(ISSUED_KEY)
            .ok()
            .and_then(|key| current_of(key, &plan, &ca_cert).ok())
            .filter(|c| now < c.renew_at());
        let current = match held {
            Some(c) => c,
            None => issue(&keys, &plan, &ca_cert, now).await?,
        };
        tracing::info!(
            event_id = 5601,
            issuer = %plan.issuer,
            serial = %hex::encode(&current.serial),
            not_after = %rfc3339(current.not_after),
            renew_at = %rfc3339(current.renew_at()),
            "the API serves a certificate issued by certconn's own CA"
        );
        let not_after = Arc::new(AtomicU64::new(current.not_after));
        Ok(Self {
            keys,
            plan,
            current: RwLock::new(current),
            not_after,
        })
    }

    /// Renews the certificate when it is due at `now` (or the CA's certificate changed):
    /// true when it did.
    pub async fn maintain(&self, now: u64) -> Result<bool, ApiTlsError> {
        let ca_cert = ca_certificate(&self.keys, &self.plan.issuer)?;
        let due = {
            let current = self.read();
            now >= current.renew_at()
                || current.certified.cert.get(1).map(|c| c.as_ref()) != Some(&ca_cert[..])
        };
        if !due {
            return Ok(false);
        }
        let next = issue(&self.keys, &self.plan, &ca_cert, now).await?;
        tracing::info!(
            event_id = 5602,
            serial = %hex::encode(&next.serial),
            not_after = %rfc3339(next.not_after),
            "the API's certificate was renewed; new connections get it"
        );
        self.not_after.store(next.not_after, Ordering::Relaxed);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(true)
    }

    /// When the served certificate expires, kept current across renewals.
    pub fn not_after(&self) -> Arc<AtomicU64> {
        self.not_after.clone()
    }

    /// The serial of the served certificate.
    pub fn serial(&self) -> Vec<u8> {
        self.read().serial.clone()
    }

    /// Renews the certificate when due until `shutdown`; a failed renewal is retried every
    /// minute and logged (the status page shows the expiry coming).
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            let now = crate::journal::now_secs();
            let wait = match self.maintain(now).await {
                Ok(_) => {
                    let at = self.read().renew_at();
                    Duration::from_secs(at.saturating_sub(now).max(1)).min(LONGEST_SLEEP)
                }
                Err(e) => {
                    tracing::error!(event_id = 5603, error = %crate::report::chain(&e), "could not renew the API's certificate; retrying in a minute");
                    Duration::from_secs(60)
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Current> {
        self.current.read().unwrap_or_else(|p| p.into_inner())
    }
}

impl ResolvesServerCert for IssuedCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.read().certified.clone())
    }
}

/// The issuing CA's certificate, from custody.
fn ca_certificate(keys: &KeyStore, issuer: &str) -> Result<Vec<u8>, ApiTlsError> {
    let failed = |why: String| ApiTlsError::Issue {
        issuer: issuer.to_owned(),
        source: why.into(),
    };
    let ca = keys.get(issuer).map_err(|e| failed(e.to_string()))?;
    ca.chain.first().cloned().ok_or_else(|| {
        failed(
            "the key has no certificate (self_signed, or a chain imported with `certconn keys`)"
                .into(),
        )
    })
}

/// What custody holds for `key`, when it is a certificate `plan` would issue now from the CA
/// certificate `ca_cert`: the same CA, the same names.
fn current_of(key: Arc<StoredKey>, plan: &IssuePlan, ca_cert: &[u8]) -> Result<Current, String> {
    let [cert, issuer] = key.chain.as_slice() else {
        return Err("no certificate".into());
    };
    if issuer.as_slice() != ca_cert {
        return Err("issued by another CA certificate".into());
    }
    let parsed =
        <x509_cert::Certificate as der::Decode>::from_der(cert).map_err(|e| e.to_string())?;
    let names =
        certconn_x509::extensions::subject_alt_names_of(&parsed).map_err(|e| e.to_string())?;
    if names != plan.names {
        return Err("issued for other names".into());
    }
    let (not_before, not_after) = certconn_x509::validity_of(cert).map_err(|e| e.to_string())?;
    Ok(Current {
        certified: certified(key.clone(), cert, ca_cert),
        serial: parsed.tbs_certificate.serial_number.as_bytes().to_vec(),
        not_before,
        not_after,
    })
}

/// A fresh key in custody and a certificate for it from `plan.issuer`, valid from `now`.
async fn issue(
    keys: &Arc<KeyStore>,
    plan: &IssuePlan,
    ca_cert: &[u8],
    now: u64,
) -> Result<Current, ApiTlsError> {
    let failed = |source: Box<dyn std::error::Error + Send + Sync>| ApiTlsError::Issue {
        issuer: plan.issuer.clone(),
        source,
    };
    let ca = keys.get(&plan.issuer).map_err(|e| failed(e.into()))?;
    keys.remove(ISSUED_KEY).map_err(|e| failed(e.into()))?;
    let key = keys
        .create(ISSUED_KEY, KeyAlgorithm::EcP256, KeyLocation::Software)
        .map_err(|e| failed(e.into()))?;
    let cert = crate::pki::ca::tls_server_certificate_at(
        &key.key,
        &plan.names,
        &ca.key,
        ca_cert,
        plan.validity_days,
        now,
    )
    .map_err(|e| failed(e.into()))?;
    keys.set_chain(ISSUED_KEY, vec![cert.clone(), ca_cert.to_vec()])
        .map_err(|e| failed(e.into()))?;
    crate::custody::trail::record_host_certificate(keys, &plan.issuer, &cert)
        .await
        .map_err(|e| failed(e.into()))?;
    let key = keys.get(ISSUED_KEY).map_err(|e| failed(e.into()))?;
    current_of(key, plan, ca_cert).map_err(|why| failed(why.into()))
}

fn certified(key: Arc<StoredKey>, cert: &[u8], ca_cert: &[u8]) -> Arc<CertifiedKey> {
    let chain = vec![
        CertificateDer::from(cert.to_vec()),
        CertificateDer::from(ca_cert.to_vec()),
    ];
    Arc::new(CertifiedKey::new(
        chain,
        Arc::new(crate::custody::tls::CustodySigningKey(key)),
    ))
}

fn rfc3339(secs: u64) -> String {
    crate::report::rfc3339_ms(i64::try_from(secs).unwrap_or(i64::MAX).saturating_mul(1000))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::custody::CustodyConfig;

    const DAY: u64 = 86_400;

    struct Harness {
        dir: tempfile::TempDir,
        keys: Arc<KeyStore>,
    }

    fn harness() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let keys =
            Arc::new(KeyStore::open(&dir.path().join("keys"), &CustodyConfig::default()).unwrap());
        let ca = keys
            .create("ca", KeyAlgorithm::EcP256, KeyLocation::Software)
            .unwrap();
        let ca_cert =
            crate::pki::ca::self_signed(&ca.key, &"CN=API test CA".parse().unwrap(), 3650).unwrap();
        keys.set_chain("ca", vec![ca_cert]).unwrap();
        Harness { dir, keys }
    }

    fn plan(names: &[&str]) -> IssuePlan {
        IssuePlan {
            issuer: "ca".into(),
            names: names.iter().map(|n| server_name_of(n).unwrap()).collect(),
            validity_days: 30,
        }
    }

    async fn open(h: &Harness, names: &[&str], now: u64) -> IssuedCertificate {
        IssuedCertificate::open(h.keys.clone(), plan(names), h.dir.path(), now)
            .await
            .unwrap()
    }

    /// A TLS handshake with `issued` as the server's resolver, the client trusting the CA in
    /// the anchor file and checking `name`: the serial of the certificate the client got.
    async fn handshake(h: &Harness, issued: Arc<IssuedCertificate>, name: &str) -> Vec<u8> {
        let provider = crate::crypto::tls::provider();
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(issued);
        let client = super::super::client_config(
            &anchor_file(h.dir.path()),
            &crate::crypto::AlgorithmPolicy::default(),
        )
        .unwrap();
        let (a, b) = tokio::io::duplex(1 << 16);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let connector = tokio_rustls::TlsConnector::from(client);
        let name = ServerName::try_from(name.to_owned()).unwrap();
        let (server, client) = tokio::join!(acceptor.accept(a), connector.connect(name, b));
        server.unwrap();
        let client = client.unwrap();
        let cert = &client.get_ref().1.peer_certificates().unwrap()[0];
        let parsed = <x509_cert::Certificate as der::Decode>::from_der(cert).unwrap();
        parsed.tbs_certificate.serial_number.as_bytes().to_vec()
    }

    #[tokio::test]
    async fn a_client_trusting_the_ca_accepts_the_issued_certificate_for_its_names() {
        let h = harness();
        let now = crate::journal::now_secs();
        let issued = Arc::new(open(&h, &["127.0.0.1", "api.example.test"], now).await);
        let serial = issued.serial();
        assert_eq!(
            handshake(&h, issued.clone(), "api.example.test").await,
            serial
        );
        assert_eq!(handshake(&h, issued.clone(), "127.0.0.1").await, serial);
        // The key signs handshakes from custody, and the certificate is its chain there.
        let stored = h.keys.get(ISSUED_KEY).unwrap();
        assert_eq!(stored.chain.len(), 2);
        let not_after = issued.not_after().load(Ordering::Relaxed);
        assert!(
            (now + 29 * DAY..=now + 30 * DAY).contains(&not_after),
            "{not_after}"
        );
    }

    #[tokio::test]
    async fn it_renews_at_two_thirds_of_its_lifetime_with_a_fresh_key_and_serves_the_new_one() {
        let h = harness();
        let now = crate::journal::now_secs();
        // Issued 21 days ago on a 30-day lifetime: still valid, and past its renewal point.
        let t0 = now - 21 * DAY;
        let issued = Arc::new(open(&h, &["127.0.0.1"], t0).await);
        let first = issued.serial();
        let first_key = h
            .keys
            .get(ISSUED_KEY)
            .unwrap()
            .key
            .public_key_der()
            .to_vec();
        assert_eq!(handshake(&h, issued.clone(), "127.0.0.1").await, first);

        // Before two thirds of its lifetime: nothing to do.
        assert!(!issued.maintain(t0 + 19 * DAY).await.unwrap());
        assert_eq!(issued.serial(), first);

        // Now, past two thirds: a new serial and a new key, served at the next handshake.
        assert!(issued.maintain(now).await.unwrap());
        let second = issued.serial();
        assert_ne!(second, first);
        let second_key = h
            .keys
            .get(ISSUED_KEY)
            .unwrap()
            .key
            .public_key_der()
            .to_vec();
        assert_ne!(second_key, first_key);
        assert_eq!(handshake(&h, issued.clone(), "127.0.0.1").await, second);
        let not_after = issued.not_after().load(Ordering::Relaxed);
        assert!(not_after >= now + 29 * DAY, "{not_after}");
        // And not again until the new one is due.
        assert!(!issued.maintain(now + DAY).await.unwrap());
    }

    #[tokio::test]
    async fn a_restart_takes_up_the_held_certificate_until_it_is_due_or_the_names_change() {
        let h = harness();
        let t0 = crate::journal::now_secs();
        let first = open(&h, &["127.0.0.1", "localhost"], t0).await.serial();
        // A restart a day later: the same certificate.
        assert_eq!(
            open(&h, &["127.0.0.1", "localhost"], t0 + DAY)
                .await
                .serial(),
            first
        );
        // Other names: a new one.
        let renamed = open(&h, &["api.example.test"], t0 + DAY).await.serial();
        assert_ne!(renamed, first);
        // Past two thirds: a new one at start.
        let late = open(&h, &["api.example.test"], t0 + 25 * DAY)
            .await
            .serial();
        assert_ne!(late, renamed);
    }

    #[tokio::test]
    async fn an_issuer_without_a_certificate_is_a_clear_error() {
        let h = harness();
        h.keys
            .create("bare", KeyAlgorithm::EcP256, KeyLocation::Software)
            .unwrap();
        let mut p = plan(&["127.0.0.1"]);
        p.issuer = "bare".into();
        let e = IssuedCertificate::open(h.keys.clone(), p, h.dir.path(), 0)
            .await
            .unwrap_err();
        let text = crate::report::chain(&e);
        assert!(
            text.contains("api.tls.issuer")
                && text.contains("\"bare\"")
                && text.contains("no certificate"),
            "{text}"
        );
    }

    #[test]
    fn names_are_dns_names_or_ip_addresses() {
        assert_eq!(
            server_name_of("10.0.0.5").unwrap(),
            SubjectAltName::Ip("10.0.0.5".parse().unwrap())
        );
        assert_eq!(
            server_name_of("API.Example.test").unwrap(),
            SubjectAltName::Dns("api.example.test".into())
        );
        for bad in ["", "not a name", "a..b", "http://x"] {
            assert!(server_name_of(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            default_names(None, "0.0.0.0".parse().unwrap()),
            ["127.0.0.1", "localhost"]
        );
        assert_eq!(
            default_names(None, "10.0.0.5".parse().unwrap()),
            ["10.0.0.5"]
        );
        assert_eq!(
            default_names(Some("api.example.test"), "10.0.0.5".parse().unwrap()),
            ["api.example.test"]
        );
    }
}
