//! How many values a configuration's model holds, known without building it at its size: a
//! model of `--nfilters 100000` would take hundreds of gigabytes to build before any memory
//! check could measure it.
//!
//! Every tensor's shape is a product of factors, of which at most two grow with `--nfilters`
//! (a convolution's input and output channels) and at most one with `--nmasks` (the masks, and
//! the grouped 1x1 convolution's inputs per group). So for fixed other flags each count is a
//! polynomial of degree 2 in nfilters, and for two masks and more a linear function of nmasks.
//! The counts of small models, built for real, fix those polynomials exactly; evaluated at the
//! configuration's sizes they give its counts.

use anyhow::{Result, bail};
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor};

use super::{Geometry, build_for};
use crate::config::Config;

/// A model's values by kind.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Footprint {
    /// Parameters the optimizer trains (masks included with --train_masks).
    pub trainable: f64,
    /// Every float value the model holds: parameters, masks, frozen weights, running statistics.
    pub values: f64,
}

impl Footprint {
    fn add(self, other: Self, times: f64) -> Self {
        Self {
            trainable: self.trainable + times * other.trainable,
            values: self.values + times * other.values,
        }
    }

    /// Bytes the model and its training state take before any image: its values, and for each
    /// trained one a gradient and `optimizer_slots` values of optimizer state (float32).
    pub fn bytes(&self, optimizer_slots: usize) -> f64 {
        4.0 * (self.values + self.trainable * (1 + optimizer_slots) as f64)
    }
}

/// The footprint of `config`'s model for data of `geometry`.
pub fn footprint(config: &Config, geometry: Geometry) -> Result<Footprint> {
    let base = smallest_nfilters(config)?;
    let at_masks = |nmasks: usize| -> Result<Footprint> {
        let points = (1..=3)
            .map(|k| {
                let n = base * k;
                Ok((n as f64, counted(&sized(config, n, nmasks), geometry)?))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(quadratic_through(&points, config.nfilters as f64))
    };
    if config.nmasks == 1 {
        return at_masks(1);
    }
    // Linear in nmasks from 2 masks on (one mask has no groups, so it is its own case).
    let (two, three) = (at_masks(2)?, at_masks(3)?);
    let slope = three.add(two, -1.0);
    Ok(two.add(slope, config.nmasks as f64 - 2.0))
}

/// The largest nfilters (a multiple of the smallest valid one, at most `config.nfilters`) whose
/// footprint fits in `budget` bytes, if any.
pub fn largest_nfilters(config: &Config, geometry: Geometry, budget: f64, slots: usize) -> Result<Option<usize>> {
    let base = smallest_nfilters(config)?;
    let fits = |n: usize| -> Result<bool> {
        let mut c = config.clone();
        c.nfilters = n;
        Ok(footprint(&c, geometry)?.bytes(slots) <= budget)
    };
    if !fits(base)? {
        return Ok(None);
    }
    let (mut lo, mut hi) = (1, config.nfilters / base);
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if fits(mid * base)? {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    Ok(Some(lo * base))
}

/// The largest nmasks (at most `config.nmasks`) whose footprint fits in `budget` bytes, if any.
pub fn largest_nmasks(config: &Config, geometry: Geometry, budget: f64, slots: usize) -> Result<Option<usize>> {
    let fits = |m: usize| -> Result<bool> {
        let mut c = config.clone();
        c.nmasks = m;
        Ok(footprint(&c, geometry)?.bytes(slots) <= budget)
    };
    if !fits(1)? {
        return Ok(None);
    }
    let (mut lo, mut hi) = (1, config.nmasks);
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if fits(mid)? {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    Ok(Some(lo))
}

/// The smallest nfilters the configuration accepts (the grouped first layer needs a multiple of
/// the image's channels); its multiples are accepted too.
fn smallest_nfilters(config: &Config) -> Result<usize> {
    for n in 1..=12 {
        if sized(config, n, config.nmasks).validate().is_ok() {
            return Ok(n);
        }
    }
    bail!("no --nfilters from 1 to 12 is accepted with these flags")
}

fn sized(config: &Config, nfilters: usize, nmasks: usize) -> Config {
    let mut c = config.clone();
    c.nfilters = nfilters;
    c.nmasks = nmasks;
    c
}

/// The footprint of a small model, built.
fn counted(config: &Config, geometry: Geometry) -> Result<Footprint> {
    Ok(of_model(&build_for(config, geometry, &Device::flex())?))
}

/// The footprint of a built model, counted.
pub fn of_model(model: &super::Net) -> Footprint {
    let mut counter = Counter::default();
    model.clone().train().visit(&mut counter);
    counter.0
}

#[derive(Default)]
struct Counter(Footprint);

impl ModuleVisitor for Counter {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let n = param.shape().num_elements() as f64;
        self.0.values += n;
        if param.is_require_grad() {
            self.0.trainable += n;
        }
    }
}

/// The quadratic through three points, at `x` (Lagrange's form).
fn quadratic_through(points: &[(f64, Footprint)], x: f64) -> Footprint {
    let mut out = Footprint::default();
    for (i, (xi, fi)) in points.iter().enumerate() {
        let weight: f64 = points
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, (xj, _))| (x - xj) / (xi - xj))
            .product();
        out = out.add(*fi, weight);
    }
    out
}
