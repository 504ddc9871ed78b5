//! `perturb_resnet18`: the reproduction's ResNet-18 built from perturbation layers. Each block is
//! PerturbLayer -> pool(stride) -> PerturbLayer plus the shortcut; `--filter_size 1` turns it
//! into the "no noise" 1x1-convolution baseline of the reproduction's table. With `--code update`
//! the first layer is the paper authors' updated one (`layer::perturb_first`).

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::{Device, Tensor};

use super::resnet::{BLOCKS_PER_STAGE, STAGES};
use anyhow::Result;

use super::map_size::MapSize;
use super::{Geometry, first_layer_spec, inner_layer_spec};
use crate::config::{Code, Config, PoolType};
use crate::layer::conv::linear;
use crate::layer::{ConvBn, PerturbFirst, PerturbLayer, Pool, global_average_pool, projection_shortcut, residual_relu};

#[derive(Module, Debug)]
pub struct PerturbBasicBlock {
    pub layer1: PerturbLayer,
    /// pool(stride, stride) by --pool_type; absent for stride 1, where it is the identity.
    pub pool: Option<Pool>,
    pub layer2: PerturbLayer,
    pub shortcut: Option<ConvBn>,
}

impl PerturbBasicBlock {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut y = self.layer1.forward(x.clone());
        if let Some(pool) = &self.pool {
            y = pool.forward(y);
        }
        let y = self.layer2.forward(y);
        residual_relu(y, x, &self.shortcut)
    }
}

/// The first layer: the reproduction's perturbation layer, or the update's (`--code update`).
// One per model: the size of its variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum FirstLayer {
    Reproduction(PerturbLayer),
    Update(PerturbFirst),
}

#[derive(Module, Debug)]
pub struct PerturbResNet18 {
    pub first: FirstLayer,
    /// MaxPool(3, 2, 1) after the reproduction's 7x7 first layer (the update's first block
    /// pools inside).
    pub first_pool: Option<Pool>,
    pub blocks: Vec<PerturbBasicBlock>,
    pub linear: Linear,
}

impl PerturbResNet18 {
    /// Refuses a geometry its layers or stages cannot take (see `MapSize`).
    pub fn new(config: &Config, geometry: Geometry, device: &Device) -> Result<Self> {
        let nf = config.nfilters;
        let mut maps = MapSize::new(config, geometry);
        let spec = first_layer_spec(config, geometry.channels, maps.side());
        maps.layer(config.first_filter_size, "the first layer")?;
        let pooled = config.first_filter_size == 7;
        if pooled {
            maps.pool();
        }
        let (first, first_pool) = match config.code {
            Code::Reproduction => (
                FirstLayer::Reproduction(spec.init(device)),
                pooled.then(|| Pool::new(PoolType::Max, 3, 2, 1)),
            ),
            Code::Update => (FirstLayer::Update(PerturbFirst::new(&spec, device)), None),
        };
        let mut blocks = Vec::new();
        let mut in_planes = nf;
        for (stage, (mult, stage_stride)) in STAGES.into_iter().enumerate() {
            let planes = nf * mult;
            for b in 0..BLOCKS_PER_STAGE {
                let stride = if b == 0 { stage_stride } else { 1 };
                let layer1 = inner_layer_spec(config, in_planes, planes, maps.side()).init(device);
                maps.layer(config.filter_size, "a block's first layer")?;
                let after1 = maps.stage(stage, stride)?;
                let layer2 = inner_layer_spec(config, planes, planes, after1).init(device);
                blocks.push(PerturbBasicBlock {
                    layer1,
                    pool: (stride > 1).then(|| Pool::new(config.pool_type, stride, stride, 0)),
                    layer2,
                    shortcut: projection_shortcut(in_planes, planes, stride, device),
                });
                in_planes = planes;
                maps.layer(config.filter_size, "a block's second layer")?;
            }
        }
        Ok(Self {
            first,
            first_pool,
            blocks,
            linear: linear(8 * nf, geometry.num_classes, device),
        })
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let mut x = match &self.first {
            FirstLayer::Reproduction(layer) => layer.forward(x),
            FirstLayer::Update(block) => block.forward(x),
        };
        if let Some(pool) = &self.first_pool {
            x = pool.forward(x);
        }
        for block in &self.blocks {
            x = block.forward(x);
        }
        self.linear.forward(global_average_pool(x))
    }
}
