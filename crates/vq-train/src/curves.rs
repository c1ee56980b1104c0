//! `curves.png`: training loss, train/test PSNR and perplexity against steps, from
//! `metrics.jsonl`.

use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;
use serde_json::Value;

/// A font shipped with the binary, so that plots render the same on any machine.
static FONT: &[u8] = include_bytes!("../assets/DejaVuSansMono.ttf");

fn ensure_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

type Series = Vec<(f64, f64)>;

struct Curves {
    loss: Series,
    train_psnr: Series,
    test_psnr: Series,
    perplexity: Series,
    test_perplexity: Series,
}

fn read(metrics: &Path) -> Result<Curves> {
    let text = std::fs::read_to_string(metrics)
        .with_context(|| format!("reading {}", metrics.display()))?;
    let mut c = Curves {
        loss: vec![],
        train_psnr: vec![],
        test_psnr: vec![],
        perplexity: vec![],
        test_perplexity: vec![],
    };
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if let Some(e) = v.get("eval") {
            let step = e["step"].as_f64().unwrap_or(0.0);
            c.test_psnr
                .push((step, e["psnr"].as_f64().unwrap_or(f64::NAN)));
            c.test_perplexity
                .push((step, e["perplexity"].as_f64().unwrap_or(f64::NAN)));
        } else if let Some(step) = v["step"].as_f64() {
            c.loss.push((step, v["loss"].as_f64().unwrap_or(f64::NAN)));
            c.train_psnr
                .push((step, v["psnr"].as_f64().unwrap_or(f64::NAN)));
            c.perplexity
                .push((step, v["perplexity"].as_f64().unwrap_or(f64::NAN)));
        }
    }
    Ok(c)
}

fn bounds(series: &[&Series]) -> (f64, f64, f64, f64) {
    let points = series
        .iter()
        .flat_map(|s| s.iter())
        .filter(|(x, y)| x.is_finite() && y.is_finite());
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
        return (0.0, 1.0, 0.0, 1.0);
    }
    let pad = ((y1 - y0) * 0.05).max(1e-6);
    (x0, x1.max(x0 + 1.0), y0 - pad, y1 + pad)
}

fn panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    title: &str,
    series: &[(&str, &Series, RGBColor)],
) -> Result<()> {
    let all: Vec<&Series> = series.iter().map(|s| s.1).collect();
    let (x0, x1, y0, y1) = bounds(&all);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(55)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    for (name, s, color) in series {
        let color = *color;
        chart
            .draw_series(LineSeries::new(
                s.iter().copied().filter(|(_, y)| y.is_finite()),
                color.stroke_width(2),
            ))
            .map_err(|e| anyhow::anyhow!("plot: {e}"))?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 12))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    Ok(())
}

/// Draws the curves of `metrics` into `out` (a PNG written atomically).
pub fn plot(metrics: &Path, out: &Path) -> Result<()> {
    ensure_font();
    let c = read(metrics)?;
    let (w, h) = (1500u32, 420u32);
    let mut pixels = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (w, h)).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
        let areas = root.split_evenly((1, 3));
        panel(&areas[0], "training loss", &[("loss", &c.loss, BLUE)])?;
        panel(
            &areas[1],
            "PSNR (dB)",
            &[("train", &c.train_psnr, BLUE), ("test", &c.test_psnr, RED)],
        )?;
        panel(
            &areas[2],
            "perplexity",
            &[
                ("train batch", &c.perplexity, BLUE),
                ("test", &c.test_perplexity, RED),
            ],
        )?;
        root.present().map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    }
    let img = image::RgbImage::from_raw(w, h, pixels).context("plot buffer size")?;
    vq_model::save_png(&img, out)?;
    Ok(())
}

/// `curves.png` of a prior run: training and test bits per code, test bits per dimension.
pub fn plot_prior(metrics: &Path, out: &Path) -> Result<()> {
    ensure_font();
    let text = std::fs::read_to_string(metrics)
        .with_context(|| format!("reading {}", metrics.display()))?;
    let (mut train, mut test, mut dims) = (Series::new(), Series::new(), Series::new());
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if let Some(e) = v.get("eval") {
            let step = e["step"].as_f64().unwrap_or(0.0);
            test.push((step, e["bits_per_code"].as_f64().unwrap_or(f64::NAN)));
            dims.push((step, e["bits_per_dim"].as_f64().unwrap_or(f64::NAN)));
        } else if let Some(step) = v["step"].as_f64() {
            train.push((step, v["bits_per_code"].as_f64().unwrap_or(f64::NAN)));
        }
    }
    let (w, h) = (1000u32, 420u32);
    let mut pixels = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (w, h)).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
        let areas = root.split_evenly((1, 2));
        panel(
            &areas[0],
            "NLL (bits per code)",
            &[("train", &train, BLUE), ("test", &test, RED)],
        )?;
        panel(&areas[1], "test bits/dim", &[("test", &dims, RED)])?;
        root.present().map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    }
    let img = image::RgbImage::from_raw(w, h, pixels).context("plot buffer size")?;
    vq_model::save_png(&img, out)?;
    Ok(())
}
