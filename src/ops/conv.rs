//! The k x k convolution (ungrouped, no dilation) on the CPU backend as one operation with a
//! hand-written backward: per sample, the input's patches are laid out as a matrix (im2col) and
//! multiplied by the weights with the `gemm` crate, reading transposed operands through strides.
//!
//!   forward   y[n]    = W cols(x[n])                [O, OHW] = [O, CKK] [CKK, OHW]
//!   backward  dW      = sum_n dy[n] cols(x[n])^T     patches rebuilt, not kept
//!             dx[n]   = col2im(W^T dy[n])            each patch value added back to its pixel
//!
//! The 3x3, stride-1 convolutions of batches with enough tiles go through Winograd's F(4x4, 3x3)
//! instead (`ops/winograd/`), with 4x fewer multiplications; [`ConvAlgorithm`] says which.

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Dispatch, Flex, backend_extension};
use burn::tensor::Tensor;
use rayon::prelude::*;

use crate::ops::cpu::blocks::{add_vectors, block_len};
use crate::ops::cpu::buffer::{par_filled, par_filled_with, zeroed};
use crate::ops::cpu::flex_tensor::{contiguous, dims, tensor, values};
use crate::ops::cpu::matmul::{Mat, gather, matmul, matmul_into, matmul_threaded, scatter, threaded_product};
use crate::ops::winograd::{self, Tiles};

/// How a k x k convolution is computed on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvAlgorithm {
    /// Winograd where it applies and is faster (see [`ConvAlgorithm::resolve`]), im2col elsewhere.
    Auto,
    /// Patches laid out as a matrix and multiplied by the weights.
    Im2col,
    /// Winograd's F(4x4, 3x3) where it applies (3x3, stride 1, padding 1), im2col elsewhere.
    Winograd,
}

/// Output maps of at least this many 4x4 tiles take Winograd under [`ConvAlgorithm::Auto`]
/// (8x8 maps have 4): on 4x4 maps, one tile each, Winograd's transformed weights (4x the
/// kernels) cost more than it saves at the usual batch sizes (352 channels, forward +
/// backward: 0.84x im2col's speed at batch 16, 1.03x at 24, 2.12x at 64; `cargo run --release
/// --example conv3x3 -- 16 44` on the 2-core Intel Xeon, docs/speed.md).
const WINOGRAD_MIN_TILES: usize = 4;

/// ... and at least this many input and output channels: the transforms cost the same per
/// channel whatever the product's size, and a first layer's product over 3 image channels is
/// too small to repay them (3 -> 44 channels at 32x32: Winograd 0.33x im2col's speed at batch
/// 16, 0.30x at 64).
const WINOGRAD_MIN_CHANNELS: usize = 16;

impl ConvAlgorithm {
    /// The algorithm that runs for these sizes: `Auto` and `Winograd` resolved.
    ///
    /// The batch size plays no part: a choice that moved with the batch would give a model
    /// different arithmetic at different batch sizes, and a working memory that is not linear in
    /// the batch, which the memory estimate (`train::memory`) extrapolates from two small
    /// batches.
    fn resolve(self, g: &ConvSizes) -> Self {
        let applies = g.k == 3 && g.stride == 1 && g.padding == 1;
        let pays = g.c.min(g.o) >= WINOGRAD_MIN_CHANNELS && g.tiles().per_map() >= WINOGRAD_MIN_TILES;
        match self {
            Self::Winograd if applies => Self::Winograd,
            Self::Auto if applies && pays => Self::Winograd,
            _ => Self::Im2col,
        }
    }
}

impl ConvSizes {
    fn tiles(&self) -> Tiles {
        Tiles {
            n: self.n,
            c: self.c,
            o: self.o,
            h: self.h,
            w: self.w,
        }
    }
}

#[backend_extension(Flex, Autodiff)]
pub trait ConvOps: burn::backend::Backend {
    /// x [N, C, H, W], weight [O, C, K, K] -> [N, O, OH, OW], without bias.
    fn conv2d_square(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: usize,
        padding: usize,
        algorithm: ConvAlgorithm,
    ) -> FloatTensor<Self>;
}

/// Sizes of one call.
#[derive(Debug, Clone, Copy)]
struct ConvSizes {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    k: usize,
    stride: usize,
    padding: usize,
    oh: usize,
    ow: usize,
}

