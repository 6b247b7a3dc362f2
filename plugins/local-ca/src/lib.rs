//! `local-ca`: a small certificate authority as a certconn backend.
//!
//! The CA's private key and certificate live in host custody under the handle named by `ca_key`;
//! this plugin builds the TBSCertificate and asks the host to sign it. It verifies every CSR's
//! signature (through the host's crypto), refuses weak keys, and applies the profile's key usages,
//! extended key usages and validity.
//!
//! It keeps no state of its own: the host records every issued certificate and every revocation
//! in its journal, which is this CA's database.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use certconn_sdk::x509::der::{Decode, Encode};
use certconn_sdk::x509::extensions::{self, subject_key_identifier_of};
use certconn_sdk::x509::x509_cert::name::Name;
use certconn_sdk::x509::x509_cert::request::CertReq;
use certconn_sdk::x509::x509_cert::Certificate;
use certconn_sdk::x509::{
    CertificateTemplate, ExtendedKeyUsageName, KeyUsageName, PublicKeyKind, SignatureScheme,
    SignedParts,
};
use certconn_sdk::{
    error, host, log, Backend, BackendError, BackendInfo, Capabilities, FieldError, HealthReport,
    IssueRequest, IssuedCertificate, RevokeRequest,
};
use serde::Deserialize;

/// Settings, from `[backends.NAME.settings]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Custody key handle of the CA key; custody must also hold its certificate.
    pub ca_key: String,
    /// Validity when neither the request nor the profile says.
    #[serde(default = "default_validity_days")]
    pub default_validity_days: u32,
    /// Upper bound on any validity.
    #[serde(default = "max_validity_days")]
    pub max_validity_days: u32,
    /// Smallest RSA modulus accepted in a CSR.
    #[serde(default = "min_rsa_bits")]
    pub min_rsa_bits: usize,
    /// Per-profile certificate contents. A profile not listed here uses `default`, if present,
    /// else the built-in default (digital_signature + key_encipherment, client_auth).
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
    /// Where relying parties fetch this CA's CRL (cRLDistributionPoints of every certificate):
    /// the URL at which certconn serves it (`http://HOST:PORT/pki/NAME/crl` with
    /// `[revocation.cas.NAME]`), or where you publish `crl_dir`'s copy.
    #[serde(default)]
    pub crl_urls: Vec<String>,
    /// OCSP responders (authorityInfoAccess), e.g. `http://HOST:PORT/pki/NAME/ocsp`.
    #[serde(default)]
    pub ocsp_urls: Vec<String>,
    /// Where this CA's certificate is (authorityInfoAccess caIssuers), e.g.
    /// `http://HOST:PORT/pki/NAME/ca.crt`.
    #[serde(default)]
    pub ca_issuers_urls: Vec<String>,
}

/// What a certificate issued under one profile contains.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub key_usage: Vec<Named<KeyUsageName>>,
    #[serde(default)]
    pub extended_key_usage: Vec<Named<ExtendedKeyUsageName>>,
    pub validity_days: Option<u32>,
}

/// A value parsed from its config name, so a bad name is reported with its exact path.
#[derive(Debug, Clone, Copy)]
pub struct Named<T>(pub T);

impl<'de, T: std::str::FromStr<Err = certconn_sdk::x509::Error>> Deserialize<'de> for Named<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map(Named).map_err(serde::de::Error::custom)
    }
}

fn default_validity_days() -> u32 {
    365
}
fn max_validity_days() -> u32 {
    825
}
fn min_rsa_bits() -> usize {
    2048
}

/// Allowance for device clocks that run a little behind.
const BACKDATE_SECONDS: u64 = 300;

const SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "local-ca settings",
  "type": "object",
  "required": ["ca_key"],
  "additionalProperties": false,
  "properties": {
    "ca_key": {"type": "string", "description": "custody key handle of the CA key (custody holds its certificate)"},
    "default_validity_days": {"type": "integer", "minimum": 1, "default": 365},
    "max_validity_days": {"type": "integer", "minimum": 1, "default": 825},
    "min_rsa_bits": {"type": "integer", "minimum": 2048, "default": 2048},
    "crl_urls": {"type": "array", "items": {"type": "string", "description": "http(s):// or ldap:// URL of this CA's CRL"}},
    "ocsp_urls": {"type": "array", "items": {"type": "string", "description": "http(s):// URL of an OCSP responder for this CA"}},
    "ca_issuers_urls": {"type": "array", "items": {"type": "string", "description": "http(s):// URL of this CA's certificate"}},
    "profiles": {"type": "object", "additionalProperties": {
      "type": "object", "required": ["key_usage"], "additionalProperties": false,
      "properties": {
        "key_usage": {"type": "array", "items": {"enum": ["digital_signature", "non_repudiation", "key_encipherment", "data_encipherment", "key_agreement", "key_cert_sign", "crl_sign"]}},
        "extended_key_usage": {"type": "array", "items": {"type": "string", "description": "server_auth, client_auth, email_protection, code_signing, time_stamping, ocsp_signing, smartcard_logon or a dotted OID"}},
        "validity_days": {"type": "integer", "minimum": 1}
      }
    }}
  }
}"#;

pub struct LocalCa;

impl Backend for LocalCa {
    type Config = Config;

    fn describe() -> BackendInfo {
        BackendInfo {
            name: "local-ca".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            capabilities: Capabilities::ISSUE | Capabilities::REVOKE,
            config_schema: SCHEMA.into(),
        }
    }

