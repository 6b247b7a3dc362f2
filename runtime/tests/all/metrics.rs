//! `/metrics` read the way Prometheus reads it: parsed by `prometheus_client`'s text-format
//! parser, behind the read-only token, with counters that move with the jobs and the expiry of
//! the CA certificate certconn holds.

use crate::common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::json;

/// `curl` GET of `path` with `token` (if any): (HTTP status, body).
/// The samples of an exposition as prometheus_client's parser reads them:
/// (name, labels) → value. Panics when the parser refuses the text.
fn parse(text: &str) -> BTreeMap<(String, BTreeMap<String, String>), f64> {
    let script = "import sys, json\n\
from prometheus_client.parser import text_string_to_metric_families as families\n\
print(json.dumps([[s.name, s.labels, s.value] for f in families(sys.stdin.read()) for s in f.samples]))\n";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client refused the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let samples: Vec<(String, BTreeMap<String, String>, f64)> =
        serde_json::from_slice(&out.stdout).unwrap();
    samples
        .into_iter()
        .map(|(name, labels, value)| ((name, labels), value))
        .collect()
}

fn sample(
    samples: &BTreeMap<(String, BTreeMap<String, String>), f64>,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    let labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    samples.get(&(name.to_owned(), labels)).copied()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text_and_move_with_the_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_default(dir.path());
    let read = data_token(dir.path(), "api-read-token");
    let admin = data_token(dir.path(), "api-token");
    assert_ne!(read, admin);

    // Who may read: the read-only token and the API token; nobody else. The read-only token
    // reads nothing but /metrics.
    assert_eq!(http_get(daemon.port, "/metrics", None).0, 401);
    assert_eq!(http_get(daemon.port, "/metrics", Some("wrong")).0, 401);
    assert_eq!(http_get(daemon.port, "/metrics", Some(&admin)).0, 200);
    assert_eq!(http_get(daemon.port, "/v1/jobs", Some(&read)).0, 401);

    let (status, before) = http_get(daemon.port, "/metrics", Some(&read));
    assert_eq!(status, 200);
    let before = parse(&before);
    let issued_before = sample(
        &before,
        "certconn_job_runs_total",
        &[("kind", "issue"), ("outcome", "succeeded")],
    )
    .unwrap_or(0.0);

    let api = daemon.client();
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(submit(&api, "smime", &format!("metrics-{i}"), json!({})).await);
    }
    for id in &ids {
        let job = wait_job(&api, id, Duration::from_secs(60)).await;
        assert_eq!(job["state"], "succeeded", "{job}");
    }

    let (_, after) = http_get(daemon.port, "/metrics", Some(&read));
    let after = parse(&after);
    assert_eq!(
        sample(
            &after,
            "certconn_job_runs_total",
            &[("kind", "issue"), ("outcome", "succeeded")]
        ),
        Some(issued_before + 3.0),
        "{after:?}"
    );
    assert_eq!(
        sample(&after, "certconn_jobs", &[("state", "succeeded")]),
        Some(3.0)
    );
    // Each of the three wrote one PKCS#12 file, whose key derivations took CPU time.
    let pfx = |samples, name| sample(samples, name, &[]).expect(name);
    assert_eq!(
        pfx(&after, "certconn_pfx_written_total"),
        pfx(&before, "certconn_pfx_written_total") + 3.0
    );
    let pfx_cpu = pfx(&after, "certconn_pfx_cpu_seconds_total")
        - pfx(&before, "certconn_pfx_cpu_seconds_total");
    assert!(pfx_cpu > 0.0 && pfx_cpu < 60.0, "{pfx_cpu}");
    let calls = sample(
        &after,
        "certconn_plugin_call_seconds_count",
        &[("backend", "local"), ("operation", "issue")],
    )
    .expect("plugin call histogram");
    assert!(calls >= 3.0, "{calls}");
    assert_eq!(
        sample(
            &after,
            "certconn_job_run_seconds_count",
            &[("kind", "issue")]
        ),
        Some(issued_before + 3.0)
    );
    assert_eq!(
        sample(&after, "certconn_backend_serving", &[("backend", "local")]),
        Some(1.0)
    );
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        sample(
            &after,
            "certconn_build_info",
            &[("version", version), ("fips", "false")]
        ),
        Some(1.0)
    );

    // The CA certificate's expiry is the one openssl reads from the chain certconn wrote.
    let expiry = sample(
        &after,
        "certconn_certificate_expiry_timestamp_seconds",
        &[("certificate", "key/local-ca")],
    )
    .expect("CA expiry");
    let end = run_ok(
        Command::new("openssl")
            .args(["x509", "-noout", "-dates", "-dateopt", "iso_8601", "-in"])
            .arg(dir.path().join("data/keys/local-ca.chain.pem")),
    );
    let not_after = end
        .lines()
        .find_map(|l| l.strip_prefix("notAfter="))
        .expect("notAfter");
    let parsed = time::OffsetDateTime::parse(
        &not_after.replace(' ', "T"),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap_or_else(|e| panic!("{not_after}: {e}"));
    assert_eq!(expiry as i64, parsed.unix_timestamp());

    // No label names a device, a subject or a job.
    let text = http_get(daemon.port, "/metrics", Some(&read)).1;
    assert!(!text.contains("test device"), "{text}");
    for id in &ids {
        assert!(!text.contains(id.as_str()));
    }
}

