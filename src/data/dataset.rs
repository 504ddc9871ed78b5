//! A labelled image set held in memory as bytes, channel-major, and its normalisation.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// Images as u8, laid out [N, C, H, W], with one label each.
#[derive(Debug, Clone)]
pub struct ImageSet {
    pub images: Vec<u8>,
    pub labels: Vec<u16>,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub num_classes: usize,
}

impl ImageSet {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    pub fn image(&self, index: usize) -> &[u8] {
        let n = self.image_len();
        &self.images[index * n..(index + 1) * n]
    }

    /// `n` images drawn at random (without replacement, reproducibly from `seed`), kept in file
    /// order; all of them when `n` is at least the size of the set. A random draw rather than
    /// the first `n`, because image folders are stored class by class.
    pub fn subset(self, n: usize, seed: u64) -> Self {
        if n >= self.len() {
            return self;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut indices = rand::seq::index::sample(&mut rng, self.len(), n).into_vec();
        indices.sort_unstable();
        self.gather(&indices)
    }

    /// All images in a fixed random order (reproducible from `seed`).
    pub fn permuted(self, seed: u64) -> Self {
        let mut indices: Vec<usize> = (0..self.len()).collect();
        indices.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        self.gather(&indices)
    }

    /// The images at `indices`, in that order.
    fn gather(self, indices: &[usize]) -> Self {
        let mut images = Vec::with_capacity(indices.len() * self.image_len());
        for &i in indices {
            images.extend_from_slice(self.image(i));
        }
        let labels = indices.iter().map(|&i| self.labels[i]).collect();
        Self { images, labels, ..self }
    }
}

/// Per-channel mean and standard deviation, applied to pixel/255 as torchvision's Normalize.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalization {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Normalization {
    /// The reference's MNIST normalisation.
    pub fn mnist() -> Self {
        Self {
            mean: vec![0.1307],
            std: vec![0.3081],
        }
    }

    /// The reference's normalisation of image folders: mean 0.5, std 0.5 per channel.
    pub fn half(channels: usize) -> Self {
        Self {
            mean: vec![0.5; channels],
            std: vec![0.5; channels],
        }
    }

    /// The reference's CIFAR normalisation.
    pub fn cifar() -> Self {
        Self {
            mean: vec![0.4914, 0.4822, 0.4465],
            std: vec![0.2023, 0.1994, 0.2010],
        }
    }

    /// Writes the normalised image into `out` (same length, channel-major).
    pub fn apply(&self, image: &[u8], channels: usize, out: &mut [f32]) {
        let plane = image.len() / channels;
        for c in 0..channels {
            let (mean, std) = (self.mean[c], self.std[c]);
            let src = &image[c * plane..(c + 1) * plane];
            let dst = &mut out[c * plane..(c + 1) * plane];
            for (d, &p) in dst.iter_mut().zip(src) {
                *d = (p as f32 / 255.0 - mean) / std;
            }
        }
    }
}
