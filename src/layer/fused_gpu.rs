//! The fused perturbation layer on a GPU: the same operation as `fused_cpu.rs`,
//!
//!   out[n, o, p] = b[o] + sum_j W[o, j] * act(x[n, c(k), p] + level * noise[c(k) or 0, m(k), p]),
//!   k = g(o) * Kg + j,  c(k) = k / M,  m(k) = k % M,
//!
//! written once in CubeCL, so it runs on every cubecl runtime (Vulkan here, CUDA where that
//! backend builds). burn's composition materialises the perturbed maps [N, C, M, H, W] and keeps
//! them (and their activation) for the backward pass, then runs a grouped convolution over them;
//! here every output is summed straight from x and the masks, and the backward pass recomputes
//! the perturbed values it needs, so no tensor larger than x or the output is ever formed.
//!
//! Four operations (five kernels), plain loops with one thread per output value except where said:
//! - `forward`: one thread per (n, o, p), Kg terms;
//! - `grad_x`: one thread per (n, c, p), the M maps of channel c and the outputs that read them;
//! - `grad_noise` (trainable masks only): per mask value, the sum over the batch (and over the
//!   channels when the masks are shared), in two stages: chunks of those terms summed by many
//!   threads into a [chunks, values] buffer, then one thread per value adds up its chunks;
//! - `grad_weight`: one cube per (o, j) (and per o for the bias), its units striding over
//!   N x HW and meeting in a tree sum in shared memory.

use burn::tensor::{DType, Shape};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::calculate_cube_count_elemwise;
use cubecl::prelude::*;

use super::fused::FusedAct;

/// Units per cube of the weight-gradient reduction (a power of two, for the tree sum).
const REDUCE_UNITS: u32 = 256;

/// Threads the mask gradient's first stage aims for: enough to fill a large GPU (an H200 holds
/// 132 x 2048 resident threads) at every stage of a network.
const GRAD_NOISE_THREADS: usize = 1 << 18;

const SELU_SCALE: f32 = 1.050_700_987_355_480_5;
const SELU_ALPHA: f32 = 1.673_263_242_354_377_3;
const LRELU_SLOPE: f32 = 0.01;

/// `act(v)`; `act` is known when the kernel is compiled, so each activation gets its own kernel.
#[cube]
fn apply(v: f32, #[comptime] act: FusedAct) -> f32 {
    match act {
        FusedAct::Identity => v,
        FusedAct::Relu => select(v > 0.0, v, 0.0),
        FusedAct::Lrelu => select(v > 0.0, v, v * LRELU_SLOPE),
        FusedAct::Elu => select(v > 0.0, v, v.exp() - 1.0),
        FusedAct::Selu => select(v > 0.0, v * SELU_SCALE, (v.exp() - 1.0) * (SELU_SCALE * SELU_ALPHA)),
        FusedAct::Tanh => v.tanh(),
        FusedAct::Sigmoid => 1.0 / (1.0 + (-v).exp()),
    }
}

/// `act'(v)`, as `fused_cpu.rs`'s activations write it (ReLU's derivative at 0 is 0).
#[cube]
fn derivative(v: f32, #[comptime] act: FusedAct) -> f32 {
    match act {
        FusedAct::Identity => 1.0,
        FusedAct::Relu => select(v > 0.0, 1.0, 0.0),
        FusedAct::Lrelu => select(v > 0.0, 1.0, LRELU_SLOPE),
        FusedAct::Elu => select(v > 0.0, 1.0, v.exp()),
        FusedAct::Selu => select(v > 0.0, SELU_SCALE, v.exp() * (SELU_SCALE * SELU_ALPHA)),
        FusedAct::Tanh => {
            let a = v.tanh();
            1.0 - a * a
        }
        FusedAct::Sigmoid => {
            let a = 1.0 / (1.0 + (-v).exp());
            a * (1.0 - a)
        }
    }
}

/// Sizes of one call (see `fused_cpu::Geometry`), passed to every kernel.
#[derive(CubeLaunch, CubeType, Clone, Copy)]
struct Sizes {
    channels: usize,
    hw: usize,
    masks: usize,
    /// M x HW for unique masks, 0 for shared ones (every channel reads mask channel 0).
    noise_channel_stride: usize,
    outputs: usize,
    /// Perturbed maps per group (the weight's second dimension).
    kg: usize,
    /// Outputs per group.
    og: usize,
    level: f32,
}

