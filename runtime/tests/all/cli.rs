//! The command line as an administrator meets it: pipes, signals, terminals.

use crate::common;

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// `certconn … | head -1`: when the reader goes away, the command ends by SIGPIPE like any Unix
/// tool — no panic, no backtrace.
#[test]
fn a_closed_pipe_ends_the_cli_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let (reader, writer) = std::io::pipe().unwrap();
    // Nobody will read: the first write fails with EPIPE.
    drop(reader);
    let out = Command::new(binary())
        .args(["check-config", "--config"])
        .arg(&config)
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{:?}: {stderr}",
        out.status
    );
}

/// SIGHUP (what logrotate and habit send) with nothing changed neither stops the daemon nor
/// goes unnoticed: it reloads, finds nothing to do, and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_nothing_changed_reloads_nothing_and_serves_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = start_default(dir.path());
    let pid = daemon.child.id().to_string();
    ok(Command::new("kill").args(["-HUP", &pid]).output().unwrap());
    let start = Instant::now();
    while !std::fs::read_to_string(&daemon.log)
        .unwrap()
        .contains("configuration reloaded: no backend or profile changed")
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no log line for SIGHUP"
        );
        assert!(
            daemon.child.try_wait().unwrap().is_none(),
            "the daemon died of SIGHUP"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let id = submit(
        &daemon.client(),
        "smime",
        "after-hup",
        serde_json::json!({}),
    )
    .await;
    let job = wait_job(&daemon.client(), &id, Duration::from_secs(30)).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert!(daemon.child.try_wait().unwrap().is_none());
}

/// Logs carry colour only for a terminal: written to a file (journald, a log collector) they
/// are plain text.
#[test]
fn logs_to_a_file_carry_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let log = dir.path().join("human.log");
    let mut child = Command::new(binary())
        .args(["--log-format", "human", "serve", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("certconn is serving")
    {
        assert!(start.elapsed() < Duration::from_secs(60), "did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains('\u{1b}'),
        "ANSI escapes in a log file:\n{text}"
    );
}

/// `submit` says which job it made before it waits; if the daemon goes away while it waits, it
/// says how to fetch the result later — and `jobs result` does, once the daemon is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_submit_names_its_job_and_jobs_result_fetches_it_later() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let ca = MockCa::start(0);
    let plugin_dir = vendor_and_local_plugin_dir(dir.path());
    let extra = ca.backend("example", "");
    let mut daemon = start_in(dir.path(), |data| config_text(data, &plugin_dir, &extra));
    // The backend is drained (in memory only), so the job waits, journaled, while the client
    // waits for it, and it cannot reach the CA before the daemon is killed. (A job killed
    // while its request is at the CA is crash_recovery's case.)
    ok(daemon.cli(&["plugins", "drain", "example"]));
    let pfx = dir.path().join("later.pfx");
    let mut submit = Command::new(binary())
        .args([
            "submit",
            "issue",
            "--profile",
            "example",
            "--subject",
            "CN=later",
            "--out",
        ])
        .arg(&pfx)
        .env("CERTCONN_CONFIG", &daemon.config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(submit.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    let id = first
        .strip_prefix("job ")
        .and_then(|r| r.split(':').next())
        .unwrap_or_else(|| panic!("the first line names no job: {first:?}"))
        .to_owned();
    assert!(
        first.contains("accepted; waiting for the result"),
        "{first}"
    );
    // While it waits, it says why the job is not done yet, as soon as the job records it.
    let mut errors = std::io::BufReader::new(submit.stderr.take().unwrap());
    let mut why = String::new();
    errors.read_line(&mut why).unwrap();
    assert_eq!(
        why.trim_end(),
        format!(
            "job {id}: queued: waiting for a backend: backend \"example\" is drained (certconn \
             plugins undrain example)"
        )
    );
    daemon.kill9();
    let out = submit.wait_with_output().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut errors, &mut stderr).unwrap();
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("certconn jobs result {id} --out FILE")),
        "{stderr}"
    );
    // The job was journaled: back up, it finishes, and its result can be fetched.
    let daemon = Daemon::start(&daemon.config, &daemon.log);
    let job = wait_job(&daemon.client(), &id, Duration::from_secs(60)).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(
        ca.stats()["issue_requests"],
        1,
        "the job reached the CA once, after the restart"
    );
    let shown = ok(daemon.cli(&["jobs", "show", &id]));
    assert!(
        shown.contains("state      succeeded")
            && shown.contains("served by  vendor-template")
            && shown.contains(&format!("certconn jobs result {id} --out FILE")),
        "{shown}"
    );
    let fetched = ok(daemon.cli(&["jobs", "result", &id, "--out", pfx.to_str().unwrap()]));
    let password = shown_password(&fetched);
    openssl_pkcs12_info(&pfx, &password);
    // Handed out once: a second fetch writes the PFX but has no password to show.
    let again = ok(daemon.cli(&["jobs", "result", &id, "--out", pfx.to_str().unwrap()]));
    assert!(again.contains("already handed out"), "{again}");
}

