//! BatchNorm in training mode on the CPU backend, as one operation with a hand-written backward.
//!
//! burn's generic `batch_norm_train` swaps the batch and channel axes and reshapes, which on flex
//! copies the whole activation, twice forward and twice backward, beside several elementwise
//! passes (docs/speed.md has the profile). Here the
//! statistics are sums over each channel's N strided runs of H x W values, read in place:
//!
//!   forward   mean, var (biased) per channel; y = (x - mean) / sqrt(var + eps) * gamma + beta
//!   backward  xhat = (x - mean) / sqrt(var + eps); with sums over the channel's M values,
//!             dbeta = sum dy, dgamma = sum dy xhat,
//!             dx = gamma / sqrt(var + eps) * (dy - dbeta / M - xhat * dgamma / M)

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Dispatch, Flex, backend_extension};
use burn::tensor::Tensor;
use std::mem::MaybeUninit;

use multiversion::multiversion;
use rayon::prelude::*;

use crate::ops::cpu::buffer::{par_filled, par_filled_with};
use crate::ops::cpu::flex_tensor::{contiguous, dims, tensor, values};
use crate::ops::cpu::lanes::{dot_centered, sum, sum_sq_dev};

#[backend_extension(Flex, Autodiff)]
pub trait BatchNormOps: burn::backend::Backend {
    /// Normalised with the batch's own statistics: x [N, C, ...], gamma and beta [C], and
    /// `moments` = `channel_moments(x)` (passed in so that they are computed once per step;
    /// the backward pass differentiates through them itself). With `relu`, a ReLU follows in the
    /// same pass, as after nearly every BatchNorm of these models: burn's ReLU is a separate
    /// pass over the maps on one thread, forward and backward.
    fn batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        moments: FloatTensor<Self>,
        epsilon: f32,
        relu: bool,
    ) -> FloatTensor<Self>;

    /// [2, C]: each channel's mean and biased variance (no gradient flows through them).
    fn channel_moments(x: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// Maps of fewer values per channel than this take the sample-by-sample path (`Sizes::small`).
const SMALL_MAPS: usize = 64;

/// N samples, C channels, S values per sample and channel.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    n: usize,
    c: usize,
    s: usize,
}

impl Sizes {
    fn of(x: &[usize]) -> Self {
        assert!(x.len() >= 2, "batch norm: x {x:?} has no channel axis");
        Self {
            n: x[0],
            c: x[1],
            s: x[2..].iter().product(),
        }
    }

    fn count(&self) -> f64 {
        (self.n * self.s) as f64
    }

    /// Maps this small are normalised sample by sample (`small`): a channel's runs are too short
    /// for the per-channel loops, which then cost a call or a rayon task per few values.
    fn small(&self) -> bool {
        self.s < SMALL_MAPS
    }

    /// Sample `n`'s C x S values.
    fn sample<'a>(&self, v: &'a [f32], n: usize) -> &'a [f32] {
        &v[n * self.c * self.s..][..self.c * self.s]
    }

    /// A per-channel value repeated over the channel's S positions: one sample's layout.
    fn per_position(&self, f: impl Fn(usize) -> f32) -> Vec<f32> {
        (0..self.c).flat_map(|c| std::iter::repeat_n(f(c), self.s)).collect()
    }

    /// The runs of channel `c`, one per sample.
    fn runs<'a>(&self, v: &'a [f32], c: usize) -> impl Iterator<Item = &'a [f32]> + use<'a> {
        let (stride, s) = (self.c * self.s, self.s);
        (0..self.n).map(move |n| &v[n * stride + c * s..][..s])
    }
}

/// Mean and biased variance of channel `c`: two passes, each run summed in f32 lanes and the
/// runs in f64, so that large batches stay exact.
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma", "x86_64+avx", "aarch64+neon"))]
fn channel_moments(sz: Sizes, x: &[f32], c: usize) -> (f32, f32) {
    let total: f64 = sz.runs(x, c).map(|r| sum(r) as f64).sum();
    let mean = (total / sz.count()) as f32;
    let sq: f64 = sz.runs(x, c).map(|r| sum_sq_dev(r, mean) as f64).sum();
    (mean, (sq / sz.count()) as f32)
}

