//! The per-pixel features of each layer `pnn fit-conv` fits. Every fitted layer is linear in its
//! weights given these features, so least squares fits it exactly (`lstsq.rs`):
//!
//! - a constant: one feature, 1 (each output's mean; the floor any layer should beat);
//! - a k x k convolution with bias (stride 1, zero padding k/2): the k x k patch of every
//!   input channel around the pixel, and 1. k = 1 is the plain 1x1 convolution without noise;
//!   k = the target's size is the ceiling (it contains the target);
//! - a perturbation layer with fixed masks: `act(x_c(p) + level * n_{c,m}(p))` for its input
//!   channels c and masks m, and 1 (the combining 1x1 convolution's bias). As in the
//!   reproduction's layer, with several masks the combination is grouped by input channel: an
//!   output sees the masks of one channel only (`ungrouped` lets every output see all).

use std::ops::Range;

use crate::ops::activation::FusedAct;

/// Masks of a perturbation layer, read back from the layer itself so that the features use
/// exactly its noise: `[mask_channels, nmasks, pixels]`.
#[derive(Debug, Clone)]
pub struct Masks {
    pub values: Vec<f32>,
    /// C (unique masks) or 1 (shared by every channel).
    pub channels: usize,
    pub nmasks: usize,
    pub level: f64,
    pub act: FusedAct,
    /// Every output combines every channel's perturbed maps (one block), instead of the
    /// reproduction's grouping by input channel.
    pub ungrouped: bool,
}

#[derive(Debug, Clone)]
pub enum Fitter {
    Constant,
    Conv { kernel: usize },
    Perturb(Masks),
}

/// The outputs that share one set of features, and the input channels those features read.
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    pub outputs: Range<usize>,
    pub channels: Range<usize>,
}

/// Sizes of the maps a fitter reads and writes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Maps {
    pub channels: usize,
    pub outputs: usize,
    pub height: usize,
    pub width: usize,
}

impl Maps {
    pub fn pixels(&self) -> usize {
        self.height * self.width
    }
}

impl Fitter {
    /// The blocks of outputs fitted separately (one for every ungrouped layer).
    pub fn blocks(&self, maps: Maps) -> Vec<Block> {
        match self {
            Fitter::Perturb(m) if m.nmasks > 1 && !m.ungrouped => {
                let per = maps.outputs / maps.channels;
                (0..maps.channels)
                    .map(|c| Block {
                        outputs: c * per..(c + 1) * per,
                        channels: c..c + 1,
                    })
                    .collect()
            }
            _ => vec![Block {
                outputs: 0..maps.outputs,
                channels: 0..maps.channels,
            }],
        }
    }

    /// Features per pixel of a block (its weights per output, bias included).
    pub fn features(&self, block: &Block) -> usize {
        let channels = block.channels.len();
        1 + match self {
            Fitter::Constant => 0,
            Fitter::Conv { kernel } => channels * kernel * kernel,
            Fitter::Perturb(m) => channels * m.nmasks,
        }
    }

    /// Learned weights of the whole layer (the features of every block times its outputs).
    pub fn weights(&self, maps: Maps) -> usize {
        self.blocks(maps)
            .iter()
            .map(|b| self.features(b) * b.outputs.len())
            .sum()
    }

    /// Writes the features of one image's block: `phi` is pixels x features, row-major; `x` is
    /// the image's input maps, channel-major.
    pub fn fill(&self, block: &Block, maps: Maps, x: &[f32], phi: &mut [f64]) {
        let f = self.features(block);
        let (h, w) = (maps.height, maps.width);
        let p_len = maps.pixels();
        debug_assert_eq!(phi.len(), p_len * f);
        debug_assert_eq!(x.len(), maps.channels * p_len);
        for row in phi.chunks_mut(f) {
            row[f - 1] = 1.0;
        }
        match self {
            Fitter::Constant => {}
            Fitter::Conv { kernel } => {
                let (k, pad) = (*kernel as isize, (*kernel / 2) as isize);
                for (ci, c) in block.channels.clone().enumerate() {
                    let plane = &x[c * p_len..][..p_len];
                    for (p, row) in phi.chunks_mut(f).enumerate() {
                        let (py, px) = ((p / w) as isize, (p % w) as isize);
                        for i in 0..k {
                            for j in 0..k {
                                let (y, xx) = (py + i - pad, px + j - pad);
                                let inside = y >= 0 && xx >= 0 && y < h as isize && xx < w as isize;
                                row[(ci * k as usize + i as usize) * k as usize + j as usize] = if inside {
                                    plane[y as usize * w + xx as usize] as f64
                                } else {
                                    0.0
                                };
                            }
                        }
                    }
                }
            }
            Fitter::Perturb(m) => {
                for (ci, c) in block.channels.clone().enumerate() {
                    let plane = &x[c * p_len..][..p_len];
                    let mask_channel = if m.channels == 1 { 0 } else { c };
                    for mask in 0..m.nmasks {
                        let noise = &m.values[(mask_channel * m.nmasks + mask) * p_len..][..p_len];
                        let col = ci * m.nmasks + mask;
                        for (p, row) in phi.chunks_mut(f).enumerate() {
                            row[col] = activate(m.act, plane[p] as f64 + m.level * noise[p] as f64);
                        }
                    }
                }
            }
        }
    }
}

/// PyTorch's activations, in f64: the formulas of `ops::activation`, with its constants.
pub fn activate(act: FusedAct, v: f64) -> f64 {
    use crate::ops::activation::{LRELU_SLOPE_F64, SELU_ALPHA_F64 as SELU_ALPHA, SELU_SCALE_F64 as SELU_SCALE};
    match act {
        FusedAct::Identity => v,
        FusedAct::Relu => v.max(0.0),
        FusedAct::Lrelu => {
            if v > 0.0 {
                v
            } else {
                LRELU_SLOPE_F64 * v
            }
        }
        FusedAct::Elu => {
            if v > 0.0 {
                v
            } else {
                v.exp_m1()
            }
        }
        FusedAct::Selu => SELU_SCALE * if v > 0.0 { v } else { SELU_ALPHA * v.exp_m1() },
        FusedAct::Tanh => v.tanh(),
        FusedAct::Sigmoid => 1.0 / (1.0 + (-v).exp()),
    }
}
