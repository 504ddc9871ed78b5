//! PyTorch interoperability against the references themselves. `tests/fixtures/pytorch` holds,
//! per model, checkpoints written by the reference's own models.py (a state_dict and a whole
//! model), a batch with the reference's logits on it and the reference's state_dict listing,
//! all made by `scripts/pytorch-parity.py fixtures`; these tests need no PyTorch.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use burn::tensor::{Device, Tensor, TensorData};
use clap::Parser;
use pnn::config::{Config, TrainArgs};
use pnn::interop::export::{state_dict, write_safetensors};
use pnn::interop::import::{TorchFile, load_into};
use pnn::models::{self, Net};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: TrainArgs,
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pytorch")
}

/// Every case folder, by name.
fn cases() -> Vec<(String, PathBuf)> {
    let mut cases: Vec<(String, PathBuf)> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("flags.txt").is_file())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), p))
        .collect();
    cases.sort();
    cases
}

fn flags(case: &Path) -> String {
    std::fs::read_to_string(case.join("flags.txt"))
        .unwrap()
        .trim()
        .to_string()
}

fn config(flags: &str) -> Config {
    let argv = std::iter::once("pnn").chain(flags.split_whitespace());
    Cli::try_parse_from(argv)
        .expect("flags parse")
        .args
        .to_config()
        .expect("valid configuration")
}

/// A model built from `flags` (its own random weights and masks, from `seed`).
fn fresh(flags: &str, seed: u64) -> Net {
    let mut config = config(flags);
    config.manual_seed = seed;
    let device = Device::flex();
    device.seed(seed);
    models::build(&config, &device).expect("model builds")
}

fn import(case: &Path, file: &str) -> Net {
    let path = case.join(file);
    let torch = TorchFile::open(&path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
    let (model, _) = load_into(fresh(&flags(case), 999), &torch, &path).unwrap_or_else(|e| panic!("{e:#}"));
    model
}

/// A safetensors file's float32 tensor with its shape.
fn read_tensor(path: &Path, name: &str) -> (Vec<f32>, Vec<usize>) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    let values = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (values, t.shape().to_vec())
}

/// The model's logits on the case's batch, in evaluation mode.
fn logits(model: &Net, case: &Path) -> Vec<f32> {
    let (inputs, shape) = read_tensor(&case.join("batch.safetensors"), "inputs");
    let shape: [usize; 4] = shape.try_into().unwrap();
    let x = Tensor::<4>::from_data(TensorData::new(inputs, shape), &Device::flex());
    model.forward(x).into_data().try_to_vec::<f32>().unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn fixtures_cover_the_five_models_of_both_codes() {
    let names: Vec<String> = cases().into_iter().map(|(n, _)| n).collect();
    for needed in [
        "lenet",
        "cifarnet",
        "resnet18",
        "noiseresnet18",
        "perturb_resnet18",
        "noiseresnet18_update",
        "perturb_resnet18_update",
    ] {
        assert!(names.iter().any(|n| n == needed), "no fixture {needed} in {names:?}");
    }
}

/// The reference's checkpoints, both kinds, give in pnn the logits the reference computed.
#[test]
fn reference_checkpoints_give_the_reference_logits() {
    for (name, case) in cases() {
        let (expected, _) = read_tensor(&case.join("batch.safetensors"), "logits");
        for file in ["state_dict.pth", "model.pth"] {
            let got = logits(&import(&case, file), &case);
            let diff = max_abs_diff(&got, &expected);
            assert!(
                diff <= 1e-4,
                "{name}/{file}: logits differ from the reference's by {diff}"
            );
        }
    }
}

/// The reference's state_dict listing, without BatchNorm's batch counters (which pnn does not
/// keep and PyTorch fills in when they are missing).
fn reference_keys(case: &Path) -> BTreeMap<String, Vec<usize>> {
    std::fs::read_to_string(case.join("keys.txt"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut parts = l.split_whitespace();
            let key = parts.next().unwrap().to_string();
            let shape = parts.next().unwrap().trim_matches(|c| c == '[' || c == ']');
            let shape = shape
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().unwrap())
                .collect();
            (key, shape)
        })
        .filter(|(k, _)| !k.ends_with(".num_batches_tracked"))
        .collect()
}

/// What `pnn export` writes has exactly the reference's keys and shapes (what a strict
/// `load_state_dict` checks), and read back it is the same model.
#[test]
fn export_writes_the_reference_state_dict_and_reads_back() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, case) in cases() {
        let model = import(&case, "state_dict.pth");
        let exported = state_dict(&model).unwrap();
        let got: BTreeMap<String, Vec<usize>> = exported.iter().map(|(k, t)| (k.clone(), t.shape.clone())).collect();
        assert_eq!(got, reference_keys(&case), "{name}: exported keys and shapes");
        let file = tmp.path().join(format!("{name}.safetensors"));
        write_safetensors(&file, &exported, Default::default(), None).unwrap();
        let torch = TorchFile::open(&file).unwrap();
        let (back, _) = load_into(fresh(&flags(&case), 7), &torch, &file).unwrap();
        assert_eq!(
            logits(&back, &case),
            logits(&model, &case),
            "{name}: export then import"
        );
    }
}

