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
    check_geometry(config, geometry)?;
    let model = match config.net_type {
        NetType::Lenet => Net::Lenet(LeNet::new(config, geometry, device)),
        NetType::Cifarnet => Net::Cifarnet(CifarNet::new(config, geometry, device)),
        NetType::Resnet18 => Net::Resnet18(ResNet18::new(config, geometry, device)),
        NetType::Noiseresnet18 => Net::Noiseresnet18(NoiseResNet18::new(config, geometry, device)),
        NetType::PerturbResnet18 => Net::PerturbResnet18(PerturbResNet18::new(config, geometry, device)),
    };
    initialize_now(&model);
    Ok(model)
}

/// Draws every lazily initialised parameter now (burn's `Linear` draws its weights at first
/// use), so that the weights follow from the seed and the configuration alone. Drawn at the
/// first forward pass, they came from that step's random stream instead, and a data-parallel
/// run, which copies the model to its other devices before the first step, would draw them
/// elsewhere in the stream than a one-device run.
fn initialize_now(model: &Net) {
    struct Touch;
    impl burn::module::ModuleVisitor for Touch {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            let _ = param.val();
        }
    }
    model.visit(&mut Touch);
}

/// Follows the map size through the network as its constructor does, and refuses a geometry
/// where a layer's filter does not fit the maps it receives, or where the pooled ResNets'
/// branches disagree: they halve their maps by pooling (rounding down) while the shortcut's
/// strided convolution rounds up, so an odd size entering a stride-2 stage breaks the residual
/// sum. The reference crashes in all these cases (e.g. perturb_resnet18 on 28x28 MNIST).
fn check_geometry(config: &Config, geometry: Geometry) -> Result<()> {
    let side = geometry.input_size;
    let flags = format!(
        "--net-type {} --first_filter_size {} --filter_size {} on {side}x{side} images",
        Config::value_name(&config.net_type),
        config.first_filter_size,
        config.filter_size
    );
    let shrink = |size: usize, filter: usize, layer: &str| -> Result<usize> {
        match checked_layer_output_size(size, filter) {
            Some(out) => Ok(out),
            None => bail!(
                "{flags}: {layer} receives {size}x{size} maps, too small for its {filter}x{filter} filter \
                 (which takes 2 pixels off each side): use a filter of size 0, 1 or 3 there, or larger images"
            ),
        }
    };
    let pool = |size: usize| pool_output_size(size, 3, 2, 1);
    match config.net_type {
        NetType::Resnet18 => {}
        NetType::Lenet => {
            let mut size = pool(shrink(side, config.first_filter_size, "layer 1")?);
            for layer in ["layer 2", "layer 3"] {
                size = pool(shrink(size, config.filter_size, layer)?);
            }
        }
        NetType::Cifarnet => {
            let mut size = side;
            for i in 0..6 {
                let filter = if i == 0 {
                    config.first_filter_size
                } else {
                    config.filter_size
                };
                size = shrink(size, filter, &format!("layer {}", i + 1))?;
                if i % 2 == 1 {
                    size = pool(size);
                }
            }
        }
        NetType::PerturbResnet18 | NetType::Noiseresnet18 => {
            let perturb = config.net_type == NetType::PerturbResnet18;
            let mut size = match config.first_filter_size {
                7 => pool(shrink(side, 7, "the first layer")?),
                k if perturb => shrink(side, k, "the first layer")?,
                _ => side,
            };
            for (stage, (_, stride)) in resnet::STAGES.iter().enumerate() {
                if *stride == 2 && size % 2 == 1 {
                    bail!(
                        "{flags}: stage {} receives {size}x{size} maps, where the block's pooling and its \
                         shortcut's strided convolution give different sizes (the reference crashes here too). \
                         Use 32x32 images (CIFAR), or lenet / cifarnet / resnet18 for this data set",
                        stage + 1
                    );
                }
                size /= stride;
                if size == 0 {
                    bail!(
                        "{flags}: the feature maps shrink to nothing before stage {}: use larger images",
                        stage + 1
                    );
                }
            }
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
/// Only for sizes [`check_geometry`] accepted.
pub fn layer_output_size(size: usize, filter_size: usize) -> usize {
    checked_layer_output_size(size, filter_size).expect("map sizes are checked before a model is built")
}

/// [`layer_output_size`], or `None` where the filter does not fit: a 5x5 filter with padding 1
/// needs maps of at least 3x3. Filter sizes other than 0, 1, 3, 5, 7 are refused by
/// configuration validation.
fn checked_layer_output_size(size: usize, filter_size: usize) -> Option<usize> {
    match filter_size {
        0 | 1 | 3 => Some(size),
        5 => size.checked_sub(2).filter(|&s| s > 0), // padding 1
        7 => Some((size + 2 * 3 - 7) / 2 + 1),       // stride 2, padding 3
        _ => None,
    }
}

pub fn pool_output_size(size: usize, kernel: usize, stride: usize, padding: usize) -> usize {
    (size + 2 * padding - kernel) / stride + 1
}
