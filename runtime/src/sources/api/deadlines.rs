//! What a slow client meets once its request's headers are in: a deadline for the request's
//! body, and one for taking the answer.
//!
//! hyper's header deadline (`serve`) ends once the headers are read, and hyper has no other
//! timer: a client that sends the headers of a `POST` and then a byte a minute, or that asks
//! for an answer and never reads it, held its connection for ever. The SCEP endpoint and the
//! OCSP responder take bodies from anyone, so a few hundred such clients kept every
//! connection `api.max_connections` allows, and everyone else waited in the kernel's queue.
//!
//! - **The body** has `api.body_timeout_seconds` from the moment its headers were read, and a
//!   second more for every [`BODY_MIN_RATE`] bytes received, so a large upload on a slow link
//!   still arrives while a trickle does not (Apache's `mod_reqtimeout`, `body=…,MinRate=500`).
//!   A body late past that gets `408 Request Timeout` and the connection is closed.
//! - **The answer**: a write that the client leaves waiting (its window closed, nothing read)
//!   for `api.send_timeout_seconds` closes the connection (nginx's `send_timeout`). Only a
//!   write waiting counts: a long wait for a job's result, with nothing to send, is not a
//!   stall.
//!
//! Each is counted in `certconn_api_client_timeouts_total{listener, phase}` and said in the log
//! (event 5606) at most once a minute per listener.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Bytes, HttpBody};
use axum::response::{IntoResponse, Response};
use hyper::body::{Frame, SizeHint};
use hyper::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::connections::OnceAMinute;
use super::server::ApiError;
use crate::metrics::{ClientTimeout, ListenerKind};

/// Bytes a second a request's body must keep up, on average, once its first
/// `api.body_timeout_seconds` are spent: each one received adds `1 / BODY_MIN_RATE` seconds.
pub const BODY_MIN_RATE: u64 = 500;

/// The deadlines a listener holds its clients to (`[api]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientDeadlines {
    /// A request's headers, and a keep-alive connection's idle time (hyper's own timer).
    pub header: Duration,
    /// A request's body, from its headers, before [`BODY_MIN_RATE`] extends it.
    pub body: Duration,
    /// A write the client leaves waiting.
    pub send: Duration,
}

/// One listener's deadlines and what it says when a client misses one; shared by its
/// connections.
pub struct ListenerDeadlines {
    kind: ListenerKind,
    deadlines: ClientDeadlines,
    said: Mutex<[OnceAMinute; 2]>,
}

impl ListenerDeadlines {
    /// Shared by every connection of the listener `kind`, which the log and metrics name.
    pub fn new(kind: ListenerKind, deadlines: ClientDeadlines) -> Arc<Self> {
        Arc::new(Self {
            kind,
            deadlines,
            said: Mutex::default(),
        })
    }

    /// The header deadline, which hyper keeps itself (`serve`).
    pub fn header(&self) -> Duration {
        self.deadlines.header
    }

    /// `request` with its body held to the body deadline, and the flag that says, once the
    /// router has answered, whether the body missed it.
    pub fn hold_body<B>(
        self: &Arc<Self>,
        request: http::Request<B>,
    ) -> (http::Request<TimedBody<B>>, Arc<AtomicBool>) {
        let late = Arc::new(AtomicBool::new(false));
        let request = request.map(|inner| TimedBody {
            inner,
            started: Instant::now(),
            allowed: self.deadlines.body,
            received: 0,
            timer: None,
            late: late.clone(),
            listener: self.clone(),
        });
        (request, late)
    }

    /// `io` with its writes held to the send deadline.
    pub fn hold_sends<T>(self: &Arc<Self>, io: T) -> TimedSends<T> {
        TimedSends {
            io,
            stalled_since: None,
            listener: self.clone(),
        }
    }

