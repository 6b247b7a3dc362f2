//! The SQLite journal's read connections: a few of them, so that one long read (a CRL of
//! 100,000 revocations, the counts of a million jobs) does not hold up the short ones behind
//! it (the job a client waits for, a health check). In WAL mode each reads its own snapshot,
//! beside the writer and beside each other.

use std::sync::{Condvar, Mutex, MutexGuard};

use rusqlite::Connection;

use super::memory::ConnectionMemory;

/// How many read connections a journal opens: more than the two cores of a small connector,
/// so that a long read and a few short ones all go at once.
pub(super) const READERS: usize = 4;

/// The idle read connections, each with what it last reported of its memory.
pub(super) struct Readers {
    idle: Mutex<Vec<(Connection, ConnectionMemory)>>,
    returned: Condvar,
}

/// A read connection taken from [`Readers`], given back when dropped.
pub(super) struct Reader<'a> {
    readers: &'a Readers,
    conn: Option<(Connection, ConnectionMemory)>,
}

impl Readers {
    pub(super) fn new(connections: Vec<Connection>) -> Self {
        Self {
            idle: Mutex::new(
                connections
                    .into_iter()
                    .map(|c| (c, ConnectionMemory::default()))
                    .collect(),
            ),
            returned: Condvar::new(),
        }
    }

    /// A free connection, waiting for one while every one is in use. Reads run on the blocking
    /// pool, where waiting is allowed.
    pub(super) fn get(&self) -> Reader<'_> {
        let mut idle = self.idle();
        loop {
            if let Some(conn) = idle.pop() {
                return Reader {
                    readers: self,
                    conn: Some(conn),
                };
            }
            idle = self.returned.wait(idle).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn idle(&self) -> MutexGuard<'_, Vec<(Connection, ConnectionMemory)>> {
        // Every change under the lock is one push or pop.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl std::ops::Deref for Reader<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        // Taken out only in `drop`.
        &self
            .conn
            .as_ref()
            .expect("a reader holds its connection until dropped")
            .0
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        if let Some((conn, mut memory)) = self.conn.take() {
            // After the read, on its thread, before another may take the connection.
            memory.report(&conn);
            self.readers.idle().push((conn, memory));
            self.readers.returned.notify_one();
        }
    }
}
