//! The instances of a fleet tell each other of work and changes with PostgreSQL's
//! `LISTEN`/`NOTIFY`. Sending is coalesced: however many jobs one instance enqueues or changes
//! in [`THROTTLE`], the others get one notification per channel. Receiving has its own
//! connection, outside the pool, reconnected after a failure; after every (re)connection all
//! workers look once, for whatever was missed meanwhile.

use std::sync::atomic::{AtomicBool, Ordering};
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

/// What this instance has yet to tell the others.
#[derive(Default)]
pub(super) struct Signals {
    work: AtomicBool,
    changes: AtomicBool,
    wake: Notify,
}

impl Signals {
    pub(super) fn work(&self) {
        self.work.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    pub(super) fn changed(&self) {
        self.changes.store(true, Ordering::Release);
        self.wake.notify_one();
    }
}

/// Sends the notifications `signals` collects, at most one per channel per [`THROTTLE`].
pub(super) async fn notify(pool: Pool, signals: std::sync::Arc<Signals>) {
    loop {
        signals.wake.notified().await;
        tokio::time::sleep(THROTTLE).await;
        let work = signals.work.swap(false, Ordering::AcqRel);
        let changes = signals.changes.swap(false, Ordering::AcqRel);
        let sql = match (work, changes) {
            (true, true) => "NOTIFY certconn_work; NOTIFY certconn_changes",
            (true, false) => "NOTIFY certconn_work",
            (false, true) => "NOTIFY certconn_changes",
            (false, false) => continue,
        };
        // A notification that cannot be sent is not lost work: the others poll.
        match pool.get().await {
            Ok(client) => {
                if let Err(e) = client.batch_execute(sql).await {
                    tracing::debug!("journal: NOTIFY: {e}");
                }
            }
            Err(e) => tracing::debug!("journal: NOTIFY: {e}"),
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
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if tx.send(n.channel().to_owned()).is_err() {
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
    while let Some(channel) = rx.recv().await {
        let Some(inner) = inner.upgrade() else {
            return Ok(());
        };
        match channel.as_str() {
            WORK => inner.wake_one(),
            CHANGES => inner.waiters.all_changed(),
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
