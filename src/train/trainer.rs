//! The training loop: one epoch of training, one pass over the test set, both accuracies,
//! metrics and checkpoints written after every epoch.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::nn::loss::CrossEntropyLoss;
use burn::optim::ModuleOptimizer;
use burn::tensor::Device;
use indicatif::{ProgressBar, ProgressStyle};

use super::checkpoint::{self, PartialEpoch, TrainState};
use super::files::name_full_disk;
use super::interrupt::{Interrupted, StopFlag};
use super::lock::RunLock;
use super::memory;
use super::metrics::{EpochRecord, EpochTotals, ReportedAccuracy, best_by};
use super::run_dir::{RunDir, RunInfo, RunSummaryFile};
use super::step::{StepDevices, count_correct};
use super::tensorboard::EventLog;
use super::{optim, schedule};
use crate::config::Config;
use crate::data::{self, Loader};
use crate::device::{self, Backend};
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
    /// Raised by Ctrl-C / SIGTERM (see [`super::interrupt::install_handler`]): the run stops
    /// after the current step, writes a checkpoint of that point and returns [`Interrupted`].
    pub stop: StopFlag,
    /// Stop the same way after this many training steps of this invocation (tests use it to
    /// interrupt at an exact point).
    pub stop_after_steps: Option<usize>,
    /// Bytes the run may use at its peak; `None`: what the machine has available.
    pub memory_budget: Option<usize>,
    /// Train even when the memory estimate exceeds the budget.
    pub force: bool,
    /// Log the training loss to TensorBoard every this many steps (0: per epoch only).
    pub log_every: usize,
}

impl RunOptions {
    /// Options for a run in `save` on the CPU, quiet, with no stop requested.
    pub fn quiet(save: Option<PathBuf>) -> Self {
        Self {
            save,
            logs: None,
            resume: None,
            backend: Backend::cpu(),
            verbose: false,
            stop: StopFlag::default(),
            stop_after_steps: None,
            memory_budget: None,
            force: false,
            log_every: DEFAULT_LOG_EVERY,
        }
    }
}

/// Steps between two training losses in TensorBoard, by default.
pub const DEFAULT_LOG_EVERY: usize = 50;

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

