//! SoftHSM2, the software token: what it needs of the process that loads it, and the
//! throwaway tokens the bench and the tests make.
//!
//! SoftHSM2 keeps each token as a directory of files under the `directories.tokendir` its
//! configuration file names, and meets every file it may not read or write in the same way: a
//! token that is not there, or `CKR_GENERAL_ERROR` ("Some horrible, unrecoverable error has
//! occurred"). Under a service account and the packaged unit's read-only file system that is
//! what an administrator first sees, so when the module is SoftHSM2 the errors of
//! [`super::pkcs11`] say what this process may not read or write, and who may.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::files;

/// Where Debian's softhsm2 package installs the module.
pub const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// The configuration a SoftHSM2 module reads when nothing else names one, when its file does
/// not say (Debian's build).
const DEBIAN_CONF: &str = "/etc/softhsm/softhsm2.conf";

/// A user's own configuration, under `$HOME`, which SoftHSM2 2.6 and later read before the
/// built-in one when it can be opened.
const USER_CONF: &str = ".config/softhsm2/softhsm2.conf";

/// Whether `module` is SoftHSM2's library, by its file name.
pub fn is_module(module: &Path) -> bool {
    module
        .file_name()
        .is_some_and(|n| n.to_string_lossy().to_lowercase().contains("softhsm"))
}

/// The configuration file `module` reads in this process, and how it came to be that one.
fn conf(module: &Path) -> (PathBuf, String) {
    conf_for(
        module,
        std::env::var_os("SOFTHSM2_CONF"),
        std::env::var_os("HOME"),
    )
}

/// SoftHSM2's own choice, given the values of `SOFTHSM2_CONF` and `HOME`: the variable, else
/// the user's own configuration when the module knows of one and it can be opened, else the
/// path built into the module (`DEFAULT_SOFTHSM2_CONF`, which each distribution sets: Debian's
/// `/etc/softhsm/softhsm2.conf`, Fedora's `/etc/softhsm2.conf`), read from the module's file.
fn conf_for(
    module: &Path,
    softhsm2_conf: Option<OsString>,
    home: Option<OsString>,
) -> (PathBuf, String) {
    if let Some(v) = softhsm2_conf {
        let path = PathBuf::from(v);
        let how = format!("SOFTHSM2_CONF names {}", path.display());
        return (path, how);
    }
    let code = std::fs::read(module).unwrap_or_default();
    if let Some(home) = home.filter(|_| contains(&code, USER_CONF.as_bytes())) {
        let path = Path::new(&home).join(USER_CONF);
        if std::fs::File::open(&path).is_ok() {
            let how = format!(
                "SOFTHSM2_CONF is not set, and this user's own {} can be read",
                path.display()
            );
            return (path, how);
        }
    }
    let (path, whose) = match built_in_conf(&code) {
        Some(path) => (path, "the module's built-in"),
        None => (PathBuf::from(DEBIAN_CONF), "Debian's"),
    };
    let how = format!(
        "SOFTHSM2_CONF is not set, so {whose} {} is used",
        path.display()
    );
    (path, how)
}

