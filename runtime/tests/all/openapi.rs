//! The OpenAPI document: what a daemon with every part configured (SCEP server, revocation
//! publishing) serves at `/v1/openapi.json` is `docs/api/openapi.json`, and schemathesis
//! (`runtime/tests/schemathesis/`) run against that daemon finds no server error and no answer
//! the document does not describe.

use crate::common;

use std::path::Path;
use std::process::Command;

use common::*;

/// The checked-in document; `CERTCONN_UPDATE_OPENAPI=1` rewrites it from the daemon's.
fn checked_in() -> std::path::PathBuf {
    repo_root().join("docs/api/openapi.json")
}

/// A daemon with everything that serves HTTP turned on.
fn start_everything(dir: &Path) -> Daemon {
    let challenge = dir.join("challenge");
    write_private(&challenge, "openapi-challenge\n");
    std::fs::create_dir(dir.join("published")).unwrap();
    let extra = format!(
        "{}[revocation]\ncrl_dir = \"{}\"\n[revocation.cas.local]\nkey = \"local-ca\"\n",
        scep_section(&challenge),
        dir.join("published").display()
    );
    start_in(dir, |data| config_text(data, &plugins(), &extra))
}

fn served_document(daemon: &Daemon) -> serde_json::Value {
    // Without a token: the document describes the API, and holds nothing secret.
    let (status, body) = http_get(daemon.port, "/v1/openapi.json", None);
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("the document is JSON")
}

#[test]
fn the_served_document_is_the_one_in_the_docs() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_everything(dir.path());
    let served = served_document(&daemon);
    assert_eq!(served["openapi"], "3.1.0");
    assert_eq!(served["info"]["version"], env!("CARGO_PKG_VERSION"));
    for path in [
        "/v1/jobs/issue",
        "/scep",
        "/pki/{ca}/ocsp/{request}",
        "/metrics",
    ] {
        assert!(
            served["paths"].get(path).is_some(),
            "{path} is not in the document"
        );
    }
    if std::env::var_os("CERTCONN_UPDATE_OPENAPI").is_some() {
        let text = serde_json::to_string_pretty(&served).unwrap() + "\n";
        std::fs::write(checked_in(), text).unwrap();
    }
    let text = std::fs::read_to_string(checked_in()).expect("docs/api/openapi.json");
    let documented: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert!(
        documented == served,
        "docs/api/openapi.json is not what the daemon serves; regenerate it with \
         CERTCONN_UPDATE_OPENAPI=1 cargo test --release --test all -- openapi::the_served_document"
    );

    // A daemon without the SCEP server and revocation does not document their routes.
    let plain = tempfile::tempdir().unwrap();
    let daemon = start_default(plain.path());
    let served = served_document(&daemon);
    let paths = served["paths"].as_object().unwrap();
    assert!(paths.contains_key("/v1/jobs/issue"));
    assert!(
        !paths.keys().any(|p| p == "/scep" || p.starts_with("/pki/")),
        "{:?}",
        paths.keys().collect::<Vec<_>>()
    );
}

#[test]
fn schemathesis_finds_no_server_error_and_nothing_undocumented() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_everything(dir.path());
    let token = data_token(dir.path(), "api-token");
    let here = repo_root().join("runtime/tests/schemathesis");
    // A fixed seed and no example database: the same cases on every run, so the suite
    // cannot pass or fail by the luck of the draw. Change the seed by hand to explore.
    let out = Command::new("schemathesis")
        .arg("--config-file")
        .arg(here.join("schemathesis.toml"))
        .arg("run")
        .arg(format!("http://127.0.0.1:{}/v1/openapi.json", daemon.port))
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(["--max-examples", "100", "--seed", "20261203"])
        .args([
            "--generation-database",
            "none",
            "--workers",
            "1",
            "--no-color",
        ])
        .args(["--report", "junit", "--report-junit-path", "junit.xml"])
        .env("SCHEMATHESIS_HOOKS", "hooks")
        .env("PYTHONPATH", &here)
        .current_dir(dir.path())
        .output()
        .expect("schemathesis runs (scripts/install-deps --test installs it)");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It tested every operation the document lists (a run that tested nothing exits 0 too),
    // except the document itself, which schemathesis leaves alone.
    let junit = std::fs::read_to_string(dir.path().join("junit.xml")).expect("the JUnit report");
    let tested: std::collections::BTreeSet<&str> = junit
        .split("<testcase name=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .collect();
    let served = served_document(&daemon);
    for (path, item) in served["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let operation = format!("{} {path}", method.to_uppercase());
            if operation != "GET /v1/openapi.json" {
                assert!(
                    tested.contains(operation.as_str()),
                    "{operation} was not tested: {tested:?}"
                );
            }
        }
    }
    // Nothing it sent made the daemon panic or log an internal error.
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    assert!(!log.contains("panicked"), "{log}");
}

