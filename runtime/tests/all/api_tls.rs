//! The request API over TLS: the CLI and curl reach it with the configured certificate, plain
//! HTTP on the TLS port gets nowhere, a client certificate from `client_ca` stands in for the
//! token, SCEP and the published CRLs stay reachable in plain HTTP on `plain_listen`, and an
//! API off loopback without TLS is refused with the reason.

use crate::common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// A certificate for the API at 127.0.0.1, self-signed, with its key (mode 0600).
fn api_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let (key, cert) = openssl_self_signed(
        dir,
        "certconn-api",
        &[
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-addext",
            "extendedKeyUsage=serverAuth",
        ],
    );
    set_private(&key);
    (cert, key)
}

fn set_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A CA for admin tools' client certificates, and one client certificate under it:
/// (CA certificate, certificate, key).
fn client_ca_and_certificate(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    openssl_ca_and_leaf(
        dir,
        "admin",
        "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n",
    )
}

fn tls_config(data: &Path, cert: &Path, key: &Path, more: &str) -> String {
    config_text(
        data,
        &plugins(),
        &format!(
            "[api.tls]\ncertificate = \"{}\"\nkey = \"{}\"\n{more}",
            cert.display(),
            key.display()
        ),
    )
}

/// `curl` against the daemon over TLS, trusting the API certificate: (HTTP status, body).
fn curl(port: u16, path: &str, cacert: &Path, args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(cacert)
        .args(args)
        .args(["-w", "\n%{http_code}"])
        .arg(format!("https://127.0.0.1:{port}{path}"))
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "curl failed: {}{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, code) = text.rsplit_once('\n').expect("status line");
    (code.trim().parse().expect("status code"), body.to_owned())
}

#[test]
fn the_cli_and_curl_reach_the_api_over_tls_and_plain_http_gets_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = api_certificate(dir.path());
    let daemon = start_in(dir.path(), |data| tls_config(data, &cert, &key, ""));

    // The CLI (which reads the same config) issues a certificate through the TLS API.
    let pfx = dir.path().join("tls.pfx");
    let password = issue_pfx(&daemon, "smime", "CN=over TLS", &pfx);
    openssl_pkcs12_info(&pfx, &password);

    // curl, trusting only the API certificate: TLS with the token works, without it 401.
    let token = std::fs::read_to_string(dir.path().join("data/api-token")).unwrap();
    let auth = format!("Authorization: Bearer {}", token.trim());
    let (status, body) = curl(daemon.port, "/v1/jobs", &cert, &["-H", &auth]);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("CN=over TLS"), "{body}");
    let (status, _) = curl(daemon.port, "/v1/jobs", &cert, &[]);
    assert_eq!(status, 401);

    // openssl s_client sees the configured certificate, on TLS 1.3 or 1.2.
    let mut s_client = Command::new("openssl")
        .args(["s_client", "-brief", "-connect"])
        .arg(format!("127.0.0.1:{}", daemon.port))
        .arg("-CAfile")
        .arg(&cert)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let seen = String::from_utf8_lossy(&s_client.stderr).to_string()
        + &String::from_utf8_lossy(&std::mem::take(&mut s_client.stdout));
    assert!(
        seen.contains("CN=certconn-api") || seen.contains("CN = certconn-api"),
        "{seen}"
    );
    assert!(seen.contains("Verification: OK"), "{seen}");

    // Plain HTTP on the TLS port gets no HTTP answer, let alone data.
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", daemon.port)).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(15)))
        .unwrap();
    tcp.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    assert!(
        !answer.starts_with(b"HTTP/"),
        "plain HTTP was answered: {}",
        String::from_utf8_lossy(&answer)
    );
}

#[test]
fn a_client_certificate_from_client_ca_stands_in_for_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = api_certificate(dir.path());
    let (client_ca, client_cert, client_key) = client_ca_and_certificate(dir.path());
    let more = format!("client_ca = \"{}\"\n", client_ca.display());
    let daemon = start_in(dir.path(), |data| tls_config(data, &cert, &key, &more));
    let with_cert = [
        "--cert",
        client_cert.to_str().unwrap(),
        "--key",
        client_key.to_str().unwrap(),
    ];
    let (status, body) = curl(daemon.port, "/v1/jobs", &cert, &with_cert);
    assert_eq!(status, 200, "{body}");
    // No certificate and no token: the connection is fine, the request is not.
    let (status, _) = curl(daemon.port, "/v1/jobs", &cert, &[]);
    assert_eq!(status, 401);
    // A certificate from another CA does not get through the handshake.
    let (other_key, other) = openssl_self_signed(dir.path(), "stranger", &["-newkey", "rsa:2048"]);
    let out = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(&cert)
        .arg("--cert")
        .arg(&other)
        .arg("--key")
        .arg(&other_key)
        .arg(format!("https://127.0.0.1:{}/v1/jobs", daemon.port))
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a stranger's certificate was accepted: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The CLI still uses the token.
    ok(daemon.cli(&["jobs", "list"]));
}

