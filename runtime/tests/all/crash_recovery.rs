//! kill -9 with jobs in flight, restart: every job ends exactly once and the CA's ledger holds
//! exactly one certificate per job. And what makes a commit survive power loss: the journal's
//! WAL is synced on every commit.

use crate::common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_mid_batch_loses_and_duplicates_nothing() {
    const JOBS: usize = 150;
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = start_default(dir.path());
    let (config, log) = (daemon.config.clone(), daemon.log.clone());
    let api = daemon.client();

    // RSA-2048 device keys make each job slow enough that the kill lands mid-batch.
    let mut ids = Vec::new();
    for i in 0..JOBS {
        ids.push(
            submit(
                &api,
                "smime",
                &format!("crash-{i}"),
                json!({ "key": "rsa-2048" }),
            )
            .await,
        );
    }
    let db_path = dir.path().join("data/journal.sqlite");
    let count = |sql: &str| -> i64 {
        let db = rusqlite::Connection::open(&db_path).unwrap();
        db.query_row(sql, [], |r| r.get(0)).unwrap()
    };
    let start = Instant::now();
    while count("SELECT COUNT(*) FROM jobs WHERE state = 'succeeded'") < 10 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no progress before the kill"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    daemon.kill9();
    let unfinished = count("SELECT COUNT(*) FROM jobs WHERE state != 'succeeded'");
    let running = count("SELECT COUNT(*) FROM jobs WHERE state = 'running'");
    assert!(
        unfinished > 0,
        "the kill must land while jobs are unfinished"
    );
    eprintln!("killed with {unfinished} unfinished jobs, {running} of them running");

    // Restart on the same data; everything finishes.
    let daemon = Daemon::start(&config, &log);
    let api = daemon.client();
    for id in &ids {
        let job = wait_job(&api, id, Duration::from_secs(300)).await;
        assert_eq!(job["state"], "succeeded", "{job}");
    }
    assert_eq!(
        count("SELECT COUNT(*) FROM jobs"),
        JOBS as i64,
        "no job was duplicated at intake"
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM outbox"),
        JOBS as i64,
        "one result per job"
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM certificates"),
        JOBS as i64,
        "one certificate per job"
    );
    assert_eq!(
        count("SELECT COUNT(DISTINCT job_id) FROM certificates"),
        JOBS as i64
    );
    assert_eq!(
        count("SELECT COUNT(DISTINCT serial) FROM certificates"),
        JOBS as i64,
        "serials are unique"
    );
    assert_eq!(
        count("SELECT MAX(n) FROM (SELECT COUNT(*) AS n FROM certificates GROUP BY job_id)"),
        1
    );
    // Resumed jobs really were resumed, not re-submitted.
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains("resuming jobs that were running"));
}

/// The device key certconn made is kept in custody before the request leaves the host: killed
/// while the request is at the CA, the daemon comes back, sends the same request again, and the
/// CA (which remembers the job by its idempotency key) answers with the certificate it issued —
/// for that key, which still exists. Then the kept key is forgotten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_killed_while_its_request_is_at_the_ca_gets_that_certificate_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    // Each issuance takes 2 s at the CA: time for the kill to land while the request is there.
    let ca = MockCa::start(2_000);
    let plugin_dir = vendor_and_local_plugin_dir(dir.path());
    let extra = ca.backend("example", "");
    let mut daemon = start_in(dir.path(), |data| config_text(data, &plugin_dir, &extra));
    let (config, log) = (daemon.config.clone(), daemon.log.clone());
    let id = submit(&daemon.client(), "example", "at-the-ca", json!({})).await;
    wait_for(Duration::from_secs(60), "the request at the CA", || async {
        (ca.stats()["in_flight"] == 1).then_some(())
    })
    .await;
    daemon.kill9();
    let keys_dir = dir.path().join("data/keys");
    let kept = || {
        std::fs::read_dir(&keys_dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("pending-"))
            .count()
    };
    assert!(kept() > 0, "the device key was not kept before the call");
    // The CA finishes the request the daemon no longer waits for.
    wait_for(Duration::from_secs(60), "the CA to finish", || async {
        (ca.stats()["in_flight"] == 0).then_some(())
    })
    .await;

    let daemon = Daemon::start(&config, &log);
    let job = wait_job(&daemon.client(), &id, Duration::from_secs(60)).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(
        ca.stats()["issue_requests"],
        2,
        "the request was sent again after the restart"
    );
    // The CA issued once, for the kept key: the PFX holds that certificate and its key.
    let pfx = dir.path().join("at-the-ca.pfx");
    let fetched = ok(daemon.cli(&["jobs", "result", &id, "--out", pfx.to_str().unwrap()]));
    openssl_pkcs12_info(&pfx, &shown_password(&fetched));
    assert_eq!(kept(), 0, "the kept device key outlived its job");
}

/// SQLite syncs the WAL at every commit (`synchronous = FULL`), with fdatasync(2): the build
/// turns `HAVE_FDATASYNC` on (`.cargo/config.toml`), which the bundled SQLite leaves off. Watched
/// from outside with strace, over the pipeline of `certconn bench`.
#[test]
fn every_commit_syncs_the_wal_with_fdatasync() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("strace.txt");
    let plugins = plugins();
    let out = Command::new("strace")
        .args(["-f", "-qq", "-e", "trace=openat,fsync,fdatasync", "-o"])
        .arg(&trace)
        .arg(binary())
        .args(["bench", "--jobs", "40", "--workers", "2", "--calls", "1"])
        .arg("--plugins")
        .arg(&plugins)
        .output()
        .expect("strace (scripts/install-deps --test installs it)");
    let stdout = ok(out);
    // "journal:   1.83 commits (fsyncs) per job, …": the bench's own count of commits.
    let per_job: f64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("journal:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no journal line in\n{stdout}"));
    let text = std::fs::read_to_string(&trace).unwrap();
    // The WAL's descriptors: strace -f lines are "PID openat(…, \"…-wal\", …) = FD".
    let wal_fds: BTreeSet<String> = text
        .lines()
        .filter(|l| l.contains("openat(") && l.contains("journal.sqlite-wal\""))
        .filter_map(|l| l.rsplit_once(") = ").map(|(_, fd)| fd.trim().to_owned()))
        .collect();
    assert!(!wal_fds.is_empty(), "the WAL was never opened:\n{text}");
    let syncs = |call: &str| {
        text.lines()
            .filter(|l| {
                // "PID fdatasync(FD)  = 0": strace pads before the result.
                wal_fds.iter().any(|fd| {
                    l.contains(&format!(" {call}({fd})")) && l.trim_end().ends_with("= 0")
                })
            })
            .count()
    };
    let (fdatasyncs, fsyncs) = (syncs("fdatasync"), syncs("fsync"));
    assert_eq!(fsyncs, 0, "the WAL was fsync'd ({fdatasyncs} fdatasyncs)");
    // At least one sync per commit of the 40 jobs the pipeline ran.
    let commits = (per_job * 40.0).floor() as usize;
    assert!(
        commits >= 40 && fdatasyncs >= commits,
        "{fdatasyncs} fdatasyncs of the WAL for {commits} commits"
    );
}
