//! Images of any size to code grids and back, in overlapping tiles so that memory stays bounded.
//!
//! The code grid covers the image padded (by repeating its edge pixels) to a multiple of the
//! downsampling factor. Encoding and decoding each run the network on tiles of
//! `tile` × `tile` codes plus a `halo` of context on every side and keep only the tile's core:
//! with a halo as wide as the network's reach, the result equals one pass over the whole image.
//! An image that fits in one tile takes one pass and no halo. Reconstruction is *defined* as
//! `decode(encode(image))`, so a `.vqz` file decodes to exactly what `reconstruct` writes.

use image::RgbImage;
use tch::{Device, Kind, Tensor};
use vq_codes::{grid_side, Colour};
use vq_model::VqVae;

/// Tiling of the code grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tiling {
    /// Side of a tile's core, in codes.
    pub tile: u32,
    /// Codes of context added on each side of a tile.
    pub halo: u32,
}

impl Default for Tiling {
    /// 64 codes = 256 pixels at 4× downsampling; a 6-code (24-pixel) halo covers the reach of
    /// the default encoder (34-pixel receptive field) and decoder.
    fn default() -> Self {
        Tiling { tile: 64, halo: 6 }
    }
}

impl Tiling {
    /// The default tiling with a halo wide enough for `model`'s decoder too (a decoder of its
    /// own shape can reach further than the default halo).
    pub fn for_model(model: &VqVae) -> Self {
        let default = Tiling::default();
        Tiling {
            halo: default.halo.max(model.decoder.reach_in_codes()),
            ..default
        }
    }
}

/// Pixels per network pass. Windows of one size always go through the network in passes of the
/// same number of windows (`PASS_PIXELS / window pixels`, at least one), the last pass padded
/// with copies: LibTorch's convolutions pick their algorithm by batch size, and its rounding
/// with it, so a fixed pass shape is what makes an image's codes the same whether it is encoded
/// alone or among a folder of others (a test checks this). 64 images of 32 × 32 per pass; a
/// window of 128 × 128 pixels or more goes alone, as before.
const PASS_PIXELS: u64 = 1 << 16;

/// `f` applied to `inputs` (each `(1, ...)`, all of one shape) in passes of exactly `per_pass`
/// rows; the `(N, ...)` results in order.
pub(crate) fn in_fixed_passes(
    inputs: &[Tensor],
    per_pass: usize,
    f: impl Fn(&Tensor) -> Tensor,
) -> Tensor {
    match try_in_fixed_passes(inputs, per_pass, |xs| {
        Ok::<_, std::convert::Infallible>(f(xs))
    }) {
        Ok(t) => t,
        Err(never) => match never {},
    }
}

/// [`in_fixed_passes`] with a pass that may fail.
pub(crate) fn try_in_fixed_passes<E>(
    inputs: &[Tensor],
    per_pass: usize,
    f: impl Fn(&Tensor) -> Result<Tensor, E>,
) -> Result<Tensor, E> {
    let per_pass = per_pass.max(1);
    let mut outs = Vec::with_capacity(inputs.len().div_ceil(per_pass));
    for chunk in inputs.chunks(per_pass) {
        let mut rows: Vec<&Tensor> = chunk.iter().collect();
        let last = *rows.last().expect("chunks are not empty");
        rows.resize(per_pass, last);
        outs.push(f(&Tensor::cat(&rows, 0))?.narrow(0, 0, chunk.len() as i64));
    }
    Ok(Tensor::cat(&outs, 0))
}

/// Windows per pass for windows of `pixels` pixels.
pub(crate) fn per_pass(pixels: u64) -> usize {
    (PASS_PIXELS / pixels.max(1)).max(1) as usize
}

/// A code grid: `depth` levels of `height` × `width` codes, each level row-major, level after
/// level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeGrid {
    pub width: u32,
    pub height: u32,
    pub depth: u32,
    pub codes: Vec<u32>,
}

impl CodeGrid {
    /// `[depth, height, width]`: levels, rows and columns of codes.
    pub fn shape(&self) -> [usize; 3] {
        [
            self.depth as usize,
            self.height as usize,
            self.width as usize,
        ]
    }

