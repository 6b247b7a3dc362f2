//! `POST /heartbeat`: the connector says who it is and how it is; the service answers with
//! its version policy. A service sees its fleet of connectors without asking each one, and a
//! connector learns that its version is deprecated before it stops being supported.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::VersionPolicy;

/// What a connector reports about itself, every `heartbeat_seconds`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Heartbeat {
    /// Stable per installation (kept in certconn's data directory).
    pub instance: String,
    /// certconn's version.
    pub version: String,
    /// The connector protocol version it speaks.
    pub protocol: u32,
    /// One entry per configured backend.
    #[serde(default)]
    pub plugins: Vec<PluginReport>,
    /// What is switched on: `fips`, `scep`, `revocation`, `api-tls`, …
    #[serde(default)]
    pub features: Vec<String>,
    /// Jobs in the journal by state (`queued`, `running`, `pending`, `failed`, …).
    #[serde(default)]
    pub queue: BTreeMap<String, i64>,
    /// `ok`, or `degraded` when a backend is not serving.
    pub health: String,
    /// The last fault the connector met talking to this service, until a call succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Where certconn and each plugin it runs stand by its signed update feed; empty when it
    /// reads none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lifecycle: Vec<VersionStanding>,
}

/// A version's stage by the connector's signed update feed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VersionStanding {
    /// `certconn`, or a plugin's name.
    pub name: String,
    pub version: String,
    /// `current`, `outdated`, `deprecated` or `unsupported`.
    pub stage: String,
    /// One line for a person: the stage, the dates, what to do.
    pub summary: String,
}

/// A backend and the plugin serving it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PluginReport {
    pub backend: String,
    pub plugin: String,
    /// The plugin's version; absent when none is loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// `serving`, `quarantined`, `probing`, `drained`, `unloaded` or `not-loaded`.
    pub state: String,
}

/// The service's answer to a heartbeat.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HeartbeatAnswer {
    pub version_policy: VersionPolicy,
}
