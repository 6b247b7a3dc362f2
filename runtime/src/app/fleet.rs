//! This instance in the fleet's registry: at start and every `fleet.heartbeat_seconds` it
//! reports who it is (id, host, version), its backends and their plugin versions, the backends
//! it serves and its health, in the journal every instance shares. Any instance's
//! `/v1/fleet` then shows the whole fleet, whose versions differ, and who has gone quiet.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::wiring::HeartbeatReport;
use crate::journal::{InstanceRecord, InstanceRegistry};
use crate::sources::upstream::InstanceReport;

/// Reports this instance until `shutdown` turns true.
pub struct FleetHeartbeat {
    pub registry: Arc<dyn InstanceRegistry>,
    pub report: Arc<HeartbeatReport>,
    pub serves: Option<Vec<String>>,
    pub every: Duration,
}

impl FleetHeartbeat {
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let started_at = crate::journal::now_ms();
        let host = host_name();
        let mut failing = false;
        loop {
            let beat = self.report.heartbeat().await;
            let me = InstanceRecord {
                id: beat.instance,
                host: host.clone(),
                version: beat.version,
                plugins: serde_json::to_value(&beat.plugins).unwrap_or_default(),
                serves: self.serves.clone(),
                health: beat.health,
                started_at,
                last_seen: 0,
            };
            match self.registry.report_instance(&me).await {
                Ok(()) if failing => {
                    tracing::info!("fleet: this instance reports itself in the journal again");
                    failing = false;
                }
                Ok(()) => {}
                // The journal being away is reported where work stalls; said once here.
                Err(e) if !failing => {
                    tracing::warn!(
                        "fleet: this instance cannot report itself: {}",
                        crate::report::chain(&e)
                    );
                    failing = true;
                }
                Err(_) => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(self.every) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }
}

/// The machine's name, for telling instances apart in a listing.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}
