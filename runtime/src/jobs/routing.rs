//! Routing a job to the backend instances its profile names: the backend, then its fallbacks in
//! order. An instance may be passed over (not loaded, unloaded, quarantined by its circuit
//! breaker, at its concurrency limit); a plugin fault or a transient error moves to the next one
//! and counts against that instance's breaker; a CA's own answer (issued, rejected, pending) is
//! final and never passed on.
//!
//! The job side sees instances through two small traits, [`Backends`] and [`Candidate`], so the
//! steps and this routing are tested with stand-ins; the composition root lets them call the
//! plugin registry's instances.

use std::sync::Arc;

use super::outcome::JobError;
use super::settings::ProfileConfig;
use crate::custody::grant::CallKeys;
#[cfg(test)]
use crate::custody::StoredKey;
use crate::plugins::backend::{bounded, describe_backend_error, CallResult};
use crate::plugins::bindings::types as wit;
use crate::plugins::PluginError;

/// A CA backend version, as a job calls it.
#[async_trait::async_trait]
pub trait CaBackend: Send + Sync {
    /// `plugin version (sha256 prefix)`: which version did the work, for the job's result.
    fn version_id(&self) -> String;
    /// `issue`, with the job's own keys bound (the key the CSR certifies when certconn made
    /// it; for a renewal, the key of the certificate it replaces).
    async fn issue(
        &self,
        request: &wit::IssueRequest,
        keys: CallKeys,
    ) -> CallResult<wit::IssuedCertificate>;
    /// `poll` for a job pending at this backend.
    async fn poll(
        &self,
        job_id: &str,
        token: &str,
        keys: CallKeys,
    ) -> CallResult<wit::IssuedCertificate>;
    async fn revoke(&self, request: &wit::RevokeRequest) -> CallResult<()>;
    async fn check_import(&self, request: &wit::ImportCheck) -> CallResult<()>;
}

/// Why an instance cannot take a job now.
#[derive(Debug)]
pub enum Unavailable {
    /// Not loaded, unloaded or quarantined, with the reason.
    Down(String),
    /// At its concurrency limit.
    Busy,
}

/// A job's hold on an instance: the version to call and, until it is dropped, its slot.
pub struct Slot {
    pub backend: Arc<dyn CaBackend>,
    verdict: Box<dyn Verdict>,
}

impl Slot {
    pub fn new(backend: Arc<dyn CaBackend>, verdict: Box<dyn Verdict>) -> Self {
        Self { backend, verdict }
    }
}

/// Where the outcome of a call goes: the instance's circuit breaker.
pub trait Verdict: Send {
    fn success(&self);
    fn failure(&self, why: &str);
}

/// One backend instance a route may use.
#[async_trait::async_trait]
pub trait Candidate: Send + Sync {
    fn name(&self) -> &str;
    /// True when a call may leave the host (the instance was granted network access): a CA
    /// out there may act on a request whose answer certconn then loses, so the job must be
    /// able to send the same request again.
    fn reaches_outside(&self) -> bool;
    /// The serving version with a slot, if the instance admits a job now. With `wait`, waits
    /// for a slot; otherwise a full instance is [`Unavailable::Busy`].
    async fn lease(&self, wait: bool) -> Result<Slot, Unavailable>;
}

/// The backend instances by name.
pub trait Backends: Send + Sync {
    fn candidate(&self, name: &str) -> Option<Arc<dyn Candidate>>;
}

/// The instances one job may use, tried in order.
pub struct Route {
    candidates: Vec<Arc<dyn Candidate>>,
    /// Why candidates were passed over, for the job's error.
    skipped: Vec<String>,
}

impl Route {
    /// The route of `profile`: its backend, then its fallbacks.
    pub fn for_profile(profile: &ProfileConfig, backends: &dyn Backends) -> Self {
        Self::of(profile.route(), backends)
    }

    /// True when any candidate may send the call off the host
    /// ([`Candidate::reaches_outside`]).
    pub fn reaches_outside(&self) -> bool {
        self.candidates.iter().any(|c| c.reaches_outside())
    }

