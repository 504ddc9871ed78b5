//! Winograd's F(4x4, 3x3): the 3x3, stride-1, padding-1 convolutions of the ResNets with 4x
//! fewer multiplications than im2col, forward and backward (Lavin & Gray, "Fast Algorithms for
//! Convolutional Neural Networks", 2016).
//!
//! The output is cut into 4x4 tiles; tile t reads a 6x6 input patch d_t (overlapping its
//! neighbours by two pixels). With the constant matrices B (6x6), G (6x3) and A (6x4) of
//! [`transform`],
//!
//!   forward   y_t        = A^T [ sum_c U[o,c] . V[c,t] ] A     U = G w G^T,  V = B^T d_t B
//!   backward  dU[o,c]    = sum_t D[o,t] . V[c,t]               D = A dy_t A^T
//!             dw         = G^T dU G
//!             dd_t[c]    = B [ sum_o U[o,c] . D[o,t] ] B^T     added back where the patches overlap
//!
//! where `.` is the element-wise product of 6x6 tiles. Taken one of the 36 positions ξ of a
//! tile at a time, each sum is a matrix product: 36 products of [T, C] x [C, O] (forward),
//! [O, T] x [T, C] (weight gradient) and [T, O] x [O, C] (input gradient), T = N x tiles per map.
//! The backward pass differentiates the forward's algebra exactly, so all three are the same
//! function as the convolution up to rounding. Layouts: U [36, O, C], V and the input
//! gradient's tiles [36, T, C], the output's and dy's tiles [36, T, O]: channels last, so that
//! the transforms run across channels (see [`transform`]).
//!
//! The batch is cut into one range of samples per thread, and each range into blocks small
//! enough that a block's transformed tiles stay in the core's cache from the transform to the
//! products (T above is then a block's tiles). The weight gradient is summed per range and the
//! ranges' sums added in order, so a step's result does not depend on which thread ran what.

mod layout;
mod transform;

use rayon::prelude::*;

use std::mem::MaybeUninit;

use crate::ops::cpu::blocks::block_len;
use crate::ops::cpu::buffer::{assume_init, par_filled, par_filled_with};
use crate::ops::cpu::matmul::{Mat, matmul};
use crate::ops::cpu::reused::Reused;

use layout::Padded;
pub use transform::{weight_grad_transform, weight_transform};

/// Positions of a 6x6 tile.
const POSITIONS: usize = 36;

/// The sizes of one convolution the transform applies to: stride 1, padding 1, output as large
/// as the input.
#[derive(Debug, Clone, Copy)]
pub struct Tiles {
    pub n: usize,
    pub c: usize,
    pub o: usize,
    pub h: usize,
    pub w: usize,
}

impl Tiles {
    /// Tile rows and columns per map (a map whose size is not a multiple of 4 ends in a tile
    /// cut short).
    fn th(&self) -> usize {
        self.h.div_ceil(4)
    }
    fn tw(&self) -> usize {
        self.w.div_ceil(4)
    }
    /// Tiles of one map.
    fn per_map(&self) -> usize {
        self.th() * self.tw()
    }
    /// Tiles of the batch: the rows of the products.
    fn t(&self) -> usize {
        self.n * self.per_map()
    }
}

/// Samples per block: as many as keep a block's transformed tiles (36 x tiles x (C + O)
/// values) within a core's cache, so that the products read what the transforms just wrote,
/// and at least one.
fn block_samples(g: &Tiles) -> usize {
    const TILE_VALUES: usize = 1 << 20;
    (TILE_VALUES / (POSITIONS * g.per_map() * (g.c + g.o))).clamp(1, g.n.max(1))
}

/// The batch cut into one contiguous range of samples per thread (the ranges' order fixes the
/// order the weight gradient's partial sums are added in, whatever thread ran which).
fn thread_ranges(n: usize) -> Vec<std::ops::Range<usize>> {
    let len = block_len(n);
    (0..n).step_by(len).map(|s| s..(s + len).min(n)).collect()
}

