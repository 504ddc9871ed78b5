//! A run's folder: its configuration and provenance (`config.json`), its per-epoch metrics (CSV
//! and JSON lines), a summary of where it stands (`summary.json`) and its checkpoints. Every
//! file is rewritten whole and atomically after each epoch.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::files::write_atomic;
use super::metrics::EpochRecord;
use crate::config::Config;
use crate::models::ParamCount;
use crate::provenance::Provenance;

pub const CONFIG_FILE: &str = "config.json";
pub const SUMMARY_FILE: &str = "summary.json";
pub const METRICS_JSONL: &str = "metrics.jsonl";
pub const METRICS_CSV: &str = "metrics.csv";

pub struct RunDir {
    pub root: PathBuf,
    pub logs: PathBuf,
}

/// `config.json`: what was asked for and what ran it, written when a run starts or resumes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunInfo {
    pub provenance: Provenance,
    /// The command line as typed.
    pub command: Vec<String>,
    pub started: String,
    pub config: Config,
}

/// `summary.json`: where a run stands, rewritten after every epoch. Self-contained: it repeats
/// the configuration and provenance so that the file alone traces its numbers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSummaryFile {
    pub provenance: Provenance,
    pub config: Config,
    pub params: ParamCount,
    pub epochs_done: usize,
    /// All `config.nepochs` epochs are done.
    pub finished: bool,
    /// Wall time of the whole run so far (data loading, training, testing, checkpoints),
    /// summed over resumed invocations.
    pub wall_seconds: f64,
    /// Best correct test accuracy (percent) and its epoch.
    pub best_test_acc: Option<f64>,
    pub best_epoch: Option<usize>,
    /// Best accuracy the original code would have reported, and its epoch.
    pub best_test_acc_reported: Option<f64>,
    pub best_reported_epoch: Option<usize>,
    pub final_test_acc: Option<f64>,
    pub final_test_acc_reported: Option<f64>,
    pub updated: String,
}

impl RunSummaryFile {
    /// Reads `dir/summary.json`: `None` when the run has none yet (no epoch finished).
    pub fn load(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(SUMMARY_FILE);
        if !path.is_file() {
            return Ok(None);
        }
        let text = fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let summary = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is damaged or not a pnn run summary: move that run folder away",
                path.display()
            )
        })?;
        Ok(Some(summary))
    }
}

impl RunDir {
    pub fn create(root: PathBuf, logs: Option<PathBuf>) -> Result<Self> {
        let logs = logs.unwrap_or_else(|| root.clone());
        for dir in [&root, &logs] {
            if dir.exists() && !dir.is_dir() {
                anyhow::bail!(
                    "{} is a file, not a folder: give --save (or --logs) a folder",
                    dir.display()
                );
            }
            fs::create_dir_all(dir).with_context(|| format!("cannot create the run folder {}", dir.display()))?;
        }
        Ok(Self { root, logs })
    }

    /// Default run folder: results/<timestamp>, as the reference.
    pub fn default_root() -> PathBuf {
        PathBuf::from("results").join(chrono::Local::now().format("%Y-%m-%d_%H-%M-%S").to_string())
    }

    pub fn checkpoint_last(&self) -> PathBuf {
        self.root.join("checkpoint-last")
    }

    pub fn checkpoint_best(&self) -> PathBuf {
        self.root.join("checkpoint-best")
    }

    pub fn write_run_info(&self, info: &RunInfo) -> Result<()> {
        write_json(&self.logs.join(CONFIG_FILE), info)
    }

    pub fn write_summary(&self, summary: &RunSummaryFile) -> Result<()> {
        write_json(&self.logs.join(SUMMARY_FILE), summary)
    }

    pub fn write_metrics(&self, history: &[EpochRecord]) -> Result<()> {
        let mut csv = csv::Writer::from_writer(Vec::new());
        for record in history {
            csv.serialize(record)?;
        }
        write_atomic(&self.logs.join(METRICS_CSV), &csv.into_inner()?)?;
        let mut jsonl = String::new();
        for record in history {
            jsonl.push_str(&serde_json::to_string(record)?);
            jsonl.push('\n');
        }
        write_atomic(&self.logs.join(METRICS_JSONL), jsonl.as_bytes())
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    write_atomic(path, serde_json::to_string_pretty(value)?.as_bytes())
}
