//! `certconn bench --scep URL [--scep URL…]`: SCEP enrolments per second at one or more SCEP
//! servers, all driven by the same client in the same run so the figures compare.
//!
//! For each server the device keys (RSA-2048), CSRs with the challenge and the signed,
//! encrypted PKCSReq messages are made before the clock starts; the timed part is the POST, the
//! server's work, and checking the CertRep's signature and status. `scripts/bench-scep` runs it
//! against certconn's SCEP server (local-ca backend) beside micromdm's `scepserver`.

use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use bytes::Bytes;
use certconn_scep::{
    envelope, message, CaCertificates, Capabilities, CipherPolicy, Crypto, KeyTransport,
    MessageType, Outgoing, PkiStatus,
};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use x509_cert::name::Name;

use certconn::crypto::AlgorithmPolicy;
use certconn::custody::{KeyAlgorithm, PrivateKey};
use certconn::pki;
use certconn::sources::scep::adapter::{CustodyIdentity, HostCrypto};

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

async fn fetch(
    client: &HttpClient,
    method: &str,
    url: &str,
    body: Vec<u8>,
) -> anyhow::Result<Vec<u8>> {
    let request = hyper::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/x-pki-message")
        .body(Full::new(Bytes::from(body)))?;
    let response = client
        .request(request)
        .await
        .with_context(|| format!("{method} {url}"))?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes().to_vec();
    if !status.is_success() {
        bail!(
            "{method} {url}: HTTP {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(body)
}

/// One prepared enrolment: the request and the nonce its answer must echo.
struct Prepared {
    message: Vec<u8>,
    nonce: Vec<u8>,
}

pub async fn run(
    urls: &[String],
    challenge: &str,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    // micromdm's scepserver answers in single DES: the bench client reads it.
    let crypto = Arc::new(HostCrypto {
        policy: AlgorithmPolicy {
            fips: false,
            allow_single_des: true,
        },
    });
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    println!("SCEP enrolments, {n} per server, {concurrency} at a time, RSA-2048 device keys made in advance");
    let mut first = None;
    for url in urls {
        let caps = Capabilities::parse(&String::from_utf8_lossy(
            &fetch(
                &client,
                "GET",
                &format!("{url}?operation=GetCACaps"),
                Vec::new(),
            )
            .await?,
        ));
        let ca = CaCertificates::from_response(
            &fetch(
                &client,
                "GET",
                &format!("{url}?operation=GetCACert"),
                Vec::new(),
            )
            .await?,
        )
        .context("GetCACert")?;
        let cipher = caps.cipher(CipherPolicy {
            allow_des3: true,
            allow_single_des: true,
        })?;
        let digest = match caps.digest() {
            certconn_scep::Digest::Sha1 => certconn_scep::Digest::Sha256,
            d => d,
        };
        let prep_start = Instant::now();
        let prepared: Vec<Prepared> = {
            let (crypto, ca, challenge) = (crypto.clone(), ca.clone(), challenge.to_string());
            tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<Prepared>> {
                (0..n)
                    .map(|i| {
                        let key = PrivateKey::generate(KeyAlgorithm::Rsa2048)?;
                        let subject =
                            Name::from_str(&format!("CN=bench-device-{i},O=certconn bench"))?;
                        let csr =
                            pki::csr::build_with_challenge(&key, &subject, &[], Some(&challenge))?;
                        let me = pki::ca::ra_certificate(&key, &subject, None, 1)?;
                        let identity = CustodyIdentity {
                            key: &key,
                            certificate: &me,
                        };
                        let sealed = envelope::seal(
                            &*crypto,
                            &csr,
                            &ca.encryption,
                            cipher,
                            KeyTransport::Pkcs1,
                        )?;
                        let nonce = crypto.random(16)?.to_vec();
                        let txid =
                            format!("bench-{i}-{}", hex::encode(crypto.random(8)?.as_slice()));
                        let message = message::sign(
                            &*crypto,
                            &identity,
                            digest,
                            &Outgoing {
                                message_type: MessageType::PkcsReq,
                                transaction_id: &txid,
                                sender_nonce: &nonce,
                                recipient_nonce: None,
                                pki_status: None,
                                fail_info: None,
                                content: Some(&sealed),
                                extra_certificates: &[],
                                send_certificates: true,
                            },
                        )?;
                        Ok(Prepared { message, nonce })
                    })
                    .collect()
            })
            .await??
        };
        let prep = prep_start.elapsed();
        let prepared = Arc::new(prepared);
        let next = Arc::new(AtomicUsize::new(0));
        let post_url = format!("{url}?operation=PKIOperation");
        let mut known = vec![ca.signing.clone()];
        known.extend(ca.all.iter().cloned());
        let known = Arc::new(known);
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let (prepared, next, client, crypto, known, post_url) = (
                prepared.clone(),
                next.clone(),
                client.clone(),
                crypto.clone(),
                known.clone(),
                post_url.clone(),
            );
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(p) = prepared.get(i) else {
                        return anyhow::Ok(());
                    };
                    let body = fetch(&client, "POST", &post_url, p.message.clone()).await?;
                    let rep = message::verify(&*crypto, &body, &known)?;
                    if rep.pki_status != Some(PkiStatus::Success)
                        || rep.recipient_nonce.as_deref() != Some(&p.nonce[..])
                    {
                        bail!(
                            "enrolment {i} at {post_url}: {:?} {:?}",
                            rep.pki_status,
                            rep.fail_info
                        );
                    }
                }
            }));
        }
        for t in tasks {
            t.await??;
        }
        let rate = n as f64 / start.elapsed().as_secs_f64();
        println!(
            "{url:<40} {rate:>9.1} enrolments/s   (cipher {}, digest {}; requests prepared in {:.1} s)",
            cipher.name(),
            digest.name(),
            prep.as_secs_f64()
        );
        match first {
            None => first = Some((url.clone(), rate)),
            Some((ref base, base_rate)) => {
                println!("{:<40} {:>9.2}× of {base}", "", rate / base_rate)
            }
        }
    }
    Ok(())
}
