//! Who may put a plugin in front of a key. A backend granted a CA key can ask custody to sign
//! with it, so whoever can replace its `.wasm` holds as much power as the key itself. A plugin
//! file is loaded only when the plugin directory and the file are owned by certconn's user (or
//! root) and writable by no one else — the checks sshd's StrictModes makes — and a symbolic link
//! may lead only to another file in the same directory, checked the same way.
//!
//! The rules for trusted files live in [`crate::files`]; this module applies them to the plugin
//! directory, for the registry (each load and rescan) and for `check-config`.

use std::path::Path;

use crate::files;

/// Checks that the plugin file at `path` in directory `dir` was placed by a trusted hand.
/// `Ok(())` for a missing file: whether it exists is the loader's question, not this one's.
/// The error is a sentence an administrator can act on (it names the path and the fix).
pub fn check(dir: &Path, path: &Path) -> Result<(), String> {
    files::check_trusted_dir(dir).map_err(|e| e.to_string())?;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    if !meta.file_type().is_symlink() {
        return files::check_trusted_file(path).map_err(|e| e.to_string());
    }
    let target = std::fs::canonicalize(path).map_err(|e| {
        format!(
            "{} is a symbolic link that leads nowhere: {e}",
            path.display()
        )
    })?;
    let home = std::fs::canonicalize(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if target.parent() != Some(home.as_path()) {
        return Err(format!(
            "{} is a symbolic link to {}, outside the plugin directory; certconn loads only plugins placed in {} (copy the file there instead)",
            path.display(),
            target.display(),
            dir.display()
        ));
    }
    files::check_trusted_file(&target).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn only_a_file_no_one_else_can_change_is_trusted() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("plugins");
        std::fs::create_dir(&dir).unwrap();
        chmod(&dir, 0o755);
        let file = dir.join("local-ca.wasm");
        std::fs::write(&file, b"\0asm").unwrap();
        chmod(&file, 0o644);
        check(&dir, &file).unwrap();
        check(&dir, &dir.join("missing.wasm")).unwrap();

        chmod(&file, 0o666);
        let e = check(&dir, &file).unwrap_err();
        assert!(e.contains("0666") && e.contains("chmod go-w"), "{e}");
        chmod(&file, 0o664);
        assert!(check(&dir, &file).unwrap_err().contains("0664"));
        chmod(&file, 0o644);

        chmod(&dir, 0o777);
        let e = check(&dir, &file).unwrap_err();
        assert!(e.contains("0777") && e.contains("plugins"), "{e}");
        chmod(&dir, 0o755);

        // A link to a file beside it is checked as that file; a link out is refused.
        let sibling = dir.join("local-ca-0.2.wasm");
        std::fs::write(&sibling, b"\0asm").unwrap();
        chmod(&sibling, 0o644);
        let linked = dir.join("linked.wasm");
        std::os::unix::fs::symlink(&sibling, &linked).unwrap();
        check(&dir, &linked).unwrap();
        chmod(&sibling, 0o646);
        assert!(check(&dir, &linked).unwrap_err().contains("0646"));

        let outside = root.path().join("elsewhere.wasm");
        std::fs::write(&outside, b"\0asm").unwrap();
        chmod(&outside, 0o644);
        let out_link = dir.join("out.wasm");
        std::os::unix::fs::symlink(&outside, &out_link).unwrap();
        let e = check(&dir, &out_link).unwrap_err();
        assert!(e.contains("outside the plugin directory"), "{e}");

        let dangling = dir.join("dangling.wasm");
        std::os::unix::fs::symlink(root.path().join("gone"), &dangling).unwrap();
        assert!(check(&dir, &dangling)
            .unwrap_err()
            .contains("leads nowhere"));
    }

    #[test]
    fn a_file_owned_by_another_user_is_not_trusted() {
        // chown needs root; the CI runs as root, and a developer's run as another user checks
        // the same rule from the other side (root's files are trusted, others' are not).
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("plugins");
        std::fs::create_dir(&dir).unwrap();
        chmod(&dir, 0o755);
        let file = dir.join("local-ca.wasm");
        std::fs::write(&file, b"\0asm").unwrap();
        chmod(&file, 0o644);
        let nobody = 65534;
        if std::os::unix::fs::chown(&file, Some(nobody), None).is_err() {
            assert_ne!(own_uid(), 0, "root may chown");
            return;
        }
        let e = check(&dir, &file).unwrap_err();
        assert!(e.contains("owned by uid 65534"), "{e}");
    }

    fn own_uid() -> u32 {
        use std::os::unix::fs::MetadataExt;
        // The owner of a file this process just made is its effective uid.
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().metadata().unwrap().uid()
    }
}
