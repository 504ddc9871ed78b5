//! The whole batch's tiles transformed first (each thread a range of samples), then the 36
//! products split across threads by position ξ, then the inverse transforms (by samples again).
//! For maps of few tiles: each product then has all the batch's tiles as rows, each thread reads
//! only its positions' part of U, and dU needs no per-thread partial sums.

use rayon::prelude::*;

use super::layout::Padded;
use super::transform::{input_grad_tiles, input_tiles, output_grad_tiles, output_tiles};
use super::{POSITIONS, Scratch, Tiles, part, part_of, planes, poisoned_in_debug, thread_ranges, weights};
use crate::ops::cpu::blocks::block_len;
use crate::ops::cpu::buffer::{assume_init, par_filled};
use crate::ops::cpu::matmul::{Mat, matmul};
use crate::ops::cpu::reused::Reused;

/// `[36, T, ch]` tiles of the whole batch, each thread's range of samples transformed by
/// `transform(block, scratch, its planes)` into its own rows of every plane.
fn transformed(
    g: &Tiles,
    ch: usize,
    transform: impl Fn(&Tiles, usize, &mut Scratch, [&mut [f32]; POSITIONS]) + Sync,
) -> Reused {
    let (t_all, per_map) = (g.t(), g.per_map());
    let mut buf = Reused::any(POSITIONS * t_all * ch);
    let ranges = thread_ranges(g.n);
    // Each plane cut at the ranges' bounds; range r gets piece r of every plane.
    let mut pieces: Vec<Vec<&mut [f32]>> = ranges.iter().map(|_| Vec::with_capacity(POSITIONS)).collect();
    for plane in planes(&mut buf, t_all * ch) {
        let mut rest = plane;
        for (r, range) in ranges.iter().enumerate() {
            let (piece, after) = rest.split_at_mut(range.len() * per_map * ch);
            pieces[r].push(piece);
            rest = after;
        }
    }
    pieces
        .into_par_iter()
        .zip(ranges.par_iter())
        .for_each(|(piece, range)| {
            let mut mine: [&mut [f32]; POSITIONS] = piece.try_into().expect("one piece per plane");
            let mut s = Scratch::new(g, range.len());
            let b = Tiles { n: range.len(), ..*g };
            transform(&b, range.start, &mut s, part(&mut mine, 0, b.t() * ch));
        });
    buf
}

/// V [36, T, C] of the whole batch's input x [N, C, H, W].
fn input_transformed(g: &Tiles, x: &[f32]) -> Reused {
    let plane_in = g.c * g.h * g.w;
    transformed(g, g.c, |b, first, s, planes| {
        Padded::input(b).fill(b, g.c, &x[first * plane_in..][..b.n * plane_in], &mut s.xp);
        input_tiles(b, &s.xp, &mut s.tmp, planes);
    })
}

/// y [N, O, H, W], given U [O, 36, C].
pub fn forward(g: &Tiles, x: &[f32], u: &[f32]) -> Vec<f32> {
    let (c, o, t) = (g.c, g.o, g.t());
    let plane_out = o * g.h * g.w;
    let v = input_transformed(g, x);
    // m[ξ] = V[ξ] U[ξ]^T: [T, C] x [C, O], positions across threads.
    let mut m = Reused::any(POSITIONS * t * o);
    m.par_chunks_mut(t * o).enumerate().for_each(|(xi, m)| {
        // SAFETY: the shapes are as the views say.
        unsafe {
            matmul(
                m,
                false,
                t,
                o,
                c,
                Mat::row_major(v[xi * t * c..].as_ptr(), c),
                weights(u, xi, c, true),
            )
        };
    });
    let ranges = thread_ranges(g.n);
    // SAFETY: each range's outputs are written whole by crop.
    unsafe {
        par_filled(g.n * plane_out, block_len(g.n) * plane_out, |r, y_range| {
            let y_range = assume_init(poisoned_in_debug(y_range));
            let range = ranges[r].clone();
            let b = Tiles { n: range.len(), ..*g };
            let mut s = Scratch::new(g, b.n);
            output_tiles(
                &b,
                part_of(&m, t * o, range.start * g.per_map() * o, b.t() * o),
                &mut s.tmp,
                &mut s.yp,
            );
            Padded::output(&b).crop(&b, o, &s.yp, y_range);
        })
    }
}

/// (dx, dU [36, O, C] as one part), given U and dy; dx only when `need_x`.
pub fn backward(g: &Tiles, x: &[f32], u: &[f32], dy: &[f32], need_x: bool) -> (Vec<f32>, Vec<Reused>) {
    let (c, o, t) = (g.c, g.o, g.t());
    let (plane_in, plane_out) = (c * g.h * g.w, o * g.h * g.w);
    let mut v = input_transformed(g, x);
    let d = transformed(g, o, |b, first, s, planes| {
        Padded::output(b).fill(b, o, &dy[first * plane_out..][..b.n * plane_out], &mut s.yp);
        output_grad_tiles(b, &s.yp, &mut s.tmp, planes);
    });
    // dU[ξ] = D[ξ]^T V[ξ]: [O, T] x [T, C], positions across threads.
    let mut du = Reused::any(POSITIONS * o * c);
    du.par_chunks_mut(o * c).enumerate().for_each(|(xi, du)| {
        // SAFETY: the shapes are as the views say.
        unsafe {
            matmul(
                du,
                false,
                o,
                c,
                t,
                Mat::transposed(d[xi * t * o..].as_ptr(), o),
                Mat::row_major(v[xi * t * c..].as_ptr(), c),
            )
        };
    });
    if !need_x {
        return (Vec::new(), vec![du]);
    }
    // dV[ξ] = D[ξ] U[ξ]: [T, O] x [O, C], into V's buffer.
    v.par_chunks_mut(t * c).enumerate().for_each(|(xi, dv)| {
        // SAFETY: as above.
        unsafe {
            matmul(
                dv,
                false,
                t,
                c,
                o,
                Mat::row_major(d[xi * t * o..].as_ptr(), o),
                weights(u, xi, c, false),
            )
        };
    });
    let ranges = thread_ranges(g.n);
    // SAFETY: each range's dx is written whole by crop.
    let dx = unsafe {
        par_filled(g.n * plane_in, block_len(g.n) * plane_in, |r, dx_range| {
            let dx_range = assume_init(poisoned_in_debug(dx_range));
            let range = ranges[r].clone();
            let b = Tiles { n: range.len(), ..*g };
            let p = Padded::input(&b);
            let mut dxp = Reused::zeroed(p.len(b.n, c));
            let mut s = Scratch::new(g, 0);
            input_grad_tiles(
                &b,
                part_of(&v, t * c, range.start * g.per_map() * c, b.t() * c),
                &mut s.tmp,
                &mut dxp,
            );
            p.crop(&b, c, &dxp, dx_range);
        })
    };
    (dx, vec![du])
}
