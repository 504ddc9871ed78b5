//! `pnn fit-conv` and `pnn noise-stats`: the least-squares machinery on constructed cases whose
//! answer is known, the fitted features against the perturbation layer itself, and both commands
//! end to end on a tiny data set.

mod common;

use std::path::Path;
use std::process::Command;

use burn::tensor::{Device, Tensor, TensorData};
use pnn::config::{Act, NoiseType};
use pnn::ops::activation::FusedAct;
use pnn::theory::features::{Fitter, Maps, Masks};
use pnn::theory::fit_conv::relative;
use pnn::theory::lstsq::{NormalEquations, predict};
use pnn::theory::noise_stats::split_centre;
use pnn::theory::perturb_fit::{self, PerturbChoice};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn random_values(n: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Accumulates `images` (each channels x pixels) with targets from `target(image)` into one
/// block's sums of `fitter`.
fn sums_of(fitter: &Fitter, maps: Maps, images: &[Vec<f32>], targets: &[Vec<f64>]) -> NormalEquations {
    let block = &fitter.blocks(maps)[0];
    let f = fitter.features(block);
    let mut sums = NormalEquations::new(f, maps.outputs);
    for (x, y) in images.iter().zip(targets) {
        let mut phi = vec![0.0; maps.pixels() * f];
        fitter.fill(block, maps, x, &mut phi);
        sums.add(&phi, y, maps.pixels());
    }
    sums
}

/// Relative error of `beta` on images it was not fitted on.
fn heldout_error(fitter: &Fitter, maps: Maps, beta: &[f64], images: &[Vec<f32>], targets: &[Vec<f64>]) -> f64 {
    let block = &fitter.blocks(maps)[0];
    let f = fitter.features(block);
    let (mut sse, mut ssy) = (0.0, 0.0);
    for (x, y) in images.iter().zip(targets) {
        let mut phi = vec![0.0; maps.pixels() * f];
        fitter.fill(block, maps, x, &mut phi);
        let pred = predict(&phi, beta, maps.pixels(), f, maps.outputs);
        for (p, t) in pred.iter().zip(y) {
            sse += (p - t).powi(2);
            ssy += t * t;
        }
    }
    relative(sse, ssy)
}

/// A k x k convolution's outputs (padding k/2, bias) through the conv features themselves.
fn conv_targets(kernel: usize, maps: Maps, images: &[Vec<f32>], rng: &mut ChaCha8Rng) -> Vec<Vec<f64>> {
    let fitter = Fitter::Conv { kernel };
    let block = &fitter.blocks(maps)[0];
    let f = fitter.features(block);
    let beta: Vec<f64> = random_values(f * maps.outputs, rng).iter().map(|&v| v as f64).collect();
    images
        .iter()
        .map(|x| {
            let mut phi = vec![0.0; maps.pixels() * f];
            fitter.fill(block, maps, x, &mut phi);
            predict(&phi, &beta, maps.pixels(), f, maps.outputs)
        })
        .collect()
}

fn masks(channels: usize, nmasks: usize, pixels: usize, act: FusedAct, rng: &mut ChaCha8Rng) -> Masks {
    Masks {
        values: random_values(channels * nmasks * pixels, rng),
        channels,
        nmasks,
        level: 0.5,
        act,
        ungrouped: true,
    }
}

const SMALL: Maps = Maps {
    channels: 2,
    outputs: 3,
    height: 6,
    width: 6,
};

#[test]
fn one_image_is_fitted_exactly_by_enough_masks_but_not_the_next_image() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let images: Vec<Vec<f32>> = (0..2).map(|_| random_values(2 * 36, &mut rng)).collect();
    let targets = conv_targets(3, SMALL, &images, &mut rng);
    // 2 channels x 20 masks + 1 = 41 features for 36 pixels: an exact fit of one image exists
    // (the paper's "we can always solve for N"); it does not carry over to another image.
    let pnn = Fitter::Perturb(masks(2, 20, 36, FusedAct::Identity, &mut rng));
    let sums = sums_of(&pnn, SMALL, &images[..1], &targets[..1]);
    let beta = sums.solve().unwrap();
    let (sse, ssy) = sums.fitted_error(&beta);
    assert!(relative(sse, ssy) < 1e-4, "fitted error {}", relative(sse, ssy));
    let other = heldout_error(&pnn, SMALL, &beta, &images[1..], &targets[1..]);
    assert!(other > 0.3, "held-out error {other}");
    // With 2 masks (5 features) even the one image is out of reach.
    let few = Fitter::Perturb(masks(2, 2, 36, FusedAct::Identity, &mut rng));
    let sums = sums_of(&few, SMALL, &images[..1], &targets[..1]);
    let (sse, ssy) = sums.fitted_error(&sums.solve().unwrap());
    assert!(relative(sse, ssy) > 0.1, "fitted error {}", relative(sse, ssy));
}

