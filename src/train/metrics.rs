//! Accuracy, measured correctly, and the accuracy the original PNN code would have reported.
//!
//! The original code's monitor smoothed per-batch test accuracy with `v = 0.7 * v + 0.3 * batch`,
//! starting once from 0 and never reset between epochs, and reported that as test accuracy. We
//! report the correct figure (correct / total over the whole test set) and, beside it, this
//! smoothed value, so the difference can be seen.

use serde::{Deserialize, Serialize};

/// Weight of the previous value in the original monitor's smoothing.
pub const REPORTED_DECAY: f64 = 0.7;

/// Sums over one pass of a data set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochTotals {
    pub loss_sum: f64,
    pub correct: usize,
    pub total: usize,
}

impl EpochTotals {
    /// Adds a batch: its mean loss, its number of correct predictions and its size.
    pub fn add_batch(&mut self, mean_loss: f64, correct: usize, len: usize) {
        self.loss_sum += mean_loss * len as f64;
        self.correct += correct;
        self.total += len;
    }

    /// Mean loss per sample.
    pub fn loss(&self) -> f64 {
        if self.total == 0 {
            f64::NAN
        } else {
            self.loss_sum / self.total as f64
        }
    }

    /// Accuracy in percent: correct / total.
    pub fn accuracy(&self) -> f64 {
        if self.total == 0 {
            f64::NAN
        } else {
            100.0 * self.correct as f64 / self.total as f64
        }
    }
}

/// The original code's smoothed "test accuracy".
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ReportedAccuracy {
    pub value: f64,
}

impl ReportedAccuracy {
    /// Folds in one test batch (in loader order). Only full batches count, as in the original,
    /// whose monitor skipped a short last batch.
    pub fn update(&mut self, correct: usize, len: usize, batch_size: usize) {
        if len == batch_size && len > 0 {
            let batch_acc = 100.0 * correct as f64 / len as f64;
            self.value = REPORTED_DECAY * self.value + (1.0 - REPORTED_DECAY) * batch_acc;
        }
    }
}

/// One line of `metrics.csv` / `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub learning_rate: f64,
    pub train_loss: f64,
    /// Percent, correct / total over the epoch's training batches.
    pub train_acc: f64,
    pub test_loss: f64,
    /// Percent, correct / total over the whole test set.
    pub test_acc: f64,
    /// Percent, what the original PNN code would have reported after this epoch.
    pub test_acc_reported: f64,
    pub epoch_seconds: f64,
    pub train_images_per_sec: f64,
}

/// The highest value of `metric` over `history`, with its epoch (the earliest on ties).
pub fn best_by(history: &[EpochRecord], metric: impl Fn(&EpochRecord) -> f64) -> Option<(f64, usize)> {
    history
        .iter()
        .map(|r| (metric(r), r.epoch))
        .fold(None, |best, (acc, ep)| match best {
            Some((b, _)) if b >= acc => best,
            _ => Some((acc, ep)),
        })
}
