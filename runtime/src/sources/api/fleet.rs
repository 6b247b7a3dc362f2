//! `/v1/fleet`: the instances sharing this journal, as they last reported themselves — which
//! version each runs, which backends it serves, whether it is still there — and the warnings an
//! operator acts on: versions that differ, instances gone quiet, a backend nobody serves.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::server::{ApiError, AppState, ErrorBody};
use crate::journal::InstanceRecord;

/// How many heartbeats an instance may miss before it is `missing`.
pub const MISSED_BEATS: u64 = 3;

/// One instance of the fleet.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FleetInstance {
    #[serde(flatten)]
    pub instance: InstanceRecord,
    /// `up`, or `missing` when it has not reported for three heartbeats (stopped, crashed, or
    /// cut off from the journal).
    pub state: String,
    /// Milliseconds since its last report, by the journal's clock.
    pub last_seen_ms_ago: i64,
    /// True for the instance that answered.
    pub this: bool,
    /// Where its certconn and plugin versions stand by this instance's update feed; empty
    /// without a feed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lifecycle: Vec<certconn_connector::VersionStanding>,
}

/// Judges a version of `certconn` or a plugin by the update feed: `(name, version)`.
pub type Judge<'a> = &'a dyn Fn(&str, &str) -> Option<crate::lifecycle::Lifecycle>;

/// `GET /v1/fleet`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FleetView {
    pub instances: Vec<FleetInstance>,
    /// The certconn versions the instances that are up run, each once.
    pub versions: Vec<String>,
    /// What an operator should look at; empty when all is well.
    pub warnings: Vec<String>,
}

/// The fleet as `records` (read at `now`, the journal's clock) shows it, from instance
/// `me`'s point of view; instances silent for longer than `missed_after_ms` are missing.
pub fn view(
    records: Vec<InstanceRecord>,
    now: i64,
    me: &str,
    missed_after_ms: i64,
    judge: Judge<'_>,
) -> FleetView {
    let instances: Vec<FleetInstance> = records
        .into_iter()
        .map(|r| {
            let ago = (now - r.last_seen).max(0);
            let mut lifecycle: Vec<_> = judge("certconn", &r.version)
                .map(|l| l.standing("certconn"))
                .into_iter()
                .collect();
            for (plugin, version) in plugin_versions(&r) {
                if !lifecycle
                    .iter()
                    .any(|s| s.name == plugin && s.version == version)
                {
                    lifecycle.extend(judge(&plugin, &version).map(|l| l.standing(&plugin)));
                }
            }
            FleetInstance {
                lifecycle,
                state: if ago > missed_after_ms {
                    "missing"
                } else {
                    "up"
                }
                .into(),
                last_seen_ms_ago: ago,
                this: r.id == me,
                instance: r,
            }
        })
        .collect();
    let up: Vec<&FleetInstance> = instances.iter().filter(|i| i.state == "up").collect();
    let mut versions: Vec<String> = up.iter().map(|i| i.instance.version.clone()).collect();
    versions.sort();
    versions.dedup();
    let mut warnings = Vec::new();
    if versions.len() > 1 {
        let by_version = versions
            .iter()
            .map(|v| {
                let ids: Vec<&str> = up
                    .iter()
                    .filter(|i| &i.instance.version == v)
                    .map(|i| i.instance.id.as_str())
                    .collect();
                format!("{v} on {}", ids.join(", "))
            })
            .collect::<Vec<_>>()
            .join("; ");
        warnings.push(format!(
            "the instances run different certconn versions ({by_version}); finish the upgrade \
             or roll it back"
        ));
    }
    for i in instances.iter().filter(|i| i.state == "missing") {
        warnings.push(format!(
            "instance {} on {} has not reported for {} s: stopped, crashed or cut off from the \
             journal (certconn fleet forget {} once it is decommissioned)",
            i.instance.id,
            i.instance.host,
            i.last_seen_ms_ago / 1000,
            i.instance.id
        ));
    }
    for i in &up {
        for s in i
            .lifecycle
            .iter()
            .filter(|s| matches!(s.stage.as_str(), "deprecated" | "unsupported"))
        {
            warnings.push(format!(
                "instance {}: {} {}",
                i.instance.id, s.name, s.summary
            ));
        }
    }
    for i in up.iter().filter(|i| i.instance.health != "ok") {
        warnings.push(format!(
            "instance {} is {}: a backend it configures is not serving",
            i.instance.id, i.instance.health
        ));
    }
    // A backend some instance configures but no instance that is up serves: its jobs wait.
    let configured: std::collections::BTreeSet<String> = instances
        .iter()
        .flat_map(|i| backends_of(&i.instance))
        .collect();
    for backend in configured {
        let served = up.iter().any(|i| match &i.instance.serves {
            Some(s) => s.contains(&backend),
            None => backends_of(&i.instance).any(|b| b == backend),
        });
        if !served {
            warnings.push(format!(
                "no instance that is up serves backend {backend:?}: its jobs wait"
            ));
        }
    }
    FleetView {
        instances,
        versions,
        warnings,
    }
}

/// The plugins an instance's report names and their versions (`name VERSION (sha)` → VERSION).
fn plugin_versions(r: &InstanceRecord) -> Vec<(String, String)> {
    r.plugins
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let plugin = p.get("plugin")?.as_str()?.to_owned();
            let version = p
                .get("version")?
                .as_str()?
                .split_whitespace()
                .nth(1)?
                .to_owned();
            Some((plugin, version))
        })
        .collect()
}

