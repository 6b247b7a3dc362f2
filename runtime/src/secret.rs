//! Secrets an administrator hands certconn outside the config file: an environment variable or
//! a file only the service account can read. One reader for all of them (the static SCEP
//! challenge, credentials granted to a backend's HTTP, the PKCS#11 PIN), so the rules are the
//! same everywhere: exactly one source, the file checked by [`files::read_protected`] before it
//! is read, a trailing newline ignored, empty refused, and the value never in an error message.
//!
//! Also [`SecretString`], the type a secret certconn makes (a PFX password) is held in where it
//! travels with data that is printed, so that a `{:?}` of the whole never shows it.

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
    let mut text = match (env, file) {
        (Some(_), Some(_)) => return Err(SecretError::TwoSources { what: what_owned() }),
        (None, None) => return Err(SecretError::NoSource { what: what_owned() }),
        (Some(var), None) => env_var(var).map_err(|_| SecretError::Unset {
            what: what_owned(),
            var: var.to_owned(),
        })?,
        (None, Some(path)) => {
            let mut bytes = files::read_protected(path).map_err(|source| SecretError::File {
                what: what_owned(),
                source,
            })?;
            into_text(&mut bytes).ok_or_else(|| SecretError::NotText {
                what: what_owned(),
                path: path.display().to_string(),
            })?
        }
    };
    drop_line_ends(&mut text);
    if text.is_empty() {
        return Err(SecretError::Empty { what: what_owned() });
    }
    Ok(text)
}

/// The value of environment variable `var`, which an administrator named to hand over a secret,
/// in a buffer zeroized when dropped. Every secret certconn takes from the environment is read
/// here; in unit tests, [`testing::with_env`] gives a value to this thread alone.
pub fn env_var(var: &str) -> Result<Zeroizing<String>, std::env::VarError> {
    #[cfg(test)]
    if let Some(value) = testing::value(var) {
        return Ok(value);
    }
    std::env::var(var).map(Zeroizing::new)
}

/// What unit tests give [`env_var`] instead of `std::env::set_var`: a test binary runs its
/// tests on many threads, and glibc's `setenv` may move the array a `getenv` in C code (SQLite,
/// aws-lc, the resolver) on another thread is reading at that moment.
#[cfg(test)]
pub mod testing {
    use std::cell::RefCell;

    use zeroize::Zeroizing;

    thread_local! {
        static VARS: RefCell<Vec<(String, Zeroizing<String>)>> = const { RefCell::new(Vec::new()) };
    }

    /// Runs `f` with environment variable `var` reading as `value` to [`super::env_var`] on this
    /// thread, and as before once `f` returns (or panics).
    pub fn with_env<T>(var: &str, value: &str, f: impl FnOnce() -> T) -> T {
        /// Takes back the value this call gave: the last one, since calls nest.
        struct Unset;
        impl Drop for Unset {
            fn drop(&mut self) {
                VARS.with_borrow_mut(|vars| vars.pop());
            }
        }
        VARS.with_borrow_mut(|vars| vars.push((var.to_owned(), Zeroizing::new(value.to_owned()))));
        let _unset = Unset;
        f()
    }

    pub(super) fn value(var: &str) -> Option<Zeroizing<String>> {
        VARS.with_borrow(|vars| {
            vars.iter()
                .rev()
                .find(|(name, _)| name == var)
                .map(|(_, value)| value.clone())
        })
    }
}

/// The file of systemd credential `name`, which the unit hands over with `LoadCredential=NAME:…`
/// (or `SetCredentialEncrypted=`, `LoadCredentialEncrypted=`): `$CREDENTIALS_DIRECTORY/NAME`,
/// readable by the service's user only, and gone when the service stops. Refused when the
/// process was not started with credentials, or the name is not one systemd would give.
pub fn systemd_credential(name: &str) -> Result<std::path::PathBuf, String> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(format!(
            "{name:?} is not a systemd credential name (no \"/\", not empty, not \".\" or \"..\")"
        ));
    }
    let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| {
        format!(
            "credential {name:?}: $CREDENTIALS_DIRECTORY is not set (run under systemd with \
             LoadCredential={name}:FILE in the unit; a command by hand: `systemd-run --pipe \
             --wait -p User=certconn -p LoadCredential={name}:FILE certconn ...`, or \
             CREDENTIALS_DIRECTORY set to a directory holding a file {name})"
        )
    })?;
    Ok(Path::new(&dir).join(name))
}

