//! The channels-last, padded maps the transforms read and write, and the conversions from and
//! to burn's [N, C, H, W].

use multiversion::multiversion;

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

    /// Writes the block's maps x [n, ch, H, W] into their places in `dst`; the padding is left
    /// as it is (zero).
    pub fn fill(&self, g: &Tiles, ch: usize, x: &[f32], dst: &mut [f32]) {
        let plane = g.h * g.w;
        for n in 0..g.n {
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
/// that both sides are read and written eight values at a time.
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma", "aarch64+neon"))]
fn transpose(src: &[f32], rs: usize, dst: &mut [f32], ds: usize, rows: usize, cols: usize) {
    const B: usize = 8;
    let (full_r, full_c) = (rows - rows % B, cols - cols % B);
    for r0 in (0..full_r).step_by(B) {
        for c0 in (0..full_c).step_by(B) {
            let block: [[f32; B]; B] =
                std::array::from_fn(|i| src[(r0 + i) * rs + c0..][..B].try_into().expect("a row of the block"));
            for j in 0..B {
                let out: &mut [f32; B] = (&mut dst[(c0 + j) * ds + r0..][..B])
                    .try_into()
                    .expect("a row of the block");
                *out = std::array::from_fn(|i| block[i][j]);
            }
        }
    }
    // The edges: rows past the last whole block, then columns past it.
    for i in full_r..rows {
        for j in 0..cols {
            dst[j * ds + i] = src[i * rs + j];
        }
    }
    for i in 0..full_r {
        for j in full_c..cols {
            dst[j * ds + i] = src[i * rs + j];
        }
    }
}
