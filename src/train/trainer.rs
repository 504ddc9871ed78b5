//! The training loop: one epoch of training, one pass over the test set, both accuracies,
//! metrics and checkpoints written after every epoch.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Result, bail};
use burn::module::Module;
use burn::nn::loss::CrossEntropyLoss;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Int, Tensor};
use indicatif::{ProgressBar, ProgressStyle};

use super::checkpoint::{self, FORMAT_VERSION, TrainState};
use super::metrics::{EpochRecord, EpochTotals, ReportedAccuracy, best_by};
use super::run_dir::{RunDir, RunInfo, RunSummaryFile};
use super::{optim, schedule};
use crate::config::Config;
use crate::data::{self, Loader, Order};
use crate::device::Backend;
use crate::models::{self, Geometry, Net, ParamCount};
use crate::provenance::Provenance;

/// Where a run writes and what it resumes from.
pub struct RunOptions {
    pub save: Option<PathBuf>,
    pub logs: Option<PathBuf>,
    pub resume: Option<PathBuf>,
    pub backend: Backend,
    /// Print the per-epoch lines (tests turn it off).
    pub verbose: bool,
}

/// What a finished run returns.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub run_dir: PathBuf,
    pub history: Vec<EpochRecord>,
    pub params: ParamCount,
}

impl RunSummary {
    /// Best correct test accuracy and its 1-based epoch.
    pub fn best(&self) -> Option<(f64, usize)> {
        best_by(&self.history, |r| r.test_acc)
    }

    /// Best accuracy the original code would have reported, and its epoch.
    pub fn best_reported(&self) -> Option<(f64, usize)> {
        best_by(&self.history, |r| r.test_acc_reported)
    }

    /// The `summary.json` of this run.
    pub fn file(&self, provenance: &Provenance, config: &Config, wall_seconds: f64) -> RunSummaryFile {
        let last = self.history.last();
        let (best, best_reported) = (self.best(), self.best_reported());
        RunSummaryFile {
            provenance: provenance.clone(),
            config: config.clone(),
            params: self.params,
            epochs_done: last.map_or(0, |r| r.epoch),
            finished: last.is_some_and(|r| r.epoch >= config.nepochs),
            wall_seconds,
            best_test_acc: best.map(|b| b.0),
            best_epoch: best.map(|b| b.1),
            best_test_acc_reported: best_reported.map(|b| b.0),
            best_reported_epoch: best_reported.map(|b| b.1),
            final_test_acc: last.map(|r| r.test_acc),
            final_test_acc_reported: last.map(|r| r.test_acc_reported),
            updated: chrono::Local::now().to_rfc3339(),
        }
    }
}

macro_rules! say {
    ($opts:expr, $($arg:tt)*) => { if $opts.verbose { println!($($arg)*); } };
}

