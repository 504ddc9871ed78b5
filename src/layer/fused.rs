//! The perturbation layer's core as one fused operation on the CPU backend (flex):
//!
//!   out[n, o] = b[o] + sum_j W[o, j] * act(x[n, c(k)] + level * noise[c(k) or 0, m(k)]),
//!   k = g(o) * Kg + j,  c(k) = k / M,  m(k) = k % M
//!
//! i.e. noise + activation + the (grouped) 1x1 convolution. The unfused composition stores the
//! N x C x M x H x W perturbed maps (and their activation) for the backward pass: 33.5 MB per
//! image per layer with 64 masks. Here they are computed sample by sample, group by group, into
//! a small scratch buffer, and recomputed in the backward pass, so nothing of that size is kept.
//!
//! The backward pass is written by hand (burn's backend extension with an `Autodiff` node):
//! gradients for x, the masks (when trainable), the weights and the bias. Activations with a
//! learnable or random slope (PReLU, RReLU in training) stay on the unfused path.

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Dispatch, Flex, backend_extension};
use burn::tensor::{DType, Device, Tensor, TensorData};
use rayon::prelude::*;

use crate::config::Act;

/// Activations the fused kernel computes (and differentiates) itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FusedAct {
    /// No activation after the perturbation (`--use_act` off in a first layer).
    Identity,
    Relu,
    Lrelu,
    Elu,
    Selu,
    Tanh,
    Sigmoid,
}

const SELU_SCALE: f32 = 1.050_700_987_355_480_5;
const SELU_ALPHA: f32 = 1.673_263_242_354_377_3;
const LRELU_SLOPE: f32 = 0.01;

impl FusedAct {
    /// The fused form of `act` (applied only if `use_act`); `None` for PReLU and RReLU.
    pub fn of(act: Act, use_act: bool) -> Option<Self> {
        if !use_act {
            return Some(Self::Identity);
        }
        match act {
            Act::Relu => Some(Self::Relu),
            Act::Lrelu => Some(Self::Lrelu),
            Act::Elu => Some(Self::Elu),
            Act::Selu => Some(Self::Selu),
            Act::Tanh => Some(Self::Tanh),
            Act::Sigmoid => Some(Self::Sigmoid),
            Act::Prelu | Act::Rrelu => None,
        }
    }

    fn code(self) -> u8 {
        self as u8
    }

    fn from_code(code: u8) -> Self {
        [
            Self::Identity,
            Self::Relu,
            Self::Lrelu,
            Self::Elu,
            Self::Selu,
            Self::Tanh,
            Self::Sigmoid,
        ][code as usize]
    }

    #[inline(always)]
    fn apply(self, v: f32) -> f32 {
        match self {
            Self::Identity => v,
            Self::Relu => v.max(0.0),
            Self::Lrelu => {
                if v > 0.0 {
                    v
                } else {
                    LRELU_SLOPE * v
                }
            }
            Self::Elu => {
                if v > 0.0 {
                    v
                } else {
                    v.exp_m1()
                }
            }
            Self::Selu => {
                if v > 0.0 {
                    SELU_SCALE * v
                } else {
                    SELU_SCALE * SELU_ALPHA * v.exp_m1()
                }
            }
            Self::Tanh => v.tanh(),
            Self::Sigmoid => 1.0 / (1.0 + (-v).exp()),
        }
    }

