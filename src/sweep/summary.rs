//! What a set of configurations run over several seeds says: per configuration the mean,
//! standard deviation and 95% confidence interval of its accuracies, and for pairs of
//! configurations their difference with its 95% interval (Welch's t; `report::stats` says why).
//! Written as Markdown, CSV and a figure of mean curves with confidence bands.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Serialize;

use crate::report::figure::{Axes, Curve, Figure};
use crate::report::plot;
use crate::report::recorded::RecordedRun;
use crate::report::stats::{Difference, Stat};
use crate::report::table::markdown_table;
use crate::train::files::write_atomic;
use crate::train::metrics::EpochRecord;

/// One configuration and its runs (one per seed).
#[derive(Debug, Clone)]
pub struct SeedGroup {
    /// How the configuration reads: its flags (`--level 0.1 --optim-method Adam`).
    pub label: String,
    pub runs: Vec<RecordedRun>,
}

/// The accuracies of a configuration over its seeds (percent).
#[derive(Debug, Clone, Serialize)]
pub struct GroupStats {
    pub label: String,
    pub seeds: usize,
    /// Epochs every seed reached.
    pub epochs: usize,
    pub final_correct: Stat,
    pub best_correct: Stat,
    pub final_reported: Stat,
    pub best_reported: Stat,
    pub seconds_per_epoch: Stat,
}

/// Per-seed values of the metrics a summary reports.
fn final_correct(r: &RecordedRun) -> f64 {
    r.last().test_acc
}
fn best_correct(r: &RecordedRun) -> f64 {
    r.best_correct()
}
fn final_reported(r: &RecordedRun) -> f64 {
    r.last().test_acc_reported
}

impl SeedGroup {
    pub fn values(&self, metric: fn(&RecordedRun) -> f64) -> Vec<f64> {
        self.runs.iter().map(metric).collect()
    }

    pub fn stats(&self) -> GroupStats {
        let stat = |m: fn(&RecordedRun) -> f64| Stat::of(&self.values(m));
        GroupStats {
            label: self.label.clone(),
            seeds: self.runs.len(),
            epochs: self.runs.iter().map(|r| r.history.len()).min().unwrap_or(0),
            final_correct: stat(final_correct),
            best_correct: stat(best_correct),
            final_reported: stat(final_reported),
            best_reported: stat(|r| r.best_reported()),
            seconds_per_epoch: stat(|r| r.seconds_per_epoch()),
        }
    }
}

/// The difference between two configurations, `a - b`, in final and best correct accuracy.
#[derive(Debug, Clone, Serialize)]
pub struct Contrast {
    pub a: String,
    pub b: String,
    /// What the pair measures (`--level 0.1 vs 0.2`, or a table's own words).
    pub what: String,
    pub final_correct: Difference,
    pub best_correct: Difference,
}

impl Contrast {
    pub fn of(a: &SeedGroup, b: &SeedGroup, what: String) -> Self {
        Self {
            a: a.label.clone(),
            b: b.label.clone(),
            what,
            final_correct: Difference::welch(&a.values(final_correct), &b.values(final_correct)),
            best_correct: Difference::welch(&a.values(best_correct), &b.values(best_correct)),
        }
    }
}

/// The configurations' table in Markdown.
pub fn stats_markdown(stats: &[GroupStats]) -> String {
    let header = [
        "configuration",
        "seeds",
        "epochs",
        "final correct %",
        "95% CI",
        "best correct %",
        "95% CI",
        "final reported %",
        "best reported %",
        "s / epoch",
    ];
    let ci = |s: &Stat| s.ci95().map_or("-".into(), |i| i.show(2));
    let rows: Vec<Vec<String>> = stats
        .iter()
        .map(|s| {
            vec![
                s.label.clone(),
                s.seeds.to_string(),
                s.epochs.to_string(),
                s.final_correct.show(2),
                ci(&s.final_correct),
                s.best_correct.show(2),
                ci(&s.best_correct),
                s.final_reported.show(2),
                s.best_reported.show(2),
                format!("{:.1}", s.seconds_per_epoch.mean),
            ]
        })
        .collect();
    markdown_table(&header, &rows)
}

/// The contrasts' table in Markdown.
pub fn contrasts_markdown(contrasts: &[Contrast]) -> String {
    let header = [
        "A",
        "B",
        "what it measures",
        "final correct A - B [95% CI]",
        "p",
        "best correct A - B [95% CI]",
        "p",
        "above seed noise (final)",
    ];
    let p = |d: &Difference| d.p_value.map_or("-".into(), |p| format!("{p:.3}"));
    let rows: Vec<Vec<String>> = contrasts
        .iter()
        .map(|c| {
            vec![
                c.a.clone(),
                c.b.clone(),
                c.what.clone(),
                c.final_correct.show(2),
                p(&c.final_correct),
                c.best_correct.show(2),
                p(&c.best_correct),
                match c.final_correct.ci95 {
                    None => "unknown (1 seed)".into(),
                    Some(_) if c.final_correct.excludes_zero() => "yes".into(),
                    Some(_) => "no".into(),
                },
            ]
        })
        .collect();
    markdown_table(&header, &rows)
}

/// How the intervals are made, for the notes under the tables.
pub const METHOD_NOTE: &str = "Intervals: 95% confidence intervals over seeds by Student's t (mean ± t(0.975, n-1) · s/√n); \
differences by Welch's t, which does not assume equal spread across seeds. A bootstrap over so few seeds would give \
intervals too narrow. A difference stands above seed noise when its interval excludes 0.";

