//! Configuration reload: backends and profiles added, changed and removed while jobs run, with
//! none lost; a broken or restart-only change refused with the reason while the running
//! configuration goes on; SIGHUP does what `certconn reload` does.

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::json;

/// A second local-ca backend and a profile on it.
fn local_backend(name: &str, profile: &str) -> String {
    format!(
        "[backends.{name}]\nplugin = \"local-ca\"\nkeys = [\"local-ca\"]\n\
         [backends.{name}.settings]\nca_key = \"local-ca\"\n\
         [backends.{name}.settings.profiles.{profile}]\n\
         key_usage = [\"digital_signature\"]\nextended_key_usage = [\"client_auth\"]\nvalidity_days = 30\n\
         [profiles.{profile}]\nbackend = \"{name}\"\n"
    )
}

fn write_config(dir: &Path, extra: &str) {
    std::fs::write(
        dir.join("certconn.toml"),
        config_text(&dir.join("data"), &plugins(), extra),
    )
    .unwrap();
}

fn reload(daemon: &Daemon) -> std::process::Output {
    daemon.cli(&["reload"])
}

/// `certconn reload` that must fail: what it said on stderr.
fn refused_reload(daemon: &Daemon) -> String {
    let out = reload(daemon);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "the reload was taken: {stderr}");
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_and_profiles_change_under_load_and_no_job_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &local_backend("second", "other"));
    let daemon = Daemon::start(
        &dir.path().join("certconn.toml"),
        &dir.path().join("daemon.log"),
    );
    let api = daemon.client();

    // A stream of jobs on the profile that stays, submitted while the configuration changes.
    let submitter = {
        let api = daemon.client();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..60 {
                ids.push(
                    submit(
                        &api,
                        "smime",
                        &format!("load-{i}"),
                        json!({ "key": "rsa-2048" }),
                    )
                    .await,
                );
            }
            ids
        })
    };
    // `second` and `other` go; `third` and `newer` come; `smime` gets a shorter validity.
    std::fs::write(
        dir.path().join("certconn.toml"),
        config_text(
            &dir.path().join("data"),
            &plugins(),
            &local_backend("third", "newer"),
        )
        .replace("validity_days = 365", "validity_days = 200"),
    )
    .unwrap();
    let out = ok(reload(&daemon));
    assert!(out.contains("backend added: third"), "{out}");
    assert!(out.contains("backend removed: second"), "{out}");
    assert!(out.contains("profile added: newer"), "{out}");
    assert!(out.contains("profile removed: other"), "{out}");
    assert!(out.contains("backend changed: local"), "{out}");

    let ids = submitter.await.unwrap();
    for id in &ids {
        let job = wait_job(&api, id, Duration::from_secs(120)).await;
        assert_eq!(job["state"], "succeeded", "{job}");
    }
    let listed = ok(daemon.cli(&["jobs", "list", "--json", "--limit", "1000"]));
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(
        listed["jobs"].as_array().map(Vec::len),
        Some(ids.len()),
        "a job was lost or doubled"
    );

    // The new profile issues through the new backend; the removed one is refused at intake.
    let id = submit(&api, "newer", "on-third", json!({})).await;
    let job = wait_job(&api, &id, Duration::from_secs(60)).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["backend"], "third", "{job}");
    let refused = api
        .call(
            hyper::Method::POST,
            "/v1/jobs/issue",
            Some(&json!({ "profile": "other", "subject": "CN=x" })),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("no profile named \"other\""), "{refused}");
    let listed = ok(daemon.cli(&["plugins", "list"]));
    assert!(
        listed.contains("third") && !listed.contains("second"),
        "{listed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_or_restart_only_change_is_refused_and_the_running_config_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), "");
    let daemon = Daemon::start(
        &dir.path().join("certconn.toml"),
        &dir.path().join("daemon.log"),
    );
    let api = daemon.client();
    let config = dir.path().join("certconn.toml");
    let good = std::fs::read_to_string(&config).unwrap();

    // Not TOML: the line is named.
    std::fs::write(&config, format!("{good}\n[profiles.broken\n")).unwrap();
    let stderr = refused_reload(&daemon);
    assert!(
        stderr.contains("TOML parse error at line") && stderr.contains("[profiles.broken"),
        "{stderr}"
    );

    // A new backend whose settings the plugin rejects: named, and nothing changes.
    std::fs::write(
        &config,
        format!(
            "{good}{}",
            local_backend("bad", "badprofile").replace("key_usage = [\"digital_signature\"]\n", "")
        ),
    )
    .unwrap();
    let stderr = refused_reload(&daemon);
    assert!(stderr.contains("key_usage"), "{stderr}");
    let listed = ok(daemon.cli(&["plugins", "list"]));
    assert!(!listed.contains("bad"), "{listed}");

    // A change that takes a restart is refused with the section named.
    std::fs::write(
        &config,
        good.replace("[jobs]\nworkers = 4", "[jobs]\nworkers = 8"),
    )
    .unwrap();
    let stderr = refused_reload(&daemon);
    assert!(
        stderr.contains("[jobs] changed") && stderr.contains("restart"),
        "{stderr}"
    );

    // The running configuration still issues.
    let id = submit(&api, "smime", "after-refusals", json!({})).await;
    let job = wait_job(&api, &id, Duration::from_secs(60)).await;
    assert_eq!(job["state"], "succeeded", "{job}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_unfinished_jobs_name_is_not_removed() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &local_backend("second", "other"));
    let daemon = Daemon::start(
        &dir.path().join("certconn.toml"),
        &dir.path().join("daemon.log"),
    );
    let api = daemon.client();
    // Drained, `second` takes no job: one stays queued on profile `other`.
    ok(daemon.cli(&["plugins", "drain", "second"]));
    let id = submit(&api, "other", "waiting", json!({})).await;
    write_config(dir.path(), "");
    let stderr = refused_reload(&daemon);
    assert!(
        stderr.contains("profile \"other\" cannot be removed while 1 unfinished job(s) name it"),
        "{stderr}"
    );
    // Nothing changed: undrained, the job finishes on `second`.
    ok(daemon.cli(&["plugins", "undrain", "second"]));
    let job = wait_job(&api, &id, Duration::from_secs(60)).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["backend"], "second");
    // Now it may go.
    let out = ok(reload(&daemon));
    assert!(
        out.contains("profile removed: other") && out.contains("backend removed: second"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), "");
    let daemon = Daemon::start(
        &dir.path().join("certconn.toml"),
        &dir.path().join("daemon.log"),
    );
    write_config(dir.path(), &local_backend("second", "other"));
    let status = std::process::Command::new("kill")
        .args(["-HUP", &daemon.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let log = dir.path().join("daemon.log");
    wait_for(Duration::from_secs(60), "the reload in the log", || async {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("configuration reloaded")
            .then_some(())
    })
    .await;
    let api = daemon.client();
    let id = submit(&api, "other", "after-hup", json!({})).await;
    let job = wait_job(&api, &id, Duration::from_secs(60)).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["backend"], "second");
}
