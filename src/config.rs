//! One experiment configuration: every flag of the reproduction's `main.py`, its defaults, and
//! the checks that refuse a configuration the models cannot honour.
//!
//! `Config` declares every flag of an experiment once: its spellings (as in the reference, hyphen
//! and underscore forms both accepted), its default, and its key in the `config.json` that every
//! run records next to its results. `TrainArgs` is what clap parses: the configuration, and the
//! flags of where and how the run happens.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, Parser, ValueEnum};
use serde::{Deserialize, Serialize};

/// The networks of the reproduction's `models.py`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum NetType {
    Lenet,
    Cifarnet,
    Resnet18,
    Noiseresnet18,
    PerturbResnet18,
}

/// Whose code the models and the learning-rate schedule follow: the reproduction's
/// (michaelklachko/pnn.pytorch) or the paper authors' answer to it (juefeix/pnn.pytorch.update).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
#[value(rename_all = "lowercase")]
pub enum Code {
    #[default]
    Reproduction,
    Update,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
#[value(rename_all = "lowercase")]
pub enum Act {
    Relu,
    Lrelu,
    Prelu,
    Rrelu,
    Elu,
    Selu,
    Tanh,
    Sigmoid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PoolType {
    Max,
    Avg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum NoiseType {
    Uniform,
    Normal,
}

/// Optimisers, spelled (on the command line and in records) as the reference's
/// `--optim-method` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
pub enum OptimMethod {
    #[value(name = "SGD")]
    #[serde(rename = "SGD", alias = "Sgd")]
    Sgd,
    #[value(name = "Adam")]
    Adam,
    #[value(name = "RMSprop")]
    #[serde(rename = "RMSprop", alias = "RmsProp")]
    RmsProp,
}

/// Data sets known by name. Recorded under their command-line names (`CIFAR10`); the names of
/// earlier records (`Cifar10`) are still read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
pub enum DatasetName {
    #[value(name = "MNIST")]
    #[serde(rename = "MNIST", alias = "Mnist")]
    Mnist,
    #[value(name = "FashionMNIST")]
    #[serde(rename = "FashionMNIST", alias = "FashionMnist")]
    FashionMnist,
    #[value(name = "CIFAR10")]
    #[serde(rename = "CIFAR10", alias = "Cifar10")]
    Cifar10,
    #[value(name = "CIFAR100")]
    #[serde(rename = "CIFAR100", alias = "Cifar100")]
    Cifar100,
    /// An image-folder tree `<dataroot>/{train,test}/<class>/*.{png,jpg,jpeg}` (or a .tar.gz of one).
    #[value(name = "Folder")]
    Folder,
}

impl DatasetName {
    /// Image geometry (channels, side) of a named set; `None` for an image folder, whose
    /// geometry is known once it is read.
    pub fn geometry(self) -> Option<(usize, usize)> {
        match self {
            DatasetName::Mnist | DatasetName::FashionMnist => Some((1, 28)),
            DatasetName::Cifar10 | DatasetName::Cifar100 => Some((3, 32)),
            DatasetName::Folder => None,
        }
    }

    pub fn num_classes(self) -> Option<usize> {
        match self {
            DatasetName::Cifar100 => Some(100),
            DatasetName::Folder => None,
            _ => Some(10),
        }
    }
}

/// Flags of `pnn train`, `pnn info` and `pnn bench`, spelled as the reproduction spells them: the
/// experiment's configuration, declared once in [`Config`], and where and how this run happens.
#[derive(Debug, Clone, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub config: Config,
    #[command(flatten)]
    pub run: RunFlags,
}

/// Where and how a run happens: flags that do not change its numbers and are not part of its
/// recorded configuration.
#[derive(Debug, Clone, Args)]
pub struct RunFlags {
    /// Run folder: arguments, metrics and checkpoints go here [default: results/<timestamp>].
    #[arg(long)]
    pub save: Option<PathBuf>,
    /// Folder for the logs (config and metrics) [default: the run folder].
    #[arg(long)]
    pub logs: Option<PathBuf>,
    /// Continue training from a checkpoint folder (e.g. results/<run>/checkpoint-last).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Where to compute: auto (a GPU if this pnn was built with one and one answers, else the CPU),
    /// cpu, vulkan[:N], cuda[:N] or wgpu[:N] (GPU ones need a binary built with that feature);
    /// a comma-separated list of GPUs (cuda:0,cuda:1) trains data parallel over them.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Train data parallel on GPUs 0 to N-1 of the kind --device names (the original code's flag).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub ngpu: usize,
    /// Train even when the memory estimate says the run will not fit.
    #[arg(long)]
    pub force: bool,
    /// Memory the run may use at its peak, in MiB [default: what the machine has available].
    #[arg(long = "memory-budget", alias = "memory_budget", value_name = "MIB")]
    pub memory_budget: Option<u64>,
    /// Write the training loss to the run's TensorBoard events every N steps (0: per epoch only).
    #[arg(long = "log-every", alias = "log_every", value_name = "N", default_value_t = crate::train::trainer::DEFAULT_LOG_EVERY)]
    pub log_every: usize,
    /// Accepted for compatibility with the reference, which parses and ignores it; the step
    /// schedule of the data set decides the decay.
    #[arg(long = "learning-rate-decay", alias = "learning_rate_decay")]
    pub learning_rate_decay: Option<f64>,
}

/// A resolved, validated experiment configuration: each field is its flag (with the flag's
/// spellings and default) and its key in the `config.json` every run folder records. A flag
/// with an opposite (`--use_act` / `--no-use_act`) is one field; its opposite is parsed beside
/// it and folded in by [`TrainArgs::to_config`], never recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Args)]
pub struct Config {
    /// Training data set (case-insensitive).
    #[arg(
        long = "dataset-train",
        alias = "dataset_train",
        value_enum,
        ignore_case = true,
        default_value = "CIFAR10"
    )]
    pub dataset_train: DatasetName,
    /// Test data set (case-insensitive); must have the same image geometry as the training set.
    #[arg(
        long = "dataset-test",
        alias = "dataset_test",
        value_enum,
        ignore_case = true,
        default_value = "CIFAR10"
    )]
    pub dataset_test: DatasetName,
    /// Folder holding the data files: MNIST's four IDX files (gzipped or not), CIFAR's binary
    /// release (unpacked or the .tar.gz), or an image folder.
    #[arg(long, default_value = "./data")]
    pub dataroot: PathBuf,
    /// Download a named data set that is missing from --dataroot (default, as torchvision).
    #[arg(long, default_value_t = true, overrides_with = "no_download")]
    pub download: bool,
    /// Never download: fail with a message saying where to put the files.
    #[arg(long = "no-download", alias = "no_download", overrides_with = "download")]
    #[serde(skip)]
    pub no_download: bool,
    /// Network: lenet, cifarnet, resnet18, noiseresnet18, perturb_resnet18.
    #[arg(
        long = "net-type",
        alias = "net_type",
        value_enum,
        ignore_case = true,
        default_value = "resnet18"
    )]
    pub net_type: NetType,
    /// Whose code to follow: `reproduction` (michaelklachko/pnn.pytorch) or `update` (the paper
    /// authors' juefeix/pnn.pytorch.update: its first layer, frozen stem and CIFAR-10 schedule).
    #[arg(long, value_enum, ignore_case = true, default_value = "reproduction")]
    #[serde(default)]
    pub code: Code,
    /// Number of filters (feature maps) in each layer.
    #[arg(long, default_value_t = 64)]
    pub nfilters: usize,
    /// Noise masks per input channel (the paper's fan-out).
    #[arg(long, default_value_t = 1)]
    pub nmasks: usize,
    /// Noise level: masks are scaled by this before they are added.
    #[arg(long, default_value_t = 0.5, allow_negative_numbers = true)]
    pub level: f64,
    /// Multiplies the noise level of the first layer only.
    #[arg(
        long = "scale_noise",
        alias = "scale-noise",
        default_value_t = 1.0,
        allow_negative_numbers = true
    )]
    pub scale_noise: f64,
    /// Distribution of the noise masks: uniform in [-1, 1] or standard normal.
    #[arg(
        long = "noise_type",
        alias = "noise-type",
        value_enum,
        ignore_case = true,
        default_value = "uniform"
    )]
    pub noise_type: NoiseType,
    /// Dropout probability before the fully connected layers (lenet, cifarnet).
    #[arg(long, default_value_t = 0.5, allow_negative_numbers = true)]
    pub dropout: f64,
    /// Activation function, used in every layer.
    #[arg(long, value_enum, ignore_case = true, default_value = "relu")]
    pub act: Act,
    /// Pooling between blocks: max or avg.
    #[arg(
        long = "pool_type",
        alias = "pool-type",
        value_enum,
        ignore_case = true,
        default_value = "max"
    )]
    pub pool_type: PoolType,
    /// Kernel size of the layers after the first: 0 = perturbation layer, n > 0 = n x n convolution.
    #[arg(long = "filter_size", alias = "filter-size", default_value_t = 0)]
    pub filter_size: usize,
    /// Kernel size of the first layer: 0 = perturbation layer, n > 0 = n x n convolution.
    #[arg(long = "first_filter_size", alias = "first-filter-size", default_value_t = 0)]
    pub first_filter_size: usize,
    /// Apply the activation right after perturbing the input of the first layer.
    #[arg(long = "use_act", alias = "use-act", overrides_with = "no_use_act")]
    pub use_act: bool,
    /// Do not apply the activation after the first layer's perturbation (default).
    #[arg(long = "no-use_act", aliases = ["no-use-act", "no_use_act"], overrides_with = "use_act")]
    #[serde(skip)]
    pub no_use_act: bool,
    /// A different set of masks for each input channel (default).
    #[arg(
        long = "unique_masks",
        alias = "unique-masks",
        default_value_t = true,
        overrides_with = "no_unique_masks"
    )]
    pub unique_masks: bool,
    /// The same set of masks for every input channel.
    #[arg(long = "no-unique_masks", aliases = ["no-unique-masks", "no_unique_masks"], overrides_with = "unique_masks")]
    #[serde(skip)]
    pub no_unique_masks: bool,
    /// Train the noise masks as ordinary parameters.
    #[arg(long = "train_masks", alias = "train-masks", overrides_with = "no_train_masks")]
    pub train_masks: bool,
    /// Keep the noise masks fixed (default).
    #[arg(long = "no-train_masks", aliases = ["no-train-masks", "no_train_masks"], overrides_with = "train_masks")]
    #[serde(skip)]
    pub no_train_masks: bool,
    /// Add a second 1x1 convolution (+ BatchNorm + activation) that mixes the output maps.
    #[arg(long = "mix_maps", alias = "mix-maps", overrides_with = "no_mix_maps")]
    pub mix_maps: bool,
    /// No mixing 1x1 convolution (default).
    #[arg(long = "no-mix_maps", aliases = ["no-mix-maps", "no_mix_maps"], overrides_with = "mix_maps")]
    #[serde(skip)]
    pub no_mix_maps: bool,
    /// Print input, noise and output values of the perturbation layers at every step.
    #[arg(long, overrides_with = "no_debug")]
    pub debug: bool,
    /// No debug printing (default).
    #[arg(long = "no-debug", alias = "no_debug", overrides_with = "debug")]
    #[serde(skip)]
    pub no_debug: bool,
    /// Images per batch, for training and testing.
    #[arg(long = "batch-size", alias = "batch_size", default_value_t = 64)]
    pub batch_size: usize,
    /// Number of epochs to train.
    #[arg(long, default_value_t = 150)]
    pub nepochs: usize,
    /// Worker threads for data loading.
    #[arg(long, default_value_t = 4)]
    pub nthreads: usize,
    /// Seed of every random choice: weights, noise masks, shuffling, dropout.
    #[arg(long = "manual-seed", alias = "manual_seed", default_value_t = 1)]
    pub manual_seed: u64,
    /// Train on the first N training images only (for quick experiments on a CPU).
    #[arg(long = "train-subset", alias = "train_subset")]
    pub train_subset: Option<usize>,
    /// Test on the first N test images only.
    #[arg(long = "test-subset", alias = "test_subset")]
    pub test_subset: Option<usize>,
    /// Optimiser: SGD (Nesterov momentum), Adam or RMSprop.
    #[arg(
        long = "optim-method",
        alias = "optim_method",
        value_enum,
        ignore_case = true,
        default_value = "SGD"
    )]
    pub optim_method: OptimMethod,
    /// Initial learning rate (decayed by the data set's step schedule).
    #[arg(
        long = "learning-rate",
        alias = "learning_rate",
        default_value_t = 1e-3,
        allow_negative_numbers = true
    )]
    pub learning_rate: f64,
    /// Momentum (SGD and RMSprop).
    #[arg(long, default_value_t = 0.9, allow_negative_numbers = true)]
    pub momentum: f64,
    /// L2 weight decay, added to the gradient.
    #[arg(
        long = "weight-decay",
        alias = "weight_decay",
        default_value_t = 1e-4,
        allow_negative_numbers = true
    )]
    pub weight_decay: f64,
    /// Adam beta1.
    #[arg(
        long = "adam-beta1",
        alias = "adam_beta1",
        default_value_t = 0.9,
        allow_negative_numbers = true
    )]
    pub adam_beta1: f64,
    /// Adam beta2.
    #[arg(
        long = "adam-beta2",
        alias = "adam_beta2",
        default_value_t = 0.999,
        allow_negative_numbers = true
    )]
    pub adam_beta2: f64,
}

