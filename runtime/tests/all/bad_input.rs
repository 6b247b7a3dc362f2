//! Bad input gets a clear error that says what and where, and stores nothing.

use crate::common;

use std::process::Command;
use std::time::Duration;

use certconn::sources::api::client::{ApiClient, ClientError};
use common::*;
use hyper::Method;
use serde_json::{json, Value};

async fn refused(api: &ApiClient, body: Value) -> (u16, String) {
    match api.call(Method::POST, "/v1/jobs/issue", Some(&body)).await {
        Err(ClientError::Api { status, message }) => (status, message),
        other => panic!("{body} was accepted: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_refused_with_the_reason_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_default(dir.path());
    let api = daemon.client();

    // Wrong token.
    let stranger = ApiClient::new(
        format!("127.0.0.1:{}", daemon.port).parse().unwrap(),
        zeroize::Zeroizing::new("0".repeat(64)),
    );
    match stranger.call(Method::GET, "/v1/jobs", None).await {
        Err(ClientError::Api { status: 401, .. }) => {}
        other => panic!("wrong token accepted: {other:?}"),
    }

    // A method a route does not take: the JSON error every refusal has, and the Allow header.
    match api.call(Method::DELETE, "/v1/jobs/x", None).await {
        Err(ClientError::Api {
            status: 405,
            message,
        }) => assert_eq!(
            message,
            "DELETE is not allowed on /v1/jobs/x (the Allow header says what is)"
        ),
        other => panic!("a DELETE of a job was not refused as such: {other:?}"),
    }
    let answer = run_ok(
        Command::new("curl")
            .args(["-sS", "-i", "-X", "PUT"])
            .arg(format!("http://127.0.0.1:{}/v1/health", daemon.port)),
    );
    assert!(
        answer.starts_with("HTTP/1.1 405")
            && answer.to_ascii_lowercase().contains("\nallow: get,head")
            && answer.ends_with(
                "{\"error\":\"PUT is not allowed on /v1/health (the Allow header says what is)\"}"
            ),
        "{answer}"
    );

    // Malformed JSON and unknown fields (raw bodies through hyper).
    let (status, message) = raw_post(&daemon, "{\"profile\": \"smime\",").await;
    assert_eq!(status, 400, "{message}");
    assert!(message.contains("line 1"), "{message}");
    let (status, message) = refused(
        &api,
        json!({ "profile": "smime", "subject": "CN=x", "colour": "blue" }),
    )
    .await;
    assert_eq!(status, 400);
    assert!(message.contains("colour"), "{message}");

    let (device_key, device_cert) = openssl_device(dir.path());
    // Ed25519 cannot receive a sealed password (no key transport or agreement is defined for it).
    let (_, ec_cert) = openssl_self_signed(dir.path(), "ed25519", &["-newkey", "ed25519"]);
    let csr_path = dir.path().join("req.csr");
    run_ok(
        Command::new("openssl")
            .args(["req", "-new", "-subj", "/CN=csr device"])
            .arg("-key")
            .arg(&device_key)
            .arg("-out")
            .arg(&csr_path),
    );
    let csr = std::fs::read_to_string(&csr_path).unwrap();
    // Flip one character inside the base64 body: the CSR still parses or not, but never verifies.
    let mut tampered: Vec<char> = csr.chars().collect();
    let pos = csr.find("\n").unwrap() + 200;
    tampered[pos] = if tampered[pos] == 'A' { 'B' } else { 'A' };
    let tampered: String = tampered.into_iter().collect();
    let weak_key = dir.path().join("weak.key");
    let weak_csr = dir.path().join("weak.csr");
    run_ok(
        Command::new("openssl")
            .args([
                "req", "-new", "-newkey", "rsa:1024", "-nodes", "-subj", "/CN=weak",
            ])
            .arg("-keyout")
            .arg(&weak_key)
            .arg("-out")
            .arg(&weak_csr),
    );

    for (body, field, needle) in [
        (
            json!({ "profile": "nope", "subject": "CN=x" }),
            "profile",
            "no profile named \"nope\"",
        ),
        (
            json!({ "profile": "smime", "subject": "" }),
            "subject",
            "required",
        ),
        (
            json!({ "profile": "smime", "subject": "not a dn" }),
            "subject",
            "not a distinguished name",
        ),
        (
            json!({ "profile": "smime", "subject": "CN=x", "sans": ["fax:1"] }),
            "sans",
            "fax",
        ),
        (
            json!({ "profile": "smime", "subject": "CN=x", "validity_days": 0 }),
            "validity_days",
            "between",
        ),
        (
            json!({ "profile": "smime", "subject": "CN=x", "recipient": "garbage" }),
            "recipient",
            "recipient",
        ),
        (
            // Ed25519 cannot receive a sealed password (no key transport or agreement defined).
            json!({ "profile": "smime", "subject": "CN=x", "recipient": std::fs::read_to_string(&ec_cert).unwrap() }),
            "recipient",
            "unsupported public key algorithm 1.3.101.112",
        ),
        (
            json!({ "profile": "smime", "csr": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n" }),
            "csr",
            "PKCS#10",
        ),
        (
            json!({ "profile": "smime", "csr": "hello" }),
            "csr",
            "not PEM",
        ),
        (json!({ "profile": "smime", "csr": tampered }), "csr", "csr"),
        (
            json!({ "profile": "smime", "csr": std::fs::read_to_string(&weak_csr).unwrap() }),
            "csr",
            "RSA-1024",
        ),
    ] {
        let (status, message) = refused(&api, body.clone()).await;
        assert_eq!(status, 422, "{body}: {message}");
        assert!(
            message.starts_with(&format!("{field}: ")),
            "{body}: {message}"
        );
        assert!(
            message.contains(needle),
            "{body}: {message:?} lacks {needle:?}"
        );
    }
    match api
        .call(
            Method::POST,
            "/v1/jobs/revoke",
            Some(&json!({ "serial": "xyz" })),
        )
        .await
    {
        Err(ClientError::Api {
            status: 422,
            message,
        }) => assert!(message.starts_with("serial: "), "{message}"),
        other => panic!("bad serial accepted: {other:?}"),
    }

    let db = rusqlite::Connection::open(dir.path().join("data/journal.sqlite")).unwrap();
    let jobs: i64 = db
        .query_row("SELECT COUNT(*) FROM jobs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(jobs, 0, "refused requests stored nothing");

    // A well-formed CSR from a device that keeps its key: certificate only, no PFX.
    let id = submit(
        &api,
        "smime",
        "csr-ok",
        json!({ "subject": "", "csr": csr }),
    )
    .await;
    assert_eq!(
        wait_job(&api, &id, Duration::from_secs(30)).await["state"],
        "succeeded"
    );
    let result = api
        .call(Method::GET, &format!("/v1/jobs/{id}/result"), None)
        .await
        .unwrap();
    assert!(result["result"]["pfx_base64"].is_null());
    let cert = dir.path().join("csr-cert.pem");
    std::fs::write(&cert, result["result"]["certificate_pem"].as_str().unwrap()).unwrap();
    assert_eq!(
        run_ok(
            Command::new("openssl")
                .args(["x509", "-noout", "-pubkey", "-in"])
                .arg(&cert)
        ),
        run_ok(
            Command::new("openssl")
                .args(["pkey", "-pubout", "-in"])
                .arg(&device_key)
        ),
        "certified the CSR's key"
    );
    assert!(run_ok(
        Command::new("openssl")
            .args(["x509", "-noout", "-subject", "-in"])
            .arg(&cert)
    )
    .contains("csr device"));
    let _ = device_cert;
}

/// A job whose record in the journal cannot be read (here a queued one whose request is not
/// JSON, as a hand edit or a bad restore leaves it): the worker fails it with the reason and runs
/// the job behind it, and the operator sees it in `certconn jobs list` and on the status page,
/// and a clear error for it alone, while every other job still lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_the_journal_cannot_read_is_failed_shown_and_blocks_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_default(dir.path());
    let api = daemon.client();
    let first = submit(
        &api,
        "smime",
        "before-the-spoiled-one",
        json!({ "subject": "CN=a" }),
    )
    .await;
    assert_eq!(
        wait_job(&api, &first, Duration::from_secs(30)).await["state"],
        "succeeded"
    );

    // A copy of that job, queued, due before anything else, with a request that is not JSON.
    let db = rusqlite::Connection::open(dir.path().join("data/journal.sqlite")).unwrap();
    let spoiled = insert_unreadable_copy(&db, "before-the-spoiled-one", "spoiled", 0);
    drop(db);

    // The next job is run all the same.
    let second = submit(
        &api,
        "smime",
        "after-the-spoiled-one",
        json!({ "subject": "CN=b" }),
    )
    .await;
    assert_eq!(
        wait_job(&api, &second, Duration::from_secs(30)).await["state"],
        "succeeded"
    );

    let out = daemon.cli(&["jobs", "list"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{listed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        listed.contains(&first) && listed.contains(&second),
        "{listed}"
    );
    let line = listed
        .lines()
        .find(|l| l.starts_with(&spoiled))
        .unwrap_or_else(|| panic!("{listed}"));
    assert!(
        line.contains("failed") && line.contains("key must be a string at line 1 column 2"),
        "{line}"
    );
    assert!(
        listed.contains("1 listed job(s) cannot be read from the journal"),
        "{listed}"
    );

    let status = api.call(Method::GET, "/v1/status", None).await.unwrap();
    let shown = status["attention"]
        .as_array()
        .and_then(|jobs| jobs.iter().find(|j| j["id"] == spoiled.as_str()))
        .unwrap_or_else(|| panic!("{status}"));
    assert_eq!(shown["kind"], "unreadable");
    assert_eq!(shown["state"], "failed");
    let reason = shown["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("cannot be read") && reason.contains("the jobs queued behind it run"),
        "{reason}"
    );

    match api
        .call(Method::GET, &format!("/v1/jobs/{spoiled}"), None)
        .await
    {
        Err(ClientError::Api { status, message }) => {
            assert_eq!(status, 500, "{message}");
            assert!(
                message.contains(&format!("malformed record for job {spoiled}")),
                "{message}"
            );
        }
        other => panic!("an unreadable job was shown: {other:?}"),
    }
}

async fn raw_post(daemon: &Daemon, body: &str) -> (u16, String) {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    let config = certconn::app::Config::load(&daemon.config).unwrap();
    let token = certconn::sources::api::token::read(&config.token_file()).unwrap();
    let client: Client<_, Full<bytes::Bytes>> =
        Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let req = hyper::Request::post(format!("http://127.0.0.1:{}/v1/jobs/issue", daemon.port))
        .header("authorization", format!("Bearer {}", token.as_str()))
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from(body.to_owned())))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[test]
fn a_bad_config_names_the_key_and_line_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let text =
        config_text(&data, &plugins(), "").replace("backend = \"local\"", "backend = \"locale\"");
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, &text).unwrap();
    let line = text.lines().position(|l| l.contains("\"locale\"")).unwrap() + 1;
    for cmd in [
        &["check-config", "--config"][..],
        &["serve", "--config"][..],
    ] {
        let out = Command::new(binary())
            .args(cmd)
            .arg(&config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!("line {line}"))
                && stderr.contains("profiles.smime.backend")
                && stderr.contains("locale"),
            "{stderr}"
        );
    }
    assert!(
        !data.exists(),
        "a refused config must not create the data directory"
    );

    // A plugin that rejects its settings stops start-up — and check-config, which runs the same
    // checks — with the setting named at its line in this file (not in the JSON the plugin
    // was handed).
    for (from, to, named) in [
        (
            "ca_key = \"local-ca\"",
            "ca_key = \"local-ca\"\nmax_validity_days = \"long\"",
            "max_validity_days",
        ),
        ("ca_key = \"local-ca\"", "ca_keyy = \"local-ca\"", "ca_keyy"),
    ] {
        let text = config_text(&data, &plugins(), "").replace(from, to);
        std::fs::write(&config, &text).unwrap();
        let line = text.lines().position(|l| l.starts_with(named)).unwrap() + 1;
        for cmd in ["serve", "check-config"] {
            let out = Command::new(binary())
                .args([cmd, "--config"])
                .arg(&config)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{cmd}: {stderr}");
            assert!(
                stderr.contains("backend \"local\" refused its settings")
                    && stderr.contains(&format!("line {line}: backends.local.settings.{named}")),
                "{cmd}: {stderr}"
            );
            assert!(!stderr.contains("column"), "{cmd}: {stderr}");
        }
    }
}

/// `check-config` is what an administrator runs before a restart: it finds what `serve` would
/// refuse or serve degraded, not just what the TOML parser sees — and changes nothing.
#[test]
fn check_config_finds_what_serve_would_meet_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("c.toml");
    let check = |text: &str| {
        std::fs::write(&config, text).unwrap();
        Command::new(binary())
            .args(["check-config", "--config"])
            .arg(&config)
            .output()
            .unwrap()
    };
    let good = config_text(&data, &plugins(), "");
    let out = check(&good);
    let stdout = ok(out);
    assert!(
        stdout.contains("ok; backends loaded and configured: local (local-ca "),
        "{stdout}"
    );
    for (text, expect) in [
        (
            good.replace("keys = [\"local-ca\"]", "keys = []"),
            "custody key \"local-ca\" (settings.ca_key), which is not granted",
        ),
        (
            config_text(
                &data,
                &plugins(),
                "[backends.imports]\nplugin = \"pfx-import\"\nsettings_files = { trust_anchors_pem = \"/nonexistent/roots.pem\" }",
            ),
            "settings_files.trust_anchors_pem: reading /nonexistent/roots.pem",
        ),
        (
            config_text(&data, &plugins(), "[backends.gone]\nplugin = \"nosuch\""),
            "nosuch.wasm",
        ),
    ] {
        let out = check(&text);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(expect), "{expect}: {stderr}");
    }
    // Warnings: serve runs, but something will not be as configured. A CRL directory this
    // process cannot write (the files would not come); an SCEP server whose CA key is EC
    // (clients that encrypt to every certificate GetCACert returns cannot encrypt to it;
    // micromdm's scepclient panics).
    for (extra, expect) in [
        (
            "[revocation]\ncrl_dir = \"/nonexistent/pki\"\n[revocation.cas.local]\nkey = \"local-ca\"",
            &[
                "warning: revocation.crl_dir /nonexistent/pki: this process cannot write it (No \
                 such file or directory",
            ][..],
        ),
        (
            "[scep]\nprofile = \"smime\"\nca_key = \"local-ca\"",
            &[
                "warning: scep.ca_key \"local-ca\" is an ec-p256 key",
                "encrypt their request to every certificate",
            ][..],
        ),
    ] {
        let out = check(&config_text(&data, &plugins(), extra));
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{stderr}");
        for e in expect {
            assert!(stderr.contains(e), "{e}: {stderr}");
        }
    }
    assert!(!data.exists(), "check-config created the data directory");
}

