//! The benchmark commands keep working and print every figure they promise (no timing is
//! asserted here: figures are for people, in `certconn bench`).

use crate::common;

use std::process::Command;

use common::*;

/// Runs `certconn bench ARGS`, asserts it succeeded and printed every one of `needles`;
/// returns what it printed.
fn bench_prints(args: &[&str], needles: &[&str]) -> String {
    let out = Command::new(binary())
        .arg("bench")
        .args(args)
        // Where `--fleet` finds scripts/pg-cluster.
        .env("CERTCONN_ROOT", repo_root())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in needles {
        assert!(text.contains(needle), "{needle:?} missing from\n{text}");
    }
    text.into_owned()
}

#[test]
fn fleet_bench_prints_throughput_per_instance_count_sqlite_and_claim_latency() {
    let plugins = plugins();
    bench_prints(
        &[
            "--fleet",
            "2",
            "--jobs",
            "20",
            "--workers",
            "2",
            "--pollers",
            "5",
            "--plugins",
            plugins.to_str().unwrap(),
        ],
        &[
            "postgres:   1 instance(s)",
            "postgres:   2 instance(s)",
            "done twice: 0",
            "sqlite:     1 instance",
            "claims:   5 instances polling one database",
            "claimed twice: 0",
        ],
    );
}

#[test]
fn bench_prints_overhead_throughput_direct_and_ratio() {
    let plugins = plugins();
    // Figures say which cryptographic module they measured.
    let module = format!("cores, {}\n", certconn::crypto::fips::module_name());
    let text = bench_prints(
        &[
            "--jobs",
            "20",
            "--workers",
            "2",
            "--calls",
            "20",
            "--rounds",
            "2",
            "--burst",
            "10",
            "--plugins",
            plugins.to_str().unwrap(),
        ],
        &[
            module.as_str(),
            "plugin overhead: instantiate + describe",
            "µs/call (median of 5 batches of 4; ",
            "local-ca:  instantiate + configure + issue",
            "pipeline:",
            "CPU ",
            "where a job's time goes",
            "  intake ",
            "  lease ",
            "  crypto ",
            "  plugin ",
            "  commit ",
            "(20 timings)",
            "journal:   ",
            "commits (fsyncs) per job",
            " µs waiting for a core; ",
            "checkpoints beside it",
            " KiB per job to the disk",
            "latency:   request → sealed PFX",
            "p99 ",
            "its journal commits: ",
            ", over 25 ms: ",
            "burst:     10 requests at once, each caller waiting for its job: all done in ",
            "direct:",
            "of it the journal's writer committing the signature trail's entry alone",
            "ratio pipeline/direct:",
            "CPU per job: pipeline ",
            " = PKCS#12 ",
            "direct ",
            "round   2: pipeline ",
            "PKCS#12 ",
            "ratio over 2 rounds: median ",
        ],
    );
    // The CPU split is measured, not left unknown: each job's PKCS#12 file was counted.
    assert!(!text.contains("PKCS#12 ?"), "{text}");
    assert!(!text.contains("? KiB per job"), "{text}");
}

#[test]
fn pki_bench_prints_pfx_seal_and_custody_rates_software_and_softhsm() {
    bench_prints(
        &["--pki", "2", "--pkcs11", "softhsm"],
        &[
            "PFX write, modern",
            "PFX read,  compat",
            "seal for EC P-256",
            "device key made, EC P-256",
            "device key made, EC P-384",
            "custody RSA-OAEP-SHA512 decrypt, RSA-2048 (software store)",
            "custody sign, EC P-256 (SoftHSM2)",
            "custody RSA-OAEP-SHA512 decrypt, RSA-2048 (SoftHSM2)",
        ],
    );
}

#[test]
fn hot_swap_bench_prints_latency_failures_and_dip() {
    let plugins = plugins();
    bench_prints(
        &[
            "--hot-swap",
            "--warm-up-seconds",
            "2",
            "--after-seconds",
            "1",
            "--workers",
            "2",
            "--plugins",
            plugins.to_str().unwrap(),
        ],
        &[
            "swap: rename → registry swapped",
            "swap: rename → first job on the new version",
            " 0 failed, 0 retried",
            "throughput before the rename",
            "worst 100 ms window: the second before",
            "jobs per 100 ms, the 2 s after:",
        ],
    );
}

#[test]
fn plugin_update_bench_through_the_feed_prints_publish_to_serving_and_failures() {
    let plugins = plugins();
    bench_prints(
        &[
            "--hot-swap",
            "--via-feed",
            "--warm-up-seconds",
            "2",
            "--after-seconds",
            "1",
            "--workers",
            "2",
            "--plugins",
            plugins.to_str().unwrap(),
        ],
        &[
            "certconn bench --hot-swap --via-feed",
            "swap: publish → registry swapped",
            "swap: publish → first job on the new version",
            " 0 failed, 0 retried",
        ],
    );
}

#[test]
fn daemon_update_bench_prints_publish_to_serving_the_gap_and_failures() {
    let plugins = plugins();
    bench_prints(
        &["--daemon-update", "--plugins", plugins.to_str().unwrap()],
        &[
            "certconn bench --daemon-update:",
            "daemon update: publish →",
            "daemon update: gap in service",
            " 0 failed;",
        ],
    );
}

#[test]
fn ocsp_bench_prints_crl_time_and_both_ocsp_rates() {
    bench_prints(
        &["--ocsp", "--revoked", "500", "--calls", "20"],
        &[
            "CRL with 500 entries: made and signed in",
            "OCSP responses from the cache (no nonce)",
            "OCSP responses freshly signed (nonce, ECDSA P-256)",
        ],
    );
}

#[test]
fn upstream_bench_prints_latency_throughput_and_the_poll_interval_beside_them() {
    let plugins = plugins();
    bench_prints(
        &[
            "--upstream",
            "--jobs",
            "10",
            "--workers",
            "2",
            "--plugins",
            plugins.to_str().unwrap(),
        ],
        &[
            "one at a time:    10 items, request→result p50",
            "burst:            10 items enqueued at once",
            "items/s",
            "a 30 s poll interval instead",
            "long poll vs a 30 s poll: p99",
            "made by the connector for all 21 items",
        ],
    );
}

#[test]
fn upstream_bench_over_tls_names_an_https_service() {
    let plugins = plugins();
    bench_prints(
        &[
            "--upstream",
            "--tls",
            "--jobs",
            "10",
            "--workers",
            "2",
            "--plugins",
            plugins.to_str().unwrap(),
        ],
        &[
            "the reference service on https://127.0.0.1:",
            "one at a time:    10 items, request→result p50",
            "burst:            10 items enqueued at once",
        ],
    );
}

#[test]
fn upstream_bench_over_mutual_tls_registers_and_calls_with_the_identity() {
    let plugins = plugins();
    bench_prints(
        &[
            "--upstream",
            "--tls",
            "--identity",
            "--jobs",
            "10",
            "--workers",
            "2",
            "--plugins",
            plugins.to_str().unwrap(),
        ],
        &[
            "mutual TLS with the registered identity",
            "one at a time:    10 items, request→result p50",
            "burst:            10 items enqueued at once",
            "made by the connector for all 21 items (one TLS handshake each",
        ],
    );
}

#[test]
fn journal_bench_prints_the_reads_of_a_full_journal() {
    bench_prints(
        &["--journal", "20000"],
        &[
            "certconn bench --journal: 20000 finished upstream jobs",
            "list newest 50 jobs (jobs list)",
            "list newest 50 failed (the status page)",
            "backlog of the upstream source",
            "jobs counted by state",
            "one job by id, 4 counts running beside",
        ],
    );
}
