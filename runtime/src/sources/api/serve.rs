//! Serving the HTTP routes on a listener, with a deadline for each request's headers.
//!
//! `axum::serve` gives hyper no timer, so hyper reads a request's headers for as long as the
//! client cares to send them: a client that opens connections and sends nothing (or a byte a
//! minute) holds each one open for ever, and a few hundred such connections take every file
//! descriptor the daemon may open, journal and plugins included. The SCEP endpoint and the
//! published CRLs and OCSP face devices on networks nobody vouches for, so every connection
//! here has `api.header_timeout_seconds` to send a request's headers; a keep-alive connection
//! idle as long is closed too (hyper's `header_read_timeout`). The TLS handshake has its own
//! deadline (`tls::TlsListener`), and so do a request's body and the answer's writes, once the
//! headers are in (`deadlines`). The rest is what `axum::serve` does: the peer as
//! [`ConnectInfo`], and a graceful shutdown that lets requests in flight finish.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::watch;
use tower::Service;

use super::deadlines::ListenerDeadlines;
use super::idle::IdleConnections;
use super::tls::Peer;

/// Serves `router` on `listener` until `shutdown` turns true, then waits for the requests in
/// flight. Each connection is entered in `idle`, whence the listener closes it at its limit
/// while it has no request in progress.
pub async fn serve<L>(
    mut listener: L,
    router: Router,
    deadlines: Arc<ListenerDeadlines>,
    idle: Arc<IdleConnections>,
    mut shutdown: watch::Receiver<bool>,
) where
    L: axum::serve::Listener,
    Peer: From<L::Addr>,
{
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(deadlines.header());
    // Every connection's task holds a sender; once all are dropped, every connection is closed.
    let (open, mut all_closed) = tokio::sync::mpsc::channel::<()>(1);
    loop {
        // `accept` waits out failures itself (out of file descriptors and the like).
        let (io, addr) = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let peer = Peer::from(addr);
        let router = router.clone();
        let held = deadlines.clone();
        let registered = Arc::new(idle.register());
        let in_service = registered.clone();
        let service = hyper::service::service_fn(move |request| {
            let in_progress = in_service.request();
            let (mut request, late) = held.hold_body(request);
            request.extensions_mut().insert(ConnectInfo(peer.clone()));
            let answer = router.clone().call(request);
            let held = held.clone();
            async move {
                let answer = answer.await;
                drop(in_progress);
                if late.load(Ordering::Relaxed) {
                    return Ok(held.body_timed_out());
                }
                answer
            }
        });
        let io = TokioIo::new(deadlines.hold_sends(io));
        let connection = http.serve_connection(io, service);
        let mut stop = shutdown.clone();
        let open = open.clone();
        tokio::spawn(async move {
            tokio::pin!(connection);
            let mut closing = false;
            // Closed gracefully, when the daemon stops or the listener needs room: at once if
            // idle, after the answer if a request is in progress.
            let ended = loop {
                tokio::select! {
                    ended = connection.as_mut() => break ended,
                    _ = registered.close_asked(), if !closing => closing = true,
                    _ = stop.wait_for(|stop| *stop), if !closing => closing = true,
                }
                connection.as_mut().graceful_shutdown();
            };
            if let Err(e) = ended {
                tracing::debug!("API connection ended: {e}");
            }
            drop(open);
        });
    }
    drop(open);
    let _ = all_closed.recv().await;
}
