//! The perturbation layer's core as one fused operation, on the CPU backend (flex) and, in a GPU
//! build, on burn's cubecl backend:
//!
//!   out[n, o] = b[o] + sum_j W[o, j] * act(x[n, c(k)] + level * noise[c(k) or 0, m(k)]),
//!   k = g(o) * Kg + j,  c(k) = k / M,  m(k) = k % M
//!
//! i.e. noise + activation + the (grouped) 1x1 convolution. The unfused composition stores the
//! N x C x M x H x W perturbed maps (and their activation) for the backward pass: 33.5 MB per
//! image per layer with 64 masks. Here they are computed a tile at a time into a small scratch
//! buffer and recomputed in the backward pass, so nothing of that size is kept; without an
//! activation they are not formed at all (the layer is then linear in x). The CPU loops are in
//! `cpu.rs`, the GPU kernels (CubeCL) in `gpu.rs` with their cubecl backend extension in
//! `gpu_extension.rs`; this file is the operation's place in burn.
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
use burn::tensor::Tensor;

use super::activation::{FusedAct, act};
use super::cpu::flex_tensor::{contiguous, dims, tensor, values};
use cpu::{Operands, PerturbSizes};

pub mod cpu;
#[cfg(feature = "gpu")]
pub mod gpu;
#[cfg(feature = "gpu")]
pub mod gpu_extension;

use cpu as kernels;

/// Runs `$body` with `$A` the activation type of `$act`: one compiled kernel per activation.
macro_rules! with_activation {
    ($act:expr, $A:ident => $body:expr) => {
        match $act {
            FusedAct::Identity => {
                type $A = act::Identity;
                $body
            }
            FusedAct::Relu => {
                type $A = act::Relu;
                $body
            }
            FusedAct::Lrelu => {
                type $A = act::Lrelu;
                $body
            }
            FusedAct::Elu => {
                type $A = act::Elu;
                $body
            }
            FusedAct::Selu => {
                type $A = act::Selu;
                $body
            }
            FusedAct::Tanh => {
                type $A = act::Tanh;
                $body
            }
            FusedAct::Sigmoid => {
                type $A = act::Sigmoid;
                $body
            }
        }
    };
}

/// Whether the linear path runs: no activation and whole channels per group, unless
/// `PNN_FUSED_GENERAL=1` asks for the general kernel (to check one against the other).
fn use_linear_path(act: FusedAct, g: &PerturbSizes) -> bool {
    static GENERAL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let general = *GENERAL.get_or_init(|| std::env::var("PNN_FUSED_GENERAL").is_ok_and(|v| v == "1"));
    act == FusedAct::Identity && !general && kernels::linear_applies(g)
}

#[backend_extension(Flex, Cube: cfg(feature = "gpu"), Autodiff)]
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

/// Gradients of one call: for x, the masks (when asked for), the weights and the bias.
pub struct FusedGrads<B: burn::backend::Backend> {
    pub x: FloatTensor<B>,
    pub noise: Option<FloatTensor<B>>,
    pub weight: FloatTensor<B>,
    pub bias: FloatTensor<B>,
}

/// The fused layer's two passes on one backend: flex's loops (`cpu.rs`) or the CubeCL
/// kernels (`gpu.rs`). Autodiff's node below is written once over this.
pub trait FusedKernels: burn::backend::Backend {
    fn fused_forward(
        x: FloatTensor<Self>,
        noise: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        level: f32,
        act: FusedAct,
    ) -> FloatTensor<Self>;

    fn fused_backward(
        x: FloatTensor<Self>,
        noise: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        level: f32,
        act: FusedAct,
        need_noise: bool,
    ) -> FusedGrads<Self>;
}

/// The CPU loops' view of contiguous operands.
fn operands<'a>(
    g: &'a PerturbSizes,
    x: &'a FlexTensor,
    noise: &'a FlexTensor,
    weight: &'a FlexTensor,
    level: f32,
) -> Operands<'a> {
    Operands {
        g,
        x: values(x),
        noise: values(noise),
        weight: values(weight),
        level,
    }
}

impl FusedKernels for Flex {
    fn fused_forward(
        x: FlexTensor,
        noise: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        level: f32,
        act: FusedAct,
    ) -> FlexTensor {
        let g = PerturbSizes::of(&dims(&x), &dims(&noise), &dims(&weight));
        let [x, noise, weight, bias] = [x, noise, weight, bias].map(|t| contiguous(&t));
        let op = operands(&g, &x, &noise, &weight, level);
        let out = if use_linear_path(act, &g) {
            kernels::linear_forward(&op, values(&bias))
        } else {
            with_activation!(act, A => kernels::forward::<A>(&op, values(&bias)))
        };
        tensor(out, vec![g.n, g.o, g.h, g.w])
    }