fn moments(sz: Sizes, x: &[f32]) -> Vec<(f32, f32)> {
    if sz.small() {
        let mean: Vec<f32> = small::channel_sums(sz, |acc, n| small::add(acc, sz.sample(x, n)))
            .iter()
            .map(|t| (t[0] / sz.count()) as f32)
            .collect();
        let mean_at = sz.per_position(|c| mean[c]);
        let sq = small::channel_sums(sz, |acc, n| small::add_sq_dev(acc, sz.sample(x, n), &mean_at));
        return mean
            .iter()
            .zip(sq)
            .map(|(&m, t)| (m, (t[0] / sz.count()) as f32))
            .collect();
    }
    (0..sz.c).into_par_iter().map(|c| channel_moments(sz, x, c)).collect()
}

/// `y = x * scale + shift`, then `max(y, 0)` when `relu`. The two loops are written out so that
/// each vectorises without a branch, and so that without `relu` a NaN stays a NaN.
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma", "x86_64+avx", "aarch64+neon"))]
fn affine(y: &mut [MaybeUninit<f32>], x: &[f32], scale: f32, shift: f32, relu: bool) {
    if relu {
        for (y, x) in y.iter_mut().zip(x) {
            y.write((x * scale + shift).max(0.0));
        }
    } else {
        for (y, x) in y.iter_mut().zip(x) {
            y.write(x * scale + shift);
        }
    }
}

/// The normalised x, followed by a ReLU when `relu` (one pass instead of two, see
/// [`BatchNormOps::batch_norm_train`]).
fn forward_values(
    sz: Sizes,
    x: &[f32],
    stats: &[(f32, f32)],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    relu: bool,
) -> Vec<f32> {
    let scale: Vec<f32> = (0..sz.c).map(|c| gamma[c] / (stats[c].1 + eps).sqrt()).collect();
    if sz.small() {
        let scale_at = sz.per_position(|c| scale[c]);
        let shift_at = sz.per_position(|c| beta[c] - stats[c].0 * scale[c]);
        let row = (sz.c * sz.s).max(1);
        // SAFETY: small::affine writes every value of its row.
        return unsafe {
            par_filled(x.len(), row, |n, y| {
                small::affine(y, &x[n * row..][..y.len()], &scale_at, &shift_at, relu)
            })
        };
    }
    let run = sz.s.max(1);
    // SAFETY: affine writes every value of its run.
    unsafe {
        par_filled(x.len(), run, |i, y| {
            let c = i % sz.c;
            affine(
                y,
                &x[i * run..][..y.len()],
                scale[c],
                beta[c] - stats[c].0 * scale[c],
                relu,
            );
        })
    }
}

/// (sum dy, sum dy * xhat) over channel `c`.
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma", "x86_64+avx", "aarch64+neon"))]
fn channel_grad_sums(
    sz: Sizes,
    x: &[f32],
    dy: &[f32],
    relu_out: Option<&[f32]>,
    c: usize,
    mean: f32,
    inv_std: f32,
) -> (f32, f32) {
    let (mut sum_dy, mut sum_dy_centered) = (0f64, 0f64);
    let mut scratch = Vec::new();
    for (n, xr) in sz.runs(x, c).enumerate() {
        let dr = grad_run(dy, relu_out, n * sz.c * sz.s + c * sz.s, sz.s, &mut scratch);
        sum_dy += sum(dr) as f64;
        sum_dy_centered += dot_centered(dr, xr, mean) as f64;
    }
    (sum_dy as f32, (sum_dy_centered * inv_std as f64) as f32)
}

/// `dx = k (dy - mean_dy - (x - mean) inv_std mean_dy_xhat)`.
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma", "x86_64+avx", "aarch64+neon"))]
#[allow(clippy::too_many_arguments)]
fn input_grad(
    dx: &mut [MaybeUninit<f32>],
    x: &[f32],
    dy: &[f32],
    k: f32,
    mean: f32,
    inv_std: f32,
    mean_dy: f32,
    mean_dy_xhat: f32,
) {
    for ((dx, &xv), &d) in dx.iter_mut().zip(x).zip(dy) {
        dx.write(k * (d - mean_dy - (xv - mean) * inv_std * mean_dy_xhat));
    }
}