/// `s`, with a request in progress: its handler is reading the body it asked for with
/// `100 Continue`, and the body does not come.
fn with_a_body_on_its_way(mut s: std::net::TcpStream, token: &str) -> std::net::TcpStream {
    use std::io::{Read, Write};
    s.write_all(
        format!(
            "POST /v1/jobs/issue HTTP/1.1\r\nHost: certconn\r\nAuthorization: Bearer \
             {token}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\
             Expect: 100-continue\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let mut interim = [0u8; 25];
    s.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"{").unwrap();
    s
}

/// At `api.max_connections`, with every connection busy (a request's body on its way), the
/// API listener takes no further connection until one closes: a third client's request waits
/// (in the kernel's queue, not refused) and is answered as soon as one of the two leaves. The
/// daemon says so in its log (event 5604) and in its metrics.
#[test]
fn a_listener_whose_connections_are_all_busy_serves_the_next_client_when_one_leaves() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_in(dir.path(), |data| {
        with_api_settings(
            &config_text(data, &plugins(), ""),
            "max_connections = 2\nbody_timeout_seconds = 600",
        )
    });
    let token = data_token(dir.path(), "api-token");
    // Two requests in progress.
    let mut busy: Vec<_> = (0..2)
        .map(|_| {
            let s = std::net::TcpStream::connect(("127.0.0.1", daemon.port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            with_a_body_on_its_way(s, &token)
        })
        .collect();
    let mut third = std::net::TcpStream::connect(("127.0.0.1", daemon.port)).unwrap();
    third
        .write_all(b"GET /v1/health HTTP/1.1\r\nHost: certconn\r\n\r\n")
        .unwrap();
    let mut head = [0u8; 15];
    // A daemon without the limit, or one that closed a busy connection, would answer at once.
    third
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let waited = third.read_exact(&mut head);
    assert!(
        waited.as_ref().is_err_and(|e| matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )),
        "the third connection was answered, or refused, with two busy at a limit of two: {waited:?}"
    );
    wait_for_event(&daemon, 5604, Duration::from_secs(30));
    drop(busy.remove(0));
    third
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    third
        .read_exact(&mut head)
        .expect("the waiting client was not served once a connection closed");
    assert_eq!(&head, b"HTTP/1.1 200 OK");
    drop((busy, third));
    let reached = metric(
        &scrape_metrics(daemon.port, dir.path()),
        "certconn_api_connection_limit_reached_total{listener=\"api\"}",
    );
    assert!(reached >= 1.0, "{reached}");
}

/// With `api.max_connections_per_address`, one address whose connections are all busy (a
/// request's body on its way in each) cannot take the listener from everyone else: its next
/// connection is closed unanswered, a client from another address is served at once, and once
/// one of its own closes it is served again. The daemon says so in its log (event 5607) and
/// its metrics.
#[test]
fn an_address_holding_its_share_of_the_connections_does_not_keep_others_out() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_in(dir.path(), |data| {
        with_api_settings(
            &config_text(data, &plugins(), ""),
            "max_connections = 8\nmax_connections_per_address = 2\nbody_timeout_seconds = 600",
        )
    });
    let token = data_token(dir.path(), "api-token");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let connect_from = |ip: &str| -> std::net::TcpStream {
        runtime.block_on(async {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
            let stream = socket
                .connect(([127, 0, 0, 1], daemon.port).into())
                .await
                .unwrap();
            let stream = stream.into_std().unwrap();
            stream.set_nonblocking(false).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            stream
        })
    };
    let health = |s: &mut std::net::TcpStream| -> std::io::Result<[u8; 15]> {
        s.write_all(b"GET /v1/health HTTP/1.1\r\nHost: certconn\r\n\r\n")?;
        let mut head = [0u8; 15];
        s.read_exact(&mut head)?;
        Ok(head)
    };
    let mut busy: Vec<_> = (0..2)
        .map(|_| with_a_body_on_its_way(connect_from("127.0.0.1"), &token))
        .collect();
    let refused = health(&mut connect_from("127.0.0.1"));
    assert!(
        refused.is_err(),
        "a third connection from an address holding two was answered: {refused:?}"
    );
    assert_eq!(
        &health(&mut connect_from("127.0.0.2")).expect("another address was not served"),
        b"HTTP/1.1 200 OK"
    );
    wait_for_event(&daemon, 5607, Duration::from_secs(30));
    drop(busy.remove(0));
    // The daemon counts the closed connection out when it sees it close; until then the
    // address still holds two, so ask until it is let in.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let served = loop {
        match health(&mut connect_from("127.0.0.1")) {
            Ok(head) => break head,
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("the address was not let in again once a connection closed: {e}"),
        }
    };
    assert_eq!(&served, b"HTTP/1.1 200 OK");
    // Read from the other address: this one's closed connections may not be counted out yet.
    let mut scrape = connect_from("127.0.0.2");
    scrape
        .write_all(
            format!(
                "GET /metrics HTTP/1.1\r\nHost: certconn\r\nAuthorization: Bearer {}\r\n\
                 Connection: close\r\n\r\n",
                data_token(dir.path(), "api-read-token")
            )
            .as_bytes(),
        )
        .unwrap();
    let mut metrics = String::new();
    scrape.read_to_string(&mut metrics).unwrap();
    drop(busy);
    let counted = metric(
        &metrics,
        "certconn_api_connections_refused_per_address_total{listener=\"api\"}",
    );
    assert!(counted >= 1.0, "{counted}");
}