/// The blocks of a range of samples: (first sample, the block's sizes).
fn blocks(g: &Tiles, samples: std::ops::Range<usize>) -> impl Iterator<Item = (usize, Tiles)> + '_ {
    let per = block_samples(g);
    samples.clone().step_by(per).map(move |first| {
        (
            first,
            Tiles {
                n: per.min(samples.end - first),
                ..*g
            },
        )
    })
}

/// One thread's working memory, sized for the largest block.
struct Scratch {
    /// The block's input, padded, channels last.
    xp: Reused,
    /// The block's output or its gradient, channels last, in whole tiles.
    yp: Reused,
    /// Half-transformed tiles.
    tmp: Reused,
    /// V, then (backward) the input gradient's tiles: [36, T, C].
    v: Reused,
    /// The output's or its gradient's tiles: [36, T, O].
    m: Reused,
}

impl Scratch {
    fn new(g: &Tiles) -> Self {
        let most = Tiles {
            n: block_samples(g),
            ..*g
        };
        Self {
            // The padding is read: zeros. The rest is written before it is read.
            xp: Reused::zeroed(Padded::input(g).len(most.n, g.c)),
            yp: Reused::zeroed(Padded::output(g).len(most.n, g.o)),
            tmp: Reused::any(36 * g.c.max(g.o)),
            v: Reused::any(POSITIONS * most.t() * g.c),
            m: Reused::any(POSITIONS * most.t() * g.o),
        }
    }
}

/// U[ξ] ([O, C], read from U [O, 36, C]) as the right operand: transposed (`[C, O]`) or not.
fn weights(u: &[f32], xi: usize, c: usize, transposed: bool) -> Mat {
    let (row, col) = ((POSITIONS * c) as isize, 1);
    let (rs, cs) = if transposed { (col, row) } else { (row, col) };
    Mat {
        ptr: u[xi * c..].as_ptr(),
        rs,
        cs,
    }
}

/// The convolution y [N, O, H, W] of x [N, C, H, W] with w [O, C, 3, 3].
pub fn forward(g: &Tiles, x: &[f32], w: &[f32]) -> Vec<f32> {
    let (c, o) = (g.c, g.o);
    let u = weight_transform(o, c, w);
    let (plane_in, plane_out) = (c * g.h * g.w, o * g.h * g.w);
    let ranges = thread_ranges(g.n);
    // SAFETY: each range's outputs are written whole, block by block, by output_tiles.
    unsafe {
        par_filled_with(
            g.n * plane_out,
            block_len(g.n) * plane_out,
            || Scratch::new(g),
            |s, r, y_range| {
                let y_range = assume_init(poisoned_in_debug(y_range));
                for (first, b) in blocks(g, ranges[r].clone()) {
                    let t = b.t();
                    Padded::input(&b).fill(&b, c, &x[first * plane_in..][..b.n * plane_in], &mut s.xp);
                    transform::input_tiles(&b, &s.xp, &mut s.tmp, &mut s.v);
                    for xi in 0..POSITIONS {
                        // m[ξ] = V[ξ] U[ξ]^T: [T, C] x [C, O].
                        matmul(
                            &mut s.m[xi * t * o..][..t * o],
                            false,
                            t,
                            o,
                            c,
                            Mat::row_major(s.v[xi * t * c..].as_ptr(), c),
                            weights(&u, xi, c, true),
                        );
                    }
                    let start = first - ranges[r].start;
                    transform::output_tiles(&b, &s.m, &mut s.tmp, &mut s.yp);
                    let y = &mut y_range[start * plane_out..][..b.n * plane_out];
                    Padded::output(&b).crop(&b, o, &s.yp, y);
                }
            },
        )
    }
}