    fn validate(c: &Config) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        if c.ca_key.is_empty() {
            errors.push(error::field("ca_key", "must name a custody key"));
        }
        if c.default_validity_days == 0 {
            errors.push(error::field("default_validity_days", "must be at least 1"));
        }
        if c.max_validity_days < c.default_validity_days {
            errors.push(error::field(
                "max_validity_days",
                "must not be below default_validity_days",
            ));
        }
        if c.min_rsa_bits < 2048 {
            errors.push(error::field("min_rsa_bits", "must be at least 2048"));
        }
        for (field, urls) in [
            ("crl_urls", &c.crl_urls),
            ("ocsp_urls", &c.ocsp_urls),
            ("ca_issuers_urls", &c.ca_issuers_urls),
        ] {
            for (i, url) in urls.iter().enumerate() {
                let scheme_ok = url.starts_with("http://")
                    || url.starts_with("https://")
                    || (field == "crl_urls" && url.starts_with("ldap://"));
                if !scheme_ok || !url.is_ascii() || url.contains(char::is_whitespace) {
                    errors.push(error::field(
                        format!("{field}[{i}]"),
                        format!("{url:?} is not an http:// or https:// URL"),
                    ));
                }
            }
        }
        for (name, p) in &c.profiles {
            if p.key_usage.is_empty() {
                errors.push(error::field(
                    format!("profiles.{name}.key_usage"),
                    "must list at least one key usage",
                ));
            }
            if p.validity_days == Some(0) {
                errors.push(error::field(
                    format!("profiles.{name}.validity_days"),
                    "must be at least 1",
                ));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    fn issue(c: &Config, request: IssueRequest) -> Result<IssuedCertificate, BackendError> {
        let csr = checked_csr(c, &request.csr)?;

        let chain = host::certificate_chain(&c.ca_key)?;
        let ca_der = chain.first().ok_or_else(|| {
            error::rejected(format!(
                "custody key {:?} has no CA certificate; create it with a self-signed certificate",
                c.ca_key
            ))
        })?;
        let ca = Certificate::from_der(ca_der).map_err(|e| {
            error::rejected(format!("the CA certificate in custody does not parse: {e}"))
        })?;
        let ca_kind = PublicKeyKind::of(&ca.tbs_certificate.subject_public_key_info)
            .map_err(|e| error::rejected(format!("CA key: {e}")))?;
        let scheme = ca_kind.default_signature_scheme();

        let subject = match &request.subject {
            Some(der) => Name::from_der(der).map_err(|e| {
                error::rejected(format!("requested subject is not a DER Name: {e}"))
            })?,
            None => csr.info.subject.clone(),
        };
        let sans = if request.subject_alt_names.is_empty() {
            extensions::requested_subject_alt_names(&csr).map_err(|e| {
                error::rejected(format!("CSR extension request does not parse: {e}"))
            })?
        } else {
            request
                .subject_alt_names
                .iter()
                .map(from_wit_san)
                .collect::<Result<Vec<_>, _>>()?
        };
        if subject.0.is_empty() && sans.is_empty() {
            return Err(error::rejected(
                "the certificate would have neither a subject nor a subject alternative name",
            ));
        }

        let profile = profile_for(c, &request.profile);
        let days = request
            .validity_days
            .or(profile.validity_days)
            .unwrap_or(c.default_validity_days)
            .min(c.max_validity_days);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| error::transient("the clock is before 1970"))?
            .as_secs();
        let ca_not_after = ca
            .tbs_certificate
            .validity
            .not_after
            .to_unix_duration()
            .as_secs();
        let not_after = (now + u64::from(days) * 86_400).min(ca_not_after);
        if not_after <= now {
            return Err(error::rejected("the CA certificate has expired"));
        }

        let public_key = csr.info.public_key.clone();
        let key_id = subject_key_id(&public_key)?;
        let enc = |e: certconn_sdk::x509::Error| {
            error::rejected(format!("encoding the certificate: {e}"))
        };
        let mut exts = vec![
            extensions::basic_constraints(false, None, &subject).map_err(enc)?,
            extensions::key_usage(&profile.key_usage, &subject).map_err(enc)?,
            extensions::subject_key_identifier(&key_id, &subject).map_err(enc)?,
        ];
        if !profile.extended_key_usage.is_empty() {
            exts.push(
                extensions::extended_key_usage(&profile.extended_key_usage, &subject)
                    .map_err(enc)?,
            );
        }
        if !sans.is_empty() {
            let mut san = extensions::subject_alt_name(&sans, &subject).map_err(enc)?;
            san.critical = subject.0.is_empty();
            exts.push(san);
        }
        if let Some(aki) = subject_key_identifier_of(&ca) {
            exts.push(extensions::authority_key_identifier(&aki, &subject).map_err(enc)?);
        }
        if !c.crl_urls.is_empty() {
            exts.push(extensions::crl_distribution_points(&c.crl_urls, &subject).map_err(enc)?);
        }
        if !(c.ocsp_urls.is_empty() && c.ca_issuers_urls.is_empty()) {
            exts.push(
                extensions::authority_info_access(&c.ocsp_urls, &c.ca_issuers_urls, &subject)
                    .map_err(enc)?,
            );
        }

        let template = CertificateTemplate {
            serial: host::random_bytes(16),
            issuer: ca.tbs_certificate.subject.clone(),
            subject,
            not_before: now.saturating_sub(BACKDATE_SECONDS),
            not_after,
            public_key,
            extensions: exts,
        };
        let certificate = template
            .sign(scheme, |tbs| host::sign(&c.ca_key, scheme, tbs))
            .map_err(|e| match e {
                certconn_sdk::x509::tbs::SignError::Encode(e) => enc(e),
                certconn_sdk::x509::tbs::SignError::Signer(e) => BackendError::from(e),
            })?;
        log::info(&format!(
            "issued for job {} under profile {}",
            request.job_id, request.profile
        ));
        Ok(IssuedCertificate { certificate, chain })
    }

    /// The host's ledger is this CA's database and `[revocation]` publishes it (CRL, OCSP):
    /// revoking here only checks the serial.
    fn revoke(_c: &Config, request: RevokeRequest) -> Result<(), BackendError> {
        let serial = request.serial.trim();
        if serial.is_empty() || serial.len() > 42 || !serial.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(error::rejected(format!(
                "serial {serial:?} is not a hexadecimal serial number"
            )));
        }
        log::info(&format!(
            "revoked serial {serial} for job {} ({:?})",
            request.job_id, request.reason
        ));
        Ok(())
    }

