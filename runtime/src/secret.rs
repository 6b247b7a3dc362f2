//! Secrets an administrator hands certconn outside the config file: an environment variable or
//! a file only the service account can read. One reader for all of them (the static SCEP
//! challenge, credentials granted to a backend's HTTP, the PKCS#11 PIN), so the rules are the
//! same everywhere: exactly one source, the file checked by [`files::read_protected`] before it
//! is read, a trailing newline ignored, empty refused, and the value never in an error message.

use std::path::Path;

use zeroize::Zeroizing;

use crate::files::{self, FileError};

/// Why a secret could not be read. Never contains the secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    #[error("{what}: give the secret in one place, an environment variable or a file")]
    TwoSources { what: String },
    #[error("{what}: no secret given (set an environment variable or a file)")]
    NoSource { what: String },
    #[error("{what}: environment variable {var} is not set")]
    Unset { what: String, var: String },
    #[error("{what}")]
    File {
        what: String,
        #[source]
        source: FileError,
    },
    #[error("{what}: {path} is not UTF-8 text")]
    NotText { what: String, path: String },
    #[error("{what}: the secret is empty")]
    Empty { what: String },
}

/// Reads the secret `what` names from `env` or `file` (exactly one must be given).
pub fn read_text(
    what: &str,
    env: Option<&str>,
    file: Option<&Path>,
) -> Result<Zeroizing<String>, SecretError> {
    let what_owned = || what.to_owned();
    let text = match (env, file) {
        (Some(_), Some(_)) => return Err(SecretError::TwoSources { what: what_owned() }),
        (None, None) => return Err(SecretError::NoSource { what: what_owned() }),
        (Some(var), None) => {
            Zeroizing::new(std::env::var(var).map_err(|_| SecretError::Unset {
                what: what_owned(),
                var: var.to_owned(),
            })?)
        }
        (None, Some(path)) => {
            let bytes = files::read_protected(path).map_err(|source| SecretError::File {
                what: what_owned(),
                source,
            })?;
            Zeroizing::new(
                String::from_utf8(bytes.to_vec()).map_err(|_| SecretError::NotText {
                    what: what_owned(),
                    path: path.display().to_string(),
                })?,
            )
        }
    };
    let trimmed = Zeroizing::new(text.trim_end_matches(['\n', '\r']).to_string());
    if trimmed.is_empty() {
        return Err(SecretError::Empty { what: what_owned() });
    }
    Ok(trimmed)
}
