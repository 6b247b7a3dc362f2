//! The service's version policy: the latest connector version, and the versions it has
//! deprecated with the dates their support ends. The connector shows where its own version
//! stands; a release is supported for a while after the next one ships (six months, for the
//! connectors certconn replaces), then it is unsupported.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

/// Part of the answer to a heartbeat.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VersionPolicy {
    /// The newest release (`MAJOR.MINOR.PATCH`).
    pub latest: String,
    /// Versions on their way out.
    #[serde(default)]
    pub deprecated: Vec<Deprecation>,
}

/// A version the service still serves, until a date.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Deprecation {
    pub version: String,
    /// When it was deprecated (`YYYY-MM-DD`, UTC).
    pub deprecated_on: String,
    /// The last day it is supported (`YYYY-MM-DD`, UTC); after it, the version is unsupported.
    pub unsupported_after: String,
}

impl VersionPolicy {
    /// A policy whose dates are dates and whose deprecations end after they begin; the reason
    /// otherwise, naming the entry.
    pub fn check(&self) -> Result<(), String> {
        if self.latest.trim().is_empty() {
            return Err("latest: empty".into());
        }
        for (i, d) in self.deprecated.iter().enumerate() {
            let at = |field: &str| format!("deprecated[{i}] ({}).{field}", d.version);
            let on = day_number(&d.deprecated_on)
                .ok_or_else(|| format!("{}: not a YYYY-MM-DD date", at("deprecated_on")))?;
            let until = day_number(&d.unsupported_after)
                .ok_or_else(|| format!("{}: not a YYYY-MM-DD date", at("unsupported_after")))?;
            if until < on {
                return Err(format!(
                    "{}: before deprecated_on {}",
                    at("unsupported_after"),
                    d.deprecated_on
                ));
            }
        }
        Ok(())
    }

    /// The deprecation of `version`, if the policy lists it.
    pub fn deprecation(&self, version: &str) -> Option<&Deprecation> {
        self.deprecated
            .iter()
            .find(|d| compare_versions(&d.version, version) == Ordering::Equal)
    }
}

/// Days since 1970-01-01 of a `YYYY-MM-DD` date; `None` when it is not a date of the
/// Gregorian calendar.
pub fn day_number(date: &str) -> Option<i64> {
    let mut parts = date.trim().splitn(3, '-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return None;
    }
    let (y, m, d): (i64, i64, i64) = (y.parse().ok()?, m.parse().ok()?, d.parse().ok()?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&m) || d < 1 || d > month_days[(m - 1) as usize] {
        return None;
    }
    // Days from the civil date (H. Hinnant's algorithm), with March as the year's first month.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    Some(era * 146_097 + day_of_era - 719_468)
}

/// Orders versions `MAJOR.MINOR.PATCH[-PRE]` by their numbers (`0.10.0` after `0.9.1`); a
/// pre-release comes before its release. Parts that are not numbers compare as text.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let split = |v: &str| -> (Vec<String>, Option<String>) {
        let v = v.trim().trim_start_matches('v');
        let (core, pre) = match v.split_once('-') {
            Some((c, p)) => (c, Some(p.to_owned())),
            None => (v, None),
        };
        (core.split('.').map(str::to_owned).collect(), pre)
    };
    let ((core_a, pre_a), (core_b, pre_b)) = (split(a), split(b));
    for i in 0..core_a.len().max(core_b.len()) {
        let x = core_a.get(i).map(String::as_str).unwrap_or("0");
        let y = core_b.get(i).map(String::as_str).unwrap_or("0");
        let order = match (x.parse::<u64>(), y.parse::<u64>()) {
            (Ok(x), Ok(y)) => x.cmp(&y),
            _ => x.cmp(y),
        };
        if order != Ordering::Equal {
            return order;
        }
    }
    match (pre_a, pre_b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(x), Some(y)) => x.cmp(&y),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_counted_from_the_epoch_and_impossible_ones_refused() {
        assert_eq!(day_number("1970-01-01"), Some(0));
        assert_eq!(day_number("2000-03-01"), Some(11_017));
        assert_eq!(day_number("2026-12-03"), Some(20_790));
        assert_eq!(
            day_number("2024-02-29").map(|d| d + 1),
            day_number("2024-03-01")
        );
        for bad in [
            "2025-02-29",
            "2026-13-01",
            "2026-00-10",
            "26-12-03",
            "2026/12/03",
            "soon",
        ] {
            assert_eq!(day_number(bad), None, "{bad}");
        }
    }

    #[test]
    fn versions_order_by_their_numbers() {
        assert_eq!(compare_versions("0.10.0", "0.9.1"), Ordering::Greater);
        assert_eq!(compare_versions("1.0.0", "v1.0"), Ordering::Equal);
        assert_eq!(compare_versions("1.0.0-rc.1", "1.0.0"), Ordering::Less);
        assert_eq!(compare_versions("0.1.0", "0.1.1"), Ordering::Less);
    }

    #[test]
    fn a_policy_with_a_bad_date_names_the_entry() {
        let policy = VersionPolicy {
            latest: "0.2.0".into(),
            deprecated: vec![Deprecation {
                version: "0.1.0".into(),
                deprecated_on: "2026-12-01".into(),
                unsupported_after: "2026-11-31".into(),
            }],
        };
        let err = policy.check().unwrap_err();
        assert!(
            err.contains("deprecated[0] (0.1.0).unsupported_after"),
            "{err}"
        );
        let fixed = VersionPolicy {
            deprecated: vec![Deprecation {
                unsupported_after: "2027-06-01".into(),
                ..policy.deprecated[0].clone()
            }],
            ..policy
        };
        assert_eq!(fixed.check(), Ok(()));
        assert!(fixed.deprecation("0.1.0").is_some());
        assert!(fixed.deprecation("0.2.0").is_none());
    }
}
