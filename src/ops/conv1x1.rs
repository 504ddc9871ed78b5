//! The 1x1 convolution (ungrouped, no padding) on the CPU backend as one operation with a
//! hand-written backward, each part a strided matrix product (the `gemm` crate, which flex's
//! own matrix product uses):
//!
//!   forward   y[n]  = W x[n] + b              [O, HW] = [O, C] [C, HW]
//!   backward  dx[n] = W^T dy[n]               W^T read through strides, not copied
//!             dW    = sum_n dy[n] x[n]^T      accumulated in place, x[n]^T through strides
//!             db    = sum_n sum_hw dy[n]
//!
//! With a stride s the input is first subsampled (every s-th row and column: what a 1x1
//! convolution with stride s reads), and the input gradient is placed back at those pixels.
//! The bias and the stride are part of the operation because, as burn's broadcast addition,
//! slice and their backward passes (a sum over three axes, a zeroed buffer written through a
//! slice), each ran on the main thread alone.
//!
//! Why not burn's operations: flex's convolution took 2-3x longer for these shapes, and its
//! matrix product copies every transposed operand first (docs/speed.md has the profiles). The 1x1 convolution is the layer the paper's "1x1 network" is built
//! of: every perturbation layer with one mask, the mix_maps layer, noiseresnet18's layers and
//! the ResNet shortcuts.

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

use super::cpu::blocks::{add_vectors, block_len};
use super::cpu::buffer::par_filled;
use super::cpu::flex_tensor::{contiguous, dims, tensor, values};
use super::cpu::lanes::sum;
use super::cpu::matmul::{Mat, gather, matmul, matmul_into, scatter, threaded_product};

#[backend_extension(Flex, Autodiff)]
pub trait PointwiseOps: burn::backend::Backend {
    /// x [N, C, H, W], weight [O, C, 1, 1], bias [O] -> [N, O, ceil(H / stride), ceil(W / stride)].
    fn pointwise_conv(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: usize,
    ) -> FloatTensor<Self>;
}

/// Sizes: N samples, C inputs, O outputs, HW pixels.
#[derive(Clone, Copy)]
struct Sizes {
    n: usize,
    c: usize,
    o: usize,
    hw: usize,
}

impl Sizes {
    fn of(x: &[usize], weight: &[usize]) -> Self {
        assert!(
            x.len() == 4 && weight.len() == 4 && weight[1] == x[1] && weight[2] == 1 && weight[3] == 1,
            "pointwise_conv: x {x:?} and weight {weight:?} are not a 1x1 convolution"
        );
        Self {
            n: x[0],
            c: x[1],
            o: weight[0],
            hw: x[2] * x[3],
        }
    }
}

/// Maps of at most this many pixels are multiplied as one [K, N x HW] matrix: per sample the
/// matrix product would be too thin (4 x 4 maps: 16 columns) and would pack the weights again
/// for every sample.
const SMALL_MAPS: usize = 64;

/// Adds `bias[r]` to row r of a row-major matrix with rows of `cols` values.
fn add_bias(m: &mut [f32], bias: &[f32], cols: usize) {
    for (row, &b) in m.chunks_mut(cols).zip(bias) {
        row.iter_mut().for_each(|v| *v += b);
    }
}

/// The map size after a stride: every stride-th pixel, from the first.
fn strided(size: usize, stride: usize) -> usize {
    size.div_ceil(stride)
}

/// x [N, C, H, W] -> [N, C, ceil(H / s), ceil(W / s)]: the pixels a 1x1 convolution with stride
/// s reads.
fn subsample(x: &[f32], n: usize, c: usize, [h, w]: [usize; 2], stride: usize) -> Vec<f32> {
    let (oh, ow) = (strided(h, stride), strided(w, stride));
    // SAFETY: each output plane is written row by row, every pixel of it.
    unsafe {
        par_filled(n * c * oh * ow, oh * ow, |plane, dst| {
            let src = &x[plane * h * w..][..h * w];
            for (oy, row) in dst.chunks_mut(ow).enumerate() {
                let src_row = &src[oy * stride * w..][..w];
                for (d, &v) in row.iter_mut().zip(src_row.iter().step_by(stride)) {
                    d.write(v);
                }
            }
        })
    }
}

