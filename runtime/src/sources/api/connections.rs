//! How many connections a listener holds at once (`api.max_connections`), and the file
//! descriptors the process may open for them.
//!
//! A deadline on each handshake and on each request's headers (`serve`, `tls`) bounds how long
//! a silent client holds a connection, not how many it holds: a client that opens connections
//! faster than they time out takes every file descriptor the process may open, and then the
//! journal cannot open its files and a plugin cannot load. So a listener takes a connection
//! only with a permit, from its TCP accept through the TLS handshake to the connection's close.
//! At the limit, when a client comes, the listener takes that one connection beyond the limit
//! and closes the oldest connection idle between requests to make room for it (`idle`); when
//! every connection has a request in progress, that client waits for a slot, and the ones
//! after it wait in the kernel's listen queue (where a client sees a slow connect, not an
//! error) until one closes. Not accepting them, rather than accepting and closing at once, is
//! what nginx's `worker_connections` does: an accepted connection already costs the file
//! descriptor the limit is there to save. The API listener and `api.plain_listen` have a limit
//! each, so a flood on the plain listener, where SCEP clients come, does not lock the
//! administrator out of the API.
//!
//! The limits are worth little if the process's own file limit is lower, and a service's soft
//! limit is 1,024 by default (systemd's `DefaultLimitNOFILE=1024:524288`). So `serve` raises the
//! soft limit to the hard one, as the Go runtime does for every program since 1.19, and says
//! at start when the listeners' limits leave the rest of the process too little.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::idle::IdleConnections;
use super::per_address::{describe_client, AddressSlot, PerAddress};

pub use crate::metrics::ListenerKind;

/// File descriptors the process keeps for itself beside the listeners' connections: the
/// journal's files, plugins being loaded, outbound connections to CAs, the runtime's own.
pub const RESERVED_FILES: u64 = 256;

/// How often a listener at its limit says so in the log.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// How long a connection must have been idle before a listener at its limit closes it for a
/// new client: one taken a moment ago may be a client whose first request is on its way.
const IDLE_BEFORE_CLOSING: Duration = Duration::from_secs(1);

/// How long a listener waits for the slot of a connection it closed before it closes another:
/// an idle one frees it at once, one whose request began as it was chosen after the answer.
const CLOSED_FREES_ITS_SLOT: Duration = Duration::from_secs(10);

/// How full one listener is, as `/v1/health`, `certconn status` and the status page say it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ListenerConnections {
    /// `api` (`api.listen`) or `plain` (`api.plain_listen`).
    pub listener: String,
    /// Connections it holds now, TLS handshakes included.
    pub open: u64,
    /// `api.max_connections`.
    pub max: u64,
    /// It holds `max`: new clients wait in the kernel's queue (a flood, or a limit too low).
    pub at_limit: bool,
}

/// `3 of 1024 connections on the API listener`, and why it matters when it is full.
impl std::fmt::Display for ListenerConnections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of {} connections on the {} listener",
            self.open,
            self.max,
            if self.listener == "api" {
                "API"
            } else {
                &self.listener
            }
        )?;
        if self.at_limit {
            f.write_str(" (at api.max_connections: new clients wait)")?;
        }
        Ok(())
    }
}

/// How full each listener served is: the API's, and the plain one when `plain` is served.
pub fn listener_connections(max_connections: usize, plain: bool) -> Vec<ListenerConnections> {
    let metrics = crate::metrics::global();
    let max = max_connections as u64;
    ListenerKind::ALL
        .into_iter()
        .filter(|kind| plain || *kind == ListenerKind::Api)
        .map(|kind| {
            let open = metrics.api_connections_open(kind);
            ListenerConnections {
                listener: kind.as_str().to_owned(),
                open,
                max,
                at_limit: open >= max,
            }
        })
        .collect()
}

/// A TCP listener that holds at most `max` connections at once, and at most
/// `api.max_connections_per_address` of them from one client address (`per_address`).
pub struct LimitedListener {
    tcp: TcpListener,
    kind: ListenerKind,
    max: usize,
    permits: Arc<Semaphore>,
    /// Its connections between requests, one of which it closes at the limit.
    idle: Arc<IdleConnections>,
    per_address: Arc<PerAddress>,
    /// Under a flood the listener is at its limit at nearly every accept, and out of file
    /// descriptors at every try: once a minute is enough to say either.
    at_limit: OnceAMinute,
    failing: OnceAMinute,
    refused: OnceAMinute,
}

/// Whether a warning is due: the first time, then once a minute at most.
#[derive(Default)]
pub(super) struct OnceAMinute(Option<std::time::Instant>);

