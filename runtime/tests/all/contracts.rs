//! Contract evolution: the host runs a backend built against `certconn:plugin@0.1.0` (without the
//! SDK) beside ones built against 0.2.0, and refuses one built for a contract it does not run,
//! naming both versions.

use crate::common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_of_both_contract_lines_issue_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = plugin_dir_with(
        dir.path(),
        &[
            (plugins().join("local-ca.wasm"), "local-ca"),
            (test_plugins().join("contract-v0-1.wasm"), "contract-v0-1"),
            (
                test_plugins().join("contract-future.wasm"),
                "contract-future",
            ),
        ],
    );
    let extra = r#"
[backends.legacy]
plugin = "contract-v0-1"
keys = ["local-ca"]
settings = { ca_key = "local-ca" }
[profiles.legacy]
backend = "legacy"
[backends.future]
plugin = "contract-future"
[profiles.future]
backend = "future"
fallbacks = ["local"]
"#;
    let daemon = start_in(dir.path(), |data| config_text(data, &plugins, extra));
    let api = daemon.client();

    let legacy = backend_status(&api, "legacy").await;
    assert_eq!(legacy["state"], "serving", "{legacy}");
    assert_eq!(legacy["contract"], "0.1.0");
    assert_eq!(backend_status(&api, "local").await["contract"], "0.2.0");

    // The future plugin is refused, with both versions named; the daemon serves the rest.
    let future = backend_status(&api, "future").await;
    assert_eq!(future["state"], "not-loaded", "{future}");
    let why = future["problem"].as_str().unwrap_or_default();
    assert!(
        why.contains("certconn:plugin@1.0.0") && why.contains("0.2.x and 0.1.x"),
        "{why}"
    );

    for (profile, version) in [
        ("legacy", "contract-v0-1 0.1.4"),
        ("smime", "local-ca 0.1.0"),
        ("future", "local-ca 0.1.0"),
    ] {
        let id = submit(&api, profile, &format!("contract-{profile}"), json!({})).await;
        let job = wait_job(&api, &id, Duration::from_secs(30)).await;
        assert_eq!(job["state"], "succeeded", "{profile}: {job}");
        let result = job_result(&api, &id).await;
        assert!(
            result["backend_version"]
                .as_str()
                .is_some_and(|v| v.starts_with(version)),
            "{profile}: {result}"
        );
        // openssl accepts what the 0.1 backend issued through the host's custody.
        let cert = dir.path().join(format!("{profile}.pem"));
        let chain = dir.path().join(format!("{profile}-chain.pem"));
        std::fs::write(&cert, result["certificate_pem"].as_str().unwrap()).unwrap();
        std::fs::write(&chain, result["chain_pem"].as_str().unwrap()).unwrap();
        let verified = run_ok(
            std::process::Command::new("openssl")
                .args(["verify", "-CAfile"])
                .arg(&chain)
                .arg(&cert),
        );
        assert!(verified.contains(": OK"), "{profile}: {verified}");
    }
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    assert!(log.contains("issued by a certconn:plugin@0.1.0 backend"));
}

/// `certconn plugins inspect` of a test plugin: whether it succeeded, and what it printed (both
/// streams).
fn inspect(test_plugin: &str) -> (bool, String) {
    let out = std::process::Command::new(binary())
        .args(["plugins", "inspect"])
        .arg(test_plugins().join(test_plugin))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn inspect_refuses_an_unsupported_contract_naming_both_versions() {
    let (ran, text) = inspect("contract-future.wasm");
    assert!(!ran, "{text}");
    assert!(
        text.contains("built for certconn:plugin@1.0.0")
            && text.contains("it runs 0.2.x and 0.1.x"),
        "{text}"
    );
    let out = std::process::Command::new(binary())
        .args(["plugins", "inspect"])
        .arg(test_plugins().join("contract-v0-1.wasm"))
        .output()
        .unwrap();
    let text = ok(out);
    assert!(
        text.contains("certconn:plugin@0.1.0 (manifest 0.1.0): runs on this certconn"),
        "{text}"
    );
}

/// The host calls a backend's functions without checking their types at each call (see
/// `plugins::bindings::BackendPre`), so a component whose export has the contract's version
/// and names but other types must be refused when it is loaded, the function named.
#[test]
fn a_backend_whose_functions_have_other_types_is_refused_before_any_call() {
    let (ran, text) = inspect("contract-mistyped.wasm");
    assert!(!ran, "{text}");
    assert!(
        text.contains("does not match certconn:plugin@0.2.0")
            && text.contains("its function `describe` has another type"),
        "{text}"
    );
    assert!(!text.contains("describe   "), "it was called: {text}");
}