/// `TrainArgs` alone, for parsing a command's flags outside the `pnn` command line.
#[derive(Parser)]
#[command(no_binary_name = true)]
struct FlagsOnly {
    #[command(flatten)]
    args: TrainArgs,
}

impl TrainArgs {
    /// Parses training flags as `pnn train` would (e.g. an experiment's command line).
    pub fn parse_flags<I, S>(flags: I) -> Result<TrainArgs>
    where
        I: IntoIterator<Item = S>,
        S: Into<std::ffi::OsString> + Clone,
    {
        FlagsOnly::try_parse_from(flags)
            .map(|f| f.args)
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// Folds each flag's opposite into it (clap's `overrides_with` leaves only the last of a
    /// pair set) and validates the whole configuration.
    pub fn to_config(&self) -> Result<Config> {
        let config = self.folded();
        config.validate()?;
        Ok(config)
    }

    /// The configuration with each flag's opposite folded in, not yet validated.
    pub fn folded(&self) -> Config {
        self.config.clone().fold_opposites()
    }
}

impl Config {
    /// Folds each flag's opposite into it (`--no-mix_maps` clears `mix_maps`); not validated.
    pub fn fold_opposites(self) -> Config {
        let mut config = self;
        config.download &= !std::mem::take(&mut config.no_download);
        config.use_act &= !std::mem::take(&mut config.no_use_act);
        config.unique_masks &= !std::mem::take(&mut config.no_unique_masks);
        config.train_masks &= !std::mem::take(&mut config.no_train_masks);
        config.mix_maps &= !std::mem::take(&mut config.no_mix_maps);
        config.debug &= !std::mem::take(&mut config.no_debug);
        config
    }

