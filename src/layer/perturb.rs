//! The perturbation layer (the reproduction's `PerturbLayer`).
//!
//! With `filter_size == 0` each input channel is perturbed by `nmasks` fixed random additive
//! masks, optionally activated, and the C * nmasks maps are combined by a learnable 1x1
//! convolution (grouped by input channel when nmasks > 1), then BatchNorm and activation;
//! `mix_maps` adds a second, ungrouped 1x1 convolution + BatchNorm + activation.
//! With `filter_size > 0` the layer is a plain convolution + BatchNorm + activation, which is how
//! the reference builds its baselines from the same models.

use burn::module::{Module, Param};
use burn::nn::conv::Conv2d;
use burn::tensor::{Device, Distribution, Tensor, s};

use super::activation::Activation;
use super::batchnorm::BatchNorm;
use super::conv::{self, ConvSpec};
use crate::config::{Act, NoiseType};
use crate::ops;
use crate::ops::activation::FusedAct;

/// Everything that decides the structure of one perturbation layer.
#[derive(Debug, Clone, Copy)]
pub struct PerturbSpec {
    pub in_channels: usize,
    pub out_channels: usize,
    /// 0: perturbation layer; 1, 3, 5, 7: a convolution of that size.
    pub filter_size: usize,
    pub nmasks: usize,
    /// Noise magnitude: masks are multiplied by it before they are added.
    pub level: f64,
    pub noise_type: NoiseType,
    /// Activation right after the perturbation (off for the reference's first layer).
    pub use_act: bool,
    pub act: Act,
    /// One set of masks per input channel, or one set shared by all.
    pub unique_masks: bool,
    pub train_masks: bool,
    pub mix_maps: bool,
    /// Side of the (square) input maps; the masks have this resolution.
    pub input_size: usize,
    pub debug: bool,
}

/// The second 1x1 convolution of `--mix_maps`.
#[derive(Module, Debug)]
pub struct MixMaps {
    pub conv: Conv2d,
    pub bn: BatchNorm,
}

#[derive(Module, Debug)]
pub struct PerturbLayer {
    /// Noise masks, shape [1, C or 1, nmasks, H, W]. A parameter (saved in checkpoints, counted as
    /// noise values), trainable only with `--train_masks`. `None` for a convolution layer.
    pub noise: Option<Param<Tensor<5>>>,
    /// The 1x1 combining convolution, or the k x k convolution when filter_size > 0.
    pub conv: Conv2d,
    pub bn: BatchNorm,
    /// One activation module shared by every place the layer activates, as in the reference
    /// (so a PReLU layer has a single slope).
    pub act: Activation,
    pub mix: Option<MixMaps>,
    pub level: f64,
    pub use_act: bool,
    pub debug: bool,
}

impl PerturbSpec {
    pub fn init(&self, device: &Device) -> PerturbLayer {
        let act = Activation::new(self.act, device);
        let (c_in, c_out) = (self.in_channels, self.out_channels);
        if self.filter_size > 0 {
            // Padding and bias as the reference: 1x1 with bias, 3x3/5x5 padding 1, 7x7 stride 2.
            let conv = match self.filter_size {
                1 => ConvSpec::new(c_in, c_out, 1),
                3 | 5 => ConvSpec::new(c_in, c_out, self.filter_size).padding(1).bias(false),
                7 => ConvSpec::new(c_in, c_out, 7).stride(2).padding(3).bias(false),
                k => panic!("filter size {k} is refused by config validation"),
            };
            return PerturbLayer {
                noise: None,
                conv: conv.init(device),
                bn: BatchNorm::new(c_out, device),
                act,
                mix: None,
                level: self.level,
                use_act: self.use_act,
                debug: self.debug,
            };
        }

        let noise = self.draw_masks(device);
        let groups = if self.nmasks > 1 { c_in } else { 1 };
        let conv = ConvSpec::new(c_in * self.nmasks, c_out, 1).groups(groups).init(device);
        let mix = self.mix_maps.then(|| MixMaps {
            conv: ConvSpec::new(c_out, c_out, 1).init(device),
            bn: BatchNorm::new(c_out, device),
        });
        PerturbLayer {
            noise: Some(noise),
            conv,
            bn: BatchNorm::new(c_out, device),
            act,
            mix,
            level: self.level,
            use_act: self.use_act,
            debug: self.debug,
        }
    }
}

impl PerturbSpec {
    /// The layer's noise masks, [1, C (or 1 when shared), nmasks, H, W], uniform in [-1, 1] or
    /// standard normal; trainable only with `--train_masks`.
    pub fn draw_masks(&self, device: &Device) -> Param<Tensor<5>> {
        let noise_channels = if self.unique_masks { self.in_channels } else { 1 };
        let shape = [1, noise_channels, self.nmasks, self.input_size, self.input_size];
        let distribution = match self.noise_type {
            NoiseType::Uniform => Distribution::Uniform(-1.0, 1.0),
            NoiseType::Normal => Distribution::Normal(0.0, 1.0),
        };
        Param::from_tensor(Tensor::random(shape, distribution, device)).set_require_grad(self.train_masks)
    }
}

