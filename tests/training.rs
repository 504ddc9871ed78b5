//! Training pieces: the two accuracies, the schedule, optimiser semantics, the LeNet model.

mod common;

use burn::module::{Module, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use clap::Parser;
use pnn::config::{Code, Config, DatasetName, OptimMethod, TrainArgs};
use pnn::models::{self, ParamCount};
use pnn::train::metrics::{EpochTotals, ReportedAccuracy};
use pnn::train::{optim, schedule};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: TrainArgs,
}

fn config(extra: &[&str]) -> Config {
    let mut argv = vec![
        "pnn",
        "--dataset-train",
        "MNIST",
        "--dataset-test",
        "MNIST",
        "--net-type",
        "lenet",
    ];
    argv.extend_from_slice(extra);
    Cli::try_parse_from(argv)
        .expect("flags parse")
        .args
        .to_config()
        .expect("valid configuration")
}

#[test]
fn correct_and_reported_accuracy_on_hand_made_batches() {
    // Batches of 4 (the last one short) with 4, 2, 0 and 1 correct.
    let batches = [(4, 4), (2, 4), (0, 4), (1, 2)];
    let mut totals = EpochTotals::default();
    let mut reported = ReportedAccuracy::default();
    for &(correct, len) in &batches {
        totals.add_batch(1.0, correct, len);
        reported.update(correct, len, 4);
    }
    assert!(
        (totals.accuracy() - 100.0 * 7.0 / 14.0).abs() < 1e-12,
        "correct accuracy is correct/total"
    );
    // v = 0 -> 0.3*100 = 30 -> 0.7*30 + 0.3*50 = 36 -> 0.7*36 + 0 = 25.2; the short batch is skipped.
    assert!((reported.value - 25.2).abs() < 1e-9, "reported {}", reported.value);
    // Never reset between epochs: a second, perfect epoch starts from 25.2.
    reported.update(4, 4, 4);
    assert!((reported.value - (0.7 * 25.2 + 30.0)).abs() < 1e-9);
}

#[test]
fn step_schedules_follow_the_reference() {
    let lr = |d, e| schedule::learning_rate(1.0, d, Code::Reproduction, e);
    assert_eq!(lr(DatasetName::Mnist, 29), 1.0);
    assert!((lr(DatasetName::Mnist, 30) - 0.2).abs() < 1e-12);
    assert!((lr(DatasetName::Mnist, 95) - 0.008).abs() < 1e-12);
    assert_eq!(lr(DatasetName::Cifar10, 59), 1.0);
    assert!((lr(DatasetName::Cifar10, 60) - 0.2).abs() < 1e-12);
    assert!((lr(DatasetName::Cifar10, 150) - 0.008).abs() < 1e-12);
    assert!((lr(DatasetName::Cifar100, 80) - 0.1).abs() < 1e-12);
    assert!((lr(DatasetName::Cifar100, 125) - 0.01).abs() < 1e-12);
    // The paper authors' update: CIFAR-10 decays at 150, 250, 300, 350 and 400 instead.
    let update = |d, e| schedule::learning_rate(1.0, d, Code::Update, e);
    assert_eq!(update(DatasetName::Cifar10, 149), 1.0);
    assert!((update(DatasetName::Cifar10, 150) - 0.2).abs() < 1e-12);
    assert!((update(DatasetName::Cifar10, 299) - 0.04).abs() < 1e-12);
    assert!((update(DatasetName::Cifar10, 450) - 0.2f64.powi(5)).abs() < 1e-12);
    assert!((update(DatasetName::Mnist, 30) - 0.2).abs() < 1e-12);
}

