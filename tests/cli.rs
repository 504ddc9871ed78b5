//! `pnn train`, `info`, `plot` and `compare` end to end, as a user runs them.

mod common;

use std::process::Command;

use common::{TINY_LENET, metrics_without_timing, serve, write_tiny_mnist};

fn pnn() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pnn"))
}

fn train_args<'a>(data: &'a str, save: &'a str, epochs: &'a str) -> Vec<&'a str> {
    let mut args = vec!["train", "--dataroot", data, "--save", save, "--nepochs", epochs];
    args.extend(TINY_LENET);
    args
}

#[test]
fn train_one_epoch_end_to_end_writes_metrics_checkpoints_and_both_accuracies() {
    let data = tempfile::tempdir().unwrap();
    write_tiny_mnist(data.path(), 200, 50);
    let runs = tempfile::tempdir().unwrap();
    let save = runs.path().join("run");
    let (d, s) = (data.path().to_str().unwrap(), save.to_str().unwrap());
    let out = pnn().args(train_args(d, s, "1")).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Model size:"), "{stdout}");
    assert!(stdout.contains("original code would report"), "{stdout}");
    let last = stdout.lines().last().unwrap();
    assert!(
        last.starts_with("Best Accuracy: ") && last.ends_with("(epoch 1)"),
        "last line: {last}"
    );

    let jsonl = std::fs::read_to_string(save.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = jsonl.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1);
    for key in [
        "epoch",
        "train_loss",
        "train_acc",
        "test_loss",
        "test_acc",
        "test_acc_reported",
    ] {
        assert!(lines[0][key].is_number(), "metrics.jsonl has {key}");
    }
    // TensorBoard's event file: whole records (length, data, each with its masked CRC-32C): the
    // file version, the flags as hyper-parameters, one epoch's scalars.
    let events: Vec<_> = std::fs::read_dir(&save)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("events.out.tfevents.")
        })
        .collect();
    assert_eq!(events.len(), 1, "{events:?}");
    let bytes = std::fs::read(&events[0]).unwrap();
    let masked = |b: &[u8]| crc32c::crc32c(b).rotate_right(15).wrapping_add(0xa282_ead8);
    let (mut at, mut records) = (0, 0);
    while at < bytes.len() {
        let len = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
        assert_eq!(masked(&bytes[at..at + 8]).to_le_bytes(), bytes[at + 8..at + 12]);
        let data = &bytes[at + 12..at + 12 + len];
        assert_eq!(masked(data).to_le_bytes(), bytes[at + 12 + len..at + 16 + len]);
        at += 16 + len;
        records += 1;
    }
    assert_eq!((at, records), (bytes.len(), 3));
    assert!(bytes.windows(21).any(|w| w == b"accuracy/test_correct"));

    let acc = lines[0]["test_acc"].as_f64().unwrap();
    // 50 test images: the correct accuracy is a multiple of 2 %, and it is what Best Accuracy says.
    assert!(
        (acc / 2.0 - (acc / 2.0).round()).abs() < 1e-9,
        "correct accuracy {acc} is correct/total"
    );
    assert!(last.contains(&format!("{acc:.2}")));
    let csv = std::fs::read_to_string(save.join("metrics.csv")).unwrap();
    assert!(csv.starts_with("epoch,learning_rate,train_loss,train_acc,test_loss,test_acc,test_acc_reported"));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(save.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["config"]["nfilters"], 8);
    for dir in ["checkpoint-last", "checkpoint-best"] {
        for file in ["model.bpk", "optimizer.bpk", "state.json"] {
            assert!(save.join(dir).join(file).is_file(), "{dir}/{file}");
        }
    }

    // Resume: a second epoch continues the history in the same folder.
    let resume = save.join("checkpoint-last");
    let mut args = train_args(d, s, "2");
    args.extend(["--resume", resume.to_str().unwrap()]);
    let out = pnn().args(&args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("Epoch 2/2") && !stdout.contains("Epoch 1/2"),
        "{stdout}"
    );
    let resumed = metrics_without_timing(&save);
    assert_eq!(resumed.len(), 2);

    // The same run without interruption, and again: identical numbers to the last digit.
    for name in ["straight", "again"] {
        let other = runs.path().join(name);
        let out = pnn()
            .args(train_args(d, other.to_str().unwrap(), "2"))
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(
            metrics_without_timing(&other),
            resumed,
            "{name}: same seed, same metrics; resume is exact"
        );
    }

    // Resuming with a setting that changes the numbers is refused, naming the setting.
    let mut args = train_args(d, s, "3");
    args.extend(["--resume", resume.to_str().unwrap(), "--level", "0.25"]);
    let out = pnn().args(&args).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("level: 0.5 then, 0.25 now"), "{stderr}");

    // summary.json traces the run: provenance, wall time, where it stands.
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(save.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["finished"], true);
    assert_eq!(summary["epochs_done"], 2);
    assert!(summary["wall_seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(summary["provenance"]["pnn_version"], env!("CARGO_PKG_VERSION"));
    assert!(!summary["provenance"]["pnn_commit"].as_str().unwrap().is_empty());
    assert_eq!(summary["provenance"]["backend"], "cpu (burn flex)");
    assert!(summary["provenance"]["machine"]["cores"].as_u64().unwrap() >= 1);

    // The three runs compared, and plotted.
    let out = pnn().args(["compare", runs.path().to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout);
    for name in ["| again | lenet |", "| run | lenet |", "| straight | lenet |"] {
        assert!(table.contains(name), "{table}");
    }
    let out = pnn().args(["plot", s]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(save.join("accuracy.png").is_file() && save.join("accuracy.svg").is_file());
    let stem = runs.path().join("all");
    let out = pnn()
        .args([
            "plot",
            runs.path().to_str().unwrap(),
            "--reported",
            "-o",
            stem.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(runs.path().join("all.png").is_file());
}

/// Per-epoch metrics with the wall-clock columns removed.

#[test]
fn bad_input_is_a_clear_error_not_a_panic() {
    let empty = tempfile::tempdir().unwrap();
    let runs = tempfile::tempdir().unwrap();
    let save = runs.path().join("run");
    let mut args = train_args(empty.path().to_str().unwrap(), save.to_str().unwrap(), "1");
    args.push("--no-download");
    let out = pnn().args(&args).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("train-images-idx3-ubyte") && stderr.contains("--dataroot"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    // Downloading from a mirror that serves a wrong file: refused by checksum, nothing kept.
    let base = serve(vec![("/train-images-idx3-ubyte.gz", b"not mnist".to_vec(), 9)], 1);
    let out = pnn()
        .args(train_args(empty.path().to_str().unwrap(), save.to_str().unwrap(), "1"))
        .env("PNN_DATA_MIRROR", &base)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("f68b3c2dcbeaaa9fbdd348bbdeb94873") && stderr.contains("not the published"),
        "{stderr}"
    );
    let raw = empty.path().join("MNIST/raw");
    let left = std::fs::read_dir(&raw).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "no partial or bad file is left in {raw:?}");

    let out = pnn()
        .args([
            "info",
            "--net-type",
            "lenet",
            "--dataset-train",
            "MNIST",
            "--dataset-test",
            "MNIST",
            "--nmasks",
            "0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--nmasks"));

    // Reports of a folder that holds no run.
    for command in ["compare", "plot"] {
        let out = pnn().args([command, empty.path().to_str().unwrap()]).output().unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("holds no pnn run") && !stderr.contains("panicked"),
            "{stderr}"
        );
    }
}

#[test]
fn info_prints_the_reference_model_size_line() {
    let out = pnn()
        .args([
            "info",
            "--net-type",
            "lenet",
            "--dataset-train",
            "MNIST",
            "--dataset-test",
            "MNIST",
            "--nfilters",
            "128",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("Model size: 0.30M regular parameters, 0.03M noise mask values (297866 regular parameters, 32144 noise mask values)"),
        "{stdout}"
    );
}

/// A GPU device asked of a binary built without that GPU feature names the feature to build with.
#[test]
fn a_gpu_device_without_its_build_feature_says_how_to_build_it() {
    for (device, built) in [
        ("vulkan", cfg!(feature = "vulkan")),
        ("wgpu:0", cfg!(feature = "wgpu")),
        ("cuda", cfg!(feature = "cuda")),
    ] {
        if built {
            continue;
        }
        let feature = device.split(':').next().unwrap();
        let e = pnn::device::Backend::parse(device).unwrap_err().to_string();
        assert!(
            e.contains(&format!("--features {feature}")) && e.contains(&format!("--device {feature}")),
            "{device}: {e}"
        );
    }
    if !cfg!(feature = "cuda") {
        let e = pnn::device::Backend::parse("cuda:1").unwrap_err().to_string();
        assert!(e.contains("scripts/setup-cuda-build.sh"), "{e}");
    }
    let e = pnn::device::Backend::parse("metal").unwrap_err().to_string();
    assert!(e.contains("wgpu[:N]") && e.contains("vulkan[:N]"), "{e}");
    let e = pnn::device::Backend::parse("wgpu:first").unwrap_err().to_string();
    assert!(e.contains("GPU number"), "{e}");
}

/// A CUDA run's libdevice: CUDA_PATH alone when it is set (as burn's CUDA backend reads it), else
/// an installed toolkit, else the copy `scripts/setup-cuda-build.sh` installs.
#[test]
fn libdevice_is_found_where_the_cuda_backend_and_the_setup_script_put_it() {
    use pnn::device::locate_libdevice;
    let dir = tempfile::tempdir().unwrap();
    let root = |name: &str, with_libdevice: bool| {
        let root = dir.path().join(name);
        std::fs::create_dir_all(root.join("nvvm/libdevice")).unwrap();
        if with_libdevice {
            std::fs::write(root.join("nvvm/libdevice/libdevice.10.bc"), b"BC").unwrap();
        }
        root
    };
    let (toolkit, empty, installed) = (root("toolkit", true), root("empty", false), root("installed", true));
    let libdevice = |root: &std::path::Path| Some(root.join("nvvm/libdevice/libdevice.10.bc"));
    let toolkits = [empty.clone(), toolkit.clone()];
    assert_eq!(
        locate_libdevice(None, &toolkits, Some(installed.clone())),
        libdevice(&toolkit)
    );
    assert_eq!(
        locate_libdevice(None, &toolkits[..1], Some(installed.clone())),
        libdevice(&installed)
    );
    assert_eq!(
        locate_libdevice(Some(installed.clone()), &toolkits, None),
        libdevice(&installed)
    );
    // A CUDA_PATH without libdevice is not passed over for another: the backend would not either.
    assert_eq!(locate_libdevice(Some(empty.clone()), &toolkits, Some(installed)), None);
    assert_eq!(locate_libdevice(None, &toolkits[..1], None), None);
}

/// A list of devices (data parallel) that cannot work is refused before anything runs, with
/// what to write instead.
#[test]
fn a_device_list_that_cannot_train_data_parallel_says_why() {
    use pnn::device::Backend;
    let refused = |spec: &str, ngpu: usize| Backend::parse_with_count(spec, ngpu).unwrap_err().to_string();
    let e = refused("cpu,cpu", 1);
    assert!(e.contains("CPU is one device"), "{e}");
    let e = refused("vulkan:0,cuda:1", 1);
    assert!(e.contains("of one kind"), "{e}");
    let e = refused("cpu", 2);
    assert!(
        e.contains("--ngpu 2 needs --device vulkan, cuda or wgpu") && e.contains("GPUs 0 to 1"),
        "{e}"
    );
    let e = refused("vulkan:1", 2);
    assert!(e.contains("--device vulkan:0,vulkan:2"), "{e}");
    if !cfg!(feature = "vulkan") {
        // Each listed device is opened as on its own: a CPU build names the feature.
        let e = refused("vulkan", 2);
        assert!(e.contains("--features vulkan"), "{e}");
    }
    // `--ngpu 1` is the original code's default: the device alone.
    assert_eq!(Backend::parse_with_count("cpu", 1).unwrap().devices().len(), 1);
}

/// `pnn train --ngpu` is accepted (the original code's flag), and its error reaches the user
/// as a message, not a panic.
#[test]
fn ngpu_on_the_command_line_is_checked_against_the_device() {
    let out = Command::new(env!("CARGO_BIN_EXE_pnn"))
        .args(["train", "--device", "cpu", "--ngpu", "2", "--nepochs", "1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--ngpu 2 needs --device vulkan, cuda or wgpu"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A batch cut for data parallel: consecutive parts, sizes differing by at most one, every
/// image and label once.
#[test]
fn a_batch_splits_into_consecutive_parts_of_near_equal_size() {
    let n = 7;
    let image = 2 * 3 * 3;
    let batch = pnn::data::Batch {
        images: (0..n * image).map(|v| v as f32).collect(),
        labels: (0..n as i64).collect(),
        shape: [n, 2, 3, 3],
    };
    let parts = batch.split(3);
    let sizes: Vec<usize> = parts.iter().map(|p| p.len()).collect();
    assert_eq!(sizes, [3, 2, 2]);
    for part in &parts {
        assert_eq!(part.shape, [part.len(), 2, 3, 3]);
        assert_eq!(part.images.len(), part.len() * image);
        // Each image travels with its label.
        for (i, &label) in part.labels.iter().enumerate() {
            assert_eq!(part.images[i * image], (label as usize * image) as f32);
        }
    }
    let labels: Vec<i64> = parts.iter().flat_map(|p| p.labels.clone()).collect();
    assert_eq!(labels, batch.labels);
    assert_eq!(batch.split(1)[0].labels, batch.labels);
    assert_eq!(batch.split(20).len(), n, "never an empty part");
}

/// `pnn reproduce --list`: both sides of the debate as `pnn train` command lines, each one a
/// valid configuration.
#[test]
fn reproduce_lists_both_tables_as_train_commands() {
    let out = pnn().args(["reproduce", "--list"]).output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let commands: Vec<&str> = stdout.lines().filter_map(|l| l.strip_prefix("pnn train ")).collect();
    assert_eq!(commands.len(), 10, "{stdout}");
    assert!(
        stdout.contains("(--table update)") && stdout.contains("published 90.35%"),
        "{stdout}"
    );
    for command in &commands {
        let config = pnn::config::TrainArgs::parse_flags(command.split_whitespace())
            .and_then(|a| a.to_config())
            .unwrap_or_else(|e| panic!("{command}: {e}"));
        assert!(config.nepochs == 150 || config.nepochs == 450, "{command}");
    }
    let update = pnn()
        .args(["reproduce", "--list", "--table", "update"])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&update.stdout);
    assert_eq!(
        listed
            .lines()
            .filter(|l| l.starts_with("pnn train --code update"))
            .count(),
        2,
        "{listed}"
    );
}
