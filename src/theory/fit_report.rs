//! What `pnn fit-conv` writes: a Markdown table, a CSV of every fit, a JSON record with the
//! configuration and provenance, and two figures (error against masks, against fitted images).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use super::fit_conv::{FitConvResult, FitRow};
use crate::provenance::Provenance;
use crate::report::figure::{Axes, Curve, Figure};
use crate::train::files::write_atomic;

/// A model's column in the table: (model, nmasks).
fn columns(rows: &[FitRow]) -> Vec<(String, Option<usize>)> {
    let mut cols: Vec<(String, Option<usize>)> = Vec::new();
    for r in rows {
        let key = (r.model.clone(), r.nmasks);
        if !cols.contains(&key) {
            cols.push(key);
        }
    }
    // Floor, baseline, perturbation layers by masks (fixed before trained), ceiling.
    let rank = |m: &str| match m {
        "constant" => 0,
        "conv1x1" => 1,
        "perturb" => 2,
        "perturb-trained" => 3,
        _ => 4,
    };
    cols.sort_by_key(|(m, k)| (rank(m), *k));
    cols
}

pub fn column_name(model: &str, nmasks: Option<usize>) -> String {
    match (model, nmasks) {
        ("constant", _) => "constant".into(),
        ("conv1x1", _) => "1x1 conv".into(),
        ("perturb", Some(m)) => format!("PNN {m} mask{}", if m == 1 { "" } else { "s" }),
        ("perturb-trained", Some(m)) => format!("PNN {m} trained mask{}", if m == 1 { "" } else { "s" }),
        (other, _) => other.replace("conv", "").to_string() + " conv",
    }
}

/// The table: one row per fit set, one column per fitted layer; each cell the relative error on
/// held-out images, with the error on the fitted images in brackets.
pub fn markdown(result: &FitConvResult, command: &str) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Fitting a convolution with a perturbation layer\n");
    let _ = writeln!(md, "Target: {}.\n", result.target);
    let _ = writeln!(
        md,
        "Maps: {} -> {} channels of {}x{}. Error: `|Y' - Y| / |Y|` over the target's outputs (before \
         BatchNorm), in percent; 100 is what predicting zero gives. Each cell: **held-out** error on {} test \
         images (fitted error on the fitted images in brackets). Fit sets are the first N images of one \
         shuffled order of the {} training images.\n",
        result.maps.in_channels,
        result.maps.out_channels,
        result.maps.height,
        result.maps.width,
        result.heldout_images,
        result.training_images
    );
    let cols = columns(&result.rows);
    let mut sizes: Vec<usize> = result.rows.iter().map(|r| r.fit_images).collect();
    sizes.dedup();
    let _ = write!(md, "| fitted images |");
    for (m, k) in &cols {
        let _ = write!(md, " {} |", column_name(m, *k));
    }
    let _ = write!(md, "\n|---|");
    for _ in &cols {
        let _ = write!(md, "---|");
    }
    md.push('\n');
    for size in &sizes {
        let _ = write!(md, "| {size} |");
        for (m, k) in &cols {
            match result
                .rows
                .iter()
                .find(|r| r.fit_images == *size && &r.model == m && r.nmasks == *k)
            {
                Some(r) => {
                    let _ = write!(
                        md,
                        " **{:.1}** ({:.1}) |",
                        100.0 * r.heldout_error,
                        100.0 * r.fitted_error
                    );
                }
                None => md.push_str(" - |"),
            }
        }
        md.push('\n');
    }
    let _ = writeln!(md, "\nWeights fitted per layer (biases included):\n");
    for (m, k) in &cols {
        if let Some(r) = result.rows.iter().find(|r| &r.model == m && r.nmasks == *k) {
            let _ = writeln!(md, "- {}: {}", column_name(m, *k), r.weights);
        }
    }
    let _ = writeln!(md, "\nCommand: `{command}`");
    md
}

pub fn csv(result: &FitConvResult) -> Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in &result.rows {
        w.serialize(r)?;
    }
    Ok(w.into_inner()?)
}

