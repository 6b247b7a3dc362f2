//! The connections a listener holds between requests, so that at `api.max_connections` it
//! closes one of them to make room rather than keep a new client waiting.
//!
//! A keep-alive connection stays open up to `api.header_timeout_seconds` after its last
//! answer, and one that has not finished its first request's headers as long: at the limit,
//! such connections held every slot while clients with a request to make waited in the
//! kernel's queue. nginx closes its "reusable" connections when it runs out (`worker_connections
//! are not enough, reusing connections`); so does this. A connection with a request in
//! progress, from its headers to its answer, is never chosen: a slow body has its own deadline
//! (`deadlines`), and neither is one idle for less than the listener's minimum (a client just
//! taken may have its first request on the way). The oldest connection goes first, so a flood
//! of silent connections is recycled in favour of whoever connected last.
//!
//! Closing is hyper's graceful shutdown: an idle connection closes at once, one whose request
//! began meanwhile after its answer.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// One listener's served connections, in the order they were taken.
pub struct IdleConnections {
    connections: Mutex<BTreeMap<u64, Arc<Connection>>>,
    next: AtomicU64,
    /// What the connections' idle times count from.
    epoch: Instant,
}

struct Connection {
    /// Requests whose answer is not yet given.
    requests: AtomicUsize,
    /// When the last request's answer was given, or the connection taken: milliseconds
    /// from the registry's epoch.
    idle_since: AtomicU64,
    /// Set when the listener wants this connection closed.
    close: Notify,
}

impl IdleConnections {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            connections: Mutex::default(),
            next: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Enters a connection; it leaves when the handle is dropped.
    pub fn register(self: &Arc<Self>) -> Registered {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let connection = Arc::new(Connection {
            requests: AtomicUsize::new(0),
            idle_since: AtomicU64::new(self.now()),
            close: Notify::new(),
        });
        if let Ok(mut connections) = self.connections.lock() {
            connections.insert(id, connection.clone());
        }
        Registered {
            id,
            connection,
            registry: self.clone(),
        }
    }

    /// Asks the oldest connection that has had no request in progress for at least
    /// `at_least` to close; `false` when there is none.
    pub fn close_oldest_idle(&self, at_least: Duration) -> bool {
        // Nothing has been idle longer than the registry has existed.
        let Some(idle_before) = self.now().checked_sub(at_least.as_millis() as u64) else {
            return false;
        };
        let Ok(mut connections) = self.connections.lock() else {
            return false;
        };
        let idle = connections
            .iter()
            .find(|(_, c)| {
                c.requests.load(Ordering::Acquire) == 0
                    && c.idle_since.load(Ordering::Acquire) <= idle_before
            })
            .map(|(id, c)| (*id, c.clone()));
        match idle {
            Some((id, connection)) => {
                // Out of the registry, so that the next call picks another one while this one
                // closes.
                connections.remove(&id);
                connection.close.notify_one();
                true
            }
            None => false,
        }
    }
}

/// A served connection's place among its listener's connections.
pub struct Registered {
    id: u64,
    connection: Arc<Connection>,
    registry: Arc<IdleConnections>,
}

impl Registered {
    /// A request has begun; it is in progress until the guard is dropped.
    pub fn request(&self) -> RequestInProgress {
        self.connection.requests.fetch_add(1, Ordering::AcqRel);
        RequestInProgress {
            connection: self.connection.clone(),
            registry: self.registry.clone(),
        }
    }

    /// Resolves once the listener wants this connection closed.
    pub async fn close_asked(&self) {
        self.connection.close.notified().await
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Ok(mut connections) = self.registry.connections.lock() {
            connections.remove(&self.id);
        }
    }
}

/// A request in progress on a connection, which is therefore not idle.
pub struct RequestInProgress {
    connection: Arc<Connection>,
    registry: Arc<IdleConnections>,
}

impl Drop for RequestInProgress {
    fn drop(&mut self) {
        // Idle from now, before it counts as idle at all.
        self.connection
            .idle_since
            .store(self.registry.now(), Ordering::Release);
        self.connection.requests.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const NOW: Duration = Duration::ZERO;

    /// The oldest idle connection is asked to close, then the next; a connection with a
    /// request in progress never is, and one that left is not counted.
    #[tokio::test]
    async fn the_oldest_idle_connection_is_closed_first_and_a_busy_one_never() {
        let idle = IdleConnections::new();
        let first = idle.register();
        let busy = idle.register();
        let third = idle.register();
        let gone = idle.register();
        drop(gone);
        let request = busy.request();

        assert!(idle.close_oldest_idle(NOW));
        tokio::time::timeout(Duration::from_secs(10), first.close_asked())
            .await
            .expect("the oldest idle connection was not asked to close");
        assert!(idle.close_oldest_idle(NOW));
        tokio::time::timeout(Duration::from_secs(10), third.close_asked())
            .await
            .expect("the next idle connection was not asked to close");
        // Only the busy one is left.
        assert!(!idle.close_oldest_idle(NOW));
        drop(request);
        assert!(idle.close_oldest_idle(NOW));
        tokio::time::timeout(Duration::from_secs(10), busy.close_asked())
            .await
            .expect("a connection whose request ended was not asked to close");
        assert!(!idle.close_oldest_idle(NOW));
    }

    /// A connection idle for less than the minimum is left alone: it may be a client whose
    /// first request is on its way, or one that has just had an answer.
    #[tokio::test]
    async fn a_connection_idle_for_less_than_the_minimum_is_not_closed() {
        let idle = IdleConnections::new();
        let taken = idle.register();
        assert!(!idle.close_oldest_idle(Duration::from_secs(3600)));
        drop(taken.request());
        assert!(!idle.close_oldest_idle(Duration::from_secs(3600)));
        std::thread::sleep(Duration::from_millis(20));
        assert!(idle.close_oldest_idle(Duration::from_millis(10)));
    }
}
