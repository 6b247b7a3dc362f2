//! `crypto.fips = true`: a FIPS build starts, reports the module active and self-tested, issues
//! with approved algorithms and refuses the rest by name; any other build refuses to start.
//! `scripts/test` runs this file in both builds.

use crate::common;

use std::process::Command;

use common::*;

#[test]
fn fips_policy_runs_only_on_the_fips_module() {
    let dir = tempfile::tempdir().unwrap();
    let extra =
        "[profiles.legacy]\nbackend = \"local\"\npfx_format = \"compat\"\n[crypto]\nfips = true\n";
    let config = write_config(dir.path(), extra);

    if !cfg!(feature = "fips") {
        let out = Command::new(binary())
            .args(["serve", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("cargo feature `fips`"), "{stderr}");
        return;
    }

    let daemon = Daemon::start(&config, &dir.path().join("daemon.log"));
    let status = String::from_utf8_lossy(&daemon.cli(&["status"]).stdout).into_owned();
    assert!(
        status.contains("FIPS: policy on, module built yes, active yes, self-test passed"),
        "{status}"
    );

    let pfx = dir.path().join("fips.pfx");
    let password = issue_pfx(&daemon, "smime", "CN=FIPS", &pfx);
    openssl_pkcs12_info(&pfx, &password);

    let out = daemon.cli(&[
        "submit",
        "issue",
        "--profile",
        "legacy",
        "--subject",
        "CN=Old",
        "--out",
        dir.path().join("old.pfx").to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a 3DES PFX was written in FIPS mode");
    assert!(
        stderr.contains("3DES-CBC is refused by the algorithm policy: not FIPS-approved"),
        "{stderr}"
    );
}
