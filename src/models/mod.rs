//! The networks. `build` turns a configuration into a model; `Net` dispatches to it.

pub mod cifarnet;
pub mod lenet;
pub mod noise_resnet;
pub mod perturb_resnet;
pub mod resnet;
pub mod summary;

use anyhow::{Result, bail};
use burn::module::Module;
use burn::tensor::{Device, Tensor};

use crate::config::{Config, NetType};
use crate::data::ImageSet;
use crate::layer::PerturbSpec;

pub use cifarnet::CifarNet;
pub use lenet::LeNet;
pub use noise_resnet::NoiseResNet18;
pub use perturb_resnet::PerturbResNet18;
pub use resnet::ResNet18;
pub use summary::ParamCount;

/// Input and output geometry a model is built for.
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    pub channels: usize,
    pub input_size: usize,
    pub num_classes: usize,
}

impl Geometry {
    /// The geometry of a named training set, known without reading it.
    pub fn of(config: &Config) -> Result<Self> {
        match (config.dataset_train.geometry(), config.dataset_train.num_classes()) {
            (Some((channels, input_size)), Some(num_classes)) => Ok(Self {
                channels,
                input_size,
                num_classes,
            }),
            _ => bail!("the geometry of an image folder is known only once it is read"),
        }
    }

    /// The geometry of a data set that has been read; the models need square images.
    pub fn of_set(set: &ImageSet) -> Result<Self> {
        if set.height != set.width {
            bail!(
                "the images are {}x{}: the models need square images (resize or crop them)",
                set.width,
                set.height
            );
        }
        Ok(Self {
            channels: set.channels,
            input_size: set.height,
            num_classes: set.num_classes,
        })
    }
}

#[derive(Module, Debug)]
pub enum Net {
    Lenet(LeNet),
    Cifarnet(CifarNet),
    Resnet18(ResNet18),
    Noiseresnet18(NoiseResNet18),
    PerturbResnet18(PerturbResNet18),
}

impl Net {
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        match self {
            Net::Lenet(m) => m.forward(x),
            Net::Cifarnet(m) => m.forward(x),
            Net::Resnet18(m) => m.forward(x),
            Net::Noiseresnet18(m) => m.forward(x),
            Net::PerturbResnet18(m) => m.forward(x),
        }
    }
}

/// Builds the model a configuration describes for its named data set, with the reference's
/// initialisation.
pub fn build(config: &Config, device: &Device) -> Result<Net> {
    build_for(config, Geometry::of(config)?, device)
}

/// Builds the model for data of the given geometry.
pub fn build_for(config: &Config, geometry: Geometry, device: &Device) -> Result<Net> {
    check_resnet_geometry(config, geometry)?;
    Ok(match config.net_type {
        NetType::Lenet => Net::Lenet(LeNet::new(config, geometry, device)),
        NetType::Cifarnet => Net::Cifarnet(CifarNet::new(config, geometry, device)),
        NetType::Resnet18 => Net::Resnet18(ResNet18::new(config, geometry, device)),
        NetType::Noiseresnet18 => Net::Noiseresnet18(NoiseResNet18::new(config, geometry, device)),
        NetType::PerturbResnet18 => Net::PerturbResnet18(PerturbResNet18::new(config, geometry, device)),
    })
}

/// The pooled ResNets halve their maps by pooling (rounding down) while the shortcut's strided
/// convolution rounds up: an odd map size entering a stride-2 stage makes the two branches
/// disagree. The reference crashes there (e.g. perturb_resnet18 on 28x28 MNIST); we refuse early.
fn check_resnet_geometry(config: &Config, geometry: Geometry) -> Result<()> {
    if !matches!(config.net_type, NetType::PerturbResnet18 | NetType::Noiseresnet18) {
        return Ok(());
    }
    let mut size = match (config.net_type, config.first_filter_size) {
        (_, 7) => pool_output_size(layer_output_size(geometry.input_size, 7), 3, 2, 1),
        (NetType::PerturbResnet18, k) => layer_output_size(geometry.input_size, k),
        _ => geometry.input_size,
    };
    for (stage, (_, stride)) in resnet::STAGES.iter().enumerate() {
        if *stride == 2 && size % 2 == 1 {
            bail!(
                "{:?} on {}x{} images: stage {} receives {size}x{size} maps, where the block's pooling and its                  shortcut's strided convolution give different sizes (the reference crashes here too).                  Use 32x32 images (CIFAR), or lenet / cifarnet / resnet18 for this data set",
                config.net_type,
                geometry.input_size,
                geometry.input_size,
                stage + 1
            );
        }
        size = layer_output_size(size, config.filter_size) / stride;
        if size == 0 {
            bail!(
                "{:?}: the feature maps shrink to nothing before stage {}",
                config.net_type,
                stage + 1
            );
        }
    }
    Ok(())
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
