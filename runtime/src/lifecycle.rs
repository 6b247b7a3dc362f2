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

/// The stage of a version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
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