/// The read-only token is a secret like the API token: `check-config` says so when others can
/// read its file.
#[test]
fn check_config_refuses_a_read_only_token_others_can_read() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = start_default(dir.path());
    daemon.stop();
    let token = dir.path().join("data/api-read-token");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, said) = run_certconn(&["check-config"], &daemon.config);
    assert!(!ok, "{said}");
    assert!(
        said.contains("the read-only API token") && said.contains("chmod 600"),
        "{said}"
    );
}

/// A number field of `/proc/PID/status` (`Threads:`, `VmRSS:` in KiB).
fn proc_status(pid: u32, name: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {status}"))
}

/// A daemon on the default test config with `MALLOC_ARENA_MAX` set to `value`.
fn start_with_arena_max(dir: &std::path::Path, value: &str) -> Daemon {
    Daemon::start_with_env(
        &write_config(dir, ""),
        &dir.join("daemon.log"),
        vec![("MALLOC_ARENA_MAX".into(), value.into())],
    )
}

/// The daemon's process figures under the names Prometheus's client libraries use, and its
/// heap: as many malloc arenas as cores at most, however many threads allocate. Without the
/// bound, the daemon's dozen threads make a dozen arenas (each keeping its own freed memory).
/// An empty `MALLOC_ARENA_MAX` is no limit, as glibc reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_figures_are_the_daemons_and_malloc_keeps_to_one_arena_per_core() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_with_arena_max(dir.path(), "");
    let read = data_token(dir.path(), "api-read-token");
    // Jobs, so that the journal's threads, the blocking pool and the plugin calls allocate.
    let api = daemon.client();
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(submit(&api, "smime", &format!("heap-{i}"), json!({})).await);
    }
    for id in &ids {
        let job = wait_job(&api, id, Duration::from_secs(60)).await;
        assert_eq!(job["state"], "succeeded", "{job}");
    }
    let pid = daemon.child.id();
    let threads = proc_status(pid, "Threads");
    let rss = proc_status(pid, "VmRSS") * 1024;
    let (status, text) = http_get(daemon.port, "/metrics", Some(&read));
    assert_eq!(status, 200);
    let samples = parse(&text);
    let figure = |name: &str, labels: &[(&str, &str)]| {
        sample(&samples, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in {text}"))
    };

    let seen_threads = figure("process_threads", &[]);
    assert!(threads >= 8, "the daemon runs {threads} threads");
    assert!(
        (seen_threads - threads as f64).abs() <= 4.0,
        "{seen_threads} threads in /metrics, {threads} in /proc"
    );
    let seen_rss = figure("process_resident_memory_bytes", &[]);
    assert!(
        seen_rss > rss as f64 * 0.8 && seen_rss < rss as f64 * 1.25,
        "{seen_rss} bytes resident in /metrics, {rss} in /proc"
    );
    let anon = figure("certconn_resident_anonymous_memory_bytes", &[]);
    assert!(anon > 0.0 && anon < seen_rss, "{anon} of {seen_rss}");
    let fds = figure("process_open_fds", &[]);
    let open_now = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as f64;
    assert!(
        fds >= 5.0 && (fds - open_now).abs() <= 4.0,
        "{fds} open in /metrics, {open_now} in /proc"
    );

    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let limit = figure("certconn_heap_arenas", &[("kind", "limit")]);
    let made = figure("certconn_heap_arenas", &[("kind", "made")]);
    assert_eq!(limit, cores.max(2) as f64);
    assert!(
        made >= 1.0 && made <= limit,
        "{made} arenas made, limit {limit}, {threads} threads"
    );
    let in_use = figure("certconn_heap_bytes", &[("kind", "in_use")]);
    let kept = figure("certconn_heap_bytes", &[("kind", "free_kept")]);
    assert!(
        in_use > 1e6 && in_use < seen_rss,
        "{in_use} in use of {seen_rss}"
    );
    assert!(kept >= 0.0, "{kept}");

    // The journal's connections have read and written six jobs: each holds a page cache, its
    // statements and the schema, all of it part of the heap in use.
    let journal: Vec<f64> = ["page_cache", "statements", "schema"]
        .iter()
        .map(|kind| figure("certconn_journal_memory_bytes", &[("kind", kind)]))
        .collect();
    assert!(
        journal.iter().all(|&bytes| bytes > 0.0),
        "journal memory {journal:?}"
    );
    assert!(
        journal.iter().sum::<f64>() < in_use,
        "journal memory {journal:?} of {in_use} in use"
    );
}