/// Trains (or resumes) one run. The device's random generator is reseeded at every step, and
/// burn keeps one generator per process: two runs training at the same time in one process
/// would not be reproducible (the command line runs one per process).
pub fn train(config: &Config, opts: RunOptions) -> Result<RunSummary> {
    let started = Instant::now();
    if let (None, Some(dir), false) = (&opts.resume, &opts.save, opts.force) {
        refuse_to_restart(dir)?;
    }
    let device = opts.backend.device.clone().autodiff();
    // The seed decides the weights and the noise masks; each epoch reseeds from (seed, epoch).
    device.seed(config.manual_seed);

    let load_start = Instant::now();
    let data = data::load(config)?;
    let load_seconds = load_start.elapsed().as_secs_f64();
    let geometry = Geometry::of_set(&data.train)?;
    check_model_size(config, geometry, &opts)?;
    // Counting the model's size built small models; the real one draws from the seed.
    device.seed(config.manual_seed);
    let mut model = models::build_for(config, geometry, &device)?;
    let mut optimizer = optim::build(config);
    let mut state = TrainState::new(config);
    let mut save = opts.save.clone();
    if let Some(dir) = &opts.resume {
        (model, optimizer) = resume(dir, config, &opts, &mut state, model, optimizer)?;
        // Continue in the run's own folder unless told otherwise, as the reference does.
        save = save.or_else(|| dir.parent().map(PathBuf::from));
    }
    check_memory(config, geometry, &device, &opts, data.train.len())?;
    let mut invocation = Invocation::open(config, &opts, save, &model, state.wall_seconds, started)?;
    invocation.announce(&data, load_seconds);

    // Augmented where the data set is (CIFAR).
    let loaders = data.into_loaders(config.batch_size, config.manual_seed);
    let loss_fn = CrossEntropyLoss::new(None, &device);
    let mut step_devices = StepDevices::new(config, geometry, &device, &opts.backend.replicas)?;
    let mut invocation_steps = 0usize;
    for epoch in state.epochs_done + 1..=config.nepochs {
        let mut steps = StepBudget {
            stop: &opts.stop,
            left: opts.stop_after_steps.map(|n| n.saturating_sub(invocation_steps)),
            taken: 0,
            log_every: opts.log_every,
            losses: Vec::new(),
        };
        let lr = schedule::learning_rate(config.learning_rate, config.dataset_train, config.code, epoch);
        let epoch_start = Instant::now();
        let progress = EpochProgress::resumed(state.partial.take());
        let seconds_before = progress.seconds;
        let (trained, outcome) = train_epoch(
            config,
            model,
            &mut optimizer,
            &loaders.0,
            &loss_fn,
            &mut step_devices,
            epoch,
            lr,
            progress,
            &mut steps,
        )?;
        model = trained;
        invocation_steps += steps.taken;
        invocation.events.step_losses(&steps.losses)?;
        let train_totals = match outcome {
            EpochOutcome::Finished(totals) => totals,
            EpochOutcome::Stopped(part) => {
                let seconds = epoch_start.elapsed().as_secs_f64();
                return Err(invocation.stop_mid_epoch(epoch, part, seconds, &model, &optimizer, &mut state));
            }
        };
        let train_seconds = seconds_before + epoch_start.elapsed().as_secs_f64();
        let test_totals = test_epoch(&model, &loaders.1, &mut state.reported)?;
        let record = EpochRecord {
            epoch,
            learning_rate: lr,
            train_loss: train_totals.loss(),
            train_acc: train_totals.accuracy(),
            test_loss: test_totals.loss(),
            test_acc: test_totals.accuracy(),
            test_acc_reported: state.reported.value,
            epoch_seconds: seconds_before + epoch_start.elapsed().as_secs_f64(),
            train_images_per_sec: train_totals.total as f64 / train_seconds,
        };
        invocation.end_epoch(record, &model, &optimizer, &mut state)?;
        // A signal during the test pass stops here, with this epoch's checkpoint written.
        if opts.stop.is_requested() && epoch < config.nepochs {
            return Err(Interrupted {
                checkpoint: invocation.run.checkpoint_last(),
                epoch: epoch + 1,
                steps_done: 0,
            }
            .into());
        }
    }
    invocation.finish(state)
}

/// Loads a checkpoint folder into `model`, `optimizer` and `state`, after checking that it was
/// trained with the same settings (only --nepochs, --dataroot and --nthreads may change).
fn resume(
    dir: &std::path::Path,
    config: &Config,
    opts: &RunOptions,
    state: &mut TrainState,
    model: Net,
    optimizer: ModuleOptimizer,
) -> Result<(Net, ModuleOptimizer)> {
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
    let loaded = checkpoint::load_into(dir, model, optimizer)?;
    state.epochs_done = saved.epochs_done;
    state.partial = saved.partial;
    state.history = saved.history;
    state.reported = saved.reported;
    state.wall_seconds = saved.wall_seconds;
    match saved.partial {
        Some(p) => say!(
            opts,
            "Resumed from {} in epoch {} after {} batches",
            dir.display(),
            p.epoch,
            p.batches_done
        ),
        None => say!(opts, "Resumed from {} after epoch {}", dir.display(), state.epochs_done),
    }
    Ok(loaded)
}

/// What the steps of one invocation of a run share (a `pnn train` process: the first, or one
/// that resumes the run): the run folder it writes, and its clock.
struct Invocation<'a> {
    config: &'a Config,
    opts: &'a RunOptions,
    provenance: Provenance,
    run: RunDir,
    params: ParamCount,
    started: Instant,
    /// Wall time of the run's earlier invocations (when resumed).
    wall_before: f64,
    /// This invocation's TensorBoard event file.
    events: EventLog,
    /// The run folder is this process's until the invocation ends.
    _lock: RunLock,
}