/// The perturbed value of map `k` of sample `n` at pixel `p`.
#[cube]
fn perturbed(x: &Tensor<f32>, noise: &Tensor<f32>, s: &Sizes, n: usize, k: usize, p: usize) -> f32 {
    let c = k / s.masks;
    let m = k % s.masks;
    x[(n * s.channels + c) * s.hw + p] + s.level * noise[c * s.noise_channel_stride + m * s.hw + p]
}

/// `sum over the outputs o of k's group of W[o, j(k)] * dy[n, o, p]`: what reaches map k.
#[cube]
fn back_to_map(weight: &Tensor<f32>, dy: &Tensor<f32>, s: &Sizes, n: usize, k: usize, p: usize) -> f32 {
    let g = k / s.kg;
    let j = k % s.kg;
    let mut sum = 0.0f32;
    for i in 0..s.og {
        let o = g * s.og + i;
        sum += weight[o * s.kg + j] * dy[(n * s.outputs + o) * s.hw + p];
    }
    sum
}

/// What map k's perturbed value at (n, p) contributes to the gradient of its input and of its
/// mask value: `act'(perturbed) * back_to_map` (the chain rule through the activation).
#[cube]
fn map_gradient(
    x: &Tensor<f32>,
    noise: &Tensor<f32>,
    weight: &Tensor<f32>,
    dy: &Tensor<f32>,
    s: &Sizes,
    n: usize,
    k: usize,
    p: usize,
    #[comptime] act: FusedAct,
) -> f32 {
    derivative(perturbed(x, noise, s, n, k, p), act) * back_to_map(weight, dy, s, n, k, p)
}

#[cube(launch)]
fn forward_kernel(
    x: &Tensor<f32>,
    noise: &Tensor<f32>,
    weight: &Tensor<f32>,
    bias: &Tensor<f32>,
    out: &mut Tensor<f32>,
    s: Sizes,
    #[comptime] act: FusedAct,
) {
    let pos = ABSOLUTE_POS;
    if pos >= out.len() {
        terminate!();
    }
    let p = pos % s.hw;
    let no = pos / s.hw;
    let o = no % s.outputs;
    let n = no / s.outputs;
    let first = (o / s.og) * s.kg;
    let mut sum = bias[o];
    for j in 0..s.kg {
        sum += weight[o * s.kg + j] * apply(perturbed(x, noise, &s, n, first + j, p), act);
    }
    out[pos] = sum;
}

#[cube(launch)]
fn grad_x_kernel(
    x: &Tensor<f32>,
    noise: &Tensor<f32>,
    weight: &Tensor<f32>,
    dy: &Tensor<f32>,
    dx: &mut Tensor<f32>,
    s: Sizes,
    #[comptime] act: FusedAct,
) {
    let pos = ABSOLUTE_POS;
    if pos >= dx.len() {
        terminate!();
    }
    let p = pos % s.hw;
    let nc = pos / s.hw;
    let c = nc % s.channels;
    let n = nc / s.channels;
    let mut sum = 0.0f32;
    for m in 0..s.masks {
        sum += map_gradient(x, noise, weight, dy, &s, n, c * s.masks + m, p, act);
    }
    dx[pos] = sum;
}

/// The mask gradient's first stage: chunk `q` of the (sample, channel) pairs that read mask value
/// `v` sums into `partial[q, v]`. `readers`: the input channels that read each mask channel (1 for
/// unique masks, all of them for shared ones). One thread per mask value alone left each thread the whole batch
/// (times every channel, for shared masks): at the last stage of a network that is a few thousand
/// threads with tens of thousands of terms each, and the GPU sat mostly idle.
#[cube(launch)]
fn grad_noise_partial_kernel(
    x: &Tensor<f32>,
    noise: &Tensor<f32>,
    weight: &Tensor<f32>,
    dy: &Tensor<f32>,
    partial: &mut Tensor<f32>,
    batch: usize,
    readers: usize,
    chunk_len: usize,
    s: Sizes,
    #[comptime] act: FusedAct,
) {
    let pos = ABSOLUTE_POS;
    if pos >= partial.len() {
        terminate!();
    }
    let values = noise.len();
    let q = pos / values;
    let v = pos % values;
    let p = v % s.hw;
    let cm = v / s.hw;
    let m = cm % s.masks;
    // The first input channel that reads this mask channel (shared masks have one, channel 0,
    // which every input channel reads).
    let first = cm / s.masks;
    let pairs = batch * readers;
    let start = q * chunk_len;
    let mut end = start + chunk_len;
    if end > pairs {
        end = pairs;
    }
    let mut sum = 0.0f32;
    let mut i = start;
    while i < end {
        let n = i / readers;
        let k = (first + i % readers) * s.masks + m;
        sum += map_gradient(x, noise, weight, dy, &s, n, k, p, act);
        i += 1;
    }
    partial[pos] = sum;
}

