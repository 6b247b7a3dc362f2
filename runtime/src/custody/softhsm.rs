//! SoftHSM2, the software token: what it needs of the process that loads it, and the
//! throwaway tokens the bench and the tests make.
//!
//! SoftHSM2 keeps each token as a directory of files under the `directories.tokendir` its
//! configuration file names, and meets every file it may not read or write in the same way: a
//! token that is not there, or `CKR_GENERAL_ERROR` ("Some horrible, unrecoverable error has
//! occurred"). Under a service account and the packaged unit's read-only file system that is
//! what an administrator first sees, so when the module is SoftHSM2 the errors of
//! [`super::pkcs11`] say what this process may not read or write, and who may.

use std::path::{Path, PathBuf};

use crate::files;

/// Where Debian's softhsm2 package installs the module.
pub const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// The configuration SoftHSM2 reads when `SOFTHSM2_CONF` is not set (Debian's build).
const DEFAULT_CONF: &str = "/etc/softhsm/softhsm2.conf";

/// Whether `module` is SoftHSM2's library, by its file name.
pub fn is_module(module: &Path) -> bool {
    module
        .file_name()
        .is_some_and(|n| n.to_string_lossy().to_lowercase().contains("softhsm"))
}

/// The configuration file the module reads, and how it came to be that one.
fn conf() -> (PathBuf, String) {
    match std::env::var_os("SOFTHSM2_CONF") {
        Some(v) => {
            let path = PathBuf::from(v);
            let how = format!("SOFTHSM2_CONF names {}", path.display());
            (path, how)
        }
        None => (
            PathBuf::from(DEFAULT_CONF),
            format!("SOFTHSM2_CONF is not set, so {DEFAULT_CONF} is used"),
        ),
    }
}

/// The `directories.tokendir` of a SoftHSM2 configuration file's text.
fn token_dir(conf_text: &str) -> Option<PathBuf> {
    conf_text.lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        (!key.trim_start().starts_with('#') && key.trim() == "directories.tokendir")
            .then(|| PathBuf::from(value.trim()))
    })
}

/// The account this process runs as, named for the fix: the user who must be given access.
fn this_user() -> String {
    files::user_name(files::current_uid())
}

/// The token directory, read from the configuration, with how that configuration was chosen;
/// or what keeps this process from knowing it, as a sentence for an error.
fn read_token_dir() -> Result<(PathBuf, String), String> {
    let (conf, how) = conf();
    let text = std::fs::read_to_string(&conf).map_err(|e| {
        format!(
            "SoftHSM2 cannot read its configuration {} ({how}): {e} ({}); the user certconn \
             runs as ({user}) must be able to read it — on Debian, add it to group softhsm \
             (`usermod -aG softhsm {user}`) and restart certconn",
            conf.display(),
            files::describe_access(&conf),
            user = this_user()
        )
    })?;
    match token_dir(&text) {
        Some(dir) => Ok((dir, how)),
        None => Err(format!(
            "{} ({how}) sets no directories.tokendir",
            conf.display()
        )),
    }
}

/// Why SoftHSM2 shows this process no token, or fails to initialise: its configuration or
/// token directory unreadable, or tokens made by another user. A sentence to append to the
/// error (starting with a space); when nothing is wrong with the files, where they are, since
/// a process that reads another configuration than the one the token was made with sees
/// other tokens.
pub fn why_no_token() -> String {
    let (dir, how) = match read_token_dir() {
        Ok(found) => found,
        Err(why) => return format!(" ({why})"),
    };
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) => {
            return format!(
                " (SoftHSM2's token directory {} cannot be read by this process: {e} ({}); the \
                 user certconn runs as ({}) must be able to read it — on Debian, add it to group \
                 softhsm and restart certconn)",
                dir.display(),
                files::describe_access(&dir),
                this_user()
            )
        }
    };
    let unreadable: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .filter_map(|p| {
            std::fs::read_dir(&p)
                .err()
                .map(|e| format!("{} ({e}; {})", p.display(), files::describe_access(&p)))
        })
        .collect();
    if !unreadable.is_empty() {
        return format!(
            " (SoftHSM2 keeps each token in a directory of its own, and this process cannot \
             read {}: a token is seen only by users who can read its directory, so initialise \
             it as the user certconn runs as (`sudo -u {} softhsm2-util --init-token …`), or \
             give that user its directory)",
            unreadable.join(", "),
            this_user()
        );
    }
    format!(
        " (SoftHSM2 reads its tokens from {} ({how}); a token made with another \
         SOFTHSM2_CONF is not there: set the same one in certconn's environment, e.g. \
         Environment=SOFTHSM2_CONF=… in the unit)",
        dir.display()
    )
}

