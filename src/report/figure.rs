//! Drawing a line figure (accuracy per epoch) to PNG and SVG with plotters. The figure carries
//! its own legend, below the axes so that long labels never hide a curve, and a footer that
//! says which build, machine and data made it.
//!
//! Text is rendered with the DejaVu Sans font bundled in `assets/fonts` (through plotters'
//! pure-Rust `ab_glyph` renderer), so figures look the same on every machine and need no
//! system font library.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::{Result, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::train::files::write_atomic;

const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

const WIDTH: u32 = 960;
const PLOT_HEIGHT: u32 = 520;
const LEGEND_ROW: u32 = 24;
const NOTE_ROW: u32 = 18;

/// Okabe-Ito colours: distinguishable for readers with colour-vision deficiencies.
const PALETTE: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 0, 0),
    RGBColor(240, 228, 66),
];

/// One line of a figure.
#[derive(Debug, Clone, PartialEq)]
pub struct Curve {
    pub label: String,
    /// (epoch, value, spread): the spread (standard deviation across seeds) is drawn as an
    /// error bar.
    pub points: Vec<(f64, f64, Option<f64>)>,
    pub dashed: bool,
    /// Index into the palette; curves of one run share it.
    pub color: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub curves: Vec<Curve>,
    /// Small print under the legend: provenance and budget.
    pub notes: Vec<String>,
    pub axes: Axes,
}

/// How the axes read their values.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Axes {
    /// x values are logarithms in this base: ticks at whole x read `base^x` (1, 2, 4, ...).
    pub x_log_base: Option<f64>,
    /// y is not a percentage of 0-100 (accuracy) but any value from 0 up.
    pub y_unbounded: bool,
    /// Draw each point's spread as a shaded band around its curve instead of error bars.
    pub spread_as_band: bool,
}

impl Figure {
    pub fn size(&self) -> (u32, u32) {
        let legend = LEGEND_ROW * self.curves.len() as u32 + 12;
        let notes = NOTE_ROW * self.notes.len() as u32 + 10;
        (WIDTH, PLOT_HEIGHT + legend + notes)
    }