/// Two steps of each optimiser on f(w) = sum(g * w) (constant gradient g), against PyTorch's
/// update rules written out by hand.
#[test]
fn optimisers_follow_pytorch_update_rules() {
    let _rng = common::rng_lock();
    let device = Device::flex().autodiff();
    let (w0, g, lr, wd) = (1.0f64, 0.5f64, 0.1f64, 0.01f64);
    let run = |method: OptimMethod| -> Vec<f64> {
        let mut cfg = config(&["--weight-decay", "0.01", "--momentum", "0.9"]);
        cfg.optim_method = method;
        let mut optimizer = optim::build(&cfg);
        #[derive(Module, Debug)]
        struct W {
            w: Param<Tensor<1>>,
        }
        let mut m = W {
            w: Param::from_tensor(Tensor::from_data(TensorData::new(vec![w0 as f32], [1]), &device)),
        };
        let mut out = Vec::new();
        for _ in 0..2 {
            let loss = m.w.val().mul_scalar(g).sum();
            let grads = GradientsParams::from_grads(loss.backward(), &m);
            m = optimizer.step(lr, m, grads);
            out.push(m.w.val().into_scalar::<f32>() as f64);
        }
        out
    };
    // SGD, nesterov, dampening 0: d = g + wd*w; buf = d (first) / 0.9*buf + d; step d + 0.9*buf.
    let mut w = w0;
    let mut buf = 0.0;
    let mut sgd = Vec::new();
    for step in 0..2 {
        let d = g + wd * w;
        buf = if step == 0 { d } else { 0.9 * buf + d };
        w -= lr * (d + 0.9 * buf);
        sgd.push(w);
    }
    // Adam, eps 1e-8, L2 decay in the gradient.
    let (mut w, mut m1, mut m2) = (w0, 0.0, 0.0);
    let mut adam = Vec::new();
    for t in 1..=2 {
        let d = g + wd * w;
        m1 = 0.9 * m1 + 0.1 * d;
        m2 = 0.999 * m2 + 0.001 * d * d;
        let mhat = m1 / (1.0 - 0.9f64.powi(t));
        let vhat = m2 / (1.0 - 0.999f64.powi(t));
        w -= lr * mhat / (vhat.sqrt() + 1e-8);
        adam.push(w);
    }
    // RMSprop, alpha 0.99, eps 1e-8, momentum 0.9.
    let (mut w, mut sq, mut b) = (w0, 0.0, 0.0);
    let mut rms = Vec::new();
    for _ in 0..2 {
        let d = g + wd * w;
        sq = 0.99 * sq + 0.01 * d * d;
        b = 0.9 * b + d / (sq.sqrt() + 1e-8);
        w -= lr * b;
        rms.push(w);
    }
    for (method, expected) in [
        (OptimMethod::Sgd, sgd),
        (OptimMethod::Adam, adam),
        (OptimMethod::RmsProp, rms),
    ] {
        let got = run(method);
        for (a, e) in got.iter().zip(&expected) {
            assert!((a - e).abs() < 1e-5, "{method:?}: {got:?} vs PyTorch rule {expected:?}");
        }
    }
}

#[test]
fn lenet_parameter_count_matches_the_reference() {
    let _rng = common::rng_lock();
    // PyTorch reference: lenet, nfilters 128, filter_size 0, first_filter_size 0, nmasks 1, 28x28.
    let cfg = config(&[
        "--nfilters",
        "128",
        "--filter_size",
        "0",
        "--first_filter_size",
        "0",
        "--nmasks",
        "1",
    ]);
    let model = models::build(&cfg, &Device::flex()).unwrap();
    assert_eq!(
        ParamCount::of(&model),
        ParamCount {
            regular: 297_866,
            noise: 32_144,
            frozen: 0,
        }
    );
    // Shared masks: one set per layer instead of one per input channel.
    let cfg = config(&["--nfilters", "128", "--nmasks", "1", "--no-unique_masks"]);
    let model = models::build(&cfg, &Device::flex()).unwrap();
    assert_eq!(ParamCount::of(&model).noise, 28 * 28 + 14 * 14 + 7 * 7);
    // PReLU adds one slope per activation module (3 layers + the classifier's).
    let cfg = config(&["--nfilters", "128", "--act", "prelu"]);
    let model = models::build(&cfg, &Device::flex()).unwrap();
    assert_eq!(ParamCount::of(&model).regular, 297_866 + 4);
}

fn batch(device: &Device) -> (Tensor<4>, Tensor<1, Int>) {
    let images = Tensor::<4>::random([16, 1, 28, 28], Distribution::Normal(0.0, 1.0), device);
    let labels = Tensor::from_data(
        TensorData::new((0..16).map(|i| (i % 10) as i64).collect::<Vec<_>>(), [16]),
        device,
    );
    (images, labels)
}