/// The inverse placement of [`subsample`] for gradients: dx_sub's values at the pixels they
/// were read from, zeros elsewhere.
fn upsample(dx_sub: &[f32], n: usize, c: usize, [h, w]: [usize; 2], stride: usize) -> Vec<f32> {
    let (oh, ow) = (strided(h, stride), strided(w, stride));
    // SAFETY: each plane is zeroed whole, then written.
    unsafe {
        par_filled(n * c * h * w, h * w, |plane, dst| {
            let dst = crate::ops::cpu::buffer::zeroed(dst);
            let src = &dx_sub[plane * oh * ow..][..oh * ow];
            for (oy, row) in src.chunks(ow).enumerate() {
                let dst_row = &mut dst[oy * stride * w..][..w];
                for (d, &v) in dst_row.iter_mut().step_by(stride).zip(row) {
                    *d = v;
                }
            }
        })
    }
}

fn forward_values(s: Sizes, x: &[f32], w: &[f32], bias: &[f32]) -> Vec<f32> {
    if s.hw == 1 {
        // 1x1 maps: a fully connected layer, y [N, O] = x [N, C] W^T, with no regrouping.
        // SAFETY: y is N x O, x N x C, W^T C x O; the product writes all of y.
        let mut y = unsafe {
            threaded_product(
                s.n,
                s.o,
                s.c,
                Mat::row_major(x.as_ptr(), s.c),
                Mat::transposed(w.as_ptr(), s.c),
            )
        };
        for row in y.chunks_mut(s.o) {
            row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
        }
        return y;
    }
    if s.hw <= SMALL_MAPS {
        let cols = s.n * s.hw;
        let x2 = gather(x, s.n, s.c, s.hw);
        // SAFETY: y2 is O x (N HW), w O x C, x2 C x (N HW); the product writes all of y2.
        let y2 = unsafe {
            threaded_product(
                s.o,
                cols,
                s.c,
                Mat::row_major(w.as_ptr(), s.c),
                Mat::row_major(x2.as_ptr(), cols),
            )
        };
        return scatter(&y2, s.n, s.o, s.hw, Some(bias));
    }
    let weight = Mat::row_major(w.as_ptr(), s.c);
    // SAFETY: y_n is O x HW, weight O x C, x_n C x HW, all within their buffers; the product
    // writes all of y_n.
    unsafe {
        par_filled(s.n * s.o * s.hw, s.o * s.hw, |n, y_n| {
            let x_n = Mat::row_major(x[n * s.c * s.hw..].as_ptr(), s.hw);
            matmul_into(y_n, s.o, s.hw, s.c, weight, x_n);
            // The bias while the sample's output is still in cache.
            add_bias(crate::ops::cpu::buffer::assume_init(y_n), bias, s.hw);
        })
    }
}

/// The bias gradient: each output channel's dy summed over samples and pixels.
fn bias_grad(s: Sizes, dy: &[f32]) -> Vec<f32> {
    (0..s.o)
        .into_par_iter()
        .map(|o| {
            let total: f64 = (0..s.n).map(|n| sum(&dy[(n * s.o + o) * s.hw..][..s.hw]) as f64).sum();
            total as f32
        })
        .collect()
}

