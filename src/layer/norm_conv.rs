//! Convolution followed by BatchNorm: the residual shortcut of every ResNet here, and the stems.

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

use super::batchnorm::BatchNorm;
use super::conv::{self, ConvSpec};
use crate::ops;

#[derive(Module, Debug)]
pub struct ConvBn {
    pub conv: Conv2d,
    pub bn: BatchNorm,
}

impl ConvBn {
    pub fn new(spec: ConvSpec, device: &Device) -> Self {
        let out = spec.out_channels;
        Self {
            conv: spec.init(device),
            bn: BatchNorm::new(out, device),
        }
    }

    /// The ResNet projection shortcut: 1x1 convolution with stride, no bias, then BatchNorm.
    pub fn shortcut(in_channels: usize, out_channels: usize, stride: usize, device: &Device) -> Self {
        Self::new(
            ConvSpec::new(in_channels, out_channels, 1).stride(stride).bias(false),
            device,
        )
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.bn.forward(conv::forward(&self.conv, x))
    }

    /// `relu(self.forward(x))`, BatchNorm and ReLU in one pass where the CPU kernel runs.
    pub fn forward_relu(&self, x: Tensor<4>) -> Tensor<4> {
        self.bn.forward_relu(conv::forward(&self.conv, x))
    }
}

/// The projection shortcut a ResNet block needs when it changes the map size or the width;
/// `None` where the identity fits.
pub fn projection_shortcut(in_planes: usize, planes: usize, stride: usize, device: &Device) -> Option<ConvBn> {
    (stride != 1 || in_planes != planes).then(|| ConvBn::shortcut(in_planes, planes, stride, device))
}

/// The end of every ResNet block: `relu(y + shortcut(x))`.
pub fn residual_relu(y: Tensor<4>, x: Tensor<4>, shortcut: &Option<ConvBn>) -> Tensor<4> {
    let residual = match shortcut {
        Some(s) => s.forward(x),
        None => x,
    };
    if ops::hand_written(&y.device()) && y.dims() == residual.dims() {
        ops::add_relu::add_relu(y, residual)
    } else {
        relu(y + residual)
    }
}

/// Average over each whole feature map: [N, C, H, W] -> [N, C].
///
/// The reference pools with a fixed size chosen in main.py (4 for CIFAR, 1 after a 7x7 stem);
/// in every configuration where the reference runs, that size equals the final map's, so this
/// is the same operation, and it also works where the fixed size does not fit (the reference
/// crashes there).
pub fn global_average_pool(x: Tensor<4>) -> Tensor<2> {
    let [n, c, _, _] = x.dims();
    x.mean_dim(3).mean_dim(2).reshape([n, c])
}
