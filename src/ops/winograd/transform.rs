//! The transforms of F(4x4, 3x3), one 6x6 tile at a time, each value a run of channels.
//!
//! The matrices (Lavin & Gray, interpolation points 0, ±1, ±2 and ∞):
//!
//! ```text
//!        | 4  0 -5  0  1  0 |         | 1/4    0     0   |
//!        | 0 -4 -4  1  1  0 |         | -1/6  -1/6  -1/6 |        | 1  1  1  1  1  0 |
//!  B^T = | 0  4 -4 -1  1  0 |    G =  | -1/6   1/6  -1/6 |  A^T = | 0  1 -1  2 -2  0 |
//!        | 0 -2 -1  2  1  0 |         | 1/24  1/12  1/6  |        | 0  1  1  4  4  0 |
//!        | 0  2 -1 -2  1  0 |         | 1/24 -1/12  1/6  |        | 0  1 -1  8 -8  1 |
//!        | 0  4  0 -5  0  1 |         | 0      0     1   |
//! ```
//!
//! Each 2-D transform is the 1-D one down the columns, then along the rows. The activations are
//! laid out channels-last inside the transforms ([samples, rows, columns, channels]), so a
//! pixel's channels are one contiguous run and every transform is vectorised across channels:
//! 44 to 352 of them in the ResNets, where a row of tiles of the late, small maps would give one
//! or two lanes.

use multiversion::multiversion;
use rayon::prelude::*;

use super::layout::Padded;
use super::{POSITIONS, Tiles};
use crate::ops::cpu::buffer::{assume_init, par_filled};
use crate::ops::cpu::lanes::LANES;
use crate::ops::cpu::reused::Reused;

/// B^T d.
#[inline(always)]
fn input_1d([d0, d1, d2, d3, d4, d5]: [f32; 6]) -> [f32; 6] {
    [
        4.0 * d0 - 5.0 * d2 + d4,
        -4.0 * (d1 + d2) + d3 + d4,
        4.0 * (d1 - d2) - d3 + d4,
        2.0 * (d3 - d1) - d2 + d4,
        2.0 * (d1 - d3) - d2 + d4,
        4.0 * d1 - 5.0 * d3 + d5,
    ]
}

/// B v: the transpose of [`input_1d`].
#[inline(always)]
fn input_grad_1d([v0, v1, v2, v3, v4, v5]: [f32; 6]) -> [f32; 6] {
    [
        4.0 * v0,
        4.0 * (v2 - v1 + v5) + 2.0 * (v4 - v3),
        -5.0 * v0 - 4.0 * (v1 + v2) - v3 - v4,
        v1 - v2 + 2.0 * (v3 - v4) - 5.0 * v5,
        v0 + v1 + v2 + v3 + v4,
        v5,
    ]
}

/// A^T m.
#[inline(always)]
fn output_1d([m0, m1, m2, m3, m4, m5]: [f32; 6]) -> [f32; 4] {
    let (p, q) = (m1 + m2, m1 - m2);
    let (r, s) = (m3 + m4, m3 - m4);
    [m0 + p + r, q + 2.0 * s, p + 4.0 * r, q + 8.0 * s + m5]
}

/// A g: the transpose of [`output_1d`].
#[inline(always)]
fn output_grad_1d([g0, g1, g2, g3]: [f32; 4]) -> [f32; 6] {
    let (e, o) = (g0 + g2, g1 + g3);
    let (e4, o2) = (g0 + 4.0 * g2, 2.0 * g1 + 8.0 * g3);
    [g0, e + o, e - o, e4 + o2, e4 - o2, g3]
}

/// G w.
#[inline(always)]
fn weight_1d([a, b, c]: [f32; 3]) -> [f32; 6] {
    let ac = a + c;
    [
        0.25 * a,
        -(ac + b) / 6.0,
        -(ac - b) / 6.0,
        a / 24.0 + b / 12.0 + c / 6.0,
        a / 24.0 - b / 12.0 + c / 6.0,
        c,
    ]
}

/// G^T u: the transpose of [`weight_1d`].
#[inline(always)]
fn weight_grad_1d([u0, u1, u2, u3, u4, u5]: [f32; 6]) -> [f32; 3] {
    [
        0.25 * u0 - (u1 + u2) / 6.0 + (u3 + u4) / 24.0,
        (u2 - u1) / 6.0 + (u3 - u4) / 12.0,
        (u3 + u4 - u1 - u2) / 6.0 + u5,
    ]
}

