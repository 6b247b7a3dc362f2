//! End to end as a user runs it: `certconn serve`, `certconn submit issue`, and the `openssl`
//! CLI reading everything certconn wrote.

use crate::common;

use std::process::Command;

use common::*;

fn openssl(args: &[&str]) -> String {
    run_ok(Command::new("openssl").args(args))
}

#[test]
fn issued_pfx_and_sealed_password_are_read_by_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_default(dir.path());
    let (device_key, device_cert) = openssl_device(dir.path());
    let pfx = dir.path().join("alice.pfx");
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &str| {
        std::fs::metadata(dir.path().join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("data/api-token"), 0o600, "the API token is private");
    assert_eq!(
        mode("data/keys/local-ca.key"),
        0o600,
        "the CA key is private"
    );
    assert_eq!(mode("data"), 0o700);

    // Issue with a recipient: the password is sealed for the device.
    let out = daemon.cli(&[
        "submit",
        "issue",
        "--profile",
        "smime",
        "--subject",
        "CN=Alice Example,O=Example Corp",
        "--san",
        "email:alice@example.com",
        "--san",
        "upn:alice@corp.example",
        "--recipient",
        device_cert.to_str().unwrap(),
        "--out",
        pfx.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "submit failed: {}\n{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !stdout.contains("PFX password (shown once"),
        "the password must not be printed when sealed: {stdout}"
    );
    let sealed = format!("{}.password.cms", pfx.display());

    // openssl cms -decrypt with the device key recovers the password...
    let password = openssl(&[
        "cms",
        "-decrypt",
        "-inform",
        "DER",
        "-in",
        &sealed,
        "-recip",
        device_cert.to_str().unwrap(),
        "-inkey",
        device_key.to_str().unwrap(),
    ]);
    assert_eq!(password.len(), 24, "password {password:?}");
    let pass = format!("pass:{password}");

    // ...which opens the PFX (MAC verified, PBES2/AES-256 as promised).
    let info = run_ok(Command::new("openssl").args([
        "pkcs12",
        "-info",
        "-noout",
        "-in",
        pfx.to_str().unwrap(),
        "-passin",
        &pass,
    ]));
    let info_err = String::from_utf8_lossy(
        &Command::new("openssl")
            .args([
                "pkcs12",
                "-info",
                "-noout",
                "-in",
                pfx.to_str().unwrap(),
                "-passin",
                &pass,
            ])
            .output()
            .unwrap()
            .stderr,
    )
    .into_owned();
    let all = format!("{info}{info_err}");
    assert!(all.contains("MAC: sha256"), "{all}");
    assert!(
        all.contains("PBES2, PBKDF2, AES-256-CBC, Iteration 2048, PRF hmacWithSHA256"),
        "{all}"
    );

    let cert_pem = dir.path().join("cert.pem");
    let key_pem = dir.path().join("key.pem");
    let chain_pem = dir.path().join("ca.pem");
    openssl(&[
        "pkcs12",
        "-in",
        pfx.to_str().unwrap(),
        "-passin",
        &pass,
        "-clcerts",
        "-nokeys",
        "-out",
        cert_pem.to_str().unwrap(),
    ]);
    openssl(&[
        "pkcs12",
        "-in",
        pfx.to_str().unwrap(),
        "-passin",
        &pass,
        "-cacerts",
        "-nokeys",
        "-out",
        chain_pem.to_str().unwrap(),
    ]);
    openssl(&[
        "pkcs12",
        "-in",
        pfx.to_str().unwrap(),
        "-passin",
        &pass,
        "-nocerts",
        "-noenc",
        "-out",
        key_pem.to_str().unwrap(),
    ]);

    // The certificate chains to the local CA held in custody.
    let ca_in_custody = dir.path().join("data/keys/local-ca.chain.pem");
    let verify = openssl(&[
        "verify",
        "-CAfile",
        ca_in_custody.to_str().unwrap(),
        "-purpose",
        "smimeencrypt",
        cert_pem.to_str().unwrap(),
    ]);
    assert!(verify.contains(": OK"), "{verify}");
    assert_eq!(
        openssl(&[
            "x509",
            "-in",
            chain_pem.to_str().unwrap(),
            "-noout",
            "-fingerprint",
            "-sha256"
        ]),
        openssl(&[
            "x509",
            "-in",
            ca_in_custody.to_str().unwrap(),
            "-noout",
            "-fingerprint",
            "-sha256"
        ]),
        "the PFX carries the CA certificate"
    );

    // The key in the PFX belongs to the certificate.
    assert_eq!(
        openssl(&["pkey", "-in", key_pem.to_str().unwrap(), "-pubout"]),
        openssl(&[
            "x509",
            "-in",
            cert_pem.to_str().unwrap(),
            "-noout",
            "-pubkey"
        ]),
    );

    // Subject, SANs and usages are as requested.
    let text = openssl(&["x509", "-in", cert_pem.to_str().unwrap(), "-noout", "-text"]);
    // RFC 4514 writes the most specific RDN first; openssl prints DER order.
    assert!(
        text.contains("Subject: O = Example Corp, CN = Alice Example"),
        "{text}"
    );
    assert!(text.contains("email:alice@example.com"), "{text}");
    assert!(
        text.contains("othername: UPN::alice@corp.example")
            || text.contains("othername:UPN::alice@corp.example")
            || text.contains("UPN:alice@corp.example"),
        "{text}"
    );
    assert!(
        text.contains("Digital Signature, Key Encipherment"),
        "{text}"
    );
    assert!(
        text.contains("E-mail Protection, TLS Web Client Authentication"),
        "{text}"
    );
    assert!(
        text.contains("X509v3 Extended Key Usage: \n"),
        "EKU must not be critical: {text}"
    );
    assert!(text.contains("X509v3 Key Usage: critical"), "{text}");
    assert!(text.contains("CA:FALSE"), "{text}");
    assert!(
        text.contains("ASN1 OID: prime256v1"),
        "EC P-256 by default: {text}"
    );
    assert!(
        text.contains("Signature Algorithm: ecdsa-with-SHA256"),
        "{text}"
    );
    let serial = openssl(&[
        "x509",
        "-in",
        cert_pem.to_str().unwrap(),
        "-noout",
        "-serial",
    ]);
    let serial = serial
        .trim()
        .trim_start_matches("serial=")
        .to_ascii_lowercase();
    assert!(serial.len() >= 31, "128-bit random serial, got {serial}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&serial),
        "the CLI reports the serial it issued"
    );

    // Revoke it through the CLI; the ledger records it and a second revoke of the same
    // serial is not a new revocation.
    let out = daemon.cli(&[
        "submit",
        "revoke",
        "--serial",
        &serial,
        "--reason",
        "key-compromise",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("revoked serial {serial}")));
    let db = rusqlite::Connection::open(dir.path().join("data/journal.sqlite")).unwrap();
    let reason: String = db
        .query_row(
            "SELECT revocation_reason FROM certificates WHERE serial = ?1",
            [&serial],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(reason, "key-compromise");

    // The compiled plugin is cached under the engine's compatibility hash, named by the
    // component's SHA-256, so a restart does not recompile.
    let sha = openssl(&[
        "dgst",
        "-sha256",
        "-r",
        plugins().join("local-ca.wasm").to_str().unwrap(),
    ]);
    let sha = sha.split_whitespace().next().unwrap().to_owned();
    let cached: Vec<_> = std::fs::read_dir(dir.path().join("data/cache"))
        .unwrap()
        .flat_map(|engine_dir| std::fs::read_dir(engine_dir.unwrap().path()).unwrap())
        .map(|f| f.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(cached, vec![format!("{sha}.cwasm")]);

    // status reports the FIPS state honestly for this build.
    let status = daemon.cli(&["status"]);
    let status = String::from_utf8_lossy(&status.stdout);
    let expected = if cfg!(feature = "fips") {
        "module built yes, active yes, self-test passed"
    } else {
        "FIPS: policy off, module built no, active no, self-test n/a"
    };
    assert!(status.contains(expected), "{status}");

    // jobs list and plugins list show what happened.
    let jobs = daemon.cli(&["jobs", "list"]);
    let jobs = String::from_utf8_lossy(&jobs.stdout);
    assert_eq!(jobs.matches("succeeded").count(), 2, "{jobs}");
    let plugins = daemon.cli(&["plugins", "list"]);
    let plugins = String::from_utf8_lossy(&plugins.stdout);
    assert!(
        plugins.contains("local-ca")
            && plugins.contains("issue,revoke")
            && plugins.contains(" ok "),
        "{plugins}"
    );
}

#[test]
fn without_recipient_the_password_is_shown_once_and_not_kept() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_default(dir.path());
    let pfx = dir.path().join("bob.pfx");
    let bob = [
        "submit",
        "issue",
        "--profile",
        "smime",
        "--subject",
        "CN=Bob",
        "--key",
        "rsa-2048",
        "--out",
        pfx.to_str().unwrap(),
        "--idempotency-key",
        "bob-1",
    ];
    let out = daemon.cli(&bob);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let password = shown_password(&stdout);
    let text = run_ok(Command::new("openssl").args([
        "pkcs12",
        "-in",
        pfx.to_str().unwrap(),
        "-passin",
        &format!("pass:{password}"),
        "-nokeys",
        "-clcerts",
    ]));
    assert!(text.contains("BEGIN CERTIFICATE"));
    let key = run_ok(Command::new("openssl").args([
        "pkcs12",
        "-in",
        pfx.to_str().unwrap(),
        "-passin",
        &format!("pass:{password}"),
        "-nocerts",
        "-noenc",
    ]));
    let key_text = run_ok(
        Command::new("sh")
            .arg("-c")
            .arg(format!("echo '{key}' | openssl pkey -noout -text")),
    );
    assert!(key_text.contains("Private-Key: (2048 bit"), "{key_text}");

    // The same idempotency key returns the same job, and the password is gone.
    let again = daemon.cli(&bob);
    let again = String::from_utf8_lossy(&again.stdout).into_owned();
    assert!(
        again.contains("already handed out and is not kept"),
        "{again}"
    );
    let db = rusqlite::Connection::open(dir.path().join("data/journal.sqlite")).unwrap();
    let held: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM outbox WHERE password IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(held, 0, "no copy of the password is kept");
    let jobs: i64 = db
        .query_row("SELECT COUNT(*) FROM jobs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(jobs, 1);
    // Nothing in the daemon's log gives the password away.
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    assert!(!log.contains(&password), "the password appears in the log");
}

#[test]
fn a_compat_profile_delivers_a_3des_pfx_for_older_devices() {
    let dir = tempfile::tempdir().unwrap();
    let extra = "[profiles.legacy]\nbackend = \"local\"\nkey_algorithm = \"rsa-2048\"\npfx_format = \"compat\"\n";
    let daemon = start_in(dir.path(), |data| config_text(data, &plugins(), extra));
    let pfx = dir.path().join("old.pfx");
    let password = issue_pfx(&daemon, "legacy", "CN=Old Phone", &pfx);
    let text = openssl_pkcs12_info(&pfx, &password);
    assert!(
        text.contains("MAC: sha1") && text.contains("pbeWithSHA1And3-KeyTripleDES-CBC"),
        "{text}"
    );
}

/// PEM as other tools write it: base64 in 76-column lines (Java, .NET), CRLF line ends and
/// trailing spaces. A device's CSR and a recipient certificate in that form are read like
/// OpenSSL's 64-column LF files.
#[test]
fn pem_with_76_column_lines_crlf_and_trailing_spaces_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_default(dir.path());
    let rewrap = |path: &std::path::Path| {
        let text = std::fs::read_to_string(path).unwrap();
        let mut out = String::new();
        let mut b64 = String::new();
        for line in text.lines() {
            if line.starts_with("-----BEGIN") {
                out.push_str(line);
                out.push_str("\r\n");
            } else if line.starts_with("-----END") {
                for chunk in b64.as_bytes().chunks(76) {
                    out.push_str(std::str::from_utf8(chunk).unwrap());
                    out.push_str("  \r\n");
                }
                b64.clear();
                out.push_str(line);
                out.push_str("\r\n");
            } else {
                b64.push_str(line.trim());
            }
        }
        let rewrapped = path.with_extension("76.pem");
        std::fs::write(&rewrapped, out).unwrap();
        rewrapped
    };
    // A device with its own key: a CSR from openssl, rewrapped.
    let key = dir.path().join("device.key");
    let csr = dir.path().join("device.csr");
    run_ok(Command::new("openssl").args([
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=wrapped-device",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        csr.to_str().unwrap(),
    ]));
    let cert = dir.path().join("device.cert.pem");
    let out = daemon.cli(&[
        "submit",
        "issue",
        "--profile",
        "smime",
        "--csr",
        rewrap(&csr).to_str().unwrap(),
        "--out",
        cert.to_str().unwrap(),
    ]);
    ok(out);
    let subject = run_ok(Command::new("openssl").args([
        "x509",
        "-noout",
        "-subject",
        "-in",
        cert.to_str().unwrap(),
    ]));
    assert!(subject.contains("wrapped-device"), "{subject}");
    // A recipient certificate the same way.
    let (_, recipient) = openssl_device(dir.path());
    let pfx = dir.path().join("sealed.pfx");
    ok(daemon.cli(&[
        "submit",
        "issue",
        "--profile",
        "smime",
        "--subject",
        "CN=sealed",
        "--recipient",
        rewrap(&recipient).to_str().unwrap(),
        "--out",
        pfx.to_str().unwrap(),
    ]));
    assert!(dir.path().join("sealed.pfx.password.cms").exists());
}
