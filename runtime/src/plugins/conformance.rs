//! `certconn plugin test FILE --config kit.toml`: the conformance kit for backend authors.
//!
//! It runs the plugin the way the daemon does — same engine, sandbox, grants and limits, the
//! backend's settings and HTTP grant from the config — but with fresh custody keys made from
//! `[keys]` in a temporary directory (never the config's data directory), and checks what every
//! backend must do: a valid package and contract, `describe`, `configure` accepting good
//! settings and refusing bad ones field by field, `health`, `issue` for a key the host made,
//! a retry with the same job id, a malformed request refused rather than crashing, pending and
//! `poll` where supported, `revoke`, and `unsupported` for what it does not claim. Each check
//! prints PASS, WARN, SKIP or FAIL with the reason; any FAIL makes the exit status 1.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::backend::describe_backend_error;
use super::bindings::types::{
    BackendError, Capabilities, IssueRequest, IssuedCertificate, RevocationReason, RevokeRequest,
};
use super::instance::InstanceSpec;
use super::package::PluginPackage;
use super::settings::BackendConfig;
use super::{EngineLimits, LoadedBackend, PluginEngine, PluginError, PreparedPlugin};
use crate::crypto::{provider, AlgorithmPolicy};
use crate::custody::grant::{CallKeys, REQUEST_HANDLE};
use crate::custody::{CustodyConfig, KeyAlgorithm, KeyConfig, KeyStore, PrivateKey, StoredKey};

/// What the kit is asked to test.
#[derive(Debug, Clone)]
pub struct KitOptions {
    /// The plugin package to test.
    pub file: PathBuf,
    /// The backend whose settings and grants to use (default: the one whose plugin has the
    /// package's name, or the only one).
    pub backend: Option<String>,
    /// The profile name sent with issue requests.
    pub profile: String,
    /// A CA-side template under which the CA answers pending (manual approval): tests
    /// pending and `poll`. Without it, that check is skipped.
    pub pending_template: Option<String>,
    /// How long to poll a pending request before failing.
    pub pending_timeout: Duration,
}

/// The parts of a certconn config the kit runs the plugin with.
pub struct KitConfig<'a> {
    pub backends: &'a BTreeMap<String, BackendConfig>,
    /// Made fresh in a temporary directory, never the config's data directory.
    pub keys: &'a BTreeMap<String, KeyConfig>,
    pub policy: AlgorithmPolicy,
    pub engine: EngineLimits,
}

/// Why the kit could not run at all (a failing check is a [`Verdict::Fail`] in the report).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KitError {
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error("--backend {wanted:?}: no such backend in the config (it has: {known})")]
    NoSuchBackend { wanted: String, known: String },
    #[error("the config has several backends; name the one to test with --backend")]
    WhichBackend,
    #[error("the config has no backend to run the plugin as")]
    NoBackend,
    #[error("a scratch directory for the kit's keys and cache")]
    Scratch(#[source] std::io::Error),
    #[error(transparent)]
    Provision(#[from] crate::pki::ca::ProvisionError),
    #[error(transparent)]
    Custody(#[from] crate::custody::CustodyError),
    #[error("making a device key for the checks")]
    Device(#[source] crate::pki::PkiError),
}

/// How one check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    Pass,
    Warn,
    Skip,
    Fail,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "PASS",
            Self::Warn => "WARN",
            Self::Skip => "SKIP",
            Self::Fail => "FAIL",
        }
    }
}

/// One check of the kit.
#[derive(Debug, serde::Serialize)]
pub struct Check {
    pub name: &'static str,
    pub verdict: Verdict,
    pub detail: String,
    pub millis: u128,
}

/// The kit's report: every check in order.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    /// The plugin version tested.
    pub plugin: String,
    /// The backend whose settings it ran with.
    pub backend: String,
    pub checks: Vec<Check>,
    #[serde(skip)]
    started: Instant,
}

