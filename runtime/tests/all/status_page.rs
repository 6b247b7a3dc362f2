//! The status page in a real browser: Debian's Chromium driven by Playwright
//! (`runtime/tests/browser/status-page.mjs`) on a phone-sized screen. It must show the version,
//! a failing backend, a dead-lettered job with its reason and a retry that works, and an SCEP
//! RA certificate about to expire; the token must stay out of the HTML, the URL and lasting
//! storage. A screenshot is kept in `<target>/test-artifacts/status-page.png`.

use crate::common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn artifacts_dir() -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Signs in to the status page of `daemon` with `token` in Chromium (the page shown once
/// `wait_for` is on it), retries the first failed job it lists, and returns what it saw.
fn browse(daemon: &Daemon, token: &str, screenshot: &std::path::Path, wait_for: &str) -> Value {
    let _ = std::fs::remove_file(screenshot);
    let out = Command::new("node")
        .arg(repo_root().join("runtime/tests/browser/status-page.mjs"))
        .arg(format!("http://127.0.0.1:{}", daemon.port))
        .arg(token)
        .arg(screenshot)
        .arg(wait_for)
        .output()
        .expect("node runs (scripts/install-deps --test installs playwright-core)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the browser run failed: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("screenshot: {}", screenshot.display());
    serde_json::from_str(stdout.trim()).expect("the script's JSON")
}

/// The row of `table` the browser saw whose text holds `needle`.
fn row(seen: &Value, table: &str, needle: &str) -> Value {
    seen[table]
        .as_array()
        .and_then(|rows| {
            rows.iter()
                .find(|r| r["text"].as_str().is_some_and(|t| t.contains(needle)))
        })
        .cloned()
        .unwrap_or_else(|| panic!("no {table} row with {needle:?}: {seen}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_what_needs_attention_and_retries_from_the_browser() {
    let dir = tempfile::tempdir().unwrap();
    // The CA's first issuance answers 503: with one attempt allowed, that job is dead-lettered;
    // its retry reaches the CA again and succeeds.
    let ca = MockCa::start_with(&["--port", "0", "--fail-first", "1"]);
    // A backend whose CA is not there: a port bound and let go, so nothing listens on it.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let plugin_dir = vendor_and_local_plugin_dir(dir.path());
    let challenge = dir.path().join("challenge");
    write_private(&challenge, "status-page-challenge\n");
    let down = format!(
        "[backends.down]\nplugin = \"vendor-template\"\nhttp = {{ allow = [\"127.0.0.1:{closed}\"] }}\n\
         [backends.down.settings]\nurl = \"http://127.0.0.1:{closed}\"\napi_key = \"demo-key\"\n"
    );
    // An RA valid for ten days: inside the three-week warning.
    let extra = format!(
        "{}{down}{}ra_validity_days = 10\n",
        ca.backend("example", ""),
        scep_section(&challenge)
    );
    let daemon = start_in(dir.path(), |data| {
        config_text(data, &plugin_dir, &extra).replace(
            "[jobs]\nworkers = 4",
            "[jobs]\nworkers = 4\nmax_attempts = 1",
        )
    });
    let api = daemon.client();
    let id = submit(&api, "example", "dead-one", json!({})).await;
    let job = wait_job(&api, &id, Duration::from_secs(60)).await;
    assert_eq!(job["state"], "dead", "{job}");

    let token = data_token(dir.path(), "api-token");
    let screenshot = artifacts_dir().join("status-page.png");
    let seen = browse(&daemon, &token, &screenshot, "dead-lettered");

    assert!(
        seen["version"]
            .as_str()
            .is_some_and(|v| v.contains(env!("CARGO_PKG_VERSION"))),
        "{seen}"
    );
    assert_eq!(seen["overall"], "needs attention", "{seen}");
    let row = |table: &str, needle: &str| row(&seen, table, needle);
    let failing = row("backends", "down (vendor-template)");
    assert_eq!(failing["class"], "bad", "{failing}");
    assert!(
        failing["text"].as_str().unwrap().contains("unhealthy"),
        "{failing}"
    );
    let dead = row("attention", &id);
    assert!(
        dead["text"]
            .as_str()
            .unwrap()
            .contains("dead-lettered after 1 attempts"),
        "{dead}"
    );
    // The sources of work: the API as it listens, and the SCEP server with its RA.
    let api_source = row("sources", "request API");
    assert!(
        api_source["text"]
            .as_str()
            .unwrap()
            .contains(&format!("http://127.0.0.1:{}", daemon.port)),
        "{api_source}"
    );
    let scep_source = row("sources", "SCEP server");
    assert!(
        scep_source["text"]
            .as_str()
            .unwrap()
            .contains("generation 1"),
        "{scep_source}"
    );
    let ra = row("certificates", "scep-ra");
    assert_eq!(ra["class"], "warning", "{ra}");
    assert!(ra["text"].as_str().unwrap().contains("renew soon"), "{ra}");

    // The retry from the page worked: the job runs again and succeeds at the CA.
    assert_eq!(seen["retried"], id.as_str(), "{seen}");
    assert!(
        seen["retry_result"]
            .as_str()
            .is_some_and(|r| r.contains("queued again")),
        "{seen}"
    );
    let job = wait_job(&api, &id, Duration::from_secs(60)).await;
    assert_eq!(job["state"], "succeeded", "{job}");

    // The token: in this tab's session storage and nowhere else.
    for place in [
        "token_in_html",
        "token_in_url",
        "token_in_local_storage",
        "token_in_cookies",
    ] {
        assert_eq!(seen[place], false, "{place}: {seen}");
    }
    assert_eq!(seen["token_in_session_storage"], true, "{seen}");
    assert_eq!(seen["new_session_signed_out"], true, "{seen}");
    assert_eq!(seen["errors"], json!([]), "the page logged errors: {seen}");
    let shot = std::fs::metadata(&screenshot).expect("the screenshot");
    assert!(shot.len() > 1000, "{} bytes", shot.len());
}

/// A CA whose CRL cannot be published: its row on the page says why and which CRL is still
/// served, and the page needs attention. Before, the same daemon shows the CA's CRL, all well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_a_crl_that_cannot_be_published() {
    let dir = tempfile::tempdir().unwrap();
    let publish = dir.path().join("publish");
    std::fs::create_dir(&publish).unwrap();
    let daemon = start_in(dir.path(), |data| {
        config_text(
            data,
            &plugins(),
            &format!(
                "[revocation]\ncrl_dir = \"{}\"\n[revocation.cas.local]\nkey = \"local-ca\"\n",
                publish.display()
            ),
        )
    });
    let token = data_token(dir.path(), "api-token");
    let serial_of = |name: &str| -> String {
        issue_pfx(
            &daemon,
            "smime",
            &format!("CN={name},O=Example"),
            &dir.path().join(format!("{name}.pfx")),
        );
        let db = rusqlite::Connection::open(dir.path().join("data/journal.sqlite")).unwrap();
        db.query_row(
            "SELECT serial FROM certificates ORDER BY rowid DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    let revoke = |serial: &str| {
        let out = daemon.cli(&["submit", "revoke", "--serial", serial]);
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let alice = serial_of("alice");
    let bob = serial_of("bob");
    revoke(&alice);

    let seen = browse(
        &daemon,
        &token,
        &artifacts_dir().join("status-page-revocation.png"),
        "1 revoked",
    );
    assert_eq!(seen["revocation_shown"], true, "{seen}");
    let ca = row(&seen, "revocation", "local (key local-ca)");
    assert_eq!(ca["class"], "", "{ca}");
    assert!(
        ca["text"].as_str().unwrap().contains("1 revoked")
            && ca["text"].as_str().unwrap().contains("delegated"),
        "{ca}"
    );
    assert_eq!(seen["overall"], "all well", "{seen}");

    // A ledger serial that is not hex (a hand edit): the next revocation's CRL cannot be made.
    let db = rusqlite::Connection::open(dir.path().join("data/journal.sqlite")).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    let changed = db
        .execute(
            "UPDATE certificates SET serial = 'a1-not-hex' WHERE serial = ?1",
            [&alice],
        )
        .unwrap();
    assert_eq!(changed, 1);
    revoke(&bob);
    let seen = browse(
        &daemon,
        &token,
        &artifacts_dir().join("status-page-revocation-failing.png"),
        "publishing fails",
    );
    let ca = row(&seen, "revocation", "local (key local-ca)");
    assert_eq!(ca["class"], "bad", "{ca}");
    let text = ca["text"].as_str().unwrap();
    assert!(
        text.contains("\"a1-not-hex\", whose serial is not hex digits")
            && text.contains("still served: CRL")
            && text.contains("1 revoked"),
        "{ca}"
    );
    assert_eq!(seen["overall"], "needs attention", "{seen}");
    assert_eq!(seen["errors"], json!([]), "the page logged errors: {seen}");
}

/// The read-only token reads `/v1/status` but cannot retry; the page shell holds no data and
/// forbids anything from elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_only_token_reads_the_status_and_nothing_more() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_default(dir.path());
    let read = std::fs::read_to_string(dir.path().join("data/api-read-token"))
        .unwrap()
        .trim()
        .to_owned();
    let curl = |args: &[&str]| -> String {
        let out = Command::new("curl")
            .args(["-sS", "-i"])
            .args(args)
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let base = format!("http://127.0.0.1:{}", daemon.port);
    let auth = format!("Authorization: Bearer {read}");
    let status = curl(&["-H", &auth, &format!("{base}/v1/status")]);
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(status.contains("\"certificates\""), "{status}");
    let retry = curl(&[
        "-X",
        "POST",
        "-H",
        &auth,
        &format!("{base}/v1/jobs/x/retry"),
    ]);
    assert!(retry.starts_with("HTTP/1.1 401"), "{retry}");
    let anonymous = curl(&[&format!("{base}/v1/status")]);
    assert!(anonymous.starts_with("HTTP/1.1 401"), "{anonymous}");
    let page = curl(&[&format!("{base}/status")]).to_lowercase();
    assert!(page.starts_with("http/1.1 200"), "{page}");
    assert!(
        page.contains("content-security-policy: default-src 'none'"),
        "{page}"
    );
    assert!(!page.contains(&read), "{page}");
}
