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
