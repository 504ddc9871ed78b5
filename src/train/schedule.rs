//! The reference's step learning-rate schedules, by training set.

use crate::config::{Code, DatasetName};

/// Learning rate for an epoch. The reference calls its schedule with `epoch + 1` for the
/// 0-based epoch it is about to train; `epoch_plus_one` is that number. The paper authors'
/// update (`--code update`) changed CIFAR-10's milestones for its 450-epoch runs.
pub fn learning_rate(base: f64, dataset: DatasetName, code: Code, epoch_plus_one: usize) -> f64 {
    let (factor, milestones): (f64, &[usize]) = match dataset {
        DatasetName::Mnist | DatasetName::FashionMnist => (0.2, &[30, 60, 90]),
        DatasetName::Cifar10 if code == Code::Update => (0.2, &[150, 250, 300, 350, 400]),
        DatasetName::Cifar10 => (0.2, &[60, 90, 120, 160]),
        // Image folders: the reference has no schedule for them (it crashes); use the one it
        // gives its other image sets (CIFAR-100, FRGC).
        DatasetName::Cifar100 | DatasetName::Folder => (0.1, &[80, 120, 160]),
    };
    let steps = milestones.iter().filter(|&&m| epoch_plus_one >= m).count();
    base * factor.powi(steps as i32)
}