    fn health(config: Option<&Config>) -> HealthReport {
        let Some(c) = config else {
            return HealthReport {
                healthy: false,
                message: "not configured".into(),
            };
        };
        match host::certificate_chain(&c.ca_key) {
            Ok(chain) if !chain.is_empty() => HealthReport {
                healthy: true,
                message: "CA key and certificate available".into(),
            },
            Ok(_) => HealthReport {
                healthy: false,
                message: format!("custody key {:?} has no certificate", c.ca_key),
            },
            Err(e) => HealthReport {
                healthy: false,
                message: e.to_string(),
            },
        }
    }
}

/// Parses the CSR, verifies its signature with the host and refuses weak or unknown keys.
fn checked_csr(c: &Config, der: &[u8]) -> Result<CertReq, BackendError> {
    let csr = CertReq::from_der(der).map_err(|e| error::rejected(format!("malformed CSR: {e}")))?;
    let parts =
        SignedParts::split(der).map_err(|e| error::rejected(format!("malformed CSR: {e}")))?;
    let scheme = SignatureScheme::from_algorithm_identifier(&parts.algorithm)
        .map_err(|e| error::rejected(format!("CSR signature: {e}")))?;
    let kind = PublicKeyKind::of(&csr.info.public_key)
        .map_err(|e| error::rejected(format!("CSR key: {e}")))?;
    if let PublicKeyKind::Rsa { bits } = kind {
        if bits < c.min_rsa_bits {
            return Err(error::rejected(format!(
                "CSR key is RSA-{bits}; the minimum is RSA-{}",
                c.min_rsa_bits
            )));
        }
    }
    let spki = csr
        .info
        .public_key
        .to_der()
        .map_err(|e| error::rejected(format!("CSR key: {e}")))?;
    if !host::verify(&spki, scheme, parts.tbs, parts.signature)? {
        return Err(error::rejected(
            "CSR signature does not verify with the CSR's public key",
        ));
    }
    Ok(csr)
}

/// What the certificate for `name` contains.
struct Resolved {
    key_usage: Vec<KeyUsageName>,
    extended_key_usage: Vec<ExtendedKeyUsageName>,
    validity_days: Option<u32>,
}

fn profile_for(c: &Config, name: &str) -> Resolved {
    match c.profiles.get(name).or_else(|| c.profiles.get("default")) {
        Some(p) => Resolved {
            key_usage: p.key_usage.iter().map(|n| n.0).collect(),
            extended_key_usage: p.extended_key_usage.iter().map(|n| n.0).collect(),
            validity_days: p.validity_days,
        },
        None => Resolved {
            key_usage: vec![
                KeyUsageName::DigitalSignature,
                KeyUsageName::KeyEncipherment,
            ],
            extended_key_usage: vec![ExtendedKeyUsageName::ClientAuth],
            validity_days: None,
        },
    }
}

/// RFC 7093 method 1: the leftmost 160 bits of the SHA-256 of the subjectPublicKey bits.
fn subject_key_id(
    spki: &certconn_sdk::x509::spki::SubjectPublicKeyInfoOwned,
) -> Result<Vec<u8>, BackendError> {
    let mut digest = host::sha256(spki.subject_public_key.raw_bytes())?;
    digest.truncate(20);
    Ok(digest)
}

fn from_wit_san(
    san: &certconn_sdk::SubjectAltName,
) -> Result<extensions::SubjectAltName, BackendError> {
    use certconn_sdk::SubjectAltName as W;
    use extensions::SubjectAltName as X;
    Ok(match san {
        W::Dns(v) => X::Dns(v.clone()),
        W::Email(v) => X::Email(v.clone()),
        W::Upn(v) => X::Upn(v.clone()),
        W::Uri(v) => X::Uri(v.clone()),
        W::Ip(v) => X::Ip(
            v.parse()
                .map_err(|_| error::rejected(format!("{v:?} is not an IP address")))?,
        ),
    })
}

certconn_sdk::export_backend!(LocalCa);
certconn_sdk::plugin_manifest!("../certconn-plugin.toml");
