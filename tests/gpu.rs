//! The GPU backend against the CPU: the same models, with the same weights and inputs, give the
//! same loss, outputs and gradients on the GPU as on the CPU. On the GPU every layer
//! runs burn's own operations (the perturbation layer as the reference's composition), on the
//! CPU pnn's hand-written ones (the fused perturbation layer), so this also checks one against
//! the other on real hardware.
//!
//! Built only with a GPU feature (`vulkan`, `wgpu` or `cuda`). The device is `PNN_TEST_DEVICE`
//! (a `--device` value), else the build's first of vulkan, cuda, wgpu. Without that device each
//! test prints why it did not run and passes, unless `PNN_REQUIRE_GPU=1` (as
//! `scripts/gpu-check.sh` sets on the GPU machine) makes a missing device a failure.
//!
//! A `--features wgpu` build runs these on a machine without a GPU through Mesa's CPU Vulkan
//! driver (lavapipe: `scripts/gpu-tests-lavapipe.sh` installs it and runs these), which is how the kernels are checked here
//! without a GPU.

#[cfg(feature = "gpu")]
mod common;

#[cfg(feature = "gpu")]
mod on_gpu {
    use super::common::fused_check::{
        Reference, activation_cases, check, check_against, mask_layout_cases, tile_cases,
    };
    use super::common::gpu_models::gpu_model;
    use super::common::rng_lock;
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::nn::loss::CrossEntropyLoss;
    use burn::optim::GradientsParams;
    use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
    use pnn::config::{Config, TrainArgs};
    use pnn::data::Batch;
    use pnn::device::Backend;
    use pnn::models::{self, Geometry, Net};
    use pnn::train::RunOptions;
    use pnn::train::step::StepDevices;

    /// The device under test: `PNN_TEST_DEVICE`, else the build's first GPU feature.
    fn device_spec() -> String {
        std::env::var("PNN_TEST_DEVICE").unwrap_or_else(|_| {
            let built = if cfg!(feature = "vulkan") {
                "vulkan"
            } else if cfg!(feature = "cuda") {
                "cuda"
            } else {
                "wgpu"
            };
            built.to_string()
        })
    }

