//! A finished or unfinished run, read back from its folder: `summary.json` (configuration,
//! provenance, parameter counts, wall time) and `metrics.jsonl` (one record per epoch).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::train::metrics::{EpochRecord, best_by};
use crate::train::run_dir::{METRICS_JSONL, RunSummaryFile, SUMMARY_FILE};

#[derive(Debug, Clone)]
pub struct RecordedRun {
    /// The folder holding `summary.json` and `metrics.jsonl` (the run's logs folder).
    pub dir: PathBuf,
    pub summary: RunSummaryFile,
    pub history: Vec<EpochRecord>,
}

impl RecordedRun {
    pub fn load(dir: &Path) -> Result<Self> {
        let summary = RunSummaryFile::load(dir)?.ok_or_else(|| {
            anyhow::anyhow!(
                "{} is not a finished pnn run folder: {SUMMARY_FILE} is missing \
                 (it is written after the first epoch)",
                dir.display()
            )
        })?;
        let metrics_path = dir.join(METRICS_JSONL);
        let metrics = fs::read_to_string(&metrics_path)
            .with_context(|| format!("cannot read {} (the run's per-epoch metrics)", metrics_path.display()))?;
        let history = metrics
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, line)| {
                serde_json::from_str(line)
                    .with_context(|| format!("{} line {} is not a metrics record", metrics_path.display(), i + 1))
            })
            .collect::<Result<Vec<EpochRecord>>>()?;
        if history.is_empty() {
            bail!("{} holds no epoch yet", metrics_path.display());
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            summary,
            history,
        })
    }

    /// A short name: the folder's name, with its parent's when the folder is a seed folder.
    pub fn name(&self) -> String {
        let file = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
        let own = file(&self.dir).unwrap_or_else(|| self.dir.display().to_string());
        match self.dir.parent().and_then(file) {
            Some(parent) if own.starts_with("seed") => format!("{parent}/{own}"),
            _ => own,
        }
    }

    /// Mean seconds per epoch.
    pub fn seconds_per_epoch(&self) -> f64 {
        self.history.iter().map(|r| r.epoch_seconds).sum::<f64>() / self.history.len() as f64
    }

    /// Mean training images per second over the epochs.
    pub fn images_per_sec(&self) -> f64 {
        self.history.iter().map(|r| r.train_images_per_sec).sum::<f64>() / self.history.len() as f64
    }

    pub fn last(&self) -> &EpochRecord {
        self.history.last().expect("a recorded run has at least one epoch")
    }

    /// Best correct test accuracy (percent) and its epoch (the earliest on ties).
    fn best(&self) -> (f64, usize) {
        best_by(&self.history, |r| r.test_acc).expect("a recorded run has at least one epoch")
    }

    /// Best correct test accuracy (percent).
    pub fn best_correct(&self) -> f64 {
        self.best().0
    }

    /// Epoch of the best correct accuracy (the earliest on ties).
    pub fn best_epoch(&self) -> usize {
        self.best().1
    }

    /// Best accuracy the original code would have reported (percent).
    pub fn best_reported(&self) -> f64 {
        best_by(&self.history, |r| r.test_acc_reported)
            .expect("a recorded run has at least one epoch")
            .0
    }
}

/// The run folders named by `paths`: a folder with a `summary.json` is a run; any other folder
/// is searched (recursively) for runs. Sorted by path; a path that holds no run is an error.
pub fn find_runs(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for path in paths {
        let before = found.len();
        collect(path, &mut found).with_context(|| format!("cannot read {}", path.display()))?;
        if found.len() == before {
            bail!(
                "{} holds no pnn run (no {SUMMARY_FILE} in it or below it): name a run folder such as results/<run>",
                path.display()
            );
        }
    }
    Ok(found)
}

fn collect(path: &Path, found: &mut Vec<PathBuf>) -> Result<()> {
    if path.join(SUMMARY_FILE).is_file() {
        found.push(path.to_path_buf());
        return Ok(());
    }
    if !path.is_dir() {
        bail!("no such folder");
    }
    let mut children: Vec<PathBuf> = fs::read_dir(path)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    children.sort();
    for child in children {
        collect(&child, found)?;
    }
    Ok(())
}

/// The distinct provenance lines (build, machine, backend) of `runs`, sorted: what a report's
/// "Measured with" lists.
pub fn provenance_lines(runs: &[&RecordedRun]) -> Vec<String> {
    let mut lines: Vec<String> = runs.iter().map(|r| r.summary.provenance.line()).collect();
    lines.sort();
    lines.dedup();
    lines
}
