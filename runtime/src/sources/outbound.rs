//! The host's own outbound HTTP(S) calls — to the upstream service, to Intune and Microsoft
//! Graph: through the site's proxy when one is set, TLS by the host's rustls (with a client
//! certificate when the caller has one), and every answer bounded in size and time, so that a
//! server that misbehaves costs a timeout, not memory.
//!
//! A connection whose answer was read whole is kept a few seconds for the target's next call
//! ([`IDLE_FOR`], at most [`MAX_IDLE`]): a connector calls its service several times per item
//! (acknowledge, result) and a TCP connect with a TLS handshake — a signature with the identity
//! key, on a PKCS#11 token perhaps — for each cost more than the call. A kept connection the
//! server closed meanwhile is noticed before the request goes out, and a new one is made. A
//! streamed answer ([`Target::open`]) has a connection of its own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use crate::crypto::AlgorithmPolicy;

/// The largest answer read (a batch of imported PFX files fits many times).
pub const MAX_ANSWER_BYTES: usize = 16 << 20;

/// A `Retry-After` longer than this is taken as this: a server's mistake must not park
/// certconn for days.
const MAX_RETRY_AFTER_SECONDS: u64 = 600;

/// How long an idle connection is kept for the next call: under the shortest keep-alive that
/// servers commonly use (Apache's 5 s), so that a call seldom meets a connection the server is
/// closing at that moment.
pub const IDLE_FOR: Duration = Duration::from_secs(4);

/// Idle connections kept per target unless its caller says otherwise ([`Target::keeping`]):
/// as many as the calls a source makes at once. A call beyond them makes a connection, and a
/// handshake, that is dropped after its one call.
pub const MAX_IDLE: usize = 8;

/// How long a connection whose answer was read may take to be ready for the next request
/// before it is let go instead of kept.
const READY_WITHIN: Duration = Duration::from_millis(100);

type Connection = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// A connection kept for the next call.
struct Idle {
    connection: Connection,
    since: Instant,
    /// [`Target::forget_connections`] calls before it was made.
    generation: u64,
}

/// An answer: its status, its `Retry-After` (seconds) if any, and its body.
pub struct Answer {
    pub status: StatusCode,
    pub retry_after: Option<Duration>,
    pub body: Bytes,
}

/// The port `uri` names, if it names one. `http::Uri` reads a port out of range (`:99999`)
/// as no port at all, and a client then goes to the scheme's default port: here it is an
/// error, for every URL a setting names.
pub fn explicit_port(uri: &hyper::Uri) -> Result<Option<u16>, String> {
    let (Some(authority), Some(host)) = (uri.authority(), uri.host()) else {
        return Ok(None);
    };
    let host_port = authority
        .as_str()
        .rsplit_once('@')
        .map_or(authority.as_str(), |(_, after)| after);
    let after_host = host_port.strip_prefix(host).unwrap_or_default();
    match after_host.strip_prefix(':') {
        None => Ok(None),
        Some(port) => crate::proxy::port_number(port).map(Some),
    }
}

/// A URL certconn sends secrets or work to must be https, or http to loopback (for trying
/// things out and for tests): nothing crosses a network in clear. Its port, if it names one,
/// must be one ([`explicit_port`]).
pub fn check_scheme(url: &str) -> Result<(), String> {
    let uri: hyper::Uri = url.parse().map_err(|_| "not a URL".to_owned())?;
    let host = uri.host().ok_or("the URL has no host")?;
    explicit_port(&uri)?;
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") => {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let loopback = host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if loopback {
                Ok(())
            } else {
                Err("plain http only to loopback: credentials and work would cross the network in clear; use https".into())
            }
        }
        _ => Err("the scheme must be https (or http to loopback)".into()),
    }
}

