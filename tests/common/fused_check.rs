//! The fused perturbation layer against the unfused composition it replaces, on any device:
//! shared by tests/fused.rs (the CPU loops) and tests/gpu.rs (the CubeCL kernels).

use burn::module::Module;
use burn::tensor::{Device, Distribution, Tensor};
use pnn::config::{Act, NoiseType};
use pnn::layer::{PerturbLayer, PerturbSpec};
use pnn::ops::activation::FusedAct;

pub struct Case {
    pub c_in: usize,
    pub c_out: usize,
    pub nmasks: usize,
    pub unique: bool,
    pub train_masks: bool,
    pub act: Act,
    pub use_act: bool,
    pub size: usize,
    pub batch: usize,
}

pub fn layer(case: &Case, device: &Device) -> PerturbLayer {
    PerturbSpec {
        in_channels: case.c_in,
        out_channels: case.c_out,
        filter_size: 0,
        nmasks: case.nmasks,
        level: 0.7,
        noise_type: NoiseType::Uniform,
        use_act: case.use_act,
        act: case.act,
        unique_masks: case.unique,
        train_masks: case.train_masks,
        mix_maps: false,
        input_size: case.size,
        debug: false,
    }
    .init(device)
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

/// |a - b| within `tolerance` of the magnitude of the values: float32 rounding of sums of a few
/// hundred terms.
fn assert_same(a: Vec<f32>, b: Vec<f32>, tolerance: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = a.iter().chain(&b).fold(1e-3f32, |m, v| m.max(v.abs()));
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(
            (x - y).abs() <= tolerance * scale,
            "{what}[{i}]: fused {x} vs unfused {y} (scale {scale})"
        );
    }
}

/// Output and gradients of sum(combine(x) * r) by one of the two paths.
fn run(
    layer: &PerturbLayer,
    x: &Tensor<4>,
    r: &Tensor<4>,
    fused: Option<FusedAct>,
) -> (Vec<f32>, Vec<f32>, Option<Vec<f32>>, Vec<f32>, Vec<f32>) {
    let x = x.clone().require_grad();
    let noise = layer.noise.as_ref().unwrap().val();
    let y = match fused {
        Some(act) => layer.combine_fused(x.clone(), noise, act),
        None => layer.combine_unfused(x.clone(), noise),
    };
    let grads = (y.clone() * r.clone()).sum().backward();
    (
        values(y),
        values(x.grad(&grads).unwrap()),
        layer.noise.as_ref().unwrap().grad(&grads).map(values),
        values(layer.conv.weight.grad(&grads).unwrap()),
        values(layer.conv.bias.as_ref().unwrap().grad(&grads).unwrap()),
    )
}

/// What the fused path on a device is checked against.
#[derive(Clone, Copy, PartialEq)]
pub enum Reference {
    /// burn's composition on the same device.
    Composition,
    /// The fused path on the CPU (flex's loops), from the same layer and inputs.
    CpuKernel,
}

/// The fused path against the composition on `device` (an autodiff device), outputs and every
/// gradient within `tolerance` (relative to the largest value).
pub fn check(case: Case, seed: u64, device: &Device, tolerance: f32) {
    check_against(case, seed, device, Reference::Composition, tolerance)
}