impl<'a> Invocation<'a> {
    /// Creates (or reopens) the run folder and records how this invocation was started.
    fn open(
        config: &'a Config,
        opts: &'a RunOptions,
        save: Option<PathBuf>,
        model: &Net,
        wall_before: f64,
        started: Instant,
    ) -> Result<Self> {
        let provenance = Provenance::this(&opts.backend.name);
        let run = RunDir::create(save.unwrap_or_else(RunDir::default_root), opts.logs.clone())?;
        let lock = RunLock::acquire(&run.root)?;
        if let Some(stale) = &lock.replaced {
            say!(
                opts,
                "{} was locked by pid {} on {} (started {}), which is no longer running: taking it over",
                run.root.display(),
                stale.pid,
                stale.host,
                stale.started
            );
        }
        run.write_run_info(&RunInfo {
            provenance: provenance.clone(),
            command: std::env::args().collect(),
            started: chrono::Local::now().to_rfc3339(),
            config: config.clone(),
        })?;
        let events = EventLog::create(&run.logs, config)?;
        Ok(Self {
            config,
            opts,
            provenance,
            run,
            params: ParamCount::of(model),
            started,
            wall_before,
            events,
            _lock: lock,
        })
    }

    /// The run's wall time over all its invocations, this one until now.
    fn wall_seconds(&self) -> f64 {
        self.wall_before + self.started.elapsed().as_secs_f64()
    }

    /// The model's size and what is trained on what, where.
    fn announce(&self, data: &data::Data, load_seconds: f64) {
        let (config, opts) = (self.config, self.opts);
        say!(opts, "{}", self.params.model_size_line());
        say!(
            opts,
            "Training {} on {} {} images{} from {} (read in {load_seconds:.1} s), testing on {} {} images, backend {}, run folder {}",
            Config::value_name(&config.net_type),
            data.train.len(),
            Config::value_name(&config.dataset_train),
            if data.augment { " (random crop and flip)" } else { "" },
            data.source,
            data.test.len(),
            Config::value_name(&config.dataset_test),
            opts.backend.name,
            self.run.root.display()
        );
        if let (false, Some(note)) = (opts.backend.is_cpu(), crate::device::AUTOTUNE_NOTE) {
            say!(opts, "{note}");
        }
    }

    /// Saves a run stopped `part` of the way into `epoch` (`seconds` of it in this invocation) to
    /// its checkpoint-last, and returns the error that says where to resume from.
    fn stop_mid_epoch(
        &self,
        epoch: usize,
        part: EpochProgress,
        seconds: f64,
        model: &Net,
        optimizer: &ModuleOptimizer,
        state: &mut TrainState,
    ) -> anyhow::Error {
        state.partial = Some(PartialEpoch {
            epoch,
            batches_done: part.batches_done,
            totals: part.totals,
            seconds: part.seconds + seconds,
        });
        state.wall_seconds = self.wall_seconds();
        let checkpoint = self.run.checkpoint_last();
        if let Err(e) = checkpoint::save(&checkpoint, model, optimizer, state) {
            return e;
        }
        Interrupted {
            checkpoint,
            epoch,
            steps_done: part.batches_done,
        }
        .into()
    }

