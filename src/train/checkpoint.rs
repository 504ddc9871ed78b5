//! Checkpoints: a folder with the model (`model.bpk`, burn's burnpack format: plain tensors, no
//! code is executed when it is loaded), the optimizer state (`optimizer.bpk`) and the training
//! state (`state.json`: configuration, epochs done, a partly done epoch, metric history, the
//! reported-accuracy accumulator, and the SHA-256 of the two tensor files).
//!
//! The random state needs no saving: every training step reseeds from (seed, epoch, step) and
//! the loader derives each epoch's order and each batch's augmentation from (seed, epoch,
//! batch), so a resumed run draws exactly what the uninterrupted run would have drawn.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::optim::ModuleOptimizer;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::files::{replace_dir_atomic, write_atomic};
use super::metrics::{EpochRecord, EpochTotals, ReportedAccuracy};
use crate::config::Config;
use crate::models::Net;

/// Bumped whenever the checkpoint layout changes (2: lenet and cifarnet keep their fully
/// connected layers under `head`; 3: checksums of the tensor files, partly done epochs, one
/// random seed per training step).
pub const FORMAT_VERSION: u32 = 3;

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
    /// The epoch after `epochs_done` when a run was stopped in the middle of it.
    #[serde(default)]
    pub partial: Option<PartialEpoch>,
    pub history: Vec<EpochRecord>,
    pub reported: ReportedAccuracy,
    /// Wall time spent on this run so far, over all its invocations.
    #[serde(default)]
    pub wall_seconds: f64,
    /// SHA-256 (hex) of the checkpoint's tensor files, by file name; filled in by [`save`].
    #[serde(default)]
    pub sha256: BTreeMap<String, String>,
    /// The PyTorch file whose weights `pnn import` put in this checkpoint, with its SHA-256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imported_from: Option<ImportedFrom>,
}

/// Where an imported checkpoint's weights came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImportedFrom {
    pub file: String,
    pub sha256: String,
}

impl TrainState {
    /// The state of a run that has not trained yet.
    pub fn new(config: &Config) -> Self {
        Self {
            format_version: FORMAT_VERSION,
            pnn_version: env!("CARGO_PKG_VERSION").to_string(),
            config: config.clone(),
            epochs_done: 0,
            partial: None,
            history: Vec::new(),
            reported: ReportedAccuracy::default(),
            wall_seconds: 0.0,
            sha256: Default::default(),
            imported_from: None,
        }
    }
}

/// How far a stopped run got into the epoch it was in.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PartialEpoch {
    /// 1-based epoch number (always `epochs_done + 1`).
    pub epoch: usize,
    /// Batches of the epoch's order already used; the resumed run starts with the next one.
    pub batches_done: usize,
    /// Training sums over those batches.
    pub totals: EpochTotals,
    /// Training seconds spent on them.
    pub seconds: f64,
}

/// Writes a checkpoint folder, replacing `dir` only once the new one is complete.
pub fn save(dir: &Path, model: &Net, optim: &ModuleOptimizer, state: &TrainState) -> Result<()> {
    // burn's RunningState (BatchNorm's running statistics) keeps a step's update pending until
    // it is synchronised, and saving reads the synchronised value: without this, a checkpoint
    // written in the middle of an epoch would lose the last step's update. `valid()` syncs.
    let _ = model.valid();
    replace_dir_atomic(dir, |tmp| {
        model
            .clone()
            .save_file(tmp.join(MODEL_FILE))
            .map_err(|e| anyhow::anyhow!("cannot save the model to {}: {e}", tmp.display()))?;
        optim
            .save(tmp.join(OPTIMIZER_FILE))
            .map_err(|e| anyhow::anyhow!("cannot save the optimizer state to {}: {e}", tmp.display()))?;
        let mut state = state.clone();
        state.sha256 = BTreeMap::new();
        for name in [MODEL_FILE, OPTIMIZER_FILE] {
            state.sha256.insert(name.to_string(), sha256_file(&tmp.join(name))?);
        }
        write_atomic(&tmp.join(STATE_FILE), serde_json::to_string_pretty(&state)?.as_bytes())
    })
}

