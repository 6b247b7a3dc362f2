//! The instances of a fleet tell each other of work and changes with PostgreSQL's
//! `LISTEN`/`NOTIFY`. Sending is coalesced: however many jobs one instance enqueues or changes
//! in [`THROTTLE`], the others get one notification per channel. A change notification names
//! the jobs that changed (their ids, comma-separated), so that on the other instances only
//! those jobs' waiters read the journal; an empty one — more than [`MAX_NAMED`] jobs, a change
//! that names none, or an instance of an earlier version — wakes every waiter. Receiving has its
//! own connection, outside the pool, reconnected after a failure; after every (re)connection all
//! workers and waiters look once, for whatever was missed meanwhile.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::sync::Weak;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::Notify;
use tokio_postgres::AsyncMessage;

use super::connect::Connect;
use super::Inner;

/// Work arrived (enqueue, retry, a lease released at start).
const WORK: &str = "certconn_work";
/// A job changed state.
const CHANGES: &str = "certconn_changes";

/// The longest one instance's notifications are held back to be sent as one.
pub const THROTTLE: Duration = Duration::from_millis(10);

/// How long the listening connection waits before connecting again after it failed.
const RECONNECT: Duration = Duration::from_secs(1);

/// Most jobs one change notification names: a payload holds at most 8000 bytes, and an id
/// with its comma is 33. More changed jobs in one [`THROTTLE`] go as "every job".
pub const MAX_NAMED: usize = 200;

/// What this instance has yet to tell the others.
#[derive(Default)]
pub(super) struct Signals {
    work: AtomicBool,
    changes: Mutex<Changed>,
    wake: Notify,
}

/// Jobs changed here that the others have not been told of.
#[derive(Debug, Default, PartialEq)]
enum Changed {
    #[default]
    Nothing,
    Jobs(BTreeSet<String>),
    /// Jobs that cannot be named, or more than [`MAX_NAMED`].
    All,
}

impl Changed {
    fn add(&mut self, id: &str) {
        match self {
            Changed::All => {}
            Changed::Jobs(ids) if ids.len() >= MAX_NAMED && !ids.contains(id) => {
                *self = Changed::All;
            }
            Changed::Jobs(ids) => {
                ids.insert(id.to_owned());
            }
            Changed::Nothing => *self = Changed::Jobs(BTreeSet::from([id.to_owned()])),
        }
    }

    /// The notification's payload: the ids, or empty for every job. `None`: nothing to send.
    fn payload(&self) -> Option<String> {
        match self {
            Changed::Nothing => None,
            Changed::Jobs(ids) => {
                Some(ids.iter().map(String::as_str).collect::<Vec<_>>().join(","))
            }
            Changed::All => Some(String::new()),
        }
    }
}

/// The jobs a change notification names; `None` when it names none (every job may have
/// changed). Anything that is not a list of ids counts as naming none: waking every waiter is
/// never wrong, only slower.
fn named_jobs(payload: &str) -> Option<Vec<&str>> {
    if payload.is_empty() {
        return None;
    }
    let ids: Vec<&str> = payload.split(',').collect();
    let well_formed = ids
        .iter()
        .all(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric()));
    well_formed.then_some(ids)
}