    /// Prints an epoch's line and records it: metrics, checkpoint-last (and checkpoint-best when
    /// the test accuracy improved), the summary so far, TensorBoard's scalars.
    fn end_epoch(
        &mut self,
        record: EpochRecord,
        model: &Net,
        optimizer: &ModuleOptimizer,
        state: &mut TrainState,
    ) -> Result<()> {
        let (config, run, epoch) = (self.config, &self.run, record.epoch);
        let improved = state.history.iter().all(|r| record.test_acc > r.test_acc);
        say!(
            self.opts,
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
        state.wall_seconds = self.wall_seconds();
        let keep_going = || {
            format!(
                "epoch {epoch} is done but its checkpoint could not be written; the run folder keeps the previous \
                 checkpoint-last intact: free space (or fix the folder) and resume with --resume {}",
                run.checkpoint_last().display()
            )
        };
        run.write_metrics(&state.history)
            .with_context(keep_going)
            .map_err(name_full_disk)?;
        checkpoint::save(&run.checkpoint_last(), model, optimizer, state)
            .with_context(keep_going)
            .map_err(name_full_disk)?;
        if improved {
            checkpoint::save(&run.checkpoint_best(), model, optimizer, state)
                .with_context(keep_going)
                .map_err(name_full_disk)?;
        }
        let so_far = RunSummary {
            run_dir: run.root.clone(),
            history: state.history.clone(),
            params: self.params,
        };
        run.write_summary(&so_far.file(&self.provenance, config, state.wall_seconds))?;
        // Last, once the epoch is in the checkpoint: a resumed run never logs an epoch twice.
        if let Some(record) = state.history.last() {
            self.events.epoch(record)?;
        }
        Ok(())
    }

    /// Writes the run's summary and prints it.
    fn finish(self, mut state: TrainState) -> Result<RunSummary> {
        let summary = RunSummary {
            run_dir: self.run.root.clone(),
            history: state.history,
            params: self.params,
        };
        state.wall_seconds = self.wall_seconds();
        self.run
            .write_summary(&summary.file(&self.provenance, self.config, state.wall_seconds))?;
        if self.opts.verbose {
            print_summary(&summary);
        }
        Ok(summary)
    }
}

/// A fresh run would replace the files of the run `dir` holds: refused, with the ways on.
fn refuse_to_restart(dir: &Path) -> Result<()> {
    let last = dir.join("checkpoint-last");
    if let Ok(state) = checkpoint::load_state(&last) {
        bail!(
            "{} holds a run ({} epochs done): continue it with --resume {}, give another --save, or add --force to \
             start it again from scratch (its files are replaced)",
            dir.display(),
            state.epochs_done,
            last.display()
        );
    }
    if dir.join(super::run_dir::METRICS_JSONL).is_file() || last.exists() {
        bail!(
            "{} holds a run whose checkpoint cannot be read: give another --save, or add --force to start it again \
             from scratch (its files are replaced)",
            dir.display()
        );
    }
    Ok(())
}

/// Refuses a model too large for the memory before it is built (CPU only), unless forced.
fn check_model_size(config: &Config, geometry: Geometry, opts: &RunOptions) -> Result<()> {
    if !opts.backend.is_cpu() {
        return Ok(());
    }
    let (budget, source) = match opts.memory_budget {
        Some(bytes) => (bytes, "--memory-budget"),
        None => match memory::available_bytes() {
            Some(bytes) => (bytes, "the memory available"),
            None => return Ok(()),
        },
    };
    match memory::refuse_oversized(config, geometry, budget, source, true) {
        Err(e) if opts.force => {
            say!(opts, "--force: building it anyway ({e})");
            Ok(())
        }
        Err(e) => Err(e.context("refused before building the model (add --force to try anyway)")),
        ok => ok,
    }
}

/// Measures what a step needs (CPU only: GPU memory is not the host allocator's) and refuses a
/// run that would not fit, unless forced.
fn check_memory(
    config: &Config,
    geometry: Geometry,
    device: &Device,
    opts: &RunOptions,
    train_len: usize,
) -> Result<()> {
    if !opts.backend.is_cpu() {
        return Ok(());
    }
    let Some(estimate) = memory::estimate(config, geometry, device)? else {
        return Ok(());
    };
    let batch = config.batch_size.min(train_len);
    let (budget, source) = match opts.memory_budget {
        Some(bytes) => (bytes, "--memory-budget"),
        None => match memory::available_bytes() {
            Some(bytes) => (bytes, "the memory available"),
            None => return Ok(()),
        },
    };
    say!(
        opts,
        "Memory: about {:.0} MiB at batch {batch} (estimated), {source} {:.0} MiB",
        estimate.total(batch) as f64 / (1024.0 * 1024.0),
        budget as f64 / (1024.0 * 1024.0)
    );
    match memory::check(&estimate, batch, budget, source) {
        Err(e) if opts.force => {
            say!(opts, "--force: training anyway ({e})");
            Ok(())
        }
        other => other,
    }
}

/// Where an epoch starts: at its beginning, or where a stopped run left it.
#[derive(Debug, Clone, Copy)]
struct EpochProgress {
    batches_done: usize,
    totals: EpochTotals,
    /// Training seconds already spent on the epoch (in earlier invocations).
    seconds: f64,
}

impl EpochProgress {
    /// Where an epoch starts: at its beginning, or where a stopped invocation left it.
    fn resumed(part: Option<PartialEpoch>) -> Self {
        Self {
            batches_done: part.map_or(0, |p| p.batches_done),
            totals: part.map_or_else(EpochTotals::default, |p| p.totals),
            seconds: part.map_or(0.0, |p| p.seconds),
        }
    }
}

enum EpochOutcome {
    Finished(EpochTotals),
    /// Stopped on request after `batches_done` batches (`seconds` not yet including this invocation).
    Stopped(EpochProgress),
}

/// The stop flag and the optional step limit of this invocation.
struct StepBudget<'a> {
    stop: &'a StopFlag,
    left: Option<usize>,
    taken: usize,
    /// Every `log_every`-th step's training loss, by step of the run (1-based), for TensorBoard.
    log_every: usize,
    losses: Vec<(usize, f64)>,
}

