//! Results: the reported curve against its definition, comparison tables, figures, seed
//! statistics, and `pnn reproduce` skipping finished runs and resuming an unfinished one.

mod common;

use std::path::{Path, PathBuf};

use common::write_cifar10_release;
use pnn::config::{Config, TrainArgs};
use pnn::device::Backend;
use pnn::models::ParamCount;
use pnn::provenance::Provenance;
use pnn::report::stats::Stat;
use pnn::report::{RecordedRun, find_runs, plot, table};
use pnn::sweep::Execution;
use pnn::sweep::reproduce::{self, Budget, EXPERIMENTS, ReproduceOptions, RunStatus};
use pnn::train::RunSummary;
use pnn::train::metrics::{EpochRecord, ReportedAccuracy};
use pnn::train::run_dir::{RunDir, RunSummaryFile};

fn config(flags: &str) -> Config {
    TrainArgs::parse_flags(flags.split_whitespace())
        .unwrap()
        .to_config()
        .unwrap()
}

fn record(epoch: usize, test_acc: f64, reported: f64) -> EpochRecord {
    EpochRecord {
        epoch,
        learning_rate: 1e-3,
        train_loss: 1.0 / epoch as f64,
        train_acc: 10.0 * epoch as f64,
        test_loss: 2.0 / epoch as f64,
        test_acc,
        test_acc_reported: reported,
        epoch_seconds: 2.0 * epoch as f64,
        train_images_per_sec: 100.0 + epoch as f64,
    }
}

/// Writes a run folder as the trainer does (metrics and summary) and reads it back.
fn recorded_run(dir: &Path, config: &Config, history: Vec<EpochRecord>) -> RecordedRun {
    let run = RunDir::create(dir.to_path_buf(), None).unwrap();
    run.write_metrics(&history).unwrap();
    let params = ParamCount {
        regular: 1234,
        noise: 56,
        frozen: 0,
    };
    let summary = RunSummary {
        run_dir: dir.to_path_buf(),
        history,
        params,
    };
    let file: RunSummaryFile = summary.file(&Provenance::this("cpu (test)"), config, 42.0);
    run.write_summary(&file).unwrap();
    RecordedRun::load(dir).unwrap()
}

/// The original monitor, written out in closed form: after batches a_1..a_n (full batches
/// only, in order, across epochs, never reset), v = sum_k 0.3 * 0.7^(n-k) * a_k.
fn closed_form(batch_accuracies: &[f64]) -> f64 {
    let n = batch_accuracies.len();
    batch_accuracies
        .iter()
        .enumerate()
        .map(|(k, a)| 0.3 * 0.7f64.powi((n - 1 - k) as i32) * a)
        .sum()
}

#[test]
fn reported_curve_follows_the_original_definition_on_a_constructed_run() {
    // Three epochs of a test set of 14 images in batches of 4: three full batches and a short
    // one of 2, which the original monitor skipped.
    let batch_size = 4;
    let epochs: [[(usize, usize); 4]; 3] = [
        [(1, 4), (2, 4), (0, 4), (2, 2)],
        [(3, 4), (2, 4), (4, 4), (0, 2)],
        [(4, 4), (4, 4), (3, 4), (1, 2)],
    ];
    let mut reported = ReportedAccuracy::default();
    let mut full_batches = Vec::new();
    let mut history = Vec::new();
    let mut expected_reported = Vec::new();
    for (e, batches) in epochs.iter().enumerate() {
        let (mut correct, mut total) = (0, 0);
        for &(c, len) in batches {
            reported.update(c, len, batch_size);
            correct += c;
            total += len;
            if len == batch_size {
                full_batches.push(100.0 * c as f64 / len as f64);
            }
        }
        expected_reported.push(closed_form(&full_batches));
        history.push(record(e + 1, 100.0 * correct as f64 / total as f64, reported.value));
    }
    let dir = tempfile::tempdir().unwrap();
    let run = recorded_run(
        dir.path(),
        &config("--net-type lenet --dataset-train MNIST --dataset-test MNIST"),
        history,
    );
    let figure = plot::reported_vs_correct(&run);
    let correct = &figure.curves[0];
    let reported_curve = &figure.curves[1];
    assert_eq!(correct.label, plot::CORRECT_LABEL);
    assert_eq!(reported_curve.label, plot::REPORTED_LABEL);
    assert!(reported_curve.dashed && !correct.dashed);
    for (i, expected) in expected_reported.iter().enumerate() {
        let (epoch, value, spread) = reported_curve.points[i];
        assert_eq!(epoch, (i + 1) as f64);
        assert!(
            (value - expected).abs() < 1e-9,
            "epoch {}: {value} vs {expected}",
            i + 1
        );
        assert_eq!(spread, None);
    }
    // Correct accuracy counts the short batch: epoch 1 is 5 / 14.
    assert!((correct.points[0].1 - 100.0 * 5.0 / 14.0).abs() < 1e-9);
    // The smoothing lags and differs from the correct value: e.g. epoch 3 reports less than
    // its 12 / 14 correct, pulled down by epoch 2's batches.
    assert!(reported_curve.points[2].1 < correct.points[2].1);
}

