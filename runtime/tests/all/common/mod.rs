//! Test harness: runs the real `certconn` binary as a daemon with a throwaway data directory,
//! and talks to it through the real API client. Plugins must be built beforehand
//! (`scripts/build-plugins`); a test never starts a build.

#![allow(dead_code)]

pub mod feed;
pub mod unit_filter;
pub mod unit_mounts;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use certconn::sources::api::client::ApiClient;
use hyper::Method;
use serde_json::Value;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("runtime/ has a parent")
        .to_owned()
}

fn plugin_dir(var: &str, default: &str) -> PathBuf {
    let dir = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(default));
    assert!(
        dir.is_dir(),
        "plugin directory {} does not exist: run scripts/build-plugins first (tests never build)",
        dir.display()
    );
    dir
}

pub fn plugins() -> PathBuf {
    plugin_dir("CERTCONN_PLUGIN_DIR", "dist/plugins")
}

pub fn test_plugins() -> PathBuf {
    plugin_dir("CERTCONN_TEST_PLUGIN_DIR", "dist/test-plugins")
}

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_certconn"))
}

/// The quick-start CA and profiles, plus `extra` TOML. The API listens on a port the kernel
/// picks (`listen = "127.0.0.1:0"`); the daemon writes the one it got to `data/api.addr`.
pub fn config_text(data: &Path, plugins: &Path, extra: &str) -> String {
    format!(
        r#"
data_dir = "{data}"
[api]
listen = "127.0.0.1:0"
[jobs]
workers = 4
backoff_initial_ms = 50
backoff_max_ms = 500
[plugins]
dir = "{plugins}"
[keys.local-ca]
algorithm = "ec-p256"
self_signed = {{ subject = "CN=certconn Test CA,O=certconn" }}
[backends.local]
plugin = "local-ca"
keys = ["local-ca"]
[backends.local.settings]
ca_key = "local-ca"
[backends.local.settings.profiles.smime]
key_usage = ["digital_signature", "key_encipherment"]
extended_key_usage = ["email_protection", "client_auth"]
validity_days = 365
[profiles.smime]
backend = "local"
{extra}
"#,
        data = data.display(),
        plugins = plugins.display()
    )
}

/// A running daemon; killed on drop.
pub struct Daemon {
    pub child: Child,
    pub config: PathBuf,
    /// The port the API got (read from `data/api.addr` once the daemon had bound it).
    pub port: u16,
    pub log: PathBuf,
    /// Extra environment for the daemon and for `cli` (e.g. `SOFTHSM2_CONF`).
    pub env: Vec<(String, std::ffi::OsString)>,
}

impl Daemon {
    /// Starts `certconn serve` and waits until its API is bound.
    pub fn start(config: &Path, log: &Path) -> Daemon {
        Self::start_with_env(config, log, Vec::new())
    }

    /// `start` with extra environment variables.
    pub fn start_with_env(
        config: &Path,
        log: &Path,
        env: Vec<(String, std::ffi::OsString)>,
    ) -> Daemon {
        Self::start_with(config, log, env, |_| {})
    }

