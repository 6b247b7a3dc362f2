//! Test-only: a backend built against the 0.1 contract (`wit/compat/v0.1`) with wit-bindgen
//! alone — no SDK — the way an older or non-SDK vendor plugin looks. It issues a real
//! certificate through the host's custody (`settings.ca_key`), so a test can show the host still
//! runs a 0.1 backend end to end after moving to 0.2.

use std::time::{SystemTime, UNIX_EPOCH};

use certconn_x509::der::Decode;
use certconn_x509::x509_cert::request::CertReq;
use certconn_x509::x509_cert::Certificate;
use certconn_x509::{CertificateTemplate, PublicKeyKind, SignatureScheme};

wit_bindgen::generate!({
    path: "../../../wit/compat/v0.1",
    world: "certconn:plugin/ca-backend",
    generate_all,
});

use certconn::plugin::types::{
    BackendError, BackendInfo, Capabilities, FieldError, HealthReport, ImportCheck, IssueRequest,
    IssuedCertificate, RevokeRequest, SignatureAlgorithm,
};
use certconn::plugin::{crypto, custody, log};
use exports::certconn::plugin::backend::Guest;

// The manifest, embedded by hand (no SDK macro): contract 0.1.0.
#[used]
#[link_section = "certconn-manifest"]
static MANIFEST: [u8; 102] = *b"name = \"contract-v0-1\"\nversion = \"0.1.4\"\ncontract = \"0.1.0\"\ndescription = \"Test only: a 0.1 backend\"\n\n";

thread_local! {
    static CA_KEY: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

fn rejected(m: impl Into<String>) -> BackendError {
    BackendError::Rejected(m.into())
}

fn algorithm(s: SignatureScheme) -> SignatureAlgorithm {
    match s {
        SignatureScheme::EcdsaP256Sha256 => SignatureAlgorithm::EcdsaP256Sha256,
        SignatureScheme::EcdsaP384Sha384 => SignatureAlgorithm::EcdsaP384Sha384,
        _ => SignatureAlgorithm::RsaPkcs1Sha256,
    }
}

struct V01;

impl Guest for V01 {
    fn describe() -> BackendInfo {
        BackendInfo {
            name: "contract-v0-1".into(),
            version: "0.1.4".into(),
            capabilities: Capabilities::ISSUE,
            config_schema: r#"{"type":"object","required":["ca_key"],"properties":{"ca_key":{"type":"string"}},"additionalProperties":false}"#.into(),
        }
    }

    fn configure(settings: String) -> Result<(), BackendError> {
        let v: serde_json::Value = serde_json::from_str(&settings).map_err(|e| {
            BackendError::InvalidConfig(vec![FieldError {
                field: String::new(),
                message: e.to_string(),
            }])
        })?;
        let field = |message: &str| {
            BackendError::InvalidConfig(vec![FieldError {
                field: "ca_key".into(),
                message: message.into(),
            }])
        };
        let obj = v
            .as_object()
            .ok_or_else(|| field("settings must be an object"))?;
        if let Some(other) = obj.keys().find(|k| *k != "ca_key") {
            return Err(BackendError::InvalidConfig(vec![FieldError {
                field: other.clone(),
                message: "unknown setting".into(),
            }]));
        }
        let key = obj
            .get("ca_key")
            .ok_or_else(|| field("is required"))?
            .as_str()
            .ok_or_else(|| field("must be a string"))?;
        CA_KEY.with(|k| *k.borrow_mut() = key.to_owned());
        Ok(())
    }

    fn issue(request: IssueRequest) -> Result<IssuedCertificate, BackendError> {
        let ca_key = CA_KEY.with(|k| k.borrow().clone());
        let csr =
            CertReq::from_der(&request.csr).map_err(|e| rejected(format!("malformed CSR: {e}")))?;
        let chain = custody::certificate_chain(&ca_key).map_err(|e| rejected(format!("{e:?}")))?;
        let ca = Certificate::from_der(
            chain
                .first()
                .ok_or_else(|| rejected("the CA key has no certificate"))?,
        )
        .map_err(|e| rejected(e.to_string()))?;
        let scheme = PublicKeyKind::of(&ca.tbs_certificate.subject_public_key_info)
            .map_err(|e| rejected(e.to_string()))?
            .default_signature_scheme();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let template = CertificateTemplate {
            serial: crypto::random_bytes(16),
            issuer: ca.tbs_certificate.subject.clone(),
            subject: csr.info.subject.clone(),
            not_before: now - 60,
            not_after: now + 86_400,
            public_key: csr.info.public_key.clone(),
            extensions: Vec::new(),
        };
        let certificate = template
            .sign(scheme, |tbs| custody::sign(&ca_key, algorithm(scheme), tbs))
            .map_err(|e| rejected(format!("{e:?}")))?;
        log::log(
            log::Level::Info,
            "issued by a certconn:plugin@0.1.0 backend",
        );
        Ok(IssuedCertificate { certificate, chain })
    }

    fn poll(_job_id: String, _poll_token: String) -> Result<IssuedCertificate, BackendError> {
        Err(BackendError::Unsupported("poll".into()))
    }

    fn revoke(_request: RevokeRequest) -> Result<(), BackendError> {
        Err(BackendError::Unsupported("revoke".into()))
    }

    fn check_import(_request: ImportCheck) -> Result<(), BackendError> {
        Err(BackendError::Unsupported("check-import".into()))
    }

    fn health() -> HealthReport {
        HealthReport {
            healthy: true,
            message: "a 0.1 backend".into(),
        }
    }
}

export!(V01);
