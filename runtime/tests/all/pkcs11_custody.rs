//! Custody keys on a PKCS#11 token (SoftHSM2, a throwaway token per test): created by the CLI
//! and at first start, used by the local CA to sign, RSA-OAEP/PKCS#1 decryption checked against
//! ciphertexts made by `openssl`, and the private keys stay on the token (checked from outside
//! with `pkcs11-tool`).

use crate::common;

use std::ffi::OsString;
use std::process::Command;

use certconn::crypto::provider::{self, Padding};
use certconn::custody::{CustodyConfig, KeyAlgorithm, KeyLocation, KeyStore, Pkcs11Config};
use certconn_x509::SignatureScheme;
use common::*;

fn certconn(
    conf: &std::path::Path,
    config: &std::path::Path,
    args: &[&str],
) -> std::process::Output {
    Command::new(binary())
        .env("SOFTHSM2_CONF", conf)
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap()
}

/// A throwaway token labelled `token` in `dir`, and a config there (data in `dir/data`) whose
/// `[custody.pkcs11]` names the token `configured`: returns the `SOFTHSM2_CONF` path, the PIN
/// file and the config.
fn token_and_config(
    dir: &std::path::Path,
    token: &str,
    configured: &str,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let (conf, pin_file) = softhsm_token(dir, token);
    let config = dir.join("certconn.toml");
    std::fs::write(
        &config,
        config_text(
            &dir.join("data"),
            &plugins(),
            &softhsm_custody(configured, &pin_file),
        ),
    )
    .unwrap();
    (conf, pin_file, config)
}

/// `pkcs11-tool -O` over the token: what an outside tool sees of our objects.
fn token_objects(conf: &std::path::Path, label: &str, pin_file: &std::path::Path) -> String {
    let pin = std::fs::read_to_string(pin_file).unwrap();
    run_ok(
        Command::new("pkcs11-tool")
            .env("SOFTHSM2_CONF", conf)
            .args([
                "--module",
                SOFTHSM_MODULE,
                "--token-label",
                label,
                "--login",
                "--pin",
            ])
            .arg(pin.trim())
            .arg("-O"),
    )
}

