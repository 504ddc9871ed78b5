//! The channels-last, padded maps the transforms read and write, and the conversions from and
//! to burn's [N, C, H, W].

use super::Tiles;

/// Padded channels-last maps: [n, HP, WP, C], each map placed at (`top`, `top`) with zeros
/// around it, up to whole tiles.
pub struct Padded {
    pub hp: usize,
    pub wp: usize,
    pub top: usize,
}

impl Padded {
    /// The input maps of a convolution: one row and column of zeros above and to the left,
    /// zeros below and to the right up to the last tile's 6x6 patch (tiles are 4 apart).
    pub fn input(g: &Tiles) -> Self {
        Self {
            hp: 4 * g.th() + 2,
            wp: 4 * g.tw() + 2,
            top: 1,
        }
    }

    /// The output maps and their gradient: 4x4 pixels to a tile, none shared, zeros past the
    /// map's edge.
    pub fn output(g: &Tiles) -> Self {
        Self {
            hp: 4 * g.th(),
            wp: 4 * g.tw(),
            top: 0,
        }
    }

    /// Values in `n` padded maps of `ch` channels.
    pub fn len(&self, n: usize, ch: usize) -> usize {
        n * self.hp * self.wp * ch
    }

    /// Writes the block's maps x [n, ch, H, W] into their places in `dst`, and zeros around
    /// them.
    pub fn fill(&self, g: &Tiles, ch: usize, x: &[f32], dst: &mut [f32]) {
        let plane = g.h * g.w;
        let (row_len, left, right) = (self.wp * ch, self.top * ch, (self.top + g.w) * ch);
        for n in 0..g.n {
            let map = &mut dst[n * self.hp * row_len..][..self.hp * row_len];
            for (r, row) in map.chunks_exact_mut(row_len).enumerate() {
                if r < self.top || r >= self.top + g.h {
                    row.fill(0.0);
                } else {
                    row[..left].fill(0.0);
                    row[right..].fill(0.0);
                }
            }
            for y in 0..g.h {
                let row = ((n * self.hp + y + self.top) * self.wp + self.top) * ch;
                // Channels x pixels of one map row -> pixels x channels.
                transpose(&x[n * ch * plane + y * g.w..], plane, &mut dst[row..], ch, ch, g.w);
            }
        }
    }

    /// The block's maps x [n, ch, H, W] read back from their places in `src`.
    pub fn crop(&self, g: &Tiles, ch: usize, src: &[f32], x: &mut [f32]) {
        let plane = g.h * g.w;
        for n in 0..g.n {
            for y in 0..g.h {
                let row = ((n * self.hp + y + self.top) * self.wp + self.top) * ch;
                transpose(&src[row..], ch, &mut x[n * ch * plane + y * g.w..], plane, g.w, ch);
            }
        }
    }
}

/// dst[j][i] = src[i][j] for i < rows, j < cols (row strides `rs` and `ds`), in 8x8 blocks so
/// that both sides are read and written eight values at a time. A size that is not a multiple
/// of 8 ends in a block that overlaps the one before it (its values are written twice, the same).
fn transpose(src: &[f32], rs: usize, dst: &mut [f32], ds: usize, rows: usize, cols: usize) {
    const B: usize = 8;
    if rows < B || cols < B {
        for i in 0..rows {
            for j in 0..cols {
                dst[j * ds + i] = src[i * rs + j];
            }
        }
        return;
    }
    // Every block lies inside both slices: checked once for the last one.
    assert!(src.len() > (rows - 1) * rs + cols - 1 && dst.len() > (cols - 1) * ds + rows - 1);
    let starts = |n: usize| (0..=n - B).step_by(B).chain((!n.is_multiple_of(B)).then_some(n - B));
    #[cfg(target_arch = "x86_64")]
    let avx = std::is_x86_feature_detected!("avx");
    for r0 in starts(rows) {
        for c0 in starts(cols) {
            let (from, to) = (r0 * rs + c0, c0 * ds + r0);
            #[cfg(target_arch = "x86_64")]
            if avx {
                // SAFETY: the CPU has AVX; the block lies inside both slices (asserted above).
                unsafe { avx::transpose8(src[from..].as_ptr(), rs, dst[to..].as_mut_ptr(), ds) };
                continue;
            }
            transpose8(&src[from..], rs, &mut dst[to..], ds);
        }
    }
}

/// One 8x8 block, portably (the compiler makes it scalar moves; see [`avx::transpose8`]).
fn transpose8(src: &[f32], rs: usize, dst: &mut [f32], ds: usize) {
    for i in 0..8 {
        for j in 0..8 {
            dst[j * ds + i] = src[i * rs + j];
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use std::arch::x86_64::*;

    /// One 8x8 block in eight registers: pairs of rows interleaved, then pairs of pairs, then
    /// the 128-bit halves exchanged.
    ///
    /// # Safety
    /// The CPU must have AVX; `src` must address 8 rows of 8 floats `rs` apart, `dst` 8 rows
    /// `ds` apart.
    #[target_feature(enable = "avx")]
    pub unsafe fn transpose8(src: *const f32, rs: usize, dst: *mut f32, ds: usize) {
        // SAFETY: the rows are the caller's promise.
        let r: [__m256; 8] = std::array::from_fn(|i| unsafe { _mm256_loadu_ps(src.add(i * rs)) });
        let t = [
            _mm256_unpacklo_ps(r[0], r[1]),
            _mm256_unpackhi_ps(r[0], r[1]),
            _mm256_unpacklo_ps(r[2], r[3]),
            _mm256_unpackhi_ps(r[2], r[3]),
            _mm256_unpacklo_ps(r[4], r[5]),
            _mm256_unpackhi_ps(r[4], r[5]),
            _mm256_unpacklo_ps(r[6], r[7]),
            _mm256_unpackhi_ps(r[6], r[7]),
        ];
        let q = [
            _mm256_shuffle_ps::<0x44>(t[0], t[2]),
            _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
            _mm256_shuffle_ps::<0x44>(t[1], t[3]),
            _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
            _mm256_shuffle_ps::<0x44>(t[4], t[6]),
            _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
            _mm256_shuffle_ps::<0x44>(t[5], t[7]),
            _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
        ];
        let out = [
            _mm256_permute2f128_ps::<0x20>(q[0], q[4]),
            _mm256_permute2f128_ps::<0x20>(q[1], q[5]),
            _mm256_permute2f128_ps::<0x20>(q[2], q[6]),
            _mm256_permute2f128_ps::<0x20>(q[3], q[7]),
            _mm256_permute2f128_ps::<0x31>(q[0], q[4]),
            _mm256_permute2f128_ps::<0x31>(q[1], q[5]),
            _mm256_permute2f128_ps::<0x31>(q[2], q[6]),
            _mm256_permute2f128_ps::<0x31>(q[3], q[7]),
        ];
        for (j, v) in out.into_iter().enumerate() {
            // SAFETY: as above.
            unsafe { _mm256_storeu_ps(dst.add(j * ds), v) };
        }
    }
}
