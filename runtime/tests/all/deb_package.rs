//! The Debian package as an administrator meets it: `dpkg -i`, the daemon started from the
//! installed paths as the unit runs it (its user, file system and system call filter) with the
//! installed config, certificates issued and read by openssl; then the two setups the
//! documents give drop-ins for, under the same unit: the daemon's own update through the
//! launcher, and keys on a SoftHSM2 token; then `dpkg --purge` leaving nothing behind. Built by
//! `scripts/package-deb` (scripts/test runs it); installing needs root, as CI has.

use crate::common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn deb() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    let deb = target.join("debian/certconn.deb");
    assert!(
        deb.exists(),
        "{} is missing: scripts/test builds it with scripts/package-deb",
        deb.display()
    );
    deb
}

fn sh(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// A command run as the package's `certconn` user, as systemd would run it. `setpriv` execs
/// the command itself (no session process in between), so killing the child kills certconn.
fn as_certconn(args: &[&str]) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=certconn",
        "--regid=certconn",
        "--init-groups",
        "--reset-env",
    ])
    .args(args);
    cmd
}

/// A command run by an administrator in a root shell (`env COMMAND…`): with the environment
/// such a shell has, not this test process's (another test in it sets `SOFTHSM2_CONF` for
/// itself, which would send `softhsm2-util` to that test's tokens).
fn as_root_admin() -> Command {
    let mut cmd = Command::new("env");
    cmd.args([
        "-i",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ]);
    cmd
}

/// The installed `certconn ARGS` with the installed config, as the `certconn` user.
fn installed(args: &[&str]) -> Command {
    let mut cmd = as_certconn(&["/usr/bin/certconn"]);
    cmd.args(args)
        .args(["--config", "/etc/certconn/certconn.toml"]);
    cmd
}

/// Where an administrator's drop-ins for the unit go (`systemctl edit certconn` writes there).
const DROP_INS: &str = "/etc/systemd/system/certconn.service.d";

/// The installed unit as systemd reads it: its file, then its drop-ins in the order of their
/// names (later settings add to a list, or replace a single value, as systemd does).
fn the_unit() -> String {
    let mut unit = std::fs::read_to_string("/lib/systemd/system/certconn.service").unwrap();
    let mut drop_ins: Vec<PathBuf> = std::fs::read_dir(DROP_INS)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    drop_ins.retain(|p| p.extension().is_some_and(|e| e == "conf"));
    drop_ins.sort();
    for file in drop_ins {
        unit.push_str(&std::fs::read_to_string(file).unwrap());
    }
    unit
}

/// The installed unit's command `key` (`ExecStart`, `ExecStartPre`) as the unit runs it (see
/// [`under_the_unit`]): its last word, as systemd reads a drop-in's `ExecStart=` (an empty
/// one clears what came before).
fn as_the_unit_runs(key: &str) -> Command {
    let unit = the_unit();
    let mut line = None;
    for value in unit
        .lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
    {
        line = Some(value.trim()).filter(|v| !v.is_empty());
    }
    let line = line.unwrap_or_else(|| panic!("the unit has no {key}="));
    under_the_unit(&line.split_whitespace().collect::<Vec<_>>())
}

/// `command` run as the unit runs its commands: as the `certconn` user with its groups, seeing
/// the file system the unit gives it (read-only but for its state directory and
/// `ReadWritePaths=`, its own `/tmp`, a `/proc` of its own processes only:
/// `common::unit_mounts`), and under the unit's system call filter and address families
/// (`common::unit_filter`) — so that what the unit forbids fails here as under systemd (a
/// forbidden call kills with SIGSYS), not first in production — and with systemd's default
/// open-file limit for services, 1,024 soft (`DefaultLimitNOFILE=`), which `serve` raises.
/// The unit's drop-ins count.
fn under_the_unit(command: &[&str]) -> Command {
    let unit = the_unit();
    let filter = common::unit_filter::UnitFilter::of_unit(&unit);
    let mut cmd = Command::new(command[0]);
    cmd.args(&command[1..])
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", "/var/lib/certconn")
        .env("USER", "certconn")
        .env("LOGNAME", "certconn");
    let mounts = common::unit_mounts::UnitMounts::of_unit(&unit, "certconn");
    // SAFETY: the closure makes system calls only, on what was built before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let mut files = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut files) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            files.rlim_cur = files.rlim_max.min(1024);
            if libc::setrlimit(libc::RLIMIT_NOFILE, &files) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            mounts.enter()?;
            filter.install()
        });
    }
    cmd
}

