//! The core of the paper authors' updated first layer (`layer::perturb_first`) as one operation
//! on the CPU backend:
//!
//!   out[n, o] = b[o] + sum_m W[o, m] * sigmoid(scale[c, m] * x[n, c] + shift[c, m]),  c = o / Og
//!
//! i.e. BatchNorm of the perturbed maps folded into a per-mask scale and offset map, the sigmoid,
//! and the 1x1 convolution grouped by input channel. BatchNorm of `x + level * noise` is
//! `scale * x + scale * (level * noise - mean) + beta` per mask, and its batch statistics follow
//! from per-channel sums of x and the masks (the layer computes them, with burn's autodiff, on
//! tensors of the masks' size). So the N x C x M perturbed maps (3 x 1,280 of them per image at
//! --nfilters 256: 15.7 MB per image, several times over in the unfused backward pass) are never
//! stored: they are made a block of masks at a time, multiplied into the output, and made again
//! in the backward pass.
//!
//! The backward pass is written by hand: gradients for x, the scale, the offset map, the weights
//! and the bias. [`reference`] is the same function in burn's operations, for devices without
//! the kernel and for the tests.

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Dispatch, Flex, backend_extension};
use burn::tensor::Tensor;
use burn::tensor::activation::sigmoid;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use rayon::prelude::*;

use super::activation::ActivationFn;
use super::activation::act::Sigmoid;
use super::cpu::buffer::par_filled;
use super::cpu::flex_tensor::{contiguous, dims, tensor, values};
use super::cpu::matmul::{Mat, matmul_threaded_acc, threaded_product};

/// Masks per block: the block's perturbed maps (BLOCK x N x H x W values, 10 MB at batch 20 and
/// 32 x 32 maps) are all that is formed at once.
const BLOCK: usize = 128;

#[backend_extension(Flex, Autodiff)]
pub trait PerturbNormOps: burn::backend::Backend {
    /// x [N, C, H, W]; scale [C, M]; shift [C, M, H, W]; weight [O, M, 1, 1] (O a multiple of
    /// C, output o reading input channel o / (O / C)); bias [O]. Returns [N, O, H, W].
    fn perturb_norm_combine(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

/// The operation's sizes.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    n: usize,
    c: usize,
    m: usize,
    /// Outputs per input channel.
    og: usize,
    /// Pixels per map.
    p: usize,
}

impl Sizes {
    fn of(x: &[usize], scale: &[usize], weight: &[usize]) -> Self {
        let (n, c, p) = (x[0], x[1], x[2] * x[3]);
        let m = scale[1];
        assert_eq!(scale[0], c, "perturb_norm: scale has {} channels, x {c}", scale[0]);
        assert!(
            weight[0].is_multiple_of(c) && weight[1] == m,
            "perturb_norm: weight {weight:?} for {c} channels of {m} masks"
        );
        Self {
            n,
            c,
            m,
            og: weight[0] / c,
            p,
        }
    }

    fn np(&self) -> usize {
        self.n * self.p
    }
}

/// The operands, contiguous.
struct Operands<'a> {
    s: Sizes,
    x: &'a [f32],
    scale: &'a [f32],
    shift: &'a [f32],
    weight: &'a [f32],
}

impl Operands<'_> {
    /// Channel c of x as one row of N x P values.
    fn channel(&self, c: usize) -> Vec<f32> {
        let Sizes { n, c: channels, p, .. } = self.s;
        let mut row = Vec::with_capacity(n * p);
        for i in 0..n {
            row.extend_from_slice(&self.x[(i * channels + c) * p..][..p]);
        }
        row
    }

    /// The sigmoid of the perturbed, normalised maps of masks `m0..m0 + rows` of channel c, a
    /// row of N x P values per mask.
    fn maps(&self, c: usize, m0: usize, rows: usize, xc: &[f32]) -> Vec<f32> {
        let Sizes { m, p, .. } = self.s;
        let np = self.s.np();
        // SAFETY: every value of each mask's row is written.
        unsafe {
            par_filled(rows * np, np, |j, row| {
                let mask = c * m + m0 + j;
                let (a, shift) = (self.scale[mask], &self.shift[mask * p..][..p]);
                for (zi, xi) in row.chunks_mut(p).zip(xc.chunks(p)) {
                    for ((z, &x), &t) in zi.iter_mut().zip(xi).zip(shift) {
                        z.write(Sigmoid::apply(a * x + t));
                    }
                }
            })
        }
    }

    /// The weights of channel c's outputs for masks `m0..`, as an Og x rows matrix.
    fn weights(&self, c: usize, m0: usize) -> Mat {
        let Sizes { m, og, .. } = self.s;
        Mat {
            ptr: self.weight[c * og * m + m0..].as_ptr(),
            rs: m as isize,
            cs: 1,
        }
    }
}

