//! Winograd's F(2x2, 3x3): the 3x3, stride-1, padding-1 convolutions of the ResNets with 2.25x
//! fewer multiplications than im2col, forward and backward (Lavin & Gray, "Fast Algorithms for
//! Convolutional Neural Networks", 2016).
//!
//! The output is cut into 2x2 tiles; tile t reads a 4x4 input patch d_t (overlapping its
//! neighbours by two pixels). With the constant matrices B (4x4), G (4x3) and A (4x2),
//!
//!   forward   y_t        = A^T [ sum_c U[o,c] . V[c,t] ] A     U = G w G^T,  V = B^T d_t B
//!   backward  dU[o,c]    = sum_t D[o,t] . V[c,t]               D = A dy_t A^T
//!             dw         = G^T dU G
//!             dd_t[c]    = B [ sum_o U[o,c] . D[o,t] ] B^T     added back where the patches overlap
//!
//! where `.` is the element-wise product of 4x4 tiles. Taken one of the 16 positions ξ of a
//! tile at a time, each sum is a matrix product: 16 products of [O, C] x [C, T] (forward),
//! [O, T] x [T, C] (weight gradient) and [C, O] x [O, T] (input gradient), T = N x tiles per map.
//! The backward pass differentiates the forward's algebra exactly, so all three are the same
//! function as the convolution up to rounding. The transforms are additions (and halvings)
//! vectorised across a row of tiles; the products are gemm's. Layouts: U [16, O, C],
//! V and the input gradient's tiles [16, C, T], the output's and dy's tiles [16, O, T].
//!
//! The batch is cut into one range of samples per thread, and each range into blocks small
//! enough that a block's transformed tiles stay in the core's cache from the transform to the
//! products (T above is then a block's tiles). The weight gradient is summed per range and the
//! ranges' sums added in order, so a step's result does not depend on which thread ran what.

use multiversion::multiversion;
use rayon::prelude::*;

use std::mem::MaybeUninit;

use crate::ops::cpu::blocks::{add_vectors, block_len};
use crate::ops::cpu::buffer::{assume_init, par_filled, par_filled_with};
use crate::ops::cpu::matmul::{Mat, matmul};

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
    /// Tile rows and columns per map (a map of odd size ends in a half-used tile).
    fn th(&self) -> usize {
        self.h.div_ceil(2)
    }
    fn tw(&self) -> usize {
        self.w.div_ceil(2)
    }
    /// Tiles of one map.
    fn per_map(&self) -> usize {
        self.th() * self.tw()
    }
    /// Tiles of the batch: the columns of the products.
    fn t(&self) -> usize {
        self.n * self.per_map()
    }
}

/// U [16, O, C] = G w G^T for every (o, c), w [O, C, 3, 3].
pub fn weight_transform(o: usize, c: usize, w: &[f32]) -> Vec<f32> {
    let mut u = vec![0f32; 16 * o * c];
    for oc in 0..o * c {
        let g = &w[oc * 9..][..9];
        // Rows first: (G g) is 4x3, then its columns: (G g) G^T is 4x4.
        let mut gg = [[0f32; 3]; 4];
        for k in 0..3 {
            let (a, b, d) = (g[k], g[3 + k], g[6 + k]);
            gg[0][k] = a;
            gg[1][k] = 0.5 * (a + b + d);
            gg[2][k] = 0.5 * (a - b + d);
            gg[3][k] = d;
        }
        for (i, row) in gg.iter().enumerate() {
            let [a, b, d] = *row;
            let out = [a, 0.5 * (a + b + d), 0.5 * (a - b + d), d];
            for (j, v) in out.into_iter().enumerate() {
                u[(4 * i + j) * o * c + oc] = v;
            }
        }
    }
    u
}

