//! The GPU backend against the CPU: the same models, with the same weights and inputs, give the
//! same loss, outputs and gradients on `--device vulkan` as on the CPU. On the GPU every layer
//! runs burn's own operations (the perturbation layer as the reference's composition), on the
//! CPU pnn's hand-written ones (the fused perturbation layer), so this also checks one against
//! the other on real hardware.
//!
//! Built only with `--features vulkan`; without a Vulkan device each test prints why it did
//! not run and passes, unless `PNN_REQUIRE_GPU=1` (as `scripts/gpu-check.sh` sets on the GPU
//! machine) makes a missing device a failure.

#[cfg(feature = "vulkan")]
mod common;

#[cfg(feature = "vulkan")]
mod on_vulkan {
    use super::common::fused_check::{
        Reference, activation_cases, check, check_against, mask_layout_cases, tile_cases,
    };
    use burn::module::Module;
    use burn::nn::loss::CrossEntropyLoss;
    use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
    use pnn::config::TrainArgs;
    use pnn::device::Backend;
    use pnn::models::{self, Geometry};

    /// The Vulkan device, or why there is none (a missing loader or driver panics inside wgpu).
    fn vulkan() -> Option<Device> {
        match Backend::parse("vulkan") {
            Ok(backend) => Some(backend.device),
            Err(e) if std::env::var("PNN_REQUIRE_GPU").is_ok_and(|v| v == "1") => {
                panic!("{e:#}, and PNN_REQUIRE_GPU=1 says there must be one")
            }
            Err(e) => {
                eprintln!("skipped: {e:#}");
                None
            }
        }
    }

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    fn assert_close(gpu: &[f32], cpu: &[f32], tolerance: f32, what: &str) {
        assert_eq!(gpu.len(), cpu.len(), "{what}: lengths");
        let scale = cpu.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        for (i, (g, c)) in gpu.iter().zip(cpu).enumerate() {
            assert!(
                (g - c).abs() <= tolerance * scale,
                "{what}[{i}]: vulkan {g} vs cpu {c} (scale {scale})"
            );
        }
    }

    /// One training step's loss, logits and input gradient of a model given by its flags, on
    /// both devices, from the same weights (built on the CPU, then moved).
    fn compare(flags: &str, batch: usize) {
        let Some(gpu) = vulkan() else { return };
        let args = TrainArgs::parse_flags(flags.split_whitespace()).unwrap();
        let config = args.to_config().unwrap();
        let geometry = Geometry {
            channels: 3,
            input_size: 32,
            num_classes: 10,
        };
        let cpu = Device::flex();
        cpu.seed(3);
        let images = Tensor::<4>::random([batch, 3, 32, 32], Distribution::Normal(0.0, 1.0), &cpu);
        let labels: Vec<i64> = (0..batch as i64).map(|i| i % 10).collect();
        let mut results = Vec::new();
        for device in [cpu.clone(), gpu.clone()] {
            // The same weights and masks: built on the CPU from the same seed, then moved. Not
            // one model cloned: clones share BatchNorm's running statistics, which the first
            // device's step would leave on that device. And a forward pass first: burn draws a
            // parameter's initial values when it is first read, and a parameter moved before
            // that is drawn on the new device, from that device's generator.
            cpu.seed(7);
            let model = models::build_for(&config, geometry, &cpu).unwrap();
            let _ = model.forward(images.clone());
            let device = device.autodiff();
            let model = model.fork(&device);
            let x = Tensor::<4>::from_data(images.to_data(), &device).require_grad();
            let y = Tensor::<1, Int>::from_data(TensorData::new(labels.clone(), [batch]), &device);
            let logits = model.forward(x.clone());
            let loss = CrossEntropyLoss::new(None, &device).forward(logits.clone(), y);
            let grads = loss.backward();
            let dx = x.grad(&grads).expect("the input has a gradient");
            results.push((values(loss.detach().reshape([1])), values(logits.detach()), values(dx)));
        }
        let (cpu_r, gpu_r) = (&results[0], &results[1]);
        assert_close(&gpu_r.0, &cpu_r.0, 1e-3, &format!("{flags}: loss"));
        assert_close(&gpu_r.1, &cpu_r.1, 1e-3, &format!("{flags}: logits"));
        assert_close(&gpu_r.2, &cpu_r.2, 2e-3, &format!("{flags}: input gradient"));
    }

    /// The fused layer's CubeCL kernels against burn's composition on the same GPU: the cases of
    /// tests/fused.rs. (GPU exp and tanh round differently from the CPU's: a looser tolerance.)
    #[test]
    fn fused_kernels_match_the_composition_on_the_gpu() {
        let Some(gpu) = vulkan() else { return };
        for (case, seed) in mask_layout_cases()
            .into_iter()
            .chain(activation_cases())
            .chain(tile_cases())
        {
            check(case, seed, &gpu.clone().autodiff(), 1e-4);
        }
    }

    /// The same cases against the CPU's fused loops (no GPU convolution involved).
    #[test]
    fn fused_kernels_match_the_cpu_kernels() {
        let Some(gpu) = vulkan() else { return };
        for (case, seed) in mask_layout_cases()
            .into_iter()
            .chain(activation_cases())
            .chain(tile_cases())
        {
            check_against(case, seed, &gpu.clone().autodiff(), Reference::CpuKernel, 1e-4);
        }
    }

    #[test]
    fn resnet18_matches_the_cpu() {
        compare("--net-type resnet18 --nfilters 8", 4);
    }

    #[test]
    fn perturb_resnet18_with_many_masks_matches_the_cpus_fused_layer() {
        compare(
            "--net-type perturb_resnet18 --nfilters 12 --first_filter_size 3 --filter_size 0 --nmasks 6 --no-unique_masks",
            4,
        );
    }

    #[test]
    fn perturb_resnet18_with_one_mask_and_mix_maps_matches_the_cpu() {
        compare(
            "--net-type perturb_resnet18 --nfilters 6 --first_filter_size 0 --filter_size 0 --nmasks 2 --mix_maps --use_act",
            4,
        );
    }

    #[test]
    fn noiseresnet18_cifarnet_and_lenet_match_the_cpu() {
        compare("--net-type noiseresnet18 --nfilters 8 --first_filter_size 7", 4);
        compare(
            "--net-type cifarnet --nfilters 12 --first_filter_size 0 --filter_size 0 --nmasks 2 --dropout 0",
            4,
        );
        compare(
            "--net-type lenet --nfilters 8 --first_filter_size 0 --filter_size 0 --nmasks 3 --use_act --dropout 0",
            4,
        );
    }
}

#[cfg(not(feature = "vulkan"))]
#[test]
fn gpu_tests_need_the_vulkan_feature() {
    eprintln!("skipped: this test binary was built without --features vulkan (scripts/gpu-check.sh builds it)");
}