#[test]
fn scep_and_crls_stay_plain_http_on_plain_listen_and_nothing_else_is_there() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = api_certificate(dir.path());
    let challenge = dir.path().join("challenge");
    write_private(&challenge, "tls-test-challenge\n");
    let daemon = start_in(dir.path(), |data| {
        with_api_settings(
            &tls_config(data, &cert, &key, ""),
            "plain_listen = \"127.0.0.1:0\"",
        ) + &scep_section(&challenge)
    });
    let plain = plain_addr(dir.path());
    let (status, caps) = http_raw(plain.port(), "GET", "/scep?operation=GetCACaps", b"");
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&caps).contains("SCEPStandard"));
    // The API is not on the plain listener, with or without a token.
    let (status, _) = http_raw(plain.port(), "GET", "/v1/health", b"");
    assert_eq!(status, 404);
    let (status, _) = http_raw(plain.port(), "POST", "/v1/jobs/issue", b"{}");
    assert_eq!(status, 404);
    // The API is still there over TLS.
    let (status, _) = curl(daemon.port, "/v1/health", &cert, &[]);
    assert_eq!(status, 200);
}

/// A TLS handshake holds one of the listener's `api.max_connections` from its first byte: a
/// client that connects and never says hello keeps the next one waiting at a limit of one,
/// until it leaves. The plain listener has a limit of its own and answers meanwhile.
#[test]
fn a_stalled_tls_handshake_counts_against_the_listeners_limit_and_the_plain_listener_has_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = api_certificate(dir.path());
    let daemon = start_in(dir.path(), |data| {
        with_api_settings(
            &tls_config(data, &cert, &key, ""),
            "plain_listen = \"127.0.0.1:0\"\nmax_connections = 1",
        )
    });
    let plain = plain_addr(dir.path());
    let (status, _) = curl(daemon.port, "/v1/health", &cert, &[]);
    assert_eq!(status, 200);
    // Connected first, so taken first (the kernel's queue is in order), and silent.
    let silent = std::net::TcpStream::connect(("127.0.0.1", daemon.port)).unwrap();
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "1", "--cacert"])
        .arg(&cert)
        .arg(format!("https://127.0.0.1:{}/v1/health", daemon.port))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(28),
        "curl was answered, or refused, while the one connection allowed was held: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, _) = http_raw(plain.port(), "GET", "/v1/health", b"");
    assert_eq!(
        status, 404,
        "the plain listener did not answer beside a full API listener"
    );
    drop(silent);
    let (status, _) = curl(daemon.port, "/v1/health", &cert, &[]);
    assert_eq!(status, 200);
}

#[test]
fn an_api_off_loopback_without_tls_is_refused_unless_the_config_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("certconn.toml");
    let text = config_text(&dir.path().join("data"), &plugins(), "")
        .replace("listen = \"127.0.0.1:0\"", "listen = \"0.0.0.0:0\"");
    std::fs::write(&config, &text).unwrap();
    let (ok, said) = run_certconn(&["check-config", "--syntax-only"], &config);
    assert!(!ok, "{said}");
    assert!(
        said.contains("api.listen") && said.contains("in clear") && said.contains("[api.tls]"),
        "{said}"
    );
    let (ok, said) = run_certconn(&["serve"], &config);
    assert!(!ok);
    assert!(said.contains("api.listen"), "{said}");

    // Said explicitly, it is accepted.
    std::fs::write(
        &config,
        text.replace(
            "listen = \"0.0.0.0:0\"",
            "listen = \"0.0.0.0:0\"\nallow_plain_http = true",
        ),
    )
    .unwrap();
    let (ok, said) = run_certconn(&["check-config", "--syntax-only"], &config);
    assert!(ok, "{said}");
}

#[test]
fn a_key_that_is_not_the_certificates_stops_the_start_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = api_certificate(dir.path());
    let (other_key, _) = openssl_self_signed(dir.path(), "other", &["-newkey", "rsa:2048"]);
    set_private(&other_key);
    let config = dir.path().join("certconn.toml");
    std::fs::write(
        &config,
        tls_config(&dir.path().join("data"), &cert, &other_key, ""),
    )
    .unwrap();
    let (ok, text) = run_certconn(&["check-config"], &config);
    assert!(!ok, "{text}");
    assert!(
        text.contains("api.tls.key") && text.contains("is not the key of the certificate"),
        "{text}"
    );
    // A key others may read is refused, naming the fix.
    let (readable_cert, readable_key) = {
        let sub = dir.path().join("readable");
        std::fs::create_dir(&sub).unwrap();
        api_certificate(&sub)
    };
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&readable_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(
        &config,
        tls_config(&dir.path().join("data"), &readable_cert, &readable_key, ""),
    )
    .unwrap();
    let (ok, said) = run_certconn(&["serve"], &config);
    assert!(!ok, "{said}");
    assert!(
        said.contains("api.tls.key") && said.contains("chmod 600"),
        "{said}"
    );
}

