//! Revocation that relying parties see: certconn's CRL and OCSP responder read by the `openssl`
//! CLI, as a relying party would — `openssl verify -crl_check` with the CRL certconn serves,
//! `openssl ocsp` against its responder — before and after `certconn submit revoke`, across a
//! `kill -9`, and the ledger through `certconn certs`.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const CRL_URL: &str = "http://pki.example.test/pki/local/crl";
const OCSP_URL: &str = "http://pki.example.test/pki/local/ocsp";

fn config(data: &Path, publish_dir: &Path) -> String {
    config_text(
        data,
        &plugins(),
        &format!(
            "[revocation]\ncrl_dir = \"{}\"\n[revocation.cas.local]\nkey = \"local-ca\"\n",
            publish_dir.display()
        ),
    )
    .replace(
        "ca_key = \"local-ca\"\n",
        &format!(
            "ca_key = \"local-ca\"\ncrl_urls = [\"{CRL_URL}\"]\nocsp_urls = [\"{OCSP_URL}\"]\n\
             ca_issuers_urls = [\"http://pki.example.test/pki/local/ca.crt\"]\n"
        ),
    )
}

fn openssl(args: &[&str]) -> std::process::Output {
    Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl")
}

fn both(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// GETs `path` from the daemon and writes the body, converted from DER to PEM by `openssl
/// <kind>` (x509 or crl), to `out`.
fn fetch_pem(daemon: &Daemon, path: &str, kind: &str, out: &Path) {
    let (status, body) = http_raw(daemon.port, "GET", path, b"");
    assert_eq!(
        status,
        200,
        "GET {path}: {}",
        String::from_utf8_lossy(&body)
    );
    let der = out.with_extension("der");
    std::fs::write(&der, body).unwrap();
    let o = openssl(&[
        kind,
        "-inform",
        "DER",
        "-in",
        der.to_str().unwrap(),
        "-out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", both(&o));
}

fn crl_text(crl: &Path) -> String {
    let o = openssl(&["crl", "-noout", "-text", "-in", crl.to_str().unwrap()]);
    assert!(o.status.success(), "{}", both(&o));
    both(&o)
}

fn crl_number(text: &str) -> u64 {
    let line = text
        .lines()
        .skip_while(|l| !l.contains("X509v3 CRL Number"))
        .nth(1)
        .unwrap_or_else(|| panic!("no CRL number in {text}"));
    line.trim().parse().unwrap_or_else(|_| panic!("{line:?}"))
}

/// Fetches the CRL until `done` holds for its text: the publisher looks at the ledger every
/// second, so this waits on what a relying party sees, not on a guessed delay.
fn wait_for_crl(daemon: &Daemon, crl: &Path, done: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        fetch_pem(daemon, "/pki/local/crl", "crl", crl);
        let text = crl_text(crl);
        if done(&text) {
            return text;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the CRL did not change within 30 s:\n{text}\nlog:\n{}",
            std::fs::read_to_string(&daemon.log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Issues a certificate under `smime` and returns its PEM file and serial (lowercase hex).
fn issue_cert(daemon: &Daemon, dir: &Path, name: &str) -> (PathBuf, String) {
    let pfx = dir.join(format!("{name}.pfx"));
    let password = issue_pfx(daemon, "smime", &format!("CN={name},O=Example"), &pfx);
    let cert = dir.join(format!("{name}.pem"));
    let o = openssl(&[
        "pkcs12",
        "-in",
        pfx.to_str().unwrap(),
        "-passin",
        &format!("pass:{password}"),
        "-nokeys",
        "-clcerts",
        "-out",
        cert.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", both(&o));
    let o = openssl(&["x509", "-noout", "-serial", "-in", cert.to_str().unwrap()]);
    let serial = String::from_utf8_lossy(&o.stdout)
        .trim()
        .trim_start_matches("serial=")
        .to_ascii_lowercase();
    let serial = serial.trim_start_matches("00").to_owned();
    (cert, serial)
}

fn verify(ca: &Path, crl: &Path, cert: &Path) -> std::process::Output {
    openssl(&[
        "verify",
        "-crl_check",
        "-CAfile",
        ca.to_str().unwrap(),
        "-CRLfile",
        crl.to_str().unwrap(),
        cert.to_str().unwrap(),
    ])
}

fn ocsp(daemon: &Daemon, ca: &Path, what: &[&str], extra: &[&str]) -> String {
    let url = format!("http://127.0.0.1:{}/pki/local/ocsp", daemon.port);
    let mut args = vec![
        "ocsp",
        "-issuer",
        ca.to_str().unwrap(),
        "-CAfile",
        ca.to_str().unwrap(),
        "-url",
        &url,
        "-resp_text",
    ];
    args.extend_from_slice(what);
    args.extend_from_slice(extra);
    let o = openssl(&args);
    assert!(o.status.success(), "openssl ocsp failed: {}", both(&o));
    both(&o)
}

fn cli_ok(daemon: &Daemon, args: &[&str]) -> String {
    let out = daemon.cli(args);
    assert!(out.status.success(), "certconn {args:?}: {}", both(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_revocation_reaches_the_crl_and_the_ocsp_responder_that_openssl_reads() {
    let dir = tempfile::tempdir().unwrap();
    let publish = dir.path().join("publish");
    std::fs::create_dir(&publish).unwrap();
    let daemon = start_in(dir.path(), |data| config(data, &publish));
    let ca = dir.path().join("ca.pem");
    fetch_pem(&daemon, "/pki/local/ca.crt", "x509", &ca);
    let crl = dir.path().join("crl.pem");

    let (cert, serial) = issue_cert(&daemon, dir.path(), "alice");
    let o = openssl(&["x509", "-noout", "-text", "-in", cert.to_str().unwrap()]);
    let text = both(&o);
    assert!(
        text.contains("X509v3 CRL Distribution Points") && text.contains(CRL_URL),
        "{text}"
    );
    assert!(text.contains(&format!("OCSP - URI:{OCSP_URL}")), "{text}");
    assert!(
        text.contains("CA Issuers - URI:http://pki.example.test/pki/local/ca.crt"),
        "{text}"
    );

    // Before: the CRL certconn serves lets the certificate through, and OCSP says good.
    fetch_pem(&daemon, "/pki/local/crl", "crl", &crl);
    let before = crl_text(&crl);
    let number_before = crl_number(&before);
    let o = verify(&ca, &crl, &cert);
    assert!(o.status.success(), "{}", both(&o));
    let answer = ocsp(&daemon, &ca, &["-cert", cert.to_str().unwrap()], &[]);
    assert!(answer.contains("Response verify OK"), "{answer}");
    assert!(
        answer.contains(&format!("{}: good", cert.display())),
        "{answer}"
    );
    // A delegated responder signed it, with a certificate for OCSP signing only.
    assert!(answer.contains("OCSP Signing"), "{answer}");
    assert!(answer.contains("OCSP No Check"), "{answer}");
    // The nonce openssl sent came back (openssl checks it; the text shows it).
    assert!(answer.contains("OCSP Nonce"), "{answer}");

    // The same over GET (RFC 6960 appendix A.1): the request base64'd and URL-encoded in the path.
    let req = dir.path().join("req.der");
    let o = openssl(&[
        "ocsp",
        "-issuer",
        ca.to_str().unwrap(),
        "-cert",
        cert.to_str().unwrap(),
        "-no_nonce",
        "-reqout",
        req.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", both(&o));
    let b64 = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        std::fs::read(&req).unwrap(),
    )
    .replace('+', "%2B")
    .replace('/', "%2F")
    .replace('=', "%3D");
    let (status, body) = http_raw(daemon.port, "GET", &format!("/pki/local/ocsp/{b64}"), b"");
    assert_eq!(status, 200);
    let resp = dir.path().join("resp.der");
    std::fs::write(&resp, body).unwrap();
    let o = openssl(&[
        "ocsp",
        "-respin",
        resp.to_str().unwrap(),
        "-issuer",
        ca.to_str().unwrap(),
        "-cert",
        cert.to_str().unwrap(),
        "-CAfile",
        ca.to_str().unwrap(),
    ]);
    let text = both(&o);
    assert!(
        text.contains("Response verify OK") && text.contains(": good"),
        "{text}"
    );

    // Revoke.
    cli_ok(
        &daemon,
        &[
            "submit",
            "revoke",
            "--serial",
            &serial,
            "--reason",
            "key-compromise",
        ],
    );
    let after = wait_for_crl(&daemon, &crl, |t| t.contains(&serial.to_ascii_uppercase()));
    assert!(after.contains("Key Compromise"), "{after}");
    assert!(crl_number(&after) > number_before, "the CRL number grows");
    let o = verify(&ca, &crl, &cert);
    assert!(!o.status.success(), "a revoked certificate verified");
    assert!(both(&o).contains("certificate revoked"), "{}", both(&o));
    for nonce in [&[][..], &["-no_nonce"][..]] {
        let answer = ocsp(&daemon, &ca, &["-cert", cert.to_str().unwrap()], nonce);
        assert!(answer.contains("Response verify OK"), "{answer}");
        assert!(
            answer.contains(&format!("{}: revoked", cert.display())),
            "{answer}"
        );
        assert!(answer.contains("Reason: keyCompromise"), "{answer}");
        assert!(answer.contains("Revocation Time:"), "{answer}");
    }
    let unknown = ocsp(&daemon, &ca, &["-serial", "0x0123456789abcdef"], &[]);
    assert!(unknown.contains("0x0123456789abcdef: unknown"), "{unknown}");

    // Revoking it again says when and why it already was, and changes nothing.
    let again = daemon.cli(&["submit", "revoke", "--serial", &serial]);
    assert!(!again.status.success());
    let said = both(&again);
    assert!(
        said.contains("already revoked") && said.contains("key-compromise"),
        "{said}"
    );
    // A serial certconn never issued is refused at intake: no job is journaled for it.
    let never = daemon.cli(&["submit", "revoke", "--serial", "0badc0de"]);
    assert!(!never.status.success());
    assert!(
        both(&never).contains("issued no certificate with serial 0badc0de")
            && both(&never).contains("--backend NAME"),
        "{}",
        both(&never)
    );

    // The ledger, as an administrator reads it.
    let listed = cli_ok(&daemon, &["certs", "list", "--revoked"]);
    assert!(
        listed.contains(&serial) && listed.contains("key-compromise"),
        "{listed}"
    );
    let shown = cli_ok(&daemon, &["certs", "show", &serial]);
    assert!(
        shown.contains("CN=alice,O=Example") || shown.contains("O=Example"),
        "{shown}"
    );
    assert!(
        shown.contains("revoked:") && shown.contains("key-compromise"),
        "{shown}"
    );
    assert!(
        shown.contains("(plugin local-ca 0.1.0"),
        "the plugin version is shown: {shown}"
    );

    // Changing the reason is explicit, recorded, and reaches the next CRL.
    let changed = cli_ok(&daemon, &["certs", "set-reason", &serial, "superseded"]);
    assert!(changed.contains("superseded"), "{changed}");
    let changes = cli_ok(&daemon, &["certs", "changes"]);
    assert!(
        changes.contains(&serial)
            && changes.contains("key-compromise")
            && changes.contains("superseded"),
        "{changes}"
    );
    let superseded = wait_for_crl(&daemon, &crl, |t| t.contains("Superseded"));
    assert!(!superseded.contains("Key Compromise"), "{superseded}");

    // The copy for another web server is the same list.
    let published = std::fs::read(publish.join("local.crl")).unwrap();
    let served = http_raw(daemon.port, "GET", "/pki/local/crl", b"").1;
    assert_eq!(published, served);
    let status = cli_ok(&daemon, &["status"]);
    assert!(status.contains("CA local: CRL #"), "{status}");

    // The signature trail holds every CRL the CA key signed, by number, and the OCSP
    // responder's certificate, beside the certificates issued for jobs.
    let listed = cli_ok(&daemon, &["audit", "list", "--json", "--last", "1000"]);
    let entries: Vec<serde_json::Value> = listed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let crls: Vec<u64> = entries
        .iter()
        .filter(|e| e["kind"] == "crl")
        .map(|e| u64::from_str_radix(e["serial"].as_str().unwrap(), 16).unwrap())
        .collect();
    let last = crl_number(&superseded);
    assert!(
        crls.len() >= 3 && crls.windows(2).all(|w| w[0] < w[1]) && crls.contains(&last),
        "CRL numbers {crls:?}, last {last}"
    );
    assert!(
        entries.iter().any(|e| e["backend"] == "host"
            && e["subject"]
                .as_str()
                .unwrap()
                .contains("OCSP responder for local")),
        "{listed}"
    );
    assert!(entries.iter().all(|e| e["key"] == "local-ca"), "{listed}");
    assert!(
        cli_ok(&daemon, &["audit", "verify"]).contains("chain intact"),
        "{listed}"
    );
}

#[test]
fn a_revocation_survives_kill_9_right_after_its_job_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let publish = dir.path().join("publish");
    std::fs::create_dir(&publish).unwrap();
    // A long delay before the next CRL: the kill lands before any CRL lists the revocation.
    let mut daemon = start_in(dir.path(), |data| {
        config(data, &publish).replace(
            "[revocation]\n",
            "[revocation]\nafter_revoke_seconds = 3600\n",
        )
    });
    let ca = dir.path().join("ca.pem");
    fetch_pem(&daemon, "/pki/local/ca.crt", "x509", &ca);
    let (cert, serial) = issue_cert(&daemon, dir.path(), "bob");
    cli_ok(&daemon, &["submit", "revoke", "--serial", &serial]);
    let crl = dir.path().join("crl.pem");
    fetch_pem(&daemon, "/pki/local/crl", "crl", &crl);
    assert!(
        !crl_text(&crl).contains(&serial.to_ascii_uppercase()),
        "the delay holds the revocation back until the kill"
    );
    daemon.kill9();

    let daemon = Daemon::start(&daemon.config.clone(), &dir.path().join("daemon2.log"));
    fetch_pem(&daemon, "/pki/local/crl", "crl", &crl);
    let text = crl_text(&crl);
    assert!(text.contains(&serial.to_ascii_uppercase()), "{text}");
    let o = verify(&ca, &crl, &cert);
    assert!(both(&o).contains("certificate revoked"), "{}", both(&o));
}

#[test]
fn the_ocsp_responder_refuses_what_it_cannot_answer() {
    let dir = tempfile::tempdir().unwrap();
    let publish = dir.path().join("publish");
    std::fs::create_dir(&publish).unwrap();
    let daemon = start_in(dir.path(), |data| config(data, &publish));
    // Not DER: malformedRequest (status 1), as an OCSPResponse, not an HTTP error.
    let (status, body) = http_raw(daemon.port, "POST", "/pki/local/ocsp", b"not a request");
    assert_eq!(status, 200);
    assert_eq!(body, [0x30, 0x03, 0x0a, 0x01, 0x01]);
    // A CA certconn does not publish: 404 with a reason.
    let (status, body) = http_raw(daemon.port, "GET", "/pki/nope/crl", b"");
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&body).contains("no CA named \"nope\""));
    // A request about another CA's certificate: unauthorized (status 6).
    let (other_key, other_ca) = openssl_self_signed(
        dir.path(),
        "other",
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    let _ = other_key;
    let req = dir.path().join("req.der");
    let o = openssl(&[
        "ocsp",
        "-issuer",
        other_ca.to_str().unwrap(),
        "-serial",
        "0x01",
        "-reqout",
        req.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", both(&o));
    let (status, body) = http_raw(
        daemon.port,
        "POST",
        "/pki/local/ocsp",
        &std::fs::read(&req).unwrap(),
    );
    assert_eq!(status, 200);
    assert_eq!(body, [0x30, 0x03, 0x0a, 0x01, 0x06]);
}
