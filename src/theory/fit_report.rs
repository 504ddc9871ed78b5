//! What `pnn fit-conv` writes: a Markdown table, a CSV of every fit, a JSON record with the
//! configuration and provenance, and two figures (error against masks, against fitted images).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

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

/// Figures draw errors above this (percent) at this height: a fit of one image can miss others
/// by a factor of hundreds, which would flatten every other curve. The table has the values.
const FIGURE_CAP: f64 = 150.0;

/// An error in percent as a figure draws it.
fn shown(error: f64) -> f64 {
    (100.0 * error).min(FIGURE_CAP)
}

/// The notes of a figure, with a word on capped values where there are any.
fn capped_notes(result: &FitConvResult, notes: &[String]) -> Vec<String> {
    let mut notes = notes.to_vec();
    if result.rows.iter().any(|r| 100.0 * r.heldout_error > FIGURE_CAP) {
        notes.insert(
            0,
            format!("Errors above {FIGURE_CAP:.0}% are drawn at {FIGURE_CAP:.0}% (fits of one image, on other images): fit-conv.md has the values."),
        );
    }
    notes
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
                .filter_map(|r| r.nmasks.map(|m| (x(m), shown(r.heldout_error), None)))
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
                        (x(lo), shown(r.heldout_error), None),
                        (x(hi), shown(r.heldout_error), None),
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
        notes: capped_notes(result, notes),
        axes: Axes {
            x_log_base: Some(2.0),
            y_unbounded: true,
            spread_as_band: false,
        },
    }
}

/// Error against the number of fitted images: held-out (solid) for the 1x1 convolution, the
/// perturbation layers with fixed masks of the fewest, a middle and the most masks, and the
/// ceiling; fitted (dashed) for the layer with the most masks, to show how far the error on
/// the fitted images is from the error on others.
pub fn error_vs_images(result: &FitConvResult, notes: &[String]) -> Figure {
    let masks: Vec<usize> = columns(&result.rows)
        .iter()
        .filter(|(m, _)| m == "perturb")
        .filter_map(|(_, k)| *k)
        .collect();
    let drawn: Vec<usize> = match masks.as_slice() {
        [] => vec![],
        [first, .., last] => {
            let mut d = vec![*first, masks[masks.len() / 2], *last];
            d.dedup();
            d
        }
        [only] => vec![*only],
    };
    let cols: Vec<(String, Option<usize>)> = columns(&result.rows)
        .into_iter()
        .filter(|(m, k)| {
            m != "constant" && m != "perturb-trained" && (m != "perturb" || k.is_some_and(|k| drawn.contains(&k)))
        })
        .collect();
    let most_masks = drawn.last().copied();
    let x = |n: usize| (n as f64).log10();
    let mut curves = Vec::new();
    for (i, (m, k)) in cols.iter().enumerate() {
        let rows: Vec<&FitRow> = result.rows.iter().filter(|r| &r.model == m && r.nmasks == *k).collect();
        curves.push(Curve {
            label: format!("{}, held-out", column_name(m, *k)),
            points: rows
                .iter()
                .map(|r| (x(r.fit_images), shown(r.heldout_error), None))
                .collect(),
            dashed: false,
            color: i,
        });
        if m == "perturb" && *k == most_masks {
            curves.push(Curve {
                label: format!("{}, on the fitted images", column_name(m, *k)),
                points: rows
                    .iter()
                    .map(|r| (x(r.fit_images), shown(r.fitted_error), None))
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
        notes: capped_notes(result, notes),
        axes: Axes {
            x_log_base: Some(10.0),
            y_unbounded: true,
            spread_as_band: false,
        },
    }
}

/// What `fit-conv.json` records: the command, when and where it ran, its options and result.
#[derive(Serialize, Deserialize)]
pub struct Record<O> {
    pub command: String,
    pub created: String,
    pub provenance: Provenance,
    pub options: O,
    pub result: FitConvResult,
}

/// Reads back an earlier run's `fit-conv.json`, to draw its table and figures again without
/// fitting again.
pub fn read_back(dir: &Path) -> Result<Record<serde_json::Value>> {
    let path = dir.join("fit-conv.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}: give a folder written by pnn fit-conv", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a fit-conv record", path.display()))
}

/// Writes the record, the table and the figures into `out`, and returns the files written.
pub fn write<O: Serialize>(out: &Path, result: &FitConvResult, options: &O, command: &str) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let record = Record {
        command: command.to_string(),
        created: chrono::Local::now().to_rfc3339(),
        provenance: Provenance::this("cpu (burn flex)"),
        options,
        result: result.clone(),
    };
    let json = out.join("fit-conv.json");
    write_atomic(&json, serde_json::to_string_pretty(&record)?.as_bytes())?;
    let mut files = vec![json];
    files.extend(draw(out, &record)?);
    Ok(files)
}

/// Writes the table (Markdown, CSV) and the figures of a record into `out`.
pub fn draw<O>(out: &Path, record: &Record<O>) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let result = &record.result;
    let notes = vec![
        format!("Target: {}.", result.target),
        format!(
            "{} held-out test images; fit sets are prefixes of one shuffled order of {} training images.",
            result.heldout_images, result.training_images
        ),
        record.provenance.line(),
    ];
    let mut files = Vec::new();
    let md = out.join("fit-conv.md");
    write_atomic(&md, markdown(result, &record.command).as_bytes())?;
    files.push(md);
    let csv_path = out.join("fit-conv.csv");
    write_atomic(&csv_path, &csv(result)?)?;
    files.push(csv_path);
    files.extend(error_vs_masks(result, &notes).save(&out.join("error-vs-masks"))?);
    files.extend(error_vs_images(result, &notes).save(&out.join("error-vs-images"))?);
    Ok(files)
}
