//! Matrix products for the hand-written CPU operations: row-major views read through strides
//! (so a transposed operand is never copied), computed by the `gemm` crate (the one flex's own
//! matrix product uses), on this thread or split over rayon's threads by gemm itself; and the
//! two layouts the convolutions multiply in, [N, K, HW] and [K, N x HW].

use std::mem::MaybeUninit;

use gemm::Parallelism;

use super::buffer::{par_filled, write_copy};

/// A row-major matrix view: element (r, c) at `ptr + r * rs + c * cs`.
#[derive(Clone, Copy)]
pub struct Mat {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}

// SAFETY: a Mat only addresses buffers that outlive the call that reads it, and is only read.
unsafe impl Send for Mat {}
unsafe impl Sync for Mat {}

impl Mat {
    /// A row-major matrix with `cols` columns, starting at `ptr`.
    pub fn row_major(ptr: *const f32, cols: usize) -> Self {
        Self {
            ptr,
            rs: cols as isize,
            cs: 1,
        }
    }

    /// The transpose of a row-major matrix with `cols` columns, read in place through strides.
    pub fn transposed(ptr: *const f32, cols: usize) -> Self {
        Self {
            ptr,
            rs: 1,
            cs: cols as isize,
        }
    }
}

/// `dst (m x n, row-major) = [dst +] a (m x k) b (k x n)`, on this thread.
///
/// # Safety
/// `dst` must hold m x n floats, `a` and `b` must address m x k and k x n floats.
pub(crate) unsafe fn matmul(dst: &mut [f32], accumulate: bool, m: usize, n: usize, k: usize, a: Mat, b: Mat) {
    debug_assert_eq!(dst.len(), m * n);
    // SAFETY: passed on.
    unsafe { matmul_raw(dst.as_mut_ptr(), accumulate, m, n, k, a, b, Parallelism::None) }
}

/// `dst = a b` into memory not yet written, on this thread: gemm only writes `dst` when it is
/// not asked to accumulate (it sets its own `alpha` to zero and never reads the destination).
///
/// # Safety
/// As [`matmul`]. Every element of `dst` is written.
pub unsafe fn matmul_into(dst: &mut [MaybeUninit<f32>], m: usize, n: usize, k: usize, a: Mat, b: Mat) {
    debug_assert_eq!(dst.len(), m * n);
    // SAFETY: passed on.
    unsafe { matmul_raw(dst.as_mut_ptr().cast(), false, m, n, k, a, b, Parallelism::None) }
}

/// [`matmul`] on rayon's threads, split by gemm itself: for the batch-wide products.
///
/// # Safety
/// As [`matmul`].
pub(crate) unsafe fn matmul_threaded(dst: &mut [f32], m: usize, n: usize, k: usize, a: Mat, b: Mat) {
    debug_assert_eq!(dst.len(), m * n);
    // SAFETY: passed on.
    unsafe { matmul_raw(dst.as_mut_ptr(), false, m, n, k, a, b, Parallelism::Rayon(0)) }
}

/// [`matmul_into`] on rayon's threads, split by gemm itself: for the batch-wide products.
///
/// # Safety
/// As [`matmul_into`].
pub unsafe fn matmul_threaded_into(dst: &mut [MaybeUninit<f32>], m: usize, n: usize, k: usize, a: Mat, b: Mat) {
    debug_assert_eq!(dst.len(), m * n);
    // SAFETY: passed on.
    unsafe { matmul_raw(dst.as_mut_ptr().cast(), false, m, n, k, a, b, Parallelism::Rayon(0)) }
}

/// `dst (m x n) = [dst +] a b` on rayon's threads, split by gemm itself.
///
/// # Safety
/// As [`matmul`].
pub(crate) unsafe fn matmul_threaded_acc(
    dst: &mut [f32],
    accumulate: bool,
    m: usize,
    n: usize,
    k: usize,
    a: Mat,
    b: Mat,
) {
    debug_assert_eq!(dst.len(), m * n);
    // SAFETY: passed on.
    unsafe { matmul_raw(dst.as_mut_ptr(), accumulate, m, n, k, a, b, Parallelism::Rayon(0)) }
}

/// `a b` (m x n) in a new vector, on rayon's threads: [`matmul_threaded_into`] into memory
/// that is not zeroed first.
///
/// # Safety
/// `a` and `b` must address m x k and k x n floats.
pub(crate) unsafe fn threaded_product(m: usize, n: usize, k: usize, a: Mat, b: Mat) -> Vec<f32> {
    let mut v: Vec<f32> = Vec::with_capacity(m * n);
    // SAFETY: the destination is m x n, a and b are the caller's promise, and gemm writes every
    // value of a destination it does not accumulate into.
    unsafe {
        matmul_threaded_into(&mut v.spare_capacity_mut()[..m * n], m, n, k, a, b);
        v.set_len(m * n);
    }
    v
}

/// gemm's call with pnn's conventions (row-major views, `dst = [dst +] a b`).
///
/// # Safety
/// `dst` must address m x n floats (initialised when `accumulate`), `a` and `b` m x k and k x n.
#[allow(clippy::too_many_arguments)]
unsafe fn matmul_raw(dst: *mut f32, accumulate: bool, m: usize, n: usize, k: usize, a: Mat, b: Mat, par: Parallelism) {
    // SAFETY: the shapes and strides are the caller's promise; gemm reads `a` and `b` and
    // writes `dst` within them.
    unsafe {
        gemm::gemm(
            m, n, k, dst, 1, n as isize, accumulate, a.ptr, a.cs, a.rs, b.ptr, b.cs, b.rs, 1.0, 1.0, false, false,
            false, par,
        )
    }
}

/// [N, K, HW] -> [K, N x HW].
pub(crate) fn gather(v: &[f32], n: usize, k: usize, hw: usize) -> Vec<f32> {
    // SAFETY: each row of N x HW is written sample by sample.
    unsafe {
        par_filled(v.len(), n * hw, |kk, row| {
            for (sample, dst) in row.chunks_mut(hw).enumerate() {
                write_copy(dst, &v[(sample * k + kk) * hw..][..hw]);
            }
        })
    }
}

/// [K, N x HW] -> [N, K, HW], adding `bias[k]` to row k when given.
pub(crate) fn scatter(v: &[f32], n: usize, k: usize, hw: usize, bias: Option<&[f32]>) -> Vec<f32> {
    // SAFETY: each sample's K x HW is written channel by channel.
    unsafe {
        par_filled(v.len(), k * hw, |sample, dst| {
            for (kk, d) in dst.chunks_mut(hw).enumerate() {
                let src = &v[kk * n * hw + sample * hw..][..hw];
                match bias {
                    Some(b) => d.iter_mut().zip(src).for_each(|(d, &v)| {
                        d.write(v + b[kk]);
                    }),
                    None => write_copy(d, src),
                }
            }
        })
    }
}
