//! `pnn noise-stats`: does a convolution's neighbourhood term behave like additive noise?
//!
//! The paper (section 3.4) splits a k x k convolution's output into the part from the centre
//! pixel and the rest, `Y = X_c + N_c`, and argues that the neighbourhood term `N_c` "behaves
//! like additive perturbation noise", which a perturbation layer supplies with fixed masks
//! instead. This measures, on real data and a trained (or random) convolution, the statistics of
//! `N_c` beside those of the masks' additive noise:
//!
//! - mean and standard deviation, and the size relative to what it is added to;
//! - correlation with the centre (for `N_c`: the centre term; for the masks: the pixel they are
//!   added to);
//! - how much of its variance is explained by a linear function of the centre pixel's channels,
//!   by the k x k patch around it (the centre and its neighbours), and by the pixel position alone
//!   (its mean over images at each position: the best a fixed additive mask could reproduce);
//! - correlation between horizontally adjacent pixels.
//!
//! Statistics are computed per output channel (per input channel for the masks) over every
//! image and pixel, then averaged over channels.

use anyhow::Result;
use rayon::prelude::*;
use serde::Serialize;

use super::features::{Block, Fitter, Maps};
use super::fit_conv::maps_in_batches;
use super::lstsq::NormalEquations;
use super::perturb_fit::{self, PerturbChoice};
use super::target::{HostMaps, Target, TargetSource};
use crate::config::Config;
use crate::data::{ImageSet, Normalization};
use crate::layer::fused::FusedAct;
use crate::models::Geometry;

pub struct NoiseStatsOptions {
    /// The checkpoint (its layers) or a random convolution.
    pub sources: Vec<TargetSource>,
    pub data: Config,
    pub images: usize,
    /// The masks compared with: level, noise type (one mask per channel, no activation).
    pub perturb: PerturbChoice,
    pub seed: u64,
    pub verbose: bool,
}

/// The statistics of one term, averaged over its channels.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TermStats {
    /// `neighbourhood` (a convolution's `N_c`) or `masks` (a perturbation layer's noise).
    pub term: String,
    pub layer: String,
    pub channels: usize,
    pub mean: f64,
    pub std: f64,
    /// std of the term / std of the output it is part of (`N_c`) or the input it is added to (masks).
    pub relative_size: f64,
    pub corr_centre: f64,
    pub r2_centre_pixel: f64,
    pub r2_patch: f64,
    pub r2_position: f64,
    pub autocorr_adjacent: f64,
}

/// Pearson correlation from running sums.
#[derive(Debug, Clone, Copy, Default)]
struct Pearson {
    n: f64,
    sx: f64,
    sy: f64,
    sxx: f64,
    syy: f64,
    sxy: f64,
}

impl Pearson {
    fn add(&mut self, x: f64, y: f64) {
        self.n += 1.0;
        self.sx += x;
        self.sy += y;
        self.sxx += x * x;
        self.syy += y * y;
        self.sxy += x * y;
    }
    fn merge(&mut self, o: &Self) {
        self.n += o.n;
        self.sx += o.sx;
        self.sy += o.sy;
        self.sxx += o.sxx;
        self.syy += o.syy;
        self.sxy += o.sxy;
    }
    fn corr(&self) -> f64 {
        let cov = self.sxy / self.n - (self.sx / self.n) * (self.sy / self.n);
        let vx = self.sxx / self.n - (self.sx / self.n).powi(2);
        let vy = self.syy / self.n - (self.sy / self.n).powi(2);
        if vx <= 0.0 || vy <= 0.0 {
            0.0
        } else {
            cov / (vx * vy).sqrt()
        }
    }
    /// Standard deviation of x, and of y.
    fn stds(&self) -> (f64, f64) {
        let vx = (self.sxx / self.n - (self.sx / self.n).powi(2)).max(0.0);
        let vy = (self.syy / self.n - (self.sy / self.n).powi(2)).max(0.0);
        (vx.sqrt(), vy.sqrt())
    }
}

/// Running sums for `channels` term maps over images.
#[derive(Debug, Clone)]
struct Accumulator {
    centre: NormalEquations,
    patch: NormalEquations,
    /// Per channel and pixel, the term's sum over images.
    position_sum: Vec<f64>,
    images: usize,
    /// (term, centre reference) per channel.
    with_centre: Vec<Pearson>,
    /// (term, size reference) per channel.
    with_size: Vec<Pearson>,
    /// (term at p, term at p + 1 to the right) per channel.
    adjacent: Vec<Pearson>,
}

/// The maps of one image to accumulate: each `channels x pixels`.
struct TermMaps<'a> {
    term: &'a [f64],
    centre_ref: &'a [f64],
    size_ref: &'a [f64],
    input: &'a [f32],
}

