//! Mean and spread across seeds, and how far apart two configurations are: 95% confidence
//! intervals by Student's t.
//!
//! Why t and not a bootstrap: a sweep has 3 to 10 seeds per configuration. A bootstrap over so
//! few values resamples the same handful of numbers; its percentile interval ignores that the
//! spread itself is estimated from them and comes out too narrow (at 3 seeds a nominal 95%
//! interval covers about 75%: docs/sweep.md). Student's t widens the interval by exactly that
//! uncertainty. For a difference between two configurations, Welch's form does not assume that
//! they vary equally from seed to seed (noise masks may well change the spread). Both assume
//! the final accuracy of a seed is roughly normal around its configuration's mean.

use serde::Serialize;
use statrs::distribution::{ContinuousCDF, StudentsT};

/// Mean and sample standard deviation of a few values (one per seed).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stat {
    pub mean: f64,
    /// Sample standard deviation (n - 1 in the denominator); `None` for a single value.
    pub std: Option<f64>,
    pub n: usize,
}

/// A closed interval `[low, high]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Interval {
    pub low: f64,
    pub high: f64,
}

impl Interval {
    pub fn contains(&self, x: f64) -> bool {
        self.low <= x && x <= self.high
    }

    /// `[84.90, 85.60]` with `decimals` digits.
    pub fn show(&self, decimals: usize) -> String {
        format!("[{:.*}, {:.*}]", decimals, self.low, decimals, self.high)
    }
}

/// The two-sided 95% quantile of Student's t with `df` degrees of freedom (1.96 as df grows).
pub fn t_975(df: f64) -> f64 {
    match StudentsT::new(0.0, 1.0, df) {
        Ok(t) => t.inverse_cdf(0.975),
        Err(_) => f64::NAN,
    }
}

impl Stat {
    pub fn of(values: &[f64]) -> Self {
        let n = values.len();
        if n == 0 {
            return Self {
                mean: f64::NAN,
                std: None,
                n,
            };
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let std = (n > 1).then(|| {
            let ss: f64 = values.iter().map(|v| (v - mean).powi(2)).sum();
            (ss / (n - 1) as f64).sqrt()
        });
        Self { mean, std, n }
    }

    /// The 95% confidence interval of the mean: mean ± t(0.975, n - 1) · s / √n. `None` for a
    /// single value, whose spread is unknown.
    pub fn ci95(&self) -> Option<Interval> {
        let half = self.ci95_half_width()?;
        Some(Interval {
            low: self.mean - half,
            high: self.mean + half,
        })
    }

    /// t(0.975, n - 1) · s / √n: how far the 95% interval reaches on either side of the mean.
    pub fn ci95_half_width(&self) -> Option<f64> {
        Some(t_975((self.n - 1) as f64) * self.std? / (self.n as f64).sqrt())
    }

    /// `85.12 ± 0.34`, or `85.12` for one value, with `decimals` digits.
    pub fn show(&self, decimals: usize) -> String {
        match self.std {
            Some(s) => format!("{:.*} ± {:.*}", decimals, self.mean, decimals, s),
            None => format!("{:.*}", decimals, self.mean),
        }
    }
}

/// The difference of two configurations' means (`a - b`) with its 95% confidence interval by
/// Welch's t, and the two-sided p-value of "no difference".
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Difference {
    pub mean: f64,
    /// `None` when either side has a single seed.
    pub ci95: Option<Interval>,
    /// Welch–Satterthwaite degrees of freedom.
    pub df: Option<f64>,
    pub p_value: Option<f64>,
}

impl Difference {
    pub fn welch(a: &[f64], b: &[f64]) -> Self {
        let (sa, sb) = (Stat::of(a), Stat::of(b));
        let mean = sa.mean - sb.mean;
        let (Some(da), Some(db)) = (sa.std, sb.std) else {
            return Self {
                mean,
                ci95: None,
                df: None,
                p_value: None,
            };
        };
        let (va, vb) = (da * da / a.len() as f64, db * db / b.len() as f64);
        let se = (va + vb).sqrt();
        if se == 0.0 {
            // Every seed of both sides gave the same number: the difference is exact.
            return Self {
                mean,
                ci95: Some(Interval { low: mean, high: mean }),
                df: None,
                p_value: Some(if mean == 0.0 { 1.0 } else { 0.0 }),
            };
        }
        let df = (va + vb).powi(2) / (va * va / (a.len() - 1) as f64 + vb * vb / (b.len() - 1) as f64);
        let half = t_975(df) * se;
        let p_value = StudentsT::new(0.0, 1.0, df)
            .ok()
            .map(|t| 2.0 * (1.0 - t.cdf((mean / se).abs())));
        Self {
            mean,
            ci95: Some(Interval {
                low: mean - half,
                high: mean + half,
            }),
            df: Some(df),
            p_value,
        }
    }

    /// `+0.62 [-0.10, +1.34]`, or `+0.62` without an interval.
    pub fn show(&self, decimals: usize) -> String {
        match self.ci95 {
            Some(ci) => format!(
                "{:+.*} [{:+.*}, {:+.*}]",
                decimals, self.mean, decimals, ci.low, decimals, ci.high
            ),
            None => format!("{:+.*}", decimals, self.mean),
        }
    }

    /// Whether the interval excludes zero: the difference stands above seed noise at 95%.
    pub fn excludes_zero(&self) -> bool {
        self.ci95.is_some_and(|ci| !ci.contains(0.0))
    }
}
