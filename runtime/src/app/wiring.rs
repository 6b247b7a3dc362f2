//! Adapters that let the job side call the concrete parts: custody's key store as the steps'
//! [`Custody`], the plugin registry's instances as routing [`Candidate`]s. They live here, in
//! the composition root, so that neither side imports the other.

use std::sync::Arc;

use crate::custody::grant::CallKeys;
use crate::custody::{CustodyError, KeyStore, PrivateKey, StoredKey};
use crate::jobs::ports::Custody;
use crate::jobs::routing::{Backends, CaBackend, Candidate, Slot, Unavailable, Verdict};
use crate::plugins::backend::CallResult;
use crate::plugins::bindings::types as wit;
use crate::plugins::instance::{self, Instance};
use crate::plugins::{LoadedBackend, Registry};

/// The custody name of a device key kept while the CA answers pending.
fn pending_key_name(job_id: &str) -> String {
    format!("pending-{job_id}")
}

/// At start: removes the device keys kept here for jobs that have ended since — on another
/// instance of the fleet, which took the job over, or here before a crash between the end and
/// the removal. A key kept for a job that is still unfinished stays.
pub async fn forget_finished_pending_keys(
    keys: &KeyStore,
    jobs: &dyn crate::journal::JobStore,
) -> usize {
    let mut forgotten = 0;
    for summary in keys.list() {
        let Some(job_id) = summary.name.strip_prefix("pending-") else {
            continue;
        };
        let ended = match jobs.get(job_id).await {
            Ok(job) => job.state.is_terminal(),
            Err(crate::journal::JournalError::NotFound(_)) => true,
            // Unknown now: kept, and looked at again at the next start.
            Err(_) => false,
        };
        if ended {
            match keys.remove(&summary.name) {
                Ok(()) => forgotten += 1,
                Err(e) => {
                    tracing::warn!(key = %summary.name, "could not remove a finished job's device key: {}", crate::report::chain(&e))
                }
            }
        }
    }
    forgotten
}

/// The custody name of a device key kept to renew certificate `serial` (hex).
fn renewal_key_name(serial: &str) -> String {
    format!("renewal-{serial}")
}

/// The key store as the steps' custody. In a fleet (`shared`: the journal every instance
/// uses, with a KEK to seal under), a pending job's device key is also sealed into the
/// journal, so that the instance that polls the CA next — this one or another after a
/// failover — packages the certificate with it; the local store keeps a copy as a cache.
pub struct StoreCustody {
    pub keys: Arc<KeyStore>,
    pub shared: Option<Arc<dyn crate::journal::SharedKeys>>,
}

fn shared_error(e: crate::journal::JournalError) -> CustodyError {
    CustodyError::Shared(e)
}

#[async_trait::async_trait]
impl Custody for StoreCustody {
    fn key(&self, name: &str) -> Result<Arc<StoredKey>, CustodyError> {
        self.keys.get(name)
    }

    async fn keep_pending(&self, job_id: &str, key: PrivateKey) -> Result<(), CustodyError> {
        let name = pending_key_name(job_id);
        if let Some(shared) = &self.shared {
            let sealed = self.keys.seal_for_fleet(&name, &key)?;
            shared
                .put_shared_key(&name, &sealed)
                .await
                .map_err(shared_error)?;
        }
        self.keys.put(&name, key).map(|_| ())
    }

    async fn pending_key(&self, job_id: &str) -> Result<Option<Arc<StoredKey>>, CustodyError> {
        let name = pending_key_name(job_id);
        match self.keys.get(&name) {
            Ok(key) => return Ok(Some(key)),
            Err(CustodyError::NoSuchKey(_)) => {}
            Err(e) => return Err(e),
        }
        let Some(shared) = &self.shared else {
            return Ok(None);
        };
        let Some(sealed) = shared.shared_key(&name).await.map_err(shared_error)? else {
            return Ok(None);
        };
        let key = self.keys.open_from_fleet(&name, &sealed)?;
        tracing::info!(job = %job_id, "took up the device key another instance kept for this pending job");
        match self.keys.put(&name, key) {
            Ok(stored) => Ok(Some(stored)),
            // Two workers here took it up at once: the first one's copy is the same key.
            Err(CustodyError::Exists(_)) => self.keys.get(&name).map(Some),
            Err(e) => Err(e),
        }
    }

    async fn forget_pending(&self, job_id: &str) -> Result<(), CustodyError> {
        let name = pending_key_name(job_id);
        if let Some(shared) = &self.shared {
            shared
                .remove_shared_key(&name)
                .await
                .map_err(shared_error)?;
        }
        self.keys.remove(&name)
    }

    fn keep_for_renewal(
        &self,
        serial: &str,
        key: PrivateKey,
        chain: Vec<Vec<u8>>,
    ) -> Result<(), CustodyError> {
        let name = renewal_key_name(serial);
        self.keys.put(&name, key)?;
        self.keys.set_chain(&name, chain).map(|_| ())
    }

    fn renewal_key(&self, serial: &str) -> Option<Arc<StoredKey>> {
        self.keys.get(&renewal_key_name(serial)).ok()
    }

    fn forget_renewal(&self, serial: &str) -> Result<(), CustodyError> {
        self.keys.remove(&renewal_key_name(serial))
    }
}

/// The registry's instances as routing candidates.
pub struct RegistryBackends {
    pub registry: Arc<Registry>,
    /// `fleet.serves`: the backends this instance may call (`None`: all). Another one in a
    /// job's route is passed over here, and left to the instances that serve it.
    pub serves: Option<std::collections::BTreeSet<String>>,
}

