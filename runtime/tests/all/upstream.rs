//! certconn as a connector: work fetched from the reference service over the connector
//! protocol, done, and every result sent back — a PKCS#12 the device opens with the password
//! sealed to it, a malformed item and a bad one failing alone beside good ones, an outage of
//! the service ridden out with nothing lost or sent twice, and the heartbeat with the
//! service's version policy.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// The reference service (`crates/reference-service`), built beside certconn by
/// `cargo build --workspace` (scripts/test).
struct Service {
    child: Child,
    addr: String,
    token_file: PathBuf,
    /// With TLS (`--tls-ca-file`): the service's CA certificate.
    ca_file: Option<PathBuf>,
}

impl Service {
    fn start(dir: &Path) -> Service {
        let token_file = dir.join("connector-token");
        write_private(&token_file, "connector-secret-0123456789\n");
        Self::start_with(dir, token_file, &["--connector-token-file"], None)
    }

    /// The service over HTTPS with its identity CA (`ca.pem` in `dir`), issuing identities
    /// that live `identity_seconds`; no connector token: identities only.
    fn start_tls(dir: &Path, identity_seconds: u64) -> Service {
        let ca_file = dir.join("service-ca.pem");
        let seconds = identity_seconds.to_string();
        Self::start_with(
            dir,
            ca_file.clone(),
            &["--identity-seconds", &seconds, "--tls-ca-file"],
            Some(ca_file),
        )
    }

