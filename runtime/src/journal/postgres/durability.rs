//! What the database promises about a commit, and what certconn asks of it.
//!
//! certconn acknowledges a job (to an API client, a SCEP client, the upstream service) only
//! once the journal has committed it, and signs nothing before its signature-trail entry is
//! committed. On SQLite that is `synchronous = FULL`. On PostgreSQL it rests on two settings
//! the database administrator owns:
//!
//! - `synchronous_commit = off` acknowledges a commit before its WAL is written: a crash of
//!   PostgreSQL (not of the machine) loses the last few hundred milliseconds of commits. It is
//!   a common tuning of a server's or a role's default. Any session may raise it for itself,
//!   so every connection certconn makes turns it back to `on` when the default it finds is
//!   `off` (a stronger level an administrator chose, such as `remote_apply`, is kept).
//! - `fsync = off` leaves the WAL in the operating system's cache: a crash of the machine may
//!   lose or corrupt anything. Only the server's configuration can change it, so certconn says
//!   so at start and in `check-config`.
//! - `full_page_writes = off` leaves a page the machine was writing when it lost power half
//!   old and half new, and the WAL cannot repair it: the jobs on it are lost or corrupt. It is
//!   safe only on a filesystem that never tears a page (ZFS, for one), which certconn cannot
//!   see, so it is said the same way as `fsync`.
//!
//! Behind a pooler in transaction mode (PgBouncer), a session's setting does not follow the
//! transactions to the server's connections; there the role's default must be right:
//! `ALTER ROLE certconn SET synchronous_commit = on` (the `check-config` warning says so).

/// Turns `synchronous_commit` back on for this session when the database's default left it
/// off; one round trip, run on every new connection of the pool.
pub const COMMIT_SYNCHRONOUSLY: &str = "SELECT set_config('synchronous_commit', 'on', false) \
     WHERE current_setting('synchronous_commit') = 'off'";

/// The database's defaults for a new session of this role: `fsync`, `full_page_writes`, and
/// `synchronous_commit` before [`COMMIT_SYNCHRONOUSLY`] changed it (`reset_val` is what `RESET`
/// would give back).
pub const DEFAULTS: &str = "SELECT current_setting('fsync'), current_setting('full_page_writes'), \
     (SELECT reset_val FROM pg_settings WHERE name = 'synchronous_commit')";

/// The settings [`DEFAULTS`] reads.
#[derive(Debug)]
pub struct CommitDefaults {
    pub fsync: String,
    pub full_page_writes: String,
    pub synchronous_commit: String,
}

impl CommitDefaults {
    /// What weakens the journal's promise that an acknowledged job survives a crash; empty
    /// when nothing does.
    pub fn weaknesses(&self) -> Vec<Weakness> {
        let mut found = Vec::new();
        if self.fsync == "off" {
            found.push(Weakness::NoFsync);
        }
        if self.full_page_writes == "off" {
            found.push(Weakness::TornPages);
        }
        if self.synchronous_commit == "off" {
            found.push(Weakness::AsynchronousDefault);
        }
        found
    }
}

/// One setting of the journal's database by which a crash could cost certconn jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weakness {
    /// `fsync = off`: only the server's configuration can change it.
    NoFsync,
    /// `full_page_writes = off`: likewise; harmless only where the filesystem cannot tear a
    /// page.
    TornPages,
    /// `synchronous_commit = off` by default: certconn's own connections turn it on.
    AsynchronousDefault,
}

impl Weakness {
    /// Whether certconn's own connections make up for it.
    pub fn made_up_for(self) -> bool {
        self == Weakness::AsynchronousDefault
    }

    /// One sentence for the log or `check-config`, naming the database at `location`.
    pub fn describe(self, location: &str) -> String {
        match self {
            Weakness::NoFsync => format!(
                "the journal's database ({location}) runs with fsync = off: a crash of its \
                 machine can lose or corrupt jobs certconn has acknowledged; set fsync = on in \
                 the server's postgresql.conf"
            ),
            Weakness::TornPages => format!(
                "the journal's database ({location}) runs with full_page_writes = off: a power \
                 loss while it writes a page can leave the page torn, which its WAL cannot \
                 repair, and the jobs on it lost or corrupt; set full_page_writes = on in the \
                 server's postgresql.conf unless its data is on a filesystem that never tears a \
                 page (ZFS)"
            ),
            Weakness::AsynchronousDefault => format!(
                "the journal's database ({location}) commits asynchronously by default \
                 (synchronous_commit = off); certconn's connections turn it on for themselves, \
                 but behind a pooler in transaction mode they cannot: there run \
                 ALTER ROLE <certconn's role> SET synchronous_commit = on"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults(fsync: &str, full_page_writes: &str, synchronous_commit: &str) -> CommitDefaults {
        CommitDefaults {
            fsync: fsync.into(),
            full_page_writes: full_page_writes.into(),
            synchronous_commit: synchronous_commit.into(),
        }
    }

    #[test]
    fn only_settings_that_lose_acknowledged_commits_are_named() {
        let at = "postgres://certconn@db:5432/certconn";
        for level in ["on", "local", "remote_write", "remote_apply"] {
            assert!(
                defaults("on", "on", level).weaknesses().is_empty(),
                "{level}"
            );
        }
        let all = defaults("off", "off", "off");
        let said: Vec<String> = all.weaknesses().iter().map(|w| w.describe(at)).collect();
        assert_eq!(said.len(), 3, "{said:?}");
        assert!(
            said[0].contains("fsync = off") && said[0].contains(at),
            "{said:?}"
        );
        assert!(
            said[1].contains("full_page_writes = off")
                && said[1].contains(at)
                && said[1].contains("set full_page_writes = on"),
            "{said:?}"
        );
        assert!(
            said[2].contains("synchronous_commit = off")
                && said[2].contains("ALTER ROLE <certconn's role> SET synchronous_commit = on"),
            "{said:?}"
        );
        let made_up: Vec<bool> = all.weaknesses().iter().map(|w| w.made_up_for()).collect();
        assert_eq!(made_up, [false, false, true]);
        assert_eq!(
            defaults("on", "off", "on").weaknesses(),
            [Weakness::TornPages]
        );
    }
}