/// dw [O, C, 3, 3] = G^T dU G for every (o, c), dU [16, O, C].
pub fn weight_grad_transform(o: usize, c: usize, du: &[f32]) -> Vec<f32> {
    // Along one axis: s_r = sum_i G[i][r] u_i.
    let back = |u: [f32; 4]| {
        [
            u[0] + 0.5 * (u[1] + u[2]),
            0.5 * (u[1] - u[2]),
            0.5 * (u[1] + u[2]) + u[3],
        ]
    };
    let mut dw = vec![0f32; o * c * 9];
    for oc in 0..o * c {
        let m = |xi: usize| du[xi * o * c + oc];
        let rows: [[f32; 3]; 4] = std::array::from_fn(|i| back([m(4 * i), m(4 * i + 1), m(4 * i + 2), m(4 * i + 3)]));
        for k in 0..3 {
            let col = back([rows[0][k], rows[1][k], rows[2][k], rows[3][k]]);
            for (r, v) in col.into_iter().enumerate() {
                dw[oc * 9 + 3 * r + k] = v;
            }
        }
    }
    dw
}

/// A map's rows split into even and odd columns, with one column of padding on the left:
/// `even[r][m]` = x[r - 1][2m - 1], `odd[r][m]` = x[r - 1][2m] (zero outside the map), for padded
/// rows r in 0..2 TH + 2 and m in 0..=TW. Tile (ty, tx) reads padded rows 2 ty..2 ty + 4 and, in
/// each, even[tx], odd[tx], even[tx + 1], odd[tx + 1]: contiguous runs across a row of tiles.
struct SplitRows {
    width: usize,
    even: Vec<f32>,
    odd: Vec<f32>,
    /// Room for one row of tiles half-way through a transform: 16 x width.
    scratch: Vec<f32>,
}

impl SplitRows {
    fn zeros(g: &Tiles) -> Self {
        let (rows, width) = (2 * g.th() + 2, g.tw() + 1);
        Self {
            width,
            even: vec![0.0; rows * width],
            odd: vec![0.0; rows * width],
            scratch: vec![0.0; 16 * width],
        }
    }

    /// Fills the padded rows from a map (the padding stays zero).
    fn fill(&mut self, g: &Tiles, plane: &[f32]) {
        for y in 0..g.h {
            let row = &plane[y * g.w..][..g.w];
            let (even, odd) = self.row_mut(y + 1);
            for (m, pair) in row.chunks_exact(2).enumerate() {
                odd[m] = pair[0];
                even[m + 1] = pair[1];
            }
            if g.w % 2 == 1 {
                odd[g.w / 2] = row[g.w - 1];
            }
        }
    }

    /// Zeroes every value.
    fn clear(&mut self) {
        self.even.fill(0.0);
        self.odd.fill(0.0);
    }

    fn row(&self, r: usize) -> (&[f32], &[f32]) {
        (
            &self.even[r * self.width..][..self.width],
            &self.odd[r * self.width..][..self.width],
        )
    }

    fn row_mut(&mut self, r: usize) -> (&mut [f32], &mut [f32]) {
        (
            &mut self.even[r * self.width..][..self.width],
            &mut self.odd[r * self.width..][..self.width],
        )
    }

    /// The map back from padded rows: x[y][2m] = odd[m], x[y][2m + 1] = even[m + 1].
    fn write_map(&self, g: &Tiles, plane: &mut [f32]) {
        for y in 0..g.h {
            let (even, odd) = self.row(y + 1);
            let row = &mut plane[y * g.w..][..g.w];
            let mut pairs = row.chunks_exact_mut(2);
            for (m, pair) in (&mut pairs).enumerate() {
                pair[0] = odd[m];
                pair[1] = even[m + 1];
            }
            if let [last] = pairs.into_remainder() {
                *last = odd[g.w / 2];
            }
        }
    }
}

