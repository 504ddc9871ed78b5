//! The confusion matrix of an evaluation: counts by true and predicted class, the per-class
//! accuracy read off it, and its figure.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::report::figure::register_font;
use crate::train::files::write_atomic;

/// `counts[true][predicted]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Confusion {
    pub counts: Vec<Vec<usize>>,
}

impl Confusion {
    pub fn new(classes: usize) -> Self {
        Self {
            counts: vec![vec![0; classes]; classes],
        }
    }

    pub fn classes(&self) -> usize {
        self.counts.len()
    }

    pub fn add(&mut self, truth: usize, predicted: usize) {
        self.counts[truth][predicted] += 1;
    }

    pub fn total(&self) -> usize {
        self.counts.iter().flatten().sum()
    }

    pub fn correct(&self) -> usize {
        (0..self.classes()).map(|c| self.counts[c][c]).sum()
    }

    /// Images of each true class.
    pub fn support(&self, class: usize) -> usize {
        self.counts[class].iter().sum()
    }

    /// Percent of the class's images predicted as it; None for a class with no images.
    pub fn class_accuracy(&self, class: usize) -> Option<f64> {
        let n = self.support(class);
        (n > 0).then(|| 100.0 * self.counts[class][class] as f64 / n as f64)
    }

    /// One line per class: images, correct, accuracy (CSV).
    pub fn per_class_csv(&self) -> String {
        let mut out = String::from("class,images,correct,accuracy\n");
        for c in 0..self.classes() {
            let acc = self.class_accuracy(c).map_or(String::new(), |a| format!("{a:.4}"));
            out += &format!("{c},{},{},{acc}\n", self.support(c), self.counts[c][c]);
        }
        out
    }

    /// The matrix as CSV: a row per true class, a column per predicted class.
    pub fn matrix_csv(&self) -> String {
        let mut out = String::from("true\\predicted");
        for c in 0..self.classes() {
            out += &format!(",{c}");
        }
        out.push('\n');
        for (t, row) in self.counts.iter().enumerate() {
            out += &t.to_string();
            for n in row {
                out += &format!(",{n}");
            }
            out.push('\n');
        }
        out
    }

    /// The matrix as aligned text, for the terminal.
    pub fn matrix_text(&self) -> String {
        let width = self
            .counts
            .iter()
            .flatten()
            .max()
            .map_or(1, |m| m.to_string().len())
            .max(3);
        let mut out = format!("{:>6} predicted\n{:>6}", "", "true");
        for c in 0..self.classes() {
            out += &format!(" {c:>width$}");
        }
        out.push('\n');
        for (t, row) in self.counts.iter().enumerate() {
            out += &format!("{t:>6}");
            for n in row {
                out += &format!(" {n:>width$}");
            }
            out.push('\n');
        }
        out
    }

    /// Draws the matrix, each row shaded by the share of its class's images, as PNG and SVG
    /// (each written atomically); returns the files written.
    pub fn draw(&self, stem: &Path, title: &str) -> Result<Vec<PathBuf>> {
        if self.classes() < 2 {
            return Ok(Vec::new());
        }
        register_font();
        let side = (self.classes() as u32 * 48 + 160).clamp(480, 1600);
        let mut pixels = vec![0u8; (side * side * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut pixels, (side, side)).into_drawing_area();
            self.draw_on(&root, title)?;
        }
        let image =
            image::RgbImage::from_raw(side, side, pixels).ok_or_else(|| anyhow!("figure buffer has the wrong size"))?;
        let mut png = Vec::new();
        image.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)?;
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, (side, side)).into_drawing_area();
            self.draw_on(&root, title)?;
        }
        let (png_path, svg_path) = (stem.with_extension("png"), stem.with_extension("svg"));
        write_atomic(&png_path, &png).with_context(|| format!("cannot write {}", png_path.display()))?;
        write_atomic(&svg_path, svg.as_bytes()).with_context(|| format!("cannot write {}", svg_path.display()))?;
        Ok(vec![png_path, svg_path])
    }

    fn draw_on<DB: DrawingBackend>(&self, root: &DrawingArea<DB, plotters::coord::Shift>, title: &str) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let n = self.classes();
        let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("{e}");
        root.fill(&WHITE).map_err(err)?;
        // One segment per class (a segmented 0..n-1 has n); rows drawn top-down: true class t
        // sits at y = n - 1 - t.
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(48)
            .build_cartesian_2d((0..n - 1).into_segmented(), (0..n - 1).into_segmented())
            .map_err(err)?;
        let every = n.div_ceil(20);
        let label = |v: &SegmentValue<usize>, flip: bool| match v {
            SegmentValue::CenterOf(i) if *i < n && i % every == 0 => (if flip { n - 1 - i } else { *i }).to_string(),
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("predicted class")
            .y_desc("true class")
            .x_labels(n)
            .y_labels(n)
            .x_label_formatter(&|v| label(v, false))
            .y_label_formatter(&|v| label(v, true))
            .draw()
            .map_err(err)?;
        let cells: Vec<(usize, usize, usize, f64)> = self
            .counts
            .iter()
            .enumerate()
            .flat_map(|(t, row)| {
                let support = row.iter().sum::<usize>().max(1) as f64;
                row.iter()
                    .enumerate()
                    .map(move |(p, &count)| (t, p, count, count as f64 / support))
            })
            .collect();
        let at = |t: usize, p: usize| (SegmentValue::Exact(p), SegmentValue::Exact(n - 1 - t));
        let next = |t: usize, p: usize| (SegmentValue::Exact(p + 1), SegmentValue::Exact(n - t));
        chart
            .draw_series(cells.iter().map(|&(t, p, _, share)| {
                let shade = (255.0 * (1.0 - share)) as u8;
                Rectangle::new([at(t, p), next(t, p)], RGBColor(shade, shade, 255).filled())
            }))
            .map_err(err)?;
        if n <= 20 {
            chart
                .draw_series(cells.iter().map(|&(t, p, count, share)| {
                    let colour = if share > 0.5 { WHITE } else { BLACK };
                    let style = ("sans-serif", 12)
                        .into_font()
                        .color(&colour)
                        .pos(Pos::new(HPos::Center, VPos::Center));
                    Text::new(
                        count.to_string(),
                        (SegmentValue::CenterOf(p), SegmentValue::CenterOf(n - 1 - t)),
                        style,
                    )
                }))
                .map_err(err)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_per_class_accuracy() {
        let mut m = Confusion::new(3);
        for (t, p) in [(0, 0), (0, 1), (1, 1), (1, 1), (2, 0)] {
            m.add(t, p);
        }
        assert_eq!(m.total(), 5);
        assert_eq!(m.correct(), 3);
        assert_eq!(m.class_accuracy(0), Some(50.0));
        assert_eq!(m.class_accuracy(1), Some(100.0));
        assert_eq!(m.class_accuracy(2), Some(0.0));
        assert!(m.per_class_csv().contains("\n2,1,0,0.0000\n"));
        assert!(m.matrix_csv().starts_with("true\\predicted,0,1,2\n0,1,1,0\n"));
    }
}
