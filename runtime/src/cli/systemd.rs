//! systemd's notify protocol (sd_notify(3)), spoken directly: one datagram per state change to
//! `$NOTIFY_SOCKET`. `serve` says `READY=1` once the API listens, keeps `STATUS=` current (what
//! `systemctl status` shows), pings `WATCHDOG=1` from the event loop at half of
//! `$WATCHDOG_USEC` (so a wedged runtime is restarted), and says `STOPPING=1` when it drains.
//! Outside systemd (no `$NOTIFY_SOCKET`) all of this is silent.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// The service manager's notification socket.
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace); `None` when not
    /// run by systemd with `Type=notify`, or when the socket cannot be used (logged).
    pub fn from_env() -> Option<Self> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let made = (|| {
            let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
            let addr = match bytes.strip_prefix(b"@") {
                Some(name) => {
                    use std::os::linux::net::SocketAddrExt;
                    SocketAddr::from_abstract_name(name)?
                }
                None => SocketAddr::from_pathname(&path)?,
            };
            Ok::<_, std::io::Error>(Self {
                socket: UnixDatagram::unbound()?,
                addr,
            })
        })();
        match made {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!(socket = ?path, "NOTIFY_SOCKET is set but unusable, systemd will not hear from certconn: {e}");
                None
            }
        }
    }

    /// Sends `state` (newline-separated `KEY=value` lines). A failure is logged, never fatal:
    /// the daemon serves whether or not its manager listens.
    pub fn send(&self, state: &str) {
        if let Err(e) = self.socket.send_to_addr(state.as_bytes(), &self.addr) {
            tracing::warn!(
                "telling systemd {:?}: {e}",
                state.lines().next().unwrap_or("")
            );
        }
    }
}

/// How often to ping the watchdog: half of `$WATCHDOG_USEC`, when it is set for this process
/// (`$WATCHDOG_PID` unset or ours).
pub fn watchdog_interval() -> Option<Duration> {
    if let Some(pid) = std::env::var_os("WATCHDOG_PID") {
        if pid.to_str()?.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}