/// At `api.max_connections`, connections idle between requests do not keep a new client
/// waiting: the listener closes the oldest of them (here a keep-alive connection answered
/// and left open) and serves the new one at once, as nginx reuses its idle connections.
#[test]
fn a_listener_at_its_connection_limit_closes_the_oldest_idle_connection_for_the_next_client() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_in(dir.path(), |data| {
        with_api_settings(
            &config_text(data, &plugins(), ""),
            "max_connections = 2\nheader_timeout_seconds = 600",
        )
    });
    const REQUEST: &[u8] = b"GET /v1/health HTTP/1.1\r\nHost: certconn\r\n\r\n";
    // Two keep-alive connections, each answered and left open, the first one first.
    let mut idle: Vec<_> = (0..2)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", daemon.port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            s.write_all(REQUEST).unwrap();
            let mut got = [0u8; 1024];
            let n = s.read(&mut got).unwrap();
            assert!(got[..n].starts_with(b"HTTP/1.1 200 OK"));
            s
        })
        .collect();
    // The third is answered without waiting for either to time out (600 s).
    let mut third = std::net::TcpStream::connect(("127.0.0.1", daemon.port)).unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    third.write_all(REQUEST).unwrap();
    let mut head = [0u8; 15];
    third
        .read_exact(&mut head)
        .expect("the new client was not served while the held connections were idle");
    assert_eq!(&head, b"HTTP/1.1 200 OK");
    // The oldest was closed: its read ends (after the rest of its answer, if unread).
    let (result, _) = read_until_closed(idle.remove(0));
    assert!(
        result.is_ok(),
        "the oldest idle connection is still open: {result:?}"
    );
    // The other is still served.
    let mut second = idle.remove(0);
    second.write_all(REQUEST).unwrap();
    let mut got = [0u8; 1024];
    let n = second.read(&mut got).unwrap();
    assert!(
        got[..n].starts_with(b"HTTP/1.1 200 OK"),
        "{}",
        String::from_utf8_lossy(&got[..n])
    );
    drop((second, third));
    wait_for_event(&daemon, 5604, Duration::from_secs(30));
    let closed = metric(
        &scrape_metrics(daemon.port, dir.path()),
        "certconn_api_idle_connections_closed_total{listener=\"api\"}",
    );
    assert!(closed >= 1.0, "{closed}");
}