/// The backends an instance's report names.
fn backends_of(r: &InstanceRecord) -> impl Iterator<Item = String> + '_ {
    r.plugins
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("backend").and_then(|b| b.as_str()).map(str::to_owned))
}

/// The instances sharing this journal, their versions and health.
#[utoipa::path(
    get,
    path = "/v1/fleet",
    tag = "operations",
    responses(
        (status = 200, description = "The fleet: instances, versions, warnings", body = FleetView),
        (status = 503, description = "The journal is unavailable", body = ErrorBody),
    ),
    security(("token" = []), ("read_token" = []))
)]
pub(super) async fn fleet(State(state): State<AppState>) -> Result<Json<FleetView>, ApiError> {
    let (records, now) = state.fleet.instances().await?;
    let missed_after = i64::try_from(state.fleet_heartbeat.as_millis())
        .unwrap_or(i64::MAX)
        .saturating_mul(MISSED_BEATS as i64);
    let judge = |name: &str, version: &str| {
        state
            .updates
            .as_ref()
            .and_then(|u| u.stage_of(name, version))
    };
    Ok(Json(view(
        records,
        now,
        &state.instance,
        missed_after,
        &judge,
    )))
}

/// Forgets a decommissioned instance. One still running reports itself again at its next
/// heartbeat.
#[utoipa::path(
    delete,
    path = "/v1/fleet/{id}",
    tag = "operations",
    params(("id" = String, Path, description = "The instance id")),
    responses(
        (status = 204, description = "Forgotten"),
        (status = 404, description = "No such instance", body = ErrorBody),
        (status = 503, description = "The journal is unavailable", body = ErrorBody),
    ),
    security(("token" = []))
)]
pub(super) async fn forget(
    State(state): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<axum::http::StatusCode, ApiError> {
    if state.fleet.forget_instance(&id).await? {
        Ok(axum::http::StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            format!("no instance {id:?} in the fleet"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(id: &str, version: &str, last_seen: i64, serves: Option<&[&str]>) -> InstanceRecord {
        InstanceRecord {
            id: id.into(),
            host: format!("{id}.example"),
            version: version.into(),
            plugins: json!([{ "backend": "x" }, { "backend": "y" }]),
            serves: serves.map(|s| s.iter().map(|b| b.to_string()).collect()),
            health: "ok".into(),
            started_at: 0,
            last_seen,
        }
    }

    #[test]
    fn differing_versions_missing_instances_and_unserved_backends_are_warned_of() {
        let v = view(
            vec![
                record("a", "0.1.0", 10_000, Some(&["x"])),
                record("b", "0.2.0", 9_000, Some(&["x"])),
                record("c", "0.2.0", 1_000, None),
            ],
            10_000,
            "a",
            3_000,
            &|_, _| None,
        );
        let states: Vec<_> = v.instances.iter().map(|i| i.state.as_str()).collect();
        assert_eq!(states, ["up", "up", "missing"]);
        assert!(v.instances[0].this && !v.instances[1].this);
        assert_eq!(v.versions, ["0.1.0", "0.2.0"]);
        let all = v.warnings.join("\n");
        assert!(all.contains("0.1.0 on a; 0.2.0 on b"), "{all}");
        assert!(
            all.contains("instance c on c.example has not reported for 9 s"),
            "{all}"
        );
        assert!(all.contains("backend \"y\""), "{all}");
        assert!(!all.contains("backend \"x\""), "{all}");
    }

    #[test]
    fn a_healthy_fleet_has_no_warnings() {
        let v = view(
            vec![
                record("a", "0.1.0", 10_000, None),
                record("b", "0.1.0", 9_500, None),
            ],
            10_000,
            "b",
            3_000,
            &|_, _| None,
        );
        assert!(v.warnings.is_empty(), "{:?}", v.warnings);
        assert_eq!(v.versions, ["0.1.0"]);
    }

    /// Each instance's certconn and plugin versions are judged by the feed; a deprecated one
    /// is warned of, naming the instance.
    #[test]
    fn each_instances_versions_are_judged_by_the_feed() {
        let policy = certconn_connector::VersionPolicy {
            latest: "0.2.0".into(),
            deprecated: vec![certconn_connector::Deprecation {
                version: "0.1.0".into(),
                deprecated_on: "2026-01-01".into(),
                unsupported_after: "2099-01-01".into(),
            }],
        };
        let judge = |name: &str, version: &str| {
            (name == "certconn" || name == "local-ca").then(|| {
                crate::lifecycle::Lifecycle::of(version, &policy, crate::lifecycle::today())
            })
        };
        let mut old = record("a", "0.1.0", 10_000, None);
        old.plugins =
            json!([{ "backend": "x", "plugin": "local-ca", "version": "local-ca 0.2.0 (abcdef)" }]);
        let v = view(
            vec![old, record("b", "0.2.0", 10_000, None)],
            10_000,
            "b",
            3_000,
            &judge,
        );
        let a = &v.instances[0].lifecycle;
        assert_eq!(a.len(), 2, "{a:?}");
        assert_eq!(
            (a[0].name.as_str(), a[0].stage.as_str()),
            ("certconn", "deprecated")
        );
        assert_eq!(
            (a[1].name.as_str(), a[1].stage.as_str()),
            ("local-ca", "current")
        );
        let all = v.warnings.join("\n");
        assert!(
            all.contains("instance a: certconn 0.1.0 is deprecated"),
            "{all}"
        );
        assert!(!all.contains("instance b:"), "{all}");
    }
}
