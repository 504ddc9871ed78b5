//! The fused perturbation layer on a GPU: the same operation as `cpu.rs`,
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
//! Four operations (five kernels). The layer's grouping makes each input channel's M maps one
//! run of a group's Kg (M divides Kg: Kg = M with several masks, Kg = C with one), so the kernels
//! walk channels and masks with counters instead of dividing in their inner loops:
//! - `forward`: one thread per (block of `SAMPLES_PER_UNIT` samples, o, p): each mask value and
//!   weight it loads serves every sample of its block;
//! - `grad_x`: one thread per (block of samples, c, p), the M maps of channel c and the outputs
//!   that read them, blocked over samples the same way;
//! - `grad_noise` (trainable masks only): per mask value, the sum over the batch (and over the
//!   channels when the masks are shared), in two stages: chunks of those terms summed by many
//!   threads into a [chunks, values] buffer, then one thread per value adds up its chunks;
//! - `grad_weight`: one cube per (o, run of `WEIGHTS_PER_CUBE` weights j), its units striding over
//!   N x HW, each dy value loaded once for the whole run, and meeting in a tree sum in shared
//!   memory (the cubes of the first run also sum dy alone, for the bias).

use burn::tensor::{DType, Shape};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::calculate_cube_count_elemwise;
use cubecl::prelude::*;

use crate::ops::activation::{FusedAct, LRELU_SLOPE, SELU_ALPHA, SELU_SCALE};

/// Units per cube of the weight-gradient reduction (a power of two, for the tree sum).
const REDUCE_UNITS: u32 = 256;

/// Samples each thread of `forward` and `grad_x` computes: the mask values and weights it loads
/// are shared by the batch, so one load serves this many samples.
const SAMPLES_PER_UNIT: usize = 4;

/// Weights j each cube of `grad_weight` sums: each dy value it loads serves this many (the
/// cube per weight would load every dy value Kg times).
const WEIGHTS_PER_CUBE: usize = 8;

/// Threads the mask gradient's first stage aims for: enough to fill a large GPU (an H200 holds
/// 132 x 2048 resident threads) at every stage of a network.
const GRAD_NOISE_THREADS: usize = 1 << 18;

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

/// `act'(v)`, as the CPU's activations write it (`ops/activation.rs`) (ReLU's derivative at 0 is 0).
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

/// Sizes of one call (see `cpu::PerturbSizes`), passed to every kernel.
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

/// The sample of slot `t` of the block starting at `n0`; a last, short block's missing slots
/// recompute its last sample (their results are not written).
#[cube]
fn sample(n0: usize, t: usize, batch: usize) -> usize {
    select(n0 + t < batch, n0 + t, batch - 1)
}

/// `into[t] = from[sample t, row, p]` for the block of samples starting at `n0`, `from` being
/// [N, rows, HW].
#[cube]
fn load_block(
    from: &Tensor<f32>,
    into: &mut Array<f32>,
    n0: usize,
    batch: usize,
    rows: usize,
    row: usize,
    hw: usize,
    p: usize,
    #[comptime] spu: usize,
) {
    #[unroll]
    for t in 0..spu {
        into[t] = from[(sample(n0, t, batch) * rows + row) * hw + p];
    }
}

/// `to[n0 + t, row, p] = values[t]` for the block's samples that exist.
#[cube]
fn store_block(
    to: &mut Tensor<f32>,
    values: &Array<f32>,
    n0: usize,
    batch: usize,
    rows: usize,
    row: usize,
    hw: usize,
    p: usize,
    #[comptime] spu: usize,
) {
    #[unroll]
    for t in 0..spu {
        if n0 + t < batch {
            to[((n0 + t) * rows + row) * hw + p] = values[t];
        }
    }
}

#[cube(launch)]
fn forward_kernel(
    x: &Tensor<f32>,
    noise: &Tensor<f32>,
    weight: &Tensor<f32>,
    bias: &Tensor<f32>,
    out: &mut Tensor<f32>,
    batch: usize,
    s: Sizes,
    #[comptime] act: FusedAct,
    #[comptime] spu: usize,
) {
    let pos = ABSOLUTE_POS;
    let blocks = (batch + spu - 1) / spu;
    if pos >= blocks * s.outputs * s.hw {
        terminate!();
    }
    let p = pos % s.hw;
    let bo = pos / s.hw;
    let o = bo % s.outputs;
    let n0 = (bo / s.outputs) * spu;
    let b = bias[o];
    let mut acc = Array::<f32>::new(spu);
    #[unroll]
    for t in 0..spu {
        acc[t] = b;
    }
    // Group g's maps are channels g * cpg .. (g + 1) * cpg, M masks each, in weight order.
    let cpg = s.kg / s.masks;
    let first_channel = (o / s.og) * cpg;
    let mut w = o * s.kg;
    let mut xv = Array::<f32>::new(spu);
    for ci in 0..cpg {
        let c = first_channel + ci;
        load_block(x, &mut xv, n0, batch, s.channels, c, s.hw, p, spu);
        let mut nz = c * s.noise_channel_stride + p;
        for _m in 0..s.masks {
            let nv = s.level * noise[nz];
            let wv = weight[w];
            #[unroll]
            for t in 0..spu {
                acc[t] += wv * apply(xv[t] + nv, act);
            }
            nz += s.hw;
            w += 1;
        }
    }
    store_block(out, &acc, n0, batch, s.outputs, o, s.hw, p, spu);
}