/// (dx, dw) of the convolution, given dy; dx only when `need_x`.
pub fn backward(g: &Tiles, x: &[f32], w: &[f32], dy: &[f32], need_x: bool) -> (Vec<f32>, Vec<f32>) {
    let (c, o) = (g.c, g.o);
    let u = weight_transform(o, c, w);
    let (plane_in, plane_out) = (c * g.h * g.w, o * g.h * g.w);
    let ranges = thread_ranges(g.n);
    // One range of samples: its partial dU [36, O, C], and its dx when given somewhere to put it.
    let range = |r: usize, mut dx: Option<&mut [f32]>| -> Reused {
        let mut s = Scratch::new(g);
        // The input gradient gathers in a padded buffer of its own: the input's keeps its zeros.
        let mut dxp = Reused::any(if dx.is_some() { s.xp.len() } else { 0 });
        let mut du = Reused::any(POSITIONS * o * c);
        for (i, (first, b)) in blocks(g, ranges[r].clone()).enumerate() {
            let t = b.t();
            Padded::input(&b).fill(&b, c, &x[first * plane_in..][..b.n * plane_in], &mut s.xp);
            transform::input_tiles(&b, &s.xp, &mut s.tmp, &mut s.v);
            Padded::output(&b).fill(&b, o, &dy[first * plane_out..][..b.n * plane_out], &mut s.yp);
            transform::output_grad_tiles(&b, &s.yp, &mut s.tmp, &mut s.m);
            for xi in 0..POSITIONS {
                // dU[ξ] += D[ξ]^T V[ξ]: [O, T] x [T, C].
                // SAFETY: the shapes are as the views say.
                unsafe {
                    matmul(
                        &mut du[xi * o * c..][..o * c],
                        i > 0,
                        o,
                        c,
                        t,
                        Mat::transposed(s.m[xi * t * o..].as_ptr(), o),
                        Mat::row_major(s.v[xi * t * c..].as_ptr(), c),
                    )
                };
            }
            if let Some(dx) = dx.as_deref_mut() {
                // dV[ξ] = D[ξ] U[ξ]: [T, O] x [O, C], into V's buffer.
                for xi in 0..POSITIONS {
                    // SAFETY: as above.
                    unsafe {
                        matmul(
                            &mut s.v[xi * t * c..][..t * c],
                            false,
                            t,
                            c,
                            o,
                            Mat::row_major(s.m[xi * t * o..].as_ptr(), o),
                            weights(&u, xi, c, false),
                        )
                    };
                }
                let p = Padded::input(&b);
                let dxp = &mut dxp[..p.len(b.n, c)];
                dxp.fill(0.0);
                transform::input_grad_tiles(&b, &s.v, &mut s.tmp, dxp);
                let start = first - ranges[r].start;
                p.crop(&b, c, dxp, &mut dx[start * plane_in..][..b.n * plane_in]);
            }
        }
        du
    };
    let partial = std::sync::Mutex::new(Vec::new());
    let dx = if need_x {
        // SAFETY: each range's dx is written whole, block by block, by crop.
        unsafe {
            par_filled(g.n * plane_in, block_len(g.n) * plane_in, |r, dx_range| {
                let du = range(r, Some(assume_init(poisoned_in_debug(dx_range))));
                partial.lock().expect("no thread panicked").push((r, du));
            })
        }
    } else {
        let all: Vec<(usize, Reused)> = (0..ranges.len()).into_par_iter().map(|r| (r, range(r, None))).collect();
        *partial.lock().expect("no thread panicked") = all;
        Vec::new()
    };
    let mut partial = partial.into_inner().expect("no thread panicked");
    // Summed in range order, so that a step gives the same dW however the threads ran.
    partial.sort_by_key(|(r, _)| *r);
    let parts: Vec<Reused> = partial.into_iter().map(|(_, du)| du).collect();
    (dx, weight_grad_transform(o, c, &parts))
}

/// In debug builds, fills fresh output memory with NaN first, so that a value the transforms
/// forgot to write shows in the tests; in release builds, nothing.
fn poisoned_in_debug(chunk: &mut [MaybeUninit<f32>]) -> &mut [MaybeUninit<f32>] {
    if cfg!(debug_assertions) {
        chunk.iter_mut().for_each(|v| {
            v.write(f32::NAN);
        });
    }
    chunk
}