/// `out[m][l] = f(inp[0][l], ..)[m]` (or `+=` when `add`) for every lane l. The lanes go in
/// groups held in local arrays, so that the compiler keeps a group in vector registers without
/// having to prove the slices do not overlap.
#[inline(always)]
fn map_lanes<const K: usize, const M: usize>(
    inp: [&[f32]; K],
    out: [&mut [f32]; M],
    add: bool,
    f: impl Fn([f32; K]) -> [f32; M],
) {
    let n = out[0].len();
    let group = |x: &[[f32; LANES]; K]| -> [[f32; LANES]; M] {
        let mut y = [[0f32; LANES]; M];
        for l in 0..LANES {
            let r = f(std::array::from_fn(|k| x[k][l]));
            for m in 0..M {
                y[m][l] = r[m];
            }
        }
        y
    };
    let full = n - n % LANES;
    for at in (0..full).step_by(LANES) {
        // (Copied row by row: building the array with `from_fn` and `try_into` was not inlined
        // and went through memmove.)
        let mut x = [[0f32; LANES]; K];
        for k in 0..K {
            x[k].copy_from_slice(&inp[k][at..at + LANES]);
        }
        let y = group(&x);
        for m in 0..M {
            let o: &mut [f32; LANES] = (&mut out[m][at..at + LANES]).try_into().expect("a group");
            if add {
                o.iter_mut().zip(&y[m]).for_each(|(o, y)| *o += y);
            } else {
                *o = y[m];
            }
        }
    }
    if full < n && n >= LANES {
        // The last, partial group: the last LANES lanes, of which the first `done` are done
        // already (written again with the same values, or, when adding, skipped).
        let (at, done) = (n - LANES, LANES - (n - full));
        let mut x = [[0f32; LANES]; K];
        for k in 0..K {
            x[k].copy_from_slice(&inp[k][at..]);
        }
        let y = group(&x);
        for m in 0..M {
            let o: &mut [f32; LANES] = (&mut out[m][at..]).try_into().expect("a group");
            if add {
                for l in 0..LANES {
                    o[l] += if l >= done { y[m][l] } else { 0.0 };
                }
            } else {
                *o = y[m];
            }
        }
    } else if full < n {
        // Fewer lanes than a group: through zero-filled arrays.
        let x: [[f32; LANES]; K] = std::array::from_fn(|k| {
            let mut a = [0f32; LANES];
            a[..n].copy_from_slice(&inp[k][..n]);
            a
        });
        let y = group(&x);
        for m in 0..M {
            let o = &mut out[m][..n];
            if add {
                o.iter_mut().zip(&y[m]).for_each(|(o, y)| *o += y);
            } else {
                o.copy_from_slice(&y[m][..n]);
            }
        }
    }
}

/// A buffer cut into N runs of `len`.
pub(super) fn runs<const N: usize>(buf: &mut [f32], len: usize) -> [&mut [f32]; N] {
    let mut it = buf.chunks_exact_mut(len);
    std::array::from_fn(|_| it.next().expect("a buffer of N runs"))
}

/// `len` values from `start` of each of the runs at `idx`.
/// Every call passes an arithmetic progression (a tile's row or column, see [`line`]) of
/// indices below N, so they are distinct; checked in debug builds only, since the check's
/// pairwise comparisons cost more than the few vector operations each pick feeds.
#[inline(always)]
fn pick<'a, const N: usize, const M: usize>(
    runs: &'a mut [&mut [f32]; N],
    idx: [usize; M],
    start: usize,
    len: usize,
) -> [&'a mut [f32]; M] {
    debug_assert!(runs.get_disjoint_mut(idx).is_ok(), "distinct runs below N");
    assert!(idx.iter().all(|&i| i < N), "runs below N");
    // SAFETY: the indices are in bounds (asserted) and distinct (the callers' progressions).
    unsafe { runs.get_disjoint_unchecked_mut(idx) }.map(|r| &mut r[start..start + len])
}

/// The positions of a column (`step` 6) or a row (`step` 1) of a 6x6 tile.
fn line(first: usize, step: usize) -> [usize; 6] {
    std::array::from_fn(|i| first + i * step)
}

/// U [O, 36, C] = G w G^T for every (o, c), w [O, C, 3, 3], one output channel per task.
pub fn weight_transform(o: usize, c: usize, w: &[f32]) -> Reused {
    let mut u = Reused::any(o * POSITIONS * c);
    u.par_chunks_mut(POSITIONS * c)
        .zip(w.par_chunks(9 * c))
        .for_each(|(u, w)| weight_tiles(c, w, u));
    u
}