/// An operator's `MALLOC_ARENA_MAX` is the limit, not certconn's default.
#[test]
fn an_operators_malloc_arena_max_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_with_arena_max(dir.path(), "1");
    let read = data_token(dir.path(), "api-read-token");
    let (status, text) = http_get(daemon.port, "/metrics", Some(&read));
    assert_eq!(status, 200);
    let samples = parse(&text);
    assert_eq!(
        sample(&samples, "certconn_heap_arenas", &[("kind", "limit")]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&samples, "certconn_heap_arenas", &[("kind", "made")]),
        Some(1.0),
        "{text}"
    );
}

/// The heap in use and the anonymous memory of a daemon: (bytes, bytes).
fn heap_and_anonymous(daemon: &Daemon, read: &str) -> (f64, f64) {
    let (status, text) = http_get(daemon.port, "/metrics", Some(read));
    assert_eq!(status, 200);
    let samples = parse(&text);
    let figure = |name: &str, labels: &[(&str, &str)]| {
        sample(&samples, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in {text}"))
    };
    (
        figure("certconn_heap_bytes", &[("kind", "in_use")]),
        figure("certconn_resident_anonymous_memory_bytes", &[]),
    )
}

/// Compiling the plugins leaves nothing behind: a daemon's first start, which compiles them,
/// holds about what its restart holds, which loads them from the compiled cache. Cranelift
/// keeps every compilation's scratch space in its engine for the next one, and malloc keeps
/// what is freed; compiled on the daemon's own engine, the first start held about 10 MB more
/// heap in use and 32 MB more anonymous memory, for the life of the process.
#[test]
fn a_first_start_that_compiles_the_plugins_holds_what_a_restart_holds() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let first = Daemon::start(&config, &dir.path().join("first.log"));
    let read = data_token(dir.path(), "api-read-token");
    let (first_heap, first_anon) = heap_and_anonymous(&first, &read);
    drop(first);
    let restart = Daemon::start(&config, &dir.path().join("restart.log"));
    let (restart_heap, restart_anon) = heap_and_anonymous(&restart, &read);
    let mib = |bytes: f64| bytes / f64::from(1 << 20);
    assert!(
        first_heap < restart_heap + 3.0 * f64::from(1 << 20),
        "heap in use: {:.1} MiB after compiling, {:.1} MiB from the cache",
        mib(first_heap),
        mib(restart_heap)
    );
    assert!(
        first_anon < restart_anon + 16.0 * f64::from(1 << 20),
        "anonymous memory: {:.1} MiB after compiling, {:.1} MiB from the cache",
        mib(first_anon),
        mib(restart_anon)
    );
}
