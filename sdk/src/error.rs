//! Constructors for [`BackendError`](crate::BackendError), so a backend says what the host should
//! do next in one short call.

use crate::{BackendError, FieldError, Pending};

/// The CA refused the request for good; the host fails the job without retrying.
pub fn rejected(message: impl Into<String>) -> BackendError {
    BackendError::Rejected(message.into())
}

/// A passing failure (network, CA busy); the host retries with backoff.
pub fn transient(message: impl Into<String>) -> BackendError {
    BackendError::Transient(message.into())
}

/// This backend does not implement `operation`.
pub fn unsupported(operation: &str) -> BackendError {
    BackendError::Unsupported(format!("this backend does not support {operation}"))
}

/// The CA has not decided yet; the host calls `poll` with `poll_token` after `retry_after_seconds`.
pub fn pending(
    poll_token: impl Into<String>,
    retry_after_seconds: u32,
    message: impl Into<String>,
) -> BackendError {
    BackendError::Pending(Pending {
        poll_token: poll_token.into(),
        retry_after_seconds,
        message: message.into(),
    })
}

/// A backend error as one line of text, for health messages and logs.
pub fn describe(e: &BackendError) -> String {
    match e {
        BackendError::InvalidConfig(fields) => fields
            .iter()
            .map(|f| format!("{}: {}", f.field, f.message))
            .collect::<Vec<_>>()
            .join("; "),
        BackendError::Rejected(m) | BackendError::Transient(m) | BackendError::Unsupported(m) => {
            m.clone()
        }
        BackendError::Pending(p) => p.message.clone(),
    }
}

/// One bad setting.
pub fn field(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}
