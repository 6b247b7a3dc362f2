//! Debian's `certmonger` enrols and renews against certconn's SCEP server through its own
//! daemon, as on a Linux host that tracks its certificates: `getcert add-scep-ca`, then
//! `getcert request`, `rekey` and `resubmit`. The daemon runs on a private D-Bus bus the test
//! starts, with its state in the test's temporary directory.
//!
//! certmonger is the client that found most of what issue 17 fixed: its first request is signed
//! by a throwaway certificate with a 32-byte serial, a renewal is a PKCSReq signed by the
//! current certificate (it never sends RenewalReq), and a refusal must reach it as a CertRep
//! FAILURE it can read, so that it stops (`CA_REJECTED`) instead of retrying for ever.

use crate::common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const STATIC_CHALLENGE: &str = "static-Secret-42";

/// How long certmonger gets to settle a request: it enrols in well under a second here.
const SETTLE: Duration = Duration::from_secs(90);

/// certmonger on a private session bus, its state under one directory; both killed on drop.
struct Certmonger {
    bus: Child,
    _bus_stdout: BufReader<std::process::ChildStdout>,
    daemon: Child,
    env: Vec<(&'static str, PathBuf)>,
    bus_address: String,
    log: PathBuf,
    /// The log of the certconn it enrols at, shown when a request goes wrong.
    certconn_log: PathBuf,
}

impl Certmonger {
    fn start(dir: &Path, certconn: &Daemon) -> Certmonger {
        let dir = dir.join("certmonger");
        for sub in ["requests", "cas", "local", "tmp", "home"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let conf = dir.join("bus.conf");
        std::fs::write(
            &conf,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
                dir.join("bus").display()
            ),
        )
        .unwrap();
        let mut bus = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", conf.display()))
            .args(["--nofork", "--print-address=1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-daemon (installed by scripts/install-deps --test)");
        // The bus prints its address once it listens: the readiness signal. The pipe stays
        // open for the bus's lifetime (a closed one would end it at its next write).
        let mut bus_stdout = BufReader::new(bus.stdout.take().unwrap());
        let mut bus_address = String::new();
        bus_stdout.read_line(&mut bus_address).unwrap();
        let bus_address = bus_address.trim().to_owned();
        assert!(bus_address.starts_with("unix:"), "{bus_address:?}");
        let env = vec![
            ("CERTMONGER_REQUESTS_DIR", dir.join("requests")),
            ("CERTMONGER_CAS_DIR", dir.join("cas")),
            ("CERTMONGER_LOCAL_CA_DIR", dir.join("local")),
            ("CERTMONGER_TMPDIR", dir.join("tmp")),
            // Its lock, /var/lib/certmonger/lock by default, would be shared with any other.
            ("CERTMONGER_SYSTEM_LOCK_FILE", dir.join("lock")),
            ("HOME", dir.join("home")),
        ];
        let log = dir.join("certmonger.log");
        let daemon = Command::new("certmonger")
            // -s: the session bus (ours); -d 2 implies -n (no fork) and logs what it does.
            .args(["-s", "-d", "2"])
            .env("DBUS_SESSION_BUS_ADDRESS", &bus_address)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("certmonger (installed by scripts/install-deps --test)");
        let mut cm = Certmonger {
            bus,
            _bus_stdout: bus_stdout,
            daemon,
            env,
            bus_address,
            log,
            certconn_log: certconn.log.clone(),
        };
        // Ready when it answers on the bus.
        let start = Instant::now();
        while !cm.getcert(&["list-cas"]).status.success() {
            if let Ok(Some(status)) = cm.daemon.try_wait() {
                panic!("certmonger exited with {status}:\n{}", cm.log_text());
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "certmonger did not answer on its bus within 30 s:\n{}",
                cm.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        cm
    }

    fn getcert(&self, args: &[&str]) -> std::process::Output {
        let (verb, rest) = args.split_first().expect("a getcert verb");
        Command::new("getcert")
            .arg(verb)
            .arg("-s")
            .args(rest)
            .env("DBUS_SESSION_BUS_ADDRESS", &self.bus_address)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("getcert")
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `getcert list` of one request.
    fn list(&self, id: &str) -> String {
        String::from_utf8_lossy(&self.getcert(&["list", "-i", id]).stdout).into_owned()
    }

    /// Waits until request `id` is in `want` (and `also` holds), failing on any other
    /// settled status, or on a CA error (a refused renewal leaves the request in MONITORING
    /// with a `ca-error`); returns the listing.
    fn wait_for(&self, id: &str, want: &str, also: impl Fn() -> bool) -> String {
        let start = Instant::now();
        loop {
            let listing = self.list(id);
            let status = listing
                .lines()
                .find_map(|l| l.trim().strip_prefix("status: "))
                .unwrap_or("")
                .to_owned();
            if status == want && also() {
                return listing;
            }
            let settled_elsewhere = ["CA_REJECTED", "CA_UNREACHABLE", "CA_UNCONFIGURED"]
                .contains(&status.as_str())
                || (status == "MONITORING" && want != "MONITORING")
                || (want == "MONITORING" && listing.contains("ca-error:"));
            assert!(
                !settled_elsewhere || status == want,
                "request {id} ended in {status}, not {want}:\n{listing}\ncertmonger log:\n{}\ncertconn log:\n{}",
                self.log_text(),
                std::fs::read_to_string(&self.certconn_log).unwrap_or_default()
            );
            assert!(
                start.elapsed() < SETTLE,
                "request {id} did not reach {want} within {SETTLE:?}:\n{listing}\ncertmonger log:\n{}\ncertconn log:\n{}",
                self.log_text(),
                std::fs::read_to_string(&self.certconn_log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Asks for a certificate for `CN=name` with `challenge`; the key and certificate go to
    /// `out/name.key` and `out/name.crt`.
    fn request(&self, out: &Path, name: &str, challenge: &str) -> (PathBuf, PathBuf) {
        let (key, cert) = (
            out.join(format!("{name}.key")),
            out.join(format!("{name}.crt")),
        );
        ok(self.getcert(&[
            "request",
            "-c",
            "certconn",
            "-I",
            name,
            "-k",
            key.to_str().unwrap(),
            "-f",
            cert.to_str().unwrap(),
            "-N",
            &format!("CN={name}"),
            "-L",
            challenge,
        ]));
        (key, cert)
    }
}

impl Drop for Certmonger {
    fn drop(&mut self) {
        for child in [&mut self.daemon, &mut self.bus] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn openssl(args: &[&str]) -> String {
    run_ok(Command::new("openssl").args(args))
}

fn serial_of(cert: &Path) -> String {
    openssl(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-serial"])
        .trim()
        .to_owned()
}

/// Whether certmonger has written a new certificate over `old`.
fn replaced(cert: &Path, old: &[u8]) -> bool {
    std::fs::read(cert).is_ok_and(|now| now != old)
}

fn public_key_of_certificate(cert: &Path) -> String {
    openssl(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-pubkey"])
}

fn public_key_of_key(key: &Path) -> String {
    openssl(&["pkey", "-in", key.to_str().unwrap(), "-pubout"])
}

#[test]
fn certmonger_enrols_renews_and_rekeys_through_its_own_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let challenge = dir.path().join("challenge");
    write_private(&challenge, &format!("{STATIC_CHALLENGE}\n"));
    // SCEP clients encrypt to the certificates GetCACert returns: a SCEP CA is RSA.
    let daemon = start_in(dir.path(), |data| {
        config_text(data, &plugins(), &scep_section(&challenge))
            .replace("algorithm = \"ec-p256\"", "algorithm = \"rsa-2048\"")
    });
    let bundle = scep_ca_bundle(&daemon, dir.path());
    // Nothing is announced by GetNextCACert while the RA is young; status says when it comes.
    let (status, body) = http_raw(daemon.port, "GET", "/scep?operation=GetNextCACert", b"");
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
    let shown = ok(daemon.cli(&["status"]));
    assert!(
        shown.contains("SCEP RA: certificate #1 until ")
            && shown.contains("the next one is made at"),
        "{shown}"
    );
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();

    let cm = Certmonger::start(dir.path(), &daemon);
    ok(cm.getcert(&[
        "add-scep-ca",
        "-c",
        "certconn",
        "-u",
        &format!("http://127.0.0.1:{}/scep", daemon.port),
    ]));

    // The static challenge: certmonger's first request is signed by its throwaway certificate.
    let (key, cert) = cm.request(&out, "cm-static", STATIC_CHALLENGE);
    cm.wait_for("cm-static", "MONITORING", || cert.exists());
    openssl(&[
        "verify",
        "-CAfile",
        bundle.to_str().unwrap(),
        cert.to_str().unwrap(),
    ]);
    assert_eq!(public_key_of_certificate(&cert), public_key_of_key(&key));
    assert_eq!(jobs_total(&daemon), 1);

    // A wrong challenge is a CertRep FAILURE certmonger reads and stops at.
    let refused_before = events(&daemon, 4201);
    let (_, bad_cert) = cm.request(&out, "cm-wrong", "not-the-challenge");
    cm.wait_for("cm-wrong", "CA_REJECTED", || true);
    assert!(!bad_cert.exists());
    assert_eq!(jobs_total(&daemon), 1, "a refused request journals nothing");
    assert!(
        events(&daemon, 4201) > refused_before,
        "the refusal is logged"
    );

    // A one-time challenge works once.
    let one_time = ok(daemon.cli(&["scep", "challenge"])).trim().to_string();
    let (otc_key, otc_cert) = cm.request(&out, "cm-once", &one_time);
    cm.wait_for("cm-once", "MONITORING", || otc_cert.exists());
    let (_, again) = cm.request(&out, "cm-once-again", &one_time);
    cm.wait_for("cm-once-again", "CA_REJECTED", || true);
    assert!(!again.exists());
    assert_eq!(jobs_total(&daemon), 2);

    // Re-key renewal: a new key, the request signed by the current certificate, no challenge
    // needed (the static one would do too; the renewal event shows it was not used).
    let renewals = events(&daemon, 4202);
    let (old_serial, old_cert) = (serial_of(&cert), std::fs::read(&cert).unwrap());
    let old_key = public_key_of_key(&key);
    ok(cm.getcert(&["rekey", "-i", "cm-static"]));
    cm.wait_for("cm-static", "MONITORING", || replaced(&cert, &old_cert));
    assert_ne!(serial_of(&cert), old_serial);
    assert_ne!(public_key_of_key(&key), old_key, "rekey makes a new key");
    assert_eq!(public_key_of_certificate(&cert), public_key_of_key(&key));
    openssl(&[
        "verify",
        "-CAfile",
        bundle.to_str().unwrap(),
        cert.to_str().unwrap(),
    ]);
    assert_eq!(events(&daemon, 4202), renewals + 1);

    // Renewal with no usable challenge: cm-once's one-time challenge is spent, so only the
    // certificate it holds can authorise the renewal.
    let (old_serial, old_cert) = (serial_of(&otc_cert), std::fs::read(&otc_cert).unwrap());
    ok(cm.getcert(&["resubmit", "-i", "cm-once"]));
    cm.wait_for("cm-once", "MONITORING", || replaced(&otc_cert, &old_cert));
    assert_ne!(serial_of(&otc_cert), old_serial);
    assert_eq!(
        public_key_of_certificate(&otc_cert),
        public_key_of_key(&otc_key)
    );
    assert_eq!(events(&daemon, 4202), renewals + 2);
    assert_eq!(jobs_total(&daemon), 4);

    let log = std::fs::read_to_string(&daemon.log).unwrap();
    assert!(!log.contains(STATIC_CHALLENGE) && !log.contains(&one_time));
}
