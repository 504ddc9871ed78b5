//! `pnn fit-conv`: can a perturbation layer stand in for a convolution?
//!
//! The paper (section 3.3) argues that for a known input x and convolution A one can always
//! solve for noise that makes a perturbation layer give A's output. That holds for one input;
//! whether one set of weights matches the convolution on every input of a data set is a
//! different question, and this experiment measures it. It fits, on the first 1, N, ... images of
//! a fixed shuffled order of the training set, each of:
//!
//! - a constant per output (the floor),
//! - a plain 1x1 convolution (no noise),
//! - perturbation layers with 1, 2, 4, ... fixed masks (exactly, by least squares), and with
//!   `--train_masks` the same layers with masks trained by gradient descent,
//! - a convolution of the target's own size (the ceiling: it contains the target),
//!
//! and reports each one's relative error `|Y' - Y| / |Y|` on the fitted images and on held-out
//! test images.

use anyhow::{Result, bail};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::features::{Block, Fitter, Maps};
use super::lstsq::{NormalEquations, predict};
use super::perturb_fit::{self, Descent, PerturbChoice};
use super::target::{HostMaps, Target, TargetSource};
use crate::config::Config;
use crate::data::ImageSet;
use crate::data::Normalization;
use crate::data::loader::make_batch;
use crate::layer::PerturbLayer;

/// Features of one block above which a least-squares fit is refused: its sums take
/// features^2 x 8 bytes, and every image costs pixels x features^2 operations.
pub const MAX_FEATURES: usize = 4096;

/// How many images of the training set a fit uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum FitSize {
    Images(usize),
    /// The whole training set (or `--train-subset`).
    All,
}

impl std::str::FromStr for FitSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("all") {
            return Ok(FitSize::All);
        }
        match s.parse::<usize>() {
            Ok(0) | Err(_) => Err(format!("`{s}`: give a number of images of at least 1, or `all`")),
            Ok(n) => Ok(FitSize::Images(n)),
        }
    }
}

pub struct FitConvOptions {
    pub source: TargetSource,
    /// Which convolution of a checkpoint (0 for a random target).
    pub layer: usize,
    /// The data: the checkpoint's configuration, or the data flags for a random target.
    pub data: Config,
    pub nmasks: Vec<usize>,
    pub perturb: PerturbChoice,
    pub train_masks: bool,
    pub descent: Descent,
    pub fit_sizes: Vec<FitSize>,
    pub heldout: usize,
    pub seed: u64,
    pub verbose: bool,
}