/// Where the daemon writes its API's address once it listens.
const API_ADDR: &str = "/var/lib/certconn/api.addr";

/// The unit's `ExecStart` started as the unit runs it, once its API listens.
fn start_as_the_unit_runs() -> Running {
    // A daemon killed earlier in the test left its address behind.
    let _ = std::fs::remove_file(API_ADDR);
    let mut daemon = Running::spawn(&mut as_the_unit_runs("ExecStart"));
    daemon.wait_until("its API address written", Duration::from_secs(60), |d| {
        if Path::new(API_ADDR).exists() {
            return Ok(());
        }
        still_serving(d, "while it started");
        Err(format!("no {API_ADDR}"))
    });
    daemon
}

/// Panics with the daemon's log if it is no longer running; a death by SIGSYS is named.
fn still_serving(daemon: &mut Running, after: &str) {
    let Ok(Some(status)) = daemon.child.try_wait() else {
        return;
    };
    let err = daemon.log();
    use std::os::unix::process::ExitStatusExt;
    if status.signal() == Some(libc::SIGSYS) {
        panic!(
            "certconn serve was killed by SIGSYS {after}: it made a system call the unit's \
             SystemCallFilter= does not allow (`strace -f -c` over the same steps lists the calls \
             it makes). Its log:\n{err}"
        );
    }
    panic!("certconn serve exited with {status} {after}: {err}");
}

/// Purges the package when the test ends, however it ends.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "certconn"]).output();
    }
}

/// The installed daemon (or the launcher and its daemon), in a process group of its own, its
/// stderr in a file (a pipe read only at its death could fill and stall it); the group is
/// killed when the test ends (declared after [`Purge`], so it goes first).
struct Running {
    child: Child,
    log: tempfile::NamedTempFile,
}

impl Running {
    fn spawn(cmd: &mut Command) -> Self {
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = cmd
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap();
        Self { child, log }
    }