    pub fn to_png(&self) -> Result<Vec<u8>> {
        register_font();
        let (w, h) = self.size();
        let mut pixels = vec![0u8; (w * h * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut pixels, (w, h)).into_drawing_area();
            self.draw(root).map_err(|e| anyhow!("cannot draw the figure: {e:?}"))?;
        }
        let image =
            image::RgbImage::from_raw(w, h, pixels).ok_or_else(|| anyhow!("figure buffer has the wrong size"))?;
        let mut png = Vec::new();
        image.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)?;
        Ok(png)
    }

    pub fn to_svg(&self) -> Result<String> {
        register_font();
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, self.size()).into_drawing_area();
            self.draw(root).map_err(|e| anyhow!("cannot draw the figure: {e:?}"))?;
        }
        Ok(svg)
    }

    /// Writes `<stem>.png` and `<stem>.svg` (atomically) and returns their paths.
    pub fn save(&self, stem: &Path) -> Result<Vec<PathBuf>> {
        let png = stem.with_extension("png");
        let svg = stem.with_extension("svg");
        write_atomic(&png, &self.to_png()?)?;
        write_atomic(&svg, self.to_svg()?.as_bytes())?;
        Ok(vec![png, svg])
    }

    /// Horizontal offsets of the curves. When every curve is a single point (a one-epoch
    /// budget), the points and their error bars would sit on top of each other at one epoch:
    /// they are spread side by side over +-0.35 epoch instead, in legend order.
    fn dodge(&self) -> Vec<f64> {
        let n = self.curves.len();
        if n < 2 || self.curves.iter().any(|c| c.points.len() > 1) {
            return vec![0.0; n];
        }
        (0..n).map(|i| -0.35 + 0.7 * i as f64 / (n - 1) as f64).collect()
    }

    /// Axis ranges that hold every point and error bar, with a margin; accuracy stays in [0, 100].
    fn ranges(&self) -> (std::ops::Range<f64>, std::ops::Range<f64>) {
        let points = self.curves.iter().flat_map(|c| c.points.iter());
        let (mut x0, mut x1, mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
        for &(x, y, s) in points {
            let s = s.unwrap_or(0.0);
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y - s);
            y1 = y1.max(y + s);
        }
        if !x0.is_finite() {
            return (0.0..1.0, 0.0..100.0);
        }
        let x_pad = ((x1 - x0) * 0.03).max(0.5);
        let y_pad = ((y1 - y0) * 0.08).max(1.0);
        let y_top = if self.axes.y_unbounded {
            y1 + y_pad
        } else {
            (y1 + y_pad).min(100.0)
        };
        (x0 - x_pad..x1 + x_pad, (y0 - y_pad).max(0.0)..y_top)
    }

    fn draw<DB: DrawingBackend>(
        &self,
        root: DrawingArea<DB, Shift>,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        root.fill(&WHITE)?;
        let (plot_area, below) = root.split_vertically(PLOT_HEIGHT);
        let (x_range, y_range) = self.ranges();
        let epochs = (x_range.end - x_range.start).round().max(1.0) as usize;
        let mut chart = ChartBuilder::on(&plot_area)
            .caption(&self.title, (FAMILY, 22))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(64)
            .build_cartesian_2d(x_range, y_range)?;
        chart
            .configure_mesh()
            .x_desc(&self.x_label)
            .y_desc(&self.y_label)
            .x_labels(epochs.min(12) + 1)
            .y_labels(10)
            .x_label_formatter(&|x| match self.axes.x_log_base {
                Some(base) if (x - x.round()).abs() < 1e-6 => format!("{}", base.powf(x.round()).round()),
                Some(_) => String::new(),
                None => whole_number(*x),
            })
            .y_label_formatter(&|y| tick_label(*y))
            .label_style((FAMILY, 15))
            .axis_desc_style((FAMILY, 17))
            .light_line_style(WHITE)
            .bold_line_style(RGBColor(225, 225, 225))
            .draw()?;
        let dodge = self.dodge();
        for (i, curve) in self.curves.iter().enumerate() {
            let color = PALETTE[curve.color % PALETTE.len()];
            let line = color.stroke_width(2);
            let dx = dodge.get(i).copied().unwrap_or(0.0);
            let xy: Vec<(f64, f64)> = curve.points.iter().map(|&(x, y, _)| (x + dx, y)).collect();
            let band = self.axes.spread_as_band && curve.points.len() > 1;
            if band {
                let upper = curve.points.iter().map(|&(x, y, s)| (x + dx, y + s.unwrap_or(0.0)));
                let lower = curve
                    .points
                    .iter()
                    .rev()
                    .map(|&(x, y, s)| (x + dx, y - s.unwrap_or(0.0)));
                let outline: Vec<(f64, f64)> = upper.chain(lower).collect();
                chart.draw_series(std::iter::once(Polygon::new(outline, color.mix(0.18).filled())))?;
            }
            if curve.dashed {
                chart.draw_series(DashedLineSeries::new(xy.clone(), 9, 6, line))?;
                chart.draw_series(xy.iter().map(|&p| TriangleMarker::new(p, 6, color.filled())))?;
            } else {
                chart.draw_series(LineSeries::new(xy.clone(), line))?;
                chart.draw_series(xy.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
            }
            chart.draw_series(curve.points.iter().filter(|_| !band).filter_map(|&(x, y, s)| {
                s.map(|s| ErrorBar::new_vertical(x + dx, y - s, y, y + s, color.stroke_width(1), 10))
            }))?;
        }

        let (legend, notes) = below.split_vertically(LEGEND_ROW * self.curves.len() as u32 + 12);
        for (i, curve) in self.curves.iter().enumerate() {
            let color = PALETTE[curve.color % PALETTE.len()];
            let y = 6 + (i as i32) * LEGEND_ROW as i32 + LEGEND_ROW as i32 / 2;
            let x = 80;
            if curve.dashed {
                legend.draw(&PathElement::new(vec![(x, y), (x + 12, y)], color.stroke_width(2)))?;
                legend.draw(&PathElement::new(vec![(x + 24, y), (x + 36, y)], color.stroke_width(2)))?;
                legend.draw(&TriangleMarker::new((x + 18, y), 6, color.filled()))?;
            } else {
                legend.draw(&PathElement::new(vec![(x, y), (x + 36, y)], color.stroke_width(2)))?;
                legend.draw(&Circle::new((x + 18, y), 4, color.filled()))?;
            }
            legend.draw(&Text::new(curve.label.clone(), (x + 48, y - 9), (FAMILY, 15)))?;
        }
        let grey = RGBColor(90, 90, 90);
        for (i, note) in self.notes.iter().enumerate() {
            let style = (FAMILY, 12).into_font().color(&grey);
            notes.draw(&Text::new(note.clone(), (16, 4 + i as i32 * NOTE_ROW as i32), style))?;
        }
        root.present()
    }
}

/// Accuracy ticks: whole numbers, or one decimal where plotters picks half-point steps (a
/// narrow range), so that no two ticks read the same.
fn tick_label(y: f64) -> String {
    if (y - y.round()).abs() < 1e-6 {
        format!("{y:.0}")
    } else {
        format!("{y:.1}")
    }
}

/// Tick labels at whole epochs only (a 1-epoch figure would otherwise read 0.6, 0.8, ...).
fn whole_number(x: f64) -> String {
    if (x - x.round()).abs() < 1e-6 {
        format!("{}", x.round() as i64)
    } else {
        String::new()
    }
}

pub(crate) fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bundled font is a valid TrueType file; a failure here is a packaging bug.
        if plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_err() {
            eprintln!("warning: the bundled font could not be loaded; figure text will be missing");
        }
    });
}
