//! SCEP messages from other implementations, read by the shared `certconn-scep` code with the
//! host's crypto: a CertRep captured from a real Microsoft NDES (no certificates; its signature
//! verifies only with the RA certificate from GetCACert), an Apple device's PKCSReq (3DES,
//! RSA-1024, SHA-1) and micromdm's answer, and cryptlib's samples (jscep).

use crate::common;

use std::path::PathBuf;
use std::process::Command;

use certconn::crypto::AlgorithmPolicy;
use certconn::custody::PrivateKey;
use certconn::pki::pem;
use certconn::sources::scep::adapter::{CustodyIdentity, HostCrypto};
use certconn_scep::{envelope, message, MessageType, PkiStatus};
use common::*;
use zeroize::Zeroizing;

fn data(name: &str) -> PathBuf {
    repo_root().join("runtime/tests/data/scep").join(name)
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(data(name)).unwrap()
}

fn pem_cert(name: &str) -> Vec<u8> {
    let text = std::fs::read_to_string(data(name)).unwrap();
    pem::decode_all(&text).unwrap().remove(0).1
}

fn crypto() -> HostCrypto {
    HostCrypto {
        policy: AlgorithmPolicy::default(),
    }
}

#[test]
fn ndes_cert_rep_verifies_only_with_the_ra_certificate() {
    let rep = read("micromdm/scep_testdata_testca2_CertRep_NoCertificatesForSigners.der");
    let ra = pem_cert("micromdm/scep_testdata_testca2_ca2.pem");
    let msg =
        message::verify(&crypto(), &rep, std::slice::from_ref(&ra)).expect("NDES CertRep verifies");
    assert_eq!(msg.message_type, MessageType::CertRep);
    assert_eq!(msg.pki_status, Some(PkiStatus::Success));
    assert_eq!(msg.transaction_id, "HVvzN0228V+AW+dUuDe8OPyDXD0=");
    assert!(msg.certificates.is_empty(), "NDES sends no certificates");
    assert_eq!(msg.signer, ra);
    assert!(msg.content.is_some());

    let e = message::verify(&crypto(), &rep, &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("neither in the message nor known"), "{e}");

    // One flipped bit in the signature (the last bytes of the message) is caught.
    let mut bad = rep.clone();
    let n = bad.len();
    bad[n - 5] ^= 0x01;
    let e = message::verify(&crypto(), &bad, &[ra])
        .unwrap_err()
        .to_string();
    assert!(e.contains("signature"), "{e}");
}

#[test]
fn apple_pkcs_req_opens_with_the_ca_key_and_micromdm_answer_verifies() {
    let req = read("micromdm/scep_testdata_PKCSReq.der");
    let msg =
        message::verify(&crypto(), &req, &[]).expect("PKCSReq verifies with its own certificate");
    assert_eq!(msg.message_type, MessageType::PkcsReq);
    assert_eq!(
        msg.transaction_id,
        "A13090761A30F66664F85D37433D2065E1112BA1"
    );

    let dir = tempfile::tempdir().unwrap();
    let pkcs8 = dir.path().join("ca.p8");
    run_ok(
        Command::new("openssl")
            .args([
                "pkcs8", "-topk8", "-nocrypt", "-passin", "pass:", "-outform", "DER", "-in",
            ])
            .arg(data("micromdm/scep_testdata_testca_ca.key"))
            .arg("-out")
            .arg(&pkcs8),
    );
    let key = PrivateKey::from_pkcs8(Zeroizing::new(std::fs::read(&pkcs8).unwrap())).unwrap();
    let ca = pem_cert("micromdm/scep_testdata_testca_ca.pem");
    let identity = CustodyIdentity {
        key: &key,
        certificate: &ca,
    };
    let (csr, opened) = envelope::open(&crypto(), &identity, msg.content.as_deref().unwrap())
        .expect("envelope opens");
    assert_eq!(opened.cipher, certconn_scep::Cipher::DesEde3Cbc);
    // openssl, an independent implementation, finds the same CSR inside.
    let env = dir.path().join("env.der");
    let want = dir.path().join("csr.der");
    run_ok(
        Command::new("openssl")
            .args(["cms", "-verify", "-noverify", "-inform", "DER", "-in"])
            .arg(data("micromdm/scep_testdata_PKCSReq.der"))
            .arg("-out")
            .arg(&env),
    );
    run_ok(
        Command::new("openssl")
            .args([
                "cms", "-decrypt", "-inform", "DER", "-passin", "pass:", "-in",
            ])
            .arg(&env)
            .arg("-inkey")
            .arg(data("micromdm/scep_testdata_testca_ca.key"))
            .arg("-out")
            .arg(&want),
    );
    assert_eq!(csr, std::fs::read(&want).unwrap());

    // The envelope is for the CA: another key is told "wrong recipient", not a crypto error.
    let other = PrivateKey::generate(certconn::custody::KeyAlgorithm::Rsa2048).unwrap();
    let ra = pem_cert("micromdm/scep_testdata_testca2_ca2.pem");
    let e = envelope::open(
        &crypto(),
        &CustodyIdentity {
            key: &other,
            certificate: &ra,
        },
        msg.content.as_deref().unwrap(),
    )
    .unwrap_err();
    assert!(matches!(e, certconn_scep::Error::WrongRecipient(_)), "{e}");

    let rep = read("micromdm/scep_testdata_CertRep.der");
    let rep = message::verify(&crypto(), &rep, &[]).expect("micromdm CertRep verifies");
    assert_eq!(rep.message_type, MessageType::CertRep);
    assert_eq!(rep.pki_status, Some(PkiStatus::Success));
}

#[test]
fn cryptlib_samples_verify() {
    // cryptlib's test client key is RSA-1536 with SHA-256: refused with the reason, not
    // reported as a bad signature. (`openssl cms -verify` accepts it; certconn's floor is 2048.)
    for name in ["jscep/scep_req2.der", "jscep/scep_resp2.der"] {
        let e = message::verify(&crypto(), &read(name), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("RSA-1536") && e.contains("2048"), "{name}: {e}");
    }
    // The CertRep's innermost layer is a certs-only bag, leaf first.
    let certs = certconn_scep::certs::parse_certs_only(&read("jscep/scep_resp0.der")).unwrap();
    assert!(!certs.is_empty());
    let leaf = <x509_cert::Certificate as der::Decode>::from_der(&certs[0]).unwrap();
    assert!(
        leaf.tbs_certificate
            .subject
            .to_string()
            .contains("Test SCEP PKI user"),
        "{}",
        leaf.tbs_certificate.subject
    );
    // Truncated anywhere: an error naming what was wrong, never a panic.
    let whole = read("jscep/scep_req2.der");
    for cut in (0..whole.len()).step_by(97) {
        let e = message::verify(&crypto(), &whole[..cut], &[]).unwrap_err();
        assert!(!e.to_string().is_empty());
    }
}
