//! Plugins at run time: a new version published by rename is validated and swapped in without a
//! restart while jobs in flight finish on the version they started on; a broken version never
//! replaces a working one and says why; rollback, unload and load; inspect and load FILE.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn version_of(status: &serde_json::Value) -> String {
    status["version"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_is_swapped_in_while_jobs_in_flight_finish_on_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    // A slow CA: each issuance takes 4 s, so a job is in flight across the swap.
    let ca = MockCa::start(4000);
    let template = test_plugins().join("vendor-template.wasm");
    let plugin_dir = plugin_dir_with(
        dir.path(),
        &[
            (template.clone(), "vendor-template"),
            (plugins().join("local-ca.wasm"), "local-ca"),
        ],
    );
    let v2 = dir.path().join("vendor-template-2.wasm");
    pack(&template, "vendor-template", "0.2.0", "0.2.0", &v2);
    let extra = ca.backend("example", "");
    let daemon = start_in(dir.path(), |data| config_text(data, &plugin_dir, &extra));
    let api = daemon.client();
    let before = version_of(&backend_status(&api, "example").await);
    assert!(before.starts_with("vendor-template 0.1.0 ("), "{before}");

    // A job starts on 0.1.0 …
    let slow = submit(&api, "example", "in-flight", json!({})).await;
    wait_for(
        Duration::from_secs(10),
        "the CA to see the first request",
        || async { (ca.stats()["in_flight"].as_u64() == Some(1)).then_some(()) },
    )
    .await;
    // … then 0.2.0 is published the supported way.
    let published = Instant::now();
    publish(&v2, &plugin_dir, "vendor-template");
    let swapped = wait_for(Duration::from_secs(20), "the swap", || async {
        let v = version_of(&backend_status(&api, "example").await);
        v.starts_with("vendor-template 0.2.0").then_some(v)
    })
    .await;
    let swap_time = published.elapsed();
    assert!(
        ca.stats()["in_flight"].as_u64() == Some(1),
        "the swap did not wait for the job in flight"
    );
    let job = wait_job(&api, &slow, Duration::from_secs(30)).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let result = job_result(&api, &slow).await;
    assert_eq!(
        result["backend_version"], before,
        "the job in flight finished on the version it started on"
    );
    let next = submit(&api, "example", "after-swap", json!({})).await;
    assert_eq!(
        wait_job(&api, &next, Duration::from_secs(30)).await["state"],
        "succeeded"
    );
    assert_eq!(job_result(&api, &next).await["backend_version"], swapped);
    let status = backend_status(&api, "example").await;
    assert_eq!(status["previous"], before, "{status}");
    eprintln!("swap seen {swap_time:?} after the rename");

    // Rollback: back to 0.1.0; the file still in the directory is not put back by a rescan.
    let out = daemon.cli(&["plugins", "rollback", "vendor-template"]);
    let text = ok(out);
    assert!(
        text.contains("rolled back from vendor-template 0.2.0"),
        "{text}"
    );
    assert_eq!(version_of(&backend_status(&api, "example").await), before);
    let listed = ok(daemon.cli(&["plugins", "list"]));
    assert!(
        listed.contains("refused vendor-template 0.2.0")
            && listed.contains("rolled back by the administrator"),
        "{listed}"
    );
    // A rollback is not a toggle: a second one has nothing to go back to, and changes nothing.
    let out = daemon.cli(&["plugins", "rollback", "vendor-template"]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success()
            && stderr
                .contains("no backend running plugin \"vendor-template\" has a previous version"),
        "{stderr}"
    );
    assert_eq!(version_of(&backend_status(&api, "example").await), before);
    let status = backend_status(&api, "example").await;
    assert!(status["previous"].is_null(), "{status}");
    // Any change in the directory triggers a rescan; it must leave the rollback alone.
    std::fs::write(plugin_dir.join("unrelated.wasm"), b"not used").unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(version_of(&backend_status(&api, "example").await), before);
    let id = submit(&api, "example", "after-rollback", json!({})).await;
    wait_job(&api, &id, Duration::from_secs(30)).await;
    assert_eq!(job_result(&api, &id).await["backend_version"], before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_version_never_replaces_a_working_one() {
    let dir = tempfile::tempdir().unwrap();
    let plugin_dir = plugin_dir_with(dir.path(), &[(plugins().join("local-ca.wasm"), "local-ca")]);
    let daemon = start_in(dir.path(), |data| {
        config_text(data, &plugin_dir, "").replace("[plugins]\n", "[plugins]\nrescan_seconds = 1\n")
    });
    let api = daemon.client();
    let working = version_of(&backend_status(&api, "local").await);
    assert!(working.starts_with("local-ca 0.1.0"), "{working}");

    // 1. Not a component at all.
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"\0asm\x01\0\0\0 truncated core module").unwrap();
    publish(&garbage, &plugin_dir, "local-ca");
    let refused = wait_for(Duration::from_secs(10), "the refusal", || async {
        let s = plugins_status(&api).await;
        s["plugins"][0]["rejected"]["reason"]
            .as_str()
            .map(str::to_owned)
    })
    .await;
    assert!(refused.contains("core WebAssembly module"), "{refused}");
    let status = backend_status(&api, "local").await;
    assert_eq!(version_of(&status), working);
    assert_eq!(status["state"], "serving");
    assert!(
        status["problem"]
            .as_str()
            .is_some_and(|p| p.contains("kept local-ca 0.1.0")),
        "{status}"
    );

    // 2. A valid component that rejects the instance's settings (a 0.1 plugin published as
    //    local-ca): configure fails, nothing is swapped.
    let wrong = dir.path().join("wrong.wasm");
    pack(
        &test_plugins().join("contract-v0-1.wasm"),
        "local-ca",
        "9.9.9",
        "0.1.0",
        &wrong,
    );
    publish(&wrong, &plugin_dir, "local-ca");
    let refused = wait_for(Duration::from_secs(10), "the second refusal", || async {
        let s = plugins_status(&api).await;
        s["plugins"][0]["rejected"]["reason"]
            .as_str()
            .filter(|r| r.contains("settings are invalid"))
            .map(str::to_owned)
    })
    .await;
    assert!(
        refused.contains("profiles"),
        "names the refused setting: {refused}"
    );
    // The periodic rescan (every second here) does not retry a refused file.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    assert_eq!(
        log.matches("new plugin version refused").count(),
        2,
        "each broken file is refused once, not at every rescan"
    );
    assert_eq!(version_of(&backend_status(&api, "local").await), working);

    // Jobs carried on throughout, on the working version.
    let id = submit(&api, "smime", "still-serving", json!({})).await;
    assert_eq!(
        wait_job(&api, &id, Duration::from_secs(30)).await["state"],
        "succeeded"
    );
    assert_eq!(job_result(&api, &id).await["backend_version"], working);
    let health = api
        .call(hyper::Method::GET, "/v1/health", None)
        .await
        .unwrap();
    assert_eq!(health["status"], "ok", "{health}");
}