#[test]
fn token_keys_sign_certificates_and_never_leave_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let (conf, pin_file) = softhsm_token(dir.path(), "certconn-ca");
    let config = dir.path().join("certconn.toml");
    let text = config_text(
        &dir.path().join("data"),
        &plugins(),
        &softhsm_custody("certconn-ca", &pin_file),
    )
    .replace(
        "algorithm = \"ec-p256\"\nself_signed",
        "algorithm = \"ec-p256\"\nstore = \"pkcs11\"\nself_signed",
    );
    assert!(text.contains("store = \"pkcs11\""));
    std::fs::write(&config, text).unwrap();

    // A key made by the CLI, and one listing later the CA key made at first start.
    let created = ok(certconn(
        &conf,
        &config,
        &[
            "keys",
            "create",
            "pfx-decrypt",
            "--alg",
            "rsa-3072",
            "--store",
            "pkcs11",
        ],
    ));
    assert!(
        created.contains("RSA-3072 on PKCS#11 token \"certconn-ca\""),
        "{created}"
    );

    let env: Vec<(String, OsString)> = vec![("SOFTHSM2_CONF".into(), conf.clone().into())];
    let mut daemon = Daemon::start_with_env(&config, &dir.path().join("daemon.log"), env);
    let pfx = dir.path().join("device.pfx");
    let password = issue_pfx(&daemon, "smime", "CN=hsm device", &pfx);
    daemon.stop();

    // The issued certificate verifies against the CA certificate the token key signed.
    let leaf = dir.path().join("leaf.pem");
    run_ok(
        Command::new("openssl")
            .args(["pkcs12", "-nokeys", "-clcerts", "-passin"])
            .arg(format!("pass:{password}"))
            .arg("-in")
            .arg(&pfx)
            .arg("-out")
            .arg(&leaf),
    );
    let ca = dir.path().join("data/keys/local-ca.chain.pem");
    let verified = run_ok(
        Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(&ca)
            .arg(&leaf),
    );
    assert!(verified.contains(": OK"), "{verified}");

    let listed = ok(certconn(&conf, &config, &["keys", "list"]));
    for name in ["local-ca", "pfx-decrypt"] {
        let line = listed
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} not listed: {listed}"));
        assert!(line.contains("pkcs11:certconn-ca"), "{line}");
    }
    // Nothing but the records is on disk, and the token says the keys are not extractable.
    let keys_dir = dir.path().join("data/keys");
    assert!(!keys_dir.join("local-ca.key").exists());
    let record = std::fs::read_to_string(keys_dir.join("local-ca.p11")).unwrap();
    assert!(record.contains("\"token\": \"certconn-ca\""), "{record}");
    let objects = token_objects(&conf, "certconn-ca", &pin_file);
    let private: Vec<&str> = objects.split("Private Key Object").skip(1).collect();
    assert_eq!(private.len(), 2, "{objects}");
    for p in &private {
        assert!(
            p.contains("sensitive") && p.contains("never extractable"),
            "{p}"
        );
    }

    // Deleting a token key destroys it on the token.
    ok(certconn(
        &conf,
        &config,
        &["keys", "delete", "pfx-decrypt", "--yes"],
    ));
    let objects = token_objects(&conf, "certconn-ca", &pin_file);
    assert_eq!(
        objects.matches("Private Key Object").count(),
        1,
        "{objects}"
    );
    assert!(!objects.contains("pfx-decrypt"), "{objects}");

    // A wrong PIN stops everything with a clear error and changes nothing.
    let before = std::fs::read(keys_dir.join("local-ca.p11")).unwrap();
    std::fs::write(&pin_file, "not-the-pin").unwrap();
    let out = certconn(&conf, &config, &["keys", "list"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("certconn-ca") && err.contains("PIN is incorrect"),
        "{err}"
    );
    assert!(!err.contains("not-the-pin"), "the PIN leaked: {err}");
    assert_eq!(
        std::fs::read(keys_dir.join("local-ca.p11")).unwrap(),
        before
    );

    // A store that has token keys but no token configured says so.
    std::fs::write(
        &config,
        std::fs::read_to_string(&config)
            .unwrap()
            .split("[custody.pkcs11]")
            .next()
            .unwrap()
            .replace("store = \"pkcs11\"\n", ""),
    )
    .unwrap();
    let out = certconn(&conf, &config, &["keys", "list"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("custody.pkcs11 is not configured"),
        "{err}"
    );
}

#[test]
fn token_rsa_decrypts_what_openssl_encrypts_with_every_padding_and_signs_every_scheme() {
    let Some(dir) = alone_with_softhsm(
        "pkcs11_custody::token_rsa_decrypts_what_openssl_encrypts_with_every_padding_and_signs_every_scheme",
    ) else {
        return;
    };
    let (conf, pin_file) = softhsm_token(&dir, "certconn-dec");
    assert_eq!(
        std::env::var_os("SOFTHSM2_CONF"),
        Some(conf.into_os_string())
    );
    let custody = CustodyConfig {
        protection: Default::default(),
        pkcs11: Some(Pkcs11Config {
            module: SOFTHSM_MODULE.into(),
            token_label: "certconn-dec".into(),
            pin_env: "UNUSED".into(),
            pin_file: Some(pin_file.into()),
            pin_credential: None,
        }),
        allow_core_dumps: false,
    };
    let store = KeyStore::open(&dir.join("keys"), &custody).unwrap();
    let rsa = store
        .create("dec", KeyAlgorithm::Rsa2048, KeyLocation::Pkcs11)
        .unwrap();
    assert!(
        rsa.key.pkcs8_der().is_err(),
        "a token key exported its PKCS#8"
    );
    let public = dir.join("dec.pub.pem");
    std::fs::write(
        &public,
        certconn::pki::pem::encode("PUBLIC KEY", rsa.key.public_key_der()),
    )
    .unwrap();
    let plaintext = dir.join("secret.txt");
    std::fs::write(&plaintext, "pfx password 0123456789").unwrap();

    for (padding, opts) in [
        (
            Padding::OaepSha512,
            &[
                "rsa_padding_mode:oaep",
                "rsa_oaep_md:sha512",
                "rsa_mgf1_md:sha512",
            ][..],
        ),
        (
            Padding::OaepSha384,
            &[
                "rsa_padding_mode:oaep",
                "rsa_oaep_md:sha384",
                "rsa_mgf1_md:sha384",
            ][..],
        ),
        (
            Padding::OaepSha256,
            &[
                "rsa_padding_mode:oaep",
                "rsa_oaep_md:sha256",
                "rsa_mgf1_md:sha256",
            ][..],
        ),
        (Padding::OaepSha1, &["rsa_padding_mode:oaep"][..]),
        (Padding::Pkcs1, &["rsa_padding_mode:pkcs1"][..]),
    ] {
        let ct_path = dir.join("ct.bin");
        let mut cmd = Command::new("openssl");
        cmd.args(["pkeyutl", "-encrypt", "-pubin", "-inkey"])
            .arg(&public)
            .arg("-in")
            .arg(&plaintext)
            .arg("-out")
            .arg(&ct_path);
        for o in opts {
            cmd.args(["-pkeyopt", o]);
        }
        run_ok(&mut cmd);
        let mut ct = std::fs::read(&ct_path).unwrap();
        let plain = rsa
            .key
            .decrypt(padding, &ct)
            .unwrap_or_else(|e| panic!("{padding:?}: {e}"));
        assert_eq!(&plain[..], b"pfx password 0123456789", "{padding:?}");
        ct[17] ^= 1;
        assert!(
            rsa.key.decrypt(padding, &ct).is_err(),
            "{padding:?}: a corrupt ciphertext decrypted"
        );
    }
    // The host's own encryption decrypts on the token too (the path the import flow takes).
    let ct = provider::rsa_encrypt(rsa.key.public_key_der(), Padding::OaepSha512, b"x").unwrap();
    assert_eq!(
        &rsa.key.decrypt(Padding::OaepSha512, &ct).unwrap()[..],
        b"x"
    );
    assert!(rsa.key.decrypt(Padding::OaepSha256, &ct).is_err());

    for scheme in [
        SignatureScheme::RsaPkcs1Sha256,
        SignatureScheme::RsaPkcs1Sha384,
        SignatureScheme::RsaPkcs1Sha512,
        SignatureScheme::RsaPssSha256,
    ] {
        let sig = rsa.key.sign(scheme, b"tbs").unwrap();
        assert!(
            provider::verify(rsa.key.public_key_der(), scheme, b"tbs", &sig).unwrap(),
            "{scheme:?}"
        );
        assert!(!provider::verify(rsa.key.public_key_der(), scheme, b"tbz", &sig).unwrap());
    }
    for (alg, scheme) in [
        (KeyAlgorithm::EcP256, SignatureScheme::EcdsaP256Sha256),
        (KeyAlgorithm::EcP384, SignatureScheme::EcdsaP384Sha384),
    ] {
        let name = format!("ec-{alg}");
        let ec = store.create(&name, alg, KeyLocation::Pkcs11).unwrap();
        for _ in 0..20 {
            // Repeated: r or s with a high bit or a leading zero byte must still encode right.
            let sig = ec.key.sign(scheme, b"tbs").unwrap();
            assert!(
                provider::verify(ec.key.public_key_der(), scheme, b"tbs", &sig).unwrap(),
                "{scheme:?}"
            );
        }
        assert!(ec
            .key
            .sign(SignatureScheme::RsaPkcs1Sha256, b"tbs")
            .is_err());
        assert!(ec.key.decrypt(Padding::OaepSha256, b"ct").is_err());
    }
    // Reopening finds every key again by its record.
    drop(rsa);
    drop(store);
    let again = KeyStore::open(&dir.join("keys"), &custody).unwrap();
    let names: Vec<String> = again.list().into_iter().map(|k| k.name).collect();
    assert_eq!(names, ["dec", "ec-ec-p256", "ec-ec-p384"]);
}

/// `certconn keys migrate NAME --to pkcs11` moves an existing software CA key onto the token
/// (sensitive, not extractable): the CA keeps its certificate and goes on signing, and no key
/// file is left.
#[test]
fn a_software_key_migrates_onto_the_token_and_goes_on_signing() {
    let dir = tempfile::tempdir().unwrap();
    let (conf, pin_file, config) = token_and_config(dir.path(), "migrate", "migrate");
    let env: Vec<(String, OsString)> = vec![("SOFTHSM2_CONF".into(), conf.clone().into())];
    // First start: the local CA key is made in software, with its certificate.
    let mut daemon = Daemon::start_with_env(&config, &dir.path().join("daemon.log"), env.clone());
    daemon.stop();
    let keys_dir = dir.path().join("data/keys");
    assert!(keys_dir.join("local-ca.key").exists());
    ok(certconn(
        &conf,
        &config,
        &["keys", "create", "archive", "--alg", "rsa-2048"],
    ));
    let before = ok(certconn(&conf, &config, &["keys", "list"]));

    for name in ["local-ca", "archive"] {
        let moved = ok(certconn(
            &conf,
            &config,
            &["keys", "migrate", name, "--to", "pkcs11"],
        ));
        assert!(
            moved.contains(&format!("moved {name} onto PKCS#11 token \"migrate\""))
                && moved.contains("destroy any copy"),
            "{moved}"
        );
        assert!(!keys_dir.join(format!("{name}.key")).exists());
        assert!(keys_dir.join(format!("{name}.p11")).exists());
    }
    let after = ok(certconn(&conf, &config, &["keys", "list"]));
    for name in ["local-ca", "archive"] {
        let line = |text: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("{name}: {text}"))
                .to_owned()
        };
        assert!(line(&after).contains("pkcs11:migrate"), "{after}");
        // Same public key: the fingerprint column did not change.
        let fp = |l: String| l.split_whitespace().last().unwrap().to_owned();
        assert_eq!(fp(line(&before)), fp(line(&after)));
    }
    let objects = token_objects(&conf, "migrate", &pin_file);
    let private: Vec<&str> = objects.split("Private Key Object").skip(1).collect();
    assert_eq!(private.len(), 2, "{objects}");
    for p in &private {
        // pkcs11-tool lists the key's access flags ("sensitive", "extractable", "never
        // extractable", ...): sensitive, and not extractable.
        let access: Vec<&str> = p
            .lines()
            .find_map(|l| l.trim().strip_prefix("Access:"))
            .unwrap_or_else(|| panic!("no Access line: {p}"))
            .split(',')
            .map(str::trim)
            .collect();
        assert!(access.contains(&"sensitive"), "{p}");
        assert!(!access.contains(&"extractable"), "{p}");
    }
    // Twice is refused with the reason.
    let out = certconn(
        &conf,
        &config,
        &["keys", "migrate", "local-ca", "--to", "pkcs11"],
    );
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("on this token already"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The CA signs on the token now, under the certificate it always had.
    let daemon = Daemon::start_with_env(&config, &dir.path().join("daemon.log"), env);
    let pfx = dir.path().join("after.pfx");
    let password = issue_pfx(&daemon, "smime", "CN=after migration", &pfx);
    let leaf = dir.path().join("leaf.pem");
    run_ok(
        Command::new("openssl")
            .args(["pkcs12", "-nokeys", "-clcerts", "-passin"])
            .arg(format!("pass:{password}"))
            .arg("-in")
            .arg(&pfx)
            .arg("-out")
            .arg(&leaf),
    );
    let verified = run_ok(
        Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(keys_dir.join("local-ca.chain.pem"))
            .arg(&leaf),
    );
    assert!(verified.contains(": OK"), "{verified}");
}

