//! certconn under systemd: the shipped unit verifies and keeps its hardening score, and the
//! daemon speaks the notify protocol — READY once the API listens, STATUS, watchdog pings from
//! the event loop, STOPPING on SIGTERM — to a test listener on `NOTIFY_SOCKET`.

use crate::common;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// The shipped unit with its paths pointed at this build and a config in `dir`.
fn unit_for_test(dir: &std::path::Path) -> std::path::PathBuf {
    let config = dir.join("certconn.toml");
    std::fs::write(&config, config_text(&dir.join("data"), &plugins(), "")).unwrap();
    let shipped = std::fs::read_to_string(repo_root().join("packaging/systemd/certconn.service"))
        .expect("packaging/systemd/certconn.service");
    let unit = dir.join("certconn.service");
    std::fs::write(
        &unit,
        shipped
            .replace("/usr/bin/certconn", binary().to_str().unwrap())
            .replace("/etc/certconn/certconn.toml", config.to_str().unwrap()),
    )
    .unwrap();
    unit
}

#[test]
fn the_unit_verifies_and_its_exposure_stays_low() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_for_test(dir.path());
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze");
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.trim().is_empty(), "{said}");

    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze security");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let level: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for certconn.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    eprintln!("systemd-analyze security: exposure {level}");
    assert!(level <= 2.0, "the unit's exposure rose to {level}:\n{text}");
}

/// The next datagram on `socket`, within `timeout`.
/// The test's stand-in for systemd's filter (`common::unit_filter`, which the package test
/// runs the daemon under) does what systemd does with the shipped unit: a call the unit
/// forbids (`setuid`, of `@privileged`) kills the process with SIGSYS, a socket of a
/// family outside `RestrictAddressFamilies=` fails with EAFNOSUPPORT, and what the unit allows
/// runs.
#[test]
fn the_units_filter_as_the_tests_apply_it_kills_a_forbidden_call_and_refuses_a_foreign_socket() {
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    let shipped = std::fs::read_to_string(repo_root().join("packaging/systemd/certconn.service"))
        .expect("packaging/systemd/certconn.service");
    let filter = std::sync::Arc::new(common::unit_filter::UnitFilter::of_unit(&shipped));
    assert!(filter.allowed.contains("setpriority") && !filter.allowed.contains("setrlimit"));
    let run = |script: &str| {
        let filter = filter.clone();
        let mut cmd = Command::new("python3");
        cmd.args(["-c", script]);
        // SAFETY: the closure makes two `prctl` calls on a program built before the fork.
        unsafe {
            cmd.pre_exec(move || filter.install());
        }
        cmd.output().unwrap()
    };
    let socket = run("import socket, errno\n\
        try:\n    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)\n\
        except OSError as e:\n    print(errno.errorcode[e.errno])\n\
        socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()\n\
        print('inet')");
    assert!(socket.status.success(), "{socket:?}");
    assert_eq!(
        String::from_utf8_lossy(&socket.stdout),
        "EAFNOSUPPORT\ninet\n"
    );
    // setuid to the uid it has: harmless, were the filter not there.
    let forbidden = run("import os\nos.setuid(os.getuid())");
    assert_eq!(
        forbidden.status.signal(),
        Some(libc::SIGSYS),
        "{forbidden:?}"
    );
}