    fn id(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Its exit status, once it has exited; panics, with `what` and its log, if it has not
    /// within a minute.
    fn exit_status(&mut self, what: &str) -> std::process::ExitStatus {
        self.wait_until(what, Duration::from_secs(60), |d| {
            d.child
                .try_wait()
                .unwrap()
                .ok_or_else(|| "still running".into())
        })
    }

    /// Asks `ready` until it answers `Ok`; after `within`, panics with `what`, its last
    /// answer and the log. `ready` checks that the daemon still serves where it should.
    fn wait_until<T>(
        &mut self,
        what: &str,
        within: Duration,
        mut ready: impl FnMut(&mut Self) -> Result<T, String>,
    ) -> T {
        let start = Instant::now();
        loop {
            match ready(self) {
                Ok(value) => return value,
                Err(last) => assert!(
                    start.elapsed() < within,
                    "{what}: not within {within:?} (last: {last}); the log:\n{}",
                    self.log()
                ),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // SAFETY: signalling the process group this test started.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

#[test]
fn install_start_issue_and_purge() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "installing a .deb takes root (CI runs the suite as root)"
    );
    let deb = deb();
    let (_, info) = sh(Command::new("dpkg-deb").arg("--info").arg(&deb));
    assert!(info.contains("Package: certconn"), "{info}");
    let (_, contents) = sh(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    for path in [
        "./usr/bin/certconn",
        "./usr/lib/certconn/plugins/local-ca.wasm",
        "./usr/lib/certconn/plugins/scep.wasm",
        "./etc/certconn/certconn.toml",
        "./lib/systemd/system/certconn.service",
        "./usr/share/doc/certconn/runbook.md",
    ] {
        assert!(
            contents.contains(path),
            "{path} not in the package:\n{contents}"
        );
    }
    let control = tempfile::tempdir().unwrap();
    let (ok, out) = sh(Command::new("dpkg-deb")
        .arg("--control")
        .arg(&deb)
        .arg(control.path().join("DEBIAN")));
    assert!(ok, "{out}");
    let listed = std::fs::read_to_string(control.path().join("DEBIAN/conffiles")).unwrap();
    assert_eq!(listed.trim(), "/etc/certconn/certconn.toml");

    // A leftover from an interrupted run goes first.
    let _ = Command::new("dpkg").args(["--purge", "certconn"]).output();
    let (ok, out) = sh(Command::new("dpkg").arg("-i").arg(&deb));
    assert!(ok, "dpkg -i: {out}");
    let _purge = Purge;
    let (ok, user) = sh(Command::new("getent").args(["passwd", "certconn"]));
    assert!(ok && user.contains("/var/lib/certconn"), "{user}");
    let meta = std::fs::metadata("/var/lib/certconn").unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);

    // The administrator moves the API to a free port (a conffile edit, as in real life).
    let config = Path::new("/etc/certconn/certconn.toml");
    let text = std::fs::read_to_string(config).unwrap();
    std::fs::write(
        config,
        text.replace("listen = \"127.0.0.1:7443\"", "listen = \"127.0.0.1:0\""),
    )
    .unwrap();
    let (ok, out) = sh(&mut installed(&["check-config"]));
    assert!(ok, "check-config: {out}");
    // The unit's ExecStartPre, under its filter.
    let (ok, out) = sh(&mut as_the_unit_runs("ExecStartPre"));
    assert!(ok, "ExecStartPre as the unit runs it: {out}");

    let mut daemon = start_as_the_unit_runs();
    assert_eq!(meta.uid(), std::fs::metadata(API_ADDR).unwrap().uid());

    // The daemon holds unsealed keys in memory: no other process of its own user may read it
    // (`/proc/PID/environ` takes the same check as `/proc/PID/mem` and ptrace), and it dumps
    // no core. A dumpable process's environment is readable by its user, so this fails if the
    // daemon stays dumpable.
    let environ = format!("/proc/{}/environ", daemon.id());
    assert!(
        std::fs::read(&environ).is_ok(),
        "root reads {environ} (the process is there)"
    );
    let (readable, said) = sh(&mut as_certconn(&["cat", &environ]));
    assert!(
        !readable && said.contains("Permission denied"),
        "another process of the certconn user read {environ}: {said}"
    );
    let core = process_limit(daemon.id(), "Max core file size");
    assert_eq!(core, ("0".to_owned(), "0".to_owned()));
    // Started with systemd's 1,024 soft open files, it raised them to the hard limit, under
    // the unit's filter (`api.max_connections` needs the room).
    let (soft, hard) = process_limit(daemon.id(), "Max open files");
    assert_eq!(soft, hard, "open files not raised to the hard limit");
    // …and it opened its page map before that (the plugin engine's fast reset of an instance's
    // memory needs it, and a process that is not dumpable cannot open its own any more).
    let fds = std::fs::read_dir(format!("/proc/{}/fd", daemon.id())).unwrap();
    assert!(
        fds.flatten()
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .any(|target| target.ends_with("pagemap")),
        "certconn serve has no /proc/self/pagemap open"
    );

    // An EC key made in place and an RSA key made on the blocking pool, a reload and a status:
    // every call they take is one the unit's filter allows (or the daemon dies of it).
    let mut issued = Vec::new();
    for (profile, pfx) in [
        ("smime", "/var/lib/certconn/packaged.pfx"),
        ("device", "/var/lib/certconn/packaged-device.pfx"),
    ] {
        let (ok, out) = sh(&mut installed(&[
            "submit",
            "issue",
            "--profile",
            profile,
            "--subject",
            "CN=from the package",
            "--out",
            pfx,
        ]));
        still_serving(&mut daemon, &format!("issuing for profile {profile}"));
        assert!(ok, "submit --profile {profile}: {out}");
        issued.push((pfx, shown_password(&out)));
    }
    let (ok, out) = sh(&mut installed(&["reload"]));
    still_serving(&mut daemon, "reloading");
    assert!(ok, "reload: {out}");
    let (ok, out) = sh(&mut installed(&["status"]));
    still_serving(&mut daemon, "answering status");
    assert!(ok, "status: {out}");
    // An administrator in a root shell is told to run the command as the service's user, not
    // to chown the service's files to root (which the message once said, and which takes the
    // API token and the keys from the service), and changes nothing.
    for command in [
        &["status"][..],
        &["keys", "create", "by-root", "--alg", "ec-p256"],
    ] {
        let (ok, out) = sh(as_root_admin()
            .arg("/usr/bin/certconn")
            .args(command)
            .args(["--config", "/etc/certconn/certconn.toml"]));
        assert!(
            !ok && out
                .contains("run this command as that user instead: `sudo -u certconn certconn")
                && !out.contains("`chown` it"),
            "certconn {command:?} as root: {out}"
        );
    }
    assert!(!Path::new("/var/lib/certconn/keys/by-root.key").exists());
    // As the service's user, the installed config needs no naming.
    let (ok, out) = sh(as_certconn(&["/usr/bin/certconn", "status"]).current_dir("/"));
    assert!(ok, "certconn status as certconn, no --config: {out}");
    // The fleet listing names the machine (the unit hides /proc/sys, where it was once read).
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let listed = daemon.wait_until("an instance listed", Duration::from_secs(30), |d| {
        let (ok, out) = sh(&mut installed(&["fleet", "list", "--json"]));
        assert!(ok, "fleet: {out}");
        let fleet: serde_json::Value = serde_json::from_str(&out).unwrap();
        if let Some(first) = fleet["instances"].as_array().and_then(|i| i.first()) {
            return Ok(first["host"].clone());
        }
        still_serving(d, "before its first heartbeat");
        Err(out)
    });
    assert_eq!(listed, host.trim(), "the fleet listing's host");
    drop(daemon);
    for (pfx, password) in issued {
        let info = openssl_pkcs12_info(Path::new(pfx), &password);
        assert!(info.contains("MAC"), "{pfx}: {info}");
    }

    the_launcher_updates_the_daemon_under_the_unit();
    a_plugin_updates_hot_under_the_unit();
    a_token_key_under_the_unit();

    // Purge: the package, its config, its state and its user are gone.
    let (ok, out) = sh(Command::new("dpkg").args(["--purge", "certconn"]));
    assert!(ok, "dpkg --purge: {out}");
    for gone in [
        "/usr/bin/certconn",
        "/etc/certconn/certconn.toml",
        "/etc/certconn",
        "/var/lib/certconn",
        "/usr/lib/certconn/plugins/local-ca.wasm",
    ] {
        assert!(
            !Path::new(gone).exists(),
            "{gone} is still there after purge"
        );
    }
    let (ok, _) = sh(Command::new("getent").args(["passwd", "certconn"]));
    assert!(!ok, "the certconn user is still there after purge");
}

/// The config as the test found it, written back however a part of the test ends.
struct RestoreConfig(String);

impl RestoreConfig {
    const PATH: &'static str = "/etc/certconn/certconn.toml";

    fn save() -> Self {
        Self(std::fs::read_to_string(Self::PATH).unwrap())
    }
}

impl Drop for RestoreConfig {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, &self.0);
    }
}

/// `/v1/health`'s version from whichever daemon now holds the API address; `None` between
/// versions.
fn serving_version() -> Option<String> {
    let addr = std::fs::read_to_string(API_ADDR).ok()?;
    let out = Command::new("curl")
        .args(["-sf", "--max-time", "5"])
        .arg(format!("http://{}/v1/health", addr.trim()))
        .output()
        .ok()?;
    let health: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    health["version"].as_str().map(str::to_owned)
}

/// The daemon's own update under the unit with the drop-in docs/updates.md gives (read from
/// the document, so that the two cannot drift apart): the launcher starts the installed
/// version from `/opt/certconn`, the daemon finds a newer release in a signed feed, stages and
/// checks it, switches `current` and hands over; the launcher starts the new version, which
/// serves and commits its trial; `systemctl stop` (SIGTERM to the launcher) ends both.
fn the_launcher_updates_the_daemon_under_the_unit() {
    const INSTALL: &str = "/opt/certconn";
    const ROOT: &str = "/etc/certconn/update-root.json";
    struct Cleanup;
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(DROP_INS);
            let _ = std::fs::remove_dir_all(INSTALL);
            let _ = std::fs::remove_file(ROOT);
        }
    }
    let _config = RestoreConfig::save();
    let _cleanup = Cleanup;
    let dir = tempfile::tempdir().unwrap();

    // The install directory, as docs/updates.md lays it out, owned by certconn.
    let v1 = Path::new(INSTALL).join("versions/0.1.0");
    std::fs::create_dir_all(&v1).unwrap();
    std::fs::copy("/usr/bin/certconn", v1.join("certconn")).unwrap();
    std::os::unix::fs::symlink("versions/0.1.0", Path::new(INSTALL).join("current")).unwrap();
    let (ok, out) = sh(Command::new("chown").args(["-R", "certconn:certconn", INSTALL]));
    assert!(ok, "{out}");

    // A feed offering the installed version, its root pinned in the config.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let feed = runtime.block_on(common::feed::Feed::new(dir.path(), &[]));
    feed.add(
        "daemon",
        "certconn",
        "0.1.0",
        "2026-01-01",
        Path::new("/usr/bin/certconn"),
    );
    feed.publish();
    std::fs::copy(feed.metadata().join("1.root.json"), ROOT).unwrap();
    let mut config = std::fs::read_to_string(RestoreConfig::PATH).unwrap();
    config.push_str(&format!(
        "\n[update]\nurl = \"http://127.0.0.1:{}/\"\nroot = \"{ROOT}\"\ndaemon = \"auto\"\n\
         check_seconds = 1\ndaemon_health_seconds = 60\n",
        feed.port
    ));
    std::fs::write(RestoreConfig::PATH, config).unwrap();

    // The drop-in, as the document gives it.
    let doc = std::fs::read_to_string(repo_root().join("docs/updates.md")).unwrap();
    let drop_in = doc
        .split("```ini\n")
        .map(|block| block.split("```").next().unwrap_or_default())
        .find(|block| block.contains("certconn launch"))
        .expect("docs/updates.md gives the launcher's drop-in in an ini block");
    std::fs::create_dir_all(DROP_INS).unwrap();
    std::fs::write(Path::new(DROP_INS).join("self-update.conf"), drop_in).unwrap();

    // The launcher as the unit now runs it, in a process group of its own (the daemon is its
    // child): killed whole if the test fails.
    let _ = std::fs::remove_file(API_ADDR);
    let mut launched = Running::spawn(&mut as_the_unit_runs("ExecStart"));
    let wait_version = |launched: &mut Running, version: &str| {
        let what = format!("certconn {version} serving");
        launched.wait_until(&what, Duration::from_secs(120), |d| {
            let serving = serving_version();
            if serving.as_deref() == Some(version) {
                return Ok(());
            }
            still_serving(d, &format!("before certconn {version} served"));
            Err(format!("serving {serving:?}"))
        })
    };
    wait_version(&mut launched, "0.1.0");

    // A newer release: the daemon stages it, switches and hands over; the new one serves.
    let stamped = dir.path().join("certconn-0.2.0");
    let (ok, out) = sh(Command::new("/usr/bin/certconn")
        .args(["release", "stamp", "/usr/bin/certconn"])
        .arg(&stamped)
        .args(["--version", "0.2.0"]));
    assert!(ok, "release stamp: {out}");
    feed.add("daemon", "certconn", "0.2.0", "2026-02-01", &stamped);
    feed.publish();
    wait_version(&mut launched, "0.2.0");
    let state = launched.wait_until("the trial's end", Duration::from_secs(60), |d| {
        let state: serde_json::Value = serde_json::from_slice(
            &std::fs::read(Path::new(INSTALL).join("install.json")).unwrap(),
        )
        .unwrap();
        if state["trial"].is_null() {
            return Ok(state);
        }
        still_serving(d, "while the new version was on trial");
        Err(state.to_string())
    });
    assert_eq!(state["current"], "0.2.0", "{state}");
    assert_eq!(state["previous"], "0.1.0", "{state}");

    // `systemctl stop`: SIGTERM to the main process, the launcher, which passes it on.
    // SAFETY: signalling the child this test started.
    unsafe { libc::kill(launched.id() as i32, libc::SIGTERM) };
    let status = launched.exit_status("the launcher did not stop after SIGTERM");
    assert!(
        status.success(),
        "the launcher stopped with {status}; the log:\n{}",
        launched.log()
    );
}

