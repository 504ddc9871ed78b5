//! How much memory a training run will need, measured before it starts: two probe steps at
//! small batch sizes, on copies of the model, give what a step holds at its peak as a fixed part
//! plus a part per image, and from those the peak at the run's batch size follows. A run that
//! would not fit stops with the largest batch size that would, instead of meeting the
//! out-of-memory killer hours later (or at once, with an unhelpful "Killed").
//!
//! It needs the program's allocator to be [`crate::allocator::Counting`] (the `pnn` command's
//! is) and the CPU backend, whose tensors live in that allocator's memory.

use anyhow::{Result, bail};
use burn::nn::loss::CrossEntropyLoss;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::optim;
use crate::allocator;
use crate::config::{Config, OptimMethod};
use crate::models::{self, Geometry, Net};

const MIB: f64 = 1024.0 * 1024.0;

/// Resident memory per byte of a step's live peak. mimalloc keeps freed memory for reuse (see
/// `allocator`), and tensors of many sizes fragment it: for perturb_resnet18 with 64 unique
/// masks and mix_maps at batch 64 the step's live peak was 2167 MiB as predicted (2123), while
/// the run's resident peak was 3475 MiB, about 1.37 times the step above what was live before.
const FRAGMENTATION: f64 = 1.4;

/// Batches the data loader holds besides the one in the step (its prefetch queue, the one being
/// assembled, and the one being turned into tensors).
const LOADER_BATCHES: usize = 6;

/// The probe's batch sizes. Two, so that the per-image part can be told from the fixed part;
/// at least 2, which BatchNorm needs. Far apart, because the slope is extrapolated to batches
/// of 64 and more: a step's peak moves by a scratch buffer or two with how rayon happened to
/// share the work between the threads, and with probes at 2 and 6 that moved resnet18's
/// estimate for batch 64 by 13% from one run to the next (`tests/memory.rs`; 2 and 10: 6%).
const PROBE_BATCHES: [usize; 2] = [2, 10];

/// The warm-up probe's batch: larger than the probes, so that what is allocated once and kept
/// (per-thread scratch of the matrix products, which a small batch may leave to one thread) is
/// made before the probes measure, not during one of them.
const WARM_UP_BATCH: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryEstimate {
    /// The process's resident memory before training starts: the data, the model, the program,
    /// and what the allocator kept from loading the data (which the step's tensors can reuse).
    pub resident: usize,
    /// Bytes allocated and not freed before training starts.
    pub live: usize,
    /// What a step adds at its peak, whatever the batch size (gradients, optimizer state, ...).
    pub fixed: usize,
    /// What a step adds per image of the batch.
    pub per_image: usize,
    /// What the data loader holds per image of the batch.
    pub loader_per_image: usize,
}

impl MemoryEstimate {
    /// Resident bytes at the peak of a training step at `batch` images: what is live, plus the
    /// step with the allocator's fragmentation, but no less than what the process holds now.
    pub fn total(&self, batch: usize) -> usize {
        let step = (FRAGMENTATION * self.step(batch) as f64) as usize;
        self.resident.max(self.live + step + self.loader_per_image * batch)
    }

    /// Bytes a training step at `batch` images adds at its peak.
    pub fn step(&self, batch: usize) -> usize {
        self.fixed + self.per_image * batch
    }

    /// The largest batch whose peak fits in `budget` bytes (0 when none does).
    pub fn largest_batch(&self, budget: usize) -> usize {
        if self.resident > budget {
            return 0;
        }
        let free = budget as f64 - self.live as f64 - FRAGMENTATION * self.fixed as f64;
        let per_image = FRAGMENTATION * self.per_image as f64 + self.loader_per_image as f64;
        if free <= 0.0 {
            0
        } else if per_image <= 0.0 {
            usize::MAX
        } else {
            (free / per_image) as usize
        }
    }
}