/// A subject written the way OpenSSL prints it, or with ';', is refused with the RFC 4514
/// spelling to use; `--subject` beside a CSR says it replaces the CSR's subject.
#[test]
fn subjects_get_a_hint_and_an_override_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_default(dir.path());
    for (given, hint) in [
        ("/O=Example/CN=dev", "\"CN=dev,O=Example\""),
        ("cn=dev;o=Example", "\"cn=dev,o=Example\""),
    ] {
        let out = daemon.cli(&["submit", "issue", "--profile", "smime", "--subject", given]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(hint),
            "{given}: {stderr}"
        );
    }
    let key = dir.path().join("d.key");
    let csr = dir.path().join("d.csr");
    run_ok(Command::new("openssl").args([
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=from-the-csr",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        csr.to_str().unwrap(),
    ]));
    let out = daemon.cli(&[
        "submit",
        "issue",
        "--profile",
        "smime",
        "--csr",
        csr.to_str().unwrap(),
        "--subject",
        "CN=override",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("replaces the CSR's own subject \"CN=from-the-csr\""),
        "{stderr}"
    );
}

/// An `--out` that cannot be written is refused before the job is submitted (its one-time
/// password would be lost with the PFX); one that fails anyway, after the result was fetched,
/// still shows the password and names the command that fetches the PFX again, which the
/// password then opens.
#[test]
fn an_out_that_cannot_be_written_loses_no_pfx() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_default(dir.path());
    let jobs = || ok(daemon.cli(&["jobs", "list", "--json"]));
    let issue_to = |subject: &str, out: &std::path::Path| {
        daemon.cli(&[
            "submit",
            "issue",
            "--profile",
            "smime",
            "--subject",
            subject,
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let before = jobs();
    for (out, why) in [
        (dir.path().join("missing/a.pfx"), "cannot create files in"),
        (dir.path().to_path_buf(), "a directory, not a file"),
    ] {
        let refused = issue_to("CN=nowhere", &out);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            !refused.status.success()
                && stderr.contains(why)
                && stderr.contains("nothing was submitted"),
            "{}: {stderr}",
            out.display()
        );
    }
    assert_eq!(jobs(), before, "a refused --out submitted a job");

    // A link into a directory that is not there passes the check and fails at the write.
    let link = dir.path().join("link.pfx");
    std::os::unix::fs::symlink(dir.path().join("gone/a.pfx"), &link).unwrap();
    let failed = issue_to("CN=fetched again", &link);
    let stdout = String::from_utf8_lossy(&failed.stdout);
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success(), "{stdout}{stderr}");
    let id = stdout
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("job "))
        .and_then(|r| r.split(':').next())
        .unwrap_or_else(|| panic!("no job named in {stdout}"));
    assert!(
        stderr.contains(&format!("certconn jobs result {id} --out FILE")),
        "{stderr}"
    );
    let password = shown_password(&stdout);
    let pfx = dir.path().join("again.pfx");
    let again = ok(daemon.cli(&["jobs", "result", id, "--out", pfx.to_str().unwrap()]));
    assert!(again.contains("already handed out"), "{again}");
    let info = openssl_pkcs12_info(&pfx, &password);
    assert!(info.contains("MAC"), "{info}");
}

/// Subject alternative names in a syntax RFC 5280 does not allow are refused where the request
/// enters the daemon (a 400 of the API naming the field and the name, which the CLI reports),
/// and no job is made.
#[test]
fn malformed_subject_alternative_names_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_default(dir.path());
    let before = ok(daemon.cli(&["jobs", "list", "--json"]));
    for (san, why) in [
        ("email:not an email", "no @"),
        ("dns:-bad-.example", "begins or ends with a hyphen"),
        ("dns:host name.example", "' '"),
        ("uri:not a uri", "must begin with a scheme"),
        ("upn:alice", "no @"),
    ] {
        let refused = daemon.cli(&[
            "submit",
            "issue",
            "--profile",
            "smime",
            "--subject",
            "CN=x",
            "--san",
            san,
        ]);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            !refused.status.success()
                && stderr.contains("sans")
                && stderr.contains(&format!("{san:?}"))
                && stderr.contains(why),
            "{san}: {stderr}"
        );
    }
    assert_eq!(ok(daemon.cli(&["jobs", "list", "--json"])), before);
    // Well-formed names of every kind still go through, into the certificate.
    let pfx = dir.path().join("ok.pfx");
    let out = ok(daemon.cli(&[
        "submit",
        "issue",
        "--profile",
        "smime",
        "--subject",
        "CN=x",
        "--san",
        "email:first.last+tag@example.com",
        "--san",
        "dns:*.dev-1.example.com",
        "--san",
        "uri:urn:uuid:8c5d3f0e-5b7e-4a43-9d4e-2f3c0e6e1a11",
        "--san",
        "upn:alice@corp",
        "--out",
        pfx.to_str().unwrap(),
    ]));
    let pem = dir.path().join("ok.pem");
    run_ok(
        Command::new("openssl")
            .args(["pkcs12", "-nokeys", "-clcerts", "-in"])
            .arg(&pfx)
            .arg("-passin")
            .arg(format!("pass:{}", shown_password(&out)))
            .arg("-out")
            .arg(&pem),
    );
    let text = run_ok(
        Command::new("openssl")
            .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
            .arg(&pem),
    );
    for shown in [
        "email:first.last+tag@example.com",
        "DNS:*.dev-1.example.com",
        "URI:urn:uuid:8c5d3f0e-5b7e-4a43-9d4e-2f3c0e6e1a11",
    ] {
        assert!(text.contains(shown), "{shown} not in {text}");
    }
}
