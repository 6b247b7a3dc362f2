//! `certconn bench --pki`: the PKI building blocks on their own, one thread, per second.
//! PFX write and read (modern vs compat), sealing the password for a device (RSA-OAEP,
//! RSA-PKCS#1, ECDH P-256), and custody's private-key operations on the software store.

use std::time::Instant;

use anyhow::Context;

use crate::crypto::provider::{self, Padding};
use crate::crypto::AlgorithmPolicy;
use crate::custody::{KeyAlgorithm, PrivateKey};
use crate::pki::cms::{self, KeyTransport};
use crate::pki::pkcs12::{self, PfxContents, PfxProfile};

/// Runs `f` `n` times; returns operations per second.
fn rate(n: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    f()?; // warm-up
    let t = Instant::now();
    for _ in 0..n {
        f()?;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

fn line(what: &str, per_second: f64) {
    println!("{what:<58} {per_second:>10.1} /s");
}

pub fn run(n: usize) -> anyhow::Result<()> {
    let policy = AlgorithmPolicy::default();
    println!("certconn bench --pki: {n} operations each, one thread");
    let key = PrivateKey::generate(KeyAlgorithm::Rsa2048)?;
    let subject: x509_cert::name::Name = "CN=bench".parse()?;
    let cert = crate::pki::ca::self_signed(&key, &subject, 1)?;
    let contents = PfxContents {
        key_pkcs8: key.pkcs8_der(),
        certificate: &cert,
        chain: &[],
        friendly_name: Some("bench"),
    };
    for (name, profile) in [
        ("modern (PBES2 AES-256, HMAC-SHA256)", PfxProfile::Modern),
        ("compat (3DES, HMAC-SHA1)", PfxProfile::Compat),
    ] {
        let w = rate(n, || {
            Ok(pkcs12::write(
                &contents,
                "bench-password",
                pkcs12::DEFAULT_ITERATIONS,
                profile,
                &policy,
            )
            .map(drop)?)
        })?;
        let pfx = pkcs12::write(
            &contents,
            "bench-password",
            pkcs12::DEFAULT_ITERATIONS,
            profile,
            &policy,
        )?;
        let r = rate(n, || {
            Ok(pkcs12::open(&pfx, "bench-password", &policy).map(drop)?)
        })?;
        line(&format!("PFX write, {name}, 2048 iterations"), w);
        line(&format!("PFX read,  {name}, 2048 iterations"), r);
    }

    let secret = b"a 24-character password";
    for (name, recipient_alg, transport) in [
        (
            "seal for RSA-2048 device (RSA-OAEP-SHA256, AES-256)",
            KeyAlgorithm::Rsa2048,
            KeyTransport::RsaOaep,
        ),
        (
            "seal for RSA-2048 device (RSA-PKCS1, AES-256)",
            KeyAlgorithm::Rsa2048,
            KeyTransport::RsaPkcs1,
        ),
        (
            "seal for EC P-256 device (ECDH, AES-256 wrap)",
            KeyAlgorithm::EcP256,
            KeyTransport::RsaOaep,
        ),
    ] {
        let device = PrivateKey::generate(recipient_alg)?;
        let device_cert = crate::pki::ca::self_signed(&device, &subject, 1)?;
        line(
            name,
            rate(n, || {
                Ok(cms::seal_for(&device_cert, secret, transport).map(drop)?)
            })?,
        );
    }

    for (name, alg) in [
        (
            "custody sign, EC P-256 (software store)",
            KeyAlgorithm::EcP256,
        ),
        (
            "custody sign, RSA-2048 (software store)",
            KeyAlgorithm::Rsa2048,
        ),
    ] {
        let k = PrivateKey::generate(alg)?;
        let scheme = k.kind().default_signature_scheme();
        line(
            name,
            rate(n, || Ok(k.sign(scheme, b"message to sign").map(drop)?))?,
        );
    }
    let ct = provider::rsa_encrypt(key.public_key_der(), Padding::OaepSha512, b"pfx password")
        .context("encrypt")?;
    line(
        "custody RSA-OAEP-SHA512 decrypt, RSA-2048 (software store)",
        rate(n, || Ok(key.decrypt(Padding::OaepSha512, &ct).map(drop)?))?,
    );
    println!(
        "custody on a PKCS#11 token (SoftHSM2): not measured — the PKCS#11 store is not built yet"
    );
    Ok(())
}
