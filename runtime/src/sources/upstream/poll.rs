//! Taking work: long-poll, journal, acknowledge.

use std::sync::Arc;
use std::time::Duration;

use certconn_connector::{
    parse_batch, Delivered, ImportWork, IssueWork, ItemResult, Outcome, Parsed, RevokeWork, Work,
    WorkItem, BASE,
};
use futures::StreamExt;
use hyper::{Method, StatusCode};
use tokio::sync::watch;

use super::{pause, Upstream, IN_FLIGHT, SOURCE};
use crate::jobs::model::{ImportJob, IssueJob, RevocationReason, RevokeJob};
use crate::jobs::SubmitError;
use crate::journal::JournalError;

/// How long a call other than the long poll may take.
pub(super) const CALL_LIMIT: Duration = Duration::from_secs(30);

/// An empty batch sooner than this did not wait: the next poll waits this long.
const EAGER: Duration = Duration::from_secs(1);

impl Upstream {
    /// Long-polls until `shutdown`: each item of a batch is journaled, then acknowledged.
    pub(super) async fn poll_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut failures = 0u32;
        let path = format!(
            "{BASE}/work?wait={}&max={}",
            self.wait.as_secs(),
            self.batch
        );
        loop {
            if *shutdown.borrow() {
                return;
            }
            // The service may hold the poll for `wait`; a little more is its answer's way back.
            let limit = self.wait + Duration::from_secs(15);
            let asked = std::time::Instant::now();
            let answer = tokio::select! {
                a = self.client.call(Method::GET, &path, None, limit) => a,
                _ = shutdown.wait_for(|s| *s) => return,
            };
            let delay = match answer {
                Ok(a) if a.status == StatusCode::OK => {
                    self.update(|s| {
                        s.connected = true;
                        let now = crate::journal::now_ms();
                        s.last_poll = Some(crate::report::rfc3339_ms(now));
                        s.last_poll_ms = Some(now);
                        s.last_error = None;
                    });
                    match parse_batch(&a.body) {
                        // A service that answers an empty batch at once, without holding
                        // the poll, is asked again after a second, not in a tight loop.
                        Ok(items) if items.is_empty() && asked.elapsed() < EAGER => {
                            failures = 0;
                            EAGER
                        }
                        Ok(items) => match self.take(items).await {
                            Ok(()) => {
                                failures = 0;
                                continue;
                            }
                            Err(e) => {
                                failures += 1;
                                self.fault("journal", e, failures, None)
                            }
                        },
                        Err(e) => {
                            failures += 1;
                            self.fault("poll", format!("its answer: {e}"), failures, None)
                        }
                    }
                }
                Ok(a) => {
                    failures += 1;
                    let error = format!("HTTP {}: {}", a.status, snippet(&a.body));
                    self.fault("poll", error, failures, a.retry_after)
                }
                Err(e) => {
                    failures += 1;
                    self.fault("poll", e, failures, None)
                }
            };
            if pause(delay, &mut shutdown).await {
                return;
            }
        }
    }

    /// Journals each item, then acknowledges it; an item that cannot be a job is answered with
    /// its failure at once. The items of a batch are taken together, at most [`IN_FLIGHT`] at a
    /// time: their journal writes share a commit, and their acknowledgements go side by side
    /// instead of one round trip after another. An item the journal cannot take is not
    /// acknowledged (it is offered again after the service's visibility timeout, and journaled
    /// then); the first such failure is returned once the others are done.
    async fn take(&self, items: Vec<Parsed>) -> Result<(), String> {
        let taken: Vec<Result<(), String>> = futures::stream::iter(items)
            .map(|parsed| self.take_parsed(parsed))
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        taken.into_iter().collect()
    }

    async fn take_parsed(&self, parsed: Parsed) -> Result<(), String> {
        match parsed {
            Parsed::Item(item) => self.take_item(item).await?,
            Parsed::Malformed {
                id: Some(id),
                reason,
            } => self.refuse(&id, format!("not a work item: {reason}")).await,
            Parsed::Malformed { id: None, reason } => {
                self.update(|s| s.refused += 1);
                tracing::warn!(event_id = 5004, %reason, "the upstream service sent an item without a usable id; it cannot be answered");
            }
        }
        Ok(())
    }

    async fn take_item(&self, item: WorkItem) -> Result<(), String> {
        let job = match &item.work {
            Work::Issue(w) => issue_job(w).map(Job::Issue),
            Work::Import(w) => import_job(w).map(Job::Import),
            Work::Revoke(w) => revoke_job(w).map(Job::Revoke),
        };
        let job = match job {
            Ok(job) => job,
            Err(why) => {
                self.refuse(&item.id, why).await;
                return Ok(());
            }
        };
        let submitted = match &job {
            Job::Issue(j) => self.intake.submit_issue(SOURCE, &item.id, j).await,
            Job::Import(j) => self.intake.submit_import(SOURCE, &item.id, j).await,
            Job::Revoke(j) => self.intake.submit_revoke(SOURCE, &item.id, j).await,
        };
        match submitted {
            Ok((job, created)) => {
                if created {
                    self.update(|s| s.received += 1);
                    tracing::info!(event_id = 5003, item = %item.id, job = %job.id, kind = job.kind.as_str(), "journaled work from the upstream service");
                }
                self.acknowledge(&item.id).await;
                Ok(())
            }
            // The item's job is journaled already (its idempotency key), but its record cannot
            // be read: the lease fails it with the reason and the reporter sends that failure.
            // Not acknowledged, the item would come back after every visibility timeout, each
            // time a failed poll round and a backoff for every item behind it.
            Err(SubmitError::Journal(JournalError::Corrupt { id, reason })) => {
                tracing::warn!(event_id = 5015, item = %item.id, job = %id, "the journal holds this item's job but cannot read it ({reason}); its failure is sent as its result");
                self.acknowledge(&item.id).await;
                Ok(())
            }
            Err(SubmitError::Journal(e)) => Err(format!(
                "the journal did not take item {}: {}",
                item.id,
                crate::report::chain(&e)
            )),
            // Revoked already: what the item asked for holds.
            Err(SubmitError::AlreadyRevoked { serial, .. }) => {
                let done = Outcome::Succeeded(Delivered {
                    serial: Some(serial),
                    revoked: Some(true),
                    ..Default::default()
                });
                self.answer(&item.id, done).await;
                Ok(())
            }
            // The service cannot name a backend; the connector's administrator can.
            Err(e @ SubmitError::NotIssued { .. }) => {
                let reason = format!(
                    "{e} (one a CA issued before or outside certconn is revoked by this \
                     connector's administrator, naming the backend: `certconn submit revoke \
                     --serial SERIAL --backend NAME`)"
                );
                self.refuse(&item.id, reason).await;
                Ok(())
            }
            Err(e) => {
                self.refuse(&item.id, crate::report::chain(&e)).await;
                Ok(())
            }
        }
    }

    /// Tells the service the item is journaled. A lost acknowledgement costs a redelivery, which
    /// the idempotency key makes harmless.
    async fn acknowledge(&self, id: &str) {
        let path = format!("{BASE}/work/{}/ack", path_segment(id));
        match self
            .client
            .call(Method::POST, &path, None, CALL_LIMIT)
            .await
        {
            Ok(a) if a.status.is_success() => {}
            Ok(a) => {
                tracing::warn!(event_id = 5005, item = %id, status = %a.status, "the upstream service did not take an acknowledgement; the item will come again and be recognised")
            }
            Err(e) => {
                tracing::warn!(event_id = 5005, item = %id, error = %e, "could not acknowledge an item; it will come again and be recognised")
            }
        }
    }

    /// Answers an item that cannot be a job with its failure.
    async fn refuse(&self, id: &str, reason: String) {
        self.update(|s| s.refused += 1);
        tracing::warn!(event_id = 5006, item = %id, %reason, "an item from the upstream service cannot be done; its failure is its result");
        self.answer(id, Outcome::Failed { reason }).await;
    }

    /// Sends a result that was never journaled (the item is offered again if this fails, and
    /// answered again then).
    async fn answer(&self, id: &str, outcome: Outcome) {
        let result = ItemResult {
            item_id: id.to_owned(),
            outcome,
        };
        if let Err((e, _)) = self.send_result(&result).await {
            tracing::warn!(event_id = 5007, item = %id, error = %e, "could not send an item's result; the service will offer it again");
        }
    }

    /// `POST /results`: Ok when the service took it, or does not know the item (resending
    /// cannot help then).
    pub(super) async fn send_result(
        &self,
        result: &ItemResult,
    ) -> Result<(), (String, Option<Duration>)> {
        let body = serde_json::to_vec(result).map_err(|e| (e.to_string(), None))?;
        let path = format!("{BASE}/results");
        match self
            .client
            .call(Method::POST, &path, Some(body), CALL_LIMIT)
            .await
        {
            Ok(a) if a.status.is_success() => Ok(()),
            Ok(a) if a.status == StatusCode::NOT_FOUND => {
                tracing::warn!(event_id = 5008, item = %result.item_id, "the upstream service does not know this item; its result is dropped");
                Ok(())
            }
            Ok(a) => Err((
                format!("HTTP {}: {}", a.status, snippet(&a.body)),
                a.retry_after,
            )),
            Err(e) => Err((e, None)),
        }
    }
}

