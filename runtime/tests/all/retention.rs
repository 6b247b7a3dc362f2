//! `journal.keep_results_days`: a result older than the retention is removed by the daemon's
//! sweep; the job and its certificate (with the plugin version that issued it) stay, and
//! fetching the result says it was removed. `journal.keep_jobs_days`: a finished job older
//! than its retention goes too; its certificate stays in the ledger, and can be revoked.

use std::time::Duration;

use hyper::Method;
use serde_json::json;

use crate::common::*;

const DAY_MS: i64 = 86_400_000;

/// Starts the default daemon in `dir`, has it issue `old` and then `young`, and stops it: the
/// (stopped) daemon and the two job ids. One after the other: results are stored in the order
/// jobs end, and the sweep relies on it (it stops at the first result too young), so the older
/// result must be stored first.
async fn two_jobs_ended_in_turn(dir: &std::path::Path) -> (Daemon, [String; 2]) {
    let mut daemon = start_default(dir);
    let api = daemon.client();
    let mut ended = Vec::new();
    for key in ["old", "young"] {
        let id = submit(&api, "smime", key, json!({})).await;
        assert_eq!(
            wait_job(&api, &id, Duration::from_secs(60)).await["state"],
            "succeeded"
        );
        ended.push(id);
    }
    daemon.stop();
    (daemon, <[String; 2]>::try_from(ended).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_older_than_the_retention_is_removed_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, [old, young]) = two_jobs_ended_in_turn(dir.path()).await;

    // The first job ended 31 days ago, as far as the journal knows; the second, 29.
    let db = rusqlite::Connection::open(dir.path().join("data/journal.sqlite")).unwrap();
    for (id, days) in [(&old, 31), (&young, 29)] {
        let changed = db
            .execute(
                "UPDATE outbox SET created_at = created_at - ?2 WHERE job_id = ?1",
                rusqlite::params![id, days * DAY_MS],
            )
            .unwrap();
        assert_eq!(changed, 1);
    }
    drop(db);

    // The default retention is 30 days; the sweep runs as the daemon starts.
    let daemon = Daemon::start(&daemon.config.clone(), &dir.path().join("daemon.log"));
    let api = daemon.client();
    let started = std::time::Instant::now();
    let gone = loop {
        match api
            .call(Method::GET, &format!("/v1/jobs/{old}/result"), None)
            .await
        {
            Err(certconn::sources::api::client::ClientError::Api {
                status: 410,
                message,
            }) => break message,
            Ok(_) => {}
            Err(e) => panic!("unexpected answer for the old result: {e}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the old result was not removed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        gone.contains(&format!("the result of job {old} was removed"))
            && gone.contains("journal.keep_results_days"),
        "{gone}"
    );
    // The younger result is whole: its PFX is there for the taking.
    let kept = api
        .call(Method::GET, &format!("/v1/jobs/{young}/result"), None)
        .await
        .expect("the younger result");
    assert!(
        kept["result"]["pfx_base64"]
            .as_str()
            .is_some_and(|p| !p.is_empty()),
        "{kept}"
    );
    // The job and its certificate stay.
    let job = api
        .call(Method::GET, &format!("/v1/jobs/{old}"), None)
        .await
        .unwrap();
    assert_eq!(job["state"], "succeeded", "{job}");
    let db = rusqlite::Connection::open(dir.path().join("data/journal.sqlite")).unwrap();
    let ledger: i64 = db
        .query_row("SELECT COUNT(*) FROM certificates", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ledger, 2, "the ledger lost a certificate");
    // The certificate's view still names the plugin version that issued it: the ledger keeps
    // it, not only the removed result.
    let serial: String = db
        .query_row(
            "SELECT serial FROM certificates WHERE job_id = ?1",
            rusqlite::params![old],
            |r| r.get(0),
        )
        .unwrap();
    let view = api
        .call(Method::GET, &format!("/v1/certificates/{serial}"), None)
        .await
        .unwrap();
    assert!(
        view["plugin_version"]
            .as_str()
            .is_some_and(|v| v.starts_with("local-ca ")),
        "{view}"
    );
    assert_eq!(
        metric(
            &scrape_metrics(daemon.port, dir.path()),
            "certconn_journal_results_removed_total"
        ),
        1.0
    );
    let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap();
    assert!(
        log.contains("removed the stored results") && log.contains("\"removed\":1"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_older_than_its_retention_is_removed_and_its_certificate_stays_revocable() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, [old, young]) = two_jobs_ended_in_turn(dir.path()).await;

    // The first job was made and ended 181 days ago, as far as the journal knows (its result
    // too); the second 179.
    let db = rusqlite::Connection::open(dir.path().join("data/journal.sqlite")).unwrap();
    for (id, days) in [(&old, 181), (&young, 179)] {
        let ago = days * DAY_MS;
        db.execute(
            "UPDATE jobs SET created_at = created_at - ?2, updated_at = updated_at - ?2
             WHERE id = ?1",
            rusqlite::params![id, ago],
        )
        .unwrap();
        db.execute(
            "UPDATE outbox SET created_at = created_at - ?2 WHERE job_id = ?1",
            rusqlite::params![id, ago],
        )
        .unwrap();
    }
    let serial: String = db
        .query_row(
            "SELECT serial FROM certificates WHERE job_id = ?1",
            rusqlite::params![old],
            |r| r.get(0),
        )
        .unwrap();
    drop(db);

    // The default retention of jobs is 180 days; the sweep runs as the daemon starts.
    let daemon = Daemon::start(&daemon.config.clone(), &dir.path().join("daemon.log"));
    let api = daemon.client();
    let started = std::time::Instant::now();
    loop {
        match api
            .call(Method::GET, &format!("/v1/jobs/{old}"), None)
            .await
        {
            Err(certconn::sources::api::client::ClientError::Api { status: 404, .. }) => break,
            Ok(_) => {}
            Err(e) => panic!("unexpected answer for the old job: {e}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the old job was not removed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The younger job stays (its result is gone: older than 30 days).
    let job = api
        .call(Method::GET, &format!("/v1/jobs/{young}"), None)
        .await
        .expect("the younger job");
    assert_eq!(job["state"], "succeeded", "{job}");
    // The certificate stays in the ledger, naming the removed job, and is revoked as any.
    let view = api
        .call(Method::GET, &format!("/v1/certificates/{serial}"), None)
        .await
        .expect("the certificate of the removed job");
    assert_eq!(view["job"], old.as_str(), "{view}");
    let answer = api
        .call(
            Method::POST,
            "/v1/jobs/revoke",
            Some(&json!({ "serial": serial, "reason": "key-compromise" })),
        )
        .await
        .expect("revoke");
    let revoke = answer["job"]["id"].as_str().expect("job id").to_owned();
    assert_eq!(
        wait_job(&api, &revoke, Duration::from_secs(60)).await["state"],
        "succeeded"
    );
    let view = api
        .call(Method::GET, &format!("/v1/certificates/{serial}"), None)
        .await
        .unwrap();
    assert_eq!(view["revoked"]["reason"], "key-compromise", "{view}");
    // The same idempotency key again is a new job: the removed one's key is forgotten.
    let again = submit(&api, "smime", "old", json!({})).await;
    assert_ne!(again, old);

    assert_eq!(
        metric(
            &scrape_metrics(daemon.port, dir.path()),
            "certconn_journal_jobs_removed_total"
        ),
        1.0
    );
    let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap();
    assert!(
        log.contains("removed finished jobs") && log.contains("journal.keep_jobs_days"),
        "{log}"
    );
}
