//! `pnn sweep`: a grid over training flags times seeds. Every run gets its own folder,
//! `<out>/<configuration>/seed<k>`; started again, a sweep skips finished runs, resumes
//! unfinished ones and refuses a folder that holds other settings. It ends with a table per
//! configuration (mean, standard deviation and 95% confidence interval of its accuracies), the
//! difference between every two configurations that differ in one flag with its 95% interval,
//! and a figure of the mean curves with confidence bands. `pnn reproduce` runs on the same
//! machinery.

pub mod cluster;
pub mod grid;
pub mod reproduce;
pub mod runner;
pub mod summary;

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::config::Config;
use crate::report::flags::{flag, non_default_args};
use crate::report::recorded::provenance_lines;
use crate::report::table::compare_csv;
use crate::report::{RecordedRun, plot};
use crate::train::files::write_atomic;
pub use grid::{Grid, Point};
pub use runner::{Execution, PlannedRun, RunStatus, RunsInterrupted};
use summary::{Contrast, SeedGroup};

pub struct SweepOptions {
    /// The flags every run shares; the grid overrides some of them.
    pub base: Config,
    pub grid: Grid,
    /// Seeds per configuration: `base.manual_seed`, `+1`, ...
    pub seeds: u64,
    pub out: PathBuf,
    /// The command line, recorded in `sweep.json`.
    pub command: Vec<String>,
}

impl SweepOptions {
    pub fn seed_list(&self) -> Vec<u64> {
        (0..self.seeds).map(|k| self.base.manual_seed + k).collect()
    }

    /// Every run of the sweep, checked before the first one starts: each configuration is
    /// validated and each folder read (one holding other settings is refused).
    pub fn plan(&self) -> Result<Vec<(Point, Vec<PlannedRun>)>> {
        if self.seeds == 0 {
            bail!("--seeds must be at least 1");
        }
        let mut plan = Vec::new();
        for point in self.grid.points() {
            let config = point.apply(&self.base)?;
            let mut runs = Vec::new();
            for seed in self.seed_list() {
                let config = Config {
                    manual_seed: seed,
                    ..config.clone()
                };
                let dir = self.out.join(point.slug()).join(format!("seed{seed}"));
                let flags = non_default_args(&config).join(" ");
                let name = format!("{}, seed {seed}", point.label());
                runs.push(PlannedRun::new(name, flags, config, dir)?);
            }
            plan.push((point, runs));
        }
        Ok(plan)
    }
}

impl SweepOptions {
    /// Every run, in plan order (a cluster task's index counts in this order).
    pub fn runs(&self) -> Result<Vec<PlannedRun>> {
        Ok(self.plan()?.into_iter().flat_map(|(_, r)| r).collect())
    }
}

/// The report from the runs that have finished, and a line per run that has not.
pub fn collect(opts: &SweepOptions) -> Result<(Vec<PathBuf>, Vec<String>)> {
    let plan = opts.plan()?;
    let runs: Vec<PlannedRun> = plan.iter().flat_map(|(_, r)| r.iter().cloned()).collect();
    let missing = cluster::missing_runs(&runs, &opts.out);
    if missing.len() == runs.len() {
        bail!(
            "none of the {} runs has finished yet:\n{}",
            runs.len(),
            missing.join("\n")
        );
    }
    Ok((report(opts, &plan)?, missing))
}

/// What `sweep.json` records: how the sweep was asked for.
#[derive(Serialize)]
struct SweepRecord<'a> {
    command: &'a [String],
    base: &'a Config,
    grid: Vec<(Vec<String>, Vec<Vec<serde_json::Value>>)>,
    seeds: Vec<u64>,
    configurations: Vec<(String, String)>,
}

/// Runs the sweep (skipping what is done), then writes its report. Returns the paths written.
pub fn run(opts: &SweepOptions, ex: &Execution) -> Result<Vec<PathBuf>> {
    let plan = opts.plan()?;
    std::fs::create_dir_all(&opts.out).with_context(|| format!("cannot create {}", opts.out.display()))?;
    let record = SweepRecord {
        command: &opts.command,
        base: &opts.base,
        grid: opts
            .grid
            .axes
            .iter()
            .map(|a| (a.fields.clone(), a.values.clone()))
            .collect(),
        seeds: opts.seed_list(),
        configurations: plan.iter().map(|(p, _)| (p.slug(), p.label())).collect(),
    };
    write_atomic(
        &opts.out.join("sweep.json"),
        serde_json::to_string_pretty(&record)?.as_bytes(),
    )?;
    let runs: Vec<PlannedRun> = plan.iter().flat_map(|(_, r)| r.iter().cloned()).collect();
    runner::execute(&runs, ex)?;
    report(opts, &plan)
}

