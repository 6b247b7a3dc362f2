//! Checkpoints of the SQLite journal's write-ahead log, kept off the writer thread.
//!
//! A commit appends pages to the WAL; a checkpoint copies them into the database file, so the
//! WAL can start again from its beginning. SQLite's own policy checkpoints on the connection
//! that commits, once the WAL holds 1,000 pages: with `synchronous = FULL` that copies about
//! 4 MB and syncs both files, and on the journal's one writer thread every write waiting in
//! line waits for that too. Under `certconn bench` that was a checkpoint every 70–80 jobs, and
//! about 70 ms of the writer's time in a 2,000-job run (docs/design/pipeline.md).
//!
//! So the writer only notes the WAL's length after each commit (SQLite's WAL hook), and:
//!
//! - every [`NUDGE_AT`] new pages it wakes a thread with a connection of its own, which runs a
//!   `PASSIVE` checkpoint: it copies what is committed and never blocks a writer, so the
//!   writer goes on committing meanwhile;
//! - from [`WRITER_AT`] pages the writer checkpoints itself, between two batches, as soon as
//!   the thread's last pass left it little to copy (at twice that, whatever is left). A
//!   passive checkpoint never catches up with a writer that never pauses, and SQLite restarts
//!   the WAL only when a write begins with every page copied: under steady load only the
//!   writer can make that moment. Its own checkpoint then copies a few hundred pages, and the
//!   WAL stays bounded.
//!
//! Measured: the writer's time in checkpoints fell from about 70 to about 13 ms per 2,000 jobs.
//!
//! A passive checkpoint copies only what no reader still needs, and SQLite restarts the WAL
//! only once no reader uses it. Readers whose reads overlap without a pause (four read
//! connections, a dashboard and a few scripts polling the status while jobs flow) always hold
//! an older snapshot, so passive checkpoints never finish: the WAL grew by 755 MB in 90 s, and
//! the writer ran a futile checkpoint after each of about 230 commits a second. So at twice
//! [`WRITER_AT`] the writer runs a `RESTART` checkpoint instead: SQLite then waits (at most
//! [`RESTART_WAIT`]) for the reads begun before it to end, while new reads go to the database
//! file, and the next write starts the WAL again. A restart that times out is tried again
//! [`WRITER_AT`] pages later, not at every commit.
//!
//! Durability is unchanged: every checkpoint runs with `synchronous = FULL`, which syncs the WAL
//! before copying and the database file after; a crash in the middle leaves the WAL to be
//! copied again on the next open, as with SQLite's own checkpoints.

use std::cell::Cell;
use std::os::raw::c_int;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc};

use rusqlite::hooks::Wal;
use rusqlite::Connection;

use super::memory::ConnectionMemory;
use super::JournalError;
use crate::metrics::CheckpointBy;

/// WAL pages at which the thread is woken, and again after as many more: SQLite's own
/// checkpoint threshold.
const NUDGE_AT: u32 = 1_000;

/// WAL pages from which the writer restarts the WAL (16 MB of 4 KB pages) — as soon as the
/// thread's last checkpoint left it a small remainder to copy — and twice that, at which it
/// does so whatever is left.
const WRITER_AT: u32 = 4 * NUDGE_AT;

/// How long the writer's `RESTART` checkpoint waits for reads begun before it: far longer than
/// any read of the journal (a CRL of 100,000 revocations reads in about 300 ms), and a pause of
/// every write meanwhile, so bounded.
const RESTART_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

thread_local! {
    /// The WAL's length in pages after the last commit on this thread's connection, as SQLite's
    /// WAL hook tells it (the hook is a plain function: it can only leave the number here).
    static WAL_PAGES: Cell<u32> = const { Cell::new(0) };
}

/// The writer thread's checkpoint policy.
pub(super) struct WalCheckpoints {
    /// Wakes the checkpoint thread; a wake-up already waiting is enough.
    wake: Option<mpsc::SyncSender<()>>,
    nudge_at: u32,
    writer_at: u32,
    /// The WAL's length when the thread was last woken.
    woken_at: Cell<u32>,
    /// The WAL's length the thread's last checkpoint found and copied entirely; the writer's
    /// own checkpoint waits for this to be close to the WAL's length, so that it copies little.
    copied: Arc<AtomicU32>,
    /// The WAL's length when the writer's last `RESTART` timed out (0: none since the WAL
    /// started again); it is tried again [`WRITER_AT`] pages later, not at every commit.
    restart_failed_at: Cell<u32>,
}

