//! pnn: Perturbative Neural Networks, with the reproduction's flags and honest accuracy.
//!
//! - [`config`]: every flag of an experiment, validated.
//! - [`layer`]: the modules models are built of (the perturbation layer, BatchNorm, convolution, pooling).
//! - [`ops`]: the hand-written operations those modules run on the CPU (and the perturbation
//!   layer's GPU kernels), each with its backward pass.
//! - [`models`]: the networks.
//! - [`data`]: reading data sets and batching them.
//! - [`train`]: the training loop, optimisers, schedule, metrics and checkpoints.
//! - [`report`]: figures, comparison tables and statistics, made from recorded runs.
//! - [`sweep`]: a grid of flags times seeds, run (several at once if asked) and summarised with
//!   confidence intervals; the experiment tables (`pnn reproduce`) run on it.
//! - [`theory`]: empirical tests of the paper's arguments (`fit-conv`, `noise-stats`).
//! - [`allocator`]: the memory allocator policy of pnn's programs.
//! - [`provenance`]: the build, machine and backend recorded beside every result.

pub mod allocator;
pub mod bench;
pub mod config;
pub mod data;
pub mod device;
pub mod eval;
pub mod interop;
pub mod layer;
pub mod models;
pub mod ops;
pub mod provenance;
pub mod report;
pub mod sweep;
pub mod theory;
pub mod train;