fn chmod(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The reason the plugin file of `local-ca` is refused, once it contains `wanted`.
async fn refusal_containing(
    api: &certconn::sources::api::client::ApiClient,
    wanted: &str,
) -> String {
    wait_for(Duration::from_secs(10), wanted, || async {
        plugins_status(api).await["plugins"][0]["rejected"]["reason"]
            .as_str()
            .filter(|r| r.contains(wanted))
            .map(str::to_owned)
    })
    .await
}

/// Whoever can replace a plugin can sign with the keys it was granted, so only a trusted hand
/// may place one: a file or directory others may change, a file owned by another user, a link
/// out of the directory — each refused with its reason while the version in memory keeps
/// serving; fixed, the file loads without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_others_may_change_is_never_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let plugin_dir = plugin_dir_with(dir.path(), &[(plugins().join("local-ca.wasm"), "local-ca")]);
    let file = plugin_dir.join("local-ca.wasm");
    let daemon = start_in(dir.path(), |data| {
        config_text(data, &plugin_dir, "").replace("[plugins]\n", "[plugins]\nrescan_seconds = 1\n")
    });
    let api = daemon.client();
    let working = version_of(&backend_status(&api, "local").await);
    let serving = |status: &serde_json::Value, version: &str| {
        assert_eq!(version_of(status), version, "{status}");
        assert_eq!(status["state"], "serving", "{status}");
    };

    // 1. The serving file becomes writable by everyone: refused, the version in memory serves.
    chmod(&file, 0o666);
    let reason = refusal_containing(&api, "0666").await;
    assert!(
        reason.contains("chmod go-w") && reason.contains("local-ca.wasm"),
        "{reason}"
    );
    let status = backend_status(&api, "local").await;
    serving(&status, &working);
    assert!(
        status["problem"]
            .as_str()
            .is_some_and(|p| p.contains("kept local-ca 0.1.0") && p.contains("0666")),
        "{status}"
    );
    let id = submit(&api, "smime", "still-serving", json!({})).await;
    assert_eq!(
        wait_job(&api, &id, Duration::from_secs(30)).await["state"],
        "succeeded"
    );
    // Fixed: the refusal and the note go.
    chmod(&file, 0o644);
    wait_for(Duration::from_secs(10), "the refusal to clear", || async {
        let s = plugins_status(&api).await;
        (s["plugins"][0]["rejected"].is_null()
            && backend_status(&api, "local").await["problem"].is_null())
        .then_some(())
    })
    .await;

    // 2. A new version in a directory everyone may write: not loaded until the directory is fixed.
    let v2 = dir.path().join("local-ca-2.wasm");
    pack(
        &plugins().join("local-ca.wasm"),
        "local-ca",
        "0.1.1",
        "0.2.0",
        &v2,
    );
    chmod(&plugin_dir, 0o777);
    publish(&v2, &plugin_dir, "local-ca");
    let reason = refusal_containing(&api, "0777").await;
    assert!(reason.contains(plugin_dir.to_str().unwrap()), "{reason}");
    serving(&backend_status(&api, "local").await, &working);
    chmod(&plugin_dir, 0o755);
    let second = wait_for(Duration::from_secs(10), "0.1.1 to load", || async {
        let v = version_of(&backend_status(&api, "local").await);
        v.starts_with("local-ca 0.1.1").then_some(v)
    })
    .await;

    // 3. A symbolic link out of the directory.
    let outside = dir.path().join("outside.wasm");
    pack(
        &plugins().join("local-ca.wasm"),
        "local-ca",
        "0.1.2",
        "0.2.0",
        &outside,
    );
    let link = plugin_dir.join(".link.tmp");
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    std::fs::rename(&link, &file).unwrap();
    refusal_containing(&api, "outside the plugin directory").await;
    serving(&backend_status(&api, "local").await, &second);

    // 4. A file owned by another user (the CI runs as root, which may give it away).
    let foreign = dir.path().join("foreign.wasm");
    pack(
        &plugins().join("local-ca.wasm"),
        "local-ca",
        "0.1.3",
        "0.2.0",
        &foreign,
    );
    std::os::unix::fs::chown(&foreign, Some(65534), None).expect("chown (the suite runs as root)");
    std::fs::rename(&foreign, &file).unwrap();
    refusal_containing(&api, "owned by uid 65534").await;
    serving(&backend_status(&api, "local").await, &second);
    std::os::unix::fs::chown(&file, Some(0), None).unwrap();
    wait_for(Duration::from_secs(10), "0.1.3 to load", || async {
        version_of(&backend_status(&api, "local").await)
            .starts_with("local-ca 0.1.3")
            .then_some(())
    })
    .await;

    // Each refusal was logged once, not at every rescan (every second here).
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    assert_eq!(log.matches("plugin file refused").count(), 4, "{log}");
}