/// U [36, C] of one output channel from its kernels w [C, 3, 3].
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma", "aarch64+neon"))]
fn weight_tiles(c: usize, w: &[f32], u: &mut [f32]) {
    let mut buf = Reused::any(27 * c);
    let (taps, half) = buf.split_at_mut(9 * c);
    // The kernels' nine taps as nine runs across channels.
    for (ch, k) in w.chunks_exact(9).enumerate() {
        for (tap, &v) in k.iter().enumerate() {
            taps[tap * c + ch] = v;
        }
    }
    let taps: [&[f32]; 9] = std::array::from_fn(|tap| &taps[tap * c..][..c]);
    // G down each of the kernel's three columns: half[3 i + s], i in 0..6.
    let mut h = runs::<18>(half, c);
    for s in 0..3 {
        let out = pick(&mut h, std::array::from_fn(|i| 3 * i + s), 0, c);
        map_lanes([taps[s], taps[3 + s], taps[6 + s]], out, false, weight_1d);
    }
    let mut planes = runs::<36>(u, c);
    for i in 0..6 {
        let inp = [&*h[3 * i], &*h[3 * i + 1], &*h[3 * i + 2]];
        map_lanes(inp, pick(&mut planes, line(6 * i, 1), 0, c), false, weight_1d);
    }
}

/// dw [O, C, 3, 3] = G^T dU G for every (o, c), where dU [36, O, C] is the sum of `parts`,
/// added in their order. One output channel per task.
pub fn weight_grad_transform(o: usize, c: usize, parts: &[Reused]) -> Vec<f32> {
    // SAFETY: each output channel's 9 C values are written whole by weight_grad_tiles.
    unsafe {
        par_filled(o * c * 9, c * 9, |oo, dw| {
            weight_grad_tiles(o, c, oo, parts, assume_init(dw));
        })
    }
}

/// dw [C, 3, 3] of output channel `oo`.
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma", "aarch64+neon"))]
fn weight_grad_tiles(o: usize, c: usize, oo: usize, parts: &[Reused], dw: &mut [f32]) {
    let mut buf = Reused::any(63 * c);
    let (du, rest) = buf.split_at_mut(POSITIONS * c);
    let (half, taps) = rest.split_at_mut(18 * c);
    for (xi, run) in du.chunks_exact_mut(c).enumerate() {
        run.fill(0.0);
        for part in parts {
            run.iter_mut()
                .zip(&part[(xi * o + oo) * c..][..c])
                .for_each(|(s, v)| *s += v);
        }
    }
    let du: &[f32] = du;
    let plane = |xi: usize| &du[xi * c..][..c];
    // G^T down each column j: half[6 r + j], r in 0..3.
    let mut h = runs::<18>(half, c);
    for j in 0..6 {
        let inp = line(j, 6).map(plane);
        map_lanes(inp, pick(&mut h, [j, 6 + j, 12 + j], 0, c), false, weight_grad_1d);
    }
    let mut t = runs::<9>(taps, c);
    for r in 0..3 {
        let inp: [&[f32]; 6] = std::array::from_fn(|j| &*h[6 * r + j]);
        map_lanes(
            inp,
            pick(&mut t, [3 * r, 3 * r + 1, 3 * r + 2], 0, c),
            false,
            weight_grad_1d,
        );
    }
    for (ch, k) in dw.chunks_exact_mut(9).enumerate() {
        for (tap, v) in k.iter_mut().enumerate() {
            *v = t[tap][ch];
        }
    }
}

/// Where tile `t` (sample n, tile row ty, tile column tx) of a block starts in a padded map.
fn tile_origin(g: &Tiles, p: &Padded, t: usize, ch: usize) -> usize {
    let (n, ty, tx) = (t / g.per_map(), t % g.per_map() / g.tw(), t % g.tw());
    ((n * p.hp + 4 * ty) * p.wp + 4 * tx) * ch
}

