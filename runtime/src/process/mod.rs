//! The process's own resources, as an operator watches them: resident memory, open files,
//! threads and the heap ([`heap`]), for `/metrics` under the names Prometheus's client
//! libraries use (`process_resident_memory_bytes`, `process_open_fds`, …), so that existing
//! dashboards and alerts read them.

pub mod heap;

/// What the process holds now, read from `/proc/self`. A figure that cannot be read is `None`
/// (another operating system, or `/proc` not mounted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessFigures {
    /// Resident memory, bytes (`VmRSS`).
    pub resident_bytes: Option<u64>,
    /// Of it, anonymous memory (the heap, the plugin pool's resident slots), bytes (`RssAnon`):
    /// the part that grows when memory is kept; the rest is mostly the binary's code, paged in
    /// as paths first run.
    pub resident_anonymous_bytes: Option<u64>,
    /// Open file descriptors.
    pub open_fds: Option<u64>,
    /// Threads.
    pub threads: Option<u64>,
}

/// Reads [`ProcessFigures`] now.
pub fn figures() -> ProcessFigures {
    let status = std::fs::read_to_string("/proc/self/status").ok();
    let field = |name: &str| status.as_deref().and_then(|s| status_number(s, name));
    ProcessFigures {
        resident_bytes: field("VmRSS").map(|k| k * 1024),
        resident_anonymous_bytes: field("RssAnon").map(|k| k * 1024),
        open_fds: entries("/proc/self/fd"),
        threads: field("Threads"),
    }
}

/// A number field of `/proc/self/status` (`VmRSS:   66016 kB`, `Threads:  12`).
fn status_number(status: &str, name: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

fn entries(dir: &str) -> Option<u64> {
    Some(std::fs::read_dir(dir).ok()?.count() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_are_read_by_their_exact_name() {
        let status = "Name:\tcertconn\nVmRSS:\t   66016 kB\nRssAnon:\t   30816 kB\nRssFile:\t   35084 kB\nThreads:\t12\n";
        assert_eq!(status_number(status, "VmRSS"), Some(66016));
        assert_eq!(status_number(status, "RssAnon"), Some(30816));
        assert_eq!(status_number(status, "Threads"), Some(12));
        // A name that is a prefix of another's is not it.
        assert_eq!(status_number(status, "Rss"), None);
        assert_eq!(status_number("VmRSS:\tmany kB\n", "VmRSS"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_is_seen() {
        let f = figures();
        let threads = f.threads.expect("threads");
        assert!(threads >= 1);
        assert!(f.resident_bytes.expect("rss") > f.resident_anonymous_bytes.expect("anon"));
        let before = f.open_fds.expect("fds");
        // A file opened (and kept open) is one more descriptor; other tests open and close
        // theirs meanwhile, so it is compared with a handful opened at once.
        let files: Vec<_> = (0..64)
            .map(|_| std::fs::File::open("/proc/self/status").expect("open"))
            .collect();
        let during = figures().open_fds.expect("fds");
        assert!(during >= before + 32, "{before} then {during}");
        drop(files);
    }
}
