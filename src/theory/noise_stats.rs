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
//! image and pixel, then averaged over channels. The three regressions are fitted on every other
//! image and scored on the others: the patch of a deep layer has thousands of inputs, and scored
//! on its own images it would be credited for fitting noise.

use anyhow::Result;
use rayon::prelude::*;
use serde::Serialize;

use super::features::{Block, Fitter, Maps};
use super::fit_conv::maps_in_batches;
use super::lstsq::{NormalEquations, predict};
use super::perturb_fit::{self, PerturbChoice};
use super::target::{Checkpoint, Target, TargetSource};
use crate::config::Config;
use crate::data::{ImageSet, Normalization};
use crate::ops::activation::FusedAct;

pub struct NoiseStatsOptions {
    /// A checkpoint or a random convolution.
    pub source: TargetSource,
    /// The checkpoint's convolutions to study; `None`: every stride-1 one.
    pub layers: Option<Vec<usize>>,
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

/// What is measured of one image: each `channels x pixels`.
struct TermMaps {
    term: Vec<f64>,
    /// What the term is correlated with (the centre term, or the pixel a mask is added to).
    centre_ref: Vec<f64>,
    /// What the term's size is compared with (the output, or the input).
    size_ref: Vec<f64>,
}

/// Pass 1, over the images of the fitting half: the regressions' sums and the per-position sums.
#[derive(Debug, Clone)]
struct FitSums {
    centre: NormalEquations,
    patch: NormalEquations,
    /// Per channel and pixel, the term's sum over images.
    position_sum: Vec<f64>,
    images: usize,
}

/// Over every image: correlations and sizes.
#[derive(Debug, Clone)]
struct Moments {
    /// (term, centre reference) per channel.
    with_centre: Vec<Pearson>,
    /// (term, size reference) per channel.
    with_size: Vec<Pearson>,
    /// (term at p, term at p + 1 to the right) per channel.
    adjacent: Vec<Pearson>,
}

/// Pass 2, over the held-out half: each predictor's squared error, and the squares about the
/// fitting half's mean, per channel.
#[derive(Debug, Clone)]
struct HeldOut {
    sse_centre: Vec<f64>,
    sse_patch: Vec<f64>,
    sse_position: Vec<f64>,
    sst: Vec<f64>,
}

/// The study of one term: its regressions are fitted on every other image and scored on the
/// rest, so that a predictor with many inputs (the patch of a deep layer has thousands) is not
/// credited for fitting noise.
struct Study<'a> {
    channels: usize,
    maps: Maps,
    kernel: usize,
    term_of: &'a (dyn Fn(&[f32], &[f32]) -> TermMaps + Sync),
}

