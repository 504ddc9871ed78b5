//! `lenet`: three perturbation (or convolution) layers, each followed by pooling, then two fully
//! connected layers with BatchNorm1d and dropout, as the reproduction's LeNet.

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use anyhow::Result;

use super::map_size::MapSize;
use super::{Geometry, first_layer_spec, inner_layer_spec};
use crate::config::Config;
use crate::layer::{ClassifierHead, PerturbLayer, Pool};

/// Hidden units of the first fully connected layer, as in the reference.
const HIDDEN: usize = 128;

#[derive(Module, Debug)]
pub struct LeNet {
    pub layer1: PerturbLayer,
    pub layer2: PerturbLayer,
    pub layer3: PerturbLayer,
    pub pool: Pool,
    pub head: ClassifierHead,
}

impl LeNet {
    /// Refuses a geometry whose maps get too small for a layer's filter.
    pub fn new(config: &Config, geometry: Geometry, device: &Device) -> Result<Self> {
        let nf = config.nfilters;
        // Track the map size through the layers so each layer's masks match its input.
        let mut maps = MapSize::new(config, geometry);
        let layer1 = first_layer_spec(config, geometry.channels, maps.side()).init(device);
        maps.layer(config.first_filter_size, "layer 1")?;
        let layer2 = inner_layer_spec(config, nf, nf, maps.pool()).init(device);
        maps.layer(config.filter_size, "layer 2")?;
        let layer3 = inner_layer_spec(config, nf, nf, maps.pool()).init(device);
        maps.layer(config.filter_size, "layer 3")?;
        let size = maps.pool();

        Ok(LeNet {
            layer1,
            layer2,
            layer3,
            pool: Pool::new(config.pool_type, 3, 2, 1),
            head: ClassifierHead::new(config, nf * size * size, HIDDEN, geometry.num_classes, device),
        })
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let x = self.pool.forward(self.layer1.forward(x));
        let x = self.pool.forward(self.layer2.forward(x));
        let x = self.pool.forward(self.layer3.forward(x));
        self.head.forward(x)
    }
}
