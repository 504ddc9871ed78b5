//! The `pnn` command line.

use std::process::ExitCode;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pnn::config::TrainArgs;
use pnn::device::Backend;
use pnn::models::{self, Geometry, ParamCount};
use pnn::report::{RecordedRun, find_runs, plot, table};
use pnn::sweep::cluster::{self, ClusterFlags};
use pnn::sweep::reproduce::{self, Budget, ReproduceOptions};
use pnn::sweep::{self, Execution, Grid, RunStatus, RunsInterrupted, SweepOptions};
use pnn::train::files::write_atomic;

/// mimalloc, with freed memory kept for reuse: see `pnn::allocator`.
#[global_allocator]
static ALLOCATOR: pnn::allocator::Counting<mimalloc::MiMalloc> = pnn::allocator::Counting(mimalloc::MiMalloc);

use pnn::train::interrupt::{self, EXIT_INTERRUPTED, Interrupted};
use pnn::train::{self, RunOptions};

#[derive(Parser)]
#[command(
    name = "pnn",
    version,
    about = "Perturbative Neural Networks: train the reproduction's models and report honest accuracy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model; each epoch reports the correct test accuracy and the one the original PNN
    /// code would have reported.
    Train(TrainArgs),
    /// Print a model's layers and its size (regular parameters and noise mask values).
    Info(TrainArgs),
    /// Measure a configuration on synthetic data: training-step images/s (median over steps)
    /// beside the data loader's images/s, and peak memory.
    Bench {
        #[command(flatten)]
        args: TrainArgs,
        /// Steps measured (after the warm-up).
        #[arg(long, default_value_t = 20)]
        steps: usize,
        /// Steps run first and not measured.
        #[arg(long, default_value_t = 3)]
        warmup: usize,
    },
    /// Draw test accuracy per epoch (PNG, SVG and a JSON naming the runs): for one run the
    /// correct and the reported accuracy, for several one curve each.
    Plot {
        /// Run folders (or folders holding runs).
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// Output path without extension [default: <run>/accuracy for one run, else ./accuracy-comparison].
        #[arg(long, short)]
        out: Option<PathBuf>,
        /// With several runs, also draw each one's reported accuracy (dashed).
        #[arg(long)]
        reported: bool,
        /// Figure title (several runs).
        #[arg(long)]
        title: Option<String>,
    },
    /// Compare runs in a table: model, the flags that differ, size, best and final correct
    /// accuracy, best reported accuracy, time. Markdown on stdout.
    Compare {
        /// Run folders (or folders holding runs).
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// Also write the table as Markdown to this file.
        #[arg(long)]
        markdown: Option<PathBuf>,
        /// Also write the table as CSV (with each run's full configuration and provenance).
        #[arg(long)]
        csv: Option<PathBuf>,
    },
    /// Score a checkpoint (pnn's, or an imported one) on a test set: the correct accuracy, the
    /// one the original code would have reported, per-class accuracy and the confusion matrix
    /// (printed, and written as CSV, JSON and a figure); or run it on images given in a file.
    Eval(pnn::eval::cli::EvalArgs),
    /// Write a checkpoint's model as safetensors under the reference's state_dict names, which
    /// the reference's models.py loads with load_state_dict.
    Export(pnn::interop::cli::ExportArgs),
    /// Read a PyTorch checkpoint of the reference's models (a state_dict, or a whole model saved
    /// by its main.py) into a pnn checkpoint, without running any pickled code. Give the flags
    /// the model was built with.
    Import(pnn::interop::cli::ImportArgs),
    /// Fit a perturbation layer to a convolution (random, or a layer of a resnet18 checkpoint)
    /// on 1, N, ... training images, beside a plain 1x1 convolution and the convolution's own
    /// size, and score every fit on held-out images: can the noise stand in for the kernel?
    #[command(name = "fit-conv")]
    FitConv(pnn::theory::cli::FitConvArgs),
    /// Statistics of a convolution's neighbourhood term (its output minus the centre tap's)
    /// beside those of a perturbation layer's masks: does it behave like additive noise?
    #[command(name = "noise-stats")]
    NoiseStats(pnn::theory::cli::NoiseStatsArgs),
    /// Run a grid of training flags times seeds, each run in its own folder, and summarise it:
    /// per configuration the mean, standard deviation and 95% confidence interval of its
    /// accuracies, the difference between configurations that differ in one flag with its
    /// interval, and mean curves with confidence bands. Started again, it skips finished runs
    /// and resumes unfinished ones. Takes every `pnn train` flag as the runs' common settings.
    Sweep {
        #[command(flatten)]
        config: pnn::config::Config,
        /// A flag to vary and its values, e.g. --grid level=0.05,0.1,0.2 --grid optim-method=SGD,Adam
        /// (on/off flags take true,false). Repeat for more flags: the sweep runs every combination.
        #[arg(long = "grid", value_name = "FLAG=V1,V2,...")]
        grid: Vec<String>,
        /// Seeds per configuration: --manual-seed, and the ones after it.
        #[arg(long, default_value_t = 3)]
        seeds: u64,
        /// Folder for the runs (<out>/<configuration>/seed<k>), the summary and the figure.
        #[arg(long, default_value = "results/sweep")]
        out: PathBuf,
        #[command(flatten)]
        runs: RunsFlags,
        #[command(flatten)]
        cluster: ClusterFlags,
        /// Print the planned runs as `pnn train` command lines, with what their folders hold,
        /// and exit.
        #[arg(long)]
        list: bool,
    },
    /// Run one side of the debate as an experiment table, with the budget given: the
    /// reproduction's 8 CIFAR-10 commands (--table reproduction) or the paper authors' updated
    /// 2 (--table update). Writes the table with the published figures beside, confidence
    /// intervals, the differences the debate is about, and figures. Started again, it skips
    /// finished runs and resumes an unfinished one.
    Reproduce {
        /// reproduction (michaelklachko/pnn.pytorch) or update (juefeix/pnn.pytorch.update)
        /// [default: reproduction; with --list: both].
        #[arg(long)]
        table: Option<String>,
        /// Folder with the CIFAR-10 data (binary release, its .tar.gz, or an image folder).
        #[arg(long, default_value = "./data")]
        dataroot: PathBuf,
        /// Epochs per run [default: the published figures' epochs: 150 for the reproduction,
        /// 450 for the update].
        #[arg(long)]
        nepochs: Option<usize>,
        /// Train on a fixed random subset of N images.
        #[arg(long = "train-subset", alias = "train_subset")]
        train_subset: Option<usize>,
        /// Test on a fixed random subset of N images.
        #[arg(long = "test-subset", alias = "test_subset")]
        test_subset: Option<usize>,
        /// Number of seeds (1..=K) per experiment.
        #[arg(long, default_value_t = 1)]
        seeds: u64,
        /// Run only these experiments, e.g. --only 1,4,5.
        #[arg(long, value_delimiter = ',')]
        only: Vec<usize>,
        /// Folder for the runs, the table and the figures.
        #[arg(long, default_value = "results/reproduce")]
        out: PathBuf,
        #[command(flatten)]
        runs: RunsFlags,
        #[command(flatten)]
        cluster: ClusterFlags,
        /// Never download CIFAR-10.
        #[arg(long = "no-download", alias = "no_download")]
        no_download: bool,
        /// Print the table's commands as `pnn train` command lines, with the published figures,
        /// and exit.
        #[arg(long)]
        list: bool,
    },
}