#[test]
fn comparison_table_names_the_differing_flags_and_traces_each_row() {
    let dir = tempfile::tempdir().unwrap();
    let base = "--net-type cifarnet --nfilters 12 --batch-size 8";
    let a = recorded_run(
        &dir.path().join("a"),
        &config(&format!("{base} --nmasks 1")),
        vec![record(1, 30.0, 20.0), record(2, 45.5, 31.0), record(3, 41.0, 33.0)],
    );
    let b = recorded_run(
        &dir.path().join("b"),
        &config(&format!("{base} --nmasks 4 --no-unique_masks")),
        vec![record(1, 35.0, 25.0), record(2, 38.0, 36.5)],
    );
    // find_runs walks a folder of runs, in name order.
    let found = find_runs(&[dir.path().to_path_buf()]).unwrap();
    assert_eq!(found, vec![dir.path().join("a"), dir.path().join("b")]);

    let runs = vec![a, b];
    let md = table::compare_markdown(&runs);
    let lines: Vec<&str> = md.lines().collect();
    assert!(lines[0].starts_with("| run | model | flags that differ |"), "{md}");
    assert!(
        lines[2].starts_with(
            "| a | cifarnet | `--nmasks 1 --unique_masks` | 1,234 | 56 | 45.50 (2) | 41.00 | 33.00 | 3 | 4.0 | 102.0 |"
        ),
        "{md}"
    );
    assert!(lines[3].starts_with("| b | cifarnet | `--nmasks 4 --no-unique_masks` | 1,234 | 56 | 38.00 (2) | 38.00 | 36.50 | 2 | 3.0 | 101.5 |"), "{md}");
    assert!(
        md.contains(
            "Shared by all runs: `--net-type cifarnet --dataset-train CIFAR10 --dataset-test CIFAR10 --batch-size 8 \
             --optim-method SGD --learning-rate 0.001 --nepochs 150 --manual-seed 1`."
        ),
        "{md}"
    );
    assert!(md.contains(&format!("pnn {}", env!("CARGO_PKG_VERSION"))), "{md}");
    assert!(md.contains("wall time 42 s"), "{md}");

    let csv = table::compare_csv(&runs).unwrap();
    let mut reader = csv::Reader::from_reader(csv.as_slice());
    let headers = reader.headers().unwrap().clone();
    for column in [
        "best_correct",
        "best_reported",
        "pnn_commit",
        "backend",
        "cpu",
        "wall_seconds",
        "config",
    ] {
        assert!(headers.iter().any(|h| h == column), "missing column {column}");
    }
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 2);
    let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
    assert_eq!(&rows[1][col("best_reported")], "36.5");
    let config_b: Config = serde_json::from_str(&rows[1][col("config")]).unwrap();
    assert_eq!(config_b, runs[1].summary.config);
}

