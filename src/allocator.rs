//! The allocator policy of pnn's programs. Each binary (the `pnn` command, the examples) declares
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
//! ```
//!
//! and calls [`keep_freed_memory`] first. mimalloc keeps freed memory for reuse: with the system
//! allocator every large tensor is a fresh mmap and its free a munmap, whose page faults and TLB
//! shootdowns between the cores took a fifth of a lenet training step (perf); bench numbers
//! before and after are in the README. The library itself does not choose the allocator, so a
//! program that links it keeps that choice.

/// mimalloc's `mi_option_purge_delay` (its v2 header's option enum).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// By default mimalloc hands freed memory back to the OS after 10 ms, and the next step's tensors
/// fault it in and zero it again (`clear_page_erms` was a fifth of a 64-mask step in perf); a
/// training process reuses the same sizes every step, so it keeps them (measured: 6.3-7.6 -> 9.0-9.3
/// images/s, peak memory 1005 -> 1045 MiB). Harmless when mimalloc is not the allocator.
pub fn keep_freed_memory() {
    // SAFETY: sets an allocator option; mimalloc reads options atomically.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}
