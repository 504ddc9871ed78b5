//! The five models: parameter counts against the PyTorch reference, shapes, a training step,
//! train versus eval behaviour, and checkpointing of the original model's fixed noise.

mod common;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use clap::Parser;
use pnn::config::{Config, TrainArgs};
use pnn::models::{self, Net, ParamCount};
use pnn::train::optim;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: TrainArgs,
}

fn cifar(flags: &str) -> Config {
    let argv = ["pnn", "--dataset-train", "CIFAR10", "--dataset-test", "CIFAR10"]
        .into_iter()
        .chain(flags.split_whitespace());
    Cli::try_parse_from(argv)
        .expect("flags parse")
        .args
        .to_config()
        .expect("valid configuration")
}

fn count(flags: &str) -> (usize, usize) {
    let model = models::build(&cifar(flags), &Device::flex()).expect("model builds");
    let c = ParamCount::of(&model);
    (c.regular, c.noise)
}

/// The reproduction's experiment table. The first, fifth and ninth counts were printed by the
/// PyTorch reference; the others follow from its models.py layer by layer (worked out by hand
/// independently of this code: e.g. the nmasks-64 unique/mix_maps model has per 1x1 layer
/// out*64 + out weights and bias, 2*out BatchNorm and out*out + 3*out for the mixing layer).
#[test]
fn experiment_table_parameter_counts_match_the_reference() {
    let _rng = common::rng_lock();
    let table = [
        ("--net-type resnet18 --nfilters 44", (5_284_982, 0)),
        (
            "--net-type noiseresnet18 --nfilters 128 --first_filter_size 7",
            (5_640_074, 0),
        ),
        (
            "--net-type noiseresnet18 --nfilters 128 --first_filter_size 3",
            (5_624_714, 0),
        ),
        (
            "--net-type perturb_resnet18 --nfilters 128 --first_filter_size 3 --filter_size 1",
            (5_611_146, 0),
        ),
        (
            "--net-type perturb_resnet18 --nfilters 128 --first_filter_size 0 --filter_size 0 --nmasks 1",
            (5_608_202, 1_100_800),
        ),
        (
            "--net-type perturb_resnet18 --nfilters 128 --first_filter_size 3 --filter_size 0 --nmasks 64 --unique_masks --mix_maps",
            (6_813_834, 70_254_592),
        ),
        (
            "--net-type perturb_resnet18 --nfilters 128 --first_filter_size 3 --filter_size 0 --nmasks 64 --no-unique_masks",
            (1_220_234, 412_672),
        ),
        (
            "--net-type perturb_resnet18 --nfilters 128 --first_filter_size 3 --filter_size 0 --nmasks 64 --no-unique_masks --train_masks",
            (1_220_234, 412_672),
        ),
        (
            "--net-type cifarnet --nfilters 128 --first_filter_size 0 --filter_size 0",
            (612_234, 216_064),
        ),
    ];
    for (flags, expected) in table {
        assert_eq!(count(flags), expected, "{flags}");
    }
}

/// The paper authors' update (`--code update`), counted by PyTorch on its own models.py (built
/// with its main.py's flags and defaults): all parameters, the frozen ones among them, and the
/// noise masks. Beside them the same commands with the reproduction's code.
#[test]
fn the_updates_models_have_the_updates_parameter_counts() {
    let _rng = common::rng_lock();
    let counted = |flags: &str| {
        let model = models::build(&cifar(flags), &Device::flex()).expect("model builds");
        let c = ParamCount::of(&model);
        (c.regular, c.frozen, c.noise)
    };
    let original = "--net-type noiseresnet18 --nfilters 128 --first_filter_size 3 --level 0.1";
    // PyTorch: 5,624,714 parameters, 5,621,258 trainable (the 3x3x3x128 stem frozen).
    assert_eq!(counted(&format!("--code update {original}")), (5_624_714, 3_456, 0));
    assert_eq!(counted(original), (5_624_714, 0, 0));
    let all_layers =
        "--net-type perturb_resnet18 --nfilters 256 --first_filter_size 0 --filter_size 0 --nmasks 1 --level 0.1";
    // PyTorch: 29,673,738 parameters of which 6,127,616 are the 17 layers' masks (3 x 1,280 x
    // 32 x 32 of them in the first layer); 23,546,122 trainable.
    assert_eq!(
        counted(&format!("--code update {all_layers}")),
        (23_546_122, 0, 6_127_616)
    );
    // The reproduction's: 24,556,042 parameters, 2,198,528 of them masks.
    assert_eq!(counted(all_layers), (22_357_514, 0, 2_198_528));
}

fn batch(device: &Device, n: usize) -> (Tensor<4>, Tensor<1, Int>) {
    let images = Tensor::<4>::random([n, 3, 32, 32], Distribution::Normal(0.0, 1.0), device);
    let labels = Tensor::from_data(
        TensorData::new((0..n).map(|i| (i % 10) as i64).collect::<Vec<_>>(), [n]),
        device,
    );
    (images, labels)
}

