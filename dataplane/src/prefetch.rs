//! Asking the CPU to start loading a cache line that a later pass over the batch will read, so that the
//! misses of a whole batch overlap instead of stalling one frame at a time.

/// Starts loading the cache line at `ptr` into all cache levels. Any address is allowed.
#[inline(always)]
pub fn prefetch<T>(ptr: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it never faults and never writes, whatever the address, and SSE
    // (which `_mm_prefetch` needs) is part of the x86_64 baseline.
    unsafe {
        use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(ptr.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = ptr;
}
