//! Outgoing HTTP from plugins goes through [`HttpPolicy::send_request`]. For now every host is
//! denied: per-backend host grants arrive with plugin manifests. The denial is logged with the
//! backend's name and the host it tried, so an administrator sees what a plugin wanted.

use std::future::Future;
use std::sync::Arc;

use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

/// The outbound-HTTP rules of one backend instance.
pub struct HttpPolicy {
    backend: Arc<str>,
}

impl HttpPolicy {
    /// Denies every request.
    pub fn deny_all(backend: Arc<str>) -> Self {
        Self { backend }
    }
}

type ResponseFuture = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), HttpError>> + Send>,
                ),
                HttpError,
            >,
        > + Send,
>;

impl WasiHttpHooks for HttpPolicy {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> ResponseFuture {
        let host = request.uri().host().unwrap_or("(none)").to_owned();
        tracing::warn!(backend = %self.backend, %host, "plugin HTTP request denied: no host is granted to this backend");
        Box::new(async { Err(HttpError::HttpRequestDenied) })
    }
}
