//! One line for an error and its causes, where a line is all there is room for: a job's
//! `last_error` in the journal, an API error body, a log field. Each error's own `Display` says
//! only what happened at its level (rustls style), so the chain reads once, outermost first.

use std::error::Error;

/// `error: cause: cause's cause`.
pub fn chain(error: &dyn Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let text = s.to_string();
        // A wrapper that prints its cause anyway (a third-party error) must not print it twice.
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// A time in unix milliseconds as people read it: UTC, RFC 3339, whole seconds. `-` when it
/// is out of range.
pub fn rfc3339_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "-".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("opening the journal")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn causes_follow_once() {
        let e = Outer(std::io::Error::other("disk on fire"));
        assert_eq!(chain(&e), "opening the journal: disk on fire");
    }
}