/// Why a URL cannot be called.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    #[error("{url}: {reason}")]
    Url { url: String, reason: String },
    #[error("{url}: TLS")]
    Tls {
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Where calls go: a host and port, TLS or not, and the path its URL carries.
pub struct Target {
    /// `https://host:port` or `http://host:port`, for messages.
    base: String,
    host: String,
    port: u16,
    /// The path the URL carries, without a trailing slash.
    prefix: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// Connections kept for the next call, newest last. Every call of a target goes through
    /// the same proxy (its caller's), so a kept connection fits any of them.
    idle: Mutex<Vec<Idle>>,
    /// How many idle connections are kept at most.
    max_idle: usize,
    generation: AtomicU64,
}

impl Target {
    /// `url` (`https://…`, or `http://` — whether plain http is allowed there is the config's
    /// check), trusting `anchors` (a PEM file) or the system store, presenting the client
    /// certificate `client` resolves (https only).
    pub fn new(
        url: &str,
        anchors: Option<&std::path::Path>,
        client: Option<Arc<dyn rustls::client::ResolvesClientCert>>,
        policy: &AlgorithmPolicy,
    ) -> Result<Self, TargetError> {
        let bad = |why: &str| TargetError::Url {
            url: url.to_owned(),
            reason: why.to_owned(),
        };
        let uri: hyper::Uri = url.parse().map_err(|_| bad("not a URL"))?;
        let host = uri.host().ok_or_else(|| bad("no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let (tls, default_port) = match uri.scheme_str() {
            Some("https") => {
                let config =
                    crate::plugins::http::tls::outbound_client_config(anchors, client, policy)
                        .map_err(|e| TargetError::Tls {
                            url: url.to_owned(),
                            source: e,
                        })?;
                let name =
                    ServerName::try_from(host.clone()).map_err(|_| bad("not a server name"))?;
                (Some((TlsConnector::from(config), name)), 443)
            }
            Some("http") if client.is_some() => {
                return Err(bad(
                    "a client certificate is presented in TLS: the URL must be https",
                ))
            }
            Some("http") => (None, 80),
            _ => return Err(bad("the scheme must be https (or http to loopback)")),
        };
        let port = explicit_port(&uri)
            .map_err(|why| bad(&why))?
            .unwrap_or(default_port);
        Ok(Self {
            base: format!(
                "{}://{}:{port}",
                uri.scheme_str().unwrap_or("https"),
                uri.host().unwrap_or_default()
            ),
            host,
            port,
            prefix: uri.path().trim_end_matches('/').to_owned(),
            idle: Mutex::default(),
            max_idle: MAX_IDLE,
            generation: AtomicU64::new(0),
            tls,
        })
    }

    /// Keeps up to `connections` idle connections instead of [`MAX_IDLE`]: for a caller that
    /// makes more calls at once, each of which would otherwise make a connection of its own.
    pub fn keeping(mut self, connections: usize) -> Self {
        self.max_idle = connections;
        self
    }

    /// Where calls go, for logs and status (no credentials in it).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The path the target's URL carries, without a trailing slash.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The `Host` header's value.
    pub fn authority(&self) -> String {
        crate::proxy::authority(&self.host, self.port)
    }

    /// Sends `request` (its URI a path, its `Host` header set) and reads the answer, within
    /// `limit`.
    pub async fn send(
        &self,
        request: Request<Full<Bytes>>,
        proxy: Option<&crate::proxy::Proxy>,
        limit: Duration,
    ) -> Result<Answer, String> {
        match tokio::time::timeout(limit, self.exchange(request, proxy)).await {
            Ok(answer) => answer,
            Err(_) => Err(format!("no answer within {} s", limit.as_secs())),
        }
    }

    /// Sends `request` on a connection of its own and returns the answer's head; its body
    /// streams on, for the caller to bound (an update feed reads targets far larger than
    /// [`MAX_ANSWER_BYTES`]).
    pub async fn open(
        &self,
        request: Request<Full<Bytes>>,
        proxy: Option<&crate::proxy::Proxy>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, String> {
        self.connect(proxy)
            .await?
            .send_request(request)
            .await
            .map_err(|e| e.to_string())
    }

    /// Lets go of the kept connections, and of those in use once their call ends: the next
    /// calls make new ones. For a new client certificate (a renewed identity), which only a new
    /// handshake presents.
    pub fn forget_connections(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.idle().clear();
    }

    async fn connect(&self, proxy: Option<&crate::proxy::Proxy>) -> Result<Connection, String> {
        let tcp = crate::proxy::connect(proxy, &self.host, self.port)
            .await
            .map_err(|e| crate::report::chain(&e))?;
        match &self.tls {
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
                super::api::client::handshake(tls).await
            }
            None => super::api::client::handshake(tcp).await,
        }
    }

    async fn exchange(
        &self,
        request: Request<Full<Bytes>>,
        proxy: Option<&crate::proxy::Proxy>,
    ) -> Result<Answer, String> {
        let generation = self.generation.load(Ordering::SeqCst);
        let (connection, response) = self.send_on_any(request, proxy).await?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|secs| Duration::from_secs(secs.min(MAX_RETRY_AFTER_SECONDS)));
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading the answer (at most {MAX_ANSWER_BYTES} bytes): {e}"))?
            .to_bytes();
        self.keep(connection, generation).await;
        Ok(Answer {
            status,
            retry_after,
            body,
        })
    }

    /// Sends `request` on a kept connection, or on a new one when none is kept (or each kept
    /// one turns out closed before the request went out).
    async fn send_on_any(
        &self,
        mut request: Request<Full<Bytes>>,
        proxy: Option<&crate::proxy::Proxy>,
    ) -> Result<(Connection, hyper::Response<hyper::body::Incoming>), String> {
        while let Some(mut connection) = self.take_kept() {
            match connection.try_send_request(request).await {
                Ok(response) => return Ok((connection, response)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => request = unsent,
                    // It went out and the connection failed: as a new connection's failure
                    // would be, the caller's to retry.
                    None => return Err(e.into_error().to_string()),
                },
            }
        }
        let mut connection = self.connect(proxy).await?;
        let response = connection
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        Ok((connection, response))
    }

    /// The newest kept connection still fresh and open; the stale ones go.
    fn take_kept(&self) -> Option<Connection> {
        let generation = self.generation.load(Ordering::SeqCst);
        let mut idle = self.idle();
        while let Some(kept) = idle.pop() {
            if kept.generation == generation
                && kept.since.elapsed() < IDLE_FOR
                && kept.connection.is_ready()
            {
                return Some(kept.connection);
            }
        }
        None
    }

    /// Keeps `connection`, its answer read whole, for the next call: once it is ready for
    /// another request, if it was made since the last [`Self::forget_connections`] and fewer
    /// than the target's limit ([`MAX_IDLE`], or [`Self::keeping`]) are kept.
    async fn keep(&self, mut connection: Connection, generation: u64) {
        let ready = tokio::time::timeout(READY_WITHIN, connection.ready()).await;
        if !matches!(ready, Ok(Ok(()))) || generation != self.generation.load(Ordering::SeqCst) {
            return;
        }
        let mut idle = self.idle();
        idle.retain(|kept| kept.since.elapsed() < IDLE_FOR && !kept.connection.is_closed());
        if idle.len() < self.max_idle {
            idle.push(Idle {
                connection,
                since: Instant::now(),
                generation,
            });
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        // Every update under the lock is one push, pop, retain or clear.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use hyper::Method;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[test]
    fn a_port_out_of_range_is_an_error_not_the_default_port() {
        for (url, port) in [
            ("https://svc.example/x", None),
            ("https://svc.example:8443/x", Some(8443)),
            ("http://127.0.0.1:1/", Some(1)),
            ("http://[::1]:65535/", Some(65535)),
            ("https://u@8:8/", Some(8)),
        ] {
            let uri: hyper::Uri = url.parse().unwrap();
            assert_eq!(explicit_port(&uri), Ok(port), "{url}");
        }
        for url in [
            "https://svc.example:99999/x",
            "https://svc.example:0/x",
            "http://[::1]:70000/",
        ] {
            let uri: hyper::Uri = url.parse().unwrap();
            let e = explicit_port(&uri).expect_err(url);
            assert!(e.contains("is not a port (1 to 65535)"), "{url}: {e}");
            let e = check_scheme(url).expect_err(url);
            assert!(e.contains("is not a port"), "{url}: {e}");
        }
        assert_eq!(check_scheme("https://svc.example:443/x"), Ok(()));
    }

    impl Target {
        /// How many connections are kept now.
        fn idle_connections(&self) -> usize {
            self.idle().len()
        }

        /// Kept connections whose driver has not seen them end.
        fn kept_open(&self) -> usize {
            self.idle()
                .iter()
                .filter(|kept| !kept.connection.is_closed())
                .count()
        }
    }

    /// A loopback HTTP/1.1 server that counts the connections it accepts and answers each
    /// request `200 ok` on the connection it came on. `/close` is answered with `Connection:
    /// close`; after answering `/drop` the server closes the connection without a word, as a
    /// server's keep-alive timeout does.
    async fn server() -> (Target, Arc<AtomicUsize>) {
        server_with(1).await
    }

    /// [`server`], answering `/together` only once `together` of them are waiting: that many
    /// calls at once, each on a connection of its own.
    async fn server_with(together: usize) -> (Target, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let barrier = Arc::new(tokio::sync::Barrier::new(together));
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    loop {
                        let n = match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        head.extend_from_slice(&buf[..n]);
                        while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                            let request: Vec<u8> = head.drain(..end + 4).collect();
                            let close = request.starts_with(b"GET /close ");
                            let drop = request.starts_with(b"GET /drop ");
                            if request.starts_with(b"GET /together ") {
                                barrier.wait().await;
                            }
                            let answer = if close {
                                "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                            } else {
                                "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                            };
                            if stream.write_all(answer.as_bytes()).await.is_err() || close || drop {
                                return;
                            }
                        }
                    }
                });
            }
        });
        let target = Target::new(
            &format!("http://127.0.0.1:{port}"),
            None,
            None,
            &AlgorithmPolicy::default(),
        )
        .unwrap();
        (target, accepted)
    }

    async fn call(target: &Target, path: &str) {
        let request = Request::builder()
            .method(Method::GET)
            .uri(path)
            .header("host", "127.0.0.1")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let answer = target
            .send(request, None, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(&answer.body[..], b"ok");
    }

    #[tokio::test]
    async fn calls_in_turn_share_one_connection_until_it_is_forgotten() {
        let (target, accepted) = server().await;
        for _ in 0..5 {
            call(&target, "/keep").await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(target.idle_connections(), 1);

        // A renewed identity: the next call makes a new connection (a new handshake).
        target.forget_connections();
        assert_eq!(target.idle_connections(), 0);
        call(&target, "/keep").await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);

        // Calls at once: each a connection of its own, and no more kept than MAX_IDLE.
        let many = (0..MAX_IDLE + 4).map(|_| call(&target, "/keep"));
        futures::future::join_all(many).await;
        assert!(target.idle_connections() <= MAX_IDLE);
        assert!(accepted.load(Ordering::SeqCst) > 2);
    }

    /// A caller making more calls at once than [`MAX_IDLE`] keeps as many connections as it
    /// asks for: the next calls at once go on them, where each one beyond the limit made a new
    /// connection (a handshake, with TLS) and dropped it after its call.
    #[tokio::test]
    async fn a_target_keeps_as_many_connections_as_its_caller_makes_calls_at_once() {
        const AT_ONCE: usize = 2 * MAX_IDLE;
        for (keeping, made_again) in [(MAX_IDLE, AT_ONCE - MAX_IDLE), (AT_ONCE, 0)] {
            let (target, accepted) = server_with(AT_ONCE).await;
            let target = target.keeping(keeping);
            for _ in 0..2 {
                futures::future::join_all((0..AT_ONCE).map(|_| call(&target, "/together"))).await;
            }
            assert_eq!(
                accepted.load(Ordering::SeqCst),
                AT_ONCE + made_again,
                "keeping {keeping}"
            );
            assert_eq!(target.idle_connections(), keeping);
        }
    }

    #[tokio::test]
    async fn a_connection_the_server_closes_is_not_used_again() {
        // The server says it closes: each call has a new connection, and none is kept.
        let (target, accepted) = server().await;
        call(&target, "/close").await;
        call(&target, "/close").await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(target.idle_connections(), 0);

        // The server closes a kept connection while it is idle: once the client has seen it
        // end, the next call goes on a new connection, and succeeds.
        call(&target, "/drop").await;
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        let seen_closed = async {
            while target.kept_open() > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), seen_closed)
            .await
            .expect("the client never saw the server close its connection");
        call(&target, "/keep").await;
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
    }
}
