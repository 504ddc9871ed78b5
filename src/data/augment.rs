//! Training augmentation as the reference's CIFAR pipeline: random crop to the original size from
//! the image padded with 4 zero pixels on each side, then a random horizontal flip (p = 0.5).
//! Works on u8 channel-major images; normalisation follows.

use rand::Rng;

/// Zero padding of the random crop, in pixels.
pub const CROP_PADDING: usize = 4;

/// Writes an augmented copy of `image` ([C, H, W] u8) into `out`.
pub fn random_crop_flip(
    image: &[u8],
    channels: usize,
    height: usize,
    width: usize,
    rng: &mut impl Rng,
    out: &mut [u8],
) {
    let pad = CROP_PADDING as isize;
    // Offset of the crop window in the padded image, 0..=2*pad, relative to the original.
    let dy = rng.random_range(0..=2 * CROP_PADDING) as isize - pad;
    let dx = rng.random_range(0..=2 * CROP_PADDING) as isize - pad;
    let flip = rng.random_bool(0.5);
    let (h, w) = (height as isize, width as isize);
    for c in 0..channels {
        let src = &image[c * height * width..(c + 1) * height * width];
        let dst = &mut out[c * height * width..(c + 1) * height * width];
        for y in 0..h {
            let sy = y + dy;
            for x in 0..w {
                let sx = if flip { w - 1 - x } else { x } + dx;
                dst[(y * w + x) as usize] = if (0..h).contains(&sy) && (0..w).contains(&sx) {
                    src[(sy * w + sx) as usize]
                } else {
                    0
                };
            }
        }
    }
}
