//! The hand-written operations: each a burn backend extension with its own backward pass (an
//! autodiff node), its CPU loops and, for the perturbation layer, its GPU kernels. The modules
//! of `layer/` call them where [`hand_written`] (or [`fused_perturbation`]) says so, and burn's
//! own operations otherwise; both paths compute the same function, which the tests check.
//!
//! - [`perturb`]: the perturbation layer's noise, activation and grouped 1x1 convolution as one
//!   operation (CPU loops in `perturb/cpu.rs`, CubeCL kernels in `perturb/gpu.rs`).
//! - [`perturb_norm`]: the paper authors' updated first layer's BatchNorm (folded into a scale
//!   and an offset map per mask), sigmoid and grouped 1x1 convolution as one operation.
//! - [`conv1x1`], [`conv`]: 1x1 and k x k convolutions as matrix products; [`winograd`]: the
//!   3x3 stride-1 ones with fewer multiplications.
//! - [`batchnorm`]: BatchNorm in training mode, optionally followed by ReLU.
//! - [`add_relu`]: `relu(a + b)`, the end of every ResNet block.
//! - [`maxpool`]: max pooling.
//! - [`activation`]: the activations these compute, and their constants.
//! - [`cpu`]: what the CPU loops share: output buffers, vector loops, per-thread sums, matrix
//!   products, flex tensors.
//!
//! Adding an operation: a file here with a `#[backend_extension(Flex, Autodiff)]` trait, its
//! `Flex` implementation (the loops), its `Autodiff<Flex>` implementation (the forward pass
//! recorded with a `Backward` node that computes the gradients), and a function on `Tensor`s
//! that the layer calls when [`hand_written`] is true; then a test in `tests/layer.rs` against
//! burn's composition of the same function, values and gradients.

pub mod activation;
pub mod add_relu;
pub mod batchnorm;
pub mod conv;
pub mod conv1x1;
pub mod cpu;
pub mod maxpool;
pub mod perturb;
pub mod perturb_norm;
pub mod winograd;

use burn::tensor::Device;

/// Whether the hand-written CPU operations run on this device: on the CPU backend, unless
/// `PNN_UNFUSED=1` asks for burn's operations everywhere (to measure one against the other, or
/// to rule the kernels out when chasing a problem). On a GPU every layer but the perturbation
/// layer runs burn's operations.
pub fn hand_written(device: &Device) -> bool {
    !unfused() && *device == Device::flex()
}

/// Whether the fused perturbation operation runs on this device: the CPU loops on the CPU, the
/// CubeCL kernels on a GPU (in a build with a GPU feature), unless `PNN_UNFUSED=1`.
pub fn fused_perturbation(device: &Device) -> bool {
    hand_written(device) || (cfg!(feature = "gpu") && !unfused() && *device != Device::flex())
}

fn unfused() -> bool {
    static UNFUSED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *UNFUSED.get_or_init(|| std::env::var("PNN_UNFUSED").is_ok_and(|v| v == "1"))
}
