//! `certconn bench --ocsp`: what publishing revocation costs. A CA with `revoked` revoked
//! certificates in a real SQLite journal; the time to make and sign its full CRL (ledger query,
//! encoding, signature); then OCSP responses per second, one at a time, in-process (no HTTP),
//! from the pre-produced cache (no nonce) and freshly signed (each with its own nonce), by the
//! delegated responder (EC P-256).

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use der::asn1::OctetString;
use der::{Decode, Encode};
use x509_cert::Certificate;
use x509_ocsp::{CertId, OcspRequest, Request, TbsRequest};

use certconn::crypto::provider::{self, Digest};
use certconn::custody::{CustodyConfig, KeyAlgorithm, KeyLocation, KeyStore};
use certconn::journal::{Completion, IssuedRecord, JobKind, JobStore, NewJob, SqliteJournal};
use certconn::revocation::{Publisher, RevocationConfig};

pub async fn run(dir: &std::path::Path, revoked: usize, requests: usize) -> anyhow::Result<()> {
    let keys = Arc::new(KeyStore::open(
        &dir.join("keys"),
        &CustodyConfig::default(),
    )?);
    let ca = keys.create("ca", KeyAlgorithm::EcP256, KeyLocation::Software)?;
    let subject = certconn::pki::dn::parse("CN=certconn bench CA")?;
    let ca_der = certconn::pki::ca::self_signed(&ca.key, &subject, 365)?;
    keys.set_chain("ca", vec![ca_der.clone()])?;
    let ca_cert = Certificate::from_der(&ca_der)?;
    let issuer_der = ca_cert.tbs_certificate.subject.to_der()?;

    let journal_path = dir.join("journal.sqlite");
    let journal = Arc::new(SqliteJournal::open(&journal_path, "bench")?);
    // One real issued certificate, through the journal's own path, to ask OCSP about...
    let request = serde_json::json!({});
    journal
        .enqueue(NewJob {
            source: "bench",
            idempotency_key: "one",
            kind: JobKind::Issue,
            request: &request,
            route: None,
        })
        .await?;
    let held = journal
        .lease_next(std::time::Duration::from_secs(60))
        .await?
        .context("the job just enqueued")?;
    let good_serial = provider::random_vec(16)?;
    let issued = IssuedRecord {
        backend: "local".into(),
        serial: hex::encode(&good_serial),
        issuer_der: issuer_der.clone(),
        not_after: 4_000_000_000,
        certificate_der: vec![0x30, 0x00],
        backend_version: None,
    };
    journal
        .complete(
            &held.lease,
            Completion {
                backend: "local",
                result: "{}",
                issued: Some(&issued),
                ..Default::default()
            },
        )
        .await?;
    // ...and `revoked` more, written in one transaction (100 000 jobs through the pipeline
    // would measure the pipeline, not the CRL).
    let fill = Instant::now();
    {
        let mut conn = rusqlite::Connection::open(&journal_path)?;
        let tx = conn.transaction()?;
        {
            let mut insert = tx.prepare(
                "INSERT INTO certificates (backend, serial, job_id, issuer, not_after, certificate, revoked_at, revocation_reason)
                 VALUES ('local', ?1, ?2, ?3, 4000000000, x'3000', ?4, ?5)",
            )?;
            let reasons = [
                "unspecified",
                "key-compromise",
                "superseded",
                "cessation-of-operation",
            ];
            for i in 0..revoked {
                insert.execute(rusqlite::params![
                    hex::encode(provider::random_vec(16)?),
                    held.job.id,
                    issuer_der,
                    1_700_000_000_000_i64 + i as i64,
                    reasons[i % reasons.len()],
                ])?;
            }
        }
        tx.commit()?;
    }
    let fill = fill.elapsed();

    let config: RevocationConfig = toml::from_str("[cas.bench]\nkey = \"ca\"\n")?;
    let started = Instant::now();
    let publisher = Publisher::open(&config, keys.clone(), journal.clone()).await?;
    let crl_time = started.elapsed();
    let crl = publisher.crl("bench").context("the CRL just made")?;

    println!("certconn bench --ocsp: {revoked} revoked certificates, {requests} OCSP requests, 1 at a time, in-process");
    println!(
        "  (ledger filled in {:.2} s, one SQL transaction)",
        fill.as_secs_f64()
    );
    println!(
        "CRL with {} entries: made and signed in {:.1} ms (ledger query, encoding, ECDSA P-256), {} bytes",
        crl.revoked,
        crl_time.as_secs_f64() * 1000.0,
        crl.der.len()
    );

    let cert_id = CertId {
        hash_algorithm: spki::AlgorithmIdentifierOwned {
            oid: const_oid::db::rfc5912::ID_SHA_1,
            parameters: Some(der::asn1::Any::null()),
        },
        issuer_name_hash: OctetString::new(provider::digest(Digest::Sha1, &issuer_der))?,
        issuer_key_hash: OctetString::new(provider::digest(
            Digest::Sha1,
            ca_cert
                .tbs_certificate
                .subject_public_key_info
                .subject_public_key
                .raw_bytes(),
        ))?,
        serial_number: certconn_x509::tbs::serial_number(&good_serial)?,
    };
    let request = |nonce: Option<Vec<u8>>| -> anyhow::Result<Vec<u8>> {
        let extensions = match nonce {
            None => None,
            Some(n) => Some(vec![x509_cert::ext::Extension {
                extn_id: const_oid::db::rfc6960::ID_PKIX_OCSP_NONCE,
                critical: false,
                extn_value: OctetString::new(OctetString::new(n)?.to_der()?)?,
            }]),
        };
        Ok(OcspRequest {
            tbs_request: TbsRequest {
                request_list: vec![Request {
                    req_cert: cert_id.clone(),
                    single_request_extensions: None,
                }],
                request_extensions: extensions,
                ..Default::default()
            },
            optional_signature: None,
        }
        .to_der()?)
    };

    let plain = request(None)?;
    let first = publisher
        .ocsp("bench", &plain)
        .await
        .context("the CA answers OCSP")?;
    anyhow::ensure!(
        x509_ocsp::OcspResponse::from_der(&first)?.response_status
            == x509_ocsp::OcspResponseStatus::Successful,
        "the responder did not answer successfully"
    );
    let t = Instant::now();
    for _ in 0..requests {
        let answer = publisher.ocsp("bench", &plain).await;
        anyhow::ensure!(answer.as_ref() == Some(&first), "a cached answer changed");
    }
    let cached = requests as f64 / t.elapsed().as_secs_f64();

    let with_nonces: Vec<Vec<u8>> = (0..requests)
        .map(|_| request(Some(provider::random_vec(16)?)))
        .collect::<anyhow::Result<_>>()?;
    let t = Instant::now();
    for r in &with_nonces {
        publisher
            .ocsp("bench", r)
            .await
            .context("the CA answers OCSP")?;
    }
    let fresh = requests as f64 / t.elapsed().as_secs_f64();
    println!("OCSP responses from the cache (no nonce)          {cached:>10.0} /s");
    println!("OCSP responses freshly signed (nonce, ECDSA P-256) {fresh:>10.0} /s");
    println!("  cache / fresh: {:.1}x", cached / fresh);
    Ok(())
}
