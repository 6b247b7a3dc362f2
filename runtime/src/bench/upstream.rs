//! `certconn bench --upstream`: work through the connector protocol, measured where a
//! device-management service sees it.
//!
//! The reference service (`certconn-reference-service`, beside this binary) runs on a loopback
//! port (with `--tls`, over HTTPS from a CA it makes, which the connector trusts); a
//! daemon-equivalent connector (journal, scheduler, the upstream source with its
//! default long poll) takes its work. Issue items — an EC P-256 key made by certconn, the
//! local CA, a PKCS#12 whose password is sealed to a device certificate — are enqueued through
//! the service's admin API, and the service's own clock times each from enqueue to result:
//!
//! 1. latency one item at a time (nothing else in flight);
//! 2. throughput and latency with `--jobs` items enqueued at once;
//! 3. beside them, the latency a 30-second poll interval gives (the connectors certconn
//!    replaces): a wait uniform over the interval, plus the same processing.

use std::path::Path;
use std::process::{Child, Command};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::StreamExt;
use hyper::Method;
use serde_json::{json, Value};

use certconn::app::{App, Config};
use certconn::crypto::AlgorithmPolicy;
use certconn::custody::{KeyAlgorithm, KeyLocation, KeyStore, PrivateKey};
use certconn::sources::outbound::Target;
use certconn::sources::upstream::identity::{self, Enrolment};

/// Items measured one at a time (at most; no more than `--jobs`).
const SEQUENTIAL: usize = 50;

/// Admin calls enqueuing the burst at once.
const ENQUEUE_IN_FLIGHT: usize = 16;

/// The poll interval of the connectors certconn replaces.
const POLL_INTERVAL_SECONDS: f64 = 30.0;

/// How the connector proves who it is to the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Credentials {
    /// A bearer token over plain HTTP.
    Token,
    /// A bearer token over HTTPS (`--tls`).
    TokenOverTls,
    /// Its registered identity over mutual TLS (`--tls --identity`): the identity key in
    /// custody signs each handshake.
    Identity,
}

impl Credentials {
    fn tls(self) -> bool {
        self != Self::Token
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Token => "HTTP, bearer token",
            Self::TokenOverTls => "HTTPS, bearer token",
            Self::Identity => {
                "HTTPS, mutual TLS with the registered identity (EC P-256, software custody)"
            }
        }
    }
}

