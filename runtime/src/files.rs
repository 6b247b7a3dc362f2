//! Files certconn trusts: secrets it reads, state it writes, code it loads.
//!
//! One place for the rules, so that every caller gets them the same way:
//! - a secret is read only after its mode and owner are checked on the *open* file (no window in
//!   which another file could be swapped in), and never through a symbolic link;
//! - state is written to a temporary name in the same directory, synced, renamed, and the
//!   directory synced, so a crash leaves the old file or the new one, never half of either;
//! - a directory whose files certconn executes or trusts (the compiled-plugin cache) must be
//!   owned by the daemon's user or root and writable by nobody else.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

/// Largest secret file read (a key-encryption key, a password, a token, a PIN).
pub const MAX_SECRET_FILE: u64 = 64 * 1024;

/// Why a file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: permissions {mode:04o} let other users read it; run `chmod 600 {path}` (and \
         check who may have read it)"
    )]
    Readable { path: PathBuf, mode: u32 },
    #[error("{path}: permissions {mode:04o} let other users change it; run `chmod go-w {path}`")]
    Writable { path: PathBuf, mode: u32 },
    #[error("{}", owner_refused(path, *owner, *expected))]
    Owner {
        path: PathBuf,
        owner: u32,
        expected: u32,
    },
    #[error("{path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error("{path} is a symbolic link; certconn does not follow links to secrets or code")]
    Symlink { path: PathBuf },
    #[error("{path} is {size} bytes; a secret file holds at most {MAX_SECRET_FILE}")]
    TooLarge { path: PathBuf, size: u64 },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
    move |source| {
        if source.raw_os_error() == Some(libc::ELOOP) {
            FileError::Symlink {
                path: path.to_owned(),
            }
        } else {
            FileError::Io {
                path: path.to_owned(),
                source,
            }
        }
    }
}

/// The effective user id of this process.
pub fn current_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The name of user `uid`, or its number when it has none: for messages that tell an
/// administrator which account must be given access to a file.
pub fn user_name(uid: u32) -> String {
    lookup_user(uid).unwrap_or_else(|| format!("uid {uid}"))
}

/// The name of group `gid`, or its number when it has none (see [`user_name`]).
pub fn group_name(gid: u32) -> String {
    account_name(|buf, len| {
        // SAFETY: an all-zero `group` is a valid value to be filled in.
        let mut entry: libc::group = unsafe { std::mem::zeroed() };
        let mut found = std::ptr::null_mut();
        // SAFETY: `entry`, `found` and `buf` (of `len` bytes) are valid for writes.
        let rc = unsafe { libc::getgrgid_r(gid, &mut entry, buf, len, &mut found) };
        if rc == 0 && !found.is_null() {
            entry.gr_name
        } else {
            std::ptr::null()
        }
    })
    .unwrap_or_else(|| format!("gid {gid}"))
}

/// The name of user `uid`, if the system has one.
fn lookup_user(uid: u32) -> Option<String> {
    account_name(|buf, len| {
        // SAFETY: an all-zero `passwd` is a valid value to be filled in.
        let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found = std::ptr::null_mut();
        // SAFETY: `entry`, `found` and `buf` (of `len` bytes) are valid for writes.
        let rc = unsafe { libc::getpwuid_r(uid, &mut entry, buf, len, &mut found) };
        if rc == 0 && !found.is_null() {
            entry.pw_name
        } else {
            std::ptr::null()
        }
    })
}

/// The name a `get*_r` lookup leaves in the buffer it is given: `lookup` fills the buffer and
/// returns a pointer to the NUL-terminated name in it, or null when there is none.
fn account_name(
    lookup: impl FnOnce(*mut libc::c_char, usize) -> *const libc::c_char,
) -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let name = lookup(buf.as_mut_ptr(), buf.len());
    // SAFETY: a name the lookup found is NUL-terminated and lies in `buf`, still alive here.
    (!name.is_null()).then(|| {
        unsafe { std::ffi::CStr::from_ptr(name) }
            .to_string_lossy()
            .into_owned()
    })
}

