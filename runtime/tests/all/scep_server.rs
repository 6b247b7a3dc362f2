//! certconn's SCEP server against a real SCEP client: micromdm's `scepclient` (Debian package
//! `scep`) enrols with a static challenge and with one-time challenges; the `openssl` CLI
//! verifies what it got. Bad messages get an HTTP 400 with the reason and issue nothing.

use crate::common;

use std::path::Path;
use std::process::Command;

use common::*;

const STATIC_CHALLENGE: &str = "static-Secret-42";

fn start(dir: &Path) -> Daemon {
    start_waiting(dir, 5)
}

/// [`start`], a PKIOperation waiting up to `wait_seconds` for its job before PENDING.
fn start_waiting(dir: &Path, wait_seconds: u32) -> Daemon {
    let challenge = dir.join("challenge");
    write_private(&challenge, &format!("{STATIC_CHALLENGE}\n"));
    // SCEP clients (micromdm's among them) encrypt to every certificate GetCACert returns, so a
    // SCEP CA is RSA, as NDES CAs are.
    // micromdm's scepclient seals its requests in single DES whatever GetCACaps offers: the
    // administrator allows it explicitly, as a site with such clients would.
    let extra = format!(
        "{}\n[crypto]\nallow_single_des = true\n",
        scep_section(&challenge).replace(
            "wait_seconds = 5",
            &format!("wait_seconds = {wait_seconds}")
        )
    );
    start_in(dir, |data| {
        config_text(data, &plugins(), &extra)
            .replace("algorithm = \"ec-p256\"", "algorithm = \"rsa-2048\"")
    })
}

fn openssl(args: &[&str]) -> String {
    run_ok(Command::new("openssl").args(args))
}

/// `cert` verifies, with openssl, against the chain GetCACert publishes.
fn assert_issued_by_the_scep_ca(daemon: &Daemon, dir: &Path, cert: &Path) {
    let bundle = scep_ca_bundle(daemon, dir);
    let verified = openssl(&[
        "verify",
        "-CAfile",
        bundle.to_str().unwrap(),
        cert.to_str().unwrap(),
    ]);
    assert!(verified.contains(": OK"), "{verified}");
}

#[test]
fn scepclient_enrols_with_the_static_challenge_and_openssl_verifies_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(dir.path());

    let (status, caps) = http_raw(daemon.port, "GET", "/scep?operation=GetCACaps", b"");
    assert_eq!(status, 200);
    let caps = String::from_utf8(caps).unwrap();
    // Spelled as RFC 8894 spells them: some clients compare keywords exactly.
    for k in [
        "POSTPKIOperation",
        "AES",
        "SHA-256",
        "SHA-384",
        "Renewal",
        "SCEPStandard",
    ] {
        assert!(caps.lines().any(|l| l == k), "GetCACaps lacks {k}: {caps}");
    }

    let (out, cert) = scepclient(&daemon, dir.path(), "device-one", STATIC_CHALLENGE);
    assert!(
        out.status.success(),
        "scepclient failed:\n{}\n{}\ndaemon log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&daemon.log).unwrap_or_default()
    );
    assert_issued_by_the_scep_ca(&daemon, dir.path(), &cert);
    let text = openssl(&[
        "x509",
        "-in",
        cert.to_str().unwrap(),
        "-noout",
        "-subject",
        "-issuer",
    ]);
    assert!(
        text.contains("CN = device-one") || text.contains("CN=device-one"),
        "{text}"
    );
    assert!(text.contains("certconn Test CA"), "{text}");
    // The certificate is for the key scepclient holds.
    let key = dir.path().join("device-one/device-one.key");
    let cert_pub = openssl(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-pubkey"]);
    let key_pub = openssl(&["pkey", "-in", key.to_str().unwrap(), "-pubout"]);
    assert_eq!(cert_pub, key_pub);
    assert_eq!(jobs_total(&daemon), 1);

    // A wrong challenge is refused and issues nothing.
    let (out, cert) = scepclient(&daemon, dir.path(), "device-two", "wrong-challenge");
    assert!(
        !out.status.success(),
        "a wrong challenge must fail:\n{}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&daemon.log).unwrap_or_default()
    );
    assert!(!cert.exists());
    assert_eq!(
        jobs_total(&daemon),
        1,
        "nothing is journaled for a refused request"
    );
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    assert!(
        log.contains("challenge password is not valid"),
        "the log says why"
    );
    assert!(
        !log.contains(STATIC_CHALLENGE),
        "the static challenge is not logged"
    );
    assert!(
        !log.contains("wrong-challenge"),
        "a given challenge is not logged"
    );

    // The CA key signed two certificates: the RA's (the host's own, at first start) and the
    // device's (for the local-ca plugin's job); the signature trail holds both, in that order.
    let listed = ok(daemon.cli(&["audit", "list", "--json"]));
    let entries: Vec<serde_json::Value> = listed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(entries.len(), 2, "{listed}");
    assert_eq!(entries[0]["backend"], "host", "{listed}");
    assert!(
        entries[0]["signer"]
            .as_str()
            .unwrap()
            .starts_with("certconn "),
        "{listed}"
    );
    assert!(
        entries[1]["subject"]
            .as_str()
            .unwrap()
            .contains("CN=device-one"),
        "{listed}"
    );
    assert!(
        ok(daemon.cli(&["audit", "verify"])).contains("2 entries, chain intact"),
        "{listed}"
    );
}

