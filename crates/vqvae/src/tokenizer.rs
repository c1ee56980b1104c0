//! A VQ-VAE as a tokenizer: images to token ids (codes) and back.

use std::path::Path;

use image::RgbImage;
use tch::Device;
use vq_model::checkpoint::Checkpoint;

use crate::codec::{CodeGrid, Codec, Tiling};
use crate::error::Result;

/// Which network draws the pixels of decoded codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoder {
    /// The model's own decoder (a reconstruction: what `.vqz` files decode to).
    Plain,
    /// The bundled sharp decoder (`models/cifar10-sharp`), trained adversarially for the
    /// bundled model's codes: sharper samples, a lower FID, a lower PSNR.
    Sharp,
}

/// A VQ-VAE that turns images into grids of token ids and back.
///
/// ```
/// # fn main() -> Result<(), vqvae::Error> {
/// let tokenizer = vqvae::Tokenizer::bundled()?;
/// let image = image::RgbImage::from_fn(32, 32, |x, y| image::Rgb([(x * 8) as u8, (y * 8) as u8, 128]));
/// let codes = tokenizer.encode(&image);
/// assert_eq!(codes.shape(), [1, 8, 8]); // one level of 8 × 8 codes
/// assert!(codes.ids().iter().all(|&id| (id as usize) < tokenizer.vocabulary()));
/// let back = tokenizer.decode(&codes);
/// assert_eq!(back.dimensions(), (32, 32));
/// # Ok(())
/// # }
/// ```
pub struct Tokenizer {
    checkpoint: Checkpoint,
    /// The checkpoint whose decoder draws pixels, when not `checkpoint`'s own.
    decoder: Option<Checkpoint>,
    device: Device,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("model", &self.checkpoint.origin())
            .field("decoder", &self.decoder.as_ref().map(Checkpoint::origin))
            .field("device", &self.device)
            .finish()
    }
}

impl Tokenizer {
    /// The bundled CIFAR-10 model (built into the library), on the CPU.
    pub fn bundled() -> Result<Self> {
        Self::bundled_on(Device::Cpu)
    }

    /// The bundled model on `device` (`Device::Cpu`, `Device::Cuda(0)`, ...).
    pub fn bundled_on(device: Device) -> Result<Self> {
        Ok(Self::from_checkpoint(Checkpoint::bundled(device)?, device))
    }