/// A plugin updated hot from a signed feed under the unit, its directory set up as
/// docs/updates.md tells an administrator (the document's commands run as written, in a root
/// shell). First without them: with `plugins = "auto"`, the check under the unit says the
/// package's plugin directory cannot take a release, as the document warns. Then with
/// them: the daemon downloads local-ca 0.2.0, publishes it into the state directory, loads it
/// while serving, issues with it, and ends its probation; the file written is the release.
fn a_plugin_updates_hot_under_the_unit() {
    const ROOT: &str = "/etc/certconn/update-root.json";
    const PLUGINS: &str = "/var/lib/certconn/plugins";
    struct Cleanup;
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(PLUGINS);
            let _ = std::fs::remove_file(ROOT);
        }
    }
    let _config = RestoreConfig::save();
    let _cleanup = Cleanup;
    let dir = tempfile::tempdir().unwrap();

    // The installed local-ca and a newer release of it, in a feed whose root the config pins.
    let packaged = Path::new("/usr/lib/certconn/plugins/local-ca.wasm");
    let running = certconn::plugins::package::PluginPackage::read(packaged).unwrap();
    assert_eq!(running.manifest.version, "0.1.0", "the packaged local-ca");
    let release = dir.path().join("local-ca-0.2.0.wasm");
    common::pack(packaged, "local-ca", "0.2.0", "0.2.0", &release);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let feed = runtime.block_on(common::feed::Feed::new(dir.path(), &[]));
    feed.add("plugin", "local-ca", "0.1.0", "2026-01-01", packaged);
    feed.publish();
    std::fs::copy(feed.metadata().join("1.root.json"), ROOT).unwrap();
    let mut config = std::fs::read_to_string(RestoreConfig::PATH).unwrap();
    config.push_str(&format!(
        "\n[update]\nurl = \"http://127.0.0.1:{}/\"\nroot = \"{ROOT}\"\nplugins = \"auto\"\n\
         check_seconds = 1\nprobation_jobs = 1\n",
        feed.port
    ));
    std::fs::write(RestoreConfig::PATH, &config).unwrap();
    let check = || {
        sh(&mut under_the_unit(&[
            "/usr/bin/certconn",
            "check-config",
            "--config",
            RestoreConfig::PATH,
        ]))
    };
    // (root's directory, so `access` answers "Permission denied" before the read-only mount.)
    let read_only = "plugins.dir /usr/lib/certconn/plugins cannot be written by this process";
    let (ok, out) = check();
    assert!(
        ok && out.contains(read_only) && out.contains("local-ca"),
        "check-config under the unit, plugins = \"auto\" on the package's plugin directory: {out}"
    );

    // The document's commands, in a root shell, and the directory they name in the config.
    let doc = std::fs::read_to_string(repo_root().join("docs/updates.md")).unwrap();
    let commands = doc
        .split("```sh\n")
        .map(|block| block.split("```").next().unwrap_or_default())
        .find(|block| block.contains("install -d -o certconn"))
        .expect("docs/updates.md gives the plugin directory's commands in a sh block");
    let setting = format!("[plugins] dir = \"{PLUGINS}\"");
    assert!(
        commands.contains(&setting),
        "the commands name {setting}: {commands}"
    );
    let (ok, out) = sh(as_root_admin().args(["sh", "-ec", commands]));
    assert!(ok, "the commands of docs/updates.md: {out}");
    let packaged_dir = "dir = \"/usr/lib/certconn/plugins\"";
    assert!(config.contains(packaged_dir), "{config}");
    std::fs::write(
        RestoreConfig::PATH,
        config.replace(packaged_dir, &format!("dir = \"{PLUGINS}\"")),
    )
    .unwrap();
    let (ok, out) = check();
    assert!(
        ok && !out.contains("cannot be written"),
        "check-config under the unit, the plugins in the state directory: {out}"
    );

    // Serving on 0.1.0; the release appears in the feed and is installed hot.
    let mut daemon = start_as_the_unit_runs();
    let update_status = |daemon: &mut Running| {
        let (ok, out) = sh(&mut installed(&["update", "status", "--json"]));
        still_serving(daemon, "answering update status");
        assert!(ok, "update status: {out}");
        let status: serde_json::Value = serde_json::from_str(&out).unwrap();
        status["plugins"]["local-ca"].clone()
    };
    let wait_for = |daemon: &mut Running, what: &str, done: &dyn Fn(&serde_json::Value) -> bool| {
        daemon.wait_until(what, Duration::from_secs(60), |d| {
            let line = update_status(d);
            if done(&line) {
                Ok(line)
            } else {
                Err(line.to_string())
            }
        })
    };
    wait_for(&mut daemon, "the feed read, 0.1.0 current", &|line| {
        line["current"]["version"] == "0.1.0"
    });
    feed.add("plugin", "local-ca", "0.2.0", "2026-02-01", &release);
    feed.publish();
    let line = wait_for(&mut daemon, "local-ca 0.2.0 installed", &|line| {
        line["probation"]["version"] == "0.2.0"
            || !line["refused"].as_array().is_none_or(Vec::is_empty)
    });
    assert_eq!(line["refused"], serde_json::json!([]), "{line}");

    // A job on the new version ends its probation (one job, here).
    let pfx = "/var/lib/certconn/updated.pfx";
    let (ok, out) = sh(&mut installed(&[
        "submit",
        "issue",
        "--profile",
        "smime",
        "--subject",
        "CN=issued by the update",
        "--out",
        pfx,
    ]));
    still_serving(&mut daemon, "issuing on the updated plugin");
    assert!(ok, "submit: {out}");
    let info = openssl_pkcs12_info(Path::new(pfx), &shown_password(&out));
    assert!(info.contains("MAC"), "{info}");
    let line = wait_for(&mut daemon, "the probation ended", &|line| {
        line["probation"].is_null()
    });
    assert_eq!(line["current"]["version"], "0.2.0", "{line}");
    assert_eq!(line["previous"]["version"], "0.1.0", "{line}");
    let published = Path::new(PLUGINS).join("local-ca.wasm");
    assert_eq!(
        std::fs::read(&published).unwrap(),
        std::fs::read(&release).unwrap(),
        "{} is the release",
        published.display()
    );
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&published).unwrap();
    let (_, uid) = sh(Command::new("id").args(["-u", "certconn"]));
    assert_eq!(meta.uid().to_string(), uid.trim(), "the release's owner");
}