impl ConvSizes {
    fn of(x: &[usize], weight: &[usize], stride: usize, padding: usize) -> Self {
        assert!(
            x.len() == 4 && weight.len() == 4 && weight[1] == x[1] && weight[2] == weight[3],
            "conv2d: x {x:?} and weight {weight:?} are not a square ungrouped convolution"
        );
        let k = weight[2];
        let out = |size: usize| (size + 2 * padding - k) / stride + 1;
        Self {
            n: x[0],
            c: x[1],
            h: x[2],
            w: x[3],
            o: weight[0],
            k,
            stride,
            padding,
            oh: out(x[2]),
            ow: out(x[3]),
        }
    }

    /// Rows of the patch matrix: C x K x K.
    fn rows(&self) -> usize {
        self.c * self.k * self.k
    }

    /// Columns of the patch matrix: the output pixels.
    fn cols(&self) -> usize {
        self.oh * self.ow
    }

    /// The output coordinates `lo..hi` whose input coordinate `o * stride + i - padding` at
    /// kernel offset `i` lies inside a map of `size` pixels; outside them the patch reads padding.
    /// Computed once per row, so the copy loops below carry no per-pixel bounds test.
    #[inline(always)]
    fn inside(&self, i: usize, size: usize, out: usize) -> (usize, usize) {
        let (s, p) = (self.stride, self.padding);
        let lo = p.saturating_sub(i).div_ceil(s).min(out);
        if size + p <= i {
            return (lo, lo);
        }
        let hi = ((size - 1 + p - i) / s + 1).min(out);
        (lo, hi.max(lo))
    }
}

/// The patch matrix of one sample: row (c, i, j), column (oy, ox) = x[c, oy s + i - p, ox s + j - p].
///
/// Each row is zeroed with one fill and only its in-map ranges copied: the runs are short (one
/// map row, 4-32 values), and a `fill` or `copy_from_slice` per run is a libc call per run.
fn im2col(g: &ConvSizes, x_n: &[f32], cols: &mut [f32]) {
    for (row, dst) in cols.chunks_mut(g.cols()).enumerate() {
        im2col_row(g, x_n, row, dst);
    }
}

/// Row `row` = (c, i, j) of one sample's patch matrix: `dst` holds its OH x OW values.
fn im2col_row(g: &ConvSizes, x_n: &[f32], row: usize, dst: &mut [f32]) {
    let (c, i, j) = (row / (g.k * g.k), row / g.k % g.k, row % g.k);
    let plane = &x_n[c * g.h * g.w..][..g.h * g.w];
    let (y_lo, y_hi) = g.inside(i, g.h, g.oh);
    let (x_lo, x_hi) = g.inside(j, g.w, g.ow);
    let whole_rows = g.stride == 1 && x_lo == 0 && x_hi == g.ow && g.ow == g.w && j == g.padding;
    if !whole_rows {
        dst.fill(0.0);
    }
    if x_lo == x_hi || y_lo == y_hi {
        return;
    }
    let first = x_lo * g.stride + j - g.padding;
    let src_row = |oy: usize| (oy * g.stride + i - g.padding) * g.w;
    if whole_rows {
        // The centre column of a stride-1 kernel on a map as wide as its output: the valid
        // output rows are one contiguous block of the input plane.
        dst[..y_lo * g.ow].fill(0.0);
        dst[y_hi * g.ow..].fill(0.0);
        let n = (y_hi - y_lo) * g.ow;
        dst[y_lo * g.ow..][..n].copy_from_slice(&plane[src_row(y_lo)..][..n]);
        return;
    }
    for oy in y_lo..y_hi {
        let out = &mut dst[oy * g.ow..][x_lo..x_hi];
        let src = &plane[src_row(oy) + first..];
        if g.stride == 1 {
            copy_run(out, src);
        } else {
            for (v, s) in out.iter_mut().zip(src.iter().step_by(g.stride)) {
                *v = *s;
            }
        }
    }
}

/// The whole batch's patch matrix [CKK, N x OHW]: sample n's patches in columns n OHW.., built
/// row by row on rayon's threads.
fn im2col_batch(g: &ConvSizes, x: &[f32]) -> Vec<f32> {
    let (plane_in, cols) = (g.c * g.h * g.w, g.cols());
    // SAFETY: each row is zeroed, then written by im2col_row.
    unsafe {
        par_filled(g.rows() * g.n * cols, g.n * cols, |row, dst| {
            let dst = zeroed(dst);
            for (n, block) in dst.chunks_mut(cols).enumerate() {
                im2col_row(g, &x[n * plane_in..][..plane_in], row, block);
            }
        })
    }
}

