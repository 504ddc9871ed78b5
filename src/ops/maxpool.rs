//! Max pooling on the CPU backend, as one operation with a hand-written backward.
//!
//! flex's max pooling computes every output with integer divisions and a NaN-aware scalar
//! comparison, and its backward is a scalar scatter, both slow enough to dominate a lenet step
//! (docs/speed.md). Here each (sample, channel) plane is pooled by one task: the window's maximum and
//! where it was (the first maximum, padding never chosen, as PyTorch), kept for the backward
//! pass, which adds each output's gradient to that place.

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Dispatch, Flex, backend_extension};
use burn::tensor::Tensor;
use rayon::prelude::*;

use crate::ops::cpu::flex_tensor::{contiguous, dims, tensor, values};

#[backend_extension(Flex, Autodiff)]
pub trait MaxPoolOps: burn::backend::Backend {
    /// Square windows: x [N, C, H, W] -> [N, C, OH, OW].
    fn max_pool2d_square(x: FloatTensor<Self>, kernel: usize, stride: usize, padding: usize) -> FloatTensor<Self>;
}

#[derive(Debug, Clone, Copy)]
struct Window {
    kernel: usize,
    stride: usize,
    padding: usize,
}

#[derive(Debug, Clone, Copy)]
struct Planes {
    count: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
}

impl Planes {
    fn of(x: &[usize], win: Window) -> Self {
        assert!(x.len() == 4, "max pooling: x {x:?} is not [N, C, H, W]");
        let out = |size: usize| (size + 2 * win.padding - win.kernel) / win.stride + 1;
        Self {
            count: x[0] * x[1],
            h: x[2],
            w: x[3],
            oh: out(x[2]),
            ow: out(x[3]),
        }
    }
}

/// Rows (or columns) of the input that window `o` covers.
fn span(o: usize, win: Window, size: usize) -> std::ops::Range<usize> {
    let start = (o * win.stride) as isize - win.padding as isize;
    let end = (start + win.kernel as isize).min(size as isize);
    start.max(0) as usize..end.max(0) as usize
}

/// The pooled values and, for each, the index of its maximum within its plane.
fn forward_values(p: Planes, win: Window, x: &[f32]) -> (Vec<f32>, Vec<u32>) {
    let plane_out = p.oh * p.ow;
    let mut out = vec![0f32; p.count * plane_out];
    let mut at = vec![0u32; p.count * plane_out];
    out.par_chunks_mut(plane_out)
        .zip(at.par_chunks_mut(plane_out))
        .enumerate()
        .for_each(|(plane, (out, at))| {
            let x = &x[plane * p.h * p.w..][..p.h * p.w];
            for oy in 0..p.oh {
                let rows = span(oy, win, p.h);
                for ox in 0..p.ow {
                    let cols = span(ox, win, p.w);
                    let (mut best, mut best_at) = (f32::NEG_INFINITY, rows.start * p.w + cols.start);
                    for iy in rows.clone() {
                        for ix in cols.clone() {
                            let v = x[iy * p.w + ix];
                            // A NaN is taken (and kept): it propagates, as in PyTorch.
                            if v > best || v.is_nan() && !best.is_nan() {
                                best = v;
                                best_at = iy * p.w + ix;
                            }
                        }
                    }
                    out[oy * p.ow + ox] = best;
                    at[oy * p.ow + ox] = best_at as u32;
                }
            }
        });
    (out, at)
}

fn backward_values(p: Planes, at: &[u32], dy: &[f32]) -> Vec<f32> {
    let plane_out = p.oh * p.ow;
    let mut dx = vec![0f32; p.count * p.h * p.w];
    dx.par_chunks_mut(p.h * p.w).enumerate().for_each(|(plane, dx)| {
        let (at, dy) = (
            &at[plane * plane_out..][..plane_out],
            &dy[plane * plane_out..][..plane_out],
        );
        for (&i, &g) in at.iter().zip(dy) {
            dx[i as usize] += g;
        }
    });
    dx
}

fn forward_flex(x: &FlexTensor, win: Window) -> (FlexTensor, Vec<u32>, Planes) {
    let shape = dims(x);
    let p = Planes::of(&shape, win);
    let x = contiguous(x);
    let (out, at) = forward_values(p, win, values(&x));
    (tensor(out, vec![shape[0], shape[1], p.oh, p.ow]), at, p)
}

impl MaxPoolOps for Flex {
    fn max_pool2d_square(x: FlexTensor, kernel: usize, stride: usize, padding: usize) -> FlexTensor {
        forward_flex(
            &x,
            Window {
                kernel,
                stride,
                padding,
            },
        )
        .0
    }
}

#[derive(Debug)]
struct MaxPoolBackward;

impl Backward<Flex, 1> for MaxPoolBackward {
    /// Where each output's maximum was, the sizes, and the input's shape.
    type State = (std::sync::Arc<Vec<u32>>, Planes, Vec<usize>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let dy = contiguous(&grads.consume::<Flex>(&ops.node));
        let (at, p, shape) = ops.state;
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, tensor(backward_values(p, &at, values(&dy)), shape));
        }
    }
}

impl<C: CheckpointStrategy> MaxPoolOps for Autodiff<Flex, C> {
    fn max_pool2d_square(x: FloatTensor<Self>, kernel: usize, stride: usize, padding: usize) -> FloatTensor<Self> {
        let prep = MaxPoolBackward.prepare::<C>([x.node()]).compute_bound().stateful();
        let shape = dims(x.primitive());
        let (out, at, p) = forward_flex(
            x.primitive(),
            Window {
                kernel,
                stride,
                padding,
            },
        );
        match prep {
            OpsKind::Tracked(prep) => prep.finish((std::sync::Arc::new(at), p, shape), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }
}

/// Max pooling with a square window on the CPU backend (see `pool.rs`, which decides).
pub fn max_pool2d(x: Tensor<4>, kernel: usize, stride: usize, padding: usize) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as MaxPoolOps>::max_pool2d_square(
        x.into_dispatch(),
        kernel,
        stride,
        padding,
    ))
}
