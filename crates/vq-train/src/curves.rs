//! `curves.png`: a task's panels of figures against steps, from `metrics.jsonl`.
//!
//! Made to show what people look for late in a run: a loss that falls by orders of magnitude
//! is drawn on a log axis (so the first steps do not flatten the rest), each axis spans the
//! data of its own panel, steps are whole numbers, and evaluations are marked with dots, so
//! that a single evaluation is visible too.

use std::path::Path;

use anyhow::{Context, Result};
use plotters::coord::combinators::IntoLogRange;
use plotters::prelude::*;
use serde_json::Value;

use crate::task::{Panel, Source};

/// A font shipped with the binary, so that plots render the same on any machine.
static FONT: &[u8] = include_bytes!("../assets/DejaVuSansMono.ttf");

fn ensure_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

type Series = Vec<(f64, f64)>;

const COLOURS: [RGBColor; 4] = [BLUE, RED, GREEN, MAGENTA];

/// The points of `source` in the lines of a metrics log.
fn series(lines: &[Value], source: Source) -> Series {
    lines
        .iter()
        .filter_map(|v| {
            let (record, key) = match source {
                Source::Eval(key) => (v.get("eval")?, key),
                Source::Train(key) if v.get("eval").is_none() => (v, key),
                Source::Train(_) => return None,
            };
            let step = record.get("step")?.as_f64()?;
            let y = record.get(key)?.as_f64()?;
            (step.is_finite() && y.is_finite()).then_some((step, y))
        })
        .collect()
}

/// `(x0, x1, y0, y1)` around the points, with a little room; `log`: positive values only. On
/// a linear axis the y range covers the points after the first tenth of the steps, so that the
/// first steps (a PSNR climbing from 5 dB) do not flatten the late changes people look for;
/// earlier points run off the bottom or top.
fn bounds(all: &[&Series], log: bool) -> (f64, f64, f64, f64) {
    let xs = all.iter().flat_map(|s| s.iter()).map(|p| p.0);
    let (first, last) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
        (a.min(x), b.max(x))
    });
    let late = first + 0.1 * (last - first);
    let late_points = all
        .iter()
        .flat_map(|s| s.iter())
        .filter(|p| p.0 >= late)
        .count();
    let points = all
        .iter()
        .flat_map(|s| s.iter())
        .filter(|(x, y)| (!log || *y > 0.0) && (log || late_points < 2 || *x >= late));
    let (mut x0, mut x1, mut y0, mut y1) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for &(x, y) in points {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if !x0.is_finite() {
        return (0.0, 1.0, if log { 0.1 } else { 0.0 }, 1.0);
    }
    // One step or one evaluation still gets an axis of some width.
    let (x0, x1) = (first.min(x0), last.max(x1));
    let (x0, x1) = if x1 - x0 < 1.0 {
        ((x0 - 1.0).max(0.0), x1 + 1.0)
    } else {
        (x0, x1)
    };
    if log {
        let (lo, hi) = (y0.ln(), y1.ln());
        let pad = ((hi - lo) * 0.05).max(0.05);
        (x0, x1, (lo - pad).exp(), (hi + pad).exp())
    } else {
        let pad = ((y1 - y0) * 0.05).max(y1.abs().max(1e-3) * 1e-3);
        (x0, x1, y0 - pad, y1 + pad)
    }
}

/// A y-axis label: `decimals` places, trailing zeros dropped on a log axis (0.1, 0.01).
fn label(y: f64, decimals: usize, log: bool) -> String {
    let text = format!("{y:.decimals$}");
    if log && text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

fn plot_err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("plot: {e}")
}