impl Signals {
    pub(super) fn work(&self) {
        self.work.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Job `id` changed here.
    pub(super) fn job_changed(&self, id: &str) {
        self.changes().add(id);
        self.wake.notify_one();
    }

    /// Jobs changed here that cannot be named.
    pub(super) fn all_changed(&self) {
        *self.changes() = Changed::All;
        self.wake.notify_one();
    }

    fn changes(&self) -> std::sync::MutexGuard<'_, Changed> {
        // Every update under the lock is one assignment or set insertion.
        self.changes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Sends the notifications `signals` collects, at most one per channel per [`THROTTLE`].
pub(super) async fn notify(pool: Pool, signals: std::sync::Arc<Signals>) {
    loop {
        signals.wake.notified().await;
        tokio::time::sleep(THROTTLE).await;
        let work = signals.work.swap(false, Ordering::AcqRel);
        let changes = std::mem::take(&mut *signals.changes()).payload();
        if !work && changes.is_none() {
            continue;
        }
        // A notification that cannot be sent is not lost work: the others poll.
        let client = match pool.get().await {
            Ok(client) => client,
            Err(e) => {
                tracing::debug!("journal: NOTIFY: {e}");
                continue;
            }
        };
        let sent = client
            .execute(
                "SELECT pg_notify(channel, payload) FROM unnest($1::text[], $2::text[]) AS n(channel, payload)",
                &[
                    &[work.then_some(WORK), changes.as_ref().map(|_| CHANGES)]
                        .into_iter()
                        .flatten()
                        .collect::<Vec<&str>>(),
                    &[work.then(String::new), changes]
                        .into_iter()
                        .flatten()
                        .collect::<Vec<String>>(),
                ],
            )
            .await;
        if let Err(e) = sent {
            tracing::debug!("journal: NOTIFY: {e}");
        }
    }
}

/// Receives the fleet's notifications for `inner` until it is dropped.
pub(super) async fn listen(connect: Connect, inner: Weak<Inner>) {
    let mut quiet_failures = false;
    loop {
        match listen_once(&connect, &inner, &mut quiet_failures).await {
            Ok(()) => return,
            Err(e) => {
                // Logged once per outage: the pool's own errors tell the rest.
                if !quiet_failures {
                    tracing::warn!(
                        journal = %connect.location,
                        "journal: the notification connection failed ({e}); polling until it is back"
                    );
                }
                quiet_failures = true;
            }
        }
        tokio::time::sleep(RECONNECT).await;
        if inner.strong_count() == 0 {
            return;
        }
    }
}

/// One connection's life: `Ok` when the journal was dropped, `Err` when the connection failed.
async fn listen_once(
    connect: &Connect,
    inner: &Weak<Inner>,
    quiet_failures: &mut bool,
) -> Result<(), String> {
    let (client, mut connection) = connect
        .pg
        .connect(connect.tls.clone())
        .await
        .map_err(|e| crate::report::chain(&e))?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, String)>();
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if tx
                        .send((n.channel().to_owned(), n.payload().to_owned()))
                        .is_err()
                    {
                        return Ok(());
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {WORK}; LISTEN {CHANGES}"))
        .await
        .map_err(|e| crate::report::chain(&e))?;
    if *quiet_failures {
        tracing::info!(journal = %connect.location, "journal: notifications are back");
    }
    *quiet_failures = false;
    // Whatever happened while nobody listened: everyone looks once.
    match inner.upgrade() {
        Some(inner) => {
            inner.wake_all();
            inner.waiters.all_changed();
        }
        None => return Ok(()),
    }
    while let Some((channel, payload)) = rx.recv().await {
        let Some(inner) = inner.upgrade() else {
            return Ok(());
        };
        match channel.as_str() {
            WORK => inner.wake_one(),
            CHANGES => match named_jobs(&payload) {
                Some(ids) => inner.waiters.jobs_changed(ids),
                None => inner.waiters.all_changed(),
            },
            _ => {}
        }
    }
    match driver.await {
        Ok(Err(e)) => Err(e.to_string()),
        _ if inner.strong_count() == 0 => Ok(()),
        // The server closed the connection cleanly (it shut down): connect again.
        _ => Err("the server closed the connection".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_notification_names_the_jobs_or_says_every_job() {
        let mut changed = Changed::default();
        assert_eq!(changed.payload(), None);
        changed.add("b1");
        changed.add("a2");
        changed.add("b1");
        assert_eq!(changed.payload().as_deref(), Some("a2,b1"));
        assert_eq!(named_jobs("a2,b1"), Some(vec!["a2", "b1"]));

        // One job more than a notification names: every job.
        let mut many = Changed::default();
        for i in 0..MAX_NAMED {
            many.add(&format!("{i:032x}"));
        }
        let payload = many.payload().unwrap();
        assert!(payload.len() <= 8000, "{}", payload.len());
        assert_eq!(named_jobs(&payload).map(|ids| ids.len()), Some(MAX_NAMED));
        many.add(&format!("{:032x}", 0));
        assert!(
            matches!(many, Changed::Jobs(_)),
            "a job named already is not one more"
        );
        many.add("one-more");
        assert_eq!(many, Changed::All);
        assert_eq!(many.payload().as_deref(), Some(""));

        // Empty (every job, as instances of earlier versions send), or not a list of ids.
        for payload in ["", ",", "a,,b", "a;b", "a b"] {
            assert_eq!(named_jobs(payload), None, "{payload:?}");
        }
    }
}
