//! What the job steps need from custody, in the steps' own words. The routing to backends is
//! in [`super::routing`]; the journal's parts ([`crate::journal::Ledger`], the job store) are
//! the journal's traits.

use std::sync::Arc;

use crate::custody::{CustodyError, PrivateKey, StoredKey};

/// Custody as the job steps use it: named keys, the device keys of jobs pending at a CA, and
/// the device keys a profile keeps so that their certificates can be renewed. The pending
/// keys are async: in a fleet they are sealed into the shared journal, so that whichever
/// instance polls the CA next can package the certificate with its key.
#[async_trait::async_trait]
pub trait Custody: Send + Sync {
    /// The custody key `name` (an import decrypts its PFX password with it).
    fn key(&self, name: &str) -> Result<Arc<StoredKey>, CustodyError>;
    /// Keeps the device key of job `job_id` while its CA answers pending, so that the
    /// certificate the CA issues later is for a key that still exists.
    async fn keep_pending(&self, job_id: &str, key: PrivateKey) -> Result<(), CustodyError>;
    /// The device key kept for `job_id`, if any. An error (the journal unreachable, a key
    /// sealed under another KEK) is not "none": the job must not make a new key for a request
    /// the CA may already hold.
    async fn pending_key(&self, job_id: &str) -> Result<Option<Arc<StoredKey>>, CustodyError>;
    /// Forgets the device key kept for `job_id` (its job ended). Missing is not an error.
    async fn forget_pending(&self, job_id: &str) -> Result<(), CustodyError>;
    /// Keeps the device key of the certificate `serial` (hex, as the ledger has it), with that
    /// certificate first in `chain`, so that a later renewal can prove possession of it.
    fn keep_for_renewal(
        &self,
        serial: &str,
        key: PrivateKey,
        chain: Vec<Vec<u8>>,
    ) -> Result<(), CustodyError>;
    /// The key kept for renewing the certificate `serial`, if any.
    fn renewal_key(&self, serial: &str) -> Option<Arc<StoredKey>>;
    /// Forgets the key kept for `serial` (renewed or revoked). Missing is not an error.
    fn forget_renewal(&self, serial: &str) -> Result<(), CustodyError>;
}

#[cfg(test)]
pub(crate) mod testing {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use super::*;

    /// Custody in memory.
    #[derive(Default)]
    pub struct MemoryCustody {
        pub keys: Mutex<BTreeMap<String, Arc<StoredKey>>>,
        pub pending: Mutex<BTreeMap<String, Arc<StoredKey>>>,
        pub renewal: Mutex<BTreeMap<String, Arc<StoredKey>>>,
    }

    impl MemoryCustody {
        pub fn with_key(self, name: &str, key: PrivateKey) -> Self {
            self.keys.lock().unwrap().insert(
                name.to_owned(),
                Arc::new(StoredKey::new(name.to_owned(), key, Vec::new())),
            );
            self
        }
    }

    #[async_trait::async_trait]
    impl Custody for MemoryCustody {
        fn key(&self, name: &str) -> Result<Arc<StoredKey>, CustodyError> {
            self.keys
                .lock()
                .unwrap()
                .get(name)
                .cloned()
                .ok_or_else(|| CustodyError::NoSuchKey(name.to_owned()))
        }
        async fn keep_pending(&self, job_id: &str, key: PrivateKey) -> Result<(), CustodyError> {
            self.pending.lock().unwrap().insert(
                job_id.to_owned(),
                Arc::new(StoredKey::new(format!("pending-{job_id}"), key, Vec::new())),
            );
            Ok(())
        }
        async fn pending_key(&self, job_id: &str) -> Result<Option<Arc<StoredKey>>, CustodyError> {
            Ok(self.pending.lock().unwrap().get(job_id).cloned())
        }
        async fn forget_pending(&self, job_id: &str) -> Result<(), CustodyError> {
            self.pending.lock().unwrap().remove(job_id);
            Ok(())
        }
        fn keep_for_renewal(
            &self,
            serial: &str,
            key: PrivateKey,
            chain: Vec<Vec<u8>>,
        ) -> Result<(), CustodyError> {
            self.renewal.lock().unwrap().insert(
                serial.to_owned(),
                Arc::new(StoredKey::new(format!("renewal-{serial}"), key, chain)),
            );
            Ok(())
        }
        fn renewal_key(&self, serial: &str) -> Option<Arc<StoredKey>> {
            self.renewal.lock().unwrap().get(serial).cloned()
        }
        fn forget_renewal(&self, serial: &str) -> Result<(), CustodyError> {
            self.renewal.lock().unwrap().remove(serial);
            Ok(())
        }
    }
}
