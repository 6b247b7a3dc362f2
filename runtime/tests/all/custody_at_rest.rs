//! The software key store sealed at rest: the daemon runs with it, the files on disk are not
//! readable keys, and a wrong key-encryption key stops start-up without changing anything.

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::*;

#[test]
fn a_key_file_protected_store_serves_and_refuses_the_wrong_key() {
    let dir = tempfile::tempdir().unwrap();
    let kek = dir.path().join("kek.hex");
    std::fs::write(&kek, "11".repeat(32)).unwrap();
    std::fs::set_permissions(&kek, std::fs::Permissions::from_mode(0o600)).unwrap();
    let custody = format!(
        "[custody]\nprotection = \"key-file\"\nkey_file = \"{}\"\n",
        kek.display()
    );
    let mut daemon = start_in(dir.path(), |data| config_text(data, &plugins(), &custody));
    issue_pfx(&daemon, "smime", "CN=Sealed", &dir.path().join("s.pfx"));
    daemon.stop();

    let ca_key = dir.path().join("data/keys/local-ca.key");
    let readable = Command::new("openssl")
        .args(["pkey", "-inform", "DER", "-noout", "-in"])
        .arg(&ca_key)
        .output()
        .unwrap();
    assert!(
        !readable.status.success(),
        "the CA key on disk must not be a readable key"
    );

    // The wrong key-encryption key: start-up stops, names the problem, changes nothing.
    let before: Vec<(std::path::PathBuf, Vec<u8>)> =
        std::fs::read_dir(dir.path().join("data/keys"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| (p.clone(), std::fs::read(&p).unwrap()))
            .collect();
    std::fs::write(&kek, "22".repeat(32)).unwrap();
    let out = Command::new(binary())
        .args(["serve", "--config"])
        .arg(&daemon.config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("wrong key-encryption key") && stderr.contains("nothing was changed"),
        "{stderr}"
    );
    for (path, bytes) in before {
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "{} changed",
            path.display()
        );
    }
}