#[test]
fn lenet_output_shape_and_one_step_lowers_the_loss() {
    let _rng = common::rng_lock();
    let device = Device::flex().autodiff();
    device.seed(5);
    let variants = [
        &["--nfilters", "16"][..],
        &["--nfilters", "16", "--nmasks", "4", "--mix_maps", "--train_masks"][..],
    ];
    for flags in variants {
        // Dropout off: the training-mode loss on a fixed batch is then deterministic.
        let cfg = config(&[flags, &["--dropout", "0"][..]].concat());
        let mut model = models::build(&cfg, &device).unwrap();
        let mut optimizer = optim::build(&cfg);
        let (images, labels) = batch(&device);
        let loss_fn = burn::nn::loss::CrossEntropyLoss::new(None, &device);
        let loss = |m: &models::Net| {
            let out = m.forward(images.clone());
            assert_eq!(out.dims(), [16, 10]);
            loss_fn.forward(out, labels.clone()).into_scalar::<f32>()
        };
        let before = loss(&model);
        for _ in 0..5 {
            let loss = loss_fn.forward(model.forward(images.clone()), labels.clone());
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optimizer.step(0.05, model, grads);
        }
        let after = loss(&model);
        assert!(after < before, "{flags:?}: loss {before} -> {after}");
    }
}

#[test]
fn train_and_eval_modes_differ_where_dropout_and_batchnorm_say() {
    let _rng = common::rng_lock();
    let device = Device::flex().autodiff();
    device.seed(9);
    let cfg = config(&["--nfilters", "8", "--dropout", "0.5"]);
    let model = models::build(&cfg, &device).unwrap();
    let (images, _) = batch(&device);
    // Training mode: dropout draws a new mask each call.
    let a = model.forward(images.clone()).into_data().try_to_vec::<f32>().unwrap();
    let b = model.forward(images.clone()).into_data().try_to_vec::<f32>().unwrap();
    assert_ne!(a, b, "training mode is stochastic (dropout)");
    // Evaluation mode: deterministic, and different from training (running statistics).
    let valid = model.valid();
    let inner = images.inner();
    let c = valid.forward(inner.clone()).into_data().try_to_vec::<f32>().unwrap();
    let d = valid.forward(inner).into_data().try_to_vec::<f32>().unwrap();
    assert_eq!(c, d, "evaluation mode is deterministic");
    assert_ne!(a, c);
}

#[test]
fn flags_accept_both_spellings_and_pairs_resolve_to_the_last() {
    let a = config(&[
        "--first_filter_size",
        "3",
        "--scale_noise",
        "2",
        "--no-unique_masks",
        "--use_act",
    ]);
    let b = config(&[
        "--first-filter-size",
        "3",
        "--scale-noise",
        "2",
        "--no-unique-masks",
        "--use-act",
    ]);
    assert_eq!(a, b);
    assert!(!a.unique_masks && a.use_act);
    let c = config(&[
        "--no-unique_masks",
        "--unique_masks",
        "--train_masks",
        "--no-train_masks",
    ]);
    assert!(c.unique_masks && !c.train_masks);
    let d = config(&[]);
    assert!(
        d.unique_masks && !d.use_act && !d.train_masks && !d.mix_maps,
        "reference defaults"
    );
    assert_eq!(
        (d.nfilters, d.nmasks, d.batch_size, d.nepochs, d.manual_seed),
        (64, 1, 64, 150, 1)
    );
    assert_eq!(d.optim_method, OptimMethod::Sgd);
    let e = Cli::try_parse_from([
        "pnn",
        "--optim-method",
        "adam",
        "--dataset-train",
        "mnist",
        "--dataset-test",
        "Mnist",
    ]);
    assert!(e.is_ok(), "names are case-insensitive");
}

