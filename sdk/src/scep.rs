//! A SCEP client (RFC 8894) for backends that talk to SCEP CAs: NDES, micromdm, any RFC 8894
//! server.
//!
//! Messages are built and read by the `certconn-scep` crate, the same code certconn's own SCEP
//! server uses. Every primitive goes through the host: signing and decrypting with the
//! requester's key are custody operations on the `request` handle (the key the job's CSR
//! certifies), ciphers and digests run in the host's provider under its algorithm policy. The
//! content-encryption key of each message passes through the plugin's memory for the length of
//! one call; no long-lived key ever does.

use certconn_scep::{
    certs, envelope, message, CaCertificates, Capabilities, Cipher, CipherPolicy, Crypto, Digest,
    Error as ScepError, FailInfo, Identity, IssuerAndSubject, KeyTransport, MessageType, Outgoing,
    PkiStatus,
};
use certconn_x509::der::{Decode, Encode};
use certconn_x509::x509_cert::name::Name;
use certconn_x509::x509_cert::request::CertReq;
use certconn_x509::x509_cert::Certificate;
use certconn_x509::{CertificateTemplate, SignatureScheme};

use crate::bindings::certconn::plugin::types::{
    DigestAlgorithm, EncryptionPadding, SymmetricCipher,
};
use crate::bindings::certconn::plugin::{crypto, custody};
use crate::http;
use crate::{BackendError, IssuedCertificate};

pub use certconn_scep as messages;

/// The custody handle of the key the job's CSR certifies (granted by the host for the length of
/// an `issue` or `poll` call when certconn made the key).
pub const REQUEST_HANDLE: &str = "request";

/// The custody handle of the key of the certificate a renewal replaces, its chain that
/// certificate first (bound by the host for the length of an `issue` or `poll` call of a renewal
/// job). With it, [`Enrolment`] sends a RenewalReq signed by that certificate.
pub const CURRENT_HANDLE: &str = "current";

/// The host's primitives, for `certconn-scep`.
pub struct HostCrypto;

fn crypto_err(e: crypto::CryptoError) -> ScepError {
    match e {
        crypto::CryptoError::Refused(m) => ScepError::Unsupported(m),
        crypto::CryptoError::InvalidInput(m) | crypto::CryptoError::Failed(m) => {
            ScepError::Crypto(m)
        }
    }
}

fn cipher(c: Cipher) -> SymmetricCipher {
    match c {
        Cipher::DesCbc => SymmetricCipher::DesCbc,
        Cipher::DesEde3Cbc => SymmetricCipher::DesEde3Cbc,
        Cipher::Aes128Cbc => SymmetricCipher::Aes128Cbc,
        Cipher::Aes192Cbc => SymmetricCipher::Aes192Cbc,
        Cipher::Aes256Cbc => SymmetricCipher::Aes256Cbc,
    }
}

fn padding(t: KeyTransport) -> EncryptionPadding {
    match t {
        KeyTransport::Pkcs1 => EncryptionPadding::RsaPkcs1,
        KeyTransport::OaepSha1 => EncryptionPadding::RsaOaepSha1,
        KeyTransport::OaepSha256 => EncryptionPadding::RsaOaepSha256,
    }
}

impl Crypto for HostCrypto {
    fn digest(&self, d: Digest, data: &[u8]) -> certconn_scep::Result<Vec<u8>> {
        let alg = match d {
            Digest::Sha1 => DigestAlgorithm::Sha1,
            Digest::Sha256 => DigestAlgorithm::Sha256,
            Digest::Sha384 => DigestAlgorithm::Sha384,
            Digest::Sha512 => DigestAlgorithm::Sha512,
        };
        crypto::digest(alg, data).map_err(crypto_err)
    }

    fn verify(
        &self,
        spki: &[u8],
        scheme: SignatureScheme,
        msg: &[u8],
        sig: &[u8],
    ) -> certconn_scep::Result<bool> {
        crypto::verify(spki, scheme.into(), msg, sig).map_err(crypto_err)
    }