fn dominant_colour_pixels(png: &[u8], rgb: [u8; 3]) -> usize {
    let image = image::load_from_memory(png).unwrap().to_rgb8();
    image.pixels().filter(|p| p.0 == rgb).count()
}

#[test]
fn figures_are_written_as_png_svg_and_a_record_of_their_runs() {
    let dir = tempfile::tempdir().unwrap();
    let run = recorded_run(
        &dir.path().join("run"),
        &config("--net-type lenet --dataset-train MNIST --dataset-test MNIST --nmasks 2"),
        vec![record(1, 60.0, 40.0), record(2, 70.0, 55.0), record(3, 74.0, 61.0)],
    );
    let other = recorded_run(
        &dir.path().join("other"),
        &config("--net-type lenet --dataset-train MNIST --dataset-test MNIST --nmasks 1"),
        vec![record(1, 50.0, 30.0), record(2, 66.0, 50.0), record(3, 71.0, 58.0)],
    );

    let single = plot::reported_vs_correct(&run);
    let files = plot::save(&single, &dir.path().join("figs/single"), &[&run]).unwrap();
    assert_eq!(files.len(), 3);
    let png = std::fs::read(&files[0]).unwrap();
    let image = image::load_from_memory(&png).unwrap();
    assert_eq!((image.width(), image.height()), single.size());
    // Both curves are drawn in their palette colours (blue correct, vermilion reported).
    assert!(dominant_colour_pixels(&png, [0, 114, 178]) > 200);
    assert!(dominant_colour_pixels(&png, [213, 94, 0]) > 200);
    // Text is rendered (dark anti-aliased glyph pixels), not silently dropped.
    let dark = image.to_rgb8().pixels().filter(|p| p.0.iter().all(|&c| c < 60)).count();
    assert!(
        dark > 2000,
        "only {dark} dark pixels: is the title and legend text drawn?"
    );
    let svg = std::fs::read_to_string(&files[1]).unwrap();
    assert!(svg.contains("correct vs reported test accuracy"));
    assert!(svg.contains("Test accuracy (%)") && svg.contains("Epoch"));
    let record: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&files[2]).unwrap()).unwrap();
    assert_eq!(record["runs"][0]["config"]["nmasks"], 2);
    assert_eq!(record["runs"][0]["dir"], run.dir.display().to_string());

    let several = plot::runs_figure(&[run.clone(), other.clone()], true);
    let labels: Vec<&str> = several.curves.iter().map(|c| c.label.as_str()).collect();
    assert_eq!(
        labels,
        [
            "--nmasks 2 (correct)",
            "--nmasks 2 (reported by the original code)",
            "--nmasks 1 (correct)",
            "--nmasks 1 (reported by the original code)"
        ]
    );
    let files = plot::save(&several, &dir.path().join("figs/several"), &[&run, &other]).unwrap();
    let svg = std::fs::read_to_string(&files[1]).unwrap();
    assert!(svg.contains("--nmasks 1 (reported by the original code)"));
}