pub fn train(config: &Config, opts: RunOptions) -> Result<RunSummary> {
    let session_start = Instant::now();
    let backend = opts.backend.name.as_str();
    let provenance = Provenance::this(backend);
    let device = opts.backend.device.clone().autodiff();
    // The seed decides the weights and the noise masks; each epoch reseeds from (seed, epoch).
    device.seed(config.manual_seed);

    let load_start = Instant::now();
    let data = data::load(config)?;
    let load_seconds = load_start.elapsed().as_secs_f64();
    let mut model = models::build_for(config, Geometry::of_set(&data.train)?, &device)?;
    let mut optimizer = optim::build(config);
    let params = ParamCount::of(&model);

    let mut state = TrainState {
        format_version: FORMAT_VERSION,
        pnn_version: env!("CARGO_PKG_VERSION").to_string(),
        config: config.clone(),
        epochs_done: 0,
        history: Vec::new(),
        reported: ReportedAccuracy::default(),
        wall_seconds: 0.0,
    };
    let mut save = opts.save.clone();
    if let Some(dir) = &opts.resume {
        let saved = checkpoint::load_state(dir)?;
        let mismatches = config.resume_mismatches(&saved.config);
        if !mismatches.is_empty() {
            let saved_fields = saved.config.fields();
            let now_fields = config.fields();
            let list: Vec<String> = mismatches
                .iter()
                .map(|f| format!("{f}: {} then, {} now", saved_fields[f], now_fields[f]))
                .collect();
            bail!(
                "{} was trained with other settings ({}): resume with the flags the run was started with \
                 (only --nepochs, --dataroot and --nthreads may change)",
                dir.display(),
                list.join("; ")
            );
        }
        (model, optimizer) = checkpoint::load_into(dir, model, optimizer)?;
        // Continue in the run's own folder unless told otherwise, as the reference does.
        if save.is_none() {
            save = dir.parent().map(PathBuf::from);
        }
        state.epochs_done = saved.epochs_done;
        state.history = saved.history;
        state.reported = saved.reported;
        state.wall_seconds = saved.wall_seconds;
        say!(opts, "Resumed from {} after epoch {}", dir.display(), state.epochs_done);
    }
    let run = RunDir::create(save.unwrap_or_else(RunDir::default_root), opts.logs.clone())?;
    run.write_run_info(&RunInfo {
        provenance: provenance.clone(),
        command: std::env::args().collect(),
        started: chrono::Local::now().to_rfc3339(),
        config: config.clone(),
    })?;
    let wall_before = state.wall_seconds;

    say!(opts, "{}", params.model_size_line());
    say!(
        opts,
        "Training {} on {} {} images{} from {} (read in {load_seconds:.1} s), testing on {} {} images, backend {backend}, run folder {}",
        Config::value_name(&config.net_type),
        data.train.len(),
        Config::value_name(&config.dataset_train),
        if data.augment { " (random crop and flip)" } else { "" },
        data.source,
        data.test.len(),
        Config::value_name(&config.dataset_test),
        run.root.display()
    );

    let train_loader = Loader::new(
        Arc::new(data.train),
        data.normalization.clone(),
        config.batch_size,
        Order::Shuffled {
            seed: config.manual_seed,
        },
    );
    let test_loader = Loader::new(
        Arc::new(data.test),
        data.normalization,
        config.batch_size,
        Order::Sequential,
    );
    let loss_fn = CrossEntropyLoss::new(None, &device);

    for epoch in state.epochs_done + 1..=config.nepochs {
        let lr = schedule::learning_rate(config.learning_rate, config.dataset_train, epoch);
        device.seed(data::loader::epoch_seed(config.manual_seed, epoch));
        let start = Instant::now();
        let (trained, train_totals) = train_epoch(
            config,
            model,
            &mut optimizer,
            &train_loader,
            &loss_fn,
            &device,
            epoch,
            lr,
        )?;
        model = trained;
        let train_seconds = start.elapsed().as_secs_f64();
        let test_totals = test_epoch(&model, &test_loader, &mut state.reported);
        let record = EpochRecord {
            epoch,
            learning_rate: lr,
            train_loss: train_totals.loss(),
            train_acc: train_totals.accuracy(),
            test_loss: test_totals.loss(),
            test_acc: test_totals.accuracy(),
            test_acc_reported: state.reported.value,
            epoch_seconds: start.elapsed().as_secs_f64(),
            train_images_per_sec: train_totals.total as f64 / train_seconds,
        };
        let improved = state.history.iter().all(|r| record.test_acc > r.test_acc);
        say!(
            opts,
            "{}  Epoch {}/{}  Train: Loss {:.4} Accuracy {:.2}  Test: Loss {:.4} Accuracy {:.2} (original code would report {:.2})  {:.1}s, {:.0} img/s{}",
            chrono::Local::now().format("%Y-%m-%d %H:%M:%S"),
            epoch,
            config.nepochs,
            record.train_loss,
            record.train_acc,
            record.test_loss,
            record.test_acc,
            record.test_acc_reported,
            record.epoch_seconds,
            record.train_images_per_sec,
            if improved { "  (best)" } else { "" }
        );
        state.history.push(record);
        state.epochs_done = epoch;
        state.wall_seconds = wall_before + session_start.elapsed().as_secs_f64();
        run.write_metrics(&state.history)?;
        checkpoint::save(&run.checkpoint_last(), &model, &optimizer, &state)?;
        if improved {
            checkpoint::save(&run.checkpoint_best(), &model, &optimizer, &state)?;
        }
        let so_far = RunSummary {
            run_dir: run.root.clone(),
            history: state.history.clone(),
            params,
        };
        run.write_summary(&so_far.file(&provenance, config, state.wall_seconds))?;
    }

    let summary = RunSummary {
        run_dir: run.root.clone(),
        history: state.history,
        params,
    };
    state.wall_seconds = wall_before + session_start.elapsed().as_secs_f64();
    run.write_summary(&summary.file(&provenance, config, state.wall_seconds))?;
    if opts.verbose {
        print_summary(&summary);
    }
    Ok(summary)
}

