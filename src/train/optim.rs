//! Optimisers with PyTorch's semantics, every hyperparameter set explicitly (burn's defaults
//! differ: SGD dampening 0.1, Adam and RMSprop eps 1e-5).

use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, ModuleOptimizer, RmsPropConfig, SgdConfig};

use crate::config::{Config, OptimMethod};

/// PyTorch's Adam and RMSprop epsilon.
const TORCH_EPS: f32 = 1e-8;
/// PyTorch's RMSprop smoothing constant.
const TORCH_RMSPROP_ALPHA: f32 = 0.99;

pub fn build(config: &Config) -> ModuleOptimizer {
    // Weight decay as PyTorch's: L2, added to the gradient before the update rule.
    let decay = (config.weight_decay != 0.0).then(|| WeightDecayConfig::new(config.weight_decay as f32));
    match config.optim_method {
        OptimMethod::Sgd => {
            // The reference uses nesterov=True, which PyTorch allows only with dampening 0.
            let momentum = (config.momentum != 0.0).then(|| {
                MomentumConfig::new()
                    .with_momentum(config.momentum)
                    .with_dampening(0.0)
                    .with_nesterov(true)
            });
            SgdConfig::new().with_momentum(momentum).with_weight_decay(decay).init()
        }
        OptimMethod::Adam => AdamConfig::new()
            .with_beta_1(config.adam_beta1 as f32)
            .with_beta_2(config.adam_beta2 as f32)
            .with_epsilon(TORCH_EPS)
            .with_amsgrad(false)
            .with_weight_decay(decay)
            .init(),
        OptimMethod::RmsProp => RmsPropConfig::new()
            .with_alpha(TORCH_RMSPROP_ALPHA)
            .with_momentum(config.momentum as f32)
            .with_epsilon(TORCH_EPS)
            .with_centered(false)
            .with_weight_decay(decay)
            .init(),
    }
}
