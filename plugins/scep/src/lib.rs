//! `scep`: a backend for any RFC 8894 SCEP CA (micromdm, EJBCA, a CA behind NDES with a static
//! challenge, certconn's own SCEP server).
//!
//! For each job the host has made the device key and a CSR; this backend adds the challenge
//! password to the CSR and re-signs it with the device key (custody handle `request`), signs a
//! PKCSReq with a short-lived self-signed certificate for the same key, encrypts it to the CA's
//! encryption certificate in the strongest cipher GetCACaps offers that policy allows, and reads
//! the CertRep. PENDING becomes a host `pending` with a poll token; `poll` sends CertPoll.
//!
//! The CA is pinned by the SHA-256 of its certificate when `ca_fingerprint_sha256` is set;
//! without it the first GetCACert answer is trusted for the length of the job (log warns).

use certconn_sdk::scep::{
    cert_poll_content, messages, transaction_id, CustodyIdentity, Reply, ScepClient, REQUEST_HANDLE,
};
use certconn_sdk::x509::der::asn1::{Any, SetOfVec, Utf8StringRef};
use certconn_sdk::x509::der::{Decode, Encode};
use certconn_sdk::x509::x509_cert::attr::Attribute;
use certconn_sdk::x509::x509_cert::name::Name;
use certconn_sdk::x509::x509_cert::request::CertReq;
use certconn_sdk::x509::{signed, SignatureScheme};
use certconn_sdk::{
    error, host, log, Backend, BackendError, BackendInfo, Capabilities, FieldError, HealthReport,
    IssueRequest, IssuedCertificate, Pending,
};
use serde::{Deserialize, Serialize};

/// Settings, from `[backends.NAME.settings]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The SCEP URL (for NDES: `http://HOST/certsrv/mscep/mscep.dll`).
    pub url: String,
    /// A static challenge password (give it through `settings_files` to keep it out of the
    /// config). None: the CA needs no challenge.
    #[serde(default)]
    pub challenge: Option<String>,
    /// SHA-256 of the CA certificate, hex (colons allowed). Strongly recommended.
    #[serde(default)]
    pub ca_fingerprint_sha256: Option<String>,
    /// Use 3DES when the CA offers no AES (refused anyway in FIPS mode).
    #[serde(default = "yes")]
    pub allow_des3: bool,
    /// Use single DES when the CA offers nothing better (the host's crypto.allow_single_des
    /// must allow it too).
    #[serde(default)]
    pub allow_single_des: bool,
    /// Key transport to the CA: `pkcs1` (what every SCEP CA reads), `oaep-sha1`, `oaep-sha256`.
    #[serde(default)]
    pub key_transport: Transport,
    /// When to poll again after PENDING, in seconds.
    #[serde(default = "default_poll")]
    pub poll_seconds: u32,
    /// Add the CA certificate from GetCACert to the chain when the CertRep carries only the leaf.
    #[serde(default = "yes")]
    pub include_ca_in_chain: bool,
}

#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    #[default]
    Pkcs1,
    OaepSha1,
    OaepSha256,
}

fn yes() -> bool {
    true
}

fn default_poll() -> u32 {
    60
}

const SCHEMA: &str = r#"{"type":"object","required":["url"],"properties":{"url":{"type":"string"},"challenge":{"type":"string"},"ca_fingerprint_sha256":{"type":"string"},"allow_des3":{"type":"boolean"},"allow_single_des":{"type":"boolean"},"key_transport":{"enum":["pkcs1","oaep-sha1","oaep-sha256"]},"poll_seconds":{"type":"integer","minimum":1},"include_ca_in_chain":{"type":"boolean"}},"additionalProperties":false}"#;

/// challengePassword (PKCS#9).
const CHALLENGE_PASSWORD: &str = "1.2.840.113549.1.9.7";

/// What `poll` needs to ask about the same request again.
#[derive(Serialize, Deserialize)]
struct PollToken {
    transaction_id: String,
    /// The requester's subject, DER hex.
    subject: String,
}

pub struct Scep;

impl Config {
    fn client(&self) -> ScepClient {
        ScepClient {
            url: self.url.clone(),
            ciphers: messages::CipherPolicy {
                allow_des3: self.allow_des3,
                allow_single_des: self.allow_single_des,
            },
            key_transport: match self.key_transport {
                Transport::Pkcs1 => messages::KeyTransport::Pkcs1,
                Transport::OaepSha1 => messages::KeyTransport::OaepSha1,
                Transport::OaepSha256 => messages::KeyTransport::OaepSha256,
            },
        }
    }

    fn fingerprint(&self) -> Option<String> {
        self.ca_fingerprint_sha256
            .as_ref()
            .map(|f| f.replace(':', "").to_ascii_lowercase())
    }

    /// GetCACert, with the pin checked.
    fn ca(&self, client: &ScepClient) -> Result<messages::CaCertificates, BackendError> {
        let ca = client.ca_certificates()?;
        match self.fingerprint() {
            Some(want) => {
                let got = hex(&host::sha256(&ca.ca)?);
                if got != want {
                    return Err(error::rejected(format!(
                        "the SCEP CA's certificate has SHA-256 {got}, not the pinned {want}: refusing to enrol"
                    )));
                }
            }
            None => log::warn(
                "ca_fingerprint_sha256 is not set: trusting the CA certificate GetCACert returned",
            ),
        }
        Ok(ca)
    }

    fn finish(
        &self,
        reply: Reply,
        ca: &messages::CaCertificates,
        token: PollToken,
    ) -> Result<IssuedCertificate, BackendError> {
        match reply {
            Reply::Issued(mut issued) => {
                if !self.include_ca_in_chain {
                    issued.chain.retain(|c| *c != ca.ca);
                }
                Ok(issued)
            }
            Reply::Pending => Err(BackendError::Pending(Pending {
                poll_token: serde_json_string(&token),
                retry_after_seconds: self.poll_seconds,
                message: format!(
                    "the SCEP CA answered PENDING (transaction {})",
                    token.transaction_id
                ),
            })),
        }
    }
}

