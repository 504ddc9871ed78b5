//! Figures of test accuracy per epoch, made from recorded runs:
//! - one run: the correct accuracy beside the accuracy the original code would have reported;
//! - several runs: one curve each (mean and spread when runs are grouped across seeds), with a
//!   legend built from the flags on which they differ.
//!
//! Every figure is written as PNG and SVG, with a JSON file beside it that names the runs, their
//! configurations and provenance.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Serialize;

use super::figure::{Curve, Figure};
use super::flags::differing_flags;
use super::recorded::RecordedRun;
use super::stats::Stat;
use crate::config::Config;
use crate::provenance::Provenance;
use crate::train::files::write_atomic;

pub const CORRECT_LABEL: &str = "correct: correct / total over the whole test set";
pub const REPORTED_LABEL: &str = "reported by the original code: running average 0.7 * previous + 0.3 * batch accuracy";

/// The correct and the reported test accuracy of one run.
pub fn reported_vs_correct(run: &RecordedRun) -> Figure {
    let c = &run.summary.config;
    let points = |f: fn(&crate::train::metrics::EpochRecord) -> f64| {
        run.history.iter().map(|r| (r.epoch as f64, f(r), None)).collect()
    };
    let best_reported = run.best_reported();
    let best = run.best_correct();
    Figure {
        title: format!(
            "{} on {}: correct vs reported test accuracy",
            Config::value_name(&c.net_type),
            Config::value_name(&c.dataset_test)
        ),
        x_label: "Epoch".into(),
        y_label: "Test accuracy (%)".into(),
        curves: vec![
            Curve {
                label: CORRECT_LABEL.into(),
                points: points(|r| r.test_acc),
                dashed: false,
                color: 0,
            },
            Curve {
                label: REPORTED_LABEL.into(),
                points: points(|r| r.test_acc_reported),
                dashed: true,
                color: 1,
            },
        ],
        notes: vec![
            format!(
                "Best correct {best:.2}% (epoch {}); best reported {best_reported:.2}% ({:+.2} points).",
                run.best_epoch(),
                best_reported - best
            ),
            describe_run(c),
            run.summary.provenance.line(),
        ],
        axes: Default::default(),
    }
}

/// One curve per group of runs (a group is one configuration over several seeds: its curve is
/// the mean per epoch, with the standard deviation as error bars). With `reported`, each group
/// also gets a dashed curve of the accuracy the original code would have reported.
pub fn groups_figure(title: &str, groups: &[(String, Vec<&RecordedRun>)], reported: bool) -> Figure {
    let mut curves = Vec::new();
    for (i, (label, runs)) in groups.iter().enumerate() {
        curves.push(Curve {
            label: if reported {
                format!("{label} (correct)")
            } else {
                label.clone()
            },
            points: mean_per_epoch(runs, |r| r.test_acc),
            dashed: false,
            color: i,
        });
        if reported {
            curves.push(Curve {
                label: format!("{label} (reported by the original code)"),
                points: mean_per_epoch(runs, |r| r.test_acc_reported),
                dashed: true,
                color: i,
            });
        }
    }
    let all: Vec<&RecordedRun> = groups.iter().flat_map(|(_, runs)| runs.iter().copied()).collect();
    let seeds = groups.iter().map(|(_, r)| r.len()).max().unwrap_or(0);
    let mut notes = Vec::new();
    if seeds > 1 {
        notes.push(format!(
            "Mean over up to {seeds} seeds per curve; error bars: one standard deviation."
        ));
    }
    if let Some(first) = all.first() {
        notes.push(describe_data(&first.summary.config));
    }
    let mut lines: Vec<String> = all.iter().map(|r| r.summary.provenance.line()).collect();
    lines.dedup();
    notes.extend(lines.into_iter().take(3));
    Figure {
        title: title.into(),
        x_label: "Epoch".into(),
        y_label: if reported {
            "Test accuracy (%)"
        } else {
            "Test accuracy, correct (%)"
        }
        .into(),
        curves,
        notes,
        axes: Default::default(),
    }
}