/// V = B^T d B for every tile of the block's padded input xp: `planes[ξ]` is [T, C].
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma", "aarch64+neon"))]
pub fn input_tiles(g: &Tiles, xp: &[f32], tmp: &mut [f32], mut planes: [&mut [f32]; 36]) {
    let (c, t_all, p) = (g.c, g.t(), Padded::input(g));
    let mut tmp = runs::<36>(&mut tmp[..36 * c], c);
    for t in 0..t_all {
        let at = tile_origin(g, &p, t, c);
        let px = |r: usize, s: usize| &xp[at + (r * p.wp + s) * c..][..c];
        // Down column s: tmp[6 i + s].
        for s in 0..6 {
            let inp = std::array::from_fn(|r| px(r, s));
            map_lanes(inp, pick(&mut tmp, line(s, 6), 0, c), false, input_1d);
        }
        // Along row i: V[6 i + j].
        for i in 0..6 {
            let inp: [&[f32]; 6] = std::array::from_fn(|j| &*tmp[6 * i + j]);
            map_lanes(inp, pick(&mut planes, line(6 * i, 1), t * c, c), false, input_1d);
        }
    }
}

/// The block's output, channels last and padded to whole tiles (yp, [`Padded::output`]):
/// A^T m A, `m[ξ]` [T, O].
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma", "aarch64+neon"))]
pub fn output_tiles(g: &Tiles, m: [&[f32]; 36], tmp: &mut [f32], yp: &mut [f32]) {
    let (o, t_all, p) = (g.o, g.t(), Padded::output(g));
    let plane = |xi: usize, t: usize| &m[xi][t * o..][..o];
    let mut tmp = runs::<24>(&mut tmp[..24 * o], o);
    for t in 0..t_all {
        // Down column j: tmp[6 i + j], i in 0..4.
        for j in 0..6 {
            let inp = line(j, 6).map(|xi| plane(xi, t));
            map_lanes(inp, pick(&mut tmp, [j, 6 + j, 12 + j, 18 + j], 0, o), false, output_1d);
        }
        // Along row i: the tile's row i, four pixels side by side.
        let at = tile_origin(g, &p, t, o);
        for i in 0..4 {
            let inp: [&[f32]; 6] = std::array::from_fn(|j| &*tmp[6 * i + j]);
            let row = &mut yp[at + i * p.wp * o..][..4 * o];
            map_lanes(inp, runs::<4>(row, o), false, output_1d);
        }
    }
}

/// D = A dy A^T for every tile, from the block's output gradient padded to whole tiles, dyp:
/// `planes[ξ]` is [T, O].
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma", "aarch64+neon"))]
pub fn output_grad_tiles(g: &Tiles, dyp: &[f32], tmp: &mut [f32], mut planes: [&mut [f32]; 36]) {
    let (o, t_all, p) = (g.o, g.t(), Padded::output(g));
    let mut tmp = runs::<24>(&mut tmp[..24 * o], o);
    for t in 0..t_all {
        let at = tile_origin(g, &p, t, o);
        let px = |r: usize, s: usize| &dyp[at + (r * p.wp + s) * o..][..o];
        // Down column s: tmp[4 k + s], k in 0..6.
        for s in 0..4 {
            let inp = std::array::from_fn(|r| px(r, s));
            map_lanes(inp, pick(&mut tmp, line(s, 4), 0, o), false, output_grad_1d);
        }
        // Along row k: D[6 k + l].
        for k in 0..6 {
            let inp: [&[f32]; 4] = std::array::from_fn(|s| &*tmp[4 * k + s]);
            map_lanes(inp, pick(&mut planes, line(6 * k, 1), t * o, o), false, output_grad_1d);
        }
    }
}

/// Adds B dV B^T of every tile, `dv[ξ]` [T, C], into the block's padded input gradient dxp
/// (where patches overlap, their gradients add).
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma", "aarch64+neon"))]
pub fn input_grad_tiles(g: &Tiles, dv: [&[f32]; 36], tmp: &mut [f32], dxp: &mut [f32]) {
    let (c, t_all, p) = (g.c, g.t(), Padded::input(g));
    let plane = |xi: usize, t: usize| &dv[xi][t * c..][..c];
    let mut tmp = runs::<36>(&mut tmp[..36 * c], c);
    for t in 0..t_all {
        // Down column j: tmp[6 r + j].
        for j in 0..6 {
            let inp = line(j, 6).map(|xi| plane(xi, t));
            map_lanes(inp, pick(&mut tmp, line(j, 6), 0, c), false, input_grad_1d);
        }
        // Along row r: added into the patch's row r, six pixels side by side.
        let at = tile_origin(g, &p, t, c);
        for r in 0..6 {
            let inp: [&[f32]; 6] = std::array::from_fn(|j| &*tmp[6 * r + j]);
            let row = &mut dxp[at + r * p.wp * c..][..6 * c];
            map_lanes(inp, runs::<6>(row, c), true, input_grad_1d);
        }
    }
}
