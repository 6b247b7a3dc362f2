//! `certconn keys`: create, list, export, import (PKCS#8 and PFX) and delete, offline.

use crate::common;

use std::os::unix::fs::OpenOptionsExt;
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

/// An EC P-256 private key made by openssl (PKCS#8 PEM) at `path`.
fn openssl_ec_key(path: &std::path::Path) -> std::path::PathBuf {
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
            .arg(path),
    );
    path.to_owned()
}

#[test]
fn keys_are_administered_offline_and_read_through_the_daemon_while_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");

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
    let ec = openssl_ec_key(&dir.path().join("ec.pem"));
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

    // Import a Windows-exported PFX: key and certificate come in together. Without its
    // password in the environment, the variable is named (not "wrong password").
    let pfx = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/pkcs12/ValidCertificatePathTest1EE_windows_aes.p12.pfx");
    let out = Command::new(binary())
        .arg("--config")
        .arg(&config)
        .args(["keys", "import", "archived", "--pfx"])
        .arg(&pfx)
        .env_remove("CERTCONN_PFX_PASSWORD")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("the environment variable CERTCONN_PFX_PASSWORD, which is not set"),
        "{err}"
    );
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

    // While the daemon owns the data directory, keys commands that change the store refuse;
    // list and export-public, which change nothing, the daemon answers: the same as offline.
    let daemon = Daemon::start(&config, &dir.path().join("daemon.log"));
    let out = keys(&config, &["create", "while-serving"]);
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("in use by another certconn"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = ok(keys(&config, &["list"]));
    let listed_json = ok(keys(&config, &["list", "--json"]));
    assert!(
        listed.contains("local-ca") && !listed.contains("while-serving"),
        "{listed}"
    );
    let answered = ok(keys(&config, &["export-public", "local-ca"]));
    let out = keys(&config, &["export-public", "nosuch"]);
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("key \"nosuch\" does not exist"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(daemon);
    assert_eq!(ok(keys(&config, &["export-public", "local-ca"])), answered);
    assert_eq!(ok(keys(&config, &["list"])), listed);
    assert_eq!(ok(keys(&config, &["list", "--json"])), listed_json);
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

/// `certconn keys import` reads a private key, and a crash while it holds one must not write
/// it to a core file: by the time it reads the key its core limit is 0 (and it is not
/// dumpable), though it was started with cores allowed; `custody.allow_core_dumps` gives them
/// back. The key comes through a FIFO, so the command is caught holding it open.
#[test]
fn a_key_is_read_by_a_process_that_writes_no_core_file() {
    let dir = tempfile::tempdir().unwrap();
    let key = openssl_ec_key(&dir.path().join("ec.pem"));
    let pem = std::fs::read(&key).unwrap();
    for (name, custody, expected) in [
        ("denied", "", "0 0"),
        (
            "allowed",
            "[custody]\nallow_core_dumps = true\n",
            "unlimited unlimited",
        ),
    ] {
        let config = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &config,
            config_text(&dir.path().join(name), &plugins(), custody),
        )
        .unwrap();
        let fifo = dir.path().join(format!("{name}.fifo"));
        let path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: `mkfifo` reads the NUL-terminated path it is given.
        assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
        let mut child = Command::new("sh")
            .args(["-c", "ulimit -c unlimited && exec \"$@\"", "sh"])
            .arg(binary())
            .arg("--config")
            .arg(&config)
            .args(["keys", "import", "imported", "--pkcs8"])
            .arg(&fifo)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Opening the FIFO for writing succeeds once the command has opened it to read the key.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut writer = loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&fifo)
            {
                Ok(f) => break f,
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                    if let Some(status) = child.try_wait().unwrap() {
                        let out = child.wait_with_output().unwrap();
                        panic!(
                            "{name}: exited ({status}) before reading the key: {}",
                            String::from_utf8_lossy(&out.stderr)
                        );
                    }
                    assert!(std::time::Instant::now() < deadline, "{name}: never read");
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => panic!("{name}: {e}"),
            }
        };
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
        let core = limits
            .lines()
            .find(|l| l.starts_with("Max core file size"))
            .map(|l| {
                l.split_whitespace()
                    .skip(4)
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap();
        std::io::Write::write_all(&mut writer, &pem).unwrap();
        drop(writer);
        let out = child.wait_with_output().unwrap();
        ok(out);
        assert_eq!(
            core, expected,
            "{name}: the core limit while it read the key"
        );
    }
}