impl OnceAMinute {
    pub(super) fn due(&mut self) -> bool {
        let due = self.0.is_none_or(|at| at.elapsed() >= WARN_EVERY);
        if due {
            self.0 = Some(std::time::Instant::now());
        }
        due
    }
}

impl LimitedListener {
    /// A listener of at most `max` connections, `max_per_address` of them (0: any number)
    /// from one client address.
    pub fn new(tcp: TcpListener, kind: ListenerKind, max: usize, max_per_address: usize) -> Self {
        Self {
            tcp,
            kind,
            max,
            permits: Arc::new(Semaphore::new(max)),
            idle: IdleConnections::new(),
            per_address: PerAddress::new(max_per_address),
            at_limit: OnceAMinute::default(),
            failing: OnceAMinute::default(),
            refused: OnceAMinute::default(),
        }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// Where the server enters each connection it serves, and says when it has a request in
    /// progress.
    pub fn idle_connections(&self) -> Arc<IdleConnections> {
        self.idle.clone()
    }

    /// The next connection, once the listener holds fewer than its limit. At the limit it
    /// waits for a slot, and when a client comes meanwhile, takes it (one, the only connection
    /// it holds beyond the limit) and closes the oldest connection idle between requests for
    /// it. A connection from an address that holds its own limit already is closed as it is
    /// taken, and makes no room. Failures to accept (out of file descriptors and the like) are
    /// waited out, as `axum::serve` does, rather than spun on.
    pub async fn accept(&mut self) -> (Counted<TcpStream>, SocketAddr) {
        loop {
            if let Some(accepted) = self.accept_within_limits().await {
                return accepted;
            }
        }
    }

    /// [`Self::accept`]'s one try: `None` when the connection taken was refused for its
    /// address.
    async fn accept_within_limits(&mut self) -> Option<(Counted<TcpStream>, SocketAddr)> {
        let permits = self.permits.clone();
        if let Ok(permit) = permits.clone().try_acquire_owned() {
            let (io, addr) = self.take().await;
            let slot = self.admit(addr)?;
            return Some((Counted::new(io, permit, slot, self.kind), addr));
        }
        let metrics = crate::metrics::global();
        metrics.api_connection_limit_reached(self.kind);
        if self.at_limit.due() {
            tracing::warn!(
                event_id = 5604,
                "the {} listener holds api.max_connections ({}) connections: it closes the \
                 oldest idle between requests to make room, and while every one has a request \
                 in progress new ones wait in the kernel's queue \
                 (certconn_api_connection_limit_reached_total and \
                 certconn_api_idle_connections_closed_total count each time)",
                self.kind.as_str(),
                self.max
            );
        }
        let (io, addr) = tokio::select! {
            biased;
            permit = slot(&permits) => {
                let (io, addr) = self.take().await;
                let slot = self.admit(addr)?;
                return Some((Counted::new(io, permit, slot, self.kind), addr));
            }
            waiting = self.take() => waiting,
        };
        let address_slot = self.admit(addr)?;
        // A client waits and every slot is taken: make room. A connection idle for less than
        // `IDLE_BEFORE_CLOSING` may be a client whose first request is on its way; if none has
        // been idle that long, look again then. One closed frees its slot at once, or after
        // its answer if a request began meanwhile: another is closed only if that takes long.
        let permit = loop {
            // A slot freed as the client came needs no room made.
            if let Ok(permit) = permits.clone().try_acquire_owned() {
                break permit;
            }
            let wait = if self.idle.close_oldest_idle(IDLE_BEFORE_CLOSING) {
                metrics.api_idle_connection_closed(self.kind);
                CLOSED_FREES_ITS_SLOT
            } else {
                IDLE_BEFORE_CLOSING
            };
            tokio::select! {
                permit = slot(&permits) => break permit,
                _ = tokio::time::sleep(wait) => {}
            }
        };
        Some((Counted::new(io, permit, address_slot, self.kind), addr))
    }

    /// A slot for a connection from `addr`, or `None` (and the connection is to be closed)
    /// when its address holds `api.max_connections_per_address` already.
    fn admit(&mut self, addr: SocketAddr) -> Option<AddressSlot> {
        let slot = self.per_address.enter(addr.ip());
        if slot.is_none() {
            crate::metrics::global().api_connection_refused_per_address(self.kind);
            if self.refused.due() {
                tracing::warn!(
                    event_id = 5607,
                    "the {} listener closed a connection from {}, which holds \
                     api.max_connections_per_address connections already (said once a minute; \
                     certconn_api_connections_refused_per_address_total counts each time)",
                    self.kind.as_str(),
                    describe_client(addr.ip())
                );
            }
        }
        slot
    }

    /// The next connection from the kernel's queue.
    async fn take(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            match self.tcp.accept().await {
                Ok(accepted) => return accepted,
                Err(e) => {
                    if self.failing.due() {
                        tracing::warn!(
                            "the {} listener could not accept a connection: {e} (said once a \
                             minute while it lasts)",
                            self.kind.as_str()
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// A slot of the listener's limit, once one is free.
async fn slot(permits: &Arc<Semaphore>) -> OwnedSemaphorePermit {
    match permits.clone().acquire_owned().await {
        Ok(p) => p,
        // The semaphore lives as long as its listener and is never closed.
        Err(_) => std::future::pending().await,
    }
}

impl axum::serve::Listener for LimitedListener {
    type Io = Counted<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        LimitedListener::accept(self).await
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// A connection that holds its listener's permit and its place in its address's count (and
/// counts in `certconn_api_connections`) until it is dropped.
pub struct Counted<T> {
    io: T,
    kind: ListenerKind,
    _permit: OwnedSemaphorePermit,
    _address: AddressSlot,
}

impl<T> Counted<T> {
    fn new(io: T, permit: OwnedSemaphorePermit, address: AddressSlot, kind: ListenerKind) -> Self {
        crate::metrics::global().api_connection_opened(kind);
        Self {
            io,
            kind,
            _permit: permit,
            _address: address,
        }
    }
}

impl<T> Drop for Counted<T> {
    fn drop(&mut self) {
        crate::metrics::global().api_connection_closed(self.kind);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The process's file limit after [`raise_file_limit`]: `(soft, hard)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLimit {
    pub soft: u64,
    pub hard: u64,
}

/// Raises the soft limit on open files to the hard one (`fs.nr_open` if that is unlimited),
/// and returns the limit now in force. `None` when the limit cannot be read.
pub fn raise_file_limit() -> Option<FileLimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` writes one struct into the pointer it is given, which is valid.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    // An unlimited hard limit still stops at the kernel's `fs.nr_open`; asking for more fails.
    let target = if limit.rlim_max == libc::RLIM_INFINITY {
        std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(1 << 20)
    } else {
        limit.rlim_max
    };
    if limit.rlim_cur < target {
        let raised = libc::rlimit {
            rlim_cur: target,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: `setrlimit` reads the struct we pass and nothing else.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        } else {
            tracing::debug!(
                "raising the open-file limit to {target} failed: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Some(FileLimit {
        soft: limit.rlim_cur,
        hard: limit.rlim_max,
    })
}

/// What to tell the administrator when `listeners` listeners of `max_connections` each leave
/// the process fewer than [`RESERVED_FILES`] of its `limit`; `None` when they fit.
pub fn file_limit_warning(
    limit: FileLimit,
    listeners: u64,
    max_connections: u64,
) -> Option<String> {
    let connections = listeners.saturating_mul(max_connections);
    if connections.saturating_add(RESERVED_FILES) <= limit.soft {
        return None;
    }
    Some(format!(
        "the process may open {} files (its hard limit is {}), and {listeners} listener(s) of \
         api.max_connections = {max_connections} may take {connections} of them, leaving fewer \
         than the {RESERVED_FILES} the journal and plugins need: lower api.max_connections or \
         raise the limit (LimitNOFILE= in the unit, ulimit -n)",
        limit.soft, limit.hard
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn a_limit_that_leaves_the_process_too_few_files_is_named() {
        let systemd_default = FileLimit {
            soft: 1024,
            hard: 524_288,
        };
        let raised = FileLimit {
            soft: 524_288,
            hard: 524_288,
        };
        assert_eq!(file_limit_warning(raised, 2, 1024), None);
        assert_eq!(file_limit_warning(systemd_default, 1, 768), None);
        let warning = file_limit_warning(systemd_default, 1, 769).unwrap();
        assert!(
            warning.contains("may open 1024 files")
                && warning.contains("api.max_connections = 769"),
            "{warning}"
        );
        assert!(file_limit_warning(systemd_default, 2, 1024).is_some());
    }

    #[test]
    fn a_flood_is_said_once_a_minute() {
        let mut said = OnceAMinute::default();
        assert!(said.due());
        assert!(!said.due() && !said.due());
        said.0 = std::time::Instant::now().checked_sub(WARN_EVERY);
        assert!(said.due());
        assert!(!said.due());
    }

    /// At its limit the listener takes no further connection until one closes; the waiting
    /// client is then served, and the count comes back down.
    #[tokio::test]
    async fn a_listener_at_its_limit_takes_the_next_connection_only_when_one_closes() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let mut listener = LimitedListener::new(tcp, ListenerKind::Plain, 2, 0);
        let permits = listener.permits.clone();
        let mut clients = Vec::new();
        let mut held = Vec::new();
        for _ in 0..2 {
            clients.push(TcpStream::connect(addr).await.unwrap());
            held.push(listener.accept().await.0);
        }
        assert_eq!(permits.available_permits(), 0);
        // The third client's TCP handshake completes in the kernel's queue; the listener does
        // not take it while two connections are held.
        let reached =
            crate::metrics::global().api_connection_limit_reached_total(ListenerKind::Plain);
        let mut third = TcpStream::connect(addr).await.unwrap();
        let accept = listener.accept();
        tokio::pin!(accept);
        // A listener that took the third connection would do so at once: its handshake is done.
        assert!(
            tokio::time::timeout(Duration::from_millis(200), accept.as_mut())
                .await
                .is_err(),
            "a third connection was taken at a limit of two"
        );
        assert_eq!(
            crate::metrics::global().api_connection_limit_reached_total(ListenerKind::Plain),
            reached + 1
        );
        drop(held.remove(0));
        let (mut taken, _) = accept.await;
        third.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        taken.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        assert_eq!(permits.available_permits(), 0);
        drop(taken);
        drop(held);
        assert_eq!(permits.available_permits(), 2);
    }

    /// A connection from `ip` to `addr`.
    async fn connect_from(ip: &str, addr: SocketAddr) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
        socket.connect(addr).await.unwrap()
    }

    /// Whether the listener closed `client` without a word.
    async fn closed(client: &mut TcpStream) -> bool {
        let mut byte = [0u8; 1];
        match tokio::time::timeout(Duration::from_secs(10), client.read(&mut byte)).await {
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(_)) | Err(_) => false,
        }
    }

    /// An address at `api.max_connections_per_address` has its next connection closed as it
    /// is taken, while another address's is served; once one of its own closes, it may
    /// connect again.
    #[tokio::test]
    async fn an_address_holding_its_share_has_its_next_connection_closed() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let mut listener = LimitedListener::new(tcp, ListenerKind::Api, 8, 2);
        let metrics = crate::metrics::global();
        let refused = metrics.api_connections_refused_per_address_total(ListenerKind::Api);
        let mut clients = Vec::new();
        let mut held = Vec::new();
        for _ in 0..2 {
            clients.push(connect_from("127.0.0.1", addr).await);
            held.push(listener.accept().await.0);
        }
        // Both are in the kernel's queue before the listener looks: it takes the first,
        // closes it, and takes the second.
        let mut third = connect_from("127.0.0.1", addr).await;
        let mut other = connect_from("127.0.0.2", addr).await;
        let (mut taken, from) = listener.accept().await;
        assert_eq!(from.ip().to_string(), "127.0.0.2");
        assert!(
            closed(&mut third).await,
            "a third connection from one address at 2"
        );
        assert_eq!(
            metrics.api_connections_refused_per_address_total(ListenerKind::Api),
            refused + 1
        );
        other.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        taken.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        drop(held.remove(0));
        let _again = connect_from("127.0.0.1", addr).await;
        let (_, from) = listener.accept().await;
        assert_eq!(from.ip().to_string(), "127.0.0.1");
        assert_eq!(
            metrics.api_connections_refused_per_address_total(ListenerKind::Api),
            refused + 1
        );
    }

    /// At `api.max_connections`, a client whose address holds its share already is closed,
    /// not let in by closing someone else's idle connection.
    #[tokio::test]
    async fn at_the_listener_limit_an_address_over_its_share_is_closed_and_makes_no_room() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let mut listener = LimitedListener::new(tcp, ListenerKind::Plain, 2, 1);
        let idle = listener.idle_connections();
        let mut clients = Vec::new();
        let mut held = Vec::new();
        for ip in ["127.0.0.1", "127.0.0.2"] {
            clients.push(connect_from(ip, addr).await);
            let (io, _) = listener.accept().await;
            // Served, and now idle between requests.
            let registered = idle.register();
            held.push((io, registered));
        }
        // Old enough to be closed for a newcomer (the registry's clock is the real one).
        tokio::time::sleep(IDLE_BEFORE_CLOSING + Duration::from_millis(100)).await;
        let closed_before =
            crate::metrics::global().api_idle_connections_closed_total(ListenerKind::Plain);
        let mut third = connect_from("127.0.0.1", addr).await;
        let accept = listener.accept();
        tokio::pin!(accept);
        tokio::select! {
            _ = accept.as_mut() => panic!("a connection over its address's share was taken"),
            was_closed = closed(&mut third) => assert!(was_closed, "the third connection stayed open"),
        }
        assert_eq!(
            crate::metrics::global().api_idle_connections_closed_total(ListenerKind::Plain),
            closed_before,
            "an idle connection was closed for a client that was then refused"
        );
    }
}
