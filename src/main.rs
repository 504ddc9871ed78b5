//! The `pnn` command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pnn::config::TrainArgs;
use pnn::device::Backend;
use pnn::models::{self, Geometry, ParamCount};
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
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Train(args) => {
            let config = args.to_config()?;
            let backend = Backend::parse(&args.device)?;
            let opts = RunOptions {
                save: args.save,
                logs: args.logs,
                resume: args.resume,
                backend,
                verbose: true,
            };
            train::train(&config, opts)?;
        }
        Command::Info(args) => {
            let config = args.to_config()?;
            let device = Backend::parse(&args.device)?.device;
            device.seed(config.manual_seed);
            let geometry = match Geometry::of(&config) {
                Ok(g) => g,
                // An image folder: read it to learn its geometry.
                Err(_) => Geometry::of_set(&pnn::data::load(&config)?.train)?,
            };
            let model = models::build_for(&config, geometry, &device)?;
            println!("{model}");
            println!("{}", ParamCount::of(&model).model_size_line());
        }
        Command::Bench { args, steps, warmup } => {
            let config = args.to_config()?;
            let backend = Backend::parse(&args.device)?;
            let r = pnn::bench::run(&config, &backend, warmup, steps.max(1))?;
            println!("{:?} batch {} on {}:", config.net_type, config.batch_size, backend.name);
            println!(
                "  training step: {:.1} images/s (median step {:.1} ms over {} steps)",
                r.step_images_per_sec,
                r.median_step_seconds * 1e3,
                steps.max(1)
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
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
