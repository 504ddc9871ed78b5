//! `pnn reproduce`: the two sides of the debate as experiment tables, run with the budget the
//! user gives over several seeds, then summarised with the published figures beside the
//! measured ones, confidence intervals, the differences the debate is about, and figures.
//! - `--table reproduction` (the default): the eight CIFAR-10 commands of
//!   michaelklachko/pnn.pytorch's README;
//! - `--table update`: the two commands of the paper authors' answer, juefeix/pnn.pytorch.update.
//!
//! Every run gets its own folder, `<out>/<experiment>/seed<k>`, and runs through the sweep's
//! runner: started again, a reproduce skips finished runs and resumes an unfinished one from its
//! last checkpoint, so an interrupted table costs at most one epoch; `--jobs N` runs N at once.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::runner::{self, Execution, PlannedRun};
pub use super::runner::{RunStatus, run_status};
use super::summary::{self, Contrast, SeedGroup};
use crate::config::{Config, TrainArgs};
use crate::report::plot;
use crate::report::recorded::{RecordedRun, provenance_lines};
use crate::report::stats::Stat;
use crate::report::table::{compare_csv, markdown_table, thousands};
use crate::train::files::write_atomic;

/// One command of an experiment table.
#[derive(Debug, Clone, Copy)]
pub struct Experiment {
    /// Its number in the table's README.
    pub id: usize,
    /// Folder name.
    pub slug: &'static str,
    pub title: &'static str,
    /// The flags of the README's command, less the data set flags.
    pub flags: &'static str,
    /// Published correct test accuracy (percent), after the table's epochs on all of CIFAR-10.
    pub published: f64,
}

/// One side of the debate: its commands, the figures its authors published, and the contrasts
/// between its commands that the debate is about.
#[derive(Debug)]
pub struct Table {
    /// `--table` value.
    pub name: &'static str,
    pub title: &'static str,
    /// Where the commands and published figures come from.
    pub source: &'static str,
    pub experiments: &'static [Experiment],
    /// Epochs behind the published figures (the default `--nepochs`).
    pub published_epochs: usize,
    /// (A, B, what A - B measures), by experiment number.
    pub contrasts: &'static [(usize, usize, &'static str)],
    /// Prefix of the table's report files, so that both tables can share an `--out`.
    pub file_prefix: &'static str,
}

/// The reproduction's side: michaelklachko/pnn.pytorch's README.
pub const REPRODUCTION: Table = Table {
    name: "reproduction",
    title: "The PNN reproduction's experiment table",
    source: "michaelklachko/pnn.pytorch README, correct test accuracy after 150 epochs",
    experiments: &EXPERIMENTS,
    published_epochs: 150,
    contrasts: &[
        (
            3,
            4,
            "noise masks (the original model) over 1x1 convolutions without noise",
        ),
        (4, 1, "1x1 convolutions without noise against the 3x3 baseline"),
        (5, 4, "noise in all layers against 1x1 convolutions without noise"),
        (8, 7, "trained masks against fixed ones"),
    ],
    file_prefix: "",
};

/// The paper authors' side: juefeix/pnn.pytorch.update's README, run with `--code update`.
pub const UPDATE: Table = Table {
    name: "update",
    title: "The paper authors' updated experiments",
    source: "juefeix/pnn.pytorch.update README, test accuracy after 450 epochs",
    experiments: &UPDATE_EXPERIMENTS,
    published_epochs: 450,
    contrasts: &[(
        2,
        1,
        "noise in all layers (PerturbLayerFirst) against the original model",
    )],
    file_prefix: "update-",
};

pub const TABLES: [&Table; 2] = [&REPRODUCTION, &UPDATE];

/// The table a `--table` value names.
pub fn table(name: &str) -> Result<&'static Table> {
    TABLES
        .iter()
        .copied()
        .find(|t| t.name.eq_ignore_ascii_case(name))
        .ok_or_else(|| {
            let names: Vec<&str> = TABLES.iter().map(|t| t.name).collect();
            anyhow::anyhow!("--table {name}: the tables are {}", names.join(", "))
        })
}

/// The update's README: its two CIFAR-10 commands, with `--code update` for its code paths.
pub const UPDATE_EXPERIMENTS: [Experiment; 2] = [
    Experiment {
        id: 1,
        slug: "update-1-noiseresnet18-first3",
        title: "original PNN model (noiseresnet18), 3x3 first layer, the update's recipe",
        flags: "--code update --net-type noiseresnet18 --nfilters 128 --batch-size 10 --learning-rate 1e-4 --first_filter_size 3 --level 0.1 --optim-method Adam",
        published: 90.35,
    },
    Experiment {
        id: 2,
        slug: "update-2-noise-all-layers",
        title: "PNN, noise in all layers, PerturbLayerFirst, the update's recipe",
        flags: "--code update --net-type perturb_resnet18 --nfilters 256 --batch-size 20 --learning-rate 1e-4 --first_filter_size 0 --filter_size 0 --nmasks 1 --level 0.1 --optim-method Adam",
        published: 85.92,
    },
];