/// Measures the estimate with two probe steps on freshly built models of `config` (a clone of
/// the run's model would share its BatchNorm running statistics, which the probe would then
/// change). Call it after the run's model is built: it uses the random generator, which the
/// training loop reseeds at every step. `None` when the allocator does not count.
pub fn estimate(config: &Config, geometry: Geometry, device: &Device) -> Result<Option<MemoryEstimate>> {
    let Some(live) = allocator::live_bytes() else {
        return Ok(None);
    };
    // Live bytes alone put the estimate at 40-60% of the peak resident size of three runs: the
    // program's code and stacks count too, and for small models the peak is the data loading's.
    let resident = resident_bytes().map_or(live, |rss| rss.max(live));
    // The first steps of a process also allocate what is made once (thread pools, caches):
    // measured at batch 2, lenet's first probe held 2.5 MB, the next ones 1.9 MB. A warm-up
    // probe, larger than the measuring ones (`WARM_UP_BATCH`), keeps that out of the slope.
    step_peak(config, geometry, WARM_UP_BATCH, device)?;
    let mut peaks = [0usize; 2];
    for (peak, batch) in peaks.iter_mut().zip(PROBE_BATCHES) {
        *peak = step_peak(config, geometry, batch, device)?.unwrap_or(0);
    }
    let [b1, b2] = PROBE_BATCHES;
    let per_image = peaks[1].saturating_sub(peaks[0]) / (b2 - b1);
    let image_bytes = geometry.channels * geometry.input_size * geometry.input_size * std::mem::size_of::<f32>();
    Ok(Some(MemoryEstimate {
        resident,
        live,
        fixed: peaks[0].saturating_sub(per_image * b1),
        per_image,
        loader_per_image: LOADER_BATCHES * image_bytes,
    }))
}

/// Measures the bytes two training steps at `batch` images add at their peak, on a freshly
/// built model (`None` when the allocator does not count).
pub fn step_peak(config: &Config, geometry: Geometry, batch: usize, device: &Device) -> Result<Option<usize>> {
    let model = models::build_for(config, geometry, device)?;
    // The kernels' kept scratch from earlier steps would hide what this step needs.
    crate::ops::cpu::reused::release_all();
    let Some(before) = allocator::live_bytes() else {
        return Ok(None);
    };
    allocator::reset_peak();
    probe_steps(config, model, geometry, batch, device);
    Ok(allocator::peak_bytes().map(|peak| peak.saturating_sub(before)))
}

/// Two training steps (the second with the optimizer state the first created, as in a run)
/// on synthetic data; everything they allocate is dropped on return.
fn probe_steps(config: &Config, mut model: Net, geometry: Geometry, batch: usize, device: &Device) {
    let mut optimizer = optim::build(config);
    let loss_fn = CrossEntropyLoss::new(None, device);
    let side = geometry.input_size;
    for _ in 0..2 {
        let images = Tensor::<4>::from_data(
            TensorData::new(
                vec![0.5f32; batch * geometry.channels * side * side],
                [batch, geometry.channels, side, side],
            ),
            device,
        );
        let labels: Vec<i64> = (0..batch as i64).map(|i| i % geometry.num_classes as i64).collect();
        let labels = Tensor::<1, Int>::from_data(TensorData::new(labels, [batch]), device);
        let loss = loss_fn.forward(model.forward(images), labels);
        let _ = loss.clone().into_scalar::<f32>();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optimizer.step(config.learning_rate, model, grads);
    }
}

/// A "Key:   N kB" field of a /proc file's text (`/proc/self/status`, `/proc/meminfo`), in KiB.
fn kib_field(text: &str, key: &str) -> Option<usize> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A field of `/proc/self/status` (Linux), in bytes: `VmRSS:` now, `VmHWM:` at the peak.
pub fn process_status_bytes(key: &str) -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    Some(kib_field(&status, key)? * 1024)
}

/// The resident memory of this process now, in bytes.
pub fn resident_bytes() -> Option<usize> {
    process_status_bytes("VmRSS:")
}

/// Memory this process may still use, in bytes: what the system reports available (Linux's
/// MemAvailable), capped by a cgroup limit where there is one, plus what it holds already.
pub fn available_bytes() -> Option<usize> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let mut free = kib_field(&meminfo, "MemAvailable:")? * 1024;
    let cgroup = |file: &str| -> Option<usize> { std::fs::read_to_string(file).ok()?.trim().parse().ok() };
    if let (Some(max), Some(current)) = (
        cgroup("/sys/fs/cgroup/memory.max"),
        cgroup("/sys/fs/cgroup/memory.current"),
    ) {
        free = free.min(max.saturating_sub(current));
    }
    Some(free + resident_bytes().unwrap_or(0))
}