/// `dst = src[..dst.len()]` in fixed-size pieces, which compile to vector moves, not a call.
#[inline(always)]
fn copy_run(dst: &mut [f32], src: &[f32]) {
    let src = &src[..dst.len()];
    let mut d = dst.chunks_exact_mut(8);
    let mut s = src.chunks_exact(8);
    for (d, s) in (&mut d).zip(&mut s) {
        let s: &[f32; 8] = s.try_into().expect("a chunk of 8");
        let d: &mut [f32; 8] = d.try_into().expect("a chunk of 8");
        *d = *s;
    }
    for (d, s) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *d = *s;
    }
}

/// Adds each patch value back to the input pixel it came from. Row r of the patch matrix is
/// `cols[r * row_stride..][..OHW]`: `row_stride` is OHW for one sample's matrix, N x OHW for the
/// batch's (with `cols` starting at the sample's first column).
fn col2im(g: &ConvSizes, cols: &[f32], row_stride: usize, dx_n: &mut [f32]) {
    for row in 0..g.rows() {
        let src = &cols[row * row_stride..][..g.cols()];
        let (c, i, j) = (row / (g.k * g.k), row / g.k % g.k, row % g.k);
        let plane = &mut dx_n[c * g.h * g.w..][..g.h * g.w];
        let (y_lo, y_hi) = g.inside(i, g.h, g.oh);
        let (x_lo, x_hi) = g.inside(j, g.w, g.ow);
        if x_lo == x_hi {
            continue;
        }
        for oy in y_lo..y_hi {
            let dst = &mut plane[(oy * g.stride + i - g.padding) * g.w..][..g.w];
            let first = x_lo * g.stride + j - g.padding;
            let src = &src[oy * g.ow..][x_lo..x_hi];
            if g.stride == 1 {
                dst[first..][..src.len()].iter_mut().zip(src).for_each(|(d, v)| *d += v);
            } else {
                for (d, v) in dst[first..].iter_mut().step_by(g.stride).zip(src) {
                    *d += v;
                }
            }
        }
    }
}

/// Output maps of at most this many pixels are computed for the whole batch at once: one
/// [CKK, N x OHW] patch matrix and one threaded product per pass. Per sample, the products of
/// the last stages are too thin (a 4 x 4 map: 16 columns): the forward pass packed the whole
/// weight matrix again for every sample, and the weight gradient, a product over only 16
/// pixels, read and wrote all of dW once per sample.
const SMALL_MAPS: usize = 64;

fn forward_values(g: ConvSizes, x: &[f32], w: &[f32], algorithm: ConvAlgorithm) -> Vec<f32> {
    if algorithm.resolve(&g) == ConvAlgorithm::Winograd {
        return winograd::forward(&g.tiles(), x, w);
    }
    if g.cols() <= SMALL_MAPS {
        return forward_batch(g, x, w);
    }
    let weight = Mat::row_major(w.as_ptr(), g.rows());
    // SAFETY: y_n is O x OHW, w O x CKK, cols CKK x OHW; the product writes all of y_n.
    unsafe {
        par_filled_with(
            g.n * g.o * g.cols(),
            g.o * g.cols(),
            || vec![0f32; g.rows() * g.cols()],
            |cols, n, y_n| {
                im2col(&g, &x[n * g.c * g.h * g.w..][..g.c * g.h * g.w], cols);
                matmul_into(
                    y_n,
                    g.o,
                    g.cols(),
                    g.rows(),
                    weight,
                    Mat::row_major(cols.as_ptr(), g.cols()),
                );
            },
        )
    }
}

/// The forward pass of [`SMALL_MAPS`] maps: Y [O, N x OHW] = W cols, then back to [N, O, OHW].
fn forward_batch(g: ConvSizes, x: &[f32], w: &[f32]) -> Vec<f32> {
    let width = g.n * g.cols();
    let cols = im2col_batch(&g, x);
    // SAFETY: y2 is O x (N OHW), w O x CKK, cols CKK x (N OHW); the product writes all of y2.
    let y2 = unsafe {
        threaded_product(
            g.o,
            width,
            g.rows(),
            Mat::row_major(w.as_ptr(), g.rows()),
            Mat::row_major(cols.as_ptr(), width),
        )
    };
    scatter(&y2, g.n, g.o, g.cols(), None)
}