    fn encrypt_key(
        &self,
        spki: &[u8],
        t: KeyTransport,
        key: &[u8],
    ) -> certconn_scep::Result<Vec<u8>> {
        crypto::public_key_encrypt(spki, padding(t), key).map_err(crypto_err)
    }

    fn cbc_encrypt(
        &self,
        c: Cipher,
        key: &[u8],
        iv: &[u8],
        pt: &[u8],
    ) -> certconn_scep::Result<Vec<u8>> {
        crypto::symmetric_encrypt(cipher(c), key, iv, pt).map_err(crypto_err)
    }

    fn cbc_decrypt(
        &self,
        c: Cipher,
        key: &[u8],
        iv: &[u8],
        ct: &[u8],
    ) -> certconn_scep::Result<Vec<u8>> {
        crypto::symmetric_decrypt(cipher(c), key, iv, ct).map_err(crypto_err)
    }

    fn random(&self, len: usize) -> certconn_scep::Result<zeroize::Zeroizing<Vec<u8>>> {
        let bytes = crypto::random_bytes(len as u32);
        if bytes.len() != len {
            return Err(ScepError::Crypto(
                "the host's random generator failed".into(),
            ));
        }
        Ok(zeroize::Zeroizing::new(bytes))
    }
}

/// A custody key and a certificate for it: the requester of a SCEP transaction.
pub struct CustodyIdentity {
    pub handle: String,
    pub certificate: Vec<u8>,
}

fn custody_err(e: custody::CustodyError) -> ScepError {
    ScepError::Crypto(e.to_string())
}

impl Identity for CustodyIdentity {
    fn certificate(&self) -> &[u8] {
        &self.certificate
    }

    fn sign(&self, scheme: SignatureScheme, message: &[u8]) -> certconn_scep::Result<Vec<u8>> {
        custody::sign(&self.handle, scheme.into(), message).map_err(custody_err)
    }

    fn decrypt_key(
        &self,
        t: KeyTransport,
        ct: &[u8],
    ) -> certconn_scep::Result<zeroize::Zeroizing<Vec<u8>>> {
        custody::decrypt(&self.handle, padding(t), ct)
            .map(zeroize::Zeroizing::new)
            .map_err(custody_err)
    }
}

impl CustodyIdentity {
    /// The certificate's public key, DER SubjectPublicKeyInfo.
    pub fn public_key(&self) -> Result<Vec<u8>, BackendError> {
        Certificate::from_der(&self.certificate)
            .map_err(rejected)?
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .map_err(rejected)
    }

    /// The certificate a renewal replaces, with its key (the [`CURRENT_HANDLE`]), when the host
    /// bound one to this call.
    pub fn current() -> Result<Option<Self>, BackendError> {
        match custody::certificate_chain(CURRENT_HANDLE) {
            Err(custody::CustodyError::NotGranted(_)) => Ok(None),
            Err(e) => Err(e.into()),
            Ok(chain) => match chain.into_iter().next() {
                Some(certificate) => Ok(Some(Self {
                    handle: CURRENT_HANDLE.into(),
                    certificate,
                })),
                None => Err(rejected(
                    "the renewed certificate's key (custody handle `current`) comes without its certificate",
                )),
            },
        }
    }

