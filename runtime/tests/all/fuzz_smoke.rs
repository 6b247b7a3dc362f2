//! The fuzz targets' smoke run: every seed (`fuzz/seeds/TARGET`) and every input a fuzzer ever
//! crashed on (`fuzz/regressions/TARGET`) through its target, then a bounded, deterministic
//! mutation run from those seeds — bit flips, interesting bytes, cuts, insertions, repeats,
//! splices — the same every time. A target that panics fails the test, naming the input
//! written to disk. The long coverage-guided runs are `scripts/fuzz` (libFuzzer).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use certconn::app::fuzzing::TARGETS;

/// Mutants made from each target's seeds.
const MUTANTS_PER_TARGET: usize = 20_000;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn inputs(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.file_name().is_none_or(|n| n != ".keep"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect()
}

/// xorshift64*: a fixed sequence, so every run tries the same mutants.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut m = seed.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(m.len() + 1);
        let last = m.len().saturating_sub(1);
        match rng.below(7) {
            0 if !m.is_empty() => m[at.min(last)] ^= 1 << rng.below(8),
            1 if !m.is_empty() => {
                const INTERESTING: [u8; 8] = [0x00, 0x01, 0x7f, 0x80, 0x81, 0xff, 0x30, 0x04];
                m[at.min(last)] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 => m.truncate(at),
            3 => {
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                m.splice(at..at, bytes);
            }
            4 if !m.is_empty() => {
                // Repeat a chunk: lengths and counts that no longer match.
                let start = at.min(m.len() - 1);
                let end = (start + 1 + rng.below(64)).min(m.len());
                let chunk = m[start..end].to_vec();
                m.splice(start..start, chunk);
            }
            5 if !other.is_empty() => {
                // Splice in part of another seed.
                let from = rng.below(other.len());
                let to = (from + 1 + rng.below(256)).min(other.len());
                m.splice(at..at, other[from..to].iter().copied());
            }
            _ if !m.is_empty() => {
                // A length byte made large.
                let i = at.min(m.len() - 1);
                m[i] = 0x82 + (rng.next() as u8 & 1);
            }
            _ => m.push(rng.next() as u8),
        }
    }
    m
}

fn run_one(target: &str, f: fn(&[u8]), name: &str, input: &[u8]) {
    if catch_unwind(AssertUnwindSafe(|| f(input))).is_err() {
        let dir = std::env::temp_dir().join("certconn-fuzz-smoke");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{target}-crash"));
        std::fs::write(&path, input).unwrap();
        panic!(
            "fuzz target {target} panicked on {name}; the input is in {} (add it to fuzz/regressions/{target}/ once fixed)",
            path.display()
        );
    }
}

#[test]
fn every_target_survives_its_seeds_regressions_and_mutants() {
    let fuzz = fuzz_dir();
    for (target, f) in TARGETS {
        let seeds = inputs(&fuzz.join("seeds").join(target));
        assert!(!seeds.is_empty(), "fuzz/seeds/{target} has no seeds");
        let regressions = inputs(&fuzz.join("regressions").join(target));
        for (name, input) in seeds.iter().chain(&regressions) {
            run_one(target, f, name, input);
        }
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ target.len() as u64);
        for i in 0..MUTANTS_PER_TARGET {
            let (_, seed) = &seeds[i % seeds.len()];
            let (_, other) = &seeds[rng.below(seeds.len())];
            let mutant = mutate(&mut rng, seed, other);
            run_one(target, f, &format!("mutant {i} of its seeds"), &mutant);
        }
    }
}

/// The PKCS#12 entry gets past a real file's MAC and decryption, so that the mutants reach the
/// bag parsers: every seed re-exported with one iteration opens with the password it carries.
#[test]
fn the_pkcs12_seeds_open() {
    let seeds = inputs(&fuzz_dir().join("seeds/pkcs12"));
    let reexported: Vec<_> = seeds
        .iter()
        .filter(|(n, _)| n.contains(".iter1."))
        .collect();
    assert!(
        reexported.len() >= 10,
        "{} re-exported seeds",
        reexported.len()
    );
    for (name, data) in reexported {
        let (n, rest) = data.split_first().unwrap();
        let (password, pfx) = rest.split_at(usize::from(*n));
        let opened = certconn::pki::pkcs12::read::open_limited(
            pfx,
            std::str::from_utf8(password).unwrap(),
            &Default::default(),
            certconn::app::fuzzing::PFX_FUZZ_ITERATIONS,
        );
        assert!(opened.is_ok(), "{name}: {:?}", opened.err());
    }
}

