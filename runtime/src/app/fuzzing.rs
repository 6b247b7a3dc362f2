//! One entry per parser that faces the outside, for the fuzz targets (`fuzz/`, run by
//! `scripts/fuzz`) and their smoke test in `./scripts/test`.
//!
//! Each entry takes arbitrary bytes and must return — never panic, never hang, never allocate
//! without bound — whatever the bytes are. What a parser answers is not checked here (its own
//! tests do that); that it answers is. The entries reach private parsers, which is why they
//! live in the crate rather than beside the targets.

use std::path::Path;

use crate::crypto::AlgorithmPolicy;

/// Highest PBKDF iteration count the PKCS#12 entry lets a file ask for: a PFX may ask for up to
/// [`crate::pki::pkcs12::read::MAX_ITERATIONS`], which costs a second — a fuzzer needs an input
/// to cost microseconds. The limit itself is checked the same way at either value.
pub const PFX_FUZZ_ITERATIONS: u32 = 64;

/// A fuzz target: takes any bytes, must return.
pub type Target = fn(&[u8]);

/// The targets, by the name `scripts/fuzz` and the smoke test give them.
pub const TARGETS: [(&str, Target); 13] = [
    ("pkcs12", pkcs12),
    ("scep_message", scep_message),
    ("scep_request", scep_request),
    ("csr", csr),
    ("name", name),
    ("ntlm_challenge", ntlm_challenge),
    ("ndes_page", ndes_page),
    ("api_json", api_json),
    ("config", config),
    ("upstream", upstream),
    ("plugin_manifest", plugin_manifest),
    ("plugin_package", plugin_package),
    ("ocsp_request", ocsp_request),
];

/// A PFX and its password: the first byte is the password's length, the password follows, the
/// file is the rest (so that inputs derived from a real file get past its MAC).
pub fn pkcs12(data: &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n).min(rest.len());
    let (password, pfx) = rest.split_at(n);
    let password = String::from_utf8_lossy(password);
    let fips = AlgorithmPolicy {
        fips: true,
        ..AlgorithmPolicy::default()
    };
    for policy in [AlgorithmPolicy::default(), fips] {
        if let Ok(opened) =
            crate::pki::pkcs12::read::open_limited(pfx, &password, &policy, PFX_FUZZ_ITERATIONS)
        {
            // What the import step does next with an opened file.
            let _ = opened.key_and_certificate();
        }
    }
}

/// A SCEP pkiMessage as a client or a CA sends it (BER), its certificates, and a degenerate
/// certs-only answer (GetCACert).
pub fn scep_message(data: &[u8]) {
    let crypto = crate::sources::scep::adapter::HostCrypto {
        policy: AlgorithmPolicy::default(),
    };
    if let Ok(message) = certconn_scep::message::verify(&crypto, data, &[]) {
        for cert in &message.certificates {
            let _ = certconn_scep::lenient::certificate("certificate", cert);
        }
    }
    let _ = certconn_scep::certs::parse_certs_only(data);
    let _ = certconn_scep::caps::Capabilities::parse(&String::from_utf8_lossy(data));
}

/// What the SCEP server reads of a request past its signature — which keeps no one out, since a
/// device signs its first request with a certificate it made itself: the pkcsPKIEnvelope, opened
/// as the recipient it names (the server's certificate; decryption then fails, the key being
/// another: the parsing before it is what is tested here), and the contents each message type
/// carries, which anyone can encrypt to the server's certificate — a PKCS#10 request, its
/// challenge password and subject (PKCSReq, RenewalReq), an IssuerAndSerialNumber (GetCert,
/// GetCRL) or an IssuerAndSubject (CertPoll). The input is read as each of them.
pub fn scep_request(data: &[u8]) {
    use crate::sources::scep::adapter::{CustodyIdentity, HostCrypto};
    let crypto = HostCrypto {
        policy: AlgorithmPolicy::default(),
    };
    let (key, certificate) = scep_server();
    let identity = CustodyIdentity { key, certificate };
    let _ = certconn_scep::envelope::open(&crypto, &identity, data);
    if let Ok(csr) = <x509_cert::request::CertReq as der::Decode>::from_der(data) {
        let _ = crate::sources::scep::ra::challenge_password(&csr);
        let _ = crate::pki::dn::format(&csr.info.subject);
    }
    if let Ok(asked) = <certconn_scep::lenient::IssuerSerial as der::Decode>::from_der(data) {
        let _ = asked.issuer.to_string();
        let _ = crate::jobs::model::serial_hex(asked.serial_number.as_bytes());
    }
    if let Ok(asked) = <cms::cert::IssuerAndSerialNumber as der::Decode>::from_der(data) {
        let _ = der::Encode::to_der(&asked.issuer);
    }
    let _ = <certconn_scep::IssuerAndSubject as der::Decode>::from_der(data);
}