/// The pairs of points that differ in exactly one axis, with what they contrast.
fn one_axis_pairs(grid: &Grid, points: &[Point]) -> Vec<(usize, usize, String)> {
    let mut pairs = Vec::new();
    for i in 0..points.len() {
        for j in i + 1..points.len() {
            if let Some(axis) = points[i].only_difference(&points[j]) {
                let what = format!(
                    "{} vs {}",
                    points[i].axis_label(grid, axis),
                    points[j].axis_label(grid, axis)
                );
                pairs.push((i, j, what));
            }
        }
    }
    pairs
}

/// The report of the finished runs (all of them after `run`; what there is for `collect`).
/// A configuration none of whose runs has finished is left out.
fn report(opts: &SweepOptions, plan: &[(Point, Vec<PlannedRun>)]) -> Result<Vec<PathBuf>> {
    let mut groups = Vec::new();
    let mut points = Vec::new();
    for (point, runs) in plan {
        let finished = runs
            .iter()
            .filter(|r| r.status == RunStatus::Finished || RecordedRun::load(&r.dir).is_ok_and(|x| x.summary.finished))
            .map(|r| RecordedRun::load(&r.dir))
            .collect::<Result<Vec<_>>>()?;
        if !finished.is_empty() {
            groups.push(SeedGroup {
                label: point.label(),
                runs: finished,
            });
            points.push(point.clone());
        }
    }
    let contrasts: Vec<Contrast> = one_axis_pairs(&opts.grid, &points)
        .into_iter()
        .map(|(i, j, what)| Contrast::of(&groups[i], &groups[j], what))
        .collect();
    let stats: Vec<_> = groups.iter().map(SeedGroup::stats).collect();
    let all: Vec<&RecordedRun> = groups.iter().flat_map(|g| g.runs.iter()).collect();

    let mut md = String::from("# Sweep\n\n");
    md.push_str(&format!("Command: `{}`\n\n", opts.command.join(" ")));
    md.push_str(&format!(
        "Every configuration shares `pnn train {}`, with seeds {}.\n\n",
        base_flags(opts),
        opts.seed_list()
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    ));
    md.push_str("## Configurations\n\n");
    md.push_str(&summary::stats_markdown(&stats));
    if !contrasts.is_empty() {
        md.push_str("\n## Differences between configurations that differ in one axis of the grid\n\n");
        md.push_str(&summary::contrasts_markdown(&contrasts));
    }
    md.push_str(&format!("\n{}\n\nMeasured with:\n", summary::METHOD_NOTE));
    for line in provenance_lines(&all) {
        md.push_str(&format!("- {line}\n"));
    }

    let mut written = Vec::new();
    let summary_md = opts.out.join("summary.md");
    write_atomic(&summary_md, md.as_bytes())?;
    written.push(summary_md);
    written.extend(summary::write_csvs(&opts.out, "", &stats, &contrasts)?);
    let owned: Vec<RecordedRun> = all.iter().map(|r| (*r).clone()).collect();
    let runs_csv = opts.out.join("runs.csv");
    write_atomic(&runs_csv, &compare_csv(&owned)?)?;
    written.push(runs_csv);
    let figure = summary::curves_figure("Sweep: mean test accuracy per configuration", &groups);
    written.extend(plot::save(&figure, &opts.out.join("figures").join("curves"), &all)?);
    Ok(written)
}

/// The base configuration's flags that differ from the defaults, less the grid's and the seed.
fn base_flags(opts: &SweepOptions) -> String {
    let varied: Vec<&str> = opts
        .grid
        .axes
        .iter()
        .flat_map(|a| a.fields.iter().map(String::as_str))
        .collect();
    let defaults = Config::default_fields();
    opts.base
        .fields()
        .into_iter()
        .filter(|(f, v)| !varied.contains(&f.as_str()) && f != "manual_seed" && defaults.get(f) != Some(v))
        .map(|(f, v)| flag(&f, &v))
        .collect::<Vec<_>>()
        .join(" ")
}