impl Report {
    fn add(&mut self, name: &'static str, verdict: Verdict, detail: impl Into<String>) {
        let millis = self.started.elapsed().as_millis();
        self.started = Instant::now();
        self.checks.push(Check {
            name,
            verdict,
            detail: detail.into(),
            millis,
        });
    }

    /// How many checks ended with `v`.
    pub fn count(&self, v: Verdict) -> usize {
        self.checks.iter().filter(|c| c.verdict == v).count()
    }

    /// The report as JSON, with the counts.
    pub fn to_json(&self) -> Value {
        json!({
            "plugin": self.plugin,
            "backend": self.backend,
            "checks": self.checks,
            "passed": self.count(Verdict::Pass),
            "warnings": self.count(Verdict::Warn),
            "skipped": self.count(Verdict::Skip),
            "failed": self.count(Verdict::Fail),
        })
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "certconn plugin conformance: {} as backend {:?}",
            self.plugin, self.backend
        )?;
        for c in &self.checks {
            writeln!(
                f,
                "  {}  {:<28} {:>6} ms  {}",
                c.verdict.as_str(),
                c.name,
                c.millis,
                c.detail
            )?;
        }
        write!(
            f,
            "result: {} passed, {} warnings, {} skipped, {} failed",
            self.count(Verdict::Pass),
            self.count(Verdict::Warn),
            self.count(Verdict::Skip),
            self.count(Verdict::Fail)
        )
    }
}

/// Everything the checks need: the plugin prepared, and the instance as the daemon would build
/// it from the config (custody with fresh keys, grants, limits).
struct Kit {
    engine: Arc<PluginEngine>,
    prepared: Arc<PreparedPlugin>,
    spec: InstanceSpec,
    settings: serde_json::Map<String, Value>,
    policy: AlgorithmPolicy,
}

impl Kit {
    async fn load(
        &self,
        settings: &serde_json::Map<String, Value>,
    ) -> Result<LoadedBackend, PluginError> {
        let spec = InstanceSpec {
            settings_json: zeroize::Zeroizing::new(Value::Object(settings.clone()).to_string()),
            ..self.spec.clone()
        };
        LoadedBackend::load(
            self.engine.clone(),
            self.prepared.clone(),
            &spec,
            self.policy,
        )
        .await
    }
}

/// A device key made by the host, and its CSR.
struct Device {
    key: Arc<StoredKey>,
    csr: Vec<u8>,
}

fn device(label: &str) -> Result<Device, KitError> {
    let failed = |e: crate::pki::PkiError| KitError::Device(e);
    let key = PrivateKey::generate(KeyAlgorithm::EcP256)
        .map_err(|e| failed(crate::pki::PkiError::Crypto(e)))?;
    let subject =
        x509_cert::name::Name::from_str(&format!("CN=certconn conformance {label},O=certconn"))
            .map_err(|e| failed(crate::pki::PkiError::Invalid(e.to_string())))?;
    let csr = crate::pki::csr::build(
        &key,
        &subject,
        &[certconn_x509::SubjectAltName::Dns(
            "conformance.certconn.test".into(),
        )],
    )
    .map_err(failed)?;
    Ok(Device {
        key: Arc::new(StoredKey::new(REQUEST_HANDLE.into(), key, Vec::new())),
        csr,
    })
}

fn request(job_id: &str, profile: &str, csr: &[u8], template: Option<&str>) -> IssueRequest {
    IssueRequest {
        job_id: job_id.into(),
        profile: profile.into(),
        csr: csr.to_vec(),
        subject: None,
        subject_alt_names: Vec::new(),
        validity_days: Some(30),
        template: template.map(str::to_owned),
    }
}

/// Checks an issued certificate the way the issue step does ([`crate::pki::issued`]).
/// Returns the serial (hex).
fn check_issued(issued: &IssuedCertificate, device: &Device) -> Result<String, String> {
    crate::pki::issued::check(
        &issued.certificate,
        &issued.chain,
        device.key.key.public_key_der(),
    )
    .map(|c| c.serial)
    .map_err(|e| crate::report::chain(&e))
}

