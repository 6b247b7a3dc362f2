//! Keeping the process's memory, where custody's keys are in the clear while they are used, out
//! of core files and away from other processes of the same user.
//!
//! A key store sealed at rest is unsealed in memory, and so are PFX passwords and the
//! credentials certconn sends. A crash (or an `abort`) would write all of it to a core file,
//! or hand it to whatever `kernel.core_pattern` pipes cores to; and any other process running
//! as certconn's user could read `/proc/PID/mem`. `prctl(PR_SET_DUMPABLE, 0)` stops both (the
//! kernel then writes no core unless `fs.suid_dumpable` asks for root-only ones, and lets only
//! a process with `CAP_SYS_PTRACE` trace or read this one); a core size limit of 0 stops a
//! core file even then (a program `core_pattern` pipes to decides for itself; systemd-coredump
//! honours the limit). ssh-agent does the same.
//!
//! `certconn serve` applies it, and so do the offline commands that read custody's keys or
//! a private key file (`certconn keys`, `upstream register`, `plugin keygen`, `sign` and `pack
//! --sign-key`): short-lived, but a key is as clear in their memory as in the daemon's.
//!
//! In `serve` it is applied after the plugin engine is made: wasmtime opens
//! `/proc/self/pagemap` then (its fast reset of a used instance's memory), and a process that
//! is not dumpable no longer owns its `/proc/self` files, so a service that does not run as
//! root could not open it later.

use super::CustodyConfig;

/// [`deny`], unless `custody.allow_core_dumps` gives cores back: what a command calls before
/// it reads a key.
pub fn deny_unless_allowed(custody: &CustodyConfig) -> std::io::Result<()> {
    if custody.allow_core_dumps {
        return Ok(());
    }
    deny()
}

/// Makes the process non-dumpable and its core size limit 0, hard and soft.
pub fn deny() -> std::io::Result<()> {
    // SAFETY: `prctl(PR_SET_DUMPABLE)` takes an integer argument and touches no memory of ours.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let none = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `setrlimit` reads the struct we pass and nothing else.
    if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &none) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