    fn fused_backward(
        x: FlexTensor,
        noise: FlexTensor,
        weight: FlexTensor,
        grad: FlexTensor,
        level: f32,
        act: FusedAct,
        need_noise: bool,
    ) -> FusedGrads<Self> {
        let (x_dims, noise_dims, weight_dims) = (dims(&x), dims(&noise), dims(&weight));
        let g = PerturbSizes::of(&x_dims, &noise_dims, &weight_dims);
        let [x, noise, weight, grad] = [x, noise, weight, grad].map(|t| contiguous(&t));
        let op = operands(&g, &x, &noise, &weight, level);
        let d = if use_linear_path(act, &g) {
            kernels::linear_backward(&op, values(&grad), need_noise)
        } else {
            with_activation!(act, A => kernels::backward::<A>(&op, values(&grad), need_noise))
        };
        FusedGrads {
            x: tensor(d.x, x_dims),
            noise: need_noise.then(|| tensor(d.noise, noise_dims)),
            weight: tensor(d.weight, weight_dims),
            bias: tensor(d.bias, vec![g.o]),
        }
    }
}

/// burn's cubecl backend (fused by burn in a `gpu-fusion` build): the kernels of `gpu.rs`,
/// through the extension of `gpu_extension.rs`.
#[cfg(feature = "gpu")]
impl FusedKernels for burn::backend::Cube {
    fn fused_forward(
        x: FloatTensor<Self>,
        noise: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        level: f32,
        act: FusedAct,
    ) -> FloatTensor<Self> {
        use gpu_extension::CubePerturbOps;
        Self::cube_perturb_forward(x, noise, weight, bias, level, act.code())
    }

    fn fused_backward(
        x: FloatTensor<Self>,
        noise: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        level: f32,
        act: FusedAct,
        need_noise: bool,
    ) -> FusedGrads<Self> {
        use gpu_extension::CubePerturbOps;
        let noise_grad = need_noise.then(|| {
            Self::cube_perturb_noise_grad(
                x.clone(),
                noise.clone(),
                weight.clone(),
                grad.clone(),
                level,
                act.code(),
            )
        });
        let (dx, dweight, dbias) = Self::cube_perturb_input_grads(x, noise, weight, grad, level, act.code());
        FusedGrads {
            x: dx,
            noise: noise_grad,
            weight: dweight,
            bias: dbias,
        }
    }
}

/// Without autodiff the operation is the backend's forward kernel (Flex, and Cube in a GPU build).
impl<B: FusedKernels> PerturbOps for B {
    fn perturb_combine(
        x: FloatTensor<Self>,
        noise: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        level: f32,
        act: u8,
    ) -> FloatTensor<Self> {
        Self::fused_forward(x, noise, weight, bias, level, FusedAct::from_code(act))
    }
}

#[derive(Debug)]
struct PerturbCombineBackward;

impl<B: FusedKernels> Backward<B, 4> for PerturbCombineBackward {
    /// The operands (x, noise, weight): the perturbed maps are recomputed from them.
    type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, f32, u8);

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_x, node_noise, node_weight, node_bias] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x, noise, weight, level, act) = ops.state;
        let d = B::fused_backward(
            x,
            noise,
            weight,
            grad,
            level,
            FusedAct::from_code(act),
            node_noise.is_some(),
        );
        if let Some(node) = node_x {
            grads.register::<B>(node.id, d.x);
        }
        if let (Some(node), Some(dnoise)) = (node_noise, d.noise) {
            grads.register::<B>(node.id, dnoise);
        }
        if let Some(node) = node_weight {
            grads.register::<B>(node.id, d.weight);
        }
        if let Some(node) = node_bias {
            grads.register::<B>(node.id, d.bias);
        }
    }
}

impl<B: FusedKernels, C: CheckpointStrategy> PerturbOps for Autodiff<B, C> {
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
        let out = B::fused_forward(
            x.clone(),
            noise.clone(),
            weight.clone(),
            bias,
            level,
            FusedAct::from_code(act),
        );
        match prep {
            OpsKind::Tracked(prep) => prep.finish((x, noise, weight, level, act), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }
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
