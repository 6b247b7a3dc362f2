//! The data directory: made private (0700), locked by one process at a time, and holding this
//! instance's identity.

use std::path::{Path, PathBuf};

use crate::files::{self, FileError};

/// Why the data directory cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataDirError {
    #[error("data directory")]
    File(#[from] FileError),
    #[error("data directory {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "data directory {path} is in use by another certconn process (serve, or a keys command); \
         stop it first"
    )]
    Locked { path: PathBuf },
    #[error("{path} does not hold an instance id")]
    BadInstanceId { path: PathBuf },
}

/// Creates the data directory (0700), checks nobody else may write it, and takes its exclusive
/// lock, held for the life of the returned file. One process at a time owns a data directory:
/// the daemon, or an offline administrative command such as `certconn keys`.
pub fn lock(dir: &Path) -> Result<std::fs::File, DataDirError> {
    files::private_dir(dir)?;
    let path = dir.join("certconn.lock");
    let io = |source| DataDirError::Io {
        path: path.clone(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(DataDirError::Locked {
            path: dir.to_owned(),
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(io(source)),
    }
}

/// This instance's identity: random, made at first start and kept in `instance-id`. Leases in
/// a shared journal are held in its name, so a restart takes back exactly what it held.
pub fn instance_id(dir: &Path) -> Result<String, DataDirError> {
    let path = dir.join("instance-id");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(DataDirError::BadInstanceId { path });
            }
            Ok(id.to_owned())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = crate::crypto::provider::random_vec(16)
                .map(hex::encode)
                .map_err(|e| DataDirError::Io {
                    path: path.clone(),
                    source: std::io::Error::other(e),
                })?;
            files::write_atomic(&path, id.as_bytes(), 0o600)?;
            Ok(id)
        }
        Err(source) => Err(DataDirError::Io { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_lock_at_a_time_and_a_stable_instance_id() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let held = lock(&data).unwrap();
        assert!(matches!(lock(&data), Err(DataDirError::Locked { .. })));
        drop(held);
        lock(&data).unwrap();
        let id = instance_id(&data).unwrap();
        assert_eq!(id.len(), 32);
        assert_eq!(instance_id(&data).unwrap(), id);
    }
}
