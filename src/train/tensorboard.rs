//! TensorBoard event files in every run folder, so that `tensorboard --logdir results/` shows
//! every run: per epoch both test accuracies, the losses, the learning rate and the speed; the
//! training loss every `--log-every` steps; and the run's flags as hyper-parameters (TensorBoard's HParams view compares runs by them). A
//! sweep's or reproduce's runs are named by their folders, `<configuration>/seed<k>`.
//!
//! The messages are TensorBoard's own protocol buffers (`event.proto`, `summary.proto`, the
//! HParams plugin's `plugin_data.proto` and `api.proto`), the few fields pnn writes declared
//! with their field numbers and encoded by prost. A file is a sequence of records: the length
//! (u64, little-endian), its masked CRC-32C, the bytes, their masked CRC-32C. Each invocation
//! of a run (a resume included) appends to a file of its own, as TensorFlow's writers do;
//! TensorBoard reads all of them.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use prost::Message;

use super::metrics::EpochRecord;
use crate::config::Config;

/// `tensorflow.Event`: only the fields pnn writes.
#[derive(Clone, PartialEq, Message)]
struct Event {
    #[prost(double, tag = "1")]
    wall_time: f64,
    #[prost(int64, tag = "2")]
    step: i64,
    #[prost(string, optional, tag = "3")]
    file_version: Option<String>,
    #[prost(message, optional, tag = "5")]
    summary: Option<Summary>,
}

#[derive(Clone, PartialEq, Message)]
struct Summary {
    #[prost(message, repeated, tag = "1")]
    value: Vec<SummaryValue>,
}

/// `Summary.Value`: a scalar (`simple_value`), or plugin data carried by its metadata.
#[derive(Clone, PartialEq, Message)]
struct SummaryValue {
    #[prost(string, tag = "1")]
    tag: String,
    #[prost(float, optional, tag = "2")]
    simple_value: Option<f32>,
    #[prost(message, optional, tag = "9")]
    metadata: Option<SummaryMetadata>,
}

#[derive(Clone, PartialEq, Message)]
struct SummaryMetadata {
    #[prost(message, optional, tag = "1")]
    plugin_data: Option<PluginData>,
}

#[derive(Clone, PartialEq, Message)]
struct PluginData {
    #[prost(string, tag = "1")]
    plugin_name: String,
    #[prost(bytes = "vec", tag = "2")]
    content: Vec<u8>,
}

/// `tensorboard.hparams.HParamsPluginData` with a `SessionStartInfo` (field 3).
#[derive(Clone, PartialEq, Message)]
struct HParamsPluginData {
    #[prost(int32, tag = "1")]
    version: i32,
    #[prost(message, optional, tag = "3")]
    session_start_info: Option<SessionStartInfo>,
}

#[derive(Clone, PartialEq, Message)]
struct SessionStartInfo {
    #[prost(btree_map = "string, message", tag = "1")]
    hparams: BTreeMap<String, ProtoValue>,
    #[prost(double, tag = "5")]
    start_time_secs: f64,
}

