//! The allocator policy of pnn's programs. Each binary (the `pnn` command, the examples) declares
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOCATOR: pnn::allocator::Counting<mimalloc::MiMalloc> = pnn::allocator::Counting(mimalloc::MiMalloc);
//! ```
//!
//! and calls [`keep_freed_memory`] first. [`Counting`] lets `pnn train` measure the memory a
//! configuration needs before it starts. mimalloc keeps freed memory for reuse: with the system
//! allocator every large tensor is a fresh mmap and its free a munmap, whose page faults and TLB
//! shootdowns between the cores were a large part of a training step (the profile is in
//! docs/speed.md, "Why each CPU operation is hand-written"). The library itself does not choose the allocator, so a
//! program that links it keeps that choice.

/// mimalloc's `mi_option_purge_delay` (its v2 header's option enum).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// By default mimalloc hands freed memory back to the OS after 10 ms, and the next step's tensors
/// fault it in and zero it again; a training process reuses the same sizes every step, so it
/// keeps them, for a little more peak memory (docs/speed.md has the profile and the figures). Harmless when mimalloc is not the allocator.
pub fn keep_freed_memory() {
    // SAFETY: sets an allocator option; mimalloc reads options atomically.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static COUNTING: AtomicBool = AtomicBool::new(false);

/// A global allocator that counts the bytes it holds, so that pnn can measure what a training
/// step needs before it commits to a batch size (see `train::memory`). It wraps any allocator:
///
/// ```ignore
/// #[global_allocator]
/// static ALLOCATOR: pnn::allocator::Counting<mimalloc::MiMalloc> = pnn::allocator::Counting(mimalloc::MiMalloc);
/// ```
///
/// Two relaxed atomic additions per allocation: tensors are few and large, so the cost does not
/// show in a training step.
pub struct Counting<A>(pub A);

fn grew(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: every call is passed on unchanged to the wrapped allocator; only counters are added.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Counting<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { self.0.alloc(layout) };
        if !p.is_null() {
            COUNTING.store(true, Ordering::Relaxed);
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { self.0.alloc_zeroed(layout) };
        if !p.is_null() {
            COUNTING.store(true, Ordering::Relaxed);
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { self.0.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { self.0.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

/// Bytes held now, or `None` when the program's allocator is not [`Counting`].
pub fn live_bytes() -> Option<usize> {
    COUNTING.load(Ordering::Relaxed).then(|| LIVE.load(Ordering::Relaxed))
}

/// The most bytes held at once since the last [`reset_peak`].
pub fn peak_bytes() -> Option<usize> {
    COUNTING.load(Ordering::Relaxed).then(|| PEAK.load(Ordering::Relaxed))
}

/// Starts a new peak measurement from what is held now.
pub fn reset_peak() {
    PEAK.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
}
