//! How the feed is fetched: TUF verifies what arrives; this only brings it, through the
//! host's own outbound HTTPS (rustls on aws-lc-rs, the site's proxy, the configured trust
//! anchors), with one deadline per file, and streamed so that TUF's size limits stop an
//! endless answer after the bytes the metadata allows rather than after all of them.
//! `file://` URLs (a copied repository, for sites without access) are read from disk.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tough::{FilesystemTransport, Transport, TransportError, TransportErrorKind, TransportStream};
use url::Url;

use crate::crypto::AlgorithmPolicy;
use crate::sources::outbound::Target;

/// The feed's transport.
#[derive(Clone)]
pub struct FeedTransport {
    inner: Arc<Inner>,
}

struct Inner {
    anchors: Option<PathBuf>,
    policy: AlgorithmPolicy,
    proxy: Option<Arc<crate::proxy::Proxy>>,
    /// The most one file may take, head and body.
    deadline: Duration,
    /// One target per origin, made on first use.
    origins: Mutex<HashMap<String, Arc<Target>>>,
}

impl std::fmt::Debug for FeedTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeedTransport")
            .field("deadline", &self.inner.deadline)
            .finish_non_exhaustive()
    }
}

impl FeedTransport {
    pub fn new(
        anchors: Option<PathBuf>,
        policy: AlgorithmPolicy,
        proxy: Option<Arc<crate::proxy::Proxy>>,
        deadline: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                anchors,
                policy,
                proxy,
                deadline,
                origins: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn target(&self, url: &Url) -> Result<Arc<Target>, TransportError> {
        let origin = url.origin().ascii_serialization();
        let mut origins = self
            .inner
            .origins
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(t) = origins.get(&origin) {
            return Ok(t.clone());
        }
        let target = Target::new(
            &origin,
            self.inner.anchors.as_deref(),
            None,
            &self.inner.policy,
        )
        .map_err(|e| {
            TransportError::new_with_cause(TransportErrorKind::Other, url, crate::report::chain(&e))
        })?;
        let target = Arc::new(target);
        origins.insert(origin, target.clone());
        Ok(target)
    }

    async fn fetch_http(&self, url: Url) -> Result<TransportStream, TransportError> {
        let target = self.target(&url)?;
        let other =
            |why: String| TransportError::new_with_cause(TransportErrorKind::Other, &url, why);
        let mut path = url.path().to_owned();
        if let Some(q) = url.query() {
            path = format!("{path}?{q}");
        }
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, target.authority())
            .header(
                hyper::header::USER_AGENT,
                concat!("certconn/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(Bytes::new()))
            .map_err(|e| other(e.to_string()))?;
        let deadline = tokio::time::Instant::now() + self.inner.deadline;
        let seconds = self.inner.deadline.as_secs();
        let response =
            tokio::time::timeout_at(deadline, target.open(request, self.inner.proxy.as_deref()))
                .await
                .map_err(|_| other(format!("no answer within {seconds} s")))?
                .map_err(other)?;
        match response.status() {
            s if s.is_success() => {}
            hyper::StatusCode::NOT_FOUND | hyper::StatusCode::GONE => {
                return Err(TransportError::new(TransportErrorKind::FileNotFound, &url))
            }
            s => return Err(other(format!("the server answered {s}"))),
        }
        // The body is read by a task and handed over in chunks: when TUF stops reading (a size
        // limit, a bad hash) the channel closes and the task drops the connection.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, TransportError>>(4);
        let mut body = response.into_body();
        let at = url.to_string();
        tokio::spawn(async move {
            loop {
                let item = match tokio::time::timeout_at(deadline, body.frame()).await {
                    Err(_) => Err(format!("the download did not finish within {seconds} s")),
                    Ok(None) => return,
                    Ok(Some(Err(e))) => Err(format!("reading the answer: {e}")),
                    Ok(Some(Ok(frame))) => match frame.into_data() {
                        Ok(data) => Ok(data),
                        Err(_) => continue,
                    },
                };
                let failed = item.is_err();
                let item = item.map_err(|why| {
                    TransportError::new_with_cause(TransportErrorKind::Other, &at, why)
                });
                if tx.send(item).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Box::pin(futures::stream::poll_fn(move |cx| {
            rx.poll_recv(cx)
        })))
    }
}

#[async_trait::async_trait]
impl Transport for FeedTransport {
    async fn fetch(&self, url: Url) -> Result<TransportStream, TransportError> {
        match url.scheme() {
            "file" => FilesystemTransport.fetch(url).await,
            "http" | "https" => self.fetch_http(url).await,
            _ => Err(TransportError::new(
                TransportErrorKind::UnsupportedUrlScheme,
                url,
            )),
        }
    }
}