    /// A short-lived self-signed certificate for the custody key `handle`, as RFC 8894 §2.3 has
    /// a requester without a certificate sign its request.
    pub fn self_signed(
        handle: &str,
        subject: &certconn_x509::x509_cert::name::Name,
    ) -> Result<Self, BackendError> {
        let spki_der = custody::public_key(handle).map_err(|e| match e {
            custody::CustodyError::NotGranted(_) if handle == REQUEST_HANDLE => BackendError::Rejected(
                "no device key to enrol (custody handle `request`): SCEP enrols keys certconn makes, not a device's own CSR".into(),
            ),
            other => other.into(),
        })?;
        let public_key = certconn_x509::spki::SubjectPublicKeyInfoOwned::from_der(&spki_der)
            .map_err(|e| BackendError::Rejected(format!("the request key: {e}")))?;
        if !matches!(
            certconn_x509::PublicKeyKind::of(&public_key),
            Ok(certconn_x509::PublicKeyKind::Rsa { .. })
        ) {
            return Err(BackendError::Rejected(
                "SCEP needs an RSA device key (replies are encrypted to it); give the profile an rsa-2048 key".into(),
            ));
        }
        let now = crate::now_seconds();
        let template = CertificateTemplate {
            serial: crypto::random_bytes(16),
            issuer: subject.clone(),
            subject: subject.clone(),
            not_before: now.saturating_sub(300),
            not_after: now + 86_400,
            public_key,
            extensions: Vec::new(),
        };
        let scheme = SignatureScheme::RsaPkcs1Sha256;
        let certificate = template
            .sign(scheme, |tbs| custody::sign(handle, scheme.into(), tbs))
            .map_err(|e| {
                BackendError::Rejected(format!("self-signing the requester certificate: {e:?}"))
            })?;
        Ok(Self {
            handle: handle.into(),
            certificate,
        })
    }
}

/// How a SCEP CA answered.
#[derive(Debug)]
pub enum Reply {
    Issued(IssuedCertificate),
    /// PENDING: ask again with CertPoll.
    Pending,
}

/// One SCEP server.
pub struct ScepClient {
    /// The SCEP URL, for example `http://ndes.corp.example/certsrv/mscep/mscep.dll`.
    pub url: String,
    pub ciphers: CipherPolicy,
    pub key_transport: KeyTransport,
}

fn transient(what: impl std::fmt::Display) -> BackendError {
    BackendError::Transient(what.to_string())
}

fn rejected(what: impl std::fmt::Display) -> BackendError {
    BackendError::Rejected(what.to_string())
}

impl ScepClient {
    fn url_for(&self, operation: &str, message: Option<&str>) -> String {
        let sep = if self.url.contains('?') { '&' } else { '?' };
        match message {
            Some(m) => format!("{}{sep}operation={operation}&message={m}", self.url),
            None => format!("{}{sep}operation={operation}", self.url),
        }
    }

    fn get(&self, operation: &str) -> Result<http::Response, BackendError> {
        let r = http::fetch("GET", &self.url_for(operation, None), &[], None)
            .map_err(|e| e.into_backend_error(operation))?;
        check_status(operation, &r)?;
        Ok(r)
    }

    /// GetCACaps. An error answer counts as "no capabilities", as RFC 8894 says.
    pub fn capabilities(&self) -> Result<Capabilities, BackendError> {
        let r = http::fetch("GET", &self.url_for("GetCACaps", None), &[], None)
            .map_err(|e| e.into_backend_error("GetCACaps"))?;
        if r.status >= 500 {
            return Err(transient(format!("GetCACaps: HTTP {}", r.status)));
        }
        if r.status != 200 {
            return Ok(Capabilities::default());
        }
        Ok(Capabilities::parse(&String::from_utf8_lossy(&r.body)))
    }

    /// GetCACert: the CA and, for an RA deployment, the RA certificates sorted by role.
    pub fn ca_certificates(&self) -> Result<CaCertificates, BackendError> {
        let r = self.get("GetCACert")?;
        CaCertificates::from_response(&r.body).map_err(|e| rejected(format!("GetCACert: {e}")))
    }