fn random_id() -> String {
    provider::random_vec(8)
        .map(hex::encode)
        .unwrap_or_else(|_| "0000000000000000".into())
}

/// Picks the backend under test from the config.
fn pick_backend(
    backends: &BTreeMap<String, BackendConfig>,
    wanted: Option<&str>,
    plugin: &str,
) -> Result<String, KitError> {
    if let Some(w) = wanted {
        if !backends.contains_key(w) {
            return Err(KitError::NoSuchBackend {
                wanted: w.to_owned(),
                known: backends.keys().cloned().collect::<Vec<_>>().join(", "),
            });
        }
        return Ok(w.to_owned());
    }
    let matching: Vec<&String> = backends
        .iter()
        .filter(|(_, b)| b.plugin.get_ref() == plugin)
        .map(|(n, _)| n)
        .collect();
    match (matching.as_slice(), backends.len()) {
        ([one], _) => Ok((*one).clone()),
        ([], 1) => backends.keys().next().cloned().ok_or(KitError::NoBackend),
        ([], 0) => Err(KitError::NoBackend),
        _ => Err(KitError::WhichBackend),
    }
}

/// Runs every check against the package `options.file`, as backend `options.backend` of
/// `config`. A check that fails is in the report; `Err` only when the kit cannot run at all.
pub async fn run(config: KitConfig<'_>, options: &KitOptions) -> Result<Report, KitError> {
    let package = PluginPackage::read(&options.file)?;
    let backend_name = pick_backend(
        config.backends,
        options.backend.as_deref(),
        &package.manifest.name,
    )?;
    let mut report = Report {
        plugin: package.version_id(),
        backend: backend_name.clone(),
        checks: Vec::new(),
        started: Instant::now(),
    };
    let scratch = tempfile::tempdir().map_err(KitError::Scratch)?;
    // Fresh keys in a throwaway store: the kit never touches the config's data directory.
    let keys = Arc::new(KeyStore::open(
        &scratch.path().join("keys"),
        &CustodyConfig::default(),
    )?);
    keys.assign_roles(
        config
            .keys
            .iter()
            .map(|(name, k)| (name.clone(), k.role()))
            .collect(),
    );
    crate::pki::ca::provision(&keys, config.keys)?;
    let spec = InstanceSpec::from_config(
        &backend_name,
        &config.backends[&backend_name],
        keys.clone(),
        config.policy,
        None,
    )?;
    let settings = match serde_json::from_str::<Value>(&spec.settings_json) {
        Ok(Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };

    // The package.
    let m = &package.manifest;
    let file_name = options
        .file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("");
    report.add(
        "package",
        if file_name == m.name {
            Verdict::Pass
        } else {
            Verdict::Warn
        },
        if file_name == m.name {
            format!(
                "{} with its manifest ({} bytes)",
                package.version_id(),
                package.bytes.len()
            )
        } else {
            format!(
                "{}: publish it as {}.wasm (the daemon loads plugins by that name)",
                package.version_id(),
                m.name
            )
        },
    );
    let cache = scratch.path().join("cache");
    let engine = Arc::new(PluginEngine::new(&cache, &config.engine)?);
    let prepared = match PreparedPlugin::prepare(&engine, &package) {
        Ok(p) => {
            report.add(
                "contract",
                Verdict::Pass,
                format!(
                    "certconn:plugin@{} (manifest {}), linked by this host",
                    p.contract, m.contract
                ),
            );
            Arc::new(p)
        }
        Err(e) => {
            report.add("contract", Verdict::Fail, e.to_string());
            return Ok(report);
        }
    };
    let kit = Kit {
        engine: engine.clone(),
        prepared: prepared.clone(),
        spec,
        settings,
        policy: config.policy,
    };

    // describe
    let info = match prepared.describe(engine.clone(), kit.policy).await {
        Ok(info) => info,
        Err(e) => {
            report.add("describe", Verdict::Fail, e.to_string());
            return Ok(report);
        }
    };
    let schema: Option<Value> = serde_json::from_str(&info.config_schema).ok();
    let mut problems = Vec::new();
    if info.name.is_empty() {
        problems.push("an empty name".to_string());
    }
    if semver::Version::parse(&info.version).is_err() {
        problems.push(format!("version {:?} is not semver", info.version));
    }
    if info.capabilities == Capabilities::empty() {
        problems.push("no capabilities".into());
    }
    match &schema {
        Some(s) if s.get("type") == Some(&json!("object")) => {}
        Some(_) => problems.push("the settings schema is not a JSON Schema of an object".into()),
        None => problems.push("the settings schema is not JSON".into()),
    }
    let caps = super::instance::capability_names(info.capabilities);
    if problems.is_empty() {
        let v = if info.version == m.version {
            Verdict::Pass
        } else {
            Verdict::Warn
        };
        report.add(
            "describe",
            v,
            format!(
                "{} {} ({}){}",
                info.name,
                info.version,
                caps.join(", "),
                if v == Verdict::Warn {
                    format!("; the manifest says version {}", m.version)
                } else {
                    String::new()
                }
            ),
        );
    } else {
        report.add("describe", Verdict::Fail, problems.join("; "));
    }

    // configure
    let backend = match kit.load(&kit.settings).await {
        Ok(b) => {
            report.add(
                "configure",
                Verdict::Pass,
                format!("accepts backend {backend_name:?}'s settings"),
            );
            b
        }
        Err(e) => {
            report.add("configure", Verdict::Fail, e.to_string());
            return Ok(report);
        }
    };
    configure_refusals(&kit, schema.as_ref(), &mut report).await;

    // health
    match backend.health().await {
        Ok(h) if h.healthy => report.add("health", Verdict::Pass, h.message),
        Ok(h) => report.add(
            "health",
            Verdict::Fail,
            format!("reports unhealthy: {}", h.message),
        ),
        Err(e) => report.add("health", Verdict::Fail, e.to_string()),
    }

    // issue, retry, malformed request, pending/poll, revoke
    let issued_serial = if info.capabilities.contains(Capabilities::ISSUE) {
        issue_checks(&backend, options, info.capabilities, &mut report).await?
    } else {
        report.add("issue", Verdict::Skip, "the backend does not claim issue");
        None
    };
    if info.capabilities.contains(Capabilities::REVOKE) {
        revoke_checks(&backend, issued_serial.as_deref(), &mut report).await;
    } else {
        match backend
            .revoke(&RevokeRequest {
                job_id: format!("conformance-{}", random_id()),
                serial: "01".into(),
                issuer: None,
                reason: RevocationReason::Unspecified,
            })
            .await
        {
            Ok(Err(BackendError::Unsupported(_))) => report.add(
                "unsupported",
                Verdict::Pass,
                "revoke answers unsupported, as describe says",
            ),
            Ok(other) => report.add(
                "unsupported",
                Verdict::Warn,
                format!("revoke is not claimed, yet answers {other:?}"),
            ),
            Err(e) => report.add(
                "unsupported",
                Verdict::Fail,
                format!("revoke (not claimed) crashed the plugin: {e}"),
            ),
        }
    }
    if info.capabilities.contains(Capabilities::CHECK_IMPORT) {
        report.add(
            "check-import",
            Verdict::Skip,
            "needs an imported PFX; covered by the import tests, not the kit",
        );
    }
    Ok(report)
}

/// Settings a backend must refuse, each with the field it must name.
async fn configure_refusals(kit: &Kit, schema: Option<&Value>, report: &mut Report) {
    let expect = |e: &Result<LoadedBackend, PluginError>, field: &str| -> (Verdict, String) {
        match e {
            Ok(_) => (
                Verdict::Fail,
                format!("accepted; an administrator's mistake in {field:?} would go unnoticed"),
            ),
            Err(PluginError::Config { errors, .. })
                if errors.iter().any(|x| x.to_string().contains(field)) =>
            {
                (Verdict::Pass, super::join(errors))
            }
            Err(PluginError::Config { errors, .. }) => (
                Verdict::Warn,
                format!(
                    "refused, but without naming {field:?}: {}",
                    super::join(errors)
                ),
            ),
            Err(other) => (
                Verdict::Fail,
                format!("not an invalid-config answer: {other}"),
            ),
        }
    };
    let mut unknown = kit.settings.clone();
    unknown.insert("certconn_conformance_unknown".into(), json!(true));
    let (v, d) = expect(&kit.load(&unknown).await, "certconn_conformance_unknown");
    report.add("configure: unknown setting", v, d);

    let required: Vec<String> = schema
        .and_then(|s| s.get("required"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if required.is_empty() {
        report.add(
            "configure: missing required",
            Verdict::Skip,
            "the schema requires no setting",
        );
    } else {
        let mut worst = (Verdict::Pass, Vec::new());
        for field in &required {
            let mut missing = kit.settings.clone();
            missing.remove(field);
            let (v, d) = expect(&kit.load(&missing).await, field);
            if v as u8 > worst.0 as u8 {
                worst.0 = v;
            }
            worst.1.push(format!("{field}: {d}"));
        }
        report.add("configure: missing required", worst.0, worst.1.join(" | "));
    }

    let properties = schema
        .and_then(|s| s.get("properties"))
        .and_then(Value::as_object);
    let mut worst = (
        Verdict::Skip,
        vec!["the schema gives no property types".to_string()],
    );
    for (field, spec) in properties.into_iter().flatten() {
        let wrong = match spec.get("type").and_then(Value::as_str) {
            Some("string") => json!(12345),
            Some("integer") | Some("number") => json!("not a number"),
            Some("boolean") => json!("yes"),
            Some("array") | Some("object") => json!("not a collection"),
            _ => continue,
        };
        if worst.0 == Verdict::Skip {
            worst = (Verdict::Pass, Vec::new());
        }
        let mut typo = kit.settings.clone();
        typo.insert(field.clone(), wrong);
        let (v, d) = expect(&kit.load(&typo).await, field);
        if v as u8 > worst.0 as u8 {
            worst.0 = v;
        }
        if v != Verdict::Pass {
            worst.1.push(format!("{field}: {d}"));
        }
    }
    if worst.0 == Verdict::Pass {
        worst
            .1
            .push("every typed setting refuses a value of the wrong type, naming it".into());
    }
    report.add("configure: wrong types", worst.0, worst.1.join(" | "));
}

async fn issue_checks(
    backend: &LoadedBackend,
    args: &KitOptions,
    caps: Capabilities,
    report: &mut Report,
) -> Result<Option<String>, KitError> {
    let key = device("issue")?;
    let job = format!("conformance-{}", random_id());
    let req = request(&job, &args.profile, &key.csr, None);
    let first = match backend
        .issue(&req, CallKeys::request(Some(key.key.clone())))
        .await
    {
        Ok(Ok(issued)) => match check_issued(&issued, &key) {
            Ok(serial) => {
                report.add(
                    "issue",
                    Verdict::Pass,
                    format!(
                        "certificate {serial} for the host's key, chain of {}",
                        issued.chain.len()
                    ),
                );
                Some((issued, serial))
            }
            Err(e) => {
                report.add("issue", Verdict::Fail, e);
                None
            }
        },
        Ok(Err(BackendError::Pending(p))) => {
            match poll_until(backend, &job, &p.poll_token, &key, args, caps).await {
                Ok((issued, serial)) => {
                    report.add(
                        "issue",
                        Verdict::Pass,
                        format!("pending ({}), then certificate {serial} by poll", p.message),
                    );
                    Some((issued, serial))
                }
                Err(e) => {
                    report.add("issue", Verdict::Fail, e);
                    None
                }
            }
        }
        Ok(Err(e)) => {
            report.add("issue", Verdict::Fail, describe_backend_error(&e));
            None
        }
        Err(e) => {
            report.add("issue", Verdict::Fail, e.to_string());
            None
        }
    };

    // The same job again: what the host does after a crash between the CA's answer and the
    // journal write.
    if let Some((issued, serial)) = &first {
        match backend.issue(&req, CallKeys::request(Some(key.key.clone()))).await {
            Ok(Ok(again)) if again.certificate == issued.certificate => report.add(
                "idempotent retry",
                Verdict::Pass,
                "the same job id returned the same certificate",
            ),
            Ok(Ok(again)) => match check_issued(&again, &key) {
                Ok(s) if &s == serial => report.add("idempotent retry", Verdict::Pass, "the same job id returned the same serial"),
                Ok(s) => report.add("idempotent retry", Verdict::Warn, format!("the same job id issued a second certificate ({s}); a CA that deduplicates by job id spares a device two certificates after a crash")),
                Err(e) => report.add("idempotent retry", Verdict::Fail, e),
            },
            Ok(Err(BackendError::Pending(_))) => report.add("idempotent retry", Verdict::Pass, "the same job id is pending again (the CA knows it)"),
            Ok(Err(e)) => report.add("idempotent retry", Verdict::Fail, format!("a retry with the same job id failed: {}", describe_backend_error(&e))),
            Err(e) => report.add("idempotent retry", Verdict::Fail, e.to_string()),
        }
    } else {
        report.add(
            "idempotent retry",
            Verdict::Skip,
            "no certificate to compare with",
        );
    }

    // Garbage in: refused as rejected, never a crash, never a certificate.
    // A truncated DER SEQUENCE: what a broken client or a cut-off upload sends.
    let bad = request(
        &format!("conformance-{}", random_id()),
        &args.profile,
        b"\x30\x03\x02\x01",
        None,
    );
    match backend.issue(&bad, CallKeys::default()).await {
        Ok(Err(BackendError::Rejected(m))) => {
            report.add("malformed request", Verdict::Pass, format!("rejected: {m}"))
        }
        Ok(Err(e)) => report.add(
            "malformed request",
            Verdict::Warn,
            format!(
                "answered {} (rejected is the right answer: retrying cannot help)",
                describe_backend_error(&e)
            ),
        ),
        Ok(Ok(_)) => report.add(
            "malformed request",
            Verdict::Fail,
            "issued a certificate for a truncated CSR",
        ),
        Err(e) => report.add(
            "malformed request",
            Verdict::Fail,
            format!("the plugin crashed on a malformed request: {e}"),
        ),
    }

    // Pending and poll.
    match (&args.pending_template, caps.contains(Capabilities::POLL)) {
        (Some(template), true) => {
            let pending_key = device("pending")?;
            let job = format!("conformance-{}", random_id());
            let req = request(&job, &args.profile, &pending_key.csr, Some(template));
            match backend.issue(&req, CallKeys::request(Some(pending_key.key.clone()))).await {
                Ok(Err(BackendError::Pending(p))) => {
                    match poll_until(backend, &job, &p.poll_token, &pending_key, args, caps).await {
                        Ok((_, serial)) => report.add("pending and poll", Verdict::Pass, format!("pending ({}), retry after {}s, then {serial} by poll", p.message, p.retry_after_seconds)),
                        Err(e) => report.add("pending and poll", Verdict::Fail, e),
                    }
                }
                Ok(Ok(_)) => report.add("pending and poll", Verdict::Fail, format!("template {template:?} was issued at once; expected pending")),
                Ok(Err(e)) => report.add("pending and poll", Verdict::Fail, describe_backend_error(&e)),
                Err(e) => report.add("pending and poll", Verdict::Fail, e.to_string()),
            }
            match backend.poll(&job, "certconn-conformance-unknown-token", CallKeys::request(Some(pending_key.key.clone()))).await {
                Ok(Err(BackendError::Rejected(_))) => report.add("poll: unknown token", Verdict::Pass, "rejected"),
                Ok(other) => report.add("poll: unknown token", Verdict::Warn, format!("answered {}", match other { Ok(_) => "a certificate".into(), Err(e) => describe_backend_error(&e) })),
                Err(e) => report.add("poll: unknown token", Verdict::Fail, format!("crashed: {e}")),
            }
        }
        (None, true) => report.add("pending and poll", Verdict::Skip, "claims poll; pass --pending-template NAME (a template the CA holds for approval) to test it"),
        (_, false) => report.add("pending and poll", Verdict::Skip, "the backend does not claim poll"),
    }
    Ok(first.map(|(_, s)| s))
}

async fn poll_until(
    backend: &LoadedBackend,
    job: &str,
    token: &str,
    device: &Device,
    args: &KitOptions,
    caps: Capabilities,
) -> Result<(IssuedCertificate, String), String> {
    if !caps.contains(Capabilities::POLL) {
        return Err("answered pending, but describe does not claim poll".into());
    }
    let deadline = Instant::now() + args.pending_timeout;
    let mut token = token.to_owned();
    loop {
        match backend
            .poll(job, &token, CallKeys::request(Some(device.key.clone())))
            .await
        {
            Ok(Ok(issued)) => return check_issued(&issued, device).map(|s| (issued, s)),
            Ok(Err(BackendError::Pending(p))) => {
                if Instant::now() > deadline {
                    return Err(format!(
                        "still pending after {:?}: {}",
                        args.pending_timeout, p.message
                    ));
                }
                token = p.poll_token;
                tokio::time::sleep(Duration::from_secs(u64::from(
                    p.retry_after_seconds.clamp(1, 5),
                )))
                .await;
            }
            Ok(Err(e)) => return Err(format!("poll: {}", describe_backend_error(&e))),
            Err(e) => return Err(format!("poll: {e}")),
        }
    }
}

async fn revoke_checks(backend: &LoadedBackend, serial: Option<&str>, report: &mut Report) {
    let Some(serial) = serial else {
        report.add("revoke", Verdict::Skip, "nothing was issued to revoke");
        return;
    };
    let job = format!("conformance-{}", random_id());
    let req = RevokeRequest {
        job_id: job,
        serial: serial.into(),
        issuer: None,
        reason: RevocationReason::Superseded,
    };
    match backend.revoke(&req).await {
        Ok(Ok(())) => report.add("revoke", Verdict::Pass, format!("revoked {serial}")),
        Ok(Err(e)) => report.add("revoke", Verdict::Fail, describe_backend_error(&e)),
        Err(e) => report.add("revoke", Verdict::Fail, e.to_string()),
    }
    match backend.revoke(&req).await {
        Ok(Ok(())) | Ok(Err(BackendError::Rejected(_))) => report.add(
            "revoke: retry",
            Verdict::Pass,
            "a second revocation with the same job id is answered, not an error to retry",
        ),
        Ok(Err(e)) => report.add("revoke: retry", Verdict::Warn, describe_backend_error(&e)),
        Err(e) => report.add("revoke: retry", Verdict::Fail, e.to_string()),
    }
    let garbage = RevokeRequest {
        serial: "not-hex".into(),
        job_id: format!("conformance-{}", random_id()),
        ..req
    };
    match backend.revoke(&garbage).await {
        Ok(Err(BackendError::Rejected(m))) => report.add(
            "revoke: malformed serial",
            Verdict::Pass,
            format!("rejected: {m}"),
        ),
        Ok(other) => report.add(
            "revoke: malformed serial",
            Verdict::Warn,
            format!("answered {other:?} for serial \"not-hex\""),
        ),
        Err(e) => report.add(
            "revoke: malformed serial",
            Verdict::Fail,
            format!("crashed: {e}"),
        ),
    }
}
