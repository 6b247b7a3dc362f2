//! The memory the SQLite journal's connections hold, reported as a gauge
//! (`certconn_journal_memory_bytes`).
//!
//! Each of the six connections (the writer, four readers, the checkpoint thread's) keeps a page
//! cache of up to 2 MiB (`cache_size`'s default), its prepared statements and the schema. In an
//! hour's soak malloc's bytes in use rose by 1.3 MB while the journal grew from 19 to 180 MB,
//! and caches filling with the journal was one reading nothing could check: this figure is
//! that check (the next soak found them flat, so the rise is elsewhere). Each connection reports
//! after its own work (a commit, a read, a checkpoint) on its own thread, as SQLite allows only
//! there; the gauge moves by the change, so several journals in one process add up.

use std::ffi::c_int;
use std::time::{Duration, Instant};

use rusqlite::{ffi, Connection};

/// What SQLite counts for one connection, in the gauge's order
/// ([`crate::metrics::JOURNAL_MEMORY_KINDS`]).
const STATUSES: [c_int; 3] = [
    ffi::SQLITE_DBSTATUS_CACHE_USED,
    ffi::SQLITE_DBSTATUS_STMT_USED,
    ffi::SQLITE_DBSTATUS_SCHEMA_USED,
];

/// How often a connection reports at most: SQLite counts a connection's statements and
/// schema by walking every one of them, microseconds a time, too many for every read and
/// commit; a figure a second old is fresh enough for a gauge.
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// One connection's last report; dropping it takes the connection's share off the gauge.
#[derive(Debug, Default)]
pub(super) struct ConnectionMemory {
    reported: [u64; 3],
    at: Option<Instant>,
}

impl ConnectionMemory {
    /// Reads `conn`'s figures and moves the gauge by what changed since the last report, unless
    /// that was less than [`REPORT_EVERY`] ago. Call it on the thread that uses `conn`, after
    /// its work.
    pub(super) fn report(&mut self, conn: &Connection) {
        self.report_at(conn, Instant::now());
    }

    fn report_at(&mut self, conn: &Connection, now: Instant) {
        if self
            .at
            .is_some_and(|at| now.duration_since(at) < REPORT_EVERY)
        {
            return;
        }
        self.at = Some(now);
        let held = bytes_held(conn);
        crate::metrics::global().journal_memory_changed(&self.reported, &held);
        self.reported = held;
    }
}

impl Drop for ConnectionMemory {
    fn drop(&mut self) {
        crate::metrics::global().journal_memory_changed(&self.reported, &[0; 3]);
    }
}

/// `conn`'s page cache, statements and schema in bytes; 0 for a figure SQLite did not give.
fn bytes_held(conn: &Connection) -> [u64; 3] {
    STATUSES.map(|op| {
        let (mut current, mut highwater): (c_int, c_int) = (0, 0);
        // SAFETY: the handle is the open connection `conn` borrows for the call, used on the
        // thread that owns it; SQLite writes two ints through the pointers and keeps neither.
        let rc =
            unsafe { ffi::sqlite3_db_status(conn.handle(), op, &mut current, &mut highwater, 0) };
        if rc == ffi::SQLITE_OK {
            u64::try_from(current).unwrap_or(0)
        } else {
            0
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connections_page_cache_is_counted_while_it_fills_at_most_once_a_second() {
        let conn = Connection::open_in_memory().unwrap();
        let mut memory = ConnectionMemory::default();
        let start = Instant::now();
        memory.report_at(&conn, start);
        let empty = memory.reported;
        conn.execute_batch(
            "CREATE TABLE t (x BLOB);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200)
             INSERT INTO t SELECT zeroblob(4000) FROM n;",
        )
        .unwrap();
        // Within the second of the last report, nothing is read.
        memory.report_at(&conn, start + Duration::from_millis(999));
        assert_eq!(memory.reported, empty);
        memory.report_at(&conn, start + REPORT_EVERY);
        // 200 rows of 4 KB: some 200 pages of 4 KiB in the cache, and the table's schema.
        assert!(
            memory.reported[0] >= empty[0] + 200 * 4096,
            "{:?} after {:?}",
            memory.reported,
            empty
        );
        assert!(memory.reported[2] > empty[2], "{:?}", memory.reported);
        // The process-wide gauge holds at least this connection's share (other tests' journals
        // may add theirs).
        let held = memory.reported;
        let gauge = crate::metrics::global().journal_memory();
        assert!((0..3).all(|i| gauge[i] >= held[i]), "{gauge:?} < {held:?}");
    }
}