impl Backends for RegistryBackends {
    fn candidate(&self, name: &str) -> Option<Arc<dyn Candidate>> {
        if self.serves.as_ref().is_some_and(|s| !s.contains(name)) {
            return Some(Arc::new(NotServed(name.to_owned())));
        }
        self.registry
            .instance(name)
            .map(|i| Arc::new(InstanceCandidate(i)) as Arc<dyn Candidate>)
    }
}

/// A backend this instance does not serve (`fleet.serves`): always passed over.
struct NotServed(String);

#[async_trait::async_trait]
impl Candidate for NotServed {
    fn name(&self) -> &str {
        &self.0
    }

    fn reaches_outside(&self) -> bool {
        false
    }

    async fn lease(&self, _wait: bool) -> Result<Slot, Unavailable> {
        Err(Unavailable::Down(
            "not served by this instance (fleet.serves)".into(),
        ))
    }
}

struct InstanceCandidate(Arc<Instance>);

#[async_trait::async_trait]
impl Candidate for InstanceCandidate {
    fn name(&self) -> &str {
        &self.0.name
    }

    fn reaches_outside(&self) -> bool {
        self.0.reaches_outside()
    }

    async fn lease(&self, wait: bool) -> Result<Slot, Unavailable> {
        match self.0.lease(wait).await {
            Ok(lease) => Ok(Slot::new(
                lease.backend.clone(),
                Box::new(BreakerVerdict(lease)),
            )),
            Err(instance::Unavailable::Down(reason)) => Err(Unavailable::Down(reason)),
            Err(instance::Unavailable::Busy) => Err(Unavailable::Busy),
        }
    }
}

/// Reports a call's outcome to the instance's circuit breaker; holds its concurrency slot until
/// dropped.
struct BreakerVerdict(instance::Lease);

impl Verdict for BreakerVerdict {
    fn success(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        self.0.backend.outcomes.answered.fetch_add(1, Relaxed);
        self.0.instance.breaker.success(&self.0.instance.name);
    }

    fn failure(&self, why: &str) {
        use std::sync::atomic::Ordering::Relaxed;
        self.0.backend.outcomes.failed.fetch_add(1, Relaxed);
        self.0.instance.breaker.failure(&self.0.instance.name, why);
    }
}

#[async_trait::async_trait]
impl CaBackend for LoadedBackend {
    fn version_id(&self) -> String {
        LoadedBackend::version_id(self)
    }

    async fn issue(
        &self,
        request: &wit::IssueRequest,
        keys: CallKeys,
    ) -> CallResult<wit::IssuedCertificate> {
        LoadedBackend::issue(self, request, keys).await
    }

    async fn poll(
        &self,
        job_id: &str,
        token: &str,
        keys: CallKeys,
    ) -> CallResult<wit::IssuedCertificate> {
        LoadedBackend::poll(self, job_id, token, keys).await
    }

    async fn revoke(&self, request: &wit::RevokeRequest) -> CallResult<()> {
        LoadedBackend::revoke(self, request).await
    }

    async fn check_import(&self, request: &wit::ImportCheck) -> CallResult<()> {
        LoadedBackend::check_import(self, request).await
    }
}

/// The revocation publisher as the SCEP RA's source of CRLs (GetCRL).
pub struct PublishedCrls(pub Arc<crate::revocation::Publisher>);

impl crate::sources::scep::CrlSource for PublishedCrls {
    fn crl_of(&self, issuer_der: &[u8]) -> Option<Vec<u8>> {
        self.0.crl_by_issuer(issuer_der).map(|c| c.der.to_vec())
    }
}

/// What the upstream's heartbeat tells the service: this instance, its backends and their
/// plugins, what is switched on, the queue, and health as `/v1/health` sums it up.
pub struct HeartbeatReport {
    pub instance: String,
    pub registry: Arc<Registry>,
    pub jobs: Arc<dyn crate::journal::JobStore>,
    pub features: Vec<String>,
    /// The update feed, once it is open: where this instance's versions stand.
    pub updates: std::sync::OnceLock<Arc<crate::update::Updater>>,
}

impl HeartbeatReport {
    /// The features a configuration switches on, by the names the heartbeat reports.
    pub fn features_of(
        config: &super::config::Config,
        fips: &crate::crypto::fips::FipsStatus,
    ) -> Vec<String> {
        [
            (fips.policy, "fips"),
            (config.scep.is_some(), "scep"),
            (config.revocation.is_some(), "revocation"),
            (config.api.tls.is_some(), "api-tls"),
            (config.custody.pkcs11.is_some(), "pkcs11"),
        ]
        .into_iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| name.to_owned())
        .collect()
    }
}

#[async_trait::async_trait]
impl crate::sources::upstream::InstanceReport for HeartbeatReport {
    async fn heartbeat(&self) -> certconn_connector::Heartbeat {
        let plugins: Vec<_> = self
            .registry
            .instances()
            .iter()
            .map(|i| {
                let status = i.status();
                certconn_connector::PluginReport {
                    backend: status.backend,
                    plugin: status.plugin,
                    version: status.version,
                    state: status.state.to_owned(),
                }
            })
            .collect();
        let health = if self.registry.not_serving().is_empty() {
            "ok"
        } else {
            "degraded"
        };
        let queue = self
            .jobs
            .counts()
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|(state, n)| (state.as_str().to_owned(), n))
            .collect();
        certconn_connector::Heartbeat {
            instance: self.instance.clone(),
            version: crate::version::version().to_owned(),
            protocol: certconn_connector::VERSION,
            plugins,
            features: self.features.clone(),
            queue,
            health: health.to_owned(),
            last_error: None,
            lifecycle: self
                .updates
                .get()
                .map(|u| u.standings())
                .unwrap_or_default(),
        }
    }
}
