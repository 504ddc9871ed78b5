//! The flags of `pnn fit-conv` and `pnn noise-stats`, spelled as `pnn train`'s where they mean
//! the same thing (`--nmasks`, `--level`, `--noise_type`, `--act`, `--use_act`,
//! `--unique_masks`, `--train_masks`, `--dataset-train`, `--dataroot`, `--manual-seed`).

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use serde::Serialize;

use super::fit_conv::{FitConvOptions, FitSize};
use super::noise_stats::NoiseStatsOptions;
use super::perturb_fit::{Descent, PerturbChoice};
use super::target::{TargetSource, checkpoint_config};
use crate::config::{Act, Config, DatasetName, NoiseType, TrainArgs};

/// What is studied and on which data.
#[derive(Args, Debug, Clone, Serialize)]
pub struct StudyArgs {
    /// `random` (a random convolution on the images) or a resnet18 checkpoint folder
    /// (e.g. results/<run>/checkpoint-best).
    #[arg(long, default_value = "random")]
    pub target: String,
    /// Data set of a random target (a checkpoint brings its own).
    #[arg(
        long = "dataset-train",
        alias = "dataset_train",
        value_enum,
        ignore_case = true,
        default_value = "CIFAR10"
    )]
    pub dataset_train: DatasetName,
    /// Folder with the data [default: ./data, or the checkpoint's recorded one].
    #[arg(long)]
    pub dataroot: Option<PathBuf>,
    /// Never download a missing data set.
    #[arg(long = "no-download", alias = "no_download")]
    pub no_download: bool,
    /// Use a fixed random subset of N training images (the largest fit set).
    #[arg(long = "train-subset", alias = "train_subset")]
    pub train_subset: Option<usize>,
    /// Output channels of a random target.
    #[arg(long = "target-channels", default_value_t = 48)]
    pub target_channels: usize,
    /// Kernel size of a random target (odd, at most 7).
    #[arg(long = "target-kernel", default_value_t = 3)]
    pub target_kernel: usize,
    /// Noise level: masks are scaled by this before they are added.
    #[arg(long, default_value_t = 0.5, allow_negative_numbers = true)]
    pub level: f64,
    /// Distribution of the noise masks.
    #[arg(
        long = "noise_type",
        alias = "noise-type",
        value_enum,
        ignore_case = true,
        default_value = "uniform"
    )]
    pub noise_type: NoiseType,
    /// One set of masks per input channel (default), or `--no-unique_masks`: one set shared.
    #[arg(long = "no-unique_masks", aliases = ["no-unique-masks", "no_unique_masks"])]
    pub no_unique_masks: bool,
    /// Seed of the masks, the random target and the fit sets' order.
    #[arg(long = "manual-seed", alias = "manual_seed", default_value_t = 1)]
    pub manual_seed: u64,
    /// Output folder [default: results/<command>-<timestamp>].
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct FitConvArgs {
    #[command(flatten)]
    pub study: StudyArgs,
    /// Which 3x3 convolution of the checkpoint: 0 is the stem, then conv1 and conv2 of each block.
    #[arg(long, default_value_t = 0)]
    pub layer: usize,
    /// Numbers of masks per input channel to fit, e.g. 1,2,4,8,16,32,64.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,32,64")]
    pub nmasks: Vec<usize>,
    /// Fit sets: numbers of training images, or `all` (the whole set or --train-subset).
    #[arg(long = "fit-images", value_delimiter = ',', default_value = "1,10,100,1000,all")]
    pub fit_images: Vec<FitSize>,
    /// Held-out test images the fits are scored on.
    #[arg(long, default_value_t = 500)]
    pub heldout: usize,
    /// Activation after the perturbation.
    #[arg(long, value_enum, ignore_case = true, default_value = "relu")]
    pub act: Act,
    /// No activation after the perturbation (the layer is then linear in its input). By default
    /// the fitted layer activates, as every perturbation layer after the first does.
    #[arg(long = "no-use_act", aliases = ["no-use-act", "no_use_act"])]
    pub no_use_act: bool,
    /// Also fit each layer with trainable masks: gradient descent (Adam) on masks and weights
    /// together, starting from the least-squares fit with fixed masks.
    #[arg(long = "train_masks", alias = "train-masks")]
    pub train_masks: bool,
    /// Every output combines every channel's perturbed maps, instead of the reproduction's
    /// grouping by input channel.
    #[arg(long)]
    pub ungrouped: bool,
    /// Gradient steps of a trainable-mask fit.
    #[arg(long = "gd-steps", default_value_t = 200)]
    pub gd_steps: usize,
    /// Adam learning rate of a trainable-mask fit.
    #[arg(long = "gd-lr", default_value_t = 0.01)]
    pub gd_lr: f64,
    /// Images per gradient step.
    #[arg(long = "gd-batch", default_value_t = 16)]
    pub gd_batch: usize,
    /// Draw the table and figures of an earlier fit-conv folder again from its fit-conv.json,
    /// without fitting (written into that folder, or --out).
    #[arg(long, value_name = "DIR")]
    pub redraw: Option<PathBuf>,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct NoiseStatsArgs {
    #[command(flatten)]
    pub study: StudyArgs,
    /// The checkpoint's 3x3 convolutions to study (0 is the stem), or `all` stride-1 ones.
    #[arg(long, value_delimiter = ',', default_value = "all")]
    pub layer: Vec<String>,
    /// Test images the statistics are computed on.
    #[arg(long, default_value_t = 500)]
    pub images: usize,
}

impl StudyArgs {
    fn checkpoint(&self) -> Option<PathBuf> {
        (self.target != "random").then(|| PathBuf::from(&self.target))
    }

    /// The data configuration: the checkpoint's own, or the named set for a random target.
    fn data_config(&self) -> Result<Config> {
        let mut config = match self.checkpoint() {
            Some(dir) => {
                if !dir.is_dir() {
                    bail!(
                        "--target {}: no such checkpoint folder; give `random` or a resnet18 checkpoint \
                         (results/<run>/checkpoint-best)",
                        dir.display()
                    );
                }
                checkpoint_config(&dir)?
            }
            None => {
                let name = Config::value_name(&self.dataset_train);
                TrainArgs::parse_flags(["--dataset-train", &name, "--dataset-test", &name])?.to_config()?
            }
        };
        if let Some(root) = &self.dataroot {
            config.dataroot = root.clone();
        }
        config.download = !self.no_download;
        config.train_subset = self.train_subset;
        config.test_subset = None;
        if self.train_subset == Some(0) {
            bail!("--train-subset 0: give at least 1 image");
        }
        if !(self.level.is_finite()) {
            bail!("--level {}: give a finite noise level", self.level);
        }
        Ok(config)
    }

    fn source(&self) -> TargetSource {
        match self.checkpoint() {
            Some(dir) => TargetSource::Checkpoint { dir },
            None => TargetSource::Random {
                outputs: self.target_channels,
                kernel: self.target_kernel,
                seed: self.manual_seed,
            },
        }
    }

    fn perturb(&self, act: Act, use_act: bool, ungrouped: bool) -> PerturbChoice {
        PerturbChoice {
            level: self.level,
            noise_type: self.noise_type,
            act,
            use_act,
            unique_masks: !self.no_unique_masks,
            ungrouped,
        }
    }

    pub fn out_or(&self, command: &str) -> PathBuf {
        self.out.clone().unwrap_or_else(|| {
            PathBuf::from(format!(
                "results/{command}-{}",
                chrono::Local::now().format("%Y%m%d-%H%M%S")
            ))
        })
    }
}

impl FitConvArgs {
    pub fn to_options(&self) -> Result<FitConvOptions> {
        if self.heldout == 0 {
            bail!("--heldout 0: score the fits on at least 1 test image");
        }
        if self.train_masks && (self.gd_steps == 0 || self.gd_batch == 0 || self.gd_lr.is_nan() || self.gd_lr <= 0.0) {
            bail!("--train_masks needs --gd-steps and --gd-batch of at least 1 and a positive --gd-lr");
        }
        if self.study.checkpoint().is_none() && self.layer != 0 {
            bail!(
                "--layer {} applies to a checkpoint target: give --target <checkpoint folder>",
                self.layer
            );
        }
        Ok(FitConvOptions {
            source: self.study.source(),
            layer: self.layer,
            data: self.study.data_config()?,
            nmasks: self.nmasks.clone(),
            perturb: self.study.perturb(self.act, !self.no_use_act, self.ungrouped),
            train_masks: self.train_masks,
            descent: Descent {
                steps: self.gd_steps,
                learning_rate: self.gd_lr,
                batch: self.gd_batch,
            },
            fit_sizes: self.fit_images.clone(),
            heldout: self.heldout,
            seed: self.study.manual_seed,
            verbose: true,
        })
    }
}

impl NoiseStatsArgs {
    pub fn to_options(&self) -> Result<NoiseStatsOptions> {
        if self.images == 0 {
            bail!("--images 0: give at least 1 test image");
        }
        let data = self.study.data_config()?;
        let layers = if self.layer.iter().any(|l| l.eq_ignore_ascii_case("all")) {
            None
        } else {
            let layers = self
                .layer
                .iter()
                .map(|l| {
                    l.parse::<usize>()
                        .map_err(|_| anyhow::anyhow!("--layer {l}: give layer numbers (0 is the stem) or `all`"))
                })
                .collect::<Result<Vec<_>>>()?;
            Some(layers)
        };
        Ok(NoiseStatsOptions {
            source: self.study.source(),
            layers,
            data,
            images: self.images,
            perturb: self.study.perturb(Act::Relu, false, false),
            seed: self.study.manual_seed,
            verbose: true,
        })
    }
}