/// One fitted layer on one fit set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FitRow {
    pub fit_images: usize,
    /// `constant`, `conv1x1`, `perturb`, `perturb-trained`, `conv3x3` (the target's size).
    pub model: String,
    pub nmasks: Option<usize>,
    /// Learned weights (biases included; trained masks not counted).
    pub weights: usize,
    /// Relative error on the fitted images.
    pub fitted_error: f64,
    /// Relative error on the held-out images.
    pub heldout_error: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FitConvResult {
    pub target: String,
    pub maps: MapsRecord,
    pub heldout_images: usize,
    pub training_images: usize,
    pub rows: Vec<FitRow>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MapsRecord {
    pub in_channels: usize,
    pub out_channels: usize,
    pub height: usize,
    pub width: usize,
    pub kernel: usize,
}

/// A layer fitted by least squares: its features and its sums, block by block.
struct LinearModel {
    name: String,
    nmasks: Option<usize>,
    fitter: Fitter,
    blocks: Vec<Block>,
    sums: Vec<NormalEquations>,
    /// The same layer as a `PerturbLayer` (perturbation models), to be refined with trainable masks.
    layer: Option<PerturbLayer>,
}

impl LinearModel {
    fn new(name: &str, nmasks: Option<usize>, fitter: Fitter, maps: Maps, layer: Option<PerturbLayer>) -> Result<Self> {
        let blocks = fitter.blocks(maps);
        let sums = blocks
            .iter()
            .map(|b| NormalEquations::new(fitter.features(b), b.outputs.len()))
            .collect::<Vec<_>>();
        if let Some(big) = sums.iter().map(|s| s.features).max().filter(|&f| f > MAX_FEATURES) {
            bail!(
                "{name}: {big} features per output ({} channels x {} values each, plus a bias) is more than \
                 fit-conv fits ({MAX_FEATURES}): use fewer --nmasks, or a layer with fewer channels",
                maps.channels,
                (big - 1) / maps.channels
            );
        }
        Ok(Self {
            name: name.to_string(),
            nmasks,
            fitter,
            blocks,
            sums,
            layer,
        })
    }
}

/// Runs the experiment.
pub fn run(opts: &FitConvOptions) -> Result<FitConvResult> {
    let device = burn::tensor::Device::flex();
    let (data, geometry) = super::target::load_data(&opts.data)?;
    let target = Target::new(&opts.source, opts.layer, geometry, Some(&opts.data), &device)?;
    let norm = data.normalization.clone();
    let (train, test) = (data.train, data.test);

    let probe = images_of(&train, &norm, &[0]);
    let (x0, y0) = target.maps_of(probe.0, probe.1);
    let maps = Maps {
        channels: x0.shape[1],
        outputs: y0.shape[1],
        height: x0.shape[2],
        width: x0.shape[3],
    };
    check_choice(opts, maps)?;
    let say = |s: String| {
        if opts.verbose {
            println!("{s}");
        }
    };
    say(format!("target: {}", target.description));
    say(format!(
        "maps: {} -> {} channels of {}x{}; held-out: {} test images",
        maps.channels,
        maps.outputs,
        maps.height,
        maps.width,
        opts.heldout.min(test.len())
    ));

    let mut models = build_models(opts, maps, target.kernel(), &device)?;

    // Fit sets: prefixes of one shuffled order of the training set.
    let mut order: Vec<usize> = (0..train.len()).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(opts.seed));
    let mut sizes: Vec<usize> = opts
        .fit_sizes
        .iter()
        .map(|s| match s {
            FitSize::Images(n) => (*n).min(train.len()),
            FitSize::All => train.len(),
        })
        .collect();
    sizes.sort_unstable();
    sizes.dedup();

    let heldout: Vec<usize> = (0..opts.heldout.min(test.len())).collect();
    let heldout_maps = maps_in_batches(&target, &test, &norm, &heldout);

    let mut rows = Vec::new();
    let mut done = 0;
    let progress = crate::train::trainer::progress_bar_of(sizes.last().copied().unwrap_or(0), "fitting", "images");
    for &size in &sizes {
        for chunk in order[done..size].chunks(64) {
            let (pixels, shape) = images_of(&train, &norm, chunk);
            let (x, y) = target.maps_of(pixels, shape);
            accumulate(&mut models, maps, &x, &y);
            progress.inc(chunk.len() as u64);
        }
        done = size;
        progress.suspend(|| say(format!("{size} images fitted; solving")));
        let fit = &order[..size];
        // Trained-mask fits are scored on (up to --heldout of) their fitted images, whose maps
        // every number of masks shares.
        let fitted_maps = if opts.train_masks {
            maps_in_batches(&target, &train, &norm, &fit[..fit.len().min(opts.heldout)])
        } else {
            Vec::new()
        };
        for model in &mut models {
            let betas = model.sums.iter().map(|s| s.solve()).collect::<Result<Vec<_>>>()?;
            let (mut sse, mut ssy) = (0.0, 0.0);
            for (sum, beta) in model.sums.iter().zip(&betas) {
                let (e, y) = sum.fitted_error(beta);
                sse += e;
                ssy += y;
            }
            let heldout_error = linear_error(&model.fitter, &model.blocks, &betas, maps, &heldout_maps);
            rows.push(FitRow {
                fit_images: size,
                model: model.name.clone(),
                nmasks: model.nmasks,
                weights: model.fitter.weights(maps),
                fitted_error: relative(sse, ssy),
                heldout_error,
            });
            if opts.train_masks
                && let Some(layer) = &model.layer
            {
                let mut layer = layer.clone();
                perturb_fit::load_weights(&mut layer, &model.blocks, &betas);
                let source = |idx: &[usize]| images_of(&train, &norm, idx);
                let trained = progress.suspend(|| {
                    perturb_fit::descend(layer, &target, &source, fit, opts.descent, opts.seed ^ size as u64)
                })?;
                rows.push(FitRow {
                    fit_images: size,
                    model: "perturb-trained".into(),
                    nmasks: model.nmasks,
                    weights: model.fitter.weights(maps),
                    fitted_error: layer_error(&trained, &fitted_maps),
                    heldout_error: layer_error(&trained, &heldout_maps),
                });
            }
        }
    }
    progress.finish_and_clear();
    Ok(FitConvResult {
        target: target.description.clone(),
        maps: MapsRecord {
            in_channels: maps.channels,
            out_channels: maps.outputs,
            height: maps.height,
            width: maps.width,
            kernel: target.kernel(),
        },
        heldout_images: heldout.len(),
        training_images: train.len(),
        rows,
    })
}