/// Why SoftHSM2 could not store a new object (a key made or moved onto the token): its token
/// directory, or the token's own, not writable by this process — the packaged unit's
/// read-only file system, or permissions. `None` when this process may write them.
pub fn why_not_stored() -> Option<String> {
    let (dir, _) = read_token_dir().ok()?;
    let mut dirs = vec![dir.clone()];
    dirs.extend(
        std::fs::read_dir(&dir)
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_dir()),
    );
    let (blocked, e) = dirs
        .into_iter()
        .find_map(|d| files::check_writable_dir(&d).err().map(|e| (d, e)))?;
    Some(format!(
        " (SoftHSM2 stores a key as files in its token directory, and this process cannot \
         write {}: {e} ({}). Under the packaged unit the file system is read-only but for \
         certconn's state (ProtectSystem=strict): add `ReadWritePaths={}` in a drop-in \
         (`systemctl edit certconn`), or make the key before the service starts, as its user \
         (`sudo -u {} certconn keys create NAME --store pkcs11`); signing with a key already \
         on the token needs no write)",
        blocked.display(),
        files::describe_access(&blocked),
        dir.display(),
        this_user()
    ))
}

/// A throwaway SoftHSM2 token for `bench --pkcs11 softhsm` and the tests: a config and token
/// directory in `dir`, one token labelled `label` with user PIN `pin`, and a 0600 file holding
/// the PIN (for `pin_file`). Returns the paths of the config (for `SOFTHSM2_CONF`) and the PIN
/// file. Needs `softhsm2-util`.
pub fn throwaway_token(dir: &Path, label: &str, pin: &str) -> Result<(PathBuf, PathBuf), String> {
    use std::os::unix::fs::PermissionsExt;
    let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
    let tokens = dir.join("softhsm-tokens");
    std::fs::create_dir_all(&tokens).map_err(|e| io("creating the token directory", e))?;
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .map_err(|e| io("writing softhsm2.conf", e))?;
    let out = std::process::Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args([
            "--init-token",
            "--free",
            "--label",
            label,
            "--pin",
            pin,
            "--so-pin",
            pin,
        ])
        .output()
        .map_err(|e| io("running softhsm2-util (install the softhsm2 package)", e))?;
    if !out.status.success() {
        return Err(format!(
            "softhsm2-util --init-token: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let pin_file = dir.join("pkcs11.pin");
    std::fs::write(&pin_file, pin).map_err(|e| io("writing the PIN file", e))?;
    std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| io("protecting the PIN file", e))?;
    Ok((conf, pin_file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_directory_is_read_from_the_configuration() {
        let text = "# directories.tokendir = /nowhere\n\
                    directories.tokendir = /var/lib/softhsm/tokens/ \n\
                    objectstore.backend = file\n";
        assert_eq!(
            token_dir(text),
            Some(PathBuf::from("/var/lib/softhsm/tokens/"))
        );
        assert_eq!(token_dir("objectstore.backend = file\n"), None);
    }

    #[test]
    fn only_softhsm_is_taken_for_softhsm() {
        assert!(is_module(Path::new(MODULE)));
        assert!(is_module(Path::new("/opt/SoftHSM/lib/libsofthsm2.so")));
        assert!(!is_module(Path::new(
            "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so"
        )));
    }
}
