//! The perturbation layer as `pnn fit-conv` fits it: pnn's own `PerturbLayer` (its masks, its
//! combining 1x1 convolution), with least-squares weights loaded into it, and, with trainable
//! masks, refined by gradient descent on masks and weights together.

use anyhow::Result;
use burn::module::{Module, Param};
use burn::nn::loss::{MseLoss, Reduction};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::features::{Block, Maps, Masks};
use super::target::{HostMaps, Target};
use crate::config::{Act, NoiseType};
use crate::layer::conv::ConvSpec;
use crate::layer::{PerturbLayer, PerturbSpec};
use crate::ops::activation::FusedAct;

/// What decides a fitted perturbation layer besides its number of masks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PerturbChoice {
    pub level: f64,
    pub noise_type: NoiseType,
    pub act: Act,
    pub use_act: bool,
    pub unique_masks: bool,
    pub ungrouped: bool,
}

impl PerturbChoice {
    /// The activation as the features compute it; PReLU and RReLU (a learned or random slope)
    /// are not fitted.
    pub fn fused_act(&self) -> Option<FusedAct> {
        FusedAct::of(self.act, self.use_act)
    }
}

/// Builds the layer (masks drawn from `seed`) for maps of `maps`' size.
pub fn build_layer(
    choice: &PerturbChoice,
    nmasks: usize,
    maps: Maps,
    trainable: bool,
    seed: u64,
    device: &Device,
) -> PerturbLayer {
    device.seed(seed);
    let spec = PerturbSpec {
        in_channels: maps.channels,
        out_channels: maps.outputs,
        filter_size: 0,
        nmasks,
        level: choice.level,
        noise_type: choice.noise_type,
        use_act: choice.use_act,
        act: choice.act,
        unique_masks: choice.unique_masks,
        train_masks: trainable,
        mix_maps: false,
        input_size: maps.height,
        debug: false,
    };
    let mut layer = spec.init(device);
    if choice.ungrouped && nmasks > 1 {
        layer.conv = ConvSpec::new(maps.channels * nmasks, maps.outputs, 1).init(device);
    }
    layer
}

/// The layer's masks as the least-squares features read them.
pub fn masks_of(layer: &PerturbLayer, choice: &PerturbChoice, act: FusedAct) -> Masks {
    let noise = layer.noise.as_ref().expect("a perturbation layer has masks").val();
    let [_, channels, nmasks, _, _] = noise.dims();
    Masks {
        values: noise.into_data().try_to_vec::<f32>().expect("float masks"),
        channels,
        nmasks,
        level: layer.level,
        act,
        ungrouped: choice.ungrouped,
    }
}

/// Loads least-squares weights (one features x outputs matrix per block, the bias last) into
/// the layer's combining convolution.
pub fn load_weights(layer: &mut PerturbLayer, blocks: &[Block], betas: &[Vec<f64>]) {
    let [o, per_out, _, _] = layer.conv.weight.dims();
    let mut weight = vec![0f32; o * per_out];
    let mut bias = vec![0f32; o];
    for (block, beta) in blocks.iter().zip(betas) {
        let outs = block.outputs.len();
        let features = beta.len() / outs;
        for (j, out) in block.outputs.clone().enumerate() {
            for f in 0..features - 1 {
                weight[out * per_out + f] = beta[f * outs + j] as f32;
            }
            bias[out] = beta[(features - 1) * outs + j] as f32;
        }
    }
    let device = layer.conv.weight.device();
    layer.conv.weight = Param::from_tensor(Tensor::from_data(TensorData::new(weight, [o, per_out, 1, 1]), &device));
    layer.conv.bias = Some(Param::from_tensor(Tensor::from_data(
        TensorData::new(bias, [o]),
        &device,
    )));
}

/// The layer's output (before BatchNorm) for input maps.
pub fn layer_output(layer: &PerturbLayer, x: Tensor<4>) -> Tensor<4> {
    let noise = layer.noise.as_ref().expect("a perturbation layer has masks").val();
    layer.combine(x, noise)
}

/// Gradient descent settings for trainable masks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Descent {
    pub steps: usize,
    pub learning_rate: f64,
    pub batch: usize,
}

/// Fits masks and weights together by Adam on the squared error, over batches drawn at random
/// from the images `fit` (indices into `images`), starting from the layer as given.
pub fn descend(
    layer: PerturbLayer,
    target: &Target,
    images: &dyn Fn(&[usize]) -> (Vec<f32>, [usize; 4]),
    fit: &[usize],
    descent: Descent,
    seed: u64,
) -> Result<PerturbLayer> {
    let device = target.device.clone().autodiff();
    let mut layer = trainable_on(layer, &device);
    let mut optimizer = AdamConfig::new()
        .with_beta_1(0.9)
        .with_beta_2(0.999)
        .with_epsilon(1e-8)
        .init();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let loss_fn = MseLoss::new();
    for _ in 0..descent.steps {
        let batch: Vec<usize> = (0..descent.batch.min(fit.len()))
            .map(|_| fit[rng.random_range(0..fit.len())])
            .collect();
        let (pixels, shape) = images(&batch);
        let (x, y) = target.maps_of(pixels, shape);
        let x = to_tensor(&x, &device);
        let y = to_tensor(&y, &device);
        let loss = loss_fn.forward(layer_output(&layer, x), y, Reduction::Mean);
        let grads = GradientsParams::from_grads(loss.backward(), &layer);
        layer = optimizer.step(descent.learning_rate, layer, grads);
    }
    Ok(layer.valid())
}

/// The layer on an autodiff device with its masks, weights and bias as fresh trainable
/// parameters (a parameter moved from a plain device is not tracked).
fn trainable_on(layer: PerturbLayer, device: &Device) -> PerturbLayer {
    let fresh = |t: Tensor<4>| Param::from_tensor(Tensor::from_data(t.into_data(), device));
    let noise = layer.noise.as_ref().expect("a perturbation layer has masks").val();
    let weight = fresh(layer.conv.weight.val());
    let bias = layer
        .conv
        .bias
        .as_ref()
        .map(|b| Param::from_tensor(Tensor::from_data(b.val().into_data(), device)));
    let noise = Param::from_tensor(Tensor::<5>::from_data(noise.into_data(), device)).set_require_grad(true);
    let mut layer = layer.to_device(device);
    layer.noise = Some(noise);
    layer.conv.weight = weight;
    layer.conv.bias = bias;
    layer
}

pub fn to_tensor(maps: &HostMaps, device: &Device) -> Tensor<4> {
    Tensor::from_data(TensorData::new(maps.values.clone(), maps.shape), device)
}
