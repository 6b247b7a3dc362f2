//! `certconn keys`: create, list, export, import (PKCS#8 and PFX) and delete, offline.

use crate::common;

use std::process::Command;

use common::*;

fn keys(config: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(binary())
        .arg("--config")
        .arg(config)
        .arg("keys")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn keys_are_administered_offline_and_never_while_the_daemon_runs() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("certconn.toml");
    std::fs::write(
        &config,
        config_text(&dir.path().join("data"), &plugins(), ""),
    )
    .unwrap();

    let created = ok(keys(&config, &["create", "signer", "--alg", "rsa-3072"]));
    assert!(created.contains("created signer: RSA-3072"), "{created}");
    let pem_path = dir.path().join("signer.pub.pem");
    std::fs::write(&pem_path, ok(keys(&config, &["export-public", "signer"]))).unwrap();
    let text = run_ok(
        Command::new("openssl")
            .args(["pkey", "-pubin", "-noout", "-text", "-in"])
            .arg(&pem_path),
    );
    assert!(text.contains("Public-Key: (3072 bit)"), "{text}");

    // Import an openssl-made EC key; its public half comes back out unchanged.
    let ec = dir.path().join("ec.pem");
    run_ok(
        Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
            ])
            .arg(&ec),
    );
    ok(keys(
        &config,
        &["import", "device-ca", "--pkcs8", ec.to_str().unwrap()],
    ));
    assert_eq!(
        ok(keys(&config, &["export-public", "device-ca"])),
        run_ok(
            Command::new("openssl")
                .args(["pkey", "-pubout", "-in"])
                .arg(&ec)
        )
    );

    // Import a Windows-exported PFX: key and certificate come in together.
    let pfx = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/pkcs12/ValidCertificatePathTest1EE_windows_aes.p12.pfx");
    let out = Command::new(binary())
        .arg("--config")
        .arg(&config)
        .args(["keys", "import", "archived", "--pfx"])
        .arg(&pfx)
        .env("CERTCONN_PFX_PASSWORD", "password")
        .output()
        .unwrap();
    ok(out);
    let list = ok(keys(&config, &["list"]));
    assert!(
        list.contains("archived")
            && list.contains("signer")
            && list.contains("device-ca")
            && !list.contains("local-ca"),
        "{list}"
    );
    let archived = list.lines().find(|l| l.starts_with("archived")).unwrap();
    assert!(
        archived.contains("RSA-2048") && archived.split_whitespace().nth(3).unwrap() != "0",
        "{archived}"
    );

    // Refusals say why.
    let enc = dir.path().join("enc.pem");
    run_ok(
        Command::new("openssl")
            .args(["pkcs8", "-topk8", "-passout", "pass:x", "-in"])
            .arg(&ec)
            .arg("-out")
            .arg(&enc),
    );
    let out = keys(
        &config,
        &["import", "other", "--pkcs8", enc.to_str().unwrap()],
    );
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("encrypted PKCS#8 is not supported")
    );
    let huge = dir.path().join("huge.pem");
    std::fs::write(&huge, vec![b'A'; 100 * 1024]).unwrap();
    let out = keys(
        &config,
        &["import", "other", "--pkcs8", huge.to_str().unwrap()],
    );
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr)
                .contains("is 102400 bytes; a secret file holds at most 65536"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = keys(&config, &["delete", "signer"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--yes"));
    ok(keys(&config, &["delete", "signer", "--yes"]));
    assert!(!ok(keys(&config, &["list"])).contains("signer"));

    // While the daemon owns the data directory, keys commands refuse.
    let daemon = Daemon::start(&config, &dir.path().join("daemon.log"));
    let out = keys(&config, &["list"]);
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("in use by another certconn"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(daemon);
}

/// A CA key carried to a second instance in a bundle: both hold the same key and certificate,
/// so either issues under the same CA; the bundle holds no readable key, and a wrong
/// passphrase imports nothing.
#[test]
fn a_key_bundle_carries_a_ca_key_to_another_instance() {
    let dir = tempfile::tempdir().unwrap();
    let setup = |name: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        let config = d.join("certconn.toml");
        std::fs::write(&config, config_text(&d.join("data"), &plugins(), "")).unwrap();
        config
    };
    let (a, b) = (setup("a"), setup("b"));
    // A's first start makes its CA key and certificate.
    let mut daemon = Daemon::start(&a, &dir.path().join("a.log"));
    daemon.stop();
    let bundle = dir.path().join("fleet-keys.json");
    let with_passphrase = |config: &std::path::Path, pass: &str, args: &[&str]| {
        Command::new(binary())
            .arg("--config")
            .arg(config)
            .arg("keys")
            .args(args)
            .env("CERTCONN_BUNDLE_PASSPHRASE", pass)
            .output()
            .unwrap()
    };
    let said = keys(
        &a,
        &[
            "export-bundle",
            "local-ca",
            "--out",
            bundle.to_str().unwrap(),
        ],
    );
    assert!(!said.status.success());
    assert!(
        String::from_utf8_lossy(&said.stderr).contains("CERTCONN_BUNDLE_PASSPHRASE"),
        "{said:?}"
    );
    ok(with_passphrase(
        &a,
        "fleet passphrase",
        &[
            "export-bundle",
            "local-ca",
            "--out",
            bundle.to_str().unwrap(),
        ],
    ));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&bundle).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let text = std::fs::read_to_string(&bundle).unwrap();
    assert!(!text.contains("PRIVATE KEY"), "{text}");

    let wrong = with_passphrase(&b, "not it", &["import-bundle", bundle.to_str().unwrap()]);
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("nothing was imported"),
        "{wrong:?}"
    );
    let imported = ok(with_passphrase(
        &b,
        "fleet passphrase",
        &["import-bundle", bundle.to_str().unwrap()],
    ));
    assert!(imported.contains("imported local-ca"), "{imported}");
    let listed = |config: &std::path::Path| -> serde_json::Value {
        let rows: serde_json::Value =
            serde_json::from_str(&ok(keys(config, &["list", "--json"]))).unwrap();
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "local-ca")
            .cloned()
            .unwrap()
    };
    assert_eq!(listed(&a)["spki_sha256"], listed(&b)["spki_sha256"]);
    assert_eq!(listed(&b)["certificates"], 1, "its certificate came along");
    // B starts on it: no new CA is made, and what B issues chains to A's CA certificate.
    let daemon = Daemon::start(&b, &dir.path().join("b.log"));
    let pfx = dir.path().join("b.pfx");
    let password = issue_pfx(&daemon, "smime", "CN=From B", &pfx);
    let pem = run_ok(Command::new("openssl").args([
        "pkcs12",
        "-in",
        pfx.to_str().unwrap(),
        "-nokeys",
        "-clcerts",
        "-passin",
        &format!("pass:{password}"),
    ]));
    let leaf = dir.path().join("leaf.pem");
    std::fs::write(&leaf, pem).unwrap();
    let ca = dir.path().join("a/data/keys/local-ca.chain.pem");
    let verified = run_ok(
        Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(&ca)
            .arg(&leaf),
    );
    assert!(verified.contains(": OK"), "{verified}");
}
