//! Test-only backend: on `issue` it does whatever its `mode` setting says, most of it hostile, so
//! the host's tests can prove that the sandbox holds and that one bad job hurts nothing else.
//!
//! Every mode that *should* be stopped by the host reports a breach in its error text if it is not,
//! so a test that only checks "the job failed" still catches a sandbox hole.

use certconn_sdk::bindings::wasi::http::outgoing_handler;
use certconn_sdk::bindings::wasi::http::types::{Fields, OutgoingRequest, Scheme};
use certconn_sdk::{
    error, host, http, log, Backend, BackendError, BackendInfo, Capabilities, HealthReport,
    IssueRequest, IssuedCertificate,
};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// loop | memory | recursion | huge-certificate | huge-error | trap | read-file | env |
    /// http | redirect | ungranted-key | log-storm | fail | panic | forge
    pub mode: String,
    /// For `forge`: what to have the CA key (`handle`) sign — `honest` (the job's certificate),
    /// `ca` (a subordinate CA), `other-key`, `century` (valid 100 years), `raw` (not a
    /// TBSCertificate), `ocsp-eku` (an OCSP responder for the CA), `fixed-serial` (the job's
    /// certificate, always with serial 0x7e57: the second one reuses it). In `forge` mode
    /// `health` also asks the CA key to sign, outside any job.
    #[serde(default)]
    pub forge: Option<String>,
    /// For `read-file`.
    #[serde(default)]
    pub path: Option<String>,
    /// For `http` and `redirect`: host:port to call.
    #[serde(default)]
    pub authority: Option<String>,
    /// For `ungranted-key`: the custody handle to try.
    #[serde(default)]
    pub handle: Option<String>,
    /// For `huge-certificate` and `huge-error`: how many MiB.
    #[serde(default)]
    pub mib: Option<usize>,
}

/// Recurses with a frame the optimiser cannot remove, until the stack runs out.
#[inline(never)]
#[allow(unconditional_recursion)] // on purpose: the host's stack limit must stop it
fn dive(depth: u64, pad: &mut [u8; 512]) -> u64 {
    pad[(depth % 512) as usize] = depth as u8;
    let mut next = [0u8; 512];
    next.copy_from_slice(core::hint::black_box(pad));
    dive(depth + 1, &mut next) + u64::from(next[0])
}

pub struct Probe;

/// Has the CA key `handle` sign what `what` names, as a replaced `local-ca` could. The host's
/// issuance policy must refuse all but `honest`; a forged certificate it signs is reported as a
/// breach in the error text.
fn forge(
    handle: &str,
    what: &str,
    request: &IssueRequest,
) -> Result<IssuedCertificate, BackendError> {
    use certconn_sdk::x509::der::{Decode, Encode};
    use certconn_sdk::x509::spki::SubjectPublicKeyInfoOwned;
    use certconn_sdk::x509::x509_cert::{request::CertReq, Certificate};
    use certconn_sdk::x509::{extensions, CertificateTemplate, SignatureScheme};

    let fail = |e: String| error::rejected(format!("forge: {e}"));
    let chain = host::certificate_chain(handle).map_err(|e| fail(e.to_string()))?;
    let ca = Certificate::from_der(
        chain
            .first()
            .ok_or_else(|| fail("no CA certificate".into()))?,
    )
    .map_err(|e| fail(e.to_string()))?;
    let csr = CertReq::from_der(&request.csr).map_err(|e| fail(e.to_string()))?;
    let mut public_key = csr.info.public_key.clone();
    if let Ok(der) = host::public_key("request") {
        public_key = SubjectPublicKeyInfoOwned::from_der(&der).map_err(|e| fail(e.to_string()))?;
    }
    if what == "other-key" {
        // Any key but the job's: the CA's own.
        public_key = ca.tbs_certificate.subject_public_key_info.clone();
    }
    let subject = csr.info.subject.clone();
    let now = certconn_sdk::now_seconds();
    let days: u64 = if what == "century" { 36_500 } else { 30 };
    let mut exts = vec![extensions::basic_constraints(what == "ca", None, &subject)
        .map_err(|e| fail(format!("{e:?}")))?];
    if what == "ocsp-eku" {
        exts.push(
            extensions::extended_key_usage(
                &[certconn_sdk::x509::extensions::ExtendedKeyUsageName::OcspSigning],
                &subject,
            )
            .map_err(|e| fail(format!("{e:?}")))?,
        );
    }
    let template = CertificateTemplate {
        serial: if what == "fixed-serial" {
            vec![0x7e, 0x57]
        } else {
            host::random_bytes(16)
        },
        issuer: ca.tbs_certificate.subject.clone(),
        subject: subject.clone(),
        not_before: now - 60,
        not_after: now + days * 86_400,
        public_key,
        extensions: exts,
    };
    let scheme = SignatureScheme::EcdsaP256Sha256;
    if what == "raw" {
        return match host::sign(handle, scheme, b"not a certificate") {
            Ok(_) => Err(error::rejected(
                "SANDBOX BREACH: the CA key signed raw bytes",
            )),
            Err(e) => Err(error::rejected(format!("custody refused: {e}"))),
        };
    }
    match template.sign(scheme, |tbs| host::sign(handle, scheme, tbs)) {
        Ok(certificate) if what == "honest" || what == "fixed-serial" => Ok(IssuedCertificate {
            certificate,
            chain: vec![ca.to_der().map_err(|e| fail(e.to_string()))?],
        }),
        Ok(_) => Err(error::rejected(format!(
            "SANDBOX BREACH: the CA key signed a forged certificate ({what})"
        ))),
        Err(e) => Err(error::rejected(format!("custody refused: {e:?}"))),
    }
}

