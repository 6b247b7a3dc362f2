//! `GET /metrics`: the process's counters and histogram ([`crate::metrics`]), and gauges read
//! now from where the state lives — jobs by state in the journal, backends in the registry, the
//! expiry of the certificates certconn depends on. The API token or the read-only token
//! (`api.read_token_file`) reads it.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::server::AppState;
use crate::metrics::Exposition;

/// Prometheus text exposition (version 0.0.4).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "The metrics", content_type = "text/plain; version=0.0.4; charset=utf-8", body = String),
    ),
    security(("token" = []), ("read_token" = []))
)]
pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    let mut out = Exposition::default();
    out.family(
        "certconn_build_info",
        "gauge",
        "The running build: version, and whether FIPS mode is in force.",
    );
    let fips = state.fips.policy && state.fips.module_active;
    out.sample(
        "certconn_build_info",
        &[
            ("version", crate::version::version()),
            ("fips", if fips { "true" } else { "false" }),
        ],
        1.0,
    );

    out.family("certconn_jobs", "gauge", "Jobs in the journal by state.");
    match state.jobs.counts().await {
        Ok(counts) => {
            for (job_state, n) in counts {
                out.sample("certconn_jobs", &[("state", job_state.as_str())], n as f64);
            }
        }
        Err(e) => tracing::warn!("metrics: counting jobs: {}", crate::report::chain(&e)),
    }

    out.family(
        "certconn_backend_serving",
        "gauge",
        "1 when the backend instance takes jobs; 0 when it is quarantined, probing, drained, unloaded or not loaded.",
    );
    let statuses: Vec<_> = state
        .registry
        .instances()
        .iter()
        .map(|i| i.status())
        .collect();
    for s in &statuses {
        let serving = if s.state == "serving" { 1.0 } else { 0.0 };
        out.sample(
            "certconn_backend_serving",
            &[("backend", &s.backend)],
            serving,
        );
    }
    out.family(
        "certconn_backend_breaker_open",
        "gauge",
        "1 while the backend's circuit breaker keeps it out of service (quarantined or probing).",
    );
    for s in &statuses {
        let open = if s.breaker.state == "closed" {
            0.0
        } else {
            1.0
        };
        out.sample(
            "certconn_backend_breaker_open",
            &[("backend", &s.backend)],
            open,
        );
    }
    out.family(
        "certconn_backend_in_flight",
        "gauge",
        "Jobs a backend instance is working on now (instances with a concurrency limit).",
    );
    for s in &statuses {
        if let Some(n) = s.in_flight {
            out.sample(
                "certconn_backend_in_flight",
                &[("backend", &s.backend)],
                n as f64,
            );
        }
    }

    out.family(
        "certconn_certificate_expiry_timestamp_seconds",
        "gauge",
        "When a certificate certconn depends on expires (Unix time): custody keys' certificates (key/NAME), the SCEP RA (scep-ra), the API's TLS certificate (api-tls).",
    );
    for (name, not_after) in super::status::watched_certificates(&state) {
        out.sample(
            "certconn_certificate_expiry_timestamp_seconds",
            &[("certificate", &name)],
            not_after as f64,
        );
    }

    if let Some(upstream) = &state.upstream {
        let u = upstream.status_with_backlog().await;
        if let Some(b) = u.backlog {
            out.family(
                "certconn_upstream_backlog",
                "gauge",
                "Work from the upstream service not done yet (unfinished) and results it has not taken yet (owed).",
            );
            out.sample(
                "certconn_upstream_backlog",
                &[("kind", "unfinished")],
                b.unfinished as f64,
            );
            out.sample(
                "certconn_upstream_backlog",
                &[("kind", "owed")],
                b.owed as f64,
            );
        }
        out.family(
            "certconn_upstream_connected",
            "gauge",
            "1 while the last long poll of the upstream service got an answer.",
        );
        out.sample(
            "certconn_upstream_connected",
            &[],
            if u.connected { 1.0 } else { 0.0 },
        );
        if let Some(ms) = u.last_poll_ms {
            out.family(
                "certconn_upstream_last_poll_timestamp_seconds",
                "gauge",
                "When the upstream service last answered a poll (Unix time): the poll lag is now minus this.",
            );
            out.sample(
                "certconn_upstream_last_poll_timestamp_seconds",
                &[],
                ms as f64 / 1000.0,
            );
        }
        if let Some(l) = &u.lifecycle {
            out.family(
                "certconn_version_lifecycle",
                "gauge",
                "1 for the stage of this version in the service's version policy (current, outdated, deprecated, unsupported), 0 for the others.",
            );
            for stage in [
                crate::lifecycle::Stage::Current,
                crate::lifecycle::Stage::Outdated,
                crate::lifecycle::Stage::Deprecated,
                crate::lifecycle::Stage::Unsupported,
            ] {
                let on = if stage == l.stage { 1.0 } else { 0.0 };
                out.sample(
                    "certconn_version_lifecycle",
                    &[("stage", stage.as_str())],
                    on,
                );
            }
        }
    }

    process_figures(&mut out);
    crate::metrics::global().write(&mut out);
    (
        [(header::CONTENT_TYPE, Exposition::CONTENT_TYPE)],
        out.into_string(),
    )
        .into_response()
}

/// The process's resident memory, open files, threads and heap ([`crate::process`]), each
/// family only where it can be read.
fn process_figures(out: &mut Exposition) {
    let p = crate::process::figures();
    if let Some(bytes) = p.resident_bytes {
        out.family(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
        );
        out.sample("process_resident_memory_bytes", &[], bytes as f64);
    }
    if let Some(bytes) = p.resident_anonymous_bytes {
        out.family(
            "certconn_resident_anonymous_memory_bytes",
            "gauge",
            "Of the resident memory, the anonymous part (heap, plugin slots): the part that grows if memory is kept; the rest is mostly the binary's code.",
        );
        out.sample(
            "certconn_resident_anonymous_memory_bytes",
            &[],
            bytes as f64,
        );
    }
    if let Some(n) = p.open_fds {
        out.family(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
        );
        out.sample("process_open_fds", &[], n as f64);
    }
    if let Some(n) = p.threads {
        out.family(
            "process_threads",
            "gauge",
            "Number of OS threads in the process.",
        );
        out.sample("process_threads", &[], n as f64);
    }
    if let Some(h) = crate::process::heap::figures() {
        out.family(
            "certconn_heap_bytes",
            "gauge",
            "The heap as malloc sees it: bytes in use (with the freed chunks each thread caches for its next allocations), and bytes freed but kept by malloc for reuse (mostly resident, not in use).",
        );
        out.sample(
            "certconn_heap_bytes",
            &[("kind", "in_use")],
            h.in_use as f64,
        );
        out.sample(
            "certconn_heap_bytes",
            &[("kind", "free_kept")],
            h.free_kept as f64,
        );
        out.family(
            "certconn_heap_arenas",
            "gauge",
            "malloc arenas made, and the most that may be made (one per core, or MALLOC_ARENA_MAX).",
        );
        out.sample("certconn_heap_arenas", &[("kind", "made")], h.arenas as f64);
        out.sample(
            "certconn_heap_arenas",
            &[("kind", "limit")],
            h.arena_limit as f64,
        );
    }
}
