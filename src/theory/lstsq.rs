//! Linear least squares by normal equations, accumulated image by image in f64.
//!
//! A layer whose output is linear in its weights (a convolution; a perturbation layer whose masks
//! are fixed, since `act(x + level * noise)` is then a fixed feature of the input) is fitted
//! exactly by least squares over its per-pixel features: with features `phi` (one row per pixel)
//! and targets `y`, the weights solve `(phi^T phi) beta = phi^T y`. Only `phi^T phi` and `phi^T y`
//! (and `sum y^2`) are kept, so a fit over a whole training set needs memory for neither the
//! features nor the images, and the squared error on the fitted pixels follows from the same
//! sums: `|y - phi beta|^2 = y^T y - 2 beta^T phi^T y + beta^T phi^T phi beta`.

use anyhow::{Result, bail};
use gemm::Parallelism;
use nalgebra::{DMatrix, DVector};

/// The sums of one linear fit: `features` inputs, `outputs` targets.
#[derive(Debug, Clone)]
pub struct NormalEquations {
    pub features: usize,
    pub outputs: usize,
    /// `phi^T phi`, features x features, row-major.
    gram: Vec<f64>,
    /// `phi^T y`, features x outputs, row-major.
    cross: Vec<f64>,
    /// `sum y^2` per output.
    target_sq: Vec<f64>,
    /// Pixels added.
    pub rows: usize,
}

impl NormalEquations {
    pub fn new(features: usize, outputs: usize) -> Self {
        Self {
            features,
            outputs,
            gram: vec![0.0; features * features],
            cross: vec![0.0; features * outputs],
            target_sq: vec![0.0; outputs],
            rows: 0,
        }
    }

    /// Adds `rows` pixels: `phi` is rows x features (row-major); the targets are outputs x rows,
    /// output-major (one map per output, as a layer's output channels are stored).
    pub fn add(&mut self, phi: &[f64], targets: &[f64], rows: usize) {
        let (f, o) = (self.features, self.outputs);
        assert_eq!(phi.len(), rows * f, "features: {rows} rows of {f}");
        assert_eq!(targets.len(), rows * o, "targets: {o} maps of {rows}");
        // gram += phi^T phi: lhs phi^T (f x rows) reads phi with swapped strides.
        // SAFETY: every pointer addresses a buffer of the size its strides and extents imply.
        unsafe {
            gemm::gemm(
                f,
                f,
                rows,
                self.gram.as_mut_ptr(),
                1,
                f as isize,
                true,
                phi.as_ptr(),
                f as isize,
                1,
                phi.as_ptr(),
                1,
                f as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                Parallelism::None,
            );
            // cross += phi^T y^T: y^T is rows x outputs, element (p, o) at targets[o * rows + p].
            gemm::gemm(
                f,
                o,
                rows,
                self.cross.as_mut_ptr(),
                1,
                o as isize,
                true,
                phi.as_ptr(),
                f as isize,
                1,
                targets.as_ptr(),
                rows as isize,
                1,
                1.0,
                1.0,
                false,
                false,
                false,
                Parallelism::None,
            );
        }
        for (sq, map) in self.target_sq.iter_mut().zip(targets.chunks(rows)) {
            *sq += map.iter().map(|v| v * v).sum::<f64>();
        }
        self.rows += rows;
    }

    /// Adds another accumulation of the same shape (sums from other images).
    pub fn merge(&mut self, other: &Self) {
        assert_eq!((self.features, self.outputs), (other.features, other.outputs));
        for (a, b) in self.gram.iter_mut().zip(&other.gram) {
            *a += b;
        }
        for (a, b) in self.cross.iter_mut().zip(&other.cross) {
            *a += b;
        }
        for (a, b) in self.target_sq.iter_mut().zip(&other.target_sq) {
            *a += b;
        }
        self.rows += other.rows;
    }

    /// The least-squares weights, features x outputs (row-major).
    ///
    /// A small ridge (1e-10 of the mean diagonal, raised until the Cholesky factorisation
    /// succeeds) makes the system solvable where there are fewer pixels than features, as for a
    /// one-image fit with many masks: the solution is then the one of smallest norm among the
    /// (near-)exact fits, and the fitted error is zero to rounding.
    pub fn solve(&self) -> Result<Vec<f64>> {
        let f = self.features;
        if self.rows == 0 {
            bail!("no pixels to fit");
        }
        let mean_diag = (0..f).map(|i| self.gram[i * f + i]).sum::<f64>() / f as f64;
        let scale = if mean_diag > 0.0 { mean_diag } else { 1.0 };
        let rhs = DMatrix::from_row_slice(f, self.outputs, &self.cross);
        let mut ridge = 1e-10 * scale;
        for _ in 0..8 {
            let mut gram = DMatrix::from_row_slice(f, f, &self.gram);
            gram.set_diagonal(&(gram.diagonal() + DVector::from_element(f, ridge)));
            if let Some(chol) = gram.cholesky() {
                let beta = chol.solve(&rhs);
                // Back to row-major features x outputs.
                return Ok(beta.transpose().as_slice().to_vec());
            }
            ridge *= 100.0;
        }
        bail!("the least-squares system could not be factorised (features of {f} columns are degenerate)")
    }

    /// Squared error on the accumulated pixels of the weights `beta` (features x outputs), and
    /// the targets' sum of squares: both summed over outputs.
    pub fn fitted_error(&self, beta: &[f64]) -> (f64, f64) {
        let per = self.fitted_error_per_output(beta);
        (per.iter().sum(), self.target_sq.iter().sum())
    }

    /// The squared error of each output.
    pub fn fitted_error_per_output(&self, beta: &[f64]) -> Vec<f64> {
        let (f, o) = (self.features, self.outputs);
        let mut errors = Vec::with_capacity(o);
        for out in 0..o {
            let b: Vec<f64> = (0..f).map(|i| beta[i * o + out]).collect();
            let cross: f64 = (0..f).map(|i| b[i] * self.cross[i * o + out]).sum();
            let quad: f64 = (0..f)
                .map(|i| b[i] * (0..f).map(|j| self.gram[i * f + j] * b[j]).sum::<f64>())
                .sum();
            // Rounding can leave a tiny negative value where the fit is exact.
            errors.push((self.target_sq[out] - 2.0 * cross + quad).max(0.0));
        }
        errors
    }

    /// Each output's sum of squares about its mean, where the last feature is the constant 1
    /// (its row of `phi^T y` is then each output's sum).
    pub fn centred_target_sq(&self) -> Vec<f64> {
        let (f, o) = (self.features, self.outputs);
        (0..o)
            .map(|out| {
                let sum = self.cross[(f - 1) * o + out];
                (self.target_sq[out] - sum * sum / self.rows as f64).max(0.0)
            })
            .collect()
    }
}

/// `y = phi beta` for `rows` pixels: phi rows x features, beta features x outputs; returns the
/// predictions outputs x rows (output-major, as the targets).
pub fn predict(phi: &[f64], beta: &[f64], rows: usize, features: usize, outputs: usize) -> Vec<f64> {
    let mut y = vec![0.0; outputs * rows];
    // y^T (rows x outputs) = phi beta; y is stored output-major, so y^T has strides (1, rows).
    // SAFETY: buffers match the extents and strides given.
    unsafe {
        gemm::gemm(
            rows,
            outputs,
            features,
            y.as_mut_ptr(),
            rows as isize,
            1,
            false,
            phi.as_ptr(),
            1,
            features as isize,
            beta.as_ptr(),
            1,
            outputs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
    y
}