    fn start_with(dir: &Path, file: PathBuf, args: &[&str], ca_file: Option<PathBuf>) -> Service {
        let addr_file = dir.join("service.addr");
        let binary = binary().with_file_name("certconn-reference-service");
        let child = Command::new(&binary)
            .args(["--listen", "127.0.0.1:0", "--visibility-seconds", "5"])
            .arg("--addr-file")
            .arg(&addr_file)
            .args(args)
            .arg(&file)
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e} (built by scripts/test)", binary.display()));
        let start = Instant::now();
        let addr = loop {
            if let Ok(addr) = std::fs::read_to_string(&addr_file) {
                break addr;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the reference service did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Service {
            child,
            addr,
            token_file: file,
            ca_file,
        }
    }

    /// `https://ADDR` or `http://ADDR`.
    fn url(&self) -> String {
        match &self.ca_file {
            Some(_) => format!("https://{}", self.addr),
            None => format!("http://{}", self.addr),
        }
    }

    fn admin(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-X", method, "-w", "\n%{http_code}"]);
        if let Some(ca) = &self.ca_file {
            cmd.arg("--cacert").arg(ca);
        }
        if let Some(b) = body {
            cmd.args(["-H", "content-type: application/json", "-d", &b.to_string()]);
        }
        let out = cmd
            .arg(format!("{}/admin/v1{path}", self.url()))
            .output()
            .expect("curl runs");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').expect("status line");
        let value = serde_json::from_str(body).unwrap_or(Value::Null);
        (code.trim().parse().unwrap(), value)
    }

    fn enqueue(&self, item: Value) {
        let (status, answer) = self.admin("POST", "/work?unchecked=true", Some(&item));
        assert_eq!(status, 201, "{answer}");
    }

    /// Enqueues `count` issue items, `{prefix}-0` …, each for a device of subject
    /// `CN={prefix} {i}`.
    fn enqueue_issues(&self, prefix: &str, count: usize, device_cert: &Path) {
        for i in 0..count {
            self.enqueue(issue_item(
                &format!("{prefix}-{i}"),
                &format!("CN={prefix} {i}"),
                device_cert,
            ));
        }
    }

    fn stats(&self) -> Value {
        self.admin("GET", "/stats", None).1
    }

    /// Waits until the service holds `n` results.
    fn wait_results(&self, n: u64, timeout: Duration) -> Value {
        let start = Instant::now();
        loop {
            let stats = self.stats();
            if stats["results"].as_u64() == Some(n) {
                return stats;
            }
            assert!(start.elapsed() < timeout, "{n} results never came: {stats}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn result(&self, id: &str) -> Value {
        let (status, result) = self.admin("GET", &format!("/results/{id}"), None);
        assert_eq!(status, 200, "{id}: {result}");
        result
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The daemon's jobs from the upstream (`certconn jobs list --json`).
fn upstream_jobs(daemon: &Daemon) -> Vec<Value> {
    let out = daemon.cli(&["jobs", "list", "--json", "--limit", "10000"]);
    let jobs: Value = serde_json::from_slice(&out.stdout).expect("the jobs as JSON");
    jobs["jobs"]
        .as_array()
        .expect("a list of jobs")
        .iter()
        .filter(|j| j["source"] == "upstream")
        .cloned()
        .collect()
}

fn upstream_section(service: &Service) -> String {
    format!(
        "[upstream]\nservice = \"http://{}\"\ntoken_file = \"{}\"\npoll_wait_seconds = 2\n",
        service.addr,
        service.token_file.display()
    )
}

fn issue_item(id: &str, subject: &str, device_cert: &Path) -> Value {
    json!({
        "id": id,
        "kind": "issue",
        "profile": "smime",
        "subject": subject,
        "sans": ["email:device@example.com"],
        "device_certificate": std::fs::read_to_string(device_cert).unwrap(),
    })
}

/// `base64 -d` of `text` into `path`.
fn write_base64(path: &Path, text: &str) {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap_or_else(|e| panic!("not base64: {e}"));
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn work_from_the_service_is_done_and_every_result_goes_back() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(dir.path());
    let (device_key, device_cert) = openssl_device(dir.path());
    // Enqueued before certconn starts: they wait at the service.
    service.enqueue(issue_item("issue-1", "CN=upstream device 1", &device_cert));
    service.enqueue(json!({ "id": "teleport-1", "kind": "teleport" }));
    service.enqueue(json!({
        "id": "bad-profile", "kind": "issue", "profile": "nope", "subject": "CN=x",
        "device_certificate": "-----BEGIN CERTIFICATE-----\n",
    }));
    service.enqueue(json!({ "id": "revoke-unknown", "kind": "revoke", "serial": "0badc0de" }));
    let daemon = start_in(dir.path(), |data| {
        config_text(data, &plugins(), &upstream_section(&service))
    });

    let stats = service.wait_results(4, Duration::from_secs(60));
    assert_eq!(stats["acked"], 4, "{stats}");
    assert_eq!(stats["duplicate_results"], 0, "{stats}");

    // The issued certificate: a PFX, and its password sealed to the device.
    let issued = service.result("issue-1");
    assert_eq!(issued["status"], "succeeded", "{issued}");
    let pfx = dir.path().join("issue-1.p12");
    write_base64(&pfx, issued["pfx"].as_str().expect("a PFX"));
    let sealed = dir.path().join("issue-1.password.cms");
    write_base64(
        &sealed,
        issued["sealed_password"]
            .as_str()
            .expect("a sealed password"),
    );
    let password = openssl_unseal(&sealed, &device_cert, &device_key);
    // The PFX opens with the password only the device could unseal.
    openssl_pkcs12_info(&pfx, &password);
    let cert = dir.path().join("issue-1.pem");
    std::fs::write(
        &cert,
        issued["certificate_pem"].as_str().expect("a certificate"),
    )
    .unwrap();
    let subject = run_ok(
        Command::new("openssl")
            .args(["x509", "-noout", "-subject", "-in"])
            .arg(&cert),
    );
    assert!(subject.contains("upstream device 1"), "{subject}");

    // Each bad item failed alone, saying why.
    let teleport = service.result("teleport-1");
    assert_eq!(teleport["status"], "failed");
    assert!(
        teleport["reason"]
            .as_str()
            .is_some_and(|r| r.contains("teleport")),
        "{teleport}"
    );
    let bad = service.result("bad-profile");
    assert_eq!(bad["status"], "failed");
    assert!(
        bad["reason"].as_str().is_some_and(|r| r.contains("nope")),
        "{bad}"
    );
    // A serial certconn never issued: refused at the door, no job. The service cannot name a
    // backend (its items have no such field), so the reason points to the connector's
    // administrator, who can.
    let revoke = service.result("revoke-unknown");
    assert_eq!(revoke["status"], "failed", "{revoke}");
    let reason = revoke["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("issued no certificate with serial 0badc0de")
            && reason.contains("certconn submit revoke --serial SERIAL --backend NAME")
            && !reason.contains("the request's `backend`"),
        "{revoke}"
    );

    // certconn's view: connected, and what it did. The service holds the result before
    // certconn has recorded it delivered: wait for that, then read the rest.
    let start = Instant::now();
    let health = loop {
        let (code, health) = http_get(daemon.port, "/v1/health", None);
        assert_eq!(code, 200);
        let health: Value = serde_json::from_str(&health).unwrap();
        if health["upstream"]["delivered"] == 1 && health["upstream"]["backlog"]["owed"] == 0 {
            break health;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the result was never recorded delivered: {health}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let upstream = &health["upstream"];
    assert_eq!(upstream["connected"], true, "{health}");
    assert_eq!(upstream["received"], 1, "{health}");
    assert_eq!(upstream["delivered"], 1, "{health}");
    // The poll that brought the items was answered, and `certconn status` says when.
    let status = ok(daemon.cli(&["status"]));
    assert!(
        status.contains(": connected, last poll answered 20"),
        "{status}"
    );
    assert_eq!(upstream["refused"], 3, "{health}");
    // Everything done and taken: no backlog.
    assert_eq!(
        upstream["backlog"],
        json!({ "unfinished": 0, "owed": 0 }),
        "{health}"
    );
    // The journaled item is a job of the source `upstream`, keyed by the item id; the
    // refused ones are not jobs.
    let keys: Vec<Value> = upstream_jobs(&daemon)
        .iter()
        .map(|j| j["idempotency_key"].clone())
        .collect();
    assert_eq!(keys, [json!("issue-1")]);

    // The log by flow (docs/events.md): the item journaled (5003) and accepted as an issue job
    // (1501) before it was acknowledged; the three bad items answered with their failure
    // (5006); the job's success (1502), logged as its transaction commits.
    assert_eq!(events(&daemon, 5003), 1);
    assert_eq!(events(&daemon, 1501), 1);
    assert_eq!(events(&daemon, 5006), 3);
    assert_eq!(wait_for_event(&daemon, 1502, Duration::from_secs(30)), 1);
}

#[test]
fn an_outage_of_the_service_loses_nothing_and_sends_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(dir.path());
    let (_, device_cert) = openssl_device(dir.path());
    let daemon = start_in(dir.path(), |data| {
        config_text(data, &plugins(), &upstream_section(&service))
    });
    service.enqueue(issue_item("before", "CN=before the outage", &device_cert));
    service.wait_results(1, Duration::from_secs(60));

    // Down for a while: every call gets 503 with Retry-After. certconn says so.
    let (status, _) = service.admin("POST", "/outage", Some(&json!({ "seconds": 4 })));
    assert_eq!(status, 204);
    let start = Instant::now();
    loop {
        let (_, health) = http_get(daemon.port, "/v1/health", None);
        let health: Value = serde_json::from_str(&health).unwrap();
        if health["upstream"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("503"))
        {
            assert_eq!(health["upstream"]["connected"], false, "{health}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the outage never showed: {health}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Work enqueued meanwhile is done once the service is back.
    service.enqueue_issues("during", 5, &device_cert);
    let stats = service.wait_results(6, Duration::from_secs(90));
    assert_eq!(stats["duplicate_results"], 0, "{stats}");
    assert_eq!(stats["acked"], 6, "{stats}");
    for i in 0..5 {
        assert_eq!(
            service.result(&format!("during-{i}"))["status"],
            "succeeded"
        );
    }
    // Six items, six jobs: none was journaled twice.
    assert_eq!(upstream_jobs(&daemon).len(), 6);
}

/// The items of one batch are journaled together and acknowledged side by side, and their
/// results sent side by side: with the service holding each acknowledgement and result 300 ms,
/// a connector that made these calls one at a time would never have two of a kind in flight.
#[test]
fn the_items_of_a_batch_are_acknowledged_and_answered_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(dir.path());
    let (_, device_cert) = openssl_device(dir.path());
    let (status, _) = service.admin("POST", "/pace", Some(&json!({ "millis": 300 })));
    assert_eq!(status, 204);
    // Ten items waiting before certconn starts: its first poll (batch 10) takes them all.
    service.enqueue_issues("side", 10, &device_cert);
    let _daemon = start_in(dir.path(), |data| {
        config_text(data, &plugins(), &upstream_section(&service))
    });
    let stats = service.wait_results(10, Duration::from_secs(90));
    assert_eq!(stats["acked"], 10, "{stats}");
    assert_eq!(stats["duplicate_results"], 0, "{stats}");
    // One at a time, each would be 1 (an acknowledgement and a result may overlap each other:
    // they come from two loops).
    for calls in ["acks", "results"] {
        let most = stats["most_in_flight"][calls]
            .as_u64()
            .expect("most_in_flight");
        assert!(
            (2..=8).contains(&most),
            "{calls} in flight at once: {most} (certconn allows 8): {stats}"
        );
    }
    for i in 0..10 {
        assert_eq!(service.result(&format!("side-{i}"))["status"], "succeeded");
    }
}

/// Calls to the service reuse connections, even when as many are in flight as the connector
/// allows: with the service holding each acknowledgement and result 200 ms, the connector has
/// eight of each at once, a long poll and a heartbeat. Sixty items cost more than 120 calls;
/// a connector that kept fewer connections than it makes calls at once made a new connection
/// for each call beyond them (about 70 here; 393 for 1,051 items in `certconn bench
/// --upstream`).
#[test]
fn calls_to_the_service_share_connections() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(dir.path());
    let (_, device_cert) = openssl_device(dir.path());
    let (status, _) = service.admin("POST", "/pace", Some(&json!({ "millis": 200 })));
    assert_eq!(status, 204);
    service.enqueue_issues("kept", 60, &device_cert);
    let _daemon = start_in(dir.path(), |data| {
        config_text(data, &plugins(), &upstream_section(&service))
    });
    let stats = service.wait_results(60, Duration::from_secs(90));
    assert_eq!(stats["acked"], 60, "{stats}");
    for calls in ["acks", "results"] {
        assert_eq!(stats["most_in_flight"][calls], 8, "{stats}");
    }
    let connections = stats["connector_connections"]
        .as_u64()
        .expect("connector_connections");
    // 16 in three runs; 40 and 42 with the eight kept connections of before.
    assert!(
        connections <= 24,
        "{connections} connections for 18 calls at once at most: {stats}"
    );
}

#[test]
fn an_upstream_off_loopback_in_plain_http_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("certconn.toml");
    let token = dir.path().join("token");
    write_private(&token, "t\n");
    let text = config_text(
        &dir.path().join("data"),
        &plugins(),
        &format!(
            "[upstream]\nservice = \"http://mdm.example.com\"\ntoken_file = \"{}\"\n",
            token.display()
        ),
    );
    std::fs::write(&config, text).unwrap();
    let (ok, said) = run_certconn(&["check-config", "--syntax-only"], &config);
    assert!(!ok, "{said}");
    assert!(
        said.contains("upstream.service") && said.contains("use https"),
        "{said}"
    );
}

#[test]
fn kill_9_under_a_stream_of_items_leaves_one_result_and_one_certificate_per_item() {
    const ITEMS: usize = 30;
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(dir.path());
    let (_, device_cert) = openssl_device(dir.path());
    service.enqueue_issues("item", ITEMS, &device_cert);
    let config_dir = dir.path().to_owned();
    let mut daemon = start_in(&config_dir, |data| {
        config_text(data, &plugins(), &upstream_section(&service))
    });
    // Killed twice mid-stream, at points the results show.
    for at in [5, 15] {
        let start = Instant::now();
        while service.stats()["results"].as_u64().unwrap_or(0) < at {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{}",
                service.stats()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        daemon.kill9();
        daemon = Daemon::start(&daemon.config.clone(), &config_dir.join("daemon.log"));
    }
    let stats = service.wait_results(ITEMS as u64, Duration::from_secs(120));
    assert_eq!(stats["acked"], ITEMS, "{stats}");
    assert_eq!(stats["replaced_results"], 0, "a result changed: {stats}");
    let mut serials = std::collections::BTreeSet::new();
    for i in 0..ITEMS {
        let result = service.result(&format!("item-{i}"));
        assert_eq!(result["status"], "succeeded", "{result}");
        serials.insert(result["serial"].as_str().unwrap().to_owned());
    }
    assert_eq!(serials.len(), ITEMS, "every item its own certificate");
    // certconn issued exactly one certificate per item: the ledger holds 30, the journal 30 jobs.
    assert_eq!(upstream_jobs(&daemon).len(), ITEMS);
    let token = data_token(dir.path(), "api-token");
    let (code, body) = http_get(daemon.port, "/v1/certificates?limit=1000", Some(&token));
    assert_eq!(code, 200, "{body}");
    let ledger: Value = serde_json::from_str(&body).unwrap();
    let issued: std::collections::BTreeSet<String> = ledger["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["serial"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        issued, serials,
        "the ledger holds exactly the certificates delivered"
    );
}

/// What the journal holds for an item but cannot read still reaches the service, and holds
/// back nothing else: a queued job whose request is not JSON (its item, offered, is
/// acknowledged as that job; the worker fails the job and its failure is the item's result),
/// and a succeeded job whose result is not JSON (reported failed, with why). Before, the
/// first's item was refused by the journal each time it came (a failed poll round), and its
/// failure never sent; the second stopped every report round behind it.
#[test]
fn what_the_journal_cannot_read_is_reported_failed_and_the_rest_still_goes() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(dir.path());
    let (_, device_cert) = openssl_device(dir.path());
    service.enqueue(issue_item("first", "CN=first", &device_cert));
    let daemon = start_in(dir.path(), |data| {
        config_text(data, &plugins(), &upstream_section(&service))
    });
    service.wait_results(1, Duration::from_secs(60));
    assert_eq!(service.result("first")["status"], "succeeded");

    // A queued copy whose request is not JSON, for item `spoiled`, not due for an hour: no
    // worker meets it before the service has offered its item. And the first job's result
    // spoiled, and owed again.
    let journal = dir.path().join("data/journal.sqlite");
    let in_an_hour = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 3_600_000;
    let db = rusqlite::Connection::open(&journal).unwrap();
    insert_unreadable_copy(&db, "first", "spoiled", in_an_hour);
    db.execute_batch(
        "UPDATE outbox SET result = 'not JSON'
             WHERE job_id = (SELECT id FROM jobs WHERE idempotency_key = 'first');
         UPDATE jobs SET delivered_at = NULL WHERE idempotency_key = 'first';",
    )
    .unwrap();
    // Offered, the item is recognised as that job and acknowledged.
    service.enqueue(issue_item("spoiled", "CN=spoiled", &device_cert));
    let start = Instant::now();
    while service.stats()["acked"] != 2 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the item of the unreadable job was never acknowledged: {}",
            service.stats()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Now due, it is failed by the next lease, which takes the job behind it.
    db.execute(
        "UPDATE jobs SET next_run_at = 0 WHERE idempotency_key = 'spoiled'",
        [],
    )
    .unwrap();
    drop(db);
    service.enqueue(issue_item("second", "CN=second", &device_cert));

    let start = Instant::now();
    let stats = loop {
        let stats = service.stats();
        if stats["results"] == 3 && stats["replaced_results"] == 1 {
            break stats;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the results never came: {stats}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(stats["acked"], 3, "{stats}");
    let second = service.result("second");
    assert_eq!(second["status"], "succeeded", "{second}");
    let spoiled = service.result("spoiled");
    assert_eq!(spoiled["status"], "failed", "{spoiled}");
    let why = spoiled["reason"].as_str().unwrap_or_default();
    assert!(
        why.contains("its record in the journal cannot be read (key must be a string"),
        "{why}"
    );
    let first = service.result("first");
    assert_eq!(first["status"], "failed", "{first}");
    let why = first["reason"].as_str().unwrap_or_default();
    assert!(
        why.contains("succeeded, but its result in certconn's journal cannot be read"),
        "{why}"
    );
    // Each marked delivered: nothing is owed any more, and nothing is left to run.
    wait_upstream(&daemon, "an empty backlog", |u| {
        u["backlog"]["owed"] == 0 && u["backlog"]["unfinished"] == 0
    });
    // The item offered for the job already journaled was acknowledged as such, not refused
    // by the journal (which would have failed the poll round and backed off every item).
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    assert!(!log.contains("the journal did not take item"), "{log}");
    assert!(
        log.contains("the journal holds this item's job but cannot read it"),
        "{log}"
    );
}

/// `date -u +%F` shifted by `days`.
fn date_in(days: i64) -> String {
    let out = Command::new("date")
        .args(["-u", "+%F", "-d", &format!("{days} days")])
        .output()
        .expect("date runs");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Waits until `/v1/health` shows this version at `stage`; the upstream status then.
fn wait_stage(daemon: &Daemon, stage: &str) -> Value {
    let start = Instant::now();
    loop {
        let (_, health) = http_get(daemon.port, "/v1/health", None);
        let health: Value = serde_json::from_str(&health).unwrap();
        if health["upstream"]["lifecycle"]["stage"] == stage {
            return health["upstream"].clone();
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the version never became {stage}: {health}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_heartbeat_reports_this_instance_and_the_services_policy_shows_where_its_version_stands() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(dir.path());
    let version = env!("CARGO_PKG_VERSION");
    // A newer release shipped ten days ago; this one is supported for 170 days more.
    let deprecated = json!({
        "latest": "99.0.0",
        "deprecated": [{
            "version": version,
            "deprecated_on": date_in(-10),
            "unsupported_after": date_in(170),
        }],
    });
    let (status, answer) = service.admin("PUT", "/version-policy", Some(&deprecated));
    assert_eq!(status, 204, "{answer}");
    let daemon = start_in(dir.path(), |data| {
        config_text(
            data,
            &plugins(),
            &format!("{}heartbeat_seconds = 1\n", upstream_section(&service)),
        )
    });

    let upstream = wait_stage(&daemon, "deprecated");
    let lifecycle = &upstream["lifecycle"];
    assert_eq!(lifecycle["latest"], "99.0.0");
    assert_eq!(lifecycle["unsupported_after"], date_in(170));
    // 170, or 169 if the day turned between the policy and the heartbeat.
    let left = lifecycle["days_left"].as_i64().unwrap();
    assert!((169..=170).contains(&left), "{lifecycle}");
    assert!(upstream["last_heartbeat"].is_string(), "{upstream}");
    assert!(upstream["heartbeat_error"].is_null(), "{upstream}");
    // The stage shows in the health answer a moment before its event is in the log.
    assert_eq!(
        wait_for_event(&daemon, 5012, Duration::from_secs(30)),
        1,
        "one warning when it became deprecated"
    );

    // `certconn status` says it as a warning; the metrics carry the stage.
    let out = ok(daemon.cli(&["status"]));
    assert!(
        out.contains(&format!(
            "warning: version: {version} is deprecated: supported until {}",
            date_in(170)
        )),
        "{out}"
    );
    assert!(
        out.contains("upstream http://")
            && (out.contains(": connected, last poll answered 20")
                || out.contains(": connected, no poll answered yet")),
        "{out}"
    );
    assert!(
        out.contains("upstream backlog: 0 jobs unfinished, 0 results to send"),
        "{out}"
    );
    let read = data_token(dir.path(), "api-read-token");
    let (_, metrics) = http_get(daemon.port, "/metrics", Some(&read));
    assert!(
        metrics.contains("certconn_version_lifecycle{stage=\"deprecated\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("certconn_version_lifecycle{stage=\"current\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("certconn_upstream_connected 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("certconn_upstream_backlog{kind=\"owed\"} 0"),
        "{metrics}"
    );

    // The service saw this instance: its version, protocol, plugins, queue and health.
    let (_, connectors) = service.admin("GET", "/connectors", None);
    let list = connectors["connectors"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{connectors}");
    let beat = &list[0]["heartbeat"];
    let instance = std::fs::read_to_string(dir.path().join("data/instance-id")).unwrap();
    assert!(!instance.trim().is_empty());
    assert_eq!(beat["instance"], instance.trim(), "{beat}");
    assert_eq!(beat["version"], version);
    assert_eq!(beat["protocol"], 1);
    assert_eq!(beat["health"], "ok");
    assert!(beat["queue"].is_object(), "{beat}");
    let plugins = beat["plugins"].as_array().unwrap();
    assert!(
        plugins.iter().any(|p| p["backend"] == "local"
            && p["plugin"] == "local-ca"
            && p["state"] == "serving"
            && p["version"]
                .as_str()
                .is_some_and(|v| v.starts_with("local-ca "))),
        "{beat}"
    );

    // Past its last day: unsupported, an error event, and `certconn status` says so.
    let past = json!({
        "latest": "99.0.0",
        "deprecated": [{
            "version": version,
            "deprecated_on": date_in(-190),
            "unsupported_after": date_in(-1),
        }],
    });
    let (status, answer) = service.admin("PUT", "/version-policy", Some(&past));
    assert_eq!(status, 204, "{answer}");
    wait_stage(&daemon, "unsupported");
    assert_eq!(wait_for_event(&daemon, 5013, Duration::from_secs(30)), 1);
    let out = ok(daemon.cli(&["status"]));
    assert!(
        out.contains(&format!("error: version: {version} is unsupported since")),
        "{out}"
    );

    // A policy that does not parse is refused by the service, and the stage stays.
    let (status, _) = service.admin(
        "PUT",
        "/version-policy",
        Some(&json!({ "latest": "99.0.0", "deprecated": [{ "version": version, "deprecated_on": "soon", "unsupported_after": "later" }] })),
    );
    assert_eq!(status, 422);

    // The newest release: current again, one info event.
    let (status, _) = service.admin(
        "PUT",
        "/version-policy",
        Some(&json!({ "latest": version })),
    );
    assert_eq!(status, 204);
    wait_stage(&daemon, "current");
    assert!(wait_for_event(&daemon, 5011, Duration::from_secs(30)) >= 1);
}

/// `[upstream]` for a registered connector: https, no token (its identity), the service's CA
/// from the registration.
fn identity_section(service: &Service) -> String {
    format!(
        "[upstream]\nservice = \"{}\"\npoll_wait_seconds = 2\nheartbeat_seconds = 1\n",
        service.url()
    )
}

/// Writes the config for `service` in `dir` without starting the daemon.
fn write_identity_config(dir: &Path, service: &Service) -> PathBuf {
    let config = dir.join("certconn.toml");
    std::fs::write(
        &config,
        config_text(&dir.join("data"), &plugins(), &identity_section(service)),
    )
    .unwrap();
    config
}

/// A one-time enrolment token from the service's admin API, in a 0600 file.
fn enrolment_token(service: &Service, dir: &Path, name: &str) -> PathBuf {
    let (status, answer) = service.admin("POST", "/enrolment-tokens", None);
    assert_eq!(status, 201, "{answer}");
    let file = dir.join(name);
    write_private(&file, answer["token"].as_str().expect("a token"));
    file
}

/// `certconn upstream register` trusting the service's CA for this first call.
fn register(config: &Path, service: &Service, token: &Path) -> (bool, String) {
    let out = register_command(config, service, token, &[], &[]);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// `certconn upstream register` with more arguments and environment.
fn register_command(
    config: &Path,
    service: &Service,
    token: &Path,
    args: &[&str],
    env: &[(&str, &Path)],
) -> std::process::Output {
    Command::new(binary())
        .args(["upstream", "register", "--token-file"])
        .arg(token)
        .arg("--trust-anchors")
        .arg(service.ca_file.as_ref().expect("TLS"))
        .args(args)
        .arg("--config")
        .arg(config)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// The identities the service issued.
fn identities(service: &Service) -> Value {
    service.admin("GET", "/identities", None).1
}

/// The daemon's upstream status, once `ready` says it is what the test waits for.
fn wait_upstream(daemon: &Daemon, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let (code, health) = http_get(daemon.port, "/v1/health", None);
        assert_eq!(code, 200, "{health}");
        let health: Value = serde_json::from_str(&health).unwrap();
        if ready(&health["upstream"]) {
            return health["upstream"].clone();
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{what} never came: {}",
            health["upstream"]
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The custody keys of the upstream identity (`certconn keys list --json`; daemon stopped).
fn identity_keys(config: &Path) -> Vec<String> {
    identity_key_rows(config, &[])
        .iter()
        .filter_map(|k| k["name"].as_str())
        .map(str::to_owned)
        .collect()
}

/// `certconn keys list --json` rows of the identity's keys, with `env` (e.g. SOFTHSM2_CONF).
fn identity_key_rows(config: &Path, env: &[(&str, &Path)]) -> Vec<Value> {
    let out = ok(Command::new(binary())
        .args(["keys", "list", "--json", "--config"])
        .arg(config)
        .envs(env.iter().copied())
        .output()
        .unwrap());
    let keys: Value = serde_json::from_str(&out).expect("keys as JSON");
    keys.as_array()
        .expect("a list of keys")
        .iter()
        .filter(|k| {
            k["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("upstream-identity"))
        })
        .cloned()
        .collect()
}

#[test]
fn a_registered_connector_works_over_mutual_tls_and_renews_its_identity_before_it_expires() {
    let dir = tempfile::tempdir().unwrap();
    // Identities live 30 s: renewed at 20 s, so the test sees renewals and outlives the first.
    // Shorter, a daemon slow to start (its plugins compiled on a loaded machine) found its
    // identity expired before it first used it, and an expired identity is for re-registering.
    let service = Service::start_tls(dir.path(), 30);
    let config = write_identity_config(dir.path(), &service);

    // Not registered yet: the daemon does not start, and says what to do.
    let data = dir.path().join("data");
    let serve = Command::new(binary())
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&serve.stderr);
    assert!(!serve.status.success(), "{said}");
    assert!(
        said.contains("not registered") && said.contains("certconn upstream register"),
        "{said}"
    );
    let (checked, out) = run_certconn(&["check-config"], &config);
    assert!(!checked && out.contains("not registered"), "{out}");

    // Registration with a one-time token; the same token again is refused, clearly.
    let token = enrolment_token(&service, dir.path(), "enrolment-token");
    let (registered, out) = register(&config, &service, &token);
    assert!(registered, "{out}");
    assert!(
        out.contains("registered with https://") && out.contains("connector-1"),
        "{out}"
    );
    let (again, out) = register(&config, &service, &token);
    assert!(!again, "{out}");
    assert!(
        out.contains("refused the registration") && out.contains("new enrolment token"),
        "{out}"
    );
    // The refused attempt left the identity as it was: one key, with its certificate.
    assert_eq!(identity_keys(&config).len(), 1);
    let (checked, out) = run_certconn(&["check-config"], &config);
    assert!(checked, "{out}");
    assert!(data.join("upstream-service-ca.pem").exists());
    let first = identities(&service)["identities"][0].clone();
    assert_eq!(first["connector_id"], "connector-1", "{first}");

    // Work over mutual TLS: no token anywhere in the config.
    let (_, device_cert) = openssl_device(dir.path());
    service.enqueue(issue_item("mtls-1", "CN=mtls device", &device_cert));
    let mut daemon = Daemon::start(&config, &dir.path().join("daemon.log"));
    service.wait_results(1, Duration::from_secs(60));
    let result = service.result("mtls-1");
    assert_eq!(result["status"], "succeeded", "{result}");
    let (_, beats) = service.admin("GET", "/connectors", None);
    assert_eq!(
        beats["connectors"].as_array().map(Vec::len),
        Some(1),
        "{beats}"
    );

    // Renewed before the first identity expires; the status shows the new one.
    let start = Instant::now();
    let renewed = loop {
        let list = identities(&service);
        if let Some(r) = list["identities"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["renewal"] == true)
        {
            break r.clone();
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no renewal: {list}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(renewed["connector_id"], "connector-1", "{renewed}");
    assert!(
        renewed["not_before"].as_u64() < first["not_after"].as_u64(),
        "renewed before the first expired: {renewed} {first}"
    );
    // The daemon logs the renewal once it holds the new identity, after the service issued it.
    assert!(wait_for_event(&daemon, 5021, Duration::from_secs(30)) >= 1);

    // Past the first identity's end, work still flows: the daemon presents a renewed one (the
    // service's TLS refuses an expired certificate).
    let first_end = first["not_after"].as_u64().unwrap();
    while certconn::journal::now_secs() <= first_end {
        std::thread::sleep(Duration::from_millis(200));
    }
    service.enqueue(issue_item("mtls-2", "CN=mtls device 2", &device_cert));
    service.wait_results(2, Duration::from_secs(60));
    assert_eq!(service.result("mtls-2")["status"], "succeeded");
    let upstream = wait_upstream(&daemon, "a valid identity", |u| {
        u["identity"]["state"] == "valid" && u["identity"]["serial"] != first["serial"]
    });
    assert_eq!(upstream["identity"]["connector_id"], "connector-1");
    let out = ok(daemon.cli(&["status"]));
    assert!(
        out.contains("upstream identity connector-1: serial"),
        "{out}"
    );
    assert_eq!(identities(&service)["refused_calls"], 0);

    // Each renewal replaced its key: one identity key in custody.
    daemon.stop();
    assert_eq!(identity_keys(&config).len(), 1);
}

#[test]
fn a_revoked_identity_is_a_clear_re_register_status_and_a_new_registration_brings_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start_tls(dir.path(), 3600);
    let config = write_identity_config(dir.path(), &service);
    let token = enrolment_token(&service, dir.path(), "enrolment-token");
    let (registered, out) = register(&config, &service, &token);
    assert!(registered, "{out}");
    let mut daemon = Daemon::start(&config, &dir.path().join("daemon.log"));
    wait_upstream(&daemon, "a connection", |u| u["connected"] == true);

    let (status, answer) = service.admin("POST", "/connectors/connector-1/revoke", None);
    assert_eq!(status, 204, "{answer}");
    let upstream = wait_upstream(&daemon, "re-register", |u| {
        u["identity"]["state"] == "re-register"
    });
    assert!(
        upstream["identity"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("revoked")),
        "{upstream}"
    );
    let out = ok(daemon.cli(&["status"]));
    assert!(
        out.contains("error: upstream identity connector-1") && out.contains("re-register"),
        "{out}"
    );
    // One event, and no loop of refused calls: at most the calls already under way when the
    // service began refusing (poll, results, heartbeat), then none.
    let refused = identities(&service)["refused_calls"].as_u64().unwrap();
    assert!((1..=3).contains(&refused), "{refused}");
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        identities(&service)["refused_calls"].as_u64(),
        Some(refused)
    );
    assert_eq!(events(&daemon, 5022), 1, "one re-register event");

    // Registered again (daemon stopped, a new token): a new connector id, and work flows.
    daemon.stop();
    let token = enrolment_token(&service, dir.path(), "enrolment-token-2");
    let (registered, out) = register(&config, &service, &token);
    assert!(registered, "{out}");
    assert!(out.contains("connector-2"), "{out}");
    assert_eq!(
        identity_keys(&config).len(),
        1,
        "the revoked identity's key is gone"
    );
    let (_, device_cert) = openssl_device(dir.path());
    service.enqueue(issue_item(
        "after-1",
        "CN=after re-registration",
        &device_cert,
    ));
    let daemon = Daemon::start(&config, &dir.path().join("daemon.log"));
    service.wait_results(1, Duration::from_secs(60));
    assert_eq!(service.result("after-1")["status"], "succeeded");
    let upstream = wait_upstream(&daemon, "the new identity", |u| {
        u["identity"]["connector_id"] == "connector-2"
    });
    assert_eq!(upstream["identity"]["state"], "valid");
}

/// One identity key, and it is on the token.
fn one_key_on_the_token(rows: &[Value]) {
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(
        rows[0]["store"]
            .as_str()
            .is_some_and(|s| s.contains("pkcs11")),
        "{rows:?}"
    );
}

#[test]
fn an_identity_on_the_pkcs11_token_signs_the_handshakes_and_renews_there() {
    let dir = tempfile::tempdir().unwrap();
    // Renewed at 20 s of 30 (see the test above for why not shorter).
    let service = Service::start_tls(dir.path(), 30);
    let (conf, pin_file) = softhsm_token(dir.path(), "identity");
    let config = dir.path().join("certconn.toml");
    std::fs::write(
        &config,
        config_text(
            &dir.path().join("data"),
            &plugins(),
            &format!(
                "{}{}",
                softhsm_custody("identity", &pin_file),
                identity_section(&service)
            ),
        ),
    )
    .unwrap();
    let token = enrolment_token(&service, dir.path(), "enrolment-token");
    let softhsm = [("SOFTHSM2_CONF", conf.as_path())];
    let out = ok(register_command(
        &config,
        &service,
        &token,
        &["--store", "pkcs11"],
        &softhsm,
    ));
    assert!(out.contains("on the PKCS#11 token"), "{out}");
    one_key_on_the_token(&identity_key_rows(&config, &softhsm));

    let env = vec![("SOFTHSM2_CONF".to_owned(), conf.clone().into_os_string())];
    let mut daemon = Daemon::start_with_env(&config, &dir.path().join("daemon.log"), env);
    let (_, device_cert) = openssl_device(dir.path());
    service.enqueue(issue_item(
        "p11-1",
        "CN=token identity device",
        &device_cert,
    ));
    service.wait_results(1, Duration::from_secs(60));
    let result = service.result("p11-1");
    assert_eq!(result["status"], "succeeded", "{result}");
    // Renewed (at 20 s of 30) with a new key on the token.
    let first = identities(&service)["identities"][0]["serial"].clone();
    wait_upstream(&daemon, "a renewed identity", |u| {
        u["identity"]["state"] == "valid" && u["identity"]["serial"] != first
    });
    daemon.stop();
    one_key_on_the_token(&identity_key_rows(&config, &softhsm));
}
