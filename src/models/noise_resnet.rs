//! `noiseresnet18`: the original authors' PNN ResNet. A convolution stem, then blocks whose
//! layers add one fixed noise map to their input (the same for every sample) and combine it
//! with ReLU -> BatchNorm -> 1x1 convolution. With `--code update` the stem's convolution is
//! frozen at its random initial weights, as in the paper authors' updated code.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::nn::conv::Conv2d;
use burn::tensor::activation::relu;
use burn::tensor::{Device, Distribution, Tensor};

use anyhow::Result;

use super::Geometry;
use super::map_size::MapSize;
use super::resnet::{BLOCKS_PER_STAGE, STAGES};
use crate::config::{Code, Config, PoolType};
use crate::layer::conv::{self, ConvSpec, linear};
use crate::layer::{BatchNorm, ConvBn, Pool, global_average_pool, projection_shortcut, residual_relu};
use crate::ops;

/// The original NoiseLayer: y = Conv1x1(BN(ReLU(x + noise))), noise ~ U(-level, level) of the
/// input's (C, H, W) shape. The reference draws it on the first forward pass; it depends only on
/// the input shape, which is known when the model is built, so it is drawn then.
#[derive(Module, Debug)]
pub struct NoiseLayer {
    /// Not a learnable parameter (the reference does not count it), but saved in checkpoints so
    /// a resumed model is the same model. Kept out of the optimizer: it never gets a gradient.
    pub noise_buffer: Param<Tensor<4>>,
    pub bn: BatchNorm,
    pub conv: Conv2d,
}

impl NoiseLayer {
    pub fn new(in_planes: usize, out_planes: usize, size: usize, level: f64, device: &Device) -> Self {
        let noise = Tensor::random([1, in_planes, size, size], Distribution::Uniform(-level, level), device);
        Self {
            noise_buffer: Param::from_tensor(noise).set_require_grad(false),
            bn: BatchNorm::new(in_planes, device),
            conv: ConvSpec::new(in_planes, out_planes, 1).init(device),
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let noise = self.noise_buffer.val();
        let y = if ops::hand_written(&x.device()) {
            ops::add_relu::add_relu(x, noise)
        } else {
            relu(x + noise)
        };
        conv::forward(&self.conv, self.bn.forward(y))
    }
}

#[derive(Module, Debug)]
pub struct NoiseBasicBlock {
    pub noise1: NoiseLayer,
    /// MaxPool(stride, stride); absent for stride 1, where it is the identity.
    pub pool: Option<Pool>,
    pub bn1: BatchNorm,
    pub noise2: NoiseLayer,
    pub bn2: BatchNorm,
    pub shortcut: Option<ConvBn>,
}

impl NoiseBasicBlock {
    fn new(in_planes: usize, planes: usize, stride: usize, size: usize, level: f64, device: &Device) -> Self {
        Self {
            noise1: NoiseLayer::new(in_planes, planes, size, level, device),
            pool: (stride > 1).then(|| Pool::new(PoolType::Max, stride, stride, 0)),
            bn1: BatchNorm::new(planes, device),
            noise2: NoiseLayer::new(planes, planes, size / stride, level, device),
            bn2: BatchNorm::new(planes, device),
            shortcut: projection_shortcut(in_planes, planes, stride, device),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut y = self.noise1.forward(x.clone());
        if let Some(pool) = &self.pool {
            y = pool.forward(y);
        }
        let y = self.bn1.forward_relu(y);
        let y = self.bn2.forward(self.noise2.forward(y));
        residual_relu(y, x, &self.shortcut)
    }
}

#[derive(Module, Debug)]
pub struct NoiseResNet18 {
    pub stem: ConvBn,
    /// MaxPool(3, 2, 1) after a 7x7 stem.
    pub stem_pool: Option<Pool>,
    pub blocks: Vec<NoiseBasicBlock>,
    pub linear: Linear,
}

impl NoiseResNet18 {
    /// `first_filter_size` must be 3 or 7 (config validation refuses anything else). Refuses a
    /// geometry its stem or stages cannot take (see `MapSize`).
    pub fn new(config: &Config, geometry: Geometry, device: &Device) -> Result<Self> {
        let nf = config.nfilters;
        let mut maps = MapSize::new(config, geometry);
        let (stem_spec, stem_pool) = match config.first_filter_size {
            7 => {
                maps.layer(7, "the first layer")?;
                maps.pool();
                (
                    ConvSpec::new(geometry.channels, nf, 7).stride(2).padding(3).bias(false),
                    Some(Pool::new(PoolType::Max, 3, 2, 1)),
                )
            }
            _ => (ConvSpec::new(geometry.channels, nf, 3).padding(1).bias(false), None),
        };
        let mut blocks = Vec::new();
        let mut in_planes = nf;
        for (stage, (mult, stage_stride)) in STAGES.into_iter().enumerate() {
            for b in 0..BLOCKS_PER_STAGE {
                let stride = if b == 0 { stage_stride } else { 1 };
                blocks.push(NoiseBasicBlock::new(
                    in_planes,
                    nf * mult,
                    stride,
                    maps.side(),
                    config.level,
                    device,
                ));
                in_planes = nf * mult;
                maps.stage(stage, stride)?;
            }
        }
        let mut stem = ConvBn::new(stem_spec, device);
        if config.code == Code::Update {
            // The update's "first layer rand conv": the stem's convolution stays at its random
            // initial weights (no gradient, so no weight decay either); its BatchNorm trains.
            stem.conv.weight = stem.conv.weight.set_require_grad(false);
        }
        Ok(Self {
            stem,
            stem_pool,
            blocks,
            linear: linear(8 * nf, geometry.num_classes, device),
        })
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let mut x = self.stem.forward_relu(x);
        if let Some(pool) = &self.stem_pool {
            x = pool.forward(x);
        }
        for block in &self.blocks {
            x = block.forward(x);
        }
        self.linear.forward(global_average_pool(x))
    }
}
