//! Optimisers with PyTorch's semantics, every hyperparameter set explicitly (burn's defaults
//! differ: SGD dampening 0.1, Adam and RMSprop eps 1e-5).

use burn::optim::decay::WeightDecayConfig;
use burn::optim::{AdamConfig, ModuleOptimizer, RmsPropConfig};

use super::sgd;

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
            // burn's rule, computed in one parallel pass per parameter (see `sgd.rs`).
            let momentum = (config.momentum != 0.0).then_some(sgd::Momentum {
                momentum: config.momentum as f32,
                dampening: 0.0,
                nesterov: true,
            });
            ModuleOptimizer::from(sgd::Sgd {
                momentum,
                weight_decay: (config.weight_decay != 0.0).then_some(config.weight_decay as f32),
            })
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
