//! A systemd unit's system call filter, applied to a process the way systemd applies it, for
//! tests that run certconn as its unit would where no systemd runs: `SystemCallFilter=` (the
//! set worked out from the unit's lines in order, with `systemd-analyze syscall-filter`),
//! `SystemCallArchitectures=native` and `RestrictAddressFamilies=`. A system call outside the
//! set kills the process with SIGSYS, as systemd's filter does without
//! `SystemCallErrorNumber=`; a socket of a family outside the list fails with EAFNOSUPPORT, as
//! under systemd. The unit's other filters on arguments (`RestrictNamespaces=`,
//! `RestrictSUIDSGID=`, `LockPersonality=`, …) are not applied. x86_64 only: the system calls'
//! numbers come from the kernel headers (`linux-libc-dev`).

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP_JEQ_K: u16 = 0x15;
const BPF_JMP_JGE_K: u16 = 0x35;
const BPF_RET_K: u16 = 0x06;
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
/// Offsets in the kernel's `struct seccomp_data`: the call's number, its architecture, and the
/// low half of its first argument.
const NR: u32 = 0;
const ARCH: u32 = 4;
const ARG0: u32 = 16;

#[repr(C)]
#[derive(Clone, Copy)]
struct SockFilter {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

#[repr(C)]
struct SockFprog {
    len: u16,
    filter: *const SockFilter,
}

fn stmt(code: u16, k: u32) -> SockFilter {
    SockFilter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> SockFilter {
    SockFilter { code, jt, jf, k }
}

/// The filter of one unit, built before a child is forked: installing it takes two `prctl`s
/// and nothing else, which a `pre_exec` closure may do.
pub struct UnitFilter {
    program: Vec<SockFilter>,
    /// What the unit allows, by name, for a test's message.
    pub allowed: BTreeSet<String>,
}

impl UnitFilter {
    /// The filter of the unit file `unit`.
    pub fn of_unit(unit: &str) -> Self {
        if !cfg!(target_arch = "x86_64") {
            panic!("the unit's filter is built for x86_64 only");
        }
        let numbers = syscall_numbers();
        let allowed = allowed_names(unit);
        let families = address_families(unit);
        let mut program = vec![
            stmt(BPF_LD_W_ABS, ARCH),
            jump(BPF_JMP_JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
            stmt(BPF_RET_K, libc::SECCOMP_RET_KILL_PROCESS),
            stmt(BPF_LD_W_ABS, NR),
            jump(BPF_JMP_JGE_K, X32_SYSCALL_BIT, 0, 1),
            stmt(BPF_RET_K, libc::SECCOMP_RET_KILL_PROCESS),
        ];
        if let Some(families) = &families {
            // socket(): a family outside the list fails as systemd makes it fail.
            let socket = numbers["socket"];
            program.push(jump(BPF_JMP_JEQ_K, socket, 0, (families.len() + 3) as u8));
            program.push(stmt(BPF_LD_W_ABS, ARG0));
            for (i, family) in families.iter().enumerate() {
                let to_allow = (families.len() - i) as u8;
                program.push(jump(BPF_JMP_JEQ_K, *family, to_allow, 0));
            }
            program.push(stmt(
                BPF_RET_K,
                libc::SECCOMP_RET_ERRNO | libc::EAFNOSUPPORT as u32,
            ));
            program.push(stmt(BPF_RET_K, libc::SECCOMP_RET_ALLOW));
        }
        for name in &allowed {
            if let Some(&nr) = numbers.get(name.as_str()) {
                program.push(jump(BPF_JMP_JEQ_K, nr, 0, 1));
                program.push(stmt(BPF_RET_K, libc::SECCOMP_RET_ALLOW));
            }
        }
        program.push(stmt(BPF_RET_K, libc::SECCOMP_RET_KILL_PROCESS));
        assert!(program.len() < 4096, "{} instructions", program.len());
        Self { program, allowed }
    }

    /// Installs the filter in the calling process, as `NoNewPrivileges=yes` and the filter do:
    /// for a `pre_exec` closure (no allocation, two system calls).
    pub fn install(&self) -> std::io::Result<()> {
        let prog = SockFprog {
            len: self.program.len() as u16,
            filter: self.program.as_ptr(),
        };
        // SAFETY: both prctls read only their integer arguments and, for the filter, `prog`
        // and the program it points to, which live until they return.
        unsafe {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &prog as *const SockFprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// `name → number` from the kernel's headers.
fn syscall_numbers() -> BTreeMap<String, u32> {
    let header = "/usr/include/x86_64-linux-gnu/asm/unistd_64.h";
    let text = std::fs::read_to_string(header)
        .unwrap_or_else(|e| panic!("{header} (scripts/install-deps --test installs it): {e}"));
    let numbers: BTreeMap<String, u32> = text
        .lines()
        .filter_map(|l| {
            let mut words = l.strip_prefix("#define __NR_")?.split_whitespace();
            Some((words.next()?.to_owned(), words.next()?.parse().ok()?))
        })
        .collect();
    assert!(
        numbers.len() > 300 && numbers.contains_key("socket"),
        "{header}"
    );
    numbers
}

/// The system calls the unit's `SystemCallFilter=` lines allow, merged in order as systemd
/// merges them: the first line's polarity is the filter's; a later line of the other polarity
/// takes its calls away again.
fn allowed_names(unit: &str) -> BTreeSet<String> {
    let mut set = BTreeSet::new();
    let mut allow_list = None;
    for value in unit
        .lines()
        .filter_map(|l| l.trim().strip_prefix("SystemCallFilter="))
    {
        let (deny, names) = match value.strip_prefix('~') {
            Some(rest) => (true, rest),
            None => (false, value),
        };
        let allow_list = *allow_list.get_or_insert(!deny);
        assert!(
            allow_list,
            "a unit whose filter starts with a deny list is not supported here"
        );
        for name in names.split_whitespace() {
            assert!(
                !name.contains(':'),
                "{name}: an errno per call is not supported here"
            );
            for call in expand(name) {
                if deny {
                    set.remove(&call);
                } else {
                    set.insert(call);
                }
            }
        }
    }
    assert!(!set.is_empty(), "the unit sets no SystemCallFilter=");
    set
}

/// A call's name, or every call of a `@group`, nested groups included.
fn expand(name: &str) -> Vec<String> {
    if !name.starts_with('@') {
        return vec![name.to_owned()];
    }
    let out = Command::new("systemd-analyze")
        .args(["syscall-filter", "--no-pager", name])
        .output()
        .expect("systemd-analyze (scripts/install-deps --test installs systemd)");
    assert!(
        out.status.success(),
        "systemd-analyze syscall-filter {name}"
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .flat_map(expand)
        .collect()
}

/// `RestrictAddressFamilies=`'s families (an allow list; several lines add up), if the unit
/// sets it.
fn address_families(unit: &str) -> Option<Vec<u32>> {
    let values: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.trim().strip_prefix("RestrictAddressFamilies="))
        .collect();
    if values.is_empty() {
        return None;
    }
    let mut families = BTreeSet::new();
    for value in values {
        assert!(
            !value.starts_with('~'),
            "a deny list of families is not supported here"
        );
        for family in value.split_whitespace() {
            families.insert(match family {
                "AF_UNIX" => libc::AF_UNIX as u32,
                "AF_INET" => libc::AF_INET as u32,
                "AF_INET6" => libc::AF_INET6 as u32,
                "AF_NETLINK" => libc::AF_NETLINK as u32,
                other => panic!("address family {other} is not known here"),
            });
        }
    }
    Some(families.into_iter().collect())
}
