//! The process's heap: how many malloc arenas it may make, and its figures for `/metrics`.
//!
//! glibc's malloc gives each thread that allocates an arena of its own, up to eight per core,
//! and an arena keeps what was freed in it for its own thread's next allocations. certconn's
//! daemon runs a dozen long-lived threads (the async threads, the journal's writer, checkpoint
//! and readers, the blocking pool), so under steady load a dozen arenas each held their own
//! high-water mark of freed memory: in a soak of 40 minutes (`scripts/soak`, two cores) the
//! daemon's anonymous memory rose from 31 to 49 MB and was still rising; in an earlier one the
//! bytes in use stayed near 22 MB while those malloc held went from 40 to 49 MB. With two
//! arenas the same soak stayed flat, 33.1 to 33.4 MB (`docs/operations.md`, under
//! "Benchmark"). Two cores run at most two threads at once, so two arenas cost the pipeline no
//! measurable lock contention (`docs/design/pipeline.md`, "malloc arenas, one per core").
//!
//! An operator's `MALLOC_ARENA_MAX` in the environment wins ([`arena_limit_in_force`]). On
//! other C libraries (musl) this module does nothing and [`figures`] reports nothing.

/// The arena limit certconn sets: one per core, and at least two.
pub fn arena_limit() -> usize {
    std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(2)
        .max(2)
}

/// The arena limit in force: the operator's `MALLOC_ARENA_MAX` when it names one (as glibc
/// reads it: a whole number from 1), else [`arena_limit`].
pub fn arena_limit_in_force() -> usize {
    std::env::var("MALLOC_ARENA_MAX")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n >= 1)
        .unwrap_or_else(arena_limit)
}

/// Bounds the malloc arenas to [`arena_limit_in_force`]: the operator's `MALLOC_ARENA_MAX`
/// when it is set to a limit (glibc has applied it already; this sets the same), else one per
/// core. Call it first thing in `main`, before any thread starts: a thread's arena is chosen
/// at its first allocation.
pub fn bound_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let limit = libc::c_int::try_from(arena_limit_in_force()).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt takes a parameter number and a value and touches nothing else; it
        // is safe to call at any time (it takes the main arena's lock).
        unsafe { libc::mallopt(libc::M_ARENA_MAX, limit) };
    }
}

/// Gives the whole free pages malloc keeps back to the kernel (glibc's `malloc_trim`), and
/// returns whether any went.
///
/// For after a rare burst that freed a lot: a plugin's compilation frees tens of megabytes
/// that malloc would otherwise keep resident for good, since steady work never needs that
/// much at once. Walks every arena under its lock (a few milliseconds), so not for a hot path.
pub fn release_free() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only releases pages of free chunks; live allocations are untouched.
        unsafe { libc::malloc_trim(0) != 0 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

/// The heap as malloc sees it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeapFigures {
    /// Bytes handed out and not yet freed (small chunks and large mapped ones), and the freed
    /// chunks each thread keeps in its own cache (tcache) for its next allocations, which
    /// malloc counts as in use: up to some hundreds of KB a thread, filled as sizes recur.
    pub in_use: u64,
    /// Bytes freed and kept by malloc for later allocations: mostly resident memory that is
    /// not in use, except the never-touched end of an arena and the whole pages
    /// [`release_free`] gave back to the kernel (after a plugin's compilation), which malloc
    /// still counts here.
    pub free_kept: u64,
    /// Arenas malloc has made (the main one among them).
    pub arenas: u64,
    /// The most it may make ([`arena_limit_in_force`]).
    pub arena_limit: u64,
}

/// The heap's figures, or `None` where the C library is not glibc or they cannot be read.
/// Walks every arena under its lock, so it is for a scrape, not for a hot path.
pub fn figures() -> Option<HeapFigures> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads malloc's own statistics (glibc 2.33; the binary
        // already needs 2.34).
        let info = unsafe { libc::mallinfo2() };
        Some(HeapFigures {
            in_use: (info.uordblks + info.hblkhd) as u64,
            free_kept: info.fordblks as u64,
            arenas: arena_count()?,
            arena_limit: arena_limit_in_force() as u64,
        })
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    None
}

/// How many arenas malloc has made: the `<heap>` elements of `malloc_info`'s report (glibc
/// has no other way to ask).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn arena_count() -> Option<u64> {
    let mut buf: *mut libc::c_char = std::ptr::null_mut();
    let mut len: libc::size_t = 0;
    // SAFETY: open_memstream writes the buffer's address and length into the two locals when
    // the stream is flushed or closed; the buffer is malloc's and freed below.
    let stream = unsafe { libc::open_memstream(&mut buf, &mut len) };
    if stream.is_null() {
        return None;
    }
    // SAFETY: the stream is open; malloc_info writes its XML report to it.
    let written = unsafe { libc::malloc_info(0, stream) };
    // SAFETY: closing the stream once, after which buf and len describe what was written.
    let closed = unsafe { libc::fclose(stream) };
    if buf.is_null() {
        return None;
    }
    // SAFETY: buf holds len bytes written by the stream, and is freed right after.
    let report = unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) }.to_vec();
    // SAFETY: buf was allocated by open_memstream with malloc.
    unsafe { libc::free(buf.cast()) };
    if written != 0 || closed != 0 {
        return None;
    }
    Some(count_heaps(&report))
}

/// The `<heap nr="…">` elements of a `malloc_info` report, one per arena.
fn count_heaps(report: &[u8]) -> u64 {
    report
        .windows(b"<heap nr=".len())
        .filter(|w| *w == b"<heap nr=")
        .count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_arenas_of_a_report_are_its_heap_elements() {
        let report = br#"<malloc version="1">
<heap nr="0">
<sizes>
</sizes>
<total type="fast" count="0" size="0"/>
<system type="current" size="135168"/>
</heap>
<heap nr="1">
<sizes>
</sizes>
<system type="current" size="135168"/>
</heap>
<total type="mmap" count="0" size="0"/>
<system type="current" size="270336"/>
</malloc>
"#;
        assert_eq!(count_heaps(report), 2);
        assert_eq!(count_heaps(b"<malloc version=\"1\">\n</malloc>\n"), 0);
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn the_figures_see_an_allocation_in_use() {
        // Other tests allocate and free on their threads meanwhile: the block is large enough
        // that their traffic cannot hide it.
        let before = figures().expect("glibc reports its heap");
        assert!(before.arenas >= 1 && before.arena_limit >= 1);
        let block = std::hint::black_box(vec![1u8; 64 << 20]);
        let during = figures().expect("glibc reports its heap");
        assert!(
            during.in_use >= before.in_use + (48 << 20),
            "{before:?} then {during:?}"
        );
        drop(block);
    }
}