#[test]
fn seeds_are_summarised_by_mean_and_sample_standard_deviation() {
    let s = Stat::of(&[84.0, 86.0, 85.0]);
    assert_eq!(s.mean, 85.0);
    assert_eq!(s.std, Some(1.0));
    assert_eq!(s.show(2), "85.00 ± 1.00");
    assert_eq!(Stat::of(&[72.5]).show(1), "72.5");

    // Two seeds of experiment 5, recorded in reproduce's layout.
    let out = tempfile::tempdir().unwrap();
    let exp = EXPERIMENTS[4];
    let c = config(&format!("{} --nepochs 2", exp.flags));
    for (seed, accs) in [(1, [20.0, 30.0]), (2, [24.0, 28.0])] {
        recorded_run(
            &exp.run_dir(out.path(), seed),
            &c,
            vec![record(1, accs[0], accs[0] + 10.0), record(2, accs[1], accs[1] + 20.0)],
        );
    }
    let rows = reproduce::table_rows(out.path(), &[exp], 2).unwrap();
    let row = &rows[0].0;
    assert_eq!(row.seeds, 2);
    assert_eq!(row.best_correct.mean, 29.0); // best of seed 1 is 30, of seed 2 is 28
    assert!((row.best_correct.std.unwrap() - 2f64.sqrt()).abs() < 1e-12);
    assert_eq!(row.best_reported.mean, 49.0);
    assert_eq!(row.reported_minus_correct.mean, 20.0);
    let budget = Budget {
        nepochs: 2,
        train_subset: Some(500),
        test_subset: None,
        seeds: 2,
    };
    let md = reproduce::table_markdown(
        &reproduce::REPRODUCTION,
        &budget,
        std::slice::from_ref(row),
        &[],
        &["pnn test".into()],
        84.0,
    );
    assert!(
        md.contains("| 5 | PNN, noise in all layers (first included), 1 mask | 1,234 | 56 | 72.6 | 29.00 ± 1.41 |"),
        "{md}"
    );
    assert!(md.contains("500 training images"), "{md}");
}

fn reproduce_options(
    out: &Path,
    dataroot: &Path,
    nepochs: usize,
    train_subset: Option<usize>,
    only: &[usize],
) -> ReproduceOptions {
    ReproduceOptions {
        table: &reproduce::REPRODUCTION,
        out: out.to_path_buf(),
        dataroot: dataroot.to_path_buf(),
        download: false,
        budget: Budget {
            nepochs,
            train_subset,
            test_subset: None,
            seeds: 1,
        },
        only: only.to_vec(),
    }
}

/// One run at a time, in this process, quiet.
fn in_turn() -> Execution {
    Execution {
        backend: Backend::cpu(),
        device: "cpu".into(),
        jobs: 1,
        program: None,
        verbose: false,
        stop: Default::default(),
    }
}

