//! What `pnn noise-stats` writes: a Markdown table, a CSV, a JSON record, and a figure of the
//! variance explained by position, centre pixel and patch, layer by layer.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use super::noise_stats::{LayerStats, TermStats};
use crate::provenance::Provenance;
use crate::report::figure::{Axes, Curve, Figure};
use crate::train::files::write_atomic;

pub fn markdown(stats: &[LayerStats], images: usize, level: f64, command: &str) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Does the neighbourhood term behave like additive noise?\n");
    let _ = writeln!(
        md,
        "For each convolution, `N_c = Y - centre`: its output (before BatchNorm) minus what the kernel's \
         centre tap gives. Beside it, the masks a perturbation layer adds to the same layer's input \
         (`--level {level}`). Statistics over {images} test images and every pixel, per channel, averaged over \
         channels. R^2: the share of the variance explained by a linear function of the centre pixel's \
         channels, of the k x k patch (centre and neighbours), or of the position alone (the per-position \
         mean over images: the most a fixed additive mask can reproduce); each fitted on every other image and \
         scored on the others.\n"
    );
    let _ = writeln!(
        md,
        "| layer | term | mean | std | relative size | corr. with centre | R^2 centre pixel | R^2 patch | R^2 position | corr. of adjacent pixels |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|");
    for s in stats {
        for t in [&s.neighbourhood, &s.masks] {
            let _ = writeln!(
                md,
                "| {} | {} | {:.3} | {:.3} | {:.2} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |",
                t.layer,
                term_name(t),
                t.mean,
                t.std,
                t.relative_size,
                t.corr_centre,
                t.r2_centre_pixel,
                t.r2_patch,
                t.r2_position,
                t.autocorr_adjacent
            );
        }
    }
    let _ = writeln!(
        md,
        "\nRelative size: std of `N_c` / std of the output; for the masks, std of the noise / std of the input it is \
         added to. Corr. with centre: `N_c` with the centre term; the masks with the input pixel.\n"
    );
    let _ = writeln!(md, "Layers:\n");
    for s in stats {
        let _ = writeln!(md, "- {}: {}", s.neighbourhood.layer, s.target);
    }
    let _ = writeln!(md, "\nCommand: `{command}`");
    md
}

fn term_name(t: &TermStats) -> &'static str {
    if t.term == "masks" {
        "PNN masks"
    } else {
        "neighbourhood N_c"
    }
}

pub fn csv(stats: &[LayerStats]) -> Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for s in stats {
        w.serialize(&s.neighbourhood)?;
        w.serialize(&s.masks)?;
    }
    Ok(w.into_inner()?)
}

/// R^2 by position, by centre pixel, by patch, and adjacent-pixel correlation, per layer: solid
/// for the neighbourhood term, dashed for the masks.
pub fn figure(stats: &[LayerStats], notes: &[String]) -> Figure {
    // Layers by their number (0 is the stem); a random target is drawn at 0.
    let x = |s: &LayerStats| s.neighbourhood.layer.parse::<f64>().unwrap_or(0.0);
    let series: [(&str, fn(&TermStats) -> f64); 4] = [
        ("R^2 by position (a fixed mask)", |t| t.r2_position),
        ("R^2 by the centre pixel", |t| t.r2_centre_pixel),
        ("R^2 by the patch", |t| t.r2_patch),
        ("correlation of adjacent pixels", |t| t.autocorr_adjacent),
    ];
    let mut curves = Vec::new();
    for (color, (label, f)) in series.iter().enumerate() {
        for masks in [false, true] {
            curves.push(Curve {
                label: format!("{}, {label}", if masks { "PNN masks" } else { "neighbourhood N_c" }),
                points: stats
                    .iter()
                    .map(|s| {
                        let t = if masks { &s.masks } else { &s.neighbourhood };
                        (x(s), 100.0 * f(t), None)
                    })
                    .collect(),
                dashed: masks,
                color,
            });
        }
    }
    Figure {
        title: "Neighbourhood term vs additive noise masks".into(),
        x_label: "convolution (0: the stem, then conv1 and conv2 of each block)".into(),
        y_label: "percent".into(),
        curves,
        notes: notes.to_vec(),
        axes: Axes {
            x_log_base: None,
            y_unbounded: false,
            spread_as_band: false,
        },
    }
}

#[derive(Serialize)]
struct Record<'a, O: Serialize> {
    command: &'a str,
    created: String,
    provenance: Provenance,
    options: &'a O,
    layers: &'a [LayerStats],
}

pub fn write<O: Serialize>(
    out: &Path,
    stats: &[LayerStats],
    images: usize,
    level: f64,
    options: &O,
    command: &str,
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let provenance = Provenance::this("cpu (burn flex)");
    let notes = vec![
        format!("{images} test images; masks with --level {level}."),
        provenance.line(),
    ];
    let mut files = Vec::new();
    let md = out.join("noise-stats.md");
    write_atomic(&md, markdown(stats, images, level, command).as_bytes())?;
    files.push(md);
    let csv_path = out.join("noise-stats.csv");
    write_atomic(&csv_path, &csv(stats)?)?;
    files.push(csv_path);
    let json = out.join("noise-stats.json");
    let record = Record {
        command,
        created: chrono::Local::now().to_rfc3339(),
        provenance,
        options,
        layers: stats,
    };
    write_atomic(&json, serde_json::to_string_pretty(&record)?.as_bytes())?;
    files.push(json);
    files.extend(figure(stats, notes.as_slice()).save(&out.join("noise-stats"))?);
    Ok(files)
}
