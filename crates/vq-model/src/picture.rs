//! Pictures people look at: grids of images as PNG, written atomically.

use std::path::Path;

use tch::{Kind, Tensor};
use vq_data::PixelRange;

use crate::ModelError;

/// How much pictures of 32-pixel images are enlarged (nearest neighbour), so that a person can
/// see them.
pub const VIEW_SCALE: u32 = 3;

/// Lays `rows` of `(N, 3, H, W)` image batches (each in `range`) out as one grid, `columns`
/// images wide, a 2-pixel gap between images; each batch starts a new row. Saves a PNG enlarged
/// `zoom` times (nearest neighbour).
pub fn save_grid(
    rows: &[&Tensor],
    columns: i64,
    zoom: u32,
    range: PixelRange,
    path: &Path,
) -> Result<(), ModelError> {
    let _guard = tch::no_grad_guard();
    let (scale, offset) = range.scale_offset();
    let gap = 2i64;
    let mut tiles: Vec<(i64, i64, Vec<u8>)> = Vec::new(); // (grid row, column, HWC bytes)
    let (mut h, mut w) = (0, 0);
    let mut grid_row = 0;
    for batch in rows {
        let size = batch.size();
        h = size[2];
        w = size[3];
        let bytes = ((batch.to_device(tch::Device::Cpu).to_kind(Kind::Float) - offset as f64)
            / scale as f64)
            .round()
            .clamp(0.0, 255.0)
            .to_kind(Kind::Uint8)
            .permute([0, 2, 3, 1])
            .contiguous();
        let n = size[0];
        for i in 0..n {
            let img = Vec::<u8>::try_from(bytes.get(i).flatten(0, -1))?;
            tiles.push((grid_row + i / columns, i % columns, img));
        }
        grid_row += (n + columns - 1) / columns;
    }
    let width = (columns * (w + gap) + gap) as u32;
    let height = (grid_row * (h + gap) + gap) as u32;
    let mut canvas = image::RgbImage::from_pixel(width, height, image::Rgb([255, 255, 255]));
    for (r, c, img) in tiles {
        let (x0, y0) = (gap + c * (w + gap), gap + r * (h + gap));
        for y in 0..h {
            for x in 0..w {
                let p = ((y * w + x) * 3) as usize;
                canvas.put_pixel(
                    (x0 + x) as u32,
                    (y0 + y) as u32,
                    image::Rgb([img[p], img[p + 1], img[p + 2]]),
                );
            }
        }
    }
    save_png(&upscale(&canvas, zoom), path)
}

/// `img` enlarged `factor` times each way, every pixel a `factor` × `factor` block.
pub fn upscale(img: &image::RgbImage, factor: u32) -> image::RgbImage {
    if factor <= 1 {
        return img.clone();
    }
    image::RgbImage::from_fn(img.width() * factor, img.height() * factor, |x, y| {
        *img.get_pixel(x / factor, y / factor)
    })
}

/// Writes an RGB image as PNG through a temporary file renamed into place.
pub fn save_png(img: &image::RgbImage, path: &Path) -> Result<(), ModelError> {
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .map_err(|e| ModelError::Io(path.to_path_buf(), e.to_string()))?;
    Ok(vq_data::write_atomic(path, |w| w.write_all(&bytes))?)
}