/// Who may use `path`, as `ls -l` would say it: "owner root, group softhsm, mode 0640". When
/// this process cannot even look at it, the same of the directory in the way, named:
/// "/etc/softhsm: owner root, group softhsm, mode 0750". For messages about a file this
/// process cannot read or write.
pub fn describe_access(path: &Path) -> String {
    let describe = |meta: fs::Metadata| {
        format!(
            "owner {}, group {}, mode {:04o}",
            user_name(meta.uid()),
            group_name(meta.gid()),
            meta.permissions().mode() & 0o7777
        )
    };
    match in_the_way(path) {
        Ok((found, meta)) if found == path => describe(meta),
        Ok((dir, meta)) => format!("{}: {}", dir.display(), describe(meta)),
        Err(e) => e.to_string(),
    }
}

/// What stands between this process and `path`: `path` itself with its metadata, or, when this
/// process may not even look at it, the nearest directory above it that it may look at (the
/// one whose permissions keep it out). Any other failure to look is returned.
pub fn in_the_way(path: &Path) -> std::io::Result<(&Path, fs::Metadata)> {
    match fs::metadata(path) {
        Ok(meta) => Ok((path, meta)),
        Err(e) if e.kind() != std::io::ErrorKind::PermissionDenied => Err(e),
        Err(e) => path
            .ancestors()
            .skip(1)
            .find_map(|dir| fs::metadata(dir).ok().map(|m| (dir, m)))
            .ok_or(e),
    }
}

/// Why a file of user `owner` is refused to a process of user `expected`, and the fix. Run as
/// root, the file is most often the service's own (its data directory, its API token), met
/// by an administrator's command: the fix is to run the command as that user, never to chown
/// the file to root, which takes it from the service.
fn owner_refused(path: &Path, owner: u32, expected: u32) -> String {
    let owner_name = lookup_user(owner);
    let named = |uid: u32, name: Option<&String>| match name {
        Some(n) => format!("uid {uid} ({n})"),
        None => format!("uid {uid}"),
    };
    if expected == 0 {
        let sudo_user = owner_name.clone().unwrap_or_else(|| format!("'#{owner}'"));
        format!(
            "{} is owned by {}, and certconn run as root trusts only root's files. If it is \
             the service's own (its data directory, its API token), run this command as that \
             user instead: `sudo -u {sudo_user} certconn …`, rather than chown it to root, \
             which would take it from the service; if it is not, chown it to root",
            path.display(),
            named(owner, owner_name.as_ref())
        )
    } else {
        format!(
            "{} is owned by {}, not by certconn's user ({}) or root; `chown` it to the user \
             certconn runs as",
            path.display(),
            named(owner, owner_name.as_ref()),
            named(expected, lookup_user(expected).as_ref())
        )
    }
}

/// Checks that `meta` belongs to this process's user (or root).
fn check_owner(path: &Path, meta: &fs::Metadata) -> Result<(), FileError> {
    let expected = current_uid();
    if meta.uid() == expected || meta.uid() == 0 {
        Ok(())
    } else {
        Err(FileError::Owner {
            path: path.to_owned(),
            owner: meta.uid(),
            expected,
        })
    }
}

