//! Signed updates from a TUF feed built with `certconn release` and served on loopback: a plugin
//! update rolls out hot under load and passes probation; a version that fails on probation is
//! rolled back; each attack on the feed is refused with its reason while the running version
//! keeps serving; a rotated root is followed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use certconn::sources::api::client::ApiClient;

use crate::common::feed::{release, Feed};
use crate::common::*;

/// `local-ca` repacked as version `version` (the same component).
fn local_ca(dir: &Path, version: &str) -> PathBuf {
    let out = dir.join(format!("local-ca-{version}.wasm"));
    pack(
        &plugins().join("local-ca.wasm"),
        "local-ca",
        version,
        "0.2.0",
        &out,
    );
    out
}

async fn local_version(api: &ApiClient) -> String {
    backend_status(api, "local").await["version"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn check(api: &ApiClient) -> Result<Value, String> {
    api.call(hyper::Method::POST, "/v1/updates/check", None)
        .await
        .map_err(|e| e.to_string())
}

/// A daemon on local-ca 0.1.0 with `[update] plugins = "auto"`, and a feed offering 0.1.0 and
/// 0.2.0 whose first look the daemon has had or not (`look`).
async fn attacked(dir: &Path, init: &[&str]) -> (Feed, Daemon) {
    let feed = Feed::new(dir, init).await;
    feed.add(
        "plugin",
        "local-ca",
        "0.1.0",
        "2026-01-01",
        &local_ca(dir, "0.1.0"),
    );
    feed.publish();
    let plugin_dir = plugin_dir_with(dir, &[(local_ca(dir, "0.1.0"), "local-ca")]);
    let section = feed.section("plugins = \"auto\"");
    let daemon = start_in(dir, |data| config_text(data, &plugin_dir, &section));
    let api = daemon.client();
    let status = check(&api).await.expect("the genuine feed verifies");
    assert_eq!(status["feed"]["error"], Value::Null, "{status}");
    feed.add(
        "plugin",
        "local-ca",
        "0.2.0",
        "2026-02-01",
        &local_ca(dir, "0.2.0"),
    );
    (feed, daemon)
}

/// After an attack: the check was refused naming `what`, local-ca 0.1.0 still runs and a job
/// still succeeds, and the status says the feed was refused.
async fn still_serving(daemon: &Daemon, refused: Result<Value, String>, what: &[&str]) {
    still_serving_on(daemon, refused, what, "local-ca 0.1.0").await
}

/// [`still_serving`], on `running`.
async fn still_serving_on(
    daemon: &Daemon,
    refused: Result<Value, String>,
    what: &[&str],
    running: &str,
) {
    let api = daemon.client();
    let why = refused.expect_err("the attacked feed must be refused");
    assert!(
        what.iter()
            .any(|w| why.to_lowercase().contains(&w.to_lowercase())),
        "the refusal names what failed ({what:?}): {why}"
    );
    let version = local_version(&api).await;
    assert!(version.starts_with(running), "{version}");
    let id = submit(&api, "smime", &format!("after-{}", what[0]), json!({})).await;
    let job = wait_job(&api, &id, Duration::from_secs(30)).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let status = api
        .call(hyper::Method::GET, "/v1/updates", None)
        .await
        .unwrap();
    assert!(status["feed"]["error"].is_string(), "{status}");
    let health = api
        .call(hyper::Method::GET, "/v1/health", None)
        .await
        .unwrap();
    assert_eq!(health["updates"]["feed"], "unreachable", "{health}");
}

fn rewrite_json(path: &Path, change: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    change(&mut v);
    std::fs::write(path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tampered_target_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (feed, daemon) = attacked(dir.path(), &[]).await;
    feed.publish();
    // The 0.2.0 file on the server is changed after it was signed.
    let target = walk(&feed.dir.join("repository/targets"))
        .into_iter()
        .find(|p| p.to_string_lossy().contains("0.2.0"))
        .unwrap();
    let mut bytes = std::fs::read(&target).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0xff;
    std::fs::write(&target, bytes).unwrap();
    let api = daemon.client();
    // The metadata verifies; the download does not: the check answers, and names the refusal.
    let status = check(&api).await.unwrap();
    let note = status["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "local-ca")
        .unwrap()["note"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(note.to_lowercase().contains("hash"), "{status}");
    assert!(local_version(&api).await.starts_with("local-ca 0.1.0"));
    let id = submit(&api, "smime", "after-tamper", json!({})).await;
    assert_eq!(
        wait_job(&api, &id, Duration::from_secs(30)).await["state"],
        "succeeded"
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_signature_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (feed, daemon) = attacked(dir.path(), &[]).await;
    feed.publish();
    // The plugins role's metadata changed after signing: a different length for 0.2.0.
    rewrite_json(&feed.metadata().join("2.plugins.json"), |v| {
        for (_, t) in v["signed"]["targets"].as_object_mut().unwrap() {
            t["length"] = json!(t["length"].as_u64().unwrap() + 1);
        }
    });
    // Snapshot and timestamp still name the old bytes: this is caught first by the hash.
    let refused = check(&daemon.client()).await;
    still_serving(&daemon, refused, &["hash", "signature", "length"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_signature_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (feed, daemon) = attacked(dir.path(), &[]).await;
    feed.publish();
    rewrite_json(&feed.metadata().join("timestamp.json"), |v| {
        v["signatures"] = json!([]);
    });
    let refused = check(&daemon.client()).await;
    still_serving(&daemon, refused, &["signature", "threshold"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rollback_to_older_metadata_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (feed, daemon) = attacked(dir.path(), &[]).await;
    // The attacker keeps a copy of today's feed (version 1) …
    let old = dir.path().join("old-feed");
    copy_dir(&feed.dir.join("repository"), &old);
    // … the daemon sees version 2 and installs local-ca 0.2.0 …
    feed.publish();
    check(&daemon.client()).await.expect("version 2 verifies");
    // … and is then offered version 1 again.
    *feed.served.lock().unwrap() = old;
    let refused = check(&daemon.client()).await;
    still_serving_on(
        &daemon,
        refused,
        &["version", "older", "rollback"],
        "local-ca 0.2.0",
    )
    .await;
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let dest = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_timestamp_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (feed, daemon) = attacked(dir.path(), &[]).await;
    // The feed stopped being published: its timestamp expired.
    let toml = feed.dir.join("feed.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(
        &toml,
        text.replace("timestamp_days = 7", "timestamp_days = 0"),
    )
    .unwrap();
    feed.publish();
    let refused = check(&daemon.client()).await;
    still_serving(&daemon, refused, &["expired"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mix_and_match_metadata_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (feed, daemon) = attacked(dir.path(), &[]).await;
    feed.publish();
    // Version 2's snapshot is replaced by version 1's (renamed): signed, but not what the
    // timestamp names.
    std::fs::copy(
        feed.metadata().join("1.snapshot.json"),
        feed.metadata().join("2.snapshot.json"),
    )
    .unwrap();
    let refused = check(&daemon.client()).await;
    // Depending on the two signatures' lengths, the size or the hash the timestamp gives fails.
    still_serving(&daemon, refused, &["hash", "size", "length"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn metadata_signed_by_an_untrusted_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (feed, daemon) = attacked(dir.path(), &[]).await;
    // Another feed with its own keys, same releases: its timestamp is served.
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let intruder = Feed::new(&other, &[]).await;
    intruder.add(
        "plugin",
        "local-ca",
        "0.2.0",
        "2026-02-01",
        &local_ca(dir.path(), "0.2.0"),
    );
    intruder.publish();
    intruder.publish();
    feed.publish();
    std::fs::copy(
        intruder.metadata().join("timestamp.json"),
        feed.metadata().join("timestamp.json"),
    )
    .unwrap();
    let refused = check(&daemon.client()).await;
    still_serving(&daemon, refused, &["signature", "threshold", "key"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_timestamp_below_its_threshold_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (feed, daemon) = attacked(
        dir.path(),
        &["--timestamp-keys", "2", "--timestamp-threshold", "2"],
    )
    .await;
    feed.publish();
    rewrite_json(&feed.metadata().join("timestamp.json"), |v| {
        v["signatures"].as_array_mut().unwrap().truncate(1);
    });
    let refused = check(&daemon.client()).await;
    still_serving(&daemon, refused, &["signature", "threshold"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endless_download_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let (feed, daemon) = attacked(dir.path(), &[]).await;
    feed.publish();
    feed.endless
        .lock()
        .unwrap()
        .insert("metadata/timestamp.json".into());
    let refused = check(&daemon.client()).await;
    still_serving(&daemon, refused, &["maximum size", "exceeded"]).await;
}

/// The plugins role's key signs a daemon binary (a plugin publisher trying to ship one): it is
/// never offered as a daemon release.
#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_publisher_cannot_ship_a_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let (feed, daemon) = attacked(dir.path(), &[]).await;
    // `certconn release add` refuses a plugin package as a daemon release; an attacker does not
    // ask it.
    let refused = std::process::Command::new(binary())
        .args(["release", "add"])
        .arg(&feed.dir)
        .args(["--kind", "daemon", "--version", "9.9.9"])
        .arg(local_ca(dir.path(), "0.2.0"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && err.contains("not a certconn binary"),
        "{err}"
    );
    feed.add_unchecked(
        "daemon",
        "certconn",
        "9.9.9",
        "2026-02-01",
        &local_ca(dir.path(), "0.2.0"),
    );
    certconn::update::publish::Workspace::new(&feed.dir, &feed.keys)
        .publish_with(&["9.9.9"])
        .await
        .unwrap();
    // TUF holds a delegated role to its paths: the whole feed is refused, naming the target,
    // and the running versions keep serving. (certconn would also take daemon releases from
    // the top-level targets role only.)
    let refused = check(&daemon.client()).await;
    still_serving(&daemon, refused, &["not delegated: daemon/9.9.9"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_feed_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (feed, daemon) = attacked(dir.path(), &[]).await;
    *feed.served.lock().unwrap() = dir.path().join("nothing-here");
    let refused = check(&daemon.client()).await;
    still_serving(&daemon, refused, &["not found", "timestamp"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_root_is_followed_from_the_pinned_one() {
    let dir = tempfile::tempdir().unwrap();
    let (feed, daemon) = attacked(dir.path(), &[]).await;
    release(&[
        "rotate-root",
        feed.dir.to_str().unwrap(),
        "--keys",
        feed.keys.to_str().unwrap(),
    ]);
    feed.publish();
    assert!(feed.metadata().join("2.root.json").exists());
    // The daemon pins 1.root.json; it follows to 2 and installs 0.2.0.
    let api = daemon.client();
    let status = check(&api).await.expect("the rotated feed verifies");
    assert_eq!(status["feed"]["error"], Value::Null, "{status}");
    wait_for(Duration::from_secs(30), "0.2.0 to serve", || async {
        local_version(&api)
            .await
            .starts_with("local-ca 0.2.0")
            .then_some(())
    })
    .await;
}

/// A feed offering vendor-template 0.1.0, a plugin directory running it beside local-ca, and
/// 0.2.0 packed for the test to release: `(feed, plugin_dir, 0.1.0, 0.2.0)`.
async fn vendor_template_feed(dir: &Path) -> (Feed, PathBuf, PathBuf, PathBuf) {
    let template = test_plugins().join("vendor-template.wasm");
    let v2 = dir.join("vendor-template-2.wasm");
    pack(&template, "vendor-template", "0.2.0", "0.2.0", &v2);
    let feed = Feed::new(dir, &[]).await;
    feed.add(
        "plugin",
        "vendor-template",
        "0.1.0",
        "2026-01-01",
        &template,
    );
    feed.publish();
    let plugin_dir = plugin_dir_with(
        dir,
        &[
            (template.clone(), "vendor-template"),
            (plugins().join("local-ca.wasm"), "local-ca"),
        ],
    );
    (feed, plugin_dir, template, v2)
}

/// The update under load: jobs keep arriving while 0.2.0 is downloaded, swapped in and judged;
/// none fails; 0.2.0 passes probation; the state survives a restart.
#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_update_rolls_out_hot_under_load_and_passes_probation() {
    let dir = tempfile::tempdir().unwrap();
    let ca = MockCa::start(20);
    let (feed, plugin_dir, _, v2) = vendor_template_feed(dir.path()).await;
    let extra = ca.backend("example", "update = \"auto\"")
        + &feed.section("check_seconds = 1\nprobation_jobs = 10\nprobation_seconds = 600");
    let daemon = start_in(dir.path(), |data| config_text(data, &plugin_dir, &extra));
    let api = daemon.client();
    let version = || async {
        backend_status(&api, "example").await["version"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert!(version().await.starts_with("vendor-template 0.1.0"));

    // Load: a job every 20 ms from now until the update has passed probation.
    let mut ids = Vec::new();
    for n in 0..10 {
        ids.push(submit(&api, "example", &format!("before-{n}"), json!({})).await);
    }
    feed.add("plugin", "vendor-template", "0.2.0", "2026-02-01", &v2);
    feed.publish();
    let mut n = 0;
    let passed = loop {
        ids.push(submit(&api, "example", &format!("during-{n}"), json!({})).await);
        n += 1;
        let status = api
            .call(hyper::Method::GET, "/v1/updates", None)
            .await
            .unwrap();
        let line = &status["plugins"]["vendor-template"];
        if line["current"]["version"] == "0.2.0" && line["probation"].is_null() {
            break status;
        }
        assert!(n < 1500, "the update did not pass probation: {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(version().await.starts_with("vendor-template 0.2.0"));
    let line = &passed["plugins"]["vendor-template"];
    assert_eq!(line["previous"]["version"], "0.1.0", "{passed}");
    assert_eq!(line["refused"], json!([]), "{passed}");
    let mut on = std::collections::BTreeMap::<String, usize>::new();
    for id in &ids {
        let job = wait_job(&api, id, Duration::from_secs(60)).await;
        assert_eq!(
            job["state"], "succeeded",
            "no job fails during the update: {job}"
        );
        let r = job_result(&api, id).await;
        *on.entry(r["backend_version"].as_str().unwrap_or("?").to_owned())
            .or_default() += 1;
    }
    assert!(on.len() == 2, "jobs ran on both versions: {on:?}");
    // The previous version's file is kept for a rollback after a restart.
    let kept = dir.path().join("data/update/plugins/vendor-template");
    assert_eq!(
        std::fs::read_dir(&kept).unwrap().count(),
        1,
        "{}",
        kept.display()
    );
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    assert!(log.contains("passed its probation"), "{log}");
    drop(daemon);

    // After a restart: 0.2.0 runs, and the state still knows 0.1.0 as previous.
    let daemon = Daemon::start(
        &dir.path().join("certconn.toml"),
        &dir.path().join("daemon2.log"),
    );
    let api = daemon.client();
    let status = wait_for(
        Duration::from_secs(20),
        "the first look at the feed",
        || async {
            let s = api
                .call(hyper::Method::GET, "/v1/updates", None)
                .await
                .ok()?;
            s["feed"]["verified_at_ms"].is_number().then_some(s)
        },
    )
    .await;
    assert_eq!(
        status["plugins"]["vendor-template"]["previous"]["version"], "0.1.0",
        "{status}"
    );
    assert!(backend_status(&api, "example").await["version"]
        .as_str()
        .unwrap()
        .starts_with("vendor-template 0.2.0"));
}

/// A version whose calls fail on probation is swapped back at once, its file restored and the
/// version refused — after a restart too.
#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_version_failing_on_probation_is_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let ca = MockCa::start(0);
    let (feed, plugin_dir, template, v2) = vendor_template_feed(dir.path()).await;
    let extra = ca.backend("example", "update = \"auto\"\nquarantine_after = 100")
        + &feed.section("probation_jobs = 50\nprobation_failures = 2");
    let daemon = start_in(dir.path(), |data| config_text(data, &plugin_dir, &extra));
    let api = daemon.client();
    feed.add("plugin", "vendor-template", "0.2.0", "2026-02-01", &v2);
    feed.publish();
    check(&api).await.expect("the feed verifies");
    assert!(backend_status(&api, "example").await["version"]
        .as_str()
        .unwrap()
        .starts_with("vendor-template 0.2.0"));

    // The CA breaks under the new version: its next calls fail.
    let (code, _) = http_raw(ca.port, "POST", "/mock/fail-next/3", b"");
    assert_eq!(code, 200);
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(submit(&api, "example", &format!("probe-{n}"), json!({})).await);
    }
    let status = wait_for(Duration::from_secs(30), "the rollback", || async {
        let s = api
            .call(hyper::Method::GET, "/v1/updates", None)
            .await
            .ok()?;
        (!s["plugins"]["vendor-template"]["refused"]
            .as_array()?
            .is_empty())
        .then_some(s)
    })
    .await;
    let refusal = &status["plugins"]["vendor-template"]["refused"][0];
    assert_eq!(refusal["version"], "0.2.0", "{status}");
    assert!(
        refusal["reason"]
            .as_str()
            .unwrap()
            .contains("failed on probation"),
        "{status}"
    );
    assert!(backend_status(&api, "example").await["version"]
        .as_str()
        .unwrap()
        .starts_with("vendor-template 0.1.0"));
    // The file in the plugin directory is 0.1.0 again.
    assert_eq!(
        std::fs::read(plugin_dir.join("vendor-template.wasm")).unwrap(),
        std::fs::read(&template).unwrap()
    );
    // The jobs that failed on 0.2.0 are retried and succeed on 0.1.0.
    for id in &ids {
        let job = wait_job(&api, id, Duration::from_secs(60)).await;
        assert_eq!(job["state"], "succeeded", "{job}");
    }
    // A later look does not install 0.2.0 again, and neither does a restart.
    let status = check(&api).await.unwrap();
    let note = status["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "vendor-template")
        .unwrap()["note"]
        .clone();
    assert!(
        note.as_str().unwrap_or_default().contains("refused"),
        "{status}"
    );
    drop(daemon);
    let daemon = Daemon::start(
        &dir.path().join("certconn.toml"),
        &dir.path().join("daemon2.log"),
    );
    let api = daemon.client();
    check(&api).await.unwrap();
    assert!(backend_status(&api, "example").await["version"]
        .as_str()
        .unwrap()
        .starts_with("vendor-template 0.1.0"));
}

/// A release whose health check fails when it is loaded (its CA is down) is not refused for
/// good: the running version keeps serving and the next look, with the CA back, installs it.
#[tokio::test(flavor = "multi_thread")]
async fn a_release_whose_health_check_fails_is_tried_again_at_the_next_look() {
    let dir = tempfile::tempdir().unwrap();
    let ca = MockCa::start(0);
    let port = ca.port;
    let (feed, plugin_dir, _, v2) = vendor_template_feed(dir.path()).await;
    let extra = ca.backend("example", "update = \"auto\"") + &feed.section("");
    let daemon = start_in(dir.path(), |data| config_text(data, &plugin_dir, &extra));
    let api = daemon.client();
    feed.add("plugin", "vendor-template", "0.2.0", "2026-02-01", &v2);
    feed.publish();
    drop(ca);
    let status = check(&api).await.unwrap();
    let line = |s: &Value| {
        s["versions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "vendor-template")
            .cloned()
            .unwrap()
    };
    assert!(
        line(&status)["note"]
            .as_str()
            .unwrap_or_default()
            .contains("tried again at the next look"),
        "{status}"
    );
    assert_eq!(
        status["plugins"]["vendor-template"]["refused"],
        json!([]),
        "{status}"
    );
    assert!(backend_status(&api, "example").await["version"]
        .as_str()
        .unwrap()
        .starts_with("vendor-template 0.1.0"));
    // The CA is back: the next look installs 0.2.0.
    let _ca = MockCa::start_on(port, 0);
    let status = check(&api).await.unwrap();
    assert_eq!(
        status["plugins"]["vendor-template"]["probation"]["version"], "0.2.0",
        "{status}"
    );
    assert!(backend_status(&api, "example").await["version"]
        .as_str()
        .unwrap()
        .starts_with("vendor-template 0.2.0"));
}

/// `certconn update status` prints each version's lifecycle from the feed's dates.
#[tokio::test(flavor = "multi_thread")]
async fn status_shows_each_versions_lifecycle_from_the_feed() {
    let dir = tempfile::tempdir().unwrap();
    let feed = Feed::new(dir.path(), &[]).await;
    // 0.1.0 is deprecated by 0.2.0, released yesterday with the default 183 days of grace.
    let yesterday = certconn::lifecycle::date_of_day(certconn::lifecycle::today() - 1);
    feed.add(
        "plugin",
        "local-ca",
        "0.1.0",
        "2026-01-01",
        &local_ca(dir.path(), "0.1.0"),
    );
    feed.add(
        "plugin",
        "local-ca",
        "0.2.0",
        &yesterday,
        &local_ca(dir.path(), "0.2.0"),
    );
    feed.publish();
    let plugin_dir = plugin_dir_with(dir.path(), &[(local_ca(dir.path(), "0.1.0"), "local-ca")]);
    let section = feed.section("");
    let daemon = start_in(dir.path(), |data| config_text(data, &plugin_dir, &section));
    let out = ok(daemon.cli(&["update", "check"]));
    assert!(
        out.contains("0.1.0 is deprecated: supported until") && out.contains("(181 days left)"),
        "{out}"
    );
    assert!(out.contains("policy notify"), "{out}");
    assert!(out.contains("local-ca 0.2.0 is available"), "{out}");
    // notify installs nothing.
    assert!(local_version(&daemon.client())
        .await
        .starts_with("local-ca 0.1.0"));
    let health: Value = daemon
        .client()
        .call(hyper::Method::GET, "/v1/health", None)
        .await
        .unwrap();
    assert_eq!(health["updates"]["stage"], "deprecated", "{health}");
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    assert!(log.contains("5112") || log.contains("deprecated"), "{log}");
}

/// This build without its debug information (a quarter of the size: the tests copy, hash and
/// download it several times).
fn this_build(dir: &Path) -> PathBuf {
    let out = dir.join("certconn-this-build");
    if !out.exists() {
        run_ok(
            std::process::Command::new("strip")
                .arg("--strip-debug")
                .arg("-o")
                .arg(&out)
                .arg(binary()),
        );
    }
    out
}

/// An install directory holding this build as version 0.1.0, `current` pointing at it.
fn install_dir(dir: &Path) -> PathBuf {
    let install = dir.join("install");
    let v1 = install.join("versions/0.1.0");
    std::fs::create_dir_all(&v1).unwrap();
    std::fs::copy(this_build(dir), v1.join("certconn")).unwrap();
    std::os::unix::fs::symlink("versions/0.1.0", install.join("current")).unwrap();
    install
}

/// This build, stamped to report `version`.
/// `certconn release add` refuses a file that is not the release it names, as every certconn
/// would refuse it later, and leaves the feed as it was: a package whose manifest names another
/// version or plugin, a file that is no plugin package, a binary stamped with another version,
/// a file that is no certconn binary.
#[tokio::test(flavor = "multi_thread")]
async fn release_add_refuses_a_file_that_is_not_the_release_it_names() {
    let dir = tempfile::tempdir().unwrap();
    let feed = Feed::new(dir.path(), &[]).await;
    let listed = || std::fs::read_to_string(feed.dir.join("feed.toml")).unwrap_or_default();
    let before = listed();
    let passwd = Path::new("/etc/passwd");
    let local_ca_2 = local_ca(dir.path(), "0.2.0");
    let stamped_2 = stamped(dir.path(), "0.2.0");
    for (kind, name, version, file, why) in [
        (
            "plugin",
            "local-ca",
            "1.0.0",
            local_ca_2.as_path(),
            "the feed lists local-ca 1.0.0, but the package's manifest says local-ca 0.2.0",
        ),
        (
            "plugin",
            "scep",
            "0.2.0",
            local_ca_2.as_path(),
            "the feed lists scep 0.2.0, but the package's manifest says local-ca 0.2.0",
        ),
        (
            "plugin",
            "local-ca",
            "0.3.0",
            passwd,
            "not a WebAssembly file",
        ),
        (
            "daemon",
            "certconn",
            "0.3.0",
            stamped_2.as_path(),
            "the binary is stamped 0.2.0, not 0.3.0",
        ),
        (
            "daemon",
            "certconn",
            "0.3.0",
            passwd,
            "not a certconn binary",
        ),
    ] {
        let out = std::process::Command::new(binary())
            .args(["release", "add"])
            .arg(&feed.dir)
            .args(["--kind", kind, "--name", name, "--version", version])
            .arg(file)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(why) && err.contains("not added to the feed"),
            "{kind} {name} {version} from {}: {err}",
            file.display()
        );
    }
    assert_eq!(listed(), before, "a refused release was listed");
    // What the release says it is goes in.
    feed.add("plugin", "local-ca", "0.2.0", "2026-02-01", &local_ca_2);
    feed.add("daemon", "certconn", "0.2.0", "2026-02-01", &stamped_2);
    assert!(listed().contains("0.2.0"));
}

fn stamped(dir: &Path, version: &str) -> PathBuf {
    let out = dir.join(format!("certconn-{version}"));
    ok(std::process::Command::new(binary())
        .args(["release", "stamp"])
        .arg(this_build(dir))
        .arg(&out)
        .args(["--version", version])
        .output()
        .unwrap());
    out
}

/// `certconn launch INSTALL -- serve`, in its own process group (killed whole on drop).
struct Launched {
    child: std::process::Child,
    data: PathBuf,
    log: PathBuf,
}

impl Launched {
    fn start(install: &Path, config: &Path, data: &Path, log: &Path) -> Launched {
        use std::os::unix::process::CommandExt;
        let log_file = std::fs::File::create(log).unwrap();
        let child = std::process::Command::new(binary())
            .arg("launch")
            .arg(install)
            .args(["--", "--log-format", "json", "serve", "--config"])
            .arg(config)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log_file)
            .process_group(0)
            .spawn()
            .unwrap();
        Launched {
            child,
            data: data.to_owned(),
            log: log.to_owned(),
        }
    }

    /// `/v1/health`'s version, from whichever daemon now holds `data/api.addr`.
    fn version(&self) -> Option<String> {
        let addr: std::net::SocketAddr = std::fs::read_to_string(self.data.join("api.addr"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        curl_json(addr.port(), "GET", "/v1/health", None, None)?["version"]
            .as_str()
            .map(str::to_owned)
    }

    async fn wait_version(&self, version: &str, within: Duration) -> std::time::Instant {
        wait_for(within, &format!("certconn {version} to serve"), || async {
            (self.version().as_deref() == Some(version)).then(std::time::Instant::now)
        })
        .await
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        // SAFETY: signalling the process group the test started.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// One call with curl, `None` when nothing (or no JSON) answers: a daemon between versions.
fn curl_json(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Option<Value> {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sf", "--max-time", "5", "-X", method]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data", b]);
    }
    let out = cmd
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .ok()?;
    out.status.success().then_some(())?;
    serde_json::from_slice(&out.stdout).ok()
}

fn api_port(data: &Path) -> u16 {
    std::fs::read_to_string(data.join("api.addr"))
        .unwrap()
        .trim()
        .parse::<std::net::SocketAddr>()
        .unwrap()
        .port()
}

/// `install.json`; null until the first switch writes it.
fn install_state(install: &Path) -> Value {
    match std::fs::read(install.join("install.json")) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap(),
        Err(_) => Value::Null,
    }
}

/// The daemon finds a newer release of itself, stages it, switches, and hands over to the
/// launcher, which starts it; it serves, commits its trial, and the jobs submitted around the
/// switch all succeed. Prints the publish → serving time and the gap in service.
#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_updates_itself_and_comes_up_healthy() {
    let dir = tempfile::tempdir().unwrap();
    let install = install_dir(dir.path());
    let feed = Feed::new(dir.path(), &[]).await;
    feed.add(
        "daemon",
        "certconn",
        "0.1.0",
        "2026-01-01",
        &this_build(dir.path()),
    );
    feed.publish();
    let config = dir.path().join("certconn.toml");
    let data = dir.path().join("data");
    let section = feed.section("daemon = \"auto\"\ncheck_seconds = 1\ndaemon_health_seconds = 60");
    std::fs::write(&config, config_text(&data, &plugins(), &section)).unwrap();
    let daemon = Launched::start(&install, &config, &data, &dir.path().join("daemon.log"));
    daemon.wait_version("0.1.0", Duration::from_secs(60)).await;
    let token = data_token(dir.path(), "api-token");
    let jobs: Vec<String> = (0..5)
        .map(|n| {
            let body = format!(
                r#"{{"profile":"smime","subject":"CN=d{n}","idempotency_key":"before-{n}"}}"#
            );
            let v = curl_json(
                api_port(&data),
                "POST",
                "/v1/jobs/issue",
                Some(&token),
                Some(&body),
            )
            .expect("the job is taken");
            v["job"]["id"].as_str().unwrap().to_owned()
        })
        .collect();

    let published = std::time::Instant::now();
    feed.add(
        "daemon",
        "certconn",
        "0.2.0",
        "2026-02-01",
        &stamped(dir.path(), "0.2.0"),
    );
    feed.publish();
    let mut last_old = published;
    let first_new = wait_for(Duration::from_secs(120), "certconn 0.2.0 to serve", || {
        let v = daemon.version();
        if v.as_deref() == Some("0.1.0") {
            last_old = std::time::Instant::now();
        }
        async move { (v.as_deref() == Some("0.2.0")).then(std::time::Instant::now) }
    })
    .await;
    println!(
        "daemon update: publish -> serving {:.1} s; gap in service {:.1} s",
        (first_new - published).as_secs_f64(),
        (first_new - last_old).as_secs_f64()
    );
    let state = wait_for(Duration::from_secs(30), "the trial to commit", || async {
        let s = install_state(&install);
        s["trial"].is_null().then_some(s)
    })
    .await;
    assert_eq!(state["current"], "0.2.0", "{state}");
    assert_eq!(state["previous"], "0.1.0", "{state}");
    assert_eq!(
        std::fs::read_link(install.join("current")).unwrap(),
        PathBuf::from("versions/0.2.0")
    );
    // Logged just after the trial is committed (event 5123): waited for, not read once.
    wait_for(
        Duration::from_secs(30),
        "event 5123 (came up healthy)",
        || {
            let logged = daemon.log().contains("came up healthy");
            async move { logged.then_some(()) }
        },
    )
    .await;
    // The jobs submitted before the switch all finished, none failed.
    let port = api_port(&data);
    for id in jobs {
        let job = wait_for(Duration::from_secs(60), "the job to finish", || {
            let v = curl_json(port, "GET", &format!("/v1/jobs/{id}"), Some(&token), None)
                .unwrap_or(Value::Null);
            async move {
                matches!(
                    v["job"]["state"].as_str().or(v["state"].as_str()),
                    Some("succeeded" | "failed" | "dead")
                )
                .then_some(v)
            }
        })
        .await;
        let state = job["job"]["state"].as_str().or(job["state"].as_str());
        assert_eq!(state, Some("succeeded"), "{job}");
    }
}

/// A release that passes its first run (`--version`) but never serves is stopped at its
/// deadline; the previous version is started again and the release refused for good.
#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_that_cannot_become_healthy_is_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let install = install_dir(dir.path());
    let broken = dir.path().join("broken");
    std::fs::write(
        &broken,
        "#!/bin/sh\nif [ \"$1\" = \"--version\" ]; then echo \"certconn 0.3.0\"; exit 0; fi\nexec sleep 600\n",
    )
    .unwrap();
    let feed = Feed::new(dir.path(), &[]).await;
    feed.add(
        "daemon",
        "certconn",
        "0.1.0",
        "2026-01-01",
        &this_build(dir.path()),
    );
    feed.publish();
    let config = dir.path().join("certconn.toml");
    let data = dir.path().join("data");
    let section = feed.section("daemon = \"auto\"\ncheck_seconds = 1\ndaemon_health_seconds = 3");
    std::fs::write(&config, config_text(&data, &plugins(), &section)).unwrap();
    let daemon = Launched::start(&install, &config, &data, &dir.path().join("daemon.log"));
    daemon.wait_version("0.1.0", Duration::from_secs(60)).await;
    // A script, not a certconn binary: `certconn release add` would refuse it.
    feed.add_unchecked("daemon", "certconn", "0.3.0", "2026-02-01", &broken);
    feed.publish();
    let state = wait_for(Duration::from_secs(60), "the rollback", || async {
        let s = install_state(&install);
        (!s["refused"].as_array().is_none_or(|r| r.is_empty())).then_some(s)
    })
    .await;
    assert_eq!(state["refused"][0]["version"], "0.3.0", "{state}");
    assert!(
        state["refused"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("did not serve within 3 s"),
        "{state}"
    );
    assert_eq!(
        std::fs::read_link(install.join("current")).unwrap(),
        PathBuf::from("versions/0.1.0")
    );
    // The previous version serves again (on the port it now writes to data/api.addr; the
    // stale address of the first run answers nothing).
    daemon.wait_version("0.1.0", Duration::from_secs(60)).await;
    // The next look does not try 0.3.0 again.
    let out = ok(std::process::Command::new(binary())
        .args(["update", "check", "--config"])
        .arg(&config)
        .output()
        .unwrap());
    assert!(
        out.contains("0.3.0 was refused and is not tried again"),
        "{out}"
    );
    assert_eq!(install_state(&install)["trial"], Value::Null);
    assert!(daemon.log().contains("was rolled back"), "{}", daemon.log());
}

/// The offline path: `certconn update apply` from a copied feed, verified from the pinned
/// root, switches to the new version; `certconn update rollback` goes back.
#[tokio::test(flavor = "multi_thread")]
async fn apply_and_rollback_offline() {
    let dir = tempfile::tempdir().unwrap();
    let install = install_dir(dir.path());
    let feed = Feed::new(dir.path(), &[]).await;
    feed.add(
        "daemon",
        "certconn",
        "0.2.0",
        "2026-02-01",
        &stamped(dir.path(), "0.2.0"),
    );
    feed.publish();
    let bundle = dir.path().join("bundle");
    copy_dir(&feed.dir.join("repository"), &bundle);
    let root = feed.metadata().join("1.root.json");
    let run = |args: &[&str]| {
        std::process::Command::new(binary())
            .args(args)
            .args(["--config", "/nonexistent.toml"])
            .output()
            .unwrap()
    };
    let out = ok(run(&[
        "update",
        "apply",
        bundle.to_str().unwrap(),
        "--install-dir",
        install.to_str().unwrap(),
        "--root",
        root.to_str().unwrap(),
    ]));
    assert!(out.contains("certconn 0.2.0 staged and switched"), "{out}");
    assert_eq!(
        std::fs::read_link(install.join("current")).unwrap(),
        PathBuf::from("versions/0.2.0")
    );
    let said = ok(std::process::Command::new(install.join("current/certconn"))
        .arg("--version")
        .output()
        .unwrap());
    assert_eq!(said.trim(), "certconn 0.2.0");
    // A tampered bundle is refused and changes nothing.
    let target = walk(&bundle.join("targets")).pop().unwrap();
    std::fs::write(&target, b"not certconn").unwrap();
    let refused = run(&[
        "update",
        "rollback",
        "--install-dir",
        install.to_str().unwrap(),
    ]);
    assert!(
        refused.status.success(),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert_eq!(
        std::fs::read_link(install.join("current")).unwrap(),
        PathBuf::from("versions/0.1.0")
    );
    let state = install_state(&install);
    assert_eq!(state["refused"][0]["version"], "0.2.0", "{state}");
    let again = run(&[
        "update",
        "apply",
        bundle.to_str().unwrap(),
        "--install-dir",
        install.to_str().unwrap(),
        "--root",
        root.to_str().unwrap(),
    ]);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr).to_lowercase();
    assert!(err.contains("hash mismatch"), "{err}");
    assert_eq!(
        std::fs::read_link(install.join("current")).unwrap(),
        PathBuf::from("versions/0.1.0")
    );
}

/// Under the launcher, the unit's `ExecReload=` (SIGHUP to the main process, the launcher)
/// reloads the daemon's configuration: the launcher passes the signal on and keeps running.
/// Left to its default action, SIGHUP ended the launcher, and a reload became a failed service.
#[tokio::test(flavor = "multi_thread")]
async fn the_launcher_passes_a_reload_signal_to_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let install = install_dir(dir.path());
    let config = dir.path().join("certconn.toml");
    let data = dir.path().join("data");
    std::fs::write(&config, config_text(&data, &plugins(), "")).unwrap();
    let mut daemon = Launched::start(&install, &config, &data, &dir.path().join("daemon.log"));
    daemon.wait_version("0.1.0", Duration::from_secs(60)).await;
    let launcher = daemon.child.id() as i32;
    // SAFETY: signalling the launcher this test started.
    unsafe {
        libc::kill(launcher, libc::SIGHUP);
    }
    wait_for(Duration::from_secs(30), "the daemon to reload", || async {
        daemon
            .log()
            .contains("configuration reloaded: no backend or profile changed")
            .then_some(())
    })
    .await;
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "the launcher ended on SIGHUP: {}",
        daemon.log()
    );
    assert_eq!(daemon.version().as_deref(), Some("0.1.0"));
}
