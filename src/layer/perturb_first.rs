//! The first layer of the paper authors' updated `perturb_resnet18` (`PerturbLayerFirst` in
//! juefeix/pnn.pytorch.update), chosen by `--code update`.
//!
//! Each input channel gets 5 x nfilters masks at 20 times the noise level; the perturbed maps
//! are normalised by BatchNorm *before* the activation (a sigmoid, whatever `--act` says), and
//! a 1x1 convolution grouped by input channel brings them to 3 x nfilters maps, then BatchNorm
//! and sigmoid again. The model follows it with a 1x1 convolution to nfilters, BatchNorm and
//! its `--act`. With a first filter size above 0 the update's layer is a plain convolution to
//! 3 x nfilters maps with BatchNorm and sigmoid, which `PerturbLayer` already is.

use burn::module::{Module, Param};
use burn::nn::conv::Conv2d;
use burn::tensor::activation::sigmoid;
use burn::tensor::{Device, Tensor};

use super::activation::Activation;
use super::batchnorm::BatchNorm;
use super::conv::{self, ConvSpec};
use super::norm_conv::ConvBn;
use super::perturb::{MixMaps, PerturbLayer, PerturbSpec};
use super::pool::Pool;
use crate::config::{Act, PoolType};
use crate::ops;

/// Masks per input channel, per filter of the model: the update's `nmasks = nfilters * 5`.
pub const MASKS_PER_FILTER: usize = 5;
/// The first layer's noise level, relative to `--level * --scale_noise`: the update's `* 20`.
pub const LEVEL_FACTOR: f64 = 20.0;
/// Output maps per input channel, per filter of the model: the update's `3 * nfilters` for RGB.
pub const MAPS_PER_FILTER: usize = 3;

/// The noise path: x + level * masks -> BatchNorm -> sigmoid -> grouped 1x1 -> BatchNorm -> sigmoid.
#[derive(Module, Debug)]
pub struct PerturbFirstNoise {
    /// [1, C or 1, M, H, W], as `PerturbLayer`'s masks.
    pub noise: Param<Tensor<5>>,
    /// BatchNorm over the C x M perturbed maps.
    pub bn_perturbed: BatchNorm,
    /// 1x1 convolution, grouped by input channel (C x M -> out).
    pub conv: Conv2d,
    pub bn: BatchNorm,
    pub mix: Option<MixMaps>,
    pub level: f64,
}

/// `PerturbLayerFirst`: the noise path, or a convolution layer for a first filter size above 0.
#[derive(Module, Debug)]
pub enum PerturbFirstLayer {
    Noise(PerturbFirstNoise),
    Conv(PerturbLayer),
}

/// The update's first block: `PerturbLayerFirst`, MaxPool(3, 2, 1) after a 7x7 first layer,
/// then 1x1 convolution (no bias), BatchNorm and the model's `--act`.
#[derive(Module, Debug)]
pub struct PerturbFirst {
    pub layer: PerturbFirstLayer,
    pub pool: Option<Pool>,
    pub reduce: ConvBn,
    /// The update's model-level `act` module, used only here.
    pub act: Activation,
}

impl PerturbFirst {
    /// `spec` is the model's first-layer spec (`--level * --scale_noise`, out = nfilters); the
    /// update's multipliers are applied here.
    pub fn new(spec: &PerturbSpec, device: &Device) -> Self {
        let nfilters = spec.out_channels;
        let wide = MAPS_PER_FILTER * nfilters;
        let layer = if spec.filter_size > 0 {
            PerturbFirstLayer::Conv(
                PerturbSpec {
                    out_channels: wide,
                    act: Act::Sigmoid,
                    ..*spec
                }
                .init(device),
            )
        } else {
            let spec = PerturbSpec {
                out_channels: wide,
                nmasks: MASKS_PER_FILTER * nfilters,
                level: spec.level * LEVEL_FACTOR,
                ..*spec
            };
            let maps = spec.in_channels * spec.nmasks;
            PerturbFirstLayer::Noise(PerturbFirstNoise {
                noise: spec.draw_masks(device),
                bn_perturbed: BatchNorm::new(maps, device),
                conv: ConvSpec::new(maps, wide, 1).groups(spec.in_channels).init(device),
                bn: BatchNorm::new(wide, device),
                mix: spec.mix_maps.then(|| MixMaps {
                    conv: ConvSpec::new(wide, wide, 1).init(device),
                    bn: BatchNorm::new(wide, device),
                }),
                level: spec.level,
            })
        };
        Self {
            layer,
            pool: (spec.filter_size == 7).then(|| Pool::new(PoolType::Max, 3, 2, 1)),
            reduce: ConvBn::new(ConvSpec::new(wide, nfilters, 1).bias(false), device),
            act: Activation::new(spec.act, device),
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = match &self.layer {
            PerturbFirstLayer::Noise(noise) => noise.forward(x),
            PerturbFirstLayer::Conv(conv) => conv.forward(x),
        };
        let y = match &self.pool {
            Some(pool) => pool.forward(y),
            None => y,
        };
        match self.act.kind {
            // BatchNorm and ReLU in one pass where the CPU kernel runs.
            Act::Relu => self.reduce.forward_relu(y),
            _ => self.act.forward(self.reduce.forward(y)),
        }
    }
}

impl PerturbFirstNoise {
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = if ops::hand_written(&x.device()) {
            self.combine_fused(x)
        } else {
            self.combine_unfused(x)
        };
        let y = sigmoid(self.bn.forward(y));
        match &self.mix {
            Some(mix) => sigmoid(mix.bn.forward(conv::forward(&mix.conv, y))),
            None => y,
        }
    }