/// Reads a file that holds a secret. Refused when it is a link, not a regular file, readable
/// or writable by other users, owned by another user, or larger than [`MAX_SECRET_FILE`].
/// The checks are made on the open file before a byte is read.
pub fn read_protected(path: &Path) -> Result<Zeroizing<Vec<u8>>, FileError> {
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io(path))?;
    let meta = file.metadata().map_err(io(path))?;
    if !meta.is_file() {
        return Err(FileError::NotAFile {
            path: path.to_owned(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(FileError::Readable {
            path: path.to_owned(),
            mode,
        });
    }
    check_owner(path, &meta)?;
    read_bounded(&mut file, path, meta.len())
}

/// Reads key material handed to certconn once, as an import: bounded and read into zeroized
/// memory like [`read_protected`], but without its checks of owner and mode, which are for
/// files certconn keeps reading (a key exported to be imported is often world-readable).
pub fn read_secret_once(path: &Path) -> Result<Zeroizing<Vec<u8>>, FileError> {
    let mut file = fs::File::open(path).map_err(io(path))?;
    let len = file.metadata().map_err(io(path))?.len();
    read_bounded(&mut file, path, len)
}

/// Reads at most [`MAX_SECRET_FILE`] bytes of an open file `len` bytes long into a buffer
/// sized before the read: a buffer grown while reading frees its smaller copies unzeroized.
/// A file over the limit, or one that grew past it while it was read, is refused.
fn read_bounded(
    file: &mut fs::File,
    path: &Path,
    len: u64,
) -> Result<Zeroizing<Vec<u8>>, FileError> {
    let too_large = |size| FileError::TooLarge {
        path: path.to_owned(),
        size,
    };
    if len > MAX_SECRET_FILE {
        return Err(too_large(len));
    }
    let mut bytes = Zeroizing::new(Vec::with_capacity(len as usize));
    Read::by_ref(file)
        .take(MAX_SECRET_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(io(path))?;
    if bytes.len() as u64 > MAX_SECRET_FILE {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// Whether this process may create files in directory `dir` ([`write_atomic`]'s temporary file
/// and rename), asked without writing anything (`access(W_OK)`), so that a check does not touch
/// a directory a running daemon watches. Also fails on a file system read-only to this process
/// (a systemd unit's `ProtectSystem=strict`) and for a directory that is not there.
pub fn check_writable_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `access` reads the NUL-terminated path and nothing else.
    if unsafe { libc::access(path.as_ptr(), libc::W_OK) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically with `mode`: a temporary file in the same directory,
/// synced, renamed over `path`, then the directory synced so the rename itself survives a
/// power loss.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FileError> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(io(&tmp))?;
        // The mode given to open() is filtered by the umask; the file must have exactly `mode`.
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        fs::rename(&tmp, path).map_err(io(path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    if let Some(dir) = dir {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
    }
    Ok(())
}

/// Removes a file that held a secret: its bytes are overwritten with zeros in place and synced
/// before it is unlinked, so the blocks it used do not keep the secret on a filesystem that
/// writes in place (a copy-on-write filesystem, a snapshot or a backup may still hold it). A
/// file that is already gone is not an error.
pub fn overwrite_and_remove(path: &Path) -> Result<(), FileError> {
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path);
    let mut file = match file {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(path)(e)),
    };
    let len = file.metadata().map_err(io(path))?.len();
    let zeros = [0u8; 4096];
    let mut left = len;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        file.write_all(&zeros[..n]).map_err(io(path))?;
        left -= n as u64;
    }
    file.sync_all().map_err(io(path))?;
    drop(file);
    fs::remove_file(path).map_err(io(path))
}

/// Creates `dir` (and its parents) with mode 0700 when missing, then checks it as
/// [`check_trusted_dir`] does.
pub fn private_dir(dir: &Path) -> Result<(), FileError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    check_trusted_dir(dir)
}

/// Checks a directory whose contents certconn trusts: a directory (not a link), owned by this
/// user or root, writable by nobody else.
pub fn check_trusted_dir(dir: &Path) -> Result<(), FileError> {
    let meta = fs::symlink_metadata(dir).map_err(io(dir))?;
    if meta.file_type().is_symlink() {
        return Err(FileError::Symlink {
            path: dir.to_owned(),
        });
    }
    check_not_writable_by_others(dir, &meta)
}

/// Checks a file whose contents certconn trusts (compiled code it maps and runs): a regular
/// file (not a link), owned by this user or root, writable by nobody else.
pub fn check_trusted_file(path: &Path) -> Result<(), FileError> {
    let meta = fs::symlink_metadata(path).map_err(io(path))?;
    if meta.file_type().is_symlink() {
        return Err(FileError::Symlink {
            path: path.to_owned(),
        });
    }
    if !meta.is_file() {
        return Err(FileError::NotAFile {
            path: path.to_owned(),
        });
    }
    check_not_writable_by_others(path, &meta)
}

fn check_not_writable_by_others(path: &Path, meta: &fs::Metadata) -> Result<(), FileError> {
    check_owner(path, meta)?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(FileError::Writable {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_on_the_services_files_is_told_to_run_as_its_user_not_to_chown_them() {
        let by_root = |owner| {
            FileError::Owner {
                path: "/var/lib/certconn/api-token".into(),
                owner,
                expected: 0,
            }
            .to_string()
        };
        let named = by_root(0);
        assert!(named.contains("owned by uid 0 (root)"), "{named}");
        assert!(named.contains("`sudo -u root certconn …`"), "{named}");
        // A uid without a name: `sudo -u` takes it as '#UID'.
        let unnamed = by_root(4_000_000_000);
        assert!(unnamed.contains("owned by uid 4000000000,"), "{unnamed}");
        assert!(
            unnamed.contains("`sudo -u '#4000000000' certconn …`"),
            "{unnamed}"
        );
        assert!(!unnamed.contains("`chown` it"), "{unnamed}");
        // Not root: the file goes to the user certconn runs as.
        let other = FileError::Owner {
            path: "/srv/token".into(),
            owner: 4_000_000_000,
            expected: 4_000_000_001,
        }
        .to_string();
        assert!(
            other.contains("not by certconn's user (uid 4000000001) or root; `chown` it"),
            "{other}"
        );
    }

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_removed_secret_leaves_zeros_behind_not_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        fs::write(&path, vec![0x5a; 10_000]).unwrap();
        // A second name for the same inode shows what the removal left in its blocks.
        let other = dir.path().join("other-name");
        fs::hard_link(&path, &other).unwrap();
        overwrite_and_remove(&path).unwrap();
        assert!(!path.exists());
        assert_eq!(fs::read(&other).unwrap(), vec![0u8; 10_000]);
        // Gone already: nothing to do. A link is not followed.
        overwrite_and_remove(&path).unwrap();
        std::os::unix::fs::symlink(&other, &path).unwrap();
        assert!(overwrite_and_remove(&path).is_err());
    }

    #[test]
    fn a_secret_is_read_only_when_nobody_else_can() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        fs::write(&path, b"s3cret\n").unwrap();
        chmod(&path, 0o644);
        let e = read_protected(&path).unwrap_err();
        assert!(matches!(e, FileError::Readable { mode: 0o644, .. }), "{e}");
        assert!(e.to_string().contains("chmod 600"), "{e}");
        chmod(&path, 0o600);
        assert_eq!(&read_protected(&path).unwrap()[..], b"s3cret\n");
        chmod(&path, 0o400);
        assert_eq!(&read_protected(&path).unwrap()[..], b"s3cret\n");
    }

    #[test]
    fn a_link_to_a_secret_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        fs::write(&target, b"x").unwrap();
        chmod(&target, 0o600);
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = read_protected(&link).unwrap_err();
        assert!(matches!(e, FileError::Symlink { .. }), "{e}");
    }

    #[test]
    fn a_huge_secret_is_refused_before_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        fs::write(&path, vec![b'a'; (MAX_SECRET_FILE + 1) as usize]).unwrap();
        chmod(&path, 0o600);
        assert!(matches!(
            read_protected(&path),
            Err(FileError::TooLarge { .. })
        ));
    }

    /// An import's key file is read whatever its mode, within the same bound.
    #[test]
    fn a_secret_read_once_skips_the_mode_check_but_not_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("exported.pem");
        fs::write(&path, b"key").unwrap();
        chmod(&path, 0o644);
        assert!(matches!(
            read_protected(&path),
            Err(FileError::Readable { .. })
        ));
        assert_eq!(&read_secret_once(&path).unwrap()[..], b"key");
        fs::write(&path, vec![b'a'; (MAX_SECRET_FILE + 1) as usize]).unwrap();
        assert!(matches!(
            read_secret_once(&path),
            Err(FileError::TooLarge { .. })
        ));
    }

    #[test]
    fn write_atomic_sets_the_mode_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomic(&path, b"one", 0o600).unwrap();
        write_atomic(&path, b"two", 0o640).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o640
        );
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
    }

    #[test]
    fn a_trusted_directory_must_not_be_writable_by_others() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        private_dir(&cache).unwrap();
        assert_eq!(
            fs::metadata(&cache).unwrap().permissions().mode() & 0o777,
            0o700
        );
        chmod(&cache, 0o777);
        let e = check_trusted_dir(&cache).unwrap_err();
        assert!(matches!(e, FileError::Writable { .. }), "{e}");
        let file = dir.path().join("code");
        fs::write(&file, b"x").unwrap();
        chmod(&file, 0o666);
        assert!(matches!(
            check_trusted_file(&file),
            Err(FileError::Writable { .. })
        ));
        chmod(&file, 0o644);
        check_trusted_file(&file).unwrap();
    }
}