    /// Refuses, before anything is built, every configuration the models cannot honour. The
    /// reference prints a warning and carries on in several of these cases; we stop instead.
    pub fn validate(&self) -> Result<()> {
        if let (Some((train_c, train_side)), Some((test_c, test_side))) =
            (self.dataset_train.geometry(), self.dataset_test.geometry())
            && (train_c, train_side) != (test_c, test_side)
        {
            bail!(
                "--dataset-train {:?} has {train_c}x{train_side}x{train_side} images but --dataset-test {:?} has {test_c}x{test_side}x{test_side}: \
                 test on a data set with the same image size",
                self.dataset_train,
                self.dataset_test
            );
        }
        if self.nfilters == 0 {
            bail!("--nfilters must be at least 1");
        }
        if self.nmasks == 0 {
            bail!("--nmasks must be at least 1 (1 = one noise mask per input channel)");
        }
        if self.batch_size == 0 {
            bail!("--batch-size must be at least 1");
        }
        if self.nepochs == 0 {
            bail!(
                "--nepochs must be at least 1: a run of 0 epochs would train and measure nothing (to score a model \
                 as it is, train 1 epoch or use `pnn eval` on a checkpoint)"
            );
        }
        for (flag, size) in [
            ("--filter_size", self.filter_size),
            ("--first_filter_size", self.first_filter_size),
        ] {
            if ![0, 1, 3, 5, 7].contains(&size) {
                bail!(
                    "{flag} {size} is not supported: use 0 (perturbation layer) or a convolution of size 1, 3, 5 or 7"
                );
            }
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("--dropout {} must be in [0, 1)", self.dropout);
        }
        if !self.level.is_finite() || !self.scale_noise.is_finite() {
            bail!("--level and --scale_noise must be finite numbers");
        }
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            bail!("--learning-rate must be a positive number, got {}", self.learning_rate);
        }
        // A momentum of 1 or more never forgets a gradient: the update grows without bound.
        if !(0.0..1.0).contains(&self.momentum) {
            bail!("--momentum must be in [0, 1), got {}", self.momentum);
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            bail!(
                "--weight-decay must be a number of at least 0, got {}",
                self.weight_decay
            );
        }
        for (flag, beta) in [("--adam-beta1", self.adam_beta1), ("--adam-beta2", self.adam_beta2)] {
            if !(0.0..1.0).contains(&beta) {
                bail!("{flag} {beta} must be in [0, 1)");
            }
        }
        for (flag, subset) in [
            ("--train-subset", self.train_subset),
            ("--test-subset", self.test_subset),
        ] {
            if subset == Some(0) {
                bail!("{flag} 0 leaves no images: give the number of images to use, or leave the flag out");
            }
        }
        if self.nthreads == 0 {
            bail!("--nthreads must be at least 1");
        }
        // A grouped 1x1 convolution (nmasks > 1) needs out_channels divisible by in_channels.
        if self.nmasks > 1 && self.any_perturbation_layer() {
            let in_c = self.dataset_train.geometry().map_or(3, |g| g.0);
            if self.first_filter_size == 0 && !self.nfilters.is_multiple_of(in_c) {
                bail!(
                    "--nmasks {} with a perturbation first layer groups the 1x1 convolution by input channel: \
                     --nfilters {} must be divisible by the {in_c} input channels (try --nfilters {})",
                    self.nmasks,
                    self.nfilters,
                    (self.nfilters / in_c).max(1) * in_c
                );
            }
        }
        if self.net_type == NetType::PerturbResnet18 && matches!(self.filter_size, 5 | 7) {
            bail!(
                "--filter_size {} shrinks the maps inside perturb_resnet18's residual blocks while their shortcuts keep \
                 them, so the two cannot be added (the reference crashes too): use --filter_size 0 (perturbation \
                 layers), 1 or 3",
                self.filter_size
            );
        }
        if self.net_type == NetType::Noiseresnet18 && !matches!(self.first_filter_size, 3 | 7) {
            bail!(
                "noiseresnet18 (the original authors' model) needs a convolution first layer: \
                 use --first_filter_size 3 or 7, or --net-type perturb_resnet18 for noise masks in the first layer"
            );
        }
        Ok(())
    }

