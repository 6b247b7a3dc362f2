//! Keeping the identity current: renewed at two thirds of its lifetime over mutual TLS with
//! the identity itself; a failed renewal retried with backoff while the identity still works;
//! an expired or refused identity reported once, as "re-register".

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::identity::RenewError;
use super::{pause, Upstream};

/// Checked at least this often, so that a clock change or a long suspend is noticed.
const LONGEST_SLEEP: Duration = Duration::from_secs(3600);

impl Upstream {
    /// Renews the identity when due, until `shutdown` or until it must be registered again.
    pub(super) async fn identity_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let Some(identity) = self.identity.clone() else {
            return;
        };
        let mut failures = 0u32;
        loop {
            let now = crate::journal::now_secs();
            if let Some(why) = identity.refusal(now) {
                // Expiry is noticed here; a refusal, where the service said it.
                identity.refuse(why, self.client.base());
                return;
            }
            let due = identity.renew_at();
            if now < due {
                let wait = Duration::from_secs(due - now).min(LONGEST_SLEEP);
                if pause(wait, &mut shutdown).await {
                    return;
                }
                continue;
            }
            match identity.renew(&self.client, &self.instance).await {
                Ok(()) => {
                    self.client.forget_connections();
                    failures = 0;
                    self.update(|s| s.identity_error = None);
                    let status = identity.status(crate::journal::now_secs());
                    tracing::info!(
                        event_id = 5021,
                        serial = %status.serial,
                        not_after = %status.not_after,
                        renew_at = %status.renew_at,
                        "renewed the connector's identity certificate"
                    );
                }
                Err(e) => {
                    failures += 1;
                    let error = e.to_string();
                    let first = {
                        let mut first = false;
                        self.update(|s| {
                            first = s.identity_error.as_deref() != Some(error.as_str());
                            s.identity_error = Some(error.clone());
                        });
                        first
                    };
                    if first && identity.refusal(crate::journal::now_secs()).is_none() {
                        tracing::warn!(
                            event_id = 5023,
                            error = %error,
                            local = matches!(e, RenewError::Local(_)),
                            "could not renew the connector's identity; retrying with backoff while it is still valid"
                        );
                    }
                    let delay = Duration::from_millis(crate::jobs::scheduler::backoff_ms(
                        1_000, 300_000, failures,
                    ));
                    if pause(delay, &mut shutdown).await {
                        return;
                    }
                }
            }
        }
    }
}