    /// The token ids, level after level, each level row after row.
    pub fn ids(&self) -> &[u32] {
        &self.codes
    }
}

/// The model plus how to run it over big images.
#[derive(Debug)]
pub struct Codec<'a> {
    pub model: &'a VqVae,
    pub device: Device,
    pub tiling: Tiling,
}

/// `[start, end)` of each tile core and of its window with halo, along one axis of `len` codes.
fn spans(len: u32, tiling: Tiling) -> Vec<((u32, u32), (u32, u32))> {
    if len <= tiling.tile {
        return vec![((0, len), (0, len))];
    }
    (0..len)
        .step_by(tiling.tile as usize)
        .map(|start| {
            let end = (start + tiling.tile).min(len);
            let window = (
                start.saturating_sub(tiling.halo),
                (end + tiling.halo).min(len),
            );
            ((start, end), window)
        })
        .collect()
}

impl Codec<'_> {
    fn factor(&self) -> u32 {
        self.model.config.downsample as u32
    }

    /// Codes along each side for a `width` × `height` image.
    pub fn grid_size(&self, width: u32, height: u32) -> (u32, u32) {
        let f = self.factor() as u8;
        (grid_side(width, f), grid_side(height, f))
    }

    /// The model-range `(1, 3, h, w)` tensor of pixels `[x0, x1) × [y0, y1)`, edge pixels
    /// repeated beyond the image.
    fn window_pixels(&self, img: &RgbImage, (x0, x1): (u32, u32), (y0, y1): (u32, u32)) -> Tensor {
        let range = self.model.config.input_range;
        let (w, h) = (x1 - x0, y1 - y0);
        let mut data = vec![0f32; 3 * (w * h) as usize];
        let plane = (w * h) as usize;
        for y in 0..h {
            let sy = (y0 + y).min(img.height() - 1);
            for x in 0..w {
                let sx = (x0 + x).min(img.width() - 1);
                let p = img.get_pixel(sx, sy).0;
                let i = (y * w + x) as usize;
                for c in 0..3 {
                    data[c * plane + i] = range.from_byte(p[c]);
                }
            }
        }
        Tensor::from_slice(&data)
            .view([1, 3, h as i64, w as i64])
            .to_device(self.device)
    }

    pub fn encode(&self, img: &RgbImage) -> CodeGrid {
        self.encode_batch(&[img]).pop().expect("one grid per image")
    }

    /// The `width` × `height` image the codes stand for.
    pub fn decode(&self, grid: &CodeGrid, width: u32, height: u32) -> RgbImage {
        self.decode_batch(&[grid], width, height)
            .pop()
            .expect("one image per grid")
    }

    /// Codes of images of one size, each tile of all of them in one pass through the network:
    /// a folder of small images then costs a few large passes instead of one small pass each.
    /// Every image's codes are those [`Codec::encode`] gives it alone (a test checks this).
    ///
    /// # Panics
    /// If the images are not all of one size (callers group them by size).
    pub fn encode_batch(&self, imgs: &[&RgbImage]) -> Vec<CodeGrid> {
        let plain = |xs: &Tensor, _| Ok::<_, std::convert::Infallible>(self.model.encode(xs));
        match self.encode_batch_by(imgs, per_pass, plain) {
            Ok(grids) => grids,
            Err(never) => match never {},
        }
    }

    /// [`Codec::encode_batch`] with codes chosen by `search` (each tile window searched for
    /// its own decoded error; see [`vq_model::search`]); errors if the quantizer cannot be
    /// searched. Each window is searched alone: the search decodes hundreds of times, so the
    /// copies that pad a fixed-size pass would multiply its cost, and alone its codes do not
    /// depend on the other images either.
    ///
    /// With `rate` (a rate model and λ), a rate–distortion search
    /// ([`VqVae::encode_searched_rd`]), each window's bits counted in the whole grid's blocks.
    ///
    /// `progress` gets the share of the images' search done (0 to 1) as it goes.
    pub fn encode_batch_searched(
        &self,
        imgs: &[&RgbImage],
        search: &vq_model::CodeSearch,
        rate: Option<(&dyn vq_model::CodeRate, f64)>,
        progress: &dyn Fn(f64),
    ) -> Result<Vec<CodeGrid>, vq_model::ModelError> {
        let (gw, gh) = imgs
            .first()
            .map_or((0, 0), |i| self.grid_size(i.width(), i.height()));
        let windows =
            (spans(gw, self.tiling).len() * spans(gh, self.tiling).len() * imgs.len()) as f64;
        let finished = std::cell::Cell::new(0.0);
        self.encode_batch_by(
            imgs,
            |_| 1,
            |xs, origin| {
                let rd = rate.map(|(rate, lambda)| vq_model::RateDistortion {
                    rate,
                    lambda,
                    origin,
                });
                let before = finished.get();
                let codes = self
                    .model
                    .encode_searched_rd(xs, search, rd.as_ref(), &|share| {
                        progress((before + share) / windows)
                    });
                finished.set(before + 1.0);
                codes
            },
        )
    }

    /// [`Codec::encode_batch`] with `encode(windows, origin)` turning each pass of windows
    /// (whose top-left code is `origin`, row and column, of the whole grid) into codes, in
    /// passes of `pass_size(window pixels)` windows.
    fn encode_batch_by<E>(
        &self,
        imgs: &[&RgbImage],
        pass_size: impl Fn(u64) -> usize,
        encode: impl Fn(&Tensor, (i64, i64)) -> Result<Tensor, E>,
    ) -> Result<Vec<CodeGrid>, E> {
        let Some(first) = imgs.first() else {
            return Ok(Vec::new());
        };
        let (width, height) = first.dimensions();
        assert!(
            imgs.iter().all(|i| i.dimensions() == (width, height)),
            "encode_batch takes images of one size"
        );
        let _guard = tch::no_grad_guard();
        let f = self.factor();
        let (gw, gh) = self.grid_size(width, height);
        let depth = self.model.quantizer.code_space().depth as u32;
        let plane = (gw * gh) as usize;
        let mut grids: Vec<Vec<u32>> = vec![vec![0u32; plane * depth as usize]; imgs.len()];
        for ((cy0, cy1), (wy0, wy1)) in spans(gh, self.tiling) {
            for ((cx0, cx1), (wx0, wx1)) in spans(gw, self.tiling) {
                let windows: Vec<Tensor> = imgs
                    .iter()
                    .map(|img| self.window_pixels(img, (wx0 * f, wx1 * f), (wy0 * f, wy1 * f)))
                    .collect();
                // (B, L, h, w) codes of the windows; their cores, image by image, level by level.
                let pixels = ((wx1 - wx0) * f) as u64 * ((wy1 - wy0) * f) as u64;
                let origin = (wy0 as i64, wx0 as i64);
                let window =
                    try_in_fixed_passes(&windows, pass_size(pixels), |xs| encode(xs, origin))?
                        .to_device(Device::Cpu);
                let window = window
                    .narrow(2, (cy0 - wy0) as i64, (cy1 - cy0) as i64)
                    .narrow(3, (cx0 - wx0) as i64, (cx1 - cx0) as i64)
                    .contiguous();
                let cores = Vec::<i64>::try_from(window.flatten(0, -1))
                    .expect("codes are a CPU i64 tensor");
                let (cw, ch) = ((cx1 - cx0) as usize, (cy1 - cy0) as usize);
                for (codes, core) in grids.iter_mut().zip(cores.chunks(depth as usize * cw * ch)) {
                    for (level, level_codes) in core.chunks(cw * ch).enumerate() {
                        for (row, chunk) in level_codes.chunks(cw).enumerate() {
                            let start =
                                level * plane + (cy0 as usize + row) * gw as usize + cx0 as usize;
                            for (dst, &src) in codes[start..start + cw].iter_mut().zip(chunk) {
                                *dst = src as u32;
                            }
                        }
                    }
                }
            }
        }
        Ok(grids
            .into_iter()
            .map(|codes| CodeGrid {
                width: gw,
                height: gh,
                depth,
                codes,
            })
            .collect())
    }

    /// The `width` × `height` images that grids of one shape stand for, decoded together (see
    /// [`Codec::encode_batch`]).
    ///
    /// # Panics
    /// If the grids differ in shape.
    pub fn decode_batch(&self, grids: &[&CodeGrid], width: u32, height: u32) -> Vec<RgbImage> {
        let Some(first) = grids.first() else {
            return Vec::new();
        };
        let shape = (first.width, first.height, first.depth);
        assert!(
            grids.iter().all(|g| (g.width, g.height, g.depth) == shape),
            "decode_batch takes grids of one shape"
        );
        let _guard = tch::no_grad_guard();
        let f = self.factor();
        let range = self.model.config.input_range;
        let mut outs: Vec<RgbImage> = grids.iter().map(|_| RgbImage::new(width, height)).collect();
        let codes: Vec<i64> = grids
            .iter()
            .flat_map(|g| g.codes.iter().map(|&c| c as i64))
            .collect();
        let all = Tensor::from_slice(&codes).view([
            grids.len() as i64,
            first.depth as i64,
            first.height as i64,
            first.width as i64,
        ]);
        for ((cy0, cy1), (wy0, wy1)) in spans(first.height, self.tiling) {
            for ((cx0, cx1), (wx0, wx1)) in spans(first.width, self.tiling) {
                let window = all
                    .narrow(2, wy0 as i64, (wy1 - wy0) as i64)
                    .narrow(3, wx0 as i64, (wx1 - wx0) as i64)
                    .to_device(self.device);
                let rows: Vec<Tensor> = window.split(1, 0);
                let window_pixels = ((wx1 - wx0) * f) as u64 * ((wy1 - wy0) * f) as u64;
                let pixels = in_fixed_passes(&rows, per_pass(window_pixels), |codes| {
                    self.model.decode(codes)
                })
                .to_device(Device::Cpu)
                .to_kind(Kind::Float)
                .permute([0, 2, 3, 1])
                .contiguous();
                // Bytes through `PixelRange::to_byte`, the one definition of the rounding, rather
                // than a second one in tensor arithmetic that could round a value sitting on a
                // .5 boundary the other way.
                let bytes: Vec<u8> = Vec::<f32>::try_from(pixels.flatten(0, -1))
                    .expect("pixels are a CPU f32 tensor")
                    .into_iter()
                    .map(|v| range.to_byte(v))
                    .collect();
                let ww = ((wx1 - wx0) * f) as usize;
                let per_image = bytes.len() / grids.len();
                for (out, bytes) in outs.iter_mut().zip(bytes.chunks(per_image)) {
                    for y in cy0 * f..(cy1 * f).min(height) {
                        for x in cx0 * f..(cx1 * f).min(width) {
                            let i = (((y - wy0 * f) as usize) * ww + (x - wx0 * f) as usize) * 3;
                            out.put_pixel(x, y, image::Rgb([bytes[i], bytes[i + 1], bytes[i + 2]]));
                        }
                    }
                }
            }
        }
        outs
    }
}

/// An input image as the model sees it.
#[derive(Debug, Clone)]
pub struct LoadedImage {
    /// RGB; transparent pixels composited over white.
    pub rgb: RgbImage,
    /// Grayscale inputs are written back as grayscale.
    pub colour: Colour,
    pub had_alpha: bool,
}

/// Writes `img` as a PNG of the input's colour type, through a temporary file.
pub fn encode_png(img: &RgbImage, colour: Colour) -> Result<Vec<u8>, image::ImageError> {
    let dynamic = image::DynamicImage::ImageRgb8(img.clone());
    let dynamic = match colour {
        Colour::Rgb => dynamic,
        Colour::Gray => image::DynamicImage::ImageLuma8(dynamic.to_luma8()),
    };
    let mut bytes = Vec::new();
    dynamic.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )?;
    Ok(bytes)
}

/// What a written image looks like when read back as RGB (grayscale repeated).
pub fn as_written(img: &RgbImage, colour: Colour) -> RgbImage {
    match colour {
        Colour::Rgb => img.clone(),
        Colour::Gray => {
            image::DynamicImage::ImageLuma8(image::DynamicImage::ImageRgb8(img.clone()).to_luma8())
                .to_rgb8()
        }
    }
}
