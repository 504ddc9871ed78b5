//! Empirical tests of the paper's theory (its sections 3.3 and 3.4): can a perturbation layer
//! stand in for a convolution (`pnn fit-conv`), and does a convolution's neighbourhood term
//! behave like additive noise (`pnn noise-stats`)?
//!
//! - [`target`]: the convolution studied (random, or a layer of a resnet18 checkpoint) and the
//!   maps it receives.
//! - [`features`], [`lstsq`]: layers linear in their weights, fitted exactly by least squares.
//! - [`perturb_fit`]: the perturbation layer itself, with fitted weights or trained masks.
//! - [`fit_conv`], [`fit_report`]: the fitting experiment and its table and figures.
//! - [`noise_stats`], [`noise_report`]: the statistics of the neighbourhood term and of the masks.

pub mod cli;
pub mod features;
pub mod fit_conv;
pub mod fit_report;
pub mod lstsq;
pub mod noise_report;
pub mod noise_stats;
pub mod perturb_fit;
pub mod target;