/// The reproduction's README, experiments 1 to 8. Experiment 3 is "experiment 2 with
/// `--first_filter_size 3`", written out.
pub const EXPERIMENTS: [Experiment; 8] = [
    Experiment {
        id: 1,
        slug: "1-resnet18-baseline",
        title: "ResNet-18 baseline, 3x3 convolutions, 44 filters",
        flags: "--net-type resnet18 --nfilters 44 --batch-size 10 --learning-rate 1e-3",
        published: 91.8,
    },
    Experiment {
        id: 2,
        slug: "2-noiseresnet18-first7",
        title: "original PNN model (noiseresnet18), 7x7 first layer",
        flags: "--net-type noiseresnet18 --nfilters 128 --batch-size 10 --learning-rate 1e-4 --first_filter_size 7",
        published: 85.7,
    },
    Experiment {
        id: 3,
        slug: "3-noiseresnet18-first3",
        title: "original PNN model (noiseresnet18), 3x3 first layer",
        flags: "--net-type noiseresnet18 --nfilters 128 --batch-size 10 --learning-rate 1e-4 --first_filter_size 3",
        published: 86.2,
    },
    Experiment {
        id: 4,
        slug: "4-1x1-no-noise",
        title: "3x3 first layer, 1x1 convolutions after, no noise",
        flags: "--net-type perturb_resnet18 --nfilters 128 --batch-size 16 --learning-rate 1e-3 --first_filter_size 3 --filter_size 1",
        published: 85.5,
    },
    Experiment {
        id: 5,
        slug: "5-noise-all-layers",
        title: "PNN, noise in all layers (first included), 1 mask",
        flags: "--net-type perturb_resnet18 --nfilters 128 --batch-size 16 --learning-rate 1e-3 --first_filter_size 0 --filter_size 0 --nmasks 1",
        published: 72.6,
    },
    Experiment {
        id: 6,
        slug: "6-64-unique-masks-mix",
        title: "PNN, 64 unique masks per channel, mix_maps",
        flags: "--net-type perturb_resnet18 --nfilters 128 --batch-size 16 --learning-rate 1e-3 --first_filter_size 3 --filter_size 0 --nmasks 64 --unique_masks --mix_maps",
        published: 82.7,
    },
    Experiment {
        id: 7,
        slug: "7-64-shared-masks",
        title: "PNN, 64 masks shared by all channels",
        flags: "--net-type perturb_resnet18 --nfilters 128 --batch-size 16 --learning-rate 1e-3 --first_filter_size 3 --filter_size 0 --nmasks 64 --no-unique_masks",
        published: 82.4,
    },
    Experiment {
        id: 8,
        slug: "8-64-shared-masks-trained",
        title: "PNN, 64 shared masks, trained",
        flags: "--net-type perturb_resnet18 --nfilters 128 --batch-size 16 --learning-rate 1e-3 --first_filter_size 3 --filter_size 0 --nmasks 64 --no-unique_masks --train_masks",
        published: 85.9,
    },
];

/// How much of the table to run.
#[derive(Debug, Clone, Serialize)]
pub struct Budget {
    pub nepochs: usize,
    pub train_subset: Option<usize>,
    pub test_subset: Option<usize>,
    /// Seeds 1..=seeds.
    pub seeds: u64,
}

pub struct ReproduceOptions {
    pub table: &'static Table,
    pub out: PathBuf,
    pub dataroot: PathBuf,
    pub download: bool,
    pub budget: Budget,
    /// Experiment numbers to run (all when empty).
    pub only: Vec<usize>,
}

impl Experiment {
    /// The experiment's configuration for one seed of the budget.
    pub fn config(&self, opts: &ReproduceOptions, seed: u64) -> Result<Config> {
        let mut flags: Vec<String> = self.flags.split_whitespace().map(String::from).collect();
        flags.extend(["--dataset-train", "CIFAR10", "--dataset-test", "CIFAR10", "--dataroot"].map(String::from));
        flags.push(opts.dataroot.display().to_string());
        flags.extend(["--nepochs".into(), opts.budget.nepochs.to_string()]);
        flags.extend(["--manual-seed".into(), seed.to_string()]);
        if let Some(n) = opts.budget.train_subset {
            flags.extend(["--train-subset".into(), n.to_string()]);
        }
        if let Some(n) = opts.budget.test_subset {
            flags.extend(["--test-subset".into(), n.to_string()]);
        }
        if !opts.download {
            flags.push("--no-download".into());
        }
        TrainArgs::parse_flags(&flags)?.to_config()
    }

