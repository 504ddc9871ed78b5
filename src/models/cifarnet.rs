//! `cifarnet`: six perturbation (or convolution) layers in pairs, each pair followed by pooling,
//! then two fully connected layers with BatchNorm1d and dropout, as the reproduction's CifarNet.

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use super::{Geometry, first_layer_spec, inner_layer_spec, layer_output_size, pool_output_size};
use crate::config::Config;
use crate::layer::{ClassifierHead, PerturbLayer, Pool};

/// Hidden units of the first fully connected layer, as in the reference.
const HIDDEN: usize = 256;

#[derive(Module, Debug)]
pub struct CifarNet {
    /// Six layers; pooling follows layers 2, 4 and 6.
    pub layers: Vec<PerturbLayer>,
    pub pool: Pool,
    pub head: ClassifierHead,
}

impl CifarNet {
    pub fn new(config: &Config, geometry: Geometry, device: &Device) -> Self {
        let nf = config.nfilters;
        let mut size = geometry.input_size;
        let mut layers = Vec::new();
        for i in 0..6 {
            let (spec, filter) = if i == 0 {
                (
                    first_layer_spec(config, geometry.channels, size),
                    config.first_filter_size,
                )
            } else {
                (inner_layer_spec(config, nf, nf, size), config.filter_size)
            };
            layers.push(spec.init(device));
            size = layer_output_size(size, filter);
            if i % 2 == 1 {
                size = pool_output_size(size, 3, 2, 1);
            }
        }
        CifarNet {
            layers,
            pool: Pool::new(config.pool_type, 3, 2, 1),
            head: ClassifierHead::new(config, nf * size * size, HIDDEN, geometry.num_classes, device),
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let mut x = x;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x);
            if i % 2 == 1 {
                x = self.pool.forward(x);
            }
        }
        self.head.forward(x)
    }
}
