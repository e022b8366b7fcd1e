//! Allocator settings for a small box.
//!
//! Each argon2 check allocates ~19 MiB (RFC 9106 / OWASP parameters). glibc
//! raises its mmap threshold after such a block is freed and then serves the
//! next one from an arena it never trims, so every login would leave ~20 MiB
//! resident per thread. A fixed threshold keeps big blocks on mmap (returned
//! to the kernel on free), and two arenas bound per-thread fragmentation.
#![allow(unsafe_code)]

/// Blocks at least this large are mmap'd and unmapped on free.
const MMAP_THRESHOLD: libc::c_int = 256 * 1024;
const ARENA_MAX: libc::c_int = 2;

pub fn tune_allocator() {
    // SAFETY: mallopt only changes allocator tunables; it is called once at
    // start, before the runtime spawns threads, with valid parameter values.
    let ok = unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 && libc::mallopt(libc::M_ARENA_MAX, ARENA_MAX) == 1
    };
    if !ok {
        tracing::warn!("could not tune the allocator; memory use may be higher");
    }
}