/// A daemon started with an untrusted plugin file serves nothing from it, says why in the
/// status and in `check-config`, and loads it once it is fixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_plugin_at_start_is_not_served_until_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let plugin_dir = plugin_dir_with(dir.path(), &[(plugins().join("local-ca.wasm"), "local-ca")]);
    let file = plugin_dir.join("local-ca.wasm");
    chmod(&file, 0o664);
    let daemon = start_in(dir.path(), |data| {
        config_text(data, &plugin_dir, "").replace("[plugins]\n", "[plugins]\nrescan_seconds = 1\n")
    });
    let api = daemon.client();
    let status = backend_status(&api, "local").await;
    assert!(status["version"].is_null(), "{status}");
    assert!(
        status["problem"]
            .as_str()
            .is_some_and(|p| p.contains("not loaded") && p.contains("0664")),
        "{status}"
    );
    let checked = std::process::Command::new(binary())
        .args(["check-config", "--config"])
        .arg(&daemon.config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&checked.stderr);
    assert_eq!(checked.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("0664") && stderr.contains("backends.local"),
        "{stderr}"
    );
    chmod(&file, 0o644);
    wait_for(
        Duration::from_secs(10),
        "the fixed file to load",
        || async { (backend_status(&api, "local").await["state"] == "serving").then_some(()) },
    )
    .await;
    let id = submit(&api, "smime", "after-the-fix", json!({})).await;
    assert_eq!(
        wait_job(&api, &id, Duration::from_secs(30)).await["state"],
        "succeeded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_whose_health_check_fails_waits_until_its_ca_answers() {
    let dir = tempfile::tempdir().unwrap();
    let ca = MockCa::start(0);
    let port = ca.port;
    let template = test_plugins().join("vendor-template.wasm");
    let plugin_dir = plugin_dir_with(
        dir.path(),
        &[
            (plugins().join("local-ca.wasm"), "local-ca"),
            (template.clone(), "vendor-template"),
        ],
    );
    let v2 = dir.path().join("vendor-template-2.wasm");
    pack(&template, "vendor-template", "0.2.0", "0.2.0", &v2);
    let extra = ca.backend("example", "");
    let daemon = start_in(dir.path(), |data| {
        config_text(data, &plugin_dir, &extra)
            .replace("[plugins]\n", "[plugins]\nrescan_seconds = 1\n")
    });
    let api = daemon.client();
    let before = version_of(&backend_status(&api, "example").await);

    // The CA goes away; a new version published now cannot pass its health check.
    drop(ca);
    publish(&v2, &plugin_dir, "vendor-template");
    let status = wait_for(Duration::from_secs(15), "the health refusal", || async {
        let s = backend_status(&api, "example").await;
        s["problem"]
            .as_str()
            .is_some_and(|p| p.contains("health check failed"))
            .then_some(s)
    })
    .await;
    assert_eq!(
        version_of(&status),
        before,
        "the working version stays: {status}"
    );
    assert!(
        status["problem"]
            .as_str()
            .unwrap()
            .contains("vendor-template 0.2.0"),
        "{status}"
    );

    // The CA is back on its port: a periodic rescan tries the version again and swaps it in.
    let _ca = MockCa::start_on(port, 0);
    let swapped = wait_for(
        Duration::from_secs(15),
        "the swap once the CA answers",
        || async {
            let v = version_of(&backend_status(&api, "example").await);
            v.starts_with("vendor-template 0.2.0").then_some(v)
        },
    )
    .await;
    let id = submit(&api, "example", "after-recovery", json!({})).await;
    assert_eq!(
        wait_job(&api, &id, Duration::from_secs(30)).await["state"],
        "succeeded"
    );
    assert_eq!(job_result(&api, &id).await["backend_version"], swapped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unload_moves_a_profile_to_its_fallback_and_load_brings_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let ca = MockCa::start(0);
    let plugin_dir = plugin_dir_with(
        dir.path(),
        &[
            (plugins().join("local-ca.wasm"), "local-ca"),
            (
                test_plugins().join("vendor-template.wasm"),
                "vendor-template",
            ),
        ],
    );
    let extra = ca.backend("example", "")
        + "[profiles.mixed]\nbackend = \"example\"\nfallbacks = [\"local\"]\n";
    let daemon = start_in(dir.path(), |data| config_text(data, &plugin_dir, &extra));
    let api = daemon.client();
    let id = submit(&api, "mixed", "before-unload", json!({})).await;
    assert_eq!(
        wait_job(&api, &id, Duration::from_secs(30)).await["backend"],
        "example"
    );

    let text = ok(daemon.cli(&["plugins", "unload", "vendor-template"]));
    assert!(text.contains("example: unloaded"), "{text}");
    assert_eq!(backend_status(&api, "example").await["state"], "unloaded");
    let id = submit(&api, "mixed", "while-unloaded", json!({})).await;
    let job = wait_job(&api, &id, Duration::from_secs(30)).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["backend"], "local", "the fallback served it");
    let health = api
        .call(hyper::Method::GET, "/v1/health", None)
        .await
        .unwrap();
    assert_eq!(health["status"], "degraded", "{health}");

    // The only route of profile `example` is unloaded: the job waits and says why.
    let id = submit(&api, "example", "no-route", json!({})).await;
    let job = wait_for(Duration::from_secs(10), "the retry", || async {
        let j = api
            .call(hyper::Method::GET, &format!("/v1/jobs/{id}"), None)
            .await
            .unwrap();
        j["last_error"].as_str().is_some().then_some(j)
    })
    .await;
    assert!(
        job["last_error"].as_str().unwrap().contains("is unloaded"),
        "{job}"
    );

    let text = ok(daemon.cli(&["plugins", "load", "vendor-template"]));
    assert!(
        text.contains("example: now runs vendor-template 0.1.0"),
        "{text}"
    );
    let job = wait_job(&api, &id, Duration::from_secs(30)).await;
    assert_eq!(
        job["state"], "succeeded",
        "the waiting job went through: {job}"
    );
    let id = submit(&api, "mixed", "after-load", json!({})).await;
    assert_eq!(
        wait_job(&api, &id, Duration::from_secs(30)).await["backend"],
        "example"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_file_publishes_and_loads_and_inspect_reads_a_package_offline() {
    let dir = tempfile::tempdir().unwrap();
    // The instance is configured before its plugin exists: the daemon starts and waits for it.
    let plugin_dir = plugin_dir_with(dir.path(), &[(plugins().join("local-ca.wasm"), "local-ca")]);
    let ca = MockCa::start(0);
    let extra = ca.backend("example", "");
    let daemon = start_in(dir.path(), |data| config_text(data, &plugin_dir, &extra));
    let api = daemon.client();
    let status = backend_status(&api, "example").await;
    assert_eq!(status["state"], "not-loaded");
    assert!(
        status["problem"]
            .as_str()
            .is_some_and(|p| p.contains("waiting for") && p.contains("vendor-template.wasm")),
        "{status}"
    );

    let text = ok(daemon.cli(&[
        "plugins",
        "load",
        test_plugins()
            .join("vendor-template.wasm")
            .to_str()
            .unwrap(),
    ]));
    assert!(text.contains("published vendor-template 0.1.0"), "{text}");
    assert!(
        text.contains("example: now runs vendor-template 0.1.0"),
        "{text}"
    );
    assert!(plugin_dir.join("vendor-template.wasm").exists());
    let id = submit(&api, "example", "loaded", json!({})).await;
    assert_eq!(
        wait_job(&api, &id, Duration::from_secs(30)).await["state"],
        "succeeded"
    );

    // inspect: offline, no daemon involved.
    let out = std::process::Command::new(binary())
        .args(["plugins", "inspect"])
        .arg(plugins().join("ndes.wasm"))
        .output()
        .unwrap();
    let text = ok(out);
    for needle in [
        "plugin     ndes 0.1.0",
        "certconn:plugin@0.2.0",
        "runs on this certconn",
        "http: settings.url",
        "describe   ndes 0.1.0: issue, poll",
        "\"admin_path\"",
    ] {
        assert!(text.contains(needle), "{needle:?} not in {text}");
    }
    // A file without a manifest is refused with what to do.
    let bare = dir.path().join("bare.wasm");
    std::fs::write(&bare, b"\0asm\x0d\0\x01\0").unwrap();
    let out = std::process::Command::new(binary())
        .args(["plugins", "inspect"])
        .arg(&bare)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("certconn plugin pack"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_manifest_asks_beyond_the_grant_is_logged_at_load_and_denied_at_use() {
    let dir = tempfile::tempdir().unwrap();
    // local-ca's manifest asks for the key its `ca_key` setting names; this instance is not
    // granted it. ndes asks to reach the host of its `url`; this instance may reach another.
    let extra = r#"
[backends.ungranted]
plugin = "local-ca"
settings = { ca_key = "local-ca" }
[profiles.ungranted]
backend = "ungranted"
[backends.elsewhere]
plugin = "ndes"
http = { allow = ["ndes.example:80"] }
settings = { url = "http://ca.example", auth = "ntlm" }
"#;
    let daemon = start_in(dir.path(), |data| config_text(data, &plugins(), extra));
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    assert!(
        log.contains(r#"the plugin asks for custody key \"local-ca\" (settings.ca_key), which is not granted"#),
        "{log}"
    );
    assert!(
        log.contains(
            "the plugin asks to reach ca.example (settings.url), which is not in http.allow"
        ),
        "{log}"
    );
    let api = daemon.client();
    let id = submit(&api, "ungranted", "beyond-grant", json!({})).await;
    let job = wait_job(&api, &id, Duration::from_secs(30)).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert!(
        job["last_error"].as_str().unwrap().contains("NotGranted"),
        "{job}"
    );
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    assert!(log.contains("with a key it was not granted"));
}

/// The compiled-plugin cache holds native code certconn maps and runs: an entry whose directory
/// other users may write is never loaded (the plugin is compiled afresh and the log says why).
#[test]
fn a_compiled_plugin_cache_others_may_write_is_not_trusted() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = start_default(dir.path());
    let pfx = dir.path().join("first.pfx");
    issue_pfx(&daemon, "smime", "CN=first", &pfx);
    daemon.stop();
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    assert!(
        !log.contains("not loading the compiled-plugin cache entry"),
        "{log}"
    );

    // Some other user could now have swapped the cached code.
    let engine_dir = std::fs::read_dir(dir.path().join("data/cache"))
        .unwrap()
        .next()
        .expect("a cache entry")
        .unwrap()
        .path();
    std::fs::set_permissions(&engine_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(&daemon.log, "").unwrap();
    let daemon = Daemon::start(&daemon.config, &daemon.log);
    let pfx = dir.path().join("second.pfx");
    issue_pfx(&daemon, "smime", "CN=second", &pfx);
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    assert!(
        log.contains("not loading the compiled-plugin cache entry")
            && log.contains("let other users change it"),
        "{log}"
    );
}

/// `certconn plugin pack` makes a package only when the manifest's version is the one the
/// component's own `describe` gives; otherwise it says both and writes nothing.
#[test]
fn pack_refuses_a_manifest_version_the_component_does_not_describe() {
    let dir = tempfile::tempdir().unwrap();
    let component = test_plugins().join("vendor-template.wasm");
    let pack_with = |version: &str| {
        let manifest = dir.path().join(format!("{version}.toml"));
        std::fs::write(
            &manifest,
            format!("name = \"vendor-template\"\nversion = \"{version}\"\ncontract = \"0.2.0\"\n"),
        )
        .unwrap();
        let out = dir.path().join(format!("{version}/vendor-template.wasm"));
        std::fs::create_dir_all(out.parent().unwrap()).unwrap();
        let result = std::process::Command::new(binary())
            .args(["plugin", "pack"])
            .arg(&component)
            .arg("--manifest")
            .arg(&manifest)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        (result, out)
    };
    let (out, file) = pack_with("0.9.0");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("manifest says version 0.9.0")
            && stderr.contains("describe says 0.1.0"),
        "{stderr}"
    );
    assert!(!file.exists(), "nothing is written");
    let (out, file) = pack_with("0.1.0");
    assert!(ok(out).contains("vendor-template 0.1.0"));
    assert!(file.exists());
}

/// `certconn plugin` with no daemon.
fn certconn_offline(args: &[&str]) -> String {
    ok(std::process::Command::new(binary())
        .args(args)
        .output()
        .expect("run certconn"))
}

/// With a trusted publisher configured, only packages that publisher signed load — at start
/// and on every hot swap: an unsigned package, one signed by another key, and one changed after
/// signing are each refused with the reason while the signed version keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_packages_a_trusted_publisher_signed_are_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    let made = certconn_offline(&[
        "plugin",
        "keygen",
        "--out",
        path("vendor").to_str().unwrap(),
    ]);
    let vendor = made
        .lines()
        .find_map(|l| l.strip_prefix("fingerprint "))
        .unwrap()
        .to_owned();
    certconn_offline(&[
        "plugin",
        "keygen",
        "--out",
        path("stranger").to_str().unwrap(),
    ]);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(path("vendor.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let sign = |src: &std::path::Path, key: &str, out: &std::path::Path| {
        certconn_offline(&[
            "plugin",
            "sign",
            src.to_str().unwrap(),
            "--key",
            path(key).to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let plugin_dir = path("plugins");
    std::fs::create_dir_all(&plugin_dir).unwrap();
    let said = sign(
        &plugins().join("local-ca.wasm"),
        "vendor.key",
        &plugin_dir.join("local-ca.wasm"),
    );
    assert!(said.contains(&vendor), "{said}");
    let inspected = certconn_offline(&[
        "plugin",
        "inspect",
        plugin_dir.join("local-ca.wasm").to_str().unwrap(),
    ]);
    assert!(
        inspected.contains(&format!("signed     by publisher {vendor}")),
        "{inspected}"
    );

    let trusted = format!(
        "[plugins]\ntrusted_publishers = [\"{}\"]\nrescan_seconds = 1\n",
        path("vendor.pub").display()
    );
    let daemon = start_in(dir.path(), |data| {
        config_text(data, &plugin_dir, "").replace("[plugins]\n", &trusted)
    });
    let api = daemon.client();
    let working = version_of(&backend_status(&api, "local").await);
    assert!(working.starts_with("local-ca 0.1.0"), "{working}");
    assert_eq!(
        plugins_status(&api).await["plugins"][0]["signed_by"],
        vendor
    );
    let listed = ok(daemon.cli(&["plugins", "list"]));
    assert!(
        listed.contains(&format!("plugin local-ca: signed by publisher {vendor}")),
        "{listed}"
    );
    let serving = |status: &serde_json::Value, version: &str| {
        assert_eq!(version_of(status), version, "{status}");
        assert_eq!(status["state"], "serving", "{status}");
    };

    // 1. Unsigned.
    let unsigned = path("unsigned.wasm");
    pack(
        &plugins().join("local-ca.wasm"),
        "local-ca",
        "0.1.1",
        "0.2.0",
        &unsigned,
    );
    publish(&unsigned, &plugin_dir, "local-ca");
    let reason = refusal_containing(&api, "it is not signed").await;
    assert!(
        reason.contains("vendor.pub"),
        "names the trusted key: {reason}"
    );
    serving(&backend_status(&api, "local").await, &working);

    // 2. Signed by a key the administrator does not trust.
    let theirs = path("theirs.wasm");
    pack(
        &plugins().join("local-ca.wasm"),
        "local-ca",
        "0.1.2",
        "0.2.0",
        &theirs,
    );
    sign(&theirs, "stranger.key", &theirs);
    publish(&theirs, &plugin_dir, "local-ca");
    refusal_containing(&api, "which this backend does not trust").await;
    serving(&backend_status(&api, "local").await, &working);

    // 3. Signed by the vendor, then changed: its manifest now claims another version.
    let changed = path("changed.wasm");
    pack(
        &plugins().join("local-ca.wasm"),
        "local-ca",
        "0.1.3",
        "0.2.0",
        &changed,
    );
    sign(&changed, "vendor.key", &changed);
    let mut bytes = std::fs::read(&changed).unwrap();
    let at = bytes
        .windows(7)
        .position(|w| w == b"\"0.1.3\"")
        .expect("the manifest's version");
    bytes[at + 5] = b'9';
    std::fs::write(&changed, &bytes).unwrap();
    publish(&changed, &plugin_dir, "local-ca");
    refusal_containing(&api, "changed after it was signed").await;
    serving(&backend_status(&api, "local").await, &working);

    // Jobs carried on, on the signed version.
    let id = submit(&api, "smime", "still-signed", json!({})).await;
    assert_eq!(
        wait_job(&api, &id, Duration::from_secs(30)).await["state"],
        "succeeded"
    );

    // 4. A new version the vendor signed is swapped in hot.
    let next = path("next.wasm");
    pack(
        &plugins().join("local-ca.wasm"),
        "local-ca",
        "0.1.4",
        "0.2.0",
        &next,
    );
    sign(&next, "vendor.key", &next);
    publish(&next, &plugin_dir, "local-ca");
    wait_for(Duration::from_secs(10), "0.1.4 to load", || async {
        version_of(&backend_status(&api, "local").await)
            .starts_with("local-ca 0.1.4")
            .then_some(())
    })
    .await;
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    assert_eq!(
        log.matches("new plugin version refused").count(),
        3,
        "{log}"
    );

    // check-config says the same of an unsigned file before a restart would.
    publish(&unsigned, &plugin_dir, "local-ca");
    let out = daemon.cli(&["check-config"]);
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("it is not signed"),
        "{said}"
    );
}
