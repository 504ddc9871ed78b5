//! Results a researcher can publish, made from recorded runs: figures of test accuracy
//! (`plot`), comparison tables (`table`), statistics over seeds (`stats`). Running experiments
//! (`pnn sweep`, `pnn reproduce`) is `crate::sweep`.

pub mod figure;
pub mod flags;
pub mod plot;
pub mod recorded;
pub mod stats;
pub mod table;

pub use recorded::{RecordedRun, find_runs};