#[allow(clippy::too_many_arguments)]
fn train_epoch(
    config: &Config,
    mut model: Net,
    optimizer: &mut ModuleOptimizer,
    loader: &Loader,
    loss_fn: &CrossEntropyLoss,
    device: &Device,
    epoch: usize,
    lr: f64,
) -> Result<(Net, EpochTotals)> {
    let mut totals = EpochTotals::default();
    let progress = progress_bar(loader.num_batches(), &format!("epoch {epoch}"));
    for (step, batch) in loader.epoch(epoch).enumerate() {
        // BatchNorm cannot normalise one sample (PyTorch refuses it too): skip a last batch of 1.
        if batch.len() < 2 {
            continue;
        }
        if config.debug {
            println!("\nBatch: {step}");
        }
        let (images, labels) = batch.to_tensors(device);
        let output = model.forward(images);
        let loss = loss_fn.forward(output.clone(), labels.clone());
        let loss_value = loss.clone().into_scalar::<f32>() as f64;
        if !loss_value.is_finite() {
            bail!(
                "the training loss became {loss_value} at epoch {epoch}, step {step}: lower --learning-rate or --level; \
                 the last good checkpoint is in the run folder"
            );
        }
        let correct = count_correct(output, labels);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optimizer.step(lr, model, grads);
        totals.add_batch(loss_value, correct, batch.len());
        progress.inc(1);
        progress.set_message(format!(
            "loss {:.4}, {:.0} img/s",
            totals.loss(),
            totals.total as f64 / progress.elapsed().as_secs_f64()
        ));
    }
    progress.finish_and_clear();
    Ok((model, totals))
}

/// Evaluates on the test set: correct accuracy over all of it, and the original code's smoothed
/// value folded batch by batch into `reported`.
pub fn test_epoch(model: &Net, loader: &Loader, reported: &mut ReportedAccuracy) -> EpochTotals {
    let model = model.valid();
    let device = loader_device(&model);
    let loss_fn = CrossEntropyLoss::new(None, &device);
    let mut totals = EpochTotals::default();
    for batch in loader.epoch(0) {
        let (images, labels) = batch.to_tensors(&device);
        let output = model.forward(images);
        let loss = loss_fn.forward(output.clone(), labels.clone()).into_scalar::<f32>() as f64;
        let correct = count_correct(output, labels);
        totals.add_batch(loss, correct, batch.len());
        reported.update(correct, batch.len(), loader.batch_size());
    }
    totals
}

/// The (non-autodiff) device a model in evaluation mode lives on.
fn loader_device(model: &Net) -> Device {
    model
        .devices()
        .into_iter()
        .next()
        .unwrap_or_else(Device::flex)
        .without_autodiff()
}

pub fn count_correct(output: Tensor<2>, labels: Tensor<1, Int>) -> usize {
    let predicted = output.argmax(1).squeeze_dim::<1>(1);
    predicted.equal(labels).int().sum().into_scalar::<i64>() as usize
}

fn progress_bar(len: usize, prefix: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} batches {elapsed_precise} eta {eta} {msg}")
            .expect("valid progress template")
            .progress_chars("=> "),
    );
    bar.set_prefix(prefix.to_string());
    bar
}

fn print_summary(summary: &RunSummary) {
    let list: Vec<String> = summary.history.iter().map(|r| format!("{:.2}", r.test_acc)).collect();
    println!("\nTest accuracies (correct, per epoch): {}", list.join(", "));
    if let Some((acc, epoch)) = summary.best_reported() {
        println!("Best accuracy the original PNN code would have reported: {acc:.2} (epoch {epoch})");
    }
    println!("Results in {}", summary.run_dir.display());
    if let Some((acc, epoch)) = summary.best() {
        println!("Best Accuracy: {acc:.2} (epoch {epoch})");
    }
}