/// An item as the job it asks for.
enum Job {
    Issue(IssueJob),
    Import(ImportJob),
    Revoke(RevokeJob),
}

fn issue_job(w: &IssueWork) -> Result<IssueJob, String> {
    let key = match &w.key_algorithm {
        Some(k) => Some(
            k.parse()
                .map_err(|e: String| format!("key_algorithm: {e}"))?,
        ),
        None => None,
    };
    Ok(IssueJob {
        profile: w.profile.clone(),
        subject: w.subject.clone(),
        sans: w.sans.clone(),
        key,
        recipient_pem: Some(w.device_certificate.clone()),
        csr_pem: None,
        validity_days: w.validity_days,
        renews: None,
    })
}

fn import_job(w: &ImportWork) -> Result<ImportJob, String> {
    let padding_scheme = match &w.padding_scheme {
        Some(p) => p
            .parse()
            .map_err(|e: String| format!("padding_scheme: {e}"))?,
        None => Default::default(),
    };
    Ok(ImportJob {
        profile: w
            .profile
            .clone()
            .unwrap_or_else(|| crate::sources::api::server::DEFAULT_IMPORT_PROFILE.to_owned()),
        pfx_base64: w.pfx.clone(),
        encrypted_password_base64: w.encrypted_password.clone(),
        key_name: w.key_name.clone(),
        padding_scheme,
        user_principal_name: w.user_principal_name.clone(),
        intended_purpose: w
            .intended_purpose
            .parse()
            .map_err(|e: String| format!("intended_purpose: {e}"))?,
        recipient_pem: w.device_certificate.clone(),
    })
}

