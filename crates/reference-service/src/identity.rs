//! The service's side of connector identity: a CA made at start (in memory, like everything
//! here), one-time enrolment tokens, registration and renewal from a CSR, revocation, and the
//! TLS certificate the service serves — issued by the same CA, whose certificate the
//! registration answer hands the connector to trust from then on.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SecureRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair, UnparsedPublicKey};
use certconn_x509::der::Decode;
use certconn_x509::spki::SubjectPublicKeyInfoOwned;
use certconn_x509::x509_cert::request::CertReq;
use certconn_x509::{
    extensions, CertificateTemplate, ExtendedKeyUsageName, KeyUsageName, SignatureScheme,
    SignedParts, SubjectAltName,
};

/// How long an enrolment token may wait to be used.
const TOKEN_SECONDS: u64 = 3600;

/// One identity certificate the service issued.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Issued {
    pub connector_id: String,
    /// Hex.
    pub serial: String,
    pub not_before: u64,
    pub not_after: u64,
    pub revoked: bool,
    /// Issued by a renewal (not the registration).
    pub renewal: bool,
}

/// The identity CA and its records.
pub struct Authority {
    key: EcdsaKeyPair,
    cert: Vec<u8>,
    /// The lifetime of an identity certificate, seconds.
    lifetime: u64,
    tokens: Mutex<BTreeMap<String, u64>>,
    issued: Mutex<BTreeMap<String, Issued>>,
    next_connector: AtomicU64,
    rng: aws_lc_rs::rand::SystemRandom,
}

/// Why a registration or renewal is refused: the HTTP status, the error code, the words.
pub struct Refusal {
    pub status: u16,
    pub code: Option<&'static str>,
    pub reason: String,
}