/// `docs/api/connector-protocol.schema.json`, read by Python's `jsonschema` (a validator a
/// vendor would use): what certconn and a service say is valid, and a bad item is not.
#[test]
fn the_connector_protocol_schema_takes_real_messages_and_refuses_bad_ones() {
    use certconn_connector::{
        Delivered, Heartbeat, HeartbeatAnswer, ItemResult, Outcome, VersionPolicy, WorkItem,
    };
    let item = |text: &str| serde_json::from_str::<WorkItem>(text).unwrap();
    let messages = serde_json::json!([
        ["WorkItem", item(r#"{"id":"w-1","kind":"issue","profile":"device","subject":"CN=d","sans":["dns:d.example"],"key_algorithm":"ec-p256","device_certificate":"-----BEGIN CERTIFICATE-----"}"#), true],
        ["WorkItem", item(r#"{"id":"w-2","kind":"import","pfx":"AA==","encrypted_password":"AA==","key_name":"pfx-password","user_principal_name":"a@example.com","intended_purpose":"smimeEncryption","device_certificate":"pem"}"#), true],
        ["WorkItem", item(r#"{"id":"w-3","kind":"revoke","serial":"01ab","reason":"superseded"}"#), true],
        ["WorkItem", {"id": "w-4", "kind": "revoke", "serial": "01", "colour": "blue"}, false],
        ["WorkItem", {"id": "w-5", "kind": "teleport"}, false],
        ["WorkItem", {"kind": "revoke", "serial": "01"}, false],
        ["ItemResult", ItemResult { item_id: "w-1".into(), outcome: Outcome::Succeeded(Delivered { serial: Some("01".into()), revoked: Some(true), ..Default::default() }) }, true],
        ["ItemResult", ItemResult { item_id: "w-2".into(), outcome: Outcome::Failed { reason: "no".into() } }, true],
        ["Heartbeat", Heartbeat { instance: "i".into(), version: "0.1.0".into(), protocol: 1, plugins: vec![], features: vec!["scep".into()], queue: [("queued".to_owned(), 2)].into(), health: "ok".into(), last_error: None, lifecycle: vec![] }, true],
        ["HeartbeatAnswer", HeartbeatAnswer { version_policy: VersionPolicy { latest: "0.2.0".into(), deprecated: vec![] } }, true],
    ]);
    let dir = tempfile::tempdir().unwrap();
    let cases = dir.path().join("cases.json");
    std::fs::write(&cases, messages.to_string()).unwrap();
    let script = r##"
import json, sys, jsonschema
schema = json.load(open(sys.argv[1]))
for name, message, valid in json.load(open(sys.argv[2])):
    check = {"$schema": schema["$schema"], "$defs": schema["$defs"], "$ref": "#/$defs/" + name}
    ok = jsonschema.Draft202012Validator(check).is_valid(message)
    print(("ok  " if ok == valid else "BAD ") + name + " " + json.dumps(message)[:80] + (" accepted" if ok else " refused"))
"##;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(repo_root().join("docs/api/connector-protocol.schema.json"))
        .arg(&cases)
        .output()
        .expect("python3 with jsonschema (installed with schemathesis)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        text.lines().filter(|l| l.starts_with("ok  ")).count(),
        10,
        "{text}"
    );
}