    pub fn run_dir(&self, out: &Path, seed: u64) -> PathBuf {
        out.join(self.slug).join(format!("seed{seed}"))
    }
}

/// Runs (or resumes, or skips) every selected experiment and seed, then writes the table and
/// the figures. Returns the paths it wrote. `Ctrl-C` / SIGTERM (the execution's stop flag)
/// stops the runs in progress with a checkpoint; the next reproduce resumes them.
pub fn run(opts: &ReproduceOptions, ex: &Execution) -> Result<Vec<PathBuf>> {
    let plan = plan(opts)?;
    let start = Instant::now();
    runner::execute(&plan, ex)?;
    if ex.verbose {
        println!("\nruns done in {:.0} s", start.elapsed().as_secs_f64());
    }
    write_report(opts, &selected(opts.table, &opts.only)?)
}

/// Every run of the table, experiment by experiment and seed by seed (a cluster task's index
/// counts in this order), each configuration validated before the first hour is spent.
pub fn plan(opts: &ReproduceOptions) -> Result<Vec<PlannedRun>> {
    let selected = selected(opts.table, &opts.only)?;
    if opts.budget.seeds == 0 || opts.budget.nepochs == 0 {
        bail!("--seeds and --nepochs must be at least 1");
    }
    let mut plan = Vec::new();
    for exp in &selected {
        for seed in 1..=opts.budget.seeds {
            let config = exp
                .config(opts, seed)
                .with_context(|| format!("experiment {}", exp.id))?;
            let name = format!("experiment {} ({}), seed {seed}", exp.id, exp.title);
            let flags = format!("{} (and the budget's flags)", exp.flags);
            plan.push(PlannedRun::new(name, flags, config, exp.run_dir(&opts.out, seed))?);
        }
    }
    Ok(plan)
}

/// The table from the runs that have finished, and a line per run that has not.
pub fn collect(opts: &ReproduceOptions) -> Result<(Vec<PathBuf>, Vec<String>)> {
    let runs = plan(opts)?;
    let missing = super::cluster::missing_runs(&runs, &opts.out);
    if missing.len() == runs.len() {
        bail!(
            "none of the {} runs has finished yet:\n{}",
            runs.len(),
            missing.join("\n")
        );
    }
    Ok((write_report(opts, &selected(opts.table, &opts.only)?)?, missing))
}

fn selected(table: &Table, only: &[usize]) -> Result<Vec<Experiment>> {
    let n = table.experiments.len();
    if let Some(bad) = only.iter().find(|id| !(1..=n).contains(id)) {
        bail!(
            "--only {bad}: the experiments of --table {} are numbered 1 to {n}",
            table.name
        );
    }
    Ok(table
        .experiments
        .iter()
        .filter(|e| only.is_empty() || only.contains(&e.id))
        .copied()
        .collect())
}

/// One line of the reproduction table: an experiment over its seeds.
#[derive(Debug, Clone, Serialize)]
pub struct TableRow {
    pub id: usize,
    pub experiment: String,
    pub flags: String,
    pub parameters: usize,
    pub noise_values: usize,
    pub published_correct: f64,
    pub seeds: usize,
    pub epochs: usize,
    pub best_correct: Stat,
    pub final_correct: Stat,
    pub best_reported: Stat,
    /// Best reported minus best correct, per seed.
    pub reported_minus_correct: Stat,
    pub seconds_per_epoch: Stat,
    pub images_per_sec: Stat,
}

/// The table rows of the experiments whose runs are in `out`.
/// Seeds whose run has not finished are left out, and experiments with none.
pub fn table_rows(out: &Path, experiments: &[Experiment], seeds: u64) -> Result<Vec<(TableRow, Vec<RecordedRun>)>> {
    let mut rows = Vec::new();
    for exp in experiments {
        let runs: Vec<RecordedRun> = (1..=seeds)
            .filter_map(|s| RecordedRun::load(&exp.run_dir(out, s)).ok())
            .filter(|r| r.summary.finished)
            .collect();
        if runs.is_empty() {
            continue;
        }
        let stat = |f: &dyn Fn(&RecordedRun) -> f64| Stat::of(&runs.iter().map(f).collect::<Vec<_>>());
        let first = &runs[0].summary;
        rows.push((
            TableRow {
                id: exp.id,
                experiment: exp.title.into(),
                flags: exp.flags.into(),
                parameters: first.params.regular,
                noise_values: first.params.noise,
                published_correct: exp.published,
                seeds: runs.len(),
                epochs: runs.iter().map(|r| r.history.len()).min().unwrap_or(0),
                best_correct: stat(&|r| r.best_correct()),
                final_correct: stat(&|r| r.last().test_acc),
                best_reported: stat(&|r| r.best_reported()),
                reported_minus_correct: stat(&|r| r.best_reported() - r.best_correct()),
                seconds_per_epoch: stat(&|r| r.seconds_per_epoch()),
                images_per_sec: stat(&|r| r.images_per_sec()),
            },
            runs,
        ));
    }
    Ok(rows)
}