/// `dy[at..at + len]`; after a fused ReLU whose output was `relu_out`, the gradient that passed
/// it (0 where the output was cut), written into `scratch`. Masking run by run keeps the
/// masked gradient from ever being a whole-map buffer.
fn grad_run<'a>(
    dy: &'a [f32],
    relu_out: Option<&[f32]>,
    at: usize,
    len: usize,
    scratch: &'a mut Vec<f32>,
) -> &'a [f32] {
    let d = &dy[at..][..len];
    let Some(out) = relu_out else {
        return d;
    };
    scratch.clear();
    scratch.extend(
        d.iter()
            .zip(&out[at..][..len])
            .map(|(&g, &o)| if o > 0.0 { g } else { 0.0 }),
    );
    scratch
}

/// (dx, dgamma, dbeta), from the gradient `dy` of the output, or of the ReLU after it when
/// `relu_out` (that ReLU's output) is given.
fn backward_values(
    sz: Sizes,
    x: &[f32],
    stats: &[(f32, f32)],
    gamma: &[f32],
    eps: f32,
    dy: &[f32],
    relu_out: Option<&[f32]>,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let inv_std: Vec<f32> = stats.iter().map(|&(_, var)| 1.0 / (var + eps).sqrt()).collect();
    let m = sz.count() as f32;
    if sz.small() {
        let mean_at = sz.per_position(|c| stats[c].0);
        let row = sz.c * sz.s;
        let sums: Vec<(f32, f32)> = small::channel_sums(sz, |acc, n| {
            let mut scratch = Vec::new();
            let dy_n = grad_run(dy, relu_out, n * row, row, &mut scratch);
            small::add_grad(acc, sz.sample(x, n), dy_n, &mean_at)
        })
        .iter()
        .zip(&inv_std)
        .map(|(t, &inv)| (t[0] as f32, (t[1] * inv as f64) as f32))
        .collect();
        // dx = a dy + b (x - mean) + c per position, from the formula in the module's comment;
        // x is centred first, as in the per-channel path, so a large mean does not cancel.
        let k = |c: usize| gamma[c] * inv_std[c];
        let a_at = sz.per_position(k);
        let b_at = sz.per_position(|c| -k(c) * inv_std[c] * sums[c].1 / m);
        let c_at = sz.per_position(|c| -k(c) * sums[c].0 / m);
        let row = row.max(1);
        // SAFETY: small::input_grad writes every value of its row.
        let dx = unsafe {
            par_filled_with(x.len(), row, Vec::new, |scratch, n, dx| {
                let at = n * row;
                small::input_grad(
                    dx,
                    &x[at..][..dx.len()],
                    grad_run(dy, relu_out, at, dx.len(), scratch),
                    &mean_at,
                    [&a_at, &b_at, &c_at],
                )
            })
        };
        return (
            dx,
            sums.iter().map(|s| s.1).collect(),
            sums.iter().map(|s| s.0).collect(),
        );
    }
    let sums: Vec<(f32, f32)> = (0..sz.c)
        .into_par_iter()
        .map(|c| channel_grad_sums(sz, x, dy, relu_out, c, stats[c].0, inv_std[c]))
        .collect();
    let run = sz.s.max(1);
    // SAFETY: input_grad writes every value of its run.
    let dx = unsafe {
        par_filled_with(x.len(), run, Vec::new, |scratch, i, dx| {
            let c = i % sz.c;
            let (sum_dy, sum_dy_xhat) = sums[c];
            let at = i * run;
            input_grad(
                dx,
                &x[at..][..dx.len()],
                grad_run(dy, relu_out, at, dx.len(), scratch),
                gamma[c] * inv_std[c],
                stats[c].0,
                inv_std[c],
                sum_dy / m,
                sum_dy_xhat / m,
            );
        })
    };
    let dgamma = sums.iter().map(|s| s.1).collect();
    let dbeta = sums.iter().map(|s| s.0).collect();
    (dx, dgamma, dbeta)
}

/// The sample-by-sample path for small maps: every loop runs over one sample's C x S values,
/// with per-channel constants repeated over each channel's positions (`Sizes::per_position`).
mod small {
    use std::mem::MaybeUninit;

    use multiversion::multiversion;
    use rayon::prelude::*;

    use super::Sizes;
    use crate::ops::cpu::blocks::{add_vectors, block_len};