    /// Instance `name` alone (a pending job polls where it started; a revocation goes to the
    /// backend that issued). `None` when no such instance is configured.
    pub fn to(name: &str, backends: &dyn Backends) -> Option<Self> {
        backends.candidate(name).map(|c| Self {
            candidates: vec![c],
            skipped: Vec::new(),
        })
    }

    fn of<'a>(names: impl Iterator<Item = &'a str>, backends: &dyn Backends) -> Self {
        let mut skipped = Vec::new();
        let candidates = names
            .filter_map(|n| {
                let c = backends.candidate(n);
                if c.is_none() {
                    skipped.push(format!("backend {n:?} is not configured"));
                }
                c
            })
            .collect();
        Self {
            candidates,
            skipped,
        }
    }

    /// The next candidate that can take the job: serving, admitted by its breaker, with a free
    /// slot. When every serving candidate is at its concurrency limit, waits for the first.
    async fn next(&mut self) -> Option<(String, Slot)> {
        let mut busy = Vec::new();
        while !self.candidates.is_empty() {
            let candidate = self.candidates.remove(0);
            match candidate.lease(false).await {
                Ok(slot) => {
                    // Busy ones skipped for this one stay in line behind it.
                    busy.append(&mut self.candidates);
                    self.candidates = busy;
                    return Some((candidate.name().to_owned(), slot));
                }
                Err(Unavailable::Busy) => busy.push(candidate),
                Err(Unavailable::Down(reason)) => self.skipped.push(reason),
            }
        }
        while !busy.is_empty() {
            let candidate = busy.remove(0);
            match candidate.lease(true).await {
                Ok(slot) => {
                    self.candidates = busy;
                    return Some((candidate.name().to_owned(), slot));
                }
                Err(Unavailable::Busy) => {}
                Err(Unavailable::Down(reason)) => self.skipped.push(reason),
            }
        }
        None
    }
}

/// A backend's answer through a route: the instance that gave it, and the answer.
pub struct Answer<T> {
    pub backend_name: String,
    pub backend: Arc<dyn CaBackend>,
    pub answer: Result<T, wit::BackendError>,
}

impl<T: std::fmt::Debug> std::fmt::Debug for Answer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answer")
            .field("backend_name", &self.backend_name)
            .field("answer", &self.answer)
            .finish_non_exhaustive()
    }
}

/// Makes one call through `route`: candidates in order; a plugin fault or a transient error
/// counts against that instance's circuit breaker and moves to the next candidate, while a
/// journal that failed the call is a transient error at once (every backend shares it). `Err` when
/// no backend gave an answer: every one was down, busy, faulted or transient
/// ([`ErrorClass::Transient`](super::ErrorClass), or `Unavailable` when none could be tried), or
/// the call could not be made for a reason no other backend changes (`Permanent`).
pub async fn call_through<T, F, Fut>(route: &mut Route, mut call: F) -> Result<Answer<T>, JobError>
where
    F: FnMut(Arc<dyn CaBackend>) -> Fut,
    Fut: std::future::Future<Output = CallResult<T>>,
{
    let mut failures = Vec::new();
    let mut last = None;
    while let Some((name, slot)) = route.next().await {
        let failure = match call(slot.backend.clone()).await {
            Ok(Err(e @ wit::BackendError::Transient(_))) => describe_backend_error(&e),
            Err(e @ PluginError::Fault { .. }) => bounded(&e.to_string()),
            // Every backend shares the journal: not this one's failure, nor one another helps.
            Err(e @ PluginError::Journal { .. }) => {
                return Err(JobError::transient(bounded(&e.to_string())).at(name))
            }
            Err(other) => return Err(JobError::permanent(other.to_string()).at(name)),
            Ok(answer) => {
                slot.verdict.success();
                return Ok(Answer {
                    backend_name: name,
                    backend: slot.backend.clone(),
                    answer,
                });
            }
        };
        slot.verdict.failure(&failure);
        if !route.candidates.is_empty() {
            tracing::warn!(backend = %name, "trying the next backend of the route after: {failure}");
        }
        failures.push((name.clone(), failure));
        last = Some(name);
    }
    if failures.is_empty() {
        let error = if route.skipped.is_empty() {
            "no backend is configured for this route".to_owned()
        } else {
            format!("waiting for a backend: {}", route.skipped.join("; "))
        };
        return Err(JobError::unavailable(error));
    }
    let error = match (failures.len(), route.skipped.is_empty()) {
        (1, true) => failures.remove(0).1,
        _ => failures
            .into_iter()
            .map(|(n, e)| format!("backend {n:?}: {e}"))
            .chain(route.skipped.drain(..))
            .collect::<Vec<_>>()
            .join("; "),
    };
    Err(JobError::transient(error).at_opt(last.as_deref()))
}

