//! The fused perturbation kernel against the unfused composition it replaces: outputs and every
//! gradient (input, masks, weights, bias) must agree to float32 rounding, for shared and unique
//! masks, fixed and trainable ones, one and several masks, every activation it computes.

use burn::module::Module;
use burn::tensor::{Device, Distribution, Tensor};
use pnn::config::{Act, NoiseType};
use pnn::layer::fused::FusedAct;
use pnn::layer::{PerturbLayer, PerturbSpec};

struct Case {
    c_in: usize,
    c_out: usize,
    nmasks: usize,
    unique: bool,
    train_masks: bool,
    act: Act,
    use_act: bool,
    size: usize,
    batch: usize,
}

fn layer(case: &Case, device: &Device) -> PerturbLayer {
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

/// |a - b| small against the magnitude of the values: float32 rounding of sums of a few
/// hundred terms.
fn assert_same(a: Vec<f32>, b: Vec<f32>, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = a.iter().chain(&b).fold(1e-3f32, |m, v| m.max(v.abs()));
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(
            (x - y).abs() <= 2e-5 * scale,
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

fn check(case: Case, seed: u64) {
    let device = Device::flex().autodiff();
    device.seed(seed);
    let layer = layer(&case, &device);
    let act = layer.fused_act().expect("a fused activation");
    let x = Tensor::random(
        [case.batch, case.c_in, case.size, case.size],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    let r = Tensor::random(
        [case.batch, case.c_out, case.size, case.size],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    let what = format!(
        "c {} -> {}, {} masks, unique {}, trainable {}, {:?}, use_act {}",
        case.c_in, case.c_out, case.nmasks, case.unique, case.train_masks, case.act, case.use_act
    );
    let fused = run(&layer, &x, &r, Some(act));
    let unfused = run(&layer, &x, &r, None);
    assert_same(fused.0, unfused.0, &format!("{what}: output"));
    assert_same(fused.1, unfused.1, &format!("{what}: input gradient"));
    assert_eq!(
        fused.2.is_some(),
        case.train_masks,
        "{what}: masks get a gradient iff trainable"
    );
    if let (Some(a), Some(b)) = (fused.2, unfused.2) {
        assert_same(a, b, &format!("{what}: mask gradient"));
    }
    assert_same(fused.3, unfused.3, &format!("{what}: weight gradient"));
    assert_same(fused.4, unfused.4, &format!("{what}: bias gradient"));
}

#[test]
fn fused_kernel_matches_the_composition_for_every_mask_layout() {
    let cases = [
        // nmasks 1: an ungrouped 1x1 convolution over all channels.
        (3, 6, 1, true, false, 5, 2),
        (3, 5, 1, true, true, 4, 3),
        // Several masks: grouped by input channel, unique or shared masks.
        (2, 4, 3, true, true, 5, 2),
        (4, 8, 5, false, true, 3, 2),
        (3, 3, 2, false, false, 6, 1),
        (2, 6, 4, true, false, 4, 3),
    ];
    for (i, (c_in, c_out, nmasks, unique, train_masks, size, batch)) in cases.into_iter().enumerate() {
        check(
            Case {
                c_in,
                c_out,
                nmasks,
                unique,
                train_masks,
                act: Act::Relu,
                use_act: true,
                size,
                batch,
            },
            i as u64,
        );
    }
}

#[test]
fn fused_kernel_matches_the_composition_for_every_activation() {
    for (i, act) in [Act::Relu, Act::Lrelu, Act::Elu, Act::Selu, Act::Tanh, Act::Sigmoid]
        .into_iter()
        .enumerate()
    {
        for use_act in [true, false] {
            check(
                Case {
                    c_in: 2,
                    c_out: 4,
                    nmasks: 3,
                    unique: i % 2 == 0,
                    train_masks: true,
                    act,
                    use_act,
                    size: 4,
                    batch: 2,
                },
                10 + i as u64,
            );
        }
    }
}

/// Maps larger than one tile of the kernel (64 pixels) and not a multiple of it, batches split
/// unevenly over threads, 64 masks: with and without an activation (the linear path).
#[test]
fn fused_kernel_matches_the_composition_across_tiles_and_threads() {
    let cases = [
        // (c_in, c_out, nmasks, unique, train_masks, use_act, size, batch)
        (3, 6, 4, false, true, true, 9, 5),
        (2, 4, 64, true, true, true, 11, 3),
        (2, 2, 64, false, true, false, 11, 3),
        (3, 6, 5, true, true, false, 9, 5),
        (4, 4, 3, false, false, false, 13, 2),
    ];
    for (i, (c_in, c_out, nmasks, unique, train_masks, use_act, size, batch)) in cases.into_iter().enumerate() {
        check(
            Case {
                c_in,
                c_out,
                nmasks,
                unique,
                train_masks,
                act: Act::Relu,
                use_act,
                size,
                batch,
            },
            30 + i as u64,
        );
    }
}

#[test]
fn layers_without_a_fused_form_use_the_composition() {
    let device = Device::flex().autodiff();
    for act in [Act::Prelu, Act::Rrelu] {
        let case = Case {
            c_in: 2,
            c_out: 4,
            nmasks: 2,
            unique: true,
            train_masks: false,
            act,
            use_act: true,
            size: 4,
            batch: 2,
        };
        let layer = layer(&case, &device);
        assert_eq!(layer.fused_act(), None, "{act:?}");
        let y = layer.forward(Tensor::random([2, 2, 4, 4], Distribution::Normal(0.0, 1.0), &device));
        assert_eq!(y.dims(), [2, 4, 4, 4]);
    }
    // No activation after the noise: every activation has a fused (identity) form.
    let case = Case {
        c_in: 2,
        c_out: 4,
        nmasks: 2,
        unique: true,
        train_masks: false,
        act: Act::Prelu,
        use_act: false,
        size: 4,
        batch: 2,
    };
    assert_eq!(layer(&case, &device).fused_act(), Some(FusedAct::Identity));
    let _ = layer(&case, &device).valid();
}
