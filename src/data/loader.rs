//! Batches for training and testing, prepared on a worker thread so that decoding and
//! normalisation overlap with the training step.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::augment;
use super::dataset::{ImageSet, Normalization};

/// Batches kept ready ahead of the training step.
const PREFETCH: usize = 4;

/// Visiting order of one epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// File order (the test set).
    Sequential,
    /// A fresh permutation each epoch, derived from the seed and the epoch number, so a resumed
    /// run sees the same order as an uninterrupted one.
    Shuffled { seed: u64 },
}

/// One batch, normalised, on the host.
#[derive(Debug, Clone)]
pub struct Batch {
    /// [len, C, H, W], channel-major.
    pub images: Vec<f32>,
    pub labels: Vec<i64>,
    pub shape: [usize; 4],
}

impl Batch {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The batch cut into `parts` consecutive pieces whose sizes differ by at most one (the
    /// larger first), as PyTorch's DataParallel scatters a batch over its devices.
    pub fn split(&self, parts: usize) -> Vec<Batch> {
        let parts = parts.clamp(1, self.len().max(1));
        let [n, c, h, w] = self.shape;
        let image = c * h * w;
        let (base, extra) = (n / parts, n % parts);
        let mut start = 0;
        (0..parts)
            .map(|i| {
                let len = base + usize::from(i < extra);
                let range = start..start + len;
                start += len;
                Batch {
                    images: self.images[range.start * image..range.end * image].to_vec(),
                    labels: self.labels[range].to_vec(),
                    shape: [len, c, h, w],
                }
            })
            .collect()
    }

    pub fn to_tensors(&self, device: &Device) -> (Tensor<4>, Tensor<1, Int>) {
        let images = Tensor::from_data(TensorData::new(self.images.clone(), self.shape), device);
        let labels = Tensor::from_data(TensorData::new(self.labels.clone(), [self.labels.len()]), device);
        (images, labels)
    }
}

#[derive(Debug, Clone)]
pub struct Loader {
    set: Arc<ImageSet>,
    norm: Normalization,
    batch_size: usize,
    order: Order,
    augment: bool,
}

impl Loader {
    pub fn new(set: Arc<ImageSet>, norm: Normalization, batch_size: usize, order: Order) -> Self {
        assert!(batch_size > 0, "batch size is validated to be positive");
        Self {
            set,
            norm,
            batch_size,
            order,
            augment: false,
        }
    }

    /// Random crop (4-pixel zero padding) and horizontal flip of every image, drawn from a
    /// generator seeded by (seed, epoch, batch), so the result does not depend on threads.
    pub fn with_augmentation(mut self, augment: bool) -> Self {
        self.augment = augment;
        self
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    pub fn num_batches(&self) -> usize {
        self.set.len().div_ceil(self.batch_size)
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Image indices of `epoch`, in visiting order.
    pub fn indices(&self, epoch: usize) -> Vec<usize> {
        let mut indices: Vec<usize> = (0..self.set.len()).collect();
        if let Order::Shuffled { seed } = self.order {
            let mut rng = ChaCha8Rng::seed_from_u64(epoch_seed(seed, epoch));
            indices.shuffle(&mut rng);
        }
        indices
    }

    /// The batches of `epoch`, produced by a worker thread a few batches ahead.
    pub fn epoch(&self, epoch: usize) -> BatchIter {
        self.epoch_from(epoch, 0)
    }

    /// The batches of `epoch` from batch `first` on: the same batches, identically augmented,
    /// as the later part of [`Self::epoch`] (for resuming a run stopped mid-epoch).
    pub fn epoch_from(&self, epoch: usize, first: usize) -> BatchIter {
        let (tx, rx) = sync_channel(PREFETCH);
        let indices = self.indices(epoch);
        let (set, norm, batch_size) = (self.set.clone(), self.norm.clone(), self.batch_size);
        let augment_seed = match (self.augment, self.order) {
            (true, Order::Shuffled { seed }) => Some(epoch_seed(seed ^ AUGMENT_STREAM, epoch)),
            (true, Order::Sequential) => Some(epoch_seed(AUGMENT_STREAM, epoch)),
            (false, _) => None,
        };
        let worker = std::thread::spawn(move || {
            for (b, chunk) in indices.chunks(batch_size).enumerate().skip(first) {
                let mut rng = augment_seed.map(|s| ChaCha8Rng::seed_from_u64(epoch_seed(s, b)));
                if tx.send(make_batch(&set, &norm, chunk, rng.as_mut())).is_err() {
                    return; // the consumer stopped early
                }
            }
        });
        BatchIter {
            rx,
            worker: Some(worker),
        }
    }
}

pub struct BatchIter {
    rx: Receiver<Batch>,
    worker: Option<JoinHandle<()>>,
}

impl Iterator for BatchIter {
    type Item = Batch;
    fn next(&mut self) -> Option<Batch> {
        match self.rx.recv() {
            Ok(batch) => Some(batch),
            Err(_) => {
                if let Some(worker) = self.worker.take() {
                    // A worker panic is a bug in batch assembly: surface it rather than end quietly.
                    if let Err(panic) = worker.join() {
                        std::panic::resume_unwind(panic);
                    }
                }
                None
            }
        }
    }
}

/// Separates the augmentation random stream from the shuffling one.
const AUGMENT_STREAM: u64 = 0xA06_0E27;

/// Assembles one batch: optional augmentation, then normalisation.
pub fn make_batch(set: &ImageSet, norm: &Normalization, indices: &[usize], mut rng: Option<&mut ChaCha8Rng>) -> Batch {
    let n = set.image_len();
    let mut images = vec![0f32; indices.len() * n];
    let mut augmented = vec![0u8; n];
    for (slot, &i) in indices.iter().enumerate() {
        let image = match rng.as_deref_mut() {
            Some(rng) => {
                augment::random_crop_flip(set.image(i), set.channels, set.height, set.width, rng, &mut augmented);
                &augmented[..]
            }
            None => set.image(i),
        };
        norm.apply(image, set.channels, &mut images[slot * n..(slot + 1) * n]);
    }
    Batch {
        images,
        labels: indices.iter().map(|&i| set.labels[i] as i64).collect(),
        shape: [indices.len(), set.channels, set.height, set.width],
    }
}

/// A seed per (run seed, epoch), well mixed so neighbouring epochs are unrelated (SplitMix64).
pub fn epoch_seed(seed: u64, epoch: usize) -> u64 {
    let mut z = seed.wrapping_add((epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