/// `google.protobuf.Value`: a number, a string or a boolean.
#[derive(Clone, PartialEq, Message)]
struct ProtoValue {
    #[prost(oneof = "Kind", tags = "2, 3, 4")]
    kind: Option<Kind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum Kind {
    #[prost(double, tag = "2")]
    Number(f64),
    #[prost(string, tag = "3")]
    Text(String),
    #[prost(bool, tag = "4")]
    Bool(bool),
}

/// A per-epoch value of a run's metrics.
type Metric = fn(&EpochRecord) -> f64;

/// The per-epoch scalars, by TensorBoard tag.
pub const SCALARS: [(&str, Metric); 7] = [
    ("accuracy/test_correct", |r| r.test_acc),
    ("accuracy/test_reported_by_original_code", |r| r.test_acc_reported),
    ("accuracy/train", |r| r.train_acc),
    ("loss/test", |r| r.test_loss),
    ("loss/train", |r| r.train_loss),
    ("learning_rate", |r| r.learning_rate),
    ("speed/train_images_per_sec", |r| r.train_images_per_sec),
];

/// The training loss of single steps, every `--log-every` steps; its step is the step of the run
/// (1-based, over all epochs), unlike the per-epoch scalars whose step is the epoch.
pub const STEP_LOSS: &str = "loss/train_step";

/// One invocation's event file.
pub struct EventLog {
    file: File,
    path: PathBuf,
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// TensorFlow's record checksum: CRC-32C, rotated right by 15 bits, plus a constant.
fn masked_crc(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes).rotate_right(15).wrapping_add(0xa282_ead8)
}

impl EventLog {
    /// Starts a new event file in `dir` with the run's flags as hyper-parameters.
    pub fn create(dir: &Path, config: &Config) -> Result<Self> {
        let start = now();
        let name = format!("events.out.tfevents.{}.pnn.{}", start as u64, std::process::id());
        let path = dir.join(name);
        let file = File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        let mut log = Self { file, path };
        log.write(&Event {
            wall_time: start,
            step: 0,
            file_version: Some("brain.Event:2".into()),
            summary: None,
        })?;
        let hparams = config
            .fields()
            .into_iter()
            .filter_map(|(name, value)| {
                let kind = match value {
                    serde_json::Value::Number(n) => Kind::Number(n.as_f64()?),
                    serde_json::Value::String(s) => Kind::Text(s),
                    serde_json::Value::Bool(b) => Kind::Bool(b),
                    _ => return None,
                };
                Some((name, ProtoValue { kind: Some(kind) }))
            })
            .collect();
        let content = HParamsPluginData {
            version: 0,
            session_start_info: Some(SessionStartInfo {
                hparams,
                start_time_secs: start,
            }),
        }
        .encode_to_vec();
        log.write(&Event {
            wall_time: start,
            step: 0,
            file_version: None,
            summary: Some(Summary {
                value: vec![SummaryValue {
                    tag: "_hparams_/session_start_info".into(),
                    simple_value: None,
                    metadata: Some(SummaryMetadata {
                        plugin_data: Some(PluginData {
                            plugin_name: "hparams".into(),
                            content,
                        }),
                    }),
                }],
            }),
        })?;
        Ok(log)
    }

    /// Appends an epoch's scalars, at step = the epoch's number.
    pub fn epoch(&mut self, record: &EpochRecord) -> Result<()> {
        let value = SCALARS
            .iter()
            .map(|(tag, metric)| SummaryValue {
                tag: (*tag).into(),
                simple_value: Some(metric(record) as f32),
                metadata: None,
            })
            .collect();
        self.write(&Event {
            wall_time: now(),
            step: record.epoch as i64,
            file_version: None,
            summary: Some(Summary { value }),
        })
    }

    /// Appends training losses of single steps (`loss/train_step`), at their step of the run.
    pub fn step_losses(&mut self, losses: &[(usize, f64)]) -> Result<()> {
        for &(step, loss) in losses {
            self.write(&Event {
                wall_time: now(),
                step: step as i64,
                file_version: None,
                summary: Some(Summary {
                    value: vec![SummaryValue {
                        tag: STEP_LOSS.into(),
                        simple_value: Some(loss as f32),
                        metadata: None,
                    }],
                }),
            })?;
        }
        Ok(())
    }

    /// One record, written whole and flushed: a reader never waits on a half-written one, and
    /// one cut short by a crash is the file's last (TensorBoard stops reading there).
    fn write(&mut self, event: &Event) -> Result<()> {
        let data = event.encode_to_vec();
        let len = (data.len() as u64).to_le_bytes();
        let mut record = Vec::with_capacity(data.len() + 16);
        record.extend_from_slice(&len);
        record.extend_from_slice(&masked_crc(&len).to_le_bytes());
        record.extend_from_slice(&data);
        record.extend_from_slice(&masked_crc(&data).to_le_bytes());
        self.file
            .write_all(&record)
            .and_then(|()| self.file.flush())
            .with_context(|| format!("cannot write {}", self.path.display()))
    }
}
