//! The conformance kit (`certconn plugin test`): the vendor template passes it against the
//! mock CA, local-ca passes with the warning it deserves, and a broken plugin fails it.

use crate::common;

use std::path::Path;
use std::process::Command;

use common::*;

fn kit(file: &Path, config: &Path, extra: &[&str]) -> (bool, String) {
    let out = Command::new(binary())
        .args(["plugin", "test"])
        .arg(file)
        .arg("--config")
        .arg(config)
        .args(extra)
        .output()
        .expect("run certconn plugin test");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn line<'a>(report: &'a str, check: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.get(8..).is_some_and(|rest| rest.starts_with(check)))
        .unwrap_or_else(|| panic!("no {check:?} line in\n{report}"))
}

#[test]
fn the_vendor_template_passes_the_kit_against_the_mock_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = MockCa::start(0);
    // The template's own kit.toml, pointed at this run's mock CA.
    let text = std::fs::read_to_string(repo_root().join("examples/vendor-template/kit.toml"))
        .unwrap()
        .replace("127.0.0.1:8700", &format!("127.0.0.1:{}", ca.port));
    let config = dir.path().join("kit.toml");
    std::fs::write(&config, text).unwrap();
    let (passed, report) = kit(
        &test_plugins().join("vendor-template.wasm"),
        &config,
        &["--pending-template", "manual"],
    );
    assert!(passed, "{report}");
    for check in [
        "package",
        "contract",
        "describe",
        "configure ",
        "configure: unknown setting",
        "configure: missing required",
        "configure: wrong types",
        "health",
        "issue ",
        "idempotent retry",
        "malformed request",
        "pending and poll",
        "poll: unknown token",
        "revoke ",
        "revoke: retry",
        "revoke: malformed serial",
    ] {
        let l = line(&report, check);
        assert!(l.starts_with("  PASS"), "{l}\n{report}");
    }
    assert!(
        report.contains("result: 16 passed, 0 warnings, 0 skipped, 0 failed"),
        "{report}"
    );
    // The kit's issue went through the CA (twice: the retry with the same job id got the same
    // certificate back), the pending one once.
    assert!(ca.stats()["issue_requests"].as_u64().unwrap() >= 3);
}

#[test]
fn local_ca_passes_and_is_told_it_does_not_deduplicate() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kit.toml");
    std::fs::write(
        &config,
        config_text(&dir.path().join("data"), &plugins(), ""),
    )
    .unwrap();
    let (passed, report) = kit(&plugins().join("local-ca.wasm"), &config, &[]);
    assert!(passed, "{report}");
    assert!(line(&report, "issue ").starts_with("  PASS"), "{report}");
    assert!(
        line(&report, "idempotent retry").starts_with("  WARN"),
        "local-ca issues again for the same job id, and the kit says so: {report}"
    );
    assert!(line(&report, "pending and poll").starts_with("  SKIP"));
    assert!(line(&report, "revoke ").starts_with("  PASS"));
    assert!(line(&report, "revoke: malformed serial").starts_with("  PASS"));
    assert!(
        line(&report, "configure: missing required").contains("ca_key"),
        "{report}"
    );
    // The kit made its own keys: the config's data directory was never created.
    assert!(!dir.path().join("data").exists());
}

#[test]
fn a_broken_backend_fails_the_kit() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kit.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"data\"\n[plugins]\ndir = \"{}\"\n[backends.probe]\nplugin = \"sandbox-probe\"\ntimeout_seconds = 2\nsettings = {{ mode = \"panic\" }}\n",
            test_plugins().display()
        ),
    )
    .unwrap();
    let (passed, report) = kit(&test_plugins().join("sandbox-probe.wasm"), &config, &[]);
    assert!(!passed, "{report}");
    // Its settings are checked well enough; it crashes on every request.
    assert!(
        line(&report, "configure: unknown setting").starts_with("  PASS"),
        "{report}"
    );
    assert!(line(&report, "issue ").starts_with("  FAIL"), "{report}");
    assert!(
        line(&report, "malformed request").starts_with("  FAIL"),
        "{report}"
    );
    assert!(
        line(&report, "issue ").contains("panicked on purpose"),
        "{report}"
    );
    assert!(report.contains("conformance check(s) failed"), "{report}");

    // A plugin for a contract this host does not run fails at the contract check.
    let (passed, report) = kit(
        &test_plugins().join("contract-future.wasm"),
        &config,
        &["--backend", "probe"],
    );
    assert!(!passed);
    assert!(
        line(&report, "contract").starts_with("  FAIL") && report.contains("certconn:plugin@1.0.0"),
        "{report}"
    );
}