/// The configuration path built into a SoftHSM2 module's code: the absolute path among its
/// strings that ends in `/softhsm2.conf`.
fn built_in_conf(code: &[u8]) -> Option<PathBuf> {
    code.split(|&b| b == 0)
        .filter(|s| s.starts_with(b"/") && s.ends_with(b"/softhsm2.conf"))
        .filter_map(|s| std::str::from_utf8(s).ok())
        .find(|s| s.chars().all(|c| c.is_ascii_graphic()))
        .map(PathBuf::from)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
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

/// How the user certconn runs as (`user`) may come to read `path` (a file, or with `dir` a
/// directory to list): through the group that owns what stands in the way
/// ([`files::in_the_way`]: `path`, or a directory above it this process may not enter), when
/// that group may pass (Debian's package gives its configuration, its directory and the token
/// directory to group `softhsm`), or by permissions.
fn read_access_fix(path: &Path, dir: bool, user: &str) -> String {
    use std::os::unix::fs::MetadataExt;
    if let Ok((found, meta)) = files::in_the_way(path) {
        let needs = if dir || found != path { 0o050 } else { 0o040 };
        if meta.mode() & needs == needs && meta.gid() != 0 {
            let group = files::group_name(meta.gid());
            return format!(
                "add that user to group {group}, which may read it (`usermod -aG {group} \
                 {user}`), and restart certconn"
            );
        }
    }
    format!("give it access to {}", path.display())
}

/// The token directory, read from the configuration `module` reads, with how that
/// configuration was chosen; or what keeps this process from knowing it, as a sentence for an
/// error.
fn read_token_dir(module: &Path) -> Result<(PathBuf, String), String> {
    let (conf, how) = conf(module);
    let text = std::fs::read_to_string(&conf).map_err(|e| {
        let user = this_user();
        format!(
            "SoftHSM2 cannot read its configuration {} ({how}): {e} ({}); the user certconn \
             runs as ({user}) must be able to read it: {}",
            conf.display(),
            files::describe_access(&conf),
            read_access_fix(&conf, false, &user)
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
pub fn why_no_token(module: &Path) -> String {
    let (dir, how) = match read_token_dir(module) {
        Ok(found) => found,
        Err(why) => return format!(" ({why})"),
    };
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) => {
            let user = this_user();
            return format!(
                " (SoftHSM2's token directory {} cannot be read by this process: {e} ({}); the \
                 user certconn runs as ({user}) must be able to read it: {})",
                dir.display(),
                files::describe_access(&dir),
                read_access_fix(&dir, true, &user)
            );
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
pub fn why_not_stored(module: &Path) -> Option<String> {
    let (dir, _) = read_token_dir(module).ok()?;
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

    /// A module's file, as far as the lookups read it: code, then the strings they look for.
    fn module_with(dir: &Path, strings: &[&str]) -> PathBuf {
        let mut code = b"\x7fELF\x02\x01\x01\0/lib64/ld-linux-x86-64.so.2\0".to_vec();
        for s in strings {
            code.extend_from_slice(s.as_bytes());
            code.push(0);
        }
        let module = dir.join("libsofthsm2.so");
        std::fs::write(&module, code).unwrap();
        module
    }

    #[test]
    fn the_configuration_is_the_one_the_module_would_read() {
        let dir = tempfile::tempdir().unwrap();
        let fedora = module_with(
            dir.path(),
            &[
                "SOFTHSM2_CONF",
                "/etc/softhsm2.conf",
                "%s/.config/softhsm2/softhsm2.conf",
            ],
        );
        let home = dir.path().join("home");
        let named = Some(OsString::from("/srv/hsm/softhsm2.conf"));
        let (conf, how) = conf_for(&fedora, named, Some(home.clone().into()));
        assert_eq!(conf, Path::new("/srv/hsm/softhsm2.conf"));
        assert!(how.starts_with("SOFTHSM2_CONF names"), "{how}");
        // No configuration of the user's own: the one built into the module, Fedora's here.
        let (conf, how) = conf_for(&fedora, None, Some(home.clone().into()));
        assert_eq!(conf, Path::new("/etc/softhsm2.conf"));
        assert!(
            how.contains("the module's built-in /etc/softhsm2.conf"),
            "{how}"
        );
        // One the user can open comes first, with a module that knows of it (2.6 and later).
        let own = home.join(USER_CONF);
        std::fs::create_dir_all(own.parent().unwrap()).unwrap();
        std::fs::write(&own, "directories.tokendir = /tmp\n").unwrap();
        let (conf, how) = conf_for(&fedora, None, Some(home.clone().into()));
        assert_eq!(conf, own);
        assert!(how.contains("this user's own"), "{how}");
        assert_eq!(
            conf_for(&fedora, None, None).0,
            Path::new("/etc/softhsm2.conf")
        );
        let older = module_with(dir.path(), &["/usr/local/etc/softhsm2.conf"]);
        assert_eq!(
            conf_for(&older, None, Some(home.into())).0,
            Path::new("/usr/local/etc/softhsm2.conf")
        );
        // A file that says nothing: Debian's.
        let (conf, how) = conf_for(&dir.path().join("missing.so"), None, None);
        assert_eq!(conf, Path::new(DEBIAN_CONF));
        assert!(how.contains("Debian's"), "{how}");
    }

    /// The module the tests load (Debian's package, which `scripts/install-deps --test`
    /// installs) names its configuration as the lookup expects.
    #[test]
    fn the_installed_module_names_debians_configuration_and_the_users_own() {
        let code = std::fs::read(MODULE)
            .unwrap_or_else(|e| panic!("{MODULE}: {e} (scripts/install-deps --test installs it)"));
        assert_eq!(built_in_conf(&code), Some(PathBuf::from(DEBIAN_CONF)));
        assert!(contains(&code, USER_CONF.as_bytes()));
    }

    #[test]
    fn access_is_given_through_the_group_that_may_read() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("softhsm2.conf");
        std::fs::write(&file, "").unwrap();
        let gid = |file: &Path| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(file).unwrap().gid()
        };
        if gid(&file) == 0 {
            // Root's group is no fix: the file is given to another (tests run as root in CI).
            std::os::unix::fs::chown(&file, None, Some(1)).unwrap();
        }
        let group = files::group_name(gid(&file));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(
            read_access_fix(&file, false, "certconn"),
            format!(
                "add that user to group {group}, which may read it (`usermod -aG {group} \
                 certconn`), and restart certconn"
            )
        );
        // As a directory it must also be searchable by the group; it is not.
        assert!(read_access_fix(&file, true, "certconn").starts_with("give it access to"));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            read_access_fix(&file, false, "certconn"),
            format!("give it access to {}", file.display())
        );
        // A file that is not there is not a group's to give.
        let missing = dir.path().join("missing.conf");
        assert!(read_access_fix(&missing, false, "certconn").starts_with("give it access to"));
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
