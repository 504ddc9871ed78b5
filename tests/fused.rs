//! The fused perturbation kernel against the unfused composition it replaces: outputs and every
//! gradient (input, masks, weights, bias) must agree to float32 rounding, for shared and unique
//! masks, fixed and trainable ones, one and several masks, every activation it computes.
//! (tests/gpu.rs runs the same cases on a GPU.)

mod common;

use burn::module::Module;
use burn::tensor::{Device, Distribution, Tensor};
use common::fused_check::{Case, activation_cases, check, layer, mask_layout_cases, tile_cases};
use pnn::config::Act;
use pnn::layer::fused::FusedAct;

/// float32 rounding of sums of a few hundred terms, in another order.
const TOLERANCE: f32 = 2e-5;

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