/// Several runs, one curve each, labelled by the flags on which they differ.
pub fn runs_figure(runs: &[RecordedRun], reported: bool) -> Figure {
    let configs: Vec<&Config> = runs.iter().map(|r| &r.summary.config).collect();
    let labels = differing_flags(&configs);
    let groups: Vec<(String, Vec<&RecordedRun>)> = runs
        .iter()
        .zip(labels)
        .map(|(run, label)| (if label.is_empty() { run.name() } else { label }, vec![run]))
        .collect();
    groups_figure("Test accuracy per epoch", &groups, reported)
}

/// Mean (and standard deviation across runs) of `metric` at each epoch any run reached.
pub fn mean_per_epoch(
    runs: &[&RecordedRun],
    metric: fn(&crate::train::metrics::EpochRecord) -> f64,
) -> Vec<(f64, f64, Option<f64>)> {
    stats_per_epoch(runs, metric)
        .into_iter()
        .map(|(epoch, s)| (epoch as f64, s.mean, s.std))
        .collect()
}

/// `metric` over the runs at each epoch any of them reached, in epoch order.
pub fn stats_per_epoch(
    runs: &[&RecordedRun],
    metric: fn(&crate::train::metrics::EpochRecord) -> f64,
) -> Vec<(usize, Stat)> {
    let mut by_epoch: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    for run in runs {
        for r in &run.history {
            by_epoch.entry(r.epoch).or_default().push(metric(r));
        }
    }
    by_epoch
        .into_iter()
        .map(|(epoch, values)| (epoch, Stat::of(&values)))
        .collect()
}

/// The data a run saw (shared by the runs of a comparison).
fn describe_data(c: &Config) -> String {
    let subset = |n: Option<usize>| n.map_or("all".to_string(), |n| format!("{n}"));
    format!(
        "Data: {} (training images: {}, test images: {}).",
        Config::value_name(&c.dataset_train),
        subset(c.train_subset),
        subset(c.test_subset),
    )
}

/// The data and training settings of one run.
fn describe_run(c: &Config) -> String {
    format!(
        "{} Batch {}, {} learning rate {}, seed {}.",
        describe_data(c),
        c.batch_size,
        Config::value_name(&c.optim_method),
        c.learning_rate,
        c.manual_seed
    )
}

/// The JSON written beside a figure: what it shows and exactly which runs made it.
#[derive(Debug, Serialize)]
pub struct FigureRecord<'a> {
    pub title: &'a str,
    pub files: Vec<PathBuf>,
    pub made_by: Provenance,
    pub created: String,
    pub runs: Vec<RunSource<'a>>,
}

#[derive(Debug, Serialize)]
pub struct RunSource<'a> {
    pub dir: &'a Path,
    pub provenance: &'a Provenance,
    pub config: &'a Config,
    pub wall_seconds: f64,
    pub epochs: usize,
}

/// Writes the figure as `<stem>.png`, `<stem>.svg` and `<stem>.json`; returns the paths.
pub fn save(figure: &Figure, stem: &Path, runs: &[&RecordedRun]) -> Result<Vec<PathBuf>> {
    if let Some(parent) = stem.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let mut files = figure.save(stem)?;
    let json = stem.with_extension("json");
    let record = FigureRecord {
        title: &figure.title,
        files: files.clone(),
        made_by: Provenance::this("none (drawing only)"),
        created: chrono::Local::now().to_rfc3339(),
        runs: runs
            .iter()
            .map(|r| RunSource {
                dir: &r.dir,
                provenance: &r.summary.provenance,
                config: &r.summary.config,
                wall_seconds: r.summary.wall_seconds,
                epochs: r.history.len(),
            })
            .collect(),
    };
    write_atomic(&json, serde_json::to_string_pretty(&record)?.as_bytes())?;
    files.push(json);
    Ok(files)
}
