//! The convolution whose outputs `pnn fit-conv` and `pnn noise-stats` study: a random one on the
//! images, or a stride-1 3x3 convolution of a trained resnet18 checkpoint on the maps that reach
//! it. Targets are the convolution's outputs before BatchNorm: a perturbation layer replaces
//! the convolution, and its own output also goes to a BatchNorm.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::nn::conv::Conv2d;
use burn::tensor::{Device, Tensor, TensorData};

use crate::config::{Config, NetType};
use crate::data::{self, Data};
use crate::layer::conv::{self, ConvSpec};
use crate::models::{self, Geometry, Net, ResNet18};
use crate::train::checkpoint;

/// Where the target convolution comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum TargetSource {
    /// A random k x k convolution (padding k/2, no bias) from the image channels to `outputs`
    /// channels, initialised as the reference initialises convolutions.
    Random { outputs: usize, kernel: usize, seed: u64 },
    /// A resnet18 checkpoint, whose 3x3 convolutions are numbered from 0, the stem, then conv1
    /// and conv2 of each of the eight blocks.
    Checkpoint { dir: PathBuf },
}

/// A convolution and the way to the maps it receives.
pub struct Target {
    pub conv: Conv2d,
    /// Present for a checkpoint's layer: the network that produces its input.
    pub net: Option<ResNet18>,
    pub layer: usize,
    pub description: String,
    pub device: Device,
}

impl Target {
    /// Convolution `layer` of the source (a random target has only one: give 0), for images of
    /// `geometry`.
    pub fn new(
        source: &TargetSource,
        layer: usize,
        geometry: Geometry,
        config: Option<&Config>,
        device: &Device,
    ) -> Result<Self> {
        match source {
            TargetSource::Random { outputs, kernel, seed } => {
                if kernel % 2 == 0 || *kernel > 7 {
                    bail!("--target-kernel {kernel}: use an odd size of at most 7 (1, 3, 5, 7)");
                }
                device.seed(*seed);
                let conv = ConvSpec::new(geometry.channels, *outputs, *kernel)
                    .padding(kernel / 2)
                    .bias(false)
                    .init(device);
                Ok(Self {
                    conv,
                    net: None,
                    layer: 0,
                    description: format!(
                        "a random {kernel}x{kernel} convolution, {} -> {outputs} channels (seed {seed})",
                        geometry.channels
                    ),
                    device: device.clone(),
                })
            }
            TargetSource::Checkpoint { dir } => {
                let config = config.context("a checkpoint target needs its configuration")?;
                Checkpoint::load(dir, config, geometry, device)?.target(layer)
            }
        }
    }

    pub fn kernel(&self) -> usize {
        self.conv.weight.dims()[2]
    }

    /// The weights [O, C, k, k], row-major.
    pub fn weight_values(&self) -> Vec<f32> {
        self.conv
            .weight
            .val()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap_or_default()
    }

    /// The maps this convolution receives for a batch of normalised images, and its outputs.
    pub fn maps(&self, images: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let x = match &self.net {
            Some(net) => net.conv_input(images, self.layer),
            None => images,
        };
        let y = conv::forward(&self.conv, x.clone());
        (x, y)
    }

    /// [`Self::maps`] for host images (`[n, C, H, W]`, channel-major), back on the host.
    pub fn maps_of(&self, images: Vec<f32>, shape: [usize; 4]) -> (HostMaps, HostMaps) {
        let t = Tensor::from_data(TensorData::new(images, shape), &self.device);
        let (x, y) = self.maps(t);
        (HostMaps::of(x), HostMaps::of(y))
    }
}

/// A batch of maps on the host: `[n, C, H, W]` values, channel-major.
#[derive(Debug, Clone)]
pub struct HostMaps {
    pub values: Vec<f32>,
    pub shape: [usize; 4],
}

impl HostMaps {
    pub fn of(t: Tensor<4>) -> Self {
        let shape = t.dims();
        Self {
            values: t.into_data().try_to_vec::<f32>().expect("float maps"),
            shape,
        }
    }

    /// Image `i`'s maps.
    pub fn image(&self, i: usize) -> &[f32] {
        let n = self.shape[1] * self.shape[2] * self.shape[3];
        &self.values[i * n..][..n]
    }

    pub fn len(&self) -> usize {
        self.shape[0]
    }

    pub fn is_empty(&self) -> bool {
        self.shape[0] == 0
    }
}

/// The training configuration of a checkpoint, read from its `state.json` (which also checks
/// that it is one).
pub fn checkpoint_config(dir: &Path) -> Result<Config> {
    Ok(checkpoint::load_state(dir)?.config)
}

/// The resnet18 of a checkpoint, loaded once for as many of its layers as are studied.
pub struct Checkpoint {
    dir: PathBuf,
    /// On a plain (not autodiff) device: BatchNorm uses its running statistics.
    net: ResNet18,
    device: Device,
}

impl Checkpoint {
    /// Loads the model of a checkpoint whose state (`config`) [`checkpoint_config`] has read
    /// and checked.
    pub fn load(dir: &Path, config: &Config, geometry: Geometry, device: &Device) -> Result<Self> {
        if config.net_type != NetType::Resnet18 {
            bail!(
                "{} holds a {} model: fit-conv and noise-stats study the 3x3 convolutions of a resnet18 checkpoint \
                 (train one with `pnn train --net-type resnet18 ...`), or use --target random",
                dir.display(),
                Config::value_name(&config.net_type)
            );
        }
        let net = models::build_for(config, geometry, device)?;
        let Net::Resnet18(net) = checkpoint::load_model(dir, net)? else {
            unreachable!("built as resnet18")
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            net,
            device: device.clone(),
        })
    }

    /// The convolutions a perturbation layer (which keeps the map size) can stand in for.
    pub fn stride_one_layers(&self) -> Vec<usize> {
        let convs = self.net.convs();
        (0..convs.len()).filter(|&i| convs[i].stride == [1, 1]).collect()
    }

    /// Convolution `layer` as a target.
    pub fn target(&self, layer: usize) -> Result<Target> {
        let convs = self.net.convs();
        let Some(conv) = convs.get(layer) else {
            bail!(
                "--layer {layer}: resnet18 has 3x3 convolutions 0 (the stem) to {} (conv1 and conv2 of each block)",
                convs.len() - 1
            );
        };
        if conv.stride != [1, 1] {
            let usable: Vec<String> = self.stride_one_layers().iter().map(|i| i.to_string()).collect();
            bail!(
                "--layer {layer} is a stride-2 convolution, which a perturbation layer (it keeps the map size) \
                 cannot stand in for: use one of the stride-1 layers {}",
                usable.join(", ")
            );
        }
        let conv = (*conv).clone();
        let [o, c, k, _] = conv.weight.dims();
        Ok(Target {
            conv,
            layer,
            description: format!(
                "layer {layer} ({}) of the resnet18 checkpoint {}: a {k}x{k} convolution, {c} -> {o} channels",
                ResNet18::conv_name(layer),
                self.dir.display()
            ),
            net: Some(self.net.clone()),
            device: self.device.clone(),
        })
    }
}

/// Loads the data set a study runs on: the checkpoint's own (with `dataroot` replacing its
/// recorded one when given), or the named one for a random target.
pub fn load_data(config: &Config) -> Result<(Data, Geometry)> {
    let data = data::load(config)?;
    let geometry = Geometry::of_set(&data.train)?;
    Ok((data, geometry))
}