/// The mask gradient's second stage: `out[v] = scale * sum over q of partial[q, v]`.
#[cube(launch)]
fn sum_chunks_kernel(partial: &Tensor<f32>, out: &mut Tensor<f32>, chunks: usize, scale: f32) {
    let pos = ABSOLUTE_POS;
    if pos >= out.len() {
        terminate!();
    }
    let values = out.len();
    let mut sum = 0.0f32;
    for q in 0..chunks {
        sum += partial[q * values + pos];
    }
    out[pos] = scale * sum;
}

/// Cube (j, o): dW[o, j] = sum over n, p of dy[n, o, p] * act(perturbed map k(o, j)); the
/// cube j = Kg sums dy alone, for the bias.
#[cube(launch)]
fn grad_weight_kernel(
    x: &Tensor<f32>,
    noise: &Tensor<f32>,
    dy: &Tensor<f32>,
    dweight: &mut Tensor<f32>,
    dbias: &mut Tensor<f32>,
    batch: usize,
    s: Sizes,
    #[comptime] act: FusedAct,
    #[comptime] units: usize,
) {
    let j = CUBE_POS_X as usize;
    let o = CUBE_POS_Y as usize;
    let unit = UNIT_POS_X as usize;
    let k = (o / s.og) * s.kg + j;
    let total = batch * s.hw;
    let mut sum = 0.0f32;
    let mut e = unit;
    while e < total {
        let n = e / s.hw;
        let p = e % s.hw;
        let g = dy[(n * s.outputs + o) * s.hw + p];
        if j < s.kg {
            sum += g * apply(perturbed(x, noise, &s, n, k, p), act);
        } else {
            sum += g;
        }
        e += units;
    }
    let mut partial = Shared::<[f32]>::new_slice(units);
    partial[unit] = sum;
    sync_cube();
    // A runtime loop over the halving widths (`units` itself is a compile-time value).
    let mut width = (units / 2).runtime();
    while width > 0 {
        if unit < width {
            partial[unit] = partial[unit] + partial[unit + width];
        }
        sync_cube();
        width /= 2;
    }
    if unit == 0 {
        if j < s.kg {
            dweight[o * s.kg + j] = partial[0];
        } else {
            dbias[o] = partial[0];
        }
    }
}

/// Sizes read off the operands: x [N, C, H, W], noise [1, C or 1, M, H, W], weight [O, Kg, 1, 1].
fn sizes(
    x: &CubeTensor,
    noise: &CubeTensor,
    weight: &CubeTensor,
    level: f32,
) -> (usize, impl Fn() -> SizesLaunch + use<>) {
    let [n, c, h, w]: [usize; 4] = x.meta.shape().dims();
    let [_, noise_c, m, _, _]: [usize; 5] = noise.meta.shape().dims();
    let [o, kg, _, _]: [usize; 4] = weight.meta.shape().dims();
    let groups = c * m / kg;
    assert!(
        kg * groups == c * m && o % groups == 0 && (noise_c == c || noise_c == 1),
        "perturb_combine: inconsistent shapes x {:?}, noise {:?}, weight {:?}",
        x.meta.shape(),
        noise.meta.shape(),
        weight.meta.shape()
    );
    let hw = h * w;
    let stride = if noise_c == 1 { 0 } else { m * hw };
    (n, move || SizesLaunch::new(c, hw, m, stride, o, kg, o / groups, level))
}

fn f32_contiguous(t: CubeTensor) -> CubeTensor {
    assert_eq!(
        t.dtype,
        DType::F32,
        "the fused perturbation layer's GPU kernels take f32 tensors"
    );
    into_contiguous(t)
}

fn empty_like(like: &CubeTensor, shape: Shape) -> CubeTensor {
    empty_device_contiguous_dtype(like.client.clone(), like.device.clone(), shape, DType::F32)
}

/// Launch shape for one unit per value of a tensor of `len` values.
fn elementwise(like: &CubeTensor, len: usize) -> (CubeCount, CubeDim) {
    let dim = CubeDim::new(&like.client, len);
    (calculate_cube_count_elemwise(&like.client, len, dim), dim)
}