    /// d act / d v at `v`, given `a = act(v)`.
    #[inline(always)]
    fn derivative(self, v: f32, a: f32) -> f32 {
        match self {
            Self::Identity => 1.0,
            Self::Relu => {
                if v > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            Self::Lrelu => {
                if v > 0.0 {
                    1.0
                } else {
                    LRELU_SLOPE
                }
            }
            Self::Elu => {
                if v > 0.0 {
                    1.0
                } else {
                    a + 1.0
                }
            }
            Self::Selu => {
                if v > 0.0 {
                    SELU_SCALE
                } else {
                    a + SELU_SCALE * SELU_ALPHA
                }
            }
            Self::Tanh => 1.0 - a * a,
            Self::Sigmoid => a * (1.0 - a),
        }
    }
}

#[backend_extension(Flex, Autodiff)]
pub trait PerturbOps: burn::backend::Backend {
    /// `b + W * act(x + level * noise)` as described in the module documentation.
    /// x [N, C, H, W]; noise [1, C or 1, M, H, W]; weight [O, Kg, 1, 1]; bias [O].
    fn perturb_combine(
        x: FloatTensor<Self>,
        noise: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        level: f32,
        act: u8,
    ) -> FloatTensor<Self>;
}

/// Sizes of one call, read off the operands' shapes.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    n: usize,
    c: usize,
    hw: usize,
    h: usize,
    w: usize,
    /// Masks per input channel.
    m: usize,
    /// Mask channels: C (unique masks) or 1 (shared).
    noise_c: usize,
    o: usize,
    groups: usize,
    /// Perturbed maps per group (the weight's second dimension).
    kg: usize,
    /// Outputs per group.
    og: usize,
}

impl Geometry {
    fn of(x: &[usize], noise: &[usize], weight: &[usize]) -> Self {
        let [n, c, h, w] = [x[0], x[1], x[2], x[3]];
        let (noise_c, m) = (noise[1], noise[2]);
        let (o, kg) = (weight[0], weight[1]);
        let groups = c * m / kg;
        assert!(
            noise[3] == h && noise[4] == w && (noise_c == c || noise_c == 1) && kg * groups == c * m && o % groups == 0,
            "perturb_combine: inconsistent shapes x {x:?}, noise {noise:?}, weight {weight:?}"
        );
        Self {
            n,
            c,
            hw: h * w,
            h,
            w,
            m,
            noise_c,
            o,
            groups,
            kg,
            og: o / groups,
        }
    }

    /// Input channel and mask of perturbed map `k`, and the offset of that mask in `noise`.
    #[inline(always)]
    fn source(&self, k: usize) -> (usize, usize) {
        let (c, m) = (k / self.m, k % self.m);
        let noise_channel = if self.noise_c == 1 { 0 } else { c };
        (c, (noise_channel * self.m + m) * self.hw)
    }
}

fn dims(t: &FlexTensor) -> Vec<usize> {
    t.layout().shape().to_vec()
}

/// `t` laid out contiguously in f32: the same storage (a reference-count bump) when it already
/// is, so the kernels read the operands in place.
fn contiguous(t: &FlexTensor) -> FlexTensor {
    assert_eq!(t.dtype(), DType::F32, "the fused perturbation layer computes in f32");
    if t.as_slice::<f32>().is_some() {
        t.clone()
    } else {
        t.to_contiguous()
    }
}

/// The values of a tensor returned by [`contiguous`].
fn values(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("a contiguous f32 tensor")
}