/// Drops a secret text's trailing line ends (`echo secret > file` writes one), in place: no
/// copy of the secret is made. Every secret certconn reads from a file goes through here.
pub fn drop_line_ends(text: &mut String) {
    text.truncate(text.trim_end_matches(['\n', '\r']).len());
}

/// A secret text that never shows itself: zeroized when dropped and `<redacted>` in debug
/// output, so a struct that carries one (a job's result, its outcome, the outbox's row) can
/// derive `Debug` without a `{:?}` of it, in a log line or a failed test, printing the secret.
/// It serializes as its plain text, for the one answer that hands it out.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretString(Zeroizing<String>);

impl SecretString {
    /// The secret's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `<scheme> <credential>` (`Bearer <token>`, `Basic <base64>`), an `authorization` header's
/// text, in a buffer sized first and zeroized when dropped: `format!` grows as it writes, and
/// each growth frees a copy of the credential.
pub fn credential(scheme: &str, credential: &str) -> Zeroizing<String> {
    let mut text = Zeroizing::new(String::with_capacity(scheme.len() + 1 + credential.len()));
    text.push_str(scheme);
    text.push(' ');
    text.push_str(credential);
    text
}

/// [`credential`] as a header value to send. Its bytes stay in that zeroized buffer for as long
/// as the request holds them (`HeaderValue::from_str` would copy them into one that is not), and
/// it is marked sensitive: `Sensitive` in debug output, and never put in an HTTP/2 compression
/// table. What the HTTP stack copies the value into to send it is the transport's, not zeroized.
///
/// Fails when the credential holds a character no header may (a control character, a line
/// end); the error does not carry it.
pub fn credential_header(
    scheme: &str,
    credential: &str,
) -> Result<http::HeaderValue, http::header::InvalidHeaderValue> {
    sensitive_header(self::credential(scheme, credential))
}

/// A header value whose bytes are `text`'s own buffer, zeroized when the value is dropped.
fn sensitive_header(
    text: Zeroizing<String>,
) -> Result<http::HeaderValue, http::header::InvalidHeaderValue> {
    let mut value = http::HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(text))?;
    value.set_sensitive(true);
    Ok(value)
}

/// `value` as JSON in a buffer allocated once at its final length and zeroized when dropped: it
/// is written once to count its bytes, then for real. For JSON that carries a secret (a
/// backend's settings, an API answer with a PFX password); `serde_json::to_vec` grows as it
/// writes, and each growth frees a copy.
pub fn json(value: &impl serde::Serialize) -> Result<Zeroizing<String>, serde_json::Error> {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, value)?;
    let mut bytes = Zeroizing::new(Vec::with_capacity(count.0));
    serde_json::to_writer(&mut *bytes, value)?;
    // serde_json writes UTF-8 only; the error path is there so that nothing here can panic.
    into_text(&mut bytes).ok_or_else(|| serde::ser::Error::custom("JSON that is not UTF-8"))
}

/// `bytes` as text in the same buffer (the bytes become the string, no copy is made), or
/// `None` with the bytes zeroized when they are not UTF-8.
fn into_text(bytes: &mut Zeroizing<Vec<u8>>) -> Option<Zeroizing<String>> {
    match String::from_utf8(std::mem::take(&mut **bytes)) {
        Ok(text) => Some(Zeroizing::new(text)),
        Err(e) => {
            zeroize::Zeroize::zeroize(&mut e.into_bytes());
            None
        }
    }
}

