//! What every loader target does with a set that parsed: the steps training takes with it next
//! (geometry, a subset, an augmented and normalised batch), so that a set the parser accepts but
//! the pipeline cannot use is found too.

use pnn::data::loader::make_batch;
use pnn::data::{ImageSet, Normalization};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

pub fn use_set(set: ImageSet) {
    let _ = pnn::models::Geometry::of_set(&set);
    let norm = Normalization::half(set.channels);
    let indices: Vec<usize> = (0..set.len().min(4)).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let batch = make_batch(&set, &norm, &indices, Some(&mut rng));
    assert_eq!(batch.images.len(), indices.len() * set.image_len());
    assert!(batch.labels.iter().all(|&l| (l as usize) < set.num_classes));
    let _ = set.subset(2, 7);
}
