//! `pnn eval`: a checkpoint scored on a test set, as the training loop scores it every epoch
//! (the correct accuracy, and what the original code would have reported), with its per-class
//! accuracy and confusion matrix; or run on a batch given as a file, keeping the logits.

pub mod cli;
pub mod confusion;

use anyhow::{Result, anyhow};
use burn::module::Module;
use burn::nn::loss::CrossEntropyLoss;
use burn::tensor::{Int, Tensor, TensorData};

use crate::data::loader::Batch;
use crate::models::Net;
use crate::train::metrics::{EpochTotals, ReportedAccuracy};
use confusion::Confusion;

/// What one pass over some images gave.
pub struct Evaluation {
    /// Loss and correct count over every image (empty when no labels were given).
    pub totals: EpochTotals,
    /// The original code's smoothed accuracy after this one pass, starting from 0.
    pub reported: ReportedAccuracy,
    pub confusion: Confusion,
    /// Per image: its normalised pixels, label and logits, when asked to keep them.
    pub kept: Option<Outputs>,
}

/// A pass's inputs and outputs, image by image.
#[derive(Debug, Clone, Default)]
pub struct Outputs {
    /// [N, C, H, W] as the model saw them.
    pub inputs: Vec<f32>,
    pub input_shape: [usize; 4],
    pub labels: Vec<i64>,
    /// [N, classes].
    pub logits: Vec<f32>,
    pub classes: usize,
}

/// Runs `model` in evaluation mode over `batches` (labels < `classes`; a batch with no labels
/// is run but not scored). `batch_size` is the one the original code's running average counts
/// full batches of.
pub fn evaluate(
    model: &Net,
    batches: impl IntoIterator<Item = Batch>,
    classes: usize,
    batch_size: usize,
    keep: bool,
) -> Result<Evaluation> {
    let model = model.valid();
    let device = model
        .devices()
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("the model has no tensors"))?;
    let loss_fn = CrossEntropyLoss::new(None, &device);
    let mut totals = EpochTotals::default();
    let mut reported = ReportedAccuracy::default();
    let mut confusion = Confusion::new(classes);
    let mut kept = keep.then(Outputs::default);
    for batch in batches {
        let images = Tensor::<4>::from_data(TensorData::new(batch.images.clone(), batch.shape), &device);
        let logits = model.forward(images);
        let [n, k] = logits.dims();
        if k != classes {
            anyhow::bail!("the model gives {k} scores per image but {classes} classes were expected");
        }
        let values: Vec<f32> = logits
            .clone()
            .into_data()
            .try_to_vec()
            .map_err(|e| anyhow!("cannot read the logits: {e:?}"))?;
        if !batch.labels.is_empty() {
            let labels = Tensor::<1, Int>::from_data(TensorData::new(batch.labels.clone(), [n]), &device);
            let loss: f32 = loss_fn
                .forward(logits, labels)
                .into_data()
                .try_to_vec::<f32>()
                .map_err(|e| anyhow!("cannot read the loss: {e:?}"))?[0];
            let mut correct = 0;
            for (i, &label) in batch.labels.iter().enumerate() {
                let predicted = argmax(&values[i * k..(i + 1) * k]);
                confusion.add(label as usize, predicted);
                correct += usize::from(predicted == label as usize);
            }
            totals.add_batch(loss as f64, correct, n);
            reported.update(correct, n, batch_size);
        }
        if let Some(out) = &mut kept {
            out.inputs.extend_from_slice(&batch.images);
            let [_, c, h, w] = batch.shape;
            out.input_shape = [out.input_shape[0] + n, c, h, w];
            out.labels.extend_from_slice(&batch.labels);
            out.logits.extend(values);
            out.classes = k;
        }
    }
    Ok(Evaluation {
        totals,
        reported,
        confusion,
        kept,
    })
}

/// The index of the largest score (the first on ties, as `torch.argmax`).
pub fn argmax(scores: &[f32]) -> usize {
    let mut best = 0;
    for (i, &s) in scores.iter().enumerate() {
        if s > scores[best] {
            best = i;
        }
    }
    best
}