fn tensor(values: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// Fills `pre` and `post` (Kg x HW each) with the perturbed maps of group `group` of sample `n`,
/// before and after the activation.
#[allow(clippy::too_many_arguments)]
fn perturb_group(
    g: &Geometry,
    x: &[f32],
    noise: &[f32],
    level: f32,
    act: FusedAct,
    n: usize,
    group: usize,
    pre: &mut [f32],
    post: &mut [f32],
) {
    let hw = g.hw;
    for j in 0..g.kg {
        let (c, noise_at) = g.source(group * g.kg + j);
        let xs = &x[(n * g.c + c) * hw..][..hw];
        let ns = &noise[noise_at..][..hw];
        let pre_j = &mut pre[j * hw..][..hw];
        let post_j = &mut post[j * hw..][..hw];
        for i in 0..hw {
            let v = xs[i] + level * ns[i];
            pre_j[i] = v;
            post_j[i] = act.apply(v);
        }
    }
}

fn forward_kernel(
    g: &Geometry,
    x: &[f32],
    noise: &[f32],
    weight: &[f32],
    bias: &[f32],
    level: f32,
    act: FusedAct,
) -> Vec<f32> {
    let hw = g.hw;
    let mut out = vec![0f32; g.n * g.o * hw];
    out.par_chunks_mut(g.o * hw).enumerate().for_each(|(n, out_n)| {
        let mut pre = vec![0f32; g.kg * hw];
        let mut post = vec![0f32; g.kg * hw];
        for group in 0..g.groups {
            perturb_group(g, x, noise, level, act, n, group, &mut pre, &mut post);
            for oo in 0..g.og {
                let o = group * g.og + oo;
                let row = &mut out_n[o * hw..][..hw];
                row.fill(bias[o]);
                for (j, &wv) in weight[o * g.kg..][..g.kg].iter().enumerate() {
                    for (r, p) in row.iter_mut().zip(&post[j * hw..][..hw]) {
                        *r += wv * p;
                    }
                }
            }
        }
    });
    out
}

/// Gradients of one call: for x, the masks, the weights and the bias.
struct Grads {
    x: Vec<f32>,
    noise: Vec<f32>,
    weight: Vec<f32>,
    bias: Vec<f32>,
}

/// Per-thread sums over samples of the parameter gradients.
struct Partial {
    noise: Vec<f32>,
    weight: Vec<f32>,
    bias: Vec<f32>,
}

impl Partial {
    fn zeros(g: &Geometry, need_noise: bool) -> Self {
        Self {
            noise: vec![0.0; if need_noise { g.noise_c * g.m * g.hw } else { 0 }],
            weight: vec![0.0; g.o * g.kg],
            bias: vec![0.0; g.o],
        }
    }

    fn add(mut self, other: Self) -> Self {
        for (a, b) in [
            (&mut self.noise, &other.noise),
            (&mut self.weight, &other.weight),
            (&mut self.bias, &other.bias),
        ] {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
        }
        self
    }
}

#[allow(clippy::too_many_arguments)]
fn backward_kernel(
    g: &Geometry,
    x: &[f32],
    noise: &[f32],
    weight: &[f32],
    level: f32,
    act: FusedAct,
    grad_out: &[f32],
    need_noise: bool,
) -> Grads {
    let hw = g.hw;
    let mut dx = vec![0f32; g.n * g.c * hw];
    let partial = dx
        .par_chunks_mut(g.c * hw)
        .enumerate()
        .fold(
            || Partial::zeros(g, need_noise),
            |mut acc, (n, dx_n)| {
                let mut pre = vec![0f32; g.kg * hw];
                let mut post = vec![0f32; g.kg * hw];
                let mut dpost = vec![0f32; g.kg * hw];
                for group in 0..g.groups {
                    perturb_group(g, x, noise, level, act, n, group, &mut pre, &mut post);
                    dpost.fill(0.0);
                    for oo in 0..g.og {
                        let o = group * g.og + oo;
                        let go = &grad_out[(n * g.o + o) * hw..][..hw];
                        acc.bias[o] += go.iter().sum::<f32>();
                        for j in 0..g.kg {
                            let p = &post[j * hw..][..hw];
                            acc.weight[o * g.kg + j] += go.iter().zip(p).map(|(a, b)| a * b).sum::<f32>();
                            let wv = weight[o * g.kg + j];
                            for (d, gv) in dpost[j * hw..][..hw].iter_mut().zip(go) {
                                *d += wv * gv;
                            }
                        }
                    }
                    // Through the activation to the perturbed input x + level * noise.
                    for j in 0..g.kg {
                        let (c, noise_at) = g.source(group * g.kg + j);
                        let dx_c = &mut dx_n[c * hw..][..hw];
                        for i in 0..hw {
                            let k = j * hw + i;
                            let d = dpost[k] * act.derivative(pre[k], post[k]);
                            dx_c[i] += d;
                            if need_noise {
                                acc.noise[noise_at + i] += level * d;
                            }
                        }
                    }
                }
                acc
            },
        )
        .reduce(|| Partial::zeros(g, need_noise), Partial::add);
    Grads {
        x: dx,
        noise: partial.noise,
        weight: partial.weight,
        bias: partial.bias,
    }
}

fn forward_flex(
    x: &FlexTensor,
    noise: &FlexTensor,
    weight: &FlexTensor,
    bias: &FlexTensor,
    level: f32,
    act: u8,
) -> FlexTensor {
    let g = Geometry::of(&dims(x), &dims(noise), &dims(weight));
    let (x, noise, weight, bias) = (contiguous(x), contiguous(noise), contiguous(weight), contiguous(bias));
    let out = forward_kernel(
        &g,
        values(&x),
        values(&noise),
        values(&weight),
        values(&bias),
        level,
        FusedAct::from_code(act),
    );
    tensor(out, vec![g.n, g.o, g.h, g.w])
}

impl PerturbOps for Flex {
    fn perturb_combine(
        x: FloatTensor<Self>,
        noise: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        level: f32,
        act: u8,
    ) -> FloatTensor<Self> {
        forward_flex(&x, &noise, &weight, &bias, level, act)
    }
}

#[derive(Debug)]
struct PerturbCombineBackward;

impl Backward<Flex, 4> for PerturbCombineBackward {
    /// The operands (x, noise, weight): the perturbed maps are recomputed from them.
    type State = (FlexTensor, FlexTensor, FlexTensor, f32, u8);

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_x, node_noise, node_weight, node_bias] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let (x, noise, weight, level, act) = ops.state;
        let (x_dims, noise_dims, weight_dims) = (dims(&x), dims(&noise), dims(&weight));
        let g = Geometry::of(&x_dims, &noise_dims, &weight_dims);
        let (x, noise, weight, grad) = (
            contiguous(&x),
            contiguous(&noise),
            contiguous(&weight),
            contiguous(&grad),
        );
        let d = backward_kernel(
            &g,
            values(&x),
            values(&noise),
            values(&weight),
            level,
            FusedAct::from_code(act),
            values(&grad),
            node_noise.is_some(),
        );
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, tensor(d.x, x_dims));
        }
        if let Some(node) = node_noise {
            grads.register::<Flex>(node.id, tensor(d.noise, noise_dims));
        }
        if let Some(node) = node_weight {
            grads.register::<Flex>(node.id, tensor(d.weight, weight_dims));
        }
        if let Some(node) = node_bias {
            grads.register::<Flex>(node.id, tensor(d.bias, vec![g.o]));
        }
    }
}

