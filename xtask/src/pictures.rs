//! `cargo xtask compare-decoders SHARP`: the same CIFAR-10 test images as the original, the
//! PSNR-trained decoder's reconstruction and a tuned decoder's, side by side and enlarged, for
//! the README.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use image::{Rgb, RgbImage};

use crate::cmd;

/// Pixels per image pixel in the picture, and white pixels between images.
const SCALE: u32 = 4;
const GAP: u32 = 4;
/// Images per row.
const ROW: usize = 8;

pub fn compare_decoders(
    root: &Path,
    data: &Path,
    sharp: &Path,
    images: usize,
    output: &Path,
) -> Result<()> {
    let dir = root.join("target/compare-decoders");
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    let (real, plain, tuned) = (dir.join("real"), dir.join("plain"), dir.join("sharp"));
    std::fs::create_dir_all(&real)?;
    let images = vq_bench::benches::export_test_images(data, images, &real)?;
    for (out, checkpoint) in [(&plain, None), (&tuned, Some(sharp))] {
        let mut c = cmd::cargo(root);
        c.args(["run", "--release", "-q", "-p", "vq-cli", "--", "-q"]);
        if let Some(ckpt) = checkpoint {
            c.arg("--checkpoint").arg(ckpt);
        }
        cmd::run(c.arg("reconstruct").arg(&real).arg("-o").arg(out))?;
    }
    let read = |dir: &PathBuf, name: String| -> Result<RgbImage> {
        let path = dir.join(name);
        Ok(image::open(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .to_rgb8())
    };
    let side = 32 * SCALE;
    let blocks = images.div_ceil(ROW) as u32;
    let width = ROW as u32 * (side + GAP) + GAP;
    // Per block of 8: original, PSNR decoder, tuned decoder; a wider gap between blocks.
    let height = blocks * (3 * (side + GAP) + 2 * GAP) + GAP;
    let mut canvas = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    for i in 0..images {
        let (block, col) = ((i / ROW) as u32, (i % ROW) as u32);
        let rows = [
            read(&real, format!("{i:05}.png"))?,
            read(&plain, format!("{i:05}.recon.png"))?,
            read(&tuned, format!("{i:05}.recon.png"))?,
        ];
        for (r, img) in rows.iter().enumerate() {
            let big =
                image::imageops::resize(img, side, side, image::imageops::FilterType::Nearest);
            let x = GAP + col * (side + GAP);
            let y = GAP + block * (3 * (side + GAP) + 2 * GAP) + r as u32 * (side + GAP);
            image::imageops::replace(&mut canvas, &big, x as i64, y as i64);
        }
    }
    let mut png = Vec::new();
    canvas.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
    vq_data::write_atomic(output, |w| w.write_all(&png))
        .with_context(|| format!("writing {}", output.display()))?;
    println!(
        "{}: {images} test images; rows: original, PSNR-trained decoder, {}",
        output.display(),
        sharp.display()
    );
    Ok(())
}
