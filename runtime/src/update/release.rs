//! What the feed publishes: a release of the daemon or of one plugin, as a TUF target with its
//! version, channel and date in the target's `custom` field. The release list is all the
//! version lifecycle needs: a release is deprecated from the day a newer one in its channel
//! ships, and unsupported once the feed's grace (`support_days`) has passed.

use std::collections::BTreeMap;

use certconn_connector::{compare_versions, day_number, Deprecation, VersionPolicy};
use serde::{Deserialize, Serialize};

use crate::lifecycle::date_of_day;

/// The delegated role that signs plugin packages: a plugin publisher holds its key and can
/// ship nothing outside [`PLUGIN_PREFIX`], and never a daemon binary (those come only from the
/// top-level targets role).
pub const PLUGINS_ROLE: &str = "plugins";
/// Target paths of daemon binaries: `daemon/VERSION/certconn-linux-ARCH`.
pub const DAEMON_PREFIX: &str = "daemon/";
/// Target paths of plugin packages: `plugins/NAME/VERSION/NAME.wasm`.
pub const PLUGIN_PREFIX: &str = "plugins/";
/// The grace between a newer release and the end of support, unless the feed says otherwise:
/// the six months the connectors certconn replaces give.
pub const DEFAULT_SUPPORT_DAYS: u32 = 183;
/// The key in a target's `custom` object that holds its [`Release`].
pub const CUSTOM_KEY: &str = "certconn";

/// What a release is of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Daemon,
    Plugin,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Daemon => "daemon",
            Self::Plugin => "plugin",
        }
    }
}

/// One release, as a target's `custom.certconn` carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    pub kind: Kind,
    /// `certconn` for the daemon; the plugin's name otherwise.
    pub name: String,
    pub version: String,
    /// `stable`, `preview`, …: an installation follows one channel.
    pub channel: String,
    /// The day it shipped (`YYYY-MM-DD`, UTC): the day the releases before it are deprecated.
    pub released: String,
    /// Days of support the releases before it keep once it ships.
    pub support_days: u32,
}

/// A release with where its bytes are in the feed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Listed {
    #[serde(flatten)]
    pub release: Release,
    /// The TUF target path.
    pub target: String,
    pub length: u64,
    /// SHA-256 of the target, hex.
    pub sha256: String,
}

impl Release {
    /// The target path this release is published under.
    pub fn target_path(&self) -> String {
        match self.kind {
            Kind::Daemon => format!(
                "{DAEMON_PREFIX}{}/certconn-linux-{}",
                self.version,
                std::env::consts::ARCH
            ),
            Kind::Plugin => format!(
                "{PLUGIN_PREFIX}{}/{}/{}.wasm",
                self.name, self.version, self.name
            ),
        }
    }

    /// Whether `file` (its bytes) is what this release says it is, as the daemons that install
    /// it will check: a plugin package whose manifest names this plugin at this version; a
    /// certconn binary (ELF) whose stamp, if it has one, is this version. Asked where a release
    /// is added to a feed, so that a mistake is refused there rather than by every instance.
    pub fn check_file(&self, file: &std::path::Path, bytes: &[u8]) -> Result<(), String> {
        match self.kind {
            Kind::Plugin => {
                // The caller names the file: the reason alone, not "plugin \"FILE\": …" again.
                let package =
                    crate::plugins::package::PluginPackage::from_bytes(file, bytes.to_vec())
                        .map_err(|e| match e {
                            crate::plugins::PluginError::Invalid { reason, .. } => reason,
                            other => crate::report::chain(&other),
                        })?;
                self.check_manifest(&package.manifest)
            }
            Kind::Daemon => {
                if !bytes.starts_with(b"\x7fELF") {
                    return Err("not a certconn binary: not an ELF executable".into());
                }
                match crate::version::stamped(bytes).map_err(|e| e.to_string())? {
                    Some(stamped) if stamped != self.version => Err(format!(
                        "the binary is stamped {stamped}, not {} (`certconn release stamp` \
                         makes a copy that reports {})",
                        self.version, self.version
                    )),
                    _ => Ok(()),
                }
            }
        }
    }

    /// Whether a plugin package's manifest is this release's plugin and version.
    pub fn check_manifest(
        &self,
        manifest: &crate::plugins::manifest::Manifest,
    ) -> Result<(), String> {
        if manifest.name == self.name && manifest.version == self.version {
            return Ok(());
        }
        Err(format!(
            "the feed lists {} {}, but the package's manifest says {} {}",
            self.name, self.version, manifest.name, manifest.version
        ))
    }

    /// Names, versions, channels and dates a feed may carry; the reason otherwise.
    pub fn check(&self) -> Result<(), String> {
        let word = |what: &str, v: &str| {
            if v.is_empty()
                || !v
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                || v.starts_with('.')
            {
                Err(format!(
                    "{what} {v:?} must be letters, digits, '-', '_' or '.', not starting with '.'"
                ))
            } else {
                Ok(())
            }
        };
        word("name", &self.name)?;
        word("version", &self.version)?;
        word("channel", &self.channel)?;
        if semver::Version::parse(self.version.trim_start_matches('v')).is_err() {
            return Err(format!(
                "version {:?} is not a semantic version (MAJOR.MINOR.PATCH)",
                self.version
            ));
        }
        if day_number(&self.released).is_none() {
            return Err(format!(
                "released {:?} is not a date (YYYY-MM-DD)",
                self.released
            ));
        }
        if self.kind == Kind::Daemon && self.name != "certconn" {
            return Err(format!(
                "a daemon release is named \"certconn\", not {:?}",
                self.name
            ));
        }
        if self.support_days == 0 {
            return Err("support_days must be at least 1".into());
        }
        Ok(())
    }
}

