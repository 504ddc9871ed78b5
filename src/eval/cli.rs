//! `pnn eval`: its flags, what it prints and the files it writes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use safetensors::{Dtype, SafeTensors};
use serde::Serialize;

use super::{Evaluation, Outputs, evaluate};
use crate::config::{Config, DatasetName};
use crate::data::{self, Batch, Loader, Order};
use crate::device::Backend;
use crate::interop::export::{TorchTensor, write_safetensors};
use crate::models::{Geometry, Net};
use crate::report::flags::non_default_args;
use crate::train::checkpoint;
use crate::train::files::write_atomic;

#[derive(Debug, Clone, Args)]
pub struct EvalArgs {
    /// A checkpoint folder (pnn's, or one written by `pnn import`), or a run folder (its
    /// checkpoint-last).
    pub checkpoint: PathBuf,
    /// Test set [default: the checkpoint's].
    #[arg(long = "dataset-test", alias = "dataset_test", value_enum, ignore_case = true)]
    pub dataset_test: Option<DatasetName>,
    /// Folder holding the data files [default: the checkpoint's].
    #[arg(long)]
    pub dataroot: Option<PathBuf>,
    /// Evaluate a fixed random subset of N test images (the one `pnn train --test-subset N` uses).
    #[arg(long = "test-subset", alias = "test_subset")]
    pub test_subset: Option<usize>,
    /// Batch size, which the original code's running average counts batches of [default: the
    /// checkpoint's].
    #[arg(long = "batch-size", alias = "batch_size")]
    pub batch_size: Option<usize>,
    /// Never download the test set.
    #[arg(long = "no-download", alias = "no_download")]
    pub no_download: bool,
    /// Run on images given as a safetensors file instead of a test set: `inputs`, float32
    /// [N, C, H, W], normalised as the model expects, and optionally `labels` [N] (integers).
    #[arg(long)]
    pub inputs: Option<PathBuf>,
    /// Write the images evaluated, their labels and the model's logits to this safetensors file
    /// (`inputs`, `labels`, `logits`).
    #[arg(long = "save-outputs", alias = "save_outputs")]
    pub save_outputs: Option<PathBuf>,
    /// Folder for eval.json, per-class.csv, confusion.csv and confusion.png/.svg [default: the
    /// checkpoint folder's path with -eval added].
    #[arg(long, short)]
    pub out: Option<PathBuf>,
    /// auto (a GPU if this pnn was built with one and one answers, else the CPU), cpu,
    /// vulkan[:N], cuda[:N] or wgpu[:N].
    #[arg(long, default_value = "auto")]
    pub device: String,
}

/// `eval.json`: an evaluation with what it evaluated.
#[derive(Serialize)]
struct EvalRecord<'a> {
    checkpoint: String,
    /// The checkpoint's `pnn train` flags (those differing from the defaults).
    flags: String,
    epochs_done: usize,
    /// The test set, or the file of images.
    images: String,
    test_subset: Option<usize>,
    batch_size: usize,
    total: usize,
    correct: usize,
    /// Percent.
    accuracy: f64,
    /// Percent: the original code's running average after this one pass.
    accuracy_reported_by_original_code: f64,
    loss: f64,
    per_class_accuracy: Vec<Option<f64>>,
    confusion: &'a [Vec<usize>],
}