fn revoke_job(w: &RevokeWork) -> Result<RevokeJob, String> {
    let reason = match &w.reason {
        Some(r) => serde_json::from_value::<RevocationReason>(serde_json::Value::String(r.clone()))
            .map_err(|e| format!("reason: {e}"))?,
        None => RevocationReason::default(),
    };
    Ok(RevokeJob {
        serial: w.serial.clone(),
        reason,
        backend: None,
    })
}

/// What stays as it is in a path segment: RFC 3986's unreserved characters.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `id` as one path segment: unreserved characters as they are, everything else escaped.
fn path_segment(id: &str) -> String {
    percent_encoding::utf8_percent_encode(id, SEGMENT).to_string()
}

/// The start of an error body, for a log line.
pub(super) fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_one_path_segment() {
        assert_eq!(path_segment("item-1_a.b~"), "item-1_a.b~");
        assert_eq!(path_segment("a/b?c d"), "a%2Fb%3Fc%20d");
        assert_eq!(path_segment("é"), "%C3%A9");
    }

    #[test]
    fn fields_that_do_not_parse_are_named() {
        let issue = IssueWork {
            profile: "device".into(),
            subject: "CN=x".into(),
            sans: vec![],
            key_algorithm: Some("dsa-1024".into()),
            validity_days: None,
            device_certificate: "pem".into(),
        };
        assert!(issue_job(&issue).unwrap_err().starts_with("key_algorithm:"));
        let revoke = RevokeWork {
            serial: "01".into(),
            reason: Some("bored".into()),
        };
        assert!(revoke_job(&revoke).unwrap_err().starts_with("reason:"));
    }
}