#[test]
fn a_1x1_target_is_fitted_exactly_by_the_1x1_baseline_and_a_3x3_target_by_the_ceiling() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let images: Vec<Vec<f32>> = (0..6).map(|_| random_values(2 * 36, &mut rng)).collect();
    for kernel in [1, 3] {
        let targets = conv_targets(kernel, SMALL, &images, &mut rng);
        let fitter = Fitter::Conv { kernel };
        let beta = sums_of(&fitter, SMALL, &images[..3], &targets[..3]).solve().unwrap();
        let e = heldout_error(&fitter, SMALL, &beta, &images[3..], &targets[3..]);
        assert!(e < 1e-4, "{kernel}x{kernel} target, same-size fit: held-out error {e}");
    }
    // A 3x3 target is out of reach of the 1x1 baseline and of a perturbation layer with many
    // fixed masks, on images they were not fitted on.
    let targets = conv_targets(3, SMALL, &images, &mut rng);
    for fitter in [
        Fitter::Conv { kernel: 1 },
        Fitter::Perturb(masks(2, 8, 36, FusedAct::Relu, &mut rng)),
    ] {
        let beta = sums_of(&fitter, SMALL, &images[..3], &targets[..3]).solve().unwrap();
        let e = heldout_error(&fitter, SMALL, &beta, &images[3..], &targets[3..]);
        assert!(e > 0.2, "{fitter:?}: held-out error {e}");
    }
}

#[test]
fn the_error_from_the_sums_equals_the_error_recomputed_from_predictions() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let images: Vec<Vec<f32>> = (0..4).map(|_| random_values(2 * 36, &mut rng)).collect();
    let targets = conv_targets(3, SMALL, &images, &mut rng);
    let fitter = Fitter::Perturb(masks(2, 3, 36, FusedAct::Tanh, &mut rng));
    let sums = sums_of(&fitter, SMALL, &images, &targets);
    let beta = sums.solve().unwrap();
    let (sse, ssy) = sums.fitted_error(&beta);
    let recomputed = heldout_error(&fitter, SMALL, &beta, &images, &targets);
    assert!(
        (relative(sse, ssy) - recomputed).abs() < 1e-9,
        "{} vs {recomputed}",
        relative(sse, ssy)
    );
    // Merging the sums of two halves gives the sums of the whole.
    let mut half = sums_of(&fitter, SMALL, &images[..2], &targets[..2]);
    half.merge(&sums_of(&fitter, SMALL, &images[2..], &targets[2..]));
    let merged = half.solve().unwrap();
    for (a, b) in merged.iter().zip(&beta) {
        assert!((a - b).abs() < 1e-8 * (1.0 + b.abs()), "{a} vs {b}");
    }
}

/// The features fit-conv fits are the perturbation layer's own computation: least-squares
/// weights loaded into pnn's `PerturbLayer` give the predictions of the features, for the
/// reproduction's grouping, ungrouped, one mask, shared masks and several activations.
#[test]
fn fitted_weights_in_the_perturbation_layer_give_the_predicted_outputs() {
    let device = Device::flex();
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let maps = Maps {
        channels: 2,
        outputs: 4,
        height: 5,
        width: 5,
    };
    let cases = [
        (3, Act::Relu, true, false, true),
        (3, Act::Tanh, true, true, true),
        (1, Act::Sigmoid, true, false, true),
        (4, Act::Relu, false, false, true),
        (2, Act::Elu, true, false, false),
    ];
    for (nmasks, act, use_act, ungrouped, unique_masks) in cases {
        let choice = PerturbChoice {
            level: 0.7,
            noise_type: NoiseType::Uniform,
            act,
            use_act,
            unique_masks,
            ungrouped,
        };
        let mut layer = perturb_fit::build_layer(&choice, nmasks, maps, false, 9, &device);
        let fitter = Fitter::Perturb(perturb_fit::masks_of(&layer, &choice, choice.fused_act().unwrap()));
        let blocks = fitter.blocks(maps);
        let betas: Vec<Vec<f64>> = blocks
            .iter()
            .map(|b| {
                random_values(fitter.features(b) * b.outputs.len(), &mut rng)
                    .iter()
                    .map(|&v| v as f64)
                    .collect()
            })
            .collect();
        perturb_fit::load_weights(&mut layer, &blocks, &betas);
        let x = random_values(2 * maps.channels * maps.pixels(), &mut rng);
        let out = perturb_fit::layer_output(
            &layer,
            Tensor::from_data(TensorData::new(x.clone(), [2, maps.channels, 5, 5]), &device),
        );
        let out: Vec<f32> = out.into_data().try_to_vec::<f32>().unwrap();
        for image in 0..2 {
            let xi = &x[image * maps.channels * 25..][..maps.channels * 25];
            for (block, beta) in blocks.iter().zip(&betas) {
                let f = fitter.features(block);
                let mut phi = vec![0.0; 25 * f];
                fitter.fill(block, maps, xi, &mut phi);
                let pred = predict(&phi, beta, 25, f, block.outputs.len());
                let got = &out[(image * maps.outputs + block.outputs.start) * 25..][..block.outputs.len() * 25];
                for (p, g) in pred.iter().zip(got) {
                    assert!(
                        (p - *g as f64).abs() < 1e-4 * (1.0 + p.abs()),
                        "nmasks {nmasks} {act:?} use_act {use_act} ungrouped {ungrouped}: {p} vs {g}"
                    );
                }
            }
        }
    }
}

