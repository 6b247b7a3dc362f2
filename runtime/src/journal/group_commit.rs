//! Group commit for the SQLite journal: the writes of many workers share one transaction and
//! one fsync.
//!
//! With `synchronous = FULL` every commit waits for the disk, and one connection commits one
//! transaction at a time; a job costs several writes (enqueue, lease, signature trail,
//! completion), so a pipeline that commits each alone spends its time queued behind fsyncs.
//! Here one thread owns the writer connection. Callers hand it a write and wait; the thread
//! takes every write that is waiting, runs each inside its own `SAVEPOINT` of one `BEGIN
//! IMMEDIATE` transaction, commits once, and only then answers each caller — the pattern of
//! River's batch completer. Nothing changes for a caller:
//!
//! - a write is acknowledged only after the commit that holds it is durable;
//! - a write that fails is rolled back to its savepoint and its caller gets its error, and the
//!   writes beside it in the batch commit as if it had never run;
//! - a failed commit fails every write of the batch (none of them is acknowledged);
//! - writes run in the order they arrived, so a write sees every write acknowledged before it.
//!
//! No write waits for company: the thread commits whatever is waiting the moment it is free,
//! so a lone write costs one commit, as before, and under load the batch grows by itself while
//! the previous commit is on the disk.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::checkpoint::WalCheckpoints;
use super::memory::ConnectionMemory;
use super::JournalError;

/// Most writes one commit takes: bounds how long the first of them waits for the last.
const MAX_BATCH: usize = 256;

/// A write waiting for the thread.
type Write = Box<dyn Pending>;

/// A caller's write and where its answer goes.
trait Pending: Send {
    /// Runs the write inside the open batch.
    fn run(self: Box<Self>, conn: &Connection) -> Staged;
    /// Answers the caller without running the write: the batch could not start.
    fn refuse(self: Box<Self>, why: &str);
}

/// A write that has run inside the batch: whether it succeeded (its savepoint stays), and how
/// to answer its caller once the commit's fate is known.
struct Staged {
    ok: bool,
    answer: Answer,
}

/// Tells a caller its write's fate: `None` when its batch committed, else why it did not.
type Answer = Box<dyn FnOnce(Option<&str>) + Send>;

struct Op<F, T> {
    write: F,
    reply: oneshot::Sender<Result<T, JournalError>>,
}

impl<F, T> Pending for Op<F, T>
where
    F: FnOnce(&Connection) -> Result<T, JournalError> + Send,
    T: Send + 'static,
{
    fn run(self: Box<Self>, conn: &Connection) -> Staged {
        let Op { write, reply } = *self;
        let outcome = write(conn);
        Staged {
            ok: outcome.is_ok(),
            answer: Box::new(move |commit_failed| {
                let answer = match commit_failed {
                    Some(why) => Err(JournalError::Backend(why.into())),
                    None => outcome,
                };
                // The caller may have gone (its task was cancelled): nothing to tell.
                let _ = reply.send(answer);
            }),
        }
    }

    fn refuse(self: Box<Self>, why: &str) {
        let _ = self.reply.send(Err(JournalError::Backend(why.into())));
    }
}

/// The writer thread's handle; dropping the last one ends the thread.
pub(super) struct GroupCommit {
    writes: mpsc::Sender<Write>,
}

impl GroupCommit {
    /// Starts the thread that owns `conn` from now on, checkpointing the WAL by `checkpoints`.
    pub(super) fn start(
        conn: Connection,
        name: &str,
        checkpoints: WalCheckpoints,
    ) -> Result<Self, JournalError> {
        let (writes, queue) = mpsc::channel::<Write>();
        std::thread::Builder::new()
            .name(format!("certconn-journal-{name}"))
            .spawn(move || run(conn, queue, checkpoints))
            .map_err(|e| JournalError::Backend(Box::new(e)))?;
        Ok(Self { writes })
    }

    /// Runs `write` in the next batch and returns its answer once that batch is committed.
    pub(super) async fn write<T: Send + 'static>(
        &self,
        write: impl FnOnce(&Connection) -> Result<T, JournalError> + Send + 'static,
    ) -> Result<T, JournalError> {
        let (reply, answer) = oneshot::channel();
        self.writes
            .send(Box::new(Op { write, reply }))
            .map_err(|_| JournalError::Closed)?;
        // A write that panicked drops its sender: the caller learns the journal failed it.
        answer.await.map_err(|_| JournalError::Closed)?
    }
}

fn run(conn: Connection, queue: mpsc::Receiver<Write>, checkpoints: WalCheckpoints) {
    WalCheckpoints::install(&conn);
    let mut memory = ConnectionMemory::default();
    let mut batch: Vec<Write> = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = queue.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        commit_batch(&conn, &mut batch);
        checkpoints.after_commit(&conn);
        memory.report(&conn);
    }
}

/// Runs every write of `batch` in one transaction and answers each.
fn commit_batch(conn: &Connection, batch: &mut Vec<Write>) {
    if let Err(e) = run_statement(conn, "BEGIN IMMEDIATE") {
        let why = format!("the journal could not start a transaction: {e}");
        for write in batch.drain(..) {
            write.refuse(&why);
        }
        return;
    }
    let mut staged = Vec::with_capacity(batch.len());
    let mut writes = batch.drain(..);
    for write in writes.by_ref() {
        match run_one(conn, write) {
            Ok(Some(s)) => staged.push(s),
            Ok(None) => {}
            Err(why) => {
                // The transaction is gone or unusable (SQLite rolls back a transaction by
                // itself on a full disk or an I/O error): nothing of this batch is kept.
                let _ = conn.execute_batch("ROLLBACK");
                for s in staged {
                    (s.answer)(Some(&why));
                }
                for write in writes {
                    write.refuse(&why);
                }
                return;
            }
        }
    }
    drop(writes);
    let clock = std::time::Instant::now();
    match run_statement(conn, "COMMIT") {
        Ok(()) => {
            crate::metrics::global().journal_committed(staged.len(), clock.elapsed());
            for s in staged {
                (s.answer)(None);
            }
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            let why = format!("the journal could not commit: {e}");
            for s in staged {
                (s.answer)(Some(&why));
            }
        }
    }
}