    /// `start` with the open-file limit `soft`:`hard` (`ulimit -n`), as a service manager would
    /// set it.
    pub fn start_with_file_limit(config: &Path, log: &Path, soft: u64, hard: u64) -> Daemon {
        use std::os::unix::process::CommandExt;
        Self::start_with(config, log, Vec::new(), move |cmd| {
            // SAFETY: the closure makes one `setrlimit` call, which is async-signal-safe.
            unsafe {
                cmd.pre_exec(move || {
                    let limit = libc::rlimit {
                        rlim_cur: soft,
                        rlim_max: hard,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        })
    }

    fn start_with(
        config: &Path,
        log: &Path,
        env: Vec<(String, std::ffi::OsString)>,
        configure: impl FnOnce(&mut Command),
    ) -> Daemon {
        let addr_file = certconn::app::Config::load(config)
            .expect("config")
            .api_addr_file();
        // A previous run's address must not pass for this one's.
        let _ = std::fs::remove_file(&addr_file);
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let mut command = Command::new(binary());
        command
            .args(["--log-format", "json", "serve", "--config"])
            .arg(config)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        configure(&mut command);
        let child = command.spawn().expect("spawn certconn serve");
        let mut d = Daemon {
            child,
            config: config.to_owned(),
            port: 0,
            log: log.to_owned(),
            env,
        };
        d.port = d.wait_ready(&addr_file);
        d
    }

    /// Waits for `data/api.addr`, which `serve` writes once its listener is bound (connections
    /// from then on queue until it accepts them): no port is guessed, none can be taken first.
    fn wait_ready(&mut self, addr_file: &Path) -> u16 {
        let start = Instant::now();
        loop {
            if let Some(addr) = std::fs::read_to_string(addr_file)
                .ok()
                .and_then(|t| t.trim().parse::<std::net::SocketAddr>().ok())
            {
                return addr.port();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "certconn serve exited with {status}; log:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "daemon did not listen within 60 s; log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGSTOP: the process holds whatever it holds until it is thawed or killed.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`Daemon::freeze`].
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(signal)
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal} {}", self.child.id());
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }

    pub fn client(&self) -> ApiClient {
        let config = certconn::app::Config::load(&self.config).expect("config");
        let token = certconn::sources::api::token::read(&config.token_file()).expect("token");
        config.api_client(token).expect("API client")
    }

    /// Runs the CLI against this daemon.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(binary())
            .args(args)
            .env("CERTCONN_CONFIG", &self.config)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("run certconn")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A loopback port held by the test for a daemon that must name its own address in its config
/// (a backend that enrols at the same daemon's SCEP server): the test binds it first, so nobody
/// can take it, and forwards every connection to the daemon once it runs.
pub struct Relay {
    pub port: u16,
    target: std::sync::Arc<std::sync::OnceLock<u16>>,
}

impl Relay {
    pub fn new() -> Relay {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a relay");
        let port = listener.local_addr().expect("relay address").port();
        let target = std::sync::Arc::new(std::sync::OnceLock::<u16>::new());
        let to = target.clone();
        std::thread::spawn(move || {
            for inbound in listener.incoming().flatten() {
                let Some(&port) = to.get() else {
                    continue; // the daemon is not up yet: refuse by closing
                };
                let Ok(outbound) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (inbound.try_clone().unwrap(), outbound.try_clone().unwrap()),
                    (outbound, inbound),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        Relay { port, target }
    }

    /// Forwards to `daemon` from now on.
    pub fn to(&self, daemon: &Daemon) {
        let _ = self.target.set(daemon.port);
    }
}

/// Waits until job `id` is terminal; returns the job JSON.
pub async fn wait_job(api: &ApiClient, id: &str, timeout: Duration) -> Value {
    let start = Instant::now();
    loop {
        let job = api
            .call(Method::GET, &format!("/v1/jobs/{id}"), None)
            .await
            .expect("get job");
        if matches!(job["state"].as_str(), Some("succeeded" | "failed" | "dead")) {
            return job;
        }
        assert!(start.elapsed() < timeout, "job {id} did not finish: {job}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Runs a command, asserting success, returning stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A key and self-signed certificate made by openssl: `dir/NAME.key`, `dir/NAME.pem`.
/// `newkey` is openssl's key choice, e.g. `["-newkey", "rsa:2048"]`.
pub fn openssl_self_signed(dir: &Path, name: &str, newkey: &[&str]) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.key"));
    let cert = dir.join(format!("{name}.pem"));
    run_ok(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN={name}"),
            ])
            .args(newkey)
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert),
    );
    (key, cert)
}

/// A CA and a certificate it issued, made by the openssl CLI with the X.509 extensions in
/// `extensions` (an `-extfile`): (CA certificate, certificate, key), named after `name`.
pub fn openssl_ca_and_leaf(
    dir: &Path,
    name: &str,
    extensions: &str,
) -> (PathBuf, PathBuf, PathBuf) {
    let file = |ext: &str| dir.join(format!("{name}.{ext}"));
    let (ca, ca_key, cert, key, csr, ext) = (
        file("ca.pem"),
        file("ca.key"),
        file("pem"),
        file("key"),
        file("csr"),
        file("ext"),
    );
    run_ok(
        Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", &format!("/CN={name} CA")])
            .arg("-keyout")
            .arg(&ca_key)
            .arg("-out")
            .arg(&ca),
    );
    run_ok(
        Command::new("openssl")
            .args(["req", "-new", "-newkey", "rsa:2048", "-nodes"])
            .args(["-subj", &format!("/CN={name}")])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&csr),
    );
    std::fs::write(&ext, extensions).unwrap();
    run_ok(
        Command::new("openssl")
            .args(["x509", "-req", "-days", "1", "-in"])
            .arg(&csr)
            .arg("-CA")
            .arg(&ca)
            .arg("-CAkey")
            .arg(&ca_key)
            .args(["-CAcreateserial", "-extfile"])
            .arg(&ext)
            .arg("-out")
            .arg(&cert),
    );
    (ca, cert, key)
}

/// An RSA-2048 device key and self-signed certificate made by openssl.
pub fn openssl_device(dir: &Path) -> (PathBuf, PathBuf) {
    openssl_self_signed(dir, "device", &["-newkey", "rsa:2048"])
}

/// A plugin directory holding the first-party and the test plugins, for configs that mix them.
pub fn mixed_plugin_dir(dir: &Path) -> PathBuf {
    let out = dir.join("plugins");
    std::fs::create_dir_all(&out).unwrap();
    for src in [
        plugins().join("local-ca.wasm"),
        test_plugins().join("sandbox-probe.wasm"),
    ] {
        std::fs::copy(&src, out.join(src.file_name().unwrap()))
            .unwrap_or_else(|e| panic!("{}: {e}", src.display()));
    }
    out
}

/// A plugin directory with the vendor template (the mock CA's backend) and local-ca.
pub fn vendor_and_local_plugin_dir(dir: &Path) -> PathBuf {
    plugin_dir_with(
        dir,
        &[
            (
                test_plugins().join("vendor-template.wasm"),
                "vendor-template",
            ),
            (plugins().join("local-ca.wasm"), "local-ca"),
        ],
    )
}

/// Submits an issue job through the API; returns its id.
pub async fn submit(api: &ApiClient, profile: &str, key: &str, extra: Value) -> String {
    let mut body = serde_json::json!({ "profile": profile, "subject": "CN=test device", "idempotency_key": key });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let answer = api
        .call(Method::POST, "/v1/jobs/issue", Some(&body))
        .await
        .expect("submit");
    answer["job"]["id"].as_str().expect("job id").to_owned()
}

/// `text` (a [`config_text`]) with `settings` (TOML lines) added to its `[api]` table.
pub fn with_api_settings(text: &str, settings: &str) -> String {
    const LISTEN: &str = "listen = \"127.0.0.1:0\"\n";
    assert!(text.contains(LISTEN), "no [api] listen line in:\n{text}");
    text.replacen(LISTEN, &format!("{LISTEN}{settings}\n"), 1)
}

/// The address `api.plain_listen` got, which `serve` writes to `<dir>/data/plain.addr` before
/// `api.addr` (so it is there once [`Daemon::start`] returns).
pub fn plain_addr(dir: &Path) -> std::net::SocketAddr {
    std::fs::read_to_string(dir.join("data/plain.addr"))
        .expect("serve writes data/plain.addr")
        .trim()
        .parse()
        .expect("an address in data/plain.addr")
}

/// One limit of process `pid` as `/proc/PID/limits` states it: `(soft, hard)`, as written
/// (`unlimited` or a number).
pub fn process_limit(pid: u32, name: &str) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_else(|| panic!("no {name:?} in:\n{limits}"));
    let mut words = line.split_whitespace();
    match (words.next(), words.next()) {
        (Some(soft), Some(hard)) => (soft.to_owned(), hard.to_owned()),
        _ => panic!("{name}: no soft and hard limit in {line:?}"),
    }
}

/// The default test config with `extra` appended, written to `<dir>/certconn.toml` (its data
/// directory `<dir>/data`); its path.
pub fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let config = dir.join("certconn.toml");
    std::fs::write(&config, config_text(&dir.join("data"), &plugins(), extra)).unwrap();
    config
}

/// Writes `dir/certconn.toml` from `text(data_dir)` and starts a daemon on it.
pub fn start_in(dir: &Path, text: impl FnOnce(&Path) -> String) -> Daemon {
    let config = dir.join("certconn.toml");
    std::fs::write(&config, text(&dir.join("data"))).unwrap();
    Daemon::start(&config, &dir.join("daemon.log"))
}

/// A daemon with the default test config (local-ca, profile `smime`).
pub fn start_default(dir: &Path) -> Daemon {
    start_in(dir, |data| config_text(data, &plugins(), ""))
}

/// The one-time PFX password `certconn submit issue` printed.
pub fn shown_password(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("PFX password (shown once, not kept): "))
        .unwrap_or_else(|| panic!("no password line in {stdout}"))
        .to_owned()
}

/// `certconn submit issue --profile P --subject S --out PFX` against `daemon`; asserts success
/// and returns the one-time password it printed.
pub fn issue_pfx(daemon: &Daemon, profile: &str, subject: &str, pfx: &Path) -> String {
    let out = daemon.cli(&[
        "submit",
        "issue",
        "--profile",
        profile,
        "--subject",
        subject,
        "--out",
        pfx.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    shown_password(&stdout)
}

/// What `openssl pkcs12 -info -noout` says about `pfx` (it reports on stderr); asserts it opened it.
pub fn openssl_pkcs12_info(pfx: &Path, password: &str) -> String {
    let out = Command::new("openssl")
        .args([
            "pkcs12",
            "-info",
            "-noout",
            "-passin",
            &format!("pass:{password}"),
            "-in",
        ])
        .arg(pfx)
        .output()
        .expect("run openssl");
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "openssl could not read {}: {text}",
        pfx.display()
    );
    text
}

/// A throwaway SoftHSM2 token in `dir` labelled `label`: returns the `SOFTHSM2_CONF` path and a
/// 0600 file holding its user PIN.
pub fn softhsm_token(dir: &Path, label: &str) -> (PathBuf, PathBuf) {
    certconn::custody::softhsm::throwaway_token(dir, label, "4711-test-pin")
        .unwrap_or_else(|e| panic!("{e}"))
}

/// For a test that loads SoftHSM2 into this process, which reads `SOFTHSM2_CONF` with C's
/// `getenv` when the module starts: `std::env::set_var` in this binary, whose tests run on many
/// threads, races C code reading the environment on another thread (glibc's `setenv` may move
/// the array a `getenv` is walking). So test `name` runs again alone, in a child process whose
/// environment names `softhsm2.conf` in a directory the parent made (and removes) from its
/// start. Returns that directory in the child, where [`softhsm_token`] puts the config the
/// variable names; `None` in the parent, once the child has passed.
pub fn alone_with_softhsm(name: &str) -> Option<PathBuf> {
    const CHILD: &str = "CERTCONN_TEST_ALONE";
    if std::env::var_os(CHILD).is_some_and(|test| test == name) {
        let conf = PathBuf::from(std::env::var_os("SOFTHSM2_CONF").expect("set by the parent"));
        return Some(conf.parent().expect("a file in a directory").to_owned());
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, name)
        .env("SOFTHSM2_CONF", dir.path().join("softhsm2.conf"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "{name}, run alone in a child process:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    None
}

/// `out` must be a success; returns its stdout (and shows both streams when it is not).
pub fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `[custody.pkcs11]` section for a `softhsm_token`.
pub fn softhsm_custody(label: &str, pin_file: &Path) -> String {
    format!(
        "[custody.pkcs11]\nmodule = \"{SOFTHSM_MODULE}\"\ntoken_label = \"{label}\"\npin_file = \"{}\"\n",
        pin_file.display()
    )
}

pub use certconn::custody::softhsm::MODULE as SOFTHSM_MODULE;

/// A plain HTTP/1.0 request to a daemon on loopback: (status, body). For protocols the API
/// client does not speak (SCEP).
pub fn http_raw(port: u16, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let head = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/x-pki-message\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("HTTP response head");
    let status = std::str::from_utf8(&out[9..12]).unwrap().parse().unwrap();
    (status, out[split + 4..].to_vec())
}

/// The `[scep]` section used by the SCEP tests: profile `smime` on the local CA.
pub fn scep_section(challenge_file: &Path) -> String {
    format!(
        "[scep]\nprofile = \"smime\"\nca_key = \"local-ca\"\nchallenge_file = \"{}\"\nwait_seconds = 5\n",
        challenge_file.display()
    )
}

/// The CA and RA certificates as GetCACert publishes them, PEM.
pub fn scep_ca_bundle(daemon: &Daemon, dir: &Path) -> PathBuf {
    let (status, body) = http_raw(daemon.port, "GET", "/scep?operation=GetCACert", b"");
    assert_eq!(status, 200);
    let der = dir.join("cacert.p7b");
    std::fs::write(&der, body).unwrap();
    let pem = dir.join("ca-bundle.pem");
    run_ok(Command::new("openssl").args([
        "pkcs7",
        "-inform",
        "DER",
        "-in",
        der.to_str().unwrap(),
        "-print_certs",
        "-out",
        pem.to_str().unwrap(),
    ]));
    pem
}

/// How many jobs the daemon's journal holds.
pub fn jobs_total(daemon: &Daemon) -> usize {
    let out = ok(daemon.cli(&["jobs", "list", "--json"]));
    serde_json::from_str::<serde_json::Value>(&out).unwrap()["jobs"]
        .as_array()
        .map(Vec::len)
        .unwrap_or(0)
}

/// Writes a 0600 file.
pub fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// `examples/vendor-template/mock-ca.py` on a free loopback port; killed on drop.
pub struct MockCa {
    child: Child,
    pub port: u16,
}

impl MockCa {
    /// Starts the mock CA; `delay_ms` makes each issuance that slow.
    pub fn start(delay_ms: u64) -> MockCa {
        Self::start_on(0, delay_ms)
    }

    /// `start` on a given port (0: any free one).
    pub fn start_on(port: u16, delay_ms: u64) -> MockCa {
        Self::start_with(&[
            "--port",
            &port.to_string(),
            "--delay-ms",
            &delay_ms.to_string(),
        ])
    }

    /// The mock CA with these command-line arguments (`--fail-first N`, …).
    pub fn start_with(args: &[&str]) -> MockCa {
        use std::io::BufRead;
        let mut child = Command::new("python3")
            .arg(repo_root().join("examples/vendor-template/mock-ca.py"))
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs examples/vendor-template/mock-ca.py");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the mock CA prints its port");
        let port = line.trim().parse().unwrap_or_else(|_| {
            panic!(
                "mock-ca.py did not print its port (is python3-cryptography installed?): {line:?}"
            )
        });
        MockCa { child, port }
    }

    /// `/mock/stats`: issue_requests, in_flight, max_in_flight.
    pub fn stats(&self) -> Value {
        let (status, body) = http_raw(self.port, "GET", "/mock/stats", b"");
        assert_eq!(status, 200);
        serde_json::from_slice(&body).expect("stats JSON")
    }

    /// A `[backends.NAME]` of the vendor template talking to this CA, and profile NAME.
    pub fn backend(&self, name: &str, extra: &str) -> String {
        format!(
            "[backends.{name}]\nplugin = \"vendor-template\"\nhttp = {{ allow = [\"127.0.0.1:{port}\"] }}\n{extra}\n[backends.{name}.settings]\nurl = \"http://127.0.0.1:{port}\"\napi_key = \"demo-key\"\n[profiles.{name}]\nbackend = \"{name}\"\n",
            port = self.port
        )
    }
}

impl Drop for MockCa {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Copies plugins into a fresh `dir/plugins`: `(source, published name)` pairs, for tests that
/// publish, replace and roll back plugin files.
pub fn plugin_dir_with(dir: &Path, files: &[(PathBuf, &str)]) -> PathBuf {
    let out = dir.join("plugins");
    std::fs::create_dir_all(&out).unwrap();
    for (src, name) in files {
        std::fs::copy(src, out.join(format!("{name}.wasm")))
            .unwrap_or_else(|e| panic!("{}: {e}", src.display()));
    }
    out
}

/// `certconn plugin pack`: `component` with a manifest naming it `name` at `version` for
/// `contract`, written to `out`.
pub fn pack(component: &Path, name: &str, version: &str, contract: &str, out: &Path) {
    // A test fixture, not `certconn plugin pack`: the variants tests need (a "new version" of a
    // component, a package that lies about its contract) are exactly what pack refuses.
    let manifest = certconn::plugins::manifest::Manifest::parse(
        format!("name = \"{name}\"\nversion = \"{version}\"\ncontract = \"{contract}\"\ndescription = \"repacked by a test\"\n").as_bytes(),
    )
    .unwrap();
    let packaged = certconn::plugins::package::PluginPackage::read(component).unwrap();
    let bytes = certconn::plugins::package::embed(&packaged.bytes, &manifest).unwrap();
    std::fs::write(out, bytes).unwrap();
}

/// Publishes `src` as `dir/NAME.wasm` the supported way: temporary file, then rename.
pub fn publish(src: &Path, dir: &Path, name: &str) {
    let tmp = dir.join(format!(".{name}.wasm.tmp"));
    std::fs::copy(src, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join(format!("{name}.wasm"))).unwrap();
}

/// `GET /v1/plugins`.
pub async fn plugins_status(api: &ApiClient) -> Value {
    api.call(Method::GET, "/v1/plugins", None)
        .await
        .expect("plugins status")
}

/// The status entry of backend instance `name`.
pub async fn backend_status(api: &ApiClient, name: &str) -> Value {
    let all = plugins_status(api).await;
    all["backends"]
        .as_array()
        .and_then(|a| a.iter().find(|b| b["backend"] == name).cloned())
        .unwrap_or_else(|| panic!("no backend {name} in {all}"))
}

/// Polls `check` every 20 ms until it returns Some, or panics after `timeout` with `what`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The job's stored result (`backend_version` says which plugin version did the work).
pub async fn job_result(api: &ApiClient, id: &str) -> Value {
    api.call(Method::GET, &format!("/v1/jobs/{id}/result"), None)
        .await
        .expect("job result")["result"]
        .clone()
}

/// `GET path` on the daemon's plain-HTTP API port with curl, with `token` as the bearer token
/// when given: (status, body).
pub fn http_get(port: u16, path: &str, token: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-w", "\n%{http_code}"]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = cmd
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .expect("curl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').expect("status line");
    (code.trim().parse().unwrap(), body.to_owned())
}

/// How many log lines of the daemon carry event `id` (the log is JSON).
pub fn events(daemon: &Daemon, id: u64) -> usize {
    std::fs::read_to_string(&daemon.log)
        .unwrap()
        .lines()
        .filter(|l| l.contains(&format!("\"event_id\":{id}")))
        .count()
}

/// Waits until the daemon has logged event `id` at least once, for up to `max`: an event the
/// daemon logs after a peer has seen its effect (the peer answers first, the log line follows)
/// is not yet in the log the moment the peer shows it. Returns how many lines carry it.
pub fn wait_for_event(daemon: &Daemon, id: u64, max: Duration) -> usize {
    let start = Instant::now();
    loop {
        let n = events(daemon, id);
        if n > 0 {
            return n;
        }
        assert!(
            start.elapsed() < max,
            "the daemon logged no event {id} in {max:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A token file the daemon made in `<dir>/data` (`api-token`, `api-read-token`).
pub fn data_token(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join("data").join(name))
        .unwrap()
        .trim()
        .to_owned()
}

/// The daemon's `/metrics` on `port`, read with the read-only token it made in `<dir>/data`.
pub fn scrape_metrics(port: u16, dir: &Path) -> String {
    let (status, text) = http_get(port, "/metrics", Some(&data_token(dir, "api-read-token")));
    assert_eq!(status, 200, "{text}");
    text
}

/// The value of one series in a `/metrics` text, named as written there (`name{labels}`, or
/// `name` alone); panics, with the text, when it is not there.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

/// The PFX password sealed to a device (CMS EnvelopedData, DER in `sealed`), opened with the
/// device's certificate and key by `openssl cms -decrypt`.
pub fn openssl_unseal(sealed: &Path, device_cert: &Path, device_key: &Path) -> String {
    run_ok(
        Command::new("openssl")
            .args(["cms", "-decrypt", "-inform", "DER", "-in"])
            .arg(sealed)
            .arg("-recip")
            .arg(device_cert)
            .arg("-inkey")
            .arg(device_key),
    )
}

/// `certconn ARGS --config CONFIG`: whether it succeeded, and what it printed (both streams).
pub fn run_certconn(args: &[&str], config: &Path) -> (bool, String) {
    let out = Command::new(binary())
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// micromdm's `scepclient` enrolling `name` (its CN) at the daemon's SCEP server with
/// `challenge`, in a directory of its own: its output and where its certificate would be.
pub fn scepclient(daemon: &Daemon, dir: &Path, name: &str, challenge: &str) -> (Output, PathBuf) {
    // scepclient keeps its CSR in `csr.pem` in the working directory and resends it: one
    // directory per device, as on real devices.
    let dir = &dir.join(name);
    std::fs::create_dir_all(dir).unwrap();
    let cert = dir.join(format!("{name}.crt"));
    let out = Command::new("scepclient")
        .args([
            "-server-url",
            &format!("http://127.0.0.1:{}/scep", daemon.port),
        ])
        .args(["-challenge", challenge, "-cn", name, "-keySize", "2048"])
        .arg("-private-key")
        .arg(dir.join(format!("{name}.key")))
        .arg("-certificate")
        .arg(&cert)
        .current_dir(dir)
        .output()
        .expect("scepclient (Debian package scep) is installed by scripts/install-deps --test");
    (out, cert)
}

/// Inserts into the live journal `db` a queued copy of the job with idempotency key `of_key`,
/// keyed `key`, whose request is not JSON, due at `next_run_at` (unix ms): a job whose record
/// cannot be read, as a hand edit or a bad restore leaves one. Returns the copy's id (the
/// original's with `-spoiled`).
pub fn insert_unreadable_copy(
    db: &rusqlite::Connection,
    of_key: &str,
    key: &str,
    next_run_at: u128,
) -> String {
    db.execute_batch(&format!(
        "CREATE TEMP TABLE copy AS SELECT * FROM jobs WHERE idempotency_key = '{of_key}';
         UPDATE copy SET id = id || '-spoiled', idempotency_key = '{key}', state = 'queued',
             request = '{{not JSON', attempts = 0, next_run_at = {next_run_at},
             last_error = NULL, backend = NULL, lease_owner = NULL, lease_until = NULL,
             lease_token = NULL, delivered_at = NULL;
         INSERT INTO jobs SELECT * FROM copy;
         DROP TABLE copy;"
    ))
    .unwrap();
    db.query_row(
        "SELECT id FROM jobs WHERE idempotency_key = ?1",
        [key],
        |r| r.get(0),
    )
    .unwrap()
}