/// One map's tiles, B^T d B, into out[ξ][ty TW + tx].
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma", "aarch64+neon"))]
fn input_tiles(g: &Tiles, rows: &mut SplitRows, out: &mut [&mut [f32]; 16]) {
    let (tw, w1) = (g.tw(), g.tw() + 1);
    let mut scratch = std::mem::take(&mut rows.scratch);
    let (tre, tro) = scratch[..8 * w1].split_at_mut(4 * w1);
    for ty in 0..g.th() {
        // B^T down the columns: t0 = d0 - d2, t1 = d1 + d2, t2 = d2 - d1, t3 = d1 - d3, for the
        // even and the odd columns alike.
        for (parity, t) in [(0, &mut *tre), (1, &mut *tro)] {
            let half = |r: usize| {
                let (even, odd) = rows.row(2 * ty + r);
                if parity == 0 { even } else { odd }
            };
            let (t0, rest) = t.split_at_mut(w1);
            let (t1, rest) = rest.split_at_mut(w1);
            let (t2, t3) = rest.split_at_mut(w1);
            let (d0, d1, d2, d3) = (&half(0)[..w1], &half(1)[..w1], &half(2)[..w1], &half(3)[..w1]);
            let (t0, t1, t2, t3) = (&mut t0[..w1], &mut t1[..w1], &mut t2[..w1], &mut t3[..w1]);
            for m in 0..w1 {
                t0[m] = d0[m] - d2[m];
                t1[m] = d1[m] + d2[m];
                t2[m] = d2[m] - d1[m];
                t3[m] = d1[m] - d3[m];
            }
        }
        // ... then B along each row: columns k0 - k2, k1 + k2, k2 - k1, k1 - k3.
        for i in 0..4 {
            let (e0, e1) = (&tre[i * w1..][..tw], &tre[i * w1 + 1..][..tw]);
            let (od0, od1) = (&tro[i * w1..][..tw], &tro[i * w1 + 1..][..tw]);
            let base = ty * tw;
            let [o0, o1, o2, o3] = out
                .get_disjoint_mut([4 * i, 4 * i + 1, 4 * i + 2, 4 * i + 3])
                .expect("distinct");
            let (o0, o1, o2, o3) = (
                &mut o0[base..][..tw],
                &mut o1[base..][..tw],
                &mut o2[base..][..tw],
                &mut o3[base..][..tw],
            );
            for tx in 0..tw {
                o0[tx] = e0[tx] - e1[tx];
                o1[tx] = od0[tx] + e1[tx];
                o2[tx] = e1[tx] - od0[tx];
                o3[tx] = od0[tx] - od1[tx];
            }
        }
    }
    rows.scratch = scratch;
}

/// One map from its tiles: A^T m A, the 2x2 outputs of each tile (cut at the map's edge).
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma", "aarch64+neon"))]
fn output_tiles(g: &Tiles, m: &[&[f32]; 16], y: &mut [f32]) {
    let tw = g.tw();
    let mut q = vec![0f32; 4 * tw];
    for ty in 0..g.th() {
        let base = ty * tw;
        let (q00, rest) = q.split_at_mut(tw);
        let (q01, rest) = rest.split_at_mut(tw);
        let (q10, q11) = rest.split_at_mut(tw);
        let (q00, q01, q10, q11) = (&mut q00[..tw], &mut q01[..tw], &mut q10[..tw], &mut q11[..tw]);
        // A^T along each row (r0 = m0 + m1 + m2, r1 = m1 - m2 - m3), then down the columns:
        // rows 0, 1, 2 add into the top outputs, rows 1, -2, -3 into the bottom ones.
        for i in 0..4 {
            let (a, b, c, d) = (
                &m[4 * i][base..][..tw],
                &m[4 * i + 1][base..][..tw],
                &m[4 * i + 2][base..][..tw],
                &m[4 * i + 3][base..][..tw],
            );
            let (top, bottom) = match i {
                0 => (1.0, 0.0),
                1 => (1.0, 1.0),
                2 => (1.0, -1.0),
                _ => (0.0, -1.0),
            };
            for tx in 0..tw {
                let (r0, r1) = (a[tx] + b[tx] + c[tx], b[tx] - c[tx] - d[tx]);
                if i == 0 {
                    q00[tx] = r0;
                    q01[tx] = r1;
                    q10[tx] = 0.0;
                    q11[tx] = 0.0;
                } else {
                    q00[tx] += top * r0;
                    q01[tx] += top * r1;
                    q10[tx] += bottom * r0;
                    q11[tx] += bottom * r1;
                }
            }
        }
        for (dy, (left, right)) in [(0, (&*q00, &*q01)), (1, (&*q10, &*q11))] {
            let yy = 2 * ty + dy;
            if yy >= g.h {
                continue;
            }
            let row = &mut y[yy * g.w..][..g.w];
            let mut pairs = row.chunks_exact_mut(2);
            for (tx, pair) in (&mut pairs).enumerate() {
                pair[0] = left[tx];
                pair[1] = right[tx];
            }
            if let [last] = pairs.into_remainder() {
                *last = left[tw - 1];
            }
        }
    }
}

