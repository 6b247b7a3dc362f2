//! `certconn bench --pki`: the PKI building blocks on their own, one thread, per second.
//! PFX write and read (modern vs compat), sealing the password for a device (RSA-OAEP,
//! RSA-PKCS#1, ECDH P-256), and custody's private-key operations on the software store and,
//! with `--pkcs11`, on a PKCS#11 token.

use std::time::Instant;

use anyhow::Context;

use certconn::crypto::provider::{self, Padding};
use certconn::crypto::AlgorithmPolicy;
use certconn::custody::{
    softhsm, CustodyConfig, KeyAlgorithm, KeyLocation, KeyStore, Pkcs11Config, PrivateKey,
};
use certconn::pki::cms::{self, KeyTransport};
use certconn::pki::pkcs12::{self, PfxContents, PfxProfile};

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
    println!("{what:<66} {per_second:>10.1} /s");
}

/// Which token `--pkcs11` measures.
pub enum TokenChoice {
    /// A throwaway SoftHSM2 token made for the run.
    SoftHsm,
    /// The token `label` of an installed module.
    Module {
        module: std::path::PathBuf,
        label: String,
    },
}

impl TokenChoice {
    pub fn new(module: &str, label: &str) -> Self {
        if module == "softhsm" {
            Self::SoftHsm
        } else {
            Self::Module {
                module: module.into(),
                label: label.into(),
            }
        }
    }
}

/// Sets up the token and returns the custody config for it.
fn token_custody(choice: &TokenChoice, dir: &std::path::Path) -> anyhow::Result<CustodyConfig> {
    let (module, label, pin_file) = match choice {
        TokenChoice::Module { module, label } => (module.clone(), label.clone(), None),
        TokenChoice::SoftHsm => {
            let pin = hex::encode(provider::random_vec(8)?);
            let (conf, pin_file) = softhsm::throwaway_token(dir, "certconn-bench", &pin)
                .map_err(anyhow::Error::msg)?;
            // SoftHSM reads its configuration from the environment when the module starts. No
            // other thread runs at this moment (the bench's async task awaits this one, on a
            // runtime with nothing else to do), so no C code's `getenv` races this write.
            std::env::set_var("SOFTHSM2_CONF", &conf);
            (
                softhsm::MODULE.into(),
                "certconn-bench".to_owned(),
                Some(pin_file),
            )
        }
    };
    Ok(CustodyConfig {
        protection: Default::default(),
        pkcs11: Some(Pkcs11Config {
            module: module.into(),
            token_label: label,
            pin_env: "CERTCONN_PKCS11_PIN".into(),
            pin_file: pin_file.map(Into::into),
            pin_credential: None,
        }),
        allow_core_dumps: false,
    })
}

/// Custody sign and OAEP-decrypt on a token, beside the software figures.
fn bench_token(n: usize, choice: &TokenChoice) -> anyhow::Result<()> {
    let dir = tempfile_dir()?;
    let result = (|| {
        let custody = token_custody(choice, &dir)?;
        let store = KeyStore::open(&dir.join("keys"), &custody)?;
        let what = match choice {
            TokenChoice::SoftHsm => "SoftHSM2".to_owned(),
            TokenChoice::Module { label, .. } => format!("PKCS#11 token {label:?}"),
        };
        let run = || -> anyhow::Result<()> {
            for (name, alg) in [
                ("bench-ec-p256", KeyAlgorithm::EcP256),
                ("bench-rsa-2048", KeyAlgorithm::Rsa2048),
            ] {
                let k = store.create(name, alg, KeyLocation::Pkcs11)?;
                let scheme = k.key.kind().default_signature_scheme();
                line(
                    &format!("custody sign, {} ({what})", k.key.kind().describe()),
                    rate(n, || {
                        Ok(k.key.sign(scheme, b"message to sign").map(drop)?)
                    })?,
                );
                if alg == KeyAlgorithm::Rsa2048 {
                    let ct = provider::rsa_encrypt(
                        k.key.public_key_der(),
                        Padding::OaepSha512,
                        b"pfx password",
                    )?;
                    line(
                        &format!("custody RSA-OAEP-SHA512 decrypt, RSA-2048 ({what})"),
                        rate(n, || {
                            Ok(k.key.decrypt(Padding::OaepSha512, &ct).map(drop)?)
                        })?,
                    );
                }
            }
            Ok(())
        };
        let outcome = run();
        for name in ["bench-ec-p256", "bench-rsa-2048"] {
            let _ = store.remove(name);
        }
        outcome
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "certconn-bench-pkcs11-{}-{}",
        std::process::id(),
        hex::encode(provider::random_vec(4)?)
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

pub fn run(n: usize, token: Option<TokenChoice>) -> anyhow::Result<()> {
    let policy = AlgorithmPolicy::default();
    println!(
        "certconn bench --pki: {n} operations each, one thread, {}",
        certconn::crypto::fips::module_name()
    );
    let key = PrivateKey::generate(KeyAlgorithm::Rsa2048)?;
    let subject: x509_cert::name::Name = "CN=bench".parse()?;
    let cert = certconn::pki::ca::self_signed(&key, &subject, 1)?;
    let contents = PfxContents {
        key_pkcs8: key.pkcs8_der()?,
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
        let device_cert = certconn::pki::ca::self_signed(&device, &subject, 1)?;
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
    for (name, alg) in [
        ("device key made, EC P-256", KeyAlgorithm::EcP256),
        ("device key made, EC P-384", KeyAlgorithm::EcP384),
    ] {
        line(name, rate(n, || Ok(PrivateKey::generate(alg).map(drop)?))?);
    }
    let ct = provider::rsa_encrypt(key.public_key_der(), Padding::OaepSha512, b"pfx password")
        .context("encrypt")?;
    line(
        "custody RSA-OAEP-SHA512 decrypt, RSA-2048 (software store)",
        rate(n, || Ok(key.decrypt(Padding::OaepSha512, &ct).map(drop)?))?,
    );
    match token {
        Some(choice) => bench_token(n, &choice)?,
        None => println!("custody on a PKCS#11 token: add --pkcs11 softhsm (or a module path)"),
    }
    Ok(())
}
