//! The models `tests/gpu.rs` runs on a GPU and on the CPU, by their flags. They live here so that
//! a CPU test (`tests/fused.rs`) checks every flag set is a valid configuration in the default
//! build: the GPU tests are built only with a GPU feature, so a config error in one of these
//! would otherwise show only where a GPU build runs.

/// (what, flags) of each model the GPU tests compare with the CPU.
pub const GPU_MODELS: &[(&str, &str)] = &[
    ("resnet18", "--net-type resnet18 --nfilters 8"),
    (
        "perturb_resnet18, many masks (the fused kernels)",
        "--net-type perturb_resnet18 --nfilters 12 --first_filter_size 3 --filter_size 0 --nmasks 6 --no-unique_masks",
    ),
    (
        "perturb_resnet18, mix_maps (burn's composition)",
        "--net-type perturb_resnet18 --nfilters 6 --first_filter_size 0 --filter_size 0 --nmasks 2 --mix_maps --use_act",
    ),
    (
        "noiseresnet18",
        "--net-type noiseresnet18 --nfilters 8 --first_filter_size 7",
    ),
    (
        "cifarnet",
        "--net-type cifarnet --nfilters 12 --first_filter_size 0 --filter_size 0 --nmasks 2 --dropout 0",
    ),
    (
        "lenet",
        "--net-type lenet --nfilters 6 --first_filter_size 0 --filter_size 0 --nmasks 3 --use_act --dropout 0",
    ),
];

/// The flags of the model named `what`.
pub fn gpu_model(what: &str) -> &'static str {
    GPU_MODELS
        .iter()
        .find(|(name, _)| *name == what)
        .unwrap_or_else(|| panic!("no GPU test model named {what}"))
        .1
}