fn forward(op: &Operands, bias: &[f32]) -> Vec<f32> {
    let s = op.s;
    let np = s.np();
    let o = s.c * s.og;
    let mut out = vec![0f32; s.n * o * s.p];
    for c in 0..s.c {
        let xc = op.channel(c);
        // Channel c's outputs as Og rows of N x P.
        let mut acc = vec![0f32; s.og * np];
        for m0 in (0..s.m).step_by(BLOCK) {
            let rows = BLOCK.min(s.m - m0);
            let z = op.maps(c, m0, rows, &xc);
            // SAFETY: acc is Og x NP, the weights Og x rows (row stride M), z rows x NP.
            unsafe {
                matmul_threaded_acc(
                    &mut acc,
                    m0 > 0,
                    s.og,
                    np,
                    rows,
                    op.weights(c, m0),
                    Mat::row_major(z.as_ptr(), np),
                )
            };
        }
        out.par_chunks_mut(o * s.p).enumerate().for_each(|(i, sample)| {
            for k in 0..s.og {
                let oc = c * s.og + k;
                let src = &acc[k * np + i * s.p..][..s.p];
                sample[oc * s.p..][..s.p]
                    .iter_mut()
                    .zip(src)
                    .for_each(|(d, &v)| *d = v + bias[oc]);
            }
        });
    }
    out
}

/// Gradients of one call.
struct Grads {
    x: Vec<f32>,
    scale: Vec<f32>,
    shift: Vec<f32>,
    weight: Vec<f32>,
    bias: Vec<f32>,
}

fn backward(op: &Operands, grad: &[f32]) -> Grads {
    let s = op.s;
    let (np, o) = (s.np(), s.c * s.og);
    let mut d = Grads {
        x: vec![0f32; s.n * s.c * s.p],
        scale: vec![0f32; s.c * s.m],
        shift: vec![0f32; s.c * s.m * s.p],
        weight: vec![0f32; o * s.m],
        bias: vec![0f32; o],
    };
    for c in 0..s.c {
        let xc = op.channel(c);
        // The output gradient of channel c's outputs as Og rows of N x P.
        let mut gc = vec![0f32; s.og * np];
        gc.par_chunks_mut(np).enumerate().for_each(|(k, row)| {
            let oc = c * s.og + k;
            for (i, dst) in row.chunks_mut(s.p).enumerate() {
                dst.copy_from_slice(&grad[(i * o + oc) * s.p..][..s.p]);
            }
        });
        for k in 0..s.og {
            d.bias[c * s.og + k] = gc[k * np..][..np].iter().sum();
        }
        let mut dxc = vec![0f32; np];
        for m0 in (0..s.m).step_by(BLOCK) {
            let rows = BLOCK.min(s.m - m0);
            let z = op.maps(c, m0, rows, &xc);
            // SAFETY: gc is Og x NP, z^T NP x rows: dW (Og x rows) = gc z^T.
            let dw = unsafe {
                threaded_product(
                    s.og,
                    rows,
                    np,
                    Mat::row_major(gc.as_ptr(), np),
                    Mat::transposed(z.as_ptr(), np),
                )
            };
            for k in 0..s.og {
                d.weight[(c * s.og + k) * s.m + m0..][..rows].copy_from_slice(&dw[k * rows..][..rows]);
            }
            // dz (rows x NP) = W^T gc; the weights read transposed in place.
            let wt = op.weights(c, m0);
            let wt = Mat {
                ptr: wt.ptr,
                rs: wt.cs,
                cs: wt.rs,
            };
            // SAFETY: W^T is rows x Og, gc Og x NP.
            let mut du = unsafe { threaded_product(rows, np, s.og, wt, Mat::row_major(gc.as_ptr(), np)) };
            let scale = &op.scale[c * s.m + m0..][..rows];
            let (dscale, dshift) = (
                &mut d.scale[c * s.m + m0..][..rows],
                &mut d.shift[(c * s.m + m0) * s.p..][..rows * s.p],
            );
            du.par_chunks_mut(np)
                .zip(z.par_chunks(np))
                .zip(dscale.par_iter_mut().zip(dshift.par_chunks_mut(s.p)))
                .for_each(|((du, z), (dscale, dshift))| {
                    let mut ds = 0f32;
                    for ((du, &z), &x) in du.iter_mut().zip(z).zip(&xc) {
                        // The sigmoid's derivative needs only its output.
                        *du *= Sigmoid::derivative(f32::NAN, z);
                        ds += *du * x;
                    }
                    *dscale = ds;
                    for sample in du.chunks(s.p) {
                        dshift.iter_mut().zip(sample).for_each(|(d, &g)| *d += g);
                    }
                });
            dxc.par_chunks_mut(4096).enumerate().for_each(|(b, dx)| {
                for (j, &a) in scale.iter().enumerate() {
                    let row = &du[j * np + b * 4096..][..dx.len()];
                    dx.iter_mut().zip(row).for_each(|(d, &g)| *d += a * g);
                }
            });
        }
        for (i, src) in dxc.chunks(s.p).enumerate() {
            d.x[(i * s.c + c) * s.p..][..s.p].copy_from_slice(src);
        }
    }
    d
}