/// Custody on a PKCS#11 token under the unit, set up as docs/operations.md tells an
/// administrator (SoftHSM2 from Debian's package, the service's user in group `softhsm`, its
/// token initialised as that user, the PIN in a file) after the two mistakes one makes first
/// (the user not in the group, the token made as root), each named by the check with its fix.
/// Then the check finds what the unit's read-only file system keeps `serve` from doing at its
/// first start (making the CA's key on the token) and names the drop-in; with that drop-in the
/// daemon makes the key and issues with it; without it, a key already on the token still
/// signs.
fn a_token_key_under_the_unit() {
    const LABEL: &str = "certconn-deb-test";
    const PIN_FILE: &str = "/etc/certconn/pkcs11-pin";
    /// Removes what this part made outside the package, however it ends.
    struct Cleanup;
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = as_root_admin()
                .arg("softhsm2-util")
                .args(["--delete-token", "--token", LABEL])
                .output();
            let _ = std::fs::remove_dir_all(DROP_INS);
            let _ = std::fs::remove_file(PIN_FILE);
        }
    }
    let _config = RestoreConfig::save();
    let _cleanup = Cleanup;
    let init_token = |cmd: &mut Command| {
        let (ok, out) = sh(cmd.args([
            "softhsm2-util",
            "--init-token",
            "--free",
            "--label",
            LABEL,
            "--pin",
            "4711-deb",
            "--so-pin",
            "4712-deb",
        ]));
        assert!(ok, "softhsm2-util --init-token: {out}");
    };

    std::fs::write(PIN_FILE, "4711-deb\n").unwrap();
    let (ok, out) = sh(Command::new("chown").args(["certconn:certconn", PIN_FILE]));
    assert!(ok, "{out}");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(PIN_FILE, std::fs::Permissions::from_mode(0o400)).unwrap();
    let config = Path::new("/etc/certconn/certconn.toml");
    let mut text = std::fs::read_to_string(config).unwrap();
    for (from, to) in [
        (
            "[keys.local-ca]",
            format!(
                "[custody.pkcs11]\nmodule = \"{SOFTHSM_MODULE}\"\ntoken_label = \"{LABEL}\"\n\
                 pin_file = \"{PIN_FILE}\"\n\n[keys.token-ca]\nalgorithm = \"ec-p256\"\n\
                 store = \"pkcs11\"\n\
                 self_signed = {{ subject = \"CN=certconn Token CA\", validity_days = 3650 }}\n\n\
                 [keys.local-ca]"
            ),
        ),
        ("keys = [\"local-ca\"]", "keys = [\"token-ca\"]".into()),
        ("ca_key = \"local-ca\"", "ca_key = \"token-ca\"".into()),
    ] {
        assert!(text.contains(from), "the packaged config has no {from}");
        text = text.replace(from, &to);
    }
    std::fs::write(config, text).unwrap();
    let check = || {
        sh(&mut under_the_unit(&[
            "/usr/bin/certconn",
            "check-config",
            "--config",
            "/etc/certconn/certconn.toml",
        ]))
    };

    // First as an administrator may well do it: the token made by root, the service's user
    // not in SoftHSM2's group. The check names what this user cannot read, and the fix.
    init_token(&mut as_root_admin());
    let (ok, out) = check();
    assert!(
        !ok && out.contains("SoftHSM2 cannot read its configuration /etc/softhsm/softhsm2.conf")
            && out.contains("usermod -aG softhsm certconn"),
        "check-config under the unit, certconn not in group softhsm: {out}"
    );
    let (ok, out) = sh(Command::new("usermod").args(["-aG", "softhsm", "certconn"]));
    assert!(ok, "usermod: {out}");
    let (ok, out) = check();
    assert!(
        !ok && out.contains("this process cannot read /var/lib/softhsm/tokens/")
            && out.contains("owner root")
            && out.contains("sudo -u certconn softhsm2-util --init-token"),
        "check-config under the unit, the token made by root: {out}"
    );
    let (ok, out) = sh(as_root_admin().args(["softhsm2-util", "--delete-token", "--token", LABEL]));
    assert!(ok, "{out}");
    init_token(&mut as_certconn(&[]));

    // The token directory is read-only under the unit: the check says so before serve stops
    // on it, and serve says the same.
    let (ok, out) = check();
    assert!(
        !ok && out.contains("keys token-ca: `serve` would make it on PKCS#11 token")
            && out.contains("ReadWritePaths=/var/lib/softhsm/tokens"),
        "check-config under the unit, with a token key to make: {out}"
    );
    let mut refused = Running::spawn(&mut as_the_unit_runs("ExecStart"));
    let status = refused
        .exit_status("serve did not stop although it cannot make its key on the read-only token");
    let err = refused.log();
    assert!(
        !status.success()
            && err.contains("generating a ec-p256 key")
            && err.contains("Read-only file system")
            && err.contains("ReadWritePaths=/var/lib/softhsm/tokens"),
        "serve under the unit, with a token key to make: {status}: {err}"
    );

    // The drop-in the message names: serve makes the key on the token and issues with it.
    std::fs::create_dir_all(DROP_INS).unwrap();
    std::fs::write(
        Path::new(DROP_INS).join("softhsm.conf"),
        "[Service]\nReadWritePaths=/var/lib/softhsm/tokens\n",
    )
    .unwrap();
    let (ok, out) = check();
    assert!(ok, "check-config under the unit with the drop-in: {out}");
    let issue_and_verify = |daemon: &mut Running, pfx: &str| {
        let (ok, out) = sh(&mut installed(&[
            "submit",
            "issue",
            "--profile",
            "smime",
            "--subject",
            "CN=signed on the token",
            "--out",
            pfx,
        ]));
        still_serving(daemon, "issuing with the token's key");
        assert!(ok, "submit: {out}");
        let leaf = format!("{pfx}.pem");
        let (ok, out) = sh(Command::new("openssl")
            .args(["pkcs12", "-nokeys", "-clcerts", "-in", pfx, "-out", &leaf])
            .arg("-passin")
            .arg(format!("pass:{}", shown_password(&out))));
        assert!(ok, "{out}");
        let (ok, out) = sh(Command::new("openssl").args([
            "verify",
            "-CAfile",
            "/var/lib/certconn/keys/token-ca.chain.pem",
            &leaf,
        ]));
        assert!(ok && out.contains(": OK"), "{out}");
    };
    let mut daemon = start_as_the_unit_runs();
    issue_and_verify(&mut daemon, "/var/lib/certconn/token-1.pfx");
    drop(daemon);
    let record = std::fs::read_to_string("/var/lib/certconn/keys/token-ca.p11").unwrap();
    assert!(record.contains(LABEL), "{record}");

    // Without it, the key already on the token still signs: signing writes nothing there.
    std::fs::remove_dir_all(DROP_INS).unwrap();
    let mut daemon = start_as_the_unit_runs();
    issue_and_verify(&mut daemon, "/var/lib/certconn/token-2.pfx");
}
