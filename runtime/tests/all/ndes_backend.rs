//! The `ndes` backend against an NDES stand-in written here: a CA with a signing RA and an
//! encryption RA (told apart by key usage), DES3-only GetCACaps, the mscep_admin challenge page
//! as NDES serves it (the real page, UTF-16LE without BOM) behind Basic authentication, CertRep
//! without certificates, and PENDING on request.

use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use certconn::crypto::AlgorithmPolicy;
use certconn::custody::{KeyAlgorithm, PrivateKey};
use certconn::sources::scep::adapter::{CustodyIdentity, HostCrypto};
use certconn_scep::{
    certs, envelope, message, Cipher, Crypto, KeyTransport, MessageType, Outgoing, PkiStatus,
};
use certconn_x509::{extensions, CertificateTemplate, KeyUsageName};
use common::*;
use der::{Decode, Encode};
use serde_json::json;
use x509_cert::name::Name;
use x509_cert::request::CertReq;

const USER: &str = "CORP\\svc-ndes";
const PASSWORD: &str = "Ndes-Pa55word!";
/// The challenge in the real mscep_admin page (fixture).
const PAGE_CHALLENGE: &str = "8CE317021F690069";

const MODE_CHALLENGE: u8 = 0;
const MODE_CACHE_FULL: u8 = 1;
const MODE_NO_PERMISSION: u8 = 2;

struct Pki {
    ca_key: PrivateKey,
    ca: Vec<u8>,
    sign_key: PrivateKey,
    sign_ra: Vec<u8>,
    enc_key: PrivateKey,
    enc_ra: Vec<u8>,
}

fn issue_cert(
    subject: &Name,
    spki_der: &[u8],
    usages: &[KeyUsageName],
    ca_key: &PrivateKey,
    ca: &[u8],
) -> Vec<u8> {
    let ca = x509_cert::Certificate::from_der(ca).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let t = CertificateTemplate {
        serial: certconn::crypto::provider::random_vec(12).unwrap(),
        issuer: ca.tbs_certificate.subject.clone(),
        subject: subject.clone(),
        not_before: now - 60,
        not_after: now + 86_400 * 30,
        public_key: spki::SubjectPublicKeyInfoOwned::from_der(spki_der).unwrap(),
        extensions: vec![extensions::key_usage(usages, subject).unwrap()],
    };
    let scheme = ca_key.kind().default_signature_scheme();
    t.sign(scheme, |tbs| ca_key.sign(scheme, tbs))
        .map_err(|_| "sign")
        .unwrap()
}

impl Pki {
    fn new() -> Self {
        let ca_key = PrivateKey::generate(KeyAlgorithm::Rsa2048).unwrap();
        let ca = certconn::pki::ca::self_signed(
            &ca_key,
            &Name::from_str("CN=Example Enterprise CA,DC=corp").unwrap(),
            30,
        )
        .unwrap();
        let sign_key = PrivateKey::generate(KeyAlgorithm::Rsa2048).unwrap();
        let enc_key = PrivateKey::generate(KeyAlgorithm::Rsa2048).unwrap();
        let ra = |key: &PrivateKey, cn: &str, ku: &[KeyUsageName]| {
            issue_cert(
                &Name::from_str(cn).unwrap(),
                key.public_key_der(),
                ku,
                &ca_key,
                &ca,
            )
        };
        let sign_ra = ra(
            &sign_key,
            "CN=NDES-MSCEP-RA sign",
            &[KeyUsageName::DigitalSignature],
        );
        let enc_ra = ra(
            &enc_key,
            "CN=NDES-MSCEP-RA enc",
            &[KeyUsageName::KeyEncipherment],
        );
        Self {
            ca_key,
            ca,
            sign_key,
            sign_ra,
            enc_key,
            enc_ra,
        }
    }
}

/// What the stand-in saw, for the assertions.
#[derive(Default)]
struct Seen {
    ciphers: Vec<Cipher>,
    challenges: Vec<String>,
    pending: Vec<String>,
    /// The CSR of each request answered "pending", by transaction id, for its CertPoll.
    held: std::collections::HashMap<String, Vec<u8>>,
    cert_polls: usize,
}