/// The version policy of one line of releases (one kind, name and channel): the newest is
/// latest; every other is deprecated on the day the first release newer than it shipped, and
/// supported for that release's `support_days` days from then (the last of them is
/// `unsupported_after`).
pub fn version_policy<'a>(line: impl IntoIterator<Item = &'a Release>) -> Option<VersionPolicy> {
    let mut releases: Vec<&Release> = line.into_iter().collect();
    releases.sort_by(|a, b| compare_versions(&a.version, &b.version));
    let latest = releases.last()?.version.clone();
    let mut deprecated = Vec::new();
    for (i, r) in releases.iter().enumerate() {
        // The first newer release to ship ends this one's time as current.
        let successor = releases[i + 1..]
            .iter()
            .filter(|n| compare_versions(&n.version, &r.version).is_gt())
            .filter_map(|n| day_number(&n.released).map(|d| (d, n.support_days)))
            .min();
        if let Some((shipped, grace)) = successor {
            deprecated.push(Deprecation {
                version: r.version.clone(),
                deprecated_on: date_of_day(shipped),
                unsupported_after: date_of_day(shipped + i64::from(grace) - 1),
            });
        }
    }
    Some(VersionPolicy { latest, deprecated })
}

/// Releases grouped by what they are of: `(kind, name)` → the releases of `channel`.
pub fn lines<'a>(
    releases: &'a [Listed],
    channel: &str,
) -> BTreeMap<(Kind, &'a str), Vec<&'a Listed>> {
    let mut lines: BTreeMap<(Kind, &str), Vec<&Listed>> = BTreeMap::new();
    for l in releases.iter().filter(|l| l.release.channel == channel) {
        lines
            .entry((l.release.kind, l.release.name.as_str()))
            .or_default()
            .push(l);
    }
    for line in lines.values_mut() {
        line.sort_by(|a, b| compare_versions(&a.release.version, &b.release.version));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::{Lifecycle, Stage};

    fn release(version: &str, released: &str) -> Release {
        Release {
            kind: Kind::Daemon,
            name: "certconn".into(),
            version: version.into(),
            channel: "stable".into(),
            released: released.into(),
            support_days: 30,
        }
    }

    /// The lifecycle the feed gives, day by day at its edges: current until the next release
    /// ships, deprecated (with the days left) from that day through the last day of grace,
    /// unsupported from the day after.
    #[test]
    fn a_version_moves_through_its_stages_on_the_feeds_dates() {
        let feed = [
            release("1.0.0", "2026-01-10"),
            release("1.1.0", "2026-03-01"),
        ];
        let policy = version_policy(&feed).unwrap();
        let at = |date: &str| Lifecycle::of("1.0.0", &policy, day_number(date).unwrap());
        // Before 1.1.0 ships — a feed read on that day has no 1.1.0 yet.
        let early = version_policy(&feed[..1]).unwrap();
        assert_eq!(
            Lifecycle::of("1.0.0", &early, day_number("2026-02-28").unwrap()).stage,
            Stage::Current
        );
        let first = at("2026-03-01");
        assert_eq!(first.stage, Stage::Deprecated);
        assert_eq!(first.days_left, Some(29));
        assert_eq!(first.deprecated_on.as_deref(), Some("2026-03-01"));
        assert_eq!(first.unsupported_after.as_deref(), Some("2026-03-30"));
        assert!(first.summary.contains("29 days left"), "{}", first.summary);
        let last = at("2026-03-30");
        assert_eq!((last.stage, last.days_left), (Stage::Deprecated, Some(0)));
        let after = at("2026-03-31");
        assert_eq!(after.stage, Stage::Unsupported);
        assert!(
            after.summary.contains("unsupported since 2026-03-30"),
            "{}",
            after.summary
        );
        assert_eq!(
            Lifecycle::of("1.1.0", &policy, day_number("2027-01-01").unwrap()).stage,
            Stage::Current
        );
    }

    #[test]
    fn the_first_newer_release_to_ship_starts_the_grace() {
        // 1.2.0 shipped before 1.1.1 (a backport): 1.0.0's grace runs from 1.2.0's day.
        let feed = [
            release("1.0.0", "2026-01-01"),
            release("1.2.0", "2026-02-01"),
            release("1.1.1", "2026-02-15"),
        ];
        let policy = version_policy(&feed).unwrap();
        assert_eq!(policy.latest, "1.2.0");
        let d = policy.deprecation("1.0.0").unwrap();
        assert_eq!(d.deprecated_on, "2026-02-01");
        assert_eq!(
            policy.deprecation("1.1.1").unwrap().deprecated_on,
            "2026-02-01"
        );
        assert!(policy.deprecation("1.2.0").is_none());
        assert!(policy.check().is_ok());
    }

    #[test]
    fn bad_release_fields_are_named() {
        let mut r = release("1.0.0", "2026-13-01");
        assert!(r.check().unwrap_err().contains("released"));
        r.released = "2026-01-01".into();
        r.version = "one".into();
        assert!(r.check().unwrap_err().contains("semantic version"));
        r.version = "1.0.0".into();
        r.name = "../etc".into();
        assert!(r.check().unwrap_err().contains("name"));
        r.name = "other".into();
        assert!(r.check().unwrap_err().contains("daemon release"));
    }
}
