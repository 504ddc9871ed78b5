//! Gradient sums split by samples: the batch is cut into one contiguous block of samples per
//! thread, each thread adds its samples' contributions into its own partial sums, and the
//! partial sums are added at the end. One set of partial sums per thread, not one per rayon task:
//! with unique trainable masks one set is C x M x H x W floats.

use std::ops::AddAssign;

/// Samples per block, so that `n` samples make one block per thread of rayon's pool.
pub fn block_len(n: usize) -> usize {
    n.div_ceil(rayon::current_num_threads()).max(1)
}

/// `a + b`, element by element, reusing `a`: the reduction of per-block partial sums.
pub fn add_vectors<T: AddAssign + Copy>(mut a: Vec<T>, b: Vec<T>) -> Vec<T> {
    a.iter_mut().zip(&b).for_each(|(a, &b)| *a += b);
    a
}
