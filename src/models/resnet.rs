//! `resnet18`: the standard CIFAR ResNet-18 (the reproduction's baseline, from kuangliu's
//! pytorch-cifar): 3x3 stem, four stages of two BasicBlocks, global average pool, linear.

use burn::module::Module;
use burn::nn::Linear;
use burn::nn::conv::Conv2d;
use burn::tensor::{Device, Tensor};

use anyhow::Result;

use super::Geometry;
use crate::config::Config;
use crate::layer::conv::{ConvSpec, linear};
use crate::layer::{ConvBn, global_average_pool, projection_shortcut, residual_relu};

/// Channel multipliers and strides of the four stages.
pub const STAGES: [(usize, usize); 4] = [(1, 1), (2, 2), (4, 2), (8, 2)];
pub const BLOCKS_PER_STAGE: usize = 2;

#[derive(Module, Debug)]
pub struct BasicBlock {
    pub conv1: ConvBn,
    pub conv2: ConvBn,
    pub shortcut: Option<ConvBn>,
}

impl BasicBlock {
    pub fn new(in_planes: usize, planes: usize, stride: usize, device: &Device) -> Self {
        let conv3 = |i, o, s| ConvBn::new(ConvSpec::new(i, o, 3).stride(s).padding(1).bias(false), device);
        Self {
            conv1: conv3(in_planes, planes, stride),
            conv2: conv3(planes, planes, 1),
            shortcut: projection_shortcut(in_planes, planes, stride, device),
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = self.conv1.forward_relu(x.clone());
        let y = self.conv2.forward(y);
        residual_relu(y, x, &self.shortcut)
    }
}

#[derive(Module, Debug)]
pub struct ResNet18 {
    pub stem: ConvBn,
    pub blocks: Vec<BasicBlock>,
    pub linear: Linear,
}

impl ResNet18 {
    /// Any square input works: the stride-2 shortcuts and blocks both round up.
    pub fn new(config: &Config, geometry: Geometry, device: &Device) -> Result<Self> {
        let nf = config.nfilters;
        let stem = ConvBn::new(ConvSpec::new(geometry.channels, nf, 3).padding(1).bias(false), device);
        let mut blocks = Vec::new();
        let mut in_planes = nf;
        for (mult, stride) in STAGES {
            for b in 0..BLOCKS_PER_STAGE {
                blocks.push(BasicBlock::new(
                    in_planes,
                    nf * mult,
                    if b == 0 { stride } else { 1 },
                    device,
                ));
                in_planes = nf * mult;
            }
        }
        Ok(Self {
            stem,
            blocks,
            linear: linear(8 * nf, geometry.num_classes, device),
        })
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let mut x = self.stem.forward_relu(x);
        for block in &self.blocks {
            x = block.forward(x);
        }
        self.linear.forward(global_average_pool(x))
    }

    /// The 3x3 convolutions in the order data meets them: 0 is the stem, then conv1 and conv2
    /// of each block (`pnn fit-conv --layer`).
    pub fn convs(&self) -> Vec<&Conv2d> {
        let mut convs = vec![&self.stem.conv];
        for block in &self.blocks {
            convs.push(&block.conv1.conv);
            convs.push(&block.conv2.conv);
        }
        convs
    }

    /// Where convolution `index` of [`Self::convs`] sits, in words.
    pub fn conv_name(index: usize) -> String {
        match index {
            0 => "the stem".into(),
            i => format!(
                "block {} conv{} (stage {})",
                (i - 1) / 2 + 1,
                (i - 1) % 2 + 1,
                (i - 1) / 2 / BLOCKS_PER_STAGE + 1
            ),
        }
    }

    /// The maps convolution `index` of [`Self::convs`] receives for images `x`.
    pub fn conv_input(&self, x: Tensor<4>, index: usize) -> Tensor<4> {
        if index == 0 {
            return x;
        }
        let (block, second) = ((index - 1) / 2, (index - 1) % 2 == 1);
        let mut x = self.stem.forward_relu(x);
        for b in &self.blocks[..block] {
            x = b.forward(x);
        }
        if second {
            self.blocks[block].conv1.forward_relu(x)
        } else {
            x
        }
    }
}