#[cube(launch)]
fn grad_x_kernel(
    x: &Tensor<f32>,
    noise: &Tensor<f32>,
    weight: &Tensor<f32>,
    dy: &Tensor<f32>,
    dx: &mut Tensor<f32>,
    batch: usize,
    s: Sizes,
    #[comptime] act: FusedAct,
    #[comptime] spu: usize,
) {
    let pos = ABSOLUTE_POS;
    let blocks = (batch + spu - 1) / spu;
    if pos >= blocks * s.channels * s.hw {
        terminate!();
    }
    let p = pos % s.hw;
    let bc = pos / s.hw;
    let c = bc % s.channels;
    let n0 = (bc / s.channels) * spu;
    // Channel c's maps are weights j0 .. j0 + M of group g (M divides Kg).
    let g = (c * s.masks) / s.kg;
    let j0 = (c * s.masks) % s.kg;
    let mut xv = Array::<f32>::new(spu);
    load_block(x, &mut xv, n0, batch, s.channels, c, s.hw, p, spu);
    let mut acc = Array::<f32>::new(spu);
    #[unroll]
    for t in 0..spu {
        acc[t] = 0.0;
    }
    let mut d = Array::<f32>::new(spu);
    for i in 0..s.og {
        let o = g * s.og + i;
        load_block(dy, &mut d, n0, batch, s.outputs, o, s.hw, p, spu);
        let mut nz = c * s.noise_channel_stride + p;
        let mut w = o * s.kg + j0;
        for _m in 0..s.masks {
            let nv = s.level * noise[nz];
            let wv = weight[w];
            #[unroll]
            for t in 0..spu {
                acc[t] += derivative(xv[t] + nv, act) * (wv * d[t]);
            }
            nz += s.hw;
            w += 1;
        }
    }
    store_block(dx, &acc, n0, batch, s.channels, c, s.hw, p, spu);
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
    let nv = s.level * noise[v];
    // The first input channel that reads this mask channel (shared masks have one, channel 0,
    // which every input channel reads).
    let first = cm / s.masks;
    let pairs = batch * readers;
    let start = q * chunk_len;
    let mut end = start + chunk_len;
    if end > pairs {
        end = pairs;
    }
    // Pair i is (sample i / readers, channel first + i % readers); channel ch's maps are the
    // weights (ch % cpg) * M .. of group ch / cpg. Counters, not divisions, walk them.
    let cpg = s.kg / s.masks;
    let first_g = first / cpg;
    let first_ci = first % cpg;
    let mut n = start / readers;
    let mut r = start % readers;
    let mut ch = first + r;
    let mut g = ch / cpg;
    let mut ci = ch % cpg;
    let mut sum = 0.0f32;
    let mut i = start;
    while i < end {
        let d = derivative(x[(n * s.channels + ch) * s.hw + p] + nv, act);
        let j = ci * s.masks + m;
        let mut back = 0.0f32;
        for u in 0..s.og {
            let o = g * s.og + u;
            back += weight[o * s.kg + j] * dy[(n * s.outputs + o) * s.hw + p];
        }
        sum += d * back;
        i += 1;
        r += 1;
        ch += 1;
        ci += 1;
        if ci == cpg {
            ci = 0;
            g += 1;
        }
        if r == readers {
            r = 0;
            n += 1;
            ch = first;
            g = first_g;
            ci = first_ci;
        }
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

/// Cube (r, o): dW[o, j] for the run of weights j = r * wpc .. r * wpc + wpc, each the sum over
/// n, p of dy[n, o, p] * act(perturbed map k(o, j)); the cubes of run 0 also sum dy alone, for
/// the bias.
#[cube(launch)]
fn grad_weight_kernel(
    x: &Tensor<f32>,
    noise: &Tensor<f32>,
    dy: &Tensor<f32>,
    dweight: &mut Tensor<f32>,
    dbias: &mut Tensor<f32>,
    batch: usize,
    p_units: usize,
    n_units: usize,
    s: Sizes,
    #[comptime] act: FusedAct,
    #[comptime] units: usize,
    #[comptime] wpc: usize,
) {
    let j0 = CUBE_POS_X as usize * wpc;
    let o = CUBE_POS_Y as usize;
    let unit = UNIT_POS_X as usize;
    let mut count = s.kg - j0;
    if count > wpc {
        count = wpc;
    }
    // Where the run's maps live: input channel offset and mask offset of each weight, found once
    // per cube (a run may cross from one channel's masks to the next one's).
    let k0 = (o / s.og) * s.kg + j0;
    let c0 = k0 / s.masks;
    let m0 = k0 % s.masks;
    let mut c = c0;
    let mut m = m0;
    // A short last run's missing weights repeat its first one, so the inner loops need no bounds
    // test; their sums are not written.
    let mut x_at = Array::<usize>::new(wpc);
    let mut noise_at = Array::<usize>::new(wpc);
    let mut acc = Array::<f32>::new(wpc);
    #[unroll]
    for t in 0..wpc {
        x_at[t] = c * s.hw;
        noise_at[t] = c * s.noise_channel_stride + m * s.hw;
        acc[t] = 0.0;
        if t + 1 < count {
            m += 1;
            if m == s.masks {
                m = 0;
                c += 1;
            }
        } else {
            c = c0;
            m = m0;
        }
    }
    // Units split into `p_units` over the pixels and `n_units` over the samples: a unit loads the
    // run's mask values at its pixel once for every sample, and small maps (4 x 4 in the last
    // stage) still keep every unit busy.
    let mut dy_sum = 0.0f32;
    let mut nv = Array::<f32>::new(wpc);
    // Whether the run stays in one channel: then one x value serves all its weights.
    let one_channel = m0 + count <= s.masks;
    if unit < p_units * n_units {
        let mut p = unit % p_units;
        while p < s.hw {
            #[unroll]
            for t in 0..wpc {
                nv[t] = s.level * noise[noise_at[t] + p];
            }
            let mut n = unit / p_units;
            while n < batch {
                let gv = dy[(n * s.outputs + o) * s.hw + p];
                let xn = n * s.channels * s.hw + p;
                if one_channel {
                    let xv = x[xn + x_at[0]];
                    #[unroll]
                    for t in 0..wpc {
                        acc[t] += gv * apply(xv + nv[t], act);
                    }
                } else {
                    #[unroll]
                    for t in 0..wpc {
                        acc[t] += gv * apply(x[xn + x_at[t]] + nv[t], act);
                    }
                }
                dy_sum += gv;
                n += n_units;
            }
            p += p_units;
        }
    }
    // One column of `units` partial sums per weight, the bias's last.
    let mut partial = Shared::<[f32]>::new_slice(comptime!(units * (wpc + 1)));
    #[unroll]
    for t in 0..wpc {
        partial[t * units + unit] = acc[t];
    }
    partial[wpc * units + unit] = dy_sum;
    sync_cube();
    // A runtime loop over the halving widths (`units` itself is a compile-time value).
    let mut width = (units / 2).runtime();
    while width > 0 {
        if unit < width {
            #[unroll]
            for t in 0..wpc + 1 {
                partial[t * units + unit] = partial[t * units + unit] + partial[t * units + unit + width];
            }
        }
        sync_cube();
        width /= 2;
    }
    if unit < count {
        dweight[o * s.kg + j0 + unit] = partial[unit * units];
    }
    if unit == wpc && j0 == 0 {
        dbias[o] = partial[wpc * units];
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
    // M | Kg: each channel's M maps lie in one group (the kernels walk them as one run).
    assert!(
        kg * groups == c * m && kg % m == 0 && o % groups == 0 && (noise_c == c || noise_c == 1),
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
    let (count, dim) = elementwise(&x, n.div_ceil(SAMPLES_PER_UNIT) * o * h * w);
    forward_kernel::launch(
        &x.client,
        count,
        dim,
        x.clone().into_tensor_arg(),
        noise.into_tensor_arg(),
        weight.into_tensor_arg(),
        bias.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        n,
        s(),
        act,
        SAMPLES_PER_UNIT,
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
    let [_, c, h, w]: [usize; 4] = x_shape.dims();
    let (count, dim) = elementwise(&x, n.div_ceil(SAMPLES_PER_UNIT) * c * h * w);
    grad_x_kernel::launch(
        &x.client,
        count,
        dim,
        x.clone().into_tensor_arg(),
        noise.clone().into_tensor_arg(),
        weight.clone().into_tensor_arg(),
        dy.clone().into_tensor_arg(),
        dx.clone().into_tensor_arg(),
        n,
        s(),
        act,
        SAMPLES_PER_UNIT,
    );

    // The weight gradient's units over pixels (the rest over samples).
    let p_units = (h * w).clamp(1, REDUCE_UNITS as usize);
    let dweight = empty_like(&x, weight.meta.shape().clone());
    let dbias = empty_like(&x, Shape::new([o]));
    grad_weight_kernel::launch(
        &x.client,
        CubeCount::Static(kg.div_ceil(WEIGHTS_PER_CUBE) as u32, o as u32, 1),
        CubeDim::new_1d(REDUCE_UNITS),
        x.clone().into_tensor_arg(),
        noise.into_tensor_arg(),
        dy.into_tensor_arg(),
        dweight.clone().into_tensor_arg(),
        dbias.clone().into_tensor_arg(),
        n,
        p_units,
        REDUCE_UNITS as usize / p_units,
        s(),
        act,
        REDUCE_UNITS as usize,
        WEIGHTS_PER_CUBE,
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