impl Study<'_> {
    fn predictors(&self) -> [Fitter; 2] {
        [Fitter::Conv { kernel: 1 }, Fitter::Conv { kernel: self.kernel }]
    }

    fn features_of(&self, fitter: &Fitter, x: &[f32]) -> Vec<f64> {
        let block = all(self.maps);
        let mut phi = vec![0f64; self.maps.pixels() * fitter.features(&block)];
        fitter.fill(&block, self.maps, x, &mut phi);
        phi
    }

    fn fit(&self, pairs: &[&(Vec<f32>, Vec<f32>)]) -> FitSums {
        let block = all(self.maps);
        let [centre, patch] = self.predictors();
        let fresh = || FitSums {
            centre: NormalEquations::new(centre.features(&block), self.channels),
            patch: NormalEquations::new(patch.features(&block), self.channels),
            position_sum: vec![0.0; self.channels * self.maps.pixels()],
            images: 0,
        };
        let p_len = self.maps.pixels();
        pairs
            .par_iter()
            .fold(fresh, |mut acc, (x, y)| {
                let t = (self.term_of)(x, y);
                acc.centre.add(&self.features_of(&centre, x), &t.term, p_len);
                acc.patch.add(&self.features_of(&patch, x), &t.term, p_len);
                for (s, v) in acc.position_sum.iter_mut().zip(&t.term) {
                    *s += v;
                }
                acc.images += 1;
                acc
            })
            .reduce(fresh, |mut a, b| {
                a.centre.merge(&b.centre);
                a.patch.merge(&b.patch);
                for (s, v) in a.position_sum.iter_mut().zip(&b.position_sum) {
                    *s += v;
                }
                a.images += b.images;
                a
            })
    }

    fn moments(&self, pairs: &[(Vec<f32>, Vec<f32>)]) -> Moments {
        let p_len = self.maps.pixels();
        let width = self.maps.width;
        let fresh = || Moments {
            with_centre: vec![Pearson::default(); self.channels],
            with_size: vec![Pearson::default(); self.channels],
            adjacent: vec![Pearson::default(); self.channels],
        };
        pairs
            .par_iter()
            .fold(fresh, |mut m, (x, y)| {
                let t = (self.term_of)(x, y);
                for k in 0..self.channels {
                    let z = &t.term[k * p_len..][..p_len];
                    for (p, &v) in z.iter().enumerate() {
                        m.with_centre[k].add(v, t.centre_ref[k * p_len + p]);
                        m.with_size[k].add(v, t.size_ref[k * p_len + p]);
                        if (p + 1) % width != 0 {
                            m.adjacent[k].add(v, z[p + 1]);
                        }
                    }
                }
                m
            })
            .reduce(fresh, |mut a, b| {
                for (x, y) in [
                    (&mut a.with_centre, &b.with_centre),
                    (&mut a.with_size, &b.with_size),
                    (&mut a.adjacent, &b.adjacent),
                ] {
                    for (p, q) in x.iter_mut().zip(y) {
                        p.merge(q);
                    }
                }
                a
            })
    }

    fn held_out(&self, pairs: &[&(Vec<f32>, Vec<f32>)], sums: &FitSums, betas: &[Vec<f64>; 2]) -> HeldOut {
        let p_len = self.maps.pixels();
        let n = sums.images as f64;
        let mean: Vec<f64> = (0..self.channels)
            .map(|k| sums.position_sum[k * p_len..][..p_len].iter().sum::<f64>() / (n * p_len as f64))
            .collect();
        let predictors = self.predictors();
        let fresh = || HeldOut {
            sse_centre: vec![0.0; self.channels],
            sse_patch: vec![0.0; self.channels],
            sse_position: vec![0.0; self.channels],
            sst: vec![0.0; self.channels],
        };
        pairs
            .par_iter()
            .fold(fresh, |mut h, (x, y)| {
                let t = (self.term_of)(x, y);
                for (fitter, (beta, sse)) in predictors
                    .iter()
                    .zip(betas.iter().zip([&mut h.sse_centre, &mut h.sse_patch]))
                {
                    let phi = self.features_of(fitter, x);
                    let f = phi.len() / p_len;
                    let pred = predict(&phi, beta, p_len, f, self.channels);
                    for k in 0..self.channels {
                        sse[k] += pred[k * p_len..][..p_len]
                            .iter()
                            .zip(&t.term[k * p_len..][..p_len])
                            .map(|(a, b)| (a - b).powi(2))
                            .sum::<f64>();
                    }
                }
                for k in 0..self.channels {
                    for p in 0..p_len {
                        let v = t.term[k * p_len + p];
                        h.sse_position[k] += (v - sums.position_sum[k * p_len + p] / n).powi(2);
                        h.sst[k] += (v - mean[k]).powi(2);
                    }
                }
                h
            })
            .reduce(fresh, |mut a, b| {
                for (x, y) in [
                    (&mut a.sse_centre, &b.sse_centre),
                    (&mut a.sse_patch, &b.sse_patch),
                    (&mut a.sse_position, &b.sse_position),
                    (&mut a.sst, &b.sst),
                ] {
                    for (p, q) in x.iter_mut().zip(y) {
                        *p += q;
                    }
                }
                a
            })
    }

    /// Every statistic of the term over `pairs` (input maps, output maps per image).
    fn run(&self, pairs: &[(Vec<f32>, Vec<f32>)], term: &str, layer: &str) -> Result<TermStats> {
        let (fit, rest): (Vec<_>, Vec<_>) = pairs.iter().enumerate().partition(|(i, _)| i % 2 == 0);
        let fit: Vec<_> = fit.into_iter().map(|(_, p)| p).collect();
        let rest: Vec<_> = rest.into_iter().map(|(_, p)| p).collect();
        if rest.is_empty() {
            anyhow::bail!(
                "noise-stats needs at least 2 images (half fit the predictors, half score them): raise --images"
            );
        }
        let sums = self.fit(&fit);
        let betas = [sums.centre.solve()?, sums.patch.solve()?];
        let h = self.held_out(&rest, &sums, &betas);
        let m = self.moments(pairs);
        let r2 = |sse: &[f64]| -> f64 {
            let per: Vec<f64> = sse
                .iter()
                .zip(&h.sst)
                .map(|(e, t)| if *t > 0.0 { 1.0 - e / t } else { 0.0 })
                .collect();
            mean_of(&per)
        };
        let sizes: Vec<f64> = m
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
            channels: self.channels,
            mean: mean_of(&m.with_size.iter().map(|p| p.sx / p.n).collect::<Vec<_>>()),
            std: mean_of(&m.with_size.iter().map(|p| p.stds().0).collect::<Vec<_>>()),
            relative_size: mean_of(&sizes),
            corr_centre: mean_of(&m.with_centre.iter().map(Pearson::corr).collect::<Vec<_>>()),
            r2_centre_pixel: r2(&h.sse_centre),
            r2_patch: r2(&h.sse_patch),
            r2_position: r2(&h.sse_position),
            autocorr_adjacent: mean_of(&m.adjacent.iter().map(Pearson::corr).collect::<Vec<_>>()),
        })
    }
}

