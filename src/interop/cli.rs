//! `pnn export` and `pnn import`: their flags and what they do.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};

use super::{export, import};
use crate::config::Config;
use crate::device::Backend;
use crate::models::{self, Geometry};
use crate::report::flags::non_default_args;
use crate::train::checkpoint::{self, ImportedFrom, TrainState};
use crate::train::optim;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// A safetensors file of the reference's state_dict: `load_state_dict(safetensors.torch.load_file(F))`.
    Safetensors,
}

#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    /// A checkpoint folder, or a run folder (its checkpoint-last).
    pub checkpoint: PathBuf,
    /// What to write.
    #[arg(long, value_enum, default_value = "safetensors")]
    pub format: ExportFormat,
    /// The file to write [default: the checkpoint folder's path with .safetensors added].
    #[arg(long, short)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct ImportArgs {
    /// A PyTorch checkpoint of one of the reference's models: a state_dict file, or the whole
    /// model as the reference's main.py saves it (`torch.save(model)`).
    pub file: PathBuf,
    /// The pnn checkpoint folder to write (evaluate it with `pnn eval`, fine-tune it with
    /// `pnn train --resume`).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace --out if it exists.
    #[arg(long)]
    pub force: bool,
    /// The flags the file's model was built with, as `pnn train` takes them.
    #[command(flatten)]
    pub config: Config,
}

/// Writes a checkpoint's model under the reference's names; returns the file written.
pub fn run_export(args: &ExportArgs) -> Result<PathBuf> {
    let dir = checkpoint::resolve(&args.checkpoint)?;
    let device = Backend::parse("cpu")?.device;
    let (state, model) = checkpoint::open(&dir, &device)?;
    let out = match &args.out {
        Some(p) => p.clone(),
        None => with_extension(&dir, "safetensors"),
    };
    let tensors = export::state_dict(&model)?;
    let metadata = HashMap::from([
        // What safetensors.torch expects of a file it loads.
        ("format".to_string(), "pt".to_string()),
        ("pnn_version".to_string(), env!("CARGO_PKG_VERSION").to_string()),
        ("pnn_flags".to_string(), non_default_args(&state.config).join(" ")),
        ("epochs_done".to_string(), state.epochs_done.to_string()),
    ]);
    export::write_safetensors(&out, &tensors, metadata, None)?;
    println!(
        "{} tensors of {} written to {}",
        tensors.len(),
        dir.display(),
        out.display()
    );
    Ok(out)
}

/// Reads a PyTorch checkpoint into a new pnn checkpoint folder.
pub fn run_import(args: &ImportArgs) -> Result<()> {
    let config = args.config.clone().fold_opposites();
    config.validate()?;
    if args.out.exists() && !args.force {
        bail!(
            "{} exists: give another --out, or --force to replace it",
            args.out.display()
        );
    }
    let file = import::TorchFile::open(&args.file)?;
    // Built as training builds it, so that the checkpoint resumes like one of pnn's own.
    let device = Backend::parse("cpu")?.device.autodiff();
    device.seed(config.manual_seed);
    let geometry = match Geometry::of(&config) {
        Ok(g) => g,
        Err(_) => Geometry::of_set(&crate::data::load(&config)?.train)?,
    };
    let model = models::build_for(&config, geometry, &device)?;
    let (model, report) = import::load_into(model, &file, &args.file)?;
    let mut state = TrainState::new(&config);
    state.imported_from = Some(ImportedFrom {
        file: args.file.display().to_string(),
        sha256: checkpoint::sha256_file(&args.file)?,
    });
    checkpoint::save(&args.out, &model, &optim::build(&config), &state)?;
    println!(
        "{} tensors of {} imported into {}",
        report.loaded,
        args.file.display(),
        args.out.display()
    );
    if !report.kept.is_empty() {
        eprintln!(
            "note: {} has no noise for {} layers (the reference keeps noiseresnet18's noise outside its \
             state_dict, drawn at the first batch): those layers keep pnn's own, drawn from --manual-seed {}",
            args.file.display(),
            report.kept.len(),
            config.manual_seed
        );
    }
    Ok(())
}

/// `dir` with `.ext` appended to its last component.
fn with_extension(dir: &Path, ext: &str) -> PathBuf {
    let mut name = dir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "model".into());
    name.push(format!(".{ext}"));
    dir.with_file_name(name)
}
