//! The fused perturbation kernel against the unfused composition it replaces: outputs and every
//! gradient (input, masks, weights, bias) must agree to float32 rounding, for shared and unique
//! masks, fixed and trainable ones, one and several masks, every activation it computes.
//! (tests/gpu.rs runs the same cases on a GPU.)

mod common;

use burn::module::Module;
use burn::tensor::{Device, Distribution, Tensor};
use common::fused_check::{Case, activation_cases, check, layer, mask_layout_cases, tile_cases};
use pnn::config::Act;
use pnn::ops::activation::FusedAct;

/// float32 rounding of sums of a few hundred terms, in another order.
const TOLERANCE: f32 = 2e-5;

/// The activation table: over a grid of inputs, each activation's f32 value and derivative (what
/// the CPU loops compute; the GPU kernels are checked against those in tests/gpu.rs) agree with
/// the theory's f64 formulas, and each derivative with a central difference of the value.
#[test]
fn every_activation_agrees_with_its_f64_form_and_its_derivative() {
    use pnn::ops::activation::{apply, derivative};
    use pnn::theory::features::activate;
    let all = [
        FusedAct::Identity,
        FusedAct::Relu,
        FusedAct::Lrelu,
        FusedAct::Elu,
        FusedAct::Selu,
        FusedAct::Tanh,
        FusedAct::Sigmoid,
    ];
    // Half-steps keep the grid off 0, where ReLU's, leaky ReLU's and SELU's slopes jump.
    for act in all {
        for i in 0..96 {
            let v = -6.0 + 0.125 * (2 * i + 1) as f64;
            let exact = activate(act, v);
            let value = apply(act, v as f32) as f64;
            assert!(
                (value - exact).abs() <= 1e-6 * (1.0 + exact.abs()),
                "{act:?}({v}): {value} vs {exact}"
            );
            let h = 1e-4;
            let slope = (activate(act, v + h) - activate(act, v - h)) / (2.0 * h);
            let d = derivative(act, v as f32) as f64;
            assert!(
                (d - slope).abs() <= 1e-4 * (1.0 + slope.abs()),
                "{act:?}'({v}): {d} vs {slope}"
            );
        }
        assert_eq!(FusedAct::from_code(act.code()), act);
    }
}

#[test]
fn fused_kernel_matches_the_composition_for_every_mask_layout() {
    for (case, seed) in mask_layout_cases() {
        check(case, seed, &Device::flex().autodiff(), TOLERANCE);
    }
}

#[test]
fn fused_kernel_matches_the_composition_for_every_activation() {
    for (case, seed) in activation_cases() {
        check(case, seed, &Device::flex().autodiff(), TOLERANCE);
    }
}

#[test]
fn fused_kernel_matches_the_composition_across_tiles_and_threads() {
    for (case, seed) in tile_cases() {
        check(case, seed, &Device::flex().autodiff(), TOLERANCE);
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

/// Every model tests/gpu.rs compares across devices is a valid configuration that builds and
/// runs a forward pass on the CPU: those tests run only on a GPU machine, so a bad flag set
/// would otherwise show up only there.
#[test]
fn the_gpu_tests_models_build_on_the_cpu() {
    use common::gpu_models::GPU_MODELS;
    use pnn::config::TrainArgs;
    use pnn::models::{self, Geometry};
    let device = Device::flex();
    let geometry = Geometry {
        channels: 3,
        input_size: 32,
        num_classes: 10,
    };
    for (what, flags) in GPU_MODELS {
        let config = TrainArgs::parse_flags(flags.split_whitespace())
            .and_then(|args| args.to_config())
            .unwrap_or_else(|e| panic!("{what} ({flags}): {e:#}"));
        let model = models::build_for(&config, geometry, &device).unwrap_or_else(|e| panic!("{what}: {e:#}"));
        let logits = model.forward(Tensor::random([2, 3, 32, 32], Distribution::Normal(0.0, 1.0), &device));
        assert_eq!(logits.dims(), [2, 10], "{what}");
    }
}