    /// The answer to a request whose body missed its deadline; the connection closes after it.
    pub fn body_timed_out(&self) -> Response {
        let mut response = ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request's body did not arrive in time: api.body_timeout_seconds ({} s) \
                 from its headers, and a second more for every {BODY_MIN_RATE} bytes received",
                self.deadlines.body.as_secs()
            ),
        )
        .into_response();
        response.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
        response
    }

    fn missed(&self, phase: ClientTimeout) {
        crate::metrics::global().api_client_timeout(self.kind, phase);
        let due = self
            .said
            .lock()
            .map(|mut said| said[phase as usize].due())
            .unwrap_or(false);
        if due {
            let (what, setting) = match phase {
                ClientTimeout::Body => ("send a request's body", "api.body_timeout_seconds"),
                ClientTimeout::Send => ("take an answer", "api.send_timeout_seconds"),
            };
            tracing::warn!(
                event_id = 5606,
                "a client of the {} listener took longer than {setting} to {what}; its \
                 connection was closed (said at most once a minute; \
                 certconn_api_client_timeouts_total counts each)",
                self.kind.as_str()
            );
        }
    }
}

/// A request body that fails once it is late: see the module's comment.
pub struct TimedBody<B> {
    inner: B,
    started: Instant,
    allowed: Duration,
    received: u64,
    timer: Option<Pin<Box<Sleep>>>,
    late: Arc<AtomicBool>,
    listener: Arc<ListenerDeadlines>,
}

impl<B> TimedBody<B> {
    fn deadline(&self) -> Instant {
        let earned = Duration::from_millis(self.received.saturating_mul(1000) / BODY_MIN_RATE);
        self.started + self.allowed.saturating_add(earned)
    }
}

/// The error a late body ends with; the router's answer to it is replaced with a 408.
#[derive(Debug, thiserror::Error)]
#[error("the request's body did not arrive in time")]
pub struct BodyTimedOut;

