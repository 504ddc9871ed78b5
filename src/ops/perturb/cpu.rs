//! The CPU loops of the fused perturbation layer (see `mod.rs` for the operation and its
//! place in burn). Three choices make them fast, each measured with `bench/fused.sh`:
//!
//! - **Tiles.** A group's perturbed maps are computed a tile of pixels at a time (Kg x TILE
//!   floats, in L1/L2) and used at once, never stored whole, and recomputed in the backward pass.
//! - **One compiled loop per activation.** The activation is a type parameter, so the inner loops
//!   hold no `match` and the compiler vectorises them.
//! - **SIMD where the CPU has it.** `multiversion` compiles each per-sample kernel for AVX2+FMA
//!   (and NEON) beside the portable build and picks one at run time; sums are kept in 16 lanes
//!   so that they vectorise (a plain `iter().sum()` of f32 is a serial chain of additions).
//!
//! Where no activation follows the noise (`--use_act` off) the layer is linear in x, and the
//! noise's share of the output does not depend on the sample: [`linear_forward`] and
//! [`linear_backward`] use that and never form the perturbed maps at all.

use multiversion::multiversion;

use crate::ops::activation::ActivationFn;
use crate::ops::cpu::blocks::block_len;
use crate::ops::cpu::lanes::{LANES, axpy, dot, sum};
use rayon::prelude::*;

/// Pixels per tile: Kg x TILE floats of perturbed maps (16 KiB for 64 masks) stay in cache.
const TILE: usize = 64;

/// Sizes of one call, read off the operands' shapes.
#[derive(Debug, Clone, Copy)]
pub struct PerturbSizes {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub hw: usize,
    /// Masks per input channel.
    pub m: usize,
    /// Mask channels: C (unique masks) or 1 (shared).
    pub noise_c: usize,
    pub o: usize,
    pub groups: usize,
    /// Perturbed maps per group (the weight's second dimension).
    pub kg: usize,
    /// Outputs per group.
    pub og: usize,
}

impl PerturbSizes {
    /// x [N, C, H, W]; noise [1, C or 1, M, H, W]; weight [O, Kg, 1, 1].
    pub fn of(x: &[usize], noise: &[usize], weight: &[usize]) -> Self {
        let [n, c, h, w] = [x[0], x[1], x[2], x[3]];
        let (noise_c, m) = (noise[1], noise[2]);
        let (o, kg) = (weight[0], weight[1]);
        let groups = c * m / kg;
        assert!(
            noise[3] == h && noise[4] == w && (noise_c == c || noise_c == 1) && kg * groups == c * m && o % groups == 0,
            "perturb_combine: inconsistent shapes x {x:?}, noise {noise:?}, weight {weight:?}"
        );
        Self {
            n,
            c,
            h,
            w,
            hw: h * w,
            m,
            noise_c,
            o,
            groups,
            kg,
            og: o / groups,
        }
    }

    /// Input channel of perturbed map `k`, and the offset of its mask in `noise`.
    #[inline(always)]
    fn source(&self, k: usize) -> (usize, usize) {
        let (c, m) = (k / self.m, k % self.m);
        let noise_channel = if self.noise_c == 1 { 0 } else { c };
        (c, (noise_channel * self.m + m) * self.hw)
    }

    /// Whether each group holds the masks of whole channels (true whenever groups divide C,
    /// as for the layer's grouped convolution): what the linear path relies on.
    fn whole_channels(&self) -> bool {
        self.kg % self.m == 0
    }
}

/// Operands of one call, contiguous f32.
#[derive(Clone, Copy)]
pub struct Operands<'a> {
    pub g: &'a PerturbSizes,
    pub x: &'a [f32],
    pub noise: &'a [f32],
    pub weight: &'a [f32],
    pub level: f32,
}

