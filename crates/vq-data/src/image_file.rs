//! Reading one image file defensively: the format from the content (not the extension), the
//! size from the header before any pixel is decoded, transparency shown over white.

use std::path::{Path, PathBuf};

use image::RgbImage;

/// Largest image side accepted: a 20,000-pixel-wide header is refused before anything is
/// allocated; 16,384 × 16,384 RGB is 0.8 GB of pixels.
pub const MAX_IMAGE_SIDE: u32 = 16_384;

/// File extensions taken when a folder is given.
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "gif", "bmp", "tif", "tiff", "webp"];

#[derive(Debug, thiserror::Error)]
pub enum ImageFileError {
    #[error("{0}: no such file")]
    Missing(PathBuf),
    #[error("{0}: {1}")]
    Unreadable(PathBuf, String),
    #[error("{0}: not an image in a format this tool reads (PNG, JPEG, GIF, BMP, TIFF, WebP)")]
    NotAnImage(PathBuf),
    #[error("{0}: the image is damaged or unsupported: {1}")]
    Corrupt(PathBuf, String),
    #[error("{path}: {width}×{height} pixels is too large (at most {MAX_IMAGE_SIDE} a side)")]
    TooLarge {
        path: PathBuf,
        width: u32,
        height: u32,
    },
    #[error("{0}: the image has no pixels (0 wide or 0 high)")]
    Empty(PathBuf),
}

/// A decoded image file.
#[derive(Debug, Clone)]
pub struct ImageFile {
    /// RGB; transparent pixels composited over white.
    pub rgb: RgbImage,
    /// The file had no colour (grayscale, with or without alpha).
    pub gray: bool,
    pub had_alpha: bool,
}

/// Reads an image file: format from its content, size checked from the header before decoding.
pub fn read_image(path: &Path) -> Result<ImageFile, ImageFileError> {
    if !path.is_file() {
        return Err(ImageFileError::Missing(path.to_path_buf()));
    }
    // The content decides the format, not the extension: a text file named .png is "not an
    // image", not "a damaged PNG".
    let mut head = Vec::with_capacity(64);
    std::fs::File::open(path)
        .and_then(|f| std::io::Read::read_to_end(&mut std::io::Read::take(f, 64), &mut head))
        .map_err(|e| ImageFileError::Unreadable(path.to_path_buf(), e.to_string()))?;
    let format =
        image::guess_format(&head).map_err(|_| ImageFileError::NotAnImage(path.to_path_buf()))?;
    let open = || -> Result<image::ImageReader<_>, ImageFileError> {
        let mut reader = image::ImageReader::open(path)
            .map_err(|e| ImageFileError::Unreadable(path.to_path_buf(), e.to_string()))?;
        reader.set_format(format);
        Ok(reader)
    };
    let reader = open()?;
    let (width, height) = reader
        .into_dimensions()
        .map_err(|e| ImageFileError::Corrupt(path.to_path_buf(), e.to_string()))?;
    if width == 0 || height == 0 {
        return Err(ImageFileError::Empty(path.to_path_buf()));
    }
    if width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE {
        return Err(ImageFileError::TooLarge {
            path: path.to_path_buf(),
            width,
            height,
        });
    }
    let mut reader = open()?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(4 << 30);
    reader.limits(limits);
    let img = reader
        .decode()
        .map_err(|e| ImageFileError::Corrupt(path.to_path_buf(), e.to_string()))?;
    let gray = !img.color().has_color();
    let had_alpha = img.color().has_alpha();
    let rgb = if had_alpha {
        // Transparent pixels are shown over white, as image viewers do.
        let rgba = img.to_rgba8();
        let mut rgb = RgbImage::new(rgba.width(), rgba.height());
        for (dst, src) in rgb.pixels_mut().zip(rgba.pixels()) {
            let a = src.0[3] as u32;
            for c in 0..3 {
                dst.0[c] = ((src.0[c] as u32 * a + 255 * (255 - a) + 127) / 255) as u8;
            }
        }
        rgb
    } else {
        img.to_rgb8()
    };
    Ok(ImageFile {
        rgb,
        gray,
        had_alpha,
    })
}