    /// The GPU, or why there is none (a missing loader or driver panics inside wgpu).
    fn gpu_device() -> Option<Device> {
        match Backend::parse(&device_spec()) {
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

    /// Every value within `tolerance` of the CPU's largest, except at most `outliers` of them.
    fn assert_close(gpu: &[f32], cpu: &[f32], tolerance: f32, outliers: usize, what: &str) {
        assert_eq!(gpu.len(), cpu.len(), "{what}: lengths");
        let scale = cpu.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        let off: Vec<String> = gpu
            .iter()
            .zip(cpu)
            .enumerate()
            .filter(|(_, (g, c))| (*g - *c).abs() > tolerance * scale)
            .map(|(i, (g, c))| format!("[{i}] gpu {g} vs cpu {c}"))
            .collect();
        assert!(
            off.len() <= outliers,
            "{what}: {} of {} values differ by more than {tolerance} x {scale} (at most {outliers} may): {}",
            off.len(),
            gpu.len(),
            off.iter().take(8).cloned().collect::<Vec<_>>().join(", ")
        );
        if !off.is_empty() {
            eprintln!(
                "{what}: {} isolated value(s) off, allowed: {}",
                off.len(),
                off.join(", ")
            );
        }
    }

    /// One training step's loss, logits and input gradient of a model given by its flags, on
    /// both devices, from the same weights (built on the CPU, then moved).
    fn compare(flags: &str, batch: usize) {
        let Some(gpu) = gpu_device() else { return };
        // Both models must get the same draws from the CPU's generator, which the other tests
        // of this binary, running in parallel, also seed and draw from.
        let _rng = rng_lock();
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
        assert_close(&gpu_r.0, &cpu_r.0, 1e-3, 0, &format!("{flags}: loss"));
        assert_close(&gpu_r.1, &cpu_r.1, 1e-3, 0, &format!("{flags}: logits"));
        // ReLU's derivative jumps at 0: a value within float rounding of 0 before a ReLU can be
        // on one side on the CPU and on the other on the GPU, and then the input gradient differs
        // at the pixels under it. The CPU alone shows it, its BatchNorm kernel against burn's
        // (PNN_UNFUSED=1): for the mix_maps model below, a block's BatchNorm gave -4.8e-7 at one
        // value, which burn's rounds to the other side, and 2 of the input gradient's 12,288
        // values moved (of 7 input seeds tried, one other moved 1). Up to 1 in 2,000 values may do so; a wrong
        // kernel moves far more.
        let outliers = gpu_r.2.len() / 2000;
        assert_close(&gpu_r.2, &cpu_r.2, 2e-3, outliers, &format!("{flags}: input gradient"));
    }

    /// The fused layer's CubeCL kernels against burn's composition on the same GPU: the cases of
    /// tests/fused.rs. (GPU exp and tanh round differently from the CPU's: a looser tolerance.)
    #[test]
    fn fused_kernels_match_the_composition_on_the_gpu() {
        let Some(gpu) = gpu_device() else { return };
        let _rng = rng_lock();
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
        let Some(gpu) = gpu_device() else { return };
        let _rng = rng_lock();
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
        compare(gpu_model("resnet18"), 4);
    }

    #[test]
    fn perturb_resnet18_with_many_masks_matches_the_cpus_fused_layer() {
        compare(gpu_model("perturb_resnet18, many masks (the fused kernels)"), 4);
    }

    #[test]
    fn perturb_resnet18_with_mix_maps_matches_the_cpu() {
        compare(gpu_model("perturb_resnet18, mix_maps (burn's composition)"), 4);
    }

    #[test]
    fn noiseresnet18_cifarnet_and_lenet_match_the_cpu() {
        for what in ["noiseresnet18", "cifarnet", "lenet"] {
            compare(gpu_model(what), 4);
        }
    }

    /// A second device beside `first` for the data-parallel tests: another device of the same
    /// API (on lavapipe, wgpu's CPU device beside its default one; on a machine with one GPU,
    /// that GPU opened a second time), or why there is none.
    fn second_device(first: &Device) -> Option<Device> {
        #[allow(unused_mut)]
        let mut candidates: Vec<Device> = Vec::new();
        let spec = device_spec();
        #[cfg(feature = "wgpu")]
        if spec.starts_with("wgpu") {
            use burn::tensor::DeviceKind;
            candidates.extend(
                [
                    DeviceKind::Cpu,
                    DeviceKind::DiscreteGpu(0),
                    DeviceKind::IntegratedGpu(0),
                ]
                .map(Device::wgpu),
            );
        }
        #[cfg(feature = "vulkan")]
        if spec.starts_with("vulkan") {
            use burn::tensor::DeviceKind;
            candidates.extend([DeviceKind::DiscreteGpu(0), DeviceKind::IntegratedGpu(0)].map(Device::vulkan));
        }
        #[cfg(feature = "cuda")]
        if spec.starts_with("cuda") {
            candidates.push(Device::cuda(1));
        }
        let found = candidates.into_iter().find(|d| d != first && pnn::device::answers(d));
        if found.is_none() {
            let why = format!("no second {spec} device beside {first:?} answers");
            // A wgpu-backed API opens its one adapter twice, so PNN_REQUIRE_GPU holds these
            // tests to it; CUDA needs a second GPU, which a one-GPU machine does not have.
            if !spec.starts_with("cuda") && std::env::var("PNN_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("{why}, and PNN_REQUIRE_GPU=1 says the data-parallel tests must run");
            }
            eprintln!("skipped: {why}");
        }
        found
    }

    /// Each float of a model (parameters, running statistics, masks) in visiting order, by name.
    fn named_values(model: &Net) -> Vec<(String, Vec<f32>)> {
        #[derive(Default)]
        struct Names {
            path: Vec<String>,
            values: Vec<(String, Vec<f32>)>,
        }
        impl ModuleVisitor for Names {
            fn enter_module(&mut self, name: &str, _: &str) {
                self.path.push(name.to_string());
            }
            fn exit_module(&mut self, _: &str, _: &str) {
                self.path.pop();
            }
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                self.values.push((self.path.join("."), values(param.val())));
            }
        }
        let mut names = Names::default();
        model.visit(&mut names);
        names.values
    }

    /// Each gradient in `grads` of a parameter of `model`, in visiting order (None where a
    /// parameter has none: the fixed noise masks, the running statistics).
    fn gradients_in_order(model: &Net, grads: &GradientsParams, device: &Device) -> Vec<Option<Vec<f32>>> {
        struct Collect<'a> {
            grads: &'a GradientsParams,
            device: Device,
            out: Vec<Option<Vec<f32>>>,
        }
        impl ModuleVisitor for Collect<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                let grad = self.grads.get::<D>(param.id).map(|g| {
                    assert_eq!(
                        g.device().without_autodiff(),
                        self.device,
                        "a gradient is on the model's device"
                    );
                    values(g)
                });
                self.out.push(grad);
            }
        }
        let mut collect = Collect {
            grads,
            device: device.clone().without_autodiff(),
            out: Vec::new(),
        };
        model.visit(&mut collect);
        collect.out
    }

    /// The model of `config`, built on the CPU from seed 7 and moved to `device` (with
    /// autodiff) for training: the same weights and masks each call.
    fn model_on(config: &Config, geometry: Geometry, device: &Device) -> Net {
        let cpu = Device::flex();
        cpu.seed(7);
        // Built without autodiff, the parameters track gradients once `train` says so.
        models::build_for(config, geometry, &cpu).unwrap().fork(device).train()
    }

    /// Data parallel over two devices computes, for the same batch, what one device computes
    /// for the same parts one after the other: each part's loss scaled by its share of the
    /// batch, the gradients summed on the model's device. The model keeps the running
    /// statistics of its own part, as PyTorch's DataParallel keeps device 0's.
    #[test]
    fn data_parallel_step_is_the_sum_of_its_parts_on_one_device() {
        let Some(first) = gpu_device() else { return };
        let Some(second) = second_device(&first) else { return };
        let _rng = rng_lock();
        let geometry = Geometry {
            channels: 3,
            input_size: 32,
            num_classes: 10,
        };
        let device = first.clone().autodiff();
        let loss_fn = CrossEntropyLoss::new(None, &device);
        for what in ["lenet", "perturb_resnet18, many masks (the fused kernels)"] {
            let config = TrainArgs::parse_flags(gpu_model(what).split_whitespace())
                .unwrap()
                .to_config()
                .unwrap();
            // 7 images: parts of 4 and 3, so the shares differ.
            let n = 7;
            let cpu = Device::flex();
            cpu.seed(3);
            let images = Tensor::<4>::random([n, 3, 32, 32], Distribution::Normal(0.0, 1.0), &cpu);
            let batch = Batch {
                images: values(images),
                labels: (0..n as i64).map(|i| (i * 3) % 10).collect(),
                shape: [n, 3, 32, 32],
            };

            let model = model_on(&config, geometry, &device);
            let mut devices = StepDevices::new(&config, geometry, &first, &[second.clone()]).unwrap();
            devices.seed(11);
            let parallel = devices.forward_backward(&model, &batch, &loss_fn).unwrap();
            let parallel_grads = gradients_in_order(&model, &parallel.grads, &first);

            let reference = model_on(&config, geometry, &device);
            let mut loss = 0.0;
            let mut correct = 0;
            let mut summed: Vec<Option<Vec<f32>>> = Vec::new();
            for part in batch.split(2) {
                let share = part.len() as f64 / n as f64;
                let (x, y) = part.to_tensors(&device);
                let output = reference.forward(x);
                correct += pnn::train::step::count_correct(output.clone(), y.clone()).unwrap();
                let part_loss = loss_fn.forward(output, y).mul_scalar(share);
                loss += values(part_loss.clone().detach())[0] as f64;
                let grads = GradientsParams::from_grads(part_loss.backward(), &reference);
                let grads = gradients_in_order(&reference, &grads, &first);
                if summed.is_empty() {
                    summed = grads;
                } else {
                    for (sum, g) in summed.iter_mut().zip(grads) {
                        if let (Some(sum), Some(g)) = (sum.as_mut(), g) {
                            sum.iter_mut().zip(g).for_each(|(s, v)| *s += v);
                        }
                    }
                }
            }
            assert!(
                (parallel.loss - loss).abs() < 1e-5 * loss.abs().max(1.0),
                "{what}: loss {} vs {loss}",
                parallel.loss
            );
            assert_eq!(parallel.correct, correct, "{what}: correct predictions");
            assert_eq!(parallel_grads.len(), summed.len());
            let with_gradient = parallel_grads.iter().filter(|g| g.is_some()).count();
            assert!(
                with_gradient > 4,
                "{what}: only {with_gradient} parameters have gradients"
            );
            for (i, (p, r)) in parallel_grads.iter().zip(&summed).enumerate() {
                match (p, r) {
                    (Some(p), Some(r)) => assert_close(p, r, 1e-5, 0, &format!("{what}: gradient {i}")),
                    (None, None) => {}
                    _ => panic!("{what}: parameter {i} has a gradient on one side only"),
                }
            }

            // The model's running statistics are those of a forward pass on the first part.
            let first_part_only = model_on(&config, geometry, &device);
            let (x, _) = batch.split(2)[0].to_tensors(&device);
            let _ = first_part_only.forward(x);
            let stats = |m: &Net| {
                named_values(&m.valid())
                    .into_iter()
                    .filter(|(name, _)| name.ends_with("running_mean") || name.ends_with("running_var"))
                    .collect::<Vec<_>>()
            };
            let (kept, expected) = (stats(&model), stats(&first_part_only));
            assert!(!kept.is_empty(), "{what} has BatchNorm layers");
            for ((name, k), (_, e)) in kept.iter().zip(&expected) {
                assert_close(k, e, 1e-5, 0, &format!("{what}: {name}"));
            }
        }
    }

    /// lenet on a tiny MNIST set (kept in the returned folder) for 2 epochs, and the test device
    /// with a second one; None (the test returns) where there are not two devices.
    fn two_device_lenet() -> Option<(tempfile::TempDir, Config, Backend)> {
        let first = gpu_device()?;
        let second = second_device(&first)?;
        let data = tempfile::tempdir().unwrap();
        super::common::write_tiny_mnist(data.path(), 200, 50);
        let mut flags = vec!["--dataroot", data.path().to_str().unwrap(), "--nepochs", "2"];
        flags.extend(super::common::TINY_LENET);
        let config = TrainArgs::parse_flags(flags).unwrap().to_config().unwrap();
        let backend = Backend {
            device: first,
            replicas: vec![second],
            name: "two test devices, data parallel".to_string(),
        };
        Some((data, config, backend))
    }

    /// A whole run over two devices: lenet on the tiny MNIST set learns, and its files record
    /// both devices.
    #[test]
    fn data_parallel_training_run_learns_and_records_its_devices() {
        let Some((_data, config, backend)) = two_device_lenet() else {
            return;
        };
        let _rng = rng_lock();
        let runs = tempfile::tempdir().unwrap();
        let mut opts = RunOptions::quiet(Some(runs.path().to_path_buf()));
        opts.backend = backend;
        let summary = pnn::train::train(&config, opts).unwrap();
        assert_eq!(summary.history.len(), 2);
        let (best, _) = summary.best().unwrap();
        assert!(
            best > 50.0,
            "a two-device run learns the tiny set: best test accuracy {best:.1}%"
        );
        let info = std::fs::read_to_string(summary.run_dir.join("summary.json")).unwrap();
        assert!(
            info.contains("two test devices, data parallel"),
            "summary.json names the devices"
        );
    }

    /// A two-device run stopped mid-epoch and resumed from its checkpoint ends with the metrics
    /// of the same run left alone: everything a step needs is the model device's (model,
    /// optimizer, the step's seed), and the replicas take the resumed model's values.
    #[test]
    fn data_parallel_run_stopped_and_resumed_matches_the_uninterrupted_run() {
        let Some((_data, config, backend)) = two_device_lenet() else {
            return;
        };
        let _rng = rng_lock();
        let runs = tempfile::tempdir().unwrap();
        let options = |save: &std::path::Path, resume: Option<std::path::PathBuf>, stop: Option<usize>| {
            let mut opts = RunOptions::quiet(Some(save.to_path_buf()));
            opts.resume = resume;
            opts.stop_after_steps = stop;
            opts.backend = backend.clone();
            opts
        };
        let straight = runs.path().join("straight");
        pnn::train::train(&config, options(&straight, None, None)).unwrap();
        let stopped = runs.path().join("stopped");
        let last = stopped.join("checkpoint-last");
        // 13 steps an epoch (200 images in batches of 16): stopped 5 steps into epoch 1.
        let err = pnn::train::train(&config, options(&stopped, None, Some(5))).unwrap_err();
        assert!(
            err.downcast_ref::<pnn::train::interrupt::Interrupted>().is_some(),
            "stopped on request: {err:#}"
        );
        let summary = pnn::train::train(&config, options(&stopped, Some(last), None)).unwrap();
        assert_eq!(summary.history.len(), 2);
        assert_eq!(
            super::common::metrics_without_timing(&stopped),
            super::common::metrics_without_timing(&straight),
            "stopped and resumed over two devices: the same metrics as the run left alone"
        );
    }
}

#[cfg(not(feature = "gpu"))]
#[test]
fn gpu_tests_need_a_gpu_feature() {
    eprintln!(
        "skipped: this test binary was built without a GPU feature (vulkan, wgpu or cuda; scripts/gpu-check.sh builds one)"
    );
}
