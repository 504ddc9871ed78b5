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

mod blocked;
mod by_position;
mod layout;
mod transform;

use std::mem::MaybeUninit;

use crate::ops::cpu::blocks::block_len;
use crate::ops::cpu::matmul::Mat;
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
    pub fn per_map(&self) -> usize {
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

/// Scratch for one thread's transforms of a block of samples.
struct Scratch {
    /// The block's input, padded, channels last.
    xp: Reused,
    /// The block's output or its gradient, channels last, in whole tiles.
    yp: Reused,
    /// Half-transformed tiles.
    tmp: Reused,
}

impl Scratch {
    /// For blocks of up to `most` samples.
    fn new(g: &Tiles, most: usize) -> Self {
        // All written before they are read (the padding by `Padded::fill`).
        Self {
            xp: Reused::any(Padded::input(g).len(most, g.c)),
            yp: Reused::any(Padded::output(g).len(most, g.o)),
            tmp: Reused::any(36 * g.c.max(g.o)),
        }
    }
}

/// The 36 planes of a [36, rows, cols] buffer.
fn planes(buf: &mut [f32], plane: usize) -> [&mut [f32]; POSITIONS] {
    transform::runs::<POSITIONS>(&mut buf[..POSITIONS * plane], plane)
}

/// `len` values from `from` of each plane.
fn part<'a>(planes: &'a mut [&mut [f32]; POSITIONS], from: usize, len: usize) -> [&'a mut [f32]; POSITIONS] {
    planes.each_mut().map(|p| &mut p[from..from + len])
}

/// `len` values from `from` of each plane of a [36, rows, cols] buffer, read only.
fn part_of(buf: &[f32], plane: usize, from: usize, len: usize) -> [&[f32]; POSITIONS] {
    std::array::from_fn(|xi| &buf[xi * plane + from..][..len])
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

/// Whether the products go position by position across threads over the whole batch
/// ([`by_position`]) rather than sample block by sample block within each thread ([`blocked`]):
/// for maps of few tiles, where a block's products are too thin to repay reading all of U,
/// and each thread's partial dU is as large as U (measured by `cargo run --release --example
/// conv3x3`, docs/speed.md).
fn split_by_position(g: &Tiles) -> bool {
    g.per_map() <= BY_POSITION_MAX_TILES
}

/// Tiles per map at or below which [`split_by_position`] holds (8x8 maps have 4).
const BY_POSITION_MAX_TILES: usize = 4;

/// The convolution y [N, O, H, W] of x [N, C, H, W] with w [O, C, 3, 3].
pub fn forward(g: &Tiles, x: &[f32], w: &[f32]) -> Vec<f32> {
    let u = weight_transform(g.o, g.c, w);
    if split_by_position(g) {
        by_position::forward(g, x, &u)
    } else {
        blocked::forward(g, x, &u)
    }
}

/// (dx, dw) of the convolution, given dy; dx only when `need_x`.
pub fn backward(g: &Tiles, x: &[f32], w: &[f32], dy: &[f32], need_x: bool) -> (Vec<f32>, Vec<f32>) {
    let u = weight_transform(g.o, g.c, w);
    let (dx, du) = if split_by_position(g) {
        by_position::backward(g, x, &u, dy, need_x)
    } else {
        blocked::backward(g, x, &u, dy, need_x)
    };
    (dx, weight_grad_transform(g.o, g.c, &du))
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