/// Largest poll token kept in the journal.
pub const MAX_POLL_TOKEN: usize = 8 * 1024;

/// A backend's answer that is not a success, as the job's error: pending, transient (retried),
/// or final.
pub fn backend_refusal(backend: &str, e: wit::BackendError) -> JobError {
    match e {
        wit::BackendError::Pending(p) if p.poll_token.len() > MAX_POLL_TOKEN => {
            JobError::permanent(format!(
                "the backend answered pending with a {}-byte poll token; at most {MAX_POLL_TOKEN}",
                p.poll_token.len()
            ))
        }
        wit::BackendError::Pending(p) => JobError::pending(
            bounded(&p.message),
            p.poll_token,
            std::time::Duration::from_secs(u64::from(p.retry_after_seconds.max(1))),
        ),
        e @ wit::BackendError::Transient(_) => JobError::transient(describe_backend_error(&e)),
        other => JobError::permanent(describe_backend_error(&other)),
    }
    .at(backend)
}

#[cfg(test)]
pub(crate) mod testing {
    //! Stand-in backends for the job side's tests: no plugins, no wasm.

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use super::*;

    type IssueFn = dyn Fn(&wit::IssueRequest, Option<&StoredKey>) -> CallResult<wit::IssuedCertificate>
        + Send
        + Sync;

    /// A backend whose answers a test decides; counts its calls.
    pub struct StandIn {
        pub name: String,
        pub issue: Box<IssueFn>,
        /// Sleeps this long in every call first (a slow CA).
        pub delay: std::time::Duration,
        pub calls: AtomicUsize,
        /// The public keys (SPKI DER) of the `request` keys each call was handed. Only the
        /// public half is kept: holding the key would keep the step from owning it again.
        pub keys_seen: Mutex<Vec<Option<Vec<u8>>>>,
        /// The certificate bound to the `current` handle in each call (a renewal's).
        pub current_seen: Mutex<Vec<Option<Vec<u8>>>>,
        pub down: Mutex<Option<String>>,
        pub successes: AtomicUsize,
        pub failures: AtomicUsize,
    }

    impl StandIn {
        pub fn new(
            name: &str,
            issue: impl Fn(&wit::IssueRequest, Option<&StoredKey>) -> CallResult<wit::IssuedCertificate>
                + Send
                + Sync
                + 'static,
        ) -> Arc<Self> {
            Arc::new(Self {
                name: name.to_owned(),
                issue: Box::new(issue),
                delay: std::time::Duration::ZERO,
                calls: AtomicUsize::new(0),
                keys_seen: Mutex::new(Vec::new()),
                current_seen: Mutex::new(Vec::new()),
                down: Mutex::new(None),
                successes: AtomicUsize::new(0),
                failures: AtomicUsize::new(0),
            })
        }

        /// This stand-in, answering each call only after `delay`.
        pub fn slow(
            name: &str,
            delay: std::time::Duration,
            issue: impl Fn(&wit::IssueRequest, Option<&StoredKey>) -> CallResult<wit::IssuedCertificate>
                + Send
                + Sync
                + 'static,
        ) -> Arc<Self> {
            let mut s = Arc::try_unwrap(Self::new(name, issue)).ok().expect("fresh");
            s.delay = delay;
            Arc::new(s)
        }

        pub fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }

        fn see(&self, keys: &CallKeys) {
            self.keys_seen.lock().unwrap().push(
                keys.request
                    .as_ref()
                    .map(|k| k.key.public_key_der().to_vec()),
            );
            self.current_seen
                .lock()
                .unwrap()
                .push(keys.current.as_ref().and_then(|k| k.chain.first().cloned()));
        }
    }

    #[async_trait::async_trait]
    impl CaBackend for StandIn {
        fn version_id(&self) -> String {
            format!("{} 1.0.0 (stand-in)", self.name)
        }
        async fn issue(
            &self,
            request: &wit::IssueRequest,
            keys: CallKeys,
        ) -> CallResult<wit::IssuedCertificate> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.see(&keys);
            tokio::time::sleep(self.delay).await;
            (self.issue)(request, keys.request.as_deref())
        }
        async fn poll(
            &self,
            job_id: &str,
            _token: &str,
            keys: CallKeys,
        ) -> CallResult<wit::IssuedCertificate> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.see(&keys);
            (self.issue)(
                &wit::IssueRequest {
                    job_id: job_id.to_owned(),
                    profile: String::new(),
                    csr: Vec::new(),
                    subject: None,
                    subject_alt_names: Vec::new(),
                    validity_days: None,
                    template: None,
                },
                keys.request.as_deref(),
            )
        }
        async fn revoke(&self, _request: &wit::RevokeRequest) -> CallResult<()> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Ok(Ok(()))
        }
        async fn check_import(&self, _request: &wit::ImportCheck) -> CallResult<()> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Ok(Ok(()))
        }
    }

    struct Count(Arc<StandIn>);

    impl Verdict for Count {
        fn success(&self) {
            self.0.successes.fetch_add(1, Ordering::SeqCst);
        }
        fn failure(&self, _why: &str) {
            self.0.failures.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[async_trait::async_trait]
    impl Candidate for Arc<StandIn> {
        fn name(&self) -> &str {
            &self.name
        }
        fn reaches_outside(&self) -> bool {
            true
        }
        async fn lease(&self, _wait: bool) -> Result<Slot, Unavailable> {
            if let Some(why) = self.down.lock().unwrap().clone() {
                return Err(Unavailable::Down(why));
            }
            Ok(Slot::new(self.clone(), Box::new(Count(self.clone()))))
        }
    }

    /// Stand-in instances by name.
    #[derive(Default)]
    pub struct StandIns(pub Vec<Arc<StandIn>>);

    impl Backends for StandIns {
        fn candidate(&self, name: &str) -> Option<Arc<dyn Candidate>> {
            self.0
                .iter()
                .find(|b| b.name == name)
                .map(|b| Arc::new(b.clone()) as Arc<dyn Candidate>)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use crate::jobs::ErrorClass;

    fn profile(backend: &str, fallbacks: &[&str]) -> ProfileConfig {
        let text = format!(
            "backend = {backend:?}\nfallbacks = [{}]\n",
            fallbacks
                .iter()
                .map(|f| format!("{f:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        toml::from_str(&text).unwrap()
    }

    fn transient(
        _: &wit::IssueRequest,
        _: Option<&StoredKey>,
    ) -> CallResult<wit::IssuedCertificate> {
        Ok(Err(wit::BackendError::Transient("CA unreachable".into())))
    }

    fn rejected(
        _: &wit::IssueRequest,
        _: Option<&StoredKey>,
    ) -> CallResult<wit::IssuedCertificate> {
        Ok(Err(wit::BackendError::Rejected("no".into())))
    }

    fn request() -> wit::IssueRequest {
        wit::IssueRequest {
            job_id: "j".into(),
            profile: "p".into(),
            csr: Vec::new(),
            subject: None,
            subject_alt_names: Vec::new(),
            validity_days: None,
            template: None,
        }
    }

    async fn issue_through(route: &mut Route) -> Result<Answer<wit::IssuedCertificate>, JobError> {
        let req = request();
        let req = &req;
        call_through(
            route,
            |b| async move { b.issue(req, CallKeys::default()).await },
        )
        .await
    }

    #[tokio::test]
    async fn a_transient_error_moves_to_the_fallback_and_counts_against_the_breaker() {
        let primary = StandIn::new("primary", transient);
        let fallback = StandIn::new("fallback", rejected);
        let backends = StandIns(vec![primary.clone(), fallback.clone()]);
        let mut route = Route::for_profile(&profile("primary", &["fallback"]), &backends);
        let answer = issue_through(&mut route).await.expect("an answer");
        assert_eq!(answer.backend_name, "fallback");
        assert!(matches!(answer.answer, Err(wit::BackendError::Rejected(_))));
        assert_eq!(
            primary.failures.load(std::sync::atomic::Ordering::SeqCst),
            1
        );
        assert_eq!(
            fallback.successes.load(std::sync::atomic::Ordering::SeqCst),
            1
        );
    }

    #[tokio::test]
    async fn a_final_answer_is_not_passed_on() {
        let primary = StandIn::new("primary", rejected);
        let fallback = StandIn::new("fallback", rejected);
        let backends = StandIns(vec![primary.clone(), fallback.clone()]);
        let mut route = Route::for_profile(&profile("primary", &["fallback"]), &backends);
        let answer = issue_through(&mut route).await.expect("an answer");
        assert_eq!(answer.backend_name, "primary");
        assert_eq!(fallback.calls(), 0);
    }

    #[tokio::test]
    async fn a_journal_that_failed_the_call_is_a_transient_error_of_no_backend() {
        fn journal_away(
            _: &wit::IssueRequest,
            _: Option<&StoredKey>,
        ) -> CallResult<wit::IssuedCertificate> {
            Err(PluginError::Journal {
                backend: "primary".into(),
                reason: "the signature could not be recorded".into(),
            })
        }
        let primary = StandIn::new("primary", journal_away);
        let fallback = StandIn::new("fallback", rejected);
        let backends = StandIns(vec![primary.clone(), fallback.clone()]);
        let mut route = Route::for_profile(&profile("primary", &["fallback"]), &backends);
        let e = issue_through(&mut route).await.expect_err("an error");
        assert_eq!(e.class, ErrorClass::Transient);
        assert!(e.to_string().contains("could not be recorded"), "{e}");
        // The journal is every backend's: no other is tried, and no breaker counts it.
        assert_eq!(fallback.calls(), 0);
        assert_eq!(
            primary.failures.load(std::sync::atomic::Ordering::SeqCst),
            0
        );
    }

    #[tokio::test]
    async fn all_transient_is_a_transient_error_naming_each_backend() {
        let a = StandIn::new("a", transient);
        let b = StandIn::new("b", transient);
        let backends = StandIns(vec![a, b]);
        let mut route = Route::for_profile(&profile("a", &["b"]), &backends);
        let e = issue_through(&mut route).await.expect_err("an error");
        assert_eq!(e.class, ErrorClass::Transient);
        assert_eq!(e.backend.as_deref(), Some("b"));
        let text = e.to_string();
        assert!(
            text.contains("backend \"a\"") && text.contains("backend \"b\""),
            "{text}"
        );
    }

    #[tokio::test]
    async fn nothing_serving_waits_without_an_attempt() {
        let a = StandIn::new("a", rejected);
        *a.down.lock().unwrap() = Some("backend \"a\" is unloaded".into());
        let backends = StandIns(vec![a.clone()]);
        let mut route = Route::for_profile(&profile("a", &["gone"]), &backends);
        let e = issue_through(&mut route).await.expect_err("an error");
        assert_eq!(e.class, ErrorClass::Unavailable);
        let text = e.to_string();
        assert!(
            text.contains("unloaded") && text.contains("\"gone\" is not configured"),
            "{text}"
        );
        assert_eq!(a.calls(), 0);
    }

    #[test]
    fn pending_keeps_its_token_and_a_huge_token_is_refused() {
        let e = backend_refusal(
            "b",
            wit::BackendError::Pending(wit::Pending {
                poll_token: "t".into(),
                retry_after_seconds: 0,
                message: "awaiting approval".into(),
            }),
        );
        assert_eq!(
            e.class,
            ErrorClass::Pending {
                token: "t".into(),
                retry_after: std::time::Duration::from_secs(1)
            }
        );
        let e = backend_refusal(
            "b",
            wit::BackendError::Pending(wit::Pending {
                poll_token: "t".repeat(MAX_POLL_TOKEN + 1),
                retry_after_seconds: 5,
                message: String::new(),
            }),
        );
        assert_eq!(e.class, ErrorClass::Permanent);
    }
}
