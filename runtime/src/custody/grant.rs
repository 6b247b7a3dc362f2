//! Grants: which custody keys one backend instance may use. The plugin host asks the grant,
//! never the store, so an ungranted handle is indistinguishable from a missing one.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::store::StoredKey;
use super::{CustodyError, KeyStore};

/// The handle that names, during one `issue` or `poll` call, the key the CSR certifies when
/// certconn made it (server-side keys). Enrolment protocols need it: a SCEP client signs its
/// request with the key being certified and receives the reply encrypted to it.
pub const REQUEST_HANDLE: &str = "request";

/// The keys one backend instance was granted, by handle name.
#[derive(Clone, Debug)]
pub struct Grants {
    store: Option<Arc<KeyStore>>,
    granted: Arc<BTreeSet<String>>,
    request: Option<Arc<StoredKey>>,
}

impl Grants {
    pub fn new(store: Arc<KeyStore>, granted: impl IntoIterator<Item = String>) -> Self {
        Self {
            store: Some(store),
            granted: Arc::new(granted.into_iter().collect()),
            request: None,
        }
    }

    /// No keys at all (for describing a plugin that is not configured).
    pub fn none() -> Self {
        Self {
            store: None,
            granted: Arc::default(),
            request: None,
        }
    }

    /// These grants plus [`REQUEST_HANDLE`] bound to `key`, for one call.
    pub fn with_request_key(&self, key: Option<Arc<StoredKey>>) -> Self {
        Self {
            request: key,
            ..self.clone()
        }
    }

    /// The key behind `handle`, if it was granted and exists.
    pub fn key(&self, handle: &str) -> Result<Arc<StoredKey>, CustodyError> {
        if handle == REQUEST_HANDLE {
            return self
                .request
                .clone()
                .ok_or_else(|| CustodyError::NotGranted(handle.into()));
        }
        if !self.granted.contains(handle) {
            return Err(CustodyError::NotGranted(handle.into()));
        }
        self.store
            .as_ref()
            .and_then(|s| s.get(handle).ok())
            .ok_or_else(|| CustodyError::NotGranted(handle.into()))
    }

    /// The granted handle names.
    pub fn handles(&self) -> impl Iterator<Item = &str> {
        self.granted.iter().map(String::as_str)
    }
}
