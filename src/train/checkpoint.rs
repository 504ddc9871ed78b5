//! Checkpoints: a folder with the model (`model.bpk`, burn's burnpack format: plain tensors, no
//! code is executed when it is loaded), the optimizer state (`optimizer.bpk`) and the training
//! state (`state.json`: configuration, epochs done, metric history, the reported-accuracy
//! accumulator).

use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::optim::ModuleOptimizer;
use serde::{Deserialize, Serialize};

use super::files::{replace_dir_atomic, write_atomic};
use super::metrics::{EpochRecord, ReportedAccuracy};
use crate::config::Config;
use crate::models::Net;

/// Bumped whenever the checkpoint layout changes (2: lenet and cifarnet keep their fully
/// connected layers under `head`).
pub const FORMAT_VERSION: u32 = 2;

const MODEL_FILE: &str = "model.bpk";
const OPTIMIZER_FILE: &str = "optimizer.bpk";
const STATE_FILE: &str = "state.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainState {
    pub format_version: u32,
    pub pnn_version: String,
    pub config: Config,
    /// Epochs completed; training resumes with epoch `epochs_done + 1` (1-based).
    pub epochs_done: usize,
    pub history: Vec<EpochRecord>,
    pub reported: ReportedAccuracy,
    /// Wall time spent on this run so far, over all its sessions (0 in checkpoints from before
    /// it was recorded).
    #[serde(default)]
    pub wall_seconds: f64,
}

pub fn save(dir: &Path, model: &Net, optim: &ModuleOptimizer, state: &TrainState) -> Result<()> {
    replace_dir_atomic(dir, |tmp| {
        model
            .clone()
            .save_file(tmp.join(MODEL_FILE))
            .map_err(|e| anyhow::anyhow!("cannot save the model to {}: {e}", tmp.display()))?;
        optim
            .save(tmp.join(OPTIMIZER_FILE))
            .map_err(|e| anyhow::anyhow!("cannot save the optimizer state to {}: {e}", tmp.display()))?;
        write_atomic(&tmp.join(STATE_FILE), serde_json::to_string_pretty(state)?.as_bytes())
    })
}

pub fn load_state(dir: &Path) -> Result<TrainState> {
    let path = dir.join(STATE_FILE);
    let text = fs::read_to_string(&path).with_context(|| {
        format!(
            "{} is not a pnn checkpoint folder: {STATE_FILE} is missing (use results/<run>/checkpoint-last)",
            dir.display()
        )
    })?;
    let state: TrainState = serde_json::from_str(&text)
        .with_context(|| format!("{} is damaged or not a pnn checkpoint state", path.display()))?;
    if state.format_version != FORMAT_VERSION {
        bail!(
            "{} has checkpoint format {} but this pnn reads format {FORMAT_VERSION} (written by pnn {})",
            dir.display(),
            state.format_version,
            state.pnn_version
        );
    }
    Ok(state)
}

/// Loads the model and optimizer of a checkpoint into freshly built ones of the same shape.
pub fn load_into(dir: &Path, model: Net, optim: ModuleOptimizer) -> Result<(Net, ModuleOptimizer)> {
    let model = model.try_load_file(dir.join(MODEL_FILE)).map_err(|e| {
        anyhow::anyhow!(
            "the model in {} does not fit this configuration ({e}): resume with the flags the run was started with",
            dir.display()
        )
    })?;
    let optim = optim
        .load(dir.join(OPTIMIZER_FILE))
        .map_err(|e| anyhow::anyhow!("cannot load the optimizer state of {}: {e}", dir.display()))?;
    Ok((model, optim))
}
