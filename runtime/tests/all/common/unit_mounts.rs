//! The file system a systemd unit's process sees, made for a test where no systemd runs: a
//! private mount namespace in which `/` is read-only (`ProtectSystem=strict`) but for the
//! unit's `StateDirectory=` and its `ReadWritePaths=`, `/tmp` and `/var/tmp` are its own
//! (`PrivateTmp=yes`),
//! `/proc` shows only processes of its own (`ProtectProc=invisible`) and nothing but them
//! (`ProcSubset=pid`: no `/proc/sys`, no `/proc/meminfo`), `/dev` holds only the pseudo
//! devices (`PrivateDevices=yes`: null, zero, full, random, urandom, tty and an empty
//! `/dev/shm`), and `/home`, `/root` and `/run/user` are empty and closed (`ProtectHome=yes`).
//! Only those settings, with those values, are made; the unit (its last word on each, as
//! systemd reads drop-ins) is checked to ask for them. Other mounts under `/` keep their own modes (systemd makes
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
    /// `/tmp` and `/var/tmp`.
    tmp: [CString; 2],
    proc_type: CString,
    proc_options: CString,
    tmpfs: CString,
    tmp_options: CString,
    dev: CString,
    dev_options: CString,
    /// The pseudo devices `PrivateDevices=` leaves: path, major, minor.
    dev_nodes: Vec<(CString, u32, u32)>,
    dev_shm: CString,
    dev_shm_options: CString,
    /// `/home`, `/root`, `/run/user`, those that exist.
    homes: Vec<CString>,
    homes_options: CString,
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
                .rev()
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
            ("PrivateDevices", "yes"),
            ("ProtectHome", "yes"),
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
            tmp: [c("/tmp"), c("/var/tmp")],
            proc_type: c("proc"),
            proc_options: c("hidepid=invisible,subset=pid"),
            tmpfs: c("tmpfs"),
            tmp_options: c("mode=1777"),
            dev: c("/dev"),
            dev_options: c("mode=0755"),
            dev_nodes: [
                ("null", 1, 3),
                ("zero", 1, 5),
                ("full", 1, 7),
                ("random", 1, 8),
                ("urandom", 1, 9),
                ("tty", 5, 0),
            ]
            .into_iter()
            .map(|(name, major, minor)| (c(&format!("/dev/{name}")), major, minor))
            .collect(),
            dev_shm: c("/dev/shm"),
            dev_shm_options: c("mode=1777"),
            homes: ["/home", "/root", "/run/user"]
                .into_iter()
                .filter(|p| std::path::Path::new(p).is_dir())
                .map(c)
                .collect(),
            homes_options: c("mode=0000"),
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
        // A tmpfs on `target` with `flags` and `options`.
        let tmpfs = |target: &CString, flags: libc::c_ulong, options: &CString| {
            // SAFETY: the call reads only NUL-terminated strings that outlive it.
            check(unsafe {
                libc::mount(
                    self.tmpfs.as_ptr(),
                    target.as_ptr(),
                    self.tmpfs.as_ptr(),
                    flags,
                    options.as_ptr().cast(),
                )
            })
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
            for tmp in &self.tmp {
                tmpfs(tmp, libc::MS_NOSUID | libc::MS_NODEV, &self.tmp_options)?;
            }
            check(libc::mount(
                self.proc_type.as_ptr(),
                self.proc.as_ptr(),
                self.proc_type.as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                self.proc_options.as_ptr().cast(),
            ))?;
            tmpfs(
                &self.dev,
                libc::MS_NOSUID | libc::MS_NOEXEC,
                &self.dev_options,
            )?;
            for (node, major, minor) in &self.dev_nodes {
                check(libc::mknod(
                    node.as_ptr(),
                    libc::S_IFCHR | 0o666,
                    libc::makedev(*major, *minor),
                ))?;
                // mknod's mode passes through the umask.
                check(libc::chmod(node.as_ptr(), 0o666))?;
            }
            check(libc::mkdir(self.dev_shm.as_ptr(), 0o1777))?;
            tmpfs(
                &self.dev_shm,
                libc::MS_NOSUID | libc::MS_NODEV,
                &self.dev_shm_options,
            )?;
            for home in &self.homes {
                tmpfs(
                    home,
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RDONLY,
                    &self.homes_options,
                )?;
            }
            check(libc::setgroups(self.groups.len(), self.groups.as_ptr()))?;
            check(libc::setgid(self.gid))?;
            check(libc::setuid(self.uid))?;
        }
        Ok(())
    }
}