/// (dx, dW) from dy.
fn backward_values(s: Sizes, x: &[f32], w: &[f32], dy: &[f32], need_x: bool) -> (Vec<f32>, Vec<f32>) {
    if s.hw <= SMALL_MAPS {
        return backward_small_maps(s, x, w, dy, need_x);
    }
    let dx = if need_x {
        let weight_t = Mat::transposed(w.as_ptr(), s.c);
        // SAFETY: dx_n is C x HW, W^T C x O, dy_n O x HW; the product writes all of dx_n.
        unsafe {
            par_filled(s.n * s.c * s.hw, s.c * s.hw, |n, dx_n| {
                let dy_n = Mat::row_major(dy[n * s.o * s.hw..].as_ptr(), s.hw);
                matmul_into(dx_n, s.c, s.hw, s.o, weight_t, dy_n);
            })
        }
    } else {
        Vec::new()
    };
    // One partial dW per thread's block of samples, then their sum.
    let block = block_len(s.n);
    let starts: Vec<usize> = (0..s.n).step_by(block).collect();
    let dw = starts
        .into_par_iter()
        .map(|start| {
            let mut dw = vec![0f32; s.o * s.c];
            for n in start..(start + block).min(s.n) {
                let dy_n = Mat::row_major(dy[n * s.o * s.hw..].as_ptr(), s.hw);
                let x_n_t = Mat::transposed(x[n * s.c * s.hw..].as_ptr(), s.hw);
                // SAFETY: dw is O x C, dy_n O x HW, x_n^T HW x C.
                unsafe { matmul(&mut dw, n > start, s.o, s.c, s.hw, dy_n, x_n_t) };
            }
            dw
        })
        .reduce_with(add_vectors)
        .unwrap_or_else(|| vec![0f32; s.o * s.c]);
    (dx, dw)
}

/// The backward pass with the batch as one matrix (see [`SMALL_MAPS`]).
fn backward_small_maps(s: Sizes, x: &[f32], w: &[f32], dy: &[f32], need_x: bool) -> (Vec<f32>, Vec<f32>) {
    if s.hw == 1 {
        return backward_fully_connected(s, x, w, dy, need_x);
    }
    let cols = s.n * s.hw;
    let dy2 = gather(dy, s.n, s.o, s.hw);
    let x2 = gather(x, s.n, s.c, s.hw);
    let dx = if need_x {
        let weight_t = Mat::transposed(w.as_ptr(), s.c);
        // SAFETY: dx2 is C x (N HW), W^T C x O, dy2 O x (N HW); the product writes all of dx2.
        let dx2 = unsafe { threaded_product(s.c, cols, s.o, weight_t, Mat::row_major(dy2.as_ptr(), cols)) };
        scatter(&dx2, s.n, s.c, s.hw, None)
    } else {
        Vec::new()
    };
    let x2_t = Mat::transposed(x2.as_ptr(), cols);
    // SAFETY: dw is O x C, dy2 O x (N HW), x2^T (N HW) x C; the product writes all of dw.
    let dw = unsafe { threaded_product(s.o, s.c, cols, Mat::row_major(dy2.as_ptr(), cols), x2_t) };
    (dx, dw)
}

/// The backward pass on 1x1 maps: dx [N, C] = dy [N, O] W, dW [O, C] = dy^T x.
fn backward_fully_connected(s: Sizes, x: &[f32], w: &[f32], dy: &[f32], need_x: bool) -> (Vec<f32>, Vec<f32>) {
    let dy_rows = Mat::row_major(dy.as_ptr(), s.o);
    let dx = if need_x {
        // SAFETY: dx is N x C, dy N x O, W O x C; the product writes all of dx.
        unsafe { threaded_product(s.n, s.c, s.o, dy_rows, Mat::row_major(w.as_ptr(), s.c)) }
    } else {
        Vec::new()
    };
    // SAFETY: dw is O x C, dy^T O x N, x N x C; the product writes all of dw.
    let dw = unsafe {
        threaded_product(
            s.o,
            s.c,
            s.n,
            Mat::transposed(dy.as_ptr(), s.o),
            Mat::row_major(x.as_ptr(), s.c),
        )
    };
    (dx, dw)
}

