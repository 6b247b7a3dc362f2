//! A job whose backend always fails is retried with backoff and dead-lettered after N attempts,
//! while 100 other jobs succeed.

use crate::common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_job_is_dead_lettered_and_blocks_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let extra = r#"
[backends.broken]
plugin = "sandbox-probe"
# Its circuit breaker would quarantine it after 5 faults, and the job would then wait for the
# probes (routing.rs tests that); this test is about backoff and dead-lettering.
quarantine_after = 1000
settings = { mode = "fail" }
[profiles.broken]
backend = "broken"
"#;
    let plugins = mixed_plugin_dir(dir.path());
    let daemon = start_in(dir.path(), |data| {
        config_text(data, &plugins, extra).replace("workers = 4", "workers = 4\nmax_attempts = 4")
    });
    let api = daemon.client();

    let poison = submit(&api, "broken", "poison", json!({})).await;
    let mut good = Vec::new();
    for i in 0..100 {
        good.push(submit(&api, "smime", &format!("good-{i}"), json!({})).await);
    }
    for id in &good {
        assert_eq!(
            wait_job(&api, id, Duration::from_secs(120)).await["state"],
            "succeeded"
        );
    }
    let job = wait_job(&api, &poison, Duration::from_secs(60)).await;
    assert_eq!(job["state"], "dead", "{job}");
    assert_eq!(job["attempts"], 4, "{job}");
    let reason = job["last_error"].as_str().unwrap();
    assert!(
        reason.contains("dead-lettered after 4 attempts")
            && reason.contains("sandbox-probe always fails"),
        "{reason}"
    );

    // An operator can retry it; it fails the same way, attempts start over.
    let out = daemon.cli(&["jobs", "retry", &poison]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job = wait_job(&api, &poison, Duration::from_secs(60)).await;
    assert_eq!(job["state"], "dead");
    assert_eq!(job["attempts"], 4);
}