/// The status page says how full each listener is, and a listener at its limit needs
/// attention: here the plain listener (where SCEP clients come) holds both connections it may,
/// and the API, on its own listener, still answers and says so, as `certconn status` does.
#[test]
fn the_status_page_shows_a_listener_at_its_connection_limit() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_in(dir.path(), |data| {
        with_api_settings(
            &config_text(data, &plugins(), ""),
            "plain_listen = \"127.0.0.1:0\"\nmax_connections = 2",
        )
    });
    let read = data_token(dir.path(), "api-read-token");
    let status = || {
        let (code, body) = http_get(daemon.port, "/v1/status", Some(&read));
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let api = v["sources"][0].clone();
        assert_eq!(api["name"], "request API", "{v}");
        (
            v["status"].clone(),
            api["state"].clone(),
            api["detail"].as_str().unwrap().to_owned(),
        )
    };
    let (overall, state, detail) = status();
    assert!(
        detail.contains("of 2 connections on the API listener"),
        "{detail}"
    );
    assert!(
        detail.contains("0 of 2 connections on the plain listener"),
        "{detail}"
    );
    assert_eq!((overall, state), (json!("ok"), json!("serving")));

    let plain = plain_addr(dir.path());
    // Two keep-alive connections, each answered (so taken), and held.
    let held: Vec<_> = (0..2)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(plain).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            s.write_all(b"GET /scep?operation=GetCACaps HTTP/1.1\r\nHost: certconn\r\n\r\n")
                .unwrap();
            let mut head = [0u8; 12];
            s.read_exact(&mut head).unwrap();
            assert_eq!(&head, b"HTTP/1.1 404", "no SCEP here: a 404, but an answer");
            s
        })
        .collect();
    let (overall, state, detail) = status();
    assert!(
        detail.contains("2 of 2 connections on the plain listener (at api.max_connections"),
        "{detail}"
    );
    assert_eq!((overall, state), (json!("attention"), json!("attention")));
    // `certconn status` (from /v1/health, which needs no token) warns of it.
    let (ok, said) = run_certconn(&["status"], &daemon.config);
    assert!(ok, "{said}");
    assert!(
        said.contains(
            "warning: 2 of 2 connections on the plain listener (at api.max_connections: new clients wait)"
        ) && said.contains("of 2 connections on the API listener"),
        "{said}"
    );
    drop(held);
}