fn serde_json_string(t: &PollToken) -> String {
    certconn_sdk::serde_json::to_string(t).unwrap_or_default()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The host's CSR with the challenge password added, re-signed with the device key.
fn csr_with_challenge(
    csr: &[u8],
    subject: &Name,
    challenge: Option<&str>,
) -> Result<Vec<u8>, BackendError> {
    let mut req =
        CertReq::from_der(csr).map_err(|e| error::rejected(format!("the job's CSR: {e}")))?;
    req.info.subject = subject.clone();
    if let Some(c) = challenge {
        let value = Any::encode_from(
            &Utf8StringRef::new(c).map_err(|e| error::rejected(format!("challenge: {e}")))?,
        )
        .map_err(|e| error::rejected(format!("challenge: {e}")))?;
        let attr = Attribute {
            oid: CHALLENGE_PASSWORD
                .parse()
                .map_err(|_| error::rejected("OID"))?,
            values: SetOfVec::try_from(vec![value])
                .map_err(|e| error::rejected(format!("challenge: {e}")))?,
        };
        req.info
            .attributes
            .insert(attr)
            .map_err(|e| error::rejected(format!("challenge: {e}")))?;
    }
    let tbs = req
        .info
        .to_der()
        .map_err(|e| error::rejected(format!("CSR: {e}")))?;
    let scheme = SignatureScheme::RsaPkcs1Sha256;
    let signature = host::sign(REQUEST_HANDLE, scheme, &tbs)?;
    signed::assemble(&tbs, &scheme.algorithm_identifier(), &signature)
        .map_err(|e| error::rejected(format!("CSR: {e}")))
}

impl Backend for Scep {
    type Config = Config;

    fn describe() -> BackendInfo {
        BackendInfo {
            name: "scep".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            capabilities: Capabilities::ISSUE | Capabilities::POLL,
            config_schema: SCHEMA.into(),
        }
    }

    fn validate(c: &Config) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        if !(c.url.starts_with("http://") || c.url.starts_with("https://")) {
            errors.push(error::field("url", "must be an http:// or https:// URL"));
        }
        if let Some(f) = c.fingerprint() {
            if f.len() != 64 || unhex(&f).is_none() {
                errors.push(error::field(
                    "ca_fingerprint_sha256",
                    "must be 64 hex digits (colons allowed)",
                ));
            }
        }
        if c.challenge.as_deref() == Some("") {
            errors.push(error::field(
                "challenge",
                "is empty; leave it out when the CA needs none",
            ));
        }
        if c.poll_seconds == 0 {
            errors.push(error::field("poll_seconds", "must be at least 1"));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    fn issue(c: &Config, request: IssueRequest) -> Result<IssuedCertificate, BackendError> {
        let csr = CertReq::from_der(&request.csr)
            .map_err(|e| error::rejected(format!("the job's CSR: {e}")))?;
        let subject = match &request.subject {
            Some(der) => {
                Name::from_der(der).map_err(|e| error::rejected(format!("subject: {e}")))?
            }
            None => csr.info.subject.clone(),
        };
        let client = c.client();
        let ca = c.ca(&client)?;
        let caps = client.capabilities()?;
        let requester = CustodyIdentity::self_signed(REQUEST_HANDLE, &subject)?;
        let txid = transaction_id(&requester)?;
        let csr = csr_with_challenge(&request.csr, &subject, c.challenge.as_deref())?;
        log::info(&format!(
            "SCEP PKCSReq for job {} (transaction {txid})",
            request.job_id
        ));
        let reply = client.transact(
            &caps,
            &ca,
            &requester,
            messages::MessageType::PkcsReq,
            &txid,
            &csr,
        )?;
        c.finish(
            reply,
            &ca,
            PollToken {
                transaction_id: txid,
                subject: hex(&subject
                    .to_der()
                    .map_err(|e| error::rejected(e.to_string()))?),
            },
        )
    }

    fn poll(
        c: &Config,
        _job_id: String,
        poll_token: String,
    ) -> Result<IssuedCertificate, BackendError> {
        let token: PollToken = certconn_sdk::serde_json::from_str(&poll_token)
            .map_err(|e| error::rejected(format!("poll token: {e}")))?;
        let subject = unhex(&token.subject)
            .and_then(|d| Name::from_der(&d).ok())
            .ok_or_else(|| error::rejected("poll token: bad subject"))?;
        let client = c.client();
        let ca = c.ca(&client)?;
        let caps = client.capabilities()?;
        let requester = CustodyIdentity::self_signed(REQUEST_HANDLE, &subject)?;
        let content = cert_poll_content(&ca, &subject)?;
        let reply = client.transact(
            &caps,
            &ca,
            &requester,
            messages::MessageType::CertPoll,
            &token.transaction_id,
            &content,
        )?;
        c.finish(reply, &ca, token)
    }

    fn health(c: Option<&Config>) -> HealthReport {
        let Some(c) = c else {
            return HealthReport {
                healthy: false,
                message: "not configured".into(),
            };
        };
        match c.client().capabilities() {
            Ok(caps) => HealthReport {
                healthy: true,
                message: format!(
                    "{} answers GetCACaps ({})",
                    c.url,
                    caps.to_body().trim().replace('\n', ", ")
                ),
            },
            Err(e) => HealthReport {
                healthy: false,
                message: format!("{}: {}", c.url, error::describe(&e)),
            },
        }
    }
}

certconn_sdk::export_backend!(Scep);
