//! The API bearer token: 256 random bits, hex, in a file only its owner can read. Its mode and
//! owner are checked before a byte of it is read ([`crate::files::read_protected`]).

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::crypto::provider;
use crate::files::{self, FileError};

/// Why the API token could not be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    #[error("the API token {path}")]
    File {
        path: PathBuf,
        #[source]
        source: FileError,
    },
    #[error("creating the API token {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: the API token is not text of at least 32 characters")]
    Short { path: PathBuf },
    #[error("a random API token")]
    Random(#[source] crate::crypto::CryptoError),
    /// No token file: the daemon makes it at its first start.
    #[error("reading the API token {path} (is the daemon started with this config?)")]
    Missing {
        path: PathBuf,
        #[source]
        source: FileError,
    },
    /// A token file that is there but refused (its owner, its mode) or unreadable.
    #[error("reading the API token {path}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: FileError,
    },
}

fn parse(path: &Path, bytes: &[u8]) -> Result<Zeroizing<String>, TokenError> {
    let token = std::str::from_utf8(bytes)
        .map(|t| Zeroizing::new(t.trim().to_owned()))
        .map_err(|_| TokenError::Short {
            path: path.to_owned(),
        })?;
    if token.len() < 32 {
        return Err(TokenError::Short {
            path: path.to_owned(),
        });
    }
    Ok(token)
}

/// Reads the token at `path`, creating it (mode 0600) if it does not exist.
pub fn load_or_create(path: &Path) -> Result<Zeroizing<String>, TokenError> {
    match files::read_protected(path) {
        Ok(bytes) => parse(path, &bytes),
        Err(FileError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            let token = Zeroizing::new(hex::encode(
                provider::random_vec(32).map_err(TokenError::Random)?,
            ));
            let create = |source| TokenError::Create {
                path: path.to_owned(),
                source,
            };
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir).map_err(create)?;
            }
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(create)?;
            f.write_all(token.as_bytes()).map_err(create)?;
            f.sync_all().map_err(create)?;
            Ok(token)
        }
        Err(source) => Err(TokenError::File {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Reads an existing token (for clients).
pub fn read(path: &Path) -> Result<Zeroizing<String>, TokenError> {
    let bytes = files::read_protected(path).map_err(|source| {
        let path = path.to_owned();
        match &source {
            FileError::Io { source: e, .. } if e.kind() == std::io::ErrorKind::NotFound => {
                TokenError::Missing { path, source }
            }
            _ => TokenError::Unreadable { path, source },
        }
    })?;
    parse(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn only_a_missing_token_asks_whether_the_daemon_started() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api-token");
        let missing = crate::report::chain(&read(&path).unwrap_err());
        assert!(missing.contains("is the daemon started"), "{missing}");
        load_or_create(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let refused = crate::report::chain(&read(&path).unwrap_err());
        assert!(refused.contains("chmod 600"), "{refused}");
        assert!(!refused.contains("is the daemon started"), "{refused}");
    }

    #[test]
    fn a_readable_token_is_refused_before_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api-token");
        let token = load_or_create(&path).unwrap();
        assert_eq!(load_or_create(&path).unwrap(), token);
        assert_eq!(read(&path).unwrap(), token);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let e = crate::report::chain(&load_or_create(&path).unwrap_err());
        assert!(e.contains("chmod 600"), "{e}");
        assert!(
            !e.contains(token.as_str()),
            "the token leaked into the error"
        );
    }
}