/// Refuses what the reproduction's layer cannot be, before any work.
fn check_choice(opts: &FitConvOptions, maps: Maps) -> Result<()> {
    if opts.perturb.fused_act().is_none() {
        bail!(
            "--act {}: fit-conv fits activations with a fixed shape (relu, lrelu, elu, selu, tanh, sigmoid); \
             PReLU's slope is learned and RReLU's is random",
            Config::value_name(&opts.perturb.act)
        );
    }
    if opts.nmasks.is_empty() || opts.nmasks.contains(&0) {
        bail!("--nmasks takes numbers of at least 1, e.g. --nmasks 1,2,4,8");
    }
    let grouped = opts.nmasks.iter().any(|&m| m > 1) && !opts.perturb.ungrouped;
    if grouped && !maps.outputs.is_multiple_of(maps.channels) {
        bail!(
            "with several masks the reproduction's layer combines each input channel's perturbed maps separately \
             (a grouped 1x1 convolution), which needs the output channels ({}) to be a multiple of the input \
             channels ({}). Add --ungrouped (every output combines every channel's maps), use --nmasks 1, or choose \
             another target ({})",
            maps.outputs,
            maps.channels,
            match &opts.source {
                TargetSource::Random { .. } => "--target-channels",
                TargetSource::Checkpoint { .. } => "--layer 1 or later",
            }
        );
    }
    if maps.height != maps.width {
        bail!(
            "the maps are {}x{}: the perturbation layer needs square maps",
            maps.width,
            maps.height
        );
    }
    Ok(())
}

fn build_models(
    opts: &FitConvOptions,
    maps: Maps,
    kernel: usize,
    device: &burn::tensor::Device,
) -> Result<Vec<LinearModel>> {
    let act = opts.perturb.fused_act().expect("checked");
    let mut models = vec![
        LinearModel::new("constant", None, Fitter::Constant, maps, None)?,
        LinearModel::new("conv1x1", None, Fitter::Conv { kernel: 1 }, maps, None)?,
    ];
    for &m in &opts.nmasks {
        // Each number of masks gets its own masks, the same for every fit set.
        let layer = perturb_fit::build_layer(&opts.perturb, m, maps, opts.train_masks, opts.seed + m as u64, device);
        let masks = perturb_fit::masks_of(&layer, &opts.perturb, act);
        models.push(LinearModel::new(
            "perturb",
            Some(m),
            Fitter::Perturb(masks),
            maps,
            Some(layer),
        )?);
    }
    if kernel > 1 {
        models.push(LinearModel::new(
            &format!("conv{kernel}x{kernel}"),
            None,
            Fitter::Conv { kernel },
            maps,
            None,
        )?);
    }
    Ok(models)
}