impl Accumulator {
    fn new(channels: usize, maps: Maps, kernel: usize) -> Self {
        let centre_f = Fitter::Conv { kernel: 1 }.features(&all(maps));
        let patch_f = Fitter::Conv { kernel }.features(&all(maps));
        Self {
            centre: NormalEquations::new(centre_f, channels),
            patch: NormalEquations::new(patch_f, channels),
            position_sum: vec![0.0; channels * maps.pixels()],
            images: 0,
            with_centre: vec![Pearson::default(); channels],
            with_size: vec![Pearson::default(); channels],
            adjacent: vec![Pearson::default(); channels],
        }
    }

    fn add(&mut self, t: &TermMaps, maps: Maps, kernel: usize) {
        let p_len = maps.pixels();
        let block = all(maps);
        for (fitter, sums) in [
            (Fitter::Conv { kernel: 1 }, &mut self.centre),
            (Fitter::Conv { kernel }, &mut self.patch),
        ] {
            let mut phi = vec![0f64; p_len * sums.features];
            fitter.fill(&block, maps, t.input, &mut phi);
            sums.add(&phi, t.term, p_len);
        }
        for (k, ((pos, with_centre), (with_size, adjacent))) in self
            .position_sum
            .chunks_mut(p_len)
            .zip(self.with_centre.iter_mut())
            .zip(self.with_size.iter_mut().zip(self.adjacent.iter_mut()))
            .enumerate()
        {
            let z = &t.term[k * p_len..][..p_len];
            for (p, &v) in z.iter().enumerate() {
                pos[p] += v;
                with_centre.add(v, t.centre_ref[k * p_len + p]);
                with_size.add(v, t.size_ref[k * p_len + p]);
                if (p + 1) % maps.width != 0 {
                    adjacent.add(v, z[p + 1]);
                }
            }
        }
        self.images += 1;
    }

    fn merge(&mut self, o: &Self) {
        self.centre.merge(&o.centre);
        self.patch.merge(&o.patch);
        for (a, b) in self.position_sum.iter_mut().zip(&o.position_sum) {
            *a += b;
        }
        self.images += o.images;
        for (a, b) in self.with_centre.iter_mut().zip(&o.with_centre) {
            a.merge(b);
        }
        for (a, b) in self.with_size.iter_mut().zip(&o.with_size) {
            a.merge(b);
        }
        for (a, b) in self.adjacent.iter_mut().zip(&o.adjacent) {
            a.merge(b);
        }
    }

    fn finish(&self, term: &str, layer: &str, p_len: usize) -> Result<TermStats> {
        let channels = self.with_centre.len();
        let r2 = |sums: &NormalEquations| -> Result<Vec<f64>> {
            let beta = sums.solve()?;
            let sse = sums.fitted_error_per_output(&beta);
            let sst = sums.centred_target_sq();
            Ok(sse
                .iter()
                .zip(&sst)
                .map(|(e, t)| if *t > 0.0 { 1.0 - e / t } else { 0.0 })
                .collect())
        };
        let r2_centre = r2(&self.centre)?;
        let r2_patch = r2(&self.patch)?;
        let sst = self.centre.centred_target_sq();
        let n = self.images as f64;
        let r2_position: Vec<f64> = (0..channels)
            .map(|k| {
                let sums = &self.position_sum[k * p_len..][..p_len];
                let grand = sums.iter().sum::<f64>() / (n * p_len as f64);
                let between: f64 = sums.iter().map(|s| n * (s / n - grand).powi(2)).sum();
                if sst[k] > 0.0 { between / sst[k] } else { 0.0 }
            })
            .collect();
        let mean_of = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let means: Vec<f64> = self.with_size.iter().map(|p| p.sx / p.n).collect();
        let stds: Vec<f64> = self.with_size.iter().map(|p| p.stds().0).collect();
        let sizes: Vec<f64> = self
            .with_size
            .iter()
            .map(|p| {
                let (sz, sr) = p.stds();
                if sr > 0.0 { sz / sr } else { 0.0 }
            })
            .collect();
        Ok(TermStats {
            term: term.into(),
            layer: layer.into(),
            channels,
            mean: mean_of(&means),
            std: mean_of(&stds),
            relative_size: mean_of(&sizes),
            corr_centre: mean_of(&self.with_centre.iter().map(Pearson::corr).collect::<Vec<_>>()),
            r2_centre_pixel: mean_of(&r2_centre),
            r2_patch: mean_of(&r2_patch),
            r2_position: mean_of(&r2_position),
            autocorr_adjacent: mean_of(&self.adjacent.iter().map(Pearson::corr).collect::<Vec<_>>()),
        })
    }
}

fn all(maps: Maps) -> Block {
    Block {
        outputs: 0..maps.outputs,
        channels: 0..maps.channels,
    }
}

/// Splits a k x k convolution's outputs into the centre term (the kernel's centre tap) and the
/// neighbourhood term `N_c = Y - centre`, per image: each `[O, pixels]`.
pub fn split_centre(weight: &[f32], kernel: usize, maps: Maps, x: &[f32], y: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let p_len = maps.pixels();
    let (c_n, o_n) = (maps.channels, maps.outputs);
    let centre_tap = (kernel / 2) * kernel + kernel / 2;
    let mut centre = vec![0f64; o_n * p_len];
    for o in 0..o_n {
        let out = &mut centre[o * p_len..][..p_len];
        for c in 0..c_n {
            let w = weight[(o * c_n + c) * kernel * kernel + centre_tap] as f64;
            for (d, &v) in out.iter_mut().zip(&x[c * p_len..][..p_len]) {
                *d += w * v as f64;
            }
        }
    }
    let neighbourhood = y.iter().zip(&centre).map(|(&y, &c)| y as f64 - c).collect();
    (centre, neighbourhood)
}