pub fn run(args: &EvalArgs) -> Result<Vec<PathBuf>> {
    let dir = checkpoint::resolve(&args.checkpoint)?;
    let backend = Backend::parse(&args.device)?;
    let (state, model) = checkpoint::open(&dir, &backend.device)?;
    let mut config = state.config.clone();
    if let Some(d) = args.dataset_test {
        config.dataset_test = d;
    }
    if let Some(root) = &args.dataroot {
        config.dataroot = root.clone();
    }
    if let Some(n) = args.batch_size {
        if n == 0 {
            bail!("--batch-size must be at least 1");
        }
        config.batch_size = n;
    }
    config.test_subset = args.test_subset.or(config.test_subset);
    config.download &= !args.no_download;
    let classes = classes_of(&config, &model)?;
    let (evaluation, images) = match &args.inputs {
        Some(file) => (
            evaluate_file(&model, file, &config, classes, args.save_outputs.is_some())?,
            file.display().to_string(),
        ),
        None => {
            let data = data::load(&config)?;
            let loader = Loader::new(
                Arc::new(data.test),
                data.normalization,
                config.batch_size,
                Order::Sequential,
            );
            let batches = loader.epoch(0);
            let name = format!(
                "{} test set in {}",
                Config::value_name(&config.dataset_test),
                config.dataroot.display()
            );
            (
                evaluate(&model, batches, classes, config.batch_size, args.save_outputs.is_some())?,
                name,
            )
        }
    };
    let mut written = Vec::new();
    if let (Some(path), Some(kept)) = (&args.save_outputs, &evaluation.kept) {
        save_outputs(path, kept)?;
        written.push(path.clone());
    }
    if evaluation.totals.total == 0 {
        println!(
            "{} images run through {}: no labels, so no accuracy",
            count_of(&evaluation),
            dir.display()
        );
        return Ok(written);
    }
    print_evaluation(&evaluation, &images);
    let out = args.out.clone().unwrap_or_else(|| {
        let mut name = dir.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        name.push("-eval");
        dir.with_file_name(name)
    });
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let m = &evaluation.confusion;
    let record = EvalRecord {
        checkpoint: dir.display().to_string(),
        flags: non_default_args(&state.config).join(" "),
        epochs_done: state.epochs_done,
        images,
        test_subset: config.test_subset.filter(|_| args.inputs.is_none()),
        batch_size: config.batch_size,
        total: evaluation.totals.total,
        correct: evaluation.totals.correct,
        accuracy: evaluation.totals.accuracy(),
        accuracy_reported_by_original_code: evaluation.reported.value,
        loss: evaluation.totals.loss(),
        per_class_accuracy: (0..m.classes()).map(|c| m.class_accuracy(c)).collect(),
        confusion: &m.counts,
    };
    for (name, text) in [
        ("eval.json", serde_json::to_string_pretty(&record)? + "\n"),
        ("per-class.csv", m.per_class_csv()),
        ("confusion.csv", m.matrix_csv()),
    ] {
        let path = out.join(name);
        write_atomic(&path, text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
    }
    let title = format!("{}: {:.2}% correct", dir.display(), evaluation.totals.accuracy());
    written.extend(m.draw(&out.join("confusion"), &title)?);
    Ok(written)
}

fn count_of(e: &Evaluation) -> usize {
    e.kept.as_ref().map_or(0, |k| k.input_shape[0])
}

fn print_evaluation(e: &Evaluation, images: &str) {
    let t = &e.totals;
    println!("{images}: {} images", t.total);
    println!(
        "  accuracy:          {:.2}% ({} of {})",
        t.accuracy(),
        t.correct,
        t.total
    );
    println!(
        "  reported accuracy: {:.2}% (the original code's running average over this pass's batches)",
        e.reported.value
    );
    println!("  loss:              {:.4}", t.loss());
    let m = &e.confusion;
    println!("per class (accuracy, images):");
    for c in 0..m.classes() {
        let acc = m.class_accuracy(c).map_or("-".to_string(), |a| format!("{a:.2}%"));
        println!("  {c:>4}  {acc:>8}  {}", m.support(c));
    }
    if m.classes() <= 20 {
        println!("confusion matrix:");
        print!("{}", m.matrix_text());
    }
}

/// The number of classes the model scores.
fn classes_of(config: &Config, model: &Net) -> Result<usize> {
    if let Some(n) = config.dataset_train.num_classes() {
        return Ok(n);
    }
    // An image folder: the output layer says.
    let table = crate::interop::names::table(model);
    let last = table.last().ok_or_else(|| anyhow!("the model has no tensors"))?;
    let shapes = crate::interop::export::state_dict(model)?;
    Ok(shapes[&last.keys[0]].shape[0])
}

/// Evaluates the images of a safetensors file (`inputs`, and optionally `labels`).
fn evaluate_file(model: &Net, file: &Path, config: &Config, classes: usize, keep: bool) -> Result<Evaluation> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| {
        anyhow!(
            "{} is not a safetensors file ({e}): write one with safetensors.torch.save_file",
            file.display()
        )
    })?;
    let inputs = st.tensor("inputs").map_err(|_| {
        anyhow!(
            "{} has no tensor named `inputs` (float32, [N, C, H, W])",
            file.display()
        )
    })?;
    let shape: [usize; 4] = inputs.shape().try_into().map_err(|_| {
        anyhow!(
            "{}: `inputs` has shape {:?}; it must be [N, C, H, W]",
            file.display(),
            inputs.shape()
        )
    })?;
    if inputs.dtype() != Dtype::F32 {
        bail!(
            "{}: `inputs` is {:?}; it must be float32",
            file.display(),
            inputs.dtype()
        );
    }
    let geometry = Geometry::of(config).ok();
    if let Some(g) = geometry
        && (shape[1], shape[2], shape[3]) != (g.channels, g.input_size, g.input_size)
    {
        bail!(
            "{}: `inputs` are {}x{}x{} images but the model takes {}x{}x{}",
            file.display(),
            shape[1],
            shape[2],
            shape[3],
            g.channels,
            g.input_size,
            g.input_size
        );
    }
    let pixels: Vec<f32> = inputs
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let labels: Vec<i64> = match st.tensor("labels") {
        Err(_) => Vec::new(),
        Ok(t) => {
            let values: Vec<i64> = match t.dtype() {
                Dtype::I64 => t
                    .data()
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().expect("8")))
                    .collect(),
                Dtype::I32 => t
                    .data()
                    .chunks_exact(4)
                    .map(|b| i32::from_le_bytes(b.try_into().expect("4")) as i64)
                    .collect(),
                other => bail!("{}: `labels` is {other:?}; it must be int64 or int32", file.display()),
            };
            if values.len() != shape[0] {
                bail!("{}: {} labels for {} images", file.display(), values.len(), shape[0]);
            }
            if let Some(bad) = values.iter().find(|&&l| l < 0 || l as usize >= classes) {
                bail!(
                    "{}: label {bad} is not one of the model's {classes} classes",
                    file.display()
                );
            }
            values
        }
    };
    let image = shape[1] * shape[2] * shape[3];
    let step = config.batch_size.max(1);
    let batches = (0..shape[0]).step_by(step).map(|start| {
        let end = (start + step).min(shape[0]);
        Batch {
            images: pixels[start * image..end * image].to_vec(),
            labels: if labels.is_empty() {
                Vec::new()
            } else {
                labels[start..end].to_vec()
            },
            shape: [end - start, shape[1], shape[2], shape[3]],
        }
    });
    evaluate(model, batches, classes, config.batch_size, keep)
}

fn save_outputs(path: &Path, kept: &Outputs) -> Result<()> {
    let n = kept.input_shape[0];
    let mut tensors = std::collections::BTreeMap::new();
    tensors.insert(
        "inputs".to_string(),
        TorchTensor {
            shape: kept.input_shape.to_vec(),
            values: kept.inputs.clone(),
        },
    );
    tensors.insert(
        "logits".to_string(),
        TorchTensor {
            shape: vec![n, kept.classes],
            values: kept.logits.clone(),
        },
    );
    let labels = (!kept.labels.is_empty()).then(|| kept.labels.clone());
    write_safetensors(path, &tensors, Default::default(), labels.as_deref())
}