/// Held-out error against the number of masks: one curve per fit set, with the 1x1 convolution
/// and the ceiling of the largest fit set as dashed references.
pub fn error_vs_masks(result: &FitConvResult, notes: &[String]) -> Figure {
    let mut sizes: Vec<usize> = result.rows.iter().map(|r| r.fit_images).collect();
    sizes.dedup();
    let masks: Vec<usize> = {
        let mut m: Vec<usize> = result.rows.iter().filter_map(|r| r.nmasks).collect();
        m.sort_unstable();
        m.dedup();
        m
    };
    let x = |m: usize| (m as f64).log2();
    let mut curves = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        for (model, dashed) in [("perturb", false), ("perturb-trained", true)] {
            let points: Vec<(f64, f64, Option<f64>)> = result
                .rows
                .iter()
                .filter(|r| r.fit_images == size && r.model == model)
                .filter_map(|r| r.nmasks.map(|m| (x(m), 100.0 * r.heldout_error, None)))
                .collect();
            if !points.is_empty() {
                curves.push(Curve {
                    label: format!(
                        "{}, fitted on {size} image{}",
                        if dashed {
                            "PNN, trained masks"
                        } else {
                            "PNN, fixed masks"
                        },
                        if size == 1 { "" } else { "s" }
                    ),
                    points,
                    dashed,
                    color: i,
                });
            }
        }
    }
    if let (Some(&largest), Some(&lo), Some(&hi)) = (sizes.last(), masks.first(), masks.last()) {
        for (n, model) in ["conv1x1", "ceiling"].iter().enumerate() {
            let row = result.rows.iter().find(|r| {
                r.fit_images == largest
                    && (r.model == *model
                        || (*model == "ceiling" && r.model.starts_with("conv") && r.model != "conv1x1"))
            });
            if let Some(r) = row {
                curves.push(Curve {
                    label: format!("{}, fitted on {largest} images", column_name(&r.model, None)),
                    points: vec![
                        (x(lo), 100.0 * r.heldout_error, None),
                        (x(hi), 100.0 * r.heldout_error, None),
                    ],
                    dashed: true,
                    color: 6 - n,
                });
            }
        }
    }
    Figure {
        title: "Fitting a convolution: held-out error against the number of masks".into(),
        x_label: "noise masks per input channel".into(),
        y_label: "held-out relative error (%)".into(),
        curves,
        notes: notes.to_vec(),
        axes: Axes {
            x_log_base: Some(2.0),
            y_unbounded: true,
        },
    }
}

/// Error against the number of fitted images: held-out (solid) for the 1x1 convolution, each
/// perturbation layer with fixed masks and the ceiling; fitted (dashed) for the layer with the
/// most masks, where one image is fitted (near) exactly.
pub fn error_vs_images(result: &FitConvResult, notes: &[String]) -> Figure {
    let cols: Vec<(String, Option<usize>)> = columns(&result.rows)
        .into_iter()
        .filter(|(m, _)| m != "constant" && m != "perturb-trained")
        .collect();
    let most_masks = cols.iter().filter_map(|(_, k)| *k).max();
    let x = |n: usize| (n as f64).log10();
    let mut curves = Vec::new();
    for (i, (m, k)) in cols.iter().enumerate() {
        let rows: Vec<&FitRow> = result.rows.iter().filter(|r| &r.model == m && r.nmasks == *k).collect();
        curves.push(Curve {
            label: format!("{}, held-out", column_name(m, *k)),
            points: rows
                .iter()
                .map(|r| (x(r.fit_images), 100.0 * r.heldout_error, None))
                .collect(),
            dashed: false,
            color: i,
        });
        if m == "perturb" && *k == most_masks {
            curves.push(Curve {
                label: format!("{}, on the fitted images", column_name(m, *k)),
                points: rows
                    .iter()
                    .map(|r| (x(r.fit_images), 100.0 * r.fitted_error, None))
                    .collect(),
                dashed: true,
                color: i,
            });
        }
    }
    Figure {
        title: "Fitting a convolution: error against the number of fitted images".into(),
        x_label: "fitted images".into(),
        y_label: "relative error (%)".into(),
        curves,
        notes: notes.to_vec(),
        axes: Axes {
            x_log_base: Some(10.0),
            y_unbounded: true,
        },
    }
}

#[derive(Serialize)]
struct Record<'a, O: Serialize> {
    command: &'a str,
    created: String,
    provenance: Provenance,
    options: &'a O,
    result: &'a FitConvResult,
}

/// Writes everything into `out` and returns the files written.
pub fn write<O: Serialize>(out: &Path, result: &FitConvResult, options: &O, command: &str) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let provenance = Provenance::this("cpu (burn flex)");
    let notes = vec![
        format!("Target: {}.", result.target),
        format!(
            "{} held-out test images; fit sets are prefixes of one shuffled order of {} training images.",
            result.heldout_images, result.training_images
        ),
        provenance.line(),
    ];
    let mut files = Vec::new();
    let md = out.join("fit-conv.md");
    write_atomic(&md, markdown(result, command).as_bytes())?;
    files.push(md);
    let csv_path = out.join("fit-conv.csv");
    write_atomic(&csv_path, &csv(result)?)?;
    files.push(csv_path);
    let json = out.join("fit-conv.json");
    let record = Record {
        command,
        created: chrono::Local::now().to_rfc3339(),
        provenance,
        options,
        result,
    };
    write_atomic(&json, serde_json::to_string_pretty(&record)?.as_bytes())?;
    files.push(json);
    files.extend(error_vs_masks(result, &notes).save(&out.join("error-vs-masks"))?);
    files.extend(error_vs_images(result, &notes).save(&out.join("error-vs-images"))?);
    Ok(files)
}