impl WalCheckpoints {
    /// Checkpoints in a thread of their own, on `conn` (a second connection to the journal).
    pub(super) fn in_background(conn: Connection, name: &str) -> Result<Self, JournalError> {
        Self::with_bounds(Some(conn), name, NUDGE_AT, WRITER_AT)
    }

    /// No thread: the writer checkpoints at SQLite's own threshold, as SQLite would.
    #[cfg(test)]
    pub(super) fn on_the_writer() -> Self {
        Self::with_bounds(None, "", NUDGE_AT, WRITER_AT).expect("no thread to start")
    }

    fn with_bounds(
        conn: Option<Connection>,
        name: &str,
        nudge_at: u32,
        writer_at: u32,
    ) -> Result<Self, JournalError> {
        let copied = Arc::new(AtomicU32::new(0));
        let wake = match conn {
            Some(conn) => {
                let (wake, woken) = mpsc::sync_channel(1);
                let copied = copied.clone();
                std::thread::Builder::new()
                    .name(format!("certconn-checkpoint-{name}"))
                    .spawn(move || run(&conn, &woken, &copied))
                    .map_err(|e| JournalError::Backend(Box::new(e)))?;
                Some(wake)
            }
            None => None,
        };
        Ok(Self {
            wake,
            nudge_at,
            writer_at,
            woken_at: Cell::new(0),
            copied,
            restart_failed_at: Cell::new(0),
        })
    }

    /// Makes `conn` (the writer's) report the WAL's length after each commit instead of
    /// checkpointing by itself. Call on the thread that will commit.
    pub(super) fn install(conn: &Connection) {
        conn.wal_hook(Some(note_wal_pages));
    }

    /// After the writer's commit: wakes the thread, or checkpoints here so that the WAL starts
    /// again (or when there is no thread).
    pub(super) fn after_commit(&self, conn: &Connection) {
        let pages = WAL_PAGES.with(Cell::take);
        if pages == 0 {
            return;
        }
        self.note_length(pages);
        let copied = self.copied.load(Ordering::Relaxed);
        // The thread has finished what it was last woken for.
        let idle = copied >= self.woken_at.get();
        let Some(wake) = &self.wake else {
            if pages >= self.nudge_at {
                checkpoint(conn, CheckpointBy::Writer);
            }
            return;
        };
        let little_left = pages.saturating_sub(copied) <= self.nudge_at / 4;
        if pages >= self.writer_at.saturating_mul(2) {
            if self.may_restart(pages) && restart(conn).is_none() {
                self.restart_failed_at.set(pages);
                crate::metrics::global().journal_restart_timed_out();
                tracing::warn!(
                    wal_pages = pages,
                    "journal checkpoint: reads went on past {RESTART_WAIT:?}, so the WAL did not start again; trying again {} pages later",
                    self.writer_at
                );
            }
        } else if pages >= self.writer_at && idle && little_left {
            checkpoint(conn, CheckpointBy::Writer);
        } else if pages >= self.woken_at.get().saturating_add(self.nudge_at)
            || (pages >= self.writer_at && idle)
        {
            self.woken_at.set(pages);
            // Full: the thread has a wake-up waiting already. Disconnected: it ended, and the
            // writer's bound still holds the WAL.
            let _ = wake.try_send(());
        }
    }
}

impl WalCheckpoints {
    /// Forgets what was known of the WAL once it started again: it is shorter than then.
    fn note_length(&self, pages: u32) {
        if pages < self.woken_at.get() || pages < self.restart_failed_at.get() {
            self.woken_at.set(0);
            self.restart_failed_at.set(0);
            self.copied.store(0, Ordering::Relaxed);
        }
    }

    /// Whether the writer may try a `RESTART` at `pages`: unless the last one timed out fewer
    /// than [`WRITER_AT`] pages ago.
    fn may_restart(&self, pages: u32) -> bool {
        let failed_at = self.restart_failed_at.get();
        failed_at == 0 || pages >= failed_at.saturating_add(self.writer_at)
    }
}

/// SQLite's WAL hook on the writer's connection: notes the length, checkpoints nothing.
fn note_wal_pages(_: &Wal, pages: c_int) -> rusqlite::Result<()> {
    WAL_PAGES.with(|p| p.set(u32::try_from(pages).unwrap_or(0)));
    Ok(())
}

/// The checkpoint thread: one passive checkpoint per wake-up, until the writer is gone.
fn run(conn: &Connection, woken: &mpsc::Receiver<()>, copied: &AtomicU32) {
    let mut memory = ConnectionMemory::default();
    while woken.recv().is_ok() {
        if let Some(all) = checkpoint(conn, CheckpointBy::Background) {
            copied.store(all, Ordering::Relaxed);
        }
        memory.report(conn);
    }
}

