//! Training: the loop, optimisers, schedule, metrics, checkpoints and result files.

pub mod checkpoint;
pub mod files;
pub mod interrupt;
pub mod lock;
pub mod memory;
pub mod metrics;
pub mod optim;
pub mod run_dir;
pub mod schedule;
pub mod sgd;
pub mod step;
pub mod tensorboard;
pub mod trainer;

pub use trainer::{RunOptions, RunSummary, train};