    /// Sends one pkiMessage (PKCSReq, RenewalReq or CertPoll) signed by `requester` and reads
    /// the CertRep, whose certificate must be for `certified` (DER SubjectPublicKeyInfo: the
    /// requester's own key, except in a renewal, which certifies a new key).
    #[allow(clippy::too_many_arguments)]
    pub fn transact(
        &self,
        caps: &Capabilities,
        ca: &CaCertificates,
        requester: &CustodyIdentity,
        certified: &[u8],
        message_type: MessageType,
        transaction_id: &str,
        content: &[u8],
    ) -> Result<Reply, BackendError> {
        let cipher = caps.cipher(self.ciphers).map_err(rejected)?;
        // The requester's key signs: custody makes no new SHA-1 signatures.
        let digest = match caps.digest() {
            Digest::Sha1 => Digest::Sha256,
            d => d,
        };
        let sealed = envelope::seal(
            &HostCrypto,
            content,
            &ca.encryption,
            cipher,
            self.key_transport,
        )
        .map_err(rejected)?;
        let nonce = HostCrypto.random(16).map_err(rejected)?;
        let request = message::sign(
            &HostCrypto,
            requester,
            digest,
            &Outgoing {
                message_type,
                transaction_id,
                sender_nonce: &nonce,
                recipient_nonce: None,
                pki_status: None,
                fail_info: None,
                content: Some(&sealed),
                extra_certificates: &[],
                send_certificates: true,
            },
        )
        .map_err(rejected)?;
        let response = if caps.post() {
            http::fetch(
                "POST",
                &self.url_for("PKIOperation", None),
                &[("content-type", "application/x-pki-message")],
                Some(&request),
            )
        } else {
            http::fetch(
                "GET",
                &self.url_for("PKIOperation", Some(&url_base64(&request))),
                &[],
                None,
            )
        }
        .map_err(|e| e.into_backend_error("PKIOperation"))?;
        check_status("PKIOperation", &response)?;

        // NDES signs with its signing RA and sends no certificates: verify against what
        // GetCACert gave.
        let mut known = vec![ca.signing.clone()];
        known.extend(ca.all.iter().cloned());
        let rep = message::verify(&HostCrypto, &response.body, &known)
            .map_err(|e| rejected(format!("the CertRep: {e}")))?;
        if rep.message_type != MessageType::CertRep {
            return Err(rejected(format!(
                "the answer is messageType {}, not CertRep",
                rep.message_type.code()
            )));
        }
        if rep.transaction_id != transaction_id {
            return Err(rejected("the CertRep answers another transaction"));
        }
        if rep.recipient_nonce.as_deref() != Some(&nonce[..]) {
            return Err(rejected(
                "the CertRep's recipientNonce is not our senderNonce (a replayed answer?)",
            ));
        }
        match rep.pki_status {
            Some(PkiStatus::Success) => {
                let content = rep
                    .content
                    .ok_or_else(|| rejected("a SUCCESS CertRep without content"))?;
                let (bag, _) =
                    envelope::open(&HostCrypto, requester, &content).map_err(rejected)?;
                let certificates = certs::parse_certs_only(&bag).map_err(rejected)?;
                Ok(Reply::Issued(pick_leaf(certificates, certified, ca)?))
            }
            Some(PkiStatus::Pending) => Ok(Reply::Pending),
            Some(PkiStatus::Failure) => {
                let info = rep.fail_info.map(FailInfo::name).unwrap_or("no failInfo");
                let text = rep
                    .fail_info_text
                    .map(|t| format!(": {t}"))
                    .unwrap_or_default();
                let why = format!("the SCEP CA refused the request ({info}){text}");
                // badTime is a clock matter that can pass; the rest are final.
                if rep.fail_info == Some(FailInfo::BadTime) {
                    Err(transient(why))
                } else {
                    Err(rejected(why))
                }
            }
            None => Err(rejected("the CertRep has no pkiStatus")),
        }
    }
}

fn check_status(operation: &str, r: &http::Response) -> Result<(), BackendError> {
    match r.status {
        200 => Ok(()),
        s if s >= 500 || s == 429 || s == 408 => Err(transient(format!("{operation}: HTTP {s}"))),
        s => Err(rejected(format!(
            "{operation}: HTTP {s}: {}",
            String::from_utf8_lossy(&r.body[..r.body.len().min(300)])
        ))),
    }
}