fn read(path: PathBuf) -> String {
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_experiment_of_the_table_is_a_valid_configuration() {
    let opts = reproduce_options(Path::new("out"), Path::new("data"), 150, None, &[]);
    let published: Vec<f64> = EXPERIMENTS.iter().map(|e| e.published).collect();
    assert_eq!(published, [91.8, 85.7, 86.2, 85.5, 72.6, 82.7, 82.4, 85.9]);
    for exp in EXPERIMENTS {
        let c = exp.config(&opts, 3).unwrap();
        assert_eq!((c.manual_seed, c.nepochs), (3, 150));
        assert_eq!(
            exp.run_dir(Path::new("out"), 3),
            Path::new("out").join(exp.slug).join("seed3")
        );
    }
}

#[test]
fn the_updates_table_runs_its_commands_with_the_updates_code() {
    let mut opts = reproduce_options(Path::new("out"), Path::new("data"), 450, None, &[]);
    opts.table = reproduce::table("update").unwrap();
    assert_eq!(opts.table.published_epochs, 450);
    let published: Vec<f64> = opts.table.experiments.iter().map(|e| e.published).collect();
    assert_eq!(published, [90.35, 85.92]);
    for exp in opts.table.experiments {
        let c = exp.config(&opts, 2).unwrap();
        assert_eq!(c.code, pnn::config::Code::Update, "{}", exp.flags);
        assert_eq!((c.level, c.optim_method), (0.1, pnn::config::OptimMethod::Adam));
        // Its folders never collide with the reproduction's.
        assert!(EXPERIMENTS.iter().all(|e| e.slug != exp.slug));
    }
    let err = format!("{:#}", reproduce::table("klachko").unwrap_err());
    assert!(err.contains("reproduction, update"), "{err}");
    let mut only = reproduce_options(Path::new("out"), Path::new("data"), 1, None, &[3]);
    only.table = &reproduce::UPDATE;
    let err = format!("{:#}", reproduce::run(&only, &in_turn()).unwrap_err());
    assert!(err.contains("numbered 1 to 2"), "{err}");
}

#[test]
fn reproduce_skips_finished_runs_and_resumes_an_unfinished_one() {
    let data = tempfile::tempdir().unwrap();
    write_cifar10_release(&data.path().join("cifar-10-batches-bin"), 10);
    let out = tempfile::tempdir().unwrap();
    let out = out.path();

    // A first pass of one epoch: both runs start fresh.
    let written = reproduce::run(&reproduce_options(out, data.path(), 1, Some(24), &[1, 4]), &in_turn()).unwrap();
    assert!(written.iter().any(|p| p.ends_with("table.md")));
    let exp1 = EXPERIMENTS[0].run_dir(out, 1);
    let exp4 = EXPERIMENTS[3].run_dir(out, 1);
    let exp4_epoch1 = RecordedRun::load(&exp4).unwrap().history[0].clone();

    // The table is then extended to 2 epochs, but only experiment 1 gets there before an
    // "interruption": experiment 4 is left after epoch 1 of 2.
    reproduce::run(&reproduce_options(out, data.path(), 2, Some(24), &[1]), &in_turn()).unwrap();
    let exp1_metrics = read(exp1.join("metrics.jsonl"));
    let exp1_summary = read(exp1.join("summary.json"));
    let two_epochs = reproduce_options(out, data.path(), 2, Some(24), &[1, 4]);
    let c1 = EXPERIMENTS[0].config(&two_epochs, 1).unwrap();
    let c4 = EXPERIMENTS[3].config(&two_epochs, 1).unwrap();
    assert_eq!(reproduce::run_status(&exp1, &c1).unwrap(), RunStatus::Finished);
    assert_eq!(
        reproduce::run_status(&exp4, &c4).unwrap(),
        RunStatus::Resume(exp4.join("checkpoint-last"))
    );

    // Started again: experiment 1 is skipped untouched, experiment 4 continues from epoch 1.
    let written = reproduce::run(&two_epochs, &in_turn()).unwrap();
    assert_eq!(read(exp1.join("metrics.jsonl")), exp1_metrics);
    assert_eq!(read(exp1.join("summary.json")), exp1_summary);
    let resumed = RecordedRun::load(&exp4).unwrap();
    assert_eq!(resumed.history.len(), 2);
    assert_eq!(resumed.history[0], exp4_epoch1);
    assert!(resumed.summary.finished);

    // The report: two rows, with the published figures, and the figures.
    let md = read(out.join("table.md"));
    assert!(
        md.contains("| 1 | ResNet-18 baseline, 3x3 convolutions, 44 filters | 5,284,982 | 0 | 91.8 |"),
        "{md}"
    );
    assert!(
        md.contains("| 4 | 3x3 first layer, 1x1 convolutions after, no noise | 5,611,146 | 0 | 85.5 |"),
        "{md}"
    );
    assert!(md.contains("Budget: 2 epoch(s), 24 training images"), "{md}");
    // The contrast between experiments 4 and 1, without an interval at one seed.
    assert!(
        md.contains("| 4 | 1 | 1x1 convolutions without noise against the 3x3 baseline |"),
        "{md}"
    );
    assert!(md.contains("unknown (1 seed)"), "{md}");
    assert!(out.join("differences.csv").is_file() && out.join("configurations.csv").is_file());
    for name in [
        "reported-vs-correct.png",
        "baseline-vs-1x1.svg",
        "all-experiments.png",
        "all-experiments.json",
    ] {
        assert!(written.contains(&out.join("figures").join(name)), "{name} not written");
    }
    let runs_csv = read(out.join("runs.csv"));
    assert_eq!(runs_csv.lines().count(), 3, "{runs_csv}");

    // The same folder with another budget is refused, not overwritten.
    let err = reproduce::run(&reproduce_options(out, data.path(), 2, Some(20), &[1]), &in_turn()).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("other settings") && msg.contains("train_subset") && msg.contains("--out"),
        "{msg}"
    );
    assert_eq!(read(exp1.join("metrics.jsonl")), exp1_metrics);
}