struct Ndes {
    port: u16,
    mode: Arc<AtomicU8>,
    pend_first: Arc<AtomicU8>,
    seen: Arc<Mutex<Seen>>,
}

fn respond(stream: &mut std::net::TcpStream, status: &str, content_type: &str, body: &[u8]) {
    let head = format!("HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
}

impl Ndes {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let pki = Arc::new(Pki::new());
        let mode = Arc::new(AtomicU8::new(MODE_CHALLENGE));
        let pend_first = Arc::new(AtomicU8::new(0));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (m, p, s) = (mode.clone(), pend_first.clone(), seen.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (pki, m, p, s) = (pki.clone(), m.clone(), p.clone(), s.clone());
                std::thread::spawn(move || serve(stream, &pki, &m, &p, &s));
            }
        });
        Ndes {
            port,
            mode,
            pend_first,
            seen,
        }
    }
}

fn serve(
    mut stream: std::net::TcpStream,
    pki: &Pki,
    mode: &AtomicU8,
    pend_first: &AtomicU8,
    seen: &Mutex<Seen>,
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut auth = None;
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).unwrap();
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').unwrap_or((h, ""));
        match k.to_ascii_lowercase().as_str() {
            "authorization" => auth = Some(v.trim().to_string()),
            "content-length" => len = v.trim().parse().unwrap_or(0),
            _ => {}
        }
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body).unwrap();
    let fixture =
        |name: &str| std::fs::read(repo_root().join("runtime/tests/data/ndes").join(name)).unwrap();

    if target.starts_with("/certsrv/mscep_admin") {
        let want = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
        );
        if auth.as_deref() != Some(want.as_str()) {
            return respond(
                &mut stream,
                "401 Unauthorized",
                "text/html",
                b"401 - Unauthorized",
            );
        }
        // NDES: UTF-16LE, no BOM, no charset.
        let page = match mode.load(Ordering::SeqCst) {
            MODE_CACHE_FULL => fixture("mscep_admin_cache_full.utf16le.html"),
            MODE_NO_PERMISSION => fixture("mscep_admin_insufficient_permissions.utf16le.html"),
            _ => fixture("mscep_admin_password.utf16le.html"),
        };
        return respond(&mut stream, "200 OK", "text/html", &page);
    }
    if target.contains("operation=GetCACaps") {
        return respond(
            &mut stream,
            "200 OK",
            "text/plain",
            b"POSTPKIOperation\r\nRenewal\r\nSHA-512\r\nSHA-256\r\nSHA-1\r\nDES3\r\n",
        );
    }
    if target.contains("operation=GetCACert") {
        let bag =
            certs::certs_only(&[pki.ca.clone(), pki.sign_ra.clone(), pki.enc_ra.clone()]).unwrap();
        return respond(&mut stream, "200 OK", "application/x-x509-ca-ra-cert", &bag);
    }
    if target.contains("operation=PKIOperation") {
        let crypto = HostCrypto {
            policy: AlgorithmPolicy::default(),
        };
        let msg = match message::verify(&crypto, &body, &[]) {
            Ok(m) => m,
            Err(e) => {
                return respond(
                    &mut stream,
                    "400 Bad Request",
                    "text/plain",
                    e.to_string().as_bytes(),
                )
            }
        };
        let enc = CustodyIdentity {
            key: &pki.enc_key,
            certificate: &pki.enc_ra,
        };
        let (content, opened) = envelope::open(&crypto, &enc, msg.content.as_deref().unwrap())
            .expect("encrypted to the encryption RA");
        seen.lock().unwrap().ciphers.push(opened.cipher);
        let csr_der = match msg.message_type {
            MessageType::PkcsReq => {
                let csr = CertReq::from_der(&content).unwrap();
                let challenge = csr
                    .info
                    .attributes
                    .iter()
                    .find(|a| a.oid == certconn::pki::csr::CHALLENGE_PASSWORD)
                    .and_then(|a| {
                        a.values
                            .iter()
                            .next()
                            .map(|v| String::from_utf8_lossy(v.value()).to_string())
                    })
                    .unwrap_or_default();
                seen.lock().unwrap().challenges.push(challenge.clone());
                assert_eq!(
                    challenge, PAGE_CHALLENGE,
                    "the challenge from mscep_admin is in the CSR"
                );
                if pend_first.load(Ordering::SeqCst) == 1 {
                    let mut seen = seen.lock().unwrap();
                    seen.pending.push(msg.transaction_id.clone());
                    seen.held.insert(msg.transaction_id.clone(), content);
                    drop(seen);
                    return respond(
                        &mut stream,
                        "200 OK",
                        "application/x-pki-message",
                        &cert_rep(&crypto, pki, &msg, PkiStatus::Pending, None),
                    );
                }
                content
            }
            MessageType::CertPoll => {
                seen.lock().unwrap().cert_polls += 1;
                let held = seen.lock().unwrap().held.get(&msg.transaction_id).cloned();
                held.expect("a pending request")
            }
            other => panic!("unexpected {other:?}"),
        };
        let csr = CertReq::from_der(&csr_der).unwrap();
        let cert = issue_cert(
            &csr.info.subject,
            &csr.info.public_key.to_der().unwrap(),
            &[
                KeyUsageName::DigitalSignature,
                KeyUsageName::KeyEncipherment,
            ],
            &pki.ca_key,
            &pki.ca,
        );
        let bag = certs::certs_only(&[cert]).unwrap();
        // NDES answers in the cipher the client used, to the requester's self-signed cert.
        let sealed = envelope::seal(
            &crypto,
            &bag,
            &msg.signer,
            opened.cipher,
            KeyTransport::Pkcs1,
        )
        .unwrap();
        return respond(
            &mut stream,
            "200 OK",
            "application/x-pki-message",
            &cert_rep(&crypto, pki, &msg, PkiStatus::Success, Some(&sealed)),
        );
    }
    respond(&mut stream, "404 Not Found", "text/plain", b"not found")
}

