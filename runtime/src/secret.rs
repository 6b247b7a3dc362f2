//! Secrets an administrator hands certconn outside the config file: an environment variable or
//! a file only the service account can read. One reader for all of them (the static SCEP
//! challenge, credentials granted to a backend's HTTP), so the rules are the same everywhere:
//! exactly one source, the file 0600/0400, a trailing newline ignored, empty refused, and the
//! value never in an error message.

use std::path::Path;

use zeroize::Zeroizing;

/// Reads the secret `what` names from `env` or `file` (exactly one must be given).
pub fn read_text(
    what: &str,
    env: Option<&str>,
    file: Option<&Path>,
) -> Result<Zeroizing<String>, String> {
    let text = match (env, file) {
        (Some(_), Some(_)) => {
            return Err(format!(
                "{what}: give the secret in one place, an environment variable or a file"
            ))
        }
        (None, None) => {
            return Err(format!(
                "{what}: no secret given (set an environment variable or a file)"
            ))
        }
        (Some(var), None) => Zeroizing::new(
            std::env::var(var)
                .map_err(|_| format!("{what}: environment variable {var} is not set"))?,
        ),
        (None, Some(path)) => {
            let bytes = crate::custody::kek::read_protected_file(path)
                .map_err(|e| format!("{what}: {e}"))?;
            Zeroizing::new(
                String::from_utf8(bytes.to_vec())
                    .map_err(|_| format!("{what}: {} is not UTF-8 text", path.display()))?,
            )
        }
    };
    let trimmed = Zeroizing::new(text.trim_end_matches(['\n', '\r']).to_string());
    if trimmed.is_empty() {
        return Err(format!("{what}: the secret is empty"));
    }
    Ok(trimmed)
}