fn draw_panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    panel: &Panel,
    lines: &[Value],
) -> Result<()> {
    let data: Vec<(&str, Series, RGBColor, bool)> = panel
        .curves
        .iter()
        .zip(COLOURS.iter().cycle())
        .map(|(c, colour)| {
            (
                c.label,
                series(lines, c.source),
                *colour,
                matches!(c.source, Source::Eval(_)),
            )
        })
        .collect();
    let all: Vec<&Series> = data.iter().map(|d| &d.1).collect();
    let (x0, x1, y0, y1) = bounds(&all, panel.log_y);
    // Enough decimals to tell the grid lines apart.
    let span = if panel.log_y { y0.abs() } else { y1 - y0 };
    let decimals = (2.0 - span.max(1e-9).log10().floor()).clamp(0.0, 6.0) as usize;
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(panel.title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60);
    // Two coordinate types; one drawing routine for both.
    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc("step")
                .x_label_formatter(&|x| format!("{}", x.round() as i64))
                .y_label_formatter(&|y| label(*y, decimals, panel.log_y))
                .label_style(("sans-serif", 12))
                .draw()
                .map_err(plot_err)?;
            for (label, points, colour, marked) in &data {
                let colour = *colour;
                let usable: Vec<(f64, f64)> = points
                    .iter()
                    .copied()
                    .filter(|(_, y)| !panel.log_y || *y > 0.0)
                    .collect();
                chart
                    .draw_series(LineSeries::new(usable.clone(), colour.stroke_width(2)))
                    .map_err(plot_err)?
                    .label(*label)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2))
                    });
                if *marked {
                    chart
                        .draw_series(usable.iter().map(|&p| Circle::new(p, 3, colour.filled())))
                        .map_err(plot_err)?;
                }
            }
            chart
                .configure_series_labels()
                .label_font(("sans-serif", 12))
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(plot_err)?;
        }};
    }
    if panel.log_y {
        draw!(builder
            .build_cartesian_2d(x0..x1, (y0..y1).log_scale())
            .map_err(plot_err)?);
    } else {
        draw!(builder
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(plot_err)?);
    }
    Ok(())
}

/// Draws `panels` from the metrics log `metrics` into `out` (a PNG written atomically).
pub fn plot(metrics: &Path, panels: &[Panel], out: &Path) -> Result<()> {
    ensure_font();
    let text = std::fs::read_to_string(metrics)
        .with_context(|| format!("reading {}", metrics.display()))?;
    let lines: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let (w, h) = (500 * panels.len().max(1) as u32, 420u32);
    let mut pixels = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let areas = root.split_evenly((1, panels.len().max(1)));
        for (area, panel) in areas.iter().zip(panels) {
            draw_panel(area, panel, &lines)?;
        }
        root.present().map_err(plot_err)?;
    }
    let img = image::RgbImage::from_raw(w, h, pixels).context("plot buffer size")?;
    vq_model::save_png(&img, out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::Curve;

    fn panels() -> Vec<Panel> {
        vec![
            Panel {
                title: "loss",
                log_y: true,
                curves: vec![Curve::train("loss", "loss")],
            },
            Panel {
                title: "psnr",
                log_y: false,
                curves: vec![Curve::train("train", "psnr"), Curve::eval("test", "psnr")],
            },
        ]
    }

    #[test]
    fn series_read_train_and_eval_lines_apart() {
        let lines: Vec<Value> = [
            r#"{"step": 50, "loss": 0.7, "psnr": 15.0}"#,
            r#"{"step": 100, "loss": 0.005, "psnr": 22.0}"#,
            r#"{"eval": {"step": 100, "psnr": 21.5}}"#,
            r#"{"step": 150, "loss": 0.006, "psnr": 22.5}"#,
        ]
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
        assert_eq!(
            series(&lines, Source::Train("loss")),
            vec![(50.0, 0.7), (100.0, 0.005), (150.0, 0.006)]
        );
        assert_eq!(series(&lines, Source::Eval("psnr")), vec![(100.0, 21.5)]);
        // The log axis spans both orders of magnitude; one evaluation still has a width; a
        // linear axis leaves out the first tenth of the run.
        let (_, _, y0, _) = bounds(&[&series(&lines, Source::Train("psnr"))], false);
        assert!(y0 > 15.0 && y0 < 22.0, "{y0}");
        let (_, _, y0, y1) = bounds(&[&series(&lines, Source::Train("loss"))], true);
        assert!(y0 < 0.005 && y1 > 0.7, "{y0} {y1}");
        let (x0, x1, _, _) = bounds(&[&series(&lines, Source::Eval("psnr"))], false);
        assert!(x1 > x0, "{x0} {x1}");
    }

    #[test]
    fn draws_a_png_of_every_panel_even_with_one_evaluation() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = dir.path().join("metrics.jsonl");
        std::fs::write(
            &metrics,
            "{\"step\": 1, \"loss\": 0.7, \"psnr\": 12.0}\n{\"eval\": {\"step\": 1, \"psnr\": 11.0}}\n",
        )
        .unwrap();
        let out = dir.path().join("curves.png");
        plot(&metrics, &panels(), &out).unwrap();
        let img = image::open(&out).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (1000, 420));
        // The evaluation's dot is drawn: some pure red pixels in the second panel.
        let red = img
            .enumerate_pixels()
            .filter(|(x, _, p)| *x >= 500 && p.0 == [255, 0, 0])
            .count();
        assert!(red > 5, "{red} red pixels");
    }
}
