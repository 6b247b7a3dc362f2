//! Grants: which custody keys one backend instance may use. The plugin host asks the grant,
//! never the store, so an ungranted handle is indistinguishable from a missing one.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::store::StoredKey;
use super::{CustodyError, KeyStore};

/// The keys one backend instance was granted, by handle name.
#[derive(Clone, Debug)]
pub struct Grants {
    store: Arc<KeyStore>,
    granted: Arc<BTreeSet<String>>,
}

impl Grants {
    pub fn new(store: Arc<KeyStore>, granted: impl IntoIterator<Item = String>) -> Self {
        Self {
            store,
            granted: Arc::new(granted.into_iter().collect()),
        }
    }

    /// The key behind `handle`, if it was granted and exists.
    pub fn key(&self, handle: &str) -> Result<Arc<StoredKey>, CustodyError> {
        if !self.granted.contains(handle) {
            return Err(CustodyError::NotGranted(handle.into()));
        }
        self.store
            .get(handle)
            .map_err(|_| CustodyError::NotGranted(handle.into()))
    }

    /// The granted handle names.
    pub fn handles(&self) -> impl Iterator<Item = &str> {
        self.granted.iter().map(String::as_str)
    }
}
