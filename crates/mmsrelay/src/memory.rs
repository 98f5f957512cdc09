//! How the process's allocator treats message bodies.
//!
//! Every message is one allocation of its size (100 KB to a few MB), made by the worker that
//! ran the session and freed after its commit. With glibc's defaults an arena gives its free
//! top back to the kernel once it exceeds 128 KiB and anything above 128 KiB is its own
//! `mmap`, so nearly every body is faulted in again and zeroed by the kernel: 8 page faults
//! per 100 KB MM and 260 per 1 MB one, 10–20 % of the relay's CPU (`perf stat`, BENCHMARKS.md
//! 2026-12-05). Keeping freed memory for reuse costs at most the peak the relay already
//! reached; it is what a server that sees the same sizes again and again wants.

/// Free memory an arena keeps instead of returning it (glibc's default: 128 KiB).
const KEEP_FREE: libc::c_int = 32 << 20;
/// Allocations up to this come from the arenas rather than their own `mmap` (a maximal MM).
const MMAP_ABOVE: libc::c_int = 16 << 20;

/// Applies the policy (first thing in `main`, before any thread allocates).
pub fn keep_freed_memory_for_reuse() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt sets two allocator parameters; it touches no memory of ours.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, KEEP_FREE);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_ABOVE);
    }
}