/// After PENDING, micromdm's scepclient polls by sending its PKCSReq again unchanged, same
/// senderNonce and all: that finds the job the first sending made (and only that job), and
/// the certificate comes once the backend takes it.
#[test]
fn scepclient_polls_through_pending_by_resending_its_request() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_waiting(dir.path(), 0);
    // Drained, the backend leaves the job queued: the first answer is PENDING.
    ok(daemon.cli(&["plugins", "drain", "local"]));
    let device = dir.path().join("device");
    std::fs::create_dir_all(&device).unwrap();
    let mut client = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "exec scepclient -server-url http://127.0.0.1:{}/scep -challenge {STATIC_CHALLENGE} \
             -cn polling -keySize 2048 -private-key polling.key -certificate polling.crt 2>&1",
            daemon.port
        ))
        .current_dir(&device)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("scepclient (Debian package scep) is installed by scripts/install-deps --test");
    let mut said = std::io::BufReader::new(client.stdout.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        assert_ne!(
            said.read_line(&mut line).unwrap(),
            0,
            "scepclient ended before PENDING:\n{seen}"
        );
        seen.push_str(&line);
        if line.contains("pkiStatus=PENDING") {
            break;
        }
    }
    ok(daemon.cli(&["plugins", "undrain", "local"]));
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut said, &mut rest).unwrap();
    let status = client.wait().unwrap();
    assert!(
        status.success(),
        "scepclient failed after PENDING:\n{seen}{rest}\ndaemon log:\n{}",
        std::fs::read_to_string(&daemon.log).unwrap_or_default()
    );
    assert_issued_by_the_scep_ca(&daemon, dir.path(), &device.join("polling.crt"));
    assert_eq!(
        jobs_total(&daemon),
        1,
        "the resent request made no second job"
    );
}

#[test]
fn one_time_challenges_work_once() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(dir.path());
    let challenge = ok(daemon.cli(&["scep", "challenge"])).trim().to_string();
    assert!(challenge.len() >= 20, "{challenge:?}");

    let (out, cert) = scepclient(&daemon, dir.path(), "one-time-a", &challenge);
    assert!(
        out.status.success(),
        "scepclient failed with a fresh one-time challenge:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(cert.exists());

    let (out, cert) = scepclient(&daemon, dir.path(), "one-time-b", &challenge);
    assert!(
        !out.status.success(),
        "a used one-time challenge must be refused"
    );
    assert!(!cert.exists());
    assert_eq!(jobs_total(&daemon), 1);
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    assert!(
        !log.contains(&challenge),
        "the one-time challenge is not logged"
    );
}