/// The statistics of one target's neighbourhood term, and of the masks compared with it.
fn layer_stats(opts: &NoiseStatsOptions, source: &TargetSource, data: &StudyData) -> Result<LayerStats> {
    let device = burn::tensor::Device::flex();
    let target = Target::new(source, data.geometry, Some(&opts.data), &device)?;
    let images: Vec<usize> = (0..opts.images.min(data.test.len())).collect();
    let batches = maps_in_batches(&target, &data.test, &data.normalization, &images);
    let (x0, y0) = &batches[0];
    let in_maps = Maps {
        channels: x0.shape[1],
        outputs: x0.shape[1],
        height: x0.shape[2],
        width: x0.shape[3],
    };
    let out_maps = Maps {
        outputs: y0.shape[1],
        ..in_maps
    };
    let kernel = target.kernel();
    let weight = target.weight_values();
    let layer = match source {
        TargetSource::Checkpoint { layer, .. } => format!("{layer}"),
        TargetSource::Random { .. } => "random".into(),
    };

    // The masks a perturbation layer would add to this layer's input: one per channel.
    let pnn = perturb_fit::build_layer(&opts.perturb, 1, in_maps, false, opts.seed, &device);
    let masks = perturb_fit::masks_of(&pnn, &opts.perturb, FusedAct::Identity);
    let p_len = in_maps.pixels();
    let noise: Vec<f64> = (0..in_maps.channels)
        .flat_map(|c| {
            let mc = if masks.channels == 1 { 0 } else { c };
            masks.values[mc * p_len..][..p_len]
                .iter()
                .map(|&v| masks.level * v as f64)
        })
        .collect();

    let per_image = |x: &HostMaps, y: &HostMaps, i: usize| (x.image(i).to_vec(), y.image(i).to_vec());
    let pairs: Vec<(Vec<f32>, Vec<f32>)> = batches
        .iter()
        .flat_map(|(x, y)| (0..x.len()).map(move |i| per_image(x, y, i)))
        .collect();
    let conv_acc = pairs
        .par_iter()
        .fold(
            || Accumulator::new(out_maps.outputs, out_maps, kernel),
            |mut acc, (x, y)| {
                let (centre, neighbourhood) = split_centre(&weight, kernel, out_maps, x, y);
                let y64: Vec<f64> = y.iter().map(|&v| v as f64).collect();
                let t = TermMaps {
                    term: &neighbourhood,
                    centre_ref: &centre,
                    size_ref: &y64,
                    input: x,
                };
                acc.add(&t, out_maps, kernel);
                acc
            },
        )
        .reduce_with(|mut a, b| {
            a.merge(&b);
            a
        })
        .expect("at least one image");
    let mask_acc = pairs
        .par_iter()
        .fold(
            || Accumulator::new(in_maps.channels, in_maps, kernel),
            |mut acc, (x, _)| {
                let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
                let t = TermMaps {
                    term: &noise,
                    centre_ref: &x64,
                    size_ref: &x64,
                    input: x,
                };
                acc.add(&t, in_maps, kernel);
                acc
            },
        )
        .reduce_with(|mut a, b| {
            a.merge(&b);
            a
        })
        .expect("at least one image");
    Ok(LayerStats {
        target: target.description.clone(),
        neighbourhood: conv_acc.finish("neighbourhood", &layer, out_maps.pixels())?,
        masks: mask_acc.finish("masks", &layer, p_len)?,
    })
}

/// One studied convolution: its neighbourhood term and the masks beside it.
#[derive(Debug, Clone, Serialize)]
pub struct LayerStats {
    pub target: String,
    pub neighbourhood: TermStats,
    pub masks: TermStats,
}

/// The test images the statistics are computed on.
struct StudyData {
    test: ImageSet,
    normalization: Normalization,
    geometry: Geometry,
}

/// Runs the study for every target.
pub fn run(opts: &NoiseStatsOptions) -> Result<Vec<LayerStats>> {
    let (data, geometry) = super::target::load_data(&opts.data)?;
    let data = StudyData {
        test: data.test,
        normalization: data.normalization,
        geometry,
    };
    let mut out = Vec::new();
    for source in &opts.sources {
        let stats = layer_stats(opts, source, &data)?;
        if opts.verbose {
            println!(
                "{}: R^2 by position {:.3} (masks {:.3}), by the centre pixel {:.3} (masks {:.3})",
                stats.target,
                stats.neighbourhood.r2_position,
                stats.masks.r2_position,
                stats.neighbourhood.r2_centre_pixel,
                stats.masks.r2_centre_pixel
            );
        }
        out.push(stats);
    }
    Ok(out)
}