/// The Markdown report: budget, provenance, the table with the published figures beside.
pub fn table_markdown(
    table: &Table,
    budget: &Budget,
    rows: &[TableRow],
    contrasts: &[Contrast],
    provenance: &[String],
    wall_seconds: f64,
) -> String {
    let subset = |n: Option<usize>| n.map_or("all".to_string(), thousands);
    let mut out = format!("# {}, measured by pnn\n\n", table.title);
    out.push_str(&format!(
        "Budget: {} epoch(s), {} training images, {} test images (CIFAR-10), seeds 1 to {}. \
         Training wall time of the runs in this table: {:.0} s.\n\n",
        budget.nepochs,
        subset(budget.train_subset),
        subset(budget.test_subset),
        budget.seeds,
        wall_seconds
    ));
    out.push_str(&format!(
        "Published: {} on all of CIFAR-10. \
         With a smaller budget the measured numbers are lower and not comparable in absolute terms; \
         what carries over is the gap between the correct and the reported accuracy, and the cost of each model. \
         Measured values are the mean ± standard deviation over seeds, with the 95% confidence interval of the mean.\n\n",
        table.source
    ));
    let header = [
        "#",
        "experiment",
        "parameters",
        "noise values",
        "published correct %",
        "best correct %",
        "95% CI",
        "final correct %",
        "best reported %",
        "reported - correct",
        "s / epoch",
        "images/s",
    ];
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.experiment.clone(),
                thousands(r.parameters),
                thousands(r.noise_values),
                format!("{:.1}", r.published_correct),
                r.best_correct.show(2),
                r.best_correct.ci95().map_or("-".into(), |i| i.show(2)),
                r.final_correct.show(2),
                r.best_reported.show(2),
                r.reported_minus_correct.show(2),
                r.seconds_per_epoch.show(1),
                r.images_per_sec.show(1),
            ]
        })
        .collect();
    out.push_str(&markdown_table(&header, &body));
    if !contrasts.is_empty() {
        out.push_str("\nThe differences the debate is about (A and B by experiment number):\n\n");
        out.push_str(&summary::contrasts_markdown(contrasts));
        out.push_str(&format!("\n{}\n", summary::METHOD_NOTE));
    }
    out.push_str("\nCommands (each with `--dataset-train CIFAR10 --dataset-test CIFAR10` and the budget's flags):\n\n");
    for r in rows {
        out.push_str(&format!("{}. `pnn train {}`\n", r.id, r.flags));
    }
    out.push_str("\nMeasured with:\n");
    for line in provenance {
        out.push_str(&format!("- {line}\n"));
    }
    out
}

/// One row of `table.csv`: flattened means and standard deviations.
#[derive(Serialize)]
struct CsvRow<'a> {
    id: usize,
    experiment: &'a str,
    flags: &'a str,
    parameters: usize,
    noise_values: usize,
    published_correct: f64,
    seeds: usize,
    epochs: usize,
    train_subset: Option<usize>,
    test_subset: Option<usize>,
    best_correct_mean: f64,
    best_correct_std: Option<f64>,
    final_correct_mean: f64,
    final_correct_std: Option<f64>,
    best_reported_mean: f64,
    best_reported_std: Option<f64>,
    reported_minus_correct_mean: f64,
    reported_minus_correct_std: Option<f64>,
    seconds_per_epoch_mean: f64,
    images_per_sec_mean: f64,
    provenance: &'a str,
}