#[test]
fn bad_messages_get_a_clear_http_error_and_issue_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(dir.path());
    let cases: [(&str, &str, &[u8], &str); 5] = [
        (
            "POST",
            "/scep?operation=PKIOperation",
            b"\x30\x82\x01\x00garbage",
            "not a valid SCEP pkiMessage",
        ),
        ("POST", "/scep?operation=PKIOperation", b"", "empty"),
        (
            "GET",
            "/scep?operation=PKIOperation&message=%%%",
            b"",
            "not base64",
        ),
        (
            "GET",
            "/scep?operation=Frobnicate",
            b"",
            "unknown operation",
        ),
        ("GET", "/scep", b"", "missing the operation"),
    ];
    for (method, path, body, want) in cases {
        let (status, text) = http_raw(daemon.port, method, path, body);
        let text = String::from_utf8_lossy(&text);
        assert_eq!(status, 400, "{method} {path}: {text}");
        assert!(
            text.contains(want),
            "{method} {path}: {text:?} should say {want:?}"
        );
    }
    // A real request from another implementation, addressed to another CA: unsigned by a
    // client we know is fine, but the envelope is not for our RA.
    let foreign = std::fs::read(
        repo_root().join("runtime/tests/data/scep/micromdm/scep_testdata_PKCSReq.der"),
    )
    .unwrap();
    let (status, body) = http_raw(
        daemon.port,
        "POST",
        "/scep?operation=PKIOperation",
        &foreign,
    );
    assert_eq!(
        status,
        200,
        "a verifiable message gets a CertRep: {}",
        String::from_utf8_lossy(&body)
    );
    let rep = dir.path().join("rep.der");
    std::fs::write(&rep, body).unwrap();
    let dump = openssl(&["asn1parse", "-inform", "DER", "-in", rep.to_str().unwrap()]);
    // pkiStatus FAILURE (2) with failInfo badMessageCheck (1).
    let status_at = dump
        .find("2.16.840.1.113733.1.9.3")
        .expect("pkiStatus attribute");
    assert!(
        dump[status_at..]
            .lines()
            .nth(2)
            .unwrap_or("")
            .contains(":2"),
        "{dump}"
    );
    let fail_at = dump
        .find("2.16.840.1.113733.1.9.4")
        .expect("failInfo attribute");
    assert!(
        dump[fail_at..].lines().nth(2).unwrap_or("").contains(":1"),
        "{dump}"
    );
    // Replaying the same message (same senderNonce), which made no job, is refused as
    // badRequest.
    let (_, body) = http_raw(
        daemon.port,
        "POST",
        "/scep?operation=PKIOperation",
        &foreign,
    );
    std::fs::write(&rep, body).unwrap();
    let dump = openssl(&["asn1parse", "-inform", "DER", "-in", rep.to_str().unwrap()]);
    let fail_at = dump
        .find("2.16.840.1.113733.1.9.4")
        .expect("failInfo attribute");
    assert!(
        dump[fail_at..].lines().nth(2).unwrap_or("").contains(":2"),
        "replay: {dump}"
    );
    assert_eq!(jobs_total(&daemon), 0);
    // Every refusal is in the log with its reason and an event id an admin can search for
    // (the log line is written before the answer is sent).
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    let events = |id: &str| {
        log.lines()
            .filter(|l| l.contains(&format!("\"event_id\":{id}")))
            .count()
    };
    assert_eq!(events("4101"), 5, "one per refused HTTP request:\n{log}");
    assert!(
        log.contains("unknown operation") && log.contains("missing the operation"),
        "{log}"
    );
    assert_eq!(
        events("4201"),
        2,
        "the badMessageCheck and the replay:\n{log}"
    );
}

use certconn::crypto::AlgorithmPolicy;
use certconn::custody::{KeyAlgorithm, PrivateKey};
use certconn::sources::scep::adapter::{CustodyIdentity, HostCrypto};
use certconn_scep::{
    certs, envelope, message, CaCertificates, Cipher, Crypto, Digest, FailInfo, KeyTransport,
    MessageType, Outgoing, PkiStatus, SignedMessage,
};
use std::str::FromStr;

fn host_crypto() -> HostCrypto {
    HostCrypto {
        policy: AlgorithmPolicy::default(),
    }
}

fn ca_of(daemon: &Daemon) -> CaCertificates {
    let (_, bag) = http_raw(daemon.port, "GET", "/scep?operation=GetCACert", b"");
    CaCertificates::from_response(&bag).unwrap()
}