#[test]
fn inconsistent_configurations_are_refused_with_the_way_out() {
    let parse = |extra: &[&str]| {
        let mut argv = vec!["pnn", "--dataset-test", "MNIST"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).unwrap().args.to_config()
    };
    let err = parse(&["--dataset-train", "CIFAR10"]).unwrap_err().to_string();
    assert!(err.contains("same image size"), "{err}");
    let err = parse(&[
        "--dataset-train",
        "MNIST",
        "--net-type",
        "noiseresnet18",
        "--first_filter_size",
        "0",
    ])
    .unwrap_err()
    .to_string();
    assert!(err.contains("perturb_resnet18"), "{err}");
    let err = parse(&["--dataset-train", "MNIST", "--filter_size", "4"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("--filter_size 4"), "{err}");
    let err = parse(&["--dataset-train", "MNIST", "--dropout", "1.5"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("--dropout"), "{err}");
}

/// pnn's SGD (one parallel pass per parameter, `train::sgd`) gives burn's `Sgd` bit for bit,
/// with and without momentum and weight decay, on parameters larger than one of its chunks; and
/// the state a burn `Sgd` saved loads into it and continues identically (checkpoints written
/// before pnn had its own SGD resume).
#[test]
fn fused_sgd_is_burns_sgd_bit_for_bit_and_reads_its_checkpoints() {
    let _rng = common::rng_lock();
    use burn::optim::decay::WeightDecayConfig;
    use burn::optim::momentum::MomentumConfig;
    use burn::optim::{ModuleOptimizer, SgdConfig};
    use pnn::train::sgd;

    #[derive(Module, Debug)]
    struct Two {
        a: Param<Tensor<2>>,
        b: Param<Tensor<1>>,
    }
    let device = Device::flex().autodiff();
    device.seed(3);
    let start = Two {
        a: Param::from_tensor(Tensor::random([70, 500], Distribution::Normal(0.0, 1.0), &device)),
        b: Param::from_tensor(Tensor::random([7], Distribution::Normal(0.0, 1.0), &device)),
    };
    let targets: Vec<Tensor<2>> = (0..4)
        .map(|_| Tensor::random([70, 500], Distribution::Normal(0.0, 1.0), &device))
        .collect();
    let values = |m: &Two| -> Vec<f32> {
        let mut v = m.a.val().into_data().try_to_vec::<f32>().unwrap();
        v.extend(m.b.val().into_data().try_to_vec::<f32>().unwrap());
        v
    };
    // Steps `range` of a loss whose gradient changes from step to step.
    let steps = |mut m: Two, optim: &mut ModuleOptimizer, range: std::ops::Range<usize>| -> Two {
        for t in range {
            let loss = (m.a.val() - targets[t].clone()).powf_scalar(2.0).sum() + m.b.val().powf_scalar(3.0).sum();
            let grads = GradientsParams::from_grads(loss.backward(), &m);
            m = optim.step(0.05 / (t + 1) as f64, m, grads);
        }
        m
    };
    let dir = std::env::temp_dir().join(format!("pnn-sgd-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (momentum, decay) in [(true, true), (true, false), (false, true), (false, false)] {
        let burns = || {
            let m = momentum.then(|| {
                MomentumConfig::new()
                    .with_momentum(0.9)
                    .with_dampening(0.0)
                    .with_nesterov(true)
            });
            SgdConfig::new()
                .with_momentum(m)
                .with_weight_decay(decay.then(|| WeightDecayConfig::new(1e-3)))
                .init()
        };
        let ours = || {
            ModuleOptimizer::from(sgd::Sgd {
                momentum: momentum.then_some(sgd::Momentum {
                    momentum: 0.9,
                    dampening: 0.0,
                    nesterov: true,
                }),
                weight_decay: decay.then_some(1e-3),
            })
        };
        let what = format!("momentum {momentum}, weight decay {decay}");
        let (mut burn_optim, mut our_optim) = (burns(), ours());
        let by_burn = steps(start.clone(), &mut burn_optim, 0..2);
        let by_us = steps(start.clone(), &mut our_optim, 0..2);
        assert_eq!(values(&by_burn), values(&by_us), "{what}: two steps");
        assert_ne!(values(&by_us), values(&start), "{what}: the steps moved nothing");
        // burn's state, saved and loaded into ours, then two more steps each.
        let file = dir.join("optimizer.bpk");
        burn_optim.save(&file).unwrap();
        let mut resumed = ours().load(&file).unwrap();
        let by_burn = steps(by_burn, &mut burn_optim, 2..4);
        let by_us = steps(by_us, &mut resumed, 2..4);
        assert_eq!(values(&by_burn), values(&by_us), "{what}: resumed from burn's state");
    }
    std::fs::remove_dir_all(&dir).ok();
}