fn write_report(opts: &ReproduceOptions, experiments: &[Experiment]) -> Result<Vec<PathBuf>> {
    let rows = table_rows(&opts.out, experiments, opts.budget.seeds)?;
    let all_runs: Vec<&RecordedRun> = rows.iter().flat_map(|(_, runs)| runs.iter()).collect();
    let provenance = provenance_lines(&all_runs);
    let wall: f64 = all_runs.iter().map(|r| r.summary.wall_seconds).sum();
    let table: Vec<TableRow> = rows.iter().map(|(row, _)| row.clone()).collect();
    let groups: Vec<(usize, SeedGroup)> = rows
        .iter()
        .map(|(r, runs)| {
            (
                r.id,
                SeedGroup {
                    label: r.id.to_string(),
                    runs: runs.clone(),
                },
            )
        })
        .collect();
    let contrasts: Vec<Contrast> = opts
        .table
        .contrasts
        .iter()
        .filter_map(|&(a, b, what)| {
            let find = |id: usize| groups.iter().find(|(i, _)| *i == id).map(|(_, g)| g);
            Some(Contrast::of(find(a)?, find(b)?, what.to_string()))
        })
        .collect();
    let file = |name: &str| opts.out.join(format!("{}{name}", opts.table.file_prefix));

    let mut written = Vec::new();
    let md = file("table.md");
    let text = table_markdown(opts.table, &opts.budget, &table, &contrasts, &provenance, wall);
    write_atomic(&md, text.as_bytes())?;
    written.push(md);

    let mut csv = csv::Writer::from_writer(Vec::new());
    let prov = provenance.join(" / ");
    for r in &table {
        csv.serialize(CsvRow {
            id: r.id,
            experiment: &r.experiment,
            flags: &r.flags,
            parameters: r.parameters,
            noise_values: r.noise_values,
            published_correct: r.published_correct,
            seeds: r.seeds,
            epochs: r.epochs,
            train_subset: opts.budget.train_subset,
            test_subset: opts.budget.test_subset,
            best_correct_mean: r.best_correct.mean,
            best_correct_std: r.best_correct.std,
            final_correct_mean: r.final_correct.mean,
            final_correct_std: r.final_correct.std,
            best_reported_mean: r.best_reported.mean,
            best_reported_std: r.best_reported.std,
            reported_minus_correct_mean: r.reported_minus_correct.mean,
            reported_minus_correct_std: r.reported_minus_correct.std,
            seconds_per_epoch_mean: r.seconds_per_epoch.mean,
            images_per_sec_mean: r.images_per_sec.mean,
            provenance: &prov,
        })?;
    }
    let table_csv = file("table.csv");
    write_atomic(&table_csv, &csv.into_inner()?)?;
    written.push(table_csv);
    let stats: Vec<_> = groups.iter().map(|(_, g)| g.stats()).collect();
    written.extend(summary::write_csvs(
        &opts.out,
        opts.table.file_prefix,
        &stats,
        &contrasts,
    )?);
    // Every run, with its full configuration: the table's numbers traced to their runs.
    let owned: Vec<RecordedRun> = all_runs.iter().map(|r| (*r).clone()).collect();
    let runs_csv = file("runs.csv");
    write_atomic(&runs_csv, &compare_csv(&owned)?)?;
    written.push(runs_csv);

    let figures = opts.out.join("figures");
    let figure = |name: &str| figures.join(format!("{}{name}", opts.table.file_prefix));
    // The original model's run, as in the reproduction's first figure; else the first run.
    let showcase = rows
        .iter()
        .find(|(r, _)| r.id == 2)
        .or(rows.first())
        .map(|(_, runs)| &runs[0]);
    if let Some(run) = showcase {
        let fig = plot::reported_vs_correct(run);
        written.extend(plot::save(&fig, &figure("reported-vs-correct"), &[run])?);
    }
    let group = |ids: &[usize]| -> Vec<(String, Vec<&RecordedRun>)> {
        ids.iter()
            .filter_map(|id| rows.iter().find(|(r, _)| r.id == *id))
            .map(|(r, runs)| (format!("{}. {}", r.id, r.experiment), runs.iter().collect()))
            .collect()
    };
    // The reproduction's second figure: baseline, 1x1 convolutions, 1x1 with noise.
    let trio = group(&[1, 4, 3]);
    if opts.table.name == REPRODUCTION.name && trio.len() >= 2 {
        let fig = plot::groups_figure(
            "Baseline vs 1x1 convolutions without and with noise masks",
            &trio,
            false,
        );
        let runs: Vec<&RecordedRun> = trio.iter().flat_map(|(_, r)| r.iter().copied()).collect();
        written.extend(plot::save(&fig, &figure("baseline-vs-1x1"), &runs)?);
    }
    let every = group(&experiments.iter().map(|e| e.id).collect::<Vec<_>>());
    let fig = plot::groups_figure(opts.table.title, &every, true);
    written.extend(plot::save(&fig, &figure("all-experiments"), &all_runs)?);
    Ok(written)
}