/// One `PASSIVE` checkpoint on `conn`; the WAL's length when it copied every page of it. A
/// failure is logged and left to the next one: the WAL keeps every page until some checkpoint
/// copies it, so nothing is lost by waiting.
fn checkpoint(conn: &Connection, by: CheckpointBy) -> Option<u32> {
    run_checkpoint(conn, by, "PRAGMA wal_checkpoint(PASSIVE)")
}

/// One `RESTART` checkpoint on the writer's `conn`: every page copied, and no reader left on
/// the WAL, so that the next write starts it again. `None` when reads kept it waiting past
/// [`RESTART_WAIT`].
fn restart(conn: &Connection) -> Option<u32> {
    // The connection's own wait for locks, put back afterwards.
    let usual = conn
        .query_row("PRAGMA busy_timeout", [], |r| r.get::<_, u64>(0))
        .map(std::time::Duration::from_millis);
    let set_wait = |wait| {
        if let Err(e) = conn.busy_timeout(wait) {
            tracing::warn!("journal checkpoint: setting the wait for locks: {e}");
        }
    };
    set_wait(RESTART_WAIT);
    let restarted = run_checkpoint(conn, CheckpointBy::Writer, "PRAGMA wal_checkpoint(RESTART)");
    match usual {
        Ok(usual) => set_wait(usual),
        Err(e) => tracing::warn!("journal checkpoint: reading the wait for locks: {e}"),
    }
    restarted
}