/// Reads and checks `state.json`: its format version and the checksums of the tensor files.
pub fn load_state(dir: &Path) -> Result<TrainState> {
    if let Some(old) = super::files::recover_replaced_dir(dir)? {
        eprintln!(
            "{} was being replaced when its process was killed: the previous checkpoint ({}) is put back",
            dir.display(),
            old.display()
        );
    }
    let path = dir.join(STATE_FILE);
    if !path.is_file() && dir.join("checkpoint-last").join(STATE_FILE).is_file() {
        bail!(
            "{} is a run folder, not a checkpoint: resume with --resume {}",
            dir.display(),
            dir.join("checkpoint-last").display()
        );
    }
    let text = fs::read_to_string(&path).with_context(|| {
        format!(
            "{} is not a pnn checkpoint folder: {STATE_FILE} is missing (use results/<run>/checkpoint-last)",
            dir.display()
        )
    })?;
    // The version first, so that another version's layout is named as such, not as damage.
    let version = serde_json::from_str::<serde_json::Value>(&text).ok().and_then(|v| {
        Some((
            v.get("format_version")?.as_u64()?,
            v.get("pnn_version")?.as_str()?.to_string(),
        ))
    });
    if let Some((found, by)) = version
        && found != u64::from(FORMAT_VERSION)
    {
        bail!(
            "{} has checkpoint format {found} (written by pnn {by}) but this pnn reads format {FORMAT_VERSION}: \
             resume it with pnn {by}, or start the run again",
            dir.display()
        );
    }
    let state: TrainState = serde_json::from_str(&text)
        .with_context(|| format!("{} is damaged or not a pnn checkpoint state", path.display()))?;
    for name in [MODEL_FILE, OPTIMIZER_FILE] {
        let file = dir.join(name);
        let Some(expected) = state.sha256.get(name) else {
            bail!(
                "{} records no checksum for {name}: the checkpoint is damaged and is refused",
                path.display()
            );
        };
        let found = sha256_file(&file).with_context(|| format!("the checkpoint {} is incomplete", dir.display()))?;
        if &found != expected {
            bail!(
                "{} does not match the checksum recorded in {STATE_FILE}: the file was changed or damaged after pnn \
                 wrote it, so the checkpoint is refused (use the run's other checkpoint, or start again)",
                file.display()
            );
        }
    }
    if let Some(p) = state.partial
        && p.epoch != state.epochs_done + 1
    {
        bail!(
            "{} is inconsistent (a partly done epoch {} after {} finished epochs): the checkpoint is refused",
            path.display(),
            p.epoch,
            state.epochs_done
        );
    }
    if state.history.len() != state.epochs_done {
        bail!(
            "{} is inconsistent ({} epochs done but {} recorded): the checkpoint is refused",
            path.display(),
            state.epochs_done,
            state.history.len()
        );
    }
    Ok(state)
}

/// Loads the model and optimizer of a checkpoint (whose state [`load_state`] has checked) into
/// freshly built ones of the same shape.
pub fn load_into(dir: &Path, model: Net, optim: ModuleOptimizer) -> Result<(Net, ModuleOptimizer)> {
    let model =
        load_model(dir, model).map_err(|e| anyhow::anyhow!("{e}: resume with the flags the run was started with"))?;
    let optim = optim
        .load(dir.join(OPTIMIZER_FILE))
        .map_err(|e| anyhow::anyhow!("cannot load the optimizer state of {}: {e}", dir.display()))?;
    Ok((model, optim))
}

/// Loads the model of a checkpoint (whose state [`load_state`] has checked) into a freshly
/// built one of the same shape.
pub fn load_model(dir: &Path, model: Net) -> Result<Net> {
    model
        .try_load_file(dir.join(MODEL_FILE))
        .map_err(|e| anyhow::anyhow!("the model in {} does not fit this configuration ({e})", dir.display()))
}

/// The checkpoint a path names: a checkpoint folder, or a run folder's `checkpoint-last`.
pub fn resolve(path: &Path) -> Result<std::path::PathBuf> {
    // A run folder whose checkpoint was being replaced when its process was killed.
    let _ = super::files::recover_replaced_dir(&path.join("checkpoint-last"));
    if path.join(STATE_FILE).is_file() {
        return Ok(path.to_path_buf());
    }
    let last = path.join("checkpoint-last");
    if last.join(STATE_FILE).is_file() {
        return Ok(last);
    }
    if !path.exists() {
        bail!(
            "{} does not exist: give a checkpoint folder or a run folder",
            path.display()
        );
    }
    bail!(
        "{} is neither a pnn checkpoint (no {STATE_FILE}) nor a run folder with a checkpoint-last: \
         give results/<run> or results/<run>/checkpoint-best",
        path.display()
    )
}

/// A checkpoint's checked state and its model, built on `device` for the geometry of the data
/// set it was trained on (an image folder is read to learn it).
pub fn open(dir: &Path, device: &burn::tensor::Device) -> Result<(TrainState, Net)> {
    let state = load_state(dir)?;
    let geometry = match crate::models::Geometry::of(&state.config) {
        Ok(g) => g,
        Err(_) => crate::models::Geometry::of_set(&crate::data::load(&state.config)?.train)?,
    };
    let model = crate::models::build_for(&state.config, geometry, device)?;
    let model = load_model(dir, model)?;
    Ok((state, model))
}

/// SHA-256 (hex) of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect())
}