/// One row of `configurations.csv`.
#[derive(Serialize)]
struct StatsCsv<'a> {
    configuration: &'a str,
    seeds: usize,
    epochs: usize,
    final_correct_mean: f64,
    final_correct_std: Option<f64>,
    final_correct_ci_low: Option<f64>,
    final_correct_ci_high: Option<f64>,
    best_correct_mean: f64,
    best_correct_std: Option<f64>,
    best_correct_ci_low: Option<f64>,
    best_correct_ci_high: Option<f64>,
    final_reported_mean: f64,
    final_reported_std: Option<f64>,
    best_reported_mean: f64,
    best_reported_std: Option<f64>,
    seconds_per_epoch_mean: f64,
}

/// One row of `differences.csv`.
#[derive(Serialize)]
struct ContrastCsv<'a> {
    a: &'a str,
    b: &'a str,
    what: &'a str,
    final_correct_diff: f64,
    final_correct_ci_low: Option<f64>,
    final_correct_ci_high: Option<f64>,
    final_correct_df: Option<f64>,
    final_correct_p: Option<f64>,
    best_correct_diff: f64,
    best_correct_ci_low: Option<f64>,
    best_correct_ci_high: Option<f64>,
    best_correct_p: Option<f64>,
}

/// Writes `<prefix>configurations.csv` and `<prefix>differences.csv` into `out`; returns their
/// paths.
pub fn write_csvs(out: &Path, prefix: &str, stats: &[GroupStats], contrasts: &[Contrast]) -> Result<Vec<PathBuf>> {
    let mut csv = csv::Writer::from_writer(Vec::new());
    for s in stats {
        let (fl, fh) = bounds(&s.final_correct);
        let (bl, bh) = bounds(&s.best_correct);
        csv.serialize(StatsCsv {
            configuration: &s.label,
            seeds: s.seeds,
            epochs: s.epochs,
            final_correct_mean: s.final_correct.mean,
            final_correct_std: s.final_correct.std,
            final_correct_ci_low: fl,
            final_correct_ci_high: fh,
            best_correct_mean: s.best_correct.mean,
            best_correct_std: s.best_correct.std,
            best_correct_ci_low: bl,
            best_correct_ci_high: bh,
            final_reported_mean: s.final_reported.mean,
            final_reported_std: s.final_reported.std,
            best_reported_mean: s.best_reported.mean,
            best_reported_std: s.best_reported.std,
            seconds_per_epoch_mean: s.seconds_per_epoch.mean,
        })?;
    }
    let configurations = out.join(format!("{prefix}configurations.csv"));
    write_atomic(&configurations, &csv.into_inner()?)?;
    let mut csv = csv::Writer::from_writer(Vec::new());
    for c in contrasts {
        csv.serialize(ContrastCsv {
            a: &c.a,
            b: &c.b,
            what: &c.what,
            final_correct_diff: c.final_correct.mean,
            final_correct_ci_low: c.final_correct.ci95.map(|i| i.low),
            final_correct_ci_high: c.final_correct.ci95.map(|i| i.high),
            final_correct_df: c.final_correct.df,
            final_correct_p: c.final_correct.p_value,
            best_correct_diff: c.best_correct.mean,
            best_correct_ci_low: c.best_correct.ci95.map(|i| i.low),
            best_correct_ci_high: c.best_correct.ci95.map(|i| i.high),
            best_correct_p: c.best_correct.p_value,
        })?;
    }
    let differences = out.join(format!("{prefix}differences.csv"));
    write_atomic(&differences, &csv.into_inner()?)?;
    Ok(vec![configurations, differences])
}

fn bounds(s: &Stat) -> (Option<f64>, Option<f64>) {
    let ci = s.ci95();
    (ci.map(|i| i.low), ci.map(|i| i.high))
}

/// Mean correct accuracy per epoch of each configuration, with its 95% confidence band.
pub fn curves_figure(title: &str, groups: &[SeedGroup]) -> Figure {
    let curves = groups
        .iter()
        .enumerate()
        .map(|(i, g)| Curve {
            label: g.label.clone(),
            points: mean_with_band(&g.runs, |r| r.test_acc),
            dashed: false,
            color: i,
        })
        .collect();
    let seeds = groups.iter().map(|g| g.runs.len()).max().unwrap_or(0);
    let mut notes = vec![format!(
        "Mean over {seeds} seed(s) per configuration; band: 95% confidence interval of the mean (Student's t)."
    )];
    if let Some(run) = groups.iter().flat_map(|g| g.runs.first()).next() {
        notes.push(run.summary.provenance.line());
    }
    Figure {
        title: title.into(),
        x_label: "Epoch".into(),
        y_label: "Test accuracy, correct (%)".into(),
        curves,
        notes,
        axes: Axes {
            spread_as_band: true,
            ..Default::default()
        },
    }
}

/// Mean of `metric` at each epoch, with the half-width of its 95% interval across runs.
pub fn mean_with_band(runs: &[RecordedRun], metric: fn(&EpochRecord) -> f64) -> Vec<(f64, f64, Option<f64>)> {
    let refs: Vec<&RecordedRun> = runs.iter().collect();
    plot::stats_per_epoch(&refs, metric)
        .into_iter()
        .map(|(epoch, s)| (epoch as f64, s.mean, s.ci95_half_width()))
        .collect()
}
