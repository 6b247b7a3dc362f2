//! kill -9 with jobs in flight, restart: every job ends exactly once and the CA's ledger holds
//! exactly one certificate per job.

use crate::common;

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