/// Training-mode loss on the batch (BatchNorm on batch statistics, dropout off in these
/// configurations): deterministic, and what the optimiser step acts on. Evaluation mode would
/// judge the step by running statistics that a few steps have not settled yet.
fn batch_loss(model: &Net, images: &Tensor<4>, labels: &Tensor<1, Int>) -> f32 {
    let out = model.forward(images.clone());
    assert_eq!(out.dims(), [images.dims()[0], 10], "logits for 10 classes");
    burn::nn::loss::CrossEntropyLoss::new(None, &images.device())
        .forward(out, labels.clone())
        .into_scalar::<f32>()
}

/// Small versions of each family (few filters, so the test is quick).
const FAMILIES: [&str; 8] = [
    "--net-type resnet18 --nfilters 4",
    "--code update --net-type noiseresnet18 --nfilters 4 --first_filter_size 3",
    "--code update --net-type perturb_resnet18 --nfilters 4 --first_filter_size 0 --filter_size 0 --nmasks 1 --level 0.1",
    "--net-type noiseresnet18 --nfilters 4 --first_filter_size 7",
    "--net-type noiseresnet18 --nfilters 4 --first_filter_size 3",
    "--net-type perturb_resnet18 --nfilters 6 --first_filter_size 0 --filter_size 0 --nmasks 2 --mix_maps",
    "--net-type perturb_resnet18 --nfilters 4 --first_filter_size 3 --filter_size 1 --pool_type avg",
    "--net-type cifarnet --nfilters 6 --nmasks 3 --no-unique_masks --train_masks",
];

#[test]
fn every_family_trains_a_step_on_a_fixed_batch() {
    let _rng = common::rng_lock();
    let device = Device::flex().autodiff();
    for flags in FAMILIES {
        device.seed(21);
        let cfg = cifar(&format!("{flags} --dropout 0"));
        let mut model = models::build(&cfg, &device).unwrap();
        let mut optimizer = optim::build(&cfg);
        let (images, labels) = batch(&device, 8);
        let loss_fn = burn::nn::loss::CrossEntropyLoss::new(None, &device);
        let before = batch_loss(&model, &images, &labels);
        for _ in 0..3 {
            let out = model.forward(images.clone());
            assert_eq!(out.dims(), [8, 10]);
            let loss = loss_fn.forward(out, labels.clone());
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optimizer.step(0.05, model, grads);
        }
        let after = batch_loss(&model, &images, &labels);
        assert!(after < before, "{flags}: loss {before} -> {after}");
    }
}