#[test]
fn the_neighbourhood_term_is_zero_for_a_centre_only_kernel_and_adds_up_otherwise() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let maps = Maps {
        channels: 2,
        outputs: 3,
        height: 4,
        width: 4,
    };
    let x = random_values(2 * 16, &mut rng);
    let mut weight = vec![0f32; 3 * 2 * 9];
    for o in 0..3 {
        for c in 0..2 {
            weight[(o * 2 + c) * 9 + 4] = rng.random_range(-1.0..1.0);
        }
    }
    // y = the centre tap alone.
    let y: Vec<f32> = (0..3)
        .flat_map(|o| {
            let (x, weight) = (&x, &weight);
            (0..16).map(move |p| (0..2).map(|c| weight[(o * 2 + c) * 9 + 4] * x[c * 16 + p]).sum::<f32>())
        })
        .collect();
    let (centre, neighbourhood) = split_centre(&weight, 3, maps, &x, &y);
    assert!(neighbourhood.iter().all(|v| v.abs() < 1e-6), "{neighbourhood:?}");
    for (c, y) in centre.iter().zip(&y) {
        assert!((c - *y as f64).abs() < 1e-6);
    }
}

fn pnn(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pnn")).args(args).output().unwrap()
}

fn read_csv(path: &Path) -> Vec<csv::StringRecord> {
    csv::Reader::from_path(path)
        .unwrap()
        .records()
        .map(|r| r.unwrap())
        .collect()
}