/// Started with a service's default open-file limit (1,024 soft), `serve` raises its soft
/// limit to the hard one, so `api.max_connections` can be reached; where the hard limit
/// itself is too low for the listeners' limits, it says so at start (event 5605).
#[test]
fn serve_raises_its_open_file_limit_and_warns_when_the_hard_one_is_too_low() {
    let open_files = |daemon: &Daemon| {
        let (soft, hard) = process_limit(daemon.child.id(), "Max open files");
        (soft.parse::<u64>().unwrap(), hard.parse::<u64>().unwrap())
    };
    let mut hard = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` writes one struct into the pointer it is given.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut hard) },
        0
    );
    let hard = hard.rlim_max.min(1 << 20);
    assert!(hard > 2048, "this machine's hard open-file limit is {hard}");

    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let mut daemon = Daemon::start_with_file_limit(&config, &dir.path().join("a.log"), 1024, hard);
    assert_eq!(open_files(&daemon), (hard, hard));
    assert_eq!(http_get(daemon.port, "/v1/health", None).0, 200);
    assert_eq!(events(&daemon, 5605), 0);
    daemon.stop();

    // A hard limit of 1,024 leaves 1,024 connections (the default) no room beside the journal.
    let mut daemon = Daemon::start_with_file_limit(&config, &dir.path().join("b.log"), 512, 1024);
    assert_eq!(open_files(&daemon), (1024, 1024));
    assert_eq!(events(&daemon, 5605), 1);
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    assert!(
        log.contains("may open 1024 files") && log.contains("api.max_connections = 1024"),
        "{log}"
    );
    daemon.stop();
}

/// Reads what the daemon sends until it closes the connection; the read timeout only keeps a
/// broken daemon from hanging the test.
fn read_until_closed(mut s: std::net::TcpStream) -> (std::io::Result<usize>, String) {
    use std::io::Read;
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut got = Vec::new();
    let result = s.read_to_end(&mut got);
    (result, String::from_utf8_lossy(&got).into_owned())
}

/// A client that sends a request's headers and then stops sending its body (a slow-body
/// attack: the headers' deadline is over once they are in) gets 408 after
/// `api.body_timeout_seconds`, and its connection is closed, freeing the listener's slot;
/// a client that sends a large body slowly but steadily is served though it takes longer.
#[test]
fn a_request_body_that_stops_gets_408_and_a_steady_slow_one_is_served() {
    use std::io::Write;
    use std::time::Instant;
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_in(dir.path(), |data| {
        with_api_settings(
            &config_text(data, &plugins(), ""),
            "body_timeout_seconds = 1\nmax_connections = 1",
        )
    });
    let token = data_token(dir.path(), "api-token");
    let head = |length: usize| {
        format!(
            "POST /v1/jobs/issue HTTP/1.1\r\nHost: certconn\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
        )
    };
    let started = Instant::now();
    let mut stalled = std::net::TcpStream::connect(("127.0.0.1", daemon.port)).unwrap();
    stalled
        .write_all(format!("{}{{\"profile\"", head(1000)).as_bytes())
        .unwrap();
    let (result, said) = read_until_closed(stalled);
    assert!(
        result.is_ok(),
        "the stalled connection was not closed: {result:?}"
    );
    assert!(said.starts_with("HTTP/1.1 408 Request Timeout"), "{said}");
    assert!(said.contains("api.body_timeout_seconds"), "{said}");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "408 before the deadline: {:?}",
        started.elapsed()
    );
    wait_for_event(&daemon, 5606, Duration::from_secs(30));

    // 6,000 bytes (a request padded with JSON's whitespace) in six parts 300 ms apart: 1.5 s,
    // past the second the body has, but at 3,000 bytes a second, well above the 500 that
    // extend it. The listener's one slot is free again, or this would wait.
    let mut body = json!({ "profile": "smime", "subject": "CN=slow but steady" }).to_string();
    body.push_str(&" ".repeat(6000 - body.len()));
    let started = Instant::now();
    let mut steady = std::net::TcpStream::connect(("127.0.0.1", daemon.port)).unwrap();
    steady.write_all(head(body.len()).as_bytes()).unwrap();
    for part in body.as_bytes().chunks(1000) {
        steady.write_all(part).unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(started.elapsed() >= Duration::from_millis(1500));
    let mut head = [0u8; 12];
    steady
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    std::io::Read::read_exact(&mut steady, &mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 202", "the steady body was not accepted");
    // It holds the one slot while kept alive.
    drop(steady);

    assert_eq!(
        metric(
            &scrape_metrics(daemon.port, dir.path()),
            "certconn_api_client_timeouts_total{listener=\"api\",phase=\"body\"}",
        ),
        1.0
    );
}

/// A client that asks for answers and never reads them (here 200 pipelined requests for the
/// API's 100 KB description, far more than the sockets' buffers hold) is cut off once a write
/// has waited `api.send_timeout_seconds` for it; it would otherwise hold its connection for
/// ever, as no request deadline runs while the daemon writes.
#[test]
fn an_answer_the_client_never_reads_is_cut_off_after_the_send_timeout() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_in(dir.path(), |data| {
        with_api_settings(
            &config_text(data, &plugins(), ""),
            "send_timeout_seconds = 1",
        )
    });
    let (status, document) = http_get(daemon.port, "/v1/openapi.json", None);
    assert_eq!(status, 200);
    let mut reader = std::net::TcpStream::connect(("127.0.0.1", daemon.port)).unwrap();
    reader
        .write_all(&b"GET /v1/openapi.json HTTP/1.1\r\nHost: certconn\r\n\r\n".repeat(200))
        .unwrap();
    // The daemon says so once a write has waited the second; reading only then.
    wait_for_event(&daemon, 5606, Duration::from_secs(60));
    let (result, said) = read_until_closed(reader);
    // Closed with answers unsent: the end of what was sent, or a reset.
    let answers = said.matches("HTTP/1.1 200 OK").count();
    assert!(
        answers < 200 && said.len() < 200 * document.len(),
        "all {answers} answers arrived ({result:?})"
    );
    assert_eq!(
        metric(
            &scrape_metrics(daemon.port, dir.path()),
            "certconn_api_client_timeouts_total{listener=\"api\",phase=\"send\"}",
        ),
        1.0
    );
}

/// A client that opens a connection and never finishes its request's headers (a slow-headers
/// attack on the SCEP endpoint, say) is cut off after `api.header_timeout_seconds`, and so is a
/// keep-alive connection left idle as long; it would otherwise hold a file descriptor for ever.
#[test]
fn a_connection_that_sends_no_request_is_closed_after_the_header_timeout() {
    use std::io::Write;
    use std::time::Instant;
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_in(dir.path(), |data| {
        with_api_settings(
            &config_text(data, &plugins(), ""),
            "header_timeout_seconds = 1",
        )
    });
    let started = Instant::now();
    let mut half = std::net::TcpStream::connect(("127.0.0.1", daemon.port)).unwrap();
    half.write_all(b"GET /v1/health HTTP/1.1\r\nHost: certconn\r\n")
        .unwrap();
    let (result, said) = read_until_closed(half);
    assert!(
        result.is_ok(),
        "the half-sent request's connection was not closed: {result:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "closed before the timeout: {:?}",
        started.elapsed()
    );
    assert!(!said.contains("200 OK"), "{said}");
    // A whole request is answered, and its connection, kept alive and idle, is closed too.
    let mut idle = std::net::TcpStream::connect(("127.0.0.1", daemon.port)).unwrap();
    idle.write_all(b"GET /v1/health HTTP/1.1\r\nHost: certconn\r\n\r\n")
        .unwrap();
    let (result, said) = read_until_closed(idle);
    assert!(
        result.is_ok(),
        "the idle connection was not closed: {result:?}"
    );
    assert!(said.starts_with("HTTP/1.1 200 OK"), "{said}");
    // The daemon serves on.
    assert_eq!(http_get(daemon.port, "/v1/health", None).0, 200);
}