impl Backend for Probe {
    type Config = Config;

    fn describe() -> BackendInfo {
        BackendInfo {
            name: "sandbox-probe".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            capabilities: Capabilities::ISSUE,
            config_schema: r#"{"type":"object","required":["mode"]}"#.into(),
        }
    }

    /// In `forge` mode, asks the CA key to sign outside any job: healthy only if refused.
    fn health(config: Option<&Config>) -> HealthReport {
        let Some(c) = config.filter(|c| c.mode == "forge") else {
            return HealthReport {
                healthy: true,
                message: "probe".into(),
            };
        };
        let handle = c.handle.as_deref().unwrap_or("local-ca");
        match host::sign(
            handle,
            certconn_sdk::x509::SignatureScheme::EcdsaP256Sha256,
            b"outside any job",
        ) {
            Ok(_) => HealthReport {
                healthy: false,
                message: format!("SANDBOX BREACH: {handle} signed outside a job"),
            },
            Err(e) => HealthReport {
                healthy: true,
                message: format!("custody refused outside a job: {e}"),
            },
        }
    }

    fn issue(c: &Config, request: IssueRequest) -> Result<IssuedCertificate, BackendError> {
        match c.mode.as_str() {
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = core::hint::black_box(n.wrapping_add(1));
                }
            }
            "memory" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![0xA5; 1 << 20]);
                    core::hint::black_box(&hoard);
                }
            }
            "read-file" => {
                let path = c.path.as_deref().unwrap_or("/etc/passwd");
                match std::fs::read(path) {
                    Ok(bytes) => Err(error::rejected(format!(
                        "SANDBOX BREACH: read {} bytes from {path}",
                        bytes.len()
                    ))),
                    Err(e) => Err(error::rejected(format!("read-file {path}: {e}"))),
                }
            }
            "env" => {
                let n = std::env::vars_os().count();
                Err(error::rejected(format!(
                    "environment variables visible: {n}"
                )))
            }
            "recursion" => {
                let mut pad = [0u8; 512];
                let n = dive(0, &mut pad);
                Err(error::rejected(format!(
                    "SANDBOX BREACH: recursion ended at {n}"
                )))
            }
            "huge-certificate" => Ok(IssuedCertificate {
                certificate: vec![0x30; c.mib.unwrap_or(32) << 20],
                chain: Vec::new(),
            }),
            "huge-error" => Err(error::rejected("E".repeat(c.mib.unwrap_or(32) << 20))),
            "trap" => {
                // Mid-job: after using the host, before answering.
                let _ = host::random_bytes(16);
                log::info("about to trap");
                core::arch::wasm32::unreachable()
            }
            "http" => Err(http_get(c.authority.as_deref().unwrap_or("127.0.0.1:9"))),
            "redirect" => {
                let first = format!(
                    "http://{}/",
                    c.authority.as_deref().unwrap_or("127.0.0.1:9")
                );
                let r = http::fetch("GET", &first, &[], None)
                    .map_err(|e| error::rejected(format!("the granted host: {e}")))?;
                let Some(next) = r.header("location").map(str::to_owned) else {
                    return Err(error::rejected(format!(
                        "expected a redirect, got {}",
                        r.status
                    )));
                };
                match http::fetch("GET", &next, &[], None) {
                    Ok(r) => Err(error::rejected(format!(
                        "SANDBOX BREACH: followed the redirect to {next} and got {}",
                        r.status
                    ))),
                    Err(e) => Err(error::rejected(format!("redirect to {next} refused: {e}"))),
                }
            }
            "ungranted-key" => {
                let handle = c.handle.as_deref().unwrap_or("local-ca");
                match host::sign(
                    handle,
                    certconn_sdk::x509::SignatureScheme::EcdsaP256Sha256,
                    b"x",
                ) {
                    Ok(sig) => Err(error::rejected(format!(
                        "SANDBOX BREACH: signed with {handle} ({} bytes)",
                        sig.len()
                    ))),
                    Err(e) => Err(error::rejected(format!("custody refused {handle}: {e}"))),
                }
            }
            // Asks custody to sign and to decrypt with `handle`, and says what each answered.
            "misuse-key" => {
                let handle = c.handle.as_deref().unwrap_or("local-ca");
                let signed = host::sign(
                    handle,
                    certconn_sdk::x509::SignatureScheme::EcdsaP256Sha256,
                    b"x",
                );
                let decrypted =
                    host::decrypt(handle, host::EncryptionPadding::RsaOaepSha256, &[0u8; 256]);
                let outcome = |r: Result<Vec<u8>, host::CustodyError>| match r {
                    Ok(_) => "done".to_owned(),
                    Err(e) => e.to_string(),
                };
                Err(error::rejected(format!(
                    "sign: {}; decrypt: {}",
                    outcome(signed),
                    outcome(decrypted)
                )))
            }
            "forge" => forge(
                c.handle.as_deref().unwrap_or("local-ca"),
                c.forge.as_deref().unwrap_or("honest"),
                &request,
            ),
            "log-storm" => {
                for i in 0..200_000u32 {
                    log::info(&format!("storm line {i}"));
                }
                Err(error::rejected("logged 200000 lines"))
            }
            "fail" => Err(error::transient("sandbox-probe always fails")),
            "panic" => panic!("sandbox-probe panicked on purpose"),
            other => Err(error::rejected(format!("unknown mode {other:?}"))),
        }
    }
}

/// Tries a plain HTTP GET; returns the error describing how it ended.
fn http_get(authority: &str) -> BackendError {
    let request = OutgoingRequest::new(Fields::new());
    let _ = request.set_scheme(Some(&Scheme::Http));
    let _ = request.set_authority(Some(authority));
    let _ = request.set_path_with_query(Some("/"));
    match outgoing_handler::handle(request, None) {
        Err(code) => error::rejected(format!("http to {authority} refused: {code:?}")),
        Ok(future) => {
            future.subscribe().block();
            match future.get() {
                Some(Ok(Ok(response))) => error::rejected(format!(
                    "SANDBOX BREACH: http to {authority} answered with status {}",
                    response.status()
                )),
                Some(Ok(Err(code))) => {
                    error::rejected(format!("http to {authority} refused: {code:?}"))
                }
                other => error::rejected(format!(
                    "http to {authority} ended oddly: {}",
                    other.is_some()
                )),
            }
        }
    }
}

certconn_sdk::export_backend!(Probe);
certconn_sdk::plugin_manifest!("../certconn-plugin.toml");