    /// Per-channel sums of up to two quantities over all samples and positions. `add(acc, n)`
    /// adds sample n's values position by position into `acc` ([2][C x S], f64), one `acc` per
    /// block of samples (`blocks`).
    pub(super) fn channel_sums(sz: Sizes, add: impl Fn(&mut [f64], usize) + Sync) -> Vec<[f64; 2]> {
        let width = sz.c * sz.s;
        let block = block_len(sz.n);
        let acc = (0..sz.n.div_ceil(block))
            .into_par_iter()
            .map(|b| {
                let mut acc = vec![0f64; 2 * width];
                (b * block..((b + 1) * block).min(sz.n)).for_each(|n| add(&mut acc, n));
                acc
            })
            .reduce_with(add_vectors)
            .unwrap_or_else(|| vec![0f64; 2 * width]);
        let (first, second) = acc.split_at(width);
        (0..sz.c)
            .map(|c| {
                let at = |v: &[f64]| v[c * sz.s..][..sz.s].iter().sum::<f64>();
                [at(first), at(second)]
            })
            .collect()
    }

    #[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma", "x86_64+avx", "aarch64+neon"))]
    pub(super) fn add(acc: &mut [f64], x: &[f32]) {
        for (a, &v) in acc.iter_mut().zip(x) {
            *a += v as f64;
        }
    }

    #[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma", "x86_64+avx", "aarch64+neon"))]
    pub(super) fn add_sq_dev(acc: &mut [f64], x: &[f32], mean: &[f32]) {
        for ((a, &v), &m) in acc.iter_mut().zip(x).zip(mean) {
            let d = v - m;
            *a += (d * d) as f64;
        }
    }

    /// sum dy into the first half of `acc`, sum dy (x - mean) into the second.
    #[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma", "x86_64+avx", "aarch64+neon"))]
    pub(super) fn add_grad(acc: &mut [f64], x: &[f32], dy: &[f32], mean: &[f32]) {
        let (sum_dy, sum_dy_centered) = acc.split_at_mut(x.len());
        for (((s, t), (&v, &d)), &m) in sum_dy.iter_mut().zip(sum_dy_centered).zip(x.iter().zip(dy)).zip(mean) {
            *s += d as f64;
            *t += (d * (v - m)) as f64;
        }
    }

    #[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma", "x86_64+avx", "aarch64+neon"))]
    pub(super) fn affine(y: &mut [MaybeUninit<f32>], x: &[f32], scale: &[f32], shift: &[f32], relu: bool) {
        if relu {
            for (((y, &x), &a), &b) in y.iter_mut().zip(x).zip(scale).zip(shift) {
                y.write((x * a + b).max(0.0));
            }
        } else {
            for (((y, &x), &a), &b) in y.iter_mut().zip(x).zip(scale).zip(shift) {
                y.write(x * a + b);
            }
        }
    }

    /// `dx = a dy + b (x - mean) + c`, with `[a, b, c]` given per position.
    #[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma", "x86_64+avx", "aarch64+neon"))]
    pub(super) fn input_grad(dx: &mut [MaybeUninit<f32>], x: &[f32], dy: &[f32], mean: &[f32], [a, b, c]: [&[f32]; 3]) {
        let coefficients = a.iter().zip(b).zip(c).zip(mean);
        for (((dx, &x), &dy), (((&a, &b), &c), &m)) in dx.iter_mut().zip(x).zip(dy).zip(coefficients) {
            dx.write(a * dy + b * (x - m) + c);
        }
    }
}

/// The (mean, variance) pairs of a [2, C] moments tensor.
fn unpack(moments: &FlexTensor) -> Vec<(f32, f32)> {
    let m = contiguous(moments);
    let v = values(&m);
    let c = v.len() / 2;
    (0..c).map(|i| (v[i], v[c + i])).collect()
}

fn forward_flex(
    x: &FlexTensor,
    gamma: &FlexTensor,
    beta: &FlexTensor,
    moments: &FlexTensor,
    eps: f32,
    relu: bool,
) -> FlexTensor {
    let shape = dims(x);
    let sz = Sizes::of(&shape);
    let (x, gamma, beta) = (contiguous(x), contiguous(gamma), contiguous(beta));
    let stats = unpack(moments);
    tensor(
        forward_values(sz, values(&x), &stats, values(&gamma), values(&beta), eps, relu),
        shape,
    )
}