impl std::ops::Deref for SecretString {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<String> for SecretString {
    fn from(text: String) -> Self {
        Self(Zeroizing::new(text))
    }
}

impl From<Zeroizing<String>> for SecretString {
    fn from(text: Zeroizing<String>) -> Self {
        Self(text)
    }
}

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl serde::Serialize for SecretString {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for SecretString {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_given_by_a_test_is_seen_on_its_thread_only_and_while_it_is_given() {
        let var = "CERTCONN_TEST_NEVER_IN_THE_ENVIRONMENT";
        assert!(env_var(var).is_err());
        testing::with_env(var, "given", || {
            assert_eq!(env_var(var).unwrap().as_str(), "given");
            testing::with_env(var, "inner", || {
                assert_eq!(env_var(var).unwrap().as_str(), "inner");
            });
            assert_eq!(env_var(var).unwrap().as_str(), "given");
            std::thread::spawn(move || assert!(env_var(var).is_err()))
                .join()
                .unwrap();
        });
        assert!(env_var(var).is_err());
    }

    #[test]
    fn a_secret_file_loses_its_line_ends_in_place_and_bad_ones_are_named() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            path
        };
        let text = read_text("the challenge", None, Some(&write("ok", b"s3cret\r\n\n"))).unwrap();
        assert_eq!(&*text, "s3cret");
        assert_eq!(
            text.capacity(),
            9,
            "the bytes read became the string: no copy"
        );
        let empty = read_text("the challenge", None, Some(&write("empty", b"\n"))).unwrap_err();
        assert!(matches!(empty, SecretError::Empty { .. }), "{empty}");
        let binary = write("binary", b"s3cret\xff\n");
        let e = read_text("the challenge", None, Some(&binary)).unwrap_err();
        assert!(matches!(e, SecretError::NotText { .. }), "{e}");
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }

    #[test]
    fn a_credential_is_allocated_once_at_its_length() {
        let text = credential("Bearer", "tok3n-0123456789abcdef0123456789abcdef");
        assert_eq!(&*text, "Bearer tok3n-0123456789abcdef0123456789abcdef");
        assert_eq!(text.len(), text.capacity());
    }

    #[test]
    fn a_credential_header_is_sensitive_and_keeps_its_bytes_where_they_are_zeroized() {
        let token = "tok3n-0123456789abcdef";
        let value = credential_header("Bearer", token).unwrap();
        assert_eq!(value.as_bytes(), b"Bearer tok3n-0123456789abcdef");
        assert!(value.is_sensitive());
        let debug = format!("{value:?}");
        assert!(!debug.contains(token), "{debug}");
        // The header's bytes are the zeroizing buffer itself, not a copy: a value built by
        // `HeaderValue::from_str` would own an allocation of its own, left unzeroized.
        let text = credential("Bearer", token);
        let buffer = text.as_ptr();
        let value = sensitive_header(text).unwrap();
        assert_eq!(value.as_bytes().as_ptr(), buffer);
        let request = http::Request::builder()
            .header("authorization", value)
            .body(())
            .unwrap();
        assert!(!format!("{request:?}").contains(token));
    }

    #[test]
    fn a_credential_header_refuses_a_line_end_without_showing_it() {
        let error = credential_header("Bearer", "tok3n\r\nx-injected: 1").unwrap_err();
        assert!(!error.to_string().contains("tok3n"), "{error}");
    }

    #[test]
    fn json_is_allocated_once_at_its_length() {
        let value = serde_json::json!({
            "password": SecretString::from("s3cr\u{e9}t \"quoted\"".to_owned()),
            "pfx_base64": "A".repeat(5000),
        });
        let text = json(&value).unwrap();
        assert_eq!(text.len(), text.capacity());
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, value);
    }

    #[test]
    fn a_secret_string_is_redacted_in_debug_output_and_plain_in_json() {
        let secret = SecretString::from("hunter2-pfx".to_owned());
        assert_eq!(format!("{secret:?}"), "<redacted>");
        assert_eq!(format!("{:?}", Some(&secret)), "Some(<redacted>)");
        assert_eq!(secret.as_str(), "hunter2-pfx");
        let json = serde_json::to_string(&secret).unwrap();
        assert_eq!(json, "\"hunter2-pfx\"");
        let back: SecretString = serde_json::from_str(&json).unwrap();
        assert_eq!(back, secret);
    }
}
