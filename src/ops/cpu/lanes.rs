//! Small vector loops written so that the compiler vectorises them: sums are kept in LANES
//! independent accumulators (a plain `iter().sum()` of f32 is one serial chain of additions,
//! which the compiler may not reorder). All are `inline(always)`, so that they take on the
//! SIMD features of the multiversioned kernel that calls them.

/// Independent accumulators of a sum: enough for the compiler to fill SIMD registers.
pub const LANES: usize = 16;

/// `a . b`, summed in LANES independent accumulators.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (ca, cb) in ac.zip(bc) {
        for k in 0..LANES {
            acc[k] += ca[k] * cb[k];
        }
    }
    let tail: f32 = ar.iter().zip(br).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// The sum of `a`, in LANES independent accumulators.
#[inline(always)]
pub fn sum(a: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = a.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for k in 0..LANES {
            acc[k] += c[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `y += alpha * x`.
#[inline(always)]
pub fn axpy(y: &mut [f32], alpha: f32, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += alpha * x;
    }
}

/// `sum (a - c)^2`.
#[inline(always)]
pub fn sum_sq_dev(a: &[f32], c: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = a.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().map(|v| (v - c) * (v - c)).sum();
    for ch in chunks {
        for k in 0..LANES {
            let d = ch[k] - c;
            acc[k] += d * d;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `sum a (b - c)`.
#[inline(always)]
pub fn dot_centered(a: &[f32], b: &[f32], c: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * (y - c))
        .sum();
    for (ca, cb) in ac.zip(bc) {
        for k in 0..LANES {
            acc[k] += ca[k] * (cb[k] - c);
        }
    }
    acc.iter().sum::<f32>() + tail
}