/// A CertRep as NDES signs it: by the signing RA, with no certificates in the message.
fn cert_rep(
    crypto: &HostCrypto,
    pki: &Pki,
    msg: &certconn_scep::SignedMessage,
    status: PkiStatus,
    content: Option<&[u8]>,
) -> Vec<u8> {
    let nonce = crypto.random(16).unwrap();
    let signer = CustodyIdentity {
        key: &pki.sign_key,
        certificate: &pki.sign_ra,
    };
    message::sign(
        crypto,
        &signer,
        certconn_scep::Digest::Sha256,
        &Outgoing {
            message_type: MessageType::CertRep,
            transaction_id: &msg.transaction_id,
            sender_nonce: &nonce,
            recipient_nonce: msg.sender_nonce.as_deref(),
            pki_status: Some(status),
            fail_info: None,
            content,
            extra_certificates: &[],
            send_certificates: false,
        },
    )
    .unwrap()
}

fn start_daemon(dir: &std::path::Path, ndes: &Ndes, password: &str) -> Daemon {
    let secret = dir.join("ndes-password");
    write_private(&secret, password);
    let extra = format!(
        r#"
[backends.ndes]
plugin = "ndes"
http = {{ allow = ["127.0.0.1:{port}"] }}
settings_files = {{ password = "{secret}" }}
[backends.ndes.settings]
url = "http://127.0.0.1:{port}"
username = '{USER}'
poll_seconds = 1
[profiles.wifi]
backend = "ndes"
key_algorithm = "rsa-2048"
"#,
        port = ndes.port,
        secret = secret.display()
    );
    start_in(dir, |data| config_text(data, &plugins(), &extra))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndes_backend_enrols_with_a_one_time_challenge_des3_and_an_unsigned_cert_rep() {
    let ndes = Ndes::start();
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_daemon(dir.path(), &ndes, PASSWORD);
    let api = daemon.client();
    let id = submit(
        &api,
        "wifi",
        "ndes-1",
        json!({ "subject": "CN=laptop-17,O=Example" }),
    )
    .await;
    let job = wait_job(&api, &id, Duration::from_secs(30)).await;
    assert_eq!(
        job["state"],
        "succeeded",
        "{job}\n{}",
        std::fs::read_to_string(&daemon.log).unwrap_or_default()
    );
    let answer = api
        .call(hyper::Method::GET, &format!("/v1/jobs/{id}/result"), None)
        .await
        .unwrap();
    let result = &answer["result"];
    let cert_pem = result["certificate_pem"].as_str().unwrap();
    let path = dir.path().join("cert.pem");
    std::fs::write(&path, cert_pem).unwrap();
    let text = run_ok(
        std::process::Command::new("openssl")
            .args(["x509", "-noout", "-subject", "-issuer", "-in"])
            .arg(&path),
    );
    assert!(
        text.contains("laptop-17") && text.contains("Example Enterprise CA"),
        "{text}"
    );
    let seen = ndes.seen.lock().unwrap();
    assert_eq!(
        seen.ciphers,
        vec![Cipher::DesEde3Cbc],
        "DES3: all NDES offers"
    );
    assert_eq!(seen.challenges, vec![PAGE_CHALLENGE.to_string()]);
    let chain = result["chain_pem"].as_str().unwrap_or_default();
    assert!(
        !chain.is_empty(),
        "the CA from GetCACert completes the chain"
    );
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    assert!(
        !log.contains(PASSWORD) && !log.contains(PAGE_CHALLENGE),
        "no secret in the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndes_pending_is_polled_until_the_certificate_arrives() {
    let ndes = Ndes::start();
    ndes.pend_first.store(1, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_daemon(dir.path(), &ndes, PASSWORD);
    let api = daemon.client();
    let id = submit(
        &api,
        "wifi",
        "ndes-pending",
        json!({ "subject": "CN=pending-laptop" }),
    )
    .await;
    let job = wait_job(&api, &id, Duration::from_secs(30)).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let seen = ndes.seen.lock().unwrap();
    assert_eq!(seen.pending.len(), 1);
    assert!(seen.cert_polls >= 1, "CertPoll collected it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndes_page_errors_are_told_apart() {
    let ndes = Ndes::start();
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_daemon(dir.path(), &ndes, PASSWORD);
    let api = daemon.client();

    // Insufficient permission: final, with the reason.
    ndes.mode.store(MODE_NO_PERMISSION, Ordering::SeqCst);
    let id = submit(&api, "wifi", "ndes-perm", json!({})).await;
    let job = wait_job(&api, &id, Duration::from_secs(30)).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert!(
        job["last_error"]
            .as_str()
            .unwrap()
            .contains("does not have sufficient permission"),
        "{job}"
    );

    // Cache full: transient — retried, and it goes through once NDES has room again.
    ndes.mode.store(MODE_CACHE_FULL, Ordering::SeqCst);
    let id = submit(&api, "wifi", "ndes-cache", json!({})).await;
    let mut saw_cache_full = false;
    for _ in 0..200 {
        let job = api
            .call(hyper::Method::GET, &format!("/v1/jobs/{id}"), None)
            .await
            .unwrap();
        if job["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("cache is full")
        {
            assert_ne!(job["state"], "failed", "cache full is not final: {job}");
            saw_cache_full = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(saw_cache_full);
    ndes.mode.store(MODE_CHALLENGE, Ordering::SeqCst);
    let job = wait_job(&api, &id, Duration::from_secs(30)).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    drop(daemon);

    // Wrong password: HTTP 401, final, names the account.
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_daemon(dir.path(), &ndes, "wrong-password");
    let api = daemon.client();
    let id = submit(&api, "wifi", "ndes-401", json!({})).await;
    let job = wait_job(&api, &id, Duration::from_secs(30)).await;
    assert_eq!(job["state"], "failed", "{job}");
    let e = job["last_error"].as_str().unwrap();
    assert!(
        e.contains("refused the credentials") && e.contains("svc-ndes"),
        "{e}"
    );
}

/// The stand-in behind `support/ntlm_front.py`: mscep_admin under Windows authentication,
/// checked by pyspnego's NTLM acceptor (not certconn's code).
struct NtlmFront {
    child: std::process::Child,
    port: u16,
    events: std::path::PathBuf,
}

impl NtlmFront {
    fn start(dir: &std::path::Path, upstream: u16) -> Self {
        Self::start_with(dir, upstream, None)
    }

    /// With `tls` = (certificate, key) PEM files, the front serves https.
    fn start_with(
        dir: &std::path::Path,
        upstream: u16,
        tls: Option<(&std::path::Path, &std::path::Path)>,
    ) -> Self {
        let users = dir.join("ntlm-users");
        write_private(&users, &format!("CORP:svc-ndes:{PASSWORD}\n"));
        let events = dir.join("ntlm-events");
        let mut child = std::process::Command::new("python3")
            .arg(repo_root().join("runtime/tests/support/ntlm_front.py"))
            .arg(format!("http://127.0.0.1:{upstream}"))
            .arg(repo_root().join("runtime/tests/data/ndes/mscep_admin_password.utf16le.html"))
            .arg(&events)
            .args(tls.iter().flat_map(|(c, k)| [c.as_os_str(), k.as_os_str()]))
            .env("NTLM_USER_FILE", &users)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 runs support/ntlm_front.py (scripts/install-deps --test installs pyspnego)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().unwrap_or_else(|_| {
            panic!("ntlm_front.py did not print its port (is pyspnego installed?): {line:?}")
        });
        NtlmFront {
            child,
            port,
            events,
        }
    }

    fn events(&self) -> String {
        std::fs::read_to_string(&self.events).unwrap_or_default()
    }
}

impl Drop for NtlmFront {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An ndes backend instance `name` (profile `name` too) that reaches `front` with host-held
/// NTLM credentials; over https when `anchors` names its trust anchors file.
fn ntlm_backend(
    name: &str,
    front: &NtlmFront,
    secret: &std::path::Path,
    anchors: Option<&std::path::Path>,
) -> String {
    let (scheme, trust) = match anchors {
        Some(a) => ("https", format!("trust_anchors = \"{}\"", a.display())),
        None => ("http", String::new()),
    };
    format!(
        r#"
[backends.{name}]
plugin = "ndes"
[backends.{name}.http]
allow = ["127.0.0.1:{port}"]
{trust}
[[backends.{name}.http.credentials]]
host = "127.0.0.1:{port}"
scheme = "ntlm"
username = '{USER}'
password_file = "{secret}"
[backends.{name}.settings]
url = "{scheme}://127.0.0.1:{port}"
auth = "ntlm"
username = '{USER}'
poll_seconds = 1
[profiles.{name}]
backend = "{name}"
key_algorithm = "rsa-2048"
"#,
        port = front.port,
        secret = secret.display()
    )
}

fn start_ntlm_daemon(dir: &std::path::Path, front: &NtlmFront, password: &str) -> Daemon {
    let secret = dir.join("ndes-ntlm-password");
    write_private(&secret, password);
    let extra = ntlm_backend("wifi", front, &secret, None);
    start_in(dir, |data| config_text(data, &plugins(), &extra))
}

/// A CA and a server certificate for 127.0.0.1 it issued, made by the openssl CLI:
/// (CA certificate, server certificate, server key).
fn server_pki(
    dir: &std::path::Path,
    name: &str,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    openssl_ca_and_leaf(
        dir,
        name,
        "basicConstraints=critical,CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndes_over_https_trusts_only_the_backends_anchors() {
    let ndes = Ndes::start();
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = server_pki(dir.path(), "ndes-web");
    let (stranger, _, _) = server_pki(dir.path(), "some-other");
    let front = NtlmFront::start_with(dir.path(), ndes.port, Some((&cert, &key)));
    let secret = dir.path().join("ndes-ntlm-password");
    write_private(&secret, PASSWORD);
    let extra = ntlm_backend("trusting", &front, &secret, Some(&ca))
        + &ntlm_backend("doubting", &front, &secret, Some(&stranger));
    let daemon = start_in(dir.path(), |data| config_text(data, &plugins(), &extra));
    let api = daemon.client();
    let id = submit(
        &api,
        "trusting",
        "https-1",
        json!({ "subject": "CN=tls-laptop" }),
    )
    .await;
    let job = wait_job(&api, &id, Duration::from_secs(30)).await;
    assert_eq!(
        job["state"],
        "succeeded",
        "{job}\nfront: {}",
        front.events()
    );
    assert!(front.events().contains("authenticated CORP\\svc-ndes"));

    // The same server, but this backend trusts another CA: no connection gets past TLS.
    let before = front.events();
    let id = submit(&api, "doubting", "https-2", json!({})).await;
    let job = wait_job(&api, &id, Duration::from_secs(60)).await;
    // Not retried: an untrusted certificate is for the administrator to fix. The job says why
    // and where to fix it.
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["attempts"], 1, "{job}");
    let e = job["last_error"].as_str().unwrap_or_default();
    assert!(
        e.contains("TLS certificate of 127.0.0.1 not accepted")
            && e.contains("UnknownIssuer")
            && e.contains("http.trust_anchors"),
        "{e}"
    );
    assert_eq!(
        front.events(),
        before,
        "nothing reached the server's application"
    );
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    assert!(log.contains("TLS handshake failed"), "the host logs why");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndes_behind_windows_authentication_uses_the_hosts_ntlm_credentials() {
    let ndes = Ndes::start();
    let dir = tempfile::tempdir().unwrap();
    let front = NtlmFront::start(dir.path(), ndes.port);
    let daemon = start_ntlm_daemon(dir.path(), &front, PASSWORD);
    let api = daemon.client();
    for n in 0..2 {
        let id = submit(
            &api,
            "wifi",
            &format!("ntlm-{n}"),
            json!({ "subject": format!("CN=ntlm-laptop-{n}") }),
        )
        .await;
        let job = wait_job(&api, &id, Duration::from_secs(30)).await;
        assert_eq!(
            job["state"],
            "succeeded",
            "{job}\nfront: {}\n{}",
            front.events(),
            std::fs::read_to_string(&daemon.log).unwrap_or_default()
        );
    }
    let events = front.events();
    // pyspnego verified the NTLMv2 response and the MIC for the granted account, once per
    // enrolment: a fresh challenge each time.
    assert_eq!(
        events.matches("authenticated CORP\\svc-ndes").count(),
        2,
        "{events}"
    );
    assert!(!events.contains("refused"), "{events}");
    assert_eq!(
        ndes.seen.lock().unwrap().challenges,
        vec![PAGE_CHALLENGE.to_string(); 2],
        "the challenge from the NTLM-protected page is in each CSR"
    );
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    assert!(!log.contains(PASSWORD), "the password is not in the log");
    drop(daemon);

    // A wrong password: pyspnego refuses the AUTHENTICATE message; the job fails for good with
    // a message that says where to look.
    let dir2 = tempfile::tempdir().unwrap();
    let daemon = start_ntlm_daemon(dir2.path(), &front, "not-the-password");
    let api = daemon.client();
    let id = submit(&api, "wifi", "ntlm-wrong", json!({})).await;
    let job = wait_job(&api, &id, Duration::from_secs(30)).await;
    assert_eq!(job["state"], "failed", "{job}");
    let e = job["last_error"].as_str().unwrap();
    assert!(
        e.contains("refused Windows authentication") && e.contains("http.credentials"),
        "{e}"
    );
    assert!(front.events().contains("refused"), "{}", front.events());
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    assert!(
        log.contains("the server refused the granted credentials"),
        "the host logs the refusal"
    );
    assert!(!log.contains("not-the-password"));
}