fn bad(reason: impl Into<String>) -> Refusal {
    Refusal {
        status: 400,
        code: None,
        reason: reason.into(),
    }
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

impl Authority {
    /// A new CA (P-256) whose identity certificates live `lifetime` seconds.
    pub fn new(lifetime: u64) -> Result<Self, String> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .map_err(|_| "generating the CA key")?;
        let key =
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref())
                .map_err(|_| "reading the CA key")?;
        let mut authority = Self {
            key,
            cert: Vec::new(),
            lifetime,
            tokens: Mutex::default(),
            issued: Mutex::default(),
            next_connector: AtomicU64::new(1),
            rng,
        };
        let name = dn("CN=certconn reference service CA")?;
        let spki = authority.public_key()?;
        let ski = key_id(&spki);
        let start = now().saturating_sub(3600);
        let template = CertificateTemplate {
            serial: authority.serial(),
            issuer: name.clone(),
            subject: name.clone(),
            not_before: start,
            not_after: start + 10 * 365 * 86_400,
            public_key: spki,
            extensions: vec![
                extensions::basic_constraints(true, Some(0), &name).map_err(|e| e.to_string())?,
                extensions::key_usage(&[KeyUsageName::KeyCertSign, KeyUsageName::CrlSign], &name)
                    .map_err(|e| e.to_string())?,
                extensions::subject_key_identifier(&ski, &name).map_err(|e| e.to_string())?,
            ],
        };
        authority.cert = authority.sign(&template)?;
        Ok(authority)
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> String {
        certconn_x509::pem::encode("CERTIFICATE", &self.cert)
    }

    /// The CA certificate, DER.
    pub fn ca_der(&self) -> &[u8] {
        &self.cert
    }

    /// A fresh key and a TLS server certificate for `names` (the service's own), as a chain and
    /// a PKCS#8 key.
    pub fn server_certificate(&self, names: &[String]) -> Result<(Vec<Vec<u8>>, Vec<u8>), String> {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &self.rng)
                .map_err(|_| "generating the server key")?;
        let key =
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref())
                .map_err(|_| "reading the server key")?;
        let spki = ec_spki(key.public_key().as_ref())?;
        let subject = dn("CN=certconn reference service")?;
        let sans = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => SubjectAltName::Ip(ip),
                Err(_) => SubjectAltName::Dns(n.clone()),
            })
            .collect::<Vec<_>>();
        let start = now().saturating_sub(3600);
        let template = CertificateTemplate {
            serial: self.serial(),
            issuer: self.subject()?,
            subject: subject.clone(),
            not_before: start,
            not_after: start + 365 * 86_400,
            public_key: spki,
            extensions: vec![
                extensions::basic_constraints(false, None, &subject).map_err(|e| e.to_string())?,
                extensions::key_usage(&[KeyUsageName::DigitalSignature], &subject)
                    .map_err(|e| e.to_string())?,
                extensions::extended_key_usage(&[ExtendedKeyUsageName::ServerAuth], &subject)
                    .map_err(|e| e.to_string())?,
                extensions::subject_alt_name(&sans, &subject).map_err(|e| e.to_string())?,
            ],
        };
        let cert = self.sign(&template)?;
        Ok((vec![cert, self.cert.clone()], pkcs8.as_ref().to_vec()))
    }

    /// A one-time enrolment token, good for [`TOKEN_SECONDS`].
    pub fn new_token(&self) -> Result<String, String> {
        let mut bytes = [0u8; 24];
        self.rng.fill(&mut bytes).map_err(|_| "no randomness")?;
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token.clone(), now() + TOKEN_SECONDS);
        Ok(token)
    }

    /// Registration: spends `token` and issues the first identity for the CSR's key.
    pub fn register(
        &self,
        token: Option<&str>,
        csr_pem: &str,
    ) -> Result<(String, String), Refusal> {
        let refused = || Refusal {
            status: 401,
            code: Some(certconn_connector::TOKEN_REFUSED),
            reason: "the enrolment token is unknown, used or expired".into(),
        };
        let spki = verified_csr_key(csr_pem)?;
        let expires = {
            let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
            token.and_then(|t| tokens.remove(t)).ok_or_else(refused)?
        };
        if now() > expires {
            return Err(refused());
        }
        let id = format!(
            "connector-{}",
            self.next_connector.fetch_add(1, Ordering::Relaxed)
        );
        let cert = self.issue(&id, spki, false).map_err(bad)?;
        Ok((id, cert))
    }

    /// Renewal, for the connector whose current identity is `presented` (DER, verified by the
    /// TLS handshake).
    pub fn renew(&self, presented: &[u8], csr_pem: &str) -> Result<(String, String), Refusal> {
        let id = self.connector_of(presented)?;
        let spki = verified_csr_key(csr_pem)?;
        let cert = self.issue(&id, spki, true).map_err(bad)?;
        Ok((id, cert))
    }

    /// The connector an identity certificate (verified by the handshake) belongs to, unless
    /// it is revoked or was never issued here.
    pub fn connector_of(&self, presented: &[u8]) -> Result<String, Refusal> {
        let refused = |why: &str| Refusal {
            status: 401,
            code: Some(certconn_connector::IDENTITY_REFUSED),
            reason: why.to_owned(),
        };
        let cert = certconn_x509::x509_cert::Certificate::from_der(presented)
            .map_err(|_| refused("an unreadable client certificate"))?;
        let serial = hex(cert.tbs_certificate.serial_number.as_bytes());
        let issued = self.issued.lock().unwrap_or_else(|p| p.into_inner());
        match issued.get(&serial) {
            Some(i) if i.revoked => Err(refused(
                "this connector identity is revoked: register again",
            )),
            Some(i) => Ok(i.connector_id.clone()),
            None => Err(refused("this identity was not issued by this service")),
        }
    }

    /// Revokes every identity of `connector`: false when there is none.
    pub fn revoke(&self, connector: &str) -> bool {
        let mut issued = self.issued.lock().unwrap_or_else(|p| p.into_inner());
        let mut any = false;
        for i in issued.values_mut().filter(|i| i.connector_id == connector) {
            i.revoked = true;
            any = true;
        }
        any
    }

    /// Every identity issued, oldest first.
    pub fn issued(&self) -> Vec<Issued> {
        let mut list: Vec<_> = self
            .issued
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        list.sort_by_key(|i| (i.not_before, i.serial.clone()));
        list
    }

    fn issue(
        &self,
        connector: &str,
        spki: SubjectPublicKeyInfoOwned,
        renewal: bool,
    ) -> Result<String, String> {
        let subject = dn(&format!("CN={connector},O=certconn reference service"))?;
        let serial = self.serial();
        let start = now();
        let template = CertificateTemplate {
            serial: serial.clone(),
            issuer: self.subject()?,
            subject: subject.clone(),
            not_before: start,
            not_after: start + self.lifetime,
            public_key: spki,
            extensions: vec![
                extensions::basic_constraints(false, None, &subject).map_err(|e| e.to_string())?,
                extensions::key_usage(&[KeyUsageName::DigitalSignature], &subject)
                    .map_err(|e| e.to_string())?,
                extensions::extended_key_usage(&[ExtendedKeyUsageName::ClientAuth], &subject)
                    .map_err(|e| e.to_string())?,
            ],
        };
        let cert = self.sign(&template)?;
        let parsed =
            certconn_x509::x509_cert::Certificate::from_der(&cert).map_err(|e| e.to_string())?;
        let serial = hex(parsed.tbs_certificate.serial_number.as_bytes());
        self.issued
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                serial.clone(),
                Issued {
                    connector_id: connector.to_owned(),
                    serial,
                    not_before: start,
                    not_after: start + self.lifetime,
                    revoked: false,
                    renewal,
                },
            );
        Ok(certconn_x509::pem::encode("CERTIFICATE", &cert))
    }

    fn sign(&self, template: &CertificateTemplate) -> Result<Vec<u8>, String> {
        template
            .sign(SignatureScheme::EcdsaP256Sha256, |tbs| {
                self.key
                    .sign(&self.rng, tbs)
                    .map(|s| s.as_ref().to_vec())
                    .map_err(|_| "signing".to_owned())
            })
            .map_err(|e| match e {
                certconn_x509::tbs::SignError::Encode(e) => e.to_string(),
                certconn_x509::tbs::SignError::Signer(e) => e,
            })
    }

    fn serial(&self) -> Vec<u8> {
        let mut serial = [0u8; 16];
        let _ = self.rng.fill(&mut serial);
        serial[0] &= 0x7f;
        serial[0] |= 0x01;
        serial.to_vec()
    }

    fn public_key(&self) -> Result<SubjectPublicKeyInfoOwned, String> {
        ec_spki(self.key.public_key().as_ref())
    }

    fn subject(&self) -> Result<certconn_x509::x509_cert::name::Name, String> {
        certconn_x509::x509_cert::Certificate::from_der(&self.cert)
            .map(|c| c.tbs_certificate.subject)
            .map_err(|e| e.to_string())
    }
}

