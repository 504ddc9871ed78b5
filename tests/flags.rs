//! Every combination of the structural flags, on several image geometries: each is either
//! refused before training with a message that names a flag, or builds a model that trains a
//! step. None may panic.

use std::panic::{AssertUnwindSafe, catch_unwind};

use burn::module::Module;
use burn::nn::loss::CrossEntropyLoss;
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use pnn::config::TrainArgs;
use pnn::models::{self, Geometry};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const NETS: [&str; 5] = ["lenet", "cifarnet", "resnet18", "noiseresnet18", "perturb_resnet18"];
const SIZES: [usize; 5] = [0, 1, 3, 5, 7];
const ACTS: [&str; 8] = ["relu", "lrelu", "prelu", "rrelu", "elu", "selu", "tanh", "sigmoid"];

/// (data set flag, geometry): MNIST, CIFAR-10, and image folders of small and odd sizes.
fn geometries() -> Vec<(&'static str, Geometry)> {
    let g = |channels, input_size, num_classes| Geometry {
        channels,
        input_size,
        num_classes,
    };
    vec![
        ("MNIST", g(1, 28, 10)),
        ("CIFAR10", g(3, 32, 10)),
        ("Folder", g(3, 12, 3)),
        ("Folder", g(3, 5, 2)),
        ("Folder", g(3, 1, 2)),
    ]
}

#[test]
fn every_structural_flag_combination_is_refused_clearly_or_trains_a_step() {
    let device = Device::flex().autodiff();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (mut trained, mut refused, mut panicked, mut unnamed) = (0, 0, Vec::new(), Vec::new());
    for net in NETS {
        for first in SIZES {
            for filter in SIZES {
                for nmasks in [1, 3] {
                    for mix in [false, true] {
                        for (dataset, geometry) in geometries() {
                            // The remaining switches vary at random (seeded), not exhaustively.
                            let act = ACTS[rng.random_range(0..ACTS.len())];
                            let code = ["reproduction", "update"][rng.random_range(0..2)];
                            let mut flags = format!(
                                "--net-type {net} --first_filter_size {first} --filter_size {filter} --nmasks {nmasks} \
                                 --nfilters 6 --dataset-train {dataset} --dataset-test {dataset} --act {act} --code {code}"
                            );
                            for (switch, off) in [
                                ("--mix_maps", "--no-mix_maps"),
                                ("--unique_masks", "--no-unique_masks"),
                                ("--train_masks", "--no-train_masks"),
                                ("--use_act", "--no-use_act"),
                            ] {
                                let on = if switch == "--mix_maps" {
                                    mix
                                } else {
                                    rng.random_bool(0.5)
                                };
                                flags.push(' ');
                                flags.push_str(if on { switch } else { off });
                            }
                            if rng.random_bool(0.3) {
                                flags.push_str(" --pool_type avg");
                            }
                            match try_combination(&flags, geometry, &device) {
                                Outcome::Trained => trained += 1,
                                Outcome::Refused(msg) => {
                                    if !(msg.contains("--") || msg.contains("images")) {
                                        unnamed.push(format!("{flags} on {geometry:?}: {msg}"));
                                    }
                                    refused += 1;
                                }
                                Outcome::Panicked(msg) => panicked.push(format!("{flags} on {geometry:?}: {msg}")),
                            }
                        }
                    }
                }
            }
        }
    }
    println!("{trained} combinations trained a step, {refused} were refused");
    for line in panicked.iter().chain(&unnamed) {
        println!("{line}");
    }
    assert!(unnamed.is_empty(), "{} refusals name no flag", unnamed.len());
    assert!(panicked.is_empty(), "{} combinations panicked", panicked.len());
    assert!(trained > 500, "most combinations are valid ({trained} trained)");
}

enum Outcome {
    Trained,
    Refused(String),
    Panicked(String),
}

fn try_combination(flags: &str, geometry: Geometry, device: &Device) -> Outcome {
    let config = match TrainArgs::parse_flags(flags.split_whitespace()).unwrap().to_config() {
        Ok(c) => c,
        Err(e) => return Outcome::Refused(format!("{e:#}")),
    };
    let result = catch_unwind(AssertUnwindSafe(|| -> Result<(), String> {
        let model = models::build_for(&config, geometry, device).map_err(|e| format!("{e:#}"))?;
        let [c, s] = [geometry.channels, geometry.input_size];
        let images = Tensor::<4>::random([2, c, s, s], Distribution::Normal(0.0, 1.0), device);
        let labels = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 1], [2]), device);
        let output = model.forward(images);
        assert_eq!(output.dims(), [2, geometry.num_classes]);
        let loss = CrossEntropyLoss::new(None, device).forward(output, labels);
        let grads = loss.backward();
        let _ = model.valid();
        drop(grads);
        Ok(())
    }));
    match result {
        Ok(Ok(())) => Outcome::Trained,
        Ok(Err(msg)) => Outcome::Refused(msg),
        Err(panic) => Outcome::Panicked(
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default(),
        ),
    }
}

#[test]
fn out_of_range_numbers_are_refused_naming_their_flag() {
    for (flags, expected) in [
        ("--momentum -0.5", "--momentum"),
        ("--weight-decay -1", "--weight-decay"),
        ("--weight-decay NaN", "--weight-decay"),
        ("--adam-beta1 1.0", "--adam-beta1"),
        ("--adam-beta2 -0.1", "--adam-beta2"),
        ("--train-subset 0", "--train-subset 0"),
        ("--test-subset 0", "--test-subset 0"),
        ("--nthreads 0", "--nthreads"),
        ("--learning-rate 0", "--learning-rate"),
        ("--learning-rate inf", "--learning-rate"),
        ("--dropout 1.0", "--dropout"),
        ("--level NaN", "--level"),
        ("--nfilters 0", "--nfilters"),
        ("--nmasks 0", "--nmasks"),
        ("--batch-size 0", "--batch-size"),
        ("--filter_size 2", "--filter_size 2"),
        ("--net-type perturb_resnet18 --filter_size 5", "--filter_size 5"),
    ] {
        let err = TrainArgs::parse_flags(flags.split_whitespace())
            .unwrap()
            .to_config()
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains(expected), "{flags}: {msg}");
    }
}

/// argparse takes `--level -0.5` as a value, so the reference's commands may hold one.
#[test]
fn negative_numbers_are_taken_as_values_as_argparse_does() {
    let flags = ["--level", "-0.5", "--scale_noise", "-1"];
    let config = TrainArgs::parse_flags(flags).unwrap().to_config().unwrap();
    assert_eq!((config.level, config.scale_noise), (-0.5, -1.0));
}