/// The update's noiseresnet18 trains everything but its stem's convolution, which keeps its
/// random initial weights (weight decay included); the stem's BatchNorm trains.
#[test]
fn the_updates_frozen_stem_stays_at_its_initial_weights() {
    let _rng = common::rng_lock();
    let device = Device::flex().autodiff();
    device.seed(8);
    let cfg = cifar("--code update --net-type noiseresnet18 --nfilters 4 --first_filter_size 3 --weight-decay 0.1");
    let model = models::build(&cfg, &device).unwrap();
    let stem = |m: &Net| match m {
        Net::Noiseresnet18(m) => (
            m.stem.conv.weight.val().into_data().try_to_vec::<f32>().unwrap(),
            m.stem.bn.weight.val().into_data().try_to_vec::<f32>().unwrap(),
        ),
        _ => unreachable!("a noiseresnet18"),
    };
    let (conv_before, bn_before) = stem(&model);
    let mut optimizer = optim::build(&cfg);
    let (images, labels) = batch(&device, 8);
    let loss_fn = burn::nn::loss::CrossEntropyLoss::new(None, &device);
    let mut model = model;
    for _ in 0..2 {
        let loss = loss_fn.forward(model.forward(images.clone()), labels.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optimizer.step(0.05, model, grads);
    }
    let (conv_after, bn_after) = stem(&model);
    assert_eq!(conv_after, conv_before, "the frozen convolution moved");
    assert_ne!(bn_after, bn_before, "the stem's BatchNorm did not train");
    // Loaded from a file (a resumed run), the stem is still frozen.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.bpk");
    model.clone().save_file(&path).unwrap();
    let loaded = models::build(&cfg, &device).unwrap().try_load_file(&path).unwrap();
    assert_eq!(ParamCount::of(&loaded).frozen, 3 * 3 * 3 * 4);
    assert_eq!(stem(&loaded).0, conv_before);
}

#[test]
fn batchnorm_models_use_batch_statistics_in_training_and_running_ones_in_evaluation() {
    let _rng = common::rng_lock();
    let device = Device::flex().autodiff();
    for flags in FAMILIES {
        device.seed(4);
        let model = models::build(&cifar(&format!("{flags} --dropout 0")), &device).unwrap();
        let (images, _) = batch(&device, 4);
        let train = model.forward(images.clone()).into_data().try_to_vec::<f32>().unwrap();
        let eval = model
            .valid()
            .forward(images.clone().inner())
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert_ne!(train, eval, "{flags}: BatchNorm makes the two modes differ");
        let again = model
            .valid()
            .forward(images.inner())
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert_eq!(eval, again, "{flags}: evaluation is deterministic");
    }
}

#[test]
fn original_models_fixed_noise_is_saved_and_restored() {
    let _rng = common::rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.bpk");
    let cfg = cifar("--net-type noiseresnet18 --nfilters 4 --first_filter_size 3");
    let device = Device::flex();
    device.seed(1);
    let a = models::build(&cfg, &device).unwrap();
    device.seed(2);
    let b = models::build(&cfg, &device).unwrap();
    let noise = |m: &Net| match m {
        Net::Noiseresnet18(m) => m.blocks[3]
            .noise2
            .noise_buffer
            .val()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap(),
        _ => unreachable!(),
    };
    assert_ne!(noise(&a), noise(&b), "different seeds draw different noise");
    a.clone().save_file(&path).unwrap();
    let b = b.try_load_file(&path).unwrap();
    assert_eq!(noise(&a), noise(&b), "the checkpoint carries the noise");
    let max = noise(&a).iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(
        max <= 0.5 && max > 0.4,
        "noise uniform in [-level, level] with level 0.5, max |v| = {max}"
    );
}

#[test]
fn configurations_the_reference_cannot_run_are_refused_clearly() {
    let _rng = common::rng_lock();
    let mnist = |flags: &str| {
        let argv = ["pnn", "--dataset-train", "MNIST", "--dataset-test", "MNIST"]
            .into_iter()
            .chain(flags.split_whitespace());
        let cfg = Cli::try_parse_from(argv).unwrap().args.to_config().unwrap();
        models::build(&cfg, &Device::flex())
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let err = mnist("--net-type perturb_resnet18 --nfilters 4").unwrap_err();
    assert!(err.contains("28x28") && err.contains("lenet"), "{err}");
    assert!(
        mnist("--net-type resnet18 --nfilters 4").is_ok(),
        "the convolution ResNet handles 28x28"
    );
    let cfg = Cli::try_parse_from(["pnn", "--net-type", "cifarnet", "--nmasks", "4", "--nfilters", "64"]).unwrap();
    let err = cfg.args.to_config().unwrap_err().to_string();
    assert!(
        err.contains("divisible by the 3 input channels") && err.contains("--nfilters 63"),
        "{err}"
    );
}

/// The seed alone decides a model's weights: drawing random numbers between building a model
/// and its first use changes none of them. (burn's `Linear`, every model's last layer, drew its
/// weights at first use; a data-parallel run copies the model before that.)
#[test]
fn weights_follow_from_the_seed_not_from_when_the_model_is_first_used() {
    let _rng = common::rng_lock();
    let device = Device::flex();
    let weights = |draw_in_between: bool| {
        device.seed(5);
        let model = models::build(&cifar("--net-type cifarnet --nfilters 8"), &device).unwrap();
        if draw_in_between {
            let _ = Tensor::<1>::random([1000], Distribution::Default, &device)
                .sum()
                .into_scalar::<f32>();
        }
        struct Values(Vec<f32>);
        impl burn::module::ModuleVisitor for Values {
            fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
                self.0.extend(param.val().into_data().iter::<f32>());
            }
        }
        let mut values = Values(Vec::new());
        model.visit(&mut values);
        values.0
    };
    let (plain, disturbed) = (weights(false), weights(true));
    assert!(plain.len() > 1000);
    assert_eq!(plain, disturbed);
}

/// The footprint counted from the configuration's shapes, without building the model at its
/// size, equals the built model's, for every family and the flags that change shapes.
#[test]
fn footprint_from_shapes_equals_the_built_models() {
    use pnn::models::footprint::{footprint, of_model};
    let cases = [
        "--net-type resnet18 --nfilters 40",
        "--net-type noiseresnet18 --nfilters 24 --first_filter_size 3",
        "--net-type noiseresnet18 --nfilters 24 --first_filter_size 7 --code update",
        "--net-type perturb_resnet18 --nfilters 18 --nmasks 5 --unique_masks --mix_maps",
        "--net-type perturb_resnet18 --nfilters 20 --nmasks 1 --filter_size 3 --first_filter_size 7",
        "--net-type perturb_resnet18 --nfilters 12 --nmasks 4 --no-unique_masks --train_masks --act prelu",
        "--net-type perturb_resnet18 --nfilters 8 --code update --act prelu",
        "--net-type cifarnet --nfilters 30 --nmasks 7 --unique_masks",
        "--net-type cifarnet --nfilters 16 --filter_size 5 --first_filter_size 3",
        "--net-type lenet --nfilters 21 --nmasks 3 --mix_maps",
    ];
    for flags in cases {
        let config = cifar(flags);
        let geometry = models::Geometry::of(&config).unwrap();
        let built = of_model(&models::build(&config, &Device::flex()).unwrap());
        let counted = footprint(&config, geometry).unwrap();
        for (what, a, b) in [
            ("values", counted.values, built.values),
            ("trainable", counted.trainable, built.trainable),
        ] {
            assert!((a - b).abs() < 0.5, "{flags}: {what} counted {a}, built {b}");
        }
    }
}
