//! Hostile plugins: each job fails with a clear error; the daemon and the other backends carry
//! on; nothing leaks. Every hostile behaviour runs as its own backend instance beside a working
//! one (`local`), with `max_attempts = 1` so each fault shows once.

use crate::common;

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
    // A granted server that redirects to the bait (not granted).
    let redirector = TcpListener::bind("127.0.0.1:0").unwrap();
    let redirector_addr = redirector.local_addr().unwrap();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for mut s in redirector.incoming().flatten() {
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf);
            let _ = s.write_all(format!("HTTP/1.1 302 Found\r\nLocation: http://{bait_addr}/\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes());
        }
    });
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
        ("diver", r#"{ mode = "recursion" }"#, ""),
        ("bulky", r#"{ mode = "huge-certificate", mib = 32 }"#, ""),
        ("chatty", r#"{ mode = "huge-error", mib = 8 }"#, ""),
        ("trapper", r#"{ mode = "trap" }"#, ""),
        (
            "redirected",
            &format!(r#"{{ mode = "redirect", authority = "{redirector_addr}" }}"#),
            &format!(r#"http = {{ allow = ["{redirector_addr}"] }}"#),
        ),
        (
            "rebinder",
            &format!(
                r#"{{ mode = "http", authority = "localhost:{}" }}"#,
                bait_addr.port()
            ),
            &format!(r#"http = {{ allow = ["localhost:{}"] }}"#, bait_addr.port()),
        ),
        (
            "thief",
            r#"{ mode = "ungranted-key", handle = "local-ca" }"#,
            "",
        ),
        ("storm", r#"{ mode = "log-storm" }"#, ""),
    ] {
        extra.push_str(&format!(
            // The breaker would quarantine these after 5 faults; this test wants every job run.
            "[backends.{name}]\nplugin = \"sandbox-probe\"\nquarantine_after = 1000000\n{limits}\nsettings = {settings}\n[profiles.{name}]\nbackend = \"{name}\"\n"
        ));
    }
    let plugins = mixed_plugin_dir(dir.path());
    let daemon = start_in(dir.path(), |data| {
        config_text(data, &plugins, &extra).replace("workers = 4", "workers = 4\nmax_attempts = 1")
    });
    let api = daemon.client();

    let names = [
        "spin",
        "hog",
        "snoop",
        "environ",
        "caller",
        "crasher",
        "diver",
        "bulky",
        "chatty",
        "trapper",
        "redirected",
        "rebinder",
        "thief",
        "storm",
    ];
    let mut hostile = Vec::new();
    for name in names {
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
            // Rust's shadow stack in linear memory runs out first (an out-of-bounds access),
            // or wasm's own call stack: either way a trap.
            "diver" => ("dead", vec!["plugin-fault", "trapped: wasm trap:"]),
            "bulky" => ("failed", vec!["33554432-byte certificate", "at most 65536"]),
            "chatty" => (
                "failed",
                vec!["rejected: EEEE", "cut: 8388608 bytes in all"],
            ),
            "trapper" => ("dead", vec!["plugin-fault", "unreachable"]),
            "redirected" => (
                "failed",
                vec![
                    "redirect to",
                    "refused",
                    "the host denied a request",
                    "not in this backend's http.allow",
                ],
            ),
            "rebinder" => ("failed", vec!["refused", "DestinationIpProhibited"]),
            "thief" => ("failed", vec!["custody refused local-ca", "NotGranted"]),
            "storm" => ("failed", vec!["logged 200000 lines"]),
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
        assert!(
            error.len() < 4096,
            "{name}: the error kept in the journal is bounded ({} bytes)",
            error.len()
        );
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

    // Nothing leaks: more faults than the engine has instance slots (128), memory bombs and
    // outsized answers; afterwards the daemon's memory is about where it was and good jobs run.
    let rss = |pid: u32| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    };
    let pid = daemon.child.id();
    let before = rss(pid);
    let mut faults = Vec::new();
    for i in 0..150 {
        let name = match i % 10 {
            0 => "hog",
            1 => "bulky",
            _ => "crasher",
        };
        faults.push(submit(&api, name, &format!("leak-{i}"), json!({})).await);
    }
    for id in &faults {
        let job = wait_job(&api, id, Duration::from_secs(120)).await;
        assert_ne!(job["state"], "succeeded");
    }
    let after = rss(pid);
    eprintln!("daemon RSS {before} kB before 150 hostile jobs, {after} kB after");
    assert!(
        after < before + 96 * 1024,
        "RSS grew from {before} kB to {after} kB over 150 hostile jobs"
    );
    for i in 0..10 {
        let id = submit(&api, "smime", &format!("after-leak-{i}"), json!({})).await;
        assert_eq!(
            wait_job(&api, &id, Duration::from_secs(30)).await["state"],
            "succeeded"
        );
    }
    let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap();
    assert!(
        log.contains("plugin HTTP request denied: host not granted"),
        "the denial is logged"
    );
    assert!(
        log.contains("a granted name resolves to an internal address"),
        "the private-address refusal is logged"
    );
    assert!(
        log.contains("with a key it was not granted"),
        "the custody denial is logged"
    );
    // The log storm: at most log_lines_per_call (200) lines got through, then one notice.
    let storm = log.matches("storm line").count();
    assert!(storm <= 200 && storm > 0, "{storm} storm lines in the log");
    assert!(log.contains("plugin log limit reached"));
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

/// A plugin holding the CA key (as a replaced `local-ca` would) asks custody to sign what it
/// likes: the host signs only the job's own certificate. A subordinate CA, a certificate for
/// another key, one valid for a hundred years, and raw bytes are each refused and logged, the
/// job fails with the reason, and the honest backend beside it keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_holding_the_ca_key_signs_only_the_jobs_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let forgeries = [
        "honest",
        "ca",
        "other-key",
        "century",
        "raw",
        "ocsp-eku",
        "fixed-serial",
    ];
    let mut extra = String::new();
    for what in forgeries {
        extra.push_str(&format!(
            "[backends.forge-{what}]\nplugin = \"sandbox-probe\"\nkeys = [\"local-ca\"]\nsettings = {{ mode = \"forge\", forge = \"{what}\", handle = \"local-ca\" }}\n[profiles.forge-{what}]\nbackend = \"forge-{what}\"\n"
        ));
    }
    let plugins = mixed_plugin_dir(dir.path());
    let mut daemon = start_in(dir.path(), |data| {
        config_text(data, &plugins, &extra).replace("workers = 4", "workers = 4\nmax_attempts = 1")
    });
    let api = daemon.client();
    let refused = |job: &serde_json::Value, what: &str, why: &str| {
        let error = job["last_error"].as_str().unwrap_or_default();
        assert!(!error.contains("BREACH"), "{what}: {error}");
        assert_eq!(job["state"], "failed", "{what}: {job}");
        assert!(
            error.contains("issuance policy refused to sign with CA key local-ca")
                && error.contains(why),
            "{what}: {error}"
        );
    };
    for what in forgeries {
        let profile = format!("forge-{what}");
        let id = submit(&api, &profile, what, json!({})).await;
        let job = wait_job(&api, &id, Duration::from_secs(60)).await;
        let why = match what {
            "honest" | "fixed-serial" => {
                assert_eq!(job["state"], "succeeded", "{what}: {job}");
                continue;
            }
            "ca" => "CA certificate (basicConstraints cA = true)",
            "other-key" => "not the one this job certifies",
            "century" => "valid beyond the CA certificate",
            "raw" => "not a TBSCertificate",
            "ocsp-eku" => "extended key usage 1.3.6.1.5.5.7.3.9 is not one the profile allows",
            _ => unreachable!(),
        };
        refused(&job, what, why);
    }
    // The same serial a second time: the signature trail refuses it before it is signed.
    let id = submit(&api, "forge-fixed-serial", "fixed-serial-again", json!({})).await;
    let job = wait_job(&api, &id, Duration::from_secs(60)).await;
    refused(&job, "fixed-serial again", "serial 7e57 of CN=");
    refused(
        &job,
        "fixed-serial again",
        "was already signed (signature trail entry",
    );

    // Outside any job (its health check), the CA key signs nothing.
    let status = plugins_status(&api).await;
    let health = status["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["backend"] == "forge-honest")
        .map(|b| b["health"].as_str().unwrap_or_default().to_owned())
        .unwrap();
    assert!(
        health.contains("custody refused outside a job")
            && health.contains("this call is not issuing one"),
        "{health}"
    );

    let log = std::fs::read_to_string(&daemon.log).unwrap();
    for what in [
        "forge-ca",
        "forge-other-key",
        "forge-century",
        "forge-raw",
        "forge-ocsp-eku",
        "forge-fixed-serial",
    ] {
        assert!(
            log.lines().any(|l| l.contains("issuance policy: refused")
                && l.contains(what)
                && l.contains("sandbox-probe 0.")),
            "the log names the backend {what} and the plugin version: {log}"
        );
    }
    // The honest CA beside them carries on.
    let id = submit(&api, "smime", "after-the-forgers", json!({})).await;
    assert_eq!(
        wait_job(&api, &id, Duration::from_secs(30)).await["state"],
        "succeeded"
    );

    // Every certificate a CA key signed is in the trail, once, chained; nothing refused is.
    daemon.stop();
    let verified = ok(daemon.cli(&["audit", "verify"]));
    assert!(verified.contains("3 entries, chain intact"), "{verified}");
    let listed = ok(daemon.cli(&["audit", "list", "--json"]));
    let entries: Vec<serde_json::Value> = listed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let signers: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| {
            (
                e["backend"].as_str().unwrap(),
                e["serial"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(signers.len(), 3, "{listed}");
    assert_eq!(signers[0].0, "forge-honest");
    assert_eq!(signers[1], ("forge-fixed-serial", "7e57"));
    assert_eq!(signers[2].0, "local");
    for e in &entries {
        assert_eq!(e["kind"], "certificate");
        assert_eq!(e["key"], "local-ca");
        assert_eq!(e["tbs_sha256"].as_str().unwrap().len(), 64);
        assert!(e["job"].as_str().is_some_and(|j| !j.is_empty()), "{e}");
    }
    assert!(entries[2]["signer"]
        .as_str()
        .unwrap()
        .starts_with("local-ca "));

    // Tampering with a copy of the journal is found: an edited entry, then a removed one.
    let journal = dir.path().join("data").join("journal.sqlite");
    // A copy of the live journal taken through SQLite (one read transaction, the WAL included):
    // the file copied byte by byte while the daemon checkpoints can be torn ("database disk
    // image is malformed").
    let snapshot = |name: &str| -> std::path::PathBuf {
        let copy = dir.path().join(name);
        rusqlite::Connection::open(&journal)
            .unwrap()
            .execute("VACUUM INTO ?1", [copy.to_str().unwrap()])
            .unwrap();
        copy
    };
    let tamper = |name: &str, sql: &str| -> String {
        let copy = snapshot(name);
        rusqlite::Connection::open(&copy)
            .unwrap()
            .execute_batch(sql)
            .unwrap();
        let out = daemon.cli(&["audit", "verify", "--journal", copy.to_str().unwrap()]);
        assert!(!out.status.success(), "{name} verified");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let edited = tamper(
        "edited.sqlite",
        "UPDATE signature_trail SET subject = 'CN=nobody' WHERE seq = 2;",
    );
    assert!(edited.contains("entry 2 was altered"), "{edited}");
    let removed = tamper(
        "removed.sqlite",
        "DELETE FROM signature_trail WHERE seq = 2;",
    );
    assert!(
        removed.contains("entry 3 does not follow entry 1"),
        "{removed}"
    );
    // A cut tail is found against a head kept from before.
    let head = verified
        .lines()
        .find_map(|l| l.strip_prefix("head: "))
        .unwrap()
        .to_owned();
    let copy = snapshot("cut.sqlite");
    rusqlite::Connection::open(&copy)
        .unwrap()
        .execute_batch("DELETE FROM signature_trail WHERE seq = 3;")
        .unwrap();
    let out = daemon.cli(&[
        "audit",
        "verify",
        "--journal",
        copy.to_str().unwrap(),
        "--expect-head",
        &head,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("entries were cut from its end"),
        "{err}"
    );
}

/// Each custody key has a role that fixes what a plugin granted it may have it do: a CA key
/// never decrypts (and signs only the job's certificate), a PFX-password key never signs, a
/// signing key never decrypts. Each refusal fails the job with the reason and is logged with
/// the plugin version.
/// A journal that cannot record a signature fails the call, not the job: nothing is signed,
/// the job is tried again, and it succeeds once the journal records again. The plugin sees a
/// custody error and answers as it would for any (local-ca: rejected); the job failed for good
/// on that answer when a PostgreSQL journal was cut off in the middle of a call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signature_the_journal_cannot_record_is_tried_again_not_failed() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_in(dir.path(), |data| {
        config_text(data, &plugins(), "").replace("workers = 4", "workers = 4\nmax_attempts = 1000")
    });
    let journal =
        rusqlite::Connection::open(dir.path().join("data").join("journal.sqlite")).unwrap();
    journal.busy_timeout(Duration::from_secs(10)).unwrap();
    journal
        .execute_batch(
            "CREATE TRIGGER trail_gone BEFORE INSERT ON signature_trail \
             BEGIN SELECT RAISE(ABORT, 'the trail cannot be written'); END;",
        )
        .unwrap();
    let api = daemon.client();
    let id = submit(&api, "smime", "trail-gone", json!({})).await;
    let start = std::time::Instant::now();
    let job = loop {
        let job = api
            .call(hyper::Method::GET, &format!("/v1/jobs/{id}"), None)
            .await
            .unwrap();
        if job["attempts"].as_u64().unwrap_or(0) >= 2 {
            break job;
        }
        assert_ne!(job["state"], "failed", "{job}");
        assert!(start.elapsed() < Duration::from_secs(60), "{job}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let error = job["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("could not be recorded in the signature trail, so nothing was signed")
            && error.contains("the trail cannot be written"),
        "{job}"
    );
    assert!(
        matches!(job["state"].as_str(), Some("queued" | "running")),
        "{job}"
    );
    let signed: i64 = journal
        .query_row("SELECT COUNT(*) FROM signature_trail", [], |r| r.get(0))
        .unwrap();
    assert_eq!(signed, 0);
    journal.execute_batch("DROP TRIGGER trail_gone").unwrap();
    let job = wait_job(&api, &id, Duration::from_secs(60)).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let signed: i64 = journal
        .query_row("SELECT COUNT(*) FROM signature_trail", [], |r| r.get(0))
        .unwrap();
    assert_eq!(signed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_role_fixes_what_a_plugin_may_have_it_do() {
    let dir = tempfile::tempdir().unwrap();
    let mut extra = String::from(
        "[keys.pfx-password]\nalgorithm = \"rsa-2048\"\nrole = \"pfx-password\"\n[keys.signer]\nalgorithm = \"ec-p256\"\nrole = \"signing\"\n",
    );
    for key in ["local-ca", "pfx-password", "signer"] {
        extra.push_str(&format!(
            "[backends.misuse-{key}]\nplugin = \"sandbox-probe\"\nkeys = [\"{key}\"]\nsettings = {{ mode = \"misuse-key\", handle = \"{key}\" }}\n[profiles.misuse-{key}]\nbackend = \"misuse-{key}\"\n"
        ));
    }
    let plugins = mixed_plugin_dir(dir.path());
    let daemon = start_in(dir.path(), |data| {
        config_text(data, &plugins, &extra).replace("workers = 4", "workers = 4\nmax_attempts = 1")
    });
    let api = daemon.client();
    let mut said = std::collections::BTreeMap::new();
    for key in ["local-ca", "pfx-password", "signer"] {
        let id = submit(&api, &format!("misuse-{key}"), key, json!({})).await;
        let job = wait_job(&api, &id, Duration::from_secs(60)).await;
        assert_eq!(job["state"], "failed", "{key}: {job}");
        said.insert(
            key,
            job["last_error"].as_str().unwrap_or_default().to_owned(),
        );
    }
    let ca = &said["local-ca"];
    assert!(
        ca.contains("sign: ") && ca.contains("not a TBSCertificate"),
        "{ca}"
    );
    assert!(
        ca.contains("decrypt: ") && ca.contains("a CA key never decrypts for a plugin"),
        "{ca}"
    );
    let pfx = &said["pfx-password"];
    assert!(pfx.contains("a pfx-password key only decrypts"), "{pfx}");
    assert!(
        !pfx.contains("refused to decrypt"),
        "a pfx-password key may decrypt: {pfx}"
    );
    let signer = &said["signer"];
    assert!(
        signer.contains("sign: done"),
        "a signing key signs: {signer}"
    );
    assert!(signer.contains("a signing key only signs"), "{signer}");

    let log = std::fs::read_to_string(&daemon.log).unwrap();
    for (key, op) in [
        ("local-ca", "decrypt"),
        ("pfx-password", "sign"),
        ("signer", "decrypt"),
    ] {
        assert!(
            log.lines().any(
                |l| l.contains(&format!("key role: refused to {op} with key {key}"))
                    && l.contains("sandbox-probe 0.")
            ),
            "{key} {op}: {log}"
        );
    }
}
