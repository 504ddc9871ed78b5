//! The fully connected head of `lenet` and `cifarnet`, as the reference writes it:
//! dropout, linear, BatchNorm1d, activation, dropout, linear.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::tensor::{Device, Tensor};

use super::conv::linear;
use super::{Activation, BatchNorm};
use crate::config::Config;

#[derive(Module, Debug)]
pub struct ClassifierHead {
    pub dropout: Dropout,
    pub linear1: Linear,
    pub batch_norm: BatchNorm,
    pub act: Activation,
    pub linear2: Linear,
}

impl ClassifierHead {
    /// `features` inputs, `hidden` units, `classes` outputs; dropout and activation from the
    /// configuration.
    pub fn new(config: &Config, features: usize, hidden: usize, classes: usize, device: &Device) -> Self {
        Self {
            dropout: DropoutConfig::new(config.dropout).init(),
            linear1: linear(features, hidden, device),
            batch_norm: BatchNorm::new(hidden, device),
            act: Activation::new(config.act, device),
            linear2: linear(hidden, classes, device),
        }
    }

    /// Flattens [N, C, H, W] maps and returns [N, classes] logits.
    pub fn forward(&self, maps: Tensor<4>) -> Tensor<2> {
        let x: Tensor<2> = maps.flatten(1, 3);
        let x = self.linear1.forward(self.dropout.forward(x));
        let x = self.act.forward(self.batch_norm.forward(x));
        self.linear2.forward(self.dropout.forward(x))
    }
}