fn operands<'a>(
    x: &'a FlexTensor,
    scale: &'a FlexTensor,
    shift: &'a FlexTensor,
    weight: &'a FlexTensor,
) -> Operands<'a> {
    Operands {
        s: Sizes::of(&dims(x), &dims(scale), &dims(weight)),
        x: values(x),
        scale: values(scale),
        shift: values(shift),
        weight: values(weight),
    }
}

fn forward_flex(
    x: &FlexTensor,
    scale: &FlexTensor,
    shift: &FlexTensor,
    weight: &FlexTensor,
    bias: &FlexTensor,
) -> FlexTensor {
    let [x, scale, shift, weight, bias] = [x, scale, shift, weight, bias].map(contiguous);
    let op = operands(&x, &scale, &shift, &weight);
    let shape = dims(&x);
    let out = forward(&op, values(&bias));
    tensor(out, vec![shape[0], op.s.c * op.s.og, shape[2], shape[3]])
}

impl PerturbNormOps for Flex {
    fn perturb_norm_combine(
        x: FlexTensor,
        scale: FlexTensor,
        shift: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
    ) -> FlexTensor {
        forward_flex(&x, &scale, &shift, &weight, &bias)
    }
}

#[derive(Debug)]
struct PerturbNormBackward;

impl Backward<Flex, 5> for PerturbNormBackward {
    /// The operands but the bias: the maps are made again from them.
    type State = (FlexTensor, FlexTensor, FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 5>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_x, node_scale, node_shift, node_weight, node_bias] = ops.parents;
        let grad = contiguous(&grads.consume::<Flex>(&ops.node));
        let (x, scale, shift, weight) = ops.state;
        let shapes = [&x, &scale, &shift, &weight].map(dims);
        let [x, scale, shift, weight] = [&x, &scale, &shift, &weight].map(contiguous);
        let op = operands(&x, &scale, &shift, &weight);
        let d = backward(&op, values(&grad));
        let o = d.bias.len();
        let [x_shape, scale_shape, shift_shape, weight_shape] = shapes;
        for (node, g, shape) in [
            (node_x, d.x, x_shape),
            (node_scale, d.scale, scale_shape),
            (node_shift, d.shift, shift_shape),
            (node_weight, d.weight, weight_shape),
            (node_bias, d.bias, vec![o]),
        ] {
            if let Some(node) = node {
                grads.register::<Flex>(node.id, tensor(g, shape));
            }
        }
    }
}

impl<C: CheckpointStrategy> PerturbNormOps for Autodiff<Flex, C> {
    fn perturb_norm_combine(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let prep = PerturbNormBackward
            .prepare::<C>([x.node(), scale.node(), shift.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful();
        let [x, scale, shift, weight, bias] = [&x, &scale, &shift, &weight, &bias].map(|t| t.primitive().clone());
        let out = forward_flex(&x, &scale, &shift, &weight, &bias);
        match prep {
            OpsKind::Tracked(prep) => prep.finish((x, scale, shift, weight), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }
}

/// `bias + weight * sigmoid(scale * x + shift)`, the 1x1 convolution grouped by input channel:
/// the fused kernel (see the module documentation).
pub fn combine(x: Tensor<4>, scale: Tensor<2>, shift: Tensor<4>, weight: Tensor<4>, bias: Tensor<1>) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as PerturbNormOps>::perturb_norm_combine(
        x.into_dispatch(),
        scale.into_dispatch(),
        shift.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
    ))
}

/// The same function in burn's operations: the N x C x M maps formed whole.
pub fn reference(x: Tensor<4>, scale: Tensor<2>, shift: Tensor<4>, weight: Tensor<4>, bias: Tensor<1>) -> Tensor<4> {
    let [n, c, h, w] = x.dims();
    let m = scale.dims()[1];
    // [N, C, 1, H, W] * [1, C, M, 1, 1] + [1, C, M, H, W] -> [N, C x M, H, W], channel c * M + m.
    let u = x.unsqueeze_dim::<5>(2) * scale.reshape([1, c, m, 1, 1]) + shift.unsqueeze_dim::<5>(0);
    let z = sigmoid(u).reshape([n, c * m, h, w]);
    conv2d(z, weight, Some(bias), ConvOptions::new([1, 1], [0, 0], [1, 1], c))
}