#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma", "aarch64+neon"))]
fn output_grad_tiles(g: &Tiles, dy: &[f32], out: &mut [&mut [f32]; 16]) {
    let tw = g.tw();
    // Two rows of dy split into even and odd columns (zero past the map's edge).
    let mut split = vec![0f32; 4 * tw];
    for ty in 0..g.th() {
        let base = ty * tw;
        let (top, bottom) = split.split_at_mut(2 * tw);
        for (dy_row, half) in [(2 * ty, &mut *top), (2 * ty + 1, &mut *bottom)] {
            let (even, odd) = half.split_at_mut(tw);
            if dy_row >= g.h {
                even.fill(0.0);
                odd.fill(0.0);
                continue;
            }
            let row = &dy[dy_row * g.w..][..g.w];
            for (m, pair) in row.chunks_exact(2).enumerate() {
                even[m] = pair[0];
                odd[m] = pair[1];
            }
            if g.w % 2 == 1 {
                even[tw - 1] = row[g.w - 1];
                odd[tw - 1] = 0.0;
            }
        }
        let (te, to) = top.split_at(tw);
        let (be, bo) = bottom.split_at(tw);
        // A along each row (g0, g0 + g1, g0 - g1, -g1), then the same down the columns.
        for j in 0..4 {
            let along = |l: f32, r: f32| match j {
                0 => l,
                1 => l + r,
                2 => l - r,
                _ => -r,
            };
            let [o0, o1, o2, o3] = out.get_disjoint_mut([j, 4 + j, 8 + j, 12 + j]).expect("distinct");
            let (o0, o1, o2, o3) = (
                &mut o0[base..][..tw],
                &mut o1[base..][..tw],
                &mut o2[base..][..tw],
                &mut o3[base..][..tw],
            );
            for tx in 0..tw {
                let (t, b) = (along(te[tx], to[tx]), along(be[tx], bo[tx]));
                o0[tx] = t;
                o1[tx] = t + b;
                o2[tx] = t - b;
                o3[tx] = -b;
            }
        }
    }
}

#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma", "aarch64+neon"))]
fn input_grad_tiles(g: &Tiles, dv: &[&[f32]; 16], rows: &mut SplitRows) {
    let tw = g.tw();
    // s[i][k][tx]: B along row i of tile tx's gradient.
    let mut scratch = std::mem::take(&mut rows.scratch);
    let s = &mut scratch[..16 * tw];
    for ty in 0..g.th() {
        let base = ty * tw;
        for i in 0..4 {
            let u = |j: usize| &dv[4 * i + j][base..][..tw];
            let (u0, u1, u2, u3) = (u(0), u(1), u(2), u(3));
            let (s0, rest) = s[4 * i * tw..].split_at_mut(tw);
            let (s1, rest) = rest.split_at_mut(tw);
            let (s2, rest) = rest.split_at_mut(tw);
            let s3 = &mut rest[..tw];
            for tx in 0..tw {
                let (a, b, c, d) = (u0[tx], u1[tx], u2[tx], u3[tx]);
                s0[tx] = a;
                s1[tx] = b - c + d;
                s2[tx] = -a + b + c;
                s3[tx] = -d;
            }
        }
        // B down the columns, into padded rows 2 ty + r: column k of the patch is even[tx],
        // odd[tx], even[tx + 1], odd[tx + 1] for k = 0..4.
        for r in 0..4 {
            let (even, odd) = rows.row_mut(2 * ty + r);
            for k in 0..4 {
                let col = |i: usize| &s[(4 * i + k) * tw..][..tw];
                let (a, b, c, d) = (col(0), col(1), col(2), col(3));
                let dst = match k {
                    0 => &mut even[..tw],
                    1 => &mut odd[..tw],
                    2 => &mut even[1..][..tw],
                    _ => &mut odd[1..][..tw],
                };
                match r {
                    0 => dst.iter_mut().zip(a).for_each(|(o, a)| *o += a),
                    1 => {
                        for tx in 0..tw {
                            dst[tx] += b[tx] - c[tx] + d[tx];
                        }
                    }
                    2 => {
                        for tx in 0..tw {
                            dst[tx] += -a[tx] + b[tx] + c[tx];
                        }
                    }
                    _ => dst.iter_mut().zip(d).for_each(|(o, d)| *o -= d),
                }
            }
        }
    }
    rows.scratch = scratch;
}

