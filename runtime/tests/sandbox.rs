//! Hostile plugins: each job fails with a clear error; the daemon and the other jobs carry on.

mod common;

use std::net::TcpListener;
use std::time::Duration;

use common::*;
use hyper::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_escape_attempt_fails_its_job_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    // A server the http probe aims at: it must never see a connection.
    let bait = TcpListener::bind("127.0.0.1:0").unwrap();
    bait.set_nonblocking(true).unwrap();
    let bait_addr = bait.local_addr().unwrap();
    let mut extra = String::new();
    for (name, settings, limits) in [
        ("spin", r#"{ mode = "loop" }"#, "timeout_seconds = 1"),
        ("hog", r#"{ mode = "memory" }"#, "memory_mb = 16"),
        (
            "snoop",
            r#"{ mode = "read-file", path = "/etc/passwd" }"#,
            "",
        ),
        ("environ", r#"{ mode = "env" }"#, ""),
        (
            "caller",
            &format!(r#"{{ mode = "http", authority = "{bait_addr}" }}"#),
            "",
        ),
        ("crasher", r#"{ mode = "panic" }"#, ""),
    ] {
        extra.push_str(&format!(
            "[backends.{name}]\nplugin = \"sandbox-probe\"\n{limits}\nsettings = {settings}\n[profiles.{name}]\nbackend = \"{name}\"\n"
        ));
    }
    let plugins = mixed_plugin_dir(dir.path());
    let daemon = start_in(dir.path(), |data, port| {
        config_text(data, &plugins, port, &extra)
            .replace("workers = 4", "workers = 4\nmax_attempts = 1")
    });
    let api = daemon.client();

    let mut hostile = Vec::new();
    for name in ["spin", "hog", "snoop", "environ", "caller", "crasher"] {
        hostile.push((name, submit(&api, name, name, json!({})).await));
    }
    let mut good = Vec::new();
    for i in 0..20 {
        good.push(submit(&api, "smime", &format!("good-{i}"), json!({})).await);
    }

    let expect = |name: &str| -> (&str, Vec<&str>) {
        match name {
            "spin" => ("dead", vec!["plugin-fault", "time limit of 1s"]),
            "hog" => ("dead", vec!["plugin-fault", "memory limit of 16 MiB"]),
            "snoop" => ("failed", vec!["read-file /etc/passwd"]),
            "environ" => ("failed", vec!["environment variables visible: 0"]),
            "caller" => ("failed", vec!["refused", "HttpRequestDenied"]),
            "crasher" => ("dead", vec!["plugin-fault", "panicked on purpose"]),
            _ => unreachable!(),
        }
    };
    for (name, id) in &hostile {
        let job = wait_job(&api, id, Duration::from_secs(60)).await;
        let (state, needles) = expect(name);
        let error = job["last_error"].as_str().unwrap_or_default();
        assert_eq!(job["state"], state, "{name}: {job}");
        for n in needles {
            assert!(error.contains(n), "{name}: {error:?} lacks {n:?}");
        }
        assert!(!error.contains("BREACH"), "{name}: sandbox breach: {error}");
    }
    for id in &good {
        assert_eq!(
            wait_job(&api, id, Duration::from_secs(60)).await["state"],
            "succeeded"
        );
    }
    assert!(
        bait.accept().is_err(),
        "the http probe reached a real server"
    );

    // The daemon is healthy and still serves.
    let health = api.call(Method::GET, "/v1/health", None).await.unwrap();
    assert_eq!(health["status"], "ok");
    let again = submit(&api, "smime", "after", json!({})).await;
    assert_eq!(
        wait_job(&api, &again, Duration::from_secs(30)).await["state"],
        "succeeded"
    );
    let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap();
    assert!(
        log.contains("plugin HTTP request denied"),
        "the denial is logged"
    );
    // --log-format json: every line is one JSON object, plugin lines tagged with backend and job.
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
    }
    assert!(log
        .lines()
        .any(|l| l.contains("\"target\":\"certconn::plugin\"")
            && l.contains("\"backend\":\"local\"")
            && l.contains("\"job\"")));
}