/// Gradients of one call: for x, the masks (empty unless asked for), the weights and the bias.
pub struct Grads {
    pub x: Vec<f32>,
    pub noise: Vec<f32>,
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

/// Fills `pre` and `post` (Kg rows of TILE) with the perturbed maps of `group` over the pixels
/// `t0..t0 + len` of one sample `x_n`, before and after the activation.
#[inline(always)]
fn perturb_tile<A: ActivationFn>(
    op: &Operands,
    x_n: &[f32],
    group: usize,
    t0: usize,
    len: usize,
    pre: &mut [f32],
    post: &mut [f32],
) {
    let g = op.g;
    for j in 0..g.kg {
        let (c, noise_at) = g.source(group * g.kg + j);
        let xs = &x_n[c * g.hw + t0..][..len];
        let ns = &op.noise[noise_at + t0..][..len];
        let pre_j = &mut pre[j * TILE..][..len];
        let post_j = &mut post[j * TILE..][..len];
        for (((p, q), &xv), &nv) in pre_j.iter_mut().zip(post_j.iter_mut()).zip(xs).zip(ns) {
            let v = xv + op.level * nv;
            *p = v;
            *q = A::apply(v);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The general kernels: any activation.

/// `out_n = b + W * act(x_n + level * noise)` for one sample.
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma", "x86_64+avx", "aarch64+neon"))]
fn forward_sample<A: ActivationFn>(op: &Operands, bias: &[f32], x_n: &[f32], out_n: &mut [f32], scratch: &mut [f32]) {
    let g = op.g;
    if g.og == 1 {
        // One output per group (the layer's usual shape): each perturbed map is added to the
        // output row as it is computed, and never stored.
        for (o, row) in out_n.chunks_mut(g.hw).enumerate() {
            row.fill(bias[o]);
            for j in 0..g.kg {
                let (c, noise_at) = g.source(o * g.kg + j);
                let wv = op.weight[o * g.kg + j];
                let (xs, ns) = (&x_n[c * g.hw..][..g.hw], &op.noise[noise_at..][..g.hw]);
                for ((r, &xv), &nv) in row.iter_mut().zip(xs).zip(ns) {
                    *r += wv * A::apply(xv + op.level * nv);
                }
            }
        }
        return;
    }
    let (pre, post) = scratch.split_at_mut(g.kg * TILE);
    for group in 0..g.groups {
        for t0 in (0..g.hw).step_by(TILE) {
            let len = TILE.min(g.hw - t0);
            perturb_tile::<A>(op, x_n, group, t0, len, pre, post);
            for oo in 0..g.og {
                let o = group * g.og + oo;
                let mut acc = [0f32; TILE];
                let acc = &mut acc[..len];
                acc.fill(bias[o]);
                for (j, &wv) in op.weight[o * g.kg..][..g.kg].iter().enumerate() {
                    axpy(acc, wv, &post[j * TILE..][..len]);
                }
                out_n[o * g.hw + t0..][..len].copy_from_slice(acc);
            }
        }
    }
}

pub fn forward<A: ActivationFn>(op: &Operands, bias: &[f32]) -> Vec<f32> {
    let g = op.g;
    let mut out = vec![0f32; g.n * g.o * g.hw];
    out.par_chunks_mut(g.o * g.hw).enumerate().for_each_init(
        || vec![0f32; 2 * g.kg * TILE],
        |scratch, (n, out_n)| {
            let x_n = &op.x[n * g.c * g.hw..][..g.c * g.hw];
            forward_sample::<A>(op, bias, x_n, out_n, scratch);
        },
    );
    out
}

/// Sums over samples of the parameter gradients, one per thread.
struct Partial {
    noise: Vec<f32>,
    weight: Vec<f32>,
    bias: Vec<f32>,
}

impl Partial {
    fn zeros(g: &PerturbSizes, need_noise: bool) -> Self {
        Self {
            noise: vec![0.0; if need_noise { g.noise_c * g.m * g.hw } else { 0 }],
            weight: vec![0.0; g.o * g.kg],
            bias: vec![0.0; g.o],
        }
    }

    fn add(mut self, other: Self) -> Self {
        for (a, b) in [
            (&mut self.noise, &other.noise),
            (&mut self.weight, &other.weight),
            (&mut self.bias, &other.bias),
        ] {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
        }
        self
    }
}

/// The backward pass of one sample: writes `dx_n`, adds to the parameter sums in `acc`.
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma", "x86_64+avx", "aarch64+neon"))]
fn backward_sample<A: ActivationFn>(
    op: &Operands,
    x_n: &[f32],
    go_n: &[f32],
    dx_n: &mut [f32],
    acc: &mut Partial,
    scratch: &mut [f32],
) {
    let g = op.g;
    let need_noise = !acc.noise.is_empty();
    if g.og == 1 {
        for o in 0..g.o {
            let go = &go_n[o * g.hw..][..g.hw];
            acc.bias[o] += sum(go);
            for j in 0..g.kg {
                let (c, noise_at) = g.source(o * g.kg + j);
                let map = MapGrad {
                    x: &x_n[c * g.hw..][..g.hw],
                    noise: &op.noise[noise_at..][..g.hw],
                    go,
                    level: op.level,
                    weight: op.weight[o * g.kg + j],
                };
                let dx = &mut dx_n[c * g.hw..][..g.hw];
                acc.weight[o * g.kg + j] += if need_noise {
                    map.run::<A, true>(dx, &mut acc.noise[noise_at..][..g.hw])
                } else {
                    map.run::<A, false>(dx, &mut [])
                };
            }
        }
        return;
    }
    let (pre, rest) = scratch.split_at_mut(g.kg * TILE);
    let (post, dpost) = rest.split_at_mut(g.kg * TILE);
    for group in 0..g.groups {
        for t0 in (0..g.hw).step_by(TILE) {
            let len = TILE.min(g.hw - t0);
            perturb_tile::<A>(op, x_n, group, t0, len, pre, post);
            dpost.fill(0.0);
            for oo in 0..g.og {
                let o = group * g.og + oo;
                let go = &go_n[o * g.hw + t0..][..len];
                acc.bias[o] += sum(go);
                for j in 0..g.kg {
                    acc.weight[o * g.kg + j] += dot(go, &post[j * TILE..][..len]);
                    axpy(&mut dpost[j * TILE..][..len], op.weight[o * g.kg + j], go);
                }
            }
            // Through the activation to the perturbed input x + level * noise.
            for j in 0..g.kg {
                let (c, noise_at) = g.source(group * g.kg + j);
                let (pre_j, post_j, dpost_j) = (
                    &pre[j * TILE..][..len],
                    &post[j * TILE..][..len],
                    &mut dpost[j * TILE..][..len],
                );
                for ((d, &v), &a) in dpost_j.iter_mut().zip(pre_j).zip(post_j) {
                    *d *= A::derivative(v, a);
                }
                for (dx, d) in dx_n[c * g.hw + t0..][..len].iter_mut().zip(dpost_j.iter()) {
                    *dx += d;
                }
                if need_noise {
                    axpy(&mut acc.noise[noise_at + t0..][..len], op.level, dpost_j);
                }
            }
        }
    }
}

/// One perturbed map's share of the backward pass when it feeds a single output (og = 1).
struct MapGrad<'a> {
    x: &'a [f32],
    noise: &'a [f32],
    go: &'a [f32],
    level: f32,
    weight: f32,
}

impl MapGrad<'_> {
    /// In one pass over the pixels, with the map `a = act(x + level * noise)` recomputed: adds
    /// `d = weight * go * act'` to `dx` (and `level * d` to `dnoise` if NOISE), and returns the
    /// weight's gradient `go . a`.
    #[inline(always)]
    fn run<A: ActivationFn, const NOISE: bool>(&self, dx: &mut [f32], dnoise: &mut [f32]) -> f32 {
        // Fixed-size chunks, so that the lane loop has no bounds checks and vectorises.
        fn chunk(s: &[f32], at: usize) -> &[f32; LANES] {
            s[at..at + LANES].try_into().expect("a whole chunk")
        }
        fn chunk_mut(s: &mut [f32], at: usize) -> &mut [f32; LANES] {
            (&mut s[at..at + LANES]).try_into().expect("a whole chunk")
        }
        let len = self.x.len();
        let whole = len / LANES * LANES;
        let mut acc = [0f32; LANES];
        for base in (0..whole).step_by(LANES) {
            let (x, n, go) = (chunk(self.x, base), chunk(self.noise, base), chunk(self.go, base));
            let dx = chunk_mut(dx, base);
            let mut d = [0f32; LANES];
            for k in 0..LANES {
                let v = x[k] + self.level * n[k];
                let a = A::apply(v);
                acc[k] += go[k] * a;
                d[k] = self.weight * go[k] * A::derivative(v, a);
                dx[k] += d[k];
            }
            if NOISE {
                let dn = chunk_mut(dnoise, base);
                for k in 0..LANES {
                    dn[k] += self.level * d[k];
                }
            }
        }
        let mut tail = 0f32;
        for i in whole..len {
            let v = self.x[i] + self.level * self.noise[i];
            let a = A::apply(v);
            tail += self.go[i] * a;
            let d = self.weight * self.go[i] * A::derivative(v, a);
            dx[i] += d;
            if NOISE {
                dnoise[i] += self.level * d;
            }
        }
        acc.iter().sum::<f32>() + tail
    }
}

/// The parameter gradients are summed per block of samples, one block per thread (`blocks`).
pub fn backward<A: ActivationFn>(op: &Operands, grad_out: &[f32], need_noise: bool) -> Grads {
    let g = op.g;
    let block = block_len(g.n);
    let mut dx = vec![0f32; g.n * g.c * g.hw];
    let partial = dx
        .par_chunks_mut(block * g.c * g.hw)
        .enumerate()
        .map(|(b, dx_block)| {
            let mut acc = Partial::zeros(g, need_noise);
            let mut scratch = vec![0f32; 3 * g.kg * TILE];
            for (i, dx_n) in dx_block.chunks_mut(g.c * g.hw).enumerate() {
                let n = b * block + i;
                let x_n = &op.x[n * g.c * g.hw..][..g.c * g.hw];
                let go_n = &grad_out[n * g.o * g.hw..][..g.o * g.hw];
                backward_sample::<A>(op, x_n, go_n, dx_n, &mut acc, &mut scratch);
            }
            acc
        })
        .reduce(|| Partial::zeros(g, need_noise), Partial::add);
    Grads {
        x: dx,
        noise: partial.noise,
        weight: partial.weight,
        bias: partial.bias,
    }
}

// ---------------------------------------------------------------------------------------------
// The linear path: no activation after the noise.
//
//   out[n, o] = b[o] + sum_j W[o, j] x[n, c(j)] + level sum_j W[o, j] noise[j]
//             = b[o] + sum_{c in group} Wsum[o, c] x[n, c] + B[o]
//
// with Wsum[o, c] the sum of o's weights over the masks of channel c, and B[o] (a map) the same
// for every sample. Its cost is that of a grouped 1x1 convolution with C inputs, not C x M.

/// Whether the linear path applies to this geometry.
pub fn linear_applies(g: &PerturbSizes) -> bool {
    g.whole_channels()
}

/// Channels per group on the linear path.
fn channels_per_group(g: &PerturbSizes) -> usize {
    g.kg / g.m
}

/// Wsum [O, channels per group]: the weights summed over the masks of each channel.
fn summed_weights(op: &Operands) -> Vec<f32> {
    let g = op.g;
    let cpg = channels_per_group(g);
    let mut wsum = vec![0f32; g.o * cpg];
    for o in 0..g.o {
        for lc in 0..cpg {
            wsum[o * cpg + lc] = op.weight[o * g.kg + lc * g.m..][..g.m].iter().sum();
        }
    }
    wsum
}

/// B [O, HW]: `level * sum_j W[o, j] noise[j]`, the noise's share of every sample's output.
fn noise_term(op: &Operands) -> Vec<f32> {
    let g = op.g;
    let mut term = vec![0f32; g.o * g.hw];
    term.par_chunks_mut(g.hw).enumerate().for_each(|(o, row)| {
        let group = o / g.og;
        for j in 0..g.kg {
            let (_, noise_at) = g.source(group * g.kg + j);
            axpy(row, op.level * op.weight[o * g.kg + j], &op.noise[noise_at..][..g.hw]);
        }
    });
    term
}

pub fn linear_forward(op: &Operands, bias: &[f32]) -> Vec<f32> {
    let g = op.g;
    let cpg = channels_per_group(g);
    let wsum = summed_weights(op);
    let term = noise_term(op);
    let mut out = vec![0f32; g.n * g.o * g.hw];
    out.par_chunks_mut(g.o * g.hw).enumerate().for_each(|(n, out_n)| {
        for (o, row) in out_n.chunks_mut(g.hw).enumerate() {
            let c0 = (o / g.og) * cpg;
            for (r, t) in row.iter_mut().zip(&term[o * g.hw..][..g.hw]) {
                *r = bias[o] + t;
            }
            for lc in 0..cpg {
                axpy(row, wsum[o * cpg + lc], &op.x[(n * g.c + c0 + lc) * g.hw..][..g.hw]);
            }
        }
    });
    out
}

pub fn linear_backward(op: &Operands, grad_out: &[f32], need_noise: bool) -> Grads {
    let g = op.g;
    let cpg = channels_per_group(g);
    let wsum = summed_weights(op);
    let hw = g.hw;
    // G[o] = sum over samples of the output gradient: what the noise term and bias see.
    let mut gsum = vec![0f32; g.o * hw];
    gsum.par_chunks_mut(hw).enumerate().for_each(|(o, row)| {
        for n in 0..g.n {
            axpy(row, 1.0, &grad_out[(n * g.o + o) * hw..][..hw]);
        }
    });
    let bias: Vec<f32> = gsum.chunks(hw).map(sum).collect();
    // dW[o, j] = level G[o] . noise[j] + sum_n go[n, o] . x[n, c(j)].
    let mut weight = vec![0f32; g.o * g.kg];
    weight.par_chunks_mut(g.kg).enumerate().for_each(|(o, dw)| {
        let group = o / g.og;
        let mut by_channel = vec![0f32; cpg];
        for (lc, s) in by_channel.iter_mut().enumerate() {
            let c = group * cpg + lc;
            *s = (0..g.n)
                .map(|n| dot(&grad_out[(n * g.o + o) * hw..][..hw], &op.x[(n * g.c + c) * hw..][..hw]))
                .sum();
        }
        for (j, d) in dw.iter_mut().enumerate() {
            let (_, noise_at) = g.source(group * g.kg + j);
            *d = op.level * dot(&gsum[o * hw..][..hw], &op.noise[noise_at..][..hw]) + by_channel[j / g.m];
        }
    });
    // dx[n, c] = sum over the group's outputs of Wsum[o, c] go[n, o].
    let mut dx = vec![0f32; g.n * g.c * hw];
    dx.par_chunks_mut(g.c * hw).enumerate().for_each(|(n, dx_n)| {
        for (c, row) in dx_n.chunks_mut(hw).enumerate() {
            let (group, lc) = (c / cpg, c % cpg);
            for oo in 0..g.og {
                let o = group * g.og + oo;
                axpy(row, wsum[o * cpg + lc], &grad_out[(n * g.o + o) * hw..][..hw]);
            }
        }
    });
    // dnoise[j] = level sum_o W[o, j] G[o], summed over the channels sharing a mask.
    let mut noise = vec![0f32; if need_noise { g.noise_c * g.m * hw } else { 0 }];
    if need_noise {
        for o in 0..g.o {
            let group = o / g.og;
            for j in 0..g.kg {
                let (_, noise_at) = g.source(group * g.kg + j);
                axpy(
                    &mut noise[noise_at..][..hw],
                    op.level * op.weight[o * g.kg + j],
                    &gsum[o * hw..][..hw],
                );
            }
        }
    }
    Grads {
        x: dx,
        noise,
        weight,
        bias,
    }
}
