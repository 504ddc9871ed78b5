//! `cifarnet`: six perturbation (or convolution) layers in pairs, each pair followed by pooling,
//! then two fully connected layers with BatchNorm1d and dropout, as the reproduction's CifarNet.

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use anyhow::Result;

use super::map_size::MapSize;
use super::{Geometry, first_layer_spec, inner_layer_spec};
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
    /// Refuses a geometry whose maps get too small for a layer's filter.
    pub fn new(config: &Config, geometry: Geometry, device: &Device) -> Result<Self> {
        let nf = config.nfilters;
        let mut maps = MapSize::new(config, geometry);
        let mut layers = Vec::new();
        for i in 0..6 {
            let (spec, filter) = if i == 0 {
                (
                    first_layer_spec(config, geometry.channels, maps.side()),
                    config.first_filter_size,
                )
            } else {
                (inner_layer_spec(config, nf, nf, maps.side()), config.filter_size)
            };
            layers.push(spec.init(device));
            maps.layer(filter, &format!("layer {}", i + 1))?;
            if i % 2 == 1 {
                maps.pool();
            }
        }
        let size = maps.side();
        Ok(CifarNet {
            layers,
            pool: Pool::new(config.pool_type, 3, 2, 1),
            head: ClassifierHead::new(config, nf * size * size, HIDDEN, geometry.num_classes, device),
        })
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
