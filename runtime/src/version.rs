//! The version this binary reports: the crate's, unless a release stamped another into it
//! (`certconn release stamp`). A stamp fills a fixed slot in the binary — the way Go's
//! `-ldflags -X` sets a version without a rebuild — so that a release candidate, or the same
//! build republished under a new version, says what it is. Everything that reports the daemon's
//! version (health, status, metrics, the fleet, the upstream heartbeat, the update feed's
//! lifecycle) asks here.

use std::sync::OnceLock;

/// The marker that starts the slot; the version follows it, NUL-padded.
const MARKER_LEN: usize = 24;
/// The slot: the marker, then up to [`MAX_STAMP`] bytes of version.
pub const SLOT_LEN: usize = 64;
/// The longest version a stamp holds.
pub const MAX_STAMP: usize = SLOT_LEN - MARKER_LEN;

#[used]
static SLOT: [u8; SLOT_LEN] =
    *b"certconn-version-stamp:\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";

/// The slot's bytes as the binary holds them. Read through `black_box`, so that the compiler
/// cannot fold the empty slot into the code: a stamped file must change what this returns.
fn slot() -> [u8; SLOT_LEN] {
    *std::hint::black_box(&SLOT)
}

/// The marker's bytes (built from the slot itself, so the binary holds them once).
pub fn marker() -> [u8; MARKER_LEN] {
    let mut m = [0u8; MARKER_LEN];
    m.copy_from_slice(&slot()[..MARKER_LEN]);
    m
}

/// The version this binary reports.
pub fn version() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| {
        let slot = slot();
        let stamp = &slot[MARKER_LEN..];
        let end = stamp.iter().position(|&b| b == 0).unwrap_or(stamp.len());
        match std::str::from_utf8(&stamp[..end]) {
            Ok(v) if !v.is_empty() => v.to_owned(),
            _ => env!("CARGO_PKG_VERSION").to_owned(),
        }
    })
}

/// Why a binary could not be stamped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StampError {
    #[error("the version must be 1 to {MAX_STAMP} bytes of a semantic version, not {0:?}")]
    Version(String),
    #[error("no version slot in the file: not a certconn binary")]
    NoSlot,
    #[error("the version slot appears {0} times in the file: refusing to guess")]
    Ambiguous(usize),
}

/// Where the version in `binary`'s one slot starts.
fn stamp_at(binary: &[u8]) -> Result<usize, StampError> {
    let marker = marker();
    let at: Vec<usize> = binary
        .windows(MARKER_LEN)
        .enumerate()
        .filter(|(_, w)| *w == marker)
        .map(|(i, _)| i)
        .collect();
    match at.as_slice() {
        [] => Err(StampError::NoSlot),
        [one] => Ok(one + MARKER_LEN),
        many => Err(StampError::Ambiguous(many.len())),
    }
}

/// The version stamped into certconn binary `binary`, read from its bytes (it is not run):
/// `None` for a binary never stamped, which reports the version of the crate it was built
/// from.
pub fn stamped(binary: &[u8]) -> Result<Option<String>, StampError> {
    let start = stamp_at(binary)?;
    let slot = binary
        .get(start..start + MAX_STAMP)
        .ok_or(StampError::NoSlot)?;
    let end = slot.iter().position(|&b| b == 0).unwrap_or(slot.len());
    Ok(std::str::from_utf8(&slot[..end])
        .ok()
        .filter(|v| !v.is_empty())
        .map(str::to_owned))
}

/// `binary` with `version` in its slot.
pub fn stamp(binary: &[u8], version: &str) -> Result<Vec<u8>, StampError> {
    if version.is_empty()
        || version.len() > MAX_STAMP
        || semver::Version::parse(version.trim_start_matches('v')).is_err()
    {
        return Err(StampError::Version(version.to_owned()));
    }
    let start = stamp_at(binary)?;
    let mut out = binary.to_vec();
    let slot = out
        .get_mut(start..start + MAX_STAMP)
        .ok_or(StampError::NoSlot)?;
    slot.fill(0);
    slot[..version.len()].copy_from_slice(version.as_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unstamped_binary_reports_the_crate_version() {
        assert_eq!(version(), env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn a_stamp_fills_the_one_slot_and_refuses_otherwise() {
        let mut file = b"head".to_vec();
        file.extend_from_slice(&SLOT);
        file.extend_from_slice(b"tail");
        let stamped = stamp(&file, "2.0.0-rc.1").unwrap();
        assert_eq!(stamped.len(), file.len());
        let at = 4 + MARKER_LEN;
        assert_eq!(&stamped[at..at + 10], b"2.0.0-rc.1");
        assert_eq!(
            super::stamped(&stamped).unwrap().as_deref(),
            Some("2.0.0-rc.1")
        );
        assert_eq!(super::stamped(&file).unwrap(), None);
        assert!(matches!(
            super::stamped(b"nothing"),
            Err(StampError::NoSlot)
        ));
        assert!(matches!(
            stamp(b"nothing", "1.0.0"),
            Err(StampError::NoSlot)
        ));
        let mut twice = file.clone();
        twice.extend_from_slice(&SLOT);
        assert!(matches!(
            stamp(&twice, "1.0.0"),
            Err(StampError::Ambiguous(2))
        ));
        assert!(matches!(
            stamp(&file, "not a version"),
            Err(StampError::Version(_))
        ));
    }
}
