//! The side of the square feature maps, followed through a network as its constructor builds it.
//! Each step is checked, so a constructor refuses a geometry its layers cannot take, with the
//! flags and the layer named, where the reference crashes: a filter larger than the maps it
//! receives, or (in the pooled ResNets) an odd size entering a stride-2 stage, where the block
//! halves its maps by pooling (rounding down) and the shortcut's strided convolution rounds up,
//! so the residual sum's two sides differ (e.g. perturb_resnet18 on 28x28 MNIST).

use anyhow::{Result, bail};

use super::Geometry;
use crate::config::Config;

pub struct MapSize {
    side: usize,
    /// The flags that decide the sizes, for messages.
    flags: String,
}

impl MapSize {
    /// The input images' side.
    pub fn new(config: &Config, geometry: Geometry) -> Self {
        let side = geometry.input_size;
        let flags = format!(
            "--net-type {} --first_filter_size {} --filter_size {} on {side}x{side} images",
            Config::value_name(&config.net_type),
            config.first_filter_size,
            config.filter_size
        );
        Self { side, flags }
    }

    pub fn side(&self) -> usize {
        self.side
    }

    /// Through a perturbation layer (size kept) or the reference's convolution of `filter`'s size.
    pub fn layer(&mut self, filter: usize, layer: &str) -> Result<usize> {
        let size = self.side;
        match layer_output_size(size, filter) {
            Some(out) => self.side = out,
            None => bail!(
                "{}: {layer} receives {size}x{size} maps, too small for its {filter}x{filter} filter \
                 (which takes 2 pixels off each side): use a filter of size 0, 1 or 3 there, or larger images",
                self.flags
            ),
        }
        Ok(self.side)
    }

    /// Through the models' pooling: a 3x3 window, stride 2, padding 1.
    pub fn pool(&mut self) -> usize {
        self.side = (self.side + 2 - 3) / 2 + 1;
        self.side
    }

    /// Through residual stage `stage` (from 0) of a ResNet that strides by `stride` with pooling
    /// beside a strided shortcut.
    pub fn stage(&mut self, stage: usize, stride: usize) -> Result<usize> {
        let size = self.side;
        if stride == 2 && size % 2 == 1 {
            bail!(
                "{}: stage {} receives {size}x{size} maps, where the block's pooling and its shortcut's strided \
                 convolution give different sizes (the reference crashes here too). Use 32x32 images (CIFAR), or \
                 lenet / cifarnet / resnet18 for this data set",
                self.flags,
                stage + 1
            );
        }
        self.side = size / stride;
        if self.side == 0 {
            bail!(
                "{}: the feature maps shrink to nothing before stage {}: use larger images",
                self.flags,
                stage + 1
            );
        }
        Ok(self.side)
    }
}

/// The side after a perturbation layer (size kept) or the reference's convolution of that size,
/// or `None` where the filter does not fit: a 5x5 filter with padding 1 needs maps of at least
/// 3x3. Filter sizes other than 0, 1, 3, 5, 7 are refused by configuration validation.
fn layer_output_size(size: usize, filter_size: usize) -> Option<usize> {
    match filter_size {
        0 | 1 | 3 => Some(size),
        5 => size.checked_sub(2).filter(|&s| s > 0), // padding 1
        7 => Some((size + 2 * 3 - 7) / 2 + 1),       // stride 2, padding 3
        _ => None,
    }
}
