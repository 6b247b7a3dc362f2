//! certconn's SCEP server against a real SCEP client: micromdm's `scepclient` (Debian package
//! `scep`) enrols with a static challenge and with one-time challenges; the `openssl` CLI
//! verifies what it got. Bad messages get an HTTP 400 with the reason and issue nothing.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

const STATIC_CHALLENGE: &str = "static-Secret-42";

fn start(dir: &Path) -> Daemon {
    let challenge = dir.join("challenge");
    write_private(&challenge, &format!("{STATIC_CHALLENGE}\n"));
    // SCEP clients (micromdm's among them) encrypt to every certificate GetCACert returns, so a
    // SCEP CA is RSA, as NDES CAs are.
    // micromdm's scepclient seals its requests in single DES whatever GetCACaps offers: the
    // administrator allows it explicitly, as a site with such clients would.
    let extra = format!(
        "{}\n[crypto]\nallow_single_des = true\n",
        scep_section(&challenge)
    );
    start_in(dir, |data, port| {
        config_text(data, &plugins(), port, &extra)
            .replace("algorithm = \"ec-p256\"", "algorithm = \"rsa-2048\"")
    })
}

fn scepclient(daemon: &Daemon, dir: &Path, name: &str, challenge: &str) -> (Output, PathBuf) {
    // scepclient keeps its CSR in `csr.pem` in the working directory and resends it: one
    // directory per device, as on real devices.
    let dir = &dir.join(name);
    std::fs::create_dir_all(dir).unwrap();
    let cert = dir.join(format!("{name}.crt"));
    let out = Command::new("scepclient")
        .args([
            "-server-url",
            &format!("http://127.0.0.1:{}/scep", daemon.port),
        ])
        .args(["-challenge", challenge, "-cn", name, "-keySize", "2048"])
        .arg("-private-key")
        .arg(dir.join(format!("{name}.key")))
        .arg("-certificate")
        .arg(&cert)
        .current_dir(dir)
        .output()
        .expect("scepclient (Debian package scep) is installed by scripts/install-deps --test");
    (out, cert)
}

fn openssl(args: &[&str]) -> String {
    run_ok(Command::new("openssl").args(args))
}

/// The CA and RA certificates as GetCACert publishes them, PEM.
fn ca_bundle(daemon: &Daemon, dir: &Path) -> PathBuf {
    let (status, body) = http_raw(daemon.port, "GET", "/scep?operation=GetCACert", b"");
    assert_eq!(status, 200);
    let der = dir.join("cacert.p7b");
    std::fs::write(&der, body).unwrap();
    let pem = dir.join("ca-bundle.pem");
    openssl(&[
        "pkcs7",
        "-inform",
        "DER",
        "-in",
        der.to_str().unwrap(),
        "-print_certs",
        "-out",
        pem.to_str().unwrap(),
    ]);
    pem
}

fn jobs_total(daemon: &Daemon) -> usize {
    let out = ok(daemon.cli(&["jobs", "list", "--json"]));
    serde_json::from_str::<serde_json::Value>(&out).unwrap()["jobs"]
        .as_array()
        .map(Vec::len)
        .unwrap_or(0)
}

#[test]
fn scepclient_enrols_with_the_static_challenge_and_openssl_verifies_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(dir.path());

    let (status, caps) = http_raw(daemon.port, "GET", "/scep?operation=GetCACaps", b"");
    assert_eq!(status, 200);
    let caps = String::from_utf8(caps).unwrap();
    for k in ["POSTPKIOPERATION", "AES", "SHA-256", "RENEWAL"] {
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
    let bundle = ca_bundle(&daemon, dir.path());
    let verified = openssl(&[
        "verify",
        "-CAfile",
        bundle.to_str().unwrap(),
        cert.to_str().unwrap(),
    ]);
    assert!(verified.contains(": OK"), "{verified}");
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
    // Replaying the same message (same senderNonce) is refused as badRequest.
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
}

/// A RenewalReq signed by the certificate certconn issued (no challenge) gets a certificate for
/// the new key; one signed by a certificate certconn did not issue gets badCertId.
#[test]
fn renewal_is_signed_by_a_certificate_certconn_issued() {
    use certconn::crypto::AlgorithmPolicy;
    use certconn::custody::{KeyAlgorithm, PrivateKey};
    use certconn::scep::adapter::{CustodyIdentity, HostCrypto};
    use certconn_scep::{
        certs, envelope, message, CaCertificates, Cipher, Crypto, Digest, FailInfo, KeyTransport,
        MessageType, Outgoing, PkiStatus,
    };
    use std::str::FromStr;

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

    let crypto = HostCrypto {
        policy: AlgorithmPolicy::default(),
    };
    let (_, bag) = http_raw(daemon.port, "GET", "/scep?operation=GetCACert", b"");
    let ca = CaCertificates::from_response(&bag).unwrap();
    let renew = |signer: &CustodyIdentity, txid: &str| {
        let new_key = PrivateKey::generate(KeyAlgorithm::Rsa2048).unwrap();
        let subject = x509_cert::name::Name::from_str("CN=renew-me").unwrap();
        let csr = certconn::pki::csr::build(&new_key, &subject, &[]).unwrap();
        let sealed = envelope::seal(
            &crypto,
            &csr,
            &ca.encryption,
            Cipher::Aes128Cbc,
            KeyTransport::Pkcs1,
        )
        .unwrap();
        let nonce = crypto.random(16).unwrap();
        let msg = message::sign(
            &crypto,
            signer,
            Digest::Sha256,
            &Outgoing {
                message_type: MessageType::RenewalReq,
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
        let (status, body) = http_raw(daemon.port, "POST", "/scep?operation=PKIOperation", &msg);
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        (message::verify(&crypto, &body, &ca.all).unwrap(), new_key)
    };

    let old = CustodyIdentity {
        key: &old_key,
        certificate: &old_cert,
    };
    let (rep, new_key) = renew(&old, "renewal-1");
    assert_eq!(
        rep.pki_status,
        Some(PkiStatus::Success),
        "{:?}",
        rep.fail_info
    );
    let (bag, _) = envelope::open(&crypto, &old, rep.content.as_deref().unwrap()).unwrap();
    let issued = certs::parse_certs_only(&bag).unwrap();
    let leaf = <x509_cert::Certificate as der::Decode>::from_der(&issued[0]).unwrap();
    assert_eq!(
        der::Encode::to_der(&leaf.tbs_certificate.subject_public_key_info).unwrap(),
        new_key.public_key_der()
    );

    // Signed by a certificate certconn never issued: refused, nothing journaled.
    let stranger_key = PrivateKey::generate(KeyAlgorithm::Rsa2048).unwrap();
    let stranger = certconn::pki::ca::ra_certificate(
        &stranger_key,
        &x509_cert::name::Name::from_str("CN=renew-me").unwrap(),
        None,
        30,
    )
    .unwrap();
    let before = jobs_total(&daemon);
    let (rep, _) = renew(
        &CustodyIdentity {
            key: &stranger_key,
            certificate: &stranger,
        },
        "renewal-2",
    );
    assert_eq!(rep.pki_status, Some(PkiStatus::Failure));
    assert_eq!(rep.fail_info, Some(FailInfo::BadCertId));
    assert_eq!(jobs_total(&daemon), before);
}
