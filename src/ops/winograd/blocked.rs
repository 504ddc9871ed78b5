//! Each thread takes a range of samples and works through it in blocks small enough that a
//! block's transformed tiles stay in the core's cache from the transforms to the 36 products.
//! For maps of many tiles. The weight gradient is summed per range; the ranges' sums are added
//! in order afterwards, so a step's result does not depend on which thread ran what.

use rayon::prelude::*;

use super::layout::Padded;
use super::transform::{input_grad_tiles, input_tiles, output_grad_tiles, output_tiles};
use super::{
    POSITIONS, Scratch, Tiles, block_samples, blocks, part_of, planes, poisoned_in_debug, thread_ranges, weights,
};
use crate::ops::cpu::blocks::block_len;
use crate::ops::cpu::buffer::{assume_init, par_filled, par_filled_with};
use crate::ops::cpu::matmul::{Mat, matmul};
use crate::ops::cpu::reused::Reused;

/// A thread's scratch, and the block's tiles: V (then the input gradient's) [36, T, C] and the
/// output's (or its gradient's) [36, T, O].
struct Work {
    s: Scratch,
    v: Reused,
    m: Reused,
}

impl Work {
    fn new(g: &Tiles) -> Self {
        let most = Tiles {
            n: block_samples(g),
            ..*g
        };
        Self {
            s: Scratch::new(g, most.n),
            v: Reused::any(POSITIONS * most.t() * g.c),
            m: Reused::any(POSITIONS * most.t() * g.o),
        }
    }
}

/// y [N, O, H, W], given U [O, 36, C].
pub fn forward(g: &Tiles, x: &[f32], u: &[f32]) -> Vec<f32> {
    let (c, o) = (g.c, g.o);
    let (plane_in, plane_out) = (c * g.h * g.w, o * g.h * g.w);
    let ranges = thread_ranges(g.n);
    // SAFETY: each range's outputs are written whole, block by block, by crop.
    unsafe {
        par_filled_with(
            g.n * plane_out,
            block_len(g.n) * plane_out,
            || Work::new(g),
            |work, r, y_range| {
                let y_range = assume_init(poisoned_in_debug(y_range));
                let Work { s, v, m } = work;
                for (first, b) in blocks(g, ranges[r].clone()) {
                    let t = b.t();
                    Padded::input(&b).fill(&b, c, &x[first * plane_in..][..b.n * plane_in], &mut s.xp);
                    input_tiles(&b, &s.xp, &mut s.tmp, planes(v, t * c));
                    for xi in 0..POSITIONS {
                        // m[ξ] = V[ξ] U[ξ]^T: [T, C] x [C, O].
                        matmul(
                            &mut m[xi * t * o..][..t * o],
                            false,
                            t,
                            o,
                            c,
                            Mat::row_major(v[xi * t * c..].as_ptr(), c),
                            weights(u, xi, c, true),
                        );
                    }
                    output_tiles(&b, part_of(m, t * o, 0, t * o), &mut s.tmp, &mut s.yp);
                    let start = first - ranges[r].start;
                    let y = &mut y_range[start * plane_out..][..b.n * plane_out];
                    Padded::output(&b).crop(&b, o, &s.yp, y);
                }
            },
        )
    }
}

/// (dx, the parts of dU [36, O, C] to add in order), given U and dy; dx only when `need_x`.
pub fn backward(g: &Tiles, x: &[f32], u: &[f32], dy: &[f32], need_x: bool) -> (Vec<f32>, Vec<Reused>) {
    let (c, o) = (g.c, g.o);
    let (plane_in, plane_out) = (c * g.h * g.w, o * g.h * g.w);
    let ranges = thread_ranges(g.n);
    // One range of samples: its partial dU, and its dx when given somewhere to put it.
    let range = |r: usize, mut dx: Option<&mut [f32]>| -> Reused {
        let Work { mut s, mut v, mut m } = Work::new(g);
        // The input gradient gathers in a padded buffer of its own: the input's keeps its zeros.
        let mut dxp = Reused::any(if dx.is_some() { s.xp.len() } else { 0 });
        let mut du = Reused::any(POSITIONS * o * c);
        for (i, (first, b)) in blocks(g, ranges[r].clone()).enumerate() {
            let t = b.t();
            Padded::input(&b).fill(&b, c, &x[first * plane_in..][..b.n * plane_in], &mut s.xp);
            input_tiles(&b, &s.xp, &mut s.tmp, planes(&mut v, t * c));
            Padded::output(&b).fill(&b, o, &dy[first * plane_out..][..b.n * plane_out], &mut s.yp);
            output_grad_tiles(&b, &s.yp, &mut s.tmp, planes(&mut m, t * o));
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
                        Mat::transposed(m[xi * t * o..].as_ptr(), o),
                        Mat::row_major(v[xi * t * c..].as_ptr(), c),
                    )
                };
            }
            if let Some(dx) = dx.as_deref_mut() {
                // dV[ξ] = D[ξ] U[ξ]: [T, O] x [O, C], into V's buffer.
                for xi in 0..POSITIONS {
                    // SAFETY: as above.
                    unsafe {
                        matmul(
                            &mut v[xi * t * c..][..t * c],
                            false,
                            t,
                            c,
                            o,
                            Mat::row_major(m[xi * t * o..].as_ptr(), o),
                            weights(u, xi, c, false),
                        )
                    };
                }
                let p = Padded::input(&b);
                let dxp = &mut dxp[..p.len(b.n, c)];
                dxp.fill(0.0);
                input_grad_tiles(&b, part_of(&v, t * c, 0, t * c), &mut s.tmp, dxp);
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
    // In range order, so that a step gives the same dW however the threads ran.
    partial.sort_by_key(|(r, _)| *r);
    (dx, partial.into_iter().map(|(_, du)| du).collect())
}