/// The reference service, stopped when dropped.
struct Service {
    child: Child,
    url: String,
    /// Its CA certificate, when it serves HTTPS: the connector's trust anchor.
    ca_file: Option<std::path::PathBuf>,
    /// The admin API, on the same port (and the same TLS) as the connector protocol.
    admin: Target,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Service {
    fn start(dir: &Path, token_file: &Path, tls: bool) -> anyhow::Result<Self> {
        let binary = std::env::current_exe()?.with_file_name("certconn-reference-service");
        let addr_file = dir.join("service.addr");
        let ca_file = tls.then(|| dir.join("service-ca.pem"));
        let mut command = Command::new(&binary);
        command
            .args(["--listen", "127.0.0.1:0", "--visibility-seconds", "60"])
            .arg("--addr-file")
            .arg(&addr_file)
            .arg("--connector-token-file")
            .arg(token_file)
            .stderr(std::process::Stdio::null());
        if let Some(ca_file) = &ca_file {
            // Its CA certificate is written before the address: ready together.
            command.arg("--tls-ca-file").arg(ca_file);
        }
        let mut child = command.spawn().with_context(|| {
            format!(
                "{} (build it beside certconn: cargo build --release -p certconn-reference-service)",
                binary.display()
            )
        })?;
        let started = listening(&mut child, &addr_file).and_then(|addr| {
            let scheme = if tls { "https" } else { "http" };
            let url = format!("{scheme}://{addr}");
            let admin = Target::new(&url, ca_file.as_deref(), None, &AlgorithmPolicy::default())?;
            Ok((url, admin))
        });
        match started {
            Ok((url, admin)) => Ok(Self {
                child,
                url,
                ca_file,
                admin,
            }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }

    fn url(&self) -> &str {
        &self.url
    }

    async fn enqueue(&self, item: &Value) -> anyhow::Result<()> {
        self.admin_call(Method::POST, "/work", Some(item)).await?;
        Ok(())
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.get_if_there(path)
            .await?
            .with_context(|| format!("GET /admin/v1{path}: not found"))
    }

    /// `None` for a 404 (a result not there yet).
    async fn get_if_there(&self, path: &str) -> anyhow::Result<Option<Value>> {
        self.admin_call(Method::GET, path, None).await
    }

    async fn admin_call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Option<Value>> {
        let what = format!("{method} /admin/v1{path}");
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(format!("{}/admin/v1{path}", self.admin.prefix()))
            .header("host", self.admin.authority());
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let body = body
            .map(serde_json::to_vec)
            .transpose()?
            .unwrap_or_default();
        let request = request.body(http_body_util::Full::new(hyper::body::Bytes::from(body)))?;
        let answer = self
            .admin
            .send(request, None, Duration::from_secs(30))
            .await
            .map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
        if answer.status == hyper::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !answer.status.is_success() {
            bail!(
                "{what}: HTTP {}: {}",
                answer.status,
                String::from_utf8_lossy(&answer.body)
            );
        }
        if answer.body.is_empty() {
            return Ok(Some(Value::Null));
        }
        Ok(Some(
            serde_json::from_slice(&answer.body).with_context(|| format!("{what}: not JSON"))?,
        ))
    }
}

/// The address the service wrote once it listened: its readiness signal.
fn listening(child: &mut Child, addr_file: &Path) -> anyhow::Result<std::net::SocketAddr> {
    let start = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(addr_file) {
            return Ok(text.trim().parse()?);
        }
        if let Some(status) = child.try_wait()? {
            bail!("the reference service exited at start: {status}");
        }
        if start.elapsed() > Duration::from_secs(30) {
            bail!("the reference service did not start within 30 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub async fn run(
    plugins: &Path,
    dir: &Path,
    workers: usize,
    items: usize,
    credentials: Credentials,
) -> anyhow::Result<()> {
    let token_file = dir.join("connector-token");
    certconn::files::write_atomic(&token_file, b"bench-connector-token\n", 0o600)?;
    let service = Service::start(dir, &token_file, credentials.tls())?;
    let device = PrivateKey::generate(KeyAlgorithm::EcP256)?;
    let device_cert = certconn::pki::ca::self_signed(
        &device,
        &x509_cert::name::Name::from_str("CN=bench device")?,
        30,
    )?;
    let device_pem = certconn::pki::pem::encode("CERTIFICATE", &device_cert);

    let mut upstream = format!("[upstream]\nservice = \"{}\"\n", service.url());
    if credentials != Credentials::Identity {
        upstream.push_str(&format!("token_file = \"{}\"\n", token_file.display()));
        if let Some(ca_file) = &service.ca_file {
            upstream.push_str(&format!("trust_anchors = \"{}\"\n", ca_file.display()));
        }
    }
    let config: Config = super::bench_config_with(dir, plugins, workers, &upstream)?;
    if credentials == Credentials::Identity {
        // As `certconn upstream register` does; the service's CA comes with the identity.
        register(&service, &config).await?;
    }
    let app = Arc::new(App::open(config).await?);
    let connector = app
        .upstream
        .clone()
        .context("the bench configuration has no [upstream]")?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let scheduler = {
        let app = app.clone();
        let rx = stop_rx.clone();
        tokio::spawn(async move { app.run_scheduler(rx).await })
    };
    let polling = tokio::spawn(connector.run(stop_rx));
    println!(
        "certconn bench --upstream: the reference service on {} ({}), long poll 30 s, batch 10, {workers} workers; issue items (EC P-256, local-ca, PKCS#12 sealed to the device)",
        service.url(),
        credentials.describe()
    );

    let item = |id: String| {
        json!({
            "id": id, "kind": "issue", "profile": "device",
            "subject": "CN=bench device,O=certconn", "sans": ["email:device@bench.example"],
            "key_algorithm": "ec-p256",
            "device_certificate": device_pem,
        })
    };
    // Warm-up: the first item pays for the first poll, the plugin's compilation cache and so on.
    service.enqueue(&item("warm-up".into())).await?;
    wait_for_results(&service, 1).await?;

    // 1. One at a time.
    let sequential = items.min(SEQUENTIAL);
    for i in 0..sequential {
        let id = format!("one-{i}");
        service.enqueue(&item(id.clone())).await?;
        let start = Instant::now();
        loop {
            if service
                .get_if_there(&format!("/results/{id}"))
                .await?
                .is_some()
            {
                break;
            }
            if start.elapsed() > Duration::from_secs(120) {
                bail!("item {id} got no result within 2 minutes");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    // 2. A burst: the items go to the service side by side, as many devices' requests would,
    //    so that how fast they are enqueued does not bound how fast the connector takes them.
    let burst: Vec<Value> = (0..items).map(|i| item(format!("burst-{i}"))).collect();
    futures::stream::iter(&burst)
        .map(|i| service.enqueue(i))
        .buffer_unordered(ENQUEUE_IN_FLIGHT)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<()>>>()?;
    wait_for_results(&service, 1 + sequential + items).await?;
    let _ = stop_tx.send(true);
    let _ = scheduler.await;
    let _ = polling.await;

    let results = service.get("/results").await?;
    let failed: Vec<&Value> = results["results"]
        .as_array()
        .map(|r| r.iter().filter(|r| r["status"] != "succeeded").collect())
        .unwrap_or_default();
    if let Some(first) = failed.first() {
        bail!("{} items failed; the first: {first}", failed.len());
    }
    let connections = service.get("/stats").await?["connector_connections"]
        .as_u64()
        .unwrap_or_default();
    let timings = service.get("/timings").await?;
    let of = |prefix: &str| -> Vec<(f64, f64)> {
        timings["timings"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["id"].as_str().is_some_and(|id| id.starts_with(prefix)))
            .filter_map(|t| Some((t["enqueued_ms"].as_f64()?, t["latency_ms"].as_f64()?)))
            .collect()
    };
    let one = of("one-");
    let burst = of("burst-");
    if one.len() != sequential || burst.len() != items {
        bail!(
            "the service timed {} + {} items, not {sequential} + {items}",
            one.len(),
            burst.len()
        );
    }
    let (p50, p99) = percentiles(&one);
    println!(
        "one at a time: {sequential:>5} items, request→result p50 {p50:>8.1} ms, p99 {p99:>8.1} ms"
    );
    let (b50, b99) = percentiles(&burst);
    let first = burst.iter().map(|(at, _)| *at).fold(f64::MAX, f64::min);
    let last = burst
        .iter()
        .map(|(at, latency)| at + latency)
        .fold(0.0, f64::max);
    let rate = items as f64 / ((last - first) / 1000.0);
    println!(
        "burst:         {items:>5} items enqueued at once, {rate:>7.1} items/s (first enqueue to last result), request→result p50 {b50:>8.1} ms, p99 {b99:>8.1} ms"
    );
    println!(
        "connections:   {connections} made by the connector for all {} items{}",
        1 + sequential + items,
        if credentials.tls() {
            " (one TLS handshake each; calls share them)"
        } else {
            ""
        }
    );
    // A poller every T seconds leaves an item waiting U(0, T) for the next poll.
    let t = POLL_INTERVAL_SECONDS * 1000.0;
    println!(
        "a {POLL_INTERVAL_SECONDS:.0} s poll interval instead (computed: a wait uniform over the interval + the processing above): p50 {:>8.1} ms, p99 {:>8.1} ms",
        0.5 * t + p50,
        0.99 * t + p50
    );
    println!(
        "long poll vs a 30 s poll: p99 {:.0}× lower",
        (0.99 * t + p50) / p99
    );
    Ok(())
}

/// Registers the connector of `config` with `service`: a one-time enrolment token from the
/// service's admin API, then what `certconn upstream register` does.
async fn register(service: &Service, config: &Config) -> anyhow::Result<()> {
    let answer = service
        .admin_call(Method::POST, "/enrolment-tokens", None)
        .await?
        .context("POST /admin/v1/enrolment-tokens: not found")?;
    let token = answer["token"]
        .as_str()
        .context("POST /admin/v1/enrolment-tokens: no token in the answer")?;
    std::fs::create_dir_all(&config.data_dir)?;
    let instance = certconn::app::datadir::instance_id(&config.data_dir)?;
    let keys = Arc::new(KeyStore::open(&config.keys_dir(), &config.custody)?);
    identity::register(
        &keys,
        &config.data_dir,
        Enrolment {
            service: service.url(),
            token: zeroize::Zeroizing::new(token.to_owned()),
            anchors: service.ca_file.as_deref(),
            proxy: None,
            algorithm: KeyAlgorithm::EcP256,
            location: KeyLocation::Software,
            instance: &instance,
        },
        &config.policy(),
    )
    .await
    .context("registering the bench connector with the reference service")?;
    Ok(())
}

/// Waits until the service holds `n` results.
async fn wait_for_results(service: &Service, n: usize) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let stats = service.get("/stats").await?;
        let have = stats["results"].as_u64().unwrap_or_default() as usize;
        if have >= n {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(600) {
            bail!("{have} of {n} results after 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// p50 and p99 of the latencies (nearest rank).
fn percentiles(timings: &[(f64, f64)]) -> (f64, f64) {
    let mut latencies: Vec<f64> = timings.iter().map(|(_, l)| *l).collect();
    latencies.sort_by(f64::total_cmp);
    let rank = |p: f64| {
        let i = ((p * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len());
        latencies[i - 1]
    };
    (rank(0.50), rank(0.99))
}
