//! The process heap, on glibc: few arenas, and freed memory handed back to
//! the system after the requests that used the most of it.
//!
//! glibc's malloc keeps what a thread frees in that thread's arena (up to
//! eight per core) for the next allocation there. The daemon's largest
//! allocations are a request's body and its parsed JSON, made on whichever
//! worker or blocking thread took the request; freed, they stay in that
//! arena, and over a burst of large bodies each arena keeps its own
//! high-water mark. That retained memory, not memory in use, was most of the
//! peak: `bench/bad_inputs.sh 4` peaked at 1.92x the idle RSS with glibc's
//! defaults, 1.30-1.31x with two arenas and the trim below. Two arenas cost
//! the engine nothing measurable (prefill and decode within run-to-run noise
//! on SmolLM2 with two threads). The trim is for large bodies only: after
//! every request it cost the proxy ~70 us a request.

/// Caps malloc at two arenas, unless the operator set `MALLOC_ARENA_MAX`.
/// Call before any thread starts.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt sets a malloc tunable; called before other threads exist.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    }
}

/// After a request with a large body ends: returns the heap's free pages to
/// the system, on a blocking thread (it walks every arena), at most one such
/// pass at a time.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::sync::atomic::{AtomicBool, Ordering};
        static RUNNING: AtomicBool = AtomicBool::new(false);
        if RUNNING.swap(true, Ordering::AcqRel) {
            return;
        }
        let trim = || {
            crate::metrics::metrics().heap_trims.inc();
            // SAFETY: malloc_trim only releases pages malloc holds free; it
            // is thread-safe and touches no memory in use.
            unsafe { libc::malloc_trim(0) };
            RUNNING.store(false, Ordering::Release);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(trim)),
            Err(_) => trim(),
        }
    }
}