    /// The default configuration's fields: every flag's name and default value.
    pub fn default_fields() -> BTreeMap<String, serde_json::Value> {
        let no_flags: [&str; 0] = [];
        TrainArgs::parse_flags(no_flags)
            .map(|a| a.folded().fields())
            .unwrap_or_default()
    }

    /// The configuration as flag name -> value (the names of `config.json`).
    pub fn fields(&self) -> BTreeMap<String, serde_json::Value> {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(map)) => map.into_iter().collect(),
            _ => BTreeMap::new(),
        }
    }

    /// A setting's value as recorded and typed: `perturb_resnet18`, `CIFAR10`, `SGD`.
    pub fn value_name<T: Serialize>(value: &T) -> String {
        match serde_json::to_value(value) {
            Ok(serde_json::Value::String(s)) => s,
            Ok(other) => other.to_string(),
            Err(_) => String::from("?"),
        }
    }

    /// Names of the fields whose values are not the same in all of `configs`, in name order.
    pub fn differing_fields(configs: &[&Config]) -> Vec<String> {
        let all: Vec<_> = configs.iter().map(|c| c.fields()).collect();
        let Some(first) = all.first() else { return Vec::new() };
        first
            .keys()
            .filter(|k| all.iter().any(|m| m.get(*k) != first.get(*k)))
            .cloned()
            .collect()
    }

    /// Fields that change a run's numbers if they change between a run and its resumption:
    /// everything but the epoch budget and where data or logs live.
    pub fn resume_mismatches(&self, saved: &Config) -> Vec<String> {
        const FREE: [&str; 5] = ["nepochs", "dataroot", "download", "nthreads", "debug"];
        Config::differing_fields(&[self, saved])
            .into_iter()
            .filter(|f| !FREE.contains(&f.as_str()))
            .collect()
    }

    /// Whether the configuration builds at least one perturbation layer.
    pub fn any_perturbation_layer(&self) -> bool {
        match self.net_type {
            NetType::Resnet18 | NetType::Noiseresnet18 => false,
            _ => self.first_filter_size == 0 || self.filter_size == 0,
        }
    }
}