/// A GPU run of the reference keeps noiseresnet18's noise outside the state_dict: the import
/// takes every other tensor and says the noise is pnn's own.
#[test]
fn noise_kept_outside_the_state_dict_is_reported() {
    let case = fixtures().join("noiseresnet18_update");
    let path = case.join("model_cuda_layout.pth");
    let torch = TorchFile::open(&path).unwrap();
    let (_, report) = load_into(fresh(&flags(&case), 1), &torch, &path).unwrap();
    assert_eq!(
        report.kept.len(),
        16,
        "two noise layers in each of 8 blocks: {:?}",
        report.kept
    );
    assert!(report.kept[0].ends_with(".noise"));
}

fn import_error(file: &Path, flags: &str) -> String {
    match TorchFile::open(file) {
        Err(e) => format!("{e:#}"),
        Ok(torch) => match load_into(fresh(flags, 1), &torch, file) {
            Err(e) => format!("{e:#}"),
            Ok(_) => panic!("{} was accepted with {flags}", file.display()),
        },
    }
}

#[test]
fn bad_files_are_refused_with_the_file_and_key_named() {
    let tmp = tempfile::tempdir().unwrap();
    let lenet = fixtures().join("lenet");
    let lenet_flags = flags(&lenet);

    // Truncated: the end of the zip (its directory) is gone.
    let whole = std::fs::read(lenet.join("model.pth")).unwrap();
    let truncated = tmp.path().join("truncated.pth");
    std::fs::write(&truncated, &whole[..whole.len() / 2]).unwrap();
    let e = import_error(&truncated, &lenet_flags);
    assert!(e.contains("truncated.pth"), "{e}");

    // Not a checkpoint at all.
    let foreign = tmp.path().join("notes.pth");
    std::fs::write(&foreign, b"these are not weights\n").unwrap();
    let e = import_error(&foreign, &lenet_flags);
    assert!(e.contains("notes.pth") && e.contains("not a PyTorch checkpoint"), "{e}");

    // Another model's safetensors: every key is named as missing or without a place.
    let resnet = fixtures().join("resnet18");
    let other = tmp.path().join("resnet18.safetensors");
    write_safetensors(
        &other,
        &state_dict(&import(&resnet, "state_dict.pth")).unwrap(),
        Default::default(),
        None,
    )
    .unwrap();
    let e = import_error(&other, &lenet_flags);
    assert!(e.contains("resnet18.safetensors"), "{e}");
    assert!(
        e.contains("keys the model needs that the file lacks") && e.contains("first_layers.0.noise"),
        "{e}"
    );
    assert!(
        e.contains("keys the model has no place for") && e.contains("conv1.weight"),
        "{e}"
    );

    // The right model with other flags: the shapes that differ are named.
    let e = import_error(
        &lenet.join("state_dict.pth"),
        &lenet_flags.replace("--nfilters 4", "--nfilters 8"),
    );
    assert!(
        e.contains("keys of another shape") && e.contains("first_layers.0.layers.0.weight"),
        "{e}"
    );
    assert!(e.contains("--nfilters"), "the message says which flags to check: {e}");
}

