//! Every sealing variant is read by `openssl cms -decrypt` with the recipient's key.

use crate::common;

use std::process::Command;

use certconn::pki::cms::{seal_for, KeyTransport};
use certconn::pki::pem;
use common::{openssl_self_signed, run_ok};

#[test]
fn openssl_decrypts_oaep_pkcs1_and_ecdh_envelopes() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Vec<&str>, KeyTransport, &str)> = vec![
        (
            "rsa-oaep",
            vec!["-newkey", "rsa:2048"],
            KeyTransport::RsaOaep,
            "rsaesOaep",
        ),
        (
            "rsa-pkcs1",
            vec!["-newkey", "rsa:3072"],
            KeyTransport::RsaPkcs1,
            "rsaEncryption",
        ),
        (
            "ec-p256",
            vec!["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
            KeyTransport::RsaOaep,
            "dhSinglePass-stdDH-sha256kdf-scheme",
        ),
        (
            "ec-p384",
            vec!["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"],
            KeyTransport::RsaOaep,
            "dhSinglePass-stdDH-sha384kdf-scheme",
        ),
    ];
    for (name, newkey, transport, algorithm) in cases {
        let (key, cert) = openssl_self_signed(dir.path(), name, &newkey);
        let der = pem::certificate_from_pem_or_der(&std::fs::read(&cert).unwrap()).unwrap();
        let secret = format!("the PFX password for {name}");
        let sealed =
            seal_for(&der, secret.as_bytes(), transport).unwrap_or_else(|e| panic!("{name}: {e}"));
        let path = dir.path().join(format!("{name}.cms"));
        std::fs::write(&path, &sealed).unwrap();
        let plain = run_ok(
            Command::new("openssl")
                .args(["cms", "-decrypt", "-inform", "DER", "-in"])
                .arg(&path)
                .arg("-recip")
                .arg(&cert)
                .arg("-inkey")
                .arg(&key),
        );
        assert_eq!(plain, secret, "{name}");
        let structure = run_ok(
            Command::new("openssl")
                .args(["cms", "-cmsout", "-print", "-inform", "DER", "-in"])
                .arg(&path),
        );
        assert!(
            structure.contains(algorithm),
            "{name}: {algorithm} not in\n{structure}"
        );
        assert!(structure.contains("aes-256-cbc"), "{name}");
    }
}

#[test]
fn unsupported_recipients_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    for (name, newkey, needle) in [
        ("weak", vec!["-newkey", "rsa:1024"], "RSA-1024"),
        ("ed", vec!["-newkey", "ed25519"], "1.3.101.112"),
    ] {
        let (_, cert) = openssl_self_signed(dir.path(), name, &newkey);
        let der = pem::certificate_from_pem_or_der(&std::fs::read(&cert).unwrap()).unwrap();
        let err = seal_for(&der, b"x", KeyTransport::RsaOaep)
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{name}: {err}");
    }
}
