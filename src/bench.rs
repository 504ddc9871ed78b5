//! `pnn bench`: throughput of a configuration on synthetic data, measured side by side in one
//! run: the training step (forward, loss, backward, optimiser) and the data loader that feeds it
//! (normalisation and, where the data set has it, augmentation), with their ratio.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use burn::nn::loss::CrossEntropyLoss;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::{Config, DatasetName};
use crate::data::{ImageSet, Loader, Normalization, Order};
use crate::device::Backend;
use crate::models::{self, Geometry};
use crate::train::optim;
use crate::train::step::StepDevices;

#[derive(Debug, Clone)]
pub struct BenchResult {
    pub step_images_per_sec: f64,
    pub median_step_seconds: f64,
    /// The first step, which on a GPU also compiles every kernel and, in an autotuning build,
    /// tunes each new kernel shape (cached on disk: a second run is faster).
    pub first_step_seconds: f64,
    pub loader_images_per_sec: f64,
    pub peak_rss_mib: Option<f64>,
}

/// Peak resident memory of this process (Linux), in MiB.
pub fn peak_rss_mib() -> Option<f64> {
    crate::train::memory::process_status_bytes("VmHWM:").map(|bytes| bytes as f64 / (1024.0 * 1024.0))
}

fn synthetic_set(geometry: Geometry, n: usize) -> ImageSet {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let size = geometry.channels * geometry.input_size * geometry.input_size;
    ImageSet {
        images: (0..n * size).map(|_| rng.random()).collect(),
        labels: (0..n).map(|i| (i % geometry.num_classes) as u16).collect(),
        channels: geometry.channels,
        height: geometry.input_size,
        width: geometry.input_size,
        num_classes: geometry.num_classes,
    }
}

pub fn run(config: &Config, backend: &Backend, warmup: usize, steps: usize) -> Result<BenchResult> {
    let geometry = Geometry::of(config)?;
    let augment = matches!(config.dataset_train, DatasetName::Cifar10 | DatasetName::Cifar100);
    let norm = match geometry.channels {
        1 => Normalization::mnist(),
        c => Normalization {
            mean: vec![0.5; c],
            std: vec![0.5; c],
        },
    };
    let set = Arc::new(synthetic_set(geometry, config.batch_size * (warmup + steps).max(64)));
    let loader = Loader::new(set, norm, config.batch_size, Order::Shuffled { seed: 1 }).with_augmentation(augment);

    // Loader alone: a full pass over the synthetic set.
    let start = Instant::now();
    let loaded: usize = loader.epoch(1).map(|b| b.len()).sum();
    let loader_images_per_sec = loaded as f64 / start.elapsed().as_secs_f64();

    // Training steps on the loader's batches.
    let device = backend.device.clone().autodiff();
    device.seed(config.manual_seed);
    let mut model = models::build_for(config, geometry, &device)?;
    let mut optimizer = optim::build(config);
    let loss_fn = CrossEntropyLoss::new(None, &device);
    // The training loop's step: on every device of a data-parallel backend.
    let mut devices = StepDevices::new(config, geometry, &device, &backend.replicas)?;
    let mut times = Vec::new();
    let mut first_step_seconds = 0.0;
    for (i, batch) in loader.epoch(2).take(warmup + steps).enumerate() {
        let start = Instant::now();
        // Reads the loss back, so waits for the forward pass, as training does.
        let step = devices.forward_backward(&model, &batch, &loss_fn)?;
        model = optimizer.step(config.learning_rate, model, step.grads);
        for device in backend.devices() {
            device.sync()?;
        }
        let seconds = start.elapsed().as_secs_f64();
        if i == 0 {
            first_step_seconds = seconds;
        }
        if i >= warmup {
            times.push(seconds);
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    Ok(BenchResult {
        step_images_per_sec: config.batch_size as f64 / median,
        median_step_seconds: median,
        first_step_seconds,
        loader_images_per_sec,
        peak_rss_mib: peak_rss_mib(),
    })
}