/// Sends one request built by certconn's own SCEP code (as a client would), by POST or by GET
/// with the message in URL-safe base64, and returns the verified CertRep.
fn send(
    daemon: &Daemon,
    signer: &CustodyIdentity,
    message_type: MessageType,
    csr: &[u8],
    cipher: Cipher,
    txid: &str,
    via_get: bool,
) -> SignedMessage {
    use base64::Engine;
    let crypto = host_crypto();
    let ca = ca_of(daemon);
    let sealed = envelope::seal(&crypto, csr, &ca.encryption, cipher, KeyTransport::Pkcs1).unwrap();
    let nonce = crypto.random(16).unwrap();
    let msg = message::sign(
        &crypto,
        signer,
        Digest::Sha256,
        &Outgoing {
            message_type,
            transaction_id: txid,
            sender_nonce: &nonce,
            recipient_nonce: None,
            pki_status: None,
            fail_info: None,
            content: Some(&sealed),
            extra_certificates: &[],
            send_certificates: true,
        },
    )
    .unwrap();
    let (status, body) = if via_get {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&msg);
        http_raw(
            daemon.port,
            "GET",
            &format!("/scep?operation=PKIOperation&message={b64}"),
            b"",
        )
    } else {
        http_raw(daemon.port, "POST", "/scep?operation=PKIOperation", &msg)
    };
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let rep = message::verify(&crypto, &body, &ca.all).unwrap();
    assert_eq!(rep.recipient_nonce.as_deref(), Some(&nonce[..]));
    rep
}

fn name(s: &str) -> x509_cert::name::Name {
    x509_cert::name::Name::from_str(s).unwrap()
}

/// A PKCSReq in 3DES sent by GET (URL-safe base64) is answered in 3DES with the certificate.
#[test]
fn des3_request_by_get_is_answered_in_des3() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(dir.path());
    let key = PrivateKey::generate(KeyAlgorithm::Rsa2048).unwrap();
    let subject = name("CN=get-des3-device");
    let csr = certconn::pki::csr::build_with_challenge(&key, &subject, &[], Some(STATIC_CHALLENGE))
        .unwrap();
    let me = certconn::pki::ca::ra_certificate(&key, &subject, None, 1).unwrap();
    let identity = CustodyIdentity {
        key: &key,
        certificate: &me,
    };
    let rep = send(
        &daemon,
        &identity,
        MessageType::PkcsReq,
        &csr,
        Cipher::DesEde3Cbc,
        "get-des3-1",
        true,
    );
    assert_eq!(
        rep.pki_status,
        Some(PkiStatus::Success),
        "{:?}",
        rep.fail_info
    );
    let (bag, opened) =
        envelope::open(&host_crypto(), &identity, rep.content.as_deref().unwrap()).unwrap();
    assert_eq!(
        opened.cipher,
        Cipher::DesEde3Cbc,
        "answered in the cipher the request used"
    );
    let issued = certs::parse_certs_only(&bag).unwrap();
    let leaf = <x509_cert::Certificate as der::Decode>::from_der(&issued[0]).unwrap();
    assert_eq!(
        der::Encode::to_der(&leaf.tbs_certificate.subject_public_key_info).unwrap(),
        key.public_key_der()
    );

    // The same transaction ID with another CSR is a replay: badRequest, nothing new journaled.
    let other = PrivateKey::generate(KeyAlgorithm::Rsa2048).unwrap();
    let other_csr =
        certconn::pki::csr::build_with_challenge(&other, &subject, &[], Some(STATIC_CHALLENGE))
            .unwrap();
    let other_me = certconn::pki::ca::ra_certificate(&other, &subject, None, 1).unwrap();
    let before = jobs_total(&daemon);
    let rep = send(
        &daemon,
        &CustodyIdentity {
            key: &other,
            certificate: &other_me,
        },
        MessageType::PkcsReq,
        &other_csr,
        Cipher::Aes128Cbc,
        "get-des3-1",
        false,
    );
    assert_eq!(
        (rep.pki_status, rep.fail_info),
        (Some(PkiStatus::Failure), Some(FailInfo::BadRequest))
    );
    assert_eq!(jobs_total(&daemon), before);
}