/// The transforms of one block of samples, on one thread, into buffers the caller keeps.
/// `g` is the block's sizes (g.n its samples); tile t of a product's columns is tile t of the
/// block.
mod block {
    use super::*;

    /// v [16, C, T] = B^T d_t B for every channel and tile of x [n, C, H, W].
    pub fn input_transform(g: &Tiles, x: &[f32], rows: &mut SplitRows, v: &mut [f32]) {
        let (t, per_map, plane) = (g.t(), g.per_map(), g.h * g.w);
        for nc in 0..g.n * g.c {
            let (n, c) = (nc / g.c, nc % g.c);
            rows.fill(g, &x[nc * plane..][..plane]);
            let mut out = rows_of(v, g.c, c, t, n * per_map, per_map);
            input_tiles(g, rows, &mut out);
        }
    }

    /// d [16, O, T] = A dy_t A^T for every output channel and tile of dy [n, O, H, W].
    pub fn output_grad_transform(g: &Tiles, dy: &[f32], d: &mut [f32]) {
        let (t, per_map, plane) = (g.t(), g.per_map(), g.h * g.w);
        for no in 0..g.n * g.o {
            let (n, o) = (no / g.o, no % g.o);
            let mut out = rows_of(d, g.o, o, t, n * per_map, per_map);
            output_grad_tiles(g, &dy[no * plane..][..plane], &mut out);
        }
    }

    /// y [n, O, H, W] = A^T m_t A from m [16, O, T].
    pub fn output_transform(g: &Tiles, m: &[f32], y: &mut [f32]) {
        let (t, per_map, plane) = (g.t(), g.per_map(), g.h * g.w);
        for no in 0..g.n * g.o {
            let (n, o) = (no / g.o, no % g.o);
            let tiles: [&[f32]; 16] = std::array::from_fn(|xi| &m[(xi * g.o + o) * t + n * per_map..][..per_map]);
            output_tiles(g, &tiles, &mut y[no * plane..][..plane]);
        }
    }

    /// dx [n, C, H, W] from dv [16, C, T]: B dv_t B^T, added back where the patches overlap.
    pub fn input_grad_transform(g: &Tiles, dv: &[f32], rows: &mut SplitRows, dx: &mut [f32]) {
        let (t, per_map, plane) = (g.t(), g.per_map(), g.h * g.w);
        for nc in 0..g.n * g.c {
            let (n, c) = (nc / g.c, nc % g.c);
            let tiles: [&[f32]; 16] = std::array::from_fn(|xi| &dv[(xi * g.c + c) * t + n * per_map..][..per_map]);
            rows.clear();
            input_grad_tiles(g, &tiles, rows);
            rows.write_map(g, &mut dx[nc * plane..][..plane]);
        }
    }

    /// The 16 runs `[first, first + len)` of row `row` of a [16, rows, t] buffer.
    fn rows_of(buf: &mut [f32], rows: usize, row: usize, t: usize, first: usize, len: usize) -> [&mut [f32]; 16] {
        let mut parts = buf.chunks_exact_mut(rows * t);
        std::array::from_fn(|_| {
            let xi_rows = parts.next().expect("16 positions");
            &mut xi_rows[row * t + first..][..len]
        })
    }
}