#[test]
fn fit_conv_end_to_end_with_trained_masks() {
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny_mnist(dir.path(), 40, 20);
    let out = dir.path().join("fit");
    let o = pnn(&[
        "fit-conv",
        "--dataset-train",
        "MNIST",
        "--dataroot",
        dir.path().to_str().unwrap(),
        "--no-download",
        "--target-channels",
        "4",
        "--nmasks",
        "1,8",
        "--fit-images",
        "1,all",
        "--heldout",
        "10",
        "--train_masks",
        "--gd-steps",
        "60",
        "--gd-batch",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    for f in [
        "fit-conv.md",
        "fit-conv.csv",
        "fit-conv.json",
        "error-vs-masks.png",
        "error-vs-masks.svg",
        "error-vs-images.png",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let rows = read_csv(&out.join("fit-conv.csv"));
    // 2 fit sets x (constant, 1x1, 2 perturbation layers, 2 trained, 3x3).
    assert_eq!(rows.len(), 14, "{rows:?}");
    let get = |images: &str, model: &str, nmasks: &str| -> (f64, f64) {
        let r = rows
            .iter()
            .find(|r| &r[0] == images && &r[1] == model && &r[2] == nmasks)
            .unwrap_or_else(|| panic!("no row {images} {model} {nmasks}"));
        (r[4].parse().unwrap(), r[5].parse().unwrap())
    };
    // The target is a 3x3 convolution: the 3x3 fit reproduces it on held-out images.
    assert!(get("40", "conv3x3", "").1 < 1e-3);
    // Trainable masks fit the one image better than the same masks fixed.
    let (fixed, trained) = (get("1", "perturb", "8").0, get("1", "perturb-trained", "8").0);
    assert!(trained < fixed, "trained masks {trained} vs fixed {fixed}");

    // --redraw draws the table and figures again from the record alone.
    let table = std::fs::read_to_string(out.join("fit-conv.md")).unwrap();
    let record = std::fs::read_to_string(out.join("fit-conv.json")).unwrap();
    for f in ["fit-conv.md", "error-vs-masks.png", "error-vs-images.svg"] {
        std::fs::remove_file(out.join(f)).unwrap();
    }
    let o = pnn(&["fit-conv", "--redraw", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read_to_string(out.join("fit-conv.md")).unwrap(), table);
    assert_eq!(std::fs::read_to_string(out.join("fit-conv.json")).unwrap(), record);
    assert!(out.join("error-vs-masks.png").is_file() && out.join("error-vs-images.svg").is_file());
    let o = pnn(&["fit-conv", "--redraw", dir.path().to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("give a folder written by pnn fit-conv"));
}

#[test]
fn noise_stats_end_to_end_tells_the_neighbourhood_term_from_the_masks() {
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny_mnist(dir.path(), 20, 30);
    let out = dir.path().join("stats");
    let o = pnn(&[
        "noise-stats",
        "--dataset-train",
        "MNIST",
        "--dataroot",
        dir.path().to_str().unwrap(),
        "--no-download",
        "--target-channels",
        "4",
        "--images",
        "30",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows = read_csv(&out.join("noise-stats.csv"));
    assert_eq!(rows.len(), 2);
    let header = csv::Reader::from_path(out.join("noise-stats.csv"))
        .unwrap()
        .headers()
        .unwrap()
        .clone();
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let (n, m) = (&rows[0], &rows[1]);
    assert_eq!(&n[col("term")], "neighbourhood");
    let value = |r: &csv::StringRecord, c: &str| -> f64 { r[col(c)].parse().unwrap() };
    // The neighbourhood term is a linear function of the patch, by construction.
    assert!(value(n, "r2_patch") > 0.999, "{n:?}");
    // The masks are the same in every image: position explains them entirely, the pixels not.
    assert!(value(m, "r2_position") > 0.999, "{m:?}");
    assert!(value(m, "r2_patch") < 0.5, "{m:?}");
    assert!(out.join("noise-stats.png").is_file());
}

#[test]
fn fit_conv_refuses_what_it_cannot_do_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny_mnist(dir.path(), 20, 10);
    let root = dir.path().to_str().unwrap();
    let base = [
        "fit-conv",
        "--dataset-train",
        "MNIST",
        "--dataroot",
        root,
        "--no-download",
    ];
    let refused = |extra: &[&str], says: &str| {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let o = pnn(&args);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{extra:?} was accepted");
        assert!(stderr.contains(says), "{extra:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    };
    refused(&["--layer", "2"], "--target <checkpoint folder>");
    refused(&["--act", "prelu"], "PReLU");
    refused(&["--nmasks", "0"], "--nmasks");
    refused(&["--fit-images", "0"], "at least 1");
    refused(&["--target", "/no/such/checkpoint"], "no such checkpoint folder");
    refused(&["--target-kernel", "4"], "--target-kernel 4");

    // A lenet checkpoint is not a resnet18; a resnet18 checkpoint's strided layer cannot be fitted.
    let runs = dir.path().join("runs");
    for (net, name) in [("lenet", "lenet"), ("resnet18", "resnet")] {
        let save = runs.join(name);
        let o = pnn(&[
            "train",
            "--net-type",
            net,
            "--nfilters",
            "4",
            "--dataset-train",
            "MNIST",
            "--dataset-test",
            "MNIST",
            "--dataroot",
            root,
            "--no-download",
            "--nepochs",
            "1",
            "--batch-size",
            "10",
            "--save",
            save.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let lenet = runs.join("lenet/checkpoint-last");
    refused(&["--target", lenet.to_str().unwrap()], "resnet18 checkpoint");
    let resnet = runs.join("resnet/checkpoint-last");
    refused(&["--target", resnet.to_str().unwrap(), "--layer", "5"], "stride-2");
    refused(
        &["--target", resnet.to_str().unwrap(), "--layer", "17"],
        "0 (the stem) to 16",
    );

    // A later stride-1 layer of the checkpoint is fitted (4 -> 4 channels of 28x28).
    let out = dir.path().join("fit");
    let o = pnn(&[
        "fit-conv",
        "--target",
        resnet.to_str().unwrap(),
        "--dataroot",
        root,
        "--no-download",
        "--layer",
        "2",
        "--nmasks",
        "2",
        "--fit-images",
        "5",
        "--heldout",
        "5",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let md = std::fs::read_to_string(out.join("fit-conv.md")).unwrap();
    assert!(md.contains("layer 2 (block 1 conv2"), "{md}");
}
