//! The file system a systemd unit's process sees, made for a test where no systemd runs: a
//! private mount namespace in which `/` is read-only (`ProtectSystem=strict`) but for the
//! unit's `StateDirectory=` and its `ReadWritePaths=`, `/tmp` is its own (`PrivateTmp=yes`), and `/proc` shows only
//! processes of its own (`ProtectProc=invisible`) and nothing but them (`ProcSubset=pid`: no
//! `/proc/sys`, no `/proc/meminfo`). Only those settings, with those values, are made; the
//! unit is checked to ask for them. Other mounts under `/` keep their own modes (systemd makes
//! them read-only too). Needs root; the process then drops to the unit's user itself, with the
//! user's supplementary groups as systemd gives them for `User=`, since the mounts must be
//! made before.

use std::ffi::CString;

/// Everything the mounts and the change of user need, made before the fork: applying it takes
/// system calls only, which a `pre_exec` closure may make.
pub struct UnitMounts {
    /// The state directory and each `ReadWritePaths=` path: left writable.
    writable: Vec<CString>,
    root: CString,
    proc: CString,
    tmp: CString,
    proc_type: CString,
    proc_options: CString,
    tmpfs: CString,
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
}

impl UnitMounts {
    /// The mounts of `unit` (its text followed by its drop-ins'), whose process runs as user
    /// `user` with its state in `/var/lib/` + the unit's `StateDirectory=`.
    pub fn of_unit(unit: &str, user: &str) -> Self {
        let id = |flag: &str| -> Vec<u32> {
            let out = std::process::Command::new("id")
                .args([flag, user])
                .output()
                .expect("run id");
            assert!(out.status.success(), "id {flag} {user}");
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(|n| n.parse().expect("a numeric id"))
                .collect()
        };
        let setting = |key: &str| {
            unit.lines()
                .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
                .unwrap_or_else(|| panic!("the unit sets no {key}="))
                .trim()
                .to_owned()
        };
        for (key, value) in [
            ("ProtectSystem", "strict"),
            ("PrivateTmp", "yes"),
            ("ProtectProc", "invisible"),
            ("ProcSubset", "pid"),
        ] {
            assert_eq!(setting(key), value, "{key}= is emulated only as {value}");
        }
        let c = |s: &str| CString::new(s).unwrap();
        // `-` before a path: no error when it is missing; `+`: relative to a root directory,
        // which this unit does not set.
        let mut writable = vec![c(&format!("/var/lib/{}", setting("StateDirectory")))];
        writable.extend(
            unit.lines()
                .filter_map(|l| l.trim().strip_prefix("ReadWritePaths="))
                .flat_map(str::split_whitespace)
                .filter_map(|p| {
                    let path = p.trim_start_matches(['-', '+']);
                    let optional = p[..p.len() - path.len()].contains('-');
                    (!optional || std::path::Path::new(path).exists()).then(|| c(path))
                }),
        );
        Self {
            writable,
            root: c("/"),
            proc: c("/proc"),
            tmp: c("/tmp"),
            proc_type: c("proc"),
            proc_options: c("hidepid=invisible,subset=pid"),
            tmpfs: c("tmpfs"),
            uid: id("-u")[0],
            gid: id("-g")[0],
            groups: id("-G"),
        }
    }

    /// Enters a new mount namespace, makes the mounts, and becomes the unit's user: for a
    /// `pre_exec` closure of a command spawned as root without `uid`/`gid` of its own.
    pub fn enter(&self) -> std::io::Result<()> {
        let none = std::ptr::null::<libc::c_char>();
        let check = |rc: libc::c_int| {
            if rc == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        };
        // SAFETY: each call reads only the NUL-terminated strings of `self`, which outlive it,
        // and null pointers where the call takes none.
        unsafe {
            check(libc::unshare(libc::CLONE_NEWNS))?;
            check(libc::mount(
                none,
                self.root.as_ptr(),
                none,
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            for path in &self.writable {
                check(libc::mount(
                    path.as_ptr(),
                    path.as_ptr(),
                    none,
                    libc::MS_BIND,
                    std::ptr::null(),
                ))?;
            }
            check(libc::mount(
                none,
                self.root.as_ptr(),
                none,
                libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
                std::ptr::null(),
            ))?;
            check(libc::mount(
                self.tmpfs.as_ptr(),
                self.tmp.as_ptr(),
                self.tmpfs.as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                std::ptr::null(),
            ))?;
            check(libc::mount(
                self.proc_type.as_ptr(),
                self.proc.as_ptr(),
                self.proc_type.as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                self.proc_options.as_ptr().cast(),
            ))?;
            check(libc::setgroups(self.groups.len(), self.groups.as_ptr()))?;
            check(libc::setgid(self.gid))?;
            check(libc::setuid(self.uid))?;
        }
        Ok(())
    }
}