fn pnn(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pnn")).args(args).output().unwrap()
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The commands end to end: import, evaluate the batch, export; a failed import writes nothing
/// and an existing folder is kept unless --force.
#[test]
fn import_eval_export_commands() {
    let tmp = tempfile::tempdir().unwrap();
    let case = fixtures().join("cifarnet");
    let ckpt = tmp.path().join("imported");
    let ckpt_s = ckpt.to_str().unwrap();
    let model_pth = case.join("model.pth");
    let mut args = vec!["import", model_pth.to_str().unwrap(), "--out", ckpt_s];
    let case_flags = flags(&case);
    args.extend(case_flags.split_whitespace());
    let out = pnn(&args);
    assert!(out.status.success(), "{}", text(&out));

    let again = pnn(&args);
    assert!(!again.status.success());
    assert!(text(&again).contains("--force"), "{}", text(&again));

    let outputs = tmp.path().join("outputs.safetensors");
    let batch = case.join("batch.safetensors");
    let out = pnn(&[
        "eval",
        ckpt_s,
        "--inputs",
        batch.to_str().unwrap(),
        "--save-outputs",
        outputs.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let (got, _) = read_tensor(&outputs, "logits");
    let (expected, _) = read_tensor(&batch, "logits");
    assert!(max_abs_diff(&got, &expected) <= 1e-4);

    let out = pnn(&["export", ckpt_s, "--format", "safetensors"]);
    assert!(out.status.success(), "{}", text(&out));
    let exported = tmp.path().join("imported.safetensors");
    let bytes = std::fs::read(&exported).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(meta.metadata().as_ref().unwrap()["format"], "pt");

    // A file that does not fit: refused, and no checkpoint folder appears.
    let failed = tmp.path().join("failed");
    let mut args = vec!["import", model_pth.to_str().unwrap(), "--out", failed.to_str().unwrap()];
    let wrong = case_flags.replace("--nfilters 6", "--nfilters 12");
    args.extend(wrong.split_whitespace());
    let out = pnn(&args);
    assert!(!out.status.success());
    assert!(text(&out).contains("model.pth"), "{}", text(&out));
    assert!(!failed.exists(), "a failed import left {}", failed.display());
}

/// `pnn eval` of a run's checkpoint finds what the training loop measured after that epoch:
/// the same correct and reported accuracy, and a confusion matrix that adds up to it.
#[test]
fn eval_agrees_with_the_training_loop() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    common::write_tiny_mnist(&data, 200, 130);
    let run = tmp.path().join("run");
    let out = pnn(&[
        "train",
        "--dataset-train",
        "MNIST",
        "--dataset-test",
        "MNIST",
        "--dataroot",
        data.to_str().unwrap(),
        "--no-download",
        "--net-type",
        "lenet",
        "--nfilters",
        "6",
        "--nmasks",
        "2",
        "--filter_size",
        "0",
        "--batch-size",
        "32",
        "--nepochs",
        "1",
        "--save",
        run.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let epoch = &common::metrics_without_timing(&run)[0];
    let report = tmp.path().join("eval");
    let out = pnn(&[
        "eval",
        run.to_str().unwrap(),
        "--out",
        report.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("eval.json")).unwrap()).unwrap();
    assert_eq!(record["total"], 130);
    let close = |a: &serde_json::Value, b: &serde_json::Value| (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < 1e-9;
    assert!(close(&record["accuracy"], &epoch["test_acc"]), "{record} vs {epoch}");
    assert!(
        close(
            &record["accuracy_reported_by_original_code"],
            &epoch["test_acc_reported"]
        ),
        "{record} vs {epoch}"
    );
    let confusion: Vec<Vec<u64>> = serde_json::from_value(record["confusion"].clone()).unwrap();
    let diagonal: u64 = (0..10).map(|c| confusion[c][c]).sum();
    assert_eq!(diagonal, record["correct"].as_u64().unwrap());
    assert_eq!(confusion.iter().flatten().sum::<u64>(), 130);
    for file in ["per-class.csv", "confusion.csv", "confusion.png", "confusion.svg"] {
        assert!(report.join(file).is_file(), "{file} missing");
    }
    assert!(text(&out).contains("confusion matrix"), "{}", text(&out));
}

/// Damaged files, cut short or with bytes changed anywhere, are refused or read, but never
/// make the reader panic.
#[test]
fn damaged_checkpoints_never_panic() {
    use rand::{Rng, SeedableRng};
    let tmp = tempfile::tempdir().unwrap();
    let case = fixtures().join("lenet");
    let lenet_flags = flags(&case);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(27);
    let mut refused = 0;
    for file in ["state_dict.pth", "model.pth"] {
        let whole = std::fs::read(case.join(file)).unwrap();
        let mut variants: Vec<Vec<u8>> = (1..40).map(|k| whole[..whole.len() * k / 40].to_vec()).collect();
        for _ in 0..80 {
            let mut bytes = whole.clone();
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(0..bytes.len());
                bytes[at] = rng.random();
            }
            variants.push(bytes);
        }
        for (i, bytes) in variants.iter().enumerate() {
            let path = tmp.path().join(format!("damaged-{i}-{file}"));
            std::fs::write(&path, bytes).unwrap();
            let outcome = std::panic::catch_unwind(|| match TorchFile::open(&path) {
                Err(e) => Err(format!("{e:#}")),
                Ok(torch) => load_into(fresh(&lenet_flags, 1), &torch, &path)
                    .map(|_| ())
                    .map_err(|e| format!("{e:#}")),
            });
            match outcome {
                Err(_) => panic!("{} made the reader panic", path.display()),
                Ok(Err(message)) => {
                    assert!(message.contains(&format!("damaged-{i}")), "{message}");
                    refused += 1;
                }
                Ok(Ok(())) => {}
            }
        }
    }
    // Every cut-short file lacks the zip's directory at its end.
    assert!(refused >= 2 * 39, "only {refused} damaged files were refused");
}

/// `pnn eval --inputs` refuses images the model cannot take, naming the file.
#[test]
fn eval_refuses_inputs_of_another_geometry() {
    let tmp = tempfile::tempdir().unwrap();
    let case = fixtures().join("lenet");
    let ckpt = tmp.path().join("lenet");
    let model_pth = case.join("state_dict.pth");
    let mut args = vec!["import", model_pth.to_str().unwrap(), "--out", ckpt.to_str().unwrap()];
    let case_flags = flags(&case);
    args.extend(case_flags.split_whitespace());
    assert!(pnn(&args).status.success());
    let cifar_batch = fixtures().join("resnet18/batch.safetensors");
    let out = pnn(&[
        "eval",
        ckpt.to_str().unwrap(),
        "--inputs",
        cifar_batch.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(!out.status.success());
    let message = text(&out);
    assert!(
        message.contains("batch.safetensors") && message.contains("3x32x32") && message.contains("1x28x28"),
        "{message}"
    );
}
