//! The C allocator's settings, where they matter to the one thread.
//!
//! glibc's malloc keeps small freed blocks in "fast bins" and merges them all back at the next
//! large allocation. After a flush of 100k series frees their heads' buffers, that merge ran
//! inside one slice of the next flush: the executor held for 21 ms at once (`cargo bench
//! --bench storage -- flush`, the longest slice), against 3.9 ms with fast bins off
//! (`GLIBC_TUNABLES=glibc.malloc.mxfast=0`). [`tune`] turns them off with `mallopt` on glibc
//! builds, before anything else runs. musl's allocator (the board builds) has no fast bins:
//! there it does nothing.

/// Sets the allocator up for Perch: see the module doc. Call it first in `main`.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    glibc_no_fast_bins();
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn glibc_no_fast_bins() {
    use std::ffi::c_int;
    /// glibc's `M_MXFAST` (`malloc.h`): the largest request served from fast bins.
    const M_MXFAST: c_int = 1;
    extern "C" {
        fn mallopt(param: c_int, value: c_int) -> c_int;
    }
    // SAFETY: `mallopt` is glibc's own entry point with this C signature; it only changes the
    // allocator's parameters (under the allocator's lock) and merges the fast bins it empties.
    // Blocks allocated before stay valid.
    unsafe {
        mallopt(M_MXFAST, 0);
    }
}