/// The certificate for the `certified` key (DER SubjectPublicKeyInfo) first, then the others
/// (the CA's certificates from GetCACert when the reply carried only the leaf).
fn pick_leaf(
    certificates: Vec<Vec<u8>>,
    certified: &[u8],
    ca: &CaCertificates,
) -> Result<IssuedCertificate, BackendError> {
    let key = certconn_x509::spki::SubjectPublicKeyInfoOwned::from_der(certified)
        .map_err(|e| rejected(format!("the certified key: {e}")))?;
    let mut leaf = None;
    let mut chain = Vec::new();
    for der in certificates {
        let cert = Certificate::from_der(&der).map_err(rejected)?;
        if leaf.is_none() && cert.tbs_certificate.subject_public_key_info == key {
            leaf = Some(der);
        } else {
            chain.push(der);
        }
    }
    let certificate =
        leaf.ok_or_else(|| rejected("the CertRep holds no certificate for our key"))?;
    if chain.is_empty() {
        chain.push(ca.ca.clone());
    }
    Ok(IssuedCertificate { certificate, chain })
}

/// The transaction ID of a request: SHA-256 of the requester's public key, hex (RFC 8894
/// §3.2.1.1), so a retry of the same job is the same transaction.
pub fn transaction_id(requester: &CustodyIdentity) -> Result<String, BackendError> {
    transaction_id_of(&requester.public_key()?)
}

/// The transaction ID for the key `spki` (DER SubjectPublicKeyInfo) certifies.
fn transaction_id_of(spki: &[u8]) -> Result<String, BackendError> {
    let digest = HostCrypto.digest(Digest::Sha256, spki).map_err(rejected)?;
    Ok(digest.iter().map(|b| format!("{b:02X}")).collect())
}

/// The CertPoll content for a request with `subject` to the CA `ca`.
pub fn cert_poll_content(
    ca: &CaCertificates,
    subject: &certconn_x509::x509_cert::name::Name,
) -> Result<Vec<u8>, BackendError> {
    let ca_cert = Certificate::from_der(&ca.ca).map_err(rejected)?;
    IssuerAndSubject {
        issuer: ca_cert.tbs_certificate.subject,
        subject: subject.clone(),
    }
    .to_der()
    .map_err(rejected)
}

/// Base64 for a GET query: standard alphabet with `+`, `/` and `=` escaped.
fn url_base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len() * 2);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                match T[((n >> (18 - 6 * i)) & 63) as usize] {
                    b'+' => out.push_str("%2B"),
                    b'/' => out.push_str("%2F"),
                    c => out.push(c as char),
                }
            } else {
                out.push_str("%3D");
            }
        }
    }
    out
}