fn run_checkpoint(conn: &Connection, by: CheckpointBy, pragma: &str) -> Option<u32> {
    let clock = std::time::Instant::now();
    let ran = conn.query_row(pragma, [], |row| {
        Ok((
            row.get::<_, i64>(0)?,
            row.get::<_, i64>(1)?,
            row.get::<_, i64>(2)?,
        ))
    });
    match ran {
        // Busy: another checkpoint (the thread's, or another process's) holds the WAL; this
        // one did nothing, and the next commit asks again.
        Ok((busy, _, _)) if busy != 0 => None,
        Ok((_, pages, copied)) => {
            crate::metrics::global().journal_checkpointed(by, pages, clock.elapsed());
            (copied == pages).then(|| u32::try_from(pages).unwrap_or(u32::MAX))
        }
        Err(e) => {
            tracing::warn!(by = by.as_str(), "journal checkpoint: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use rusqlite::params;

    use super::super::group_commit::GroupCommit;
    use super::*;

    fn open(path: &std::path::Path) -> Connection {
        let conn = Connection::open(path).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")
            .unwrap();
        conn
    }

    /// A writer on a new database `c.sqlite` in `dir`, with a table whose rows fill about half
    /// a page each.
    fn writer(
        dir: &std::path::Path,
        thread: bool,
        nudge_at: u32,
        writer_at: u32,
    ) -> (GroupCommit, std::path::PathBuf) {
        let path = dir.join("c.sqlite");
        let conn = open(&path);
        conn.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB NOT NULL);")
            .unwrap();
        let beside = thread.then(|| open(&path));
        let checkpoints = WalCheckpoints::with_bounds(beside, "test", nudge_at, writer_at).unwrap();
        (GroupCommit::start(conn, "test", checkpoints).unwrap(), path)
    }

    /// `n` rows, each in a commit of its own.
    async fn write_rows(writer: &GroupCommit, n: i64) {
        for k in 0..n {
            writer
                .write(move |conn| {
                    conn.execute(
                        "INSERT INTO t (k, v) VALUES (?1, zeroblob(2000))",
                        params![k],
                    )?;
                    Ok(())
                })
                .await
                .unwrap();
        }
    }

    /// The WAL's length in pages, read while the writer's connection is open (the last
    /// connection to close checkpoints and removes the WAL).
    fn wal_pages(path: &std::path::Path) -> i64 {
        // A passive checkpoint reports the WAL's length; what it copies changes nothing the
        // tests look at afterwards.
        open(path)
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))
            .unwrap()
    }

    /// Past `nudge_at` the thread copies the WAL into the database file while the writer goes
    /// on (the writer's own bound is out of reach): the file grows to hold the rows. With
    /// SQLite's checkpoint replaced by the hook and no thread, it would not.
    #[tokio::test]
    async fn the_thread_checkpoints_a_growing_log() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, path) = writer(dir.path(), true, 8, u32::MAX);
        write_rows(&writer, 40).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let size = std::fs::metadata(&path).unwrap().len();
            if size >= 40 * 2000 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the database file holds {size} bytes: the WAL was not copied into it"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(writer);
    }

    /// A writer that never pauses leaves the thread no moment to restart the WAL: past
    /// `writer_at` the writer checkpoints itself, and the WAL starts again on its next write.
    /// Without that bound the WAL would hold every one of the 400 rows.
    #[tokio::test]
    async fn the_writer_bounds_the_log_when_the_thread_cannot() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, path) = writer(dir.path(), true, u32::MAX, 64);
        write_rows(&writer, 400).await;
        let pages = wal_pages(&path);
        assert!(pages < 64 + 4, "the WAL holds {pages} pages");
        drop(writer);
    }

    /// A `RESTART` that timed out (a read longer than [`RESTART_WAIT`]) is tried again
    /// `writer_at` pages later, not at the next commit: each try holds every write up to that
    /// long. The WAL starting again forgets the failure.
    #[test]
    fn a_restart_that_timed_out_is_tried_again_only_much_later() {
        let policy = WalCheckpoints::on_the_writer();
        let bound = 2 * WRITER_AT;
        policy.note_length(bound);
        assert!(policy.may_restart(bound));
        policy.restart_failed_at.set(bound);
        for pages in [bound + 1, bound + 10, bound + WRITER_AT - 1] {
            policy.note_length(pages);
            assert!(!policy.may_restart(pages), "tried again at {pages} pages");
        }
        policy.note_length(bound + WRITER_AT);
        assert!(policy.may_restart(bound + WRITER_AT));
        policy.note_length(3);
        assert!(policy.may_restart(bound), "the WAL started again");
    }

    /// A read longer than [`RESTART_WAIT`] makes the writer's `RESTART` give up: the writer
    /// goes on writing (no write fails or hangs), the WAL keeps its pages, and the timeout is
    /// counted for operators.
    #[tokio::test]
    async fn a_read_longer_than_the_restart_waits_is_outlasted_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, path) = writer(dir.path(), true, u32::MAX, 64);
        let reader = open(&path);
        reader.execute_batch("BEGIN").unwrap();
        reader
            .query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))
            .unwrap();
        let timeouts = || crate::metrics::global().journal_restart_timeouts();
        let before = timeouts();
        write_rows(&writer, 100).await;
        assert!(timeouts() > before, "no restart timed out");
        let pages = wal_pages(&path);
        assert!(
            pages >= 2 * 64,
            "the WAL started again under a read: {pages} pages"
        );
        reader.execute_batch("COMMIT").unwrap();
        drop(writer);
    }

    /// Reads that overlap without a pause always hold a snapshot older than the WAL's end, so
    /// no passive checkpoint lets the WAL start again. Past twice `writer_at` the writer's
    /// `RESTART` checkpoint waits for the reads begun before it, and the next write starts
    /// the WAL again. With passive checkpoints alone the WAL held every row.
    #[tokio::test]
    async fn reads_that_never_pause_do_not_keep_the_log_growing() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, path) = writer(dir.path(), true, 16, 64);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // Two connections hand a read to each other: at every moment one of them is in a read
        // transaction, none for longer than a few milliseconds.
        let relay = {
            let (path, stop) = (path.clone(), stop.clone());
            std::thread::spawn(move || {
                let reader = || {
                    let c = open(&path);
                    c.busy_timeout(Duration::from_secs(5)).unwrap();
                    c
                };
                let begin = |c: &Connection| {
                    c.execute_batch("BEGIN").unwrap();
                    c.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))
                        .unwrap();
                };
                let (a, b) = (reader(), reader());
                let (mut reading, mut next) = (&a, &b);
                begin(reading);
                let mut handovers = 0_u32;
                while !stop.load(Ordering::Relaxed) {
                    begin(next);
                    reading.execute_batch("COMMIT").unwrap();
                    std::mem::swap(&mut reading, &mut next);
                    handovers += 1;
                    std::thread::sleep(Duration::from_millis(2));
                }
                reading.execute_batch("COMMIT").unwrap();
                handovers
            })
        };
        write_rows(&writer, 600).await;
        stop.store(true, Ordering::Relaxed);
        let handovers = relay.join().unwrap();
        assert!(
            handovers > 10,
            "the reads overlapped {handovers} times only"
        );
        let pages = wal_pages(&path);
        assert!(
            pages < 2 * 64 + 8,
            "the WAL holds {pages} pages after 600 rows"
        );
        drop(writer);
    }
}
