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