/// What `poll` needs to ask about the same request again.
#[derive(serde::Serialize, serde::Deserialize)]
struct PollToken {
    transaction_id: String,
    /// The requester's subject, DER hex.
    subject: String,
    /// A RenewalReq: the CertPoll is signed with the renewed certificate, as the request was.
    #[serde(default)]
    renewal: bool,
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

/// A SHA-256 pin as written in settings: 64 hex digits, colons allowed, any case.
pub fn normalize_fingerprint(text: &str) -> Result<String, String> {
    let f = text.replace(':', "").to_ascii_lowercase();
    if f.len() == 64 && unhex(&f).is_some() {
        Ok(f)
    } else {
        Err("must be 64 hex digits (colons allowed)".into())
    }
}

/// The whole enrolment of one job at one SCEP CA, shared by every SCEP-speaking backend: the
/// `scep` backend gives it a static challenge, `ndes` one fetched from mscep_admin.
pub struct Enrolment {
    pub client: ScepClient,
    /// SHA-256 of the CA certificate, normalized (see [`normalize_fingerprint`]).
    pub ca_fingerprint: Option<String>,
    pub poll_seconds: u32,
    pub include_ca_in_chain: bool,
}

impl Enrolment {
    /// GetCACert, with the pin checked. The pin may be any certificate of what GetCACert
    /// returns — the issuing CA, a root above it (the fingerprint an operator usually has, the
    /// one a CA prints at start-up), or the RA — so a CA that answers with its intermediate
    /// still matches a pinned root.
    fn ca(&self) -> Result<CaCertificates, BackendError> {
        let ca = self.client.ca_certificates()?;
        match &self.ca_fingerprint {
            Some(want) => {
                let mut seen = Vec::new();
                let mut matched = None;
                for der in &ca.all {
                    let got = hex(&HostCrypto.digest(Digest::Sha256, der).map_err(rejected)?);
                    let subject = Certificate::from_der(der)
                        .map(|c| certconn_x509::dn::format(&c.tbs_certificate.subject))
                        .unwrap_or_else(|_| "an unreadable certificate".into());
                    if &got == want {
                        matched = Some(subject);
                        break;
                    }
                    seen.push(format!("{subject}: {got}"));
                }
                match matched {
                    Some(subject) => crate::log::info(&format!(
                        "the pinned certificate is {subject:?}, among the {} GetCACert returned",
                        ca.all.len()
                    )),
                    None => {
                        return Err(rejected(format!(
                            "no certificate GetCACert returned has the pinned SHA-256 {want} (it returned {}): refusing to enrol",
                            seen.join("; ")
                        )))
                    }
                }
            }
            None => crate::log::warn(
                "ca_fingerprint_sha256 is not set: trusting the CA certificate GetCACert returned",
            ),
        }
        Ok(ca)
    }

    /// PKCSReq for the job's device key, or, when the host bound the certificate a renewal
    /// replaces ([`CURRENT_HANDLE`]) and the CA advertises `Renewal`, a RenewalReq signed by that
    /// certificate (RFC 8894 §3.3.1.2) for the new key. `challenge` is asked for last, just
    /// before the request is signed, so a one-time challenge is as fresh as it can be; a
    /// renewal carries it too when there is one (some CAs check it on every request).
    pub fn issue(
        &self,
        request: &crate::IssueRequest,
        challenge: impl FnOnce() -> Result<Option<String>, BackendError>,
    ) -> Result<IssuedCertificate, BackendError> {
        let csr =
            CertReq::from_der(&request.csr).map_err(|e| rejected(format!("the job's CSR: {e}")))?;
        let subject = match &request.subject {
            Some(der) => Name::from_der(der).map_err(|e| rejected(format!("subject: {e}")))?,
            None => csr.info.subject.clone(),
        };
        let ca = self.ca()?;
        let caps = self.client.capabilities()?;
        let device = CustodyIdentity::self_signed(REQUEST_HANDLE, &subject)?;
        let certified = device.public_key()?;
        let txid = transaction_id_of(&certified)?;
        let renewing = self.renewing(&caps)?;
        let challenge = challenge()?;
        let csr = csr_with_challenge(csr, &subject, challenge.as_deref())?;
        let (requester, message_type) = match &renewing {
            Some(current) => (current, MessageType::RenewalReq),
            None => (&device, MessageType::PkcsReq),
        };
        crate::log::info(&format!(
            "SCEP {} for job {} (transaction {txid})",
            if renewing.is_some() {
                "RenewalReq"
            } else {
                "PKCSReq"
            },
            request.job_id
        ));
        let reply =
            self.client
                .transact(&caps, &ca, requester, &certified, message_type, &txid, &csr)?;
        let subject_hex = hex(&subject.to_der().map_err(rejected)?);
        self.finish(
            reply,
            &ca,
            PollToken {
                transaction_id: txid,
                subject: subject_hex,
                renewal: renewing.is_some(),
            },
        )
    }

