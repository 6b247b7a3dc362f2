//! Routing: ordered fallbacks, the circuit breaker, per-backend concurrency limits, and a CA's
//! final answer never passed on to another CA.

use crate::common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_faulty_backend_is_quarantined_its_profile_falls_back_and_it_is_probed_later() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = mixed_plugin_dir(dir.path());
    let extra = r#"
[backends.flaky]
plugin = "sandbox-probe"
quarantine_after = 2
quarantine_seconds = 2
settings = { mode = "fail" }
[profiles.routed]
backend = "flaky"
fallbacks = ["local"]
"#;
    let daemon = start_in(dir.path(), |data| config_text(data, &plugins, extra));
    let api = daemon.client();

    // Each job tries `flaky` (transient error), then the fallback serves it.
    for i in 0..2 {
        let id = submit(&api, "routed", &format!("fallback-{i}"), json!({})).await;
        let job = wait_job(&api, &id, Duration::from_secs(30)).await;
        assert_eq!(job["state"], "succeeded", "{job}");
        assert_eq!(job["backend"], "local", "{job}");
        assert_eq!(
            job["attempts"], 1,
            "fell back within the same attempt: {job}"
        );
    }
    // Two faults in a row: quarantined.
    let status = backend_status(&api, "flaky").await;
    assert_eq!(status["state"], "quarantined", "{status}");
    assert!(
        status["breaker"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("sandbox-probe always fails")),
        "{status}"
    );
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    assert!(log.contains("backend quarantined after repeated faults"));
    let tried_before = log.matches("trying the next backend of the route").count();

    // While quarantined, jobs go straight to the fallback: flaky is not called.
    for i in 0..3 {
        let id = submit(&api, "routed", &format!("skip-{i}"), json!({})).await;
        assert_eq!(
            wait_job(&api, &id, Duration::from_secs(30)).await["backend"],
            "local"
        );
    }
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    assert_eq!(
        log.matches("trying the next backend of the route").count(),
        tried_before,
        "a quarantined backend is skipped, not tried"
    );

    // After the cooldown one job probes it; it still fails, so it is quarantined again, and
    // the job is still served by the fallback.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let id = submit(&api, "routed", "probe", json!({})).await;
    assert_eq!(
        wait_job(&api, &id, Duration::from_secs(30)).await["backend"],
        "local"
    );
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    assert_eq!(
        log.matches("trying the next backend of the route").count(),
        tried_before + 1,
        "exactly one probe"
    );
    assert_eq!(backend_status(&api, "flaky").await["state"], "quarantined");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_limit_holds_at_the_ca_and_a_final_answer_is_not_passed_on() {
    let dir = tempfile::tempdir().unwrap();
    let ca = MockCa::start(300);
    let plugins = plugin_dir_with(
        dir.path(),
        &[
            (plugins().join("local-ca.wasm"), "local-ca"),
            (
                test_plugins().join("vendor-template.wasm"),
                "vendor-template",
            ),
            (test_plugins().join("sandbox-probe.wasm"), "sandbox-probe"),
        ],
    );
    let extra = ca.backend("example", "max_concurrency = 1")
        + r#"
[backends.strict]
plugin = "sandbox-probe"
settings = { mode = "read-file" }
[profiles.decided]
backend = "strict"
fallbacks = ["local"]
"#;
    let daemon = start_in(dir.path(), |data| config_text(data, &plugins, &extra));
    let api = daemon.client();
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(submit(&api, "example", &format!("limited-{i}"), json!({})).await);
    }
    for id in &ids {
        assert_eq!(
            wait_job(&api, id, Duration::from_secs(60)).await["state"],
            "succeeded"
        );
    }
    let stats = ca.stats();
    assert_eq!(stats["issue_requests"], 6, "{stats}");
    assert_eq!(
        stats["max_in_flight"], 1,
        "4 workers, but max_concurrency = 1 at the CA: {stats}"
    );

    // The CA said no (rejected): final; the fallback is not asked to issue instead.
    let id = submit(&api, "decided", "rejected", json!({})).await;
    let job = wait_job(&api, &id, Duration::from_secs(30)).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["backend"], "strict", "{job}");
}

#[test]
fn the_multi_ca_example_config_is_valid() {
    let example = repo_root().join("examples/multi-ca.toml");
    let out = std::process::Command::new(binary())
        .args(["check-config", "--syntax-only", "--config"])
        .arg(&example)
        .output()
        .unwrap();
    let text = ok(out);
    assert!(text.contains("multi-ca.toml: ok"), "{text}");
    // Checked fully, on a machine that is not the one it was written for, it says what is
    // missing here instead of "ok".
    let out = std::process::Command::new(binary())
        .args(["check-config", "--config"])
        .arg(&example)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("/etc/certconn/"),
        "{stderr}"
    );
}

/// Two instances of one plugin (two forests of the same CA product): one is drained for
/// maintenance — its profile falls back, the other instance serves on — then undrained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_backend_of_a_plugin_is_drained_and_undrained_while_its_sibling_serves() {
    let dir = tempfile::tempdir().unwrap();
    let extra = r#"
[backends.forest-b]
plugin = "local-ca"
keys = ["local-ca"]
[backends.forest-b.settings]
ca_key = "local-ca"
[profiles.smime-b]
backend = "forest-b"
"#;
    let daemon = start_in(dir.path(), |data| {
        config_text(data, &plugins(), extra).replace(
            "[profiles.smime]\nbackend = \"local\"",
            "[profiles.smime]\nbackend = \"local\"\nfallbacks = [\"forest-b\"]",
        )
    });
    let api = daemon.client();
    let served_by = |profile: &'static str, key: &'static str| {
        let api = &api;
        async move {
            let id = submit(api, profile, key, json!({})).await;
            let job = wait_job(api, &id, Duration::from_secs(30)).await;
            assert_eq!(job["state"], "succeeded", "{job}");
            job["backend"].as_str().unwrap().to_owned()
        }
    };
    assert_eq!(served_by("smime", "before").await, "local");
    assert_eq!(
        ok(daemon.cli(&["plugins", "drain", "local"])).trim(),
        "local: drained"
    );
    assert_eq!(backend_status(&api, "local").await["state"], "drained");
    assert_eq!(backend_status(&api, "forest-b").await["state"], "serving");
    assert_eq!(served_by("smime", "drained").await, "forest-b");
    assert_eq!(served_by("smime-b", "sibling").await, "forest-b");
    assert_eq!(
        ok(daemon.cli(&["plugins", "drain", "local"])).trim(),
        "local: already drained"
    );
    let out = daemon.cli(&["plugins", "drain", "nosuch"]);
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("no backend named \"nosuch\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The plugin commands take a plugin's name; a backend's name is told apart from a typo.
    let out = daemon.cli(&["plugins", "unload", "local"]);
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains(
                "\"local\" is a backend, and the plugin it runs is \"local-ca\" (to stop or \
                 start one backend alone: `certconn plugins drain|undrain local`)"
            ),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(backend_status(&api, "local").await["state"], "drained");
    ok(daemon.cli(&["plugins", "undrain", "local"]));
    assert_eq!(backend_status(&api, "local").await["state"], "serving");
    assert_eq!(served_by("smime", "after").await, "local");
}
