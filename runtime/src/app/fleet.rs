//! This instance in the fleet's registry: at start and every `fleet.heartbeat_seconds` it
//! reports who it is (id, host, version), its backends and their plugin versions, the backends
//! it serves and its health, in the journal every instance shares. Any instance's
//! `/v1/fleet` then shows the whole fleet, whose versions differ, and who has gone quiet.
//!
//! At the same beat it follows the operators' decisions taken on other instances — unload,
//! load and roll back a plugin, drain and undrain a backend — so that one command acts on the
//! whole fleet. At start it takes up the standing ones (a plugin unloaded, a backend drained
//! while it was away); a rollback is a one-time act and is not repeated at start.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::wiring::HeartbeatReport;
use crate::journal::{FleetDecision, InstanceRecord, InstanceRegistry};
use crate::plugins::Registry;
use crate::sources::upstream::InstanceReport;

/// Reports this instance until `shutdown` turns true.
pub struct FleetHeartbeat {
    pub registry: Arc<dyn InstanceRegistry>,
    /// Where the operators' decisions are applied; `None` for a lone instance (SQLite), whose
    /// decisions stay in its memory.
    pub plugins: Option<Arc<Registry>>,
    pub report: Arc<HeartbeatReport>,
    pub serves: Option<Vec<String>>,
    pub every: Duration,
}

impl FleetHeartbeat {
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let started_at = crate::journal::now_ms();
        let host = host_name();
        let mut failing = false;
        let mut followed = None;
        loop {
            if let Some(plugins) = &self.plugins {
                followed = self.follow_decisions(plugins, followed).await;
            }
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

impl FleetHeartbeat {
    /// Applies the decisions after `followed` (`None`: at start, the standing ones); the last
    /// one seen, or `followed` unchanged when the journal could not be read.
    async fn follow_decisions(&self, plugins: &Registry, followed: Option<i64>) -> Option<i64> {
        let decisions = match self.registry.decisions_after(followed.unwrap_or(0)).await {
            Ok(d) => d,
            Err(_) => return followed,
        };
        let last = decisions.last().map(|d| d.seq).or(followed).unwrap_or(0);
        let me = &self.report.instance;
        match followed {
            Some(_) => {
                for d in decisions.iter().filter(|d| &d.made_by != me) {
                    apply(plugins, d).await;
                }
            }
            None => {
                // The latest standing decision per subject, whoever made it.
                let mut standing = std::collections::BTreeMap::new();
                for d in decisions.iter().filter(|d| d.action != "rollback") {
                    standing.insert(d.subject.clone(), d);
                }
                for d in standing.into_values() {
                    if matches!(d.action.as_str(), "unload" | "drain") {
                        apply(plugins, d).await;
                    }
                }
            }
        }
        Some(last)
    }
}

/// Applies decision `d` to this instance's plugins.
async fn apply(p: &Registry, d: &FleetDecision) {
    let outcome = match d.action.as_str() {
        "unload" => p.unload(&d.subject).await.map(|_| ()),
        "load" => p.reload(&d.subject, true).await.map(|_| ()),
        "rollback" => p.rollback(&d.subject).await.map(|_| ()),
        "drain" => p.drain(&d.subject, true).map(|_| ()),
        "undrain" => p.drain(&d.subject, false).map(|_| ()),
        other => {
            tracing::warn!(action = %other, subject = %d.subject, "fleet: a decision this version does not know; ignored");
            return;
        }
    };
    match outcome {
        Ok(()) => tracing::info!(
            action = %d.action,
            subject = %d.subject,
            by = %d.made_by,
            "fleet: following an operator's decision taken on another instance"
        ),
        Err(e) => tracing::warn!(
            action = %d.action,
            subject = %d.subject,
            by = %d.made_by,
            "fleet: could not follow a decision taken on another instance: {}",
            crate::report::chain(&e)
        ),
    }
}

/// The machine's name, for telling instances apart in a listing. Asked of the kernel
/// (`gethostname`), not read from `/proc/sys/kernel/hostname`: the packaged unit's
/// `ProcSubset=pid` hides `/proc/sys`, and every instance would have been "unknown".
fn host_name() -> String {
    let mut name = [0u8; 256];
    // SAFETY: gethostname writes at most `name.len()` bytes into `name`.
    if unsafe { libc::gethostname(name.as_mut_ptr().cast(), name.len()) } != 0 {
        return "unknown".into();
    }
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    let text = String::from_utf8_lossy(&name[..end]).trim().to_owned();
    if text.is_empty() {
        "unknown".into()
    } else {
        text
    }
}