    /// The certificate this job renews, when the host bound one and the CA can take a
    /// RenewalReq; without `Renewal` in its capabilities, the job enrols with a PKCSReq.
    fn renewing(&self, caps: &Capabilities) -> Result<Option<CustodyIdentity>, BackendError> {
        let current = CustodyIdentity::current()?;
        if current.is_some() && !caps.renewal() {
            crate::log::info(
                "the CA does not advertise Renewal in GetCACaps: the renewal enrols with a PKCSReq",
            );
            return Ok(None);
        }
        Ok(current)
    }

    /// CertPoll for a request that was answered PENDING, signed as the request was.
    pub fn poll(&self, poll_token: &str) -> Result<IssuedCertificate, BackendError> {
        let token: PollToken =
            serde_json::from_str(poll_token).map_err(|e| rejected(format!("poll token: {e}")))?;
        let subject = unhex(&token.subject)
            .and_then(|d| Name::from_der(&d).ok())
            .ok_or_else(|| rejected("poll token: bad subject"))?;
        let ca = self.ca()?;
        let caps = self.client.capabilities()?;
        let device = CustodyIdentity::self_signed(REQUEST_HANDLE, &subject)?;
        let certified = device.public_key()?;
        let current = if token.renewal {
            Some(CustodyIdentity::current()?.ok_or_else(|| {
                rejected("the renewal is pending but the renewed certificate's key is no longer bound (custody handle `current`)")
            })?)
        } else {
            None
        };
        let content = cert_poll_content(&ca, &subject)?;
        let reply = self.client.transact(
            &caps,
            &ca,
            current.as_ref().unwrap_or(&device),
            &certified,
            MessageType::CertPoll,
            &token.transaction_id,
            &content,
        )?;
        self.finish(reply, &ca, token)
    }

    fn finish(
        &self,
        reply: Reply,
        ca: &CaCertificates,
        token: PollToken,
    ) -> Result<IssuedCertificate, BackendError> {
        match reply {
            Reply::Issued(mut issued) => {
                if !self.include_ca_in_chain {
                    issued.chain.retain(|c| *c != ca.ca);
                }
                Ok(issued)
            }
            Reply::Pending => Err(BackendError::Pending(crate::Pending {
                message: format!(
                    "the SCEP CA answered PENDING (transaction {})",
                    token.transaction_id
                ),
                poll_token: serde_json::to_string(&token).map_err(rejected)?,
                retry_after_seconds: self.poll_seconds,
            })),
        }
    }
}

/// challengePassword (PKCS#9).
const CHALLENGE_PASSWORD: certconn_x509::der::oid::ObjectIdentifier =
    certconn_x509::der::oid::ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.7");

/// The host's CSR with the challenge password added, re-signed with the device key.
fn csr_with_challenge(
    mut req: CertReq,
    subject: &Name,
    challenge: Option<&str>,
) -> Result<Vec<u8>, BackendError> {
    use certconn_x509::der::asn1::{Any, SetOfVec, Utf8StringRef};
    use certconn_x509::x509_cert::attr::Attribute;
    req.info.subject = subject.clone();
    if let Some(c) = challenge {
        let value = Utf8StringRef::new(c)
            .and_then(|s| Any::encode_from(&s))
            .map_err(|e| rejected(format!("challenge: {e}")))?;
        let attr = Attribute {
            oid: CHALLENGE_PASSWORD,
            values: SetOfVec::try_from(vec![value])
                .map_err(|e| rejected(format!("challenge: {e}")))?,
        };
        req.info
            .attributes
            .insert(attr)
            .map_err(|e| rejected(format!("challenge: {e}")))?;
    }
    let tbs = req
        .info
        .to_der()
        .map_err(|e| rejected(format!("CSR: {e}")))?;
    let scheme = SignatureScheme::RsaPkcs1Sha256;
    let signature = custody::sign(REQUEST_HANDLE, scheme.into(), &tbs)?;
    certconn_x509::signed::assemble(&tbs, &scheme.algorithm_identifier(), &signature)
        .map_err(|e| rejected(format!("CSR: {e}")))
}