impl PerturbLayer {
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let Some(noise) = &self.noise else {
            // Convolution layer: conv -> BatchNorm -> activation.
            return self.normalise_activate(&self.bn, conv::forward(&self.conv, x));
        };
        let y = self.combine(x, noise.val());
        let y = self.normalise_activate(&self.bn, y);
        match &self.mix {
            Some(mix) => self.normalise_activate(&mix.bn, conv::forward(&mix.conv, y)),
            None => y,
        }
    }

    /// `act(bn(y))`: with ReLU, BatchNorm's kernel applies it in the same pass.
    fn normalise_activate(&self, bn: &BatchNorm, y: Tensor<4>) -> Tensor<4> {
        match self.act.kind {
            Act::Relu => bn.forward_relu(y),
            _ => self.act.forward(bn.forward(y)),
        }
    }

    /// `conv(act(x + level * noise))`, before BatchNorm: by the fused kernel where it pays,
    /// several masks per channel (with one mask the perturbed maps are no larger than the input,
    /// and flex's convolution beats the kernel's loops: bench/fused.sh measured 12.3 vs 4.3
    /// images/s), on the CPU backend or a GPU, with an activation it knows, with the
    /// reproduction's grouping, and without --debug (which prints perturbed maps the kernel
    /// never stores).
    pub fn combine(&self, x: Tensor<4>, noise: Tensor<5>) -> Tensor<4> {
        let several_masks = noise.dims()[2] > 1;
        let grouped = self.conv.groups == x.dims()[1];
        match self.fused_act() {
            Some(act) if several_masks && grouped && !self.debug && ops::fused_perturbation(&x.device()) => {
                self.combine_fused(x, noise, act)
            }
            _ => self.combine_unfused(x, noise),
        }
    }

    /// The activation after the perturbation as the fused kernel knows it; `None` where the
    /// kernel cannot run (PReLU, RReLU, no bias).
    pub fn fused_act(&self) -> Option<FusedAct> {
        self.conv.bias.as_ref()?;
        FusedAct::of(self.act.kind, self.use_act)
    }

    /// `conv(act(x + level * noise))` as the reference writes it: the perturbed maps
    /// [N, C, M, H, W] are materialised (and kept by autodiff for the backward pass).
    pub fn combine_unfused(&self, x: Tensor<4>, noise: Tensor<5>) -> Tensor<4> {
        let [n, c, h, w] = x.dims();
        let nmasks = noise.dims()[2];
        // [N, C, 1, H, W] + [1, C or 1, M, H, W] -> [N, C, M, H, W]
        let y = x.clone().unsqueeze_dim::<5>(2) + noise.clone().mul_scalar(self.level);
        if self.debug {
            print_debug_values(&x, &noise, &y);
        }
        let y = if self.use_act { self.act.forward(y) } else { y };
        conv::forward(&self.conv, y.reshape([n, c * nmasks, h, w]))
    }

    /// The same as [`Self::combine_unfused`], computed by the fused kernel.
    pub fn combine_fused(&self, x: Tensor<4>, noise: Tensor<5>, act: FusedAct) -> Tensor<4> {
        let bias = self.conv.bias.as_ref().expect("fused_act checks the bias").val();
        ops::perturb::perturb_combine(x, noise, self.conv.weight.val(), bias, self.level as f32, act)
    }

    /// Number of noise mask values of this layer (0 for a convolution layer).
    pub fn noise_values(&self) -> usize {
        self.noise.as_ref().map_or(0, |p| p.shape().num_elements())
    }
}

/// `--debug`: the first values of two images, two channels and two masks, in the spirit of the
/// reference's `print_values`, so that one can see the noise being added.
fn print_debug_values(x: &Tensor<4>, noise: &Tensor<5>, y: &Tensor<5>) {
    const K: usize = 2;
    let [n, c, _, w] = x.dims();
    let [_, nc, m, _, _] = noise.dims();
    let k = K.min(w);
    let row = |t: Tensor<5>| -> String {
        let v: Vec<f32> = t.into_data().try_to_vec::<f32>().unwrap_or_default();
        v.iter().map(|x| format!("{x:9.5}")).collect::<Vec<_>>().join(" ")
    };
    println!(
        "perturb: input {:?}, noise {:?}, perturbed {:?}",
        x.dims(),
        noise.dims(),
        y.dims()
    );
    for img in 0..n.min(2) {
        for ch in 0..c.min(2) {
            let xi = x.clone().slice(s![img, ch, 0, 0..k]).unsqueeze_dim::<5>(0);
            println!("  image{img} channel{ch}                 {}", row(xi));
        }
    }
    for ch in 0..nc.min(2) {
        for mask in 0..m.min(2) {
            println!(
                "  noise channel{ch} mask{mask}           {}",
                row(noise.clone().slice(s![0, ch, mask, 0, 0..k]))
            );
        }
    }
    for img in 0..n.min(2) {
        for ch in 0..c.min(2) {
            for mask in 0..m.min(2) {
                println!(
                    "  perturbed image{img} channel{ch} mask{mask} {}",
                    row(y.clone().slice(s![img, ch, mask, 0, 0..k]))
                );
            }
        }
    }
}