impl StepBudget<'_> {
    fn should_stop(&self) -> bool {
        self.stop.is_requested() || self.left.is_some_and(|left| self.taken >= left)
    }
}

/// A seed per training step, so that a run resumed in the middle of an epoch draws the same
/// random numbers (dropout) as the uninterrupted run.
fn step_seed(seed: u64, epoch: usize, step: usize) -> u64 {
    data::loader::epoch_seed(data::loader::epoch_seed(seed, epoch), step)
}

#[allow(clippy::too_many_arguments)]
fn train_epoch(
    config: &Config,
    mut model: Net,
    optimizer: &mut ModuleOptimizer,
    loader: &Loader,
    loss_fn: &CrossEntropyLoss,
    devices: &mut StepDevices,
    epoch: usize,
    lr: f64,
    from: EpochProgress,
    budget: &mut StepBudget,
) -> Result<(Net, EpochOutcome)> {
    let mut totals = from.totals;
    let progress = progress_bar(loader.num_batches(), &format!("epoch {epoch}"));
    progress.set_position(from.batches_done as u64);
    let invocation_start = Instant::now();
    let mut invocation_images = 0usize;
    for (step, batch) in (from.batches_done..).zip(loader.epoch_from(epoch, from.batches_done)) {
        if budget.should_stop() {
            progress.finish_and_clear();
            let stopped = EpochProgress {
                batches_done: step,
                totals,
                seconds: from.seconds,
            };
            return Ok((model, EpochOutcome::Stopped(stopped)));
        }
        // BatchNorm cannot normalise one sample (PyTorch refuses it too): skip a last batch of 1.
        if batch.len() < 2 {
            continue;
        }
        if config.debug {
            println!("\nBatch: {step}");
        }
        devices.seed(step_seed(config.manual_seed, epoch, step));
        let step_start = Instant::now();
        // The step's reads from the device fail where the device's work did.
        let result = match devices.forward_backward(&model, &batch, loss_fn) {
            Ok(result) => result,
            Err(e) => {
                progress.finish_and_clear();
                return Err(e.context(format!(
                    "epoch {epoch}, step {step}: nothing after the last checkpoint was saved"
                )));
            }
        };
        let loss_value = result.loss;
        if !loss_value.is_finite() {
            progress.finish_and_clear();
            // Weight decay past this is unusual enough to name (the reference uses 1e-4 to 5e-4).
            let decay = if config.weight_decay > 0.01 {
                format!(", or weight decay too strong (--weight-decay {})", config.weight_decay)
            } else {
                String::new()
            };
            bail!(
                "the training loss became {loss_value} at epoch {epoch}, step {step} (batch {} of {}): the weights \
                 diverged. Likely causes: a learning rate too high for this model (--learning-rate {}; try a tenth), \
                 or noise too strong (--level {}){decay}. Nothing after the last checkpoint was saved; the run \
                 folder's checkpoint-last, if any, is from before this point and untouched",
                step + 1,
                loader.num_batches(),
                config.learning_rate,
                config.level
            );
        }
        model = optimizer.step(lr, model, result.grads);
        totals.add_batch(loss_value, result.correct, batch.len());
        budget.taken += 1;
        let run_step = (epoch - 1) * loader.num_batches() + step + 1;
        if budget.log_every > 0 && run_step.is_multiple_of(budget.log_every) {
            budget.losses.push((run_step, loss_value));
        }
        if invocation_images == 0 && devices.on_gpu() {
            report_slow_first_step(&progress, step_start.elapsed().as_secs_f64());
        }
        invocation_images += batch.len();
        progress.inc(1);
        progress.set_message(format!(
            "loss {:.4}, {:.0} img/s",
            totals.loss(),
            invocation_images as f64 / invocation_start.elapsed().as_secs_f64()
        ));
    }
    progress.finish_and_clear();
    Ok((model, EpochOutcome::Finished(totals)))
}