fn moments_flex(x: &FlexTensor) -> FlexTensor {
    let sz = Sizes::of(&dims(x));
    let x = contiguous(x);
    let stats = moments(sz, values(&x));
    let packed = stats.iter().map(|s| s.0).chain(stats.iter().map(|s| s.1)).collect();
    tensor(packed, vec![2, sz.c])
}

impl BatchNormOps for Flex {
    fn batch_norm_train(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        moments: FlexTensor,
        epsilon: f32,
        relu: bool,
    ) -> FlexTensor {
        forward_flex(&x, &gamma, &beta, &moments, epsilon, relu)
    }

    fn channel_moments(x: FlexTensor) -> FlexTensor {
        moments_flex(&x)
    }
}

#[derive(Debug)]
struct BatchNormBackward;

/// What the backward pass keeps: x, gamma, the forward pass's moments, epsilon, and with a
/// ReLU the output (no extra memory: the next layer keeps it as its input).
type SavedState = (FlexTensor, FlexTensor, FlexTensor, f32, Option<FlexTensor>);

impl Backward<Flex, 4> for BatchNormBackward {
    type State = SavedState;

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        // The moments come from a detached x: they have no node of their own to feed.
        let [node_x, node_gamma, node_beta, _] = ops.parents;
        let dy = contiguous(&grads.consume::<Flex>(&ops.node));
        let (x, gamma, moments, eps, relu_out) = ops.state;
        let shape = dims(&x);
        let sz = Sizes::of(&shape);
        let (x, gamma) = (contiguous(&x), contiguous(&gamma));
        let stats = unpack(&moments);
        let relu_out = relu_out.map(|out| contiguous(&out));
        let (dx, dgamma, dbeta) = backward_values(
            sz,
            values(&x),
            &stats,
            values(&gamma),
            eps,
            values(&dy),
            relu_out.as_ref().map(values),
        );
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, tensor(dx, shape));
        }
        if let Some(node) = node_gamma {
            grads.register::<Flex>(node.id, tensor(dgamma, vec![sz.c]));
        }
        if let Some(node) = node_beta {
            grads.register::<Flex>(node.id, tensor(dbeta, vec![sz.c]));
        }
    }
}

/// The moments carry no gradient: their backward step gives none.
#[derive(Debug)]
struct NoGradient;

impl Backward<Flex, 1> for NoGradient {
    type State = ();

    fn backward(self, _ops: Ops<Self::State, 1>, _grads: &mut Gradients, _checkpointer: &mut Checkpointer) {}
}

impl<C: CheckpointStrategy> BatchNormOps for Autodiff<Flex, C> {
    fn batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        moments: FloatTensor<Self>,
        epsilon: f32,
        relu: bool,
    ) -> FloatTensor<Self> {
        let prep = BatchNormBackward
            .prepare::<C>([x.node(), gamma.node(), beta.node(), moments.node()])
            .compute_bound()
            .stateful();
        let (x, gamma, beta, moments) = (
            x.primitive().clone(),
            gamma.primitive().clone(),
            beta.primitive().clone(),
            moments.primitive().clone(),
        );
        let out = forward_flex(&x, &gamma, &beta, &moments, epsilon, relu);
        match prep {
            OpsKind::Tracked(prep) => {
                let relu_out = relu.then(|| out.clone());
                prep.finish((x, gamma, moments, epsilon, relu_out), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    fn channel_moments(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let out = moments_flex(x.primitive());
        NoGradient.prepare::<C>([x.node()]).compute_bound().stateless(out)
    }
}

/// Training-mode BatchNorm on the CPU backend, followed by a ReLU when `relu`: the output, and
/// the batch's [2, C] mean and biased variance for the running statistics.
pub fn batch_norm_train<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
    relu: bool,
) -> (Tensor<D>, Tensor<2>) {
    let moments = Tensor::from_dispatch(<Dispatch as BatchNormOps>::channel_moments(
        x.clone().detach().into_dispatch(),
    ));
    let out = Tensor::from_dispatch(<Dispatch as BatchNormOps>::batch_norm_train(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        moments.clone().into_dispatch(),
        epsilon as f32,
        relu,
    ));
    (out, moments)
}
