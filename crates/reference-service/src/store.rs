//! The reference service's memory: items in the order they were enqueued, who holds them, and
//! the results that came back.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use certconn_connector::ItemResult;
use serde_json::{json, Value};
use tokio::sync::Notify;

enum Held {
    /// Offered to the next poll.
    Ready,
    /// Handed out; offered again after the visibility timeout unless acknowledged.
    Leased(Instant),
    /// The connector journaled it.
    Acked,
}

struct Entry {
    id: String,
    body: Value,
    held: Held,
    handed_out: u32,
    enqueued: Instant,
    /// When its first result came.
    answered: Option<Instant>,
}

#[derive(Default)]
struct Inner {
    /// By enqueue order.
    entries: BTreeMap<u64, Entry>,
    by_id: HashMap<String, u64>,
    results: BTreeMap<String, ItemResult>,
    next: u64,
    redelivered: u64,
    duplicate_results: u64,
    replaced_results: u64,
}

/// Work and results, shared by the handlers.
pub struct Store {
    inner: Mutex<Inner>,
    arrived: Notify,
    visibility: Duration,
    started: Instant,
}

impl Store {
    pub fn new(visibility: Duration) -> Self {
        Self {
            inner: Mutex::default(),
            arrived: Notify::new(),
            visibility,
            started: Instant::now(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An id for an item enqueued without one.
    pub fn next_id(&self) -> String {
        let mut inner = self.lock();
        inner.next += 1;
        format!("item-{}", inner.next)
    }

    /// False when an item with this id exists.
    pub fn enqueue(&self, id: &str, body: Value) -> bool {
        let mut inner = self.lock();
        if inner.by_id.contains_key(id) {
            return false;
        }
        inner.next += 1;
        let seq = inner.next;
        inner.by_id.insert(id.to_owned(), seq);
        inner.entries.insert(
            seq,
            Entry {
                id: id.to_owned(),
                body,
                held: Held::Ready,
                handed_out: 0,
                enqueued: Instant::now(),
                answered: None,
            },
        );
        drop(inner);
        self.arrived.notify_waiters();
        true
    }

    /// Up to `max` items that are ready (or whose holder let the visibility timeout pass),
    /// oldest first, waiting up to `wait` for one.
    pub async fn take(&self, max: usize, wait: Duration) -> Vec<Value> {
        let deadline = Instant::now() + wait;
        loop {
            let arrived = self.arrived.notified();
            let taken = self.take_now(max);
            let left = deadline.saturating_duration_since(Instant::now());
            if !taken.is_empty() || left.is_zero() {
                return taken;
            }
            // Woken by an enqueue, or every second to see leases that ran out.
            let _ = tokio::time::timeout(left.min(Duration::from_secs(1)), arrived).await;
        }
    }

    fn take_now(&self, max: usize) -> Vec<Value> {
        let now = Instant::now();
        let visibility = self.visibility;
        let mut inner = self.lock();
        let mut redelivered = 0;
        let mut out = Vec::new();
        for entry in inner.entries.values_mut() {
            if out.len() == max {
                break;
            }
            let due = match entry.held {
                Held::Ready => true,
                Held::Leased(at) => now.duration_since(at) >= visibility,
                Held::Acked => false,
            };
            if due {
                if entry.handed_out > 0 {
                    redelivered += 1;
                }
                entry.handed_out += 1;
                entry.held = Held::Leased(now);
                out.push(entry.body.clone());
            }
        }
        inner.redelivered += redelivered;
        out
    }

    /// False when there is no such item.
    pub fn ack(&self, id: &str) -> bool {
        let mut inner = self.lock();
        let Some(seq) = inner.by_id.get(id).copied() else {
            return false;
        };
        if let Some(entry) = inner.entries.get_mut(&seq) {
            entry.held = Held::Acked;
        }
        true
    }

    /// Keeps the latest result of each item (a failed item an operator retried in certconn
    /// comes back succeeded); the same result again is counted and changes nothing. False when
    /// there is no such item. A result also acknowledges its item.
    pub fn record(&self, result: ItemResult) -> bool {
        if !self.ack(&result.item_id) {
            return false;
        }
        let mut inner = self.lock();
        if let Some(seq) = inner.by_id.get(&result.item_id).copied() {
            if let Some(entry) = inner.entries.get_mut(&seq) {
                entry.answered.get_or_insert_with(Instant::now);
            }
        }
        match inner.results.get(&result.item_id) {
            Some(held) if *held == result => inner.duplicate_results += 1,
            Some(_) => {
                inner.replaced_results += 1;
                inner.results.insert(result.item_id.clone(), result);
            }
            None => {
                inner.results.insert(result.item_id.clone(), result);
            }
        }
        true
    }

    pub fn result(&self, id: &str) -> Option<ItemResult> {
        self.lock().results.get(id).cloned()
    }

    pub fn results(&self) -> Vec<ItemResult> {
        self.lock().results.values().cloned().collect()
    }

    /// Per answered item, in milliseconds on the service's clock: when it was enqueued (since
    /// the service started) and how long until its first result came — the request→result
    /// latency a device-management service sees.
    pub fn timings(&self) -> Value {
        let inner = self.lock();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let timings: Vec<Value> = inner
            .entries
            .values()
            .filter_map(|e| {
                e.answered.map(|answered| {
                    json!({
                        "id": e.id,
                        "enqueued_ms": ms(e.enqueued.duration_since(self.started)),
                        "latency_ms": ms(answered.duration_since(e.enqueued)),
                    })
                })
            })
            .collect();
        json!({ "timings": timings })
    }

    pub fn stats(&self) -> Value {
        let inner = self.lock();
        let count = |f: fn(&Held) -> bool| inner.entries.values().filter(|e| f(&e.held)).count();
        json!({
            "items": inner.entries.len(),
            "ready": count(|h| matches!(h, Held::Ready)),
            "leased": count(|h| matches!(h, Held::Leased(_))),
            "acked": count(|h| matches!(h, Held::Acked)),
            "results": inner.results.len(),
            "redelivered": inner.redelivered,
            "duplicate_results": inner.duplicate_results,
            "replaced_results": inner.replaced_results,
            "ids": inner.entries.values().map(|e| e.id.clone()).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str) -> Value {
        json!({ "id": id, "kind": "revoke", "serial": "01" })
    }

    #[tokio::test]
    async fn an_item_not_acknowledged_is_offered_again_after_the_visibility_timeout() {
        let store = Store::new(Duration::from_millis(500));
        assert!(store.enqueue("a", item("a")));
        assert!(!store.enqueue("a", item("a")), "ids are unique");
        assert!(store.enqueue("b", item("b")));
        assert_eq!(store.take(10, Duration::ZERO).await.len(), 2);
        // Held: nothing to offer until the timeout.
        assert!(store.take(10, Duration::ZERO).await.is_empty());
        assert!(store.ack("a"));
        tokio::time::sleep(Duration::from_millis(600)).await;
        let again = store.take(10, Duration::ZERO).await;
        assert_eq!(again, vec![item("b")]);
        assert_eq!(store.stats()["redelivered"], 1);
    }

    #[tokio::test]
    async fn a_long_poll_returns_when_work_arrives() {
        let store = std::sync::Arc::new(Store::new(Duration::from_secs(60)));
        let waiting = tokio::spawn({
            let store = store.clone();
            async move { store.take(10, Duration::from_secs(30)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(store.enqueue("late", item("late")));
        let got = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the poll returned")
            .unwrap();
        assert_eq!(got, vec![item("late")]);
    }

    #[test]
    fn the_latest_result_is_kept_and_a_repeat_changes_nothing() {
        use certconn_connector::{Delivered, Outcome};
        let store = Store::new(Duration::from_secs(60));
        assert!(store.enqueue("a", item("a")));
        let failed = ItemResult {
            item_id: "a".into(),
            outcome: Outcome::Failed { reason: "x".into() },
        };
        let succeeded = ItemResult {
            item_id: "a".into(),
            outcome: Outcome::Succeeded(Delivered::default()),
        };
        assert!(store.record(failed.clone()));
        assert!(store.record(failed));
        assert!(store.record(succeeded.clone()));
        assert_eq!(store.result("a"), Some(succeeded));
        let timings = store.timings();
        assert_eq!(timings["timings"][0]["id"], "a", "{timings}");
        assert!(timings["timings"][0]["latency_ms"]
            .as_f64()
            .is_some_and(|l| l >= 0.0));
        let stats = store.stats();
        assert_eq!(
            (
                stats["duplicate_results"].as_u64(),
                stats["replaced_results"].as_u64()
            ),
            (Some(1), Some(1))
        );
        assert!(!store.record(ItemResult {
            item_id: "nope".into(),
            outcome: Outcome::Failed {
                reason: String::new()
            },
        }));
    }
}
