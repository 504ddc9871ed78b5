//! The networks. `build` turns a configuration into a model; `Net` dispatches to it.

pub mod lenet;
pub mod summary;

use anyhow::{Result, bail};
use burn::module::Module;
use burn::tensor::{Device, Tensor};

use crate::config::{Config, NetType};
use crate::layer::PerturbSpec;

pub use lenet::LeNet;
pub use summary::ParamCount;

/// Input and output geometry a model is built for.
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    pub channels: usize,
    pub input_size: usize,
    pub num_classes: usize,
}

impl Geometry {
    pub fn of(config: &Config) -> Self {
        Self {
            channels: config.input_channels(),
            input_size: config.input_size(),
            num_classes: config.num_classes(),
        }
    }
}

#[derive(Module, Debug)]
pub enum Net {
    Lenet(LeNet),
}

impl Net {
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        match self {
            Net::Lenet(m) => m.forward(x),
        }
    }
}

/// Builds the model a configuration describes, with the reference's initialisation.
pub fn build(config: &Config, device: &Device) -> Result<Net> {
    let geometry = Geometry::of(config);
    Ok(match config.net_type {
        NetType::Lenet => Net::Lenet(LeNet::new(config, geometry, device)),
        other => bail!(
            "--net-type {other:?} is not built yet in this version of pnn: only lenet is (the other models are the next milestone)"
        ),
    })
}

/// The first layer: `first_filter_size`, noise `level * scale_noise`, `use_act` as given.
pub fn first_layer_spec(config: &Config, in_channels: usize, input_size: usize) -> PerturbSpec {
    PerturbSpec {
        in_channels,
        out_channels: config.nfilters,
        filter_size: config.first_filter_size,
        nmasks: config.nmasks,
        level: config.level * config.scale_noise,
        noise_type: config.noise_type,
        use_act: config.use_act,
        act: config.act,
        unique_masks: config.unique_masks,
        train_masks: config.train_masks,
        mix_maps: config.mix_maps,
        input_size,
        debug: config.debug,
    }
}

/// Every later layer: `filter_size`, noise `level`, activation after the perturbation.
pub fn inner_layer_spec(config: &Config, in_channels: usize, out_channels: usize, input_size: usize) -> PerturbSpec {
    PerturbSpec {
        in_channels,
        out_channels,
        filter_size: config.filter_size,
        level: config.level,
        use_act: true,
        ..first_layer_spec(config, in_channels, input_size)
    }
}

/// Output side of a perturbation layer (size kept) or of the reference's convolution of that size.
pub fn layer_output_size(size: usize, filter_size: usize) -> usize {
    match filter_size {
        0 | 1 | 3 => size,
        5 => size - 2,                   // padding 1
        7 => (size + 2 * 3 - 7) / 2 + 1, // stride 2, padding 3
        k => panic!("filter size {k} is refused by config validation"),
    }
}

pub fn pool_output_size(size: usize, kernel: usize, stride: usize, padding: usize) -> usize {
    (size + 2 * padding - kernel) / stride + 1
}