    /// `conv(sigmoid(bn(x + level * noise)))` as the update writes it: the perturbed maps
    /// [N, C x M, H, W] formed and normalised whole.
    pub fn combine_unfused(&self, x: Tensor<4>) -> Tensor<4> {
        let [n, c, h, w] = x.dims();
        let nmasks = self.noise.dims()[2];
        // [N, C, 1, H, W] + [1, C or 1, M, H, W] -> [N, C x M, H, W], channel c * M + m.
        let y = x.unsqueeze_dim::<5>(2) + self.noise.val().mul_scalar(self.level);
        let y = sigmoid(self.bn_perturbed.forward(y.reshape([n, c * nmasks, h, w])));
        conv::forward(&self.conv, y)
    }

    /// The same by `ops::perturb_norm`: BatchNorm of the perturbed maps folded into a scale and
    /// an offset map per mask, its batch statistics made from sums over x and the masks.
    pub fn combine_fused(&self, x: Tensor<4>) -> Tensor<4> {
        let [n, c, h, w] = x.dims();
        let [_, noise_channels, m, _, _] = self.noise.dims();
        let p = h * w;
        let level = self.level;
        // The masks of every channel, [C, M, P] (shared masks repeated).
        let noise = self.noise.val().reshape([noise_channels, m, p]);
        let noise = if noise.dims()[0] == c {
            noise
        } else {
            noise.repeat_dim(0, c)
        };
        let training = x.device().is_autodiff();
        let batch = training.then(|| {
            // Moments over (N, H, W) of y = x + level * noise for each (c, m): mean(x) +
            // level * mean(noise), and var(x) + level^2 var(noise) + 2 level cov(x, noise), with
            // cov from the batch's mean image.
            let xc = x.clone().swap_dims(0, 1).reshape([c as i32, -1]);
            let mean_x = xc.clone().mean_dim(1);
            let var_x = (xc - mean_x.clone()).powi_scalar(2).mean_dim(1);
            let mean_image = x.clone().mean_dim(0).reshape([c, p, 1]);
            let mean_noise = noise.clone().mean_dim(2);
            let var_noise = (noise.clone() - mean_noise.clone()).powi_scalar(2).mean_dim(2);
            let cov = noise.clone().matmul(mean_image).div_scalar(p as f64)
                - mean_noise.clone() * mean_x.clone().reshape([c, 1, 1]);
            let mean = mean_x.clone().reshape([c, 1, 1]) + mean_noise.mul_scalar(level);
            let var = var_x.reshape([c, 1, 1]) + var_noise.mul_scalar(level * level) + cov.mul_scalar(2.0 * level);
            (mean.reshape([c * m]), var.reshape([c * m]), n * p)
        });
        let (scale, center) = self.bn_perturbed.scale_and_center(batch);
        let (scale, center) = (scale.reshape([c, m, 1]), center.reshape([c, m, 1]));
        let beta = self.bn_perturbed.bias.val().reshape([c, m, 1]);
        let shift = scale.clone() * (noise.mul_scalar(level) - center) + beta;
        let bias = self
            .conv
            .bias
            .as_ref()
            .expect("the update's 1x1 convolution has a bias")
            .val();
        ops::perturb_norm::combine(
            x,
            scale.reshape([c, m]),
            shift.reshape([c, m, h, w]),
            self.conv.weight.val(),
            bias,
        )
    }
}