/// Samples per block: enough tiles for the products to run at speed, few enough that a block's
/// transformed tiles (16 x channels x tiles) stay in the core's cache between the transform
/// and the product.
fn block_samples(g: &Tiles) -> usize {
    const TILE_VALUES: usize = 1 << 14;
    (TILE_VALUES / g.c.max(g.o) / g.per_map()).clamp(1, g.n.max(1))
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

/// The convolution y [N, O, H, W] of x [N, C, H, W] with w [O, C, 3, 3].
pub fn forward(g: &Tiles, x: &[f32], w: &[f32]) -> Vec<f32> {
    let (c, o) = (g.c, g.o);
    let u = weight_transform(o, c, w);
    let (plane_in, plane_out) = (c * g.h * g.w, o * g.h * g.w);
    let most = Tiles {
        n: block_samples(g),
        ..*g
    }
    .t();
    let ranges = thread_ranges(g.n);
    // SAFETY: each range's outputs are written whole, block by block, by output_transform.
    unsafe {
        par_filled_with(
            g.n * plane_out,
            block_len(g.n) * plane_out,
            || {
                (
                    SplitRows::zeros(g),
                    vec![0f32; 16 * c * most],
                    vec![0f32; 16 * o * most],
                )
            },
            |(rows, v, m), r, y_range| {
                let y_range = assume_init(poisoned_in_debug(y_range));
                for (first, b) in blocks(g, ranges[r].clone()) {
                    let t = b.t();
                    let start = first - ranges[r].start;
                    block::input_transform(&b, &x[first * plane_in..][..b.n * plane_in], rows, v);
                    for xi in 0..16 {
                        // m[ξ] = U[ξ] v[ξ]: [O, C] x [C, T].
                        matmul(
                            &mut m[xi * o * t..][..o * t],
                            false,
                            o,
                            t,
                            c,
                            Mat::row_major(u[xi * o * c..].as_ptr(), c),
                            Mat::row_major(v[xi * c * t..].as_ptr(), t),
                        );
                    }
                    block::output_transform(&b, m, &mut y_range[start * plane_out..][..b.n * plane_out]);
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
    let most = Tiles {
        n: block_samples(g),
        ..*g
    }
    .t();
    let ranges = thread_ranges(g.n);
    // One range of samples: its partial dU [16, O, C], and its dx when given somewhere to put it.
    let range = |r: usize, mut dx: Option<&mut [f32]>| -> Vec<f32> {
        let mut rows = SplitRows::zeros(g);
        let (mut v, mut d) = (vec![0f32; 16 * c * most], vec![0f32; 16 * o * most]);
        let mut du = vec![0f32; 16 * o * c];
        for (i, (first, b)) in blocks(g, ranges[r].clone()).enumerate() {
            let t = b.t();
            block::input_transform(&b, &x[first * plane_in..][..b.n * plane_in], &mut rows, &mut v);
            block::output_grad_transform(&b, &dy[first * plane_out..][..b.n * plane_out], &mut d);
            for xi in 0..16 {
                // dU[ξ] += d[ξ] v[ξ]^T: [O, T] x [T, C].
                // SAFETY: the shapes are as the views say.
                unsafe {
                    matmul(
                        &mut du[xi * o * c..][..o * c],
                        i > 0,
                        o,
                        c,
                        t,
                        Mat::row_major(d[xi * o * t..].as_ptr(), t),
                        Mat::transposed(v[xi * c * t..].as_ptr(), t),
                    )
                };
            }
            if let Some(dx) = dx.as_deref_mut() {
                // dv[ξ] = U[ξ]^T d[ξ]: [C, O] x [O, T], into v's buffer.
                for xi in 0..16 {
                    // SAFETY: as above.
                    unsafe {
                        matmul(
                            &mut v[xi * c * t..][..c * t],
                            false,
                            c,
                            t,
                            o,
                            Mat::transposed(u[xi * o * c..].as_ptr(), c),
                            Mat::row_major(d[xi * o * t..].as_ptr(), t),
                        )
                    };
                }
                let start = first - ranges[r].start;
                block::input_grad_transform(&b, &v, &mut rows, &mut dx[start * plane_in..][..b.n * plane_in]);
            }
        }
        du
    };
    let partial = std::sync::Mutex::new(Vec::new());
    let dx = if need_x {
        // SAFETY: each range's dx is written whole, block by block, by input_grad_transform.
        unsafe {
            par_filled(g.n * plane_in, block_len(g.n) * plane_in, |r, dx_range| {
                let du = range(r, Some(assume_init(poisoned_in_debug(dx_range))));
                partial.lock().expect("no thread panicked").push((r, du));
            })
        }
    } else {
        let all: Vec<(usize, Vec<f32>)> = (0..ranges.len()).into_par_iter().map(|r| (r, range(r, None))).collect();
        *partial.lock().expect("no thread panicked") = all;
        Vec::new()
    };
    let mut partial = partial.into_inner().expect("no thread panicked");
    // Summed in range order, so that a step gives the same dW however the threads ran.
    partial.sort_by_key(|(r, _)| *r);
    let du = partial
        .into_iter()
        .map(|(_, du)| du)
        .reduce(add_vectors)
        .unwrap_or_else(|| vec![0f32; 16 * o * c]);
    (dx, weight_grad_transform(o, c, &du))
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