/// A RenewalReq signed by the certificate certconn issued (no challenge) gets a certificate for
/// the new key; one signed by a certificate certconn did not issue gets badCertId.
#[test]
fn renewal_is_signed_by_a_certificate_certconn_issued() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(dir.path());
    let (out, cert) = scepclient(&daemon, dir.path(), "renew-me", STATIC_CHALLENGE);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let old_cert = certconn::pki::pem::decode_all(&std::fs::read_to_string(&cert).unwrap())
        .unwrap()
        .remove(0)
        .1;
    let p8 = dir.path().join("old.p8");
    run_ok(
        Command::new("openssl")
            .args(["pkcs8", "-topk8", "-nocrypt", "-outform", "DER", "-in"])
            .arg(dir.path().join("renew-me/renew-me.key"))
            .arg("-out")
            .arg(&p8),
    );
    let old_key =
        PrivateKey::from_pkcs8(zeroize::Zeroizing::new(std::fs::read(&p8).unwrap())).unwrap();
    let new_key = PrivateKey::generate(KeyAlgorithm::Rsa2048).unwrap();
    let csr = certconn::pki::csr::build(&new_key, &name("CN=renew-me"), &[]).unwrap();

    let old = CustodyIdentity {
        key: &old_key,
        certificate: &old_cert,
    };
    let rep = send(
        &daemon,
        &old,
        MessageType::RenewalReq,
        &csr,
        Cipher::Aes128Cbc,
        "renewal-1",
        false,
    );
    assert_eq!(
        rep.pki_status,
        Some(PkiStatus::Success),
        "{:?}",
        rep.fail_info
    );
    let (bag, _) = envelope::open(&host_crypto(), &old, rep.content.as_deref().unwrap()).unwrap();
    let issued = certs::parse_certs_only(&bag).unwrap();
    let leaf = <x509_cert::Certificate as der::Decode>::from_der(&issued[0]).unwrap();
    assert_eq!(
        der::Encode::to_der(&leaf.tbs_certificate.subject_public_key_info).unwrap(),
        new_key.public_key_der()
    );

    // Signed by a certificate certconn never issued: refused, nothing journaled.
    let stranger_key = PrivateKey::generate(KeyAlgorithm::Rsa2048).unwrap();
    let stranger =
        certconn::pki::ca::ra_certificate(&stranger_key, &name("CN=renew-me"), None, 30).unwrap();
    let before = jobs_total(&daemon);
    let rep = send(
        &daemon,
        &CustodyIdentity {
            key: &stranger_key,
            certificate: &stranger,
        },
        MessageType::RenewalReq,
        &csr,
        Cipher::Aes128Cbc,
        "renewal-2",
        false,
    );
    assert_eq!(
        (rep.pki_status, rep.fail_info),
        (Some(PkiStatus::Failure), Some(FailInfo::BadCertId))
    );
    assert_eq!(jobs_total(&daemon), before);
}

/// Challenges that are neither static nor one-time go to the administrator's webhook, which sees
/// the transaction, the challenge and the CSR; a 2xx admits, anything else refuses.
#[test]
fn webhook_decides_unknown_challenges() {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hook_port = listener.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<serde_json::Value>::new()));
    let recorder = seen.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut len = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            let request: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let admit = request["challenge"]
                .as_str()
                .unwrap_or_default()
                .starts_with("hook-ok");
            recorder.lock().unwrap().push(request);
            let status = if admit {
                "204 No Content"
            } else {
                "403 Forbidden"
            };
            let _ = stream.write_all(
                format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            );
        }
    });

    let dir = tempfile::tempdir().unwrap();
    let challenge = dir.path().join("challenge");
    write_private(&challenge, STATIC_CHALLENGE);
    let extra = format!(
        "{}challenge_webhook = \"http://127.0.0.1:{hook_port}/scep-challenge\"\n\n[crypto]\nallow_single_des = true\n",
        scep_section(&challenge)
    );
    let daemon = start_in(dir.path(), |data| {
        config_text(data, &plugins(), &extra)
            .replace("algorithm = \"ec-p256\"", "algorithm = \"rsa-2048\"")
    });

    let (out, cert) = scepclient(&daemon, dir.path(), "hooked", "hook-ok-7");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(cert.exists());
    let (out, cert) = scepclient(&daemon, dir.path(), "unhooked", "hook-no");
    assert!(!out.status.success());
    assert!(!cert.exists());
    // The static challenge never reaches the webhook.
    let (out, _) = scepclient(&daemon, dir.path(), "static", STATIC_CHALLENGE);
    assert!(out.status.success());

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0]["challenge"], "hook-ok-7");
    assert!(seen[0]["csr_pem"]
        .as_str()
        .unwrap()
        .contains("BEGIN CERTIFICATE REQUEST"));
    assert!(seen[0]["subject"].as_str().unwrap().contains("hooked"));
    assert!(!seen[0]["transaction_id"].as_str().unwrap().is_empty());
    assert_eq!(jobs_total(&daemon), 2);
}
