//! `lenet`: three perturbation (or convolution) layers, each followed by pooling, then two fully
//! connected layers with BatchNorm1d and dropout, as the reproduction's LeNet.

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use super::{Geometry, first_layer_spec, inner_layer_spec, layer_output_size, pool_output_size};
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
    pub fn new(config: &Config, geometry: Geometry, device: &Device) -> Self {
        let nf = config.nfilters;
        // Track the map size through the layers so each layer's masks match its input.
        let mut size = geometry.input_size;
        let layer1 = first_layer_spec(config, geometry.channels, size).init(device);
        size = pool_output_size(layer_output_size(size, config.first_filter_size), 3, 2, 1);
        let layer2 = inner_layer_spec(config, nf, nf, size).init(device);
        size = pool_output_size(layer_output_size(size, config.filter_size), 3, 2, 1);
        let layer3 = inner_layer_spec(config, nf, nf, size).init(device);
        size = pool_output_size(layer_output_size(size, config.filter_size), 3, 2, 1);

        LeNet {
            layer1,
            layer2,
            layer3,
            pool: Pool::new(config.pool_type, 3, 2, 1),
            head: ClassifierHead::new(config, nf * size * size, HIDDEN, geometry.num_classes, device),
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let x = self.pool.forward(self.layer1.forward(x));
        let x = self.pool.forward(self.layer2.forward(x));
        let x = self.pool.forward(self.layer3.forward(x));
        self.head.forward(x)
    }
}
