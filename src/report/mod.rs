//! Results a researcher can publish, made from recorded runs: figures of test accuracy
//! (`plot`), comparison tables (`table`), and the reproduction's experiment table run end to
//! end (`reproduce`).

pub mod figure;
pub mod flags;
pub mod plot;
pub mod recorded;
pub mod reproduce;
pub mod stats;
pub mod table;

pub use recorded::{RecordedRun, find_runs};