/// Refuses a run whose estimated peak exceeds `budget` bytes, naming the batch size that fits.
pub fn check(estimate: &MemoryEstimate, batch: usize, budget: usize, budget_source: &str) -> Result<()> {
    let need = estimate.total(batch);
    if need <= budget {
        return Ok(());
    }
    let fits = estimate.largest_batch(budget);
    let advice = if estimate.resident > budget {
        "the data and the model alone exceed it: train on fewer images (--train-subset, --test-subset) or a \
         smaller model (--nfilters, --nmasks), or give a larger --memory-budget"
            .to_string()
    } else if fits >= 2 {
        format!("use --batch-size {fits} (the largest that fits)")
    } else {
        "even a batch of 2 does not fit: use a smaller model (--nfilters, --nmasks) or a machine with more memory"
            .to_string()
    };
    bail!(
        "this configuration needs about {:.0} MiB at --batch-size {batch} (this process holds {:.0} MiB now; a training \
         step adds {:.0} MiB + {:.1} MiB per image, times {FRAGMENTATION} for the allocator's fragmentation, measured by probe steps at batch {} and {}), but {budget_source} is {:.0} MiB: \
         {advice}, or add --force to try anyway",
        need as f64 / MIB,
        estimate.resident as f64 / MIB,
        estimate.fixed as f64 / MIB,
        estimate.per_image as f64 / MIB,
        PROBE_BATCHES[0],
        PROBE_BATCHES[1],
        budget as f64 / MIB,
    )
}

/// Optimizer state per trained value: momentum for SGD and RMSprop with momentum, two moments
/// for Adam, the mean square for RMSprop.
pub fn optimizer_slots(config: &Config) -> usize {
    match config.optim_method {
        OptimMethod::Sgd => usize::from(config.momentum != 0.0),
        OptimMethod::Adam => 2,
        OptimMethod::RmsProp => 1 + usize::from(config.momentum != 0.0),
    }
}

/// Refuses, before the model is built, a configuration whose model alone (its values, and for
/// training their gradients and optimizer state) exceeds `budget` bytes. Counted from the
/// configuration's shapes ([`models::footprint`]), so that an absurd `--nfilters` is refused in
/// a second instead of being built until the kernel kills the process.
pub fn refuse_oversized(
    config: &Config,
    geometry: Geometry,
    budget: usize,
    source: &str,
    training: bool,
) -> Result<()> {
    let slots = optimizer_slots(config);
    let footprint = models::footprint::footprint(config, geometry)?;
    let bytes = |f: &models::footprint::Footprint| if training { f.bytes(slots) } else { 4.0 * f.values };
    let need = bytes(&footprint);
    if need <= budget as f64 {
        return Ok(());
    }
    // Room for the images' activations too: the model may take half.
    let half = budget as f64 / 2.0;
    let slots_for_search = if training { slots } else { 0 };
    let mut advice = match models::footprint::largest_nfilters(config, geometry, half, slots_for_search)? {
        Some(n) => format!("the largest --nfilters whose model takes at most half of it is {n}"),
        None => "even the smallest --nfilters does not fit".to_string(),
    };
    if config.nmasks > 1 {
        match models::footprint::largest_nmasks(config, geometry, half, slots_for_search)? {
            Some(m) => advice += &format!("; with --nfilters {}, the largest --nmasks is {m}", config.nfilters),
            None => advice += &format!("; with --nfilters {} not even 1 mask fits", config.nfilters),
        }
    }
    let what = if training {
        format!(
            "{:.3e} values, {:.3e} of them trained (each with a gradient and {slots} value(s) of optimizer state)",
            footprint.values, footprint.trainable
        )
    } else {
        format!("{:.3e} values", footprint.values)
    };
    bail!(
        "this model would take {:.1} GiB before its first image: {what}; but {source} is {:.1} GiB, and {advice}",
        need / GIB,
        budget as f64 / GIB
    )
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
