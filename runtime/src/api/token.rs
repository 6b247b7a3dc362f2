//! The API bearer token: 256 random bits, hex, in a file only its owner can read.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use zeroize::Zeroizing;

use crate::crypto::provider;

/// Reads the token at `path`, creating it (mode 0600) if it does not exist.
pub fn load_or_create(path: &Path) -> Result<Zeroizing<String>, String> {
    match fs::read_to_string(path) {
        Ok(text) => {
            let mode = fs::metadata(path)
                .map_err(|e| format!("{}: {e}", path.display()))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(format!(
                    "{}: permissions {:o} let others read the API token; chmod 600 it",
                    path.display(),
                    mode & 0o777
                ));
            }
            let token = text.trim().to_owned();
            if token.len() < 32 {
                return Err(format!(
                    "{}: the API token is shorter than 32 characters",
                    path.display()
                ));
            }
            Ok(Zeroizing::new(token))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = Zeroizing::new(hex::encode(
                provider::random_vec(32).map_err(|e| e.to_string())?,
            ));
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            }
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            f.write_all(token.as_bytes())
                .map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(token)
        }
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Reads an existing token (for clients).
pub fn read(path: &Path) -> Result<Zeroizing<String>, String> {
    fs::read_to_string(path)
        .map(|t| Zeroizing::new(t.trim().to_owned()))
        .map_err(|e| {
            format!(
                "reading the API token {}: {e} (is the daemon started with this config?)",
                path.display()
            )
        })
}