    /// A model trained by `vq-train`: a checkpoint folder, or a run folder (its best
    /// checkpoint), on the CPU.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_on(path, Device::Cpu)
    }

    /// The model at `path` (a checkpoint or run folder) when given, else the bundled one, on
    /// `device`: what `vq-cli --checkpoint` opens.
    pub fn open_or_bundled(path: Option<&Path>, device: Device) -> Result<Self> {
        match path {
            Some(path) => Self::open_on(path, device),
            None => Self::bundled_on(device),
        }
    }

    /// [`Tokenizer::open`] on `device`.
    pub fn open_on(path: impl AsRef<Path>, device: Device) -> Result<Self> {
        Ok(Self::from_checkpoint(
            Checkpoint::open(path.as_ref(), device)?,
            device,
        ))
    }

    /// An opened checkpoint.
    pub fn from_checkpoint(checkpoint: Checkpoint, device: Device) -> Self {
        Tokenizer {
            checkpoint,
            decoder: None,
            device,
        }
    }

    /// Decodes with `decoder` from now on. [`Decoder::Sharp`] is the bundled sharp decoder: it
    /// decodes the bundled model's codes only.
    ///
    /// ```
    /// # fn main() -> Result<(), vqvae::Error> {
    /// let sharp = vqvae::Tokenizer::bundled()?.with_decoder(vqvae::Decoder::Sharp)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_decoder(mut self, decoder: Decoder) -> Result<Self> {
        self.decoder = match decoder {
            Decoder::Plain => None,
            Decoder::Sharp => {
                let sharp = Checkpoint::bundled_tuned_decoder(self.device)?;
                if sharp.codes_id() != self.checkpoint.codes_id() {
                    return Err(crate::Error::Invalid(format!(
                        "the sharp decoder decodes the bundled model's codes, not those of {}",
                        self.checkpoint.origin()
                    )));
                }
                Some(sharp)
            }
        };
        Ok(self)
    }

    /// The model: its config, weights and training record.
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    /// The model whose decoder turns codes into pixels: the sharp decoder's when
    /// [`Tokenizer::with_decoder`] chose it, else the model's own.
    pub fn decoding_checkpoint(&self) -> &Checkpoint {
        self.decoder.as_ref().unwrap_or(&self.checkpoint)
    }

    /// `(N, h, w)` or `(N, L, h, w)` codes (on any device) → `(N, 3, H, W)` pixels in the
    /// model's input range, by [`Tokenizer::decoding_checkpoint`]'s decoder: on a CPU in as
    /// many streams as LibTorch has threads
    /// ([`vq_model::Checkpoint::decode_in_streams`]), elsewhere in one pass.
    ///
    /// # Panics
    /// If the decoder's weights cannot be copied for a stream.
    pub fn decode_tensor(&self, codes: &tch::Tensor) -> tch::Tensor {
        let _guard = tch::no_grad_guard();
        let codes = codes.to_device(self.device);
        let codes = if codes.dim() == 3 {
            codes.unsqueeze(1)
        } else {
            codes
        };
        let streams = match self.device {
            Device::Cpu => tch::get_num_threads().max(1) as usize,
            _ => 1,
        };
        self.decoding_checkpoint()
            .decode_in_streams(&codes, streams)
            .expect("copying the decoder's weights for a decoding stream")
    }

    /// The device it runs on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// How many token ids there are (each id is below this).
    pub fn vocabulary(&self) -> usize {
        self.checkpoint.config.code_space().vocabulary as usize
    }

    /// Token ids per grid position (levels of a residual quantizer; 1 otherwise).
    pub fn depth(&self) -> usize {
        self.checkpoint.config.code_space().depth as usize
    }

    /// Pixels per code, each way.
    pub fn downsample(&self) -> u32 {
        self.checkpoint.config.downsample as u32
    }

    /// The tiled encoder and decoder `vq-cli` runs (for images of any size; an advanced seam).
    pub fn codec(&self) -> Codec<'_> {
        let model = &self.checkpoint.model;
        Codec {
            model,
            device: self.device,
            tiling: Tiling::for_model(model),
        }
    }

    /// MSE, PSNR and SSIM (on `[0, 1]` pixels), perplexity and codes used of the model's
    /// reconstructions of `images` (the first `scope.count`, their codes searched when
    /// `scope.search` says so), by the model's own decoder; `progress` gets the images done
    /// after each chunk. What `vq-cli eval` reports.
    pub fn evaluate(
        &self,
        images: &vq_data::Cifar10,
        scope: vq_model::EvalScope,
        progress: impl FnMut(usize),
    ) -> Result<vq_model::Evaluation> {
        let step = self.checkpoint.info.step.unwrap_or(0) as usize;
        Ok(vq_model::evaluate_with_progress(
            &self.checkpoint.model,
            images,
            scope,
            self.device,
            step,
            0.0,
            progress,
        )?)
    }

    /// The [`Codec`] that decodes: [`Tokenizer::decoding_checkpoint`]'s decoder.
    pub fn decoding_codec(&self) -> Codec<'_> {
        let model = &self.decoder.as_ref().unwrap_or(&self.checkpoint).model;
        Codec {
            model,
            device: self.device,
            tiling: Tiling::for_model(model),
        }
    }

    /// The codes of `image` (any size: padded by its edge pixels to a multiple of
    /// [`Tokenizer::downsample`], large ones encoded in tiles).
    pub fn encode(&self, image: &RgbImage) -> CodeGrid {
        self.codec().encode(image)
    }

    /// The codes of several images, those of one size encoded together (faster than one by
    /// one, the same codes).
    pub fn encode_all(&self, images: &[&RgbImage]) -> Vec<CodeGrid> {
        let mut out: Vec<Option<CodeGrid>> = vec![None; images.len()];
        let mut sizes: Vec<(u32, u32)> = images.iter().map(|i| i.dimensions()).collect();
        sizes.sort();
        sizes.dedup();
        let codec = self.codec();
        for size in sizes {
            let which: Vec<usize> = (0..images.len())
                .filter(|&i| images[i].dimensions() == size)
                .collect();
            let batch: Vec<&RgbImage> = which.iter().map(|&i| images[i]).collect();
            for (i, grid) in which.into_iter().zip(codec.encode_batch(&batch)) {
                out[i] = Some(grid);
            }
        }
        out.into_iter()
            .map(|g| g.expect("every image encoded"))
            .collect()
    }

    /// The image of `codes`, the grid's size times [`Tokenizer::downsample`].
    ///
    /// # Panics
    /// If an id is not below [`Tokenizer::vocabulary`], or `codes` holds more levels than
    /// [`Tokenizer::depth`] or not `depth × height × width` ids (grids made by this tokenizer
    /// or read by [`crate::CodeArray::read`] and checked with [`crate::CodeArray::check`] fit).
    pub fn decode(&self, codes: &CodeGrid) -> RgbImage {
        let f = self.downsample();
        self.decode_to(codes, codes.width * f, codes.height * f)
    }

    /// The image of `codes` cropped to `width` × `height` (the size of the image they were
    /// made from).
    pub fn decode_to(&self, codes: &CodeGrid, width: u32, height: u32) -> RgbImage {
        self.decoding_codec().decode(codes, width, height)
    }
}