/// The test's stand-in for the file system the unit gives its process
/// (`common::unit_mounts`, which the package test runs the daemon in) makes what the shipped
/// unit asks for: everything read-only but the state directory and `ReadWritePaths=` (an
/// optional one that is missing skipped, as systemd does), an empty private `/tmp`, a `/proc`
/// without other users' processes or `/proc/sys`, a `/dev` of pseudo devices only, closed home
/// directories, and the user's supplementary groups.
#[test]
fn the_units_file_system_as_the_tests_make_it() {
    use std::os::unix::process::CommandExt;
    let shipped = std::fs::read_to_string(repo_root().join("packaging/systemd/certconn.service"))
        .expect("packaging/systemd/certconn.service");
    // Its own state directory: the package test installs and purges /var/lib/certconn.
    let state = std::path::Path::new("/var/lib/certconn-unit-mounts-test");
    let writable = tempfile::tempdir_in("/var/lib").unwrap();
    let unit = format!(
        "{}\nReadWritePaths=-/nonexistent/certconn {}\n",
        shipped.replace(
            "StateDirectory=certconn",
            "StateDirectory=certconn-unit-mounts-test"
        ),
        writable.path().display()
    );
    std::fs::create_dir_all(state).unwrap();
    struct Remove<'a>(&'a std::path::Path);
    impl Drop for Remove<'_> {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(self.0);
        }
    }
    let _remove = Remove(state);
    for dir in [state, writable.path()] {
        run_ok(Command::new("chown").arg("nobody").arg(dir));
    }
    let mounts = common::unit_mounts::UnitMounts::of_unit(&unit, "nobody");
    let script = format!(
        "import os, errno\n\
         def attempt(f):\n    try:\n        f(); return 'ok'\n    except OSError as e:\n        return errno.errorcode[e.errno]\n\
         print('state', attempt(lambda: open('{state}/f', 'w').close()))\n\
         print('rw-path', attempt(lambda: open('{rw}/f', 'w').close()))\n\
         print('elsewhere', attempt(lambda: open('/var/lib/certconn-unit-mounts-test-other', 'w').close()))\n\
         print('tmp', os.listdir('/tmp'))\n\
         print('var-tmp', os.listdir('/var/tmp'))\n\
         print('dev', sorted(os.listdir('/dev')))\n\
         print('root', attempt(lambda: os.listdir('/root')))\n\
         print('pid1', os.path.exists('/proc/1'), 'sys', os.path.exists('/proc/sys'))\n\
         print('groups', sorted(os.getgroups()))\n",
        state = state.display(),
        rw = writable.path().display()
    );
    // Files in this /tmp and /var/tmp the process must not see.
    let outside = tempfile::NamedTempFile::new_in("/tmp").unwrap();
    let outside_var = tempfile::NamedTempFile::new_in("/var/tmp").unwrap();
    let mut cmd = Command::new("python3");
    cmd.args(["-c", &script]);
    // SAFETY: the closure makes system calls only, on what was built before the fork.
    unsafe {
        cmd.pre_exec(move || mounts.enter());
    }
    let out = run_ok(&mut cmd);
    let groups = run_ok(Command::new("id").args(["-G", "nobody"]));
    let mut groups: Vec<u32> = groups
        .split_whitespace()
        .map(|g| g.parse().unwrap())
        .collect();
    groups.sort();
    assert!(outside.path().exists() && outside_var.path().exists());
    assert_eq!(
        out,
        format!(
            "state ok\nrw-path ok\nelsewhere EROFS\ntmp []\nvar-tmp []\n\
             dev ['full', 'null', 'random', 'shm', 'tty', 'urandom', 'zero']\nroot EACCES\n\
             pid1 False sys False\ngroups {groups:?}\n"
        )
    );
}

fn next_message(socket: &UnixDatagram, timeout: Duration) -> Option<String> {
    socket.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// A daemon on the default test config run as systemd would with `env`, and the socket it
/// notifies (`NOTIFY_SOCKET`).
fn daemon_notifying(dir: &std::path::Path, env: &[(&str, &str)]) -> (Daemon, UnixDatagram) {
    let socket_path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let config = dir.join("certconn.toml");
    std::fs::write(&config, config_text(&dir.join("data"), &plugins(), "")).unwrap();
    let mut vars = vec![("NOTIFY_SOCKET".to_owned(), socket_path.into_os_string())];
    vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.into())));
    let daemon = Daemon::start_with_env(&config, &dir.join("daemon.log"), vars);
    (daemon, socket)
}

#[test]
fn serve_tells_systemd_it_is_ready_alive_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    // 200 ms: pings every 100 ms, and STATUS with them.
    let (mut daemon, socket) = daemon_notifying(dir.path(), &[("WATCHDOG_USEC", "200000")]);
    let ready = next_message(&socket, Duration::from_secs(30)).expect("a message from serve");
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    assert!(
        ready.contains(&format!("STATUS=serving on 127.0.0.1:{}", daemon.port)),
        "{ready}"
    );

    let (mut pings, mut status) = (0, None);
    let start = Instant::now();
    while (pings < 3 || status.is_none()) && start.elapsed() < Duration::from_secs(30) {
        match next_message(&socket, Duration::from_secs(5)) {
            Some(m) if m == "WATCHDOG=1" => pings += 1,
            Some(m) if m.starts_with("STATUS=") => status = Some(m),
            Some(other) => panic!("unexpected message before the stop: {other}"),
            None => break,
        }
    }
    assert!(pings >= 3, "{pings} watchdog pings in 30 s");
    let status = status.expect("a STATUS update");
    assert!(
        status.contains("no jobs waiting") || status.contains("jobs: "),
        "{status}"
    );

    daemon.stop();
    let mut stopping = false;
    while let Some(m) = next_message(&socket, Duration::from_secs(5)) {
        if m.lines().any(|l| l == "STOPPING=1") {
            stopping = true;
            break;
        }
    }
    assert!(stopping, "no STOPPING=1 after SIGTERM");
}

#[test]
fn a_watchdog_meant_for_another_process_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    // PID 1 is never the daemon.
    let (_daemon, socket) = daemon_notifying(
        dir.path(),
        &[("WATCHDOG_USEC", "100000"), ("WATCHDOG_PID", "1")],
    );
    let ready = next_message(&socket, Duration::from_secs(30)).expect("READY");
    assert!(ready.contains("READY=1"), "{ready}");
    // No pings: STATUS alone comes every 30 s, so nothing in 1.5 s (fifteen watchdog periods).
    let next = next_message(&socket, Duration::from_millis(1500));
    assert_eq!(next, None, "pinged a watchdog that is not ours");
}
