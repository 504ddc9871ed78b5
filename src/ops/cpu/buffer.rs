//! Output buffers that the kernels fill on rayon's threads, allocated without zeroing.
//!
//! `vec![0f32; n]` zeroes all n floats on the calling thread before the parallel work starts,
//! while the other cores wait (docs/speed.md has the profile). The
//! kernels write every output value anyway, so here each thread writes its own chunks straight
//! into uninitialised memory, or zeroes them itself where it accumulates.

use std::mem::MaybeUninit;

use rayon::prelude::*;

/// A vector of `len` floats built chunk by chunk on rayon's threads: `fill(i, chunk)` is given
/// the i-th run of `chunk_len` values (the last one may be shorter).
///
/// # Safety
/// `fill` must write every element of each chunk it is given.
pub unsafe fn par_filled(
    len: usize,
    chunk_len: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync + Send,
) -> Vec<f32> {
    let mut v: Vec<f32> = Vec::with_capacity(len);
    v.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk_len.max(1))
        .enumerate()
        .for_each(|(i, chunk)| fill(i, chunk));
    // SAFETY: the caller's promise: every chunk, hence every element below len, was written.
    unsafe { v.set_len(len) };
    v
}

/// [`par_filled`] with a scratch value per rayon task, made by `init` (as rayon's
/// `for_each_init`): `fill(scratch, i, chunk)`. The scratch lives only as long as the call, so
/// the memory a step holds does not depend on which threads ran what before.
///
/// # Safety
/// As [`par_filled`].
pub unsafe fn par_filled_with<T>(
    len: usize,
    chunk_len: usize,
    init: impl Fn() -> T + Sync + Send,
    fill: impl Fn(&mut T, usize, &mut [MaybeUninit<f32>]) + Sync + Send,
) -> Vec<f32> {
    let mut v: Vec<f32> = Vec::with_capacity(len);
    v.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk_len.max(1))
        .enumerate()
        .for_each_init(init, |scratch, (i, chunk)| fill(scratch, i, chunk));
    // SAFETY: the caller's promise: every chunk, hence every element below len, was written.
    unsafe { v.set_len(len) };
    v
}

/// Writes zeros over `chunk` and returns it as initialised floats: for kernels that accumulate.
pub fn zeroed(chunk: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    for v in chunk.iter_mut() {
        v.write(0.0);
    }
    // SAFETY: every element was just written.
    unsafe { assume_init(chunk) }
}

/// `chunk` as initialised floats.
///
/// # Safety
/// Every element of `chunk` must have been written.
pub unsafe fn assume_init(chunk: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    // SAFETY: MaybeUninit<f32> has f32's layout, and the caller promises the values are written.
    unsafe { &mut *(chunk as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// Copies `src` into `dst` (same length).
pub fn write_copy(dst: &mut [MaybeUninit<f32>], src: &[f32]) {
    assert_eq!(dst.len(), src.len(), "write_copy: lengths differ");
    for (d, &s) in dst.iter_mut().zip(src) {
        d.write(s);
    }
}
