//! A run's folder: its configuration, its per-epoch metrics (CSV and JSON lines) and its
//! checkpoints. Every file is rewritten whole and atomically after each epoch.

use std::fs;
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::Serialize;

use super::files::write_atomic;
use super::metrics::EpochRecord;
use crate::config::Config;

pub struct RunDir {
    pub root: PathBuf,
    pub logs: PathBuf,
}

/// What a run records about itself besides the configuration.
#[derive(Debug, Serialize)]
pub struct RunInfo<'a> {
    pub pnn_version: &'a str,
    pub backend: &'a str,
    pub command: Vec<String>,
    pub started: String,
    pub config: &'a Config,
}

impl RunDir {
    pub fn create(root: PathBuf, logs: Option<PathBuf>) -> Result<Self> {
        let logs = logs.unwrap_or_else(|| root.clone());
        for dir in [&root, &logs] {
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
        write_atomic(
            &self.logs.join("config.json"),
            serde_json::to_string_pretty(info)?.as_bytes(),
        )
    }

    pub fn write_metrics(&self, history: &[EpochRecord]) -> Result<()> {
        let mut csv = csv::Writer::from_writer(Vec::new());
        for record in history {
            csv.serialize(record)?;
        }
        write_atomic(&self.logs.join("metrics.csv"), &csv.into_inner()?)?;
        let mut jsonl = String::new();
        for record in history {
            jsonl.push_str(&serde_json::to_string(record)?);
            jsonl.push('\n');
        }
        write_atomic(&self.logs.join("metrics.jsonl"), jsonl.as_bytes())
    }
}