impl<B> HttpBody for TimedBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.late.load(Ordering::Relaxed) {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received = this.received.saturating_add(data.len() as u64);
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        let deadline = this.deadline();
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        if timer.as_mut().poll(cx).is_ready() {
            this.late.store(true, Ordering::Relaxed);
            this.listener.missed(ClientTimeout::Body);
            return Poll::Ready(Some(Err(BodyTimedOut.into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.late.load(Ordering::Relaxed) || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A connection whose writes fail once one has waited `api.send_timeout_seconds` for the
/// client.
pub struct TimedSends<T> {
    io: T,
    stalled_since: Option<Pin<Box<Sleep>>>,
    listener: Arc<ListenerDeadlines>,
}

impl<T> TimedSends<T> {
    /// What a write that returned `poll` means: progress clears the stall; a wait starts or
    /// continues it, and one past the deadline is an error.
    fn watch<R>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<std::io::Result<R>>,
    ) -> Poll<std::io::Result<R>> {
        if poll.is_ready() {
            self.stalled_since = None;
            return poll;
        }
        let send = self.listener.deadlines.send;
        let timer = self
            .stalled_since
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(send)));
        if timer.as_mut().poll(cx).is_ready() {
            self.stalled_since = None;
            self.listener.missed(ClientTimeout::Send);
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "the client took none of the answer for {} s (api.send_timeout_seconds)",
                    send.as_secs()
                ),
            )));
        }
        Poll::Pending
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TimedSends<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TimedSends<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write(cx, buf);
        self.watch(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.io).poll_flush(cx);
        self.watch(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.io).poll_shutdown(cx);
        self.watch(cx, poll)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Real time, not tokio's paused clock (its `test-util` feature in the dev-dependencies
    /// would build tokio, and all that uses it, twice): each test asserts only that a deadline
    /// did not fire early, and gives what must not fire a margin of a second or more.
    fn listener(body: Duration, send: Duration) -> Arc<ListenerDeadlines> {
        ListenerDeadlines::new(
            ListenerKind::Plain,
            ClientDeadlines {
                header: Duration::from_secs(30),
                body,
                send,
            },
        )
    }

    /// A body the test sends a frame at a time.
    struct Fed(tokio::sync::mpsc::Receiver<Bytes>);

    impl HttpBody for Fed {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
        }
    }

    fn fed() -> (tokio::sync::mpsc::Sender<Bytes>, Fed) {
        let (sender, receiver) = tokio::sync::mpsc::channel(4);
        (sender, Fed(receiver))
    }

    const GUARD: Duration = Duration::from_secs(60);

    /// A body that sends its first bytes and then nothing fails at its deadline, not before,
    /// and says it was late.
    #[tokio::test]
    async fn a_body_that_stops_fails_at_its_deadline() {
        let (sender, body) = fed();
        let (request, late) =
            listener(Duration::from_millis(300), GUARD).hold_body(http::Request::new(body));
        let started = Instant::now();
        sender.send(Bytes::from_static(b"ab")).await.unwrap();
        let collected = tokio::time::timeout(GUARD, request.into_body().collect())
            .await
            .expect("a stalled body never ended");
        let err = collected.expect_err("a stalled body was collected");
        assert!(err.is::<BodyTimedOut>(), "{err}");
        assert!(late.load(Ordering::Relaxed));
        // 300 ms, and 2 bytes' worth at 500 bytes a second: 4 ms.
        assert!(started.elapsed() >= Duration::from_millis(304));
        drop(sender);
    }

    /// A body that keeps up the minimum rate arrives however long past the first deadline
    /// it takes.
    #[tokio::test]
    async fn a_body_that_keeps_up_the_rate_arrives_past_the_first_deadline() {
        let (sender, body) = fed();
        let (request, late) =
            listener(Duration::from_millis(200), GUARD).hold_body(http::Request::new(body));
        let started = Instant::now();
        let feed = tokio::spawn(async move {
            // 5,000 bytes (10 s of credit) every 100 ms, ten times: a second in all.
            for _ in 0..10 {
                sender.send(Bytes::from(vec![b'x'; 5000])).await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let body = tokio::time::timeout(GUARD, request.into_body().collect())
            .await
            .expect("the body never ended")
            .expect("a body within the rate failed");
        assert_eq!(body.to_bytes().len(), 50_000);
        assert!(!late.load(Ordering::Relaxed));
        assert!(started.elapsed() >= Duration::from_millis(900));
        feed.await.unwrap();
    }

    /// A write the other side leaves waiting fails at the send deadline, not before.
    #[tokio::test]
    async fn a_write_left_waiting_fails_at_the_send_deadline() {
        let (near, far) = tokio::io::duplex(64);
        let mut io = listener(GUARD, Duration::from_millis(300)).hold_sends(near);
        let started = Instant::now();
        let err = tokio::time::timeout(GUARD, io.write_all(&[7u8; 256]))
            .await
            .expect("the write never ended")
            .expect_err("a write nobody read was taken");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
        assert!(started.elapsed() >= Duration::from_millis(300));
        drop(far);
    }

    /// A slow reader that keeps taking the answer is not cut off, however long the whole
    /// answer takes: the deadline is for one write's wait.
    #[tokio::test]
    async fn a_reader_that_keeps_taking_the_answer_gets_all_of_it() {
        let (near, mut far) = tokio::io::duplex(64);
        let mut io = listener(GUARD, Duration::from_secs(2)).hold_sends(near);
        let started = Instant::now();
        let reader = tokio::spawn(async move {
            // 64 bytes every 500 ms: 3 s for the 384, longer than the deadline.
            let mut got = Vec::new();
            let mut chunk = [0u8; 64];
            while got.len() < 384 {
                tokio::time::sleep(Duration::from_millis(500)).await;
                far.read_exact(&mut chunk).await.unwrap();
                got.extend_from_slice(&chunk);
            }
            got
        });
        tokio::time::timeout(GUARD, io.write_all(&[7u8; 384]))
            .await
            .expect("the write never ended")
            .expect("a reader taking the answer was cut off");
        assert_eq!(reader.await.unwrap(), vec![7u8; 384]);
        assert!(started.elapsed() >= Duration::from_millis(2500));
    }
}