/// (dx, dW).
fn backward_values(
    g: ConvSizes,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    need_x: bool,
    algorithm: ConvAlgorithm,
) -> (Vec<f32>, Vec<f32>) {
    if algorithm.resolve(&g) == ConvAlgorithm::Winograd {
        return winograd::backward(&g.tiles(), x, w, dy, need_x);
    }
    if g.cols() <= SMALL_MAPS {
        return backward_batch(g, x, w, dy, need_x);
    }
    let plane_in = g.c * g.h * g.w;
    let block = block_len(g.n);
    let w_t = Mat::transposed(w.as_ptr(), g.rows());
    // One block of samples per thread: its share of dx (zeroed by the thread itself, for
    // col2im adds into it) and its partial dW.
    let partial = std::sync::Mutex::new(Vec::new());
    // SAFETY: every block of dx is zeroed before anything is added to it.
    let dx = unsafe {
        par_filled(
            if need_x { g.n * plane_in } else { 0 },
            block * plane_in,
            |b, dx_block| {
                let dx_block = zeroed(dx_block);
                let dw = dw_of_block(&g, x, dy, w_t, b * block..((b + 1) * block).min(g.n), Some(dx_block));
                partial.lock().expect("no thread panicked").push((b, dw));
            },
        )
    };
    let mut partial = partial.into_inner().expect("no thread panicked");
    if !need_x {
        let starts: Vec<usize> = (0..g.n).step_by(block).collect();
        partial = starts
            .into_par_iter()
            .map(|start| {
                (
                    start / block,
                    dw_of_block(&g, x, dy, w_t, start..(start + block).min(g.n), None),
                )
            })
            .collect();
    }
    // Summed in block order, so that a step gives the same dW however the threads ran.
    partial.sort_by_key(|(b, _)| *b);
    let dw = partial
        .into_iter()
        .map(|(_, dw)| dw)
        .reduce(add_vectors)
        .unwrap_or_else(|| vec![0f32; g.o * g.rows()]);
    (dx, dw)
}

/// The weight gradient of samples `samples`, and with `dx_block` their input gradient added
/// into it (the block's planes, in order).
fn dw_of_block(
    g: &ConvSizes,
    x: &[f32],
    dy: &[f32],
    w_t: Mat,
    samples: std::ops::Range<usize>,
    mut dx_block: Option<&mut [f32]>,
) -> Vec<f32> {
    let plane_in = g.c * g.h * g.w;
    let plane_out = g.o * g.cols();
    let mut dw = vec![0f32; g.o * g.rows()];
    let mut cols = vec![0f32; g.rows() * g.cols()];
    let first = samples.start;
    for n in samples {
        let dy_n = Mat::row_major(dy[n * plane_out..].as_ptr(), g.cols());
        im2col(g, &x[n * plane_in..][..plane_in], &mut cols);
        let cols_t = Mat::transposed(cols.as_ptr(), g.cols());
        // SAFETY: dw is O x CKK, dy_n O x OHW, cols^T OHW x CKK.
        unsafe { matmul(&mut dw, n > first, g.o, g.rows(), g.cols(), dy_n, cols_t) };
        if let Some(dx_block) = dx_block.as_deref_mut() {
            // SAFETY: cols is CKK x OHW, W^T CKK x O, dy_n O x OHW.
            unsafe { matmul(&mut cols, false, g.rows(), g.cols(), g.o, w_t, dy_n) };
            col2im(g, &cols, g.cols(), &mut dx_block[(n - first) * plane_in..][..plane_in]);
        }
    }
    dw
}