/// A token label SoftHSM2 does not have, in a token directory this process reads: the error
/// says where SoftHSM2 looked and which configuration sent it there (the usual cause is a
/// `SOFTHSM2_CONF` set for the command that made the token and not for certconn). The cases of
/// a configuration, token directory or token another user owns are in deb_package.rs, which
/// runs certconn as its own user.
#[test]
fn a_token_softhsm_does_not_have_is_named_with_where_it_looked() {
    let dir = tempfile::tempdir().unwrap();
    let (conf, _, config) = token_and_config(dir.path(), "certconn-here", "certconn-elsewhere");
    let out = certconn(&conf, &config, &["keys", "list"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    for said in [
        "PKCS#11 token \"certconn-elsewhere\": no initialised token with this label",
        &format!(
            "SoftHSM2 reads its tokens from {} (SOFTHSM2_CONF names {})",
            dir.path().join("softhsm-tokens").display(),
            conf.display()
        ),
    ] {
        assert!(err.contains(said), "{said:?} not in: {err}");
    }

    // Without SOFTHSM2_CONF, SoftHSM2 2.6 reads the user's own configuration first: the module
    // finds the token through it, and the error for the other label names it.
    let home = dir.path().join("home");
    let own = home.join(".config/softhsm2/softhsm2.conf");
    std::fs::create_dir_all(own.parent().unwrap()).unwrap();
    std::fs::copy(&conf, &own).unwrap();
    let without_conf = |config: &std::path::Path| {
        Command::new(binary())
            .env_remove("SOFTHSM2_CONF")
            .env("HOME", &home)
            .arg("--config")
            .arg(config)
            .args(["keys", "list"])
            .output()
            .unwrap()
    };
    let here = dir.path().join("here.toml");
    std::fs::write(
        &here,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("\"certconn-elsewhere\"", "\"certconn-here\""),
    )
    .unwrap();
    ok(without_conf(&here));
    let out = without_conf(&config);
    let err = String::from_utf8_lossy(&out.stderr);
    let said = format!(
        "SoftHSM2 reads its tokens from {} (SOFTHSM2_CONF is not set, and this user's own {} \
         can be read)",
        dir.path().join("softhsm-tokens").display(),
        own.display()
    );
    assert!(
        !out.status.success() && err.contains(&said),
        "{said:?} not in: {err}"
    );
}

/// The PIN from a systemd credential (`pin_credential`, `LoadCredential=NAME:FILE` in the
/// unit): read from `$CREDENTIALS_DIRECTORY/NAME`, as systemd hands it to the service; without
/// that directory, or with a PIN file as well, refused with the reason.
#[test]
fn the_pin_comes_from_a_systemd_credential() {
    let dir = tempfile::tempdir().unwrap();
    let (conf, pin_file) = softhsm_token(dir.path(), "certconn-cred");
    let credentials = dir.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    std::fs::copy(&pin_file, credentials.join("pkcs11-pin")).unwrap();
    let config = dir.path().join("certconn.toml");
    let custody = |pin: &str| {
        format!(
            "[custody.pkcs11]\nmodule = \"{SOFTHSM_MODULE}\"\ntoken_label = \"certconn-cred\"\n{pin}\n"
        )
    };
    let write = |pin: &str| {
        std::fs::write(
            &config,
            config_text(&dir.path().join("data"), &plugins(), &custody(pin)),
        )
        .unwrap()
    };
    let keys_create = |credentials_dir: Option<&std::path::Path>| {
        let mut cmd = Command::new(binary());
        cmd.env("SOFTHSM2_CONF", &conf)
            .env_remove("CREDENTIALS_DIRECTORY")
            .env_remove("CERTCONN_PKCS11_PIN")
            .arg("--config")
            .arg(&config)
            .args([
                "keys",
                "create",
                "from-cred",
                "--alg",
                "ec-p256",
                "--store",
                "pkcs11",
            ]);
        if let Some(d) = credentials_dir {
            cmd.env("CREDENTIALS_DIRECTORY", d);
        }
        cmd.output().unwrap()
    };

    write("pin_credential = \"pkcs11-pin\"");
    let out = keys_create(None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("custody.pkcs11.pin_credential")
            && err.contains("$CREDENTIALS_DIRECTORY is not set")
            && err.contains("LoadCredential=pkcs11-pin:FILE")
            && err.contains("systemd-run --pipe --wait"),
        "{err}"
    );
    write(&format!(
        "pin_credential = \"pkcs11-pin\"\npin_file = \"{}\"",
        pin_file.display()
    ));
    let out = keys_create(Some(&credentials));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("give the secret in one place"),
        "{err}"
    );
    write("pin_credential = \"pkcs11-pin\"");
    let created = ok(keys_create(Some(&credentials)));
    assert!(
        created.contains("EC P-256 on PKCS#11 token \"certconn-cred\""),
        "{created}"
    );
}
