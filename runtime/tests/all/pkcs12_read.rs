//! Opening PFX files made by real products, and refusing bad ones quickly and clearly.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use certconn::crypto::AlgorithmPolicy;
use certconn::pki::pkcs12::{self, PfxError};

use crate::common;

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/pkcs12")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

const FIXTURES: &[(&str, &str, &str)] = &[
    (
        "ValidCertificatePathTest1EE_windows_aes.p12.pfx",
        "password",
        "AES-256-CBC",
    ),
    (
        "ValidCertificatePathTest1EE_windows_tdes.p12.pfx",
        "password",
        "pbeWithSHAAnd3-KeyTripleDES-CBC",
    ),
    (
        "ValidCertificatePathTest1EE_macos.p12",
        "password",
        "pbeWithSHAAnd40BitRC2-CBC",
    ),
    (
        "ValidCertificatePathTest1EE_firefox.p12",
        "password",
        "pbeWithSHAAnd3-KeyTripleDES-CBC",
    ),
    (
        "ValidCertificatePathTest1EE.p12",
        "password",
        "pbeWithSHAAnd3-KeyTripleDES-CBC",
    ),
    ("example.pfx", "", "AES-256-CBC"),
    ("example2.pfx", "1234", "AES-256-CBC"),
    (
        "test-3des-iter2048.p12",
        "hunter2",
        "pbeWithSHAAnd3-KeyTripleDES-CBC",
    ),
    (
        "test-rc2-128-iter2048.p12",
        "hunter2",
        "pbeWithSHAAnd128BitRC2-CBC",
    ),
    (
        "test-rc2-40-iter2048.p12",
        "hunter2",
        "pbeWithSHAAnd40BitRC2-CBC",
    ),
    (
        "pyca-cert-rc2-key-3des.p12",
        "cryptography",
        "pbeWithSHAAnd40BitRC2-CBC",
    ),
];

#[test]
fn every_vendor_fixture_yields_a_key_and_its_certificate() {
    let policy = AlgorithmPolicy::default();
    for (name, password, protection) in FIXTURES {
        let opened = pkcs12::open(&fixture(name), password, &policy)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!opened.keys.is_empty(), "{name}: no key");
        assert!(!opened.certificates.is_empty(), "{name}: no certificate");
        if name.starts_with("example") {
            // OpenSSL's examples carry RSA-1024 keys: read, but not taken into custody.
            let err = opened.key_and_certificate().unwrap_err().to_string();
            assert!(err.contains("smaller than 2048 bits"), "{name}: {err}");
        } else {
            let (key, cert) = opened
                .key_and_certificate()
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let cert = <x509_cert::Certificate as der::Decode>::from_der(&cert.der).unwrap();
            let spki = der::Encode::to_der(&cert.tbs_certificate.subject_public_key_info).unwrap();
            assert_eq!(
                spki,
                key.public_key_der(),
                "{name}: key and certificate match"
            );
        }

        assert!(
            opened.protections.iter().any(|p| p.contains(protection)),
            "{name}: expected {protection} among {:?}",
            opened.protections
        );
    }
}

#[test]
fn wrong_password_is_a_clear_error() {
    for (name, _, _) in FIXTURES {
        let err = pkcs12::open(
            &fixture(name),
            "not-the-password",
            &AlgorithmPolicy::default(),
        )
        .unwrap_err();
        assert!(matches!(err, PfxError::WrongPassword), "{name}: {err}");
        assert!(err.to_string().contains("wrong password"));
    }
}

#[test]
fn fips_policy_refuses_legacy_files_by_algorithm_name() {
    let fips = AlgorithmPolicy {
        fips: true,
        allow_single_des: false,
    };
    let err = pkcs12::open(&fixture("test-rc2-40-iter2048.p12"), "hunter2", &fips)
        .unwrap_err()
        .to_string();
    assert!(err.contains("RC2-CBC") && err.contains("FIPS"), "{err}");
    let err = pkcs12::open(&fixture("test-3des-iter2048.p12"), "hunter2", &fips)
        .unwrap_err()
        .to_string();
    assert!(err.contains("3DES") && err.contains("FIPS"), "{err}");
    // The modern file opens in FIPS mode.
    assert!(pkcs12::open(
        &fixture("ValidCertificatePathTest1EE_windows_aes.p12.pfx"),
        "password",
        &fips
    )
    .is_ok());
}

#[test]
fn absurd_iteration_counts_and_sizes_are_refused_at_once() {
    // Raise the MAC iteration count of a real file to 2^31-1 by rewriting its MacData.
    let mut pfx: pkcs12::Pfx = der::Decode::from_der(&fixture("test-3des-iter2048.p12")).unwrap();
    pfx.mac_data.as_mut().unwrap().iterations = i32::MAX;
    let bytes = der::Encode::to_der(&pfx).unwrap();
    let start = Instant::now();
    let err = pkcs12::open(&bytes, "hunter2", &AlgorithmPolicy::default()).unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "refused only after {:?}",
        start.elapsed()
    );
    assert!(matches!(err, PfxError::TooManyIterations { .. }), "{err}");

    let huge = vec![0x30u8; pkcs12::read::MAX_SIZE + 1];
    assert!(matches!(
        pkcs12::open(&huge, "", &AlgorithmPolicy::default()),
        Err(PfxError::TooLarge(_))
    ));
    let err = pkcs12::open(&[0x30, 0x03, 0x02, 0x01], "", &AlgorithmPolicy::default()).unwrap_err();
    assert!(matches!(err, PfxError::Malformed(_)), "{err}");
}

