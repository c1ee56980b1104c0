//! `cargo xtask bench import`: the image-folder import's rate (`vq-cli import` and
//! `cargo xtask import-images` run the import itself, `vq_data::folder`).

use anyhow::Result;
use vq_data::folder::{import_image_folder, ImportOptions};

/// `cargo xtask bench import`: `count` JPEG photos of `width` × 3/4 `width` (smooth colour
/// fields with noise, so that JPEG decoding has real work), 10 classes, imported at `side`.
pub fn bench(count: usize, width: u32, side: usize) -> Result<()> {
    use rayon::prelude::*;
    let tmp = tempfile::tempdir()?;
    let root = tmp.path().join("photos");
    let height = width * 3 / 4;
    let started = std::time::Instant::now();
    (0..count).into_par_iter().try_for_each(|i| -> Result<()> {
        let dir = root.join(format!("train/class{}", i % 10));
        std::fs::create_dir_all(&dir)?;
        let seed = i as u32;
        let img = image::RgbImage::from_fn(width, height, |x, y| {
            let h = (x.wrapping_mul(73_856_093)
                ^ y.wrapping_mul(19_349_663)
                ^ seed.wrapping_mul(83_492_791))
            .wrapping_mul(2_654_435_761);
            let noise = (h >> 27) as f32;
            let wave = |k: f32| {
                ((x as f32 * 0.013 * k + y as f32 * 0.021 + seed as f32 + k).sin() * 100.0
                    + 128.0
                    + noise) as u8
            };
            image::Rgb([wave(1.0), wave(2.0), wave(3.0)])
        });
        let mut bytes = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90).encode_image(&img)?;
        std::fs::write(dir.join(format!("{i:05}.jpg")), bytes)?;
        Ok(())
    })?;
    let made = started.elapsed().as_secs_f64();
    let out = tmp.path().join("dataset");
    let options = ImportOptions {
        side,
        ..ImportOptions::default()
    };
    let report = import_image_folder(&root, &out, &options, &|_| {})?;
    let per_s = count as f64 / report.seconds;
    println!(
        "import: {count} JPEG photos of {width}×{height} → {side}×{side}: {:.2} s = {per_s:.0} images/s ({} rayon threads; making them took {made:.1} s)",
        report.seconds,
        rayon::current_num_threads()
    );
    println!(
        "{}",
        serde_json::json!({
            "bench": "import", "images": count, "width": width, "height": height, "side": side,
            "seconds": report.seconds, "images_per_s": per_s, "threads": rayon::current_num_threads(),
        })
    );
    Ok(())
}
