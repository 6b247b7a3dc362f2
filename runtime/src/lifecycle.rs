//! Where a version stands in its lifecycle: *current*, *outdated* (a newer release exists and no
//! end of support is announced), *deprecated* (supported until a date: a warning with the days
//! left), or *unsupported* (past that date: an error; it may stop working). The connectors
//! certconn replaces show the same three stages to their admins.
//!
//! The policy comes from the upstream service's heartbeat answer today; the signed update
//! feed (issue 14) will give the same shape. A leaf: it knows versions and dates, nothing of
//! where they came from.

use certconn_connector::{compare_versions, day_number, VersionPolicy};
use serde::Serialize;

/// The updater as the API sees it: the update module lives beside the sources (it fetches
/// through their outbound HTTPS), so the API reaches it through this port.
#[async_trait::async_trait]
pub trait Updates: Send + Sync {
    /// `GET /v1/updates`: the feed, and where the daemon and each plugin stand.
    fn status(&self) -> serde_json::Value;
    /// The versions' stages and the feed's state, for `/v1/health`.
    fn summary(&self) -> serde_json::Value;
    /// Reads the feed now and acts on it as the policies say; returns the new status.
    async fn check(&self) -> Result<serde_json::Value, String>;
    /// Where `version` of `name` (`certconn` or a plugin) stands by the feed as last read:
    /// the fleet judges every instance's versions by it.
    fn stage_of(&self, name: &str, version: &str) -> Option<Lifecycle>;
}

impl Lifecycle {
    /// As the connector protocol's heartbeat and the fleet view carry it.
    pub fn standing(&self, name: &str) -> certconn_connector::VersionStanding {
        certconn_connector::VersionStanding {
            name: name.to_owned(),
            version: self.version.clone(),
            stage: self.stage.as_str().to_owned(),
            summary: self.summary.clone(),
        }
    }
}

/// `YYYY-MM-DD` of a day number (days since 1970-01-01, UTC): the inverse of
/// [`certconn_connector::day_number`].
pub fn date_of_day(day: i64) -> String {
    // 1970-01-01 is Julian day 2 440 588.
    let julian = i32::try_from(day + 2_440_588).unwrap_or(i32::MAX);
    match time::Date::from_julian_day(julian) {
        Ok(d) => format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day()),
        Err(_) => "9999-12-31".to_owned(),
    }
}

/// Today's day number (UTC).
pub fn today() -> i64 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    (secs / 86_400) as i64
}

/// The stage of a version.
/// Ordered from best to worst, so that the worst of several is their `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Current,
    Outdated,
    Deprecated,
    Unsupported,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Current => "current",
            Self::Outdated => "outdated",
            Self::Deprecated => "deprecated",
            Self::Unsupported => "unsupported",
        }
    }
}

/// A version's standing under a policy, as the status, the page and the metrics show it.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Lifecycle {
    pub stage: Stage,
    /// The version judged.
    pub version: String,
    /// The newest release.
    pub latest: String,
    /// When this version was deprecated (`YYYY-MM-DD`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deprecated_on: Option<String>,
    /// Its last supported day (`YYYY-MM-DD`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unsupported_after: Option<String>,
    /// Days of support left (0 on the last day; negative once unsupported).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub days_left: Option<i64>,
    /// One line for a person: the stage, the dates, what to do.
    pub summary: String,
}

impl Lifecycle {
    /// `version` under `policy` on day `today` (days since 1970-01-01, UTC).
    pub fn of(version: &str, policy: &VersionPolicy, today: i64) -> Self {
        let mut standing = Self {
            stage: Stage::Current,
            version: version.to_owned(),
            latest: policy.latest.clone(),
            deprecated_on: None,
            unsupported_after: None,
            days_left: None,
            summary: String::new(),
        };
        if let Some(d) = policy.deprecation(version) {
            let last = day_number(&d.unsupported_after);
            standing.deprecated_on = Some(d.deprecated_on.clone());
            standing.unsupported_after = Some(d.unsupported_after.clone());
            standing.days_left = last.map(|last| last - today);
            standing.stage = match standing.days_left {
                Some(left) if left < 0 => Stage::Unsupported,
                _ => Stage::Deprecated,
            };
        } else if compare_versions(version, &policy.latest).is_lt() {
            standing.stage = Stage::Outdated;
        }
        standing.summary = standing.describe();
        standing
    }

    fn describe(&self) -> String {
        match self.stage {
            Stage::Current => format!("{} is the latest version", self.version),
            Stage::Outdated => format!(
                "{} is outdated: {} is the latest version",
                self.version, self.latest
            ),
            Stage::Deprecated => format!(
                "{} is deprecated: supported until {} ({} days left); update to {}",
                self.version,
                self.unsupported_after.as_deref().unwrap_or("?"),
                self.days_left.unwrap_or_default(),
                self.latest
            ),
            Stage::Unsupported => format!(
                "{} is unsupported since {}: it may stop working; update to {}",
                self.version,
                self.unsupported_after.as_deref().unwrap_or("?"),
                self.latest
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use certconn_connector::Deprecation;

    fn policy() -> VersionPolicy {
        VersionPolicy {
            latest: "0.3.0".into(),
            deprecated: vec![Deprecation {
                version: "0.1.0".into(),
                deprecated_on: "2026-06-01".into(),
                unsupported_after: "2026-11-30".into(),
            }],
        }
    }

    #[test]
    fn dates_and_day_numbers_round_trip() {
        for date in ["1970-01-01", "2024-02-29", "2026-12-31", "2027-03-01"] {
            assert_eq!(date_of_day(day_number(date).unwrap()), date);
        }
    }

    #[test]
    fn each_stage_from_the_policy_and_the_day() {
        let today = day_number("2026-11-20").unwrap();
        assert_eq!(
            Lifecycle::of("0.3.0", &policy(), today).stage,
            Stage::Current
        );
        assert_eq!(
            Lifecycle::of("0.4.0-rc.1", &policy(), today).stage,
            Stage::Current
        );
        assert_eq!(
            Lifecycle::of("0.2.0", &policy(), today).stage,
            Stage::Outdated
        );
        let deprecated = Lifecycle::of("0.1.0", &policy(), today);
        assert_eq!(deprecated.stage, Stage::Deprecated);
        assert_eq!(deprecated.days_left, Some(10));
        assert!(deprecated
            .summary
            .contains("until 2026-11-30 (10 days left)"));
        let last_day = day_number("2026-11-30").unwrap();
        assert_eq!(
            Lifecycle::of("0.1.0", &policy(), last_day).stage,
            Stage::Deprecated
        );
        let after = Lifecycle::of("0.1.0", &policy(), last_day + 1);
        assert_eq!(after.stage, Stage::Unsupported);
        assert_eq!(after.days_left, Some(-1));
    }
}