/// The subsampled input the products read: x itself at stride 1.
fn strided_input(x: &FlexTensor, stride: usize) -> FlexTensor {
    let x = contiguous(x);
    if stride == 1 {
        return x;
    }
    let [n, c, h, w] = dims(&x)[..] else {
        panic!("pointwise_conv: x {:?} is not [N, C, H, W]", dims(&x))
    };
    let sub = subsample(values(&x), n, c, [h, w], stride);
    tensor(sub, vec![n, c, strided(h, stride), strided(w, stride)])
}

/// The forward pass on the (subsampled) input.
fn forward_flex(x_sub: &FlexTensor, weight: &FlexTensor, bias: &FlexTensor) -> FlexTensor {
    let s = Sizes::of(&dims(x_sub), &dims(weight));
    let (weight, bias) = (contiguous(weight), contiguous(bias));
    assert_eq!(values(&bias).len(), s.o, "pointwise_conv: bias of the wrong length");
    let [_, _, h, w] = dims(x_sub)[..] else {
        unreachable!("checked by Sizes::of")
    };
    tensor(
        forward_values(s, values(x_sub), values(&weight), values(&bias)),
        vec![s.n, s.o, h, w],
    )
}

impl PointwiseOps for Flex {
    fn pointwise_conv(x: FlexTensor, weight: FlexTensor, bias: FlexTensor, stride: usize) -> FlexTensor {
        forward_flex(&strided_input(&x, stride), &weight, &bias)
    }
}

#[derive(Debug)]
struct PointwiseBackward;

/// What the backward pass keeps: the subsampled input, the weight, the input's shape and the
/// stride.
type SavedState = (FlexTensor, FlexTensor, Vec<usize>, usize);

impl Backward<Flex, 3> for PointwiseBackward {
    type State = SavedState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_x, node_weight, node_bias] = ops.parents;
        let dy = contiguous(&grads.consume::<Flex>(&ops.node));
        let (x_sub, weight, x_dims, stride) = ops.state;
        let weight_dims = dims(&weight);
        let s = Sizes::of(&dims(&x_sub), &weight_dims);
        let weight = contiguous(&weight);
        let (dx, dw) = backward_values(s, values(&x_sub), values(&weight), values(&dy), node_x.is_some());
        if let Some(node) = node_x {
            let dx = if stride == 1 {
                dx
            } else {
                upsample(&dx, s.n, s.c, [x_dims[2], x_dims[3]], stride)
            };
            grads.register::<Flex>(node.id, tensor(dx, x_dims));
        }
        if let Some(node) = node_weight {
            grads.register::<Flex>(node.id, tensor(dw, weight_dims));
        }
        if let Some(node) = node_bias {
            grads.register::<Flex>(node.id, tensor(bias_grad(s, values(&dy)), vec![s.o]));
        }
    }
}

impl<C: CheckpointStrategy> PointwiseOps for Autodiff<Flex, C> {
    fn pointwise_conv(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: usize,
    ) -> FloatTensor<Self> {
        let prep = PointwiseBackward
            .prepare::<C>([x.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful();
        let x_dims = dims(x.primitive());
        let x_sub = strided_input(x.primitive(), stride);
        let weight = weight.primitive().clone();
        let out = forward_flex(&x_sub, &weight, bias.primitive());
        match prep {
            OpsKind::Tracked(prep) => prep.finish((x_sub, weight, x_dims, stride), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }
}

/// `weight * x + bias` as a 1x1 convolution with a stride: x [N, C, H, W], weight [O, C, 1, 1],
/// bias [O] (zeros for a convolution without one: an untracked constant gets no gradient).
/// CPU backend only (see `conv::forward`, which decides).
pub fn pointwise_conv(x: Tensor<4>, weight: Tensor<4>, bias: Tensor<1>, stride: usize) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as PointwiseOps>::pointwise_conv(
        x.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
        stride,
    ))
}
