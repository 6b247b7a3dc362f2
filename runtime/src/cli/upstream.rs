//! `certconn upstream`: the connector's registration with its upstream service. Offline, like
//! `certconn keys`: it takes the data directory's lock, so the daemon must be stopped (the
//! daemon holds custody in memory); the daemon uses the identity from its next start.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Subcommand;

use certconn::app::datadir;
use certconn::app::Config;
use certconn::custody::{KeyAlgorithm, KeyLocation, KeyStore};
use certconn::sources::upstream::identity::{self, Enrolment};

#[derive(Debug, Subcommand)]
pub enum Upstream {
    /// Register this connector with its service: a new identity key in custody, a CSR sent with
    /// the one-time enrolment token, and the identity certificate the service issues kept with
    /// the key. Every later call is mutual TLS with it; certconn renews it itself. Registering
    /// again replaces the identity.
    Register {
        /// The service's URL. Default: `upstream.service` from the config.
        #[arg(long)]
        service: Option<String>,
        /// File holding the one-time enrolment token the service gave (mode 0600).
        #[arg(long)]
        token_file: PathBuf,
        /// PEM file of the CAs the service's TLS certificate chains to, for this call. Default:
        /// `upstream.trust_anchors`, else the system trust store. Later calls trust the CA the
        /// service names in its answer (unless `upstream.trust_anchors` is set).
        #[arg(long)]
        trust_anchors: Option<PathBuf>,
        /// ec-p256 or ec-p384.
        #[arg(long, default_value = "ec-p256")]
        alg: KeyAlgorithm,
        /// `software` (sealed at rest per custody.protection) or `pkcs11` (on the
        /// custody.pkcs11 token, never extractable).
        #[arg(long, default_value = "software")]
        store: KeyLocation,
    },
}

pub async fn run(config_path: &std::path::Path, what: Upstream) -> anyhow::Result<()> {
    let Upstream::Register {
        service,
        token_file,
        trust_anchors,
        alg,
        store,
    } = what;
    let config = Config::load(config_path)?;
    let configured = config.upstream.as_ref();
    let Some(service) = service.or_else(|| configured.map(|u| u.service.get_ref().clone())) else {
        bail!(
            "no service: give --service URL, or set upstream.service in {}",
            config_path.display()
        );
    };
    let anchors = trust_anchors.or_else(|| {
        configured
            .and_then(|u| u.trust_anchors.as_ref())
            .map(|p| p.to_path_buf())
    });
    super::keep_keys_out_of_cores(Some(&config.custody))?;
    let raw = certconn::files::read_protected(&token_file)
        .with_context(|| format!("--token-file {}", token_file.display()))?;
    let token = std::str::from_utf8(&raw)
        .map(|t| zeroize::Zeroizing::new(t.trim().to_owned()))
        .unwrap_or_default();
    if token.is_empty() {
        bail!(
            "--token-file {}: no token in it (empty, or not UTF-8 text)",
            token_file.display()
        );
    }
    let _lock = datadir::lock(&config.data_dir)?;
    let instance = datadir::instance_id(&config.data_dir)?;
    let keys = std::sync::Arc::new(KeyStore::open(&config.keys_dir(), &config.custody)?);
    let proxy = certconn::proxy::Proxy::open(&config.proxy)?;
    let registered = identity::register(
        &keys,
        &config.data_dir,
        Enrolment {
            service: &service,
            token,
            anchors: anchors.as_deref(),
            proxy,
            algorithm: alg,
            location: store,
            instance: &instance,
        },
        &config.policy(),
    )
    .await?;
    tracing::info!(
        event_id = 5020,
        %service,
        connector_id = %registered.connector_id,
        serial = %registered.serial,
        "registered with the upstream service"
    );
    println!(
        "registered with {service} as {}\n  identity key: {} ({})\n  certificate serial {}, valid until {}\n  the service's CA: {}\n",
        registered.connector_id,
        registered.key,
        match store {
            KeyLocation::Pkcs11 => "on the PKCS#11 token",
            KeyLocation::Software => "software, sealed per custody.protection",
        },
        registered.serial,
        registered.not_after,
        identity::service_ca_file(&config.data_dir).display(),
    );
    if configured.is_some_and(|u| u.token_file.is_some()) {
        println!("upstream.token_file is set: remove it from the config so that the daemon uses this identity.");
    } else if configured.is_none() {
        println!(
            "Add [upstream] with service = \"{service}\" to the config, then start the daemon."
        );
    } else {
        println!("Start (or restart) the daemon to use it.");
    }
    Ok(())
}
