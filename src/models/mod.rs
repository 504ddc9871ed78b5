//! The networks. `build` turns a configuration into a model; `Net` dispatches to it.
//!
//! Adding a model: its own file here, a burn `Module` with
//! `fn new(config: &Config, geometry: Geometry, device: &Device) -> Result<Self>` (which follows
//! its maps with [`map_size::MapSize`], so it refuses a geometry it cannot take) and
//! `fn forward(&self, x: Tensor<4>) -> Tensor<2>`; its `pub mod` line below; its `--net-type`
//! value in `config::NetType`; and one line in the `networks!` list. `tests/flags.rs` then
//! builds it under every flag combination and data geometry, and `tests/models.rs` holds the
//! parameter counts of the reference.
//!
//! Adding an operation: see `crate::ops`.

pub mod cifarnet;
pub mod footprint;
pub mod lenet;
pub mod map_size;
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

/// Declares the networks: for each `NetType` variant (the `--net-type` value) the model type
/// that variant builds, which becomes a `Net` variant of the same name. The match in `construct`
/// is exhaustive, so a `NetType` without a line here does not compile.
macro_rules! networks {
    ($($variant:ident => $model:ty),* $(,)?) => {
        #[derive(Module, Debug)]
        pub enum Net {
            $($variant($model)),*
        }

        impl Net {
            pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
                match self {
                    $(Net::$variant(m) => m.forward(x)),*
                }
            }
        }

        /// The model of `config.net_type`; its constructor refuses a geometry it cannot take.
        fn construct(config: &Config, geometry: Geometry, device: &Device) -> Result<Net> {
            Ok(match config.net_type {
                $(NetType::$variant => Net::$variant(<$model>::new(config, geometry, device)?)),*
            })
        }
    };
}

networks! {
    Lenet => LeNet,
    Cifarnet => CifarNet,
    Resnet18 => ResNet18,
    Noiseresnet18 => NoiseResNet18,
    PerturbResnet18 => PerturbResNet18,
}

/// Builds the model a configuration describes for its named data set, with the reference's
/// initialisation.
pub fn build(config: &Config, device: &Device) -> Result<Net> {
    build_for(config, Geometry::of(config)?, device)
}

/// Builds the model for data of the given geometry.
pub fn build_for(config: &Config, geometry: Geometry, device: &Device) -> Result<Net> {
    let model = construct(config, geometry, device)?;
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
