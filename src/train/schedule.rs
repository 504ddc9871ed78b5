//! The reference's step learning-rate schedules, by training set.

use crate::config::DatasetName;

/// Learning rate for an epoch. The reference calls its schedule with `epoch + 1` for the
/// 0-based epoch it is about to train; `epoch_plus_one` is that number.
pub fn learning_rate(base: f64, dataset: DatasetName, epoch_plus_one: usize) -> f64 {
    let (factor, milestones): (f64, &[usize]) = match dataset {
        DatasetName::Mnist | DatasetName::FashionMnist => (0.2, &[30, 60, 90]),
        DatasetName::Cifar10 => (0.2, &[60, 90, 120, 160]),
        // Image folders: the reference has no schedule for them (it crashes); use the one it
        // gives its other image sets (CIFAR-100, FRGC).
        DatasetName::Cifar100 | DatasetName::Folder => (0.1, &[80, 120, 160]),
    };
    let steps = milestones.iter().filter(|&&m| epoch_plus_one >= m).count();
    base * factor.powi(steps as i32)
}