/// Says how long a process's first step took when that was long enough to be noticed: on a GPU
/// it compiles every kernel and, in an autotuning build, tunes each new kernel shape.
fn report_slow_first_step(progress: &indicatif::ProgressBar, seconds: f64) {
    if seconds >= 5.0 {
        let tuning = if device::AUTOTUNE {
            " and tuning (the tuning is kept on disk: the next run of these shapes skips it)"
        } else {
            ""
        };
        let line = format!("first step: {seconds:.1} s, most of it compiling{tuning} the GPU kernels");
        if progress.is_hidden() {
            println!("{line}")
        } else {
            progress.println(line)
        }
    }
}

/// Evaluates on the test set: correct accuracy over all of it, and the original code's smoothed
/// value folded batch by batch into `reported`.
pub fn test_epoch(model: &Net, loader: &Loader, reported: &mut ReportedAccuracy) -> Result<EpochTotals> {
    let model = model.valid();
    let device = loader_device(&model);
    let loss_fn = CrossEntropyLoss::new(None, &device);
    let mut totals = EpochTotals::default();
    for batch in loader.epoch(0) {
        let (images, labels) = batch.to_tensors(&device);
        let output = model.forward(images);
        let loss = loss_fn.forward(output.clone(), labels.clone());
        let loss = device::read_scalar::<_, f32>(loss, "test loss")? as f64;
        let correct = count_correct(output, labels)?;
        totals.add_batch(loss, correct, batch.len());
        reported.update(correct, batch.len(), loader.batch_size());
    }
    Ok(totals)
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

fn progress_bar(len: usize, prefix: &str) -> ProgressBar {
    progress_bar_of(len, prefix, "batches")
}

/// A progress bar on a terminal (hidden otherwise) counting `unit`.
pub fn progress_bar_of(len: usize, prefix: &str, unit: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{prefix}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{elapsed_precise}} eta {{eta}} {{msg}}"
        ))
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