impl<C: CheckpointStrategy> PerturbOps for Autodiff<Flex, C> {
    fn perturb_combine(
        x: FloatTensor<Self>,
        noise: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        level: f32,
        act: u8,
    ) -> FloatTensor<Self> {
        let prep = PerturbCombineBackward
            .prepare::<C>([x.node(), noise.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful();
        let (x, noise, weight, bias) = (
            x.primitive().clone(),
            noise.primitive().clone(),
            weight.primitive().clone(),
            bias.primitive().clone(),
        );
        let out = forward_flex(&x, &noise, &weight, &bias, level, act);
        match prep {
            OpsKind::Tracked(prep) => prep.finish((x, noise, weight, level, act), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }
}

/// Whether the fused kernel runs on this device: the CPU backend (GPU builds use the unfused
/// composition), unless `PNN_UNFUSED=1` asks for the composition everywhere (to measure one
/// against the other, or to rule the kernel out when chasing a problem).
pub fn available(device: &Device) -> bool {
    static UNFUSED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let unfused = *UNFUSED.get_or_init(|| std::env::var("PNN_UNFUSED").is_ok_and(|v| v == "1"));
    !unfused && *device == Device::flex()
}

/// `bias + weight * act(x + level * noise)`, fused: see the module documentation.
pub fn perturb_combine(
    x: Tensor<4>,
    noise: Tensor<5>,
    weight: Tensor<4>,
    bias: Tensor<1>,
    level: f32,
    act: FusedAct,
) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as PerturbOps>::perturb_combine(
        x.into_dispatch(),
        noise.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
        level,
        act.code(),
    ))
}