/// The certificate [`scep_request`]'s envelopes are for (micromdm's test CA, to which its
/// seed, a real device's PKCSReq, was sealed) and a key that is not its own, made once. Built
/// from compiled-in data, it cannot fail for an input's sake: if it fails, the target is broken,
/// and says so rather than test nothing. Public so that the smoke tests check the seeds against
/// the target's own server, not a copy of it.
pub fn scep_server() -> &'static (crate::custody::PrivateKey, Vec<u8>) {
    static SERVER: std::sync::OnceLock<(crate::custody::PrivateKey, Vec<u8>)> =
        std::sync::OnceLock::new();
    SERVER.get_or_init(|| {
        let pem = include_str!("../../tests/data/scep/micromdm/scep_testdata_testca_ca.pem");
        let certificate = crate::pki::pem::decode_certificates(pem)
            .expect("the SCEP target's CA certificate is PEM")
            .into_iter()
            .next()
            .expect("the SCEP target's PEM file holds a certificate");
        let key = crate::custody::PrivateKey::generate(crate::custody::KeyAlgorithm::Rsa2048)
            .expect("an RSA key for the SCEP target");
        (key, certificate)
    })
}

/// A PKCS#10 request as intake checks it (PEM, self-signature, key size) and as the issuance
/// policy reads it (the key it certifies).
pub fn csr(data: &[u8]) {
    let pem = certconn_x509::pem::encode("CERTIFICATE REQUEST", data);
    let _ = crate::jobs::intake::check_csr(&pem);
    let _ = crate::jobs::intake::check_csr(&String::from_utf8_lossy(data));
    let _ = crate::custody::grant::IssuanceScope::for_request(None, data, None, Default::default());
}

/// A distinguished name as a certificate or a request carries it (DER), written as text the way
/// the journal, the signature trail and the API write every subject and issuer
/// ([`crate::pki::dn::format`]: a device chooses its CSR's subject, a PFX's owner its
/// certificate's). The text must be x509-cert's `Display` of the name, character for character:
/// names already in journals were written that way and are compared as text. A difference is a
/// bug, so this target panics on one.
pub fn name(data: &[u8]) {
    use std::fmt::Write as _;
    let Ok(name) = <x509_cert::name::Name as der::Decode>::from_der(data) else {
        return;
    };
    let ours = crate::pki::dn::format(&name);
    let mut display = String::new();
    // x509-cert's `Display` fails (rather than writes) only for a value it cannot encode again;
    // there is nothing to compare with then.
    if write!(display, "{name}").is_ok() {
        assert_eq!(
            ours, display,
            "dn::format and x509-cert's Display write this name differently"
        );
    }
}

/// An NTLM CHALLENGE message, as a CA's web server sends it.
pub fn ntlm_challenge(data: &[u8]) {
    use crate::plugins::http::ntlm;
    if let Ok(challenge) = ntlm::Challenge::parse(data) {
        // What the client answers with: the AUTHENTICATE message built from the challenge.
        let identity = ntlm::Identity {
            domain: "DOMAIN",
            user: "user",
            password: "password",
        };
        let _ = ntlm::authenticate(
            &AlgorithmPolicy::default(),
            &ntlm::negotiate(),
            &challenge,
            &identity,
            [7; 8],
            ntlm::filetime_now(),
        );
    }
}

/// The NDES admin page (`mscep_admin`), UTF-16 or UTF-8, as the NDES backend reads it.
pub fn ndes_page(data: &[u8]) {
    let _ = certconn_scep::ndes::parse(data);
}