/// The certificate the API serves on `port`, PEM, as `openssl s_client` got it after verifying
/// it against `ca_file` for `name` (an IP address or a DNS name).
fn served_certificate(port: u16, ca_file: &Path, name: &str) -> String {
    let check = if name.parse::<std::net::IpAddr>().is_ok() {
        "-verify_ip"
    } else {
        "-verify_hostname"
    };
    let out = Command::new("openssl")
        .args(["s_client", "-showcerts", "-verify_return_error", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-CAfile")
        .arg(ca_file)
        .args([check, name])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && text.contains("Verify return code: 0 (ok)"),
        "openssl s_client: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let start = text
        .find("-----BEGIN CERTIFICATE-----")
        .expect("a certificate");
    let end = text[start..]
        .find("-----END CERTIFICATE-----")
        .expect("its end")
        + start;
    text[start..end].to_owned()
}

#[test]
fn certconn_issues_the_api_certificate_from_its_own_ca_and_keeps_it_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("certconn.toml");
    let write = |names: &str| {
        let text = config_text(
            &dir.path().join("data"),
            &plugins(),
            &format!("[api.tls]\nissuer = \"local-ca\"\nvalidity_days = 30\n{names}"),
        );
        std::fs::write(&config, text).unwrap();
    };
    write("");
    let mut daemon = Daemon::start(&config, &dir.path().join("daemon.log"));
    let anchor = dir.path().join("data/api-ca.pem");

    // The CLI trusts the CA the daemon wrote to data/api-ca.pem, and issues through the API.
    let pfx = dir.path().join("issued-tls.pfx");
    let password = issue_pfx(&daemon, "smime", "CN=over an issued certificate", &pfx);
    openssl_pkcs12_info(&pfx, &password);
    // curl and openssl verify it against that CA alone, for 127.0.0.1 and localhost (the
    // default names of a loopback listener).
    let (status, body) = curl(daemon.port, "/v1/health", &anchor, &[]);
    assert_eq!(status, 200, "{body}");
    let first = served_certificate(daemon.port, &anchor, "127.0.0.1");
    assert_eq!(served_certificate(daemon.port, &anchor, "localhost"), first);

    // What it is: issued by the local CA, for the server, for 30 days, on a P-256 key.
    let pem = dir.path().join("served.pem");
    std::fs::write(&pem, format!("{first}-----END CERTIFICATE-----\n")).unwrap();
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&pem)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("CN = certconn Test CA"), "{text}");
    assert!(text.contains("TLS Web Server Authentication"), "{text}");
    assert!(
        text.contains("IP Address:127.0.0.1") && text.contains("DNS:localhost"),
        "{text}"
    );
    assert!(text.contains("NIST CURVE: P-256"), "{text}");
    let auth = format!(
        "Authorization: Bearer {}",
        data_token(dir.path(), "api-read-token")
    );
    let (code, body) = curl(daemon.port, "/v1/status", &anchor, &["-H", &auth]);
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    let api = status["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "api-tls")
        .unwrap_or_else(|| panic!("no api-tls in {status}"))
        .clone();
    assert!(
        api["days_left"]
            .as_i64()
            .is_some_and(|d| (29..=30).contains(&d)),
        "{api}"
    );

    // A restart serves the same certificate: it is kept in custody, not made anew.
    daemon.stop();
    let mut daemon = Daemon::start(&config, &dir.path().join("daemon.log"));
    assert_eq!(served_certificate(daemon.port, &anchor, "127.0.0.1"), first);

    // Other names: a new certificate, for them.
    daemon.stop();
    write("names = [\"api.example.test\"]\n");
    let daemon = Daemon::start(&config, &dir.path().join("daemon.log"));
    let renamed = served_certificate(daemon.port, &anchor, "api.example.test");
    assert_ne!(renamed, first);

    // The signature trail holds both certificates the CA key signed for the API.
    let (ok, said) = run_certconn(&["audit", "verify"], &config);
    assert!(ok, "{said}");
}

#[test]
fn an_issued_api_certificate_is_configured_one_way_only() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = api_certificate(dir.path());
    let config = dir.path().join("certconn.toml");
    let data = dir.path().join("data");
    for (tls, expected) in [
        (
            format!(
                "[api.tls]\nissuer = \"local-ca\"\ncertificate = \"{}\"\nkey = \"{}\"\n",
                cert.display(),
                key.display()
            ),
            "api.tls.issuer",
        ),
        (
            "[api.tls]\nclient_ca = \"x.pem\"\n".to_owned(),
            "set certificate and key",
        ),
        (
            "[api.tls]\nissuer = \"missing\"\n".to_owned(),
            "key \"missing\" is not declared in [keys]",
        ),
        (
            "[api.tls]\nissuer = \"local-ca\"\nnames = [\"not a name\"]\n".to_owned(),
            "neither a DNS name nor an IP address",
        ),
        (
            "[api.tls]\nissuer = \"local-ca\"\n[keys.api-tls]\nalgorithm = \"ec-p256\"\n"
                .to_owned(),
            "certconn makes and renews this key itself",
        ),
    ] {
        std::fs::write(&config, config_text(&data, &plugins(), &tls)).unwrap();
        let (ok, said) = run_certconn(&["check-config", "--syntax-only"], &config);
        assert!(!ok && said.contains(expected), "{tls}\n{said}");
    }
}