#[test]
fn our_own_pfx_round_trips() {
    use certconn::custody::{KeyAlgorithm, PrivateKey};
    let key = PrivateKey::generate(KeyAlgorithm::EcP256).unwrap();
    let subject: x509_cert::name::Name = "CN=round trip".parse().unwrap();
    let cert = certconn::pki::ca::self_signed(&key, &subject, 1).unwrap();
    let contents = pkcs12::PfxContents {
        key_pkcs8: key.pkcs8_der().unwrap(),
        certificate: &cert,
        chain: &[],
        friendly_name: Some("rt"),
    };
    let bytes = pkcs12::write(
        &contents,
        "pw",
        2048,
        pkcs12::PfxProfile::Modern,
        &AlgorithmPolicy::default(),
    )
    .unwrap();
    let opened = pkcs12::open(&bytes, "pw", &AlgorithmPolicy::default()).unwrap();
    let (k, c) = opened.key_and_certificate().unwrap();
    assert_eq!(k.public_key_der(), key.public_key_der());
    assert_eq!(c.der, cert);
    assert_eq!(c.friendly_name.as_deref(), Some("rt"));
    assert!(
        opened
            .protections
            .iter()
            .any(|p| p.contains("PBES2 PBKDF2-hmacWithSHA256 AES-256-CBC (2048 iterations)")),
        "{:?}",
        opened.protections
    );
}

#[test]
fn compat_profile_is_3des_with_a_sha1_mac_and_refused_in_fips_mode() {
    use certconn::custody::{KeyAlgorithm, PrivateKey};
    let key = PrivateKey::generate(KeyAlgorithm::Rsa2048).unwrap();
    let subject: x509_cert::name::Name = "CN=old device".parse().unwrap();
    let cert = certconn::pki::ca::self_signed(&key, &subject, 1).unwrap();
    let contents = pkcs12::PfxContents {
        key_pkcs8: key.pkcs8_der().unwrap(),
        certificate: &cert,
        chain: &[],
        friendly_name: None,
    };
    let bytes = pkcs12::write(
        &contents,
        "pw",
        2048,
        pkcs12::PfxProfile::Compat,
        &AlgorithmPolicy::default(),
    )
    .unwrap();
    let opened = pkcs12::open(&bytes, "pw", &AlgorithmPolicy::default()).unwrap();
    assert_eq!(
        opened.key_and_certificate().unwrap().0.public_key_der(),
        key.public_key_der()
    );
    assert!(
        opened.protections.iter().any(|p| p.contains("HMAC-SHA1")),
        "{:?}",
        opened.protections
    );
    assert_eq!(
        opened
            .protections
            .iter()
            .filter(|p| p.contains("pbeWithSHAAnd3-KeyTripleDES-CBC"))
            .count(),
        2
    );
    // openssl reads it too (3DES PBE is in OpenSSL 3's default provider).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("compat.p12");
    std::fs::write(&path, &bytes).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["pkcs12", "-info", "-noout", "-passin", "pass:pw", "-in"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("MAC: sha1") && text.contains("pbeWithSHA1And3-KeyTripleDES-CBC"),
        "{text}"
    );

    let fips = AlgorithmPolicy {
        fips: true,
        allow_single_des: false,
    };
    let err = pkcs12::write(&contents, "pw", 2048, pkcs12::PfxProfile::Compat, &fips)
        .unwrap_err()
        .to_string();
    assert!(err.contains("3DES") && err.contains("FIPS"), "{err}");
}

/// Exports a fresh EC key and self-signed certificate with OpenSSL's defaults (PBES2,
/// PBKDF2-HMAC-SHA256, AES-256-CBC) at `iterations` PBKDF2 iterations.
fn openssl_pfx(dir: &std::path::Path, iterations: u32) -> Vec<u8> {
    let (key, cert) = common::openssl_self_signed(
        dir,
        "device",
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    let pfx = dir.join(format!("iter{iterations}.p12"));
    common::run_ok(
        std::process::Command::new("openssl")
            .args(["pkcs12", "-export", "-passout", "pass:pw", "-iter"])
            .arg(iterations.to_string())
            .arg("-inkey")
            .arg(&key)
            .arg("-in")
            .arg(&cert)
            .arg("-out")
            .arg(&pfx),
    );
    std::fs::read(pfx).unwrap()
}

#[test]
fn fips_mode_reads_no_file_whose_pbkdf2_runs_fewer_than_1000_iterations() {
    let dir = tempfile::tempdir().unwrap();
    let fips = AlgorithmPolicy {
        fips: true,
        allow_single_des: false,
    };
    let few = openssl_pfx(dir.path(), 999);
    let err = pkcs12::open(&few, "pw", &fips).unwrap_err();
    assert!(matches!(err, PfxError::Crypto(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("PBKDF2 with 999 iterations") && text.contains("FIPS"),
        "{text}"
    );
    // The same file opens outside FIPS mode, and one at the bound opens in it.
    assert!(pkcs12::open(&few, "pw", &AlgorithmPolicy::default()).is_ok());
    let opened = pkcs12::open(&openssl_pfx(dir.path(), 1000), "pw", &fips).unwrap();
    assert!(
        opened
            .protections
            .iter()
            .any(|p| p.contains("PBKDF2-hmacWithSHA256 AES-256-CBC (1000 iterations)")),
        "{:?}",
        opened.protections
    );
}