/// How the mask gradient's `pairs` terms per value are split: (chunks, pairs per chunk), so that
/// `chunks x values` threads come near `GRAD_NOISE_THREADS`.
fn noise_chunks(values: usize, pairs: usize) -> (usize, usize) {
    let wanted = GRAD_NOISE_THREADS.div_ceil(values.max(1)).clamp(1, pairs.max(1));
    let chunk_len = pairs.max(1).div_ceil(wanted);
    (pairs.max(1).div_ceil(chunk_len), chunk_len)
}

/// `bias + weight * act(x + level * noise)` (see the module documentation).
pub fn forward(
    x: CubeTensor,
    noise: CubeTensor,
    weight: CubeTensor,
    bias: CubeTensor,
    level: f32,
    act: FusedAct,
) -> CubeTensor {
    let [x, noise, weight, bias] = [x, noise, weight, bias].map(f32_contiguous);
    let (n, s) = sizes(&x, &noise, &weight, level);
    let [_, _, h, w]: [usize; 4] = x.meta.shape().dims();
    let o = weight.meta.shape()[0];
    let out = empty_like(&x, Shape::new([n, o, h, w]));
    let (count, dim) = elementwise(&x, n * o * h * w);
    forward_kernel::launch(
        &x.client,
        count,
        dim,
        x.clone().into_tensor_arg(),
        noise.into_tensor_arg(),
        weight.into_tensor_arg(),
        bias.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        s(),
        act,
    );
    out
}

/// The gradients of x, the weight and the bias, from the output's gradient `dy`.
pub fn input_grads(
    x: CubeTensor,
    noise: CubeTensor,
    weight: CubeTensor,
    dy: CubeTensor,
    level: f32,
    act: FusedAct,
) -> (CubeTensor, CubeTensor, CubeTensor) {
    let [x, noise, weight, dy] = [x, noise, weight, dy].map(f32_contiguous);
    let (n, s) = sizes(&x, &noise, &weight, level);
    let x_shape = x.meta.shape().clone();
    let [o, kg]: [usize; 2] = [weight.meta.shape()[0], weight.meta.shape()[1]];

    let dx = empty_like(&x, x_shape.clone());
    let (count, dim) = elementwise(&x, x_shape.num_elements());
    grad_x_kernel::launch(
        &x.client,
        count,
        dim,
        x.clone().into_tensor_arg(),
        noise.clone().into_tensor_arg(),
        weight.clone().into_tensor_arg(),
        dy.clone().into_tensor_arg(),
        dx.clone().into_tensor_arg(),
        s(),
        act,
    );

    let dweight = empty_like(&x, weight.meta.shape().clone());
    let dbias = empty_like(&x, Shape::new([o]));
    grad_weight_kernel::launch(
        &x.client,
        CubeCount::Static(kg as u32 + 1, o as u32, 1),
        CubeDim::new_1d(REDUCE_UNITS),
        x.clone().into_tensor_arg(),
        noise.into_tensor_arg(),
        dy.into_tensor_arg(),
        dweight.clone().into_tensor_arg(),
        dbias.clone().into_tensor_arg(),
        n,
        s(),
        act,
        REDUCE_UNITS as usize,
    );
    (dx, dweight, dbias)
}

/// The masks' gradient (trainable masks), from the output's gradient `dy`.
pub fn noise_grad(
    x: CubeTensor,
    noise: CubeTensor,
    weight: CubeTensor,
    dy: CubeTensor,
    level: f32,
    act: FusedAct,
) -> CubeTensor {
    let [x, noise, weight, dy] = [x, noise, weight, dy].map(f32_contiguous);
    let (n, s) = sizes(&x, &noise, &weight, level);
    let shape = noise.meta.shape().clone();
    let values = shape.num_elements();
    // (sample, channel) pairs that read each mask value: every channel, for shared masks.
    let readers = if shape[1] == 1 { x.meta.shape()[1] } else { 1 };
    let (chunks, chunk_len) = noise_chunks(values, n * readers);
    let partial = empty_like(&x, Shape::new([chunks, values]));
    let (count, dim) = elementwise(&x, chunks * values);
    grad_noise_partial_kernel::launch(
        &x.client,
        count,
        dim,
        x.clone().into_tensor_arg(),
        noise.into_tensor_arg(),
        weight.into_tensor_arg(),
        dy.into_tensor_arg(),
        partial.clone().into_tensor_arg(),
        n,
        readers,
        chunk_len,
        s(),
        act,
    );
    let dnoise = empty_like(&x, shape);
    let (count, dim) = elementwise(&x, values);
    sum_chunks_kernel::launch(
        &x.client,
        count,
        dim,
        partial.into_tensor_arg(),
        dnoise.clone().into_tensor_arg(),
        chunks,
        level,
    );
    dnoise
}