/// Runs one of the batch's own statements, prepared once: parsed afresh they were about a
/// twentieth of the writer thread's time (four or five per job).
fn run_statement(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

/// One write inside its savepoint. `Ok(None)` when it panicked (its caller is told by the
/// dropped answer, and its savepoint is rolled back); `Err` when the batch's transaction can no
/// longer be trusted, with the reason. A failed write's answer is its own error; the batch goes
/// on without it.
fn run_one(conn: &Connection, write: Write) -> Result<Option<Staged>, String> {
    if let Err(e) = run_statement(conn, "SAVEPOINT write") {
        let why = format!("the journal could not start a write: {e}");
        write.refuse(&why);
        return Err(why);
    }
    let outcome = catch_unwind(AssertUnwindSafe(|| write.run(conn)));
    let keep = matches!(&outcome, Ok(s) if s.ok);
    let ended = if keep {
        run_statement(conn, "RELEASE write")
    } else {
        conn.execute_batch("ROLLBACK TO write; RELEASE write")
    };
    if ended.is_err() || conn.is_autocommit() {
        let why = match ended {
            Err(e) => format!("the journal's transaction failed: {e}"),
            Ok(()) => "the journal's transaction was rolled back by the database".to_owned(),
        };
        if let Ok(s) = outcome {
            (s.answer)(Some(&why));
        }
        return Err(why);
    }
    Ok(outcome.ok())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rusqlite::params;

    use super::*;

    fn writer(dir: &std::path::Path) -> (GroupCommit, std::path::PathBuf) {
        let path = dir.join("g.sqlite");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL);",
        )
        .unwrap();
        let checkpoints = WalCheckpoints::on_the_writer();
        (GroupCommit::start(conn, "test", checkpoints).unwrap(), path)
    }

    fn rows(path: &std::path::Path) -> Vec<(i64, String)> {
        let conn = Connection::open(path).unwrap();
        let mut stmt = conn.prepare("SELECT k, v FROM t ORDER BY k").unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// Many writers at once: each gets its own answer, a failing write (a NULL where none may be, after
    /// it wrote a row of its own) leaves nothing behind, and the writes beside it are kept.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_failed_write_does_not_spoil_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, path) = writer(dir.path());
        let writer = Arc::new(writer);
        let (commits_before, writes_before) = crate::metrics::global().journal_commit_totals();
        let mut tasks = tokio::task::JoinSet::new();
        for k in 0..200i64 {
            let writer = writer.clone();
            tasks.spawn(async move {
                let answer = writer
                    .write(move |conn| {
                        if k % 10 == 7 {
                            // Writes a row of its own, then fails: both must vanish.
                            conn.execute(
                                "INSERT INTO t (k, v) VALUES (?1, 'partial')",
                                params![1000 + k],
                            )?;
                            conn.execute(
                                "INSERT INTO t (k, v) VALUES (?1, NULL)",
                                params![2000 + k],
                            )?;
                        } else {
                            conn.execute("INSERT INTO t (k, v) VALUES (?1, 'kept')", params![k])?;
                        }
                        Ok(k)
                    })
                    .await;
                (k, answer)
            });
        }
        let mut failed = 0;
        while let Some(r) = tasks.join_next().await {
            let (k, answer) = r.unwrap();
            match answer {
                Ok(got) => assert_eq!(got, k),
                Err(_) => {
                    assert_eq!(k % 10, 7, "write {k} failed");
                    failed += 1;
                }
            }
        }
        assert_eq!(failed, 20);
        // Every write that ran is counted with its commit, the failed ones too (they were in a
        // committed batch); other tests may commit meanwhile, so at least.
        let (commits, writes) = crate::metrics::global().journal_commit_totals();
        assert!(commits > commits_before);
        assert!(writes - writes_before >= 200, "{}", writes - writes_before);
        let rows = rows(&path);
        assert_eq!(rows.len(), 180);
        assert!(rows
            .iter()
            .all(|(k, v)| v == "kept" && k % 10 != 7 && *k < 200));
    }

    /// A write sees every write acknowledged before it, and a panicking write fails only its
    /// own caller.
    #[tokio::test]
    async fn writes_run_in_order_and_a_panic_is_contained() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, path) = writer(dir.path());
        writer
            .write(|conn| Ok(conn.execute("INSERT INTO t (k, v) VALUES (1, 'a')", [])?))
            .await
            .unwrap();
        let seen: String = writer
            .write(|conn| Ok(conn.query_row("SELECT v FROM t WHERE k = 1", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(seen, "a");
        let panicked = writer
            .write(|conn| -> Result<(), JournalError> {
                conn.execute("INSERT INTO t (k, v) VALUES (2, 'b')", [])?;
                panic!("a write that panics");
            })
            .await;
        assert!(
            matches!(panicked, Err(JournalError::Closed)),
            "{panicked:?}"
        );
        writer
            .write(|conn| Ok(conn.execute("INSERT INTO t (k, v) VALUES (3, 'c')", [])?))
            .await
            .unwrap();
        assert_eq!(rows(&path), vec![(1, "a".into()), (3, "c".into())]);
    }
}
