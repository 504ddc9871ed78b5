//! The fused layer's GPU kernels (`gpu.rs`) as a burn backend extension of the cubecl
//! backend. Through it, a build with burn's operation fusion (the `gpu-fusion` feature) queues
//! the kernels in fusion's lazy stream like any of burn's own operations: burn then fuses the
//! element-wise work around them (BatchNorm's arithmetic, ReLU, the residual additions) into
//! fewer kernels, and runs these three as they are. Without fusion the calls go straight to the
//! kernels.
//!
//! The backward pass is two operations (the mask gradient apart) because an extension's outputs
//! must be known from its inputs' shapes alone: one call whose fourth output exists only with
//! trainable masks cannot say so. The kernels were separate launches anyway.

use burn::backend::backend_extension;
#[cfg(feature = "gpu-fusion")]
use burn::backend::fusion::custom::TensorSpec;
use burn::backend::tensor::FloatTensor;
use burn::tensor::Shape;
use burn_cubecl::CubeBackend;

use super::gpu;
use crate::ops::activation::FusedAct;

/// The output of `x` [N, C, H, W] through a weight [O, Kg, 1, 1]: [N, O, H, W].
pub fn output_shape(x: &Shape, weight: &Shape) -> Shape {
    Shape::new([x[0], weight[0], x[2], x[3]])
}

/// The shapes of (dx, dweight, dbias): x's, the weight's and [O].
#[cfg(feature = "gpu-fusion")]
fn input_grads_meta(
    x: &TensorSpec,
    _noise: &TensorSpec,
    weight: &TensorSpec,
    _grad: &TensorSpec,
    _level: &f32,
    _act: &u8,
) -> (TensorSpec, TensorSpec, TensorSpec) {
    let bias = TensorSpec::new(Shape::new([weight.shape[0]]), weight.dtype);
    (x.clone(), weight.clone(), bias)
}

#[backend_extension(Cube, Fusion: cfg(feature = "gpu-fusion"))]
pub trait CubePerturbOps: burn::backend::Backend {
    /// `b + W * act(x + level * noise)`; `act` is a `FusedAct` code.
    #[fusion(dtype = x, shape = output_shape(x, weight))]
    fn cube_perturb_forward(
        x: FloatTensor<Self>,
        noise: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        level: f32,
        act: u8,
    ) -> FloatTensor<Self>;

    /// The gradients of x, the weight and the bias, from the output's gradient `grad`.
    #[fusion(meta = input_grads_meta)]
    fn cube_perturb_input_grads(
        x: FloatTensor<Self>,
        noise: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        level: f32,
        act: u8,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// The masks' gradient (trainable masks only).
    #[fusion(dtype = noise, shape = noise)]
    fn cube_perturb_noise_grad(
        x: FloatTensor<Self>,
        noise: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        level: f32,
        act: u8,
    ) -> FloatTensor<Self>;
}

impl CubePerturbOps for CubeBackend {
    fn cube_perturb_forward(
        x: FloatTensor<Self>,
        noise: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        level: f32,
        act: u8,
    ) -> FloatTensor<Self> {
        gpu::forward(x, noise, weight, bias, level, FusedAct::from_code(act))
    }

    fn cube_perturb_input_grads(
        x: FloatTensor<Self>,
        noise: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        level: f32,
        act: u8,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        gpu::input_grads(x, noise, weight, grad, level, FusedAct::from_code(act))
    }

    fn cube_perturb_noise_grad(
        x: FloatTensor<Self>,
        noise: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        level: f32,
        act: u8,
    ) -> FloatTensor<Self> {
        gpu::noise_grad(x, noise, weight, grad, level, FusedAct::from_code(act))
    }
}