fn mean_of(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
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
fn layer_stats(opts: &NoiseStatsOptions, target: &Target, data: &StudyData) -> Result<LayerStats> {
    let images: Vec<usize> = (0..opts.images.min(data.test.len())).collect();
    let batches = maps_in_batches(target, &data.test, &data.normalization, &images);
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
    let layer = match target.net {
        Some(_) => target.layer.to_string(),
        None => "random".into(),
    };

    // The masks a perturbation layer would add to this layer's input: one per channel.
    let pnn = perturb_fit::build_layer(&opts.perturb, 1, in_maps, false, opts.seed, &target.device);
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

    let pairs: Vec<(Vec<f32>, Vec<f32>)> = batches
        .iter()
        .flat_map(|(x, y)| (0..x.len()).map(move |i| (x.image(i).to_vec(), y.image(i).to_vec())))
        .collect();
    let neighbourhood_of = |x: &[f32], y: &[f32]| {
        let (centre, neighbourhood) = split_centre(&weight, kernel, out_maps, x, y);
        TermMaps {
            term: neighbourhood,
            centre_ref: centre,
            size_ref: y.iter().map(|&v| v as f64).collect(),
        }
    };
    let masks_of = |x: &[f32], _: &[f32]| {
        let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        TermMaps {
            term: noise.clone(),
            centre_ref: x64.clone(),
            size_ref: x64,
        }
    };
    let conv_study = Study {
        channels: out_maps.outputs,
        maps: out_maps,
        kernel,
        term_of: &neighbourhood_of,
    };
    let mask_study = Study {
        channels: in_maps.channels,
        maps: in_maps,
        kernel,
        term_of: &masks_of,
    };
    Ok(LayerStats {
        target: target.description.clone(),
        neighbourhood: conv_study.run(&pairs, "neighbourhood", &layer)?,
        masks: mask_study.run(&pairs, "masks", &layer)?,
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
}

/// Runs the study for every target.
pub fn run(opts: &NoiseStatsOptions) -> Result<Vec<LayerStats>> {
    let (data, geometry) = super::target::load_data(&opts.data)?;
    let data = StudyData {
        test: data.test,
        normalization: data.normalization,
    };
    let device = burn::tensor::Device::flex();
    let targets = match &opts.source {
        TargetSource::Random { .. } => vec![Target::new(&opts.source, 0, geometry, Some(&opts.data), &device)?],
        TargetSource::Checkpoint { dir } => {
            let checkpoint = Checkpoint::load(dir, &opts.data, geometry, &device)?;
            let layers = opts.layers.clone().unwrap_or_else(|| checkpoint.stride_one_layers());
            layers
                .into_iter()
                .map(|l| checkpoint.target(l))
                .collect::<Result<Vec<_>>>()?
        }
    };
    let mut out = Vec::new();
    for target in &targets {
        let stats = layer_stats(opts, target, &data)?;
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