fn dn(text: &str) -> Result<certconn_x509::x509_cert::name::Name, String> {
    certconn_x509::dn::parse(text).map_err(|e| e.to_string())
}

fn hex(bytes: &[u8]) -> String {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    bytes[start..].iter().map(|b| format!("{b:02x}")).collect()
}

/// A P-256 point as a SubjectPublicKeyInfo.
fn ec_spki(point: &[u8]) -> Result<SubjectPublicKeyInfoOwned, String> {
    use certconn_x509::der::asn1::{BitString, ObjectIdentifier};
    let ec = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
    let p256 = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
    Ok(SubjectPublicKeyInfoOwned {
        algorithm: certconn_x509::spki::AlgorithmIdentifierOwned {
            oid: ec,
            parameters: Some(certconn_x509::der::asn1::Any::from(&p256)),
        },
        subject_public_key: BitString::from_bytes(point).map_err(|e| e.to_string())?,
    })
}

/// SHA-1 of the public key bits (RFC 5280's method 1).
fn key_id(spki: &SubjectPublicKeyInfoOwned) -> Vec<u8> {
    let bits = spki.subject_public_key.raw_bytes();
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, bits)
        .as_ref()
        .to_vec()
}

/// The key of a PEM CSR whose signature verifies (proof that the caller holds the key).
fn verified_csr_key(pem: &str) -> Result<SubjectPublicKeyInfoOwned, Refusal> {
    let blocks = certconn_x509::pem::decode_all(pem).map_err(|e| bad(format!("csr: {e}")))?;
    let der = match blocks.as_slice() {
        [(label, der)] if label == "CERTIFICATE REQUEST" => der,
        _ => return Err(bad("csr: one PEM CERTIFICATE REQUEST block expected")),
    };
    let request = CertReq::from_der(der).map_err(|e| bad(format!("csr: not PKCS#10: {e}")))?;
    let parts = SignedParts::split(der).map_err(|e| bad(format!("csr: {e}")))?;
    let scheme = SignatureScheme::from_algorithm_identifier(&parts.algorithm)
        .map_err(|e| bad(format!("csr: {e}")))?;
    let algorithm: &dyn signature::VerificationAlgorithm = match scheme {
        SignatureScheme::EcdsaP256Sha256 => &signature::ECDSA_P256_SHA256_ASN1,
        SignatureScheme::EcdsaP384Sha384 => &signature::ECDSA_P384_SHA384_ASN1,
        SignatureScheme::RsaPkcs1Sha256 => &signature::RSA_PKCS1_2048_8192_SHA256,
        SignatureScheme::RsaPkcs1Sha384 => &signature::RSA_PKCS1_2048_8192_SHA384,
        SignatureScheme::RsaPkcs1Sha512 => &signature::RSA_PKCS1_2048_8192_SHA512,
        other => return Err(bad(format!("csr: {} is not accepted", other.name()))),
    };
    let spki = request.info.public_key;
    UnparsedPublicKey::new(algorithm, spki.subject_public_key.raw_bytes())
        .verify(parts.tbs, parts.signature)
        .map_err(|_| bad("csr: its signature does not verify"))?;
    Ok(spki)
}