/// The backward pass of [`SMALL_MAPS`] maps, with the batch as one matrix:
/// dW = dY cols^T and dcols = W^T dY, [CKK, N x OHW], then col2im per sample.
fn backward_batch(g: ConvSizes, x: &[f32], w: &[f32], dy: &[f32], need_x: bool) -> (Vec<f32>, Vec<f32>) {
    let width = g.n * g.cols();
    let cols = im2col_batch(&g, x);
    let dy2 = gather(dy, g.n, g.o, g.cols());
    // SAFETY: dw is O x CKK, dy2 O x (N OHW), cols^T (N OHW) x CKK.
    let dw = unsafe {
        threaded_product(
            g.o,
            g.rows(),
            width,
            Mat::row_major(dy2.as_ptr(), width),
            Mat::transposed(cols.as_ptr(), width),
        )
    };
    if !need_x {
        return (Vec::new(), dw);
    }
    let mut dcols = cols;
    // SAFETY: dcols is CKK x (N OHW), W^T CKK x O, dy2 O x (N OHW).
    unsafe {
        matmul_threaded(
            &mut dcols,
            g.rows(),
            width,
            g.o,
            Mat::transposed(w.as_ptr(), g.rows()),
            Mat::row_major(dy2.as_ptr(), width),
        )
    };
    let plane_in = g.c * g.h * g.w;
    // SAFETY: each sample's plane is zeroed before col2im adds into it.
    let dx = unsafe {
        par_filled(g.n * plane_in, plane_in, |n, dx_n| {
            col2im(&g, &dcols[n * g.cols()..], width, zeroed(dx_n));
        })
    };
    (dx, dw)
}

fn forward_flex(
    x: &FlexTensor,
    weight: &FlexTensor,
    stride: usize,
    padding: usize,
    algorithm: ConvAlgorithm,
) -> FlexTensor {
    let g = ConvSizes::of(&dims(x), &dims(weight), stride, padding);
    let (x, weight) = (contiguous(x), contiguous(weight));
    tensor(
        forward_values(g, values(&x), values(&weight), algorithm),
        vec![g.n, g.o, g.oh, g.ow],
    )
}

impl ConvOps for Flex {
    fn conv2d_square(
        x: FlexTensor,
        weight: FlexTensor,
        stride: usize,
        padding: usize,
        algorithm: ConvAlgorithm,
    ) -> FlexTensor {
        forward_flex(&x, &weight, stride, padding, algorithm)
    }
}

#[derive(Debug)]
struct ConvBackward;

impl Backward<Flex, 2> for ConvBackward {
    type State = (FlexTensor, FlexTensor, usize, usize, ConvAlgorithm);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_x, node_weight] = ops.parents;
        let dy = contiguous(&grads.consume::<Flex>(&ops.node));
        let (x, weight, stride, padding, algorithm) = ops.state;
        let (x_dims, weight_dims) = (dims(&x), dims(&weight));
        let g = ConvSizes::of(&x_dims, &weight_dims, stride, padding);
        let (x, weight) = (contiguous(&x), contiguous(&weight));
        let (dx, dw) = backward_values(g, values(&x), values(&weight), values(&dy), node_x.is_some(), algorithm);
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, tensor(dx, x_dims));
        }
        if let Some(node) = node_weight {
            grads.register::<Flex>(node.id, tensor(dw, weight_dims));
        }
    }
}

impl<C: CheckpointStrategy> ConvOps for Autodiff<Flex, C> {
    fn conv2d_square(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: usize,
        padding: usize,
        algorithm: ConvAlgorithm,
    ) -> FloatTensor<Self> {
        let prep = ConvBackward
            .prepare::<C>([x.node(), weight.node()])
            .compute_bound()
            .stateful();
        let (x, weight) = (x.primitive().clone(), weight.primitive().clone());
        let out = forward_flex(&x, &weight, stride, padding, algorithm);
        match prep {
            OpsKind::Tracked(prep) => prep.finish((x, weight, stride, padding, algorithm), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }
}

/// A square k x k convolution without bias on the CPU backend (see `conv::forward`), by the
/// fastest algorithm for its sizes.
pub fn conv2d(x: Tensor<4>, weight: Tensor<4>, stride: usize, padding: usize) -> Tensor<4> {
    conv2d_with(x, weight, stride, padding, ConvAlgorithm::Auto)
}

/// [`conv2d`] by the algorithm given: to compare them, or to test one against another.
pub fn conv2d_with(
    x: Tensor<4>,
    weight: Tensor<4>,
    stride: usize,
    padding: usize,
    algorithm: ConvAlgorithm,
) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as ConvOps>::conv2d_square(
        x.into_dispatch(),
        weight.into_dispatch(),
        stride,
        padding,
        algorithm,
    ))
}