/// The API's request bodies: each job kind as intake validates it.
pub fn api_json(data: &[u8]) {
    use crate::jobs::model::{ImportJob, IssueJob, RevokeJob};
    if let Ok(issue) = serde_json::from_slice::<IssueJob>(data) {
        let _ = crate::jobs::intake::check_issue(&issue);
    }
    if let Ok(revoke) = serde_json::from_slice::<RevokeJob>(data) {
        let _ = revoke.normalized_serial();
    }
    let _ = serde_json::from_slice::<ImportJob>(data);
}

/// `certconn.toml`, with every check `serve` makes before it opens anything.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = crate::app::Config::parse(Path::new("/nonexistent/certconn.toml"), text);
}

/// The upstream protocol's answers, as the connector reads them: a batch of work items.
pub fn upstream(data: &[u8]) {
    let _ = certconn_connector::parse_batch(data);
    let _ = serde_json::from_slice::<certconn_connector::ErrorBody>(data);
}

/// A plugin's `certconn-plugin.toml` manifest.
pub fn plugin_manifest(data: &[u8]) {
    if let Ok(manifest) = crate::plugins::manifest::Manifest::parse(data) {
        let _ = manifest.contract_version();
        let _ = manifest.to_toml();
    }
}

/// A plugin package as an administrator or the update feed hands it over: the manifest found
/// (at the top level or inside a core module) and parsed, and the publisher's signature section
/// found, parsed and verified — all of which happens before trust is decided, so for packages
/// from anyone.
pub fn plugin_package(data: &[u8]) {
    use crate::plugins::{package::PluginPackage, signature};
    let _ = PluginPackage::from_bytes(Path::new("fuzz.wasm"), data.to_vec());
    let _ = signature::unsigned(data);
    let _ = signature::signer_of(data);
}

/// An OCSP request (RFC 6960) as anyone who reaches a responder sends it, without a token: read
/// for a CA, then — when every CertID names that CA — answered, encoded and signed the way the
/// responder answers, each certificate good, revoked or unknown in turn. The CA is the PKITS
/// test CA whose requests are the seeds (`runtime/tests/data/pkcs12/GoodCACert.crt`).
pub fn ocsp_request(data: &[u8]) {
    use crate::pki::ocsp::{self, Answer, Signer, Status};
    let (issuer, key) = ocsp_responder();
    let query = match ocsp::read_request(data, issuer) {
        Ok(query) => query,
        Err(refusal) => {
            let _ = refusal.response_der();
            return;
        }
    };
    let answers = query
        .ids
        .into_iter()
        .enumerate()
        .map(|(i, id)| {
            let _ = ocsp::serial_of(&id);
            let _ = der::Encode::to_der(&id);
            let status = match i % 3 {
                0 => Status::Good,
                1 => Status::Revoked(
                    1_700_000_000,
                    Some(x509_cert::ext::pkix::CrlReason::KeyCompromise),
                ),
                _ => Status::Unknown,
            };
            Answer { id, status }
        })
        .collect();
    let signer = Signer {
        key,
        certificate: None,
    };
    let _ = ocsp::respond(
        answers,
        query.nonce.as_deref(),
        1_700_000_000,
        1_700_086_400,
        1_700_000_000,
        &signer,
    );
}

/// The CA [`ocsp_request`] answers for and a key to sign with, made once per process from
/// compiled-in data; like [`scep_server`], a failure here is the target's, not an input's, and
/// the smoke tests read the seeds with it.
pub fn ocsp_responder() -> &'static (crate::pki::ocsp::Issuer, crate::custody::PrivateKey) {
    static RESPONDER: std::sync::OnceLock<(crate::pki::ocsp::Issuer, crate::custody::PrivateKey)> =
        std::sync::OnceLock::new();
    RESPONDER.get_or_init(|| {
        let pem = include_str!("../../tests/data/pkcs12/GoodCACert.crt");
        let der = crate::pki::pem::decode_certificates(pem)
            .expect("the OCSP target's CA certificate is PEM")
            .into_iter()
            .next()
            .expect("the OCSP target's PEM file holds a certificate");
        let ca = <x509_cert::Certificate as der::Decode>::from_der(&der)
            .expect("the OCSP target's CA certificate parses");
        let issuer = crate::pki::ocsp::Issuer::of(&ca).expect("the OCSP target's CA names itself");
        let key = crate::custody::PrivateKey::generate(crate::custody::KeyAlgorithm::EcP256)
            .expect("a key for the OCSP target");
        (issuer, key)
    })
}