/// The name entry compares only names that decode: every seed must, or the comparison never
/// runs on them. Between them they hold every string type, a multi-valued RDN, a type without a
/// name, a value that is no string, and characters that need escaping.
#[test]
fn the_name_seeds_decode() {
    let seeds = inputs(&fuzz_dir().join("seeds/name"));
    assert!(seeds.len() >= 10, "{} name seeds", seeds.len());
    for (name, data) in seeds {
        let decoded = <x509_cert::name::Name as der::Decode>::from_der(&data);
        assert!(decoded.is_ok(), "{name}: {:?}", decoded.err());
    }
}

/// The OCSP entry answers only requests for its CA: the seeds made for that CA must read, so
/// that mutants of them reach the responder's encoding and signature (one seed names another CA,
/// to keep the refusal in the corpus).
#[test]
fn the_ocsp_seeds_name_the_targets_ca() {
    let (issuer, _) = certconn::app::fuzzing::ocsp_responder();
    let seeds = inputs(&fuzz_dir().join("seeds/ocsp_request"));
    let read = seeds
        .iter()
        .filter(|(_, data)| certconn::pki::ocsp::read_request(data, issuer).is_ok())
        .count();
    assert_eq!(
        read,
        seeds.len() - 1,
        "{read} of {} seeds read",
        seeds.len()
    );
}

/// The package entry reaches the manifest and the signature: every seed is a package, and the
/// signed one verifies.
#[test]
fn the_plugin_package_seeds_are_packages() {
    use certconn::plugins::{package::PluginPackage, signature};
    for (name, data) in inputs(&fuzz_dir().join("seeds/plugin_package")) {
        let package = PluginPackage::from_bytes(Path::new(&name), data.clone());
        assert!(package.is_ok(), "{name}: {:?}", package.err());
        let signer = signature::signer_of(&data);
        assert!(signer.is_ok(), "{name}: {:?}", signer.err());
        assert_eq!(
            signer.unwrap().is_some(),
            name.ends_with("/signed.wasm"),
            "{name}"
        );
    }
}

/// The SCEP request entry reaches each reader it feeds: the envelopes from micromdm and jscep
/// parse, and micromdm's (sealed to the CA certificate the entry names) gets as far as the key's
/// decryption; the contents parse as what each message type carries, the CSR with a challenge.
/// (The device's own CSR inside micromdm's envelope, `csr-micromdm.der`, says version 2, which
/// x509-cert refuses: it stays a seed for the refusal.)
#[test]
fn the_scep_request_seeds_reach_each_reader() {
    use certconn::sources::scep::adapter::{CustodyIdentity, HostCrypto};
    use certconn_scep::{envelope, Error};
    let dir = fuzz_dir().join("seeds/scep_request");
    let seed = |name: &str| std::fs::read(dir.join(name)).unwrap();
    let (key, certificate) = certconn::app::fuzzing::scep_server();
    let identity = CustodyIdentity { key, certificate };
    let crypto = HostCrypto {
        policy: Default::default(),
    };
    match envelope::open(&crypto, &identity, &seed("envelope-micromdm.der")) {
        Err(Error::Crypto(_)) => {}
        other => panic!("micromdm's envelope: {other:?}"),
    }
    match envelope::open(&crypto, &identity, &seed("envelope-jscep2.der")) {
        Err(Error::WrongRecipient(_)) => {}
        other => panic!("jscep's envelope: {other:?}"),
    }
    let csr =
        <x509_cert::request::CertReq as der::Decode>::from_der(&seed("csr-challenge.der")).unwrap();
    let challenge = certconn::pki::csr::CHALLENGE_PASSWORD;
    assert!(csr.info.attributes.iter().any(|a| a.oid == challenge));
    <certconn_scep::lenient::IssuerSerial as der::Decode>::from_der(&seed("issuer-and-serial.der"))
        .unwrap();
    <certconn_scep::IssuerAndSubject as der::Decode>::from_der(&seed("issuer-and-subject.der"))
        .unwrap();
}