pub fn check_against(case: Case, seed: u64, device: &Device, reference: Reference, tolerance: f32) {
    // With the CPU as the reference, layer and inputs are drawn there and moved.
    let cpu = Device::flex().autodiff();
    let origin = if reference == Reference::CpuKernel {
        cpu.clone()
    } else {
        device.clone()
    };
    origin.seed(seed);
    let layer = layer(&case, &origin);
    let act = layer.fused_act().expect("a fused activation");
    let x = Tensor::random(
        [case.batch, case.c_in, case.size, case.size],
        Distribution::Normal(0.0, 1.0),
        &origin,
    );
    let r = Tensor::random(
        [case.batch, case.c_out, case.size, case.size],
        Distribution::Normal(0.0, 1.0),
        &origin,
    );
    let here = |t: &Tensor<4>| t.clone().to_device(device);
    let fused = run(&layer.clone().fork(device), &here(&x), &here(&r), Some(act));
    let unfused = match reference {
        Reference::Composition => run(&layer, &x, &r, None),
        Reference::CpuKernel => run(&layer, &x, &r, Some(act)),
    };
    let what = format!(
        "c {} -> {}, {} masks, unique {}, trainable {}, {:?}, use_act {}",
        case.c_in, case.c_out, case.nmasks, case.unique, case.train_masks, case.act, case.use_act
    );
    assert_same(fused.0, unfused.0, tolerance, &format!("{what}: output"));
    assert_same(fused.1, unfused.1, tolerance, &format!("{what}: input gradient"));
    assert_eq!(
        fused.2.is_some(),
        case.train_masks,
        "{what}: masks get a gradient iff trainable"
    );
    if let (Some(a), Some(b)) = (fused.2, unfused.2) {
        assert_same(a, b, tolerance, &format!("{what}: mask gradient"));
    }
    assert_same(fused.3, unfused.3, tolerance, &format!("{what}: weight gradient"));
    assert_same(fused.4, unfused.4, tolerance, &format!("{what}: bias gradient"));
}

/// nmasks 1 (an ungrouped 1x1 convolution over all channels), then several masks (grouped by
/// input channel), unique or shared, fixed or trainable.
pub fn mask_layout_cases() -> Vec<(Case, u64)> {
    relu_cases(
        &[
            // (c_in, c_out, nmasks, unique, train_masks, use_act, size, batch)
            (3, 6, 1, true, false, true, 5, 2),
            (3, 5, 1, true, true, true, 4, 3),
            (2, 4, 3, true, true, true, 5, 2),
            (4, 8, 5, false, true, true, 3, 2),
            (3, 3, 2, false, false, true, 6, 1),
            (2, 6, 4, true, false, true, 4, 3),
        ],
        0,
    )
}

/// Every activation the kernel computes, after the noise or not (identity).
pub fn activation_cases() -> Vec<(Case, u64)> {
    let mut cases = Vec::new();
    for (i, act) in [Act::Relu, Act::Lrelu, Act::Elu, Act::Selu, Act::Tanh, Act::Sigmoid]
        .into_iter()
        .enumerate()
    {
        for use_act in [true, false] {
            let case = Case {
                c_in: 2,
                c_out: 4,
                nmasks: 3,
                unique: i % 2 == 0,
                train_masks: true,
                act,
                use_act,
                size: 4,
                batch: 2,
            };
            cases.push((case, 10 + i as u64));
        }
    }
    cases
}

/// Maps larger than one tile of the CPU kernel (64 pixels) and not a multiple of it, batches
/// split unevenly over threads, 64 masks: with and without an activation (the linear path), and
/// one output per input channel with fixed masks.
/// The last row is for the GPU's two-stage mask gradient: 16 x 64 x 64 shared mask values, each
/// read by 3 samples x 5 channels, split into 4 chunks of 4 pairs, the last one short.
pub fn tile_cases() -> Vec<(Case, u64)> {
    relu_cases(
        &[
            (3, 6, 4, false, true, true, 9, 5),
            (2, 4, 64, true, true, true, 11, 3),
            (2, 2, 64, false, true, false, 11, 3),
            (3, 6, 5, true, true, false, 9, 5),
            (4, 4, 3, false, false, false, 13, 2),
            // One output per channel (og = 1): a 64-pixel run, a 16-pixel chunk and one pixel
            // past it, fixed masks.
            (3, 3, 8, true, false, true, 9, 2),
            (5, 5, 16, false, true, true, 64, 3),
        ],
        30,
    )
}

type Row = (usize, usize, usize, bool, bool, bool, usize, usize);

/// ReLU cases from rows of (c_in, c_out, nmasks, unique, train_masks, use_act, size, batch),
/// seeded from `first_seed` on.
fn relu_cases(rows: &[Row], first_seed: u64) -> Vec<(Case, u64)> {
    rows.iter()
        .enumerate()
        .map(
            |(i, &(c_in, c_out, nmasks, unique, train_masks, use_act, size, batch))| {
                let case = Case {
                    c_in,
                    c_out,
                    nmasks,
                    unique,
                    train_masks,
                    act: Act::Relu,
                    use_act,
                    size,
                    batch,
                };
                (case, first_seed + i as u64)
            },
        )
        .collect()
}