/// Adds a batch's images to every model's sums, images in parallel.
fn accumulate(models: &mut [LinearModel], maps: Maps, x: &HostMaps, y: &HostMaps) {
    let pixels = maps.pixels();
    let fresh = |models: &[LinearModel]| -> Vec<Vec<NormalEquations>> {
        models
            .iter()
            .map(|m| {
                m.sums
                    .iter()
                    .map(|s| NormalEquations::new(s.features, s.outputs))
                    .collect()
            })
            .collect()
    };
    let template = fresh(models);
    let added = (0..x.len())
        .into_par_iter()
        .fold(
            || template.clone(),
            |mut acc, i| {
                let (xi, yi) = (x.image(i), y.image(i));
                for (model, sums) in models.iter().zip(acc.iter_mut()) {
                    for (block, sum) in model.blocks.iter().zip(sums.iter_mut()) {
                        let mut phi = vec![0f64; pixels * sum.features];
                        model.fitter.fill(block, maps, xi, &mut phi);
                        let targets: Vec<f64> = yi[block.outputs.start * pixels..block.outputs.end * pixels]
                            .iter()
                            .map(|&v| v as f64)
                            .collect();
                        sum.add(&phi, &targets, pixels);
                    }
                }
                acc
            },
        )
        .reduce_with(|mut a, b| {
            for (sa, sb) in a.iter_mut().zip(&b) {
                for (x, y) in sa.iter_mut().zip(sb) {
                    x.merge(y);
                }
            }
            a
        });
    if let Some(added) = added {
        for (model, sums) in models.iter_mut().zip(added) {
            for (s, a) in model.sums.iter_mut().zip(sums) {
                s.merge(&a);
            }
        }
    }
}

/// Relative error of least-squares weights on maps (each batch of `maps_list`).
fn linear_error(
    fitter: &Fitter,
    blocks: &[Block],
    betas: &[Vec<f64>],
    maps: Maps,
    maps_list: &[(HostMaps, HostMaps)],
) -> f64 {
    let pixels = maps.pixels();
    let (sse, ssy) = maps_list
        .iter()
        .flat_map(|(x, y)| (0..x.len()).map(move |i| (x.image(i), y.image(i))))
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|(xi, yi)| {
            let (mut sse, mut ssy) = (0.0, 0.0);
            for (block, beta) in blocks.iter().zip(betas) {
                let f = fitter.features(block);
                let mut phi = vec![0f64; pixels * f];
                fitter.fill(block, maps, xi, &mut phi);
                let pred = predict(&phi, beta, pixels, f, block.outputs.len());
                let target = &yi[block.outputs.start * pixels..block.outputs.end * pixels];
                for (p, &t) in pred.iter().zip(target) {
                    sse += (p - t as f64).powi(2);
                    ssy += (t as f64).powi(2);
                }
            }
            (sse, ssy)
        })
        .reduce(|| (0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
    relative(sse, ssy)
}

/// Relative error of a perturbation layer (computed by the layer itself) on maps.
fn layer_error(layer: &PerturbLayer, maps_list: &[(HostMaps, HostMaps)]) -> f64 {
    let device = layer.conv.weight.device();
    let (mut sse, mut ssy) = (0.0, 0.0);
    for (x, y) in maps_list {
        let pred = perturb_fit::layer_output(layer, perturb_fit::to_tensor(x, &device));
        let pred = pred.into_data().try_to_vec::<f32>().expect("float maps");
        for (p, &t) in pred.iter().zip(&y.values) {
            sse += (*p as f64 - t as f64).powi(2);
            ssy += (t as f64).powi(2);
        }
    }
    relative(sse, ssy)
}

/// `sqrt(sse / ssy)`: 0 is a perfect fit, 1 is what predicting zero everywhere gives.
pub fn relative(sse: f64, ssy: f64) -> f64 {
    if ssy > 0.0 { (sse / ssy).sqrt() } else { sse.sqrt() }
}

/// Normalised images at `indices` of a set, as one batch.
pub fn images_of(set: &ImageSet, norm: &Normalization, indices: &[usize]) -> (Vec<f32>, [usize; 4]) {
    let batch = make_batch(set, norm, indices, None);
    (batch.images, batch.shape)
}

/// The target's input and output maps for images of a set, in batches of 64.
pub fn maps_in_batches(
    target: &Target,
    set: &ImageSet,
    norm: &Normalization,
    indices: &[usize],
) -> Vec<(HostMaps, HostMaps)> {
    indices
        .chunks(64)
        .map(|chunk| {
            let (pixels, shape) = images_of(set, norm, chunk);
            target.maps_of(pixels, shape)
        })
        .collect()
}