/// How the runs of a sweep or reproduce are carried out.
#[derive(clap::Args)]
struct RunsFlags {
    /// auto (a GPU if this pnn was built with one and one answers, else the CPU), cpu,
    /// vulkan[:N], cuda[:N] or wgpu[:N].
    #[arg(long, default_value = "auto")]
    device: String,
    /// Runs at once, each a `pnn train` process with an equal share of the CPU threads (its
    /// output in a .log beside its folder).
    #[arg(long, default_value_t = 1)]
    jobs: usize,
}

impl RunsFlags {
    fn execution(&self) -> anyhow::Result<Execution> {
        if self.jobs == 0 {
            anyhow::bail!("--jobs must be at least 1");
        }
        Ok(Execution {
            backend: Backend::parse(&self.device)?,
            device: self.device.clone(),
            jobs: self.jobs,
            program: std::env::current_exe().ok(),
            verbose: true,
            stop: interrupt::install_handler()?,
        })
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Train(args) => {
            let config = args.to_config()?;
            let backend = Backend::parse_with_count(&args.run.device, args.run.ngpu)?;
            let opts = RunOptions {
                save: args.run.save,
                logs: args.run.logs,
                resume: args.run.resume,
                backend,
                verbose: true,
                stop: interrupt::install_handler()?,
                stop_after_steps: None,
                memory_budget: args.run.memory_budget.map(|mib| (mib as usize) << 20),
                force: args.run.force,
                log_every: args.run.log_every,
            };
            train::train(&config, opts)?;
        }
        Command::Info(args) => {
            let config = args.to_config()?;
            let backend = Backend::parse(&args.run.device)?;
            let device = backend.device.clone();
            let geometry = match Geometry::of(&config) {
                Ok(g) => g,
                // An image folder: read it to learn its geometry.
                Err(_) => Geometry::of_set(&pnn::data::load(&config)?.train)?,
            };
            if let (true, Some(budget)) = (backend.is_cpu(), pnn::train::memory::available_bytes())
                && !args.run.force
            {
                pnn::train::memory::refuse_oversized(&config, geometry, budget, "the memory available", false)?;
            }
            device.seed(config.manual_seed);
            let model = models::build_for(&config, geometry, &device)?;
            println!("{model}");
            println!("{}", ParamCount::of(&model).model_size_line());
            let slots = pnn::train::memory::optimizer_slots(&config);
            println!(
                "Training state: {:.1} MiB before any image (every value, and a gradient and {slots} optimizer value(s) per trained one)",
                pnn::models::footprint::of_model(&model).bytes(slots) / (1024.0 * 1024.0)
            );
        }
        Command::Bench { args, steps, warmup } => {
            let config = args.to_config()?;
            let backend = Backend::parse_with_count(&args.run.device, args.run.ngpu)?;
            if let (true, Ok(geometry), Some(budget)) = (
                backend.is_cpu(),
                Geometry::of(&config),
                pnn::train::memory::available_bytes(),
            ) && !args.run.force
            {
                pnn::train::memory::refuse_oversized(&config, geometry, budget, "the memory available", true)?;
            }
            let r = pnn::bench::run(&config, &backend, warmup, steps.max(1))?;
            println!(
                "{} batch {} on {}:",
                pnn::config::Config::value_name(&config.net_type),
                config.batch_size,
                backend.name
            );
            println!(
                "  training step: {:.1} images/s (median step {:.1} ms over {} steps)",
                r.step_images_per_sec,
                r.median_step_seconds * 1e3,
                steps.max(1)
            );
            println!(
                "  first step:    {:.2} s (on a GPU: compiling{} the kernels)",
                r.first_step_seconds,
                if pnn::device::AUTOTUNE { " and tuning" } else { "" }
            );
            println!("  data loader:   {:.0} images/s", r.loader_images_per_sec);
            println!(
                "  loader / step: {:.0}x",
                r.loader_images_per_sec / r.step_images_per_sec
            );
            if let Some(mib) = r.peak_rss_mib {
                println!("  peak memory:   {mib:.0} MiB");
            }
        }
        Command::Plot {
            runs,
            out,
            reported,
            title,
        } => {
            let runs = load_runs(&runs)?;
            let (figure, default_out) = if let [run] = runs.as_slice() {
                (plot::reported_vs_correct(run), run.dir.join("accuracy"))
            } else {
                let mut fig = plot::runs_figure(&runs, reported);
                if let Some(t) = title {
                    fig.title = t;
                }
                (fig, PathBuf::from("accuracy-comparison"))
            };
            let refs: Vec<&RecordedRun> = runs.iter().collect();
            for path in plot::save(&figure, &out.unwrap_or(default_out), &refs)? {
                println!("wrote {}", path.display());
            }
        }
        Command::Compare { runs, markdown, csv } => {
            let runs = load_runs(&runs)?;
            let md = table::compare_markdown(&runs);
            print!("{md}");
            if let Some(path) = markdown {
                write_atomic(&path, md.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
                eprintln!("wrote {}", path.display());
            }
            if let Some(path) = csv {
                write_atomic(&path, &table::compare_csv(&runs)?)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                eprintln!("wrote {}", path.display());
            }
        }
        Command::Eval(args) => {
            for path in pnn::eval::cli::run(&args)? {
                println!("wrote {}", path.display());
            }
        }
        Command::Export(args) => {
            pnn::interop::cli::run_export(&args)?;
        }
        Command::Import(args) => pnn::interop::cli::run_import(&args)?,
        Command::FitConv(args) => {
            if let Some(dir) = &args.redraw {
                let record = pnn::theory::fit_report::read_back(dir)?;
                let out = args.study.out.clone().unwrap_or_else(|| dir.clone());
                for path in pnn::theory::fit_report::draw(&out, &record)? {
                    println!("wrote {}", path.display());
                }
                return Ok(());
            }
            let opts = args.to_options()?;
            let out = args.study.out_or("fit-conv");
            let result = pnn::theory::fit_conv::run(&opts)?;
            let command = std::env::args().collect::<Vec<_>>().join(" ");
            print!("{}", pnn::theory::fit_report::markdown(&result, &command));
            for path in pnn::theory::fit_report::write(&out, &result, &args, &command)? {
                println!("wrote {}", path.display());
            }
        }
        Command::NoiseStats(args) => {
            let opts = args.to_options()?;
            let out = args.study.out_or("noise-stats");
            let stats = pnn::theory::noise_stats::run(&opts)?;
            let command = std::env::args().collect::<Vec<_>>().join(" ");
            let (images, level) = (opts.images, opts.perturb.level);
            print!(
                "{}",
                pnn::theory::noise_report::markdown(&stats, images, level, &command)
            );
            for path in pnn::theory::noise_report::write(&out, &stats, images, level, &args, &command)? {
                println!("wrote {}", path.display());
            }
        }
        Command::Sweep {
            config,
            grid,
            seeds,
            out,
            runs,
            cluster,
            list,
        } => {
            let base = config.fold_opposites();
            base.validate()?;
            let opts = SweepOptions {
                base,
                grid: Grid::parse(&grid)?,
                seeds,
                out,
                command: std::env::args().collect(),
            };
            if list {
                for (point, planned) in opts.plan()? {
                    println!("# {}", point.label());
                    for run in planned {
                        println!(
                            "pnn train {} --save {}  # {}",
                            run.flags,
                            run.dir.display(),
                            describe(&run.status)
                        );
                    }
                }
                return Ok(());
            }
            if cluster.slurm.is_some() {
                for line in cluster::write_scripts(&cluster, opts.runs()?.len(), "sweep", &opts.out)? {
                    println!("{line}");
                }
                return Ok(());
            }
            if cluster.collect {
                let (written, missing) = sweep::collect(&opts)?;
                return print_collected(&written, &missing);
            }
            if let Some(task) = cluster.task()? {
                return cluster::run_task(&opts.runs()?, task, &runs.execution()?);
            }
            for path in sweep::run(&opts, &runs.execution()?)? {
                println!("wrote {}", path.display());
            }
        }
        Command::Reproduce {
            table,
            dataroot,
            nepochs,
            train_subset,
            test_subset,
            seeds,
            only,
            out,
            runs,
            cluster,
            no_download,
            list,
        } => {
            if list {
                let tables = match &table {
                    Some(name) => vec![reproduce::table(name)?],
                    None => reproduce::TABLES.to_vec(),
                };
                for t in tables {
                    println!("# {} (--table {}): {}", t.title, t.name, t.source);
                    for e in t.experiments {
                        println!("# {}. {} (published {}%)", e.id, e.title, e.published);
                        println!(
                            "pnn train {} --dataset-train CIFAR10 --dataset-test CIFAR10 --nepochs {}",
                            e.flags, t.published_epochs
                        );
                    }
                    println!();
                }
                return Ok(());
            }
            let table = reproduce::table(table.as_deref().unwrap_or("reproduction"))?;
            let opts = ReproduceOptions {
                table,
                out,
                dataroot,
                download: !no_download,
                budget: Budget {
                    nepochs: nepochs.unwrap_or(table.published_epochs),
                    train_subset,
                    test_subset,
                    seeds,
                },
                only,
            };
            if cluster.slurm.is_some() {
                let name = format!("reproduce-{}", table.name);
                for line in cluster::write_scripts(&cluster, reproduce::plan(&opts)?.len(), &name, &opts.out)? {
                    println!("{line}");
                }
                return Ok(());
            }
            if cluster.collect {
                let (written, missing) = reproduce::collect(&opts)?;
                return print_collected(&written, &missing);
            }
            if let Some(task) = cluster.task()? {
                return cluster::run_task(&reproduce::plan(&opts)?, task, &runs.execution()?);
            }
            for path in reproduce::run(&opts, &runs.execution()?)? {
                println!("wrote {}", path.display());
            }
        }
    }
    Ok(())
}

/// What `--collect` wrote, and the runs it could not include.
fn print_collected(written: &[PathBuf], missing: &[String]) -> anyhow::Result<()> {
    for path in written {
        println!("wrote {}", path.display());
    }
    if !missing.is_empty() {
        println!("{} run(s) not finished, left out of the report:", missing.len());
        for line in missing {
            println!("  {line}");
        }
    }
    Ok(())
}

/// What a planned run's folder holds, for `--list`.
fn describe(status: &RunStatus) -> String {
    match status {
        RunStatus::Finished => "finished".into(),
        RunStatus::Resume(from) => format!("resumes from {}", from.display()),
        RunStatus::Fresh => "to run".into(),
    }
}

/// Every run under the given folders, read back.
fn load_runs(paths: &[PathBuf]) -> anyhow::Result<Vec<RecordedRun>> {
    find_runs(paths)?.iter().map(|dir| RecordedRun::load(dir)).collect()
}

/// The command line, with a value that looks like a negative number read as the flag's value:
/// `--nfilters -1` is then refused as an invalid --nfilters, not as an unknown argument `-1`.
fn parse_command_line() -> Cli {
    use clap::{CommandFactory, FromArgMatches};
    let negative_values = |arg: clap::Arg| {
        if arg.get_num_args().is_some_and(|n| n.takes_values()) || arg.get_action().takes_values() {
            arg.allow_negative_numbers(true)
        } else {
            arg
        }
    };
    let command = Cli::command().mut_subcommands(|sub| sub.mut_args(negative_values));
    let matches = command.get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

fn main() -> ExitCode {
    // SAFETY: first in main, before any thread is started.
    unsafe { pnn::device::use_installed_libdevice() };
    // Output piped into a reader that stops early (`pnn info | head`) ends pnn as it ends other
    // Unix tools, instead of a panic at the next print. Files are written atomically, so a run
    // ended this way keeps its last checkpoint.
    // SAFETY: restoring a signal's default action, before any thread is started.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    pnn::allocator::keep_freed_memory();
    let cli = parse_command_line();
    // The command runs on one of the worker threads of rayon's pool rather than beside them. A
    // parallel loop started from outside the pool is handed over to it and the calling thread
    // sleeps until it is done, at the cost of waking threads across the pool's boundary each
    // time, which adds up over a step made of many short parallel operations (docs/speed.md has
    // the figures). Inside the pool, the thread running the command takes part in the work.
    let result = match rayon::ThreadPoolBuilder::new().build() {
        Ok(pool) => pool.install(|| run(cli)),
        Err(_) => run(cli),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(stopped) = e.downcast_ref::<RunsInterrupted>() {
                eprintln!("{stopped}");
                eprintln!("To go on, run the same command again: it resumes unfinished runs.");
                return ExitCode::from(EXIT_INTERRUPTED);
            }
            if let Some(stopped) = e.downcast_ref::<Interrupted>() {
                eprintln!("{stopped}");
                let args: Vec<String> = std::env::args().collect();
                if let Some(command) = args.get(1).filter(|a| ["reproduce", "sweep"].contains(&a.as_str())) {
                    eprintln!("To go on, run the same `pnn {command}` command again: it resumes unfinished runs.");
                } else {
                    eprintln!("To go on:\n  {}", interrupt::resume_command(&args, &stopped.checkpoint));
                }
                return ExitCode::from(EXIT_INTERRUPTED);
            }
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
