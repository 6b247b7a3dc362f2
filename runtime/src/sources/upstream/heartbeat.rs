//! The heartbeat: every `heartbeat_seconds`, who this connector is and how it is; the service
//! answers with its version policy, which becomes this version's [`Lifecycle`] in the status,
//! and an event when its stage changes (deprecated: a warning with the days left;
//! unsupported: an error).

use std::sync::Arc;
use std::time::Duration;

use certconn_connector::{Heartbeat, HeartbeatAnswer, BASE};
use hyper::{Method, StatusCode};
use tokio::sync::watch;

use super::poll::{snippet, CALL_LIMIT};
use super::{pause, Upstream};
use crate::lifecycle::{Lifecycle, Stage};

/// What the heartbeat reports about this instance. The composition root fills it from the
/// registry, the journal and the configuration, which the upstream source does not see.
#[async_trait::async_trait]
pub trait InstanceReport: Send + Sync {
    /// Everything but `last_error`, which the upstream adds.
    async fn heartbeat(&self) -> Heartbeat;
}

/// Why a heartbeat did not get its answer, and how long the service asked to wait.
struct Missed {
    error: String,
    retry_after: Option<Duration>,
}

impl Upstream {
    /// Beats until `shutdown`; a missed beat is retried with backoff, and shown in the status.
    pub(super) async fn heartbeat_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut failures = 0u32;
        loop {
            let beat = tokio::select! {
                b = self.beat() => b,
                _ = shutdown.wait_for(|s| *s) => return,
            };
            let delay = match beat {
                Ok(()) => {
                    failures = 0;
                    self.heartbeat
                }
                Err(missed) => {
                    failures += 1;
                    self.missed(missed, failures)
                }
            };
            if pause(delay, &mut shutdown).await {
                return;
            }
        }
    }

    async fn beat(&self) -> Result<(), Missed> {
        let missed = |error: String| Missed {
            error,
            retry_after: None,
        };
        let mut heartbeat = self.report.heartbeat().await;
        heartbeat.last_error = self.status().last_error;
        let body = serde_json::to_vec(&heartbeat).map_err(|e| missed(e.to_string()))?;
        let answer = self
            .client
            .call(
                Method::POST,
                &format!("{BASE}/heartbeat"),
                Some(body),
                CALL_LIMIT,
            )
            .await
            .map_err(missed)?;
        if answer.status != StatusCode::OK {
            return Err(Missed {
                error: format!("HTTP {}: {}", answer.status, snippet(&answer.body)),
                retry_after: answer.retry_after,
            });
        }
        let answer: HeartbeatAnswer =
            serde_json::from_slice(&answer.body).map_err(|e| missed(format!("its answer: {e}")))?;
        answer
            .version_policy
            .check()
            .map_err(|e| missed(format!("its version policy: {e}")))?;
        let today = crate::lifecycle::today();
        let lifecycle = Lifecycle::of(crate::version::version(), &answer.version_policy, today);
        let mut before = None;
        self.update(|s| {
            s.last_heartbeat = Some(crate::report::rfc3339_ms(crate::journal::now_ms()));
            s.heartbeat_error = None;
            // The service answers: connected, unless the polls say otherwise (a long poll the
            // service holds says nothing until it returns, up to `poll_wait_seconds`).
            if s.last_error.is_none() {
                s.connected = true;
            }
            before = s.lifecycle.replace(lifecycle.clone());
        });
        if before.map(|b| b.stage) != Some(lifecycle.stage) {
            announce(&lifecycle);
        }
        Ok(())
    }

    /// Records a missed beat (logged once per distinct reason) and returns the wait before the
    /// next: the service's `Retry-After`, or backoff with jitter, never longer than the interval.
    fn missed(&self, missed: Missed, failures: u32) -> Duration {
        let mut first = false;
        self.update(|s| {
            first = s.heartbeat_error.as_deref() != Some(missed.error.as_str());
            s.heartbeat_error = Some(missed.error.clone());
        });
        if first {
            tracing::warn!(event_id = 5010, service = %self.client.base(), error = %missed.error, "the upstream service did not take a heartbeat; retrying");
        }
        missed.retry_after.unwrap_or_else(|| {
            Duration::from_millis(crate::jobs::scheduler::backoff_ms(500, 60_000, failures))
                .min(self.heartbeat)
        })
    }
}

/// The event of a new lifecycle stage, at the level its stage deserves.
fn announce(lifecycle: &Lifecycle) {
    let summary = &lifecycle.summary;
    match lifecycle.stage {
        Stage::Current | Stage::Outdated => {
            tracing::info!(event_id = 5011, stage = lifecycle.stage.as_str(), latest = %lifecycle.latest, "version: {summary}")
        }
        Stage::Deprecated => {
            tracing::warn!(event_id = 5012, stage = lifecycle.stage.as_str(), latest = %lifecycle.latest, days_left = lifecycle.days_left, "version: {summary}")
        }
        Stage::Unsupported => {
            tracing::error!(event_id = 5013, stage = lifecycle.stage.as_str(), latest = %lifecycle.latest, "version: {summary}")
        }
    }
}
